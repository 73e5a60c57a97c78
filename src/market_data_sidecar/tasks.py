"""Background tasks are cancelled in one way: cancel, then wait until they have ended, so
that nothing they hold (a connection, a lock) outlives their owner's `close`."""

from __future__ import annotations

import asyncio
from typing import Any


async def cancelled(task: asyncio.Task[Any] | None) -> None:
    """Cancel `task` (None: nothing) and wait for its end, whatever it raised."""
    if task is None:
        return
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
