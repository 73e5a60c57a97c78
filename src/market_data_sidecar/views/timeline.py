"""The history drawn as inline SVG for `GET /`: timelines of states, sparklines of use.

Nothing is loaded and no script runs: each row is a small `<svg>` of run-length
rectangles (one per stretch of one state) and one polyline. Only the `DRAWN` worst
coordinators get rows; the others are one summary line and one chart of how many were at
`soft` and `hard` in each tick, so the page stays a few hundred kilobytes at 2,000.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable
from html import escape

from market_data_sidecar.views.format import count, percent
from market_data_sidecar.views.history import ABSENT, RANKS, History, Kind, Series

#: Coordinators drawn one row each; the rest are summarised.
DRAWN = 20
#: Drawing height of a row, in viewBox units (the x axis is one unit a tick).
_HEIGHT = 10
_STATE_CLASS = ("good", "warn", "bad")


def history_section(history: History | None) -> str:
    if history is None:
        return ""
    held = history.numbers()
    if not held:
        body = '<p class="muted">No sample taken yet.</p>'
    else:
        minutes = len(held) * history.tick / 60
        body = (
            f'<p class="muted">The last {minutes:.0f} min, one point every '
            f"{history.tick:g}s; each point keeps the worst state and the peak utilization "
            "seen in it. Newest on the right.</p>"
            + _rows(history, "component", "Components", sorted(history.series["component"]))
            + _rows(history, "target", "Composites", sorted(history.series["target"]))
            + _coordinators(history)
        )
    return f'<section id="history"><h2>History</h2>{body}</section>'


def _rows(history: History, kind: Kind, title: str, names: Iterable[str]) -> str:
    named = history.series[kind]
    rows = "".join(
        f'<tr data-history-{kind}="{escape(name)}" '
        f'data-state="{escape(_word(kind, named[name].last_state))}">'
        f"<td>{escape(name)}</td><td>{timeline(history, named[name])}</td>"
        f"{_use_cells(history, named[name])}</tr>"
        for name in names
    )
    if not rows:
        return ""
    use = "<th>utilization</th><th>now</th>" if kind == "coordinator" else ""
    return (
        f'<table class="history"><thead><tr><th>{escape(title)}</th><th>state</th>{use}'
        f"</tr></thead><tbody>{rows}</tbody></table>"
    )


def _coordinators(history: History) -> str:
    named = history.series["coordinator"]
    if not named:
        return ""
    oldest = history.numbers().start
    severity = {name: _severity(series, oldest) for name, series in named.items()}
    ranked = sorted(named, key=severity.__getitem__, reverse=True)
    drawn = _rows(
        history, "coordinator", f"Worst {min(DRAWN, len(ranked))} coordinators", ranked[:DRAWN]
    )
    return drawn + _summary(history, len(ranked) - min(DRAWN, len(ranked)), severity.values())


def _severity(series: Series, oldest: int) -> tuple[int, int, float]:
    """Worst within the window (the history answers "who went hard"), then worst now,
    then the fullest queue now."""
    latest = series.latest_utilization
    fullest = 0.0 if latest is None or math.isnan(latest) else latest
    return (series.worst(oldest), series.last_state, fullest)


def _summary(history: History, rest: int, severities: Collection[tuple[int, int, float]]) -> str:
    """The line under the drawn rows; `severities` is every coordinator's `_severity`."""
    now: list[int] = [0, 0, 0]
    ever_hard = 0
    for worst, last_state, _ in severities:
        if last_state != ABSENT:
            now[last_state] += 1
        if worst == 2:
            ever_hard += 1
    total = len(severities)
    dropped = (
        f"; {count(history.dropped_series)} more seen but not kept"
        if history.dropped_series
        else ""
    )
    more = f"{count(rest)} more not drawn; " if rest else ""
    return (
        f'<p class="muted" data-history-summary="{total}" data-hard="{now[2]}" '
        f'data-soft="{now[1]}" data-ok="{now[0]}">All {count(total)} coordinators ({more}'
        f"now {count(now[2])} hard, {count(now[1])} soft, {count(now[0])} ok; "
        f"{count(ever_hard)} were hard within the window{dropped}). At soft and hard:</p>"
        + _counts_chart(history)
    )


def _counts_chart(history: History) -> str:
    """How many coordinators were at soft and at hard in each tick, as stacked bars
    scaled to the window's peak (named in the chart's title)."""
    points, height = history.points, _HEIGHT * 3
    positions = list(_positions(history))
    peak = max((history.counts[1][s] + history.counts[2][s] for s, _ in positions), default=0)
    scale = height / max(1, peak)
    bars = []
    for slot, x in positions:
        hard, soft = history.counts[2][slot], history.counts[1][slot]
        if hard:
            bars.append(_rect(x, 1, "bad", height - hard * scale, hard * scale))
        if soft:
            bars.append(_rect(x, 1, "warn", height - (hard + soft) * scale, soft * scale))
    return (
        f'<svg class="counts" viewBox="0 0 {points} {height}" preserveAspectRatio="none" '
        f'role="img"><title>coordinators at soft and hard (top: {peak})</title>'
        f'<rect class="lane" width="{points}" height="{height}"/>{"".join(bars)}</svg>'
    )


def timeline(history: History, series: Series) -> str:
    """Stretches of one state as rectangles; ticks without a reading stay blank."""
    rects = []
    run: tuple[float, int, int] | None = None  # start x, width, rank
    for slot, x in _positions(history):
        rank = series.states[slot]
        if run is not None and run[2] == rank and run[0] + run[1] == x:
            run = (run[0], run[1] + 1, rank)
            continue
        if run is not None and run[2] != ABSENT:
            rects.append(_rect(run[0], run[1], _STATE_CLASS[run[2]], 0, _HEIGHT))
        run = (x, 1, rank)
    if run is not None and run[2] != ABSENT:
        rects.append(_rect(run[0], run[1], _STATE_CLASS[run[2]], 0, _HEIGHT))
    return (
        f'<svg class="timeline" viewBox="0 0 {history.points} {_HEIGHT}" '
        f'preserveAspectRatio="none" role="img"><rect class="lane" width="{history.points}" '
        f'height="{_HEIGHT}"/>{"".join(rects)}</svg>'
    )


def sparkline(history: History, series: Series) -> str:
    """Utilization from 0 (bottom) to 100 % (top), broken where nothing was read."""
    lines: list[list[str]] = [[]]
    peak = 0.0
    for slot, x in _positions(history):
        value = series.utilization[slot] if series.utilization is not None else math.nan
        if math.isnan(value):
            if lines[-1]:
                lines.append([])
            continue
        peak = max(peak, value)
        lines[-1].append(f"{x},{100 - round(100 * max(0.0, min(1.0, value)))}")
    drawn = "".join(
        f'<polyline points="{" ".join(line)}"/>' if len(line) > 1 else _dot(line[0])
        for line in lines
        if line
    )
    return (
        f'<svg class="spark" viewBox="0 -2 {history.points} 104" '
        f'preserveAspectRatio="none" role="img"><title>peak {escape(percent(peak))}</title>'
        f'<rect class="lane" y="-2" width="{history.points}" height="104"/>{drawn}</svg>'
    )


def _use_cells(history: History, series: Series) -> str:
    latest = series.latest_utilization
    if latest is None:
        return ""
    shown = "-" if math.isnan(latest) else percent(latest)
    return f'<td>{sparkline(history, series)}</td><td class="num">{escape(shown)}</td>'


def _positions(history: History) -> Iterable[tuple[int, int]]:
    """(slot, x) of every tick held: the newest at the right edge."""
    for number in history.numbers():
        yield number % history.points, history.points - 1 - (history.current - number)


def _rect(x: float, width: float, cls: str, y: float, height: float) -> str:
    return f'<rect class="{cls}" x="{x:g}" y="{y:.2f}" width="{width:g}" height="{height:.2f}"/>'


def _dot(point: str) -> str:
    x, y = point.split(",")
    return f'<circle cx="{x}" cy="{y}" r="2"/>'


def _word(kind: Kind, rank: int) -> str:
    return RANKS[kind][rank] if rank != ABSENT else "unknown"


HISTORY_CSS = """
table.history { margin-bottom: 10px; border: 1px solid var(--line); }
table.history td { vertical-align: middle; }
table.history td:first-child { width: 22%; overflow-wrap: anywhere; }
svg.timeline, svg.spark { width: 360px; height: 14px; display: block; }
svg.counts { width: 360px; height: 42px; display: block; margin-bottom: 10px; }
svg .lane { fill: #eaeef2; }
svg .good { fill: var(--good); } svg .warn { fill: var(--warn); } svg .bad { fill: var(--bad); }
svg.spark polyline { fill: none; stroke: #0969da; stroke-width: 1.2;
  vector-effect: non-scaling-stroke; }
svg.spark circle { fill: #0969da; }
"""
