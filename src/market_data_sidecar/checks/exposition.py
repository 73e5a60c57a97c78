"""The store's coordinator series read out of its Prometheus text exposition, bounded:
only the `mds_coord_*` lines of the first `MAX_COORDINATORS` coordinators, each line at
most `MAX_LINE` characters and `MAX_PARSED_BYTES` in all, so the parser's CPU is bounded
by its input, whatever the store (or what answers in its place) sends."""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from market_data_sidecar.feedback import bounds

DEPTH = "mds_coord_queue_depth"
WORKERS_ALIVE = "mds_coord_workers_alive"
CIRCUIT_STATE = "mds_coord_circuit_state"
ITEMS_DROPPED = "mds_coord_items_dropped_total"

#: Coordinators kept from one scrape (judged, detailed, exported, fed to the watermarks).
#: A store runs tens; those beyond are counted, not kept, so what a scrape costs in
#: details and gauges is bounded.
MAX_COORDINATORS = 2_000
#: Longest series line parsed: a coordinator id is at most 256 characters (twice that
#: escaped); a longer line is no series the sidecar reads.
MAX_LINE = 1024
#: Most bytes of coordinator series handed to the parser per scrape (2,000 coordinators
#: take about 0.6 MB): the parser's CPU is bounded by its input.
MAX_PARSED_BYTES = 2 * 1024 * 1024


class ScrapeError(Exception):
    """The store's metrics could not be read; the message is the component's `error`."""


@dataclass
class CoordinatorSeries:
    """The store's `mds_coord_*` series, by coordinator id."""

    depth: dict[str, int]
    workers_alive: dict[str, int]
    circuit_state: dict[str, int]
    dropped: dict[str, float]
    #: Coordinators listed beyond `MAX_COORDINATORS`, counted by their depth series.
    omitted: int = 0
    #: Series or coordinators not kept, by reason (`REJECTED_WHY`), and one id of each.
    rejected: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    #: Coordinators whose depth no event can carry (`bounds`): judged, never relayed.
    out_of_range: set[str] = field(default_factory=set)

    @property
    def coordinators(self) -> set[str]:
        return set(self.depth) | set(self.workers_alive) | set(self.circuit_state)


def parse(text: str) -> CoordinatorSeries:
    """Read the coordinator series out of a Prometheus text exposition: those of the
    first `MAX_COORDINATORS` coordinators listed whose ids an event can carry; the others
    are only counted."""
    lines = _coordinator_lines(text)
    series = CoordinatorSeries({}, {}, {}, {}, omitted=lines.omitted)
    series.rejected.update(lines.rejected)
    dropped: dict[str, float] = defaultdict(float)
    gauges = {
        DEPTH: series.depth,
        WORKERS_ALIVE: series.workers_alive,
        CIRCUIT_STATE: series.circuit_state,
    }
    invalid: set[str] = set()
    try:
        for family in text_string_to_metric_families(lines.text):
            for sample in family.samples:
                coordinator = sample.labels.get("coord_id")
                if coordinator is None or not math.isfinite(sample.value):
                    continue
                if sample.name not in _COORDINATOR_SERIES or coordinator in invalid:
                    continue
                if _invalid_id(coordinator, series):
                    invalid.add(coordinator)
                elif sample.name in gauges:
                    gauges[sample.name][coordinator] = int(sample.value)
                elif sample.name == ITEMS_DROPPED:
                    dropped[coordinator] += sample.value  # summed over reasons
    except (ValueError, TypeError, IndexError, KeyError) as exc:
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise ScrapeError(f"store metrics are not a Prometheus exposition: {reason}") from None
    series.dropped = dict(dropped)
    return series


def _invalid_id(coordinator: str, series: CoordinatorSeries) -> bool:
    """Whether `coordinator` is no id an event can carry (`bounds.check_id`); counted once."""
    try:
        bounds.check_id("coordinator_id", coordinator)
    except bounds.OutOfBounds:
        series.rejected["invalid_id"] += 1
        series.examples.setdefault("invalid_id", coordinator)
        return True
    return False


_COORDINATOR_SERIES = (DEPTH, WORKERS_ALIVE, CIRCUIT_STATE, ITEMS_DROPPED)
_COORDINATOR_LINES = tuple(f"{name}{sep}" for name in _COORDINATOR_SERIES for sep in "{ ")
_DEPTH_LINES = (DEPTH + "{", DEPTH + " ")
_COORDINATOR_LABEL = 'coord_id="'
#: How a sample line starts: a metric name, then labels or the value.
_SAMPLE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*[{ \t]")
REJECTED_WHY = {
    "line_too_long": f"lines longer than {MAX_LINE} characters",
    "over_budget": f"beyond {MAX_PARSED_BYTES} bytes of coordinator series",
    "invalid_id": "coordinator ids over 256 characters, empty or with control characters",
    "out_of_range": "depths no event can carry",
}


@dataclass
class _Lines:
    """What of an exposition the parser gets, and what it does not."""

    text: str
    omitted: int
    rejected: Counter[str]


def _coordinator_lines(text: str) -> _Lines:
    """Only the coordinator series of the first `MAX_COORDINATORS` coordinators, each
    line at most `MAX_LINE` characters, `MAX_PARSED_BYTES` in all: the parser's CPU is
    bounded by its input (it runs in a thread, but holds the GIL the event loop needs).

    Lines are only looked at, the label value taken as written (escapes and all). Lines
    are split at `\n` alone, as the parser does (`str.splitlines` also splits at `\x85`
    and U+2028, which a label value may hold)."""
    kept: set[str] = set()
    omitted, size = 0, 0
    rejected: Counter[str] = Counter()
    lines = []
    for number, line in enumerate(text.split("\n"), 1):
        if not line.startswith(_COORDINATOR_LINES):
            # Other families and comments: the sidecar reads none of them, but a body
            # that is no exposition at all (an HTML error page) is a failed scrape.
            if line and not line.startswith("#") and _SAMPLE.match(line) is None:
                raise ScrapeError(
                    f"store metrics are not a Prometheus exposition: line {number} is no sample"
                )
            continue
        if len(line) > MAX_LINE:
            rejected["line_too_long"] += 1
            continue
        coordinator = _label_as_written(line)
        if coordinator is not None and coordinator not in kept:
            if len(kept) >= MAX_COORDINATORS:
                omitted += line.startswith(_DEPTH_LINES)
                continue
            kept.add(coordinator)
        size += len(line) + 1
        if size > MAX_PARSED_BYTES:
            rejected["over_budget"] += 1
            continue
        lines.append(line)
    lines.append("")
    return _Lines("\n".join(lines), omitted, rejected)


def _label_as_written(line: str) -> str | None:
    start = line.find(_COORDINATOR_LABEL)
    if start < 0:
        return None
    start += len(_COORDINATOR_LABEL)
    end = line.find('"', start)
    while end > 0 and line[end - 1] == "\\":
        end = line.find('"', end + 1)
    return line[start:end]
