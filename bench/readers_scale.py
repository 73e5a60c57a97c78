"""Readers at scale: a year-old Redis, seen by the stream's writer and by everyone else.

A redis-server of the benchmark's own holds the default key with either one group of
`CONSUMERS` consumer names (Redis keeps every name a pod ever used) or `GROUPS` groups, each
holding `REFS` pending references to entries already trimmed. A real sidecar with one
`redis-stream` target on it runs for a while; meanwhile another client (a process of its
own) PINGs Redis in a loop, and the longest stall it sees is how long the sidecar held Redis
at once; the kubelet's `/readyz` is probed every 20 ms on a new connection. Before: the
sidecar of `BENCH_READERS_SCALE_BEFORE` (a git revision exported and put first on
`PYTHONPATH`), in the same run; after: this one.

    .venv/bin/python -m bench.run --only readers-scale [--quick]
"""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from bench import procs
from bench.harness import Context, Row
from bench.readers import exported
from bench.redis_server import OwnRedis
from bench.sidecar import Sidecar, metric_sum, request
from bench.stats import percentile

NAME = "readers-scale"
KEY = "mdp:mdp.telemetry.feedback"
CONSUMERS = 40_000
GROUPS = 2_000
REFS = 30
BEFORE = os.environ.get("BENCH_READERS_SCALE_BEFORE", "fdac926")
PROBE_EVERY = 0.02
PING_EVERY = 0.001


@dataclass
class Seen:
    """What the run observed from outside the sidecar."""

    pings: list[float] = field(default_factory=list)
    probes: list[float] = field(default_factory=list)
    cpu_share: float = 0.0
    readers: int | None = None
    pending_left: int = 0
    acked: float = 0.0
    #: The longest command Redis ran meanwhile, by its own clock (SLOWLOG), and its name.
    longest_command: float = 0.0
    longest_name: str = ""


def run(ctx: Context) -> list[Row]:
    seconds = ctx.seconds(20, 10)
    own = OwnRedis().start()
    rows: list[Row] = []
    try:
        client = redis.Redis.from_url(own.url, decode_responses=True)
        for case, setup in (("40,000 consumers", _consumers), ("2,000 groups", _groups)):
            with exported(BEFORE) as before:
                old = _observe(own, client, setup, seconds, before)
            new = _observe(own, client, setup, seconds, None)
            rows += _rows(case, old, new)
    finally:
        own.stop()
    return rows


def _consumers(client: redis.Redis) -> None:
    client.xgroup_create(KEY, "pipeline", id="$", mkstream=True)
    for start in range(0, CONSUMERS, 5000):
        pipe = client.pipeline(transaction=False)
        for i in range(start, start + 5000):
            pipe.xgroup_createconsumer(KEY, "pipeline", f"pipeline-7d9f8c-{i:05d}")
        pipe.execute()


def _groups(client: redis.Redis) -> None:
    client.xgroup_create(KEY, "group-0000", id="$", mkstream=True)
    pipe = client.pipeline(transaction=False)
    for i in range(1, GROUPS):
        pipe.xgroup_create(KEY, f"group-{i:04d}", id="$")
    for _ in range(REFS):
        pipe.xadd(KEY, {"data": "x"})
    for i in range(GROUPS):
        pipe.xreadgroup(f"group-{i:04d}", "c1", {KEY: ">"})
    pipe.execute()
    client.xtrim(KEY, maxlen=0, approximate=False)  # every reference now points at nothing


def _observe(
    own: OwnRedis,
    client: redis.Redis,
    setup: Callable[[redis.Redis], None],
    seconds: float,
    src: Path | None,
) -> Seen:
    client.flushall()  # the benchmark's own server
    setup(client)
    client.config_set("slowlog-log-slower-than", 500)  # microseconds
    client.config_set("slowlog-max-len", 10_000)
    client.slowlog_reset()
    target = {"kind": "redis-stream", "name": "pulse", "url": own.url, "scope": "coordinator"}
    env = {"SIDECAR_TARGETS": json.dumps([target])}
    if src is not None:
        env["PYTHONPATH"] = str(src)
    label = "before" if src is not None else "after"
    seen = Seen()
    stop = threading.Event()
    threads: list[threading.Thread] = []
    # PINGs from a process of their own: no thread of this one can delay them.
    context = multiprocessing.get_context("spawn")
    pings = context.Queue()
    halt = context.Event()
    pinger = context.Process(target=_ping, args=(own.url, halt, pings), daemon=True)
    pinger.start()
    sidecar = Sidecar(f"sidecar-readers-scale-{label}", env)
    try:
        started = time.monotonic()
        sidecar.start()
        cpu = procs.cpu_seconds(sidecar.pid)
        prober = threading.Thread(target=_probe, args=(sidecar.url, stop, seen.probes), daemon=True)
        prober.start()
        threads.append(prober)
        deadline = started + seconds
        while time.monotonic() < deadline:
            time.sleep(0.2)
        seen.cpu_share = (procs.cpu_seconds(sidecar.pid) - cpu) / (time.monotonic() - started)
        _, body = sidecar.get("/feedback")
        readers = json.loads(body)["targets"][0].get("readers")
        seen.readers = None if readers is None else len(readers)
        seen.acked = metric_sum(sidecar.metrics(), "sidecar_stream_trimmed_references_acked_total")
        seen.pending_left = sum(int(g["pending"]) for g in client.xinfo_groups(KEY))
        slowest = max(client.slowlog_get(10_000), key=lambda e: e["duration"], default=None)
        if slowest is not None:
            seen.longest_command = slowest["duration"] / 1e6
            seen.longest_name = str(slowest["command"])[:40]
    finally:
        stop.set()
        halt.set()
        seen.pings = pings.get(timeout=30)
        pinger.join(timeout=10)
        for thread in threads:
            thread.join(timeout=5)
        sidecar.stop()
    return seen


def _ping(url: str, halt: Any, out: Any) -> None:
    """Another client of the same Redis (a process of its own): each PING's round trip."""
    client = redis.Redis.from_url(url)
    latencies = []
    while not halt.is_set():
        started = time.perf_counter()
        client.ping()
        latencies.append(time.perf_counter() - started)
        time.sleep(PING_EVERY)
    client.close()
    out.put(latencies)


def _probe(url: str, stop: threading.Event, latencies: list[float]) -> None:
    """The kubelet: `/readyz` on a new connection every 20 ms."""
    while not stop.is_set():
        started = time.perf_counter()
        request(url + "/readyz", timeout=5)
        latencies.append(time.perf_counter() - started)
        time.sleep(PROBE_EVERY)


def _rows(case: str, before: Seen, after: Seen) -> list[Row]:
    label = f"before ({BEFORE})"
    return [
        Row(NAME, f"{case}: longest Redis stall seen by another client (PING)",
            max(after.pings) * 1000, "ms", max(before.pings) * 1000, label,
            note="includes the machine's own scheduling delays"),
        Row(NAME, f"{case}: longest command of the sidecar, by Redis's clock (SLOWLOG)",
            after.longest_command * 1000, "ms", before.longest_command * 1000, label,
            target="<= ~10 ms", passed=after.longest_command <= 0.010,
            note=f"after: {after.longest_name}; before: {before.longest_name}"),
        Row(NAME, f"{case}: /readyz p99", percentile(sorted(after.probes), 99) * 1000, "ms",
            percentile(sorted(before.probes), 99) * 1000, label),
        Row(NAME, f"{case}: sidecar CPU share of a core", after.cpu_share, "",
            before.cpu_share, label),
        Row(NAME, f"{case}: groups shown in GET /feedback (null: not read)",
            float(after.readers) if after.readers is not None else None, "",
            float(before.readers) if before.readers is not None else None, label,
            target="not null", passed=after.readers is not None),
        Row(NAME, f"{case}: references to trimmed entries acknowledged / left pending",
            after.acked, "", before.acked, label,
            note=f"left: after {after.pending_left}, before {before.pending_left}"),
    ]  # fmt: skip
