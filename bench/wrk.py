"""`wrk` runs from the load core, read back through a Lua `done` hook for exact figures."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench import procs

_DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH-WRK {\"requests\": %d, \"duration_us\": %d, \"bytes\": %d, \"connect\": %d, " ..
    "\"read\": %d, \"write\": %d, \"status\": %d, \"timeout\": %d, \"p50\": %d, " ..
    "\"p90\": %d, \"p99\": %d, \"p999\": %d, \"max\": %d}\n",
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max))
end
"""


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    non_2xx: int
    socket_errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def available() -> bool:
    return shutil.which("wrk") is not None


def run(
    url: str,
    *,
    seconds: float,
    connections: int = 16,
    threads: int = 1,
    post_body: bytes | None = None,
) -> WrkResult:
    """Closed-loop load: as many requests as `connections` keep answered."""
    script = _script(post_body)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
        script_path = Path(handle.name)
    try:
        proc = procs.spawn(
            "wrk",
            ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
             "--latency", "--timeout", "10s", "-s", str(script_path), url],
            cpu=procs.LOAD_CPU,
            stdout=subprocess.PIPE,
        )  # fmt: skip
        out, _ = proc.communicate(timeout=seconds + 60)
        procs.stop(proc)
    finally:
        script_path.unlink(missing_ok=True)
    text = out.decode(errors="replace")
    line = next((ln for ln in text.splitlines() if ln.startswith("BENCH-WRK ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{text}\n{procs.log_of('wrk')}")
    data = json.loads(line.removeprefix("BENCH-WRK "))
    return WrkResult(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        non_2xx=data["status"],
        socket_errors=data["connect"] + data["read"] + data["write"] + data["timeout"],
        p50_ms=data["p50"] / 1000,
        p90_ms=data["p90"] / 1000,
        p99_ms=data["p99"] / 1000,
        p999_ms=data["p999"] / 1000,
        max_ms=data["max"] / 1000,
    )


def _script(post_body: bytes | None) -> str:
    if post_body is None:
        return _DONE
    body = post_body.decode()
    if "]==]" in body:
        raise ValueError("body cannot be embedded in a Lua long string")
    return (
        'wrk.method = "POST"\n'
        f"wrk.body = [==[{body}]==]\n"
        'wrk.headers["Content-Type"] = "application/json"\n' + _DONE
    )
