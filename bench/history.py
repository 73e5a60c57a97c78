"""History: RSS with a full hour of history at 2,000 coordinators, beside none.

Two processes of their own build the same application and hold the same health snapshot
(a queue component reporting 2,000 coordinators, as the queue check lists at most) and
the same relay state; one also records a full window (every tick of the hour) through
the sampler's own path (`read` then `record`), the other records nothing. The difference
in RSS is what the history costs. Also measured in the full one: one sample (read and
record) at 2,000 coordinators, the page's render and size with the history, and
`GET /history`'s body at its largest.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
from statistics import median
from typing import Any

from bench import procs
from bench.harness import Context, Row

NAME = "history"
COORDINATORS = 2_000
MIB = 1024 * 1024
#: What a full history may add to the process, and what one sample may take.
MAX_EXTRA_MIB = 16.0
MAX_SAMPLE_MS = 20.0
MAX_PAGE_BYTES = 400_000


def run(ctx: Context) -> list[Row]:
    without = _child("without")
    full = _child("full")
    extra = (full["rss"] - without["rss"]) / MIB
    return [
        Row(NAME, f"RSS with a full hour at {COORDINATORS:,} coordinators", full["rss"] / MIB,
            "MiB", without["rss"] / MIB, "same process, no history"),
        Row(NAME, "RSS the full history adds", extra, "MiB", target=f"<= {MAX_EXTRA_MIB:g} MiB",
            passed=extra <= MAX_EXTRA_MIB),
        Row(NAME, f"one sample (read + record) at {COORDINATORS:,} coordinators",
            full["sample_ms"], "ms", target=f"<= {MAX_SAMPLE_MS:g} ms",
            passed=full["sample_ms"] <= MAX_SAMPLE_MS),
        Row(NAME, "render of / with the full history", full["render_ms"], "ms",
            without["render_ms"], "render of / with no history"),
        Row(NAME, "size of / with the full history", full["page_bytes"] / 1024, "KiB",
            without["page_bytes"] / 1024, "size with no history",
            target=f"<= {MAX_PAGE_BYTES // 1000} kB", passed=full["page_bytes"] <= MAX_PAGE_BYTES),
        Row(NAME, "GET /history body, every change held", full["history_bytes"] / 1024, "KiB"),
    ]  # fmt: skip


def _child(mode: str) -> dict[str, Any]:
    out = subprocess.run(
        procs.python("-m", "bench.history", mode), check=True, capture_output=True, timeout=600
    )
    result: dict[str, Any] = json.loads(out.stdout.decode().strip().splitlines()[-1])
    return result


def _scrape(tick: int) -> list[Any]:
    """The queue check's samples of 2,000 coordinators: every 97th hard for a third of each
    five minutes, every 13th soft, the rest ok; depths move each tick."""
    from market_data_core.telemetry import BackpressureLevel

    from market_data_sidecar.checks.queue import CoordinatorSample

    samples = []
    for i in range(COORDINATORS):
        hard = i % 97 == 0 and tick % 30 < 10
        level = "hard" if hard else "soft" if i % 13 == 0 else "ok"
        depth = 9_500 if hard else (i * 7 + tick) % 7_000
        samples.append(
            CoordinatorSample(
                coordinator_id=f"store-coordinator-{i:04d}",
                depth=depth,
                capacity=10_000,
                utilization=depth / 10_000,
                level=BackpressureLevel(level),
                workers_alive=4,
                circuit_state=0,
            )
        )
    return samples


def _snapshot(samples: list[Any]) -> Any:
    """The health snapshot as the monitor serves it: the queue's details cut to its share."""
    from market_data_core.telemetry import HealthComponent, HealthStatus

    from market_data_sidecar.health import DETAILS_BUDGET, bound_details

    details = {
        f"{s.coordinator_id}:{key}": str(value)
        for s in samples
        for key, value in (("depth", s.depth), ("capacity", s.capacity), ("level", s.level.value))
    }
    queue = HealthComponent(
        name="queue", state="degraded", details=bound_details(details, DETAILS_BUDGET // 3)
    )
    disk = HealthComponent(name="disk", state="healthy", details={})
    feedback = HealthComponent(name="feedback", state="healthy", details={})
    return HealthStatus(
        service="market-data-store",
        state="degraded",
        components=[queue, disk, feedback],
        version="bench",
        ts=time.time(),
    )


def _measure(mode: str) -> dict[str, Any]:
    """Both modes read the same 360 scrapes; only `full` records them."""
    from market_data_sidecar.feedback.state import RelayState
    from market_data_sidecar.views.history import History, read
    from market_data_sidecar.views.model import StatusView
    from market_data_sidecar.views.page import render_page

    history = History()
    relay = RelayState()
    end = time.time()
    timings: list[float] = []
    for tick in range(history.points):
        samples = _scrape(tick)
        status = _snapshot(samples)
        if mode == "full":
            began = time.perf_counter()
            history.observe_queues(samples)
            now = end - (history.points - 1 - tick) * history.tick
            history.record(read(status, relay, history.polled), now)
            timings.append(time.perf_counter() - began)
    view = StatusView.from_json(status.model_dump(mode="json"), relay.model_dump(mode="json"))
    renders = []
    for _ in range(5):
        began = time.perf_counter()
        page = render_page(view, history=history if mode == "full" else None)
        renders.append(time.perf_counter() - began)
    body = history.state(len(history.changes)).model_dump_json()
    del samples, status, view
    gc.collect()
    return {
        "rss": procs.rss_bytes(os.getpid()),
        "sample_ms": median(timings) * 1000 if timings else 0.0,
        "render_ms": median(renders) * 1000,
        "page_bytes": len(page.encode()),
        "history_bytes": len(body),
        "changes": len(history.changes),
    }


if __name__ == "__main__":
    print(json.dumps(_measure(sys.argv[1])))
