"""How states moved over the last hour: components, coordinators, stream targets' composites.

A sampler reads the cached health snapshot and the relay's state every `SAMPLE_EVERY`
seconds (nothing calls back when a composite changes, so it is read, not pushed), with
the queue check's latest scrape of every coordinator (the snapshot's details are cut to a
byte budget, so they name only the worst few; the check hands its samples to listeners,
and the history is one). Samples
fall into ticks of `TICK` seconds; a tick keeps the worst state and the peak utilization
seen within it, so a spike between two points is not lost. Each series is a ring of
`POINTS` ticks in compact arrays (a byte a state, four bytes a utilization), and the
changes are a bounded log, so a full hour at the queue check's 2,000 coordinators stays a
few megabytes whatever the store reports.
"""

from __future__ import annotations

import math
import time
from array import array
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from loguru import logger
from market_data_core.telemetry import HealthStatus
from pydantic import BaseModel, ConfigDict, Field

from market_data_sidecar.feedback.state import RelayState
from market_data_sidecar.feedback.watermarks import QueueSample
from market_data_sidecar.views.format import printable
from market_data_sidecar.views.model import as_int, queue_coordinators, queue_utilization

#: Seconds a point covers, and points a series keeps: one hour.
TICK = 10.0
POINTS = 360
#: Seconds between two readings of the cached state (several fall into one tick).
SAMPLE_EVERY = 2.0
#: Coordinators with a series: the queue check lists at most 2,000, the relay shows 100
#: more that only pushed events; the rest are counted, not kept.
MAX_COORDINATORS = 2_500
#: Changes kept for `GET /history` and `status --history`; older ones are counted.
MAX_CHANGES = 2_000
#: Changes in one answer unless `?limit=` says otherwise.
DEFAULT_CHANGES = 200

Kind = Literal["component", "coordinator", "target"]
#: A state as a byte: the position in its kind's ranking, least severe first.
RANKS: dict[Kind, tuple[str, ...]] = {
    "component": ("healthy", "degraded", "unhealthy"),
    "coordinator": ("ok", "soft", "hard"),
    "target": ("ok", "soft", "hard"),
}
ABSENT = -1
_NAN = float("nan")


@dataclass(frozen=True)
class Reading:
    """One reading of the cached state, by series name."""

    components: Mapping[str, str] = field(default_factory=dict)
    #: Coordinator id -> (level, utilization), either unknown.
    coordinators: Mapping[str, tuple[str | None, float | None]] = field(default_factory=dict)
    targets: Mapping[str, str] = field(default_factory=dict)


Polled = Mapping[str, tuple[str | None, float | None]]


def read(status: HealthStatus, relay: RelayState | None, scraped: Polled | None = None) -> Reading:
    """The states the history keeps, from what `/healthz` and `/feedback` serve, and the
    queue check's latest scrape of every coordinator (`scraped`), which they cut short."""
    components = {printable(c.name): str(c.state) for c in status.components}
    coordinators: dict[str, tuple[str | None, float | None]] = {}
    if relay is not None:
        for cid, event in relay.coordinators.items():
            coordinators[printable(cid)] = (
                event.level.value,
                queue_utilization(event.queue_size, event.capacity),
            )
    queue = next((c for c in status.components if c.name == "queue"), None)
    for cid, polled in (queue_coordinators(queue.details) if queue else {}).items():
        cid = printable(cid)
        level = polled.get("level") or coordinators.get(cid, (None, None))[0]
        coordinators[cid] = (
            level,
            queue_utilization(as_int(polled.get("depth")), as_int(polled.get("capacity"))),
        )
    coordinators.update(scraped or {})
    targets = {
        printable(t.name): t.composite.level
        for t in (relay.targets if relay else [])
        if t.composite
    }
    return Reading(components, coordinators, targets)


class Series:
    """One name's states (and utilization) in the ring of ticks."""

    __slots__ = ("last_state", "last_tick", "seen", "states", "utilization")

    def __init__(self, points: int, *, utilization: bool) -> None:
        self.states = array("b", [ABSENT]) * points
        self.utilization = array("f", [_NAN]) * points if utilization else None
        self.last_tick = -1
        self.last_state = ABSENT
        #: The newest tick each state was seen in: the worst within the window in O(1).
        self.seen = [-1, -1, -1]

    def worst(self, oldest: int) -> int:
        """The most severe state seen since tick `oldest` (ABSENT: none)."""
        return next((r for r in (2, 1, 0) if self.seen[r] >= oldest), ABSENT)

    @property
    def latest_utilization(self) -> float | None:
        """The utilization at the newest tick recorded (NaN: none read in it; None: a
        series without utilization)."""
        if self.utilization is None:
            return None
        return self.utilization[self.last_tick % len(self.states)]


class HistoryChange(BaseModel):
    """A series that changed state, as the sampler saw it."""

    model_config = ConfigDict(extra="forbid")

    ts: float = Field(description="Unix time of the reading that saw the change.")
    kind: Kind
    name: str = Field(description="The component, coordinator or target.")
    previous: str | None = Field(description="The state before (null: first seen).")
    state: str


class HistoryState(BaseModel):
    """`GET /history`: what changed in the last hour, most recent last."""

    model_config = ConfigDict(extra="forbid")

    tick_seconds: float = Field(description="Seconds one point of a series covers.")
    window_seconds: float = Field(description="Seconds the history reaches back.")
    since: float | None = Field(description="Unix time of the oldest point held (null: none).")
    changes: list[HistoryChange]
    omitted: int = Field(ge=0, description="Older changes held but not in this answer.")
    forgotten: int = Field(ge=0, description="Changes no longer held (the log is bounded).")
    series: dict[str, int] = Field(description="Series held, by kind.")
    dropped_series: int = Field(
        ge=0, description="Coordinators of the latest reading not kept: more than it holds."
    )


class History:
    """The ring of ticks and every series in it; `record` is the only writer."""

    def __init__(
        self,
        *,
        tick: float = TICK,
        points: int = POINTS,
        max_coordinators: int = MAX_COORDINATORS,
        max_changes: int = MAX_CHANGES,
    ) -> None:
        self.tick = tick
        self.points = points
        self.max_coordinators = max_coordinators
        self.current = -1  # the absolute number of the newest tick
        self.first = 0  # the number of the first tick recorded
        self.series: dict[Kind, dict[str, Series]] = {kind: {} for kind in RANKS}
        #: Coordinators at each rank in each tick: the summary of those not drawn.
        self.counts = [array("i", [0]) * points for _ in RANKS["coordinator"]]
        self.changes: deque[HistoryChange] = deque(maxlen=max_changes)
        self.forgotten = 0
        #: Coordinators of the latest reading not kept: more than the history holds.
        self.dropped_series = 0
        self._dropped = 0
        self._warned = False
        self.polled: Polled = {}

    def observe_queues(self, samples: Sequence[QueueSample]) -> None:
        """The queue check's listener: keep its latest scrape for the next reading."""
        self.polled = {
            printable(s.coordinator_id): (_level_of(s), queue_utilization(s.depth, s.capacity))
            for s in samples[: self.max_coordinators]
        }

    def record(self, reading: Reading, now: float) -> None:
        """Fold one reading into the tick `now` falls in."""
        number = int(now // self.tick)
        if number > self.current:
            self._advance(number)
        elif number <= self.current - self.points:
            number = self.current  # older than the window (a clock stepped far back)
        self.first = min(self.first, number)
        self._dropped = 0
        for name, state in reading.components.items():
            self._fold("component", name, state, None, number, now)
        for name, (level, ratio) in reading.coordinators.items():
            self._fold("coordinator", name, level, ratio, number, now)
        for name, level in reading.targets.items():
            self._fold("target", name, level, None, number, now)
        if self._dropped and not self._warned:
            self._warned = True
            logger.warning(
                "history keeps {} coordinators; {} more are counted, not kept",
                self.max_coordinators,
                self._dropped,
            )
        self.dropped_series = self._dropped

    def _advance(self, tick: int) -> None:
        if self.current < 0:
            self.first = tick
        first = max(self.current + 1, tick - self.points + 1)
        for number in range(first, tick + 1):
            slot = number % self.points
            for named in self.series.values():
                for series in named.values():
                    series.states[slot] = ABSENT
                    if series.utilization is not None:
                        series.utilization[slot] = _NAN
            for counts in self.counts:
                counts[slot] = 0
        self.current = tick
        oldest = tick - self.points + 1
        for named in self.series.values():
            for name in [n for n, s in named.items() if s.last_tick < oldest]:
                del named[name]

    def _fold(
        self, kind: Kind, name: str, state: str | None, ratio: float | None, number: int, now: float
    ) -> None:
        slot = number % self.points
        named = self.series[kind]
        series = named.get(name)
        if series is None:
            if kind == "coordinator" and len(named) >= self.max_coordinators:
                self._dropped += 1
                return
            series = named[name] = Series(self.points, utilization=kind == "coordinator")
        ranks = RANKS[kind]
        rank = ranks.index(state) if state in ranks else ABSENT
        if rank != ABSENT and number >= series.last_tick:  # not a reading older than one held
            self._change(kind, name, series, rank, now)
        series.last_tick = max(series.last_tick, number)
        if rank != ABSENT:
            series.seen[rank] = max(series.seen[rank], number)
        before = series.states[slot]
        if rank > before:
            series.states[slot] = rank
            if kind == "coordinator":
                if before != ABSENT:
                    self.counts[before][slot] -= 1
                self.counts[rank][slot] += 1
        if series.utilization is not None and ratio is not None and math.isfinite(ratio):
            held = series.utilization[slot]
            if math.isnan(held) or ratio > held:
                series.utilization[slot] = ratio

    def _change(self, kind: Kind, name: str, series: Series, rank: int, now: float) -> None:
        ranks = RANKS[kind]
        # A series first seen at its least severe state is news to nobody: not logged.
        first_and_fine = series.last_state == ABSENT and rank == 0
        if rank != series.last_state and not first_and_fine:
            previous = ranks[series.last_state] if series.last_state != ABSENT else None
            self._log(
                HistoryChange(ts=now, kind=kind, name=name, previous=previous, state=ranks[rank])
            )
        series.last_state = rank

    def _log(self, change: HistoryChange) -> None:
        if len(self.changes) == self.changes.maxlen:
            self.forgotten += 1
        self.changes.append(change)

    def numbers(self) -> range:
        """The numbers of the ticks held, oldest first (a tick's slot: number % points)."""
        if self.current < 0:
            return range(0)
        return range(max(self.first, self.current - self.points + 1), self.current + 1)

    def ticks(self) -> Iterator[tuple[int, float]]:
        """(slot, start time) of every tick held, oldest first."""
        for number in self.numbers():
            yield number % self.points, number * self.tick

    def state(self, limit: int = DEFAULT_CHANGES) -> HistoryState:
        changes = list(self.changes)
        shown = changes[-limit:] if limit else []
        held = list(self.ticks())
        return HistoryState(
            tick_seconds=self.tick,
            window_seconds=self.tick * self.points,
            since=held[0][1] if held else None,
            changes=shown,
            omitted=len(changes) - len(shown),
            forgotten=self.forgotten,
            series={kind: len(named) for kind, named in self.series.items()},
            dropped_series=self.dropped_series,
        )


def changes_text(state: HistoryState) -> str:
    """`status --history`: one line a change, oldest first, times in UTC."""
    lines = []
    if state.forgotten or state.omitted:
        lines.append(f"({state.forgotten + state.omitted} earlier changes not shown)")
    for change in state.changes:
        when = time.strftime("%H:%M:%S", time.gmtime(change.ts))
        before = change.previous or "(first seen)"
        lines.append(
            f"{when}Z  {change.kind:<11} {printable(change.name)}: {before} -> {change.state}"
        )
    if not state.changes:
        lines.append("No change recorded yet.")
    return "\n".join(lines)


def _level_of(sample: QueueSample) -> str | None:
    """The level the queue check judged, when its samples carry one (an enum of Core's)."""
    level = getattr(sample, "level", None)
    return str(getattr(level, "value", level)) if level is not None else None
