"""Redis targets: each event `PUBLISH`ed as JSON, or `XADD`ed to a Stream in Core's format.

The stream entry is what Core's `RedisStreamsBus.subscribe` reads, and so what the
pipeline's `FeedbackConsumer` and the orchestrator's `PulseObserver` consume: key
`{namespace}:{stream}` (by default `mdp:mdp.telemetry.feedback`), field `data`, a
`JsonCodec` envelope with `meta.schema_id == "telemetry.FeedbackEvent"` and the
coordinator id as its `key`. Core's envelope has no room for the relay's extras, so
they travel in `meta.headers`, as the store's own publisher sets them: `event_id`
(stable across retries, for de-duplication), `utilization`, and `reason` (absent
when the store gave none); the sidecar adds `origin: synthesized` to events it derived
and `resync: true` to re-publications of a coordinator's current state.

redis-py reconnects per command through its connection pool, so a target comes back
on the next attempt after Redis restarts; the router decides when that attempt is.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from loguru import logger
from market_data_core.events import EventMeta
from redis.asyncio.connection import AbstractConnection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    BusyLoadingError,
    ClusterDownError,
    InvalidResponse,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from market_data_sidecar.feedback.delivery import DeliveryError, Publisher, encoder
from market_data_sidecar.feedback.model import Feedback
from market_data_sidecar.feedback.state import DeadLetterState, ReaderGroup, clip
from market_data_sidecar.metrics import Metrics
from market_data_sidecar.publishers.dead_letters import DeadLetters
from market_data_sidecar.publishers.redis_protocol import BoundedParser, reply_text
from market_data_sidecar.publishers.stream_copies import Copies, Original
from market_data_sidecar.publishers.stream_readers import StreamReaders
from market_data_sidecar.redaction import Redactor, redact_url, url_secrets
from market_data_sidecar.settings import (
    ConfigError,
    RedisPubSubTargetSettings,
    RedisStreamTargetSettings,
)

SCHEMA_ID = "telemetry.FeedbackEvent"
TRACK = "v1"
#: A pooled connection idle this long is PINGed before reuse, so a Redis restarted
#: in between is noticed (and the connection replaced) before an event is sent on it.
HEALTH_CHECK_INTERVAL = 10.0
#: `health_details` runs inside the feedback check; a hanging Redis must not time it out.
PING_BUDGET = 1.0

# Replies that describe a passing condition (failover, loading, memory pressure): retry.
_TRANSIENT_REPLIES = frozenset({"BUSY", "CLUSTERDOWN", "MASTERDOWN", "OOM", "READONLY", "TRYAGAIN"})
_TRANSIENT_REPLY_ERRORS = (ClusterDownError, OutOfMemoryError, ReadOnlyError, TryAgainError)
#: Characters of an error's text kept (an error reply may be 64 KiB of the peer's text).
MAX_DETAIL_LENGTH = 200
#: Failures that say no Redis answered: the target is reported unreachable.
_UNREACHABLE = frozenset({"connection", "timeout", "loading", "protocol"})


class _RedisPublisher(Publisher):
    """One redis-py client per target; classifies failures and reports reachability."""

    def __init__(
        self,
        target: RedisPubSubTargetSettings | RedisStreamTargetSettings,
        *,
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__(target.label)
        self.target = target
        self.url = redact_url(target.url)
        self._redact = Redactor(target.url, *url_secrets(target.url))
        try:
            parse_url(target.url)
        except ValueError as exc:
            problem = self._scrub(str(exc))
            raise ConfigError(
                f"invalid configuration: SIDECAR_TARGETS: target {self.name!r}: url: {problem}"
            ) from None
        self._metrics = metrics
        self._client: aioredis.Redis | None = None
        self._reachable: bool | None = None
        self._ping_seconds: float | None = None
        self._last_error: str | None = None
        self._run_id: str | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.url!r})"

    async def start(self) -> None:
        """Create the client; connections open on first use, so a down Redis is fine here."""
        if self._client is not None:
            return
        self._client = aioredis.Redis.from_url(
            self.target.url,
            socket_connect_timeout=self.target.timeout,
            # No socket_timeout: redis-py enforces it with `asyncio.wait_for`, which on
            # Python 3.11 swallows a cancellation that lands as a write completes, so
            # the router's workers could not be stopped. Every attempt is bounded by
            # `asyncio.timeout(target.timeout)` instead; redis-py drops a connection
            # whose read was interrupted, so no reply is ever read out of turn.
            socket_timeout=None,
            health_check_interval=HEALTH_CHECK_INTERVAL,
            # One immediate retry, on connection errors only: it replaces a pooled
            # connection that died with a restarted Redis. Backoff and everything
            # else is the router's.
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            redis_connect_func=self._on_connect,
            # Every reply bounded in bytes, values and nesting: a peer that is not Redis
            # costs a failed attempt (`protocol`), never the sidecar's memory or stack.
            parser_class=BoundedParser,
            # RESP2, unless the URL asks for RESP3: every Redis speaks it, a connection
            # needs no HELLO round trip, and redis-py never swaps in its own unbounded
            # parser (it does when a server it greeted with HELLO 3 refuses it).
            protocol=2,
        )

    async def _on_connect(self, connection: AbstractConnection) -> None:
        """redis-py's hook for each new connection: a Redis with a new `run_id` restarted,
        and may hold none of what was written before, so the router resyncs the target."""
        # Without a health check: a PING that fails here reconnects, which calls this
        # hook again, and again, without bound against a peer that closes or answers
        # `-LOADING`. The connection is new; redis-py's own hook skips the check the
        # same way.
        await connection.on_connect_check_health(check_health=False)
        run_id = await _run_id(connection)
        if run_id is None:
            return
        previous, self._run_id = self._run_id, run_id
        if previous is not None and previous != run_id:
            logger.info("redis target {} ({}): Redis restarted, resyncing", self.name, self.url)
            self.on_recovered()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def deliver(self, batch: Sequence[Feedback]) -> None:
        """Send `batch` in one pipeline; raises `DeliveryError` (detail without secrets)."""
        if not batch:
            return
        if self._client is None:
            await self.start()
        assert self._client is not None
        try:
            async with asyncio.timeout(self.target.timeout):
                await self._send(self._client, batch)
        except (RedisError, OSError) as exc:  # OSError covers asyncio's TimeoutError
            raise self._failed(exc, timeout=self.target.timeout) from exc
        self._set_reachable(True)

    async def _send(self, client: aioredis.Redis, batch: Sequence[Feedback]) -> None:
        raise NotImplementedError

    async def health_details(self) -> dict[str, str]:
        """Reachability and PING latency now, and the last error seen."""
        if self._client is None:
            return {"url": self.url, "reachable": "false", "last_redis_error": "not started"}
        budget = min(PING_BUDGET, self.target.timeout)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(budget):
                if not await self._client.ping():  # redis-py: whether it answered PONG
                    raise InvalidResponse("PING answered something else than PONG")
        except (RedisError, OSError) as exc:
            self._failed(exc, timeout=budget)
        else:
            self._ping_seconds = time.perf_counter() - started
            if self._metrics is not None:
                self._metrics.redis_ping_latency.labels(self.name).set(self._ping_seconds)
            self._set_reachable(True)
        details = {"url": self.url, "reachable": str(bool(self._reachable)).lower()}
        if self._reachable and self._ping_seconds is not None:
            details["ping_ms"] = f"{self._ping_seconds * 1000:.3f}"
        if self._last_error is not None:
            # Not `last_error`: the router reports its own under that name.
            details["last_redis_error"] = self._last_error
        return details | self._describe()

    def _describe(self) -> dict[str, str]:
        return {}

    def _failed(self, exc: BaseException, *, timeout: float | None = None) -> DeliveryError:
        """Record a failure and classify it for the router."""
        detail = _printable(self._scrub(str(exc)))
        if not detail:  # asyncio's TimeoutError says nothing
            detail = f"no answer within {timeout:g}s" if timeout else type(exc).__name__
        error = classify(exc, detail)
        self._last_error = str(error)
        # A server reply, even an error, proves Redis is there; one that is not RESP
        # proves the opposite.
        self._set_reachable(error.reason not in _UNREACHABLE)
        return error

    def _set_reachable(self, reachable: bool) -> None:
        if reachable != self._reachable:
            if reachable and self._reachable is False:
                logger.info("redis target {} ({}) reachable again", self.name, self.url)
            elif not reachable:
                logger.warning(
                    "redis target {} ({}) unreachable: {}", self.name, self.url, self._last_error
                )
        self._reachable = reachable
        if self._metrics is not None:
            self._metrics.redis_up.labels(self.name).set(1 if reachable else 0)

    def _scrub(self, text: str) -> str:
        return self._redact(text.replace(self.target.url, self.url))


class RedisPubSubPublisher(_RedisPublisher):
    """`PUBLISH <channel>` the flat event JSON (Core's fields plus `reason`)."""

    #: PUBLISHes pipelined per round trip when the target is behind.
    max_batch = 100

    def __init__(
        self, target: RedisPubSubTargetSettings, *, metrics: Metrics | None = None
    ) -> None:
        super().__init__(target, metrics=metrics)
        self.channel = target.channel
        self._subscribers: int | None = None

    async def _send(self, client: aioredis.Redis, batch: Sequence[Feedback]) -> None:
        async with client.pipeline(transaction=False) as pipe:
            for feedback in batch:
                pipe.publish(self.channel, self.message(feedback))
            receivers = _replies(await pipe.execute(raise_on_error=False))
        wrong = next((count for count in receivers if not isinstance(count, int)), None)
        if wrong is not None:  # RESP, but not Redis
            raise InvalidResponse(f"PUBLISH answered {repr(wrong)[:40]}, not a count")
        # Pub/sub is fire-and-forget: nobody listening still counts as delivered, but
        # operators can see it.
        self._subscribers = receivers[-1]

    @encoder
    def message(self, feedback: Feedback) -> bytes:
        """The flat event JSON, as bytes: encoded here, not by redis-py inside the send."""
        return json.dumps(feedback.wire()).encode()

    def _describe(self) -> dict[str, str]:
        details = {"channel": self.channel}
        if self._subscribers is not None:
            details["subscribers"] = str(self._subscribers)
        return details


class RedisStreamPublisher(_RedisPublisher):
    """`XADD {namespace}:{stream} MAXLEN ~ N * data <Core envelope>`, pipelined."""

    def __init__(
        self, target: RedisStreamTargetSettings, *, metrics: Metrics | None = None
    ) -> None:
        super().__init__(target, metrics=metrics)
        self.stream = target.key
        self.max_batch = target.batch
        # `latest`: feedback is state, a consumer behind needs only the newest per
        # coordinator. `all`: a log, every event kept up to the router's bound.
        self.conflate = target.mode == "latest"
        self.mode = target.mode
        self._maxlen = target.maxlen
        # A reader that arrives gets the current state at once: `on_recovered` is looked
        # up when called, as the router sets it after construction.
        self.stream_readers = StreamReaders(
            self.name,
            self.stream,
            on_arrival=lambda: self.on_recovered(),
            timeout=target.timeout,
            metrics=metrics,
        )
        self.copies = Copies(
            self.name,
            self.stream,
            max_copies=target.max_copies,
            readers=target.readers,
            reannounce=target.reannounce,
            maxlen=target.maxlen,
            metrics=metrics,
        )
        self.dead = DeadLetters(self.name, self.stream, metrics=metrics)

    async def start(self) -> None:
        await super().start()
        assert self._client is not None
        self.stream_readers.start(self._client)
        self.copies.start(self._client)

    async def close(self) -> None:
        await self.copies.close()
        await self.stream_readers.close()
        await super().close()

    async def _send(self, client: aioredis.Redis, batch: Sequence[Feedback]) -> None:
        sent = await self.copies.round(client, [self._original(feedback) for feedback in batch])
        self.copies.learn_from(sent, [reply_text(entry) for entry in _replies(sent.originals)])

    def _original(self, feedback: Feedback) -> Original:
        """The XADD of `feedback`. A resync round in `coordinator` scope is not copied: it
        is one entry per coordinator already (thousands); copied, it would outrun `maxlen`."""
        return Original(
            lambda pipe: pipe.xadd(
                self.stream,
                {"data": self.envelope(feedback)},
                maxlen=self._maxlen,
                approximate=True,
            ),
            feedback.id,
            copied=not (feedback.resync and self.target.scope == "coordinator"),
        )

    async def health_details(self) -> dict[str, str]:
        details = await super().health_details()
        if self._client is not None and self._reachable:
            try:
                async with asyncio.timeout(min(PING_BUDGET, self.target.timeout)):
                    await self.dead.read(self._client)
            except (RedisError, OSError) as exc:
                details["dead_letters_error"] = _printable(self._scrub(str(exc)))
        return details

    @encoder
    def envelope(self, feedback: Feedback) -> bytes:
        """The Core `JsonCodec` envelope, with the relay's extras in `meta.headers`.

        Built as `JsonCodec.encode` builds it (same fields, same payload hash), but the
        payload is serialized once: encoding through the codec and then adding headers
        cost four JSON passes per event, the stream target's largest cost.
        """
        payload = feedback.event.model_dump_json()
        meta = EventMeta(
            schema_id=SCHEMA_ID,
            track=TRACK,
            headers=feedback.headers(),
            hash=hashlib.sha256(payload.encode()).hexdigest(),
        )
        key = json.dumps(feedback.coordinator_id)
        return (
            f'{{"ts":{time.time()!r},"key":{key},'
            f'"meta":{meta.model_dump_json()},"payload":{payload}}}'
        ).encode()

    def _describe(self) -> dict[str, str]:
        details = {"stream": self.stream, "mode": self.mode} | self.stream_readers.details()
        return details | self.copies.details()

    def problem(self) -> str | None:
        return self.stream_readers.problem() or self.dead.problem()

    def readers(self) -> list[ReaderGroup] | None:
        groups = self.stream_readers.readers()
        if groups is None:
            return None
        estimates = self.copies.estimates()
        return [
            group.model_copy(update={"readers": estimates.get(group.group)}) for group in groups
        ]

    def dead_letters(self) -> DeadLetterState | None:
        return self.dead.state()


async def _run_id(connection: AbstractConnection) -> str | None:
    """The server's `run_id` (new at every start), or None where `INFO` is not allowed."""
    try:
        await connection.send_command("INFO", "server", check_health=False)
        reply = await connection.read_response()
    except ResponseError:
        return None
    for line in reply_text(reply).splitlines():
        if line.startswith("run_id:"):
            return line.removeprefix("run_id:").strip()
    return None


def _printable(text: str) -> str:
    """An error's text fit for a log line: an error reply is the peer's own text, which may
    hold anything (terminal escapes, a forged line), and be as long as a line may be."""
    text = clip(text, MAX_DETAIL_LENGTH) or ""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def _replies(replies: list[Any]) -> list[Any]:
    """Pipeline replies, raising the first error reply as Redis phrased it (redis-py's
    own `raise_on_error` rewrites the message around the whole command)."""
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


def classify(exc: BaseException, detail: str | None = None) -> DeliveryError:
    """What a redis-py failure means for the router: retry, or give the events up."""
    if isinstance(exc, AuthenticationError | AuthorizationError):
        # Wrong password or ACL: retrying cannot help until an operator acts.
        return DeliveryError("auth", retryable=False, detail=detail)
    if isinstance(exc, InvalidResponse):
        # Not RESP, or a reply beyond the parser's bounds: not the Redis it should be
        # (a wrong port, a proxy gone wrong). redis-py has dropped the connection; the
        # next attempt starts afresh, and the circuit opens if it keeps happening.
        return DeliveryError("protocol", detail=detail)
    if isinstance(exc, BusyLoadingError):
        return DeliveryError("loading", detail=detail)
    if isinstance(exc, RedisTimeoutError | TimeoutError):
        return DeliveryError("timeout", detail=detail)
    if isinstance(exc, RedisConnectionError | OSError):
        return DeliveryError("connection", detail=detail)
    if isinstance(exc, ResponseError):
        code = _reply_code(exc)
        transient = isinstance(exc, _TRANSIENT_REPLY_ERRORS) or code in _TRANSIENT_REPLIES
        return DeliveryError(f"redis_{code.lower()}", retryable=transient, detail=detail)
    # Whatever else redis-py raises: the next attempt starts afresh.
    return DeliveryError("redis_error", detail=detail)


def _reply_code(exc: ResponseError) -> str:
    """`WRONGTYPE` from "WRONGTYPE Operation against a key holding the wrong kind of value"."""
    code = getattr(exc, "status_code", None)  # set by redis-py >= 6 on mapped replies
    if not isinstance(code, str) or not code:
        code = str(exc).split(" ", 1)[0]
    return code if code.isalpha() and code.isupper() else "ERR"
