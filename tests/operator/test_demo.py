"""`market-data-sidecar demo` as a newcomer runs it: a real process, no terminal."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.operator.conftest import Chromium
from tests.operator.test_status_page import Elements
from tests.support.helpers import eventually, free_port

DEMO = [sys.executable, "-m", "market_data_sidecar", "demo"]


class Demo:
    """The demo in a subprocess, its output in files (stdout: the view; stderr: logs)."""

    def __init__(self, tmp: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.stdout_path, self.stderr_path = tmp / "demo.out", tmp / "demo.err"
        base = {"SIDECAR_PORT": str(self.port), "SIDECAR_DISK_PATHS": '["/"]'}
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [*DEMO, *args], env={**os.environ, **base, **(env or {})}, stdout=out, stderr=err
            )

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait(self, timeout: float = 30) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"demo still running after {timeout}s:\n{self.stdout}") from None

    async def feedback(self) -> dict[str, Any] | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"demo exited {self.proc.returncode}:\n{self.stderr}")
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.get(self.url + "/feedback") as response,
            ):
                return dict(await response.json()) if response.status == 200 else None
        except aiohttp.ClientError:
            return None


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Callable[..., Demo]]:
    started: list[Demo] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Demo:
        process = Demo(tmp_path, *args, env=env)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.proc.poll() is None:
            process.proc.kill()
            process.proc.wait()


def last_count(pattern: str, text: str) -> int:
    counts = [int(n) for n in re.findall(pattern, text)]
    assert counts, f"no line matches {pattern!r} in:\n{text}"
    return counts[-1]


def dropped(out: str) -> tuple[int, int]:
    """The demo's last line: items dropped with feedback, and by the same store without."""
    found = re.search(r"items dropped: (\d+) with feedback, (\d+) without it", out)
    assert found, out
    return int(found[1]), int(found[2])


def test_demo_runs_for_its_duration_and_shows_levels_and_deliveries(
    demo: Callable[..., Demo],
) -> None:
    run = demo("--duration", "5")
    assert run.wait() == 0, run.stderr
    out = run.stdout

    assert "\x1b[" not in out  # not a terminal: plain lines, no colour, no redraw
    assert re.search(r"coordinator bars-coord: level (soft|hard), depth \d+/1000", out), out
    assert re.search(r"coordinator quotes-coord: level (ok|soft), depth \d+/5000", out), out
    assert re.search(r"last event (soft|hard) from store", out), out
    delivered = last_count(r"target orchestrator-http \(http\): delivered (\d+)", out)
    received = last_count(r"receiver http-orchestrator \(http\): received (\d+)", out)
    assert received > 0
    assert received == delivered  # each delivery arrived once at the far end
    if "redis:         stream " in out:  # Redis was reachable: Core's consumer read them
        assert last_count(r"receiver stream-consumer \(redis-stream\): received (\d+)", out) > 0
        # The stream carries the fleet's composite (the only member here: this demo), and
        # the view says what a pipeline would make of it: ok 1.0, soft 0.5, hard 0.0.
        fleet = re.findall(
            r"fleet pipeline-stream: composite (ok|soft|hard) from (?:bars|quotes)-coord at "
            r"\S+ \(1 member, 2 coordinators\): a pipeline would run at "
            r"(\d\.\d) of its rate",
            out,
        )
        assert fleet, out
        scale = {"ok": "1.0", "soft": "0.5", "hard": "0.0"}
        assert all(rate == scale[level] for level, rate in fleet), fleet
        # The producer slows at `soft`, so the queue may drain back to `ok` by the end: the
        # composite must have risen at least once, not be high at the last line.
        assert any(level in ("soft", "hard") for level, _ in fleet), fleet
    assert re.search(r"demo finished after [5-9]\.\d+s: the store sent \d+ events", out), out
    # The producer followed the composite: the same store without feedback dropped more.
    with_feedback, without = dropped(out)
    assert with_feedback < without, out
    # The store's feedback went through the sidecar's real intake.
    assert "store: feedback bars-coord soft" in run.stderr


async def test_demo_without_redis_goes_on_with_http_and_exits_0_on_ctrl_c(
    demo: Callable[..., Demo],
) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"
    run = demo(env={"SIDECAR_DEMO_REDIS_URL": closed})

    async def delivered() -> bool:
        state = await run.feedback()
        return any(t["delivered"] > 0 for t in state["targets"]) if state else False

    await eventually(delivered, timeout=20, message="a delivery to the HTTP orchestrator")
    state = await run.feedback()
    assert state is not None
    assert [t["kind"] for t in state["targets"]] == ["http"]

    run.proc.send_signal(signal.SIGINT)
    assert run.wait() == 0, run.stderr
    assert f"redis:         not reachable at {closed} (connection refused): HTTP only" in run.stdout
    assert "Traceback" not in run.stderr
    assert "demo finished after" in run.stdout
    assert "producer:      follows the fleet's composite as the orchestrator hears it" in (
        run.stdout
    )
    with_feedback, without = dropped(run.stdout)
    assert with_feedback <= without, run.stdout


async def test_demo_status_page_in_chromium(
    demo: Callable[..., Demo], chromium: Chromium, artifacts: Path
) -> None:
    """The page as a newcomer sees it: coordinators filling, targets delivering, a
    degraded disk (thresholds above the real free ratio)."""
    run = demo(
        "--duration",
        "60",
        env={"SIDECAR_DISK_FREE_DEGRADED": "0.999", "SIDECAR_DISK_FREE_UNHEALTHY": "0.0"},
    )

    async def busy() -> bool:
        state = await run.feedback()
        if not state:
            return False
        levels = {c["level"] for c in state["coordinators"].values()}
        return "hard" in levels and all(t["delivered"] > 0 for t in state["targets"])

    await eventually(busy, timeout=20, message="a coordinator at hard, every target delivering")
    screenshot = artifacts / "status-page-demo.png"
    dom = await chromium.dump_dom(run.url + "/")
    await chromium.screenshot(run.url + "/", screenshot)
    run.proc.send_signal(signal.SIGINT)

    page = Elements(dom)
    components = {a["data-component"]: a["data-state"] for a in page.with_attr("data-component")}
    assert components["disk"] == "degraded"
    assert components["queue"] in ("healthy", "degraded")
    coordinators = {a["data-coordinator"] for a in page.with_attr("data-coordinator")}
    assert coordinators == {"bars-coord", "quotes-coord"}
    targets = {a["data-target"]: a["data-state"] for a in page.with_attr("data-target")}
    assert targets.get("orchestrator-http") == "healthy", json.dumps(targets)
    assert screenshot.stat().st_size > 20_000
    assert run.wait() == 0
