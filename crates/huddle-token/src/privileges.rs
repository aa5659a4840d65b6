//! The privilege payload (Token04 §5).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Denied, TokenError};

/// The privilege payload a token may carry in its `payload` field (Token04 §5).
///
/// On the wire it is a JSON document encoded as a string inside the token JSON:
/// `{"room_id":"room1","privilege":{"1":1,"2":0},"stream_id_list":null}`, where
/// privilege `"1"` is "login room" and `"2"` is "publish stream" (`1` allowed, `0` denied).
/// This struct is the decoded form; its own serde derives describe this struct, not the wire
/// form: use [`Privileges::parse`] and [`Privileges::to_payload`] for the wire form.
///
/// ```
/// use huddle_token::Privileges;
///
/// let p = Privileges::parse(r#"{"room_id": "room1", "privilege": {"1": 1, "2": 0}, "stream_id_list": null}"#)?;
/// assert!(p.allows_room("room1") && !p.allows_room("room2"));
/// assert!(p.allows_login() && !p.allows_publish());
/// assert_eq!(p.to_payload(), r#"{"room_id":"room1","privilege":{"1":1,"2":0},"stream_id_list":null}"#);
/// # Ok::<(), huddle_token::TokenError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Privileges {
    /// The only room the token may log in to; empty means any room.
    pub room_id: String,
    /// Privilege `"1"` (login room); `None` when absent, which allows it.
    pub login: Option<bool>,
    /// Privilege `"2"` (publish stream); `None` when absent, which allows it.
    pub publish: Option<bool>,
    /// Streams the user may publish; `None` or an empty list means any stream.
    pub stream_id_list: Option<Vec<String>>,
}

/// Wire form written by [`Privileges::to_payload`] (field order matters: it is the output order).
#[derive(Serialize)]
struct WirePayload<'a> {
    room_id: &'a str,
    privilege: WireFlags,
    stream_id_list: Option<&'a [String]>,
}

#[derive(Serialize)]
struct WireFlags {
    #[serde(rename = "1", skip_serializing_if = "Option::is_none")]
    login: Option<u8>,
    #[serde(rename = "2", skip_serializing_if = "Option::is_none")]
    publish: Option<u8>,
}

impl Privileges {
    /// Parses a privilege payload in any JSON style (compact, Python-spaced, escaped).
    ///
    /// `room_id` must be a string (absent or `null` = any room), `privilege` an object whose keys
    /// `"1"`/`"2"` are `0` or `1` (absent or `null` = not set; other keys are ignored), and
    /// `stream_id_list` `null`, absent or an array of strings. Unknown top-level keys are ignored.
    pub fn parse(payload: &str) -> Result<Privileges, TokenError> {
        let value: Value =
            serde_json::from_str(payload).map_err(|_| TokenError::InvalidPayload("not valid JSON"))?;
        let obj = value
            .as_object()
            .ok_or(TokenError::InvalidPayload("not a JSON object"))?;

        let room_id = match obj.get("room_id") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(TokenError::InvalidPayload("room_id is not a string")),
        };
        let (login, publish) = match obj.get("privilege") {
            None | Some(Value::Null) => (None, None),
            Some(Value::Object(flags)) => (flag(flags.get("1"))?, flag(flags.get("2"))?),
            Some(_) => return Err(TokenError::InvalidPayload("privilege is not an object")),
        };
        let stream_id_list = match obj.get("stream_id_list") {
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .map(|item| {
                        item.as_str().map(str::to_owned).ok_or(TokenError::InvalidPayload(
                            "stream_id_list contains a non-string element",
                        ))
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            Some(_) => {
                return Err(TokenError::InvalidPayload(
                    "stream_id_list is not an array or null",
                ));
            }
        };
        Ok(Privileges {
            room_id,
            login,
            publish,
            stream_id_list,
        })
    }

    /// Writes the compact wire form,
    /// `{"room_id":..,"privilege":{"1":1,"2":0},"stream_id_list":null|[..]}`.
    /// A privilege that is `None` is left out of the `privilege` object.
    pub fn to_payload(&self) -> String {
        let wire = WirePayload {
            room_id: &self.room_id,
            privilege: WireFlags {
                login: self.login.map(u8::from),
                publish: self.publish.map(u8::from),
            },
            stream_id_list: self.stream_id_list.as_deref(),
        };
        // Serializing a struct of strings and small integers cannot fail.
        serde_json::to_string(&wire).expect("privilege payload serializes")
    }

    /// Whether the token may be used in `room` (an empty `room_id` allows any room).
    pub fn allows_room(&self, room: &str) -> bool {
        self.room_id.is_empty() || self.room_id == room
    }

    /// Whether logging in is allowed (`None` allows it).
    pub fn allows_login(&self) -> bool {
        self.login.unwrap_or(true)
    }

    /// Whether publishing is allowed (`None` allows it).
    pub fn allows_publish(&self) -> bool {
        self.publish.unwrap_or(true)
    }

    /// Whether stream `id` may be published (`None` or an empty list allows any stream).
    pub fn allows_stream(&self, id: &str) -> bool {
        match &self.stream_id_list {
            None => true,
            Some(list) => list.is_empty() || list.iter().any(|s| s == id),
        }
    }

    /// Checks a login to `room`: the room must be allowed, then the login privilege.
    ///
    /// ```
    /// use huddle_token::{Denied, Privileges, TokenError};
    /// let p = Privileges { room_id: "r1".into(), ..Default::default() };
    /// assert!(p.check_login("r1").is_ok());
    /// assert_eq!(p.check_login("r2"), Err(TokenError::PrivilegeDenied(Denied::Room)));
    /// ```
    pub fn check_login(&self, room: &str) -> Result<(), TokenError> {
        if !self.allows_room(room) {
            return Err(TokenError::PrivilegeDenied(Denied::Room));
        }
        if !self.allows_login() {
            return Err(TokenError::PrivilegeDenied(Denied::Login));
        }
        Ok(())
    }

    /// Checks publishing stream `stream_id`: the publish privilege, then the stream list.
    pub fn check_publish(&self, stream_id: &str) -> Result<(), TokenError> {
        if !self.allows_publish() {
            return Err(TokenError::PrivilegeDenied(Denied::Publish));
        }
        if !self.allows_stream(stream_id) {
            return Err(TokenError::PrivilegeDenied(Denied::Stream));
        }
        Ok(())
    }
}

fn flag(value: Option<&Value>) -> Result<Option<bool>, TokenError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(0) => Ok(Some(false)),
            Some(1) => Ok(Some(true)),
            _ => Err(TokenError::InvalidPayload("privilege values must be 0 or 1")),
        },
    }
}
