"""A stream target in `fleet` scope against real Redis: members, leases, the composite,
and real `market-data-sidecar run` processes that are stopped and killed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import secrets
import signal
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from market_data_core.events import JsonCodec
from market_data_core.telemetry import FeedbackEvent
from redis.exceptions import RedisError

from market_data_sidecar.feedback.delivery import DeliveryError
from market_data_sidecar.feedback.model import Feedback
from market_data_sidecar.feedback.scope import composite_of
from market_data_sidecar.metrics import Metrics
from market_data_sidecar.publishers.fleet import Fleet, FleetStreamPublisher, member_state
from market_data_sidecar.settings import ConfigError, RedisStreamTargetSettings, load_settings
from tests.support import parts
from tests.support.helpers import SidecarProcess, eventually, feedback, run_cli, store_payload
from tests.support.redis_servers import SHARED_REDIS_URL, RedisServer, feedback_key, stream_fields

pytest_plugins = ["tests.support.redis_fixtures"]

Entry = tuple[FeedbackEvent, dict[str, str]]
MakeMember = Callable[..., FleetStreamPublisher]

#: Short leases keep the tests fast; the hold after a fresh start is one renewal.
LEASE, RENEWAL = 1.5, 0.2


def target(url: str, namespace: str) -> RedisStreamTargetSettings:
    return RedisStreamTargetSettings.model_validate(
        {"kind": "redis-stream", "url": url, "namespace": namespace, "timeout": 1.0}
    )


@pytest.fixture
async def member() -> AsyncIterator[MakeMember]:
    """`member(instance, namespace, url=..., lease=..., renewal=...)`: a fleet publisher
    (start it); every one is closed at the end."""
    made: list[FleetStreamPublisher] = []

    def make(
        instance: str,
        namespace: str,
        *,
        url: str = SHARED_REDIS_URL,
        lease: float = LEASE,
        renewal: float = RENEWAL,
        grace: float = 0.0,
        metrics: Metrics | None = None,
        token: str | None = None,
    ) -> FleetStreamPublisher:
        # A token per publisher: each stands for a sidecar process of its own.
        fleet = Fleet(instance, lease, renewal, token=token or secrets.token_hex(8), grace=grace)
        publisher = FleetStreamPublisher(target(url, namespace), fleet, metrics=metrics)
        made.append(publisher)
        return publisher

    yield make
    for publisher in made:
        await publisher.close()
    # The fleet's keys are named `{<key>}:fleet:...`, outside the namespace's prefix.
    for url in {publisher.target.url for publisher in made}:
        with contextlib.suppress(RedisError, OSError):
            async with aioredis.Redis.from_url(url) as client:
                for publisher in made:
                    await client.delete(*publisher.keys[:-1])


def pod(instance: str, coordinator: str, level: str, queue_size: int, count: int = 1) -> Feedback:
    """A pod's composite, as the router hands it to a fleet target."""
    return composite_of(
        feedback(coordinator, queue_size, level=level), coordinators=count, member=instance
    )


async def entries(namespace: str, url: str = SHARED_REDIS_URL) -> list[Entry]:
    """The stream's entries decoded with Core's codec, as the consumers decode them."""
    async with aioredis.Redis.from_url(url) as client:
        fields = stream_fields(await client.xrange(feedback_key(namespace)))
    codec = JsonCodec()
    decoded = [codec.decode(entry["data"].encode(), FeedbackEvent) for entry in fields]
    return [(envelope.payload, envelope.meta.headers) for envelope in decoded]


async def last_level(namespace: str, url: str = SHARED_REDIS_URL) -> tuple[str, str] | None:
    """The level and member of the stream's newest entry."""
    written = await entries(namespace, url)
    if not written:
        return None
    event, headers = written[-1]
    return event.level.value, headers["member"]


def summary(written: list[Entry]) -> list[tuple[str, str, str]]:
    return [
        (event.level.value, headers["member"], headers["members"]) for event, headers in written
    ]


# -- the composite ---------------------------------------------------------------------------


async def test_the_stream_carries_the_worst_member_and_only_changes(
    member: MakeMember, namespace: str
) -> None:
    a, b = member("pod-a", namespace), member("pod-b", namespace)
    await a.start()
    await b.start()

    await a.deliver([pod("pod-a", "bars", "hard", 900, count=2)])
    await b.deliver([pod("pod-b", "bars", "ok", 10, count=2)])
    await b.deliver([pod("pod-b", "bars", "ok", 10, count=2)])  # the same: no entry
    await a.deliver([pod("pod-a", "quotes", "soft", 600, count=2)])

    expected = [("hard", "pod-a", "1"), ("hard", "pod-a", "2"), ("soft", "pod-a", "2")]

    async def written() -> bool:
        # `soft` may wait for the end of the hold of a fresh fleet (one renewal).
        return summary(await entries(namespace)) == expected

    await eventually(written, timeout=2.0, message="three entries")
    event, headers = (await entries(namespace))[-1]
    assert (event.coordinator_id, event.queue_size, event.capacity) == ("quotes", 600, 1000)
    assert headers["scope"] == "fleet"
    assert headers["coordinator"] == "quotes"
    assert headers["coordinators"] == "4"
    assert headers["utilization"] == "0.600000"
    assert headers["event_id"].startswith("evt_")
    assert {m.instance: m.level for m in a.members()} == {"pod-a": "soft", "pod-b": "ok"}
    composite = a.composite()
    assert composite is not None
    assert (composite.level, composite.member, composite.members) == ("soft", "pod-a", 2)


async def test_a_fresh_fleet_holds_back_a_milder_composite_for_one_renewal(
    member: MakeMember, namespace: str
) -> None:
    """After Redis lost the state (or on a first start), the members that have not
    renewed yet may hold `hard`: `ok` waits one renewal, `hard` goes at once."""
    a = member("pod-a", namespace, renewal=0.5, lease=1.5)
    await a.start()
    started = time.monotonic()
    await a.deliver([pod("pod-a", "bars", "ok", 10)])
    assert await entries(namespace) == []

    await eventually(lambda: last_level(namespace), timeout=2.0, message="the held composite")
    assert time.monotonic() - started >= 0.45
    assert summary(await entries(namespace)) == [("ok", "pod-a", "1")]


async def test_a_resync_appends_the_current_composite_again(
    member: MakeMember, namespace: str
) -> None:
    a = member("pod-a", namespace)
    await a.start()
    state = pod("pod-a", "bars", "hard", 900)
    await a.deliver([state])
    await a.deliver([state.resynced()])

    written = await entries(namespace)
    assert summary(written) == [("hard", "pod-a", "1")] * 2
    assert "resync" not in written[0][1]
    assert written[1][1]["resync"] == "true"


async def test_concurrent_members_never_publish_out_of_order(
    member: MakeMember, namespace: str
) -> None:
    """Each member writes a rising version (its queue size); whatever the interleaving,
    no entry carries a member's older version after a newer one, and the last entry is
    the worst of the final states."""
    members = [member(f"pod-{n}", namespace, lease=30.0, renewal=10.0) for n in range(4)]
    for publisher in members:
        await publisher.start()
    rng = random.Random(7)
    levels = ("ok", "soft", "hard")
    plans = {
        publisher.fleet.instance: [rng.choice(levels) for _ in range(40)] for publisher in members
    }

    async def play(publisher: FleetStreamPublisher) -> None:
        name = publisher.fleet.instance
        for version, level in enumerate(plans[name], start=1):
            await publisher.deliver([pod(name, "bars", level, version)])

    await asyncio.gather(*(play(publisher) for publisher in members))

    seen: dict[str, int] = {}
    for event, headers in await entries(namespace):
        name = headers["member"]
        assert event.queue_size >= seen.get(name, 0), f"{name} went back in time"
        seen[name] = event.queue_size
    finals = {name: plan[-1] for name, plan in plans.items()}
    worst = max(finals.values(), key=levels.index)
    assert (await entries(namespace))[-1][0].level.value == worst


# -- leaving and dying -----------------------------------------------------------------------


async def test_a_member_that_leaves_is_no_longer_counted_at_once(
    member: MakeMember, namespace: str
) -> None:
    a = member("pod-a", namespace, lease=30.0)
    b = member("pod-b", namespace, lease=30.0)
    await a.start()
    await b.start()
    await a.deliver([pod("pod-a", "bars", "hard", 900)])
    await b.deliver([pod("pod-b", "bars", "soft", 600)])
    await hold_over(b)

    await a.close()

    assert summary(await entries(namespace))[-1] == ("soft", "pod-b", "1")


async def test_without_grace_a_member_that_stops_renewing_stops_counting_at_its_lease_end(
    member: MakeMember, namespace: str
) -> None:
    metrics = Metrics()
    a = member("pod-a", namespace)
    b = member("pod-b", namespace, metrics=metrics)
    await a.start()
    await b.start()
    await a.deliver([pod("pod-a", "bars", "hard", 900)])
    await b.deliver([pod("pod-b", "bars", "ok", 10)])
    level = metrics.registry.get_sample_value
    assert level("sidecar_fleet_member_level", {"target": b.name, "instance": "pod-a"}) == 2
    assert a._renewal is not None
    a._renewal.cancel()  # as a SIGKILLed member would
    stopped = time.monotonic()

    await until_last(namespace, ("ok", "pod-b"), timeout=LEASE + 1.0)
    assert time.monotonic() - stopped >= LEASE - RENEWAL - 0.1
    assert level("sidecar_fleet_member_level", {"target": b.name, "instance": "pod-a"}) is None
    assert level("sidecar_fleet_members", {"target": b.name}) == 1


async def until_last(
    namespace: str, expected: tuple[str, str], *, timeout: float, url: str = SHARED_REDIS_URL
) -> None:
    """Wait until the stream's newest entry has this level and member."""

    async def arrived() -> bool:
        return await last_level(namespace, url) == expected

    await eventually(arrived, timeout=timeout, message=f"newest entry {expected}")


async def hold_over(publisher: FleetStreamPublisher) -> None:
    """Until the hold of a fresh fleet has ended (milder composites are written again)."""
    async with aioredis.Redis.from_url(SHARED_REDIS_URL) as client:

        async def ended() -> bool:
            return await client.hget(publisher.record_key, "hold_until") == b"0"

        await eventually(ended, timeout=publisher.fleet.renewal + 1.0, message="hold over")


def fleet_sidecar(
    sidecar_process: Callable[..., SidecarProcess],
    namespace: str,
    instance: str,
    lease: float,
    renewal: float | None = None,
    *,
    grace: float = 0.0,
    url: str = SHARED_REDIS_URL,
) -> SidecarProcess:
    """`market-data-sidecar run` as one member of the fleet writing `namespace`'s stream."""
    targets = [{"kind": "redis-stream", "url": url, "namespace": namespace}]
    return sidecar_process(
        {
            "SIDECAR_TARGETS": json.dumps(targets),
            "SIDECAR_INSTANCE": instance,
            "SIDECAR_FLEET_LEASE": str(lease),
            "SIDECAR_FLEET_RENEWAL": str(renewal or lease / 4),
            "SIDECAR_FLEET_GRACE": str(grace),
            "SIDECAR_SHUTDOWN_GRACE": "0",
        }
    )


async def post(sidecar: SidecarProcess, level: str, queue_size: int) -> None:
    """What the store's broadcaster posts to its sidecar."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            sidecar.url + "/feedback", json=store_payload("bars", queue_size, level=level)
        ) as response,
    ):
        assert response.status == 202, await response.text()


async def test_a_sigkilled_sidecar_holding_hard_releases_the_fleet_after_its_lease(
    sidecar_process: Callable[..., SidecarProcess], member: MakeMember, namespace: str
) -> None:
    lease = 2.0
    killed = fleet_sidecar(sidecar_process, namespace, "pod-a", lease)
    survivor = member("pod-b", namespace, lease=lease, renewal=lease / 4)
    await survivor.start()
    await survivor.deliver([pod("pod-b", "bars", "soft", 600)])
    await killed.wait_listening()
    await post(killed, "hard", 900)
    await until_last(namespace, ("hard", "pod-a"), timeout=5.0)

    killed.proc.send_signal(signal.SIGKILL)
    since = time.monotonic()

    await until_last(namespace, ("soft", "pod-b"), timeout=lease + 1.0)
    assert time.monotonic() - since >= lease / 2  # the lease, not a goodbye, released it


async def test_a_sigtermed_sidecar_leaves_the_fleet_at_once(
    sidecar_process: Callable[..., SidecarProcess], member: MakeMember, namespace: str
) -> None:
    lease = 30.0  # a release within seconds can only be the goodbye
    stopped = fleet_sidecar(sidecar_process, namespace, "pod-a", lease, renewal=0.3)
    survivor = member("pod-b", namespace, lease=lease, renewal=0.3)
    await survivor.start()
    await survivor.deliver([pod("pod-b", "bars", "ok", 10)])
    await stopped.wait_listening()
    await post(stopped, "hard", 900)
    await until_last(namespace, ("hard", "pod-a"), timeout=5.0)
    await hold_over(survivor)

    stopped.proc.send_signal(signal.SIGTERM)

    await until_last(namespace, ("ok", "pod-b"), timeout=5.0)
    assert await asyncio.to_thread(stopped.proc.wait, 10) == 0
    assert "member pod-a left" in stopped.output()


async def test_redis_restarted_empty_the_members_rebuild_within_one_renewal(
    member: MakeMember, redis_server: RedisServer
) -> None:
    namespace, renewal = "mdp", 0.3
    a = member("pod-a", namespace, url=redis_server.url, lease=3.0, renewal=renewal)
    b = member("pod-b", namespace, url=redis_server.url, lease=3.0, renewal=renewal)
    await a.start()
    await b.start()
    await a.deliver([pod("pod-a", "bars", "soft", 600)])
    await b.deliver([pod("pod-b", "bars", "hard", 900)])
    await until_last(namespace, ("hard", "pod-b"), timeout=3.0, url=redis_server.url)

    redis_server.stop()
    redis_server.start()  # same port, empty
    restarted = time.monotonic()

    async def rebuilt() -> bool:
        written = await entries(namespace, redis_server.url)
        return bool(written) and summary(written)[-1] == ("hard", "pod-b", "2")

    # One renewal for every member to write again; slack for the reconnection.
    await eventually(rebuilt, timeout=renewal + 1.0, message="the fleet rebuilt")
    assert time.monotonic() - restarted < renewal + 1.0
    levels = [event.level.value for event, _ in await entries(namespace, redis_server.url)]
    assert "soft" not in levels  # never milder than the truth on the way


# -- what goes wrong -------------------------------------------------------------------------


async def test_two_sidecars_claiming_one_instance_are_reported(
    member: MakeMember, namespace: str
) -> None:
    first = member("pod-a", namespace)
    second = member("pod-a", namespace)
    await first.start()
    await second.start()
    await first.deliver([pod("pod-a", "bars", "ok", 10)])
    await second.deliver([pod("pod-a", "bars", "soft", 600)])

    # No consumer group reads this stream either: that is a problem too, named after it.
    def duplicate(publisher: FleetStreamPublisher) -> Callable[[], str | None]:
        return lambda: p if "another sidecar" in (p := publisher.problem() or "") else None

    problem = await eventually(duplicate(first), timeout=2.0, message="the duplicate reported")
    assert "another sidecar writes as fleet member 'pod-a'" in problem
    assert "SIDECAR_INSTANCE" in problem
    await eventually(duplicate(second), timeout=2.0, message="reported on both sides")


async def test_a_restarted_sidecar_is_not_its_own_duplicate(
    member: MakeMember, namespace: str
) -> None:
    before = member("pod-a", namespace)
    await before.start()
    await before.deliver([pod("pod-a", "bars", "hard", 900)])
    assert before._renewal is not None
    before._renewal.cancel()  # killed: its entry stays until the lease ends

    after = member("pod-a", namespace)
    await after.start()
    await after.deliver([pod("pod-a", "bars", "ok", 10)])
    renewals = after._renewals
    await eventually(lambda: after._renewals >= renewals + 3, timeout=3.0, message="renewals")
    assert "another sidecar" not in (after.problem() or "")  # only that nobody reads it


async def test_entries_no_step_wrote_are_ignored_and_summarised_as_a_gauge(
    member: MakeMember, namespace: str, shared_redis: aioredis.Redis
) -> None:
    metrics = Metrics()
    a = member("pod-a", namespace, metrics=metrics)
    await a.start()
    await a.deliver([pod("pod-a", "bars", "soft", 600)])
    valid = json.loads(member_state(pod("pod-x", "bars", "hard", 990)))
    await shared_redis.hset(
        a.members_key,
        mapping={
            "by-hand": "hard!",
            "other-version": f'{2**50}|0|t|{{"level": "hard"}}',
            "not-json": f"{2**50}|0|t|{{nope",
            "valid-but-unindexed": f"{2**50}|0|t|" + json.dumps(valid),
        },
    )
    renewals = a._renewals
    await eventually(lambda: a._renewals >= renewals + 2, timeout=3.0, message="renewals")

    assert summary(await entries(namespace))[-1] == ("soft", "pod-a", "1")
    sample = metrics.registry.get_sample_value
    assert sample("sidecar_fleet_unparsable_entries", {"target": a.name}) == 4
    assert sample("sidecar_fleet_unparsable_members_total", {"target": a.name}) == 4
    assert [m.instance for m in a.members()] == ["pod-a"]


@pytest.fixture(autouse=True)
async def _fleet_keys_removed(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """The keys of `market-data-sidecar run` members: `{<key>}:fleet:...` is outside the
    namespace's prefix, which the `namespace` fixture removes."""
    namespace = request.getfixturevalue("namespace") if "namespace" in request.fixturenames else ""
    yield
    if not namespace:
        return
    async with aioredis.Redis.from_url(SHARED_REDIS_URL) as client:
        keys = [key async for key in client.scan_iter(match=f"{{{feedback_key(namespace)}}}*")]
        if keys:
            await client.delete(*keys)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        (
            {"SIDECAR_TARGETS": '[{"kind": "http", "url": "http://127.0.0.1:1/", '
             '"scope": "fleet"}]'},
            "SIDECAR_TARGETS[0]",
        ),
        (
            {"SIDECAR_TARGETS": '[{"kind": "redis-pubsub", "url": "redis://127.0.0.1:1", '
             '"scope": "fleet"}]'},
            "SIDECAR_TARGETS[0]",
        ),
        ({"SIDECAR_INSTANCE": ""}, "SIDECAR_INSTANCE"),
        ({"SIDECAR_INSTANCE": "pod a\u2028"}, "SIDECAR_INSTANCE"),
        ({"SIDECAR_INSTANCE": "x" * 300}, "SIDECAR_INSTANCE"),
        ({"SIDECAR_FLEET_LEASE": "4", "SIDECAR_FLEET_RENEWAL": "3"}, "SIDECAR_FLEET_LEASE (4)"),
        ({"SIDECAR_FLEET_GRACE": "-1"}, "SIDECAR_FLEET_GRACE"),
        ({"SIDECAR_FLEET_GRACE": "soon"}, "SIDECAR_FLEET_GRACE"),
        ({"SIDECAR_FLEET_GRACE": "nan"}, "SIDECAR_FLEET_GRACE"),
        ({"SIDECAR_FLEET_LEASE": "86400"}, "SIDECAR_FLEET_LEASE"),
    ],
)  # fmt: skip
def test_bad_fleet_configuration_is_one_line_and_exit_2(env: dict[str, str], named: str) -> None:
    result = run_cli("run", env=env)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert named in line


# -- what operators see ----------------------------------------------------------------------


async def test_feedback_status_page_and_metrics_show_the_composite_and_the_members(
    sidecar_process: Callable[..., SidecarProcess], member: MakeMember, namespace: str
) -> None:
    sidecar = fleet_sidecar(sidecar_process, namespace, "pod-a", 15.0, renewal=0.2)
    other = member("pod-b", namespace, lease=15.0, renewal=0.2)
    await other.start()
    await other.deliver([pod("pod-b", "quotes", "soft", 600, count=3)])
    await sidecar.wait_listening()
    await post(sidecar, "hard", 900)

    async def both_seen() -> dict[str, Any] | None:
        _, body = await sidecar.get("/feedback")
        [target] = json.loads(body)["targets"]
        members = {m["instance"] for m in target["members"]}
        return target if members == {"pod-a", "pod-b"} else None

    target = await eventually(both_seen, timeout=5.0, message="both members seen")
    assert target["scope"] == "fleet"
    composite = target["composite"]
    assert (composite["level"], composite["member"], composite["coordinator_id"]) == (
        "hard",
        "pod-a",
        "bars",
    )
    assert (composite["members"], composite["coordinators"]) == (2, 4)
    [first, second] = target["members"]
    assert (first["instance"], first["level"], second["level"]) == ("pod-a", "hard", "soft")
    assert 0 <= second["lease_age"] < 15

    status = await asyncio.to_thread(run_cli, "status", "--url", sidecar.url)
    assert "fleet hard: bars of pod-a (2 members, 4 coordinators)" in status.stdout
    assert any(
        line.split()[:4] == ["pod-b", "live", "soft", "quotes"]
        for line in status.stdout.splitlines()
    )
    _, page = await sidecar.get("/")
    assert 'data-member="pod-b"' in page
    assert 'data-level="hard"' in page
    _, metrics = await sidecar.get("/metrics")
    assert 'sidecar_fleet_members{target="redis-stream:127.0.0.1"} 2.0' in metrics
    assert (
        'sidecar_fleet_member_level{instance="pod-b",target="redis-stream:127.0.0.1"} 1.0'
        in metrics
    )
    assert (
        'sidecar_feedback_composite_level{scope="fleet",target="redis-stream:127.0.0.1"} 2.0'
        in metrics
    )


async def test_a_recovered_target_force_appends_the_current_composite(
    member: MakeMember, namespace: str
) -> None:
    """`on_recovered` (Redis restarted, a new consumer group) makes the router resync the
    target: in fleet scope, one forced entry of the fleet's current composite."""
    publisher = member("pod-a", namespace)
    router = parts.router(
        [parts.target_of(publisher, publisher.target)],
        retry_initial=0.01,
        retry_max=0.05,
        resync_interval=3600.0,
        instance="pod-a",
    )
    await router.start()
    try:
        router.submit(feedback("bars", 900, level="hard"))
        router.submit(feedback("quotes", 10, level="ok"))
        # Submitted at once: the second composite replaced the first undelivered one.
        await eventually(lambda: _count(namespace, 1), message="the composite")

        publisher.on_recovered()

        await eventually(lambda: _count(namespace, 2), message="the resync")
        event, headers = (await entries(namespace))[-1]
        assert (event.level.value, event.coordinator_id) == ("hard", "bars")
        assert (headers["resync"], headers["coordinators"]) == ("true", "2")
    finally:
        await router.stop(1.0)


async def _count(namespace: str, expected: int) -> bool:
    return len(await entries(namespace)) == expected


async def test_two_sidecars_claiming_one_instance_make_feedback_degraded(
    sidecar_process: Callable[..., SidecarProcess], namespace: str
) -> None:
    first = fleet_sidecar(sidecar_process, namespace, "pod-a", 2.0, renewal=0.2)
    second = fleet_sidecar(sidecar_process, namespace, "pod-a", 2.0, renewal=0.2)
    for sidecar, level in ((first, "ok"), (second, "soft")):
        await sidecar.wait_listening()
        await post(sidecar, level, 600)

    async def degraded() -> str | None:
        _, body = await first.get("/healthz")
        [component] = [c for c in json.loads(body)["components"] if c["name"] == "feedback"]
        details = str(component["details"])
        # Nobody reads this stream either (a problem too): wait for the duplicate.
        duplicate = component["state"] == "degraded" and "another sidecar" in details
        return details if duplicate else None

    details = await eventually(degraded, timeout=5.0, message="feedback degraded")
    assert "another sidecar writes as fleet member 'pod-a'" in details
    assert "another sidecar writes as member pod-a" in first.output()


def test_streams_default_to_fleet_and_the_rest_to_coordinator() -> None:
    settings = load_settings(
        targets=[
            {"kind": "redis-stream", "url": "redis://h"},
            {"kind": "redis-pubsub", "url": "redis://h"},
            {"kind": "http", "url": "http://h/"},
            {"kind": "http", "url": "http://h/", "name": "pod", "scope": "pod"},
        ],
        instance="pod-a",
    )
    assert [t.scope for t in settings.targets] == ["fleet", "coordinator", "coordinator", "pod"]
    assert (settings.fleet_lease, settings.fleet_renewal, settings.fleet_grace) == (15, 5, 30)
    with pytest.raises(ConfigError, match=r"SIDECAR_TARGETS\[0\].*scope 'coordinator'"):
        load_settings(targets=[{"kind": "redis-stream", "url": "redis://h", "mode": "all"}])


async def test_a_fleet_key_of_the_wrong_type_is_named_with_the_type_redis_has(
    member: MakeMember, namespace: str, shared_redis: aioredis.Redis
) -> None:
    a = member("pod-a", namespace)
    await a.start()
    members = f"{{{feedback_key(namespace)}}}:fleet:members"
    await shared_redis.set(members, "made by hand")
    with pytest.raises(DeliveryError) as failed:
        await a.deliver([pod("pod-a", "bars", "hard", 900)])
    assert failed.value.reason == "redis_wrongtype"
    assert f"key {members} is a string, not a hash" in str(failed.value)
    assert "script" not in str(failed.value).lower()
