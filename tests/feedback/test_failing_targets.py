"""Health tells the truth: a target that refuses every delivery degrades `feedback`.

A webhook path answering 404 or a Redis with another password is up, so its circuit
stays closed; what shows it is that nothing has been delivered for a while.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from market_data_sidecar.feedback.lane import Target
from market_data_sidecar.feedback.relay import Relay
from market_data_sidecar.publishers.http import HttpPublisher
from market_data_sidecar.publishers.redis import RedisStreamPublisher
from market_data_sidecar.settings import HttpTargetSettings, RedisStreamTargetSettings
from tests.support import parts
from tests.support.helpers import eventually, feedback
from tests.support.receivers import StartOrchestrator
from tests.support.redis_servers import RedisServer

pytest_plugins = ["tests.support.redis_fixtures"]

FAILING_AFTER = 0.3
#: Fast retries; a target is failing after `FAILING_AFTER` without a delivery.
PACING: dict[str, Any] = {
    "retry_initial": 0.01,
    "retry_max": 0.02,
    "target_failing_after": FAILING_AFTER,
}


def http(url: str) -> Target:
    settings = HttpTargetSettings(kind="http", name="hook", url=url, timeout=0.5)
    return parts.target_of(HttpPublisher(settings), settings)


def stream(url: str) -> Target:
    settings = RedisStreamTargetSettings(
        kind="redis-stream", name="pulse", url=url, timeout=0.5, scope="coordinator"
    )
    return parts.target_of(RedisStreamPublisher(settings), settings)


async def component_of(relay: Relay) -> tuple[str, str]:
    component = await parts.feedback_check(relay).run()
    return component.state, component.details.get("reason", "")


async def test_404_and_a_wrong_password_degrade_feedback_until_deliveries_succeed(
    orchestrator: StartOrchestrator,
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    receiver = await orchestrator()
    receiver.status = 404
    redis = redis_server_factory("--requirepass", "right")
    wrong = redis.url.replace("redis://", "redis://:wrong@")
    relay = parts.relay(parts.router([http(receiver.url), stream(wrong)], **PACING))
    await relay.start()
    try:
        relay.accept([feedback("bars", 900, level="hard")])
        await eventually(lambda: relay.router.lane("pulse").dropped == 1, message="auth refused")
        await eventually(lambda: relay.router.lane("hook").dropped == 1, message="404 refused")
        assert (await component_of(relay))[0] == "healthy"  # not yet "a while"

        async def degraded() -> Any:
            state, reason = await component_of(relay)
            return state == "degraded" and "hook" in reason and "pulse" in reason and reason

        reason = await eventually(degraded, timeout=5, message="feedback degraded")
        assert "http_404" in reason
        assert "auth" in reason
        assert "wrong" not in reason  # the password is not in the reason

        receiver.status = 200
        relay.accept([feedback("bars", 10, level="ok")])
        await eventually(lambda: relay.router.lane("hook").delivered == 1, message="delivered")
        _, reason = await component_of(relay)
        assert "hook" not in reason
        assert "pulse" in reason
    finally:
        await relay.stop(0.1)
