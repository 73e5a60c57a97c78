"""No client input gets a 5xx from `POST /feedback`: random bytes, random JSON, and
event-shaped objects with random field values, all over a real connection.

Hypothesis runs in a worker thread and sends each example to the sidecar served on the
test's event loop, so every request goes through aiohttp's real parser and handlers.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from market_data_sidecar.settings import Settings
from tests.support.sidecar import StartSidecar

CLIENT_ERRORS = {400, 413, 415, 422}
MAX_EVENTS = 20
#: Small, so random bodies reach the limit too.
MAX_BODY = 1024

FUZZ = settings(
    max_examples=250,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=16,
)
field_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.text(max_size=300),
    st.sampled_from(["ok", "soft", "hard", "store", "", "OK"]),
    st.lists(st.integers(), max_size=2),
)
event_like = st.fixed_dictionaries(
    {
        "coordinator_id": field_values,
        "queue_size": field_values,
        "capacity": field_values,
        "level": field_values,
    },
    optional={"reason": field_values, "ts": field_values, "source": field_values},
)
too_many = st.lists(event_like, min_size=MAX_EVENTS + 1, max_size=MAX_EVENTS + 3)
media_types = st.sampled_from(
    ["application/json", "application/json; charset=utf-8", "text/plain", "", "a/b+json"]
)


async def test_no_client_input_gets_a_5xx(
    sidecar_client: StartSidecar, relay_settings: Callable[..., Settings]
) -> None:
    client = await sidecar_client(
        relay_settings(max_body_bytes=MAX_BODY, max_events_per_request=MAX_EVENTS)
    )
    loop = asyncio.get_running_loop()
    statuses: Counter[int] = Counter()

    async def post(body: bytes, media_type: str) -> tuple[int, Any]:
        headers = {"Content-Type": media_type} if media_type else {}
        async with client.post("/feedback", data=body, headers=headers) as response:
            return response.status, await response.json()

    def send(body: bytes, media_type: str = "application/json") -> tuple[int, Any]:
        status, payload = asyncio.run_coroutine_threadsafe(post(body, media_type), loop).result(10)
        assert status == 202 or status in CLIENT_ERRORS, (status, payload, body[:100])
        statuses[status] += 1
        if status == 202:
            assert isinstance(payload["accepted"], int)
        else:
            assert isinstance(payload["error"], str)
        return status, payload

    @FUZZ
    @given(st.binary(max_size=2 * MAX_BODY), media_types)
    def random_bytes(body: bytes, media_type: str) -> None:
        send(body, media_type)

    @FUZZ
    @given(json_values)
    def random_json(value: Any) -> None:
        send(json.dumps(value).encode())

    @FUZZ
    @given(st.one_of(event_like, st.lists(event_like, max_size=MAX_EVENTS + 3), too_many))
    def event_shaped(value: Any) -> None:
        status, payload = send(json.dumps(value).encode())
        if status == 202:
            assert payload["accepted"] == (len(value) if isinstance(value, list) else 1)
        if isinstance(value, list) and len(value) > MAX_EVENTS:
            assert status == 413

    for run in (random_bytes, random_json, event_shaped):
        await asyncio.to_thread(run)
    # The examples reached every kind of answer, not just the first check that fails.
    assert set(statuses) >= {202, 400, 413, 415, 422}, statuses
