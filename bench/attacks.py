"""Hostile peers against a real `market-data-sidecar run`: each attack, its bound, and what
was observed, beside a baseline (no attack) measured in the same run.

    .venv/bin/python bench/attacks.py            # every attack, ~2 minutes
    .venv/bin/python bench/attacks.py --only slow-bodies idle-connections

Every attack gets a fresh sidecar subprocess with the default settings (only its port,
disk path and, for the queue attack, the store's metrics URL are set). While the attack
runs, a separate process asks `/readyz` on a new connection every 20 ms, as the kubelet
does, and the sidecar's RSS is sampled every 20 ms. Figures: the largest RSS, the p99 of
`/readyz`, the largest response body seen by the attacker, and the sidecar's log lines.
Only loopback addresses are used; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import http.client
import importlib
import json
import multiprocessing
import os
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import psutil
from aiohttp import web

if TYPE_CHECKING:
    from tests.support.fake_redis import Answer, FakeRedis

MIB = 1024 * 1024
#: What the chart gives the sidecar container (charts/.../values.yaml: 192Mi).
CHART_MEMORY_LIMIT = 192 * MIB
#: Seconds of `/readyz` probing measured while an attack holds its resources.
HOLD = 6.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the sidecar and what is measured of it ----------------------------------------------


class Sidecar:
    """`market-data-sidecar run` with default settings on a port of its own."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.disk = tempfile.mkdtemp(prefix="sidecar-attacks-")
        self.log = Path(self.disk) / "sidecar.log"
        full_env = {
            **os.environ,
            "SIDECAR_HOST": "127.0.0.1",
            "SIDECAR_PORT": str(self.port),
            "SIDECAR_STORE_METRICS_URL": "",
            "SIDECAR_DATABASE_URL": "",
            "SIDECAR_DISK_PATHS": json.dumps([self.disk]),
            "SIDECAR_SHUTDOWN_GRACE": "0",
            **(env or {}),
        }
        self._log = self.log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "market_data_sidecar", "run"],
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.process = psutil.Process(self.proc.pid)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if get(self.port, "/readyz")[0] == 200:
                return
            if self.proc.poll() is not None:
                raise RuntimeError(self.log.read_text())
            time.sleep(0.05)
        raise RuntimeError("the sidecar did not become ready")

    def log_lines(self) -> list[str]:
        self._log.flush()
        return self.log.read_text(errors="replace").splitlines()

    def rss(self) -> int:
        return int(self.process.memory_info().rss)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    except OSError:
        return 0, b""
    finally:
        connection.close()


def _probe(port: int, seconds: float, results: Any) -> None:
    """In a process of its own: `/readyz` on a new connection every 20 ms."""
    latencies: list[float] = []
    failures = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        began = time.perf_counter()
        status, _ = get(port, "/readyz", timeout=5)
        latencies.append(time.perf_counter() - began)
        failures += status != 200
        time.sleep(0.02)
    results.put((latencies, failures))


@dataclass
class Observation:
    rss_max: int = 0
    readyz: list[float] = field(default_factory=list)
    readyz_failures: int = 0
    response_bytes: int = 0
    log_lines: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def p99_ms(self) -> float:
        if not self.readyz:
            return float("nan")
        ordered = sorted(self.readyz)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000


@contextlib.contextmanager
def observing(sidecar: Sidecar, seconds: float) -> Iterator[Observation]:
    """Sample RSS and probe `/readyz` for `seconds` while the body runs the attack."""
    seen = Observation()
    lines_before = len(sidecar.log_lines())
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            with contextlib.suppress(psutil.Error):
                seen.rss_max = max(seen.rss_max, sidecar.rss())
            stop.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    results: Any = multiprocessing.get_context("spawn").Queue()
    prober = multiprocessing.get_context("spawn").Process(
        target=_probe, args=(sidecar.port, seconds, results)
    )
    prober.start()
    try:
        yield seen
    finally:
        seen.readyz, seen.readyz_failures = results.get(timeout=seconds + 60)
        prober.join()
        stop.set()
        sampler.join()
        seen.log_lines = len(sidecar.log_lines()) - lines_before


# -- attacks ---------------------------------------------------------------------------------


async def open_many(port: int, count: int) -> list[tuple[asyncio.StreamReader, Any]]:
    connections = []
    for _ in range(count):
        with contextlib.suppress(OSError):
            connections.append(await asyncio.open_connection("127.0.0.1", port))
    return connections


async def closed_count(
    connections: list[tuple[asyncio.StreamReader, Any]], answers: dict[int, bytes] | None = None
) -> int:
    """How many of `connections` the sidecar has closed (EOF or reset); what each was
    sent is kept in `answers` by index."""
    closed = 0
    for index, (reader, _) in enumerate(connections):
        if reader.at_eof():
            closed += 1
            continue
        try:
            async with asyncio.timeout(0.001):
                data = await reader.read(65536)
            if answers is not None and data:
                answers[index] = answers.get(index, b"") + data
            closed += data == b"" or reader.at_eof()
        except TimeoutError:
            pass
        except OSError:
            closed += 1
    return closed


def close_all(connections: list[tuple[asyncio.StreamReader, Any]]) -> None:
    for _, writer in connections:
        writer.transport.abort()


async def baseline(sidecar: Sidecar, seen: Observation) -> None:
    await asyncio.sleep(HOLD)


async def slow_bodies(sidecar: Sidecar, seen: Observation) -> None:
    """150 connections each send 1 MiB - 1 bytes of a 1 MiB body and hold."""
    head = (
        "POST /feedback HTTP/1.1\r\nHost: sidecar\r\nContent-Type: application/json\r\n"
        f"Content-Length: {MIB}\r\n\r\n"
    ).encode()
    connections = await open_many(sidecar.port, 150)
    chunk = b" " * (64 * 1024)
    for _, writer in connections:
        with contextlib.suppress(OSError):
            writer.write(head)
    for sent in range(0, MIB - 1, len(chunk)):
        piece = chunk[: min(len(chunk), MIB - 1 - sent)]
        for _, writer in connections:
            with contextlib.suppress(OSError):
                writer.write(piece)
        await asyncio.sleep(0)
    began = time.monotonic()
    answers: dict[int, bytes] = {}
    closed = refused = 0
    while time.monotonic() - began < HOLD + 6:
        closed = await closed_count(connections, answers)
        refused = sum(answer.startswith(b"HTTP/1.1 503") for answer in answers.values())
        if closed == len(connections):
            break
        await asyncio.sleep(0.1)
    seen.notes.append(
        f"{refused} answered 503 at once; all {closed} of {len(connections)} closed "
        f"{time.monotonic() - began:.1f} s after the last byte"
    )
    close_all(connections)


async def idle_connections(sidecar: Sidecar, seen: Observation) -> None:
    """3,000 connections that never send a byte."""
    connections = await open_many(sidecar.port, 3000)
    await asyncio.sleep(1.0)
    held = len(connections) - await closed_count(connections)
    seen.notes.append(f"{len(connections)} opened, {held} still open after 1 s")
    began = time.monotonic()
    while time.monotonic() - began < 40:
        held = len(connections) - await closed_count(connections)
        if held == 0:
            break
        await asyncio.sleep(0.5)
    seen.notes.append(f"{held} open after {time.monotonic() - began + 1:.0f} s")
    close_all(connections)


async def slow_headers(sidecar: Sidecar, seen: Observation) -> None:
    """500 connections sending their headers a byte every 100 ms (slowloris)."""
    connections = await open_many(sidecar.port, 500)
    line = b"GET /readyz HTTP/1.1\r\nHost: sidecar\r\nX-Slow: " + b"a" * 200
    began = time.monotonic()
    for index in range(len(line)):
        if time.monotonic() - began > HOLD + 2:
            break
        for _, writer in connections:
            with contextlib.suppress(OSError):
                writer.write(line[index : index + 1])
        await asyncio.sleep(0.1)
    closed = await closed_count(connections)
    seen.notes.append(f"{closed}/{len(connections)} closed within {time.monotonic() - began:.1f} s")
    close_all(connections)


def _max_size_events(batch: int, count: int) -> bytes:
    """Coordinator ids of 256 characters and reasons of 1,024, four UTF-8 bytes each."""
    events = [
        {
            "coordinator_id": ("\U0001f600" * 256)[:248] + f"{batch:04}{n:04}",
            "queue_size": 950,
            "capacity": 1000,
            "level": "hard",
            "reason": "\U0001f4a5" * 1024,
        }
        for n in range(count)
    ]
    return json.dumps(events, ensure_ascii=False).encode()


async def big_state_readers(sidecar: Sidecar, seen: Observation) -> None:
    """50 POSTs of maximum-size events, then four clients reading `/feedback` (and one
    `/`) in a loop."""
    for batch in range(50):
        body = _max_size_events(batch, 100)
        status = await asyncio.to_thread(_post, sidecar.port, body)
        if status != 202:
            seen.notes.append(f"POST {batch} answered {status}")
    end = time.monotonic() + HOLD
    reads = 0

    def reader(path: str) -> None:
        nonlocal reads
        connection = http.client.HTTPConnection("127.0.0.1", sidecar.port, timeout=10)
        while time.monotonic() < end:
            connection.request("GET", path)
            body = connection.getresponse().read()
            seen.response_bytes = max(seen.response_bytes, len(body))
            reads += 1
        connection.close()

    await asyncio.gather(*(asyncio.to_thread(reader, path) for path in ["/feedback"] * 4 + ["/"]))
    seen.notes.append(f"{reads} reads of /feedback and / in {HOLD:g} s")


def _post(port: int, body: bytes) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(
            "POST", "/feedback", body=body, headers={"Content-Type": "application/json"}
        )
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


TOKEN = "attack-token-0123456789"


async def malformed_flood(sidecar: Sidecar, seen: Observation) -> None:
    """5,000 requests with a control character after a bearer token, 50 at a time."""
    limit = asyncio.Semaphore(50)
    leaked = 0

    async def one(n: int) -> None:
        nonlocal leaked
        async with limit:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
            except OSError:
                return
            writer.write(f"GET /{n} HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\x01\r\n\r\n".encode())
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(5):
                    answer = await reader.read()
                seen.response_bytes = max(seen.response_bytes, len(answer))
                leaked += TOKEN.encode() in answer
            writer.close()

    await asyncio.gather(*(one(n) for n in range(5000)))
    in_log = sum(TOKEN in line for line in sidecar.log_lines())
    seen.notes.append(f"token in {leaked} answers and {in_log} log lines")


async def queue_flood(sidecar: Sidecar, seen: Observation) -> None:
    """The store's `/metrics` lists 30,000 coordinators (served by `store_with`)."""
    began = time.monotonic()
    while time.monotonic() - began < HOLD + 10:
        _, body = await asyncio.to_thread(get, sidecar.port, "/healthz")
        seen.response_bytes = max(seen.response_bytes, len(body))
        await asyncio.sleep(0.5)
    _, body = await asyncio.to_thread(get, sidecar.port, "/healthz")
    queue = next(c for c in json.loads(body)["components"] if c["name"] == "queue")
    seen.notes.append(
        f"queue {queue['state']}: {queue['details'].get('coordinators_omitted', 0)} omitted"
    )


@contextlib.asynccontextmanager
async def store_with(coordinators: int) -> Any:
    """A stand-in store whose `/metrics` lists `coordinators` coordinators."""
    lines = []
    for n in range(coordinators):
        c = f'coord_id="coordinator-{n:06}"'
        lines.append(f"mds_coord_queue_depth{{{c}}} {n % 9000}")
        lines.append(f"mds_coord_workers_alive{{{c}}} 4")
        lines.append(f"mds_coord_circuit_state{{{c}}} 0")
    body = ("\n".join(lines) + "\n").encode()

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/metrics", len(body)
    finally:
        await runner.cleanup()


# -- attacks on the probes themselves (slow readers, compressed bodies, tricklers) ---------

#: Another pod: the attacker's source address, so the probing kubelet (127.0.0.1) is a
#: different peer, as it is in a cluster. Linux routes all of 127/8 to loopback.
OTHER_POD = "127.0.0.2"


async def slow_readers(sidecar: Sidecar, seen: Observation) -> None:
    """600 connections from another pod pipeline `GET /openapi.json` into a 4 KiB receive
    buffer and never read the answers."""
    request = b"GET /openapi.json HTTP/1.1\r\nHost: sidecar\r\n\r\n" * 64
    held = []
    for _ in range(600):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.bind((OTHER_POD, 0))
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", sidecar.port))
            sock.send(request)
        except OSError:
            sock.close()
            continue
        held.append(sock)
    began = time.monotonic()
    await asyncio.sleep(HOLD)
    open_now = sum(_still_open(sock) for sock in held)
    seen.notes.append(
        f"{len(held)} connected; {open_now} still open {time.monotonic() - began:.0f} s later"
    )
    stop_began = time.monotonic()
    sidecar.proc.terminate()  # SIGTERM with the attack still in place
    await asyncio.to_thread(sidecar.proc.wait, 30)
    seen.notes.append(f"SIGTERM took {time.monotonic() - stop_began:.1f} s")
    for sock in held:
        sock.close()


def _still_open(sock: socket.socket) -> bool:
    """Not closed by the sidecar: what it sent is read (and dropped) to see the end."""
    try:
        while sock.recv(65536):
            pass
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


#: 10 MB of zeros, gzip-compressed (about 10 KB on the wire).
GZIP_BOMB = gzip.compress(bytes(10_000_000), compresslevel=9)


async def _send_bombs(sidecar: Sidecar, seen: Observation, method: str, path: str) -> None:
    """80 connections from another pod at a time, each sending a 10 MB gzip bomb to
    `method path` and reading the answer, then again every 0.5 s, for the whole hold."""
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: sidecar\r\nContent-Type: application/json\r\n"
        f"Content-Encoding: gzip\r\nContent-Length: {len(GZIP_BOMB)}\r\n\r\n"
    ).encode()
    end = time.monotonic() + HOLD
    statuses: dict[str, int] = {}

    async def one() -> None:
        while time.monotonic() < end:
            try:
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", sidecar.port, local_addr=(OTHER_POD, 0)
                )
            except OSError:
                continue
            status = "none"
            with contextlib.suppress(OSError, TimeoutError, IndexError):
                writer.write(head + GZIP_BOMB)
                async with asyncio.timeout(5):
                    status = (await reader.readline()).split(b" ")[1].decode()
            statuses[status] = statuses.get(status, 0) + 1
            writer.transport.abort()
            await asyncio.sleep(0.5)

    await asyncio.gather(*(one() for _ in range(80)))
    seen.notes.append(", ".join(f"{n} x {s}" for s, n in sorted(statuses.items())))


async def gzip_readyz(sidecar: Sidecar, seen: Observation) -> None:
    await _send_bombs(sidecar, seen, "GET", "/readyz")


async def gzip_feedback(sidecar: Sidecar, seen: Observation) -> None:
    await _send_bombs(sidecar, seen, "POST", "/feedback")


#: A `POST /feedback` whose 1,000-byte body has only begun: admitted, then held.
HELD_BODY_HEAD = (
    b"POST /feedback HTTP/1.1\r\nHost: sidecar\r\nContent-Type: application/json\r\n"
    b"Content-Length: 1000\r\n\r\n["
)


async def loopback_tricklers(sidecar: Sidecar, seen: Observation) -> None:
    """300 clients in the pod (loopback) trickle admitted 1,000-byte bodies, a byte every
    100 ms, while the store POSTs an event every 100 ms."""
    connections = await open_many(sidecar.port, 300)
    for _, writer in connections:
        writer.write(HELD_BODY_HEAD)
    event = json.dumps(
        {"coordinator_id": "bars-coord", "queue_size": 850, "capacity": 1000, "level": "soft"}
    ).encode()
    end = time.monotonic() + HOLD
    posts: dict[int, int] = {}
    while time.monotonic() < end:
        for _, writer in connections:
            if not writer.is_closing():
                writer.write(b" ")
        status = await asyncio.to_thread(_post_or_zero, sidecar.port, event)
        posts[status] = posts.get(status, 0) + 1
        await asyncio.sleep(0.1)
    closed = await closed_count(connections)
    seen.notes.append(
        "store POSTs " + ", ".join(f"{n} x {s}" for s, n in sorted(posts.items()))
        + f"; {closed} of {len(connections)} tricklers closed"
    )  # fmt: skip
    close_all(connections)


def _post_or_zero(port: int, body: bytes) -> int:
    try:
        return _post(port, body)
    except OSError:
        return 0


async def connect_close_at_cap(sidecar: Sidecar, seen: Observation) -> None:
    """256 connections hold bodies (the cap), then 3,000 connections are opened and
    closed at once."""
    holders = await open_many(sidecar.port, 256)
    for _, writer in holders:
        writer.write(HELD_BODY_HEAD)
    await asyncio.sleep(0.5)  # every holder's head read: all busy
    churned = 0
    for _ in range(3000):
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
            writer.close()
            churned += 1
    await asyncio.sleep(1.0)  # the log lines of the last ones written
    traceback_lines = sum("Traceback" in line for line in sidecar.log_lines())
    seen.notes.append(f"{churned} connect-then-close; {traceback_lines} tracebacks")
    close_all(holders)


@dataclass(frozen=True)
class Attack:
    name: str
    run: Callable[[Sidecar, Observation], Awaitable[None]]
    bound: str
    store_coordinators: int = 0
    #: What the attack needs before the sidecar starts (a peer to point it at); yields
    #: the sidecar's extra environment.
    setup: Callable[[], contextlib.AbstractAsyncContextManager[dict[str, str]]] | None = None
    #: A hostile store (`HostileStore`) serving these bodies, and a webhook target.
    store_body: Callable[[], bytes] | None = None
    #: Settings beside the defaults, as (name, value) pairs.
    env: tuple[tuple[str, str], ...] = ()


ATTACKS = [
    Attack("baseline", baseline, "no attack"),
    Attack(
        "slow-bodies",
        slow_bodies,
        "8 MiB of bodies in flight (then the oldest gives way); body deadline 10 s",
    ),
    Attack("idle-connections", idle_connections, "256 connections; idle timeout 30 s"),
    Attack("slow-headers", slow_headers, "header deadline 5 s from the first byte"),
    Attack(
        "big-state-readers",
        big_state_readers,
        "128 KiB relay state, rendered at most every 0.5 s",
    ),
    Attack("malformed-flood", malformed_flood, "own JSON error; one log line per kind per 10 s"),
    Attack(
        "queue-flood",
        queue_flood,
        "2,000 coordinators kept of the store's list",
        store_coordinators=30_000,
    ),
    # Probes cannot be starved (slow readers, compressed bodies, tricklers in the pod).
    Attack(
        "slow-readers",
        slow_readers,
        "8 queued requests per connection; write deadline 5 s; fair eviction",
    ),
    Attack("gzip-readyz", gzip_readyz, "415 before the body; never inflated"),
    Attack(
        "gzip-feedback",
        gzip_feedback,
        "415 before the body; never inflated",
        env=(("SIDECAR_TOKEN", TOKEN),),
    ),
    Attack(
        "loopback-tricklers",
        loopback_tricklers,
        "at the cap the heaviest peer's oldest connection makes room",
    ),
    Attack(
        "connect-close-at-cap",
        connect_close_at_cap,
        "one counted line per kind per 10 s; no tracebacks",
    ),
]


# -- Redis targets pointed at peers that are not Redis ------------------------------------
#
# The sidecar (default settings) gets one `redis-stream` target whose URL is a peer
# speaking raw bytes: the fake of tests/support/fake_redis.py, started before it. One event
# is posted; then `/healthz` is read until the `feedback` component reports the target
# (or 20 s pass), and the peer's count of accepted connections is the storm, if any.

#: How long `feedback` has to report the target.
REDIS_REPORT_DEADLINE = 20.0


def _fake_redis() -> ModuleType:
    """The tests' fake Redis (this script runs from bench/, without the tests on its path)."""
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)
    return importlib.import_module("tests.support.fake_redis")


class HostileRedis:
    """A peer that a Redis target is pointed at, and what it saw of the sidecar."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.peer: FakeRedis | None = None

    @contextlib.asynccontextmanager
    async def setup(self) -> AsyncIterator[dict[str, str]]:
        async with _fake_redis().FakeRedis(self.answer) as peer:
            self.peer = peer
            target = {"kind": "redis-stream", "name": "pulse", "url": peer.url}
            yield {"SIDECAR_TARGETS": json.dumps([target])}

    async def run(self, sidecar: Sidecar, seen: Observation) -> None:
        assert self.peer is not None
        event = {"coordinator_id": "bars", "queue_size": 900, "capacity": 1000, "level": "hard"}
        status = await asyncio.to_thread(_post, sidecar.port, json.dumps(event).encode())
        began = time.monotonic()
        component: dict[str, Any] = {}
        while time.monotonic() - began < REDIS_REPORT_DEADLINE:
            component = await asyncio.to_thread(_feedback_component, sidecar.port)
            if component.get("state") == "degraded":
                break
            await asyncio.sleep(0.25)
        waited = time.monotonic() - began
        _, body = await asyncio.to_thread(get, sidecar.port, "/feedback")
        target = json.loads(body)["targets"][0]
        reason = component.get("details", {}).get("reason", "")
        seen.notes.append(
            (f"POST {status}; " if status != 202 else "")
            + f"feedback {component.get('state')} after {waited:.1f} s"
            + (f" ({reason[:90]})" if reason else "")
            + f"; {self.peer.accepted} connections, {target['retried']} failed attempts, "
            f"{target['dropped']} dropped"
        )


def _feedback_component(port: int) -> dict[str, Any]:
    _, body = get(port, "/healthz")
    try:
        components = json.loads(body)["components"]
    except (ValueError, KeyError):
        return {}
    return next((c for c in components if c["name"] == "feedback"), {})


def _redis_attack(name: str, answer: Answer, bound: str) -> Attack:
    peer = HostileRedis(answer)
    return Attack(name, peer.run, bound, setup=peer.setup)


_peers = _fake_redis()
REDIS_BOUND = (
    "1 MiB bulk, 4 MiB and 250,000 values a reply, 16 deep; a connection or two an attempt"
)
ATTACKS += [
    _redis_attack("redis-http-server", _peers.garbage, REDIS_BOUND),
    _redis_attack("redis-hang-up", _peers.hang_up, REDIS_BOUND),
    _redis_attack("redis-loading", _peers.loading, REDIS_BOUND),
    _redis_attack("redis-2gb-bulk", _peers.huge_bulk(pause=0.0), REDIS_BOUND),
    _redis_attack("redis-nested", _peers.nested(100_000), REDIS_BOUND),
]


async def run_attack(attack: Attack) -> Observation:
    env: dict[str, str] = dict(attack.env)
    async with contextlib.AsyncExitStack() as stack:
        if attack.store_coordinators:
            url, size = await stack.enter_async_context(store_with(attack.store_coordinators))
            env |= {"SIDECAR_STORE_METRICS_URL": url, "SIDECAR_CHECK_INTERVAL": "1"}
        if attack.setup is not None:
            env |= await stack.enter_async_context(attack.setup())
        if attack.store_body is not None:
            HOSTILE.reset(attack.store_body)
            env |= await stack.enter_async_context(HOSTILE.serving())
        sidecar = await asyncio.to_thread(Sidecar, env)
        try:
            with observing(sidecar, HOLD) as seen:
                await attack.run(sidecar, seen)
            if attack.store_coordinators:
                seen.notes.append(f"store exposition {size / MIB:.1f} MiB")
            with contextlib.suppress(psutil.Error):  # an attack may have stopped it
                seen.rss_max = max(seen.rss_max, sidecar.rss())
        finally:
            await asyncio.to_thread(sidecar.stop)
    return seen


# -- the store's metrics, hostile -----------------------------------------------------------
#
# The store's `/metrics` is served by a stand-in that answers a benign exposition until the
# sidecar is ready, then the attack's bodies; a webhook target on the same server counts
# the POSTs the sidecar makes of what it synthesizes.


class HostileStore:
    """A store stand-in and a webhook receiver on one port of the benchmark's own."""

    def __init__(self) -> None:
        self.body: Callable[[], bytes] = lambda: b""
        self.hostile = False
        self.posts = 0
        self.scrapes = 0

    def reset(self, body: Callable[[], bytes]) -> None:
        self.body, self.hostile, self.posts, self.scrapes = body, False, 0, 0

    async def metrics(self, request: web.Request) -> web.Response:
        self.scrapes += self.hostile
        body = self.body() if self.hostile else b'mds_coord_queue_depth{coord_id="bars"} 1\n'
        return web.Response(body=body, content_type="text/plain")

    async def hook(self, request: web.Request) -> web.Response:
        await request.read()
        self.posts += 1
        return web.Response(status=204)

    @contextlib.asynccontextmanager
    async def serving(self) -> Any:
        app = web.Application()
        app.router.add_get("/metrics", self.metrics)
        app.router.add_post("/hook", self.hook)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        target = {"kind": "http", "name": "hook", "url": f"http://127.0.0.1:{port}/hook"}
        try:
            yield {
                "SIDECAR_STORE_METRICS_URL": f"http://127.0.0.1:{port}/metrics",
                "SIDECAR_CHECK_INTERVAL": "1",
                "SIDECAR_TARGETS": json.dumps([target]),
            }
        finally:
            await runner.cleanup()


HOSTILE = HostileStore()


def _depth_lines(ids: Iterator[str] | list[str], depth: int) -> bytes:
    return "".join(f'mds_coord_queue_depth{{coord_id="{c}"}} {depth}\n' for c in ids).encode()


def long_ids_body() -> bytes:
    """2,000 coordinators whose ids are 4 KB long, at the high watermark."""
    return _depth_lines([f"{n:04}" + "x" * 4096 for n in range(2000)], 9000)


_fresh = iter(range(10**12))


def changing_ids_body() -> bytes:
    """2,000 coordinators, new ids at every scrape (one with a newline in it)."""
    ids = [f"c{next(_fresh)}" for _ in range(2000)]
    # The forged id first: the sidecar of before kept only the first 2,000 it read.
    return _depth_lines(["forged\\nERROR forged line", *ids], 9000)


def label_bomb_body() -> bytes:
    """One line of 200,000 labels (2.3 MB), then a normal coordinator."""
    labels = ",".join(f'l{n}="v"' for n in range(200_000))
    return f'mds_coord_queue_depth{{coord_id="m",{labels}}} 1\n'.encode() + _depth_lines(
        ["bars"], 1
    )


async def hostile_store(sidecar: Sidecar, seen: Observation) -> None:
    """Turn the store hostile, and read what the sidecar answers and does meanwhile."""
    HOSTILE.hostile = True
    began = time.monotonic()
    while time.monotonic() - began < HOLD:
        for path in ("/readyz", "/healthz", "/"):
            _, body = await asyncio.to_thread(get, sidecar.port, path, 10)
            seen.response_bytes = max(seen.response_bytes, len(body))
        await asyncio.sleep(0.5)
    _, body = await asyncio.to_thread(get, sidecar.port, "/healthz", 10)
    with contextlib.suppress(ValueError, KeyError):
        states = {c["name"]: c for c in json.loads(body)["components"]}
        queue, disk = states["queue"], states["disk"]
        seen.notes.append(
            f"queue {queue['state']} ({queue['details'].get('duration_ms', '?')} ms), "
            f"disk {disk['state']}"
        )
    forged = sum(line.startswith("ERROR forged") for line in sidecar.log_lines())
    seen.notes.append(
        f"{HOSTILE.scrapes} scrapes, {HOSTILE.posts} webhook POSTs, {forged} forged lines"
    )


ATTACKS += [
    Attack(
        "store-long-ids",
        hostile_store,
        "ids over 256 characters not kept; probe details summarised, 12 KiB",
        store_body=long_ids_body,
    ),
    Attack(
        "store-changing-ids",
        hostile_store,
        "2,000 coordinators a scrape; synthesized events logged once per 10 s",
        store_body=changing_ids_body,
    ),
    Attack(
        "store-label-bomb",
        hostile_store,
        "lines over 1 KiB skipped; each check in its own thread",
        store_body=label_bomb_body,
    ),
]


def table(rows: list[tuple[Attack, Observation]]) -> str:
    lines = [
        "| attack | bound | RSS max | /readyz p99 | /readyz failed | largest answer | "
        "log lines | observed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for attack, seen in rows:
        lines.append(
            f"| {attack.name} | {attack.bound} | {seen.rss_max / MIB:.0f} MiB | "
            f"{seen.p99_ms:.1f} ms | {seen.readyz_failures}/{len(seen.readyz)} | "
            f"{_size(seen.response_bytes)} | {seen.log_lines} | {'; '.join(seen.notes)} |"
        )
    return "\n".join(lines)


def _size(count: int) -> str:
    return f"{count} B" if count < 10 * 1024 else f"{count / 1024:.0f} KiB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", choices=[a.name for a in ATTACKS])
    args = parser.parse_args()
    # 3,000 connections: this process needs the file descriptors (the sidecar inherits it).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 20_000)), hard))
    chosen = [a for a in ATTACKS if not args.only or a.name in args.only or a.name == "baseline"]
    rows = []
    for attack in chosen:
        print(f"-- {attack.name}", file=sys.stderr, flush=True)
        rows.append((attack, asyncio.run(run_attack(attack))))
    print(table(rows))
    worst_rss = max(seen.rss_max for _, seen in rows)
    worst_p99 = max(seen.p99_ms for _, seen in rows)
    print(
        f"\nlargest RSS {worst_rss / MIB:.0f} MiB (chart limit {CHART_MEMORY_LIMIT // MIB} MiB), "
        f"worst /readyz p99 {worst_p99:.1f} ms (target < 50 ms)"
    )
    return 0 if worst_rss < CHART_MEMORY_LIMIT and worst_p99 < 50 else 1


if __name__ == "__main__":
    sys.exit(main())
