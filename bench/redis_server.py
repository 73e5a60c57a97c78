"""A redis-server of the benchmark's own on a free port, so the shared one stays clean."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from bench import procs


class OwnRedis:
    def __init__(self) -> None:
        if not shutil.which("redis-server"):
            raise RuntimeError("redis-server is needed: apt-get install -y redis-server")
        self.port = procs.free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dir = Path(tempfile.mkdtemp(prefix="sidecar-bench-redis-"))
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, cpu: int | None = procs.LOAD_CPU) -> OwnRedis:
        self._proc = procs.spawn(
            "redis-server",
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir), "--protected-mode", "yes"],
            cpu=cpu,
        )  # fmt: skip
        procs.on_exit(self.stop)
        procs.wait_port(self.port, self._proc, "redis-server")
        return self

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def stop(self) -> None:
        procs.forget(self.stop)
        if self._proc is not None:
            procs.stop(self._proc)
            self._proc = None
        shutil.rmtree(self.dir, ignore_errors=True)
