#!/usr/bin/env bash
# Huddle's benchmarks with the same load generator (crates/huddle-load) against:
#   B0      the machine's ceiling: a plain UDP relay (recvmmsg/sendmmsg, one thread, no SRTP);
#   Janus   Debian's Janus 1.1.2, videoroom plugin (installed here if missing), after a smoke
#           check of the Janus adapter (`huddle-load janus-smoke`: 2 x 3 for 2 s, no loss);
#   Huddle  `huddle serve`.
# Writes one JSON report per run into target/bench/ and prints a summary with the ratios.
# docs/benchmarks.md takes its numbers from this script's output only.
#
# Network: the runs send only inside a network namespace this script makes (`ip netns add
# huddle-bench-PID`, or `unshare -n` where `ip netns` is not permitted): `lo` up and one
# namespace-local interface `hb0` with 10.77.0.1/24 (a dummy interface; a veth pair with both ends
# in the namespace where the kernel has no dummy driver), no default route. Janus's ICE (libnice)
# ignores loopback, so Janus gathers 10.77.0.1; every server and the generator (`--bind 10.77.0.1`)
# run in the namespace, so all three are measured alike over the namespace's own addresses. A trap
# kills the servers by PID and deletes the namespace on exit.
#
# Sizes (environment): BENCH_DURATION (s, default 5), BENCH_PUBLISHERS (10), BENCH_SUBSCRIBERS
# (20), BENCH_B0_SUBSCRIBERS (200), BENCH_THREADS (generator threads, 2). Defaults are short; the
# published numbers come from a quiet machine with longer windows (see docs/benchmarks.md).
set -euo pipefail
self=$(readlink -f "$0")
cd "$(dirname "$self")/.."

duration=${BENCH_DURATION:-5}
publishers=${BENCH_PUBLISHERS:-10}
subscribers=${BENCH_SUBSCRIBERS:-20}
b0_subscribers=${BENCH_B0_SUBSCRIBERS:-200}
threads=${BENCH_THREADS:-2}
out=target/bench
load=target/release/huddle-load
huddle=target/release/huddle
# The namespace's one address besides loopback: it exists nowhere else.
addr=10.77.0.1

if [ "${HUDDLE_BENCH_UNSHARED:-}" != 1 ]; then
  mkdir -p "$out"
  # Janus from Debian, `ip`, and python3 for the summary.
  need_apt=()
  command -v janus >/dev/null 2>&1 || need_apt+=(janus)
  command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
  command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
  if [ ${#need_apt[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
  fi

  echo "== build (release)"
  cargo build --release --locked -p huddle-load -p huddle-cli

  ns=huddle-bench-$$
  if ip netns add "$ns" 2>/dev/null; then
    in_ns=(ip netns exec "$ns")
  else
    echo "== 'ip netns add' is not permitted here: the runs go into 'unshare -n'"
    HUDDLE_BENCH_UNSHARED=1 exec unshare -n -- "$self" "$@"
  fi
else
  # Re-executed by the branch above, inside a fresh network namespace.
  ns=
  in_ns=()
fi

janus_pid=
server_pid=
stop_pid() { # PID: SIGTERM, SIGKILL after 3 s, reap
  local pid=$1 i
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null || return 0
  for i in $(seq 30); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  stop_pid "$janus_pid"
  stop_pid "$server_pid"
  if [ -n "$ns" ]; then
    ip netns del "$ns" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== network namespace ${ns:-(unshare -n)}: lo + hb0 $addr/24"
"${in_ns[@]}" ip link set lo up
if ! "${in_ns[@]}" ip link add hb0 type dummy 2>/dev/null; then
  # No dummy driver in this kernel: a veth pair whose both ends stay in the namespace.
  "${in_ns[@]}" ip link add hb0 type veth peer name hb1
  "${in_ns[@]}" ip link set hb1 up
fi
"${in_ns[@]}" ip addr add "$addr/24" dev hb0
"${in_ns[@]}" ip link set hb0 up
"${in_ns[@]}" ip -brief addr
if [ -n "$("${in_ns[@]}" ip route show default)$("${in_ns[@]}" ip -6 route show default)" ]; then
  echo "the benchmark namespace has a default route; refusing to run" >&2
  exit 1
fi

# Waits until HOST:PORT accepts TCP inside the namespace, while PID lives.
wait_tcp() {
  local host=$1 port=$2 pid=$3 i
  for i in $(seq 150); do
    kill -0 "$pid" 2>/dev/null || return 1
    if "${in_ns[@]}" python3 -c "import socket; socket.create_connection(('$host', $port), 0.2)" 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  return 1
}

common=(--duration "$duration" --threads "$threads" --bind "$addr")

echo "== B0: plain UDP relay, $publishers x $b0_subscribers"
"${in_ns[@]}" "$load" b0 --publishers "$publishers" --subscribers "$b0_subscribers" "${common[@]}" \
  --json "$out/b0.json"

echo "== Janus (ICE on hb0 only)"
rm -f "$out/janus.json" "$out/janus-smoke.json"
"${in_ns[@]}" janus -F crates/huddle-load/janus -E hb0 -o >"$out/janus.log" 2>&1 &
janus_pid=$!
if ! wait_tcp 127.0.0.1 8188 "$janus_pid"; then
  echo "Janus did not open 127.0.0.1:8188 in its namespace; see $out/janus.log" >&2
  exit 1
fi
echo "== Janus adapter smoke check: 2 x 3 for 2 s, no loss"
"${in_ns[@]}" "$load" janus-smoke --bind "$addr" --pid "$janus_pid" --json "$out/janus-smoke.json"
echo "== Janus videoroom, $publishers x $subscribers"
"${in_ns[@]}" "$load" janus --pid "$janus_pid" --publishers "$publishers" --subscribers "$subscribers" \
  "${common[@]}" --json "$out/janus.json"
stop_pid "$janus_pid"
janus_pid=

echo "== Huddle, $publishers x $subscribers"
# A bench-only app (these credentials guard nothing but this run).
app_id=4242
app_sign=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
secret=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
cat >"$out/huddle-bench.toml" <<CONF
listen = "$addr:7880"
udp_port = 7882
public_ip = "$addr"
data_dir = "$out/huddle-data"

[[apps]]
app_id = $app_id
app_sign = "$app_sign"
server_secret = "$secret"
CONF
rm -f "$out/huddle.json"
RUST_LOG=warn "${in_ns[@]}" "$huddle" serve --config "$out/huddle-bench.toml" >"$out/huddle.log" 2>&1 &
server_pid=$!
if wait_tcp "$addr" 7880 "$server_pid"; then
  "${in_ns[@]}" "$load" huddle --url "ws://$addr:7880/ws" --app-id "$app_id" --app-sign "$app_sign" \
    --pid "$server_pid" --publishers "$publishers" --subscribers "$subscribers" "${common[@]}" \
    --json "$out/huddle.json" ||
    echo "(the Huddle run failed; see above and $out/huddle.log)"
else
  echo "(huddle serve did not start; see $out/huddle.log)"
fi
stop_pid "$server_pid"
server_pid=

echo "== summary"
python3 - "$out" <<'EOF'
import json, os, sys
out = sys.argv[1]
runs = {}
for name in ("b0", "janus", "huddle"):
    path = os.path.join(out, name + ".json")
    if os.path.exists(path):
        with open(path) as f:
            runs[name] = json.load(f)

def g(r, *keys):
    for k in keys:
        if r is None:
            return None
        r = r.get(k)
    return r

def fmt(v, spec):
    return "-" if v is None else format(v, spec)

print(f"{'run':8} {'load':>10} {'deliv pkt/s':>12} {'loss %':>8} {'jitter ms':>10} {'lat p50':>8} "
      f"{'lat p99':>8} {'join p50':>9} {'1st p50':>8} {'1st p95':>8} {'login>1st p50':>13} {'srv cores':>9} {'us/pkt':>7} "
      f"{'KiB/play':>8}")
for name, r in runs.items():
    print(f"{name:8} {str(r['publishers']) + 'x' + str(r['subscribers']):>10} {r['delivered_pps']:12.0f} "
          f"{r['loss'] * 100:8.3f} {fmt(r['jitter_ms_mean'], '.3f'):>10} "
          f"{fmt(g(r, 'latency_ms', 'p50'), '.2f'):>8} {fmt(g(r, 'latency_ms', 'p99'), '.2f'):>8} "
          f"{fmt(g(r, 'play_join_ms', 'p50'), '.1f'):>9} {fmt(g(r, 'first_packet_ms', 'p50'), '.1f'):>8} "
          f"{fmt(g(r, 'first_packet_ms', 'p95'), '.1f'):>8} "
          f"{fmt(g(r, 'login_first_packet_ms', 'p50'), '.1f'):>13} {fmt(g(r, 'server', 'cpu_cores'), '.3f'):>9} "
          f"{fmt(g(r, 'server', 'cpu_us_per_packet'), '.2f'):>7} "
          f"{fmt(g(r, 'server', 'rss_kib_per_play_stream'), '.1f'):>8}")
b0 = g(runs.get("b0"), "server", "cpu_us_per_packet")
for name in ("janus", "huddle"):
    us = g(runs.get(name), "server", "cpu_us_per_packet")
    if us and b0:
        print(f"{name}: {us / b0:.1f}x the B0 relay's CPU per packet ({us:.2f} vs {b0:.2f} us)")
hu, ja = g(runs.get("huddle"), "server", "cpu_us_per_packet"), g(runs.get("janus"), "server", "cpu_us_per_packet")
if hu and ja:
    print(f"huddle vs janus: {ja / hu:.2f}x less CPU per forwarded packet")
print(f"(reports: {out}/*.json)")
EOF
