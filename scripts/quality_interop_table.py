#!/usr/bin/env python3
"""The tables of docs/quality.md "Interop under loss" from scripts/quality_interop.mjs's JSON lines.

usage: quality_interop_table.py target/quality/interop.jsonl

Per pair (publisher -> player) and loss per link: wideband PESQ median (lowest) and STOI median
over the runs, then the setup: publish request -> publishing and play request -> first audio
frame, median (slowest). A call with no recording or no score counts as failed (PESQ 1.0 in the
median: silence).
"""

import json
import statistics
import sys
from collections import defaultdict

NAMES = {"sdk": "SDK", "chromium": "Chromium", "firefox": "Firefox", "aiortc": "aiortc"}


def main():
    calls = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    losses = sorted({c["loss_pct"] for c in calls})
    pairs = []
    for c in calls:
        if (c["from"], c["to"]) not in pairs:
            pairs.append((c["from"], c["to"]))
    by = defaultdict(list)
    for c in calls:
        by[(c["from"], c["to"], c["loss_pct"])].append(c)

    def pesq(c):
        s = c.get("score") or {}
        return s.get("pesq") if isinstance(s.get("pesq"), float) else 1.0

    def cell_score(cs):
        p = [pesq(c) for c in cs]
        st = [(c.get("score") or {}).get("stoi") or 0.0 for c in cs]
        failed = sum(1 for c in cs if not isinstance((c.get("score") or {}).get("pesq"), float))
        f = f", {failed} failed" if failed else ""
        return f"{statistics.median(p):.2f} ({min(p):.2f}) / {statistics.median(st):.2f}{f}"

    def ms(v):
        v = [x for x in v]
        got = [x for x in v if x is not None]
        if not got:
            return "never"
        never = len(v) - len(got)
        return f"{statistics.median(got) / 1000:.1f} ({max(got) / 1000:.1f})" + (f", {never}× never" if never else "")

    runs = max(c["run"] for c in calls)
    head = " | ".join(f"{l} % per link" for l in losses)
    print(f"PESQ median (lowest) / STOI median, {runs} run(s) a point\n")
    print(f"| publisher → player | {head} |")
    print("| --- |" + " --- |" * len(losses))
    for f, t in pairs:
        row = " | ".join(cell_score(by[(f, t, l)]) if by[(f, t, l)] else "" for l in losses)
        print(f"| {NAMES[f]} → {NAMES[t]} | {row} |")
    print("\nSetup, s: publish request → publishing; play request → first audio frame; median (slowest)\n")
    print(f"| publisher → player | {head} |")
    print("| --- |" + " --- |" * len(losses))
    for f, t in pairs:
        cells = []
        for l in losses:
            cs = by[(f, t, l)]
            cells.append(f"{ms([c.get('publishMs') for c in cs])}; {ms([c.get('firstAudioMs') for c in cs])}" if cs else "")
        print(f"| {NAMES[f]} → {NAMES[t]} | {' | '.join(cells)} |")
    loads = [c.get("load_before") for c in calls if c.get("load_before") is not None]
    if loads:
        print(f"\nload average (1 min) before each call: {min(loads):.1f}–{max(loads):.1f}, median {statistics.median(loads):.1f}")
    applied = defaultdict(lambda: [0, 0])
    for c in calls:
        for k, v in (c.get("router") or {}).items():
            applied[(c["loss_pct"], k.split(".")[1])][0] += v["packets"]
            applied[(c["loss_pct"], k.split(".")[1])][1] += v["dropped"]
    print("applied loss per link (router's counts): " + ", ".join(
        f"{l} %: up {100 * applied[(l, 'up')][1] / max(1, applied[(l, 'up')][0]):.1f} / down {100 * applied[(l, 'down')][1] / max(1, applied[(l, 'down')][0]):.1f}"
        for l in losses))


if __name__ == "__main__":
    main()
