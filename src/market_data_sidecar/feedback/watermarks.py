"""Polled queue depths -> `FeedbackEvent`s when a coordinator crosses a watermark.

Mirrors the store's own queue signalling, so synthesized events look like pushed ones:
`hard` once depth reaches the high watermark, `soft` once it rises above the low one,
and `ok` with reason `queue_recovered` when it falls back to the low watermark or
below. In between, the level holds (hysteresis): a queue draining from `hard` stays
`hard` until it has recovered. Watermarks are whole items, as the store computes them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from market_data_core.telemetry import BackpressureLevel, FeedbackEvent

from market_data_sidecar.feedback import bounds

RECOVERED = "queue_recovered"


class QueueSample(Protocol):
    """What the queue check reports per coordinator (only what watermarks need)."""

    @property
    def coordinator_id(self) -> str: ...

    @property
    def depth(self) -> float: ...

    @property
    def capacity(self) -> int: ...


SampleListener = Callable[[Sequence[QueueSample]], None]


@runtime_checkable
class QueueSampleSource(Protocol):
    """A check that calls listeners with every successful scrape of the store's queues."""

    def add_listener(self, callback: SampleListener) -> None: ...


@dataclass(frozen=True)
class Marks:
    """A coordinator's watermarks in whole items, as the store computes them."""

    low: int
    high: int

    @classmethod
    def of(cls, capacity: int, low: float, high: float) -> Marks:
        """`int(low * capacity)` and `int(high * capacity)` (at least 1), the store's formula."""
        return cls(low=int(low * capacity), high=max(1, int(high * capacity)))

    def level(self, depth: int) -> BackpressureLevel:
        """The level without hysteresis: hard at the high mark, soft above the low one."""
        if depth >= self.high:
            return BackpressureLevel.hard
        if depth > self.low:
            return BackpressureLevel.soft
        return BackpressureLevel.ok


def level_for(depth: int, capacity: int, low: float, high: float) -> BackpressureLevel:
    """The store's level for `depth` items of `capacity`; `low`/`high` are fractions.

    The one level function: the queue check reports it, and `Watermarks` adds only
    the hysteresis on top when it turns levels into events.
    """
    return Marks.of(capacity, low, high).level(depth)


@dataclass(frozen=True)
class Crossing:
    """A coordinator's level changed: the event to relay, and the reason beside it."""

    event: FeedbackEvent
    reason: str | None


class Watermarks:
    """Per-coordinator level with the store's hysteresis."""

    def __init__(self, low: float, high: float, *, clock: Callable[[], float] = time.time) -> None:
        if not 0 <= low < high <= 1:
            raise ValueError("watermarks must satisfy 0 <= low < high <= 1")
        self.low = low
        self.high = high
        self._levels: dict[str, BackpressureLevel] = {}
        self._clock = clock

    def level_of(self, coordinator_id: str) -> BackpressureLevel:
        return self._levels.get(coordinator_id, BackpressureLevel.ok)

    @staticmethod
    def admissible(samples: Sequence[QueueSample]) -> list[QueueSample]:
        """The samples an event can carry: the intake's bounds (`bounds`), whatever the
        store's metrics said (the queue check already keeps only those; this is the rule
        applied where events are made)."""
        return [
            sample
            for sample in samples
            if bounds.queue_problem(sample.coordinator_id, int(sample.depth), sample.capacity)
            is None
        ]

    def observe(self, samples: Sequence[QueueSample]) -> list[Crossing]:
        """Update every admissible coordinator's level; return the crossings, in sample
        order."""
        crossings = []
        for sample in self.admissible(samples):
            depth = max(int(sample.depth), 0)
            previous = self.level_of(sample.coordinator_id)
            level = self._next_level(previous, depth, sample.capacity)
            if level == previous:
                continue
            self._levels[sample.coordinator_id] = level
            reason = RECOVERED if level == BackpressureLevel.ok else None
            crossings.append(Crossing(self._event(sample, level), reason))
        return crossings

    def current(self, sample: QueueSample) -> FeedbackEvent:
        """The coordinator's level as last observed, as an event: for a coordinator that
        nobody has heard of yet (after a restart), whether or not it crossed a mark."""
        return self._event(sample, self.level_of(sample.coordinator_id))

    def _event(self, sample: QueueSample, level: BackpressureLevel) -> FeedbackEvent:
        return FeedbackEvent(
            coordinator_id=sample.coordinator_id,
            queue_size=max(int(sample.depth), 0),
            capacity=sample.capacity,
            level=level,
            source="store",
            ts=self._clock(),
        )

    def _next_level(
        self, previous: BackpressureLevel, depth: int, capacity: int
    ) -> BackpressureLevel:
        level = level_for(depth, capacity, self.low, self.high)
        # Hysteresis: between the marks, a queue draining from hard stays hard.
        if level == BackpressureLevel.soft and previous == BackpressureLevel.hard:
            return previous
        return level
