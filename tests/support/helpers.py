"""Test helpers: waiting on conditions with deadlines, free ports, the sidecar as a process
(serving, or one command to its end), and feedback as the store and Core send it."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
from market_data_core.telemetry import BackpressureLevel, FeedbackEvent

from market_data_sidecar.feedback.model import Feedback

#: `market-data-sidecar`, run by the interpreter running the tests.
SIDECAR_COMMAND = [sys.executable, "-m", "market_data_sidecar"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def eventually(
    condition: Callable[[], Awaitable[Any]] | Callable[[], Any],
    *,
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str = "condition",
) -> Any:
    """Poll `condition` until it returns something truthy; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = condition()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not met within {timeout}s (last: {last!r})")
        await asyncio.sleep(interval)


def wait_until(
    condition: Callable[[], Any], *, timeout: float = 10.0, message: str = "condition"
) -> Any:
    """Synchronous `eventually`."""
    deadline = time.monotonic() + timeout
    while True:
        last = condition()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not met within {timeout}s (last: {last!r})")
        time.sleep(0.02)


def stop_process(proc: subprocess.Popen[bytes], *, grace: float) -> None:
    """Terminate `proc` and wait for it; kill it if it is still there after `grace` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_cli(*args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """One `market-data-sidecar` command to its end (no store, disk `/`), output captured."""
    base = {"SIDECAR_STORE_METRICS_URL": "", "SIDECAR_DISK_PATHS": '["/"]'}
    return subprocess.run(
        [*SIDECAR_COMMAND, *args],
        env={**os.environ, **base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


class SidecarProcess:
    """`market-data-sidecar run` in a subprocess, as a user (or Kubernetes) runs it."""

    def __init__(self, env: Mapping[str, str], args: list[str] | None = None) -> None:
        self.port = int(env.get("SIDECAR_PORT", free_port()))
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"sidecar-{self.port}.log"
        full_env = {**os.environ, "SIDECAR_PORT": str(self.port), **env}
        self._log = self.log_path.open("w+b")
        self.proc = subprocess.Popen(
            [*SIDECAR_COMMAND, *(args or ["run"])],
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    async def get(self, path: str, **kwargs: Any) -> tuple[int, str]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(self.url + path, **kwargs) as response,
        ):
            return response.status, await response.text()

    async def wait_listening(self, timeout: float = 15.0) -> None:
        async def answers() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"sidecar exited {self.proc.returncode}:\n{self.output()}")
            try:
                status, _ = await self.get("/livez")
            except aiohttp.ClientError:
                return False
            return status == 200

        await eventually(answers, timeout=timeout, message="sidecar listening")

    def stop(self) -> int:
        if self.proc.poll() is None:
            stop_process(self.proc, grace=20)
        self._log.close()
        return self.proc.returncode


# -- feedback ------------------------------------------------------------------------------------


def feedback(
    coordinator_id: str = "bars-coord",
    queue_size: int = 850,
    *,
    capacity: int = 1000,
    level: BackpressureLevel | str = "soft",
    reason: str | None = None,
    ts: float | None = None,
) -> Feedback:
    """A Core `FeedbackEvent` as the intake hands it on, with the store's `reason`."""
    event = FeedbackEvent(
        coordinator_id=coordinator_id,
        queue_size=queue_size,
        capacity=capacity,
        level=BackpressureLevel(level),
        ts=time.time() if ts is None else ts,
    )
    return Feedback(event, reason=reason)


def store_payload(
    coordinator_id: str = "bars-coord",
    queue_size: int = 850,
    *,
    capacity: int = 1000,
    level: str = "soft",
    reason: str | None = None,
) -> dict[str, Any]:
    """What the store's HttpFeedbackBroadcaster POSTs today: no `ts`, no `source`."""
    return {
        "coordinator_id": coordinator_id,
        "queue_size": queue_size,
        "capacity": capacity,
        "level": level,
        "reason": reason,
        "utilization": queue_size / capacity,
    }
