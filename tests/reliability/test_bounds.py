"""Every resource a client can make a real `market-data-sidecar run` hold is bounded.

Each test opens real sockets to a sidecar process with short deadlines, plays one hostile
peer (a slow header, a slow body, idle connections, too many bodies at once) and waits,
with a deadline, for the bound to act: a closed connection, a 503, a counted fault.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import pytest

from market_data_sidecar.checks.exposition import MAX_COORDINATORS, parse
from market_data_sidecar.server.relay_view import MAX_RELAY_STATE_BYTES
from tests.reliability.conftest import metric_value, scrape
from tests.support.helpers import SidecarProcess, eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

StartSidecar = Callable[..., SidecarProcess]

#: How much later than its deadline a bound may act: timers, scheduling, a busy machine.
SLACK = 1.5


async def started(start: StartSidecar, **env: str) -> SidecarProcess:
    sidecar = start({f"SIDECAR_{name.upper()}": value for name, value in env.items()})
    await sidecar.wait_listening()
    return sidecar


async def connect(sidecar: SidecarProcess) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", sidecar.port)


async def closed_after(reader: asyncio.StreamReader, *, within: float) -> tuple[float, bytes]:
    """Seconds until the sidecar closed the connection, and what it sent before."""
    began = time.monotonic()
    received = bytearray()
    async with asyncio.timeout(within):
        while chunk := await reader.read(65536):
            received += chunk
    return time.monotonic() - began, bytes(received)


async def exchange(sidecar: SidecarProcess, request: bytes, *, within: float = 10.0) -> bytes:
    """Send `request` on a new connection; everything the sidecar sent until it closed."""
    reader, writer = await connect(sidecar)
    try:
        writer.write(request)
        await writer.drain()
        return (await closed_after(reader, within=within))[1]
    finally:
        writer.close()


async def fault_count(sidecar: SidecarProcess, kind: str) -> float:
    return metric_value(await scrape(sidecar), "sidecar_client_faults_total", kind=kind)


def post_head(length: int, *, close: bool = False) -> bytes:
    """The head of a `POST /feedback`; with `close`, the sidecar closes after answering."""
    connection = "Connection: close\r\n" if close else ""
    return (
        "POST /feedback HTTP/1.1\r\nHost: sidecar\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n{connection}\r\n"
    ).encode()


# -- time ------------------------------------------------------------------------------------


async def test_a_slow_header_client_is_closed_at_the_header_deadline(
    sidecar_process: StartSidecar,
) -> None:
    sidecar = await started(sidecar_process, header_timeout="0.5")
    reader, writer = await connect(sidecar)
    writer.write(b"GET /readyz HTTP/1.1\r\nHost: sidecar\r\n")  # and never the blank line
    elapsed, received = await closed_after(reader, within=0.5 + SLACK)
    writer.close()
    assert received == b""
    assert elapsed >= 0.4
    await eventually(lambda: fault_count(sidecar, "header_timeout"), message="fault counted")


async def test_a_slow_body_client_is_closed_at_the_body_deadline(
    sidecar_process: StartSidecar,
) -> None:
    sidecar = await started(sidecar_process, body_timeout="0.5")
    reader, writer = await connect(sidecar)
    writer.write(post_head(1000) + b"[")
    elapsed, _ = await closed_after(reader, within=0.5 + SLACK)
    writer.close()
    assert elapsed >= 0.4
    await eventually(lambda: fault_count(sidecar, "body_timeout"), message="fault counted")
    # Its reserved bytes are back in the budget.
    exposition = await scrape(sidecar)
    assert metric_value(exposition, "sidecar_body_bytes_in_flight") == 0


async def test_an_idle_connection_is_closed_at_the_idle_timeout(
    sidecar_process: StartSidecar,
) -> None:
    sidecar = await started(sidecar_process, idle_timeout="0.5")
    reader, writer = await connect(sidecar)  # connects, and says nothing
    elapsed, _ = await closed_after(reader, within=0.5 + SLACK)
    writer.close()
    assert elapsed >= 0.4
    # Between requests too: one answer, then silence.
    reader, writer = await connect(sidecar)
    writer.write(b"GET /livez HTTP/1.1\r\nHost: sidecar\r\n\r\n")
    elapsed, received = await closed_after(reader, within=0.5 + SLACK)
    writer.close()
    assert received.startswith(b"HTTP/1.1 200")


# -- connections -----------------------------------------------------------------------------


async def test_at_the_connection_cap_the_oldest_idle_connection_makes_room(
    sidecar_process: StartSidecar,
) -> None:
    sidecar = await started(sidecar_process, max_connections="8", idle_timeout="60")
    idle = [await connect(sidecar) for _ in range(8)]
    await eventually(
        lambda: _gauge(sidecar, "sidecar_connections", 8), message="8 connections open"
    )
    # A probe still gets through: the first idle connection is closed for it.
    status, _ = await sidecar.get("/readyz")
    assert status == 200
    oldest_reader = idle[0][0]
    _, received = await closed_after(oldest_reader, within=5)
    assert received == b""
    assert await fault_count(sidecar, "evicted") >= 1
    for _, writer in idle:
        writer.close()


async def test_at_the_connection_cap_with_none_idle_a_newcomer_replaces_its_peers_oldest(
    sidecar_process: StartSidecar,
) -> None:
    sidecar = await started(
        sidecar_process, max_connections="4", body_timeout="30", body_bytes_in_flight="8388608"
    )
    busy = [await _busy(sidecar) for _ in range(3)]  # each mid-body: none idle
    await eventually(
        lambda: _gauge(sidecar, "sidecar_body_bytes_in_flight", 3000), message="3 bodies"
    )
    busy.append(await _busy(sidecar))  # the cap: four, all busy

    answer = await exchange(
        sidecar, b"GET /readyz HTTP/1.1\r\nHost: sidecar\r\nConnection: close\r\n\r\n"
    )

    assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer[:100]
    # The peer holding the most (this one) gave up one of its connections for it: the
    # first body if the fourth had been read by then, else the fourth (idle until read).
    await eventually(lambda: _closed(busy) == 1, message="one evicted")
    assert await fault_count(sidecar, "evicted") >= 1
    for _, writer in busy:
        writer.close()


def _closed(connections: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]) -> int:
    return sum(
        reader.at_eof() or reader.exception() is not None or writer.transport.is_closing()
        for reader, writer in connections
    )


async def _busy(sidecar: SidecarProcess) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection in the middle of sending a 1,000-byte body."""
    reader, writer = await connect(sidecar)
    writer.write(post_head(1000) + b"[")
    await writer.drain()
    return reader, writer


# -- memory ----------------------------------------------------------------------------------


async def test_a_body_beyond_the_budget_takes_the_oldest_reservation_of_the_heaviest_peer(
    sidecar_process: StartSidecar,
) -> None:
    sidecar = await started(
        sidecar_process,
        max_body_bytes="65536",
        body_bytes_in_flight="100000",
        body_timeout="30",
    )
    reader, writer = await connect(sidecar)  # holds 65,536 bytes of the budget
    writer.write(post_head(65536) + b"[")
    await writer.drain()
    await eventually(
        lambda: _gauge(sidecar, "sidecar_body_bytes_in_flight", 65536), message="reserved"
    )
    body = json.dumps({"coordinator_id": "c", "queue_size": 1, "capacity": 9, "level": "ok"})
    padded = body.encode() + b" " * (40000 - len(body))

    answer = await exchange(sidecar, post_head(len(padded), close=True) + padded)

    # The same peer holds the most: its oldest body gave way, not the newcomer.
    assert answer.startswith(b"HTTP/1.1 202"), answer[:200]
    elapsed, _ = await closed_after(reader, within=5)
    assert elapsed < 5
    assert await fault_count(sidecar, "preempted") == 1
    assert await fault_count(sidecar, "over_budget") == 0
    await eventually(lambda: _gauge(sidecar, "sidecar_body_bytes_in_flight", 0), message="released")
    writer.close()


async def test_relay_state_answers_stay_bounded_with_maximum_size_events(
    sidecar_process: StartSidecar,
) -> None:
    """Coordinator ids of 256 characters and reasons of 1,024, all four-byte UTF-8."""
    sidecar = await started(sidecar_process)
    events = [
        {
            "coordinator_id": ("\U0001f600" * 256)[: 256 - 6] + f"{n:06}",
            "queue_size": 950,
            "capacity": 1000,
            "level": "hard",
            "reason": "\U0001f4a5" * 1024,
        }
        for n in range(100)
    ]
    body = json.dumps(events, ensure_ascii=False).encode()
    answer = await exchange(sidecar, post_head(len(body), close=True) + body)
    assert answer.startswith(b"HTTP/1.1 202"), answer[:300]
    status, text = await sidecar.get("/feedback")
    assert status == 200
    state = json.loads(text)
    assert len(text.encode()) <= MAX_RELAY_STATE_BYTES
    assert state["omitted"]["coordinators"] == 100 - len(state["coordinators"]) > 0
    status, page = await sidecar.get("/")
    assert status == 200
    assert len(page.encode()) <= 4 * MAX_RELAY_STATE_BYTES


def test_the_queue_check_keeps_a_bounded_number_of_coordinators() -> None:
    """The first `MAX_COORDINATORS` of the coordinator series; other families (a latency
    histogram per coordinator listed first) neither count nor are cut."""
    listed = MAX_COORDINATORS + 500
    other = "".join(f'mds_coord_latency_count{{coord_id="z{n}"}} 1\n' for n in range(listed))
    text = other + "".join(
        f'mds_coord_queue_depth{{coord_id="c\\"{n:06}"}} {n}\n'
        f'mds_coord_workers_alive{{coord_id="c\\"{n:06}"}} 2\n'
        for n in range(listed)
    )
    series = parse(text)
    assert len(series.coordinators) == MAX_COORDINATORS
    assert series.omitted == 500
    assert series.depth[f'c"{MAX_COORDINATORS - 1:06}'] == MAX_COORDINATORS - 1


async def _gauge(sidecar: SidecarProcess, name: str, value: float) -> bool:
    return metric_value(await scrape(sidecar), name) == value


async def _answers(sidecar: SidecarProcess, path: str) -> bool:
    try:
        status, _ = await sidecar.get(path)
    except OSError:
        return False
    return status == 200
