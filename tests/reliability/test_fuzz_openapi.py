"""The sidecar keeps the promises of the OpenAPI document it serves.

Schemathesis reads `GET /openapi.json` from a real `market-data-sidecar run` process and
generates requests for every operation, valid ones and invalid ones, with the right
token, a wrong one or none. Every answer must be documented (status, media type, body
schema), no answer may be a 5xx, the process must stay up, and the accepted count in
`/metrics` must equal the sum of the 202 answers.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from market_data_core.telemetry import FeedbackEvent, HealthStatus
from schemathesis import Case, GenerationMode

from tests.reliability.conftest import (
    FAST_RELAY_ENV,
    accepted_total,
    assert_still_serving,
    targets_env,
)
from tests.support.helpers import SidecarProcess
from tests.support.receivers import StartOrchestrator, WebhookReceiver

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

TOKEN = "fuzz-token-3c4e1b"
MAX_EVENTS = 20

FUZZ = settings(
    max_examples=250,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
    ],
)

CONFIG = schemathesis.Config.from_dict(
    {
        "checks": {
            # An invalid body may also be refused for its size (an array past the limit).
            "negative_data_rejection": {"expected-statuses": [400, 401, 413, 415, 422]},
        },
        "operations": [
            # One rule JSON Schema cannot state: a `queue_size` above 1,000 x `capacity`
            # (bounds.py) is refused with 422 though each field is valid on its own.
            {
                "include-operation-id": "postFeedback",
                "checks": {"positive_data_acceptance": {"expected-statuses": [202, 401, 422]}},
            },
            # Probes, metrics and the status page take any query string: there is no
            # invalid request for them, only unknown parameters they ignore.
            {"include-method": "GET", "checks": {"negative_data_rejection": {"enabled": False}}},
        ],
    }
)

authorization = st.sampled_from(
    [{"Authorization": f"Bearer {TOKEN}"}, {"Authorization": "Bearer not-the-token"}, {}]
)


async def test_every_answer_is_documented_and_no_request_gets_a_5xx(
    sidecar_process: Callable[..., SidecarProcess], orchestrator: StartOrchestrator
) -> None:
    receiver: WebhookReceiver = await orchestrator()
    sidecar = sidecar_process(
        {
            **FAST_RELAY_ENV,
            "SIDECAR_TOKEN": TOKEN,
            "SIDECAR_MAX_EVENTS_PER_REQUEST": str(MAX_EVENTS),
            "SIDECAR_LOG_LEVEL": "WARNING",
            **targets_env({"kind": "http", "name": "orchestrator", "url": receiver.url}),
        }
    )
    await sidecar.wait_listening()
    schema = schemathesis.openapi.from_url(f"{sidecar.url}/openapi.json", config=CONFIG)
    intake = schema["/feedback"]["POST"]
    cases = st.one_of(
        schema.as_strategy(GenerationMode.POSITIVE),
        schema.as_strategy(GenerationMode.NEGATIVE),
        # The intake is where input varies most: it gets more examples of its own.
        intake.as_strategy(generation_mode=GenerationMode.POSITIVE),
        intake.as_strategy(generation_mode=GenerationMode.NEGATIVE),
    ).map(_strict_integers)
    answers: Counter[tuple[str, str, int]] = Counter()
    accepted = 0

    @FUZZ
    @given(case=cases, headers=authorization)
    def conforms(case: Case[Any], headers: dict[str, str]) -> None:
        nonlocal accepted
        response = case.call(base_url=sidecar.url, headers=headers, timeout=10)
        assert response.status_code < 500, (case.method, case.path, response.text[:500])
        answers[case.method, case.path, response.status_code] += 1
        if response.status_code == 202:
            accepted += json.loads(response.content)["accepted"]
        case.validate_response(response, headers=headers)

    # Hypothesis and requests block: they run in a thread so the orchestrator, served on
    # this event loop, keeps answering the sidecar's deliveries meanwhile.
    await asyncio.to_thread(conforms)

    assert_still_serving(sidecar)
    assert await accepted_total(sidecar) == accepted
    # The examples reached every operation and every kind of intake answer.
    operations = {(method, path) for method, path, _ in answers}
    assert operations == {(op.method.upper(), op.path) for op in _operations(schema)}, answers
    intake_answers = {status for method, _, status in answers if method == "POST"}
    assert intake_answers >= {202, 401, 422}, answers
    assert accepted > 0


def _operations(schema: Any) -> list[Any]:
    return [result.ok() for result in schema.get_all_operations()]


def _strict_integers(case: Case[Any]) -> Case[Any]:
    """JSON Schema counts `850.0` as an integer; the intake validates Core's fields in
    strict mode and refuses it (422). Send such numbers as `850`, as the store does."""
    body = case.body
    if case.method == "POST" and isinstance(body, dict | list):
        for element in body if isinstance(body, list) else [body]:
            if not isinstance(element, dict):
                continue
            for name in ("queue_size", "capacity"):
                value = element.get(name)
                if isinstance(value, float) and value.is_integer():
                    element[name] = int(value)
    return case


async def test_the_document_is_served_without_a_token_and_names_the_protected_operation(
    sidecar_process: Callable[..., SidecarProcess],
) -> None:
    sidecar = sidecar_process({"SIDECAR_TOKEN": TOKEN, "SIDECAR_MAX_EVENTS_PER_REQUEST": "7"})
    await sidecar.wait_listening()
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{sidecar.url}/openapi.json") as response,
    ):
        assert response.status == 200
        assert response.content_type == "application/json"
        text = await response.text()
    document = json.loads(text)
    assert document["openapi"] == "3.1.0"
    intake = document["paths"]["/feedback"]
    assert intake["post"]["security"] == [{"bearer": []}]
    assert "security" not in intake["get"]
    body = intake["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["oneOf"][1]["maxItems"] == 7
    # Core's own schemas, unchanged.
    schemas = document["components"]["schemas"]
    assert schemas["HealthStatus"]["required"] == HealthStatus.model_json_schema()["required"]
    assert set(schemas["FeedbackEvent"]["properties"]) == set(FeedbackEvent.model_fields)
    assert TOKEN not in text
