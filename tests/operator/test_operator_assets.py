"""The operator assets agree with the code: alert rules, dashboard, operations guide."""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from market_data_sidecar.metrics import Metrics
from market_data_sidecar.settings import Settings
from tests.operator.conftest import REPO_ROOT
from tests.support.installers import ci_tool

RULES = REPO_ROOT / "deploy" / "prometheus" / "alerts.yaml"
RULE_TESTS = REPO_ROOT / "deploy" / "prometheus" / "alerts.test.yaml"
DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "market-data-sidecar.json"
OPERATIONS = REPO_ROOT / "docs" / "operations.md"

#: Sample-name suffixes each metric type exposes.
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("_count", "_sum", "_created"),
    "info": ("_info",),
    "gauge": ("",),
}
#: Settings an operator tunes (thresholds, timings, capacities): each must be documented.
TUNABLE = re.compile(
    r"degraded|unhealthy|watermark|timeout|interval|ttl|capacit|failures|cooldown|retry"
    r"|rise|fall|grace|synthesize|max_|ready_when"
)


def exported_names() -> set[str]:
    names: set[str] = set()
    for family in Metrics().registry.collect():
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
    return names


def promql(node: Any) -> list[str]:
    """Every PromQL string: panel and rule `expr`, variable `query` and `definition`."""
    if isinstance(node, dict):
        found = []
        for key, value in node.items():
            if key in ("expr", "query", "definition") and isinstance(value, str):
                found.append(value)
            else:
                found.extend(promql(value))
        return found
    if isinstance(node, list):
        return [expr for item in node for expr in promql(item)]
    return []


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+\s+(.+?)\s*$", markdown, flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("path", [DASHBOARD, RULES], ids=["dashboard", "alerts"])
def test_every_metric_used_is_exported(path: Path) -> None:
    text = path.read_text()
    document = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    used = {name for expr in promql(document) for name in re.findall(r"\bsidecar_\w+", expr)}
    assert used, f"no sidecar_* metric found in {path}"
    assert used <= exported_names(), f"not in metrics.py: {sorted(used - exported_names())}"


def test_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    assert dashboard["uid"] == "market-data-sidecar"
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "namespace", "pod"} <= variables
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            # Every query is scoped by the dashboard's variables.
            assert 'namespace=~"$namespace", pod=~"$pod"' in target["expr"], panel["title"]


def test_every_alert_has_severity_and_a_runbook_that_exists() -> None:
    documented = anchors(OPERATIONS.read_text())
    names = [rule["alert"] for rule in rules()]
    assert len(names) == len(set(names))
    for rule in rules():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        annotations = rule["annotations"]
        assert annotations["summary"], rule["alert"]
        assert annotations["description"], rule["alert"]
        page, _, anchor = annotations["runbook"].partition("#")
        assert page == "docs/operations.md", rule["alert"]
        assert anchor in documented, f"{rule['alert']}: no heading for #{anchor}"


def test_operations_guide_documents_every_tunable_setting_with_its_default() -> None:
    guide = OPERATIONS.read_text()
    missing = []
    for name, field in Settings.model_fields.items():
        if not TUNABLE.search(name):
            continue
        variable = f"SIDECAR_{name.upper()}"
        row = re.search(rf"^\| `{variable}` \| (.+?) \|", guide, flags=re.MULTILINE)
        if row is None:
            missing.append(variable)
            continue
        default = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
        if isinstance(default, int | float) and not isinstance(default, bool):
            shown = re.findall(r"[0-9.]+", row[1])
            assert shown, f"{variable}: no default in {row[1]!r}"
            assert float(shown[0]) == float(default), f"{variable}: {row[1]}"
    assert not missing, f"not in docs/operations.md: {missing}"


@functools.cache
def promtool() -> str:
    """promtool from .cache/prom or PATH; else fetched into .cache/prom by the installer
    CI uses (`.ci/tools.sh promtool`). A failure fails the tests: skipping would let a
    fresh machine pass without ever checking the rules."""
    for candidate in ("usr/bin/promtool", "promtool", "bin/promtool"):
        path = REPO_ROOT / ".cache" / "prom" / candidate
        if path.exists():
            return str(path)
    found = shutil.which("promtool")
    if found is not None:
        return found
    return ci_tool(
        "promtool",
        timeout=50,
        what="promtool (Debian's prometheus package, unpacked into .cache/prom)",
    )


@pytest.mark.parametrize(
    "args", [("check", "rules", str(RULES)), ("test", "rules", str(RULE_TESTS))]
)
def test_promtool_accepts_the_rules(args: tuple[str, ...]) -> None:
    result = subprocess.run(
        [promtool(), *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
