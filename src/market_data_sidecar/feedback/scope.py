"""The worst-of transform between the router and the publishers: coordinators -> a pod's
composite state. Pure functions, no I/O.

A single-rate consumer (the pipeline's `FeedbackHandler`) applies every event's level to
its one rate, so it needs one level: the most severe of every live coordinator. The pod's
composite is that coordinator's event, with the counts in a `Composite`; the fleet's
composite is the worst of the members' pod composites, computed in Redis by
`publishers/fleet.py` with the same ranking (`rank`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Mapping

from market_data_core.telemetry import BackpressureLevel

from market_data_sidecar.feedback.model import Composite, CompositeScope, Feedback
from market_data_sidecar.feedback.state import LEVEL_SEVERITY

#: Each level's severity, 0 for `ok` to 2 for `hard`: the rank's first part.
SEVERITY: dict[str, int] = {level: rank for rank, level in enumerate(reversed(LEVEL_SEVERITY))}

Rank = tuple[int, float, str]
#: The reason of the composite of a pod whose coordinators are all gone.
VACANT_REASON = "no_coordinators"


def severity(level: str) -> int:
    """0 for `ok`, 1 `soft`, 2 `hard`; an unknown level counts as the most severe."""
    return SEVERITY.get(level, SEVERITY["hard"])


def rank(feedback: Feedback) -> Rank:
    """Which coordinator a composite comes from: the most severe level, then the highest
    utilization, then (for a total order) the greatest id."""
    return (severity(feedback.event.level.value), feedback.utilization, feedback.coordinator_id)


def worst(states: Iterable[Feedback]) -> Feedback | None:
    """The highest-ranked state, or None when there is none."""
    return max(states, key=rank, default=None)


def composite_of(
    source: Feedback, *, coordinators: int, member: str, scope: CompositeScope = "pod"
) -> Feedback:
    """`source`'s state as a composite: the same Core event, reason and origin, a new
    delivery id, and the counts beside it."""
    return Feedback(
        source.event,
        reason=source.reason,
        given_utilization=source.given_utilization,
        origin=source.origin,
        composite=Composite(scope=scope, member=member, members=1, coordinators=coordinators),
        received_at=source.received_at,
    )


def pod_composite(current: Mapping[str, Feedback], member: str) -> Feedback | None:
    """The pod's composite of every coordinator in `current`, or None when there is none."""
    source = worst(current.values())
    if source is None:
        return None
    return composite_of(source, coordinators=len(current), member=member)


def vacant(previous: Feedback) -> Feedback:
    """The composite once every coordinator is gone: `ok`, as nothing exerts pressure
    (the last one's id and capacity, as Core's event needs them), with no coordinators."""
    if previous.composite is not None and previous.composite.coordinators == 0:
        return previous
    event = previous.event.model_copy(
        update={"level": BackpressureLevel.ok, "queue_size": 0, "ts": time.time()}
    )
    return composite_of(
        Feedback(event, reason=VACANT_REASON), coordinators=0, member=_member(previous)
    )


def _member(feedback: Feedback) -> str:
    return feedback.composite.member if feedback.composite is not None else ""


def next_pod_composite(
    previous: Feedback | None, current: Mapping[str, Feedback], changed: str, member: str
) -> Feedback | None:
    """`pod_composite(current, member)` after coordinator `changed` was updated in (or
    removed from) `current`, given the composite before: O(1) unless the coordinator the
    composite came from became less severe or left, when every coordinator is ranked."""
    if previous is None:
        return pod_composite(current, member)
    source = current.get(previous.coordinator_id)
    if source is None:
        return pod_composite(current, member) or vacant(previous)
    update = current.get(changed)
    if changed == previous.coordinator_id:
        assert update is not None
        if rank(update) < rank(previous):
            return pod_composite(current, member)
    elif update is not None and rank(update) > rank(source):
        source = update
    return composite_of(source, coordinators=len(current), member=member)


def signature(feedback: Feedback | None) -> tuple[object, ...] | None:
    """What a composite's consumer sees: a new composite is written only when it differs.
    (Delivery id, receipt time and the resync flag are not the state.)"""
    if feedback is None:
        return None
    event = feedback.event
    composite = dataclasses.astuple(feedback.composite) if feedback.composite else ()
    return (
        event.level.value,
        event.coordinator_id,
        event.queue_size,
        event.capacity,
        feedback.reason,
        *composite,
    )
