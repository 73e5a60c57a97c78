"""A peer on a loopback port that a Redis target is pointed at, and that is not Redis: it
reads RESP commands like a server and answers each with raw bytes of its own choosing
(garbage, `-LOADING` forever, a 2 GB bulk string, nesting 100,000 deep, ...).

It counts the connections it accepts, so a test can see how many one attempt costs, and
`stop` closes every one of them, so a real `redis-server` can take the port over.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

#: Answers one command on the connection; returns False to close it.
Answer = Callable[[asyncio.StreamWriter], Awaitable[bool]]

HTTP_400 = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
LOADING = b"-LOADING Redis is loading the dataset in memory\r\n"
#: What one bulk-string attack announces.
HUGE = 2_000_000_000
CHUNK = 64 * 1024


async def garbage(writer: asyncio.StreamWriter) -> bool:
    """What an HTTP server says to a RESP command: a 400, then it hangs up."""
    writer.write(HTTP_400)
    await writer.drain()
    return False


async def loading(writer: asyncio.StreamWriter) -> bool:
    """A Redis that never finishes loading its dataset."""
    writer.write(LOADING)
    await writer.drain()
    return True


async def hang_up(writer: asyncio.StreamWriter) -> bool:
    """Accepts, reads the first command and closes without a word."""
    return False


def huge_bulk(pause: float) -> Answer:
    """`$2000000000`, then the bytes, a 64 KiB chunk every `pause` seconds (0: as fast as
    the sidecar reads them), until it hangs up or all were sent."""

    async def answer(writer: asyncio.StreamWriter) -> bool:
        writer.write(f"${HUGE}\r\n".encode())
        chunk = b"x" * CHUNK
        for _ in range(HUGE // CHUNK):
            writer.write(chunk)
            await writer.drain()
            if pause:
                await asyncio.sleep(pause)
        return False

    return answer


def nested(depth: int) -> Answer:
    """An array holding an array holding ... `depth` deep, then an integer."""
    reply = b"*1\r\n" * depth + b":1\r\n"

    async def answer(writer: asyncio.StreamWriter) -> bool:
        writer.write(reply)
        await writer.drain()
        return True

    return answer


def long_array(length: int, *, size: int = 3) -> Answer:
    """An array of `length` bulk strings of `size` bytes, sent as the sidecar reads."""
    element = f"${size}\r\n".encode() + b"a" * size + b"\r\n"
    per_chunk = max(1, CHUNK // len(element))

    async def answer(writer: asyncio.StreamWriter) -> bool:
        writer.write(f"*{length}\r\n".encode())
        for start in range(0, length, per_chunk):
            writer.write(element * min(per_chunk, length - start))
            await writer.drain()
        return True

    return answer


class FakeRedis:
    """Listens on `port` (a free one by default) and answers every command with `answer`."""

    def __init__(self, answer: Answer, *, port: int = 0) -> None:
        self.answer = answer
        self._port = port
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def open_connections(self) -> int:
        return len(self._writers)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> FakeRedis:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self._port)
        return self

    async def stop(self) -> None:
        """Stop listening and hang up on every connection."""
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        if self._connections:
            _, stuck = await asyncio.wait(self._connections, timeout=5)
            for task in stuck:
                task.cancel()
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> FakeRedis:
        return await self.start()

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        self._writers.add(writer)
        try:
            async for _ in _commands(reader):
                if not await self.answer(writer):
                    break
        except (OSError, asyncio.IncompleteReadError, ValueError):
            pass  # the sidecar hung up, as it should
        finally:
            self._connections.discard(task)
            self._writers.discard(writer)
            writer.transport.abort()


async def _commands(reader: asyncio.StreamReader) -> AsyncIterator[None]:
    """Each command the client sends: a RESP array of bulk strings, or an inline line."""
    while line := await reader.readline():
        if line.startswith(b"*"):
            for _ in range(int(line[1:])):
                length = int((await reader.readline())[1:])
                await reader.readexactly(length + 2)
        yield
