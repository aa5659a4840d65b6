//! The task of one published stream: sources paced in real time, Opus and VP8 encoding, and the
//! publish peer connection.
//!
//! The sources start when the connection is up (ICE and DTLS), so a file is heard from its
//! beginning. Frames are due at absolute deadlines (`start + n × interval`), so timer lateness
//! never accumulates into drift. A task that falls behind (a busy machine) catches up by sending
//! the missed frames at once, as a device's capture buffer would deliver them: nothing is lost
//! and timestamps stay true, the receiver's jitter buffer absorbs the burst. Only beyond
//! [`MAX_LAG`] (a suspended process) are the missed frames skipped.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use huddle_media::{
    AudioAdapter, AudioFrame, FRAME_DURATION, FRAME_SAMPLES, I420Frame, OpusEncoder, Playback, TestPattern,
    ToneSource, VIDEO_CLOCK_RATE, Vp8Config, Vp8Encoder, WavSource, Y4mReader,
};
use huddle_proto::HuddleError;
use str0m::Event;
use str0m::format::Codec;
use str0m::media::{Frequency, MediaTime};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::pc::{PcCommand, RECV_BUF};
use super::{AudioSource, MediaShared, MediaUpdate, Reporter, VideoSource, media_error, sleep_opt};
use crate::media::pc::Pc;

/// How far behind its deadlines a source may fall before it skips frames.
const MAX_LAG: Duration = Duration::from_secs(2);

/// The published audio, opened.
pub(crate) enum AudioInput {
    Silence,
    Source(Box<dyn huddle_media::AudioSource>),
    Custom,
    /// The microphone, open while the stream is published (closed when dropped).
    Microphone(super::device::Microphone),
}

impl AudioInput {
    /// Opens the app's audio source (errors: 1000006 for a file that cannot be read; 1009020
    /// and 1009084 for a microphone, `mic` naming the one chosen or `None` for the default).
    pub(crate) fn open(spec: &AudioSource, mic: Option<&str>) -> Result<AudioInput, HuddleError> {
        Ok(match spec {
            AudioSource::Silence => AudioInput::Silence,
            AudioSource::Wav { path, looped } => {
                let playback = if *looped { Playback::Loop } else { Playback::Once };
                AudioInput::Source(Box::new(WavSource::open(path, playback).map_err(media_error)?))
            }
            AudioSource::Tone { hz } => {
                AudioInput::Source(Box::new(ToneSource::new(*hz, 0.5).map_err(media_error)?))
            }
            AudioSource::Custom => AudioInput::Custom,
            AudioSource::Microphone => AudioInput::Microphone(super::device::Microphone::open(mic)?),
        })
    }

    fn next(&mut self, media: &MediaShared, timestamp: u32) -> AudioFrame {
        let mut frame = AudioFrame::silence(timestamp);
        match self {
            AudioInput::Silence => {}
            AudioInput::Source(s) => match s.read_frame() {
                Ok(Some(f)) => frame.samples = f.samples,
                Ok(None) => *self = AudioInput::Silence,
                Err(e) => {
                    warn!(error = %e, "audio source failed; sending silence");
                    *self = AudioInput::Silence;
                }
            },
            AudioInput::Custom => media.pull_pushed_audio(&mut frame.samples),
            AudioInput::Microphone(mic) => {
                mic.ring.pop_into(&mut frame.samples);
            }
        }
        frame
    }
}

/// The published video, opened.
pub(crate) enum VideoInput {
    Pattern(TestPattern, u32),
    Y4m {
        reader: Y4mReader,
        looped: bool,
        last: Option<I420Frame>,
        fps: (u32, u32),
    },
    Custom {
        last: I420Frame,
        fps: u32,
    },
}

impl VideoInput {
    /// Opens the app's video source (errors: 1000006 for a bad size or an unreadable file).
    pub(crate) fn open(spec: &VideoSource) -> Result<VideoInput, HuddleError> {
        Ok(match spec {
            VideoSource::TestPattern { width, height, fps } => VideoInput::Pattern(
                TestPattern::new(*width, *height).map_err(media_error)?,
                (*fps).max(1),
            ),
            VideoSource::Y4m { path, looped } => {
                let reader = Y4mReader::open(path).map_err(media_error)?;
                let (n, d) = reader.frame_rate();
                let fps = if n == 0 || d == 0 { (30, 1) } else { (n, d) };
                VideoInput::Y4m {
                    reader,
                    looped: *looped,
                    last: None,
                    fps,
                }
            }
            VideoSource::Custom { width, height, fps } => VideoInput::Custom {
                last: I420Frame::new(*width, *height).map_err(media_error)?,
                fps: (*fps).max(1),
            },
        })
    }

    fn size(&self) -> (u32, u32) {
        match self {
            VideoInput::Pattern(p, _) => {
                let f = p.frame(0);
                (f.width(), f.height())
            }
            VideoInput::Y4m { reader, .. } => (reader.width(), reader.height()),
            VideoInput::Custom { last, .. } => (last.width(), last.height()),
        }
    }

    /// Frames per second as a fraction.
    fn fps(&self) -> (u32, u32) {
        match self {
            VideoInput::Pattern(_, fps) | VideoInput::Custom { fps, .. } => (*fps, 1),
            VideoInput::Y4m { fps, .. } => *fps,
        }
    }

    fn next(&mut self, media: &MediaShared) -> I420Frame {
        match self {
            VideoInput::Pattern(p, _) => p.next_frame(),
            VideoInput::Y4m {
                reader, looped, last, ..
            } => {
                let mut frame = reader.read_frame().ok().flatten();
                if frame.is_none() && *looped && reader.rewind().is_ok() {
                    frame = reader.read_frame().ok().flatten();
                }
                match frame {
                    Some(f) => {
                        *last = Some(f.clone());
                        f
                    }
                    None => last.clone().unwrap_or_else(|| {
                        I420Frame::new(reader.width(), reader.height()).expect("size read from the file")
                    }),
                }
            }
            VideoInput::Custom { last, .. } => {
                if let Some(f) = media.pull_pushed_video()
                    && (f.width(), f.height()) == (last.width(), last.height())
                {
                    *last = f;
                }
                last.clone()
            }
        }
    }
}

/// A real-time clock of frames: `start + n × period`.
struct Pacer {
    start: Instant,
    n: u64,
    period: Duration,
}

impl Pacer {
    fn due(&self) -> Instant {
        self.start + self.period.mul_f64(self.n as f64)
    }

    /// Skips missed frames when too far behind; returns how many.
    fn catch_up(&mut self, now: Instant) -> u64 {
        let due = self.due();
        if now > due + MAX_LAG {
            let behind = ((now - due).as_secs_f64() / self.period.as_secs_f64()) as u64;
            self.n += behind;
            behind
        } else {
            0
        }
    }
}

/// Gives the encoder and the RED wrapping what the adapter asks for now.
fn apply_settings(encoder: &mut OpusEncoder, adapter: &AudioAdapter, pc: &mut Pc) {
    let settings = adapter.settings();
    match encoder.apply(&settings) {
        Ok(true) => debug!(?settings, "Opus settings"),
        Ok(false) => {}
        Err(e) => warn!(error = %e, "cannot apply the Opus settings"),
    }
    if let Some(mid) = pc.audio {
        pc.rtc.direct_api().set_red_send(mid, settings.red);
    }
}

/// A new encoder for `adapter`'s config (the application (voice or music) is fixed when an
/// encoder is made).
fn new_encoder(adapter: &AudioAdapter) -> Option<OpusEncoder> {
    match OpusEncoder::new(adapter.config().opus_config()) {
        Ok(e) => Some(e),
        Err(e) => {
            warn!(error = %e, "cannot create the Opus encoder");
            None
        }
    }
}

/// Runs one publish connection until the engine drops its command sender or the connection is
/// lost.
pub(crate) async fn run(
    mut pc: Pc,
    mut cmds: mpsc::Receiver<PcCommand>,
    reporter: Reporter,
    media: Arc<MediaShared>,
    mut audio: AudioInput,
    mut video: Option<VideoInput>,
) {
    let mut config_generation = media.audio_config_generation.load(Ordering::Relaxed);
    let mut adapter = AudioAdapter::new(media.config().audio_config.clone());
    let Some(mut encoder) = new_encoder(&adapter) else {
        reporter.report(MediaUpdate::Lost);
        return;
    };
    let mut configured = false;
    let mut vp8 = match &video {
        Some(v) => {
            let (w, h) = v.size();
            let mut config = Vp8Config::new(w, h);
            let (n, d) = v.fps();
            config.fps = (n / d.max(1)).max(1);
            match Vp8Encoder::new(config) {
                Ok(e) => Some(e),
                Err(e) => {
                    warn!(error = %e, "cannot create the VP8 encoder; audio only");
                    video = None;
                    None
                }
            }
        }
        None => None,
    };
    let audio_base: u32 = rand::random();
    let mut audio_clock: Option<Pacer> = None;
    let mut video_clock: Option<Pacer> = None;
    let mut flowing = false;
    let mut captured_audio = false;
    let mut captured_video = false;
    let mut keyframe_wanted = false;
    let mut sample = super::PublishSample::default();
    let mut last_rx: Option<Instant> = None;
    let mut buf = vec![0u8; RECV_BUF];
    loop {
        let wake = pc.drive(|pc, e| match e {
            Event::KeyframeRequest(_) => keyframe_wanted = true,
            // RTCP receiver reports from the server: how much of our audio it lost, and the RTT.
            Event::MediaEgressStats(s) if Some(s.mid) == pc.audio => {
                // The counters of the last report block (str0m averages `loss` only over two
                // reports within one stats interval; the server reports every few seconds).
                if let Some(r) = &s.remote {
                    adapter.on_cumulative(s.timestamp, *r.maximum_sequence_number, r.packets_lost, s.rtt);
                    apply_settings(&mut encoder, &adapter, pc);
                    sample.expected = *r.maximum_sequence_number;
                    sample.lost = r.packets_lost;
                    sample.jitter_ms = r.jitter / 48;
                }
                // The same reports feed the quality events (the session's windows).
                sample.audio_bytes = s.bytes;
                sample.rtt = s.rtt.or(sample.rtt);
                sample.last_rx = last_rx;
                reporter.report(MediaUpdate::PublishStats(sample));
            }
            Event::MediaEgressStats(s) if Some(s.mid) == pc.video => sample.video_bytes = s.bytes,
            _ => {}
        });
        if pc.dead {
            reporter.report(pc.end_update());
            return;
        }
        if pc.connected && audio_clock.is_none() {
            let now = Instant::now();
            audio_clock = Some(Pacer {
                start: now,
                n: 0,
                period: FRAME_DURATION,
            });
            if let Some(v) = &video {
                let (n, d) = v.fps();
                video_clock = Some(Pacer {
                    start: now,
                    n: 0,
                    period: Duration::from_secs_f64(f64::from(d) / f64::from(n.max(1))),
                });
            }
        }
        let next_audio = audio_clock.as_ref().map(Pacer::due);
        let next_video = video_clock.as_ref().map(Pacer::due);
        tokio::select! {
            cmd = cmds.recv() => match cmd {
                Some(PcCommand::Answer(sdp)) => {
                    if let Err(e) = pc.accept_answer(&sdp) {
                        warn!(error = %e, "publish answer refused");
                        reporter.report(MediaUpdate::Lost);
                        return;
                    }
                }
                None => return,
            },
            r = pc.recv(&mut buf) => {
                let now = Instant::now();
                last_rx = Some(now);
                pc.on_incoming(now, r, &buf)
            }
            _ = sleep_opt(wake) => pc.timeout(Instant::now()),
            _ = sleep_opt(next_audio) => {
                let now = Instant::now();
                let clock = audio_clock.as_mut().expect("armed");
                let skipped = clock.catch_up(now);
                if skipped > 0 {
                    debug!(skipped, "audio source fell behind; skipping frames");
                }
                let ts = audio_base.wrapping_add((clock.n as u32).wrapping_mul(FRAME_SAMPLES as u32));
                clock.n += 1;
                // The source (a file read) and the encoder run off the runtime (`off_runtime`).
                let mut frame = super::off_runtime(|| audio.next(&media, ts));
                // Muted: the source is still read (what is said while muted is dropped, not
                // delayed) and its frames are replaced by digital silence, encoded and sent at
                // the usual 20 ms pace (docs/media.md, "Mute").
                if media.audio_muted() {
                    frame.samples.fill(0);
                }
                media.levels.captured(&reporter.template.stream_id, &frame);
                // First frame, or the application changed the audio config: (re)start from its
                // settings (and RED as it says).
                let generation = media.audio_config_generation.load(Ordering::Relaxed);
                if generation != config_generation || !configured {
                    config_generation = generation;
                    configured = true;
                    let config = media.config().audio_config.clone();
                    if config.music != adapter.config().music
                        && let Some(e) = new_encoder(&AudioAdapter::new(config.clone()))
                    {
                        encoder = e;
                    }
                    adapter.set_config(config);
                    apply_settings(&mut encoder, &adapter, &mut pc);
                }
                if !captured_audio {
                    captured_audio = true;
                    reporter.report(MediaUpdate::CapturedAudioFirstFrame);
                }
                let packet = match super::off_runtime(|| encoder.encode(&frame)) {
                    Ok(p) => p,
                    Err(e) => {
                        warn!(error = %e, "Opus encoding failed");
                        continue;
                    }
                };
                let Some(mid) = pc.audio else { continue };
                let Some(pt) = pc.pt(mid, Codec::Opus) else { continue };
                let Some(writer) = pc.rtc.writer(mid) else { continue };
                let time = MediaTime::new(u64::from(ts), Frequency::FORTY_EIGHT_KHZ);
                if writer.write(pt, now, time, packet).is_ok() && !flowing {
                    flowing = true;
                    reporter.report(MediaUpdate::Flowing);
                }
            }
            _ = sleep_opt(next_video) => {
                let now = Instant::now();
                let clock = video_clock.as_mut().expect("armed");
                clock.catch_up(now);
                let (Some(input), Some(enc)) = (video.as_mut(), vp8.as_mut()) else { continue };
                let (fps_n, fps_d) = input.fps();
                let pts = (clock.n * u64::from(VIDEO_CLOCK_RATE) * u64::from(fps_d) / u64::from(fps_n.max(1))) as i64;
                clock.n += 1;
                let frame = super::off_runtime(|| input.next(&media));
                // Muted video sends nothing; the first frame after it is a keyframe.
                if media.publish_video_muted.load(Ordering::Relaxed) {
                    keyframe_wanted = true;
                    continue;
                }
                if !captured_video {
                    captured_video = true;
                    reporter.report(MediaUpdate::CapturedVideoFirstFrame);
                }
                if std::mem::take(&mut keyframe_wanted) {
                    enc.force_keyframe();
                }
                let encoded = match super::off_runtime(|| enc.encode(&frame, pts)) {
                    Ok(e) => e,
                    Err(e) => {
                        warn!(error = %e, "VP8 encoding failed");
                        continue;
                    }
                };
                let Some(mid) = pc.video else { continue };
                let Some(pt) = pc.pt(mid, Codec::Vp8) else { continue };
                for f in encoded {
                    let Some(writer) = pc.rtc.writer(mid) else { break };
                    let time = MediaTime::new(f.pts as u64, Frequency::NINETY_KHZ);
                    if let Err(e) = writer.write(pt, now, time, f.data) {
                        debug!(error = %e, "video frame not sent");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receiver_reports_move_the_encoder() {
        let t0 = Instant::now();
        let mut adapter = AudioAdapter::new(huddle_media::AudioConfig::default());
        let mut encoder = new_encoder(&adapter).unwrap();
        assert_eq!(encoder.config().bitrate, 48_000);
        assert_eq!(encoder.config().packet_loss_percent, 2);
        // Reports' cumulative counters: the first is the reference, then 25 % lost.
        adapter.on_cumulative(t0, 1_000, 10, None);
        adapter.on_cumulative(t0 + Duration::from_secs(1), 1_200, 60, None);
        assert!(encoder.apply(&adapter.settings()).unwrap());
        assert_eq!(encoder.config().packet_loss_percent, 25);
        assert!(encoder.config().bitrate > 48_000);
        // A clean network: back down slowly, to the clean-network start (FEC stays on).
        for i in 0..40 {
            adapter.on_cumulative(t0 + Duration::from_secs(2 + i), 1_400 + 250 * i, 60, None);
        }
        encoder.apply(&adapter.settings()).unwrap();
        assert_eq!(encoder.config().packet_loss_percent, 2);
        assert_eq!(encoder.config().bitrate, 48_000);
        assert!(encoder.config().fec);
    }
}
