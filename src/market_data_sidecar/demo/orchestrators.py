"""Local orchestrators for the demo: where the relayed feedback actually arrives.

`HttpReceiver` counts what the webhook receiver (`webhooks.py`) gets; `StreamConsumer` reads
the Redis Stream exactly as the pipeline and the orchestrator do, through Core's
`RedisStreamsBus(...).subscribe("telemetry.feedback", group=..., consumer=...)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from loguru import logger

from market_data_sidecar.demo.listening import listening
from market_data_sidecar.demo.webhooks import Attempt, WebhookReceiver
from market_data_sidecar.feedback.scope import SEVERITY
from market_data_sidecar.settings import consumers_stream
from market_data_sidecar.views.model import ReceiverRow


@dataclass
class Received:
    """What one receiver has seen."""

    count: int = 0
    last: str = ""


class HttpReceiver:
    """Accepts Standard Webhooks POSTs of feedback and counts them (unique by `webhook-id`)."""

    name = "http-orchestrator"

    def __init__(self) -> None:
        self.received = Received()
        self._ids: set[str] = set()
        #: Each coordinator's latest level, as this orchestrator heard it.
        self._levels: dict[str, str] = {}
        self.url = ""
        # Counts, keeps nothing: the demo runs until the user stops it.
        self._receiver = WebhookReceiver(
            path="/feedback", status=204, record=False, on_attempt=self._count
        )

    @asynccontextmanager
    async def serving(self, host: str = "127.0.0.1") -> AsyncIterator[str]:
        """Listen on a free port; yields the webhook URL."""
        async with listening(self._receiver.app(), host) as port:
            self.url = f"http://{host}:{port}/feedback"
            yield self.url

    def _count(self, attempt: Attempt) -> None:
        event = attempt.json
        event_id = attempt.headers.get("webhook-id", "")
        if event_id and event_id in self._ids:
            return  # a retried delivery: already acted on
        self._ids.add(event_id)
        self._levels[str(event.get("coordinator_id"))] = str(event.get("level"))
        self.received.count += 1
        self.received.last = f"{event.get('coordinator_id')} {event.get('level')}"

    @property
    def level(self) -> str:
        """The worst level heard of any coordinator: the fleet's composite while this
        sidecar is its one member, as soon as each event is delivered."""
        return max(self._levels.values(), key=lambda level: SEVERITY.get(level, 0), default="ok")

    def row(self) -> ReceiverRow:
        return ReceiverRow(self.name, "http", self.received.count, self.received.last)


#: Seconds the demo waits for its stream consumer to honour a cancellation.
CANCEL_TIMEOUT = 2.0


class StreamConsumer:
    """A consumer group on `{namespace}:{namespace}.telemetry.feedback` (the key the
    pipeline and orchestrator read), read with Core's subscriber."""

    name = "stream-consumer"
    group = "demo-orchestrator"
    consumer = "demo-1"

    def __init__(self, redis_url: str, namespace: str) -> None:
        self.redis_url = redis_url
        self.namespace = namespace
        self.stream = consumers_stream(namespace)
        self.received = Received()
        self._task: asyncio.Task[None] | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}:{self.stream}"

    @asynccontextmanager
    async def consuming(self) -> AsyncIterator[None]:
        """Create the group first (so no event is missed), consume, and clean up the keys."""
        import redis.asyncio as aioredis
        from market_data_core.events import RedisStreamsBus

        client: Any = aioredis.from_url(self.redis_url)
        bus = RedisStreamsBus(redis_url=self.redis_url, namespace=self.namespace)
        try:
            # From id 0, before the sidecar writes anything: Core's subscribe would create
            # the group at `$`, after events the sidecar may already have written.
            await client.xgroup_create(self.key, self.group, id="0", mkstream=True)
            self._task = asyncio.create_task(self._consume(bus), name="demo:stream-consumer")
            yield
        finally:
            if self._task is not None:
                self._task.cancel()
                # Bounded: redis-py can swallow a cancellation that lands inside a blocking
                # read, and the demo must still exit on Ctrl-C.
                await asyncio.wait({self._task}, timeout=CANCEL_TIMEOUT)
            with contextlib.suppress(Exception):
                await bus.close()
            # The namespace is this run's own: leave the user's Redis as it was.
            with contextlib.suppress(Exception):
                await client.delete(self.key, f"{self.key}.dlq")
            await client.aclose()

    async def _consume(self, bus: Any) -> None:
        try:
            async for envelope in bus.subscribe(
                self.stream, group=self.group, consumer=self.consumer, block_ms=500
            ):
                event = envelope.payload
                self.received.count += 1
                self.received.last = f"{event.coordinator_id} {event.level.value}"
                await bus.ack(self.stream, envelope.id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the demo goes on without it, and says why
            logger.warning("stream consumer stopped: {}: {}", type(exc).__name__, exc)

    def row(self) -> ReceiverRow:
        return ReceiverRow(self.name, "redis-stream", self.received.count, self.received.last)


async def redis_reachable(url: str, deadline: float = 1.5) -> str | None:
    """None when Redis answers PING at `url`; else why not, in a few words."""
    try:
        import redis.asyncio as aioredis
    except ImportError:
        return "redis-py is not installed (pip install 'market-data-sidecar[redis]')"
    try:
        client: Any = aioredis.from_url(url, socket_connect_timeout=deadline)
    except ValueError as exc:
        return f"invalid URL: {exc}"
    try:
        async with asyncio.timeout(deadline):
            await client.ping()
    except TimeoutError:
        return f"no answer within {deadline:g}s"
    except Exception as exc:
        return _reason(exc)
    finally:
        await client.aclose()
    return None


def _reason(exc: BaseException) -> str:
    """`connection refused` rather than redis-py's "Error 111 connecting to ..."."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno:
            return os.strerror(seen.errno).lower()
        seen = seen.__cause__ or seen.__context__
    return str(exc) or type(exc).__name__
