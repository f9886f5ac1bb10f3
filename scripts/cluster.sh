#!/usr/bin/env bash
# The docker-compose topology (PostgreSQL, a Ray head, a Ray worker node, the TVM RPC tracker and the
# API) as plain processes on this machine, for machines without a Docker engine (CI, a laptop).
#
#   usage: scripts/cluster.sh up|down|status
#
#   up      start what is not running yet, wait (bounded) until each part is healthy; idempotent.
#           On failure: one line "cluster.sh: error: ..." on stderr, the log's tail, exit 1 (the parts
#           already up are left running: `down` stops them).
#   down    stop every process this cluster started (and only those); idempotent.
#   status  one line per part; exit 0 when all are up and healthy, 1 otherwise.
#
# Environment (defaults in brackets):
#   HWNAS_CLUSTER_DIR    state: pid files, logs, env file, Ray's temp dir [<repo>/.cluster]
#   HWNAS_DB_URL         the database [postgresql://postgres@127.0.0.1:5432/hwnas]; a PostgreSQL URL on
#                        this machine: the server is started when down (as .ci/run does) and the
#                        database created when missing. sqlite:///... works too.
#   HWNAS_API_HOST/PORT  where `hwnas serve` listens [127.0.0.1 / 8000]
#   HWNAS_RAY_PORT       the Ray head's GCS port [6380; 6379 is Redis's]
#   HWNAS_TRACKER_HOST/PORT  the TVM RPC tracker [127.0.0.1 / 9190]; 0.0.0.0 lets boards on the network join
#   HWNAS_RAY_HEAD_CPUS / HWNAS_RAY_WORKER_CPUS  CPUs each Ray node offers [0 / nproc]
#   HWNAS_CLUSTER_TIMEOUT  seconds to wait for each part to become healthy [90]
#   HWNAS_PYTHON         the Python environment with hwnas installed [<repo>/.venv/bin/python, else python3]
#   HWNAS_HOME           passed through to the API and the Ray nodes when set
#
# After `up`, `source $HWNAS_CLUSTER_DIR/env` points hwnas, ray and the API client at this cluster.
#
# Ray: both nodes run on this machine (the worker node joins with `ray start --address`; Ray puts its
# sockets beside the head's with distinct names). Each node is started in its own session (setsid), so
# `down` stops exactly this cluster's process groups -- never `ray stop`, which would stop every Ray
# on the machine. Token authentication is on, with a token of this cluster's own ($STATE/ray_auth_token,
# given to clients through RAY_AUTH_MODE / RAY_AUTH_TOKEN_PATH in the env file).
set -euo pipefail

PROG=cluster.sh
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

STATE=${HWNAS_CLUSTER_DIR:-$REPO/.cluster}
DB_URL=${HWNAS_DB_URL:-postgresql://postgres@127.0.0.1:5432/hwnas}
API_HOST=${HWNAS_API_HOST:-127.0.0.1}
API_PORT=${HWNAS_API_PORT:-8000}
RAY_PORT=${HWNAS_RAY_PORT:-6380}
TRACKER_HOST=${HWNAS_TRACKER_HOST:-127.0.0.1}
TRACKER_PORT=${HWNAS_TRACKER_PORT:-9190}
TIMEOUT=${HWNAS_CLUSTER_TIMEOUT:-90}
NPROC=$(nproc 2>/dev/null || echo 2)
# As in docker-compose.yml: the head schedules and keeps the job drivers (actors needing no CPU); the
# evaluations run on the worker node, which offers this machine's CPUs.
HEAD_CPUS=${HWNAS_RAY_HEAD_CPUS:-0}
WORKER_CPUS=${HWNAS_RAY_WORKER_CPUS:-$NPROC}
# The worker node hands its Ray workers ports from a range of its own: two raylets on one machine
# would otherwise both start at the head's first port.
WORKER_MIN_PORT=${HWNAS_RAY_WORKER_MIN_PORT:-20002}
WORKER_MAX_PORT=${HWNAS_RAY_WORKER_MAX_PORT:-29999}
HEAD_MIN_PORT=10002 HEAD_MAX_PORT=19999  # Ray's default range, used by the head node

if [ -n "${HWNAS_PYTHON:-}" ]; then PY=$HWNAS_PYTHON
elif [ -x "$REPO/.venv/bin/python" ]; then PY=$REPO/.venv/bin/python
else PY=$(command -v python3 || true)
fi
BIN=$(dirname "$PY")
tool() { if [ -x "$BIN/$1" ]; then echo "$BIN/$1"; else command -v "$1" || echo "$1"; fi; }
RAY=$(tool ray)
HWNAS=$(tool hwnas)

say() { printf '%s: %s\n' "$PROG" "$*"; }
say_t() { printf '%s: %s [%ss]\n' "$PROG" "$*" "$SECONDS"; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }
# die, showing the end of a log first (the error line stays the last line on stderr)
die_log() { local log=$1; shift; [ -f "$log" ] && tail -n 15 "$log" | sed 's/^/    /' >&2; die "$* (log: $log)"; }

# ---------------------------------------------------------------------------------------------- processes

# alive PID: the process exists and is no zombie
alive() {
    local st
    [ -n "${1:-}" ] && [ -r "/proc/$1/stat" ] || return 1
    st=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
    [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}
# group_members PGID: live pids of a process group
group_members() { ps -eo pid=,pgid=,stat= | awk -v g="$1" '$2 == g && $3 !~ /^[ZX]/ {print $1}'; }
# children PID...: live direct children
children() {
    local p
    for p in "$@"; do ps -eo pid=,ppid=,stat= | awk -v p="$p" '$2 == p && $3 !~ /^[ZX]/ {print $1}'; done
}
pid_of() { [ -f "$STATE/$1.pid" ] && cat "$STATE/$1.pid" || true; }
# group_alive NAME: whether the process group recorded in NAME.pid still has live members
group_alive() { local g; g=$(pid_of "$1"); [ -n "$g" ] && [ -n "$(group_members "$g")" ]; }

# wait_gone SECONDS PID...: bounded wait until none of the pids is alive; 0 when all are gone
wait_gone() {
    local t=$1 p i left; shift
    for ((i = 0; i < t * 5; i++)); do
        left=0
        for p in "$@"; do alive "$p" && left=1 && break; done
        [ "$left" = 0 ] && return 0
        sleep 0.2
    done
    return 1
}

# stop_pids GRACE PID...: SIGTERM, wait up to GRACE seconds, then SIGKILL what is left
stop_pids() {
    local grace=$1 p; shift
    [ $# -gt 0 ] || return 0
    kill -TERM "$@" 2>/dev/null || true
    wait_gone "$grace" "$@" && return 0
    for p in "$@"; do alive "$p" && kill -KILL "$p" 2>/dev/null || true; done
    wait_gone 5 "$@" || true
}

# start_bg NAME CMD...: run CMD in a session of its own (pgid = pid), output to NAME.log; pid -> NAME.pid
start_bg() {
    local name=$1; shift
    setsid "$@" >"$STATE/$name.log" 2>&1 </dev/null &
    echo $! >"$STATE/$name.pid"
}

# ------------------------------------------------------------------------------------------------- probes

port_open() {  # port_open HOST PORT
    "$PY" - "$1" "$2" <<'EOF'
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()
except OSError:
    sys.exit(1)
EOF
}

connect_host() { case "$1" in 0.0.0.0|'') echo 127.0.0.1 ;; ::|'[::]') echo ::1 ;; *) echo "$1" ;; esac; }

tracker_ok() {  # the TVM RPC tracker protocol: magic handshake, then a SUMMARY request answered SUCCESS
    "$PY" - "$(connect_host "$TRACKER_HOST")" "$TRACKER_PORT" <<'EOF'
import json, socket, struct, sys
MAGIC, SUMMARY, SUCCESS = 0x2F271, 6, 0
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3) as s:
        s.sendall(struct.pack("<i", MAGIC))
        if struct.unpack("<i", s.recv(4))[0] != MAGIC:
            sys.exit(1)
        msg = json.dumps([SUMMARY]).encode()
        s.sendall(struct.pack("<i", len(msg)) + msg)
        (n,) = struct.unpack("<i", s.recv(4))
        data = b""
        while len(data) < n:
            chunk = s.recv(n - len(data))
            if not chunk:
                sys.exit(1)
            data += chunk
        sys.exit(0 if json.loads(data)[0] == SUCCESS else 1)
except (OSError, ValueError, struct.error):
    sys.exit(1)
EOF
}

api_url() { echo "http://$(connect_host "$API_HOST"):$API_PORT"; }

api_ok() {  # GET /healthz answers 200 {"status": "ok"}
    "$PY" - "$(api_url)/healthz" <<'EOF'
import json, sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=3) as r:
        sys.exit(0 if r.status == 200 and json.load(r).get("status") == "ok" else 1)
except Exception:
    sys.exit(1)
EOF
}

ray_nodes() {  # the number of alive nodes of this cluster (0 when its GCS is not reachable)
    local out
    port_open 127.0.0.1 "$RAY_PORT" || { echo 0; return; }
    out=$(timeout 30 "$PY" - "127.0.0.1:$RAY_PORT" 2>/dev/null <<'EOF'
import logging, sys
import ray
ray.init(address=sys.argv[1], log_to_driver=False, logging_level=logging.ERROR)
print("nodes", sum(1 for n in ray.nodes() if n["Alive"]))
EOF
    ) || true
    out=$(printf '%s\n' "$out" | awk '$1 == "nodes" {n = $2} END {print n + 0}')
    echo "$out"
}

ray_env() {
    export RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$STATE/ray_auth_token"
}

is_postgres() { case "$DB_URL" in postgresql*|postgres:*) return 0 ;; *) return 1 ;; esac; }

# --------------------------------------------------------------------------------------------------- parts

pg_host_port() {  # "HOST PORT" of $DB_URL
    "$PY" - "$DB_URL" <<'EOF'
import sys
from urllib.parse import urlsplit
u = urlsplit(sys.argv[1])
print(u.hostname or "127.0.0.1", u.port or 5432)
EOF
}

ensure_postgres() {
    is_postgres || { say "database: $DB_URL"; return 0; }
    local parts host port
    parts=$(pg_host_port) || die "bad database URL (HWNAS_DB_URL)"
    read -r host port <<<"$parts"
    if ! pg_isready -h "$host" -p "$port" -q 2>/dev/null; then
        case "$host" in
            127.0.0.1|localhost|::1) ;;
            *) die "PostgreSQL at $host:$port is not accepting connections" ;;
        esac
        command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ] \
            || die "PostgreSQL at $host:$port is down and there is no pg_ctlcluster to start it"
        say "starting the machine's PostgreSQL"
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start \
            >"$STATE/postgres.log" 2>&1 || true
        local i
        for ((i = 0; i < TIMEOUT; i++)); do pg_isready -h "$host" -p "$port" -q && break; sleep 1; done
        pg_isready -h "$host" -p "$port" -q || die_log "$STATE/postgres.log" "PostgreSQL did not start on $host:$port"
    fi
    # the database: created when missing, through the server's maintenance database
    "$PY" - "$DB_URL" >"$STATE/postgres.log" 2>&1 <<'EOF' || die_log "$STATE/postgres.log" "cannot create the database"
import sys
from urllib.parse import unquote, urlsplit
import psycopg
from psycopg import sql
u = urlsplit(sys.argv[1])
name = unquote(u.path.lstrip("/")) or "postgres"
kw = {k: v for k, v in dict(host=u.hostname, port=u.port, user=u.username and unquote(u.username),
                            password=u.password and unquote(u.password)).items() if v}
with psycopg.connect(dbname="postgres", autocommit=True, connect_timeout=5, **kw) as c:
    if not c.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
        c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        print(f"created database {name}")
EOF
    say_t "postgres: up ($host:$port, database ready)"
}

ray_temp_dir() {
    # Ray's sockets live under its temp dir; a Unix socket path must stay under 108 bytes, so a long
    # state dir gets a short directory in /tmp instead (recorded, removed by `down`).
    local d
    if [ -f "$STATE/ray_tmp" ]; then d=$(cat "$STATE/ray_tmp"); mkdir -p "$d"; echo "$d"; return; fi
    d=$STATE/ray
    if [ ${#d} -gt 40 ]; then d=$(mktemp -d "${TMPDIR:-/tmp}/hwnas-ray.XXXXXX"); fi
    mkdir -p "$d"
    echo "$d" >"$STATE/ray_tmp"
    echo "$d"
}

preflight() {  # before anything starts: the ports of the parts not running yet are free
    if ! group_alive ray-head; then
        if [ "$RAY_PORT" -ge "$HEAD_MIN_PORT" ] && [ "$RAY_PORT" -le "$WORKER_MAX_PORT" ]; then
            die "ray-head: HWNAS_RAY_PORT=$RAY_PORT is inside Ray's worker port ranges ($HEAD_MIN_PORT-$WORKER_MAX_PORT)"
        fi
        port_open 127.0.0.1 "$RAY_PORT" && die "ray-head: port $RAY_PORT is taken by another process (set HWNAS_RAY_PORT)"
    fi
    if ! group_alive tracker && port_open "$(connect_host "$TRACKER_HOST")" "$TRACKER_PORT"; then
        die "tracker: port $TRACKER_PORT is taken by another process (set HWNAS_TRACKER_PORT)"
    fi
    if ! group_alive api && port_open "$(connect_host "$API_HOST")" "$API_PORT"; then
        die "api: port $API_PORT is taken by another process (set HWNAS_API_PORT)"
    fi
    return 0
}

# Each part: launch_X starts it unless it runs already (LAUNCHED[X]=1 when started now), await_X waits
# (bounded) until it is healthy. `up` launches the parts that do not depend on each other together.
declare -A LAUNCHED=()

launch_ray_head() {
    if group_alive ray-head; then say "ray-head: already running"; return 0; fi
    [ -s "$STATE/ray_auth_token" ] || {
        (umask 077 && "$PY" -c 'import secrets; print(secrets.token_hex(32), end="")' >"$STATE/ray_auth_token")
    }
    local tmp
    tmp=$(ray_temp_dir)
    # `ray start` returns once the node's daemons run; they stay in its process group
    start_bg ray-head "$RAY" start --head --port="$RAY_PORT" --num-cpus="$HEAD_CPUS" \
        --min-worker-port="$HEAD_MIN_PORT" --max-worker-port="$HEAD_MAX_PORT" \
        --include-dashboard=false --disable-usage-stats --temp-dir="$tmp"
    LAUNCHED[ray-head]=1
}

await_ray_head() {
    [ -n "${LAUNCHED[ray-head]:-}" ] || return 0
    wait_started ray-head
    port_open 127.0.0.1 "$RAY_PORT" || die_log "$STATE/ray-head.log" "ray-head: nothing listens on port $RAY_PORT"
    say_t "ray-head: up (127.0.0.1:$RAY_PORT)"
}

launch_ray_worker() {
    if group_alive ray-worker; then say "ray-worker: already running"; return 0; fi
    # hwnas_worker: search jobs and evaluators run on this node (RayLauncher asks for it when a cluster has it)
    start_bg ray-worker "$RAY" start --address="127.0.0.1:$RAY_PORT" --num-cpus="$WORKER_CPUS" \
        --resources='{"hwnas_worker": 1000}' --disable-usage-stats \
        --min-worker-port="$WORKER_MIN_PORT" --max-worker-port="$WORKER_MAX_PORT"
    LAUNCHED[ray-worker]=1
}

await_ray_worker() {
    [ -n "${LAUNCHED[ray-worker]:-}" ] || return 0
    wait_started ray-worker
    wait_nodes 2 ray-worker
    say_t "ray-worker: up (joined 127.0.0.1:$RAY_PORT)"
}

wait_started() {  # wait_started NAME: bounded wait for NAME's `ray start` to return; it must succeed
    local name=$1 pid rc=0
    pid=$(pid_of "$name")
    if ! timeout "$TIMEOUT" tail --pid="$pid" -s 0.2 -f /dev/null; then
        stop_group "$name"
        die_log "$STATE/$name.log" "$name: ray start did not return within ${TIMEOUT}s"
    fi
    wait "$pid" 2>/dev/null || rc=$?
    [ "$rc" = 0 ] || die_log "$STATE/$name.log" "$name failed to start (ray start exited $rc)"
}

wait_nodes() {  # wait_nodes N NAME: until the cluster has N alive nodes
    local want=$1 name=$2 n=0 deadline=$((SECONDS + TIMEOUT))
    while [ "$SECONDS" -lt "$deadline" ]; do
        n=$(ray_nodes)
        [ "$n" -ge "$want" ] && return 0
        sleep 1
    done
    die_log "$STATE/$name.log" "$name: the Ray cluster has $n alive node(s), expected $want, after ${TIMEOUT}s"
}

launch_tracker() {
    if group_alive tracker; then say "tracker: already running"; return 0; fi
    # --port-end: exactly this port (the tracker otherwise moves on to the next free one, silently)
    start_bg tracker "$PY" -m tvm.exec.rpc_tracker --host "$TRACKER_HOST" --port "$TRACKER_PORT" \
        --port-end "$((TRACKER_PORT + 1))"
    LAUNCHED[tracker]=1
}

await_tracker() {
    [ -n "${LAUNCHED[tracker]:-}" ] || return 0
    wait_healthy tracker tracker_ok
    say_t "tracker: up ($TRACKER_HOST:$TRACKER_PORT)"
}

launch_api() {
    if group_alive api; then say "api: already running"; return 0; fi
    start_bg api "$HWNAS" serve --host "$API_HOST" --port "$API_PORT"
    LAUNCHED[api]=1
}

await_api() {
    [ -n "${LAUNCHED[api]:-}" ] || return 0
    wait_healthy api api_ok
    say_t "api: up ($(api_url))"
}

wait_healthy() {  # wait_healthy NAME PROBE: until PROBE succeeds; fails early when NAME's process died
    local name=$1 probe=$2 deadline=$((SECONDS + TIMEOUT))
    while [ "$SECONDS" -lt "$deadline" ]; do
        "$probe" && return 0
        group_alive "$name" || die_log "$STATE/$name.log" "$name exited before it became healthy"
        sleep 0.5
    done
    die_log "$STATE/$name.log" "$name did not become healthy within ${TIMEOUT}s"
}

write_env() {
    cat >"$STATE/env" <<EOF
# source me: points hwnas, ray and the API client at the cluster in $STATE
export HWNAS_DB_URL='$DB_URL'
export HWNAS_RAY_ADDRESS='127.0.0.1:$RAY_PORT'
export RAY_ADDRESS='127.0.0.1:$RAY_PORT'
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH='$STATE/ray_auth_token'
export HWNAS_API_URL='$(api_url)'
export HWNAS_TRACKER='$(connect_host "$TRACKER_HOST"):$TRACKER_PORT'
EOF
    [ -n "${HWNAS_HOME:-}" ] && echo "export HWNAS_HOME='$HWNAS_HOME'" >>"$STATE/env"
    return 0
}

# ------------------------------------------------------------------------------------------------ commands

cmd_up() {
    [ -n "$PY" ] && [ -x "$PY" ] || die "no Python with hwnas installed (set HWNAS_PYTHON)"
    mkdir -p "$STATE"
    STATE=$(cd "$STATE" && pwd)
    printf '*\n' >"$STATE/.gitignore"  # logs and the Ray token never reach git
    ray_env
    export HWNAS_DB_URL=$DB_URL HWNAS_RAY_ADDRESS="127.0.0.1:$RAY_PORT"
    preflight
    ensure_postgres
    launch_tracker  # independent of the rest: its start (importing TVM) overlaps Ray's
    launch_ray_head
    await_ray_head
    launch_ray_worker  # the worker node and the API need the head only
    launch_api
    await_ray_worker
    await_tracker
    await_api
    write_env
    say "cluster up: API $(api_url), Ray 127.0.0.1:$RAY_PORT, tracker $(connect_host "$TRACKER_HOST"):$TRACKER_PORT"
    say "env: source $STATE/env"
}

# stop_ray_nodes: worker node first, then the head's daemons, the GCS last (stopped together they can
# hang in their shutdown handshake); Ray's worker processes are children of a raylet, in groups of their own.
stop_ray_nodes() {
    local name g pids=() gcs=() workers=() p comm
    for name in ray-worker ray-head; do
        g=$(pid_of "$name")
        [ -n "$g" ] || continue
        for p in $(group_members "$g"); do
            comm=$(cat "/proc/$p/comm" 2>/dev/null || true)
            if [ "$comm" = gcs_server ]; then gcs+=("$p"); else pids+=("$p"); fi
            [ "$comm" = raylet ] && workers+=($(children "$p"))
        done
    done
    stop_pids 10 "${workers[@]}" "${pids[@]}"
    stop_pids 10 "${gcs[@]}"
    # whatever a raylet left behind in the two groups
    for name in ray-worker ray-head; do
        g=$(pid_of "$name")
        [ -n "$g" ] || continue
        mapfile -t pids < <(group_members "$g")
        stop_pids 2 "${pids[@]}"
        rm -f "$STATE/$name.pid"
    done
}

stop_group() {  # stop_group NAME: the process group started as NAME
    local g pids
    g=$(pid_of "$1")
    [ -n "$g" ] || return 0
    mapfile -t pids < <(group_members "$g")
    stop_pids 10 "${pids[@]}"
    rm -f "$STATE/$1.pid"
}

cmd_down() {
    [ -d "$STATE" ] || { say "nothing to stop ($STATE does not exist)"; return 0; }
    STATE=$(cd "$STATE" && pwd)
    stop_group api
    stop_group tracker
    stop_ray_nodes
    if [ -f "$STATE/ray_tmp" ]; then
        local tmp
        tmp=$(cat "$STATE/ray_tmp")
        case "$tmp" in "$STATE"/*) ;; */hwnas-ray.*) rm -rf "$tmp" ;; esac
        rm -f "$STATE/ray_tmp"
    fi
    rm -f "$STATE/env"
    say "cluster down (PostgreSQL, a machine service, is left running)"
}

cmd_status() {
    local bad=0 n
    if [ -d "$STATE" ]; then STATE=$(cd "$STATE" && pwd); fi
    ray_env
    line() { printf '%-11s %-5s %s\n' "$1" "$2" "$3"; [ "$2" = up ] || bad=1; }
    if is_postgres; then
        local parts host port
        parts=$(pg_host_port 2>/dev/null) || parts="127.0.0.1 5432"
        read -r host port <<<"$parts"
        if pg_isready -h "$host" -p "$port" -q 2>/dev/null; then line postgres up "$host:$port"
        else line postgres down "$host:$port"; fi
    else
        printf '%-11s %-5s %s\n' database - "$DB_URL (opened by the API)"
    fi
    n=$(ray_nodes)
    if group_alive ray-head && [ "$n" -ge 1 ]; then line ray-head up "127.0.0.1:$RAY_PORT ($n alive node(s))"
    else line ray-head down "127.0.0.1:$RAY_PORT"; fi
    if group_alive ray-worker && [ "$n" -ge 2 ]; then line ray-worker up "pgid $(pid_of ray-worker)"
    else line ray-worker down ""; fi
    if group_alive tracker && tracker_ok; then line tracker up "$TRACKER_HOST:$TRACKER_PORT"
    else line tracker down "$TRACKER_HOST:$TRACKER_PORT"; fi
    if group_alive api && api_ok; then line api up "$(api_url)"
    else line api down "$(api_url)"; fi
    return "$bad"
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    *) echo "usage: $PROG up|down|status" >&2; exit 2 ;;
esac
