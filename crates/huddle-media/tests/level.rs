//! The sound-level meter on real speech: levels and voice activity follow speech and silence,
//! and noise as loud as the speech is not taken for a voice.

mod common;

use huddle_media::{AudioFrame, FRAME_SAMPLES, OpusConfig, OpusDecoder, OpusEncoder, SoundLevelMeter};
use rand::{Rng, SeedableRng};

/// What happens in a stretch of the test signal.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Part {
    Silence,
    Speech,
    Noise,
}

/// `frames` frames of seeded white noise at `dbfs` RMS (roughly).
fn noise(frames: usize, dbfs: f64, rng: &mut rand::rngs::StdRng) -> Vec<AudioFrame> {
    // Uniform noise in [-a, a] has RMS a / sqrt(3).
    let a = 10f64.powf(dbfs / 20.0) * 3f64.sqrt() * 32768.0;
    (0..frames)
        .map(|i| {
            let mut f = AudioFrame::silence((i * FRAME_SAMPLES) as u32);
            for s in f.samples.iter_mut() {
                *s = rng.gen_range(-a..a) as i16;
            }
            f
        })
        .collect()
}

/// Silence (a -70 dBFS noise floor, as a quiet room through a microphone), speech, silence,
/// speech, a fan as loud as speech, silence; each frame tagged with its part.
fn script() -> Vec<(Part, AudioFrame)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let speech = common::speech_frames();
    let mut out = Vec::new();
    let mut add = |part: Part, frames: Vec<AudioFrame>| out.extend(frames.into_iter().map(|f| (part, f)));
    add(Part::Silence, noise(50, -70.0, &mut rng));
    add(Part::Speech, speech.clone());
    add(Part::Silence, noise(75, -70.0, &mut rng));
    add(Part::Speech, speech);
    add(Part::Noise, noise(100, -25.0, &mut rng));
    add(Part::Silence, noise(50, -70.0, &mut rng));
    out
}

/// Runs the meter over `frames`, one report every 100 ms (ZEGO's default interval): each
/// report with the part all its frames belong to (`None` for a report across a change).
fn reports(frames: &[(Part, AudioFrame)]) -> Vec<(Option<Part>, f32, bool)> {
    let mut meter = SoundLevelMeter::new().unwrap();
    frames
        .chunks(5)
        .map(|chunk| {
            for (_, f) in chunk {
                meter.push_frame(&f.samples);
            }
            let part = chunk[0].0;
            let part = chunk.iter().all(|(p, _)| *p == part).then_some(part);
            let r = meter.take();
            (part, r.sound_level, r.vad)
        })
        .collect()
}

/// Checks a run of reports: speech is loud and voiced (most of the time: its first 100 ms
/// before the onset), silence is at 0–10 and, past the hangover, not voiced; noise is loud
/// but not voiced.
fn check(reports: &[(Option<Part>, f32, bool)]) {
    let trace: String = reports
        .iter()
        .map(|(p, l, v)| {
            let p = p.map_or("--".to_string(), |p| format!("{p:?}")[..2].to_string());
            format!("{p}{l:.0}{} ", if *v { "*" } else { "" })
        })
        .collect();
    println!("{trace}");
    let of = |part: Part| reports.iter().filter(move |r| r.0 == Some(part));
    // Speech: voiced in at least 85 % of its 100 ms reports, and loud (the sample peaks near
    // -10 dBFS; its quietest syllables are above -40 dBFS).
    let speech: Vec<_> = of(Part::Speech).collect();
    let voiced = speech.iter().filter(|r| r.2).count();
    assert!(
        voiced * 100 >= speech.len() * 85,
        "speech voiced in {voiced} of {} reports: {trace}",
        speech.len()
    );
    let mean_speech = speech.iter().map(|r| r.1).sum::<f32>() / speech.len() as f32;
    assert!(mean_speech > 55.0, "speech level {mean_speech}: {trace}");
    // Silence: quiet, and not voiced once the hangover (320 ms: 4 reports) has run out.
    let mut since_speech = usize::MAX / 2;
    for r in reports {
        since_speech = if r.0 != Some(Part::Silence) && r.0 != Some(Part::Noise) {
            0
        } else {
            since_speech + 1
        };
        if r.0 == Some(Part::Silence) {
            assert!(r.1 <= 10.0, "silence at level {}: {trace}", r.1);
            if since_speech > 4 {
                assert!(!r.2, "silence voiced: {trace}");
            }
        }
    }
    // A fan as loud as the speech: a high level, but no voice once the meter has heard it
    // for 800 ms (its onset is a 30 dB step, which looks like speech for the 480 ms of the
    // modulation window, then the 320 ms hangover runs out).
    let noise: Vec<_> = of(Part::Noise).collect();
    assert!(noise.len() >= 19);
    assert!(noise.iter().all(|r| r.1 > 45.0), "{trace}");
    assert!(noise.iter().skip(8).all(|r| !r.2), "noise voiced: {trace}");
}

#[test]
fn captured_speech_and_silence() {
    check(&reports(&script()));
}

/// The same on the receiving side: after Opus at 32 kbit/s (what a played stream's meter sees,
/// decoded before mixing).
#[test]
fn decoded_speech_and_silence() {
    let mut config = OpusConfig::default();
    config.bitrate = 32_000;
    let mut encoder = OpusEncoder::new(config).unwrap();
    let mut decoder = OpusDecoder::new().unwrap();
    let decoded: Vec<(Part, AudioFrame)> = script()
        .into_iter()
        .map(|(p, f)| {
            let packet = encoder.encode(&f).unwrap();
            (p, decoder.decode(&packet).unwrap())
        })
        .collect();
    check(&reports(&decoded));
}
