//! The task of one played stream: the receive-only peer connection, audio into the stream's
//! jitter buffer (the mixer decodes it), video decoded here and handed to the renderer and the
//! stream's Y4M sink.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use huddle_media::{JitterBuffer, Vp8Decoder, Y4mWriter};
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

/// The audio frames of a played stream on their way to its jitter buffer, each dated when it
/// would have arrived had it not been lost and recovered from RED.
///
/// str0m hands over the frames it recovers from a packet's RED just before that packet (in
/// sequence order), all with its arrival time. Each is as late as it is behind that packet,
/// its carrier, whatever came before: a frame whose newer packets were all lost too (N, N+1,
/// N+2 lost, N+3 bringing N back from level 3) is ahead of every packet seen before, yet 60 ms
/// late. So the frames of a burst (one arrival time) are held until the burst ends (the
/// connection's output drained: [`AudioIn::flush`]) and the carrier, the last, is known.
struct AudioIn {
    /// Frames lost on the wire come back late from the RED redundancy of the next packets
    /// (str0m recovers them): the jitter buffer's minimum delay makes room for them.
    recovery: huddle_media::RecoveryDelay,
    min_delay: Duration,
    /// The frames of the burst being handed over, in the connection's order, the carrier last.
    held: Vec<Held>,
    /// The newest packet seen (the highest sequence number).
    newest: Option<u16>,
}

/// A frame held by [`AudioIn`] until its burst ends.
struct Held {
    seq: u16,
    ts: u32,
    payload: Vec<u8>,
    at: Instant,
    /// Frames behind the newest packet (known once the carrier is).
    late: u8,
}

impl AudioIn {
    fn new(recovery: huddle_media::RecoveryDelay) -> AudioIn {
        AudioIn {
            min_delay: recovery.min_delay(),
            held: Vec::new(),
            newest: None,
            recovery,
        }
    }

    /// A frame the connection handed over: RTP sequence number, timestamp, Opus payload, and
    /// the arrival time of the datagram that brought it.
    fn push(&mut self, seq: u16, ts: u32, payload: Vec<u8>, at: Instant, jitter: &mut JitterBuffer) {
        if self.held.first().is_some_and(|h| h.at != at) {
            self.flush(jitter);
        }
        self.held.push(Held {
            seq,
            ts,
            payload,
            at,
            late: 0,
        });
    }

    /// The connection has handed over all it had: the held frames go to the jitter buffer.
    fn flush(&mut self, jitter: &mut JitterBuffer) {
        let (Some(first), Some(carrier)) = (self.held.first(), self.held.last()) else {
            return;
        };
        let (first, carrier) = (first.seq, carrier.seq);
        // The carrier first: `RecoveryDelay` counts each frame behind the newest packet, so
        // the frames the carrier brought back count as late as they are behind it (and its
        // minimum delay covers them), and the carrier itself is late only if it was reordered.
        let n = self.held.len();
        self.held[n - 1].late = self.recovery.on_packet(carrier);
        let newest = self.newest;
        if newest.is_none_or(|n| carrier.wrapping_sub(n) as i16 > 0) {
            self.newest = Some(carrier);
        }
        for h in &mut self.held[..n - 1] {
            h.late = self.recovery.on_packet(h.seq);
        }
        // A frame from further back than the one right before the carrier was lost with the
        // packet after it.
        if carrier.wrapping_sub(first) as i16 >= 2 {
            self.recovery.set_speech_played(jitter.speech_played());
            self.recovery.on_deep_recovery();
        }
        if self.recovery.min_delay() != self.min_delay {
            self.min_delay = self.recovery.min_delay();
            jitter.set_min_delay(self.min_delay);
        }
        // The lateness the minimum delay in force covers. A raise waits for a pause in speech
        // (`JitterBuffer::set_min_delay`); meanwhile a frame later than that is dated late by
        // the rest, so that the buffer holds its target up for it at once as for any late
        // packet (its peak detector) rather than accelerating away from the frames coming
        // back. But never later than behind the newest packet before its burst (as all frames
        // were dated before: in a word, a larger peak than that is a step in the word).
        let frame_us = huddle_media::FRAME_DURATION.as_micros();
        let covered = (jitter.config().min_delay.as_micros() / frame_us).saturating_sub(1);
        let covered = u8::try_from(covered).unwrap_or(u8::MAX);
        for h in self.held.drain(..) {
            let behind_newest = newest
                .map_or(0, |n| n.wrapping_sub(h.seq) as i16)
                .clamp(0, i16::from(h.late));
            // The frame right before its carrier and ahead of every packet seen before: back
            // from RED's first level, or overtaken by its carrier on a jittery path (str0m then
            // hands over the carrier's copy, and the packet itself, later, is a duplicate). It
            // is dated when it came, with its carrier: a packet overtaken is the path's jitter,
            // which the buffer's estimate is there to see, and a first-level wait is one frame,
            // what the default minimum delay and FEC from the next packet wait for anyway.
            // Dated a frame earlier (as deeper levels are), every reordering of a clean jittery
            // call hid its lateness from the estimate, and the buffer played at the edge of the
            // jitter it had measured (docs/quality.md, "Score drops traced").
            let ahead = newest.is_none_or(|n| h.seq.wrapping_sub(n) as i16 > 0);
            let first_level = h.late == 1 && ahead;
            let late = if first_level {
                0
            } else {
                h.late.min(covered).max(behind_newest as u8)
            };
            // Dated when it would have come: the buffer's jitter estimate is not raised by
            // redundancy, its minimum delay covers it.
            let arrival =
                h.at.checked_sub(huddle_media::FRAME_DURATION * u32::from(late))
                    .unwrap_or(h.at);
            jitter.insert(h.seq, h.ts, h.payload, arrival);
        }
    }
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
    /// The audio frames on their way to the jitter buffer, dated.
    audio_in: AudioIn,
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
            audio_in: AudioIn::new(recovery),
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
            // Arrivals against timestamps, to see what a sender does (docs/media.md), and the
            // payload, to decode or replay what came offline (scripts/fec_replay.py).
            tracing::trace!(seq, ts, len = data.data.len(), at = ?data.network_time, payload = %data.data.iter().map(|b| format!("{b:02x}")).collect::<String>(), "audio packet");
            let mut audio = self.audio.lock().unwrap_or_else(|e| e.into_inner());
            self.audio_in
                .push(seq, ts, data.data.to_vec(), data.network_time, audio.jitter());
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

    /// The connection has handed over everything it had (its `drive` returned): the audio
    /// frames held until the datagram that carried them was known go to the jitter buffer.
    /// Called after every drive, so no frame waits longer than that.
    pub(crate) fn flush_audio(&mut self) {
        let mut audio = self.audio.lock().unwrap_or_else(|e| e.into_inner());
        self.audio_in.flush(audio.jitter());
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
        player.flush_audio();
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use huddle_media::{FRAME_DURATION, JitterConfig, RecoveryDelay};
    use rand::{Rng, SeedableRng};

    use super::*;

    /// Packet `seq` of a stream of 20 ms frames sent with RED at the SDK's distances arrives
    /// (50 ms on the way, no jitter), handed to `audio_in` as str0m hands it over: the
    /// still-missing frames it carries a copy of in sequence order before it, all with its
    /// arrival time, then the end of the burst.
    fn arrive(
        seq: u16,
        have: &mut BTreeSet<u16>,
        audio_in: &mut AudioIn,
        jitter: &mut JitterBuffer,
        t0: Instant,
    ) {
        let at = t0 + Duration::from_millis(50) + FRAME_DURATION * u32::from(seq);
        let mut burst: BTreeSet<u16> = crate::media::pc::RED_DISTANCES
            .iter()
            .filter_map(|&d| seq.checked_sub(d as u16))
            .filter(|s| !have.contains(s))
            .collect();
        burst.insert(seq);
        for s in burst {
            have.insert(s);
            audio_in.push(s, u32::from(s) * 960, vec![1; 40], at, jitter);
        }
        audio_in.flush(jitter);
    }

    /// `loss` of the packets lost at random (seeded): the jitter buffer's largest jitter
    /// estimate and target delay after the first second.
    fn red_stream(loss: f64, seed: u64) -> (Duration, Duration) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut audio_in = AudioIn::new(RecoveryDelay::expecting(6));
        let mut jitter = JitterBuffer::new(JitterConfig::default());
        let t0 = Instant::now();
        let mut have = BTreeSet::new();
        let (mut max_jitter, mut max_target) = (Duration::ZERO, Duration::ZERO);
        for seq in 0..1500u16 {
            if seq > 0 && rng.gen_bool(loss) {
                continue;
            }
            arrive(seq, &mut have, &mut audio_in, &mut jitter, t0);
            if seq >= 50 {
                let stats = jitter.stats();
                max_jitter = max_jitter.max(stats.jitter);
                max_target = max_target.max(stats.target_delay);
            }
        }
        (max_jitter, max_target)
    }

    #[test]
    fn red_recovered_frames_are_dated_by_their_carrier() {
        // Before the frames were dated by their carrier (by the newest packet seen before it):
        // jitter estimate up to 20, 60, 80 ms, target up to 160, 200, 200 ms.
        for (loss, seed) in [(0.1, 1), (0.3, 2), (0.5, 3)] {
            let (jitter, target) = red_stream(loss, seed);
            eprintln!("loss {loss}: jitter estimate up to {jitter:?}, target up to {target:?}");
            // Every frame is dated when it would have come, or, back from the first level,
            // when its carrier came (one frame late: the wait of the default minimum delay,
            // and of FEC from the next packet): at most one frame of jitter seen. The target
            // is the minimum delay `RecoveryDelay` asks for (at most the deepest level's,
            // 140 ms), one frame more when the buffer started over on a first-level frame
            // (this stream is never played out, so the buffer restarts every 64 frames).
            assert!(jitter <= FRAME_DURATION, "loss {loss}: {jitter:?}");
            assert!(
                target <= Duration::from_millis(140) + FRAME_DURATION,
                "loss {loss}: {target:?}"
            );
        }
    }

    #[test]
    fn frames_recovered_ahead_of_every_packet_seen_are_late_by_their_carrier() {
        for speech_played in [true, false] {
            let mut audio_in = AudioIn::new(RecoveryDelay::expecting(6));
            let mut jitter = JitterBuffer::new(JitterConfig::default());
            let t0 = Instant::now();
            let mut have = BTreeSet::new();
            let mut targets = Vec::new();
            // Packets 30-32 lost: 33 brings back 32 and 30 (levels 1 and 3; 30 is ahead of
            // every packet seen before, yet 60 ms late), 34 brings back 31 (level 3).
            for seq in 0..100u16 {
                if !(30..33).contains(&seq) {
                    arrive(seq, &mut have, &mut audio_in, &mut jitter, t0);
                }
                if seq == 0 && speech_played {
                    // The listener has heard speech (this stream is never played out).
                    jitter.set_speech(true);
                }
                // Before: 20 ms from packet 34 on for 2 s (30 dated 60 ms late, 32 and 31 20 ms).
                assert_eq!(jitter.stats().jitter, Duration::ZERO, "seq {seq}: dated as sent");
                if targets.last() != Some(&jitter.stats().target_delay) {
                    targets.push(jitter.stats().target_delay);
                }
            }
            // After speech: 20 ms, then 80 ms for frames three packets late (before: the same,
            // as the peak of a 60 ms jitter spike), then 140 ms at once for the deepest level:
            // two frames came back from beyond the first level (the deep-recovery detection).
            // Before any speech one is enough: 140 ms at the first.
            let wanted: &[u64] = if speech_played { &[20, 80, 140] } else { &[20, 140] };
            let wanted: Vec<Duration> = wanted.iter().map(|&ms| Duration::from_millis(ms)).collect();
            assert_eq!(targets, wanted, "speech played: {speech_played}");
        }
    }
}
