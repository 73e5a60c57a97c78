"""The `orchestrator` fixture: real webhook receivers on 127.0.0.1 that tests script
(healthy, a series of statuses, slow, hanging), all stopped at the end of the test.

The receiver is `tests.support.receivers.WebhookReceiver` (the demo's own).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from market_data_sidecar.metrics import Metrics
from market_data_sidecar.publishers.redis import RedisStreamPublisher
from market_data_sidecar.settings import RedisStreamTargetSettings
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


#: `publisher_factory(url, namespace, **options)`: a stream target's publisher.
Publish = Callable[..., RedisStreamPublisher]


@pytest.fixture
async def publisher_factory() -> AsyncIterator[Publish]:
    """`publisher_factory(url, namespace, **options)`: a stream publisher (start it); every
    one is closed at the end."""
    made: list[RedisStreamPublisher] = []

    def make(url: str, namespace: str, **options: object) -> RedisStreamPublisher:
        target = RedisStreamTargetSettings.model_validate(
            {"kind": "redis-stream", "url": url, "namespace": namespace, **options}
        )
        publisher = RedisStreamPublisher(target, metrics=Metrics())
        made.append(publisher)
        return publisher

    yield make
    for publisher in made:
        await publisher.close()
