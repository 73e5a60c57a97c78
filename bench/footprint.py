"""Footprint: RSS at start and after a soak, and idle CPU at default check intervals.

The sidecar runs as deployed: database check on (the benchmark's own PostgreSQL),
default intervals, and every target kind (two HTTP orchestrators, a Redis stream in
`all` mode and a Redis pub/sub channel on the benchmark's own redis-server). Order:
ready -> RSS at start -> idle window (CPU) -> soak at 200 events/s -> RSS after.
Baseline: the same figures of a bare aiohttp process serving one route.
"""

from __future__ import annotations

import json
import time
from typing import Any

from bench import procs
from bench.fanout import Orchestrators
from bench.harness import Context, Row
from bench.loadgen import run_in_process
from bench.postgres import OwnPostgres
from bench.redis_server import OwnRedis
from bench.sidecar import Sidecar, metric_sum

NAME = "footprint"
RATE = 200
MIB = 1024 * 1024
MAX_START_MIB = 80.0
MAX_GROWTH = 0.05
MAX_IDLE_CORE = 0.01


def run(ctx: Context) -> list[Row]:
    idle_seconds = ctx.seconds(60, 15)
    if ctx.quick:
        ctx.note(f"footprint: --quick: idle CPU over {idle_seconds:g}s instead of 60s")
    baseline = _baseline(idle_seconds)
    pg = OwnPostgres().start()
    own_redis = OwnRedis().start()
    orchestrators = Orchestrators()
    try:
        figures = _sidecar(ctx, pg, own_redis, orchestrators, idle_seconds)
    finally:
        orchestrators.stop()
        own_redis.stop()
        pg.stop()
    growth = (figures["rss_end"] - figures["rss_start"]) / figures["rss_start"]
    warm_growth = (figures["rss_end"] - figures["rss_warm"]) / figures["rss_warm"]
    return [
        Row(NAME, "RSS at start", figures["rss_start"] / MIB, "MiB", baseline["rss"] / MIB,
            "bare aiohttp", target=f"<= {MAX_START_MIB:g} MiB",
            passed=figures["rss_start"] / MIB <= MAX_START_MIB),
        Row(NAME, f"RSS after {ctx.soak:g}s soak at {RATE} events/s", figures["rss_end"] / MIB,
            "MiB", figures["rss_start"] / MIB, "at start", note=figures["note"]),
        Row(NAME, "RSS growth over the soak", growth * 100, "%", target=f"< {MAX_GROWTH:.0%}",
            passed=growth < MAX_GROWTH,
            note=f"from the first 10% of the soak on: {warm_growth * 100:+.2f}%"),
        Row(NAME, f"idle CPU over {idle_seconds:g}s", figures["idle"] * 100, "% core",
            baseline["idle"] * 100, "bare aiohttp", target=f"<= {MAX_IDLE_CORE:.0%} of a core",
            passed=figures["idle"] <= MAX_IDLE_CORE),
    ]  # fmt: skip


def _baseline(idle_seconds: float) -> dict[str, float]:
    port = procs.free_port()
    proc = procs.spawn(
        "baseline-footprint",
        procs.python("-m", "bench.servers", "static", "--port", str(port), "--path", "/readyz"),
        cpu=procs.SERVER_CPU,
    )
    try:
        procs.wait_port(port, proc, "baseline-footprint")
        time.sleep(1.0)
        rss = procs.rss_bytes(proc.pid)
        idle = _idle(proc.pid, min(idle_seconds, 15.0))
    finally:
        procs.stop(proc)
    return {"rss": rss, "idle": idle}


def _idle(pid: int, seconds: float) -> float:
    before, began = procs.cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (procs.cpu_seconds(pid) - before) / (time.monotonic() - began)


def _sidecar(
    ctx: Context,
    pg: OwnPostgres,
    own_redis: OwnRedis,
    orchestrators: Orchestrators,
    idle_seconds: float,
) -> dict[str, Any]:
    targets = [
        {"kind": "http", "url": orchestrators.hook(orchestrators.healthy[0]), "name": "orch-a"},
        {"kind": "http", "url": orchestrators.hook(orchestrators.healthy[1]), "name": "orch-b"},
        {"kind": "redis-stream", "url": own_redis.url, "namespace": "bench", "mode": "all",
         "maxlen": 100_000, "name": "stream", "scope": "coordinator"},
        {"kind": "redis-pubsub", "url": own_redis.url, "channel": "feedback", "name": "pubsub"},
    ]  # fmt: skip
    sidecar = Sidecar(
        "sidecar-footprint",
        {"SIDECAR_DATABASE_URL": pg.dsn, "SIDECAR_TARGETS": json.dumps(targets)},
    ).start()
    try:
        time.sleep(2.0)  # past start-up's first round of checks
        rss_start = procs.rss_bytes(sidecar.pid)
        idle = _idle(sidecar.pid, idle_seconds)

        samples: list[tuple[float, int]] = []
        soak_start = time.monotonic()

        def sample() -> None:
            if not samples or time.monotonic() - samples[-1][0] >= 5.0:
                samples.append((time.monotonic(), procs.rss_bytes(sidecar.pid)))

        count = int(RATE * ctx.soak)
        result = run_in_process(
            "loadgen-soak",
            {"mode": "rate", "url": sidecar.url + "/feedback", "rate": RATE, "count": count,
             "body": "event", "coordinators": 10, "connections": 8},
            timeout=ctx.soak + 120,
            while_running=sample,
        )  # fmt: skip
        time.sleep(2.0)  # let the targets catch up before the last reading
        rss_end = procs.rss_bytes(sidecar.pid)
        warm_at = soak_start + 0.1 * ctx.soak
        rss_warm = next((rss for at, rss in samples if at >= warm_at), rss_start)
        metrics = sidecar.metrics()
        delivered = {
            name: metric_sum(metrics, "sidecar_feedback_delivered_total", target=name)
            for name in ("orch-a", "orch-b", "stream", "pubsub")
        }
        dropped = metric_sum(metrics, "sidecar_feedback_dropped_total")
    finally:
        sidecar.stop()
    ctx.extra["footprint_rss_samples_mib"] = [
        (round(at - soak_start, 1), round(rss / MIB, 2)) for at, rss in samples
    ]
    statuses = result["statuses"]
    note = (
        f"sent {count:,}, delivered "
        + ", ".join(f"{name} {n:,.0f}" for name, n in delivered.items())
        + (f", dropped {dropped:,.0f}" if dropped else "")
        + f"; POST p99 {result['latency']['p99']:.1f} ms"
    )
    if set(statuses) != {"202"}:
        note += "; answers " + ", ".join(f"{k}x{v}" for k, v in statuses.items())
    return {
        "rss_start": rss_start,
        "rss_warm": rss_warm,
        "rss_end": rss_end,
        "idle": idle,
        "note": note,
    }
