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

host=127.0.0.1
pg_port=${BENCH_PG_PORT:-5432}
pg_user=${BENCH_PG_USER:-postgres}
redis_port=${BENCH_REDIS_PORT:-6379}
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

random_hex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }
run_id="stream-cpu-$(date +%Y%m%d-%H%M%S)-$$"
results_dir="$repo_root/bench/results/$run_id"
mkdir -p "$results_dir"
db_name="maas_bench_stream_$$_$(random_hex 3)"
key_prefix="maas:bench:$(random_hex 6):"
admin_key="maas_benchadmin$(random_hex 20)"
gateway_log="$results_dir/gateway.log"

psql_admin() {
    PGOPTIONS='-c client_min_messages=warning' psql -h "$host" -p "$pg_port" -U "$pg_user" \
        -d postgres -w -v ON_ERROR_STOP=1 -qAt "$@"
}

stop_process() { # PID NAME: SIGTERM, up to 10 s, then SIGKILL
    local pid=$1 name=$2 i
    [ -n "$pid" ] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "bench: $name ignored SIGTERM for 10 s: killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
}

stub_pid=""
gateway_pid=""
db_created=false
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    stop_process "$gateway_pid" "the gateway"
    stop_process "$stub_pid" "the stub"
    if [ "$db_created" = true ]; then
        psql_admin -c "DROP DATABASE IF EXISTS \"$db_name\" WITH (FORCE)" || true
    fi
    redis-cli -h "$host" -p "$redis_port" --scan --pattern "${key_prefix}*" 2>/dev/null \
        | xargs -r -n 500 redis-cli -h "$host" -p "$redis_port" unlink >/dev/null 2>&1 || true
    if [ -s "$gateway_log" ]; then gzip -1 -f "$gateway_log" || true; fi
    echo "bench: cleaned up (gateway and stub stopped, database dropped, keys ${key_prefix}* deleted)" >&2
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# wait_http URL PID NAME SECONDS: until URL answers (any status), failing when PID exits first.
wait_http() {
    local url=$1 pid=$2 name=$3 seconds=$4 i
    for ((i = 0; i < seconds * 10; i++)); do
        if curl -sS --max-time 1 -o /dev/null "$url" 2>/dev/null; then
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "bench: $name exited during start-up" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "bench: $name did not answer within ${seconds}s" >&2
    return 1
}

# ---------------------------------------------------------------------------------------------
echo "bench: building the release binary" >&2
cargo build --release --package maas-gateway --bin maas-gateway
target_dir=$(cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
binary="$target_dir/release/maas-gateway"

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
psql_admin -c "CREATE DATABASE \"$db_name\""
db_created=true

echo "bench: starting the gateway (release, access log: $gateway_log)" >&2
env -i PATH="$PATH" HOME="${HOME:-/root}" \
    MAAS_CONFIG="$repo_root/bins/maas-gateway/tests/empty.toml" \
    MAAS_SERVER__HOST="$host" \
    MAAS_SERVER__PORT=0 \
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
for ((i = 0; i < 900; i++)); do
    grep -q '"msg":"listening"' "$gateway_log" 2>/dev/null && break
    kill -0 "$gateway_pid" 2>/dev/null || { echo "bench: the gateway exited:" >&2; tail -n 20 "$gateway_log" >&2; exit 1; }
    sleep 0.1
done
gateway_port=$(python3 -c '
import json, sys
for line in open(sys.argv[1]):
    try:
        entry = json.loads(line)
    except ValueError:
        continue
    if entry.get("msg") == "listening":
        print(entry["port"])
        break
' "$gateway_log")
[ -n "$gateway_port" ] || { echo "bench: the gateway did not log its port within 90 s" >&2; exit 1; }
gateway="http://$host:$gateway_port"
wait_http "$gateway/health" "$gateway_pid" "the gateway" 10

api() { # METHOD PATH BODY, as the admin; fails unless 2xx
    curl -fsS --max-time 10 -X "$1" -H "authorization: Bearer $admin_key" \
        -H 'content-type: application/json' --data "$3" "$gateway$2"
}
echo "bench: seeding $model (version 1 on the stub)" >&2
api POST /api/v1/models "{\"name\":\"$model\"}" >/dev/null
api POST "/api/v1/models/$model/versions" \
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
