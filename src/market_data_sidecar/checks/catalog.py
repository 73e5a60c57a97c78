"""Which checks a given configuration enables."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, TypeVar

from market_data_sidecar.checks import Check
from market_data_sidecar.checks.database import DatabaseCheck, DatabaseThresholds
from market_data_sidecar.checks.disk import DiskCheck, DiskThresholds
from market_data_sidecar.checks.queue import QueueCheck
from market_data_sidecar.metrics import Metrics
from market_data_sidecar.settings import Settings

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


def thresholds_from(kind: type[T], settings: Settings, prefix: str) -> T:
    """A check's thresholds from the settings of the same name after `prefix`.

    Every field is taken from the settings, so a threshold added to a check cannot
    silently keep its dataclass default in production.
    """
    names = [field.name for field in dataclasses.fields(kind)]
    return kind(**{name: getattr(settings, prefix + name) for name in names})


def build_checks(settings: Settings, metrics: Metrics) -> list[Check]:
    """The store's dependencies, as configured: disk always, database and queue when set."""
    timing = {"interval": settings.check_interval, "timeout": settings.check_timeout}
    checks: list[Check] = []
    if settings.database_url is not None:
        checks.append(
            DatabaseCheck(
                settings.database_url,
                thresholds=thresholds_from(DatabaseThresholds, settings, "database_"),
                metrics=metrics,
                connect_timeout=settings.database_connect_timeout,
                statement_timeout=settings.database_statement_timeout,
                probe_query=settings.database_probe_query,
                **timing,
            )
        )
    checks.append(
        DiskCheck(
            settings.disk_paths,
            thresholds=thresholds_from(DiskThresholds, settings, "disk_"),
            metrics=metrics,
            **timing,
        )
    )
    if settings.store_metrics_url is not None:
        checks.append(
            QueueCheck(
                str(settings.store_metrics_url),
                capacities=settings.queue_capacities,
                default_capacity=settings.queue_capacity,
                low_watermark=settings.queue_low_watermark,
                high_watermark=settings.queue_high_watermark,
                metrics=metrics,
                **timing,
            )
        )
    return checks
