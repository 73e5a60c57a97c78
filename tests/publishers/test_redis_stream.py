"""The stream target writes what Core's own `RedisStreamsBus` consumers read, unchanged."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis
from market_data_core.events import JsonCodec, RedisStreamsBus
from market_data_core.protocols import FeedbackPublisher
from pydantic import ValidationError

from market_data_sidecar.feedback.delivery import DeliveryError
from market_data_sidecar.metrics import Metrics
from market_data_sidecar.publishers.redis import RedisStreamPublisher
from market_data_sidecar.settings import RedisStreamTargetSettings
from tests.support.helpers import eventually, feedback
from tests.support.redis_servers import (
    SHARED_REDIS_URL,
    CoreConsumer,
    RedisServer,
    dead_letters,
    feedback_key,
    feedback_stream,
    stream_fields,
)

pytest_plugins = ["tests.support.redis_fixtures"]


def stream_target(url: str, namespace: str, **options: object) -> RedisStreamTargetSettings:
    return RedisStreamTargetSettings.model_validate(
        {"kind": "redis-stream", "url": url, "namespace": namespace, "scope": "coordinator"}
        | options
    )


@pytest.fixture
async def publisher_factory() -> AsyncIterator[Callable[..., RedisStreamPublisher]]:
    """`publisher_factory(url, namespace, **options)`; every publisher is closed."""
    made: list[RedisStreamPublisher] = []

    def make(
        url: str, namespace: str, *, metrics: Metrics | None = None, **options: object
    ) -> RedisStreamPublisher:
        publisher = RedisStreamPublisher(stream_target(url, namespace, **options), metrics=metrics)
        made.append(publisher)
        return publisher

    yield make
    for publisher in made:
        await publisher.close()


async def test_core_consumer_groups_each_receive_every_event(
    publisher_factory: Callable[..., RedisStreamPublisher],
    namespace: str,
    shared_redis: aioredis.Redis,
) -> None:
    # One entry per event (no copies: one reader per group), so the order is the log's.
    publisher = publisher_factory(SHARED_REDIS_URL, namespace, batch=7, max_copies=1)
    await publisher.start()
    sent = [
        feedback(f"coord-{i % 3}", queue_size=i, level=("ok", "soft", "hard")[i % 3])
        for i in range(20)
    ]
    sent[4] = feedback("coord-1", 4, level="ok", reason="queue_recovered")

    async with (
        CoreConsumer(SHARED_REDIS_URL, namespace, "pipeline") as pipeline,
        CoreConsumer(SHARED_REDIS_URL, namespace, "orchestrator") as orchestrator,
    ):
        for start in range(0, len(sent), publisher.max_batch):
            await publisher.deliver(sent[start : start + publisher.max_batch])
        for consumer in (pipeline, orchestrator):
            received = await consumer.take(len(sent))
            assert [envelope.payload for envelope in received] == [f.event for f in sent]
            assert {envelope.meta.schema_id for envelope in received} == {"telemetry.FeedbackEvent"}
            assert {envelope.meta.track for envelope in received} == {"v1"}
            assert [envelope.meta.headers.get("event_id") for envelope in received] == [
                f.id for f in sent
            ]
            assert [envelope.meta.headers.get("reason") for envelope in received] == [
                f.reason for f in sent
            ]
            assert [envelope.key for envelope in received] == [f.coordinator_id for f in sent]

    assert await dead_letters(shared_redis, namespace) == 0


async def test_dead_letter_check_catches_a_schema_core_does_not_route(
    namespace: str, shared_redis: aioredis.Redis
) -> None:
    """Control for the test above: Core's own `publish` labels the event so that its
    subscriber dead-letters it; an empty `.dlq` therefore means something."""
    async with CoreConsumer(SHARED_REDIS_URL, namespace, "pipeline"):
        bus = RedisStreamsBus(redis_url=SHARED_REDIS_URL, namespace=namespace)
        try:
            await bus.publish(feedback_stream(namespace), feedback().event)
        finally:
            await bus.close()
        await eventually(lambda: dead_letters(shared_redis, namespace), message="a dead letter")


async def test_entry_is_a_core_envelope_with_relay_headers(
    publisher_factory: Callable[..., RedisStreamPublisher],
    namespace: str,
    shared_redis: aioredis.Redis,
) -> None:
    publisher = publisher_factory(SHARED_REDIS_URL, namespace)
    sent = feedback("bars-coord", 850, level="soft", reason="high_watermark")
    await publisher.publish(sent)  # Core's protocol entry point, without start()
    without_reason = feedback("ticks-coord", 10, level="ok")
    await publisher.deliver([without_reason])

    entries = stream_fields(await shared_redis.xrange(feedback_key(namespace)))
    assert [set(fields) for fields in entries] == [{"data"}, {"data"}]
    raw = [fields["data"] for fields in entries]
    envelope = JsonCodec().decode(raw[0].encode(), type(sent.event))
    assert envelope.payload == sent.event
    assert envelope.meta.schema_id == "telemetry.FeedbackEvent"
    assert envelope.meta.track == "v1"
    assert envelope.key == "bars-coord"
    # As the store's own publisher writes them: utilization with six decimals.
    assert envelope.meta.headers == {
        "event_id": sent.id,
        "reason": "high_watermark",
        "utilization": "0.850000",
    }
    second = json.loads(raw[1])
    assert second["key"] == "ticks-coord"
    assert second["meta"]["headers"] == {"event_id": without_reason.id, "utilization": "0.010000"}


async def test_stream_is_trimmed_approximately_to_maxlen(
    publisher_factory: Callable[..., RedisStreamPublisher],
    namespace: str,
    shared_redis: aioredis.Redis,
) -> None:
    publisher = publisher_factory(SHARED_REDIS_URL, namespace, maxlen=10, batch=100)
    events = [feedback(queue_size=i) for i in range(300)]
    for start in range(0, len(events), 100):
        await publisher.deliver(events[start : start + 100])

    length = await shared_redis.xlen(feedback_key(namespace))
    # `MAXLEN ~` trims whole radix-tree nodes (100 entries by default): never below
    # the bound, well below what was written.
    assert 10 <= length <= 200
    newest = stream_fields(await shared_redis.xrevrange(feedback_key(namespace), count=1))
    assert json.loads(newest[0]["data"])["payload"]["queue_size"] == 299


async def test_batches_are_pipelined_without_transactions(
    publisher_factory: Callable[..., RedisStreamPublisher], redis_server: RedisServer
) -> None:
    publisher = publisher_factory(redis_server.url, "mdp", batch=50)
    await publisher.deliver([feedback(queue_size=i) for i in range(50)])

    async with aioredis.Redis.from_url(redis_server.url, decode_responses=True) as client:
        stats = await client.info("commandstats")
        entries = stream_fields(await client.xrange("mdp:mdp.telemetry.feedback"))
    assert stats["cmdstat_xadd"]["calls"] == 50
    assert "cmdstat_multi" not in stats
    assert "cmdstat_exec" not in stats
    assert [json.loads(f["data"])["payload"]["queue_size"] for f in entries] == list(range(50))


async def test_server_error_reply_is_permanent_and_named(
    publisher_factory: Callable[..., RedisStreamPublisher],
    namespace: str,
    shared_redis: aioredis.Redis,
) -> None:
    await shared_redis.set(feedback_key(namespace), "not a stream")
    metrics = Metrics()
    publisher = publisher_factory(SHARED_REDIS_URL, namespace, metrics=metrics)

    with pytest.raises(DeliveryError) as failure:
        await publisher.deliver([feedback()])

    assert failure.value.reason == "redis_wrongtype"
    assert failure.value.retryable is False
    details = await publisher.health_details()
    assert details["reachable"] == "true"
    assert details["last_redis_error"].startswith("redis_wrongtype: WRONGTYPE")
    assert metrics.registry.get_sample_value("sidecar_redis_up", {"target": publisher.name}) == 1


async def test_health_details_report_ping_and_update_metrics(
    publisher_factory: Callable[..., RedisStreamPublisher], namespace: str
) -> None:
    metrics = Metrics()
    publisher = publisher_factory(
        SHARED_REDIS_URL, namespace, name="pipeline-stream", mode="all", metrics=metrics
    )
    await publisher.start()

    details = await publisher.health_details()

    assert details["reachable"] == "true"
    assert float(details["ping_ms"]) > 0
    assert "last_redis_error" not in details
    assert details["stream"] == feedback_key(namespace)
    assert details["mode"] == "all"
    labels = {"target": "pipeline-stream"}
    assert metrics.registry.get_sample_value("sidecar_redis_up", labels) == 1
    assert metrics.registry.get_sample_value("sidecar_redis_ping_latency_seconds", labels) == (
        pytest.approx(float(details["ping_ms"]) / 1000, abs=1e-6)
    )


def test_mode_and_batch_tell_the_router_how_to_buffer() -> None:
    latest = RedisStreamPublisher(stream_target(SHARED_REDIS_URL, "mdp", batch=25))
    every = RedisStreamPublisher(stream_target(SHARED_REDIS_URL, "mdp", mode="all"))

    assert (latest.conflate, latest.max_batch) == (True, 25)
    assert (every.conflate, every.max_batch) == (False, 100)
    assert isinstance(latest, FeedbackPublisher)
    assert latest.stream == "mdp:mdp.telemetry.feedback"


def test_default_key_is_the_one_the_pipeline_and_orchestrator_read() -> None:
    default = RedisStreamTargetSettings.model_validate({"kind": "redis-stream", "url": "redis://h"})
    tenant = stream_target("redis://h", "x")
    legacy = stream_target("redis://h", "mdp", stream="telemetry.feedback")
    orchestrator = stream_target("redis://h", "mdp", stream="x.telemetry.feedback")

    assert default.key == "mdp:mdp.telemetry.feedback"
    assert tenant.key == "x:x.telemetry.feedback"
    assert legacy.key == "mdp:telemetry.feedback"
    assert orchestrator.key == "mdp:x.telemetry.feedback"
    assert RedisStreamPublisher(legacy).stream == "mdp:telemetry.feedback"


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("namespace", ""),
        ("namespace", "a:b"),
        ("namespace", "has space"),
        ("namespace", "x" * 65),
        ("namespace", "caf\u00e9"),
        ("stream", "tele metry"),
        ("stream", "line\nbreak"),
        ("stream", "x" * 201),
        ("stream", "mdp.telemetry.feedback.dlq"),
    ],
)
def test_a_key_redis_or_core_cannot_use_is_rejected(option: str, value: str) -> None:
    with pytest.raises(ValidationError, match=option):
        RedisStreamTargetSettings.model_validate(
            {"kind": "redis-stream", "url": "redis://h", option: value}
        )


async def test_custom_stream_reaches_cores_subscriber_on_that_stream(
    publisher_factory: Callable[..., RedisStreamPublisher],
    namespace: str,
    shared_redis: aioredis.Redis,
) -> None:
    """`MD_NAMESPACE=x`: the orchestrator reads `mdp:x.telemetry.feedback`."""
    publisher = publisher_factory(SHARED_REDIS_URL, namespace, stream="x.telemetry.feedback")
    await publisher.deliver([feedback("bars-coord", 850, level="soft")])

    entries = stream_fields(await shared_redis.xrange(f"{namespace}:x.telemetry.feedback"))
    assert len(entries) == 1
    assert await shared_redis.exists(feedback_key(namespace)) == 0
