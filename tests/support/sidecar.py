"""Settings for in-process tests, and the sidecar the `sidecar_client` fixture starts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from aiohttp import web
from aiohttp.test_utils import TestClient

from market_data_sidecar.checks import Check
from market_data_sidecar.metrics import Metrics
from market_data_sidecar.settings import Settings

#: A test client of the sidecar's aiohttp app.
SidecarClient = TestClient[web.Request, web.Application]


class StartSidecar(Protocol):
    """`await sidecar_client(settings, checks=..., metrics=...)`."""

    async def __call__(
        self,
        settings: Settings | None = None,
        *,
        checks: Sequence[Check] | None = None,
        metrics: Metrics | None = None,
    ) -> SidecarClient: ...


def make_settings(**overrides: Any) -> Settings:
    """Settings for in-process tests: no store, fast checks, no shutdown grace."""
    defaults: dict[str, Any] = {
        "store_metrics_url": "",
        "database_url": "",
        "check_interval": 0.2,
        "check_timeout": 1.0,
        "shutdown_grace": 0.0,
        "disk_paths": ["/"],
        # Off unless a test is about it: resyncs repeat deliveries other tests count.
        "resync_interval": 0.0,
    }
    return Settings(**{**defaults, **overrides})
