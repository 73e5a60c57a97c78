"""`market-data-sidecar run` as a subprocess on the server core, as Kubernetes runs it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from bench import procs

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?)\s+(\S+)$")

#: Run under uvloop without touching the product: the CLI's `asyncio.run` takes the policy.
_UVLOOP_MAIN = (
    "import asyncio, sys, uvloop; asyncio.set_event_loop_policy(uvloop.EventLoopPolicy()); "
    "from market_data_sidecar.cli import main; sys.exit(main(sys.argv[1:]))"
)


class Sidecar:
    def __init__(self, name: str, env: dict[str, str] | None = None, *, uvloop: bool = False):
        self.name = name
        self.port = procs.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.disk = tempfile.mkdtemp(prefix="sidecar-bench-disk-")
        self.env = {
            "SIDECAR_HOST": "127.0.0.1",
            "SIDECAR_PORT": str(self.port),
            "SIDECAR_STORE_METRICS_URL": "",
            "SIDECAR_DATABASE_URL": "",
            "SIDECAR_DISK_PATHS": json.dumps([self.disk]),
            "SIDECAR_SHUTDOWN_GRACE": "0",
            "SIDECAR_DRAIN_TIMEOUT": "1",
            **(env or {}),
        }
        self.uvloop = uvloop
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def start(self, *, ready: bool = True, timeout: float = 30.0) -> Sidecar:
        if self.uvloop:
            argv = procs.python("-c", _UVLOOP_MAIN, "run")
        else:
            argv = [str(Path(sys.executable).with_name("market-data-sidecar")), "run"]
        self._proc = procs.spawn(self.name, argv, env=self.env, cpu=procs.SERVER_CPU)
        procs.on_exit(self.stop)
        procs.wait_port(self.port, self._proc, self.name, timeout=timeout)
        if ready:
            self.wait_ready(timeout=timeout)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        status = 0
        while time.monotonic() < deadline:
            status, _ = self.get("/readyz")
            if status == 200:
                return
            time.sleep(0.1)
        raise RuntimeError(
            f"{self.name} not ready within {timeout:g}s (last {status}):\n"
            f"{self.get('/healthz?verbose')[1].decode(errors='replace')}\n"
            f"{procs.log_of(self.name)[-3000:]}"
        )

    def get(self, path: str) -> tuple[int, bytes]:
        return request(self.url + path)

    def post_json(self, path: str, payload: Any) -> tuple[int, bytes]:
        return request(self.url + path, json.dumps(payload).encode())

    def metrics(self) -> dict[str, float]:
        """Every sample of `/metrics`, keyed by name and labels as exposed."""
        _, body = self.get("/metrics")
        return parse_metrics(body.decode())

    def log(self) -> str:
        return procs.log_of(self.name)

    def stop(self) -> None:
        procs.forget(self.stop)
        if self._proc is not None:
            procs.stop(self._proc)
            self._proc = None
        shutil.rmtree(self.disk, ignore_errors=True)


def request(url: str, body: bytes | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    req = urllib.request.Request(url, data=body, headers=headers)  # noqa: S310 - 127.0.0.1
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:  # noqa: S310
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def parse_metrics(text: str) -> dict[str, float]:
    samples = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = _SAMPLE.match(line.strip())
        if match:
            samples[match.group(1)] = float(match.group(2))
    return samples


def metric_sum(samples: dict[str, float], name: str, **labels: str) -> float:
    """Sum of a family's samples whose labels include `labels`."""
    total = 0.0
    for key, value in samples.items():
        family, _, rest = key.partition("{")
        if family != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += value
    return total
