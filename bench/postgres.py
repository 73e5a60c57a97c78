"""A PostgreSQL instance of the benchmark's own: temp dir, free port, freezable.

The shared instance on 5432 belongs to the tests; freezing it would break them, so the
probe benchmark initialises and freezes this one instead.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

from bench import procs


def _bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name))
    if not found or not shutil.which("runuser"):
        raise RuntimeError(
            "PostgreSQL server binaries (/usr/lib/postgresql/*/bin) and runuser are needed "
            "for the probe benchmark's own database: apt-get install -y postgresql"
        )
    return Path(found[-1])


class OwnPostgres:
    """initdb + pg_ctl as the `postgres` user in a temp dir; trust auth on 127.0.0.1."""

    def __init__(self) -> None:
        self.bindir = _bindir()
        self.port = procs.free_port()
        self.root = Path(tempfile.mkdtemp(prefix="sidecar-bench-pg-"))
        self.data = self.root / "data"
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._frozen: list[int] = []

    def _as_postgres(self, *argv: str, timeout: float = 60) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *argv],
            check=True,
            timeout=timeout,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=self.root,
        )

    def start(self) -> OwnPostgres:
        shutil.chown(self.root, "postgres", "postgres")
        procs.on_exit(self.stop)
        self._as_postgres(
            str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
            "--no-sync", "-E", "UTF8",
        )  # fmt: skip
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._as_postgres(
            str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"),
            "-o", options, "-w", "-t", "30", "start",
        )  # fmt: skip
        return self

    @property
    def postmaster_pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """SIGSTOP the postmaster and every child; always SIGCONT on the way out."""
        postmaster = psutil.Process(self.postmaster_pid)
        pids = [postmaster.pid, *(child.pid for child in postmaster.children(recursive=True))]
        try:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
                    self._frozen.append(pid)
            yield
        finally:
            self._thaw()

    def _thaw(self) -> None:
        while self._frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._frozen.pop(), signal.SIGCONT)

    def stop(self) -> None:
        self._thaw()
        procs.forget(self.stop)
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                self._as_postgres(
                    str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                    "-w", "-t", "20", "stop",
                )  # fmt: skip
        for _ in range(50):
            if not (self.data / "postmaster.pid").exists():
                break
            time.sleep(0.1)
        shutil.rmtree(self.root, ignore_errors=True)
