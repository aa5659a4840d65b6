//! Signaling messages: JSON text frames over one WebSocket per logged-in room.
//!
//! Every message is an object with a `"type"` tag. Client requests carry a `seq` that the server
//! echoes in its reply (`ok`, `error` or a typed reply such as `login_ok`); events from the server
//! carry no `seq`. `docs/protocol.md` describes the exchange; [`PROTOCOL_VERSION`] is bumped on any
//! incompatible change.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{ErrorCode, HuddleError};
use crate::ids::{AppId, RoomId, StreamId, UserId, UserName, check_extra_info};

/// The signaling protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// The largest signaling message either side accepts, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// The largest broadcast or barrage message or custom command, in bytes (as the hosted SDKs).
pub const MAX_IM_BYTES: usize = 1024;

/// The most recipients one custom command may name.
pub const MAX_COMMAND_RECIPIENTS: usize = 100;

/// The longest room extra info key, in bytes (as the hosted SDKs).
pub const MAX_ROOM_EXTRA_KEY_BYTES: usize = 10;

/// The longest room extra info value, in bytes (as the hosted SDKs).
pub const MAX_ROOM_EXTRA_VALUE_BYTES: usize = 128;

/// Checks a broadcast or barrage message or a custom command: 1 to [`MAX_IM_BYTES`] bytes.
pub fn check_im_content(s: &str) -> Result<(), HuddleError> {
    if s.is_empty() || s.len() > MAX_IM_BYTES {
        return Err(HuddleError::new(
            ErrorCode::IM_CONTENT_INVALID,
            format!("the text is {} bytes; 1 to {MAX_IM_BYTES} are allowed", s.len()),
        ));
    }
    Ok(())
}

/// Checks a room extra info key: 1 to [`MAX_ROOM_EXTRA_KEY_BYTES`] bytes.
pub fn check_room_extra_key(s: &str) -> Result<(), HuddleError> {
    if s.is_empty() || s.len() > MAX_ROOM_EXTRA_KEY_BYTES {
        return Err(HuddleError::new(
            ErrorCode::ROOM_EXTRA_INFO_KEY_INVALID,
            format!(
                "the key is {} bytes; 1 to {MAX_ROOM_EXTRA_KEY_BYTES} are allowed",
                s.len()
            ),
        ));
    }
    Ok(())
}

/// Checks a room extra info value: at most [`MAX_ROOM_EXTRA_VALUE_BYTES`] bytes.
pub fn check_room_extra_value(s: &str) -> Result<(), HuddleError> {
    if s.len() > MAX_ROOM_EXTRA_VALUE_BYTES {
        return Err(HuddleError::new(
            ErrorCode::ROOM_EXTRA_INFO_VALUE_TOO_LONG,
            format!(
                "the value is {} bytes; at most {MAX_ROOM_EXTRA_VALUE_BYTES} are allowed",
                s.len()
            ),
        ));
    }
    Ok(())
}

/// The WebSocket path of the signaling endpoint.
pub const SIGNALING_PATH: &str = "/ws";

/// A user in a room.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
pub struct User {
    /// The user's ID, unique in the room.
    pub user_id: UserId,
    /// The display name.
    pub user_name: UserName,
}

impl User {
    /// A user whose name is its ID.
    pub fn new(user_id: UserId) -> Self {
        // Every user ID is a valid user name (ASCII, no control characters, at most 64 bytes).
        let user_name = UserName::new(user_id.as_str()).expect("a user ID is a valid user name");
        User { user_id, user_name }
    }
}

/// A published stream as others see it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StreamInfo {
    /// The publisher's user ID.
    pub user_id: UserId,
    /// The publisher's name.
    pub user_name: UserName,
    /// The stream ID, unique in the AppID.
    pub stream_id: StreamId,
    /// Free text the publisher attached (at most 1024 bytes).
    pub extra_info: String,
    /// The publisher's microphone as its players see it (`open` when absent).
    #[serde(default, skip_serializing_if = "DeviceState::is_open")]
    pub mic_state: DeviceState,
    /// The publisher's camera as its players see it (`open` when absent).
    #[serde(default, skip_serializing_if = "DeviceState::is_open")]
    pub camera_state: DeviceState,
}

/// The state of a publisher's microphone or camera as its players see it: a subset of ZEGO
/// Express's `ZegoRemoteDeviceState`, whose numbers [`DeviceState::code`] gives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
#[doc(alias = "ZegoRemoteDeviceState")]
pub enum DeviceState {
    /// The device is on and its media is sent (ZEGO's `Open`, 0).
    #[default]
    Open,
    /// The publisher turned the device off (ZEGO's `Disable`, 9).
    Disable,
    /// The publisher muted it: silence (audio) or nothing (video) is sent (ZEGO's `Mute`, 10).
    Mute,
}

impl DeviceState {
    /// Whether the device is open (the default, left out of [`StreamInfo`] on the wire).
    pub fn is_open(&self) -> bool {
        *self == DeviceState::Open
    }

    /// ZEGO Express's number for this state (`ZegoRemoteDeviceState`).
    pub fn code(self) -> u32 {
        match self {
            DeviceState::Open => 0,
            DeviceState::Disable => 9,
            DeviceState::Mute => 10,
        }
    }
}

/// An audio or video track of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TrackKind {
    /// The audio track (the microphone).
    Audio,
    /// The video track (the camera).
    Video,
}

/// One key of a room's extra info, as the hosted SDKs' `ZegoRoomExtraInfo`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RoomExtraInfo {
    /// The key (1 to 10 bytes).
    pub key: String,
    /// The value (at most 128 bytes).
    pub value: String,
    /// Who set it last.
    pub update_user: User,
    /// When it was set, Unix milliseconds (by the server's clock).
    pub update_time_ms: u64,
}

/// Whether a list update adds or removes entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
pub enum UpdateType {
    /// The entries are new.
    Add,
    /// The entries are gone.
    Delete,
}

/// Which side of a stream a media peer connection carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MediaRole {
    /// The client sends the stream it publishes; the server receives.
    Publish,
    /// The server sends a stream the client plays; the client receives.
    Play,
}

/// The state of a media peer connection, as the server reports it in `media_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PeerState {
    /// ICE and DTLS are up: media flows.
    Connected,
    /// The server closed the connection (the stream went away, or a newer offer replaced it).
    Closed,
    /// The connection failed (ICE timeout, DTLS failure); the client may offer again.
    Failed,
}

/// A quality level of a stream or of a user's network (ZEGO Express's `ZegoStreamQualityLevel`,
/// in the same order: Excellent 0 … Die 4, Unknown 5). Carried by `network_quality` and by the
/// SDK's quality events.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
#[doc(alias = "ZegoStreamQualityLevel")]
pub enum StreamQualityLevel {
    /// Excellent.
    Excellent,
    /// Good.
    Good,
    /// Medium: noticeable, still fine for a call.
    Medium,
    /// Bad: the call suffers.
    Bad,
    /// Nothing arrives: the network (or the user) is gone for now.
    Die,
    /// Not known (yet): no measurement, or a user's report is late.
    Unknown,
}

/// How a login proves it may use the app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Auth {
    /// Lowercase hex HMAC-SHA256 of the server's nonce, keyed by the AppSign
    /// (`huddle_token::sign_challenge`). The AppSign itself never crosses the wire.
    Sign(String),
    /// A Token04 token issued by the app's server with the app's server secret.
    Token(String),
}

/// Resuming a session that broke, within the server's grace period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Resume {
    /// The session ID from the earlier `login_ok`.
    pub session_id: String,
    /// The secret resume key from the earlier `login_ok`.
    pub resume_key: String,
}

/// The login request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Login {
    /// Request number, echoed in the reply.
    pub seq: u32,
    /// The client's [`PROTOCOL_VERSION`].
    pub protocol: u32,
    /// The app.
    pub app_id: AppId,
    /// The room; created on first login.
    pub room_id: RoomId,
    /// Who logs in.
    pub user: User,
    /// Proof of access.
    pub auth: Auth,
    /// Whether this session wants `user_update` events.
    #[serde(default)]
    pub user_status_notify: bool,
    /// The room's member limit if this login creates the room (0: the server's default).
    #[serde(default)]
    pub max_member_count: u32,
    /// Set to resume a broken session instead of starting a new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<Resume>,
    /// The client starts its ICE checks as soon as it has a `media_answer` that makes the server
    /// the DTLS client (`a=setup:active`, RFC 5763 section 5): the server then answers this
    /// session's `actpass` offers so, which saves a DTLS flight of setup. Clients that leave it
    /// out (false) are answered `a=setup:passive` as before: an SDK built on str0m before its
    /// fix waited for a check from the ICE-lite server that never comes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub setup_active: bool,
}

/// Messages from a client to the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMsg {
    /// Log in to a room (the first message; answered by `login_ok` or `error`).
    Login(Login),
    /// Leave the room; the server replies `ok` and closes the connection.
    Logout {
        /// Request number.
        seq: u32,
    },
    /// Start publishing a stream under an ID unique in the AppID.
    Publish {
        /// Request number.
        seq: u32,
        /// The stream ID.
        stream_id: StreamId,
        /// Free text for the players (at most 1024 bytes).
        #[serde(default)]
        extra_info: String,
    },
    /// Stop publishing a stream.
    Unpublish {
        /// Request number.
        seq: u32,
        /// The stream ID.
        stream_id: StreamId,
    },
    /// Play a stream of this AppID (it may not exist yet: `play_update` tells when it does).
    Play {
        /// Request number.
        seq: u32,
        /// The stream ID.
        stream_id: StreamId,
    },
    /// Stop playing a stream.
    StopPlay {
        /// Request number.
        seq: u32,
        /// The stream ID.
        stream_id: StreamId,
    },
    /// Replace the session's token before it expires.
    RenewToken {
        /// Request number.
        seq: u32,
        /// The new token.
        token: String,
    },
    /// Heartbeat; answered by `pong`.
    Ping {
        /// Request number.
        seq: u32,
    },
    /// An SDP offer for the media peer connection of a stream this session publishes or plays;
    /// answered by `media_answer` or `error`. It may follow its `publish` or `play` at once,
    /// without waiting for the reply (a play offer for a stream not published yet is held until
    /// it is). A new offer for the same stream and role replaces the session's earlier
    /// connection.
    MediaOffer {
        /// Request number.
        seq: u32,
        /// The stream.
        stream_id: StreamId,
        /// Publish (the client sends) or play (the server sends).
        kind: MediaRole,
        /// The SDP offer.
        sdp: String,
        /// Play with RED (RFC 2198): how far back, in 20 ms frames, the client's player waits
        /// for a lost frame's redundant copy. 6 or more (the Rust SDK): the server sends each
        /// frame with the ones 1, 3 and 6 before it; less, or absent (browsers: their jitter
        /// buffer plays a copy only while it is on time): the ones 1, 2 and 3 before it.
        /// Ignored for publish.
        #[serde(default, skip_serializing_if = "is_zero")]
        red_depth: u8,
    },
    /// This session's own network quality, as the client measures it (sent every 2 s while it
    /// publishes or plays); answered by `ok`, or 1009050 when sent again within a second. The
    /// server relays it to the room's other sessions as `network_quality`.
    NetworkQuality {
        /// Request number.
        seq: u32,
        /// The client's upstream level (what it sends reaches the server).
        upstream: StreamQualityLevel,
        /// The client's downstream level (what the server sends reaches it).
        downstream: StreamQualityLevel,
    },
    /// The publisher's microphone or camera state for a stream it publishes (mute, unmute);
    /// answered by `ok`. Kept with the stream (late players and `stream_update` see it) and sent
    /// to its players as `remote_device_state`. 1009060 for a stream this session does not
    /// publish, 1009062 beyond 20 mute changes a second.
    SetDeviceState {
        /// Request number.
        seq: u32,
        /// The stream.
        stream_id: StreamId,
        /// Audio (microphone) or video (camera).
        track: TrackKind,
        /// The new state.
        state: DeviceState,
    },
    /// Stop (`mute`) or resume receiving one track of a stream this session plays: the server
    /// stops forwarding it to this session (saving its downlink) until unmuted; a video track
    /// resumes at a keyframe. Answered by `ok`; kept across a new `media_offer` of the stream.
    /// 1009061 for a stream this session does not play, 1009062 beyond 20 mute changes a second.
    MutePlay {
        /// Request number.
        seq: u32,
        /// The stream.
        stream_id: StreamId,
        /// Audio or video.
        track: TrackKind,
        /// True to stop receiving, false to resume.
        mute: bool,
    },
    /// A broadcast message to everyone else in the room: reliable and in order per sender;
    /// 1 to 1024 bytes; at most 2 a second per user and 10 a second per room (1009071,
    /// 1009072). Answered by `message_sent` with the message's ID; the others get
    /// `broadcast_message`.
    SendBroadcastMessage {
        /// Request number.
        seq: u32,
        /// The text.
        message: String,
    },
    /// A barrage message to everyone else in the room: best effort (dropped for a recipient
    /// whose connection is congested); 1 to 1024 bytes; at most 20 a second per room. Answered
    /// by `message_sent`; the others get `barrage_message`.
    SendBarrageMessage {
        /// Request number.
        seq: u32,
        /// The text.
        message: String,
    },
    /// A custom command to chosen users of the room (every other user when `to_users` is
    /// empty): reliable; 1 to 1024 bytes; at most 100 recipients; at most 200 a second per room
    /// to one user, 10 to several. Users not in the room are skipped; when none is left the
    /// command is refused with 1009073. Answered by `ok`; the recipients get `custom_command`.
    SendCustomCommand {
        /// Request number.
        seq: u32,
        /// The command text.
        command: String,
        /// The recipients (empty: everyone else in the room).
        #[serde(default)]
        to_users: Vec<UserId>,
    },
    /// Replaces the extra info of a stream this session publishes (at most 1024 bytes);
    /// answered by `ok`, or 1004002 when the session does not publish it. The room gets
    /// `stream_extra_info_update`.
    SetStreamExtraInfo {
        /// Request number.
        seq: u32,
        /// The stream.
        stream_id: StreamId,
        /// The new extra info.
        extra_info: String,
    },
    /// Sets the room's extra info under `key` (1 to 10 bytes; one key per room) to `value` (at
    /// most 128 bytes); at most 10 a second per room. Answered by `ok`; the others get
    /// `room_extra_info_update`, and so does every later login.
    SetRoomExtraInfo {
        /// Request number.
        seq: u32,
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
}

/// The reply to a successful login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct LoginOk {
    /// The login's request number.
    pub seq: u32,
    /// This session's ID (for resume).
    pub session_id: String,
    /// Secret key to resume this session after a break.
    pub resume_key: String,
    /// The room logged in to.
    pub room_id: RoomId,
    /// True when an earlier session was resumed.
    pub resumed: bool,
    /// The other users in the room now (empty unless `user_status_notify`).
    pub users: Vec<User>,
    /// The streams published in the room now.
    pub streams: Vec<StreamInfo>,
    /// How often the client sends `ping`.
    pub heartbeat_ms: u32,
    /// The server drops a connection silent for this long.
    pub session_timeout_ms: u32,
    /// How long a broken session keeps its user and streams, waiting for a resume.
    pub grace_ms: u32,
    /// The token's expiry (Unix seconds) when the login used a token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_expire: Option<i64>,
    /// TURN (and STUN) servers for this session's peer connections, with short-lived
    /// credentials, when the server has a `[turn]` configuration; absent otherwise. Shaped as
    /// the browser's `RTCIceServer`, so a web client passes them to `RTCPeerConnection` as they
    /// are. Each `login_ok` (a resume too) carries fresh credentials.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ice_servers: Vec<IceServer>,
}

/// A STUN or TURN server for a client's peer connections (the browser's `RTCIceServer`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct IceServer {
    /// `turn:`, `turns:` or `stun:` URLs of one server.
    pub urls: Vec<String>,
    /// The TURN username (`{expiry unix seconds}:{user}` in the TURN REST API scheme).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The TURN password (base64 of HMAC-SHA1 over the username, keyed by the shared secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// Messages from the server to a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    /// Sent first on every connection: the challenge nonce for AppSign logins.
    Hello {
        /// The server's protocol version.
        protocol: u32,
        /// The challenge nonce (hex).
        nonce: String,
        /// The server's clock, Unix milliseconds.
        server_time_ms: u64,
    },
    /// A successful login.
    LoginOk(LoginOk),
    /// A request succeeded.
    Ok {
        /// The request number.
        seq: u32,
    },
    /// A request failed, or (without `seq`) the connection is being closed for a reason.
    Error {
        /// The request number, if the error answers one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u32>,
        /// The numbered code.
        code: ErrorCode,
        /// What went wrong.
        message: String,
    },
    /// The answer to `ping`.
    Pong {
        /// The request number.
        seq: u32,
        /// The server's clock, Unix milliseconds.
        server_time_ms: u64,
    },
    /// Users came or went (only to sessions with `user_status_notify`).
    UserUpdate {
        /// The room.
        room_id: RoomId,
        /// Add or Delete.
        update_type: UpdateType,
        /// The users.
        users: Vec<User>,
    },
    /// Streams came or went in the room.
    StreamUpdate {
        /// The room.
        room_id: RoomId,
        /// Add or Delete.
        update_type: UpdateType,
        /// The streams.
        streams: Vec<StreamInfo>,
    },
    /// A stream this session plays became available or went away.
    PlayUpdate {
        /// The stream.
        stream_id: StreamId,
        /// Whether a publisher publishes it now.
        available: bool,
    },
    /// The SDP answer to a `media_offer`.
    MediaAnswer {
        /// The offer's request number.
        seq: u32,
        /// The stream.
        stream_id: StreamId,
        /// The offer's role.
        kind: MediaRole,
        /// The SDP answer.
        sdp: String,
    },
    /// A media peer connection of this session changed state (connected, or closed or failed by
    /// the server).
    MediaState {
        /// The stream.
        stream_id: StreamId,
        /// The connection's role.
        kind: MediaRole,
        /// The new state.
        state: PeerState,
        /// Why, for `closed` and `failed` (0 for `connected`).
        code: ErrorCode,
        /// In words.
        message: String,
    },
    /// The session's token expires soon (sent once per token, 30 s before its expiry, or at once
    /// when less is left): renew it with `renew_token`, or the session ends at `expire` with
    /// `kicked` 1002056.
    TokenWillExpire {
        /// The token's expiry, Unix seconds (the one the warning is for).
        expire: i64,
        /// Whole seconds left, by the server's clock.
        remain_secs: i64,
    },
    /// Another user of the room reported its network quality (relayed `network_quality`).
    NetworkQuality {
        /// The user.
        user_id: UserId,
        /// Its upstream level.
        upstream: StreamQualityLevel,
        /// Its downstream level.
        downstream: StreamQualityLevel,
    },
    /// A broadcast message to everyone else in the room, sent by another user
    /// (`send_broadcast_message`) or by the server API (`SendBroadcastMessage`); what the
    /// hosted SDKs report as `onIMRecvBroadcastMessage`.
    BroadcastMessage {
        /// The room.
        room_id: RoomId,
        /// The message's ID: unique, and increasing on the node that took it.
        message_id: u64,
        /// When the server sent it, Unix milliseconds.
        send_time_ms: u64,
        /// The sender (a server API call names it: it need not be in the room).
        from_user: User,
        /// The text (at most 1024 bytes).
        message: String,
    },
    /// The answer to `send_broadcast_message` and `send_barrage_message`.
    MessageSent {
        /// The request number.
        seq: u32,
        /// The message's ID (as in `broadcast_message` and `barrage_message`).
        message_id: u64,
    },
    /// A barrage message of another user of the room (`send_barrage_message`); what the
    /// hosted SDKs report as `onIMRecvBarrageMessage`.
    BarrageMessage {
        /// The room.
        room_id: RoomId,
        /// The message's ID.
        message_id: u64,
        /// When the server took it, Unix milliseconds.
        send_time_ms: u64,
        /// The sender.
        from_user: User,
        /// The text (at most 1024 bytes).
        message: String,
    },
    /// The microphone or camera state of a stream this session plays changed (its publisher
    /// muted or unmuted it); also sent after `play_update` available when the state is not `open`.
    /// What the SDKs report as `on_remote_mic_state_update` / `on_remote_camera_state_update`.
    RemoteDeviceState {
        /// The stream.
        stream_id: StreamId,
        /// Audio (microphone) or video (camera).
        track: TrackKind,
        /// The new state.
        state: DeviceState,
    },
    /// A custom command another user of the room sent to this user (`send_custom_command`).
    CustomCommand {
        /// The room.
        room_id: RoomId,
        /// The sender.
        from_user: User,
        /// The command text (at most 1024 bytes).
        command: String,
    },
    /// Streams of the room have new extra info (`set_stream_extra_info`).
    StreamExtraInfoUpdate {
        /// The room.
        room_id: RoomId,
        /// The streams, with their new extra info.
        streams: Vec<StreamInfo>,
    },
    /// The room's extra info changed (`set_room_extra_info`), or, right after `login_ok`, the
    /// room's extra info as it is.
    RoomExtraInfoUpdate {
        /// The room.
        room_id: RoomId,
        /// The keys that changed, with their values now.
        infos: Vec<RoomExtraInfo>,
    },
    /// The number of users in the room on every node: once after `login_ok`, then every 30 s.
    RoomOnlineUserCount {
        /// The room.
        room_id: RoomId,
        /// The users online.
        count: u32,
    },
    /// The session is ended by the server; the connection closes after this.
    Kicked {
        /// Why (e.g. 1002050 for a duplicate login).
        code: ErrorCode,
        /// In words.
        message: String,
    },
}

/// A client message that could not be accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// The request number, when the message carried one.
    pub seq: Option<u32>,
    /// The code and message to answer with.
    pub error: HuddleError,
}

impl ClientMsg {
    /// The request number.
    pub fn seq(&self) -> u32 {
        match self {
            ClientMsg::Login(l) => l.seq,
            ClientMsg::Logout { seq }
            | ClientMsg::Publish { seq, .. }
            | ClientMsg::Unpublish { seq, .. }
            | ClientMsg::Play { seq, .. }
            | ClientMsg::StopPlay { seq, .. }
            | ClientMsg::RenewToken { seq, .. }
            | ClientMsg::Ping { seq }
            | ClientMsg::MediaOffer { seq, .. }
            | ClientMsg::NetworkQuality { seq, .. }
            | ClientMsg::SetDeviceState { seq, .. }
            | ClientMsg::MutePlay { seq, .. }
            | ClientMsg::SendBroadcastMessage { seq, .. }
            | ClientMsg::SendBarrageMessage { seq, .. }
            | ClientMsg::SendCustomCommand { seq, .. }
            | ClientMsg::SetStreamExtraInfo { seq, .. }
            | ClientMsg::SetRoomExtraInfo { seq, .. } => *seq,
        }
    }

    /// Encodes as JSON text.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("client messages always serialize")
    }

    /// Decodes untrusted JSON text, answering bad IDs with their own codes.
    ///
    /// ```
    /// use huddle_proto::{ClientMsg, ErrorCode};
    /// let err = ClientMsg::decode(r#"{"type":"publish","seq":3,"stream_id":"a b"}"#).unwrap_err();
    /// assert_eq!(err.seq, Some(3));
    /// assert_eq!(err.error.code, ErrorCode::STREAM_ID_INVALID_CHARACTER);
    /// ```
    pub fn decode(text: &str) -> Result<ClientMsg, DecodeError> {
        if text.len() > MAX_MESSAGE_BYTES {
            return Err(DecodeError {
                seq: None,
                error: HuddleError::new(
                    ErrorCode::MESSAGE_TOO_LARGE,
                    format!(
                        "the message is {} bytes; at most {MAX_MESSAGE_BYTES} are allowed",
                        text.len()
                    ),
                ),
            });
        }
        let malformed = |seq, why: String| DecodeError {
            seq,
            error: HuddleError::new(ErrorCode::MALFORMED_MESSAGE, why),
        };
        let value: Value = serde_json::from_str(text).map_err(|e| malformed(None, not_json(&e)))?;
        let Some(obj) = value.as_object() else {
            return Err(malformed(None, "not a JSON object".into()));
        };
        let seq = obj
            .get("seq")
            .and_then(Value::as_u64)
            .and_then(|s| u32::try_from(s).ok());
        // Check the IDs first so that a bad one is answered with its own code, not "malformed".
        check_fields(obj).map_err(|error| DecodeError { seq, error })?;
        ClientMsg::deserialize(&value).map_err(|e| malformed(seq, not_a_message(obj, &e)))
    }
}

/// Says in the project's words why a text is not JSON, with the position of the fault in the
/// text (the client's own input, so it may be named).
fn not_json(e: &serde_json::Error) -> String {
    let why = match e.classify() {
        serde_json::error::Category::Eof => "it ends too early",
        _ => "a syntax error",
    };
    format!(
        "the message is not JSON: {why} at line {}, column {}",
        e.line(),
        e.column()
    )
}

/// Says in the project's words why a JSON object is not a client message. serde's own texts
/// name Rust types (`struct User`, `u32`, `variant identifier`), which are ours to keep, so they
/// are translated here and anything not recognised is left out rather than passed through.
/// (serde loses the path of the field inside an internally tagged enum, so only an unknown
/// value can be pinned to its field, by looking for it among the message's fields.)
fn not_a_message(obj: &serde_json::Map<String, Value>, e: &serde_json::Error) -> String {
    let inner = e.to_string();
    let quoted = |s: &str| s.split('`').nth(1).unwrap_or_default().to_owned();
    if let Some(rest) = inner.strip_prefix("missing field ") {
        return format!("the field `{}` is missing", quoted(rest));
    }
    if let Some(rest) = inner.strip_prefix("unknown variant ") {
        let got = quoted(rest);
        let allowed = rest.split_once("expected ").map(|(_, a)| a).unwrap_or("");
        let field = obj
            .iter()
            .find(|(_, v)| v.as_str() == Some(got.as_str()))
            .map(|(k, _)| k);
        return match field.map(String::as_str) {
            Some("type") => format!("unknown message type `{got}`; expected {allowed}"),
            Some(field) => format!("`{field}` has the unknown value `{got}`; expected {allowed}"),
            None => format!("a field has the unknown value `{got}`; expected {allowed}"),
        };
    }
    for (prefix, what) in [
        ("invalid type: ", "has the wrong type"),
        ("invalid value: ", "is out of range"),
    ] {
        if let Some(rest) = inner.strip_prefix(prefix) {
            let (got, expected) = rest.split_once(", expected ").unwrap_or((rest, ""));
            return match expected_in_our_words(expected) {
                Some(expected) => format!("a field {what}: {got}, expected {expected}"),
                None => format!("a field {what}: {got}"),
            };
        }
    }
    "the message does not match the protocol (docs/protocol.md)".to_owned()
}

/// The protocol's words for what serde expected, or `None` for anything unrecognised.
fn expected_in_our_words(serde: &str) -> Option<&'static str> {
    Some(match serde {
        "u8" => "a whole number from 0 to 255",
        "u16" => "a whole number from 0 to 65535",
        "u32" => "a whole number from 0 to 4294967295",
        "u64" => "a whole number from 0 to 18446744073709551615",
        "i32" | "i64" => "a whole number",
        "a boolean" => "true or false",
        "a string" | "variant identifier" => "a string",
        "string or map" => "a string or an object",
        "a sequence" => "an array",
        s if s.starts_with("struct ") || s.starts_with("internally tagged enum") || s == "a map" => {
            "an object"
        }
        _ => return None,
    })
}

fn check_fields(obj: &serde_json::Map<String, Value>) -> Result<(), HuddleError> {
    if let Some(n) = obj.get("app_id").and_then(Value::as_u64) {
        AppId::new(u32::try_from(n).unwrap_or(0))?;
    }
    if let Some(Value::String(s)) = obj.get("room_id") {
        RoomId::new(s.as_str())?;
    }
    if let Some(Value::Object(user)) = obj.get("user") {
        if let Some(Value::String(s)) = user.get("user_id") {
            UserId::new(s.as_str())?;
        }
        if let Some(Value::String(s)) = user.get("user_name") {
            UserName::new(s.as_str())?;
        }
    }
    if let Some(Value::String(s)) = obj.get("stream_id") {
        StreamId::new(s.as_str())?;
    }
    if let Some(Value::String(s)) = obj.get("extra_info") {
        check_extra_info(s)?;
    }
    let kind = obj.get("type").and_then(Value::as_str);
    for field in ["message", "command"] {
        if matches!(
            kind,
            Some("send_broadcast_message" | "send_barrage_message" | "send_custom_command")
        ) && let Some(Value::String(s)) = obj.get(field)
        {
            check_im_content(s)?;
        }
    }
    if kind == Some("send_custom_command")
        && let Some(Value::Array(to)) = obj.get("to_users")
    {
        if to.len() > MAX_COMMAND_RECIPIENTS {
            return Err(HuddleError::new(
                ErrorCode::CUSTOM_COMMAND_NO_RECIPIENT,
                format!(
                    "a custom command goes to at most {MAX_COMMAND_RECIPIENTS} users, not {}",
                    to.len()
                ),
            ));
        }
        for u in to {
            if let Value::String(u) = u {
                UserId::new(u.as_str())?;
            }
        }
    }
    if kind == Some("set_room_extra_info") {
        if let Some(Value::String(k)) = obj.get("key") {
            check_room_extra_key(k)?;
        }
        if let Some(Value::String(v)) = obj.get("value") {
            check_room_extra_value(v)?;
        }
    }
    Ok(())
}

impl ServerMsg {
    /// Encodes as JSON text.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("server messages always serialize")
    }

    /// Decodes JSON text from the server.
    pub fn decode(text: &str) -> Result<ServerMsg, HuddleError> {
        if text.len() > MAX_MESSAGE_BYTES {
            return Err(HuddleError::new(
                ErrorCode::MESSAGE_TOO_LARGE,
                "server message too large",
            ));
        }
        serde_json::from_str(text)
            .map_err(|e| HuddleError::new(ErrorCode::MALFORMED_MESSAGE, format!("bad server message: {e}")))
    }

    /// An error reply to request `seq`.
    pub fn error(seq: Option<u32>, err: &HuddleError) -> ServerMsg {
        ServerMsg::Error {
            seq,
            code: err.code,
            message: err.message.clone(),
        }
    }
}

/// For `skip_serializing_if`: a field left at zero is not sent.
fn is_zero(n: &u8) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login() -> ClientMsg {
        ClientMsg::Login(Login {
            seq: 1,
            protocol: PROTOCOL_VERSION,
            app_id: AppId::new(7).unwrap(),
            room_id: RoomId::new("r1").unwrap(),
            user: User::new(UserId::new("alice").unwrap()),
            auth: Auth::Sign("00ff".into()),
            user_status_notify: true,
            max_member_count: 0,
            resume: None,
            setup_active: false,
        })
    }

    /// A login from a client that does not know `setup_active` (an older SDK) parses as one that
    /// does not declare it; a client that declares it says so on the wire, one that does not
    /// sends nothing new.
    #[test]
    fn setup_active_is_declared_or_absent() {
        let old = login().encode();
        assert!(!old.contains("setup_active"), "{old}");
        let ClientMsg::Login(l) = ClientMsg::decode(&old).unwrap() else {
            panic!("a login")
        };
        assert!(!l.setup_active);
        let ClientMsg::Login(mut l) = login() else {
            panic!("a login")
        };
        l.setup_active = true;
        let text = ClientMsg::Login(l).encode();
        assert!(text.contains(r#""setup_active":true"#), "{text}");
        let ClientMsg::Login(l) = ClientMsg::decode(&text).unwrap() else {
            panic!("a login")
        };
        assert!(l.setup_active);
    }

    #[test]
    fn roundtrip() {
        let m = login();
        let text = m.encode();
        assert!(
            text.starts_with(r#"{"type":"login","seq":1,"protocol":1,"app_id":7"#),
            "{text}"
        );
        assert_eq!(ClientMsg::decode(&text).unwrap(), m);
        let s = ServerMsg::StreamUpdate {
            room_id: RoomId::new("r1").unwrap(),
            update_type: UpdateType::Add,
            streams: vec![],
        };
        assert_eq!(ServerMsg::decode(&s.encode()).unwrap(), s);
        assert!(s.encode().contains(r#""update_type":"Add""#));
        let offer = ClientMsg::MediaOffer {
            seq: 4,
            stream_id: StreamId::new("s1").unwrap(),
            kind: MediaRole::Play,
            sdp: "v=0\r\n".into(),
            red_depth: 0,
        };
        let text = offer.encode();
        assert!(!text.contains("red_depth"), "{text}");
        assert!(
            text.starts_with(r#"{"type":"media_offer","seq":4,"stream_id":"s1","kind":"play""#),
            "{text}"
        );
        assert_eq!(ClientMsg::decode(&text).unwrap(), offer);
        let state = ServerMsg::MediaState {
            stream_id: StreamId::new("s1").unwrap(),
            kind: MediaRole::Publish,
            state: PeerState::Failed,
            code: ErrorCode::PUBLISH_TEMPORARY_BREAK,
            message: "ICE timed out".into(),
        };
        assert!(
            state
                .encode()
                .contains(r#""kind":"publish","state":"failed","code":1003020"#)
        );
        assert_eq!(ServerMsg::decode(&state.encode()).unwrap(), state);
    }

    #[test]
    fn decode_errors_are_in_the_protocols_words() {
        let cases = [
            (r#"{"type":"login","seq":1}"#, "the field `protocol` is missing"),
            (
                r#"{"type":"login","seq":1,"protocol":1,"app_id":7,"room_id":"r","user":5,"auth":{"sign":"00"}}"#,
                "a field has the wrong type: integer `5`, expected an object",
            ),
            (
                r#"{"type":"nope","seq":1}"#,
                "unknown message type `nope`; expected one of `login`,",
            ),
            (r#"{"seq":1}"#, "the field `type` is missing"),
            (
                r#"{"type":5}"#,
                "has the wrong type: integer `5`, expected a string",
            ),
            (
                r#"{"type":"ping","seq":"x"}"#,
                "a field has the wrong type: string \"x\", expected a whole number",
            ),
            (
                r#"{"type":"ping","seq":-1}"#,
                "a field is out of range: integer `-1`, expected a whole number from 0",
            ),
            (
                r#"{"type":"media_offer","seq":1,"stream_id":"s","kind":"x","sdp":""}"#,
                "`kind` has the unknown value `x`; expected `publish` or `play`",
            ),
            (
                r#"{"type":"login","seq":1,"protocol":1,"app_id":7,"room_id":"r","user":{"user_id":"u"},"auth":7}"#,
                "a field has the wrong type: integer `7`, expected a string or an object",
            ),
            (
                r#"{"type":"login","seq":1,"protocol":1,"app_id":7,"room_id":"r","user":{},"auth":{"sign":"00"}}"#,
                "the field `user_id` is missing",
            ),
            (
                "[1",
                "the message is not JSON: it ends too early at line 1, column 2",
            ),
            (
                "{\"a\" 1}",
                "the message is not JSON: a syntax error at line 1, column 6",
            ),
        ];
        for (text, want) in cases {
            let got = ClientMsg::decode(text).unwrap_err().error.message;
            assert!(got.contains(want), "{text}\n  got: {got}\n want: {want}");
            for internal in [
                "struct",
                "u32",
                "u64",
                "variant identifier",
                "ClientMsg",
                "::",
                "serde",
            ] {
                assert!(!got.contains(internal), "{text}: {got} names {internal}");
            }
        }
    }

    #[test]
    fn decode_errors_carry_codes() {
        let cases = [
            (
                r#"{"type":"play","seq":9,"stream_id":""}"#,
                Some(9),
                ErrorCode::STREAM_ID_EMPTY,
            ),
            (
                r#"{"type":"login","seq":1,"app_id":0}"#,
                Some(1),
                ErrorCode::APP_ID_UNKNOWN,
            ),
            (
                r#"{"type":"login","seq":1,"room_id":"a b"}"#,
                Some(1),
                ErrorCode::ROOM_ID_INVALID_CHARACTER,
            ),
            (
                r#"{"type":"login","seq":1,"user":{"user_id":""}}"#,
                Some(1),
                ErrorCode::USER_ID_EMPTY,
            ),
            (
                r#"{"type":"nope","seq":2}"#,
                Some(2),
                ErrorCode::MALFORMED_MESSAGE,
            ),
            (r#"[1,2]"#, None, ErrorCode::MALFORMED_MESSAGE),
            ("{", None, ErrorCode::MALFORMED_MESSAGE),
            (r#"{"type":"ping"}"#, None, ErrorCode::MALFORMED_MESSAGE),
        ];
        for (text, seq, code) in cases {
            let e = ClientMsg::decode(text).unwrap_err();
            assert_eq!((e.seq, e.error.code), (seq, code), "{text}");
        }
        let big = format!(
            r#"{{"type":"ping","seq":1,"pad":"{}"}}"#,
            "x".repeat(MAX_MESSAGE_BYTES)
        );
        assert_eq!(
            ClientMsg::decode(&big).unwrap_err().error.code,
            ErrorCode::MESSAGE_TOO_LARGE
        );
        let extra = format!(
            r#"{{"type":"publish","seq":1,"stream_id":"s","extra_info":"{}"}}"#,
            "x".repeat(1025)
        );
        assert_eq!(
            ClientMsg::decode(&extra).unwrap_err().error.code,
            ErrorCode::EXTRA_INFO_TOO_LONG
        );
    }

    #[test]
    fn message_and_extra_info_requests_are_checked_with_their_own_codes() {
        let code = |text: &str| {
            ClientMsg::decode(text)
                .map(|_| ())
                .map_err(|e| (e.seq, e.error.code))
        };
        let x = |n: usize| "x".repeat(n);
        for kind in ["send_broadcast_message", "send_barrage_message"] {
            assert_eq!(
                code(&format!(r#"{{"type":"{kind}","seq":4,"message":"{}"}}"#, x(1024))),
                Ok(())
            );
            for bad in [x(0), x(1025)] {
                assert_eq!(
                    code(&format!(r#"{{"type":"{kind}","seq":4,"message":"{bad}"}}"#)),
                    Err((Some(4), ErrorCode::IM_CONTENT_INVALID))
                );
            }
        }
        assert_eq!(
            code(r#"{"type":"send_custom_command","seq":5,"command":"c"}"#),
            Ok(()),
            "to_users may be left out (everyone)"
        );
        assert_eq!(
            code(r#"{"type":"send_custom_command","seq":5,"command":"c","to_users":["a b"]}"#),
            Err((Some(5), ErrorCode::USER_ID_INVALID_CHARACTER))
        );
        let many: Vec<String> = (0..101).map(|i| format!("\"u{i}\"")).collect();
        assert_eq!(
            code(&format!(
                r#"{{"type":"send_custom_command","seq":5,"command":"c","to_users":[{}]}}"#,
                many.join(",")
            )),
            Err((Some(5), ErrorCode::CUSTOM_COMMAND_NO_RECIPIENT))
        );
        assert_eq!(
            code(r#"{"type":"set_room_extra_info","seq":6,"key":"1234567890","value":""}"#),
            Ok(())
        );
        assert_eq!(
            code(r#"{"type":"set_room_extra_info","seq":6,"key":"12345678901","value":""}"#),
            Err((Some(6), ErrorCode::ROOM_EXTRA_INFO_KEY_INVALID))
        );
        assert_eq!(
            code(&format!(
                r#"{{"type":"set_room_extra_info","seq":6,"key":"k","value":"{}"}}"#,
                x(129)
            )),
            Err((Some(6), ErrorCode::ROOM_EXTRA_INFO_VALUE_TOO_LONG))
        );
        assert_eq!(
            code(&format!(
                r#"{{"type":"set_stream_extra_info","seq":7,"stream_id":"s","extra_info":"{}"}}"#,
                x(1025)
            )),
            Err((Some(7), ErrorCode::EXTRA_INFO_TOO_LONG))
        );
    }
}
