//! The Huddle client SDK: log in to rooms on a self-hosted Huddle server, publish streams and
//! play the streams of others.
//!
//! # Quick start
//!
//! The flow is the one of the hosted RTC SDKs' quick starts, with Rust names: create the engine,
//! set a handler, log in, publish, play, and tear down.
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use huddle::{
//!     Engine, EngineProfile, ErrorCode, EventHandler, HuddleError, PlayerState, PublisherState, RoomConfig,
//!     RoomStateChangedReason, Scenario, StreamInfo, UpdateType, User, UserId,
//! };
//!
//! struct Handler;
//!
//! impl EventHandler for Handler {
//!     fn on_room_state_changed(&self, room_id: &str, reason: RoomStateChangedReason, code: ErrorCode, _: &str) {
//!         println!("room {room_id}: {reason:?} ({code:?})");
//!     }
//!     fn on_room_stream_update(&self, _room: &str, update: UpdateType, streams: &[StreamInfo], _: &str) {
//!         for s in streams {
//!             println!("stream {update:?}: {} by {}", s.stream_id, s.user_id);
//!         }
//!     }
//!     fn on_publisher_state_update(&self, stream_id: &str, state: PublisherState, code: ErrorCode, _: &str) {
//!         println!("publishing {stream_id}: {state:?} ({code:?})");
//!     }
//!     fn on_player_state_update(&self, stream_id: &str, state: PlayerState, code: ErrorCode, _: &str) {
//!         println!("playing {stream_id}: {state:?} ({code:?})");
//!     }
//! }
//!
//! fn main() -> Result<(), HuddleError> {
//!     // The AppID and AppSign the server printed (or was configured with).
//!     let mut profile = EngineProfile::new(1234, "ws://127.0.0.1:7880");
//!     profile.app_sign = Some("0123456789abcdef".repeat(4));
//!     profile.scenario = Scenario::StandardVoiceCall;
//!     let engine = Engine::create(profile)?;
//!     engine.enable_camera(false); // voice only
//!     engine.set_event_handler(Arc::new(Handler));
//!
//!     let mut config = RoomConfig::default();
//!     config.is_user_status_notify = true;
//!     engine.login_room("room-1", User::new(UserId::new("alice")?), config)?;
//!     engine.start_publishing_stream("alice-main")?;
//!     engine.start_playing_stream("bob-main")?;
//!
//!     // … the call …
//!
//!     engine.stop_publishing_stream()?;
//!     engine.stop_playing_stream("bob-main")?;
//!     engine.logout_room("room-1")?;
//!     engine.destroy();
//!     Ok(())
//! }
//! ```
//!
//! # How it works
//!
//! Every method returns at once: an `Err` is about its arguments or the engine's state, and
//! what the network says arrives as events, on one event thread, in order (or as an async
//! [`EventStream`] from [`Engine::events`]). The engine owns its threads: a control thread that
//! runs one signaling session per logged-in room on a small tokio runtime, and the event thread.
//! Each session keeps the room's users and streams as the app has seen them; when the connection
//! breaks it reconnects with backoff, resumes the server session when the server still holds it,
//! publishes and plays again when it does not, and reports only what changed.
//!
//! A slow app never hurts the call. The handler runs on the event thread, never on the engine's
//! runtime: while it is busy, heartbeats, reconnection and media go on. The video renderer has
//! a thread of its own too. Encoding (Opus, VP8), VP8 decoding and the media files' reads and
//! writes run off the runtime's scheduling (the runtime's other tasks move to another thread
//! while they run); only the mixer's per-tick Opus decoding stays inline, tens of microseconds. Events wait for a slow handler in a
//! queue of [`EngineConfig::event_queue`] (8192); past that the engine drops the newest rather
//! than wait, and reports exactly how many, where they were, with
//! [`EventHandler::on_events_dropped`] ([`Event::EventsDropped`]). An [`EventStream`] is fed
//! directly, not through the handler, and reports its own losses the same way.
//!
//! # States and codes
//!
//! | what happens | room (`on_room_state_changed`) | publisher | players |
//! | --- | --- | --- | --- |
//! | `login_room` | `Logining` (Connecting) | | |
//! | login accepted | `Logined` (Connected), then users and streams `Add` | `PublishRequesting` → `Publishing` | `PlayRequesting` → `Playing` while published |
//! | login refused or timed out | `LoginFailed` + code (Disconnected) | `NoPublish` + code | `NoPlay` + code |
//! | connection broken | `Reconnecting` 1002051 (Connecting) | `PublishRequesting` 1003020 | `PlayRequesting` 1004020 |
//! | connection back | `Reconnected`, then only the user/stream differences | `Publishing` | `Playing` |
//! | retry budget spent | `ReconnectFailed` 1002053 (Disconnected) | `NoPublish` 1002053 | `NoPlay` 1002053 |
//! | kicked out | `KickOut` 1002050 / 1002055, no retry | `NoPublish` + code | `NoPlay` + code |
//! | `logout_room` / `destroy` | `Logout` (Disconnected) | `NoPublish` | `NoPlay` |
//!
//! Every `on_room_state_changed` is followed by the `on_room_state_update` of its state. A room
//! event comes before the publisher and player events it causes. Reconnection retries at once,
//! then after 250 ms doubling to 5 s (±25% jitter), for up to 20 minutes
//! ([`EngineConfig::reconnect_budget`]); each attempt resumes the server session if the server
//! still holds it. Error codes are the system-wide table of [`ErrorCode`] (`docs/errors.md`).
//!
//! # Media
//!
//! Each published or played stream has its own WebRTC peer connection to the server's SFU
//! (str0m; ICE, DTLS-SRTP; one UDP socket per connection). A publisher is `Publishing` once its
//! connection is up and its first packet has gone out; a player is `Playing` once its first
//! frame is decoded. Audio is Opus (48 kHz mono, 20 ms, in-band FEC), played through an adaptive
//! jitter buffer with FEC recovery and concealment, and mixed; video is VP8 (keyframes on
//! request; [`Engine::enable_camera`]`(false)` negotiates no video at all).
//!
//! Sources and sinks are pluggable: [`AudioSource`] (silence, WAV file, tone, pushed PCM with
//! [`Engine::push_audio_frame`]), [`VideoSource`] (test pattern, Y4M file, pushed frames with
//! [`Engine::push_video_frame`]), [`AudioSink`] (WAV recorder, pulled PCM with
//! [`Engine::fetch_audio_frame`]), and decoded video through a [`VideoRenderer`] or
//! [`Engine::set_video_sink_y4m`].
//!
//! The microphone ([`AudioSource::Microphone`]) and the speaker ([`AudioSink::Speaker`]) need
//! the cargo feature `device` (cpal; on Linux ALSA, whose build needs `libasound2-dev`).
//! [`audio_device_list`] lists them and [`Engine::use_audio_device`] chooses one; a machine
//! without a sound card, or a build without the feature, refuses them with 1009020
//! (`DEVICE_UNAVAILABLE`) and a message that says why.
//!
//! ```no_run
//! use huddle::{AudioSink, AudioSource, Engine, EngineProfile, RoomConfig, User, UserId};
//!
//! # fn main() -> Result<(), huddle::HuddleError> {
//! let mut profile = EngineProfile::new(1234, "ws://127.0.0.1:7880");
//! profile.app_sign = Some("0123456789abcdef".repeat(4));
//! let engine = Engine::create(profile)?;
//! engine.enable_camera(false);
//! engine.set_audio_source(AudioSource::Tone { hz: 440.0 })?;
//! engine.set_audio_sink(AudioSink::Wav("heard.wav".into()))?;
//! engine.login_room("room-1", User::new(UserId::new("alice")?), RoomConfig::default())?;
//! engine.start_publishing_stream("alice-main")?;
//! engine.start_playing_stream("bob-main")?;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod config;
mod conn;
mod dispatch;
mod driver;
mod engine;
mod event;
mod media;
mod session;
mod tls;
#[cfg(test)]
mod web_tables;

pub use config::{EngineConfig, EngineProfile, RoomConfig, Scenario};
pub use dispatch::EventStream;
pub use engine::{Engine, EngineHandle};
pub use event::{
    BarrageMessageInfo, BroadcastMessageInfo, Event, EventHandler, PlayStreamQuality, PlayerState,
    PublishStreamQuality, PublisherState, RoomState, RoomStateChangedReason, SoundLevelInfo,
};
/// The audio receive stats of a played stream ([`Engine::player_audio_stats`]): the jitter
/// buffer's added delay, its counters, and the time-stretching.
pub use huddle_media::PlayerStats as PlayerAudioStats;
pub use huddle_media::{AudioConfig, AudioConfigPreset, I420Frame};
/// A played stream's publisher's microphone or camera ([`EventHandler::on_remote_mic_state_update`]):
/// ZEGO Express's `ZegoRemoteDeviceState` values Open (0), Disable (9) and Mute (10), whose
/// numbers [`RemoteDeviceState::code`] gives.
#[doc(alias = "ZegoRemoteDeviceState")]
pub use huddle_proto::DeviceState as RemoteDeviceState;
pub use huddle_proto::{
    ErrorCode, HuddleError, RoomExtraInfo, RoomId, StreamId, StreamInfo, StreamQualityLevel, UpdateType,
    User, UserId, UserName,
};
pub use media::device::{AudioDeviceType, DeviceInfo, audio_device_list};
pub use media::levels::SoundLevelConfig;
pub use media::{AudioSink, AudioSource, VideoRenderer, VideoSource};
