"""Checks are independent: one hanging never changes another's result or cadence."""

from __future__ import annotations

import asyncio
import itertools
import time
from datetime import datetime
from typing import Any

import pytest

from tests.support.helpers import eventually
from tests.support.postgres import PostgresInstance
from tests.support.probes import probing
from tests.support.sidecar import StartSidecar, make_settings
from tests.support.store import StoreMetrics

pytestmark = [pytest.mark.slow, pytest.mark.exclusive]

INTERVAL = 0.2
TIMEOUT = 1.0


async def test_hanging_store_and_frozen_database_leave_the_disk_on_cadence(
    store_metrics: StoreMetrics, pg: PostgresInstance, sidecar_client: StartSidecar
) -> None:
    settings = make_settings(
        store_metrics_url=store_metrics.url,
        database_url=pg.dsn(),
        disk_paths=["/"],
        disk_free_degraded=0.0,
        disk_free_unhealthy=0.0,
        disk_inodes_free_degraded=0.0,
        disk_inodes_free_unhealthy=0.0,
        check_interval=INTERVAL,
        check_timeout=TIMEOUT,
    )
    client = await sidecar_client(settings)
    await eventually(lambda: _ready(client), message="ready first")

    store_metrics.mode = "hang"
    disk_runs: dict[str, dict[str, str]] = {}
    async with probing(client) as probes:
        with pg.frozen():
            # Watch for three check timeouts' worth of time.
            deadline = time.monotonic() + 3 * TIMEOUT + 0.2
            while time.monotonic() < deadline:
                components = await _components(client)
                disk = components["disk"]
                disk_runs[disk["details"]["checked_at"]] = disk["details"] | {
                    "state": disk["state"]
                }
                await asyncio.sleep(0.02)  # the pace of polling, not a synchronisation
        store_metrics.released.set()

    # Both hanging dependencies were reported as such, each bounded by its timeout.
    for name in ("queue", "database"):
        hung = components[name]
        assert hung["state"] == "unhealthy", hung
        assert hung["details"]["error"].endswith(f" {TIMEOUT:g}s"), hung
    assert probes.statuses("/livez") == {200}
    assert probes.slowest() < 0.1

    # The disk kept its own schedule: a run every interval, each healthy and quick.
    started = sorted(datetime.fromisoformat(at).timestamp() for at in disk_runs)
    gaps = [later - earlier for earlier, later in itertools.pairwise(started)]
    assert len(started) >= (3 * TIMEOUT) / INTERVAL * 0.75, started
    assert max(gaps) < INTERVAL + 0.1, gaps
    assert {run["state"] for run in disk_runs.values()} == {"healthy"}
    assert max(float(run["duration_ms"]) for run in disk_runs.values()) < 100


async def _components(client: Any) -> dict[str, dict[str, Any]]:
    async with client.get("/healthz") as response:
        body = await response.json()
    return {component["name"]: component for component in body["components"]}


async def _ready(client: Any) -> bool:
    async with client.get("/readyz") as response:
        return bool(response.status == 200)
