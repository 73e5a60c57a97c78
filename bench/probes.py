"""Probes: `/readyz` of a real sidecar (database check on) vs a bare aiohttp handler.

Throughput and p99 under wrk's closed loop; p99 at a fixed 1,000 requests/s from the
open-loop generator; and again while the benchmark's own PostgreSQL is frozen
(SIGSTOP), which the cached snapshot must hide from the probe.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from bench import procs, profiling, wrk
from bench.harness import Context, Row
from bench.loadgen import run_in_process
from bench.postgres import OwnPostgres
from bench.sidecar import Sidecar

NAME = "probes"
RATE = 1000
CONNECTIONS = 16
MIN_RATIO = 0.9
MAX_P99_MS = 5.0
MAX_FROZEN_FACTOR = 1.5


def run(ctx: Context) -> list[Row]:
    pg = OwnPostgres().start()
    try:
        return _run(ctx, pg)
    finally:
        pg.stop()


def _run(ctx: Context, pg: OwnPostgres) -> list[Row]:
    sidecar = Sidecar("sidecar-probes", {"SIDECAR_DATABASE_URL": pg.dsn}).start()
    try:
        components = _components(sidecar)
        if "database" not in components:
            ctx.note(
                "probes: the sidecar reports no `database` component (database check not "
                "wired yet?): the frozen-database figure does not exercise it"
            )
        status, body = sidecar.get("/readyz")
        baseline = _start_baseline(body, status)
        try:
            rows = _measure(ctx, sidecar, baseline, pg, components, label="")
        finally:
            procs.stop(baseline[0])
    finally:
        sidecar.stop()
    if ctx.uvloop:
        with_uvloop = Sidecar(
            "sidecar-probes-uvloop", {"SIDECAR_DATABASE_URL": pg.dsn}, uvloop=True
        ).start()
        try:
            status, body = with_uvloop.get("/readyz")
            baseline = _start_baseline(body, status)
            try:
                rows += _measure(ctx, with_uvloop, baseline, pg, components, label=" (uvloop)")
            finally:
                procs.stop(baseline[0])
        finally:
            with_uvloop.stop()
    return rows


def _components(sidecar: Sidecar) -> list[str]:
    _, body = sidecar.get("/healthz")
    try:
        return [c["name"] for c in json.loads(body)["components"]]
    except (ValueError, KeyError):
        return []


def _start_baseline(body: bytes, status: int) -> tuple[Any, str]:
    path = Path(tempfile.mkstemp(prefix="sidecar-bench-readyz-", suffix=".json")[1])
    path.write_bytes(body)
    port = procs.free_port()
    proc = procs.spawn(
        "baseline-static",
        procs.python("-m", "bench.servers", "static", "--port", str(port), "--path", "/readyz",
                     "--body-file", str(path), "--status", str(status)),
        cpu=procs.SERVER_CPU,
    )  # fmt: skip
    try:
        procs.wait_port(port, proc, "baseline-static")
    finally:
        path.unlink(missing_ok=True)  # read at start-up
    return proc, f"http://127.0.0.1:{port}/readyz"


def _measure(
    ctx: Context,
    sidecar: Sidecar,
    baseline: tuple[Any, str],
    pg: OwnPostgres,
    components: list[str],
    *,
    label: str,
) -> list[Row]:
    readyz = sidecar.url + "/readyz"
    seconds = ctx.seconds(10, 4)
    rounds = 1 if ctx.quick else 2
    # Interleaved rounds, best of each side: a burst of noise hits one round, not the ratio.
    side: list[wrk.WrkResult] = []
    base: list[wrk.WrkResult] = []
    for _ in range(rounds):
        tag = f"probes-wrk{label.strip(' ()').replace(' ', '-')}"
        with profiling.record(
            ctx.profile and not side, sidecar.pid, ctx.profile_path(tag), seconds, ctx.profiles, tag
        ):
            side.append(wrk.run(readyz, seconds=seconds, connections=CONNECTIONS))
        base.append(wrk.run(baseline[1], seconds=seconds, connections=CONNECTIONS))
    best_side = max(side, key=lambda r: r.rps)
    best_base = max(base, key=lambda r: r.rps)
    if best_side.non_2xx or best_side.socket_errors:
        ctx.note(
            f"probes{label}: wrk saw {best_side.non_2xx} non-2xx answers and "
            f"{best_side.socket_errors} socket errors from the sidecar"
        )

    rate_seconds = ctx.seconds(15, 5)
    # Frozen long enough for the check to time out at least twice at default intervals.
    frozen_seconds = ctx.seconds(15, 10)
    fixed_side: list[dict[str, Any]] = []
    fixed_base: list[dict[str, Any]] = []
    frozen: list[dict[str, Any]] = []
    for index in range(rounds):
        fixed_side.append(_fixed_rate(readyz, rate_seconds, "loadgen-probes"))
        fixed_base.append(_fixed_rate(baseline[1], rate_seconds, "loadgen-probes-baseline"))
        if label:  # the freeze is measured on the default loop only
            continue
        tag = "probes-frozen"
        with (
            profiling.record(
                ctx.profile and index == 0, sidecar.pid, ctx.profile_path(tag), frozen_seconds,
                ctx.profiles, tag,
            ),
            pg.frozen(),
        ):  # fmt: skip
            frozen.append(_fixed_rate(readyz, frozen_seconds, "loadgen-probes-frozen"))
        ctx.extra["probes_frozen_healthz"] = sidecar.get("/healthz")[1].decode(errors="replace")[
            :2000
        ]
        sidecar.wait_ready(timeout=60)
    best_fixed_side = min(fixed_side, key=lambda r: r["p99"])
    best_fixed_base = min(fixed_base, key=lambda r: r["p99"])

    rows = [
        Row(NAME, f"/readyz throughput, wrk c={CONNECTIONS}{label}", best_side.rps, "req/s",
            best_base.rps, "bare aiohttp", target=f">= {MIN_RATIO}x baseline",
            passed=best_side.rps >= MIN_RATIO * best_base.rps),
        Row(NAME, f"/readyz p99 under wrk{label}", best_side.p99_ms, "ms", best_base.p99_ms,
            "bare aiohttp"),
        Row(NAME, f"/readyz p99 at {RATE:,} req/s{label}", best_fixed_side["p99"], "ms",
            best_fixed_base["p99"], "bare aiohttp", target=f"<= {MAX_P99_MS:g} ms",
            passed=best_fixed_side["p99"] <= MAX_P99_MS,
            note=_statuses(best_fixed_side)),
    ]  # fmt: skip
    if not frozen:
        return rows
    best_frozen = min(frozen, key=lambda r: r["p99"])
    note = _statuses(best_frozen)
    if "database" not in components:
        note = (note + "; " if note else "") + "no database component"
    rows.append(
        Row(NAME, f"/readyz p99 at {RATE:,} req/s, database frozen", best_frozen["p99"], "ms",
            best_fixed_side["p99"], "database live", target=f"<= {MAX_FROZEN_FACTOR:g}x live",
            passed=best_frozen["p99"] <= MAX_FROZEN_FACTOR * best_fixed_side["p99"], note=note)
    )  # fmt: skip
    rows.append(
        Row(NAME, f"/readyz max at {RATE:,} req/s, database frozen", best_frozen["max"], "ms",
            best_fixed_side["max"], "database live")
    )  # fmt: skip
    return rows


def _fixed_rate(url: str, seconds: float, name: str) -> dict[str, Any]:
    result = run_in_process(
        name,
        {"mode": "rate", "url": url, "rate": RATE, "count": int(RATE * seconds),
         "connections": 32, "timeout": 10},
        timeout=seconds + 60,
    )  # fmt: skip
    return {**result["latency"], "statuses": result["statuses"]}


def _statuses(result: dict[str, Any]) -> str:
    statuses = result["statuses"]
    if set(statuses) <= {"200"}:
        return ""
    return "answers: " + ", ".join(f"{k}x{v}" for k, v in sorted(statuses.items()))
