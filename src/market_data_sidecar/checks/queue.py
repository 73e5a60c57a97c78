"""The store's write-coordinator queues, read from the store's Prometheus `/metrics`.

Each successful scrape also hands the per-coordinator samples to listeners, so feedback
can be synthesized from polled depths for stores that do not push it.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import aiohttp
from loguru import logger
from market_data_core.telemetry import BackpressureLevel, HealthComponent, HealthState

from market_data_sidecar.checks import STATE_RANK, Check, Damping, worst
from market_data_sidecar.checks.exposition import (
    DEPTH,
    MAX_COORDINATORS,
    REJECTED_WHY,
    CoordinatorSeries,
    ScrapeError,
    parse,
)
from market_data_sidecar.feedback import bounds
from market_data_sidecar.feedback.watermarks import SampleListener, level_for
from market_data_sidecar.logs import ThrottledLog
from market_data_sidecar.metrics import CoordinatorRow, Metrics
from market_data_sidecar.redaction import redact_url

CIRCUIT_NAMES = {0: "closed", 1: "open", 2: "half-open"}
CIRCUIT_OPEN = 1
CIRCUIT_HALF_OPEN = 2

#: A store's exposition is a few kilobytes; anything near this is not one.
MAX_BODY_BYTES = 8 * 1024 * 1024
#: Reasons spelled out in the component's `reason`; the rest are counted.
MAX_REASONS = 5
#: Coordinators detailed in the component (the worst first): probes read the component,
#: and the kubelet only 10 KiB of it. The full list is on `/metrics` (the gauges of every
#: kept coordinator) and `GET /feedback`.
MAX_DETAILED = 3
#: Lines about what the check leaves out, at most one per kind per this many seconds.
REJECTED_LOG_INTERVAL = 60.0


@dataclass(frozen=True)
class CoordinatorSample:
    """One coordinator's queue as one scrape saw it."""

    coordinator_id: str
    depth: int
    capacity: int
    utilization: float
    level: BackpressureLevel
    workers_alive: int | None
    circuit_state: int | None


class QueueCheck(Check):
    """Scrapes the store's metrics; one component for all coordinators."""

    def __init__(
        self,
        url: str,
        *,
        capacities: Mapping[str, int],
        default_capacity: int,
        low_watermark: float,
        high_watermark: float,
        metrics: Metrics,
        interval: float,
        timeout: float,
        damping: Damping | None = None,
    ) -> None:
        super().__init__("queue", interval=interval, timeout=timeout, damping=damping)
        self.url = url
        self.capacities = dict(capacities)
        self.default_capacity = default_capacity
        self.low_watermark = low_watermark
        self.high_watermark = high_watermark
        self.metrics = metrics
        self._session: aiohttp.ClientSession | None = None
        self._listeners: list[SampleListener] = []
        self._dropped: dict[str, float] = {}
        self._last_error: str | None = None
        self._rejected_log = ThrottledLog(REJECTED_LOG_INTERVAL)

    def capacity_of(self, coordinator_id: str) -> int:
        """A coordinator's queue capacity: the store does not export it."""
        return self.capacities.get(coordinator_id, self.default_capacity)

    def add_listener(self, callback: SampleListener) -> None:
        """Call `callback` with every coordinator's sample after each successful scrape."""
        self._listeners.append(callback)

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # -- scraping --------------------------------------------------------------------------

    async def run(self) -> HealthComponent:
        try:
            text = await self._scrape()
            # Parsing and judging up to `MAX_COORDINATORS`
            # would hold up probes: not on the loop, and in the check's own thread (a run
            # abandoned at its timeout holds only it).
            samples, component = await self.in_thread(self._evaluate, text)
        except ScrapeError as exc:
            if str(exc) != self._last_error:  # once per distinct failure
                logger.warning("queue check failed: {}", exc)
            self._last_error = str(exc)
            self.metrics.queue_coordinators.show(())  # nothing known of any coordinator
            return self.component("unhealthy", url=redact_url(self.url), error=str(exc))
        self._last_error = None
        self._notify(samples)  # on the loop: listeners are the relay's
        return component

    def _evaluate(self, text: str) -> tuple[tuple[CoordinatorSample, ...], HealthComponent]:
        series = parse(text)
        samples = tuple(self._samples(series))
        self._count_rejected(series)
        return samples, self._judge(series, samples)

    def _count_rejected(self, series: CoordinatorSeries) -> None:
        """Count what the scrape left out; log it at most once per kind per interval."""
        for reason, count in series.rejected.items():
            self.metrics.queue_series_rejected.labels(reason).inc(count)
            if folded := self._rejected_log.note(reason, count):
                example = series.examples.get(reason)
                logger.warning(
                    "queue check: {} series of the store's metrics not kept ({}){}",
                    folded,
                    REJECTED_WHY[reason],
                    f", e.g. coordinator {example[:80]}" if example else "",
                )

    async def _scrape(self) -> str:
        # Created here, inside the running loop; reused for every scrape.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers={"Accept": "text/plain"},  # the classic format, not OpenMetrics
            )
        try:
            async with self._session.get(self.url, allow_redirects=False) as response:
                if response.status != 200:
                    raise ScrapeError(f"store metrics answered HTTP {response.status}")
                body = bytearray()
                async for chunk in response.content.iter_chunked(64 * 1024):
                    body += chunk
                    if len(body) > MAX_BODY_BYTES:
                        raise ScrapeError(f"store metrics larger than {MAX_BODY_BYTES} bytes")
        except aiohttp.ClientError as exc:
            raise ScrapeError(f"store metrics unreachable: {_client_error(exc)}") from None
        except TimeoutError:
            raise ScrapeError(f"store metrics did not answer within {self.timeout:g}s") from None
        return body.decode("utf-8", errors="replace")

    def _notify(self, samples: Sequence[CoordinatorSample]) -> None:
        for listener in self._listeners:
            try:
                listener(samples)
            except Exception:  # one listener's bug must not silence the check
                logger.exception("queue sample listener {!r} failed", listener)

    # -- judging ---------------------------------------------------------------------------

    def _samples(self, series: CoordinatorSeries) -> list[CoordinatorSample]:
        """Samples of the coordinators whose depth an event can carry (`bounds`): an
        out-of-range depth is counted and judged, never relayed."""
        samples = []
        for coordinator, depth in sorted(series.depth.items()):
            capacity = self.capacity_of(coordinator)
            if bounds.queue_problem(coordinator, depth, capacity) is not None:
                series.out_of_range.add(coordinator)
                series.rejected["out_of_range"] += 1
                series.examples.setdefault("out_of_range", coordinator)
                continue
            samples.append(
                CoordinatorSample(
                    coordinator_id=coordinator,
                    depth=depth,
                    capacity=capacity,
                    utilization=depth / capacity,
                    level=level_for(depth, capacity, self.low_watermark, self.high_watermark),
                    workers_alive=series.workers_alive.get(coordinator),
                    circuit_state=series.circuit_state.get(coordinator),
                )
            )
        return samples

    def _judge(
        self, series: CoordinatorSeries, samples: Sequence[CoordinatorSample]
    ) -> HealthComponent:
        """One component for every coordinator: counts, the worst few in detail, and
        every kept coordinator's gauges on `/metrics`."""
        coordinators = sorted(series.coordinators)
        sampled = {sample.coordinator_id: sample for sample in samples}
        verdicts: list[tuple[HealthState, str]] = []
        if not coordinators:
            verdicts.append(("degraded", f"no {DEPTH} series in the store's metrics"))
        self.metrics.queue_coordinators_omitted.set(series.omitted)
        if series.omitted:
            verdicts.append(
                (
                    "degraded",
                    f"{series.omitted} coordinators beyond the first {MAX_COORDINATORS} "
                    "not checked",
                )
            )
        if series.out_of_range:
            verdicts.append(
                ("degraded", f"{len(series.out_of_range)} coordinators with out-of-range depth")
            )
        judged = {c: self._judge_one(c, series, sampled.get(c)) for c in coordinators}
        for state_reasons in judged.values():
            verdicts.extend(state_reasons[1])
        details = self._summary(series, samples, judged)
        self.metrics.queue_coordinators.show(
            [_row(c, series, sampled.get(c)) for c in coordinators]
        )
        if verdicts:
            reasons = [reason for _, reason in verdicts[:MAX_REASONS]]
            if len(verdicts) > MAX_REASONS:
                reasons.append(f"and {len(verdicts) - MAX_REASONS} more")
            details["reason"] = "; ".join(reasons)
        return self.component(worst([state for state, _ in verdicts]), **details)

    def _judge_one(
        self, c: str, series: CoordinatorSeries, sample: CoordinatorSample | None
    ) -> tuple[dict[str, object], list[tuple[HealthState, str]]]:
        """One coordinator's details and verdicts."""
        details: dict[str, object] = {}
        verdicts: list[tuple[HealthState, str]] = []
        if sample is not None:
            details[f"{c}:depth"] = sample.depth
            details[f"{c}:capacity"] = sample.capacity
            details[f"{c}:utilization"] = round(sample.utilization, 4)
            details[f"{c}:level"] = sample.level.value
            if sample.level is BackpressureLevel.hard:
                verdicts.append(("degraded", f"{c} at {sample.utilization:.0%} of capacity"))
        else:
            details[f"{c}:depth"] = "out of range" if c in series.out_of_range else "unknown"
        workers = series.workers_alive.get(c)
        if workers is not None:
            details[f"{c}:workers_alive"] = workers
            if workers <= 0:
                verdicts.append(("unhealthy", f"{c} has no live workers"))
        circuit = series.circuit_state.get(c)
        if circuit is not None:
            details[f"{c}:circuit"] = CIRCUIT_NAMES.get(circuit, str(circuit))
            if circuit == CIRCUIT_OPEN:
                verdicts.append(("unhealthy", f"{c} circuit open"))
            elif circuit == CIRCUIT_HALF_OPEN:
                verdicts.append(("degraded", f"{c} circuit half-open"))
        dropped = series.dropped.get(c)
        if dropped is not None:
            details[f"{c}:dropped_total"] = int(dropped)
            newly = self._newly_dropped(c, dropped)
            if newly > 0:
                verdicts.append(("degraded", f"{c} dropped {newly:g} items since last check"))
        return details, verdicts

    def _summary(
        self,
        series: CoordinatorSeries,
        samples: Sequence[CoordinatorSample],
        judged: Mapping[str, tuple[dict[str, object], list[tuple[HealthState, str]]]],
    ) -> dict[str, object]:
        """Counts, and the `MAX_DETAILED` worst coordinators (unhealthy, then degraded,
        then the fullest queue) in detail: the component stays small whatever the store
        lists."""
        levels = Counter(sample.level.value for sample in samples)
        details: dict[str, object] = {
            "url": redact_url(self.url),
            "coordinators": len(judged),
            "levels": ",".join(f"{level.value}={levels[level.value]}" for level in _LEVELS),
        }
        if series.omitted:
            details["coordinators_omitted"] = series.omitted
        utilization = {sample.coordinator_id: sample.utilization for sample in samples}

        def badness(c: str) -> tuple[int, float, str]:
            states = [state for state, _ in judged[c][1]]
            return (-STATE_RANK[worst(states)], -utilization.get(c, 0.0), c)

        worst_few = sorted(judged, key=badness)[:MAX_DETAILED]
        if len(judged) > len(worst_few):
            details["coordinators_detailed"] = f"{len(worst_few)} worst of {len(judged)}"
        for c in worst_few:
            details.update(judged[c][0])
        return details

    def _newly_dropped(self, coordinator: str, total: float) -> float:
        previous = self._dropped.get(coordinator)
        self._dropped[coordinator] = total
        if previous is None:
            return 0.0  # the first scrape has no baseline: old drops are history
        return total - previous if total >= previous else total  # a reset: the store restarted


def _row(c: str, series: CoordinatorSeries, sample: CoordinatorSample | None) -> CoordinatorRow:
    """What `/metrics` shows of coordinator `c`: no depth when no event can carry it."""
    return CoordinatorRow(
        c,
        depth=sample.depth if sample else None,
        utilization=sample.utilization if sample else None,
        workers_alive=series.workers_alive.get(c),
        circuit_state=series.circuit_state.get(c),
    )


_LEVELS = (BackpressureLevel.hard, BackpressureLevel.soft, BackpressureLevel.ok)


def _client_error(exc: aiohttp.ClientError) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError) and exc.os_error.errno:
        return os.strerror(exc.os_error.errno)  # "Connection refused", not asyncio's wording
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
