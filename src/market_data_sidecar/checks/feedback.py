"""The `feedback` component: the relay's own state, read from memory (plus publisher probes).

Degraded while any target is not delivering (circuit open, disabled after 410, or every
attempt failing or refused for a while: a webhook path answering 404, a wrong Redis
password) and, when `feedback_ttl` is set, when the store has pushed nothing for longer
than that.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from market_data_core.telemetry import HealthComponent

from market_data_sidecar.checks import Check
from market_data_sidecar.feedback.lane import TargetHealth
from market_data_sidecar.feedback.relay import Relay


class FeedbackCheck(Check):
    """Reports the relay: per-target circuit, buffer and errors, and store silence."""

    def __init__(
        self,
        relay: Relay,
        *,
        interval: float,
        timeout: float,
        ttl: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__("feedback", interval=interval, timeout=timeout)
        self._relay = relay
        self._ttl = ttl
        self._clock = clock

    async def run(self) -> HealthComponent:
        targets = await self._relay.health(probe_timeout=self.timeout * 0.8)
        problems = [target.problem for target in targets if target.problem]
        details: dict[str, object] = {
            "targets": len(targets),
            "synthesizing": self._relay.synthesizing,
        }
        last = self._relay.last_store_event_at
        silent_for = self._clock() - (last if last is not None else self._relay.started_at)
        details["last_store_event_age_s"] = round(silent_for, 3) if last is not None else "never"
        if self._ttl > 0 and silent_for > self._ttl:
            problems.append(f"no event from the store for {silent_for:.0f}s")
        for target in targets:
            details.update(_target_details(target))
        if problems:
            return self.component("degraded", reason="; ".join(problems), **details)
        return self.component("healthy", **details)


def _target_details(target: TargetHealth) -> dict[str, object]:
    state = target.state
    details: dict[str, object] = {
        "circuit": state.circuit,
        "disabled": state.disabled,
        "buffer_depth": state.buffer_depth,
        "delivered": state.delivered,
        "dropped": state.dropped,
    }
    if state.last_error is not None:
        details["last_error"] = state.last_error
    details |= target.details
    return {f"{state.name}.{key}": value for key, value in details.items()}
