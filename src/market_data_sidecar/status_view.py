"""What an operator sees of a running sidecar: `/healthz` + `/feedback` as one view.

`StatusView.from_json` reads the two JSON documents (tolerating a sidecar without a relay
and fields it does not know); `render_table` and `render_lines` print it for a terminal
and for logs. `market-data-sidecar status`, the demo and the HTML page share the model.

Whatever a sidecar answers, the views render it: every string is made `printable` as it
enters the model (no lone surrogate reaches an encoder, no control character reaches a
terminal), and numbers are formatted defensively (an absurd timestamp or ratio prints as
text, never raises).
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import aiohttp

#: `details` every component carries; they say when, not what.
BOOKKEEPING = frozenset({"checked_at", "duration_ms", "observed_state", "streak"})
#: Details worth a place in a one-line summary, most telling first.
_TELLING = ("latency_ms", "connections", "max_connections", "role", "coordinators", "targets")
#: Details too long or too technical for a one-line summary (still on the page).
_QUIET = BOOKKEEPING | {"paths", "url", "target", "server_version", "size_bytes"}

#: The queue component's per-coordinator details (`<coordinator>:<field>`), by row field.
_COORDINATOR_FIELDS = {
    "depth": "depth",
    "capacity": "capacity",
    "level": "level",
    "workers_alive": "workers",
    "circuit": "circuit",
    "dropped_total": "dropped",
}


# -- the model -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ComponentRow:
    name: str
    state: str
    details: Mapping[str, str]

    @property
    def summary(self) -> str:
        """One line: the error or reason if there is one, else the telling details."""
        return summarize(self.details)


@dataclass(frozen=True)
class CoordinatorRow:
    """A write coordinator as the queue check polls it and as its last event says."""

    coordinator_id: str
    depth: int | None = None
    capacity: int | None = None
    level: str | None = None
    workers: str | None = None
    circuit: str | None = None
    dropped: int | None = None
    #: The latest event the relay holds for it (from the store or synthesized).
    event_level: str | None = None
    event_origin: str | None = None
    event_ts: float | None = None
    event_reason: str | None = None

    @property
    def utilization(self) -> float | None:
        if self.depth is None or not self.capacity:
            return None
        try:
            return self.depth / self.capacity
        except OverflowError:  # integers too large for a float ratio
            return None

    @property
    def current_level(self) -> str | None:
        """The polled level when the queue check reports one, else the last event's."""
        return self.level or self.event_level


@dataclass(frozen=True)
class TargetRow:
    name: str
    kind: str = ""
    endpoint: str = ""
    mode: str = ""
    buffer_depth: int = 0
    delivered: int = 0
    retried: int = 0
    dropped: int = 0
    last_success: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    circuit: str = "closed"
    disabled: bool = False

    @property
    def state(self) -> str:
        """A health word for the target: what an operator should feel about it."""
        if self.disabled or self.circuit == "open":
            return "unhealthy"
        if self.circuit == "half-open" or (self.buffer_depth > 0 and self.last_error):
            return "degraded"
        return "healthy"


@dataclass(frozen=True)
class ReceiverRow:
    """A local orchestrator in the demo: what actually arrived at the far end."""

    name: str
    kind: str
    received: int
    last: str = ""


@dataclass(frozen=True)
class StatusView:
    service: str
    state: str
    version: str = ""
    ts: float | None = None
    components: Sequence[ComponentRow] = ()
    coordinators: Sequence[CoordinatorRow] = ()
    targets: Sequence[TargetRow] = ()
    #: False when the sidecar answered no `/feedback` (no relay state to show).
    relay: bool = False
    last_store_event_at: float | None = None
    synthesizing: bool = False
    receivers: Sequence[ReceiverRow] = field(default_factory=tuple)

    @classmethod
    def from_json(cls, health: Mapping[str, Any], feedback: Mapping[str, Any] | None) -> StatusView:
        """Build the view; unknown or missing fields are skipped, never fatal."""
        components = [
            ComponentRow(
                name=_text(c.get("name", "?")),
                state=_text(c.get("state", "unknown")),
                details={_text(k): _text(v) for k, v in _mapping(c.get("details")).items()},
            )
            for c in _list(health.get("components"))
            if isinstance(c, Mapping)
        ]
        queue = next((c for c in components if c.name == "queue"), None)
        polled = queue_coordinators(queue.details) if queue else {}
        events = _mapping(feedback.get("coordinators")) if feedback else {}
        events = {_text(cid): event for cid, event in events.items()}
        coordinators = [
            _coordinator(cid, polled.get(cid, {}), _mapping(events.get(cid)))
            for cid in sorted(set(polled) | set(events))
        ]
        targets = [
            _target(t) for t in _list((feedback or {}).get("targets")) if isinstance(t, Mapping)
        ]
        return cls(
            service=_text(health.get("service", "market-data-sidecar")),
            state=_text(health.get("state", "unknown")),
            version=_text(health.get("version", "")),
            ts=_float(health.get("ts")),
            components=tuple(components),
            coordinators=tuple(coordinators),
            targets=tuple(targets),
            relay=feedback is not None,
            last_store_event_at=_float((feedback or {}).get("last_store_event_at")),
            synthesizing=bool((feedback or {}).get("synthesizing", False)),
        )

    def with_receivers(self, receivers: Iterable[ReceiverRow]) -> StatusView:
        printable_rows = (
            replace(r, name=printable(r.name), kind=printable(r.kind), last=printable(r.last))
            for r in receivers
        )
        return replace(self, receivers=tuple(printable_rows))


def summarize(details: Mapping[str, str], limit: int = 6) -> str:
    """The error or reason if there is one; else simple `key=value` details, free space per path."""
    problems = [details[k] for k in ("error", "reason") if details.get(k)]
    if problems:
        return "; ".join(problems)
    telling = [key for key in _TELLING if key in details]
    simple = [key for key in details if not {":", "."} & set(key) and key not in _QUIET]
    parts = [f"{key}={details[key]}" for key in dict.fromkeys(telling + simple)]
    parts += [
        f"{key.removesuffix(':free_ratio')} {_percent(value)} free"
        for key, value in details.items()
        if key.endswith(":free_ratio")
    ]
    return "; ".join(parts[:limit])


def queue_coordinators(details: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """Per-coordinator values from the queue component's `<coordinator>:<field>` details."""
    found: dict[str, dict[str, str]] = {}
    for key, value in details.items():
        coordinator, _, name = key.rpartition(":")
        if coordinator and name in _COORDINATOR_FIELDS:
            found.setdefault(coordinator, {})[_COORDINATOR_FIELDS[name]] = value
    return found


def _coordinator(cid: str, polled: Mapping[str, str], event: Mapping[str, Any]) -> CoordinatorRow:
    depth = _int(polled.get("depth"))
    capacity = _int(polled.get("capacity"))
    if depth is None and capacity is None:
        depth, capacity = _int(event.get("queue_size")), _int(event.get("capacity"))
    return CoordinatorRow(
        coordinator_id=cid,
        depth=depth,
        capacity=capacity,
        level=polled.get("level"),
        workers=polled.get("workers"),
        dropped=_int(polled.get("dropped")),
        circuit=polled.get("circuit"),
        event_level=_str(event.get("level")),
        event_origin=_str(event.get("origin")),
        event_ts=_float(event.get("ts")),
        event_reason=_str(event.get("reason")),
    )


def _target(data: Mapping[str, Any]) -> TargetRow:
    return TargetRow(
        name=_text(data.get("name", "?")),
        kind=_text(data.get("kind", "")),
        endpoint=_text(data.get("endpoint", "")),
        mode=_text(data.get("mode") or ""),
        buffer_depth=_int(data.get("buffer_depth")) or 0,
        delivered=_int(data.get("delivered")) or 0,
        retried=_int(data.get("retried")) or 0,
        dropped=_int(data.get("dropped")) or 0,
        last_success=_float(data.get("last_success")),
        last_error=_str(data.get("last_error")),
        last_error_at=_float(data.get("last_error_at")),
        circuit=_text(data.get("circuit") or "closed"),
        disabled=bool(data.get("disabled", False)),
    )


# -- reading a sidecar -----------------------------------------------------------------------


class Unreachable(Exception):
    """The sidecar did not answer `/healthz` with a health status."""


async def fetch_view(base_url: str, *, deadline: float = 5.0) -> StatusView:
    """Read `/healthz` (any status code: 503 still carries the body) and `/feedback`."""
    base = base_url.rstrip("/")
    client_timeout = aiohttp.ClientTimeout(total=deadline)
    try:
        async with aiohttp.ClientSession(timeout=client_timeout) as session:
            health = await _get_json(session, f"{base}/healthz")
            if not isinstance(health, dict) or "state" not in health:
                raise Unreachable(f"{base}/healthz did not answer a health status")
            try:
                feedback = await _get_json(session, f"{base}/feedback")
            except (aiohttp.ClientError, ValueError):
                feedback = None
    except TimeoutError:
        raise Unreachable(f"cannot reach {base}: timed out after {deadline:g}s") from None
    except aiohttp.ClientConnectionError as exc:
        raise Unreachable(f"cannot reach {base}: {_connection_reason(exc)}") from None
    except (aiohttp.ClientError, ValueError) as exc:
        raise Unreachable(f"{base}/healthz did not answer a health status ({exc})") from None
    return StatusView.from_json(health, feedback if isinstance(feedback, dict) else None)


def local_url(host: str, port: int) -> str:
    """How to reach a sidecar listening on `host:port` from the same machine."""
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"  # a wildcard listener answers on loopback
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


EXIT_UNREACHABLE = 3
EXIT_CODES = {"healthy": 0, "degraded": 1, "unhealthy": 2}


def show_status(base_url: str) -> int:
    """`market-data-sidecar status`: print the view; the exit code is the sidecar's state."""
    try:
        view = asyncio.run(fetch_view(base_url))
    except Unreachable as exc:
        print(f"market-data-sidecar: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    colour = sys.stdout.isatty()
    width = shutil.get_terminal_size().columns if colour else None
    table = render_table(view, colour=colour, width=width)
    # A terminal in Latin-1 or ASCII cannot print every character: replace, never raise.
    encoding = sys.stdout.encoding or "utf-8"
    print(table.encode(encoding, "replace").decode(encoding))
    return EXIT_CODES.get(view.state, EXIT_CODES["unhealthy"])


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


# -- rendering for a terminal ----------------------------------------------------------------

_RESET = "\x1b[0m"
_STYLES = {
    "healthy": "\x1b[32m",
    "ok": "\x1b[32m",
    "closed": "\x1b[32m",
    "degraded": "\x1b[33m",
    "soft": "\x1b[33m",
    "half-open": "\x1b[33m",
    "unhealthy": "\x1b[31m",
    "hard": "\x1b[31m",
    "open": "\x1b[31m",
    "disabled": "\x1b[31m",
    "bold": "\x1b[1m",
    "dim": "\x1b[2m",
}
CLEAR_SCREEN = "\x1b[H\x1b[2J"


@dataclass(frozen=True)
class _Cell:
    text: str
    style: str = ""
    right: bool = False


def _paint(text: str, style: str, colour: bool) -> str:
    code = _STYLES.get(style, "")
    return f"{code}{text}{_RESET}" if colour and code else text


def _table(headers: Sequence[str], rows: Sequence[Sequence[_Cell]], colour: bool) -> list[str]:
    widths = [len(h) for h in headers]
    for row in rows:
        for index, cell in enumerate(row):
            widths[index] = max(widths[index], len(cell.text))
    head = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()
    lines = [_paint(head, "bold", colour)]
    last = len(headers) - 1
    for row in rows:
        cells = []
        for index, (cell, width) in enumerate(zip(row, widths, strict=True)):
            if cell.right:
                padded = cell.text.rjust(width)
            else:  # no trailing blanks after the last column
                padded = cell.text if index == last else cell.text.ljust(width)
            cells.append(_paint(padded, cell.style, colour))
        lines.append("  ".join(cells).rstrip())
    return lines


def bar(ratio: float | None, width: int = 20) -> str:
    """`[########------------]` for a 0..1 ratio."""
    if ratio is None:
        return " " * (width + 2)
    filled = round(max(0.0, min(1.0, ratio)) * width)
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def render_table(view: StatusView, *, colour: bool = False, width: int | None = None) -> str:
    """The full view as aligned tables; `width` trims long cells to fit a terminal."""
    title = f"{view.service} {view.version}".strip()
    stamp = _clock(view.ts) if view.ts else ""
    lines = [
        f"{_paint(title, 'bold', colour)}: {_paint(view.state.upper(), view.state, colour)}"
        + (f"   (as of {stamp})" if stamp else ""),
        "",
    ]
    lines += _table(
        ["COMPONENT", "STATE", "SUMMARY"],
        [[_Cell(c.name), _Cell(c.state, c.state), _Cell(c.summary or "-")] for c in view.components]
        or [[_Cell("(none yet)"), _Cell(""), _Cell("")]],
        colour,
    )
    if view.coordinators:
        lines.append("")
        lines += _table(
            ["COORDINATOR", "LEVEL", "QUEUE", "UTILIZATION", "", "WORKERS", "CIRCUIT",
             "LAST EVENT"],
            [_coordinator_cells(c) for c in view.coordinators],
            colour,
        )  # fmt: skip
    if view.relay:
        lines.append("")
        lines += _table(
            ["TARGET", "KIND", "CIRCUIT", "BUFFER", "DELIVERED", "RETRIED", "DROPPED",
             "LAST OK", "LAST ERROR"],
            [_target_cells(t) for t in view.targets]
            or [[_Cell("(no targets configured)")] + [_Cell("")] * 8],
            colour,
        )  # fmt: skip
        source = "synthesizing from queue depths" if view.synthesizing else "store pushes"
        last = _age(view.last_store_event_at) if view.last_store_event_at else "never"
        lines.append(f"feedback: {source}; last event from the store {last}")
    if view.receivers:
        lines.append("")
        lines += _table(
            ["RECEIVER", "KIND", "RECEIVED", "LAST"],
            [
                [_Cell(r.name), _Cell(r.kind), _Cell(count(r.received), right=True), _Cell(r.last)]
                for r in view.receivers
            ],
            colour,
        )
    if width:
        lines = [_fit(line, width) for line in lines]
    return "\n".join(lines)


def _coordinator_cells(c: CoordinatorRow) -> list[_Cell]:
    level = c.current_level or "-"
    ratio = c.utilization
    event = "-"
    if c.event_level:
        event = f"{c.event_level} {_age(c.event_ts)}"
        if c.event_origin == "synthesized":
            event += " (synthesized)"
        if c.event_reason:
            event += f", {c.event_reason}"
    return [
        _Cell(c.coordinator_id),
        _Cell(level, level),
        _Cell(f"{_num(c.depth)}/{_num(c.capacity)}", right=True),
        _Cell(bar(ratio, width=10), level),
        _Cell(percent(ratio), right=True),
        _Cell(c.workers or "-", right=True),
        _Cell(c.circuit or "-", c.circuit or ""),
        _Cell(event, c.event_level or ""),
    ]


def _target_cells(t: TargetRow) -> list[_Cell]:
    circuit = "disabled" if t.disabled else t.circuit
    error = "-"
    if t.last_error:
        error = f"{t.last_error} ({_age(t.last_error_at)})" if t.last_error_at else t.last_error
    return [
        _Cell(t.name),
        _Cell(t.kind),
        _Cell(circuit, circuit),
        _Cell(count(t.buffer_depth), right=True),
        _Cell(count(t.delivered), right=True),
        _Cell(count(t.retried), right=True),
        _Cell(count(t.dropped), "unhealthy" if t.dropped else "", right=True),
        _Cell(_age(t.last_success) if t.last_success else "never"),
        _Cell(error, "unhealthy" if t.last_error else ""),
    ]


def render_lines(view: StatusView) -> list[str]:
    """The view as self-contained lines for logs and pipes: one subject per line."""
    components = ", ".join(f"{c.name} {c.state}" for c in view.components) or "no results yet"
    lines = [f"sidecar {view.state}: {components}"]
    lines += [
        f"component {c.name}: {c.state}; {c.summary}"
        for c in view.components
        if c.state != "healthy"
    ]
    for c in view.coordinators:
        text = f"coordinator {c.coordinator_id}: level {c.current_level or '-'}"
        if c.depth is not None:
            text += f", depth {_num(c.depth)}/{_num(c.capacity)}"
        if c.utilization is not None:
            text += f" ({percent(c.utilization)})"
        if c.dropped:
            text += f", {count(c.dropped)} dropped"
        if c.event_level:
            text += f", last event {c.event_level} from {c.event_origin or '?'}"
        lines.append(text)
    for t in view.targets:
        state = "disabled" if t.disabled else f"circuit {t.circuit}"
        text = (
            f"target {t.name} ({t.kind}): delivered {count(t.delivered)}, "
            f"retried {count(t.retried)}, dropped {count(t.dropped)}, "
            f"buffer {count(t.buffer_depth)}, {state}"
        )
        if t.last_error:
            text += f", last error {t.last_error}"
        lines.append(text)
    lines += [
        f"receiver {r.name} ({r.kind}): received {r.received}"
        + (f", last {r.last}" if r.last else "")
        for r in view.receivers
    ]
    return lines


# -- small formatting helpers ----------------------------------------------------------------


def _fit(line: str, width: int) -> str:
    """Trim a line to `width` visible characters, keeping colour codes intact."""
    visible = re.sub(r"\x1b\[[0-9;]*m", "", line)
    if len(visible) <= width:
        return line
    out, shown = [], 0
    for token in re.split(r"(\x1b\[[0-9;]*m)", line):
        if token.startswith("\x1b["):
            out.append(token)
            continue
        room = width - 1 - shown
        out.append(token[: max(room, 0)])
        shown += min(len(token), max(room, 0))
    return "".join(out) + "…" + (_RESET if "\x1b[" in line else "")


def _age(ts: float | None) -> str:
    if ts is None:
        return "?"
    seconds = time.time() - ts
    if seconds < -60:  # a clock far ahead: say when, not "0s ago"
        return _clock(ts)
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m ago"
    return _clock(ts)


def _clock(ts: float | None) -> str:
    if ts is None:
        return "?"
    try:
        return datetime.fromtimestamp(ts, UTC).astimezone().strftime("%H:%M:%S")
    except (OverflowError, OSError, ValueError):  # before year 1 or after 9999
        return f"ts {ts:.6g}"


def _percent(value: str) -> str:
    try:
        return percent(float(value), digits=1)
    except ValueError:
        return value


def _num(value: int | None) -> str:
    return "-" if value is None else count(value)


# -- defensive formatting, shared with the HTML page -----------------------------------------

#: What must not reach a terminal or an encoder: C0/C1 controls (escape sequences), the
#: bidirectional overrides (text that reads differently than it sorts), lone surrogates.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_WHITESPACE = {"\t": " ", "\n": " ", "\r": " "}
#: Longest text kept from one value: the sidecar's own values are far shorter.
MAX_TEXT = 4096


def printable(text: str) -> str:
    """`text` safe for any terminal and any UTF-8 encoder: line breaks and tabs become
    spaces, other unprintable characters their `\\xNN` / `\\uNNNN` escape."""
    if len(text) > MAX_TEXT:
        text = text[: MAX_TEXT - 1] + "…"
    if text.isascii() and text.isprintable():
        return text
    return _UNPRINTABLE.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _WHITESPACE:
        return _WHITESPACE[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def percent(ratio: float | None, *, digits: int = 0) -> str:
    """`85%` for 0.85; `-` for None; a ratio beyond 1,000,000% as `>999999%`, so a huge
    queue size cannot stretch a column."""
    if ratio is None or math.isnan(ratio):
        return "-"
    if abs(ratio) >= 10_000:
        return ">999999%" if ratio > 0 else "<-999999%"
    return f"{ratio:.{digits}%}"


def count(value: int) -> str:
    """An integer as digits, or as `1.23e45` beyond 15 digits: a poisoned queue depth in
    the store's metrics must not stretch a column (and `str` refuses 4300 digits)."""
    digits = str(abs(value)) if value.bit_length() < 14_000 else ""
    if digits and len(digits) <= 15:
        return str(value)
    sign = "-" if value < 0 else ""
    if not digits:
        return f"{sign}huge"
    return f"{sign}{digits[0]}.{digits[1:3]}e{len(digits) - 1}"


def _text(value: Any) -> str:
    try:
        return printable(value if isinstance(value, str) else str(value))
    except ValueError:  # an integer beyond Python's 4300-digit str() limit
        return "?"


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _str(value: Any) -> str | None:
    return None if value is None else _text(value)


def _int(value: Any) -> int | None:
    """An integer from a number or its text (`"850"`, `"850.0"`); None for anything else,
    non-finite numbers included."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    try:
        return int(value)
    except (TypeError, ValueError):
        pass
    number = _float(value)
    return None if number is None else int(number)


def _float(value: Any) -> float | None:
    """A finite float, or None: `inf` or NaN is no time and no ratio."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None
