"""Copies of a stream target's state, so that every replica of every reader hears it.

Core's consumers read with one group and one fixed consumer name in every replica (the
pipeline's `pipeline_w1`, the orchestrator's `orch-observer-1`), and Redis hands each new
entry of a group to ONE blocked reader. Redis serves blocked readers after each command,
and a reader it served cannot block again within the same round trip: so an append
followed, in one pipelined round trip, by copies sent as separate commands reaches one
waiting reader per entry (copies inside one script would all go to the first reader).

- **How many.** `XINFO GROUPS` closes the round trip: the entries a group took at once are
  its readers that were waiting. A change is appended as many times as the largest group
  had readers lately, plus one spare that finds a reader who joined (bounded by the
  target's `max_copies`; `readers` overrides the estimate).
- **Never out of order.** A copy (`COPY`) is appended only while the stream's newest entry
  carries the state's event id: a newer state, from this sidecar or another member, is
  never followed by a copy of an older one.
- **Readers who were busy, or joined late.** Every change is announced once more shortly
  after (a reader that was busy took nothing, and under a shared name Redis cannot tell
  it from the others), and again while a group takes fewer copies than it has readers or
  takes them all (more may be waiting); and while it is not `ok`, every `reannounce` seconds,
  since a replica that starts under the shared name is invisible to Redis and runs at full
  rate until it hears something. A state that is `ok` needs no repeat: a new replica
  starts at full rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from loguru import logger
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError, RedisError, ResponseError

from market_data_sidecar.metrics import Metrics
from market_data_sidecar.publishers.redis_protocol import reply_text, server_ms
from market_data_sidecar.publishers.stream_readers import Faults, StreamId, group_name, stream_id
from market_data_sidecar.tasks import cancelled

#: Append the stream's newest entry again, if it carries event id ARGV[2] (it is the
#: state the caller appended, or a copy of it). Returns the new id, or false.
COPY = """
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #newest == 0 then return false end
local fields, data = newest[1][2], nil
for i = 1, #fields, 2 do
  if fields[i] == 'data' then data = fields[i + 1] end
end
if not data or not string.find(data, ARGV[2], 1, true) then return false end
return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'data', data)
"""

#: Rounds of copies a group's estimate is the largest take of: a replica that left is
#: forgotten after this many announcements without it.
WINDOW = 5
#: A busy reader is announced to again this soon (the consumers process an entry in
#: milliseconds, then block again).
RETRY_DELAY = 0.5
#: Announcements in a row for readers who missed one, before the estimate is believed:
#: with the spare doubling each time, enough to find 16 readers from none.
MAX_RETRIES = 4
#: Groups whose estimates are kept and shown (the rest count as unknown).
MAX_GROUPS = 100
#: A group's last-delivered id beyond this many milliseconds past the server's clock is
#: nonsense (or a hand-made group): its take is unknown.
_FUTURE_MS = 86_400_000

#: Seconds a shared estimate lives without being written again.
SHARED_TTL = 60


@dataclass(frozen=True)
class Newest:
    """The stream's newest entry, as a re-announcement judges it."""

    event_id: str
    level: str
    age: float


@dataclass(frozen=True)
class Original:
    """A command that appends a state, as a round queues it: its copies right after it."""

    #: Queues the command on the round's pipeline (so it is encoded as it is queued).
    queue: Callable[[Pipeline], object]
    event_id: str
    #: Whether copies follow it (a round of thousands of originals would outrun `maxlen`).
    copied: bool = True


@dataclass(frozen=True)
class Round:
    """A round's replies: the originals' for the caller, who alone can read the entry ids
    in them; the copies' and the groups' for `Copies.learn_from`, once it has."""

    originals: list[Any]
    copies: list[Any]
    #: What XINFO GROUPS replied (a list, or the error); None when the round did not read.
    groups: Any


class Copies:
    """Plans, appends and learns from the copies of one stream target. Its options are the
    target's settings of the same names, with no default of their own."""

    def __init__(
        self,
        target: str,
        key: str,
        *,
        max_copies: int,
        readers: int | None,
        reannounce: float,
        maxlen: int,
        metrics: Metrics | None = None,
    ) -> None:
        self.target = target
        self.key = key
        self.max_copies = max_copies
        self.readers_override = readers
        self.reannounce = reannounce
        self.maxlen = maxlen
        #: The estimate shared by every writer of the key: any fleet member may append
        #: the next change, and one that never has would know nothing of the readers.
        self.shared_key = f"{key}:readers"
        self._shared: int | None = None
        self._shared_read_at = -math.inf
        self._shared_written: tuple[int, float] | None = None
        self._metrics = metrics
        #: Per group: how many copies it took at once in the latest rounds.
        self._taken: dict[str, deque[int]] = {}
        self._shared_logged: set[str] = set()
        self._sha: str | None = None
        #: Why copies cannot be made or counted here ("script", "xinfo"), as Redis said it.
        self._faults = Faults(
            target, key, part="copies: ", then="; each change is appended once", limit=300
        )
        self._retries = 0
        #: Entries beyond the estimate: one, doubled while every entry of a round is taken.
        self._spare = 1
        self._due: float | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: Rounds announced again (for tests and the curious).
        self.reannounced = 0

    # -- planning -----------------------------------------------------------------------------

    def estimate(self, group: str) -> int | None:
        """Readers behind `group`: the most copies it took at once lately (None: unknown)."""
        taken = self._taken.get(group)
        return max(taken) if taken else None

    def estimates(self) -> dict[str, int]:
        """Each known group's estimate, under the name the views show."""
        return {group_name(name): max(taken) for name, taken in self._taken.items()}

    def known(self) -> int | None:
        """Readers behind the busiest group: as the target's `readers` says, else as this
        writer learnt or another shared."""
        if self.readers_override is not None:
            return self.readers_override
        local = self._learnt()
        if local is None:
            return self._shared
        return max(local, self._shared or 0)

    def _learnt(self) -> int | None:
        """Readers behind the busiest group, as this writer learnt them (None: nothing)."""
        return max((max(taken) for taken in self._taken.values()), default=None)

    def entries(self) -> int:
        """Entries per change: the original and its copies."""
        if self.readers_override is not None:
            return min(self.max_copies, self.readers_override)
        known = self.known()
        if "xinfo" in self._faults or not self.enabled or not known:
            # Nothing learnt (yet), or nobody reads: one append, as without copies. The
            # first round's reading teaches the estimate, and its follow-up uses it.
            return 1
        return max(1, min(self.max_copies, known + self._spare))

    @property
    def reading(self) -> bool:
        """Whether a round ends with the groups' reading (it teaches the estimate)."""
        return self._sha is not None and self.readers_override is None

    @property
    def enabled(self) -> bool:
        return self.max_copies > 1 and "script" not in self._faults

    # -- one round trip ---------------------------------------------------------------------------

    async def prepare(self, client: aioredis.Redis) -> None:
        """Load `COPY` once (and again after a Redis restart forgot it)."""
        if not self.enabled:
            return
        if self.known() is None and time.monotonic() - self._shared_read_at > RETRY_DELAY:
            self._shared_read_at = time.monotonic()
            self._shared = _count(await client.get(self.shared_key))
        if self._sha is not None:
            return
        try:
            self._sha = await client.script_load(COPY)
        except ResponseError as exc:
            self._faults.set("script", f"cannot append copies to {self.key} (SCRIPT LOAD): {exc}")

    async def round(self, client: aioredis.Redis, originals: Sequence[Original]) -> Round:
        """Append the originals, each followed by its copies, then read the groups, in one
        round trip. No MULTI: a transaction would hold the server for the whole round, and
        blocked readers are served only between commands (the copies)."""
        await self.prepare(client)
        copies = self.entries() - 1
        async with client.pipeline(transaction=False) as pipe:
            queued = [self._queue_original(pipe, original, copies) for original in originals]
            reading = self.reading
            if reading:
                self.queue_reading(pipe)
            replies = await pipe.execute(raise_on_error=False)
        groups = replies.pop() if reading else None
        answered, copied = _split(replies, queued)
        return Round(answered, copied, groups)

    def _queue_original(self, pipe: Pipeline, original: Original, copies: int) -> int:
        """Queue `original` and its copies; how many copies were queued."""
        original.queue(pipe)
        return self.queue(pipe, original.event_id, copies if original.copied else 0)

    def learn_from(self, sent: Round, appended: Sequence[str]) -> None:
        """Learn from a round, given the entry ids its originals appended (the caller reads
        them from its replies, raising their errors first)."""
        if sent.groups is not None:
            self.observe(sent.copies, sent.groups, appended)

    def queue(self, pipe: Pipeline, event_id: str, copies: int) -> int:
        """Queue `copies` conditional copies of the state `event_id`; how many were queued."""
        if self._sha is None or copies <= 0:
            return 0
        marker = _marker(event_id)
        for _ in range(copies):
            pipe.evalsha(self._sha, 1, self.key, self.maxlen, marker)
        return copies

    def queue_reading(self, pipe: Pipeline) -> None:
        pipe.xinfo_groups(self.key)

    def observe(self, copies: Sequence[Any], groups: Any, originals: Sequence[str]) -> None:
        """Learn from a round: the ids appended (the originals and the copies that were),
        and XINFO GROUPS read right after them."""
        appended = list(originals) + [reply_text(r) for r in copies if isinstance(r, bytes | str)]
        self._copy_faults(copies)
        if self._metrics is not None and len(appended) > len(originals):
            self._metrics.stream_copies.labels(self.target).inc(len(appended) - len(originals))
        if isinstance(groups, Exception):
            if "no such key" not in str(groups).lower():
                self._faults.set(
                    "xinfo", f"cannot count the readers of {self.key} (XINFO): {groups}"
                )
            return
        self._faults.set("xinfo", None)
        if not appended or not isinstance(groups, list):
            return
        ids = sorted(stream_id(entry) for entry in appended)
        self._learn(groups[:MAX_GROUPS], ids, change=bool(originals))
        logger.debug(
            "stream target {}: {} entries appended, groups took {}",
            self.target,
            len(ids),
            {name: taken[-1] for name, taken in self._taken.items()},
        )

    def _copy_faults(self, copies: Sequence[Any]) -> None:
        error = next((reply for reply in copies if isinstance(reply, Exception)), None)
        if isinstance(error, NoScriptError) or "NOSCRIPT" in str(error or ""):
            self._sha = None  # Redis restarted: loaded again before the next round
        elif error is not None:
            self._faults.set("script", f"cannot append copies to {self.key}: {error}")
            self._sha = None

    def _learn(self, groups: list[Any], ids: list[StreamId], *, change: bool) -> None:
        retry = saturated = learnt = False
        for raw in groups:
            if not isinstance(raw, Mapping):
                continue
            name = reply_text(raw.get("name"))
            last = stream_id(raw.get("last-delivered-id"))
            if not name or last == (0, 0) or last[0] > ids[-1][0] + _FUTURE_MS:
                continue  # nonsense: unknown, never a storm of copies
            took = sum(1 for entry in ids if entry <= last)
            if took == 0 and ids[0] > last:
                continue  # the group was not waiting at all (or is behind): nothing learnt
            before = self.estimate(name)
            learnt = True
            taken = self._taken.setdefault(name, deque(maxlen=WINDOW))
            taken.append(took)
            saturated = saturated or took == len(ids)
            retry = retry or took == len(ids) or (before is not None and took < before)
            self._shared_name(name, raw)
            if self._metrics is not None:
                self._metrics.stream_group_readers.labels(self.target, group_name(name)).set(
                    max(taken)
                )
        self._spare = min(2 * self._spare, self.max_copies) if saturated else 1
        self._schedule_retry(retry, change=change and learnt)

    def _schedule_retry(self, retry: bool, *, change: bool) -> None:
        """Announce again soon when a reader may have missed this round: once after every
        change (a reader that was busy, or had not blocked again since the last change,
        took nothing, and Redis cannot tell it from the others), and again while rounds
        say more readers wait than were counted."""
        if change and (self.known() or 0) >= 2:  # one reader a group misses nothing
            self._retries, retry = 0, True
        if retry and self._retries < MAX_RETRIES:
            self._retries += 1
            self._due = time.monotonic() + RETRY_DELAY
            self._wake.set()
        elif not retry:
            self._retries = 0

    def _shared_name(self, name: str, raw: Mapping[str, Any]) -> None:
        estimate = self.estimate(name) or 0
        consumers = raw.get("consumers")
        if not isinstance(consumers, int) or estimate <= max(consumers, 1):
            return
        if name in self._shared_logged or len(self._shared_logged) >= MAX_GROUPS:
            return
        self._shared_logged.add(name)
        logger.info(
            "stream target {} ({}): group {} has ~{} readers sharing {} consumer name(s); "
            "each change is appended {} times so every one hears it (one group per replica "
            "would need one)",
            self.target,
            self.key,
            group_name(name),
            estimate,
            consumers,
            self.entries(),
        )

    # -- announcing again ---------------------------------------------------------------------

    def start(self, client: aioredis.Redis) -> None:
        if self._task is None and self.enabled:
            self._task = asyncio.create_task(self._announce(client), name=f"copies:{self.target}")

    async def close(self) -> None:
        task, self._task = self._task, None
        await cancelled(task)

    async def _announce(self, client: aioredis.Redis) -> None:
        """Announce the newest state again when a reader may have missed it."""
        while True:
            retrying = await self._wait()
            with contextlib.suppress(RedisError, OSError):
                async with asyncio.timeout(max(1.0, self.reannounce)):
                    await self.announce(client, retrying=retrying)

    async def _wait(self) -> bool:
        """Sleep until the next announcement; whether it is a retry for a busy reader."""
        periodic = time.monotonic() + self.reannounce * random.uniform(0.9, 1.1)
        while True:
            due = min(self._due or math.inf, periodic if self.reannounce else math.inf)
            self._wake.clear()
            try:
                async with asyncio.timeout(None if due == math.inf else due - time.monotonic()):
                    await self._wake.wait()
            except TimeoutError:
                retrying = self._due is not None and self._due <= time.monotonic()
                self._due = None
                return retrying

    async def announce(self, client: aioredis.Redis, *, retrying: bool) -> bool:
        """One re-announcement of the stream's newest state, if it is due; whether done."""
        newest = await self._newest(client)  # reads the shared estimate on the way
        await self.prepare(client)
        if newest is None or self._sha is None or not self.known():
            return False  # nobody is known to read: nobody to announce to
        due = newest.age >= RETRY_DELAY / 2 if retrying else newest.age >= 0.9 * self.reannounce
        if not due or (newest.level == "ok" and not retrying):
            return False
        async with client.pipeline(transaction=False) as pipe:
            self.queue(pipe, newest.event_id, self.entries())
            self.queue_reading(pipe)
            *copies, groups = await pipe.execute(raise_on_error=False)
        self.observe(copies, groups, [])
        self.reannounced += 1
        if self._metrics is not None:
            self._metrics.stream_reannounced.labels(self.target).inc()
        return True

    async def _newest(self, client: aioredis.Redis) -> Newest | None:
        """The stream's newest entry; the shared estimate is read and written on the way."""
        async with client.pipeline(transaction=False) as pipe:
            pipe.time()
            pipe.xrevrange(self.key, count=1)
            pipe.get(self.shared_key)
            self._share(pipe)
            now, newest, shared, *_ = await pipe.execute()
        self._shared, self._shared_read_at = _count(shared), time.monotonic()
        if not newest:
            return None
        entry_id, fields = newest[0]
        return _parse_newest(fields, (server_ms(now) - stream_id(entry_id)[0]) / 1000)

    def _share(self, pipe: Pipeline) -> None:
        """Write what this writer learnt, when it changed or is about to expire."""
        local = self._learnt()
        if local is None:
            return
        written = self._shared_written
        if written is None or written[0] != local or time.monotonic() - written[1] > SHARED_TTL / 3:
            pipe.set(self.shared_key, local, ex=SHARED_TTL)
            self._shared_written = (local, time.monotonic())

    def details(self) -> dict[str, str]:
        details = {"copies": str(self.entries())}
        if self._faults:
            details["copies_error"] = "; ".join(self._faults.texts.values())
        return details


def _split(replies: Sequence[Any], queued: Sequence[int]) -> tuple[list[Any], list[Any]]:
    """A round's replies to each original and to the copies queued after it."""
    originals: list[Any] = []
    copies: list[Any] = []
    position = 0
    for count in queued:
        originals.append(replies[position])
        copies.extend(replies[position + 1 : position + 1 + count])
        position += 1 + count
    return originals, copies


def _marker(event_id: str) -> str:
    """What only the state `event_id` (and its copies) carries in its envelope."""
    return f'"event_id":{json.dumps(event_id)}'


def _parse_newest(fields: Mapping[Any, Any], age: float) -> Newest | None:
    """The newest entry's event id and level, if it is a feedback envelope."""
    data = fields.get(b"data", fields.get("data"))
    try:
        envelope = json.loads(data)
        event_id = envelope["meta"]["headers"]["event_id"]
        level = envelope["payload"]["level"]
    except (TypeError, ValueError, KeyError):
        return None
    if not isinstance(event_id, str) or not isinstance(level, str):
        return None
    return Newest(event_id=event_id, level=level, age=age)


def _count(value: Any) -> int | None:
    """A shared estimate as stored (anyone may write the key): unknown unless sane."""
    try:
        count = int(reply_text(value))
    except (TypeError, ValueError):
        return None
    return count if 0 < count <= 1000 else None
