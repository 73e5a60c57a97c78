"""The readers of a stream target: who consumes it and how far behind, a resync for each one
that arrives, and pending lists kept within the stream's MAXLEN.

Every `WATCH_INTERVAL` the stream's writer reads XINFO GROUPS and, for each group, XINFO
CONSUMERS (two round trips, a few hundred bytes). From them:

- **Who reads.** Per group: lag, pending entries, consumers, and how long ago its most
  recently active consumer was seen; exported as metrics, shown in `GET /feedback`, and a
  problem when no group reads the key, or when every group has left entries unread for far
  longer than the consumers' own block time. Judged by the group's last-delivered id, not
  by a consumer's `idle`: before Redis 7.2 `idle` counts from the last entry a consumer
  got, not from its last (empty) read, so a live consumer of a quiet stream looks idle.
- **Arrivals.** A group that appears, or whose last-delivered id moved back (recreated,
  Redis restored from a snapshot), gets the current state at once: Core's consumers join
  at `$`, so without it they would wait for the next crossing or resync. From Redis 7.2,
  where `idle` counts every read, so does a consumer seen again after an absence (a
  pipeline restarted under its fixed consumer name).
- **Bounded pending lists.** Core's `RedisStreamsBus.subscribe` never acknowledges, and
  Redis keeps a pending reference after MAXLEN trims its entry, until XACK. As the writer,
  the sidecar acknowledges in each group the references to entries already trimmed (ids
  below the stream's first entry): no one can read them again, as Redis 8.2's `DELREF`
  does on the server. A reference to an entry that still exists is never touched.

What the sidecar may not do (an ACL without XINFO or XACK) or cannot (a key that is not a
stream) is said once, in a log line and in the target's details; delivery goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from loguru import logger
from redis.exceptions import RedisError, ResponseError

from market_data_sidecar.feedback.state import MAX_READER_GROUPS, ReaderGroup, clip
from market_data_sidecar.metrics import Metrics
from market_data_sidecar.publishers.redis_protocol import reply_text

#: Seconds between two readings: a new reader gets the current state within about this.
WATCH_INTERVAL = 0.5
#: Longest wait between two readings while they fail.
FAILING_INTERVAL_MAX = 5.0
#: Core's `RedisStreamsBus.subscribe` blocks each XREADGROUP for 2,000 ms (its `block_ms`
#: default, kept by the pipeline's `FeedbackConsumer` and the orchestrator's
#: `PulseObserver`), so Redis sees a live consumer at least this often.
CONSUMER_BLOCK = 2.0
#: A consumer unseen this long was gone: seen again, it is a restart, and gets a resync.
ABSENT_AFTER = 2 * CONSUMER_BLOCK
#: A group that has left entries unread this long has no live consumer (a live one, blocked
#: in XREADGROUP, gets each entry at once): 15 of the consumers' block times.
STALE_AFTER = 15 * CONSUMER_BLOCK
#: References acknowledged per group per script call (Lua's `unpack` takes ~8,000).
ACK_BATCH = 1000
#: Script calls per reading: what one reading may acknowledge is bounded, and so is the
#: time it holds Redis; the rest waits for the next reading.
MAX_SWEEPS = 20
#: Groups summarised in the `feedback` component's details (`GET /feedback` shows more).
DETAIL_GROUPS = 4
#: Group names are shown cut to this many characters: anyone with access to Redis names
#: them, and what the sidecar shows stays bounded.
MAX_NAME = 100

#: Acknowledge, in every group of stream KEYS[1], at most ARGV[1] pending references to
#: entries trimming removed: ids below the first entry, or every id when the stream is
#: empty. Atomic, so an entry cannot be added or trimmed between the bound and the XACK.
#: Returns {acknowledged, 1 when a group had more}.
SWEEP = """
if redis.call('TYPE', KEYS[1]).ok ~= 'stream' then return {0, 0} end
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
local upper = '+'
if #first > 0 then upper = '(' .. first[1][1] end
local batch = tonumber(ARGV[1])
local acked, more = 0, 0
for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local name
  for i = 1, #group, 2 do
    if group[i] == 'name' then name = group[i + 1] end
  end
  local refs = redis.call('XPENDING', KEYS[1], name, '-', upper, batch)
  if #refs > 0 then
    local ids = {}
    for i, ref in ipairs(refs) do ids[i] = ref[1] end
    acked = acked + redis.call('XACK', KEYS[1], name, unpack(ids))
    if #refs == batch then more = 1 end
  end
end
return {acked, more}
"""

StreamId = tuple[int, int]


@dataclass(frozen=True)
class Consumer:
    name: str
    idle_seconds: float


@dataclass(frozen=True)
class Group:
    """One group as read: XINFO GROUPS, and its consumers when it was among those read."""

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

    @property
    def idle_seconds(self) -> float | None:
        """Since its most recently active consumer was seen; None without consumers."""
        return min((member.idle_seconds for member in self.members), default=None)

    def shown(self) -> ReaderGroup:
        return ReaderGroup(
            group=clip(self.name, MAX_NAME) or "",
            consumers=self.consumers,
            pending=self.pending,
            lag=self.lag,
            idle_seconds=self.idle_seconds,
        )


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
    ) -> None:
        self.target = target
        self.key = key
        self._on_arrival = on_arrival
        self._timeout = timeout
        self._metrics = metrics
        self._interval = interval
        self._stale_after = stale_after
        #: Per group waiting for entries: its last-delivered id, and since when (monotonic).
        self._waiting: dict[str, tuple[StreamId, float]] = {}
        self._task: asyncio.Task[None] | None = None
        #: The latest reading; None before the first, or when the last one failed.
        self._groups: list[Group] | None = None
        #: Groups by name with their last-delivered id, and consumers' idle times, as last
        #: read: what an arrival is judged against (kept through failed readings).
        self._seen: dict[str, StreamId] | None = None
        self._idle: dict[tuple[str, str], float] = {}
        #: What the sidecar cannot do here ("see", "bound"), as Redis said it.
        self._faults: dict[str, str] = {}
        self._labelled: set[str] = set()
        #: Readings completed (with their sweep): what a caller can wait on.
        self.readings = 0

    def start(self, client: aioredis.Redis) -> None:
        if self._task is None:
            self._task = asyncio.create_task(
                self._watch(client), name=f"stream-readers:{self.target}"
            )

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _watch(self, client: aioredis.Redis) -> None:
        sweep = client.register_script(SWEEP)
        delay = self._interval
        while True:
            try:
                async with asyncio.timeout(self._timeout):
                    await self.read(client)
                    await self._sweep(sweep)
                self.readings += 1
                delay = self._interval
            except (RedisError, OSError):
                # Unreachable or slow: the publisher reports that; keep what was seen. Back
                # off, so a peer that is down or not Redis costs a connection every few
                # seconds at most, not two a second (a Redis restarted meanwhile is seen by
                # its new run_id, and resynced, whatever this loop's delay).
                self._groups = None
                delay = min(delay * 2, FAILING_INTERVAL_MAX)
            await asyncio.sleep(delay)

    # -- reading -------------------------------------------------------------------------------

    async def read(self, client: aioredis.Redis) -> None:
        """One reading: groups and their consumers, then arrivals and metrics."""
        try:
            raw = await client.xinfo_groups(self.key)
        except ResponseError as exc:
            if "no such key" not in str(exc).lower():
                self._fault("see", f"cannot see the readers of {self.key} (XINFO): {exc}")
                self._groups = None
                return
            raw = []
        self._fault("see", None)
        groups, last_entry = await self._with_consumers(client, [_group(item) for item in raw])
        groups = self._unread(groups, last_entry)
        self._arrivals(groups)
        self._groups = groups
        self._export(groups)

    async def _with_consumers(
        self, client: aioredis.Redis, groups: list[Group]
    ) -> tuple[list[Group], StreamId]:
        """The first `MAX_READER_GROUPS` groups with their consumers, and the id of the
        stream's last entry (one pipeline)."""
        shown = groups[:MAX_READER_GROUPS]
        if not shown:
            return groups, (0, 0)
        async with client.pipeline(transaction=False) as pipe:
            pipe.xrevrange(self.key, count=1)
            for group in shown:
                pipe.xinfo_consumers(self.key, group.name)
            last, *replies = await pipe.execute(raise_on_error=False)
        read = [
            group if isinstance(reply, Exception) else _with_members(group, reply)
            for group, reply in zip(shown, replies, strict=True)
        ]
        last_entry = _stream_id(last[0][0]) if isinstance(last, list) and last else (0, 0)
        return read + groups[MAX_READER_GROUPS:], last_entry

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
        arrived = [] if self._seen is None else _arrived(self._seen, seen, self._idle, idle)
        self._seen, self._idle = seen, idle
        if arrived:
            logger.info(
                "stream target {} ({}): {}: resyncing", self.target, self.key, ", ".join(arrived)
            )
            if self._metrics is not None:
                self._metrics.stream_reader_arrivals.labels(self.target).inc(len(arrived))
            self._on_arrival()

    async def _sweep(self, sweep: Any) -> None:
        """Acknowledge references to trimmed entries in every group (see `SWEEP`)."""
        if not self._groups:
            return
        for _ in range(MAX_SWEEPS):
            try:
                acked, more = await sweep(keys=[self.key], args=[ACK_BATCH])
            except ResponseError as exc:
                what = f"the pending lists of {self.key} (XACK of trimmed entries)"
                self._fault("bound", f"cannot bound {what}: {exc}")
                return
            self._fault("bound", None)
            if acked and self._metrics is not None:
                self._metrics.stream_trimmed_acked.labels(self.target).inc(int(acked))
            if not more:
                return

    def _fault(self, kind: str, text: str | None) -> None:
        """Log what the sidecar cannot do once, when it starts and when it ends."""
        before = self._faults.get(kind)
        if text == before:
            return
        if text is None:
            del self._faults[kind]
            logger.info("stream target {} ({}): can {} again", self.target, self.key, kind)
            return
        self._faults[kind] = text
        logger.warning("stream target {}: {}", self.target, text)

    def _export(self, groups: list[Group]) -> None:
        if self._metrics is None:
            return
        m = self._metrics
        families = (m.stream_group_lag, m.stream_group_pending, m.stream_group_consumers)
        shown = groups[:MAX_READER_GROUPS]
        for group in shown:
            m.stream_group_pending.labels(self.target, group.name).set(group.pending)
            m.stream_group_consumers.labels(self.target, group.name).set(group.consumers)
            _set_or_remove(m.stream_group_lag, self.target, group.name, group.lag)
            _set_or_remove(m.stream_group_idle, self.target, group.name, group.idle_seconds)
        names = {group.name for group in shown}
        for gone in self._labelled - names:
            for family in (*families, m.stream_group_idle):
                with contextlib.suppress(KeyError):
                    family.remove(self.target, gone)
        self._labelled = names

    # -- what the publisher reports ------------------------------------------------------------

    def readers(self) -> list[ReaderGroup] | None:
        if self._groups is None:
            return None
        return [group.shown() for group in self._groups[:MAX_READER_GROUPS]]

    def problem(self) -> str | None:
        """Nobody reads the stream: no group, or every group has left entries unread for
        `stale_after` seconds."""
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
            details["readers"] = _summary(self._groups)
        if "see" in self._faults:
            details["readers_error"] = self._faults["see"]
        if "bound" in self._faults:
            details["pending_error"] = self._faults["bound"]
        return details


def _arrived(
    before: Mapping[str, StreamId],
    now: Mapping[str, StreamId],
    idle_before: Mapping[tuple[str, str], float],
    idle_now: Mapping[tuple[str, str], float],
) -> list[str]:
    """What arrived between two readings, in words for the log."""
    arrived = [f"group {name} appeared" for name in now if name not in before]
    arrived += [
        f"group {name} went back" for name, last in now.items() if last < before.get(name, last)
    ]
    for (group, consumer), idle in idle_now.items():
        previous = idle_before.get((group, consumer))
        if group in before and previous is None:
            arrived.append(f"consumer {consumer} joined group {group}")
        elif previous is not None and previous >= ABSENT_AFTER and idle < previous:
            # Only where `idle` counts every read (see `_arrivals`): before Redis 7.2 it
            # counts from the last entry received, and would drop at every entry.
            arrived.append(f"consumer {consumer} of group {group} is back")
    return arrived


def _group(raw: Mapping[str, Any]) -> Group:
    lag = raw.get("lag")
    return Group(
        name=reply_text(raw.get("name")),
        consumers=int(raw.get("consumers") or 0),
        pending=int(raw.get("pending") or 0),
        lag=int(lag) if isinstance(lag, int) else None,
        last_delivered=_stream_id(raw.get("last-delivered-id")),
    )


def _with_members(group: Group, raw: list[Mapping[str, Any]]) -> Group:
    members = tuple(
        Consumer(reply_text(item.get("name")), int(item.get("idle") or 0) / 1000) for item in raw
    )
    seen_on_read = any("inactive" in item for item in raw)
    return dataclasses.replace(group, members=members, seen_on_read=seen_on_read)


def _summary(groups: list[Group]) -> str:
    if not groups:
        return "none"
    parts = []
    for group in groups[:DETAIL_GROUPS]:
        idle = group.idle_seconds
        seen = "no consumer" if idle is None else f"seen {idle:.1f}s ago"
        lag = "?" if group.lag is None else str(group.lag)
        unread = f", unread {group.unread_for:.0f}s" if group.unread_for >= 1 else ""
        name = clip(group.name, MAX_NAME)
        parts.append(f"{name} (lag {lag}, pending {group.pending}, {seen}{unread})")
    if len(groups) > DETAIL_GROUPS:
        parts.append(f"+{len(groups) - DETAIL_GROUPS} more")
    return "; ".join(parts)


def _set_or_remove(family: Any, target: str, group: str, value: float | None) -> None:
    if value is not None:
        family.labels(target, group).set(value)
    else:
        with contextlib.suppress(KeyError):
            family.remove(target, group)


def _stream_id(value: Any) -> StreamId:
    milliseconds, _, sequence = reply_text(value).partition("-")
    try:
        return int(milliseconds), int(sequence or 0)
    except ValueError:
        return 0, 0
