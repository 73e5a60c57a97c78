"""Feedback reaches the real consumers: the store's `HttpFeedbackBroadcaster` -> the sidecar
-> Redis -> market-data-pipeline's `FeedbackConsumer` (its `RateCoordinator` rescales) and
market-data-orchestrator's `PulseObserver` (it counts the same events), each their own
released code in their own process. Nothing here is a model of what they expect."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from tests.consumers.conftest import (
    BASE_RATE,
    DEPTHS,
    StartDriver,
    dead_letters,
    is_event,
    observed,
    rate_is,
    start_consumers,
    start_sidecar,
    start_store,
    store_sends,
    stream_target,
)
from tests.support.helpers import SidecarProcess

# Installing the consumers is the session fixture's (bounded by its own timeout); the
# tests themselves stay within a minute.
pytestmark = pytest.mark.timeout(60, func_only=True)

#: From the pipeline's code: `FeedbackHandler`'s default policy (ok 1.0, soft 0.5, hard 0.0)
#: on `RateCoordinator.set_budget_scale`, `max(1, int(60 * scale))` tokens per second.
EXPECTED = [("soft", 0.5, 30), ("hard", 0.0, 1), ("ok", 1.0, 60)]


async def test_store_feedback_rescales_the_pipeline_and_the_orchestrator_counts_it(
    sidecar_process: Callable[..., SidecarProcess], start_driver: StartDriver, redis_url: str
) -> None:
    """The whole path, soft -> hard -> ok, one level at a time (the stream target conflates
    per coordinator, so events sent together could arrive as the latest alone)."""
    sidecar, (pipeline, observer) = await asyncio.gather(
        start_sidecar(sidecar_process, stream_target(redis_url)),
        start_consumers(start_driver, redis_url),
    )
    store = await start_store(start_driver, sidecar)
    initial = await pipeline.wait_for(is_event("rate"), message="the initial rate")
    assert (initial["scale"], initial["rate"]) == (1.0, BASE_RATE)

    counts: dict[str, int] = {}
    for level, scale, rate in EXPECTED:
        reason = " queue_recovered" if level == "ok" else ""
        await store_sends(store, f"{level} {DEPTHS[level]} bars-coord{reason}")
        await pipeline.wait_for(rate_is(level, scale, rate), message=f"rate {rate} ({level})")
        counts[level] = 1
        await observer.wait_for(observed("bars-coord", dict(counts)), message=f"{level} seen")

    scales = [(line["level"], line["scale"], line["rate"]) for line in pipeline.lines[1:]]
    assert scales == [(None, 1.0, BASE_RATE), *EXPECTED]
    last = observer.lines[-1]
    assert (last["seen"], last["errors"], last["schema_id"]) == (3, 0, "telemetry.FeedbackEvent")
    assert last["headers"].get("reason") == "queue_recovered"
    assert await dead_letters(redis_url) == 0


async def test_the_pipeline_follows_the_latest_event_whatever_its_coordinator(
    sidecar_process: Callable[..., SidecarProcess], start_driver: StartDriver, redis_url: str
) -> None:
    """The pipeline has one rate per provider, not per store coordinator: one coordinator's
    `ok` lifts another's `hard`. The observer still tells them apart."""
    sidecar, (pipeline, observer) = await asyncio.gather(
        start_sidecar(sidecar_process, stream_target(redis_url)),
        start_consumers(start_driver, redis_url),
    )
    store = await start_store(start_driver, sidecar)

    await store_sends(store, "hard 850 bars-coord")
    await pipeline.wait_for(rate_is("hard", 0.0, 1), message="bars-coord hard")
    await store_sends(store, "ok 100 options-coord")
    await pipeline.wait_for(rate_is("ok", 1.0, BASE_RATE), message="options-coord ok")
    line = await observer.wait_for(
        lambda line: line.get("event") == "observed" and line["seen"] == 2, message="both seen"
    )
    assert line["counts"] == {"bars-coord": {"hard": 1}, "options-coord": {"ok": 1}}
    assert await dead_letters(redis_url) == 0


async def test_with_md_namespace_the_consumers_read_two_keys_and_a_target_each_serves_one(
    sidecar_process: Callable[..., SidecarProcess], start_driver: StartDriver, redis_url: str
) -> None:
    """`MD_NAMESPACE=blue`: the pipeline reads `blue:blue.telemetry.feedback`, but the
    observer's bus prefix is always `mdp`, so it reads `mdp:blue.telemetry.feedback`."""
    pipeline, observer = await start_consumers(start_driver, redis_url, namespace="blue")
    keys = [driver.matching(is_event("ready"))[0]["key"] for driver in (pipeline, observer)]
    assert keys == ["blue:blue.telemetry.feedback", "mdp:blue.telemetry.feedback"]
    for_pipeline = {**stream_target(redis_url), "name": "pipeline", "namespace": "blue"}
    for_observer = {
        **stream_target(redis_url),
        "name": "orchestrator",
        "stream": "blue.telemetry.feedback",
    }
    sidecar = await start_sidecar(sidecar_process, for_pipeline, for_observer)
    store = await start_store(start_driver, sidecar)

    await store_sends(store, f"soft {DEPTHS['soft']} bars-coord")
    await pipeline.wait_for(rate_is("soft", 0.5, 30), message="rate 30 (soft)")
    await observer.wait_for(observed("bars-coord", {"soft": 1}), message="soft seen")
