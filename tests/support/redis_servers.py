"""Redis test helpers: a private `redis-server`, Core's own stream consumer, dead letters.

The fixtures that use them are in `tests/support/redis_fixtures.py`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import uuid
from collections.abc import AsyncGenerator
from pathlib import Path
from types import TracebackType
from typing import Any

import redis
import redis.asyncio as aioredis
from market_data_core.events import EventEnvelope, RedisStreamsBus
from redis.typing import StreamRangeResponse

from tests.support.helpers import eventually, free_port, stop_process, wait_until

SHARED_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
FEEDBACK_STREAM = "telemetry.feedback"


def feedback_stream(namespace: str) -> str:
    """The stream the real consumers read in a namespace (Core's bus adds the prefix)."""
    return f"{namespace}.{FEEDBACK_STREAM}"


def feedback_key(namespace: str) -> str:
    """The Redis key a default `redis-stream` target writes."""
    return f"{namespace}:{feedback_stream(namespace)}"


def stream_fields(reply: StreamRangeResponse | None) -> list[dict[str, str]]:
    """The fields of each entry of an XRANGE/XREVRANGE reply, as text, whatever the
    client's `decode_responses` (redis-py types a reply as bytes-or-str, maybe None)."""
    return [
        {_text(name): _text(value) for name, value in (fields or {}).items()}
        for _, fields in reply or []
    ]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# -- a private redis-server ------------------------------------------------------------------


class RedisServer:
    """`redis-server` in the foreground on its own port, without persistence."""

    def __init__(self, directory: Path, *args: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.directory = directory
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self._frozen = False

    def start(self) -> None:
        """Start (or restart, on the same port) and wait until it answers."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        log = (self.directory / f"redis-{self.port}.log").open("ab")
        with log:
            self.proc = subprocess.Popen(
                [
                    "redis-server",
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--daemonize",
                    "no",
                    "--dir",
                    str(self.directory),
                    *self.args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_until(self.answers, timeout=10, message=f"redis-server on port {self.port}")

    def answers(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            log = (self.directory / f"redis-{self.port}.log").read_text(errors="replace")
            raise AssertionError(f"redis-server on port {self.port} is not running:\n{log}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                reply = sock.recv(64)
        except OSError:
            return False
        return reply.startswith((b"+PONG", b"-NOAUTH"))

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.thaw()
        stop_process(self.proc, grace=10)

    def freeze(self) -> None:
        """SIGSTOP: connections are still accepted by the kernel, nothing answers."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        self._frozen = True

    def thaw(self) -> None:
        if self._frozen and self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)
            self._frozen = False


# -- Core's consumer -------------------------------------------------------------------------


class CoreConsumer:
    """One consumer of a consumer group, reading with Core's `RedisStreamsBus.subscribe`.

    Reads in a task until closed; `async with` returns once the group exists, so
    events written afterwards are the group's to read (Core creates it at "$").
    """

    def __init__(self, redis_url: str, namespace: str, group: str, consumer: str = "c1") -> None:
        self.bus = RedisStreamsBus(redis_url=redis_url, namespace=namespace)
        self._admin = aioredis.Redis.from_url(redis_url, decode_responses=True)
        self.stream = feedback_stream(namespace)
        self.key = feedback_key(namespace)
        self.group = group
        self.consumer = consumer
        self.received: list[EventEnvelope[Any]] = []
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> CoreConsumer:
        self._subscription = self.bus.subscribe(
            self.stream, group=self.group, consumer=self.consumer
        )
        self._task = asyncio.create_task(self._read(), name=f"core-consumer-{self.group}")
        self._task.add_done_callback(lambda _: self._arrived.set())
        await eventually(self._group_exists, message=f"consumer group {self.group}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._task is not None
        # redis-py can swallow a cancellation that lands just as a blocking read
        # returns (redis/redis-py#2028): cancel until the task has really ended.
        while not self._task.done():
            self._task.cancel()
            await asyncio.wait([self._task], timeout=1.0)
        if isinstance(self._subscription, AsyncGenerator):  # Core types it as an iterator
            await self._subscription.aclose()
        await self.bus.close()
        await self._admin.aclose()

    async def _read(self) -> None:
        async for envelope in self._subscription:
            self.received.append(envelope)
            self._arrived.set()

    async def _group_exists(self) -> bool:
        assert self._task is not None
        if self._task.done():
            self._task.result()  # surfaces the subscriber's error
        try:
            groups = await self._admin.xinfo_groups(self.key)
        except redis.ResponseError:
            return False
        return any(group["name"] == self.group for group in groups)

    async def take(self, count: int, *, timeout: float = 10.0) -> list[EventEnvelope[Any]]:
        """Wait (up to `timeout`) until at least `count` envelopes arrived; return them all."""
        assert self._task is not None
        async with asyncio.timeout(timeout):
            while len(self.received) < count:
                if self._task.done():
                    self._task.result()
                    raise AssertionError(f"subscription ended after {len(self.received)}")
                self._arrived.clear()
                await self._arrived.wait()
        return list(self.received)


async def dead_letters(client: aioredis.Redis, namespace: str) -> int:
    """Entries Core's subscriber dead-lettered (could not decode)."""
    return int(await client.xlen(f"{feedback_key(namespace)}.dlq"))


async def limited_user(server: RedisServer, *denied: str) -> str:
    """A URL of `server` for a user `sidecar` allowed every command but `denied`."""
    password = uuid.uuid4().hex
    async with aioredis.Redis.from_url(server.url) as admin:
        await admin.acl_setuser(
            "sidecar",
            enabled=True,
            passwords=[f"+{password}"],
            keys=["~*"],
            commands=["+@all", *(f"-{command}" for command in denied)],
        )
    return server.url.replace("redis://", f"redis://sidecar:{password}@")
