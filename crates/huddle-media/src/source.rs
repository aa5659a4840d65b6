//! Audio sources: where the frames to publish come from.
//!
//! Sources are pure: each call hands out the next 20 ms frame at once. Pacing them in real
//! time (one frame every 20 ms) is the caller's job, so tests can run them as fast as they like.

use std::f64::consts::TAU;
use std::fmt;
use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::Path;

use rubato::{FftFixedOut, Resampler};

use crate::audio::{AudioFrame, FRAME_SAMPLES, SAMPLE_RATE, f32_to_i16};
use crate::error::{MediaError, Result};

/// Something that produces 20 ms audio frames.
pub trait AudioSource: Send {
    /// The next frame, or `None` when the source has ended.
    fn read_frame(&mut self) -> Result<Option<AudioFrame>>;
}

/// A sine tone, phase-continuous across frames; it never ends.
///
/// ```
/// use huddle_media::{AudioSource, ToneSource};
/// let mut tone = ToneSource::new(1000.0, 0.5)?;
/// let frame = tone.read_frame()?.unwrap();
/// assert!((frame.rms_dbfs() - -9.03).abs() < 0.1); // a sine's RMS is 3 dB below its peak
/// # Ok::<(), huddle_media::MediaError>(())
/// ```
#[derive(Debug, Clone)]
pub struct ToneSource {
    frequency: f64,
    amplitude: f64,
    /// Samples produced so far (the phase is computed from it, so it never drifts).
    position: u64,
}

impl ToneSource {
    /// A tone of `frequency` Hz (above 0, below 24 000) and peak `amplitude` (0.0 to 1.0 of
    /// full scale).
    pub fn new(frequency: f64, amplitude: f64) -> Result<Self> {
        if !(frequency > 0.0 && frequency < f64::from(SAMPLE_RATE) / 2.0) {
            return Err(MediaError::InvalidArgument(format!(
                "tone frequency must be in (0, 24000) Hz, got {frequency}"
            )));
        }
        if !(0.0..=1.0).contains(&amplitude) {
            return Err(MediaError::InvalidArgument(format!(
                "tone amplitude must be 0..=1, got {amplitude}"
            )));
        }
        Ok(ToneSource {
            frequency,
            amplitude,
            position: 0,
        })
    }

    /// The next frame (infallible version of [`AudioSource::read_frame`]).
    pub fn next_frame(&mut self) -> AudioFrame {
        let mut frame = AudioFrame::silence(self.position as u32);
        let step = TAU * self.frequency / f64::from(SAMPLE_RATE);
        for (i, s) in frame.samples.iter_mut().enumerate() {
            // The phase comes from the absolute sample index (exact in f64 up to 2^53 samples,
            // 5 000 years), so it never drifts.
            let n = (self.position + i as u64) as f64;
            *s = f32_to_i16((self.amplitude * (step * n).sin()) as f32);
        }
        self.position += FRAME_SAMPLES as u64;
        frame
    }
}

impl AudioSource for ToneSource {
    fn read_frame(&mut self) -> Result<Option<AudioFrame>> {
        Ok(Some(self.next_frame()))
    }
}

/// What a [`WavSource`] does at the end of its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Playback {
    /// Play the file once, then end (the last frame is padded with silence).
    Once,
    /// Start again from the beginning, without a gap.
    Loop,
}

/// Reads a WAV file as 48 kHz mono 20 ms frames.
///
/// Any channel count is mixed down (average of the channels); any sample rate is resampled
/// to 48 kHz (rubato's FFT resampler, delay compensated so the output starts with the file);
/// 8/16/24/32-bit integer and 32-bit float samples are read.
///
/// ```no_run
/// use huddle_media::{AudioSource, Playback, WavSource};
/// let mut source = WavSource::open("speech.wav", Playback::Loop)?;
/// while let Some(frame) = source.read_frame()? {
///     // hand the frame to the encoder every 20 ms
/// #   break;
/// }
/// # Ok::<(), huddle_media::MediaError>(())
/// ```
pub struct WavSource<R: Read + Seek = BufReader<File>> {
    reader: hound::WavReader<R>,
    playback: Playback,
    channels: usize,
    /// Scale from the integer sample type to [-1, 1) (unused for float files).
    int_scale: f32,
    float: bool,
    /// Frames (per channel) of the file.
    file_frames: u64,
    /// Frames (per channel) read from the file in the current pass.
    read_frames: u64,
    resampler: Option<Resampling>,
    /// Mono 48 kHz samples ready to be cut into frames.
    pending: Vec<f32>,
    /// Samples handed out (the next frame's timestamp).
    position: u32,
    ended: bool,
}

struct Resampling {
    resampler: FftFixedOut<f32>,
    /// Mono input waiting for the resampler.
    input: Vec<f32>,
    /// Output samples still to drop: the resampler's delay.
    skip: usize,
    rate_in: u32,
    /// Input frames read (`Once` mode: to end with the file's exact resampled length).
    total_in: u64,
    /// Output samples kept.
    total_out: u64,
}

impl WavSource<BufReader<File>> {
    /// Opens a WAV file.
    pub fn open(path: impl AsRef<Path>, playback: Playback) -> Result<Self> {
        let file = File::open(path.as_ref()).map_err(|e| {
            MediaError::Io(std::io::Error::new(
                e.kind(),
                format!("{}: {e}", path.as_ref().display()),
            ))
        })?;
        WavSource::from_reader(BufReader::new(file), playback)
    }
}

impl<R: Read + Seek> WavSource<R> {
    /// Reads WAV data from any seekable reader.
    pub fn from_reader(reader: R, playback: Playback) -> Result<Self> {
        let reader = hound::WavReader::new(reader)?;
        let spec = reader.spec();
        let float = match (spec.sample_format, spec.bits_per_sample) {
            (hound::SampleFormat::Float, 32) => true,
            (hound::SampleFormat::Int, 8..=32) => false,
            (format, bits) => {
                return Err(MediaError::Unsupported(format!(
                    "WAV with {bits}-bit {format:?} samples"
                )));
            }
        };
        if spec.channels == 0 || spec.sample_rate == 0 {
            return Err(MediaError::Format(
                "WAV with 0 channels or a 0 Hz sample rate".into(),
            ));
        }
        let file_frames = u64::from(reader.duration());
        if file_frames == 0 && playback == Playback::Loop {
            return Err(MediaError::InvalidArgument(
                "cannot loop an empty WAV file".into(),
            ));
        }
        let resampler = if spec.sample_rate == SAMPLE_RATE {
            None
        } else {
            let resampler = FftFixedOut::new(
                spec.sample_rate as usize,
                SAMPLE_RATE as usize,
                FRAME_SAMPLES,
                1,
                1,
            )
            .map_err(|e| MediaError::Unsupported(format!("resampling from {} Hz: {e}", spec.sample_rate)))?;
            // The FFT resampler's filter is centred on input sample floor(n / 2) of each block
            // of n input samples (n is what it asks for first), so its delay is that many input
            // samples. `output_delay()` assumes n / 2, one sample off for odd n.
            let block_in = resampler.input_frames_next();
            let skip = ((block_in / 2) as f64 * f64::from(SAMPLE_RATE) / f64::from(spec.sample_rate)).round()
                as usize;
            Some(Resampling {
                resampler,
                input: Vec::new(),
                skip,
                rate_in: spec.sample_rate,
                total_in: 0,
                total_out: 0,
            })
        };
        Ok(WavSource {
            reader,
            playback,
            channels: usize::from(spec.channels),
            int_scale: 1.0 / (1u64 << (spec.bits_per_sample - 1)) as f32,
            float,
            file_frames,
            read_frames: 0,
            resampler,
            pending: Vec::with_capacity(2 * FRAME_SAMPLES),
            position: 0,
            ended: false,
        })
    }

    /// Sample rate of the file in Hz.
    pub fn file_sample_rate(&self) -> u32 {
        self.reader.spec().sample_rate
    }

    /// Channels of the file.
    pub fn file_channels(&self) -> u16 {
        self.reader.spec().channels
    }

    /// Length of the file.
    pub fn file_duration(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.file_frames as f64 / f64::from(self.file_sample_rate()))
    }

    /// Reads up to `frames` file frames, mixed down to mono, appending to `out`. Returns how
    /// many it read (fewer at the end of the file in `Once` mode; it rewinds in `Loop` mode).
    fn read_mono(&mut self, frames: usize, out: &mut Vec<f32>) -> Result<usize> {
        let mut done = 0;
        while done < frames {
            if self.read_frames == self.file_frames {
                if self.playback == Playback::Once {
                    break;
                }
                self.reader.seek(0)?;
                self.read_frames = 0;
            }
            let take = (frames - done).min((self.file_frames - self.read_frames) as usize);
            let channels = self.channels;
            let mut acc = 0.0f32;
            let mut ch = 0;
            let mut got = 0;
            if self.float {
                for s in self.reader.samples::<f32>().take(take * channels) {
                    acc += s?;
                    ch += 1;
                    if ch == channels {
                        out.push(acc / channels as f32);
                        (acc, ch, got) = (0.0, 0, got + 1);
                    }
                }
            } else {
                let scale = self.int_scale;
                for s in self.reader.samples::<i32>().take(take * channels) {
                    acc += s? as f32 * scale;
                    ch += 1;
                    if ch == channels {
                        out.push(acc / channels as f32);
                        (acc, ch, got) = (0.0, 0, got + 1);
                    }
                }
            }
            if got < take {
                return Err(MediaError::Format(
                    "WAV data ends before its declared length".into(),
                ));
            }
            self.read_frames += got as u64;
            done += got;
        }
        Ok(done)
    }

    /// Fills `pending` with at least one frame of 48 kHz audio, unless the file has ended.
    fn fill(&mut self) -> Result<()> {
        let mut pending = std::mem::take(&mut self.pending);
        let result = self.fill_into(&mut pending);
        self.pending = pending;
        result
    }

    fn fill_into(&mut self, pending: &mut Vec<f32>) -> Result<()> {
        while pending.len() < FRAME_SAMPLES {
            let Some(mut rs) = self.resampler.take() else {
                let want = FRAME_SAMPLES - pending.len();
                let got = self.read_mono(want, pending)?;
                if got < want {
                    break;
                }
                continue;
            };
            let result = self.resample_step(&mut rs, pending);
            self.resampler = Some(rs);
            if !result? {
                break;
            }
        }
        Ok(())
    }

    /// Runs the resampler once (960 output samples). Returns false once a `Once` file has
    /// ended and all of its resampled length was produced.
    fn resample_step(&mut self, rs: &mut Resampling, pending: &mut Vec<f32>) -> Result<bool> {
        let need = rs.resampler.input_frames_next();
        if rs.input.len() < need {
            let want = need - rs.input.len();
            let got = self.read_mono(want, &mut rs.input)?;
            rs.total_in += got as u64;
        }
        let file_done = self.playback == Playback::Once && self.read_frames == self.file_frames;
        // The resampled length of everything read so far, rounded up.
        let expected = (rs.total_in * u64::from(SAMPLE_RATE)).div_ceil(u64::from(rs.rate_in));
        if file_done && rs.total_out >= expected {
            return Ok(false);
        }
        // At the end of the file the input is short: pad with silence to flush the filter.
        if rs.input.len() < need {
            rs.input.resize(need, 0.0);
        }
        let out = rs
            .resampler
            .process(&[&rs.input[..need]], None)
            .map_err(|e| MediaError::Resampler(e.to_string()))?;
        rs.input.drain(..need);
        let skip = rs.skip.min(out[0].len());
        rs.skip -= skip;
        let mut produced = &out[0][skip..];
        if file_done {
            let left = (expected - rs.total_out) as usize;
            produced = &produced[..produced.len().min(left)];
        }
        rs.total_out += produced.len() as u64;
        pending.extend_from_slice(produced);
        Ok(true)
    }
}

impl<R: Read + Seek + Send> AudioSource for WavSource<R> {
    fn read_frame(&mut self) -> Result<Option<AudioFrame>> {
        if self.ended {
            return Ok(None);
        }
        self.fill()?;
        if self.pending.is_empty() {
            self.ended = true;
            return Ok(None);
        }
        let n = self.pending.len().min(FRAME_SAMPLES);
        let mut frame = AudioFrame::silence(self.position);
        for (out, &s) in frame.samples.iter_mut().zip(&self.pending[..n]) {
            *out = f32_to_i16(s);
        }
        self.pending.drain(..n);
        if n < FRAME_SAMPLES {
            self.ended = true;
        }
        self.position = self.position.wrapping_add(FRAME_SAMPLES as u32);
        Ok(Some(frame))
    }
}

impl<R: Read + Seek> fmt::Debug for WavSource<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WavSource")
            .field("spec", &self.reader.spec())
            .field("playback", &self.playback)
            .field("position", &self.position)
            .finish_non_exhaustive()
    }
}
