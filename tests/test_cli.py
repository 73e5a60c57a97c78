"""The command line as a user runs it: real processes, real signals."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from market_data_core.telemetry import HealthStatus

from market_data_sidecar import __version__
from tests.support.helpers import SidecarProcess, eventually, run_cli, wait_until


def test_version_and_help() -> None:
    assert run_cli("--version").stdout.strip() == f"market-data-sidecar {__version__}"
    help_text = run_cli("--help").stdout
    for command in ("run", "check"):
        assert command in help_text


def test_invalid_setting_is_one_line_naming_it() -> None:
    result = run_cli("run", env={"SIDECAR_PORT": "abc"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "SIDECAR_PORT" in lines[0]
    assert "Traceback" not in result.stderr


def test_invalid_target_names_the_setting_and_never_echoes_secrets() -> None:
    targets = json.dumps([{"kind": "http", "url": "not a url", "secret": "whsec-hunter2"}])
    result = run_cli("check", env={"SIDECAR_TARGETS": targets})
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "SIDECAR_TARGETS[0]" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout


def test_check_prints_a_table_and_exits_by_state(tmp_path: Path) -> None:
    healthy = run_cli("check")
    assert healthy.returncode == 0, healthy.stderr
    assert "COMPONENT" in healthy.stdout
    assert "disk" in healthy.stdout
    assert "/:free_ratio" in healthy.stdout

    degraded = run_cli(
        "check",
        "--json",
        env={"SIDECAR_DISK_FREE_DEGRADED": "1", "SIDECAR_DISK_FREE_UNHEALTHY": "0"},
    )
    assert degraded.returncode == 1, degraded.stderr
    assert HealthStatus.model_validate_json(degraded.stdout).state == "degraded"

    missing = str(tmp_path / "gone")
    unhealthy = run_cli("check", "--json", "--disk-path", missing)
    assert unhealthy.returncode == 2
    status = HealthStatus.model_validate_json(unhealthy.stdout)
    assert status.components[0].details[f"{missing}:error"] == "path does not exist"


def test_config_file_is_below_environment_and_flags(tmp_path: Path) -> None:
    config = tmp_path / "sidecar.toml"
    config.write_text('service_name = "from-file"\ndisk_paths = ["/nonexistent-from-file"]\n')
    from_file = run_cli("check", "--json", "--config", str(config))
    status = HealthStatus.model_validate_json(from_file.stdout)
    assert status.service == "from-file"

    env = {"SIDECAR_SERVICE_NAME": "from-env", "SIDECAR_DISK_PATHS": '["/"]'}
    from_env = run_cli("check", "--json", "--config", str(config), env=env)
    assert HealthStatus.model_validate_json(from_env.stdout).service == "from-env"
    assert from_env.returncode == 0

    flag = run_cli("check", "--json", "--config", str(config), "--disk-path", "/", env=env)
    assert HealthStatus.model_validate_json(flag.stdout).state == "healthy"

    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    broken = run_cli("check", "--config", str(bad))
    assert broken.returncode == 2
    assert "--config" in broken.stderr


async def test_readyz_answers_a_core_health_status(
    sidecar_process: Callable[..., SidecarProcess],
) -> None:
    sidecar = sidecar_process()
    await sidecar.wait_listening()

    async def ready() -> str | None:
        status, body = await sidecar.get("/readyz")
        return body if status == 200 else None

    body = await eventually(ready, message="ready")
    status = HealthStatus.model_validate_json(body)
    assert status.service == "market-data-store"
    assert [c.name for c in status.components] == ["disk", "feedback"]


async def test_sigterm_turns_unready_then_exits_cleanly(
    sidecar_process: Callable[..., SidecarProcess],
) -> None:
    sidecar = sidecar_process({"SIDECAR_SHUTDOWN_GRACE": "1.5"})
    await sidecar.wait_listening()

    async def ready() -> bool:
        return (await sidecar.get("/readyz"))[0] == 200

    await eventually(ready, message="ready")
    sidecar.proc.send_signal(signal.SIGTERM)

    async def unready() -> bool:
        return (await sidecar.get("/readyz"))[0] == 503

    await eventually(unready, timeout=1.5, message="503 after SIGTERM")
    assert (await sidecar.get("/livez"))[0] == 200, "still alive while draining"
    wait_until(lambda: sidecar.proc.poll() is not None, timeout=15, message="exit")
    assert sidecar.proc.returncode == 0, sidecar.output()


async def test_json_logs(sidecar_process: Callable[..., SidecarProcess]) -> None:
    sidecar = sidecar_process({"SIDECAR_LOG_FORMAT": "json"})
    await sidecar.wait_listening()
    sidecar.proc.send_signal(signal.SIGINT)
    wait_until(lambda: sidecar.proc.poll() is not None, timeout=15, message="exit")
    assert sidecar.proc.returncode == 0
    records: list[dict[str, Any]] = [json.loads(line) for line in sidecar.output().splitlines()]
    messages = [record["message"] for record in records]
    assert any("listening on" in message for message in messages)
    assert all({"ts", "level", "message"} <= record.keys() for record in records)
