//! Signal measurements shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use huddle_media::{AudioFrame, AudioSource, Playback, WavSource};

/// The speech sample (16 kHz WAV), read through `WavSource` as 48 kHz frames.
pub fn speech_frames() -> Vec<AudioFrame> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/speech-16k.wav");
    let mut source = WavSource::open(path, Playback::Once).expect("speech sample");
    let mut frames = Vec::new();
    while let Some(frame) = source.read_frame().expect("read") {
        frames.push(frame);
    }
    frames
}

/// Concatenates frames into one signal in [-1, 1).
pub fn samples(frames: &[AudioFrame]) -> Vec<f64> {
    frames
        .iter()
        .flat_map(|f| f.samples.iter().map(|&s| f64::from(s) / 32768.0))
        .collect()
}

/// The lag in `lags` at which `delayed[n + lag]` best matches `reference[n]` (highest
/// normalised cross-correlation).
pub fn best_lag(reference: &[f64], delayed: &[f64], lags: std::ops::RangeInclusive<usize>) -> usize {
    lags.max_by(|&a, &b| {
        let ca = correlation(reference, &delayed[a.min(delayed.len())..]);
        let cb = correlation(reference, &delayed[b.min(delayed.len())..]);
        ca.total_cmp(&cb)
    })
    .expect("a lag")
}

/// Normalised cross-correlation of the overlapping parts of `a` and `b`.
pub fn correlation(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
    for i in 0..n {
        ab += a[i] * b[i];
        aa += a[i] * a[i];
        bb += b[i] * b[i];
    }
    if aa == 0.0 || bb == 0.0 {
        0.0
    } else {
        ab / (aa * bb).sqrt()
    }
}

/// Signal-to-noise ratio in dB of `signal` against `reference` over their overlap.
pub fn snr_db(reference: &[f64], signal: &[f64]) -> f64 {
    let n = reference.len().min(signal.len());
    let (mut s, mut e) = (0.0, 0.0);
    for i in 0..n {
        s += reference[i] * reference[i];
        let d = reference[i] - signal[i];
        e += d * d;
    }
    10.0 * (s / e.max(1e-20)).log10()
}

/// Frequency of a clean tone from its zero crossings (interpolated between samples).
pub fn tone_frequency(signal: &[f64], rate: f64) -> f64 {
    let mut crossings = Vec::new();
    for i in 1..signal.len() {
        let (a, b) = (signal[i - 1], signal[i]);
        if a < 0.0 && b >= 0.0 {
            crossings.push((i - 1) as f64 + a / (a - b));
        }
    }
    assert!(crossings.len() > 2, "not a tone");
    let span = crossings[crossings.len() - 1] - crossings[0];
    (crossings.len() - 1) as f64 * rate / span
}

/// RMS of a signal.
pub fn rms(signal: &[f64]) -> f64 {
    (signal.iter().map(|s| s * s).sum::<f64>() / signal.len().max(1) as f64).sqrt()
}
