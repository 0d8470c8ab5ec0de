"""Operators' mistakes get one line on stderr and a non-zero exit: no traceback, no secret echoed.

Each case runs the real CLI in a subprocess, as an operator would."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kafka_pipeline.claimx.cache.admin import check_admin_exposure
from kafka_pipeline.config import ConfigError, Settings, TokenFileError, load_settings

SECRET = "hunter2-Sup3rSecret"
OWN_ENV_PREFIXES = ("KP_", "KAFKA_", "CLAIMX_", "REDIS_URL", "DELTA_", "WORKER_NAME", "LOG_")


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(OWN_ENV_PREFIXES)}
    return subprocess.run(
        [sys.executable, "-m", "kafka_pipeline", *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *expected: str) -> str:
    assert result.returncode != 0, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr and "Unclosed" not in result.stderr
    assert SECRET not in result.stderr and SECRET not in result.stdout
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("operator")
    binary = root / "token.bin"
    binary.write_bytes(b"\xff\xfe\x00" + SECRET.encode())
    deep = root / "deep.jsonl"
    deep.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    return {"dir": root, "binary": binary, "missing": root / "nope", "deep": deep}


UNREACHABLE = ["--bootstrap-servers", "127.0.0.1:1"]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"REDIS_URL": f"notaurl://user:{SECRET}@host:6379"}, ["cache.redis_url", "redis://"]),
        ({"CLAIMX_API_TOKEN_FILE": "DIR"}, ["api.token_file", "is a directory"]),
        ({"KP_API__TOKN": SECRET}, ["api.tokn", "Extra inputs"]),  # a misspelled secret setting
        ({"KP_ENV": "../../etc/passwd"}, ["KP_ENV must name a file"]),
        ({"KP_ENV": "production", "KP_CACHE__ADMIN_ROUTES": "true"}, ["cache.admin_routes", "0.0.0.0", "KP_CACHE__ADMIN_TOKEN"]),
    ],
)
def test_enrich_refuses_a_bad_setting_in_one_line(files: dict[str, Path], env: dict[str, str], expected: list[str]) -> None:
    env = {k: str(files[v.lower()]) if v in ("DIR", "BINARY", "MISSING") else v for k, v in env.items()}
    assert_one_line_error(run_cli("enrich", *UNREACHABLE, env=env), "kafka-pipeline enrich: config error:", *expected)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"REDIS_URL": f"redis://:{SECRET}@host:99999/0"}, ["cache.redis_url", "port"]),
        ({"REDIS_URL": f"redis://:{SECRET}@:6379/0"}, ["cache.redis_url", "host"]),
        ({"REDIS_URL": f"unix://:{SECRET}@"}, ["cache.redis_url", "socket path"]),
        ({"KP_API__TOKEN": f"[{SECRET}]"}, ["api.token"]),
        ({"KP_KAFKA__SASL_PASSWORD": f'{{"p": "{SECRET}"}}'}, ["kafka.sasl_password"]),
        ({"KP_CACHE__ADMIN_TOKEN": f"[1, {SECRET}]"}, ["cache.admin_token"]),
        ({"KP_CACHE__REDIS_URL": f"[{SECRET}]"}, ["cache.redis_url"]),
        ({"KP_API__TIMEOUT_S": "soon"}, ["api.timeout_s", "'soon'"]),  # a value that is no secret is shown
    ],
)
def test_more_bad_settings_in_one_line_without_the_secret(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: list[str]) -> None:
    """The same path as the CLI's (load_settings -> ConfigError), in process."""
    for name in [k for k in os.environ if k.startswith(OWN_ENV_PREFIXES)]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    message = str(raised.value)
    assert "\n" not in message and SECRET not in message and message.startswith("config error:")
    for text in expected:
        assert text in message, message


@pytest.mark.parametrize("case", ["binary", "missing", "dir", "/dev/zero"])
def test_an_unreadable_token_file_is_one_line(files: dict[str, Path], case: str) -> None:
    settings = Settings(api={"token_file": files.get(case, Path(case))})
    with pytest.raises(TokenFileError) as raised:
        settings.api.resolved_token()
    message = str(raised.value)
    assert message.startswith("config error: api.token_file:") and SECRET not in message and "\n" not in message
    assert isinstance(raised.value, OSError)  # the worker's token re-read logs it and tries again later


def test_simulate_api_port_out_of_range() -> None:
    assert_one_line_error(run_cli("simulate-api", "--port", "99999"), "--port", "0..65535")


def test_dlq_list_without_a_broker_closes_its_consumers() -> None:
    assert_one_line_error(run_cli("dlq", "list", *UNREACHABLE), "Kafka broker unreachable at 127.0.0.1:1")


def test_replay_of_a_deeply_nested_line_is_not_a_traceback(files: dict[str, Path]) -> None:
    result = run_cli("replay", "--dry-run", "--no-progress", str(files["deep"]))
    assert result.returncode == 0 and result.stderr == "", result.stderr
    # read as "not an event" (no type, no project key): sent as it is, for the worker to dead-letter
    assert "would send 1 events" in result.stdout and re.search(r"\(not an event\)\s+1\s+1", result.stdout), result.stdout


def test_settings_never_show_the_redis_password(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(cache={"redis_url": f"redis://:{SECRET}@cache.internal:6379/0", "admin_token": SECRET},
                        api={"token": SECRET}, kafka={"sasl_password": SECRET})
    for text in (repr(settings), str(settings), settings.model_dump_json(), json.dumps(settings.model_dump(mode="json")),
                 repr(settings.cache)):
        assert SECRET not in text
    assert settings.cache.redis_url is not None and SECRET in settings.cache.redis_url.get_secret_value()


def test_kp_env_names_a_file_in_config_and_production_keeps_admin_routes_off(monkeypatch: pytest.MonkeyPatch) -> None:
    for env in ("a/b", "..", "", "prod uction", "x\n"):
        monkeypatch.setenv("KP_ENV", env)
        with pytest.raises(ConfigError, match="KP_ENV must name a file"):
            load_settings()
    monkeypatch.setenv("KP_ENV", "production")
    production = load_settings()
    assert production.worker.http_host == "0.0.0.0" and production.cache.admin_routes is False
    check_admin_exposure(production)  # the shipped production config starts


def test_a_readable_token_file_is_read(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(f"  {SECRET}\n")
    token = Settings(api={"token_file": token_file}).api.resolved_token()
    assert token is not None and token.get_secret_value() == SECRET
