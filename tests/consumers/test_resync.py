"""Resync, seen by the real consumers: their consumer groups start at `$`, and the store
sends only on crossings, so a consumer that (re)starts after the last change learns the
current state only because the sidecar re-publishes it — every `SIDECAR_RESYNC_INTERVAL`
and as soon as a target recovers. Each test waits a few intervals, no longer."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web

from tests.consumers.conftest import (
    DEPTHS,
    Driver,
    Line,
    StartDriver,
    dead_letters,
    rate_is,
    start_consumers,
    start_sidecar,
    start_store,
    store_sends,
    stream_target,
)
from tests.support.helpers import SidecarProcess, eventually, free_port
from tests.support.redis_servers import RedisServer
from tests.support.store import Coordinator, StoreMetrics

pytestmark = pytest.mark.timeout(60, func_only=True)

INTERVAL = 1.0
#: A few intervals: the first resync may just have passed, and a consumer needs one more.
DEADLINE = 5 * INTERVAL
RESYNC = {"SIDECAR_RESYNC_INTERVAL": str(INTERVAL)}


def resynced(coordinator: str, level: str) -> Callable[[Line], bool]:
    """An event the observer saw that the sidecar re-published (header `resync`)."""
    return lambda line: (
        line.get("event") == "observed"
        and line["coordinator_id"] == coordinator
        and line["level"] == level
        and line["headers"].get("resync") == "true"
    )


async def reach(pipeline: Driver, observer: Driver, level: str, scale: float, rate: int) -> None:
    """Both consumers learn `level` of bars-coord from a re-publication, within the deadline."""
    await asyncio.gather(
        pipeline.wait_for(rate_is(level, scale, rate), DEADLINE, message=f"rate {rate}"),
        observer.wait_for(resynced("bars-coord", level), DEADLINE, message=f"{level} resynced"),
    )


async def test_a_consumer_started_after_the_last_event_gets_the_current_level(
    sidecar_process: Callable[..., SidecarProcess], start_driver: StartDriver, redis_url: str
) -> None:
    sidecar = await start_sidecar(sidecar_process, stream_target(redis_url), **RESYNC)
    store = await start_store(start_driver, sidecar)
    await store_sends(store, f"soft {DEPTHS['soft']} bars-coord")
    await store_sends(store, f"hard {DEPTHS['hard']} bars-coord")

    pipeline, observer = await start_consumers(start_driver, redis_url)
    await reach(pipeline, observer, "hard", 0.0, 1)
    assert await dead_letters(redis_url) == 0


async def test_consumers_get_the_current_level_after_redis_restarts_empty(
    sidecar_process: Callable[..., SidecarProcess],
    start_driver: StartDriver,
    redis_url: str,
    module_redis: RedisServer,
) -> None:
    sidecar = await start_sidecar(sidecar_process, stream_target(redis_url), **RESYNC)
    store = await start_store(start_driver, sidecar)
    await store_sends(store, f"soft {DEPTHS['soft']} bars-coord")

    module_redis.stop()
    module_redis.start()  # same port, no persistence: no stream, no consumer groups
    pipeline, observer = await start_consumers(start_driver, redis_url)
    await reach(pipeline, observer, "soft", 0.5, 30)
    assert await dead_letters(redis_url) == 0


@asynccontextmanager
async def serving(app: web.Application, port: int) -> AsyncIterator[str]:
    """`app` on 127.0.0.1:`port` until the block ends; yields its base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_consumers_get_the_current_level_after_the_sidecar_restarts(
    sidecar_process: Callable[..., SidecarProcess], start_driver: StartDriver, redis_url: str
) -> None:
    """The restarted sidecar has heard nothing from the store: its queue check knows the
    level, and resync hands it to consumers that started after both."""
    metrics = StoreMetrics()
    metrics.coordinators = {"bars-coord": Coordinator(depth=DEPTHS["hard"])}
    app = web.Application()
    app.router.add_get("/metrics", metrics.handle)
    async with serving(app, free_port()) as store_url:
        env = {
            **RESYNC,
            "SIDECAR_PORT": str(free_port()),
            "SIDECAR_STORE_METRICS_URL": f"{store_url}/metrics",
            "SIDECAR_QUEUE_CAPACITY": "1000",
        }
        first = await start_sidecar(sidecar_process, stream_target(redis_url), **env)
        store = await start_store(start_driver, first)
        await store_sends(store, f"hard {DEPTHS['hard']} bars-coord")
        assert first.stop() == 0

        await start_sidecar(sidecar_process, stream_target(redis_url), **env)
        pipeline, observer = await start_consumers(start_driver, redis_url)
        await reach(pipeline, observer, "hard", 0.0, 1)
    assert await dead_letters(redis_url) == 0


class Receiver:
    """An HTTP feedback receiver: what the sidecar POSTs, in order."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.app = web.Application()
        self.app.router.add_post("/feedback", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(json.loads(await request.read()))
        return web.Response(status=204)


async def test_an_http_target_back_from_an_outage_gets_the_current_level(
    sidecar_process: Callable[..., SidecarProcess], start_driver: StartDriver
) -> None:
    """Its port closed while the store changes level, then listening: it gets the latest
    level at once (conflated: never the one before) and again as a resync."""
    port = free_port()
    target = {"kind": "http", "name": "orchestrator", "url": f"http://127.0.0.1:{port}/feedback"}
    # Retries and the circuit's half-open trial within the deadline, not the 10 s default.
    fast = {"SIDECAR_RETRY_MAX": "0.5", "SIDECAR_CIRCUIT_COOLDOWN": str(INTERVAL)}
    sidecar = await start_sidecar(sidecar_process, target, **RESYNC, **fast)
    store = await start_store(start_driver, sidecar)
    await store_sends(store, f"soft {DEPTHS['soft']} bars-coord")
    await store_sends(store, f"hard {DEPTHS['hard']} bars-coord")

    receiver = Receiver()
    async with serving(receiver.app, port):
        await eventually(
            lambda: any(body.get("resync") for body in receiver.bodies),
            timeout=DEADLINE + INTERVAL,
            message="a resync after the outage",
        )
    levels = [(body["coordinator_id"], body["level"]) for body in receiver.bodies]
    assert set(levels) == {("bars-coord", "hard")}, receiver.bodies
