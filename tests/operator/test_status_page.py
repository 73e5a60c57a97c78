"""`GET /`: the HTML status page, in-process and in a real headless browser."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from market_data_sidecar.server.probes import MONITOR
from market_data_sidecar.views.model import StatusView
from market_data_sidecar.views.page import render_page
from tests.operator.conftest import Chromium, FixedCheck
from tests.operator.test_status_view import FEEDBACK, HEALTH
from tests.support.helpers import SidecarProcess, eventually
from tests.support.sidecar import StartSidecar, make_settings

HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)> & "quoted"'


class Elements(HTMLParser):
    """Every element's tag, attributes and own text, in document order."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.found: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def with_attr(self, name: str, value: str | None = None) -> list[dict[str, str | None]]:
        return [
            attrs
            for _, attrs in self.found
            if name in attrs and (value is None or attrs[name] == value)
        ]

    def tags(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for name, attrs in self.found if name == tag]


async def test_page_shows_components_with_their_details_escaped(
    sidecar_client: StartSidecar,
) -> None:
    checks = [
        FixedCheck("disk", "degraded", {"reason": HOSTILE, HOSTILE: "key too"}),
        FixedCheck("database", "healthy", {"latency_ms": "1.2"}),
    ]
    client = await sidecar_client(make_settings(), checks=checks)
    await eventually(lambda: client.app[MONITOR].first_round_done, message="first round")

    response = await client.get("/")
    assert response.status == 200
    assert response.content_type == "text/html"
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    html = await response.text()

    assert "<script" not in html
    assert "onerror=alert" not in html.replace("onerror=alert(1)&gt;", "")
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html
    page = Elements(html)
    assert not page.tags("script")
    assert not page.tags("img")
    # The escaped text reads back as exactly what the check reported.
    assert "".join(page.text).count(HOSTILE) >= 3  # summary, reason value, key

    states = {a["data-component"]: a["data-state"] for a in page.with_attr("data-component")}
    assert states["disk"] == "degraded"
    assert states["database"] == "healthy"
    assert page.with_attr("id", "overall")[0]["data-state"] == "degraded"
    assert "latency_ms" in html


async def test_page_is_self_contained_and_refreshes_itself(
    sidecar_client: StartSidecar,
) -> None:
    client = await sidecar_client(make_settings())
    html = await (await client.get("/")).text()
    page = Elements(html)
    refresh = [m for m in page.tags("meta") if m.get("http-equiv") == "refresh"]
    assert refresh == [{"http-equiv": "refresh", "content": "5"}]
    # No external assets: no scripts, stylesheets, images or fonts from anywhere.
    assert not page.tags("script")
    assert not page.tags("link")
    assert not page.tags("img")
    assert "url(" not in html
    assert "@import" not in html
    # Relative links only: nothing leaves the sidecar, and a path prefix (kubectl proxy) works.
    hrefs = [a["href"] or "" for a in page.tags("a")]
    assert [h for h in hrefs if not h.startswith("#")] == [
        "?refresh=0",
        "healthz",
        "feedback",
        "metrics",
    ]
    anchors = {a["id"] for a in page.with_attr("id")}
    assert all(h[1:] in anchors for h in hrefs if h.startswith("#"))

    html = await (await client.get("/?refresh=0")).text()
    assert 'http-equiv="refresh"' not in html
    assert '<a href="?">resume</a>' in html
    html = await (await client.get("/?refresh=bogus")).text()
    assert '<meta http-equiv="refresh" content="5">' in html


async def test_page_answers_before_any_check_has_reported(
    sidecar_client: StartSidecar,
) -> None:
    """The page reads the cache only: a check that never finishes does not hold it up."""

    class Hanging(FixedCheck):
        async def run(self) -> Any:
            await asyncio.Event().wait()

    client = await sidecar_client(
        make_settings(check_timeout=30.0),
        checks=[Hanging("database", "healthy", {})],
    )
    async with asyncio.timeout(5):
        response = await client.get("/")
    assert response.status == 200
    page = Elements(await response.text())
    assert not page.with_attr("data-component", "database")
    # Until every check has reported, the aggregate is not known to be healthy.
    assert page.with_attr("id", "overall")[0]["data-state"] == "unhealthy"


def test_coordinators_and_targets_render_with_bars_and_states() -> None:
    html = render_page(StatusView.from_json(HEALTH, FEEDBACK))
    page = Elements(html)
    levels = {a["data-coordinator"]: a["data-level"] for a in page.with_attr("data-coordinator")}
    assert levels == {"bars-coord": "hard", "fills-coord": "ok", "quotes-coord": "ok"}
    widths = re.findall(r'class="fill [a-z]+" style="width:([0-9.]+)%"', html)
    assert widths == ["85.0", "10.0", "5.0"]
    targets = {a["data-target"]: a["data-state"] for a in page.with_attr("data-target")}
    assert targets == {"orchestrator": "healthy", "pipeline": "unhealthy"}
    assert "http://orchestrator:8080/feedback" in html
    assert "Feedback is pushed by the store" in html
    assert "pipeline: lag 0, 9600 pending, seen 0.4s ago" in html


async def test_page_in_headless_chromium_shows_a_degraded_disk(
    sidecar_process: Callable[..., SidecarProcess], chromium: Chromium, artifacts: Path
) -> None:
    process = sidecar_process(
        {"SIDECAR_DISK_FREE_DEGRADED": "0.999", "SIDECAR_DISK_FREE_UNHEALTHY": "0.0"}
    )
    await process.wait_listening()

    async def disk_degraded() -> bool:
        _status, body = await process.get("/healthz")
        return '"degraded"' in body

    await eventually(disk_degraded, message="disk degraded")
    url = process.url + "/"
    screenshot = artifacts / "status-page-degraded-disk.png"
    dom = await chromium.dump_dom(url)
    await chromium.screenshot(url, screenshot)

    page = Elements(dom)
    disk = page.with_attr("data-component", "disk")
    assert disk, dom[:2000]
    assert disk[0]["data-state"] == "degraded"
    assert page.with_attr("id", "overall")[0]["data-state"] == "degraded"
    text = " ".join("".join(page.text).split())
    assert "disk degraded" in text
    assert "free" in text
    assert "of space" in text
    assert screenshot.stat().st_size > 10_000  # a rendered page, not a blank image
