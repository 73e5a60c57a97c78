"""The `feedback` component: the relay's own state, read from memory (plus publisher probes).

Degraded while any target's circuit is open or a target is disabled, and, when
`feedback_ttl` is set, when the store has pushed nothing for longer than that.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from market_data_core.telemetry import HealthComponent

from market_data_sidecar.checks import Check
from market_data_sidecar.feedback.relay import Relay
from market_data_sidecar.feedback.router import TargetLane


class FeedbackCheck(Check):
    """Reports the relay: per-target circuit, buffer and errors, and store silence."""

    def __init__(
        self,
        relay: Relay,
        *,
        interval: float,
        timeout: float,
        ttl: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__("feedback", interval=interval, timeout=timeout)
        self._relay = relay
        self._ttl = ttl
        self._clock = clock

    async def run(self) -> HealthComponent:
        lanes = self._relay.router.lanes
        problems = [
            f"target {lane.name} disabled" if lane.disabled else f"target {lane.name} circuit open"
            for lane in lanes
            if lane.disabled or lane.circuit.state == "open"
        ]
        details: dict[str, object] = {
            "targets": len(lanes),
            "synthesizing": self._relay.synthesizing,
        }
        last = self._relay.last_store_event_at
        silent_for = self._clock() - (last if last is not None else self._relay.started_at)
        details["last_store_event_age_s"] = round(silent_for, 3) if last is not None else "never"
        if self._ttl > 0 and silent_for > self._ttl:
            problems.append(f"no event from the store for {silent_for:.0f}s")
        # Publisher probes (Redis PING) run concurrently, each within the check's budget.
        extras = await asyncio.gather(*(self._publisher_details(lane) for lane in lanes))
        for lane, extra in zip(lanes, extras, strict=True):
            details.update(_lane_details(lane))
            details.update({f"{lane.name}.{key}": value for key, value in extra.items()})
        if problems:
            return self.component("degraded", reason="; ".join(problems), **details)
        return self.component("healthy", **details)

    async def _publisher_details(self, lane: TargetLane) -> dict[str, str]:
        try:
            async with asyncio.timeout(self.timeout * 0.8):
                return await lane.publisher.health_details()
        except TimeoutError:
            return {"probe": "timed out"}
        except Exception as exc:  # a probe failure is a detail, not a failed check
            return {"probe": f"failed: {type(exc).__name__}"}


def _lane_details(lane: TargetLane) -> dict[str, object]:
    prefix = f"{lane.name}."
    details: dict[str, object] = {
        "circuit": lane.circuit.state,
        "disabled": lane.disabled,
        "buffer_depth": lane.depth,
        "delivered": lane.delivered,
        "dropped": lane.dropped,
    }
    if lane.last_error is not None:
        details["last_error"] = lane.last_error
    return {prefix + key: value for key, value in details.items()}
