"""Which checks a given configuration enables."""

from __future__ import annotations

from market_data_sidecar.checks import Check
from market_data_sidecar.checks.database import DatabaseCheck, DatabaseThresholds
from market_data_sidecar.checks.disk import DiskCheck, DiskThresholds
from market_data_sidecar.checks.queue import QueueCheck
from market_data_sidecar.metrics import Metrics
from market_data_sidecar.settings import Settings


def build_checks(settings: Settings, metrics: Metrics) -> list[Check]:
    """The store's dependencies, as configured: disk always, database and queue when set."""
    timing = {"interval": settings.check_interval, "timeout": settings.check_timeout}
    checks: list[Check] = []
    if settings.database_url is not None:
        checks.append(
            DatabaseCheck(
                settings.database_url,
                thresholds=DatabaseThresholds(
                    latency_degraded=settings.database_latency_degraded,
                    connections_degraded=settings.database_connections_degraded,
                    connections_unhealthy=settings.database_connections_unhealthy,
                    replication_lag_degraded=settings.database_replication_lag_degraded,
                    replication_lag_unhealthy=settings.database_replication_lag_unhealthy,
                    transaction_age_degraded=settings.database_transaction_age_degraded,
                ),
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
            thresholds=DiskThresholds(
                free_degraded=settings.disk_free_degraded,
                free_unhealthy=settings.disk_free_unhealthy,
                inodes_free_degraded=settings.disk_inodes_free_degraded,
                inodes_free_unhealthy=settings.disk_inodes_free_unhealthy,
            ),
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
