"""A target's undelivered events: conflated to the latest per coordinator, or a bounded FIFO.

Both buffers are plain synchronous containers owned by one target's worker; `put` never
blocks, so the intake is never delayed by a target that is behind.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict, deque
from typing import Literal, NamedTuple

from market_data_sidecar.feedback.model import Feedback

DisplacedReason = Literal["conflated", "buffer_full"]


class Displaced(NamedTuple):
    """An event that left the buffer undelivered because of a `put`."""

    feedback: Feedback
    reason: DisplacedReason


class TargetBuffer(ABC):
    """Undelivered events of one target, oldest first, bounded by `capacity`."""

    #: `latest` (conflating) or `all` (every event), as shown in `GET /feedback`.
    mode: Literal["latest", "all"]

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        #: The most events the buffer ever held at once.
        self.high_water = 0

    @abstractmethod
    def put(self, feedback: Feedback) -> Displaced | None:
        """Add `feedback`; return the event it pushed out, if any."""

    @abstractmethod
    def take(self, limit: int) -> list[Feedback]:
        """Remove and return up to `limit` events, oldest first."""

    @abstractmethod
    def supersedes(self, feedback: Feedback) -> bool:
        """Whether the buffer holds a newer event that makes `feedback` pointless to send."""

    @abstractmethod
    def __len__(self) -> int: ...

    def _note_depth(self) -> None:
        self.high_water = max(self.high_water, len(self))


class ConflatingBuffer(TargetBuffer):
    """The latest undelivered event per coordinator.

    Feedback is state, not a log: a target that is behind needs only each coordinator's
    current level, so a newer event replaces the older one and memory is bounded by the
    number of coordinators. The replacement moves to the back, so what is delivered is
    always a subsequence of what was received, and per-coordinator order is kept.
    """

    mode = "latest"

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self._latest: OrderedDict[str, Feedback] = OrderedDict()

    def put(self, feedback: Feedback) -> Displaced | None:
        displaced: Displaced | None = None
        older = self._latest.pop(feedback.key, None)
        if older is not None:
            displaced = Displaced(older, "conflated")
        elif len(self._latest) >= self.capacity:
            _, oldest = self._latest.popitem(last=False)
            displaced = Displaced(oldest, "buffer_full")
        self._latest[feedback.key] = feedback
        self._note_depth()
        return displaced

    def take(self, limit: int) -> list[Feedback]:
        count = min(limit, len(self._latest))
        return [self._latest.popitem(last=False)[1] for _ in range(count)]

    def supersedes(self, feedback: Feedback) -> bool:
        return feedback.key in self._latest

    def __len__(self) -> int:
        return len(self._latest)


class FifoBuffer(TargetBuffer):
    """Every event in arrival order; when full, the oldest is dropped to make room."""

    mode = "all"

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self._events: deque[Feedback] = deque()

    def put(self, feedback: Feedback) -> Displaced | None:
        displaced: Displaced | None = None
        if len(self._events) >= self.capacity:
            displaced = Displaced(self._events.popleft(), "buffer_full")
        self._events.append(feedback)
        self._note_depth()
        return displaced

    def take(self, limit: int) -> list[Feedback]:
        count = min(limit, len(self._events))
        return [self._events.popleft() for _ in range(count)]

    def supersedes(self, feedback: Feedback) -> bool:
        return False

    def __len__(self) -> int:
        return len(self._events)
