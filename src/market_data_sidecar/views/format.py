"""Formatting shared by the terminal and the HTML views: numbers, times and text that
render whatever a sidecar answered (an absurd timestamp or ratio prints as text, never
raises; no lone surrogate reaches an encoder, no control character a terminal)."""

from __future__ import annotations

import math
import re
import time
from datetime import UTC, datetime

#: Ages beyond this show the time instead of a count.
LONG_AGO = 7 * 86400


def age(ts: float | None) -> str:
    """`3s ago`, `12 min ago`, `5 h ago`; the time itself beyond a week or for a clock
    far ahead (never "0s ago" for a time in the future)."""
    if ts is None:
        return "?"
    seconds = time.time() - ts
    if seconds < -60 or seconds >= LONG_AGO:
        return f"at {timestamp(ts)}"
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.0f} h ago"


def clock(ts: float | None) -> str:
    """The local time of day, for a terminal: `14:03:27`."""
    if ts is None:
        return "?"
    try:
        return datetime.fromtimestamp(ts, UTC).astimezone().strftime("%H:%M:%S")
    except (OverflowError, OSError, ValueError):  # before year 1 or after 9999
        return f"ts {ts:.6g}"


def timestamp(ts: float | None) -> str:
    """The full time in UTC, for the page and far ages: `2026-12-02 14:03:27 UTC`."""
    if ts is None:
        return "-"
    try:
        return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):  # before year 1 or after 9999
        return f"ts {ts:.6g}"


def num(value: int | None) -> str:
    return "-" if value is None else count(value)


def percent_text(value: str) -> str:
    """A ratio given as text (`"0.25"`) as `25.0%`; other text unchanged."""
    try:
        return percent(float(value), digits=1)
    except ValueError:
        return value


#: What must not reach a terminal or an encoder: C0/C1 controls (escape sequences), the
#: bidirectional overrides (text that reads differently than it sorts), lone surrogates.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_WHITESPACE = {"\t": " ", "\n": " ", "\r": " "}
#: Longest text kept from one value: the sidecar's own values are far shorter.
MAX_TEXT = 4096


def printable(text: str) -> str:
    """`text` safe for any terminal and any UTF-8 encoder: line breaks and tabs become
    spaces, other unprintable characters their `\\xNN` / `\\uNNNN` escape."""
    if len(text) > MAX_TEXT:
        text = text[: MAX_TEXT - 1] + "…"
    if text.isascii() and text.isprintable():
        return text
    return _UNPRINTABLE.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _WHITESPACE:
        return _WHITESPACE[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def percent(ratio: float | None, *, digits: int = 0) -> str:
    """`85%` for 0.85; `-` for None; a ratio beyond 1,000,000% as `>999999%`, so a huge
    queue size cannot stretch a column."""
    if ratio is None or math.isnan(ratio):
        return "-"
    if abs(ratio) >= 10_000:
        return ">999999%" if ratio > 0 else "<-999999%"
    return f"{ratio:.{digits}%}"


def counted(value: int, noun: str) -> str:
    """`1 member`, `2 members`: a count and its noun, plural unless one."""
    return f"{count(value)} {noun}{'' if value == 1 else 's'}"


def count(value: int) -> str:
    """An integer as digits, or as `1.23e45` beyond 15 digits: a poisoned queue depth in
    the store's metrics must not stretch a column (and `str` refuses 4300 digits)."""
    digits = str(abs(value)) if value.bit_length() < 14_000 else ""
    if digits and len(digits) <= 15:
        return str(value)
    sign = "-" if value < 0 else ""
    if not digits:
        return f"{sign}huge"
    return f"{sign}{digits[0]}.{digits[1:3]}e{len(digits) - 1}"
