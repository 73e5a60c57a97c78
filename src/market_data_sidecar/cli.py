"""`market-data-sidecar`: run the sidecar, check the store's dependencies once, read a
running sidecar's status, or try everything locally with the demo."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiohttp import web
from loguru import logger
from market_data_core.telemetry import HealthStatus

from market_data_sidecar import __version__
from market_data_sidecar.logs import configure_logging
from market_data_sidecar.server.connections import BoundedRunner
from market_data_sidecar.server.faults import FAULTS, install_accept_error_log
from market_data_sidecar.server.probes import MONITOR
from market_data_sidecar.settings import (
    ConfigError,
    Settings,
    load_settings,
    unknown_variables,
)
from market_data_sidecar.views.command import EXIT_CODES, local_url, show_status
from market_data_sidecar.wiring import build_app, wire_checks

EXIT_CONFIG = 2


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command: str = args.command
    if command == "status":
        # Reading another sidecar must work whatever this environment's settings say.
        return show_status(args.url or _local_url(), history=args.history)
    try:
        settings = load_settings(args.config, **_overrides(args))
    except ConfigError as exc:
        print(f"market-data-sidecar: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if command == "demo":
        from market_data_sidecar.demo.runner import run_demo

        return asyncio.run(run_demo(settings, duration=args.duration, redis_url=args.redis_url))
    # `check` prints a table: only problems belong beside it on stderr.
    quiet = command == "check" and args.log_level is None
    configure_logging(settings.log_format, "WARNING" if quiet else settings.log_level)
    for warning in unknown_variables(os.environ):
        logger.warning(warning)
    if command == "run":
        return asyncio.run(serve(settings))
    if command == "check":
        return asyncio.run(check_once(settings, as_json=args.json))
    raise AssertionError(command)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="market-data-sidecar",
        description="Health probes and feedback relay beside a market-data-store pod. "
        "Every setting is also read from SIDECAR_<NAME> environment variables.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("run", help="serve probes, metrics and the feedback relay")
    check = commands.add_parser(
        "check", help="run every check once; exit 0 healthy, 1 degraded, 2 unhealthy"
    )
    check.add_argument("--json", action="store_true", help="print the HealthStatus as JSON")
    status = commands.add_parser(
        "status",
        help="show a running sidecar's health and relay state; "
        "exit 0 healthy, 1 degraded, 2 unhealthy, 3 unreachable",
    )
    status.add_argument(
        "--url", help="the sidecar's base URL (default: http://127.0.0.1:SIDECAR_PORT)"
    )
    status.add_argument(
        "--history",
        action="store_true",
        help="also print what changed within the last hour (GET /history)",
    )
    demo = commands.add_parser(
        "demo", help="run a sidecar with a simulated store and local orchestrators"
    )
    demo.add_argument(
        "--duration", type=float, metavar="SECONDS", help="stop by itself after SECONDS"
    )
    demo.add_argument(
        "--redis-url",
        default=os.environ.get("SIDECAR_DEMO_REDIS_URL") or "redis://127.0.0.1:6379/0",
        help="Redis for the stream target, if reachable (SIDECAR_DEMO_REDIS_URL)",
    )
    for sub in (run, check, demo):
        _add_setting_flags(sub)
    return parser


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="JSON or TOML file of settings")
    parser.add_argument("--host", help="address to listen on (SIDECAR_HOST)")
    parser.add_argument("--port", help="port to listen on (SIDECAR_PORT)")
    parser.add_argument("--log-format", choices=["text", "json"], help="SIDECAR_LOG_FORMAT")
    parser.add_argument("--log-level", help="SIDECAR_LOG_LEVEL")
    parser.add_argument("--store-metrics-url", help="SIDECAR_STORE_METRICS_URL")
    parser.add_argument(
        "--disk-path", action="append", dest="disk_paths", help="SIDECAR_DISK_PATHS (repeatable)"
    )
    parser.add_argument("--check-interval", help="seconds (SIDECAR_CHECK_INTERVAL)")
    parser.add_argument("--check-timeout", help="seconds (SIDECAR_CHECK_TIMEOUT)")


_SETTING_FLAGS = (
    "host",
    "port",
    "log_format",
    "log_level",
    "store_metrics_url",
    "disk_paths",
    "check_interval",
    "check_timeout",
)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, name, None) for name in _SETTING_FLAGS}


def _local_url() -> str:
    """This pod's sidecar: where the settings say it listens if they load, else the default."""
    try:
        settings = load_settings()
    except ConfigError:
        fields = Settings.model_fields
        return local_url(fields["host"].default, fields["port"].default)
    return local_url(settings.host, settings.port)


# -- run -------------------------------------------------------------------------------------


async def serve(settings: Settings) -> int:
    """Serve until SIGTERM/SIGINT, then shut down in the order Kubernetes needs."""
    try:
        app = build_app(settings)
    except ConfigError as exc:  # a target the installed extras cannot serve
        print(f"market-data-sidecar: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    # Bounded: connections, header and body deadlines, idle keep-alive (server/connections.py).
    runner = BoundedRunner(
        app, access_log=None, handle_signals=False, shutdown_timeout=settings.drain_timeout
    )
    install_accept_error_log(asyncio.get_running_loop(), app[FAULTS])
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.host, settings.port).start()
    except OSError as exc:
        logger.error("cannot listen on {}:{}: {}", settings.host, settings.port, exc.strerror)
        await runner.cleanup()
        return 1
    logger.info(
        "market-data-sidecar {} listening on {}:{}", __version__, settings.host, settings.port
    )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()

    # Unready first, so endpoints drop the pod while it still serves; then stop intake
    # and let the relay drain (its cleanup context owns the deadline).
    app[MONITOR].begin_shutdown()
    logger.info("shutting down: unready for {:g}s, then draining", settings.shutdown_grace)
    await asyncio.sleep(settings.shutdown_grace)
    await runner.cleanup()
    logger.info("stopped")
    return 0


# -- check -----------------------------------------------------------------------------------


async def check_once(settings: Settings, *, as_json: bool) -> int:
    """One round of every check, printed; the exit code is the aggregate state."""
    monitor = wire_checks(settings)
    try:
        status = await monitor.run_once()
    finally:
        await monitor.stop()
    print(status.model_dump_json(indent=2) if as_json else render_table(status))
    return EXIT_CODES[status.state]


def render_table(status: HealthStatus) -> str:
    """Components and their details, one `key = value` per line."""
    width = max([len(c.name) for c in status.components] + [9])
    lines = [f"{status.service} {status.version}: {status.state}", ""]
    lines.append(f"{'COMPONENT':<{width}}  {'STATE':<9}  DETAILS")
    for component in status.components:
        details = sorted(component.details.items()) or [("", "")]
        for index, (key, value) in enumerate(details):
            name, state = (component.name, component.state) if index == 0 else ("", "")
            detail = f"{key} = {value}" if key else ""
            lines.append(f"{name:<{width}}  {state:<9}  {detail}".rstrip())
    return "\n".join(lines)
