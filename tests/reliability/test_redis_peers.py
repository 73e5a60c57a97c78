"""A Redis target pointed at something that is not Redis, against a real
`market-data-sidecar run`: the target fails, its circuit opens and `feedback` degrades
naming it and why; each attempt costs a connection or two and the process its usual
memory; nothing is blamed on the event. When a real `redis-server` takes the port over,
the event is delivered and `feedback` is healthy again.

The peer is `tests.support.fake_redis.FakeRedis`, raw bytes on a loopback port.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest
import redis.asyncio as aioredis

from market_data_sidecar.publishers.stream_readers import WATCH_INTERVAL, WATCH_INTERVAL_MAX
from tests.reliability.conftest import (
    FAST_RELAY_ENV,
    assert_still_serving,
    metric_value,
    post_json,
    relay_state,
    scrape,
    targets_env,
)
from tests.support import fake_redis
from tests.support.fake_redis import Answer, FakeRedis
from tests.support.helpers import SidecarProcess, eventually, store_payload
from tests.support.redis_servers import RedisServer, stream_fields

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

MIB = 1024 * 1024
CHECK_INTERVAL = 0.5
#: Connections one attempt (a delivery, or the `feedback` check's PING) may open.
CONNECTIONS_PER_ATTEMPT = 2
#: Far below what the peers announce (2 GB); the chart gives the container 192Mi.
RSS_LIMIT = 160 * MIB
KEY = "mdp:mdp.telemetry.feedback"

PEERS: dict[str, tuple[Answer, str]] = {
    "http-server": (fake_redis.garbage, "protocol"),
    "loading-forever": (fake_redis.loading, "loading"),
    "2-GB-bulk": (fake_redis.huge_bulk(pause=0.0), "protocol"),
    "nested-100000-deep": (fake_redis.nested(100_000), "protocol"),
    "array-of-a-million": (fake_redis.long_array(1_000_000), "protocol"),
}


def readings(seconds: float) -> int:
    """Readings the stream's reader watcher tries in `seconds` while every one fails: one at
    once, then after `WATCH_INTERVAL` doubled at each failure, up to `WATCH_INTERVAL_MAX`."""
    count, at, delay = 1, 0.0, WATCH_INTERVAL
    while True:
        delay = min(delay * 2, WATCH_INTERVAL_MAX)
        at += delay
        if at > seconds:
            return count
        count += 1


def pulse_target(url: str) -> dict[str, Any]:
    return {"kind": "redis-stream", "name": "pulse", "url": url, "timeout": 1.0}


async def feedback_component(sidecar: SidecarProcess) -> dict[str, Any]:
    _, body = await sidecar.get("/healthz")
    component: dict[str, Any] = next(
        c for c in json.loads(body)["components"] if c["name"] == "feedback"
    )
    return component


@pytest.mark.parametrize("peer", list(PEERS))
async def test_a_peer_that_is_not_redis_is_a_target_failure_until_redis_takes_its_port(
    peer: str, sidecar_process: Callable[..., SidecarProcess], tmp_path: Path
) -> None:
    answer, reason = PEERS[peer]
    async with FakeRedis(answer) as fake:
        sidecar = sidecar_process(
            {
                **FAST_RELAY_ENV,
                "SIDECAR_CIRCUIT_COOLDOWN": "1",
                "SIDECAR_CHECK_INTERVAL": str(CHECK_INTERVAL),
                **targets_env(pulse_target(fake.url)),
            }
        )
        await sidecar.wait_listening()
        began = time.monotonic()
        process = psutil.Process(sidecar.proc.pid)
        rss = [process.memory_info().rss]
        async with aiohttp.ClientSession() as session:
            status, _ = await post_json(session, f"{sidecar.url}/feedback", store_payload())
        assert status == 202

        async def degraded() -> bool:
            rss.append(process.memory_info().rss)
            component = await feedback_component(sidecar)
            problem = component["details"].get("reason", "")
            return bool(
                component["state"] == "degraded"
                and problem.startswith(f"target pulse circuit open ({reason}: ")
            )

        await eventually(degraded, timeout=30, message=f"feedback degraded: {reason}")
        [target] = (await relay_state(sidecar))["targets"]
        elapsed = time.monotonic() - began
        assert (target["circuit"], target["dropped"], target["buffer_depth"]) == ("open", 0, 1)
        assert target["last_error"].startswith(f"{reason}: ")
        exposition = await scrape(sidecar)
        assert metric_value(exposition, "sidecar_feedback_dropped_total") == 0
        assert metric_value(exposition, "sidecar_redis_up", target="pulse") == 0
        # Deliveries, the `feedback` check's PINGs, and the stream's reader watcher.
        watching = time.time() - process.create_time()
        attempts = target["retried"] + elapsed / CHECK_INTERVAL + readings(watching) + 2
        assert fake.accepted <= CONNECTIONS_PER_ATTEMPT * attempts, (fake.accepted, attempts)
        assert max(rss) < RSS_LIMIT, max(rss)
        port = fake.port

    server = RedisServer(tmp_path, port=port)
    server.start()
    try:
        async with aioredis.Redis.from_url(server.url) as client:
            # A reader, as the pipeline's consumer group: a key nobody reads is degraded.
            await client.xgroup_create(KEY, "pipeline", id="$", mkstream=True)

        async def healthy() -> bool:
            component = await feedback_component(sidecar)
            [target] = (await relay_state(sidecar))["targets"]
            return bool(component["state"] == "healthy" and target["delivered"] >= 1)

        await eventually(healthy, timeout=30, message="delivered once Redis took the port")
        async with aioredis.Redis.from_url(server.url) as client:

            async def appended() -> bool:
                return bool(await client.xlen(KEY))

            # A fleet that starts afresh holds a composite short of `hard` for a renewal.
            await eventually(appended, timeout=10, message="the composite appended")
            [entry] = stream_fields(await client.xrange(KEY, count=1))
        assert json.loads(entry["data"])["key"] == store_payload()["coordinator_id"]
    finally:
        server.stop()
    assert_still_serving(sidecar)
    assert "maximum recursion depth" not in sidecar.output()
