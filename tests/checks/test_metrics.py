"""What the checks export on `/metrics`: state, duration and each check's key gauges."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.support.helpers import eventually
from tests.support.sidecar import StartSidecar, make_settings
from tests.support.store import StoreMetrics

SHARED_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


async def test_key_gauges_are_exported(
    store_metrics: StoreMetrics, sidecar_client: StartSidecar
) -> None:
    settings = make_settings(
        store_metrics_url=store_metrics.url, database_url=SHARED_DSN, disk_paths=["/"]
    )
    client = await sidecar_client(settings)
    await eventually(lambda: _ready(client), message="every check reported")

    async with client.get("/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    for component in ("database", "disk", "queue"):
        assert value("sidecar_component_state", component=component, state="healthy") == 1
        assert value("sidecar_component_state", component=component, state="unhealthy") == 0
        assert value("sidecar_check_duration_seconds_count", component=component) >= 1
    assert 0 < value("sidecar_database_latency_seconds") < 1
    assert 0 < value("sidecar_database_connections_ratio") < 1
    assert value("sidecar_database_replication_lag_seconds") == 0
    assert value("sidecar_database_oldest_transaction_seconds") >= 0
    assert value("sidecar_database_size_bytes") > 0
    assert 0 < value("sidecar_disk_free_ratio", path="/") <= 1
    assert value("sidecar_disk_free_bytes", path="/") > 0
    assert value("sidecar_queue_utilization_ratio", coordinator="bars-coord") == 0.01
    assert value("sidecar_queue_depth", coordinator="bars-coord") == 100
    assert value("sidecar_queue_workers_alive", coordinator="ticks-coord") == 4
    assert value("sidecar_queue_circuit_state", coordinator="ticks-coord") == 0


async def _ready(client: Any) -> bool:
    async with client.get("/readyz") as response:
        return bool(response.status == 200)
