"""`market-data-sidecar status` against running sidecars: output and exit codes."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from typing import Any

from market_data_sidecar.server.probes import MONITOR
from market_data_sidecar.settings import Settings
from tests.operator.conftest import FixedCheck
from tests.support.helpers import SidecarProcess, eventually, free_port
from tests.support.sidecar import StartSidecar, make_settings

CLI = [sys.executable, "-m", "market_data_sidecar", "status"]


async def status_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run the CLI without blocking the loop that serves the in-process sidecar."""
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        *args,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        stdout, stderr = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, stdout.decode(), stderr.decode()


async def started(sidecar_client: StartSidecar, settings: Settings, **kwargs: Any) -> str:
    """Start an in-process sidecar; its URL once every check has reported."""
    client = await sidecar_client(settings, **kwargs)
    monitor = client.app[MONITOR]
    await eventually(lambda: monitor.first_round_done, message="first round of checks")
    return str(client.make_url("")).rstrip("/")


async def test_healthy_sidecar_exits_0_and_prints_components(
    sidecar_client: StartSidecar,
) -> None:
    url = await started(sidecar_client, make_settings())
    code, out, err = await status_cli("--url", url)
    assert code == 0, err
    assert out.startswith("market-data-store ")
    assert ": HEALTHY" in out.splitlines()[0]
    assert any(line.startswith("disk") and "healthy" in line for line in out.splitlines())
    assert "\x1b[" not in out  # not a terminal: no colour


async def test_degraded_and_unhealthy_set_the_exit_code(
    sidecar_client: StartSidecar,
) -> None:
    degraded = await started(
        sidecar_client,
        make_settings(),
        checks=[FixedCheck("queue", "degraded", {"reason": "bars-coord at 85% of capacity"})],
    )
    unhealthy = await started(
        sidecar_client,
        make_settings(),
        checks=[FixedCheck("database", "unhealthy", {"error": "connection refused"})],
    )
    (d_code, d_out, _), (u_code, u_out, _) = await asyncio.gather(
        status_cli("--url", degraded), status_cli("--url", unhealthy)
    )
    assert d_code == 1
    assert "bars-coord at 85% of capacity" in d_out
    # /healthz answers 503 when unhealthy; the body is still read and shown.
    assert u_code == 2
    assert any(
        line.startswith("database") and "unhealthy" in line and "connection refused" in line
        for line in u_out.splitlines()
    )


async def test_unreachable_sidecar_is_one_clear_line_and_exit_3() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, out, err = await status_cli("--url", url)
    assert code == 3
    assert out == ""
    assert err.strip() == f"market-data-sidecar: cannot reach {url}: connection refused"


async def test_a_port_that_is_not_a_sidecar_is_exit_3(sidecar_client: StartSidecar) -> None:
    url = await started(sidecar_client, make_settings())
    code, _, err = await status_cli("--url", url + "/metrics")
    assert code == 3
    assert len(err.strip().splitlines()) == 1
    assert "did not answer a health status" in err


async def test_default_url_is_this_pods_sidecar_and_bad_settings_do_not_matter(
    sidecar_process: Callable[..., SidecarProcess],
) -> None:
    process = sidecar_process(
        {"SIDECAR_DISK_FREE_DEGRADED": "0.999", "SIDECAR_DISK_FREE_UNHEALTHY": "0.0"}
    )
    await process.wait_listening()
    env = {"SIDECAR_PORT": str(process.port)}

    async def reports_degraded() -> bool:
        code, _, _ = await status_cli(env=env)
        return code == 1

    await eventually(reports_degraded, message="status exits 1 (disk degraded)")
    code, out, _ = await status_cli(env=env)
    assert code == 1
    assert any(line.startswith("disk") and "degraded" in line for line in out.splitlines())

    # Settings that would stop `run` do not stop `status` from reading another sidecar.
    code, out, _ = await status_cli(
        "--url", process.url, env={"SIDECAR_CHECK_INTERVAL": "-1", "SIDECAR_PORT": "x"}
    )
    assert code == 1
    assert "DEGRADED" in out
