"""Run the sidecar's benchmarks and print sidecar-vs-baseline figures with their targets.

    .venv/bin/python -m bench.run [--soak SECONDS] [--only NAME ...] [--quick]

Writes bench/results/latest.json and bench/results/latest.md.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import psutil

from bench import procs
from bench.harness import RESULTS, Context, Row, markdown_table, row_notes, text_table

STORE_PIN = "market-data-store==0.6.73"

#: name -> (module, what must exist in the sidecar before it can run)
BENCHMARKS: dict[str, tuple[str, Callable[[], str | None]]] = {}


def _needs_intake() -> str | None:
    return None if _has_route("POST", "/feedback") else "POST /feedback route"


def _needs_http_relay() -> str | None:
    missing = [m for m in ("feedback.router", "publishers.http") if not _has_module(m)]
    if _needs_intake():
        missing.append("POST /feedback route")
    return ", ".join(missing) or None


def _needs_stream_relay() -> str | None:
    missing = [m for m in ("feedback.router", "publishers.redis") if not _has_module(m)]
    if _needs_intake():
        missing.append("POST /feedback route")
    return ", ".join(missing) or None


def _needs_scope() -> str | None:
    from market_data_sidecar.settings import RedisStreamTargetSettings

    if "scope" not in RedisStreamTargetSettings.model_fields:
        return "the targets' scope"
    return _needs_stream_relay()


def _needs_everything() -> str | None:
    return _needs_http_relay() or _needs_stream_relay()


BENCHMARKS.update(
    {
        "probes": ("bench.probes", lambda: None),
        "intake": ("bench.intake", _needs_intake),
        "fanout": ("bench.fanout", _needs_http_relay),
        "stream": ("bench.stream", _needs_stream_relay),
        "resync": ("bench.resync", _needs_stream_relay),
        "readers": ("bench.readers", _needs_stream_relay),
        "readers-scale": ("bench.readers_scale", _needs_stream_relay),
        "fleet-step": ("bench.fleet_step", _needs_stream_relay),
        "loop": ("bench.closed_loop", _needs_scope),
        "replicas": ("bench.replicas", _needs_scope),
        "footprint": ("bench.footprint", _needs_everything),
        "history": ("bench.history", lambda: None),
    }
)


def _has_module(name: str) -> bool:
    return importlib.util.find_spec(f"market_data_sidecar.{name}") is not None


def _has_route(method: str, path: str) -> bool:
    from market_data_sidecar.settings import Settings
    from market_data_sidecar.wiring import build_app

    app = build_app(Settings(store_metrics_url="", database_url="", disk_paths=["/"]))
    return any(
        route.method == method and route.resource is not None
        and route.resource.canonical == path
        for route in app.router.routes()
    )  # fmt: skip


# -- prerequisites ---------------------------------------------------------------------------


def ensure_tools() -> None:
    """wrk from Debian, market-data-store from PyPI: installed here, never at import."""
    if not shutil.which("wrk"):
        print("wrk is missing: installing Debian's package (apt-get install -y wrk)", flush=True)
        if subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=False).returncode:
            print("apt-get install failed: updating the package lists once, then again")
            subprocess.run(["apt-get", "update", "-q"], check=True)
            subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=True)
    if importlib.util.find_spec("market_data_store") is None or not _has_httpx():
        print(f"{STORE_PIN} (the fan-out peer) is missing: pip install into {sys.prefix}")
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", STORE_PIN, "httpx"], check=True
        )
        importlib.invalidate_caches()


def _has_httpx() -> bool:
    return importlib.util.find_spec("httpx") is not None


# -- machine load ----------------------------------------------------------------------------

#: Share of the machine used by other processes above which the figures are flagged.
BUSY_MACHINE = 0.10


class MachineLoad:
    """CPU the rest of the machine used while a benchmark ran (ours taken out)."""

    def __init__(self) -> None:
        self._began = time.monotonic()
        self._busy = _busy_seconds()
        self._ours = _our_seconds()

    def others_share(self) -> float:
        wall = time.monotonic() - self._began
        others = (_busy_seconds() - self._busy) - (_our_seconds() - self._ours)
        return max(0.0, others / (wall * (os.cpu_count() or 1)))


def wait_quiet(limit: float) -> None:
    """Wait (up to `limit` seconds) until the rest of the machine is nearly idle."""
    deadline = time.monotonic() + limit
    while True:
        probe = MachineLoad()
        time.sleep(2.0)
        others = probe.others_share()
        if others <= BUSY_MACHINE or time.monotonic() >= deadline:
            return
        print(f"  waiting: other processes use {others:.0%} of the machine", flush=True)


def _busy_seconds() -> float:
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


def _our_seconds() -> float:
    """This process and its reaped children, plus children still running."""
    mine = os.times()
    total = mine.user + mine.system + mine.children_user + mine.children_system
    for child in psutil.Process().children(recursive=True):
        try:
            times = child.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return float(total)


# -- running ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument(
        "--only",
        nargs="+",
        choices=list(BENCHMARKS),
        metavar="NAME",
        help=f"run only these: {', '.join(BENCHMARKS)}",
    )
    parser.add_argument(
        "--soak",
        type=float,
        default=600.0,
        help="seconds of 200 events/s for the footprint soak (default 600)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="shorter measurements (and idle window); noisier figures",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample the sidecar with py-spy during the main measurements",
    )
    parser.add_argument(
        "--uvloop",
        action="store_true",
        help="also measure probes and intake with the sidecar on uvloop",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="before each benchmark, wait up to this long for other processes to use under "
        "10%% of the machine (default 120; 0: don't wait)",
    )
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="do not pin the sidecar and the load to separate cores",
    )
    args = parser.parse_args(argv)

    ensure_tools()
    procs.set_pinning(not args.no_pin)
    ctx = Context(quick=args.quick, soak=args.soak, profile=args.profile, uvloop=args.uvloop)
    names = args.only or list(BENCHMARKS)
    rows: list[Row] = []
    timings: dict[str, float] = {}
    print(_preamble(ctx), flush=True)
    with procs.cleanup():
        for name in names:
            module_name, needs = BENCHMARKS[name]
            missing = needs()
            if missing:
                print(f"[{name}] skipped: waiting for {missing}", flush=True)
                rows.append(Row(name, "(skipped)", None, "", note=f"needs {missing}"))
                continue
            wait_quiet(args.wait_quiet)
            print(f"[{name}] running", flush=True)
            began = time.monotonic()
            machine = MachineLoad()
            try:
                module = importlib.import_module(module_name)
                produced: list[Row] = module.run(ctx)
            except KeyboardInterrupt:
                print(f"[{name}] interrupted", flush=True)
                raise
            except Exception as exc:
                traceback.print_exc()
                produced = [Row(name, "(failed)", None, "", note=f"{type(exc).__name__}: {exc}")]
            timings[name] = time.monotonic() - began
            others = machine.others_share()
            if others > BUSY_MACHINE:
                ctx.note(
                    f"{name}: other processes used {others:.0%} of the machine's CPU meanwhile "
                    f"(load average {os.getloadavg()[0]:.1f}): absolute figures are inflated, "
                    "ratios to the same-run baseline less so"
                )
            for row in produced:
                print(f"  {row.metric}: {row.value!r} {row.unit} {row.result}", flush=True)
            rows.extend(produced)
    report(ctx, rows, timings, names)
    return 0


def _preamble(ctx: Context) -> str:
    pin = (
        f"sidecar and baselines on cpu {procs.SERVER_CPU}, load on cpu {procs.LOAD_CPU}"
        if procs.pinning()
        else "no core pinning"
    )
    mode = "QUICK (shorter windows, noisier)" if ctx.quick else "full"
    return f"market-data-sidecar benchmarks: {mode}; {pin}; soak {ctx.soak:g}s"


def report(ctx: Context, rows: list[Row], timings: dict[str, float], names: list[str]) -> None:
    table = text_table(rows)
    print()
    print(_preamble(ctx))
    print(table)
    notes = row_notes(rows) + ctx.notes
    if notes:
        print("\nnotes:")
        for note in notes:
            print(f"- {note}")
    for label, spots in ctx.profiles.items():
        print(
            f"\nprofile {label}: {spots.get('samples', 0)} busy samples, "
            f"{spots.get('waiting', 0)}% waiting in the loop ({spots.get('file', '')})"
        )
        for frame, share in spots.get("self", [])[:10]:
            print(f"  {share:5.1f}% self  {frame}")
    misses = [row for row in rows if row.passed is False]
    print(f"\n{len(misses)} target(s) missed" if misses else "\nall targets met")

    RESULTS.mkdir(exist_ok=True)
    machine = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "pinned": procs.pinning(),
    }
    data: dict[str, Any] = {
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "options": {"quick": ctx.quick, "soak": ctx.soak, "only": names, "uvloop": ctx.uvloop},
        "machine": machine,
        "seconds": timings,
        "rows": [row.as_dict() for row in rows],
        "notes": ctx.notes,
        "profiles": ctx.profiles,
        "extra": ctx.extra,
    }
    (RESULTS / "latest.json").write_text(json.dumps(data, indent=2, default=str))
    md = [f"# Benchmarks, {data['finished']}", "", _preamble(ctx), "", markdown_table(rows)]
    if notes:
        md += ["", "Notes:", "", *(f"- {note}" for note in notes)]
    (RESULTS / "latest.md").write_text("\n".join(md) + "\n")
    print(f"wrote {RESULTS / 'latest.json'} and {RESULTS / 'latest.md'}")


if __name__ == "__main__":
    sys.exit(main())
