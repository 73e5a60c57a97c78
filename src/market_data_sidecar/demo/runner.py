"""Runs the demo: a real sidecar wired to the simulated store and the local orchestrators.

The sidecar is the real application (`wiring.build_app`) on its configured port; the
demo only chooses its store metrics URL, its targets and a faster check interval. The
live view is read over HTTP from the sidecar's `/healthz` and `/feedback`, exactly as
`market-data-sidecar status` reads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import shutil
import signal
import sys
import time
from collections import deque
from contextlib import AsyncExitStack
from typing import Any, TextIO

from loguru import logger

from market_data_sidecar.demo.fleet import PIPELINE_SCALE, fleet_lines
from market_data_sidecar.demo.listening import listening
from market_data_sidecar.demo.orchestrators import HttpReceiver, StreamConsumer, redis_reachable
from market_data_sidecar.demo.store import SimulatedStore, demo_queues
from market_data_sidecar.logs import configure_logging
from market_data_sidecar.server.probes import MONITOR
from market_data_sidecar.settings import ConfigError, Settings, load_settings
from market_data_sidecar.views.command import Unreachable, fetch_view, local_url
from market_data_sidecar.views.model import StatusView
from market_data_sidecar.views.terminal import CLEAR_SCREEN, render_lines, render_table
from market_data_sidecar.wiring import build_app

#: The view redraws this often on a terminal; plain lines are printed less often.
TERMINAL_REFRESH = 1.0
PLAIN_REFRESH = 2.0
#: Checks run this often in the demo (default 5 s), so the view moves.
DEMO_CHECK_INTERVAL = 1.0
LOG_LINES = 8


async def run_demo(
    settings: Settings,
    *,
    duration: float | None = None,
    redis_url: str = "redis://127.0.0.1:6379/0",
    out: TextIO = sys.stdout,
) -> int:
    """Run until `duration` has passed, Ctrl-C or SIGTERM; 0 when it ran, 1 or 2 if not."""
    interactive = out.isatty()
    recent: deque[str] = deque(maxlen=LOG_LINES)
    if interactive:
        # Logs would scroll the redrawn view away: they appear inside it instead.
        logger.remove()
        logger.add(lambda m: recent.append(str(m).rstrip()), level=settings.log_level,
                   format="{time:HH:mm:ss} {level: <7} {message}")  # fmt: skip
    else:
        configure_logging(settings.log_format, settings.log_level)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        return await _run(settings, duration, redis_url, _Screen(out, interactive, recent), stop)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _run(
    settings: Settings, duration: float | None, redis_url: str, screen: _Screen, stop: asyncio.Event
) -> int:
    http = HttpReceiver()
    redis_problem = await redis_reachable(redis_url)
    stream = None
    if redis_problem is None:
        stream = StreamConsumer(redis_url, namespace=f"mds-demo-{secrets.token_hex(3)}")
    # The producer follows the fleet's composite (the demo its one member) as the HTTP
    # orchestrator hears it, the moment each event is delivered, with or without Redis.
    # The same store with its producer at full rate runs beside it, so the end can say
    # what feedback saved.
    low, high = settings.queue_low_watermark, settings.queue_high_watermark
    store = SimulatedStore(
        demo_queues(),
        low_watermark=low,
        high_watermark=high,
        rate=lambda: PIPELINE_SCALE.get(http.level, 1.0),
    )
    without_feedback = SimulatedStore(demo_queues(), low_watermark=low, high_watermark=high)

    async with AsyncExitStack() as stack:
        store_url = await stack.enter_async_context(store.serving())
        receiver_url = await stack.enter_async_context(http.serving())
        if stream is not None:
            await stack.enter_async_context(stream.consuming())
        try:
            sidecar = demo_settings(settings, store_url, receiver_url, stream)
        except ConfigError as exc:
            print(f"market-data-sidecar: {exc}", file=sys.stderr)
            return 2
        base = local_url(sidecar.host, sidecar.port)
        screen.intro(sidecar, base, store_url, receiver_url, redis_url, redis_problem, stream)
        try:
            app = build_app(sidecar)
            await stack.enter_async_context(
                listening(app, sidecar.host, sidecar.port, shutdown_timeout=1.0)
            )
        except OSError as exc:
            print(
                f"market-data-sidecar: cannot listen on {sidecar.host}:{sidecar.port}: "
                f"{exc.strerror or exc} (choose another port with --port or SIDECAR_PORT)",
                file=sys.stderr,
            )
            return 1
        token = sidecar.token.get_secret_value() if sidecar.token else None
        await stack.enter_async_context(store.running(f"{base}/feedback", token))
        await stack.enter_async_context(without_feedback.running())

        started = time.monotonic()
        deadline = started + duration if duration is not None else math.inf
        # The first view once every check has answered, rather than "unhealthy: pending".
        monitor = app[MONITOR]
        first_round = min(deadline, started + 2 * sidecar.check_timeout + 1)
        while not monitor.first_round_done and time.monotonic() < first_round:
            await _pause(stop, 0.05)
        view: StatusView | None = None
        while True:
            view = await _current_view(base, http, stream) or view
            if view is not None:
                screen.view(view, time.monotonic() - started)
            remaining = deadline - time.monotonic()
            if stop.is_set() or remaining <= 0:
                break  # the view just shown has the final numbers
            await _pause(stop, min(screen.refresh, remaining))
    screen.summary(time.monotonic() - started, store, without_feedback, http, stream)
    return 0


def demo_settings(
    settings: Settings, store_url: str, receiver_url: str, stream: StreamConsumer | None
) -> Settings:
    """The user's settings, pointed at the simulated store and the local orchestrators."""
    targets: list[dict[str, Any]] = [
        {"kind": "http", "name": "orchestrator-http", "url": receiver_url, "timeout": 2.0}
    ]
    if stream is not None:
        targets.append(
            {
                "kind": "redis-stream",
                "name": "pipeline-stream",
                "url": stream.redis_url,
                "namespace": stream.namespace,
            }
        )
    capacities = {queue.coordinator_id: queue.capacity for queue in demo_queues()}
    current = settings.model_dump()
    current.update(
        store_metrics_url=store_url,
        queue_capacities=capacities,
        targets=targets,
        check_interval=min(settings.check_interval, DEMO_CHECK_INTERVAL),
        shutdown_grace=0.0,
        drain_timeout=min(settings.drain_timeout, 1.0),
    )
    return load_settings(**current)


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    """Sleep for `seconds`, or less when asked to stop."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def _current_view(
    base: str, http: HttpReceiver, stream: StreamConsumer | None
) -> StatusView | None:
    try:
        view = await fetch_view(base, deadline=2.0)
    except Unreachable as exc:
        logger.warning("{}", exc)
        return None
    receivers = [http.row()] + ([stream.row()] if stream is not None else [])
    return view.with_receivers(receivers)


class _Screen:
    """What the demo prints: a redrawn screen on a terminal, timestamped lines otherwise."""

    def __init__(self, out: TextIO, interactive: bool, recent: deque[str]) -> None:
        self.out = out
        self.interactive = interactive
        self.recent = recent
        self.header: list[str] = []

    @property
    def refresh(self) -> float:
        return TERMINAL_REFRESH if self.interactive else PLAIN_REFRESH

    def intro(
        self,
        settings: Settings,
        base: str,
        store_url: str,
        receiver_url: str,
        redis_url: str,
        redis_problem: str | None,
        stream: StreamConsumer | None,
    ) -> None:
        database = (
            "PostgreSQL from SIDECAR_DATABASE_URL"
            if settings.database_url is not None
            else "none (set SIDECAR_DATABASE_URL to check a PostgreSQL)"
        )
        if stream is not None:
            redis = f"stream {stream.key} at {redis_url}"
        else:
            redis = f"not reachable at {redis_url} ({redis_problem}): HTTP only"
        self.header = [
            "market-data-sidecar demo (Ctrl-C to stop)",
            f"  sidecar:       {base}/  (status page; also /healthz /feedback /metrics)",
            f"  store:         {store_url}  (simulated)",
            f"  orchestrator:  {receiver_url}",
            f"  redis:         {redis}",
            f"  database:      {database}",
            "  producer:      follows the fleet's composite as the orchestrator hears it",
            "                 (ok 1.0, soft 0.5, hard 0.0 of its rate), beside the same",
            "                 store with its producer at full rate",
        ]
        self._write("\n".join(self.header) + "\n")

    def view(self, view: StatusView, elapsed: float) -> None:
        fleet = fleet_lines(view.targets)
        if not self.interactive:
            stamp = f"[{elapsed:6.1f}s]"
            lines = [*render_lines(view), *fleet]
            self._write("".join(f"{stamp} {line}\n" for line in lines))
            return
        columns = shutil.get_terminal_size().columns
        header = [*self.header, f"  running for {elapsed:.0f}s", ""]
        log = ["", "LOG", *self.recent] if self.recent else []
        # The table fits itself (keeping colour codes whole); plain lines are cut.
        body = render_table(view, colour=True, width=columns)
        fleet = ["", *fleet] if fleet else []
        lines = [x[:columns] for x in header] + [body] + [x[:columns] for x in fleet + log]
        self._write(CLEAR_SCREEN + "\n".join(lines) + "\n")

    def summary(
        self,
        elapsed: float,
        store: SimulatedStore,
        without_feedback: SimulatedStore,
        http: HttpReceiver,
        stream: StreamConsumer | None,
    ) -> None:
        parts = [
            f"the store sent {store.counts.sent} events ({store.counts.accepted} accepted)",
            f"{http.name} received {http.received.count}",
        ]
        if stream is not None:
            parts.append(f"{stream.name} received {stream.received.count}")
        self._write(f"demo finished after {elapsed:.1f}s: " + "; ".join(parts) + "\n")
        self._write(
            f"items dropped: {store.dropped} with feedback, {without_feedback.dropped} without "
            "it (the same store, its producer at full rate)\n"
        )

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()
