# opamp-fast container image (docs/operations.md, "Container image and compose").
#
#   docker build -t opamp-fast .
#   docker run --rm -p 4320:4320 --ulimit nofile=262144:262144 opamp-fast
#
# Stages: "build-base" adds a C compiler to the Python image; on it, "dependencies" collects
# wheels of every dependency and "builder" compiles the Cython extensions (_heartbeat, _wsframe,
# _pbscan) into a wheel of the project (BuildKit runs those two in parallel). "runtime" installs
# those wheels and nothing else: no compiler, no build tools, no source tree.
# RUN --mount needs BuildKit, Docker's default builder since Engine 23.
#
# What the build needs from the machine arrives as optional BuildKit secrets, mounted only into
# the steps that download and never written to a layer (docs/operations.md, "Build behind a
# proxy or a private mirror"):
#   --secret id=pip.conf,src=...   pip's configuration (a private index, its credentials)
#   --secret id=ca.pem,src=...     a CA bundle, at /run/secrets/ca.pem (a proxy that intercepts TLS)
#   --secret id=apt.conf,src=...   apt's configuration (a Debian mirror, a proxy)
# and proxies as Docker's predefined build arguments (--build-arg HTTPS_PROXY=...), which stay
# out of the image's history.
#
# Configuration is by OPAMP_FAST_* environment variables (README, "Configuration"), e.g.
#   -e OPAMP_FAST_DATABASE_URL=postgresql://user:pass@db:5432/opamp
# Without a database URL the server starts an embedded Postgres in OPAMP_FAST_DATA_DIR; mount a
# volume on /var/lib/opamp-fast to keep it (and the generated REST API secret) across containers.
#
# File descriptors: every connected agent holds one socket. Give the container a known limit,
#   docker run --ulimit nofile=262144:262144 ...
# (compose.yaml does). The server caps its connections (--max-connections) below the soft
# open-file limit it finds, keeping 256 descriptors for probes, the REST API and the database,
# so a low limit means fewer agents (503 + Retry-After), never a crash.
#
# The tag is not pinned to a digest: Debian and Python security fixes should reach rebuilds. It
# names Debian bookworm because that is the release of the CI machine, where tests/container
# builds this file on a bookworm image made from Debian's packages (no registry is reachable
# there); all stages use the same image, so the extensions are compiled against the C library
# they run on.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build-base

# gcc and the C library headers compile the extensions (Python's headers come with the image).
# Debian package versions are not pinned: the archive drops superseded versions, and bookworm's
# updates are security fixes. An apt.conf secret may point apt at a mirror or a proxy (and at
# /run/secrets/ca.pem for its certificate: Acquire::https::CAInfo).
# hadolint ignore=DL3008
RUN --mount=type=secret,id=apt.conf,target=/etc/apt/apt.conf.d/99build-secret.conf \
    --mount=type=secret,id=ca.pem \
    apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src


# Wheels of the dependencies, from pyproject.toml alone (the list is kept next to them): this
# stage is rebuilt only when pyproject.toml changes, and BuildKit builds it in parallel with the
# next one.
FROM build-base AS dependencies
COPY pyproject.toml ./
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=pip.conf,target=/etc/pip.conf \
    --mount=type=secret,id=ca.pem \
    mkdir /wheels \
    && python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /wheels/requirements.txt \
    && pip wheel -w /wheels -r /wheels/requirements.txt


# The project's wheel, with the compiled extensions in it.
FROM build-base AS builder
COPY pyproject.toml setup.py README.md ./
COPY src ./src
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=pip.conf,target=/etc/pip.conf \
    --mount=type=secret,id=ca.pem \
    pip wheel --no-deps -w /wheels .


FROM ${PYTHON_IMAGE} AS runtime
ARG PYTHON_IMAGE

LABEL org.opencontainers.image.title="opamp-fast" \
      org.opencontainers.image.description="A high-throughput OpAMP server for large fleets of OpenTelemetry agents" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"

# A fixed non-root uid (10001), so orchestrators can check runAsNonRoot and volumes can be
# prepared for it. Postgres (initdb) needs the uid in /etc/passwd: with the embedded database run
# the image as this user, not as an arbitrary --user. The home and data directory and the runtime
# directory (pgserver keeps its lock there; /run/user/<uid> is not writable) belong to it. The
# runtime directory is under /tmp so that a read-only root file system needs only a tmpfs on /tmp
# and the data volume (on a fresh tmpfs the lock's directory is created again).
RUN groupadd --system --gid 10001 opamp \
    && useradd --system --uid 10001 --gid opamp --home-dir /var/lib/opamp-fast --no-create-home --shell /usr/sbin/nologin opamp \
    && install -d -o opamp -g opamp -m 0750 /var/lib/opamp-fast \
    && install -d -o opamp -g opamp -m 0700 /tmp/opamp-fast

# Only the wheels built above reach the image, through bind mounts that take no space in it;
# --no-index sees nothing else. The dependencies go first, in a layer of their own: it does not
# change when only the code does, and BuildKit installs them while the builder still compiles.
RUN --mount=type=bind,from=dependencies,source=/wheels,target=/wheels/dependencies \
    pip install --no-cache-dir --no-index --root-user-action=ignore \
        --find-links /wheels/dependencies --requirement /wheels/dependencies/requirements.txt

# The project's version is fixed by construction: its only wheel is the one built above.
# hadolint ignore=DL3013
RUN --mount=type=bind,from=dependencies,source=/wheels,target=/wheels/dependencies \
    --mount=type=bind,from=builder,source=/wheels,target=/wheels/opamp-fast \
    pip install --no-cache-dir --no-index --root-user-action=ignore \
        --find-links /wheels/dependencies --find-links /wheels/opamp-fast opamp-fast \
    && opamp-fast version

# The listen address comes from the environment rather than a flag in CMD (flags override the
# environment), so `-e OPAMP_FAST_HOST=...` still works.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    XDG_RUNTIME_DIR=/tmp/opamp-fast \
    OPAMP_FAST_HOST=0.0.0.0 \
    OPAMP_FAST_DATA_DIR=/var/lib/opamp-fast/postgres

WORKDIR /var/lib/opamp-fast
USER 10001:10001

# OpAMP (WebSocket and HTTP), REST API, /metrics, /healthz and /readyz share one port.
EXPOSE 4320

# SIGTERM drains: stop accepting, close agent connections (1001), mark agents offline, flush to
# Postgres, stop. That takes up to --graceful-timeout-s (10 s) plus the writer's drain (10 s):
# give `docker stop` more than its default 10 s (docker stop -t 30; compose sets
# stop_grace_period).
STOPSIGNAL SIGTERM

# Ready = the database answers and migrations are applied. Python's standard library only (the
# slim image has no curl); follows OPAMP_FAST_HOST, OPAMP_FAST_PORT and TLS (certificate not
# verified: this checks the local process, not its identity). Exit 0 healthy, 1 unhealthy.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, ssl, sys, urllib.request as r; sys.excepthook = lambda t, v, b: print('unhealthy:', v); e = os.environ.get; h = (e('OPAMP_FAST_HOST') or '').strip('[]'); h = '127.0.0.1' if h in ('', '0.0.0.0', '::') else h; s = 'https' if e('OPAMP_FAST_TLS_CERT_FILE') else 'http'; r.urlopen(s + '://' + ('[' + h + ']' if ':' in h else h) + ':' + (e('OPAMP_FAST_PORT') or '4320') + '/readyz', timeout=4, context=ssl._create_unverified_context()); print('ready')"]

ENTRYPOINT ["opamp-fast"]
CMD ["serve"]
