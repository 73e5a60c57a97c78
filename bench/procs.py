"""Child processes of a benchmark run: started pinned to a core, always stopped.

Every process started here is registered and stopped at exit (atexit and the
`cleanup` context), so an interrupted run leaves nothing behind on the machine.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

#: The core that runs the process under test; load generators and peers get the other.
SERVER_CPU = 0
LOAD_CPU = 1

_pinning = True
_started: list[subprocess.Popen[bytes]] = []
_cleanups: list[Callable[[], None]] = []

LOG_DIR = Path(tempfile.gettempdir()) / "sidecar-bench-logs"


def set_pinning(enabled: bool) -> None:
    global _pinning
    _pinning = enabled and (os.cpu_count() or 1) >= 2


def pinning() -> bool:
    return _pinning


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def spawn(
    name: str,
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cpu: int | None = None,
    stdout: int | None = None,
    stdin: int | None = None,
) -> subprocess.Popen[bytes]:
    """Start `argv` with its output in a log file (or a pipe), on one core when pinning."""
    LOG_DIR.mkdir(exist_ok=True)
    log = (LOG_DIR / f"{name}.log").open("wb")
    cpus = {cpu} if (cpu is not None and _pinning) else None

    def pin() -> None:
        if cpus is not None:
            os.sched_setaffinity(0, cpus)

    proc = subprocess.Popen(
        list(argv),
        env={**os.environ, **(env or {})},
        stdout=stdout if stdout is not None else log,
        stderr=log,
        stdin=stdin if stdin is not None else subprocess.DEVNULL,
        preexec_fn=pin,  # only sched_setaffinity, before exec
    )
    log.close()
    _started.append(proc)
    return proc


def log_of(name: str) -> str:
    path = LOG_DIR / f"{name}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def stop(proc: subprocess.Popen[bytes], *, timeout: float = 10.0) -> int | None:
    """SIGTERM, then SIGKILL after `timeout`; a stopped (SIGSTOP) process is continued."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
            proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    if proc in _started:
        _started.remove(proc)
    return proc.returncode


def on_exit(callback: Callable[[], None]) -> Callable[[], None]:
    """Run `callback` at the end of the run even when it is interrupted."""
    _cleanups.append(callback)
    return callback


def forget(callback: Callable[[], None]) -> None:
    with contextlib.suppress(ValueError):
        _cleanups.remove(callback)


def stop_all() -> None:
    while _cleanups:
        with contextlib.suppress(Exception):
            _cleanups.pop()()
    for proc in list(_started):
        with contextlib.suppress(Exception):
            stop(proc, timeout=5)


atexit.register(stop_all)


@contextlib.contextmanager
def cleanup() -> Iterator[None]:
    """Stop every child on SIGTERM/SIGINT as well as on a normal exit."""

    def interrupted(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupted)
    try:
        yield
    finally:
        stop_all()
        signal.signal(signal.SIGTERM, previous)


def wait_port(port: int, proc: subprocess.Popen[bytes], name: str, timeout: float = 20.0) -> None:
    """Until something accepts on 127.0.0.1:`port`; fails early if `proc` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited {proc.returncode}:\n{log_of(name)[-3000:]}")
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{name} not listening on {port} within {timeout:g}s")


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of one process (its threads included)."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def rss_bytes(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)
