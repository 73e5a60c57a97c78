"""A hostile or broken store's `/metrics` against a real `market-data-sidecar run`: what it
lists is bounded before it is kept, shown, logged or relayed, and it starves no other check.

The store is a real HTTP server of the test's own serving bytes the test chooses
(`tests/support/store.py`, mode `raw`).
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from pytest_aiohttp import AiohttpServer

from tests.reliability.conftest import metric_value, relay_state, scrape
from tests.support.helpers import SidecarProcess, eventually
from tests.support.store import StoreMetrics

#: What a probe answer must fit in (the kubelet reads 10 KiB of it).
PROBE_BUDGET = 16 * 1024


def depth_line(coordinator: str, depth: float | str) -> str:
    """One depth series, the label value escaped as the exposition format escapes it."""
    escaped = coordinator.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return f'mds_coord_queue_depth{{coord_id="{escaped}"}} {depth}\n'


@pytest.fixture
async def hostile_store(aiohttp_server: AiohttpServer) -> AsyncIterator[StoreMetrics]:
    store = StoreMetrics()
    store.mode = "raw"
    await store.serve(aiohttp_server)
    yield store
    store.released.set()


def start(sidecar_process: Callable[..., SidecarProcess], store: StoreMetrics) -> SidecarProcess:
    return sidecar_process(
        {
            "SIDECAR_STORE_METRICS_URL": store.url,
            "SIDECAR_CHECK_INTERVAL": "0.2",
            "SIDECAR_CHECK_TIMEOUT": "2",
        }
    )


async def _component(sidecar: SidecarProcess, name: str) -> dict[str, Any]:
    status, body = await sidecar.get("/healthz")
    assert status in (200, 503), body
    components = {c["name"]: c for c in json.loads(body)["components"]}
    found: dict[str, Any] = components.get(name, {})
    return found


async def test_hostile_ids_and_depths_are_neither_kept_shown_nor_relayed(
    sidecar_process: Callable[..., SidecarProcess], hostile_store: StoreMetrics
) -> None:
    long_ids = "".join(depth_line(f"{n:04}" + "x" * 4096, 10) for n in range(2000))
    hostile_store.raw = (
        depth_line("a\nERROR forged line", 5)
        + depth_line("", 5)
        + depth_line("c" * 257, 5)
        + depth_line("huge", "1e300")
        + depth_line("hot", 100_000_000)  # 10,000 x the default capacity
        + long_ids
        + depth_line("good", 10)
    ).encode()
    sidecar = start(sidecar_process, hostile_store)
    await sidecar.wait_listening()

    async def good_relayed() -> bool:
        return "good" in (await relay_state(sidecar))["coordinators"]

    await eventually(good_relayed, message="the one valid coordinator relayed")
    assert set((await relay_state(sidecar))["coordinators"]) == {"good"}
    for path in ("/readyz", "/healthz"):
        status, body = await sidecar.get(path)
        assert status == 200, body
        assert len(body.encode()) < PROBE_BUDGET, (path, len(body))
    queue = await _component(sidecar, "queue")
    assert queue["details"]["coordinators"] == "3"  # good, huge, hot: judged, not relayed
    assert "2 coordinators with out-of-range depth" in queue["details"]["reason"]

    exposition = await scrape(sidecar)
    rejected = "sidecar_queue_series_rejected_total"
    assert metric_value(exposition, rejected, reason="line_too_long") >= 2000
    assert metric_value(exposition, rejected, reason="invalid_id") >= 3
    assert metric_value(exposition, rejected, reason="out_of_range") >= 2
    assert 'coordinator="good"' in exposition
    assert "xxxx" not in exposition

    log = sidecar.output()
    assert "a\\nERROR forged line" in log  # shown, escaped
    assert not any(line.startswith("ERROR forged") for line in log.splitlines())
    # Once per kind per minute, however many scrapes.
    assert log.count("not kept (coordinator ids") == 1
    assert log.count("not kept (lines longer than") == 1


async def test_ids_changing_every_scrape_are_announced_bounded_and_logged_once(
    sidecar_process: Callable[..., SidecarProcess], hostile_store: StoreMetrics
) -> None:
    fresh = itertools.count()

    def new_ids() -> bytes:
        return "".join(depth_line(f"c{next(fresh)}", 9000) for _ in range(500)).encode()

    hostile_store.raw = new_ids
    sidecar = start(sidecar_process, hostile_store)
    await sidecar.wait_listening()

    async def synthesized() -> float:
        exposition = await scrape(sidecar)
        return metric_value(exposition, "sidecar_feedback_synthesized_total")

    await eventually(
        lambda: _at_least(synthesized, 1000), timeout=20, message="five scrapes of new ids"
    )
    # At most `MAX_NEWS_PER_SCRAPE` (200) of the 500 new coordinators of each scrape
    # (read first: a scrape is counted before its events are made).
    events = await synthesized()
    assert events <= 200 * hostile_store.requests
    lines = [line for line in sidecar.output().splitlines() if "synthesized feedback" in line]
    assert 1 <= len(lines) <= 2, lines  # one per 10 s


async def _at_least(value: Callable[[], Any], minimum: float) -> bool:
    return bool(await value() >= minimum)


async def test_a_line_of_200000_labels_is_skipped_and_no_check_starves(
    sidecar_process: Callable[..., SidecarProcess], hostile_store: StoreMetrics
) -> None:
    labels = ",".join(f'l{n}="v"' for n in range(200_000))
    monster = f'mds_coord_queue_depth{{coord_id="m",{labels}}} 1\n'
    assert len(monster) > 2_000_000
    hostile_store.raw = (monster + depth_line("good", 10)).encode()
    sidecar = start(sidecar_process, hostile_store)
    await sidecar.wait_listening()

    async def scraped_twice() -> bool:
        queue = await _component(sidecar, "queue")
        return hostile_store.requests >= 3 and queue.get("details", {}).get("coordinators") == "1"

    await eventually(scraped_twice, timeout=15, message="the good coordinator read")
    queue, disk = await _component(sidecar, "queue"), await _component(sidecar, "disk")
    assert queue["state"] == "healthy", queue
    assert float(queue["details"]["duration_ms"]) < 1000  # not the 29 s the parser took
    assert disk["state"] == "healthy", disk
    rejected = metric_value(
        await scrape(sidecar), "sidecar_queue_series_rejected_total", reason="line_too_long"
    )
    assert rejected >= 3


def test_exit_never_waits_on_a_stuck_check_thread() -> None:
    """A check's thread stuck for good (a hung mount, a runaway parse) is abandoned at
    the timeout, and the process still exits: the loop's default executor joined such
    threads at exit, so SIGTERM hung."""
    script = textwrap.dedent(
        """
        import asyncio, threading
        from market_data_sidecar.checks import Workers

        async def main() -> None:
            workers = Workers("stuck")
            try:
                async with asyncio.timeout(0.2):
                    await workers.run(threading.Event().wait)
            except TimeoutError:
                print("abandoned", flush=True)

        asyncio.run(main())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=20, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "abandoned"
