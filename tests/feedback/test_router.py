"""The router against real orchestrators: retries, Retry-After, circuits, 410, drops, drain."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from market_data_sidecar.feedback.delivery import Publisher
from market_data_sidecar.feedback.lane import Target
from market_data_sidecar.feedback.model import Feedback
from market_data_sidecar.feedback.router import Router
from market_data_sidecar.publishers.http import HttpPublisher
from market_data_sidecar.settings import HttpTargetSettings
from tests.feedback.conftest import FAST, RouterFactory
from tests.support import parts
from tests.support.helpers import eventually, feedback
from tests.support.receivers import StartOrchestrator, closed_port_url


def http(name: str, url: str, *, timeout: float = 0.5) -> Target:
    settings = HttpTargetSettings(kind="http", name=name, url=url, timeout=timeout)
    return parts.target_of(HttpPublisher(settings), settings)


class GatedPublisher(Publisher):
    """An in-memory target that keeps every event (like a stream in mode `all`) and
    delivers only while its gate is open, so the test decides when it is behind."""

    conflate = False
    max_batch = 10

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.gate = asyncio.Event()
        self.batches: list[list[Feedback]] = []

    async def deliver(self, batch: Sequence[Feedback]) -> None:
        await self.gate.wait()
        self.batches.append(list(batch))


def metric(routed: Router, name: str, **labels: str) -> float:
    value = routed._metrics.registry.get_sample_value(name, labels)
    return value or 0.0


async def test_a_failing_target_is_retried_with_the_same_id_until_it_recovers(
    orchestrator: StartOrchestrator, router: RouterFactory
) -> None:
    receiver = await orchestrator()
    receiver.answer(500, 503, 502)
    routed = await router(http("orch", receiver.url))
    event = feedback("bars", 1)

    routed.submit(event)

    lane = routed.lane("orch")
    # The orchestrator records the event before the router has read its answer.
    await eventually(lambda: lane.delivered, message="delivered after recovery")
    assert [a.status for a in receiver.attempts] == [500, 503, 502, 200]
    assert {a.headers["webhook-id"] for a in receiver.attempts} == {event.id}
    assert (lane.delivered, lane.retried, lane.dropped) == (1, 3, 0)
    assert lane.last_success is not None
    assert lane.last_error == "http_502"
    assert lane.circuit.state == "closed"
    assert metric(routed, "sidecar_feedback_retried_total", target="orch") == 3
    assert metric(routed, "sidecar_feedback_delivered_total", target="orch") == 1
    assert metric(routed, "sidecar_feedback_delivery_latency_seconds_count", target="orch") == 1


async def test_retry_after_is_honoured(
    orchestrator: StartOrchestrator, router: RouterFactory
) -> None:
    receiver = await orchestrator()
    receiver.answer(429, headers={"Retry-After": "1"})
    routed = await router(http("orch", receiver.url))

    routed.submit(feedback())

    await eventually(lambda: receiver.delivered, message="delivered after Retry-After")
    first, second = receiver.attempts
    # Backoff alone would retry within 10 ms; the orchestrator asked for a second.
    assert second.at - first.at >= 0.95


async def test_the_circuit_opens_then_lets_one_trial_through_after_the_cooldown(
    orchestrator: StartOrchestrator, router: RouterFactory
) -> None:
    receiver = await orchestrator()
    receiver.status = 503
    routed = await router(
        http("orch", receiver.url),
        retry_initial=0.01,
        retry_max=0.02,
        circuit_failures=3,
        circuit_cooldown=0.5,
    )
    lane = routed.lane("orch")

    routed.submit(feedback())

    await eventually(lambda: lane.circuit.state == "open", message="circuit open")
    assert len(receiver.attempts) == 3
    assert metric(routed, "sidecar_feedback_circuit_state", target="orch") == 1
    await eventually(lambda: len(receiver.attempts) == 4, message="half-open trial")
    trial_gap = receiver.attempts[3].at - receiver.attempts[2].at
    assert trial_gap >= 0.45  # nothing was attempted during the cool-down
    # The orchestrator records the trial before the router has read its answer.
    await eventually(lambda: lane.circuit.state == "open", message="the trial failed")
    receiver.recover()
    await eventually(lambda: receiver.delivered, timeout=5, message="delivered after trial")
    # The orchestrator records the event before the router has read its answer.
    await eventually(lambda: lane.circuit.state == "closed", message="circuit closed")
    assert metric(routed, "sidecar_feedback_circuit_state", target="orch") == 0


async def test_a_hanging_target_times_out_and_opens_its_circuit(
    orchestrator: StartOrchestrator, router: RouterFactory
) -> None:
    receiver = await orchestrator()
    receiver.hang()
    routed = await router(
        http("slow", receiver.url, timeout=0.2),
        retry_initial=0.01,
        retry_max=0.02,
        circuit_failures=2,
        circuit_cooldown=0.3,
    )
    lane = routed.lane("slow")

    routed.submit(feedback())

    await eventually(lambda: lane.circuit.state == "open", message="circuit open")
    assert lane.last_error is not None
    assert lane.last_error.startswith("timeout")
    assert lane.depth == 1
    receiver.recover()
    await eventually(lambda: lane.delivered == 1, timeout=5, message="delivered after hang")


async def test_a_refusing_target_is_retried_and_reported(router: RouterFactory) -> None:
    routed = await router(http("gone", closed_port_url()))
    lane = routed.lane("gone")

    routed.submit(feedback())

    await eventually(lambda: lane.circuit.state == "open", message="circuit open")
    assert lane.last_error == "connection: Connection refused"
    assert lane.retried >= 5
    assert lane.delivered == 0
    assert lane.last_error_at is not None


async def test_410_disables_the_target_and_counts_what_it_will_not_get(
    orchestrator: StartOrchestrator, router: RouterFactory
) -> None:
    receiver = await orchestrator()
    receiver.answer(410)
    routed = await router(http("retired", receiver.url))
    lane = routed.lane("retired")

    routed.submit(feedback("a"))
    await eventually(lambda: lane.disabled, message="target disabled")
    routed.submit(feedback("b"))
    routed.submit(feedback("c"))

    assert len(receiver.attempts) == 1
    assert lane.dropped == 3
    assert (
        metric(routed, "sidecar_feedback_dropped_total", target="retired", reason="disabled") == 3
    )
    assert (
        metric(routed, "sidecar_feedback_dropped_total", target="retired", reason="http_410") == 0
    )
    assert lane.status().disabled is True


async def test_other_4xx_drops_the_event_and_moves_on(
    orchestrator: StartOrchestrator, router: RouterFactory
) -> None:
    receiver = await orchestrator()
    receiver.answer(400)
    routed = await router(http("picky", receiver.url))
    lane = routed.lane("picky")

    routed.submit(feedback("a", 1))
    await eventually(lambda: lane.dropped == 1, message="first event dropped")
    routed.submit(feedback("a", 2))
    await eventually(lambda: receiver.delivered, message="next event delivered")

    assert [a.status for a in receiver.attempts] == [400, 200]
    assert receiver.events()[0]["queue_size"] == 2
    assert metric(routed, "sidecar_feedback_dropped_total", target="picky", reason="http_400") == 1
    assert lane.retried == 0


async def test_a_retry_carries_the_coordinators_current_state_not_a_stale_one(
    orchestrator: StartOrchestrator, router: RouterFactory
) -> None:
    receiver = await orchestrator()
    receiver.status = 503
    routed = await router(http("orch", receiver.url))
    stale, current = feedback("bars", 1), feedback("bars", 2)

    routed.submit(stale)
    await eventually(lambda: receiver.attempts, message="first attempt")
    routed.submit(current)
    await eventually(
        lambda: receiver.attempts[-1].headers["webhook-id"] == current.id,
        message="retrying the newer event",
    )
    receiver.recover()
    await eventually(lambda: receiver.delivered, message="delivered")

    assert [e["queue_size"] for e in receiver.events()] == [2]
    assert metric(routed, "sidecar_feedback_conflated_total", target="orch") == 1


async def test_a_target_in_mode_all_keeps_every_event_up_to_its_bound(
    router: RouterFactory,
) -> None:
    stream = GatedPublisher("stream")
    routed = await router(parts.target(stream, kind="redis-stream", buffer=20))
    lane = routed.lane("stream")
    events = [feedback(f"coord-{n % 2}", n) for n in range(50)]

    routed.submit(events[0])
    await eventually(lambda: lane.in_flight, message="first batch in flight")
    for event in events[1:]:
        routed.submit(event)
    assert lane.buffer.high_water == 20
    assert lane.status().mode == "all"
    stream.gate.set()
    await eventually(lambda: lane.depth == 0, message="drained")

    received = [f.event.queue_size for batch in stream.batches for f in batch]
    # The first (in flight) and the newest 20; the 29 oldest in between were dropped.
    assert received == [0, *range(30, 50)]
    assert all(len(batch) <= 10 for batch in stream.batches)
    assert lane.dropped == 29
    assert (
        metric(routed, "sidecar_feedback_dropped_total", target="stream", reason="buffer_full")
        == 29
    )
    assert metric(routed, "sidecar_feedback_conflated_total", target="stream") == 0


async def test_stop_drains_within_the_deadline_then_counts_the_rest_as_shutdown(
    orchestrator: StartOrchestrator,
) -> None:
    slow, stuck = await orchestrator(), await orchestrator()
    slow.delay = 0.05
    stuck.hang()
    routed = parts.router([http("slow", slow.url), http("stuck", stuck.url, timeout=5)], **FAST)
    await routed.start()
    for n in range(4):
        routed.submit(feedback(f"coord-{n}", n))

    await routed.stop(drain_timeout=1.0)

    assert len(slow.delivered) == 4
    assert routed.lane("slow").dropped == 0
    assert routed.lane("stuck").dropped == 4
    assert metric(routed, "sidecar_feedback_dropped_total", target="stuck", reason="shutdown") == 4
    routed.submit(feedback("late"))  # after stop: counted, not buffered
    assert metric(routed, "sidecar_feedback_dropped_total", target="slow", reason="shutdown") == 1
