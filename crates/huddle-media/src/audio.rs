//! Audio frames and the Opus codec.
//!
//! Huddle audio is mono, 48 kHz, in 20 ms frames of 960 samples: the frame size every browser
//! sends and the one the jitter buffer counts in.

use std::fmt;
use std::time::Duration;

use crate::error::{MediaError, Result};

/// Sample rate of all Huddle audio, in Hz (also the Opus RTP clock rate).
pub const SAMPLE_RATE: u32 = 48_000;
/// Channels of Huddle audio (mono).
pub const CHANNELS: usize = 1;
/// Length of one frame in milliseconds.
pub const FRAME_MS: u32 = 20;
/// Length of one frame.
pub const FRAME_DURATION: Duration = Duration::from_millis(FRAME_MS as u64);
/// Samples in one frame (20 ms at 48 kHz); also the RTP timestamp step between two frames.
pub const FRAME_SAMPLES: usize = (SAMPLE_RATE / 1000 * FRAME_MS) as usize;
/// Largest Opus packet a single 20 ms frame can take (RFC 6716 §3.4, R5).
pub const MAX_OPUS_PACKET: usize = 1275;

/// 20 ms of mono 48 kHz 16-bit PCM.
///
/// `timestamp` is the position of the first sample in 48 kHz samples (wrapping like an RTP
/// timestamp). Sources count from 0; the RTP layer adds its random offset.
///
/// ```
/// use huddle_media::{AudioFrame, FRAME_SAMPLES};
/// let mut frame = AudioFrame::silence(960);
/// frame.samples[0] = i16::MAX;
/// assert_eq!(frame.samples.len(), FRAME_SAMPLES);
/// assert!(frame.rms_dbfs() < -20.0);
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct AudioFrame {
    /// Position of the first sample, in samples at 48 kHz (wraps at `u32::MAX`).
    pub timestamp: u32,
    /// The samples.
    pub samples: [i16; FRAME_SAMPLES],
}

impl AudioFrame {
    /// A frame of silence.
    pub fn silence(timestamp: u32) -> Self {
        AudioFrame {
            timestamp,
            samples: [0; FRAME_SAMPLES],
        }
    }

    /// A frame from exactly [`FRAME_SAMPLES`] samples.
    pub fn from_slice(timestamp: u32, samples: &[i16]) -> Result<Self> {
        let samples = samples.try_into().map_err(|_| {
            MediaError::InvalidArgument(format!(
                "an audio frame has {FRAME_SAMPLES} samples, got {}",
                samples.len()
            ))
        })?;
        Ok(AudioFrame { timestamp, samples })
    }

    /// A frame from exactly [`FRAME_SAMPLES`] float samples in `[-1.0, 1.0]` (clipped beyond).
    pub fn from_f32(timestamp: u32, samples: &[f32]) -> Result<Self> {
        if samples.len() != FRAME_SAMPLES {
            return Err(MediaError::InvalidArgument(format!(
                "an audio frame has {FRAME_SAMPLES} samples, got {}",
                samples.len()
            )));
        }
        let mut frame = AudioFrame::silence(timestamp);
        for (out, &s) in frame.samples.iter_mut().zip(samples) {
            *out = f32_to_i16(s);
        }
        Ok(frame)
    }

    /// The samples as floats in `[-1.0, 1.0)`.
    pub fn to_f32(&self) -> Vec<f32> {
        self.samples.iter().map(|&s| f32::from(s) / 32768.0).collect()
    }

    /// Root-mean-square level in dBFS (a full-scale square wave is 0 dBFS; silence is -inf
    /// clamped to -127, the floor of RFC 6464 audio levels).
    pub fn rms_dbfs(&self) -> f32 {
        let energy: f64 = self.samples.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
        let rms = (energy / FRAME_SAMPLES as f64).sqrt() / 32768.0;
        if rms <= 0.0 {
            -127.0
        } else {
            (20.0 * rms.log10()).max(-127.0) as f32
        }
    }

    /// Adds `other` into this frame, sample by sample, saturating at the `i16` range.
    pub fn mix_in(&mut self, other: &AudioFrame) {
        for (a, &b) in self.samples.iter_mut().zip(other.samples.iter()) {
            *a = a.saturating_add(b);
        }
    }
}

impl Default for AudioFrame {
    fn default() -> Self {
        AudioFrame::silence(0)
    }
}

impl fmt::Debug for AudioFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AudioFrame")
            .field("timestamp", &self.timestamp)
            .field("rms_dbfs", &self.rms_dbfs())
            .finish_non_exhaustive()
    }
}

/// Converts a float sample in `[-1.0, 1.0]` to 16 bits, clipping outside.
pub(crate) fn f32_to_i16(s: f32) -> i16 {
    (s * 32768.0).round().clamp(-32768.0, 32767.0) as i16
}

/// Settings of an [`OpusEncoder`].
///
/// The defaults are those of a voice call: 32 kbit/s, in-band FEC on with a 10 % loss hint so
/// that the very first packets already carry FEC, DTX off (constant packet rate keeps the
/// jitter buffer's estimate fed).
///
/// ```
/// let mut config = huddle_media::OpusConfig::default();
/// config.bitrate = 24_000;
/// assert!(config.fec);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OpusConfig {
    /// Target bitrate in bit/s (6 000 to 510 000).
    pub bitrate: u32,
    /// In-band forward error correction: each packet also carries a coarse copy of the
    /// previous frame, which the receiver decodes with [`OpusDecoder::decode_fec`] when that
    /// frame is lost. Only SILK and hybrid packets (speech) carry it.
    pub fec: bool,
    /// Expected packet loss in percent (0 to 100): the encoder spends that much more on FEC.
    /// FEC is only produced when this is above 0.
    pub packet_loss_percent: u8,
    /// Discontinuous transmission: during silence send one packet every 400 ms instead of one
    /// every 20 ms.
    pub dtx: bool,
    /// Encoder complexity, 0 (fastest) to 10 (best).
    pub complexity: u8,
    /// Music rather than voice: libopus' `AUDIO` application instead of `VOIP` (fixed when
    /// the encoder is created).
    pub music: bool,
}

impl Default for OpusConfig {
    fn default() -> Self {
        OpusConfig {
            bitrate: 32_000,
            fec: true,
            packet_loss_percent: 10,
            dtx: false,
            complexity: 10,
            music: false,
        }
    }
}

/// An Opus encoder for one mono 48 kHz stream of 20 ms frames (application `VOIP`).
///
/// ```
/// use huddle_media::{AudioFrame, OpusConfig, OpusDecoder, OpusEncoder};
/// let mut encoder = OpusEncoder::new(OpusConfig::default())?;
/// let mut decoder = OpusDecoder::new()?;
/// let packet = encoder.encode(&AudioFrame::silence(0))?;
/// let frame = decoder.decode(&packet)?;
/// assert_eq!(frame.samples.len(), 960);
/// # Ok::<(), huddle_media::MediaError>(())
/// ```
pub struct OpusEncoder {
    inner: opus::Encoder,
    config: OpusConfig,
}

impl OpusEncoder {
    /// Creates an encoder with these settings.
    pub fn new(config: OpusConfig) -> Result<Self> {
        let application = if config.music {
            opus::Application::Audio
        } else {
            opus::Application::Voip
        };
        let inner = opus::Encoder::new(SAMPLE_RATE, opus::Channels::Mono, application)?;
        let mut encoder = OpusEncoder {
            inner,
            config: config.clone(),
        };
        encoder.set_bitrate(config.bitrate)?;
        encoder.set_fec(config.fec)?;
        encoder.set_packet_loss_percent(config.packet_loss_percent)?;
        encoder.set_dtx(config.dtx)?;
        encoder.set_complexity(config.complexity)?;
        Ok(encoder)
    }

    /// The current settings.
    pub fn config(&self) -> &OpusConfig {
        &self.config
    }

    /// Encodes one frame into a new packet.
    pub fn encode(&mut self, frame: &AudioFrame) -> Result<Vec<u8>> {
        let mut buf = [0u8; MAX_OPUS_PACKET];
        let len = self.encode_into(frame, &mut buf)?;
        Ok(buf[..len].to_vec())
    }

    /// Encodes one frame into `out` (at least [`MAX_OPUS_PACKET`] bytes long to never fail)
    /// and returns the packet length. A 1- or 2-byte packet is a DTX "nothing to send" packet.
    pub fn encode_into(&mut self, frame: &AudioFrame, out: &mut [u8]) -> Result<usize> {
        Ok(self.inner.encode(&frame.samples, out)?)
    }

    /// Applies what an [`AudioAdapter`](crate::AudioAdapter) asks for (bitrate, FEC, loss
    /// hint), touching only what changed; returns whether anything did.
    ///
    /// ```
    /// use huddle_media::{AudioAdapter, AudioConfig, OpusConfig, OpusEncoder};
    /// let adapter = AudioAdapter::new(AudioConfig::default());
    /// let mut encoder = OpusEncoder::new(OpusConfig::default())?;
    /// assert!(encoder.apply(&adapter.settings())?);
    /// assert_eq!(encoder.config().bitrate, 48_000);
    /// assert!(!encoder.apply(&adapter.settings())?);
    /// # Ok::<(), huddle_media::MediaError>(())
    /// ```
    pub fn apply(&mut self, settings: &crate::EncoderSettings) -> Result<bool> {
        let mut changed = false;
        if settings.bitrate != self.config.bitrate {
            self.set_bitrate(settings.bitrate)?;
            changed = true;
        }
        if settings.fec != self.config.fec {
            self.set_fec(settings.fec)?;
            changed = true;
        }
        if settings.packet_loss_percent != self.config.packet_loss_percent {
            self.set_packet_loss_percent(settings.packet_loss_percent)?;
            changed = true;
        }
        Ok(changed)
    }

    /// Sets the target bitrate in bit/s (6 000 to 510 000).
    pub fn set_bitrate(&mut self, bitrate: u32) -> Result<()> {
        if !(6_000..=510_000).contains(&bitrate) {
            return Err(MediaError::InvalidArgument(format!(
                "Opus bitrate must be 6000..=510000 bit/s, got {bitrate}"
            )));
        }
        self.inner.set_bitrate(opus::Bitrate::Bits(bitrate as i32))?;
        self.config.bitrate = bitrate;
        Ok(())
    }

    /// Turns in-band FEC on or off.
    pub fn set_fec(&mut self, fec: bool) -> Result<()> {
        self.inner.set_inband_fec(fec)?;
        self.config.fec = fec;
        Ok(())
    }

    /// Sets the expected packet loss in percent (0 to 100), which sizes the FEC.
    pub fn set_packet_loss_percent(&mut self, percent: u8) -> Result<()> {
        if percent > 100 {
            return Err(MediaError::InvalidArgument(format!(
                "packet loss must be 0..=100 %, got {percent}"
            )));
        }
        self.inner.set_packet_loss_perc(i32::from(percent))?;
        self.config.packet_loss_percent = percent;
        Ok(())
    }

    /// Turns discontinuous transmission on or off.
    pub fn set_dtx(&mut self, dtx: bool) -> Result<()> {
        self.inner.set_dtx(dtx)?;
        self.config.dtx = dtx;
        Ok(())
    }

    /// Sets the complexity, 0 to 10.
    pub fn set_complexity(&mut self, complexity: u8) -> Result<()> {
        if complexity > 10 {
            return Err(MediaError::InvalidArgument(format!(
                "complexity must be 0..=10, got {complexity}"
            )));
        }
        self.inner.set_complexity(i32::from(complexity))?;
        self.config.complexity = complexity;
        Ok(())
    }

    /// The encoder's look-ahead in samples: part of the codec delay (decoded audio lags the
    /// input by this much, about 6.5 ms in VOIP mode).
    pub fn lookahead(&mut self) -> Result<usize> {
        Ok(self.inner.get_lookahead()?.max(0) as usize)
    }
}

impl fmt::Debug for OpusEncoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpusEncoder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// An Opus decoder for one mono 48 kHz stream of 20 ms packets.
///
/// Every method returns exactly one 960-sample frame, so a receiver produces one frame per
/// 20 ms tick whatever happened to the packet: [`decode`](Self::decode) when it arrived,
/// [`decode_fec`](Self::decode_fec) when it was lost but the next one is here, and
/// [`conceal`](Self::conceal) (packet-loss concealment) when neither is.
///
/// The `timestamp` of the returned frames counts the samples this decoder produced before
/// them: a continuous playout clock, whatever the sender's timestamps were.
///
/// ```
/// use huddle_media::{OpusConfig, OpusDecoder, OpusEncoder, ToneSource};
/// let mut tone = ToneSource::new(440.0, 0.5)?;
/// let mut encoder = OpusEncoder::new(OpusConfig::default())?;
/// let packets: Vec<Vec<u8>> =
///     (0..3).map(|_| encoder.encode(&tone.next_frame())).collect::<Result<_, _>>()?;
///
/// let mut decoder = OpusDecoder::new()?;
/// decoder.decode(&packets[0])?;
/// let recovered = decoder.decode_fec(&packets[2])?; // packets[1] was lost
/// let next = decoder.decode(&packets[2])?;
/// assert_eq!((recovered.timestamp, next.timestamp), (960, 1920));
/// # Ok::<(), huddle_media::MediaError>(())
/// ```
pub struct OpusDecoder {
    inner: opus::Decoder,
    /// Samples produced so far: the timestamp of the next frame.
    position: u32,
}

impl OpusDecoder {
    /// Creates a decoder.
    pub fn new() -> Result<Self> {
        Ok(OpusDecoder {
            inner: opus::Decoder::new(SAMPLE_RATE, opus::Channels::Mono)?,
            position: 0,
        })
    }

    /// Decodes a packet that holds one 20 ms frame.
    ///
    /// Fails with [`MediaError::FrameDuration`] for packets of another duration and with
    /// [`MediaError::Opus`] for corrupt packets; conceal the frame in both cases.
    pub fn decode(&mut self, packet: &[u8]) -> Result<AudioFrame> {
        check_duration(packet)?;
        self.run(packet, false)
    }

    /// Recovers the frame *before* `next_packet` from the FEC data that `next_packet` carries.
    ///
    /// Call it for a lost frame when the packet after it is here, then decode `next_packet`
    /// normally for the next tick. When `next_packet` carries no FEC, libopus conceals instead,
    /// so the result is never worse than [`conceal`](Self::conceal) (see [`packet_has_fec`]).
    pub fn decode_fec(&mut self, next_packet: &[u8]) -> Result<AudioFrame> {
        check_duration(next_packet)?;
        self.run(next_packet, true)
    }

    /// Packet-loss concealment: extrapolates one frame from the previous ones (fading to
    /// silence when it goes on).
    pub fn conceal(&mut self) -> AudioFrame {
        // libopus' PLC cannot fail on a valid decoder with a valid frame size; should it ever,
        // silence is the right concealment.
        self.run(&[], false).unwrap_or_else(|_| {
            let frame = AudioFrame::silence(self.position);
            self.position = self.position.wrapping_add(FRAME_SAMPLES as u32);
            frame
        })
    }

    /// Forgets the decoder state (for a new stream).
    pub fn reset(&mut self) -> Result<()> {
        self.inner.reset_state()?;
        Ok(())
    }

    fn run(&mut self, packet: &[u8], fec: bool) -> Result<AudioFrame> {
        let mut frame = AudioFrame::silence(self.position);
        // An empty input asks libopus for concealment (the opus crate passes a null pointer).
        let n = self.inner.decode(packet, &mut frame.samples, fec)?;
        if n != FRAME_SAMPLES {
            return Err(MediaError::FrameDuration { samples: n });
        }
        self.position = self.position.wrapping_add(FRAME_SAMPLES as u32);
        Ok(frame)
    }
}

impl fmt::Debug for OpusDecoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpusDecoder")
            .field("position", &self.position)
            .finish_non_exhaustive()
    }
}

fn check_duration(packet: &[u8]) -> Result<()> {
    if packet.is_empty() {
        return Err(MediaError::InvalidArgument(
            "empty Opus packet (use OpusDecoder::conceal for a lost frame)".into(),
        ));
    }
    let samples = opus::packet::get_nb_samples(packet, SAMPLE_RATE)?;
    if samples != FRAME_SAMPLES {
        return Err(MediaError::FrameDuration { samples });
    }
    Ok(())
}

/// Whether an Opus packet carries in-band FEC (SILK LBRR data) for the frame before it.
///
/// CELT-only packets (music mode) never do. This reads the LBRR flag the way libopus 1.5's
/// `opus_packet_has_lbrr` does: the SILK header flags are coded with probability ½, so they
/// appear as plain bits at the top of the first frame's first byte.
///
/// ```
/// assert!(!huddle_media::packet_has_fec(&[]));
/// ```
pub fn packet_has_fec(packet: &[u8]) -> bool {
    let Some(&toc) = packet.first() else { return false };
    // TOC configs 0..=11 are SILK-only, 12..=15 hybrid, 16..=31 CELT-only.
    if toc >> 3 >= 16 {
        return false;
    }
    let Ok(parsed) = opus::packet::parse(packet) else {
        return false;
    };
    let Some(&first) = parsed.frames.first().and_then(|frame| frame.first()) else {
        return false;
    };
    // SILK codes one VAD flag per 20 ms sub-frame, then the LBRR flag (per channel).
    let silk_frames =
        opus::packet::get_samples_per_frame(packet, SAMPLE_RATE).map_or(1, |n| (n / 960).max(1));
    let mid = (first >> (7 - silk_frames)) & 1 == 1;
    let side = toc & 0x04 != 0 && (first >> (6 - 2 * silk_frames)) & 1 == 1;
    mid || side
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fec_flag_is_read_from_silk_headers_only() {
        // TOC 0x08: SILK narrowband, 20 ms, mono, one frame. First payload bits: VAD, LBRR.
        assert!(packet_has_fec(&[0x08, 0b0100_0000]));
        assert!(!packet_has_fec(&[0x08, 0b1000_0000]));
        // Hybrid (config 13), stereo (bit 2): the side channel's LBRR flag (bit 4) counts too.
        assert!(packet_has_fec(&[(13 << 3) | 0x04, 0b0001_0000]));
        // CELT-only (config 31) never carries FEC, whatever its bits.
        assert!(!packet_has_fec(&[31 << 3, 0xff]));
        assert!(!packet_has_fec(&[0x08]));
    }

    #[test]
    fn frames_convert_and_measure() {
        let floats = vec![0.5f32; FRAME_SAMPLES];
        let frame = AudioFrame::from_f32(7, &floats).unwrap();
        assert_eq!((frame.timestamp, frame.samples[0]), (7, 16_384));
        assert!((frame.rms_dbfs() - -6.02).abs() < 0.01);
        assert_eq!(frame.to_f32()[0], 0.5);
        assert_eq!(
            AudioFrame::from_f32(0, &[2.0; FRAME_SAMPLES]).unwrap().samples[0],
            i16::MAX
        );
        assert!(AudioFrame::from_slice(0, &[0; 100]).is_err());
        assert_eq!(AudioFrame::silence(0).rms_dbfs(), -127.0);
        assert!(format!("{frame:?}").contains("timestamp: 7"));
    }
}
