"""The health engine: scheduling, timeouts, damping, caching, liveness."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from market_data_core.telemetry import HealthComponent, HealthState, HealthStatus

from market_data_sidecar.checks import Check
from market_data_sidecar.settings import Settings
from tests.support import parts
from tests.support.helpers import eventually
from tests.support.sidecar import StartSidecar


class ScriptedCheck(Check):
    """Returns the states it is given, then repeats the last one."""

    def __init__(self, name: str, states: list[HealthState], interval: float = 0.05) -> None:
        super().__init__(name, interval=interval, timeout=1.0)
        self.states = list(states)
        self.runs = 0

    async def run(self) -> HealthComponent:
        state = self.states[min(self.runs, len(self.states) - 1)]
        self.runs += 1
        return self.component(state, run=self.runs)


class BlockingCheck(Check):
    """Blocks for `seconds` (a dependency that hangs)."""

    def __init__(self, name: str, seconds: float, timeout: float = 0.3) -> None:
        super().__init__(name, interval=0.1, timeout=timeout)
        self.seconds = seconds

    async def run(self) -> HealthComponent:
        await asyncio.sleep(self.seconds)
        return self.component("healthy")


class GatedCheck(Check):
    """Waits for a gate before answering healthy."""

    def __init__(self, name: str) -> None:
        super().__init__(name, interval=0.05, timeout=30.0)
        self.gate = asyncio.Event()

    async def run(self) -> HealthComponent:
        await self.gate.wait()
        return self.component("healthy")


class RaisingCheck(Check):
    async def run(self) -> HealthComponent:
        raise ConnectionRefusedError("connection refused by 10.0.0.1:5432")


class WedgedCheck(Check):
    """Ignores cancellation: the scheduler stops making progress."""

    def __init__(self) -> None:
        super().__init__("wedged", interval=0.05, timeout=0.05)
        self.release = asyncio.Event()

    async def run(self) -> HealthComponent:
        while not self.release.is_set():
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                continue
        return self.component("healthy")


async def timed_get(client: Any, path: str) -> tuple[int, float, Any]:
    started = time.perf_counter()
    response = await client.get(path)
    body = await response.read()
    return response.status, time.perf_counter() - started, body


async def component_state(client: Any, name: str) -> str | None:
    response = await client.get("/healthz")
    status = HealthStatus.model_validate_json(await response.read())
    return next((c.state for c in status.components if c.name == name), None)


@pytest.mark.exclusive
async def test_hanging_check_never_delays_probes(sidecar_client: StartSidecar) -> None:
    hanging = BlockingCheck("hangs", seconds=30.0, timeout=0.5)
    client = await sidecar_client(checks=[hanging, ScriptedCheck("steady", ["healthy"])])

    # While the hanging check is mid-run, probes answer from the cache at once.
    for _ in range(20):
        for path in ("/livez", "/readyz", "/healthz"):
            _, elapsed, _ = await timed_get(client, path)
            assert elapsed < 0.05, f"{path} took {elapsed * 1000:.1f} ms"

    await eventually(lambda: component_state(client, "hangs"), message="hangs reported")
    response = await client.get("/healthz")
    status = HealthStatus.model_validate_json(await response.read())
    hangs = next(c for c in status.components if c.name == "hangs")
    assert hangs.state == "unhealthy"
    assert hangs.details["error"] == "timed out after 0.5s"
    assert float(hangs.details["duration_ms"]) >= 500
    assert "checked_at" in hangs.details
    assert response.status == 503
    assert (await client.get("/readyz")).status == 503
    assert (await client.get("/livez")).status == 200


async def test_readiness_waits_for_the_first_round(sidecar_client: StartSidecar) -> None:
    gated = GatedCheck("slow-start")
    client = await sidecar_client(checks=[gated, ScriptedCheck("quick", ["healthy"])])
    await eventually(lambda: component_state(client, "quick"), message="quick reported")

    response = await client.get("/readyz")
    assert response.status == 503
    assert HealthStatus.model_validate_json(await response.read()).state == "unhealthy"
    verbose = await (await client.get("/readyz?verbose")).text()
    assert "[-]slow-start failed: no result yet" in verbose

    gated.gate.set()

    async def ready() -> bool:
        return (await client.get("/readyz")).status == 200

    await eventually(ready, message="ready after first round")


async def test_raising_check_is_unhealthy_with_error(sidecar_client: StartSidecar) -> None:
    client = await sidecar_client(checks=[RaisingCheck("database", interval=0.05, timeout=1.0)])
    await eventually(lambda: component_state(client, "database"), message="reported")
    status = HealthStatus.model_validate_json(await (await client.get("/healthz")).read())
    (database,) = status.components
    assert database.state == "unhealthy"
    assert database.details["error"].startswith("ConnectionRefusedError: connection refused")


async def test_aggregate_is_the_worst_state(sidecar_client: StartSidecar) -> None:
    client = await sidecar_client(
        checks=[ScriptedCheck("a", ["healthy"]), ScriptedCheck("b", ["degraded"])]
    )
    await eventually(lambda: component_state(client, "b"), message="reported")
    response = await client.get("/healthz")
    assert response.status == 200
    assert HealthStatus.model_validate_json(await response.read()).state == "degraded"
    # degraded stays ready by default
    assert (await client.get("/readyz")).status == 200


async def test_degraded_can_block_readiness(
    sidecar_client: StartSidecar, settings_factory: Callable[..., Settings]
) -> None:
    client = await sidecar_client(
        settings_factory(ready_when_degraded=False), checks=[ScriptedCheck("b", ["degraded"])]
    )
    await eventually(lambda: component_state(client, "b"), message="reported")
    assert (await client.get("/readyz")).status == 503
    assert (await client.get("/healthz")).status == 200


async def test_flap_damping_needs_consecutive_results() -> None:
    # healthy, one blip, healthy, a real outage, a recovery.
    script: list[HealthState] = ["healthy", "unhealthy", "healthy"]
    script += ["unhealthy", "unhealthy", "unhealthy", "healthy", "healthy", "healthy", "healthy"]
    check = ScriptedCheck("flappy", script)
    monitor = parts.health_monitor([check], service_name="store", rise=3, fall=2)
    reported = [(await monitor.run_once()).components[0] for _ in script]

    assert [c.state for c in reported] == [
        "healthy",
        "healthy",  # a single blip does not flip the state
        "healthy",
        "healthy",  # first failure of the outage
        "unhealthy",  # second consecutive failure: fall=2
        "unhealthy",
        "unhealthy",  # first success
        "unhealthy",  # second success
        "healthy",  # third consecutive success: rise=3
        "healthy",
    ]
    assert reported[1].details["observed_state"] == "unhealthy"
    assert reported[7].details["streak"] == "2"
    assert "observed_state" not in reported[8].details


async def test_exclude_leaves_a_component_out_of_the_aggregate(
    sidecar_client: StartSidecar,
) -> None:
    client = await sidecar_client(
        checks=[ScriptedCheck("disk", ["healthy"]), ScriptedCheck("database", ["unhealthy"])]
    )
    await eventually(lambda: component_state(client, "database"), message="reported")
    assert (await client.get("/healthz")).status == 503
    response = await client.get("/healthz?exclude=database")
    assert response.status == 200
    status = HealthStatus.model_validate_json(await response.read())
    assert status.state == "healthy"
    assert {c.name for c in status.components} == {"disk", "database"}

    text = await (await client.get("/healthz?verbose&exclude=database&exclude=nope")).text()
    lines = text.splitlines()
    assert "[+]disk ok" in lines
    assert "[+]database excluded: ok" in lines
    assert any(line.startswith("warn: some health checks cannot be excluded") for line in lines)
    assert lines[-1] == "healthz check passed"

    text = await (await client.get("/healthz?verbose")).text()
    assert "[-]database failed" in text
    assert text.splitlines()[-1] == "healthz check failed"


async def test_liveness_fails_when_the_scheduler_is_wedged(
    sidecar_client: StartSidecar, settings_factory: Callable[..., Settings]
) -> None:
    wedged = WedgedCheck()
    client = await sidecar_client(settings_factory(liveness_intervals=2), checks=[wedged])
    try:
        assert (await client.get("/livez")).status == 200

        async def dead() -> bool:
            return (await client.get("/livez")).status == 503

        await eventually(dead, timeout=5, message="livez fails")
        assert "stalled" in await (await client.get("/livez")).text()
    finally:
        wedged.release.set()


async def test_unknown_route_is_a_json_404(sidecar_client: StartSidecar) -> None:
    client = await sidecar_client(checks=[ScriptedCheck("a", ["healthy"])])
    response = await client.get("/nope")
    assert response.status == 404
    assert (await response.json())["error"] == "Not Found"
    response = await client.post("/readyz")
    assert response.status == 405
    assert "GET" in response.headers["Allow"]


async def test_probe_bodies_are_serialized_once_per_change() -> None:
    check = ScriptedCheck("steady", ["healthy", "degraded"])
    monitor = parts.health_monitor([check], service_name="store")
    first = await monitor.run_once()
    body = monitor.status_json(monitor.snapshot())
    assert monitor.status_json(monitor.snapshot()) is body, "unchanged status: cached bytes"
    assert HealthStatus.model_validate_json(body) == first

    second = await monitor.run_once()
    changed = monitor.status_json(monitor.snapshot())
    assert changed != body
    assert HealthStatus.model_validate_json(changed).state == second.state == "degraded"
    excluded = monitor.snapshot(exclude=["steady"])
    assert HealthStatus.model_validate_json(monitor.status_json(excluded)).state == "healthy"
