//! The media plane: what the app configures (sources, sinks, renderers) and the tasks that move
//! audio and video between them and the server.
//!
//! One WebRTC peer connection (str0m, sans IO) per published or played stream, each on its own
//! UDP socket and driven by a small task of the engine's runtime ([`publish`], [`play`]); one
//! mixer task ([`mixer`]) that pops every played stream's jitter buffer every 20 ms, decodes,
//! mixes and writes the audio sink. `docs/media.md` has the pipeline and its latency budget.
//!
//! The app's configuration lives in [`MediaShared`], read by the tasks when they start (sources,
//! per published stream) or at every tick (the audio sink, renderers).

pub(crate) mod device;
pub(crate) mod levels;
pub(crate) mod mixer;
pub(crate) mod pc;
pub(crate) mod play;
pub(crate) mod publish;
#[cfg(test)]
mod setup_sim;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use huddle_media::{
    AudioFrame, AudioSink as _, FRAME_SAMPLES, I420Frame, MediaError, SAMPLE_RATE, WavRecorder,
};
use huddle_proto::{ErrorCode, HuddleError, MediaRole, StreamId};
use tokio::sync::mpsc;
use tracing::warn;

/// Pushed PCM kept for the publisher at most (1 s); older samples are dropped.
const PUSHED_AUDIO_MAX: usize = SAMPLE_RATE as usize;
/// Rendered PCM kept for the app at most (1 s); older samples are dropped.
const RENDERED_AUDIO_MAX: usize = SAMPLE_RATE as usize;
/// Pushed video frames kept for the publisher at most; older frames are dropped.
const PUSHED_VIDEO_MAX: usize = 4;

/// Where the published audio comes from. Set it with
/// [`Engine::set_audio_source`](crate::Engine::set_audio_source) before publishing.
///
/// Every source is read as 48 kHz mono in 20 ms frames, paced in real time by the engine, and
/// sent as Opus with the settings of [`Engine::set_audio_config`](crate::Engine::set_audio_config)
/// (48 kbit/s by default, following the network).
///
/// ```
/// use huddle::AudioSource;
/// let wav = AudioSource::Wav { path: "speech.wav".into(), looped: true };
/// let tone = AudioSource::Tone { hz: 440.0 };
/// assert_ne!(wav, tone);
/// assert_eq!(AudioSource::default(), AudioSource::Silence);
/// ```
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
#[doc(alias = "ZegoAudioSourceType")]
pub enum AudioSource {
    /// Silence (the default: these builds have no microphone unless the `device` feature is on).
    #[default]
    Silence,
    /// A WAV file of any rate and channel count, played once (then silence) or looped.
    Wav {
        /// The file.
        path: PathBuf,
        /// Start again at the end.
        looped: bool,
    },
    /// A sine tone at half of full scale.
    Tone {
        /// Its frequency, in (0, 24000) Hz.
        hz: f64,
    },
    /// PCM the app pushes with [`Engine::push_audio_frame`](crate::Engine::push_audio_frame)
    /// (custom audio capture). A 20 ms tick with too little pushed audio is padded with silence.
    #[doc(alias = "enableCustomAudioIO")]
    Custom,
    /// The microphone chosen with [`Engine::use_audio_device`](crate::Engine::use_audio_device)
    /// (the system's default until then), captured while publishing and converted to 48 kHz
    /// mono (cargo feature `device`). Setting it checks that the device opens: without a
    /// microphone, or in a build without the feature, the call fails with
    /// `DEVICE_UNAVAILABLE` (1009020) and says why.
    Microphone,
}

/// Where the published video comes from, when the camera is on
/// ([`Engine::enable_camera`](crate::Engine::enable_camera)). Sent as VP8.
///
/// ```
/// use huddle::VideoSource;
/// let pattern = VideoSource::TestPattern { width: 320, height: 240, fps: 30 };
/// assert_eq!(VideoSource::default(), pattern);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum VideoSource {
    /// A moving test pattern (colour bars and a box).
    TestPattern {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// Frames per second.
        fps: u32,
    },
    /// A Y4M file (8-bit 4:2:0 or mono), at its own frame rate.
    Y4m {
        /// The file.
        path: PathBuf,
        /// Start again at the end (otherwise the last frame is repeated).
        looped: bool,
    },
    /// I420 frames the app pushes with
    /// [`Engine::push_video_frame`](crate::Engine::push_video_frame) (custom video capture).
    /// At every tick the newest pushed frame is sent (the previous one again when none is new).
    #[doc(alias = "enableCustomVideoCapture")]
    Custom {
        /// Width of the frames, in pixels.
        width: u32,
        /// Height of the frames, in pixels.
        height: u32,
        /// Frames per second sent.
        fps: u32,
    },
}

impl Default for VideoSource {
    fn default() -> Self {
        VideoSource::TestPattern {
            width: 320,
            height: 240,
            fps: 30,
        }
    }
}

/// Where the mix of the played streams goes (48 kHz mono, one 20 ms frame every 20 ms). Set
/// it with [`Engine::set_audio_sink`](crate::Engine::set_audio_sink).
///
/// ```
/// use huddle::AudioSink;
/// let sink = AudioSink::Wav("call.wav".into());
/// assert_eq!(AudioSink::default(), AudioSink::Discard);
/// # let _ = sink;
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum AudioSink {
    /// Nowhere (the default without the `device` feature).
    #[default]
    Discard,
    /// A WAV file (48 kHz, mono, 16-bit), from the moment the sink is set until it is replaced
    /// or the engine is destroyed (then the file is complete).
    Wav(PathBuf),
    /// A buffer the app pulls with
    /// [`Engine::fetch_audio_frame`](crate::Engine::fetch_audio_frame) (custom audio render);
    /// it keeps the last second.
    #[doc(alias = "fetchCustomAudioRenderPCMData")]
    Custom,
    /// The speaker chosen with [`Engine::use_audio_device`](crate::Engine::use_audio_device)
    /// (the system's default until then; cargo feature `device`), converted from 48 kHz mono to
    /// what the device plays. Without one, or in a build without the feature,
    /// [`Engine::set_audio_sink`](crate::Engine::set_audio_sink) fails with
    /// `DEVICE_UNAVAILABLE` (1009020).
    Speaker,
}

/// Receives the decoded video frames of the played streams (custom video render). Called on the
/// engine's video thread (`huddle-sdk-vid`), one frame at a time, never on the threads that
/// move media: a slow renderer costs frames, not the call. While it is busy, up to 4 frames
/// wait; newer ones are dropped, as a display skips frames it cannot show in time.
///
/// ```
/// use huddle::{I420Frame, VideoRenderer};
/// struct Counter(std::sync::atomic::AtomicUsize);
/// impl VideoRenderer for Counter {
///     fn on_remote_video_frame(&self, _stream_id: &str, _frame: &I420Frame) {
///         self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
///     }
/// }
/// ```
#[doc(alias = "onRemoteVideoFrameRawData")]
pub trait VideoRenderer: Send + Sync + 'static {
    /// A decoded frame of `stream_id`.
    fn on_remote_video_frame(&self, stream_id: &str, frame: &I420Frame);
}

/// The app's media configuration and the buffers of custom capture and render, shared by the API
/// and the media tasks.
#[derive(Default)]
pub(crate) struct MediaShared {
    pub(crate) camera: AtomicBool,
    /// `mute_microphone`: the published audio is digital silence (see [`MediaShared::audio_muted`]).
    pub(crate) mic_muted: AtomicBool,
    /// `mute_publish_stream_audio`: as the microphone's mute, for the published stream.
    pub(crate) publish_audio_muted: AtomicBool,
    /// `mute_publish_stream_video`: no video frame is encoded or sent.
    pub(crate) publish_video_muted: AtomicBool,
    /// `mute_speaker`: the mixer writes silence to the sink.
    pub(crate) speaker_muted: AtomicBool,
    /// The played streams whose audio the app muted (`mute_play_stream_audio`): the mixer
    /// leaves them out (the server stops sending them too).
    pub(crate) muted_play_audio: Mutex<std::collections::HashSet<StreamId>>,
    /// The played streams whose video the app muted (`mute_play_stream_video`).
    pub(crate) muted_play_video: Mutex<std::collections::HashSet<StreamId>>,
    /// The played streams' audio (the mixer task reads it; the API reads their stats).
    pub(crate) mixer: Arc<mixer::Mixer>,
    /// The sound-level monitor (fed by the publish task and the mixer).
    pub(crate) levels: levels::LevelMonitor,
    /// Bumped by every `set_audio_config`: the publish tasks pick the new config up.
    pub(crate) audio_config_generation: std::sync::atomic::AtomicU64,
    config: Mutex<MediaConfig>,
    /// Where the mixer writes; replaced by `set_audio_sink`.
    sink: Mutex<SinkState>,
    pushed_audio: Mutex<VecDeque<i16>>,
    pushed_video: Mutex<VecDeque<I420Frame>>,
    rendered_audio: Mutex<VecDeque<i16>>,
    /// The queue to the video thread, while the engine runs ([`RenderThread`]).
    render: Mutex<Option<std::sync::mpsc::SyncSender<(StreamId, I420Frame)>>>,
}

/// How many decoded frames may wait for the app's [`VideoRenderer`].
pub(crate) const RENDER_QUEUE: usize = 4;

/// The thread that calls the app's [`VideoRenderer`], so that a slow one never holds up a
/// play task (whose socket carries the stream's audio too).
pub(crate) struct RenderThread {
    closing: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    media: Arc<MediaShared>,
}

impl RenderThread {
    pub(crate) fn start(media: Arc<MediaShared>) -> RenderThread {
        let (tx, rx) = std::sync::mpsc::sync_channel::<(StreamId, I420Frame)>(RENDER_QUEUE);
        *relock(&media.render) = Some(tx);
        let closing = Arc::new(AtomicBool::new(false));
        let thread = {
            let (closing, media) = (closing.clone(), media.clone());
            std::thread::Builder::new()
                .name(format!("{}vid", crate::engine::THREAD_PREFIX))
                .spawn(move || {
                    while !closing.load(Ordering::Relaxed) {
                        let Ok((stream_id, frame)) = rx.recv_timeout(std::time::Duration::from_millis(100))
                        else {
                            continue;
                        };
                        let renderer = media.config().renderer.clone();
                        if let Some(r) = renderer
                            && std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                r.on_remote_video_frame(stream_id.as_str(), &frame)
                            }))
                            .is_err()
                        {
                            tracing::error!("the video renderer panicked; continuing with the next frame");
                        }
                    }
                })
                .map_err(|e| warn!(error = %e, "cannot start the video thread; no custom video render"))
                .ok()
        };
        RenderThread {
            closing,
            thread,
            media,
        }
    }
}

impl Drop for RenderThread {
    /// Stops the thread: frames still queued are not rendered; a renderer call in progress is
    /// waited for.
    fn drop(&mut self) {
        *relock(&self.media.render) = None;
        self.closing.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[derive(Default)]
enum SinkState {
    #[default]
    Discard,
    Wav(WavRecorder),
    Custom,
    Speaker(device::Speaker),
}

#[derive(Default)]
pub(crate) struct MediaConfig {
    pub(crate) audio_source: AudioSource,
    pub(crate) audio_config: huddle_media::AudioConfig,
    pub(crate) video_source: VideoSource,
    pub(crate) renderer: Option<Arc<dyn VideoRenderer>>,
    pub(crate) y4m_sinks: HashMap<StreamId, PathBuf>,
    /// The microphone and speaker chosen with `use_audio_device` (`None`: the default).
    pub(crate) input_device: Option<String>,
    pub(crate) output_device: Option<String>,
}

impl fmt::Debug for MediaShared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.config();
        f.debug_struct("Media")
            .field("camera", &self.camera.load(Ordering::Relaxed))
            .field("audio_source", &c.audio_source)
            .field("video_source", &c.video_source)
            .finish_non_exhaustive()
    }
}

fn relock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl MediaShared {
    pub(crate) fn new() -> Self {
        let m = MediaShared::default();
        m.camera.store(true, Ordering::Relaxed);
        m
    }

    /// Hands a decoded frame to the video thread; drops it when the renderer is behind.
    pub(crate) fn render(&self, stream_id: &StreamId, frame: I420Frame) {
        if let Some(tx) = relock(&self.render).as_ref()
            && let Err(std::sync::mpsc::TrySendError::Full(_)) = tx.try_send((stream_id.clone(), frame))
        {
            tracing::debug!(%stream_id, "the video renderer is behind; frame dropped");
        }
    }

    pub(crate) fn config(&self) -> MutexGuard<'_, MediaConfig> {
        relock(&self.config)
    }

    /// Replaces the audio sink (a WAV file is created now; the previous one is completed).
    pub(crate) fn set_audio_sink(&self, sink: AudioSink) -> Result<(), HuddleError> {
        let new = match sink {
            AudioSink::Discard => SinkState::Discard,
            AudioSink::Wav(path) => SinkState::Wav(WavRecorder::create(&path).map_err(media_error)?),
            AudioSink::Custom => SinkState::Custom,
            AudioSink::Speaker => {
                let chosen = self.config().output_device.clone();
                SinkState::Speaker(device::Speaker::open(chosen.as_deref())?)
            }
        };
        let old = std::mem::replace(&mut *relock(&self.sink), new);
        if let SinkState::Wav(recorder) = old
            && let Err(e) = recorder.finish()
        {
            warn!(error = %e, "completing the recorded WAV file failed");
        }
        relock(&self.rendered_audio).clear();
        Ok(())
    }

    /// Whether the mix goes to the speaker now.
    pub(crate) fn sink_is_speaker(&self) -> bool {
        matches!(*relock(&self.sink), SinkState::Speaker(_))
    }

    /// Completes a WAV sink and closes the speaker (at the engine's end).
    pub(crate) fn finish_sink(&self) {
        let _ = self.set_audio_sink(AudioSink::Discard);
    }

    /// Whether the published audio is muted (by the microphone's mute or the stream's).
    pub(crate) fn audio_muted(&self) -> bool {
        self.mic_muted.load(Ordering::Relaxed) || self.publish_audio_muted.load(Ordering::Relaxed)
    }

    /// Whether the app muted the audio of the played stream `stream_id`.
    pub(crate) fn play_audio_muted(&self, stream_id: &StreamId) -> bool {
        relock(&self.muted_play_audio).contains(stream_id)
    }

    /// Records the app's mute of a played stream's track; returns whether it changed.
    pub(crate) fn set_play_muted(&self, stream_id: &StreamId, video: bool, mute: bool) -> bool {
        let mut set = relock(if video {
            &self.muted_play_video
        } else {
            &self.muted_play_audio
        });
        if mute {
            set.insert(stream_id.clone())
        } else {
            set.remove(stream_id)
        }
    }

    /// The app's mutes of a played stream (`[audio, video]`).
    pub(crate) fn play_muted(&self, stream_id: &StreamId) -> [bool; 2] {
        [
            relock(&self.muted_play_audio).contains(stream_id),
            relock(&self.muted_play_video).contains(stream_id),
        ]
    }

    /// Writes one mixed frame to the sink (silence while the speaker is muted, so that a
    /// recording keeps its timeline).
    pub(crate) fn write_sink(&self, frame: &AudioFrame) {
        let silence;
        let frame = if self.speaker_muted.load(Ordering::Relaxed) {
            silence = AudioFrame::silence(frame.timestamp);
            &silence
        } else {
            frame
        };
        let mut sink = relock(&self.sink);
        match &mut *sink {
            SinkState::Discard => {}
            SinkState::Wav(recorder) => {
                if let Err(e) = recorder.write_frame(frame) {
                    warn!(error = %e, "recording failed; recording stops");
                    *sink = SinkState::Discard;
                }
            }
            SinkState::Custom => {
                drop(sink);
                self.render_audio(&frame.samples);
            }
            SinkState::Speaker(speaker) => {
                speaker.ring.push(frame.samples.iter().copied());
            }
        }
    }

    pub(crate) fn push_audio(&self, samples: &[i16]) {
        let mut q = relock(&self.pushed_audio);
        q.extend(samples.iter().copied());
        let excess = q.len().saturating_sub(PUSHED_AUDIO_MAX);
        q.drain(..excess);
    }

    /// One 20 ms frame of pushed audio, padded with silence when too little was pushed.
    pub(crate) fn pull_pushed_audio(&self, out: &mut [i16; FRAME_SAMPLES]) {
        let mut q = relock(&self.pushed_audio);
        let n = q.len().min(FRAME_SAMPLES);
        for (o, s) in out.iter_mut().zip(q.drain(..n)) {
            *o = s;
        }
        out[n..].fill(0);
    }

    pub(crate) fn clear_pushed(&self) {
        relock(&self.pushed_audio).clear();
        relock(&self.pushed_video).clear();
    }

    pub(crate) fn push_video(&self, frame: I420Frame) {
        let mut q = relock(&self.pushed_video);
        q.push_back(frame);
        while q.len() > PUSHED_VIDEO_MAX {
            q.pop_front();
        }
    }

    /// The newest pushed frame, if any arrived since the last call.
    pub(crate) fn pull_pushed_video(&self) -> Option<I420Frame> {
        let mut q = relock(&self.pushed_video);
        let newest = q.pop_back();
        q.clear();
        newest
    }

    pub(crate) fn render_audio(&self, samples: &[i16]) {
        let mut q = relock(&self.rendered_audio);
        q.extend(samples.iter().copied());
        let excess = q.len().saturating_sub(RENDERED_AUDIO_MAX);
        q.drain(..excess);
    }

    pub(crate) fn fetch_rendered(&self, out: &mut [i16]) -> usize {
        let mut q = relock(&self.rendered_audio);
        let n = q.len().min(out.len());
        for (o, s) in out.iter_mut().zip(q.drain(..n)) {
            *o = s;
        }
        n
    }
}

/// A publish connection's counters, once a second (from its RTCP receiver reports). Cumulative,
/// so that the session computes rates over its own windows.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) struct PublishSample {
    pub(crate) audio_bytes: u64,
    pub(crate) video_bytes: u64,
    /// Packets the server expected of our audio (extended highest sequence number) and lost,
    /// from its last receiver report.
    pub(crate) expected: u64,
    pub(crate) lost: u64,
    /// Interarrival jitter the server reports, in ms.
    pub(crate) jitter_ms: u32,
    pub(crate) rtt: Option<std::time::Duration>,
    /// When the connection last received anything (RTCP, STUN).
    pub(crate) last_rx: Option<std::time::Instant>,
}

/// A play connection's counters, once a second.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) struct PlaySample {
    pub(crate) audio_bytes: u64,
    pub(crate) video_bytes: u64,
    /// The fraction of audio packets lost on the wire in the last RTCP interval (before RED
    /// and FEC), as our receiver report says.
    pub(crate) loss: Option<f32>,
    /// The jitter buffer's measures (`huddle_media::PlayerStats`).
    pub(crate) jitter: std::time::Duration,
    pub(crate) delay: std::time::Duration,
    pub(crate) played: u64,
    pub(crate) concealed: u64,
    /// When the connection last received anything (media, RTCP, STUN).
    pub(crate) last_rx: Option<std::time::Instant>,
}

/// What a media task reports to the engine task (and from there to the room's session).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum MediaUpdate {
    /// Publish: the first audio frame was captured.
    CapturedAudioFirstFrame,
    /// Publish: the first video frame was captured.
    CapturedVideoFirstFrame,
    /// Publish: the connection is up and the first packet went out.
    Flowing,
    /// Play: the first audio frame was decoded.
    RecvAudioFirstFrame,
    /// Play: the first video frame was decoded.
    RecvVideoFirstFrame,
    /// The connection failed or was lost (ICE, DTLS, a socket error).
    Lost,
    /// The server closed the connection (it tells why in `media_state`).
    Closed,
    /// Publish: the counters of the last second.
    PublishStats(PublishSample),
    /// Play: the counters of the last second.
    PlayStats(PlaySample),
}

/// A [`MediaUpdate`] of one peer connection.
#[derive(Debug, Clone)]
pub(crate) struct MediaEvent {
    /// The room session's login number.
    pub(crate) login: u64,
    pub(crate) stream_id: StreamId,
    pub(crate) kind: MediaRole,
    /// Which connection of this stream and kind (a newer one replaces an older one).
    pub(crate) generation: u64,
    pub(crate) update: MediaUpdate,
}

/// A media library error as an SDK error.
pub(crate) fn media_error(e: MediaError) -> HuddleError {
    HuddleError::new(ErrorCode(e.code()), e.to_string())
}

/// Reports of one task.
#[derive(Clone)]
pub(crate) struct Reporter {
    pub(crate) events: mpsc::Sender<MediaEvent>,
    pub(crate) template: MediaEvent,
}

impl Reporter {
    pub(crate) fn report(&self, update: MediaUpdate) {
        let mut e = self.template.clone();
        e.update = update;
        // Never blocks a media task; the engine task drains the queue quickly.
        let _ = self.events.try_send(e);
    }
}

/// Runs codec work and file reads and writes where they cannot hold
/// up the runtime's other tasks (the signaling connections, the engine task, the other streams'
/// sockets, the mixer): on the engine's multi-thread runtime, `block_in_place` first hands this
/// worker's other tasks to another thread. On any other runtime (tests) it runs inline.
///
/// A dedicated thread per stream for capture and encoding would also take the work off the
/// runtime; it needs the adaptive encoder settings and the keyframe requests to cross threads,
/// which this keeps simple: the task still does one thing at a time, in order.
pub(crate) fn off_runtime<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Sleeps until `at`; forever with `None`.
pub(crate) async fn sleep_opt(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod off_runtime_tests {
    use std::time::Duration;

    /// With one worker, a task blocked in `off_runtime` still lets another task run: the
    /// blocked one waits for a message only the other sends (inline it would wait out the
    /// 10 s and fail).
    #[test]
    fn work_off_the_runtime_lets_the_other_tasks_run() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            let (started_tx, started) = tokio::sync::oneshot::channel();
            let blocked = tokio::spawn(async move {
                let _ = started_tx.send(());
                super::off_runtime(|| rx.recv_timeout(Duration::from_secs(10)))
            });
            started.await.unwrap();
            let other = tokio::spawn(async move { tx.send(()).unwrap() });
            assert!(blocked.await.unwrap().is_ok(), "the other task never ran");
            other.await.unwrap();
        });
    }
}
