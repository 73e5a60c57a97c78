"""The sampler that keeps the history while the app runs, and `GET /history`.

The sampler is one task, created, named and cancelled by the app's cleanup context.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web
from loguru import logger
from market_data_core.telemetry import HealthStatus

from market_data_sidecar.feedback.state import RelayState
from market_data_sidecar.views.history import (
    DEFAULT_CHANGES,
    MAX_CHANGES,
    SAMPLE_EVERY,
    History,
    read,
)

HISTORY = web.AppKey("history", History)
_SOURCES = web.AppKey("history_sources", tuple)


def add_history(
    app: web.Application,
    *,
    health: Callable[[], HealthStatus],
    feedback: Callable[[], RelayState | None],
    history: History,
    every: float = SAMPLE_EVERY,
    clock: Callable[[], float] = time.time,
) -> None:
    """Sample `health()` and `feedback()` into `history` while the app runs, and serve
    it at `GET /history`."""
    app[HISTORY] = history
    app[_SOURCES] = (health, feedback, every, clock)
    app.cleanup_ctx.append(_run_sampler)
    app.router.add_get("/history", history_endpoint)


async def _run_sampler(app: web.Application) -> AsyncIterator[None]:
    health, feedback, every, clock = app[_SOURCES]
    task = asyncio.create_task(
        _sample(app[HISTORY], health, feedback, every, clock), name="history-sampler"
    )
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _sample(
    history: History,
    health: Callable[[], HealthStatus],
    feedback: Callable[[], RelayState | None],
    every: float,
    clock: Callable[[], float],
) -> None:
    failing = False
    while True:
        try:
            history.record(read(health(), feedback(), history.polled), clock())
            failing = False
        except Exception:  # a reading gone wrong must not end the history
            if not failing:  # once a run of failures, not every few seconds
                logger.exception("history sample failed")
            failing = True
        await asyncio.sleep(every)


async def history_endpoint(request: web.Request) -> web.Response:
    """`?limit=N` changes, the most recent (0 to `MAX_CHANGES`)."""
    raw = request.query.get("limit", str(DEFAULT_CHANGES))
    try:
        limit = int(raw)
    except ValueError:
        limit = -1
    if not 0 <= limit <= MAX_CHANGES:
        raise web.HTTPBadRequest(reason=f"limit must be an integer from 0 to {MAX_CHANGES}")
    body = request.app[HISTORY].state(limit).model_dump_json().encode()
    return web.Response(body=body, content_type="application/json")
