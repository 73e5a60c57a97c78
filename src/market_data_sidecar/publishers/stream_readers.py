"""The readers of a stream target: who consumes it and how far behind, a resync for each one
that arrives, and pending lists kept within the stream's MAXLEN.

Each reading is one Lua step (`READ`) that answers one JSON document: every group as XINFO
GROUPS tells it, the stream's last entry id and, for the first groups whose `consumers` count
is small enough to be bounded, their consumers. Redis holds the sidecar's connection for a
few microseconds per group, and the sidecar parses one string (in a thread), not tens of
thousands of RESP values on its event loop: 2,000 groups cost 100 ms of parsing a reading
that way. Readings are spaced by the groups they found (`WATCH_INTERVAL` for a few, up to
`WATCH_INTERVAL_MAX` for thousands). From them:

- **Who reads.** Per group: lag, pending entries, consumers, and how long ago its most
  recently active consumer was seen; exported as metrics, shown in `GET /feedback`, and a
  problem when no group reads the key, or when every group has left entries unread for far
  longer than the consumers' own block time. Judged by the group's last-delivered id, not
  by a consumer's `idle`: before Redis 7.2 `idle` counts from the last entry a consumer
  got, not from its last (empty) read, so a live consumer of a quiet stream looks idle.
  A group of more than `MAX_LISTED_CONSUMERS` consumers (Redis never forgets a consumer
  name) is judged from XINFO GROUPS alone, and shown as such.
- **Arrivals.** A group that appears, or whose last-delivered id moved back (recreated,
  Redis restored from a snapshot), gets the current state at once: Core's consumers join
  at `$`, so without it they would wait for the next crossing or resync. From Redis 7.2,
  where `idle` counts every read, so does a consumer seen again after an absence (a
  pipeline restarted under its fixed consumer name).
- **Bounded pending lists.** Core's `RedisStreamsBus.subscribe` never acknowledges, and
  Redis keeps a pending reference after MAXLEN trims its entry, until XACK. As the writer,
  the sidecar acknowledges in each group the references to entries already trimmed (ids
  below the stream's first entry): no one can read them again, as Redis 8.2's `DELREF`
  does on the server. A reference to an entry that still exists is never touched. Each
  call acknowledges at most `ACK_BUDGET` references across at most `SWEEP_GROUPS` groups,
  going round the groups from reading to reading, so no call holds Redis for long.

What the sidecar may not do (an ACL without XINFO or XACK) or cannot (a key that is not a
stream) is said once, in a log line and in the target's details; delivery goes on. A
reading that fails otherwise (a timeout, a reply out of bounds) is counted, logged once per
`FAILURE_LOG_INTERVAL`, and a problem once readings have failed for `FAILING_AFTER`.
Group and consumer names are the readers' own text: wherever they leave the process
(labels, log lines, views) they are clipped and escaped (`shown_name`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from loguru import logger
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import (
    InvalidResponse,
    NoPermissionError,
    RedisError,
    ResponseError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

from market_data_sidecar.feedback.state import MAX_READER_GROUPS, ReaderGroup, shown_name
from market_data_sidecar.logs import ThrottledLog
from market_data_sidecar.metrics import Metrics
from market_data_sidecar.publishers.redis_protocol import reply_text
from market_data_sidecar.tasks import cancelled

#: Seconds between two readings of a stream with a few groups: a new reader gets the
#: current state within about this.
WATCH_INTERVAL = 0.5
#: Groups one `WATCH_INTERVAL` pays for: a reading that found more waits longer.
GROUPS_PER_INTERVAL = 100
#: Longest wait between two readings, however many groups (or while readings fail).
WATCH_INTERVAL_MAX = 5.0
#: Readings failing this long make the target's `problem`.
FAILING_AFTER = 60.0
#: Seconds between two log lines about failing readings (each is counted).
FAILURE_LOG_INTERVAL = 60.0
#: Core's `RedisStreamsBus.subscribe` blocks each XREADGROUP for 2,000 ms (its `block_ms`
#: default, kept by the pipeline's `FeedbackConsumer` and the orchestrator's
#: `PulseObserver`), so Redis sees a live consumer at least this often.
CONSUMER_BLOCK = 2.0
#: A consumer unseen this long was gone: seen again, it is a restart, and gets a resync.
ABSENT_AFTER = 2 * CONSUMER_BLOCK
#: A group that has left entries unread this long has no live consumer (a live one, blocked
#: in XREADGROUP, gets each entry at once): 15 of the consumers' block times.
STALE_AFTER = 15 * CONSUMER_BLOCK
#: A group's consumers are listed only up to this many (XINFO GROUPS says how many there
#: are first): beyond, the group is judged by its position alone. Pods with generated
#: names leave a consumer name each, which Redis keeps until someone deletes it.
MAX_LISTED_CONSUMERS = 64
#: Groups read in one reading; more are counted, not judged (the reply stays bounded).
MAX_GROUPS = 5000
#: Bytes of a name Redis hands back whole; a longer one comes as its start and its SHA-1,
#: which tells it apart but cannot address it (its pending list is not swept).
MAX_NAME_BYTES = 200
#: References acknowledged per script call across all groups (Lua's `unpack` takes ~8,000):
#: XACK is O(1) per id, so a call holds Redis for about a millisecond.
ACK_BUDGET = 1000
#: Groups one sweep call visits: XPENDING of a group is O(log N), and a call stays short
#: whatever the number of groups.
SWEEP_GROUPS = 100
#: Script calls per reading: what one reading may acknowledge is bounded, and so is the
#: time it holds Redis; the rest waits for the next reading.
MAX_SWEEPS = 20
#: Groups summarised in the `feedback` component's details (`GET /feedback` shows more).
DETAIL_GROUPS = 4
#: Arrivals named in one log line; the rest are counted.
LOGGED_ARRIVALS = 5
#: Group and consumer names are shown cut to this many characters: anyone with access to
#: Redis names them, and what the sidecar shows stays bounded.
MAX_NAME = 100
#: Characters of what the sidecar cannot do here, as Redis said it.
MAX_FAULT = 400

#: One reading of stream KEYS[1], as one JSON string: `{"type": ...}` when the key is not a
#: stream (nor absent); else the id of its last entry, the number of groups, and the first
#: ARGV[4] groups as [name, whole, consumers, pending, last-delivered id, lag, consumers
#: or false]; the consumers ([name, idle ms, inactive ms or false]) of each of the first
#: ARGV[1] groups that has at most ARGV[2] of them. Names longer than ARGV[3] bytes are cut
#: and suffixed with their SHA-1 (`whole` false).
READ = """
local kind = redis.call('TYPE', KEYS[1]).ok
if kind ~= 'stream' then return cjson.encode({type = kind}) end
local listed, most = tonumber(ARGV[1]), tonumber(ARGV[2])
local longest, limit = tonumber(ARGV[3]), tonumber(ARGV[4])
local encode, sub, concat = cjson.encode, string.sub, table.concat
local function named(text)
  if #text <= longest then return encode(text), 'true' end
  return encode(sub(text, 1, longest) .. '~' .. redis.sha1hex(text)), 'false'
end
local function fields(raw)
  local map = {}
  for j = 1, #raw, 2 do map[raw[j]] = raw[j + 1] end
  return map
end
local function consumers(group)
  local rows = {}
  for k, raw in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], group)) do
    local c = fields(raw)
    local inactive = tostring(c['inactive'] or false)
    rows[k] = '[' .. (named(c['name'])) .. ',' .. c['idle'] .. ',' .. inactive .. ']'
  end
  return '[' .. concat(rows, ',') .. ']'
end
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local infos = redis.call('XINFO', 'GROUPS', KEYS[1])
local rows = {}
for i = 1, math.min(#infos, limit) do
  -- Built as text, fields by position where Redis puts them: thousands of groups cost
  -- Redis a few microseconds each.
  local g = infos[i]
  if g[1] ~= 'name' or g[3] ~= 'consumers' or g[5] ~= 'pending'
     or g[7] ~= 'last-delivered-id' then
    local map = fields(g)
    g = {'name', map['name'], 'consumers', map['consumers'], 'pending', map['pending'],
         'last-delivered-id', map['last-delivered-id'], '', false, 'lag', map['lag']}
  end
  local name, whole = named(g[2])
  local members = 'false'
  if i <= listed and g[4] <= most then members = consumers(g[2]) end
  rows[i] = '[' .. name .. ',' .. whole .. ',' .. g[4] .. ',' .. g[6] .. ',"' .. g[8] .. '",' ..
            tostring(g[11] == 'lag' and g[12] or false) .. ',' .. members .. ']'
end
local top = 'false'
if #last > 0 then top = '"' .. last[1][1] .. '"' end
return '{"type":"stream","last":' .. top .. ',"total":' .. #infos .. ',"groups":[' ..
       concat(rows, ',') .. ']}'
"""

#: Acknowledge, in the groups ARGV[2..] of stream KEYS[1], at most ARGV[1] pending
#: references in all to entries trimming removed: ids below the first entry, or every id
#: when the stream is empty. Atomic, so an entry cannot be added or trimmed between the
#: bound and the XACK. A group that no longer exists is passed over. Returns {acknowledged,
#: groups done}: a group whose references outlast the budget is not done.
SWEEP = """
if redis.call('TYPE', KEYS[1]).ok ~= 'stream' then return {0, #ARGV - 1} end
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
local upper = '+'
if #first > 0 then upper = '(' .. first[1][1] end
local budget = tonumber(ARGV[1])
local acked = 0
for i = 2, #ARGV do
  local refs = redis.pcall('XPENDING', KEYS[1], ARGV[i], '-', upper, budget - acked)
  if type(refs) == 'table' and refs.err then
    if string.sub(refs.err, 1, 7) ~= 'NOGROUP' then return redis.error_reply(refs.err) end
  elseif #refs > 0 then
    local ids = {}
    for j, ref in ipairs(refs) do ids[j] = ref[1] end
    acked = acked + redis.call('XACK', KEYS[1], ARGV[i], unpack(ids))
    if acked >= budget then return {acked, i - 2} end
  end
end
return {acked, #ARGV - 1}
"""

StreamId = tuple[int, int]


@dataclass(frozen=True)
class Consumer:
    name: str
    idle_seconds: float


@dataclass(frozen=True)
class Group:
    """One group as read: XINFO GROUPS, and its consumers when they were listed."""

    name: str
    consumers: int
    pending: int
    lag: int | None
    last_delivered: StreamId
    members: tuple[Consumer, ...] = ()
    #: Whether `idle` counts every read (Redis >= 7.2, which adds `inactive`).
    seen_on_read: bool = False
    #: Seconds entries have waited for the group without its last-delivered id moving.
    unread_for: float = 0.0
    #: Whether its consumers were listed (a few, among the first groups): if not, nothing
    #: is known of them but their number.
    listed: bool = True
    #: Whether `name` is the group's whole name (a longer one is cut and hashed).
    whole: bool = True

    @property
    def idle_seconds(self) -> float | None:
        """Since its most recently active consumer was seen; None without consumers (or
        when they were not listed)."""
        return min((member.idle_seconds for member in self.members), default=None)

    def shown(self) -> ReaderGroup:
        return ReaderGroup(
            group=group_name(self.name),
            consumers=self.consumers,
            pending=self.pending,
            lag=self.lag,
            idle_seconds=self.idle_seconds,
            consumers_listed=self.listed,
        )


@dataclass(frozen=True)
class Reading:
    """What one `READ` found: the key's type, its groups and its last entry."""

    kind: str
    groups: list[Group]
    last_entry: StreamId = (0, 0)
    #: Groups on the key, read or not (at most `MAX_GROUPS` are read).
    total: int = 0


class Faults:
    """What one part of a stream target cannot do, by kind, in Redis's own words (bounded
    like any text from outside): logged once when it starts and once when it ends."""

    def __init__(
        self, target: str, key: str, *, part: str = "", then: str = "", limit: int = MAX_FAULT
    ) -> None:
        self._target, self._key = target, key
        #: How the part is named when it can again, and what follows while it cannot.
        self._part, self._then, self._limit = part, then, limit
        self.texts: dict[str, str] = {}

    def __contains__(self, kind: str) -> bool:
        return kind in self.texts

    def __bool__(self) -> bool:
        return bool(self.texts)

    def set(self, kind: str, text: str | None) -> None:
        """`kind` cannot be done, said as `text`; or, with None, can be again."""
        if text is not None:
            text = shown_name(text, self._limit) or ""
        if text == self.texts.get(kind):
            return
        if text is None:
            del self.texts[kind]
            logger.info(
                "stream target {} ({}): {}can {} again", self._target, self._key, self._part, kind
            )
            return
        self.texts[kind] = text
        logger.warning("stream target {}: {}{}", self._target, text, self._then)


class StreamReaders:
    """Watches one stream key's consumer groups for its publisher (a task of its own)."""

    def __init__(
        self,
        target: str,
        key: str,
        *,
        on_arrival: Callable[[], None],
        timeout: float,
        metrics: Metrics | None = None,
        interval: float = WATCH_INTERVAL,
        stale_after: float = STALE_AFTER,
        failing_after: float = FAILING_AFTER,
    ) -> None:
        self.target = target
        self.key = key
        self._on_arrival = on_arrival
        self._timeout = timeout
        self._metrics = metrics
        self._interval = interval
        self._stale_after = stale_after
        self._failing_after = failing_after
        #: Per group waiting for entries: its last-delivered id, and since when (monotonic).
        self._waiting: dict[str, tuple[StreamId, float]] = {}
        self._task: asyncio.Task[None] | None = None
        #: The latest reading; None before the first, or when the last one failed.
        self._groups: list[Group] | None = None
        self._total = 0
        #: Groups by name with their last-delivered id, and consumers' idle times, as last
        #: read: what an arrival is judged against (kept through failed readings).
        self._seen: dict[str, StreamId] | None = None
        self._idle: dict[tuple[str, str], float] = {}
        #: What the sidecar cannot do here ("see", "bound"), as Redis said it.
        self._faults = Faults(target, key)
        self._labelled: set[str] = set()
        #: Since when readings fail (monotonic), and the last failure in words.
        self._failing_since: float | None = None
        self._failure: str | None = None
        self._failure_log = ThrottledLog(FAILURE_LOG_INTERVAL)
        #: Where the sweep goes on: the next group (by name) to visit.
        self._sweep_from = 0
        #: Readings completed (with their sweep): what a caller can wait on.
        self.readings = 0

    def start(self, client: aioredis.Redis) -> None:
        if self._task is None:
            self._task = asyncio.create_task(
                self._watch(client), name=f"stream-readers:{self.target}"
            )

    async def close(self) -> None:
        task, self._task = self._task, None
        await cancelled(task)

    async def _watch(self, client: aioredis.Redis) -> None:
        read = client.register_script(READ)
        sweep = client.register_script(SWEEP)
        delay = self._interval
        while True:
            try:
                async with asyncio.timeout(self._timeout):
                    await self.read(read)
                    await self._sweep(sweep)
                self.readings += 1
                self._recovered()
                delay = self._spacing()
            except (RedisError, OSError, ValueError) as exc:
                # Unreachable, slow, or not the Redis it should be: counted, said once per
                # interval, a problem after `failing_after`; keep what was seen. Back off,
                # so a peer that is down or not Redis costs a connection every few seconds
                # at most (a Redis restarted meanwhile is seen by its new run_id, and
                # resynced, whatever this loop's delay).
                self._groups = None
                self._failed(exc)
                delay = min(max(delay, self._interval) * 2, WATCH_INTERVAL_MAX)
            await asyncio.sleep(delay)

    def _spacing(self) -> float:
        """The wait after a reading: longer the more groups it found, within bounds."""
        groups = self._total
        return min(self._interval * max(1.0, groups / GROUPS_PER_INTERVAL), WATCH_INTERVAL_MAX)

    # -- reading -------------------------------------------------------------------------------

    async def read(self, script: AsyncScript) -> None:
        """One reading (`READ`, registered once by the watch): groups and their consumers,
        then arrivals and metrics."""
        args = [MAX_READER_GROUPS, MAX_LISTED_CONSUMERS, MAX_NAME_BYTES, MAX_GROUPS]
        try:
            raw = await script(keys=[self.key], args=args)
        except ResponseError as exc:
            if isinstance(exc, NoPermissionError) or "can't run this command" in str(exc):
                self._cannot_see(f"cannot see the readers of {self.key} (XINFO): {exc}")
                return
            raise
        # Thousands of groups are a few hundred KiB of JSON: parsed off the event loop.
        reading = await asyncio.to_thread(_reading, reply_text(raw))
        if reading.kind not in ("stream", "none"):
            wrong = wrong_kind(self.key, reading.kind)
            self._cannot_see(f"cannot see the readers: {wrong}")
            return
        self._faults.set("see", None)
        groups = self._unread(reading.groups, reading.last_entry)
        self._arrivals(groups)
        self._groups, self._total = groups, reading.total
        self._export(groups)

    def _cannot_see(self, text: str) -> None:
        self._faults.set("see", text)
        self._groups = None

    def _unread(self, groups: list[Group], last_entry: StreamId) -> list[Group]:
        """Each group with how long entries have waited for it while it did not move."""
        now = time.monotonic()
        waiting: dict[str, tuple[StreamId, float]] = {}
        judged = []
        for group in groups:
            behind = group.lag > 0 if group.lag is not None else group.last_delivered < last_entry
            if not behind:
                judged.append(group)
                continue
            since = self._waiting.get(group.name)
            if since is None or since[0] != group.last_delivered:
                since = (group.last_delivered, now)
            waiting[group.name] = since
            judged.append(dataclasses.replace(group, unread_for=now - since[1]))
        self._waiting = waiting
        return judged

    def _arrivals(self, groups: list[Group]) -> None:
        """Resync when a reader arrived since the last reading (not at the first one: the
        relay has nothing to send yet, and the readers already there got what it sent)."""
        seen = {group.name: group.last_delivered for group in groups}
        idle = {
            (group.name, member.name): member.idle_seconds
            for group in groups
            if group.seen_on_read
            for member in group.members
        }
        # A group whose consumers were listed last time and not now (it grew) keeps its
        # consumers' times: listing them again later is not an arrival.
        listed_now = {group.name for group in groups if group.listed}
        idle |= {
            key: value
            for key, value in self._idle.items()
            if key[0] in seen and key[0] not in listed_now
        }
        arrived = [] if self._seen is None else _arrived(self._seen, seen, self._idle, idle)
        self._seen, self._idle = seen, idle
        if arrived:
            named = ", ".join(arrived[:LOGGED_ARRIVALS])
            more = len(arrived) - LOGGED_ARRIVALS
            logger.info(
                "stream target {} ({}): {}{}: resyncing",
                self.target,
                self.key,
                named,
                f" and {more} more" if more > 0 else "",
            )
            if self._metrics is not None:
                self._metrics.stream_reader_arrivals.labels(self.target).inc(len(arrived))
            self._on_arrival()

    async def _sweep(self, sweep: AsyncScript) -> None:
        """Acknowledge references to trimmed entries (see `SWEEP`), going round the groups
        that hold references, at most `ACK_BUDGET` a call and `MAX_SWEEPS` calls a reading."""
        names = [g.name for g in self._groups or () if g.pending and g.whole]
        if not names:
            return
        start = self._sweep_from % len(names)
        order = names[start:] + names[:start]
        done = 0
        for _ in range(MAX_SWEEPS):
            chunk = order[done : done + SWEEP_GROUPS]
            if not chunk:
                break
            try:
                acked, visited = await sweep(keys=[self.key], args=[ACK_BUDGET, *chunk])
            except ResponseError as exc:
                what = f"the pending lists of {self.key} (XACK of trimmed entries)"
                self._faults.set("bound", f"cannot bound {what}: {exc}")
                return
            self._faults.set("bound", None)
            if acked and self._metrics is not None:
                self._metrics.stream_trimmed_acked.labels(self.target).inc(int(acked))
            done += int(visited)
        self._sweep_from = (start + done) % len(names)

    def _failed(self, exc: BaseException) -> None:
        """A reading that failed: counted, logged once per interval with the count."""
        reason = failure_reason(exc)
        detail = shown_name(str(exc), 200) or type(exc).__name__
        self._failure = f"{reason}: {detail}"
        if self._failing_since is None:
            self._failing_since = time.monotonic()
        if self._metrics is not None:
            self._metrics.stream_reader_failures.labels(self.target, reason).inc()
        if count := self._failure_log.note("failed"):
            logger.warning(
                "stream target {} ({}): reading its readers failed ({}); {} since the last "
                "such line",
                self.target,
                self.key,
                self._failure,
                count,
            )

    def _recovered(self) -> None:
        if self._failing_since is not None:
            logger.info("stream target {} ({}): its readers are read again", self.target, self.key)
        self._failing_since, self._failure = None, None

    def _export(self, groups: list[Group]) -> None:
        if self._metrics is None:
            return
        m = self._metrics
        families = (m.stream_group_lag, m.stream_group_pending, m.stream_group_consumers)
        labelled: set[str] = set()
        for group in groups[:MAX_READER_GROUPS]:
            label = group_name(group.name)
            labelled.add(label)
            m.stream_group_pending.labels(self.target, label).set(group.pending)
            m.stream_group_consumers.labels(self.target, label).set(group.consumers)
            _set_or_remove(m.stream_group_lag, self.target, label, group.lag)
            _set_or_remove(m.stream_group_idle, self.target, label, group.idle_seconds)
        for gone in self._labelled - labelled:
            for family in (*families, m.stream_group_idle):
                with contextlib.suppress(KeyError):
                    family.remove(self.target, gone)
        self._labelled = labelled

    # -- what the publisher reports ------------------------------------------------------------

    def readers(self) -> list[ReaderGroup] | None:
        if self._groups is None:
            return None
        return [group.shown() for group in self._groups[:MAX_READER_GROUPS]]

    def problem(self) -> str | None:
        """Nobody reads the stream: no group, or every group has left entries unread for
        `stale_after` seconds; or its readers could not be read for `failing_after`."""
        if self._failing_since is not None:
            failing = time.monotonic() - self._failing_since
            if failing >= self._failing_after:
                return (
                    f"target {self.target}: the readers of stream {self.key} could not be "
                    f"read for {failing:.0f}s ({self._failure})"
                )
        if self._groups is None:
            return None
        if not self._groups:
            return f"target {self.target}: no consumer group reads stream {self.key}"
        unread = [group.unread_for for group in self._groups]
        if min(unread) > self._stale_after:
            return (
                f"target {self.target}: nobody reads stream {self.key}: no group has "
                f"read for {min(unread):.0f}s (consumers block {CONSUMER_BLOCK:g}s per read)"
            )
        return None

    def details(self) -> dict[str, str]:
        """Compact: a few groups in one line, and what the sidecar cannot see or bound."""
        details: dict[str, str] = {}
        if self._groups is not None:
            details["readers"] = _summary(self._groups, self._total)
        if "see" in self._faults:
            details["readers_error"] = self._faults.texts["see"]
        if "bound" in self._faults:
            details["pending_error"] = self._faults.texts["bound"]
        if self._failure is not None:
            details["readers_failing"] = self._failure
        return details


def wrong_kind(key: str, kind: str, expected: str = "stream") -> str:
    """`key mdp:x is a string, not a stream`: the key named, and what Redis holds there."""
    return f"key {shown_name(key, MAX_NAME)} is a {shown_name(kind, 20)}, not a {expected}"


async def wrong_type(
    client: aioredis.Redis, exc: BaseException, expected: Mapping[str, str]
) -> str | None:
    """For a WRONGTYPE error (a command's, or one raised inside a Lua step, where Redis
    names a script line, not a key): which of the `expected` keys (key -> type) holds
    another type, in words (`key mdp:x:fleet:members is a string, not a hash`), asked of
    Redis with TYPE. None for any other error, or when every key is as expected now."""
    if not isinstance(exc, ResponseError) or "WRONGTYPE" not in str(exc):
        return None
    for key, kind in expected.items():
        found = reply_text(await client.type(key))
        if found not in (kind, "none"):
            return wrong_kind(key, found, kind)
    return None


def failure_reason(exc: BaseException) -> str:
    """A failed reading in one word, for the metric's `reason` label."""
    if isinstance(exc, RedisTimeoutError | TimeoutError):
        return "timeout"
    if isinstance(exc, InvalidResponse | ValueError):
        return "protocol"
    if isinstance(exc, RedisConnectionError | OSError):
        return "connection"
    if isinstance(exc, ResponseError):
        return "redis_error"
    return "error"


def _arrived(
    before: Mapping[str, StreamId],
    now: Mapping[str, StreamId],
    idle_before: Mapping[tuple[str, str], float],
    idle_now: Mapping[tuple[str, str], float],
) -> list[str]:
    """What arrived between two readings, in words for the log (names clipped)."""
    arrived = [f"group {group_name(name)} appeared" for name in now if name not in before]
    arrived += [
        f"group {group_name(name)} went back"
        for name, last in now.items()
        if last < before.get(name, last)
    ]
    for (group, consumer), idle in idle_now.items():
        previous = idle_before.get((group, consumer))
        if group in before and previous is None:
            arrived.append(f"consumer {group_name(consumer)} joined group {group_name(group)}")
        elif previous is not None and previous >= ABSENT_AFTER and idle < previous:
            # Only where `idle` counts every read (see `_arrivals`): before Redis 7.2 it
            # counts from the last entry received, and would drop at every entry.
            arrived.append(f"consumer {group_name(consumer)} of group {group_name(group)} is back")
    return arrived


def group_name(text: str) -> str:
    """A group or consumer name as every view, label and log line shows it."""
    return shown_name(text, MAX_NAME) or ""


def _reading(text: str) -> Reading:
    """The JSON `READ` answers, as groups (run in a thread: it may be large)."""
    document = json.loads(text)
    if not isinstance(document, dict):
        raise ValueError("the readers' reading is not a JSON object")
    kind = str(document.get("type"))
    if kind != "stream":
        return Reading(kind, [])
    rows = document.get("groups") or []  # Lua's cjson writes an empty list as {}
    groups = [_group(row) for row in rows if isinstance(row, list) and len(row) >= 7]
    last = document.get("last")
    last_entry = stream_id(last) if isinstance(last, str) else (0, 0)
    return Reading(kind, groups, last_entry, int(document.get("total") or len(groups)))


def _group(row: Sequence[Any]) -> Group:
    name, whole, consumers, pending, last_delivered, lag, members = row[:7]
    group = Group(
        name=str(name),
        consumers=_count(consumers),
        pending=_count(pending),
        lag=int(lag) if isinstance(lag, int | float) and not isinstance(lag, bool) else None,
        last_delivered=stream_id(last_delivered),
        listed=members is not False,
        whole=whole is not False,
    )
    if members is False:
        return group
    listed = [item for item in members or [] if isinstance(item, list) and len(item) >= 3]
    return dataclasses.replace(
        group,
        members=tuple(Consumer(str(item[0]), _count(item[1]) / 1000) for item in listed),
        seen_on_read=any(item[2] is not False for item in listed),
    )


def _count(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _summary(groups: list[Group], total: int) -> str:
    if not groups:
        return "none"
    parts = []
    for group in groups[:DETAIL_GROUPS]:
        idle = group.idle_seconds
        if not group.listed:
            seen = f"{group.consumers} consumers, not listed"
        else:
            seen = "no consumer" if idle is None else f"seen {idle:.1f}s ago"
        lag = "?" if group.lag is None else str(group.lag)
        unread = f", unread {group.unread_for:.0f}s" if group.unread_for >= 1 else ""
        parts.append(
            f"{group_name(group.name)} (lag {lag}, pending {group.pending}, {seen}{unread})"
        )
    more = max(total, len(groups)) - DETAIL_GROUPS
    if more > 0:
        parts.append(f"+{more} more")
    return "; ".join(parts)


def _set_or_remove(family: Any, target: str, group: str, value: float | None) -> None:
    if value is not None:
        family.labels(target, group).set(value)
    else:
        with contextlib.suppress(KeyError):
            family.remove(target, group)


def stream_id(value: Any) -> StreamId:
    """`1700000000000-3` as (1700000000000, 3); (0, 0) for anything else."""
    milliseconds, _, sequence = reply_text(value).partition("-")
    try:
        return int(milliseconds), int(sequence or 0)
    except ValueError:
        return 0, 0
