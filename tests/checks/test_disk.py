"""The disk check crossing its thresholds: a small filesystem filled for real, thresholds
set around the real free space of a path, and a path that does not exist."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from market_data_sidecar.checks.disk import DiskCheck, DiskThresholds, measure
from market_data_sidecar.metrics import Metrics
from tests.support.helpers import eventually
from tests.support.sidecar import StartSidecar, make_settings
from tests.support.thresholds import disk_thresholds

MiB = 1024 * 1024


def disk_check(paths: list[str], thresholds: DiskThresholds) -> DiskCheck:
    return DiskCheck(paths, thresholds=thresholds, metrics=Metrics(), interval=0.2, timeout=1.0)


async def test_filling_a_small_filesystem_crosses_both_thresholds(
    small_filesystem: Path, sidecar_client: StartSidecar
) -> None:
    """4 MiB tmpfs: degraded below 50% free, unhealthy below 25%, then freed again."""
    settings = make_settings(
        disk_paths=[str(small_filesystem)], disk_free_degraded=0.5, disk_free_unhealthy=0.25
    )
    client = await sidecar_client(settings)
    await eventually(lambda: _disk(client, "healthy"), message="healthy while empty")

    (small_filesystem / "segment-1").write_bytes(b"\0" * (2 * MiB + MiB // 2))
    degraded = await eventually(lambda: _disk(client, "degraded"), message="degraded")
    assert f"{small_filesystem}: free 37.5% of space" in degraded["details"]["reason"]
    assert await _readiness(client) == 200  # degraded is still ready

    (small_filesystem / "segment-2").write_bytes(b"\0" * MiB)
    unhealthy = await eventually(lambda: _disk(client, "unhealthy"), message="unhealthy")
    assert unhealthy["details"][f"{small_filesystem}:free_ratio"] == "0.125"
    assert await _readiness(client) == 503

    for segment in small_filesystem.iterdir():
        segment.unlink()
    await eventually(lambda: _disk(client, "healthy"), message="healthy once freed")
    assert await _readiness(client) == 200


async def test_running_out_of_inodes_is_unhealthy(small_filesystem: Path) -> None:
    """Space is plentiful; 64 inodes are not."""
    check = disk_check(
        [str(small_filesystem)],
        disk_thresholds(inodes_free_degraded=0.5, inodes_free_unhealthy=0.25),
    )
    assert (await check.run()).state == "healthy"
    for index in range(48):
        (small_filesystem / f"chunk-{index}").touch()
    result = await check.run()
    assert result.state == "unhealthy"
    assert f"{small_filesystem}: free 100.0% of space, 23.4% of inodes" in result.details["reason"]


async def test_thresholds_around_the_real_free_space(tmp_path: Path) -> None:
    """No filesystem of our own needed: put the thresholds on either side of what is free."""
    free = measure(str(tmp_path)).free_ratio
    around = {"inodes_free_degraded": 0.0, "inodes_free_unhealthy": 0.0}

    below = disk_check([str(tmp_path)], DiskThresholds(0.0, 0.0, **around))
    assert (await below.run()).state == "healthy"

    straddling = DiskThresholds(min(1.0, free + 0.05), max(0.0, free - 0.05), **around)
    result = await disk_check([str(tmp_path)], straddling).run()
    assert result.state == "degraded"
    assert result.details["reason"].startswith(f"{tmp_path}: free ")

    above = DiskThresholds(min(1.0, free + 0.05), min(1.0, free + 0.05), **around)
    assert (await disk_check([str(tmp_path)], above).run()).state == "unhealthy"


async def test_a_missing_path_is_unhealthy_and_named(tmp_path: Path) -> None:
    missing = tmp_path / "pgdata"
    check = disk_check([str(tmp_path), str(missing)], DiskThresholds(0.0, 0.0, 0.0, 0.0))
    result = await check.run()
    assert result.state == "unhealthy"
    assert result.details[f"{missing}:error"] == "path does not exist"
    assert result.details["reason"] == f"{missing}: path does not exist"
    assert f"{tmp_path}:free_bytes" in result.details  # the other path is still reported


async def _disk(client: Any, state: str) -> dict[str, Any] | None:
    async with client.get("/healthz") as response:
        body = await response.json()
    for component in body["components"]:
        if component["name"] == "disk" and component["state"] == state:
            return dict(component)
    return None


async def _readiness(client: Any) -> int:
    async with client.get("/readyz") as response:
        return int(response.status)
