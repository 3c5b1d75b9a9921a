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

log_tag=e2e
host=127.0.0.1
pg_port=${E2E_PG_PORT:-5432}
pg_user=${E2E_PG_USER:-postgres}
redis_port=${E2E_REDIS_PORT:-6379}
# shellcheck source=scripts/local-gateway.sh
source "$repo_root/scripts/local-gateway.sh"

for tool in cargo curl psql redis-cli python3; do
    command -v "$tool" >/dev/null || { echo "e2e: $tool is required" >&2; exit 1; }
done

local_run_init e2e
work_dir=$(mktemp -d "${TMPDIR:-/tmp}/maas-e2e.XXXXXX")
gateway_log="$work_dir/gateway.log"
stub_log="$work_dir/stub.log"

stub_pid=""
gateway_pid=""
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    stop_process "$gateway_pid" "the gateway"
    stop_process "$stub_pid" "the stub upstream"
    drop_run_data
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

# ---------------------------------------------------------------------------------------------
echo "e2e: building the gateway (debug)" >&2
binary=$(gateway_binary debug)
target_dir=$(dirname "$(dirname "$binary")")

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
create_run_database

echo "e2e: starting the stub upstream" >&2
python3 -u e2e/stub_upstream.py 0 >"$work_dir/stub.port" 2>"$stub_log" &
stub_pid=$!
wait_for_line "$work_dir/stub.port" "$stub_pid" 10 "the stub upstream" '^[0-9]+$'
stub_port=$(head -n 1 "$work_dir/stub.port")
stub_url="http://$host:$stub_port"

echo "e2e: starting the gateway (log: $gateway_log)" >&2
start_gateway "$binary" "$gateway_log" \
    MAAS_RATE_LIMIT__DEFAULT_RPM=100000 \
    MAAS_RATE_LIMIT__BURST=10000
gateway_pid=$started_pid
gateway="http://$host:$started_port"
gateway_url=$gateway
api() { admin_api "$@"; }

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
