"""A PostgreSQL server of the tests' own, run by the `postgres` OS user (needs root)."""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import psycopg

from tests.support.helpers import free_port

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
