"""The sidecar's HTTP surface: thin aiohttp routes that read cached state.

Resources (the check scheduler, the feedback relay) are owned by `cleanup_ctx`
generators, so start-up and shutdown read in one place.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import NamedTuple

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from loguru import logger
from market_data_core.telemetry import HealthStatus

from market_data_sidecar.checks import Check
from market_data_sidecar.feedback.intake import Intake, Rejected
from market_data_sidecar.feedback.relay import Relay
from market_data_sidecar.health import HealthMonitor
from market_data_sidecar.limits import (
    BODY_BUDGET,
    BOUNDS,
    FAST_PROBES,
    FAULTS,
    RENDER_TTL,
    BodyBudget,
    BoundedRelayView,
    ClientFaults,
    FastProbe,
    bounded_bodies,
)
from market_data_sidecar.metrics import CONTENT_TYPE, Metrics
from market_data_sidecar.openapi import add_openapi_route
from market_data_sidecar.settings import Settings
from market_data_sidecar.views.page import add_status_routes
from market_data_sidecar.views.sampler import add_history
from market_data_sidecar.wiring import bounds_from, wire

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
MONITOR = web.AppKey("monitor", HealthMonitor)
RELAY = web.AppKey("relay", Relay)
INTAKE = web.AppKey("intake", Intake)
RELAY_VIEW = web.AppKey("relay_view", BoundedRelayView)

JSON = "application/json"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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
    app[_PAGES] = {}
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
    history = add_history(
        app, health=monitor.snapshot, feedback=app[RELAY_VIEW].state, history=parts.history
    )
    add_status_routes(app, health=monitor.snapshot, feedback=app[RELAY_VIEW].state, history=history)
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


# -- probes ----------------------------------------------------------------------------------


async def livez(request: web.Request) -> web.Response:
    """Alive while the scheduler makes progress; never depends on the store's dependencies."""
    return _livez(request.app[MONITOR])


def _livez(monitor: HealthMonitor) -> web.Response:
    if monitor.is_live():
        return web.Response(body=b"ok\n", content_type="text/plain")
    return web.Response(status=503, body=b"check scheduler stalled\n", content_type="text/plain")


async def readyz(request: web.Request) -> web.Response:
    monitor = request.app[MONITOR]
    status = _status(request)
    return _health_response(request, status, ready=monitor.is_ready(status))


async def healthz(request: web.Request) -> web.Response:
    status = _status(request)
    return _health_response(request, status, ready=_healthy(status))


def _healthy(status: HealthStatus) -> bool:
    """`/healthz` answers 200 unless the aggregate is unhealthy (degraded included)."""
    return status.state != "unhealthy"


def fast_probes(monitor: HealthMonitor) -> dict[str, FastProbe]:
    """The probes as the kubelet asks them (a plain GET, no query): answered from the
    cached snapshot without the router and four middleware frames (see `BoundedRunner`),
    which kept `/readyz` under 0.8x bare aiohttp. Anything else about the request takes
    the routed path."""

    def readyz() -> web.Response:
        status = monitor.snapshot()
        return _health_json(monitor, status, ready=monitor.is_ready(status))

    def healthz() -> web.Response:
        status = monitor.snapshot()
        return _health_json(monitor, status, ready=_healthy(status))

    return {"/livez": lambda: _livez(monitor), "/readyz": readyz, "/healthz": healthz}


def _status(request: web.Request) -> HealthStatus:
    return request.app[MONITOR].snapshot(exclude=request.query.getall("exclude", []))


def _health_response(request: web.Request, status: HealthStatus, *, ready: bool) -> web.Response:
    code = 200 if ready else 503
    if "verbose" in request.query:
        # The snapshot's details are already made encodable (health.py), surrogates included.
        text = verbose_report(request, status, ready=ready)
        return web.Response(status=code, text=text, content_type="text/plain")
    return _health_json(request.app[MONITOR], status, ready=ready)


def _health_json(monitor: HealthMonitor, status: HealthStatus, *, ready: bool) -> web.Response:
    # Bytes, not str: aiohttp wraps a str body in a payload object, several times slower.
    # Every detail is encodable: the snapshot escapes lone surrogates (health.py).
    body = monitor.status_json(status)
    return web.Response(status=200 if ready else 503, body=body, content_type=JSON)


def verbose_report(request: web.Request, status: HealthStatus, *, ready: bool) -> str:
    """Lines like kube-apiserver's: `[+]disk ok`, `[-]database failed: reason`."""
    excluded = set(request.query.getall("exclude", []))
    lines = []
    for component in status.components:
        if component.name in excluded:
            lines.append(f"[+]{component.name} excluded: ok")
            continue
        reason = component.details.get("error") or component.details.get("reason", "")
        if component.state == "healthy":
            lines.append(f"[+]{component.name} ok")
        elif component.state == "degraded":
            lines.append(f"[+]{component.name} degraded: {reason}".rstrip(": "))
        else:
            lines.append(f"[-]{component.name} failed: {reason}".rstrip(": "))
    monitor = request.app[MONITOR]
    lines.extend(f"[-]{name} failed: no result yet" for name in monitor.pending)
    unknown = sorted(excluded - {c.name for c in monitor.checks})
    if unknown:
        lines.append(f"warn: some health checks cannot be excluded: no matches for {unknown}")
    path = request.path.strip("/")
    lines.append(f"{path} check {'passed' if ready else 'failed'}")
    return "\n".join(lines) + "\n"


async def metrics_endpoint(request: web.Request) -> web.Response:
    body = request.app[METRICS].exposition()
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE
    return response


# -- feedback --------------------------------------------------------------------------------


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


# -- the status page ---------------------------------------------------------------------------


class _Page(NamedTuple):
    expires: float
    health: HealthStatus
    relay_generation: int
    response: tuple[int, bytes, dict[str, str]]


_PAGES = web.AppKey("rendered_pages", dict[str, _Page])
#: Distinct query strings of `GET /` kept rendered; others are rendered each time.
_MAX_PAGES = 8


@web.middleware
async def cached_page(request: web.Request, handler: Handler) -> web.StreamResponse:
    """`GET /` rendered again only when the health snapshot or the relay state it shows
    changed, or after `RENDER_TTL` (its ages are relative): a client reloading it in a
    loop costs a dictionary lookup, not a render."""
    if request.method != "GET" or request.path != "/":
        return await handler(request)
    pages = request.app[_PAGES]
    health = request.app[MONITOR].snapshot()
    generation = _relay_generation(request.app)
    now = time.monotonic()
    page = pages.get(request.query_string)
    if (
        page is not None
        and now < page.expires
        and page.health is health
        and page.relay_generation == generation
    ):
        status, body, headers = page.response
        return web.Response(status=status, body=body, headers=headers)
    response = await handler(request)
    if isinstance(response, web.Response) and response.status == 200:
        rendered = response.body
        if isinstance(rendered, bytes) and (
            request.query_string in pages or len(pages) < _MAX_PAGES
        ):
            # The generation after the render: rendering may itself refresh the relay view.
            pages[request.query_string] = _Page(
                now + RENDER_TTL,
                health,
                _relay_generation(request.app),
                (response.status, rendered, dict(response.headers)),
            )
    return response


def _relay_generation(app: web.Application) -> int:
    view = app[RELAY_VIEW]
    view.state()  # refreshed if due, so the generation says what a render would show
    return view.generation


# -- errors ----------------------------------------------------------------------------------


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Errors become JSON at the edge; an unexpected one is logged, never leaked."""
    faults = request.app[FAULTS]
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status < 500:
            faults.record(f"http_{exc.status}")
        return web.json_response({"error": exc.reason}, status=exc.status, headers=_allow(exc))
    except ConnectionError:
        # The client went away mid-request, or was closed at its body deadline (counted
        # as that): its fault, and nobody is left to read an answer.
        if getattr(request.protocol, "deadline_missed", None) is None:
            faults.record("aborted", request.method)
        return web.json_response({"error": "connection closed by the client"}, status=400)
    except HttpProcessingError as exc:  # a body whose framing is broken
        faults.record("malformed", type(exc).__name__)
        response = web.json_response({"error": "malformed request body"}, status=400)
        response.force_close()
        return response
    except Exception:
        logger.exception("unhandled error serving {} {}", request.method, request.path)
        return web.json_response({"error": "internal error"}, status=500)
    if 400 <= response.status < 500:
        faults.record(f"http_{response.status}")
    return response


#: Routes that take a request body; every other route never reads one.
_TAKES_BODY = {("POST", "/feedback")}


@web.middleware
async def no_encoded_bodies(request: web.Request, handler: Handler) -> web.StreamResponse:
    """415 for any `Content-Encoding`, before a byte of the body is read: nothing the
    sidecar serves takes a compressed body, and inflating one (aiohttp would, as it
    arrives) let 80 connections sending 10 MB gzip bombs take a core. The server does not
    decompress at all (`BoundedRunner`); this answers the client plainly. A body sent to a
    route that takes none is not read either: the connection closes after the answer."""
    if "Content-Encoding" in request.headers:
        refused = web.json_response(
            {"error": "compressed request bodies are not accepted"}, status=415
        )
        refused.force_close()
        return refused
    if request.body_exists and (request.method, request.path) not in _TAKES_BODY:
        answered = await handler(request)
        answered.force_close()
        return answered
    return await handler(request)


def _allow(exc: web.HTTPException) -> dict[str, str]:
    allow = exc.headers.get("Allow")
    return {"Allow": allow} if allow else {}
