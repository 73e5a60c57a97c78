"""The `feedback` health component reads the relay: circuits, disabled targets, silence."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from market_data_sidecar.feedback.delivery import DeliveryError, Publisher
from market_data_sidecar.feedback.model import Feedback
from market_data_sidecar.feedback.relay import Relay
from tests.support import parts
from tests.support.helpers import eventually, feedback

#: Fast retries; a circuit opens after two failures and stays open for the test.
PACING: dict[str, Any] = {
    "retry_initial": 0.01,
    "retry_max": 0.02,
    "circuit_failures": 2,
    "circuit_cooldown": 30,
}


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class ScriptedTarget(Publisher):
    """An in-memory target answering with the errors a test gives it, else delivering."""

    def __init__(self, name: str, *errors: DeliveryError, details: dict[str, str] | None = None):
        super().__init__(name)
        self.errors = list(errors)
        self.details = details or {}
        self.probe_hangs = False
        self.delivered: list[Feedback] = []

    async def deliver(self, batch: Sequence[Feedback]) -> None:
        if self.errors:
            raise self.errors[0]
        self.delivered.extend(batch)

    async def health_details(self) -> dict[str, str]:
        if self.probe_hangs:
            await asyncio.Event().wait()
        return self.details


@pytest.fixture
async def relay_of() -> AsyncIterator[Any]:
    relays: list[Relay] = []

    async def make(*publishers: Publisher, clock: Clock | None = None) -> Relay:
        targets = [parts.target(p) for p in publishers]
        relay = parts.relay(parts.router(targets, **PACING), clock=clock or Clock())
        await relay.start()
        relays.append(relay)
        return relay

    yield make
    for relay in relays:
        await relay.stop(0.1)


async def test_healthy_with_per_target_details(relay_of: Any) -> None:
    target = ScriptedTarget("redis-a", details={"reachable": "true", "ping_ms": "0.3"})
    relay = await relay_of(target)
    relay.accept([feedback()])
    await eventually(lambda: target.delivered, message="delivered")

    component = await parts.feedback_check(relay).run()

    assert component.state == "healthy"
    assert component.details["targets"] == "1"
    assert component.details["redis-a.circuit"] == "closed"
    assert component.details["redis-a.delivered"] == "1"
    assert component.details["redis-a.reachable"] == "true"
    assert component.details["redis-a.ping_ms"] == "0.3"


async def test_degraded_while_a_circuit_is_open_or_a_target_is_disabled(relay_of: Any) -> None:
    failing = ScriptedTarget("failing", DeliveryError("connection"))
    retired = ScriptedTarget("retired", DeliveryError("http_410", retryable=False, disable=True))
    fine = ScriptedTarget("fine")
    relay = await relay_of(failing, retired, fine)
    relay.accept([feedback()])
    await eventually(lambda: relay.router.lane("failing").circuit.state == "open")
    await eventually(lambda: relay.router.lane("retired").disabled)

    component = await parts.feedback_check(relay).run()

    assert component.state == "degraded"
    assert "target failing circuit open" in component.details["reason"]
    assert "target retired disabled" in component.details["reason"]
    assert "fine" not in component.details["reason"]
    assert component.details["failing.last_error"] == "connection"
    assert component.details["retired.disabled"] == "true"


async def test_store_silence_degrades_only_when_a_ttl_is_set(relay_of: Any) -> None:
    clock = Clock()
    relay = await relay_of(clock=clock)
    with_ttl = parts.feedback_check(relay, clock=clock, feedback_ttl=60)
    without_ttl = parts.feedback_check(relay, clock=clock)

    clock.now += 59
    assert (await with_ttl.run()).state == "healthy"
    clock.now += 2
    silent = await with_ttl.run()
    assert silent.state == "degraded"
    assert "no event from the store for 61s" in silent.details["reason"]
    assert silent.details["last_store_event_age_s"] == "never"
    assert (await without_ttl.run()).state == "healthy"
    relay.accept([feedback()])
    assert (await with_ttl.run()).state == "healthy"


async def test_a_hanging_publisher_probe_is_a_detail_not_a_timeout(relay_of: Any) -> None:
    target = ScriptedTarget("redis-a")
    target.probe_hangs = True
    relay = await relay_of(target)

    component = await parts.feedback_check(relay, check_timeout=0.2).run()

    assert component.state == "healthy"
    assert component.details["redis-a.probe"] == "timed out"
