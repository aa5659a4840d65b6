//! The engine: the app's handle, argument checks, and the threads it owns.
//!
//! Every API call checks its arguments and the engine's state under one short lock (never held
//! while calling the app), records what it changes, and queues a request to the engine task,
//! which runs the sessions on the engine's own runtime. Nothing in an API call blocks or awaits,
//! so the API works from any thread, inside or outside a tokio runtime, and from event handlers.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};

use huddle_proto::{
    AppId, DeviceState, ErrorCode, HuddleError, RoomId, SIGNALING_PATH, StreamId, TrackKind, User,
};
use huddle_token::AppSign;
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::warn;

use crate::config::{EngineConfig, EngineProfile, RoomConfig, Scenario};
use crate::dispatch::{self, EventSink, EventStream, HandlerSlot, STREAM_CAPACITY};
use crate::driver::{Driver, Request};
use crate::event::EventHandler;
use crate::media::device::AudioDeviceType;
use crate::media::publish::{AudioInput, VideoInput};
use crate::media::{AudioSink, AudioSource, MediaShared, VideoRenderer, VideoSource};
use crate::session::{Command, Release, SessionParams, Timing};

mod im;
use huddle_media::I420Frame;

/// Requests queued from the API to the engine task; beyond this an API call fails with 1009004.
const REQUEST_QUEUE: usize = 1024;

/// The prefix of every thread the engine starts (Linux shows 15 bytes of a thread name).
pub(crate) const THREAD_PREFIX: &str = "huddle-sdk-";

/// What the API knows synchronously: whether a room is logged in and what it publishes.
#[derive(Debug, Default)]
pub(crate) struct ApiState {
    destroyed: bool,
    room: Option<ApiRoom>,
    next_id: u64,
}

#[derive(Debug)]
struct ApiRoom {
    room_id: RoomId,
    /// Which login this is, so that a late release from an older session changes nothing.
    login: u64,
    /// The publishing stream and the ticket of the call that started it.
    publisher: Option<(StreamId, u64)>,
}

impl ApiState {
    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// A session of login `login` released the room or its publisher.
    pub(crate) fn release(&mut self, login: u64, release: Release) {
        let Some(room) = &mut self.room else { return };
        if room.login != login {
            return;
        }
        match release {
            Release::Room => self.room = None,
            Release::Publisher { ticket } => {
                if room.publisher.as_ref().is_some_and(|p| p.1 == ticket) {
                    room.publisher = None;
                }
            }
        }
    }
}

pub(crate) type SharedApi = Arc<Mutex<ApiState>>;

pub(crate) fn lock(api: &Mutex<ApiState>) -> MutexGuard<'_, ApiState> {
    api.lock().unwrap_or_else(|e| e.into_inner())
}

/// State shared by the engine and its handles.
struct Shared {
    app_id: AppId,
    app_sign: Option<Arc<AppSign>>,
    scenario: Scenario,
    timing: Timing,
    /// How many servers the profile names.
    servers: usize,
    api: SharedApi,
    requests: mpsc::Sender<Request>,
    handler: HandlerSlot,
    streams: Mutex<Option<broadcast::Sender<crate::Event>>>,
    media: Arc<MediaShared>,
}

/// The Huddle engine: log in to rooms, publish and play streams.
///
/// It owns a small tokio runtime (threads `huddle-sdk-rt-N`), a control thread
/// (`huddle-sdk-eng`) and the event thread (`huddle-sdk-evt`) that calls the
/// [`EventHandler`]. [`Engine::destroy`], or dropping the engine, logs out, closes every
/// connection and joins all of them.
///
/// The methods never block and may be called from any thread, from async code and from event
/// handlers. Results of the network arrive as events; the `Err` of a method is only about its
/// arguments and the engine's state (for example 1000002 when no room is logged in).
/// Handlers and other threads reach the engine through an [`EngineHandle`].
///
/// See the [crate docs](crate) for the call flow.
pub struct Engine {
    handle: EngineHandle,
    shutdown: Option<oneshot::Sender<()>>,
    control_thread: Option<JoinHandle<()>>,
    event_thread: Option<JoinHandle<()>>,
}

/// A cheap, cloneable reference to an [`Engine`], for event handlers and other threads.
///
/// It has the engine's methods except `destroy`, and does not keep the engine alive: once the
/// engine is destroyed every method fails with 1000001 (`ENGINE_NOT_CREATED`).
#[derive(Clone)]
pub struct EngineHandle {
    shared: Arc<Shared>,
}

impl Engine {
    /// Creates an engine and starts its threads.
    ///
    /// Errors: 1001004 for AppID 0, 1001006 for an AppSign that is not 64 hexadecimal
    /// characters, 1000006 for a server address that is not `ws://host:port[/path]` or
    /// `wss://host[:port][/path]`, a `ca_cert_pem` that holds no valid PEM certificate, or a
    /// config out of range.
    ///
    /// Over `wss://` the server's certificate is checked against the system's roots and
    /// [`EngineProfile::ca_cert_pem`]; one that is not trusted fails the login with 1002030
    /// (`CONNECT_FAILED`) and a message that says so.
    #[doc(alias = "createEngine")]
    pub fn create(profile: EngineProfile) -> Result<Engine, HuddleError> {
        let app_id = AppId::new(profile.app_id)?;
        let app_sign = match profile.app_sign.as_deref() {
            None | Some("") => None,
            Some(s) => Some(Arc::new(s.parse::<AppSign>().map_err(|_| {
                HuddleError::new(
                    ErrorCode::APP_SIGN_INVALID,
                    "the AppSign must be 64 hexadecimal characters",
                )
            })?)),
        };
        let urls = std::iter::once(&profile.server)
            .chain(&profile.fallback_servers)
            .map(|s| signaling_url(s))
            .collect::<Result<Vec<_>, _>>()?;
        let servers = urls.len();
        let ca = profile.ca_cert_pem.as_deref().filter(|p| !p.trim().is_empty());
        if let Some(pem) = ca {
            crate::tls::parse_ca(pem)?;
        }
        let tls = if urls.iter().any(|url| url.starts_with("wss://")) {
            Some(crate::tls::client_config(ca)?)
        } else {
            None
        };
        let config = profile.config;
        check_config(&config)?;

        let (requests_tx, requests_rx) = mpsc::channel(REQUEST_QUEUE);
        let (events_tx, events_rx) = mpsc::channel(config.event_queue);
        let (shutdown_tx, shutdown_rx) = oneshot::channel();
        let (streams_tx, _) = broadcast::channel(STREAM_CAPACITY);
        let handler: HandlerSlot = Arc::default();
        let api: SharedApi = Arc::default();
        let media = Arc::new(MediaShared::new());
        let internal =
            |what: &str, e: std::io::Error| HuddleError::new(ErrorCode::INTERNAL, format!("{what}: {e}"));

        let event_thread = {
            let handler = handler.clone();
            thread::Builder::new()
                .name(format!("{THREAD_PREFIX}evt"))
                .spawn(move || dispatch::run(events_rx, handler))
                .map_err(|e| internal("cannot start the event thread", e))?
        };
        // The control thread builds, runs and drops the runtime, so that the runtime is never
        // dropped in the caller's (possibly async) context; it reports whether the build worked.
        let driver = Driver::new(
            crate::conn::Endpoint { urls, tls },
            Timing::from(&config),
            api.clone(),
            requests_rx,
            shutdown_rx,
            EventSink::new(events_tx, streams_tx.clone()),
            media.clone(),
        );
        let workers = config.worker_threads;
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let control_thread = thread::Builder::new()
            .name(format!("{THREAD_PREFIX}eng"))
            .spawn(move || {
                let runtime = match build_runtime(workers) {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                runtime.block_on(driver.run());
                // Outside any async context: dropping the runtime joins its threads.
                drop(runtime);
            });
        let started = match control_thread {
            Ok(t) => match ready_rx.recv() {
                Ok(Ok(())) => Ok(t),
                Ok(Err(e)) => {
                    let _ = t.join();
                    Err(internal("cannot start the engine's runtime", e))
                }
                Err(_) => {
                    let _ = t.join();
                    Err(HuddleError::new(
                        ErrorCode::INTERNAL,
                        "the engine thread ended at start",
                    ))
                }
            },
            Err(e) => Err(internal("cannot start the engine thread", e)),
        };
        let control_thread = match started {
            Ok(t) => t,
            Err(e) => {
                // The driver and its event sender are gone: the event thread ends.
                let _ = event_thread.join();
                return Err(e);
            }
        };

        let shared = Shared {
            app_id,
            app_sign,
            scenario: profile.scenario,
            timing: Timing::from(&config),
            servers,
            api,
            requests: requests_tx,
            handler,
            streams: Mutex::new(Some(streams_tx)),
            media,
        };
        Ok(Engine {
            handle: EngineHandle {
                shared: Arc::new(shared),
            },
            shutdown: Some(shutdown_tx),
            control_thread: Some(control_thread),
            event_thread: Some(event_thread),
        })
    }

    /// A handle for event handlers and other threads.
    pub fn handle(&self) -> EngineHandle {
        self.handle.clone()
    }

    /// Sets the app's event handler, replacing the previous one. Events that happen while no
    /// handler is set are not kept for it (they still reach [`Self::events`] streams).
    #[doc(alias = "setEventHandler")]
    pub fn set_event_handler(&self, handler: Arc<dyn EventHandler>) {
        self.handle.set_event_handler(handler)
    }

    /// The engine's events as an async stream, beside the handler. See [`EventStream`].
    pub fn events(&self) -> EventStream {
        self.handle.events()
    }

    /// Turns the camera on or off (on by default). An engine with the camera off publishes
    /// audio only: the media plane never adds a video track.
    #[doc(alias = "enableCamera")]
    pub fn enable_camera(&self, enable: bool) {
        self.handle.enable_camera(enable)
    }

    /// Whether the camera is on ([`Self::enable_camera`]).
    pub fn is_camera_enabled(&self) -> bool {
        self.handle.is_camera_enabled()
    }

    /// Mutes or unmutes the microphone (the published audio source, whatever it is): while
    /// muted, the published stream carries digital silence, still sent every 20 ms, and its
    /// players get [`EventHandler::on_remote_mic_state_update`] `Mute`. Callable at any time;
    /// it holds for later publishing and rooms too. See `docs/media.md`, "Mute".
    ///
    /// ```no_run
    /// # fn main() -> Result<(), huddle::HuddleError> {
    /// # let engine = huddle::Engine::create(huddle::EngineProfile::new(1, "ws://127.0.0.1:7880"))?;
    /// engine.mute_microphone(true);
    /// assert!(engine.is_microphone_muted());
    /// # Ok(()) }
    /// ```
    #[doc(alias = "muteMicrophone")]
    pub fn mute_microphone(&self, mute: bool) {
        self.handle.mute_microphone(mute)
    }

    /// Whether the microphone is muted ([`Self::mute_microphone`]).
    #[doc(alias = "isMicrophoneMuted")]
    pub fn is_microphone_muted(&self) -> bool {
        self.handle.is_microphone_muted()
    }

    /// Mutes or unmutes the speaker: every played stream is still received and decoded, and
    /// the audio sink gets silence (a WAV recording keeps its length). Local only.
    #[doc(alias = "muteSpeaker")]
    pub fn mute_speaker(&self, mute: bool) {
        self.handle.mute_speaker(mute)
    }

    /// Whether the speaker is muted ([`Self::mute_speaker`]).
    #[doc(alias = "isSpeakerMuted")]
    pub fn is_speaker_muted(&self) -> bool {
        self.handle.is_speaker_muted()
    }

    /// Stops or resumes sending the published stream's audio: as [`Self::mute_microphone`]
    /// (silence is sent, players are told `Mute`), for the published stream rather than the
    /// device. The audio is muted while either is.
    #[doc(alias = "mutePublishStreamAudio")]
    pub fn mute_publish_stream_audio(&self, mute: bool) {
        self.handle.mute_publish_stream_audio(mute)
    }

    /// Stops or resumes sending the published stream's video: while muted no video frame is
    /// encoded or sent (players keep the last frame and get
    /// [`EventHandler::on_remote_camera_state_update`] `Mute`); it resumes with a keyframe.
    #[doc(alias = "mutePublishStreamVideo")]
    pub fn mute_publish_stream_video(&self, mute: bool) {
        self.handle.mute_publish_stream_video(mute)
    }

    /// Stops or resumes receiving a played stream's audio. Muted, the server stops sending it
    /// to this engine (the downlink is spared, not only the speaker) and it is left out of the
    /// mix; unmuted, it is sent again from the next packet. Kept per stream ID until unmuted,
    /// across reconnections and later plays of the stream.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), huddle::HuddleError> {
    /// # let engine = huddle::Engine::create(huddle::EngineProfile::new(1, "ws://127.0.0.1:7880"))?;
    /// engine.start_playing_stream("s1")?;
    /// engine.mute_play_stream_audio("s1", true)?;
    /// # Ok(()) }
    /// ```
    ///
    /// Errors: the stream ID's own codes (1000014–1000016); 1000001 once destroyed.
    #[doc(alias = "mutePlayStreamAudio")]
    pub fn mute_play_stream_audio(&self, stream_id: &str, mute: bool) -> Result<(), HuddleError> {
        self.handle.mute_play_stream(stream_id, false, mute)
    }

    /// Stops or resumes receiving a played stream's video: as [`Self::mute_play_stream_audio`];
    /// when it resumes, the server asks the publisher for a keyframe to start from.
    #[doc(alias = "mutePlayStreamVideo")]
    pub fn mute_play_stream_video(&self, stream_id: &str, mute: bool) -> Result<(), HuddleError> {
        self.handle.mute_play_stream(stream_id, true, mute)
    }

    /// Chooses where the published audio comes from (default [`AudioSource::Silence`]). It
    /// applies to the media connections started after the call (publish again to switch).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), huddle::HuddleError> {
    /// # let engine = huddle::Engine::create(huddle::EngineProfile::new(1, "ws://127.0.0.1:7880"))?;
    /// engine.set_audio_source(huddle::AudioSource::Wav { path: "speech.wav".into(), looped: true })?;
    /// # Ok(()) }
    /// ```
    ///
    /// Errors: 1000006 for a file that cannot be read or a tone outside (0, 24000) Hz.
    #[doc(alias = "setAudioSource")]
    pub fn set_audio_source(&self, source: AudioSource) -> Result<(), HuddleError> {
        self.handle.set_audio_source(source)
    }

    /// Chooses the microphone ([`AudioDeviceType::Input`]) or the speaker
    /// ([`AudioDeviceType::Output`]) by the ID of [`audio_device_list`](crate::audio_device_list)
    /// (or its name); an empty `device_id` goes back to the system's default. The microphone
    /// serves [`AudioSource::Microphone`] from the next publish on; a speaker playing now
    /// ([`AudioSink::Speaker`]) moves to the new one at once.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), huddle::HuddleError> {
    /// use huddle::{AudioDeviceType, AudioSink, AudioSource, audio_device_list};
    /// # let engine = huddle::Engine::create(huddle::EngineProfile::new(1, "ws://127.0.0.1:7880"))?;
    /// if let Some(headset) = audio_device_list(AudioDeviceType::Input)?
    ///     .into_iter()
    ///     .find(|d| d.device_name.contains("Headset"))
    /// {
    ///     engine.use_audio_device(AudioDeviceType::Input, &headset.device_id)?;
    /// }
    /// engine.set_audio_source(AudioSource::Microphone)?; // fails with 1009020 without one
    /// engine.set_audio_sink(AudioSink::Speaker)?;
    /// # Ok(()) }
    /// ```
    ///
    /// Unlike ZEGO's `useAudioDevice`, a device that the system does not list is refused at
    /// once rather than when it is used.
    ///
    /// Errors: 1009084 (`DEVICE_NOT_FOUND`) for an ID or name the system does not list, 1009020
    /// when devices cannot be listed (no device support in this build, or no audio system) or
    /// the new speaker does not open, 1000001 once the engine is destroyed.
    #[doc(alias = "useAudioDevice")]
    pub fn use_audio_device(&self, device_type: AudioDeviceType, device_id: &str) -> Result<(), HuddleError> {
        self.handle.use_audio_device(device_type, device_id)
    }

    /// Sets the published audio's encoder settings: a preset of the hosted SDKs or a config of
    /// its own ([`AudioConfig`](crate::AudioConfig), default
    /// [`StandardQuality`](crate::AudioConfigPreset::StandardQuality): 48 kbit/s voice). It
    /// applies at once, also to streams being published. With `adaptive` on (the default) the
    /// bitrate and the Opus FEC follow the receivers' reports from this clean-network start
    /// (`huddle_media::AudioAdapter`).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), huddle::HuddleError> {
    /// use huddle::{AudioConfig, AudioConfigPreset};
    /// # let engine = huddle::Engine::create(huddle::EngineProfile::new(1, "ws://127.0.0.1:7880"))?;
    /// engine.set_audio_config(AudioConfig::preset(AudioConfigPreset::HighQuality))?;
    /// assert_eq!(engine.audio_config().bitrate, 128_000);
    /// # Ok(()) }
    /// ```
    ///
    /// Errors: 1000006 for a config out of range ([`AudioConfig::validate`](crate::AudioConfig::validate)),
    /// 1000001 once the engine is destroyed.
    #[doc(alias = "setAudioConfig")]
    pub fn set_audio_config(&self, config: crate::AudioConfig) -> Result<(), HuddleError> {
        self.handle.set_audio_config(config)
    }

    /// The published audio's encoder settings (see [`Engine::set_audio_config`]).
    #[doc(alias = "getAudioConfig")]
    pub fn audio_config(&self) -> crate::AudioConfig {
        self.handle.audio_config()
    }

    /// The audio receive stats of a played stream: the delay its jitter buffer adds now
    /// ([`PlayerAudioStats::added_delay`](crate::PlayerAudioStats)), its target, and what it
    /// concealed and stretched. `None` when the stream is not being played.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), huddle::HuddleError> {
    /// # let engine = huddle::Engine::create(huddle::EngineProfile::new(1, "ws://127.0.0.1:7880"))?;
    /// if let Some(stats) = engine.player_audio_stats("bob-voice") {
    ///     println!("jitter buffer delay {:?}", stats.added_delay);
    /// }
    /// # Ok(()) }
    /// ```
    #[doc(alias = "onPlayerQualityUpdate")]
    pub fn player_audio_stats(&self, stream_id: &str) -> Option<crate::PlayerAudioStats> {
        self.handle.player_audio_stats(stream_id)
    }

    /// Starts the sound-level monitor (or changes its configuration): every
    /// `config.millisecond` the captured level
    /// ([`EventHandler::on_captured_sound_level_info_update`]) and the played streams' levels
    /// ([`EventHandler::on_remote_sound_level_info_update`]), 0–100 with voice activity, and the
    /// active speakers when they change ([`EventHandler::on_active_speakers_changed`]). Levels
    /// are measured on every 20 ms frame: the captured one before encoding, each played
    /// stream's after decoding and before mixing. Callable before or after logging in.
    ///
    /// Errors: 1009065 (`SOUND_LEVEL_INTERVAL_INVALID`) for an interval outside 100–3000 ms
    /// (ZEGO's range).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), huddle::HuddleError> {
    /// # let engine = huddle::Engine::create(huddle::EngineProfile::new(1, "ws://127.0.0.1:7880"))?;
    /// use huddle::SoundLevelConfig;
    /// engine.start_sound_level_monitor(SoundLevelConfig::new(200, true))?;
    /// assert_eq!(
    ///     engine.start_sound_level_monitor(SoundLevelConfig::new(50, true)).unwrap_err().code.as_u32(),
    ///     1009065
    /// );
    /// engine.stop_sound_level_monitor();
    /// # Ok(()) }
    /// ```
    ///
    /// [`EventHandler::on_captured_sound_level_info_update`]: crate::EventHandler::on_captured_sound_level_info_update
    /// [`EventHandler::on_remote_sound_level_info_update`]: crate::EventHandler::on_remote_sound_level_info_update
    /// [`EventHandler::on_active_speakers_changed`]: crate::EventHandler::on_active_speakers_changed
    #[doc(alias = "startSoundLevelMonitor")]
    pub fn start_sound_level_monitor(&self, config: crate::SoundLevelConfig) -> Result<(), HuddleError> {
        self.handle.start_sound_level_monitor(config)
    }

    /// Stops the sound-level monitor: no more level or active-speaker events.
    #[doc(alias = "stopSoundLevelMonitor")]
    pub fn stop_sound_level_monitor(&self) {
        self.handle.stop_sound_level_monitor()
    }

    /// Chooses where the published video comes from when the camera is on (default a 320x240
    /// test pattern at 30 fps). It applies to the media connections started after the call.
    ///
    /// Errors: 1000006 for a bad size or a Y4M file that cannot be read.
    #[doc(alias = "setVideoSource")]
    pub fn set_video_source(&self, source: VideoSource) -> Result<(), HuddleError> {
        self.handle.set_video_source(source)
    }

    /// Pushes captured audio for [`AudioSource::Custom`]: 48 kHz mono samples, any count (the
    /// engine sends 960 every 20 ms). At most a second is kept; older samples are dropped.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), huddle::HuddleError> {
    /// # let engine = huddle::Engine::create(huddle::EngineProfile::new(1, "ws://127.0.0.1:7880"))?;
    /// engine.set_audio_source(huddle::AudioSource::Custom)?;
    /// let frame = [0i16; 960]; // 20 ms from the app's own capture
    /// engine.push_audio_frame(&frame)?;
    /// # Ok(()) }
    /// ```
    ///
    /// Errors: 1000001 once the engine is destroyed.
    #[doc(alias = "sendCustomAudioCapturePCMData")]
    pub fn push_audio_frame(&self, samples: &[i16]) -> Result<(), HuddleError> {
        self.handle.push_audio_frame(samples)
    }

    /// Pushes a captured video frame for [`VideoSource::Custom`] (of the size given there;
    /// others are refused). The newest frame is sent at each frame time.
    ///
    /// Errors: 1000006 for a frame of another size than the custom source's, 1000001 once the
    /// engine is destroyed.
    #[doc(alias = "sendCustomVideoCaptureRawData")]
    pub fn push_video_frame(&self, frame: I420Frame) -> Result<(), HuddleError> {
        self.handle.push_video_frame(frame)
    }

    /// Chooses where the mix of the played streams goes (default [`AudioSink::Discard`]). A WAV
    /// file is created at once and completed when the sink is replaced or the engine destroyed.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), huddle::HuddleError> {
    /// # let engine = huddle::Engine::create(huddle::EngineProfile::new(1, "ws://127.0.0.1:7880"))?;
    /// engine.set_audio_sink(huddle::AudioSink::Wav("call.wav".into()))?;
    /// # Ok(()) }
    /// ```
    ///
    /// Errors: 1000006 for a file that cannot be created.
    #[doc(alias = "setAudioSink")]
    pub fn set_audio_sink(&self, sink: AudioSink) -> Result<(), HuddleError> {
        self.handle.set_audio_sink(sink)
    }

    /// Pulls rendered audio for [`AudioSink::Custom`] into `out` (48 kHz mono); returns how
    /// many samples were written (fewer than asked when less is buffered).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), huddle::HuddleError> {
    /// # let engine = huddle::Engine::create(huddle::EngineProfile::new(1, "ws://127.0.0.1:7880"))?;
    /// engine.set_audio_sink(huddle::AudioSink::Custom)?;
    /// let mut frame = [0i16; 960];
    /// let n = engine.fetch_audio_frame(&mut frame);
    /// # let _ = n; Ok(()) }
    /// ```
    #[doc(alias = "fetchCustomAudioRenderPCMData")]
    pub fn fetch_audio_frame(&self, out: &mut [i16]) -> usize {
        self.handle.fetch_audio_frame(out)
    }

    /// Sets (or with `None` removes) the renderer that receives the decoded video frames of
    /// every played stream.
    #[doc(alias = "setCustomVideoRenderHandler")]
    pub fn set_video_renderer(&self, renderer: Option<Arc<dyn VideoRenderer>>) {
        self.handle.set_video_renderer(renderer)
    }

    /// Records the decoded video of a played stream into a Y4M file (or with `None` stops
    /// recording it), from the stream's next media connection's first frame.
    ///
    /// Errors: the stream ID's code.
    pub fn set_video_sink_y4m(&self, stream_id: &str, path: Option<PathBuf>) -> Result<(), HuddleError> {
        self.handle.set_video_sink_y4m(stream_id, path)
    }

    /// The scenario the engine was created with.
    pub fn scenario(&self) -> Scenario {
        self.handle.scenario()
    }

    /// Logs in to a room as `user`.
    ///
    /// Returns at once. The login reports `on_room_state_changed` `Logining`, then `Logined`
    /// (then the users, with `is_user_status_notify`, and the streams in the room as `Add`), or
    /// `LoginFailed` with the code: 1001005 wrong AppSign, 1001004 unknown AppID, 1002034 room
    /// full, 1002074–1002080 token refused, 1002030 no connection / 1002031 no answer within
    /// [`EngineConfig::login_timeout`]. Once logged in, a broken connection is retried
    /// (`Reconnecting`, `Reconnected`, or `ReconnectFailed` with 1002053 after
    /// [`EngineConfig::reconnect_budget`]).
    ///
    /// Errors: the room ID's code (1002011–1002013), 1002001 when a room is already logged in,
    /// 1002033 when the engine has no AppSign and `config` no token.
    #[doc(alias = "loginRoom")]
    pub fn login_room(&self, room_id: &str, user: User, config: RoomConfig) -> Result<(), HuddleError> {
        self.handle.login_room(room_id, user, config)
    }

    /// Leaves the room: `Logout`, and the publisher and players stop (`NoPublish`, `NoPlay`).
    ///
    /// Errors: 1000002 when `room_id` is not the logged-in room.
    #[doc(alias = "logoutRoom")]
    pub fn logout_room(&self, room_id: &str) -> Result<(), HuddleError> {
        self.handle.logout_room(room_id)
    }

    /// Publishes a stream under `stream_id`, unique in the AppID.
    ///
    /// Reports `PublishRequesting`, then `Publishing` when the server registered it, or
    /// `NoPublish` with the code (1003028 when another publisher uses the ID, 1003025 when the
    /// token forbids it). After a break it goes back to `PublishRequesting` (1003020) and
    /// publishes again when the room reconnects. Publishing the ID already published does nothing.
    ///
    /// Errors: the stream ID's code (1000014–1000016), 1000002 when no room is logged in,
    /// 1003026 when the engine already publishes another stream.
    #[doc(alias = "startPublishingStream")]
    pub fn start_publishing_stream(&self, stream_id: &str) -> Result<(), HuddleError> {
        self.handle.start_publishing_stream(stream_id)
    }

    /// Stops publishing (`NoPublish`). Nothing happens when nothing is published.
    ///
    /// Errors: 1000002 when no room is logged in.
    #[doc(alias = "stopPublishingStream")]
    pub fn stop_publishing_stream(&self) -> Result<(), HuddleError> {
        self.handle.stop_publishing_stream()
    }

    /// Plays a stream of this AppID, in this room or another, published now or later.
    ///
    /// Reports `PlayRequesting`, then `Playing` while the stream is published, back to
    /// `PlayRequesting` when it goes away (and with 1004020 while the connection is retrying),
    /// or `NoPlay` with the code if the server refuses (1004030 too many played streams).
    /// Playing a stream already played does nothing.
    ///
    /// Errors: the stream ID's code, 1000002 when no room is logged in.
    #[doc(alias = "startPlayingStream")]
    pub fn start_playing_stream(&self, stream_id: &str) -> Result<(), HuddleError> {
        self.handle.start_playing_stream(stream_id)
    }

    /// Stops playing a stream (`NoPlay`). Nothing happens when it is not played.
    ///
    /// Errors: the stream ID's code, 1000002 when no room is logged in.
    #[doc(alias = "stopPlayingStream")]
    pub fn stop_playing_stream(&self, stream_id: &str) -> Result<(), HuddleError> {
        self.handle.stop_playing_stream(stream_id)
    }

    /// Gives the room a new token, after `on_room_token_will_expire`. The engine sends it to
    /// the server, uses it for later reconnections, and warns again before it expires. The
    /// server checks it as a login token (same AppID, user and room; its privileges must allow
    /// the stream published now); a refusal arrives as `on_debug_error` with the code and
    /// `func_name` `"renew_token"`, and leaves the old token in force until its expiry.
    ///
    /// Errors: 1000002 when `room_id` is not the logged-in room, 1000006 for an empty token.
    #[doc(alias = "renewToken")]
    pub fn renew_token(&self, room_id: &str, token: &str) -> Result<(), HuddleError> {
        self.handle.renew_token(room_id, token)
    }

    /// Logs out if needed, closes every connection, and stops and joins every thread the engine
    /// started. The handler receives the events up to the end (the `Logout`), and none after.
    /// Dropping the engine does the same.
    ///
    /// It blocks for up to [`EngineConfig::logout_timeout`] plus a little while the server
    /// confirms the logout: from async code, call it in `spawn_blocking`.
    #[doc(alias = "destroyEngine")]
    pub fn destroy(self) {
        drop(self)
    }

    fn shutdown(&mut self) {
        {
            let mut api = lock(&self.handle.shared.api);
            api.destroyed = true;
            api.room = None;
        }
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let me = thread::current().id();
        for t in [self.control_thread.take(), self.event_thread.take()]
            .into_iter()
            .flatten()
        {
            if t.thread().id() == me {
                // Destroyed from one of its own callbacks: the thread ends when the callback returns.
                warn!("engine destroyed from its own event thread; that thread ends after the callback");
                continue;
            }
            if t.join().is_err() {
                warn!("an engine thread panicked");
            }
        }
        let shared = &self.handle.shared;
        *shared.handler.lock().unwrap_or_else(|e| e.into_inner()) = None;
        *shared.streams.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.handle.fmt(f)
    }
}

impl std::fmt::Debug for EngineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.shared;
        let api = lock(&s.api);
        f.debug_struct("Engine")
            .field("app_id", &s.app_id)
            .field("scenario", &s.scenario)
            .field("destroyed", &api.destroyed)
            .field("room", &api.room.as_ref().map(|r| &r.room_id))
            .finish_non_exhaustive()
    }
}

impl EngineHandle {
    /// Same as [`Engine::set_event_handler`].
    pub fn set_event_handler(&self, handler: Arc<dyn EventHandler>) {
        if lock(&self.shared.api).destroyed {
            return;
        }
        *self.shared.handler.lock().unwrap_or_else(|e| e.into_inner()) = Some(handler);
    }

    /// Same as [`Engine::events`]; the stream is already ended once the engine is destroyed.
    pub fn events(&self) -> EventStream {
        let streams = self.shared.streams.lock().unwrap_or_else(|e| e.into_inner());
        match &*streams {
            Some(tx) => EventStream::new(tx.subscribe()),
            None => {
                let (tx, rx) = broadcast::channel(1);
                drop(tx);
                EventStream::new(rx)
            }
        }
    }

    /// Same as [`Engine::enable_camera`].
    pub fn enable_camera(&self, enable: bool) {
        self.shared.media.camera.store(enable, Ordering::Relaxed);
    }

    /// Same as [`Engine::is_camera_enabled`].
    pub fn is_camera_enabled(&self) -> bool {
        self.shared.media.camera.load(Ordering::Relaxed)
    }

    /// Same as [`Engine::mute_microphone`].
    pub fn mute_microphone(&self, mute: bool) {
        self.shared.media.mic_muted.store(mute, Ordering::Relaxed);
        self.sync_devices();
    }

    /// Same as [`Engine::is_microphone_muted`].
    pub fn is_microphone_muted(&self) -> bool {
        self.shared.media.mic_muted.load(Ordering::Relaxed)
    }

    /// Same as [`Engine::mute_speaker`].
    pub fn mute_speaker(&self, mute: bool) {
        self.shared.media.speaker_muted.store(mute, Ordering::Relaxed);
    }

    /// Same as [`Engine::is_speaker_muted`].
    pub fn is_speaker_muted(&self) -> bool {
        self.shared.media.speaker_muted.load(Ordering::Relaxed)
    }

    /// Same as [`Engine::mute_publish_stream_audio`].
    pub fn mute_publish_stream_audio(&self, mute: bool) {
        self.shared
            .media
            .publish_audio_muted
            .store(mute, Ordering::Relaxed);
        self.sync_devices();
    }

    /// Same as [`Engine::mute_publish_stream_video`].
    pub fn mute_publish_stream_video(&self, mute: bool) {
        self.shared
            .media
            .publish_video_muted
            .store(mute, Ordering::Relaxed);
        self.sync_devices();
    }

    /// Same as [`Engine::mute_play_stream_audio`] (`video` false) and
    /// [`Engine::mute_play_stream_video`].
    pub fn mute_play_stream(&self, stream_id: &str, video: bool, mute: bool) -> Result<(), HuddleError> {
        let stream_id = StreamId::new(stream_id)?;
        let api = self.alive()?;
        self.shared.media.set_play_muted(&stream_id, video, mute);
        if let Some(room) = &api.room {
            let track = if video { TrackKind::Video } else { TrackKind::Audio };
            self.request(Request::Room {
                login: room.login,
                cmd: Command::MutePlay {
                    stream_id,
                    track,
                    mute,
                },
            })?;
        }
        Ok(())
    }

    /// Tells the room's session the publisher's microphone and camera states (it sends what
    /// changed, with every publish too).
    fn sync_devices(&self) {
        let Ok(api) = self.alive() else { return };
        if let Some(room) = &api.room {
            self.device_commands(room.login);
        }
    }

    fn device_commands(&self, login: u64) {
        let m = &self.shared.media;
        let state = |muted: bool| {
            if muted {
                DeviceState::Mute
            } else {
                DeviceState::Open
            }
        };
        for (track, muted) in [
            (TrackKind::Audio, m.audio_muted()),
            (TrackKind::Video, m.publish_video_muted.load(Ordering::Relaxed)),
        ] {
            let cmd = Command::DeviceState {
                track,
                state: state(muted),
            };
            if let Err(e) = self.request(Request::Room { login, cmd }) {
                warn!(error = %e, "the mute state could not be queued for the room");
            }
        }
    }

    /// Same as [`Engine::set_audio_source`].
    pub fn set_audio_source(&self, source: AudioSource) -> Result<(), HuddleError> {
        let mic = self.shared.media.config().input_device.clone();
        AudioInput::open(&source, mic.as_deref())?;
        drop(self.alive()?);
        self.shared.media.clear_pushed();
        self.shared.media.config().audio_source = source;
        Ok(())
    }

    /// Same as [`Engine::use_audio_device`].
    pub fn use_audio_device(&self, device_type: AudioDeviceType, device_id: &str) -> Result<(), HuddleError> {
        drop(self.alive()?);
        let chosen = if device_id.is_empty() {
            None
        } else {
            let listed = crate::audio_device_list(device_type)?;
            Some(
                crate::media::device::find(device_type, &listed, device_id)?
                    .device_id
                    .clone(),
            )
        };
        let media = &self.shared.media;
        match device_type {
            AudioDeviceType::Input => media.config().input_device = chosen,
            AudioDeviceType::Output => {
                let old = std::mem::replace(&mut media.config().output_device, chosen);
                // A speaker playing now moves to the new device; if that fails, it stays.
                if media.sink_is_speaker()
                    && let Err(e) = media.set_audio_sink(AudioSink::Speaker)
                {
                    media.config().output_device = old;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// The microphone chosen with `use_audio_device` (tests).
    #[cfg(test)]
    pub(crate) fn shared_input_device(&self) -> Option<String> {
        self.shared.media.config().input_device.clone()
    }

    /// Same as [`Engine::set_audio_config`].
    pub fn set_audio_config(&self, config: crate::AudioConfig) -> Result<(), HuddleError> {
        config.validate().map_err(crate::media::media_error)?;
        drop(self.alive()?);
        self.shared.media.config().audio_config = config;
        self.shared
            .media
            .audio_config_generation
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Same as [`Engine::player_audio_stats`].
    pub fn player_audio_stats(&self, stream_id: &str) -> Option<crate::PlayerAudioStats> {
        self.shared.media.mixer.stats(stream_id)
    }

    /// Same as [`Engine::start_sound_level_monitor`].
    pub fn start_sound_level_monitor(&self, config: crate::SoundLevelConfig) -> Result<(), HuddleError> {
        drop(self.alive()?);
        self.shared.media.levels.start(config)
    }

    /// Same as [`Engine::stop_sound_level_monitor`].
    pub fn stop_sound_level_monitor(&self) {
        self.shared.media.levels.stop()
    }

    /// Same as [`Engine::audio_config`].
    pub fn audio_config(&self) -> crate::AudioConfig {
        self.shared.media.config().audio_config.clone()
    }

    /// Same as [`Engine::set_video_source`].
    pub fn set_video_source(&self, source: VideoSource) -> Result<(), HuddleError> {
        VideoInput::open(&source)?;
        drop(self.alive()?);
        self.shared.media.config().video_source = source;
        Ok(())
    }

    /// Same as [`Engine::push_audio_frame`].
    pub fn push_audio_frame(&self, samples: &[i16]) -> Result<(), HuddleError> {
        drop(self.alive()?);
        self.shared.media.push_audio(samples);
        Ok(())
    }

    /// Same as [`Engine::push_video_frame`].
    pub fn push_video_frame(&self, frame: I420Frame) -> Result<(), HuddleError> {
        drop(self.alive()?);
        if let VideoSource::Custom { width, height, .. } = self.shared.media.config().video_source
            && (width, height) != (frame.width(), frame.height())
        {
            return Err(HuddleError::new(
                ErrorCode::INVALID_PARAMETER,
                format!(
                    "frame of {}x{} for a custom video source of {width}x{height}",
                    frame.width(),
                    frame.height()
                ),
            ));
        }
        self.shared.media.push_video(frame);
        Ok(())
    }

    /// Same as [`Engine::set_audio_sink`].
    pub fn set_audio_sink(&self, sink: AudioSink) -> Result<(), HuddleError> {
        drop(self.alive()?);
        self.shared.media.set_audio_sink(sink)
    }

    /// Same as [`Engine::fetch_audio_frame`].
    pub fn fetch_audio_frame(&self, out: &mut [i16]) -> usize {
        self.shared.media.fetch_rendered(out)
    }

    /// Same as [`Engine::set_video_renderer`].
    pub fn set_video_renderer(&self, renderer: Option<Arc<dyn VideoRenderer>>) {
        self.shared.media.config().renderer = renderer;
    }

    /// Same as [`Engine::set_video_sink_y4m`].
    pub fn set_video_sink_y4m(&self, stream_id: &str, path: Option<PathBuf>) -> Result<(), HuddleError> {
        let stream_id = StreamId::new(stream_id)?;
        let mut c = self.shared.media.config();
        match path {
            Some(p) => c.y4m_sinks.insert(stream_id, p),
            None => c.y4m_sinks.remove(&stream_id),
        };
        Ok(())
    }

    /// Same as [`Engine::scenario`].
    pub fn scenario(&self) -> Scenario {
        self.shared.scenario
    }

    /// Same as [`Engine::login_room`].
    pub fn login_room(&self, room_id: &str, user: User, config: RoomConfig) -> Result<(), HuddleError> {
        let s = &self.shared;
        let room_id = RoomId::new(room_id)?;
        let token = config.token.filter(|t| !t.is_empty());
        if token.is_none() && s.app_sign.is_none() {
            return Err(HuddleError::new(
                ErrorCode::AUTHENTICATION_FAILED,
                "this engine has no AppSign: log in with a token (RoomConfig::token)",
            ));
        }
        let mut api = self.alive()?;
        if let Some(room) = &api.room {
            return Err(HuddleError::new(
                ErrorCode::ALREADY_LOGGED_IN,
                format!("already logged in to room {}: log out first", room.room_id),
            ));
        }
        let login = api.next_id();
        let params = SessionParams {
            app_id: s.app_id,
            app_sign: s.app_sign.clone(),
            room_id: room_id.clone(),
            user,
            token,
            user_status_notify: config.is_user_status_notify,
            max_member_count: config.max_member_count,
            timing: s.timing.clone(),
            media: true,
            quality: true,
            servers: s.servers,
        };
        self.request(Request::Login {
            login,
            params: Box::new(params),
        })?;
        self.device_commands(login);
        api.room = Some(ApiRoom {
            room_id,
            login,
            publisher: None,
        });
        Ok(())
    }

    /// Same as [`Engine::logout_room`].
    pub fn logout_room(&self, room_id: &str) -> Result<(), HuddleError> {
        let room_id = RoomId::new(room_id)?;
        let mut api = self.alive()?;
        let login = match &api.room {
            Some(room) if room.room_id == room_id => room.login,
            _ => return Err(not_logged_in(&room_id)),
        };
        self.request(Request::Room {
            login,
            cmd: Command::Logout,
        })?;
        api.room = None;
        Ok(())
    }

    /// Same as [`Engine::start_publishing_stream`].
    pub fn start_publishing_stream(&self, stream_id: &str) -> Result<(), HuddleError> {
        let stream_id = StreamId::new(stream_id)?;
        let mut api = self.alive()?;
        let ticket = api.next_id();
        let room = api
            .room
            .as_mut()
            .ok_or_else(|| HuddleError::from(ErrorCode::NOT_LOGGED_IN))?;
        match &room.publisher {
            Some((id, _)) if *id == stream_id => return Ok(()),
            Some((id, _)) => {
                return Err(HuddleError::new(
                    ErrorCode::ALREADY_PUBLISHING,
                    format!("already publishing stream {id}: stop it first"),
                ));
            }
            None => {}
        }
        let login = room.login;
        self.request(Request::Room {
            login,
            cmd: Command::Publish {
                stream_id: stream_id.clone(),
                ticket,
            },
        })?;
        room.publisher = Some((stream_id, ticket));
        Ok(())
    }

    /// Same as [`Engine::stop_publishing_stream`].
    pub fn stop_publishing_stream(&self) -> Result<(), HuddleError> {
        let mut api = self.alive()?;
        let room = api
            .room
            .as_mut()
            .ok_or_else(|| HuddleError::from(ErrorCode::NOT_LOGGED_IN))?;
        if room.publisher.is_some() {
            self.request(Request::Room {
                login: room.login,
                cmd: Command::StopPublish,
            })?;
            room.publisher = None;
        }
        Ok(())
    }

    /// Same as [`Engine::start_playing_stream`].
    pub fn start_playing_stream(&self, stream_id: &str) -> Result<(), HuddleError> {
        let stream_id = StreamId::new(stream_id)?;
        let login = self.room_gen()?;
        let muted = self.shared.media.play_muted(&stream_id);
        self.request(Request::Room {
            login,
            cmd: Command::Play {
                stream_id: stream_id.clone(),
            },
        })?;
        // The app's mutes of this stream hold for a new play of it.
        for (track, mute) in [(TrackKind::Audio, muted[0]), (TrackKind::Video, muted[1])] {
            if mute {
                self.request(Request::Room {
                    login,
                    cmd: Command::MutePlay {
                        stream_id: stream_id.clone(),
                        track,
                        mute,
                    },
                })?;
            }
        }
        Ok(())
    }

    /// Same as [`Engine::stop_playing_stream`].
    pub fn stop_playing_stream(&self, stream_id: &str) -> Result<(), HuddleError> {
        let stream_id = StreamId::new(stream_id)?;
        let login = self.room_gen()?;
        self.request(Request::Room {
            login,
            cmd: Command::StopPlay { stream_id },
        })
    }

    /// Same as [`Engine::renew_token`].
    pub fn renew_token(&self, room_id: &str, token: &str) -> Result<(), HuddleError> {
        let room_id = RoomId::new(room_id)?;
        if token.is_empty() {
            return Err(HuddleError::new(
                ErrorCode::INVALID_PARAMETER,
                "the token is empty",
            ));
        }
        let api = self.alive()?;
        let login = match &api.room {
            Some(room) if room.room_id == room_id => room.login,
            _ => return Err(not_logged_in(&room_id)),
        };
        self.request(Request::Room {
            login,
            cmd: Command::RenewToken {
                token: token.to_string(),
            },
        })
    }

    /// The API state, or 1000001 once the engine is destroyed.
    fn alive(&self) -> Result<MutexGuard<'_, ApiState>, HuddleError> {
        let api = lock(&self.shared.api);
        if api.destroyed {
            return Err(ErrorCode::ENGINE_NOT_CREATED.into());
        }
        Ok(api)
    }

    fn room_gen(&self) -> Result<u64, HuddleError> {
        let api = self.alive()?;
        api.room
            .as_ref()
            .map(|r| r.login)
            .ok_or_else(|| ErrorCode::NOT_LOGGED_IN.into())
    }

    /// Queues a request for the engine task. Called with the API lock held, so that requests
    /// are queued in the order the API state changed.
    fn request(&self, req: Request) -> Result<(), HuddleError> {
        self.shared.requests.try_send(req).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                HuddleError::new(ErrorCode::RATE_LIMITED, "too many calls queued for the engine")
            }
            mpsc::error::TrySendError::Closed(_) => ErrorCode::ENGINE_NOT_CREATED.into(),
        })
    }
}

fn build_runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let counter = AtomicUsize::new(0);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        // Also the threads that take a worker's place while it runs codec work
        // (`media::off_runtime`): one per worker at most, and the device threads' spare.
        .max_blocking_threads(4)
        .thread_name_fn(move || format!("{THREAD_PREFIX}rt-{}", counter.fetch_add(1, Ordering::Relaxed)))
        .enable_all()
        .build()
}

fn not_logged_in(room_id: &RoomId) -> HuddleError {
    HuddleError::new(
        ErrorCode::NOT_LOGGED_IN,
        format!("not logged in to room {room_id}"),
    )
}

/// `ws://host:port` or `ws://host:port/path` → the signaling URL (`/ws` when no path is given);
/// the same for `wss://`.
fn signaling_url(server: &str) -> Result<String, HuddleError> {
    let bad = |why: &str| {
        HuddleError::new(
            ErrorCode::INVALID_PARAMETER,
            format!("server address {server:?}: {why}"),
        )
    };
    let server = server.trim();
    let (scheme, rest) = if let Some(rest) = server.strip_prefix("wss://") {
        ("wss", rest)
    } else if let Some(rest) = server.strip_prefix("ws://") {
        ("ws", rest)
    } else {
        return Err(bad("expected ws://host:port or wss://host[:port]"));
    };
    let (host, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(bad("no host"));
    }
    let path = if path.is_empty() || path == "/" {
        SIGNALING_PATH
    } else {
        path
    };
    Ok(format!("{scheme}://{host}{path}"))
}

fn check_config(c: &EngineConfig) -> Result<(), HuddleError> {
    let bad = |why: &str| HuddleError::new(ErrorCode::INVALID_PARAMETER, why.to_string());
    if c.worker_threads == 0 || c.worker_threads > 64 {
        return Err(bad("worker_threads must be 1..=64"));
    }
    if c.event_queue == 0 {
        return Err(bad("event_queue must be at least 1"));
    }
    if c.attempt_timeout.is_zero() || c.login_timeout.is_zero() {
        return Err(bad("login_timeout and attempt_timeout must not be zero"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_types_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Engine>();
        check::<EngineHandle>();
        check::<crate::EventStream>();
    }

    #[test]
    fn server_addresses() {
        assert_eq!(
            signaling_url("ws://127.0.0.1:7880").unwrap(),
            "ws://127.0.0.1:7880/ws"
        );
        assert_eq!(
            signaling_url("ws://127.0.0.1:7880/").unwrap(),
            "ws://127.0.0.1:7880/ws"
        );
        assert_eq!(signaling_url(" ws://h:1/ws ").unwrap(), "ws://h:1/ws");
        assert_eq!(
            signaling_url("ws://h:1/custom/path").unwrap(),
            "ws://h:1/custom/path"
        );
        assert_eq!(signaling_url("wss://h").unwrap(), "wss://h/ws");
        assert_eq!(signaling_url("wss://h:8443/x").unwrap(), "wss://h:8443/x");
        for bad in [
            "",
            "127.0.0.1:7880",
            "http://h:1",
            "ws://",
            "ws:///ws",
            "wss://",
            "https://h:1",
        ] {
            assert_eq!(
                signaling_url(bad).unwrap_err().code,
                ErrorCode::INVALID_PARAMETER,
                "{bad}"
            );
        }
    }
}
