"""The sampler that keeps the history while the app runs, and `GET /history`.

The sampler is one task, created, named and cancelled by the app's cleanup context.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web
from loguru import logger
from market_data_core.telemetry import HealthStatus

from market_data_sidecar.feedback.state import RelayState
from market_data_sidecar.tasks import cancelled
from market_data_sidecar.views.history import (
    DEFAULT_CHANGES,
    MAX_CHANGES,
    SAMPLE_EVERY,
    History,
    read,
)

HISTORY = web.AppKey("history", History)

Health = Callable[[], HealthStatus]
Feedback = Callable[[], RelayState | None]


def add_history(
    app: web.Application, *, health: Health, feedback: Feedback, history: History
) -> None:
    """Sample `health()` and `feedback()` into `history` while the app runs, and serve
    it at `GET /history` (the status page draws it too)."""
    app[HISTORY] = history
    app.cleanup_ctx.append(_sampler(history, health, feedback))
    app.router.add_get("/history", history_endpoint)


def _sampler(
    history: History, health: Health, feedback: Feedback
) -> Callable[[web.Application], AsyncIterator[None]]:
    """The app's cleanup context that runs the sampler's task."""

    async def run(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(_sample(history, health, feedback), name="history-sampler")
        yield
        await cancelled(task)

    return run


async def _sample(history: History, health: Health, feedback: Feedback) -> None:
    failing = False
    while True:
        try:
            history.record(read(health(), feedback(), history.polled), time.time())
            failing = False
        except Exception:  # a reading gone wrong must not end the history
            if not failing:  # once a run of failures, not every few seconds
                logger.exception("history sample failed")
            failing = True
        await asyncio.sleep(SAMPLE_EVERY)


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
