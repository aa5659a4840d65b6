//! Messages and extra info in a room session: the requests (broadcast and barrage messages,
//! custom commands, stream and room extra info), their results, and what the others send.

use huddle_proto::{ClientMsg, ErrorCode, ServerMsg, UserId};

use super::{Pending, Session};
use crate::event::{BarrageMessageInfo, BroadcastMessageInfo, Event};

/// A message or extra info request, validated by the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ImRequest {
    /// `send_broadcast_message`.
    Broadcast(String),
    /// `send_barrage_message`.
    Barrage(String),
    /// `send_custom_command`.
    Command { command: String, to_users: Vec<UserId> },
    /// `set_stream_extra_info`.
    StreamExtraInfo(String),
    /// `set_room_extra_info`.
    RoomExtraInfo { key: String, value: String },
}

/// Which request a result is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ImKind {
    Broadcast,
    Barrage,
    Command,
    StreamExtraInfo,
    RoomExtraInfo,
}

impl ImRequest {
    fn kind(&self) -> ImKind {
        match self {
            ImRequest::Broadcast(_) => ImKind::Broadcast,
            ImRequest::Barrage(_) => ImKind::Barrage,
            ImRequest::Command { .. } => ImKind::Command,
            ImRequest::StreamExtraInfo(_) => ImKind::StreamExtraInfo,
            ImRequest::RoomExtraInfo { .. } => ImKind::RoomExtraInfo,
        }
    }
}

impl Session {
    /// An API call: sent when the room is connected; else answered at once with 1000002 (not
    /// connected): a message would be stale after a reconnection. Stream extra info set before
    /// the publish is sent is kept and sent with the publish.
    pub(super) fn im_request(&mut self, ticket: u64, req: ImRequest) {
        let kind = req.kind();
        if let ImRequest::StreamExtraInfo(extra) = &req {
            self.stream_extra_info = extra.clone();
            // A publish sent (answered or not) is followed by the update on the same connection,
            // which the server takes in order; else the next publish carries it.
            let sent = self
                .publisher
                .as_ref()
                .is_some_and(|p| p.registered || p.requested);
            if !sent || !self.is_ready() {
                // Sent with the next publish (or with the publish again after a reconnection).
                return self.im_result(kind, ticket, ErrorCode::OK, 0);
            }
        }
        if !self.is_ready() {
            return self.im_result(kind, ticket, ErrorCode::NOT_LOGGED_IN, 0);
        }
        let seq = self.request(Pending::Im { ticket, kind });
        let msg = match req {
            ImRequest::Broadcast(message) => ClientMsg::SendBroadcastMessage { seq, message },
            ImRequest::Barrage(message) => ClientMsg::SendBarrageMessage { seq, message },
            ImRequest::Command { command, to_users } => ClientMsg::SendCustomCommand {
                seq,
                command,
                to_users,
            },
            ImRequest::StreamExtraInfo(extra_info) => {
                let Some(p) = &self.publisher else { return };
                ClientMsg::SetStreamExtraInfo {
                    seq,
                    stream_id: p.stream_id.clone(),
                    extra_info,
                }
            }
            ImRequest::RoomExtraInfo { key, value } => ClientMsg::SetRoomExtraInfo { seq, key, value },
        };
        self.send(msg);
    }

    /// The result of request `ticket` of `kind` for the app.
    pub(super) fn im_result(&mut self, kind: ImKind, ticket: u64, error_code: ErrorCode, message_id: u64) {
        let room_id = self.p.room_id.clone();
        self.event(match kind {
            ImKind::Broadcast => Event::IMSendBroadcastMessageResult {
                room_id,
                seq: ticket,
                error_code,
                message_id,
            },
            ImKind::Barrage => Event::IMSendBarrageMessageResult {
                room_id,
                seq: ticket,
                error_code,
                message_id: if error_code == ErrorCode::OK {
                    message_id.to_string()
                } else {
                    String::new()
                },
            },
            ImKind::Command => Event::IMSendCustomCommandResult {
                room_id,
                seq: ticket,
                error_code,
            },
            ImKind::StreamExtraInfo => Event::PublisherSetStreamExtraInfoResult {
                seq: ticket,
                error_code,
            },
            ImKind::RoomExtraInfo => Event::RoomSetRoomExtraInfoResult {
                room_id,
                seq: ticket,
                error_code,
            },
        });
    }

    /// The connection broke with requests unanswered: each is reported failed (1000002); a
    /// message may have reached the room nonetheless.
    pub(super) fn im_unanswered(&mut self, lost: Vec<(u64, ImKind)>) {
        for (ticket, kind) in lost {
            self.im_result(kind, ticket, ErrorCode::NOT_LOGGED_IN, 0);
        }
    }

    /// A message of the others or of the room; `false` when `msg` is none of these.
    pub(super) fn im_message(&mut self, msg: &ServerMsg) -> bool {
        let online = self.is_online();
        match msg {
            ServerMsg::MessageSent { seq, message_id } => {
                if let Some(Pending::Im { ticket, kind }) = self.pending.remove(seq) {
                    self.im_result(kind, ticket, ErrorCode::OK, *message_id);
                }
            }
            ServerMsg::BroadcastMessage {
                room_id,
                message_id,
                send_time_ms,
                from_user,
                message,
            } if online && *room_id == self.p.room_id => self.event(Event::IMRecvBroadcastMessage {
                room_id: room_id.clone(),
                messages: vec![BroadcastMessageInfo {
                    message: message.clone(),
                    message_id: *message_id,
                    send_time: *send_time_ms,
                    from_user: from_user.clone(),
                }],
            }),
            ServerMsg::BarrageMessage {
                room_id,
                message_id,
                send_time_ms,
                from_user,
                message,
            } if online && *room_id == self.p.room_id => self.event(Event::IMRecvBarrageMessage {
                room_id: room_id.clone(),
                messages: vec![BarrageMessageInfo {
                    message: message.clone(),
                    message_id: message_id.to_string(),
                    send_time: *send_time_ms,
                    from_user: from_user.clone(),
                }],
            }),
            ServerMsg::CustomCommand {
                room_id,
                from_user,
                command,
            } if online && *room_id == self.p.room_id => self.event(Event::IMRecvCustomCommand {
                room_id: room_id.clone(),
                from_user: from_user.clone(),
                command: command.clone(),
            }),
            ServerMsg::StreamExtraInfoUpdate { room_id, streams } if online && *room_id == self.p.room_id => {
                let me = &self.p.user.user_id;
                let streams: Vec<_> = streams.iter().filter(|s| s.user_id != *me).cloned().collect();
                for s in &streams {
                    self.streams.insert(s.stream_id.clone(), s.clone());
                }
                if !streams.is_empty() {
                    self.event(Event::RoomStreamExtraInfoUpdate {
                        room_id: room_id.clone(),
                        streams,
                    });
                }
            }
            ServerMsg::RoomExtraInfoUpdate { room_id, infos } if online && *room_id == self.p.room_id => {
                self.event(Event::RoomExtraInfoUpdate {
                    room_id: room_id.clone(),
                    room_extra_info_list: infos.clone(),
                });
            }
            ServerMsg::RoomOnlineUserCount { room_id, count } if online && *room_id == self.p.room_id => {
                self.event(Event::RoomOnlineUserCountUpdate {
                    room_id: room_id.clone(),
                    count: *count,
                });
            }
            ServerMsg::BroadcastMessage { .. }
            | ServerMsg::BarrageMessage { .. }
            | ServerMsg::CustomCommand { .. }
            | ServerMsg::StreamExtraInfoUpdate { .. }
            | ServerMsg::RoomExtraInfoUpdate { .. }
            | ServerMsg::RoomOnlineUserCount { .. } => {}
            _ => return false,
        }
        true
    }
}
