"""The bounds every relayed event meets, whatever its source.

One rule for the intake (`POST /feedback`) and for events synthesized from the store's
metrics (the queue check and the watermarks), so a target never receives from one path
what the other refuses. What is accepted, every target and view can encode (DESIGN.md,
"Hostile peers"):

- ids (`coordinator_id`, `source`) are 1 to `MAX_ID_LENGTH` characters of valid Unicode
  with no control characters: JSON's `"\\ud800"` decodes to a lone surrogate that no
  UTF-8 encoder (Redis, HTTP, the page) can write, and an id is a name, never a line
  break or an escape sequence for someone's terminal;
- `queue_size` is 0 to `MAX_COUNT`, `capacity` 1 to `MAX_COUNT` (2**53 - 1, the largest
  integer every JSON consumer holds exactly, RFC 7493; far inside int64);
- `ts` is unix seconds, `0 <= ts < MAX_TS` (1e11, the year 5138), and not `-0.0`: inside
  what `datetime.fromtimestamp` converts, while a millisecond timestamp sent by mistake
  (1.7e12) is refused instead of read as the far future;
- `utilization` is a finite number, 0 to `MAX_UTILIZATION`.
"""

from __future__ import annotations

import math
import re

#: Longest coordinator id or source: ids are short names in the store, and every
#: accepted coordinator id is kept in memory until restart.
MAX_ID_LENGTH = 256
#: Largest queue size or capacity: exact in every JSON consumer (RFC 7493 I-JSON).
MAX_COUNT = 2**53 - 1
#: `ts` must be below this (unix seconds; the year 5138).
MAX_TS = 1e11
#: A queue a thousand times over its capacity is a broken sender, not backpressure.
MAX_UTILIZATION = 1000.0

#: C0 and C1 control characters and DEL (Unicode category Cc).
_CONTROL_CHARACTERS = "\x00-\x1f\x7f-\x9f"
_CONTROL = re.compile(f"[{_CONTROL_CHARACTERS}]")
#: What an id may hold, as a JSON Schema pattern (the intake's OpenAPI document).
ID_PATTERN = f"^[^{_CONTROL_CHARACTERS}]*$"


class OutOfBounds(ValueError):
    """A field outside the bounds; `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def check_id(field: str, text: str) -> None:
    """`text` is 1 to `MAX_ID_LENGTH` characters, without control characters or lone
    surrogates."""
    if not 0 < len(text) <= MAX_ID_LENGTH:
        raise OutOfBounds(field, f"must be 1 to {MAX_ID_LENGTH} characters")
    if _CONTROL.search(text):
        raise OutOfBounds(field, "must not contain control characters")
    check_encodable(field, text)


def check_encodable(field: str, text: str) -> None:
    """Refuse lone surrogates: JSON escapes decode to them, and no UTF-8 encoder (a
    target's, a view's) can write them."""
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise OutOfBounds(field, "must be valid Unicode (no lone surrogates)") from None


def check_count(field: str, value: int, *, minimum: int) -> None:
    """`minimum <= value <= MAX_COUNT`."""
    if value > MAX_COUNT:
        raise OutOfBounds(field, f"must be at most {MAX_COUNT}")
    if value < minimum:
        raise OutOfBounds(field, f"must be at least {minimum}")


def check_ts(ts: float) -> None:
    """Unix seconds, `0 <= ts < MAX_TS`, and not `-0.0` (a sign no clock gives)."""
    if not 0 <= ts < MAX_TS or math.copysign(1.0, ts) < 0:  # NaN fails the first
        raise OutOfBounds("ts", f"must be unix seconds, 0 <= ts < {MAX_TS:.0e}")


def check_utilization(value: float) -> None:
    """A finite number, 0 to `MAX_UTILIZATION`."""
    if not 0 <= value <= MAX_UTILIZATION:  # NaN fails this too
        raise OutOfBounds("utilization", f"must be 0 to {MAX_UTILIZATION:g}")


def check_queue(coordinator_id: str, queue_size: int, capacity: int) -> None:
    """A coordinator's queue as an event carries it: id, both counts and their ratio."""
    check_id("coordinator_id", coordinator_id)
    check_count("queue_size", queue_size, minimum=0)
    check_count("capacity", capacity, minimum=1)
    if queue_size > capacity * MAX_UTILIZATION:
        # The utilization it implies: a broken sender, not backpressure.
        raise OutOfBounds("queue_size", f"must be at most {MAX_UTILIZATION:g} x capacity")


def queue_problem(coordinator_id: str, queue_size: int, capacity: int) -> str | None:
    """Why a polled queue cannot become an event, or None: for sources that skip and count
    rather than answer a client."""
    try:
        check_queue(coordinator_id, queue_size, capacity)
    except OutOfBounds as exc:
        return exc.field
    return None
