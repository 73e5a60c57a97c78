"""Redis targets end to end: the store POSTs to a real sidecar, Core's own subscriber
(or a plain stream read) sees the result; Redis stops and restarts underneath."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient
from market_data_core.events import JsonCodec
from market_data_core.telemetry import FeedbackEvent

from market_data_sidecar.server.probes import METRICS
from tests.support.helpers import SidecarProcess, eventually, feedback, store_payload
from tests.support.redis_servers import (
    SHARED_REDIS_URL,
    CoreConsumer,
    RedisServer,
    dead_letters,
    stream_fields,
)
from tests.support.sidecar import StartSidecar, make_settings

pytest_plugins = ["tests.support.redis_fixtures"]

STREAM = "mdp:mdp.telemetry.feedback"
#: Fast pacing so fault tests take seconds; the behaviour is that of the defaults.
FAST_RELAY: dict[str, Any] = {
    "retry_initial": 0.02,
    "retry_max": 0.1,
    "circuit_failures": 3,
    "circuit_cooldown": 0.2,
    "drain_timeout": 0.5,
}


def stream_target(url: str, **options: Any) -> dict[str, Any]:
    return {
        "kind": "redis-stream",
        "name": "pipeline",
        "url": url,
        "timeout": 0.5,
        "scope": "coordinator",
        "max_copies": 1,  # one reader a group: each event is one entry
        **options,
    }


def core_event(coordinator_id: str, queue_size: int, level: str) -> dict[str, Any]:
    """A Core `FeedbackEvent` as JSON, with `ts` and `source`, plus the store's `reason`."""
    event = feedback(coordinator_id, queue_size, level=level).event
    return {**event.model_dump(mode="json"), "reason": f"{level}_{queue_size}"}


async def post(client: TestClient[Any, Any], events: list[dict[str, Any]]) -> None:
    response = await client.post("/feedback", json=events)
    assert response.status == 202, await response.text()


async def target_state(client: TestClient[Any, Any]) -> dict[str, Any]:
    response = await client.get("/feedback")
    [target] = (await response.json())["targets"]
    return dict(target)


async def stream_events(server_url: str) -> list[tuple[FeedbackEvent, dict[str, str]]]:
    """Every entry of the stream, decoded with Core's codec: (event, meta.headers)."""
    async with aioredis.Redis.from_url(server_url) as client:
        entries = stream_fields(await client.xrange(STREAM))
    codec = JsonCodec()
    decoded = [codec.decode(fields["data"].encode(), FeedbackEvent) for fields in entries]
    return [(envelope.payload, envelope.meta.headers) for envelope in decoded]


async def test_core_subscribers_receive_what_the_store_posted(
    sidecar_client: StartSidecar, namespace: str, shared_redis: aioredis.Redis
) -> None:
    target = stream_target(SHARED_REDIS_URL, namespace=namespace, mode="all")
    client = await sidecar_client(make_settings(targets=[target], **FAST_RELAY))
    posted = [
        core_event(f"coord-{n % 4}", 100 * n, ("ok", "soft", "hard")[n % 3]) for n in range(9)
    ]
    from_store = store_payload("bars-coord", 850, reason="high_watermark")

    async with (
        CoreConsumer(SHARED_REDIS_URL, namespace, "pipeline") as pipeline,
        CoreConsumer(SHARED_REDIS_URL, namespace, "orchestrator") as orchestrator,
    ):
        await post(client, posted[:5])
        await post(client, [*posted[5:], from_store])
        expected = [FeedbackEvent.model_validate(event) for event in posted]
        for consumer in (pipeline, orchestrator):
            received = await consumer.take(len(posted) + 1)
            assert [envelope.payload for envelope in received[:-1]] == expected
            assert [envelope.meta.headers["reason"] for envelope in received[:-1]] == [
                event["reason"] for event in posted
            ]
            last = received[-1]
            assert last.payload.model_dump(exclude={"ts"}) == {
                "coordinator_id": "bars-coord",
                "queue_size": 850,
                "capacity": 1000,
                "level": "soft",
                "source": "store",
            }
            assert last.meta.headers["reason"] == "high_watermark"
            assert {envelope.meta.schema_id for envelope in received} == {"telemetry.FeedbackEvent"}
        # The event id is the relay's, the same for every consumer group.
        assert [e.meta.headers["event_id"] for e in pipeline.received] == [
            e.meta.headers["event_id"] for e in orchestrator.received
        ]

    assert await dead_letters(shared_redis, namespace) == 0
    # Consumers can read an entry before the router has read Redis's reply to its XADD.
    await eventually(lambda: _delivered(client, len(posted) + 1), message="delivered")
    assert (await target_state(client))["delivered"] == len(posted) + 1


async def test_latest_state_of_every_coordinator_arrives_after_redis_restarts(
    sidecar_client: StartSidecar, redis_server: RedisServer
) -> None:
    client = await sidecar_client(
        make_settings(targets=[stream_target(redis_server.url)], **FAST_RELAY)
    )
    await post(client, [core_event(f"coord-{c}", 10, "ok") for c in range(3)])
    await eventually(lambda: _delivered(client, 3), message="first events delivered")

    redis_server.stop()
    posted = [core_event(f"coord-{c}", 100 * r + c, "soft") for r in range(5) for c in range(3)]
    await post(client, posted[:9])
    await eventually(lambda: _failing(client), message="attempts failing while Redis is down")
    await post(client, posted[9:])
    redis_server.start()  # same port, empty: the sidecar is not restarted

    latest = {event["coordinator_id"]: FeedbackEvent.model_validate(event) for event in posted}

    async def latest_arrived() -> bool:
        arrived = {
            event.coordinator_id: event for event, _ in await stream_events(redis_server.url)
        }
        return arrived == latest

    await eventually(latest_arrived, message="every coordinator's latest state")
    # Conflated, not reordered: per coordinator, what arrived is in the order posted.
    arrived = [event for event, _ in await stream_events(redis_server.url)]
    for coordinator in latest:
        sizes = [e.queue_size for e in arrived if e.coordinator_id == coordinator]
        assert sizes == sorted(sizes)
    # The stream holds the entries before the router has read Redis's reply to them.
    await eventually(lambda: _circuit(client, "closed"), message="the router saw them written")
    state = await target_state(client)
    assert (state["mode"], state["dropped"], state["circuit"]) == ("latest", 0, "closed")


async def test_all_mode_loses_nothing_within_the_bound_across_a_restart(
    sidecar_client: StartSidecar, redis_server: RedisServer
) -> None:
    target = stream_target(redis_server.url, mode="all", buffer=100, batch=8)
    client = await sidecar_client(make_settings(targets=[target], **FAST_RELAY))
    posted = [core_event("bars-coord", n, "soft") for n in range(60)]

    await post(client, posted[:20])
    await eventually(lambda: _delivered(client, 20), message="first 20 delivered")
    before_restart = await stream_events(redis_server.url)
    redis_server.stop()
    await post(client, posted[20:40])
    await eventually(lambda: _failing(client), message="attempts failing while Redis is down")
    redis_server.start()
    await post(client, posted[40:])
    await eventually(lambda: _delivered(client, 60), message="all 60 delivered")

    after_restart = await stream_events(redis_server.url)
    queue_sizes = [event.queue_size for event, _ in before_restart + after_restart]
    assert queue_sizes == list(range(60))
    state = await target_state(client)
    assert (state["mode"], state["dropped"], state["buffer_depth"]) == ("all", 0, 0)
    registry = client.app[METRICS].registry
    dropped = registry.get_sample_value(
        "sidecar_feedback_dropped_total", {"target": "pipeline", "reason": "buffer_full"}
    )
    assert not dropped


async def test_all_mode_beyond_the_bound_keeps_the_newest_and_counts_the_rest(
    sidecar_client: StartSidecar, redis_server: RedisServer
) -> None:
    target = stream_target(redis_server.url, mode="all", buffer=10)
    client = await sidecar_client(make_settings(targets=[target], **FAST_RELAY))
    redis_server.stop()
    # One request: all 25 reach the buffer before its worker takes any.
    await post(client, [core_event("bars-coord", n, "soft") for n in range(25)])
    await eventually(lambda: _failing(client), message="attempts failing while Redis is down")
    redis_server.start()

    await eventually(lambda: _delivered(client, 10), message="the buffered events delivered")

    arrived = [event.queue_size for event, _ in await stream_events(redis_server.url)]
    assert arrived == list(range(15, 25))
    assert (await target_state(client))["dropped"] == 15
    registry = client.app[METRICS].registry
    dropped = registry.get_sample_value(
        "sidecar_feedback_dropped_total", {"target": "pipeline", "reason": "buffer_full"}
    )
    assert dropped == 15


async def test_sidecar_starts_with_redis_down_and_reports_the_target_down(
    sidecar_process: Callable[..., SidecarProcess],
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    server = redis_server_factory("--requirepass", "pw-never-shown", started=False)
    url = server.url.replace("redis://", "redis://:pw-never-shown@")
    sidecar = sidecar_process(
        env={"SIDECAR_TARGETS": json.dumps([stream_target(url)]), "SIDECAR_SHUTDOWN_GRACE": "0"}
    )
    await sidecar.wait_listening()

    async def reported(reachable: str) -> dict[str, str] | None:
        _, body = await sidecar.get("/healthz")
        [component] = [c for c in json.loads(body)["components"] if c["name"] == "feedback"]
        details: dict[str, str] = component["details"]
        return details if details.get("pipeline.reachable") == reachable else None

    details = await eventually(lambda: reported("false"), message="target reported down")
    assert details["pipeline.last_redis_error"].startswith("connection: ")
    assert details["pipeline.url"] == server.url
    assert (await sidecar.get("/livez"))[0] == 200
    assert (await sidecar.get("/readyz"))[0] == 200  # a target outage is not the store's

    server.start()
    await eventually(lambda: reported("true"), message="target reported up")
    async with aiohttp.ClientSession() as session:
        event = core_event("bars-coord", 850, "soft")
        async with session.post(sidecar.url + "/feedback", json=event) as response:
            assert response.status == 202
    await eventually(lambda: _stream_length(url), message="event delivered")

    _, relay_state = await sidecar.get("/feedback")
    _, health = await sidecar.get("/healthz")
    sidecar.stop()
    for shown in (relay_state, health, sidecar.log_path.read_text(errors="replace")):
        assert "pw-never-shown" not in shown


async def _stream_length(url: str) -> int:
    async with aioredis.Redis.from_url(url) as client:
        return int(await client.xlen(STREAM))


async def _delivered(client: TestClient[Any, Any], count: int) -> bool:
    return int((await target_state(client))["delivered"]) >= count


async def _circuit(client: TestClient[Any, Any], state: str) -> bool:
    circuit: str = (await target_state(client))["circuit"]
    return circuit == state


async def _failing(client: TestClient[Any, Any]) -> bool:
    return int((await target_state(client))["retried"]) >= 1
