"""The command line as a user meets it: one clear line and the right exit status, never a
traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("OPAMP_FAST_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "opamp_fast", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], status: int, text: str) -> None:
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("opamp-fast: error:")]
    assert len(errors) == 1, result.stderr
    assert text in errors[0]


def test_version() -> None:
    result = run("version")
    assert result.returncode == 0
    assert result.stdout.startswith("opamp-fast ")


def test_help_documents_every_option_with_default() -> None:
    from opamp_fast.settings import OPTIONS

    result = run("serve", "--help")
    assert result.returncode == 0
    flat = " ".join(result.stdout.split())
    for opt in OPTIONS:
        assert opt.flag in flat
        assert f"env {opt.env}" in flat
    assert "default 4320" in flat


@pytest.mark.parametrize(
    ("args", "env", "text"),
    [
        (("serve", "--bogus"), {}, "unrecognized arguments: --bogus"),
        (("serve", "--port", "abc"), {}, "'abc' is not an integer"),
        (("serve", "--port", "0"), {}, "port: 0 must be between 1 and 65535"),
        (("serve",), {"OPAMP_FAST_PORT": "99999"}, "port: 99999"),
        (("serve", "--database-url", "mysql://x/y"), {}, "must start with postgresql://"),
        (("nonsense",), {}, "invalid choice"),
    ],
)
def test_usage_errors_exit_2(args, env, text) -> None:
    assert_one_line_error(run(*args, env=env), 2, text)


def test_unreachable_database_is_one_line(tmp_path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]  # bound, never listening: connection refused
        result = run(
            "serve",
            "--port",
            "1",
            "--host",
            "127.0.0.1",
            "--database-url",
            f"postgresql://u:hunter2@127.0.0.1:{dead_port}/db",
        )
    assert_one_line_error(result, 1, "cannot connect to Postgres")
    assert "hunter2" not in result.stderr  # secrets never logged


def test_unwritable_data_dir_is_one_line(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    secret = {"OPAMP_FAST_API_JWT_SECRET": "s" * 40}  # so the data directory is what fails
    result = run(
        "serve", "--data-dir", str(blocker / "pg"), "--port", str(_free_port()), env=secret
    )
    assert_one_line_error(result, 1, "data directory")
    # Without a configured secret, the generated one lives beside the data directory: that
    # location is checked first, with its own clear line.
    result = run("serve", "--data-dir", str(blocker / "pg"), "--port", str(_free_port()))
    assert_one_line_error(result, 1, "JWT secret file")


def test_port_in_use_says_so(tmp_path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = run(
            "serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(tmp_path / "pg")
        )
    assert_one_line_error(result, 1, f"port {port} on 127.0.0.1 is already in use")


@pytest.mark.postgres
def test_migrate_applies_then_reports_up_to_date(database_url) -> None:
    first = run("migrate", "--database-url", database_url)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("applied: 0001_server_instances.sql")
    second = run("migrate", "--database-url", database_url)
    assert second.returncode == 0
    assert second.stdout.strip() == "schema is up to date"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_bad_api_key_configuration_fails_before_start(tmp_path) -> None:
    result = run(
        "serve",
        "--port",
        str(_free_port()),
        "--data-dir",
        str(tmp_path / "pg"),
        "--api-jwt-algorithm",
        "RS256",
    )
    assert_one_line_error(result, 2, "api_jwt_public_key_file")
    assert not (tmp_path / "pg").exists()  # failed before the embedded Postgres started
