#!/usr/bin/env bash
# End-to-end test: the official `openai` Python package against maas-gateway (see e2e/README.md).
#
#   e2e/run.sh
#
# Builds the debug binary, creates a fresh database on the local PostgreSQL and a Redis key prefix
# of its own, starts the stub upstream (e2e/stub_upstream.py) and the gateway on free loopback
# ports, seeds a model with two versions served by the stub, then runs e2e/test_openai_sdk.py in a
# virtualenv (created once under the target directory, reused after). On exit, also on failure or
# Ctrl-C, it stops both servers, drops the database and deletes only its own Redis keys.
# Only 127.0.0.1 is ever contacted, and every wait is bounded.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"

host=127.0.0.1
pg_port=${E2E_PG_PORT:-5432}
pg_user=${E2E_PG_USER:-postgres}
redis_port=${E2E_REDIS_PORT:-6379}

for tool in cargo curl psql redis-cli python3; do
    command -v "$tool" >/dev/null || { echo "e2e: $tool is required" >&2; exit 1; }
done

random_hex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }
run_id="$(date +%Y%m%d%H%M%S)_$$_$(random_hex 3)"
db_name="maas_e2e_$run_id"
key_prefix="maas:e2e:$run_id:"
admin_key="maas_e2eadmin$(random_hex 20)"
# The versions below carry upstream credentials, which are stored encrypted under this key.
secrets_key=$(head -c 32 /dev/urandom | base64)
work_dir=$(mktemp -d "${TMPDIR:-/tmp}/maas-e2e.XXXXXX")
gateway_log="$work_dir/gateway.log"
stub_log="$work_dir/stub.log"

psql_admin() {
    PGOPTIONS='-c client_min_messages=warning' psql -h "$host" -p "$pg_port" -U "$pg_user" \
        -d postgres -w -v ON_ERROR_STOP=1 -qAt "$@"
}

# stop_process PID NAME: SIGTERM, up to 10 s for it to exit, then SIGKILL.
stop_process() {
    local pid=$1 name=$2 i
    [ -n "$pid" ] || return 0
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "e2e: $name did not stop within 10 s of SIGTERM: killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
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
    stop_process "$stub_pid" "the stub upstream"
    if [ "$db_created" = true ]; then
        psql_admin -c "DROP DATABASE IF EXISTS \"$db_name\" WITH (FORCE)" || true
    fi
    # Only this run's keys: the prefix is unique to it.
    redis-cli -h "$host" -p "$redis_port" --scan --pattern "${key_prefix}*" 2>/dev/null \
        | xargs -r -n 500 redis-cli -h "$host" -p "$redis_port" unlink >/dev/null 2>&1 || true
    if [ "$status" -ne 0 ]; then
        echo "e2e: FAILED (exit $status); last lines of the logs (all kept in $work_dir):" >&2
        for log in "$gateway_log" "$stub_log"; do
            if [ -s "$log" ]; then
                echo "--- $log" >&2
                tail -n 30 "$log" >&2
            fi
        done
    else
        rm -rf "$work_dir"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# wait_for_line FILE PID SECONDS NAME PATTERN: waits until FILE has a line matching PATTERN
# (grep -E), failing when PID exits first or SECONDS pass.
wait_for_line() {
    local file=$1 pid=$2 seconds=$3 name=$4 pattern=$5 i
    for ((i = 0; i < seconds * 10; i++)); do
        if grep -qE "$pattern" "$file" 2>/dev/null; then
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "e2e: $name exited during start-up" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "e2e: $name did not start within ${seconds}s" >&2
    return 1
}

# ---------------------------------------------------------------------------------------------
echo "e2e: building the gateway (debug)" >&2
cargo build --package maas-gateway --bin maas-gateway
target_dir=$(cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
binary="$target_dir/debug/maas-gateway"

# The virtualenv is kept between runs and rebuilt only when the requirements change.
venv="$target_dir/e2e-venv"
requirements="$repo_root/e2e/requirements.txt"
stamp="$venv/.requirements.sha256"
wanted=$(sha256sum "$requirements" | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    echo "e2e: creating the virtualenv $venv" >&2
    rm -rf "$venv"
    if ! python3 -m venv "$venv"; then
        echo "e2e: python3 -m venv failed (Debian: apt-get install python3-venv)" >&2
        exit 1
    fi
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
    echo "$wanted" >"$stamp"
fi

echo "e2e: creating database $db_name" >&2
psql_admin -c "CREATE DATABASE \"$db_name\""
db_created=true

echo "e2e: starting the stub upstream" >&2
python3 -u e2e/stub_upstream.py 0 >"$work_dir/stub.port" 2>"$stub_log" &
stub_pid=$!
wait_for_line "$work_dir/stub.port" "$stub_pid" 10 "the stub upstream" '^[0-9]+$'
stub_port=$(head -n 1 "$work_dir/stub.port")
stub_url="http://$host:$stub_port"

echo "e2e: starting the gateway (log: $gateway_log)" >&2
# env -i: only the settings below reach it (no stray MAAS_* variable of the caller's shell).
env -i PATH="$PATH" HOME="${HOME:-/root}" \
    MAAS_CONFIG="$repo_root/bins/maas-gateway/tests/empty.toml" \
    MAAS_SERVER__HOST="$host" \
    MAAS_SERVER__PORT=0 \
    MAAS_DATABASE__URL="postgres://$pg_user@$host:$pg_port/$db_name" \
    MAAS_REDIS__URL="redis://$host:$redis_port/0" \
    MAAS_REDIS__KEY_PREFIX="$key_prefix" \
    MAAS_AUTH__BOOTSTRAP_ADMIN_KEY="$admin_key" \
    MAAS_RATE_LIMIT__DEFAULT_RPM=100000 \
    MAAS_RATE_LIMIT__BURST=10000 \
    MAAS_UPSTREAM__ALLOWED_NETWORKS=127.0.0.0/8,::1/128 \
    MAAS_SECRETS__ENCRYPTION_KEY="$secrets_key" \
    MAAS_LOG__LEVEL=info \
    MAAS_LOG__FORMAT=json \
    "$binary" serve >"$gateway_log" 2>&1 &
gateway_pid=$!
wait_for_line "$gateway_log" "$gateway_pid" 90 "the gateway" '"msg":"listening"'
gateway_port=$(python3 -c '
import json, sys
for line in open(sys.argv[1]):
    try:
        entry = json.loads(line)
    except ValueError:
        continue
    if entry.get("msg") == "listening" and entry.get("port"):
        print(entry["port"])
        break
' "$gateway_log")
if [ -z "$gateway_port" ]; then
    echo "e2e: the gateway's \"listening\" log line has no port" >&2
    exit 1
fi
gateway_url="http://$host:$gateway_port"
curl -fsS --max-time 5 -o /dev/null "$gateway_url/health"

# api METHOD PATH [BODY]: the gateway's answer as admin; fails unless it is 2xx.
api() {
    local args=(-fsS --max-time 10 -X "$1" -H "authorization: Bearer $admin_key")
    if [ $# -ge 3 ]; then
        args+=(-H 'content-type: application/json' --data "$3")
    fi
    curl "${args[@]}" "$gateway_url$2"
}
json_field() { python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }

model="e2e-model"
upstream_key_1="upstream-secret-one-$(random_hex 8)"
upstream_key_2="upstream-secret-two-$(random_hex 8)"
echo "e2e: seeding $model: versions 1 (production) and 2 (canary) on $stub_url/v1" >&2
api POST /api/v1/models "{\"name\":\"$model\",\"description\":\"served by the e2e stub\",\"visibility\":\"public\"}" >/dev/null
api POST "/api/v1/models/$model/versions" \
    "{\"source_uri\":\"s3://e2e/v1.bin\",\"endpoint_url\":\"$stub_url/v1\",\"upstream_api_key\":\"$upstream_key_1\"}" >/dev/null
api POST "/api/v1/models/$model/versions" \
    "{\"source_uri\":\"s3://e2e/v2.bin\",\"endpoint_url\":\"$stub_url/v1\",\"upstream_api_key\":\"$upstream_key_2\"}" >/dev/null
api PUT "/api/v1/models/$model/aliases/production" '{"version":1}' >/dev/null
api PUT "/api/v1/models/$model/aliases/canary" '{"version":2}' >/dev/null
usage_model="e2e-usage"
api POST /api/v1/models "{\"name\":\"$usage_model\",\"visibility\":\"public\"}" >/dev/null
api POST "/api/v1/models/$usage_model/versions" \
    "{\"source_uri\":\"s3://e2e/u.bin\",\"endpoint_url\":\"$stub_url/v1\"}" >/dev/null
# The SDK calls with a member's own key, as a platform user would.
member_id=$(api POST /api/v1/users '{"username":"e2e-member","role":"member"}' | json_field id)
member_key=$(api POST /api/v1/keys "{\"name\":\"e2e\",\"user_id\":\"$member_id\"}" | json_field key)

echo "e2e: running e2e/test_openai_sdk.py" >&2
E2E_GATEWAY_URL="$gateway_url" \
E2E_API_KEY="$member_key" \
E2E_ADMIN_KEY="$admin_key" \
E2E_MODEL="$model" \
E2E_USAGE_MODEL="$usage_model" \
E2E_STUB_URL="$stub_url" \
E2E_UPSTREAM_KEY_1="$upstream_key_1" \
E2E_UPSTREAM_KEY_2="$upstream_key_2" \
    timeout 300 "$venv/bin/python" e2e/test_openai_sdk.py
