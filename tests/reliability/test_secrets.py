"""Secrets never appear in what the sidecar shows or sends.

A real `market-data-sidecar run` gets every kind of secret at once: a database password
(a role of the test's own PostgreSQL, which checks it with scram), the intake token, HTTP
signing secrets in both Standard Webhooks forms, credentials in a webhook URL, and Redis
passwords (right, wrong, and for a server that is not there). Every route and error path
is exercised; then every response, every log line (text and JSON formats), the metrics
and everything the targets received are searched for each secret. Configuration errors
at start-up, and `check`, are searched the same way.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from market_data_sidecar.publishers.http import sign
from tests.reliability.conftest import FAST_RELAY_ENV, raw_request, relay_state, targets_env
from tests.support.helpers import SidecarProcess, eventually, free_port, run_cli, store_payload
from tests.support.postgres import PostgresInstance
from tests.support.receivers import StartOrchestrator, WebhookReceiver
from tests.support.redis_servers import RedisServer

pytestmark = pytest.mark.slow

# Distinctive values: none can turn up anywhere by accident.
TOKEN = "tok-Hs8Kd2Pz5WqJ"
DATABASE_PASSWORD = "pgpw-7Qm2Vx9Lr4Tn"
SIGNING_SECRET = "sign-Ty6Bn3Jc8RvE"
WEBHOOK_KEY = b"whkey-Gm4Xs7Nd1LpQ"
WHSEC_SECRET = "whsec_" + base64.b64encode(WEBHOOK_KEY).decode()
URL_PASSWORD = "urlpw-Ae4Wb7Yc0TfK"
URL_API_KEY = "urlkey-Dv2Ks5Mx8QeH"
REDIS_PASSWORD = "redispw-Ob3Iq6Zt9Mh"
REDIS_WRONG_PASSWORD = "redisbad-Pe7Ra1Hu4G"
REDIS_ABSENT_PASSWORD = "redisgone-Uc5Ye8Wf2"

ROLE = "sidecar_probe"
MAX_BODY = 4096

#: What no one but the configured target may ever see.
SECRETS = {
    "token": TOKEN,
    "database password": DATABASE_PASSWORD,
    "signing secret": SIGNING_SECRET,
    "whsec secret": WHSEC_SECRET,
    "whsec key (base64)": WHSEC_SECRET.removeprefix("whsec_"),
    "whsec key": WEBHOOK_KEY.decode(),
    "webhook URL password": URL_PASSWORD,
    "webhook URL api key": URL_API_KEY,
    "redis password": REDIS_PASSWORD,
    "wrong redis password": REDIS_WRONG_PASSWORD,
    "redis password of a closed port": REDIS_ABSENT_PASSWORD,
}
#: A webhook URL's own credentials are for that webhook: it receives them, nobody else.
NOT_FOR_TARGETS = {k: v for k, v in SECRETS.items() if not k.startswith("webhook URL")}


def leaks(text: str, secrets: dict[str, str] = SECRETS) -> list[str]:
    return [name for name, value in secrets.items() if value in text]


@pytest.fixture
def database_role(pg: PostgresInstance) -> Iterator[str]:
    """A login role with a password, which the instance checks (scram over TCP)."""
    pg.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{DATABASE_PASSWORD}' IN ROLE pg_monitor")
    try:
        yield pg.dsn(ROLE, DATABASE_PASSWORD)
    finally:
        sessions = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s"
        with pg.connect() as connection:
            connection.execute(sessions, [ROLE])
        pg.execute(f"DROP ROLE IF EXISTS {ROLE}")


@dataclass
class Seen:
    """Everything the outside world got from the sidecar, as text to search."""

    responses: list[str] = field(default_factory=list)

    def record(self, label: str, answer: tuple[int, dict[str, str], bytes]) -> int:
        status, headers, body = answer
        shown = "\n".join(f"{k}: {v}" for k, v in headers.items())
        self.responses.append(f"{label} -> {status}\n{shown}\n{body.decode(errors='replace')}")
        return status


def _targets(signed: WebhookReceiver, retried: WebhookReceiver, redis_port: int) -> dict[str, str]:
    absent = free_port()
    return targets_env(
        {
            "kind": "http",
            "name": "signed",
            "url": f"http://hook:{URL_PASSWORD}@127.0.0.1:{signed.port}/hook?api_key={URL_API_KEY}",
            "secret": SIGNING_SECRET,
        },
        {"kind": "http", "name": "retried", "url": retried.url, "secret": WHSEC_SECRET},
        {
            "kind": "http",
            "name": "refused",
            "url": f"http://127.0.0.1:{absent}/hook",
            "secret": SIGNING_SECRET,
            "timeout": 0.5,
        },
        {
            "kind": "redis-stream",
            "name": "stream",
            "url": f"redis://:{REDIS_PASSWORD}@127.0.0.1:{redis_port}/0",
            "namespace": "secrets",
        },
        {
            "kind": "redis-pubsub",
            "name": "wrong-password",
            "url": f"redis://:{REDIS_WRONG_PASSWORD}@127.0.0.1:{redis_port}/0",
        },
        {
            "kind": "redis-stream",
            "name": "absent",
            "url": f"redis://:{REDIS_ABSENT_PASSWORD}@127.0.0.1:{absent}/0?password={REDIS_ABSENT_PASSWORD}",
            "timeout": 0.5,
        },
    )


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_no_secret_in_responses_logs_metrics_or_what_targets_receive(
    log_format: str,
    sidecar_process: Callable[..., SidecarProcess],
    orchestrator: StartOrchestrator,
    redis_server_factory: Callable[..., RedisServer],
    database_role: str,
) -> None:
    signed, retried = await orchestrator(), await orchestrator()
    retried.answer(500, 503)  # two failed attempts first: retries get logged
    redis_server = redis_server_factory("--requirepass", REDIS_PASSWORD)
    sidecar = sidecar_process(
        {
            **FAST_RELAY_ENV,
            "SIDECAR_TOKEN": TOKEN,
            "SIDECAR_DATABASE_URL": database_role,
            "SIDECAR_MAX_BODY_BYTES": str(MAX_BODY),
            "SIDECAR_MAX_EVENTS_PER_REQUEST": "5",
            "SIDECAR_LOG_FORMAT": log_format,
            "SIDECAR_LOG_LEVEL": "DEBUG",
            # The stream is in fleet scope: a fresh fleet holds `soft` back one renewal.
            "SIDECAR_FLEET_RENEWAL": "0.2",
            "SIDECAR_FLEET_LEASE": "1",
            **_targets(signed, retried, redis_server.port),
        }
    )
    await sidecar.wait_listening()
    seen = Seen()

    def call(label: str, method: str, path: str, body: bytes = b"", **headers: Any) -> int:
        return seen.record(label, raw_request(sidecar.port, method, path, body, headers))

    valid = store_payload("bars-coord", 850, reason="high_watermark")
    event = json.dumps(valid).encode()
    json_type = {"Content-Type": "application/json"}
    auth = {"Authorization": f"Bearer {TOKEN}", **json_type}
    not_utf8 = b"Bearer \xff" + TOKEN.encode()
    intake: list[tuple[str, bytes, dict[str, Any], int]] = [
        ("no token", event, json_type, 401),
        ("wrong token", event, {**json_type, "Authorization": f"Bearer {TOKEN}x"}, 401),
        ("token as basic", event, {**json_type, "Authorization": f"Basic {TOKEN}"}, 401),
        ("token bytes not UTF-8", event, {**json_type, "Authorization": not_utf8}, 401),
        ("malformed", b'{"coordinator_id": ', auth, 400),
        ("too large", b" " * (MAX_BODY + 1), auth, 413),
        ("too many", json.dumps([valid] * 6).encode(), auth, 413),
        ("not json", event, {**auth, "Content-Type": "text/plain"}, 415),
        ("invalid", json.dumps([valid, {**valid, "queue_size": TOKEN}]).encode(), auth, 422),
        ("one event", event, auth, 202),
        ("two events", json.dumps([valid] * 2).encode(), auth, 202),
    ]
    for label, body, headers, expected in intake:
        assert call(label, "POST", "/feedback", body, **headers) == expected, label

    # Every delivery outcome: delivered, retried then delivered, refused, a wrong password.
    # (The three accepted events are for one coordinator: targets may conflate them.)
    async def every_target_has_an_outcome() -> bool:
        targets = {t["name"]: t for t in (await relay_state(sidecar))["targets"]}
        delivered = ("signed", "retried", "stream")
        return all(
            targets[n]["delivered"] and not targets[n]["buffer_depth"] for n in delivered
        ) and all(targets[n]["last_error"] for n in ("refused", "wrong-password", "absent"))

    await eventually(every_target_has_an_outcome, timeout=15, message="delivery outcomes")

    async def the_fleet_composite_written() -> bool:
        url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{redis_server.port}/0"
        async with aioredis.Redis.from_url(url) as client:
            return bool(await client.xlen("secrets:secrets.telemetry.feedback"))

    await eventually(the_fleet_composite_written, message="the fleet's composite written")
    await eventually(lambda: _database_healthy(sidecar), message="the password is accepted")

    for path in [
        "/", "/livez", "/readyz", "/readyz?verbose", "/healthz", "/healthz?verbose",
        "/healthz?exclude=database", "/metrics", "/feedback", "/openapi.json", "/nope",
    ]:  # fmt: skip
        call(path, "GET", path)
    assert call("wrong method", "DELETE", "/feedback") == 405

    targets = {t["name"]: t for t in (await relay_state(sidecar))["targets"]}
    assert targets["wrong-password"]["last_error"].startswith("auth")
    assert targets["absent"]["last_error"].startswith("connection")
    assert targets["refused"]["last_error"].startswith("connection")
    sidecar.stop()  # the shutdown's lines are searched too
    log = sidecar.log_path.read_text(errors="replace")
    assert "feedback target retried: delivery failed (http_500" in log  # the paths were taken
    for answer in seen.responses:
        assert not leaks(answer), answer
    assert not leaks(log), [line for line in log.splitlines() if leaks(line)]
    if log_format == "json":
        for line in filter(None, log.splitlines()):
            json.loads(line)  # every line is a JSON object a collector can parse

    for attempt in (*signed.attempts, *retried.attempts):
        sent = f"{attempt.headers}\n{attempt.body.decode()}"
        assert not leaks(sent, NOT_FOR_TARGETS), sent
    async with aioredis.Redis.from_url(
        f"redis://:{REDIS_PASSWORD}@127.0.0.1:{redis_server.port}/0"
    ) as client:
        entries = await client.xrange("secrets:secrets.telemetry.feedback")
    assert entries
    assert not leaks(repr(entries), NOT_FOR_TARGETS)
    # The secrets were used, not just hidden: signatures verify with each target's key,
    # and the webhook URL's credentials reached that webhook (and only it).
    for receiver, key in ((signed, SIGNING_SECRET.encode()), (retried, WEBHOOK_KEY)):
        for attempt in receiver.delivered:
            headers = attempt.headers
            webhook = (headers["webhook-id"], headers["webhook-timestamp"], attempt.body)
            assert headers["webhook-signature"] == sign(key, *webhook)
    basic = base64.b64encode(f"hook:{URL_PASSWORD}".encode()).decode()
    assert {a.headers.get("Authorization") for a in signed.attempts} == {f"Basic {basic}"}


async def _database_healthy(sidecar: SidecarProcess) -> bool:
    _, body = await sidecar.get("/healthz")
    states = {c["name"]: c["state"] for c in json.loads(body)["components"]}
    return states.get("database") == "healthy"


# -- start-up and one-shot commands ----------------------------------------------------------

WRONG_DATABASE_PASSWORD = "pgwrong-Kx3Fv8Rb1Wd"


def _secret_env() -> dict[str, str]:
    """Every secret set, as in a pod, with a configuration that is otherwise valid."""
    return {
        "SIDECAR_TOKEN": TOKEN,
        "SIDECAR_DATABASE_URL": f"postgresql://{ROLE}:{DATABASE_PASSWORD}@127.0.0.1:1/postgres",
        "SIDECAR_STORE_METRICS_URL": "",
        "SIDECAR_DISK_PATHS": '["/"]',
        "SIDECAR_PORT": str(free_port()),
        **targets_env(*_valid_targets()),
    }


def _valid_targets() -> list[dict[str, Any]]:
    return [
        {"kind": "http", "name": "a", "url": "http://127.0.0.1:1/hook", "secret": SIGNING_SECRET},
        {"kind": "http", "name": "b", "url": "http://127.0.0.1:1/hook", "secret": WHSEC_SECRET},
        {"kind": "redis-stream", "url": f"redis://:{REDIS_PASSWORD}@127.0.0.1:1/0"},
    ]


def _with_target(target: dict[str, Any]) -> dict[str, str]:
    return targets_env(*_valid_targets(), target)


#: One bad setting each, beside all the secrets; several carry a secret in the bad value.
BAD_SETTINGS: dict[str, dict[str, str]] = {
    "port": {"SIDECAR_PORT": "not-a-port"},
    "whsec not base64": _with_target(
        {"kind": "http", "url": "http://127.0.0.1:1/h", "secret": f"whsec_!{SIGNING_SECRET}"}
    ),
    "redis scheme": _with_target(
        {"kind": "redis-pubsub", "url": f"http://:{REDIS_PASSWORD}@127.0.0.1:1/0"}
    ),
    "redis port": _with_target(
        {"kind": "redis-stream", "url": f"redis://:{REDIS_PASSWORD}@127.0.0.1:notaport/0"}
    ),
    "webhook port": _with_target(
        {"kind": "http", "url": f"http://hook:{URL_PASSWORD}@127.0.0.1:x/h?api_key={URL_API_KEY}"}
    ),
    "unknown option": _with_target(
        {"kind": "http", "url": "http://127.0.0.1:1/h", "secret": SIGNING_SECRET, "token": TOKEN}
    ),
    "targets not JSON": {"SIDECAR_TARGETS": json.dumps(_valid_targets())[:-2]},
}


@functools.cache
def _start_with(bad: str) -> subprocess.CompletedProcess[str]:
    """`market-data-sidecar run` with every secret and one bad setting (run once per case)."""
    return run_cli("run", env={**_secret_env(), **BAD_SETTINGS[bad]})


@pytest.mark.parametrize("bad", sorted(BAD_SETTINGS))
def test_a_configuration_error_shows_no_secret(bad: str) -> None:
    result = _start_with(bad)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert not leaks(output), output


@pytest.mark.parametrize(
    "bad",
    sorted(BAD_SETTINGS),
)
def test_a_configuration_error_is_one_line_naming_the_setting_and_exits_2(bad: str) -> None:
    result = _start_with(bad)
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert result.returncode == 2, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith("market-data-sidecar: invalid configuration: "), lines


@pytest.mark.parametrize("password", [DATABASE_PASSWORD, WRONG_DATABASE_PASSWORD])
def test_check_shows_no_database_password(database_role: str, password: str) -> None:
    dsn = database_role.replace(DATABASE_PASSWORD, password)
    env = {**_secret_env(), "SIDECAR_DATABASE_URL": dsn}
    result = run_cli("check", "--json", "--log-level", "DEBUG", env=env)
    components = {c["name"]: c for c in json.loads(result.stdout)["components"]}
    database = components["database"]
    if password == DATABASE_PASSWORD:
        assert database["state"] == "healthy", database
    else:
        assert database["state"] == "unhealthy", database
        assert "password authentication failed" in database["details"]["error"]
    output = result.stdout + result.stderr
    assert not leaks(output, {**SECRETS, "wrong database password": WRONG_DATABASE_PASSWORD})


@pytest.mark.parametrize(
    "log_format",
    ["text", "json"],
)
def test_a_logged_exception_shows_no_local_values(log_format: str, tmp_path: Path) -> None:
    """Any exception the sidecar logs (an unexpected 500, a publisher bug, an asyncio
    error routed from standard logging) is logged as `run` configures logging. This one
    is how a header that is not UTF-8 once failed the token comparison."""
    program = tmp_path / "failing.py"
    program.write_text(
        textwrap.dedent(
            f"""
            import hmac
            import os

            from loguru import logger
            from market_data_sidecar.logs import configure_logging

            class Intake:
                def __init__(self, token):
                    self._token = token.encode()

                def admit(self, given):
                    return hmac.compare_digest(given.encode(), self._token)

            configure_logging({log_format!r}, "INFO")
            try:
                Intake(os.environ["SIDECAR_TOKEN"]).admit("\\udcff")
            except UnicodeEncodeError:
                logger.exception("unhandled error serving POST /feedback")
            """
        )
    )
    result = subprocess.run(
        [sys.executable, str(program)],
        env={**os.environ, "SIDECAR_TOKEN": TOKEN},  # not in the source the traceback quotes
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert "unhandled error serving" in result.stderr
    assert "UnicodeEncodeError" in result.stderr  # the traceback is there...
    assert not leaks(result.stderr), result.stderr  # ...without the values it worked on
