"""Protocol errors get a short JSON answer of the sidecar's own, and a bounded log.

aiohttp's own answer to a header it cannot parse echoes the header (a bearer token in
it), and its log line carries a traceback holding it; a flood of bad requests was a flood
of such tracebacks. Against a real `market-data-sidecar run`, with real sockets.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from tests.reliability.conftest import assert_still_serving, metric_value, scrape
from tests.reliability.test_bounds import (
    StartSidecar,
    closed_after,
    connect,
    exchange,
    fault_count,
    post_head,
    started,
)
from tests.support import helpers
from tests.support.helpers import SidecarProcess, eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

TOKEN = "tok-5Ecr3t-in-a-header"


def answer_of(raw: bytes) -> tuple[int, bytes, dict[str, str]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, head, json.loads(body)


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        pytest.param(
            b"POST /feedback HTTP/1.1\r\nHost: s\r\n"
            + f"Authorization: Bearer {TOKEN}\x01\r\n".encode()
            + b"Content-Length: 2\r\n\r\n[]",
            400,
            id="control-character-in-a-token",
        ),
        pytest.param(
            b"GET /readyz HTTP/1.1\r\nHost: s\r\nX-Token: " + TOKEN.encode() * 500 + b"\r\n\r\n",
            431,
            id="header-over-8-KiB",
        ),
        pytest.param(
            f"GET /readyz?{TOKEN} HTTP/1.1 junk\r\nHost: s\r\n\r\n".encode(), 400, id="bad-line"
        ),
        pytest.param(
            b"POST /feedback HTTP/1.1\r\nHost: s\r\nContent-Length: 2\r\n"
            b"Transfer-Encoding: chunked\r\n" + f"X-Token: {TOKEN}\r\n\r\n".encode(),
            400,
            id="length-and-chunked",
        ),
        pytest.param(
            b"POST /feedback HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n"
            + f"X-Token: {TOKEN}\r\n\r\nzz-{TOKEN}\r\n".encode(),
            400,
            id="bad-chunk-framing",
        ),
    ],
)
async def test_a_protocol_error_answers_our_json_without_any_header_content(
    sidecar_process: StartSidecar, request_bytes: bytes, status: int
) -> None:
    sidecar = await started(sidecar_process)
    raw = await exchange(sidecar, request_bytes)
    answered, _, body = answer_of(raw)
    assert answered == status
    assert set(body) == {"error"}
    assert TOKEN.encode() not in raw  # neither in the body nor any header
    assert len(raw) < 400
    await eventually(
        lambda: sum_faults(sidecar, "malformed", "header_too_large"), message="fault counted"
    )
    output = sidecar.output()
    assert TOKEN not in output
    assert "Traceback" not in output
    assert_still_serving(sidecar)


async def sum_faults(sidecar: SidecarProcess, *kinds: str) -> float:
    return sum([await fault_count(sidecar, kind) for kind in kinds])


async def test_a_client_abort_is_counted_not_a_500_nor_a_traceback(
    sidecar_process: StartSidecar,
) -> None:
    sidecar = await started(sidecar_process)
    for _ in range(5):
        _, writer = await connect(sidecar)
        writer.write(post_head(5000) + b'[{"coordinator_id": "c"')
        await writer.drain()
        writer.transport.abort()  # a reset, mid-body
    await eventually(lambda: fault_count(sidecar, "aborted"), message="aborts counted", timeout=10)
    output = sidecar.output()
    assert "Traceback" not in output
    assert "unhandled error" not in output
    assert_still_serving(sidecar)


async def test_log_lines_stay_bounded_under_a_thousand_malformed_requests(
    sidecar_process: StartSidecar,
) -> None:
    sidecar = await started(sidecar_process, fault_log_interval="60")
    before = len(sidecar.output().splitlines())
    limit = asyncio.Semaphore(50)

    async def malformed(n: int) -> None:
        async with limit:
            reader, writer = await connect(sidecar)
            writer.write(f"GET /{n} HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\x01\r\n\r\n".encode())
            await closed_after(reader, within=10)
            writer.close()

    await asyncio.gather(*(malformed(n) for n in range(1000)))

    async def all_counted() -> bool:
        return await fault_count(sidecar, "malformed") == 1000

    await eventually(all_counted, message="all 1,000 counted")
    lines = sidecar.output().splitlines()[before:]
    assert len(lines) <= 3, lines
    assert TOKEN not in "\n".join(lines)
    assert_still_serving(sidecar)


async def test_out_of_file_descriptors_is_one_line_per_interval_not_a_traceback_each(
    sidecar_process: StartSidecar, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With 64 descriptors, 100 connections leave accept() failing (asyncio retries it
    every second); once they are gone, the sidecar serves again."""
    monkeypatch.setattr(
        helpers, "SIDECAR_COMMAND", ["prlimit", "--nofile=64:64", *helpers.SIDECAR_COMMAND]
    )
    sidecar = await started(sidecar_process, idle_timeout="60", fault_log_interval="120")
    before = len(sidecar.output().splitlines())
    held = []
    for _ in range(100):  # beyond 64 descriptors, within the listen backlog
        held.append(await connect(sidecar))

    async def accept_failing() -> bool:
        return "cannot accept connections" in sidecar.output()

    await eventually(accept_failing, message="accept errors logged", timeout=15)
    first = time.monotonic()
    # Let asyncio retry accept() a few times (once a second) and fail each time.
    await eventually(lambda: time.monotonic() - first > 3.5, message="retries", interval=0.2)
    for _, writer in held:
        writer.transport.abort()
    await eventually(lambda: _serves(sidecar), message="serving again", timeout=15)
    lines = sidecar.output().splitlines()[before:]
    accept_lines = [line for line in lines if "cannot accept connections" in line]
    assert len(accept_lines) == 1, lines
    assert "Too many open files" in accept_lines[0]
    assert "Traceback" not in "\n".join(lines)
    assert metric_value(await scrape(sidecar), "sidecar_accept_errors_total") >= 2


async def _serves(sidecar: SidecarProcess) -> bool:
    try:
        status, _ = await sidecar.get("/readyz")
    except OSError:
        return False
    return status == 200
