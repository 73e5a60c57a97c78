"""Bounds on what a client can make the sidecar hold: connections, time, body bytes, log lines.

The sidecar's port is on the pod network, so every pod in the cluster is a possible
hostile peer. aiohttp has no header deadline and keeps idle connections for an hour by
default, its parse-error answers echo the offending header and its log carries a
traceback with it; this module replaces those edges with bounded ones:

- `BoundedServer` / `BoundedHandler`: a connection cap shared out by peer (a newcomer
  replaces a connection of the peer holding the most, never refused), a deadline for the
  headers from a request's first byte, one for the body from the end of the headers, one
  for an answer the client does not read, an idle keep-alive timeout, and protocol errors
  answered with a short JSON body of our own.
- `BodyBudget` / `bounded_bodies`: body bytes in flight across all requests; beyond the
  budget a request is answered 503 with `Retry-After` before its body is read.
- `ClientFaults`: every client fault counted by kind, logged at most once per kind per
  interval with the count since the last line (`logs.ThrottledLog`).
- `BoundedRunner`: an `AppRunner` that serves through `BoundedServer`.
"""

from __future__ import annotations

import asyncio
import errno
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from loguru import logger

from market_data_sidecar.feedback.state import DEFAULT_LIMIT, RelayState, encode
from market_data_sidecar.logs import ThrottledLog
from market_data_sidecar.metrics import Metrics

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Seconds an answered request's unread body is read and dropped before the connection
#: closes: closing at once resets it, and the client never sees its 503 (aiohttp: 10 s).
LINGERING_TIME = 1.0
#: The accept errors asyncio reports when the process has no file descriptor left.
_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
#: The errors of a socket whose client has already gone.
_PEER_GONE = {errno.ENOTCONN, errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED}


@dataclass(frozen=True)
class Bounds:
    """What one client may hold; every figure is from the settings (see docs/configuration.md)."""

    max_connections: int = 256
    header_timeout: float = 5.0
    body_timeout: float = 10.0
    idle_timeout: float = 30.0
    write_timeout: float = 5.0
    body_bytes_in_flight: int = 8 * 1024 * 1024
    max_body_bytes: int = 1024 * 1024
    fault_log_interval: float = 10.0


# -- logs --------------------------------------------------------------------------------------


class ClientFaults:
    """Client faults (bad framing, timeouts, aborts, 4xx), counted and logged sparingly.

    `detail` is always text of the sidecar's own (an exception's type, a status): never
    anything the client sent, which may be a token."""

    def __init__(self, metrics: Metrics, interval: float) -> None:
        self.metrics = metrics
        self._log = ThrottledLog(interval)

    def record(self, kind: str, detail: str = "") -> None:
        self.metrics.client_faults.labels(kind).inc()
        count = self._log.note(kind)
        if count:
            suffix = f" ({detail})" if detail else ""
            logger.warning(
                "client fault: {}{}; {} since the last line about it", kind, suffix, count
            )

    def server_error(self, what: str, exc: BaseException | None) -> None:
        """An error below the application (aiohttp's own), logged without a traceback:
        its frames may hold the request's headers."""
        count = self._log.note(f"server:{what}")
        if count:
            name = type(exc).__name__ if exc is not None else "no exception"
            logger.error("{}: {}; {} since the last line about it", what, name, count)

    def accept_error(self, exc: BaseException | None) -> None:
        """The listening socket could not accept (no file descriptor left)."""
        self.metrics.accept_errors.inc()
        count = self._log.note("accept")
        if count:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            logger.error(
                "cannot accept connections: {}; {} since the last line about it", reason, count
            )


def install_accept_error_log(loop: asyncio.AbstractEventLoop, faults: ClientFaults) -> None:
    """Route asyncio's accept errors (a traceback per retry, every second, while out of
    file descriptors) and a gone client's socket errors to one counted line per interval;
    anything else as before."""
    previous = loop.get_exception_handler()

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in _OUT_OF_RESOURCES:
            faults.accept_error(exc)
        elif isinstance(exc, OSError) and exc.errno in _PEER_GONE:
            # A client that connected and closed at once, seen by a callback already queued
            # for it: its doing, counted, and no traceback (there was one per connection).
            faults.record("connection_lost", type(exc).__name__)
        elif previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handle)


# -- body bytes ------------------------------------------------------------------------------


class BodyBudget:
    """Body bytes in flight across all requests, reserved before a body is read, and
    shared out by peer as connections are: over the budget, a newcomer takes the oldest
    reservation of the peer holding the most bytes (its own when that is the one), whose
    connection is closed. A reservation that cannot be taken (`evict` None) is kept, and
    the newcomer refused. (Refusing newcomers let eight slow 1 MiB bodies hold the budget
    for their whole deadline, and every one of the store's POSTs got 503 meanwhile.)"""

    def __init__(self, limit: int, *, max_body_bytes: int, metrics: Metrics) -> None:
        self.limit = limit
        self.max_body_bytes = max_body_bytes
        self.in_flight = 0
        self._gauge = metrics.body_bytes_in_flight
        #: Reservations, the oldest first: size, peer, and how to end the request.
        self._held: OrderedDict[object, tuple[int, str, Callable[[], None] | None]] = OrderedDict()

    def reserve(
        self, size: int, *, peer: str = "", evict: Callable[[], None] | None = None
    ) -> object | None:
        """A token for `release`, or None when no room can be made."""
        while self.in_flight + size > self.limit:
            victim = self._victim(peer)
            if victim is None:
                return None
            evict_victim = self._held[victim][2]
            self.release(victim)
            if evict_victim is not None:
                evict_victim()
        token = object()
        self._held[token] = (size, peer, evict)
        self.in_flight += size
        self._gauge.set(self.in_flight)
        return token

    def release(self, token: object) -> None:
        held = self._held.pop(token, None)
        if held is not None:
            self.in_flight -= held[0]
            self._gauge.set(self.in_flight)

    def _victim(self, peer: str) -> object | None:
        per_peer: Counter[str] = Counter()
        for size, holder, _ in self._held.values():
            per_peer[holder] += size
        heaviest = crowded_out(per_peer, peer)
        for token, (_, holder, evict) in self._held.items():  # the oldest first
            if holder in heaviest and evict is not None:
                return token
        return None


def crowded_out(held: Mapping[str, int], peer: str) -> set[str]:
    """The peers a newcomer from `peer` takes a connection or a body's bytes from, by what
    each holds: its own peer when that holds the most, else those holding the most. A peer
    can only ever crowd out itself, never the kubelet or the store."""
    top = max(held.values(), default=0)
    own = held.get(peer, 0)
    if own and own >= top:
        return {peer}
    return {name for name, amount in held.items() if amount == top}


BODY_BUDGET = web.AppKey("body_budget", BodyBudget)
FAULTS = web.AppKey("client_faults", ClientFaults)
BOUNDS = web.AppKey("bounds", Bounds)


@web.middleware
async def bounded_bodies(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Reserve a request's body bytes (its declared length, or the most a body may be
    when it is chunked) for as long as the handler holds them; 503 when over budget and
    no reservation can be taken (`BodyBudget`)."""
    if not request.body_exists or request.method in ("GET", "HEAD"):
        return await handler(request)  # no route of these reads a body (server.py)
    budget = request.app[BODY_BUDGET]
    declared = request.content_length
    size = min(declared if declared is not None else budget.max_body_bytes, budget.max_body_bytes)
    faults = request.app[FAULTS]
    evict = getattr(request.protocol, "evict", None)  # BoundedHandler's; None in tests

    def preempted() -> None:
        faults.record("preempted")
        if evict is not None:
            evict()

    token = budget.reserve(
        size, peer=request.remote or "", evict=preempted if evict is not None else None
    )
    if token is None:
        faults.record("over_budget")
        response = web.json_response(
            {"error": "too many request bodies in flight; retry later"},
            status=503,
            headers={"Retry-After": "1"},
        )
        response.force_close()  # the body is not read: the connection cannot be reused
        return response
    try:
        return await handler(request)
    finally:
        budget.release(token)


# -- connections -----------------------------------------------------------------------------


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
            # it: 150 connections sending bodies at once were 37 MiB of reads in one turn.
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
            # for each answer); 600 connections pipelining 64 GETs each and never reading
            # the answers made the sidecar write ~10,000 of them, and probes waited 250 ms.
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
    # so nothing else would ever close it (600 of them once held every slot for minutes).
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
    instead let
    600 connections that never read their answers lock every other peer out."""

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
        # whether or not anyone reads it; nothing here takes one (415, server.py).
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


# -- responses -------------------------------------------------------------------------------

#: Bytes of `GET /feedback`; `GET /` renders the same state. Past it, fewer coordinators
#: are listed (and counted as omitted): every answer, and the work to render it, is bounded.
MAX_RELAY_STATE_BYTES = 128 * 1024
#: Seconds a rendered answer is reused while what it shows has not visibly changed.
RENDER_TTL = 0.5


class BoundedRelayView:
    """The relay's state fitted to `max_bytes` when encoded, rendered again only when
    `fingerprint()` changes or after `ttl` seconds: four clients reading `GET /feedback`
    in a loop must not keep the event loop from answering probes."""

    def __init__(
        self,
        view: Callable[[int], RelayState],
        fingerprint: Callable[[], object],
        *,
        max_bytes: int = MAX_RELAY_STATE_BYTES,
        ttl: float = RENDER_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._view = view
        self._fingerprint = fingerprint
        self.max_bytes = max_bytes
        self.ttl = ttl
        self._clock = clock
        self._rendered: tuple[float, object, RelayState, bytes] | None = None
        #: Incremented at every render, so answers built from the state can be cached too.
        self.generation = 0

    def state(self) -> RelayState:
        return self._current()[0]

    def body(self) -> bytes:
        return self._current()[1]

    def _current(self) -> tuple[RelayState, bytes]:
        now = self._clock()
        fingerprint = self._fingerprint()
        rendered = self._rendered
        if rendered is not None and now < rendered[0] and rendered[1] == fingerprint:
            return rendered[2], rendered[3]
        state, body = self._fit()
        self._rendered = (now + self.ttl, fingerprint, state, body)
        self.generation += 1
        return state, body

    def _fit(self) -> tuple[RelayState, bytes]:
        limit = DEFAULT_LIMIT
        state = self._view(limit)
        body = encode(state)
        while len(body) > self.max_bytes and limit > 1:
            # Coordinators dominate the size: scale the count down, with a margin.
            limit = max(1, min(limit - 1, limit * self.max_bytes * 9 // (10 * len(body))))
            state = self._view(limit)
            body = encode(state)
        return state, body
