#!/usr/bin/env bash
# The chart's pod, run for real: `helm template` with .ci/pod/values.yaml, played by
# `podman kube play`. The sidecar image is the one .ci/image.sh builds (rebuilt here
# from the layer cache, so the pod runs the tree's code); the store image is the real
# market-data-store 0.6.73 from PyPI on the same base (.ci/pod/Containerfile), whose
# entry script (.ci/pod/store.py) drives a WriteCoordinator past its high watermark
# and back, so its HttpFeedbackBroadcaster POSTs real feedback to the sidecar.
#
# Fails unless, each within a deadline:
#   - the sidecar turns ready and its queue component reads the store's /metrics over
#     127.0.0.1 inside the pod;
#   - GET /feedback shows the store's events (origin store) and the redis-stream target
#     delivered them to the host's Redis, where market-data-pipeline's FeedbackConsumer
#     (.cache/consumers/venv, if .ci/consumers.sh built it; else XREAD of the stream)
#     reads a hard and then an ok event;
#   - `podman pod stop` ends both containers with exit 0 within the grace period;
#   - two replicas on one stream key (the stream target's default scope, fleet): pod A's
#     store held at hard, pod B's at soft (store.py --hold, one coordinator id in both);
#     the pipeline's FeedbackConsumer reaches hard, both sidecars' GET /feedback show a
#     composite of two members, and stopping A (its sidecar, then the pod) moves the
#     consumer to B's soft: A's sidecar leaves the fleet on SIGTERM, no lease to wait for.
# Prints the time to ready, the sidecar's memory idle and after 20 s of POST/GET
# /feedback load (from inside the pod), and the stop time.
#
# Networking: podman 4.3 rejects hostNetwork with containerPorts ("PortMappings can
# only be used with Bridge or slirp4netns networking"), so the pod gets its own network
# (slirp4netns on a link-local subnet of its own, allow_host_loopback: the host's
# 127.0.0.1 is 169.254.77.2 in the pod, and slirp4netns reaches it over the host's
# loopback) and the one edit of the rendered YAML is hostIP 127.0.0.1 on every
# containerPort.
#
# IMAGE=... names the sidecar image (default localhost/market-data-sidecar:ci, as
# .ci/image.sh); LOAD_SECONDS=... the load phase (default 20).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

IMAGE="${IMAGE:-localhost/market-data-sidecar:ci}"
STORE_IMAGE="localhost/market-data-store-ci:0.6.73"
LOAD_SECONDS="${LOAD_SECONDS:-20}"
RELEASE="mdspod$$"
NAMESPACE="mdspodci$$"
COORDINATOR=ci-bars
# The pod's network: link-local, so nothing in it can be mistaken for another host.
POD_CIDR="169.254.77.0/24"
# The host's Redis as the pod sees it (slirp4netns allow_host_loopback: the gateway, .2).
POD_REDIS_URL="redis://169.254.77.2:6379/0"
HOST_REDIS_URL="redis://127.0.0.1:6379/0"
STREAM_KEY="$NAMESPACE:$NAMESPACE.telemetry.feedback"
# Sidecar: SIDECAR_SHUTDOWN_GRACE (2) + SIDECAR_DRAIN_TIMEOUT (5); store: its 6 s bound.
STOP_GRACE=10
# PyYAML, for the rendered documents: the project's venv has it.
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
[[ -x "$PYTHON" ]] || PYTHON=python3
CHECK="$ROOT/.ci/pod/check.py"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/pod.XXXXXX")"
POD=""
SECRET=""
CONSUMER_PID=""
# The two replicas of the fleet phase.
FLEET_NS="mdsfleetci$$"
FLEET_KEY="$FLEET_NS:$FLEET_NS.telemetry.feedback"
FLEET_PODS=()
FLEET_SECRETS=()

step() { printf '\n==> %s\n' "$*"; }
die() {
    printf 'pod: %s\n' "$*" >&2
    if [[ -n "$POD" ]]; then
        for c in store sidecar; do
            printf -- '--- %s logs (last 15 lines)\n' "$c" >&2
            podman logs --tail 15 "$POD-$c" >&2 2>&1 || true
        done
    fi
    exit 1
}
now() { date +%s.%N; }
since() { printf '%.2f' "$(echo "$(now) - $1" | bc)"; }

cleanup() {
    if [[ -n "$CONSUMER_PID" ]]; then kill "$CONSUMER_PID" 2>/dev/null || true; fi
    if [[ -n "$POD" ]]; then podman pod rm -f -t 0 "$POD" >/dev/null 2>&1 || true; fi
    for pod in "${FLEET_PODS[@]}"; do podman pod rm -f -t 0 "$pod" >/dev/null 2>&1 || true; done
    for secret in "${FLEET_SECRETS[@]}"; do podman secret rm "$secret" >/dev/null 2>&1 || true; done
    # kube play names an emptyDir's volume after it; remove the ones this run created.
    for volume in "${NEW_VOLUMES[@]}"; do podman volume rm -f "$volume" >/dev/null 2>&1 || true; done
    if [[ -n "$SECRET" ]]; then podman secret rm "$SECRET" >/dev/null 2>&1 || true; fi
    redis-cli -u "$HOST_REDIS_URL" del "$STREAM_KEY" "$STREAM_KEY.dlq" "$FLEET_KEY" "$FLEET_KEY.dlq" \
        "$FLEET_KEY:fleet:members" "$FLEET_KEY:fleet:last" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
NEW_VOLUMES=()
trap cleanup EXIT

port_free() {
    python3 -c 'import socket, sys; s = socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1])))' "$1" 2>/dev/null
}
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
# GET a URL; prints the body, fails on no answer or a status >= 400.
get() { curl -sf --max-time 3 "$1"; }

# until_true SECONDS WHAT COMMAND...: poll COMMAND every 0.2 s until it succeeds.
until_true() {
    local seconds="$1" what="$2"
    shift 2
    local deadline
    deadline="$(echo "$(now) + $seconds" | bc)"
    while ! "$@" >/dev/null 2>&1; do
        (($(echo "$(now) < $deadline" | bc))) || die "$what: not within ${seconds}s"
        sidecar_running || die "$what: the sidecar container is not running"
        sleep 0.2
    done
}
sidecar_running() {
    [[ -n "$POD" ]] || return 0 # between pods: nothing to watch
    [[ "$(podman inspect "$POD-sidecar" --format '{{.State.Running}}' 2>/dev/null)" == true ]] \
        && [[ "$(podman inspect "$POD-store" --format '{{.State.Running}}' 2>/dev/null)" == true ]]
}

# The sidecar container's memory: its main process's RSS and peak RSS (KiB), and the
# container cgroup's usage (bytes; memory.current on cgroup v2, usage_in_bytes on v1).
rss_kib() { awk "/^$2:/ {print \$2}" "/proc/$1/status"; }
cgroup_bytes() {
    local pid="$1" path
    path="$(awk -F: '$1 == "0" {print $3}' "/proc/$pid/cgroup")"
    if [[ -f "/sys/fs/cgroup/$path/memory.current" ]]; then
        cat "/sys/fs/cgroup/$path/memory.current"
    else
        path="$(awk -F: '$2 == "memory" {print $3}' "/proc/$pid/cgroup")"
        cat "/sys/fs/cgroup/memory/$path/memory.usage_in_bytes"
    fi
}
mib() { echo "$(($1 / 1024 / 1024))"; }

# play_replica LABEL FILL: a pod of the chart whose store holds its queue at FILL of
# capacity, its sidecar writing the fleet's key; sets REPLICA_POD and REPLICA_URL.
play_replica() {
    local label="$1" fill="$2" dir="$WORK/replica-$1" sidecar_port store_port targets args
    mkdir -p "$dir"
    sidecar_port="$(free_port)"
    store_port="$(free_port)"
    targets="[{\"kind\":\"redis-stream\",\"name\":\"pipeline\",\"url\":\"$POD_REDIS_URL\",\"namespace\":\"$FLEET_NS\"}]"
    args="[\"--metrics-host\",\"127.0.0.1\",\"--metrics-port\",\"$store_port\",\"--coordinator-id\",\"$COORDINATOR\",\"--hold\",\"--fill\",\"$fill\"]"
    "$HELM" template "mdsfleet$label$$" charts/market-data-sidecar -f .ci/pod/values.yaml \
        --set sidecar.port="$sidecar_port" --set store.port="$store_port" \
        --set-json "store.args=$args" --set-json "sidecar.targets=$targets" >"$dir/rendered.yaml"
    "$PYTHON" "$CHECK" split "$dir" >/dev/null || die "cannot split the rendered chart ($label)"
    local deployment secret_name volumes
    { read -r deployment secret_name; read -r -a volumes; } <"$dir/names"
    for volume in "${volumes[@]}"; do
        podman volume exists "$volume" || NEW_VOLUMES+=("$volume")
    done
    podman secret rm "$secret_name" >/dev/null 2>&1 || true
    podman secret create "$secret_name" "$dir/secret.json" >/dev/null
    FLEET_SECRETS+=("$secret_name")
    REPLICA_POD="$deployment-pod-0"
    FLEET_PODS+=("$REPLICA_POD")
    podman kube play --network "slirp4netns:allow_host_loopback=true,cidr=$POD_CIDR" \
        "$dir/deployment.yaml" >"$dir/play.out" || die "podman kube play failed ($label)"
    REPLICA_URL="http://127.0.0.1:$sidecar_port"
}

step "tools: podman, helm, the base image"
CONTAINERS_CONF="$(bash .ci/tools.sh podman)"
export CONTAINERS_CONF
HELM="$(bash .ci/tools.sh helm)"
command -v slirp4netns >/dev/null || die "no slirp4netns (bash .ci/tools.sh podman installs it)"
redis-cli -u "$HOST_REDIS_URL" ping >/dev/null || die "no Redis on 127.0.0.1:6379"
podman --version

step "images: $IMAGE (as .ci/image.sh) and $STORE_IMAGE"
started="$(now)"
bash .ci/tools.sh image -t "$IMAGE" .
bash .ci/tools.sh image -t "$STORE_IMAGE" .ci/pod
printf 'built in %s s\n' "$(since "$started")"

step "render the chart"
# podman publishes every containerPort on the host: the chart's ports if free.
SIDECAR_PORT=8090
STORE_PORT=8082
port_free "$SIDECAR_PORT" || SIDECAR_PORT="$(free_port)"
port_free "$STORE_PORT" || STORE_PORT="$(free_port)"
# The single replica keeps a log of the store's events: mode all, scope coordinator.
TARGETS="[{\"kind\":\"redis-stream\",\"name\":\"pipeline\",\"url\":\"$POD_REDIS_URL\",\"namespace\":\"$NAMESPACE\",\"mode\":\"all\",\"scope\":\"coordinator\"}]"
STORE_ARGS="[\"--metrics-host\",\"127.0.0.1\",\"--metrics-port\",\"$STORE_PORT\",\"--coordinator-id\",\"$COORDINATOR\"]"
"$HELM" template "$RELEASE" charts/market-data-sidecar -f .ci/pod/values.yaml \
    --set sidecar.port="$SIDECAR_PORT" --set store.port="$STORE_PORT" \
    --set-json "store.args=$STORE_ARGS" --set-json "sidecar.targets=$TARGETS" \
    >"$WORK/rendered.yaml"
# The Deployment with hostIP 127.0.0.1 on its ports (the only edit), and the Secret
# as podman 4.3 reads secretKeyRef (see check.py split).
"$PYTHON" "$CHECK" split "$WORK" || die "cannot split the rendered chart"
{ read -r DEPLOYMENT SECRET_NAME; read -r -a VOLUMES; } <"$WORK/names"

step "pipeline consumer on $STREAM_KEY"
CONSUMER_PYTHON="$ROOT/.cache/consumers/venv/bin/python"
if [[ -x "$CONSUMER_PYTHON" ]] && "$CONSUMER_PYTHON" -c 'import market_data_pipeline, redis' 2>/dev/null; then
    EVENT_BUS_BACKEND=redis REDIS_URL="$HOST_REDIS_URL" MD_NAMESPACE="$NAMESPACE" \
        "$CONSUMER_PYTHON" .ci/pod/pipeline_consumer.py "$COORDINATOR" 90 \
        >"$WORK/consumer.out" 2>"$WORK/consumer.err" &
    CONSUMER_PID=$!
    deadline="$(echo "$(now) + 30" | bc)"
    until grep -q '"ready"' "$WORK/consumer.out"; do
        kill -0 "$CONSUMER_PID" 2>/dev/null || { cat "$WORK/consumer.err" >&2; die "the pipeline consumer exited"; }
        (($(echo "$(now) < $deadline" | bc))) || die "the pipeline consumer's group: not within 30s"
        sleep 0.1
    done
    echo "market-data-pipeline FeedbackConsumer: group pipeline on $STREAM_KEY"
else
    echo "no .cache/consumers/venv with market-data-pipeline (.ci/consumers.sh): XREAD instead"
fi

step "podman kube play"
for volume in "${VOLUMES[@]}"; do
    podman volume exists "$volume" || NEW_VOLUMES+=("$volume")
done
podman secret rm "$SECRET_NAME" >/dev/null 2>&1 || true
podman secret create "$SECRET_NAME" "$WORK/secret.json" >/dev/null
SECRET="$SECRET_NAME"
POD="$DEPLOYMENT-pod-0"
started="$(now)"
podman kube play --network "slirp4netns:allow_host_loopback=true,cidr=$POD_CIDR" "$WORK/deployment.yaml" \
    >"$WORK/play.out" || die "podman kube play failed"
podman ps --filter "pod=$POD" --format '  {{.Names}} {{.Image}} {{.Ports}}'
SIDECAR_URL="http://127.0.0.1:$SIDECAR_PORT"

until_true 60 "/readyz 200" get "$SIDECAR_URL/readyz"
READY_S="$(since "$started")"
until_true 30 "the queue component reading the store" python3 "$CHECK" queue "$SIDECAR_URL" "$COORDINATOR"
printf 'ready %s s after kube play\n' "$READY_S"
python3 "$CHECK" queue "$SIDECAR_URL" "$COORDINATOR" --show

step "feedback: store -> sidecar -> Redis stream -> pipeline"
until_true 60 "GET /feedback with the store's events, delivered" \
    python3 "$CHECK" feedback "$SIDECAR_URL" "$COORDINATOR"
python3 "$CHECK" feedback "$SIDECAR_URL" "$COORDINATOR" --show

stream_check() {
    redis-cli -u "$HOST_REDIS_URL" --raw xrange "$STREAM_KEY" - + \
        | python3 "$CHECK" stream "$COORDINATOR" "$@"
}
until_true 60 "a hard and then an ok store event in $STREAM_KEY" stream_check
printf 'XRANGE %s: ' "$STREAM_KEY"
stream_check --show
if [[ -n "$CONSUMER_PID" ]]; then
    if ! wait "$CONSUMER_PID"; then
        CONSUMER_PID=""
        cat "$WORK/consumer.out" "$WORK/consumer.err" >&2
        die "the pipeline's FeedbackConsumer did not handle a hard then an ok event"
    fi
    CONSUMER_PID=""
    python3 "$CHECK" consumer "$WORK/consumer.out" "$COORDINATOR"
fi

step "sidecar memory: idle, then ${LOAD_SECONDS}s of POST and GET /feedback"
SIDECAR_PID="$(podman inspect "$POD-sidecar" --format '{{.State.Pid}}')"
IDLE_RSS="$(rss_kib "$SIDECAR_PID" VmRSS)"
IDLE_CG="$(cgroup_bytes "$SIDECAR_PID")"
printf 'idle (the store cycling, no other load): RSS %d MiB, cgroup %d MiB\n' \
    "$((IDLE_RSS / 1024))" "$(mib "$IDLE_CG")"
# From inside the pod (the store container's python, over the pod's loopback): without
# SIDECAR_TOKEN the sidecar takes POST /feedback only from loopback peers, and podman's
# port forwarding makes the host's requests come from the pod's own address.
podman exec -i "$POD-store" python - load "http://127.0.0.1:$SIDECAR_PORT" "$LOAD_SECONDS" \
    <"$CHECK" || die "the load failed"
LOAD_RSS="$(rss_kib "$SIDECAR_PID" VmRSS)"
LOAD_HWM="$(rss_kib "$SIDECAR_PID" VmHWM)"
LOAD_CG="$(cgroup_bytes "$SIDECAR_PID")"
printf 'after the load: RSS %d MiB, peak RSS (VmHWM) %d MiB, cgroup %d MiB\n' \
    "$((LOAD_RSS / 1024))" "$((LOAD_HWM / 1024))" "$(mib "$LOAD_CG")"
podman stats --no-stream --format '  podman stats: {{.Name}} {{.MemUsage}}' "$POD-sidecar" "$POD-store"
python3 "$CHECK" queue "$SIDECAR_URL" "$COORDINATOR" || die "the queue component stopped reading the store under load"

step "podman pod stop -t $STOP_GRACE"
started="$(now)"
podman pod stop -t "$STOP_GRACE" "$POD" >/dev/null
STOP_S="$(since "$started")"
for c in store sidecar; do
    code="$(podman inspect "$POD-$c" --format '{{.State.ExitCode}}')"
    printf '%s: exit %s\n' "$c" "$code"
    [[ "$code" == 0 ]] || die "$c exited $code"
done
(($(echo "$STOP_S < $STOP_GRACE" | bc))) || die "stopping took ${STOP_S}s: SIGKILL"
printf 'pod stopped in %s s\n' "$STOP_S"

step "two replicas on $FLEET_KEY: A's store held at hard, B's at soft"
FLEET_PODS+=("$POD") # the stopped pod is removed at exit with the others
POD=""
[[ -x "$CONSUMER_PYTHON" ]] || die "the fleet phase needs .cache/consumers/venv (.ci/consumers.sh)"
EVENT_BUS_BACKEND=redis REDIS_URL="$HOST_REDIS_URL" MD_NAMESPACE="$FLEET_NS" \
    "$CONSUMER_PYTHON" .ci/pod/pipeline_consumer.py "$COORDINATOR" 150 hard soft \
    >"$WORK/fleet-consumer.out" 2>"$WORK/fleet-consumer.err" &
CONSUMER_PID=$!
consumer_says() {
    kill -0 "$CONSUMER_PID" 2>/dev/null || grep -q "$1" "$WORK/fleet-consumer.out" \
        || { cat "$WORK/fleet-consumer.out" "$WORK/fleet-consumer.err" >&2; die "the fleet's pipeline consumer exited"; }
    grep -q "$1" "$WORK/fleet-consumer.out"
}
until_true 30 "the fleet's pipeline consumer group" consumer_says '"ready"'
started="$(now)"
play_replica a 0.9
POD_A="$REPLICA_POD" URL_A="$REPLICA_URL"
play_replica b 0.7
POD_B="$REPLICA_POD" URL_B="$REPLICA_URL"
POD="$POD_A"
until_true 60 "replica A ready" get "$URL_A/readyz"
POD="$POD_B"
until_true 60 "replica B ready" get "$URL_B/readyz"
printf 'both replicas ready %s s after kube play\n' "$(since "$started")"
until_true 60 "the pipeline at A's hard" consumer_says '"reached", "level": "hard"'
until_true 30 "a hard composite of two members at A" python3 "$CHECK" composite "$URL_A" 2 hard
until_true 30 "a hard composite of two members at B" python3 "$CHECK" composite "$URL_B" 2 hard
python3 "$CHECK" composite "$URL_B" 2 hard --show

step "podman pod stop A (at hard): the pipeline follows B (soft)"
# The sidecar first, then the pod: with podman 4.3 and slirp4netns, once the store
# container has exited the pod's network is gone for the sidecar still stopping (seen:
# "Network is unreachable" on its way out, so it could not leave and the lease released
# it 15 s later), where Kubernetes keeps a pod's network until its last container exits.
started="$(now)"
podman stop -t "$STOP_GRACE" "$POD_A-sidecar" >/dev/null
podman pod stop -t "$STOP_GRACE" "$POD_A" >/dev/null
printf 'A stopped in %s s\n' "$(since "$started")"
podman logs "$POD_A-sidecar" >"$WORK/replica-a/sidecar.log" 2>&1 || true
grep -q 'member [^ ]* left' "$WORK/replica-a/sidecar.log" \
    || { tail -8 "$WORK/replica-a/sidecar.log" >&2; die "A's sidecar did not leave the fleet on SIGTERM"; }
grep -E 'left|shutting down|stopped' "$WORK/replica-a/sidecar.log" | tail -3
until_true 30 "the pipeline at B's soft" consumer_says '"reached", "level": "soft"'
FLEET_S="$(since "$started")"
wait "$CONSUMER_PID" || die "the fleet's pipeline consumer failed"
CONSUMER_PID=""
until_true 10 "a soft composite of one member at B" python3 "$CHECK" composite "$URL_B" 1 soft
python3 "$CHECK" composite "$URL_B" 1 soft --show
python3 "$CHECK" consumer "$WORK/fleet-consumer.out" "$COORDINATOR"
printf 'the pipeline at soft %s s after podman pod stop of A\n' "$FLEET_S"

echo
printf 'pod: ok (ready %s s, RSS idle %d MiB, peak under load %d MiB, stop %s s; fleet: A stopped -> pipeline at B'"'"'s level in %s s)\n' \
    "$READY_S" "$((IDLE_RSS / 1024))" "$((LOAD_HWM / 1024))" "$STOP_S" "$FLEET_S"
