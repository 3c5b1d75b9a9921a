#!/usr/bin/env bash
# Proxy benchmark of maas-gateway on this machine (see bench/README.md). Not part of the tests.
#
#   bench/proxy.sh                            # about 7 minutes
#   BENCH_ROUNDS=12 bench/proxy.sh           # longer constant-rate measurement
#   BENCH_ENDPOINTS=3 BENCH_RATES="1000 5000" bench/proxy.sh   # a version of three endpoints
#
# An nginx on a loopback port stands in for a model server that answers at once (a fixed
# chat.completion body naming the model by the server's own name, the version's served_model, which
# the gateway rewrites to the client's; BENCH_ENDPOINTS=N makes it listen on N ports, the N
# endpoints the gateway balances over). The same POST /v1/chat/completions is sent straight to nginx ("direct"),
# through the gateway ("gateway"), whose version points at that nginx, and through a second nginx
# that only proxies to the first ("nginx-proxy": what one more hop costs on this machine at best):
#   1. the highest throughput of direct and gateway: wrk -t2 -c64, closed loop;
#   2. latency at a constant rate (oha -q, corrected for coordinated omission) at 500 and 1,000
#      requests/s, all three paths in interleaved rounds (bench/interleaved.py), so that each
#      meets the same machine;
#   3. a ladder of higher rates, direct then gateway, up to the highest one the gateway sustains;
# and prints the percentiles, the gateway's minus direct (the latency it adds) and requests/s.
# The gateway is the release build with access logging on, a member's key and a rate limit far
# above the load. On exit (also on failure or Ctrl-C) it stops nginx and the gateway, drops the
# database and deletes only its own Redis keys. Only 127.0.0.1 is contacted.
set -euo pipefail

# BENCH_PIN_CPUS (a taskset CPU list, e.g. "0"): run the whole benchmark (load tool, nginx, the
# gateway) on those CPUs only. PostgreSQL and Redis stay where they are.
if [ -n "${BENCH_PIN_CPUS:-}" ] && [ -z "${BENCH_PINNED:-}" ]; then
    exec env BENCH_PINNED=1 taskset -c "$BENCH_PIN_CPUS" "$0" "$@"
fi

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"

log_tag=bench
host=127.0.0.1
pg_port=${BENCH_PG_PORT:-5432}
pg_user=${BENCH_PG_USER:-postgres}
redis_port=${BENCH_REDIS_PORT:-6379}
# shellcheck source=scripts/local-gateway.sh
source "$repo_root/scripts/local-gateway.sh"
# wrk's closed-loop throughput runs.
threads=${BENCH_THREADS:-2}
connections=${BENCH_CONNECTIONS:-64}
max_duration=${BENCH_MAX_DURATION:-10s}
# oha's constant-rate runs.
# Interleaved rounds at each of $rates: every path runs this long once per round.
rounds=${BENCH_ROUNDS:-6}
round_duration=${BENCH_ROUND_DURATION:-5s}
rate_connections=${BENCH_RATE_CONNECTIONS:-32}
rates=${BENCH_RATES:-"500 1000"}
ladder=${BENCH_LADDER:-"2000 3000 4000 5000 6000 8000 10000 12000 15000 20000"}
ladder_duration=${BENCH_LADDER_DURATION:-10s}
# A rate is sustained when the load tool kept it (achieved >= 97 %), every answer was a 200 and the
# gateway's p99 stayed at or under this many milliseconds.
sustain_p99_ms=${BENCH_SUSTAIN_P99_MS:-10}
nginx_workers=${BENCH_NGINX_WORKERS:-1}
# Model servers of the benchmark's version: the same nginx listening on this many ports, each one
# of the version's `endpoints` (weight 1), so that the gateway balances over them; "direct" calls
# the first.
endpoint_count=${BENCH_ENDPOINTS:-1}
# Extra settings for the gateway, as space-separated VAR=value words (e.g. "MAAS_SERVER__WORKERS=1").
read -r -a gateway_env <<<"${BENCH_GATEWAY_ENV:-}"
# When set, a second gateway ("gateway-b") with these settings on top runs beside the first, on the
# same database and Redis, and joins the interleaved rounds: an A/B comparison of two settings (or,
# with BENCH_COMPARE_BINARY, of two builds) that meets the same machine.
read -r -a compare_env <<<"${BENCH_COMPARE_ENV:-}"
compare_binary=${BENCH_COMPARE_BINARY:-}
# Which parts run: max (wrk), rates (interleaved constant rates), ladder; or hold: set everything
# up, write the paths' URLs and the key to $results_dir/hold.env and wait (for profiling by hand)
# until interrupted, then clean up.
parts=${BENCH_PARTS:-"max rates ladder"}
has_part() { [[ " $parts " == *" $1 "* ]]; }
model=bench-proxy

export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH:/usr/sbin"
missing=()
for tool in cargo curl psql redis-cli wrk oha nginx python3 taskset; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "bench: missing ${missing[*]} (Debian: apt-get install wrk nginx-light;" \
        "oha: cargo install oha --locked)" >&2
    exit 1
fi

run_id="proxy-$(date +%Y%m%d-%H%M%S)-$$"
results_dir="$repo_root/bench/results/$run_id"
mkdir -p "$results_dir"
local_run_init bench_proxy
gateway_log="$results_dir/gateway.log"
gateway_b_log="$results_dir/gateway-b.log"
nginx_dir=$(mktemp -d "${TMPDIR:-/tmp}/maas-bench-nginx.XXXXXX")

nginx_pid=""
nginx_proxy_pid=""
gateway_pid=""
gateway_b_pid=""
hold_pid=""
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [ -n "$hold_pid" ]; then kill "$hold_pid" 2>/dev/null || true; fi
    stop_process "$gateway_pid" "the gateway"
    stop_process "$gateway_b_pid" "gateway-b"
    # nginx in the foreground (daemon off): its master stops its workers on SIGTERM.
    stop_process "$nginx_proxy_pid" "the reference nginx proxy"
    stop_process "$nginx_pid" "nginx"
    drop_run_data
    for log in error proxy-error; do
        if [ -s "$nginx_dir/$log.log" ]; then cp "$nginx_dir/$log.log" "$results_dir/nginx-$log.log"; fi
    done
    rm -rf "$nginx_dir"
    # One access line per request: hundreds of MB per run, about tenfold smaller gzipped.
    for log in "$gateway_log" "$gateway_b_log"; do
        if [ -s "$log" ]; then gzip -1 -f "$log" || true; fi
    done
    echo "bench: cleaned up (gateway and nginx stopped, database dropped, keys ${key_prefix}* deleted)" >&2
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------
echo "bench: building the release binary" >&2
binary=$(gateway_binary release)

# The model server: nginx answering every chat completion at once with a fixed body.
nginx_port=$(free_port)
upstream="http://$host:$nginx_port/v1"
extra_ports=()
for ((n = 1; n < endpoint_count; n++)); do extra_ports+=("$(free_port)"); done
endpoints_json="{\"url\":\"$upstream\",\"upstream_api_key\":\"bench-upstream-key\"}"
extra_listen=""
for port in "${extra_ports[@]}"; do
    endpoints_json+=",{\"url\":\"http://$host:$port/v1\",\"upstream_api_key\":\"bench-upstream-key\"}"
    extra_listen+="        listen $host:$port reuseport backlog=4096;"$'\n'
done
# It names the model as a server does, by its own name (the version's served_model); the gateway
# sends the answer on with the name its client asked for (the bytes of that one value rewritten).
completion='{"id":"chatcmpl-bench","object":"chat.completion","created":0,"model":"bench-served","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}'
mkdir -p "$nginx_dir/tmp"
cat >"$nginx_dir/nginx.conf" <<EOF
# Written by bench/proxy.sh; not a system service (runs in the foreground, all paths in here).
worker_processes $nginx_workers;
daemon off;
pid $nginx_dir/nginx.pid;
error_log $nginx_dir/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $nginx_dir/tmp/body;
    proxy_temp_path $nginx_dir/tmp/proxy;
    fastcgi_temp_path $nginx_dir/tmp/fastcgi;
    uwsgi_temp_path $nginx_dir/tmp/uwsgi;
    scgi_temp_path $nginx_dir/tmp/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    server {
        listen $host:$nginx_port reuseport backlog=4096;
$extra_listen        location = /v1/chat/completions {
            default_type application/json;
            return 200 '$completion';
        }
        location / { return 404; }
    }
}
EOF
echo "bench: starting nginx on $upstream ($nginx_workers worker)" >&2
nginx -p "$nginx_dir" -c "$nginx_dir/nginx.conf" -e "$nginx_dir/error.log" &
nginx_pid=$!
wait_http "$upstream/chat/completions" "$nginx_pid" nginx 10

# The reference proxy: a second nginx (also one worker) that passes every request to the first over
# kept-alive connections and does nothing else. Its added latency is the floor for any proxy here.
nginx_proxy_port=$(free_port)
mkdir -p "$nginx_dir/proxy-tmp"
cat >"$nginx_dir/proxy.conf" <<EOF
# Written by bench/proxy.sh: the reference proxy in front of the model server nginx.
worker_processes $nginx_workers;
daemon off;
pid $nginx_dir/proxy.pid;
error_log $nginx_dir/proxy-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $nginx_dir/proxy-tmp/body;
    proxy_temp_path $nginx_dir/proxy-tmp/proxy;
    fastcgi_temp_path $nginx_dir/proxy-tmp/fastcgi;
    uwsgi_temp_path $nginx_dir/proxy-tmp/uwsgi;
    scgi_temp_path $nginx_dir/proxy-tmp/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    upstream model_server {
        server $host:$nginx_port;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen $host:$nginx_proxy_port reuseport backlog=4096;
        location / {
            proxy_pass http://model_server;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
echo "bench: starting the reference nginx proxy on $host:$nginx_proxy_port" >&2
nginx -p "$nginx_dir" -c "$nginx_dir/proxy.conf" -e "$nginx_dir/proxy-error.log" &
nginx_proxy_pid=$!
wait_http "http://$host:$nginx_proxy_port/v1/chat/completions" "$nginx_proxy_pid" "the reference proxy" 10

echo "bench: creating database $db_name" >&2
create_run_database

echo "bench: starting the gateway (release, access log: $gateway_log)" >&2
start_gateway "$binary" "$gateway_log" "${gateway_env[@]}"
gateway_pid=$started_pid
gateway="http://$host:$started_port"
if [ ${#compare_env[@]} -gt 0 ] || [ -n "$compare_binary" ]; then
    echo "bench: starting gateway-b (${compare_binary:-$binary} ${compare_env[*]}; log: $gateway_b_log)" >&2
    start_gateway "${compare_binary:-$binary}" "$gateway_b_log" "${gateway_env[@]}" "${compare_env[@]}"
    gateway_b_pid=$started_pid
    gateway_b="http://$host:$started_port"
fi

api() { admin_api "$@"; }

echo "bench: seeding $model (version 1 on nginx, alias production) and a member's key" >&2
api POST /api/v1/models "{\"name\":\"$model\",\"visibility\":\"public\"}" >/dev/null
api POST "/api/v1/models/$model/versions" \
    "{\"source_uri\":\"s3://bench/m.bin\",\"served_model\":\"bench-served\",\"endpoints\":[$endpoints_json]}" >/dev/null
api PUT "/api/v1/models/$model/aliases/production" '{"version":1}' >/dev/null
member_id=$(api POST /api/v1/users '{"username":"bench-member","role":"member"}' | json_field id)
key=$(api POST /api/v1/keys "{\"name\":\"bench\",\"user_id\":\"$member_id\"}" | json_field key)

body="{\"model\":\"$model\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":8}"
direct_url="$upstream/chat/completions"
gateway_url="$gateway/v1/chat/completions"
proxy_url="http://$host:$nginx_proxy_port/v1/chat/completions"
paths=("direct=$direct_url" "gateway=$gateway_url" "nginx-proxy=$proxy_url")
if [ -n "$gateway_b_pid" ]; then
    paths+=("gateway-b=$gateway_b/v1/chat/completions")
fi

# Every path must answer the model server's exact completion before anything is measured (the
# gateway with the client's name for the model, and with the version it resolved).
gateway_completion=${completion/\"bench-served\"/\"$model\"}
check=$(curl -fsS --max-time 5 -D "$results_dir/check-headers.txt" -H "authorization: Bearer $key" \
    -H 'content-type: application/json' --data "$body" "$gateway_url")
if [ "$check" != "$gateway_completion" ] || ! grep -qi '^x-maas-version: 1' "$results_dir/check-headers.txt"; then
    echo "bench: the gateway did not proxy the completion; it answered:" >&2
    cat "$results_dir/check-headers.txt" >&2
    echo "$check" >&2
    exit 1
fi

oha_args=(--no-tui --output-format json -m POST -H "authorization: Bearer $key"
    -H 'content-type: application/json' -d "$body")
echo "bench: checking and warming up the ${#paths[@]} paths (2,000 requests each)" >&2
for path in "${paths[@]}"; do
    answer=$(curl -fsS --max-time 5 -H "authorization: Bearer $key" -H 'content-type: application/json' \
        --data "$body" "${path#*=}")
    expected=$completion
    [[ "${path%%=*}" == gateway* ]] && expected=$gateway_completion
    [ "$answer" = "$expected" ] || { echo "bench: ${path%%=*} answered: $answer" >&2; exit 1; }
    oha "${oha_args[@]}" -n 2000 -c 16 "${path#*=}" >/dev/null
done

if has_part hold; then
    {
        printf 'KEY=%q\nBODY=%q\n' "$key" "$body"
        for path in "${paths[@]}"; do
            name=${path%%=*}
            printf '%s_URL=%q\n' "$(tr 'a-z-' 'A-Z_' <<<"$name")" "${path#*=}"
        done
        printf 'GATEWAY_PID=%s\nGATEWAY_B_PID=%s\n' "$gateway_pid" "$gateway_b_pid"
    } >"$results_dir/hold.env"
    echo "bench: holding; the paths are in $results_dir/hold.env; Ctrl-C (or SIGTERM) ends" >&2
    # A long sleep, not one a second: each new process would land on the measured CPUs.
    while true; do
        sleep 3600 &
        hold_pid=$!
        wait "$hold_pid"
    done
fi

# parse_wrk FILE: "requests/s<TAB>p50<TAB>p99<TAB>non-2xx" from wrk --latency output.
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

# overhead_buckets FILE: the gateway's maas_gateway_overhead_seconds histogram buckets, now.
overhead_buckets() {
    curl -fsS --max-time 5 "$gateway/metrics" | grep '^maas_gateway_overhead_seconds_bucket' >"$1" || true
}

# overhead_quantiles BEFORE AFTER: "p50<TAB>p99" of the overhead histogram between two scrapes, as
# "<=bound" in ms (the bucket the quantile falls under); "-" when there is nothing (direct runs).
overhead_quantiles() {
    python3 - "$1" "$2" <<'EOF'
import os, re, sys


def buckets(path):
    counts = {}
    if os.path.exists(path):
        for line in open(path):
            found = re.search(r'le="([^"]+)"\}\s+(\S+)', line)
            if found:
                bound = float("inf") if found.group(1) == "+Inf" else float(found.group(1))
                counts[bound] = counts.get(bound, 0) + float(found.group(2))
    return counts


before, after = buckets(sys.argv[1]), buckets(sys.argv[2])
delta = {b: after[b] - before.get(b, 0) for b in after}
count = delta.get(float("inf"), 0)
quantiles = []
for q in (0.5, 0.99):
    bound = next((b for b in sorted(delta) if count and delta[b] >= q * count), None)
    quantiles.append("-" if bound is None else "<=%g" % (bound * 1000))
print("\t".join(quantiles))
EOF
}

# at_rate NAME URL RATE DURATION: one constant-rate oha run; prints
# "achieved<TAB>p50_ms<TAB>p99_ms<TAB>non_200<TAB>overhead p50<TAB>overhead p99" and keeps the JSON
# in the results directory. The overhead columns are the gateway's own view during the run (its
# x-maas-overhead-ms histogram, as the bucket bound the quantile falls under); "-" for direct.
at_rate() {
    local name=$1 url=$2 rate=$3 duration=$4
    local out="$results_dir/oha-$name-$rate.json"
    local before="$results_dir/overhead-$name-$rate.before" after="$results_dir/overhead-$name-$rate.after"
    if [ "$name" = gateway ]; then overhead_buckets "$before"; fi
    oha "${oha_args[@]}" -z "$duration" -q "$rate" -c "$rate_connections" --latency-correction -w \
        "$url" >"$out"
    if [ "$name" = gateway ]; then overhead_buckets "$after"; fi
    python3 - "$out" <<'EOF' | tr -d '\n'
import json, sys

r = json.load(open(sys.argv[1]))
ok = r["statusCodeDistribution"].get("200", 0)
total = sum(r["statusCodeDistribution"].values()) + sum(r["errorDistribution"].values())
m = r["metrics"]["latency_ms"]
print("%.0f\t%.3f\t%.3f\t%d\t" % (r["summary"]["requestsPerSec"], m["p50"], m["p99"], total - ok))
EOF
    overhead_quantiles "$before" "$after"
}

measured_rates=$(has_part rates && echo "$rates" || true)

# Other work on the machine skews every figure: the summary records the load when measuring began.
load_at_start=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------------------------------------
declare -A max_rps
has_part max && echo "bench: highest throughput, wrk -t$threads -c$connections -d$max_duration" >&2
for name in $(has_part max && echo direct gateway); do
    url=$direct_url
    [ "$name" = gateway ] && url=$gateway_url
    out="$results_dir/wrk-$name.txt"
    BENCH_MODEL="$model" wrk -t"$threads" -c"$connections" -d"$max_duration" --latency --timeout 5s \
        -H "authorization: Bearer $key" -s "$repo_root/bench/chat.lua" "$url" >"$out"
    max_rps[$name]=$(parse_wrk "$out")
    echo "bench:   $name: $(cut -f1 <<<"${max_rps[$name]}") requests/s" >&2
done

rows=()
measure_pair() { # RATE DURATION: direct then gateway at RATE; appends a row; 0 when sustained
    local rate=$1 duration=$2 d g
    d=$(at_rate direct "$direct_url" "$rate" "$duration")
    g=$(at_rate gateway "$gateway_url" "$rate" "$duration")
    rows+=("$rate	$d	$g")
    echo "bench:   $rate/s: direct p50/p99 $(cut -f2 <<<"$d")/$(cut -f3 <<<"$d") ms," \
        "gateway $(cut -f2 <<<"$g")/$(cut -f3 <<<"$g") ms, gateway achieved $(cut -f1 <<<"$g")/s," \
        "non-200 $(cut -f4 <<<"$g")" >&2
    python3 -c '
import sys
rate, achieved, p99, bad, limit = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
sys.exit(0 if achieved >= 0.97 * rate and bad == 0 and p99 <= limit else 1)
' "$rate" "$(cut -f1 <<<"$g")" "$(cut -f3 <<<"$g")" "$(cut -f4 <<<"$g")" "$sustain_p99_ms"
}

has_part rates && echo "bench: constant rate (oha -q, -c$rate_connections, latency corrected), $rounds interleaved" \
    "rounds of $round_duration per path" >&2
declare -A interleaved_rows
highest=""
for rate in $measured_rates; do
    overhead_buckets "$results_dir/overhead-interleaved-$rate.before"
    interleaved_rows[$rate]=$(python3 "$repo_root/bench/interleaved.py" "$rate" "$rounds" \
        "$round_duration" "$rate_connections" "$results_dir" "$body" \
        "authorization: Bearer $key" "content-type: application/json" -- \
        "${paths[@]}")
    overhead_buckets "$results_dir/overhead-interleaved-$rate.after"
    interleaved_rows[$rate]+=$'\n'"overhead	$(overhead_quantiles \
        "$results_dir/overhead-interleaved-$rate.before" "$results_dir/overhead-interleaved-$rate.after")"
    printf '%s\n' "${interleaved_rows[$rate]}" >"$results_dir/interleaved-$rate.tsv"
    echo "bench:   $rate/s: $(awk -F'\t' '$1 != "cpu" && $1 != "overhead" { printf "%s p50/p99 %s/%s ms, ", $1, $5, $7 }' \
        "$results_dir/interleaved-$rate.tsv")" >&2
    # Sustained as on the ladder: the rate kept, every answer a 200, p99 within the limit.
    if awk -F'\t' -v rate="$rate" -v limit="$sustain_p99_ms" '
        $1 == "gateway" { ok = ($4 >= 0.97 * rate && $3 == 0 && $7 <= limit) }
        END { exit ok ? 0 : 1 }' "$results_dir/interleaved-$rate.tsv"; then
        highest=$rate
    fi
done
# Without a wrk run, the ladder is capped only by its own list.
gateway_max=1000000000
has_part max && gateway_max=$(cut -f1 <<<"${max_rps[gateway]}")
has_part ladder && echo "bench: ladder up to the gateway's wrk maximum ($gateway_max/s), until p99 > ${sustain_p99_ms} ms" >&2
for rate in $(has_part ladder && echo "$ladder"); do
    if python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) > float(sys.argv[2]) else 1)' "$rate" "$gateway_max"; then
        break
    fi
    if measure_pair "$rate" "$ladder_duration"; then
        highest=$rate
    else
        break
    fi
done

# ---------------------------------------------------------------------------------------------
{
    if has_part max; then
        printf 'Highest throughput (wrk -t%s -c%s -d%s, closed loop)\n' "$threads" "$connections" "$max_duration"
        printf '%-10s %12s %10s %10s  %s\n' "path" "requests/s" "p50" "p99" "non-2xx"
        for name in direct gateway; do
            IFS=$'\t' read -r rps p50 p99 bad <<<"${max_rps[$name]}"
            printf '%-10s %12s %10s %10s  %s\n' "$name" "$rps" "$p50" "$p99" "$bad"
        done
        echo
    fi
    if has_part rates; then
        printf 'Constant rate, interleaved (oha -q, %s connections, latency corrected for coordinated omission;\n' \
            "$rate_connections"
        printf '%s rounds of %s per path, the order reversed every other round; quantiles over all rounds), ms\n' \
            "$rounds" "$round_duration"
        printf '%8s %-12s | %8s %8s %8s %8s | %8s %8s | %8s %7s\n' "rate/s" "path" "p50" "p90" "p99" "p99.9" \
            "added50" "added99" "got/s" "non-200"
        for rate in $measured_rates; do
            python3 - "$rate" "$results_dir/interleaved-$rate.tsv" <<'EOF'
import sys

rate = sys.argv[1]
rows = [line.split("\t") for line in open(sys.argv[2]).read().splitlines() if line]
paths = [r for r in rows if r[0] not in ("cpu", "overhead")]
direct = next(r for r in paths if r[0] == "direct")
for r in paths:
    added = ("%8s %8s" % ("", "")) if r is direct else "%8.3f %8.3f" % (
        float(r[4]) - float(direct[4]), float(r[6]) - float(direct[6]))
    print("%8s %-12s | %8s %8s %8s %8s | %s | %8s %7s" % (rate, r[0], r[4], r[5], r[6], r[7], added, r[3], r[2]))
cpu = next(r for r in rows if r[0] == "cpu")
overhead = next(r for r in rows if r[0] == "overhead")
print("%8s %-12s   machine busy %s %%, hypervisor steal %s %%; gateway's own overhead p50 %s, p99 %s ms"
      % ("", "", cpu[1], cpu[2], overhead[1], overhead[2]))
EOF
        done
        printf '%s\n' "added: the path's percentile minus direct's. nginx-proxy: a second nginx that only proxies" \
            "to the model server, the floor for one more hop on this machine. Steal: time the hypervisor" \
            "gave the machine's CPUs to someone else (/proc/stat)."
        echo
    fi
    if has_part ladder; then
        printf 'Ladder (oha -q, %s connections, %s per run, direct then gateway), ms\n' \
            "$rate_connections" "$ladder_duration"
        printf '%8s | %9s %9s | %9s %9s | %9s %9s | %9s %8s | %8s %8s\n' "rate/s" "direct50" "direct99" \
            "gw p50" "gw p99" "added50" "added99" "gw got/s" "non-200" "ovh p50" "ovh p99"
        for row in "${rows[@]}"; do
            IFS=$'\t' read -r rate _ d50 d99 d_bad _ _ g_rps g50 g99 g_bad o50 o99 <<<"$row"
            printf '%8s | %9s %9s | %9s %9s | %9s %9s | %9s %8s | %8s %8s\n' "$rate" "$d50" "$d99" "$g50" "$g99" \
                "$(python3 -c 'import sys; print("%.3f" % (float(sys.argv[1]) - float(sys.argv[2])))' "$g50" "$d50")" \
                "$(python3 -c 'import sys; print("%.3f" % (float(sys.argv[1]) - float(sys.argv[2])))' "$g99" "$d99")" \
                "$g_rps" "$((d_bad + g_bad))" "$o50" "$o99"
        done
        [ ${#rows[@]} -gt 0 ] || printf '(no ladder rate was below the gateway'"'"'s wrk maximum)\n'
        printf '%s\n' "ovh: the gateway's own overhead histogram (maas_gateway_overhead_seconds) over the" \
            "same run, as the bucket bound in ms that the quantile falls under."
        echo
    fi
    printf 'Highest sustained rate through the gateway (kept >= 97%%, all 200, p99 <= %s ms): %s\n' \
        "$sustain_p99_ms" "${highest:-none of the rates tried}"
    printf '%s, %s cores (load average %s when measuring began); nginx %s worker(s) as the model\n' \
        "$(uname -sr)" "$(nproc --all)" "$load_at_start" "$nginx_workers"
    printf 'server, as the %s endpoint(s) of the version (served_model set, so every answer'"'"'s model is\n' \
        "$endpoint_count"
    printf 'rewritten); gateway release build, access log on; oha %s, wrk %s.\n' \
        "$(oha --version | cut -d' ' -f2)" "$(wrk -v 2>&1 | head -n 1 | cut -d' ' -f2)"
    if [ -n "${BENCH_PIN_CPUS:-}" ]; then
        printf 'Load tool, nginx and gateway(s) pinned to CPU(s) %s (taskset); PostgreSQL and Redis not.\n' \
            "$BENCH_PIN_CPUS"
    fi
} | tee "$results_dir/summary.txt"
echo "bench: raw wrk and oha output and the gateway log are in bench/results/$run_id/" >&2
