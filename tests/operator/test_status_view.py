"""The terminal view built from `/healthz` and `/feedback` JSON."""

from __future__ import annotations

import re
import time
from types import SimpleNamespace
from typing import Any

import pytest

from market_data_sidecar.views import format as view_format
from market_data_sidecar.views.command import local_url
from market_data_sidecar.views.model import ReceiverRow, StatusView, summarize, target_health
from market_data_sidecar.views.page import render_page
from market_data_sidecar.views.terminal import bar, render_lines, render_table

NOW = time.time()

HEALTH: dict[str, Any] = {
    "service": "market-data-store",
    "state": "degraded",
    "version": "0.1.0",
    "ts": NOW,
    "components": [
        {
            "name": "disk",
            "state": "healthy",
            "details": {"paths": "/data", "/data:free_ratio": "0.4211", "duration_ms": "0.4"},
        },
        {
            "name": "queue",
            "state": "degraded",
            "details": {
                "url": "http://127.0.0.1:8082/metrics",
                "coordinators": "bars-coord,quotes-coord",
                "bars-coord:depth": "850",
                "bars-coord:capacity": "1000",
                "bars-coord:utilization": "0.85",
                "bars-coord:level": "hard",
                "bars-coord:workers_alive": "4",
                "bars-coord:circuit": "closed",
                "quotes-coord:depth": "100",
                "quotes-coord:capacity": "2000",
                "quotes-coord:level": "ok",
                "reason": "bars-coord at 85% of capacity",
            },
        },
    ],
}

FEEDBACK: dict[str, Any] = {
    "coordinators": {
        "bars-coord": {
            "coordinator_id": "bars-coord",
            "queue_size": 850,
            "capacity": 1000,
            "level": "hard",
            "source": "store",
            "ts": NOW - 3,
            "reason": None,
            "id": "evt_1",
            "origin": "store",
        },
        "fills-coord": {
            "coordinator_id": "fills-coord",
            "queue_size": 10,
            "capacity": 100,
            "level": "ok",
            "source": "sidecar",
            "ts": NOW - 1,
            "reason": "queue_recovered",
            "id": "evt_2",
            "origin": "synthesized",
        },
    },
    "targets": [
        {
            "name": "orchestrator",
            "kind": "http",
            "endpoint": "http://orchestrator:8080/feedback",
            "mode": "latest",
            "buffer_depth": 0,
            "delivered": 12,
            "retried": 1,
            "dropped": 0,
            "last_success": NOW - 2,
            "last_error": None,
            "last_error_at": None,
            "circuit": "closed",
            "disabled": False,
        },
        {
            "name": "pipeline",
            "kind": "redis-stream",
            "endpoint": "redis://redis:6379/0",
            "mode": "all",
            "buffer_depth": 7,
            "delivered": 0,
            "retried": 9,
            "dropped": 2,
            "last_success": None,
            "last_error": "connection",
            "last_error_at": NOW - 1,
            "circuit": "open",
            "disabled": False,
            "readers": [
                {
                    "group": "pipeline",
                    "consumers": 1,
                    "pending": 9600,
                    "lag": 0,
                    "idle_seconds": 0.4,
                },
                {
                    "group": "orchestrator",
                    "consumers": "junk",
                    "pending": 0,
                    "lag": None,
                    "idle_seconds": None,
                },
            ],
        },
    ],
    "last_store_event_at": NOW - 3,
    "synthesizing": False,
}

ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(autouse=True)
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ages ("3s ago") are relative to NOW, however long the test session has run."""
    monkeypatch.setattr(view_format, "time", SimpleNamespace(time=lambda: NOW))


def test_coordinators_merge_polled_queues_and_latest_events() -> None:
    view = StatusView.from_json(HEALTH, FEEDBACK)
    rows = {c.coordinator_id: c for c in view.coordinators}
    assert sorted(rows) == ["bars-coord", "fills-coord", "quotes-coord"]

    bars = rows["bars-coord"]
    assert (bars.depth, bars.capacity, bars.level, bars.workers, bars.circuit) == (
        850,
        1000,
        "hard",
        "4",
        "closed",
    )
    assert bars.utilization == 0.85
    assert (bars.event_level, bars.event_origin) == ("hard", "store")

    # Known only from the relay: its last event supplies depth and level.
    fills = rows["fills-coord"]
    assert (fills.depth, fills.capacity, fills.current_level) == (10, 100, "ok")
    assert fills.event_origin == "synthesized"
    assert fills.event_reason == "queue_recovered"

    # Known only from the queue check.
    assert rows["quotes-coord"].current_level == "ok"
    assert rows["quotes-coord"].event_level is None


def test_targets_are_read_with_their_state() -> None:
    view = StatusView.from_json(HEALTH, FEEDBACK)
    orchestrator, pipeline = view.targets
    assert (orchestrator.delivered, orchestrator.retried) == (12, 1)
    assert target_health(orchestrator) == "healthy"
    assert (pipeline.circuit, pipeline.dropped, target_health(pipeline)) == ("open", 2, "unhealthy")
    assert view.relay
    assert not view.synthesizing


def test_a_sidecar_without_relay_state_still_renders() -> None:
    view = StatusView.from_json(HEALTH, None)
    assert not view.relay
    assert view.targets == ()
    text = render_table(view)
    assert "TARGET" not in text
    assert "bars-coord" in text


def test_unknown_and_missing_fields_are_tolerated() -> None:
    view = StatusView.from_json(
        {"state": "healthy", "components": [{"name": "x"}, "junk"], "extra": 1},
        {"coordinators": {"c": "not an object"}, "targets": [{"delivered": "many"}]},
    )
    assert [c.name for c in view.components] == ["x"]
    assert view.targets[0].delivered == 0
    assert render_table(view)
    assert render_lines(view)


def test_table_shows_levels_deliveries_and_errors_without_colour() -> None:
    text = render_table(StatusView.from_json(HEALTH, FEEDBACK))
    assert not ANSI.search(text)
    lines = text.splitlines()
    assert lines[0].startswith("market-data-store 0.1.0: DEGRADED")
    queue_row = next(line for line in lines if line.startswith("queue"))
    assert "degraded" in queue_row
    assert "bars-coord at 85% of capacity" in queue_row
    bars_row = next(line for line in lines if line.startswith("bars-coord"))
    assert "hard" in bars_row
    assert "850/1000  [########--]  85%" in bars_row
    assert bars_row.endswith("hard 3s ago")
    assert "85%" in bars_row
    pipeline_row = next(line for line in lines if line.startswith("pipeline"))
    assert re.search(r"open\s+7\s+0\s+9\s+2\s+never\s+connection", pipeline_row)
    assert "feedback: store pushes; last event from the store 3s ago" in text


def test_a_streams_readers_show_under_the_targets() -> None:
    view = StatusView.from_json(HEALTH, FEEDBACK)
    orchestrator, pipeline = view.targets
    assert orchestrator.readers is None  # not a stream
    assert [group.consumers for group in pipeline.readers or []] == [1, 0]
    text = render_table(view)
    assert (
        "readers of pipeline: pipeline: lag 0, 9600 pending, seen 0.4s ago; "
        "orchestrator: lag ?, 0 pending, no consumer"
    ) in text
    assert "readers of orchestrator" not in text
    assert "readers pipeline: lag 0" in "\n".join(render_lines(view))

    nobody = {**FEEDBACK, "targets": [{**FEEDBACK["targets"][1], "readers": []}]}
    assert "readers of pipeline: no reader" in render_table(StatusView.from_json(HEALTH, nobody))


def test_colour_marks_states_and_width_trims_lines() -> None:
    view = StatusView.from_json(HEALTH, FEEDBACK)
    coloured = render_table(view, colour=True)
    assert "\x1b[33mdegraded" in coloured  # yellow
    assert "\x1b[31mopen" in coloured  # red
    assert ANSI.sub("", coloured) == render_table(view)
    narrow = render_table(view, colour=True, width=40)
    assert all(len(ANSI.sub("", line)) <= 40 for line in narrow.splitlines())


def test_plain_lines_name_one_subject_each() -> None:
    view = StatusView.from_json(HEALTH, FEEDBACK).with_receivers(
        [ReceiverRow("http", "http", 12, "bars-coord hard")]
    )
    lines = render_lines(view)
    assert lines[0] == "sidecar degraded: disk healthy, queue degraded"
    assert "component queue: degraded; bars-coord at 85% of capacity" in lines
    assert (
        "coordinator bars-coord: level hard, depth 850/1000 (85%), last event hard from store"
        in lines
    )
    assert any(line.startswith("target pipeline (redis-stream): delivered 0,") for line in lines)
    assert "receiver http (http): received 12, last bars-coord hard" in lines


def test_summary_prefers_the_problem() -> None:
    assert summarize({"reason": "bad", "latency_ms": "3"}) == "bad"
    assert summarize({"error": "boom", "reason": "bad"}) == "boom; bad"
    assert summarize({"latency_ms": "3", "target": "db:5432", "role": "primary"}) == (
        "latency_ms=3; role=primary"
    )
    assert summarize({"paths": "/a", "/a:free_ratio": "0.5"}) == "/a 50.0% free"


def test_bar() -> None:
    assert bar(0.5, width=4) == "[##--]"
    assert bar(1.7, width=4) == "[####]"
    assert bar(None, width=4) == "      "


def test_local_url_reaches_wildcard_and_specific_listeners() -> None:
    assert local_url("0.0.0.0", 8090) == "http://127.0.0.1:8090"
    assert local_url("::", 8090) == "http://127.0.0.1:8090"
    assert local_url("10.0.0.7", 9000) == "http://10.0.0.7:9000"
    assert local_url("::1", 8090) == "http://[::1]:8090"


def test_the_readers_behind_a_group_and_what_they_rejected_show_under_the_targets() -> None:
    stream = {**FEEDBACK["targets"][1]}
    stream["readers"] = [{**stream["readers"][0], "readers": 3}]
    stream["dead_letters"] = {
        "key": "mdp:mdp.telemetry.feedback.dlq",
        "length": 4,
        "since_start": 2,
        "newest_age_seconds": 5.2,
        "reason": "Unknown schema_id",
    }
    view = StatusView.from_json(HEALTH, {**FEEDBACK, "targets": [stream]})
    text = render_table(view)
    assert "pipeline: lag 0, 9600 pending, seen 0.4s ago, ~3 readers" in text
    assert (
        "dead letters of pipeline: 4 dead-lettered (2 since start), newest 5s ago: "
        "Unknown schema_id"
    ) in text
    assert "dead letters 4 dead-lettered" in "\n".join(render_lines(view))
    page = render_page(view)
    assert "~3 readers" in page
    assert "Unknown schema_id" in page
