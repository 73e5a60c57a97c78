"""Resync: every target converges on each coordinator's current state, whatever it lost.

The router against real HTTP receivers and a real Redis: periodic re-publication, the
immediate one after an outage or a Redis restart, its priority below what the store
sent, and the poison event that must not block a target.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as aioredis

from market_data_sidecar.feedback.delivery import Publisher
from market_data_sidecar.feedback.lane import Target
from market_data_sidecar.feedback.model import Feedback
from market_data_sidecar.feedback.router import Router
from market_data_sidecar.publishers.http import HttpPublisher
from market_data_sidecar.publishers.redis import RedisStreamPublisher
from market_data_sidecar.settings import HttpTargetSettings, RedisStreamTargetSettings
from tests.feedback.conftest import RouterFactory
from tests.support import parts
from tests.support.helpers import eventually, feedback
from tests.support.receivers import StartOrchestrator
from tests.support.redis_servers import RedisServer, stream_fields

pytest_plugins = ["tests.support.redis_fixtures"]


class RecordingPublisher(Publisher):
    """An in-memory target that keeps every batch, in `latest` or `all` mode."""

    max_batch = 10

    def __init__(self, name: str, *, conflate: bool = True) -> None:
        super().__init__(name)
        self.conflate = conflate
        self.delivered: list[Feedback] = []

    async def deliver(self, batch: Sequence[Feedback]) -> None:
        self.delivered.extend(batch)

    def resyncs(self) -> list[Feedback]:
        return [f for f in self.delivered if f.resync]


def target(publisher: Publisher) -> Target:
    return parts.target(publisher, endpoint=publisher.name)


def http(name: str, url: str) -> Target:
    settings = HttpTargetSettings(kind="http", name=name, url=url, timeout=0.5)
    return parts.target_of(HttpPublisher(settings), settings)


def stream(url: str, **options: Any) -> tuple[Target, str]:
    settings = RedisStreamTargetSettings(
        kind="redis-stream", name="pulse", url=url, timeout=0.5, scope="coordinator", **options
    )
    return parts.target_of(RedisStreamPublisher(settings), settings), settings.key


def metric(routed: Router, name: str, **labels: str) -> float:
    return routed._metrics.registry.get_sample_value(name, labels) or 0.0


async def test_every_interval_each_target_gets_every_current_state_again_marked_resync(
    router: RouterFactory,
) -> None:
    latest, log = RecordingPublisher("latest"), RecordingPublisher("log", conflate=False)
    routed = await router(target(latest), target(log), resync_interval=0.2)
    for size in (10, 500, 900):
        routed.submit(feedback("bars", size, level="hard", reason=f"r{size}"))
    routed.submit(feedback("quotes", 1, level="ok"))

    for publisher in (latest, log):
        await eventually(
            lambda p=publisher: {f.coordinator_id for f in p.resyncs()} == {"bars", "quotes"},
            message=f"{publisher.name} resynced",
        )
        bars = next(f for f in publisher.resyncs() if f.coordinator_id == "bars")
        # The current state, as it was sent: level, reason and size; only the id is new.
        assert (bars.event.queue_size, bars.event.level.value, bars.reason) == (900, "hard", "r900")
        assert bars.id not in {f.id for f in publisher.delivered if not f.resync}
    assert metric(routed, "sidecar_feedback_resynced_total", target="latest") >= 2
    # A resync is not a crossing: the log got each store event exactly once before it.
    assert [f.event.queue_size for f in log.delivered if not f.resync][:4] == [10, 500, 900, 1]


async def test_a_target_back_from_an_outage_is_resynced_at_once(
    orchestrator: StartOrchestrator, router: RouterFactory
) -> None:
    receiver = await orchestrator()
    receiver.answer(503, 503, 503, 503)
    # An interval far beyond the test: only the recovery can cause this resync.
    routed = await router(http("orch", receiver.url), resync_interval=3600)
    routed.submit(feedback("quotes", 1, level="ok"))
    routed.submit(feedback("bars", 950, level="hard"))

    await eventually(
        lambda: (
            {e["coordinator_id"] for e in receiver.events() if e.get("resync")}
            == {"bars", "quotes"}
        ),
        message="both coordinators resynced after the outage",
    )
    resynced = {e["coordinator_id"]: e for e in receiver.events() if e.get("resync")}
    assert resynced["bars"]["level"] == "hard"
    assert resynced["bars"]["utilization"] == 0.95


async def test_resync_waits_behind_what_the_store_sent(router: RouterFactory) -> None:
    """Pulled only when the buffer is empty: a resync never displaces or delays a crossing."""
    publisher = RecordingPublisher("slow")
    routed = await router(target(publisher), resync_interval=0.05)
    for n in range(200):
        routed.submit(feedback(f"coord-{n}", n, level="soft"))
    routed.resync()  # while all 200 crossings are still buffered

    await eventually(lambda: len(publisher.resyncs()) >= 200, message="a whole resync")
    first_resync = next(i for i, f in enumerate(publisher.delivered) if f.resync)
    assert first_resync == 200
    assert (
        metric(routed, "sidecar_feedback_dropped_total", target="slow", reason="buffer_full") == 0
    )


async def test_resync_is_off_at_zero(router: RouterFactory) -> None:
    publisher = RecordingPublisher("quiet")
    routed = await router(target(publisher), resync_interval=0)
    routed.submit(feedback("bars", 1))
    routed.resync()
    await eventually(lambda: len(publisher.delivered) == 1, message="the event delivered")
    await routed.stop(0.2)
    assert publisher.resyncs() == []


async def test_a_redis_that_restarted_empty_gets_every_state_at_once(
    router: RouterFactory, redis_server: RedisServer
) -> None:
    stream_target, key = stream(redis_server.url)
    routed = await router(stream_target, resync_interval=3600)
    routed.submit(feedback("bars", 900, level="hard"))
    routed.submit(feedback("quotes", 1, level="ok"))

    async def entries() -> list[dict[str, Any]]:
        async with aioredis.Redis.from_url(redis_server.url) as client:
            return [json.loads(f["data"]) for f in stream_fields(await client.xrange(key))]

    await eventually(lambda: _count(entries, 2), message="both written")
    redis_server.stop()
    redis_server.start()  # same port, empty: nothing is submitted meanwhile

    async def resynced() -> bool:
        # The `feedback` component's probe (a PING every check interval) is what opens
        # a new connection to an idle target, and so notices the new server.
        await routed.health(0.5)
        found = await entries()
        return {e["key"] for e in found if e["meta"]["headers"].get("resync") == "true"} == {
            "bars",
            "quotes",
        }

    await eventually(resynced, timeout=15, message="every state rewritten after the restart")


async def test_an_event_the_publisher_cannot_encode_is_dropped_and_never_blocks(
    router: RouterFactory, redis_server: RedisServer
) -> None:
    stream_target, key = stream(redis_server.url, batch=10)
    routed = await router(stream_target)
    routed.submit(feedback("bars", 1))
    routed.submit(feedback("x\ud800", 2))  # a lone surrogate: not UTF-8, not writable
    routed.submit(feedback("quotes", 3))

    async def keys() -> list[str]:
        async with aioredis.Redis.from_url(redis_server.url) as client:
            return [json.loads(f["data"])["key"] for f in stream_fields(await client.xrange(key))]

    await eventually(lambda: _equals(keys, ["bars", "quotes"]), message="the others written")
    reason = {"target": "pulse", "reason": "unencodable"}
    await eventually(
        lambda: metric(routed, "sidecar_feedback_dropped_total", **reason) == 1,
        message="the poison event counted",
    )
    [state] = routed.states()
    assert state.circuit == "closed"
    assert state.last_error is not None
    assert state.last_error.startswith("unencodable")


async def _count(read: Callable[[], Any], count: int) -> bool:
    return len(await read()) == count


async def _equals(read: Callable[[], Any], expected: list[str]) -> bool:
    return bool(await read() == expected)


async def test_a_resync_round_ends_with_the_most_severe_level(router: RouterFactory) -> None:
    """A consumer keeping one rate for all coordinators (the pipeline's) takes the last
    event's level: each round sends ok, then soft, then hard, so it ends at the worst."""
    publisher = RecordingPublisher("pipeline")
    routed = await router(target(publisher), resync_interval=3600)
    for name, level in [("a", "hard"), ("b", "ok"), ("c", "soft"), ("d", "hard"), ("e", "ok")]:
        routed.submit(feedback(name, 1, level=level))
    await eventually(lambda: len(publisher.delivered) == 5, message="the crossings delivered")
    routed.resync()

    await eventually(lambda: len(publisher.resyncs()) == 5, message="a whole round")
    levels = [f.event.level.value for f in publisher.resyncs()]
    assert levels == ["ok", "ok", "soft", "hard", "hard"]
