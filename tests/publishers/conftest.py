"""The `orchestrator` fixture: real webhook receivers on 127.0.0.1 that tests script
(healthy, a series of statuses, slow, hanging), all stopped at the end of the test.

The receiver is `tests.support.receivers.WebhookReceiver` (the demo's own).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.receivers import StartOrchestrator, WebhookReceiver

__all__ = ["StartOrchestrator", "orchestrator"]  # StartOrchestrator: for older importers


@pytest.fixture
async def orchestrator() -> AsyncIterator[StartOrchestrator]:
    """Start orchestrators: `await orchestrator()`; all stopped at the end of the test."""
    started: list[WebhookReceiver] = []

    async def start(port: int | None = None) -> WebhookReceiver:
        receiver = await WebhookReceiver(port).start()
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        await receiver.stop()
