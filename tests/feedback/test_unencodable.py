"""An event is `unencodable` only when encoding it failed: any other exception from a
publisher is the target's fault (or a bug), retried like any failure, logged once.

The target here is a Redis pub/sub target pointed at a peer that answers every command
with `+hello`: valid RESP, but no subscriber count, so the publisher's own reading of the
reply fails with a `ValueError` it does not classify.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from loguru import logger

from market_data_sidecar.feedback.delivery import EncodingError, encoder
from market_data_sidecar.feedback.router import Router, Target
from market_data_sidecar.publishers.redis import RedisPubSubPublisher
from market_data_sidecar.settings import RedisPubSubTargetSettings
from tests.feedback.conftest import FAST, RouterFactory
from tests.helpers import eventually, feedback
from tests.redis_helpers import RedisServer
from tests.support.fake_redis import FakeRedis


async def says_hello(writer: asyncio.StreamWriter) -> bool:
    writer.write(b"+hello\r\n")
    await writer.drain()
    return True


def pubsub(url: str) -> Target:
    settings = RedisPubSubTargetSettings.model_validate(
        {"kind": "redis-pubsub", "url": url, "name": "pulse", "timeout": 1.0}
    )
    return Target(RedisPubSubPublisher(settings), kind="redis-pubsub", endpoint=url)


def metric(routed: Router, name: str, **labels: str) -> float:
    return routed._metrics.registry.get_sample_value(name, labels) or 0.0


async def test_an_exception_outside_encoding_is_a_retried_target_failure(
    router: RouterFactory, tmp_path: Path
) -> None:
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="DEBUG")
    try:
        async with FakeRedis(says_hello) as fake:
            routed = await router(pubsub(fake.url))
            routed.submit(feedback("bars", 900, level="hard"))
            lane = routed.lane("pulse")
            await eventually(lambda: lane.circuit.state == "open", message="circuit open")
            await eventually(lambda: lane.retried > FAST.circuit_failures, message="retried")
            port = fake.port
    finally:
        logger.remove(sink)
    [state] = routed.states()
    assert (state.dropped, state.buffer_depth) == (0, 1)
    assert state.last_error is not None
    assert state.last_error.startswith("error: ValueError: ")
    unencodable = {"target": "pulse", "reason": "unencodable"}
    assert metric(routed, "sidecar_feedback_dropped_total", **unencodable) == 0
    assert metric(routed, "sidecar_feedback_retried_total", target="pulse") == lane.retried
    assert sum("delivery raised ValueError" in line for line in lines) == 1, lines

    # A real Redis on the port: the same event is delivered (PUBLISH counts receivers).
    server = RedisServer(tmp_path, port=port)
    server.start()
    try:
        await eventually(lambda: lane.delivered == 1, timeout=10, message="delivered")
        assert lane.circuit.state == "closed"
    finally:
        server.stop()


def test_what_the_encoder_raises_is_the_events_fault() -> None:
    @encoder
    def encode(text: str) -> bytes:
        return text.encode()

    assert encode("bars") == b"bars"
    with pytest.raises(EncodingError, match=r"^UnicodeEncodeError: 'utf-8' codec") as failure:
        encode("x\ud800")
    assert isinstance(failure.value.__cause__, UnicodeEncodeError)
