#!/usr/bin/env python3
"""Scores a received recording against the sent speech, for the SDK's media tests.

usage: audio_score.py REFERENCE.wav RECORDING.wav

Both files are read as mono and brought to 16 kHz. The recording is aligned to the reference by
cross-correlation (the lag of the correlation peak), then scored:
- `pesq`: wideband PESQ (ITU-T P.862.2, PyPI `pesq`) of the aligned recording;
- `min_window_corr`: the lowest normalised correlation between reference and recording over the
  200 ms windows where the reference has speech (a missing or garbled part shows as a low value),
  each window allowed +-30 ms of residual shift (an adaptive jitter buffer may step its delay by a
  frame during the call);
- `min_window_corr_tracked` and `drift_ms`: the same windows, each searched within +-30 ms of
  where the previous one was found, so that a delay that moves gradually during speech (a jitter
  buffer that stretches its audio) is followed: the lowest correlation, and how far the delay
  moved from the start to the end of the speech;
- `lag_ms`: where the reference starts in the recording;
- `stoi`: short-time objective intelligibility (PyPI `pystoi`) of the aligned recording, 0 to 1
  (`null` when pystoi is not installed; the loss tests in `tests/quality.rs` need it).
Prints one JSON object.
"""

import json
import sys

import numpy as np
from pesq import pesq
from scipy.io import wavfile
from scipy.signal import correlate, resample_poly

RATE = 16000


def read(path):
    rate, x = wavfile.read(path)
    x = x.astype(np.float64)
    if x.ndim > 1:
        x = x.mean(axis=1)
    x /= 32768.0
    if rate != RATE:
        g = np.gcd(rate, RATE)
        x = resample_poly(x, RATE // g, rate // g)
    return x


def main():
    ref = read(sys.argv[1])
    rec = read(sys.argv[2])
    corr = correlate(rec, ref, mode="valid" if len(rec) >= len(ref) else "full", method="fft")
    lag = int(np.argmax(corr))
    if len(rec) < len(ref):
        lag -= len(ref) - 1
    aligned = np.zeros_like(ref)
    lo = max(lag, 0)
    seg = rec[lo : lag + len(ref)]
    aligned[lo - lag : lo - lag + len(seg)] = seg

    score = float(pesq(RATE, ref, aligned, "wb"))
    try:
        from pystoi import stoi

        intelligibility = float(stoi(ref, aligned, RATE, extended=False))
    except ImportError:
        intelligibility = None

    win = RATE // 5
    shift = RATE * 30 // 1000
    peak = np.sqrt(np.mean(ref**2))
    def best_near(r, at):
        """The best correlation of `r` within +-30 ms of `at` in the recording, and where."""
        best, where = -1.0, at
        for d in range(-shift, shift + 1, 2):
            a0 = at + d
            if a0 < 0 or a0 + win > len(rec):
                continue
            a = rec[a0 : a0 + win]
            den = np.linalg.norm(r) * np.linalg.norm(a)
            if den > 0 and float(np.dot(r, a) / den) > best:
                best, where = float(np.dot(r, a) / den), a0
        return best, where

    corrs, tracked = [], []
    offset = 0  # the delay's move so far (samples), followed window by window
    for start in range(0, len(ref) - win + 1, win):
        r = ref[start : start + win]
        if np.sqrt(np.mean(r**2)) < 0.1 * peak:
            continue  # (nearly) silent in the reference: nothing to compare
        corrs.append(best_near(r, lag + start)[0])
        best, where = best_near(r, lag + start + offset)
        tracked.append(best)
        offset = where - lag - start
    print(
        json.dumps(
            {
                "pesq": score,
                "stoi": intelligibility,
                "lag_ms": lag * 1000.0 / RATE,
                "min_window_corr": min(corrs) if corrs else -1.0,
                "min_window_corr_tracked": min(tracked) if tracked else -1.0,
                "drift_ms": offset * 1000.0 / RATE,
                "windows": len(corrs),
            }
        )
    )


if __name__ == "__main__":
    main()
