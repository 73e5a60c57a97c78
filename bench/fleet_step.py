"""The cost of one fleet step (publishers/fleet.lua) as the fleet grows, before and after.

    .venv/bin/python -m bench.run --only fleet-step

For 100, 1,000 and 10,000 members on a redis-server of the benchmark's own: the step of
this version, and the step of an earlier revision (`BENCH_FLEET_BEFORE`, default the
revision before the sorted sets; its script read with `git show`), each renewing one
member whose level alternates (so every step appends). Figures: the step's time on the
server (INFO commandstats, per EVALSHA) and its round trip, and the PING latency another
client sees meanwhile (one PING a millisecond from a thread of its own).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import threading
import time
from pathlib import Path

import redis
from market_data_core.telemetry import BackpressureLevel, FeedbackEvent
from redis.typing import EncodableT

from bench.harness import Context, Row
from bench.redis_server import OwnRedis
from bench.stats import percentile
from market_data_sidecar.feedback.model import Feedback, new_event_id
from market_data_sidecar.feedback.scope import composite_of
from market_data_sidecar.publishers.fleet import _SCRIPT, member_state
from market_data_sidecar.publishers.redis import SCHEMA_ID, TRACK
from market_data_sidecar.settings import FLEET_GRACE_MAX, FLEET_LEASE_MAX

ROOT = Path(__file__).resolve().parents[1]
BEFORE = os.environ.get("BENCH_FLEET_BEFORE", "fdac926")
SIZES = (100, 1_000, 10_000)
STREAM = "mdp:mdp.telemetry.feedback"
LEASE_MS, RENEWAL_MS, GRACE_MS = 3_600_000, 5_000, 30_000
TARGET_MS_AT_1000 = 1.0


def _state(instance: str, level: str, depth: int) -> str:
    event = FeedbackEvent(
        coordinator_id="bars",
        queue_size=depth,
        capacity=1000,
        level=BackpressureLevel(level),
        ts=time.time(),
    )
    return member_state(composite_of(Feedback(event), coordinators=2, member=instance))


class _Pinger(threading.Thread):
    """Another client of the same Redis: one PING a millisecond, its round trips kept."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.client = redis.Redis.from_url(url)
        self.samples: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.perf_counter()
            self.client.ping()
            self.samples.append(time.perf_counter() - started)
            time.sleep(0.001)  # the pace of this client, not a synchronisation


class _After:
    """This version's step."""

    label = "after"

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.sha = client.script_load(_SCRIPT)
        prefix = f"{{{STREAM}}}:fleet"
        self.keys = [
            f"{prefix}:{name}"
            for name in ("members", "leases", "drops", "rank", "names", "tombstones")
        ] + [f"{prefix}:record", f"{prefix}:awaiting", f"{prefix}:rows", STREAM]
        self.seq = 0

    def step(self, instance: str, token: str, state: str) -> None:
        self.seq += 1
        self.client.evalsha(
            self.sha,
            len(self.keys),
            *self.keys,
            instance,
            token,
            self.seq,
            state,
            LEASE_MS,
            GRACE_MS,
            RENEWAL_MS,
            "0",
            10_000,
            new_event_id(),
            SCHEMA_ID,
            TRACK,
            "0",
            int(FLEET_LEASE_MAX * 1000),
            int(FLEET_GRACE_MAX * 1000),
        )

    def populate(self, size: int) -> None:
        # Renewal pace irrelevant here: the lease is an hour, so none expires.
        for n in range(size - 1):
            self.step(f"pod-{n}", "t", _state(f"pod-{n}", "soft", 500 + n % 300))


class _Before:
    """The earlier revision's step (one hash; every member read and decoded each step)."""

    label = "before"

    def __init__(self, client: redis.Redis, script: str) -> None:
        self.client = client
        self.sha = client.script_load(script)
        self.keys = [f"{STREAM}:fleet:{name}" for name in ("members", "last")] + [
            STREAM,
            f"{STREAM}:fleet:hold",
        ]

    def step(self, instance: str, token: str, state: str) -> None:
        self.client.evalsha(
            self.sha,
            len(self.keys),
            *self.keys,
            instance,
            state,
            LEASE_MS,
            token,
            "0",
            10_000,
            new_event_id(),
            SCHEMA_ID,
            TRACK,
            RENEWAL_MS,
        )

    def populate(self, size: int) -> None:
        seconds, micros = self.client.time()
        now = seconds * 1000 + micros // 1000
        entries: dict[EncodableT, EncodableT] = {
            f"pod-{n}": f"{now + LEASE_MS}|{now}|t|{_state(f'pod-{n}', 'soft', 500 + n % 300)}"
            for n in range(size - 1)
        }
        for start in range(0, len(entries), 1000):
            chunk = dict(list(entries.items())[start : start + 1000])
            self.client.hset(self.keys[0], mapping=chunk)
        self.client.set(self.keys[1], "")


def _server_usec(client: redis.Redis) -> tuple[int, int]:
    stats = client.info("commandstats").get("cmdstat_evalsha", {})
    return int(stats.get("calls", 0)), int(stats.get("usec", 0))


def measure(url: str, variant: str, size: int, steps: int, before_script: str) -> dict[str, float]:
    client = redis.Redis.from_url(url)
    client.flushall()
    runner = _After(client) if variant == "after" else _Before(client, before_script)
    runner.populate(size)
    token = secrets.token_hex(8)
    states = [_state("pod-x", "hard", 900), _state("pod-x", "ok", 10)]
    runner.step("pod-x", token, states[1])  # the member measured joins
    pinger = _Pinger(url)
    pinger.start()
    calls, usec = _server_usec(client)
    trips: list[float] = []
    for n in range(steps):
        started = time.perf_counter()
        runner.step("pod-x", token, states[n % 2])
        trips.append(time.perf_counter() - started)
    calls2, usec2 = _server_usec(client)
    pinger.stop.set()
    pinger.join()
    client.close()
    pings = sorted(pinger.samples)
    trips.sort()
    return {
        "server_ms": (usec2 - usec) / max(1, calls2 - calls) / 1000,
        "trip_p50_ms": percentile(trips, 50) * 1000,
        "trip_p99_ms": percentile(trips, 99) * 1000,
        "ping_p99_ms": percentile(pings, 99) * 1000 if pings else 0.0,
        "ping_max_ms": pings[-1] * 1000 if pings else 0.0,
    }


def before_script() -> str:
    return subprocess.run(
        ["git", "show", f"{BEFORE}:src/market_data_sidecar/publishers/fleet.lua"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def run(ctx: Context) -> list[Row]:
    script = before_script()
    server = OwnRedis().start()
    rows: list[Row] = []
    try:
        for size in SIZES:
            steps = ctx.seconds(200, 50) if size < 10_000 else ctx.seconds(60, 20)
            figures = {
                v: measure(server.url, v, size, int(steps), script) for v in ("before", "after")
            }
            before, after = figures["before"], figures["after"]
            print(f"  {size} members: {json.dumps(figures)}", flush=True)
            target = f"< {TARGET_MS_AT_1000:g} ms" if size == 1_000 else ""
            rows += [
                Row(
                    "fleet-step",
                    f"step on the server, {size:,} members",
                    after["server_ms"],
                    "ms",
                    baseline=before["server_ms"],
                    baseline_label=f"before ({BEFORE})",
                    target=target,
                    passed=after["server_ms"] < TARGET_MS_AT_1000 if target else None,
                ),
                Row(
                    "fleet-step",
                    f"step round trip p50 / p99, {size:,} members",
                    after["trip_p99_ms"],
                    "ms",
                    baseline=before["trip_p99_ms"],
                    baseline_label=f"before ({BEFORE})",
                    note=f"p50 {after['trip_p50_ms']:.3f} ms (before {before['trip_p50_ms']:.3f})",
                ),
                Row(
                    "fleet-step",
                    f"another client's PING p99 / max during steps, {size:,} members",
                    after["ping_p99_ms"],
                    "ms",
                    baseline=before["ping_p99_ms"],
                    baseline_label=f"before ({BEFORE})",
                    note=f"max {after['ping_max_ms']:.2f} ms (before {before['ping_max_ms']:.2f})",
                ),
            ]
    finally:
        server.stop()
    return rows
