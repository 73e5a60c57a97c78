"""Fixtures shared by every test level."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import pytest
from pytest_aiohttp import AiohttpClient

from market_data_sidecar.checks import Check
from market_data_sidecar.metrics import Metrics
from market_data_sidecar.settings import Settings
from market_data_sidecar.wiring import build_app
from tests.helpers import SidecarProcess
from tests.support.sidecar import SidecarClient, StartSidecar, make_settings

__all__ = ["make_settings"]  # still imported from here by some tests


@pytest.fixture
def settings_factory() -> Callable[..., Settings]:
    return make_settings


@pytest.fixture
def sidecar_client(aiohttp_client: AiohttpClient) -> StartSidecar:
    """Start an in-process sidecar app: `await sidecar_client(settings, checks=...)`."""

    async def start(
        settings: Settings | None = None,
        *,
        checks: Sequence[Check] | None = None,
        metrics: Metrics | None = None,
    ) -> SidecarClient:
        app = build_app(settings or make_settings(), checks=checks, metrics=metrics)
        return await aiohttp_client(app)

    return start


@pytest.fixture
def sidecar_process() -> Iterator[Callable[..., SidecarProcess]]:
    """Run `market-data-sidecar` as a subprocess; always stopped at the end."""
    started: list[SidecarProcess] = []

    def start(env: dict[str, str] | None = None, args: list[str] | None = None) -> SidecarProcess:
        defaults = {
            "SIDECAR_STORE_METRICS_URL": "",
            "SIDECAR_CHECK_INTERVAL": "0.2",
            "SIDECAR_SHUTDOWN_GRACE": "0.5",
            "SIDECAR_DISK_PATHS": '["/"]',
        }
        process = SidecarProcess({**defaults, **(env or {})}, args)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()
