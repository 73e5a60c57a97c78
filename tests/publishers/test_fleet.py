"""A stream target in `fleet` scope, against real Redis: members, leases, the composite."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis
from market_data_core.events import JsonCodec
from market_data_core.telemetry import FeedbackEvent

from market_data_sidecar.feedback.model import Feedback
from market_data_sidecar.feedback.scope import composite_of
from market_data_sidecar.metrics import Metrics
from market_data_sidecar.publishers.fleet import Fleet, FleetStreamPublisher
from market_data_sidecar.settings import RedisStreamTargetSettings
from tests.helpers import eventually, feedback
from tests.redis_helpers import SHARED_REDIS_URL, feedback_key, stream_fields

pytest_plugins = ["tests.redis_fixtures"]

Entry = tuple[FeedbackEvent, dict[str, str]]
MakeMember = Callable[..., FleetStreamPublisher]


def target(url: str, namespace: str) -> RedisStreamTargetSettings:
    return RedisStreamTargetSettings.model_validate(
        {"kind": "redis-stream", "url": url, "namespace": namespace}
    )


@pytest.fixture
async def member() -> AsyncIterator[MakeMember]:
    """`member(instance, namespace, url=..., lease=..., renewal=...)`: a started fleet
    publisher; every one is closed at the end."""
    made: list[FleetStreamPublisher] = []

    def make(
        instance: str,
        namespace: str,
        *,
        url: str = SHARED_REDIS_URL,
        lease: float = 15.0,
        renewal: float = 5.0,
        metrics: Metrics | None = None,
    ) -> FleetStreamPublisher:
        publisher = FleetStreamPublisher(
            target(url, namespace), Fleet(instance, lease, renewal), metrics=metrics
        )
        made.append(publisher)
        return publisher

    yield make
    for publisher in made:
        await publisher.close()


def pod(instance: str, coordinator: str, level: str, queue_size: int, count: int = 1) -> Feedback:
    """A pod's composite, as the router hands it to a fleet target."""
    return composite_of(
        feedback(coordinator, queue_size, level=level), coordinators=count, member=instance
    )


async def entries(namespace: str, url: str = SHARED_REDIS_URL) -> list[Entry]:
    """The stream's entries decoded with Core's codec, as the consumers decode them."""
    async with aioredis.Redis.from_url(url) as client:
        fields = stream_fields(await client.xrange(feedback_key(namespace)))
    codec = JsonCodec()
    decoded = [codec.decode(entry["data"].encode(), FeedbackEvent) for entry in fields]
    return [(envelope.payload, envelope.meta.headers) for envelope in decoded]


async def test_the_stream_carries_the_worst_member_and_only_changes(
    member: MakeMember, namespace: str
) -> None:
    a, b = member("pod-a", namespace), member("pod-b", namespace)
    await a.start()
    await b.start()

    await a.deliver([pod("pod-a", "bars", "hard", 900, count=2)])
    await b.deliver([pod("pod-b", "bars", "ok", 10, count=2)])
    await b.deliver([pod("pod-b", "bars", "ok", 10, count=2)])  # no change: no entry
    await a.deliver([pod("pod-a", "quotes", "soft", 600, count=2)])

    written = await entries(namespace)
    levels = [
        (event.level.value, headers["member"], headers["members"]) for event, headers in written
    ]
    assert levels == [("hard", "pod-a", "1"), ("hard", "pod-a", "2"), ("soft", "pod-a", "2")]
    event, headers = written[-1]
    assert (event.coordinator_id, event.queue_size, event.capacity) == ("quotes", 600, 1000)
    assert headers["scope"] == "fleet"
    assert headers["coordinator"] == "quotes"
    assert headers["coordinators"] == "4"
    assert headers["utilization"] == "0.600000"
    assert {m.instance for m in a.members()} == {"pod-a", "pod-b"}


async def test_sigterm_of_a_member_publishes_the_others_state_at_once(
    member: MakeMember, namespace: str
) -> None:
    a, b = member("pod-a", namespace), member("pod-b", namespace)
    await a.start()
    await b.start()
    await a.deliver([pod("pod-a", "bars", "hard", 900)])
    await b.deliver([pod("pod-b", "bars", "soft", 600)])

    await a.close()

    event, headers = (await entries(namespace))[-1]
    assert (event.level.value, headers["member"], headers["members"]) == ("soft", "pod-b", "1")


async def test_a_member_whose_lease_ends_stops_counting(member: MakeMember, namespace: str) -> None:
    a = member("pod-a", namespace, lease=0.6, renewal=0.2)
    b = member("pod-b", namespace, lease=0.6, renewal=0.2)
    await a.start()
    await b.start()
    await a.deliver([pod("pod-a", "bars", "hard", 900)])
    await b.deliver([pod("pod-b", "bars", "ok", 10)])
    assert a._renewal is not None
    a._renewal.cancel()  # a member that stops renewing, as a SIGKILLed one does

    async def released() -> bool:
        event, _ = (await entries(namespace))[-1]
        return event.level.value == "ok"

    await eventually(released, timeout=0.6 + 1.0, message="the dead member's lease ended")
    await asyncio.sleep(0)
