"""The store feeds the sidecar over localhost, and both agree on queue capacity."""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import Helm, Manifests, env_value

pytestmark = pytest.mark.timeout(60)


def _container_port(container: dict[str, Any], name: str) -> int:
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == name]
    return int(port)


def test_store_broadcasts_feedback_to_the_sidecar(manifests: Manifests) -> None:
    sidecar_port = _container_port(manifests.sidecar, "sidecar")
    assert env_value(manifests.store, "MDS_FB_ENABLE_HTTP_BROADCAST") == "true"
    assert (
        env_value(manifests.store, "MDS_FB_HTTP_ENDPOINT")
        == f"http://127.0.0.1:{sidecar_port}/feedback"
    )


def test_capacity_is_equal_on_both_containers(manifests: Manifests) -> None:
    store_capacity = env_value(manifests.store, "MDS_COORDINATOR_CAPACITY")
    assert store_capacity == env_value(manifests.sidecar, "SIDECAR_QUEUE_CAPACITY")
    assert int(store_capacity) > 0


def test_capacity_comes_from_the_values(
    full_manifests: Manifests, full_values: dict[str, Any], default_values: dict[str, Any]
) -> None:
    assert env_value(full_manifests.store, "MDS_COORDINATOR_CAPACITY") == str(
        full_values["coordinatorCapacity"]
    )
    assert default_values["coordinatorCapacity"] == 10000


def test_sidecar_scrapes_the_store_metrics_on_localhost(manifests: Manifests) -> None:
    store_port = _container_port(manifests.store, "store")
    assert (
        env_value(manifests.sidecar, "SIDECAR_STORE_METRICS_URL")
        == f"http://127.0.0.1:{store_port}/metrics"
    )


def test_ports_and_capacity_follow_the_values(helm: Helm) -> None:
    rendered = helm.template(
        "--set", "sidecar.port=9100,store.port=9200,coordinatorCapacity=1500000"
    )
    assert env_value(rendered.store, "MDS_FB_HTTP_ENDPOINT") == "http://127.0.0.1:9100/feedback"
    assert (
        env_value(rendered.sidecar, "SIDECAR_STORE_METRICS_URL") == "http://127.0.0.1:9200/metrics"
    )
    assert env_value(rendered.store, "MDS_COORDINATOR_CAPACITY") == "1500000"
    assert env_value(rendered.sidecar, "SIDECAR_QUEUE_CAPACITY") == "1500000"
    ports = {p["name"]: p for p in rendered.one("Service")["spec"]["ports"]}
    assert ports["sidecar"]["port"] == 9100
    assert ports["store"]["port"] == 9200


def test_an_empty_store_metrics_url_turns_the_queue_check_off(helm: Helm) -> None:
    rendered = helm.template("--set", "sidecar.storeMetricsUrl=")
    assert env_value(rendered.sidecar, "SIDECAR_STORE_METRICS_URL") == ""


def test_service_exposes_the_store_and_the_sidecar(manifests: Manifests) -> None:
    service = manifests.one("Service")
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert set(ports) == {"store", "sidecar"}
    store_port = _container_port(manifests.store, "store")
    sidecar_port = _container_port(manifests.sidecar, "sidecar")
    assert ports["store"]["port"] == store_port
    assert ports["store"]["targetPort"] == "store"
    # A number: Services resolve named ports of native sidecars only from 1.32 on.
    assert ports["sidecar"]["port"] == sidecar_port
    assert ports["sidecar"]["targetPort"] == sidecar_port


def test_service_and_budget_select_the_pods(manifests: Manifests) -> None:
    pod_labels = manifests.one("Deployment")["spec"]["template"]["metadata"]["labels"]
    selectors = [
        manifests.one("Service")["spec"]["selector"],
        manifests.one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        manifests.one("Deployment")["spec"]["selector"]["matchLabels"],
    ]
    for selector in selectors:
        assert selector
        assert selector.items() <= pod_labels.items()


def test_service_monitor_scrapes_named_service_ports(full_manifests: Manifests) -> None:
    monitor = full_manifests.one("ServiceMonitor")
    service = full_manifests.one("Service")
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    endpoints = monitor["spec"]["endpoints"]
    assert {e["port"] for e in endpoints} == {"sidecar", "store"}
    for endpoint in endpoints:
        assert endpoint["port"] in service_ports
        assert endpoint["path"] == "/metrics"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= (
        service["metadata"]["labels"].items()
    )
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_no_service_monitor_by_default(default_manifests: Manifests) -> None:
    assert default_manifests.of_kind("ServiceMonitor") == []


def test_service_links_are_off(manifests: Manifests) -> None:
    # <SERVICE>_PORT variables from service links could collide with SIDECAR_ settings.
    assert manifests.pod_spec["enableServiceLinks"] is False
