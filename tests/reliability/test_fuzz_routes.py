"""No request gets a 5xx, and the sidecar process stays up, whatever arrives on its port.

Raw requests built byte by byte (`http.client`, so nothing is tidied on the way): every
route and unknown ones, any method, random query strings, random `Content-Type` and
`Authorization` headers against a token-protected intake, random bytes, random JSON and
event-shaped bodies, with a `Content-Length` or chunked. At the end the accepted count in
`/metrics` equals the sum of the 202 answers: nothing is counted that was not accepted,
and nothing accepted goes uncounted.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.reliability.conftest import FAST_RELAY_ENV, accepted_total, assert_still_serving
from tests.support.helpers import SidecarProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

TOKEN = "route-fuzz-token-9d2a"
MAX_BODY = 2048
MAX_EVENTS = 10
ROUTES = ["/", "/livez", "/readyz", "/healthz", "/metrics", "/feedback", "/openapi.json"]
#: Authorization values the intake must accept: the scheme is case-insensitive and
#: the credentials may be padded. Anything else must never get a 202.
VALID_AUTHORIZATION = {f"Bearer {TOKEN}", f"bearer {TOKEN}", f"BEARER  {TOKEN} "}

FUZZ = settings(
    max_examples=600,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Header values as a client may send them: printable Latin-1, no line breaks.
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=60)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=16,
)
valid_event = st.fixed_dictionaries(
    {
        "coordinator_id": st.text(min_size=1, max_size=30),
        "queue_size": st.integers(min_value=0, max_value=10**6),
        "capacity": st.integers(min_value=1, max_value=10**6),
        "level": st.sampled_from(["ok", "soft", "hard"]),
    },
    optional={
        "reason": st.none() | st.text(max_size=40),
        "utilization": st.floats(allow_nan=False, allow_infinity=False),
        "ts": st.floats(min_value=0, max_value=4e9),
        "source": st.text(min_size=1, max_size=20),
    },
)
any_value = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=300), json_values
)
event_like = st.fixed_dictionaries(
    {
        "coordinator_id": any_value,
        "queue_size": any_value,
        "capacity": any_value,
        "level": any_value | st.sampled_from(["ok", "soft", "hard"]),
    },
    optional={"reason": any_value, "ts": any_value, "source": any_value},
)


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


bodies = st.one_of(
    st.just(b""),
    st.binary(max_size=2 * MAX_BODY),
    json_values.map(_json),
    valid_event.map(_json),
    st.lists(valid_event, max_size=MAX_EVENTS + 2).map(_json),
    st.one_of(event_like, st.lists(event_like, max_size=4)).map(_json),
    st.lists(st.text(max_size=8), min_size=MAX_BODY // 4, max_size=MAX_BODY // 2).map(_json),
)
content_types = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "application/json",
            "application/json; charset=utf-8",
            "APPLICATION/JSON",
            "application/cloudevents+json",
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            ";",
            "",
        ]
    ),
    header_text,
)
authorizations = st.one_of(
    st.none(),
    st.sampled_from(sorted(VALID_AUTHORIZATION)),
    st.sampled_from(
        [
            "Bearer",
            "Bearer ",
            f"Basic {TOKEN}",
            f"Bearer {TOKEN}x",
            f"Bearer {TOKEN[:-1]}",
            f"Token {TOKEN}",
            f"{TOKEN}",
        ]
    ),
    header_text.map(lambda text: f"Bearer {text}"),
    header_text,
)
segments = st.text(max_size=12).map(lambda text: quote(text, safe=""))
paths = st.one_of(
    st.sampled_from(ROUTES),
    st.sampled_from(ROUTES).map(lambda route: route.rstrip("/") + "/"),
    st.sampled_from(ROUTES).map(lambda route: route.upper()),
    st.lists(segments, min_size=1, max_size=4).map(lambda parts: "/" + "/".join(parts)),
    st.sampled_from(["//", "/./livez", "/../feedback", "/%2e%2e/metrics", "/feedback%00"]),
)
queries = st.lists(
    st.tuples(st.sampled_from(["exclude", "verbose", "refresh", "x"]) | st.text(max_size=8),
              st.text(max_size=12)),
    max_size=4,
).map(lambda pairs: urlencode(pairs))  # fmt: skip
methods = st.sampled_from(
    ["GET", "POST", "POST", "POST", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS", "BREW"]
)


@dataclass
class Request:
    method: str
    path: str
    query: str
    content_type: str | None
    authorization: str | None
    body: bytes
    chunked: bool

    @property
    def target(self) -> str:
        return f"{self.path}?{self.query}" if self.query else self.path


any_request = st.builds(
    Request,
    method=methods,
    path=paths,
    query=queries,
    content_type=content_types,
    authorization=authorizations,
    body=bodies,
    chunked=st.booleans(),
)
# Two thirds of the examples get past the token to the body checks, half of those with
# valid events, so that every refusal is reached and accepted events are common enough
# for the count to mean something.
intake_request = st.builds(
    Request,
    method=st.just("POST"),
    path=st.just("/feedback"),
    query=queries,
    content_type=st.just("application/json") | content_types,
    authorization=st.sampled_from(sorted(VALID_AUTHORIZATION)),
    body=bodies,
    chunked=st.booleans(),
)
well_formed_intake = st.builds(
    Request,
    method=st.just("POST"),
    path=st.just("/feedback"),
    query=st.just(""),
    content_type=st.sampled_from(["application/json", "application/json; charset=utf-8"]),
    authorization=st.sampled_from(sorted(VALID_AUTHORIZATION)),
    body=st.one_of(valid_event, st.lists(valid_event, max_size=MAX_EVENTS)).map(_json),
    chunked=st.booleans(),
)
requests = st.one_of(any_request, intake_request, well_formed_intake)


def send(port: int, request: Request) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection, exactly as built; the status, headers and body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.putrequest(request.method, request.target, skip_accept_encoding=True)
        if request.content_type is not None:
            connection.putheader("Content-Type", request.content_type.encode("latin-1"))
        if request.authorization is not None:
            connection.putheader("Authorization", request.authorization.encode("latin-1"))
        if request.chunked:
            # No Content-Length: the size limit can only be enforced while reading.
            connection.putheader("Transfer-Encoding", "chunked")
        else:
            connection.putheader("Content-Length", str(len(request.body)))
        connection.endheaders()
        # The sidecar may answer (413, 400) and close before reading the whole body.
        with contextlib.suppress(OSError):
            _send_body(connection, request)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def _send_body(connection: http.client.HTTPConnection, request: Request) -> None:
    if not request.chunked:
        connection.send(request.body)
        return
    for start in range(0, len(request.body), 500):
        piece = request.body[start : start + 500]
        connection.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
    connection.send(b"0\r\n\r\n")


async def test_no_request_gets_a_5xx_and_every_accepted_event_is_counted(
    sidecar_process: Callable[..., SidecarProcess],
) -> None:
    sidecar = sidecar_process(
        {
            **FAST_RELAY_ENV,
            "SIDECAR_TOKEN": TOKEN,
            "SIDECAR_MAX_BODY_BYTES": str(MAX_BODY),
            "SIDECAR_MAX_EVENTS_PER_REQUEST": str(MAX_EVENTS),
            "SIDECAR_LOG_LEVEL": "WARNING",
        }
    )
    await sidecar.wait_listening()
    statuses: Counter[int] = Counter()
    accepted = 0

    @FUZZ
    @given(requests)
    # Header bytes that are not UTF-8 once made the token comparison raise (a 500).
    @example(Request("POST", "/feedback", "", "application/json", "Bearer \x80", b"{}", False))
    def answers_without_a_5xx(request: Request) -> None:
        nonlocal accepted
        try:
            status, headers, body = send(sidecar.port, request)
        except OSError as exc:
            raise AssertionError(f"no answer to {request!r}: {exc!r}") from exc
        assert status < 500, (request, status, body[:300])
        assert sidecar.proc.poll() is None, f"sidecar exited after {request!r}"
        statuses[status] += 1
        media_type = headers.get("Content-Type", "").partition(";")[0]
        if status >= 400 and media_type == "application/json" and request.method != "HEAD":
            assert isinstance(json.loads(body)["error"], str), body
        if status == 405:
            assert headers.get("Allow"), headers
        if status == 202:
            assert (request.method, request.path) == ("POST", "/feedback")
            assert request.authorization in VALID_AUTHORIZATION, request.authorization
            accepted += json.loads(body)["accepted"]

    await asyncio.to_thread(answers_without_a_5xx)

    assert_still_serving(sidecar)
    assert await accepted_total(sidecar) == accepted
    assert accepted > 0
    # Every kind of answer was reached, not just the first check that refuses.
    assert set(statuses) >= {200, 202, 400, 401, 404, 405, 413, 415, 422}, statuses
