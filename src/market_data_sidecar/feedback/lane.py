"""One target's lane: its buffer, its worker, its retries and circuit, and its record of
what was delivered, dropped and why. The router (`router.py`) holds one lane a target
and hands each of them every event; a lane knows nothing of the others.

A lane resyncs from the router's current state only when its buffer is empty, one batch
at a time, so a resync never displaces or delays what the store sent.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field

from loguru import logger

from market_data_sidecar.feedback.buffers import ConflatingBuffer, FifoBuffer, TargetBuffer
from market_data_sidecar.feedback.delivery import DeliveryError, EncodingError, Publisher
from market_data_sidecar.feedback.model import COMPOSITE_KEY, Feedback, Scope
from market_data_sidecar.feedback.retry import CIRCUIT_GAUGE, Backoff, CircuitBreaker, CircuitState
from market_data_sidecar.feedback.state import (
    LEVEL_SEVERITY,
    MAX_ERROR_LENGTH,
    CompositeState,
    TargetState,
    clip,
    composite_state,
)
from market_data_sidecar.logs import ThrottledLog
from market_data_sidecar.metrics import Metrics
from market_data_sidecar.redaction import first_line

#: Seconds between log lines about drops of one reason on one target.
DROP_LOG_INTERVAL = 10.0
#: The order a resync sends levels in: the most severe last.
RESYNC_ORDER = tuple(reversed(LEVEL_SEVERITY))


@dataclass(frozen=True)
class Target:
    """A publisher, and what the router needs to know about its target. The options have
    no default: a target's settings hold them, and wiring passes every one."""

    publisher: Publisher
    _: KW_ONLY
    kind: str
    #: The target's address fit to show: no user, password or query.
    endpoint: str
    #: Most undelivered events held; `latest` targets hold one per coordinator anyway.
    buffer: int
    #: `coordinator`: every coordinator's events; `pod` and `fleet`: the pod's composite
    #: (the fleet's publisher combines it with the other replicas' in Redis).
    scope: Scope


@dataclass(frozen=True)
class RetryPolicy:
    backoff: Backoff
    circuit_failures: int
    circuit_cooldown: float
    #: Seconds without a delivery, while attempts fail or are refused, after which the
    #: target is reported as failing (the `feedback` component turns degraded).
    failing_after: float


@dataclass(frozen=True)
class TargetHealth:
    """What the `feedback` component reports of one target."""

    state: TargetState
    #: Why the target is not delivering, or None.
    problem: str | None
    #: The publisher's own probe (Redis: reachable, ping latency).
    details: dict[str, str] = field(default_factory=dict)


class TargetLane:
    """One target's buffer, worker and delivery record."""

    def __init__(
        self,
        target: Target,
        policy: RetryPolicy,
        metrics: Metrics,
        current: Mapping[str, Feedback] | None = None,
        *,
        resync: bool = False,
    ) -> None:
        self.target = target
        self.publisher = target.publisher
        self.name = target.publisher.name
        #: Every coordinator's current state, shared with the router: what a resync sends.
        self._current: Mapping[str, Feedback] = current if current is not None else {}
        #: Coordinators still to resync, in order; looked up when sent, so always current.
        self._resync: deque[str] = deque()
        self._resync_enabled = resync
        self.publisher.on_recovered = self.request_resync
        self._failing_after = policy.failing_after
        #: `time.monotonic()` of the first failed or refused attempt since the last delivery.
        self._failing_since: float | None = None
        self.buffer: TargetBuffer = (
            ConflatingBuffer(target.buffer)
            if self.publisher.conflate
            else FifoBuffer(target.buffer)
        )
        self._circuit_reported_open = False
        self.circuit = CircuitBreaker(
            policy.circuit_failures, policy.circuit_cooldown, on_change=self._circuit_changed
        )
        self._backoff = policy.backoff
        #: Events handed to the publisher and not yet delivered or given up.
        self.in_flight: list[Feedback] = []
        self.disabled = False
        self.delivered = 0
        self.retried = 0
        self.dropped = 0
        self.last_success: float | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        #: Under overload every event may be dropped: each reason is reported at most
        #: every `DROP_LOG_INTERVAL` seconds, with the count since the last report.
        self._drop_log = ThrottledLog(DROP_LOG_INTERVAL)
        #: Kinds of unclassified exception whose traceback was logged.
        self._unexpected_seen: set[str] = set()

        self._metrics = metrics
        self._delivered_total = metrics.feedback_delivered.labels(self.name)
        self._retried_total = metrics.feedback_retried.labels(self.name)
        self._conflated_total = metrics.feedback_conflated.labels(self.name)
        self._resynced_total = metrics.feedback_resynced.labels(self.name)
        self._latency = metrics.feedback_delivery_latency.labels(self.name)
        self._depth = metrics.feedback_buffer_depth.labels(self.name)
        self._circuit_gauge = metrics.feedback_circuit_state.labels(self.name)
        self._depth.set(0)
        self._circuit_gauge.set(CIRCUIT_GAUGE["closed"])

    @property
    def depth(self) -> int:
        """Undelivered events: buffered plus in flight."""
        return len(self.buffer) + len(self.in_flight)

    # -- intake side (synchronous, never blocks) --------------------------------------------

    def submit(self, feedback: Feedback) -> None:
        if self.disabled:
            self.drop([feedback], "disabled")
            return
        displaced = self.buffer.put(feedback)
        if displaced is not None:
            if displaced.reason == "conflated":
                self._conflated_total.inc()
            else:
                self.drop([displaced.feedback], displaced.reason)
        self._idle.clear()
        self._wakeup.set()
        self._depth.set(self.depth)

    def request_resync(self) -> None:
        """Send every coordinator's current state again, after what is buffered.

        The least severe go first and `hard` last: a consumer that keeps one rate for all
        coordinators (the pipeline's `RateCoordinator` takes whichever event came last)
        ends each round at the most severe level instead of at a random one. A resync
        already under way goes on (it reads the state as it sends), so a target slower
        than the interval still reaches every coordinator."""
        if not self._resync_enabled or self.disabled or self._resync or not self._current:
            return
        by_level: dict[str, list[str]] = {level: [] for level in RESYNC_ORDER}
        for coordinator, feedback in self._current.items():
            by_level.setdefault(feedback.event.level.value, []).append(coordinator)
        for coordinators in by_level.values():
            self._resync.extend(coordinators)
        self._wakeup.set()

    def cancel_resync(self) -> None:
        self._resync.clear()

    # -- worker ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Deliver until cancelled, or until the target asks never to be called again."""
        while not self.disabled:
            if self.buffer:
                self.in_flight = self.buffer.take(self.publisher.max_batch)
            else:
                self._idle.set()
                self.in_flight = self._resync_batch()
                if not self.in_flight:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
            await self._deliver_in_flight()
            self.in_flight = []
            self._depth.set(self.depth)
        self._idle.set()

    def _resync_batch(self) -> list[Feedback]:
        """The next coordinators of a resync, marked as such, at their current state."""
        batch: list[Feedback] = []
        while self._resync and len(batch) < self.publisher.max_batch:
            feedback = self._current.get(self._resync.popleft())
            if feedback is not None:
                batch.append(feedback.resynced())
        return batch

    async def _deliver_in_flight(self) -> None:
        """Attempt until delivered, given up, or replaced by newer events."""
        while self.in_flight:
            wait = self.circuit.wait_time()
            if wait > 0:
                await asyncio.sleep(wait)
                self._shed_superseded()
                continue
            try:
                await self.publisher.deliver(self.in_flight)
            except DeliveryError as exc:
                error = exc
            except EncodingError as exc:
                # The publisher could not encode an event: retrying cannot help, and must
                # not block what comes after.
                await self._unencodable(exc)
                return
            except Exception as exc:
                # Neither: the target answered what the publisher did not expect, or the
                # publisher has a bug. The events are not at fault; retried like any
                # failure, so a target that keeps doing it opens the circuit.
                error = self._unexpected(exc)
            else:
                self._delivered(self.in_flight)
                return
            if not self._failed(error):
                return
            await asyncio.sleep(
                self._backoff.delay(self.circuit.consecutive_failures, error.retry_after)
            )
            self._shed_superseded()

    def _unexpected(self, exc: Exception) -> DeliveryError:
        """A failure the publisher did not classify, as one the router retries; its
        traceback is logged once per kind of exception (it may be a bug)."""
        kind = type(exc).__name__
        if kind not in self._unexpected_seen:
            self._unexpected_seen.add(kind)
            logger.opt(exception=exc).error(
                "feedback target {}: delivery raised {} (retried as a failure)", self.name, kind
            )
        return DeliveryError("error", detail=f"{kind}: {first_line(exc)}")

    async def _unencodable(self, exc: EncodingError) -> None:
        """Find the events the publisher cannot carry, one at a time; drop only those."""
        if len(self.in_flight) > 1:
            batch = self.in_flight
            for feedback in batch:
                self.in_flight = [feedback]
                await self._deliver_in_flight()
            self.in_flight = []
            return
        self.last_error = f"unencodable: {first_line(exc)}"
        self.last_error_at = time.time()
        self._note_failing()
        self.drop(self.in_flight, "unencodable", detail=self.last_error)
        self.in_flight = []

    def _delivered(self, batch: Sequence[Feedback]) -> None:
        now = time.monotonic()
        for feedback in batch:
            self._latency.observe(now - feedback.received_at)
        self.delivered += len(batch)
        self._delivered_total.inc(len(batch))
        if resynced := sum(feedback.resync for feedback in batch):
            self._resynced_total.inc(resynced)
        self.last_success = time.time()
        self._failing_since = None
        if self.circuit.consecutive_failures:
            logger.info(
                "feedback target {}: delivering again after {} failed attempts",
                self.name,
                self.circuit.consecutive_failures,
            )
            # Back from an outage: whatever the target lost meanwhile, it gets the
            # current state of every coordinator now rather than at the next interval.
            self.request_resync()
        self.circuit.record_success()

    def _note_failing(self) -> None:
        if self._failing_since is None:
            self._failing_since = time.monotonic()

    def problem(self) -> str | None:
        """Why this target is not delivering, or None: what the `feedback` component says."""
        if self.disabled:
            return f"target {self.name} disabled ({self.last_error})"
        if self.circuit.state == "open":
            return f"target {self.name} circuit open ({self.last_error})"
        if self._failing_since is not None:
            failing_for = time.monotonic() - self._failing_since
            if failing_for >= self._failing_after:
                return (
                    f"target {self.name} has delivered nothing for {failing_for:.0f}s "
                    f"({self.last_error})"
                )
        return self.publisher.problem()

    def _failed(self, error: DeliveryError) -> bool:
        """Record a failed attempt; True when the in-flight events are to be retried."""
        self.last_error, self.last_error_at = str(error), time.time()
        self._note_failing()
        if error.disable:
            self._disable(error)
            return False
        if not error.retryable:
            # The target answered: it is up, it just refuses these events.
            self.circuit.record_success()
            self.drop(self.in_flight, error.reason)
            return False
        if self.circuit.consecutive_failures == 0:
            logger.warning("feedback target {}: delivery failed ({}), retrying", self.name, error)
        else:
            logger.debug("feedback target {}: delivery failed again ({})", self.name, error)
        self.circuit.record_failure()
        self.retried += 1
        self._retried_total.inc()
        return True

    def _shed_superseded(self) -> None:
        """Conflate in-flight events too: a retry should carry current state, not stale."""
        kept = [f for f in self.in_flight if not self.buffer.supersedes(f)]
        if len(kept) != len(self.in_flight):
            self._conflated_total.inc(len(self.in_flight) - len(kept))
            self.in_flight = kept
            self._depth.set(self.depth)

    def _disable(self, error: DeliveryError) -> None:
        self.disabled = True
        self.cancel_resync()
        logger.error(
            "feedback target {} asked not to be called again ({}): disabled until restart",
            self.name,
            error,
        )
        self.abandon("disabled")

    # -- shutdown and accounting -------------------------------------------------------------

    async def wait_idle(self) -> None:
        """Until nothing is buffered or in flight (or the target is disabled)."""
        await self._idle.wait()

    def abandon(self, reason: str) -> int:
        """Drop everything undelivered, counted under `reason`; returns how many.

        Resync copies are not counted: they were never accepted, only repeated."""
        self.cancel_resync()
        undelivered = [*self.in_flight, *self.buffer.take(len(self.buffer))]
        undelivered = [feedback for feedback in undelivered if not feedback.resync]
        self.in_flight = []
        self.drop(undelivered, reason)
        self._depth.set(0)
        return len(undelivered)

    def drop(self, events: Sequence[Feedback], reason: str, *, detail: str | None = None) -> None:
        """Count (and report) events this target will never receive."""
        if not events:
            return
        self.dropped += len(events)
        self._metrics.feedback_dropped.labels(self.name, reason).inc(len(events))
        unreported = self._drop_log.note(reason, len(events))
        if not unreported:
            return
        logger.warning(
            "feedback target {}: dropped {} event(s) ({}){}; latest coordinators {}",
            self.name,
            unreported,
            reason,
            f": {clip(detail, MAX_ERROR_LENGTH)}" if detail else "",
            sorted({ascii(f.coordinator_id)[1:-1] for f in events[-10:]}),
        )

    def _circuit_changed(self, state: CircuitState) -> None:
        self._circuit_gauge.set(CIRCUIT_GAUGE[state])
        if state == "open" and not self._circuit_reported_open:
            # Once per outage: a failed half-open trial re-opens it without a new line.
            self._circuit_reported_open = True
            logger.warning(
                "feedback target {}: circuit open after {} consecutive failures",
                self.name,
                self.circuit.consecutive_failures,
            )
        elif state == "closed":
            self._circuit_reported_open = False
            logger.info("feedback target {}: circuit closed", self.name)

    def status(self) -> TargetState:
        """This target's entry in `GET /feedback`."""
        return TargetState(
            name=self.name,
            kind=self.target.kind,
            endpoint=self.target.endpoint,
            mode=self.buffer.mode,
            buffer_depth=self.depth,
            delivered=self.delivered,
            retried=self.retried,
            dropped=self.dropped,
            last_success=self.last_success,
            last_error=clip(self.last_error, MAX_ERROR_LENGTH),
            last_error_at=self.last_error_at,
            circuit=self.circuit.state,
            disabled=self.disabled,
            scope=self.target.scope,
            composite=self._composite_state(),
            members=self.publisher.members(),
            readers=self.publisher.readers(),
            dead_letters=self.publisher.dead_letters(),
        )

    def _composite_state(self) -> CompositeState | None:
        """What this target's consumers were last told, for a scoped target."""
        if self.target.scope == "coordinator":
            return None
        published = self.publisher.composite()
        if published is not None:
            return published
        feedback = self._current.get(COMPOSITE_KEY)
        return None if feedback is None else composite_state(feedback)
