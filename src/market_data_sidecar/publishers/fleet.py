"""A stream target in `fleet` scope: this sidecar is one member of the replicas writing
the key, and the stream carries the worst state of them all.

Each member (one process under one instance name) keeps its pod's composite in a hash
beside the stream under a lease renewed every `renewal` seconds; sorted sets index the
members by lease end, drop time, rank and name, all under the stream key as a hash tag
(`{<key>}:fleet:...`, one slot). One Lua step (fleet.lua) writes the member, judges the
others, computes the fleet's composite and appends it only when it changed, so replicas
writing at once can never publish out of order: Redis runs the steps one at a time.
Leases use the server's clock (`TIME`), so the pods' clocks do not matter. This is the
pattern of Sidekiq's process heartbeats and gRPC's ORCA weights; no consensus of our own.

A member that stops renewing without leaving is suspect for a grace period, counting at
its last level: from Redis, a SIGKILLed replica, a partitioned one and a paused one look
alike, and the last two may have a full store. Writes are fenced by a sequence of the
process and by tombstones; the fleet's own record says when its state may be incomplete,
and milder composites wait then. The renewal task wakes when another member's lease or
grace ends, so a change is published a few milliseconds after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, cast

import redis.asyncio as aioredis
from loguru import logger
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisError, ResponseError

from market_data_sidecar.feedback.model import Feedback, new_event_id
from market_data_sidecar.feedback.scope import SEVERITY, severity
from market_data_sidecar.feedback.state import CompositeState, Level, MemberState, clip
from market_data_sidecar.metrics import Metrics
from market_data_sidecar.publishers.redis import (
    SCHEMA_ID,
    TRACK,
    RedisStreamPublisher,
    classify,
)
from market_data_sidecar.publishers.redis_protocol import reply_text
from market_data_sidecar.publishers.stream_copies import Original
from market_data_sidecar.publishers.stream_readers import wrong_type
from market_data_sidecar.settings import (
    FLEET_GRACE_MAX,
    FLEET_LEASE_MAX,
    RedisStreamTargetSettings,
)
from market_data_sidecar.tasks import cancelled

_SCRIPT = resources.files(__package__).joinpath("fleet.lua").read_text(encoding="utf-8")
PROCESS_TOKEN = secrets.token_hex(8)
#: Steps of this process, in order: a step the network delivers late (after a newer one)
#: is fenced by it. One counter per process, as the member is the process.
_SEQUENCE = itertools.count(1)
#: Wake this long after another member's lease ends: the server's `TIME` has passed it.
EXPIRY_MARGIN = 0.02
#: A foreign token under this member's name this recently makes the target's problem.
DUPLICATE_MEMORY_LEASES = 2.0
#: Members listed in `GET /feedback` (the worst first); the counts are always complete.
MAX_MEMBERS_SHOWN = 100
#: Member ids of the last view passed to each step: the fleet's memory when Redis forgot.
MAX_VIEW_REMEMBERED = 100
#: Seconds between two summaries of the entries no step wrote.
UNPARSABLE_LOG_INTERVAL = 60.0
#: Member state changes logged one by one per step; the rest are summed up in one line.
MAX_CHANGES_LOGGED = 5
#: A failed renewal is retried after this, doubling up to half a renewal.
RETRY_INITIAL = 0.1


@dataclass(frozen=True)
class Fleet:
    """How this sidecar takes part in the fleet."""

    instance: str
    lease: float
    renewal: float
    #: Seconds a member that stopped renewing stays suspect, counting at its last level.
    grace: float
    #: Random per process (its incarnation): a member is a process under a name, so two
    #: live processes under one name both count, and a restarted one replaces its past.
    token: str = PROCESS_TOKEN

    @property
    def member_id(self) -> str:
        return f"{self.instance}#{self.token}"


@dataclass(frozen=True)
class StepResult:
    """What one Lua step saw."""

    #: `ok`, or `fenced` (a newer step of this process was there first) or `tombstoned`
    #: (this process left): then nothing changed and nothing else is known.
    status: str
    #: The id of the stream entry this step appended, or None.
    entry_id: str | None = None
    #: Other live processes under this member's name.
    others: int = 0
    #: Seconds until the next other member's lease or grace ends (or a hold), or None.
    next_expiry: float | None = None
    members: list[MemberState] = field(default_factory=list)
    #: Members counted (live and suspect), suspects among them, their coordinators.
    counted: int = 0
    suspects: int = 0
    coordinators: int = 0
    composite: CompositeState | None = None
    #: Members this step dropped (their grace ended): at most 100 names, and the count.
    dropped: list[str] = field(default_factory=list)
    dropped_count: int = 0
    #: Entries in the members hash that no step wrote, and a few of their names.
    unparsable: int = 0
    unparsable_names: list[str] = field(default_factory=list)
    #: Seconds the hold of an unknown state still lasts at most, or None.
    holding: float | None = None
    #: Why the state was found unknown at this step ('' known).
    unknown: str = ""
    #: Processes of this name replaced (gone without leaving), index entries removed.
    replaced: int = 0
    foreign: int = 0

    @property
    def published(self) -> bool:
        return self.entry_id is not None

    @classmethod
    def parse(cls, reply: Sequence[Any]) -> StepResult:
        status = reply_text(reply[0])
        if status != "ok":
            return cls(status=status)
        (
            _,
            entry_id,
            others,
            next_ms,
            rows,
            counts,
            composite,
            dropped,
            dropped_count,
            unparsable,
            samples,
            holding_ms,
            unknown,
            replaced,
            foreign,
        ) = reply
        counted, suspects, coordinators = (int(n) for n in counts)
        return cls(
            status=status,
            entry_id=reply_text(entry_id) or None,
            others=int(others),
            next_expiry=None if int(next_ms) < 0 else int(next_ms) / 1000,
            members=[_member(row) for row in rows],
            counted=counted,
            suspects=suspects,
            coordinators=coordinators,
            composite=_composite(composite, suspects) if composite else None,
            dropped=[reply_text(name) for name in dropped],
            dropped_count=int(dropped_count),
            unparsable=max(0, int(unparsable)),
            unparsable_names=[reply_text(name) for name in samples],
            holding=None if int(holding_ms) < 0 else int(holding_ms) / 1000,
            unknown=reply_text(unknown),
            replaced=int(replaced),
            foreign=int(foreign),
        )


def member_state(feedback: Feedback) -> str:
    """This member's entry (the pod's composite) as fleet.lua reads it: the ranking, the
    Core event's JSON and hash ready for the envelope, and the headers it carries."""
    event = feedback.event
    payload = event.model_dump_json()
    composite = feedback.composite
    headers = {
        key: value
        for key, value in feedback.headers().items()
        if key in {"utilization", "reason", "origin"}
    }
    return json.dumps(
        {
            "level": event.level.value,
            "severity": severity(event.level.value),
            "utilization": feedback.utilization,
            "coordinator": event.coordinator_id,
            "coordinators": composite.coordinators if composite else 1,
            "signature": f"{event.level.value}|{event.queue_size}|{event.capacity}|"
            f"{feedback.reason}|{json.dumps(event.coordinator_id)}",
            "payload": payload,
            "hash": hashlib.sha256(payload.encode()).hexdigest(),
            "headers": headers,
        },
        separators=(",", ":"),
    )


class FleetStreamPublisher(RedisStreamPublisher):
    """Writes this pod's composite as a fleet member; the stream gets the fleet's."""

    def __init__(
        self,
        target: RedisStreamTargetSettings,
        fleet: Fleet,
        *,
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__(target, metrics=metrics)
        self.fleet = fleet
        self.max_batch = 1
        self.conflate = True
        prefix = f"{{{self.stream}}}:fleet"
        self.members_key = f"{prefix}:members"
        #: The step's keys, in fleet.lua's order, and what each must hold: a key of
        #: another type is named in the error.
        self.key_types = {
            self.members_key: "hash",
            f"{prefix}:leases": "zset",
            f"{prefix}:drops": "zset",
            f"{prefix}:rank": "zset",
            f"{prefix}:names": "zset",
            f"{prefix}:tombstones": "zset",
            f"{prefix}:record": "hash",
            f"{prefix}:awaiting": "set",
            f"{prefix}:rows": "hash",
            self.stream: "stream",
        }
        self.keys = list(self.key_types)
        self.record_key = f"{prefix}:record"
        self._script_loaded = False
        self._script: AsyncScript | None = None
        #: The pod's newest composite, as this member writes it (what renewals repeat).
        self._state: str | None = None
        self._lock = asyncio.Lock()
        self._written = False
        self._duplicate_seen_at: float | None = None
        self._no_scripting: str | None = None
        self._unparsable_logged_at: float | None = None
        self._unparsable = 0
        #: Members whose series `/metrics` holds.
        self._exported: set[str] = set()
        #: The member ids of the last view: who may be missing when Redis forgot them.
        self._view: list[str] = []
        self._suspects: dict[str, MemberState] = {}
        self._last: StepResult | None = None
        self._last_at = 0.0
        #: When this member last renewed (monotonic): its lease in Redis runs from then.
        self._renewed_at: float | None = None
        self._due: float | None = None
        self._renewal: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._failing_since: float | None = None
        self._retry_delay = 0.0
        self._last_failure = ""
        #: Renewals done (for tests and the curious: the renewal task is alive).
        self._renewals = 0
        if metrics is not None:
            metrics.fleet_renewal_age.labels(self.name).set_function(self.renewal_age)

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        await super().start()
        if self._renewal is None:
            self._renewal = asyncio.create_task(self._renew(), name=f"fleet-renewal:{self.name}")

    async def close(self) -> None:
        """Leave the fleet at once (the others' composite no longer counts this pod), then
        close the connections."""
        renewal, self._renewal = self._renewal, None
        await cancelled(renewal)
        if self._client is not None and self._state is not None:
            try:
                async with asyncio.timeout(self.target.timeout):
                    await self._step(self._client, None, force=False)
                logger.info("fleet {}: member {} left", self.stream, self.fleet.instance)
            except (RedisError, OSError) as exc:
                logger.warning(
                    "fleet {}: member {} could not leave ({}); the others count it as "
                    "suspect from the end of its lease, {:g}s, for {:g}s",
                    self.stream,
                    self.fleet.instance,
                    self._scrub(str(exc)) or type(exc).__name__,
                    self.fleet.lease,
                    self.fleet.grace,
                )
        await super().close()

    # -- delivery -------------------------------------------------------------------------

    async def _send(self, client: aioredis.Redis, batch: Sequence[Feedback]) -> None:
        """Write the pod's newest composite; a resync forces the fleet's onto the stream."""
        state = member_state(batch[-1])
        await self._step(client, state, force=any(feedback.resync for feedback in batch))
        self._wake.set()  # the renewal's deadline moves with this write

    async def _step(self, client: aioredis.Redis, state: str | None, *, force: bool) -> StepResult:
        """One Lua step, never two at once: a renewal must not overtake a newer state."""
        async with self._lock:
            if state is not None:
                # Before the step: should it fail or be cut short, the renewals still
                # carry the newest state (the router retries the delivery, too).
                self._state = state
            if self._script is None:
                self._script = client.register_script(_SCRIPT)
            inspect = self._unparsable > 0 and (
                self._unparsable_logged_at is None
                or time.monotonic() - self._unparsable_logged_at >= UNPARSABLE_LOG_INTERVAL
            )
            event_id = new_event_id()
            args = [
                self.fleet.instance,
                self.fleet.token,
                next(_SEQUENCE),
                state or "",
                int(self.fleet.lease * 1000),
                int(self.fleet.grace * 1000),
                int(self.fleet.renewal * 1000),
                "1" if force else "0",
                self._maxlen,
                event_id,
                SCHEMA_ID,
                TRACK,
                "1" if inspect else "0",
                int(FLEET_LEASE_MAX * 1000),
                int(FLEET_GRACE_MAX * 1000),
                *self._view[:MAX_VIEW_REMEMBERED],
            ]
            try:
                result = await self._step_with_copies(client, args, event_id)
            except RedisError as exc:
                self._refused(exc)
                named = await wrong_type(client, exc, self.key_types)
                if named is not None:
                    raise ResponseError(f"WRONGTYPE {named}") from exc
                raise
            if result.status == "ok":
                self._observe(result, wrote=state is not None)
            return result

    async def _step_with_copies(
        self, client: aioredis.Redis, args: list[Any], event_id: str
    ) -> StepResult:
        """The step, then its copies and the groups' reading in the same round trip: a
        composite it appends (a leave's too) reaches every waiting reader (see
        stream_copies.py)."""
        script = self._script
        assert script is not None
        if not self._script_loaded:  # so the first step carries its copies too
            await client.script_load(_SCRIPT)
            self._script_loaded = True
        step = Original(
            lambda pipe: pipe.evalsha(script.sha, len(self.keys), *self.keys, *args), event_id
        )
        sent = await self.copies.round(client, [step])
        reply = sent.originals[0]
        if isinstance(reply, NoScriptError):
            # Redis forgot the script (restarted empty): redis-py loads it and steps again;
            # the copies found nothing of this step to copy.
            reply = await script(keys=self.keys, args=args, client=client)
        elif isinstance(reply, Exception):
            raise reply
        result = StepResult.parse(reply)
        self.copies.learn_from(sent, [result.entry_id] if result.entry_id else [])
        return result

    def _refused(self, exc: RedisError) -> None:
        """A user without scripting: `fleet` scope cannot work; said once, kept as the
        target's problem."""
        if self._no_scripting is not None or classify(exc).reason != "redis_noperm":
            return
        text = self._scrub(str(exc))
        self._no_scripting = (
            f"target {self.name}: the Redis user may not run scripts (NOPERM: "
            f"{clip(text, 120)}); "
            "scope 'fleet' needs EVALSHA (see the ACL in docs/security.md), or set scope 'pod'"
        )
        logger.error("fleet {}: {}", self.stream, self._no_scripting)

    def _observe(self, result: StepResult, *, wrote: bool) -> None:
        """Record what the step saw: duplicates, suspects, unparsable entries, the fleet."""
        now = time.monotonic()
        if result.others > 0 and self._written:
            # Another live process writes under this name: two sidecars claim one instance
            # (both count; a restart of this pod replaces its past process instead).
            if self._duplicate_seen_at is None:
                logger.error(
                    "fleet {}: another sidecar writes as member {}; set a distinct "
                    "SIDECAR_INSTANCE on each",
                    self.stream,
                    self.fleet.instance,
                )
            self._duplicate_seen_at = now
        if wrote:
            self._written = True
            self._renewed_at = now
            if self._failing_since is not None:
                logger.info(
                    "fleet {}: member {} renewed again after {:.1f}s",
                    self.stream,
                    self.fleet.instance,
                    now - self._failing_since,
                )
            self._failing_since, self._retry_delay = None, 0.0
        if result.unknown and result.holding is not None:
            logger.warning(
                "fleet {}: the fleet's state may be incomplete ({}); milder composites wait "
                "until the members last seen have written again, at most {:g}s",
                self.stream,
                result.unknown,
                result.holding,
            )
        self._log_changes(result)
        self._note_unparsable(result, now)
        self._view = [f"{m.instance}#{m.process}" for m in result.members][:MAX_VIEW_REMEMBERED]
        self._last, self._last_at = result, now
        #: When another member's lease or grace ends (or a hold): the renewal wakes then.
        self._due = None if result.next_expiry is None else now + result.next_expiry
        if self._metrics is not None:
            self._export(self._metrics, result)

    def _log_changes(self, result: StepResult) -> None:
        """One line when a member becomes suspect, and one when it is dropped or renews."""
        suspects = {_key(m): m for m in result.members if m.state == "suspect"}
        present = {_key(m) for m in result.members}
        lines: list[str] = []
        for key, member in suspects.items():
            if key not in self._suspects:
                lines.append(
                    f"member {member.instance} (process {member.process}) is suspect: no "
                    f"renewal for {member.lease_age:.1f}s; its last level, {member.level}, "
                    f"counts for {self.fleet.grace:g}s more unless it renews or leaves"
                )
        gone = set(result.dropped)
        for key, member in self._suspects.items():
            if key in suspects:
                continue
            if key in present:
                lines.append(f"member {member.instance} renewed again")
            else:
                gone.add(key)
        for key in sorted(gone):
            instance, _, process = key.rpartition("#")
            lines.append(f"member {instance} (process {process}) dropped: its grace ended")
        self._suspects = suspects
        for line in lines[:MAX_CHANGES_LOGGED]:
            logger.warning("fleet {}: {}", self.stream, line)
        if len(lines) > MAX_CHANGES_LOGGED:
            logger.warning(
                "fleet {}: and {} more member changes ({} suspect, {} dropped in all)",
                self.stream,
                len(lines) - MAX_CHANGES_LOGGED,
                result.suspects,
                result.dropped_count,
            )

    def _note_unparsable(self, result: StepResult, now: float) -> None:
        """Entries no step wrote: a gauge, and one summary line per interval."""
        if self._metrics is not None and result.unparsable > self._unparsable:
            self._metrics.fleet_unparsable_members.labels(self.name).inc(
                result.unparsable - self._unparsable
            )
        self._unparsable = result.unparsable
        if result.unparsable_names:
            self._unparsable_logged_at = now
            logger.warning(
                "fleet {}: {} entries in {} were not written by a fleet step and are "
                "ignored (e.g. {}); next summary in {:g}s",
                self.stream,
                result.unparsable,
                self.members_key,
                ", ".join(ascii(name) for name in result.unparsable_names),
                UNPARSABLE_LOG_INTERVAL,
            )

    def _export(self, metrics: Metrics, result: StepResult) -> None:
        """Counts by state, each shown member's level and lease age; a member gone leaves
        the metrics."""
        metrics.fleet_members.labels(self.name).set(result.counted)
        metrics.fleet_members_by_state.labels(self.name, "live").set(
            result.counted - result.suspects
        )
        metrics.fleet_members_by_state.labels(self.name, "suspect").set(result.suspects)
        metrics.fleet_unparsable_entries.labels(self.name).set(result.unparsable)
        metrics.fleet_holding.labels(self.name).set(1 if result.holding is not None else 0)
        if result.composite is not None:
            metrics.feedback_composite_level.labels(self.name, "fleet").set(
                severity(result.composite.level)
            )
        if result.published:
            metrics.fleet_published.labels(self.name).inc()
        shown: dict[str, MemberState] = {}
        for member in self.members():
            shown.setdefault(member.instance, member)  # the worst process of a name
        for gone in self._exported - shown.keys():
            metrics.fleet_member_level.remove(self.name, gone)
            metrics.fleet_member_lease_age.remove(self.name, gone)
        for instance, member in shown.items():
            metrics.fleet_member_level.labels(self.name, instance).set(severity(member.level))
            metrics.fleet_member_lease_age.labels(self.name, instance).set(member.lease_age)
        self._exported = set(shown)

    # -- renewal --------------------------------------------------------------------------

    async def _renew(self) -> None:
        """Renew this member every `renewal` seconds, right after another member's lease
        or grace ends (the composite changes then), and soon again after a failure."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._next_wait()):
                    await self._wake.wait()
                    self._wake.clear()
                    continue
            if self._state is None or self._client is None:
                continue
            try:
                async with asyncio.timeout(self.target.timeout):
                    await self._step(self._client, self._state, force=False)
            except (RedisError, OSError) as exc:
                self._renewal_failed(exc)
            else:
                self._renewals += 1

    def _next_wait(self) -> float:
        if self._failing_since is not None:
            return self._retry_delay
        if self._due is None:
            return self.fleet.renewal
        return min(self.fleet.renewal, max(0.0, self._due - time.monotonic()) + EXPIRY_MARGIN)

    def _renewal_failed(self, exc: BaseException) -> None:
        # Retried with backoff well within the lease: a lease ends only after several
        # attempts, not after one missed renewal and the next.
        self._due = None
        self._last_failure = self._scrub(str(exc)) or type(exc).__name__
        if self._renewed_at is None:
            # No lease to keep alive yet (Redis down, or not Redis, since the start): the
            # renewal pace is enough, and a peer that is not Redis is not dialled more.
            self._retry_delay = self.fleet.renewal
        else:
            self._retry_delay = min(
                max(RETRY_INITIAL, self._retry_delay * 2), self.fleet.renewal / 2
            )
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            logger.warning(
                "fleet {}: member {} not renewed ({}); retrying with backoff up to every "
                "{:g}s; its lease ends {:.1f}s after its last renewal",
                self.stream,
                self.fleet.instance,
                self._last_failure,
                self.fleet.renewal / 2,
                self.fleet.lease,
            )

    # -- views ----------------------------------------------------------------------------

    def renewal_age(self) -> float:
        """Seconds since this member last renewed (0 before its first write)."""
        if self._renewed_at is None:
            return 0.0
        return time.monotonic() - self._renewed_at

    def stale(self) -> bool:
        """Whether this member's state in Redis is older than its lease: the fleet counts
        it as suspect, and what this sidecar knows of the fleet is as old."""
        return self._renewed_at is not None and self.renewal_age() > self.fleet.lease

    def problem(self) -> str | None:
        if self._no_scripting is not None:
            return self._no_scripting
        if self.stale():
            since = f" ({self._last_failure})" if self._last_failure else ""
            return (
                f"target {self.name}: fleet member {self.fleet.instance!r} has not renewed "
                f"for {self.renewal_age():.0f}s, longer than its {self.fleet.lease:g}s "
                f"lease{since}: the fleet counts it as suspect, and the composite shown "
                "here is stale"
            )
        seen = self._duplicate_seen_at
        if (
            seen is not None
            and time.monotonic() - seen < DUPLICATE_MEMORY_LEASES * self.fleet.lease
        ):
            return (
                f"target {self.name}: another sidecar writes as fleet member "
                f"{self.fleet.instance!r} (set a distinct SIDECAR_INSTANCE on each)"
            )
        return super().problem()  # the stream's readers

    def composite(self) -> CompositeState | None:
        if self._last is None or self._last.composite is None:
            return None
        return self._last.composite.model_copy(
            update={"age": round(time.monotonic() - self._last_at, 3), "stale": self.stale()}
        )

    def members(self) -> list[MemberState]:
        """The counted members as the last step saw them, the worst first (suspects first
        among equals), at most `MAX_MEMBERS_SHOWN`: `GET /feedback` stays bounded."""
        if self._last is None:
            return []
        since = time.monotonic() - self._last_at
        ranked = sorted(
            self._last.members,
            key=lambda m: (-severity(m.level), m.state != "suspect", m.instance, m.process),
        )[:MAX_MEMBERS_SHOWN]
        return [
            member.model_copy(update={"lease_age": round(member.lease_age + since, 3)})
            for member in ranked
        ]

    def _describe(self) -> dict[str, str]:
        details = super()._describe() | {"instance": self.fleet.instance}
        if self._last is not None:
            details["members"] = str(self._last.counted)
            details["suspects"] = str(self._last.suspects)
            if self._last.unparsable:
                details["unparsable_entries"] = str(self._last.unparsable)
        if self._renewed_at is not None:
            details["renewal_age_s"] = f"{self.renewal_age():.3f}"
        if self._failing_since is not None:
            details["renewal_failing_for_s"] = f"{time.monotonic() - self._failing_since:.1f}"
            details["renewal_error"] = self._last_failure
        return details


def _key(member: MemberState) -> str:
    return f"{member.instance}#{member.process}"


def _level(text: str) -> Level:
    """A level as the script returned it; one this version does not know counts as the
    most severe, as `severity` ranks it."""
    return cast(Level, text) if text in SEVERITY else "hard"


def _member(row: Sequence[Any]) -> MemberState:
    member, level, coordinator, coordinators, age_ms, lease_left_ms, _ = (
        reply_text(part) for part in row
    )
    instance, _, process = member.rpartition("#")
    return MemberState(
        instance=instance or member,
        process=process,
        state="suspect" if int(lease_left_ms) <= 0 else "live",
        level=_level(level),
        coordinator_id=coordinator,
        coordinators=int(coordinators),
        lease_age=int(age_ms) / 1000,
    )


def _composite(row: Sequence[Any], suspects: int) -> CompositeState:
    instance, level, coordinator, members, coordinators, payload = (
        reply_text(part) for part in row
    )
    event = json.loads(payload)
    return CompositeState(
        scope="fleet",
        level=_level(level),
        coordinator_id=coordinator,
        member=instance,
        queue_size=int(event.get("queue_size", 0)),
        capacity=int(event.get("capacity", 0)),
        members=int(members),
        coordinators=int(coordinators),
        suspects=suspects,
    )
