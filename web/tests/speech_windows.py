#!/usr/bin/env python3
"""Is every part of the sent speech in the recording? For the browser interop tests.

usage: speech_windows.py REFERENCE.wav RECORDING.wav LAG_MS

LAG_MS is where audio_score.py (crates/huddle/tests) found the reference in the recording. Like
its `min_window_corr`, each 200 ms window of the reference that holds speech is looked for in the
recording, but within +-120 ms of that place instead of +-30 ms: a receiver whose jitter buffer
steps its delay by whole 20 ms frames (expand to grow, drop to shrink) during the call shifts the
rest of the speech by a few frames, which is not a missing part. A missing, replaced or garbled
stretch still shows as a low correlation. Prints one JSON object:
- `min_window_corr`: the lowest best normalised correlation over the speech windows;
- `windows`: how many windows were compared;
- `shift_ms`: the best shift of each window (the delay steps the receiver took).
"""

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../../crates/huddle/tests"))
from audio_score import RATE, read  # noqa: E402


def main():
    ref = read(sys.argv[1])
    rec = read(sys.argv[2])
    lag = int(round(float(sys.argv[3]) * RATE / 1000))
    win = RATE // 5
    shift = RATE * 120 // 1000
    peak = np.sqrt(np.mean(ref**2))
    corrs = []
    shifts = []
    for start in range(0, len(ref) - win + 1, win):
        r = ref[start : start + win]
        if np.sqrt(np.mean(r**2)) < 0.1 * peak:
            continue  # (nearly) silent in the reference
        lo = max(0, lag + start - shift)
        hi = min(len(rec), lag + start + win + shift)
        seg = rec[lo:hi]
        if len(seg) < win:
            corrs.append(-1.0)
            shifts.append(None)
            continue
        dots = np.correlate(seg, r, mode="valid")
        energy = np.convolve(seg**2, np.ones(win), mode="valid")
        c = dots / (np.linalg.norm(r) * np.sqrt(np.maximum(energy, 1e-20)))
        k = int(np.argmax(c))
        corrs.append(float(c[k]))
        shifts.append(round((lo + k - (lag + start)) * 1000.0 / RATE, 1))
    print(
        json.dumps(
            {
                "min_window_corr": min(corrs) if corrs else -1.0,
                "windows": len(corrs),
                "shift_ms": shifts,
            }
        )
    )


if __name__ == "__main__":
    main()
