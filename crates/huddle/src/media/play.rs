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

/// Runs one play connection until the engine drops its command sender or the connection is
/// lost.
pub(crate) async fn run(
    mut pc: Pc,
    mut cmds: mpsc::Receiver<PcCommand>,
    reporter: Reporter,
    media: Arc<MediaShared>,
    mixer: Arc<Mixer>,
) {
    let Some(audio) = PlayerAudio::new(reporter.clone()) else {
        warn!("cannot create the Opus decoder");
        reporter.report(MediaUpdate::Lost);
        return;
    };
    let audio = Arc::new(Mutex::new(audio));
    mixer.add(audio.clone());
    let _registered = Registered {
        mixer,
        audio: audio.clone(),
    };
    let stream_id = reporter.template.stream_id.clone();
    let mut video = VideoOut {
        decoder: None,
        y4m: None,
        first: false,
        broken: false,
    };
    // Frames lost on the wire come back late from the RED redundancy of the next packets
    // (str0m recovers them): the jitter buffer's minimum delay makes room for them.
    let mut recovery = huddle_media::RecoveryDelay::new();
    let mut min_delay = recovery.min_delay();
    let mut sample = super::PlaySample::default();
    let mut last_rx: Option<Instant> = None;
    let mut buf = vec![0u8; RECV_BUF];
    loop {
        let wake = pc.drive(|pc, e| {
            let data = match e {
                Event::MediaData(data) => data,
                Event::MediaIngressStats(s) if Some(s.mid) == pc.video => {
                    sample.video_bytes = s.bytes;
                    return;
                }
                Event::MediaIngressStats(s) if Some(s.mid) == pc.audio => {
                    // Once a second: the counters for the quality events, the jitter buffer's
                    // own measures with them (`Engine::player_audio_stats` reads the same).
                    let stats = audio.lock().unwrap_or_else(|e| e.into_inner()).player.stats();
                    sample.audio_bytes = s.bytes;
                    sample.loss = s.loss.or(sample.loss);
                    sample.jitter = stats.jitter.jitter;
                    sample.delay = stats.added_delay;
                    sample.played = stats.jitter.played;
                    sample.concealed = stats.jitter.concealed;
                    sample.last_rx = last_rx;
                    reporter.report(MediaUpdate::PlayStats(sample));
                    return;
                }
                _ => return,
            };
            if Some(data.mid) == pc.audio {
                let seq = data.seq_range.start().as_u16();
                let ts = data.time.numer() as u32;
                // Arrivals against timestamps, to see what a sender does (docs/media.md).
                tracing::trace!(seq, ts, len = data.data.len(), at = ?data.network_time, "audio packet");
                let late = recovery.on_packet(seq);
                // Dated when it would have come: the buffer's jitter estimate is not raised by
                // redundancy, its minimum delay covers it.
                let arrival = data
                    .network_time
                    .checked_sub(huddle_media::FRAME_DURATION * u32::from(late))
                    .unwrap_or(data.network_time);
                let mut audio = audio.lock().unwrap_or_else(|e| e.into_inner());
                if recovery.min_delay() != min_delay {
                    min_delay = recovery.min_delay();
                    audio.jitter().set_min_delay(min_delay);
                }
                audio.jitter().insert(seq, ts, data.data.to_vec(), arrival);
            } else if Some(data.mid) == pc.video {
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
                super::off_runtime(|| match decoder.decode(&data.data) {
                    Ok(Some(frame)) => {
                        if !video.first {
                            video.first = true;
                            reporter.report(MediaUpdate::RecvVideoFirstFrame);
                            let path = media.config().y4m_sinks.get(&stream_id).cloned();
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
                            media.render(&stream_id, frame);
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
        });
        if pc.dead {
            reporter.report(pc.end_update());
            break;
        }
        tokio::select! {
            cmd = cmds.recv() => match cmd {
                Some(PcCommand::Answer(sdp)) => {
                    if let Err(e) = pc.accept_answer(&sdp) {
                        warn!(error = %e, "play answer refused");
                        reporter.report(MediaUpdate::Lost);
                        break;
                    }
                }
                None => break,
            },
            r = pc.recv(&mut buf) => {
                let now = Instant::now();
                last_rx = Some(now);
                pc.on_incoming(now, r, &buf)
            }
            _ = sleep_opt(wake) => pc.timeout(Instant::now()),
        }
    }
    if let Some(w) = video.y4m.take() {
        let _ = w.finish();
    }
}
