"""market-data-pipeline's real `FeedbackConsumer` driving a real `RateCoordinator`.

Run with the consumers venv's python (`.ci/consumers.sh`), configured as the pipeline is
in production, by environment: `EVENT_BUS_BACKEND=redis`, `REDIS_URL`, `MD_NAMESPACE`.
Prints JSON lines on stdout: `ready` once its consumer group exists (Core creates it at
`$`, so only events written afterwards reach it), then `rate` whenever the coordinator's
scale, rate or pressure changes (`t`: when, on the monotonic clock every process shares),
and `crashed` if the consumer stops.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import redis.asyncio as aioredis
from market_data_core.telemetry import RateAdjustment
from market_data_pipeline.orchestration.coordinator import RateCoordinator
from market_data_pipeline.orchestration.feedback.consumer import RateCoordinatorAdapter
from market_data_pipeline.pulse.config import PulseConfig
from market_data_pipeline.pulse.consumer import GROUP, STREAM, FeedbackConsumer
from market_data_pipeline.settings.feedback import PipelineFeedbackSettings

#: The pipeline's default: `RateCoordinator.register_provider`'s 60 tokens per second.
BASE_RATE = 60


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


class ObservedRate:
    """The pipeline's own `RateCoordinatorAdapter`, reporting each change it makes.

    Only watches: every adjustment goes through the real adapter and coordinator.
    """

    def __init__(self, coordinator: RateCoordinator, provider: str) -> None:
        self.adapter = RateCoordinatorAdapter(coordinator)
        self.coordinator = coordinator
        self.provider = provider
        self.applied = 0
        self.last: tuple[float, int, str] | None = None

    def state(self) -> tuple[float, int, str]:
        info = self.coordinator.get_provider_state(self.provider)
        rate = self.coordinator._buckets[self.provider].budget.max_msgs_per_sec
        return float(info["scale_factor"]), int(rate), str(info["pressure_state"])

    def report(self, level: str | None) -> None:
        current = self.state()
        if current != self.last:
            self.last = current
            scale, rate, pressure = current
            emit(
                event="rate",
                t=time.monotonic(),
                provider=self.provider,
                scale=scale,
                rate=rate,
                pressure=pressure,
                level=level,
                applied=self.applied,
            )

    async def apply(self, adjustment: RateAdjustment) -> None:
        await self.adapter.apply(adjustment)
        self.applied += 1
        self.report(adjustment.reason.value)


async def group_exists(client: aioredis.Redis, key: str) -> bool:
    try:
        groups = await client.xinfo_groups(key)
    except Exception:  # the key does not exist yet
        return False
    return any(group["name"] == GROUP for group in groups)


async def main() -> int:
    cfg = PulseConfig()
    if cfg.backend != "redis":
        emit(event="crashed", error=f"EVENT_BUS_BACKEND is {cfg.backend!r}, not 'redis'")
        return 2
    settings = PipelineFeedbackSettings()
    coordinator = RateCoordinator()
    coordinator.register_provider(settings.provider_name, capacity=60, refill_rate=BASE_RATE)
    rate = ObservedRate(coordinator, settings.provider_name)
    consumer = FeedbackConsumer(rate, settings, cfg)
    key = f"{consumer.bus.namespace}:{cfg.ns}.{STREAM}"
    task = asyncio.create_task(consumer.run(consumer_name="pipeline-test"), name="pipeline")
    client = aioredis.Redis.from_url(cfg.redis_url, decode_responses=True)
    try:
        while not await group_exists(client, key):
            if task.done():
                break
            await asyncio.sleep(0.02)
        if not task.done():
            emit(event="ready", key=key, group=GROUP, redis_url=cfg.redis_url)
            rate.report(None)
        try:
            await task
        except Exception as error:
            emit(event="crashed", error=f"{type(error).__name__}: {error}")
            return 1
        emit(event="crashed", error="the consumer returned")
        return 1
    finally:
        await client.aclose()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
