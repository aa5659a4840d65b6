#!/usr/bin/env bash
# The audio loss curve of docs/quality.md: wideband PESQ and STOI of the speech sample through
# a real server at 0-70 % random and bursty loss with 100 ms RTT, with RED (the default) and
# without (Opus FEC and concealment only), several seeded runs per point.
#
#   scripts/quality.sh            # all points, seeds 1,2,3 (about 15 minutes on 2 cores)
#   SEEDS=1 LOSSES=0,30,60 scripts/quality.sh
#   scripts/quality.sh clean      # the clean-call ceiling and delay steps, before/after (~5 min)
#   scripts/quality.sh interop    # interop pairs (SDK, Chromium, aiortc) in namespaces under loss (root)
#
# Writes target/quality/{red,nored}.jsonl (one JSON object per call), then
# docs/quality.csv and docs/quality.svg (scripts/quality_plot.py), and prints the table.
# Then the latency benchmark (crates/huddle/benches/latency.rs) into target/quality/latency.jsonl.
# Run it on an otherwise idle machine: a stalled process costs audio that the network did not.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -c "import numpy, scipy" 2>/dev/null || python3 -m pip install -q numpy scipy
python3 -c "import pesq" 2>/dev/null || python3 -m pip install -q pesq
python3 -c "import pystoi" 2>/dev/null || python3 -m pip install -q pystoi

out=target/quality
mkdir -p "$out"
export HUDDLE_QUALITY_SEEDS="${SEEDS:-1,2,3}"
export HUDDLE_QUALITY_LOSSES="${LOSSES:-0,10,20,30,40,50,60,70}"
export HUDDLE_QUALITY_MODELS="${MODELS:-random,bursty}"

# `scripts/quality.sh netem`: the end-to-end calls on virtual time (crates/huddle/src/media/
# netem.rs; docs/quality.md "End to end on virtual time"): the loss curve on both legs from the
# start, setup through the whole stack (before/after), the outage, the quality events (the
# publisher's, before/after), FEC for a player without RED (before/after). Seeded: the same figures
# on every run, on a busy machine too (about 4 minutes in a debug build).
# `COMPARE=1 scripts/quality.sh netem` runs the scored calls again with the player's old wait for
# RED (HUDDLE_AUDIO_RED_WAIT=seen) into netem-seen.txt, the same seeds (its floors then fail).
# Measurement knobs of the scored calls: HUDDLE_NETEM_SEEDS=20 runs each point over seeds 1-20
# (the floors are set for the tests' own counts), HUDDLE_NETEM_DTLS_ACTIVE=0 with the server as
# DTLS server (the default is its DTLS client; docs/quality.md "Setup under loss").
# `scripts/quality.sh interop`: real processes in network namespaces (web/tests/impaired.js,
# scripts/quality_interop.mjs; docs/quality.md "Interop under loss"): `huddle serve`, a publisher
# and a player each in its own namespace, every packet of both legs (signaling included) through
# scripts/impair_router.py from the first packet: LOSSES per link, 50 ms each way; every pair of
# SDK (`huddle call`, release build), Chromium and aiortc; RUNS calls a point (netem's loss is
# random: repeated runs, not seeds). Scored from the play request, setup included. Needs root.
# Writes target/quality/interop.jsonl (+ the recordings in target/quality/interop/) and prints
# the table. About 20 s a call: 7 pairs x 4 points x 3 runs is 30-40 minutes.
if [ "${1:-}" = interop ]; then
  cargo build -q --release -p huddle-cli
  [ -d web/tests/node_modules/playwright-core ] || (cd web/tests && npm ci --silent)
  python3 -c "import aiortc" 2>/dev/null || python3 -m pip install -q aiortc
  HUDDLE_BIN="$PWD/target/release/huddle" node scripts/quality_interop.mjs "$out/interop.jsonl"
  python3 scripts/quality_interop_table.py "$out/interop.jsonl"
  exit 0
fi
if [ "${1:-}" = netem ]; then
  cargo test -q -p huddle --lib netem -- --nocapture --test-threads 1 2>&1 |
    grep -E '^(CURVE|STEPS|SETUP|OUTAGE|EVENTS|JITTER|SHORT|LOSS|NORED) ' | tee "$out/netem.txt"
  if [ "${COMPARE:-}" = 1 ]; then
    HUDDLE_AUDIO_RED_WAIT=seen cargo test -q -p huddle --lib netem -- --nocapture --test-threads 1 \
      --skip setup_through --skip outage --skip quality_events --skip seeded 2>&1 |
      grep -E '^(CURVE|STEPS|JITTER|SHORT|LOSS) ' | tee "$out/netem-seen.txt"
  fi
  exit 0
fi
cargo bench -p huddle --bench loss_curve --no-run

# `scripts/quality.sh clean`: the clean-call checks instead of the loss curve, before and after
# side by side in one run. First two `huddle call` processes through a `huddle serve` on
# loopback (publisher -> server -> player, a recording scored; the issue's measurement), then the
# SDK through the real server behind the `huddle-netsim` proxies: a clean call, one packet in
# 100 20 ms late, ±20 ms of jitter (0-40 ms uniform). "legacy" is the encoder's old settings
# (32 kbit/s, a 10 % FEC loss hint, held) with whole-frame delay steps (HUDDLE_AUDIO_STRETCH=0);
# "current" the defaults. Last, Opus alone on the same padded speech at 48 kbit/s: the ceiling.
# `scripts/quality.sh outage`: the outage runs with their timings (RECOVERY and QUALITY lines:
# Die after the outage starts, levels and audio back after it ends; docs/quality.md).
if [ "${1:-}" = outage ]; then
  cargo test -q -p huddle --test outage -- --nocapture 2>&1 | grep -E '^(RECOVERY|QUALITY) ' | tee "$out/outage.txt"
  exit 0
fi
if [ "${1:-}" = clean ]; then
  cargo build -q --release -p huddle-cli
  work=$(mktemp -d)
  python3 - "$work/sent.wav" <<'PY'
import sys
import numpy as np
from scipy.io import wavfile
rate, x = wavfile.read("crates/huddle-media/tests/data/speech-16k.wav")
pad = lambda s: np.zeros(int(rate * s), dtype=x.dtype)
wavfile.write(sys.argv[1], rate, np.concatenate([pad(2.0), x, pad(0.5)]))
PY
  target/release/huddle serve --listen 127.0.0.1:0 --udp-port 0 --tcp-port 0 --data-dir "$work/data" \
    > "$work/serve.log" 2>/dev/null &
  server=$!
  for _ in $(seq 100); do grep -q "app_sign:" "$work/serve.log" && break; sleep 0.1; done
  addr=$(sed -n 's/^huddle server listening on //p' "$work/serve.log" | head -1)
  app_id=$(awk '/app_id:/ {print $2; exit}' "$work/serve.log")
  app_sign=$(awk '/app_sign:/ {print $2; exit}' "$work/serve.log")
  rm -f "$out/clean-cli.jsonl"
  for run in $(echo "${SEEDS:-1,2}" | tr , ' '); do
    for variant in legacy current; do
      if [ $variant = legacy ]; then flags="--audio-bitrate 32000 --audio-loss-hint 10 --audio-fixed"; s=0; else flags=""; s=1; fi
      common=(--server "ws://$addr" --app-id "$app_id" --app-sign "$app_sign" --room "q-$variant-$run")
      HUDDLE_AUDIO_STRETCH=$s target/release/huddle call "${common[@]}" --user bob --play "v-$variant-$run" \
        --record "$work/heard-$variant.wav" --duration 9 > /dev/null &
      player=$!
      sleep 0.5
      # shellcheck disable=SC2086
      target/release/huddle call "${common[@]}" --user alice --publish "v-$variant-$run" \
        --source "$work/sent.wav" --duration 7.5 $flags > /dev/null
      wait $player
      score=$(python3 crates/huddle/tests/audio_score.py crates/huddle-media/tests/data/speech-16k.wav "$work/heard-$variant.wav")
      echo "{\"variant\": \"$variant\", \"run\": $run, \"score\": $score}" | tee -a "$out/clean-cli.jsonl"
    done
  done
  kill $server; wait $server 2>/dev/null || true
  rm -rf "$work"

  for variant in legacy current; do
    rm -f "$out/clean-$variant.jsonl"
    HUDDLE_QUALITY_AUDIO=$variant HUDDLE_AUDIO_STRETCH=$([ $variant = legacy ] && echo 0 || echo 1) \
      HUDDLE_QUALITY_MODELS=clean,late,jitter HUDDLE_QUALITY_LOSSES=0 HUDDLE_QUALITY_SEEDS="${SEEDS:-1,2}" \
      HUDDLE_QUALITY_OUT="$PWD/$out/clean-$variant.jsonl" cargo bench -q -p huddle --bench loss_curve
  done
  cargo run -q -p huddle-media --example opus_alone
  echo "== Opus alone, 48 kbit/s: $(python3 crates/huddle/tests/audio_score.py \
    crates/huddle-media/tests/data/speech-16k.wav "$out/opus-alone-48k.wav")"
  python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
print("== huddle call -> huddle serve -> huddle call (PESQ / STOI)")
for l in open(f"{out}/clean-cli.jsonl"):
    r = json.loads(l)
    print(f"  {r['variant']:8} run {r['run']}: {r['score']['pesq']:.2f} / {r['score']['stoi']:.3f}")
print("== SDK through the server and the netsim proxies (PESQ / STOI)")
for variant in ("legacy", "current"):
    for l in open(f"{out}/clean-{variant}.jsonl"):
        r = json.loads(l)
        print(f"  {variant:8} {r['model']:7} seed {r['seed']}: {r['pesq']:.2f} / {r['stoi']:.3f}")
PY
  exit 0
fi
# One pass per configuration: NAME and the value of HUDDLE_AUDIO_RED (empty: the default).
curve() {
  local name=$1 red=$2
  rm -f "$out/$name.jsonl"
  echo "== loss curve $name (HUDDLE_AUDIO_RED=${red:-default}) -> $out/$name.jsonl"
  if [ -z "$red" ]; then
    env -u HUDDLE_AUDIO_RED HUDDLE_QUALITY_OUT="$PWD/$out/$name.jsonl" \
      cargo bench -q -p huddle --bench loss_curve
  else
    HUDDLE_AUDIO_RED=$red HUDDLE_QUALITY_OUT="$PWD/$out/$name.jsonl" \
      cargo bench -q -p huddle --bench loss_curve
  fi
}
curve red ""
curve nored 0
python3 scripts/quality_plot.py "$out/red.jsonl" "$out/nored.jsonl" docs/quality.csv docs/quality.svg

# Latency against DESIGN.md's targets (login -> first audio frame <= 50 ms, mouth to ear <= 60 ms),
# a benchmark: the tests check that the audio gets through, this says how fast.
echo "== latency -> $out/latency.jsonl"
rm -f "$out/latency.jsonl"
HUDDLE_LATENCY_OUT="$PWD/$out/latency.jsonl" cargo bench -q -p huddle --bench latency
