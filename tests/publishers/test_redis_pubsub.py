"""The pub/sub target publishes each event as the flat JSON object receivers know."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from market_data_core.protocols import FeedbackPublisher

from market_data_sidecar.metrics import Metrics
from market_data_sidecar.publishers.redis import RedisPubSubPublisher
from market_data_sidecar.settings import RedisPubSubTargetSettings
from tests.support.helpers import eventually, feedback
from tests.support.redis_servers import SHARED_REDIS_URL

pytest_plugins = ["tests.support.redis_fixtures"]


@pytest.fixture
async def publisher(namespace: str) -> AsyncIterator[RedisPubSubPublisher]:
    target = RedisPubSubTargetSettings(
        kind="redis-pubsub", url=SHARED_REDIS_URL, channel=f"{namespace}:feedback"
    )
    publisher = RedisPubSubPublisher(target, metrics=Metrics())
    await publisher.start()
    yield publisher
    await publisher.close()


async def test_subscriber_receives_each_event_as_json_in_order(
    publisher: RedisPubSubPublisher, shared_redis: aioredis.Redis
) -> None:
    pubsub = shared_redis.pubsub()
    await pubsub.subscribe(publisher.channel)
    try:
        await eventually(
            lambda: _subscribers(shared_redis, publisher.channel), message="subscribed"
        )
        sent = [
            feedback("bars-coord", 850, level="soft", reason="high_watermark"),
            feedback("bars-coord", 400, level="ok", reason="queue_recovered"),
            feedback("ticks-coord", 990, level="hard"),
        ]
        await publisher.deliver(sent[:2])
        await publisher.publish(sent[2])  # Core's protocol, one event

        received: list[dict[str, Any]] = []

        async def collect() -> bool:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if message is not None:
                assert message["channel"] == publisher.channel
                received.append(json.loads(message["data"]))
            return len(received) == len(sent)

        await eventually(collect, message="all events published")
    finally:
        # redis-py annotates PubSub.aclose only from 8.x on: call it through a typed name.
        close: Callable[[], Awaitable[None]] = pubsub.aclose
        await close()

    assert received == [f.wire() for f in sent]
    assert received[0]["reason"] == "high_watermark"
    assert received[2]["reason"] is None
    assert received[2]["level"] == "hard"
    details = await publisher.health_details()
    assert details["subscribers"] == "1"
    assert details["channel"] == publisher.channel
    assert details["reachable"] == "true"


def test_satisfies_core_protocol_and_conflates(publisher: RedisPubSubPublisher) -> None:
    assert isinstance(publisher, FeedbackPublisher)
    assert publisher.conflate is True


async def _subscribers(client: aioredis.Redis, channel: str) -> bool:
    counts = dict(await client.pubsub_numsub(channel))
    return bool(counts.get(channel))
