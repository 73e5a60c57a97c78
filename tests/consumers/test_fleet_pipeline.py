"""One rate per provider, seen by the real pipeline: two sidecar processes as two store
replicas of two coordinators each, the store's own `HttpFeedbackBroadcaster` posting to
each, one Redis, and market-data-pipeline's `FeedbackConsumer`, whose `RateCoordinator`
keeps one scale whatever the event's coordinator. With `scope: fleet` (the stream's
default) its scale is never above the truth - the most severe level among every live
coordinator of every live replica - and settles on it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import redis.asyncio as aioredis

from tests.consumers.conftest import (
    DEPTHS,
    FEEDBACK_KEY,
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
from tests.support.helpers import SidecarProcess, eventually
from tests.support.redis_servers import RedisServer

pytestmark = pytest.mark.timeout(90, func_only=True)

#: The pipeline's `FeedbackHandler` policy.
SCALES = {"ok": 1.0, "soft": 0.5, "hard": 0.0}
SEVERITY = {"ok": 0, "soft": 1, "hard": 2}
#: Short, so that a SIGKILLed replica's lease ends within the test (renewal: a quarter).
LEASE = 2.0
RENEWAL = 0.5
#: The sidecar's member entries beside the stream, under the stream key as a hash tag.
MEMBERS = f"{{{FEEDBACK_KEY}}}:fleet:members"
REPLICAS = ("replica-a", "replica-b")


@dataclass
class Fleet:
    """Two replicas (sidecar + the store's broadcaster), the pipeline, and the truth."""

    redis_url: str
    sidecars: dict[str, SidecarProcess]
    stores: dict[str, Driver]
    pipeline: Driver
    #: (replica, coordinator) -> level, as the stores last said.
    levels: dict[tuple[str, str], str] = field(default_factory=dict)
    gone: set[str] = field(default_factory=set)

    def truth(self) -> str:
        live = [level for (replica, _), level in self.levels.items() if replica not in self.gone]
        return max(live, key=SEVERITY.__getitem__, default="ok")

    def pod_worst(self, replica: str) -> tuple[str, str]:
        return pod_worst(self.levels, replica)

    async def send(self, replica: str, coordinator: str, level: str) -> None:
        """One crossing as the store posts it; returns once the fleet holds it and the
        pipeline has read everything written so far."""
        reason = " queue_recovered" if level == "ok" else ""
        await store_sends(self.stores[replica], f"{level} {DEPTHS[level]} {coordinator}{reason}")
        self.levels[(replica, coordinator)] = level
        await eventually(
            lambda: member_holds(self.redis_url, replica, self.pod_worst(replica)),
            timeout=10,
            message=f"{replica}'s member state {self.pod_worst(replica)}",
        )
        await eventually(
            lambda: pipeline_caught_up(self.redis_url), timeout=10, message="pipeline read all"
        )


def fleet_target(redis_url: str) -> dict[str, str]:
    """A stream target as an operator writes it: its scope is the default, `fleet`."""
    return {"kind": "redis-stream", "name": "pulse", "url": redis_url}


def pod_worst(levels: dict[tuple[str, str], str], replica: str) -> tuple[str, str]:
    """(level, coordinator) of the replica's worst coordinator (ties: the fuller), as its
    member state holds it."""
    mine = [(c, level) for (r, c), level in levels.items() if r == replica]
    coordinator, level = max(mine, key=lambda item: (SEVERITY[item[1]], DEPTHS[item[1]], item[0]))
    return level, coordinator


async def member_holds(redis_url: str, replica: str, worst: tuple[str, str]) -> bool:
    """Whether a live process of `replica` holds this (level, coordinator) in Redis."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        entries = await client.hgetall(MEMBERS)
    finally:
        await client.aclose()
    for name, entry in entries.items():
        if str(name).partition("#")[0] != replica:
            continue
        # `<seq>|<renewed>|<lease end>|<drop at>|<level>|<coordinators>|<n>|<coordinator>...`
        fields = str(entry).split("|", 7)
        level, length, rest = fields[4], int(fields[6]), fields[7]
        if (level, rest[:length]) == worst:
            return True
    return False


async def pipeline_caught_up(redis_url: str) -> bool:
    """The pipeline's group has been handed the stream's last entry."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        last = (await client.xinfo_stream(FEEDBACK_KEY))["last-generated-id"]
        groups = await client.xinfo_groups(FEEDBACK_KEY)
    finally:
        await client.aclose()
    return any(g["name"] == "pipeline" and g["last-delivered-id"] == last for g in groups)


def scales(pipeline: Driver, since: int = 0) -> list[float]:
    return [line["scale"] for line in pipeline.matching(is_event("rate"), since)]


def scale_is(scale: float) -> Callable[[Line], bool]:
    return lambda line: line.get("event") == "rate" and line["scale"] == scale


async def start_pipeline(start_driver: StartDriver, redis_url: str) -> Driver:
    pipeline: Driver = await start_driver("pipeline_driver.py", env=consumer_env(redis_url))
    await pipeline.wait_for(is_event("ready"), 30, message="pipeline consumer group")
    return pipeline


async def start_fleet(
    sidecar_process: Callable[..., SidecarProcess],
    start_driver: StartDriver,
    redis_url: str,
    **env: str,
) -> Fleet:
    """The pipeline first (its group starts at `$`), then both replicas."""
    pipeline = await start_pipeline(start_driver, redis_url)
    settings = {
        "SIDECAR_FLEET_LEASE": str(LEASE),
        "SIDECAR_FLEET_RENEWAL": str(RENEWAL),
        **env,
    }
    sidecars = dict(
        zip(
            REPLICAS,
            await asyncio.gather(
                *(
                    start_sidecar(
                        sidecar_process, fleet_target(redis_url), SIDECAR_INSTANCE=name, **settings
                    )
                    for name in REPLICAS
                )
            ),
            strict=True,
        )
    )
    stores = dict(
        zip(
            REPLICAS,
            await asyncio.gather(*(start_store(start_driver, sidecars[n]) for n in REPLICAS)),
            strict=True,
        )
    )
    return Fleet(redis_url, sidecars, stores, pipeline)


async def settle(fleet: Fleet) -> None:
    """The pipeline's current scale is the truth's."""
    want = SCALES[fleet.truth()]
    await fleet.pipeline.wait_for(
        lambda _: scales(fleet.pipeline)[-1] == want, 10, message=f"scale {want}"
    )


#: Interleaved crossings of both replicas, with the steps that a per-coordinator relay
#: gets wrong: another coordinator's `ok`, the same coordinator id at another pod.
STEPS = [
    ("replica-a", "bars", "soft"),
    ("replica-a", "bars", "hard"),
    ("replica-a", "quotes", "ok"),
    ("replica-b", "bars", "ok"),
    ("replica-b", "quotes", "soft"),
    ("replica-a", "bars", "ok"),
    ("replica-b", "quotes", "hard"),
    ("replica-a", "quotes", "soft"),
    ("replica-b", "quotes", "ok"),
    ("replica-a", "quotes", "ok"),
]


async def test_the_pipeline_never_runs_above_the_fleets_worst_level_and_settles_on_it(
    sidecar_process: Callable[..., SidecarProcess], start_driver: StartDriver, redis_url: str
) -> None:
    """Every scale the pipeline takes after a crossing is at most the truth's, and once
    the crossing is read it is the truth's. Resync runs every second meanwhile: a round
    must not flip the rate either."""
    fleet = await start_fleet(sidecar_process, start_driver, redis_url, SIDECAR_RESYNC_INTERVAL="1")
    seen: list[tuple[tuple[str, str, str], str, list[float]]] = []
    for step in STEPS:
        since = len(fleet.pipeline.lines)
        await fleet.send(*step)
        await settle(fleet)
        seen.append((step, fleet.truth(), scales(fleet.pipeline, since)))
    for step, truth, taken in seen:
        assert all(scale <= SCALES[truth] for scale in taken), (step, truth, taken)
    assert [truth for _, truth, _ in seen] == [
        "soft", "hard", "hard", "hard", "hard", "soft", "hard", "hard", "soft", "ok",
    ]  # fmt: skip
    assert await dead_letters(redis_url) == 0


async def test_without_grace_a_replica_killed_at_hard_stops_counting_when_its_lease_ends(
    sidecar_process: Callable[..., SidecarProcess], start_driver: StartDriver, redis_url: str
) -> None:
    """SIGKILL with `SIDECAR_FLEET_GRACE=0`: the replica cannot leave; the other publishes
    the new composite once the dead one's lease has ended (at most a renewal early, as it
    renewed before dying), and within lease + 1 s."""
    fleet = await start_fleet(sidecar_process, start_driver, redis_url, SIDECAR_FLEET_GRACE="0")
    await fleet.send("replica-b", "bars", "soft")
    await fleet.send("replica-a", "bars", "hard")
    await settle(fleet)
    since = len(fleet.pipeline.lines)

    killed_at = time.monotonic()
    fleet.sidecars["replica-a"].proc.kill()
    fleet.gone.add("replica-a")
    released = await fleet.pipeline.wait_for(
        scale_is(SCALES["soft"]), LEASE + 3, since=since, message="the lease's end"
    )
    after = released["t"] - killed_at
    assert LEASE - RENEWAL - 0.1 <= after <= LEASE + 1.0, after
    assert scales(fleet.pipeline, since) == [SCALES["soft"]]


async def test_a_replica_stopped_at_hard_leaves_at_once(
    sidecar_process: Callable[..., SidecarProcess], start_driver: StartDriver, redis_url: str
) -> None:
    """SIGTERM: the member leaves on the way out, long before a 30 s lease would end."""
    fleet = await start_fleet(
        sidecar_process,
        start_driver,
        redis_url,
        SIDECAR_FLEET_LEASE="30",
        SIDECAR_FLEET_RENEWAL="5",
    )
    await fleet.send("replica-b", "quotes", "soft")
    await fleet.send("replica-a", "bars", "hard")
    await settle(fleet)
    since = len(fleet.pipeline.lines)

    assert fleet.sidecars["replica-a"].stop() == 0
    fleet.gone.add("replica-a")
    await fleet.pipeline.wait_for(
        scale_is(SCALES["soft"]), 5, since=since, message="the stopped member's leaving"
    )
    assert scales(fleet.pipeline, since) == [SCALES["soft"]]


async def test_the_pipeline_ends_on_the_truth_after_redis_restarts_empty(
    sidecar_process: Callable[..., SidecarProcess],
    start_driver: StartDriver,
    redis_url: str,
    module_redis: RedisServer,
) -> None:
    """The members rebuild the fleet's state from their renewals. The pipeline's consumer
    does not survive a Redis restart (its read loop ends with the connection, and its group
    is gone), so it is restarted, as its pod would be; resync hands the new group the
    composite."""
    fleet = await start_fleet(sidecar_process, start_driver, redis_url, SIDECAR_RESYNC_INTERVAL="1")
    await fleet.send("replica-a", "bars", "hard")
    await fleet.send("replica-b", "quotes", "soft")
    await settle(fleet)

    module_redis.stop()
    module_redis.start()  # same port, no persistence: no members, no stream, no groups
    for replica in REPLICAS:
        await eventually(
            lambda replica=replica: member_holds(redis_url, replica, fleet.pod_worst(replica)),
            timeout=5,
            message=f"{replica} rebuilt",
        )
    await fleet.pipeline.stop()
    pipeline = await start_pipeline(start_driver, redis_url)
    await pipeline.wait_for(scale_is(SCALES["hard"]), 10, message="the fleet's hard")
    assert await dead_letters(redis_url) == 0
