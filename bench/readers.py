"""Readers: Redis memory under consumers that never acknowledge, and a late reader's wait.

A redis-server of the benchmark's own; the real consumers (market-data-pipeline's
`FeedbackConsumer`, market-data-orchestrator's `PulseObserver`, run by the drivers of
`tests/consumers` in the venv `.ci/consumers.sh` builds) read the default key; a real
sidecar learns `COORDINATORS` coordinators from the store's `POST /feedback` and resyncs
every `RESYNC` second, so about 10,000 entries a second reach each consumer group.

- **Memory.** Redis `used_memory` and each group's pending count, sampled every 2 s over
  a soak, for the sidecar before the readers were watched (`BENCH_READERS_BEFORE`, a git
  revision exported to a temporary directory and put first on `PYTHONPATH`) and this one,
  both with `maxlen` `MAXLEN`. Before, every entry read leaves a reference for ever; after,
  references to trimmed entries are acknowledged: a plateau.
- **Fleet scope**, when this sidecar has it: the same, the target in `fleet` scope (before:
  `BENCH_READERS_FLEET_BEFORE`, a revision with scopes but without the readers).
- **Convergence.** The pipeline's group is created anew (destroyed, pipeline restarted)
  after the last crossing, with resync every 600 s: seconds from the group's creation to
  the pipeline's right rate, this sidecar against the one before.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from bench import procs
from bench.harness import Context, Row
from bench.redis_server import OwnRedis
from bench.sidecar import Sidecar, metric_sum

NAME = "readers"
ROOT = Path(__file__).resolve().parents[1]
CONSUMERS_PYTHON = ROOT / ".cache" / "consumers" / "venv" / "bin" / "python"
DRIVERS = ROOT / "tests" / "consumers"
KEY = "mdp:mdp.telemetry.feedback"
COORDINATORS = 10_000
RESYNC = 1.0
MAXLEN = 10_000
SAMPLE_EVERY = 2.0
#: Trials of the late pipeline, and how long one may wait for its rate.
TRIALS = 5
RATE_TIMEOUT = 10.0
BEFORE = os.environ.get("BENCH_READERS_BEFORE", "c88afa2")
FLEET_BEFORE = os.environ.get("BENCH_READERS_FLEET_BEFORE", "")
LEVELS = ("ok", "soft", "hard")


def run(ctx: Context) -> list[Row]:
    if not CONSUMERS_PYTHON.exists():
        raise RuntimeError(f"{CONSUMERS_PYTHON} is missing: run bash .ci/consumers.sh")
    soak = ctx.seconds(50, 25)
    own = OwnRedis().start()
    rows: list[Row] = []
    try:
        with exported(BEFORE) as before:
            rows += _memory(ctx, own, soak, COORDINATOR_CASE, before, scoped_before=False)
            rows.append(_convergence(own, before))
        if _has_scopes():
            if FLEET_BEFORE:
                with exported(FLEET_BEFORE) as fleet_before:
                    rows += _memory(ctx, own, soak, FLEET_CASE, fleet_before, scoped_before=True)
            else:
                ctx.note("readers: fleet scope not compared (BENCH_READERS_FLEET_BEFORE unset)")
        else:
            ctx.note("readers: this sidecar has no scopes; no fleet-scope row")
    finally:
        own.stop()
    return rows


@contextlib.contextmanager
def exported(revision: str) -> Iterator[Path]:
    """`src` of `revision`, exported from this repository into a temporary directory."""
    directory = Path(tempfile.mkdtemp(prefix="sidecar-bench-before-"))
    try:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", revision, "src"], check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(directory)], input=archive, check=True)
        yield directory / "src"
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _has_scopes() -> bool:
    from market_data_sidecar.settings import RedisStreamTargetSettings

    return "scope" in RedisStreamTargetSettings.model_fields


# -- memory ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    scope: str
    maxlen: int
    #: Levels the coordinators are taught, in turn.
    levels: tuple[str, ...]
    #: Changes per second of one coordinator between `hard` and `ok` during the soak.
    churn: float = 0.0

    @property
    def pending_bound(self) -> int:
        """A group's pending list within MAXLEN, plus the node approximate trimming keeps."""
        return self.maxlen + 100


#: Every coordinator's state every second: ~10,000 entries a second.
COORDINATOR_CASE = Case("coordinator", MAXLEN, LEVELS)
#: One composite per change and per resync: a coordinator flips 50 times a second (every
#: other one `ok`), so the composite changes as often, and a small MAXLEN is trimmed
#: within the soak.
FLEET_CASE = Case("fleet", 100, ("ok",), churn=50.0)


@dataclass
class Soak:
    seconds: list[float] = field(default_factory=list)
    used_memory: list[int] = field(default_factory=list)
    pending: list[dict[str, int]] = field(default_factory=list)
    acked: float = 0.0


def _memory(
    ctx: Context, own: OwnRedis, soak: float, case: Case, before: Path, *, scoped_before: bool
) -> list[Row]:
    results = {
        "before": _soak(own, soak, case, before, scoped=scoped_before),
        "after": _soak(own, soak, case, None, scoped=_has_scopes()),
    }
    b, a = results["before"], results["after"]
    churn = f", composite changing {case.churn:g}/s" if case.churn else ""
    label = (
        f"{case.scope} scope, {COORDINATORS:,} coordinators{churn}, resync {RESYNC:g}s, "
        f"maxlen {case.maxlen:,}, {soak:.0f}s"
    )
    rows = [
        Row(NAME, f"Redis used_memory growth over the second half, {label}", _slope(a) / 2**20,
            "MiB/min", _slope(b) / 2**20, "the sidecar before", target="a plateau (~0)",
            passed=_slope(a) < max(_slope(b) / 10, 1 * 2**20),
            note=f"used_memory at the end {a.used_memory[-1] / 2**20:.1f} MiB (before: "
                 f"{b.used_memory[-1] / 2**20:.1f} MiB); samples every {SAMPLE_EVERY:g}s: "
                 f"{_series(a)} (before: {_series(b)})"),
    ]  # fmt: skip
    for group in ("pipeline", "orchestrator"):
        final, most = a.pending[-1].get(group, 0), max(p.get(group, 0) for p in a.pending)
        rows.append(
            Row(NAME, f"{group} group's pending entries at the end, {label}", final, "entries",
                b.pending[-1].get(group, 0), "the sidecar before",
                target=f"<= {case.pending_bound:,}", passed=most <= case.pending_bound,
                note=f"most seen {most:,}; references to trimmed entries acknowledged by the "
                     f"sidecar: {a.acked:,.0f}")
        )  # fmt: skip
    ctx.extra[f"readers-{case.scope}"] = {
        name: {"seconds": s.seconds, "used_memory": s.used_memory, "pending": s.pending}
        for name, s in results.items()
    }
    return rows


def _soak(own: OwnRedis, seconds: float, case: Case, src: Path | None, *, scoped: bool) -> Soak:
    """One sidecar with the real consumers; samples Redis for `seconds`. `scoped`: the
    sidecar knows `scope` (and is told the case's)."""
    client = redis.Redis.from_url(own.url, decode_responses=True)
    client.flushall()  # the benchmark's own server
    consumers = [_driver(own, "pipeline_driver.py"), _driver(own, "observer_driver.py")]
    label = "after" if src is None else "before"
    sidecar: Sidecar | None = None
    try:
        for consumer in consumers:
            consumer.wait_for(lambda line: line.get("event") == "ready", 60)
        target: dict[str, Any] = {"kind": "redis-stream", "name": "pulse", "url": own.url,
                                  "maxlen": case.maxlen, "buffer": 2 * COORDINATORS}  # fmt: skip
        if scoped:
            target["scope"] = case.scope
        env = {"SIDECAR_TARGETS": json.dumps([target]), "SIDECAR_RESYNC_INTERVAL": str(RESYNC)}
        if src is not None:
            env["PYTHONPATH"] = str(src)
        sidecar = Sidecar(f"sidecar-readers-{case.scope}-{label}", env).start()
        _teach(sidecar, case.levels)
        result = Soak()
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) <= seconds:
            result.seconds.append(round(elapsed, 1))
            result.used_memory.append(int(client.info("memory")["used_memory"]))
            groups = client.xinfo_groups(KEY)
            result.pending.append({g["name"]: int(g["pending"]) for g in groups})
            _churn(sidecar, case.churn, SAMPLE_EVERY)
        result.acked = metric_sum(
            sidecar.metrics(), "sidecar_stream_trimmed_references_acked_total"
        )
        return result
    finally:
        if sidecar is not None:
            sidecar.stop()
        for consumer in consumers:
            consumer.stop()
        client.close()


def _churn(sidecar: Sidecar, per_second: float, seconds: float) -> None:
    """`seconds` of one coordinator flipping between hard and ok (or of nothing)."""
    if not per_second:
        time.sleep(seconds)  # the sampling period, not a synchronisation
        return
    for n in range(int(per_second * seconds)):
        level, depth = ("hard", 900) if n % 2 == 0 else ("ok", 10)
        sidecar.post_json("/feedback", {"coordinator_id": "churn", "queue_size": depth,
                                        "capacity": 1000, "level": level})  # fmt: skip
        time.sleep(1 / per_second)  # the pace of the changes


def _teach(sidecar: Sidecar, levels: tuple[str, ...]) -> None:
    for start in range(0, COORDINATORS, 500):
        batch = [
            {"coordinator_id": f"coord-{n:05d}", "queue_size": 10, "capacity": 1000,
             "level": levels[n % len(levels)], "reason": None, "utilization": 0.01}
            for n in range(start, min(start + 500, COORDINATORS))
        ]  # fmt: skip
        status, body = sidecar.post_json("/feedback", batch)
        if status != 202:
            raise RuntimeError(f"POST /feedback answered {status}: {body[:200]!r}")


def _slope(soak: Soak) -> float:
    """Bytes per minute over the second half of the soak (least squares)."""
    half = len(soak.seconds) // 2
    xs, ys = soak.seconds[half:], soak.used_memory[half:]
    if len(xs) < 2:
        return 0.0
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return 60 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0


def _series(soak: Soak) -> str:
    step = max(len(soak.used_memory) // 6, 1)
    return ", ".join(f"{m / 2**20:.0f}" for m in soak.used_memory[::step]) + " MiB"


# -- convergence ----------------------------------------------------------------------------


def _convergence(own: OwnRedis, before: Path) -> Row:
    """A pipeline whose group is new, after the last crossing: seconds to the right rate."""
    results: dict[str, list[float | None]] = {}
    for label, src in (("before", before), ("after", None)):
        client = redis.Redis.from_url(own.url, decode_responses=True)
        client.flushall()
        env = {
            "SIDECAR_TARGETS": json.dumps([{"kind": "redis-stream", "name": "pulse",
                                            "url": own.url}]),
            "SIDECAR_RESYNC_INTERVAL": "600",
        }  # fmt: skip
        if src is not None:
            env["PYTHONPATH"] = str(src)
        sidecar = Sidecar(f"sidecar-readers-join-{label}", env).start()
        try:
            status, _ = sidecar.post_json(
                "/feedback",
                {"coordinator_id": "bars-coord", "queue_size": 850, "capacity": 1000,
                 "level": "hard", "reason": None, "utilization": 0.85},
            )  # fmt: skip
            assert status == 202
            # Before, each trial waits out the whole timeout: fewer suffice to show it.
            trials = TRIALS if src is None else 2
            results[label] = [_join(own, client) for _ in range(trials)]
        finally:
            sidecar.stop()
            client.close()
    after = [t for t in results["after"] if t is not None]
    worst = max(after) if len(after) == TRIALS else None
    never = sum(t is None for t in results["before"])
    return Row(
        NAME, "new pipeline group created to the pipeline's right rate, resync every 600 s "
        f"(worst of {TRIALS})", worst, "s", target="<= 2 s",
        passed=worst is not None and worst <= 2,
        note=f"each: {', '.join(f'{t:.2f}' for t in after)} s; the sidecar before: {never} of "
             f"{len(results['before'])} never within {RATE_TIMEOUT:g} s",
    )  # fmt: skip


def _join(own: OwnRedis, client: redis.Redis) -> float | None:
    """Destroy the pipeline's group, start the real pipeline: seconds from its group's
    creation (the driver's `ready`) to the hard rate (scale 0, rate 1), or None."""
    with contextlib.suppress(redis.ResponseError):
        client.xgroup_destroy(KEY, "pipeline")
    pipeline = _driver(own, "pipeline_driver.py")
    try:
        ready = pipeline.wait_for(lambda line: line.get("event") == "ready", 60)
        try:
            hard = pipeline.wait_for(
                lambda line: line.get("event") == "rate" and line.get("scale") == 0.0,
                RATE_TIMEOUT,
            )
        except TimeoutError:
            return None
        # The group may be seen, and resynced, before the driver (polling every 20 ms)
        # says `ready`: then the rate came with the group.
        return max(hard.arrived - ready.arrived, 0.0)
    finally:
        pipeline.stop()


# -- the consumers' drivers -------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    fields: dict[str, Any]
    arrived: float

    def get(self, key: str) -> Any:
        return self.fields.get(key)


class Driver:
    """A driver of `tests/consumers` in the consumers' venv; its JSON lines, timestamped."""

    def __init__(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        self.name = name
        self.proc = proc
        self.lines: list[Line] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with contextlib.suppress(ValueError), self._changed:
                self.lines.append(Line(json.loads(raw), time.monotonic()))
                self._changed.notify_all()

    def wait_for(self, predicate: Callable[[Line], bool], timeout: float) -> Line:
        """The first line so far, or to come within `timeout`, that matches: lines are
        kept, as a rate may change before the driver has said `ready`."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = next((line for line in self.lines if predicate(line)), None)
                if found is not None:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{self.name}: no matching line within {timeout:g}s")
                self._changed.wait(remaining)

    def stop(self) -> None:
        procs.forget(self.stop)
        procs.stop(self.proc)


def _driver(own: OwnRedis, script: str) -> Driver:
    name = script.removesuffix(".py")
    proc = procs.spawn(
        f"readers-{name}-{time.monotonic_ns()}",
        [str(CONSUMERS_PYTHON), str(DRIVERS / script)],
        env={"EVENT_BUS_BACKEND": "redis", "REDIS_URL": own.url},
        cpu=procs.LOAD_CPU,
        stdout=subprocess.PIPE,
    )
    driver = Driver(name, proc)
    procs.on_exit(driver.stop)
    return driver
