"""Target buffers: conflation keeps the latest per coordinator; FIFO keeps every event."""

from __future__ import annotations

from market_data_sidecar.feedback.buffers import ConflatingBuffer, FifoBuffer
from tests.support.helpers import feedback


def test_conflation_keeps_the_latest_event_per_coordinator_in_arrival_order() -> None:
    buffer = ConflatingBuffer(capacity=100)
    a1, b1, a2, c1 = feedback("a", 1), feedback("b", 1), feedback("a", 2), feedback("c", 1)
    assert buffer.put(a1) is None
    assert buffer.put(b1) is None
    displaced = buffer.put(a2)
    assert displaced is not None
    assert displaced.feedback is a1
    assert displaced.reason == "conflated"
    buffer.put(c1)
    # What remains is a subsequence of what arrived: b1, a2, c1.
    assert buffer.take(10) == [b1, a2, c1]
    assert len(buffer) == 0
    assert buffer.high_water == 3


def test_conflation_is_bounded_by_coordinators_not_events() -> None:
    buffer = ConflatingBuffer(capacity=100)
    for n in range(1000):
        buffer.put(feedback(f"coord-{n % 3}", n))
    assert buffer.high_water == 3
    assert [f.event.queue_size for f in buffer.take(3)] == [997, 998, 999]


def test_conflation_beyond_capacity_drops_the_oldest_coordinator() -> None:
    buffer = ConflatingBuffer(capacity=2)
    buffer.put(feedback("a"))
    buffer.put(feedback("b"))
    displaced = buffer.put(feedback("c"))
    assert displaced is not None
    assert displaced.reason == "buffer_full"
    assert displaced.feedback.coordinator_id == "a"
    assert [f.coordinator_id for f in buffer.take(5)] == ["b", "c"]


def test_a_buffered_newer_event_supersedes_an_in_flight_one() -> None:
    buffer = ConflatingBuffer(capacity=10)
    in_flight = feedback("a", 1)
    assert not buffer.supersedes(in_flight)
    buffer.put(feedback("a", 2))
    assert buffer.supersedes(in_flight)
    assert not buffer.supersedes(feedback("b"))


def test_fifo_keeps_every_event_and_drops_the_oldest_when_full() -> None:
    buffer = FifoBuffer(capacity=3)
    events = [feedback("a", n) for n in range(5)]
    displaced = [buffer.put(event) for event in events]
    assert displaced[:3] == [None, None, None]
    assert [d.feedback.event.queue_size for d in displaced[3:] if d] == [0, 1]
    assert all(d.reason == "buffer_full" for d in displaced[3:] if d)
    assert not buffer.supersedes(feedback("a", 99))
    assert [f.event.queue_size for f in buffer.take(2)] == [2, 3]
    assert [f.event.queue_size for f in buffer.take(2)] == [4]
    assert buffer.high_water == 3
