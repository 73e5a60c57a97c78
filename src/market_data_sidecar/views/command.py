"""`market-data-sidecar status`: read a running sidecar over HTTP and print its view."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from pydantic import ValidationError

from market_data_sidecar.views.history import MAX_CHANGES, HistoryState, changes_text
from market_data_sidecar.views.model import StatusView
from market_data_sidecar.views.terminal import render_table


class Unreachable(Exception):
    """The sidecar did not answer `/healthz` with a health status."""


async def fetch_view(base_url: str, *, deadline: float = 5.0) -> StatusView:
    """Read `/healthz` (any status code: 503 still carries the body) and `/feedback`."""
    base = base_url.rstrip("/")
    async with _sidecar_client(base, deadline) as session:
        return await _read_view(session, base)


async def fetch_status(
    base_url: str, *, deadline: float = 5.0
) -> tuple[StatusView, HistoryState | None]:
    """The view and `GET /history` (None from a sidecar that keeps none), read with one
    HTTP client."""
    base = base_url.rstrip("/")
    async with _sidecar_client(base, deadline) as session:
        return await _read_view(session, base), await _read_history(session, base)


@asynccontextmanager
async def _sidecar_client(base: str, deadline: float) -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client of the sidecar at `base` (each request within `deadline`): a timeout or
    a connection that fails within it is Unreachable."""
    client_timeout = aiohttp.ClientTimeout(total=deadline)
    try:
        async with aiohttp.ClientSession(timeout=client_timeout) as session:
            yield session
    except TimeoutError:
        raise Unreachable(f"cannot reach {base}: timed out after {deadline:g}s") from None
    except aiohttp.ClientConnectionError as exc:
        raise Unreachable(f"cannot reach {base}: {_connection_reason(exc)}") from None


async def _read_view(session: aiohttp.ClientSession, base: str) -> StatusView:
    try:
        health = await _get_json(session, f"{base}/healthz")
    except (TimeoutError, aiohttp.ClientConnectionError):
        raise  # _sidecar_client reports it
    except (aiohttp.ClientError, ValueError) as exc:
        raise Unreachable(f"{base}/healthz did not answer a health status ({exc})") from None
    if not isinstance(health, dict) or "state" not in health:
        raise Unreachable(f"{base}/healthz did not answer a health status")
    try:
        feedback = await _get_json(session, f"{base}/feedback")
    except (aiohttp.ClientError, ValueError):
        feedback = None
    return StatusView.from_json(health, feedback if isinstance(feedback, dict) else None)


async def _read_history(session: aiohttp.ClientSession, base: str) -> HistoryState | None:
    """`GET /history` with every change it holds; None from a sidecar that keeps none."""
    url = f"{base}/history?limit={MAX_CHANGES}"
    try:
        body = await _get_json(session, url)
    except (TimeoutError, aiohttp.ClientConnectionError):
        raise  # _sidecar_client reports it
    except (aiohttp.ClientError, ValueError) as exc:
        raise Unreachable(f"cannot read {url}: {exc}") from None
    if body is None:
        return None
    try:
        return HistoryState.model_validate(body)
    except ValidationError:
        raise Unreachable(f"{url} did not answer a history") from None


def local_url(host: str, port: int) -> str:
    """How to reach a sidecar listening on `host:port` from the same machine."""
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"  # a wildcard listener answers on loopback
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


EXIT_UNREACHABLE = 3
EXIT_CODES = {"healthy": 0, "degraded": 1, "unhealthy": 2}


def show_status(base_url: str, *, history: bool = False) -> int:
    """`market-data-sidecar status`: print the view (and with `history`, what changed
    within the hour); the exit code is the sidecar's state."""
    try:
        if history:
            view, changes = asyncio.run(fetch_status(base_url))
        else:
            view, changes = asyncio.run(fetch_view(base_url)), None
    except Unreachable as exc:
        print(f"market-data-sidecar: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    colour = sys.stdout.isatty()
    width = shutil.get_terminal_size().columns if colour else None
    table = render_table(view, colour=colour, width=width)
    if history:
        table += "\n\n" + history_text(changes)
    # A terminal in Latin-1 or ASCII cannot print every character: replace, never raise.
    encoding = sys.stdout.encoding or "utf-8"
    print(table.encode(encoding, "replace").decode(encoding))
    return EXIT_CODES.get(view.state, EXIT_CODES["unhealthy"])


def history_text(state: HistoryState | None) -> str:
    if state is None:
        return "History: this sidecar keeps none (no GET /history)."
    minutes = state.window_seconds / 60
    head = f"History (the last {minutes:g} min, oldest first):"
    return head + "\n" + changes_text(state)


async def _get_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as response:
        if response.status == 404:
            return None
        return await response.json(content_type=None)


def _connection_reason(exc: aiohttp.ClientConnectionError) -> str:
    os_error = getattr(exc, "os_error", None)
    if isinstance(os_error, OSError) and os_error.errno:
        return os.strerror(os_error.errno).lower()
    return str(exc) or type(exc).__name__
