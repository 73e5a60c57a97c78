"""The relay end to end: store -> POST /feedback -> router -> real orchestrators.

Isolation (one target hanging, one refusing, a healthy one still fast), conflation while
a target is down, synthesized events from the queue check, and `GET /feedback`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from market_data_sidecar.server.feedback import RELAY
from market_data_sidecar.settings import Settings
from tests.feedback.conftest import http_target
from tests.support.helpers import eventually, free_port, store_payload
from tests.support.receivers import StartOrchestrator, WebhookReceiver, closed_port_url
from tests.support.sidecar import StartSidecar
from tests.support.store import Coordinator, StoreMetrics

#: The shape others build a status page and a CLI against.
COORDINATOR_KEYS = {"coordinator_id", "queue_size", "capacity", "level", "source", "ts", "reason"}
COORDINATOR_KEYS |= {"id", "origin"}
TARGET_KEYS = {"name", "kind", "endpoint", "mode", "buffer_depth", "delivered", "retried"}
TARGET_KEYS |= {"dropped", "last_success", "last_error", "last_error_at", "circuit", "disabled"}
TARGET_KEYS |= {"scope", "composite", "members"}
TARGET_KEYS |= {"readers", "dead_letters"}


def metric(client: Any, name: str, **labels: str) -> float:
    registry = client.app[RELAY]._metrics.registry
    return registry.get_sample_value(name, labels) or 0.0


@pytest.mark.exclusive
async def test_a_hanging_and_a_refusing_target_do_not_slow_a_healthy_one(
    orchestrator: StartOrchestrator,
    sidecar_client: StartSidecar,
    relay_settings: Callable[..., Settings],
) -> None:
    healthy, hanging = await orchestrator(), await orchestrator()
    hanging.hang()
    settings = relay_settings(
        targets=[
            http_target("hanging", hanging.url, timeout=2),
            http_target("refusing", closed_port_url()),
            http_target("healthy", healthy.url),
        ]
    )
    client = await sidecar_client(settings)
    posted_at: dict[str, float] = {}
    for n in range(200):
        coordinator = f"coord-{n}"
        posted_at[coordinator] = time.monotonic()
        response = await client.post("/feedback", json=store_payload(coordinator, n))
        assert response.status == 202
    await eventually(lambda: len(healthy.delivered) == 200, message="all 200 delivered")
    latencies = sorted(a.at - posted_at[a.json["coordinator_id"]] for a in healthy.delivered)
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    assert p99 < 0.050, f"p99 {p99 * 1000:.1f} ms"
    assert hanging.attempts  # the others really were being tried meanwhile
    assert metric(client, "sidecar_feedback_retried_total", target="refusing") > 0


async def test_a_target_that_is_down_gets_each_coordinators_latest_state_on_recovery(
    sidecar_client: StartSidecar, relay_settings: Callable[..., Settings]
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    client = await sidecar_client(relay_settings(targets=[http_target("late", url)]))
    lane = client.app[RELAY].router.lane("late")
    coordinators = ["bars", "quotes", "trades"]
    latest: dict[str, int] = {}

    for start in range(0, 1000, 50):
        batch = []
        for n in range(start, start + 50):
            coordinator = coordinators[n % 3]
            latest[coordinator] = n
            batch.append(store_payload(coordinator, n))
        assert (await client.post("/feedback", json=batch)).status == 202

    assert lane.buffer.high_water <= 3
    assert lane.depth <= 4  # the three coordinators, plus at most one stale attempt
    receiver = await WebhookReceiver(port).start()
    try:
        await eventually(
            lambda: {e["coordinator_id"]: e["queue_size"] for e in receiver.events()} == latest,
            message="latest state of every coordinator delivered",
        )
        received = receiver.events()
        for coordinator in coordinators:
            sizes = [e["queue_size"] for e in received if e["coordinator_id"] == coordinator]
            assert sizes == sorted(sizes), f"{coordinator} out of order: {sizes}"
        assert len(received) <= 4
        assert lane.buffer.high_water <= 3
        assert metric(client, "sidecar_feedback_conflated_total", target="late") >= 990
        assert (
            metric(client, "sidecar_feedback_dropped_total", target="late", reason="buffer_full")
            == 0
        )
    finally:
        await receiver.stop()


async def test_get_feedback_shows_coordinators_and_targets_without_credentials(
    orchestrator: StartOrchestrator,
    sidecar_client: StartSidecar,
    relay_settings: Callable[..., Settings],
) -> None:
    receiver = await orchestrator()
    secret_url = receiver.url.replace("http://", "http://hook-user:hook-pass@") + "?key=k3y"
    settings = relay_settings(
        token="intake-token-123",
        targets=[
            http_target("orch", secret_url, secret="whsec_c2lnbmluZy1rZXk="),
            http_target("gone", closed_port_url()),
        ],
    )
    client = await sidecar_client(settings)
    auth = {"Authorization": "Bearer intake-token-123"}
    before = time.time()
    await client.post("/feedback", json=store_payload("bars", 850, reason=None), headers=auth)
    await client.post(
        "/feedback",
        json=store_payload("bars", 300, level="ok", reason="queue_recovered"),
        headers=auth,
    )
    router = client.app[RELAY].router
    # The orchestrator records an event before the router has read its answer.
    await eventually(lambda: router.lane("orch").delivered == 2, message="relayed")
    await eventually(lambda: router.lane("gone").retried > 0, message="gone attempted")
    # The stale attempt stays in flight until the next retry sheds it for the newer event.
    await eventually(lambda: router.lane("gone").depth == 1, message="gone conflated")

    response = await client.get("/feedback")
    text = await response.text()
    state = await response.json()

    assert response.status == 200
    assert set(state) == {
        "coordinators",
        "levels",
        "omitted",
        "targets",
        "last_store_event_at",
        "synthesizing",
    }
    assert before <= state["last_store_event_at"] <= time.time()
    assert state["synthesizing"] is False  # no queue check configured
    bars = state["coordinators"]["bars"]
    assert set(bars) == COORDINATOR_KEYS
    assert (bars["queue_size"], bars["level"], bars["reason"]) == (300, "ok", "queue_recovered")
    assert (bars["source"], bars["origin"]) == ("store", "store")
    assert bars["id"] == receiver.delivered[-1].headers["webhook-id"]
    orch, gone = state["targets"]
    assert set(orch) == TARGET_KEYS
    assert orch["endpoint"] == receiver.url
    assert (orch["name"], orch["kind"], orch["mode"]) == ("orch", "http", "latest")
    assert (orch["delivered"], orch["dropped"], orch["buffer_depth"]) == (2, 0, 0)
    assert orch["last_success"] >= before
    assert (orch["last_error"], orch["last_error_at"], orch["circuit"]) == (None, None, "closed")
    assert orch["disabled"] is False
    assert orch["readers"] is None  # only a stream has readers
    assert orch["dead_letters"] is None  # ... and a dead-letter stream
    assert gone["last_error"] == "connection: Connection refused"
    assert gone["last_error_at"] >= before
    assert gone["buffer_depth"] == 1
    for secret in ("hook-pass", "hook-user", "k3y", "c2lnbmluZy1rZXk", "intake-token"):
        assert secret not in text
        assert secret not in await (await client.get("/metrics")).text()
        assert secret not in await (await client.get("/healthz")).text()


async def test_the_feedback_component_degrades_while_a_circuit_is_open(
    orchestrator: StartOrchestrator,
    sidecar_client: StartSidecar,
    relay_settings: Callable[..., Settings],
) -> None:
    receiver = await orchestrator()
    receiver.status = 503
    settings = relay_settings(
        targets=[http_target("orch", receiver.url)], circuit_cooldown=0.3, check_interval=0.05
    )
    client = await sidecar_client(settings)

    async def feedback_component() -> dict[str, Any]:
        status = await (await client.get("/healthz")).json()
        [component] = [c for c in status["components"] if c["name"] == "feedback"]
        return dict(component)

    assert (await eventually(feedback_component))["state"] == "healthy"
    await client.post("/feedback", json=store_payload())

    async def degraded() -> dict[str, Any] | None:
        component = await feedback_component()
        return component if component["state"] == "degraded" else None

    component = await eventually(degraded, message="feedback degraded")
    assert "target orch circuit open" in component["details"]["reason"]
    assert component["details"]["orch.last_error"] == "http_503"
    receiver.recover()

    async def healthy_again() -> bool:
        state: str = (await feedback_component())["state"]
        return state == "healthy"

    await eventually(healthy_again, message="feedback healthy after recovery")
    # Half-open is healthy already: the trial may still be on its way to the orchestrator.
    await eventually(lambda: len(receiver.delivered) == 1, message="delivered after recovery")


async def test_watermark_crossings_are_synthesized_until_the_store_pushes(
    orchestrator: StartOrchestrator,
    store_metrics: StoreMetrics,
    sidecar_client: StartSidecar,
    relay_settings: Callable[..., Settings],
) -> None:
    receiver = await orchestrator()
    store_metrics.coordinators = {"bars": Coordinator(depth=100)}
    bars = store_metrics.coordinators["bars"]
    settings = relay_settings(
        targets=[http_target("orch", receiver.url)],
        store_metrics_url=store_metrics.url,
        queue_capacity=1000,
        check_interval=0.05,
    )
    client = await sidecar_client(settings)

    def scraped(depth: int) -> bool:
        return metric(client, "sidecar_queue_depth", coordinator="bars") == depth

    async def levels() -> list[tuple[str, str | None]]:
        return [(e["level"], e["reason"]) for e in receiver.events()]

    await eventually(lambda: scraped(100), message="first scrape")
    # Nobody has said anything of `bars` yet: its polled level is the news, `ok` too.
    await eventually(lambda: len(receiver.delivered) == 1, message="the first level relayed")
    [first] = receiver.events()
    assert (first["level"], first["reason"], first["origin"]) == ("ok", None, "synthesized")
    for depth in (600, 900, 700, 100):
        bars.depth = depth
        await eventually(lambda: scraped(bars.depth), message=f"scraped {depth}")
    await eventually(lambda: len(receiver.delivered) == 4, message="three crossings relayed")
    assert (await levels())[1:] == [("soft", None), ("hard", None), ("ok", "queue_recovered")]
    state = await (await client.get("/feedback")).json()
    assert state["synthesizing"] is True
    assert state["coordinators"]["bars"]["origin"] == "synthesized"
    assert state["coordinators"]["bars"]["source"] == "store"
    assert metric(client, "sidecar_feedback_synthesized_total", level="hard") == 1

    # The store speaks for itself now: its push is relayed, polling stays quiet.
    await client.post("/feedback", json=store_payload("bars", 50, level="ok"))
    bars.depth = 950
    await eventually(lambda: scraped(950), message="scraped 950")
    bars.depth = 960
    await eventually(lambda: scraped(960), message="scraped again")
    state = await (await client.get("/feedback")).json()
    assert state["synthesizing"] is False
    assert state["coordinators"]["bars"]["origin"] == "store"
    # The push is relayed in the background: the scrapes do not wait for it.
    await eventually(lambda: len(receiver.delivered) == 5, message="the store's push relayed")
    assert metric(client, "sidecar_feedback_synthesized_total", level="hard") == 1
