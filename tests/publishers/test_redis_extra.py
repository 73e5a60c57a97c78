"""Without redis-py installed, a Redis target stops start-up with one line naming the extra."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.helpers import free_port, run_cli


@pytest.mark.parametrize("kind", ["redis-pubsub", "redis-stream"])
def test_redis_target_without_redis_py_exits_2_naming_the_extra(tmp_path: Path, kind: str) -> None:
    # `sitecustomize` runs before the program: with `None` in `sys.modules`, every
    # `import redis` raises ModuleNotFoundError, exactly as when it is not installed.
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['redis'] = None\n")
    env = {
        "PYTHONPATH": str(tmp_path),
        "SIDECAR_TARGETS": json.dumps([{"kind": kind, "url": "redis://:pw@127.0.0.1:6379/0"}]),
        "SIDECAR_PORT": str(free_port()),
    }
    probe = subprocess.run(
        [sys.executable, "-c", "import redis"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
    )
    assert "ModuleNotFoundError" in probe.stderr

    result = run_cli("run", env=env)

    assert result.returncode == 2
    [line] = (result.stdout + result.stderr).strip().splitlines()
    assert line == (
        f"market-data-sidecar: invalid configuration: SIDECAR_TARGETS[0]: kind {kind!r} "
        "needs redis-py: pip install 'market-data-sidecar[redis]'"
    )


def test_http_targets_alone_never_import_redis() -> None:
    """The kind-to-factory map imports a publisher's module only for a configured kind."""
    program = (
        "import sys\n"
        "from market_data_sidecar.wiring import build_publishers\n"
        "from market_data_sidecar.settings import Settings\n"
        "targets = [{'kind': 'http', 'url': 'http://127.0.0.1:9/hook'}]\n"
        "[publisher] = build_publishers(Settings(targets=targets))\n"
        "print(type(publisher).__name__, 'redis' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["HttpPublisher", "False"]
