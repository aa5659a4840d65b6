//! Huddle's signaling protocol: messages, typed IDs with their validation rules, and the one
//! error-code table of the whole system.
//!
//! Both the server and the SDK speak through these types, so a rule (an ID limit, a code) lives in
//! exactly one place.

mod error;
pub mod framing;
mod ids;
mod msg;

pub use error::{ErrorCode, HuddleError, TABLE as ERROR_TABLE};
pub use ids::{AppId, RoomId, StreamId, UserId, UserName, check_extra_info};
pub use msg::{
    Auth, ClientMsg, DecodeError, DeviceState, IceServer, Login, LoginOk, MAX_MESSAGE_BYTES, MediaRole,
    PROTOCOL_VERSION, PeerState, Resume, SIGNALING_PATH, ServerMsg, StreamInfo, StreamQualityLevel,
    TrackKind, UpdateType, User,
};
pub use msg::{
    MAX_COMMAND_RECIPIENTS, MAX_IM_BYTES, MAX_ROOM_EXTRA_KEY_BYTES, MAX_ROOM_EXTRA_VALUE_BYTES,
    RoomExtraInfo, check_im_content, check_room_extra_key, check_room_extra_value,
};
