"""A TCP proxy of the tests' own, between a client and a server on loopback, that plays the
network's faults without root or a network namespace: a blackhole (bytes vanish both ways,
connections stay open), a reset (every connection gets an RST, new ones too) and a held
link whose bytes are delivered late, after newer connections' (what TCP does with a
segment retransmitted after a partition heals).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Literal

Mode = Literal["pass", "blackhole", "reset", "hold"]
CHUNK = 65536


class _Link:
    """One client connection and its upstream connection."""

    def __init__(
        self,
        proxy: TcpProxy,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.proxy = proxy
        self.client_reader, self.client_writer = client
        self.upstream_reader, self.upstream_writer = upstream
        #: Client bytes held back while the link is held, delivered late or never.
        self.held = bytearray()
        self.late: asyncio.Task[None] | None = None
        self.client_closed = False
        self.tasks = [
            asyncio.create_task(self._to_upstream(), name="proxy-to-upstream"),
            asyncio.create_task(self._to_client(), name="proxy-to-client"),
        ]

    async def _to_upstream(self) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await self.client_reader.read(CHUNK):
                self.proxy.bytes_from_clients += len(data)
                mode = self.proxy.mode
                if mode == "hold" or self.held or self.late is not None:
                    self.held += data
                elif mode == "pass":
                    self.upstream_writer.write(data)
                    await self.upstream_writer.drain()
                # blackhole: dropped
        self.client_closed = True
        if not self.held and self.late is None:
            self.upstream_writer.close()

    async def _to_client(self) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await self.upstream_reader.read(CHUNK):
                if self.proxy.mode == "pass" and not self.client_closed:
                    self.client_writer.write(data)
                    await self.client_writer.drain()
        if not self.client_closed:
            self.client_writer.close()

    def deliver_late(self, delay: float) -> None:
        """The held bytes reach the server `delay` seconds from now, whatever the client
        did meanwhile (it may have given up and closed)."""
        if self.held and self.late is None:
            self.late = asyncio.create_task(self._late(delay), name="proxy-late")

    async def _late(self, delay: float) -> None:
        await asyncio.sleep(delay)  # the fault's own timing, not a synchronisation
        with contextlib.suppress(OSError):
            data, self.held = bytes(self.held), bytearray()
            self.upstream_writer.write(data)
            await self.upstream_writer.drain()
            self.proxy.delivered_late += len(data)
        self.late = None
        if self.client_closed:
            # Let the server answer into the void, as it would to a gone client.
            await asyncio.sleep(0.5)
            self.upstream_writer.close()

    def reset(self) -> None:
        """Close both sides with an RST (SO_LINGER 0), as a middlebox resetting would."""
        for writer in (self.client_writer, self.upstream_writer):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        self.held.clear()

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        if self.late is not None:
            self.late.cancel()
        await asyncio.gather(
            *self.tasks, *([self.late] if self.late else []), return_exceptions=True
        )
        for writer in (self.client_writer, self.upstream_writer):
            writer.transport.abort()


class TcpProxy:
    """`await TcpProxy(upstream_port).start()`; point the client at `proxy.port`."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.mode: Mode = "pass"
        self.links: list[_Link] = []
        self.connections = 0
        self.bytes_from_clients = 0
        self.delivered_late = 0
        self._server: asyncio.Server | None = None
        self.port = 0

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.mode == "reset":
            sock = writer.get_extra_info("socket")
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return
        try:
            upstream = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self.links.append(_Link(self, (reader, writer), upstream))

    def blackhole(self) -> None:
        """Bytes vanish both ways; connections stay open (a partition, a dead route)."""
        self.mode = "blackhole"

    def reset(self) -> None:
        """Every connection is reset, and every new one as it arrives."""
        self.mode = "reset"
        for link in self.links:
            link.reset()
        self.links.clear()

    def hold(self) -> None:
        """What clients send is kept, not forwarded, and nothing comes back."""
        self.mode = "hold"

    def heal(self, *, late: float | None = None) -> None:
        """Pass again. With `late`, what was held reaches the server that many seconds
        from now (after anything sent on new connections); without, it is lost."""
        for link in self.links:
            if late is not None:
                link.deliver_late(late)
            else:
                link.held.clear()
        self.mode = "pass"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await asyncio.gather(*(link.close() for link in self.links))
        self.links.clear()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)


StartProxy = Callable[[int], Awaitable[TcpProxy]]
