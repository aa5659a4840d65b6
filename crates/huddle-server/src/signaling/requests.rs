//! What each client request does: the registry's answer, then the media plane's commands.

use huddle_proto::{ClientMsg, ErrorCode, HuddleError, Login, MediaRole, PROTOCOL_VERSION, ServerMsg};
use tracing::{debug, info};

use super::cluster::{StoreOp, release};
use super::conn::Conn;
use super::hub::{Closing, ConnHandle, Hub, close, random_hex, unix_ms, unix_secs};
use crate::registry::{Clock, MessageKind, PublishCheck};
use crate::registry::{Output, SessionId};
use crate::sfu::{Command, Offer};

impl Conn {
    pub(super) async fn on_text(&mut self, text: &str) {
        let msg = match ClientMsg::decode(text) {
            Ok(m) => m,
            Err(e) if e.error.code == ErrorCode::MESSAGE_TOO_LARGE => return self.too_large(),
            Err(e) => {
                if self.rate_ok(e.seq) {
                    self.reply_error(e.seq, &e.error);
                }
                return;
            }
        };
        if !self.rate_ok(Some(msg.seq())) {
            return;
        }
        let Some((id, _)) = self.session else {
            match msg {
                ClientMsg::Login(login) => self.login(login).await,
                other => self.reply_error(
                    Some(other.seq()),
                    &HuddleError::new(ErrorCode::NOT_LOGGED_IN, "log in first"),
                ),
            }
            return;
        };
        debug!(session = %id, seq = msg.seq(), "request");
        // A new stream ID is claimed in the cluster store first (unique per AppID across the
        // nodes); `claimed`: this request won it, so a refusal below gives it back. The
        // connection reads its next message only after this one is handled: a `media_offer`
        // sent right behind its `publish` waits for the claim, and is checked against its
        // outcome (`refused_publish` when refused).
        let mut claimed = false;
        if let ClientMsg::Publish { seq, stream_id, .. } = &msg {
            // The node's own checks first (privileges, limits): their codes come before the
            // store's; `publish` below checks again under the lock.
            let check = {
                let hub = self.state.0.hub.lock();
                let reg = &hub.registry;
                reg.check_publish(id, stream_id).map(|c| (reg.session(id), c))
            };
            let who = match check {
                Ok((Some(s), PublishCheck::New)) => Some((
                    s.app_id,
                    crate::store::Claimant {
                        session: id,
                        room: s.room_id,
                        user: s.user_id,
                    },
                )),
                Ok(_) => None,
                Err(e) => return self.publish_refused(*seq, stream_id, e),
            };
            if let Some((app, who)) = who {
                if let Err(e) = self.state.claim_stream(app, stream_id, who).await {
                    info!(session = %id, %stream_id, code = e.code.0, "publish refused by the cluster store");
                    return self.publish_refused(*seq, stream_id, e);
                }
                claimed = true;
            }
        }
        let mut out = Vec::new();
        let mut hub = self.state.0.hub.lock();
        let reg = &mut hub.registry;
        let (seq, result) = match &msg {
            ClientMsg::Login(l) => (
                l.seq,
                Err(HuddleError::new(
                    ErrorCode::ALREADY_LOGGED_IN,
                    "this connection is logged in already",
                )),
            ),
            ClientMsg::Logout { seq } => {
                let r = reg.logout(id, *seq, &mut out);
                if r.is_ok() {
                    info!(session = %id, "logout");
                    self.session = None;
                }
                (*seq, r)
            }
            ClientMsg::Publish {
                seq,
                stream_id,
                extra_info,
            } => {
                let r = reg.publish(id, *seq, stream_id, extra_info, &mut out);
                if r.is_ok() {
                    info!(session = %id, %stream_id, "publish");
                } else if claimed && let Some(s) = reg.session(id) {
                    let op = StoreOp::Release {
                        app: s.app_id,
                        stream_id: stream_id.clone(),
                        session: id,
                    };
                    release(&hub.store, op);
                } else if claimed {
                    // The session ended meanwhile: its end released what it held, this too.
                    release(&hub.store, StoreOp::ReleaseSession { session: id });
                }
                (*seq, r)
            }
            ClientMsg::Unpublish { seq, stream_id } => {
                let r = reg.unpublish(id, *seq, stream_id, &mut out);
                if r.is_ok() {
                    info!(session = %id, %stream_id, "unpublish");
                }
                (*seq, r)
            }
            ClientMsg::Play { seq, stream_id } => {
                // A new play: its offer may come before the stream (held), whatever it was told
                // before.
                hub.told_available.remove(&(id, stream_id.clone()));
                (*seq, hub.registry.play(id, *seq, stream_id, &mut out))
            }
            ClientMsg::StopPlay { seq, stream_id } => (*seq, reg.stop_play(id, *seq, stream_id, &mut out)),
            ClientMsg::MediaOffer {
                seq,
                stream_id,
                kind,
                sdp,
                red_depth,
            } => {
                let refused = self.refused_publish.as_ref().filter(|(s, _)| s == stream_id);
                let refused = refused.map(|(_, e)| e);
                (
                    *seq,
                    media_offer(
                        &mut hub,
                        id,
                        *seq,
                        stream_id,
                        *kind,
                        sdp,
                        *red_depth,
                        refused,
                        self.setup_active,
                    ),
                )
            }
            ClientMsg::NetworkQuality {
                seq,
                upstream,
                downstream,
            } => (
                *seq,
                reg.network_quality(
                    id,
                    *seq,
                    *upstream,
                    *downstream,
                    std::time::Instant::now(),
                    &mut out,
                ),
            ),
            ClientMsg::SetDeviceState {
                seq,
                stream_id,
                track,
                state,
            } => (
                *seq,
                reg.set_device_state(
                    id,
                    *seq,
                    stream_id,
                    *track,
                    *state,
                    std::time::Instant::now(),
                    &mut out,
                ),
            ),
            ClientMsg::MutePlay {
                seq,
                stream_id,
                track,
                mute,
            } => {
                let r = reg
                    .check_mute_play(id, stream_id, std::time::Instant::now())
                    .map(|app| {
                        // The media plane keeps the mute for the session's play connections of the
                        // stream, this one and the next (a dropped command is not possible here:
                        // only offers are refused when the plane is busy).
                        hub.media_command(Command::MutePlay {
                            session: id,
                            app,
                            stream_id: stream_id.clone(),
                            track: *track,
                            mute: *mute,
                        });
                        out.push(Output::Send {
                            to: id,
                            msg: ServerMsg::Ok { seq: *seq },
                        });
                    });
                (*seq, r)
            }
            ClientMsg::SendBroadcastMessage { seq, message } => (
                *seq,
                reg.send_message(id, *seq, MessageKind::Broadcast, message, Clock::now(), &mut out),
            ),
            ClientMsg::SendBarrageMessage { seq, message } => (
                *seq,
                reg.send_message(id, *seq, MessageKind::Barrage, message, Clock::now(), &mut out),
            ),
            ClientMsg::SendCustomCommand {
                seq,
                command,
                to_users,
            } => (
                *seq,
                reg.send_custom_command(id, *seq, command, to_users, Clock::now(), &mut out),
            ),
            ClientMsg::SetStreamExtraInfo {
                seq,
                stream_id,
                extra_info,
            } => (
                *seq,
                reg.set_stream_extra_info(id, *seq, stream_id, extra_info, &mut out),
            ),
            ClientMsg::SetRoomExtraInfo { seq, key, value } => (
                *seq,
                reg.set_room_extra_info(id, *seq, key, value, Clock::now(), &mut out),
            ),
            ClientMsg::Ping { seq } => {
                drop(hub);
                self.send(&ServerMsg::Pong {
                    seq: *seq,
                    server_time_ms: unix_ms(),
                });
                return;
            }
            ClientMsg::RenewToken { seq, token } => {
                let who = reg.session(id);
                drop(hub);
                return self.renew(id, *seq, who, token);
            }
        };
        hub.dispatch(out);
        drop(hub);
        if let ClientMsg::Publish { stream_id, .. } = &msg {
            match &result {
                Ok(()) => {
                    if self.refused_publish.as_ref().is_some_and(|(s, _)| s == stream_id) {
                        self.refused_publish = None;
                    }
                }
                Err(e) => self.refused_publish = Some((stream_id.clone(), e.clone())),
            }
        }
        if let Err(e) = result {
            self.reply_error(Some(seq), &e);
        }
    }

    /// Refuses a `publish` before the registry saw it (its checks, the cluster store's claim),
    /// and remembers why for a `media_offer` sent with it.
    fn publish_refused(&mut self, seq: u32, stream_id: &huddle_proto::StreamId, e: HuddleError) {
        self.reply_error(Some(seq), &e);
        self.refused_publish = Some((stream_id.clone(), e));
    }

    pub(super) async fn login(&mut self, login: Login) {
        let seq = Some(login.seq);
        if login.protocol != PROTOCOL_VERSION {
            return self.reply_error(
                seq,
                &HuddleError::new(
                    ErrorCode::PROTOCOL_VERSION,
                    format!(
                        "the server speaks protocol {PROTOCOL_VERSION}, not {}",
                        login.protocol
                    ),
                ),
            );
        }
        if login.resume.is_none() && self.state.is_draining() {
            info!(app = %login.app_id, room = %login.room_id, user = %login.user.user_id, "login refused: draining");
            return self.reply_error(seq, &HuddleError::from(ErrorCode::SERVER_SHUTTING_DOWN));
        }
        let now = unix_secs();
        let grant = match self.state.0.auth.authenticate(&login, &self.nonce, now) {
            Ok(g) => g,
            Err(e) => {
                info!(app = %login.app_id, room = %login.room_id, user = %login.user.user_id, code = e.code.0, "login refused");
                return self.reply_error(seq, &e);
            }
        };
        // The other nodes' part of the room, for a login that may create the room on this node.
        // A new login needs the cluster store (fail closed: 1009009); a resume of a session
        // this node holds does not, so calls in progress go on while the store is away.
        let follows = {
            let hub = self.state.0.hub.lock();
            hub.registry.follows(login.app_id, &login.room_id)
        };
        let remote = if login.resume.is_none() || !follows {
            match self.state.room_snapshot(login.app_id, &login.room_id).await {
                Ok(r) => Some(r),
                Err(e) => {
                    info!(app = %login.app_id, room = %login.room_id, user = %login.user.user_id, code = e.code.0, "login refused");
                    return self.reply_error(seq, &e);
                }
            }
        } else {
            None
        };
        let mut out = Vec::new();
        let mut hub = self.state.0.hub.lock();
        match hub
            .registry
            .login_with(&login, grant, random_hex(16), remote, &mut out)
        {
            Ok(att) => {
                if let Some(turn) = &self.state.0.config.turn {
                    // The registry decides membership; how to reach the media plane (TURN
                    // credentials, fresh on every login) is the shell's to add.
                    let servers = crate::turn::ice_servers(turn, login.app_id, &login.user.user_id, now);
                    for o in &mut out {
                        if let Output::Send {
                            to,
                            msg: ServerMsg::LoginOk(ok),
                        } = o
                            && *to == att.session
                        {
                            ok.ice_servers = servers.clone();
                        }
                    }
                }
                let handle = ConnHandle {
                    epoch: att.epoch,
                    tx: self.tx.clone(),
                    ctl: self.ctl.clone(),
                };
                if let Some(old) = hub.conns.insert(att.session, handle) {
                    // A resume from a new connection: the old one is half-open.
                    close(&old.ctl, Closing::Now(None));
                }
                // The room's online user count now, then on the room's 30 s timer.
                hub.registry
                    .online_count_after_login(att.session, std::time::Instant::now(), &mut out);
                hub.dispatch(out);
                drop(hub);
                // The login (or resume) armed the session's token timer.
                self.state.wake_timers();
                self.session = Some((att.session, att.epoch));
                self.setup_active = login.setup_active;
                self.state
                    .metrics()
                    .observe_login(self.opened.elapsed(), att.resumed);
                info!(
                    app = %login.app_id, room = %login.room_id, user = %login.user.user_id,
                    session = %att.session, resumed = att.resumed, "login"
                );
            }
            Err(e) => {
                drop(hub);
                info!(app = %login.app_id, room = %login.room_id, user = %login.user.user_id, code = e.code.0, "login refused");
                self.reply_error(seq, &e);
            }
        }
    }

    pub(super) fn renew(
        &mut self,
        id: SessionId,
        seq: u32,
        who: Option<crate::registry::SessionInfo>,
        token: &str,
    ) {
        let Some(who) = who else {
            return self.reply_error(Some(seq), &HuddleError::from(ErrorCode::NOT_LOGGED_IN));
        };
        let now = unix_secs();
        let grant = match self
            .state
            .0
            .auth
            .verify_token(who.app_id, &who.room_id, &who.user_id, token, now)
        {
            Ok(g) => g,
            Err(e) => return self.reply_error(Some(seq), &e),
        };
        let mut out = Vec::new();
        let mut hub = self.state.0.hub.lock();
        let r = hub.registry.renew(id, seq, grant, &mut out);
        hub.dispatch(out);
        drop(hub);
        if r.is_ok() {
            self.state.wake_timers();
        }
        match r {
            Ok(()) => info!(session = %id, "token renewed"),
            Err(e) => self.reply_error(Some(seq), &e),
        }
    }
}

/// Checks a `media_offer` against the registry and hands it to the media plane, which answers it
/// on its own (`media_answer` or `error`). A publish offer for a stream the session does not
/// publish is refused with `refused` (the error of the `publish` it was sent with) if any; a
/// play offer for a stream not published now is held until it is ([`Hub::hold_play_offer`]),
/// unless the session was told since its `play` that the stream was there (1004002, as before:
/// the offer answered that news, and the stream's return brings the next). `setup_active`: the
/// session's login said it starts ICE when answered `a=setup:active` ([`Offer::setup_active`]).
#[allow(clippy::too_many_arguments)]
pub(super) fn media_offer(
    hub: &mut Hub,
    id: SessionId,
    seq: u32,
    stream_id: &huddle_proto::StreamId,
    role: MediaRole,
    sdp: &str,
    red_depth: u8,
    refused: Option<&HuddleError>,
    setup_active: bool,
) -> Result<(), HuddleError> {
    let reg = &hub.registry;
    let app = reg
        .session(id)
        .ok_or_else(|| HuddleError::from(ErrorCode::NOT_LOGGED_IN))?
        .app_id;
    let mut hold = false;
    match role {
        MediaRole::Publish if !reg.publishes(id, stream_id) => {
            return Err(refused.cloned().unwrap_or_else(|| {
                HuddleError::new(
                    ErrorCode::STREAM_NOT_FOUND,
                    format!("publish the stream {stream_id} before offering its media"),
                )
            }));
        }
        MediaRole::Play => match reg.play_status(id, stream_id) {
            None => {
                return Err(HuddleError::new(
                    ErrorCode::STREAM_NOT_FOUND,
                    format!("play the stream {stream_id} before offering to receive it"),
                ));
            }
            Some(false) if hub.told_available.contains(&(id, stream_id.clone())) => {
                return Err(HuddleError::new(
                    ErrorCode::STREAM_NOT_FOUND,
                    format!("the stream {stream_id} is not published now (wait for play_update)"),
                ));
            }
            Some(available) => hold = !available,
        },
        MediaRole::Publish => {}
    }
    if hub.media.is_none() {
        return Err(HuddleError::new(
            ErrorCode::SERVER_BUSY,
            "the media plane is not running",
        ));
    }
    let offer = Offer {
        session: id,
        app,
        stream_id: stream_id.clone(),
        role,
        seq,
        sdp: sdp.to_string(),
        setup_active,
        red_depth,
    };
    if hold {
        hub.hold_play_offer(offer);
        return Ok(());
    }
    if hub.media_command(Command::Offer(offer)) {
        Ok(())
    } else {
        Err(HuddleError::new(
            ErrorCode::SERVER_BUSY,
            "the media plane is busy: offer again later",
        ))
    }
}
