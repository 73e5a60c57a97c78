#!/usr/bin/env bash
# Builds the image with podman on a base made from Debian packages and runs it the
# way the chart does: read-only root, every capability dropped, no new privileges,
# non-root. Fails unless /livez, /readyz and /metrics answer, the image's HEALTHCHECK
# passes inside it, and SIGTERM ends it with exit 0 within the grace period.
# Prints the image size, the container's RSS and the time to ready.
#
# IMAGE=... names the image (default localhost/market-data-sidecar:ci).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

IMAGE="${IMAGE:-localhost/market-data-sidecar:ci}"
NAME="mds-sidecar-ci-$$"
# SIDECAR_SHUTDOWN_GRACE (2) + SIDECAR_DRAIN_TIMEOUT (5) + margin.
STOP_GRACE=10

step() { printf '\n==> %s\n' "$*"; }
die() { printf 'image: %s\n' "$*" >&2; exit 1; }
cleanup() { podman rm -f -t 0 "$NAME" >/dev/null 2>&1 || true; }
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
now() { date +%s.%N; }

step "podman and the base image"
CONTAINERS_CONF="$(bash .ci/tools.sh podman)"
export CONTAINERS_CONF
BASE_IMAGE="$(bash .ci/tools.sh base-image)"
podman --version

step "build $IMAGE on $BASE_IMAGE"
started="$(now)"
bash .ci/tools.sh image -t "$IMAGE" .
printf 'built in %.1f s\n' "$(echo "$(now) - $started" | bc)"
size="$(podman image inspect "$IMAGE" --format '{{.Size}}')"
printf 'image size: %d MB\n' "$((size / 1000000))"
[[ "$(podman image inspect "$IMAGE" --format '{{.Config.User}}')" == "10001:10001" ]] \
    || die "the image does not run as 10001:10001"

step "run: read-only root, no capabilities, non-root"
PORT="$(free_port)"
started="$(now)"
podman run -d --name "$NAME" --read-only --tmpfs /tmp --cap-drop=ALL \
    --security-opt no-new-privileges -p "127.0.0.1:$PORT:8090" \
    -e SIDECAR_STORE_METRICS_URL= -e SIDECAR_DISK_PATHS='["/tmp"]' \
    -e SIDECAR_CHECK_INTERVAL=1 "$IMAGE" >/dev/null
ready=""
for _ in $(seq 150); do
    if curl -sf -o /dev/null "http://127.0.0.1:$PORT/readyz"; then ready=1; break; fi
    [[ "$(podman inspect "$NAME" --format '{{.State.Running}}')" == true ]] || break
    sleep 0.2
done
if [[ -z "$ready" ]]; then
    podman logs "$NAME" >&2 || true
    die "/readyz did not answer 200"
fi
printf 'time to ready: %.2f s\n' "$(echo "$(now) - $started" | bc)"

[[ "$(podman exec "$NAME" id -u)" == 10001 ]] || die "not running as uid 10001"
if podman exec "$NAME" touch /srv/sidecar/x 2>/dev/null; then die "the root filesystem is writable"; fi
cap_eff="$(podman exec "$NAME" sh -c "awk '/^CapEff/ {print \$2}' /proc/1/status")"
[[ "$cap_eff" == 0000000000000000 ]] || die "effective capabilities: $cap_eff"
grep -qx ok <(curl -sf "http://127.0.0.1:$PORT/livez") || die "/livez is not ok"
curl -sf "http://127.0.0.1:$PORT/readyz" | python3 -c \
    'import json, sys; s = json.load(sys.stdin); assert s["state"] == "healthy", s; print("readyz:", s["state"])'
# Read the whole body first: `curl | grep -q` under pipefail fails when grep exits
# early and curl gets SIGPIPE.
metrics="$(curl -sf "http://127.0.0.1:$PORT/metrics")" || die "/metrics did not answer"
grep -q '^sidecar_component_state' <<<"$metrics" || die "/metrics has no sidecar_component_state"
echo "livez, readyz and metrics answer"
podman healthcheck run "$NAME" || die "the image's HEALTHCHECK failed"
echo "HEALTHCHECK: passed"
rss_kib="$(podman exec "$NAME" sh -c "awk '/^VmRSS/ {print \$2}' /proc/1/status")"
printf 'container RSS (idle): %d MiB\n' "$((rss_kib / 1024))"

step "SIGTERM within ${STOP_GRACE}s"
started="$(now)"
podman stop -t "$STOP_GRACE" "$NAME" >/dev/null
elapsed="$(echo "$(now) - $started" | bc)"
code="$(podman inspect "$NAME" --format '{{.State.ExitCode}}')"
[[ "$code" == 0 ]] || { podman logs "$NAME" >&2; die "exit code $code after SIGTERM"; }
(($(echo "$elapsed < $STOP_GRACE" | bc))) || die "took ${elapsed}s to stop: SIGKILL"
printf 'stopped with exit 0 in %.2f s\n' "$elapsed"
echo
echo "image: ok"
