"""A webhook receiver as an orchestrator runs one: the demo's, the tests' and the bench's.

It records each POST (headers, body, arrival time, peer, its answer) and answers as it is
told: a fixed status, a scripted series (500s, 429 with `Retry-After`, 410), slowly, or
not at all until `recover()` or `stop()`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web


@dataclass
class Attempt:
    """One POST as the receiver got it."""

    headers: dict[str, str]
    body: bytes
    #: `time.monotonic()` once the body has arrived.
    at: float
    #: The client's (host, port): one port for many attempts means keep-alive worked.
    peer: tuple[str, int]
    #: What the receiver answered; 0 while it has not answered yet.
    status: int = 0

    @property
    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data


class WebhookReceiver:
    """POST `path` on `host`:`port` (0: one the kernel chooses at `start`)."""

    def __init__(
        self,
        port: int | None = None,
        *,
        path: str = "/hook",
        host: str = "127.0.0.1",
        status: int = 200,
        record: bool = True,
        on_attempt: Callable[[Attempt], None] | None = None,
    ) -> None:
        self.host = host
        self.port = port or 0
        self.path = path
        #: Every attempt, in arrival order (kept only with `record`; a long-running
        #: receiver such as the demo's counts them through `on_attempt` instead).
        self.attempts: list[Attempt] = []
        self.record = record
        self.on_attempt = on_attempt
        #: Status (and headers) for attempts while the script lasts; then `status`.
        self._script: deque[tuple[int, dict[str, str]]] = deque()
        self.status = status
        self.delay = 0.0
        self.hanging = False
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.path}"

    @property
    def delivered(self) -> list[Attempt]:
        return [a for a in self.attempts if 200 <= a.status < 300]

    def events(self) -> list[dict[str, Any]]:
        """Bodies of the delivered attempts, in arrival order."""
        return [a.json for a in self.delivered]

    def answer(self, *statuses: int, headers: dict[str, str] | None = None) -> None:
        """Answer the next attempts with `statuses`, in order."""
        self._script.extend((status, headers or {}) for status in statuses)

    def hang(self) -> None:
        """Accept requests and never answer (until `recover` or `stop`)."""
        self.hanging = True

    def recover(self) -> None:
        self.hanging = False
        self._script.clear()
        self.status = 200
        self._release.set()
        self._release = asyncio.Event()

    def app(self) -> web.Application:
        """The receiver's application, for a caller that serves it (and may add routes)."""
        app = web.Application()
        app.router.add_post(self.path, self._handle)
        return app

    async def start(self) -> WebhookReceiver:
        self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port, reuse_address=True).start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        arrived = time.monotonic()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        attempt = Attempt(dict(request.headers), body, arrived, tuple(peer or ("", 0))[:2])
        if self.record:
            self.attempts.append(attempt)
        if self.on_attempt is not None:
            self.on_attempt(attempt)
        if self.hanging:
            await self._release.wait()
        if self.delay:
            await asyncio.sleep(self.delay)  # a slow orchestrator, not synchronisation
        status, headers = self._script.popleft() if self._script else (self.status, {})
        attempt.status = status
        return web.Response(status=status, headers=headers)
