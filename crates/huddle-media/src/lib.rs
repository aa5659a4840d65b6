//! Huddle's media building blocks: pure, sans-IO, deterministic.
//!
//! Nothing here opens a socket, starts a thread or reads the clock: time comes in as an
//! argument, so everything runs as fast as a test likes and gives the same result every time.
//! The SDK's media pipeline puts these blocks together and paces them in real time:
//!
//! ```text
//! capture ─ AudioSource (WAV, tone, pushed PCM) ─ 20 ms AudioFrame ─ OpusEncoder (FEC) ─ RTP ─▶
//!   ─▶ SFU ─▶ JitterBuffer ─ Playout ─ OpusDecoder (decode / decode_fec / conceal) ─ mix ─ AudioSink
//!
//! TestPattern / Y4mReader ─ I420Frame ─ Vp8Encoder ─ RTP ─▶ SFU ─▶ Vp8Decoder ─ I420Frame ─ Y4mWriter
//! ```
//!
//! - Audio ([`AudioFrame`], [`OpusEncoder`], [`OpusDecoder`]): mono, 48 kHz, 20 ms frames of
//!   960 samples, Opus with in-band FEC.
//! - Sources and sinks ([`ToneSource`], [`WavSource`], [`WavRecorder`], [`mix`]).
//! - [`JitterBuffer`]: adaptive playout delay, loss, reordering, FEC hand-off; [`AudioPlayer`]:
//!   the buffer, decoding and [`stretch`]ing, so that the delay changes without a step in speech.
//! - [`AudioConfig`] (the hosted SDKs' presets) and [`AudioAdapter`]: the encoder follows the
//!   receivers' reports.
//! - Video ([`I420Frame`], [`Vp8Encoder`], [`Vp8Decoder`], [`TestPattern`], [`Y4mReader`],
//!   [`Y4mWriter`], [`psnr`]).
//! - [`SoundLevelMeter`]: the sound level (0–100) and voice activity of a signal.
//! - [`impair`]: a seeded network impairment model for tests.
//!
//! ```
//! use huddle_media::{AudioSource, OpusConfig, OpusDecoder, OpusEncoder, ToneSource};
//!
//! let mut source = ToneSource::new(1000.0, 0.5)?;
//! let mut encoder = OpusEncoder::new(OpusConfig::default())?;
//! let mut decoder = OpusDecoder::new()?;
//! while let Some(frame) = source.read_frame()? {
//!     let packet = encoder.encode(&frame)?;
//!     let played = decoder.decode(&packet)?;
//!     assert_eq!(played.samples.len(), 960);
//! #   break;
//! }
//! # Ok::<(), huddle_media::MediaError>(())
//! ```
//!
//! Every failure is a [`MediaError`] whose [`code`](MediaError::code) is a Huddle error code.

#![warn(missing_docs)]

mod adapt;
mod audio;
mod error;
pub mod impair;
mod jitter;
mod level;
mod loss;
mod player;
mod recovery;
mod sink;
mod source;
pub mod stretch;
mod video;

pub use adapt::{AudioAdapter, AudioConfig, AudioConfigPreset, EncoderSettings};
pub use audio::{
    AudioFrame, CHANNELS, FRAME_DURATION, FRAME_MS, FRAME_SAMPLES, MAX_OPUS_PACKET, OpusConfig, OpusDecoder,
    OpusEncoder, SAMPLE_RATE, packet_has_fec,
};
pub use error::{MediaError, Result};
pub use jitter::{Inserted, JitterBuffer, JitterConfig, JitterStats, Playout};
pub use level::{LEVEL_FLOOR_DBFS, SoundLevel, SoundLevelMeter, VAD_HANGOVER, level_from_dbfs, rms_dbfs};
pub use loss::LossHint;
pub use player::{AudioPlayer, PlayerStats};
pub use recovery::RecoveryDelay;
pub use sink::{AudioSink, WavRecorder, mix};
pub use source::{AudioSource, Playback, ToneSource, WavSource};
pub use video::pattern::TestPattern;
pub use video::vp8::{EncodedFrame, VIDEO_CLOCK_RATE, Vp8Config, Vp8Decoder, Vp8Encoder, vp8_is_keyframe};
pub use video::y4m::{Y4mReader, Y4mWriter};
pub use video::{I420Frame, MAX_DIMENSION, psnr, psnr_y};
