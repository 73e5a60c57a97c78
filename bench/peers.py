"""The figures the sidecar is compared with, each run in a process of its own.

`python -m bench.peers store-broadcast '<json>'`: the store's own fan-out, one
`HttpFeedbackBroadcaster` per orchestrator on its in-process `feedback_bus()`, events
emitted one after another as the store's queues emit them (awaiting the bus).

`python -m bench.peers core-stream '<json>'`: a loop of Core's `RedisStreamsBus.publish`.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any


async def store_broadcast(config: dict[str, Any]) -> dict[str, Any]:
    from loguru import logger
    from market_data_core.telemetry import BackpressureLevel
    from market_data_store.coordinator.feedback import FeedbackEvent, feedback_bus
    from market_data_store.coordinator.http_broadcast import HttpFeedbackBroadcaster

    logger.remove()  # its error lines for the hanging orchestrator are expected
    broadcasters = [HttpFeedbackBroadcaster(url) for url in config["endpoints"]]
    for broadcaster in broadcasters:
        await broadcaster.start()
    rate, count = float(config["rate"]), int(config["count"])
    coordinators = int(config.get("coordinators", 1))
    deadline = time.monotonic() + float(config["deadline"])
    sent_at: list[float] = []
    blocked: list[float] = []
    start = time.monotonic()
    try:
        for index in range(count):
            delay = start + index / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if time.monotonic() > deadline:
                break
            event = FeedbackEvent.create(
                coordinator_id=f"bench-coord-{index % coordinators}",
                queue_size=850,
                capacity=1000,
                level=BackpressureLevel.soft,
                reason=f"seq:{index}",
            )
            began = time.monotonic()
            sent_at.append(began)
            # As the store's BoundedQueue does: the bus awaits each subscriber in turn.
            await feedback_bus().publish(event)
            blocked.append(time.monotonic() - began)
    finally:
        for broadcaster in broadcasters:
            await broadcaster.stop()
    return {
        "sent": len(sent_at),
        "sent_at": sent_at,
        "blocked": blocked,
        "elapsed": time.monotonic() - start,
    }


async def core_stream(config: dict[str, Any]) -> dict[str, Any]:
    from market_data_core.events import RedisStreamsBus
    from market_data_core.telemetry import FeedbackEvent

    bus = RedisStreamsBus(config["url"], namespace=config["namespace"])
    count = int(config["count"])
    events = [
        FeedbackEvent(
            coordinator_id=f"bench-coord-{i % 10}",
            queue_size=850,
            capacity=1000,
            level="soft",
            ts=time.time(),
        )
        for i in range(count)
    ]
    await bus.publish("telemetry.feedback", events[0])  # connect outside the clock
    start = time.monotonic()
    async with asyncio.timeout(float(config.get("deadline", 120))):
        for event in events[1:]:
            await bus.publish("telemetry.feedback", event, key=event.coordinator_id)
    elapsed = time.monotonic() - start
    await bus.close()
    return {"count": count - 1, "elapsed": elapsed, "events_per_second": (count - 1) / elapsed}


def main() -> None:
    role, config = sys.argv[1], json.loads(sys.argv[2])
    runner = {"store-broadcast": store_broadcast, "core-stream": core_stream}[role]
    sys.stdout.write(json.dumps(asyncio.run(runner(config))))


if __name__ == "__main__":
    main()
