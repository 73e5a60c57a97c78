"""A RESP parser with bounds, for every redis-py client the sidecar opens.

redis-py's own parsers trust the peer: a `$2000000000` announcement is read into memory
whole, `*1` nested 100,000 deep exhausts the stack (a `RecursionError` that escapes as
no Redis error at all), and a line without its `\\r\\n` is buffered up to the reader's
limit and then fails with a bare `ValueError`. A URL pointing at something that is not
Redis, or a Redis gone wrong, must cost the sidecar a failed attempt, not its memory.

So every reply is bounded in bytes, in values and in nesting, and anything outside the
bounds, or not RESP at all, raises `ReplyOutOfBounds` (an `InvalidResponse`, on which
redis-py drops the connection). The bounds fit every reply the sidecar asks for with
room to spare: XADD ids, PUBLISH counts, PING, `INFO server` (about 2 KiB), the results
of small Lua scripts, and XINFO GROUPS / CONSUMERS / STREAM and XPENDING of a stream
trimmed to its MAXLEN.

The parser speaks RESP2 and RESP3 (redis-py's RESP3 parser is its base, so push frames
and maintenance notifications keep working); it is handed to redis-py as `parser_class`.

Neither redis-py nor hiredis offers a bound on replies, so the parser leans on redis-py's
private names, and `redis` is pinned below its next major version. The names, each
checked for presence and shape by `tests/publishers/test_redis_private_names.py`, which
fails naming the installed redis-py version:

- `redis._parsers._AsyncRESP3Parser`: the base class, built with `socket_read_size`;
- its `_read_response(disable_decoding, push_request)`, called by `read_response`;
- its state: `_stream` (the connection's `asyncio.StreamReader`), `_buffer` (bytes read
  for the reply being parsed), `_pos` (where parsing is in `_buffer`), `_chunks` (bytes
  read since, joined to `_buffer` when a read resumes) and `_connected` (a bool);
- its `_clear()` (forget the reply read) and `_read(length)` (a bulk body and its
  `\\r\\n`);
- `redis.asyncio.connection.AbstractConnection.on_connect_check_health(check_health)`,
  the connect hook without its PING (used by `publishers/redis.py`).
"""

from __future__ import annotations

from typing import Any

from redis._parsers import _AsyncRESP3Parser
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse

KIB = 1024
MIB = 1024 * KIB
#: One line (a simple string, an error, a number, a length): the limit of the asyncio
#: stream reader redis-py opens, which fails beyond it; named here to say so.
MAX_LINE_BYTES = 64 * KIB
#: One bulk string. A stream entry of the sidecar is under 2 KiB and `INFO server` about
#: 2 KiB; a Redis value can be 512 MiB, which no reply the sidecar reads has reason to be.
MAX_BULK_BYTES = 1 * MIB
#: One whole reply, counted on the wire: XINFO CONSUMERS of a thousand consumers is about
#: 150 KiB, an XPENDING page of 50,000 entries about 3.5 MiB, an XRANGE page of 1,000
#: sidecar entries under 2 MiB. Longer lists are read in pages (`COUNT`).
MAX_REPLY_BYTES = 4 * MIB
#: Values in one reply (each costs a Python object, 30 to 90 bytes, whatever its size on
#: the wire): an XPENDING page of 50,000 entries is 250,000. At most about 25 MiB.
MAX_REPLY_VALUES = 250_000
#: Aggregates inside aggregates. XINFO STREAM FULL, the deepest reply Redis sends, nests
#: five deep; Lua results are what the scripts return.
MAX_DEPTH = 16

_SERVER_CLOSED = "Connection closed by server."
#: How much of an offending line an error shows (escaped by `repr`).
_SHOWN = 32


class ReplyOutOfBounds(InvalidResponse):
    """The peer sent what is not RESP, or a reply beyond the parser's bounds: it is not
    the Redis the sidecar was pointed at, or one gone wrong. The connection is dropped."""


class BoundedParser(_AsyncRESP3Parser):
    """redis-py's asyncio RESP parser, reading each reply within the bounds above."""

    def __init__(self, socket_read_size: int) -> None:
        super().__init__(socket_read_size)  # type: ignore[no-untyped-call]
        self._reply_bytes = 0
        self._reply_values = 0

    async def read_response(
        self, disable_decoding: bool = False, push_request: bool = False
    ) -> Any:
        # A reply starts: its budget is whole again. A read that was interrupted is parsed
        # again from its first byte too, so the budget is never counted twice.
        self._reply_bytes = 0
        self._reply_values = 0
        return await super().read_response(
            disable_decoding=disable_decoding, push_request=push_request
        )

    async def _read_response(
        self, disable_decoding: bool = False, push_request: bool = False, depth: int = 0
    ) -> Any:
        while True:
            if not self._stream or not self.encoder:
                raise RedisConnectionError(_SERVER_CLOSED)
            raw = await self._readline()
            kind, rest = raw[:1], raw[1:]
            if kind in (b"-", b"!"):
                return self._error(await self._bulk(rest, raw) if kind == b"!" else rest)
            if kind == b">":
                push = await self._items(_length(rest, raw), disable_decoding, push_request, depth)
                if not push:
                    raise ReplyOutOfBounds("an empty push frame")
                # As redis-py's own parser: hand the push on, then read the reply it
                # interleaved with (a loop, so a burst of pushes does not grow the stack).
                response = await self.handle_push_response(push)  # type: ignore[no-untyped-call]
                if push_request:
                    return response
                if not self._connected:
                    raise RedisConnectionError(_SERVER_CLOSED)
                continue
            value = await self._value(kind, rest, raw, disable_decoding, push_request, depth)
            if isinstance(value, bytes) and not disable_decoding:
                return self.encoder.decode(value)  # type: ignore[no-untyped-call]
            return value

    async def _value(
        self,
        kind: bytes,
        rest: bytes,
        raw: bytes,
        disable_decoding: bool,
        push_request: bool,
        depth: int,
    ) -> Any:
        """One value of any type but errors and pushes."""
        if kind == b"+":
            return rest
        if kind in (b":", b"("):
            return _integer(rest, raw)
        if kind == b"$":
            return await self._bulk(rest, raw)
        if kind in (b"*", b"~"):
            # A set may hold unhashable values: a list, as redis-py's parser returns it.
            count = _length(rest, raw)
            if count < 0:
                return None
            return await self._items(count, disable_decoding, push_request, depth)
        if kind == b"%":
            return await self._map(_length(rest, raw), disable_decoding, push_request, depth)
        if kind == b"_":
            return None
        if kind == b",":
            return _double(rest, raw)
        if kind == b"#":
            return rest == b"t"
        if kind == b"=":
            text = await self._bulk(rest, raw)
            return None if text is None else text[4:]  # after the `txt:` format prefix
        raise ReplyOutOfBounds(f"not a RESP reply: {_shown(raw)}")

    def _error(self, text: bytes | None) -> Exception:
        """An error reply: raised at once when redis-py maps it to a connection error
        (`LOADING`, ...), else returned, to be raised in its place in a pipeline."""
        message = (text or b"").decode("utf-8", errors="replace")
        error: Exception = self.parse_error(message)  # type: ignore[no-untyped-call]
        if isinstance(error, RedisConnectionError):
            self._clear()  # type: ignore[no-untyped-call]  # the reply was read whole
            raise error
        return error

    async def _items(
        self, count: int, disable_decoding: bool, push_request: bool, depth: int
    ) -> list[Any]:
        self._enter(count, depth)
        return [
            await self._read_response(disable_decoding, push_request, depth + 1)
            for _ in range(count)
        ]

    async def _map(
        self, count: int, disable_decoding: bool, push_request: bool, depth: int
    ) -> dict[Any, Any] | None:
        if count < 0:
            return None
        self._enter(2 * count, depth)
        mapping: dict[Any, Any] = {}
        for _ in range(count):
            key = await self._read_response(disable_decoding, push_request, depth + 1)
            if isinstance(key, list | dict | Exception):
                raise ReplyOutOfBounds("a RESP map keyed by an aggregate or an error")
            mapping[key] = await self._read_response(disable_decoding, push_request, depth + 1)
        return mapping

    def _enter(self, count: int, depth: int) -> None:
        """Before reading an aggregate's `count` values: refuse it if they would not fit,
        rather than find out after reading as many as the peer cares to send."""
        if depth + 1 > MAX_DEPTH:
            raise ReplyOutOfBounds(f"a reply nested deeper than {MAX_DEPTH}")
        self._count_values(count)

    async def _bulk(self, length_field: bytes, raw: bytes) -> bytes | None:
        """A bulk string's bytes, refused before any is read when it is over the bounds."""
        length = _length(length_field, raw)
        if length < 0:
            return None
        if length > MAX_BULK_BYTES:
            raise ReplyOutOfBounds(f"a bulk string of {length} bytes (at most {MAX_BULK_BYTES})")
        self._count_bytes(length + 2)
        data: bytes = await self._read(length)
        return data

    async def _readline(self) -> bytes:
        """The next line without its `\r\n` (as redis-py's parser reads it, keeping what
        was read for a resumed parse), within `MAX_LINE_BYTES`."""
        found = self._buffer.find(b"\r\n", self._pos)
        if found >= 0:
            line: bytes = self._buffer[self._pos : found]
        else:
            if self._stream is None:
                raise RedisConnectionError(_SERVER_CLOSED)
            try:
                data = await self._stream.readline()
            except ValueError:  # asyncio's reader: no `\n` within its limit
                raise ReplyOutOfBounds(f"a line over {MAX_LINE_BYTES} bytes") from None
            if not data.endswith(b"\n"):
                raise RedisConnectionError(_SERVER_CLOSED)
            if not data.endswith(b"\r\n"):
                # A text protocol's line (an SSH or SMTP banner): not a hang-up.
                raise ReplyOutOfBounds(f"not a RESP reply: {_shown(data)}")
            line = (self._buffer[self._pos :] + data)[:-2]
            self._chunks.append(data)
        if len(line) > MAX_LINE_BYTES:
            raise ReplyOutOfBounds(f"a line over {MAX_LINE_BYTES} bytes")
        self._pos += len(line) + 2
        self._count_bytes(len(line) + 2)
        return line

    def _count_bytes(self, count: int) -> None:
        self._reply_bytes += count
        if self._reply_bytes > MAX_REPLY_BYTES:
            raise ReplyOutOfBounds(f"a reply over {MAX_REPLY_BYTES} bytes")

    def _count_values(self, count: int) -> None:
        self._reply_values += count
        if self._reply_values > MAX_REPLY_VALUES:
            raise ReplyOutOfBounds(f"a reply of over {MAX_REPLY_VALUES} values")


def server_ms(reply: Any) -> int:
    """The server's clock in milliseconds, from its `TIME` reply (seconds, microseconds):
    what a stream entry's id is measured against."""
    return int(reply[0]) * 1000 + int(reply[1]) // 1000


def reply_text(value: Any) -> str:
    """A reply value as text: bytes decoded (what is not UTF-8 replaced), anything else
    as `str` gives it."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _length(field: bytes, raw: bytes) -> int:
    """A bulk or aggregate length: -1 (null) or a count."""
    length = _integer(field, raw)
    if length < -1:
        raise ReplyOutOfBounds(f"a negative length: {_shown(raw)}")
    return length


def _integer(field: bytes, raw: bytes) -> int:
    # Python refuses integers of over 4,300 digits, so a long line costs no CPU here.
    try:
        return int(field)
    except ValueError:
        raise ReplyOutOfBounds(f"not a RESP number: {_shown(raw)}") from None


def _double(field: bytes, raw: bytes) -> float:
    try:
        return float(field)
    except ValueError:
        raise ReplyOutOfBounds(f"not a RESP double: {_shown(raw)}") from None


def _shown(raw: bytes) -> str:
    """The start of what the peer sent, escaped: it may be anything."""
    return repr(raw[:_SHOWN]) + ("..." if len(raw) > _SHOWN else "")
