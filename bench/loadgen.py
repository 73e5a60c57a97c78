"""Fixed-rate and closed-loop HTTP load from a process of its own.

`python -m bench.loadgen '<json config>'` prints one JSON result on stdout.

- `rate`: `count` requests at `rate` per second, open loop. Latency is measured from
  the moment each request was *due*, not when it went out, so a server that stalls
  is charged for the requests queued behind it (no coordinated omission).
- `burst`: `count` requests with `concurrency` in flight, as fast as they are answered.

`body` is `none` (GET), `event` (one feedback event per request) or `array` (`batch`
events per request). Each event carries its sequence number as `reason: "seq:N"`, so
receivers can time its journey; `coordinators` spreads events over that many ids.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from typing import Any

import aiohttp
import psutil

from bench.stats import summarize


def event(seq: int, coordinators: int) -> dict[str, Any]:
    return {
        "coordinator_id": f"bench-coord-{seq % coordinators}",
        "queue_size": 850,
        "capacity": 1000,
        "level": "soft",
        "reason": f"seq:{seq}",
        "utilization": 0.85,
    }


def body_for(config: dict[str, Any], index: int) -> bytes | None:
    kind = config.get("body", "none")
    coordinators = int(config.get("coordinators", 1))
    if kind == "event":
        return json.dumps(event(index, coordinators)).encode()
    if kind == "array":
        batch = int(config["batch"])
        first = index * batch
        return json.dumps([event(first + k, coordinators) for k in range(batch)]).encode()
    return None


class Client:
    def __init__(self, config: dict[str, Any]) -> None:
        self.url = config["url"]
        default = "GET" if config.get("body", "none") == "none" else "POST"
        self.method = config.get("method", default)
        self.headers = {"Content-Type": "application/json"} if self.method == "POST" else {}
        self.timeout = aiohttp.ClientTimeout(total=float(config.get("timeout", 10.0)))
        self.connector = aiohttp.TCPConnector(
            limit=int(config.get("connections", 64)), ttl_dns_cache=None
        )
        self.session = aiohttp.ClientSession(connector=self.connector, timeout=self.timeout)
        self.statuses: Counter[str] = Counter()

    async def send(self, body: bytes | None) -> bool:
        try:
            async with self.session.request(
                self.method, self.url, data=body, headers=self.headers
            ) as response:
                await response.read()
                self.statuses[str(response.status)] += 1
                return True
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self.statuses[type(exc).__name__] += 1
            return False

    async def close(self) -> None:
        await self.session.close()


async def run_rate(config: dict[str, Any]) -> dict[str, Any]:
    rate, count = float(config["rate"]), int(config["count"])
    # Bodies are built before the clock starts: the generator must not be the bottleneck.
    bodies = [body_for(config, i) for i in range(count)]
    client = Client(config)
    due_latency: list[float] = [0.0] * count
    sent_at: list[float] = [0.0] * count
    done = [False] * count

    async def one(index: int, due: float) -> None:
        sent_at[index] = time.monotonic()
        if await client.send(bodies[index]):
            due_latency[index] = time.monotonic() - due
            done[index] = True

    tasks: set[asyncio.Task[None]] = set()
    deadline_extra = float(config.get("drain", 15.0))
    cpu_before = _cpu()
    start = time.monotonic() + 0.05
    for index in range(count):
        due = start + index / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(index, due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    send_end = time.monotonic()
    if tasks:
        _done, pending = await asyncio.wait(set(tasks), timeout=deadline_extra)
        for task in pending:
            task.cancel()
            client.statuses["unfinished"] += 1
        await asyncio.gather(*pending, return_exceptions=True)
    elapsed = time.monotonic() - start
    await client.close()
    latencies = [due_latency[i] for i in range(count) if done[i]]
    # How late the generator itself started each request: its own stalls, not the server's.
    due_times = [start + i / rate for i in range(count)]
    lag = [sent_at[i] - due_times[i] for i in range(count) if sent_at[i]]
    result: dict[str, Any] = {
        "mode": "rate",
        "offered_rate": rate,
        "achieved_send_rate": count / max(send_end - start, 1e-9),
        "count": count,
        "elapsed": elapsed,
        "statuses": dict(client.statuses),
        "latency": summarize(latencies),
        "send_lag": summarize(lag),
        "cpu_seconds": _cpu() - cpu_before,
    }
    if config.get("record_sends"):
        result["sent_at"] = sent_at
    return result


async def run_burst(config: dict[str, Any]) -> dict[str, Any]:
    count, concurrency = int(config["count"]), int(config.get("concurrency", 8))
    bodies = [body_for(config, i) for i in range(count)]
    client = Client({**config, "connections": concurrency})
    latencies: list[float] = []
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < count:
            index, next_index = next_index, next_index + 1
            began = time.monotonic()
            if await client.send(bodies[index]):
                latencies.append(time.monotonic() - began)

    cpu_before = _cpu()
    start = time.monotonic()
    async with asyncio.timeout(float(config.get("deadline", 120.0))):
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.monotonic() - start
    await client.close()
    return {
        "mode": "burst",
        "count": count,
        "started_at": start,
        "elapsed": elapsed,
        "requests_per_second": count / elapsed,
        "statuses": dict(client.statuses),
        "latency": summarize(latencies),
        "cpu_seconds": _cpu() - cpu_before,
    }


def _cpu() -> float:
    times = psutil.Process().cpu_times()
    return float(times.user + times.system)


def main() -> None:
    config = json.loads(sys.argv[1])
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:  # the plain loop only makes the generator slower
        pass
    runner = run_rate if config["mode"] == "rate" else run_burst
    result = asyncio.run(runner(config))
    sys.stdout.write(json.dumps(result))


if __name__ == "__main__":
    main()


def run_in_process(
    name: str,
    config: dict[str, Any],
    *,
    timeout: float,
    while_running: Any = None,
    cpu: int | None = None,
) -> dict[str, Any]:
    """Run the generator in a child process on the load core; its JSON result.

    `while_running`, if given, is called about every 0.5 s until the child ends (the
    footprint benchmark samples the sidecar's memory that way).
    """
    import subprocess

    from bench import procs

    proc = procs.spawn(
        name,
        procs.python("-m", "bench.loadgen", json.dumps(config)),
        cpu=procs.LOAD_CPU if cpu is None else cpu,
        stdout=subprocess.PIPE,
    )
    deadline = time.monotonic() + timeout
    try:
        while while_running is not None and proc.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} still running after {timeout:g}s")
            while_running()
            time.sleep(0.5)
        out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        procs.stop(proc)
    if proc.returncode != 0 or not out:
        raise RuntimeError(f"{name} failed ({proc.returncode}):\n{procs.log_of(name)[-3000:]}")
    result: dict[str, Any] = json.loads(out)
    return result
