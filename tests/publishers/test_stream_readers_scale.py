"""A stream's readers as a year-old Redis has them: a group with 40,000 consumer names, 2,000
groups, readings that fail, names chosen by someone hostile, and keys of the wrong type.
Real redis-servers of the tests' own; promtool reads `/metrics` as Prometheus would."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from loguru import logger
from redis.exceptions import ResponseError

from market_data_sidecar.feedback.state import ReaderGroup, TargetState
from market_data_sidecar.metrics import Metrics
from market_data_sidecar.publishers.redis import RedisStreamPublisher
from market_data_sidecar.publishers.stream_readers import (
    MAX_LISTED_CONSUMERS,
    MAX_NAME,
    WATCH_INTERVAL_MAX,
    StreamReaders,
    wrong_type,
)
from market_data_sidecar.settings import RedisStreamTargetSettings
from market_data_sidecar.views.model import StatusView, readers_text
from tests.operator.test_operator_assets import promtool
from tests.support.helpers import eventually, feedback
from tests.support.redis_servers import RedisServer, feedback_key

pytest_plugins = ["tests.support.redis_fixtures"]
pytestmark = pytest.mark.timeout(120, func_only=True)

NAMESPACE = "mdp"
KEY = feedback_key(NAMESPACE)


@pytest.fixture
async def admin(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def publisher(redis_server: RedisServer) -> AsyncIterator[RedisStreamPublisher]:
    target = RedisStreamTargetSettings.model_validate(
        {"kind": "redis-stream", "name": "pulse", "url": redis_server.url, "maxlen": 50}
    )
    made = RedisStreamPublisher(target, metrics=Metrics())
    yield made
    await made.close()


async def readings(publisher: RedisStreamPublisher, count: int = 2, timeout: float = 30) -> None:
    target = publisher.stream_readers.readings + count
    await eventually(
        lambda: publisher.stream_readers.readings >= target,
        timeout=timeout,
        message=f"{count} readings",
    )


async def add_consumers(client: aioredis.Redis, group: str, count: int) -> None:
    for start in range(0, count, 5000):
        async with client.pipeline(transaction=False) as pipe:
            for i in range(start, min(start + 5000, count)):
                pipe.xgroup_createconsumer(KEY, group, f"pipeline-7d9f-{i:05d}")
            await pipe.execute()


async def pending_total(client: aioredis.Redis) -> int:
    return sum(int(group["pending"]) for group in await client.xinfo_groups(KEY))


class Lines:
    """Log lines (the message only) while the test runs."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __enter__(self) -> list[str]:
        self._sink = logger.add(self.lines.append, level="INFO", format="{message}")
        return self.lines

    def __exit__(self, *exc: object) -> None:
        logger.remove(self._sink)


async def test_a_group_of_40000_consumers_is_judged_from_xinfo_groups_and_nothing_stops(
    publisher: RedisStreamPublisher, admin: aioredis.Redis
) -> None:
    resyncs: list[str] = []
    publisher.on_recovered = lambda: resyncs.append("resync")
    await admin.xgroup_create(KEY, "pipeline", id="$", mkstream=True)
    await add_consumers(admin, "pipeline", 40_000)
    await publisher.start()
    await readings(publisher)

    (group,) = publisher.readers() or []
    assert (group.group, group.consumers) == ("pipeline", 40_000)
    assert group.consumers_listed is False  # more than MAX_LISTED_CONSUMERS: not listed
    assert group.idle_seconds is None
    assert MAX_LISTED_CONSUMERS < 40_000
    details = await publisher.health_details()
    assert "40000 consumers, not listed" in details["readers"], details
    assert "readers_failing" not in details
    assert publisher.problem() is None

    # Arrivals still work: a new group gets the current state.
    await admin.xgroup_create(KEY, "orchestrator", id="$")
    await eventually(lambda: resyncs, message="a resync for the new group")

    # The sweep still works: references to trimmed entries of the big group are acked.
    for i in range(300):
        await publisher.deliver([feedback(f"coord-{i}")])
    await admin.xreadgroup("pipeline", "pipeline-7d9f-00001", {KEY: ">"})
    await admin.xtrim(KEY, maxlen=0, approximate=False)
    await eventually(
        lambda: _no_pending(admin), timeout=20, message="the big group's references acked"
    )


async def _no_pending(client: aioredis.Redis) -> bool:
    return await pending_total(client) == 0


async def test_2000_groups_are_read_swept_and_spaced(
    publisher: RedisStreamPublisher, admin: aioredis.Redis
) -> None:
    resyncs: list[str] = []
    publisher.on_recovered = lambda: resyncs.append("resync")
    await admin.xgroup_create(KEY, "group-0000", id="$", mkstream=True)
    async with admin.pipeline(transaction=False) as pipe:
        for i in range(1, 2000):
            pipe.xgroup_create(KEY, f"group-{i:04d}", id="$")
        await pipe.execute()
    for i in range(30):
        await publisher.deliver([feedback(f"coord-{i}")])
    async with admin.pipeline(transaction=False) as pipe:  # every group holds 30 refs
        for i in range(2000):
            pipe.xreadgroup(f"group-{i:04d}", "c1", {KEY: ">"})
        await pipe.execute()
    assert await pending_total(admin) == 60_000
    await admin.xtrim(KEY, maxlen=0, approximate=False)

    await publisher.start()
    await readings(publisher, 1)
    readers = publisher.readers() or []
    assert len(readers) == 16  # shown; all 2,000 are judged
    assert (await publisher.health_details())["readers"].endswith("+1996 more")
    # Readings of 2,000 groups are spaced at the longest wait.
    assert publisher.stream_readers._spacing() == WATCH_INTERVAL_MAX

    # Each call acknowledges at most ACK_BUDGET across groups; the next readings finish.
    await eventually(lambda: _no_pending(admin), timeout=60, message="60,000 references acked")
    assert publisher.problem() is None

    await admin.xgroup_create(KEY, "latecomer", id="$")
    await eventually(lambda: resyncs, timeout=15, message="a resync for the 2,001st group")


async def test_failing_readings_are_counted_logged_once_and_a_problem_after_a_while(
    redis_server: RedisServer, admin: aioredis.Redis
) -> None:
    await admin.xgroup_create(KEY, "pipeline", id="$", mkstream=True)
    target = RedisStreamTargetSettings.model_validate(
        {"kind": "redis-stream", "name": "pulse", "url": redis_server.url, "timeout": 0.3}
    )
    metrics = Metrics()
    publisher = RedisStreamPublisher(target, metrics=metrics)
    publisher.stream_readers = StreamReaders(
        "pulse", KEY, on_arrival=lambda: None, timeout=0.3, metrics=metrics, failing_after=1.5
    )
    try:
        with Lines() as lines:
            await publisher.start()
            await readings(publisher, 1)
            redis_server.freeze()
            await eventually(
                lambda: "could not be read" in str(publisher.problem()),
                timeout=20,
                message="failing readings are a problem",
            )
            assert "timeout" in str(publisher.problem())
            failures = metrics.stream_reader_failures.labels("pulse", "timeout")._value.get()
            assert failures >= 2
            said = [line for line in lines if "reading its readers failed" in line]
            assert len(said) == 1, said  # once per interval, however many failed
            redis_server.thaw()
            await readings(publisher, 1)
            await eventually(lambda: publisher.problem() is None, message="readable again")
            assert any("read again" in line for line in lines)
    finally:
        redis_server.thaw()
        await publisher.close()


HOSTILE = ["\x1b[2J\x1b[31mred\x07", "line\nbreak", "g" * 1_000_000, 'quote"back\\slash']


async def test_hostile_names_are_clipped_and_escaped_in_labels_logs_and_views(
    publisher: RedisStreamPublisher, admin: aioredis.Redis
) -> None:
    await admin.xgroup_create(KEY, "first", id="$", mkstream=True)
    with Lines() as lines:
        await publisher.start()
        await readings(publisher, 1)
        for name in HOSTILE:
            await admin.xgroup_create(KEY, name, id="$")
            await admin.xgroup_createconsumer(KEY, "first", name)
        await readings(publisher, 2)

    shown = [group.group for group in publisher.readers() or []]
    assert len(shown) == len(HOSTILE) + 1
    for name in shown:
        assert len(name) <= MAX_NAME
        assert name.isprintable(), name
    assert "\\x1b[2J\\x1b[31mred\\x07" in shown
    arrivals = [line for line in lines if "resyncing" in line]
    assert arrivals
    for line in lines:
        assert len(line) < 4096
        assert "\x1b" not in line
        assert "\x07" not in line

    assert publisher._metrics is not None
    exposition = publisher._metrics.exposition()
    assert len(exposition) < 256 * 1024
    assert b"\x1b" not in exposition
    assert b"\x07" not in exposition
    checked = subprocess.run(
        [promtool(), "check", "metrics"],
        input=exposition,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


async def test_a_key_of_the_wrong_type_is_named_with_the_type_redis_has(
    admin: aioredis.Redis,
) -> None:
    members = f"{KEY}:fleet:members"
    await admin.set(members, "set by hand")
    await admin.xadd(KEY, {"data": "x"})
    step = "return redis.call('HSET', KEYS[1], 'a', 'b')"
    with pytest.raises(ResponseError) as raised:
        await admin.eval(step, 1, members)
    assert "WRONGTYPE" in str(raised.value)  # Redis names a script line, not the key
    said = await wrong_type(admin, raised.value, {KEY: "stream", members: "hash"})
    assert said == f"key {members} is a string, not a hash"
    # Any other error, or keys as expected, say nothing.
    assert await wrong_type(admin, ResponseError("ERR other"), {members: "hash"}) is None
    await admin.delete(members)
    assert await wrong_type(admin, raised.value, {KEY: "stream", members: "hash"}) is None


def test_the_views_say_a_groups_consumers_were_not_listed() -> None:
    big = ReaderGroup(group="pipeline", consumers=40_000, pending=3, lag=0, consumers_listed=False)
    small = ReaderGroup(group="orchestrator", consumers=1, pending=0, lag=0, idle_seconds=0.4)
    text = readers_text(TargetState(name="pulse", kind="redis-stream", readers=[big, small]))
    assert text is not None
    assert "pipeline: lag 0, 3 pending, 40000 consumers, not listed" in text
    assert "orchestrator: lag 0, 0 pending, seen 0.4s ago" in text
    # Read back from a served document, as `status` and the page do.
    served = TargetState(name="pulse", readers=[big]).model_dump(mode="json")
    view = StatusView.from_json({}, {"targets": [served]})
    (read,) = view.targets[0].readers or []
    assert read.consumers_listed is False
