"""Fixtures for relay tests: real orchestrators, the store's metrics endpoint, and
sidecars configured to reach them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from market_data_sidecar.feedback.lane import Target
from market_data_sidecar.feedback.router import Router
from market_data_sidecar.settings import Settings
from tests.checks.conftest import store_metrics  # noqa: F401 - the checks' store
from tests.publishers.conftest import orchestrator  # noqa: F401 - the same real receivers
from tests.support import parts
from tests.support.sidecar import make_settings

#: Fast pacing so fault tests finish in seconds; behaviour is the same as the defaults'.
FAST_RELAY: dict[str, Any] = {
    "retry_initial": 0.01,
    "retry_max": 0.05,
    "circuit_failures": 3,
    "circuit_cooldown": 0.2,
    "drain_timeout": 0.5,
}


def http_target(name: str, url: str, **options: Any) -> dict[str, Any]:
    return {"kind": "http", "name": name, "url": url, "timeout": 0.5, **options}


@pytest.fixture
def relay_settings() -> Callable[..., Settings]:
    """`relay_settings(targets=[...], **overrides)`: a sidecar with fast relay pacing."""

    def build(**overrides: Any) -> Settings:
        return make_settings(**{**FAST_RELAY, **overrides})

    return build


#: Router pacing for fault tests: retries within milliseconds, circuits that reopen fast.
FAST: dict[str, Any] = {
    "retry_initial": 0.01,
    "retry_max": 0.05,
    "circuit_failures": 5,
    "circuit_cooldown": 0.3,
}

RouterFactory = Callable[..., Awaitable[Router]]


@pytest.fixture
async def router() -> AsyncIterator[RouterFactory]:
    """`await router(*targets, **settings)`: a started router, paced as `FAST` unless the
    settings say otherwise, stopped after the test."""
    started: list[Router] = []

    async def start(*targets: Target, **settings: Any) -> Router:
        routed = parts.router(targets, **{**FAST, **settings})
        await routed.start()
        started.append(routed)
        return routed

    yield start
    for routed in started:
        await routed.stop(0.2)
