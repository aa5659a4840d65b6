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

# `scripts/quality.sh clean`: the clean-call checks instead of the loss curve, before and after
# side by side in one run: a clean loopback call, one packet in 100 20 ms late, ±20 ms of
# jitter, each with the encoder's old settings and whole-frame delay steps (legacy:
# HUDDLE_QUALITY_AUDIO=legacy HUDDLE_AUDIO_STRETCH=0) and with the current ones; then Opus
# alone on the same speech at 48 kbit/s for the codec's ceiling.
if [ "${1:-}" = clean ]; then
  rm -f "$out/clean.jsonl"
  for variant in legacy current; do
    if [ $variant = legacy ]; then a=legacy; s=0; else a=current; s=1; fi
    HUDDLE_QUALITY_AUDIO=$a HUDDLE_AUDIO_STRETCH=$s HUDDLE_QUALITY_MODELS=clean,late,jitter \
      HUDDLE_QUALITY_LOSSES=0 HUDDLE_QUALITY_SEEDS="${SEEDS:-1,2}" HUDDLE_QUALITY_OUT="$PWD/$out/clean-$variant.jsonl" \
      cargo bench -q -p huddle --bench loss_curve
  done
  cargo test -q -p huddle-media --test opus -- --ignored opus_alone_writes --nocapture
  python3 crates/huddle/tests/audio_score.py crates/huddle-media/tests/data/speech-16k.wav target/quality/opus-alone-48k.wav
  for variant in legacy current; do
    echo "== $variant"
    python3 -c "import json,sys
for l in open(sys.argv[1]):
    r=json.loads(l); print(r['model'], 'seed', r['seed'], 'PESQ %.2f STOI %.3f' % (r['pesq'], r['stoi']))" "$out/clean-$variant.jsonl"
  done
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
