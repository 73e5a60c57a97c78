"""What travels through the relay: a Core `FeedbackEvent` and what rides beside it.

Core's `FeedbackEvent` is frozen and has no `reason` or `utilization`, so the relay
carries them, a delivery id (stable across retries, for receivers to de-duplicate), where
the event came from, whether it is a re-publication (resync) and the receipt time, next
to the unchanged Core event.
"""

from __future__ import annotations

import dataclasses
import itertools
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from market_data_core.telemetry import FeedbackEvent

#: Pushed by the store, or derived by the sidecar from polled queue depths.
Origin = Literal["store", "synthesized"]
#: What a target carries: each coordinator's events, this pod's composite (the most
#: severe level of its coordinators), or the fleet's (every replica writing the key).
Scope = Literal["coordinator", "pod", "fleet"]
#: Which composite a `Composite` describes (`coordinator` scope relays events as they are).
CompositeScope = Literal["pod", "fleet"]
#: A composite's key in a conflating buffer: one composite per target, whichever
#: coordinator it comes from (a target carries composites or events, never both).
COMPOSITE_KEY = "\x00composite"

#: Random per process, so ids stay unique across restarts; a counter makes the rest,
#: the cheapest unique id on the per-event path.
_ID_PREFIX = f"evt_{secrets.token_hex(8)}"
_id_counter = itertools.count()


def new_event_id() -> str:
    """A delivery id: unique, and kept across retries so receivers can de-duplicate."""
    return f"{_ID_PREFIX}{next(_id_counter):016x}"


@dataclass(frozen=True, slots=True)
class Composite:
    """What a composite state says beside the event of the coordinator it comes from."""

    scope: CompositeScope
    #: The fleet member (`SIDECAR_INSTANCE`) the worst coordinator belongs to.
    member: str
    members: int
    coordinators: int

    def headers(self, coordinator: str) -> dict[str, str]:
        return {
            "scope": self.scope,
            "member": self.member,
            "coordinator": coordinator,
            "members": str(self.members),
            "coordinators": str(self.coordinators),
        }


@dataclass(frozen=True, slots=True)
class Feedback:
    """One accepted event on its way to every target."""

    event: FeedbackEvent
    reason: str | None = None
    #: The store's `queue_size / capacity` as it sent it; None: computed from the event.
    given_utilization: float | None = None
    origin: Origin = "store"
    #: A re-publication of a coordinator's current state, not a new crossing.
    resync: bool = False
    #: Set on a pod or fleet composite: this event is the worst of several coordinators.
    composite: Composite | None = None
    id: str = field(default_factory=new_event_id)
    #: `time.monotonic()` at intake, for delivery latency.
    received_at: float = field(default_factory=time.monotonic)

    @property
    def coordinator_id(self) -> str:
        return self.event.coordinator_id

    @property
    def key(self) -> str:
        """What a newer event replaces in a conflating buffer: the same coordinator's, or
        the previous composite."""
        return self.event.coordinator_id if self.composite is None else COMPOSITE_KEY

    @property
    def utilization(self) -> float:
        """What the store sent, else `queue_size / capacity`, the store's own formula."""
        if self.given_utilization is not None:
            return self.given_utilization
        return self.event.queue_size / self.event.capacity if self.event.capacity else 0.0

    def resynced(self) -> Feedback:
        """The same state again, marked as a resync: a new delivery id (a receiver that
        de-duplicates must not discard it) and a new receipt time (its latency is its own)."""
        return dataclasses.replace(
            self, resync=True, id=new_event_id(), received_at=time.monotonic()
        )

    def headers(self) -> dict[str, str]:
        """What rides beside Core's event where the envelope has only string headers (the
        stream's `meta.headers`), under the names the store's own publisher uses."""
        # The store's publisher writes utilization with six decimals.
        headers = {"event_id": self.id, "utilization": f"{self.utilization:.6f}"}
        if self.reason is not None:
            headers["reason"] = self.reason
        if self.origin != "store":
            headers["origin"] = self.origin
        if self.resync:
            headers["resync"] = "true"
        if self.composite is not None:
            headers |= self.composite.headers(self.coordinator_id)
        return headers

    def wire(self) -> dict[str, Any]:
        """The flat JSON object receivers know: Core's fields plus `reason` and the store's
        `utilization`, and `origin` and `resync` for what the sidecar itself publishes."""
        body: dict[str, Any] = self.event.model_dump(mode="json")
        body["reason"] = self.reason
        body["utilization"] = self.utilization
        if self.origin != "store":
            body["origin"] = self.origin
        if self.resync:
            body["resync"] = True
        if self.composite is not None:
            body |= dataclasses.asdict(self.composite)
        return body


def as_feedback(event: FeedbackEvent | Feedback) -> Feedback:
    """Accept a bare Core event where a `Feedback` is expected (Core's publisher protocol)."""
    return event if isinstance(event, Feedback) else Feedback(event)
