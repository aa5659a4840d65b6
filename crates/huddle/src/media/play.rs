//! The task of one played stream: the receive-only peer connection, audio into the stream's
//! jitter buffer (the mixer decodes it), video decoded here and handed to the renderer and the
//! stream's Y4M sink.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use huddle_media::{Vp8Decoder, Y4mWriter};
use str0m::Event;
use str0m::media::KeyframeRequestKind;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::mixer::{Mixer, PlayerAudio};
use super::pc::{Pc, PcCommand, RECV_BUF};

use super::{MediaShared, MediaUpdate, Reporter, sleep_opt};

/// Unregisters the stream's audio from the mixer when the task ends, however it ends.
struct Registered {
    mixer: Arc<Mixer>,
    audio: Arc<Mutex<PlayerAudio>>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.mixer.remove(&self.audio);
    }
}

/// The video side of a played stream.
struct VideoOut {
    decoder: Option<Vp8Decoder>,
    y4m: Option<Y4mWriter>,
    first: bool,
    /// A frame was lost since the last keyframe: ask for one (and skip until it comes).
    broken: bool,
}

/// Whether a player waits for the deepest RED level the SDK sends as soon as two packets in a
/// row are often lost (the default), or only for the levels it has seen frames come back from
/// (`HUDDLE_AUDIO_RED_WAIT=seen` in the environment: a measurement knob, the behaviour before;
/// `docs/quality.md` compares both).
fn wait_for_expected_red() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("HUDDLE_AUDIO_RED_WAIT").map_or(true, |v| v.trim() != "seen"))
}

/// The sans-IO core of a play connection: what its peer connection delivers goes into the
/// stream's jitter buffer (audio) or decoder (video). Its driver ([`run`] on a socket;
/// `media::netem` on virtual time) feeds it the connection's events ([`Player::on_event`]); the
/// mixer (or the harness) pops [`Player::audio`] every 20 ms.
pub(crate) struct Player {
    reporter: Reporter,
    media: Arc<MediaShared>,
    /// The stream's audio, shared with the mixer.
    pub(crate) audio: Arc<Mutex<PlayerAudio>>,
    video: VideoOut,
    /// Frames lost on the wire come back late from the RED redundancy of the next packets
    /// (str0m recovers them): the jitter buffer's minimum delay makes room for them.
    recovery: huddle_media::RecoveryDelay,
    min_delay: std::time::Duration,
    /// When the last audio frame arrived, and the first frame that arrived then (to tell the
    /// frames recovered from RED's deeper levels).
    group: (Option<Instant>, u16, bool),
    sample: super::PlaySample,
    stream_id: huddle_proto::StreamId,
    /// When the connection last received anything.
    last_rx: Option<Instant>,
}

impl Player {
    /// A player; `None` when no Opus decoder can be made (reported as `Lost`).
    pub(crate) fn new(reporter: Reporter, media: Arc<MediaShared>) -> Option<Player> {
        let Some(audio) = PlayerAudio::new(reporter.clone()) else {
            warn!("cannot create the Opus decoder");
            reporter.report(MediaUpdate::Lost);
            return None;
        };
        let recovery = if wait_for_expected_red() {
            // The SDK's publishers send RED up to six frames back (`pc::RED_DISTANCES`).
            let deepest = super::pc::RED_DISTANCES.iter().copied().max().unwrap_or(1);
            huddle_media::RecoveryDelay::expecting(deepest as u8)
        } else {
            huddle_media::RecoveryDelay::new()
        };
        Some(Player {
            stream_id: reporter.template.stream_id.clone(),
            reporter,
            media,
            audio: Arc::new(Mutex::new(audio)),
            video: VideoOut {
                decoder: None,
                y4m: None,
                first: false,
                broken: false,
            },
            min_delay: recovery.min_delay(),
            group: (None, 0, false),
            recovery,
            sample: super::PlaySample::default(),
            last_rx: None,
        })
    }

    /// A datagram arrived at `now`. The first after a silence that the session took for an
    /// outage (`DIE_AFTER`) is reported at once with the counters, so that its network levels
    /// come back now rather than at the next stats interval, up to a second later.
    pub(crate) fn on_received(&mut self, now: Instant) {
        let was_silent = self
            .last_rx
            .is_some_and(|t| now.saturating_duration_since(t) >= crate::session::quality::DIE_AFTER);
        self.last_rx = Some(now);
        if was_silent {
            self.sample.last_rx = Some(now);
            self.reporter.report(MediaUpdate::PlayStats(self.sample));
        }
    }

    /// An event of the peer connection.
    pub(crate) fn on_event(&mut self, pc: &mut Pc, e: Event) {
        let data = match e {
            Event::MediaData(data) => data,
            Event::MediaIngressStats(s) if Some(s.mid) == pc.video => {
                self.sample.video_bytes = s.bytes;
                return;
            }
            Event::MediaIngressStats(s) if Some(s.mid) == pc.audio => {
                // Once a second: the counters for the quality events, the jitter buffer's
                // own measures with them (`Engine::player_audio_stats` reads the same).
                let stats = self
                    .audio
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .player
                    .stats();
                self.sample.audio_bytes = s.bytes;
                self.sample.loss = s.loss.or(self.sample.loss);
                self.sample.jitter = stats.jitter.jitter;
                self.sample.delay = stats.added_delay;
                self.sample.played = stats.jitter.played;
                self.sample.concealed = stats.jitter.concealed;
                self.sample.last_rx = self.last_rx;
                self.reporter.report(MediaUpdate::PlayStats(self.sample));
                return;
            }
            _ => return,
        };
        if Some(data.mid) == pc.audio {
            let seq = data.seq_range.start().as_u16();
            let ts = data.time.numer() as u32;
            // Arrivals against timestamps, to see what a sender does (docs/media.md).
            tracing::trace!(seq, ts, len = data.data.len(), at = ?data.network_time, "audio packet");
            // The frames recovered from RED come out of the connection just before the packet
            // that carried them, with its arrival time: one from further back than the frame
            // right before that packet was lost with the packet after it.
            if self.group.0 != Some(data.network_time) {
                self.group = (Some(data.network_time), seq, false);
            } else if !self.group.2 && seq.wrapping_sub(self.group.1) as i16 >= 2 {
                self.group.2 = true;
                self.recovery.on_deep_recovery();
            }
            let late = self.recovery.on_packet(seq);
            // Dated when it would have come: the buffer's jitter estimate is not raised by
            // redundancy, its minimum delay covers it.
            let arrival = data
                .network_time
                .checked_sub(huddle_media::FRAME_DURATION * u32::from(late))
                .unwrap_or(data.network_time);
            let mut audio = self.audio.lock().unwrap_or_else(|e| e.into_inner());
            if self.recovery.min_delay() != self.min_delay {
                self.min_delay = self.recovery.min_delay();
                audio.jitter().set_min_delay(self.min_delay);
            }
            audio.jitter().insert(seq, ts, data.data.to_vec(), arrival);
        } else if Some(data.mid) == pc.video {
            let video = &mut self.video;
            if !data.contiguous {
                video.broken = true;
            }
            let keyframe = huddle_media::vp8_is_keyframe(&data.data);
            if keyframe {
                video.broken = false;
            }
            if video.broken {
                if let Some(mut w) = pc.rtc.writer(data.mid) {
                    let _ = w.request_keyframe(None, KeyframeRequestKind::Pli);
                }
                return;
            }
            if video.decoder.is_none() {
                video.decoder = Vp8Decoder::new().ok();
            }
            let Some(decoder) = video.decoder.as_mut() else {
                return;
            };
            // Decoding and the Y4M recording, off the runtime; the renderer on the video thread.
            let (reporter, media, stream_id) = (&self.reporter, &self.media, &self.stream_id);
            super::off_runtime(|| match decoder.decode(&data.data) {
                Ok(Some(frame)) => {
                    if !video.first {
                        video.first = true;
                        reporter.report(MediaUpdate::RecvVideoFirstFrame);
                        let path = media.config().y4m_sinks.get(stream_id).cloned();
                        if let Some(path) = path {
                            match Y4mWriter::create(&path, frame.width(), frame.height(), (30, 1)) {
                                Ok(w) => video.y4m = Some(w),
                                Err(e) => {
                                    warn!(error = %e, path = %path.display(), "cannot record video")
                                }
                            }
                        }
                    }
                    if let Some(w) = video.y4m.as_mut()
                        && w.write_frame(&frame).is_err()
                    {
                        video.y4m = None;
                    }
                    if media.config().renderer.is_some() {
                        media.render(stream_id, frame);
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    debug!(error = %e, "undecodable video frame; asking for a keyframe");
                    video.broken = true;
                    if let Some(mut w) = pc.rtc.writer(data.mid) {
                        let _ = w.request_keyframe(None, KeyframeRequestKind::Pli);
                    }
                }
            })
        }
    }

    /// Completes the video recording, if any.
    fn finish(&mut self) {
        if let Some(w) = self.video.y4m.take() {
            let _ = w.finish();
        }
    }
}

/// Runs one play connection until the engine drops its command sender or the connection is
/// lost: [`Player`] on the engine's clock, `pc` on its socket, its audio in the `mixer`.
pub(crate) async fn run(
    mut pc: Pc,
    mut cmds: mpsc::Receiver<PcCommand>,
    reporter: Reporter,
    media: Arc<MediaShared>,
    mixer: Arc<Mixer>,
) {
    let Some(mut player) = Player::new(reporter.clone(), media) else {
        return;
    };
    mixer.add(player.audio.clone());
    let _registered = Registered {
        mixer,
        audio: player.audio.clone(),
    };
    let mut buf = vec![0u8; RECV_BUF];
    loop {
        let wake = pc.drive(|pc, e| player.on_event(pc, e));
        if pc.dead {
            reporter.report(pc.end_update());
            break;
        }
        tokio::select! {
            cmd = cmds.recv() => match cmd {
                Some(PcCommand::Answer(sdp)) => {
                    if let Err(e) = pc.accept_answer(Instant::now(), &sdp) {
                        warn!(error = %e, "play answer refused");
                        reporter.report(MediaUpdate::Lost);
                        break;
                    }
                }
                None => break,
            },
            r = pc.recv(&mut buf) => {
                let now = Instant::now();
                player.on_received(now);
                pc.on_incoming(now, r, &buf)
            }
            _ = sleep_opt(wake) => pc.timeout(Instant::now()),
        }
    }
    player.finish();
}
