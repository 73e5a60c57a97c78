"""The fleet under faults, against real Redis servers and the tests' own TCP proxy: members
that stop renewing are suspect for a grace, cut-off members know it, late steps are fenced,
unknown state (Redis emptied, restored, evicted, a gap) holds milder composites, two
processes under one name both count, and foreign entries cost nothing."""

# The fixtures are test_fleet.py's, imported: a test's parameter of that name is one.
# ruff: noqa: F811

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis
from loguru import logger

from market_data_sidecar.feedback.delivery import DeliveryError
from market_data_sidecar.metrics import Metrics
from market_data_sidecar.publishers.fleet import FleetStreamPublisher, member_state
from tests.publishers.test_fleet import (  # noqa: F401 - fixtures
    MakeMember,
    _fleet_keys_removed,
    entries,
    member,
    pod,
    summary,
)
from tests.support.helpers import eventually
from tests.support.redis_servers import SHARED_REDIS_URL, RedisServer
from tests.support.tcp_proxy import StartProxy

pytest_plugins = ["tests.support.redis_fixtures"]

LEASE, RENEWAL = 1.5, 0.3


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    """The sidecar's log messages during the test."""
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(message.record["message"]), level="INFO")
    yield lines
    logger.remove(sink)


def levels(written: list[tuple[str, str, str]]) -> list[str]:
    return [level for level, _, _ in written]


async def renewals(publisher: FleetStreamPublisher, count: int, timeout: float = 5.0) -> None:
    """Until `publisher` has renewed `count` more times."""
    start = publisher._renewals
    await eventually(
        lambda: publisher._renewals >= start + count, timeout=timeout, message="renewals"
    )


SHARED_PORT = int(SHARED_REDIS_URL.rsplit(":", 1)[1].split("/")[0])


# -- suspects ---------------------------------------------------------------------------------


async def test_a_member_that_stops_renewing_is_suspect_for_the_grace_then_dropped(
    member: MakeMember, namespace: str, log_lines: list[str]
) -> None:
    metrics = Metrics()
    grace = 1.5
    a = member("pod-a", namespace, grace=grace)
    b = member("pod-b", namespace, grace=grace, metrics=metrics)
    await a.start()
    await b.start()
    await a.deliver([pod("pod-a", "bars", "hard", 900)])
    await b.deliver([pod("pod-b", "bars", "ok", 10)])
    assert a._renewal is not None
    a._renewal.cancel()  # paused, partitioned or killed: Redis cannot tell
    stopped = time.monotonic()

    def suspect() -> bool:
        return [m.state for m in b.members() if m.instance == "pod-a"] == ["suspect"]

    await eventually(suspect, timeout=LEASE + 1.0, message="pod-a suspect")
    assert time.monotonic() - stopped >= LEASE - RENEWAL - 0.1
    sample = metrics.registry.get_sample_value
    assert sample("sidecar_fleet_members_by_state", {"target": b.name, "state": "suspect"}) == 1
    assert sample("sidecar_fleet_members_by_state", {"target": b.name, "state": "live"}) == 1
    composite = b.composite()
    assert composite is not None
    assert (composite.level, composite.suspects) == ("hard", 1)
    assert summary(await entries(namespace))[-1][0] == "hard"  # still counted
    assert any("member pod-a" in line and "is suspect" in line for line in log_lines)

    await eventually(
        lambda: [m.instance for m in b.members()] == ["pod-b"],
        timeout=grace + 1.0,
        message="pod-a dropped",
    )
    assert time.monotonic() - stopped >= LEASE + grace - RENEWAL - 0.1
    assert summary(await entries(namespace))[-1] == ("ok", "pod-b", "1")
    assert sum("member pod-a" in line and "dropped" in line for line in log_lines) == 1
    assert sample("sidecar_fleet_members_by_state", {"target": b.name, "state": "suspect"}) == 0


async def test_a_cut_off_member_says_so_and_marks_its_composite_stale(
    member: MakeMember, namespace: str, proxies: StartProxy
) -> None:
    """Blackholed: its `feedback` problem names the fleet after the lease; the survivor
    counts it as suspect; after the heal it renews within a fraction of the lease."""
    proxy = await proxies(SHARED_PORT)
    metrics = Metrics()
    a = member("pod-a", namespace, url=proxy.url(), grace=10.0, metrics=metrics)
    b = member("pod-b", namespace, grace=10.0)
    await a.start()
    await b.start()
    await a.deliver([pod("pod-a", "bars", "hard", 900)])
    await b.deliver([pod("pod-b", "bars", "ok", 10)])

    proxy.blackhole()

    problem = await eventually(
        lambda: a.problem() if "has not renewed" in (a.problem() or "") else None,
        timeout=LEASE + 2.5,
        message="the cut-off member knows",
    )
    assert "fleet member 'pod-a'" in problem
    assert "stale" in problem
    composite = a.composite()
    assert composite is not None
    assert composite.stale
    assert composite.age > LEASE - RENEWAL
    age = metrics.registry.get_sample_value("sidecar_fleet_renewal_age_seconds", {"target": a.name})
    assert age is not None
    assert age > LEASE
    await eventually(
        lambda: [m.state for m in b.members() if m.instance == "pod-a"] == ["suspect"],
        timeout=2.0,
        message="the survivor sees a suspect",
    )
    assert summary(await entries(namespace))[-1][0] == "hard"

    healed = time.monotonic()
    proxy.heal()
    await eventually(lambda: "has not renewed" not in (a.problem() or ""), timeout=3.0)
    # One attempt may still wait out its timeout (1 s); the retry follows within half a renewal.
    assert time.monotonic() - healed < 1.0 + RENEWAL
    await eventually(
        lambda: [m.state for m in b.members() if m.instance == "pod-a"] == ["live"],
        timeout=2.0,
        message="pod-a live again",
    )


async def test_a_reset_link_is_retried_with_backoff_well_within_the_lease(
    member: MakeMember, namespace: str, proxies: StartProxy
) -> None:
    proxy = await proxies(SHARED_PORT)
    a = member("pod-a", namespace, url=proxy.url(), lease=3.0, renewal=1.0, grace=5.0)
    await a.start()
    await a.deliver([pod("pod-a", "bars", "hard", 900)])
    before = proxy.connections

    proxy.reset()
    await eventually(lambda: a._failing_since is not None, timeout=3.0, message="a failure")
    failed = time.monotonic()
    # Backoff from 0.1 s up to half a renewal: several attempts before a renewal would.
    await eventually(
        lambda: proxy.connections >= before + 4, timeout=1.5, message="retries within the lease"
    )
    assert time.monotonic() - failed < 1.5
    proxy.heal()
    await eventually(lambda: a._failing_since is None, timeout=2.0, message="renewed again")


# -- fencing ----------------------------------------------------------------------------------


async def test_steps_delivered_late_after_a_newer_one_change_nothing(
    member: MakeMember, namespace: str, proxies: StartProxy
) -> None:
    """During a partition the store posts `soft`, then `hard`; at the heal the newer step
    arrives first and the held ones 1 s later, as TCP delivers them: fenced."""
    proxy = await proxies(SHARED_PORT)
    a = member("pod-a", namespace, url=proxy.url(), lease=5.0, renewal=1.0, grace=5.0)
    b = member("pod-b", namespace, lease=5.0, renewal=1.0, grace=5.0)
    await a.start()
    await b.start()
    await b.deliver([pod("pod-b", "bars", "ok", 10)])
    await a.deliver([pod("pod-a", "bars", "ok", 10)])

    proxy.hold()
    for level, depth in (("soft", 600), ("hard", 900)):
        with pytest.raises(DeliveryError):
            await a.deliver([pod("pod-a", "bars", level, depth)])
    proxy.heal(late=1.0)
    await a.deliver([pod("pod-a", "bars", "hard", 900)])
    await eventually(lambda: proxy.delivered_late > 0, timeout=3.0, message="late delivery")
    await renewals(b, 2)

    written = levels(summary(await entries(namespace)))
    assert written[-1] == "hard"
    assert "soft" not in written[written.index("hard") :]
    assert [m.level for m in b.members() if m.instance == "pod-a"] == ["hard"]


async def test_a_member_that_left_cannot_be_brought_back_by_a_late_step(
    member: MakeMember, namespace: str
) -> None:
    token = secrets.token_hex(8)
    a = member("pod-a", namespace, token=token)
    b = member("pod-b", namespace)
    await a.start()
    await b.start()
    await a.deliver([pod("pod-a", "bars", "hard", 900)])
    await b.deliver([pod("pod-b", "bars", "ok", 10)])
    await a.close()  # left: tombstone
    late = member("pod-a", namespace, token=token)  # the same process's step, arriving late
    await late.start()
    assert late._client is not None
    result = await late._step(
        late._client, member_state(pod("pod-a", "bars", "hard", 900)), force=False
    )

    assert result.status == "tombstoned"
    await renewals(b, 2)
    assert [m.instance for m in b.members()] == ["pod-b"]
    assert summary(await entries(namespace))[-1] == ("ok", "pod-b", "1")


# -- unknown state ----------------------------------------------------------------------------


async def hard_and_soft(
    member: MakeMember, namespace: str
) -> tuple[FleetStreamPublisher, FleetStreamPublisher]:
    """Two started members (lease 3 s, renewal 1 s): pod-a at `hard`, pod-b at `soft`."""
    a = member("pod-a", namespace, lease=3.0, renewal=1.0)
    b = member("pod-b", namespace, lease=3.0, renewal=1.0)
    await a.start()
    await b.start()
    await a.deliver([pod("pod-a", "bars", "hard", 900)])
    await b.deliver([pod("pod-b", "bars", "soft", 600)])
    return a, b


async def test_a_deleted_members_hash_holds_milder_composites_until_the_members_wrote(
    member: MakeMember, namespace: str, shared_redis: aioredis.Redis
) -> None:
    a, b = await hard_and_soft(member, namespace)
    before = len(await entries(namespace))

    await shared_redis.delete(a.members_key)  # as volatile-ttl eviction would
    await b.deliver([pod("pod-b", "bars", "ok", 10)])
    assert b._last is not None
    assert b._last.unknown.startswith("members lost")
    await renewals(a, 1)
    await renewals(b, 1)

    after = summary(await entries(namespace))[before:]
    assert all(level == "hard" for level in levels(after)), after
    await a.deliver([pod("pod-a", "bars", "ok", 10)])
    assert summary(await entries(namespace))[-1] == ("ok", "pod-b", "2")  # ties: the name


async def test_redis_restored_from_an_old_snapshot_holds_until_the_members_wrote(
    member: MakeMember, redis_server: RedisServer
) -> None:
    """The snapshot holds the members and the record as they were, every lease long ended;
    the record's last step is old (a gap), so nothing milder than the truth (`hard`)
    passes until the hard member, whose link is down, wrote again."""
    namespace = "mdp"
    a = member("pod-a", namespace, url=redis_server.url, lease=LEASE, renewal=RENEWAL)
    b = member("pod-b", namespace, url=redis_server.url, lease=LEASE, renewal=RENEWAL)
    await a.start()
    await b.start()
    await a.deliver([pod("pod-a", "bars", "soft", 600)])
    await b.deliver([pod("pod-b", "bars", "ok", 10)])
    await eventually(
        lambda: _first_level(namespace, redis_server.url, "soft"), timeout=3.0, message="soft"
    )
    async with aioredis.Redis.from_url(redis_server.url) as client:
        await client.save()  # dump.rdb: the fleet at soft
    await a.deliver([pod("pod-a", "bars", "hard", 900)])
    await renewals(b, 6)  # longer than the lease: the snapshot's leases have all ended
    assert a._renewal is not None
    a._renewal.cancel()  # its link stays down across the restore

    redis_server.stop()
    redis_server.start()  # loads dump.rdb
    await renewals(b, 4)

    assert b._last is not None
    written = levels(summary(await entries(namespace, redis_server.url)))
    assert written == ["soft"]  # the snapshot's entry; `ok` waits for pod-a
    assert a._client is not None
    assert a._state is not None
    await a._step(a._client, a._state, force=False)  # its link is back
    assert levels(summary(await entries(namespace, redis_server.url)))[-1] == "hard"


async def test_redis_restarted_empty_while_a_members_link_is_down_holds_until_it_wrote(
    member: MakeMember, redis_server: RedisServer, proxies: StartProxy
) -> None:
    namespace = "mdp"
    proxy = await proxies(redis_server.port)
    a = member("pod-a", namespace, url=proxy.url(), lease=3.0, renewal=0.3)
    b = member("pod-b", namespace, url=redis_server.url, lease=3.0, renewal=0.3)
    await a.start()
    await b.start()
    await a.deliver([pod("pod-a", "bars", "hard", 900)])
    await b.deliver([pod("pod-b", "bars", "soft", 600)])

    proxy.blackhole()
    redis_server.stop()
    redis_server.start()  # empty
    await renewals(b, 5)  # 1.5 s: five renewals, longer than the hold of old

    assert await entries(namespace, redis_server.url) == []  # `soft` waits for pod-a
    proxy.heal()
    await eventually(
        lambda: _first_level(namespace, redis_server.url, "hard"), timeout=3.0, message="hard"
    )


async def _first_level(namespace: str, url: str, level: str) -> bool:
    written = await entries(namespace, url)
    if written:
        assert written[0][0].level.value == level, summary(written)
    return bool(written)


@pytest.mark.parametrize("grace", [0.0, 5.0])
async def test_after_an_outage_of_every_link_longer_than_the_lease_nothing_milder_passes(
    member: MakeMember,
    redis_server: RedisServer,
    proxies: StartProxy,
    grace: float,
) -> None:
    """A failover: no member can step for longer than the lease. Both know they cannot
    renew; after it, the first steps hold like a Redis restarted empty."""
    namespace = "mdp"
    pa = await proxies(redis_server.port)
    pb = await proxies(redis_server.port)
    a = member("pod-a", namespace, url=pa.url(), lease=LEASE, renewal=RENEWAL, grace=grace)
    b = member("pod-b", namespace, url=pb.url(), lease=LEASE, renewal=RENEWAL, grace=grace)
    await a.start()
    await b.start()
    await a.deliver([pod("pod-a", "bars", "hard", 900)])
    await b.deliver([pod("pod-b", "bars", "soft", 600)])
    before = len(await entries(namespace, redis_server.url))

    pa.blackhole()
    pb.blackhole()
    for publisher in (a, b):
        await eventually(
            lambda p=publisher: "has not renewed" in (p.problem() or ""),
            timeout=LEASE + 2.5,
            message="cannot renew",
        )
    pb.heal()  # pod-b first: it alone could publish `soft`
    await renewals(b, 3)
    after = summary(await entries(namespace, redis_server.url))[before:]
    assert all(level == "hard" for level in levels(after)), after
    pa.heal()
    await renewals(a, 2)
    assert levels(summary(await entries(namespace, redis_server.url)))[-1] == "hard"


# -- names and processes ----------------------------------------------------------------------


async def test_two_live_processes_under_one_name_both_count_and_the_stream_never_flips(
    member: MakeMember, namespace: str
) -> None:
    first = member("pod-a", namespace)
    second = member("pod-a", namespace)
    await first.start()
    await second.start()
    await first.deliver([pod("pod-a", "bars", "hard", 900)])
    await second.deliver([pod("pod-a", "bars", "ok", 10)])
    await renewals(first, 4)
    await renewals(second, 4)

    assert set(levels(summary(await entries(namespace)))) == {"hard"}
    assert sorted(m.level for m in first.members()) == ["hard", "ok"]
    assert "another sidecar" in (first.problem() or "")
    assert "another sidecar" in (second.problem() or "")


async def test_a_new_process_under_a_gone_ones_name_replaces_it_at_once(
    member: MakeMember, namespace: str
) -> None:
    """An OOM-killed container restarts: its old process must not count for its lease and
    grace (30 s) more."""
    old = member("pod-a", namespace, grace=30.0)
    await old.start()
    await old.deliver([pod("pod-a", "bars", "hard", 900)])
    assert old._renewal is not None
    old._renewal.cancel()
    killed = time.monotonic()

    new = member("pod-a", namespace, grace=30.0)
    await new.start()
    await new.deliver([pod("pod-a", "bars", "ok", 10)])
    await eventually(
        lambda: [m.level for m in new.members()] == ["ok"], timeout=2.0, message="replaced"
    )
    assert time.monotonic() - killed < LEASE
    assert "another sidecar" not in (new.problem() or "")


# -- foreign entries --------------------------------------------------------------------------


async def test_a_foreign_member_with_a_far_future_expiry_pins_nothing(
    member: MakeMember, namespace: str, shared_redis: aioredis.Redis
) -> None:
    a = member("pod-a", namespace)
    await a.start()
    await a.deliver([pod("pod-a", "bars", "ok", 10)])
    year = int(time.time() * 1000) + 365 * 86400 * 1000
    state = member_state(pod("forged", "bars", "hard", 999))
    forged = "forged#0"
    entry = f"{2**40}|{year}|{year}|{year}|hard|1|4|bars{state}"
    keys = dict(zip(("members", "leases", "drops", "rank", "names"), a.keys[:5], strict=True))
    async with shared_redis.pipeline(transaction=True) as pipe:
        pipe.hset(keys["members"], forged, entry)
        pipe.zadd(keys["leases"], {forged: year})
        pipe.zadd(keys["drops"], {forged: year})
        pipe.zadd(keys["rank"], {forged: 2_000_000})
        pipe.zadd(keys["names"], {forged: 0})
        pipe.hincrby(a.record_key, "count", 1)
        pipe.hincrby(a.record_key, "coordinators", 1)
        await pipe.execute()
    await renewals(a, 3)

    assert [m.instance for m in a.members()] == ["pod-a"]
    assert await shared_redis.zscore(keys["leases"], forged) is None  # removed, not read
    assert not await shared_redis.hexists(keys["members"], forged)
    assert "hard" not in levels(summary(await entries(namespace)))


async def test_a_member_named_with_2_mib_costs_one_reset_and_no_failure(
    member: MakeMember, namespace: str, shared_redis: aioredis.Redis
) -> None:
    a = member("pod-a", namespace)
    await a.start()
    await a.deliver([pod("pod-a", "bars", "soft", 600)])
    huge = "x" * (2 * 1024 * 1024)
    await shared_redis.zadd(a.keys[3], {huge: 2_000_000})
    await shared_redis.hset(a.members_key, huge, "hard")
    await a.deliver([pod("pod-a", "bars", "ok", 10)])  # no DeliveryError
    await renewals(a, 3)

    assert [m.instance for m in a.members()] == ["pod-a"]
    assert "protocol" not in (a.problem() or "")
    assert await shared_redis.zcard(a.keys[3]) == 1


async def test_ten_thousand_foreign_entries_are_a_gauge_and_one_line_an_interval(
    member: MakeMember, namespace: str, shared_redis: aioredis.Redis, log_lines: list[str]
) -> None:
    metrics = Metrics()
    a = member("pod-a", namespace, metrics=metrics)
    await a.start()
    await a.deliver([pod("pod-a", "bars", "hard", 900)])
    async with shared_redis.pipeline(transaction=False) as pipe:
        for start in range(0, 10_000, 1000):
            pipe.hset(a.members_key, mapping={f"junk-{n}": "?" for n in range(start, start + 1000)})
        await pipe.execute()
    await renewals(a, 5)

    value = metrics.registry.get_sample_value(
        "sidecar_fleet_unparsable_entries", {"target": a.name}
    )
    assert value == 10_000
    summaries = [line for line in log_lines if "not written by a fleet step" in line]
    assert len(summaries) == 1
    assert "10000 entries" in summaries[0]
    assert len(summaries[0]) < 600
    assert summary(await entries(namespace))[-1] == ("hard", "pod-a", "1")


# -- permissions and names --------------------------------------------------------------------


async def test_a_user_without_scripting_is_told_once_naming_the_permission(
    member: MakeMember, redis_server: RedisServer, log_lines: list[str]
) -> None:
    async with aioredis.Redis.from_url(redis_server.url) as admin:
        await admin.acl_setuser(
            "noscripts",
            enabled=True,
            passwords=["+pw"],
            keys=["*"],
            channels=["*"],
            categories=["+@all", "-@scripting"],
        )
    url = f"redis://noscripts:pw@127.0.0.1:{redis_server.port}/0"
    a = member("pod-a", "mdp", url=url)
    await a.start()
    for _ in range(3):
        with pytest.raises(DeliveryError) as failed:
            await a.deliver([pod("pod-a", "bars", "hard", 900)])
    assert failed.value.reason == "redis_noperm"
    problem = a.problem() or ""
    assert "may not run scripts" in problem
    assert "evalsha" in problem.lower()
    assert sum("may not run scripts" in line for line in log_lines) == 1


async def test_the_fleets_keys_share_the_streams_slot(
    member: MakeMember, namespace: str, shared_redis: aioredis.Redis
) -> None:
    a = member("pod-a", namespace)
    await a.start()
    await a.deliver([pod("pod-a", "bars", "hard", 900)])
    key = a.stream
    for name in ("members", "leases", "drops", "rank", "names", "record"):
        assert await shared_redis.exists(f"{{{key}}}:fleet:{name}"), name
    assert json.loads(json.dumps(a.keys))[-1] == key


@pytest.mark.parametrize(
    ("field", "garbage"),
    [("member", "not|a|sequence"), ("stepped", "soon"), ("count", "-")],
)
async def test_a_sequence_or_record_that_does_not_parse_is_unknown_state_not_a_crash(
    member: MakeMember, namespace: str, shared_redis: aioredis.Redis, field: str, garbage: str
) -> None:
    a, b = await hard_and_soft(member, namespace)
    before = len(await entries(namespace))
    if field == "member":
        await shared_redis.hset(a.members_key, b.fleet.member_id, garbage)
    else:
        await shared_redis.hset(b.record_key, field, garbage)

    await b.deliver([pod("pod-b", "bars", "ok", 10)])  # no error

    assert b._last is not None
    assert b._last.unknown
    assert b._last.holding is not None
    await renewals(a, 1)
    after = summary(await entries(namespace))[before:]
    assert all(level == "hard" for level in levels(after)), after


async def test_a_fleet_whose_members_all_left_leaves_only_expiring_keys(
    member: MakeMember, namespace: str, shared_redis: aioredis.Redis
) -> None:
    a = member("pod-a", namespace)
    b = member("pod-b", namespace)
    await a.start()
    await b.start()
    await a.deliver([pod("pod-a", "bars", "hard", 900)])
    await b.deliver([pod("pod-b", "bars", "ok", 10)])
    assert await shared_redis.pttl(a.record_key) == -1  # members: no TTL to be evicted by

    await a.close()
    await b.close()

    left = [key for key in a.keys[:-1] if await shared_redis.exists(key)]
    assert sorted(left) == sorted([a.record_key, a.keys[5]])  # the record, the tombstones
    for key in left:
        assert await shared_redis.pttl(key) > 0, key
