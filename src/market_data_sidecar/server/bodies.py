"""The body budget: body bytes in flight across all requests, reserved before a body is
read; beyond the budget a request is answered 503 with `Retry-After` before its body is
read. `bounded_bodies` is the middleware that reserves them.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable

from aiohttp import web
from aiohttp.typedefs import Handler

from market_data_sidecar.metrics import Metrics
from market_data_sidecar.server.faults import FAULTS
from market_data_sidecar.server.peers import crowded_out


class BodyBudget:
    """Body bytes in flight across all requests, reserved before a body is read, and
    shared out by peer as connections are: over the budget, a newcomer takes the oldest
    reservation of the peer holding the most bytes (its own when that is the one), whose
    connection is closed. A reservation that cannot be taken (`evict` None) is kept, and
    the newcomer refused. (Refusing newcomers instead would let a few slow bodies hold
    the budget for their whole deadline, and the store's POSTs be refused meanwhile.)"""

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


BODY_BUDGET = web.AppKey("body_budget", BodyBudget)


@web.middleware
async def bounded_bodies(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Reserve a request's body bytes (its declared length, or the most a body may be
    when it is chunked) for as long as the handler holds them; 503 when over budget and
    no reservation can be taken (`BodyBudget`)."""
    if not request.body_exists or request.method in ("GET", "HEAD"):
        return await handler(request)  # no route of these reads a body (probes, feedback)
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
