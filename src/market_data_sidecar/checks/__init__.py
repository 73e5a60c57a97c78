"""Checks: each polls one dependency of the store and returns a Core `HealthComponent`.

A check knows nothing of scheduling, damping or HTTP: it only carries its own schedule
(interval, timeout, damping), and `health.HealthMonitor` runs it on that interval, bounds it
with that timeout, damps its results and turns exceptions into an `unhealthy` component.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from market_data_core.telemetry import HealthComponent, HealthState

_T = TypeVar("_T")

STATE_RANK: Mapping[HealthState, int] = {"healthy": 0, "degraded": 1, "unhealthy": 2}


def worst(states: list[HealthState] | tuple[HealthState, ...]) -> HealthState:
    """The aggregate of several states: unhealthy > degraded > healthy."""
    return max(states, key=STATE_RANK.__getitem__, default="healthy")


@dataclass(frozen=True)
class Damping:
    """Consecutive agreeing results needed before a component changes state.

    As Consul's `success_before_passing` / `failures_before_critical`: `rise` to return
    to healthy, `fall` to leave it (or to move between degraded and unhealthy).
    """

    rise: int
    fall: int


class Check(ABC):
    """One dependency the sidecar watches, on a schedule of its own.

    `damping` None takes the monitor's; each check has its own because what a result
    costs differs (a database query every second is waste, a queue scrape is not).
    """

    name: str
    interval: float
    timeout: float
    damping: Damping | None

    def __init__(
        self, name: str, *, interval: float, timeout: float, damping: Damping | None = None
    ) -> None:
        self.name = name
        self.interval = interval
        self.timeout = timeout
        self.damping = damping
        self._workers = Workers(name)

    async def in_thread(self, function: Callable[..., _T], *args: object) -> _T:
        """`function(*args)` in one of this check's own threads (never the loop's shared
        executor), or `Busy` at once when all of them are still working."""
        return await self._workers.run(function, *args)

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


class Busy(Exception):
    """A check's threads are all still working on earlier runs."""


class Workers:
    """A check's own bounded set of daemon threads for its blocking work.

    Work abandoned at a check's timeout (a parse of hostile metrics, `statvfs` on a hung
    mount) keeps its thread until it ends; with the loop's shared executor such threads
    once filled it, so every other check's thread work (the disk check's) timed out too,
    and exit waited on them (the executor's threads are joined at exit). Here each check
    has its own `size` threads, a new run finds `Busy` instead of a queue behind a stuck
    one, and the threads are daemons, so SIGTERM never waits on one.
    """

    def __init__(self, name: str, size: int = 1) -> None:
        self.name = name
        self.size = size
        self._slots = threading.BoundedSemaphore(size)

    async def run(self, function: Callable[..., _T], *args: object) -> _T:
        if not self._slots.acquire(blocking=False):
            raise Busy(f"still working on an earlier run ({self.size} threads busy)")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()

        def work() -> None:
            settle: Callable[[], None]
            try:
                settle = functools.partial(future.set_result, function(*args))
            except BaseException as exc:  # handed to the awaiting coroutine
                settle = functools.partial(future.set_exception, exc)
            # Free before answering: the next run, started by this answer, finds it free.
            self._slots.release()
            _settle(loop, settle, future)

        threading.Thread(target=work, name=f"check-{self.name}", daemon=True).start()
        return await future


def _settle(
    loop: asyncio.AbstractEventLoop, setter: Callable[[], None], future: asyncio.Future[_T]
) -> None:
    def settle() -> None:
        if not future.done():  # cancelled at the check's timeout: nobody waits any more
            setter()

    with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits either
        loop.call_soon_threadsafe(settle)
