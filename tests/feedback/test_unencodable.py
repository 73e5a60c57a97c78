"""An event is `unencodable` only when encoding it failed: any other exception from a
publisher is the target's fault (or a bug), retried like any failure, logged once.

The publisher here is an in-memory target that raises what the test gives it: the
exceptions that reach the router's last resort, where no real target can make them.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from loguru import logger

from market_data_sidecar.feedback.delivery import EncodingError, Publisher, encoder
from market_data_sidecar.feedback.model import Feedback
from market_data_sidecar.feedback.router import Router
from tests.feedback.conftest import FAST, RouterFactory
from tests.support import parts
from tests.support.helpers import eventually, feedback


class FailingPublisher(Publisher):
    """Raises `failure` from `deliver` while `failing`, then delivers; `encode` is its
    encoding of an event, failing for coordinators named in `poison`."""

    max_batch = 10

    def __init__(self, failure: Exception) -> None:
        super().__init__("pulse")
        self.failure = failure
        self.failing = True
        self.poison: set[str] = set()
        self.delivered: list[Feedback] = []

    async def deliver(self, batch: Sequence[Feedback]) -> None:
        encoded = [self.encode(f) for f in batch]
        if self.failing:
            raise self.failure
        self.delivered.extend(f for f, _ in zip(batch, encoded, strict=True))

    @encoder
    def encode(self, feedback: Feedback) -> str:
        if feedback.coordinator_id in self.poison:
            raise ValueError(f"cannot encode {feedback.coordinator_id}")
        return feedback.coordinator_id


def metric(routed: Router, name: str, **labels: str) -> float:
    return routed._metrics.registry.get_sample_value(name, labels) or 0.0


async def test_an_exception_outside_encoding_is_a_retried_target_failure(
    router: RouterFactory,
) -> None:
    publisher = FailingPublisher(RuntimeError("the target answered what nobody expected"))
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="DEBUG")
    try:
        routed = await router(parts.target(publisher, endpoint="pulse"))
        routed.submit(feedback("bars", 900, level="hard"))
        lane = routed.lane("pulse")
        await eventually(lambda: lane.circuit.state == "open", message="circuit open")
        await eventually(lambda: lane.retried > FAST["circuit_failures"], message="retried")
    finally:
        logger.remove(sink)
    [state] = routed.states()
    assert (state.dropped, state.buffer_depth) == (0, 1)
    assert state.last_error == "error: RuntimeError: the target answered what nobody expected"
    unencodable = {"target": "pulse", "reason": "unencodable"}
    assert metric(routed, "sidecar_feedback_dropped_total", **unencodable) == 0
    assert metric(routed, "sidecar_feedback_retried_total", target="pulse") == lane.retried
    assert sum("delivery raised RuntimeError" in line for line in lines) == 1, lines

    publisher.failing = False
    await eventually(lambda: len(publisher.delivered) == 1, message="delivered at last")
    assert lane.circuit.state == "closed"


async def test_only_the_event_whose_encoding_failed_is_dropped(router: RouterFactory) -> None:
    publisher = FailingPublisher(RuntimeError("unused"))
    publisher.failing = False
    publisher.poison = {"quotes"}
    routed = await router(parts.target(publisher, endpoint="pulse"))
    for coordinator in ("bars", "quotes", "trades"):
        routed.submit(feedback(coordinator))

    await eventually(lambda: len(publisher.delivered) == 2, message="the others delivered")
    assert [f.coordinator_id for f in publisher.delivered] == ["bars", "trades"]
    [state] = routed.states()
    assert state.dropped == 1
    assert state.last_error == "unencodable: ValueError: cannot encode quotes"
    assert (state.circuit, state.retried) == ("closed", 0)


def test_what_the_encoder_raises_is_the_events_fault() -> None:
    @encoder
    def encode(text: str) -> bytes:
        return text.encode()

    assert encode("bars") == b"bars"
    with pytest.raises(EncodingError, match=r"^UnicodeEncodeError: 'utf-8' codec") as failure:
        encode("x\ud800")
    assert isinstance(failure.value.__cause__, UnicodeEncodeError)
