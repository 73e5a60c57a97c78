"""The fleet under network and process faults, seen by the real pipeline: two sidecar
processes as two store replicas (the store's own broadcaster posting to each), one Redis,
market-data-pipeline's `FeedbackConsumer`, and the tests' own TCP proxy between a replica's
sidecar and Redis. A replica cut off from Redis, or paused, is still live and so is its
full store: the pipeline must never run above the truth."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.consumers.conftest import StartDriver, is_event, start_sidecar, start_store, store_sends
from tests.consumers.test_fleet_pipeline import (
    MEMBERS,
    REPLICAS,
    SCALES,
    Fleet,
    member_holds,
    pipeline_caught_up,
    scale_is,
    scales,
    settle,
    start_pipeline,
)
from tests.support.helpers import SidecarProcess, eventually, run_cli
from tests.support.redis_servers import RedisServer
from tests.support.tcp_proxy import StartProxy, TcpProxy

pytestmark = pytest.mark.timeout(120, func_only=True)

LEASE, RENEWAL, GRACE = 2.0, 0.5, 10.0


async def start_fleet_via(
    sidecar_process: Callable[..., SidecarProcess],
    start_driver: StartDriver,
    redis_url: str,
    urls: dict[str, str],
    **env: str,
) -> Fleet:
    """The pipeline, then both replicas, each writing Redis through `urls[replica]`."""
    pipeline = await start_pipeline(start_driver, redis_url)
    settings = {
        "SIDECAR_FLEET_LEASE": str(LEASE),
        "SIDECAR_FLEET_RENEWAL": str(RENEWAL),
        "SIDECAR_FLEET_GRACE": str(GRACE),
        **env,
    }
    sidecars: dict[str, SidecarProcess] = {}
    for name in REPLICAS:
        target = {"kind": "redis-stream", "name": "pulse", "url": urls[name], "timeout": "1"}
        sidecars[name] = await start_sidecar(
            sidecar_process, target, SIDECAR_INSTANCE=name, **settings
        )
    stores = {name: await start_store(start_driver, sidecars[name]) for name in REPLICAS}
    return Fleet(redis_url, sidecars, stores, pipeline)


def proxied(redis_url: str, proxy: TcpProxy) -> str:
    return proxy.url(int(redis_url.rsplit("/", 1)[1]))


async def feedback_problem(sidecar: SidecarProcess) -> str:
    _, body = await sidecar.get("/healthz")
    [component] = [c for c in json.loads(body)["components"] if c["name"] == "feedback"]
    return str(component["details"].get("reason", "")) if component["state"] != "healthy" else ""


async def member_states(sidecar: SidecarProcess) -> dict[str, str]:
    _, body = await sidecar.get("/feedback")
    [target] = json.loads(body)["targets"]
    return {m["instance"]: m["state"] for m in target["members"]}


@pytest.mark.parametrize("fault", ["blackhole", "reset"])
async def test_a_partitioned_replica_at_hard_keeps_the_pipeline_at_hard(
    sidecar_process: Callable[..., SidecarProcess],
    start_driver: StartDriver,
    redis_url: str,
    module_redis: RedisServer,
    proxies: StartProxy,
    fault: str,
) -> None:
    """Cut off for twice the lease: the survivor counts it as suspect (and says so), the
    cut-off sidecar's `feedback` names the fleet, and the pipeline stays at 0.0."""
    proxy: TcpProxy = await proxies(module_redis.port)
    urls = {"replica-a": proxied(redis_url, proxy), "replica-b": redis_url}
    fleet = await start_fleet_via(sidecar_process, start_driver, redis_url, urls)
    await fleet.send("replica-b", "bars", "soft")
    await fleet.send("replica-a", "bars", "hard")
    await settle(fleet)
    since = len(fleet.pipeline.lines)
    survivor, cut_off = fleet.sidecars["replica-b"], fleet.sidecars["replica-a"]

    if fault == "blackhole":
        proxy.blackhole()
    else:
        proxy.reset()

    async def suspect() -> bool:
        return (await member_states(survivor)).get("replica-a") == "suspect"

    await eventually(suspect, timeout=LEASE + 3, message="the survivor's suspect")
    problem = await eventually(
        lambda: _has(feedback_problem(cut_off), "has not renewed"),
        timeout=LEASE + 8,
        message="the cut-off sidecar knows",
    )
    assert "fleet member 'replica-a'" in problem
    _, body = await cut_off.get("/feedback")
    [own] = json.loads(body)["targets"]
    assert own["composite"]["stale"] is True
    assert own["composite"]["age"] > LEASE
    own_status = await asyncio.to_thread(run_cli, "status", "--url", cut_off.url)
    assert "stale, read" in own_status.stdout
    status = await asyncio.to_thread(run_cli, "status", "--url", survivor.url)
    assert "1 suspect" in status.stdout
    assert any(line.split()[:2] == ["replica-a", "suspect"] for line in status.stdout.splitlines())
    _, page = await survivor.get("/")
    assert 'data-member="replica-a" data-state="suspect"' in page
    _, metrics = await survivor.get("/metrics")
    assert 'sidecar_fleet_members_by_state{state="suspect",target="pulse"} 1.0' in metrics
    assert "is suspect" in survivor.output()

    proxy.heal()
    await eventually(
        lambda: _lacks(feedback_problem(cut_off), "has not renewed"),
        timeout=LEASE + 5,
        message="renewed again",
    )
    await eventually(lambda: _live(survivor, "replica-a"), timeout=LEASE + 3, message="live again")
    assert all(scale <= SCALES["hard"] for scale in scales(fleet.pipeline, since))


async def _has(problem: Any, text: str) -> str | None:
    found = await problem
    return found if text in found else None


async def _lacks(problem: Any, text: str) -> bool:
    return text not in await problem


async def _live(sidecar: SidecarProcess, instance: str) -> bool:
    return (await member_states(sidecar)).get(instance) == "live"


async def test_a_paused_sidecar_at_hard_keeps_the_pipeline_at_hard(
    sidecar_process: Callable[..., SidecarProcess], start_driver: StartDriver, redis_url: str
) -> None:
    """SIGSTOP for longer than the lease (3 s; renewal 1 s), then SIGCONT."""
    urls = dict.fromkeys(REPLICAS, redis_url)
    fleet = await start_fleet_via(
        sidecar_process,
        start_driver,
        redis_url,
        urls,
        SIDECAR_FLEET_LEASE="3",
        SIDECAR_FLEET_RENEWAL="1",
    )
    await fleet.send("replica-b", "bars", "ok")
    await fleet.send("replica-a", "bars", "hard")
    await settle(fleet)
    since = len(fleet.pipeline.lines)
    paused, survivor = fleet.sidecars["replica-a"], fleet.sidecars["replica-b"]

    paused.proc.send_signal(signal.SIGSTOP)
    try:

        async def suspect() -> bool:
            return (await member_states(survivor)).get("replica-a") == "suspect"

        await eventually(suspect, timeout=6, message="the paused member suspect")
    finally:
        paused.proc.send_signal(signal.SIGCONT)
    await eventually(lambda: _live(survivor, "replica-a"), timeout=5, message="live again")
    assert all(scale <= SCALES["hard"] for scale in scales(fleet.pipeline, since))


async def test_a_late_step_after_a_partition_does_not_lift_the_pipeline(
    sidecar_process: Callable[..., SidecarProcess],
    start_driver: StartDriver,
    redis_url: str,
    module_redis: RedisServer,
    proxies: StartProxy,
) -> None:
    """During a partition the store posts `soft`, then `hard`; at the heal the newer state
    reaches Redis first and what was held arrives 1.5 s later: fenced, the pipeline stays
    at 0.0 from the moment it got there."""
    proxy: TcpProxy = await proxies(module_redis.port)
    urls = {"replica-a": proxied(redis_url, proxy), "replica-b": redis_url}
    fleet = await start_fleet_via(sidecar_process, start_driver, redis_url, urls)
    await fleet.send("replica-b", "bars", "ok")
    await fleet.send("replica-a", "bars", "ok")
    await settle(fleet)

    proxy.hold()
    store = fleet.stores["replica-a"]
    await store_sends(store, "soft 600 bars")
    # The sidecar tries to write `soft` (held) before the store's next crossing.
    await eventually(lambda: proxy.bytes_from_clients > 0 and bool(proxy.links), timeout=5)
    await store_sends(store, "hard 850 bars")
    fleet.levels[("replica-a", "bars")] = "hard"
    proxy.heal(late=1.5)

    reached = await fleet.pipeline.wait_for(scale_is(0.0), 10, message="hard after the heal")
    since = fleet.pipeline.lines.index(reached)
    await eventually(lambda: proxy.delivered_late > 0, timeout=5, message="the late step")
    sidecar_b = fleet.sidecars["replica-b"]
    await eventually(
        lambda: _member_level(sidecar_b, "replica-a", "hard"), timeout=5, message="still hard"
    )
    assert scales(fleet.pipeline, since) == [0.0], scales(fleet.pipeline, since)


async def _member_level(sidecar: SidecarProcess, instance: str, level: str) -> bool:
    _, body = await sidecar.get("/feedback")
    [target] = json.loads(body)["targets"]
    return any(m["instance"] == instance and m["level"] == level for m in target["members"])


async def test_an_outage_of_every_link_longer_than_the_lease_never_lifts_the_pipeline(
    sidecar_process: Callable[..., SidecarProcess],
    start_driver: StartDriver,
    redis_url: str,
    module_redis: RedisServer,
    proxies: StartProxy,
) -> None:
    """A failover as the sidecars see it: no member can step for longer than the lease.
    Both `feedback` components say they cannot renew; after it, nothing milder than the
    truth reaches the pipeline."""
    pa: TcpProxy = await proxies(module_redis.port)
    pb: TcpProxy = await proxies(module_redis.port)
    urls = {"replica-a": proxied(redis_url, pa), "replica-b": proxied(redis_url, pb)}
    fleet = await start_fleet_via(sidecar_process, start_driver, redis_url, urls)
    await fleet.send("replica-b", "bars", "soft")
    await fleet.send("replica-a", "bars", "hard")
    await settle(fleet)
    since = len(fleet.pipeline.lines)

    pa.blackhole()
    pb.blackhole()
    for sidecar in fleet.sidecars.values():
        await eventually(
            lambda s=sidecar: _has(feedback_problem(s), "has not renewed"),
            timeout=LEASE + 8,
            message="cannot renew",
        )
    pb.heal()  # the milder replica first
    await eventually(
        lambda: _lacks(feedback_problem(fleet.sidecars["replica-b"]), "has not renewed"),
        timeout=LEASE + 5,
    )
    pa.heal()
    await eventually(
        lambda: _lacks(feedback_problem(fleet.sidecars["replica-a"]), "has not renewed"),
        timeout=LEASE + 5,
    )
    await fleet.pipeline.wait_for(is_event("rate"), 1, since=0)
    assert all(scale <= SCALES["hard"] for scale in scales(fleet.pipeline, since))


async def test_two_live_processes_under_one_name_keep_the_pipeline_at_the_worst(
    sidecar_process: Callable[..., SidecarProcess], start_driver: StartDriver, redis_url: str
) -> None:
    """Two sidecars started with one `SIDECAR_INSTANCE`, one `hard` and one `ok`: both
    count, the stream never flips between them, and both say so."""
    pipeline = await start_pipeline(start_driver, redis_url)
    settings = {"SIDECAR_FLEET_LEASE": str(LEASE), "SIDECAR_FLEET_RENEWAL": str(RENEWAL)}
    target = {"kind": "redis-stream", "name": "pulse", "url": redis_url}
    first, second = [
        await start_sidecar(sidecar_process, target, SIDECAR_INSTANCE="replica-a", **settings)
        for _ in range(2)
    ]
    await store_sends(await start_store(start_driver, first), "hard 850 bars")
    reached = await pipeline.wait_for(scale_is(0.0), 10, message="hard")
    since = pipeline.lines.index(reached)
    await store_sends(await start_store(start_driver, second), "ok 100 bars")

    for sidecar in (first, second):
        await eventually(
            lambda s=sidecar: _has(feedback_problem(s), "another sidecar writes"),
            timeout=5,
            message="the duplicate reported",
        )
    _, body = await first.get("/feedback")
    [state] = json.loads(body)["targets"]
    assert sorted(m["level"] for m in state["members"]) == ["hard", "ok"]
    assert scales(pipeline, since) == [0.0]


async def test_a_deleted_members_hash_never_lifts_the_pipeline(
    sidecar_process: Callable[..., SidecarProcess],
    start_driver: StartDriver,
    redis_url: str,
) -> None:
    """The hash lost (as `volatile-ttl` eviction took it before): the next step finds the
    record and the index disagree and holds `ok` until the hard member has written again."""
    urls = dict.fromkeys(REPLICAS, redis_url)
    fleet = await start_fleet_via(sidecar_process, start_driver, redis_url, urls)
    await fleet.send("replica-b", "bars", "soft")
    await fleet.send("replica-a", "bars", "hard")
    await settle(fleet)
    since = len(fleet.pipeline.lines)

    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.delete(MEMBERS)
    finally:
        await client.aclose()
    await store_sends(fleet.stores["replica-b"], "ok 100 bars")
    fleet.levels[("replica-b", "bars")] = "ok"
    for replica in REPLICAS:
        await eventually(
            lambda r=replica: member_holds(redis_url, r, fleet.pod_worst(r)),
            timeout=5,
            message=f"{replica} rebuilt",
        )
    await eventually(lambda: pipeline_caught_up(redis_url), timeout=5, message="read all")
    assert all(scale <= SCALES["hard"] for scale in scales(fleet.pipeline, since))
