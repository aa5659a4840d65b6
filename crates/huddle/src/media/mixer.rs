//! The mixer: every 20 ms, one frame from every played stream's jitter buffer, decoded (with
//! FEC recovery and concealment), mixed, and written to the audio sink.
//!
//! One task per engine. Ticks are due at absolute deadlines and each tick pops the jitter
//! buffers at its deadline, so every tick yields exactly one frame per stream, whatever the
//! timer's lateness.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use huddle_media::{AudioFrame, AudioPlayer, FRAME_DURATION, FRAME_SAMPLES, JitterConfig, mix};
use huddle_proto::StreamId;
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use super::MediaShared;
use super::MediaUpdate;
use super::Reporter;
use crate::event::Event;

/// The receive side of one played stream's audio: filled by its player task, drained by the
/// mixer. The jitter buffer, decoding and time-stretching are `huddle_media::AudioPlayer`.
pub(crate) struct PlayerAudio {
    pub(crate) player: AudioPlayer,
    first_decoded: bool,
    reporter: Reporter,
}

impl Drop for PlayerAudio {
    fn drop(&mut self) {
        debug!(stats = ?self.player.stats(), "played audio stream ended");
    }
}

/// Whether the players time-stretch (the default); `HUDDLE_AUDIO_STRETCH=0` in the environment
/// turns it off, a measurement knob (`scripts/quality.sh clean` compares both).
fn stretching() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("HUDDLE_AUDIO_STRETCH").map_or(true, |v| v.trim() != "0"))
}

impl PlayerAudio {
    pub(crate) fn new(reporter: Reporter) -> Option<PlayerAudio> {
        let mut player = AudioPlayer::new(JitterConfig::default()).ok()?;
        player.set_stretching(stretching());
        Some(PlayerAudio {
            player,
            first_decoded: false,
            reporter,
        })
    }

    /// The stream's jitter buffer.
    pub(crate) fn jitter(&mut self) -> &mut huddle_media::JitterBuffer {
        self.player.jitter()
    }

    /// The frame of the tick due at `tick`, if the stream is playing. The player is asked at
    /// the tick's deadline, not the real time: a late tick still yields exactly one frame.
    fn tick(&mut self, tick: Instant) -> Option<AudioFrame> {
        let frame = self.player.pull(tick);
        if !self.first_decoded && self.player.stats().jitter.played > 0 {
            self.first_decoded = true;
            self.reporter.report(MediaUpdate::RecvAudioFirstFrame);
        }
        frame
    }
}

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

    /// The audio stats of the played stream `stream_id`, if it is playing.
    pub(crate) fn stats(&self, stream_id: &str) -> Option<huddle_media::PlayerStats> {
        let players = self.players.lock().unwrap_or_else(|e| e.into_inner()).clone();
        players.iter().find_map(|p| {
            let p = p.lock().unwrap_or_else(|e| e.into_inner());
            (p.reporter.template.stream_id.as_str() == stream_id).then(|| p.player.stats())
        })
    }

    pub(crate) fn remove(&self, p: &Arc<Mutex<PlayerAudio>>) {
        self.players
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|q| !Arc::ptr_eq(p, q));
    }
}

/// Runs until `stop` fires (or its sender is dropped); then completes the sink.
/// The sound-level events go to `events` (the engine task, which delivers them as it delivers
/// every event) without waiting: a report that finds that queue full is dropped (the next one
/// follows at the interval).
pub(crate) async fn run(
    mixer: Arc<Mixer>,
    media: Arc<MediaShared>,
    events: mpsc::Sender<Event>,
    mut stop: oneshot::Receiver<()>,
) {
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
                    .any(|p| p.lock().unwrap_or_else(|e| e.into_inner()).jitter().is_starved());
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
        // Inline, not `off_runtime`: the mixer is the playback's clock, and its work per tick
        // (one Opus decode and a time-stretch per stream, a buffered sink write) is tens of
        // microseconds, less than handing the worker's other tasks to another thread each
        // 20 ms would cost; on a loaded machine that handoff made ticks late.
        let frames: Vec<(StreamId, Option<AudioFrame>)> = players
            .iter()
            .map(|p| {
                let mut p = p.lock().unwrap_or_else(|e| e.into_inner());
                let stream_id = p.reporter.template.stream_id.clone();
                // A stream the app muted is not pulled: nothing of it is heard (its level is
                // 0), and its player counts no concealment for the packets the server does not
                // send meanwhile.
                if media.play_audio_muted(&stream_id) {
                    return (stream_id, None);
                }
                let frame = p.tick(due);
                (stream_id, frame)
            })
            .collect();
        if media.levels.running() {
            let played: Vec<_> = frames.iter().map(|(id, f)| (id.clone(), f.as_ref())).collect();
            for event in media.levels.tick(&played) {
                if events.try_send(event).is_err() {
                    debug!("event queue full; a sound-level event was dropped");
                }
            }
        }
        if woke.saturating_duration_since(due) > LATE_TICK {
            budget = budget.saturating_sub(woke.elapsed());
        }
        let mixed = mix(timestamp, frames.iter().filter_map(|(_, f)| f.as_ref()));
        timestamp = timestamp.wrapping_add(FRAME_SAMPLES as u32);
        media.write_sink(&mixed);
    }
    media.finish_sink();
}
