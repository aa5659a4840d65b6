#!/usr/bin/env bash
# Runs the README's commands on a fresh Debian 12 machine, made here and thrown away afterwards: a
# minimal bookworm root (debootstrap) with only what a rustup user has (gcc, libc6-dev,
# ca-certificates, git, and this machine's Rust toolchain mounted read-only), a clone of this
# repository's HEAD, then
#   serve (default): the README's first command, `cargo run --release -p huddle-server`, until the
#                    dev-mode banner is printed and GET /healthz answers "ok"; then stops it;
#   test:            the README's second command, `./scripts/test.sh` (it installs what it needs).
# Prints the time each step took. Needs root, Linux, and deb.debian.org (plus crates.io, and for
# `test` PyPI and npm). Only committed work is tested: the root gets a clone of HEAD.
#
# Environment: FRESH_DIR (where the throwaway directory goes; default /var/tmp), FRESH_MIRROR
# (default http://deb.debian.org/debian), FRESH_NICE (niceness of builds and tests; default 10),
# FRESH_TIMEOUT (seconds the server may take to build and answer; default 3600), FRESH_KEEP=1 (keep
# the root afterwards; it is unmounted either way).
set -euo pipefail

mode=${1:-serve}

die() {
  echo "fresh-machine: $*" >&2
  exit 1
}

# Inside `unshare -n` (see `serve` below): the README's first command in the root, in a network
# namespace of its own, so 127.0.0.1:7880 is free whatever else runs on this machine, and the build
# provably downloads nothing beyond what `cargo fetch` got.
serve_in_netns() {
  local root=$1 log=$2 timeout=$3 nice=$4
  ip link set lo up
  setsid env -i HOME=/root PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 nice -n "$nice" chroot "$root" \
    sh -c 'cd /root/huddle && exec cargo run --release -p huddle-server' >"$log" 2>&1 &
  local pid=$! start=$SECONDS served=0 reply=""
  while kill -0 "$pid" 2>/dev/null && [ $((SECONDS - start)) -lt "$timeout" ]; do
    # No curl on a fresh machine: bash's /dev/tcp.
    if grep -q '^  dev mode: one app' "$log" && reply=$(
      exec 2>/dev/null 3<>/dev/tcp/127.0.0.1/7880 || exit 1
      printf 'GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:7880\r\nConnection: close\r\n\r\n' >&3
      tr -d '\r' <&3
    ); then
      served=1
      break
    fi
    sleep 1
  done
  local took=$((SECONDS - start))
  echo "load average when served (1, 5, 15 min; this machine has $(nproc) CPUs): $(cut -d' ' -f1-3 /proc/loadavg)"
  # The server (cargo run execs it) and anything else of its session.
  kill -TERM -- "-$pid" 2>/dev/null || true
  local status=0
  wait "$pid" || status=$?
  echo "--- output of cargo run (build, then the server) ---"
  { grep -v '^ *\(Compiling\|Downloaded\|Downloading\) ' "$log" || true; } | tail -n 30
  echo "---"
  [ "$served" = 1 ] || { echo "FAIL: no dev-mode banner and answering /healthz within ${took}s"; return 1; }
  echo "GET /healthz -> $(head -n 1 <<<"$reply") / body: $(tail -n 1 <<<"$reply")"
  [ "$(head -n 1 <<<"$reply" | cut -d' ' -f2)" = 200 ] && [ "$(tail -n 1 <<<"$reply")" = ok ] ||
    { echo "FAIL: /healthz did not answer 200 ok"; return 1; }
  [ "$status" = 0 ] || { echo "FAIL: the server exited with $status after SIGTERM"; return 1; }
  echo "build + start until serving: ${took}s; stopped cleanly on SIGTERM"
}
if [ "$mode" = __serve_in_netns ]; then
  shift
  serve_in_netns "$@"
  exit
fi

case "$mode" in
  serve | test) ;;
  *) die "usage: $0 [serve|test]" ;;
esac
[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot, mounts)"

repo=$(cd "$(dirname "$0")/.." && pwd -P)
commit=$(git -C "$repo" rev-parse HEAD)
# A worktree keeps its objects in the main repository's git directory: the root needs both.
common=$(cd "$repo" && cd "$(git rev-parse --git-common-dir)" && pwd -P)
if [ -n "$(git -C "$repo" status --porcelain --untracked-files=no)" ]; then
  echo "fresh-machine: note: uncommitted changes are not tested (the root clones HEAD $commit)" >&2
fi
rustup_home=$(realpath "${RUSTUP_HOME:-$HOME/.rustup}")
cargo_bin=$(realpath "${CARGO_HOME:-$HOME/.cargo}/bin")
[ -d "$rustup_home/toolchains" ] && [ -x "$cargo_bin/cargo" ] ||
  die "no rustup toolchain at $rustup_home and $cargo_bin"
mirror=${FRESH_MIRROR:-http://deb.debian.org/debian}
nice=${FRESH_NICE:-10}
timeout=${FRESH_TIMEOUT:-3600}
for tool in findmnt unshare setsid ip chroot; do
  command -v "$tool" >/dev/null || die "needs $tool on this machine"
done
if ! command -v debootstrap >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap
fi

parent=${FRESH_DIR:-/var/tmp}
mkdir -p "$parent"
work=$(mktemp -d "$(realpath "$parent")/huddle-fresh.XXXXXX")
case "$work/" in "$repo/"*) rmdir "$work"; die "FRESH_DIR must be outside the repository" ;; esac
root=$work/root

# Every mount point under $work, deepest (and last mounted) first.
mounts_under_work() {
  findmnt -rn -o TARGET | awk -v p="$work/" 'index($0 "/", p) == 1' | sort -r
}
cleanup() {
  local status=$? sig pid r m
  trap - EXIT INT TERM
  set +e
  # Processes still running in the root: all started by this script (apt's helpers, a test's
  # leftovers). By process id, found through their root directory.
  for sig in TERM KILL; do
    for pid in $(ls /proc | grep -E '^[0-9]+$'); do
      r=$(readlink "/proc/$pid/root" 2>/dev/null) || continue
      case "$r/" in "$root/"*) kill "-$sig" "$pid" 2>/dev/null ;; esac
    done
    sleep 1
  done
  # Unmount before anything is deleted: /dev, /sys, the toolchain and the repository are bound in,
  # and removing a directory with a bind mount in it would delete the host's files. Each round
  # unmounts the mounts stacked on top; a busy one is detached (lazily, out of the tree at once).
  for _ in 1 2 3 4; do
    m=$(mounts_under_work)
    [ -n "$m" ] || break
    while read -r m; do
      umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
    done <<<"$m"
  done
  if [ -n "$(mounts_under_work)" ]; then
    echo "fresh-machine: still mounted under $work, so it is NOT deleted:" >&2
    mounts_under_work >&2
    exit 1
  fi
  if [ "${FRESH_KEEP:-0}" = 1 ]; then
    echo "fresh-machine: kept (unmounted) $root"
  else
    rm -rf --one-file-system "$work"
  fi
  echo "fresh-machine: total $((SECONDS / 60))m$((SECONDS % 60))s"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

in_root() {
  env -i HOME=/root PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 TERM="${TERM:-dumb}" DEBIAN_FRONTEND=noninteractive chroot "$root" "$@"
}
bind_ro() {
  local from=$1 to=$root$2
  if [ -d "$from" ]; then mkdir -p "$to"; else mkdir -p "$(dirname "$to")" && touch "$to"; fi
  mount --bind "$from" "$to"
  mount -o remount,bind,ro "$to"
}
step=$SECONDS
lap() {
  echo "fresh-machine: $1: $((SECONDS - step))s"
  step=$SECONDS
}

echo "fresh-machine: Debian 12 root in $root (mode: $mode, commit $commit)"
debootstrap --variant=minbase bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 ||
  { tail -n 20 "$work/debootstrap.log"; die "debootstrap failed"; }
# The sources of an installed Debian 12 (debootstrap writes only the first).
security=${mirror%/debian}/debian-security
cat >"$root/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb $security bookworm-security main
EOF
# This machine's locally added CAs, e.g. of an egress proxy that re-signs TLS (as on our build
# machines): without them crates.io, PyPI and npm cannot be reached through it. A machine on a
# direct connection has none and needs none.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  mkdir -p "$root/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
fi

# The root is a mount point of its own, as / is on a real machine: `ip netns exec` (the tests'
# network namespaces) remounts / inside it, which fails on a plain directory.
mount --bind "$root" "$root"
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
mount --make-rslave "$root/dev"
mount --rbind /sys "$root/sys"
mount --make-rslave "$root/sys"
bind_ro "$(realpath /etc/resolv.conf)" /etc/resolv.conf
bind_ro "$rustup_home" /root/.rustup
bind_ro "$cargo_bin" /root/.cargo/bin
bind_ro "$repo" "$repo"
case "$common/" in "$repo/"*) ;; *) bind_ro "$common" "$common" ;; esac
lap "debootstrap and mounts"

# What a rustup user has: a C compiler and libc headers (rustup's own requirement for linking),
# git, and CA certificates. No recommends, so nothing extra can hide a missing dependency.
in_root apt-get update -qq
in_root apt-get install -y -qq --no-install-recommends gcc libc6-dev ca-certificates git >"$work/apt.log" 2>&1 ||
  { tail -n 20 "$work/apt.log"; die "apt-get install failed"; }
in_root git clone -q --no-hardlinks "$repo" /root/huddle
in_root git -C /root/huddle checkout -q --detach "$commit"
in_root sh -c 'rustc --version && cargo --version && gcc --version | head -n 1'
lap "gcc, git, clone"

case "$mode" in
  serve)
    in_root sh -c 'cd /root/huddle && cargo fetch --locked' 2>"$work/fetch.log" ||
      { tail -n 20 "$work/fetch.log"; die "cargo fetch failed"; }
    lap "cargo fetch ($(grep -c '^ *Downloaded ' "$work/fetch.log") crates from crates.io)"
    echo "fresh-machine: cargo run --release -p huddle-server (cold; nice $nice; own network namespace)"
    unshare -n "$repo/scripts/fresh-machine.sh" __serve_in_netns "$root" "$work/serve.log" "$timeout" "$nice"
    lap "cold build and serve"
    ;;
  test)
    echo "fresh-machine: ./scripts/test.sh (cold; nice $nice)"
    in_root nice -n "$nice" sh -c 'cd /root/huddle && ./scripts/test.sh'
    lap "./scripts/test.sh"
    ;;
esac
