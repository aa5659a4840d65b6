#!/usr/bin/env python3
"""Is every part of the sent speech in the recording, in place? For the browser interop tests.

usage: speech_windows.py REFERENCE.wav RECORDING.wav LAG_MS [SEARCH_MS]

LAG_MS is where audio_score.py (crates/huddle/tests) found the reference in the recording. Like
its `min_window_corr`, each 200 ms window of the reference that holds speech is looked for in the
recording within +-SEARCH_MS (default 30) of that place: a missing, replaced or garbled stretch
shows as a low correlation, and so does every window after a delay step of the receiver larger
than the search (a jitter buffer that moves its delay by whole 20 ms frames in the middle of the
call shifts the rest of the speech). Prints one JSON object:
- `min_window_corr`: the lowest best normalised correlation over the speech windows;
- `windows`: how many windows were compared;
- `corr`: each window's best correlation, in order;
- `low_windows`: how many of them are below 0.7;
- `shift_ms`: the best shift of each window (a delay step shows as a change).
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
    search_ms = float(sys.argv[4]) if len(sys.argv) > 4 else 30.0
    shift = int(RATE * search_ms / 1000)
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
                "corr": [round(c, 3) for c in corrs],
                "low_windows": sum(1 for c in corrs if c < 0.7),
                "shift_ms": shifts,
            }
        )
    )


if __name__ == "__main__":
    main()
