"""Free space and free inodes on the store's data paths."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from dataclasses import dataclass

import psutil
from market_data_core.telemetry import HealthComponent, HealthState

from market_data_sidecar.checks import Busy, Check, Damping, Workers, worst
from market_data_sidecar.metrics import Metrics


@dataclass(frozen=True)
class DiskThresholds:
    """Free ratios below which a path is degraded / unhealthy. No defaults: each is the
    setting `SIDECAR_DISK_<NAME>` (`wiring.thresholds_from`), whose default is the only one."""

    free_degraded: float
    free_unhealthy: float
    inodes_free_degraded: float
    inodes_free_unhealthy: float


@dataclass(frozen=True)
class PathUsage:
    path: str
    free_bytes: int
    total_bytes: int
    inodes_free: int
    inodes_total: int

    @property
    def free_ratio(self) -> float:
        return self.free_bytes / self.total_bytes if self.total_bytes else 0.0

    @property
    def inodes_free_ratio(self) -> float:
        # Some filesystems (btrfs, overlay on some kernels) report no inode limit.
        return self.inodes_free / self.inodes_total if self.inodes_total else 1.0


def measure(path: str) -> PathUsage:
    """Blocking filesystem calls; run in the check's own threads so a hung mount stalls
    neither the loop nor another check."""
    usage = psutil.disk_usage(path)
    stats = os.statvfs(path)
    return PathUsage(path, usage.free, usage.total, stats.f_favail, stats.f_files)


class DiskCheck(Check):
    """One component for all watched paths; the worst path decides its state."""

    def __init__(
        self,
        paths: Sequence[str],
        *,
        thresholds: DiskThresholds,
        metrics: Metrics,
        interval: float,
        timeout: float,
        damping: Damping | None = None,
    ) -> None:
        super().__init__("disk", interval=interval, timeout=timeout, damping=damping)
        self.paths = [os.path.abspath(path) for path in paths]
        # A thread per path: a hung mount holds its own, never another path's.
        self._workers_of = {path: Workers(f"disk:{path}") for path in self.paths}
        self.thresholds = thresholds
        self.metrics = metrics

    async def run(self) -> HealthComponent:
        results = await asyncio.gather(
            *(self._workers_of[path].run(measure, path) for path in self.paths),
            return_exceptions=True,
        )
        states: list[HealthState] = []
        details: dict[str, object] = {"paths": ",".join(self.paths)}
        problems: list[str] = []
        for path, result in zip(self.paths, results, strict=True):
            if isinstance(result, BaseException):
                states.append("unhealthy")
                reason = _os_error(result)
                details[f"{path}:error"] = reason
                problems.append(f"{path}: {reason}")
                continue
            state, problem = self._judge(result)
            states.append(state)
            details.update(self._describe(result))
            if problem:
                problems.append(f"{path}: {problem}")
        if problems:
            details["reason"] = "; ".join(problems)
        return self.component(worst(states), **details)

    def _judge(self, usage: PathUsage) -> tuple[HealthState, str]:
        t = self.thresholds
        free, inodes = usage.free_ratio, usage.inodes_free_ratio
        if free < t.free_unhealthy or inodes < t.inodes_free_unhealthy:
            state: HealthState = "unhealthy"
        elif free < t.free_degraded or inodes < t.inodes_free_degraded:
            state = "degraded"
        else:
            return "healthy", ""
        return state, f"free {free:.1%} of space, {inodes:.1%} of inodes"

    def _describe(self, usage: PathUsage) -> dict[str, object]:
        path = usage.path
        self.metrics.disk_free_bytes.labels(path).set(usage.free_bytes)
        self.metrics.disk_free_ratio.labels(path).set(usage.free_ratio)
        self.metrics.disk_inodes_free_ratio.labels(path).set(usage.inodes_free_ratio)
        return {
            f"{path}:free_bytes": usage.free_bytes,
            f"{path}:total_bytes": usage.total_bytes,
            f"{path}:free_ratio": round(usage.free_ratio, 4),
            f"{path}:inodes_free": usage.inodes_free,
            f"{path}:inodes_free_ratio": round(usage.inodes_free_ratio, 4),
        }


def _os_error(exc: BaseException) -> str:
    if isinstance(exc, Busy):
        return "still blocked in an earlier check (a hung filesystem?)"
    if isinstance(exc, FileNotFoundError):
        return "path does not exist"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{type(exc).__name__}: {exc}"
