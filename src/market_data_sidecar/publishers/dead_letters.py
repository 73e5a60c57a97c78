"""What a stream's readers rejected: Core's consumers move what they cannot decode or
handle to `{key}.dlq` (`RedisStreamsBus._move_to_dlq`), where nobody else looks.

The writer watches it with bounded work (its length and its newest entry, never the
whole stream) and says when readers have rejected entries since it started: every entry
there is a change some reader did not apply.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis
from loguru import logger

from market_data_sidecar.feedback.state import DeadLetterState, clip, shown_name
from market_data_sidecar.metrics import Metrics
from market_data_sidecar.publishers.redis_protocol import reply_text, server_ms
from market_data_sidecar.publishers.stream_readers import stream_id

#: Characters of a reader's reason kept: the reason is the reader's own text.
MAX_REASON = 200
#: A rejection this recent keeps `feedback` degraded; older ones are history.
RECENT = 600.0


class DeadLetters:
    """Reads one stream's dead-letter stream when asked (each feedback check)."""

    def __init__(self, target: str, key: str, *, metrics: Metrics | None = None) -> None:
        self.target = target
        self.key = f"{key}.dlq"
        self._metrics = metrics
        #: The server's clock and the length at the first reading: what came after is new.
        self._started_ms: int | None = None
        self._length_at_start = 0
        self._state: DeadLetterState | None = None
        self._fresh_at: float | None = None
        self._reported_ms = 0

    async def read(self, client: aioredis.Redis) -> None:
        async with client.pipeline(transaction=False) as pipe:
            pipe.time()
            pipe.xlen(self.key)
            pipe.xrevrange(self.key, count=1)
            now, length, newest = await pipe.execute()
        now_ms, length = server_ms(now), int(length)
        if self._started_ms is None:
            self._started_ms, self._length_at_start = now_ms, length
        entry_ms, reason = _newest(newest)
        age = None if entry_ms is None else max(0.0, (now_ms - entry_ms) / 1000)
        self._state = DeadLetterState(
            key=clip(self.key, 200) or "",
            length=length,
            since_start=max(0, length - self._length_at_start),
            newest_age_seconds=age,
            reason=reason,
        )
        if entry_ms is not None and entry_ms > max(self._started_ms, self._reported_ms):
            self._reported_ms = entry_ms
            self._fresh_at = time.monotonic() - (age or 0.0)
            logger.warning(
                "stream target {}: a reader dead-lettered an entry to {}: {}",
                self.target,
                self._state.key,
                reason or "no reason given",
            )
        self._export(length, age)

    def _export(self, length: int, age: float | None) -> None:
        if self._metrics is None:
            return
        self._metrics.stream_dead_letters.labels(self.target).set(length)
        if age is not None:
            self._metrics.stream_dead_letter_age.labels(self.target).set(age)

    def state(self) -> DeadLetterState | None:
        return self._state

    def problem(self) -> str | None:
        """Readers rejected entries since the sidecar started, within `RECENT` seconds."""
        state = self._state
        if state is None or self._fresh_at is None or time.monotonic() - self._fresh_at > RECENT:
            return None
        return (
            f"target {self.target}: readers dead-lettered {state.since_start} entries to "
            f"{state.key} since start: {state.reason or 'no reason given'}"
        )


def _newest(reply: Any) -> tuple[int | None, str | None]:
    """The newest entry's time (its id's milliseconds) and reason, if any."""
    if not isinstance(reply, list) or not reply:
        return None, None
    entry_id, fields = reply[0]
    entry_ms = stream_id(entry_id)[0]
    if not entry_ms:  # not an entry id
        return None, None
    reason = fields.get(b"reason", fields.get("reason")) if isinstance(fields, Mapping) else None
    if reason is None:
        return entry_ms, None
    return entry_ms, shown_name(reply_text(reason), MAX_REASON)
