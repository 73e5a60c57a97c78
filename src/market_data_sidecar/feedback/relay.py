"""The relay: events from the store (intake) or from watermarks, through one router.

It remembers the latest event per coordinator and when the store last pushed one, which
decides whether events are synthesized from polled queue depths, and it renders the
state `GET /feedback` shows.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Callable, Sequence

from loguru import logger

from market_data_sidecar.feedback.lane import TargetHealth
from market_data_sidecar.feedback.model import Feedback
from market_data_sidecar.feedback.router import Router
from market_data_sidecar.feedback.state import (
    DEFAULT_LIMIT,
    LEVEL_SEVERITY,
    Omitted,
    RelayedEvent,
    RelayState,
)
from market_data_sidecar.feedback.watermarks import QueueSample, Watermarks
from market_data_sidecar.logs import ThrottledLog
from market_data_sidecar.metrics import Metrics

#: Synthesized events are logged at most once per this many seconds.
SYNTHESIZED_LOG_INTERVAL = 10.0
#: Coordinators nobody has spoken of yet, announced per scrape; the rest at the following
#: scrapes (the watermarks keep their levels meanwhile). What bounds the synthesized
#: events, and so the POSTs to every webhook, when ids change at every scrape (the queue
#: check keeps up to 2,000 a scrape); a store runs tens.
MAX_NEWS_PER_SCRAPE = 200


class Relay:
    """Accepts feedback, routes it to every target, and keeps what `GET /feedback` shows."""

    def __init__(
        self,
        router: Router,
        *,
        metrics: Metrics,
        watermarks: Watermarks | None = None,
        synthesize: bool,
        synthesize_after: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.router = router
        self._metrics = metrics
        self._watermarks = watermarks
        self._synthesize = synthesize
        self._synthesize_after = synthesize_after
        self._clock = clock
        self.last_store_event_at: float | None = None
        self.started_at = clock()
        self._synthesized_log = ThrottledLog(SYNTHESIZED_LOG_INTERVAL)

    # -- in ----------------------------------------------------------------------------------

    def accept(self, events: Sequence[Feedback]) -> None:
        """Events pushed by the store (validated by the intake), in the order received."""
        if events:
            self.last_store_event_at = self._clock()
        for feedback in events:
            self.router.submit(feedback)

    def observe_queues(self, samples: Sequence[QueueSample]) -> None:
        """Listener for the queue check: synthesize events from watermark crossings."""
        if self._watermarks is None:
            return
        # Only what the intake would accept becomes an event (`bounds`).
        samples = self._watermarks.admissible(samples)
        # Levels are tracked even while the store pushes, so a later switch-on starts
        # from the truth.
        crossings = {c.event.coordinator_id: c for c in self._watermarks.observe(samples)}
        if not self._synthesize:
            return
        current = self.router.current
        news = 0
        for sample in samples:
            known = current.get(sample.coordinator_id)
            crossing = crossings.get(sample.coordinator_id)
            if known is None and sample.capacity > 0:
                # Nobody has said anything of this coordinator (the sidecar restarted, or
                # the store never pushes): its polled level, `ok` included, is the news.
                news += 1
                if news > MAX_NEWS_PER_SCRAPE:
                    continue  # announced at a later scrape, if it is still there
                self._synthesized(Feedback(self._watermarks.current(sample), origin="synthesized"))
            elif crossing is None or not self.synthesizing:
                continue
            elif known is not None and known.event.level == crossing.event.level:
                continue  # the store already said so: feedback is state, not a log
            else:
                self._synthesized(
                    Feedback(crossing.event, reason=crossing.reason, origin="synthesized")
                )

    def retire_unexported(self, samples: Sequence[QueueSample], *, complete_below: int) -> None:
        """Listener for the queue check: a coordinator the store no longer exports is gone
        (renamed or removed), so it leaves the current state and no composite counts it.
        Only a scrape with fewer than `complete_below` coordinators lists every one."""
        if len(samples) >= complete_below:
            return
        exported = {sample.coordinator_id for sample in samples}
        gone = [coordinator for coordinator in self.router.current if coordinator not in exported]
        if not gone:
            return
        self.router.forget(gone)
        logger.info(
            "coordinators the store no longer exports are forgotten: {}{}",
            ", ".join(ascii(coordinator)[1:-1] for coordinator in gone[:10]),
            f" and {len(gone) - 10} more" if len(gone) > 10 else "",
        )

    def _synthesized(self, feedback: Feedback) -> None:
        event = feedback.event
        self._metrics.feedback_synthesized.labels(event.level.value).inc()
        # One line per interval, not per event: ids that change every scrape would make
        # a line each. The counter has every one.
        if count := self._synthesized_log.note("synthesized"):
            logger.info(
                "synthesized feedback: {} {} ({} of {}){}",
                event.coordinator_id,
                event.level.value,
                event.queue_size,
                event.capacity,
                f"; {count - 1} more since the last such line" if count > 1 else "",
            )
        self.router.submit(feedback)

    @property
    def synthesizing(self) -> bool:
        """On when enabled and the store has not pushed for `synthesize_after` seconds."""
        if not self._synthesize or self._watermarks is None:
            return False
        last = self.last_store_event_at
        return last is None or self._clock() - last > self._synthesize_after

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self.started_at = self._clock()
        await self.router.start()

    async def stop(self, drain_timeout: float) -> None:
        await self.router.stop(drain_timeout)

    # -- out ---------------------------------------------------------------------------------

    async def health(self, probe_timeout: float) -> list[TargetHealth]:
        """Every target's state, problem and publisher probe: the `feedback` component."""
        return await self.router.health(probe_timeout)

    def view(self, limit: int = DEFAULT_LIMIT) -> RelayState:
        """`GET /feedback`: the latest event of at most `limit` coordinators, hard before
        soft before ok and the latest first within a level, and every target's state.
        One pass over what is remembered, keeping no more than `limit` per level."""
        levels: Counter[str] = Counter()
        shown: dict[str, list[Feedback]] = {level: [] for level in LEVEL_SEVERITY}
        current = self.router.current
        for feedback in reversed(current.values()):
            level = feedback.event.level.value
            levels[level] += 1
            bucket = shown.setdefault(level, [])
            if len(bucket) < limit:
                bucket.append(feedback)
        chosen = itertools.islice(itertools.chain.from_iterable(shown.values()), limit)
        coordinators = {
            feedback.coordinator_id: RelayedEvent.model_construct(
                **dict(feedback.event),
                reason=feedback.reason,
                id=feedback.id,
                origin=feedback.origin,
            )
            for feedback in chosen
        }
        return RelayState(
            coordinators=coordinators,
            levels=dict(levels),
            omitted=Omitted(coordinators=len(current) - len(coordinators)),
            targets=self.router.states(),
            last_store_event_at=self.last_store_event_at,
            synthesizing=self.synthesizing,
        )
