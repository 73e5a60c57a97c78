"""market-data-orchestrator's real `PulseObserver`, counting what it observes.

Run with the consumers venv's python (`.ci/consumers.sh`), configured by environment as
the orchestrator is: `EVENT_BUS_BACKEND=redis`, `REDIS_URL`, `MD_NAMESPACE` (the
observer's bus namespace is always `mdp`). The package's top-level `__init__` does not
import (it names a class its `orchestrator` package lacks), so `pulse` is loaded under a
bare parent module; none of their code is changed.

Prints JSON lines on stdout: `ready` once its consumer group exists, then `observed` after
each event with the observer's own counts (`seen`, `errors`) and, per coordinator, per
level, how many it saw; `stopped` if its watch task ends.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import json
import sys
import types
from collections import Counter, defaultdict
from typing import Any

import redis.asyncio as aioredis


def load_pulse_observer() -> types.ModuleType:
    """`market_data_orchestrator.pulse.observer` without running the broken top level."""
    spec = importlib.util.find_spec("market_data_orchestrator")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("market_data_orchestrator is not installed")
    parent = types.ModuleType("market_data_orchestrator")
    parent.__path__ = list(spec.submodule_search_locations)
    sys.modules["market_data_orchestrator"] = parent
    return importlib.import_module("market_data_orchestrator.pulse.observer")


observer_module = load_pulse_observer()
#: Known only at run time (loaded above), so untyped here.
PulseObserver: Any = observer_module.PulseObserver
config_module = importlib.import_module("market_data_orchestrator.pulse.config")
FEEDBACK = "telemetry.feedback"


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


class CountingObserver(PulseObserver):  # type: ignore[misc]
    """The real observer; also tallies each feedback event by coordinator and level."""

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.levels: defaultdict[str, Counter[str]] = defaultdict(Counter)

    async def _handle_event(self, stream: str, full_stream: str, env: Any) -> None:
        await super()._handle_event(stream, full_stream, env)
        if stream != FEEDBACK:
            return
        payload = env.payload
        self.levels[payload.coordinator_id][payload.level.value] += 1
        emit(
            event="observed",
            seen=self.metrics.get_consume_count(FEEDBACK, "seen"),
            errors=self.metrics.get_error_count(FEEDBACK),
            counts={coord: dict(levels) for coord, levels in self.levels.items()},
            coordinator_id=payload.coordinator_id,
            level=payload.level.value,
            headers=dict(env.meta.headers),
            schema_id=env.meta.schema_id,
        )


async def group_exists(client: aioredis.Redis, key: str, group: str) -> bool:
    try:
        groups = await client.xinfo_groups(key)
    except Exception:  # the key does not exist yet
        return False
    return any(entry["name"] == group for entry in groups)


async def main() -> int:
    cfg = config_module.PulseConfig()
    if not cfg.is_redis:
        emit(event="stopped", error=f"EVENT_BUS_BACKEND is {cfg.backend!r}, not 'redis'")
        return 2
    observer = CountingObserver(cfg)
    key = f"{observer.bus.namespace}:{cfg.ns}.{FEEDBACK}"
    await observer.start(consumer_name="orchestrator-test")
    watch = next(task for task in observer._tasks if task.get_name().endswith(FEEDBACK))
    client = aioredis.Redis.from_url(cfg.redis_url, decode_responses=True)
    try:
        while not await group_exists(client, key, observer_module.GROUP):
            if watch.done():
                break
            await asyncio.sleep(0.02)
        if not watch.done():
            emit(event="ready", key=key, group=observer_module.GROUP, redis_url=cfg.redis_url)
        # The observer logs and swallows its watch task's errors: report the end instead.
        await asyncio.wait([watch])
        emit(event="stopped", errors=observer.metrics.get_error_count(FEEDBACK))
        return 1
    finally:
        await observer.stop()
        await client.aclose()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
