//! Typed IDs, validated at construction.
//!
//! The limits are those the hosted RTC SDKs document, so IDs move between them and Huddle:
//! - user ID: 1..=64 bytes, room ID: 1..=128 bytes, both of digits, ASCII letters and
//!   `` ~!@#$%^&*()_+=-`;',.<>/\ `` (the documented set: no space, quote, colon or brackets);
//! - stream ID: 1..=256 bytes of `[0-9A-Za-z_-]`;
//! - user name: 1..=256 bytes of UTF-8 without control characters;
//! - AppID: a non-zero `u32`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{ErrorCode, HuddleError};

/// Characters allowed in user and room IDs besides ASCII letters and digits.
const ID_PUNCTUATION: &str = "~!@#$%^&*()_+=-`;',.<>/\\";

fn user_room_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || ID_PUNCTUATION.as_bytes().contains(&c)
}

fn stream_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'-'
}

struct Rule {
    what: &'static str,
    max: usize,
    empty: ErrorCode,
    too_long: ErrorCode,
    bad_char: ErrorCode,
    allowed: fn(u8) -> bool,
}

fn check(rule: &Rule, s: &str) -> Result<(), HuddleError> {
    if s.is_empty() {
        return Err(HuddleError::new(
            rule.empty,
            format!("the {} is empty", rule.what),
        ));
    }
    if s.len() > rule.max {
        return Err(HuddleError::new(
            rule.too_long,
            format!(
                "the {} is {} bytes long; at most {} are allowed",
                rule.what,
                s.len(),
                rule.max
            ),
        ));
    }
    if let Some(pos) = s.bytes().position(|c| !(rule.allowed)(c)) {
        return Err(HuddleError::new(
            rule.bad_char,
            format!("the {} has a character not allowed at byte {pos}", rule.what),
        ));
    }
    Ok(())
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $rule:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The validation rule of this ID.
            const RULE: Rule = $rule;

            /// Validates and wraps `s`.
            pub fn new(s: impl Into<String>) -> Result<Self, HuddleError> {
                let s = s.into();
                check(&Self::RULE, &s)?;
                Ok($name(s))
            }

            /// The ID as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = HuddleError;
            fn try_from(s: String) -> Result<Self, HuddleError> {
                $name::new(s)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = HuddleError;
            fn try_from(s: &str) -> Result<Self, HuddleError> {
                $name::new(s)
            }
        }

        impl std::str::FromStr for $name {
            type Err = HuddleError;
            fn from_str(s: &str) -> Result<Self, HuddleError> {
                $name::new(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", self.0)
            }
        }
    };
}

string_id!(
    /// A user ID: 1..=64 bytes of ASCII letters, digits and `` ~!@#$%^&*()_+=-`;',.<>/\ ``.
    ///
    /// ```
    /// use huddle_proto::{ErrorCode, UserId};
    /// assert!(UserId::new("alice_01").is_ok());
    /// assert_eq!(UserId::new("").unwrap_err().code, ErrorCode::USER_ID_EMPTY);
    /// ```
    UserId,
    Rule {
        what: "user ID",
        max: 64,
        empty: ErrorCode::USER_ID_EMPTY,
        too_long: ErrorCode::USER_ID_TOO_LONG,
        bad_char: ErrorCode::USER_ID_INVALID_CHARACTER,
        allowed: user_room_char,
    }
);

string_id!(
    /// A room ID: 1..=128 bytes of the same characters as a user ID.
    ///
    /// ```
    /// use huddle_proto::{ErrorCode, RoomId};
    /// assert!(RoomId::new("room-1").is_ok());
    /// assert_eq!(RoomId::new("a b").unwrap_err().code, ErrorCode::ROOM_ID_INVALID_CHARACTER);
    /// ```
    RoomId,
    Rule {
        what: "room ID",
        max: 128,
        empty: ErrorCode::ROOM_ID_EMPTY,
        too_long: ErrorCode::ROOM_ID_TOO_LONG,
        bad_char: ErrorCode::ROOM_ID_INVALID_CHARACTER,
        allowed: user_room_char,
    }
);

string_id!(
    /// A stream ID, unique within an AppID: 1..=256 bytes of `[0-9A-Za-z_-]`.
    ///
    /// ```
    /// use huddle_proto::{ErrorCode, StreamId};
    /// assert!(StreamId::new("cam_main-1").is_ok());
    /// assert_eq!(StreamId::new("x".repeat(257)).unwrap_err().code, ErrorCode::STREAM_ID_TOO_LONG);
    /// ```
    StreamId,
    Rule {
        what: "stream ID",
        max: 256,
        empty: ErrorCode::STREAM_ID_EMPTY,
        too_long: ErrorCode::STREAM_ID_TOO_LONG,
        bad_char: ErrorCode::STREAM_ID_INVALID_CHARACTER,
        allowed: stream_char,
    }
);

/// A user name: 1..=256 bytes of UTF-8 without control characters.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(try_from = "String", into = "String")]
pub struct UserName(String);

impl UserName {
    /// Validates and wraps `s`.
    pub fn new(s: impl Into<String>) -> Result<Self, HuddleError> {
        let s = s.into();
        if s.is_empty() {
            return Err(HuddleError::new(
                ErrorCode::USER_NAME_EMPTY,
                "the user name is empty",
            ));
        }
        if s.len() > 256 {
            return Err(HuddleError::new(
                ErrorCode::USER_NAME_TOO_LONG,
                format!("the user name is {} bytes long; at most 256 are allowed", s.len()),
            ));
        }
        if s.chars().any(char::is_control) {
            return Err(HuddleError::new(
                ErrorCode::USER_NAME_INVALID_CHARACTER,
                "the user name has a control character",
            ));
        }
        Ok(UserName(s))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for UserName {
    type Error = HuddleError;
    fn try_from(s: String) -> Result<Self, HuddleError> {
        UserName::new(s)
    }
}

impl From<UserName> for String {
    fn from(n: UserName) -> String {
        n.0
    }
}

impl fmt::Display for UserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for UserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// An AppID: a non-zero `u32`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(try_from = "u32", into = "u32")]
pub struct AppId(u32);

impl AppId {
    /// Validates and wraps `id`.
    pub fn new(id: u32) -> Result<Self, HuddleError> {
        if id == 0 {
            return Err(HuddleError::new(
                ErrorCode::APP_ID_UNKNOWN,
                "the AppID must not be zero",
            ));
        }
        Ok(AppId(id))
    }

    /// The number.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<u32> for AppId {
    type Error = HuddleError;
    fn try_from(id: u32) -> Result<Self, HuddleError> {
        AppId::new(id)
    }
}

impl From<AppId> for u32 {
    fn from(id: AppId) -> u32 {
        id.0
    }
}

impl fmt::Display for AppId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for AppId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Validates stream extra info: at most 1024 bytes.
pub fn check_extra_info(extra: &str) -> Result<(), HuddleError> {
    if extra.len() > 1024 {
        return Err(HuddleError::new(
            ErrorCode::EXTRA_INFO_TOO_LONG,
            format!(
                "the extra info is {} bytes long; at most 1024 are allowed",
                extra.len()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_id_rules() {
        assert!(UserId::new("a").is_ok());
        assert!(UserId::new("x".repeat(64)).is_ok());
        assert_eq!(
            UserId::new("x".repeat(65)).unwrap_err().code,
            ErrorCode::USER_ID_TOO_LONG
        );
        assert_eq!(UserId::new("").unwrap_err().code, ErrorCode::USER_ID_EMPTY);
        for bad in ["a b", "a\"b", "a:b", "a?b", "{", "]", "|", "张三", "a\nb"] {
            assert_eq!(
                UserId::new(bad).unwrap_err().code,
                ErrorCode::USER_ID_INVALID_CHARACTER,
                "{bad}"
            );
        }
        assert!(UserId::new("~!@#$%^&*()_+=-`;',.<>/\\").is_ok());
    }

    #[test]
    fn room_id_rules() {
        assert!(RoomId::new("r".repeat(128)).is_ok());
        assert_eq!(
            RoomId::new("r".repeat(129)).unwrap_err().code,
            ErrorCode::ROOM_ID_TOO_LONG
        );
        assert_eq!(RoomId::new("").unwrap_err().code, ErrorCode::ROOM_ID_EMPTY);
    }

    #[test]
    fn stream_id_rules() {
        assert!(StreamId::new("s".repeat(256)).is_ok());
        assert_eq!(
            StreamId::new("s".repeat(257)).unwrap_err().code,
            ErrorCode::STREAM_ID_TOO_LONG
        );
        assert_eq!(StreamId::new("").unwrap_err().code, ErrorCode::STREAM_ID_EMPTY);
        assert_eq!(
            StreamId::new("a.b").unwrap_err().code,
            ErrorCode::STREAM_ID_INVALID_CHARACTER
        );
    }

    #[test]
    fn serde_validates() {
        let ok: StreamId = serde_json::from_str("\"abc\"").unwrap();
        assert_eq!(ok.as_str(), "abc");
        assert!(serde_json::from_str::<StreamId>("\"a b\"").is_err());
        assert!(serde_json::from_str::<AppId>("0").is_err());
        assert!(serde_json::from_str::<UserName>("\"\"").is_err());
        assert_eq!(UserName::new("张三").unwrap().as_str(), "张三");
    }
}
