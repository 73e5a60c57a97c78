"""Intake: `POST /feedback` with wrk, single events and arrays of 100.

Baseline: a bare aiohttp handler that parses the same JSON and answers 202. CPU per
event is the process's user+system time over the run divided by the events accepted,
read on both sides with psutil. The sidecar runs with no targets, so the figure is the
intake (validation into Core events and the hand-off to the relay), not delivery.
"""

from __future__ import annotations

import json
from typing import Any

from bench import procs, profiling, wrk
from bench.harness import Context, Row
from bench.loadgen import event
from bench.sidecar import Sidecar, metric_sum

NAME = "intake"
CONNECTIONS = 16
MIN_SINGLE_RPS = 3000
MIN_ARRAY_EVENTS = 50_000


def run(ctx: Context) -> list[Row]:
    rows = _variant(ctx, uvloop=False)
    if ctx.uvloop:
        rows += _variant(ctx, uvloop=True)
    return rows


def _variant(ctx: Context, *, uvloop: bool) -> list[Row]:
    label = " (uvloop)" if uvloop else ""
    sidecar = Sidecar(f"sidecar-intake{'-uvloop' if uvloop else ''}", uvloop=uvloop).start()
    port = procs.free_port()
    baseline = procs.spawn(
        "baseline-accept",
        procs.python("-m", "bench.servers", "accept", "--port", str(port), "--path", "/feedback"),
        cpu=procs.SERVER_CPU,
    )
    procs.wait_port(port, baseline, "baseline-accept")
    rows: list[Row] = []
    try:
        for batch in (1, 100):
            body = json.dumps(event(0, 1) if batch == 1 else [event(i, 10) for i in range(batch)])
            tag = f"intake-{batch}{'-uvloop' if uvloop else ''}"
            side, base = _rounds(ctx, sidecar, f"http://127.0.0.1:{port}/feedback",
                                 baseline.pid, body.encode(), batch, tag)  # fmt: skip
            what = "single events" if batch == 1 else f"arrays of {batch}"
            if batch == 1:
                rows.append(
                    Row(NAME, f"{what}: requests/s{label}", side["rps"], "req/s", base["rps"],
                        "bare aiohttp", target=f">= {MIN_SINGLE_RPS:,} req/s",
                        passed=side["rps"] >= MIN_SINGLE_RPS, note=side["note"])
                )  # fmt: skip
            else:
                rows.append(
                    Row(NAME, f"{what}: events/s{label}", side["events_per_s"], "events/s",
                        base["events_per_s"], "bare aiohttp",
                        target=f">= {MIN_ARRAY_EVENTS:,} events/s",
                        passed=side["events_per_s"] >= MIN_ARRAY_EVENTS, note=side["note"])
                )  # fmt: skip
            rows.append(
                Row(NAME, f"{what}: CPU per event{label}", side["cpu_us"], "us",
                    base["cpu_us"], "bare aiohttp")
            )  # fmt: skip
            rows.append(
                Row(NAME, f"{what}: p99 under wrk{label}", side["p99"], "ms", base["p99"],
                    "bare aiohttp")
            )  # fmt: skip
    finally:
        procs.stop(baseline)
        sidecar.stop()
    return rows


def _rounds(
    ctx: Context,
    sidecar: Sidecar,
    baseline_url: str,
    baseline_pid: int,
    body: bytes,
    batch: int,
    tag: str,
) -> tuple[dict[str, Any], dict[str, Any]]:
    seconds = ctx.seconds(10, 4)
    rounds = 1 if ctx.quick else 2
    side: list[dict[str, Any]] = []
    base: list[dict[str, Any]] = []
    for index in range(rounds):
        accepted_before = _accepted(sidecar)
        with profiling.record(
            ctx.profile and index == 0, sidecar.pid, ctx.profile_path(tag), seconds,
            ctx.profiles, tag,
        ):  # fmt: skip
            measured = _one(sidecar.url + "/feedback", sidecar.pid, body, batch, seconds)
        accepted = _accepted(sidecar) - accepted_before
        measured["note"] = _check(measured, accepted, batch)
        side.append(measured)
        base.append(_one(baseline_url, baseline_pid, body, batch, seconds))
    return max(side, key=lambda r: r["rps"]), max(base, key=lambda r: r["rps"])


def _one(url: str, pid: int, body: bytes, batch: int, seconds: float) -> dict[str, Any]:
    cpu_before = procs.cpu_seconds(pid)
    result = wrk.run(url, seconds=seconds, connections=CONNECTIONS, post_body=body)
    cpu = procs.cpu_seconds(pid) - cpu_before
    events = result.requests * batch
    return {
        "rps": result.rps,
        "events_per_s": result.rps * batch,
        "cpu_us": cpu / events * 1e6 if events else None,
        "p99": result.p99_ms,
        "requests": result.requests,
        "non_2xx": result.non_2xx,
        "socket_errors": result.socket_errors,
    }


def _accepted(sidecar: Sidecar) -> float:
    return metric_sum(sidecar.metrics(), "sidecar_feedback_received_total", outcome="accepted")


def _check(measured: dict[str, Any], accepted: float, batch: int) -> str:
    problems = []
    if measured["non_2xx"]:
        problems.append(f"{measured['non_2xx']} non-2xx answers")
    if measured["socket_errors"]:
        problems.append(f"{measured['socket_errors']} socket errors")
    # wrk counts requests still in flight at the end; the sidecar may have taken a few more.
    expected = measured["requests"] * batch
    if accepted < expected - 16 * batch:
        problems.append(f"sidecar counted {accepted:.0f} accepted of {expected} sent")
    return "; ".join(problems)
