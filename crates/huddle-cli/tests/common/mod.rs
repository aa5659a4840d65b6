//! What the CLI's process tests share: the configured app and reading recorded tones.
// Each test file uses part of it.
#![allow(dead_code)]

use std::path::Path;

/// The app of the tests' config files.
pub const APP_ID: &str = "424242";
pub const APP_SIGN: &str = "8f3a1c2b4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";
pub const SECRET: &str = "0123456789abcdef0123456789abcdef";

/// The samples of a 16-bit mono WAV file (the `data` chunk).
pub fn wav_samples(path: &Path) -> Vec<i16> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let at = bytes.windows(4).position(|w| w == b"data").expect("a data chunk") + 8;
    bytes[at..]
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

/// Power of `hz` (48 kHz samples) relative to the signal's power, in dB (Goertzel).
pub fn tone_db(x: &[i16], hz: f64) -> f64 {
    let coeff = 2.0 * (2.0 * std::f64::consts::PI * hz / 48_000.0).cos();
    let (mut s1, mut s2, mut energy) = (0.0f64, 0.0f64, 1e-9);
    for &v in x {
        let v = f64::from(v) / 32768.0;
        energy += v * v;
        let s = v + coeff * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    10.0 * ((s1 * s1 + s2 * s2 - coeff * s1 * s2) / (energy * x.len() as f64 / 2.0)).log10()
}
