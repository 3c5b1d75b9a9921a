#!/usr/bin/env bash
# The container test: the runtime image and compose.yaml, built and run in a real Docker engine
# and checked from outside, as a user would run them.
#
#   docker/test.sh            # from anywhere; .ci/run calls it after the other checks
#
# 1. An engine: the one that answers, else ../shared/tools/offline-images/engine-up (stopped
#    again at the end). Base images: present, else pulled, else (no registry, as on the CI
#    machines) built as local stand-ins by ../shared/tools/offline-images/build-standins.
# 2. The runtime image, built with BuildKit: at most 40 MB, user 65532, no shell, `--version`
#    works, an exec-form HEALTHCHECK.
# 3. The stack from compose.yaml under a project name of its own, with nothing published but the
#    gateway (on a free loopback port): healthy; /health, /health/ready, the bootstrap admin key,
#    a model served by a stub model server container on the compose network, an alias, a chat
#    completion and a streamed one, /metrics.
# 4. Restart, down + up: the model, its alias, a member's API key created through the API (it
#    still authenticates as that member) and the usage rows are still there. `stop` while a
#    stream is in flight: the stream completes, exit code 0, the log shows the drain and the
#    usage flush.
# 5. Postgres killed: readiness 503 within 5 s (from the kill to the first 503 answer, printed),
#    ready again by itself once Postgres is started again, with no gateway restart; a killed
#    gateway process is brought back by `restart: unless-stopped`.
# 6. Three replicas behind the `lb` profile's proxy, each also reached on its own published
#    port: a model (version, alias) created through one is read and served at once by the other
#    two, which had just been asked for it (404); one rate limit holds across them (calls sent
#    round-robin to the three replicas' own ports); each replica's memory (RSS) idle and under
#    load through the proxy is printed.
# 7. The `tests` profile for one crate (CRATE=maas-domain).
# On exit, also on failure: its background jobs (a held stream, a `stop`, the load generator)
# killed, `down -v` of everything it started, its containers removed (its images stay, as build
# cache), and an engine it started is stopped.
#
# Env: KEEP=1 leaves the stack running for a look; DOCKER_TEST_PARTS (default
# "image stack restart outage replicas tests") runs only some parts, in that order (each needs
# the image; restart, outage and replicas need stack).
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"
offline="${OFFLINE_IMAGES_DIR:-$(dirname "$repo_root")/shared/tools/offline-images}"
parts=" ${DOCKER_TEST_PARTS:-image stack restart outage replicas tests} "
part() { [[ "$parts" == *" $1 "* ]]; }

random_hex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }
run_id="$(date +%H%M%S)$(random_hex 2)"
project="maasci$run_id"
work=$(mktemp -d "${TMPDIR:-/tmp}/maas-docker-test.XXXXXX")
started_engine=false
stub=""
compose_cli=()
t0=$(date +%s)

say() { printf '[docker-test %4ss] %s\n' "$(($(date +%s) - t0))" "$*"; }
fail() {
    printf '[docker-test] FAILED: %s\n' "$*" >&2
    exit 1
}

# ---------------------------------------------------------------------------------------------
# Clean-up, also on failure.
# kill_tree PID: SIGKILL to a background job of this script and every process under it (a job
# running a shell function is a subshell, whose child does the work), children first. Only for
# this script's own jobs that are still running (`jobs -rp`), whose ids cannot have been reused.
kill_tree() {
    local child
    [[ "$1" =~ ^[0-9]+$ ]] && [ "$1" -gt 1 ] || return 0
    for child in $(pgrep -P "$1" 2>/dev/null || true); do kill_tree "$child"; done
    kill -KILL "$1" 2>/dev/null || true
}
# cleanup [STATUS]: the exit trap; STATUS when called for a signal (else the script's own).
cleanup() {
    local status=${1:-$?} pid
    trap - EXIT INT TERM
    # Background jobs first (a held stream, a `stop`, the load generator): none outlives the test.
    # Reaped quietly, so that bash does not report each kill.
    for pid in $(jobs -rp); do kill_tree "$pid"; done
    for pid in $(jobs -p); do wait "$pid" 2>/dev/null || true; done
    [ "$status" -lt 128 ] || echo "[docker-test] interrupted (exit $status): cleaning up" >&2
    if [ "$status" -ne 0 ] && [ ${#compose_cli[@]} -gt 0 ]; then
        echo "[docker-test] logs of the stack (the last 60 lines of each):" >&2
        compose --profile lb logs --no-color --tail=60 >&2 2>/dev/null || true
        if [ -n "$stub" ]; then docker logs --tail 20 "$stub" >&2 2>/dev/null || true; fi
    fi
    if [ "${KEEP:-0}" = 1 ]; then
        echo "[docker-test] KEEP=1: project $project left running (compose -p $project ...)" >&2
    else
        if [ -n "$stub" ]; then docker rm -f "$stub" >/dev/null 2>&1 || true; fi
        if [ ${#compose_cli[@]} -gt 0 ]; then
            compose --profile lb --profile test down -v --remove-orphans >/dev/null 2>&1 || true
        fi
        if [ "$started_engine" = true ]; then
            "$offline/engine-down" >/dev/null 2>&1 || true
        fi
    fi
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT
trap 'cleanup 130' INT
trap 'cleanup 143' TERM

# ---------------------------------------------------------------------------------------------
# Engine, clients, base images.
if ! docker info >/dev/null 2>&1; then
    [ -x "$offline/engine-up" ] || fail "no Docker engine answers and $offline/engine-up is missing"
    say "starting a Docker engine ($offline/engine-up)"
    "$offline/engine-up"
    started_engine=true
fi

if docker compose version >/dev/null 2>&1; then
    compose_cli=(docker compose)
elif command -v docker-compose >/dev/null; then
    compose_cli=(docker-compose)
else
    fail "neither 'docker compose' nor 'docker-compose' is installed"
fi
compose() { "${compose_cli[@]}" -p "$project" -f "$repo_root/compose.yaml" "$@"; }

# A client that builds with BuildKit: buildx when there is one; else a client with BuildKit built
# in (Debian's 20.10 at /usr/bin/docker; a newer client without buildx refuses DOCKER_BUILDKIT=1).
build_cli=()
if docker buildx version >/dev/null 2>&1; then
    build_cli=(docker buildx build --load)
else
    for cli in docker /usr/bin/docker; do
        command -v "$cli" >/dev/null || continue
        if printf 'FROM scratch\nLABEL probe=1\n' |
            DOCKER_BUILDKIT=1 "$cli" build -q -t "maas-buildkit-probe:$run_id" - >/dev/null 2>&1; then
            docker rmi "maas-buildkit-probe:$run_id" >/dev/null 2>&1 || true
            build_cli=(env DOCKER_BUILDKIT=1 "$cli" build)
            break
        fi
    done
fi
[ ${#build_cli[@]} -gt 0 ] || fail "no Docker client here builds with BuildKit (install buildx)"

# build TAG DOCKERFILE CONTEXT [ARGS...]: a BuildKit build, its log kept in $work.
build() {
    local tag=$1 file=$2 context=$3 started
    shift 3
    started=$(date +%s)
    local log="$work/build-${tag//[:\/]/_}.log"
    if ! "${build_cli[@]}" --progress=plain -f "$file" -t "$tag" "$@" "$context" >"$log" 2>&1; then
        tail -40 "$log" >&2
        fail "building $tag from $file"
    fi
    say "built $tag ($(($(date +%s) - started)) s)"
}

rust_image=$(awk '/^FROM rust:/ {print $2; exit}' docker/Dockerfile)
runtime_base=$(awk '/^FROM gcr.io/ {print $2; exit}' docker/Dockerfile)
# ensure_image NAME STANDIN: present, or pulled, or built as a stand-in.
ensure_image() {
    local name=$1 standin=$2 rust_version=${rust_image#rust:}
    rust_version=${rust_version%%-*}
    docker image inspect "$name" >/dev/null 2>&1 && return 0
    if timeout 120 docker pull -q "$name" >/dev/null 2>&1; then
        say "pulled $name"
        return 0
    fi
    [ -x "$offline/build-standins" ] || fail "$name cannot be pulled and there are no stand-ins"
    say "$name cannot be pulled: building a local stand-in"
    RUST_VERSION="$rust_version" "$offline/build-standins" "$standin" >"$work/standin-$standin.log" 2>&1 ||
        { tail -30 "$work/standin-$standin.log" >&2; fail "building the stand-in of $name"; }
}
ensure_image debian:bookworm-slim debian
ensure_image "$rust_image" rust
ensure_image "$runtime_base" distroless
ensure_image postgres:15-alpine postgres
ensure_image redis:7-alpine redis


# ---------------------------------------------------------------------------------------------
# Helpers.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# json EXPR: evaluates a Python expression over the JSON on stdin, bound to `d`.
json() { python3 -c 'import json, sys; d = json.load(sys.stdin); print(eval(sys.argv[1]))' "$1"; }
# http METHOD URL [BODY]: prints the body, then the status on a line of its own. As the admin;
# `as_key=KEY http ...` (or expect) calls with another key.
http() {
    local method=$1 url=$2 body=${3:-}
    local args=(-sS -m 30 -X "$method" -H "Authorization: Bearer ${as_key:-$MAAS_ADMIN_KEY}"
        -w '\n%{http_code}')
    [ -n "$body" ] && args+=(-H 'content-type: application/json' -d "$body")
    curl "${args[@]}" "$url"
}
# expect STATUS METHOD URL [BODY]: the body of a call that must answer STATUS.
expect() {
    local status=$1 out code
    shift
    out=$(http "$@") || fail "$1 $2: no answer"
    code=${out##*$'\n'}
    [ "$code" = "$status" ] || fail "$1 $2: expected $status, got $code: ${out%$'\n'*}"
    printf '%s' "${out%$'\n'*}"
}
cid() { compose ps -q "$1" | head -1; }
health() { docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$1" 2>/dev/null; }
# wait_healthy SECONDS SERVICE: every container of the service healthy.
wait_healthy() {
    local seconds=$1 service=$2 i c ids all
    for ((i = 0; i < seconds; i++)); do
        ids=$(compose ps -q "$service")
        all=true
        [ -n "$ids" ] || all=false
        for c in $ids; do [ "$(health "$c")" = healthy ] || all=false; done
        [ "$all" = true ] && return 0
        sleep 1
    done
    fail "$service not healthy within ${seconds}s"
}
ready_status() { curl -s -m 5 -o /dev/null -w '%{http_code}' "$base/health/ready" || true; }
# usage_requests MODEL: calls of MODEL in the usage report.
usage_requests() {
    expect 200 GET "$base/api/v1/usage?group_by=model&model=$1" |
        json 'sum(i["requests"] for i in d["items"])'
}
# chat MODEL TEXT [stream]: a chat completion through the gateway.
chat_body() {
    printf '{"model":"%s","messages":[{"role":"user","content":"%s"}]%s}' "$1" "$2" \
        "$([ "${3:-}" = stream ] && printf ',"stream":true')"
}
network_of() { docker inspect -f '{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}' "$1" | awk '{print $1}'; }
# The stub leaves the project's network before `down` (which removes it) and rejoins after `up`.
stub_leave() { docker network disconnect -f "$(network_of "$stub")" "$stub" >/dev/null 2>&1 || true; }
stub_join() { docker network connect --alias stub "$(network_of "$(cid api-gateway)")" "$stub"; }
host_pid_child() { pgrep -P "$(docker inspect -f '{{.State.Pid}}' "$1")" | head -1; }
# kill_pid PID: SIGKILL to a host process id (never 0 or 1: `kill 0` is this script's own group).
kill_pid() {
    [[ "$1" =~ ^[0-9]+$ ]] && [ "$1" -gt 1 ] || fail "not a process to kill: '$1'"
    kill -KILL "$1"
}
# requests_served URL: the sum of a gateway's http_requests_total samples on its /metrics.
requests_served() {
    curl -sS -m 5 "$1/metrics" | awk '/^http_requests_total[{ ]/ {s += $NF} END {printf "%d", s}'
}
rss_mib() { awk '/^VmRSS:/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
# The member's key (made in `stack`) authenticates as the member: GET /api/v1/users/me with it
# answers 200 with that user.
member_is_me() {
    local me
    me=$(as_key=$member_key expect 200 GET "$base/api/v1/users/me") || return 1
    [ "$(json 'd["id"], d["username"], d["role"]' <<<"$me")" = "('$member_id', 'ci-member', 'member')" ] ||
        fail "the member's key authenticates as someone else: $me"
}

export COMPOSE_PROJECT_NAME="$project"
MAAS_ADMIN_KEY="maas_ci$(random_hex 24)"
export MAAS_ADMIN_KEY
gateway_port=$(free_port)
export MAAS_PUBLISH="127.0.0.1:$gateway_port:8000"
export MAAS_IMAGE="maas-gateway:latest"
unset CRATE
base="http://127.0.0.1:$gateway_port"

# ---------------------------------------------------------------------------------------------
if part image; then
    say "runtime image (docker/Dockerfile)"
    build maas-gateway:latest docker/Dockerfile .
    size=$(docker image inspect -f '{{.Size}}' maas-gateway:latest)
    [ "$size" -le 40000000 ] || fail "the runtime image is $size bytes, over 40 MB"
    user=$(docker image inspect -f '{{.Config.User}}' maas-gateway:latest)
    [ "${user%%:*}" = 65532 ] || fail "the runtime image runs as '$user', not 65532"
    check=$(docker image inspect -f '{{index .Config.Healthcheck.Test 0}}' maas-gateway:latest)
    [ "$check" = CMD ] || fail "the HEALTHCHECK is '$check', not exec form (CMD)"
    version=$(docker run --rm maas-gateway:latest --version) || fail "maas-gateway --version"
    [[ "$version" == maas-gateway\ * ]] || fail "--version printed '$version'"
    if docker run --rm --entrypoint /bin/sh maas-gateway:latest -c true >/dev/null 2>&1; then
        fail "the runtime image has a shell"
    fi
    probe=$(docker create maas-gateway:latest)
    shells=$(docker export "$probe" | tar -t | grep -E '(^|/)(sh|bash|dash|ash|busybox)$' || true)
    docker rm "$probe" >/dev/null
    [ -z "$shells" ] || fail "the runtime image holds a shell: $shells"
    say "runtime image: $((size / 1000)) kB, user $user, no shell, $version, exec-form HEALTHCHECK"
fi

if part stack; then
    say "stack: compose.yaml as project $project, the gateway on $base"
    compose up -d --no-build >"$work/up.log" 2>&1 || { cat "$work/up.log" >&2; fail "compose up"; }
    wait_healthy 180 api-gateway
    published=$(compose ps 2>/dev/null | grep -cE '(5432|6379)->' || true)
    [ "$published" = 0 ] || fail "postgres or redis publishes a port on the host"
    [ "$(curl -sS -m 5 "$base/health" | json 'd["status"]')" = ok ] || fail "/health"
    [ "$(curl -sS -m 5 "$base/health/ready" | json 'd["status"]')" = ready ] || fail "/health/ready"
    [ "$(expect 200 GET "$base/api/v1/users/me" | json 'd["role"]')" = admin ] ||
        fail "the bootstrap admin key (MAAS_ADMIN_KEY) is not an admin's"
    # A member and its key, made through the API as the README shows (the admin creates the
    # user, then a key on its behalf): the restarts below must keep both.
    member_id=$(expect 201 POST "$base/api/v1/users" '{"username":"ci-member","role":"member"}' |
        json 'd["id"]')
    member_key=$(expect 201 POST "$base/api/v1/keys" "{\"name\":\"ci member\",\"user_id\":\"$member_id\"}" |
        json 'd["key"]')
    [ -n "$member_key" ] && [ "$member_key" != None ] || fail "POST /api/v1/keys returned no key"
    member_is_me || fail "the member's new key does not authenticate as the member"

    # A model server on the compose network: the e2e stub, in a container of its own.
    mkdir -p "$work/stub"
    cp e2e/stub_upstream.py "$work/stub/"
    cat >"$work/stub/Dockerfile" <<'EOF'
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/*
COPY stub_upstream.py /stub_upstream.py
ENV STUB_HOST=0.0.0.0
CMD ["python3", "/stub_upstream.py", "9000"]
EOF
    build maas-gateway-ci-stub:latest "$work/stub/Dockerfile" "$work/stub"
    stub=$(docker run -d --name "$project-stub" --network "$(network_of "$(cid api-gateway)")" \
        --network-alias stub maas-gateway-ci-stub:latest)

    expect 201 POST "$base/api/v1/models" '{"name":"ci-echo","description":"container test"}' >/dev/null
    expect 201 POST "$base/api/v1/models/ci-echo/versions" \
        '{"source_uri":"s3://ci/echo","endpoint_url":"http://stub:9000/v1"}' >/dev/null
    expect 200 PUT "$base/api/v1/models/ci-echo/aliases/production" '{"version":1}' >/dev/null
    for i in $(seq 1 50); do
        docker exec "$stub" python3 -c 'import urllib.request; urllib.request.urlopen("http://127.0.0.1:9000/_stub/holds")' \
            >/dev/null 2>&1 && break
        [ "$i" = 50 ] && fail "the stub model server did not come up"
        sleep 0.2
    done
    answer=$(expect 200 POST "$base/v1/chat/completions" "$(chat_body ci-echo@production 'hello container')")
    [ "$(json 'd["choices"][0]["message"]["content"]' <<<"$answer")" = "echo: hello container" ] ||
        fail "chat completion answered $answer"
    stream=$(expect 200 POST "$base/v1/chat/completions" "$(chat_body ci-echo 'streamed words' stream)")
    grep -q '^data: \[DONE\]' <<<"$stream" || fail "the streamed answer has no [DONE]: $stream"
    [ "$(grep -c '^data: {' <<<"$stream")" -ge 3 ] || fail "the streamed answer is not in chunks"
    metrics=$(curl -sS -m 5 "$base/metrics")
    grep -q 'maas_upstream_requests_total{model="ci-echo",status="200"} 2' <<<"$metrics" ||
        fail "/metrics does not count the two calls: $(grep maas_upstream_requests <<<"$metrics")"
    grep -q '^http_requests_total' <<<"$metrics" || fail "/metrics has no http_requests_total"
    for _ in $(seq 1 50); do
        [ "$(usage_requests ci-echo)" = 2 ] && break
        sleep 0.2
    done
    [ "$(usage_requests ci-echo)" = 2 ] || fail "the two calls are not in the usage report"
    say "stack healthy; registry, chat, stream, metrics and usage work through the published port"
fi

# The model, the admin key, the member's key and the usage rows, after a restart of some kind.
still_there() {
    expect 200 GET "$base/api/v1/models/ci-echo" >/dev/null
    member_is_me || fail "the member's API key no longer authenticates after $1"
    [ "$(expect 200 GET "$base/api/v1/models/ci-echo/aliases/production" | json 'd["version"]')" = 1 ] ||
        fail "the alias is gone after $1"
    [ "$(usage_requests ci-echo)" -ge 2 ] || fail "the usage rows are gone after $1"
}

if part restart; then
    compose restart api-gateway >/dev/null 2>&1
    wait_healthy 120 api-gateway
    still_there "docker-compose restart api-gateway"
    stub_leave
    compose down >"$work/down.log" 2>&1 || { cat "$work/down.log" >&2; fail "compose down"; }
    compose up -d --no-build >"$work/up.log" 2>&1 || { cat "$work/up.log" >&2; fail "compose up"; }
    wait_healthy 180 api-gateway
    stub_join
    still_there "down and up"
    say "restart and down + up: model, alias, usage rows and the member's API key kept"

    # A stream in flight while the gateway is told to stop: it must finish, then the process
    # exits 0 after writing the usage events.
    gateway=$(cid api-gateway)
    curl -sS -m 60 -N -H "Authorization: Bearer $MAAS_ADMIN_KEY" -H 'content-type: application/json' \
        -d "$(chat_body ci-echo 'stub-hold: ci-drain' stream)" "$base/v1/chat/completions" \
        >"$work/held.txt" 2>&1 &
    held=$!
    for i in $(seq 1 100); do
        grep -q '^data: {' "$work/held.txt" 2>/dev/null && break
        [ "$i" = 100 ] && fail "the held stream did not start"
        sleep 0.1
    done
    compose stop api-gateway >"$work/stop.log" 2>&1 &
    stopping=$!
    # The stop signal is in before the stream is let go (the gateway logs it at once).
    for i in $(seq 1 100); do
        docker logs "$gateway" 2>&1 | grep -qi 'graceful shutdown' && break
        [ "$i" = 100 ] && fail "the gateway did not log the stop signal"
        sleep 0.1
    done
    docker exec "$stub" python3 -c 'import urllib.request; urllib.request.urlopen(urllib.request.Request("http://127.0.0.1:9000/_stub/release/ci-drain", method="POST"))'
    wait "$held" || fail "the in-flight stream failed while the gateway stopped: $(cat "$work/held.txt")"
    grep -q '^data: \[DONE\]' "$work/held.txt" || fail "the in-flight stream was cut off by the stop"
    wait "$stopping" || fail "docker-compose stop"
    [ "$(docker inspect -f '{{.State.ExitCode}}' "$gateway")" = 0 ] ||
        fail "the gateway exited with $(docker inspect -f '{{.State.ExitCode}}' "$gateway") on stop"
    logs=$(docker logs "$gateway" 2>&1 | tail -20)
    grep -q 'in-flight requests drained' <<<"$logs" || fail "no drain in the log: $logs"
    grep -q 'usage events flushed' <<<"$logs" || fail "no usage flush in the log: $logs"
    compose start api-gateway >/dev/null 2>&1
    wait_healthy 120 api-gateway
    [ "$(usage_requests ci-echo)" = 3 ] || fail "the stream that finished during stop is not in the usage report"
    say "stop drained an in-flight stream, flushed its usage and exited 0"
fi

if part outage; then
    gateway=$(cid api-gateway)
    started_at=$(docker inspect -f '{{.State.StartedAt}}' "$gateway")
    postgres=$(cid postgres)
    # SIGKILL through the engine, which counts as stopped by hand: it stays down until started.
    # Timed from when the kill is done to when the first 503 answer has arrived (not to when the
    # probe that got it was sent): probes go on back to back for up to 30 s, so that a slow one
    # is measured and reported rather than cut off at the deadline.
    docker kill "$postgres" >/dev/null
    killed=$(date +%s%N)
    status="" waited_ms=0
    while [ "$waited_ms" -lt 30000 ]; do
        status=$(ready_status)
        waited_ms=$((($(date +%s%N) - killed) / 1000000))
        [ "$status" = 503 ] && break
        sleep 0.1
    done
    [ "$status" = 503 ] || fail "readiness still answered $status, not 503, ${waited_ms} ms after Postgres was killed"
    [ "$waited_ms" -le 5000 ] ||
        fail "readiness answered 503 only ${waited_ms} ms after Postgres was killed, over 5 s"
    say "Postgres killed: readiness 503 after ${waited_ms} ms (at most 5000)"
    sleep 2
    [ "$(ready_status)" = 503 ] || fail "readiness is not 503 while Postgres is down"
    compose start postgres >/dev/null 2>&1
    for i in $(seq 1 120); do
        [ "$(ready_status)" = 200 ] && break
        [ "$i" = 120 ] && fail "readiness did not come back within 120 s of Postgres dying"
        sleep 1
    done
    [ "$(docker inspect -f '{{.State.StartedAt}}' "$gateway")" = "$started_at" ] ||
        fail "the gateway restarted while Postgres was away"
    expect 200 GET "$base/api/v1/models/ci-echo" >/dev/null
    say "Postgres started again: the gateway ready again by itself, never restarted"

    # A crash of the gateway process (under the image's init), not a stop by hand: the restart
    # policy applies.
    restarts=$(docker inspect -f '{{.RestartCount}}' "$gateway")
    kill_pid "$(host_pid_child "$gateway")"
    for i in $(seq 1 120); do
        [ "$(docker inspect -f '{{.RestartCount}}' "$gateway")" -gt "$restarts" ] &&
            [ "$(health "$gateway")" = healthy ] && break
        [ "$i" = 120 ] && fail "a killed gateway did not come back within 120 s"
        sleep 1
    done
    expect 200 GET "$base/api/v1/models/ci-echo" >/dev/null
    say "a killed gateway process was brought back by restart: unless-stopped"
fi

if part replicas; then
    build maas-gateway-lb:latest docker/lb/Dockerfile docker/lb
    lb_port=$(free_port)
    export MAAS_PUBLISH="127.0.0.1::8000" MAAS_LB_PUBLISH="127.0.0.1:$lb_port:8080"
    compose --profile lb up -d --no-build --scale api-gateway=3 >"$work/scale.log" 2>&1 ||
        { cat "$work/scale.log" >&2; fail "compose --profile lb up --scale api-gateway=3"; }
    wait_healthy 180 api-gateway
    # Each replica's own published port (MAAS_PUBLISH without a host port gives each an
    # ephemeral one): calls can then go to one replica in particular, not through the proxy.
    # Replica N is the container Compose numbered N (by name: ..._api-gateway_N).
    gateways=() replicas=()
    for c in $(for id in $(compose ps -q api-gateway); do
        printf '%s %s\n' "$(docker inspect -f '{{.Name}}' "$id")" "$id"
    done | sort -V | awk '{print $2}'); do
        addr=$(docker port "$c" 8000/tcp | grep -m1 -E '^127\.0\.0\.1:[0-9]+$' || true)
        [ -n "$addr" ] || fail "replica $c publishes no port 8000 on 127.0.0.1: $(docker port "$c")"
        gateways+=("$c")
        replicas+=("http://$addr")
    done
    [ ${#replicas[@]} = 3 ] || fail "expected 3 replicas, found ${#replicas[@]}"
    [ "$(printf '%s\n' "${replicas[@]}" | sort -u | wc -l)" = 3 ] ||
        fail "the replicas do not have a port each: ${replicas[*]}"
    lb="http://127.0.0.1:$lb_port"
    for i in $(seq 1 60); do
        [ "$(curl -s -m 2 -o /dev/null -w '%{http_code}' "$lb/health")" = 200 ] && break
        [ "$i" = 60 ] && fail "the lb proxy did not answer"
        sleep 0.5
    done

    # Replicas 2 and 3 are asked for the model first, so that a miss they kept (in a cache of
    # their own) would be stale once replica 1 has made it: the model, its alias, a call to it.
    for r in "${replicas[@]:1}"; do
        expect 404 GET "$r/api/v1/models/ci-scaled" >/dev/null
        expect 404 GET "$r/api/v1/models/ci-scaled/aliases/production" >/dev/null
        expect 404 POST "$r/v1/chat/completions" "$(chat_body ci-scaled@production 'not yet')" >/dev/null
    done
    expect 201 POST "${replicas[0]}/api/v1/models" '{"name":"ci-scaled"}' >/dev/null
    expect 201 POST "${replicas[0]}/api/v1/models/ci-scaled/versions" \
        '{"source_uri":"s3://ci/scaled","endpoint_url":"http://stub:9000/v1"}' >/dev/null
    expect 200 PUT "${replicas[0]}/api/v1/models/ci-scaled/aliases/production" '{"version":1}' >/dev/null
    # At once: no retry, no wait.
    for n in 2 3; do
        r=${replicas[$((n - 1))]}
        expect 200 GET "$r/api/v1/models/ci-scaled" >/dev/null
        [ "$(expect 200 GET "$r/api/v1/models/ci-scaled/aliases/production" | json 'd["version"]')" = 1 ] ||
            fail "replica $n does not see the alias made through replica 1"
        answer=$(expect 200 POST "$r/v1/chat/completions" "$(chat_body ci-scaled@production "via replica $n")")
        [ "$(json 'd["choices"][0]["message"]["content"]' <<<"$answer")" = "echo: via replica $n" ] ||
            fail "a chat completion through replica $n answered $answer"
    done
    say "a model, version and alias made through replica 1 were read and served at once by replicas 2 and 3 (which had just found none)"

    member=$(expect 201 POST "$lb/api/v1/users" '{"username":"ci-limited","role":"member"}' | json 'd["id"]')
    limited=$(expect 201 POST "$lb/api/v1/keys" "{\"name\":\"ci\",\"user_id\":\"$member\",\"rate_limit_rpm\":1}" |
        json 'd["key"]')
    # rate_limit.burst is 20: 20 requests a minute (and one more per minute that passes) are
    # admitted across the three replicas. The calls go round-robin straight to the three
    # replicas' own ports, so each replica decides a third of them. After the first 40, leases
    # (250 ms) have ended and given back what they did not use; the last 10 must not find any of
    # it lost.
    admitted=0
    per_replica=(0 0 0)
    limit_start=$(date +%s)
    for i in $(seq 0 49); do
        [ "$i" = 40 ] && sleep 2
        n=$((i % 3))
        code=$(curl -s -m 5 -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $limited" \
            "${replicas[$n]}/api/v1/users/me")
        case "$code" in
            200) admitted=$((admitted + 1)) per_replica[n]=$((per_replica[n] + 1)) ;;
            429) ;;
            *) fail "a rate-limited call to replica $((n + 1)) answered $code" ;;
        esac
    done
    allowed=$((20 + ($(date +%s) - limit_start) / 60))
    [ "$admitted" -ge 20 ] && [ "$admitted" -le "$allowed" ] ||
        fail "three replicas admitted $admitted of 50 calls (${per_replica[*]} by replica) of a key with rpm 1 and burst 20"
    say "one rate limit across three replicas: $admitted of 50 admitted (${per_replica[*]} by replica 1, 2, 3; limit 1/min, burst 20)"

    # Memory of each replica: idle, then under load through the lb (which must spread it over
    # all three: each replica's http_requests_total grows).
    fast=$(expect 201 POST "$lb/api/v1/keys" "{\"name\":\"ci-load\",\"rate_limit_rpm\":1000000}" | json 'd["key"]')
    pids=() served=()
    for n in 0 1 2; do
        pids+=("$(host_pid_child "${gateways[$n]}")")
        served+=("$(requests_served "${replicas[$n]}")")
    done
    idle=$(for p in "${pids[@]}"; do rss_mib "$p"; echo; done | sort -n | tail -1)
    python3 - "$lb" "$fast" >"$work/load.txt" <<'EOF' &
import http.client, sys, threading, time
host = sys.argv[1].removeprefix("http://")
key = sys.argv[2]
deadline = time.time() + 15
counts = []
def worker():
    conn, n = http.client.HTTPConnection(host, timeout=10), 0
    while time.time() < deadline:
        conn.request("GET", "/api/v1/models/ci-echo", headers={"Authorization": "Bearer " + key})
        r = conn.getresponse()
        r.read()
        n += r.status == 200
    counts.append(n)
threads = [threading.Thread(target=worker) for _ in range(32)]
for t in threads: t.start()
for t in threads: t.join()
print(sum(counts) // 15)
EOF
    load=$!
    peak=0
    for _ in $(seq 1 12); do
        sleep 1
        for p in "${pids[@]}"; do
            now=$(rss_mib "$p")
            peak=$(python3 -c "print(max($peak, $now))")
        done
    done
    wait "$load" || fail "the load generator failed"
    spread=()
    for n in 0 1 2; do
        spread+=("$(($(requests_served "${replicas[$n]}") - served[n]))")
        [ "${spread[$n]}" -ge 100 ] ||
            fail "the lb sent replica $((n + 1)) only ${spread[$n]} of the load's requests (${spread[*]})"
    done
    say "RSS per replica: idle ${idle} MiB; at $(cat "$work/load.txt") requests/s through the lb (32 connections; ${spread[*]} requests by replica 1, 2, 3), peak ${peak} MiB"
    export MAAS_PUBLISH="127.0.0.1:$gateway_port:8000"
fi

if part tests; then
    build maas-gateway-test:latest docker/Dockerfile.test . --build-arg CRATE=maas-domain
    CRATE=maas-domain compose --profile test run --rm tests >"$work/tests.log" 2>&1 ||
        { tail -40 "$work/tests.log" >&2; fail "the tests profile (CRATE=maas-domain)"; }
    grep -q 'test result: ok' "$work/tests.log" || fail "the tests profile ran no tests"
    say "tests profile: $(grep -c 'test result: ok' "$work/tests.log") test binaries of maas-domain passed"
fi

say "all container checks passed"
