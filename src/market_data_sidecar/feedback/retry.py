"""How one target's failures are paced: exponential backoff with full jitter, and a circuit.

Both are per target, not per event: it is the target that is failing, and a newer event
(conflation) inherits the wait of the one it replaced.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

CircuitState = Literal["closed", "open", "half-open"]

#: `sidecar_feedback_circuit_state` values, as the store's own coordinator circuits.
CIRCUIT_GAUGE: dict[CircuitState, int] = {"closed": 0, "open": 1, "half-open": 2}


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter ("Exponential Backoff And Jitter", AWS).

    The n-th consecutive failure waits a uniform random time in
    `[0, min(cap, initial * 2 ** (n - 1))]`, so many sidecars retrying one recovering
    orchestrator spread out instead of arriving in waves. A `Retry-After` from the
    target is a floor, itself capped by `retry_after_max`.
    """

    initial: float
    cap: float
    retry_after_max: float

    def delay(self, failures: int, retry_after: float | None = None) -> float:
        ceiling = min(self.cap, self.initial * 2 ** min(max(failures - 1, 0), 62))
        wait = random.uniform(0, ceiling)
        if retry_after is not None:
            wait = max(wait, min(max(retry_after, 0.0), self.retry_after_max))
        return wait


class CircuitBreaker:
    """Stops calling a target after `failures` consecutive failures, for `cooldown` seconds.

    After the cool-down one trial attempt is let through (half-open): success closes the
    circuit, failure opens it for another cool-down. A target has one worker, so "one
    trial" needs no further bookkeeping.
    """

    def __init__(
        self,
        failures: int,
        cooldown: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[CircuitState], None] | None = None,
    ) -> None:
        self.threshold = failures
        self.cooldown = cooldown
        self.state: CircuitState = "closed"
        #: Failed attempts since the last success.
        self.consecutive_failures = 0
        self._opened_at = 0.0
        self._clock = clock
        self._on_change = on_change

    def wait_time(self) -> float:
        """Seconds until an attempt may be made; moves an open circuit to half-open."""
        if self.state != "open":
            return 0.0
        remaining = self._opened_at + self.cooldown - self._clock()
        if remaining > 0:
            return remaining
        self._set("half-open")
        return 0.0

    def record_success(self) -> None:
        self.consecutive_failures = 0
        self._set("closed")

    def record_failure(self) -> None:
        self.consecutive_failures += 1
        if self.state == "half-open" or self.consecutive_failures >= self.threshold:
            self._opened_at = self._clock()
            self._set("open")

    def _set(self, state: CircuitState) -> None:
        if state != self.state:
            self.state = state
            if self._on_change is not None:
                self._on_change(state)
