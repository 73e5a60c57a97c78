"""Loguru set-up: readable lines on a terminal, JSON lines for log collectors.

Standard-library logging (aiohttp, psycopg, asyncio) is routed through loguru so every
line has one format. Every message is escaped on its way to a sink (`escape_record`):
text from clients, the store or Redis reaches log lines at many call sites, and a
coordinator id holding a newline once forged a whole ERROR line.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from loguru import logger

if TYPE_CHECKING:
    from loguru import Message, Record

TEXT_FORMAT = (
    "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
    "<cyan>{name}</cyan> {message}"
)


#: Control characters (C0, DEL, C1) and lone surrogates: a line break forges a line, an
#: escape sequence rewrites a terminal, a surrogate cannot be written as UTF-8.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def escape(text: str) -> str:
    """`text` with control characters and lone surrogates as Python escapes (`\\n`,
    `\\x1b`, `\\udc80`); everything else, non-ASCII letters included, as it is."""
    if _UNSAFE.search(text) is None:
        return text  # the common case: one scan, no copy
    return _UNSAFE.sub(_escaped, text)


def _escaped(match: re.Match[str]) -> str:
    return match.group().encode("unicode_escape").decode("ascii")


def escape_record(record: Record) -> None:
    """Loguru patcher: runs after the message is formatted, before any sink, so no call
    site has to remember to escape what it logs."""
    record["message"] = escape(record["message"])


def configure_logging(fmt: str, level: str) -> None:
    logger.remove()
    logger.configure(patcher=escape_record)
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
