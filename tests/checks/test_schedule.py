"""Each check on its own schedule: its interval, timeout, rise and fall, run on a clock of
the tests' own so that a minute of schedules passes in a moment and is counted exactly."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from market_data_core.telemetry import HealthComponent, HealthState

from market_data_sidecar.checks import Check, Damping
from market_data_sidecar.checks.database import DatabaseCheck
from market_data_sidecar.checks.disk import DiskCheck
from market_data_sidecar.checks.queue import QueueCheck
from market_data_sidecar.health import Clock
from market_data_sidecar.metrics import Metrics
from market_data_sidecar.settings import ConfigError, load_settings
from market_data_sidecar.wiring import build_checks
from tests.support import parts
from tests.support.helpers import run_cli

#: How long a test waits, in real time, for the check loops to settle after a tick.
SETTLE = 5.0


class ManualClock(Clock):
    """Time that moves only when the test says; every sleeper wakes at its own deadline."""

    def __init__(self) -> None:
        self.now = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._changed = asyncio.Event()

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + seconds, next(self._order), future))
        self._changed.set()
        await future

    @property
    def sleeping(self) -> int:
        return len(self._sleepers)

    async def settle(self, sleepers: int) -> None:
        """Wait (in real time, bounded) until `sleepers` loops sleep on this clock."""
        async with asyncio.timeout(SETTLE):
            while self.sleeping < sleepers:
                self._changed.clear()
                await self._changed.wait()

    async def advance_to(self, moment: float, sleepers: int) -> None:
        """Move to `moment`, waking each sleeper at its deadline in order, and wait after
        each wake-up until `sleepers` loops sleep again."""
        while self._sleepers and self._sleepers[0][0] <= moment:
            deadline, _, future = heapq.heappop(self._sleepers)
            self.now = deadline
            future.set_result(None)
            await self.settle(sleepers)
        self.now = moment


class CountingCheck(Check):
    """Healthy, counting its runs and when (on the test's clock) each one started."""

    def __init__(
        self, name: str, clock: ManualClock, *, interval: float, timeout: float = 0.5
    ) -> None:
        super().__init__(name, interval=interval, timeout=timeout)
        self.clock = clock
        self.started: list[float] = []
        self.hang_from: int | None = None
        self.release = asyncio.Event()

    async def run(self) -> HealthComponent:
        self.started.append(self.clock.now)
        if self.hang_from is not None and len(self.started) > self.hang_from:
            # Wedged: ignores its timeout's cancellation, as a stuck thread would.
            while not self.release.is_set():
                try:
                    await self.release.wait()
                except asyncio.CancelledError:
                    if self.release.is_set():  # the test is over: stop() may end it
                        raise
        return self.component("healthy")


class ScriptedCheck(Check):
    def __init__(self, name: str, states: list[HealthState], damping: Damping) -> None:
        super().__init__(name, interval=1.0, timeout=1.0, damping=damping)
        self.states = states
        self.runs = 0

    async def run(self) -> HealthComponent:
        state = self.states[min(self.runs, len(self.states) - 1)]
        self.runs += 1
        return self.component(state)


async def test_a_1s_queue_and_a_30s_disk_check_keep_their_own_pace() -> None:
    clock = ManualClock()
    queue = CountingCheck("queue", clock, interval=1.0)
    disk = CountingCheck("disk", clock, interval=30.0)
    monitor = parts.health_monitor([queue, disk], clock=clock, service_name="store")
    monitor.start()
    try:
        await clock.settle(2)
        await clock.advance_to(29.5, sleepers=2)
        assert disk.started == [0.0]
        assert len(queue.started) == 30  # 0, 1, ..., 29

        await clock.advance_to(60.0, sleepers=2)
        assert disk.started == [0.0, 30.0, 60.0]
        assert queue.started == [float(second) for second in range(61)]
        assert monitor.is_live()
    finally:
        await monitor.stop()


async def test_liveness_judges_each_check_by_its_own_interval() -> None:
    clock = ManualClock()
    queue = CountingCheck("queue", clock, interval=1.0, timeout=0.5)
    disk = CountingCheck("disk", clock, interval=30.0, timeout=5.0)
    monitor = parts.health_monitor(
        [queue, disk], clock=clock, service_name="store", liveness_intervals=3
    )
    monitor.start()
    try:
        await clock.settle(2)
        # A disk check 25 s quiet is on time: a budget of a 1 s check's would kill the pod.
        await clock.advance_to(25.0, sleepers=2)
        assert monitor.is_live()

        # The queue check wedges after its run at 30 s; the disk check keeps its pace.
        queue.hang_from = 31
        await clock.advance_to(33.0, sleepers=1)
        assert monitor.is_live(), "3 s of a 1 s check: still within (1 + 0.5) * 3"
        await clock.advance_to(35.0, sleepers=1)
        assert not monitor.is_live(), "5 s of a 1 s check: stalled"
        assert disk.started == [0.0, 30.0]
    finally:
        queue.release.set()
        await monitor.stop()


async def test_readiness_waits_for_the_slow_checks_first_result() -> None:
    clock = ManualClock()
    queue = CountingCheck("queue", clock, interval=1.0)
    disk = CountingCheck("disk", clock, interval=30.0)
    disk.hang_from = 0  # its first run never ends
    monitor = parts.health_monitor([queue, disk], clock=clock, service_name="store")
    monitor.start()
    try:
        await clock.settle(1)
        await clock.advance_to(10.0, sleepers=1)
        assert len(queue.started) == 11
        assert not monitor.is_ready()
        assert monitor.pending == ["disk"]
        assert monitor.snapshot().state == "unhealthy"
    finally:
        disk.release.set()
        await monitor.stop()


async def test_each_check_damps_with_its_own_rise_and_fall() -> None:
    outage: list[HealthState] = ["healthy", "unhealthy", "unhealthy", "unhealthy"]
    patient = ScriptedCheck("database", outage, Damping(rise=1, fall=3))
    quick = ScriptedCheck("queue", outage, Damping(rise=1, fall=1))
    monitor = parts.health_monitor([patient, quick], service_name="store", fall=2)
    rounds = [await monitor.run_once() for _ in outage]
    states = [{c.name: c.state for c in status.components} for status in rounds]
    assert [s["queue"] for s in states] == ["healthy", "unhealthy", "unhealthy", "unhealthy"]
    assert [s["database"] for s in states] == ["healthy", "healthy", "healthy", "unhealthy"]


# -- settings ------------------------------------------------------------------------------


def test_schedules_default_to_the_global_settings_and_take_their_own() -> None:
    settings = load_settings(
        check_interval=5,
        check_timeout=2,
        rise=2,
        fall=3,
        queue_check_interval=1,
        disk_check_interval=30,
        disk_check_timeout=10,
        database_fall=1,
        database_url="postgresql://postgres@127.0.0.1:5432/postgres",
        disk_paths=["/"],
    )
    checks = {check.name: check for check in build_checks(settings, Metrics())}
    database, disk, queue = checks["database"], checks["disk"], checks["queue"]
    assert isinstance(database, DatabaseCheck)
    assert isinstance(disk, DiskCheck)
    assert isinstance(queue, QueueCheck)
    assert (database.interval, database.timeout, database.damping) == (5, 2, Damping(2, 1))
    assert (disk.interval, disk.timeout, disk.damping) == (30, 10, Damping(2, 3))
    # An unset timeout is capped at the check's own interval.
    assert (queue.interval, queue.timeout, queue.damping) == (1, 1, Damping(2, 3))


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"queue_check_interval": 0}, "SIDECAR_QUEUE_CHECK_INTERVAL"),
        ({"disk_check_interval": -1}, "SIDECAR_DISK_CHECK_INTERVAL"),
        ({"database_check_timeout": 0}, "SIDECAR_DATABASE_CHECK_TIMEOUT"),
        ({"queue_rise": 0}, "SIDECAR_QUEUE_RISE"),
        ({"disk_fall": -2}, "SIDECAR_DISK_FALL"),
        (
            {"queue_check_interval": 1, "queue_check_timeout": 2},
            "SIDECAR_QUEUE_CHECK_INTERVAL (1) must not be below the queue check's timeout "
            "SIDECAR_QUEUE_CHECK_TIMEOUT (2)",
        ),
        (
            {"check_interval": 5, "disk_check_timeout": 10},
            "SIDECAR_CHECK_INTERVAL (5) must not be below the disk check's timeout "
            "SIDECAR_DISK_CHECK_TIMEOUT (10)",
        ),
        ({"database_role": "leader"}, "SIDECAR_DATABASE_ROLE"),
    ],
)
def test_an_invalid_schedule_names_its_setting(settings: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings(**settings)
    message = str(error.value)
    assert named in message
    assert "\n" not in message


def test_an_invalid_schedule_ends_the_sidecar_with_exit_2(tmp_path: Path) -> None:
    result = run_cli("check", env={"SIDECAR_QUEUE_CHECK_INTERVAL": "0"})
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert "SIDECAR_QUEUE_CHECK_INTERVAL" in result.stderr

    config = tmp_path / "sidecar.json"
    config.write_text(json.dumps({"disk_check_interval": 1, "disk_check_timeout": 3}))
    result = run_cli("check", "--config", str(config))
    assert result.returncode == 2
    assert "SIDECAR_DISK_CHECK_INTERVAL (1) must not be below" in result.stderr
