"""Redis targets under real faults, on a redis-server each test starts on its own port:
down at start-up, restarted, frozen, guarded by a password."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis
from loguru import logger

from market_data_sidecar.feedback.delivery import DeliveryError
from market_data_sidecar.metrics import Metrics
from market_data_sidecar.publishers.redis import RedisPubSubPublisher, RedisStreamPublisher
from market_data_sidecar.redaction import redact_url
from market_data_sidecar.settings import RedisPubSubTargetSettings, RedisStreamTargetSettings
from tests.support.helpers import eventually, feedback
from tests.support.redis_servers import RedisServer

pytest_plugins = ["tests.support.redis_fixtures"]

STREAM = "mdp:mdp.telemetry.feedback"


@pytest.fixture
async def stream_publisher() -> AsyncIterator[Callable[..., RedisStreamPublisher]]:
    made: list[RedisStreamPublisher] = []

    def make(
        url: str, *, metrics: Metrics | None = None, **options: object
    ) -> RedisStreamPublisher:
        target = RedisStreamTargetSettings.model_validate(
            {"kind": "redis-stream", "url": url, "name": "pipeline", **options}
        )
        publisher = RedisStreamPublisher(target, metrics=metrics)
        made.append(publisher)
        return publisher

    yield make
    for publisher in made:
        await publisher.close()


async def stream_length(server: RedisServer) -> int:
    async with aioredis.Redis.from_url(server.url) as client:
        return int(await client.xlen(STREAM))


async def test_down_at_start_up_then_delivers_once_redis_is_up(
    redis_server_factory: Callable[..., RedisServer],
    stream_publisher: Callable[..., RedisStreamPublisher],
) -> None:
    server = redis_server_factory(started=False)
    metrics = Metrics()
    publisher = stream_publisher(server.url, metrics=metrics)
    up = {"target": "pipeline"}

    await publisher.start()  # nothing listens on the port: must not fail
    with pytest.raises(DeliveryError) as failure:
        await publisher.deliver([feedback()])
    assert (failure.value.reason, failure.value.retryable) == ("connection", True)
    details = await publisher.health_details()
    assert details["reachable"] == "false"
    assert details["last_redis_error"].startswith("connection: ")
    assert "ping_ms" not in details
    assert metrics.registry.get_sample_value("sidecar_redis_up", up) == 0

    server.start()
    await publisher.deliver([feedback()])  # the same client, no restart

    assert await stream_length(server) == 1
    details = await publisher.health_details()
    assert details["reachable"] == "true"
    assert float(details["ping_ms"]) > 0
    assert metrics.registry.get_sample_value("sidecar_redis_up", up) == 1


async def test_restarted_redis_is_used_again_at_the_next_attempt(
    redis_server: RedisServer, stream_publisher: Callable[..., RedisStreamPublisher]
) -> None:
    publisher = stream_publisher(redis_server.url)
    await publisher.deliver([feedback(queue_size=1)])

    # Restarted between two deliveries: the pooled connection is dead, and the
    # next attempt replaces it instead of failing.
    redis_server.stop()
    redis_server.start()
    await publisher.deliver([feedback(queue_size=2)])
    assert await stream_length(redis_server) == 1

    # Down while events flow: attempts fail as retryable, and succeed again once it
    # is back on the same port.
    redis_server.stop()
    with pytest.raises(DeliveryError) as failure:
        await publisher.deliver([feedback(queue_size=3)])
    assert (failure.value.reason, failure.value.retryable) == ("connection", True)
    redis_server.start()
    await publisher.deliver([feedback(queue_size=3)])
    assert await stream_length(redis_server) == 1


@pytest.mark.exclusive
async def test_frozen_redis_times_out_within_the_target_timeout(
    redis_server: RedisServer, stream_publisher: Callable[..., RedisStreamPublisher]
) -> None:
    publisher = stream_publisher(redis_server.url, timeout=0.5)
    await publisher.deliver([feedback()])

    redis_server.freeze()
    started = time.monotonic()
    with pytest.raises(DeliveryError) as failure:
        await publisher.deliver([feedback()])
    elapsed = time.monotonic() - started
    details = await publisher.health_details()
    redis_server.thaw()

    assert (failure.value.reason, failure.value.retryable) == ("timeout", True)
    assert elapsed < 2.0
    assert details["reachable"] == "false"
    assert details["last_redis_error"].startswith("timeout: ")
    await eventually(lambda: _delivers(publisher), message="delivering after thaw")


async def _delivers(publisher: RedisStreamPublisher) -> bool:
    try:
        await publisher.deliver([feedback()])
    except DeliveryError:
        return False
    return True


async def test_password_is_never_shown(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    server = redis_server_factory("--requirepass", "right-pw-7d1")
    wrong = server.url.replace("redis://", "redis://:wrong-pw-5e9@")
    right = server.url.replace("redis://", "redis://:right-pw-7d1@")
    lines: list[str] = []
    sink = logger.add(lines.append, level="DEBUG", format="{message}")
    denied = RedisPubSubPublisher(
        RedisPubSubTargetSettings(kind="redis-pubsub", url=wrong), metrics=Metrics()
    )
    allowed = RedisPubSubPublisher(RedisPubSubTargetSettings(kind="redis-pubsub", url=right))
    try:
        with pytest.raises(DeliveryError) as failure:
            await denied.deliver([feedback()])
        details = await denied.health_details()
        await allowed.deliver([feedback()])
        allowed_details = await allowed.health_details()
    finally:
        logger.remove(sink)
        await denied.close()
        await allowed.close()

    assert (failure.value.reason, failure.value.retryable) == ("auth", False)
    assert details["reachable"] == "true"  # it answered; it refuses us
    assert allowed_details["reachable"] == "true"
    shown = [str(failure.value), repr(denied), repr(allowed), *details.values(), *lines]
    shown += allowed_details.values()
    for text in shown:
        assert "wrong-pw-5e9" not in text
        assert "right-pw-7d1" not in text
    assert details["url"] == server.url


def test_redact_url_drops_credentials_wherever_they_are() -> None:
    assert redact_url("redis://user:pw@host:6380/2") == "redis://host:6380/2"
    assert redact_url("rediss://:pw@host/0") == "rediss://host/0"
    assert redact_url("unix://user@/run/redis.sock?db=1&password=pw") == (
        "unix:///run/redis.sock?db=1"
    )
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    # Webhook URLs often carry an API key in the query: none of it is shown.
    assert redact_url("https://u:p@hooks.example/feedback?api_key=k&x=1") == (
        "https://hooks.example/feedback"
    )


async def test_a_delivering_worker_stops_at_the_first_cancellation(
    redis_server: RedisServer, stream_publisher: Callable[..., RedisStreamPublisher]
) -> None:
    """The router stops its workers by cancelling them, mid-delivery or not. (redis-py's
    `socket_timeout` path swallowed about half of such cancellations on Python 3.11.)"""
    publisher = stream_publisher(redis_server.url, batch=20)
    batch = [feedback(queue_size=n) for n in range(20)]
    ignored = 0
    for attempt in range(100):

        async def deliver_forever() -> None:
            while True:
                await publisher.deliver(batch)

        worker = asyncio.create_task(deliver_forever())
        await asyncio.sleep(0.001 * (attempt % 10))  # land the cancellation anywhere
        worker.cancel()
        done, _ = await asyncio.wait([worker], timeout=2.0)
        if not done:
            ignored += 1
            while not worker.done():
                worker.cancel()
                await asyncio.wait([worker], timeout=1.0)
    assert ignored == 0
