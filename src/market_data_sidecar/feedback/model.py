"""What travels through the relay: a Core `FeedbackEvent` and what rides beside it.

Core's `FeedbackEvent` is frozen and has no `reason`, so the relay carries the reason,
a delivery id (stable across retries, for receivers to de-duplicate) and the receipt
time next to the unchanged Core event.
"""

from __future__ import annotations

import itertools
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from market_data_core.telemetry import FeedbackEvent

#: Random per process, so ids stay unique across restarts; a counter makes the rest
#: (a uuid4 per event cost more than validating it).
_ID_PREFIX = f"evt_{secrets.token_hex(8)}"
_id_counter = itertools.count()


def new_event_id() -> str:
    """A delivery id: unique, and kept across retries so receivers can de-duplicate."""
    return f"{_ID_PREFIX}{next(_id_counter):016x}"


@dataclass(frozen=True, slots=True)
class Feedback:
    """One accepted event on its way to every target."""

    event: FeedbackEvent
    reason: str | None = None
    id: str = field(default_factory=new_event_id)
    #: `time.monotonic()` at intake, for delivery latency.
    received_at: float = field(default_factory=time.monotonic)

    @property
    def coordinator_id(self) -> str:
        return self.event.coordinator_id

    def wire(self) -> dict[str, Any]:
        """The flat JSON object receivers know: Core's fields plus `reason`."""
        body: dict[str, Any] = self.event.model_dump(mode="json")
        body["reason"] = self.reason
        return body


def as_feedback(event: FeedbackEvent | Feedback) -> Feedback:
    """Accept a bare Core event where a `Feedback` is expected (Core's publisher protocol)."""
    return event if isinstance(event, Feedback) else Feedback(event)
