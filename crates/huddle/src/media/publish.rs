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

/// The sans-IO core of a publish connection: sources, encoders and the stream's counters. Its
/// driver ([`run`] on a socket and the engine's clock; `media::netem` on virtual time) feeds it
/// the peer connection's events ([`Publisher::on_event`]) and calls its ticks when they are due
/// ([`Publisher::next_audio`], [`Publisher::next_video`]), with the time.
pub(crate) struct Publisher {
    reporter: Reporter,
    media: Arc<MediaShared>,
    audio: AudioInput,
    video: Option<VideoInput>,
    vp8: Option<Vp8Encoder>,
    config_generation: u64,
    adapter: AudioAdapter,
    encoder: OpusEncoder,
    configured: bool,
    audio_base: u32,
    audio_clock: Option<Pacer>,
    video_clock: Option<Pacer>,
    flowing: bool,
    captured_audio: bool,
    captured_video: bool,
    keyframe_wanted: bool,
    sample: super::PublishSample,
    /// When the connection last received anything.
    last_rx: Option<Instant>,
}

impl Publisher {
    /// A publisher of `audio` (and `video`), its RTP timestamps from `audio_base`; `None` when
    /// no Opus encoder can be made (reported as `Lost`).
    pub(crate) fn new(
        reporter: Reporter,
        media: Arc<MediaShared>,
        audio: AudioInput,
        mut video: Option<VideoInput>,
        audio_base: u32,
    ) -> Option<Publisher> {
        let config_generation = media.audio_config_generation.load(Ordering::Relaxed);
        let adapter = AudioAdapter::new(media.config().audio_config.clone());
        let Some(encoder) = new_encoder(&adapter) else {
            reporter.report(MediaUpdate::Lost);
            return None;
        };
        let vp8 = match &video {
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
        Some(Publisher {
            reporter,
            media,
            audio,
            video,
            vp8,
            config_generation,
            adapter,
            encoder,
            configured: false,
            audio_base,
            audio_clock: None,
            video_clock: None,
            flowing: false,
            captured_audio: false,
            captured_video: false,
            keyframe_wanted: false,
            sample: super::PublishSample::default(),
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
            self.reporter.report(MediaUpdate::PublishStats(self.sample));
        }
    }

    /// An event of the peer connection.
    pub(crate) fn on_event(&mut self, pc: &mut Pc, e: Event) {
        match e {
            Event::KeyframeRequest(_) => self.keyframe_wanted = true,
            // RTCP receiver reports from the server: how much of our audio it lost, and the RTT.
            Event::MediaEgressStats(s) if Some(s.mid) == pc.audio => {
                // The counters of the last report block (str0m averages `loss` only over two
                // reports within one stats interval; the server reports every few seconds).
                // Their fraction lost may be higher than the counters show: the server reports
                // the loss of the players that only have Opus FEC to repair it (`docs/quality.md`,
                // "FEC for players without RED").
                if let Some(r) = &s.remote {
                    self.adapter.on_report_block(
                        s.timestamp,
                        *r.maximum_sequence_number,
                        r.packets_lost,
                        s.loss,
                        s.rtt,
                    );
                    apply_settings(&mut self.encoder, &self.adapter, pc);
                    self.sample.expected = *r.maximum_sequence_number;
                    self.sample.lost = r.packets_lost;
                    self.sample.jitter_ms = r.jitter / 48;
                }
                // The same reports feed the quality events (the session's windows).
                self.sample.audio_bytes = s.bytes;
                self.sample.rtt = s.rtt.or(self.sample.rtt);
                self.sample.last_rx = self.last_rx;
                self.reporter.report(MediaUpdate::PublishStats(self.sample));
            }
            Event::MediaEgressStats(s) if Some(s.mid) == pc.video => self.sample.video_bytes = s.bytes,
            _ => {}
        }
    }

    /// The encoder's settings now (what the adapter made of the receiver reports).
    #[cfg(test)]
    pub(crate) fn encoder_settings(&self) -> huddle_media::EncoderSettings {
        self.adapter.settings()
    }

    /// Starts the sources' clocks at `now` once the connection is up (call after every drive).
    pub(crate) fn start_when_connected(&mut self, pc: &Pc, now: Instant) {
        if !pc.connected || self.audio_clock.is_some() {
            return;
        }
        self.audio_clock = Some(Pacer {
            start: now,
            n: 0,
            period: FRAME_DURATION,
        });
        if let Some(v) = &self.video {
            let (n, d) = v.fps();
            self.video_clock = Some(Pacer {
                start: now,
                n: 0,
                period: Duration::from_secs_f64(f64::from(d) / f64::from(n.max(1))),
            });
        }
    }

    /// When the next audio frame is due.
    pub(crate) fn next_audio(&self) -> Option<Instant> {
        self.audio_clock.as_ref().map(Pacer::due)
    }

    /// When the next video frame is due.
    pub(crate) fn next_video(&self) -> Option<Instant> {
        self.video_clock.as_ref().map(Pacer::due)
    }

    /// The audio frame due: read, encoded and written to the connection at `now`.
    pub(crate) fn audio_tick(&mut self, pc: &mut Pc, now: Instant) {
        let Some(clock) = self.audio_clock.as_mut() else {
            return;
        };
        let skipped = clock.catch_up(now);
        if skipped > 0 {
            debug!(skipped, "audio source fell behind; skipping frames");
        }
        let ts = self
            .audio_base
            .wrapping_add((clock.n as u32).wrapping_mul(FRAME_SAMPLES as u32));
        clock.n += 1;
        // The source (a file read) and the encoder run off the runtime (`off_runtime`).
        let mut frame = super::off_runtime(|| self.audio.next(&self.media, ts));
        // Muted: the source is still read (what is said while muted is dropped, not
        // delayed) and its frames are replaced by digital silence, encoded and sent at
        // the usual 20 ms pace (docs/media.md, "Mute").
        if self.media.audio_muted() {
            frame.samples.fill(0);
        }
        self.media
            .levels
            .captured(&self.reporter.template.stream_id, &frame);
        // First frame, or the application changed the audio config: (re)start from its
        // settings (and RED as it says).
        let generation = self.media.audio_config_generation.load(Ordering::Relaxed);
        if generation != self.config_generation || !self.configured {
            self.config_generation = generation;
            self.configured = true;
            let config = self.media.config().audio_config.clone();
            if config.music != self.adapter.config().music
                && let Some(e) = new_encoder(&AudioAdapter::new(config.clone()))
            {
                self.encoder = e;
            }
            self.adapter.set_config(config);
            apply_settings(&mut self.encoder, &self.adapter, pc);
        }
        if !self.captured_audio {
            self.captured_audio = true;
            self.reporter.report(MediaUpdate::CapturedAudioFirstFrame);
        }
        let packet = match super::off_runtime(|| self.encoder.encode(&frame)) {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "Opus encoding failed");
                return;
            }
        };
        let Some(mid) = pc.audio else { return };
        let Some(pt) = pc.pt(mid, Codec::Opus) else { return };
        let Some(writer) = pc.rtc.writer(mid) else { return };
        let time = MediaTime::new(u64::from(ts), Frequency::FORTY_EIGHT_KHZ);
        if writer.write(pt, now, time, packet).is_ok() && !self.flowing {
            self.flowing = true;
            self.reporter.report(MediaUpdate::Flowing);
        }
    }

    /// The video frame due: read, encoded and written to the connection at `now`.
    pub(crate) fn video_tick(&mut self, pc: &mut Pc, now: Instant) {
        let Some(clock) = self.video_clock.as_mut() else {
            return;
        };
        clock.catch_up(now);
        let (Some(input), Some(enc)) = (self.video.as_mut(), self.vp8.as_mut()) else {
            return;
        };
        let (fps_n, fps_d) = input.fps();
        let pts = (clock.n * u64::from(VIDEO_CLOCK_RATE) * u64::from(fps_d) / u64::from(fps_n.max(1))) as i64;
        clock.n += 1;
        let frame = super::off_runtime(|| input.next(&self.media));
        // Muted video sends nothing; the first frame after it is a keyframe.
        if self.media.publish_video_muted.load(Ordering::Relaxed) {
            self.keyframe_wanted = true;
            return;
        }
        if !self.captured_video {
            self.captured_video = true;
            self.reporter.report(MediaUpdate::CapturedVideoFirstFrame);
        }
        if std::mem::take(&mut self.keyframe_wanted) {
            enc.force_keyframe();
        }
        let encoded = match super::off_runtime(|| enc.encode(&frame, pts)) {
            Ok(e) => e,
            Err(e) => {
                warn!(error = %e, "VP8 encoding failed");
                return;
            }
        };
        let Some(mid) = pc.video else { return };
        let Some(pt) = pc.pt(mid, Codec::Vp8) else { return };
        for f in encoded {
            let Some(writer) = pc.rtc.writer(mid) else { break };
            let time = MediaTime::new(f.pts as u64, Frequency::NINETY_KHZ);
            if let Err(e) = writer.write(pt, now, time, f.data) {
                debug!(error = %e, "video frame not sent");
            }
        }
    }
}

/// Runs one publish connection until the engine drops its command sender or the connection is
/// lost: [`Publisher`] on the engine's clock, `pc` on its socket.
pub(crate) async fn run(
    mut pc: Pc,
    mut cmds: mpsc::Receiver<PcCommand>,
    reporter: Reporter,
    media: Arc<MediaShared>,
    audio: AudioInput,
    video: Option<VideoInput>,
) {
    let Some(mut publisher) = Publisher::new(reporter.clone(), media, audio, video, rand::random()) else {
        return;
    };
    let mut buf = vec![0u8; RECV_BUF];
    loop {
        let wake = pc.drive(|pc, e| publisher.on_event(pc, e));
        if pc.dead {
            reporter.report(pc.end_update());
            return;
        }
        publisher.start_when_connected(&pc, Instant::now());
        let next_audio = publisher.next_audio();
        let next_video = publisher.next_video();
        tokio::select! {
            cmd = cmds.recv() => match cmd {
                Some(PcCommand::Answer(sdp)) => {
                    if let Err(e) = pc.accept_answer(Instant::now(), &sdp) {
                        warn!(error = %e, "publish answer refused");
                        reporter.report(MediaUpdate::Lost);
                        return;
                    }
                }
                None => return,
            },
            r = pc.recv(&mut buf) => {
                let now = Instant::now();
                publisher.on_received(now);
                pc.on_incoming(now, r, &buf)
            }
            _ = sleep_opt(wake) => pc.timeout(Instant::now()),
            _ = sleep_opt(next_audio) => publisher.audio_tick(&mut pc, Instant::now()),
            _ = sleep_opt(next_video) => publisher.video_tick(&mut pc, Instant::now()),
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
