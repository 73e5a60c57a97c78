"""Both containers run non-root, read-only, without capabilities, under seccomp."""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import Manifests

pytestmark = pytest.mark.timeout(60)


def effective(pod: dict[str, Any], container: dict[str, Any], key: str) -> Any:
    """A security setting as the kubelet applies it: the container's, else the pod's."""
    own = container.get("securityContext", {})
    return own[key] if key in own else pod.get("securityContext", {}).get(key)


@pytest.mark.parametrize("name", ["sidecar", "store"])
def test_container_security_context(manifests: Manifests, name: str) -> None:
    pod = manifests.pod_spec
    container = manifests.container(name)
    context = container["securityContext"]
    assert effective(pod, container, "runAsNonRoot") is True
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert "ALL" in context["capabilities"]["drop"]
    assert context["capabilities"].get("add", []) == []
    assert effective(pod, container, "seccompProfile") == {"type": "RuntimeDefault"}
    assert context.get("privileged", False) is False


def test_sidecar_runs_as_the_image_user(manifests: Manifests) -> None:
    context = manifests.sidecar["securityContext"]
    assert context["runAsUser"] == 10001
    assert context["runAsUser"] != 0


def test_pod_security_context(manifests: Manifests) -> None:
    pod_context = manifests.pod_spec["securityContext"]
    assert pod_context["runAsNonRoot"] is True
    assert pod_context["seccompProfile"] == {"type": "RuntimeDefault"}


def test_no_service_account_token_is_mounted(manifests: Manifests) -> None:
    assert manifests.pod_spec["automountServiceAccountToken"] is False
    account = manifests.one("ServiceAccount")
    assert account["automountServiceAccountToken"] is False
    assert manifests.pod_spec["serviceAccountName"] == account["metadata"]["name"]


def test_writable_scratch_space_is_an_empty_dir(manifests: Manifests) -> None:
    volumes = {v["name"]: v for v in manifests.pod_spec["volumes"]}
    mounts = {m["mountPath"]: m for m in manifests.sidecar["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
