"""A stand-in for the store's `/metrics`: coordinators whose queues a test sets."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import generate_latest
from pytest_aiohttp import AiohttpServer


@dataclass
class Coordinator:
    depth: int = 0
    workers_alive: int | None = 4
    circuit_state: int | None = 0
    dropped: dict[str, int] = field(default_factory=dict)


class StoreMetrics:
    """What a market-data-store serves on `/metrics`, controllable by the test.

    `mode`: `ok` (an exposition from prometheus-client, as the store's), `error` (HTTP
    500), `garbage` (200 with a body that is no exposition), `hang` (never answers),
    `huge` (a valid exposition padded with comments past any sane size), `raw` (`raw`
    as it is, or what `raw` returns, called once per scrape: a hostile store).
    """

    def __init__(self) -> None:
        self.mode = "ok"
        self.coordinators: dict[str, Coordinator] = {}
        self.requests = 0
        self.released = asyncio.Event()
        self.url = ""
        self.raw: bytes | Callable[[], bytes] = b""

    async def serve(self, aiohttp_server: AiohttpServer) -> None:
        """Serve `/metrics` on a test server of its own; `url` is where."""
        app = web.Application()
        app.router.add_get("/metrics", self.handle)
        server = await aiohttp_server(app)
        self.url = str(server.make_url("/metrics"))

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.mode == "hang":
            await self.released.wait()
        if self.mode == "error":
            return web.Response(status=500, text="internal server error")
        if self.mode == "garbage":
            return web.Response(text="<html><body>502 Bad Gateway</body></html>")
        if self.mode == "raw":
            body = self.raw if isinstance(self.raw, bytes) else self.raw()
            return web.Response(body=body, content_type="text/plain")
        if self.mode == "huge":
            padding = b"# padding\n" * (1024 * 1024)
            return web.Response(body=padding + self.exposition(), content_type="text/plain")
        return web.Response(body=self.exposition(), content_type="text/plain")

    def exposition(self) -> bytes:
        registry = CollectorRegistry()
        depth = Gauge("mds_coord_queue_depth", "Queue depth", ["coord_id"], registry=registry)
        workers = Gauge("mds_coord_workers_alive", "Workers", ["coord_id"], registry=registry)
        circuit = Gauge("mds_coord_circuit_state", "Circuit", ["coord_id"], registry=registry)
        dropped = Counter(
            "mds_coord_items_dropped", "Dropped", ["coord_id", "reason"], registry=registry
        )
        for name, coordinator in self.coordinators.items():
            depth.labels(name).set(coordinator.depth)
            if coordinator.workers_alive is not None:
                workers.labels(name).set(coordinator.workers_alive)
            if coordinator.circuit_state is not None:
                circuit.labels(name).set(coordinator.circuit_state)
            for reason, count in coordinator.dropped.items():
                dropped.labels(name, reason).inc(count)
        return generate_latest(registry)
