//! The mixer: every 20 ms, one frame from every played stream's jitter buffer, decoded (with
//! FEC recovery and concealment), mixed, and written to the audio sink.
//!
//! One task per engine. Ticks are due at absolute deadlines and each tick pops the jitter
//! buffers at its deadline, so every tick yields exactly one frame per stream, whatever the
//! timer's lateness.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use huddle_media::{
    AudioFrame, FRAME_DURATION, FRAME_SAMPLES, JitterBuffer, JitterConfig, OpusDecoder, Playout, mix,
};
use tokio::sync::oneshot;
use tracing::debug;

use super::MediaShared;
use super::MediaUpdate;
use super::Reporter;

/// The receive side of one played stream's audio: filled by its player task, drained by the
/// mixer.
pub(crate) struct PlayerAudio {
    pub(crate) jitter: JitterBuffer,
    decoder: OpusDecoder,
    first_decoded: bool,
    reporter: Reporter,
    /// Ticks of speech still assumed after the last loud frame.
    speech_hang: u8,
}

impl Drop for PlayerAudio {
    fn drop(&mut self) {
        debug!(stats = ?self.jitter.stats(), "played audio stream ended");
    }
}

impl PlayerAudio {
    pub(crate) fn new(reporter: Reporter) -> Option<PlayerAudio> {
        Some(PlayerAudio {
            jitter: JitterBuffer::new(JitterConfig::default()),
            decoder: OpusDecoder::new().ok()?,
            first_decoded: false,
            reporter,
            speech_hang: 0,
        })
    }

    /// The frame of the tick due at `tick`, if the stream is playing. The buffer is asked at
    /// the tick's deadline, not the real time: a late tick still yields exactly one frame.
    fn tick(&mut self, tick: Instant) -> Option<AudioFrame> {
        let now = tick;
        let mut out = None;
        while let Some(playout) = self.jitter.pop(now) {
            tracing::trace!(tick = ?now, out = ?playout, stats = ?self.jitter.stats(), "audio playout");
            let frame = match playout {
                Playout::Packet { payload, .. } => match self.decoder.decode(&payload) {
                    Ok(f) => {
                        if !self.first_decoded {
                            self.first_decoded = true;
                            self.reporter.report(MediaUpdate::RecvAudioFirstFrame);
                        }
                        f
                    }
                    Err(e) => {
                        debug!(error = %e, "undecodable audio packet; concealing");
                        self.decoder.conceal()
                    }
                },
                Playout::Lost {
                    fec_from: Some(next), ..
                } => self
                    .decoder
                    .decode_fec(&next)
                    .unwrap_or_else(|_| self.decoder.conceal()),
                _ => self.decoder.conceal(),
            };
            // Voice activity of what was just played, with a short hang-over so that a dip
            // inside a word does not count as a pause: the buffer puts its delay steps there.
            if frame.rms_dbfs() > SPEECH_DBFS {
                self.speech_hang = SPEECH_HANG_TICKS;
            } else {
                self.speech_hang = self.speech_hang.saturating_sub(1);
            }
            self.jitter.set_speech(self.speech_hang > 0);
            out = Some(frame);
        }
        out
    }
}

/// A decoded frame louder than this (dBFS) is speech for the jitter buffer's delay steps.
const SPEECH_DBFS: f32 = -50.0;
/// ... and so are the next frames for this many ticks (60 ms).
const SPEECH_HANG_TICKS: u8 = 3;
/// A tick this late (the process was not scheduled) first lets the player tasks read what
/// their sockets received meanwhile, so that those packets count as arrived in time.
const LATE_TICK: std::time::Duration = std::time::Duration::from_millis(5);
/// ... and while a stream's buffer is starved, waits for it in steps of this much ...
const CATCH_UP_STEP: std::time::Duration = std::time::Duration::from_millis(2);
/// ... for at most this long in all until a tick is on time again (a stream that ended
/// while the mixer was late does not hold it up for longer).
const CATCH_UP_WAIT: std::time::Duration = std::time::Duration::from_millis(60);

/// The played streams the mixer reads.
#[derive(Default)]
pub(crate) struct Mixer {
    players: Mutex<Vec<Arc<Mutex<PlayerAudio>>>>,
}

impl Mixer {
    pub(crate) fn add(&self, p: Arc<Mutex<PlayerAudio>>) {
        self.players.lock().unwrap_or_else(|e| e.into_inner()).push(p);
    }

    pub(crate) fn remove(&self, p: &Arc<Mutex<PlayerAudio>>) {
        self.players
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|q| !Arc::ptr_eq(p, q));
    }
}

/// Runs until `stop` fires (or its sender is dropped); then completes the sink.
pub(crate) async fn run(mixer: Arc<Mixer>, media: Arc<MediaShared>, mut stop: oneshot::Receiver<()>) {
    let start = Instant::now();
    let mut n: u32 = 0;
    let mut timestamp: u32 = 0;
    let mut budget = CATCH_UP_WAIT;
    loop {
        n += 1;
        let due = start + FRAME_DURATION * n;
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep_until(due.into()) => {}
        }
        let players: Vec<_> = mixer.players.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let woke = Instant::now();
        if woke.saturating_duration_since(due) <= LATE_TICK {
            budget = CATCH_UP_WAIT;
        } else {
            // Behind real time: the process was not scheduled, and the packets of this tick
            // may be queued behind us (in our sockets, or at a sender on this machine that
            // stalled too). yield_now lets the I/O driver and the player tasks run first; a
            // starved stream gets a little more time. Nothing waits on the mixer's output but
            // the sink, which a late mixer is behind anyway.
            loop {
                for _ in 0..3 {
                    tokio::task::yield_now().await;
                }
                let starved = players
                    .iter()
                    .any(|p| p.lock().unwrap_or_else(|e| e.into_inner()).jitter.is_starved());
                if !starved || woke.elapsed() >= budget {
                    break;
                }
                tokio::select! {
                    _ = &mut stop => {
                        media.finish_sink();
                        return;
                    }
                    _ = tokio::time::sleep(CATCH_UP_STEP) => {}
                }
            }
        }
        let frames: Vec<AudioFrame> = players
            .iter()
            .filter_map(|p| p.lock().unwrap_or_else(|e| e.into_inner()).tick(due))
            .collect();
        if woke.saturating_duration_since(due) > LATE_TICK {
            budget = budget.saturating_sub(woke.elapsed());
        }
        let mixed = mix(timestamp, frames.iter());
        timestamp = timestamp.wrapping_add(FRAME_SAMPLES as u32);
        media.write_sink(&mixed);
    }
    media.finish_sink();
}
