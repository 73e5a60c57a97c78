"""A simulated market-data-store: queues that fill and drain, its metrics, its feedback.

What the sidecar sees of it is what it sees of the real store: `mds_coord_*` series on a
Prometheus `/metrics` endpoint, and feedback POSTed in the store's exact payload when a
queue crosses a watermark, with the store's hysteresis (`soft` once above the low
watermark, `hard` once at the high one, `ok` with reason `queue_recovered` once back
at or below the low watermark).

Each queue is fed by a producer whose demand follows a slow wave, at the share of its
rate that `rate()` gives (the demo's producer follows the composite the pipeline reads),
and drained by the store's writers at a fixed rate; what does not fit is dropped. The
same store with its producer always at full rate, `running` without a feedback URL, is
the comparison: what the drops would be without feedback.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from loguru import logger
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from market_data_sidecar.demo.listening import listening
from market_data_sidecar.tasks import cancelled

#: How often the simulated queues move.
TICK = 0.1
#: How fast a queue moves: the share of its capacity that one second of demand above
#: (or below) its drain rate fills (or empties).
SPEED = 1.5
#: The noise's seed: a store and its comparison see the same demand.
SEED = 28
#: The store's HTTP broadcaster: 3 attempts, linear backoff, 2.5 s timeout.
SEND_ATTEMPTS = 3
SEND_BACKOFF = 0.5
SEND_TIMEOUT = 2.5


@dataclass
class SimulatedQueue:
    """One write coordinator: filled by a producer whose demand follows a slow wave with a
    little noise, drained by the store's writers."""

    coordinator_id: str
    capacity: int
    #: The producer's demand at full rate, as a share of the drain rate's scale:
    #: centre + amplitude * sin(2π t / period + phase).
    centre: float
    amplitude: float
    period: float
    phase: float
    #: What the writers drain, on the same scale: demand above it fills the queue.
    drain: float
    workers: int = 4
    depth: int = 0
    dropped: int = 0
    #: The depth before rounding, so slow changes accumulate.
    _level: float | None = field(default=None, repr=False)
    _soft_fired: bool = field(default=False, repr=False)
    _hard_fired: bool = field(default=False, repr=False)

    def demand(self, elapsed: float) -> float:
        angle = 2 * math.pi * elapsed / self.period + self.phase
        return self.centre + self.amplitude * math.sin(angle)

    def advance(self, elapsed: float, step: float, noise: float, rate: float = 1.0) -> int:
        """Move on by `step` seconds to `elapsed`, the producer at `rate` of its own;
        returns the items that did not fit (dropped)."""
        if self._level is None:  # the queue starts where its demand is
            self._level = self.demand(0.0) * self.capacity
        change = (rate * (self.demand(elapsed) + noise) - self.drain) * SPEED * step
        wanted = self._level + change * self.capacity
        overflow = max(0, round(wanted) - self.capacity)
        self._level = max(0.0, min(float(self.capacity), wanted))
        self.depth = round(self._level)
        self.dropped += overflow
        return overflow

    def crossing(self, low: float, high: float) -> tuple[str, str | None] | None:
        """The store's signal for the current depth, if any: `(level, reason)`."""
        low_mark, high_mark = low * self.capacity, high * self.capacity
        if not self._hard_fired and self.depth >= high_mark:
            self._hard_fired = self._soft_fired = True
            return "hard", None
        if not self._soft_fired and low_mark < self.depth < high_mark:
            self._soft_fired = True
            return "soft", None
        if (self._soft_fired or self._hard_fired) and self.depth <= low_mark:
            self._soft_fired = self._hard_fired = False
            return "ok", "queue_recovered"
        return None

    def payload(self, level: str, reason: str | None) -> dict[str, Any]:
        """Exactly what the store's HttpFeedbackBroadcaster POSTs (no `ts`, no `source`)."""
        return {
            "coordinator_id": self.coordinator_id,
            "queue_size": self.depth,
            "capacity": self.capacity,
            "level": level,
            "reason": reason,
            "utilization": round(self.depth / self.capacity, 4),
        }


def demo_queues() -> list[SimulatedQueue]:
    """Two coordinators: at full rate, bars overflows within seconds and quotes goes soft;
    bars' demand stays above its drain at half rate, so it reaches hard with feedback too."""
    return [
        SimulatedQueue(
            "bars-coord", 1000, centre=0.62, amplitude=0.42, period=12, phase=-0.42, drain=0.3
        ),
        SimulatedQueue(
            "quotes-coord", 5000, centre=0.45, amplitude=0.30, period=16, phase=-0.17, drain=0.6
        ),
    ]


@dataclass
class StoreCounts:
    sent: int = 0
    accepted: int = 0
    failed: int = 0


class SimulatedStore:
    """Serves the store's `/metrics` and POSTs its feedback to the sidecar."""

    def __init__(
        self,
        queues: Sequence[SimulatedQueue],
        *,
        low_watermark: float,
        high_watermark: float,
        noise: float = 0.01,
        rate: Callable[[], float] = lambda: 1.0,
    ) -> None:
        self.queues = list(queues)
        #: The share of its rate the producer runs at, asked at every tick.
        self.rate = rate
        self._random = random.Random(SEED)
        self.low = low_watermark
        self.high = high_watermark
        self.noise = noise
        self.counts = StoreCounts()
        self.metrics_url = ""
        self._registry = CollectorRegistry(auto_describe=True)
        self._depth = Gauge(
            "mds_coord_queue_depth", "Queue depth.", ["coord_id"], registry=self._registry
        )
        self._workers = Gauge(
            "mds_coord_workers_alive", "Live workers.", ["coord_id"], registry=self._registry
        )
        self._circuit = Gauge(
            "mds_coord_circuit_state",
            "0 closed, 1 open, 2 half-open.",
            ["coord_id"],
            registry=self._registry,
        )
        self._dropped = Counter(
            "mds_coord_items_dropped",
            "Items dropped.",
            ["coord_id", "reason"],
            registry=self._registry,
        )
        self._outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._export()

    # -- the metrics endpoint --------------------------------------------------------------

    @asynccontextmanager
    async def serving(self, host: str = "127.0.0.1") -> AsyncIterator[str]:
        """Serve `/metrics` on a free port; yields its URL."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics_endpoint)
        async with listening(app, host) as port:
            self.metrics_url = f"http://{host}:{port}/metrics"
            yield self.metrics_url

    async def _metrics_endpoint(self, request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(self._registry))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    def _export(self) -> None:
        for queue in self.queues:
            self._depth.labels(queue.coordinator_id).set(queue.depth)
            self._workers.labels(queue.coordinator_id).set(queue.workers)
            self._circuit.labels(queue.coordinator_id).set(0)

    # -- the simulation --------------------------------------------------------------------

    @property
    def dropped(self) -> int:
        """Items dropped so far, over every queue."""
        return sum(queue.dropped for queue in self.queues)

    @asynccontextmanager
    async def running(
        self, feedback_url: str | None = None, token: str | None = None
    ) -> AsyncIterator[None]:
        """Move the queues until the block exits, sending their feedback to `feedback_url`;
        without one, nothing is sent: the comparison."""
        name = "demo-store:comparison" if feedback_url is None else "demo-store:queues"
        tasks = [asyncio.create_task(self._simulate(sending=feedback_url is not None), name=name)]
        if feedback_url is not None:
            send = self._send(feedback_url, token)
            tasks.append(asyncio.create_task(send, name="demo-store:feedback"))
        try:
            yield
        finally:
            for task in tasks:  # the queues first: no tick after the block
                await cancelled(task)

    async def _simulate(self, *, sending: bool) -> None:
        started = previous = time.monotonic()
        while True:
            now = time.monotonic()
            elapsed, step, previous = now - started, now - previous, now
            rate = self.rate()
            # Only `/metrics` reads the gauges and the drop counter: a store that is not
            # served (the comparison) leaves them be.
            served = bool(self.metrics_url)
            for queue in self.queues:
                noise = self._random.uniform(-self.noise, self.noise)
                overflow = queue.advance(elapsed, step, noise, rate)
                if overflow and served:
                    self._dropped.labels(queue.coordinator_id, "queue_full").inc(overflow)
                signal = queue.crossing(self.low, self.high)
                if signal is not None and sending:
                    self._outbox.put_nowait(queue.payload(*signal))
            if served:
                self._export()
            await asyncio.sleep(TICK)

    async def _send(self, url: str, token: str | None) -> None:
        """One event at a time, in order, as the store's broadcaster does."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        timeout = aiohttp.ClientTimeout(total=SEND_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:
            while True:
                payload = await self._outbox.get()
                self.counts.sent += 1
                if await self._post(session, url, payload):
                    self.counts.accepted += 1
                else:
                    self.counts.failed += 1

    async def _post(
        self, session: aiohttp.ClientSession, url: str, payload: dict[str, Any]
    ) -> bool:
        what = f"{payload['coordinator_id']} {payload['level']} ({payload['utilization']:.0%})"
        for attempt in range(1, SEND_ATTEMPTS + 1):
            try:
                async with session.post(url, json=payload) as response:
                    if response.status < 300:
                        logger.info("store: feedback {} -> sidecar {}", what, response.status)
                        return True
                    problem = f"HTTP {response.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = type(exc).__name__
            if attempt < SEND_ATTEMPTS:
                await asyncio.sleep(SEND_BACKOFF * attempt)
        logger.warning("store: feedback {} not accepted: {}", what, problem)
        return False
