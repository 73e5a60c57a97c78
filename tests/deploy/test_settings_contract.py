"""The environment the chart renders is one the sidecar's settings accept."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from market_data_sidecar.settings import ConfigError, load_settings

from .conftest import REPO_ROOT, HelmError, Manifests

REDIS_TLS_VALUES = REPO_ROOT / "examples" / "values-redis-tls.yaml"

pytestmark = pytest.mark.timeout(60)


# What the operator's existingSecret holds in examples/values-full.yaml.
EXISTING_SECRET_DATA = {
    "database-url": "postgresql://sidecar:FAKE-DB-PASSWORD@timescaledb:5432/market_data",
    "token": "FAKE-BEARER-TOKEN",
}


#: What the kubelet puts in a `fieldRef: metadata.name`.
POD_NAME = "market-data-store-7d9f8b6c5-x2x4q"


def resolved_env(manifests: Manifests, existing: dict[str, str]) -> dict[str, str]:
    """The sidecar's environment as the kubelet would build it."""
    env = {}
    for entry in manifests.sidecar["env"]:
        if "value" in entry:
            env[entry["name"]] = entry["value"]
            continue
        if "fieldRef" in entry["valueFrom"]:
            assert entry["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
            env[entry["name"]] = POD_NAME
            continue
        ref = entry["valueFrom"]["secretKeyRef"]
        try:
            data = manifests.secret_data(ref["name"])
        except KeyError:
            data = existing
        if ref["key"] in data:
            env[entry["name"]] = data[ref["key"]]
        else:
            assert ref.get("optional"), f"{entry['name']}: no key {ref['key']} in {ref['name']}"
    return env


@pytest.fixture
def load(monkeypatch: pytest.MonkeyPatch) -> Any:
    def load_from(env: dict[str, str]) -> Any:
        for name in list(os.environ):
            if name.startswith("SIDECAR_"):
                monkeypatch.delenv(name)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return load_settings()

    return load_from


def test_default_environment_loads(default_manifests: Manifests, load: Any) -> None:
    settings = load(resolved_env(default_manifests, {}))
    assert settings.port == 8090
    assert settings.queue_capacity == 10000
    assert settings.instance == POD_NAME
    assert settings.disk_paths == ["/data"]
    assert str(settings.store_metrics_url) == "http://127.0.0.1:8082/metrics"
    assert settings.targets == []


def test_full_environment_loads(
    full_manifests: Manifests, full_values: dict[str, Any], load: Any
) -> None:
    env = resolved_env(full_manifests, EXISTING_SECRET_DATA)
    settings = load(env)
    assert settings.queue_capacity == full_values["coordinatorCapacity"]
    assert settings.queue_capacities == full_values["sidecar"]["queueCapacities"]
    assert settings.database_url.get_secret_value() == EXISTING_SECRET_DATA["database-url"]
    assert settings.token.get_secret_value() == EXISTING_SECRET_DATA["token"]
    expected = full_values["sidecar"]["targets"]
    assert [t.kind for t in settings.targets] == [t["kind"] for t in expected]
    assert [t.name for t in settings.targets] == [t["name"] for t in expected]
    assert json.loads(env["SIDECAR_TARGETS"]) == expected


def test_each_checks_schedule_and_the_database_role_reach_the_sidecar(
    full_manifests: Manifests, full_values: dict[str, Any], load: Any
) -> None:
    settings = load(resolved_env(full_manifests, EXISTING_SECRET_DATA))
    checks = full_values["sidecar"]["checks"]
    assert settings.schedule("queue").interval == checks["queue"]["interval"]
    assert settings.schedule("queue").timeout == checks["queue"]["timeout"]
    assert settings.schedule("disk").interval == checks["disk"]["interval"]
    assert settings.schedule("disk").timeout == full_values["sidecar"]["checkTimeout"]
    assert settings.schedule("database").fall == checks["database"]["fall"]
    assert settings.database_role == full_values["sidecar"]["databaseRole"]


def test_default_schedules_are_the_global_ones(default_manifests: Manifests, load: Any) -> None:
    env = resolved_env(default_manifests, {})
    own = ("SIDECAR_DATABASE_CHECK", "SIDECAR_DISK_CHECK", "SIDECAR_QUEUE_CHECK")
    assert not [name for name in env if name.startswith(own)]
    settings = load(env)
    for check in ("database", "disk", "queue"):
        assert settings.schedule(check).interval == settings.check_interval
    assert settings.database_role == "primary"


@pytest.mark.parametrize(
    "value",
    [
        "sidecar.checks.queue.interval=0",
        "sidecar.checks.disk.rise=0",
        "sidecar.databaseRole=leader",
    ],
)
def test_the_chart_refuses_a_bad_schedule_or_role(helm: Any, value: str) -> None:
    with pytest.raises(HelmError):
        helm.template("--set", value)


def test_a_ca_bundle_from_a_secret_is_mounted_where_the_target_url_names_it(
    helm: Any, load: Any, tmp_path: Any
) -> None:
    """examples/values-redis-tls.yaml: `extraVolumes` brings the Secret into the pod, the
    sidecar mounts it, and a `rediss://` URL naming a CA that is not there is refused."""
    rendered = helm.template("-f", str(REDIS_TLS_VALUES))
    (volume,) = [v for v in rendered.pod_spec["volumes"] if v["name"] == "redis-ca"]
    assert volume["secret"]["secretName"] == "redis-ca"
    (mount,) = [m for m in rendered.sidecar["volumeMounts"] if m["name"] == "redis-ca"]
    assert mount == {"name": "redis-ca", "mountPath": "/etc/redis-ca", "readOnly": True}

    def target(ca: str) -> dict[str, str]:
        url = f"rediss://sidecar:FAKE-REDIS-PASSWORD@redis:6380/0?ssl_ca_certs={ca}"
        return {"targets": json.dumps([{"kind": "redis-stream", "url": url}])}

    missing = f"{mount['mountPath']}/absent-{os.getpid()}.pem"
    with pytest.raises(ConfigError) as error:
        load(resolved_env(rendered, EXISTING_SECRET_DATA | target(missing)))
    assert f"ssl_ca_certs: no such file or directory: {missing}" in str(error.value)
    assert "FAKE-REDIS-PASSWORD" not in str(error.value)

    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    settings = load(resolved_env(rendered, EXISTING_SECRET_DATA | target(str(bundle))))
    assert settings.targets[0].kind == "redis-stream"
