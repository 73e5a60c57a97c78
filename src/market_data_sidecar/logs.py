"""Loguru set-up: readable lines on a terminal, JSON lines for log collectors.

Standard-library logging (aiohttp, psycopg, asyncio) is routed through loguru so every
line has one format.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from loguru import logger

if TYPE_CHECKING:
    from loguru import Message

TEXT_FORMAT = (
    "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
    "<cyan>{name}</cyan> {message}"
)


def configure_logging(fmt: str = "text", level: str = "INFO") -> None:
    logger.remove()
    if fmt == "json":
        logger.add(_json_sink, level=level, format="{message}")
    else:
        # diagnose=False: loguru would print every local variable of a traceback,
        # tokens and connection strings included.
        logger.add(
            sys.stderr,
            level=level,
            format=TEXT_FORMAT,
            colorize=None,
            backtrace=False,
            diagnose=False,
        )
    logging.basicConfig(handlers=[_InterceptHandler()], level=logging.WARNING, force=True)


def _json_sink(message: Message) -> None:
    record = message.record
    line: dict[str, Any] = {
        "ts": record["time"].isoformat(timespec="milliseconds"),
        "level": record["level"].name,
        "logger": record["name"],
        "message": record["message"],
    }
    line.update({k: str(v) for k, v in record["extra"].items()})
    if record["exception"] is not None:
        line["exception"] = "".join(traceback.format_exception(*record["exception"]))
    sys.stderr.write(json.dumps(line) + "\n")


class _InterceptHandler(logging.Handler):
    """The loguru recipe for standard logging."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(exception=record.exc_info, depth=6).log(level, record.getMessage())


class ThrottledLog:
    """At most one line per kind per `interval`, saying how many were folded into it.

    A flood of bad requests must not become a flood of log lines: the counter carries the
    rate, the log only says that it is happening."""

    def __init__(self, interval: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._logged_at: dict[str, float] = {}
        self._pending: dict[str, int] = {}

    def note(self, kind: str, count: int = 1) -> int:
        """Count `count` of `kind`; the number to report (these and those folded since the
        last line) if a line is due now, else 0."""
        self._pending[kind] = self._pending.get(kind, 0) + count
        now = self._clock()
        last = self._logged_at.get(kind)
        if last is not None and now - last < self.interval:
            return 0
        self._logged_at[kind] = now
        return self._pending.pop(kind)
