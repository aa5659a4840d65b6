//! Messages and extra info of a room: broadcast and barrage messages, custom commands, stream
//! and room extra info, and the room's online user count, with the limits the hosted SDKs
//! document (`docs/messages.md`).
//!
//! Everything a member of another node must see goes to the cluster as a [`RoomChange`]
//! (through the room's history, in order per sending node); the other nodes deliver it to their
//! own members with [`Registry::remote_update`]. Rates are counted per node: a room spread over
//! several nodes may take up to each node's allowance.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use huddle_proto::{
    ErrorCode, HuddleError, MAX_COMMAND_RECIPIENTS, RoomExtraInfo, RoomId, ServerMsg, StreamId, User, UserId,
    check_extra_info, check_im_content, check_room_extra_key, check_room_extra_value,
};
use serde::{Deserialize, Serialize};

use super::{
    AppId, Clock, ClusterCommand, Output, Registry, Room, RoomChange, Session, SessionId, broadcast, err,
    not_logged_in,
};

/// How often the room's online user count is sent (as the hosted SDKs'
/// `onRoomOnlineUserCountUpdate`).
pub const ONLINE_COUNT_INTERVAL: Duration = Duration::from_secs(30);

/// Broadcast messages one user may send a second.
pub const BROADCAST_PER_USER: usize = 2;
/// Broadcast messages a room takes a second (on one node).
pub const BROADCAST_PER_ROOM: usize = 10;
/// Barrage messages a room takes a second (on one node).
pub const BARRAGE_PER_ROOM: usize = 20;
/// Custom commands to one user a room takes a second (on one node).
pub const COMMAND_ONE_PER_ROOM: usize = 200;
/// Custom commands to several users (or all) a room takes a second (on one node).
pub const COMMAND_MANY_PER_ROOM: usize = 10;
/// Room extra info changes a room takes a second (on one node).
pub const ROOM_EXTRA_PER_ROOM: usize = 10;
/// Keys of room extra info per room.
pub const ROOM_EXTRA_KEYS: usize = 1;

const SECOND: Duration = Duration::from_secs(1);

/// A message or custom command to users of a room, as it travels between nodes: the message
/// to deliver and to whom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomMessage {
    /// `broadcast_message`, `barrage_message` or `custom_command`.
    pub msg: ServerMsg,
    /// The recipients' user IDs; empty: every user of the room but the sender.
    pub to: Vec<UserId>,
}

impl RoomMessage {
    /// The sender's user ID (its sessions never get the message).
    fn from(&self) -> Option<&UserId> {
        match &self.msg {
            ServerMsg::BroadcastMessage { from_user, .. }
            | ServerMsg::BarrageMessage { from_user, .. }
            | ServerMsg::CustomCommand { from_user, .. } => Some(&from_user.user_id),
            _ => None,
        }
    }

    /// Whether recipients whose connection is congested may lose it (barrage messages).
    fn lossy(&self) -> bool {
        matches!(self.msg, ServerMsg::BarrageMessage { .. })
    }
}

/// The kind of a room message a user sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// Reliable, in order: `broadcast_message`.
    Broadcast,
    /// Best effort: `barrage_message`.
    Barrage,
}

/// A sliding one-second window of events, for "at most N a second". Holds at most N instants.
#[derive(Debug, Default)]
pub(super) struct Rate(VecDeque<Instant>);

impl Rate {
    /// Whether one more is allowed at `now` under `limit` a second (without taking it).
    fn allows(&mut self, limit: usize, now: Instant) -> bool {
        while let Some(&t) = self.0.front() {
            if now.saturating_duration_since(t) >= SECOND {
                self.0.pop_front();
            } else {
                break;
            }
        }
        self.0.len() < limit
    }

    /// Takes one (after [`Rate::allows`] said yes).
    fn take(&mut self, now: Instant) {
        self.0.push_back(now);
    }
}

/// A room's message and extra info rates on this node.
#[derive(Debug, Default)]
pub(super) struct RoomRates {
    broadcast: Rate,
    barrage: Rate,
    command_one: Rate,
    command_many: Rate,
    extra: Rate,
}

/// The attached sessions of `room` whose user is among `to` (all when `to` is empty), except
/// the sessions of `from`.
fn recipients(
    sessions: &std::collections::HashMap<SessionId, Session>,
    room: &Room,
    from: Option<&UserId>,
    to: &[UserId],
) -> Vec<SessionId> {
    room.users
        .iter()
        .filter(|(uid, _)| Some(*uid) != from && (to.is_empty() || to.contains(uid)))
        .map(|(_, sid)| *sid)
        .filter(|sid| sessions.get(sid).is_some_and(Session::attached))
        .collect()
}

fn room_limited(what: &str, limit: usize) -> HuddleError {
    err(
        ErrorCode::IM_ROOM_RATE_LIMITED,
        format!("the room takes at most {limit} {what} a second"),
    )
}

impl Registry {
    /// A new message ID: unique across the nodes (the node's random 20-bit prefix, so that
    /// IDs stay exact as JavaScript numbers) and increasing on this node.
    pub fn next_message_id(&mut self) -> u64 {
        self.message_seq = (self.message_seq + 1) & 0xffff_ffff;
        self.message_base | self.message_seq
    }

    /// Session `id` sends a broadcast or barrage message to everyone else in its room (on every
    /// node). Refused with 1009070 when empty or over 1024 bytes, 1009071 when the user sent
    /// [`BROADCAST_PER_USER`] broadcast messages in the last second, 1009072 when the room took
    /// its allowance ([`BROADCAST_PER_ROOM`], [`BARRAGE_PER_ROOM`]). Answers `message_sent`;
    /// a barrage message goes out as [`Output::BroadcastLossy`].
    pub fn send_message(
        &mut self,
        id: SessionId,
        seq: u32,
        kind: MessageKind,
        message: &str,
        now: Clock,
        out: &mut Vec<Output>,
    ) -> Result<(), HuddleError> {
        check_im_content(message)?;
        let message_id = self.next_message_id();
        let s = self.sessions.get_mut(&id).ok_or_else(not_logged_in)?;
        let room = self
            .apps
            .get_mut(&s.app)
            .and_then(|a| a.rooms.get_mut(&s.room))
            .ok_or_else(not_logged_in)?;
        match kind {
            MessageKind::Broadcast => {
                if !s.broadcast_rate.allows(BROADCAST_PER_USER, now.at) {
                    return Err(err(
                        ErrorCode::IM_USER_RATE_LIMITED,
                        format!("a user sends at most {BROADCAST_PER_USER} broadcast messages a second"),
                    ));
                }
                if !room.rates.broadcast.allows(BROADCAST_PER_ROOM, now.at) {
                    return Err(room_limited("broadcast messages", BROADCAST_PER_ROOM));
                }
                s.broadcast_rate.take(now.at);
                room.rates.broadcast.take(now.at);
            }
            MessageKind::Barrage => {
                if !room.rates.barrage.allows(BARRAGE_PER_ROOM, now.at) {
                    return Err(room_limited("barrage messages", BARRAGE_PER_ROOM));
                }
                room.rates.barrage.take(now.at);
            }
        }
        let (room_id, user) = (s.room.clone(), s.user.clone());
        let (app, message) = (s.app, message.to_string());
        let msg = match kind {
            MessageKind::Broadcast => ServerMsg::BroadcastMessage {
                room_id: room_id.clone(),
                message_id,
                send_time_ms: now.unix_ms,
                from_user: user,
                message,
            },
            MessageKind::Barrage => ServerMsg::BarrageMessage {
                room_id: room_id.clone(),
                message_id,
                send_time_ms: now.unix_ms,
                from_user: user,
                message,
            },
        };
        out.push(Output::Send {
            to: id,
            msg: ServerMsg::MessageSent { seq, message_id },
        });
        self.deliver_message(app, &room_id, RoomMessage { msg, to: Vec::new() }, out);
        Ok(())
    }

    /// A message from the app's server (server API `SendBroadcastMessage`) to everyone in the
    /// room on every node but the sessions of `from`'s user ID. Returns its ID, or `None` when
    /// this node has no member in the room.
    pub fn server_broadcast(
        &mut self,
        app: AppId,
        room_id: &RoomId,
        from: User,
        message: String,
        unix_ms: u64,
        out: &mut Vec<Output>,
    ) -> Option<u64> {
        if !self.follows(app, room_id) {
            return None;
        }
        let message_id = self.next_message_id();
        let msg = ServerMsg::BroadcastMessage {
            room_id: room_id.clone(),
            message_id,
            send_time_ms: unix_ms,
            from_user: from,
            message,
        };
        self.deliver_message(app, room_id, RoomMessage { msg, to: Vec::new() }, out);
        Some(message_id)
    }

    /// Session `id` sends a custom command to `to_users` of its room (every other user when
    /// empty). Users not in the room (on any node) are skipped; refused with 1009073 when none
    /// is left, 1009070 when the command is empty or over 1024 bytes, 1009072 when the room took
    /// its allowance ([`COMMAND_ONE_PER_ROOM`] to one user, [`COMMAND_MANY_PER_ROOM`] to
    /// several). Answers `ok`.
    pub fn send_custom_command(
        &mut self,
        id: SessionId,
        seq: u32,
        command: &str,
        to_users: &[UserId],
        now: Clock,
        out: &mut Vec<Output>,
    ) -> Result<(), HuddleError> {
        check_im_content(command)?;
        if to_users.len() > MAX_COMMAND_RECIPIENTS {
            return Err(err(
                ErrorCode::CUSTOM_COMMAND_NO_RECIPIENT,
                format!("a custom command goes to at most {MAX_COMMAND_RECIPIENTS} users"),
            ));
        }
        let s = self.sessions.get(&id).ok_or_else(not_logged_in)?;
        let (app, room_id, user) = (s.app, s.room.clone(), s.user.clone());
        let room = self
            .apps
            .get_mut(&app)
            .and_then(|a| a.rooms.get_mut(&room_id))
            .ok_or_else(not_logged_in)?;
        let present = |u: &UserId| {
            *u != user.user_id && (room.users.contains_key(u) || room.remote_users.contains_key(u))
        };
        let mut to: Vec<UserId> = to_users.iter().filter(|u| present(u)).cloned().collect();
        to.sort();
        to.dedup();
        let others = room.users.keys().chain(room.remote_users.keys()).any(present);
        if to.is_empty() && (!to_users.is_empty() || !others) {
            return Err(err(
                ErrorCode::CUSTOM_COMMAND_NO_RECIPIENT,
                "none of the recipients is in the room",
            ));
        }
        let (rate, limit) = if to.len() == 1 {
            (&mut room.rates.command_one, COMMAND_ONE_PER_ROOM)
        } else {
            (&mut room.rates.command_many, COMMAND_MANY_PER_ROOM)
        };
        if !rate.allows(limit, now.at) {
            return Err(room_limited("custom commands of this kind", limit));
        }
        rate.take(now.at);
        out.push(Output::Send {
            to: id,
            msg: ServerMsg::Ok { seq },
        });
        let msg = ServerMsg::CustomCommand {
            room_id: room_id.clone(),
            from_user: user,
            command: command.to_string(),
        };
        self.deliver_message(app, &room_id, RoomMessage { msg, to }, out);
        Ok(())
    }

    /// Delivers `m` to this node's members of the room and hands it to the other nodes.
    fn deliver_message(&mut self, app: AppId, room_id: &RoomId, m: RoomMessage, out: &mut Vec<Output>) {
        self.deliver_local(app, room_id, &m, out);
        out.push(Output::Cluster(ClusterCommand::Change {
            app,
            room: room_id.clone(),
            change: RoomChange::Message(m),
        }));
    }

    /// Delivers `m` to this node's attached members of the room that it is for.
    pub(super) fn deliver_local(&self, app: AppId, room_id: &RoomId, m: &RoomMessage, out: &mut Vec<Output>) {
        let Some(room) = self.apps.get(&app).and_then(|a| a.rooms.get(room_id)) else {
            return;
        };
        let to = recipients(&self.sessions, room, m.from(), &m.to);
        if to.is_empty() {
            return;
        }
        if m.lossy() {
            out.push(Output::BroadcastLossy {
                to,
                msg: m.msg.clone(),
            });
        } else {
            out.push(Output::Broadcast {
                to,
                msg: m.msg.clone(),
            });
        }
    }

    /// Replaces the extra info of `stream_id`, which session `id` publishes (else 1004002).
    /// Answers `ok`; the room's other attached members get `stream_extra_info_update`, and the
    /// other nodes the change.
    pub fn set_stream_extra_info(
        &mut self,
        id: SessionId,
        seq: u32,
        stream_id: &StreamId,
        extra_info: &str,
        out: &mut Vec<Output>,
    ) -> Result<(), HuddleError> {
        check_extra_info(extra_info)?;
        let s = self.sessions.get(&id).ok_or_else(not_logged_in)?;
        let (app_id, room_id) = (s.app, s.room.clone());
        let app = self.apps.get_mut(&app_id).ok_or_else(not_logged_in)?;
        let published = app
            .streams
            .get_mut(stream_id)
            .filter(|p| p.session == id)
            .ok_or_else(|| {
                err(
                    ErrorCode::STREAM_NOT_FOUND,
                    format!("this session does not publish the stream {stream_id}"),
                )
            })?;
        published.info.extra_info = extra_info.to_string();
        let info = published.info.clone();
        out.push(Output::Send {
            to: id,
            msg: ServerMsg::Ok { seq },
        });
        if let Some(room) = app.rooms.get(&room_id) {
            let to = super::room_recipients(&self.sessions, room, id, false);
            broadcast(
                out,
                to,
                ServerMsg::StreamExtraInfoUpdate {
                    room_id: room_id.clone(),
                    streams: vec![info.clone()],
                },
            );
        }
        out.push(Output::Cluster(ClusterCommand::Change {
            app: app_id,
            room: room_id,
            change: RoomChange::StreamExtraInfo(info),
        }));
        Ok(())
    }

    /// Sets the room's extra info `key` to `value` for session `id`'s room. Refused with
    /// 1009074 (key empty or over 10 bytes), 1009075 (value over 128 bytes), 1009076 (the room
    /// has [`ROOM_EXTRA_KEYS`] other keys), 1009077 ([`ROOM_EXTRA_PER_ROOM`] changes in the last
    /// second). Answers `ok`; the room's other attached members get `room_extra_info_update`,
    /// and the other nodes the change.
    pub fn set_room_extra_info(
        &mut self,
        id: SessionId,
        seq: u32,
        key: &str,
        value: &str,
        now: Clock,
        out: &mut Vec<Output>,
    ) -> Result<(), HuddleError> {
        check_room_extra_key(key)?;
        check_room_extra_value(value)?;
        let s = self.sessions.get(&id).ok_or_else(not_logged_in)?;
        let (app, room_id, user) = (s.app, s.room.clone(), s.user.clone());
        let room = self
            .apps
            .get_mut(&app)
            .and_then(|a| a.rooms.get_mut(&room_id))
            .ok_or_else(not_logged_in)?;
        if !room.extra.contains_key(key) && room.extra.len() >= ROOM_EXTRA_KEYS {
            return Err(err(
                ErrorCode::ROOM_EXTRA_INFO_KEY_LIMIT,
                format!("the room has {ROOM_EXTRA_KEYS} extra info key(s) already"),
            ));
        }
        if !room.rates.extra.allows(ROOM_EXTRA_PER_ROOM, now.at) {
            return Err(err(
                ErrorCode::ROOM_EXTRA_INFO_RATE_LIMITED,
                format!("the room's extra info changes at most {ROOM_EXTRA_PER_ROOM} times a second"),
            ));
        }
        room.rates.extra.take(now.at);
        let info = RoomExtraInfo {
            key: key.to_string(),
            value: value.to_string(),
            update_user: user,
            update_time_ms: now.unix_ms,
        };
        room.extra.insert(key.to_string(), info.clone());
        out.push(Output::Send {
            to: id,
            msg: ServerMsg::Ok { seq },
        });
        let to = super::room_recipients(&self.sessions, room, id, false);
        broadcast(
            out,
            to,
            ServerMsg::RoomExtraInfoUpdate {
                room_id: room_id.clone(),
                infos: vec![info.clone()],
            },
        );
        out.push(Output::Cluster(ClusterCommand::Change {
            app,
            room: room_id,
            change: RoomChange::RoomExtraInfo(info),
        }));
        Ok(())
    }

    /// The room's extra info for session `id` right after its `login_ok` (nothing when the
    /// room has none).
    pub(super) fn extra_after_login(&self, id: SessionId, out: &mut Vec<Output>) {
        let Some(s) = self.sessions.get(&id) else { return };
        let Some(room) = self.apps.get(&s.app).and_then(|a| a.rooms.get(&s.room)) else {
            return;
        };
        if !room.extra.is_empty() {
            out.push(Output::Send {
                to: id,
                msg: ServerMsg::RoomExtraInfoUpdate {
                    room_id: s.room.clone(),
                    infos: room.extra.values().cloned().collect(),
                },
            });
        }
    }

    /// After session `id` logged in at `now`: its room's online user count at once, and the
    /// room's count timer armed (every [`ONLINE_COUNT_INTERVAL`] the room's attached members get
    /// the count) if it was not.
    pub fn online_count_after_login(&mut self, id: SessionId, now: Instant, out: &mut Vec<Output>) {
        let Some(s) = self.sessions.get(&id) else { return };
        let (app, room_id) = (s.app, s.room.clone());
        let Some(room) = self.apps.get_mut(&app).and_then(|a| a.rooms.get_mut(&room_id)) else {
            return;
        };
        if room.count_due.is_none() {
            let due = now + ONLINE_COUNT_INTERVAL;
            room.count_due = Some(due);
            self.count_timers.insert((due, app, room_id.clone()));
        }
        let count = u32::try_from(room.member_count()).unwrap_or(u32::MAX);
        out.push(Output::Send {
            to: id,
            msg: ServerMsg::RoomOnlineUserCount { room_id, count },
        });
    }

    /// Runs the count timers due at `now`; returns how many ran.
    pub(super) fn handle_count_timers(&mut self, now: Instant, out: &mut Vec<Output>) -> usize {
        let mut ran = 0;
        while let Some((due, app, room_id)) = self.count_timers.first().cloned() {
            if due > now {
                break;
            }
            self.count_timers.pop_first();
            let Some(room) = self.apps.get_mut(&app).and_then(|a| a.rooms.get_mut(&room_id)) else {
                continue;
            };
            if room.count_due != Some(due) {
                continue;
            }
            ran += 1;
            let next = due + ONLINE_COUNT_INTERVAL;
            room.count_due = Some(next);
            self.count_timers.insert((next, app, room_id.clone()));
            let count = u32::try_from(room.member_count()).unwrap_or(u32::MAX);
            let to = room
                .users
                .values()
                .copied()
                .filter(|sid| self.sessions.get(sid).is_some_and(Session::attached))
                .collect();
            broadcast(out, to, ServerMsg::RoomOnlineUserCount { room_id, count });
        }
        ran
    }

    /// Another node's stream's extra info changed (see [`Registry::remote_update`]).
    pub(super) fn remote_stream_extra_info(
        &mut self,
        app: AppId,
        room_id: &RoomId,
        owner: &str,
        info: huddle_proto::StreamInfo,
        out: &mut Vec<Output>,
    ) -> bool {
        let sessions = &self.sessions;
        let Some(room) = self.apps.get_mut(&app).and_then(|a| a.rooms.get_mut(room_id)) else {
            return false;
        };
        let Some((o, old)) = room.remote_streams.get_mut(&info.stream_id) else {
            return false;
        };
        if o != owner || *old == info {
            return false;
        }
        *old = info.clone();
        let to = room
            .users
            .values()
            .copied()
            .filter(|sid| sessions.get(sid).is_some_and(Session::attached))
            .collect();
        broadcast(
            out,
            to,
            ServerMsg::StreamExtraInfoUpdate {
                room_id: room_id.clone(),
                streams: vec![info],
            },
        );
        true
    }

    /// The room's extra info as the cluster has it: applied when it differs from what this node
    /// has (this node's own changes come back in the history's order too, so that every node
    /// ends with the last change the store took), and told to the attached members but the one
    /// who made it.
    pub(super) fn remote_room_extra_info(
        &mut self,
        app: AppId,
        room_id: &RoomId,
        info: RoomExtraInfo,
        out: &mut Vec<Output>,
    ) -> bool {
        let sessions = &self.sessions;
        let Some(room) = self.apps.get_mut(&app).and_then(|a| a.rooms.get_mut(room_id)) else {
            return false;
        };
        if room.extra.get(&info.key) == Some(&info) {
            return false;
        }
        room.extra.insert(info.key.clone(), info.clone());
        let to = room
            .users
            .iter()
            .filter(|(uid, _)| **uid != info.update_user.user_id)
            .map(|(_, sid)| *sid)
            .filter(|sid| sessions.get(sid).is_some_and(Session::attached))
            .collect();
        broadcast(
            out,
            to,
            ServerMsg::RoomExtraInfoUpdate {
                room_id: room_id.clone(),
                infos: vec![info],
            },
        );
        true
    }
}
