#!/usr/bin/env bash
# Load benchmark of maas-gateway on this machine (see bench/README.md). Not part of the tests.
#
#   bench/run.sh                      # build, seed, 4 scenarios x 10 s, print the table
#   BENCH_DURATION=30s bench/run.sh   # longer runs
#
# It builds the release binary, creates a fresh database on the local PostgreSQL, starts the gateway
# on a free loopback port with its own Redis key prefix and access logging on (to a file), seeds
# models with curl, runs wrk against each scenario and prints requests/s, p50 and p99. On exit (also
# on failure or Ctrl-C) it stops the gateway, drops the database and deletes its own Redis keys.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"

# Settings (environment overrides). Everything targets the loopback interface only.
host=127.0.0.1
pg_port=${BENCH_PG_PORT:-5432}
pg_user=${BENCH_PG_USER:-postgres}
redis_port=${BENCH_REDIS_PORT:-6379}
db_name=${BENCH_DATABASE:-maas_bench}
threads=${BENCH_THREADS:-2}
connections=${BENCH_CONNECTIONS:-64}
duration=${BENCH_DURATION:-10s}
models=${BENCH_MODELS:-300}

for tool in cargo curl psql redis-cli wrk python3; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is required" >&2; exit 1; }
done

run_id="$(date +%Y%m%d-%H%M%S)-$$"
results_dir="$repo_root/bench/results/$run_id"
mkdir -p "$results_dir"
gateway_log="$results_dir/gateway.log"
key_prefix="maas:bench:$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n'):"
# The bootstrap admin's key: every /api/v1 request of the benchmark is authenticated with it.
admin_key="maas_bench$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"

psql_admin() { PGOPTIONS='-c client_min_messages=warning' psql -h "$host" -p "$pg_port" -U "$pg_user" -d postgres -w -v ON_ERROR_STOP=1 -qAt "$@"; }

gateway_pid=""
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [ -n "$gateway_pid" ] && kill -0 "$gateway_pid" 2>/dev/null; then
        kill -TERM "$gateway_pid" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$gateway_pid" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL "$gateway_pid" 2>/dev/null || true
        wait "$gateway_pid" 2>/dev/null || true
    fi
    psql_admin -c "DROP DATABASE IF EXISTS \"$db_name\" WITH (FORCE)" || true
    # One access line per request makes hundreds of MB per run; JSON lines compress about tenfold.
    if [ -s "$gateway_log" ]; then gzip -1 -f "$gateway_log" || true; fi
    # Only this run's keys: the prefix is unique to it.
    redis-cli -h "$host" -p "$redis_port" --scan --pattern "${key_prefix}*" \
        | xargs -r -n 500 redis-cli -h "$host" -p "$redis_port" unlink >/dev/null || true
    echo "bench: cleaned up (gateway stopped, database $db_name dropped, keys ${key_prefix}* deleted)" >&2
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "bench: building the release binary" >&2
cargo build --release --locked --package maas-gateway --bin maas-gateway
target_dir=$(cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
binary="$target_dir/release/maas-gateway"

echo "bench: creating database $db_name" >&2
psql_admin -c "DROP DATABASE IF EXISTS \"$db_name\" WITH (FORCE)"
psql_admin -c "CREATE DATABASE \"$db_name\""

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
base="http://$host:$port"

echo "bench: starting the gateway on $base (log: $gateway_log, gzipped at the end)" >&2
MAAS_SERVER__HOST="$host" \
MAAS_SERVER__PORT="$port" \
MAAS_DATABASE__URL="postgres://$pg_user@$host:$pg_port/$db_name" \
MAAS_REDIS__URL="redis://$host:$redis_port/0" \
MAAS_REDIS__KEY_PREFIX="$key_prefix" \
MAAS_AUTH__BOOTSTRAP_ADMIN_KEY="$admin_key" \
MAAS_RATE_LIMIT__DEFAULT_RPM=1000000000 \
MAAS_RATE_LIMIT__BURST=1000000 \
MAAS_LOG__LEVEL=info \
MAAS_LOG__FORMAT=json \
    "$binary" serve >"$gateway_log" 2>&1 &
gateway_pid=$!

for i in $(seq 1 120); do
    if curl -fsS --max-time 1 "$base/health" >/dev/null 2>&1; then
        break
    fi
    if ! kill -0 "$gateway_pid" 2>/dev/null; then
        echo "bench: the gateway exited during start-up; its log:" >&2
        tail -n 20 "$gateway_log" >&2
        exit 1
    fi
    if [ "$i" -eq 120 ]; then
        echo "bench: the gateway did not answer /health within 60 s" >&2
        exit 1
    fi
    sleep 0.5
done

post_json() { # PATH BODY: fails unless the gateway answers 2xx
    curl -fsS --max-time 5 -o /dev/null -H "authorization: Bearer $admin_key" \
        -H 'content-type: application/json' -X POST --data "$2" "$base$1"
}

echo "bench: seeding $models models and bench-model with one version" >&2
for i in $(seq -w 1 "$models"); do
    post_json /api/v1/models "{\"name\":\"model-$i\",\"description\":\"seeded model $i\",\"tags\":[\"bench\"]}"
done
post_json /api/v1/models '{"name":"bench-model","description":"the benchmark model","tags":["bench"]}'
post_json /api/v1/models/bench-model/versions '{"source_uri":"s3://b/m.bin"}'
# Warm the cache so that the GET scenario measures cache hits.
curl -fsS --max-time 5 -o /dev/null -H "authorization: Bearer $admin_key" "$base/api/v1/models/bench-model"

scenarios=(
    "GET /health|$base/health|"
    "GET /api/v1/models/bench-model (cached, auth)|$base/api/v1/models/bench-model|"
    "GET /api/v1/models?limit=50|$base/api/v1/models?limit=50|"
    "POST /api/v1/models/bench-model/versions|$base/api/v1/models/bench-model/versions|$repo_root/bench/post_version.lua"
)

# parse_wrk FILE: prints "requests/s<TAB>p50<TAB>p99<TAB>non-2xx" from wrk --latency output.
parse_wrk() {
    awk '
        /^Requests\/sec:/ { rps = $2 }
        $1 == "50%" { p50 = $2 }
        $1 == "99%" { p99 = $2 }
        /Non-2xx or 3xx responses:/ { bad = $NF }
        /Socket errors:/ { sock = $0; sub(/.*Socket errors: */, "", sock) }
        END {
            if (bad == "") bad = 0
            printf "%s\t%s\t%s\t%s%s\n", rps, p50, p99, bad, (sock == "" ? "" : " (socket: " sock ")")
        }' "$1"
}

echo "bench: wrk -t$threads -c$connections -d$duration --latency, ${#scenarios[@]} scenarios" >&2
rows=()
n=0
for scenario in "${scenarios[@]}"; do
    IFS='|' read -r name url script <<<"$scenario"
    n=$((n + 1))
    out="$results_dir/wrk-$n.txt"
    # The rate limit is set far above what wrk can send: every request still pays for its
    # key lookup and its rate-limit decision, none is refused.
    args=(-t"$threads" -c"$connections" -d"$duration" --latency --timeout 5s
        -H "authorization: Bearer $admin_key")
    if [ -n "$script" ]; then
        args+=(-s "$script")
    fi
    echo "bench: $name" >&2
    wrk "${args[@]}" "$url" >"$out"
    rows+=("$name	$(parse_wrk "$out")")
done

{
    printf '%-44s %12s %10s %10s  %s\n' "scenario" "requests/s" "p50" "p99" "non-2xx"
    for row in "${rows[@]}"; do
        IFS=$'\t' read -r name rps p50 p99 bad <<<"$row"
        printf '%-44s %12s %10s %10s  %s\n' "$name" "$rps" "$p50" "$p99" "$bad"
    done
    printf '\nwrk -t%s -c%s -d%s --latency over loopback, access logging on; %s, %s cores.\n' \
        "$threads" "$connections" "$duration" "$(uname -sr)" "$(nproc)"
} | tee "$results_dir/summary.txt"
echo "bench: raw wrk output and the gateway log are in bench/results/$run_id/" >&2
