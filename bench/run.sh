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
log_tag=bench
host=127.0.0.1
pg_port=${BENCH_PG_PORT:-5432}
pg_user=${BENCH_PG_USER:-postgres}
redis_port=${BENCH_REDIS_PORT:-6379}
# shellcheck source=scripts/local-gateway.sh
source "$repo_root/scripts/local-gateway.sh"
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
# Its own database and Redis prefix; the bootstrap admin's key authenticates every /api/v1
# request of the benchmark.
local_run_init bench

gateway_pid=""
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    stop_process "$gateway_pid" "the gateway"
    drop_run_data
    # One access line per request makes hundreds of MB per run; JSON lines compress about tenfold.
    if [ -s "$gateway_log" ]; then gzip -1 -f "$gateway_log" || true; fi
    echo "bench: cleaned up (gateway stopped, database $db_name dropped, keys ${key_prefix}* deleted)" >&2
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "bench: building the release binary" >&2
binary=$(gateway_binary release)

echo "bench: creating database $db_name" >&2
create_run_database

echo "bench: starting the gateway (log: $gateway_log, gzipped at the end)" >&2
start_gateway "$binary" "$gateway_log"
gateway_pid=$started_pid
base="http://$host:$started_port"

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
