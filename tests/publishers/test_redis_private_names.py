"""The fence around `publishers/redis_protocol.py`: every redis-py private name the
bounded parser leans on is still there, in the shape it relies on. A redis-py release
that renames or reshapes one fails here, naming the installed version, rather than in a
reply parsed wrong in production.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator

import pytest
import redis
import redis.asyncio as aioredis
from redis._parsers import _AsyncRESP3Parser
from redis.asyncio.connection import AbstractConnection

from market_data_sidecar.publishers.redis_protocol import BoundedParser
from tests.support.redis_servers import SHARED_REDIS_URL

VERSION = f"redis-py {redis.__version__}"


def parameters(function: object) -> list[str]:
    """The parameter names of `function`; none when it is not callable at all."""
    return list(inspect.signature(function).parameters) if callable(function) else []


def fenced(condition: bool, what: str) -> None:
    """Fail naming the installed redis-py and what the parser no longer finds."""
    assert condition, f"{VERSION}: {what}; publishers/redis_protocol.py needs revisiting"


def test_the_parser_base_class_and_its_methods_keep_their_shape() -> None:
    fenced(inspect.isclass(_AsyncRESP3Parser), "redis._parsers._AsyncRESP3Parser is gone")
    fenced(
        parameters(_AsyncRESP3Parser.__init__)[1:] == ["socket_read_size"],
        "_AsyncRESP3Parser(socket_read_size) changed",
    )
    read_response = getattr(_AsyncRESP3Parser, "_read_response", None)
    fenced(
        read_response is not None and inspect.iscoroutinefunction(read_response),
        "_AsyncRESP3Parser._read_response is not a coroutine method",
    )
    fenced(
        parameters(read_response)[1:3] == ["disable_decoding", "push_request"],
        "_AsyncRESP3Parser._read_response(disable_decoding, push_request) changed",
    )
    fenced(
        parameters(_AsyncRESP3Parser.read_response)[1:] == ["disable_decoding", "push_request"],
        "_AsyncRESP3Parser.read_response(disable_decoding, push_request) changed",
    )
    read = getattr(_AsyncRESP3Parser, "_read", None)
    fenced(
        read is not None and inspect.iscoroutinefunction(read),
        "_AsyncRESP3Parser._read is not a coroutine method",
    )
    fenced(parameters(read)[1:] == ["length"], "_AsyncRESP3Parser._read(length) changed")
    clear = getattr(_AsyncRESP3Parser, "_clear", None)
    fenced(callable(clear) and parameters(clear)[1:] == [], "_AsyncRESP3Parser._clear() changed")
    check_health = getattr(AbstractConnection, "on_connect_check_health", None)
    fenced(
        check_health is not None and inspect.iscoroutinefunction(check_health),
        "AbstractConnection.on_connect_check_health is not a coroutine method",
    )
    fenced(
        "check_health" in parameters(check_health),
        "AbstractConnection.on_connect_check_health(check_health) changed",
    )


def test_a_new_parser_holds_the_state_it_reads() -> None:
    parser = BoundedParser(65536)
    fenced(parser._buffer == b"", "a new parser's _buffer is not empty bytes")
    fenced(parser._pos == 0, "a new parser's _pos is not 0")
    fenced(parser._chunks == [], "a new parser's _chunks is not an empty list")
    fenced(parser._stream is None, "a new parser's _stream is not None")
    fenced(parser._connected is False, "a new parser's _connected is not False")


@pytest.fixture
async def connected() -> AsyncIterator[BoundedParser]:
    """A parser on a real connection to the shared Redis, as the publishers open it."""
    client = aioredis.Redis.from_url(SHARED_REDIS_URL, parser_class=BoundedParser, protocol=2)
    connection = await client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        parser = connection._parser
        assert isinstance(parser, BoundedParser)
        yield parser
    finally:
        await client.connection_pool.release(connection)
        await client.aclose()


async def test_a_connected_parser_reads_and_clears_through_them(
    connected: BoundedParser,
) -> None:
    fenced(
        isinstance(connected._stream, asyncio.StreamReader),
        "a connected parser's _stream is not the connection's asyncio.StreamReader",
    )
    fenced(connected._connected is True, "a connected parser's _connected is not True")
    connected._chunks.append(b"left over")
    connected._buffer = b"left over"
    connected._clear()  # type: ignore[no-untyped-call]
    fenced(
        connected._buffer == b"" and connected._chunks == [],
        "_clear() no longer empties _buffer and _chunks",
    )
