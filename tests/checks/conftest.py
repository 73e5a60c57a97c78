"""Real servers the checks watch: a PostgreSQL instance (and replica) of the tests' own,
a store metrics endpoint, a small filesystem. Each fixture always cleans up."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import generate_latest

from tests.helpers import free_port

PG_BIN = max(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))

#: The instance's connection limit: small, so tests can fill it.
MAX_CONNECTIONS = 20

# Superuser over TCP needs no password; every other role must give one (scram).
PG_HBA = """\
local all         all                      trust
local replication all                      trust
host  all         postgres 127.0.0.1/32    trust
host  replication postgres 127.0.0.1/32    trust
host  all         all      127.0.0.1/32    scram-sha-256
"""


class PostgresInstance:
    """A PostgreSQL server run by the `postgres` OS user in a temporary directory."""

    def __init__(self, root: Path, name: str) -> None:
        self.root = root
        self.data = root / name
        self.log = root / f"{name}.log"
        self.port = free_port()
        self.frozen_processes: list[psutil.Process] = []

    # -- lifecycle -------------------------------------------------------------------------

    def initdb(self) -> None:
        _as_postgres("initdb", "-D", self.data, "-U", "postgres", "-A", "trust", "--no-sync")
        (self.data / "pg_hba.conf").write_text(PG_HBA)

    def base_backup_of(self, primary: PostgresInstance) -> None:
        """Make this a streaming replica of `primary` (standby.signal, primary_conninfo)."""
        _as_postgres(
            "pg_basebackup",
            "-h", primary.root, "-p", primary.port, "-U", "postgres",
            "-D", self.data, "-R", "-X", "stream", "--no-sync",
        )  # fmt: skip

    def start(self) -> None:
        options = " ".join(
            [
                f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1",
                f"-c max_connections={MAX_CONNECTIONS} -c superuser_reserved_connections=0",
                "-c fsync=off -c synchronous_commit=off -c wal_level=replica",
            ]
        )
        _as_postgres(
            "pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "30", "-o", options, "start"
        )

    def stop(self, mode: str = "immediate") -> None:
        _as_postgres("pg_ctl", "-D", self.data, "-m", mode, "-w", "stop")

    def is_running(self) -> bool:
        status = subprocess.run(
            ["runuser", "-u", "postgres", "--", PG_BIN / "pg_ctl", "-D", self.data, "status"],
            capture_output=True,
            check=False,
        )
        return status.returncode == 0

    # -- faults ----------------------------------------------------------------------------

    def processes(self) -> list[psutil.Process]:
        """The postmaster and every process it forked."""
        pid = int((self.data / "postmaster.pid").read_text().split()[0])
        postmaster = psutil.Process(pid)
        return [postmaster, *postmaster.children(recursive=True)]

    def freeze(self) -> None:
        """SIGSTOP the postmaster first (so it forks no more), then its children."""
        self.frozen_processes = self.processes()
        for process in self.frozen_processes:
            process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        for process in self.frozen_processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGCONT)
        self.frozen_processes = []

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        self.freeze()
        try:
            yield
        finally:
            self.resume()

    # -- clients ---------------------------------------------------------------------------

    def dsn(self, user: str = "postgres", password: str | None = None, db: str = "postgres") -> str:
        secret = f":{password}" if password else ""
        return f"postgresql://{user}{secret}@127.0.0.1:{self.port}/{db}"

    def connect(self, dbname: str = "postgres", **kwargs: Any) -> psycopg.Connection[Any]:
        """A superuser connection over the unix socket, as an operator's psql."""
        options: dict[str, Any] = {"autocommit": True, **kwargs}
        return psycopg.connect(
            host=str(self.root), port=self.port, user="postgres", dbname=dbname, **options
        )

    def execute(self, sql: str, dbname: str = "postgres") -> list[tuple[Any, ...]]:
        with self.connect(dbname) as conn:
            cursor = conn.execute(sql.encode())
            return cursor.fetchall() if cursor.description else []

    def sidecar_connections(self) -> int:
        rows = self.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'market-data-sidecar'"
        )
        return int(rows[0][0])

    def reset(self) -> None:
        """Undo what a test may have left: a frozen or stopped server, open sessions."""
        self.resume()
        if not self.is_running():
            self.start()
        self.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        )


def _as_postgres(tool: str, *args: object) -> None:
    command = ["runuser", "-u", "postgres", "--", str(PG_BIN / tool), *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{tool} failed ({result.returncode}): {result.stderr[-2000:]}")


@pytest.fixture(scope="session")
def postgres_root() -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("starting a PostgreSQL of the tests' own needs root (runuser postgres)")
    root = Path(tempfile.mkdtemp(prefix="sidecar-pg-"))
    shutil.chown(root, "postgres", "postgres")
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_instance(postgres_root: Path) -> Iterator[PostgresInstance]:
    """The tests' own primary, on a free port; stopped at the end whatever happened."""
    instance = PostgresInstance(postgres_root, "primary")
    instance.initdb()
    try:
        instance.start()
        yield instance
    finally:
        instance.resume()
        with contextlib.suppress(RuntimeError):
            instance.stop()


@pytest.fixture
def pg(postgres_instance: PostgresInstance) -> Iterator[PostgresInstance]:
    """The primary, running and idle, and put back that way after the test."""
    postgres_instance.reset()
    yield postgres_instance
    postgres_instance.reset()


@pytest.fixture(scope="session")
def replica_instance(
    postgres_instance: PostgresInstance, postgres_root: Path
) -> Iterator[PostgresInstance]:
    """A streaming replica of the tests' primary."""
    postgres_instance.reset()
    replica = PostgresInstance(postgres_root, "replica")
    replica.base_backup_of(postgres_instance)
    try:
        replica.start()
        yield replica
    finally:
        with contextlib.suppress(RuntimeError):
            replica.stop()


@pytest.fixture
def replica(replica_instance: PostgresInstance, pg: PostgresInstance) -> Iterator[PostgresInstance]:
    yield replica_instance
    with contextlib.suppress(psycopg.Error):
        replica_instance.execute("SELECT pg_wal_replay_resume()")


# -- the store's metrics endpoint ----------------------------------------------------------


@dataclass
class Coordinator:
    depth: int = 0
    workers_alive: int | None = 4
    circuit_state: int | None = 0
    dropped: dict[str, int] = field(default_factory=dict)


class StoreMetrics:
    """What a market-data-store serves on `/metrics`, controllable by the test.

    `mode`: `ok` (an exposition from prometheus-client, as the store's), `error` (HTTP
    500), `garbage` (200 with a body that is no exposition), `hang` (never answers),
    `huge` (a valid exposition padded with comments past any sane size).
    """

    def __init__(self) -> None:
        self.mode = "ok"
        self.coordinators: dict[str, Coordinator] = {}
        self.requests = 0
        self.released = asyncio.Event()
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.mode == "hang":
            await self.released.wait()
        if self.mode == "error":
            return web.Response(status=500, text="internal server error")
        if self.mode == "garbage":
            return web.Response(text="<html><body>502 Bad Gateway</body></html>")
        if self.mode == "huge":
            padding = b"# padding\n" * (1024 * 1024)
            return web.Response(body=padding + self.exposition(), content_type="text/plain")
        return web.Response(body=self.exposition(), content_type="text/plain")

    def exposition(self) -> bytes:
        registry = CollectorRegistry()
        depth = Gauge("mds_coord_queue_depth", "Queue depth", ["coord_id"], registry=registry)
        workers = Gauge("mds_coord_workers_alive", "Workers", ["coord_id"], registry=registry)
        circuit = Gauge("mds_coord_circuit_state", "Circuit", ["coord_id"], registry=registry)
        dropped = Counter(
            "mds_coord_items_dropped", "Dropped", ["coord_id", "reason"], registry=registry
        )
        for name, coordinator in self.coordinators.items():
            depth.labels(name).set(coordinator.depth)
            if coordinator.workers_alive is not None:
                workers.labels(name).set(coordinator.workers_alive)
            if coordinator.circuit_state is not None:
                circuit.labels(name).set(coordinator.circuit_state)
            for reason, count in coordinator.dropped.items():
                dropped.labels(name, reason).inc(count)
        return generate_latest(registry)


@pytest.fixture
async def store_metrics(aiohttp_server: Any) -> AsyncIterator[StoreMetrics]:
    """A store metrics server with two coordinators well below their watermarks."""
    store = StoreMetrics()
    store.coordinators = {"bars-coord": Coordinator(depth=100), "ticks-coord": Coordinator()}
    app = web.Application()
    app.router.add_get("/metrics", store.handle)
    server = await aiohttp_server(app)
    store.url = str(server.make_url("/metrics"))
    yield store
    store.released.set()


# -- probing a sidecar while a fault holds ---------------------------------------------------


@dataclass
class ProbeLog:
    answers: list[tuple[str, int, float]] = field(default_factory=list)

    def slowest(self) -> float:
        return max((elapsed for _, _, elapsed in self.answers), default=0.0)

    def statuses(self, path: str) -> set[int]:
        return {status for p, status, _ in self.answers if p == path}


@contextlib.asynccontextmanager
async def probing(client: TestClient[Any, Any]) -> AsyncIterator[ProbeLog]:
    """Ask `/livez` and `/readyz` continuously in the background, timing every answer."""
    log = ProbeLog()

    async def ask() -> None:
        while True:
            for path in ("/livez", "/readyz"):
                started = time.perf_counter()
                async with client.get(path) as response:
                    await response.read()
                log.answers.append((path, response.status, time.perf_counter() - started))
            await asyncio.sleep(0.02)

    task = asyncio.create_task(ask(), name="probing")
    try:
        yield log
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# -- a small filesystem ------------------------------------------------------------------------


@pytest.fixture
def small_filesystem() -> Iterator[Path]:
    """A 4 MiB tmpfs with 64 inodes, unmounted afterwards."""
    mountpoint = Path(tempfile.mkdtemp(prefix="sidecar-disk-"))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,nr_inodes=64", "tmpfs", str(mountpoint)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        mountpoint.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)
        mountpoint.rmdir()
