"""Parallel workers, and tests that bound latency running alone.

The suite runs in parallel workers (`-n 4 --dist loadfile` in `pyproject.toml`): most tests
wait on servers and processes, not on the CPU. A module's tests stay on one worker, so
they share its module and session fixtures (its own PostgreSQL, a replica) and its fixed
names (a database, a role).

Tests marked `exclusive` bound how long something takes (a probe under 50 ms while a check
hangs); on two cores a neighbour's work would be measured with them. They hold a lock that
every other test holds shared: an exclusive test waits for the tests running beside it to
end, and no other test starts until it is done (a run of exclusive tests in one module
holds it throughout). A turnstile, which every test passes before taking the lock, keeps
a waiting exclusive test from being overtaken. The lock is taken outside pytest-timeout's
clock, so waiting for it does not count toward a test's timeout.

An in-process sidecar shares its event loop with pytest, whose heap holds every test
module: a full garbage collection of it pauses the loop longer than a probe may take. An
exclusive test runs with what exists frozen (`gc.freeze`), so the harness's pauses stay
out of a measurement of the sidecar.
"""

from __future__ import annotations

import fcntl
import gc
from collections.abc import Generator
from pathlib import Path
from typing import IO

import pytest

#: The lock and its turnstile: one pair per checkout, shared by every run from it.
LOCKS = Path(__file__).resolve().parents[2] / ".cache"


def is_exclusive(item: pytest.Item | None) -> bool:
    return item is not None and item.get_closest_marker("exclusive") is not None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules with exclusive tests first, and those tests first in their module: the
    workers start on them together, so they take turns at once instead of each waiting
    for long tests beside it to end (`--no-loadscope-reorder` keeps this order)."""
    having = {item.path for item in items if is_exclusive(item)}
    modules = {path: index for index, path in enumerate(dict.fromkeys(i.path for i in items))}
    items.sort(key=lambda i: (i.path not in having, modules[i.path], not is_exclusive(i)))


class Lock:
    """A shared-or-exclusive lock on a file, with a turnstile (writers are not starved)."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(exist_ok=True)
        self._lock_path = directory / "tests.lock"
        self._turnstile_path = directory / "tests.turnstile"
        self._held: IO[str] | None = None

    @property
    def held(self) -> bool:
        return self._held is not None

    def take(self, *, exclusive: bool) -> None:
        with self._turnstile_path.open("w") as turnstile:
            fcntl.flock(turnstile, fcntl.LOCK_EX)
            held = self._lock_path.open("w")
            fcntl.flock(held, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        self._held = held

    def release(self) -> None:
        if self._held is not None:
            self._held.close()  # closing the file releases its lock
            self._held = None


_lock = Lock(LOCKS)


@pytest.hookimpl(wrapper=True, tryfirst=True)  # outermost: outside pytest-timeout's clock
def pytest_runtest_protocol(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, object, object]:
    """Hold the lock over a test, and exclusively over a run of exclusive tests."""
    exclusive = is_exclusive(item)
    if not _lock.held:  # else held exclusively since the exclusive test before this one
        _lock.take(exclusive=exclusive)
    if exclusive:
        gc.collect()
        gc.freeze()
    try:
        return (yield)
    finally:
        if exclusive:
            gc.unfreeze()
        if not (exclusive and is_exclusive(nextitem)):
            _lock.release()
