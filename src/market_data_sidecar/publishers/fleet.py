"""A stream target in `fleet` scope: this sidecar is one member of the replicas writing
the key, and the stream carries the worst state of them all.

Each member keeps its pod's composite in a hash beside the stream (`{key}:fleet:members`)
under a lease renewed every `renewal` seconds. One Lua step (fleet.lua) writes the
member, drops expired members, computes the fleet's composite and appends it only when
it differs from the last one published (`{key}:fleet:last`), so replicas writing at once
can never publish out of order: Redis runs the steps one at a time. Lease expiry uses
the server's clock (`TIME`), so the pods' clocks do not matter. This is the pattern of
Sidekiq's process heartbeats and gRPC's ORCA weights; no consensus of our own.

The member's renewal task also wakes when another member's lease ends, so a replica
that was SIGKILLed stops counting at most a few milliseconds after its lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, cast

import redis.asyncio as aioredis
from loguru import logger
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisError

from market_data_sidecar.feedback.model import Feedback, new_event_id
from market_data_sidecar.feedback.scope import SEVERITY, severity
from market_data_sidecar.feedback.state import CompositeState, Level, MemberState
from market_data_sidecar.metrics import Metrics
from market_data_sidecar.publishers.redis import SCHEMA_ID, TRACK, RedisStreamPublisher
from market_data_sidecar.publishers.redis_protocol import reply_text
from market_data_sidecar.settings import RedisStreamTargetSettings

_SCRIPT = resources.files(__package__).joinpath("fleet.lua").read_text(encoding="utf-8")
PROCESS_TOKEN = secrets.token_hex(8)
#: Wake this long after another member's lease ends: the server's `TIME` has passed it.
EXPIRY_MARGIN = 0.02
#: A foreign token under this member's name this recently makes the target's problem.
DUPLICATE_MEMORY_LEASES = 2.0
#: Members listed in `GET /feedback` (the worst first); the count is always complete.
MAX_MEMBERS_SHOWN = 100
#: Unparsable members reported by name; beyond this many each is counted every step.
MAX_UNPARSABLE_REMEMBERED = 1000


@dataclass(frozen=True)
class Fleet:
    """How this sidecar takes part in the fleet."""

    instance: str
    lease: float
    renewal: float
    #: Random per process (its incarnation): tells this process's entry from another's
    #: under one name; two targets of one process writing one key are one member.
    token: str = PROCESS_TOKEN


@dataclass(frozen=True)
class StepResult:
    """What one Lua step saw."""

    published: bool
    #: The token found under this member's name before the write ('' none).
    found: str
    #: Seconds until the next other member's lease ends, or None.
    next_expiry: float | None
    unparsable: list[str]
    members: list[MemberState]
    composite: CompositeState | None
    #: The id of the entry the step appended (None: nothing appended).
    entry_id: str | None = None

    @classmethod
    def parse(cls, reply: Sequence[Any]) -> StepResult:
        published, found, next_expiry, unparsable, view, composite, entry = reply
        return cls(
            entry_id=reply_text(entry) or None,
            published=bool(published),
            found=reply_text(found),
            next_expiry=None if int(next_expiry) < 0 else int(next_expiry) / 1000,
            unparsable=[reply_text(name) for name in unparsable],
            members=[_member(row) for row in view],
            composite=_composite(composite) if composite else None,
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
        self.members_key = f"{self.stream}:fleet:members"
        self.last_key = f"{self.stream}:fleet:last"
        self.hold_key = f"{self.stream}:fleet:hold"
        self._script: AsyncScript | None = None
        #: The pod's newest composite, as this member writes it (what renewals repeat).
        self._state: str | None = None
        self._lock = asyncio.Lock()
        self._written = False
        self._duplicate_seen_at: float | None = None
        self._unparsable_reported: set[str] = set()
        #: Members whose series `/metrics` holds.
        self._exported: set[str] = set()
        self._last: StepResult | None = None
        self._last_at = 0.0
        self._due: float | None = None
        self._renewal: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._renewal_failing = False
        #: Renewals done (for tests and the curious: the renewal task is alive).
        self._renewals = 0

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        await super().start()
        if self._renewal is None:
            self._renewal = asyncio.create_task(self._renew(), name=f"fleet-renewal:{self.name}")

    async def close(self) -> None:
        """Leave the fleet at once (the others' composite no longer counts this pod), then
        close the connections."""
        renewal, self._renewal = self._renewal, None
        if renewal is not None:
            renewal.cancel()
            await asyncio.gather(renewal, return_exceptions=True)
        if self._client is not None and self._state is not None:
            try:
                async with asyncio.timeout(self.target.timeout):
                    await self._step(self._client, None, force=False)
                logger.info("fleet {}: member {} left", self.stream, self.fleet.instance)
            except (RedisError, OSError) as exc:
                logger.warning(
                    "fleet {}: member {} could not leave ({}); its lease ends in {:g}s",
                    self.stream,
                    self.fleet.instance,
                    self._scrub(str(exc)) or type(exc).__name__,
                    self.fleet.lease,
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
                await client.script_load(_SCRIPT)
            event_id = new_event_id()
            args = [
                self.fleet.instance,
                state or "",
                int(self.fleet.lease * 1000),
                self.fleet.token,
                "1" if force else "0",
                self._maxlen,
                event_id,
                SCHEMA_ID,
                TRACK,
                int(self.fleet.renewal * 1000),
            ]
            keys = [self.members_key, self.last_key, self.stream, self.hold_key]
            result = await self._step_with_copies(client, keys, args, event_id)
            self._observe(result, wrote=state is not None)
            return result

    async def _step_with_copies(
        self, client: aioredis.Redis, keys: list[str], args: list[Any], event_id: str
    ) -> StepResult:
        """The step, then its copies and the groups' reading in the same round trip: a
        composite it appends (a leave's too) reaches every waiting reader (see
        stream_copies.py)."""
        assert self._script is not None
        await self.copies.prepare(client)
        async with client.pipeline(transaction=False) as pipe:
            pipe.evalsha(self._script.sha, len(keys), *keys, *args)
            self.copies.queue(pipe, event_id, self.copies.entries() - 1)
            reading = self.copies.reading
            if reading:
                self.copies.queue_reading(pipe)
            step, *rest = await pipe.execute(raise_on_error=False)
        if isinstance(step, NoScriptError):
            # Redis forgot the script (restarted): load it, step again without copies.
            return StepResult.parse(await self._script(keys=keys, args=args, client=client))
        if isinstance(step, Exception):
            raise step
        result = StepResult.parse(step)
        if reading:
            originals = [result.entry_id] if result.entry_id else []
            self.copies.observe(rest[:-1], rest[-1], originals)
        return result

    def _observe(self, result: StepResult, *, wrote: bool) -> None:
        """Record what the step saw: duplicates, unparsable members, the fleet."""
        if result.found not in ("", self.fleet.token) and (self._written or not wrote):
            # Another process wrote under this name since this one did: two sidecars
            # claim one instance (a restart of this pod finds the old token only once).
            if self._duplicate_seen_at is None:
                logger.error(
                    "fleet {}: another sidecar writes as member {}; set a distinct "
                    "SIDECAR_INSTANCE on each",
                    self.stream,
                    self.fleet.instance,
                )
            self._duplicate_seen_at = time.monotonic()
        self._written = self._written or wrote
        for name in result.unparsable:
            if name in self._unparsable_reported:
                continue
            if len(self._unparsable_reported) < MAX_UNPARSABLE_REMEMBERED:
                self._unparsable_reported.add(name)
            if self._metrics is not None:
                self._metrics.fleet_unparsable_members.labels(self.name).inc()
            logger.warning(
                "fleet {}: member {} has a state this version cannot read; ignored",
                self.stream,
                ascii(name),
            )
        self._last, self._last_at = result, time.monotonic()
        #: When another member's lease ends (or a hold): the renewal wakes then.
        self._due = None if result.next_expiry is None else self._last_at + result.next_expiry
        if self._metrics is not None:
            self._export_members(self._metrics)
            self._metrics.fleet_members.labels(self.name).set(len(result.members))
            if result.composite is not None:
                self._metrics.feedback_composite_level.labels(self.name, "fleet").set(
                    severity(result.composite.level)
                )
            if result.published:
                self._metrics.fleet_published.labels(self.name).inc()

    def _export_members(self, metrics: Metrics) -> None:
        """Each shown member's level and lease age; a member gone leaves the metrics."""
        shown = {member.instance: member for member in self.members()}
        for gone in self._exported - shown.keys():
            metrics.fleet_member_level.remove(self.name, gone)
            metrics.fleet_member_lease_age.remove(self.name, gone)
        for instance, member in shown.items():
            metrics.fleet_member_level.labels(self.name, instance).set(severity(member.level))
            metrics.fleet_member_lease_age.labels(self.name, instance).set(member.lease_age)
        self._exported = set(shown)

    # -- renewal --------------------------------------------------------------------------

    async def _renew(self) -> None:
        """Renew this member every `renewal` seconds, and right after another member's
        lease ends (its composite no longer counts: the new one is published then)."""
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
                if self._renewal_failing:
                    logger.info(
                        "fleet {}: member {} renewed again", self.stream, self.fleet.instance
                    )
                self._renewal_failing = False

    def _next_wait(self) -> float:
        if self._due is None:
            return self.fleet.renewal
        return min(self.fleet.renewal, max(0.0, self._due - time.monotonic()) + EXPIRY_MARGIN)

    def _renewal_failed(self, exc: BaseException) -> None:
        # Retry at the renewal pace, not at a lease end long past (Redis is down).
        self._due = None
        if not self._renewal_failing:
            logger.warning(
                "fleet {}: member {} not renewed ({}); retrying every {:g}s",
                self.stream,
                self.fleet.instance,
                self._scrub(str(exc)) or type(exc).__name__,
                self.fleet.renewal,
            )
        self._renewal_failing = True

    # -- views ----------------------------------------------------------------------------

    def problem(self) -> str | None:
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
        return self._last.composite if self._last is not None else None

    def members(self) -> list[MemberState]:
        """The live members as the last step saw them, the worst first, at most
        `MAX_MEMBERS_SHOWN` (the answer of `GET /feedback` stays bounded)."""
        if self._last is None:
            return []
        since = time.monotonic() - self._last_at
        ranked = sorted(self._last.members, key=lambda m: (-severity(m.level), m.instance))[
            :MAX_MEMBERS_SHOWN
        ]
        return [
            member.model_copy(update={"lease_age": member.lease_age + since}) for member in ranked
        ]

    def _describe(self) -> dict[str, str]:
        details = super()._describe() | {"instance": self.fleet.instance}
        if self._last is not None:
            details["members"] = str(len(self._last.members))
        return details


def _level(text: str) -> Level:
    """A level as the script returned it; one this version does not know counts as the
    most severe, as `severity` ranks it."""
    return cast(Level, text) if text in SEVERITY else "hard"


def _member(row: Sequence[Any]) -> MemberState:
    instance, level, coordinator, coordinators, age_ms = (reply_text(part) for part in row)
    return MemberState(
        instance=instance,
        level=_level(level),
        coordinator_id=coordinator,
        coordinators=int(coordinators),
        lease_age=int(age_ms) / 1000,
    )


def _composite(row: Sequence[Any]) -> CompositeState:
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
    )
