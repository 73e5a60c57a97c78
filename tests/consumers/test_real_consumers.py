"""Feedback reaches the real consumers: the store's `HttpFeedbackBroadcaster` -> the sidecar
-> Redis -> market-data-pipeline's `FeedbackConsumer` (its `RateCoordinator` rescales) and
market-data-orchestrator's `PulseObserver` (it counts the same events), each their own
released code in their own process. Nothing here is a model of what they expect."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.consumers.conftest import FEEDBACK_KEY, Driver, Line, consumer_env, is_event
from tests.helpers import SidecarProcess

# Installing the consumers is the session fixture's (bounded by its own timeout); the
# tests themselves stay within a minute.
pytestmark = pytest.mark.timeout(60, func_only=True)

#: From the pipeline's code: `FeedbackHandler`'s default policy (ok 1.0, soft 0.5, hard 0.0)
#: on `RateCoordinator.set_budget_scale`, `max(1, int(60 * scale))` tokens per second.
BASE_RATE = 60
EXPECTED = [("soft", 0.5, 30), ("hard", 0.0, 1), ("ok", 1.0, 60)]
#: Queue depths of a 1000-slot queue at each level, with the store's 50%/80% watermarks.
DEPTHS = {"ok": 100, "soft": 600, "hard": 850}

StartDriver = Callable[..., Any]


async def start_sidecar(
    sidecar_process: Callable[..., SidecarProcess], redis_url: str, **env: str
) -> SidecarProcess:
    """The real sidecar with one stream target: only kind, name and url, all defaults."""
    target = {"kind": "redis-stream", "name": "pulse", "url": redis_url}
    sidecar = sidecar_process({"SIDECAR_TARGETS": json.dumps([target]), **env})
    await sidecar.wait_listening()
    return sidecar


async def start_consumers(start_driver: StartDriver, redis_url: str) -> tuple[Driver, Driver]:
    """The pipeline's consumer and the orchestrator's observer, once their groups exist
    (both start at `$`: anything written before is not theirs)."""
    env = consumer_env(redis_url)
    pipeline, observer = await asyncio.gather(
        start_driver("pipeline_driver.py", env=env), start_driver("observer_driver.py", env=env)
    )
    await asyncio.gather(
        pipeline.wait_for(is_event("ready"), 30, message="pipeline consumer group"),
        observer.wait_for(is_event("ready"), 30, message="observer consumer group"),
    )
    for driver in (pipeline, observer):
        assert driver.matching(is_event("ready"))[0]["key"] == FEEDBACK_KEY
    return pipeline, observer


async def start_store(start_driver: StartDriver, sidecar: SidecarProcess) -> Driver:
    store: Driver = await start_driver("store_driver.py", f"{sidecar.url}/feedback")
    await store.wait_for(is_event("ready"), 30, message="store broadcaster")
    return store


async def store_sends(store: Driver, command: str) -> Line:
    """One event through the store's own bus and broadcaster; fails unless it got a 2xx."""
    since = len(store.lines)
    await store.send(command)
    line = await store.wait_for(
        lambda line: line.get("event") in {"sent", "failed"}, since=since, message=command
    )
    assert line["event"] == "sent", line
    return line


def rate_is(level: str, scale: float, rate: int) -> Callable[[Line], bool]:
    return lambda line: (
        line.get("event") == "rate"
        and line["level"] == level
        and line["scale"] == scale
        and line["rate"] == rate
    )


def observed(coordinator: str, counts: dict[str, int]) -> Callable[[Line], bool]:
    return lambda line: (
        line.get("event") == "observed" and line["counts"].get(coordinator) == counts
    )


async def dead_letters(redis_url: str) -> int:
    """What the consumers' bus could not decode: it goes to `<key>.dlq`, silently."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        return int(await client.xlen(f"{FEEDBACK_KEY}.dlq"))
    finally:
        await client.aclose()


async def test_store_feedback_rescales_the_pipeline_and_the_orchestrator_counts_it(
    sidecar_process: Callable[..., SidecarProcess], start_driver: StartDriver, redis_url: str
) -> None:
    """The whole path, soft -> hard -> ok, one level at a time (the stream target conflates
    per coordinator, so events sent together could arrive as the latest alone)."""
    sidecar, (pipeline, observer) = await asyncio.gather(
        start_sidecar(sidecar_process, redis_url), start_consumers(start_driver, redis_url)
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
        start_sidecar(sidecar_process, redis_url), start_consumers(start_driver, redis_url)
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
