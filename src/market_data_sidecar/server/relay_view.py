"""The render cache for `GET /feedback` (and the page that shows the same state): the
relay's state fitted to a byte bound, rendered again only when it visibly changed."""

from __future__ import annotations

import time
from collections.abc import Callable

from aiohttp import web

from market_data_sidecar.feedback.relay import Relay
from market_data_sidecar.feedback.state import DEFAULT_LIMIT, RelayState, encode

#: Bytes of `GET /feedback`; `GET /` renders the same state. Past it, fewer coordinators
#: are listed (and counted as omitted): every answer, and the work to render it, is bounded.
MAX_RELAY_STATE_BYTES = 128 * 1024
#: Seconds a rendered answer is reused while what it shows has not visibly changed.
RENDER_TTL = 0.5


class BoundedRelayView:
    """The relay's state fitted to `max_bytes` when encoded, rendered again only when
    `fingerprint()` changes or after `ttl` seconds: clients reading `GET /feedback` in a
    loop must not keep the event loop from answering probes."""

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


def relay_view(relay: Relay) -> BoundedRelayView:
    """`relay`'s state, rendered again when it changes visibly: a POST, or a target's
    record (an event synthesized meanwhile shows within `RENDER_TTL`)."""
    return BoundedRelayView(
        relay.view,
        lambda: (relay.last_store_event_at, relay.synthesizing, relay.router.states()),
    )


RELAY_VIEW = web.AppKey("relay_view", BoundedRelayView)
