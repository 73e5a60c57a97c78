"""Probing a sidecar while a fault holds: `/livez` and `/readyz`, every answer timed."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from tests.support.sidecar import SidecarClient


@dataclass
class ProbeLog:
    answers: list[tuple[str, int, float]] = field(default_factory=list)

    def slowest(self) -> float:
        return max((elapsed for _, _, elapsed in self.answers), default=0.0)

    def statuses(self, path: str) -> set[int]:
        return {status for p, status, _ in self.answers if p == path}


@contextlib.asynccontextmanager
async def probing(client: SidecarClient) -> AsyncIterator[ProbeLog]:
    """Ask `/livez` and `/readyz` continuously in the background, timing every answer."""
    log = ProbeLog()

    async def ask() -> None:
        while True:
            for path in ("/livez", "/readyz"):
                started = time.perf_counter()
                async with client.get(path) as response:
                    await response.read()
                log.answers.append((path, response.status, time.perf_counter() - started))
            await asyncio.sleep(0.02)

    task = asyncio.create_task(ask(), name="probing")
    try:
        yield log
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
