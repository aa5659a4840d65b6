//! The receive side of one audio stream: jitter buffer, Opus decoding and time-stretching
//! (documented on [`AudioPlayer`]).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::audio::{AudioFrame, FRAME_SAMPLES, OpusDecoder, SAMPLE_RATE};
use crate::error::Result;
use crate::jitter::{JitterBuffer, JitterConfig, JitterStats, Playout};
use crate::stretch;

/// A decoded frame louder than this (dBFS) is speech: the buffer's whole-frame delay steps
/// wait for a pause, and the stretching does them meanwhile.
const SPEECH_DBFS: f32 = -50.0;
/// ... and so are the next frames for this many frames (60 ms).
const SPEECH_HANG: u8 = 3;
/// Stretch longer when the delay is this much below the target (µs) ...
const EXPAND_BELOW_US: i64 = -2_000;
/// ... and shorter when it is this much above (µs): between the two, nothing moves (a band
/// wider than the longest period stretched, so that a step never overshoots into the other).
const ACCELERATE_ABOVE_US: i64 = 12_000;
/// In speech, a shortfall up to this much (µs) is made up by stretching at once; a larger one
/// waits for a pause (see `AudioPlayer::stretch`) ...
const EXPAND_IN_SPEECH_MAX_US: i64 = 25_000;
/// ... and a surplus is taken back by stretching in speech only above this much (µs; two
/// frames, beyond the buffer's own threshold for dropping a frame) ...
const ACCELERATE_IN_SPEECH_ABOVE_US: i64 = 40_000;
/// ... for at most this many frames of speech (5 s, as `JitterBuffer::set_speech` defers).
const SPEECH_WAIT_FRAMES: u32 = 250;

/// Counters of an [`AudioPlayer`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PlayerStats {
    /// The jitter buffer's own counters.
    pub jitter: JitterStats,
    /// The delay the jitter buffer adds now (of the last frame played, above the fastest
    /// recent packet, including the decoded audio waiting to be played).
    pub added_delay: Duration,
    /// Frames shortened by a pitch period (accelerate).
    pub accelerated: u64,
    /// Frames lengthened by a pitch period (preemptive expand).
    pub stretched: u64,
    /// Audio removed by accelerating, in all.
    pub accelerated_time: Duration,
    /// Audio added by stretching, in all.
    pub stretched_time: Duration,
    /// Whole concealed frames inserted to grow the delay ([`Playout::Expand`]) while the audio
    /// was speech: the audible 20 ms steps that stretching is there to avoid (a stream that
    /// starves, its packets not here in time, still gets them).
    pub speech_inserts: u64,
    /// Frames dropped or skipped to shrink the delay while the audio was speech.
    pub speech_drops: u64,
}

/// The receive side of one audio stream, sans-IO: RTP packets in ([`insert`](Self::insert)),
/// one 20 ms frame of PCM out per tick ([`pull`](Self::pull)), a [`JitterBuffer`] and an
/// [`OpusDecoder`] in between, FEC and concealment for lost packets.
///
/// **The delay changes without steps in speech.** As WebRTC's NetEq does, the buffer's delay
/// moves by time-stretching the decoded audio (see [`crate::stretch`]): when it is below the
/// target a voiced frame is played one pitch period longer (2.5–10 ms), when above one period
/// shorter, until it is within a few milliseconds. In speech only the small moves (a shortfall
/// of about a frame) are made at once; larger ones wait for a pause, as the buffer's
/// whole-frame steps (a concealed frame inserted, a frame dropped) do, and are made there
/// (see `AudioPlayer::stretch`, private). Frames then start wherever the
/// audio before them ends, not on a 20 ms grid: the player keeps the decoded audio not played
/// yet and asks the buffer for the frame that starts where it ends
/// ([`JitterBuffer::pop_at`]). A packet that is late but can still be placed is played, not
/// counted as lost.
///
/// With stretching off ([`set_stretching`](Self::set_stretching)) it plays exactly like the
/// buffer alone on its 20 ms grid.
///
/// ```
/// use std::time::{Duration, Instant};
/// use huddle_media::{AudioPlayer, JitterConfig, OpusConfig, OpusEncoder, ToneSource};
///
/// let mut tone = ToneSource::new(200.0, 0.5)?;
/// let mut encoder = OpusEncoder::new(OpusConfig::default())?;
/// let mut player = AudioPlayer::new(JitterConfig::default())?;
/// let t0 = Instant::now();
/// let mut heard = 0;
/// for i in 0..50u16 {
///     let now = t0 + Duration::from_millis(20 * u64::from(i));
///     player.insert(i, 960 * u32::from(i), encoder.encode(&tone.next_frame())?, now);
///     if let Some(frame) = player.pull(now + Duration::from_millis(5)) {
///         heard += 1;
///         assert_eq!(frame.samples.len(), 960);
///     }
/// }
/// assert!(heard >= 48);
/// assert!(player.stats().added_delay <= Duration::from_millis(40));
/// # Ok::<(), huddle_media::MediaError>(())
/// ```
pub struct AudioPlayer {
    jitter: JitterBuffer,
    decoder: OpusDecoder,
    /// Decoded audio not played yet (what a stretch added, or what is left of a frame).
    pcm: VecDeque<i16>,
    stretching: bool,
    speech_hang: u8,
    /// Frames of speech in a row (since the last pause).
    speech_frames: u32,
    position: u32,
    /// The buffer's drop counter at the last output (to tell the drops made in speech).
    discarded: u64,
    stats: PlayerStats,
}

impl AudioPlayer {
    /// A player with this jitter buffer configuration, stretching on.
    pub fn new(config: JitterConfig) -> Result<Self> {
        let mut jitter = JitterBuffer::new(config);
        jitter.set_stretching(true);
        Ok(AudioPlayer {
            jitter,
            decoder: OpusDecoder::new()?,
            pcm: VecDeque::with_capacity(4 * FRAME_SAMPLES),
            stretching: true,
            speech_hang: 0,
            speech_frames: 0,
            position: 0,
            discarded: 0,
            stats: PlayerStats::default(),
        })
    }

    /// Turns time-stretching on (the default) or off (the buffer then steps its delay by
    /// whole frames, in pauses when it can, as it did alone).
    pub fn set_stretching(&mut self, on: bool) {
        self.stretching = on;
        self.jitter.set_stretching(on);
    }

    /// The jitter buffer (to change its minimum delay, read its state).
    pub fn jitter(&mut self) -> &mut JitterBuffer {
        &mut self.jitter
    }

    /// Takes a packet: see [`JitterBuffer::insert`].
    pub fn insert(&mut self, seq: u16, rtp_ts: u32, payload: Vec<u8>, arrival: Instant) -> crate::Inserted {
        self.jitter.insert(seq, rtp_ts, payload, arrival)
    }

    /// The frame to play at `tick` (call every 20 ms, on the output device's clock), or `None`
    /// while the stream is not playing.
    pub fn pull(&mut self, tick: Instant) -> Option<AudioFrame> {
        if !self.stretching {
            let mut out = None;
            while let Some(playout) = self.jitter.pop(tick) {
                let (frame, _) = self.decode(playout);
                out = Some(frame);
            }
            return out.map(|f| self.stamp(f.samples));
        }
        while self.pcm.len() < FRAME_SAMPLES {
            let at = tick + samples_duration(self.pcm.len());
            let Some(playout) = self.jitter.pop_at(at) else {
                break;
            };
            let (frame, packet) = self.decode(playout);
            let error = self.jitter.delay_error_us();
            let stretched = if packet {
                self.stretch(&frame.samples, error)
            } else {
                None
            };
            match stretched {
                Some(y) => self.pcm.extend(y),
                None => self.pcm.extend(frame.samples),
            }
        }
        if self.pcm.is_empty() {
            return None;
        }
        // Short only when the stream starts or stops: the rest is silence.
        let mut samples = [0i16; FRAME_SAMPLES];
        let n = self.pcm.len().min(FRAME_SAMPLES);
        for (o, s) in samples.iter_mut().zip(self.pcm.drain(..n)) {
            *o = s;
        }
        Some(self.stamp(samples))
    }

    /// Time-stretches a decoded frame when the delay is off its target by `error` µs
    /// ([`JitterBuffer::delay_error_us`]); `None` to play it as it is.
    ///
    /// Below the target it lengthens voiced or quiet frames by a pitch period, above it shortens
    /// them, with a dead band between. In speech it moves the delay only as far as stretching
    /// costs less than waiting: a shortfall up to [`EXPAND_IN_SPEECH_MAX_US`] (the next late
    /// packet of the jitter already measured, about a frame) is made up at once; a larger one
    /// (the target jumped: a spike far above what the buffer had seen, the minimum raised)
    /// would take several stretches in a row, slowing the word by up to half, and a surplus
    /// below [`ACCELERATE_IN_SPEECH_ABOVE_US`] (the target shrinking by 10 ms/s) costs only
    /// delay: both wait for the next pause, where the buffer steps by whole frames nobody hears
    /// and quiet frames are stretched, as the buffer alone defers its steps. A scorer that
    /// aligns the whole call once (STOI) reads every stretch in speech as a misalignment of
    /// what follows; `docs/quality.md` ("Clean calls") has the call where that cost 0.5 PESQ.
    /// After [`SPEECH_WAIT_FRAMES`] of speech without a pause (a song, a long vowel) the
    /// stretching moves the delay after all.
    fn stretch(&mut self, samples: &[i16], error: i64) -> Option<Vec<i16>> {
        let speech = self.speech_hang > 0;
        self.speech_frames = if speech {
            self.speech_frames.saturating_add(1)
        } else {
            0
        };
        if error < EXPAND_BELOW_US {
            let wait = speech && error < -EXPAND_IN_SPEECH_MAX_US && self.speech_frames <= SPEECH_WAIT_FRAMES;
            if wait {
                return None;
            }
            return stretch::expand(samples).inspect(|y| {
                self.stats.stretched += 1;
                self.stats.stretched_time += samples_duration(y.len() - FRAME_SAMPLES);
            });
        }
        let wait =
            speech && error <= ACCELERATE_IN_SPEECH_ABOVE_US && self.speech_frames <= SPEECH_WAIT_FRAMES;
        if error > ACCELERATE_ABOVE_US && !wait {
            return stretch::accelerate(samples).inspect(|y| {
                self.stats.accelerated += 1;
                self.stats.accelerated_time += samples_duration(FRAME_SAMPLES - y.len());
            });
        }
        None
    }

    /// Counters and the delay added now.
    pub fn stats(&self) -> PlayerStats {
        let mut stats = self.stats;
        stats.jitter = self.jitter.stats();
        stats.added_delay = stats.jitter.current_delay;
        stats
    }

    fn stamp(&mut self, samples: [i16; FRAME_SAMPLES]) -> AudioFrame {
        let frame = AudioFrame {
            timestamp: self.position,
            samples,
        };
        self.position = self.position.wrapping_add(FRAME_SAMPLES as u32);
        frame
    }

    /// Counts the whole-frame steps made in speech for one output of the buffer: an expand, and
    /// the frames the buffer dropped to hand it out.
    fn count_steps(&mut self, playout: &Playout) {
        let discarded = self.jitter.stats().discarded;
        let dropped = discarded - self.discarded;
        self.discarded = discarded;
        if self.speech_hang == 0 {
            return;
        }
        if matches!(playout, Playout::Expand) {
            self.stats.speech_inserts += 1;
        }
        self.stats.speech_drops += dropped;
    }

    /// Decodes one output of the buffer; tells whether it was a packet (not concealment), and
    /// feeds the buffer the voice activity of what was decoded.
    fn decode(&mut self, playout: Playout) -> (AudioFrame, bool) {
        self.count_steps(&playout);
        let (frame, packet) = match playout {
            Playout::Packet { payload, .. } => match self.decoder.decode(&payload) {
                Ok(f) => (f, true),
                Err(_) => (self.decoder.conceal(), false),
            },
            Playout::Lost {
                fec_from: Some(next), ..
            } => (
                self.decoder
                    .decode_fec(&next)
                    .unwrap_or_else(|_| self.decoder.conceal()),
                false,
            ),
            _ => (self.decoder.conceal(), false),
        };
        // Voice activity of what was just decoded, with a short hang-over so that a dip inside
        // a word does not count as a pause: the buffer puts its whole-frame steps in pauses.
        if frame.rms_dbfs() > SPEECH_DBFS {
            self.speech_hang = SPEECH_HANG;
        } else {
            self.speech_hang = self.speech_hang.saturating_sub(1);
        }
        self.jitter.set_speech(self.speech_hang > 0);
        (frame, packet)
    }
}

impl std::fmt::Debug for AudioPlayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AudioPlayer")
            .field("stretching", &self.stretching)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

fn samples_duration(n: usize) -> Duration {
    Duration::from_micros(n as u64 * 1_000_000 / u64::from(SAMPLE_RATE))
}
