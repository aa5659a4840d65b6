#!/usr/bin/env bash
# Network impairment between a Huddle server and its clients: two network namespaces joined by a
# veth pair, with loss, delay, jitter, reordering and outages applied on the link. Traffic stays
# inside the namespaces this script makes (10.77.0.0/24 exists only there); nothing is added to
# the host's own namespace, and everything is removed by `down` (and on exit of `smoke`).
#
#   impair/netns.sh probe                       what works on this machine (netns, veth, netem, nft)
#   impair/netns.sh up                          make hdl-srv (10.77.0.1) and hdl-cli (10.77.0.2)
#   impair/netns.sh set LOSS% DELAY_MS [JITTER_MS [REORDER%]]   impair both directions
#   impair/netns.sh outage on|off               cut / restore the link (both directions)
#   impair/netns.sh clear                       no impairment
#   impair/netns.sh exec srv|cli CMD...         run CMD in a namespace
#   impair/netns.sh down                        remove both namespaces (and the veth pair)
#   impair/netns.sh smoke [LOSS% [DELAY_MS]]    huddle serve in hdl-srv, a str0m call from hdl-cli
#                                               (default 10% loss, 50 ms delay)
#
# Impairment backends, best first:
#   - `tc qdisc netem` on each veth end: loss, delay, jitter, reordering (needs sch_netem);
#   - without netem: random loss with nftables (`numgen random`, needs the nft binary and
#     nf_tables) on each namespace's output; delay, jitter and reordering are then unavailable
#     and `set` fails (exit 3) if they are asked for, unless IMPAIR_ALLOW_PARTIAL=1 (then they are
#     skipped with a warning).
# Outages use nftables (drop everything) when nft is there, else `ip link set down`.
# Needs root (CI runs it as root). impair/README.md has what works where.
set -euo pipefail

SRV=hdl-srv
CLI=hdl-cli
SRV_IF=hdl-s
CLI_IF=hdl-c
SRV_IP=10.77.0.1
CLI_IP=10.77.0.2

die() { echo "impair: $*" >&2; exit "${2:-1}"; }
ns_exists() { ip netns list | grep -qw "$1"; }
in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

have_netem() {
  # Tried on the namespace's own loopback, so that the probe touches nothing else.
  local ns=$1
  if in_ns "$ns" tc qdisc add dev lo root netem delay 1ms 2>/dev/null; then
    in_ns "$ns" tc qdisc del dev lo root 2>/dev/null || true
    return 0
  fi
  return 1
}

have_nft() {
  local ns=$1
  command -v nft >/dev/null || return 1
  in_ns "$ns" nft add table inet hdl_probe 2>/dev/null || return 1
  in_ns "$ns" nft delete table inet hdl_probe 2>/dev/null || true
}

cmd_probe() {
  local tmp=hdl-probe-$$
  local netns=no veth=no netem=no nft=no
  if ip netns add "$tmp" 2>/dev/null; then
    netns=yes
    in_ns "$tmp" ip link set lo up
    if ip -n "$tmp" link add p0 type veth peer name p1 2>/dev/null; then veth=yes; fi
    if have_netem "$tmp"; then netem=yes; fi
    if have_nft "$tmp"; then nft=yes; fi
    ip netns del "$tmp"
  fi
  echo "netns=$netns veth=$veth netem=$netem nft=$nft kernel=$(uname -r)"
  if [ "$netem" = no ]; then
    echo "without netem: loss (nft) and outages only; no delay, jitter or reordering"
  fi
}

cmd_up() {
  ns_exists "$SRV" && die "$SRV exists already (impair/netns.sh down first)"
  ip netns add "$SRV"
  ip netns add "$CLI"
  # The pair is made inside hdl-srv with its peer in hdl-cli: it never exists in the host's
  # namespace.
  ip -n "$SRV" link add "$SRV_IF" type veth peer name "$CLI_IF" netns "$CLI"
  ip -n "$SRV" addr add "$SRV_IP/24" dev "$SRV_IF"
  ip -n "$CLI" addr add "$CLI_IP/24" dev "$CLI_IF"
  for ns in "$SRV" "$CLI"; do
    ip -n "$ns" link set lo up
  done
  ip -n "$SRV" link set "$SRV_IF" up
  ip -n "$CLI" link set "$CLI_IF" up
  echo "up: $SRV ($SRV_IP) <-> $CLI ($CLI_IP)"
}

cmd_down() {
  for ns in "$SRV" "$CLI"; do
    if ns_exists "$ns"; then
      # Whatever still runs inside (started by this script or by `exec`) would keep the
      # namespace alive after its name is gone.
      local pids
      pids=$(ip netns pids "$ns" || true)
      if [ -n "$pids" ]; then
        # shellcheck disable=SC2086
        kill $pids 2>/dev/null || true
        sleep 0.2
      fi
      ip netns del "$ns"
    fi
  done
}

nft_reset() {
  local ns=$1
  in_ns "$ns" nft delete table inet hdl_impair 2>/dev/null || true
}

nft_loss() {
  local ns=$1 loss=$2
  nft_reset "$ns"
  [ "$loss" = 0 ] && return 0
  in_ns "$ns" nft -f - <<NFT
table inet hdl_impair {
  chain out {
    type filter hook output priority 0; policy accept;
    oifname "$([ "$ns" = "$SRV" ] && echo "$SRV_IF" || echo "$CLI_IF")" numgen random mod 100 < $loss counter drop
  }
}
NFT
}

cmd_clear() {
  in_ns "$SRV" tc qdisc del dev "$SRV_IF" root 2>/dev/null || true
  in_ns "$CLI" tc qdisc del dev "$CLI_IF" root 2>/dev/null || true
  nft_reset "$SRV"
  nft_reset "$CLI"
  ip -n "$SRV" link set "$SRV_IF" up
  ip -n "$CLI" link set "$CLI_IF" up
}

cmd_set() {
  local loss=${1:?loss %} delay=${2:-0} jitter=${3:-0} reorder=${4:-0}
  cmd_clear
  if have_netem "$SRV"; then
    local args=(loss "${loss}%")
    if [ "$delay" != 0 ]; then
      args+=(delay "${delay}ms")
      [ "$jitter" != 0 ] && args+=("${jitter}ms" distribution normal)
      [ "$reorder" != 0 ] && args+=(reorder "${reorder}%" 50%)
    fi
    in_ns "$SRV" tc qdisc add dev "$SRV_IF" root netem "${args[@]}"
    in_ns "$CLI" tc qdisc add dev "$CLI_IF" root netem "${args[@]}"
    echo "netem: ${args[*]} (each direction)"
    return 0
  fi
  if [ "$delay" != 0 ] || [ "$jitter" != 0 ] || [ "$reorder" != 0 ]; then
    if [ "${IMPAIR_ALLOW_PARTIAL:-0}" != 1 ]; then
      die "no netem in this kernel ($(uname -r)): delay/jitter/reorder unavailable (IMPAIR_ALLOW_PARTIAL=1 to apply the loss only)" 3
    fi
    echo "impair: warning: no netem: delay ${delay} ms, jitter ${jitter} ms, reorder ${reorder}% NOT applied" >&2
  fi
  have_nft "$SRV" || die "neither netem nor nftables: no loss either" 3
  nft_loss "$SRV" "$loss"
  nft_loss "$CLI" "$loss"
  echo "nft: ${loss}% random loss (each direction)"
}

cmd_outage() {
  case ${1:?on|off} in
    on)
      if have_nft "$SRV"; then
        for ns in "$SRV" "$CLI"; do
          in_ns "$ns" nft -f - <<NFT
table inet hdl_outage {
  chain out { type filter hook output priority -10; policy accept; ip daddr 10.77.0.0/24 drop; }
}
NFT
        done
      else
        ip -n "$CLI" link set "$CLI_IF" down
      fi
      ;;
    off)
      for ns in "$SRV" "$CLI"; do in_ns "$ns" nft delete table inet hdl_outage 2>/dev/null || true; done
      ip -n "$CLI" link set "$CLI_IF" up
      ;;
    *) die "outage on|off" ;;
  esac
}

cmd_exec() {
  local which=${1:?srv|cli}; shift
  case $which in
    srv) in_ns "$SRV" "$@" ;;
    cli) in_ns "$CLI" "$@" ;;
    *) die "exec srv|cli CMD..." ;;
  esac
}

# The str0m test call (crates/huddle-server/tests/hostile.rs, `external_call`) from hdl-cli
# against `huddle serve` in hdl-srv, over the impaired link.
cmd_smoke() {
  local loss=${1:-10} delay=${2:-50}
  local root
  root=$(cd "$(dirname "$0")/.." && pwd)
  cd "$root"
  cargo build -q -p huddle-cli --bin huddle
  local test_bin
  test_bin=$(cargo test -q -p huddle-server --test hostile --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "hostile":
        print(m["executable"])')
  [ -n "$test_bin" ] || die "could not build the hostile test binary"
  # Globals: the EXIT trap runs after this function returns.
  work=$(mktemp -d)
  server_pid=
  trap 'if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; fi; cmd_down; rm -rf "$work"' EXIT
  cmd_down
  cmd_up
  # The test app of hostile.rs (huddle_server::test_app(21): public test credentials).
  cat >"$work/huddle.toml" <<TOML
listen = "$SRV_IP:7880"
udp_port = 7882
public_ip = "$SRV_IP"
data_dir = "$work/data"
heartbeat_ms = 10000
session_timeout_ms = 60000

[[apps]]
app_id = 21
app_sign = "00000015$(printf 'ab%.0s' $(seq 28))"
server_secret = "00000015$(printf 'cd%.0s' $(seq 12))"
TOML
  # `ip netns exec` directly (not through a shell function), so that $! is the server itself.
  ip netns exec "$SRV" "$root/target/debug/huddle" serve --config "$work/huddle.toml" >"$work/server.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 50); do
    in_ns "$CLI" bash -c "exec 3<>/dev/tcp/$SRV_IP/7880" 2>/dev/null && break
    sleep 0.1
  done
  cmd_set "$loss" "$delay"
  HUDDLE_EXTERNAL_WS="ws://$SRV_IP:7880/ws" HUDDLE_EXTERNAL_LOSS="$loss" \
    in_ns "$CLI" "$test_bin" --exact external_call --nocapture
}

case ${1:-} in
  probe) cmd_probe ;;
  up) cmd_up ;;
  down) cmd_down ;;
  set) shift; cmd_set "$@" ;;
  clear) cmd_clear ;;
  outage) shift; cmd_outage "$@" ;;
  exec) shift; cmd_exec "$@" ;;
  smoke) shift; cmd_smoke "$@" ;;
  *) sed -n '2,30p' "$0"; exit 2 ;;
esac
