"""Fans accepted feedback out to every target, each with its own buffer, worker and circuit.

`Router.submit` only appends to in-memory buffers and never awaits, so neither the intake
nor another target can be delayed by a target that is slow, failing or hanging. Each
target's worker is an asyncio task, created in `start` and cancelled in `stop`.

The router also holds every coordinator's current state, because feedback is state and
the store sends it only on crossings: each target gets that state again (a resync) every
`resync_interval` seconds (0: never) and as soon as it recovers from an outage, so a consumer that
restarted, joined late or lost its stream converges without waiting for the next
crossing. A resync is pulled by the target's worker only when its buffer is empty, one
batch at a time, from the current state: it never displaces or delays what the store
sent, and costs the intake nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Sequence

from loguru import logger

from market_data_sidecar.feedback.delivery import Publisher
from market_data_sidecar.feedback.lane import RetryPolicy, Target, TargetHealth, TargetLane
from market_data_sidecar.feedback.model import COMPOSITE_KEY, Feedback
from market_data_sidecar.feedback.scope import SEVERITY, next_pod_composite, signature
from market_data_sidecar.feedback.state import TargetState
from market_data_sidecar.metrics import Metrics

#: How long a publisher may take to open or close its connections.
PUBLISHER_SETUP_TIMEOUT = 5.0
#: Coordinators whose current state is kept; the oldest is forgotten beyond this, so a
#: client inventing coordinator ids cannot grow memory without bound.
MAX_COORDINATORS = 10_000


class Router:
    """Every target's lane; `submit` hands an event to all of them."""

    def __init__(
        self,
        targets: Sequence[Target],
        *,
        metrics: Metrics,
        policy: RetryPolicy,
        resync_interval: float,
        max_coordinators: int = MAX_COORDINATORS,
        instance: str,
    ) -> None:
        names = [target.publisher.name for target in targets]
        if len(names) != len(set(names)):
            raise ValueError(f"target names must be unique: {names}")
        #: Every coordinator's latest event, least recently updated first.
        self.current: OrderedDict[str, Feedback] = OrderedDict()
        #: The pod's composite under `COMPOSITE_KEY` (empty until a coordinator is known):
        #: what a resync of a scoped target sends.
        self.composites: dict[str, Feedback] = {}
        #: This sidecar's member name, carried by its composites.
        self.instance = instance
        self._max_coordinators = max_coordinators
        self.lanes = [
            TargetLane(
                target,
                policy,
                metrics,
                self.current if target.scope == "coordinator" else self.composites,
                resync=resync_interval > 0,
            )
            for target in targets
        ]
        self._scoped = [lane for lane in self.lanes if lane.target.scope != "coordinator"]
        self._by_coordinator = [lane for lane in self.lanes if lane.target.scope == "coordinator"]
        self._metrics = metrics
        self._resync_interval = resync_interval
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False

    def lane(self, name: str) -> TargetLane:
        for lane in self.lanes:
            if lane.name == name:
                return lane
        raise KeyError(name)

    @property
    def composite(self) -> Feedback | None:
        """The pod's composite: the worst of its coordinators' current states."""
        return self.composites.get(COMPOSITE_KEY)

    def submit(self, feedback: Feedback) -> None:
        """Make `feedback` its coordinator's current state, and hand it to every target
        (a scoped one gets the pod's composite, when that changed)."""
        self.current.pop(feedback.coordinator_id, None)
        self.current[feedback.coordinator_id] = feedback
        evicted = None
        if len(self.current) > self._max_coordinators:
            evicted, _ = self.current.popitem(last=False)
        self._hand(self._by_coordinator, feedback)
        if self._scoped:
            self._recompose(feedback.coordinator_id)
            if evicted is not None:
                self._recompose(evicted)

    def forget(self, coordinators: Sequence[str]) -> None:
        """Coordinators that are gone (the store no longer exports them): they leave the
        current state, and the pod's composite no longer counts them."""
        for coordinator in coordinators:
            if self.current.pop(coordinator, None) is not None and self._scoped:
                self._recompose(coordinator)

    def _recompose(self, changed: str) -> None:
        """Hand the scoped targets the pod's new composite, if it changed. Computed in the
        same synchronous step as `current` changed, so no target can be handed a composite
        less severe than the truth."""
        previous = self.composite
        composite = next_pod_composite(previous, self.current, changed, self.instance)
        if composite is None or signature(composite) == signature(previous):
            return
        self.composites[COMPOSITE_KEY] = composite
        level = SEVERITY[composite.event.level.value]
        for lane in self._scoped:
            if lane.target.scope == "pod":
                self._metrics.feedback_composite_level.labels(lane.name, "pod").set(level)
        self._hand(self._scoped, composite)

    def _hand(self, lanes: Sequence[TargetLane], feedback: Feedback) -> None:
        for lane in lanes:
            if self._closing:
                lane.drop([feedback], "shutdown")
            else:
                lane.submit(feedback)

    def resync(self) -> None:
        """Every target: send every coordinator's current state again."""
        for lane in self.lanes:
            lane.request_resync()

    def states(self) -> list[TargetState]:
        return [lane.status() for lane in self.lanes]

    async def health(self, probe_timeout: float) -> list[TargetHealth]:
        """Every target's state and problem, with its publisher's probe (run concurrently,
        each within `probe_timeout`)."""
        probes = await asyncio.gather(
            *(_probe(lane.publisher, probe_timeout) for lane in self.lanes)
        )
        return [
            TargetHealth(lane.status(), lane.problem(), details)
            for lane, details in zip(self.lanes, probes, strict=True)
        ]

    async def start(self) -> None:
        """Open each publisher's connections, then start one worker task per target (and
        the resync timer)."""
        await asyncio.gather(*(self._start_publisher(lane.publisher) for lane in self.lanes))
        self._tasks = [
            asyncio.create_task(lane.run(), name=f"feedback-target:{lane.name}")
            for lane in self.lanes
        ]
        if self._resync_interval > 0:
            self._tasks.append(asyncio.create_task(self._resync_every(), name="feedback-resync"))

    async def _resync_every(self) -> None:
        while True:
            await asyncio.sleep(self._resync_interval)
            self.resync()

    async def stop(self, drain_timeout: float) -> None:
        """Drain the buffers for up to `drain_timeout` seconds, then stop the workers.

        What is still undelivered then is counted as dropped (`shutdown`) and logged.
        """
        self._closing = True
        for lane in self.lanes:
            lane.cancel_resync()
        pending = [lane for lane in self.lanes if lane.depth]
        if pending:
            logger.info(
                "draining feedback for up to {:g}s: {}",
                drain_timeout,
                ", ".join(f"{lane.name}={lane.depth}" for lane in pending),
            )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(drain_timeout):
                await asyncio.gather(*(lane.wait_idle() for lane in self.lanes))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        undelivered = {lane.name: lane.abandon("shutdown") for lane in self.lanes}
        if any(undelivered.values()):
            logger.warning(
                "feedback not delivered before the drain deadline: {}",
                ", ".join(f"{name}={count}" for name, count in undelivered.items() if count),
            )
        elif pending:
            logger.info("feedback drained")
        await asyncio.gather(*(self._close_publisher(lane.publisher) for lane in self.lanes))

    @staticmethod
    async def _start_publisher(publisher: Publisher) -> None:
        try:
            async with asyncio.timeout(PUBLISHER_SETUP_TIMEOUT):
                await publisher.start()
        except Exception as exc:  # the worker's attempts will report the target's state
            logger.warning("feedback target {}: could not start: {!r}", publisher.name, exc)

    @staticmethod
    async def _close_publisher(publisher: Publisher) -> None:
        try:
            async with asyncio.timeout(PUBLISHER_SETUP_TIMEOUT):
                await publisher.close()
        except Exception as exc:
            logger.warning("feedback target {}: could not close cleanly: {!r}", publisher.name, exc)


async def _probe(publisher: Publisher, budget: float) -> dict[str, str]:
    """A publisher's own probe; its failure is a detail, not a failed check."""
    try:
        async with asyncio.timeout(budget):
            return await publisher.health_details()
    except TimeoutError:
        return {"probe": "timed out"}
    except Exception as exc:
        return {"probe": f"failed: {type(exc).__name__}"}
