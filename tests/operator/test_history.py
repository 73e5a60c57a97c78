"""The history of states: folded into ticks, bounded, served, printed and drawn."""

from __future__ import annotations

import time
from html import escape
from pathlib import Path

from pytest_aiohttp import AiohttpServer

from market_data_sidecar.server.probes import MONITOR
from market_data_sidecar.views.history import History, Reading
from market_data_sidecar.views.sampler import HISTORY
from market_data_sidecar.views.timeline import DRAWN, history_section
from tests.operator.conftest import Chromium, FixedCheck
from tests.operator.test_status_cli import status_cli
from tests.operator.test_status_page import HOSTILE, Elements
from tests.support.helpers import eventually, store_payload
from tests.support.receivers import WebhookReceiver
from tests.support.sidecar import StartSidecar, make_settings
from tests.support.store import Coordinator, StoreMetrics

T0 = 1_800_000_000.0  # a tick boundary for a 10 s tick


def coordinators(level: str, ratio: float) -> Reading:
    return Reading(coordinators={"c1": (level, ratio)})


def test_a_tick_keeps_the_worst_state_and_the_peak_utilization() -> None:
    history = History(tick=10.0, points=6)
    history.record(coordinators("ok", 0.2), T0)
    history.record(coordinators("hard", 0.9), T0 + 3)
    history.record(coordinators("soft", 0.5), T0 + 6)
    history.record(coordinators("ok", 0.1), T0 + 12)
    series = history.series["coordinator"]["c1"]
    slots = [slot for slot, _start in history.ticks()]
    assert [series.states[s] for s in slots] == [2, 0]  # hard within the first tick
    assert series.utilization is not None
    assert [round(series.utilization[s], 2) for s in slots] == [0.9, 0.1]
    assert [history.counts[rank][slots[0]] for rank in (0, 1, 2)] == [0, 0, 1]


def test_changes_name_the_state_before_and_skip_a_fine_first_sight() -> None:
    history = History(tick=10.0, points=6)
    history.record(Reading(components={"disk": "healthy", "queue": "degraded"}), T0)
    history.record(Reading(components={"disk": "unhealthy", "queue": "degraded"}), T0 + 2)
    history.record(Reading(components={"disk": "healthy", "queue": "degraded"}), T0 + 4)
    seen = [(c.name, c.previous, c.state, c.ts) for c in history.state().changes]
    assert seen == [
        ("queue", None, "degraded", T0),
        ("disk", "healthy", "unhealthy", T0 + 2),
        ("disk", "unhealthy", "healthy", T0 + 4),
    ]


def test_the_window_forgets_old_series_and_bounds_what_it_holds() -> None:
    history = History(tick=10.0, points=4, max_coordinators=3, max_changes=5)
    many = {f"c{i}": ("hard", 1.0) for i in range(10)}
    history.record(Reading(coordinators=many), T0)
    state = history.state()
    assert state.series["coordinator"] == 3
    assert state.dropped_series == 7
    history.record(Reading(coordinators=many), T0 + 1)
    assert history.state().dropped_series == 7  # the latest reading's, not a running sum
    assert len(state.changes) == 3  # three kept series went hard on first sight
    for step in range(1, 5):  # the flapping component fills the change log
        history.record(Reading(components={"disk": "degraded" if step % 2 else "healthy"}), T0)
    assert len(history.changes) == 5
    assert history.state().forgotten == 2
    # Four ticks later the coordinators were not seen within the window: gone.
    history.record(Reading(components={"disk": "healthy"}), T0 + 40)
    assert history.state().series == {"component": 1, "coordinator": 0, "target": 0}
    assert len(list(history.ticks())) == 4


async def test_history_is_sampled_from_the_running_sidecar_and_served(
    sidecar_client: StartSidecar,
) -> None:
    disk = FixedCheck("disk", "healthy", {})
    client = await sidecar_client(make_settings(), checks=[disk])
    await eventually(lambda: client.app[MONITOR].first_round_done, message="first round")
    await eventually(lambda: "disk" in client.app[HISTORY].series["component"], message="sample")
    disk.state = "degraded"

    async def changed() -> list[dict[str, object]]:
        body = await (await client.get("/history")).json()
        return [c for c in body["changes"] if c["name"] == "disk"]

    change = (await eventually(changed, message="disk change sampled"))[0]
    assert (change["kind"], change["previous"], change["state"]) == (
        "component",
        "healthy",
        "degraded",
    )
    url = str(client.make_url("")).rstrip("/")
    code, out, err = await status_cli("--url", url, "--history")
    assert code == 1, err
    assert "History (the last 60 min, oldest first):" in out
    assert any(line.endswith("component   disk: healthy -> degraded") for line in out.splitlines())

    for bad in ("-1", "x", "2001"):
        response = await client.get("/history", params={"limit": bad})
        assert response.status == 400
        assert "limit must be an integer" in (await response.json())["error"]
    assert (await (await client.get("/history?limit=0")).json())["changes"] == []


def test_names_from_the_store_are_escaped_in_the_drawing() -> None:
    history = History(tick=10.0, points=6)
    history.record(Reading(coordinators={HOSTILE: ("hard", 0.5)}), T0)
    html = history_section(history)
    assert "<script" not in html
    assert escape(HOSTILE) in html


def fill(history: History, *, coordinators: int, end: float) -> None:
    """A full window: every coordinator each tick; every 97th one hard for a third of it."""
    ticks = history.points
    for tick in range(ticks):
        now = end - (ticks - 1 - tick) * history.tick
        reading = {
            f"coord-{i:04d}": (
                "hard" if i % 97 == 0 and tick % 30 < 10 else "soft" if i % 13 == 0 else "ok",
                (i * 7 + tick) % 100 / 100,
            )
            for i in range(coordinators)
        }
        components = {"disk": "healthy", "queue": "degraded" if tick % 50 < 5 else "healthy"}
        history.record(Reading(components, reading, {"pipeline": "ok"}), now)


#: What the page may weigh and how long Chromium may take over it at 2,000 coordinators,
#: beyond a page with no history (measured beside it in the same test).
MAX_PAGE_BYTES = 400_000
MAX_EXTRA_RENDER_SECONDS = 10.0


async def test_page_at_2000_coordinators_in_headless_chromium(
    sidecar_client: StartSidecar,
    aiohttp_server: AiohttpServer,
    chromium: Chromium,
    artifacts: Path,
) -> None:
    client = await sidecar_client(make_settings())
    url = str(client.make_url("/?refresh=0"))
    started = time.monotonic()
    await chromium.dump_dom(url)
    baseline = time.monotonic() - started

    # The queue check scrapes a store of the test's own: every 45th coordinator hard now.
    store = StoreMetrics()
    store.coordinators = {
        f"coord-{i:04d}": Coordinator(depth=9_500 if i % 45 == 0 else i) for i in range(2_000)
    }
    await store.serve(aiohttp_server)
    client = await sidecar_client(make_settings(store_metrics_url=store.url))
    history = client.app[HISTORY]
    # Generous deadlines: parsing 2,000 coordinators on a busy 2-core machine.
    await eventually(lambda: len(history.polled) == 2_000, timeout=30, message="a scrape of 2,000")
    await eventually(
        lambda: len(history.series["coordinator"]) == 2_000,
        timeout=30,
        message="2,000 series sampled",
    )
    # The filled hour ends before the live samples: they stay the newest.
    fill(history, coordinators=2_000, end=time.time() - 2 * history.tick)
    # The present is the live scrape's (every 45th hard), once a sample after the fill
    # has folded it in.
    hard_now = len(range(0, 2_000, 45))
    await eventually(
        lambda: sum(s.last_state == 2 for s in history.series["coordinator"].values()) == hard_now,
        timeout=30,
        message=f"{hard_now} coordinators hard now",
    )

    url = str(client.make_url("/?refresh=0"))
    response = await client.get("/?refresh=0")
    assert len(await response.read()) < MAX_PAGE_BYTES
    started = time.monotonic()
    dom = await chromium.dump_dom(url)
    took = time.monotonic() - started
    assert took < baseline + MAX_EXTRA_RENDER_SECONDS, (took, baseline)
    screenshot = artifacts / "status-page-history-2000.png"
    await chromium.screenshot(url, screenshot, height=1_600)  # down to the summary

    page = Elements(dom)
    drawn = page.with_attr("data-history-coordinator")
    assert len(drawn) == DRAWN
    # The worst first: hard within the window (every 97th in the filled hour, every
    # 45th in the live scrape) and hard now before those hard earlier only.
    hard = {f"coord-{i:04d}" for i in range(2_000) if i % 97 == 0 or i % 45 == 0}
    assert {a["data-history-coordinator"] for a in drawn} <= hard
    assert all(a["data-state"] == "hard" for a in drawn)
    summary = page.with_attr("data-history-summary")[0]
    assert summary["data-history-summary"] == "2000"
    assert summary["data-hard"] == str(hard_now)
    assert page.with_attr("data-history-component", "queue")
    assert page.with_attr("data-history-target", "pipeline")
    assert len(page.tags("svg")) >= DRAWN * 2 + 3
    assert screenshot.stat().st_size > 10_000


async def test_a_pod_targets_composite_is_in_the_history(sidecar_client: StartSidecar) -> None:
    """The composite comes from the relay's state: read by the sampler, no hook."""
    receiver = await WebhookReceiver().start()
    try:
        target = {"kind": "http", "name": "pipeline", "url": receiver.url, "scope": "pod"}
        client = await sidecar_client(make_settings(targets=[target], instance="pod-a"))
        response = await client.post("/feedback", json=store_payload("bars", 900, level="hard"))
        assert response.status == 202

        async def composite_changes() -> list[dict[str, object]]:
            body = await (await client.get("/history")).json()
            return [c for c in body["changes"] if c["kind"] == "target"]

        change = (await eventually(composite_changes, message="the composite sampled"))[0]
        assert (change["name"], change["previous"], change["state"]) == ("pipeline", None, "hard")
        assert "pipeline" in client.app[HISTORY].series["target"]
        page = Elements(await (await client.get("/?refresh=0")).text())
        assert page.with_attr("data-history-target", "pipeline")[0]["data-state"] == "hard"
    finally:
        await receiver.stop()
