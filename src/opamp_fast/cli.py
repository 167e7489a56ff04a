"""Command line: ``opamp-fast serve | migrate | version | token | agent-token | simulate``.

Every failure a user can cause (bad flag, bad value, port in use, unreachable database,
unwritable data directory) ends with one ``opamp-fast: error: ...`` line and a non-zero exit:
2 for usage and configuration errors, 1 for runtime failures. Never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import MISSING
from pathlib import Path
from typing import Any, NoReturn

import anyio
from anyio import CancelScope

from . import __version__
from .errors import ConfigError, OpAMPFastError
from .observability.gcpolicy import freeze_after_startup
from .observability.metrics_share import WorkerSlot
from .settings import OPTIONS, Option, Settings, parse_value

logger = logging.getLogger("opamp_fast")

EXIT_USAGE = 2
EXIT_FAILURE = 1


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        _fail(f"{message} (see '{self.prog} --help')", EXIT_USAGE)


def _fail(message: str, status: int) -> NoReturn:
    sys.stderr.write(f"opamp-fast: error: {message}\n")
    raise SystemExit(status)


def _flag_type(opt: Option) -> Callable[[str], Any]:
    def convert(raw: str) -> Any:
        try:
            return parse_value(opt, raw, source=opt.flag)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc).split(": ", 1)[-1]) from None

    convert.__name__ = opt.kind.__name__
    return convert


def _add_settings_flags(
    parser: argparse.ArgumentParser, names: Sequence[str] | None = None
) -> None:
    defaults = Settings.__dataclass_fields__
    for opt in OPTIONS:
        if names is not None and opt.name not in names:
            continue
        field = defaults[opt.name]
        if field.default_factory is not MISSING:
            default = "computed: " + str(field.default_factory())
        else:
            default = "unset" if field.default is None else str(field.default)
        if opt.secret:
            default = "unset"
        parser.add_argument(
            opt.flag,
            dest=opt.name,
            type=_flag_type(opt),
            choices=None,
            default=None,
            metavar=opt.kind.__name__.upper(),
            help=f"{opt.help} [env {opt.env}; default {default}]",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="opamp-fast", description="High-throughput OpAMP server.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    serve = sub.add_parser("serve", help="run the server", description="Run the OpAMP server.")
    _add_settings_flags(serve)

    migrate = sub.add_parser(
        "migrate", help="apply database migrations and exit", description="Apply migrations."
    )
    _add_settings_flags(migrate, ("database_url", "data_dir", "log_level", "db_pool_size"))

    sub.add_parser("version", help="print the version", description="Print the version.")

    token = sub.add_parser(
        "token",
        help="mint a REST API bearer token and print it",
        description="Mint an HS* bearer token for the REST API from the configured secret (or "
        "the secret persisted next to the data directory, shared with the server).",
    )
    token.add_argument("--subject", required=True, help="the token's 'sub' claim (who uses it)")
    token.add_argument("--ttl", default="1h", help="lifetime: 30s, 15m, 1h, 7d [default 1h]")
    token.add_argument(
        "--role",
        choices=("viewer", "operator", "admin"),
        default=None,
        help="the token's role: viewer reads, operator also changes configs, labels and groups, "
        "admin may do everything [default: no role claim, which the server treats as admin]; "
        "with --database-url the minting is recorded in the audit log",
    )
    _add_settings_flags(
        token,
        (
            "database_url",
            "api_jwt_secret",
            "api_jwt_public_key_file",
            "api_jwt_algorithm",
            "api_jwt_issuer",
            "api_jwt_audience",
            "data_dir",
            "log_level",
        ),
    )
    agent_token = sub.add_parser(
        "agent-token",
        help="mint a per-agent OpAMP token bound to one instance uid and print it",
        description="Mint a bearer token an agent presents on the OpAMP endpoint "
        "('Authorization: Bearer <token>'). It is bound to one instance uid: the agent cannot "
        "speak for another one, and a newer connection with it may take over an older one.",
    )
    agent_token.add_argument("--uid", required=True, help="the agent's instance uid (a UUID)")
    agent_token.add_argument("--ttl", default="365d", help="lifetime [default 365d]")
    _add_settings_flags(
        agent_token,
        (
            "agent_token_secret",
            "api_jwt_secret",
            "api_jwt_public_key_file",
            "api_jwt_algorithm",
            "data_dir",
            "log_level",
        ),
    )
    from .sim.options import add_arguments  # the flags only: not the simulator, nor trio

    simulate = sub.add_parser(
        "simulate",
        help="run simulated agents against a server on this machine (load testing)",
        description="Hold N simulated OpAMP agents (WebSocket and/or HTTP) against a loopback "
        "server for a bounded time, then print a JSON summary.",
    )
    add_arguments(simulate)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {opt.name: getattr(args, opt.name, None) for opt in OPTIONS}
    try:
        return Settings.from_sources(overrides=overrides)
    except ConfigError as exc:
        _fail(str(exc), EXIT_USAGE)


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # pgserver echoes initdb/pg_ctl output at INFO: keep it at WARNING unless debugging.
    quiet = logging.DEBUG if level == "debug" else logging.WARNING
    logging.getLogger("pgserver").setLevel(quiet)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "version":
        print(f"opamp-fast {__version__}")
        return 0
    if args.command == "simulate":
        from .sim.options import run_from_args

        return run_from_args(args)
    settings = _settings(args)
    if args.command == "token":
        return _token(args, settings)
    if args.command == "agent-token":
        return _agent_token(args, settings)
    _configure_logging(settings.log_level)
    try:
        run(_migrate if args.command == "migrate" else _serve, settings)
    except BaseException as exc:
        known = _known_error(exc)
        if known is None:
            raise
        if isinstance(known, KeyboardInterrupt):
            return 130
        _fail(str(known), EXIT_USAGE if isinstance(known, ConfigError) else EXIT_FAILURE)
    return 0


def run(main: Callable[[Settings], Any], settings: Settings) -> None:
    """Run ``main(settings)`` on the configured backend: asyncio with uvloop (the fast path;
    plain asyncio if uvloop is missing), or trio."""
    if settings.backend == "trio":
        anyio.run(main, settings, backend="trio")
        return
    options: dict[str, Any] = {}
    try:
        import uvloop

        options["loop_factory"] = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux and macOS
        logger.warning("uvloop is not installed; running on the default asyncio loop")
    anyio.run(main, settings, backend="asyncio", backend_options=options)


def _token(args: argparse.Namespace, settings: Settings) -> int:
    """``opamp-fast token``: print a token the server started with the same settings accepts."""
    from .auth import load_key_material, mint_token, parse_ttl

    try:
        ttl_s = parse_ttl(args.ttl)
    except ValueError as exc:
        _fail(f"--ttl: {exc}", EXIT_USAGE)
    if not args.subject.strip():
        _fail("--subject: must not be empty", EXIT_USAGE)
    try:
        keys = load_key_material(settings)
        token = mint_token(
            keys,
            subject=args.subject,
            ttl_s=ttl_s,
            issuer=settings.api_jwt_issuer,
            audience=settings.api_jwt_audience,
            role=args.role,
        )
    except ConfigError as exc:
        _fail(str(exc), EXIT_USAGE)
    except OSError as exc:
        _fail(f"cannot read or create the JWT secret: {exc}", EXIT_FAILURE)
    _audit_token(settings, args.subject, args.role or "admin", ttl_s)
    print(token)
    return 0


def _audit_token(settings: Settings, subject: str, role: str, ttl_s: int) -> None:
    """Record the minting in the audit log when a database is configured (fail closed: no
    token is printed if the row cannot be written); otherwise say it is not recorded."""
    if settings.database_url is None:
        print("note: no --database-url: this token is not recorded in the audit log",
              file=sys.stderr)  # fmt: skip
        return
    import getpass

    import psycopg

    from .storage.config_queries import AuditEntry, append_audit

    actor = f"cli:{getpass.getuser()}"
    row = AuditEntry(actor, "admin", "token.mint", f"token:{subject}",
                     after={"subject": subject, "role": role, "ttl_s": ttl_s})  # fmt: skip
    try:
        with psycopg.connect(settings.database_url, connect_timeout=5) as conn:
            append_audit(conn, row)
    except psycopg.Error as exc:
        _fail(f"cannot record the token in the audit log: {str(exc).strip()}", EXIT_FAILURE)


def _agent_token(args: argparse.Namespace, settings: Settings) -> int:
    """``opamp-fast agent-token``: a token the server started with the same settings binds to
    the given uid."""
    from .auth import agent_token_key, mint_agent_token, parse_ttl
    from .protocol import format_instance_uid, parse_instance_uid_text

    try:
        ttl_s = parse_ttl(args.ttl)
    except ValueError as exc:
        _fail(f"--ttl: {exc}", EXIT_USAGE)
    try:
        uid = format_instance_uid(parse_instance_uid_text(args.uid.strip()))
    except ValueError:
        _fail(f"--uid: {args.uid!r} is not a UUID (e.g. 0190c4b8-...)", EXIT_USAGE)
    try:
        key = agent_token_key(settings)
    except ConfigError as exc:
        _fail(str(exc), EXIT_USAGE)
    except OSError as exc:
        _fail(f"cannot read or create the JWT secret: {exc}", EXIT_FAILURE)
    if key is None:
        _fail(
            "no key for agent tokens: the REST API verifies public-key tokens; "
            "set --agent-token-secret",
            EXIT_USAGE,
        )
    print(mint_agent_token(key, instance_uid=uid, ttl_s=ttl_s))
    return 0


def _known_error(exc: BaseException) -> BaseException | None:
    """The user-facing error inside ``exc`` (nurseries wrap errors in exception groups)."""
    if isinstance(exc, OpAMPFastError | KeyboardInterrupt):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _known_error(inner)
            if found is not None:
                return found
    return None


async def _migrate(settings: Settings) -> None:
    from .storage import apply_migrations, open_database

    async with open_database(settings) as db:
        applied = await apply_migrations(db)
    print("applied: " + ", ".join(applied) if applied else "schema is up to date")


async def _serve(settings: Settings) -> None:
    from .server import serve

    # Long-lived start-up objects leave the collector's view; connections follow as the fleet
    # grows (gcpolicy.GrowthFreezer, run by the services).
    freeze_after_startup()
    logger.info("opamp-fast %s starting with %s", __version__, settings.redacted())
    shutdown = anyio.Event()
    worker = _worker_slot()
    async with anyio.create_task_group() as tg:
        # A worker's supervisor escalates by itself (SIGKILL after a bound), and a service
        # manager or a terminal may signal the worker directly too: a second signal must not
        # cut its drain short.
        tg.start_soon(_watch_signals, shutdown, tg.cancel_scope, worker is None)
        if settings.workers != "1":
            from .supervisor import supervise

            await supervise(settings, shutdown)
        else:
            await serve(settings, shutdown_trigger=shutdown, worker=worker)
        tg.cancel_scope.cancel()


def _worker_slot() -> WorkerSlot | None:
    """Set when this process is one of the workers of ``--workers`` (by the supervisor)."""
    from .supervisor import WORKER_DIR_ENV, WORKER_SLOT_ENV

    slot, directory = os.environ.get(WORKER_SLOT_ENV), os.environ.get(WORKER_DIR_ENV)
    if slot is None or directory is None:
        return None
    return WorkerSlot(int(slot), Path(directory))


async def _watch_signals(shutdown: anyio.Event, scope: CancelScope, second_stops: bool) -> None:
    """First SIGINT/SIGTERM: graceful shutdown. A second one: stop now (``second_stops``)."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            if shutdown.is_set():
                if not second_stops:
                    continue
                logger.warning("second %s: stopping immediately", signal.Signals(signum).name)
                scope.cancel()
                return
            logger.info("%s received: shutting down gracefully", signal.Signals(signum).name)
            shutdown.set()
