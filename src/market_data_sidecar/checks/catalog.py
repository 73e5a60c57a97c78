"""Which checks a given configuration enables."""

from __future__ import annotations

from market_data_sidecar.checks import Check
from market_data_sidecar.checks.disk import DiskCheck, DiskThresholds
from market_data_sidecar.metrics import Metrics
from market_data_sidecar.settings import Settings


def build_checks(settings: Settings, metrics: Metrics) -> list[Check]:
    """The store's dependencies, as configured: disk always, database and queue when set."""
    timing = {"interval": settings.check_interval, "timeout": settings.check_timeout}
    checks: list[Check] = [
        DiskCheck(
            settings.disk_paths,
            thresholds=DiskThresholds(
                free_degraded=settings.disk_free_degraded,
                free_unhealthy=settings.disk_free_unhealthy,
                inodes_free_degraded=settings.disk_inodes_free_degraded,
                inodes_free_unhealthy=settings.disk_inodes_free_unhealthy,
            ),
            metrics=metrics,
            **timing,
        )
    ]
    return checks
