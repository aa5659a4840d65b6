//! The engine's messages and extra info: broadcast and barrage messages, custom commands, and
//! stream and room extra info. Each call returns a number (`seq`) at once; its result arrives as
//! an event with that number, as the hosted SDKs' callbacks do.

use huddle_proto::{
    ErrorCode, HuddleError, RoomId, UserId, check_extra_info, check_im_content, check_room_extra_key,
    check_room_extra_value,
};

use super::{Engine, EngineHandle, not_logged_in};
use crate::driver::Request;
use crate::session::{Command, ImRequest};

impl Engine {
    /// Sends a broadcast message to every other user of the room: reliable, in order (per
    /// sender); 1 to 1024 bytes; at most 2 a second per user and 10 a second per room. Returns
    /// the number `seq` that its result, [`on_im_send_broadcast_message_result`], carries with
    /// the message's ID or the code (1009071 and 1009072 over the rates, 1000002 when the room
    /// is not connected). The others get [`on_im_recv_broadcast_message`].
    ///
    /// Errors: 1000002 when `room_id` is not the logged-in room, 1009070 for an empty message or
    /// one over 1024 bytes.
    ///
    /// ```no_run
    /// # fn f(engine: &huddle::Engine) -> Result<(), huddle::HuddleError> {
    /// let seq = engine.send_broadcast_message("room-1", "hello, everyone")?;
    /// # let _ = seq; Ok(()) }
    /// ```
    ///
    /// [`on_im_send_broadcast_message_result`]: crate::EventHandler::on_im_send_broadcast_message_result
    /// [`on_im_recv_broadcast_message`]: crate::EventHandler::on_im_recv_broadcast_message
    #[doc(alias = "sendBroadcastMessage")]
    pub fn send_broadcast_message(&self, room_id: &str, message: &str) -> Result<u64, HuddleError> {
        self.handle.send_broadcast_message(room_id, message)
    }

    /// Sends a barrage message to every other user of the room: best effort (the server drops
    /// it for a recipient whose connection is congested, and it is not sent again after a
    /// break); 1 to 1024 bytes; at most 20 a second per room. The result comes as
    /// [`on_im_send_barrage_message_result`](crate::EventHandler::on_im_send_barrage_message_result);
    /// the others get [`on_im_recv_barrage_message`](crate::EventHandler::on_im_recv_barrage_message).
    ///
    /// Errors: as [`Engine::send_broadcast_message`].
    #[doc(alias = "sendBarrageMessage")]
    pub fn send_barrage_message(&self, room_id: &str, message: &str) -> Result<u64, HuddleError> {
        self.handle.send_barrage_message(room_id, message)
    }

    /// Sends a custom command to `to_users` of the room (every other user when empty):
    /// reliable; 1 to 1024 bytes; at most 100 users; at most 200 a second per room to one user,
    /// 10 to several. Users not in the room are skipped; none left: 1009073 in the result,
    /// [`on_im_send_custom_command_result`](crate::EventHandler::on_im_send_custom_command_result).
    /// The recipients get [`on_im_recv_custom_command`](crate::EventHandler::on_im_recv_custom_command).
    ///
    /// Errors: 1000002 when `room_id` is not the logged-in room, 1009070 for the command's
    /// size, a user ID's code, 1009073 for more than 100 users.
    ///
    /// ```no_run
    /// # fn f(engine: &huddle::Engine) -> Result<(), huddle::HuddleError> {
    /// engine.send_custom_command("room-1", r#"{"raise_hand":true}"#, &["host"])?;
    /// # Ok(()) }
    /// ```
    #[doc(alias = "sendCustomCommand")]
    pub fn send_custom_command(
        &self,
        room_id: &str,
        command: &str,
        to_users: &[&str],
    ) -> Result<u64, HuddleError> {
        self.handle.send_custom_command(room_id, command, to_users)
    }

    /// Sets the extra info of the published stream (at most 1024 bytes): now when a stream is
    /// published, else with the next publish (and again with every publish after a break). The
    /// result comes as
    /// [`on_publisher_set_stream_extra_info_result`](crate::EventHandler::on_publisher_set_stream_extra_info_result);
    /// the room gets [`on_room_stream_extra_info_update`](crate::EventHandler::on_room_stream_extra_info_update).
    ///
    /// Errors: 1000002 when no room is logged in, 1000017 over 1024 bytes.
    #[doc(alias = "setStreamExtraInfo")]
    pub fn set_stream_extra_info(&self, extra_info: &str) -> Result<u64, HuddleError> {
        self.handle.set_stream_extra_info(extra_info)
    }

    /// Sets the room's extra info `key` (1 to 10 bytes; one key per room) to `value` (at most
    /// 128 bytes); at most 10 times a second per room. The result comes as
    /// [`on_room_set_room_extra_info_result`](crate::EventHandler::on_room_set_room_extra_info_result)
    /// (1009076 when the room has another key, 1009077 over the rate); the others, and every
    /// later login, get [`on_room_extra_info_update`](crate::EventHandler::on_room_extra_info_update).
    ///
    /// Errors: 1000002 when `room_id` is not the logged-in room, 1009074 and 1009075 for the
    /// sizes.
    ///
    /// ```no_run
    /// # fn f(engine: &huddle::Engine) -> Result<(), huddle::HuddleError> {
    /// engine.set_room_extra_info("room-1", "topic", "release planning")?;
    /// # Ok(()) }
    /// ```
    #[doc(alias = "setRoomExtraInfo")]
    pub fn set_room_extra_info(&self, room_id: &str, key: &str, value: &str) -> Result<u64, HuddleError> {
        self.handle.set_room_extra_info(room_id, key, value)
    }
}

impl EngineHandle {
    /// Same as [`Engine::send_broadcast_message`].
    pub fn send_broadcast_message(&self, room_id: &str, message: &str) -> Result<u64, HuddleError> {
        check_im_content(message)?;
        self.im(Some(room_id), ImRequest::Broadcast(message.to_string()))
    }

    /// Same as [`Engine::send_barrage_message`].
    pub fn send_barrage_message(&self, room_id: &str, message: &str) -> Result<u64, HuddleError> {
        check_im_content(message)?;
        self.im(Some(room_id), ImRequest::Barrage(message.to_string()))
    }

    /// Same as [`Engine::send_custom_command`].
    pub fn send_custom_command(
        &self,
        room_id: &str,
        command: &str,
        to_users: &[&str],
    ) -> Result<u64, HuddleError> {
        check_im_content(command)?;
        if to_users.len() > huddle_proto::MAX_COMMAND_RECIPIENTS {
            return Err(HuddleError::new(
                ErrorCode::CUSTOM_COMMAND_NO_RECIPIENT,
                format!(
                    "a custom command goes to at most {} users",
                    huddle_proto::MAX_COMMAND_RECIPIENTS
                ),
            ));
        }
        let to_users = to_users
            .iter()
            .map(|u| UserId::new(*u))
            .collect::<Result<Vec<_>, _>>()?;
        let req = ImRequest::Command {
            command: command.to_string(),
            to_users,
        };
        self.im(Some(room_id), req)
    }

    /// Same as [`Engine::set_stream_extra_info`].
    pub fn set_stream_extra_info(&self, extra_info: &str) -> Result<u64, HuddleError> {
        check_extra_info(extra_info)?;
        self.im(None, ImRequest::StreamExtraInfo(extra_info.to_string()))
    }

    /// Same as [`Engine::set_room_extra_info`].
    pub fn set_room_extra_info(&self, room_id: &str, key: &str, value: &str) -> Result<u64, HuddleError> {
        check_room_extra_key(key)?;
        check_room_extra_value(value)?;
        let req = ImRequest::RoomExtraInfo {
            key: key.to_string(),
            value: value.to_string(),
        };
        self.im(Some(room_id), req)
    }

    /// Queues `req` for the logged-in room (which must be `room_id` when given); returns its
    /// number.
    fn im(&self, room_id: Option<&str>, req: ImRequest) -> Result<u64, HuddleError> {
        let room_id = room_id.map(RoomId::new).transpose()?;
        let mut api = self.alive()?;
        let ticket = api.next_id();
        let login = match (&api.room, &room_id) {
            (Some(room), Some(id)) if room.room_id == *id => room.login,
            (Some(room), None) => room.login,
            (_, Some(id)) => return Err(not_logged_in(id)),
            (None, None) => return Err(ErrorCode::NOT_LOGGED_IN.into()),
        };
        self.request(Request::Room {
            login,
            cmd: Command::Im { ticket, req },
        })?;
        Ok(ticket)
    }
}
