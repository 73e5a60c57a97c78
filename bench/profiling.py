"""py-spy on the sidecar during a measurement; collapsed stacks reduced to hot spots."""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import procs

_LINE = re.compile(r":\d+\)$")
#: Leaf frames that mean "the event loop is waiting": py-spy counts them as active
#: (the thread is in a syscall), but they are idle time, not work.
_WAITING = (
    "EpollSelector.select (selectors.py)",
    "select (selectors.py)",
    "Runner.run (asyncio/runners.py)",  # uvloop waits in C below this frame
    "BaseEventLoop.run_until_complete (asyncio/base_events.py)",
    "_worker (concurrent/futures/thread.py)",  # an executor thread with nothing to do
)


def available() -> bool:
    return shutil.which("py-spy") is not None or _venv_pyspy().exists()


def _venv_pyspy() -> Path:
    import sys

    return Path(sys.executable).with_name("py-spy")


@contextlib.contextmanager
def record(
    enabled: bool, pid: int, out: Path, seconds: float, sink: dict[str, Any], label: str
) -> Iterator[None]:
    """Sample `pid` with py-spy while the block runs (when `enabled`); top frames into `sink`."""
    if not enabled:
        yield
        return
    exe = str(_venv_pyspy()) if _venv_pyspy().exists() else "py-spy"
    out.parent.mkdir(parents=True, exist_ok=True)
    proc = procs.spawn(
        f"py-spy-{label}",
        [exe, "record", "-p", str(pid), "-d", str(max(1, round(seconds)) + 600), "-r", "100",
         "-f", "raw", "-o", str(out)],
        cpu=procs.LOAD_CPU,
    )  # fmt: skip
    try:
        yield
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # py-spy writes what it has on SIGINT
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=20)
        procs.stop(proc)
    if out.exists():
        sink[label] = {"file": str(out), **hot_spots(out.read_text())}
    else:
        sink[label] = {"error": procs.log_of(f"py-spy-{label}")[-500:]}


def hot_spots(collapsed: str, top: int = 12) -> dict[str, Any]:
    """Self and inclusive shares of the busy samples per function, from py-spy's raw format.

    Samples waiting in the event loop's poll are counted apart (`waiting`), so the
    shares are of the time the process was working.
    """
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = waiting = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_LINE.sub(")", frame) for frame in stack.split(";")]
        if frames[-1] in _WAITING:
            waiting += count
            continue
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    share = 100.0 / total if total else 0.0
    return {
        "samples": total,
        "waiting": round(100.0 * waiting / (waiting + total), 1) if waiting + total else 0.0,
        "self": [(frame, round(n * share, 1)) for frame, n in own.most_common(top)],
        "inclusive": [(frame, round(n * share, 1)) for frame, n in inclusive.most_common(top)],
    }
