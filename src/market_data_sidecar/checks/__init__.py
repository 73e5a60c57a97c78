"""Checks: each polls one dependency of the store and returns a Core `HealthComponent`.

A check knows nothing of scheduling, damping or HTTP: `health.HealthMonitor` runs it on its
interval, bounds it with its timeout and turns exceptions into an `unhealthy` component.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping

from market_data_core.telemetry import HealthComponent, HealthState

STATE_RANK: Mapping[HealthState, int] = {"healthy": 0, "degraded": 1, "unhealthy": 2}


def worst(states: list[HealthState] | tuple[HealthState, ...]) -> HealthState:
    """The aggregate of several states: unhealthy > degraded > healthy."""
    return max(states, key=STATE_RANK.__getitem__, default="healthy")


class Check(ABC):
    """One dependency the sidecar watches."""

    name: str
    interval: float
    timeout: float

    def __init__(self, name: str, *, interval: float, timeout: float) -> None:
        self.name = name
        self.interval = interval
        self.timeout = timeout

    @abstractmethod
    async def run(self) -> HealthComponent:
        """Observe the dependency once. May raise: the monitor reports it as unhealthy."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the check holds open (connections, sessions)."""

    def component(self, state: HealthState, **details: object) -> HealthComponent:
        """A component of this check with `details` rendered as strings."""
        return HealthComponent(
            name=self.name, state=state, details={k: _text(v) for k, v in details.items()}
        )


def _text(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)
