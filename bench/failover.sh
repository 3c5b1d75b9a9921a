#!/usr/bin/env bash
# Failover benchmark of maas-gateway on this machine (see bench/README.md). Not part of the tests.
#
#   bench/failover.sh                           # about 2 minutes once the release build exists
#   BENCH_RATE=2000 bench/failover.sh           # another constant rate
#
# Three nginx processes on loopback ports stand in for three replicas of a model server (each
# answers every chat completion at once with a fixed body); one version of a model has the three
# as its `endpoints`. Through a release gateway, oha sends chat completions at a constant rate
# (BENCH_RATE, 1,000/s; latency corrected for coordinated omission):
#   1. "before": BENCH_BEFORE (20 s) with all three endpoints up;
#   2. "after": the minute that follows (BENCH_AFTER, 60 s), during which, BENCH_KILL_AFTER (2 s)
#      in, one of the three nginx processes is killed (SIGKILL: its connections reset, new ones
#      refused), as a crashed model server would be.
# It prints, per phase, the calls, the ones that were not a 200 (and why), p50, p99 and p99.9, and
# the gateway's own counts (maas_upstream_retries_total, maas_upstream_ejections_total, the killed
# endpoint's maas_upstream_endpoint_state). What to expect: calls in flight on the killed server's
# connections when it dies fail (they may have reached it, so they are not retried); calls after
# that go to the other two, the first few of them after a retry on a refused connection, until
# the endpoint is taken out. On exit (also on failure or Ctrl-C) it stops nginx and the gateway,
# drops the database and deletes only its own Redis keys. Only 127.0.0.1 is contacted.
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
rate=${BENCH_RATE:-1000}
before=${BENCH_BEFORE:-20}
after=${BENCH_AFTER:-60}
kill_after=${BENCH_KILL_AFTER:-2}
connections=${BENCH_RATE_CONNECTIONS:-32}
model=bench-failover

export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH:/usr/sbin"
missing=()
for tool in cargo curl psql redis-cli oha nginx python3; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "bench: missing ${missing[*]} (Debian: apt-get install nginx-light; oha: cargo install oha --locked)" >&2
    exit 1
fi

run_id="failover-$(date +%Y%m%d-%H%M%S)-$$"
results_dir="$repo_root/bench/results/$run_id"
mkdir -p "$results_dir"
local_run_init bench_failover
gateway_log="$results_dir/gateway.log"
nginx_dir=$(mktemp -d "${TMPDIR:-/tmp}/maas-bench-failover.XXXXXX")

nginx_pids=()
gateway_pid=""
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    stop_process "$gateway_pid" "the gateway"
    for pid in "${nginx_pids[@]}"; do stop_process "$pid" "nginx"; done
    drop_run_data
    rm -rf "$nginx_dir"
    if [ -s "$gateway_log" ]; then gzip -1 -f "$gateway_log" || true; fi
    echo "bench: cleaned up (gateway and nginx stopped, database dropped, keys ${key_prefix}* deleted)" >&2
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------
echo "bench: building the release binary" >&2
binary=$(gateway_binary release)

completion='{"id":"chatcmpl-bench","object":"chat.completion","created":0,"model":"bench","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}'
endpoints=()
for n in 0 1 2; do
    port=$(free_port)
    mkdir -p "$nginx_dir/$n/tmp"
    cat >"$nginx_dir/$n/nginx.conf" <<EOF
# Written by bench/failover.sh: model server replica $n (foreground, all paths in here).
worker_processes 1;
daemon off;
pid $nginx_dir/$n/nginx.pid;
error_log $nginx_dir/$n/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $nginx_dir/$n/tmp/body;
    proxy_temp_path $nginx_dir/$n/tmp/proxy;
    fastcgi_temp_path $nginx_dir/$n/tmp/fastcgi;
    uwsgi_temp_path $nginx_dir/$n/tmp/uwsgi;
    scgi_temp_path $nginx_dir/$n/tmp/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    server {
        listen $host:$port backlog=4096;
        location = /v1/chat/completions {
            default_type application/json;
            return 200 '$completion';
        }
        location / { return 404; }
    }
}
EOF
    nginx -p "$nginx_dir/$n" -c "$nginx_dir/$n/nginx.conf" -e "$nginx_dir/$n/error.log" &
    nginx_pids+=($!)
    wait_http "http://$host:$port/v1/chat/completions" "${nginx_pids[$n]}" "nginx $n" 10
    endpoints+=("{\"url\":\"http://$host:$port/v1\"}")
done
echo "bench: three model server replicas (nginx) on ports of 127.0.0.1" >&2

echo "bench: creating database $db_name" >&2
create_run_database
echo "bench: starting the gateway (release, access log: $gateway_log)" >&2
start_gateway "$binary" "$gateway_log"
gateway_pid=$started_pid
gateway="http://$host:$started_port"

admin_api POST /api/v1/models "{\"name\":\"$model\"}" >/dev/null
admin_api POST "/api/v1/models/$model/versions" \
    "{\"source_uri\":\"s3://bench/m.bin\",\"endpoints\":[$(IFS=,; echo "${endpoints[*]}")]}" >/dev/null
body="{\"model\":\"$model\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":8}"
url="$gateway/v1/chat/completions"
for _ in 1 2 3 4 5 6; do # every endpoint answers before anything is measured
    curl -fsS --max-time 5 -o /dev/null -H "authorization: Bearer $admin_key" \
        -H 'content-type: application/json' --data "$body" "$url"
done

# phase NAME SECONDS: one constant-rate oha run, its JSON kept.
phase() {
    oha --no-tui --output-format json -z "$2s" -q "$rate" -c "$connections" --latency-correction \
        -m POST -H "authorization: Bearer $admin_key" -H 'content-type: application/json' \
        -d "$body" "$url" >"$results_dir/oha-$1.json"
}
metric() { curl -fsS --max-time 5 "$gateway/metrics" | grep -E "^$1" || true; }

load_at_start=$(cut -d' ' -f1-3 /proc/loadavg)
echo "bench: before: ${before} s at $rate/s, three endpoints up" >&2
phase before "$before"
metric 'maas_upstream_(retries|ejections)_total' >"$results_dir/metrics-before.txt"
echo "bench: after: ${after} s at $rate/s; endpoint 1 (nginx) killed ${kill_after} s in" >&2
phase after "$after" &
load_pid=$!
sleep "$kill_after"
# The master and its worker at once (the worker would go on serving without its master).
victims=("${nginx_pids[1]}" $(pgrep -P "${nginx_pids[1]}" || true))
kill -KILL "${victims[@]}"
wait "${nginx_pids[1]}" 2>/dev/null || true
nginx_pids[1]=""
wait "$load_pid"
metric 'maas_upstream_(retries|ejections)_total|maas_upstream_endpoint_state' >"$results_dir/metrics-after.txt"

python3 - "$results_dir" "$rate" "$kill_after" "$load_at_start" "$(nproc --all)" "$(uname -sr)" <<'EOF' | tee "$results_dir/summary.txt"
import json, os, re, sys

results, rate, kill_after, load, cores, kernel = sys.argv[1:7]
print("Failover: chat completions at %s/s through the gateway, one version with three endpoints (nginx)" % rate)
print("%-8s %8s %8s %10s %10s %10s  %s" % ("phase", "calls", "non-200", "p50 ms", "p99 ms", "p99.9 ms", "what the non-200 were"))
for name in ("before", "after"):
    r = json.load(open(os.path.join(results, "oha-%s.json" % name)))
    codes = r["statusCodeDistribution"]
    # Calls still in flight when the run's time is up are cut by oha itself: not failures.
    errors = {k: v for k, v in r["errorDistribution"].items() if k != "aborted due to deadline"}
    total = sum(codes.values()) + sum(errors.values())
    bad = total - codes.get("200", 0)
    what = ", ".join(["%s x%s" % (k, v) for k, v in codes.items() if k != "200"]
                     + ["%s x%s" % (k, v) for k, v in errors.items()]) or "-"
    pct = r["latencyPercentiles"]
    p50, p99, p999 = (pct[q] * 1000 for q in ("p50", "p99", "p99.9"))
    print("%-8s %8d %8d %10.3f %10.3f %10.3f  %s" % (name, total, bad, p50, p99, p999, what))
def counters(path):
    out = {}
    for line in open(path):
        found = re.match(r'(\S+?)(\{.*\})?\s+(\S+)$', line.strip())
        if found:
            out[found.group(1) + (found.group(2) or "")] = float(found.group(3))
    return out
b, a = counters(os.path.join(results, "metrics-before.txt")), counters(os.path.join(results, "metrics-after.txt"))
for counter in ("maas_upstream_retries_total", "maas_upstream_ejections_total"):
    grew = sum(v for k, v in a.items() if k.startswith(counter)) - sum(v for k, v in b.items() if k.startswith(counter))
    print("%s: +%g in the minute after" % (counter, grew))
for name in sorted(a):
    if name.startswith("maas_upstream_endpoint_state"):
        print("%s = %g at the end" % (name, a[name]))
print("endpoint 1 killed %s s into the minute after; %s, %s cores, load average %s when measuring began"
      % (kill_after, kernel, cores, load))
EOF
