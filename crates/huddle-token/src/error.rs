//! The crate's single error type and its Huddle error codes.

use std::fmt;

use crate::Cipher;

/// Token format or input error: malformed token, bad key material, invalid generation input.
const CODE_FORMAT: u32 = 1_002_074;
/// The token did not decrypt to something that provably came from the secret holder.
const CODE_DECRYPT: u32 = 1_002_075;
/// The token decrypted, but its content is invalid.
const CODE_CONTENT: u32 = 1_002_076;
/// The token was issued for another AppID.
const CODE_APP_ID: u32 = 1_002_077;
/// The token has expired.
const CODE_EXPIRED: u32 = 1_002_078;
/// The token was issued to another user.
const CODE_USER_ID: u32 = 1_002_079;
/// The AppSign is not 64 hex characters (`APP_SIGN_INVALID`).
const CODE_APP_SIGN: u32 = 1_001_006;
/// The privilege payload does not allow logging in to this room (`TOKEN_ROOM_FORBIDDEN`).
const CODE_ROOM_FORBIDDEN: u32 = 1_002_080;
/// The privilege payload does not allow publishing this stream (`PUBLISH_FORBIDDEN`).
const CODE_PUBLISH_FORBIDDEN: u32 = 1_003_025;

/// Everything that can go wrong while building, decoding or checking a token.
///
/// Each variant maps to a numbered Huddle error code through [`TokenError::code`]
/// (the hosted-SDK numbering, as in the project's error table `docs/errors.md`):
///
/// | code | variants |
/// |---|---|
/// | 1001006 | [`InvalidAppSign`](Self::InvalidAppSign) |
/// | 1002074 | input errors ([`InvalidAppId`](Self::InvalidAppId), [`InvalidUserId`](Self::InvalidUserId), [`InvalidSecret`](Self::InvalidSecret), [`InvalidEffectiveTime`](Self::InvalidEffectiveTime), [`PayloadTooLong`](Self::PayloadTooLong)) and token format errors ([`BadPrefix`](Self::BadPrefix), [`Base64`](Self::Base64), [`TokenTooLong`](Self::TokenTooLong), [`Truncated`](Self::Truncated), [`TrailingBytes`](Self::TrailingBytes), [`BadMode`](Self::BadMode), [`IvLength`](Self::IvLength), [`ContentLength`](Self::ContentLength)) |
/// | 1002075 | [`Decrypt`](Self::Decrypt) |
/// | 1002076 | [`InvalidClaims`](Self::InvalidClaims), [`ExpireMismatch`](Self::ExpireMismatch), [`InvalidPayload`](Self::InvalidPayload) |
/// | 1002077 | [`AppIdMismatch`](Self::AppIdMismatch) |
/// | 1002078 | [`Expired`](Self::Expired) |
/// | 1002079 | [`UserIdMismatch`](Self::UserIdMismatch) |
/// | 1002080 | [`PrivilegeDenied`](Self::PrivilegeDenied) with [`Denied::Room`] or [`Denied::Login`] |
/// | 1003025 | [`PrivilegeDenied`](Self::PrivilegeDenied) with [`Denied::Publish`] or [`Denied::Stream`] |
///
/// No message ever contains a secret, and none contains a user ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    // ----- input errors (1002074) -----
    /// Generation: the AppID is 0.
    #[error("app_id must be non-zero")]
    InvalidAppId,
    /// Generation: the user ID is empty.
    #[error("user_id must not be empty")]
    InvalidUserId,
    /// The server secret is not exactly 32 bytes long.
    #[error("server secret must be exactly 32 bytes, got {len}")]
    InvalidSecret {
        /// Length of the rejected secret in bytes (the secret itself is never reported).
        len: usize,
    },
    /// Generation: the effective time is not positive, or `ctime + effective` overflows.
    #[error("effective time must be > 0 seconds and ctime + effective time must fit in i64, got {secs}")]
    InvalidEffectiveTime {
        /// The rejected effective time in seconds.
        secs: i64,
    },
    /// An AppSign is not exactly 64 hex characters.
    #[error("AppSign must be exactly 64 hex characters")]
    InvalidAppSign,
    /// Generation: the encrypted content would not fit the 15-bit length field that every
    /// official decoder can read.
    #[error("token content would be {len} bytes, at most {max} are allowed (shorten user_id or payload)")]
    PayloadTooLong {
        /// Encrypted content length the token would have.
        len: usize,
        /// Largest content length allowed.
        max: usize,
    },

    // ----- token format errors (1002074) -----
    /// The token does not start with `"04"`.
    #[error("token does not start with the version prefix \"04\"")]
    BadPrefix,
    /// The text after `"04"` is not strict standard Base64 (alphabet `+/`, `=` padding
    /// required, canonical trailing bits, no whitespace).
    #[error("token body is not strict standard Base64")]
    Base64,
    /// The token is longer than any Token04 layout can be.
    #[error("token is {len} characters long, at most {max} fit the Token04 layout")]
    TokenTooLong {
        /// Length of the Base64 body.
        len: usize,
        /// Largest possible Base64 body length.
        max: usize,
    },
    /// The binary token ends before the named field is complete.
    #[error("token truncated: not enough bytes for {field}")]
    Truncated {
        /// The field that could not be read (`expire`, `iv_len`, `iv`, `content_len`, `content`).
        field: &'static str,
    },
    /// More than one byte follows the encrypted content.
    #[error("token has {count} unexpected bytes after the encrypted content")]
    TrailingBytes {
        /// Number of bytes after the content.
        count: usize,
    },
    /// The single byte after the content is neither `1` (GCM) nor `0` (CBC).
    #[error("unknown cipher mode byte {mode}")]
    BadMode {
        /// The mode byte found.
        mode: u8,
    },
    /// The IV length does not match the cipher (12 for GCM, 16 for CBC), or a fixed IV given
    /// to [`TokenBuilder::iv`](crate::TokenBuilder::iv) has the wrong length.
    #[error("IV length {len} does not match {cipher} (needs {})", cipher.iv_len())]
    IvLength {
        /// The cipher selected by the mode byte or the builder.
        cipher: Cipher,
        /// The IV length found.
        len: usize,
    },
    /// GCM content shorter than its 16-byte tag, or CBC content that is empty or not a
    /// multiple of the 16-byte block.
    #[error("encrypted content length {len} is invalid for {cipher}")]
    ContentLength {
        /// The cipher selected by the mode byte.
        cipher: Cipher,
        /// The content length found.
        len: usize,
    },

    // ----- decryption (1002075) -----
    /// Decryption failed: wrong server secret or a modified token. For GCM this is a tag
    /// mismatch. For CBC, which has no integrity, it covers every failure from the padding
    /// check to the JSON content check, so that the error never tells a padding failure apart
    /// from a content failure (no padding oracle).
    #[error("token decryption failed: wrong server secret or modified token")]
    Decrypt,

    // ----- content (1002076) -----
    /// The (authenticated) plaintext is not the JSON object Token04 requires.
    #[error("token content invalid: {0}")]
    InvalidClaims(&'static str),
    /// The clear-text header expiry differs from the encrypted one.
    #[error("token header expire {header} differs from the encrypted expire {claims}")]
    ExpireMismatch {
        /// Expiry in the clear-text header.
        header: i64,
        /// Expiry in the encrypted JSON.
        claims: i64,
    },
    /// The privilege payload is not the JSON document of Token04 §5.
    #[error("privilege payload invalid: {0}")]
    InvalidPayload(&'static str),

    // ----- checks (1002077..1002080) -----
    /// The token was issued for another AppID.
    #[error("token was issued for app_id {actual}, expected {expected}")]
    AppIdMismatch {
        /// The AppID the caller expected.
        expected: u32,
        /// The AppID in the token.
        actual: u32,
    },
    /// The token has expired (`now >= expire`).
    #[error("token expired at {expire} (now {now})")]
    Expired {
        /// Expiry of the token, Unix seconds.
        expire: i64,
        /// The time the caller passed, Unix seconds.
        now: i64,
    },
    /// The token was issued to another user.
    #[error("token was issued to a different user_id")]
    UserIdMismatch,
    /// The privilege payload forbids the action (see [`Privileges::check_login`](crate::Privileges::check_login) and
    /// [`Privileges::check_publish`](crate::Privileges::check_publish)).
    #[error("token privileges do not allow {0}")]
    PrivilegeDenied(Denied),
}

impl TokenError {
    /// The Huddle error code of this error (see the table on [`TokenError`]).
    ///
    /// ```
    /// use huddle_token::TokenError;
    /// assert_eq!(TokenError::Decrypt.code(), 1002075);
    /// assert_eq!(TokenError::Expired { expire: 10, now: 10 }.code(), 1002078);
    /// ```
    pub fn code(&self) -> u32 {
        match self {
            TokenError::InvalidAppId
            | TokenError::InvalidUserId
            | TokenError::InvalidSecret { .. }
            | TokenError::InvalidEffectiveTime { .. }
            | TokenError::PayloadTooLong { .. }
            | TokenError::BadPrefix
            | TokenError::Base64
            | TokenError::TokenTooLong { .. }
            | TokenError::Truncated { .. }
            | TokenError::TrailingBytes { .. }
            | TokenError::BadMode { .. }
            | TokenError::IvLength { .. }
            | TokenError::ContentLength { .. } => CODE_FORMAT,
            TokenError::InvalidAppSign => CODE_APP_SIGN,
            TokenError::Decrypt => CODE_DECRYPT,
            TokenError::InvalidClaims(_)
            | TokenError::ExpireMismatch { .. }
            | TokenError::InvalidPayload(_) => CODE_CONTENT,
            TokenError::AppIdMismatch { .. } => CODE_APP_ID,
            TokenError::Expired { .. } => CODE_EXPIRED,
            TokenError::UserIdMismatch => CODE_USER_ID,
            TokenError::PrivilegeDenied(Denied::Room | Denied::Login) => CODE_ROOM_FORBIDDEN,
            TokenError::PrivilegeDenied(Denied::Publish | Denied::Stream) => CODE_PUBLISH_FORBIDDEN,
        }
    }
}

/// What a privilege payload refused (carried by [`TokenError::PrivilegeDenied`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Denied {
    /// The token is bound to another room.
    Room,
    /// Privilege `"1"` (login room) is `0`.
    Login,
    /// Privilege `"2"` (publish stream) is `0`.
    Publish,
    /// The stream ID is not in `stream_id_list`.
    Stream,
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Denied::Room => "this room",
            Denied::Login => "logging in",
            Denied::Publish => "publishing",
            Denied::Stream => "this stream ID",
        })
    }
}
