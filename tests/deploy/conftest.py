"""Rendered manifests of the Helm chart, loaded once per session.

Where the manifests come from, in order:

1. `$RENDERED_DIR/<name>.yaml` when RENDERED_DIR is set (.ci/deploy-checks.sh sets
   it right after rendering);
2. a fresh `helm template` with the helm binary at `$HELM_BIN` or `.cache/helm/helm`
   (.ci/deploy-checks.sh downloads it);
3. without helm, the last output in `.cache/rendered/`.

Tests skip only when there is no helm binary and nothing rendered.
"""

from __future__ import annotations

import base64
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.installers import ci_tool

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "charts" / "market-data-sidecar"
FULL_VALUES = REPO_ROOT / "examples" / "values-full.yaml"
DEFAULT_HELM = REPO_ROOT / ".cache" / "helm" / "helm"
DEFAULT_RENDERED_DIR = REPO_ROOT / ".cache" / "rendered"
RELEASE = "mds"
KUBE_VERSION = "1.29.0"
HELM_TIMEOUT = 40

# Secret values written into the chart's Secret by the "inline-secrets" render;
# distinctive so that a leak into any other document is found by a text search.
INLINE_DATABASE_URL = "postgresql://sidecar:FAKE-DB-PASSWORD-e41c77@timescaledb:5432/market"
INLINE_TOKEN = "FAKE-BEARER-TOKEN-3d90b2"
INLINE_SECRET_ARGS = (
    "--set",
    "secrets.existingSecret=",
    "--set",
    f"secrets.databaseUrl={INLINE_DATABASE_URL}",
    "--set",
    f"secrets.token={INLINE_TOKEN}",
)


class HelmError(Exception):
    """`helm template` exited non-zero; the message is its stderr."""


@dataclass(frozen=True)
class Helm:
    binary: Path
    home: Path

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "HELM_CACHE_HOME": str(self.home / "cache"),
            "HELM_CONFIG_HOME": str(self.home / "config"),
            "HELM_DATA_HOME": str(self.home / "data"),
        }
        return subprocess.run(
            [str(self.binary), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=HELM_TIMEOUT,
            check=False,
        )

    def template(
        self, *args: str, chart: Path = CHART_DIR, kube_version: str = KUBE_VERSION
    ) -> Manifests:
        result = self.run("template", RELEASE, str(chart), "--kube-version", kube_version, *args)
        if result.returncode != 0:
            raise HelmError(result.stderr.strip())
        return Manifests.parse(result.stdout)


@dataclass(frozen=True)
class Manifests:
    """The documents of one `helm template` output."""

    documents: tuple[dict[str, Any], ...]

    @classmethod
    def parse(cls, text: str) -> Manifests:
        return cls(tuple(doc for doc in yaml.safe_load_all(text) if doc))

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [doc for doc in self.documents if doc["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        found = self.of_kind(kind)
        assert len(found) == 1, f"expected one {kind}, found {len(found)}"
        return found[0]

    @property
    def pod_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.one("Deployment")["spec"]["template"]["spec"]
        return spec

    def all_containers(self) -> Iterator[dict[str, Any]]:
        yield from self.pod_spec.get("initContainers", [])
        yield from self.pod_spec["containers"]

    def container(self, name: str) -> dict[str, Any]:
        found = [c for c in self.all_containers() if c["name"] == name]
        assert len(found) == 1, f"expected one container {name!r}, found {len(found)}"
        return found[0]

    @property
    def sidecar(self) -> dict[str, Any]:
        return self.container("sidecar")

    @property
    def store(self) -> dict[str, Any]:
        return self.container("store")

    def secret_data(self, name: str) -> dict[str, str]:
        """A rendered Secret's data, decoded."""
        for secret in self.of_kind("Secret"):
            if secret["metadata"]["name"] == name:
                data = {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
                data.update(secret.get("stringData", {}))
                return data
        raise KeyError(f"no Secret named {name!r} rendered")


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A container's env entries by name; duplicated names fail the test."""
    entries = container.get("env", [])
    names = [entry["name"] for entry in entries]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    assert not duplicates, f"{container['name']}: env names set twice: {duplicates}"
    return {entry["name"]: entry for entry in entries}


def env_value(container: dict[str, Any], name: str) -> str:
    entry = env_of(container).get(name)
    assert entry is not None, f"{container['name']}: no env var {name}"
    assert "value" in entry, f"{container['name']}: {name} has no plain value: {entry}"
    value: str = entry["value"]
    return value


def port_number(container: dict[str, Any], port: int | str) -> int:
    """Resolves a probe port (number or name) against the container's own ports."""
    if isinstance(port, int):
        return port
    names = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
    assert port in names, f"{container['name']}: probe port {port!r} is not one of {names}"
    number: int = names[port]
    return number


def helm_path() -> Path:
    return Path(os.environ.get("HELM_BIN") or DEFAULT_HELM)


def helm_binary() -> Path | None:
    """helm from HELM_BIN or the cache; else fetched by the installer CI uses (.ci/tools.sh)."""
    candidate = helm_path()
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return candidate
    return Path(ci_tool("helm", timeout=300, what="helm"))


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    binary = helm_binary()
    if binary is None:
        pytest.fail(f"no helm binary at {helm_path()} (run .ci/deploy-checks.sh to fetch it)")
    return Helm(binary, tmp_path_factory.mktemp("helm-home"))


def _rendered(name: str, *args: str, tmp_path_factory: pytest.TempPathFactory) -> Manifests:
    explicit_dir = os.environ.get("RENDERED_DIR")
    if explicit_dir:
        path = Path(explicit_dir) / f"{name}.yaml"
        if path.is_file():
            return Manifests.parse(path.read_text(encoding="utf-8"))
    binary = helm_binary()
    if binary is not None:
        return Helm(binary, tmp_path_factory.mktemp("helm-home")).template(*args)
    fallback = DEFAULT_RENDERED_DIR / f"{name}.yaml"
    if fallback.is_file():
        return Manifests.parse(fallback.read_text(encoding="utf-8"))
    pytest.fail(f"no helm binary at {helm_path()} and no rendered {name}.yaml")


@pytest.fixture(scope="session")
def default_manifests(tmp_path_factory: pytest.TempPathFactory) -> Manifests:
    """The chart with its default values."""
    return _rendered("default", tmp_path_factory=tmp_path_factory)


@pytest.fixture(scope="session")
def full_manifests(tmp_path_factory: pytest.TempPathFactory) -> Manifests:
    """examples/values-full.yaml: native sidecar, targets, ServiceMonitor, existingSecret."""
    return _rendered("full", "-f", str(FULL_VALUES), tmp_path_factory=tmp_path_factory)


@pytest.fixture(scope="session")
def inline_secret_manifests(helm: Helm) -> Manifests:
    """The full values with the database URL and token inline instead of existingSecret."""
    return helm.template("-f", str(FULL_VALUES), *INLINE_SECRET_ARGS)


@pytest.fixture(scope="session", params=["default", "full"])
def manifests(
    request: pytest.FixtureRequest, default_manifests: Manifests, full_manifests: Manifests
) -> Manifests:
    """Each of the two renders the CI script validates."""
    return default_manifests if request.param == "default" else full_manifests


@pytest.fixture(scope="session")
def full_values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load(FULL_VALUES.read_text(encoding="utf-8"))
    return values


@pytest.fixture(scope="session")
def default_values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((CHART_DIR / "values.yaml").read_text(encoding="utf-8"))
    return values
