"""Real aiohttp servers standing in for orchestrators that receive feedback webhooks.

An `Orchestrator` answers every POST according to what the test tells it: healthy, a
scripted series of statuses (500s, 429 with `Retry-After`, 410), slow, or hanging until
the test ends. It records every attempt with its headers, body and arrival time.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web

from tests.helpers import free_port


@dataclass
class Attempt:
    """One POST as the orchestrator received it."""

    headers: dict[str, str]
    body: bytes
    #: `time.monotonic()` on arrival (same clock as the test process).
    at: float
    #: The client's (host, port): one port for many attempts means keep-alive worked.
    peer: tuple[str, int]
    #: What the orchestrator answered; 0 while it has not answered yet.
    status: int = 0

    @property
    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data


class Orchestrator:
    """A webhook receiver on 127.0.0.1 whose answers a test scripts."""

    def __init__(self, port: int | None = None, *, path: str = "/hook") -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}{path}"
        self._path = path
        self.attempts: list[Attempt] = []
        #: Status (and headers) for attempts while the script lasts; then `status`.
        self._script: deque[tuple[int, dict[str, str]]] = deque()
        self.status = 200
        self.delay = 0.0
        self.hanging = False
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None

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
        """Accept requests and never answer (until `recover` or the end of the test)."""
        self.hanging = True

    def recover(self) -> None:
        self.hanging = False
        self._script.clear()
        self.status = 200
        self._release.set()
        self._release = asyncio.Event()

    async def start(self) -> Orchestrator:
        app = web.Application()
        app.router.add_post(self._path, self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()
        return self

    async def stop(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        attempt = Attempt(dict(request.headers), body, time.monotonic(), tuple(peer or ("", 0))[:2])
        self.attempts.append(attempt)
        if self.hanging:
            await self._release.wait()
        if self.delay:
            await asyncio.sleep(self.delay)  # a slow orchestrator, not synchronisation
        status, headers = self._script.popleft() if self._script else (self.status, {})
        attempt.status = status
        return web.Response(status=status, headers=headers)


StartOrchestrator = Callable[..., Awaitable[Orchestrator]]


@pytest.fixture
async def orchestrator() -> AsyncIterator[StartOrchestrator]:
    """Start orchestrators: `await orchestrator()`; all stopped at the end of the test."""
    started: list[Orchestrator] = []

    async def start(port: int | None = None) -> Orchestrator:
        receiver = await Orchestrator(port).start()
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        await receiver.stop()


def closed_port_url() -> str:
    """A URL where nothing listens: connections are refused."""
    return f"http://127.0.0.1:{free_port()}/hook"
