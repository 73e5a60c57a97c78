"""Copies: every replica of every reader that shares a consumer name hears each change.
Real Redis, and Core's own `RedisStreamsBus.subscribe` as the readers (several instances
under one group and one consumer name, as the pipeline's replicas run)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from loguru import logger
from redis.exceptions import ResponseError

from market_data_sidecar.feedback.model import Feedback
from market_data_sidecar.publishers.redis import RedisStreamPublisher
from market_data_sidecar.publishers.stream_copies import Copies
from market_data_sidecar.settings import ConfigError, RedisStreamTargetSettings, load_settings
from tests.support import parts
from tests.support.helpers import eventually, feedback
from tests.support.redis_servers import (
    SHARED_REDIS_URL,
    CoreConsumer,
    RedisServer,
    feedback_key,
    limited_user,
)

pytest_plugins = ["tests.support.redis_fixtures"]
pytestmark = pytest.mark.timeout(60, func_only=True)

Publish = Callable[..., RedisStreamPublisher]
LEVELS = ("soft", "hard", "ok", "hard", "soft")


def copies_of(key: str, **overrides: Any) -> Copies:
    """The copies of target `pulse` writing `key`, its options (`max_copies`, `maxlen`, ...
    as overrides) defaulting as a stream target's settings do."""
    options = parts.target_defaults(RedisStreamTargetSettings, Copies) | overrides
    return Copies("pulse", key, **options)


@contextlib.asynccontextmanager
async def readers(
    namespace: str, url: str = SHARED_REDIS_URL, **groups: int
) -> AsyncIterator[dict[str, list[CoreConsumer]]]:
    """`count` Core consumers per group, all under one consumer name, reading."""
    async with contextlib.AsyncExitStack() as stack:
        made = {
            group: [
                await stack.enter_async_context(CoreConsumer(url, namespace, group, "replica"))
                for _ in range(count)
            ]
            for group, count in groups.items()
        }
        yield made


def heard(consumer: CoreConsumer, change: Feedback) -> bool:
    return any(envelope.meta.headers.get("event_id") == change.id for envelope in consumer.received)


async def everyone_heard(groups: dict[str, list[CoreConsumer]], change: Feedback) -> None:
    await eventually(
        lambda: all(heard(c, change) for members in groups.values() for c in members),
        timeout=5,
        message=f"every reader heard {change.event.level}",
    )


def metric(publisher: RedisStreamPublisher, name: str, **labels: str) -> float | None:
    assert publisher._metrics is not None
    return publisher._metrics.registry.get_sample_value(name, {"target": publisher.name, **labels})


async def test_every_waiting_reader_of_every_group_gets_one_copy_of_each_change(
    publisher_factory: Publish, namespace: str
) -> None:
    publisher = publisher_factory(SHARED_REDIS_URL, namespace, scope="pod", reannounce=0)
    await publisher.start()
    async with readers(namespace, pipeline=3, orchestrator=2) as groups:
        for level in LEVELS:
            change = feedback("bars", level=level)
            await publisher.deliver([change])
            await everyone_heard(groups, change)
    copies = publisher.copies
    assert copies.estimates() == {"pipeline": 3, "orchestrator": 2}
    assert copies.entries() == 4  # the largest group's readers, and one spare
    assert metric(publisher, "sidecar_stream_group_readers", group="pipeline") == 3
    assert (metric(publisher, "sidecar_stream_copies_total") or 0) >= 3 * (len(LEVELS) - 1)
    await eventually(lambda: publisher.readers(), message="a reading of the groups")
    shown = {group.group: group.readers for group in publisher.readers() or []}
    assert shown == {"pipeline": 3, "orchestrator": 2}


async def test_a_copy_never_follows_a_newer_state(namespace: str) -> None:
    """A copy of state A queued after another writer appended B is not appended."""
    key = feedback_key(namespace)
    client = aioredis.Redis.from_url(SHARED_REDIS_URL)
    copies = copies_of(key, max_copies=8, maxlen=100)
    try:
        await copies.prepare(client)
        old = '{"meta":{"headers":{"event_id":"evt_a"}},"payload":{"level":"hard"}}'
        new = '{"meta":{"headers":{"event_id":"evt_b"}},"payload":{"level":"ok"}}'
        await client.xadd(key, {"data": old})
        await client.xadd(key, {"data": new})
        async with client.pipeline(transaction=False) as pipe:
            assert copies.queue(pipe, "evt_a", 3) == 3
            replies = await pipe.execute()
        assert replies == [None, None, None]
        newest: Any = await client.xrevrange(key, count=1)
        assert newest[0][1][b"data"] == new.encode()
        assert await client.xlen(key) == 2
    finally:
        await client.aclose()


async def test_a_reader_busy_at_the_change_hears_it_soon_after(
    publisher_factory: Publish, namespace: str
) -> None:
    publisher = publisher_factory(SHARED_REDIS_URL, namespace, scope="pod", reannounce=0)
    await publisher.start()
    async with readers(namespace, pipeline=3) as groups:
        warm = feedback("bars", level="soft")
        await publisher.deliver([warm])
        await everyone_heard(groups, warm)  # the estimate is learnt
        busy = groups["pipeline"][0]
        await busy.__aexit__(None, None, None)  # not reading at the change
        groups["pipeline"][0] = busy = CoreConsumer(
            SHARED_REDIS_URL, namespace, "pipeline", "replica"
        )
        change = feedback("bars", level="hard")
        await publisher.deliver([change])
        others = {"pipeline": groups["pipeline"][1:]}
        await everyone_heard(others, change)
        async with busy:  # back, under the same name: Redis shows nothing new
            await eventually(lambda: heard(busy, change), timeout=3, message="the busy reader")
    assert publisher.copies.reannounced >= 1


@pytest.mark.parametrize("estimate", [None, 2], ids=["learnt", "readers-set"])
async def test_a_state_that_is_not_ok_is_announced_again_for_a_reader_that_joins_late(
    publisher_factory: Publish, namespace: str, estimate: int | None
) -> None:
    publisher = publisher_factory(
        SHARED_REDIS_URL, namespace, scope="pod", reannounce=0.5, readers=estimate
    )
    await publisher.start()
    async with readers(namespace, pipeline=1) as groups:
        change = feedback("bars", level="hard")
        await publisher.deliver([change])
        await everyone_heard(groups, change)
        async with CoreConsumer(SHARED_REDIS_URL, namespace, "pipeline", "replica") as late:
            await eventually(lambda: heard(late, change), timeout=3, message="the late reader")
        calm = feedback("bars", level="ok")
        await publisher.deliver([calm])
        await everyone_heard(groups, calm)
        rounds = publisher.copies.reannounced
        # `ok` is what a replica starts at: nothing is announced again for it.
        await asyncio.sleep(0)  # let a round due now run, before counting
        assert publisher.copies.reannounced - rounds <= 1


def test_groups_redis_reports_with_nonsense_fields_are_unknown_and_cost_nothing() -> None:
    copies = copies_of("k", max_copies=8, maxlen=100)
    nonsense: list[Any] = [
        {"name": "missing-id"},
        {"name": "negative", "last-delivered-id": "-5-1"},
        {"name": "future", "last-delivered-id": "99999999999999999-0"},
        {"name": "text", "last-delivered-id": "x-y"},
        {"last-delivered-id": "1-0"},
        "not a group",
        {"name": "ok", "last-delivered-id": "1000-0", "consumers": -3},
    ]
    copies.observe([b"1000-1", b"1000-2"], nonsense, ["1000-0"])
    assert copies.estimates() == {"ok": 1}
    assert 1 <= copies.entries() <= 8


def test_a_fault_longer_than_is_shown_is_said_once_until_it_ends() -> None:
    copies = copies_of("k", max_copies=8, maxlen=100)
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="INFO", format="{message}")
    refused = ResponseError("NOPERM " + "x" * 400)  # cut where it is shown
    try:
        for _ in range(3):
            copies.observe([], refused, ["1000-0"])
        copies.observe([], [], ["1000-1"])
    finally:
        logger.remove(sink)
    assert sum("each change is appended once" in line for line in lines) == 1, lines
    assert sum("copies: can xinfo again" in line for line in lines) == 1, lines


async def test_without_xinfo_each_change_is_appended_once_and_said_once(
    publisher_factory: Publish, redis_server: RedisServer
) -> None:
    url = await limited_user(redis_server, "xinfo")
    admin = aioredis.Redis.from_url(redis_server.url)
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="INFO", format="{message}")
    namespace = "mdp"
    try:
        publisher = publisher_factory(url, namespace, scope="pod", reannounce=0)
        await publisher.start()
        async with readers(namespace, redis_server.url, pipeline=2) as groups:
            for level in LEVELS:
                await publisher.deliver([feedback("bars", level=level)])
            await eventually(
                lambda: sum(len(c.received) for c in groups["pipeline"]) >= len(LEVELS),
                message="every change read",
            )
        length = await admin.xlen(feedback_key(namespace))
    finally:
        logger.remove(sink)
        await admin.aclose()
    assert length == len(LEVELS)  # one entry per change
    said = [line for line in lines if "each change is appended once" in line]
    assert len(said) == 1, said
    assert publisher.copies.entries() == 1


async def test_dead_letters_degrade_feedback_naming_the_readers_reason(
    publisher_factory: Publish, namespace: str, shared_redis: aioredis.Redis
) -> None:
    publisher = publisher_factory(SHARED_REDIS_URL, namespace, scope="pod")
    await publisher.start()
    key = feedback_key(namespace)
    async with CoreConsumer(SHARED_REDIS_URL, namespace, "pipeline") as consumer:
        await eventually(lambda: publisher.readers(), message="the group seen")
        await publisher.health_details()  # the first reading: what was there before is old
        assert publisher.problem() is None
        await shared_redis.xadd(key, {"data": "not an envelope"})
        await eventually(
            lambda: shared_redis.xlen(f"{key}.dlq"), message="Core's consumer dead-letters it"
        )
        del consumer
    details = await publisher.health_details()
    problem = publisher.problem()
    assert problem is not None
    assert f"{key}.dlq" in problem, problem
    state = publisher.dead_letters()
    assert state is not None
    assert (state.length, state.since_start) == (1, 1)
    assert state.reason is not None
    assert state.reason in problem
    assert metric(publisher, "sidecar_stream_dead_letters") == 1
    assert "dead_letters_error" not in details


@pytest.mark.parametrize("value", ["0", "-1", '"x"'])
def test_a_copy_cap_below_one_is_a_configuration_error(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = f'{{"kind": "redis-stream", "url": "redis://127.0.0.1:6379/0", "max_copies": {value}}}'
    monkeypatch.setenv("SIDECAR_TARGETS", f"[{target}]")
    with pytest.raises(ConfigError) as error:
        load_settings()
    assert "SIDECAR_TARGETS[0]" in str(error.value)
    assert "\n" not in str(error.value)
