#!/usr/bin/env bash
# Run TVM's RPC server inside an emulated aarch64 root (see aarch64-rpc-root.sh), registered at a
# tracker under KEY: a stand-in for a Raspberry Pi that `hwnas` measures through `--tracker/--key`.
#
#   usage: scripts/aarch64-rpc-server.sh ROOT TRACKER_HOST:PORT KEY     (as root; runs until killed)
#
# Environment: RPC_HOST (default 127.0.0.1; 0.0.0.0 to serve a tracker on another machine),
# RPC_PORT (default 9090, the first of 100 ports tried).
# The server's PID is this script's PID (exec all the way down); its mounts vanish when it exits.
set -euo pipefail

PROG=$(basename "$0")
# shellcheck source=scripts/_aarch64-common.sh
. "$(dirname "$0")/_aarch64-common.sh"

[ $# = 3 ] || { echo "usage: $PROG ROOT TRACKER_HOST:PORT KEY" >&2; exit 2; }
ROOT=$(realpath -m "$1") TRACKER=$2 KEY=$3
HOST=${RPC_HOST:-127.0.0.1} PORT=${RPC_PORT:-9090}
[[ $TRACKER =~ ^[^:]+:[0-9]+$ ]] || die "bad tracker address '$TRACKER' (expected HOST:PORT)"

need_root
[ -f "$ROOT/$STEPS_DIR/venv" ] || die "no finished aarch64 root at $ROOT: build it with scripts/aarch64-rpc-root.sh $ROOT"
command -v unshare >/dev/null || die "unshare (util-linux) is missing"
ensure_binfmt  # gone after a reboot
say "serving $ROOT as '$KEY' at tracker $TRACKER (listening on $HOST:$PORT+)"
# --no-fork: a forked session under qemu-user once hung for 600 s; spawned sessions do not.
in_root "$ROOT" python -m tvm.exec.rpc_server --host "$HOST" --port "$PORT" --port-end "$((PORT + 100))" \
    --tracker "$TRACKER" --key "$KEY" --no-fork
