"""Redis fixtures: the shared server with a namespace of the test's own, and private
`redis-server`s on their own ports for faults, always stopped.

Load with `pytest_plugins = ["tests.support.redis_fixtures"]`. Fault tests stop, freeze and
restart only servers they started themselves; the shared server is never touched
beyond the keys of the test's own namespace.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from tests.support.redis_servers import SHARED_REDIS_URL, RedisServer


@pytest.fixture
def redis_server_factory(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """`redis_server_factory(*args, started=True)`: a private server, always stopped."""
    servers: list[RedisServer] = []

    def make(*args: str, started: bool = True) -> RedisServer:
        server = RedisServer(tmp_path, *args)
        servers.append(server)
        if started:
            server.start()
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def redis_server(redis_server_factory: Callable[..., RedisServer]) -> RedisServer:
    return redis_server_factory()


@pytest.fixture
def namespace() -> Iterator[str]:
    """A stream namespace (and channel prefix) of this test's own; its keys are removed."""
    name = f"sidecar-test-{uuid.uuid4().hex[:12]}"
    yield name
    with redis.Redis.from_url(SHARED_REDIS_URL) as client:
        # A fleet's keys carry the stream key as a hash tag: `{<key>}:fleet:...`.
        keys = [
            key
            for pattern in (f"{name}*", f"{{{name}*")
            for key in client.scan_iter(match=pattern, count=1000)
        ]
        if keys:
            client.delete(*keys)


@pytest.fixture
async def shared_redis() -> AsyncIterator[aioredis.Redis]:
    """A client of the shared server, answering `str`s."""
    client = aioredis.Redis.from_url(SHARED_REDIS_URL, decode_responses=True)
    yield client
    await client.aclose()
