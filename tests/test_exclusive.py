"""The lock that lets latency-bound tests run alone beside parallel workers."""

from __future__ import annotations

import threading
from pathlib import Path

from tests.support.exclusive import Lock

#: How long a taker that should be blocked is given to (wrongly) get through.
BLOCKED_FOR = 0.3
DEADLINE = 10.0


def _taking(directory: Path, *, exclusive: bool) -> tuple[Lock, threading.Event]:
    """A lock taken in a thread of its own; the event is set once it is held."""
    lock, held = Lock(directory), threading.Event()

    def take() -> None:
        lock.take(exclusive=exclusive)
        held.set()

    threading.Thread(target=take, daemon=True).start()
    return lock, held


def test_an_exclusive_taker_waits_for_shared_holders_and_is_not_overtaken(
    tmp_path: Path,
) -> None:
    first = Lock(tmp_path)
    first.take(exclusive=False)
    beside, beside_held = _taking(tmp_path, exclusive=False)
    assert beside_held.wait(DEADLINE)  # shared holders run side by side

    alone, alone_held = _taking(tmp_path, exclusive=True)
    assert not alone_held.wait(BLOCKED_FOR)
    late, late_held = _taking(tmp_path, exclusive=False)  # arrives while `alone` waits
    assert not late_held.wait(BLOCKED_FOR)

    first.release()
    beside.release()
    assert alone_held.wait(DEADLINE)
    assert not late_held.wait(BLOCKED_FOR)  # nothing starts beside an exclusive holder
    alone.release()
    assert late_held.wait(DEADLINE)
    late.release()
