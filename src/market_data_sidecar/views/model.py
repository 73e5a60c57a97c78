"""What an operator sees of a running sidecar: `/healthz` + `/feedback` as one view.

`StatusView.from_json` reads the two JSON documents (tolerating a sidecar without a relay
and fields it does not know): the terminal, the HTML page, the `status` command and the
demo all render this one model. Targets are the relay's own `TargetState`, read
tolerantly. Every string is made `printable` as it enters the model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, cast

from market_data_sidecar.feedback.state import (
    MAX_READER_GROUPS,
    CompositeState,
    DeadLetterState,
    MemberState,
    ReaderGroup,
    TargetState,
)
from market_data_sidecar.views.format import counted, num, percent_text, printable

#: `details` every component carries; they say when, not what.
BOOKKEEPING = frozenset({"checked_at", "duration_ms", "observed_state", "streak"})
#: Details worth a place in a one-line summary, most telling first.
_TELLING = ("latency_ms", "connections", "max_connections", "role", "coordinators", "targets")
#: Details too long or too technical for a one-line summary (still on the page).
_QUIET = BOOKKEEPING | {"paths", "url", "target", "server_version", "size_bytes"}

#: The queue component's per-coordinator details (`<coordinator>:<field>`), by row field.
_COORDINATOR_FIELDS = {
    "depth": "depth",
    "capacity": "capacity",
    "level": "level",
    "workers_alive": "workers",
    "circuit": "circuit",
    "dropped_total": "dropped",
}


@dataclass(frozen=True)
class ComponentRow:
    name: str
    state: str
    details: Mapping[str, str]

    @property
    def summary(self) -> str:
        """One line: the error or reason if there is one, else the telling details."""
        return summarize(self.details)


@dataclass(frozen=True)
class CoordinatorRow:
    """A write coordinator as the queue check polls it and as its last event says."""

    coordinator_id: str
    depth: int | None = None
    capacity: int | None = None
    level: str | None = None
    workers: str | None = None
    circuit: str | None = None
    dropped: int | None = None
    #: The latest event the relay holds for it (from the store or synthesized).
    event_level: str | None = None
    event_origin: str | None = None
    event_ts: float | None = None
    event_reason: str | None = None

    @property
    def utilization(self) -> float | None:
        return queue_utilization(self.depth, self.capacity)

    @property
    def current_level(self) -> str | None:
        """The polled level when the queue check reports one, else the last event's."""
        return self.level or self.event_level


def queue_utilization(depth: float | None, capacity: float | None) -> float | None:
    """Depth over capacity; None when either is unknown, the capacity is 0, or the ratio
    does not fit a float."""
    if depth is None or not capacity:
        return None
    try:
        return depth / capacity
    except OverflowError:  # integers too large for a float ratio
        return None


def target_health(target: TargetState) -> str:
    """A health word for a target: what an operator should feel about it."""
    if target.disabled or target.circuit == "open":
        return "unhealthy"
    if target.circuit == "half-open" or (target.buffer_depth > 0 and target.last_error):
        return "degraded"
    return "healthy"


@dataclass(frozen=True)
class ReceiverRow:
    """A local orchestrator in the demo: what actually arrived at the far end."""

    name: str
    kind: str
    received: int
    last: str = ""


@dataclass(frozen=True)
class StatusView:
    service: str
    state: str
    version: str = ""
    ts: float | None = None
    components: Sequence[ComponentRow] = ()
    coordinators: Sequence[CoordinatorRow] = ()
    targets: Sequence[TargetState] = ()
    #: False when the sidecar answered no `/feedback` (no relay state to show).
    relay: bool = False
    last_store_event_at: float | None = None
    synthesizing: bool = False
    receivers: Sequence[ReceiverRow] = field(default_factory=tuple)

    @classmethod
    def from_json(cls, health: Mapping[str, Any], feedback: Mapping[str, Any] | None) -> StatusView:
        """Build the view; unknown or missing fields are skipped, never fatal."""
        components = [
            ComponentRow(
                name=_text(c.get("name", "?")),
                state=_text(c.get("state", "unknown")),
                details={_text(k): _text(v) for k, v in _mapping(c.get("details")).items()},
            )
            for c in _list(health.get("components"))
            if isinstance(c, Mapping)
        ]
        queue = next((c for c in components if c.name == "queue"), None)
        polled = queue_coordinators(queue.details) if queue else {}
        events = _mapping(feedback.get("coordinators")) if feedback else {}
        events = {_text(cid): event for cid, event in events.items()}
        coordinators = [
            _coordinator(cid, polled.get(cid, {}), _mapping(events.get(cid)))
            for cid in sorted(set(polled) | set(events))
        ]
        targets = [
            _target(t) for t in _list((feedback or {}).get("targets")) if isinstance(t, Mapping)
        ]
        return cls(
            service=_text(health.get("service", "market-data-sidecar")),
            state=_text(health.get("state", "unknown")),
            version=_text(health.get("version", "")),
            ts=_float(health.get("ts")),
            components=tuple(components),
            coordinators=tuple(coordinators),
            targets=tuple(targets),
            relay=feedback is not None,
            last_store_event_at=_float((feedback or {}).get("last_store_event_at")),
            synthesizing=bool((feedback or {}).get("synthesizing", False)),
        )

    def with_receivers(self, receivers: Iterable[ReceiverRow]) -> StatusView:
        printable_rows = (
            replace(r, name=printable(r.name), kind=printable(r.kind), last=printable(r.last))
            for r in receivers
        )
        return replace(self, receivers=tuple(printable_rows))


def summarize(details: Mapping[str, str], limit: int = 6) -> str:
    """The error or reason if there is one; else simple `key=value` details, free space per path."""
    problems = [details[k] for k in ("error", "reason") if details.get(k)]
    if problems:
        return "; ".join(problems)
    telling = [key for key in _TELLING if key in details]
    simple = [key for key in details if not {":", "."} & set(key) and key not in _QUIET]
    parts = [f"{key}={details[key]}" for key in dict.fromkeys(telling + simple)]
    parts += [
        f"{key.removesuffix(':free_ratio')} {percent_text(value)} free"
        for key, value in details.items()
        if key.endswith(":free_ratio")
    ]
    return "; ".join(parts[:limit])


def queue_coordinators(details: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """Per-coordinator values from the queue component's `<coordinator>:<field>` details."""
    found: dict[str, dict[str, str]] = {}
    for key, value in details.items():
        coordinator, _, name = key.rpartition(":")
        if coordinator and name in _COORDINATOR_FIELDS:
            found.setdefault(coordinator, {})[_COORDINATOR_FIELDS[name]] = value
    return found


def _coordinator(cid: str, polled: Mapping[str, str], event: Mapping[str, Any]) -> CoordinatorRow:
    depth = as_int(polled.get("depth"))
    capacity = as_int(polled.get("capacity"))
    if depth is None and capacity is None:
        depth, capacity = as_int(event.get("queue_size")), as_int(event.get("capacity"))
    return CoordinatorRow(
        coordinator_id=cid,
        depth=depth,
        capacity=capacity,
        level=polled.get("level"),
        workers=polled.get("workers"),
        dropped=as_int(polled.get("dropped")),
        circuit=polled.get("circuit"),
        event_level=_str(event.get("level")),
        event_origin=_str(event.get("origin")),
        event_ts=_float(event.get("ts")),
        event_reason=_str(event.get("reason")),
    )


def _target(data: Mapping[str, Any]) -> TargetState:
    """The relay's own model, read tolerantly: a field it cannot read takes the model's
    default, and no value is validated (an older or newer sidecar may send others)."""
    return TargetState.model_construct(
        name=_text(data.get("name", "?")),
        kind=_text(data.get("kind", "")),
        endpoint=_text(data.get("endpoint", "")),
        # Display words: a newer sidecar's are shown as it sent them.
        mode=cast(Any, _text(data.get("mode") or "latest")),
        buffer_depth=as_int(data.get("buffer_depth")) or 0,
        delivered=as_int(data.get("delivered")) or 0,
        retried=as_int(data.get("retried")) or 0,
        dropped=as_int(data.get("dropped")) or 0,
        last_success=_float(data.get("last_success")),
        last_error=_str(data.get("last_error")),
        last_error_at=_float(data.get("last_error_at")),
        circuit=cast(Any, _text(data.get("circuit") or "closed")),
        disabled=bool(data.get("disabled", False)),
        readers=_readers(data.get("readers")),
        dead_letters=_dead_letters(data.get("dead_letters")),
        scope=cast(Any, _text(data.get("scope") or "coordinator")),
        composite=_composite(data.get("composite")),
        members=[
            _member(member)
            for member in _list(data.get("members"))[:MAX_MEMBERS_SHOWN]
            if isinstance(member, Mapping)
        ],
    )


#: A fleet's members shown per target; the worst come first in `GET /feedback`.
MAX_MEMBERS_SHOWN = 50


def _composite(value: Any) -> CompositeState | None:
    if not isinstance(value, Mapping):
        return None
    return CompositeState.model_construct(
        scope=cast(Any, _text(value.get("scope") or "pod")),
        level=cast(Any, _text(value.get("level") or "?")),
        coordinator_id=_text(value.get("coordinator_id", "")),
        member=_text(value.get("member", "")),
        queue_size=as_int(value.get("queue_size")) or 0,
        capacity=as_int(value.get("capacity")) or 0,
        members=as_int(value.get("members")) or 0,
        coordinators=as_int(value.get("coordinators")) or 0,
        suspects=as_int(value.get("suspects")) or 0,
        age=_float(value.get("age")) or 0.0,
        stale=value.get("stale") is True,
    )


def _member(value: Mapping[str, Any]) -> MemberState:
    return MemberState.model_construct(
        instance=_text(value.get("instance", "?")),
        process=_text(value.get("process", "")),
        state=cast(Any, _text(value.get("state") or "live")),
        level=cast(Any, _text(value.get("level") or "?")),
        coordinator_id=_text(value.get("coordinator_id", "")),
        coordinators=as_int(value.get("coordinators")) or 0,
        lease_age=_float(value.get("lease_age")) or 0.0,
    )


def composite_text(target: TargetState) -> str | None:
    """`fleet hard: bars of pod-a (2 members, 4 coordinators)`, or None (not scoped)."""
    composite = target.composite
    if target.scope == "coordinator":
        return None
    if composite is None:
        return f"{target.scope}: nothing known yet"
    counts = counted(composite.coordinators, "coordinator")
    if composite.scope == "fleet":
        suspects = f" ({composite.suspects} suspect)" if composite.suspects else ""
        counts = f"{counted(composite.members, 'member')}{suspects}, {counts}"
    stale = f"; stale, read {composite.age:.0f}s ago" if composite.stale else ""
    return (
        f"{composite.scope} {composite.level}: {composite.coordinator_id} of "
        f"{composite.member} ({counts}){stale}"
    )


def _readers(value: Any) -> list[ReaderGroup] | None:
    """A stream's consumer groups, read tolerantly (at most as many as a sidecar sends)."""
    if not isinstance(value, list):
        return None
    return [
        ReaderGroup.model_construct(
            group=_text(item.get("group", "?")),
            consumers=as_int(item.get("consumers")) or 0,
            pending=as_int(item.get("pending")) or 0,
            lag=as_int(item.get("lag")),
            idle_seconds=_float(item.get("idle_seconds")),
            readers=as_int(item.get("readers")),
            consumers_listed=item.get("consumers_listed") is not False,
        )
        for item in value[:MAX_READER_GROUPS]
        if isinstance(item, Mapping)
    ]


def _dead_letters(value: Any) -> DeadLetterState | None:
    if not isinstance(value, Mapping):
        return None
    return DeadLetterState.model_construct(
        key=_text(value.get("key", "")),
        length=as_int(value.get("length")) or 0,
        since_start=as_int(value.get("since_start")) or 0,
        newest_age_seconds=_float(value.get("newest_age_seconds")),
        reason=_str(value.get("reason")),
    )


def dead_letters_text(target: TargetState) -> str | None:
    """`3 dead-lettered since start, newest 4s ago: <reason>`, or None when none is known."""
    dead = target.dead_letters
    if dead is None or not dead.length:
        return None
    text = f"{num(dead.length)} dead-lettered ({num(dead.since_start)} since start)"
    if dead.newest_age_seconds is not None:
        text += f", newest {dead.newest_age_seconds:.0f}s ago"
    return f"{text}: {dead.reason}" if dead.reason else text


def readers_text(target: TargetState) -> str | None:
    """`pipeline: lag 0, 96 pending, seen 0.4s ago; orchestrator: ...`, `no reader` when no
    group reads the stream, None when the target has no readers to show (not a stream)."""
    if target.readers is None:
        return None
    if not target.readers:
        return "no reader"
    return "; ".join(_reader_text(group) for group in target.readers)


def _reader_text(group: ReaderGroup) -> str:
    lag = "?" if group.lag is None else num(group.lag)
    seen = "no consumer" if group.idle_seconds is None else f"seen {group.idle_seconds:.1f}s ago"
    if not group.consumers_listed:
        seen = f"{num(group.consumers)} consumers, not listed"
    readers = "" if group.readers is None else f", ~{counted(group.readers, 'reader')}"
    return f"{group.group}: lag {lag}, {num(group.pending)} pending, {seen}{readers}"


def _text(value: Any) -> str:
    try:
        return printable(value if isinstance(value, str) else str(value))
    except ValueError:  # an integer beyond Python's 4300-digit str() limit
        return "?"


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _str(value: Any) -> str | None:
    return None if value is None else _text(value)


def as_int(value: Any) -> int | None:
    """An integer from a number or its text (`"850"`, `"850.0"`); None for anything else,
    non-finite numbers included."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    try:
        return int(value)
    except (TypeError, ValueError):
        pass
    number = _float(value)
    return None if number is None else int(number)


def _float(value: Any) -> float | None:
    """A finite float, or None: `inf` or NaN is no time and no ratio."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None
