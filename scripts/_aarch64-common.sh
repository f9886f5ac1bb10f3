# Shared by aarch64-rpc-root.sh and aarch64-rpc-server.sh (sourced, not run).
#
# Why binfmt_misc + chroot rather than `qemu-aarch64-static -L ROOT`: debootstrap's second stage
# and pip run dpkg maintainer scripts, and TVM's server runs gcc; each exec()s further aarch64
# binaries, and only a binfmt_misc registration makes every such exec emulated. Debian's entry
# has the F flag (the kernel opens qemu at registration), so the root needs no copy of qemu.

STEPS_DIR=.hwnas-steps   # under ROOT: one marker file per finished build step
VENV=/opt/tvm            # inside ROOT: the Python environment the RPC server runs in

say() { printf '%s: %s\n' "$PROG" "$*"; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

need_root() {
    [ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot, mount and binfmt_misc need it)"
}

ensure_host_tools() {
    local missing=()
    command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    command -v unshare >/dev/null || missing+=(util-linux)
    [ ${#missing[@]} = 0 ] && return 0
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them"
    say "installing ${missing[*]} (apt-get)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } >/dev/null \
        || die "apt-get install ${missing[*]} failed"
}

# binfmt_misc is not mounted at boot on these machines; the registration is system-wide and is left
# in place (like systemd-binfmt would), so a second run or a server finds it ready.
ensure_binfmt() {
    local fs=/proc/sys/fs/binfmt_misc conf=/usr/lib/binfmt.d/qemu-aarch64.conf
    if [ ! -e "$fs/register" ]; then
        mount -t binfmt_misc binfmt_misc "$fs" || die "cannot mount binfmt_misc on $fs"
    fi
    if [ ! -e "$fs/qemu-aarch64" ]; then
        [ -f "$conf" ] || die "$conf is missing (package qemu-user-static)"
        say "registering qemu-aarch64 with binfmt_misc"
        cat "$conf" > "$fs/register" || die "cannot register $conf with binfmt_misc"
    fi
    grep -qx enabled "$fs/qemu-aarch64" || die "binfmt_misc entry qemu-aarch64 is disabled"
}

# Run a command inside ROOT, with proc, sys (what a board's fingerprint reads: cores, CPU id) and /dev
# mounted, in a clean environment (the host's PIP_*, PATH etc. mean nothing there). The mounts live in a private mount namespace, so they vanish with
# the command however it ends (even SIGKILL): nothing to unmount, and servers sharing a root do
# not unmount each other's /proc. Exec all the way down: the caller's PID becomes the command's.
in_root() {
    local root=$1
    shift
    exec unshare --mount --propagation private -- /bin/sh -c '
        root=$1; shift
        mount -t proc proc "$root/proc" && mount -t sysfs sysfs "$root/sys" && mount --rbind /dev "$root/dev" || exit 1
        exec chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TMPDIR=/tmp PYTHONUNBUFFERED=1 \
            PATH='"$VENV"'/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@"' sh "$root" "$@"
}
