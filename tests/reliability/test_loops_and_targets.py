"""One line mistaken in `SIDECAR_TARGETS`: a webhook that points back at the sidecar, and two
stream targets writing one key. The first is refused at start-up when the address says so,
and at the intake (508) when it does not (here, through a TCP proxy of the test's own)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from loguru import logger

from market_data_sidecar.feedback.intake import Rejected
from market_data_sidecar.feedback.model import new_event_id
from market_data_sidecar.metrics import Metrics
from market_data_sidecar.settings import ConfigError, load_settings
from tests.reliability.conftest import (
    FAST_RELAY_ENV,
    metric_value,
    relay_state,
    scrape,
    targets_env,
)
from tests.support import parts
from tests.support.helpers import SidecarProcess, eventually, free_port, run_cli, store_payload

pytestmark = pytest.mark.timeout(60, func_only=True)

JSON = {"Content-Type": "application/json"}


# -- the intake ----------------------------------------------------------------------------------


@pytest.fixture
def lines() -> Iterator[list[str]]:
    said: list[str] = []
    sink = logger.add(said.append, level="INFO", format="{message}")
    yield said
    logger.remove(sink)


def test_an_event_this_process_sent_is_refused_508_counted_and_logged_once(
    lines: list[str],
) -> None:
    metrics = Metrics()
    intake = parts.intake(metrics)
    for _ in range(3):
        with pytest.raises(Rejected) as refused:
            intake.admit({**JSON, "webhook-id": new_event_id()}, peer="127.0.0.1")
        assert refused.value.status == 508
        assert "SIDECAR_TARGETS" in refused.value.message
    # Another sidecar's ids (another process prefix) and the store's (none) are admitted.
    intake.admit({**JSON, "webhook-id": "evt_0123456789abcdef0000000000000000"}, peer="::1")
    intake.admit(JSON, peer="127.0.0.1")
    loops = metrics.registry.get_sample_value(
        "sidecar_feedback_received_total", {"outcome": "loop"}
    )
    assert loops == 3
    assert len([line for line in lines if "508" in line]) == 1


class Proxy:
    """A TCP proxy to `port`: an address the configuration cannot tell is the sidecar's."""

    def __init__(self, port: int) -> None:
        self.target_port = port
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Proxy:
        self._server = await asyncio.start_server(self._pipe, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                "127.0.0.1", self.target_port
            )
        except OSError:
            writer.close()
            return
        await asyncio.gather(
            _copy(reader, upstream_writer), _copy(upstream_reader, writer), return_exceptions=True
        )


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        with contextlib.suppress(OSError):
            writer.close()


@pytest.fixture
async def looped_sidecar() -> AsyncIterator[tuple[SidecarProcess, Proxy]]:
    port = free_port()
    async with Proxy(port) as proxy:
        target = {"kind": "http", "name": "self", "url": f"http://127.0.0.1:{proxy.port}/feedback"}
        env = {
            **FAST_RELAY_ENV,
            "SIDECAR_PORT": str(port),
            "SIDECAR_STORE_METRICS_URL": "",
            "SIDECAR_DISK_PATHS": '["/"]',
            **targets_env(target),
        }
        sidecar = SidecarProcess(env)
        try:
            await sidecar.wait_listening()
            yield sidecar, proxy
        finally:
            sidecar.stop()


async def test_a_webhook_that_comes_back_to_the_intake_is_refused_and_not_retried(
    looped_sidecar: tuple[SidecarProcess, Proxy],
) -> None:
    sidecar, proxy = looped_sidecar
    async with (
        aiohttp.ClientSession() as session,
        session.post(sidecar.url + "/feedback", json=store_payload()) as response,
    ):
        assert response.status == 202

    async def dropped() -> Any:
        state = await relay_state(sidecar)
        (target,) = state["targets"]
        return target if target["dropped"] else None

    target = await eventually(dropped, message="the looped event dropped")
    assert target["last_error"].startswith("http_508"), target
    exposition = await scrape(sidecar)
    accepted = metric_value(exposition, "sidecar_feedback_received_total", outcome="accepted")
    loops = metric_value(exposition, "sidecar_feedback_received_total", outcome="loop")
    # One POST stays one event: before, it became about a thousand a second, for ever.
    assert (accepted, loops) == (1, 1)
    assert target["retried"] == 0
    assert proxy.connections == 1
    output = sidecar.output()
    assert output.count("508 loop") == 1, output[-3000:]


# -- start-up ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/feedback",
        "http://localhost:{port}/feedback",
        "http://[::1]:{port}/feedback",
        "http://127.0.0.2:{port}/feedback",
        "http://0.0.0.0:{port}/",
    ],
)
def test_an_http_target_at_the_sidecars_own_address_is_a_one_line_error(url: str) -> None:
    port = free_port()
    target = {"kind": "http", "name": "orch", "url": url.format(port=port)}
    result = run_cli("run", env={"SIDECAR_PORT": str(port), **targets_env(target)})
    assert result.returncode == 2, result
    (line,) = result.stderr.strip().splitlines()
    assert "SIDECAR_TARGETS" in line
    assert "'orch' points at this sidecar's own address" in line


def test_the_same_port_elsewhere_or_another_port_here_is_fine() -> None:
    settings = load_settings(
        port=8090,
        targets=[
            {"kind": "http", "name": "a", "url": "http://orchestrator:8090/feedback"},
            {"kind": "http", "name": "b", "url": "http://127.0.0.1:8091/feedback"},
        ],
    )
    assert [target.label for target in settings.targets] == ["a", "b"]
    # Listening on loopback only: another machine's address on the same port is not it.
    assert load_settings(
        host="127.0.0.1", targets=[{"kind": "http", "url": "http://10.1.2.3:8090/"}]
    ).targets


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("redis://redis:6379/0", "redis://redis:6379/0"),
        ("redis://localhost:6379/0", "redis://127.0.0.1"),
        ("redis://user:pw@redis/2", "redis://redis:6379?db=2"),
    ],
)
def test_two_stream_targets_on_one_key_are_a_one_line_error_naming_both(
    first: str, second: str
) -> None:
    targets = [
        {"kind": "redis-stream", "name": "fleet", "url": first},
        {"kind": "redis-stream", "name": "coordinator", "url": second, "scope": "coordinator"},
    ]
    result = run_cli("run", env=targets_env(*targets))
    assert result.returncode == 2, result
    (line,) = result.stderr.strip().splitlines()
    assert "SIDECAR_TARGETS" in line
    assert "'fleet' and 'coordinator' both write stream mdp:mdp.telemetry.feedback" in line
    assert "pw" not in line


@pytest.mark.parametrize(
    "second",
    [
        {"url": "redis://redis:6379/1"},  # another database
        {"url": "redis://other:6379/0"},  # another server
        {"url": "redis://redis:6379/0", "namespace": "x"},  # another key
    ],
)
def test_stream_targets_on_different_keys_are_fine(second: dict[str, str]) -> None:
    targets = [
        {"kind": "redis-stream", "name": "a", "url": "redis://redis:6379/0"},
        {"kind": "redis-stream", "name": "b", **second},
    ]
    assert len(load_settings(targets=targets).targets) == 2


@pytest.mark.parametrize(
    "targets",
    [
        [{"kind": "http", "url": "http://a/"}, {"kind": "http", "url": "http://a/"}],
        [{"kind": "redis-stream", "url": "redis://r", "namespace": "no:colon"}],
        [{"kind": "http", "url": "http://a/", "scope": "fleet"}],
        [{"kind": "nope", "url": "http://a/"}],
    ],
)
def test_every_target_error_names_sidecar_targets(targets: list[dict[str, str]]) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings(targets=json.loads(json.dumps(targets)))
    assert str(error.value).startswith("invalid configuration: SIDECAR_TARGETS"), error.value


def test_a_redis_url_redis_py_cannot_parse_names_sidecar_targets() -> None:
    target = {
        "kind": "redis-pubsub",
        "name": "bus",
        "url": "redis://redis:6379/0?socket_timeout=abc",
    }
    result = run_cli("run", env=targets_env(target))
    assert result.returncode == 2, result
    (line,) = result.stderr.strip().splitlines()
    assert "SIDECAR_TARGETS: target 'bus': url:" in line, line
