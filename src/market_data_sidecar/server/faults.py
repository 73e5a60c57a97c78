"""Client faults: every fault a client causes counted by kind, and logged at most once
per kind per interval with the count since the last line (`logs.ThrottledLog`);
asyncio's accept errors routed to the same sparing log.
"""

from __future__ import annotations

import asyncio
import errno
from typing import Any

from aiohttp import web
from loguru import logger

from market_data_sidecar.logs import ThrottledLog
from market_data_sidecar.metrics import Metrics

#: The accept errors asyncio reports when the process has no file descriptor left.
_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
#: The errors of a socket whose client has already gone.
_PEER_GONE = {errno.ENOTCONN, errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED}


class ClientFaults:
    """Client faults (bad framing, timeouts, aborts, 4xx), counted and logged sparingly.

    `detail` is always text of the sidecar's own (an exception's type, a status): never
    anything the client sent, which may be a token."""

    def __init__(self, metrics: Metrics, interval: float) -> None:
        self.metrics = metrics
        self._log = ThrottledLog(interval)

    def record(self, kind: str, detail: str = "") -> None:
        self.metrics.client_faults.labels(kind).inc()
        count = self._log.note(kind)
        if count:
            suffix = f" ({detail})" if detail else ""
            logger.warning(
                "client fault: {}{}; {} since the last line about it", kind, suffix, count
            )

    def server_error(self, what: str, exc: BaseException | None) -> None:
        """An error below the application (aiohttp's own), logged without a traceback:
        its frames may hold the request's headers."""
        count = self._log.note(f"server:{what}")
        if count:
            name = type(exc).__name__ if exc is not None else "no exception"
            logger.error("{}: {}; {} since the last line about it", what, name, count)

    def accept_error(self, exc: BaseException | None) -> None:
        """The listening socket could not accept (no file descriptor left)."""
        self.metrics.accept_errors.inc()
        count = self._log.note("accept")
        if count:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            logger.error(
                "cannot accept connections: {}; {} since the last line about it", reason, count
            )


def install_accept_error_log(loop: asyncio.AbstractEventLoop, faults: ClientFaults) -> None:
    """Route asyncio's accept errors (a traceback per retry, every second, while out of
    file descriptors) and a gone client's socket errors to one counted line per interval;
    anything else as before."""
    previous = loop.get_exception_handler()

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in _OUT_OF_RESOURCES:
            faults.accept_error(exc)
        elif isinstance(exc, OSError) and exc.errno in _PEER_GONE:
            # A client that connected and closed at once, seen by a callback already queued
            # for it: its doing, counted, and no traceback (asyncio logs one a connection).
            faults.record("connection_lost", type(exc).__name__)
        elif previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handle)


FAULTS = web.AppKey("client_faults", ClientFaults)
