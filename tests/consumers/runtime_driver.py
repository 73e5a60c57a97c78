"""market-data-pipeline's real `PipelineRuntime`, as one replica of the pipeline runs it.

`PipelineRuntime.initialize` builds the runtime's `RateCoordinator` (provider `ibkr`, 60
tokens a second) and starts its Pulse `FeedbackConsumer` under the fixed consumer name
`pipeline_w1`, as in every replica. Run with the consumers venv's python, configured by
environment (`EVENT_BUS_BACKEND=redis`, `REDIS_URL`, `MD_NAMESPACE`). Prints JSON lines:
`ready` once the runtime is up and its group exists, then `rate` at every change of the
provider's scale (`t` on the monotonic clock every process shares).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import redis.asyncio as aioredis
from market_data_pipeline.orchestration.runtime import PipelineRuntime
from market_data_pipeline.pulse.config import PulseConfig
from market_data_pipeline.pulse.consumer import GROUP, STREAM

PROVIDER = "ibkr"
#: How often the provider's state is read: changes are reported within this.
POLL = 0.005


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


async def group_exists(client: aioredis.Redis, key: str) -> bool:
    try:
        groups = await client.xinfo_groups(key)
    except Exception:  # the key does not exist yet
        return False
    return any(group["name"] == GROUP for group in groups)


async def main() -> int:
    cfg = PulseConfig()
    runtime = PipelineRuntime()
    await runtime.initialize()
    coordinator = runtime.rate_coordinator
    assert coordinator is not None
    key = f"{cfg.ns}:{cfg.ns}.{STREAM}"
    client = aioredis.Redis.from_url(cfg.redis_url, decode_responses=True)
    try:
        while not await group_exists(client, key):
            await asyncio.sleep(0.02)
        emit(event="ready", key=key, group=GROUP)
        last: float | None = None
        while True:
            task = runtime._pulse_task
            if task is None or task.done():
                emit(event="crashed", error="the pulse consumer stopped")
                return 1
            scale = float(coordinator.get_provider_state(PROVIDER)["scale_factor"])
            if scale != last:
                last = scale
                emit(event="rate", t=time.monotonic(), scale=scale)
            await asyncio.sleep(POLL)
    finally:
        await client.aclose()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
