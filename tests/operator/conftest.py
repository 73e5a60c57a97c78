"""Fixtures for the operator-facing surface: checks with chosen results, Chromium."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from market_data_core.telemetry import HealthComponent, HealthState

from market_data_sidecar.checks import Check
from tests.support.installers import ci_tool

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "test-artifacts"
CHROMIUM_TIMEOUT = 45.0
#: apt-get update and install of chromium and its dependencies (~30 s here).
CHROMIUM_INSTALL_TIMEOUT = 600


class FixedCheck(Check):
    """A check whose result the test chooses: the state and the exact details."""

    def __init__(self, name: str, state: HealthState, details: Mapping[str, str]) -> None:
        super().__init__(name, interval=0.2, timeout=1.0)
        self.state: HealthState = state
        self.details = dict(details)

    async def run(self) -> HealthComponent:
        return HealthComponent(name=self.name, state=self.state, details=self.details)


@dataclass(frozen=True)
class Chromium:
    """Debian's headless Chromium, started the way this machine allows (no network)."""

    binary: str

    async def run(self, url: str, *args: str) -> str:
        with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
            proc = await asyncio.create_subprocess_exec(
                self.binary,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                *args,
                url,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            try:
                async with asyncio.timeout(CHROMIUM_TIMEOUT):
                    stdout, stderr = await proc.communicate()
            except TimeoutError:
                proc.kill()
                await proc.wait()
                raise AssertionError(
                    f"chromium did not finish within {CHROMIUM_TIMEOUT}s"
                ) from None
        if proc.returncode != 0:
            raise AssertionError(f"chromium exited {proc.returncode}: {stderr.decode()[-2000:]}")
        return stdout.decode()

    async def dump_dom(self, url: str) -> str:
        return await self.run(url, "--dump-dom")

    async def screenshot(self, url: str, path: Path, *, height: int = 900) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        await self.run(
            url, f"--screenshot={path}", f"--window-size=1200,{height}", "--hide-scrollbars"
        )
        assert path.stat().st_size > 0, f"no screenshot written to {path}"


def installed_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def install_chromium() -> str:
    """Debian's chromium through the installer CI uses (`.ci/tools.sh chromium`, apt as
    root); a failure fails the tests: skipping would let a fresh machine pass without
    ever running them."""
    ci_tool(
        "chromium",
        timeout=CHROMIUM_INSTALL_TIMEOUT,
        what="chromium (apt-get install chromium chromium-driver, as root)",
    )
    binary = installed_chromium()
    if binary is None:
        pytest.fail("`.ci/tools.sh chromium` succeeded but no chromium is on PATH")
    return binary


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The first test that needs Chromium installs it: give it the time to. Which test is
    first depends on the worker that runs it, so each may be."""
    if installed_chromium() is not None:
        return
    for item in items:
        if "chromium" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.timeout(CHROMIUM_INSTALL_TIMEOUT + CHROMIUM_TIMEOUT + 60))


@pytest.fixture(scope="session")
def chromium() -> Chromium:
    return Chromium(installed_chromium() or install_chromium())


@pytest.fixture
def artifacts() -> Path:
    """Where tests keep what a person may want to look at (gitignored)."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
