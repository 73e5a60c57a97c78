"""The probes (`/livez`, `/readyz`, `/healthz`) and `/metrics`: answered from the health
monitor's cached snapshot, never by running a check."""

from __future__ import annotations

from aiohttp import web
from market_data_core.telemetry import HealthStatus

from market_data_sidecar.health import HealthMonitor
from market_data_sidecar.metrics import CONTENT_TYPE, Metrics
from market_data_sidecar.server.connections import FastProbe

MONITOR = web.AppKey("monitor", HealthMonitor)
METRICS = web.AppKey("metrics", Metrics)

JSON = "application/json"


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
    so the kubelet's probes cost what a bare aiohttp handler does. Anything else about
    the request takes the routed path."""

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
