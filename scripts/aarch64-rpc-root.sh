#!/usr/bin/env bash
# Build an emulated Raspberry Pi: an arm64 Debian bookworm root at ROOT, run under qemu-user,
# with a Python environment ($VENV inside ROOT) holding TVM's RPC server. Idempotent: every
# finished step leaves a marker in ROOT/.hwnas-steps and is skipped on the next run.
#
#   usage: scripts/aarch64-rpc-root.sh ROOT      (as root; about 6 min and 0.8 GB the first time)
#
# Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian); HOST_CA_BUNDLE, the host's CA
# bundle given to pip inside ROOT (HTTPS may be intercepted by a proxy the root does not trust).
set -euo pipefail

PROG=$(basename "$0")
# shellcheck source=scripts/_aarch64-common.sh
. "$(dirname "$0")/_aarch64-common.sh"

# gcc and libc6-dev: the builder ships aarch64 objects in lib.tar (no cross compiler on the host),
# and TVM's server links them into a shared library with the board's own compiler on upload.
PACKAGES=python3,python3-venv,python3-pip,ca-certificates,gcc,libc6-dev
PIP_PACKAGES=(apache-tvm==0.27.0.post1 apache-tvm-ffi==0.1.14.post1 numpy cloudpickle psutil)
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CA=${HOST_CA_BUNDLE:-${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}}

[ $# = 1 ] && [ -n "$1" ] || { echo "usage: $PROG ROOT" >&2; exit 2; }
ROOT=$(realpath -m "$1")
[ "$ROOT" != / ] || die "ROOT must not be /"
LOG=$ROOT.log  # beside ROOT: step output, shown in part when a step fails
STEP=""

on_exit() {
    local rc=$?
    if [ $rc != 0 ] && [ -n "$STEP" ]; then
        [ -f "$LOG" ] && tail -n 15 "$LOG" >&2
        printf '%s: error: step "%s" failed (exit %s); full log: %s\n' "$PROG" "$STEP" "$rc" "$LOG" >&2
    fi
}
trap on_exit EXIT

done_step() { [ -f "$ROOT/$STEPS_DIR/$1" ]; }
mark_step() { mkdir -p "$ROOT/$STEPS_DIR" && date -u +%FT%TZ > "$ROOT/$STEPS_DIR/$1"; }

# `run_step NAME DESCRIPTION CMD...`: run CMD unless NAME is marked done, timing it.
run_step() {
    local name=$1 what=$2 t0
    shift 2
    if done_step "$name"; then
        say "skip $name: $what (done $(cat "$ROOT/$STEPS_DIR/$name"))"
        return 0
    fi
    say "$name: $what ..."
    t0=$SECONDS
    STEP=$name
    printf '\n=== %s %s\n' "$(date -u +%FT%TZ)" "$name" >> "$LOG"
    "$@" >> "$LOG" 2>&1
    STEP=""
    mark_step "$name"
    say "$name: done in $((SECONDS - t0)) s"
}

stage1() {
    # A failed first or second stage leaves ROOT half-made; start it over (only if it is ours).
    if [ -e "$ROOT" ] && [ -n "$(ls -A "$ROOT")" ]; then
        [ -d "$ROOT/debootstrap" ] || { echo "$ROOT is not empty and not a debootstrap root: refusing to delete it"; return 1; }
        if grep -q " $ROOT/" /proc/mounts; then echo "something is mounted under $ROOT"; return 1; fi
        echo "removing the unfinished root at $ROOT"
        rm -rf --one-file-system "$ROOT"
    fi
    mkdir -p "$ROOT"
    debootstrap --arch=arm64 --foreign --variant=minbase --include="$PACKAGES" bookworm "$ROOT" "$MIRROR"
}

stage2() {
    if ! (in_root "$ROOT" /debootstrap/debootstrap --second-stage); then
        rm -f "$ROOT/$STEPS_DIR/stage1"  # a second stage does not resume: the next run starts over
        return 1
    fi
}

python_env() {
    mkdir -p "$ROOT/usr/local/share/hwnas"
    cp "$CA" "$ROOT/usr/local/share/hwnas/host-ca.crt"
    cp /etc/resolv.conf "$ROOT/etc/resolv.conf"  # name resolution for pip
    (in_root "$ROOT" python3 -m venv "$VENV")
    (in_root "$ROOT" "$VENV/bin/pip" install --disable-pip-version-check --no-input --progress-bar off \
        --cert /usr/local/share/hwnas/host-ca.crt "${PIP_PACKAGES[@]}")
    # The check that matters: TVM's runtime loads and a compiler is there to link uploaded objects.
    (in_root "$ROOT" python -c 'import platform, shutil, tvm, tvm.rpc; assert shutil.which("gcc"), "no gcc"
print("python", platform.python_version(), platform.machine(), "tvm", tvm.__version__)')
}

need_root
[ -f "$CA" ] || die "CA bundle $CA not found (set HOST_CA_BUNDLE)"
mkdir -p "$(dirname "$ROOT")"
t_all=$SECONDS
say "root: $ROOT (log: $LOG)"
ensure_host_tools
ensure_binfmt
run_step stage1 "debootstrap first stage (arm64 bookworm minbase, $PACKAGES)" stage1
run_step stage2 "debootstrap second stage under qemu (several minutes)" stage2
run_step venv "Python environment $VENV: ${PIP_PACKAGES[*]}" python_env
say "ready in $((SECONDS - t_all)) s: $(du -sh --one-file-system "$ROOT" | cut -f1) at $ROOT;" \
    "serve it with scripts/aarch64-rpc-server.sh $ROOT TRACKER_HOST:PORT KEY"
