"""Pod layout: where the sidecar runs, what it mounts, what the budget allows."""

from __future__ import annotations

import json
from typing import Any

import pytest

from .conftest import Helm, HelmError, Manifests, env_value

pytestmark = pytest.mark.timeout(60)


def names(containers: list[dict[str, Any]]) -> list[str]:
    return [c["name"] for c in containers]


def test_native_sidecar_is_a_restartable_init_container(full_manifests: Manifests) -> None:
    pod = full_manifests.pod_spec
    assert "sidecar" in names(pod["initContainers"])
    assert "sidecar" not in names(pod["containers"])
    assert names(pod["containers"]) == ["store"]
    (sidecar,) = [c for c in pod["initContainers"] if c["name"] == "sidecar"]
    assert sidecar["restartPolicy"] == "Always"
    # Kubernetes starts the store only once the sidecar's startup probe passed.
    assert sidecar["startupProbe"]["httpGet"]["path"] == "/livez"


def test_plain_sidecar_is_a_second_container(default_manifests: Manifests) -> None:
    pod = default_manifests.pod_spec
    assert names(pod["containers"]) == ["store", "sidecar"]
    assert "sidecar" not in names(pod.get("initContainers", []))
    assert "restartPolicy" not in default_manifests.sidecar


def test_native_sidecar_needs_kubernetes_1_29(helm: Helm) -> None:
    with pytest.raises(HelmError, match=r"nativeSidecar\.enabled needs Kubernetes >= 1\.29"):
        helm.template("--set", "nativeSidecar.enabled=true", kube_version="1.28.0")
    assert helm.template("--set", "nativeSidecar.enabled=true", kube_version="1.29.0")


def test_pre_stop_delay_only_in_plain_mode(helm: Helm) -> None:
    plain = helm.template("--set", "sidecar.preStopDelaySeconds=5")
    command = plain.sidecar["lifecycle"]["preStop"]["exec"]["command"]
    assert command[-1] == "import time; time.sleep(5)"
    native = helm.template(
        "--set", "sidecar.preStopDelaySeconds=5", "--set", "nativeSidecar.enabled=true"
    )
    assert "lifecycle" not in native.sidecar


def _mount(container: dict[str, Any], volume: str) -> dict[str, Any]:
    (mount,) = [m for m in container.get("volumeMounts", []) if m["name"] == volume]
    return dict(mount)


@pytest.mark.parametrize(("rendered", "values"), [("default", "default"), ("full", "full")])
def test_data_volume_is_read_only_in_the_sidecar_and_watched(
    request: pytest.FixtureRequest, rendered: str, values: str
) -> None:
    manifests: Manifests = request.getfixturevalue(f"{rendered}_manifests")
    data = request.getfixturevalue(f"{values}_values")["dataVolume"]
    sidecar_mount = _mount(manifests.sidecar, data["name"])
    assert sidecar_mount["readOnly"] is True
    assert sidecar_mount["mountPath"] == data["sidecarMountPath"]
    store_mount = _mount(manifests.store, data["name"])
    assert store_mount.get("readOnly", False) is False
    assert store_mount["mountPath"] == data["storeMountPath"]
    disk_paths = json.loads(env_value(manifests.sidecar, "SIDECAR_DISK_PATHS"))
    assert disk_paths == [data["sidecarMountPath"]]


def test_data_volume_is_an_empty_dir_or_an_existing_claim(
    helm: Helm, full_manifests: Manifests, full_values: dict[str, Any]
) -> None:
    volumes = {v["name"]: v for v in full_manifests.pod_spec["volumes"]}
    data = full_values["dataVolume"]
    assert volumes[data["name"]] == {"name": data["name"], "emptyDir": data["emptyDir"]}
    rendered = helm.template("--set", "dataVolume.existingClaim=store-data")
    (volume,) = [v for v in rendered.pod_spec["volumes"] if v["name"] == "data"]
    assert volume == {"name": "data", "persistentVolumeClaim": {"claimName": "store-data"}}


def test_every_mount_has_a_volume(manifests: Manifests) -> None:
    volumes = {v["name"] for v in manifests.pod_spec["volumes"]}
    for container in manifests.all_containers():
        for mount in container.get("volumeMounts", []):
            assert mount["name"] in volumes, f"{container['name']}: no volume {mount['name']}"


def test_disk_paths_can_be_set_explicitly(helm: Helm) -> None:
    rendered = helm.template("--set", "sidecar.diskPaths={/data,/wal}")
    assert json.loads(env_value(rendered.sidecar, "SIDECAR_DISK_PATHS")) == ["/data", "/wal"]


def test_without_a_data_volume_nothing_is_mounted(helm: Helm) -> None:
    rendered = helm.template("--set", "dataVolume.enabled=false")
    for container in rendered.all_containers():
        assert "data" not in [m["name"] for m in container.get("volumeMounts", [])]
    assert "data" not in [v["name"] for v in rendered.pod_spec["volumes"]]


def test_disruption_budget(default_manifests: Manifests, full_manifests: Manifests) -> None:
    assert default_manifests.one("PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    full_spec = full_manifests.one("PodDisruptionBudget")["spec"]
    assert full_spec["minAvailable"] == 1
    assert "maxUnavailable" not in full_spec


def test_settings_are_rendered_from_the_values(
    full_manifests: Manifests, full_values: dict[str, Any]
) -> None:
    sidecar = full_manifests.sidecar
    values = full_values["sidecar"]
    assert env_value(sidecar, "SIDECAR_SERVICE_NAME") == values["serviceName"]
    assert json.loads(env_value(sidecar, "SIDECAR_QUEUE_CAPACITIES")) == values["queueCapacities"]
    assert env_value(sidecar, "SIDECAR_LOG_FORMAT") == "json"
    assert env_value(sidecar, "SIDECAR_SYNTHESIZE_FEEDBACK") == "true"
    assert env_value(sidecar, "SIDECAR_READY_WHEN_DEGRADED") == "true"
    assert env_value(sidecar, "SIDECAR_DRAIN_TIMEOUT") == "10"
    assert sidecar["image"] == f"{values['image']['repository']}:{values['image']['tag']}"


def test_sidecar_image_tag_defaults_to_the_app_version(default_manifests: Manifests) -> None:
    chart_labels = default_manifests.one("Deployment")["metadata"]["labels"]
    version = chart_labels["app.kubernetes.io/version"]
    assert default_manifests.sidecar["image"] == f"market-data-sidecar:{version}"


def test_deployment_can_be_left_to_a_store_chart(helm: Helm) -> None:
    rendered = helm.template("--set", "deployment.enabled=false", "--set", "secrets.token=x")
    assert [d["kind"] for d in rendered.documents] == ["Secret"]
