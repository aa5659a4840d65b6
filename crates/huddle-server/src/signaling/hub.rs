//! The hub: the registry and where each attached session's messages go.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::ws::{Message, Utf8Bytes};
use huddle_proto::{AppId, ErrorCode, HuddleError, RoomId, ServerMsg, StreamId};
use rand::RngCore;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Notify, mpsc, watch};
use tracing::{debug, warn};

use super::ServerState;
use super::cluster::{StoreOp, release};
use super::relay::PullOp;
use crate::media::{MediaTx, Signal};
use crate::registry::{ClusterCommand, MediaCommand, Output, Registry, SessionId};
use crate::sfu::{Command, Offer};

/// The registry and where each attached session's messages go.
pub(super) struct Hub {
    pub(super) registry: Registry,
    pub(super) conns: HashMap<SessionId, ConnHandle>,
    /// Commands to the media plane, sent under the hub lock so that they follow the registry's
    /// order. `None` until the media plane runs.
    pub(super) media: Option<MediaTx>,
    /// Releases and room changes to the cluster store, queued in the registry's order
    /// ([`super::cluster`]).
    pub(super) store: mpsc::Sender<StoreOp>,
    /// The rooms this node follows in the cluster (it has members in them), with where their
    /// history was read up to.
    pub(super) follows: HashMap<(AppId, RoomId), Follow>,
    /// Wakes the room reader when `follows` changed.
    pub(super) follows_changed: Arc<Notify>,
    /// Pulls of other nodes' streams to start and stop, in the registry's order ([`super::relay`]).
    pub(super) pulls: mpsc::Sender<PullOp>,
    /// Wakes the registry's timer task (a pull's linger was armed).
    pub(super) timer_wake: Arc<Notify>,
    /// Turns the registry's room changes into webhook events (apps with webhooks only).
    pub(super) webhooks: Option<crate::webhooks::WebhookTap>,
    /// Learns which room each stream published here is in, for recording (`crate::recording`).
    pub(super) recorder: Arc<crate::recording::Recorder>,
    /// Play offers for streams not published now, by session and stream, held while the play
    /// stands: one per stream a session plays (the newest), handed to the media plane when the
    /// session is told the stream is available ([`Hub::hold_play_offer`]).
    pub(super) held_plays: HashMap<(SessionId, StreamId), Offer>,
    /// The sessions told since their `play` that the stream is available. A play offer of
    /// theirs for the stream gone again answered that news: it is refused (1004002) as before
    /// holding existed, and the next `play_update` brings the next offer (a client that offers
    /// after the availability, and times its requests out, is not left waiting).
    pub(super) told_available: HashSet<(SessionId, StreamId)>,
}

/// A followed room's position in its history.
pub(super) struct Follow {
    pub(super) cursor: String,
    pub(super) seq: u64,
    /// Read a fresh snapshot before going on (a gap in the history, or the store lost it).
    pub(super) resync: bool,
    /// The store lost its data and the nodes are putting their parts back: until then a fresh
    /// snapshot only adds (a node that has not restored its part yet is not gone), and then
    /// the room is read afresh in full.
    pub(super) settle_until: Option<tokio::time::Instant>,
}

/// The connection that carries a session now.
pub(super) struct ConnHandle {
    /// The registry epoch of this attachment.
    pub(super) epoch: u64,
    pub(super) tx: mpsc::Sender<Message>,
    pub(super) ctl: Arc<watch::Sender<Closing>>,
}

/// Whether and how a connection is closing; set once (the first reason wins).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Closing {
    Open,
    /// Send what is queued, then close (logout, kick, login timeout, the peer went away).
    AfterQueue,
    /// Close at once, ahead of the queue, after this error (slow consumer, oversized message) if
    /// any (session timeout, replaced by a resume).
    Now(Option<Utf8Bytes>),
    /// The server is shutting down: close with "going away".
    Shutdown,
    /// The peer broke the WebSocket protocol (RFC 6455, 7.4.1): close at once with this code and
    /// reason, after this error if any.
    Violation {
        error: Option<Utf8Bytes>,
        code: u16,
        reason: &'static str,
    },
}

impl Closing {
    /// Whether the writer must stop sending the queue.
    pub(super) fn is_hard(&self) -> bool {
        matches!(
            self,
            Closing::Now(_) | Closing::Shutdown | Closing::Violation { .. }
        )
    }
}

pub(super) fn close(ctl: &watch::Sender<Closing>, how: Closing) {
    ctl.send_if_modified(|c| {
        if *c == Closing::Open {
            *c = how;
            true
        } else {
            false
        }
    });
}

pub(super) fn text(msg: &ServerMsg) -> Utf8Bytes {
    Utf8Bytes::from(msg.encode())
}

pub(super) fn error_text(seq: Option<u32>, err: &HuddleError) -> Utf8Bytes {
    text(&ServerMsg::error(seq, err))
}

pub(super) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub(super) fn unix_secs() -> i64 {
    i64::try_from(unix_ms() / 1000).unwrap_or(i64::MAX)
}

pub(super) fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

impl Hub {
    /// Delivers the registry's outputs, in order, without waiting.
    pub(super) fn dispatch(&mut self, out: Vec<Output>) {
        // The sessions told that a stream is available: their held play offers go to the media
        // plane after this batch (after the pull of a stream on another node, if any).
        let mut available = Vec::new();
        for o in out {
            match o {
                Output::Send { to, msg } => {
                    debug!(session = %to, msg = msg_type(&msg), "send");
                    self.deliver(to, Message::Text(text(&msg)));
                    if let ServerMsg::PlayUpdate {
                        stream_id,
                        available: true,
                    } = msg
                    {
                        available.push((to, stream_id));
                    }
                }
                Output::Broadcast { to, msg } => {
                    debug!(sessions = to.len(), msg = msg_type(&msg), "broadcast");
                    let t = text(&msg);
                    for id in &to {
                        self.deliver(*id, Message::Text(t.clone()));
                    }
                    if let ServerMsg::PlayUpdate {
                        stream_id,
                        available: true,
                    } = msg
                    {
                        available.extend(to.into_iter().map(|id| (id, stream_id.clone())));
                    }
                }
                Output::BroadcastLossy { to, msg } => {
                    debug!(
                        sessions = to.len(),
                        msg = msg_type(&msg),
                        "broadcast (best effort)"
                    );
                    let t = text(&msg);
                    for id in to {
                        self.deliver_lossy(id, Message::Text(t.clone()));
                    }
                }
                Output::Close { session } => {
                    if let Some(h) = self.conns.remove(&session) {
                        close(&h.ctl, Closing::AfterQueue);
                    }
                }
                Output::Cluster(cmd) => {
                    if let Some(tap) = &mut self.webhooks {
                        tap.observe(&cmd);
                    }
                    self.recorder.observe(&cmd);
                    match cmd {
                        ClusterCommand::Follow {
                            app,
                            room,
                            cursor,
                            seq,
                        } => {
                            let follow = Follow {
                                cursor,
                                seq,
                                resync: false,
                                settle_until: None,
                            };
                            self.follows.insert((app, room), follow);
                            self.follows_changed.notify_one();
                        }
                        ClusterCommand::Unfollow { app, room } => {
                            self.follows.remove(&(app, room));
                            self.follows_changed.notify_one();
                        }
                        ClusterCommand::Change { app, room, change } => {
                            release(&self.store, StoreOp::Room { app, room, change });
                        }
                    }
                }
                Output::Media(MediaCommand::Pull {
                    app,
                    stream_id,
                    owner,
                }) => self.pull(PullOp::Pull {
                    app,
                    stream_id,
                    owner,
                }),
                Output::Media(MediaCommand::PullIdle { app, stream_id }) => {
                    // The linger is armed with the shell's clock; the timer task looks again.
                    let mut more = Vec::new();
                    self.registry
                        .linger_pull(app, &stream_id, std::time::Instant::now(), &mut more);
                    self.timer_wake.notify_one();
                    self.dispatch(more);
                }
                Output::Media(MediaCommand::Unpull { app, stream_id }) => {
                    self.pull(PullOp::Unpull {
                        app,
                        stream_id,
                        players_stay: false,
                    });
                }
                Output::Media(MediaCommand::PullMoved {
                    app,
                    stream_id,
                    owner,
                }) => {
                    self.pull(PullOp::Unpull {
                        app,
                        stream_id: stream_id.clone(),
                        players_stay: true,
                    });
                    if let Some(owner) = owner {
                        self.pull(PullOp::Pull {
                            app,
                            stream_id,
                            owner,
                        });
                    }
                }
                Output::Media(cmd) => {
                    let cmd = match cmd {
                        MediaCommand::ClosePublish {
                            session,
                            app,
                            stream_id,
                        } => {
                            let op = StoreOp::Release {
                                app,
                                stream_id: stream_id.clone(),
                                session,
                            };
                            release(&self.store, op);
                            Command::ClosePublish { app, stream_id }
                        }
                        MediaCommand::ClosePlay {
                            session,
                            app,
                            stream_id,
                        } => {
                            self.told_available.remove(&(session, stream_id.clone()));
                            if let Some(o) = self.held_plays.remove(&(session, stream_id.clone())) {
                                let e = HuddleError::new(
                                    ErrorCode::STREAM_NOT_FOUND,
                                    format!("the session stopped playing {stream_id}"),
                                );
                                self.deliver(session, Message::Text(error_text(Some(o.seq), &e)));
                            }
                            Command::ClosePlay {
                                session,
                                app,
                                stream_id,
                            }
                        }
                        MediaCommand::SessionGone { session } => {
                            release(&self.store, StoreOp::ReleaseSession { session });
                            self.held_plays.retain(|(s, _), _| *s != session);
                            self.told_available.retain(|(s, _)| *s != session);
                            Command::SessionGone { session }
                        }
                        MediaCommand::Pull { .. }
                        | MediaCommand::PullIdle { .. }
                        | MediaCommand::Unpull { .. }
                        | MediaCommand::PullMoved { .. } => continue,
                    };
                    self.media_command(cmd);
                }
            }
        }
        self.release_held_plays(available);
    }

    /// Holds a play offer of a stream the session plays but that is not published now, until
    /// the session is told it is available: the client may offer with its `play`, without
    /// waiting for the stream (one round trip less when it comes). A newer offer of the same
    /// session and stream replaces the held one, which is refused (1009007, as the media plane
    /// refuses an offer it waited with); stopping the play refuses it (1004002); the session's
    /// end drops it.
    pub(super) fn hold_play_offer(&mut self, offer: Offer) {
        let (session, seq) = (offer.session, offer.seq);
        let key = (session, offer.stream_id.clone());
        debug!(%session, stream = %key.1, seq, "play offer held until the stream is published");
        if let Some(old) = self.held_plays.insert(key, offer) {
            let e = HuddleError::new(ErrorCode::MEDIA_OFFER_INVALID, "replaced by a newer offer");
            self.deliver(session, Message::Text(error_text(Some(old.seq), &e)));
        }
    }

    /// Hands the held play offers of these sessions and streams to the media plane.
    fn release_held_plays(&mut self, available: Vec<(SessionId, StreamId)>) {
        for key in available {
            self.told_available.insert(key.clone());
            let Some(offer) = self.held_plays.remove(&key) else {
                continue;
            };
            let (session, seq) = (offer.session, offer.seq);
            debug!(%session, stream = %key.1, seq, "held play offer: the stream is available");
            if !self.media_command(Command::Offer(offer)) {
                let e = HuddleError::new(
                    ErrorCode::SERVER_BUSY,
                    "the media plane is busy: offer again later",
                );
                self.deliver(session, Message::Text(error_text(Some(seq), &e)));
            }
        }
    }

    /// Queues a pull or its end for the puller; dropped (and logged) when the queue is full or
    /// this node does not pull (no `cluster_secret`).
    fn pull(&self, op: PullOp) {
        match self.pulls.try_send(op) {
            Ok(()) => {}
            Err(TrySendError::Full(op)) => warn!(?op, "the pull queue is full: dropped"),
            Err(TrySendError::Closed(_)) => {}
        }
    }

    /// Sends a command to the media plane (dropped when it does not run). `false`: refused (too
    /// many offers in flight).
    pub(super) fn media_command(&self, cmd: Command) -> bool {
        match &self.media {
            Some(m) => m.send(cmd),
            None => !matches!(cmd, Command::Offer(_)),
        }
    }

    /// Queues `m` for `to` unless its outbound queue is more than half full: then `m` is dropped
    /// (barrage messages, which may be lost under load; the connection stays).
    pub(super) fn deliver_lossy(&mut self, to: SessionId, m: Message) {
        let Some(h) = self.conns.get(&to) else { return };
        if h.tx.capacity() * 2 < h.tx.max_capacity() {
            debug!(session = %to, "outbound queue half full: a barrage message is dropped");
            return;
        }
        self.deliver(to, m);
    }

    pub(super) fn deliver(&mut self, to: SessionId, m: Message) {
        let Some(h) = self.conns.get(&to) else { return };
        match h.tx.try_send(m) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                warn!(session = %to, "outbound queue full: closing the connection (1009005)");
                if let Some(h) = self.conns.remove(&to) {
                    close(&h.ctl, Closing::Now(Some(slow_consumer())));
                }
            }
            Err(TrySendError::Closed(_)) => {
                self.conns.remove(&to);
            }
        }
    }
}

pub(super) fn slow_consumer() -> Utf8Bytes {
    error_text(None, &HuddleError::from(ErrorCode::SLOW_CONSUMER))
}

pub(super) fn msg_type(m: &ServerMsg) -> &'static str {
    match m {
        ServerMsg::Hello { .. } => "hello",
        ServerMsg::LoginOk(_) => "login_ok",
        ServerMsg::Ok { .. } => "ok",
        ServerMsg::Error { .. } => "error",
        ServerMsg::Pong { .. } => "pong",
        ServerMsg::UserUpdate { .. } => "user_update",
        ServerMsg::StreamUpdate { .. } => "stream_update",
        ServerMsg::PlayUpdate { .. } => "play_update",
        ServerMsg::Kicked { .. } => "kicked",
        ServerMsg::MediaAnswer { .. } => "media_answer",
        ServerMsg::MediaState { .. } => "media_state",
        ServerMsg::TokenWillExpire { .. } => "token_will_expire",
        ServerMsg::NetworkQuality { .. } => "network_quality",
        ServerMsg::BroadcastMessage { .. } => "broadcast_message",
        ServerMsg::RemoteDeviceState { .. } => "remote_device_state",
        ServerMsg::MessageSent { .. } => "message_sent",
        ServerMsg::BarrageMessage { .. } => "barrage_message",
        ServerMsg::CustomCommand { .. } => "custom_command",
        ServerMsg::StreamExtraInfoUpdate { .. } => "stream_extra_info_update",
        ServerMsg::RoomExtraInfoUpdate { .. } => "room_extra_info_update",
        ServerMsg::RoomOnlineUserCount { .. } => "room_online_user_count",
    }
}

/// Signals taken from the channel per lock of the hub, at most.
const SIGNAL_BATCH: usize = 64;

/// Delivers the media plane's signals to their sessions (dropped for detached ones) until every
/// sender is gone. Each batch is encoded before the hub lock is taken; under it, only the
/// queueing (`try_send`, never a wait). The shards never touch the hub.
pub(super) async fn deliver_signals(state: ServerState, mut rx: mpsc::Receiver<Signal>) {
    let mut batch = Vec::with_capacity(SIGNAL_BATCH);
    let mut encoded = Vec::with_capacity(SIGNAL_BATCH);
    while rx.recv_many(&mut batch, SIGNAL_BATCH).await > 0 {
        for (to, msg) in batch.drain(..) {
            debug!(session = %to, msg = msg_type(&msg), "media signal");
            if state.relay_signal(to, &msg) {
                continue;
            }
            encoded.push((to, Message::Text(text(&msg))));
        }
        let mut hub = state.0.hub.lock();
        for (to, m) in encoded.drain(..) {
            hub.deliver(to, m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Limits, Registry};

    fn hub() -> Hub {
        Hub {
            registry: Registry::new(Limits::default()),
            conns: HashMap::new(),
            media: None,
            store: mpsc::channel(4).0,
            follows: HashMap::new(),
            follows_changed: Arc::new(Notify::new()),
            pulls: mpsc::channel(4).0,
            timer_wake: Arc::new(Notify::new()),
            webhooks: None,
            recorder: Arc::new(crate::recording::Recorder::new(std::env::temp_dir(), None, [], 1)),
            held_plays: HashMap::new(),
            told_available: HashSet::new(),
        }
    }

    /// A barrage message is dropped for a session whose queue is more than half full; a
    /// reliable message is still queued, and the connection stays.
    #[test]
    fn barrage_messages_are_dropped_for_a_congested_session_only() {
        let mut h = hub();
        let (tx, mut rx) = mpsc::channel(4);
        let id = SessionId::from_raw(7);
        let ctl = Arc::new(watch::channel(Closing::Open).0);
        h.conns.insert(
            id,
            ConnHandle {
                epoch: 1,
                tx,
                ctl: ctl.clone(),
            },
        );
        let m = |s: &str| Message::Text(Utf8Bytes::from(s.to_string()));
        h.deliver_lossy(id, m("b1"));
        h.deliver_lossy(id, m("b2"));
        // Two of four queued: half full, still taken; three: more than half, dropped.
        h.deliver_lossy(id, m("b3"));
        h.deliver_lossy(id, m("b4"));
        h.deliver(id, m("reliable"));
        let mut got = Vec::new();
        while let Ok(Message::Text(t)) = rx.try_recv() {
            got.push(t.as_str().to_string());
        }
        assert_eq!(got, ["b1", "b2", "b3", "reliable"]);
        assert_eq!(*ctl.borrow(), Closing::Open);
        assert!(h.conns.contains_key(&id));
    }
}
