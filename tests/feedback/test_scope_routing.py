"""Targets in `pod` scope, through the whole sidecar to a real webhook receiver: the pod's
composite, only when it changes, never milder than the truth; and coordinators the store
no longer exports leave it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from market_data_sidecar.settings import Settings
from tests.feedback.conftest import http_target
from tests.support.helpers import eventually, store_payload
from tests.support.receivers import StartOrchestrator
from tests.support.sidecar import StartSidecar
from tests.support.store import Coordinator, StoreMetrics


async def test_a_pod_target_gets_the_worst_coordinator_only_when_it_changes(
    orchestrator: StartOrchestrator,
    sidecar_client: StartSidecar,
    relay_settings: Callable[..., Settings],
) -> None:
    receiver = await orchestrator()
    settings = relay_settings(
        targets=[http_target("pipeline", receiver.url, scope="pod")], instance="pod-a"
    )
    client = await sidecar_client(settings)
    # (coordinator, level, depth, composites delivered after it): `quotes soft` changes
    # nothing (bars' hard stays the worst), so nothing is delivered for it.
    steps = [
        ("bars", "hard", 900, 1),
        ("quotes", "ok", 10, 2),  # the first step: the rate must stay at hard
        ("quotes", "soft", 600, 2),
        ("bars", "ok", 100, 3),
        ("quotes", "soft", 650, 4),
        ("quotes", "ok", 20, 5),
    ]
    for coordinator, level, depth, delivered in steps:
        response = await client.post(
            "/feedback", json=store_payload(coordinator, depth, level=level)
        )
        assert response.status == 202
        # One crossing at a time, as the store sends them, so none is conflated.
        await eventually(
            lambda count=delivered: len(receiver.delivered) >= count,
            message=f"{delivered} delivered after {coordinator} {level}",
        )

    events: list[dict[str, Any]] = receiver.events()
    # Never milder than the truth: the store's `quotes ok` did not lift `bars`' hard,
    # and `bars ok` left quotes' soft. Each is a change (level, coordinator, depth or count).
    assert [
        (e["level"], e["coordinator_id"], e["queue_size"], e["coordinators"]) for e in events
    ] == [
        ("hard", "bars", 900, 1),
        ("hard", "bars", 900, 2),
        ("soft", "quotes", 600, 2),
        ("soft", "quotes", 650, 2),
        ("ok", "bars", 100, 2),
    ]
    assert all(event["scope"] == "pod" and event["member"] == "pod-a" for event in events)

    state = await (await client.get("/feedback")).json()
    [target] = state["targets"]
    assert target["scope"] == "pod"
    assert target["composite"]["level"] == "ok"
    assert target["composite"]["coordinators"] == 2
    assert target["members"] == []


async def test_a_coordinator_the_store_no_longer_exports_leaves_the_composite(
    orchestrator: StartOrchestrator,
    store_metrics: StoreMetrics,
    sidecar_client: StartSidecar,
    relay_settings: Callable[..., Settings],
) -> None:
    receiver = await orchestrator()
    store_metrics.coordinators = {"bars": Coordinator(depth=100), "quotes": Coordinator()}
    settings = relay_settings(
        targets=[http_target("pipeline", receiver.url, scope="pod")],
        store_metrics_url=store_metrics.url,
        queue_capacity=1000,
        check_interval=0.05,
        instance="pod-a",
    )
    client = await sidecar_client(settings)
    await client.post("/feedback", json=store_payload("bars", 950, level="hard"))

    def last_level() -> str | None:
        events = receiver.events()
        return events[-1]["level"] if events else None

    await eventually(lambda: last_level() == "hard", message="hard relayed")

    # The store is redeployed with `bars` renamed: `bars` must not pin the pod at hard.
    store_metrics.coordinators = {"bars-v2": Coordinator(depth=100), "quotes": Coordinator()}

    await eventually(lambda: last_level() == "ok", message="the renamed coordinator left")
    state = await (await client.get("/feedback")).json()
    assert "bars" not in state["coordinators"]
    assert set(state["coordinators"]) == {"bars-v2", "quotes"}
    assert state["targets"][0]["composite"]["coordinators"] == 2
