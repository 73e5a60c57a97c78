"""SIGTERM on a real `market-data-sidecar run`: accepted feedback is delivered before exit."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from tests.support.helpers import SidecarProcess, eventually, store_payload
from tests.support.receivers import StartOrchestrator


async def test_sigterm_drains_accepted_events_to_a_slow_target_then_exits_0(
    orchestrator: StartOrchestrator, sidecar_process: Callable[..., SidecarProcess]
) -> None:
    receiver = await orchestrator()
    receiver.delay = 0.3  # slow but working: five events take 1.5 s
    target = {"kind": "http", "name": "orch", "url": receiver.url, "timeout": 5}
    sidecar = sidecar_process(
        env={"SIDECAR_TARGETS": json.dumps([target]), "SIDECAR_DRAIN_TIMEOUT": "10"}
    )
    await sidecar.wait_listening()

    async with aiohttp.ClientSession() as session:
        for n in range(5):
            url = sidecar.url + "/feedback"
            async with session.post(url, json=store_payload(f"coord-{n}", n)) as response:
                assert response.status == 202
    assert len(receiver.delivered) < 5
    sidecar.proc.terminate()

    def exited() -> Any:
        return sidecar.proc.poll() is not None

    await eventually(exited, timeout=20, message="sidecar exited")
    assert sidecar.proc.returncode == 0, sidecar.output()
    assert sorted(e["coordinator_id"] for e in receiver.events()) == [
        f"coord-{n}" for n in range(5)
    ]
    assert "feedback drained" in sidecar.output()


@pytest.mark.parametrize(
    "target",
    [
        # Rejected while the settings load.
        {"kind": "http", "url": "http://127.0.0.1:9/x", "secret": "whsec_not base64 s3cr3t"},
        # Rejected while the publishers are built, after the settings loaded.
        {"kind": "redis-pubsub", "url": "redis://:s3cr3t@127.0.0.1:noport/0"},
    ],
)
async def test_a_target_that_cannot_be_configured_exits_2(
    sidecar_process: Callable[..., SidecarProcess], target: dict[str, str]
) -> None:
    sidecar = sidecar_process(env={"SIDECAR_TARGETS": json.dumps([target])})

    await eventually(lambda: sidecar.proc.poll() is not None, timeout=20, message="exited")

    assert sidecar.proc.returncode == 2
    [line] = sidecar.output().strip().splitlines()
    assert line.startswith("market-data-sidecar: invalid configuration")
    assert "s3cr3t" not in line
