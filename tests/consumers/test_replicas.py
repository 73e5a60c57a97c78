"""Every replica of every reader hears the fleet's state: three replicas of the real
market-data-pipeline (`PipelineRuntime`, one process each, all reading group `pipeline`
as `pipeline_w1`), two replicas of the orchestrator's `PulseObserver` (group
`orchestrator`, one consumer name), and two sidecars in `fleet` scope fed by the store's
own broadcaster. Redis hands each entry of a group to one blocked reader; the sidecar's
copies make each change reach all of them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from tests.consumers.conftest import (
    DEPTHS,
    Driver,
    Line,
    StartDriver,
    consumer_env,
    dead_letters,
    is_event,
    start_sidecar,
    start_store,
    store_sends,
)
from tests.consumers.test_fleet_pipeline import SCALES, SEVERITY, member_holds, pod_worst
from tests.support.helpers import SidecarProcess, eventually

pytestmark = pytest.mark.timeout(180, func_only=True)

REPLICAS = ("replica-a", "replica-b")
PIPELINES = 3
OBSERVERS = 2
#: What the issue asks of every replica after a crossing.
APPLIED_WITHIN = 1.0
#: The first change after start: the estimate of the readers is learnt on the way.
FIRST_WITHIN = 4.0
#: ... and of a replica that starts after the last crossing.
LATE_WITHIN = 5.0

#: Crossings of both store replicas; the truth goes soft, hard, hard, soft, hard, ok, hard.
STEPS = [
    ("replica-a", "bars", "soft"),
    ("replica-a", "bars", "hard"),
    ("replica-b", "quotes", "soft"),
    ("replica-a", "bars", "ok"),
    ("replica-b", "quotes", "hard"),
    ("replica-b", "quotes", "ok"),
    ("replica-a", "quotes", "hard"),
]


@dataclass
class Loop:
    redis_url: str
    stores: dict[str, Driver]
    pipelines: list[Driver]
    observers: list[Driver]
    levels: dict[tuple[str, str], str] = field(default_factory=dict)

    def truth(self) -> str:
        return max(self.levels.values(), key=SEVERITY.__getitem__, default="ok")


def scale(driver: Driver) -> float | None:
    rates = driver.matching(is_event("rate"))
    return rates[-1]["scale"] if rates else None


def scale_is(value: float) -> Callable[[Line], bool]:
    return lambda line: line.get("event") == "rate" and line["scale"] == value


def observed_level(level: str) -> Callable[[Line], bool]:
    return lambda line: line.get("event") == "observed" and line["level"] == level


async def start_runtime(start_driver: StartDriver, redis_url: str) -> Driver:
    driver: Driver = await start_driver("runtime_driver.py", env=consumer_env(redis_url))
    await driver.wait_for(is_event("ready"), 60, message="PipelineRuntime")
    await driver.wait_for(is_event("rate"), 10, message="the runtime's first rate")
    return driver


async def start_loop(
    sidecar_process: Callable[..., SidecarProcess], start_driver: StartDriver, redis_url: str
) -> Loop:
    """The readers first (their groups start at `$`), then the sidecars and stores."""
    pipelines = [await start_runtime(start_driver, redis_url) for _ in range(PIPELINES)]
    observers = [
        await start_driver("observer_driver.py", env=consumer_env(redis_url))
        for _ in range(OBSERVERS)
    ]
    for observer in observers:
        await observer.wait_for(is_event("ready"), 60, message="PulseObserver")
    target = {"kind": "redis-stream", "name": "pulse", "url": redis_url}
    sidecars = await asyncio.gather(
        *(
            start_sidecar(
                sidecar_process,
                target,
                SIDECAR_INSTANCE=name,
                SIDECAR_FLEET_LEASE="2",
                SIDECAR_FLEET_RENEWAL="0.5",
            )
            for name in REPLICAS
        )
    )
    stores = await asyncio.gather(*(start_store(start_driver, sidecar) for sidecar in sidecars))
    return Loop(redis_url, dict(zip(REPLICAS, stores, strict=True)), pipelines, observers)


async def cross(loop: Loop, replica: str, coordinator: str, level: str) -> dict[int, float]:
    """One crossing as the store posts it; how long each pipeline replica took to hold
    the truth (0 for one that held it already)."""
    before = loop.truth()
    marks = [len(p.lines) for p in loop.pipelines]
    observed = [len(o.lines) for o in loop.observers]
    reason = " queue_recovered" if level == "ok" else ""
    sent_at = time.monotonic()
    await store_sends(loop.stores[replica], f"{level} {DEPTHS[level]} {coordinator}{reason}")
    loop.levels[(replica, coordinator)] = level
    # The truth is what the fleet has heard: a crossing that leaves the scale as it was is
    # not waited on below, and the next one must not overtake it on the way to Redis.
    worst = pod_worst(loop.levels, replica)
    await eventually(
        lambda: member_holds(loop.redis_url, replica, worst),
        timeout=10,
        message=f"{replica}'s member state {worst}",
    )
    want = SCALES[loop.truth()]
    taken: dict[int, float] = {}
    for index, (pipeline, mark) in enumerate(zip(loop.pipelines, marks, strict=True)):
        if scale(pipeline) == want and not pipeline.matching(is_event("rate"), mark):
            taken[index] = 0.0
            continue
        line = await pipeline.wait_for(
            scale_is(want), 10, since=mark, message=f"replica {index} at {want}"
        )
        taken[index] = line["t"] - sent_at
        above = [r["scale"] for r in pipeline.matching(is_event("rate"), mark) if r["scale"] > want]
        assert not above, (replica, coordinator, level, index, above)
    if loop.truth() != before:
        counted = observed_level(loop.truth())
        for observer, mark in zip(loop.observers, observed, strict=True):
            await observer.wait_for(counted, 5, since=mark, message=f"{loop.truth()} counted")
    return taken


async def test_every_pipeline_replica_applies_every_change_and_a_late_one_converges(
    sidecar_process: Callable[..., SidecarProcess], start_driver: StartDriver, redis_url: str
) -> None:
    loop = await start_loop(sidecar_process, start_driver, redis_url)
    slowest: list[float] = []
    for step in STEPS:
        taken = await cross(loop, *step)
        slowest.append(max(taken.values()))
    # The first change also teaches the sidecars how many readers wait (a round of
    # copies doubles until one is left over); every later one reaches all at once.
    assert slowest[0] <= FIRST_WITHIN, slowest
    assert max(slowest[1:]) <= APPLIED_WITHIN, list(zip(STEPS, slowest, strict=True))
    assert loop.truth() == "hard"

    # A replica started after the last crossing joins the same group under the same
    # consumer name: Redis shows no arrival, so only a re-announcement reaches it.
    late = await start_runtime(start_driver, redis_url)
    ready = late.matching(is_event("ready"))[0]
    started = late.matching(is_event("rate"))[0]["t"]
    held = await late.wait_for(scale_is(SCALES["hard"]), LATE_WITHIN + 2, message="late replica")
    assert held["t"] - started <= LATE_WITHIN, (ready, held)
    assert await dead_letters(redis_url) == 0
