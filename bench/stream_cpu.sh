#!/usr/bin/env bash
# What metering a stream costs the gateway (see bench/README.md). Not part of the tests.
#
#   bench/stream_cpu.sh                       # about 10 s once the release build exists
#   BENCH_REPEAT=200 bench/stream_cpu.sh      # more calls per kind
#
# A stub model server (bench/stream_stub.py) answers every chat completion at once with 16 MiB
# (BENCH_STREAM_BYTES): mixed server-sent events as text/event-stream ("sse"), or the same bytes
# as application/octet-stream ("octet"), which the gateway streams through without reading lines.
# The calls go through a release gateway, the two kinds in interleaved rounds, and the gateway
# process's CPU time (user + system, /proc/<pid>/stat) is summed per kind. It prints both sums,
# per call and per MiB, and their ratio, and fails (exit 1) when the events cost more than
# BENCH_MAX_RATIO (2) times the same bytes unread. A third kind, 16 MiB of bare newlines
# ("newlines", the shape that once held a worker for seconds per MiB), is measured and printed
# too, but not held to the ratio.
#
# The gateway runs with its own database and Redis key prefix, as bench/proxy.sh starts it; on
# exit (also on failure or Ctrl-C) it stops the gateway and the stub, drops the database and
# deletes only its own Redis keys. Only 127.0.0.1 is contacted.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"

log_tag=bench
host=127.0.0.1
pg_port=${BENCH_PG_PORT:-5432}
pg_user=${BENCH_PG_USER:-postgres}
redis_port=${BENCH_REDIS_PORT:-6379}
# shellcheck source=scripts/local-gateway.sh
source "$repo_root/scripts/local-gateway.sh"
stream_bytes=${BENCH_STREAM_BYTES:-16777216}
repeat=${BENCH_REPEAT:-60}
max_ratio=${BENCH_MAX_RATIO:-2}
model=bench-stream

export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
missing=()
for tool in cargo curl psql redis-cli python3 getconf; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "bench: missing ${missing[*]}" >&2
    exit 1
fi

run_id="stream-cpu-$(date +%Y%m%d-%H%M%S)-$$"
results_dir="$repo_root/bench/results/$run_id"
mkdir -p "$results_dir"
local_run_init bench_stream
gateway_log="$results_dir/gateway.log"

stub_pid=""
gateway_pid=""
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    stop_process "$gateway_pid" "the gateway"
    stop_process "$stub_pid" "the stub"
    drop_run_data
    if [ -s "$gateway_log" ]; then gzip -1 -f "$gateway_log" || true; fi
    echo "bench: cleaned up (gateway and stub stopped, database dropped, keys ${key_prefix}* deleted)" >&2
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------
echo "bench: building the release binary" >&2
binary=$(gateway_binary release)

echo "bench: starting the stub model server ($stream_bytes bytes per answer)" >&2
python3 -u bench/stream_stub.py "$stream_bytes" >"$results_dir/stub.port" 2>"$results_dir/stub.log" &
stub_pid=$!
for ((i = 0; i < 100; i++)); do
    [ -s "$results_dir/stub.port" ] && break
    kill -0 "$stub_pid" 2>/dev/null || { echo "bench: the stub exited:" >&2; cat "$results_dir/stub.log" >&2; exit 1; }
    sleep 0.1
done
stub_port=$(head -n 1 "$results_dir/stub.port")
[ -n "$stub_port" ] || { echo "bench: the stub printed no port within 10 s" >&2; exit 1; }
upstream="http://$host:$stub_port/v1"

echo "bench: creating database $db_name" >&2
create_run_database

echo "bench: starting the gateway (release, access log: $gateway_log)" >&2
start_gateway "$binary" "$gateway_log"
gateway_pid=$started_pid
gateway="http://$host:$started_port"

echo "bench: seeding $model (version 1 on the stub)" >&2
admin_api POST /api/v1/models "{\"name\":\"$model\"}" >/dev/null
admin_api POST "/api/v1/models/$model/versions" \
    "{\"source_uri\":\"s3://bench/m.bin\",\"endpoint_url\":\"$upstream\"}" >/dev/null

# call KIND: one streamed chat completion through the gateway, its body read and thrown away;
# fails unless it is a 200 of the whole answer.
call() {
    local kind=$1 out
    out=$(curl -sS --max-time 120 -o /dev/null -w '%{http_code} %{size_download}' \
        -H "authorization: Bearer $admin_key" -H 'content-type: application/json' \
        --data "{\"model\":\"$model\",\"stream\":true,\"messages\":[],\"bench_kind\":\"$kind\"}" \
        "$gateway/v1/chat/completions")
    if [ "${out%% *}" != 200 ] || [ "${out##* }" -lt "$stream_bytes" ]; then
        echo "bench: a $kind call answered $out (status, bytes)" >&2
        exit 1
    fi
}

# The gateway's CPU time so far, in clock ticks: utime + stime of all its threads (fields 14
# and 15 of /proc/<pid>/stat, counted after the command name, which may hold spaces).
cpu_ticks() {
    local stat
    stat=$(cat "/proc/$gateway_pid/stat")
    stat=${stat##*) }
    read -r -a fields <<<"$stat"
    echo $((fields[11] + fields[12]))
}
ticks_per_second=$(getconf CLK_TCK)

kinds=(sse octet newlines)
declare -A spent
for kind in "${kinds[@]}"; do
    call "$kind" # warm-up: connections, caches, buffers
    spent[$kind]=0
done

load_at_start=$(cut -d' ' -f1-3 /proc/loadavg)
echo "bench: $repeat rounds, each one call of every kind (${kinds[*]}), order turned every round" >&2
for ((round = 0; round < repeat; round++)); do
    order=("${kinds[@]}")
    if ((round % 2)); then order=(newlines octet sse); fi
    for kind in "${order[@]}"; do
        before=$(cpu_ticks)
        call "$kind"
        after=$(cpu_ticks)
        spent[$kind]=$((spent[$kind] + after - before))
    done
done

# The usage of the last call was read: the meter did its work (tokens of the final chunk).
sleep 1
tokens=$(psql -h "$host" -p "$pg_port" -U "$pg_user" -d "$db_name" -w -qAt \
    -c "SELECT count(*) FILTER (WHERE completion_tokens = 4096), count(*) FROM usage_events" 2>/dev/null || echo "?")

python3 - "$stream_bytes" "$repeat" "$ticks_per_second" "$max_ratio" \
    "${spent[sse]}" "${spent[octet]}" "${spent[newlines]}" "$tokens" "$load_at_start" \
    "$(nproc --all)" "$(uname -sr)" <<'EOF' | tee "$results_dir/summary.txt"
import sys

size, repeat, hz, limit = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
sse, octet, newlines = (int(v) for v in sys.argv[5:8])
tokens, load, cores, kernel = sys.argv[8], sys.argv[9], sys.argv[10], sys.argv[11]
mib = size / (1024 * 1024)
print("Gateway CPU (user + system) streaming %d calls of %.0f MiB per kind, %d ticks/s" % (repeat, mib, hz))
print("%-38s %10s %12s %10s" % ("kind", "total s", "ms per call", "ms per MiB"))
for name, ticks in (("sse (mixed events, text/event-stream)", sse),
                    ("octet (same bytes, octet-stream)", octet),
                    ("newlines (bare \\n, text/event-stream)", newlines)):
    seconds = ticks / hz
    print("%-38s %10.2f %12.1f %10.2f" % (name, seconds, seconds * 1000 / repeat, seconds * 1000 / repeat / mib))
ratio = sse / octet if octet else float("inf")
print("ratio sse / octet: %.2f (limit %.2f); newlines / octet: %.2f (not limited)"
      % (ratio, limit, newlines / octet if octet else float("inf")))
print("usage events with the final chunk's tokens / all: %s" % tokens.replace("|", " / "))
print("%s, %s cores, load average %s when measuring began" % (kernel, cores, load))
sys.exit(0 if ratio <= limit else 1)
EOF
