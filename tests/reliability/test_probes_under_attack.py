"""Probes cannot be starved: whatever one peer does, a peer that is not attacking gets its
probes answered fast, and never a 503 for want of a connection slot.

Each test runs `market-data-sidecar run` on 0.0.0.0 and attacks it with real sockets:
from a network namespace (a remote pod, `tests/reliability/test_loopback_intake.py`) while
the test probes over loopback, or from loopback (inside the pod) while the namespace
probes. The attacker reports on stdout when its connections are in place; nothing waits
on a fixed delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import psutil
import pytest
from aiohttp import web
from market_data_core.telemetry import HealthComponent

from market_data_sidecar.checks import Check
from market_data_sidecar.server.connections import BoundedRunner
from market_data_sidecar.server.probes import MONITOR
from market_data_sidecar.settings import Settings
from market_data_sidecar.wiring import build_app
from tests.reliability.conftest import metric_value, scrape
from tests.reliability.test_loopback_intake import Peer
from tests.reliability.test_loopback_intake import peer as _netns_peer  # noqa: F401
from tests.support.helpers import SidecarProcess, eventually, store_payload

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

StartSidecar = Callable[..., SidecarProcess]

#: What the kubelet needs of a probe under attack (issue: p99 within 50 ms).
PROBE_P99 = 0.050

#: Runs in the attacker's namespace: `count` connections to `host:port`, each pipelining
#: `depth` GETs of `/openapi.json` (15 KB each) into a 4 KiB receive buffer, never reading.
_SLOW_READERS = """
import asyncio, socket, sys
host, port, count, depth = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
REQUEST = b"GET /openapi.json HTTP/1.1\\r\\nHost: sidecar\\r\\n\\r\\n" * depth

async def one() -> None:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
        sock.send(REQUEST)
    except OSError:
        sock.close()
        return
    held.append(sock)

async def main() -> None:
    await asyncio.gather(*(one() for _ in range(count)))
    print("ready", len(held), flush=True)
    sys.stdin.read()  # held until the test closes stdin

held: list[socket.socket] = []
asyncio.run(main())
"""

#: Runs in the prober's namespace: `count` probes of `url` on new connections, 20 ms apart;
#: prints the statuses and latencies as JSON.
_PROBER = """
import http.client, json, sys, time
host, port, path, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
statuses, latencies = [], []
for _ in range(count):
    began = time.perf_counter()
    connection = http.client.HTTPConnection(host, port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        statuses.append(response.status)
    except OSError as exc:
        statuses.append(type(exc).__name__)
    finally:
        connection.close()
    latencies.append(time.perf_counter() - began)
    time.sleep(0.02)
print(json.dumps({"statuses": statuses, "latencies": latencies}))
"""


@pytest.fixture
def remote(request: pytest.FixtureRequest) -> Peer:
    """A peer in a network namespace of its own: a pod elsewhere in the cluster."""
    found: Peer = request.getfixturevalue("_netns_peer")
    return found


def p99(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def started(start: StartSidecar, **env: str) -> SidecarProcess:
    sidecar = start(
        {"SIDECAR_HOST": "0.0.0.0", **{f"SIDECAR_{k.upper()}": v for k, v in env.items()}}
    )
    await sidecar.wait_listening()
    return sidecar


async def probe(host: str, port: int, path: str) -> tuple[int, float]:
    """One probe on a new connection, as the kubelet sends it: status and seconds."""
    began = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: sidecar\r\nConnection: close\r\n\r\n".encode())
        answer = await reader.read()
    finally:
        writer.close()
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0
    return status, time.perf_counter() - began


async def probe_series(host: str, port: int, count: int) -> tuple[list[int], list[float]]:
    """`count` probes of `/readyz` and `/livez`, alternately, 20 ms apart (pacing only)."""
    statuses, latencies = [], []
    for n in range(count):
        async with asyncio.timeout(5):
            status, took = await probe(host, port, "/livez" if n % 2 else "/readyz")
        statuses.append(status)
        latencies.append(took)
        await asyncio.sleep(0.02)
    return statuses, latencies


@asynccontextmanager
async def attacker(command: list[str], *args: str) -> AsyncIterator[int]:
    """The attack script run by `command`, until the block ends; yields how many
    connections it holds once it said they are in place."""
    proc = await asyncio.create_subprocess_exec(
        *command,
        *args,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(60):
            line = (await proc.stdout.readline()).decode()
        assert line.startswith("ready"), (line, await proc.stderr.read() if proc.stderr else b"")
        yield int(line.split()[1])
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


def in_namespace(peer: Peer, script: str) -> list[str]:
    return ["ip", "netns", "exec", peer.namespace, sys.executable, "-c", script]


# -- slow readers ------------------------------------------------------------------------------


@pytest.mark.exclusive
async def test_600_remote_slow_readers_neither_slow_nor_refuse_probes_and_sigterm_is_bounded(
    remote: Peer, sidecar_process: StartSidecar
) -> None:
    peer = remote
    sidecar = await started(
        sidecar_process, write_timeout="2", drain_timeout="1", shutdown_grace="0"
    )
    command = in_namespace(peer, _SLOW_READERS)
    # 8 deep: within what a connection may queue (deeper is closed at once, tested below).
    async with attacker(command, peer.host_address, str(sidecar.port), "600", "8") as held:
        assert held >= 256
        # The attack is in place once answers wait on readers that do not read.
        await eventually(
            lambda: _fault_seen(sidecar, "write_timeout"), timeout=20, message="writes blocked"
        )
        statuses, latencies = await probe_series("127.0.0.1", sidecar.port, 150)

        assert set(statuses) == {200}, statuses
        assert p99(latencies) < PROBE_P99, sorted(latencies)[-5:]
        # Held connections are closed at their write deadline, not kept for minutes.
        exposition = await scrape(sidecar)
        assert metric_value(exposition, "sidecar_client_faults_total", kind="write_timeout") > 0

        began = time.monotonic()
        sidecar.proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(sidecar.proc.wait, 30)
        took = time.monotonic() - began
    # drain (1 s) + a little: blocked answers are dropped at once, not waited out.
    assert took < 4, took
    assert sidecar.proc.returncode == 0


async def test_a_connection_pipelining_more_than_8_requests_is_closed_at_once(
    sidecar_process: StartSidecar,
) -> None:
    sidecar = await started(sidecar_process)
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
    writer.write(b"GET /livez HTTP/1.1\r\nHost: sidecar\r\n\r\n" * 64)
    async with asyncio.timeout(5):
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass  # what was answered before the close, if anything
    writer.close()
    assert await _fault_seen(sidecar, "pipelining")


async def _fault_seen(sidecar: SidecarProcess, kind: str) -> bool:
    exposition = await scrape(sidecar)
    return metric_value(exposition, "sidecar_client_faults_total", kind=kind) > 0


# -- trickling bodies from inside the pod ---------------------------------------------------------


#: A `POST /feedback` whose 1,000-byte body has only begun: admitted, then held.
HELD_BODY_HEAD = (
    b"POST /feedback HTTP/1.1\r\nHost: sidecar\r\nContent-Type: application/json\r\n"
    b"Content-Length: 1000\r\n\r\n["
)


@pytest.mark.exclusive
async def test_300_loopback_clients_trickling_bodies_starve_neither_probes_nor_the_store(
    remote: Peer, sidecar_process: StartSidecar
) -> None:
    peer = remote
    sidecar = await started(sidecar_process, body_timeout="30")
    tricklers = []
    for _ in range(300):
        reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
        writer.write(HELD_BODY_HEAD)
        tricklers.append((reader, writer))
    try:
        await eventually(
            lambda: _gauge_at_least(sidecar, "sidecar_connections", 250), message="cap reached"
        )
        where = [peer.host_address, str(sidecar.port), "/readyz", "100"]
        prober = asyncio.create_task(
            asyncio.to_thread(
                subprocess.run,
                [*in_namespace(peer, _PROBER), *where],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        )
        posted = []
        while not prober.done():
            for _, writer in tricklers:  # a byte each, every round
                if not writer.is_closing():
                    writer.write(b" ")
            posted.append(await _post_from_the_store(sidecar))
            await asyncio.sleep(0.05)
        result = prober.result()
    finally:
        for _, writer in tricklers:
            writer.close()

    assert result.returncode == 0, result.stderr
    probes = json.loads(result.stdout)
    assert set(probes["statuses"]) == {200}, probes["statuses"]
    assert p99(probes["latencies"]) < PROBE_P99, sorted(probes["latencies"])[-5:]
    assert posted
    assert set(posted) == {202}, posted
    # Tricklers evicted mid-body are the clients' doing: no server error, no traceback.
    assert "unhandled error" not in sidecar.output()
    assert "Traceback" not in sidecar.output()


async def _post_from_the_store(sidecar: SidecarProcess) -> int:
    body = json.dumps(store_payload()).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
    try:
        writer.write(
            b"POST /feedback HTTP/1.1\r\nHost: sidecar\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        async with asyncio.timeout(5):
            answer = await reader.read()
    finally:
        writer.close()
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


async def _gauge_at_least(sidecar: SidecarProcess, name: str, value: float) -> bool:
    return metric_value(await scrape(sidecar), name) >= value


# -- compressed bodies ---------------------------------------------------------------------------


async def _head_only(port: int, head: bytes) -> bytes:
    """Send only `head` (a body is announced, not a byte of it sent) and read the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        async with asyncio.timeout(5):
            return await reader.readuntil(b"}")
    finally:
        writer.close()


async def test_a_compressed_body_is_refused_with_415_before_a_byte_of_it_is_read(
    sidecar_process: StartSidecar,
) -> None:
    sidecar = await started(sidecar_process)
    for method, path in [("GET", "/readyz"), ("POST", "/feedback")]:
        answer = await _head_only(
            sidecar.port,
            f"{method} {path} HTTP/1.1\r\nHost: sidecar\r\nContent-Type: application/json\r\n"
            "Content-Encoding: gzip\r\nContent-Length: 10000000\r\n\r\n".encode(),
        )
        assert answer.startswith(b"HTTP/1.1 415 "), answer
        assert b"Connection: close\r\n" in answer
        assert answer.endswith(b'{"error": "compressed request bodies are not accepted"}')


async def test_a_body_sent_to_a_probe_is_not_read(sidecar_process: StartSidecar) -> None:
    sidecar = await started(sidecar_process)
    answer = await _head_only(
        sidecar.port, b"GET /healthz HTTP/1.1\r\nHost: sidecar\r\nContent-Length: 1000000\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer[:200]
    assert b"Connection: close\r\n" in answer
    # No body budget was reserved for it.
    assert metric_value(await scrape(sidecar), "sidecar_body_bytes_in_flight") == 0


async def test_gzip_bombs_to_probes_and_a_refused_intake_cost_no_inflation(
    remote: Peer, sidecar_process: StartSidecar, tmp_path: Path
) -> None:
    peer = remote
    sidecar = await started(sidecar_process)
    bomb = gzip.compress(bytes(100 * 1024 * 1024), compresslevel=9)  # 100 MB inflated
    assert len(zlib.decompress(bomb, 31)) == 100 * 1024 * 1024
    process = psutil.Process(sidecar.proc.pid)
    before = sum(process.cpu_times()[:2])
    bomb_file = tmp_path / "bomb.gz"
    bomb_file.write_bytes(bomb)
    command = in_namespace(peer, _BOMBER)
    async with attacker(command, peer.host_address, str(sidecar.port), str(bomb_file)) as sent:
        assert sent == 20
        statuses, _ = await probe_series("127.0.0.1", sidecar.port, 20)
    spent = sum(process.cpu_times()[:2]) - before
    # Inflating them would be 2 GB of zeros: seconds of CPU. Refusing them costs little.
    assert spent < 1.0, spent
    assert set(statuses) == {200}, statuses


#: 20 connections, half `GET /readyz` and half `POST /feedback` (403 from this peer), each
#: sending a whole gzip bomb and reading the answer.
_BOMBER = """
import socket, sys
host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
bomb = open(path, "rb").read()
answers = []
for n in range(20):
    method, path = ("GET", "/readyz") if n % 2 else ("POST", "/feedback")
    head = (f"{method} {path} HTTP/1.1\\r\\nHost: sidecar\\r\\nContent-Type: application/json\\r\\n"
            f"Content-Encoding: gzip\\r\\nContent-Length: {len(bomb)}\\r\\n\\r\\n").encode()
    with socket.create_connection((host, port), timeout=10) as sock:
        try:
            sock.sendall(head + bomb)
        except OSError:
            pass
        answers.append(sock.recv(100).split(b" ")[1])
assert set(answers) == {b"415"}, answers
print("ready", len(answers), flush=True)
sys.stdin.read()
"""


# -- logs ----------------------------------------------------------------------------------------


async def test_connect_then_close_at_the_cap_and_a_flood_of_400s_log_a_few_lines(
    sidecar_process: StartSidecar,
) -> None:
    sidecar = await started(sidecar_process, max_connections="4", body_timeout="30")
    lines_before = len(sidecar.output().splitlines())
    held = []
    for _ in range(4):
        _, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
        writer.write(HELD_BODY_HEAD)
        held.append(writer)
    for _ in range(1000):
        _, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
        writer.close()
    for _ in range(300):
        answer = await _bad_json(sidecar.port)
        assert answer == 400
    for writer in held:
        writer.close()

    exposition = await scrape(sidecar)
    # How many of the 1,000 found the cap full depends on how fast their closes are
    # noticed; some did (the held four fill it).
    assert metric_value(exposition, "sidecar_client_faults_total", kind="evicted") > 0
    rejected = metric_value(exposition, "sidecar_feedback_received_total", outcome="malformed")
    assert rejected == 300, exposition
    lines = sidecar.output().splitlines()[lines_before:]
    assert "Traceback" not in "\n".join(lines)
    # 300 rejections, at most one line about them (none if one was written in the minute
    # before, by an eviction's aborted body say).
    assert sum("feedback rejected" in line for line in lines) <= 1, "\n".join(lines)
    # One line per kind (evicted, http_400, aborted ...) per interval, whatever the count.
    assert len(lines) <= 8, lines


async def _bad_json(port: int) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"POST /feedback HTTP/1.1\r\nHost: s\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1\r\nConnection: close\r\n\r\n{"
        )
        async with asyncio.timeout(5):
            answer = await reader.read()
    finally:
        writer.close()
    return int(answer.split(b" ", 2)[1])


# -- a detail that JSON cannot carry as it is -------------------------------------------------


class _SurrogateCheck(Check):
    """A component whose detail holds a lone surrogate (text from the store or Redis)."""

    async def run(self) -> HealthComponent:
        return self.component("degraded", error="bad \udcff byte", coordinator="c\ud800")


async def test_a_lone_surrogate_in_a_detail_is_escaped_not_a_500(unused_tcp_port: int) -> None:
    settings = Settings(store_metrics_url="", disk_paths=[])
    app = build_app(settings, checks=[_SurrogateCheck("odd", interval=0.1, timeout=1)])
    runner = BoundedRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    try:
        await eventually(lambda: _answered(unused_tcp_port, "/livez"), message="serving")
        await eventually(lambda: app[MONITOR].first_round_done, message="first round done")
        for path in ["/healthz", "/readyz", "/healthz?exclude=odd", "/readyz?verbose"]:
            reader, writer = await asyncio.open_connection("127.0.0.1", unused_tcp_port)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n".encode())
            answer = await reader.read()
            writer.close()
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 OK"), (path, answer)
            text = body.decode("utf-8")  # valid UTF-8: the surrogate is escaped
            if "verbose" in path:
                assert "[+]odd degraded: bad \\udcff byte" in text
            else:
                details = json.loads(text)["components"][0]["details"]
                assert details["error"] == "bad \\udcff byte"  # escaped by the health snapshot
    finally:
        await runner.cleanup()


async def _answered(port: int, path: str) -> bool:
    status, _ = await probe("127.0.0.1", port, path)
    return status == 200
