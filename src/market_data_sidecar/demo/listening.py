"""The demo's servers: an aiohttp app on a local port, cleaned up when the block exits."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web


@asynccontextmanager
async def listening(
    app: web.Application, host: str, port: int = 0, *, shutdown_timeout: float = 60.0
) -> AsyncIterator[int]:
    """Serve `app` on `host`:`port` (0: a free one) until the block exits; yields the port."""
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, shutdown_timeout=shutdown_timeout
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        # The port the kernel chose, from the runner's public view of its sockets.
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()
