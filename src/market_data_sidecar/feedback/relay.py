"""The relay: events from the store (intake) or from watermarks, through one router.

It remembers the latest event per coordinator and when the store last pushed one, which
decides whether events are synthesized from polled queue depths, and it renders the
state `GET /feedback` shows.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit, urlunsplit

from loguru import logger

from market_data_sidecar.feedback.delivery import Publisher
from market_data_sidecar.feedback.model import Feedback
from market_data_sidecar.feedback.retry import Backoff
from market_data_sidecar.feedback.router import RetryPolicy, Router, Target
from market_data_sidecar.feedback.state import (
    DEFAULT_LIMIT,
    LEVEL_SEVERITY,
    Omitted,
    Origin,
    RelayedEvent,
    RelayState,
)
from market_data_sidecar.feedback.watermarks import QueueSample, Watermarks
from market_data_sidecar.metrics import Metrics
from market_data_sidecar.publishers.catalog import build_publishers
from market_data_sidecar.settings import Settings

#: Coordinators remembered for `GET /feedback`; the oldest is forgotten beyond this, so
#: a client inventing coordinator ids cannot grow memory without bound.
MAX_COORDINATORS = 10_000


class Relay:
    """Accepts feedback, routes it to every target, and keeps what `GET /feedback` shows."""

    def __init__(
        self,
        router: Router,
        *,
        metrics: Metrics,
        watermarks: Watermarks | None = None,
        synthesize: bool = True,
        synthesize_after: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.router = router
        self._metrics = metrics
        self._watermarks = watermarks
        self._synthesize = synthesize
        self._synthesize_after = synthesize_after
        self._clock = clock
        self._latest: OrderedDict[str, tuple[Feedback, Origin]] = OrderedDict()
        self.last_store_event_at: float | None = None
        self.started_at = clock()

    # -- in ----------------------------------------------------------------------------------

    def accept(self, events: Sequence[Feedback]) -> None:
        """Events pushed by the store (validated by the intake), in the order received."""
        if events:
            self.last_store_event_at = self._clock()
        for feedback in events:
            self._relay(feedback, "store")

    def observe_queues(self, samples: Sequence[QueueSample]) -> None:
        """Listener for the queue check: synthesize events from watermark crossings."""
        if self._watermarks is None:
            return
        crossings = self._watermarks.observe(samples)
        if not self.synthesizing:
            return  # levels are still tracked, so a later switch-on starts from the truth
        for crossing in crossings:
            known = self._latest.get(crossing.event.coordinator_id)
            if known is not None and known[0].event.level == crossing.event.level:
                continue  # the store already said so: feedback is state, not a log
            self._metrics.feedback_synthesized.labels(crossing.event.level.value).inc()
            logger.info(
                "synthesized feedback: {} {} ({} of {})",
                crossing.event.coordinator_id,
                crossing.event.level.value,
                crossing.event.queue_size,
                crossing.event.capacity,
            )
            self._relay(Feedback(crossing.event, reason=crossing.reason), "synthesized")

    @property
    def synthesizing(self) -> bool:
        """On when enabled and the store has not pushed for `synthesize_after` seconds."""
        if not self._synthesize or self._watermarks is None:
            return False
        last = self.last_store_event_at
        return last is None or self._clock() - last > self._synthesize_after

    def _relay(self, feedback: Feedback, origin: Origin) -> None:
        self._latest.pop(feedback.coordinator_id, None)
        self._latest[feedback.coordinator_id] = (feedback, origin)
        if len(self._latest) > MAX_COORDINATORS:
            self._latest.popitem(last=False)
        self.router.submit(feedback)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self.started_at = self._clock()
        await self.router.start()

    async def stop(self, drain_timeout: float) -> None:
        await self.router.stop(drain_timeout)

    # -- out ---------------------------------------------------------------------------------

    def view(self, limit: int = DEFAULT_LIMIT) -> RelayState:
        """`GET /feedback`: the latest event of at most `limit` coordinators, hard before
        soft before ok and the latest first within a level, and every target's state.
        One pass over what is remembered, keeping no more than `limit` per level."""
        levels: Counter[str] = Counter()
        shown: dict[str, list[tuple[Feedback, Origin]]] = {level: [] for level in LEVEL_SEVERITY}
        for feedback, origin in reversed(self._latest.values()):
            level = feedback.event.level.value
            levels[level] += 1
            bucket = shown.setdefault(level, [])
            if len(bucket) < limit:
                bucket.append((feedback, origin))
        chosen = itertools.islice(itertools.chain.from_iterable(shown.values()), limit)
        coordinators = {
            feedback.coordinator_id: RelayedEvent.model_construct(
                **dict(feedback.event), reason=feedback.reason, id=feedback.id, origin=origin
            )
            for feedback, origin in chosen
        }
        return RelayState(
            coordinators=coordinators,
            levels=dict(levels),
            omitted=Omitted(coordinators=len(self._latest) - len(coordinators)),
            targets=[lane.status() for lane in self.router.lanes],
            last_store_event_at=self.last_store_event_at,
            synthesizing=self.synthesizing,
        )


def build_relay(
    settings: Settings, metrics: Metrics, publishers: Sequence[Publisher] | None = None
) -> Relay:
    """The relay the settings describe: one router target per configured target."""
    if publishers is None:
        publishers = build_publishers(settings, metrics)
    # build_publishers makes one publisher per configured target, in order.
    targets = [
        Target(
            publisher=publisher,
            kind=target.kind,
            endpoint=redact_url(target.endpoint),
            buffer=target.buffer,
        )
        for publisher, target in zip(publishers, settings.targets, strict=True)
    ]
    policy = RetryPolicy(
        backoff=Backoff(settings.retry_initial, settings.retry_max, settings.retry_after_max),
        circuit_failures=settings.circuit_failures,
        circuit_cooldown=settings.circuit_cooldown,
    )
    return Relay(
        Router(targets, metrics=metrics, policy=policy),
        metrics=metrics,
        watermarks=Watermarks(settings.queue_low_watermark, settings.queue_high_watermark),
        synthesize=settings.synthesize_feedback,
        synthesize_after=settings.synthesize_after,
    )


def redact_url(url: str) -> str:
    """A target URL fit to show: no user or password, and no query (webhook URLs often
    carry an API key there)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))
