//! The sound-level meter's cost per 20 ms frame (level, 3:1 decimation, the speech model), on
//! the speech sample looped: what the SDK spends per stream and frame while the monitor runs.
//!
//! ```sh
//! cargo bench -p huddle-media --bench sound_level
//! ```
//!
//! Prints the median over 7 rounds of the CPU time per frame, and the spread.

use std::time::Instant;

use huddle_media::{AudioSource, Playback, SoundLevelMeter, WavSource};

fn main() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/speech-16k.wav");
    let mut src = WavSource::open(path, Playback::Once).expect("the speech sample");
    let mut frames = Vec::new();
    while let Some(f) = src.read_frame().expect("read") {
        frames.push(f);
    }
    let mut meter = SoundLevelMeter::new().expect("meter");
    let per_round = 2_000;
    let mut rounds: Vec<f64> = (0..7)
        .map(|_| {
            let t0 = Instant::now();
            let mut voiced = 0usize;
            for i in 0..per_round {
                meter.push_frame(&frames[i % frames.len()].samples);
                voiced += usize::from(meter.vad());
            }
            std::hint::black_box(voiced);
            t0.elapsed().as_secs_f64() * 1e6 / per_round as f64
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    println!(
        "sound-level meter: {:.1} µs per 20 ms frame (median of 7 rounds of {per_round}; {:.1}–{:.1})",
        rounds[3], rounds[0], rounds[6]
    );
}
