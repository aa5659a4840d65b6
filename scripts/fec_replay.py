#!/usr/bin/env python3
"""Where a Firefox -> SDK call's score goes: its frames decoded offline three ways.

usage: fec_replay.py INTEROP.jsonl LOGDIR OUTDIR SENT.wav

For each Firefox -> SDK call of a `scripts/quality.sh interop` run made with HUDDLE_FIREFOX_FEC=1
(Firefox's sender keeps every encoded frame) and HUDDLE_IMPAIRED_LOGDIR=LOGDIR
RUST_LOG=...,huddle::media::play=trace (the SDK player logs every frame it was handed): matches
the two by RTP timestamp (the SFU's offset found from payloads sent once), writes OUTDIR/TAG.frames
(what Firefox sent in the player's span, received or lost), decodes it with
`target/release/examples/fec_replay` perfect / concealment only / FEC as the player does, and
scores each and the player's own recording against SENT.wav (crates/huddle/tests/audio_score.py);
replays the player's arrivals (OUTDIR/TAG.arrivals) through `AudioPlayer` on virtual time
(`fec_replay --player`) and scores that too.
Also prints Firefox's timestamp steps, the player's arrival delay (arrival - timestamp, from the
lowest) and the lost speech frames (frame, bytes, next received, next carries LBRR).
Build the decoder first: cargo build --release -p huddle-media --example fec_replay.
"""

import collections
import json
import re
import subprocess
import sys

ANSI = re.compile(r"\x1b\[[0-9;]*m")
TRACE = re.compile(
    r"audio packet seq=(\d+) ts=(\d+) len=\d+ at=Instant \{ tv_sec: (\d+), tv_nsec: (\d+) \} payload=([0-9a-f]+)"
)


def lbrr(h):
    d = bytes.fromhex(h)
    return len(d) > 1 and (d[0] >> 3) < 16 and bool(d[1] & 0x40)


def score(sent, wav):
    out = subprocess.run(
        [sys.executable, "crates/huddle/tests/audio_score.py", sent, wav], capture_output=True, text=True, check=True
    )
    s = json.loads(out.stdout)
    return f"{s['pesq']:.2f}/{s['stoi']:.2f}"


def main():
    jsonl, logdir, outdir, sent_wav = sys.argv[1:5]
    for line in open(jsonl):
        r = json.loads(line)
        if r.get("from") != "firefox" or r.get("to") != "sdk":
            continue
        tag = f"{r['from']}-{r['to']}-{r['loss_pct']}-{r['run']}"
        fec = [x for x in r.get("pubStats", []) if "fec" in x]
        if not fec:
            continue
        sent = [tuple(f) for blk in fec[0]["fec"] for f in blk.get("frames", [])]
        rx = {}
        with open(f"{outdir}/{tag}.arrivals", "w") as arrivals:
            for l in ANSI.sub("", open(f"{logdir}/{tag}-sdk-play.stderr.log").read()).splitlines():
                m = TRACE.search(l)
                if m:
                    rx.setdefault(int(m[2]), (int(m[3]) + int(m[4]) / 1e9, m[5]))
                    arrivals.write(f"{m[1]} {m[2]} {m[3]}.{int(m[4]):09d} {m[5]}\n")
        once = collections.Counter(h for _, h in sent)
        by_payload = {h: ts for ts, h in sent if once[h] == 1}
        offset = collections.Counter((ts - by_payload[h]) % 2**32 for ts, (_, h) in rx.items() if h in by_payload)
        off = offset.most_common(1)[0][0]
        got = {(ts - off) % 2**32: v for ts, v in rx.items()}
        first, last = min(got), max(got)
        span = [(ts, h) for ts, h in sent if first <= ts <= last]
        with open(f"{outdir}/{tag}.frames", "w") as f:
            for ts, h in span:
                f.write(("R " if ts in got else "L ") + h + "\n")
        steps = collections.Counter((b[0] - a[0]) % 2**32 for a, b in zip(sent, sent[1:]))
        delay = [at - ts / 48000 for ts, (at, _) in sorted(got.items())]
        low = min(delay)
        lost = [
            (i, len(h) // 2, i + 1 < len(span) and span[i + 1][0] in got, i + 1 < len(span) and lbrr(span[i + 1][1]))
            for i, (ts, h) in enumerate(span)
            if ts not in got and len(h) > 20
        ]
        counts = subprocess.run(
            ["target/release/examples/fec_replay", f"{outdir}/{tag}.frames", f"{outdir}/{tag}"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        player = subprocess.run(
            ["target/release/examples/fec_replay", "--player", f"{outdir}/{tag}.arrivals", f"{outdir}/{tag}"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        print(f"{tag}: {counts}; Firefox timestamp steps {dict(steps)}; first LBRR at frame "
              f"{next((i for i, (_, h) in enumerate(span) if lbrr(h)), None)}")
        print(f"  arrival delay every 10th frame, ms: {[round(1000 * (d - low)) for d in delay[::10]]}")
        print(f"  lost speech frames (frame, bytes, next received, next has LBRR): {lost}")
        print(f"  PESQ/STOI perfect {score(sent_wav, f'{outdir}/{tag}-perfect.wav')}, concealment "
              f"{score(sent_wav, f'{outdir}/{tag}-conceal.wav')}, FEC {score(sent_wav, f'{outdir}/{tag}-fec.wav')}, "
              f"the player's recording {score(sent_wav, f'target/quality/interop/{tag}.wav')}, "
              f"the arrivals replayed through AudioPlayer on virtual time {score(sent_wav, f'{outdir}/{tag}-player.wav')}")
        print(f"  replayed player: {player}")


if __name__ == "__main__":
    main()
