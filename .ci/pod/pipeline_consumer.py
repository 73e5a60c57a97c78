"""market-data-pipeline's real FeedbackConsumer on the CI pod's stream (.ci/pod.sh).

Run with the python of a virtual environment holding market-data-pipeline 0.8.70
(.cache/consumers/venv, from .ci/consumers.sh), configured as the pipeline is, by
environment: EVENT_BUS_BACKEND=redis, REDIS_URL, MD_NAMESPACE (`PulseConfig` reads
them at import).

    python pipeline_consumer.py COORDINATOR SECONDS [LEVEL ...]

The consumer hands each event to the pipeline's FeedbackHandler, which rescales a real
`RateCoordinator` through the pipeline's `RateCoordinatorAdapter`. Prints JSON lines:
`ready` once the consumer group exists (Core creates it at `$`: only later entries
reach it), then `event` for each handled event with the provider's scale after it, and
`reached` as each LEVEL is handled. Exits 0 once it has handled events of COORDINATOR
at each LEVEL in turn (default: `hard` then `ok`, scale 0.0 then 1.0), 1 if SECONDS pass
first.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

import redis.asyncio as aioredis
from market_data_pipeline.orchestration.coordinator import RateCoordinator
from market_data_pipeline.orchestration.feedback.consumer import RateCoordinatorAdapter
from market_data_pipeline.pulse.config import PulseConfig
from market_data_pipeline.pulse.consumer import GROUP, STREAM, FeedbackConsumer
from market_data_pipeline.settings.feedback import PipelineFeedbackSettings


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


async def main(coordinator_id: str, seconds: float, levels: list[str]) -> int:
    deadline = time.monotonic() + seconds
    cfg = PulseConfig()
    settings = PipelineFeedbackSettings()
    rates = RateCoordinator()
    rates.register_provider(settings.provider_name, capacity=60, refill_rate=60)
    consumer = FeedbackConsumer(RateCoordinatorAdapter(rates), settings, cfg)
    key = f"{consumer.bus.namespace}:{cfg.ns}.{STREAM}"

    done = asyncio.Event()
    awaited = list(levels)
    handle = consumer.handler.handle

    async def observed_handle(event: Any) -> None:
        await handle(event)
        state = rates.get_provider_state(settings.provider_name)
        emit(
            event="event",
            coordinator_id=event.coordinator_id,
            level=event.level.value,
            queue_size=event.queue_size,
            source=event.source,
            lag_ms=round((time.time() - event.ts) * 1000, 1),
            scale=float(state["scale_factor"]),
            pressure=str(state["pressure_state"]),
        )
        if awaited and event.coordinator_id == coordinator_id and event.level.value == awaited[0]:
            emit(event="reached", level=awaited.pop(0), scale=float(state["scale_factor"]))
            if not awaited:
                done.set()

    consumer.handler.handle = observed_handle  # type: ignore[method-assign]
    task = asyncio.create_task(consumer.run(consumer_name="ci-pod"))
    client = aioredis.Redis.from_url(cfg.redis_url, decode_responses=True)
    try:
        while time.monotonic() < deadline and not task.done():
            try:
                groups = await client.xinfo_groups(key)
            except Exception:  # no key yet
                groups = []
            if any(group["name"] == GROUP for group in groups):
                emit(event="ready", key=key, group=GROUP)
                break
            await asyncio.sleep(0.05)
        remaining = max(0.0, deadline - time.monotonic())
        waiter = asyncio.create_task(done.wait())
        await asyncio.wait({waiter, task}, timeout=remaining, return_when="FIRST_COMPLETED")
        if done.is_set():
            return 0
        waiter.cancel()
        reason = "the consumer stopped" if task.done() else f"not within {seconds:g}s"
        emit(event="failed", error=f"no {' then '.join(levels)} of {coordinator_id}: {reason}")
        return 1
    finally:
        await client.aclose()


if __name__ == "__main__":
    loop = asyncio.new_event_loop()
    code = loop.run_until_complete(
        main(sys.argv[1], float(sys.argv[2]), sys.argv[3:] or ["hard", "ok"])
    )
    sys.stdout.flush()
    # Leave without cancelling the consumer's task: awaiting it after cancel() (its
    # XREADGROUP loop in Core's RedisStreamsBus.subscribe) did not return here.
    os._exit(code)
