#!/usr/bin/env bash
# The real feedback consumers and sender, from PyPI, in a venv of their own at
# .cache/consumers/venv (the sidecar's .venv stays free of their dependencies):
#
#   market-data-pipeline 0.8.70      FeedbackConsumer -> FeedbackHandler -> RateCoordinator
#   market-data-orchestrator 0.9.3   pulse.observer.PulseObserver
#   market-data-store 0.6.73         coordinator.HttpFeedbackBroadcaster (what the store sends)
#
# Idempotent: a venv whose stamp matches the pins below and whose modules import is
# kept; anything else is rebuilt beside it and renamed into place, under a lock, so
# concurrent callers (CI, parallel test runs) never see half a venv. Prints one line.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_DIR="$ROOT/.cache/consumers"
VENV="$CACHE_DIR/venv"
PYTHON="${PYTHON:-python3}"

PIPELINE="market-data-pipeline==0.8.70"
STORE="market-data-store==0.6.73"
# What the pipeline's RedisStreamsBus and the store's broadcaster import but do not declare.
EXTRAS=("redis>=5.0.1" "httpx>=0.27")
# The orchestrator pins market-data-pipeline==0.8.69 (and market-data-ibkr): --no-deps.
ORCHESTRATOR="market-data-orchestrator==0.9.3"
# What the orchestrator's modules import but it does not declare.
ORCHESTRATOR_EXTRAS=("jinja2>=3" "python-jose>=3.3")

die() { printf 'consumers: %s\n' "$*" >&2; exit 1; }

command -v "$PYTHON" >/dev/null || die "no $PYTHON to build the consumers venv with"
STAMP_TEXT="$PIPELINE $STORE ${EXTRAS[*]} $ORCHESTRATOR ${ORCHESTRATOR_EXTRAS[*]} $("$PYTHON" -c 'import sys; print(sys.version.split()[0])')"

# Imports exactly what the drivers use; the orchestrator's top-level package does
# not import, so its pulse package is loaded under a bare parent module.
probe() {
    "$1/bin/python" - <<'PY'
import importlib
import importlib.util
import sys
import types

import market_data_pipeline
from market_data_pipeline.orchestration.coordinator import RateCoordinator  # noqa: F401
from market_data_pipeline.orchestration.feedback.consumer import RateCoordinatorAdapter  # noqa: F401
from market_data_pipeline.pulse.consumer import FeedbackConsumer  # noqa: F401
from market_data_core.events.adapters.redis_streams import RedisStreamsBus  # noqa: F401
from market_data_store.coordinator import HttpFeedbackBroadcaster, feedback_bus  # noqa: F401
from market_data_store.coordinator import http_broadcast
from importlib.metadata import version

spec = importlib.util.find_spec("market_data_orchestrator")
assert spec is not None and spec.submodule_search_locations, "market_data_orchestrator missing"
parent = types.ModuleType("market_data_orchestrator")
parent.__path__ = list(spec.submodule_search_locations)
sys.modules["market_data_orchestrator"] = parent
observer = importlib.import_module("market_data_orchestrator.pulse.observer")
assert hasattr(observer, "PulseObserver")
assert http_broadcast.HTTPX_AVAILABLE, "httpx missing: the store's broadcaster would be a no-op"
print(
    f"pipeline {version('market-data-pipeline')}, orchestrator {version('market-data-orchestrator')}, "
    f"store {version('market-data-store')}, core {version('market-data-core')}, "
    f"redis {version('redis')}, httpx {version('httpx')}"
)
PY
}

ready() {
    [[ -x "$VENV/bin/python" && -f "$VENV/.stamp" && "$(cat "$VENV/.stamp")" == "$STAMP_TEXT" ]] \
        && probe "$VENV" >"$CACHE_DIR/.summary" 2>&1
}

build() {
    local work="$CACHE_DIR/.venv.$$"
    rm -rf "$work"
    # shellcheck disable=SC2064
    trap "rm -rf '$work'" EXIT
    "$PYTHON" -m venv "$work" || die "could not create a venv with $PYTHON"
    local pip=("$work/bin/pip" install -q --disable-pip-version-check)
    "${pip[@]}" "$PIPELINE" "$STORE" "${EXTRAS[@]}" \
        || die "pip could not install $PIPELINE $STORE ${EXTRAS[*]}"
    "${pip[@]}" --no-deps "$ORCHESTRATOR" || die "pip could not install $ORCHESTRATOR"
    "${pip[@]}" "${ORCHESTRATOR_EXTRAS[@]}" || die "pip could not install ${ORCHESTRATOR_EXTRAS[*]}"
    probe "$work" >"$CACHE_DIR/.summary" || die "the installed consumers do not import (see above)"
    printf '%s' "$STAMP_TEXT" >"$work/.stamp"
    # venvs hard-code their own path in scripts, but the drivers only run bin/python,
    # which resolves its prefix from its location: a rename is safe.
    rm -rf "$VENV"
    mv "$work" "$VENV"
    trap - EXIT
}

mkdir -p "$CACHE_DIR"
(
    flock 9
    ready || build
    echo "consumers: $VENV ($(cat "$CACHE_DIR/.summary"))"
) 9>"$CACHE_DIR/.lock" || exit 1
