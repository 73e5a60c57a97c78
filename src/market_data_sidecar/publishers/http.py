"""HTTP targets: one POST per event, signed as Standard Webhooks (standardwebhooks.com).

Body: the flat JSON the store's broadcaster sends (Core `FeedbackEvent` fields plus
`reason`). Headers: `webhook-id` (the event id, stable across retries, for receivers to
de-duplicate), `webhook-timestamp` (unix seconds of this attempt) and, with a signing
secret, `webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`. A
`whsec_<base64>` secret is used as the spec says (the key is the decoded part); any
other secret is used as its UTF-8 bytes.

Outcome of an attempt: 2xx delivered; 408, 429, 5xx (but 508 Loop Detected), timeouts and
connection errors retried (honouring `Retry-After`); 410 disables the target; anything
else is dropped.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import aiohttp

from market_data_sidecar import __version__
from market_data_sidecar.feedback.delivery import DeliveryError, Publisher, encoder
from market_data_sidecar.feedback.model import Feedback
from market_data_sidecar.settings import HttpTargetSettings, signing_key

#: Response bodies are not used; reading a little lets the connection be reused.
_RESPONSE_READ_LIMIT = 64 * 1024
_RETRYABLE_STATUSES = frozenset({408, 429})
#: 508 Loop Detected: a sidecar's intake refused what this one sent (the target points back
#: at it). Sending it again loops again.
_LOOP_DETECTED = 508


class HttpPublisher(Publisher):
    """POSTs each event to one webhook URL over a keep-alive session."""

    def __init__(self, target: HttpTargetSettings) -> None:
        super().__init__(target.label)
        self.target = target
        self._url = str(target.url)
        self._key = signing_key(target.secret.get_secret_value()) if target.secret else None
        self._timeout = aiohttp.ClientTimeout(total=target.timeout)
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"HttpPublisher({self.name!r})"  # never the URL: it may hold credentials

    async def start(self) -> None:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                headers={"User-Agent": f"market-data-sidecar/{__version__}"},
            )

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def deliver(self, batch: Sequence[Feedback]) -> None:
        for feedback in batch:
            await self._post(feedback)

    async def _post(self, feedback: Feedback) -> None:
        if self._session is None or self._session.closed:
            await self.start()
        assert self._session is not None
        body = _body(feedback)
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "webhook-id": feedback.id,
            "webhook-timestamp": timestamp,
        }
        if self._key is not None:
            headers["webhook-signature"] = sign(self._key, feedback.id, timestamp, body)
        try:
            async with self._session.post(
                self._url, data=body, headers=headers, allow_redirects=False
            ) as response:
                await response.content.read(_RESPONSE_READ_LIMIT)
                status, retry_after = response.status, response.headers.get("Retry-After")
        except TimeoutError:
            raise DeliveryError(
                "timeout", detail=f"no answer within {self.target.timeout:g}s"
            ) from None
        except aiohttp.ClientError as exc:
            raise _connection_error(exc) from None
        if 200 <= status < 300:
            return
        raise _status_error(status, retry_after)


@encoder
def _body(feedback: Feedback) -> bytes:
    return json.dumps(feedback.wire(), separators=(",", ":")).encode()


def sign(key: bytes, message_id: str, timestamp: str, body: bytes) -> str:
    """The Standard Webhooks `webhook-signature` value for one message."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def _status_error(status: int, retry_after: str | None) -> DeliveryError:
    reason = f"http_{status}"
    if status == 410:
        return DeliveryError(reason, retryable=False, disable=True)
    if status == _LOOP_DETECTED:
        return DeliveryError(reason, retryable=False)
    if status in _RETRYABLE_STATUSES or status >= 500:
        return DeliveryError(reason, retry_after=parse_retry_after(retry_after))
    # Other 4xx (and redirects, which a webhook endpoint has no business sending):
    # sending the same event again cannot succeed.
    return DeliveryError(reason, retryable=False)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from `Retry-After`: delta-seconds or an HTTP-date (RFC 9110)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = datetime.now(UTC).timestamp() if now is None else now
    return max(when.timestamp() - current, 0.0)


def _connection_error(exc: aiohttp.ClientError) -> DeliveryError:
    """`connection`, with what went wrong (never the URL: it may hold credentials)."""
    if isinstance(exc, aiohttp.ClientConnectorError) and exc.os_error.errno:
        detail = os.strerror(exc.os_error.errno)  # the OS's message names the address
    else:
        detail = type(exc).__name__
    return DeliveryError("connection", detail=detail)
