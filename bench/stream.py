"""Redis stream: events/s of an `all`-mode stream target vs a loop of Core's publish.

End to end through a real sidecar: arrays of 100 are POSTed to `/feedback` (4 in
flight) and the clock stops when `XLEN` of the stream reaches the count, so the figure
includes the intake, the router and the pipelined `XADD`s. The sidecar's target buffer
is sized to the run so nothing is shed (the figure is throughput, not the drop policy).
Baseline: `await RedisStreamsBus.publish(...)` in a loop, in a process of its own on the
same core. Both write to a redis-server of the benchmark's own.
"""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import redis

from bench import procs, profiling
from bench.harness import Context, Row
from bench.loadgen import run_in_process
from bench.redis_server import OwnRedis
from bench.sidecar import Sidecar, metric_sum

NAME = "stream"
BATCH = 100
MIN_RATIO = 4.0
NAMESPACE = "bench"
STREAM = f"{NAMESPACE}:{NAMESPACE}.telemetry.feedback"


def run(ctx: Context) -> list[Row]:
    own = OwnRedis().start()
    try:
        client = redis.Redis.from_url(own.url)
        core = _core_loop(ctx, own)
        sidecar = _sidecar(ctx, own, client)
        client.close()
    finally:
        own.stop()
    return [
        Row(NAME, "stream target (mode all) events/s, end to end", sidecar["events_per_s"],
            "events/s", core["events_per_second"], "Core publish loop",
            target=f">= {MIN_RATIO:g}x baseline",
            passed=sidecar["events_per_s"] >= MIN_RATIO * core["events_per_second"],
            note=sidecar["note"]),
    ]  # fmt: skip


def _core_loop(ctx: Context, own: OwnRedis) -> dict[str, Any]:
    count = int(ctx.seconds(20_000, 5_000))
    config = {"url": own.url, "namespace": "core", "count": count, "deadline": 120}
    proc = procs.spawn(
        "peer-core-stream",
        procs.python("-m", "bench.peers", "core-stream", json.dumps(config)),
        cpu=procs.SERVER_CPU,
        stdout=subprocess.PIPE,
    )
    try:
        out, _ = proc.communicate(timeout=180)
    finally:
        procs.stop(proc)
    if proc.returncode != 0:
        raise RuntimeError(f"Core publish loop failed:\n{procs.log_of('peer-core-stream')}")
    result: dict[str, Any] = json.loads(out)
    return result


def _sidecar(ctx: Context, own: OwnRedis, client: redis.Redis) -> dict[str, Any]:
    count = int(ctx.seconds(200_000, 50_000))
    target = {
        "kind": "redis-stream",
        "url": own.url,
        "namespace": NAMESPACE,
        "mode": "all",
        "scope": "coordinator",
        "maxlen": 1_000_000,
        "buffer": count + 1000,
        "name": "stream",
    }
    sidecar = Sidecar("sidecar-stream", {"SIDECAR_TARGETS": json.dumps([target])}).start()
    try:
        client.delete(STREAM)
        cpu_before = procs.cpu_seconds(sidecar.pid)
        progress: dict[str, Any] = {"done_at": None}

        def watch() -> None:
            if progress["done_at"] is None and client.xlen(STREAM) >= count:
                progress["done_at"] = time.monotonic()

        seconds_guess = ctx.seconds(15, 6)
        with profiling.record(
            ctx.profile, sidecar.pid, ctx.profile_path("stream"), seconds_guess, ctx.profiles,
            "stream",
        ):  # fmt: skip
            posted = run_in_process(
                "loadgen-stream",
                {"mode": "burst", "url": sidecar.url + "/feedback", "count": count // BATCH,
                 "body": "array", "batch": BATCH, "coordinators": 10, "concurrency": 4,
                 "deadline": 300},
                timeout=320,
                while_running=watch,
            )  # fmt: skip
            deadline = time.monotonic() + 120
            last, stalled_since = -1, time.monotonic()
            while progress["done_at"] is None and time.monotonic() < deadline:
                length = client.xlen(STREAM)
                if length >= count:
                    progress["done_at"] = time.monotonic()
                    break
                if length != last:
                    last, stalled_since = length, time.monotonic()
                elif time.monotonic() - stalled_since > 5:
                    break
                time.sleep(0.01)
        cpu = procs.cpu_seconds(sidecar.pid) - cpu_before
        written = client.xlen(STREAM)
        samples = sidecar.metrics()
        dropped = metric_sum(samples, "sidecar_feedback_dropped_total", target="stream")
        first = client.xrange(STREAM, count=1) or []
    finally:
        sidecar.stop()
    done_at = progress["done_at"] or time.monotonic()
    elapsed = done_at - posted["started_at"]
    notes = [f"{written:,} of {count:,} in {elapsed:.1f}s"]
    if progress["done_at"] is None:
        notes.append("count never reached: rate is what was written")
    if dropped:
        notes.append(f"{dropped:.0f} dropped")
    notes.append(f"intake answered in {posted['elapsed']:.1f}s")
    notes.append(f"CPU per event {cpu / max(written, 1) * 1e6:.1f} us")
    if first:
        fields = first[0][1] or {}
        envelope = json.loads(fields[b"data"])
        schema = envelope.get("meta", {}).get("schema_id")
        if schema != "telemetry.FeedbackEvent":
            notes.append(f"unexpected schema_id {schema!r}")
    if set(posted["statuses"]) != {"202"}:
        notes.append("answers " + ", ".join(f"{k}x{v}" for k, v in posted["statuses"].items()))
    return {"events_per_s": written / elapsed, "note": "; ".join(notes)}
