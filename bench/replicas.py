"""Every replica of the pipeline hears each change: copies against a single append.

The real consumers read with one group and one fixed consumer name in every replica, so
Redis hands each entry to one of them. With the same real packages as bench/closed_loop.py
(market-data-store's `WriteCoordinator`s and broadcaster, the sidecar in `fleet` scope,
Redis, market-data-pipeline's `RateCoordinator` and `FeedbackConsumer`), in one run:

- the closed loop with three pipeline replicas, each producing a third of 1,800 items/s
  into one store replica (sinks of 810 items/s): items dropped, peak depth and rate
  written, with `max_copies: 1` (one append per change, as before) against the default
  copies;
- the time from a store-shaped POST to the *last* replica's new rate, p50/p99, for 1, 3
  and 8 replicas;
- stream entries per change, and per minute at rest (the fleet at `hard`, then `ok`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import redis

from bench import procs
from bench.closed_loop import (
    CAPACITY,
    RATE_PER_REPLICA,
    SCALES,
    STORE_POST,
    Child,
    _added,
    _flush,
    _pipeline,
    _scale_is,
    _store,
    _store_totals,
    _wait,
    ensure_consumers,
)
from bench.harness import Context, Row
from bench.redis_server import OwnRedis
from bench.sidecar import Sidecar
from bench.stats import percentile

NAME = "replicas"
KEY = "mdp:mdp.telemetry.feedback"
LOOP_REPLICAS = 3
#: The three replicas' load, items/s: one and a half times a store replica's full rate,
#: so that two unthrottled replicas still overflow its sinks (810 items/s).
LOOP_RATE = RATE_PER_REPLICA * 3 // 2
LATENCY_REPLICAS = (1, 3, 8)


def _sidecar(own: OwnRedis, label: str, **options: object) -> Sidecar:
    target = {"kind": "redis-stream", "name": "pulse", "url": own.url, **options}
    env = {"SIDECAR_TARGETS": json.dumps([target]), "SIDECAR_INSTANCE": label}
    return Sidecar(f"sidecar-replicas-{label}", env).start()


def _post(sidecar: Sidecar, coordinator: str, level: str) -> None:
    depth = {"hard": 850, "soft": 600, "ok": 100}[level]
    payload = {**STORE_POST, "coordinator_id": coordinator, "queue_size": depth,
               "level": level, "utilization": depth / CAPACITY}  # fmt: skip
    status, body = sidecar.post_json("/feedback", payload)
    if status != 202:
        raise RuntimeError(f"POST /feedback answered {status}: {body[:200]!r}")


def _warm(sidecar: Sidecar, pipelines: list[Child], own: OwnRedis, *, every: bool) -> None:
    """A steady fleet: a `hard` and back to `ok`. With copies, every replica hears both
    (and the sidecar has learnt how many there are); with one append per change, one
    does, whichever Redis picks: the stream is waited on instead."""
    with redis.Redis.from_url(own.url) as client:
        before = _added(client, KEY)
        for level in ("hard", "ok"):
            marks = [len(p.lines) for p in pipelines]
            _post(sidecar, "warm-up", level)
            if not every:
                continue
            for pipeline, mark in zip(pipelines, marks, strict=True):
                if _current(pipeline) != SCALES[level]:
                    pipeline.wait_for(_scale_is(SCALES[level]), 15, mark)
        _wait(lambda: _added(client, KEY) >= before + 2, 15)


def _current(pipeline: Child) -> float:
    """The replica's scale now: full until its first change."""
    rates = [line["scale"] for line in pipeline.lines if line.get("event") == "rate"]
    return float(rates[-1]) if rates else 1.0


# -- the loop with three replicas ------------------------------------------------------------


def _loop(ctx: Context, own: OwnRedis, copies: bool) -> dict[str, float]:
    _flush(own)
    window = ctx.seconds(30.0, 15.0)
    label = "copies" if copies else "single"
    options = {} if copies else {"max_copies": 1}
    sidecar = _sidecar(own, f"loop-{label}", **options)
    children: list[Child] = []
    try:
        port = procs.free_port()
        share = LOOP_RATE // LOOP_REPLICAS
        pipelines = [
            _pipeline(own.url, True, [port], f"{label}-{n}", rate=share)
            for n in range(LOOP_REPLICAS)
        ]
        children += pipelines
        _warm(sidecar, pipelines, own, every=copies)
        store = _store(0, port, f"{sidecar.url}/feedback", label)
        children.append(store)
        began = time.monotonic()
        for pipeline in pipelines:
            pipeline.send("start")
        time.sleep(window)  # the measurement window itself, not a synchronisation
        elapsed = time.monotonic() - began
        store.stop()
        totals = _store_totals([store])
        changes = sum(
            1 for pipeline in pipelines for line in pipeline.lines if line.get("event") == "rate"
        )
    finally:
        for child in children:
            child.stop()
        sidecar.stop()
    return {"dropped": totals["dropped"], "peak": totals["peak"],
            "written": totals["written"] / elapsed, "changes": changes / LOOP_REPLICAS,
            "elapsed": elapsed}  # fmt: skip


def _loop_rows(single: dict[str, float], copies: dict[str, float]) -> list[Row]:
    label = f"{LOOP_REPLICAS} pipeline replicas, copies"
    note = (
        f"{copies['elapsed']:.0f} s; {copies['changes']:.0f} rate changes per replica "
        f"(single append: {single['changes']:.0f})"
    )
    return [
        Row(NAME, f"{label}: items dropped", copies["dropped"], "items", single["dropped"],
            "one append per change", note=note),
        Row(NAME, f"{label}: peak queue depth (capacity {CAPACITY:,})", copies["peak"], "items",
            single["peak"], "one append per change"),
        Row(NAME, f"{label}: rate written", copies["written"], "items/s", single["written"],
            "one append per change"),
    ]  # fmt: skip


# -- a change to the last replica's rate -----------------------------------------------------


@dataclass(frozen=True)
class Latency:
    latencies: list[float]
    per_change: float
    at_rest: dict[str, float]


def _latency(ctx: Context, own: OwnRedis, replicas: int) -> Latency:
    _flush(own)
    trials = int(ctx.seconds(40, 16))
    sidecar = _sidecar(own, f"latency-{replicas}")
    pipelines: list[Child] = []
    latencies: list[float] = []
    try:
        pipelines = [_pipeline(own.url, True, [], f"lat-{replicas}-{n}") for n in range(replicas)]
        _warm(sidecar, pipelines, own, every=True)
        client = redis.Redis.from_url(own.url)
        before = _added(client, KEY)
        for trial in range(trials):
            level = "hard" if trial % 2 == 0 else "ok"
            marks = [len(p.lines) for p in pipelines]
            posted = time.monotonic()
            _post(sidecar, "bars", level)
            last = max(
                p.wait_for(_scale_is(SCALES[level]), 15, mark)["t"]
                for p, mark in zip(pipelines, marks, strict=True)
            )
            latencies.append((last - posted) * 1000)
            time.sleep(0.6)  # past the follow-up announcement, so each change is counted whole
        per_change = (_added(client, KEY) - before) / trials
        at_rest = {level: _at_rest(ctx, sidecar, client, level) for level in ("hard", "ok")}
        client.close()
    finally:
        for pipeline in pipelines:
            pipeline.stop()
        sidecar.stop()
    return Latency(latencies, per_change, at_rest)


def _at_rest(ctx: Context, sidecar: Sidecar, client: redis.Redis, level: str) -> float:
    """Entries a minute while nothing changes, the fleet at `level`."""
    _post(sidecar, "bars", level)
    time.sleep(1.0)  # the change and its follow-up are not "at rest"
    window = ctx.seconds(20.0, 10.0)
    before = _added(client, KEY)
    time.sleep(window)  # the measurement window itself
    return (_added(client, KEY) - before) * 60 / window


def _latency_rows(results: dict[int, Latency]) -> list[Row]:
    rows: list[Row] = []
    for replicas, got in results.items():
        latencies = sorted(got.latencies)
        rows += [
            Row(NAME, f"POST to the last of {replicas} replicas' new rate, p{q}",
                percentile(latencies, q), "ms",
                note=f"{len(latencies)} alternations hard/ok" if q == 50 else "")
            for q in (50, 99)
        ]  # fmt: skip
        rows += [
            Row(NAME, f"{replicas} replicas: stream entries per change", got.per_change,
                "entries"),
            Row(NAME, f"{replicas} replicas: stream entries per minute at rest, fleet hard",
                got.at_rest["hard"], "entries"),
            Row(NAME, f"{replicas} replicas: stream entries per minute at rest, fleet ok",
                got.at_rest["ok"], "entries"),
        ]  # fmt: skip
    return rows


def run(ctx: Context) -> list[Row]:
    ensure_consumers()
    own = OwnRedis().start()
    try:
        single = _loop(ctx, own, copies=False)
        copies = _loop(ctx, own, copies=True)
        rows = _loop_rows(single, copies)
        rows += _latency_rows({r: _latency(ctx, own, r) for r in LATENCY_REPLICAS})
    finally:
        own.stop()
    return rows
