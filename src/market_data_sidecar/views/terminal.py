"""The view for a terminal (aligned tables, optional colour) and for logs (one line per
subject)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from market_data_sidecar.feedback.state import TargetState
from market_data_sidecar.views.format import age, clock, count, counted, num, percent
from market_data_sidecar.views.model import (
    CoordinatorRow,
    StatusView,
    composite_text,
    dead_letters_text,
    readers_text,
)

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
    stamp = clock(view.ts) if view.ts else ""
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
        lines += _composite_lines(view, colour)
        for t in view.targets:
            if (readers := readers_text(t)) is not None:
                style = "" if t.readers else "degraded"
                lines.append(_paint(f"readers of {t.name}: {readers}", style, colour))
            if (dead := dead_letters_text(t)) is not None:
                lines.append(_paint(f"dead letters of {t.name}: {dead}", "degraded", colour))
        source = "synthesizing from queue depths" if view.synthesizing else "store pushes"
        last = age(view.last_store_event_at) if view.last_store_event_at else "never"
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
        event = f"{c.event_level} {age(c.event_ts)}"
        if c.event_origin == "synthesized":
            event += " (synthesized)"
        if c.event_reason:
            event += f", {c.event_reason}"
    return [
        _Cell(c.coordinator_id),
        _Cell(level, level),
        _Cell(f"{num(c.depth)}/{num(c.capacity)}", right=True),
        _Cell(bar(ratio, width=10), level),
        _Cell(percent(ratio), right=True),
        _Cell(c.workers or "-", right=True),
        _Cell(c.circuit or "-", c.circuit or ""),
        _Cell(event, c.event_level or ""),
    ]


def _composite_lines(view: StatusView, colour: bool) -> list[str]:
    """Each scoped target's composite, and a fleet's members."""
    lines: list[str] = []
    for t in view.targets:
        text = composite_text(t)
        if text is None:
            continue
        lines += ["", f"target {t.name}: {text}"]
        if t.members:
            lines += _table(
                ["MEMBER", "STATE", "LEVEL", "COORDINATOR", "COORDINATORS", "LEASE AGE"],
                [
                    [
                        _Cell(m.instance),
                        _Cell(m.state, "degraded" if m.state == "suspect" else ""),
                        _Cell(m.level, m.level),
                        _Cell(m.coordinator_id),
                        _Cell(count(m.coordinators), right=True),
                        _Cell(f"{m.lease_age:.1f}s", right=True),
                    ]
                    for m in t.members
                ],
                colour,
            )
    return lines


def _target_cells(t: TargetState) -> list[_Cell]:
    circuit = "disabled" if t.disabled else t.circuit
    error = "-"
    if t.last_error:
        error = f"{t.last_error} ({age(t.last_error_at)})" if t.last_error_at else t.last_error
    return [
        _Cell(t.name),
        _Cell(t.kind),
        _Cell(circuit, circuit),
        _Cell(count(t.buffer_depth), right=True),
        _Cell(count(t.delivered), right=True),
        _Cell(count(t.retried), right=True),
        _Cell(count(t.dropped), "unhealthy" if t.dropped else "", right=True),
        _Cell(age(t.last_success) if t.last_success else "never"),
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
            text += f", depth {num(c.depth)}/{num(c.capacity)}"
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
        if (readers := readers_text(t)) is not None:
            text += f", readers {readers}"
        if (dead := dead_letters_text(t)) is not None:
            text += f", dead letters {dead}"
        lines.append(text)
        if (composite := composite_text(t)) is not None:
            lines.append(f"target {t.name} composite {composite}")
        lines += [
            f"target {t.name} member {m.instance}: {m.level}, {m.coordinator_id}, "
            f"{counted(m.coordinators, 'coordinator')}, renewed {m.lease_age:.1f}s ago"
            for m in t.members
        ]
    lines += [
        f"receiver {r.name} ({r.kind}): received {r.received}"
        + (f", last {r.last}" if r.last else "")
        for r in view.receivers
    ]
    return lines


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
