"""Bounds on what a peer may hold: connections, time, and the bytes read at once.

The sidecar's port is on the pod network, so every pod in the cluster is a possible
hostile peer. aiohttp has no header deadline and keeps idle connections for an hour by
default, its parse-error answers echo the offending header and its log carries a
traceback with it; this module replaces those edges with bounded ones:

- `BoundedServer` / `BoundedHandler`: a connection cap shared out by peer (a newcomer
  replaces a connection of the peer holding the most, never refused), a deadline for the
  headers from a request's first byte, one for the body from the end of the headers, one
  for an answer the client does not read, an idle keep-alive timeout, and protocol errors
  answered with a short JSON body of our own.
- `BoundedRunner`: an `AppRunner` that serves through `BoundedServer`, answering the
  kubelet's plain probe GETs from cached state (`FastProbe`).
"""

from __future__ import annotations

import asyncio
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from market_data_sidecar.server.faults import FAULTS, ClientFaults
from market_data_sidecar.server.peers import crowded_out

#: Seconds an answered request's unread body is read and dropped before the connection
#: closes: closing at once resets it, and the client never sees its 503 (aiohttp: 10 s).
LINGERING_TIME = 1.0


@dataclass(frozen=True)
class Bounds:
    """What one client may hold. No defaults: every figure is a setting of the same name
    (`wiring.bounds_from`), whose default is the only one."""

    max_connections: int
    header_timeout: float
    body_timeout: float
    idle_timeout: float
    write_timeout: float
    body_bytes_in_flight: int
    max_body_bytes: int
    fault_log_interval: float


BOUNDS = web.AppKey("bounds", Bounds)


#: Requests a connection may have queued behind the one being answered.
MAX_PIPELINED = 8
#: Seconds a connection must have been idle to be evicted before busier ones.
IDLE_GRACE = 0.5
#: Bytes asyncio reads from one connection at a time (its default is 256 KiB).
READ_SIZE = 64 * 1024


class BoundedHandler(RequestHandler):
    """aiohttp's per-connection protocol with deadlines, and errors of our own."""

    def __init__(self, manager: BoundedServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._server = manager
        self._deadline: asyncio.TimerHandle | None = None
        self._write_deadline: asyncio.TimerHandle | None = None
        self._body: StreamReader | None = None
        self.last_active = 0.0
        #: The address the connection comes from: connections are shared out per peer.
        self.peer = ""
        #: The deadline this connection missed, if it was closed for one.
        self.deadline_missed: str | None = None

    @property
    def idle(self) -> bool:
        """Between requests (or before the first): nothing would be lost by closing it."""
        body = self._body
        return (
            not self._request_in_progress and not self._messages and (body is None or body.is_eof())
        )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.last_active = self._loop.time()
        peername = transport.get_extra_info("peername")
        # A peer that connected and reset at once has no name any more: one bucket for them.
        self.peer = str(peername[0]) if isinstance(peername, tuple) and peername else "?"
        if hasattr(transport, "max_size"):
            # asyncio reads up to 256 KiB per socket per loop turn before aiohttp can pause
            # it: what one loop turn reads must not grow with the connections sending.
            transport.max_size = READ_SIZE
        super().connection_made(transport)
        self._server.admit(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_deadline()
        self._cancel_write_deadline()
        self._server.release(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.last_active = self._loop.time()
        self._server.touch(self)
        before = self._request_count
        super().data_received(data)
        if len(self._messages) > MAX_PIPELINED:
            # No client of the sidecar pipelines (the kubelet, Prometheus and the store wait
            # for each answer): a connection queueing more is closed, so a peer cannot make
            # the sidecar write answers it never reads while probes wait.
            self.deadline_missed = "pipelining"
            self._server.faults.record("pipelining")
            self.abort()
            return
        if self._request_count != before:
            # Headers complete: the next deadline, if any, is for the body.
            self._cancel_deadline()
            payload = self._messages[-1][1] if self._messages else None
            if payload is not None and not payload.is_eof():
                self._body = payload
                self._arm("body_timeout", self._server.bounds.body_timeout)
        elif self._deadline is None and data and (self._body is None or self._body.is_eof()):
            # The first byte of a request: its headers are due within the deadline.
            self._body = None
            self._arm("header_timeout", self._server.bounds.header_timeout)

    # A client that sends requests and never reads the answers fills the socket's buffers;
    # aiohttp then waits in `drain()` with no deadline, and the connection is never idle,
    # so nothing else would ever close it: its answer gets a deadline of its own.
    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_deadline is None:
            self._write_deadline = self._loop.call_later(
                self._server.bounds.write_timeout, self._write_deadline_passed
            )

    def resume_writing(self) -> None:
        self._cancel_write_deadline()
        super().resume_writing()

    @property
    def writing_blocked(self) -> bool:
        """An answer waits on the client to read: closing it loses nothing it would read."""
        return self._write_deadline is not None

    def _write_deadline_passed(self) -> None:
        self._write_deadline = None
        self.deadline_missed = "write_timeout"
        self._server.faults.record("write_timeout")
        self.abort()

    def abort(self) -> None:
        """Close now, dropping what is buffered for the client: `close()` would wait for a
        client that does not read to take it first."""
        transport = self.transport
        self._cancel_deadline()
        self._cancel_write_deadline()
        self._fail_body()
        self.force_close()
        if transport is not None:
            transport.abort()

    def _fail_body(self) -> None:
        """A handler still reading the body gets a ConnectionError (the client's doing,
        answered and counted so), not aiohttp's RuntimeError for a closed connection,
        which would be logged as a server error with a traceback."""
        body = self._body
        if body is not None and not body.is_eof():
            body.set_exception(ConnectionResetError("connection closed by the sidecar"))

    def evict(self) -> None:
        """Closed to make room for a newcomer when the cap is reached (counted so)."""
        self.deadline_missed = "evicted"
        self.abort()

    def _cancel_write_deadline(self) -> None:
        if self._write_deadline is not None:
            self._write_deadline.cancel()
            self._write_deadline = None

    def _arm(self, kind: str, timeout: float) -> None:
        self._deadline = self._loop.call_later(timeout, self._deadline_passed, kind)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _deadline_passed(self, kind: str) -> None:
        self._deadline = None
        if kind == "body_timeout" and (self._body is None or self._body.is_eof()):
            return
        self.deadline_missed = kind
        self._server.faults.record(kind)
        self._fail_body()
        self.force_close()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A short JSON error of our own: aiohttp's echoes the request's bytes (a header
        with a token in it) and logs a traceback holding them."""
        if request.writer.output_size > 0:
            raise ConnectionError("the response has started: no error answer is possible")
        if status >= 500:
            error = "request timed out" if status == 504 else "internal error"
            self._server.faults.server_error("error serving a request", exc)
        elif isinstance(exc, LineTooLong):
            status, error = 431, "request line or header fields too large"
            self._server.faults.record("header_too_large", type(exc).__name__)
        else:
            error = "malformed request"
            self._server.faults.record("malformed", type(exc).__name__ if exc else "")
        response = web.json_response({"error": error}, status=status)
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kw: Any) -> None:
        what = str(args[0]) if args else "error serving a request"
        exc = kw.get("exc_info")
        self._server.faults.server_error(what, exc if isinstance(exc, BaseException) else None)


class BoundedServer(web.Server):
    """aiohttp's connection manager, with a cap on open connections shared fairly by peer.

    At the cap a newcomer is always let in, and the connection it replaces is taken from
    the peer holding the most (the newcomer's own when that is the one): a peer can only
    ever crowd out itself, so probes from the kubelet, or the store's POSTs, are never
    refused for want of a slot whatever another peer holds, idle, busy or blocked. Idle
    connections go first, then the least recently active (`_victim`). Refusing newcomers
    instead would let connections that never read their answers lock every other peer
    out."""

    def __init__(self, *args: Any, bounds: Bounds, faults: ClientFaults, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bounds = bounds
        self.faults = faults
        self._gauge = faults.metrics.connections
        #: Open connections, the least recently active first.
        self._open: OrderedDict[BoundedHandler, None] = OrderedDict()
        #: Open connections per peer address.
        self._per_peer: Counter[str] = Counter()

    def __call__(self) -> BoundedHandler:
        return BoundedHandler(self, loop=self._loop, **self._kwargs)

    def admit(self, newcomer: BoundedHandler) -> None:
        """Room for `newcomer`, made at the cap by evicting another connection."""
        if len(self._open) >= self.bounds.max_connections:
            victim = self._victim(newcomer.peer)
            if victim is not None:
                self._forget(victim)
                victim.evict()
                self.faults.record("evicted", "connection cap")
        self._open[newcomer] = None
        self._per_peer[newcomer.peer] += 1
        self._gauge.set(len(self._open))

    def _victim(self, peer: str) -> BoundedHandler | None:
        """The newcomer's own peer's connection if that peer holds the most, else the
        heaviest peer's: the least recently active that has been idle for `IDLE_GRACE`,
        else the least recently active. (A connection just made is idle until its request
        arrives: taking those first let a flood of connect-then-close take probes' slots.)"""
        heaviest = crowded_out(self._per_peer, peer)
        settled = self._loop.time() - IDLE_GRACE
        oldest = None
        for handler in self._open:  # least recently active first
            if handler.peer in heaviest:
                if handler.idle and handler.last_active < settled:
                    return handler
                oldest = oldest or handler
        return oldest

    def touch(self, handler: BoundedHandler) -> None:
        """`handler` received bytes: it is now the most recently active."""
        if handler in self._open:
            self._open.move_to_end(handler)

    def release(self, handler: BoundedHandler) -> None:
        if handler in self._open:
            self._forget(handler)
        self._gauge.set(len(self._open))

    def _forget(self, handler: BoundedHandler) -> None:
        del self._open[handler]
        left = self._per_peer[handler.peer] - 1
        if left:
            self._per_peer[handler.peer] = left
        else:
            del self._per_peer[handler.peer]

    async def shutdown(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 (aiohttp's)
        """Connections whose answers wait on a client that does not read are dropped at
        once: SIGTERM must not wait out their deadlines."""
        for handler in list(self._open):
            if handler.writing_blocked:
                handler.abort()
        await super().shutdown(timeout)


#: A probe answered without the router or middlewares: it reads only cached state.
FastProbe = Callable[[], web.StreamResponse]
FAST_PROBES = web.AppKey("fast_probes", dict[str, FastProbe])


class BoundedRunner(web.AppRunner):
    """An `AppRunner` serving through `BoundedServer`, with the app's `Bounds`."""

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()  # starts and freezes the app
        app = self.app
        bounds = app[BOUNDS]
        kwargs = dict(plain._kwargs)
        # auto_decompress=False: aiohttp inflates a `Content-Encoding` body as it arrives,
        # whether or not anyone reads it; nothing here takes one (415, middleware.py).
        kwargs.update(
            keepalive_timeout=bounds.idle_timeout,
            lingering_time=LINGERING_TIME,
            auto_decompress=False,
        )
        return BoundedServer(
            _with_fast_probes(plain.request_handler, app.get(FAST_PROBES, {})),
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=plain._loop,
            bounds=bounds,
            faults=app[FAULTS],
            **kwargs,
        )


def _with_fast_probes(
    routed: Callable[[BaseRequest], Awaitable[web.StreamResponse]], probes: dict[str, FastProbe]
) -> Callable[[BaseRequest], Awaitable[web.StreamResponse]]:
    """`routed`, except that a plain `GET` of a probe path (no query, no body, no
    encoding) is answered by its `FastProbe`: the kubelet's probes at bare aiohttp speed."""

    async def handle(request: BaseRequest) -> web.StreamResponse:
        if request.method == "GET" and not request.body_exists:
            probe = probes.get(request.raw_path)
            if probe is not None and "Content-Encoding" not in request.headers:
                return probe()
        return await routed(request)

    return handle
