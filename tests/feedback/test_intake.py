"""`POST /feedback` on a running sidecar: what it accepts, relays, and rejects (and how)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aiohttp import ClientSession
from loguru import logger

from market_data_sidecar.feedback.intake import Rejected
from market_data_sidecar.metrics import Metrics
from market_data_sidecar.server.feedback import RELAY
from market_data_sidecar.settings import Settings
from tests.feedback.conftest import http_target
from tests.publishers.conftest import StartOrchestrator
from tests.support import parts
from tests.support.helpers import eventually, store_payload
from tests.support.receivers import WebhookReceiver
from tests.support.sidecar import SidecarClient, StartSidecar

#: Byte for byte what the store's HttpFeedbackBroadcaster sends (DESIGN.md).
STORE_BODY = (
    b'{"coordinator_id": "bars-coord", "queue_size": 850, "capacity": 1000,\n'
    b' "level": "soft", "reason": null, "utilization": 0.85}'
)
JSON_HEADERS = {"Content-Type": "application/json"}


Relayed = tuple[WebhookReceiver, SidecarClient]


@pytest.fixture
async def relayed(
    orchestrator: StartOrchestrator,
    sidecar_client: StartSidecar,
    relay_settings: Callable[..., Settings],
) -> Relayed:
    """An orchestrator, and a sidecar relaying to it."""
    receiver = await orchestrator()
    return receiver, await sidecar_client(
        relay_settings(targets=[http_target("orch", receiver.url)])
    )


@pytest.fixture
def logs() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="DEBUG")
    yield lines
    logger.remove(sink)


def received(client: Any, outcome: str) -> float:
    registry = client.app[RELAY]._metrics.registry
    return registry.get_sample_value("sidecar_feedback_received_total", {"outcome": outcome}) or 0


async def test_the_stores_exact_payload_is_accepted_and_relayed_with_its_reason(
    relayed: Relayed,
) -> None:
    receiver, client = relayed
    before = time.time()

    response = await client.post("/feedback", data=STORE_BODY, headers=JSON_HEADERS)
    recovered = store_payload(queue_size=400, level="ok", reason="queue_recovered")
    second = await client.post("/feedback", json=recovered)

    assert response.status == 202
    assert await response.json() == {"accepted": 1}
    assert second.status == 202
    await eventually(lambda: len(receiver.delivered) == 2, message="both relayed")
    soft, ok = receiver.events()
    assert set(soft) == {
        "coordinator_id",
        "queue_size",
        "capacity",
        "level",
        "source",
        "ts",
        "reason",
        "utilization",
    }
    assert soft["coordinator_id"] == "bars-coord"
    assert soft["utilization"] == 0.85
    assert (soft["queue_size"], soft["capacity"], soft["level"]) == (850, 1000, "soft")
    assert soft["reason"] is None
    assert soft["source"] == "store"  # missing source: the store
    assert before <= soft["ts"] <= time.time()  # missing ts: the time received
    assert (ok["level"], ok["reason"]) == ("ok", "queue_recovered")
    assert received(client, "accepted") == 2


async def test_core_events_keep_ts_and_source_and_arrays_keep_their_order(
    relayed: Relayed,
) -> None:
    receiver, client = relayed
    events: list[dict[str, Any]] = [
        {
            "coordinator_id": f"coord-{n}",
            "queue_size": n,
            "capacity": 10,
            "level": "hard",
            "source": "pipeline",
            "ts": 1700000000.5 + n,
        }
        for n in range(3)
    ]

    response = await client.post("/feedback", json=events)

    assert response.status == 202
    assert await response.json() == {"accepted": 3}
    await eventually(lambda: len(receiver.delivered) == 3, message="all relayed")
    assert receiver.events() == [
        {**event, "reason": None, "utilization": event["queue_size"] / event["capacity"]}
        for event in events
    ]


async def test_the_stores_utilization_is_relayed_as_it_sent_it(
    relayed: Relayed,
) -> None:
    receiver, client = relayed
    given = {**store_payload("given", queue_size=850), "utilization": 0.851234}
    absent = store_payload("absent", queue_size=850)
    del absent["utilization"]

    response = await client.post("/feedback", json=[given, absent])

    assert response.status == 202
    await eventually(lambda: len(receiver.delivered) == 2, message="both relayed")
    utilizations = {event["coordinator_id"]: event["utilization"] for event in receiver.events()}
    assert utilizations == {"given": 0.851234, "absent": 850 / 1000}


@pytest.mark.exclusive
async def test_202_is_answered_before_delivery(
    orchestrator: StartOrchestrator,
    sidecar_client: Callable[..., Any],
    relay_settings: Callable[..., Settings],
) -> None:
    receiver = await orchestrator()
    receiver.hang()
    client = await sidecar_client(
        relay_settings(targets=[http_target("stuck", receiver.url, timeout=5)])
    )
    await client.post("/feedback", json=store_payload("first"))
    await eventually(lambda: receiver.attempts, message="the target is holding a request")

    started = time.monotonic()
    response = await client.post("/feedback", json=store_payload("second"))

    assert response.status == 202
    assert time.monotonic() - started < 0.5


@pytest.mark.parametrize(
    ("body", "headers", "status", "error"),
    [
        (b'{"coordinator_id": ', JSON_HEADERS, 400, "malformed JSON"),
        (b"\xff\xfe\x00garbage", JSON_HEADERS, 400, "malformed JSON"),
        (b'{"queue_size": NaN}', JSON_HEADERS, 400, "malformed JSON"),
        (STORE_BODY, {"Content-Type": "text/plain"}, 415, "application/json"),
        (STORE_BODY, {}, 415, "application/json"),
        (b'"just a string"', JSON_HEADERS, 422, "JSON object or an array"),
    ],
)
async def test_bad_requests_get_a_json_error_that_names_the_problem(
    sidecar_client: Callable[..., Any],
    relay_settings: Callable[..., Settings],
    body: bytes,
    headers: dict[str, str],
    status: int,
    error: str,
) -> None:
    client = await sidecar_client(relay_settings())
    response = await client.post("/feedback", data=body, headers=headers)
    assert response.status == status
    assert error in (await response.json())["error"]


async def test_invalid_fields_are_named(
    sidecar_client: Callable[..., Any], relay_settings: Callable[..., Settings]
) -> None:
    client = await sidecar_client(relay_settings())
    cases = {
        "coordinator_id": {k: v for k, v in store_payload().items() if k != "coordinator_id"},
        "queue_size": {**store_payload(), "queue_size": -1},
        "capacity": {**store_payload(), "capacity": 0},
        "level": {**store_payload(), "level": "panic"},
        "reason": {**store_payload(), "reason": 42},
        "ts": {**store_payload(), "ts": "yesterday"},
    }
    for field, payload in cases.items():
        response = await client.post("/feedback", json=payload)
        body = await response.json()
        assert response.status == 422, field
        assert body["field"] == field
        assert field in body["error"]
        assert "index" not in body


#: Each would be accepted by Core's model, but a target or a view cannot carry it.
UNCARRIABLE = [
    ("coordinator_id", "x\ud800", "valid Unicode"),
    ("source", "\udfffstore", "valid Unicode"),
    ("reason", "queue_\udc80recovered", "valid Unicode"),
    ("queue_size", 2**53, "at most"),
    ("queue_size", 2**63, "at most"),
    ("queue_size", 10**400, "at most"),
    ("queue_size", -1, "greater than or equal to 0"),
    ("capacity", 2**64, "at most"),
    ("capacity", -5, "greater than 0"),
    ("ts", -1, "unix seconds"),
    ("ts", 1.7e12, "unix seconds"),  # milliseconds by mistake
    ("ts", 1e300, "unix seconds"),
    ("ts", 10**400, "valid number"),
    ("ts", -0.0, "unix seconds"),  # a sign no clock gives
    ("coordinator_id", "bars\nERROR forged line", "control characters"),
    ("coordinator_id", "bars\x1b[2J", "control characters"),
    ("coordinator_id", "bars\x85", "control characters"),  # C1: NEL
    ("source", "store\x00", "control characters"),
    ("queue_size", 1001 * 1000, "1000 x capacity"),  # a thousand times over its capacity
    ("utilization", 1e300, "0 to 1000"),
    ("utilization", -0.1, "0 to 1000"),
    ("utilization", True, "number or null"),
    ("utilization", "0.85", "number or null"),
]


@pytest.mark.parametrize(("field", "value", "error"), UNCARRIABLE)
async def test_what_no_target_can_carry_is_rejected_naming_the_field(
    sidecar_client: Callable[..., Any],
    relay_settings: Callable[..., Settings],
    field: str,
    value: Any,
    error: str,
) -> None:
    client = await sidecar_client(relay_settings())
    # Built by hand: json.dumps writes a lone surrogate as the `\\udXXX` escape, as a
    # hostile client would.
    body = json.dumps({**store_payload(), field: value}).encode()

    response = await client.post("/feedback", data=body, headers=JSON_HEADERS)

    assert response.status == 422, await response.text()
    answer = await response.json()
    assert answer["field"] == field
    assert error in answer["error"]
    assert received(client, "invalid") == 1


async def test_the_edges_of_every_range_are_accepted(
    sidecar_client: Callable[..., Any], relay_settings: Callable[..., Settings]
) -> None:
    client = await sidecar_client(relay_settings())
    edges = [
        {**store_payload("big"), "queue_size": 2**53 - 1, "capacity": 2**53 - 1},
        {**store_payload("epoch"), "ts": 0},
        {**store_payload("future"), "ts": 1e11 - 1, "utilization": 1000},
        {**store_payload("none"), "utilization": None},
        {**store_payload("text"), "reason": "emoji \U0001f4a5 and \u202e bidi"},
    ]
    response = await client.post("/feedback", json=edges)
    assert response.status == 202, await response.text()
    assert await response.json() == {"accepted": len(edges)}


@pytest.mark.parametrize(
    ("peer", "admitted"),
    [
        ("127.0.0.1", True),
        ("127.42.0.9", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("10.1.2.3", False),
        ("169.254.7.1", False),
        ("::ffff:10.1.2.3", False),
        ("fe80::1", False),
        ("0.0.0.0", False),
        ("", False),
        (None, False),
    ],
)
def test_without_a_token_only_loopback_peers_are_admitted(peer: str | None, admitted: bool) -> None:
    intake = parts.intake()
    headers = {"Content-Type": "application/json"}
    if admitted:
        intake.admit(headers, peer=peer)
        return
    with pytest.raises(Rejected) as refused:
        intake.admit(headers, peer=peer)
    assert (refused.value.status, refused.value.outcome) == (403, "forbidden")
    assert "loopback" in refused.value.body["error"]


def test_with_a_token_any_peer_that_presents_it_is_admitted() -> None:
    intake = parts.intake(token="intake-token-123")
    good = {"Content-Type": "application/json", "Authorization": "Bearer intake-token-123"}
    intake.admit(good, peer="10.1.2.3")
    with pytest.raises(Rejected) as refused:
        intake.admit({"Content-Type": "application/json"}, peer="127.0.0.1")
    assert refused.value.status == 401


def test_refused_peers_are_counted_each_time_but_logged_once_per_interval(
    logs: list[str],
) -> None:
    metrics = Metrics()
    intake = parts.intake(metrics)
    for _ in range(50):
        with pytest.raises(Rejected):
            intake.admit({}, peer="10.9.9.9")
    count = metrics.registry.get_sample_value(
        "sidecar_feedback_received_total", {"outcome": "forbidden"}
    )
    assert count == 50
    assert sum("403 forbidden" in line for line in logs) == 1
    assert any("10.9.9.9" in line for line in logs)


async def test_an_array_with_one_bad_element_is_rejected_whole(
    relayed: Relayed,
) -> None:
    receiver, client = relayed
    batch = [store_payload("a"), store_payload("b"), {**store_payload("c"), "queue_size": "lots"}]
    valid = await client.post("/feedback", json=store_payload("before"))
    assert valid.status == 202
    await eventually(lambda: len(receiver.delivered) == 1, message="the valid one relayed")

    response = await client.post("/feedback", json=batch)

    assert response.status == 422
    body = await response.json()
    assert (body["index"], body["field"]) == (2, "queue_size")
    assert "index 2" in body["error"]
    state = await (await client.get("/feedback")).json()
    assert set(state["coordinators"]) == {"before"}  # nothing of the rejected array
    assert client.app[RELAY].router.lane("orch").depth == 0
    assert len(receiver.delivered) == 1
    assert received(client, "invalid") == 3
    assert received(client, "accepted") == 1


async def test_size_limits(
    sidecar_client: Callable[..., Any], relay_settings: Callable[..., Settings]
) -> None:
    client = await sidecar_client(relay_settings(max_body_bytes=2048, max_events_per_request=5))
    big = json.dumps([store_payload(reason="x" * 500) for _ in range(5)]).encode()
    assert len(big) > 2048

    declared = await client.post("/feedback", data=big, headers=JSON_HEADERS)

    async def chunks() -> Any:  # no Content-Length: the limit applies while reading
        for start in range(0, len(big), 512):
            yield big[start : start + 512]

    streamed = await client.post("/feedback", data=chunks(), headers=JSON_HEADERS)
    too_many = await client.post("/feedback", json=[store_payload()] * 6)

    assert declared.status == 413
    assert "2048 bytes" in (await declared.json())["error"]
    assert streamed.status == 413
    assert too_many.status == 413
    assert "6 events exceed the limit of 5" in (await too_many.json())["error"]
    assert received(client, "too_large") == 2
    assert received(client, "too_many_events") == 6


async def test_a_configured_token_is_required_for_intake_only(
    sidecar_client: Callable[..., Any], relay_settings: Callable[..., Settings], logs: list[str]
) -> None:
    client = await sidecar_client(relay_settings(token="intake-token-123"))

    missing = await client.post("/feedback", json=store_payload())
    wrong = await client.post(
        "/feedback", json=store_payload(), headers={"Authorization": "Bearer intake-token-12"}
    )
    basic = await client.post(
        "/feedback", json=store_payload(), headers={"Authorization": "Basic intake-token-123"}
    )
    right = await client.post(
        "/feedback", json=store_payload(), headers={"Authorization": "Bearer intake-token-123"}
    )

    for response in (missing, wrong, basic):
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert "token" in (await response.json())["error"]
    assert right.status == 202
    for path in ("/livez", "/metrics", "/feedback"):
        assert (await client.get(path)).status == 200, path
    assert received(client, "unauthorized") == 3
    assert all("intake-token" not in line for line in logs)
    assert any("feedback rejected (401" in line for line in logs)


async def test_no_client_input_reaches_a_5xx_with_a_real_client(
    sidecar_client: Callable[..., Any], relay_settings: Callable[..., Settings]
) -> None:
    """A few hand-picked nasties over a real connection (the fuzz test covers the rest)."""
    client = await sidecar_client(relay_settings())
    url = str(client.make_url("/feedback"))
    bodies = [b"", b"[]", b"{}", b"[" * 50_000, b"1" * 5000, b'{"a": 1e999}', b"null"]
    async with ClientSession() as session:
        for body in bodies:
            async with session.post(url, data=body, headers=JSON_HEADERS) as response:
                assert response.status < 500, body[:20]
                payload = await response.json()
                assert ("accepted" in payload) if response.status == 202 else ("error" in payload)
