"""The stream's readers, seen by the sidecar with the real consumers on the other end: a key
nobody reads is reported until the pipeline starts, and a pipeline that starts after the
last crossing holds the right rate within 2 s although the periodic resync is 10 min away.

Both hold in any scope: they assert on consumer groups and on the rate the pipeline
reaches, not on per-coordinator entries."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.consumers.conftest import (
    DEPTHS,
    FEEDBACK_KEY,
    StartDriver,
    consumer_env,
    dead_letters,
    is_event,
    rate_is,
    start_consumers,
    start_sidecar,
    start_store,
    store_sends,
    stream_target,
)
from tests.support.helpers import SidecarProcess, eventually

pytestmark = pytest.mark.timeout(90, func_only=True)

#: Far beyond any deadline here: a consumer that converges did so by being seen arriving.
LONG_RESYNC = {"SIDECAR_RESYNC_INTERVAL": "600"}
#: What the issue asks of a late pipeline.
CONVERGENCE = 2.0


async def feedback_component(sidecar: SidecarProcess) -> dict[str, Any]:
    _, body = await sidecar.get("/healthz")
    components = json.loads(body)["components"]
    return next(c for c in components if c["name"] == "feedback")


async def readers(sidecar: SidecarProcess) -> list[dict[str, Any]] | None:
    _, body = await sidecar.get("/feedback")
    readers: list[dict[str, Any]] | None = json.loads(body)["targets"][0]["readers"]
    return readers


async def test_a_key_no_group_reads_is_reported_until_the_consumers_start(
    sidecar_process: Callable[..., SidecarProcess], start_driver: StartDriver, redis_url: str
) -> None:
    sidecar = await start_sidecar(sidecar_process, stream_target(redis_url), **LONG_RESYNC)
    store = await start_store(start_driver, sidecar)
    await store_sends(store, f"soft {DEPTHS['soft']} bars-coord")

    async def nobody_reads() -> bool:
        component = await feedback_component(sidecar)
        reason = component["details"].get("reason", "")
        return component["state"] == "degraded" and f"stream {FEEDBACK_KEY}" in reason

    await eventually(nobody_reads, message="feedback degraded, naming the key")
    assert await readers(sidecar) == []

    pipeline, _ = await start_consumers(start_driver, redis_url)

    async def read() -> bool:
        component = await feedback_component(sidecar)
        groups = {group["group"] for group in await readers(sidecar) or []}
        return component["state"] == "healthy" and groups == {"pipeline", "orchestrator"}

    await eventually(read, message="feedback healthy, both groups seen")
    # The arrival brought the current level, with no resync due for 10 min.
    await pipeline.wait_for(rate_is("soft", 0.5, 30), 5, message="the current rate")
    _, metrics = await sidecar.get("/metrics")
    assert 'sidecar_stream_group_consumers{group="pipeline",target="pulse"}' in metrics
    assert await dead_letters(redis_url) == 0


async def test_a_late_pipeline_holds_the_right_rate_within_two_seconds(
    sidecar_process: Callable[..., SidecarProcess], start_driver: StartDriver, redis_url: str
) -> None:
    sidecar = await start_sidecar(sidecar_process, stream_target(redis_url), **LONG_RESYNC)
    store = await start_store(start_driver, sidecar)
    await store_sends(store, f"soft {DEPTHS['soft']} bars-coord")
    await store_sends(store, f"hard {DEPTHS['hard']} bars-coord")

    async def watched() -> bool:
        return await readers(sidecar) is not None

    await eventually(watched, message="the sidecar reading the key")

    pipeline = await start_driver("pipeline_driver.py", env=consumer_env(redis_url))
    await pipeline.wait_for(is_event("ready"), 30, message="pipeline consumer group")
    joined = time.monotonic()
    await pipeline.wait_for(rate_is("hard", 0.0, 1), CONVERGENCE, message="the hard rate")
    assert time.monotonic() - joined < CONVERGENCE
    assert await dead_letters(redis_url) == 0
