"""Fixtures for whole-sidecar reliability tests: a real `market-data-sidecar run` process
against real PostgreSQL, Redis and HTTP servers of the test's own, and its metrics read
back the way Prometheus reads them.

The servers come from the fixtures of the levels that own them, imported rather than
copied; every one of them is stopped (or thawed) at the end whatever happened.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Mapping
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.checks.conftest import pg, postgres_instance, postgres_root  # noqa: F401
from tests.publishers.conftest import orchestrator  # noqa: F401
from tests.support.helpers import SidecarProcess
from tests.support.redis_fixtures import redis_server_factory  # noqa: F401

#: Relay pacing fast enough that faults of a second or two are ridden out in tests.
FAST_RELAY_ENV = {
    "SIDECAR_RETRY_INITIAL": "0.01",
    "SIDECAR_RETRY_MAX": "0.2",
    "SIDECAR_CIRCUIT_FAILURES": "3",
    "SIDECAR_CIRCUIT_COOLDOWN": "0.3",
    "SIDECAR_DRAIN_TIMEOUT": "1",
    "SIDECAR_SHUTDOWN_GRACE": "0",
    "SIDECAR_SYNTHESIZE_FEEDBACK": "false",
}


def targets_env(*targets: Mapping[str, Any]) -> dict[str, str]:
    return {"SIDECAR_TARGETS": json.dumps(list(targets))}


def metric_value(exposition: str, sample: str, **labels: str) -> float:
    """The sum of `sample` over series whose labels include `labels` (0 when absent)."""
    total = 0.0
    for family in text_string_to_metric_families(exposition):
        for found in family.samples:
            if found.name == sample and all(found.labels.get(k) == v for k, v in labels.items()):
                total += found.value
    return total


async def scrape(sidecar: SidecarProcess) -> str:
    status, body = await sidecar.get("/metrics")
    assert status == 200, body
    return body


async def accepted_total(sidecar: SidecarProcess) -> int:
    """`sidecar_feedback_received_total{outcome="accepted"}` as Prometheus would read it."""
    exposition = await scrape(sidecar)
    return int(metric_value(exposition, "sidecar_feedback_received_total", outcome="accepted"))


async def relay_state(sidecar: SidecarProcess) -> dict[str, Any]:
    status, body = await sidecar.get("/feedback")
    assert status == 200, body
    state: dict[str, Any] = json.loads(body)
    return state


async def post_json(
    session: aiohttp.ClientSession, url: str, document: Any, *, token: str | None = None
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with session.post(url, json=document, headers=headers) as response:
        return response.status, await response.json(content_type=None)


def assert_still_serving(sidecar: SidecarProcess) -> None:
    """The process is up, and nothing reached the middleware's last-resort 500."""
    assert sidecar.proc.poll() is None, f"sidecar exited {sidecar.proc.returncode}"
    output = sidecar.output()
    assert "unhandled error serving" not in output, output[-4000:]


def raw_request(
    port: int,
    method: str,
    path: str,
    body: bytes = b"",
    headers: Mapping[str, str | bytes] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request exactly as given (header values may be bytes that are not UTF-8)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            connection.putheader(name, value)
        connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()
