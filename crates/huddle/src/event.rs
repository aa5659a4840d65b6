//! States, events and the [`EventHandler`] trait.

use huddle_proto::DeviceState as RemoteDeviceState;
use std::collections::BTreeMap;

use huddle_proto::{
    ErrorCode, RoomExtraInfo, RoomId, StreamId, StreamInfo, StreamQualityLevel, UpdateType, User, UserId,
};

/// The state of the engine's connection to a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[doc(alias = "ZegoRoomState")]
pub enum RoomState {
    /// Not logged in (never, logged out, failed, kicked out or given up).
    Disconnected,
    /// Logging in, or reconnecting after a break.
    Connecting,
    /// Logged in.
    Connected,
}

/// Why the room state changed. Each reason implies a [`RoomState`] ([`Self::state`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[doc(alias = "ZegoRoomStateChangedReason")]
pub enum RoomStateChangedReason {
    /// `login_room` started the login ([`RoomState::Connecting`]).
    Logining,
    /// The login succeeded ([`RoomState::Connected`]).
    Logined,
    /// The login failed; the error code says why ([`RoomState::Disconnected`]).
    LoginFailed,
    /// The connection broke; the engine is retrying (1002051, [`RoomState::Connecting`]).
    Reconnecting,
    /// The connection is back ([`RoomState::Connected`]).
    Reconnected,
    /// The engine gave up reconnecting (1002053 when the retry budget ran out,
    /// [`RoomState::Disconnected`]).
    ReconnectFailed,
    /// The server ended the session: 1002050 when the same user logged in elsewhere, 1002055 by
    /// the server ([`RoomState::Disconnected`]).
    KickOut,
    /// `logout_room` (or `destroy`) left the room ([`RoomState::Disconnected`]).
    Logout,
    /// Leaving the room failed ([`RoomState::Disconnected`]). Reserved: this version reports every
    /// logout as [`Self::Logout`], because the engine always leaves, confirmed or not.
    LogoutFailed,
}

impl RoomStateChangedReason {
    /// The room state this reason leads to.
    pub fn state(self) -> RoomState {
        use RoomStateChangedReason::*;
        match self {
            Logining | Reconnecting => RoomState::Connecting,
            Logined | Reconnected => RoomState::Connected,
            LoginFailed | ReconnectFailed | KickOut | Logout | LogoutFailed => RoomState::Disconnected,
        }
    }
}

/// The state of the engine's publishing stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[doc(alias = "ZegoPublisherState")]
pub enum PublisherState {
    /// Not publishing (never, stopped, or failed: the error code says why).
    NoPublish,
    /// Asking the server to publish, or retrying after a break.
    PublishRequesting,
    /// Publishing.
    Publishing,
}

/// The state of one played stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[doc(alias = "ZegoPlayerState")]
pub enum PlayerState {
    /// Not playing (never, stopped, or failed: the error code says why).
    NoPlay,
    /// Waiting for the stream: it is not published (yet), or the connection is retrying.
    PlayRequesting,
    /// Playing.
    Playing,
}

/// The quality of the published stream over the last 3 s, as the server's RTCP receiver
/// reports describe it (ZEGO Express's `ZegoPublishStreamQuality`, with the fields a voice and
/// video call needs). See `docs/quality.md` ("Quality events") for how the level and MOS are
/// estimated.
///
/// ```
/// use huddle::{PublishStreamQuality, StreamQualityLevel};
/// let q = PublishStreamQuality::default();
/// assert_eq!(q.level, StreamQualityLevel::Unknown);
/// assert_eq!(q.mos, -1.0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
#[doc(alias = "ZegoPublishStreamQuality")]
pub struct PublishStreamQuality {
    /// Round trip to the server, in milliseconds (0: not measured yet).
    pub rtt: u32,
    /// Of the packets sent, the fraction the server did not receive, 0.0–1.0 (before any
    /// recovery by FEC or RED).
    pub packet_lost_rate: f64,
    /// Interarrival jitter at the server, in milliseconds (RFC 3550; a Huddle addition).
    pub jitter: u32,
    /// Audio bitrate sent, in kbit/s.
    pub audio_kbps: f64,
    /// Video bitrate sent, in kbit/s.
    pub video_kbps: f64,
    /// Bytes sent in all (audio and video) on the current media connection.
    pub total_send_bytes: u64,
    /// Estimated listening quality at the server, MOS 1.0–4.5 (an E-model estimate from the
    /// loss, RTT and jitter); -1.0 when unknown.
    pub mos: f64,
    /// The stream's quality level: from the loss, RTT and jitter, or `Die` when nothing came
    /// back from the server for 3 s.
    pub level: StreamQualityLevel,
}

impl Default for PublishStreamQuality {
    fn default() -> Self {
        PublishStreamQuality {
            rtt: 0,
            packet_lost_rate: 0.0,
            jitter: 0,
            audio_kbps: 0.0,
            video_kbps: 0.0,
            total_send_bytes: 0,
            mos: -1.0,
            level: StreamQualityLevel::Unknown,
        }
    }
}

/// The quality of a played stream over the last 3 s, as received (ZEGO Express's
/// `ZegoPlayStreamQuality`, with the fields a voice and video call needs).
///
/// ```
/// use huddle::{PlayStreamQuality, StreamQualityLevel};
/// let q = PlayStreamQuality::default();
/// assert_eq!((q.level, q.mos), (StreamQualityLevel::Unknown, -1.0));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
#[doc(alias = "ZegoPlayStreamQuality")]
pub struct PlayStreamQuality {
    /// Round trip to the server, in milliseconds: the publisher's RTCP round trip when this
    /// engine publishes, else the signaling round trip of the quality reports (0: not known).
    pub rtt: u32,
    /// Of the packets the server sent, the fraction that did not arrive, 0.0–1.0 (before
    /// recovery by FEC and RED).
    pub packet_lost_rate: f64,
    /// Of the audio frames played, the fraction concealed (lost even after FEC and RED, or
    /// late), 0.0–1.0 (a Huddle addition: what the listener hears).
    pub audio_concealed_rate: f64,
    /// Network jitter as the jitter buffer measures it (95th percentile of the packets' delay
    /// above the fastest one), in milliseconds.
    pub jitter: u32,
    /// Delay the jitter buffer adds, in milliseconds (ZEGO's `delay`).
    pub delay: u32,
    /// Audio bitrate received, in kbit/s.
    pub audio_kbps: f64,
    /// Video bitrate received, in kbit/s.
    pub video_kbps: f64,
    /// Bytes received in all (audio and video) on the current media connection.
    pub total_recv_bytes: u64,
    /// Estimated listening quality, MOS 1.0–4.5 (an E-model estimate from the concealed
    /// frames, the RTT, the jitter buffer's delay); -1.0 when unknown.
    pub mos: f64,
    /// The stream's quality level: from the loss, RTT and jitter, or `Die` when nothing of the
    /// stream arrived for 3 s.
    pub level: StreamQualityLevel,
}

impl Default for PlayStreamQuality {
    fn default() -> Self {
        PlayStreamQuality {
            rtt: 0,
            packet_lost_rate: 0.0,
            audio_concealed_rate: 0.0,
            jitter: 0,
            delay: 0,
            audio_kbps: 0.0,
            video_kbps: 0.0,
            total_recv_bytes: 0,
            mos: -1.0,
            level: StreamQualityLevel::Unknown,
        }
    }
}

/// One event of the engine, as [`Engine::events`](crate::Engine::events) delivers it. Each
/// variant is one [`EventHandler`] method, with the same fields.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// See [`EventHandler::on_room_state_update`].
    RoomStateUpdate {
        /// The room.
        room_id: RoomId,
        /// The new state.
        state: RoomState,
        /// Why, when it is an error; 0 otherwise.
        error_code: ErrorCode,
        /// JSON with details (`{"message": …}`), or empty.
        extended_data: String,
    },
    /// See [`EventHandler::on_room_state_changed`].
    RoomStateChanged {
        /// The room.
        room_id: RoomId,
        /// What happened.
        reason: RoomStateChangedReason,
        /// Why, when it is an error; 0 otherwise.
        error_code: ErrorCode,
        /// JSON with details (`{"message": …}`), or empty.
        extended_data: String,
    },
    /// See [`EventHandler::on_room_user_update`].
    RoomUserUpdate {
        /// The room.
        room_id: RoomId,
        /// Whether the users came or went.
        update_type: UpdateType,
        /// The users.
        users: Vec<User>,
    },
    /// See [`EventHandler::on_room_stream_update`].
    RoomStreamUpdate {
        /// The room.
        room_id: RoomId,
        /// Whether the streams came or went.
        update_type: UpdateType,
        /// The streams.
        streams: Vec<StreamInfo>,
        /// JSON with details, or empty.
        extended_data: String,
    },
    /// See [`EventHandler::on_publisher_state_update`].
    PublisherStateUpdate {
        /// The stream.
        stream_id: StreamId,
        /// The new state.
        state: PublisherState,
        /// Why, when it is an error; 0 otherwise.
        error_code: ErrorCode,
        /// JSON with details (`{"message": …}`), or empty.
        extended_data: String,
    },
    /// See [`EventHandler::on_player_state_update`].
    PlayerStateUpdate {
        /// The stream.
        stream_id: StreamId,
        /// The new state.
        state: PlayerState,
        /// Why, when it is an error; 0 otherwise.
        error_code: ErrorCode,
        /// JSON with details (`{"message": …}`), or empty.
        extended_data: String,
    },
    /// See [`EventHandler::on_room_token_will_expire`].
    RoomTokenWillExpire {
        /// The room.
        room_id: RoomId,
        /// Seconds until the token expires.
        remain_secs: i64,
    },
    /// See [`EventHandler::on_im_recv_broadcast_message`].
    IMRecvBroadcastMessage {
        /// The room.
        room_id: RoomId,
        /// The messages, oldest first.
        messages: Vec<BroadcastMessageInfo>,
    },
    /// See [`EventHandler::on_im_recv_barrage_message`].
    IMRecvBarrageMessage {
        /// The room.
        room_id: RoomId,
        /// The messages, oldest first.
        messages: Vec<BarrageMessageInfo>,
    },
    /// See [`EventHandler::on_im_recv_custom_command`].
    IMRecvCustomCommand {
        /// The room.
        room_id: RoomId,
        /// The sender.
        from_user: User,
        /// The command.
        command: String,
    },
    /// See [`EventHandler::on_im_send_broadcast_message_result`].
    IMSendBroadcastMessageResult {
        /// The room.
        room_id: RoomId,
        /// What `send_broadcast_message` returned.
        seq: u64,
        /// 0 when sent.
        error_code: ErrorCode,
        /// The message's ID (0 when not sent).
        message_id: u64,
    },
    /// See [`EventHandler::on_im_send_barrage_message_result`].
    IMSendBarrageMessageResult {
        /// The room.
        room_id: RoomId,
        /// What `send_barrage_message` returned.
        seq: u64,
        /// 0 when sent.
        error_code: ErrorCode,
        /// The message's ID (empty when not sent).
        message_id: String,
    },
    /// See [`EventHandler::on_im_send_custom_command_result`].
    IMSendCustomCommandResult {
        /// The room.
        room_id: RoomId,
        /// What `send_custom_command` returned.
        seq: u64,
        /// 0 when sent.
        error_code: ErrorCode,
    },
    /// See [`EventHandler::on_publisher_set_stream_extra_info_result`].
    PublisherSetStreamExtraInfoResult {
        /// What `set_stream_extra_info` returned.
        seq: u64,
        /// 0 when set.
        error_code: ErrorCode,
    },
    /// See [`EventHandler::on_room_set_room_extra_info_result`].
    RoomSetRoomExtraInfoResult {
        /// The room.
        room_id: RoomId,
        /// What `set_room_extra_info` returned.
        seq: u64,
        /// 0 when set.
        error_code: ErrorCode,
    },
    /// See [`EventHandler::on_room_stream_extra_info_update`].
    RoomStreamExtraInfoUpdate {
        /// The room.
        room_id: RoomId,
        /// The streams with their new extra info.
        streams: Vec<StreamInfo>,
    },
    /// See [`EventHandler::on_room_extra_info_update`].
    RoomExtraInfoUpdate {
        /// The room.
        room_id: RoomId,
        /// The keys that changed (at login: all of them).
        room_extra_info_list: Vec<RoomExtraInfo>,
    },
    /// See [`EventHandler::on_room_online_user_count_update`].
    RoomOnlineUserCountUpdate {
        /// The room.
        room_id: RoomId,
        /// Users online in the room, on every node.
        count: u32,
    },
    /// See [`EventHandler::on_publisher_captured_audio_first_frame`].
    PublisherCapturedAudioFirstFrame,
    /// See [`EventHandler::on_publisher_captured_video_first_frame`].
    PublisherCapturedVideoFirstFrame,
    /// See [`EventHandler::on_player_recv_audio_first_frame`].
    PlayerRecvAudioFirstFrame {
        /// The stream.
        stream_id: StreamId,
    },
    /// See [`EventHandler::on_player_recv_video_first_frame`].
    PlayerRecvVideoFirstFrame {
        /// The stream.
        stream_id: StreamId,
    },
    /// See [`EventHandler::on_publisher_quality_update`].
    PublisherQualityUpdate {
        /// The stream.
        stream_id: StreamId,
        /// Its quality.
        quality: PublishStreamQuality,
    },
    /// See [`EventHandler::on_player_quality_update`].
    PlayerQualityUpdate {
        /// The stream.
        stream_id: StreamId,
        /// Its quality.
        quality: PlayStreamQuality,
    },
    /// See [`EventHandler::on_network_quality`].
    NetworkQuality {
        /// The user; `None` for this engine's own user (ZEGO's empty user ID).
        user_id: Option<UserId>,
        /// The user's upstream level.
        upstream_quality: StreamQualityLevel,
        /// The user's downstream level.
        downstream_quality: StreamQualityLevel,
    },
    /// See [`EventHandler::on_events_dropped`].
    EventsDropped {
        /// How many events were dropped, all of them between the event before this one and
        /// this one.
        count: u64,
    },
    /// See [`EventHandler::on_remote_mic_state_update`].
    RemoteMicStateUpdate {
        /// The played stream.
        stream_id: StreamId,
        /// Its publisher's microphone.
        state: RemoteDeviceState,
    },
    /// See [`EventHandler::on_remote_camera_state_update`].
    RemoteCameraStateUpdate {
        /// The played stream.
        stream_id: StreamId,
        /// Its publisher's camera.
        state: RemoteDeviceState,
    },
    /// See [`EventHandler::on_captured_sound_level_info_update`].
    CapturedSoundLevelUpdate {
        /// The captured signal's level and voice activity.
        info: SoundLevelInfo,
    },
    /// See [`EventHandler::on_remote_sound_level_info_update`].
    RemoteSoundLevelUpdate {
        /// Each played stream's level and voice activity, by stream ID.
        sound_levels: BTreeMap<String, SoundLevelInfo>,
    },
    /// See [`EventHandler::on_active_speakers_changed`].
    ActiveSpeakersChanged {
        /// The speaking streams, loudest first (at most 3; empty when nobody speaks).
        stream_ids: Vec<StreamId>,
    },
    /// See [`EventHandler::on_debug_error`].
    DebugError {
        /// The code.
        error_code: ErrorCode,
        /// The API call or engine function it concerns.
        func_name: String,
        /// In words.
        info: String,
    },
}

/// A sound level and voice-activity decision (ZEGO Express's `ZegoSoundLevelInfo`). The level
/// is 0–100, linear in dBFS from -60 dBFS (0) to 0 dBFS (100): `docs/media.md` ("Sound levels").
///
/// ```
/// use huddle::SoundLevelInfo;
/// let quiet = SoundLevelInfo::default();
/// assert_eq!((quiet.sound_level, quiet.vad), (0.0, false));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[non_exhaustive]
#[doc(alias = "ZegoSoundLevelInfo")]
pub struct SoundLevelInfo {
    /// The loudest 10 ms of the interval, 0.0–100.0.
    #[doc(alias = "soundLevel")]
    pub sound_level: f32,
    /// Whether the signal holds speech (ZEGO's `vad` 1); always `false` when the monitor was
    /// started without VAD.
    pub vad: bool,
}

/// A broadcast message to a room ([`EventHandler::on_im_recv_broadcast_message`]), as the
/// hosted SDKs' `ZegoBroadcastMessageInfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BroadcastMessageInfo {
    /// The text.
    pub message: String,
    /// The message's number, increasing per room.
    #[doc(alias = "messageID")]
    pub message_id: u64,
    /// When the server sent it, Unix milliseconds.
    pub send_time: u64,
    /// The sender, as the server API call named it.
    pub from_user: User,
}

/// A barrage message to a room ([`EventHandler::on_im_recv_barrage_message`]), as the hosted
/// SDKs' `ZegoBarrageMessageInfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BarrageMessageInfo {
    /// The text.
    pub message: String,
    /// The message's ID.
    #[doc(alias = "messageID")]
    pub message_id: String,
    /// When the server took it, Unix milliseconds.
    pub send_time: u64,
    /// The sender.
    pub from_user: User,
}

/// A user as JSON (`{"user_id", "user_name"}`).
fn user_json(u: &User) -> serde_json::Value {
    serde_json::json!({"user_id": u.user_id.as_str(), "user_name": u.user_name.as_str()})
}

impl Event {
    /// The event's name: its callback's without `on_` (`room_state_update`, …).
    pub fn name(&self) -> &'static str {
        match self {
            Event::RoomStateUpdate { .. } => "room_state_update",
            Event::RoomStateChanged { .. } => "room_state_changed",
            Event::RoomUserUpdate { .. } => "room_user_update",
            Event::RoomStreamUpdate { .. } => "room_stream_update",
            Event::PublisherStateUpdate { .. } => "publisher_state_update",
            Event::PlayerStateUpdate { .. } => "player_state_update",
            Event::RoomTokenWillExpire { .. } => "room_token_will_expire",
            Event::IMRecvBroadcastMessage { .. } => "im_recv_broadcast_message",
            Event::IMRecvBarrageMessage { .. } => "im_recv_barrage_message",
            Event::IMRecvCustomCommand { .. } => "im_recv_custom_command",
            Event::IMSendBroadcastMessageResult { .. } => "im_send_broadcast_message_result",
            Event::IMSendBarrageMessageResult { .. } => "im_send_barrage_message_result",
            Event::IMSendCustomCommandResult { .. } => "im_send_custom_command_result",
            Event::PublisherSetStreamExtraInfoResult { .. } => "publisher_set_stream_extra_info_result",
            Event::RoomSetRoomExtraInfoResult { .. } => "room_set_room_extra_info_result",
            Event::RoomStreamExtraInfoUpdate { .. } => "room_stream_extra_info_update",
            Event::RoomExtraInfoUpdate { .. } => "room_extra_info_update",
            Event::RoomOnlineUserCountUpdate { .. } => "room_online_user_count_update",
            Event::PublisherCapturedAudioFirstFrame => "publisher_captured_audio_first_frame",
            Event::PublisherCapturedVideoFirstFrame => "publisher_captured_video_first_frame",
            Event::PlayerRecvAudioFirstFrame { .. } => "player_recv_audio_first_frame",
            Event::PlayerRecvVideoFirstFrame { .. } => "player_recv_video_first_frame",
            Event::DebugError { .. } => "debug_error",
            Event::EventsDropped { .. } => "events_dropped",
            Event::PublisherQualityUpdate { .. } => "publisher_quality_update",
            Event::PlayerQualityUpdate { .. } => "player_quality_update",
            Event::NetworkQuality { .. } => "network_quality",
            Event::RemoteMicStateUpdate { .. } => "remote_mic_state_update",
            Event::RemoteCameraStateUpdate { .. } => "remote_camera_state_update",
            Event::CapturedSoundLevelUpdate { .. } => "captured_sound_level_update",
            Event::RemoteSoundLevelUpdate { .. } => "remote_sound_level_update",
            Event::ActiveSpeakersChanged { .. } => "active_speakers_changed",
        }
    }

    /// Whether this is one of the periodic quality events (`publisher_quality_update`,
    /// `player_quality_update`, `network_quality`): an app that logs every event may want to
    /// leave them out.
    pub fn is_quality(&self) -> bool {
        matches!(
            self,
            Event::PublisherQualityUpdate { .. }
                | Event::PlayerQualityUpdate { .. }
                | Event::NetworkQuality { .. }
        )
    }

    /// Whether this is one of the periodic sound-level events (`captured_sound_level_update`,
    /// `remote_sound_level_update`), which come at the monitor's interval.
    pub fn is_sound_level(&self) -> bool {
        matches!(
            self,
            Event::CapturedSoundLevelUpdate { .. } | Event::RemoteSoundLevelUpdate { .. }
        )
    }

    /// The event as one JSON object: `"event"` (its [`name`](Self::name)) and its callback's
    /// arguments by name; states, reasons and update types by their variant names (`"Publishing"`),
    /// error codes as numbers, an empty `extended_data` left out. What `huddle call` prints, one
    /// object a line.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        fn name<T: std::fmt::Debug>(v: T) -> String {
            format!("{v:?}")
        }
        /// Three decimals are all a reader needs (and keep a line short).
        fn round3(x: f64) -> f64 {
            (x * 1000.0).round() / 1000.0
        }
        /// A level with one decimal, and the voice decision.
        fn level(i: &SoundLevelInfo) -> serde_json::Value {
            json!({"sound_level": (f64::from(i.sound_level) * 10.0).round() / 10.0, "vad": i.vad})
        }
        let mut v = match self {
            Event::RoomStateUpdate {
                room_id,
                state,
                error_code,
                extended_data,
            } => {
                json!({"room_id": room_id.as_str(), "state": name(state), "error_code": error_code, "extended_data": extended_data})
            }
            Event::RoomStateChanged {
                room_id,
                reason,
                error_code,
                extended_data,
            } => {
                json!({"room_id": room_id.as_str(), "reason": name(reason), "error_code": error_code, "extended_data": extended_data})
            }
            Event::RoomUserUpdate {
                room_id,
                update_type,
                users,
            } => {
                let users: Vec<_> = users
                    .iter()
                    .map(|u| json!({"user_id": u.user_id.as_str(), "user_name": u.user_name.as_str()}))
                    .collect();
                json!({"room_id": room_id.as_str(), "update_type": name(update_type), "users": users})
            }
            Event::RoomStreamUpdate {
                room_id,
                update_type,
                streams,
                extended_data,
            } => {
                let streams: Vec<_> = streams
                    .iter()
                    .map(|s| json!({"user_id": s.user_id.as_str(), "user_name": s.user_name.as_str(), "stream_id": s.stream_id.as_str(), "extra_info": s.extra_info}))
                    .collect();
                json!({"room_id": room_id.as_str(), "update_type": name(update_type), "streams": streams, "extended_data": extended_data})
            }
            Event::PublisherStateUpdate {
                stream_id,
                state,
                error_code,
                extended_data,
            } => {
                json!({"stream_id": stream_id.as_str(), "state": name(state), "error_code": error_code, "extended_data": extended_data})
            }
            Event::PlayerStateUpdate {
                stream_id,
                state,
                error_code,
                extended_data,
            } => {
                json!({"stream_id": stream_id.as_str(), "state": name(state), "error_code": error_code, "extended_data": extended_data})
            }
            Event::RoomTokenWillExpire { room_id, remain_secs } => {
                json!({"room_id": room_id.as_str(), "remain_secs": remain_secs})
            }
            Event::IMRecvBroadcastMessage { room_id, messages } => {
                let list: Vec<serde_json::Value> = messages
                    .iter()
                    .map(|m| {
                        json!({
                            "message": m.message,
                            "message_id": m.message_id,
                            "send_time": m.send_time,
                            "from_user": {"user_id": m.from_user.user_id.as_str(), "user_name": m.from_user.user_name.as_str()},
                        })
                    })
                    .collect();
                json!({"room_id": room_id.as_str(), "messages": list})
            }
            Event::IMRecvBarrageMessage { room_id, messages } => {
                let list: Vec<serde_json::Value> = messages
                    .iter()
                    .map(|m| {
                        json!({
                            "message": m.message,
                            "message_id": m.message_id,
                            "send_time": m.send_time,
                            "from_user": user_json(&m.from_user),
                        })
                    })
                    .collect();
                json!({"room_id": room_id.as_str(), "messages": list})
            }
            Event::IMRecvCustomCommand {
                room_id,
                from_user,
                command,
            } => json!({"room_id": room_id.as_str(), "from_user": user_json(from_user), "command": command}),
            Event::IMSendBroadcastMessageResult {
                room_id,
                seq,
                error_code,
                message_id,
            } => {
                json!({"room_id": room_id.as_str(), "seq": seq, "error_code": error_code, "message_id": message_id})
            }
            Event::IMSendBarrageMessageResult {
                room_id,
                seq,
                error_code,
                message_id,
            } => {
                json!({"room_id": room_id.as_str(), "seq": seq, "error_code": error_code, "message_id": message_id})
            }
            Event::IMSendCustomCommandResult {
                room_id,
                seq,
                error_code,
            }
            | Event::RoomSetRoomExtraInfoResult {
                room_id,
                seq,
                error_code,
            } => json!({"room_id": room_id.as_str(), "seq": seq, "error_code": error_code}),
            Event::PublisherSetStreamExtraInfoResult { seq, error_code } => {
                json!({"seq": seq, "error_code": error_code})
            }
            Event::RoomStreamExtraInfoUpdate { room_id, streams } => json!({
                "room_id": room_id.as_str(),
                "streams": streams
                    .iter()
                    .map(|s| json!({"user_id": s.user_id.as_str(), "stream_id": s.stream_id.as_str(), "extra_info": s.extra_info}))
                    .collect::<Vec<_>>(),
            }),
            Event::RoomExtraInfoUpdate {
                room_id,
                room_extra_info_list,
            } => json!({
                "room_id": room_id.as_str(),
                "room_extra_info_list": room_extra_info_list
                    .iter()
                    .map(|i| json!({"key": i.key, "value": i.value, "update_user": user_json(&i.update_user), "update_time": i.update_time_ms}))
                    .collect::<Vec<_>>(),
            }),
            Event::RoomOnlineUserCountUpdate { room_id, count } => {
                json!({"room_id": room_id.as_str(), "count": count})
            }
            Event::PublisherCapturedAudioFirstFrame | Event::PublisherCapturedVideoFirstFrame => json!({}),
            Event::PlayerRecvAudioFirstFrame { stream_id }
            | Event::PlayerRecvVideoFirstFrame { stream_id } => {
                json!({"stream_id": stream_id.as_str()})
            }
            Event::DebugError {
                error_code,
                func_name,
                info,
            } => json!({"error_code": error_code, "func_name": func_name, "info": info}),
            Event::EventsDropped { count } => json!({"count": count}),
            Event::RemoteMicStateUpdate { stream_id, state }
            | Event::RemoteCameraStateUpdate { stream_id, state } => {
                json!({"stream_id": stream_id.as_str(), "state": name(state)})
            }
            Event::PublisherQualityUpdate {
                stream_id,
                quality: q,
            } => json!({
                "stream_id": stream_id.as_str(),
                "quality": {
                    "rtt": q.rtt, "packet_lost_rate": round3(q.packet_lost_rate), "jitter": q.jitter,
                    "audio_kbps": round3(q.audio_kbps), "video_kbps": round3(q.video_kbps),
                    "total_send_bytes": q.total_send_bytes, "mos": round3(q.mos), "level": name(q.level),
                },
            }),
            Event::PlayerQualityUpdate {
                stream_id,
                quality: q,
            } => json!({
                "stream_id": stream_id.as_str(),
                "quality": {
                    "rtt": q.rtt, "packet_lost_rate": round3(q.packet_lost_rate),
                    "audio_concealed_rate": round3(q.audio_concealed_rate), "jitter": q.jitter, "delay": q.delay,
                    "audio_kbps": round3(q.audio_kbps), "video_kbps": round3(q.video_kbps),
                    "total_recv_bytes": q.total_recv_bytes, "mos": round3(q.mos), "level": name(q.level),
                },
            }),
            Event::NetworkQuality {
                user_id,
                upstream_quality,
                downstream_quality,
            } => json!({
                "user_id": user_id.as_ref().map_or("", |u| u.as_str()),
                "upstream_quality": name(upstream_quality),
                "downstream_quality": name(downstream_quality),
            }),
            Event::CapturedSoundLevelUpdate { info } => level(info),
            Event::RemoteSoundLevelUpdate { sound_levels } => {
                let map: serde_json::Map<String, serde_json::Value> = sound_levels
                    .iter()
                    .map(|(id, i)| (id.clone(), level(i)))
                    .collect();
                json!({ "sound_levels": map })
            }
            Event::ActiveSpeakersChanged { stream_ids } => {
                json!({ "stream_ids": stream_ids.iter().map(|s| s.as_str()).collect::<Vec<_>>() })
            }
        };
        let map = v.as_object_mut().expect("an object");
        if map.get("extended_data").is_some_and(|d| d.as_str() == Some("")) {
            map.remove("extended_data");
        }
        map.insert("event".into(), self.name().into());
        v
    }

    /// Calls `h`'s callback for this event (what [`EventHandler::on_event`] does by default).
    pub fn dispatch<H: EventHandler + ?Sized>(&self, h: &H) {
        match self {
            Event::RoomStateUpdate {
                room_id,
                state,
                error_code,
                extended_data,
            } => h.on_room_state_update(room_id.as_str(), *state, *error_code, extended_data),
            Event::RoomStateChanged {
                room_id,
                reason,
                error_code,
                extended_data,
            } => h.on_room_state_changed(room_id.as_str(), *reason, *error_code, extended_data),
            Event::RoomUserUpdate {
                room_id,
                update_type,
                users,
            } => h.on_room_user_update(room_id.as_str(), *update_type, users),
            Event::RoomStreamUpdate {
                room_id,
                update_type,
                streams,
                extended_data,
            } => h.on_room_stream_update(room_id.as_str(), *update_type, streams, extended_data),
            Event::PublisherStateUpdate {
                stream_id,
                state,
                error_code,
                extended_data,
            } => h.on_publisher_state_update(stream_id.as_str(), *state, *error_code, extended_data),
            Event::PlayerStateUpdate {
                stream_id,
                state,
                error_code,
                extended_data,
            } => h.on_player_state_update(stream_id.as_str(), *state, *error_code, extended_data),
            Event::RoomTokenWillExpire { room_id, remain_secs } => {
                h.on_room_token_will_expire(room_id.as_str(), *remain_secs)
            }
            Event::IMRecvBroadcastMessage { room_id, messages } => {
                h.on_im_recv_broadcast_message(room_id.as_str(), messages)
            }
            Event::IMRecvBarrageMessage { room_id, messages } => {
                h.on_im_recv_barrage_message(room_id.as_str(), messages)
            }
            Event::IMRecvCustomCommand {
                room_id,
                from_user,
                command,
            } => h.on_im_recv_custom_command(room_id.as_str(), from_user, command),
            Event::IMSendBroadcastMessageResult {
                room_id,
                seq,
                error_code,
                message_id,
            } => h.on_im_send_broadcast_message_result(room_id.as_str(), *seq, *error_code, *message_id),
            Event::IMSendBarrageMessageResult {
                room_id,
                seq,
                error_code,
                message_id,
            } => h.on_im_send_barrage_message_result(room_id.as_str(), *seq, *error_code, message_id),
            Event::IMSendCustomCommandResult {
                room_id,
                seq,
                error_code,
            } => h.on_im_send_custom_command_result(room_id.as_str(), *seq, *error_code),
            Event::PublisherSetStreamExtraInfoResult { seq, error_code } => {
                h.on_publisher_set_stream_extra_info_result(*seq, *error_code)
            }
            Event::RoomSetRoomExtraInfoResult {
                room_id,
                seq,
                error_code,
            } => h.on_room_set_room_extra_info_result(room_id.as_str(), *seq, *error_code),
            Event::RoomStreamExtraInfoUpdate { room_id, streams } => {
                h.on_room_stream_extra_info_update(room_id.as_str(), streams)
            }
            Event::RoomExtraInfoUpdate {
                room_id,
                room_extra_info_list,
            } => h.on_room_extra_info_update(room_id.as_str(), room_extra_info_list),
            Event::RoomOnlineUserCountUpdate { room_id, count } => {
                h.on_room_online_user_count_update(room_id.as_str(), *count)
            }
            Event::PublisherCapturedAudioFirstFrame => h.on_publisher_captured_audio_first_frame(),
            Event::PublisherCapturedVideoFirstFrame => h.on_publisher_captured_video_first_frame(),
            Event::PlayerRecvAudioFirstFrame { stream_id } => {
                h.on_player_recv_audio_first_frame(stream_id.as_str())
            }
            Event::PlayerRecvVideoFirstFrame { stream_id } => {
                h.on_player_recv_video_first_frame(stream_id.as_str())
            }
            Event::DebugError {
                error_code,
                func_name,
                info,
            } => h.on_debug_error(*error_code, func_name, info),
            Event::EventsDropped { count } => h.on_events_dropped(*count),
            Event::RemoteMicStateUpdate { stream_id, state } => {
                h.on_remote_mic_state_update(stream_id.as_str(), *state)
            }
            Event::RemoteCameraStateUpdate { stream_id, state } => {
                h.on_remote_camera_state_update(stream_id.as_str(), *state)
            }
            Event::PublisherQualityUpdate { stream_id, quality } => {
                h.on_publisher_quality_update(stream_id.as_str(), quality)
            }
            Event::PlayerQualityUpdate { stream_id, quality } => {
                h.on_player_quality_update(stream_id.as_str(), quality)
            }
            Event::NetworkQuality {
                user_id,
                upstream_quality,
                downstream_quality,
            } => h.on_network_quality(
                user_id.as_ref().map_or("", |u| u.as_str()),
                *upstream_quality,
                *downstream_quality,
            ),
            Event::CapturedSoundLevelUpdate { info } => h.on_captured_sound_level_info_update(info),
            Event::RemoteSoundLevelUpdate { sound_levels } => {
                h.on_remote_sound_level_info_update(sound_levels)
            }
            Event::ActiveSpeakersChanged { stream_ids } => h.on_active_speakers_changed(stream_ids),
        }
    }
}

/// The app's event callbacks. Every method has an empty default body: implement the ones you need.
///
/// The engine calls them on its one event thread (`huddle-sdk-evt`), one at a time, in the order
/// the events happened, and never while holding a lock that an API call needs: a handler may call
/// the engine (through an [`EngineHandle`](crate::EngineHandle)). A slow handler delays the
/// events after it, never the engine's heartbeats, reconnection or media: up to
/// [`EngineConfig::event_queue`] events wait for it; beyond that the engine drops the newest
/// and then reports how many with [`Self::on_events_dropped`], in their place. A panicking
/// handler is caught and logged; the next event is delivered.
///
/// [`EngineConfig::event_queue`]: crate::EngineConfig::event_queue
#[allow(unused_variables)]
pub trait EventHandler: Send + Sync + 'static {
    /// Every event, whole. The default calls the event's callback below
    /// ([`Event::dispatch`]); a handler that wants events as values (to log them with
    /// [`Event::to_json`], or queue them) overrides this one instead of the callbacks.
    fn on_event(&self, event: &Event) {
        event.dispatch(self);
    }

    /// The room's connection state changed. Fired with every [`Self::on_room_state_changed`].
    #[doc(alias = "onRoomStateUpdate")]
    fn on_room_state_update(
        &self,
        room_id: &str,
        state: RoomState,
        error_code: ErrorCode,
        extended_data: &str,
    ) {
    }

    /// The room's connection state changed, with the reason.
    #[doc(alias = "onRoomStateChanged")]
    fn on_room_state_changed(
        &self,
        room_id: &str,
        reason: RoomStateChangedReason,
        error_code: ErrorCode,
        extended_data: &str,
    ) {
    }

    /// Other users came or went. Only with [`RoomConfig::is_user_status_notify`]; the users in
    /// the room at login arrive as one `Add`.
    ///
    /// [`RoomConfig::is_user_status_notify`]: crate::RoomConfig::is_user_status_notify
    #[doc(alias = "onRoomUserUpdate")]
    fn on_room_user_update(&self, room_id: &str, update_type: UpdateType, users: &[User]) {}

    /// Other users' streams came or went. The streams published at login arrive as one `Add`.
    #[doc(alias = "onRoomStreamUpdate")]
    fn on_room_stream_update(
        &self,
        room_id: &str,
        update_type: UpdateType,
        streams: &[StreamInfo],
        extended_data: &str,
    ) {
    }

    /// The publishing stream's state changed.
    #[doc(alias = "onPublisherStateUpdate")]
    fn on_publisher_state_update(
        &self,
        stream_id: &str,
        state: PublisherState,
        error_code: ErrorCode,
        extended_data: &str,
    ) {
    }

    /// A played stream's state changed.
    #[doc(alias = "onPlayerStateUpdate")]
    fn on_player_state_update(
        &self,
        stream_id: &str,
        state: PlayerState,
        error_code: ErrorCode,
        extended_data: &str,
    ) {
    }

    /// The room's token expires in `remain_secs` seconds (fired once per token, 30 s ahead or
    /// at once when less is left): get a new one from the app's server and pass it to
    /// `renew_token`. Left unrenewed, the server ends the session at the expiry:
    /// `on_room_state_changed` with `KickOut` and 1002056 (`KICKED_TOKEN_EXPIRED`).
    #[doc(alias = "onRoomTokenWillExpire")]
    fn on_room_token_will_expire(&self, room_id: &str, remain_secs: i64) {}

    /// Broadcast messages to the room arrived: sent by the app's server through the server API
    /// (`SendBroadcastMessage`), to every session of the room.
    ///
    /// ```
    /// use huddle::{BroadcastMessageInfo, EventHandler};
    ///
    /// struct Chat;
    /// impl EventHandler for Chat {
    ///     fn on_im_recv_broadcast_message(&self, room_id: &str, messages: &[BroadcastMessageInfo]) {
    ///         for m in messages {
    ///             println!("[{room_id}] {}: {}", m.from_user.user_name, m.message);
    ///         }
    ///     }
    /// }
    /// ```
    #[doc(alias = "onIMRecvBroadcastMessage")]
    #[doc(alias = "IMRecvBroadcastMessage")]
    fn on_im_recv_broadcast_message(&self, room_id: &str, messages: &[BroadcastMessageInfo]) {}

    /// Barrage messages of other users of the room arrived (`send_barrage_message`): best
    /// effort, so some may be missing under load.
    #[doc(alias = "onIMRecvBarrageMessage")]
    #[doc(alias = "IMRecvBarrageMessage")]
    fn on_im_recv_barrage_message(&self, room_id: &str, messages: &[BarrageMessageInfo]) {}

    /// Another user of the room sent this user a custom command (`send_custom_command`).
    ///
    /// ```
    /// use huddle::{EventHandler, User};
    ///
    /// struct Remote;
    /// impl EventHandler for Remote {
    ///     fn on_im_recv_custom_command(&self, room_id: &str, from_user: &User, command: &str) {
    ///         println!("[{room_id}] {} asks: {command}", from_user.user_id);
    ///     }
    /// }
    /// ```
    #[doc(alias = "onIMRecvCustomCommand")]
    #[doc(alias = "IMRecvCustomCommand")]
    fn on_im_recv_custom_command(&self, room_id: &str, from_user: &User, command: &str) {}

    /// The result of [`Engine::send_broadcast_message`](crate::Engine::send_broadcast_message)
    /// number `seq`: 0 and the message's ID, or the code (1009070, 1009071, 1009072; 1000002
    /// when the room was not connected).
    #[doc(alias = "ZegoIMSendBroadcastMessageCallback")]
    fn on_im_send_broadcast_message_result(
        &self,
        room_id: &str,
        seq: u64,
        error_code: ErrorCode,
        message_id: u64,
    ) {
    }

    /// The result of [`Engine::send_barrage_message`](crate::Engine::send_barrage_message)
    /// number `seq`: 0 and the message's ID, or the code.
    #[doc(alias = "ZegoIMSendBarrageMessageCallback")]
    fn on_im_send_barrage_message_result(
        &self,
        room_id: &str,
        seq: u64,
        error_code: ErrorCode,
        message_id: &str,
    ) {
    }

    /// The result of [`Engine::send_custom_command`](crate::Engine::send_custom_command) number
    /// `seq`: 0, or the code (1009073 when none of the recipients is in the room).
    #[doc(alias = "ZegoIMSendCustomCommandCallback")]
    fn on_im_send_custom_command_result(&self, room_id: &str, seq: u64, error_code: ErrorCode) {}

    /// The result of [`Engine::set_stream_extra_info`](crate::Engine::set_stream_extra_info)
    /// number `seq`.
    #[doc(alias = "ZegoPublisherSetStreamExtraInfoCallback")]
    fn on_publisher_set_stream_extra_info_result(&self, seq: u64, error_code: ErrorCode) {}

    /// The result of [`Engine::set_room_extra_info`](crate::Engine::set_room_extra_info) number
    /// `seq`: 0, or the code (1009074–1009077).
    #[doc(alias = "ZegoRoomSetRoomExtraInfoCallback")]
    fn on_room_set_room_extra_info_result(&self, room_id: &str, seq: u64, error_code: ErrorCode) {}

    /// Streams of other users of the room have new extra info (their publishers called
    /// `set_stream_extra_info`).
    #[doc(alias = "onRoomStreamExtraInfoUpdate")]
    #[doc(alias = "roomStreamExtraInfoUpdate")]
    fn on_room_stream_extra_info_update(&self, room_id: &str, streams: &[StreamInfo]) {}

    /// The room's extra info changed (another user called `set_room_extra_info`), or, right
    /// after the login, the room's extra info as it is.
    ///
    /// ```
    /// use huddle::{EventHandler, RoomExtraInfo};
    ///
    /// struct Topic;
    /// impl EventHandler for Topic {
    ///     fn on_room_extra_info_update(&self, room_id: &str, list: &[RoomExtraInfo]) {
    ///         for i in list {
    ///             println!("[{room_id}] {} = {} (by {})", i.key, i.value, i.update_user.user_id);
    ///         }
    ///     }
    /// }
    /// ```
    #[doc(alias = "onRoomExtraInfoUpdate")]
    #[doc(alias = "roomExtraInfoUpdate")]
    fn on_room_extra_info_update(&self, room_id: &str, room_extra_info_list: &[RoomExtraInfo]) {}

    /// The number of users online in the room (on every node): right after the login, then
    /// every 30 seconds, as the hosted SDKs report it.
    #[doc(alias = "onRoomOnlineUserCountUpdate")]
    #[doc(alias = "roomOnlineUserCountUpdate")]
    fn on_room_online_user_count_update(&self, room_id: &str, count: u32) {}

    /// The published stream's first audio frame was captured (from the configured
    /// [`AudioSource`](crate::AudioSource)), once per media connection.
    #[doc(alias = "onPublisherCapturedAudioFirstFrame")]
    fn on_publisher_captured_audio_first_frame(&self) {}

    /// The published stream's first video frame was captured, once per media connection.
    #[doc(alias = "onPublisherCapturedVideoFirstFrame")]
    fn on_publisher_captured_video_first_frame(&self) {}

    /// The first audio frame of a played stream was received and decoded, once per media
    /// connection (again after the stream comes back).
    #[doc(alias = "onPlayerRecvAudioFirstFrame")]
    fn on_player_recv_audio_first_frame(&self, stream_id: &str) {}

    /// The first video frame of a played stream was received and decoded.
    #[doc(alias = "onPlayerRecvVideoFirstFrame")]
    fn on_player_recv_video_first_frame(&self, stream_id: &str) {}

    /// The published stream's quality, every 3 s while publishing (ZEGO's interval).
    #[doc(alias = "onPublisherQualityUpdate")]
    fn on_publisher_quality_update(&self, stream_id: &str, quality: &PublishStreamQuality) {}

    /// A played stream's quality, every 3 s while the stream is available.
    #[doc(alias = "onPlayerQualityUpdate")]
    fn on_player_quality_update(&self, stream_id: &str, quality: &PlayStreamQuality) {}

    /// A user's network quality: this engine's own (`user_id` empty) every 2 s while it
    /// publishes or plays, and each other user's that reports its own (other Huddle SDKs do
    /// while they publish or play) every 2 s. Unlike ZEGO, a change to or from `Die` is
    /// reported at once, not at the next 2 s tick: nothing (media or signaling) arriving for
    /// 3 s makes this engine's levels `Die`. Another user whose report is late by one interval
    /// is `Unknown`, by three `Die` (as ZEGO's heartbeat rule).
    #[doc(alias = "onNetworkQuality")]
    fn on_network_quality(
        &self,
        user_id: &str,
        upstream_quality: StreamQualityLevel,
        downstream_quality: StreamQualityLevel,
    ) {
    }

    /// The microphone of a played stream's publisher changed: `Mute` when it muted it
    /// (`mute_microphone` or `mute_publish_stream_audio`: its players hear silence), `Open` when
    /// it unmuted. Only for streams this engine plays; a stream already muted when its playing
    /// starts is reported then. Unlike ZEGO, the states are Open, Disable and Mute only (no device
    /// faults are reported).
    #[doc(alias = "onRemoteMicStateUpdate")]
    fn on_remote_mic_state_update(&self, stream_id: &str, state: RemoteDeviceState) {}

    /// The camera of a played stream's publisher changed: `Mute` when it stopped sending video
    /// (`mute_publish_stream_video`), `Open` when it resumed. As
    /// [`on_remote_mic_state_update`](Self::on_remote_mic_state_update) otherwise.
    #[doc(alias = "onRemoteCameraStateUpdate")]
    fn on_remote_camera_state_update(&self, stream_id: &str, state: RemoteDeviceState) {}
    /// The captured signal's sound level, at the interval of
    /// [`Engine::start_sound_level_monitor`](crate::Engine::start_sound_level_monitor): measured
    /// on the captured audio before encoding while publishing, 0 otherwise. The default calls
    /// [`Self::on_captured_sound_level_update`] with the level alone.
    #[doc(alias = "onCapturedSoundLevelInfoUpdate")]
    fn on_captured_sound_level_info_update(&self, sound_level_info: &SoundLevelInfo) {
        self.on_captured_sound_level_update(sound_level_info.sound_level);
    }

    /// The captured signal's sound level, 0–100 (ZEGO's older callback, without the voice
    /// decision; called by the default [`Self::on_captured_sound_level_info_update`]).
    #[doc(alias = "onCapturedSoundLevelUpdate")]
    fn on_captured_sound_level_update(&self, sound_level: f32) {}

    /// The played streams' sound levels, by stream ID, at the monitor's interval: measured on
    /// each stream's decoded audio before mixing. Every played stream is in the map (0 while it
    /// sends nothing). The default calls [`Self::on_remote_sound_level_update`].
    ///
    /// ```
    /// use std::collections::BTreeMap;
    /// use huddle::{EventHandler, SoundLevelInfo};
    ///
    /// struct Meters;
    /// impl EventHandler for Meters {
    ///     fn on_remote_sound_level_info_update(&self, levels: &BTreeMap<String, SoundLevelInfo>) {
    ///         for (stream_id, info) in levels {
    ///             let talking = if info.vad { " (talking)" } else { "" };
    ///             println!("{stream_id}: {:.0}{talking}", info.sound_level);
    ///         }
    ///     }
    /// }
    /// ```
    #[doc(alias = "onRemoteSoundLevelInfoUpdate")]
    fn on_remote_sound_level_info_update(&self, sound_level_infos: &BTreeMap<String, SoundLevelInfo>) {
        let levels: BTreeMap<String, f32> = sound_level_infos
            .iter()
            .map(|(id, i)| (id.clone(), i.sound_level))
            .collect();
        self.on_remote_sound_level_update(&levels);
    }

    /// The played streams' sound levels alone (ZEGO's older callback; called by the default
    /// [`Self::on_remote_sound_level_info_update`]).
    #[doc(alias = "onRemoteSoundLevelUpdate")]
    fn on_remote_sound_level_update(&self, sound_levels: &BTreeMap<String, f32>) {}

    /// The active speakers changed: the streams (played ones, and this engine's published one)
    /// whose voice is on, loudest first, at most 3. A stream joins after 200 ms of voice and
    /// leaves after 600 ms without (on top of the voice detector's own 320 ms hangover), and
    /// overtakes the one before it only when clearly louder, so the list does not flap; an
    /// empty list when nobody speaks. Only while the sound-level monitor runs.
    ///
    /// A Huddle addition, after LiveKit's `ActiveSpeakersChanged`: ZEGO Express has no such
    /// event (its apps compare the sound levels themselves).
    fn on_active_speakers_changed(&self, stream_ids: &[StreamId]) {}

    /// Something went wrong that no state change reports (for example the server refused a
    /// renewed token).
    #[doc(alias = "onDebugError")]
    fn on_debug_error(&self, error_code: ErrorCode, func_name: &str, info: &str) {}

    /// The handler fell [`EngineConfig::event_queue`] events behind, so the engine dropped
    /// `count` events rather than wait for it (waiting would stall heartbeats, reconnection and
    /// media). They are exactly the events that happened between the event delivered before
    /// this one and the next one delivered after it. A Huddle addition: the hosted SDKs say
    /// nothing of what a slow callback costs.
    ///
    /// An app that sees this should treat its view of the room as stale: the room's users and
    /// streams are what [`Engine`](crate::Engine) reports through later events, and a state
    /// event may be among the dropped ones.
    ///
    /// ```
    /// use huddle::EventHandler;
    ///
    /// struct App;
    /// impl EventHandler for App {
    ///     fn on_events_dropped(&self, count: u64) {
    ///         eprintln!("{count} events lost: this handler is too slow");
    ///     }
    /// }
    /// ```
    ///
    /// [`EngineConfig::event_queue`]: crate::EngineConfig::event_queue
    fn on_events_dropped(&self, count: u64) {}
}

/// Details for `extended_data`: `{"message": …}`, or empty when there is nothing to say.
pub(crate) fn extended(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        serde_json::json!({ "message": message }).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialize_with_their_callback_names_and_arguments() {
        let e = Event::PublisherStateUpdate {
            stream_id: StreamId::new("s1").unwrap(),
            state: PublisherState::Publishing,
            error_code: ErrorCode::OK,
            extended_data: String::new(),
        };
        assert_eq!(
            e.to_json(),
            serde_json::json!({"event": "publisher_state_update", "stream_id": "s1", "state": "Publishing", "error_code": 0})
        );
        let e = Event::RoomStateChanged {
            room_id: RoomId::new("r").unwrap(),
            reason: RoomStateChangedReason::LoginFailed,
            error_code: ErrorCode(1002033),
            extended_data: extended("no"),
        };
        assert_eq!(
            e.to_json(),
            serde_json::json!({"event": "room_state_changed", "room_id": "r", "reason": "LoginFailed", "error_code": 1002033, "extended_data": "{\"message\":\"no\"}"})
        );
        assert_eq!(
            Event::PublisherCapturedAudioFirstFrame.to_json(),
            serde_json::json!({"event": "publisher_captured_audio_first_frame"})
        );
    }

    #[test]
    fn sound_level_events_serialize_and_reach_both_callbacks() {
        let info = SoundLevelInfo {
            sound_level: 42.345,
            vad: true,
        };
        let remote = Event::RemoteSoundLevelUpdate {
            sound_levels: [("s1".to_string(), info)].into_iter().collect(),
        };
        assert_eq!(
            remote.to_json(),
            serde_json::json!({"event": "remote_sound_level_update", "sound_levels": {"s1": {"sound_level": 42.3, "vad": true}}})
        );
        assert_eq!(
            Event::CapturedSoundLevelUpdate { info }.to_json(),
            serde_json::json!({"event": "captured_sound_level_update", "sound_level": 42.3, "vad": true})
        );
        let speakers = Event::ActiveSpeakersChanged {
            stream_ids: vec![StreamId::new("a").unwrap(), StreamId::new("b").unwrap()],
        };
        assert_eq!(
            speakers.to_json(),
            serde_json::json!({"event": "active_speakers_changed", "stream_ids": ["a", "b"]})
        );
        assert!(remote.is_sound_level() && !speakers.is_sound_level());
        // ZEGO's older callbacks (level only) get the levels through the defaults.
        struct Old(std::sync::Mutex<Vec<f32>>);
        impl EventHandler for Old {
            fn on_captured_sound_level_update(&self, sound_level: f32) {
                self.0.lock().unwrap().push(sound_level);
            }
            fn on_remote_sound_level_update(&self, sound_levels: &BTreeMap<String, f32>) {
                self.0.lock().unwrap().push(sound_levels["s1"]);
            }
        }
        let h = Old(Default::default());
        h.on_event(&remote);
        h.on_event(&Event::CapturedSoundLevelUpdate { info });
        assert_eq!(*h.0.lock().unwrap(), vec![42.345, 42.345]);
    }

    #[test]
    fn message_and_extra_info_events_serialize_for_huddle_call() {
        let r = RoomId::new("r").unwrap();
        let alice = User::new(UserId::new("alice").unwrap());
        let e = Event::IMRecvCustomCommand {
            room_id: r.clone(),
            from_user: alice.clone(),
            command: "go".into(),
        };
        assert_eq!(
            e.to_json(),
            serde_json::json!({"event": "im_recv_custom_command", "room_id": "r", "from_user": {"user_id": "alice", "user_name": "alice"}, "command": "go"})
        );
        let e = Event::IMSendBroadcastMessageResult {
            room_id: r.clone(),
            seq: 3,
            error_code: ErrorCode::OK,
            message_id: 9,
        };
        assert_eq!(
            e.to_json(),
            serde_json::json!({"event": "im_send_broadcast_message_result", "room_id": "r", "seq": 3, "error_code": 0, "message_id": 9})
        );
        let e = Event::RoomExtraInfoUpdate {
            room_id: r.clone(),
            room_extra_info_list: vec![RoomExtraInfo {
                key: "topic".into(),
                value: "v".into(),
                update_user: alice,
                update_time_ms: 5,
            }],
        };
        assert_eq!(
            e.to_json(),
            serde_json::json!({"event": "room_extra_info_update", "room_id": "r", "room_extra_info_list": [{"key": "topic", "value": "v", "update_user": {"user_id": "alice", "user_name": "alice"}, "update_time": 5}]})
        );
        assert_eq!(
            Event::RoomOnlineUserCountUpdate { room_id: r, count: 2 }.to_json(),
            serde_json::json!({"event": "room_online_user_count_update", "room_id": "r", "count": 2})
        );
    }

    /// A handler that overrides only the callbacks still gets them through `on_event`'s default.
    #[test]
    fn the_default_on_event_calls_the_callback() {
        struct Streams(std::sync::Mutex<Vec<String>>);
        impl EventHandler for Streams {
            fn on_player_recv_audio_first_frame(&self, stream_id: &str) {
                self.0.lock().unwrap().push(stream_id.into());
            }
        }
        let h = Streams(Default::default());
        let e = Event::PlayerRecvAudioFirstFrame {
            stream_id: StreamId::new("s2").unwrap(),
        };
        h.on_event(&e);
        Event::PublisherCapturedAudioFirstFrame.dispatch(&h);
        assert_eq!(*h.0.lock().unwrap(), vec!["s2".to_string()]);
    }
}
