"""The installers CI uses (`.ci/tools.sh`, `.ci/consumers.sh`), run from tests that need
what they install. A failure fails the test saying what is missing: skipping would let a
fresh machine pass without ever running it."""

from __future__ import annotations

import contextlib
import fcntl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
CI = REPO_ROOT / ".ci"
#: Held while an installer runs: parallel workers that need the same tool wait for the
#: first to install it, then find it installed (the installers are idempotent).
LOCK = REPO_ROOT / ".cache" / "installers.lock"


@contextlib.contextmanager
def _one_at_a_time() -> Iterator[None]:
    LOCK.parent.mkdir(exist_ok=True)
    with LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def run_installer(script: str, *args: str, timeout: float, what: str) -> str:
    """Run `.ci/<script> <args>`; its last line of output (installers print the path of
    what they installed there), or a failed test naming `what` is missing."""
    command = f".ci/{script}" + "".join(f" {arg}" for arg in args)
    try:
        with _one_at_a_time():
            result = subprocess.run(
                ["bash", str(CI / script), *args],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{what} is missing and `{command}` took over {timeout:g}s", pytrace=False)
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        pytest.fail(
            f"{what} is missing and `{command}` failed (exit {result.returncode}): "
            f"{(result.stdout + result.stderr).strip()[-2000:]}",
            pytrace=False,
        )
    return lines[-1]


def ci_tool(name: str, *, timeout: float, what: str) -> str:
    """`.ci/tools.sh <name>`: a tool fetched into `.cache/` (helm, promtool) or installed
    from Debian's packages (chromium)."""
    return run_installer("tools.sh", name, timeout=timeout, what=what)
