"""HttpPublisher against real aiohttp orchestrators: body, Standard Webhooks headers and
signature, keep-alive, and how each kind of answer is classified for the router."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from email.utils import formatdate
from typing import Any

import pytest
from market_data_core.protocols import FeedbackPublisher
from market_data_core.telemetry import BackpressureLevel, FeedbackEvent

from market_data_sidecar.feedback.delivery import DeliveryError
from market_data_sidecar.publishers.http import HttpPublisher, parse_retry_after
from market_data_sidecar.settings import ConfigError, HttpTargetSettings, load_settings
from tests.support.helpers import feedback
from tests.support.receivers import StartOrchestrator, closed_port_url

SECRET_BYTES = b"orchestrator-shared-signing-key!"
WHSEC = "whsec_" + base64.b64encode(SECRET_BYTES).decode()


def verify_standard_webhook(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """A receiver's check, written from the Standard Webhooks spec, not from the sidecar.

    The signed content is `{webhook-id}.{webhook-timestamp}.{body}`; the key is the
    base64-decoded part of a `whsec_` secret; `webhook-signature` is a space-separated
    list of `v1,<base64 HMAC-SHA256>`; the timestamp must be within five minutes.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    msg_id, timestamp = lowered["webhook-id"], lowered["webhook-timestamp"]
    if abs(time.time() - int(timestamp)) > 5 * 60:
        return False
    key = (
        base64.b64decode(secret[len("whsec_") :])
        if secret.startswith("whsec_")
        else secret.encode("utf-8")
    )
    content = msg_id.encode() + b"." + timestamp.encode() + b"." + body
    expected = base64.b64encode(hmac.new(key, content, hashlib.sha256).digest())
    for candidate in lowered["webhook-signature"].split(" "):
        version, _, signature = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(signature.encode(), expected):
            return True
    return False


def http_target(url: str, **options: Any) -> HttpTargetSettings:
    return HttpTargetSettings(kind="http", url=url, **{"timeout": 0.5, **options})


@pytest.fixture
async def publishers() -> Any:
    opened: list[HttpPublisher] = []

    async def make(url: str, **options: Any) -> HttpPublisher:
        publisher = HttpPublisher(http_target(url, **options))
        await publisher.start()
        opened.append(publisher)
        return publisher

    yield make
    for publisher in opened:
        await publisher.close()


async def test_posts_the_flat_event_signed_as_a_standard_webhook(
    orchestrator: StartOrchestrator, publishers: Any
) -> None:
    receiver = await orchestrator()
    publisher = await publishers(receiver.url, secret=WHSEC)
    event = feedback(reason="queue_recovered", level=BackpressureLevel.ok)

    await publisher.deliver([event])

    [attempt] = receiver.attempts
    assert attempt.json == event.wire()
    assert attempt.json["reason"] == "queue_recovered"
    assert attempt.headers["Content-Type"] == "application/json"
    assert attempt.headers["webhook-id"] == event.id
    assert abs(int(attempt.headers["webhook-timestamp"]) - time.time()) < 5
    assert verify_standard_webhook(WHSEC, attempt.headers, attempt.body)
    assert not verify_standard_webhook(
        "whsec_" + base64.b64encode(b"other").decode(), attempt.headers, attempt.body
    )


async def test_a_plain_secret_signs_with_its_utf8_bytes(
    orchestrator: StartOrchestrator, publishers: Any
) -> None:
    receiver = await orchestrator()
    publisher = await publishers(receiver.url, secret="plain-ünïcode-secret")
    await publisher.deliver([feedback()])
    [attempt] = receiver.attempts
    assert verify_standard_webhook("plain-ünïcode-secret", attempt.headers, attempt.body)


async def test_no_signature_without_a_secret(
    orchestrator: StartOrchestrator, publishers: Any
) -> None:
    receiver = await orchestrator()
    publisher = await publishers(receiver.url)
    await publisher.deliver([feedback()])
    [attempt] = receiver.attempts
    assert "webhook-signature" not in {k.lower() for k in attempt.headers}
    assert attempt.headers["webhook-id"].startswith("evt_")


async def test_retries_of_one_event_carry_the_same_id(
    orchestrator: StartOrchestrator, publishers: Any
) -> None:
    receiver = await orchestrator()
    receiver.answer(500)
    publisher = await publishers(receiver.url, secret=WHSEC)
    event = feedback()
    with pytest.raises(DeliveryError):
        await publisher.deliver([event])
    await publisher.deliver([event])
    assert [a.headers["webhook-id"] for a in receiver.attempts] == [event.id, event.id]
    assert all(verify_standard_webhook(WHSEC, a.headers, a.body) for a in receiver.attempts)


async def test_is_a_core_feedback_publisher_and_publishes_bare_core_events(
    orchestrator: StartOrchestrator,
) -> None:
    receiver = await orchestrator()
    publisher = HttpPublisher(http_target(receiver.url))
    assert isinstance(publisher, FeedbackPublisher)
    core_event = FeedbackEvent(
        coordinator_id="c1", queue_size=1, capacity=10, level=BackpressureLevel.ok, ts=1.0
    )
    try:
        await publisher.publish(core_event)  # without start(): a session is opened on demand
    finally:
        await publisher.close()
    [attempt] = receiver.attempts
    assert attempt.json == {
        **core_event.model_dump(mode="json"),
        "reason": None,
        "utilization": core_event.queue_size / core_event.capacity,
    }


async def test_keeps_one_connection_alive_across_events(
    orchestrator: StartOrchestrator, publishers: Any
) -> None:
    receiver = await orchestrator()
    publisher = await publishers(receiver.url)
    for n in range(5):
        await publisher.deliver([feedback(queue_size=n)])
    assert len({a.peer for a in receiver.attempts}) == 1


@pytest.mark.parametrize(
    ("status", "retryable", "disable"),
    [
        (500, True, False),
        (502, True, False),
        (503, True, False),
        (408, True, False),
        (429, True, False),
        (400, False, False),
        (401, False, False),
        (404, False, False),
        (422, False, False),
        (301, False, False),
        (410, False, True),
    ],
)
async def test_classifies_answers_for_the_router(
    orchestrator: StartOrchestrator, publishers: Any, status: int, retryable: bool, disable: bool
) -> None:
    receiver = await orchestrator()
    receiver.answer(status, headers={"Location": "http://elsewhere/"} if status == 301 else None)
    publisher = await publishers(receiver.url)
    with pytest.raises(DeliveryError) as caught:
        await publisher.deliver([feedback()])
    assert caught.value.reason == f"http_{status}"
    assert caught.value.retryable is retryable
    assert caught.value.disable is disable
    assert len(receiver.attempts) == 1  # one attempt: retrying is the router's job


async def test_retry_after_in_seconds_and_as_a_date(
    orchestrator: StartOrchestrator, publishers: Any
) -> None:
    receiver = await orchestrator()
    receiver.answer(429, headers={"Retry-After": "7"})
    receiver.answer(503, headers={"Retry-After": formatdate(time.time() + 30, usegmt=True)})
    publisher = await publishers(receiver.url)
    with pytest.raises(DeliveryError) as first:
        await publisher.deliver([feedback()])
    with pytest.raises(DeliveryError) as second:
        await publisher.deliver([feedback()])
    assert first.value.retry_after == 7
    assert second.value.retry_after is not None
    assert 25 < second.value.retry_after <= 31


def test_parse_retry_after() -> None:
    assert parse_retry_after(None) is None
    assert parse_retry_after("") is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("120") == 120
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0


async def test_a_hanging_orchestrator_is_a_timeout(
    orchestrator: StartOrchestrator, publishers: Any
) -> None:
    receiver = await orchestrator()
    receiver.hang()
    publisher = await publishers(receiver.url, timeout=0.3)
    started = time.monotonic()
    with pytest.raises(DeliveryError) as caught:
        await publisher.deliver([feedback()])
    assert caught.value.reason == "timeout"
    assert caught.value.retryable
    assert time.monotonic() - started < 2


async def test_a_closed_port_is_a_connection_error(publishers: Any) -> None:
    publisher = await publishers(closed_port_url())
    with pytest.raises(DeliveryError) as caught:
        await publisher.deliver([feedback()])
    assert caught.value.reason == "connection"
    assert caught.value.retryable
    assert "refused" in str(caught.value).lower()


async def test_credentials_in_the_url_never_show(
    orchestrator: StartOrchestrator, publishers: Any
) -> None:
    receiver = await orchestrator()
    url = receiver.url.replace("http://", "http://hook-user:hook-pass@")
    receiver.answer(500)
    publisher = await publishers(url, secret="sig-secret")
    with pytest.raises(DeliveryError) as caught:
        await publisher.deliver([feedback()])
    shown = f"{caught.value} {publisher!r} {publisher.name}"
    assert "hook-pass" not in shown
    assert "sig-secret" not in shown
    # The credentials are used, as HTTP basic auth.
    expected = "Basic " + base64.b64encode(b"hook-user:hook-pass").decode()
    assert receiver.attempts[0].headers["Authorization"] == expected


def test_a_whsec_secret_must_be_base64(monkeypatch: pytest.MonkeyPatch) -> None:
    targets = [{"kind": "http", "url": "http://127.0.0.1/x", "secret": "whsec_%%%"}]
    monkeypatch.setenv("SIDECAR_TARGETS", json.dumps(targets))
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "SIDECAR_TARGETS[0]" in str(caught.value)
    assert "%%%" not in str(caught.value)
