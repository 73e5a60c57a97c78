"""Kubernetes probes follow the sidecar: readiness /readyz, liveness and startup /livez."""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import Helm, Manifests, env_value, port_number

pytestmark = pytest.mark.timeout(60)

PROBES = ("startupProbe", "livenessProbe", "readinessProbe")


def sidecar_port(manifests: Manifests) -> int:
    (port,) = [p["containerPort"] for p in manifests.sidecar["ports"] if p["name"] == "sidecar"]
    assert env_value(manifests.sidecar, "SIDECAR_PORT") == str(port)
    return int(port)


@pytest.mark.parametrize(
    ("probe", "path"),
    [("readinessProbe", "/readyz"), ("livenessProbe", "/livez"), ("startupProbe", "/livez")],
)
def test_sidecar_probes_hit_the_sidecar_port_and_path(
    manifests: Manifests, probe: str, path: str
) -> None:
    sidecar = manifests.sidecar
    assert probe in sidecar, f"sidecar has no {probe}"
    http_get = sidecar[probe]["httpGet"]
    assert http_get["path"] == path
    assert port_number(sidecar, http_get["port"]) == sidecar_port(manifests)


def test_sidecar_startup_probe_allows_a_slow_start(manifests: Manifests) -> None:
    startup = manifests.sidecar["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30


def test_store_readiness_follows_the_sidecar_by_default(default_manifests: Manifests) -> None:
    store = default_manifests.store
    http_get = store["readinessProbe"]["httpGet"]
    assert http_get["path"] == "/readyz"
    # By number: the store container has no port named like the sidecar's.
    assert http_get["port"] == sidecar_port(default_manifests)
    assert "livenessProbe" not in store


def test_store_probes_can_be_custom(full_manifests: Manifests, full_values: dict[str, Any]) -> None:
    store = full_manifests.store
    assert store["livenessProbe"] == full_values["store"]["livenessProbe"]
    assert store["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert "startupProbe" not in store


def test_store_liveness_and_startup_can_point_at_the_sidecar(helm: Helm) -> None:
    rendered = helm.template(
        "--set",
        "store.probes.liveness=sidecar,store.probes.startup=sidecar,store.probes.readiness=none",
    )
    store = rendered.store
    assert "readinessProbe" not in store
    for probe in ("livenessProbe", "startupProbe"):
        assert store[probe]["httpGet"] == {"path": "/livez", "port": sidecar_port(rendered)}


def _probe_ports(container: dict[str, Any]) -> list[tuple[str, int | str]]:
    ports = []
    for probe in PROBES:
        handler = container.get(probe)
        if not handler:
            continue
        for action in ("httpGet", "tcpSocket", "grpc"):
            if action in handler:
                ports.append((probe, handler[action]["port"]))
    return ports


def test_probe_ports_exist(manifests: Manifests) -> None:
    """A named probe port is one of the container's own ports; a numbered one is
    a port some container in the pod declares."""
    declared = {p["containerPort"] for c in manifests.all_containers() for p in c.get("ports", [])}
    checked = 0
    for container in manifests.all_containers():
        for probe, port in _probe_ports(container):
            number = port_number(container, port)
            assert number in declared, f"{container['name']}.{probe}: nothing listens on {number}"
            checked += 1
    assert checked >= 4


def test_probes_follow_a_changed_sidecar_port(helm: Helm) -> None:
    rendered = helm.template("--set", "sidecar.port=9100")
    assert sidecar_port(rendered) == 9100
    assert rendered.store["readinessProbe"]["httpGet"]["port"] == 9100
    for probe in PROBES:
        assert port_number(rendered.sidecar, rendered.sidecar[probe]["httpGet"]["port"]) == 9100
