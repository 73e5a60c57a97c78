"""`POST /feedback` bodies -> Core `FeedbackEvent`s (+ reason), or a rejection that says why.

Accepts Core `FeedbackEvent` JSON and the store's broadcaster payload (no `ts`, no
`source`, with `reason` and `utilization`): a missing `ts` is the time received, a
missing `source` is Core's default `store`, `reason` and `utilization` (as the store
computed it; when absent, relayed as `queue_size / capacity`) ride beside the event. One object
or an array; an array with any invalid element is rejected whole. Fields are validated
by Core's model in strict mode, so `"850"` or `true` is not a queue size.

What is accepted is what `bounds` allows, the one rule for every event whatever its
source (ids, counts, `ts`, `utilization`); `reason` is valid Unicode, at most
`MAX_REASON_LENGTH` characters.

The intake belongs to the pod: without a token only loopback peers may post (403
otherwise); with one, any peer that presents it.

No loops: an event this process itself sent (its delivery id in the `webhook-id` header,
which every webhook of the sidecar carries) is refused with 508 Loop Detected. A target
pointed back at the intake (the store's `MDS_FB_HTTP_ENDPOINT` copied into
`SIDECAR_TARGETS`) would otherwise turn one POST into an endless stream of deliveries. HTTP
is the only way into the intake; pub/sub messages and stream entries, which carry the same
id in other places, never reach it unless someone's own bridge posts them.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import math
import time
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from loguru import logger
from market_data_core.telemetry import BackpressureLevel, FeedbackEvent
from pydantic import ValidationError

from market_data_sidecar.feedback import bounds
from market_data_sidecar.feedback.bounds import OutOfBounds
from market_data_sidecar.feedback.model import ID_PREFIX, Feedback
from market_data_sidecar.logs import ThrottledLog
from market_data_sidecar.metrics import Metrics

MAX_REASON_LENGTH = 1024
#: Refusals of non-loopback peers are logged at most once per this many seconds: a
#: scanner on the pod network must not fill the log.
FORBIDDEN_LOG_INTERVAL = 60.0

_CORE_FIELDS = tuple(FeedbackEvent.model_fields)
#: The header Standard Webhooks carry the delivery id in.
WEBHOOK_ID = "webhook-id"
_LEVEL_CHOICES = "Input should be one of " + ", ".join(repr(lvl.value) for lvl in BackpressureLevel)


class Rejected(Exception):
    """A request the intake refuses: an HTTP status, a metric outcome and a message."""

    def __init__(
        self,
        status: int,
        outcome: str,
        message: str,
        *,
        index: int | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.outcome = outcome
        self.message = message
        self.index = index
        self.field = field

    @property
    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.message}
        if self.index is not None:
            body["index"] = self.index
        if self.field is not None:
            body["field"] = self.field
        return body

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="feedback"'} if self.status == 401 else {}


class Intake:
    """Checks and decodes feedback requests; counts every outcome."""

    def __init__(
        self,
        metrics: Metrics,
        *,
        token: str | None,
        max_body_bytes: int,
        max_events: int,
    ) -> None:
        self._metrics = metrics
        self._token = token.encode() if token else None
        self.max_body_bytes = max_body_bytes
        self.max_events = max_events
        self._forbidden_log = ThrottledLog(FORBIDDEN_LOG_INTERVAL)

    @property
    def protected(self) -> bool:
        """A bearer token is required."""
        return self._token is not None

    def admit(self, headers: Mapping[str, str], *, peer: str | None) -> None:
        """Check what is known before reading the body: who may post (a loopback `peer`
        without a token, the token with one), declared size, media type. First, whether this
        process sent it: a loop is named as one whoever the peer is."""
        if sent_here(headers.get(WEBHOOK_ID)):
            raise self.looped(f"the {WEBHOOK_ID} header")
        if self._token is None:
            if not is_loopback(peer):
                raise self._forbidden(peer)
        else:
            scheme, _, given = headers.get("Authorization", "").partition(" ")
            # compare_digest: the time taken must not reveal how much of the token matched.
            # aiohttp decodes header bytes that are not UTF-8 as surrogates (surrogateescape):
            # encoding them back the same way compares the bytes sent, and cannot raise.
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                given.strip().encode("utf-8", "surrogateescape"), self._token
            ):
                raise self.reject(401, "unauthorized", "missing or wrong bearer token")
        length = headers.get("Content-Length", "")
        if length.isdigit() and int(length) > self.max_body_bytes:
            raise self.too_large()
        media_type = headers.get("Content-Type", "").partition(";")[0].strip().lower()
        if media_type != "application/json" and not media_type.endswith("+json"):
            raise self.reject(
                415,
                "unsupported_media_type",
                f"expected Content-Type application/json, got {media_type or 'none'!r}"[:200],
            )

    def _forbidden(self, peer: str | None) -> Rejected:
        """403, counted every time but logged at most once per `FORBIDDEN_LOG_INTERVAL`."""
        self._metrics.feedback_received.labels("forbidden").inc()
        if count := self._forbidden_log.note("forbidden"):
            more = count - 1
            logger.warning(
                "feedback rejected (403 forbidden) from {}: without SIDECAR_TOKEN only "
                "loopback peers may post{}",
                peer or "an unknown peer",
                f" ({more} more since the last such line)" if more else "",
            )
        return Rejected(
            403,
            "forbidden",
            "feedback is accepted from loopback only; set SIDECAR_TOKEN to accept other peers",
        )

    def looped(self, where: str) -> Rejected:
        """508: this process sent the event; counted, and logged once per interval."""
        return self.reject(
            508,
            "loop",
            f"this sidecar sent this event ({where} is one of its delivery ids): a target "
            "in SIDECAR_TARGETS points at this sidecar's own /feedback",
        )

    def too_large(self) -> Rejected:
        return self.reject(413, "too_large", f"body exceeds {self.max_body_bytes} bytes")

    def decode(self, body: bytes) -> list[Feedback]:
        """The events in `body`, all valid, or `Rejected`; counts what it accepts."""
        try:
            document = json.loads(body, parse_constant=_no_constant, parse_float=_finite_float)
        except RecursionError:
            raise self.reject(400, "malformed", "malformed JSON: nested too deeply") from None
        except UnicodeDecodeError:
            raise self.reject(400, "malformed", "malformed JSON: not valid UTF-8") from None
        except ValueError as exc:
            raise self.reject(400, "malformed", f"malformed JSON: {exc}") from None
        if isinstance(document, dict):
            elements, single = [document], True
        elif isinstance(document, list):
            elements, single = document, False
        else:
            raise self.reject(422, "invalid", "expected a JSON object or an array of objects")
        if len(elements) > self.max_events:
            raise self.reject(
                413,
                "too_many_events",
                f"{len(elements)} events exceed the limit of {self.max_events} per request",
                count=len(elements),
            )
        received_ts, received_at = time.time(), time.monotonic()
        accepted = []
        for index, element in enumerate(elements):
            try:
                accepted.append(_feedback(element, received_ts, received_at))
            except (_Invalid, OutOfBounds) as invalid:
                where = "" if single else f" at index {index}"
                what = f"{invalid.field}: {invalid.message}" if invalid.field else invalid.message
                raise self.reject(
                    422,
                    "invalid",
                    f"invalid feedback event{where}: {what}",
                    index=None if single else index,
                    field=invalid.field,
                    count=len(elements),
                ) from None
        self._metrics.feedback_received.labels("accepted").inc(len(accepted))
        return accepted

    def reject(
        self,
        status: int,
        outcome: str,
        message: str,
        *,
        index: int | None = None,
        field: str | None = None,
        count: int = 1,
    ) -> Rejected:
        """Count a rejection, and log it at most once per outcome per interval with the
        count (never the body or headers: they may hold secrets). A client posting bad
        events in a loop once wrote a line per request."""
        self._metrics.feedback_received.labels(outcome).inc(max(count, 1))
        if folded := self._forbidden_log.note(outcome):
            logger.info(
                "feedback rejected ({} {}): {}; {} since the last such line",
                status,
                outcome,
                message,
                folded,
            )
        return Rejected(status, outcome, message, index=index, field=field)


class _Invalid(Exception):
    """A malformed event (the intake's own rules); `bounds.OutOfBounds` is the other kind
    of invalid event, answered alike."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def sent_here(delivery_id: object) -> bool:
    """Whether `delivery_id` is one of this process's own (`model.new_event_id`)."""
    return isinstance(delivery_id, str) and delivery_id.startswith(ID_PREFIX)


@lru_cache(maxsize=1024)
def is_loopback(peer: str | None) -> bool:
    """Whether `peer` (aiohttp's `request.remote`: the socket's, never a header's) is in
    127.0.0.0/8 or ::1, IPv4-mapped (`::ffff:127.0.0.1`) included. Unknown peers are not."""
    if not peer:
        return False
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _feedback(element: Any, received_ts: float, received_at: float) -> Feedback:
    if not isinstance(element, dict):
        raise _Invalid(None, "expected a JSON object")
    reason = element.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise _Invalid("reason", "must be a string or null")
    if reason is not None and len(reason) > MAX_REASON_LENGTH:
        raise _Invalid("reason", f"longer than {MAX_REASON_LENGTH} characters")
    if reason is not None:
        bounds.check_encodable("reason", reason)
    utilization = _utilization(element)
    fields = {name: element[name] for name in _CORE_FIELDS if name in element}
    fields.setdefault("ts", received_ts)
    level = fields.get("level")
    if isinstance(level, str):
        # Strict mode takes only enum members: the wire's string is converted here.
        try:
            fields["level"] = BackpressureLevel(level)
        except ValueError:
            raise _Invalid("level", _LEVEL_CHOICES) from None
    try:
        # Strict: no number hides in a string, a boolean or a float.
        event = FeedbackEvent.model_validate(fields, strict=True)
    except ValidationError as exc:
        error = exc.errors(include_input=False, include_url=False)[0]
        field = ".".join(str(part) for part in error["loc"]) or None
        raise _Invalid(field, error["msg"]) from None
    bounds.check_ts(event.ts)
    bounds.check_id("source", event.source)
    bounds.check_queue(event.coordinator_id, event.queue_size, event.capacity)
    return Feedback(event, reason=reason, given_utilization=utilization, received_at=received_at)


def _utilization(element: dict[str, Any]) -> float | None:
    """The store's `utilization`, validated: a finite number 0 to `MAX_UTILIZATION`, or
    None when absent or null."""
    value = element.get("utilization")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid("utilization", "must be a number or null")
    bounds.check_utilization(value)
    return float(value)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number out of range: {text[:20]}")
    return value
