"""The in-process sidecar the `sidecar_client` fixture starts, and its type."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

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
