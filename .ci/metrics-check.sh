#!/usr/bin/env bash
# Lint what the sidecar exports on /metrics with promtool, on a healthy sidecar (database,
# disk, and a store metrics endpoint with two coordinators) and on a failing one (database
# and store unreachable), so the series of both paths follow Prometheus conventions.
#
# promtool comes from Debian's prometheus package (downloaded, not installed) and is
# cached under .cache/prom. Needs .venv (VENV=... for another) and PostgreSQL on
# 127.0.0.1:5432 (SIDECAR_DATABASE_URL=... for another). Safe to run repeatedly.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VENV="${VENV:-$ROOT/.venv}"
PYTHON="$VENV/bin/python"
SIDECAR="$VENV/bin/market-data-sidecar"
DATABASE_URL="${SIDECAR_DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/postgres}"
# shellcheck source=lib/promtool.sh
source "$ROOT/.ci/lib/promtool.sh"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/metrics-check.XXXXXX")"

step() { printf '\n==> %s\n' "$*"; }
die() { printf 'metrics-check: %s\n' "$*" >&2; exit 1; }

PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# -- promtool ----------------------------------------------------------------------------------

step "promtool"
install_promtool
"$PROMTOOL" --version 2>&1 | head -1

# -- a store metrics endpoint --------------------------------------------------------------------

step "store metrics endpoint with two coordinators"
STORE_PORT="$(free_port)"
"$PYTHON" - "$STORE_PORT" >"$WORK/store.log" 2>&1 <<'EOF' &
"""What a market-data-store exports for its write coordinators."""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

registry = CollectorRegistry()
depth = Gauge("mds_coord_queue_depth", "Queue depth", ["coord_id"], registry=registry)
workers = Gauge("mds_coord_workers_alive", "Live workers", ["coord_id"], registry=registry)
circuit = Gauge("mds_coord_circuit_state", "Circuit state", ["coord_id"], registry=registry)
dropped = Counter("mds_coord_items_dropped", "Dropped", ["coord_id", "reason"], registry=registry)
for coordinator, queued in (("bars-coord", 8600), ("ticks-coord", 120)):
    depth.labels(coordinator).set(queued)
    workers.labels(coordinator).set(4)
    circuit.labels(coordinator).set(0)
    dropped.labels(coordinator, "queue_full").inc(3)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = generate_latest(registry)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
EOF
PIDS+=("$!")

# -- two sidecars ----------------------------------------------------------------------------------

start_sidecar() {  # name, database URL, store metrics URL
    local name="$1" port
    port="$(free_port)"
    SIDECAR_PORT="$port" SIDECAR_HOST=127.0.0.1 \
        SIDECAR_DATABASE_URL="$2" SIDECAR_STORE_METRICS_URL="$3" \
        SIDECAR_DISK_PATHS='["/"]' SIDECAR_CHECK_INTERVAL=0.5 SIDECAR_CHECK_TIMEOUT=1 \
        SIDECAR_SHUTDOWN_GRACE=0 \
        "$SIDECAR" run >"$WORK/$name.log" 2>&1 &
    PIDS+=("$!")
    echo "$port" >"$WORK/$name.port"
}

# Waits until every check has reported once (the aggregate stops naming pending checks).
wait_checked() {  # name, expected /readyz status
    local name="$1" port status
    port="$(cat "$WORK/$name.port")"
    for _ in $(seq 150); do
        status="$(curl -s -o "$WORK/$name.ready" -w '%{http_code}' "http://127.0.0.1:$port/readyz?verbose" || true)"
        if [[ "$status" == "$2" ]] && ! grep -q "no result yet" "$WORK/$name.ready"; then
            cat "$WORK/$name.ready"
            return 0
        fi
        sleep 0.2
    done
    cat "$WORK/$name.log" >&2
    die "$name sidecar did not answer /readyz with $2 (last: ${status:-none})"
}

lint() {  # name
    local name="$1" port
    port="$(cat "$WORK/$name.port")"
    # Plain text exposition: no OpenMetrics Accept header.
    curl -sf "http://127.0.0.1:$port/metrics" >"$WORK/$name.metrics"
    for series in sidecar_component_state sidecar_check_duration_seconds_bucket \
        sidecar_database_latency_seconds sidecar_database_connections_ratio \
        sidecar_database_replication_lag_seconds sidecar_disk_free_ratio; do
        grep -q "^$series" "$WORK/$name.metrics" || die "$name: no $series in /metrics"
    done
    if ! "$PROMTOOL" check metrics <"$WORK/$name.metrics" >"$WORK/$name.lint" 2>&1 \
        || [[ -s "$WORK/$name.lint" ]]; then
        cat "$WORK/$name.lint" >&2
        die "$name: promtool check metrics complained"
    fi
    echo "$name: $(grep -vc '^#' "$WORK/$name.metrics") samples, promtool: no complaints"
}

CLOSED_PORT="$(free_port)"
step "sidecars: healthy, and with its database and store unreachable"
start_sidecar healthy "$DATABASE_URL" "http://127.0.0.1:$STORE_PORT/metrics"
start_sidecar failing "postgresql://postgres@127.0.0.1:$CLOSED_PORT/postgres" \
    "http://127.0.0.1:$CLOSED_PORT/metrics"
wait_checked healthy 200
wait_checked failing 503

step "promtool check metrics"
lint healthy
grep -q '^sidecar_queue_utilization_ratio{coordinator="bars-coord"} 0.86$' "$WORK/healthy.metrics" \
    || die "healthy: no utilization for bars-coord"
lint failing
echo
echo "metrics-check: ok"
