"""The application: the routes and middlewares mounted, over what the sidecar was built of.

Resources (the check scheduler, the feedback relay) are owned by `cleanup_ctx`
generators, so start-up and shutdown read in one place.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from aiohttp import web

from market_data_sidecar.checks import Check
from market_data_sidecar.feedback.intake import Intake
from market_data_sidecar.feedback.relay import Relay
from market_data_sidecar.metrics import Metrics
from market_data_sidecar.openapi import add_openapi_route
from market_data_sidecar.server.bodies import BODY_BUDGET, BodyBudget, bounded_bodies
from market_data_sidecar.server.connections import BOUNDS, FAST_PROBES
from market_data_sidecar.server.faults import FAULTS, ClientFaults
from market_data_sidecar.server.feedback import INTAKE, RELAY, get_feedback, post_feedback
from market_data_sidecar.server.middleware import (
    PAGES,
    cached_page,
    json_errors,
    no_encoded_bodies,
)
from market_data_sidecar.server.probes import (
    METRICS,
    MONITOR,
    fast_probes,
    healthz,
    livez,
    metrics_endpoint,
    readyz,
)
from market_data_sidecar.server.relay_view import RELAY_VIEW, BoundedRelayView
from market_data_sidecar.settings import Settings
from market_data_sidecar.views.page import add_status_routes
from market_data_sidecar.wiring import bounds_from, wire

SETTINGS = web.AppKey("settings", Settings)


def create_app(
    settings: Settings, *, checks: Sequence[Check] | None = None, metrics: Metrics | None = None
) -> web.Application:
    """Build the application; checks default to those the settings enable, plus the
    relay's own `feedback` component. Given `checks` are taken as the complete list."""
    parts = wire(settings, checks=checks, metrics=metrics)
    metrics, relay, monitor = parts.metrics, parts.relay, parts.monitor
    app = web.Application(
        middlewares=[json_errors, no_encoded_bodies, bounded_bodies, cached_page],
        client_max_size=settings.max_body_bytes,
    )
    app[SETTINGS] = settings
    app[METRICS] = metrics
    app[MONITOR] = monitor
    app[RELAY] = relay
    app[RELAY_VIEW] = BoundedRelayView(relay.view, lambda: _relay_fingerprint(relay))
    bounds = bounds_from(settings)
    app[BOUNDS] = bounds
    app[FAULTS] = ClientFaults(metrics, bounds.fault_log_interval)
    app[BODY_BUDGET] = BodyBudget(
        bounds.body_bytes_in_flight, max_body_bytes=settings.max_body_bytes, metrics=metrics
    )
    app[PAGES] = {}
    app[INTAKE] = Intake(
        metrics,
        token=settings.token.get_secret_value() if settings.token else None,
        max_body_bytes=settings.max_body_bytes,
        max_events=settings.max_events_per_request,
    )
    # The relay starts before the checks (the queue check feeds it) and stops after them.
    app.cleanup_ctx.append(_run_relay)
    app.cleanup_ctx.append(_run_checks)
    app[FAST_PROBES] = fast_probes(monitor)
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_post("/feedback", post_feedback)
    app.router.add_get("/feedback", get_feedback)
    add_status_routes(app, health=monitor.snapshot, feedback=app[RELAY_VIEW].state)
    add_openapi_route(app, settings)
    return app


def _relay_fingerprint(relay: Relay) -> object:
    """What changes when the relay state changes visibly: a POST, or a target's record.
    (An event synthesized meanwhile shows within `RENDER_TTL`.)"""
    return (relay.last_store_event_at, relay.synthesizing, relay.router.states())


async def _run_relay(app: web.Application) -> AsyncIterator[None]:
    relay = app[RELAY]
    await relay.start()
    yield
    # By now the listening socket is closed: no new events arrive while buffers drain.
    await relay.stop(app[SETTINGS].drain_timeout)


async def _run_checks(app: web.Application) -> AsyncIterator[None]:
    monitor = app[MONITOR]
    monitor.start()
    yield
    await monitor.stop()
