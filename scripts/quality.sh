#!/usr/bin/env bash
# The audio loss curve of docs/quality.md: wideband PESQ and STOI of the speech sample through
# a real server at 0-70 % random and bursty loss with 100 ms RTT, with RED (the default) and
# without (Opus FEC and concealment only), several seeded runs per point.
#
#   scripts/quality.sh            # all points, seeds 1,2,3 (about 15 minutes on 2 cores)
#   SEEDS=1 LOSSES=0,30,60 scripts/quality.sh
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

cargo bench -p huddle --bench loss_curve --no-run
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
