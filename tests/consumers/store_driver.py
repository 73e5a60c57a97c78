"""market-data-store's real `HttpFeedbackBroadcaster`, sending feedback as the store does.

Run with the consumers venv's python (`.ci/consumers.sh`) and the sidecar's URL. Reads
commands on stdin, one a line: `LEVEL [QUEUE_SIZE [COORDINATOR_ID [REASON]]]`. Each is a
store `FeedbackEvent` published on the store's own in-process `feedback_bus()`, whose
subscriber the broadcaster is — the path a store coordinator's events take. The bus
swallows subscriber errors, so the broadcaster's log records are watched instead.

Prints JSON lines on stdout: `ready`, then per command `sent` (the broadcaster got a
response below 400) or `failed` (it gave up, or answered 4xx/5xx).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from loguru import logger
from market_data_core.telemetry import BackpressureLevel
from market_data_store.coordinator import FeedbackEvent, HttpFeedbackBroadcaster, feedback_bus

#: Queue depths that match each level for the default capacity and watermarks (50%/80%).
DEFAULT_DEPTHS = {"ok": 100, "soft": 600, "hard": 850}


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url", help="the sidecar's POST /feedback URL")
    parser.add_argument("--capacity", type=int, default=1000)
    parser.add_argument("--coordinator", default="bars-coord")
    args = parser.parse_args()

    problems: list[str] = []
    logger.remove()
    logger.add(sys.stderr, level="DEBUG")
    logger.add(lambda message: problems.append(str(message).strip()), level="WARNING")

    broadcaster = HttpFeedbackBroadcaster(args.url, max_retries=3, backoff_base=0.1)
    await broadcaster.start()
    if not broadcaster._started:
        emit(event="failed", error="the broadcaster did not start (httpx missing?)")
        return 2
    emit(event="ready", url=args.url)
    loop = asyncio.get_running_loop()
    try:
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            words = line.split()
            if not words:
                continue
            level = BackpressureLevel(words[0])
            depth = int(words[1]) if len(words) > 1 else DEFAULT_DEPTHS[level.value]
            coordinator = words[2] if len(words) > 2 else args.coordinator
            reason = words[3] if len(words) > 3 else None
            event = FeedbackEvent.create(coordinator, depth, args.capacity, level, reason)
            problems.clear()
            await feedback_bus().publish(event)
            fields = {"coordinator_id": coordinator, "level": level.value, "queue_size": depth}
            if problems:
                emit(event="failed", problems=problems, **fields)
            else:
                emit(event="sent", **fields)
    finally:
        await broadcaster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
