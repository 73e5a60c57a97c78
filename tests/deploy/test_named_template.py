"""An existing store chart includes the sidecar through the named templates."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import CHART_DIR, RELEASE, Helm, Manifests, env_of, env_value

pytestmark = pytest.mark.timeout(60)

# The store chart of docs/deployment.md, reduced to its Deployment.
STORE_DEPLOYMENT = """\
{{- $sidecar := index .Subcharts "market-data-sidecar" }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .Release.Name }}-store
spec:
  selector:
    matchLabels: {app: store}
  template:
    metadata:
      labels: {app: store}
    spec:
      {{- if $sidecar.Values.nativeSidecar.enabled }}
      initContainers:
        {{- include "market-data-sidecar.container" $sidecar | nindent 8 }}
      {{- end }}
      containers:
        - name: store
          image: market-data-store:2.7.3
          env:
            {{- include "market-data-sidecar.storeEnv" $sidecar | nindent 12 }}
          volumeMounts:
            - {name: data, mountPath: /data}
        {{- if not $sidecar.Values.nativeSidecar.enabled }}
        {{- include "market-data-sidecar.container" $sidecar | nindent 8 }}
        {{- end }}
      volumes:
        - {name: data, emptyDir: {}}
        {{- include "market-data-sidecar.volumes" $sidecar | nindent 8 }}
"""


@pytest.fixture(scope="module")
def store_chart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    chart = tmp_path_factory.mktemp("charts") / "market-data-store"
    (chart / "templates").mkdir(parents=True)
    sub_chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text(encoding="utf-8"))
    (chart / "Chart.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v2",
                "name": "market-data-store",
                "version": "2.7.3",
                "dependencies": [
                    {
                        "name": "market-data-sidecar",
                        "version": sub_chart["version"],
                        "repository": "file://../market-data-sidecar",
                    }
                ],
            }
        ),
        encoding="utf-8",
    )
    (chart / "values.yaml").write_text(
        yaml.safe_dump(
            {
                "market-data-sidecar": {
                    "deployment": {"enabled": False},
                    "coordinatorCapacity": 4000,
                    "sidecar": {
                        "targets": [
                            {
                                "kind": "http",
                                "url": "http://orchestrator:8080/feedback",
                                "secret": "FAKE-SUBCHART-SIGNING-KEY-51aa",
                            }
                        ]
                    },
                }
            }
        ),
        encoding="utf-8",
    )
    (chart / "templates" / "deployment.yaml").write_text(STORE_DEPLOYMENT, encoding="utf-8")
    shutil.copytree(CHART_DIR, chart / "charts" / "market-data-sidecar")
    return chart


def _container(manifests: Manifests, section: str, name: str) -> dict[str, Any]:
    (found,) = [c for c in manifests.pod_spec.get(section, []) if c["name"] == name]
    return dict(found)


@pytest.mark.parametrize(("native", "section"), [(False, "containers"), (True, "initContainers")])
def test_store_chart_renders_the_sidecar(
    helm: Helm, store_chart: Path, native: bool, section: str
) -> None:
    native_value = f"market-data-sidecar.nativeSidecar.enabled={str(native).lower()}"
    rendered = helm.template("--set", native_value, chart=store_chart)
    # Only the store chart's Deployment, and the sidecar's Secret.
    assert sorted(d["kind"] for d in rendered.documents) == ["Deployment", "Secret"]
    sidecar = _container(rendered, section, "sidecar")
    assert sidecar.get("restartPolicy") == ("Always" if native else None)
    store = _container(rendered, "containers", "store")
    assert env_value(store, "MDS_FB_HTTP_ENDPOINT") == "http://127.0.0.1:8090/feedback"
    assert env_value(store, "MDS_COORDINATOR_CAPACITY") == "4000"
    assert env_value(sidecar, "SIDECAR_QUEUE_CAPACITY") == "4000"
    assert sidecar["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "sidecar"}
    mounts = {m["name"]: m for m in sidecar["volumeMounts"]}
    assert mounts["data"]["readOnly"] is True
    volumes = {v["name"] for v in rendered.pod_spec["volumes"]}
    assert set(mounts) <= volumes


def test_sidecar_in_a_store_chart_reads_the_subchart_secret(helm: Helm, store_chart: Path) -> None:
    rendered = helm.template(chart=store_chart)
    sidecar = _container(rendered, "containers", "sidecar")
    ref = env_of(sidecar)["SIDECAR_TARGETS"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == f"{RELEASE}-market-data-sidecar"
    assert "FAKE-SUBCHART-SIGNING-KEY-51aa" in rendered.secret_data(ref["name"])[ref["key"]]
    deployment_text = yaml.safe_dump(rendered.one("Deployment"))
    assert "FAKE-SUBCHART-SIGNING-KEY-51aa" not in deployment_text
