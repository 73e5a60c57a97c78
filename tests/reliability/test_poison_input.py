"""Poison input: what the intake refuses never reaches a target or a view, and whatever it
accepts (or a sidecar answers) every view renders: `GET /`, `GET /feedback` and
`market-data-sidecar status` never answer 500 or crash, whatever the strings and numbers.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from market_data_sidecar.server.probes import MONITOR
from market_data_sidecar.views.model import StatusView
from market_data_sidecar.views.page import render_page
from market_data_sidecar.views.terminal import render_lines, render_table
from tests.conftest import make_settings
from tests.operator.conftest import FixedCheck
from tests.operator.test_status_cli import status_cli
from tests.support.helpers import eventually, store_payload

JSON_HEADERS = {"Content-Type": "application/json"}
#: Strings a hostile store or check might carry: markup, terminal escapes, a bidi
#: override, NUL, an emoji, a long run. None is a lone surrogate: the intake refuses those.
HOSTILE_TEXT = [
    '<script>alert("x")</script>',
    "\x1b[2J\x1b[31mred",
    "abc\u202edcba",
    "nul\x00byte",
    "line\nbreak\ttab",
    "emoji \U0001f4a5",
    "z" * 1000,
]

POISON = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def _assert_renders_safely(html: str) -> None:
    html.encode("utf-8")  # strict: nothing UTF-8 cannot write
    assert "<script" not in html
    assert "\x1b" not in html


# -- what the intake refuses ---------------------------------------------------------------


async def test_lone_surrogates_and_uncarriable_numbers_are_refused_before_any_view(
    sidecar_client: Callable[..., Any],
) -> None:
    client = await sidecar_client(make_settings())
    url = str(client.make_url("/feedback"))
    # Written by hand: the `\ud800` escape is what a hostile client sends.
    bodies = {
        "coordinator_id": b'{"coordinator_id": "x\\ud800", "queue_size": 1, "capacity": 2, '
        b'"level": "ok"}',
        "source": b'{"coordinator_id": "a", "queue_size": 1, "capacity": 2, "level": "ok", '
        b'"source": "\\udfff"}',
        "reason": b'{"coordinator_id": "a", "queue_size": 1, "capacity": 2, "level": "ok", '
        b'"reason": "\\udc80"}',
        "queue_size": json.dumps({**store_payload(), "queue_size": 2**63}).encode(),
        "capacity": json.dumps({**store_payload(), "capacity": 10**30}).encode(),
        "ts": json.dumps({**store_payload(), "ts": 1.7e12}).encode(),
        "utilization": json.dumps({**store_payload(), "utilization": 1e308}).encode(),
    }
    async with aiohttp.ClientSession() as session:
        for field, body in bodies.items():
            async with session.post(url, data=body, headers=JSON_HEADERS) as response:
                assert response.status == 422, (field, await response.text())
                assert (await response.json())["field"] == field
        async with session.get(str(client.make_url("/feedback"))) as response:
            assert (await response.json())["coordinators"] == {}
        async with session.get(str(client.make_url("/"))) as response:
            assert response.status == 200


# -- what the intake accepts, every view renders -------------------------------------------


async def test_the_edges_of_what_is_accepted_render_in_every_view(
    sidecar_client: Callable[..., Any],
) -> None:
    details = {
        "reason": HOSTILE_TEXT[0],
        HOSTILE_TEXT[1]: HOSTILE_TEXT[2],
        "bars:depth": "1e400",  # the store's metrics can say anything
        "bars:capacity": "0",
        "huge:depth": "9" * 5000,
        "huge:capacity": "1",
        "/:free_ratio": "nan",
    }
    client = await sidecar_client(
        make_settings(), checks=[FixedCheck("queue", "degraded", details)]
    )
    await eventually(lambda: client.app[MONITOR].first_round_done, message="first round")
    events = [
        {**store_payload(f"edge-{n}", reason=text), "queue_size": 2**53 - 1, "capacity": 2**53 - 1}
        for n, text in enumerate(HOSTILE_TEXT)
    ]
    # Ids and sources hold no control characters (the intake refuses them), anything else.
    printable = [text for text in HOSTILE_TEXT if not any(c < " " for c in text)]
    events += [
        {**store_payload(printable[0]), "ts": 0},
        {**store_payload(printable[1]), "ts": 1e11 - 1, "utilization": 1000},
        {**store_payload(printable[2]), "queue_size": 1000, "capacity": 1},
        {**store_payload(printable[3][:256]), "source": printable[2]},
    ]
    accepted = await client.post("/feedback", json=events)
    assert accepted.status == 202, await accepted.text()

    page = await client.get("/")
    assert page.status == 200
    _assert_renders_safely((await page.read()).decode("utf-8"))
    state = await client.get("/feedback")
    assert state.status == 200
    assert len((await state.json())["coordinators"]) == len(events)

    url = str(client.make_url("")).rstrip("/")
    for encoding in ("utf-8", "ascii", "latin-1"):
        code, out, err = await status_cli("--url", url, env={"PYTHONIOENCODING": encoding})
        assert code == 1, (encoding, err)  # degraded: the queue check says so
        assert "Traceback" not in err
        assert "\x1b" not in out
        assert "edge-0" in out


async def test_the_status_command_renders_whatever_a_sidecar_answers() -> None:
    """A sidecar of another version (or a broken one) may answer any JSON: lone surrogate
    escapes, numbers beyond any clock or float, values of the wrong type."""
    surrogate = "x\udc80\x1b[2J"
    health = {
        "service": surrogate,
        "state": "unhealthy",
        "version": 10**4000,
        "ts": 1e308,
        "components": [
            {"name": "queue", "state": surrogate, "details": {f"{surrogate}:depth": 1e308}},
            {"name": ["not", "a", "name"], "details": "not a mapping"},
            "not a component",
        ],
    }
    feedback = {
        "coordinators": {
            surrogate: {"level": surrogate, "ts": -1e308, "queue_size": -(10**4000)},
            "b": {"ts": "yesterday", "capacity": 1e-308, "queue_size": 1e308},
            "c": "not an event",
        },
        "targets": [
            {"name": surrogate, "buffer_depth": 1e308, "last_success": 1e308, "circuit": 7},
            {"delivered": "many", "last_error": surrogate, "last_error_at": -1e300},
            None,
        ],
        "last_store_event_at": 1e300,
        "synthesizing": "yes",
    }

    def answer(document: Any) -> web.Response:
        # ensure_ascii: a lone surrogate travels as its `\udc80` escape.
        return web.Response(body=json.dumps(document).encode(), content_type="application/json")

    async def healthz(_: web.Request) -> web.Response:
        return answer(health)

    async def get_feedback(_: web.Request) -> web.Response:
        return answer(feedback)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/feedback", get_feedback)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        url = str(server.make_url("")).rstrip("/")
        for encoding in ("utf-8", "ascii"):
            code, out, err = await status_cli("--url", url, env={"PYTHONIOENCODING": encoding})
            assert code == 2, (encoding, err)  # the state it said, whatever else it said
            assert "Traceback" not in err
            assert "\x1b" not in out
            assert "x\\udc80\\x1b[2J" in out  # shown, escaped
    finally:
        await server.close()


# -- properties ----------------------------------------------------------------------------

#: Any text, lone surrogates and control characters included.
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats()
    | any_text,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(any_text, children, max_size=3)
    ),
    max_leaves=8,
)
component = st.fixed_dictionaries(
    {"name": json_values, "state": json_values},
    optional={"details": st.dictionaries(any_text, json_values, max_size=6)},
)
queue_component = st.fixed_dictionaries(
    {
        "name": st.just("queue"),
        "state": json_values,
        "details": st.dictionaries(
            st.tuples(any_text, st.sampled_from(["depth", "capacity", "dropped", "level"])).map(
                ":".join
            ),
            st.one_of(json_values, st.floats().map(str), st.integers().map(str)),
            max_size=6,
        ),
    }
)
health_documents = st.fixed_dictionaries(
    {"state": json_values},
    optional={
        "service": json_values,
        "version": json_values,
        "ts": json_values,
        "components": st.lists(st.one_of(component, queue_component, json_values), max_size=4),
    },
)
event_documents = st.dictionaries(
    st.sampled_from(["level", "origin", "ts", "reason", "queue_size", "capacity"]),
    json_values,
)
feedback_documents = st.none() | st.fixed_dictionaries(
    {},
    optional={
        "coordinators": st.dictionaries(any_text, event_documents | json_values, max_size=4),
        "targets": st.lists(st.dictionaries(any_text, json_values) | json_values, max_size=3),
        "last_store_event_at": json_values,
        "synthesizing": json_values,
    },
)


@POISON
@given(health_documents, feedback_documents)
def test_any_view_model_renders_whatever_json_it_is_given(
    health: dict[str, Any], feedback: dict[str, Any] | None
) -> None:
    view = StatusView.from_json(health, feedback)
    for text in (
        render_table(view),
        render_table(view, colour=True, width=60),
        "\n".join(render_lines(view)),
        render_page(view),
    ):
        text.encode("utf-8")  # strict
    assert "\x1b" not in render_table(view) + "".join(render_lines(view))
    _assert_renders_safely(render_page(view))


accepted_id = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cc"]), min_size=1, max_size=256
)
#: A queue at most `MAX_UTILIZATION` (1000) times its capacity.
accepted_queues = st.integers(min_value=1, max_value=2**53 - 1).flatmap(
    lambda capacity: st.fixed_dictionaries(
        {
            "capacity": st.just(capacity),
            "queue_size": st.integers(min_value=0, max_value=min(2**53 - 1, capacity * 1000)),
        }
    )
)
accepted_fields = st.fixed_dictionaries(
    {
        "coordinator_id": accepted_id,
        "level": st.sampled_from(["ok", "soft", "hard"]),
    },
    optional={
        "ts": st.floats(min_value=0, max_value=1e11, exclude_max=True),
        "source": accepted_id,
        "reason": st.none() | st.text(st.characters(codec="utf-8"), max_size=1024),
        "utilization": st.none() | st.floats(min_value=0, max_value=1000),
    },
)
accepted_events = st.builds(lambda a, b: {**a, **b}, accepted_fields, accepted_queues)


async def test_no_accepted_event_makes_a_view_answer_500(
    sidecar_client: Callable[..., Any],
) -> None:
    client = await sidecar_client(make_settings())
    loop = asyncio.get_running_loop()

    async def round_trip(events: list[dict[str, Any]]) -> None:
        posted = await client.post("/feedback", json=events)
        assert posted.status == 202, await posted.text()
        for path in ("/", "/feedback"):
            response = await client.get(path)
            assert response.status == 200, (path, await response.text())
            (await response.read()).decode("utf-8")

    @POISON
    @given(st.lists(accepted_events, min_size=1, max_size=5))
    def post_then_view(events: list[dict[str, Any]]) -> None:
        asyncio.run_coroutine_threadsafe(round_trip(events), loop).result(10)

    await asyncio.to_thread(post_then_view)


@pytest.mark.parametrize("ts", [0, 1, 1e11 - 1, 253402300800.0, -1e300, 1e300])
def test_any_timestamp_renders(ts: float) -> None:
    """Times beyond what `datetime` converts (the year 9999) print as numbers."""
    health = {"state": "healthy", "ts": ts}
    feedback = {
        "coordinators": {"c": {"level": "ok", "ts": ts, "queue_size": 1, "capacity": 2}},
        "targets": [{"name": "t", "last_success": ts, "last_error": "e", "last_error_at": ts}],
        "last_store_event_at": ts,
    }
    view = StatusView.from_json(health, feedback)
    assert render_table(view)
    assert render_lines(view)
    _assert_renders_safely(render_page(view))
