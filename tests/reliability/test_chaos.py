"""The relay rides out real faults while the store keeps sending.

A generator POSTs 2,000 events for 5 coordinators over about 15 s to a real
`market-data-sidecar run` with four targets: two HTTP orchestrators, a Redis stream in
`all` mode and one in `latest` mode on a redis-server of the test's own, and the
database check pointed at a PostgreSQL of the test's own. At set points of the
generator's progress, Redis is restarted on its port, one orchestrator is stopped and
started again on its port, and PostgreSQL is frozen (SIGSTOP) and thawed.

At the end every target holds every coordinator's latest state, and the `all` stream
holds every event sent, less what the metrics say that target dropped. Throughout, the
intake answers 202 promptly and the other targets keep receiving: no fault spreads.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from market_data_core.events import JsonCodec
from market_data_core.telemetry import FeedbackEvent
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from tests.reliability.conftest import (
    FAST_RELAY_ENV,
    assert_still_serving,
    metric_value,
    post_json,
    relay_state,
    scrape,
    targets_env,
)
from tests.support.helpers import SidecarProcess, eventually
from tests.support.postgres import PostgresInstance
from tests.support.receivers import StartOrchestrator, WebhookReceiver
from tests.support.redis_servers import RedisServer, stream_fields

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

EVENTS = 2_000
COORDINATORS = [f"coord-{n}" for n in range(5)]
DURATION = 15.0
CAPACITY = 10_000
LEVELS = ("ok", "soft", "hard")
#: The intake answers before delivery: even with every fault at once it stays quick.
INTAKE_SLOWEST = 2.0
STREAM = "telemetry.feedback"


def event(sequence: int) -> dict[str, Any]:
    """Event number `sequence`; its queue size is the sequence, so order is visible.

    Odd ones are what the store's broadcaster sends (no `ts`, no `source`), even ones
    Core `FeedbackEvent` JSON."""
    coordinator = COORDINATORS[sequence % len(COORDINATORS)]
    body: dict[str, Any] = {
        "coordinator_id": coordinator,
        "queue_size": sequence,
        "capacity": CAPACITY,
        "level": LEVELS[sequence % len(LEVELS)],
        "reason": f"seq-{sequence}",
    }
    if sequence % 2:
        body["utilization"] = sequence / CAPACITY
    else:
        body |= {"source": "store", "ts": time.time()}
    return body


@dataclass
class Generator:
    """Sends every event once, paced over `DURATION`, in requests of 1 to 4 events."""

    url: str
    sent: int = 0
    #: The last queue size posted per coordinator: the state every target must end with.
    latest: dict[str, int] = field(default_factory=dict)
    slowest: float = 0.0

    async def run(self) -> None:
        pace = random.Random(20)
        started = time.monotonic()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            while self.sent < EVENTS:
                size = min(pace.randint(1, 4), EVENTS - self.sent)
                batch = [event(self.sent + n + 1) for n in range(size)]
                # Pacing, not synchronisation: the load is spread over the faults.
                due = started + self.sent * DURATION / EVENTS
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                before = time.monotonic()
                status, body = await post_json(session, self.url, batch[0] if size == 1 else batch)
                self.slowest = max(self.slowest, time.monotonic() - before)
                assert (status, body) == (202, {"accepted": size})
                self.latest |= {e["coordinator_id"]: e["queue_size"] for e in batch}
                self.sent += size

    async def reached(self, count: int) -> None:
        await eventually(lambda: self.sent >= count, timeout=3 * DURATION, message=f"{count} sent")


async def test_every_target_ends_with_the_latest_state_through_restarts_and_freezes(
    sidecar_process: Callable[..., SidecarProcess],
    orchestrator: StartOrchestrator,
    redis_server_factory: Callable[..., RedisServer],
    pg: PostgresInstance,
) -> None:
    hook_a, hook_b = await orchestrator(), await orchestrator()
    redis_server = redis_server_factory()
    sidecar = sidecar_process(
        {
            **FAST_RELAY_ENV,
            "SIDECAR_DATABASE_URL": pg.dsn(),
            "SIDECAR_CHECK_TIMEOUT": "1",
            "SIDECAR_DATABASE_STATEMENT_TIMEOUT": "0.5",
            **targets_env(
                {"kind": "http", "name": "hook-a", "url": hook_a.url, "timeout": 0.5},
                {"kind": "http", "name": "hook-b", "url": hook_b.url, "timeout": 0.5},
                _stream_target("stream-all", redis_server.url, mode="all"),
                _stream_target("stream-latest", redis_server.url, mode="latest"),
            ),
        }
    )
    await sidecar.wait_listening()
    await eventually(lambda: _status(sidecar, "/readyz", 200), message="ready with its database")
    generator = Generator(f"{sidecar.url}/feedback")

    async def faults() -> None:
        await generator.reached(300)
        await _restart(redis_server, until=generator.reached(450))

        await generator.reached(700)
        await hook_a.stop()
        delivered_to_b = len(hook_b.delivered)
        await generator.reached(950)
        # The other orchestrator kept receiving while this one was down.
        assert len(hook_b.delivered) > delivered_to_b
        await hook_a.start()

        await generator.reached(1_200)
        pg.freeze()
        try:
            await eventually(
                lambda: _status(sidecar, "/readyz", 503), message="unready, database frozen"
            )
            assert await _status(sidecar, "/livez", 200), "a database outage is no liveness fault"
            await generator.reached(1_500)
        finally:
            pg.resume()
        await eventually(
            lambda: _status(sidecar, "/readyz", 200), timeout=15, message="ready again"
        )

    async with asyncio.TaskGroup() as group:
        group.create_task(generator.run(), name="generator")
        group.create_task(faults(), name="faults")

    assert generator.slowest < INTAKE_SLOWEST, f"the intake waited {generator.slowest:.2f}s"
    async with aioredis.Redis.from_url(redis_server.url) as client:

        async def settled() -> bool:
            state = await relay_state(sidecar)
            return all(t["buffer_depth"] == 0 for t in state["targets"]) and all(
                _latest(entries) == generator.latest
                for entries in [
                    _delivered(hook_a),
                    _delivered(hook_b),
                    await _stream(client, "stream-latest"),
                ]
            )

        await eventually(settled, timeout=30, message="every target holds the latest state")
        kept_all = await _stream(client, "stream-all", resyncs=False)
        kept_latest = await _stream(client, "stream-latest")

    exposition = await scrape(sidecar)
    accepted = metric_value(exposition, "sidecar_feedback_received_total", outcome="accepted")
    dropped = metric_value(exposition, "sidecar_feedback_dropped_total", target="stream-all")
    assert accepted == EVENTS
    # Each fault really happened: the targets it hit retried, the database check timed out.
    for target in ("hook-a", "stream-all", "stream-latest"):
        assert metric_value(exposition, "sidecar_feedback_retried_total", target=target) > 0
    assert metric_value(exposition, "sidecar_check_errors_total", component="database") > 0
    # At least once: a batch cut short by the restart is sent again whole, so count ids.
    distinct = {event_id: sequence for event_id, sequence, _ in kept_all}
    assert len(distinct) == EVENTS - dropped, (len(kept_all), dropped)
    assert set(distinct.values()) <= set(range(1, EVENTS + 1))
    assert len(set(distinct.values())) == len(distinct), "one event, one id"
    for receiver in (_delivered(hook_a), _delivered(hook_b), kept_all, kept_latest):
        _assert_in_order_per_coordinator(receiver)
    assert_still_serving(sidecar)


def _stream_target(name: str, url: str, *, mode: str) -> dict[str, Any]:
    return {"kind": "redis-stream", "name": name, "url": url, "namespace": name,
            "mode": mode, "timeout": 0.5, "scope": "coordinator"}  # fmt: skip


# -- faults ----------------------------------------------------------------------------------


async def _restart(server: RedisServer, *, until: Any) -> None:
    """Stop Redis, wait for `until`, start it again on the same port.

    `SHUTDOWN SAVE`: the test's server keeps no data otherwise, and the entries delivered
    before the restart must still be there to be counted."""
    # No retries: the server closing the connection is the command succeeding.
    client = aioredis.Redis(port=server.port, retry=Retry(NoBackoff(), 0))
    try:
        await client.shutdown(save=True)
    finally:
        await client.aclose()
    assert server.proc is not None
    await asyncio.to_thread(server.proc.wait, 10)
    await until
    await asyncio.to_thread(server.start)


async def _status(sidecar: SidecarProcess, path: str, expected: int) -> bool:
    try:
        status, _ = await sidecar.get(path, timeout=aiohttp.ClientTimeout(total=2))
    except (aiohttp.ClientError, TimeoutError):
        return False
    return status == expected


# -- what each target holds ------------------------------------------------------------------

Entry = tuple[str, int, str]  # (event id, sequence, coordinator), in arrival order


def _delivered(receiver: WebhookReceiver) -> list[Entry]:
    return [
        (a.headers["webhook-id"], a.json["queue_size"], a.json["coordinator_id"])
        for a in receiver.delivered
    ]


async def _stream(client: aioredis.Redis, namespace: str, *, resyncs: bool = True) -> list[Entry]:
    """Every entry of a stream target, decoded by Core's codec as its consumers do;
    without the re-publications of current state (`resync`) when `resyncs` is False, as
    a reader of the log that wants only the store's events does."""
    codec = JsonCodec()
    entries = []
    for fields in stream_fields(await client.xrange(f"{namespace}:{namespace}.{STREAM}")):
        data = fields["data"].encode()
        envelope = codec.decode(data, FeedbackEvent)
        headers = json.loads(data)["meta"]["headers"]
        if not resyncs and headers.get("resync") == "true":
            continue
        entry = (headers["event_id"], envelope.payload.queue_size, envelope.payload.coordinator_id)
        entries.append(entry)
    return entries


def _latest(entries: Iterable[Entry]) -> dict[str, int]:
    return {coordinator: sequence for _, sequence, coordinator in entries}


def _assert_in_order_per_coordinator(entries: list[Entry]) -> None:
    """Never an older state after a newer one (a retried event may repeat)."""
    last: dict[str, int] = {}
    for _, sequence, coordinator in entries:
        assert sequence >= last.get(coordinator, 0), (coordinator, sequence, last[coordinator])
        last[coordinator] = sequence
