"""The delivery interface the router needs; each module of `publishers` implements it.

A publisher does one delivery attempt and reports the outcome by raising
`DeliveryError` (or `EncodingError`, from the function marked as its `encoder`); retries,
backoff, buffering and circuit breaking belong to the router.
Every publisher satisfies Core's `FeedbackPublisher` protocol through `publish`.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import ParamSpec, TypeVar

from market_data_core.telemetry import FeedbackEvent

from market_data_sidecar.feedback.model import Feedback, as_feedback
from market_data_sidecar.feedback.state import (
    CompositeState,
    DeadLetterState,
    MemberState,
    ReaderGroup,
)
from market_data_sidecar.redaction import first_line

P = ParamSpec("P")
T = TypeVar("T")


class DeliveryError(Exception):
    """A failed delivery attempt, classified for the router."""

    def __init__(
        self,
        reason: str,
        *,
        retryable: bool = True,
        retry_after: float | None = None,
        disable: bool = False,
        detail: str | None = None,
    ) -> None:
        # str(error) is what `GET /feedback` shows as a target's last error.
        super().__init__(f"{reason}: {detail}" if detail else reason)
        #: Short, metric-safe label: "timeout", "connection", "http_500", ...
        self.reason = reason
        #: Free text for operators (never a credential), e.g. "Connection refused".
        self.detail = detail
        self.retryable = retryable
        #: Seconds the target asked us to wait (HTTP `Retry-After`).
        self.retry_after = retry_after
        #: The target asked never to be called again (HTTP 410 Gone).
        self.disable = disable


class EncodingError(Exception):
    """The publisher could not encode an event (not a failure of the target): the router
    drops that event as `unencodable` and goes on. Any other exception from `deliver` is
    the target's fault (or a bug) and is retried like a `DeliveryError`."""


def encoder(encode: Callable[P, T]) -> Callable[P, T]:
    """Marks the function that encodes one event for a publisher: whatever it raises is
    that event's fault, an `EncodingError`. Only there: a failure anywhere else is never
    blamed on the event."""

    @functools.wraps(encode)
    def encoded(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return encode(*args, **kwargs)
        except Exception as exc:
            raise EncodingError(f"{type(exc).__name__}: {first_line(exc)}") from exc

    return encoded


class Publisher(ABC):
    """Delivers feedback to one target."""

    #: How many events one `deliver` call may carry (stream targets pipeline batches).
    max_batch: int = 1
    #: Whether a newer undelivered event for a coordinator replaces the older one in
    #: the router's buffer (feedback is state); False keeps every event, up to a bound.
    conflate: bool = True

    def __init__(self, name: str) -> None:
        self.name = name
        #: Called when the publisher sees that its target came back, or was replaced,
        #: and may have lost what it held (Redis restarted): the router resyncs it.
        self.on_recovered: Callable[[], None] = _nothing

    async def publish(self, event: FeedbackEvent | Feedback) -> None:
        """Core's `FeedbackPublisher` protocol: deliver one event now."""
        await self.deliver([as_feedback(event)])

    @abstractmethod
    async def deliver(self, batch: Sequence[Feedback]) -> None:
        """One attempt to deliver `batch`, in order; raises `DeliveryError` on failure."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open connections; must not fail when the target is down."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    async def health_details(self) -> dict[str, str]:
        """Extra details for the `feedback` component (Redis: reachable, ping latency)."""
        return {}

    def problem(self) -> str | None:
        """Why the target is wrong although deliveries succeed (nobody reads the stream,
        another sidecar claims this one's fleet member), or None: the `feedback` component
        degrades with it. Refreshed by `health_details`."""
        return None

    def readers(self) -> list[ReaderGroup] | None:
        """Who reads the target (a stream's consumer groups), or None where that cannot be
        known: what `GET /feedback` shows. Refreshed by `health_details`."""
        return None

    def dead_letters(self) -> DeadLetterState | None:
        """What the target's readers rejected (a stream's `{key}.dlq`), else None."""
        return None

    def composite(self) -> CompositeState | None:
        """The composite the target last wrote, when the publisher makes its own (the
        fleet's); None: the router's pod composite is what the target carries."""
        return None

    def members(self) -> list[MemberState]:
        """The fleet's members as last seen (a `fleet` target), else none."""
        return []


def _nothing() -> None:
    """`on_recovered` until a router sets it."""
