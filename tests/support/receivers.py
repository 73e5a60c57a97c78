"""Orchestrators that receive feedback webhooks: the one webhook receiver (the demo's, in
`market_data_sidecar.demo.webhooks`), what the `orchestrator` fixture hands out, and a
URL where nothing listens.
"""

from __future__ import annotations

from typing import Protocol

from market_data_sidecar.demo.webhooks import Attempt, WebhookReceiver
from tests.support.helpers import free_port

__all__ = ["Attempt", "StartOrchestrator", "WebhookReceiver", "closed_port_url"]


class StartOrchestrator(Protocol):
    """`await orchestrator()` (or `orchestrator(port)` to come back on the same port):
    a started receiver on 127.0.0.1 that answers 200 until the test scripts otherwise."""

    async def __call__(self, port: int | None = None) -> WebhookReceiver: ...


def closed_port_url() -> str:
    """A URL where nothing listens: connections are refused."""
    return f"http://127.0.0.1:{free_port()}/hook"
