"""The feedback routes: `POST /feedback` (the store's events, validated by the intake and
handed to the relay) and `GET /feedback` (the relay's state, from its render cache)."""

from __future__ import annotations

from aiohttp import web

from market_data_sidecar.feedback.intake import Intake, Rejected
from market_data_sidecar.feedback.relay import Relay
from market_data_sidecar.server.probes import JSON
from market_data_sidecar.server.relay_view import RELAY_VIEW

RELAY = web.AppKey("relay", Relay)
INTAKE = web.AppKey("intake", Intake)


async def post_feedback(request: web.Request) -> web.Response:
    """Validate, hand to the relay, answer 202: delivery happens afterwards, per target."""
    intake = request.app[INTAKE]
    if request.transport is None or request.transport.is_closing():
        # Evicted (or the client left) before its request came up: nobody to answer, and
        # its peer is no longer known, so judging it would log a bogus 403.
        raise ConnectionResetError("connection closed before the request was handled")
    try:
        intake.admit(request.headers, peer=request.remote)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise intake.too_large() from None
        events = intake.decode(body)
    except Rejected as rejected:
        return web.json_response(rejected.body, status=rejected.status, headers=rejected.headers)
    request.app[RELAY].accept(events)
    return web.json_response({"accepted": len(events)}, status=202)


async def get_feedback(request: web.Request) -> web.Response:
    """Bounded in bytes, and rendered at most once per `RENDER_TTL` while unchanged."""
    return web.Response(body=request.app[RELAY_VIEW].body(), content_type=JSON)
