"""`GET /`: a small self-contained HTML status page, rendered from the cached state.

No request waits on a check: the page reads the same snapshot `/healthz` serves and the
relay state `/feedback` serves. Everything that came from outside (component details,
coordinator ids, target errors) is made printable by the view model and HTML-escaped
here, and numbers are formatted defensively, so any accepted data renders (never a 500).
The page loads no external assets and
runs no script, and refreshes itself with `<meta http-equiv="refresh">`. Links are
relative, so the page also works behind a path prefix (`kubectl proxy`, an ingress).
"""

from __future__ import annotations

from collections.abc import Callable
from html import escape

from aiohttp import web
from market_data_core.telemetry import HealthStatus

from market_data_sidecar.feedback.state import RelayState, TargetState
from market_data_sidecar.views.format import age, count, num, percent, timestamp
from market_data_sidecar.views.history import History
from market_data_sidecar.views.model import (
    BOOKKEEPING,
    CoordinatorRow,
    StatusView,
    composite_text,
    dead_letters_text,
    readers_text,
    target_health,
)
from market_data_sidecar.views.sampler import HISTORY
from market_data_sidecar.views.timeline import HISTORY_CSS, history_section

HealthSource = Callable[[], HealthStatus]
FeedbackSource = Callable[[], RelayState | None]

DEFAULT_REFRESH = 5
_MAX_REFRESH = 3600

_HEALTH_SOURCE = web.AppKey[HealthSource]("status_page_health")
_FEEDBACK_SOURCE = web.AppKey[FeedbackSource]("status_page_feedback")

# The page runs no script and loads nothing: say so to the browser too.
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
}


def add_status_routes(
    app: web.Application,
    *,
    health: HealthSource,
    feedback: FeedbackSource | None = None,
) -> None:
    """Serve the page at `GET /` from `health()` (cached), `feedback()` (relay state) and
    the history of both, when the app keeps one (`views.sampler.add_history`)."""
    app[_HEALTH_SOURCE] = health
    app[_FEEDBACK_SOURCE] = feedback or (lambda: None)
    app.router.add_get("/", status_page)


async def status_page(request: web.Request) -> web.Response:
    """`?refresh=SECONDS` sets the reload interval; `?refresh=0` turns it off."""
    refresh = _refresh(request.query.get("refresh"))
    status = request.app[_HEALTH_SOURCE]()
    relay = request.app[_FEEDBACK_SOURCE]()
    feedback = relay.model_dump(mode="json") if relay is not None else None
    view = StatusView.from_json(status.model_dump(mode="json"), feedback)
    # Encoded here with `replace`: the last guard against a character UTF-8 cannot write.
    history = request.app.get(HISTORY)
    body = render_page(view, refresh=refresh, history=history).encode("utf-8", "replace")
    return web.Response(body=body, content_type="text/html", charset="utf-8", headers=_HEADERS)


def _refresh(raw: str | None) -> int:
    try:
        return max(0, min(int(raw), _MAX_REFRESH)) if raw is not None else DEFAULT_REFRESH
    except ValueError:
        return DEFAULT_REFRESH


# -- rendering -------------------------------------------------------------------------------


def render_page(
    view: StatusView, *, refresh: int = DEFAULT_REFRESH, history: History | None = None
) -> str:
    """The whole document; every value from outside passes through `escape`."""
    meta = f'<meta http-equiv="refresh" content="{refresh}">' if refresh else ""
    title = f"{view.service}: {view.state}"
    if refresh:
        note = f'refreshes every {refresh}s (<a href="?refresh=0">pause</a>)'
    else:
        note = 'auto-refresh paused (<a href="?">resume</a>)'

    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
{meta}
<title>{escape(title)}</title>
<style>{_CSS}{HISTORY_CSS}</style>
</head>
<body>
<header>
  <h1>{escape(view.service)} <span class="version">{escape(view.version)}</span></h1>
  <span id="overall" class="badge big {_state_class(view.state)}"
    data-state="{escape(view.state)}">{escape(view.state)}</span>
  <p class="muted">as of {escape(timestamp(view.ts))} &middot; {note} &middot;
    <a href="healthz">/healthz</a> &middot; <a href="feedback">/feedback</a> &middot;
    <a href="metrics">/metrics</a></p>
</header>
<main>
{_components(view)}
{history_section(history)}
{_coordinators(view)}
{_targets(view)}
{_component_details(view)}
</main>
</body>
</html>
"""


def _components(view: StatusView) -> str:
    """One small card per component: its state and the one line that matters."""
    cards = [
        f'<article class="component {_state_class(c.state)}" '
        f'data-component="{escape(c.name)}" data-state="{escape(c.state)}">'
        f'<h3><a href="#details-{escape(c.name)}">{escape(c.name)}</a> '
        f'<span class="badge {_state_class(c.state)}">{escape(c.state)}</span></h3>'
        f'<p class="summary">{escape(c.summary) or "&nbsp;"}</p></article>'
        for c in view.components
    ]
    body = "".join(cards) or '<p class="muted">No check has reported yet.</p>'
    return f'<section id="components"><h2>Components</h2><div class="cards">{body}</div></section>'


def _component_details(view: StatusView) -> str:
    """Every detail of every component; a healthy one's are folded away."""
    blocks = []
    for c in view.components:
        rows = "".join(
            f'<tr class="{"bookkeeping" if key in BOOKKEEPING else ""}">'
            f"<th>{escape(key)}</th><td>{escape(value)}</td></tr>"
            for key, value in sorted(c.details.items(), key=_detail_order)
        )
        unfolded = "" if c.state == "healthy" else " open"
        blocks.append(
            f'<details id="details-{escape(c.name)}" class="{_state_class(c.state)}"{unfolded}>'
            f"<summary>{escape(c.name)} "
            f'<span class="muted">({len(c.details)} details)</span></summary>'
            f'<table class="details">{rows}</table></details>'
        )
    if not blocks:
        return ""
    return f'<section id="details"><h2>Details</h2>{"".join(blocks)}</section>'


def _detail_order(item: tuple[str, str]) -> tuple[int, str]:
    key = item[0]
    if key in ("error", "reason"):
        return (0, key)
    return (2 if key in BOOKKEEPING else 1, key)


def _coordinators(view: StatusView) -> str:
    if not view.coordinators:
        body = '<p class="muted">No coordinator reported yet.</p>'
    else:
        rows = "".join(_coordinator_row(c) for c in view.coordinators)
        body = (
            "<table><thead><tr><th>coordinator</th><th>level</th><th>utilization</th>"
            "<th>depth / capacity</th><th>dropped</th><th>workers</th><th>circuit</th>"
            "<th>last event</th>"
            f"</tr></thead><tbody>{rows}</tbody></table>"
        )
    return f'<section id="coordinators"><h2>Coordinators</h2>{body}</section>'


def _coordinator_row(c: CoordinatorRow) -> str:
    level = c.current_level or "unknown"
    ratio = c.utilization
    shown = percent(ratio)
    width = f"{max(0.0, min(1.0, ratio)) * 100:.1f}" if ratio is not None else "0"
    event = "-"
    if c.event_level:
        event = (
            f'<span class="badge {_level_class(c.event_level)}">{escape(c.event_level)}</span> '
            f"{escape(c.event_origin or '?')}, {escape(age(c.event_ts))}"
        )
        if c.event_reason:
            event += f' <span class="muted">{escape(c.event_reason)}</span>'
    depth = f"{num(c.depth)} / {num(c.capacity)}"
    dropped = f'<span class="error">{num(c.dropped)}</span>' if c.dropped else num(c.dropped)
    return (
        f'<tr data-coordinator="{escape(c.coordinator_id)}" data-level="{escape(level)}">'
        f"<td>{escape(c.coordinator_id)}</td>"
        f'<td><span class="badge {_level_class(level)}">{escape(level)}</span></td>'
        f'<td><div class="bar" title="{escape(shown)}"><div class="fill {_level_class(level)}" '
        f'style="width:{width}%"></div></div> <span class="pct">{escape(shown)}</span></td>'
        f"<td>{escape(depth)}</td><td>{dropped}</td>"
        f"<td>{escape(c.workers or '-')}</td>"
        f"<td>{_circuit(c.circuit)}</td><td>{event}</td></tr>"
    )


def _targets(view: StatusView) -> str:
    if not view.relay:
        body = '<p class="muted">The relay state is not available.</p>'
    elif not view.targets:
        body = '<p class="muted">No targets configured (SIDECAR_TARGETS).</p>'
    else:
        rows = "".join(_target_row(t) for t in view.targets)
        body = (
            "<table><thead><tr><th>target</th><th>kind</th><th>endpoint</th><th>circuit</th>"
            "<th>buffer</th><th>delivered</th><th>retried</th><th>dropped</th>"
            "<th>last success</th><th>last error</th><th>readers</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>"
        )
    source = "synthesized from queue depths" if view.synthesizing else "pushed by the store"
    last = age(view.last_store_event_at) if view.last_store_event_at else "never"
    footer = (
        f'<p class="muted">Feedback is {source}; last event from the store: {escape(last)}.</p>'
        if view.relay
        else ""
    )
    return f'<section id="targets"><h2>Targets</h2>{body}{_composites(view)}{footer}</section>'


def _composites(view: StatusView) -> str:
    """Each scoped target's composite, and a fleet's members with their lease age."""
    parts = []
    for t in view.targets:
        text = composite_text(t)
        if text is None:
            continue
        level = t.composite.level if t.composite else ""
        parts.append(
            f'<p class="composite" data-composite="{escape(t.name)}" data-level="{escape(level)}">'
            f"<strong>{escape(t.name)}</strong>: {escape(text)}</p>"
        )
        if t.members:
            rows = "".join(
                f'<tr data-member="{escape(m.instance)}" data-state="{escape(m.state)}">'
                f"<td>{escape(m.instance)}</td>"
                f'<td><span class="badge {_member_class(m.state)}">{escape(m.state)}</span></td>'
                f'<td><span class="badge {_level_class(m.level)}">{escape(m.level)}</span></td>'
                f"<td>{escape(m.coordinator_id)}</td>"
                f'<td class="num">{count(m.coordinators)}</td>'
                f'<td class="num">{m.lease_age:.1f}s</td></tr>'
                for m in t.members
            )
            parts.append(
                "<table><thead><tr><th>member</th><th>state</th><th>level</th><th>coordinator</th>"
                "<th>coordinators</th><th>lease age</th></tr></thead>"
                f"<tbody>{rows}</tbody></table>"
            )
    return "".join(parts)


def _target_row(t: TargetState) -> str:
    kind = t.kind + (f" ({t.mode})" if t.mode else "")
    circuit = _circuit("disabled" if t.disabled else t.circuit)
    error = "-"
    if t.last_error:
        when = f" ({age(t.last_error_at)})" if t.last_error_at else ""
        error = f'<span class="error">{escape(t.last_error)}</span>{escape(when)}'
    dropped = f'<span class="error">{count(t.dropped)}</span>' if t.dropped else "0"
    return (
        f'<tr data-target="{escape(t.name)}" data-state="{escape(target_health(t))}">'
        f"<td>{escape(t.name)}</td><td>{escape(kind)}</td>"
        f'<td class="endpoint">{escape(t.endpoint)}</td><td>{circuit}</td>'
        f'<td class="num">{count(t.buffer_depth)}</td><td class="num">{count(t.delivered)}</td>'
        f'<td class="num">{count(t.retried)}</td><td class="num">{dropped}</td>'
        f"<td>{escape(age(t.last_success) if t.last_success else 'never')}</td>"
        f"<td>{error}</td><td>{_readers(t)}</td></tr>"
    )


def _readers(t: TargetState) -> str:
    """A stream's consumer groups; `no reader` stands out, as it makes `feedback` degraded."""
    text = readers_text(t)
    if text is None:
        return "-"
    if not t.readers:
        return f'<span class="error">{escape(text)}</span>'
    if (dead := dead_letters_text(t)) is not None:
        return f'{escape(text)}<br><span class="error">{escape(dead)}</span>'
    return escape(text)


def _circuit(circuit: str | None) -> str:
    if not circuit:
        return "-"
    cls = {"closed": "good", "half-open": "warn"}.get(circuit, "bad")
    return f'<span class="badge {cls}">{escape(circuit)}</span>'


def _state_class(state: str) -> str:
    return {"healthy": "good", "degraded": "warn", "unhealthy": "bad"}.get(state, "unknown")


def _member_class(state: str) -> str:
    return "good" if state == "live" else "warn"


def _level_class(level: str) -> str:
    return {"ok": "good", "soft": "warn", "hard": "bad"}.get(level, "unknown")


_CSS = """
:root { --good:#1a7f37; --warn:#9a6700; --bad:#cf222e; --unknown:#6e7781;
  --good-bg:#dafbe1; --warn-bg:#fff8c5; --bad-bg:#ffebe9; --unknown-bg:#eaeef2;
  --line:#d0d7de; --muted:#57606a; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0;
  color: #1f2328; background: #f6f8fa; }
header { background: #fff; border-bottom: 1px solid var(--line); padding: 16px 24px; }
header h1 { display: inline; font-size: 20px; margin: 0 12px 0 0; }
header p { margin: 6px 0 0; }
.version { color: var(--muted); font-weight: normal; font-size: 14px; }
main { padding: 8px 24px 24px; max-width: 1400px; }
h2 { font-size: 16px; margin: 20px 0 8px; }
h3 { font-size: 15px; margin: 0 0 4px; display: flex; justify-content: space-between; }
a { color: #0969da; }
.muted, .bookkeeping { color: var(--muted); }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px;
  font-weight: 600; border: 1px solid currentColor; }
.badge.big { font-size: 15px; padding: 2px 12px; vertical-align: 2px; }
.good { color: var(--good); } .warn { color: var(--warn); }
.bad { color: var(--bad); } .unknown { color: var(--unknown); }
.badge.good { background: var(--good-bg); } .badge.warn { background: var(--warn-bg); }
.badge.bad { background: var(--bad-bg); } .badge.unknown { background: var(--unknown-bg); }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(260px, 1fr));
  gap: 12px; }
.component { background: #fff; border: 1px solid var(--line); border-left: 4px solid;
  border-radius: 6px; padding: 10px 12px; color: inherit; min-width: 0; }
.component.good { border-left-color: var(--good); }
.component.warn { border-left-color: var(--warn); }
.component.bad { border-left-color: var(--bad); }
.component h3 a { color: inherit; text-decoration: none; }
.summary { margin: 0; overflow-wrap: anywhere; }
table { border-collapse: collapse; width: 100%; background: #fff; }
section > table { border: 1px solid var(--line); border-radius: 6px; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #eaeef2;
  vertical-align: top; }
thead th { background: #f6f8fa; font-weight: 600; }
#details details { background: #fff; border: 1px solid var(--line); border-left: 4px solid;
  border-radius: 6px; padding: 6px 12px; margin-bottom: 8px; color: inherit; }
#details details.good { border-left-color: var(--good); }
#details details.warn { border-left-color: var(--warn); }
#details details.bad { border-left-color: var(--bad); }
#details summary { cursor: pointer; font-weight: 600; }
.details { font-size: 13px; table-layout: fixed; margin-top: 4px; }
.details th { font-weight: normal; color: var(--muted); width: 40%; overflow-wrap: anywhere; }
.details td { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 12px;
  overflow-wrap: anywhere; }
.num { text-align: right; font-variant-numeric: tabular-nums; }
.endpoint { font-family: ui-monospace, monospace; font-size: 12px; overflow-wrap: anywhere; }
.error { color: var(--bad); }
.bar { display: inline-block; width: 160px; height: 12px; background: #eaeef2;
  border-radius: 6px; overflow: hidden; vertical-align: middle; }
.fill { height: 100%; background: currentColor; }
.pct { font-variant-numeric: tabular-nums; margin-left: 4px; }
"""
