//! Audio sinks (where played frames go) and the mixer.

use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Seek, Write};
use std::path::Path;

use crate::audio::{AudioFrame, FRAME_SAMPLES, SAMPLE_RATE};
use crate::error::{MediaError, Result};

/// Something that consumes 20 ms audio frames.
pub trait AudioSink: Send {
    /// Takes the next frame.
    fn write_frame(&mut self, frame: &AudioFrame) -> Result<()>;
}

/// Records frames into a WAV file: 48 kHz, mono, 16-bit.
///
/// Call [`finish`](Self::finish) to write the final header and see its errors; dropping the
/// recorder finishes it too, ignoring errors.
///
/// ```
/// use huddle_media::{AudioSink, ToneSource, WavRecorder};
/// let mut buf = std::io::Cursor::new(Vec::new());
/// let mut recorder = WavRecorder::from_writer(&mut buf)?;
/// let mut tone = ToneSource::new(440.0, 0.3)?;
/// for _ in 0..50 {
///     recorder.write_frame(&tone.next_frame())?;
/// }
/// recorder.finish()?;
/// assert_eq!(buf.into_inner().len(), 44 + 50 * 960 * 2);
/// # Ok::<(), huddle_media::MediaError>(())
/// ```
pub struct WavRecorder<W: Write + Seek = BufWriter<File>> {
    writer: hound::WavWriter<W>,
    frames: u64,
}

impl WavRecorder<BufWriter<File>> {
    /// Creates (or truncates) a WAV file.
    pub fn create(path: impl AsRef<Path>) -> Result<Self> {
        let file = File::create(path.as_ref()).map_err(|e| {
            MediaError::Io(std::io::Error::new(
                e.kind(),
                format!("{}: {e}", path.as_ref().display()),
            ))
        })?;
        WavRecorder::from_writer(BufWriter::new(file))
    }
}

impl<W: Write + Seek> WavRecorder<W> {
    /// Records into any seekable writer.
    pub fn from_writer(writer: W) -> Result<Self> {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: SAMPLE_RATE,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        Ok(WavRecorder {
            writer: hound::WavWriter::new(writer, spec)?,
            frames: 0,
        })
    }

    /// Frames recorded so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Writes the final header and flushes.
    pub fn finish(self) -> Result<()> {
        Ok(self.writer.finalize()?)
    }

    fn write(&mut self, frame: &AudioFrame) -> Result<()> {
        let mut samples = self.writer.get_i16_writer(FRAME_SAMPLES as u32);
        for &s in &frame.samples {
            samples.write_sample(s);
        }
        samples.flush()?;
        self.frames += 1;
        Ok(())
    }
}

impl<W: Write + Seek + Send> AudioSink for WavRecorder<W> {
    fn write_frame(&mut self, frame: &AudioFrame) -> Result<()> {
        self.write(frame)
    }
}

impl<W: Write + Seek> fmt::Debug for WavRecorder<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WavRecorder")
            .field("frames", &self.frames)
            .finish_non_exhaustive()
    }
}

/// Mixes frames by summing them, saturating at the `i16` range.
///
/// The sum is taken in 32 bits and clipped once, so the result does not depend on the order
/// of the inputs. No inputs give silence.
///
/// ```
/// use huddle_media::{AudioFrame, mix};
/// let mut a = AudioFrame::silence(0);
/// let mut b = AudioFrame::silence(0);
/// (a.samples[0], b.samples[0]) = (30_000, 10_000);
/// (a.samples[1], b.samples[1]) = (-100, 300);
/// let mixed = mix(0, [&a, &b]);
/// assert_eq!(&mixed.samples[..2], &[i16::MAX, 200]);
/// ```
pub fn mix<'a>(timestamp: u32, frames: impl IntoIterator<Item = &'a AudioFrame>) -> AudioFrame {
    let mut acc = [0i32; FRAME_SAMPLES];
    for frame in frames {
        for (a, &s) in acc.iter_mut().zip(frame.samples.iter()) {
            *a += i32::from(s);
        }
    }
    let mut out = AudioFrame::silence(timestamp);
    for (o, &a) in out.samples.iter_mut().zip(acc.iter()) {
        *o = a.clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16;
    }
    out
}
