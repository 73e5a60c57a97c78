"""Synthesized levels follow the store's queue hysteresis exactly."""

from __future__ import annotations

from dataclasses import dataclass

from market_data_core.telemetry import BackpressureLevel

from market_data_sidecar.checks.exposition import CoordinatorSeries
from market_data_sidecar.checks.queue import QueueCheck
from market_data_sidecar.feedback.watermarks import Marks, Watermarks, level_for
from market_data_sidecar.metrics import Metrics


@dataclass(frozen=True)
class Sample:
    """Shaped like the queue check's CoordinatorSample (what watermarks read of it)."""

    coordinator_id: str
    depth: int
    capacity: int = 1000


def levels(watermarks: Watermarks, depths: list[int], coordinator: str = "c") -> list[str]:
    """The crossings, as `level@depth`, for a series of polled depths."""
    out = []
    for depth in depths:
        for crossing in watermarks.observe([Sample(coordinator, depth)]):
            out.append(f"{crossing.event.level.value}@{crossing.event.queue_size}")
    return out


def test_soft_above_low_hard_at_high_ok_at_or_below_low() -> None:
    marks = Watermarks(0.5, 0.8)
    # The store's marks for capacity 1000: low 500, high 800.
    assert levels(marks, [0, 500, 501, 700, 799, 800, 900, 600, 501, 500, 400]) == [
        "soft@501",
        "hard@800",
        "ok@500",
    ]


def test_hard_holds_until_recovered_and_soft_does_not_repeat() -> None:
    marks = Watermarks(0.5, 0.8)
    assert levels(marks, [900, 700, 650, 900, 100, 600, 650, 100]) == [
        "hard@900",
        "ok@100",
        "soft@600",
        "ok@100",
    ]


def test_recovery_carries_the_store_reason_and_core_fields() -> None:
    marks = Watermarks(0.5, 0.8, clock=lambda: 1234.5)
    [hard] = marks.observe([Sample("bars", 850)])
    [ok] = marks.observe([Sample("bars", 10)])
    assert hard.reason is None
    assert ok.reason == "queue_recovered"
    assert ok.event.level == BackpressureLevel.ok
    assert ok.event.model_dump() == {
        "coordinator_id": "bars",
        "queue_size": 10,
        "capacity": 1000,
        "level": BackpressureLevel.ok,
        "source": "store",
        "ts": 1234.5,
    }


def test_coordinators_are_tracked_separately_and_quiet_queues_say_nothing() -> None:
    marks = Watermarks(0.5, 0.8)
    crossings = marks.observe([Sample("a", 10), Sample("b", 900), Sample("c", 600)])
    assert [(c.event.coordinator_id, c.event.level.value) for c in crossings] == [
        ("b", "hard"),
        ("c", "soft"),
    ]
    assert marks.level_of("a") == BackpressureLevel.ok
    assert marks.observe([Sample("a", 10), Sample("b", 900), Sample("c", 600)]) == []


def test_integer_watermarks_as_the_store_computes_them() -> None:
    # capacity 3: high = max(1, int(2.4)) = 2, low = int(1.5) = 1.
    marks = Watermarks(0.5, 0.8)
    out = []
    for depth in [1, 2, 1]:
        out += [c.event.level.value for c in marks.observe([Sample("t", depth, capacity=3)])]
    assert out == ["hard", "ok"]


def _capacities() -> list[int]:
    """Every small capacity, and large ones around the store's defaults."""
    return [*range(1, 201), 999, 1000, 1001, 4096, 9999, 10_000, 12_345, 20_000]


def _depths(capacity: int) -> list[int]:
    """Every depth of a small queue; around both marks (and the ends) of a large one."""
    if capacity <= 200:
        return list(range(capacity + 2))
    marks = Marks.of(capacity, 0.5, 0.8)
    near = {d for mark in (marks.low, marks.high) for d in range(mark - 2, mark + 3)}
    return sorted(near | {0, capacity, capacity + 1})


def test_queue_check_and_synthesized_events_agree_on_every_level() -> None:
    """The level the queue component reports is the level a rising queue is synthesized at."""
    check = QueueCheck(
        "http://127.0.0.1:1/metrics",
        capacities={},
        default_capacity=1,
        low_watermark=0.5,
        high_watermark=0.8,
        metrics=Metrics(),
        interval=1.0,
        timeout=1.0,
    )
    disagreements = []
    for capacity in _capacities():
        check.default_capacity = capacity
        for depth in _depths(capacity):
            series = CoordinatorSeries(
                depth={"c": depth}, workers_alive={}, circuit_state={}, dropped={}
            )
            (sample,) = check._samples(series)
            crossings = Watermarks(0.5, 0.8).observe([sample])
            synthesized = crossings[0].event.level if crossings else BackpressureLevel.ok
            if sample.level != synthesized:
                disagreements.append((capacity, depth, sample.level.value, synthesized.value))
    assert disagreements == []


def test_store_marks_are_whole_items() -> None:
    """At capacity 4 the store's hard mark is int(0.8 * 4) = 3 items, not 3.2."""
    assert Marks.of(4, 0.5, 0.8) == Marks(low=2, high=3)
    assert level_for(3, 4, 0.5, 0.8) is BackpressureLevel.hard
    assert Marks.of(1, 0.5, 0.8) == Marks(low=0, high=1)


def test_only_what_the_intake_would_accept_becomes_an_event() -> None:
    """The intake's bounds, whatever the store's metrics said (`feedback/bounds.py`)."""
    marks = Watermarks(0.5, 0.8)
    hostile = [
        Sample("", 900),
        Sample("a\nERROR forged", 900),
        Sample("x" * 257, 900),
        Sample("huge", 10**300),
        Sample("hot", 1_000_001),  # 1,000 x capacity and one more
        Sample("negative", -1),
    ]
    crossings = marks.observe([*hostile, Sample("good", 900)])
    assert [c.event.coordinator_id for c in crossings] == ["good"]
    assert Watermarks.admissible([*hostile, Sample("good", 900)]) == [Sample("good", 900)]
