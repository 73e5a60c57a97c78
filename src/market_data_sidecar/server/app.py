"""The application: the routes and middlewares mounted over what `wiring` built.

As starlette's `Starlette(routes, middleware)`, `create_app` mounts what it is given and
builds nothing from the settings (`wiring.build_app` does that, once). Resources (the
check scheduler, the feedback relay) are owned by `cleanup_ctx` generators, so start-up
and shutdown read in one place.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Middleware

from market_data_sidecar.feedback.intake import Intake
from market_data_sidecar.feedback.relay import Relay
from market_data_sidecar.health import HealthMonitor
from market_data_sidecar.metrics import Metrics
from market_data_sidecar.openapi import add_openapi_route
from market_data_sidecar.server.bodies import BODY_BUDGET, BodyBudget, bounded_bodies
from market_data_sidecar.server.connections import BOUNDS, FAST_PROBES, Bounds
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
from market_data_sidecar.views.history import History
from market_data_sidecar.views.page import add_status_routes
from market_data_sidecar.views.sampler import add_history

#: The middlewares, outermost first: errors become JSON around everything else.
MIDDLEWARES: tuple[Middleware, ...] = (json_errors, no_encoded_bodies, bounded_bodies, cached_page)


@dataclass(frozen=True)
class Served:
    """What the application serves and bounds its clients with, built by `wiring`."""

    metrics: Metrics
    monitor: HealthMonitor
    relay: Relay
    intake: Intake
    relay_view: BoundedRelayView
    bounds: Bounds
    faults: ClientFaults
    body_budget: BodyBudget
    #: Seconds the relay may take to drain its buffers at shutdown.
    drain_timeout: float
    #: The last hour, sampled while the app runs (drawn on `/`, served at `/history`).
    history: History


def create_app(served: Served) -> web.Application:
    """Mount the routes and `MIDDLEWARES` over `served`."""
    app = web.Application(middlewares=MIDDLEWARES, client_max_size=served.bounds.max_body_bytes)
    app[METRICS] = served.metrics
    app[MONITOR] = served.monitor
    app[RELAY] = served.relay
    app[RELAY_VIEW] = served.relay_view
    app[BOUNDS] = served.bounds
    app[FAULTS] = served.faults
    app[BODY_BUDGET] = served.body_budget
    app[PAGES] = {}
    app[INTAKE] = served.intake
    # The relay starts before the checks (the queue check feeds it) and stops after them.
    app.cleanup_ctx.append(_relay_running(served.drain_timeout))
    app.cleanup_ctx.append(_run_checks)
    app[FAST_PROBES] = fast_probes(served.monitor)
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_post("/feedback", post_feedback)
    app.router.add_get("/feedback", get_feedback)
    snapshot, state = served.monitor.snapshot, served.relay_view.state
    add_history(app, health=snapshot, feedback=state, history=served.history)
    add_status_routes(app, health=snapshot, feedback=state)
    add_openapi_route(app, served.intake)
    return app


def _relay_running(
    drain_timeout: float,
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def run_relay(app: web.Application) -> AsyncIterator[None]:
        relay = app[RELAY]
        await relay.start()
        yield
        # By now the listening socket is closed: no new events arrive while buffers drain.
        await relay.stop(drain_timeout)

    return run_relay


async def _run_checks(app: web.Application) -> AsyncIterator[None]:
    monitor = app[MONITOR]
    monitor.start()
    yield
    await monitor.stop()
