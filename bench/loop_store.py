"""One store replica of the closed loop (bench/closed_loop.py): market-data-store 0.6.73.

Run with the consumers venv's python (`.ci/consumers.sh`). Two real `WriteCoordinator`s
(`bars`, `quotes`; drop-oldest overflow, the store's default 50%/80% watermarks), each
writing to a sink of a fixed rate (items per second, slower than the producer at full
rate), and, with `--feedback URL`, the real `HttpFeedbackBroadcaster` on the store's
`feedback_bus()` POSTing every crossing to a sidecar.

Items arrive on a TCP port from the pipeline (bench/loop_pipeline.py): one byte each,
`b` for bars and `q` for quotes, in batches of 20 that are submitted one by one (a
crossing awaits the broadcaster's POST, as in the store) and then acknowledged.

Prints JSON lines: `ready` (with the port), `feedback` per event on the bus (monotonic
time, coordinator, level), and `stats` every 0.25 s and once more on SIGTERM: items
received, written and dropped, depth and peak depth, per coordinator.

The sinks' workers flush only full batches (a one-hour flush interval): on Python 3.11 a
0.6.73 `SinkWorker` whose batch is empty once its flush interval has passed spins at
full CPU and never takes an item again (`asyncio.wait_for(queue.get(), 0)` always times
out there), and this queue does empty whenever the pipeline pauses.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

from loguru import logger
from market_data_store.coordinator import (
    FeedbackEvent,
    HttpFeedbackBroadcaster,
    WriteCoordinator,
    feedback_bus,
)

COORDINATORS = {b"b"[0]: "bars", b"q"[0]: "quotes"}
#: Items per write from the pipeline (bench/loop_pipeline.py's BATCH), acknowledged.
BATCH_IN = 20
WORKERS = 2
BATCH = 10
#: Long enough never to pass while the benchmark runs (see the module's docstring).
FLUSH_INTERVAL = 3600.0


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


class RateSink:
    """A database that writes `rate` items a second, whatever the number of writers."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.free_at = 0.0
        self.written = 0

    async def write(self, batch: Sequence[int]) -> None:
        now = time.monotonic()
        self.free_at = max(now, self.free_at) + len(batch) / self.rate
        await asyncio.sleep(self.free_at - now)
        self.written += len(batch)


class Coordinator:
    """One `WriteCoordinator` and what the benchmark reads of it."""

    def __init__(self, name: str, rate: float, capacity: int) -> None:
        self.name = name
        self.sink = RateSink(rate)
        self.received = 0
        self.dropped = 0
        self.peak = 0
        self.store = WriteCoordinator[int](
            sink=self.sink,
            capacity=capacity,
            workers=WORKERS,
            batch_size=BATCH,
            flush_interval=FLUSH_INTERVAL,
            overflow_strategy="drop_oldest",
            drop_callback=self._dropped,
            coord_id=name,
        )

    async def _dropped(self, _item: int) -> None:
        self.dropped += 1

    async def submit(self) -> None:
        self.received += 1
        await self.store.submit(self.received)
        self.peak = max(self.peak, self.store.health().queue_size)

    def stats(self) -> dict[str, int]:
        return {
            "received": self.received,
            "written": self.sink.written,
            "dropped": self.dropped,
            "depth": self.store.health().queue_size,
            "peak": self.peak,
        }


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--feedback", default="", help="the sidecar's POST /feedback URL")
    parser.add_argument("--capacity", type=int, default=1000)
    parser.add_argument("--bars", type=float, required=True, help="bars' sink, items/s")
    parser.add_argument("--quotes", type=float, required=True, help="quotes' sink, items/s")
    args = parser.parse_args()
    logger.remove()
    logger.add(sys.stderr, level="WARNING")

    broadcaster = None
    if args.feedback:
        broadcaster = HttpFeedbackBroadcaster(args.feedback, max_retries=3, backoff_base=0.1)
        await broadcaster.start()

    async def record(event: FeedbackEvent) -> None:
        emit(event="feedback", t=time.monotonic(), coordinator=event.coordinator_id,
             level=event.level.value, queue_size=event.queue_size)  # fmt: skip

    feedback_bus().subscribe(record)
    coordinators = {
        byte: Coordinator(name, getattr(args, name), args.capacity)
        for byte, name in COORDINATORS.items()
    }
    for coordinator in coordinators.values():
        await coordinator.store.start()

    async def take(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                for byte in await reader.readexactly(BATCH_IN):
                    await coordinators[byte].submit()
                writer.write(b"k")  # the pipeline sends this replica's next batch now

    server = await asyncio.start_server(take, "127.0.0.1", args.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    emit(event="ready", port=args.port)

    def stats() -> None:
        emit(event="stats", t=time.monotonic(),
             coordinators={c.name: c.stats() for c in coordinators.values()})  # fmt: skip

    while not stop.is_set():
        stats()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.25)
    stats()
    server.close()
    if broadcaster is not None:
        await broadcaster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
