"""The store container of the CI pod (.ci/pod.sh): the real market-data-store 0.6.73.

A real `WriteCoordinator` and `HttpFeedbackBroadcaster`, configured only from the
environment the chart sets (`MDS_FB_ENABLE_HTTP_BROADCAST`, `MDS_FB_HTTP_ENDPOINT`,
`MDS_COORDINATOR_CAPACITY`; every other MDS_* setting keeps the package's default),
and the package's Prometheus metrics (`mds_coord_*`) served on /metrics.

The workload: in cycles, submit items faster than the (slow) sink writes them until
the queue is above the high watermark (--fill of capacity), then stop and let the
workers drain it below the low watermark (to --floor of capacity). The store's own
queue emits soft, hard and ok feedback on its bus as depth crosses its watermarks,
and the broadcaster POSTs each to the sidecar. SIGTERM: stop producing, let the sink
run at full speed, drain, stop the broadcaster, exit 0.

The queue is never left empty: on Python 3.11 a `SinkWorker` of 0.6.73 whose batch is
empty when its flush interval has passed calls `asyncio.wait_for(queue.get(), 0)`,
which on 3.11 always times out, and never resets its flush clock, so it spins at full
CPU and never takes an item again (seen here: depth stuck at 9000, 4 workers alive).

With --hold the store never drains: it keeps the queue topped up at --fill, so the
coordinator stays at the level it reached (hard above the high watermark, soft between
the watermarks) until SIGTERM - a replica that stays under pressure.

    python store.py [--metrics-host 127.0.0.1] [--metrics-port 8082]
        [--coordinator-id ci-bars] [--fill 0.9] [--floor 0.1] [--item-cost 0.002] [--hold]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence

from loguru import logger
from market_data_store.coordinator import (
    CoordinatorRuntimeSettings,
    FeedbackSettings,
    HttpFeedbackBroadcaster,
    WriteCoordinator,
)
from prometheus_client import start_http_server


class SlowSink:
    """A sink that takes `item_cost` seconds per item, until told to hurry."""

    def __init__(self, item_cost: float) -> None:
        self.item_cost = item_cost
        self.written = 0
        self.hurry = asyncio.Event()

    async def write(self, batch: Sequence[int]) -> None:
        if not self.hurry.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.hurry.wait(), timeout=len(batch) * self.item_cost)
        self.written += len(batch)


async def produce(
    coordinator: WriteCoordinator[int], stop: asyncio.Event, fill: int, floor: int, hold: bool
) -> None:
    if hold:
        await top_up(coordinator, stop, fill)
        return
    cycle = 0
    item = 0
    while not stop.is_set():
        cycle += 1
        # Fill: submit until the queue holds `fill` items (above the high watermark).
        while coordinator.health().queue_size < fill and not stop.is_set():
            await coordinator.submit(item)
            item += 1
            if item % 200 == 0:
                await asyncio.sleep(0)  # let the metrics loop and the bus run
        logger.info(f"cycle {cycle}: filled to {coordinator.health().queue_size}")
        # Drain: the workers take the queue below the low watermark at the sink's pace.
        while coordinator.health().queue_size > floor and not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.1)
        logger.info(f"cycle {cycle}: drained to {coordinator.health().queue_size}")


async def top_up(coordinator: WriteCoordinator[int], stop: asyncio.Event, fill: int) -> None:
    """Keep the queue at `fill` items: the coordinator's level stays where it got."""
    item = 0
    while not stop.is_set():
        while coordinator.health().queue_size < fill and not stop.is_set():
            await coordinator.submit(item)
            item += 1
            if item % 200 == 0:
                await asyncio.sleep(0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=0.05)


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics-host", default="0.0.0.0")
    parser.add_argument("--metrics-port", type=int, default=8082)
    parser.add_argument("--coordinator-id", default="ci-bars")
    parser.add_argument("--fill", type=float, default=0.9, help="fraction of capacity")
    parser.add_argument("--item-cost", type=float, default=0.002, help="sink seconds per item")
    parser.add_argument("--floor", type=float, default=0.1, help="fraction of capacity")
    parser.add_argument("--hold", action="store_true", help="stay at --fill until SIGTERM")
    args = parser.parse_args(argv)
    logger.remove()
    logger.add(sys.stderr, level="INFO")

    runtime = CoordinatorRuntimeSettings()
    feedback = FeedbackSettings()
    if not (feedback.enable_http_broadcast and feedback.http_endpoint):
        logger.error("MDS_FB_ENABLE_HTTP_BROADCAST / MDS_FB_HTTP_ENDPOINT are not set")
        return 2

    start_http_server(args.metrics_port, addr=args.metrics_host)
    broadcaster = HttpFeedbackBroadcaster(
        feedback.http_endpoint,
        timeout=feedback.http_timeout,
        max_retries=feedback.http_max_retries,
        backoff_base=feedback.http_backoff,
        enabled=feedback.enable_http_broadcast,
    )
    await broadcaster.start()
    sink = SlowSink(args.item_cost)
    coordinator = WriteCoordinator[int](
        sink=sink,
        capacity=runtime.coordinator_capacity,
        workers=runtime.coordinator_workers,
        batch_size=runtime.coordinator_batch_size,
        flush_interval=runtime.coordinator_flush_interval,
        coord_id=args.coordinator_id,
        metrics_poll_sec=runtime.metrics_queue_poll_sec,
    )
    await coordinator.start()
    logger.info(
        f"store: coordinator {args.coordinator_id} capacity {runtime.coordinator_capacity}, "
        f"feedback to {feedback.http_endpoint}, "
        f"metrics on {args.metrics_host}:{args.metrics_port}"
    )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    fill = max(1, int(args.fill * runtime.coordinator_capacity))
    floor = int(args.floor * runtime.coordinator_capacity)
    producer = asyncio.create_task(produce(coordinator, stop, fill, floor, args.hold))
    await stop.wait()
    logger.info("store: stopping")
    sink.hurry.set()
    # Bounded: the last `ok` event may be in flight to a sidecar that is stopping too.
    try:
        await asyncio.wait_for(shutdown(producer, coordinator, broadcaster), timeout=6.0)
    except TimeoutError:
        logger.warning("store: shutdown took longer than 6 s")
    logger.info(f"store: stopped, {sink.written} items written")
    return 0


async def shutdown(
    producer: asyncio.Task[None],
    coordinator: WriteCoordinator[int],
    broadcaster: HttpFeedbackBroadcaster,
) -> None:
    await producer
    await coordinator.stop(drain=True, timeout=3.0)
    await broadcaster.stop()


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
