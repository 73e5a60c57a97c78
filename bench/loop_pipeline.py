"""The pipeline of the closed loop (bench/closed_loop.py): market-data-pipeline 0.8.70.

Run with the consumers venv's python (`.ci/consumers.sh`). A real `RateCoordinator`
paces a producer: every item takes one token of its provider's bucket
(`RateCoordinator.acquire`), then goes to a store replica (bench/loop_store.py) over
TCP in acknowledged batches of 20, round robin over the replicas, alternating `bars`
and `quotes`. With
`EVENT_BUS_BACKEND=redis`, the pipeline's real `FeedbackConsumer` reads the sidecar's
stream and its `FeedbackHandler` scales that bucket (ok 1.0, soft 0.5, hard 0.0).

Prints JSON lines: `ready` once the consumer's group exists (or at once without one),
`rate` with the monotonic time whenever the scale changes, `sent` every 0.25 s (items
produced so far). Reads `start` on stdin to begin producing; `--stores` may be empty
(only the consumer runs: the POST-to-rate latency measurement).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import redis.asyncio as aioredis
from market_data_core.telemetry import RateAdjustment
from market_data_pipeline.errors import PacingError
from market_data_pipeline.orchestration.coordinator import RateCoordinator
from market_data_pipeline.orchestration.feedback.consumer import RateCoordinatorAdapter
from market_data_pipeline.pulse.config import PulseConfig
from market_data_pipeline.pulse.consumer import GROUP, STREAM, FeedbackConsumer
from market_data_pipeline.settings.feedback import PipelineFeedbackSettings

#: Items per write, alternating bars and quotes; the store acknowledges each batch.
BATCH = 20


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


class ObservedRate:
    """The pipeline's own adapter; reports each scale it applies, with the time."""

    def __init__(self, coordinator: RateCoordinator, provider: str) -> None:
        self.adapter = RateCoordinatorAdapter(coordinator)
        self.coordinator = coordinator
        self.provider = provider

    async def apply(self, adjustment: RateAdjustment) -> None:
        await self.adapter.apply(adjustment)
        info = self.coordinator.get_provider_state(self.provider)
        emit(event="rate", t=time.monotonic(), scale=float(info["scale_factor"]),
             level=adjustment.reason.value)  # fmt: skip


async def produce(coordinator: RateCoordinator, provider: str, stores: list[str]) -> None:
    """Batches of `BATCH` paced items, each acknowledged by its replica before the next
    goes there: at most one batch in flight per replica, as with a synchronous write
    (bytes buffered in sockets would otherwise reach the store long after the rate fell)."""
    connections = []
    for address in stores:
        host, port = address.rsplit(":", 1)
        connections.append(await asyncio.open_connection(host, int(port)))
    batch = b"bq" * (BATCH // 2)
    sent = 0
    last_report = 0.0
    while True:
        for reader, writer in connections:
            taken = 0
            while taken < BATCH:
                try:
                    await coordinator.acquire(provider)
                except PacingError:  # the rate changed during the wait: ask again
                    continue
                taken += 1
            writer.write(batch)
            await reader.readexactly(1)
            sent += BATCH
            if time.monotonic() - last_report >= 0.25:
                last_report = time.monotonic()
                emit(event="sent", t=last_report, items=sent)


async def wait_group(cfg: PulseConfig, key: str, task: asyncio.Task[None]) -> None:
    client = aioredis.Redis.from_url(cfg.redis_url, decode_responses=True)
    try:
        while not task.done():
            try:
                groups = await client.xinfo_groups(key)
            except Exception:  # the key does not exist yet
                groups = []
            if any(group["name"] == GROUP for group in groups):
                return
            await asyncio.sleep(0.02)
    finally:
        await client.aclose()


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, required=True, help="items/s at full rate")
    parser.add_argument("--stores", default="", help="host:port,... of the replicas")
    args = parser.parse_args()
    settings = PipelineFeedbackSettings()
    coordinator = RateCoordinator()
    # A burst of 50 ms of the full rate: the bucket follows a new scale at once.
    coordinator.register_provider(
        settings.provider_name, capacity=max(1, args.rate // 20), refill_rate=args.rate
    )
    cfg = PulseConfig()
    tasks: list[asyncio.Task[None]] = []
    if cfg.backend == "redis":
        consumer = FeedbackConsumer(
            ObservedRate(coordinator, settings.provider_name), settings, cfg
        )
        task = asyncio.create_task(consumer.run(consumer_name="bench"), name="pipeline")
        tasks.append(task)
        await wait_group(cfg, f"{consumer.bus.namespace}:{cfg.ns}.{STREAM}", task)
        if task.done():
            emit(event="crashed", error=repr(task.exception()))
            return 1
    emit(event="ready", feedback=cfg.backend == "redis")
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        if line.strip() == "start" and args.stores:
            stores = args.stores.split(",")
            tasks.append(asyncio.create_task(produce(coordinator, settings.provider_name, stores)))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
