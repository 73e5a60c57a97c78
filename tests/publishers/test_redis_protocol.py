"""Redis replies are bounded: a peer that is not Redis (or a Redis gone wrong) costs a
failed, retryable attempt on one or two connections, never memory, the stack or a storm
of connections; and every reply the sidecar reads from a real Redis still fits.

The hostile peers are `tests.support.fake_redis.FakeRedis`, speaking raw bytes on a
loopback port; the well-behaved one is a real `redis-server` of the test's own.
"""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from market_data_sidecar.feedback.delivery import DeliveryError
from market_data_sidecar.publishers.redis import RedisPubSubPublisher, RedisStreamPublisher
from market_data_sidecar.publishers.redis_protocol import (
    MAX_REPLY_BYTES,
    MAX_REPLY_VALUES,
    BoundedParser,
    ReplyOutOfBounds,
)
from market_data_sidecar.settings import RedisPubSubTargetSettings, RedisStreamTargetSettings
from tests.support import fake_redis
from tests.support.fake_redis import Answer, FakeRedis
from tests.support.helpers import eventually, feedback
from tests.support.redis_servers import RedisServer

pytest_plugins = ["tests.support.redis_fixtures"]

#: Connections one attempt may open: one, and redis-py's single immediate retry.
CONNECTIONS_PER_ATTEMPT = 2
ATTEMPTS = 3


async def line_without_end(writer: asyncio.StreamWriter) -> bool:
    """A simple string that never ends: 1 MiB and no `\\r\\n`."""
    writer.write(b"+" + b"a" * (1024 * 1024))
    await writer.drain()
    return True


async def bare_newlines(writer: asyncio.StreamWriter) -> bool:
    """A line protocol that ends its lines with `\\n` alone."""
    writer.write(b"+OK ready\n")
    await writer.drain()
    return True


HOSTILE: dict[str, tuple[Answer, str]] = {
    "http-server": (fake_redis.garbage, "protocol"),
    "loading-forever": (fake_redis.loading, "loading"),
    "hangs-up": (fake_redis.hang_up, "connection"),
    "2-GB-bulk-dripped": (fake_redis.huge_bulk(pause=0.05), "protocol"),
    "2-GB-bulk-flooded": (fake_redis.huge_bulk(pause=0.0), "protocol"),
    "nested-100000-deep": (fake_redis.nested(100_000), "protocol"),
    "array-of-a-million": (fake_redis.long_array(1_000_000), "protocol"),
    "array-over-4-MiB": (fake_redis.long_array(9, size=MAX_REPLY_BYTES // 8), "protocol"),
    "endless-line": (line_without_end, "protocol"),
    "bare-newlines": (bare_newlines, "protocol"),
}


@pytest.fixture
async def publishers() -> AsyncIterator[Callable[[str, str], RedisStreamPublisher]]:
    made: list[RedisStreamPublisher | RedisPubSubPublisher] = []

    def make(kind: str, url: str) -> Any:
        options = {"kind": kind, "url": url, "name": "peer", "timeout": 2.0}
        publisher = (
            RedisStreamPublisher(RedisStreamTargetSettings.model_validate(options))
            if kind == "redis-stream"
            else RedisPubSubPublisher(RedisPubSubTargetSettings.model_validate(options))
        )
        made.append(publisher)
        return publisher

    yield make
    for publisher in made:
        await publisher.close()


@pytest.mark.parametrize("kind", ["redis-stream", "redis-pubsub"])
@pytest.mark.parametrize("peer", list(HOSTILE))
async def test_a_peer_that_is_not_redis_fails_the_attempt_on_a_connection_or_two(
    peer: str, kind: str, publishers: Callable[[str, str], RedisStreamPublisher]
) -> None:
    answer, reason = HOSTILE[peer]
    async with FakeRedis(answer) as fake:
        publisher = publishers(kind, fake.url)
        if isinstance(publisher, RedisStreamPublisher):
            # Count the deliveries' connections alone, not the readers' watcher's.
            await publisher.start()
            await publisher.stream_readers.close()
        for attempt in range(ATTEMPTS):
            accepted = fake.accepted
            with pytest.raises(DeliveryError) as failure:
                await publisher.deliver([feedback()])
            assert (failure.value.reason, failure.value.retryable) == (reason, True), attempt
            assert 1 <= fake.accepted - accepted <= CONNECTIONS_PER_ATTEMPT
            # Whatever the peer still sends, the sidecar has hung up.
            await eventually(lambda: fake.open_connections == 0, message="connections dropped")
        details = await publisher.health_details()
    assert details["reachable"] == "false"
    assert details["last_redis_error"].startswith(f"{reason}: ")


async def test_a_2_gb_announcement_is_refused_before_a_byte_of_it_is_held(
    publishers: Callable[[str, str], RedisStreamPublisher],
) -> None:
    async with FakeRedis(fake_redis.huge_bulk(pause=0.0)) as fake:
        publisher = publishers("redis-stream", fake.url)
        tracemalloc.start()
        try:
            with pytest.raises(DeliveryError) as failure:
                await publisher.deliver([feedback()])
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert "2000000000 bytes" in str(failure.value)
    # The fake itself writes 64 KiB chunks in this process; the reader held none of them.
    assert peak < 4 * 1024 * 1024, peak


@pytest.mark.parametrize(
    ("sent", "reason"),
    [
        pytest.param(b"\x1b[2J\x1b[31mFAKE LOG LINE", "protocol", id="not-RESP"),
        pytest.param(b"-ERR \x1b[2J\x1b[31mFAKE LOG LINE", "redis_err", id="error-reply"),
    ],
)
async def test_what_a_peer_sends_is_shown_escaped_and_short(
    sent: bytes, reason: str, publishers: Callable[[str, str], RedisStreamPublisher]
) -> None:
    async def terminal_escapes(writer: asyncio.StreamWriter) -> bool:
        writer.write(sent + b"!" * 5000 + b"\r\n")
        await writer.drain()
        return True

    async with FakeRedis(terminal_escapes) as fake:
        publisher = publishers("redis-stream", fake.url)
        with pytest.raises(DeliveryError) as failure:
            await publisher.deliver([feedback()])
        details = await publisher.health_details()
    shown = str(failure.value)
    assert failure.value.reason == reason
    assert "\x1b" not in shown
    assert "\\x1b[2J" in shown
    assert len(shown) <= 250
    assert details["last_redis_error"].isprintable()


async def test_a_peer_answering_resp_that_is_not_redis_is_a_protocol_failure(
    publishers: Callable[[str, str], RedisStreamPublisher],
) -> None:
    async def hello(writer: asyncio.StreamWriter) -> bool:
        writer.write(b"+hello\r\n")
        await writer.drain()
        return True

    async with FakeRedis(hello) as fake:
        publisher = publishers("redis-pubsub", fake.url)
        with pytest.raises(DeliveryError) as failure:
            await publisher.deliver([feedback()])
        details = await publisher.health_details()
    assert (failure.value.reason, failure.value.retryable) == ("protocol", True)
    assert str(failure.value) == "protocol: PUBLISH answered b'hello', not a count"
    assert details["reachable"] == "false"
    assert details["last_redis_error"] == "protocol: PING answered something else than PONG"


# -- what a real Redis answers still fits ----------------------------------------------------


@pytest.fixture(params=[2, 3], ids=["RESP2", "RESP3"])
async def bounded(
    request: pytest.FixtureRequest, redis_server: RedisServer
) -> AsyncIterator[aioredis.Redis]:
    """A client of a real redis-server reading with the bounded parser."""
    client = aioredis.Redis.from_url(
        redis_server.url, parser_class=BoundedParser, protocol=request.param
    )
    yield client
    await client.aclose()


@pytest.fixture
async def plain(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """The same server through redis-py's own parser, to compare with."""
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


async def test_every_reply_the_sidecar_reads_fits_the_bounds(
    bounded: aioredis.Redis, plain: aioredis.Redis
) -> None:
    key = "mdp:mdp.telemetry.feedback"
    publisher = RedisStreamPublisher(
        RedisStreamTargetSettings.model_validate({"kind": "redis-stream", "url": "redis://x"})
    )
    envelope = publisher.envelope(feedback(reason="high_watermark"))
    async with bounded.pipeline(transaction=False) as pipe:
        for _ in range(1_000):
            pipe.xadd(key, {"data": envelope}, maxlen=100_000, approximate=True)
        ids = await pipe.execute()
    for group in ("pipeline", "orchestrator"):
        await bounded.xgroup_create(key, group, id="0")
    # A thousand readers of one group, and everything pending for one of them.
    async with bounded.pipeline(transaction=False) as pipe:
        for n in range(1_000):
            pipe.xgroup_createconsumer(key, "orchestrator", f"observer-{n}")
        await pipe.execute()
    await bounded.xreadgroup("pipeline", "consumer-1", {key: ">"}, count=1_000)

    assert await bounded.ping() is True
    assert (await bounded.info("server"))["run_id"]
    assert len(await bounded.xrange(key, count=1_000) or []) == 1_000
    assert await bounded.xrange(key, count=1_000) == await plain.xrange(key, count=1_000)
    assert await bounded.xinfo_groups(key) == await plain.xinfo_groups(key)
    assert len(await bounded.xinfo_consumers(key, "orchestrator")) == 1_000
    assert (await bounded.xinfo_stream(key))["length"] == 1_000
    assert len((await bounded.xinfo_stream(key, full=True))["groups"]) == 2
    assert (await bounded.xpending(key, "pipeline"))["pending"] == 1_000
    pending = await bounded.xpending_range(key, "pipeline", min="-", max="+", count=1_000)
    assert [entry["message_id"] for entry in pending] == ids
    script = "return {1, 'two', {3, {redis.call('XLEN', KEYS[1])}}}"
    sha = await bounded.script_load(script)
    assert await bounded.evalsha(sha, 1, key) == [1, b"two", [3, [1_000]]]


async def test_an_xpending_page_of_50000_entries_fits(
    bounded: aioredis.Redis, plain: aioredis.Redis
) -> None:
    """The largest page the bounds are sized for (`MAX_REPLY_VALUES` / 5 values each)."""
    key, entries = "pending", MAX_REPLY_VALUES // 5
    await bounded.xgroup_create(key, "pipeline", id="0", mkstream=True)
    async with bounded.pipeline(transaction=False) as pipe:
        for _ in range(entries + 1_000):
            pipe.xadd(key, {"d": "1"})
        await pipe.execute()
    for _ in range(entries // 10_000):
        await bounded.xreadgroup("pipeline", "consumer-with-a-long-name", {key: ">"}, count=10_000)

    pending = await bounded.xpending_range(key, "pipeline", min="-", max="+", count=entries)
    assert len(pending) == entries
    beyond = entries + 1_000
    with pytest.raises(ReplyOutOfBounds, match="values"):
        await bounded.xrange(key, count=beyond)  # 5 values an entry
    assert await bounded.ping() is True  # a new connection: the pool goes on
    assert len(await plain.xrange(key, count=beyond) or []) == beyond
