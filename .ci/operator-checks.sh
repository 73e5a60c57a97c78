#!/usr/bin/env bash
# Operator assets: Prometheus rules (promtool), the Grafana dashboard's metric names,
# and headless Chromium for the status-page tests. Run before pytest.
#
# Idempotent and safe beside other CI scripts: promtool is cached in .cache/prom by
# .ci/lib/promtool.sh, which the metrics check shares, and Debian packages are installed
# only when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/promtool.sh
source .ci/lib/promtool.sh

PYTHON=${PYTHON:-.venv/bin/python}
RULES=deploy/prometheus/alerts.yaml
RULE_TESTS=deploy/prometheus/alerts.test.yaml

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi
}

echo "--- promtool"
install_promtool
"$PROMTOOL" --version 2>&1 | head -1

echo "--- alert rules"
"$PROMTOOL" check rules "$RULES"
"$PROMTOOL" test rules "$RULE_TESTS"

echo "--- dashboard, rules and operations guide agree with the code"
# Metric names used by the dashboard and the rules exist in metrics.py; every alert's
# runbook exists in docs/operations.md; every tunable setting is documented there.
"$PYTHON" -m pytest -q -p no:cacheprovider tests/operator/test_operator_assets.py

echo "--- chromium (status-page browser tests)"
if ! dpkg -s chromium chromium-driver >/dev/null 2>&1; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi
chromium --version 2>/dev/null
