"""Resync: what re-publishing every coordinator's state costs, and what it buys a consumer.

A real sidecar with four `redis-stream` targets on a redis-server of the benchmark's own
learns N coordinators (1,000 and 10,000) from the store's `POST /feedback`, then idles.

- **Cost.** Sidecar CPU over a window with resync every `INTERVAL` seconds, beside the
  same sidecar with resync off (the baseline, same coordinators, same window); the
  difference per resync, scaled to the default 30 s interval, is the CPU share resync
  takes in production. Per target, the rate at which one resync is written
  (`sidecar_feedback_resynced_total` sampled every 20 ms).
- **Benefit.** A consumer joining after the last crossing (a Core `RedisStreamsBus`
  subscriber, group at `$`, as the pipeline's and the orchestrator's are) until it holds
  the current level of a coordinator: with resync, at most one interval; without, never
  (until the store's next crossing, which here never comes).
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from typing import Any

from market_data_core.events import RedisStreamsBus

from bench import procs
from bench.harness import Context, Row
from bench.redis_server import OwnRedis
from bench.sidecar import Sidecar, metric_sum

NAME = "resync"
TARGETS = 4
#: Resync interval in the benchmark (the default is 30 s: the CPU share is scaled to it).
INTERVAL = 5.0
DEFAULT_INTERVAL = 30.0
#: Most CPU share of one core that resync may take at the default interval.
MAX_SHARE = 0.05
LEVELS = ("ok", "soft", "hard")


def run(ctx: Context) -> list[Row]:
    own = OwnRedis().start()
    rows: list[Row] = []
    try:
        for coordinators in (1_000, 10_000):
            rows += _cost(ctx, own, coordinators)
        rows.append(_time_to_level(ctx, own))
    finally:
        own.stop()
    return rows


def _targets(own: OwnRedis) -> list[dict[str, Any]]:
    return [
        {"kind": "redis-stream", "name": f"t{n}", "url": own.url, "namespace": f"resync{n}",
         "maxlen": 50_000, "buffer": 20_000, "scope": "coordinator"}
        for n in range(TARGETS)
    ]  # fmt: skip


def _sidecar(own: OwnRedis, interval: float, label: str) -> Sidecar:
    env = {
        "SIDECAR_TARGETS": json.dumps(_targets(own)),
        "SIDECAR_RESYNC_INTERVAL": str(interval),
    }
    return Sidecar(f"sidecar-resync-{label}", env).start()


def _teach(sidecar: Sidecar, coordinators: int) -> None:
    """The store's crossings for every coordinator, then silence; waits until delivered."""
    for start in range(0, coordinators, 500):
        batch = [
            {"coordinator_id": f"coord-{n:05d}", "queue_size": n % 1000, "capacity": 1000,
             "level": LEVELS[n % 3], "reason": None, "utilization": (n % 1000) / 1000}
            for n in range(start, min(start + 500, coordinators))
        ]  # fmt: skip
        status, body = sidecar.post_json("/feedback", batch)
        if status != 202:
            raise RuntimeError(f"POST /feedback answered {status}: {body[:200]!r}")
    _wait(
        lambda: (
            metric_sum(sidecar.metrics(), "sidecar_feedback_delivered_total")
            >= coordinators * TARGETS
        ),
        60,
        "the store's events delivered",
    )


def _cost(ctx: Context, own: OwnRedis, coordinators: int) -> list[Row]:
    window = ctx.seconds(4 * INTERVAL, 2 * INTERVAL)
    measured: dict[str, dict[str, float]] = {}
    for label, interval in (("off", 0.0), ("on", INTERVAL)):
        sidecar = _sidecar(own, interval, f"{label}-{coordinators}")
        try:
            _teach(sidecar, coordinators)
            rates = _resync_rates(sidecar, coordinators) if interval else []
            resynced_before = metric_sum(sidecar.metrics(), "sidecar_feedback_resynced_total")
            cpu_before, started = procs.cpu_seconds(sidecar.pid), time.monotonic()
            time.sleep(window)  # the measurement window itself, not a synchronisation
            cpu = procs.cpu_seconds(sidecar.pid) - cpu_before
            elapsed = time.monotonic() - started
            resynced = (
                metric_sum(sidecar.metrics(), "sidecar_feedback_resynced_total") - resynced_before
            )
        finally:
            sidecar.stop()
        measured[label] = {
            "share": cpu / elapsed,
            "resynced": resynced,
            "rate": statistics.median(rates) if rates else 0.0,
            "elapsed": elapsed,
        }
    on, off = measured["on"], measured["off"]
    rounds = on["resynced"] / (coordinators * TARGETS) if on["resynced"] else 0.0
    cpu_per_round = max(on["share"] - off["share"], 0.0) * on["elapsed"] / max(rounds, 1e-9)
    share_at_default = cpu_per_round / DEFAULT_INTERVAL
    label = f"{coordinators:,} coordinators x {TARGETS} targets"
    return [
        Row(NAME, f"CPU share of a core, resync every {INTERVAL:g}s, {label}", on["share"],
            "cores", off["share"], "same sidecar, resync off",
            note=f"{rounds:.1f} rounds in {on['elapsed']:.0f}s; "
                 f"{cpu_per_round * 1000:.0f} ms CPU per round"),
        Row(NAME, f"CPU share at the default {DEFAULT_INTERVAL:g}s interval, {label}",
            share_at_default, "cores", target=f"<= {MAX_SHARE:g} of a core",
            passed=share_at_default <= MAX_SHARE,
            note="(CPU per round, resync on minus off) / 30 s"),
        Row(NAME, f"resync events/s per target, {label}", on["rate"], "events/s",
            note="median over the targets of one round's rate"),
    ]  # fmt: skip


def _resync_rates(sidecar: Sidecar, coordinators: int) -> list[float]:
    """Per target, the rate at which one whole resync round was written."""
    started: dict[str, float] = {}
    finished: dict[str, float] = {}
    baseline: dict[str, float] = {}
    deadline = time.monotonic() + 4 * INTERVAL + 60
    while len(finished) < TARGETS and time.monotonic() < deadline:
        samples, now = sidecar.metrics(), time.monotonic()
        for n in range(TARGETS):
            name = f"t{n}"
            count = metric_sum(samples, "sidecar_feedback_resynced_total", target=name)
            baseline.setdefault(name, count)
            if name not in started and count > baseline[name]:
                started[name] = now  # the first batch is in: the round began a batch ago
            elif (
                name in started and name not in finished and count - baseline[name] >= coordinators
            ):
                finished[name] = now
        time.sleep(0.02)
    return [coordinators / max(finished[n] - started[n], 0.02) for n in finished]


def _time_to_level(ctx: Context, own: OwnRedis) -> Row:
    """A consumer joining after the last event: seconds until it holds the current level."""
    trials = int(ctx.seconds(8, 3))
    results: dict[str, list[float | None]] = {}
    for label, interval in (("off", 0.0), ("on", INTERVAL)):
        sidecar = _sidecar(own, interval, f"join-{label}")
        try:
            _teach(sidecar, 100)
            results[label] = []
            for _ in range(trials):
                # A consumer starts at any point of the interval: a random phase, not a
                # wait for anything (back to back, every trial would start just after a
                # round and measure the worst case only).
                time.sleep(random.uniform(0, INTERVAL))
                joined = asyncio.run(_join(own.url, "resync0", "coord-00002", 2 * INTERVAL + 2))
                results[label].append(joined)
        finally:
            sidecar.stop()
    on = [t for t in results["on"] if t is not None]
    never = sum(t is None for t in results["off"])
    worst = max(on) if len(on) == len(results["on"]) else None
    mean = statistics.mean(on) if on else None
    return Row(
        NAME, f"consumer start to the current level (worst of {trials}, random phase), "
        f"resync every {INTERVAL:g}s", worst, "s", target=f"<= {INTERVAL:g} s (one interval)",
        passed=worst is not None and worst <= INTERVAL + 0.5,
        note=f"each: {', '.join(f'{t:.2f}' for t in on)} s (mean "
             f"{mean if mean is None else round(mean, 2)}); resync off: {never} of {trials} "
             f"never got it within {2 * INTERVAL + 2:g} s",
    )  # fmt: skip


async def _join(url: str, namespace: str, coordinator: str, timeout: float) -> float | None:
    """Subscribe as the real consumers do (a new group at `$`); seconds until `coordinator`
    arrives, or None."""
    bus = RedisStreamsBus(redis_url=url, namespace=namespace)
    stream = f"{namespace}.telemetry.feedback"
    started = time.monotonic()
    group = f"join-{time.monotonic_ns()}"
    try:
        async with asyncio.timeout(timeout):
            async for envelope in bus.subscribe(stream, group=group, consumer="bench"):
                if getattr(envelope.payload, "coordinator_id", None) == coordinator:
                    return time.monotonic() - started
    except TimeoutError:
        return None
    finally:
        await bus.close()
    return None


def _wait(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout:g}s")
        time.sleep(0.05)
