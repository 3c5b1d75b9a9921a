# shellcheck shell=bash
# Sourced, not run: what e2e/run.sh and the bench/ scripts share to start a maas-gateway binary on
# loopback against this machine's PostgreSQL and Redis, each run with a database and a Redis key
# prefix of its own, and to clean up after it.
#
#   repo_root=...; log_tag=e2e          # log_tag prefixes this library's messages
#   source "$repo_root/scripts/local-gateway.sh"
#   local_run_init e2e                  # db_name, key_prefix, admin_key, secrets_key
#   binary=$(gateway_binary debug)      # or release
#   create_run_database
#   start_gateway "$binary" "$log" MAAS_X__Y=z ...    # sets started_pid, started_port
#   gateway="http://$host:$started_port"; admin_api POST /api/v1/models '{"name":"m"}'
#   ...; drop_run_data                  # in the caller's EXIT trap
#
# Settings (the caller's environment or variables set before sourcing): host (127.0.0.1),
# pg_port (5432), pg_user (postgres), redis_port (6379). Only $host is ever contacted.

host=${host:-127.0.0.1}
pg_port=${pg_port:-5432}
pg_user=${pg_user:-postgres}
redis_port=${redis_port:-6379}
log_tag=${log_tag:-gateway}

random_hex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

psql_admin() {
    PGOPTIONS='-c client_min_messages=warning' psql -h "$host" -p "$pg_port" -U "$pg_user" \
        -d postgres -w -v ON_ERROR_STOP=1 -qAt "$@"
}

# local_run_init TAG: names of this run's database and Redis key prefix, the bootstrap admin's key
# and the key upstream credentials are encrypted with, all random.
local_run_init() {
    local tag=$1
    run_suffix="$(date +%Y%m%d%H%M%S)_$$_$(random_hex 3)"
    db_name="maas_${tag}_$run_suffix"
    key_prefix="maas:$tag:$run_suffix:"
    admin_key="maas_${tag}admin$(random_hex 20)"
    secrets_key=$(head -c 32 /dev/urandom | base64)
    db_created=false
}

create_run_database() {
    psql_admin -c "CREATE DATABASE \"$db_name\""
    db_created=true
}

# drop_run_data: this run's database and only this run's Redis keys (its prefix is its own).
drop_run_data() {
    if [ "${db_created:-false}" = true ]; then
        psql_admin -c "DROP DATABASE IF EXISTS \"$db_name\" WITH (FORCE)" || true
        db_created=false
    fi
    if [ -n "${key_prefix:-}" ]; then
        redis-cli -h "$host" -p "$redis_port" --scan --pattern "${key_prefix}*" 2>/dev/null |
            xargs -r -n 500 redis-cli -h "$host" -p "$redis_port" unlink >/dev/null 2>&1 || true
    fi
}

# stop_process PID NAME: SIGTERM, up to 10 s for it to exit, then SIGKILL.
stop_process() {
    local pid=$1 name=$2 i
    [ -n "$pid" ] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "$log_tag: $name did not stop within 10 s of SIGTERM: killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
}

# wait_http URL PID NAME SECONDS: until URL answers (any status), failing when PID exits first.
wait_http() {
    local url=$1 pid=$2 name=$3 seconds=$4 i
    for ((i = 0; i < seconds * 10; i++)); do
        if curl -sS --max-time 1 -o /dev/null "$url" 2>/dev/null; then
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "$log_tag: $name exited during start-up" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "$log_tag: $name did not answer within ${seconds}s" >&2
    return 1
}

# wait_for_line FILE PID SECONDS NAME PATTERN: until FILE has a line matching PATTERN (grep -E),
# failing when PID exits first or SECONDS pass.
wait_for_line() {
    local file=$1 pid=$2 seconds=$3 name=$4 pattern=$5 i
    for ((i = 0; i < seconds * 10; i++)); do
        if grep -qE "$pattern" "$file" 2>/dev/null; then
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "$log_tag: $name exited during start-up" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "$log_tag: $name did not start within ${seconds}s" >&2
    return 1
}

# gateway_binary PROFILE (debug or release): builds the binary; prints its path.
gateway_binary() {
    local profile=$1 target_dir
    if [ "$profile" = release ]; then
        cargo build --release --locked --package maas-gateway --bin maas-gateway >&2
    else
        cargo build --locked --package maas-gateway --bin maas-gateway >&2
    fi
    target_dir=$(cargo metadata --format-version 1 --no-deps |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
    echo "$target_dir/$profile/maas-gateway"
}

# start_gateway BINARY LOG [VAR=value...]: starts `BINARY serve` in the background, logging JSON
# to LOG, with only these settings (env -i: no stray MAAS_* of the caller's shell): port 0 on
# $host, this run's database and Redis prefix, the bootstrap admin key, the secrets key, model
# servers allowed on loopback (where the stubs run: what an operator serving from the gateway's
# own host does), a rate limit far above any load; then the given ones, which win. Waits for its
# "listening" line and /health; sets started_pid and started_port.
start_gateway() {
    local bin=$1 log=$2
    shift 2
    env -i PATH="$PATH" HOME="${HOME:-/root}" \
        MAAS_CONFIG="$repo_root/bins/maas-gateway/tests/empty.toml" \
        MAAS_SERVER__HOST="$host" \
        MAAS_SERVER__PORT=0 \
        MAAS_DATABASE__URL="postgres://$pg_user@$host:$pg_port/$db_name" \
        MAAS_REDIS__URL="redis://$host:$redis_port/0" \
        MAAS_REDIS__KEY_PREFIX="$key_prefix" \
        MAAS_AUTH__BOOTSTRAP_ADMIN_KEY="$admin_key" \
        MAAS_SECRETS__ENCRYPTION_KEY="$secrets_key" \
        MAAS_UPSTREAM__ALLOWED_NETWORKS=127.0.0.0/8,::1/128 \
        MAAS_RATE_LIMIT__DEFAULT_RPM=1000000000 \
        MAAS_RATE_LIMIT__BURST=1000000 \
        MAAS_LOG__LEVEL=info \
        MAAS_LOG__FORMAT=json \
        "$@" \
        "$bin" serve >"$log" 2>&1 &
    started_pid=$!
    wait_for_line "$log" "$started_pid" 90 "the gateway" '"msg":"listening"' ||
        { tail -n 20 "$log" >&2; return 1; }
    started_port=$(python3 -c '
import json, sys
for line in open(sys.argv[1]):
    try:
        entry = json.loads(line)
    except ValueError:
        continue
    if entry.get("msg") == "listening" and entry.get("port"):
        print(entry["port"])
        break
' "$log")
    [ -n "$started_port" ] || { echo "$log_tag: the gateway's \"listening\" line has no port" >&2; return 1; }
    wait_http "http://$host:$started_port/health" "$started_pid" "the gateway" 10
}

# admin_api METHOD PATH [BODY]: the answer of the gateway at $gateway as the bootstrap admin;
# fails unless it is 2xx.
admin_api() {
    local args=(-fsS --max-time 10 -X "$1" -H "authorization: Bearer $admin_key")
    if [ $# -ge 3 ]; then
        args+=(-H 'content-type: application/json' --data "$3")
    fi
    curl "${args[@]}" "$gateway$2"
}

# json_field FIELD: FIELD of the JSON object on stdin.
json_field() { python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
