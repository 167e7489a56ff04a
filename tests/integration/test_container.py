"""The container image, the compose stacks and the monitoring files they ship, checked
statically with the real tools. The image itself is built and run, and the stacks started, by a
real Docker engine in ``tests/container``.

* hadolint lints the Dockerfile; explicit assertions (on BuildKit's own parse of it,
  ``tests/helpers/container_image.py``) cover what hadolint does not.
* ``docker compose config`` (Docker Compose itself) validates compose.yaml against the Compose
  specification; the model it prints is checked against the settings and the repository.
* ``promtool`` checks the Prometheus configuration and the alert rules; the Grafana provisioning
  files are checked against the dashboard, and every metric the dashboard and the rules query
  against what the server declares.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from opamp_fast.settings import OPTIONS, Settings
from tests.helpers.container_image import Instruction, Stage, parse_dockerfile, shell_segments
from tests.helpers.container_tools import run_tool
from tests.helpers.metric_names import declared_metric_names, queried_metric_names

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "compose.yaml"
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
GRAFANA_DIR = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA_DIR / "opamp-fast-dashboard.json"
IMAGE_UID = 10001
SETTING_ENVS = {opt.env for opt in OPTIONS}
#: Build tools that must not reach the final image.
BUILD_TOOLS = ("gcc", "g++", "cc", "clang", "make", "build-essential", "libc6-dev", "cython")


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE)


@pytest.fixture(scope="module")
def compose_model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """compose.yaml as Docker Compose loads it: validated, interpolated with the documented
    defaults (a clean environment, no .env), normalised."""
    empty_env_file = tmp_path_factory.mktemp("compose") / "empty.env"
    empty_env_file.write_text("")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(empty_env_file.parent)}
    result = run_tool(
        "docker-compose",
        "--project-directory",
        str(ROOT),
        "--file",
        str(COMPOSE),
        "--env-file",
        str(empty_env_file),
        "config",
        "--format",
        "json",
        cwd=ROOT,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr  # no warning (obsolete keys, unset vars)
    model: dict[str, Any] = json.loads(result.stdout)
    return model


def final_stage(stages: list[Stage]) -> Stage:
    return stages[-1]


def opamp_env_keys(text: str) -> set[str]:
    return set(re.findall(r"\bOPAMP_FAST_[A-Z0-9_]+", text))


def _duration_s(text: str) -> float:
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    assert match, f"bad duration {text!r}"
    return float(match.group(1)) * units[match.group(2)]


# ============================================================================ Dockerfile lint


def test_dockerfile_passes_hadolint(tmp_path: Path) -> None:
    config = tmp_path / "hadolint.yaml"
    config.write_text("{}\n")  # no user or project configuration: hadolint's own rules
    result = run_tool(
        "hadolint", "--config", str(config), "--no-color", "--failure-threshold", "style",
        str(DOCKERFILE),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    # Without the inline ignore pragmas, only the two justified findings appear.
    result = run_tool(
        "hadolint", "--config", str(config), "--disable-ignore-pragma", "--format", "json",
        "--no-fail", str(DOCKERFILE),
    )  # fmt: skip
    codes = sorted({finding["code"] for finding in json.loads(result.stdout)})
    assert codes == ["DL3008", "DL3013"], result.stdout


def test_dockerfile_structure(stages: list[Stage]) -> None:
    """What hadolint does not check, as explicit assertions."""
    named = {stage.name: stage for stage in stages}
    builder, final = named["builder"], final_stage(stages)
    assert final.parent is None and final.name == "runtime"
    # One base image for every stage (the extensions run on the C library they were built on).
    assert {stage.image for stage in stages} == {final.base}
    assert re.fullmatch(r"python:3\.\d+-slim-\w+", final.base)
    for stage in stages:
        repo, _, tag = stage.image.rpartition(":")
        assert repo and tag and tag != "latest", stage.image
    # The image's Python satisfies the project's requires-python.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    image_python = tuple(int(x) for x in final.base.split(":")[1].split("-")[0].split("."))
    minimum = tuple(int(x) for x in project["requires-python"].removeprefix(">=").split("."))
    assert image_python >= minimum

    # The builder compiles (gcc) and builds the project's wheel without its dependencies; the
    # dependencies' wheels come from their own stage.
    builder_runs = " ".join(" ".join(i.args) for i in builder.inherited("RUN"))
    assert "gcc" in builder_runs
    assert "pip wheel --no-deps -w /wheels ." in builder_runs
    dependency_runs = " ".join(" ".join(i.args) for i in named["dependencies"].all("RUN"))
    assert "pip wheel -w /wheels -r" in dependency_runs

    # apt-get: never without --no-install-recommends, always cleaned up in the same layer.
    for stage in stages:
        for inst in stage.all("RUN"):
            command = " ".join(inst.args)
            for segment in shell_segments(command) if "apt-get" in command else []:
                if segment[:2] == ["apt-get", "install"]:
                    assert "--no-install-recommends" in segment, inst.original
                    assert "-y" in segment or "--yes" in segment, inst.original
            if "apt-get install" in command:
                assert "rm -rf /var/lib/apt/lists/*" in command, inst.original

    # What the build needs from the machine (pip.conf for a private index, a proxy's CA,
    # apt.conf for a mirror) comes as optional BuildKit secrets, mounted only into the steps
    # that download and only in the build stages: never a file of a layer, never in the
    # runtime image, and a plain `docker build .` needs none of them.
    secret_mounts: list[tuple[Stage, Instruction, dict[str, str]]] = [
        (stage, inst, dict(kv.split("=", 1) for kv in f.removeprefix("--mount=").split(",")))
        for stage in stages
        for inst in stage.all("RUN")
        for f in inst.flags
        if "type=secret" in f
    ]
    targets = {m["id"]: m.get("target", f"/run/secrets/{m['id']}") for _, _, m in secret_mounts}
    assert targets == {
        "apt.conf": "/etc/apt/apt.conf.d/99build-secret.conf",
        "ca.pem": "/run/secrets/ca.pem",
        "pip.conf": "/etc/pip.conf",
    }, targets
    for stage, inst, mount in secret_mounts:
        assert stage is not final and mount.get("required", "false") == "false", inst.original
    for stage in stages:
        for inst in stage.all("RUN"):
            if re.search(r"pip wheel|apt-get update", " ".join(inst.args)):
                assert any("id=ca.pem" in f for f in inst.flags), inst.original
    # Proxies are Docker's predefined build arguments (kept out of the image's history), not ARGs.
    args = [a for stage in stages for inst in stage.all("ARG") for a in inst.args]
    assert not [a for a in args if "PIP_" in a or "PROXY" in a.upper()], args

    # The final stage: no compiler, only wheels from the builder, a non-root numeric user.
    final_runs = [" ".join(i.args) for i in final.all("RUN")]
    for command in final_runs:
        assert "apt-get install" not in command, command
        for word in re.findall(r"[\w+.-]+", command):
            assert word not in BUILD_TOOLS, command
    installs = [i for i in final.all("RUN") if "pip install" in " ".join(i.args)]
    assert installs
    for inst in installs:
        assert "--no-index" in inst.args[0], inst.original
    mounted_from = {
        kv.split("=")[1] for i in installs for f in i.flags for kv in f.split(",") if "from=" in kv
    }
    assert mounted_from == {"builder", "dependencies"}, mounted_from
    user = final.last("USER")
    assert user is not None and user.args[0] == f"{IMAGE_UID}:{IMAGE_UID}"
    users = [i for i in final.all("RUN") if "useradd" in " ".join(i.args)]
    assert len(users) == 1 and f"--uid {IMAGE_UID}" in users[0].args[0]
    assert final.instructions.index(user) > final.instructions.index(installs[-1])

    # Directories the server writes exist and belong to the image user.
    env = final.env()
    owned = " ".join(users[0].args)
    for path in (
        final.workdir(),
        str(Path(env["OPAMP_FAST_DATA_DIR"]).parent),  # the volume: data dir and JWT secret
        env["XDG_RUNTIME_DIR"],  # pgserver's lock; /run/user/<uid> is not writable for it
    ):
        assert re.search(rf"install -d -o opamp -g opamp -m 07\d0 {re.escape(path)}\b", owned), path
    assert "--home-dir " + final.workdir() in owned

    # Runtime metadata.
    assert [i.args for i in final.all("EXPOSE")] == [("4320",)]
    stopsignal = final.last("STOPSIGNAL")
    assert stopsignal is not None and stopsignal.args == ("SIGTERM",)
    health = final.last("HEALTHCHECK")
    assert health is not None and health.json and health.args[:3] == ("CMD", "python", "-c")
    assert "/readyz" in health.args[3] and "4320" in health.args[3]
    assert {f.split("=")[0] for f in health.flags} >= {"--interval", "--timeout", "--retries"}
    entrypoint, cmd = final.last("ENTRYPOINT"), final.last("CMD")
    assert entrypoint is not None and entrypoint.json and entrypoint.args == ("opamp-fast",)
    assert cmd is not None and cmd.json and cmd.args[0] == "serve"
    assert env["OPAMP_FAST_HOST"] == "0.0.0.0"
    assert "nofile=262144:262144" in DOCKERFILE.read_text()  # the documented fd limit

    # OCI labels, the version kept in step with the project's.
    labels = final.labels()
    assert labels["org.opencontainers.image.version"] == project["version"]
    spdx = project["license"]
    assert labels["org.opencontainers.image.licenses"] == (
        spdx if isinstance(spdx, str) else spdx["text"]
    )
    assert labels["org.opencontainers.image.title"] == project["name"]
    assert labels["org.opencontainers.image.base.name"] == final.base


def test_image_configuration_is_real_settings(stages: list[Stage]) -> None:
    """Every OPAMP_FAST_* name in the Dockerfile and compose.yaml is a setting, and the image's
    environment is a valid configuration."""
    for path in (DOCKERFILE, COMPOSE):
        text = path.read_text()
        # compose.yaml's image variable (${OPAMP_FAST_IMAGE:-...}) is compose's, not a setting.
        image_variables = set(re.findall(r"image: \$\{(\w+):-", text))
        unknown = opamp_env_keys(text) - SETTING_ENVS - image_variables
        assert not unknown, f"{path.name}: not settings: {sorted(unknown)}"
    env = {k: v for k, v in final_stage(stages).env().items() if k.startswith("OPAMP_FAST_")}
    settings = Settings.from_sources(environ=env)
    assert settings.host == "0.0.0.0" and settings.database_url is None
    assert str(settings.data_dir) == env["OPAMP_FAST_DATA_DIR"]


# ============================================================================ compose


def test_compose_file_is_valid(compose_model: dict[str, Any]) -> None:
    services: dict[str, Any] = compose_model["services"]
    assert set(services) == {"postgres", "opamp-fast", "prometheus", "grafana"}
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        if "build" not in service:
            repo, _, tag = service["image"].rpartition(":")
            assert repo and tag and tag != "latest", f"{name}: pin a tag: {service['image']}"
        for dep, condition in service.get("depends_on", {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services[dep] or dep == "opamp-fast", dep
        for port in service.get("ports", []):
            assert 0 < int(port["target"]) < 65536 and int(port["published"]) > 0, port
        for volume in service.get("volumes", []):
            if volume["type"] == "volume":
                assert volume["source"] in compose_model.get("volumes", {}), volume
            else:
                assert volume["type"] == "bind" and Path(volume["source"]).exists(), volume
                assert Path(volume["source"]).is_relative_to(ROOT), volume
                assert volume.get("read_only"), f"{name}: mount configuration read-only"
    assert "volume" in {v["type"] for v in services["postgres"]["volumes"]}

    # Postgres: health-checked, so that opamp-fast starts after it is ready.
    postgres = services["postgres"]
    assert postgres["image"] == "postgres:16"
    assert postgres["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL")
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])

    # opamp-fast: built here, on Postgres, the fd limit, a drain-sized grace period.
    app = services["opamp-fast"]
    assert app["build"]["context"] == str(ROOT) and app["build"]["dockerfile"] == "Dockerfile"
    assert app["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert [(p["target"], p["published"]) for p in app["ports"]] == [(4320, "4320")]
    assert app["ulimits"]["nofile"] == {"soft": 262144, "hard": 262144}
    assert app.get("stop_signal", "SIGTERM") == "SIGTERM"
    assert _duration_s(app["stop_grace_period"]) >= 25  # 10 s connections + 10 s writer drain
    env: dict[str, str] = app["environment"]
    assert not set(env) - SETTING_ENVS, set(env) - SETTING_ENVS
    assert env["OPAMP_FAST_HOST"] == "0.0.0.0"
    # The URL reaches the postgres service with its credentials (the documented defaults).
    db = postgres["environment"]
    assert env["OPAMP_FAST_DATABASE_URL"] == (
        f"postgresql://{db['POSTGRES_USER']}:{db['POSTGRES_PASSWORD']}@postgres:5432/"
        f"{db['POSTGRES_DB']}"
    )
    # The environment is a valid configuration, its JWT secret long enough for HS256.
    from opamp_fast.auth import load_key_material

    settings = Settings.from_sources(environ=env)
    assert load_key_material(settings, create=False).algorithm == "HS256"

    # Prometheus: our configuration, mounted where its command looks for it.
    prometheus = services["prometheus"]
    mounts = {v["target"]: Path(v["source"]) for v in prometheus["volumes"] if v["type"] == "bind"}
    config_flag = next(a for a in prometheus["command"] if a.startswith("--config.file="))
    config_path = config_flag.split("=", 1)[1]
    target_dir = str(Path(config_path).parent)
    assert mounts[target_dir] == PROMETHEUS_DIR
    assert (PROMETHEUS_DIR / Path(config_path).name).exists()

    # Grafana: provisioning and the dashboard mounted; anonymous access is read-only.
    grafana = services["grafana"]
    gmounts = {v["target"]: Path(v["source"]) for v in grafana["volumes"] if v["type"] == "bind"}
    assert gmounts["/etc/grafana/provisioning"] == GRAFANA_DIR / "provisioning"
    genv = grafana["environment"]
    assert genv["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert genv["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert gmounts[genv["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]] == DASHBOARD


# ============================================================================ Prometheus


def test_prometheus_config_and_rules_pass_promtool(compose_model: dict[str, Any]) -> None:
    result = run_tool("promtool", "check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout, result.stdout  # alerts.yml is loaded
    result = run_tool("promtool", "check", "rules", str(PROMETHEUS_DIR / "alerts.yml"))
    assert result.returncode == 0, result.stdout + result.stderr

    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    job = jobs["opamp-fast"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert job.get("scrape_interval", config["global"]["scrape_interval"]) == "15s"
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    # The target is the compose service on the port it listens on.
    app = compose_model["services"]["opamp-fast"]
    assert targets == [f"opamp-fast:{app['ports'][0]['target']}"]


# ============================================================================ Grafana


def test_grafana_provisioning_matches_dashboard(compose_model: dict[str, Any]) -> None:
    provisioning = GRAFANA_DIR / "provisioning"
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())
    assert datasources["apiVersion"] == 1
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    assert source["access"] == "proxy"
    prometheus_port = compose_model["services"]["prometheus"]["ports"][0]["target"]
    assert source["url"] == f"http://prometheus:{prometheus_port}"

    providers = yaml.safe_load((provisioning / "dashboards" / "opamp-fast.yaml").read_text())
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    grafana = compose_model["services"]["grafana"]
    mounted = {v["target"]: Path(v["source"]) for v in grafana["volumes"] if v["type"] == "bind"}
    files_in_path = [t for t in mounted if str(Path(t).parent) == provider["options"]["path"]]
    assert [mounted[t] for t in files_in_path] == [DASHBOARD]

    # Every datasource reference in the dashboard resolves to the provisioned datasource: its
    # uid, or a datasource variable of its type (which then defaults to it: isDefault).
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    refs = list(_datasource_refs(dashboard))
    assert refs
    for ref in refs:
        assert ref.get("type", source["type"]) == source["type"], ref
        uid = ref.get("uid", "")
        variable = re.fullmatch(r"\$\{(\w+)\}|\$(\w+)", uid)
        if variable:
            var = variables[variable.group(1) or variable.group(2)]
            assert var["type"] == "datasource" and var["query"] == source["type"], var
        else:
            assert uid == source["uid"], ref


def _datasource_refs(node: Any) -> Iterator[dict[str, str]]:
    if isinstance(node, dict):
        ref = node.get("datasource")
        if isinstance(ref, dict):
            yield ref
        for value in node.values():
            yield from _datasource_refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _datasource_refs(value)


def test_dashboard_and_alerts_query_known_metrics() -> None:
    known = declared_metric_names()
    unknown = queried_metric_names() - known
    assert not unknown, f"not exported by opamp-fast: {sorted(unknown)}"
