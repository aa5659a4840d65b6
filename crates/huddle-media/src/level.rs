//! Sound levels and voice activity of a 48 kHz mono signal, per 20 ms frame: what the SDK's
//! sound-level monitor reports (ZEGO Express's `soundLevel` 0–100 and `vad`).
//!
//! # The scale
//! The level of a 10 ms block is its RMS in dBFS (0 dBFS: a full-scale square wave; a
//! full-scale sine is -3 dBFS), mapped linearly from [-60, 0] dBFS to [0, 100] and clamped:
//! `level = clamp((dBFS + 60) × 100 / 60, 0, 100)`. So -60 dBFS and below is 0, conversational
//! speech at a good microphone (-30 to -15 dBFS RMS) is 50–75, and every 6 dB is 10 points. It is
//! the scale `huddle.js`'s `SoundLevelMeter` uses, so both SDKs show the same number for the same
//! signal. A report ([`SoundLevelMeter::take`]) gives the loudest 10 ms block since the previous
//! report: a meter that shows it moves with the syllables, as ZEGO's does.
//!
//! # Voice activity
//! Energy alone calls a slammed door or a fan "speech". The decision here has three parts:
//! - a speech model: [`earshot`]'s small neural detector scores each 16 ms of the signal
//!   (decimated to 16 kHz, where it works) from 0 (no voice) to 1;
//! - a floor: a 16 ms window below -55 dBFS (level 8) is never speech, whatever the model says;
//! - modulation: speech rises and falls with its syllables, steady noise does not. The model
//!   alone takes loud white noise for a voice; a window counts only while the last 480 ms
//!   span at least 9 dB between their loudest and quietest 16 ms;
//! - time: speech starts after two voiced 16 ms windows in a row (32 ms: one click is not
//!   speech) and ends after [`VAD_HANGOVER`] without any (the pauses between words and the
//!   quiet ends of words stay speech, so the decision follows utterances, not syllables).

use earshot::Detector;
use rubato::{FftFixedIn, Resampler};

use crate::{FRAME_SAMPLES, MediaError, Result, SAMPLE_RATE};

/// The dBFS that maps to level 0.
pub const LEVEL_FLOOR_DBFS: f32 = -60.0;
/// How long voice activity lasts after the last voiced 16 ms window.
pub const VAD_HANGOVER: std::time::Duration = std::time::Duration::from_millis(320);
/// The detector's rate and window (earshot: 256 samples at 16 kHz).
const VAD_RATE: usize = 16_000;
const VAD_WINDOW: usize = 256;
const VAD_WINDOW_MS: u32 = 16;
/// A window scoring this much is voiced (earshot's documented default).
const VAD_THRESHOLD: f32 = 0.5;
/// Quieter than this is never speech (level 8.3).
const VAD_FLOOR_DBFS: f32 = -55.0;
/// Speech rises and falls with its syllables: over [`MODULATION_WINDOWS`] detector windows
/// (480 ms), its loudest and quietest 16 ms differ by at least this much. A fan, a hum or
/// a tone does not (white noise in 16 ms windows varies by about 2 dB).
const MODULATION_DB: f32 = 9.0;
const MODULATION_WINDOWS: usize = 30;
/// Voiced windows in a row that start speech.
const VAD_ONSET: u32 = 2;
/// 10 ms blocks: the level's resolution.
const BLOCK: usize = SAMPLE_RATE as usize / 100;

/// The level (0–100) of a signal at `dbfs` RMS: see the module docs.
///
/// ```
/// use huddle_media::level_from_dbfs;
/// assert_eq!(level_from_dbfs(-60.0), 0.0);
/// assert_eq!(level_from_dbfs(-30.0), 50.0);
/// assert_eq!(level_from_dbfs(0.0), 100.0);
/// assert_eq!(level_from_dbfs(f32::NEG_INFINITY), 0.0);
/// ```
pub fn level_from_dbfs(dbfs: f32) -> f32 {
    if dbfs.is_nan() {
        return 0.0;
    }
    ((dbfs - LEVEL_FLOOR_DBFS) * 100.0 / -LEVEL_FLOOR_DBFS).clamp(0.0, 100.0)
}

/// The RMS of `samples` in dBFS (`-inf` for digital silence).
pub fn rms_dbfs(samples: &[i16]) -> f32 {
    if samples.is_empty() {
        return f32::NEG_INFINITY;
    }
    let sum: f64 = samples.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    let rms = (sum / samples.len() as f64).sqrt() / 32768.0;
    (20.0 * rms.log10()) as f32
}

/// One report of a [`SoundLevelMeter`]: ZEGO's `ZegoSoundLevelInfo`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SoundLevel {
    /// The loudest 10 ms since the previous report, 0–100 (module docs: the scale).
    pub sound_level: f32,
    /// Whether the signal holds voice now (with the hangover).
    pub vad: bool,
}

/// Measures the level and the voice activity of one signal, fed 20 ms frames as they are
/// captured or decoded. Bounded cost: one pass over the frame for the level, a 3:1 FFT
/// decimation and ~1.25 detector windows per frame for the voice activity: about 33 µs a
/// frame in all (`cargo bench -p huddle-media --bench sound_level`).
///
/// ```
/// use huddle_media::{AudioFrame, SoundLevelMeter, FRAME_SAMPLES};
/// let mut meter = SoundLevelMeter::new()?;
/// let mut frame = AudioFrame::silence(0);
/// for (i, s) in frame.samples.iter_mut().enumerate() {
///     *s = if i % 96 < 48 { 1000 } else { -1000 }; // a quiet square wave: -30.3 dBFS
/// }
/// meter.push_frame(&frame.samples);
/// let report = meter.take();
/// assert!((report.sound_level - 49.5).abs() < 0.5);
/// assert!(!report.vad); // 20 ms is never speech (the onset takes 32 ms of voice)
/// # Ok::<(), huddle_media::MediaError>(())
/// ```
pub struct SoundLevelMeter {
    detector: Box<Detector>,
    decimator: FftFixedIn<f32>,
    input: Vec<f32>,
    /// Decimated samples waiting for a whole detector window.
    pending: Vec<i16>,
    /// The loudest block since the last report, in level points.
    peak: f32,
    /// The loudest block of the last frame.
    frame_level: f32,
    /// The last detector windows' RMS in dBFS (a ring), for the modulation.
    energies: [f32; MODULATION_WINDOWS],
    next_energy: usize,
    voiced_run: u32,
    /// Milliseconds of voice activity left (the hangover), 0 when not speaking.
    hangover_ms: u32,
    speaking: bool,
}

impl std::fmt::Debug for SoundLevelMeter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoundLevelMeter")
            .field("peak", &self.peak)
            .field("speaking", &self.speaking)
            .finish_non_exhaustive()
    }
}

impl SoundLevelMeter {
    /// A meter for a new signal.
    pub fn new() -> Result<SoundLevelMeter> {
        let decimator = FftFixedIn::new(SAMPLE_RATE as usize, VAD_RATE, FRAME_SAMPLES, 1, 1)
            .map_err(|e| MediaError::Resampler(e.to_string()))?;
        Ok(SoundLevelMeter {
            detector: Detector::default_boxed(),
            decimator,
            input: vec![0.0; FRAME_SAMPLES],
            pending: Vec::with_capacity(2 * VAD_WINDOW),
            peak: 0.0,
            frame_level: 0.0,
            energies: [-100.0; MODULATION_WINDOWS],
            next_energy: 0,
            voiced_run: 0,
            hangover_ms: 0,
            speaking: false,
        })
    }

    /// Measures one 20 ms frame (960 samples at 48 kHz).
    pub fn push_frame(&mut self, samples: &[i16; FRAME_SAMPLES]) {
        self.frame_level = samples
            .chunks(BLOCK)
            .map(|block| level_from_dbfs(rms_dbfs(block)))
            .fold(0.0, f32::max);
        self.peak = self.peak.max(self.frame_level);
        for (i, &s) in self.input.iter_mut().zip(samples.iter()) {
            *i = f32::from(s) / 32768.0;
        }
        let out = match self.decimator.process(&[&self.input], None) {
            Ok(out) => out,
            // The input is always one whole chunk: this does not happen. Without the decimated
            // signal the voice decision keeps its last state and runs down its hangover.
            Err(_) => {
                self.advance(false, 20);
                return;
            }
        };
        self.pending.extend(
            out[0]
                .iter()
                .map(|&x| (x * 32768.0).clamp(-32768.0, 32767.0) as i16),
        );
        let mut used = 0;
        while self.pending.len() - used >= VAD_WINDOW {
            let window = &self.pending[used..used + VAD_WINDOW];
            let score = self.detector.predict_i16(window);
            // The floor and the modulation are measured on the decimated signal (below 8 kHz,
            // where speech is).
            let db = rms_dbfs(window).max(-100.0);
            self.energies[self.next_energy] = db;
            self.next_energy = (self.next_energy + 1) % MODULATION_WINDOWS;
            let (lo, hi) = self
                .energies
                .iter()
                .fold((f32::MAX, f32::MIN), |(lo, hi), &e| (lo.min(e), hi.max(e)));
            let modulated = hi - lo >= MODULATION_DB;
            self.advance(
                score >= VAD_THRESHOLD && db >= VAD_FLOOR_DBFS && modulated,
                VAD_WINDOW_MS,
            );
            used += VAD_WINDOW;
        }
        self.pending.drain(..used);
    }

    /// One detector window's decision into the voice state.
    fn advance(&mut self, voiced: bool, ms: u32) {
        if voiced {
            self.voiced_run += 1;
            if self.voiced_run >= VAD_ONSET || self.speaking {
                self.speaking = true;
                self.hangover_ms = VAD_HANGOVER.as_millis() as u32;
            }
        } else {
            self.voiced_run = 0;
            self.hangover_ms = self.hangover_ms.saturating_sub(ms);
            if self.hangover_ms == 0 {
                self.speaking = false;
            }
        }
    }

    /// The level of the last frame (its loudest 10 ms), 0–100.
    pub fn frame_level(&self) -> f32 {
        self.frame_level
    }

    /// Whether the signal holds voice now (with the hangover).
    pub fn vad(&self) -> bool {
        self.speaking
    }

    /// The report since the previous one (the loudest 10 ms and the voice state), and starts
    /// the next interval.
    pub fn take(&mut self) -> SoundLevel {
        let report = SoundLevel {
            sound_level: self.peak,
            vad: self.speaking,
        };
        self.peak = 0.0;
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scale() {
        assert_eq!(level_from_dbfs(-90.0), 0.0);
        assert_eq!(level_from_dbfs(-54.0), 10.0);
        assert_eq!(level_from_dbfs(3.0), 100.0);
        assert_eq!(level_from_dbfs(f32::NAN), 0.0);
        assert_eq!(rms_dbfs(&[0; 480]), f32::NEG_INFINITY);
        assert!((rms_dbfs(&[i16::MIN; 480])).abs() < 1e-3);
        assert_eq!(rms_dbfs(&[]), f32::NEG_INFINITY);
    }

    #[test]
    fn hangover_and_onset() {
        let mut m = SoundLevelMeter::new().unwrap();
        m.advance(true, 16);
        assert!(!m.vad(), "one voiced window is not speech");
        m.advance(false, 16);
        m.advance(true, 16);
        m.advance(true, 16);
        assert!(m.vad());
        // Silence: speech lasts the hangover, then ends.
        let windows = VAD_HANGOVER.as_millis() as u32 / 16;
        for _ in 0..windows - 1 {
            m.advance(false, 16);
            assert!(m.vad());
        }
        m.advance(false, 16);
        assert!(!m.vad());
    }
}
