#!/usr/bin/env bash
# Huddle's benchmarks with one load generator (crates/huddle-load, driven through `huddle
# load-test` for the WebRTC runs and `huddle-load b0` for the relay) against:
#   B0      the machine's ceiling: a plain UDP relay (recvmmsg/sendmmsg, one thread, no SRTP);
#   Janus   Debian's Janus 1.1.2, videoroom plugin (installed here if missing), after a smoke
#           check of the Janus adapter (`huddle-load janus-smoke`: 2 x 3 for 2 s, no loss);
#   Huddle  `huddle serve`.
# Benchmarks (docs/benchmarks.md):
#   B1  10 publishers x N subscribers, N ramped until loss > 0.5% (or the cap): the largest N at
#       <= 0.5% loss, delivered packets/s and server CPU-us per forwarded packet; Huddle and Janus;
#   B3  latency added by forwarding, p50/p99, at 1x1 and at half of B1's capacity, against B0's
#       relay latency at the same loads;
#   B4  login -> first audio packet p50/p95, 1 and 50 subscribers joining at once; Huddle and Janus;
#   MEM server RSS per played stream (from the B1 runs);
#   SCALE Huddle pinned with taskset to 1 core: B1's ramp (capacity on 1 core against B1's on
#         all cores), then 1 core and 2 cores at the same load.
# Writes one JSON report per run into target/bench/, then scripts/bench_report.py prints the
# summary, writes target/bench/results.md and the SVG plots; with BENCH_PUBLISH=1 it also puts
# them into docs/benchmarks.md (between the bench markers) and docs/bench/*.svg.
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
# Sizes (environment): BENCH_MODE=short (default, a few minutes) or full; any of these overrides
# the mode's value:
#   BENCH_DURATION     measurement window per run, s            short 3        full 15
#   BENCH_B1_STEPS     B1 subscriber counts, ascending           short "20 50 100"
#                                                                full "20 50 100 150 200 300 400"
#   BENCH_PUBLISHERS   publishers in B1/B3/SCALE                 10
#   BENCH_B0_SUBSCRIBERS  B0 ceiling run's subscribers           short 200      full 1000
#   BENCH_B4_JOINS     simultaneous joins of B4's big case       50
#   BENCH_SCALE_SUBSCRIBERS  SCALE load (10 x this)              short 100      full 200
#   BENCH_THREADS      generator runtime threads                 2
#   BENCH_SKIP_JANUS=1 Huddle and B0 only.
#   BENCH_PROFILE=0    no `perf record` of the server during the 2-core scaling run (on by
#                      default where perf exists; target/bench/huddle-profile.txt).
set -euo pipefail
self=$(readlink -f "$0")
cd "$(dirname "$self")/.."

mode=${BENCH_MODE:-short}
case "$mode" in
  short) d_duration=3 d_steps="20 50 100" d_b0=200 d_scale=100 ;;
  full) d_duration=15 d_steps="20 50 100 150 200 300 400" d_b0=1000 d_scale=200 ;;
  *) echo "BENCH_MODE must be short or full" >&2; exit 2 ;;
esac
duration=${BENCH_DURATION:-$d_duration}
steps=${BENCH_B1_STEPS:-$d_steps}
publishers=${BENCH_PUBLISHERS:-10}
b0_subscribers=${BENCH_B0_SUBSCRIBERS:-$d_b0}
b4_joins=${BENCH_B4_JOINS:-50}
scale_subscribers=${BENCH_SCALE_SUBSCRIBERS:-$d_scale}
threads=${BENCH_THREADS:-2}
skip_janus=${BENCH_SKIP_JANUS:-0}
profile=${BENCH_PROFILE:-1}
command -v perf >/dev/null 2>&1 || profile=0
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

ncpu=$(nproc)
rm -f "$out"/*.json "$out"/*.tmp "$out"/*.svg "$out"/results.md
# Run facts for the report: machine, load average before, sizes.
python3 - "$out/meta.json" "$mode" "$duration" "$publishers" "$steps" "$b4_joins" "$scale_subscribers" "$threads" <<'PY'
import json, os, platform, sys, time
cpu = "?"
with open("/proc/cpuinfo") as f:
    for line in f:
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
mode, duration, pubs, steps, b4, scale, threads = sys.argv[2:]
json.dump({
    "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "cpu": cpu, "cores": os.cpu_count(),
    "kernel": platform.release(), "loadavg_before": os.getloadavg()[0], "mode": mode,
    "duration": float(duration), "publishers": int(pubs), "b1_steps": [int(x) for x in steps.split()],
    "b4_joins": int(b4), "scale_subscribers": int(scale), "generator_threads": int(threads),
}, open(sys.argv[1], "w"))
PY

# load_test NAME ARGS...: one WebRTC run through `huddle load-test`, its JSON report into
# $out/NAME.json (progress goes to the terminal). A failed run leaves no file.
load_test() {
  local name=$1
  shift
  if "${in_ns[@]}" "$huddle" load-test --bind "$addr" --threads "$threads" --json "$@" >"$out/$name.tmp"; then
    mv "$out/$name.tmp" "$out/$name.json"
    python3 scripts/bench_report.py --line "$out/$name.json"
  else
    rm -f "$out/$name.tmp"
    echo "   $name: the run failed"
    return 1
  fi
}

# b1 PREFIX ARGS...: the ramp; stops after the first step above 0.5% loss (or one that fails).
b1() {
  local prefix=$1 n
  shift
  for n in $steps; do
    echo "== B1 $prefix: $publishers x $n"
    load_test "$prefix-b1-$n" "$@" --publishers "$publishers" --subscribers "$n" --duration "$duration" || break
    if ! python3 scripts/bench_report.py --ok "$out/$prefix-b1-$n.json"; then
      echo "   above 0.5% loss (or not all joined): the ramp stops"
      break
    fi
  done
}

# capacity PREFIX: the largest N of PREFIX's ramp at <= 0.5% loss (0 when none).
capacity() { python3 scripts/bench_report.py --capacity "$out" "$1"; }

# half N: half of B1's capacity, at least 1.
half() { echo $(( $1 / 2 > 0 ? $1 / 2 : 1 )); }

b0_run() { # NAME PUBLISHERS SUBSCRIBERS
  echo "== B0: plain UDP relay, $2 x $3"
  if "${in_ns[@]}" "$load" b0 --publishers "$2" --subscribers "$3" --duration "$duration" \
    --threads "$threads" --bind "$addr" --quiet --json "$out/$1.json" >/dev/null; then
    python3 scripts/bench_report.py --line "$out/$1.json"
  else
    echo "   $1: the run failed"
  fi
}

b0_run b0 "$publishers" "$b0_subscribers"
b0_run b0-1x1 1 1

start_janus() {
  "${in_ns[@]}" janus -F crates/huddle-load/janus -E hb0 -o >>"$out/janus.log" 2>&1 &
  janus_pid=$!
  if ! wait_tcp 127.0.0.1 8188 "$janus_pid"; then
    echo "Janus did not open 127.0.0.1:8188 in its namespace; see $out/janus.log" >&2
    exit 1
  fi
  janus=(--janus ws://127.0.0.1:8188 --server-pid "$janus_pid")
}
rm -f "$out/janus.log"

if [ "$skip_janus" != 1 ]; then
  echo "== Janus (ICE on hb0 only)"
  start_janus
  echo "== Janus adapter smoke check: 2 x 3 for 2 s, no loss"
  "${in_ns[@]}" "$load" janus-smoke --bind "$addr" --pid "$janus_pid" --json "$out/janus-smoke.json" >/dev/null
  b1 janus "${janus[@]}"
  echo "== B4 janus: login -> first packet, 1 and $b4_joins joins at once"
  load_test janus-b4-1 "${janus[@]}" --publishers 1 --subscribers 1 --duration 1 --quiet || true
  load_test janus-b4-many "${janus[@]}" --publishers 1 --subscribers "$b4_joins" \
    --join-concurrency "$b4_joins" --duration 1 --quiet || true
  stop_pid "$janus_pid"
  janus_pid=
fi

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
hud=(--server "ws://$addr:7880" --app-id "$app_id" --app-sign "$app_sign")

# start_huddle CPUS: `huddle serve` pinned to CPUS (a taskset list); its PID in server_pid.
start_huddle() {
  RUST_LOG=warn "${in_ns[@]}" taskset -c "$1" "$huddle" serve --config "$out/huddle-bench.toml" \
    >>"$out/huddle.log" 2>&1 &
  server_pid=$!
  if ! wait_tcp "$addr" 7880 "$server_pid"; then
    echo "huddle serve did not start; see $out/huddle.log" >&2
    exit 1
  fi
}
rm -f "$out/huddle.log"
all_cpus=0-$((ncpu - 1))

echo "== Huddle on CPUs $all_cpus"
start_huddle "$all_cpus"
b1 huddle "${hud[@]}" --server-pid "$server_pid"
cap=$(capacity huddle)
echo "== B3 huddle: latency at 1x1 and at half of its B1 capacity ($publishers x $(half "$cap"))"
load_test huddle-b3-1x1 "${hud[@]}" --server-pid "$server_pid" --publishers 1 --subscribers 1 \
  --duration "$duration" --quiet || true
load_test huddle-b3-half "${hud[@]}" --server-pid "$server_pid" --publishers "$publishers" \
  --subscribers "$(half "$cap")" --duration "$duration" --quiet || true
b0_run b0-b3-half "$publishers" "$(half "$cap")"
echo "== B4 huddle: login -> first packet, 1 and $b4_joins joins at once"
load_test huddle-b4-1 "${hud[@]}" --server-pid "$server_pid" --publishers 1 --subscribers 1 \
  --duration 1 --quiet || true
load_test huddle-b4-many "${hud[@]}" --server-pid "$server_pid" --publishers 1 \
  --subscribers "$b4_joins" --join-concurrency "$b4_joins" --duration 1 --quiet || true
stop_pid "$server_pid"
server_pid=

if [ "$skip_janus" != 1 ]; then
  jcap=$(capacity janus)
  echo "== B3 janus: latency at 1x1 and at half of its B1 capacity ($publishers x $(half "$jcap"))"
  start_janus
  load_test janus-b3-1x1 "${janus[@]}" --publishers 1 --subscribers 1 --duration "$duration" --quiet || true
  load_test janus-b3-half "${janus[@]}" --publishers "$publishers" --subscribers "$(half "$jcap")" \
    --duration "$duration" --quiet || true
  stop_pid "$janus_pid"
  janus_pid=
fi

# 1 -> 2 cores, as capacity: B1's ramp again with the server pinned to CPU 0 (files
# huddle1core-b1-N.json), against B1's capacity on every CPU. The generator is not pinned: on
# two cores it shares them with the server, so the ratio understates what a second core gives.
echo "== SCALE huddle pinned to CPU 0: B1's ramp"
start_huddle 0
b1 huddle1core "${hud[@]}" --server-pid "$server_pid"
stop_pid "$server_pid"
server_pid=

# 1 -> 2 cores at one load: the server pinned to CPU 0, then to every CPU (per-thread CPU and,
# on every CPU, the profile). The generator is not pinned (the scheduler places it, as in every
# other run).
for cpus in 0 "$all_cpus"; do
  if [ "$cpus" = 0 ]; then n_cpus=1; else n_cpus=$ncpu; fi
  echo "== SCALE huddle on CPUs $cpus: $publishers x $scale_subscribers"
  start_huddle "$cpus"
  perf_pid=
  if [ "$n_cpus" != 1 ] && [ "$profile" = 1 ]; then
    # A flat CPU profile of the server through the run (joins included), by symbol.
    perf record -e cpu-clock -F 999 -p "$server_pid" -o "$out/huddle.perf" -q -- sleep 600 \
      >/dev/null 2>&1 &
    perf_pid=$!
  fi
  load_test "huddle-scale-${n_cpus}core" "${hud[@]}" --server-pid "$server_pid" --publishers "$publishers" \
    --subscribers "$scale_subscribers" --duration "$duration" --quiet || true
  if [ -n "$perf_pid" ]; then
    kill -INT "$perf_pid" 2>/dev/null || true
    wait "$perf_pid" 2>/dev/null || true
    perf report -i "$out/huddle.perf" --no-children --sort dso,sym --stdio --percent-limit 0.01 2>/dev/null |
      grep -v '^$' >"$out/huddle-profile.txt" || true
  fi
  stop_pid "$server_pid"
  server_pid=
done

echo "== summary"
if [ "${BENCH_PUBLISH:-0}" = 1 ]; then
  python3 scripts/bench_report.py --publish "$out"
else
  python3 scripts/bench_report.py "$out"
fi
