"""The queue check against a real store metrics server: healthy, failing and hanging."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import pytest
from loguru import logger
from market_data_core.telemetry import BackpressureLevel

from market_data_sidecar.checks.exposition import parse
from market_data_sidecar.checks.queue import CoordinatorSample, QueueCheck
from market_data_sidecar.feedback.watermarks import QueueSample, level_for
from market_data_sidecar.metrics import Metrics
from tests.support.helpers import eventually, free_port
from tests.support.probes import probing
from tests.support.sidecar import StartSidecar, make_settings
from tests.support.store import Coordinator, StoreMetrics

CAPACITY = 1000
TIMEOUT = 0.5


def queue_check(url: str, metrics: Metrics | None = None, **overrides: Any) -> QueueCheck:
    options: dict[str, Any] = {
        "capacities": {"ticks-coord": 2000},
        "default_capacity": CAPACITY,
        "low_watermark": 0.5,
        "high_watermark": 0.8,
        "metrics": metrics or Metrics(),
        "interval": 0.2,
        "timeout": TIMEOUT,
        **overrides,
    }
    return QueueCheck(url, **options)


@pytest.fixture
async def check(store_metrics: StoreMetrics) -> Any:
    check = queue_check(store_metrics.url)
    yield check
    await check.close()


# -- levels, as the store computes them --------------------------------------------------------


@pytest.mark.parametrize(
    ("depth", "level"),
    [
        (0, BackpressureLevel.ok),
        (500, BackpressureLevel.ok),  # at the low watermark: not above it
        (501, BackpressureLevel.soft),
        (799, BackpressureLevel.soft),
        (800, BackpressureLevel.hard),  # at the high watermark
        (1000, BackpressureLevel.hard),
        (1500, BackpressureLevel.hard),  # a store may report more than configured
    ],
)
def test_level_for_follows_the_store_watermarks(depth: int, level: BackpressureLevel) -> None:
    assert level_for(depth, 1000, 0.5, 0.8) is level


def test_parse_reads_coordinator_series_and_sums_drops() -> None:
    store = StoreMetrics()
    store.coordinators = {
        "bars-coord": Coordinator(depth=7, workers_alive=3, circuit_state=2, dropped={"a": 2}),
        "ticks-coord": Coordinator(depth=0, dropped={"full": 4, "closed": 1}),
    }
    series = parse(store.exposition().decode())
    assert series.depth == {"bars-coord": 7, "ticks-coord": 0}
    assert series.workers_alive == {"bars-coord": 3, "ticks-coord": 4}
    assert series.circuit_state == {"bars-coord": 2, "ticks-coord": 0}
    assert series.dropped == {"bars-coord": 2.0, "ticks-coord": 5.0}


# -- verdicts --------------------------------------------------------------------------------


async def test_healthy_coordinators_and_their_samples(
    store_metrics: StoreMetrics, check: QueueCheck
) -> None:
    store_metrics.coordinators["bars-coord"].depth = 600  # soft: still healthy
    received: list[Sequence[QueueSample]] = []
    check.add_listener(received.append)

    result = await check.run()

    assert result.state == "healthy", result.details
    d = result.details
    assert d["coordinators"] == "2"
    assert d["levels"] == "hard=0,soft=1,ok=1"
    assert d["bars-coord:depth"] == "600"
    assert d["bars-coord:capacity"] == "1000"
    assert d["bars-coord:utilization"] == "0.6"
    assert d["bars-coord:level"] == "soft"
    assert d["bars-coord:workers_alive"] == "4"
    assert d["bars-coord:circuit"] == "closed"
    assert d["ticks-coord:capacity"] == "2000"  # SIDECAR_QUEUE_CAPACITIES wins
    assert [list(samples) for samples in received] == [
        [
            CoordinatorSample("bars-coord", 600, 1000, 0.6, BackpressureLevel.soft, 4, 0),
            CoordinatorSample("ticks-coord", 0, 2000, 0.0, BackpressureLevel.ok, 4, 0),
        ]
    ]


async def test_above_the_high_watermark_is_degraded(
    store_metrics: StoreMetrics, check: QueueCheck
) -> None:
    store_metrics.coordinators["bars-coord"].depth = 850
    result = await check.run()
    assert result.state == "degraded"
    assert result.details["bars-coord:level"] == "hard"
    assert result.details["reason"] == "bars-coord at 85% of capacity"


async def test_open_circuit_is_unhealthy(store_metrics: StoreMetrics, check: QueueCheck) -> None:
    store_metrics.coordinators["ticks-coord"].circuit_state = 1
    result = await check.run()
    assert result.state == "unhealthy"
    assert result.details["ticks-coord:circuit"] == "open"
    assert "ticks-coord circuit open" in result.details["reason"]


async def test_half_open_circuit_is_degraded(
    store_metrics: StoreMetrics, check: QueueCheck
) -> None:
    store_metrics.coordinators["ticks-coord"].circuit_state = 2
    result = await check.run()
    assert result.state == "degraded"
    assert result.details["ticks-coord:circuit"] == "half-open"


async def test_no_live_workers_is_unhealthy(store_metrics: StoreMetrics, check: QueueCheck) -> None:
    store_metrics.coordinators["bars-coord"].workers_alive = 0
    result = await check.run()
    assert result.state == "unhealthy"
    assert "bars-coord has no live workers" in result.details["reason"]


async def test_new_drops_degrade_until_they_stop(
    store_metrics: StoreMetrics, check: QueueCheck
) -> None:
    bars = store_metrics.coordinators["bars-coord"]
    bars.dropped = {"queue_full": 5}
    first = await check.run()
    assert first.state == "healthy"  # drops before the sidecar looked are history
    assert first.details["bars-coord:dropped_total"] == "5"
    bars.dropped = {"queue_full": 8}
    second = await check.run()
    assert second.state == "degraded"
    assert second.details["reason"] == "bars-coord dropped 3 items since last check"
    assert (await check.run()).state == "healthy"


async def test_no_coordinator_series_is_degraded(
    store_metrics: StoreMetrics, check: QueueCheck
) -> None:
    store_metrics.coordinators = {}
    result = await check.run()
    assert result.state == "degraded"
    assert "no mds_coord_queue_depth series" in result.details["reason"]


# -- the store failing ------------------------------------------------------------------------


async def test_http_error_is_unhealthy(store_metrics: StoreMetrics, check: QueueCheck) -> None:
    store_metrics.mode = "error"
    result = await check.run()
    assert result.state == "unhealthy"
    assert result.details["error"] == "store metrics answered HTTP 500"


async def test_garbage_is_unhealthy(store_metrics: StoreMetrics, check: QueueCheck) -> None:
    store_metrics.mode = "garbage"
    result = await check.run()
    assert result.state == "unhealthy"
    assert result.details["error"].startswith("store metrics are not a Prometheus exposition")


async def test_a_large_exposition_is_read_whole(store_metrics: StoreMetrics) -> None:
    """Thousands of coordinators: the body arrives in many chunks."""
    store_metrics.coordinators = {f"coord-{n:04}": Coordinator(depth=n % 500) for n in range(2000)}
    assert len(store_metrics.exposition()) > 256 * 1024
    # The test's server renders that slowly, on the test's own loop: give it time.
    check = queue_check(store_metrics.url, timeout=10)
    try:
        result = await check.run()
    finally:
        await check.close()
    assert result.state == "healthy", result.details
    assert result.details["coordinators"] == "2000"
    # The fullest queues in detail (depth 499 of 1000), every one in the gauges.
    assert result.details["coordinators_detailed"] == "3 worst of 2000"
    assert result.details["coord-0499:depth"] == "499"
    depth = check.metrics.registry.get_sample_value
    assert depth("sidecar_queue_depth", {"coordinator": "coord-0001"}) == 1


async def test_an_oversized_body_is_refused(store_metrics: StoreMetrics, check: QueueCheck) -> None:
    store_metrics.mode = "huge"
    result = await check.run()
    assert result.state == "unhealthy"
    assert result.details["error"] == "store metrics larger than 8388608 bytes"


async def test_unreachable_store_is_unhealthy() -> None:
    check = queue_check(f"http://127.0.0.1:{free_port()}/metrics")
    try:
        result = await check.run()
    finally:
        await check.close()
    assert result.state == "unhealthy"
    assert result.details["error"] == "store metrics unreachable: Connection refused"


async def test_hanging_store_is_bounded_by_the_timeout(
    store_metrics: StoreMetrics, check: QueueCheck
) -> None:
    store_metrics.mode = "hang"
    started = time.monotonic()
    result = await check.run()
    assert time.monotonic() - started < TIMEOUT + 0.25
    assert result.state == "unhealthy"
    assert result.details["error"] == f"store metrics did not answer within {TIMEOUT:g}s"


async def test_failures_remove_stale_series_and_recovery_restores_them(
    store_metrics: StoreMetrics,
) -> None:
    metrics = Metrics()
    check = queue_check(store_metrics.url, metrics)

    def utilization(coordinator: str) -> float | None:
        return metrics.registry.get_sample_value(
            "sidecar_queue_utilization_ratio", {"coordinator": coordinator}
        )

    try:
        await check.run()
        assert utilization("bars-coord") == 0.1
        store_metrics.mode = "error"
        await check.run()
        assert utilization("bars-coord") is None
        store_metrics.mode = "ok"
        del store_metrics.coordinators["ticks-coord"]
        assert (await check.run()).state == "healthy"
        assert utilization("bars-coord") == 0.1
        assert utilization("ticks-coord") is None
    finally:
        await check.close()


async def test_a_failing_listener_is_logged_and_others_still_called(
    store_metrics: StoreMetrics, check: QueueCheck
) -> None:
    def broken(samples: Sequence[QueueSample]) -> None:
        raise RuntimeError("listener bug")

    received: list[Sequence[QueueSample]] = []
    check.add_listener(broken)
    check.add_listener(received.append)
    messages: list[str] = []
    sink = logger.add(messages.append, level="ERROR")
    try:
        result = await check.run()
    finally:
        logger.remove(sink)
    assert result.state == "healthy"
    assert len(received) == 1
    assert any("listener" in m and "RuntimeError: listener bug" in m for m in messages)


async def test_listeners_hear_only_successful_scrapes(
    store_metrics: StoreMetrics, check: QueueCheck
) -> None:
    received: list[Sequence[QueueSample]] = []
    check.add_listener(received.append)
    store_metrics.mode = "garbage"
    await check.run()
    assert received == []
    store_metrics.mode = "ok"
    await check.run()
    assert len(received) == 1


async def test_session_is_reused_and_closed(store_metrics: StoreMetrics) -> None:
    check = queue_check(store_metrics.url)
    await check.run()
    session = check._session
    await check.run()
    assert check._session is session
    await check.close()
    assert session is not None
    assert session.closed


# -- through the sidecar ------------------------------------------------------------------------


@pytest.mark.exclusive
@pytest.mark.parametrize("fault", ["error", "garbage", "hang", "open-circuit", "no-workers"])
async def test_store_faults_make_the_sidecar_unready_then_recover(
    store_metrics: StoreMetrics, sidecar_client: StartSidecar, fault: str
) -> None:
    settings = make_settings(
        store_metrics_url=store_metrics.url, check_interval=0.2, check_timeout=TIMEOUT
    )
    client = await sidecar_client(settings)
    await eventually(lambda: _readiness_is(client, 200), message="ready first")

    async with probing(client) as probes:
        started = time.monotonic()
        _inject(store_metrics, fault)
        await eventually(lambda: _readiness_is(client, 503), timeout=0.2 + TIMEOUT + 1.0)
        assert time.monotonic() - started < 0.2 + TIMEOUT + 1.0
        async with client.get("/healthz?verbose") as response:
            assert "[-]queue failed: " in await response.text()
        _repair(store_metrics)
        await eventually(lambda: _readiness_is(client, 200), message="recovered")
    assert probes.statuses("/livez") == {200}
    assert probes.slowest() < 0.1


def _inject(store: StoreMetrics, fault: str) -> None:
    if fault == "open-circuit":
        store.coordinators["bars-coord"].circuit_state = 1
    elif fault == "no-workers":
        store.coordinators["bars-coord"].workers_alive = 0
    else:
        store.mode = fault


def _repair(store: StoreMetrics) -> None:
    store.mode = "ok"
    store.coordinators["bars-coord"] = Coordinator(depth=100)
    store.released.set()  # let a hanging request go


async def _readiness_is(client: Any, status: int) -> bool:
    async with client.get("/readyz") as response:
        return bool(response.status == status)
