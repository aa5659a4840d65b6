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
}

impl PlayerAudio {
    pub(crate) fn new(reporter: Reporter) -> Option<PlayerAudio> {
        Some(PlayerAudio {
            jitter: JitterBuffer::new(JitterConfig::default()),
            decoder: OpusDecoder::new().ok()?,
            first_decoded: false,
            reporter,
        })
    }

    /// The frame of the tick due at `tick`, if the stream is playing. The buffer is asked at
    /// the tick's deadline, not the real time: a late tick still yields exactly one frame.
    fn tick(&mut self, tick: Instant) -> Option<AudioFrame> {
        let now = tick;
        let mut out = None;
        while let Some(playout) = self.jitter.pop(now) {
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
            out = Some(frame);
        }
        out
    }
}

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
    loop {
        n += 1;
        let due = start + FRAME_DURATION * n;
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep_until(due.into()) => {}
        }
        let players: Vec<_> = mixer.players.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let frames: Vec<AudioFrame> = players
            .iter()
            .filter_map(|p| p.lock().unwrap_or_else(|e| e.into_inner()).tick(due))
            .collect();
        let mixed = mix(timestamp, frames.iter());
        timestamp = timestamp.wrapping_add(FRAME_SAMPLES as u32);
        media.write_sink(&mixed);
    }
    media.finish_sink();
}
