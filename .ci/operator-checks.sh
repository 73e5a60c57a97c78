#!/usr/bin/env bash
# Operator assets: Prometheus rules (promtool), the Grafana dashboard's metric names,
# and headless Chromium for the status-page tests. Run before pytest.
#
# Idempotent and safe beside other CI scripts: promtool is cached in .cache/prom (the
# metrics checks may have put it there already), and Debian packages are installed only
# when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
PROM_DIR=.cache/prom
RULES=deploy/prometheus/alerts.yaml
RULE_TESTS=deploy/prometheus/alerts.test.yaml

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi
}

# A working promtool from the cache, wherever a script extracted it.
find_promtool() {
    local candidate
    for candidate in "$PROM_DIR/usr/bin/promtool" "$PROM_DIR/promtool" "$PROM_DIR/bin/promtool"; do
        if [ -x "$candidate" ] && "$candidate" --version >/dev/null 2>&1; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

install_promtool() {
    mkdir -p "$PROM_DIR"
    (
        # Another script may be installing it right now: wait for it, then look again.
        flock 9
        find_promtool >/dev/null && exit 0
        work=$(mktemp -d .cache/prom-download.XXXXXX)
        trap 'rm -rf "$work"' EXIT
        # Debian's package, unpacked without installing the service.
        if ! (cd "$work" && apt-get download prometheus >/dev/null 2>&1); then
            as_root apt-get update -qq
            (cd "$work" && apt-get download prometheus >/dev/null)
        fi
        dpkg-deb -x "$work"/prometheus_*.deb "$work/root"
        mkdir -p "$PROM_DIR/usr/bin"
        # A rename within one filesystem: readers never see a half-written binary.
        mv -f "$work/root/usr/bin/promtool" "$PROM_DIR/usr/bin/promtool"
    ) 9>".cache/prom.lock"
}

echo "--- promtool"
PROMTOOL=$(find_promtool) || { install_promtool; PROMTOOL=$(find_promtool); }
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
