"""One check's runaway thread work never starves another, and no check reports more than
its share of the health answer."""

from __future__ import annotations

import json
import threading

from market_data_core.telemetry import HealthComponent

from market_data_sidecar.checks import Check
from market_data_sidecar.checks.disk import DiskCheck, DiskThresholds
from market_data_sidecar.health import DETAILS_BUDGET
from market_data_sidecar.metrics import Metrics
from tests.support import parts
from tests.support.helpers import eventually

#: What a probe answer must fit in (the kubelet reads 10 KiB of it).
PROBE_BUDGET = 16 * 1024


class StuckParse(Check):
    """Thread work that never ends until released: a runaway parse."""

    def __init__(self) -> None:
        super().__init__("queue", interval=0.05, timeout=0.2)
        self.release = threading.Event()
        self.started = 0

    def _parse(self) -> None:
        self.started += 1
        self.release.wait()

    async def run(self) -> HealthComponent:
        await self.in_thread(self._parse)
        return self.component("healthy")


class Verbose(Check):
    """A component with thousands of long details, one of them a lone surrogate."""

    def __init__(self) -> None:
        super().__init__("verbose", interval=0.05, timeout=1.0)

    async def run(self) -> HealthComponent:
        details = {f"{n:04}" + "x" * 4000: "y" * 4000 for n in range(2000)}
        details["reason"] = "bad \udc80 text " + "z" * 5000
        return HealthComponent(name=self.name, state="degraded", details=details)


def _disk(metrics: Metrics) -> DiskCheck:
    return DiskCheck(
        ["/"],
        thresholds=DiskThresholds(0, 0, 0, 0),
        metrics=metrics,
        interval=0.05,
        timeout=0.5,
    )


async def test_a_stuck_parse_holds_one_thread_and_times_out_no_other_check() -> None:
    metrics = Metrics()
    stuck = StuckParse()
    monitor = parts.health_monitor([stuck, _disk(metrics)], metrics=metrics, service_name="t")
    monitor.start()
    try:

        def busy_reported() -> bool:
            queue = {c.name: c for c in monitor.components()}.get("queue")
            return queue is not None and "still working" in queue.details.get("error", "")

        await eventually(busy_reported, message="the next run finds the thread busy")
        components = {c.name: c for c in monitor.components()}
        assert components["disk"].state == "healthy", components["disk"]
        assert stuck.started == 1  # one thread, however many runs were abandoned

        stuck.release.set()

        def recovered() -> bool:
            return {c.name: c for c in monitor.components()}["queue"].state == "healthy"

        await eventually(recovered, message="healthy once the work ends")
    finally:
        stuck.release.set()
        await monitor.stop()


async def test_no_component_exceeds_its_share_of_the_answer() -> None:
    metrics = Metrics()
    monitor = parts.health_monitor([Verbose(), _disk(metrics)], metrics=metrics, service_name="t")
    await monitor.run_once()

    body = monitor.status_json(monitor.snapshot())

    assert len(body) < PROBE_BUDGET
    verbose = {c.name: c for c in monitor.components()}["verbose"]
    assert len(json.dumps(verbose.details)) <= DETAILS_BUDGET // 2
    assert int(verbose.details["details_omitted"]) > 1900
    assert verbose.details["reason"].startswith("bad \\udc80 text")  # kept first, escaped
    assert verbose.details["reason"].endswith("\u2026")  # cut
