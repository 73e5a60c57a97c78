"""The stream target knows its readers: consumer groups seen, arrivals resynced, pending
lists bounded, and what it may not see said once. Real Redis, Core's `RedisStreamsBus`
consumers (which never acknowledge)."""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis
from loguru import logger

from market_data_sidecar.publishers.redis import RedisStreamPublisher
from market_data_sidecar.publishers.stream_readers import MAX_SWEEPS, StreamReaders
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

#: Approximate trimming (`MAXLEN ~`) removes whole radix-tree nodes of at most this many
#: entries (`stream-node-max-entries`), so a stream may hold up to this many beyond MAXLEN.
NODE_ENTRIES = 100

Publish = Callable[..., RedisStreamPublisher]


async def readings(publisher: RedisStreamPublisher, count: int = 3) -> None:
    """Wait until the publisher has read (and swept) `count` more times."""
    target = publisher.stream_readers.readings + count
    await eventually(
        lambda: publisher.stream_readers.readings >= target, message=f"{count} readings"
    )


async def write(publisher: RedisStreamPublisher, count: int, batch: int = 100) -> None:
    for start in range(0, count, batch):
        await publisher.deliver(
            [feedback(f"coord-{i}", level="soft") for i in range(start, min(start + batch, count))]
        )


async def test_a_key_no_group_reads_is_a_problem_until_a_reader_comes(
    publisher_factory: Publish, namespace: str
) -> None:
    publisher = publisher_factory(SHARED_REDIS_URL, namespace)
    await publisher.start()
    await publisher.deliver([feedback("bars-coord", level="soft")])
    await readings(publisher, 1)
    assert feedback_key(namespace) in str(publisher.problem())
    assert publisher.readers() == []

    async with CoreConsumer(SHARED_REDIS_URL, namespace, "pipeline") as pipeline:
        await eventually(lambda: publisher.problem() is None, message="a reader seen")
        # Redis < 7.2 lists a consumer once it has received an entry.
        await publisher.deliver([feedback("bars-coord", level="hard")])
        await pipeline.take(1)
        await eventually(
            lambda: (
                [(g.group, g.consumers) for g in publisher.readers() or []] == [("pipeline", 1)]
            ),
            message="the group and its consumer",
        )
        group = (publisher.readers() or [])[0]
        assert group.idle_seconds is not None
        assert group.idle_seconds < 5
        details = await publisher.health_details()
        assert details["readers"].startswith("pipeline (lag ")


async def test_a_stream_whose_readers_stopped_reading_is_a_problem(
    publisher_factory: Publish, namespace: str
) -> None:
    """Entries left unread by every group for `stale_after`: nobody reads any more."""
    publisher = publisher_factory(SHARED_REDIS_URL, namespace)
    publisher.stream_readers = StreamReaders(
        publisher.name, publisher.stream, on_arrival=lambda: None, timeout=1, stale_after=1.0
    )
    await publisher.start()
    async with CoreConsumer(SHARED_REDIS_URL, namespace, "pipeline") as pipeline:
        await write(publisher, 5)
        await pipeline.take(5)
        await readings(publisher)
        assert publisher.problem() is None  # read at once: never waiting
    await write(publisher, 5)  # the consumer is gone: these wait
    await eventually(
        lambda: "nobody reads" in str(publisher.problem()), message="the stopped reader"
    )
    assert "unread" in (await publisher.health_details())["readers"]


async def test_a_group_that_appears_or_goes_back_gets_a_resync(
    publisher_factory: Publish, namespace: str, shared_redis: aioredis.Redis
) -> None:
    publisher = publisher_factory(SHARED_REDIS_URL, namespace)
    resyncs: list[str] = []
    publisher.on_recovered = lambda: resyncs.append("resync")
    await publisher.start()
    await write(publisher, 3)
    await readings(publisher, 1)
    assert resyncs == []

    key = feedback_key(namespace)
    await shared_redis.xgroup_create(key, "pipeline", id="$")
    await eventually(lambda: len(resyncs) == 1, message="a resync for the new group")
    await write(publisher, 3)
    await shared_redis.xreadgroup("pipeline", "c1", {key: ">"})
    await readings(publisher, 2)
    assert len(resyncs) == 1  # reading moves the group on: not an arrival

    await shared_redis.xgroup_setid(key, "pipeline", id="0")  # as a restored snapshot
    await eventually(lambda: len(resyncs) == 2, message="a resync for the reset group")


async def test_pending_lists_stay_within_maxlen_while_core_never_acknowledges(
    publisher_factory: Publish, namespace: str, shared_redis: aioredis.Redis
) -> None:
    maxlen = 200
    publisher = publisher_factory(SHARED_REDIS_URL, namespace, maxlen=maxlen)
    await publisher.start()
    key = feedback_key(namespace)
    async with (
        CoreConsumer(SHARED_REDIS_URL, namespace, "pipeline"),
        CoreConsumer(SHARED_REDIS_URL, namespace, "orchestrator"),
    ):
        for _ in range(30):
            await write(publisher, 100)
        await eventually(lambda: _caught_up(shared_redis, key), message="both groups read all")
        await readings(publisher, 2)
        groups = await shared_redis.xinfo_groups(key)
        assert {g["name"] for g in groups} == {"pipeline", "orchestrator"}
        for group in groups:
            # Each got several times MAXLEN, acknowledged none, and holds at most MAXLEN.
            assert group["entries-read"] >= 3 * maxlen, group
            assert group["pending"] <= maxlen + NODE_ENTRIES, group
            # Every reference left is to an entry that still exists.
            first = (await entry_ids(shared_redis, key))[0]
            oldest = await shared_redis.xpending_range(key, group["name"], "-", "+", 1)
            assert stream_id(oldest[0]["message_id"]) >= first


def stream_id(value: object) -> tuple[int, int]:
    milliseconds, _, sequence = str(value).partition("-")
    return int(milliseconds), int(sequence)


async def entry_ids(client: aioredis.Redis, key: str) -> list[tuple[int, int]]:
    return [stream_id(entry[0]) for entry in await client.xrange(key) or []]


async def _caught_up(client: aioredis.Redis, key: str) -> bool:
    """Every group was delivered the last entry (`lag` is unknown once entries were trimmed
    past a group's position)."""
    last = (await entry_ids(client, key))[-1]
    groups = await client.xinfo_groups(key)
    return all(stream_id(group["last-delivered-id"]) == last for group in groups)


async def test_a_reference_to_an_entry_that_exists_is_never_acknowledged(
    publisher_factory: Publish, namespace: str, shared_redis: aioredis.Redis
) -> None:
    publisher = publisher_factory(SHARED_REDIS_URL, namespace, max_copies=1)  # 50 entries
    await publisher.start()
    key = feedback_key(namespace)
    async with CoreConsumer(SHARED_REDIS_URL, namespace, "pipeline") as pipeline:
        await write(publisher, 50)
        await pipeline.take(50)
        await readings(publisher)
        assert (await shared_redis.xpending(key, "pipeline"))["pending"] == 50

        await shared_redis.xtrim(key, maxlen=20, approximate=False)
        await readings(publisher)
        left = await shared_redis.xpending_range(key, "pipeline", "-", "+", 100)
        entries = await entry_ids(shared_redis, key)
        assert [stream_id(ref["message_id"]) for ref in left] == entries

        await shared_redis.xtrim(key, maxlen=0, approximate=False)  # empty: all are gone
        await readings(publisher)
        assert (await shared_redis.xpending(key, "pipeline"))["pending"] == 0


async def test_references_beyond_one_reading_are_acknowledged_over_the_next(
    publisher_factory: Publish, namespace: str, shared_redis: aioredis.Redis
) -> None:
    """One reading acknowledges a bounded number (it must not hold Redis for long); more
    trimmed references are left to the readings after."""
    publisher = publisher_factory(SHARED_REDIS_URL, namespace)
    key = feedback_key(namespace)
    await shared_redis.xgroup_create(key, "pipeline", id="$", mkstream=True)
    await publisher.start()
    backlog = (MAX_SWEEPS + 5) * 1000
    async with shared_redis.pipeline(transaction=False) as pipe:
        for _ in range(backlog):
            pipe.xadd(key, {"data": "x"})
        await pipe.execute()
    await shared_redis.xreadgroup("pipeline", "c1", {key: ">"})
    await shared_redis.xtrim(key, maxlen=0, approximate=False)
    await eventually(
        lambda: _no_pending(shared_redis, key), timeout=20, message="every reference acked"
    )


async def _no_pending(client: aioredis.Redis, key: str) -> bool:
    return int((await client.xpending(key, "pipeline"))["pending"]) == 0


@pytest.mark.parametrize(
    ("denied", "detail"), [("xinfo", "readers_error"), ("xack", "pending_error")]
)
async def test_a_user_denied_xinfo_or_xack_delivers_and_says_so_once(
    publisher_factory: Publish, redis_server: RedisServer, denied: str, detail: str
) -> None:
    url = await limited_user(redis_server, denied)
    admin = aioredis.Redis.from_url(redis_server.url)
    namespace = "mdp"
    await admin.xgroup_create(feedback_key(namespace), "pipeline", id="$", mkstream=True)
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="INFO", format="{message}")
    try:
        publisher = publisher_factory(url, namespace, maxlen=10)
        await publisher.start()
        key = feedback_key(namespace)
        for _ in range(3):
            await write(publisher, 100)
            await admin.xreadgroup("pipeline", "c1", {key: ">"})  # never acknowledged
            await readings(publisher, 2)
        details = await publisher.health_details()
    finally:
        logger.remove(sink)
        await admin.aclose()
    assert details["reachable"] == "true"
    # A command's NOPERM ("no permissions", redis-py drops the code); inside the script,
    # "The user executing the script can't run this command".
    assert re.search(r"no permissions|can't run this command", details[detail]), details
    said = [line for line in lines if "cannot" in line]
    # Said once per consequence: the readers unseen, and (without XINFO) the copies,
    # which need the readers' count, off.
    assert len(said) == (2 if denied == "xinfo" else 1), said
    if denied == "xinfo":
        assert sum("each change is appended once" in line for line in said) == 1, said
    password = urlsplit(url).password
    assert password
    assert password not in "".join(lines) + str(details)


async def test_a_key_that_is_not_a_stream_is_said_once_and_nothing_stops(
    publisher_factory: Publish, namespace: str, shared_redis: aioredis.Redis
) -> None:
    key = feedback_key(namespace)
    await shared_redis.set(key, "not a stream")
    publisher = publisher_factory(SHARED_REDIS_URL, namespace)
    await publisher.start()
    await readings(publisher, 3)
    details = await publisher.health_details()
    # The key named, with the type Redis has there.
    assert f"key {key} is a string, not a stream" in details["readers_error"], details
    assert publisher.problem() is None
    assert publisher.readers() is None

    await shared_redis.delete(key)  # put right: the readers are seen again
    await write(publisher, 1)
    await readings(publisher, 2)
    assert "readers_error" not in await publisher.health_details()
    assert publisher.readers() == []
