//! The one error-code table of Huddle.
//!
//! Codes reuse the numbering of the well-known hosted RTC SDKs where one exists (common 1000xxx,
//! engine/app 1001xxx, room 1002xxx, publish 1003xxx, play 1004xxx), so that people who know those
//! SDKs recognise them. Codes in 1009xxx are Huddle's own (signaling protocol and server limits).
//! `docs/errors.md` is checked against [`TABLE`] by a test, so the two never drift apart.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A numbered error code. `0` means success.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct ErrorCode(pub u32);

macro_rules! codes {
    ($( $(#[$doc:meta])* $name:ident = $num:literal, $text:literal; )*) => {
        impl ErrorCode {
            $( $(#[$doc])* pub const $name: ErrorCode = ErrorCode($num); )*
        }
        /// Every code: (number, name, what it means).
        pub const TABLE: &[(u32, &str, &str)] = &[ $( ($num, stringify!($name), $text), )* ];
    };
}

codes! {
    /// Success.
    OK = 0, "Success.";
    /// The engine was destroyed (or never created) before this call.
    ENGINE_NOT_CREATED = 1000001, "The engine is not created or was destroyed.";
    /// The call needs a logged-in room.
    NOT_LOGGED_IN = 1000002, "Not logged in to a room (or the room ID is not the one logged in).";
    /// An argument is out of range.
    INVALID_PARAMETER = 1000006, "An argument is invalid (see the message).";
    /// Stream ID longer than 256 bytes.
    STREAM_ID_TOO_LONG = 1000014, "The stream ID is longer than 256 bytes.";
    /// Empty stream ID.
    STREAM_ID_EMPTY = 1000015, "The stream ID is empty.";
    /// Stream ID with characters outside `[0-9A-Za-z_-]`.
    STREAM_ID_INVALID_CHARACTER = 1000016, "The stream ID has characters other than [0-9A-Za-z_-].";
    /// Stream extra info longer than 1024 bytes.
    EXTRA_INFO_TOO_LONG = 1000017, "The stream extra info is longer than 1024 bytes.";
    /// The AppID is zero or not configured on the server.
    APP_ID_UNKNOWN = 1001004, "The AppID is unknown to the server (or zero).";
    /// The AppSign challenge answer did not match.
    APP_SIGN_INCORRECT = 1001005, "The AppSign is incorrect (the challenge answer did not match).";
    /// The AppSign given to the engine is not 64 hex characters.
    APP_SIGN_INVALID = 1001006, "The AppSign is not 64 hexadecimal characters.";
    /// The engine is already logged in to a room.
    ALREADY_LOGGED_IN = 1002001, "Already logged in to a room: log out first.";
    /// Empty user ID.
    USER_ID_EMPTY = 1002005, "The user ID is empty.";
    /// User ID with characters outside the documented set.
    USER_ID_INVALID_CHARACTER = 1002006, "The user ID has characters outside the allowed set.";
    /// User ID longer than 64 bytes.
    USER_ID_TOO_LONG = 1002007, "The user ID is longer than 64 bytes.";
    /// Empty user name.
    USER_NAME_EMPTY = 1002008, "The user name is empty.";
    /// User name with control characters.
    USER_NAME_INVALID_CHARACTER = 1002009, "The user name has control characters.";
    /// User name longer than 256 bytes.
    USER_NAME_TOO_LONG = 1002010, "The user name is longer than 256 bytes.";
    /// Empty room ID.
    ROOM_ID_EMPTY = 1002011, "The room ID is empty.";
    /// Room ID with characters outside the documented set.
    ROOM_ID_INVALID_CHARACTER = 1002012, "The room ID has characters outside the allowed set.";
    /// Room ID longer than 128 bytes.
    ROOM_ID_TOO_LONG = 1002013, "The room ID is longer than 128 bytes.";
    /// The signaling connection could not be made.
    CONNECT_FAILED = 1002030, "Could not connect to the server (unreachable, or its TLS certificate is not trusted; see the message).";
    /// The server did not answer the login in time.
    LOGIN_TIMEOUT = 1002031, "The login timed out.";
    /// Authentication failed for another reason than the AppSign or the token.
    AUTHENTICATION_FAILED = 1002033, "Authentication failed (no AppSign or token, or neither accepted).";
    /// The room has reached its member limit.
    ROOM_FULL = 1002034, "The room is full (max member count reached).";
    /// The same user ID logged in to the room from another session.
    KICKED_DUPLICATE_LOGIN = 1002050, "Kicked out: the same user ID logged in to this room elsewhere.";
    /// The connection broke; the SDK is retrying.
    TEMPORARY_BREAK = 1002051, "The connection broke temporarily; retrying.";
    /// The retry budget ran out.
    RETRY_TIMEOUT = 1002053, "Reconnection failed: the retry time ran out.";
    /// The server ended the session (session timed out, admin kick, shutdown).
    KICKED_BY_SERVER = 1002055, "Kicked out by the server.";
    /// The session's token expired without a renewal: the server ended the session.
    KICKED_TOKEN_EXPIRED = 1002056, "Kicked out: the token expired and was not renewed.";
    /// Token not in the Token04 format.
    TOKEN_FORMAT = 1002074, "The token is malformed (not a valid Token04 string).";
    /// Token not decryptable with the app's server secret (wrong secret or tampered).
    TOKEN_DECRYPT = 1002075, "The token could not be decrypted (wrong secret or tampered).";
    /// Token content invalid (JSON shape, header/JSON expiry mismatch, bad privilege payload).
    TOKEN_CONTENT = 1002076, "The token content is invalid.";
    /// Token issued for another AppID.
    TOKEN_APP_ID_MISMATCH = 1002077, "The token was issued for another AppID.";
    /// Token expired.
    TOKEN_EXPIRED = 1002078, "The token has expired.";
    /// Token issued for another user ID.
    TOKEN_USER_ID_MISMATCH = 1002079, "The token was issued for another user ID.";
    /// Token does not allow this room (or login).
    TOKEN_ROOM_FORBIDDEN = 1002080, "The token does not allow logging in to this room.";
    /// Publishing connection broke; retrying.
    PUBLISH_TEMPORARY_BREAK = 1003020, "Publishing broke temporarily; retrying.";
    /// Publishing is forbidden by the token (no publish privilege or stream not in its list).
    PUBLISH_FORBIDDEN = 1003025, "Publishing is forbidden (token privilege or stream list).";
    /// The engine already publishes a stream (one publish channel per engine).
    ALREADY_PUBLISHING = 1003026, "This session already publishes a stream; stop it first.";
    /// Another publisher in this AppID already uses the stream ID.
    STREAM_ID_EXISTS = 1003028, "The stream ID is already published in this AppID.";
    /// The AppID has reached its stream limit.
    TOO_MANY_STREAMS = 1003040, "The AppID has reached its limit of published streams.";
    /// The stream does not exist.
    STREAM_NOT_FOUND = 1004002, "The stream does not exist (yet).";
    /// Playing connection broke; retrying.
    PLAY_TEMPORARY_BREAK = 1004020, "Playing broke temporarily; retrying.";
    /// Playing is forbidden.
    PLAY_FORBIDDEN = 1004025, "Playing is forbidden.";
    /// The session plays too many streams.
    TOO_MANY_PLAYS = 1004030, "This session plays too many streams.";
    /// A signaling message could not be parsed or is not valid in this state.
    MALFORMED_MESSAGE = 1009001, "The signaling message is malformed or unexpected.";
    /// A signaling message is over the size limit.
    MESSAGE_TOO_LARGE = 1009002, "The signaling message is too large.";
    /// The client speaks a protocol version the server does not.
    PROTOCOL_VERSION = 1009003, "Unsupported signaling protocol version.";
    /// Too many messages from this session or address.
    RATE_LIMITED = 1009004, "Too many messages: rate limited.";
    /// The session could not keep up with its events (queue overflow).
    SLOW_CONSUMER = 1009005, "The session did not read its events fast enough.";
    /// The server is at its limit of sessions or apps.
    SERVER_BUSY = 1009006, "The server is at its session limit.";
    /// A `media_offer` whose SDP cannot be parsed or offers nothing the server can use.
    MEDIA_OFFER_INVALID = 1009007, "The media offer (SDP) is invalid or offers no usable media.";
    /// The server is shutting down (draining after SIGTERM): it takes no new login, only the
    /// resume of a session it already has. Worth retrying: a restarted or another node answers.
    SERVER_SHUTTING_DOWN = 1009008, "The server is shutting down and takes no new login; retry.";
    /// The cluster's shared store (Redis) did not answer in time, or this node lost its lease:
    /// the request changed nothing. Worth retrying.
    CLUSTER_UNAVAILABLE = 1009009, "The cluster store could not be reached; retry.";
    /// The microphone or speaker could not be opened (none present, busy, or no usable format).
    DEVICE_UNAVAILABLE = 1009020, "The audio device could not be opened (none present, busy, or no usable format).";
    /// An operations endpoint (`/metrics`) asked from an address other than loopback without
    /// its bearer token.
    ACCESS_DENIED = 1009030, "Access denied: ask from loopback or with the configured bearer token.";
    /// A server API request reused a `SignatureNonce` seen within the timestamp window.
    API_NONCE_REPLAYED = 1009031, "The server API request reuses a signature nonce (a replay): sign each request with a fresh nonce.";
    /// The server API's memory of recent nonces is full: the request is refused rather than
    /// risk a replay going unnoticed.
    API_NONCE_CACHE_FULL = 1009032, "The server API has too many recent requests to check for replays; retry shortly.";
    /// A stream stopped by the server API (`DeleteStream`): told to its publisher.
    STREAM_STOPPED_BY_SERVER = 1009033, "The stream was stopped by the server (server API).";
    /// A webhook replay asked for sequence numbers that are no longer kept.
    WEBHOOK_SEQ_UNAVAILABLE = 1009034, "The webhook events asked for are no longer kept (or not yet sent).";
    /// A server API request for an app that has no webhook configured.
    WEBHOOK_NOT_CONFIGURED = 1009035, "The app has no webhook configured.";
    /// A node's pull of a stream (`/cluster/ws`) was not signed with the cluster's secret, was
    /// signed too long ago, or came while this node serves no pulls.
    CLUSTER_AUTH_FAILED = 1009040, "The pull was refused: it is not signed with the cluster's secret, or its signature expired.";
    /// The stream ID a session published was taken over by another node while this one was cut
    /// off (the same user's newer login there, or a claim after this node's lease ended): the
    /// publish stopped here (`media_state` closed to its publisher).
    STREAM_TAKEN_OVER = 1009041, "The stream ID was taken over on another node (a newer login of the same user, or while this node was cut off): it stopped here.";
    /// A `network_quality` report came less than a second after the session's previous one
    /// (clients report every 2 s); it was not relayed.
    QUALITY_REPORT_TOO_FREQUENT = 1009050, "Network quality reported too often: at most one report a second.";
    /// A device state (mute) was set for a stream the session does not publish.
    MUTE_NOT_PUBLISHING = 1009060, "The stream's microphone or camera state can be set only by the session that publishes it.";
    /// A play mute was asked for a stream the session does not play.
    MUTE_NOT_PLAYING = 1009061, "Only a stream the session plays can be muted for it: play it first.";
    /// Device state or play mute changes came too fast.
    MUTE_TOO_FREQUENT = 1009062, "Mute states changed too often: at most 20 changes a second per session.";
    /// `start_sound_level_monitor` with an interval outside 100–3000 ms (the hosted SDKs' range).
    SOUND_LEVEL_INTERVAL_INVALID = 1009065, "The sound-level interval must be 100–3000 ms.";
    /// A broadcast or barrage message or a custom command is empty or over 1024 bytes.
    IM_CONTENT_INVALID = 1009070, "The message or command is empty or longer than 1024 bytes.";
    /// One user sent broadcast messages too often (at most 2 a second, as the hosted SDKs allow).
    IM_USER_RATE_LIMITED = 1009071, "Broadcast messages sent too often by this user: at most 2 a second.";
    /// The room's message rate is exceeded (counted on the node the sender is connected to).
    IM_ROOM_RATE_LIMITED = 1009072, "Too many messages in the room: at most 10 broadcast, 20 barrage, and 10 custom commands to several users or 200 to one user a second.";
    /// A custom command names no user of the room, or too many.
    CUSTOM_COMMAND_NO_RECIPIENT = 1009073, "The custom command names no user of the room (or more than 100 users).";
    /// A room extra info key is empty or over 10 bytes.
    ROOM_EXTRA_INFO_KEY_INVALID = 1009074, "The room extra info key is empty or longer than 10 bytes.";
    /// A room extra info value is over 128 bytes.
    ROOM_EXTRA_INFO_VALUE_TOO_LONG = 1009075, "The room extra info value is longer than 128 bytes.";
    /// The room has an extra info key already; one key per room, as the hosted SDKs allow.
    ROOM_EXTRA_INFO_KEY_LIMIT = 1009076, "The room already has another extra info key: one key per room.";
    /// Room extra info set too often in the room.
    ROOM_EXTRA_INFO_RATE_LIMITED = 1009077, "Room extra info set too often: at most 10 times a second in the room.";
    /// A line on `huddle call`'s standard input that is not one JSON object (or not UTF-8).
    COMMAND_MALFORMED = 1009080, "The command line is not one JSON object.";
    /// A `huddle call` command line whose `cmd` names no command (or that has no `cmd`).
    COMMAND_UNKNOWN = 1009081, "Unknown command: `cmd` names none of the commands in docs/cli.md.";
    /// A `huddle call` command with a field missing, of the wrong type, or not of that command.
    COMMAND_FIELD_INVALID = 1009082, "A field of the command is missing, of the wrong type, or unknown.";
    /// A `huddle call` command line longer than 64 KiB; it is skipped.
    COMMAND_TOO_LONG = 1009083, "The command line is longer than 64 KiB.";
    /// No microphone or speaker has the device ID or name asked for.
    DEVICE_NOT_FOUND = 1009084, "No audio device has that ID or name (list them with `huddle call --list-devices`).";
    /// A recording's directory could not be created or a file in it opened (permissions, a
    /// missing or read-only file system): the recording failed, the call goes on.
    RECORD_DIR_UNWRITABLE = 1009085, "The recording directory is not writable: the recording failed (the call goes on).";
    /// Writing a recording's file failed (the disk is full, or an IO error): the recording
    /// stopped there, the call goes on; the file holds what was written before.
    RECORD_WRITE_FAILED = 1009086, "Writing the recording failed (disk full or IO error): the recording stopped (the call goes on).";
    /// A server API recording action named a `TaskId` the server does not know (or no longer
    /// keeps).
    RECORD_TASK_NOT_FOUND = 1009087, "No recording task has this TaskId on this server.";
    /// `StartRecord` for a room that already has a recording task (stop it first), or for an app
    /// that records every stream already.
    RECORD_TASK_EXISTS = 1009088, "The room is recorded already (StopRecord its task first).";
    /// The recorder fell behind (its queue from the media plane was full): packets were left out
    /// of the file, which shows as gaps; the recording goes on.
    RECORD_PACKETS_DROPPED = 1009089, "The recorder fell behind and left packets out (they show as gaps).";
    /// An internal error at the server.
    INTERNAL = 1009099, "Internal error.";
}

impl ErrorCode {
    /// The number.
    pub fn as_u32(self) -> u32 {
        self.0
    }

    /// The name in the table (`"STREAM_ID_EXISTS"`), or `"UNKNOWN"`.
    pub fn name(self) -> &'static str {
        TABLE.iter().find(|e| e.0 == self.0).map_or("UNKNOWN", |e| e.1)
    }

    /// The description in the table.
    pub fn description(self) -> &'static str {
        TABLE
            .iter()
            .find(|e| e.0 == self.0)
            .map_or("Unknown error code.", |e| e.2)
    }

    /// Whether this is success.
    pub fn is_ok(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.name(), self.0)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An error with its code and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize, schemars::JsonSchema)]
#[error("error {code}: {message}")]
pub struct HuddleError {
    /// The numbered code.
    pub code: ErrorCode,
    /// What went wrong, in words.
    pub message: String,
}

impl HuddleError {
    /// An error with a specific message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        HuddleError {
            code,
            message: message.into(),
        }
    }
}

impl From<ErrorCode> for HuddleError {
    /// The table's description as the message.
    fn from(code: ErrorCode) -> Self {
        HuddleError {
            code,
            message: code.description().to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_unique_codes_and_names() {
        let mut nums: Vec<u32> = TABLE.iter().map(|e| e.0).collect();
        nums.sort_unstable();
        nums.dedup();
        assert_eq!(nums.len(), TABLE.len());
        assert_eq!(ErrorCode::STREAM_ID_EXISTS.name(), "STREAM_ID_EXISTS");
        assert_eq!(ErrorCode(42).name(), "UNKNOWN");
    }

    #[test]
    fn docs_errors_md_lists_every_code() {
        let doc = include_str!("../../../docs/errors.md");
        for (num, name, text) in TABLE {
            let row = format!("| {num} | `{name}` | {text} |");
            assert!(doc.contains(&row), "docs/errors.md lacks the row: {row}");
        }
    }
}
