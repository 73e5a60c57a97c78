"""What `GET /feedback` shows, as pydantic models: the one wire shape of the relay's state.

The handler serves these models, the OpenAPI document is generated from them and the
views render them. Every answer is bounded: at most `limit` coordinators, the most severe
and most recent first, with counts of what was left out.
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal

from market_data_core.telemetry import FeedbackEvent
from pydantic import BaseModel, ConfigDict, Field

from market_data_sidecar.feedback.model import Feedback, Origin
from market_data_sidecar.logs import escape

#: A backpressure level as the sidecar's own answers spell it (Core's `BackpressureLevel`).
Level = Literal["ok", "soft", "hard"]
#: Levels by severity, most severe first: the order coordinators are shown in, and the
#: one ranking of levels (`feedback.scope.SEVERITY`).
LEVEL_SEVERITY: tuple[Level, ...] = ("hard", "soft", "ok")
#: Coordinators in one answer.
DEFAULT_LIMIT = 100
#: A target's last error is display text: longer ones are cut to this many characters.
MAX_ERROR_LENGTH = 500

#: The sidecar's own answers are documented exactly (a new field fails the schema tests
#: until it is described), and every field is required in what is served.
_EXACT = ConfigDict(extra="forbid", json_schema_serialization_defaults_required=True)


class RelayedEvent(FeedbackEvent):
    """The latest event of one coordinator: Core's fields, plus what rides beside them."""

    reason: str | None = Field(description="Why the level changed, as the store said.")
    id: str = Field(description="Delivery id, stable across retries (`webhook-id`).")
    origin: Origin = Field(description="Pushed by the store, or derived from polled queue depths.")


class CompositeState(BaseModel):
    """The state a `pod` or `fleet` target carries: the worst of several coordinators."""

    model_config = _EXACT

    scope: Literal["pod", "fleet"] = "pod"
    level: Level = "ok"
    coordinator_id: str = Field(default="", description="The coordinator it comes from.")
    member: str = Field(default="", description="The fleet member (instance) it comes from.")
    queue_size: int = Field(default=0, ge=0)
    capacity: int = Field(default=0, ge=0)
    members: int = Field(default=0, ge=0, description="Members counted, suspects included.")
    coordinators: int = Field(default=0, ge=0, description="Live coordinators counted.")
    suspects: int = Field(
        default=0,
        ge=0,
        description="A fleet's members whose lease ended without leaving, counted at their "
        "last level until their grace ends.",
    )
    age: float = Field(
        default=0.0,
        ge=0,
        description="Seconds since this sidecar last read the fleet's composite from Redis.",
    )
    stale: bool = Field(
        default=False,
        description="This sidecar has not renewed its member for longer than the lease: "
        "the fleet may have changed since.",
    )


#: A fleet member's state: renewing within its lease, or not (counted until its grace ends).
MemberLife = Literal["live", "suspect"]


class MemberState(BaseModel):
    """One counted member of a fleet: a sidecar process writing the same stream."""

    model_config = _EXACT

    instance: str = ""
    process: str = Field(
        default="", description="Its process's token: two under one name both count."
    )
    state: MemberLife = Field(
        default="live", description="`suspect`: its lease ended without leaving."
    )
    level: Level = "ok"
    coordinator_id: str = Field(default="", description="Its pod's worst coordinator.")
    coordinators: int = Field(default=0, ge=0)
    lease_age: float = Field(default=0.0, description="Seconds since the member renewed.")


def composite_state(feedback: Feedback) -> CompositeState:
    """A composite event as `GET /feedback` shows it."""
    composite = feedback.composite
    event = feedback.event
    return CompositeState(
        scope=composite.scope if composite else "pod",
        level=event.level.value,
        coordinator_id=event.coordinator_id,
        member=composite.member if composite else "",
        queue_size=event.queue_size,
        capacity=event.capacity,
        members=composite.members if composite else 1,
        coordinators=composite.coordinators if composite else 1,
    )


#: Consumer groups shown per stream target; the rest are counted in the metrics only.
MAX_READER_GROUPS = 16


class ReaderGroup(BaseModel):
    """One consumer group reading a stream target, as XINFO GROUPS / CONSUMERS tell it."""

    model_config = _EXACT

    group: str
    consumers: int = Field(ge=0, description="Consumers in the group, live or not.")
    pending: int = Field(ge=0, description="Entries delivered to the group and never acknowledged.")
    lag: int | None = Field(
        default=None, description="Entries not yet delivered to the group (null: unknown)."
    )
    idle_seconds: float | None = Field(
        default=None,
        description=(
            "Since the group's most recently active consumer was seen (null: none, or "
            "its consumers were not listed)."
        ),
    )
    consumers_listed: bool = Field(
        default=True,
        description=(
            "Whether the group's consumers were listed: a group with too many (Redis keeps "
            "every consumer name ever used) is judged by its position alone."
        ),
    )
    readers: int | None = Field(
        default=None,
        ge=0,
        description=(
            "Readers behind the group, however many consumer names they share: the most "
            "copies of one change it took at once lately (null: unknown)."
        ),
    )


class DeadLetterState(BaseModel):
    """A stream target's dead-letter stream (`{key}.dlq`): what its readers rejected."""

    model_config = _EXACT

    key: str
    length: int = Field(ge=0, description="Entries in the dead-letter stream.")
    since_start: int = Field(
        default=0, ge=0, description="Entries added since this sidecar started."
    )
    newest_age_seconds: float | None = Field(
        default=None, description="Age of the newest entry (null: none)."
    )
    reason: str | None = Field(
        default=None, description="The reason the newest entry gives, cut and escaped."
    )


class TargetState(BaseModel):
    """One target's delivery record. Defaults are what a reader assumes of a field it
    cannot read; the served document always carries every field."""

    model_config = _EXACT

    name: str = "?"
    kind: str = Field(default="", description="`http`, `redis-pubsub` or `redis-stream`.")
    endpoint: str = Field(
        default="", description="The target's address without user, password or query."
    )
    mode: Literal["latest", "all"] = Field(
        default="latest",
        description="`latest` keeps one undelivered event per coordinator; `all` keeps each.",
    )
    buffer_depth: int = Field(default=0, ge=0, description="Undelivered events, in flight too.")
    delivered: int = Field(default=0, ge=0)
    retried: int = Field(default=0, ge=0)
    dropped: int = Field(default=0, ge=0)
    last_success: float | None = Field(default=None, description="Unix time of the last delivery.")
    last_error: str | None = Field(
        default=None, description=f"At most {MAX_ERROR_LENGTH} characters."
    )
    last_error_at: float | None = None
    circuit: Literal["closed", "open", "half-open"] = "closed"
    disabled: bool = Field(
        default=False, description="The target answered 410 Gone: not called until restart."
    )
    scope: Literal["coordinator", "pod", "fleet"] = Field(
        default="coordinator",
        description="Each coordinator's events, the pod's composite or the fleet's.",
    )
    composite: CompositeState | None = Field(
        default=None, description="A scoped target's composite, as last written (or to write)."
    )
    members: list[MemberState] = Field(
        default_factory=list,
        description="A `fleet` target's counted members (live and suspect), the worst and "
        "the suspects first, as last seen.",
    )
    readers: list[ReaderGroup] | None = Field(
        default=None,
        description=(
            f"A stream's consumer groups (at most {MAX_READER_GROUPS}), read each check "
            "interval; null for other targets or before the first reading."
        ),
    )
    dead_letters: DeadLetterState | None = Field(
        default=None,
        description="A stream's dead-letter stream, read each check interval (null: none).",
    )


class Omitted(BaseModel):
    """What an answer left out to stay bounded."""

    model_config = _EXACT

    coordinators: int = Field(default=0, ge=0, description="Known coordinators not listed.")


class RelayState(BaseModel):
    """`GET /feedback`: the latest event of the most severe, most recent coordinators (hard,
    then soft, then ok; the latest first), every target's state, and what was left out."""

    model_config = _EXACT

    coordinators: dict[str, RelayedEvent] = Field(
        default_factory=dict, description="In display order: by level severity, then recency."
    )
    levels: dict[str, int] = Field(
        default_factory=dict, description="Every known coordinator, counted by latest level."
    )
    omitted: Omitted = Field(default_factory=Omitted)
    targets: list[TargetState] = Field(default_factory=list)
    last_store_event_at: float | None = Field(
        default=None, description="Unix time the store last pushed an event."
    )
    synthesizing: bool = Field(
        default=False, description="Whether events are being derived from polled queue depths."
    )


def clip(text: str | None, limit: int) -> str | None:
    """`text` cut to `limit` characters, marked with an ellipsis when it was cut."""
    if text is None or len(text) <= limit:
        return text
    return text[: limit - 1] + "…"


def shown_name(text: str | None, limit: int) -> str | None:
    """A name someone else chose (a consumer group, a consumer), fit for a label, a log line
    or a view: control characters and lone surrogates escaped, then cut to `limit`."""
    return None if text is None else clip(escape(text), limit)


def encode(state: RelayState) -> bytes:
    """JSON any client can parse, whatever was accepted: non-finite numbers as `null`, a
    lone surrogate as its `\\uXXXX` escape, everything else UTF-8 (a third of the bytes
    of ASCII escapes for non-Latin text)."""
    document = _finite(state.model_dump(mode="json"))
    text = json.dumps(document, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    # Outside strings the text is ASCII, so a surrogate can only sit inside one, where
    # `\udXXX` is exactly the JSON escape for it.
    return text.encode("utf-8", "backslashreplace")


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value
