"""The application's middlewares: errors as JSON at the edge, no compressed bodies, and
the status page (`GET /`) rendered again only when what it shows changed. (The body
budget's middleware is beside the budget, in `bodies.py`.)"""

from __future__ import annotations

import time
from typing import NamedTuple

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler
from loguru import logger
from market_data_core.telemetry import HealthStatus

from market_data_sidecar.server.faults import FAULTS
from market_data_sidecar.server.probes import MONITOR
from market_data_sidecar.server.relay_view import RELAY_VIEW, RENDER_TTL


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
    arrives) costs CPU for bytes nobody reads: gzip bombs. The server does not
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


class _Page(NamedTuple):
    expires: float
    health: HealthStatus
    relay_generation: int
    response: tuple[int, bytes, dict[str, str]]


PAGES = web.AppKey("rendered_pages", dict[str, _Page])
#: Distinct query strings of `GET /` kept rendered; others are rendered each time.
_MAXPAGES = 8


@web.middleware
async def cached_page(request: web.Request, handler: Handler) -> web.StreamResponse:
    """`GET /` rendered again only when the health snapshot or the relay state it shows
    changed, or after `RENDER_TTL` (its ages are relative): a client reloading it in a
    loop costs a dictionary lookup, not a render."""
    if request.method != "GET" or request.path != "/":
        return await handler(request)
    pages = request.app[PAGES]
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
            request.query_string in pages or len(pages) < _MAXPAGES
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
