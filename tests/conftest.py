"""Fixtures shared by every test level."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence

import pytest
from pytest_aiohttp import AiohttpClient

from market_data_sidecar.checks import Check
from market_data_sidecar.metrics import Metrics
from market_data_sidecar.settings import Settings
from market_data_sidecar.wiring import build_app
from tests.support.helpers import SidecarProcess
from tests.support.sidecar import SidecarClient, StartSidecar, make_settings
from tests.support.tcp_proxy import StartProxy, TcpProxy

__all__ = ["make_settings"]  # still imported from here by some tests

pytest_plugins = ["tests.support.exclusive"]

#: Fixtures that start a server or a process of the test's own: their tests are marked
#: `servers`, and `pytest -m "not servers"` is the quick subset (the shared PostgreSQL and
#: Redis are still used there, but nothing is started).
SERVER_FIXTURES = frozenset(
    {
        "sidecar_process",
        "postgres_instance",
        "pg",
        "replica_instance",
        "replica",
        "small_filesystem",
        "start_driver",
        "module_redis",
        "redis_url",
        "redis_server_factory",
        "redis_server",
        "chromium",
        "install_chromium",
        "tls_redis",
        "helm",
    }
)
#: Modules whose tests start processes themselves (a sidecar, a redis-server, a command).
SERVER_MODULES = frozenset(
    {
        "tests.operator.test_demo",
        "tests.operator.test_status_cli",
        "tests.operator.test_operator_assets",
        "tests.checks.test_database",
        "tests.reliability.test_secrets",
        "tests.reliability.test_loopback_intake",
        "tests.reliability.test_probes_under_attack",
        "tests.reliability.test_loops_and_targets",
        "tests.reliability.test_redis_peers",
        "tests.reliability.test_store_metrics",
        "tests.publishers.test_stream_readers_scale",
        "tests.publishers.test_redis_tls",
        "tests.publishers.test_redis_extra",
        "tests.test_cli",
    }
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark what starts servers or processes, so a change to one room can run the rest."""
    for item in items:
        module = getattr(item, "module", None)
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & SERVER_FIXTURES or getattr(module, "__name__", "") in SERVER_MODULES:
            item.add_marker(pytest.mark.servers)


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


@pytest.fixture
async def proxies() -> AsyncIterator[StartProxy]:
    """`await proxies(port)`: a TCP proxy to 127.0.0.1:port; all stopped at the end."""
    made: list[TcpProxy] = []

    async def start(port: int) -> TcpProxy:
        proxy = await TcpProxy(port).start()
        made.append(proxy)
        return proxy

    yield start
    for proxy in made:
        await proxy.stop()
