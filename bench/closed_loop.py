"""The closed loop: store -> sidecar -> Redis -> pipeline -> store, with the real packages.

A pipeline (bench/loop_pipeline.py: market-data-pipeline's `RateCoordinator` pacing a
producer, its `FeedbackConsumer` scaling the rate) feeds one or two store replicas
(bench/loop_store.py: market-data-store's `WriteCoordinator`s `bars` and `quotes`,
drop-oldest, sinks slower than the producer at full rate, its `HttpFeedbackBroadcaster`
POSTing to the replica's own `market-data-sidecar run`), all on one redis-server of the
benchmark's own. In one run, over the same window:

- (a) no feedback: the stores' broadcasters off, the pipeline at full rate;
- (b) `scope: coordinator` (each coordinator's events, today's relay), one replica;
- (c) `scope: fleet`, one replica;
- (d) `scope: fleet`, two replicas (each sidecar its own `SIDECAR_INSTANCE`);
- (e) `scope: coordinator`, two replicas, for contrast with (d).

Per scenario: items the stores dropped, the peak queue depth, the rate written by the
sinks and the rate the pipeline produced. Then the time from a store-shaped POST to the
pipeline's new rate (p50/p99, both scopes), and the stream entries a replica appends per
minute with 10,000 coordinators and the default resync interval, `fleet` against
`coordinator`.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from bench import procs
from bench.harness import Context, Row
from bench.redis_server import OwnRedis
from bench.sidecar import Sidecar
from bench.stats import percentile

NAME = "loop"
ROOT = Path(__file__).resolve().parents[1]
CONSUMERS_PYTHON = ROOT / ".cache" / "consumers" / "venv" / "bin" / "python"
HERE = Path(__file__).resolve().parent
CAPACITY = 1000
#: The producer's full rate per replica, items/s (half to `bars`, half to `quotes`).
RATE_PER_REPLICA = 1200
#: Each replica's sinks, items/s: slower than the 600/s each coordinator gets at full
#: rate, faster than the 300/s at half rate; not alike, so the coordinators cross their
#: watermarks at different times, as a real store's do.
SINKS = ({"bars": 360.0, "quotes": 450.0}, {"bars": 330.0, "quotes": 480.0})
STORE_POST = {"capacity": CAPACITY, "reason": None}
SCALES = {"ok": 1.0, "soft": 0.5, "hard": 0.0}
COORDINATORS_AT_SCALE = 10_000


@dataclass(frozen=True)
class Scenario:
    label: str
    scope: str | None  # None: no feedback at all
    replicas: int


SCENARIOS = (
    Scenario("(a) no feedback", None, 1),
    Scenario("(b) scope coordinator, 1 replica", "coordinator", 1),
    Scenario("(c) scope fleet, 1 replica", "fleet", 1),
    Scenario("(d) scope fleet, 2 replicas", "fleet", 2),
    Scenario("(e) scope coordinator, 2 replicas", "coordinator", 2),
)

Line = dict[str, Any]


class Child:
    """A process in the consumers venv that reports in JSON lines, collected by a thread."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.proc = procs.spawn(
            name, argv, env=env, cpu=procs.LOAD_CPU, stdout=subprocess.PIPE, stdin=subprocess.PIPE
        )
        self.lines: list[Line] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._changed:
                self.lines.append(json.loads(raw))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, predicate: Callable[[Line], bool], timeout: float, since: int = 0) -> Line:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines[since:]:
                    if predicate(line):
                        return line
                remaining = deadline - time.monotonic()
                if self.proc.poll() is not None or remaining <= 0:
                    raise RuntimeError(
                        f"{self.name}: no matching line (exit {self.proc.returncode});\n"
                        f"{procs.log_of(self.name)[-3000:]}"
                    )
                self._changed.wait(min(remaining, 0.5))

    def last(self, event: str) -> Line:
        with self._changed:
            return next(line for line in reversed(self.lines) if line.get("event") == event)

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        procs.stop(self.proc)


def _event(name: str) -> Callable[[Line], bool]:
    return lambda line: line.get("event") == name


def _scale_is(scale: float) -> Callable[[Line], bool]:
    return lambda line: line.get("event") == "rate" and line["scale"] == scale


def _pipeline(
    redis_url: str, feedback: bool, stores: list[int], label: str, rate: int | None = None
) -> Child:
    env = {"EVENT_BUS_BACKEND": "redis" if feedback else "memory", "REDIS_URL": redis_url}
    rate = rate or RATE_PER_REPLICA * max(len(stores), 1)
    argv = [str(CONSUMERS_PYTHON), str(HERE / "loop_pipeline.py"), "--rate", str(rate),
            "--stores", ",".join(f"127.0.0.1:{port}" for port in stores)]  # fmt: skip
    child = Child(f"loop-pipeline-{label}", argv, env)
    # The consumer reads from `$`: it must be listening before the first crossing.
    child.wait_for(_event("ready"), 60)
    return child


def _store(replica: int, port: int, feedback: str, label: str) -> Child:
    sinks = SINKS[replica]
    argv = [str(CONSUMERS_PYTHON), str(HERE / "loop_store.py"), "--port", str(port),
            "--capacity", str(CAPACITY), "--bars", str(sinks["bars"]),
            "--quotes", str(sinks["quotes"]), "--feedback", feedback]  # fmt: skip
    child = Child(f"loop-store-{label}-{replica}", argv, {})
    child.wait_for(_event("ready"), 60)
    return child


def _sidecar(own: OwnRedis, scope: str, instance: str, namespace: str = "mdp") -> Sidecar:
    target = {"kind": "redis-stream", "name": "pulse", "url": own.url, "scope": scope,
              "namespace": namespace}  # fmt: skip
    env = {"SIDECAR_TARGETS": json.dumps([target]), "SIDECAR_INSTANCE": instance}
    return Sidecar(f"sidecar-loop-{instance}", env).start()


def _flush(own: OwnRedis) -> None:
    with redis.Redis.from_url(own.url) as client:
        client.flushdb()


# -- (a)-(e): the loop --------------------------------------------------------------------


def _scenario(ctx: Context, own: OwnRedis, scenario: Scenario) -> dict[str, float]:
    _flush(own)
    window = ctx.seconds(30.0, 15.0)
    label = f"{scenario.scope or 'none'}-{scenario.replicas}"
    sidecars: list[Sidecar] = []
    children: list[Child] = []
    try:
        urls = [""] * scenario.replicas
        if scenario.scope is not None:
            for replica in range(scenario.replicas):
                sidecar = _sidecar(own, scenario.scope, f"replica-{replica}")
                sidecars.append(sidecar)
                urls[replica] = f"{sidecar.url}/feedback"
        ports = [procs.free_port() for _ in range(scenario.replicas)]
        pipeline = _pipeline(own.url, scenario.scope is not None, ports, label)
        children.append(pipeline)
        if sidecars:
            _warm_up(own, sidecars)
        stores = [_store(n, port, urls[n], label) for n, port in enumerate(ports)]
        children += stores
        began = time.monotonic()
        pipeline.send("start")
        time.sleep(window)  # the measurement window itself, not a synchronisation
        elapsed = time.monotonic() - began
        for store in stores:
            store.stop()
        totals = _store_totals(stores)
        sent = pipeline.last("sent")["items"]
        changes = sum(1 for line in pipeline.lines if line.get("event") == "rate")
    finally:
        for child in children:
            child.stop()
        for sidecar in sidecars:
            sidecar.stop()
    replicas = scenario.replicas
    return {"dropped": totals["dropped"] / replicas, "peak": totals["peak"],
            "written": totals["written"] / elapsed / replicas, "produced": sent / elapsed,
            "changes": changes, "elapsed": elapsed}  # fmt: skip


def _warm_up(own: OwnRedis, sidecars: list[Sidecar]) -> None:
    """A steady fleet, not a fresh one: a fresh fleet holds back every composite short of
    `hard` for one renewal (5 s) while members rebuild, so a loop started cold runs
    unthrottled until then. Each replica reports an idle coordinator (`ok`, so it never
    decides the worst) and the loop starts once a composite is on the stream."""
    payload = {**STORE_POST, "coordinator_id": "warm-up", "queue_size": 0, "level": "ok",
               "utilization": 0.0}  # fmt: skip
    for sidecar in sidecars:
        sidecar.post_json("/feedback", payload)
    with redis.Redis.from_url(own.url) as client:
        _wait(lambda: _added(client, "mdp:mdp.telemetry.feedback") >= 1, 30)


def _store_totals(stores: list[Child]) -> dict[str, float]:
    dropped = written = peak = 0
    for store in stores:
        for stats in store.last("stats")["coordinators"].values():
            dropped += stats["dropped"]
            written += stats["written"]
            peak = max(peak, stats["peak"])
    return {"dropped": dropped, "written": written, "peak": peak}


def _loop_rows(results: dict[str, dict[str, float]]) -> list[Row]:
    base = results[SCENARIOS[0].label]
    rows: list[Row] = []
    for scenario in SCENARIOS:
        got = results[scenario.label]

        def baseline(key: str, scenario: Scenario = scenario) -> float | None:
            return None if scenario.scope is None else base[key]

        note = (
            f"{got['elapsed']:.0f} s; produced {got['produced']:,.0f} items/s "
            f"(full rate {RATE_PER_REPLICA * scenario.replicas:,}); "
            f"{got['changes']:.0f} rate changes in the pipeline"
        )
        rows += [
            Row(NAME, f"{scenario.label}: items dropped per store replica", got["dropped"], "items",
                baseline("dropped"), "no feedback", note=note),
            Row(NAME, f"{scenario.label}: peak queue depth (capacity {CAPACITY:,})",
                got["peak"], "items", baseline("peak"), "no feedback"),
            Row(NAME, f"{scenario.label}: rate written per store replica", got["written"],
                "items/s", baseline("written"), "no feedback"),
        ]  # fmt: skip
    return rows


# -- POST to the pipeline's new rate ------------------------------------------------------


def _latency(ctx: Context, own: OwnRedis, scope: str) -> list[float]:
    _flush(own)
    trials = int(ctx.seconds(60, 20))
    sidecar = _sidecar(own, scope, f"latency-{scope}")
    pipeline: Child | None = None
    latencies: list[float] = []
    try:
        pipeline = _pipeline(own.url, True, [], f"latency-{scope}")
        # One round not counted: a fresh fleet holds its first milder composite back for
        # one renewal (5 s), so that members rebuilding their state show no false `ok`.
        for trial in range(-2, trials):
            level = "hard" if trial % 2 == 0 else "ok"
            depth = {"hard": 850, "ok": 100}[level]
            payload = {**STORE_POST, "coordinator_id": "bars", "queue_size": depth,
                       "level": level, "utilization": depth / CAPACITY}  # fmt: skip
            since = len(pipeline.lines)
            posted = time.monotonic()
            status, body = sidecar.post_json("/feedback", payload)
            if status != 202:
                raise RuntimeError(f"POST /feedback answered {status}: {body[:200]!r}")
            line = pipeline.wait_for(_scale_is(SCALES[level]), 15, since)
            if trial >= 0:
                latencies.append((line["t"] - posted) * 1000)
    finally:
        if pipeline is not None:
            pipeline.stop()
        sidecar.stop()
    return latencies


# -- stream entries per minute at 10,000 coordinators -------------------------------------


def _entries_per_minute(ctx: Context, own: OwnRedis) -> dict[str, float]:
    """Both scopes side by side on one server, each in a namespace of its own."""
    _flush(own)
    window = ctx.seconds(60.0, 30.0)
    sidecars = {scope: _sidecar(own, scope, f"scale-{scope}", f"scale-{scope}")
                for scope in ("coordinator", "fleet")}  # fmt: skip
    client = redis.Redis.from_url(own.url)
    try:
        for start in range(0, COORDINATORS_AT_SCALE, 500):
            batch = [
                {**STORE_POST, "coordinator_id": f"coord-{n:05d}", "queue_size": n % 1000,
                 "level": ("ok", "soft", "hard")[n % 3], "utilization": (n % 1000) / 1000}
                for n in range(start, start + 500)
            ]  # fmt: skip
            for sidecar in sidecars.values():
                status, body = sidecar.post_json("/feedback", batch)
                if status != 202:
                    raise RuntimeError(f"POST /feedback answered {status}: {body[:200]!r}")
        keys = {scope: f"scale-{scope}:scale-{scope}.telemetry.feedback" for scope in sidecars}
        _wait(lambda: _added(client, keys["coordinator"]) >= COORDINATORS_AT_SCALE, 60)
        _wait(lambda: _added(client, keys["fleet"]) >= 1, 60)
        before = {scope: _added(client, key) for scope, key in keys.items()}
        began = time.monotonic()
        time.sleep(window)  # the measurement window itself
        elapsed = time.monotonic() - began
        return {
            scope: (_added(client, key) - before[scope]) * 60 / elapsed
            for scope, key in keys.items()
        }
    finally:
        client.close()
        for sidecar in sidecars.values():
            sidecar.stop()


def _added(client: redis.Redis, key: str) -> int:
    """Entries ever appended to the stream (XINFO STREAM's entries-added: MAXLEN trims)."""
    try:
        info = client.xinfo_stream(key)
    except redis.ResponseError:
        return 0
    return int(info["entries-added"])


def _wait(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"not within {timeout:g}s")
        time.sleep(0.05)


# -- the run ------------------------------------------------------------------------------


def ensure_consumers() -> None:
    """The consumers' venv, built by `.ci/consumers.sh` (idempotent) when missing."""
    if not CONSUMERS_PYTHON.exists():
        print("the consumers' venv is missing: bash .ci/consumers.sh", flush=True)
        subprocess.run(["bash", str(ROOT / ".ci" / "consumers.sh")], check=True)


def run(ctx: Context) -> list[Row]:
    ensure_consumers()
    own = OwnRedis().start()
    try:
        results = {scenario.label: _scenario(ctx, own, scenario) for scenario in SCENARIOS}
        rows = _loop_rows(results)
        for scope in ("coordinator", "fleet"):
            latencies = _latency(ctx, own, scope)
            rows += [
                Row(NAME, f"POST to the pipeline's new rate, scope {scope}, p{q}",
                    percentile(sorted(latencies), q), "ms",
                    note=f"{len(latencies)} alternations hard/ok" if q == 50 else "")
                for q in (50, 99)
            ]  # fmt: skip
        per_minute = _entries_per_minute(ctx, own)
        rows.append(
            Row(NAME, f"stream entries per minute per replica, {COORDINATORS_AT_SCALE:,} "
                "coordinators, default resync, scope fleet", per_minute["fleet"], "entries",
                per_minute["coordinator"], "scope coordinator")
        )  # fmt: skip
    finally:
        own.stop()
    return rows
