"""Runs the checks on their own schedules and keeps the cached, damped `HealthStatus`.

Probes only ever read the cache: no request waits on a check. Each check has its own
task, interval, timeout and damping, so one that hangs until its timeout never delays
another, and a 1 s queue scrape runs beside a 30 s disk check at its own pace.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from loguru import logger
from market_data_core.telemetry import HealthComponent, HealthState, HealthStatus

from market_data_sidecar import __version__
from market_data_sidecar.checks import Check, Damping, worst
from market_data_sidecar.metrics import Metrics

#: JSON bytes of all components' details together: the `/readyz` and `/healthz` bodies
#: stay under 16 KiB whatever a check reports (the kubelet reads only 10 KiB of a probe's
#: answer, and a check's details grow with what the store reports). Shared evenly by the
#: checks; what a component's share cannot hold is counted in `details_omitted`.
DETAILS_BUDGET = 12 * 1024
#: Longest detail value kept whole; longer ones are cut, marked with an ellipsis.
MAX_DETAIL_VALUE = 512
#: Details kept first, whatever else a component says.
_FIRST = ("error", "reason", "checked_at", "duration_ms", "observed_state", "streak")
_OMITTED = "details_omitted"


def bound_details(details: Mapping[str, str], budget: int) -> dict[str, str]:
    """`details` within `budget` JSON bytes: the `_FIRST` keys first, then in order; values
    cut to `MAX_DETAIL_VALUE` characters; lone surrogates (which no UTF-8 encoder writes,
    and which made `/healthz` answer 500) escaped. How many entries did not fit is in
    `details_omitted`."""
    ordered = [k for k in _FIRST if k in details] + [k for k in details if k not in _FIRST]
    kept: dict[str, str] = {}
    used, omitted = 0, 0
    reserve = len(json.dumps(_OMITTED)) + 12  # room to say how many were left out
    for key in ordered:
        name, value = _encodable(key), _encodable(_cut(details[key]))
        cost = len(json.dumps(name)) + len(json.dumps(value)) + 2  # ": " and ", "
        if len(key) > MAX_DETAIL_VALUE or used + cost > budget - reserve:
            omitted += 1
            continue
        kept[name] = value
        used += cost
    if omitted:
        kept[_OMITTED] = str(omitted)
    return kept


def _cut(text: str) -> str:
    return text if len(text) <= MAX_DETAIL_VALUE else text[: MAX_DETAIL_VALUE - 1] + "\u2026"


def _encodable(text: str) -> str:
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


class Clock:
    """The scheduler's time: when a check last made progress, and the wait between runs.

    One object so that tests can run the schedules on a clock of their own.
    """

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@dataclass
class _Slot:
    """What the monitor remembers of one check."""

    check: Check
    reported: HealthComponent | None = None
    streak_state: HealthState | None = None
    streak: int = 0
    last_progress: float = 0.0
    task: asyncio.Task[None] | None = None


class HealthMonitor:
    """Schedules checks, damps their results, and answers from the cache."""

    def __init__(
        self,
        checks: Sequence[Check],
        *,
        service: str,
        metrics: Metrics,
        damping: Damping,
        liveness_intervals: float,
        ready_when_degraded: bool,
        clock: Clock | None = None,
    ) -> None:
        names = [check.name for check in checks]
        if len(names) != len(set(names)):
            raise ValueError(f"check names must be unique: {names}")
        self._clock = clock or Clock()
        self._slots = {
            check.name: _Slot(check, last_progress=self._clock.monotonic()) for check in checks
        }
        self._service = service
        self._metrics = metrics
        self._damping = damping
        self._liveness_intervals = liveness_intervals
        self._ready_when_degraded = ready_when_degraded
        self._shutting_down = False
        self._cached: HealthStatus | None = None
        self._cached_json: tuple[HealthStatus, bytes] | None = None

    @property
    def checks(self) -> list[Check]:
        return [slot.check for slot in self._slots.values()]

    # -- running ---------------------------------------------------------------------------

    async def run_once(self) -> HealthStatus:
        """One round of every check, concurrently; for `market-data-sidecar check`."""
        await asyncio.gather(*(self._run(slot) for slot in self._slots.values()))
        return self.snapshot()

    def start(self) -> None:
        """Start one background task per check."""
        for name, slot in self._slots.items():
            slot.last_progress = self._clock.monotonic()
            slot.task = asyncio.create_task(self._loop(slot), name=f"check:{name}")

    async def stop(self) -> None:
        """Cancel the check tasks and let each check release its resources."""
        tasks = [slot.task for slot in self._slots.values() if slot.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for slot in self._slots.values():
            slot.task = None
            with contextlib.suppress(Exception):
                await slot.check.close()

    def begin_shutdown(self) -> None:
        """Turn readiness 503 so the pod leaves the Service before intake stops."""
        self._shutting_down = True
        self._metrics.ready.set(0)

    async def _loop(self, slot: _Slot) -> None:
        while True:
            await self._run(slot)
            await self._clock.sleep(slot.check.interval)

    async def _run(self, slot: _Slot) -> None:
        check = slot.check
        started_at, started = time.time(), time.perf_counter()
        try:
            async with asyncio.timeout(check.timeout):
                observed = await check.run()
        except TimeoutError:
            observed = check.component("unhealthy", error=f"timed out after {check.timeout:g}s")
            self._metrics.check_failures.labels(check.name, "timeout").inc()
        except Exception as exc:  # a failing check is data, not a crash
            observed = check.component("unhealthy", error=_describe(exc))
            self._metrics.check_failures.labels(check.name, "error").inc()
        duration = time.perf_counter() - started
        self._metrics.check_duration.labels(check.name).observe(duration)
        self._record(slot, observed, started_at, duration)
        slot.last_progress = self._clock.monotonic()
        self._metrics.scheduler_heartbeat.set(time.time())

    # -- damping ---------------------------------------------------------------------------

    def _record(
        self, slot: _Slot, observed: HealthComponent, started_at: float, duration: float
    ) -> None:
        if observed.state == slot.streak_state:
            slot.streak += 1
        else:
            slot.streak_state, slot.streak = observed.state, 1
        previous = slot.reported.state if slot.reported else None
        damping = slot.check.damping or self._damping
        state = _damped_state(damping, previous, observed.state, slot.streak)
        details = dict(observed.details)
        details["checked_at"] = datetime.fromtimestamp(started_at, UTC).isoformat(
            timespec="milliseconds"
        )
        details["duration_ms"] = f"{duration * 1000:.1f}"
        if state != observed.state:
            details["observed_state"] = observed.state
            details["streak"] = str(slot.streak)
        budget = DETAILS_BUDGET // len(self._slots)
        slot.reported = HealthComponent(
            name=observed.name, state=state, details=bound_details(details, budget)
        )
        self._cached = None
        self._metrics.set_component_state(slot.check.name, state)
        if state != previous:
            log = logger.info if state == "healthy" else logger.warning
            log("component {} is {} (was {})", slot.check.name, state, previous or "unknown")
        self._metrics.ready.set(self.is_ready())

    # -- reading ---------------------------------------------------------------------------

    @property
    def first_round_done(self) -> bool:
        return all(slot.reported is not None for slot in self._slots.values())

    def components(self) -> list[HealthComponent]:
        return [slot.reported for slot in self._slots.values() if slot.reported is not None]

    def snapshot(self, exclude: Iterable[str] = ()) -> HealthStatus:
        """The cached status; excluded components are listed but not aggregated.

        Rebuilt only when a check reports, so a probe costs a dictionary lookup.
        """
        skipped = set(exclude)
        if not skipped and self._cached is not None:
            return self._cached
        status = self._aggregate(skipped)
        if not skipped:
            self._cached = status
        return status

    def status_json(self, status: HealthStatus) -> bytes:
        """`status` as JSON bytes; the cached status is serialized once, not per probe."""
        cached = self._cached_json
        if cached is not None and cached[0] is status:
            return cached[1]
        body = status.model_dump_json().encode()
        if status is self._cached:
            self._cached_json = (status, body)
        return body

    def _aggregate(self, skipped: set[str]) -> HealthStatus:
        components = self.components()
        counted = [c.state for c in components if c.name not in skipped]
        if not self.first_round_done:
            # A component that has not reported yet is not known to be healthy.
            counted.append("unhealthy")
        return HealthStatus(
            service=self._service,
            state=worst(counted),
            components=components,
            version=__version__,
            ts=time.time(),
        )

    def is_ready(self, status: HealthStatus | None = None) -> bool:
        if self._shutting_down or not self.first_round_done:
            return False
        state = (status or self.snapshot()).state
        return state == "healthy" or (state == "degraded" and self._ready_when_degraded)

    def is_live(self) -> bool:
        """False once any check loop has died or stopped making progress.

        Each check is judged by its own interval and timeout: a 30 s disk check that ran
        20 s ago is on time, a 1 s queue check silent for 20 s is not.
        """
        now = self._clock.monotonic()
        for slot in self._slots.values():
            if slot.task is not None and slot.task.done():
                return False
            budget = (slot.check.interval + slot.check.timeout) * self._liveness_intervals
            if now - slot.last_progress > budget:
                return False
        return True

    @property
    def pending(self) -> list[str]:
        """Checks that have not reported yet."""
        return [name for name, slot in self._slots.items() if slot.reported is None]


def _damped_state(
    damping: Damping, previous: HealthState | None, observed: HealthState, streak: int
) -> HealthState:
    if previous is None or previous == observed:
        return observed  # the first result is taken as it is
    needed = damping.rise if observed == "healthy" else damping.fall
    return observed if streak >= needed else previous


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
