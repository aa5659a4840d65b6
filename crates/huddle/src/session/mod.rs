//! The signaling session of one room, sans IO.
//!
//! [`Session`] owns no socket, thread or clock. The engine feeds it [`Input`]s with the current
//! time (`handle_input`) and then drains [`Session::poll_output`] until it returns
//! [`Output::Timeout`] (call again with [`Input::Timeout`] at that instant, or earlier with any
//! other input) or [`Output::Finished`] (the session is over: drop it). This is the invariant of
//! the driving loop: **after every `handle_input`, drain `poll_output` until `Timeout` or
//! `Finished`**; outputs are queued in the order they must be performed.
//!
//! The session keeps what the app has been told (users, streams, publisher and player states),
//! so that a reconnection reports only the differences.

mod backoff;
#[cfg(test)]
mod conformance;
mod im;
pub(crate) mod quality;
mod stream;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use huddle_proto::{
    AppId, Auth, ClientMsg, DeviceState, ErrorCode, Login, LoginOk, MediaRole, PROTOCOL_VERSION, PeerState,
    Resume, RoomId, ServerMsg, StreamId, StreamInfo, StreamQualityLevel, TrackKind, UpdateType, User, UserId,
};
use huddle_token::AppSign;
use tracing::{debug, warn};

use crate::config::EngineConfig;
use crate::event::{Event, PlayerState, PublisherState, RoomStateChangedReason, extended};
use backoff::Backoff;
pub(crate) use im::ImRequest;
use stream::{MediaLink, Player, Publisher};

use crate::media::MediaUpdate;

/// See [`Timing::retry_fast_window`].
pub(crate) const RETRY_FAST_WINDOW: Duration = Duration::from_secs(30);
/// See [`Timing::retry_fast_window`]: 400 ms, at most 500 ms with the jitter.
pub(crate) const RETRY_FAST_MAX: Duration = Duration::from_millis(400);

/// The timings a session runs by.
#[derive(Debug, Clone)]
pub(crate) struct Timing {
    pub(crate) login_timeout: Duration,
    pub(crate) reconnect_budget: Duration,
    pub(crate) attempt_timeout: Duration,
    pub(crate) retry_delay_min: Duration,
    pub(crate) retry_delay_max: Duration,
    /// For this long after a break, retries are at most [`Timing::retry_fast_max`] apart (with
    /// jitter), so that the end of an outage is noticed within about half a second; later the
    /// backoff goes on up to `retry_delay_max`.
    pub(crate) retry_fast_window: Duration,
    pub(crate) retry_fast_max: Duration,
    pub(crate) token_warning: Duration,
    pub(crate) logout_timeout: Duration,
}

impl From<&EngineConfig> for Timing {
    fn from(c: &EngineConfig) -> Self {
        Timing {
            login_timeout: c.login_timeout,
            reconnect_budget: c.reconnect_budget,
            attempt_timeout: c.attempt_timeout,
            retry_delay_min: c.retry_delay_min,
            retry_delay_max: c.retry_delay_max,
            retry_fast_window: RETRY_FAST_WINDOW,
            retry_fast_max: RETRY_FAST_MAX,
            token_warning: c.token_warning,
            logout_timeout: c.logout_timeout,
        }
    }
}

/// Everything a session needs to log in.
pub(crate) struct SessionParams {
    pub(crate) app_id: AppId,
    pub(crate) app_sign: Option<Arc<AppSign>>,
    pub(crate) room_id: RoomId,
    pub(crate) user: User,
    pub(crate) token: Option<String>,
    pub(crate) user_status_notify: bool,
    pub(crate) max_member_count: u32,
    pub(crate) timing: Timing,
    /// Whether the media plane runs: streams offer media connections, and `Publishing` /
    /// `Playing` wait for media (off in the control-plane tests).
    pub(crate) media: bool,
    /// How many servers the engine knows ([`crate::EngineProfile::fallback_servers`] plus one);
    /// [`Output::Connect`] names one of them by its index.
    pub(crate) servers: usize,
    /// Whether the session reports quality ([`quality`]): on in the engine, off in the tests
    /// of the other rules (they check exact event sequences).
    pub(crate) quality: bool,
}

impl fmt::Debug for SessionParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionParams")
            .field("app_id", &self.app_id)
            .field("room_id", &self.room_id)
            .field("user", &self.user)
            .field("auth", &if self.token.is_some() { "token" } else { "sign" })
            .field("user_status_notify", &self.user_status_notify)
            .field("max_member_count", &self.max_member_count)
            .finish_non_exhaustive()
    }
}

/// What happens to a session.
#[derive(Debug)]
pub(crate) enum Input {
    /// The connection asked for by [`Output::Connect`] is open (WebSocket upgraded).
    Connected,
    /// The connection asked for could not be opened.
    ConnectFailed(String),
    /// The connection asked for could not be opened: the server's TLS certificate is not
    /// trusted. The first login fails at once (1002030), since retrying cannot help; later, while
    /// reconnecting, it counts as any failed attempt (a certificate may be replaced meanwhile).
    CertificateRejected(String),
    /// A message arrived on the current connection.
    Message(ServerMsg),
    /// The current connection closed or broke.
    Closed(String),
    /// The instant of the last [`Output::Timeout`] has come.
    Timeout,
    /// An API call for this room.
    Command(Command),
    /// A media connection of this room reported.
    Media {
        stream_id: StreamId,
        kind: MediaRole,
        update: MediaUpdate,
    },
}

/// An API call for the room, after the API validated it.
pub(crate) enum Command {
    Publish {
        stream_id: StreamId,
        ticket: u64,
    },
    StopPublish,
    Play {
        stream_id: StreamId,
    },
    StopPlay {
        stream_id: StreamId,
    },
    RenewToken {
        token: String,
    },
    /// The publisher's microphone (`Audio`) or camera (`Video`) state, for the stream published
    /// now and the ones published later.
    DeviceState {
        track: TrackKind,
        state: DeviceState,
    },
    /// Stop (`mute`) or resume receiving one track of a played stream.
    MutePlay {
        stream_id: StreamId,
        track: TrackKind,
        mute: bool,
    },
    Logout,
    /// A message or extra info request; its result is reported with `ticket`.
    Im {
        ticket: u64,
        req: ImRequest,
    },
}

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Publish { stream_id, ticket } => write!(f, "Publish({stream_id}, ticket {ticket})"),
            Command::StopPublish => f.write_str("StopPublish"),
            Command::Play { stream_id } => write!(f, "Play({stream_id})"),
            Command::StopPlay { stream_id } => write!(f, "StopPlay({stream_id})"),
            Command::RenewToken { .. } => f.write_str("RenewToken(<redacted>)"),
            Command::DeviceState { track, state } => write!(f, "DeviceState({track:?}, {state:?})"),
            Command::MutePlay {
                stream_id,
                track,
                mute,
            } => write!(f, "MutePlay({stream_id}, {track:?}, {mute})"),
            Command::Logout => f.write_str("Logout"),
            Command::Im { ticket, req } => write!(f, "Im({ticket}, {req:?})"),
        }
    }
}

/// What the session wants done, in order.
#[derive(Debug)]
pub(crate) enum Output {
    /// Close the current connection, if any, and open a new one to the server of this index
    /// (0: [`crate::EngineProfile::server`], then the fallbacks in order).
    Connect { server: usize },
    /// Send a message on the current connection.
    Send(ClientMsg),
    /// Close the current connection.
    Close,
    /// The API's record of the room or of the publisher is no longer valid: clear it (before
    /// delivering the events after this, so that a handler may log in or publish again).
    Release(Release),
    /// Deliver an event to the app.
    Event(Event),
    /// Open a media connection for the stream (replacing any of the same stream and kind) and
    /// send its offer as `media_offer` with this `seq`.
    MediaOpen {
        seq: u32,
        stream_id: StreamId,
        kind: MediaRole,
    },
    /// Hand the server's answer to the stream's media connection.
    MediaAnswer {
        stream_id: StreamId,
        kind: MediaRole,
        sdp: String,
    },
    /// Close the stream's media connection.
    MediaClose { stream_id: StreamId, kind: MediaRole },
    /// Nothing more to do before this instant (`None`: until the next input).
    Timeout(Option<Instant>),
    /// The session is over.
    Finished,
}

/// See [`Output::Release`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Release {
    /// The room (and its publisher) ended.
    Room,
    /// The publisher started by this ticket ended.
    Publisher { ticket: u64 },
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    /// The first login, retrying connections until `deadline`.
    Login { deadline: Instant },
    /// Logged in.
    Online,
    /// The connection broke; retrying until `deadline`.
    Reconnecting { deadline: Instant },
    /// `logout` sent; waiting for the answer until `deadline`.
    LoggingOut { deadline: Instant },
    /// Over.
    Done,
}

#[derive(Debug, Clone, Copy)]
enum Link {
    /// No connection; the next attempt at `retry_at`.
    Down { retry_at: Option<Instant> },
    /// An attempt in progress, given up at `deadline`: [`Timing::attempt_timeout`] after its
    /// last step forward (started, WebSocket open, `hello`). A connection that has got further
    /// is not dropped for a new one, which would have to repeat every step on a fresh TCP
    /// connection (at 30 % loss per link a login answer once came 0.15 s after its connection
    /// was given up 5 s into the attempt: docs/quality.md, "Interop under loss").
    Opening { deadline: Instant, step: Step },
    /// Logged in on this connection.
    Ready { next_ping: Instant, last_rx: Instant },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// TCP and WebSocket.
    Transport,
    /// Waiting for `hello`.
    Hello,
    /// `login` sent with this seq.
    Login { seq: u32 },
}

/// A renewed token waiting for the server's answer (adopted when accepted); `Debug` does not
/// print it.
struct SecretToken(String);

impl fmt::Debug for SecretToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// What a request in flight was.
#[derive(Debug)]
enum Pending {
    Publish {
        ticket: u64,
    },
    Unpublish,
    Play {
        stream_id: StreamId,
    },
    StopPlay,
    RenewToken(SecretToken),
    Ping,
    Logout,
    MediaOffer {
        stream_id: StreamId,
        kind: MediaRole,
    },
    /// A `network_quality` report sent at this instant (its answer measures the round trip).
    Quality {
        sent: Instant,
    },
    /// A `set_device_state` or `mute_play` (a refusal is reported as a debug error).
    Mute {
        func_name: &'static str,
    },
    /// A message or extra info request of the API's `ticket`.
    Im {
        ticket: u64,
        kind: im::ImKind,
    },
}

/// The signaling session of one room. See the module docs for the driving loop.
pub(crate) struct Session {
    p: SessionParams,
    phase: Phase,
    link: Link,
    backoff: Backoff,
    /// When the current break began (while reconnecting).
    broke_at: Option<Instant>,
    /// A transport connection opened at least once during the first login (selects 1002031
    /// over 1002030 when the login times out).
    ever_connected: bool,
    /// Why the last connection attempt failed, for the message of a first login that never
    /// connected.
    last_failure: Option<String>,
    /// The server that connections go to: the same one while it answers; the next one in the
    /// list after an attempt that failed or was refused as busy or shutting down.
    server: usize,
    next_seq: u32,
    pending: HashMap<u32, Pending>,
    /// From the last `login_ok`: how to resume after a break.
    resume: Option<Resume>,
    heartbeat: Duration,
    session_timeout: Duration,
    /// The other users the app has been told about (only with user status notify).
    users: BTreeMap<UserId, User>,
    /// The streams the app has been told about.
    streams: BTreeMap<StreamId, StreamInfo>,
    publisher: Option<Publisher>,
    /// The publisher's microphone and camera states (`[audio, video]`), sent with every publish.
    devices: [DeviceState; 2],
    players: BTreeMap<StreamId, Player>,
    /// Stopped while the connection was down: to unpublish / stop playing if the server session
    /// is resumed (a fresh session has forgotten them anyway).
    unpublish_later: BTreeSet<StreamId>,
    stop_play_later: BTreeSet<StreamId>,
    /// When to fire `on_room_token_will_expire`, and the token's expiry (Unix seconds).
    token_warn_at: Option<Instant>,
    token_expire: Option<i64>,
    /// `on_room_token_will_expire` was fired for the current token (by the local timer or the
    /// server's `token_will_expire`, whichever came first).
    token_warned: bool,
    /// An instant and the Unix time (ms) at that instant, to convert expiry times: the local
    /// clock at first, the server's from its `hello` on.
    clock_base: (Instant, i64),
    /// The reason the server gave (`error` without `seq`) before it closes the connection.
    close_reason: Option<String>,
    /// Stream and network quality.
    quality: quality::Monitor,
    /// The published stream's extra info (`set_stream_extra_info`), sent with every publish.
    stream_extra_info: String,
    out: VecDeque<Output>,
}

impl Session {
    /// A session that starts logging in at once (`Logining`, then [`Output::Connect`]).
    ///
    /// `unix_ms` is the wall-clock time at `now`; `seed` seeds the retry jitter.
    pub(crate) fn new(p: SessionParams, now: Instant, unix_ms: i64, seed: u64) -> Session {
        let backoff = Backoff::new(p.timing.retry_delay_min, p.timing.retry_delay_max, seed);
        let deadline = now + p.timing.login_timeout;
        let mut s = Session {
            p,
            phase: Phase::Login { deadline },
            link: Link::Down { retry_at: None },
            backoff,
            broke_at: None,
            ever_connected: false,
            last_failure: None,
            server: 0,
            next_seq: 1,
            pending: HashMap::new(),
            resume: None,
            heartbeat: Duration::from_secs(5),
            session_timeout: Duration::from_secs(15),
            users: BTreeMap::new(),
            streams: BTreeMap::new(),
            publisher: None,
            devices: [DeviceState::Open; 2],
            players: BTreeMap::new(),
            unpublish_later: BTreeSet::new(),
            stop_play_later: BTreeSet::new(),
            token_warn_at: None,
            token_expire: None,
            token_warned: false,
            clock_base: (now, unix_ms),
            close_reason: None,
            quality: quality::Monitor::new(),
            stream_extra_info: String::new(),
            out: VecDeque::new(),
        };
        s.arm_token();
        s.room_event(RoomStateChangedReason::Logining, ErrorCode::OK, "");
        // The first attempt consumes the backoff's immediate retry: a failed first connection
        // waits the minimum delay before the next one.
        let _ = s.backoff.next_delay();
        s.start_attempt(now);
        s
    }

    /// The room.
    pub(crate) fn room_id(&self) -> &RoomId {
        &self.p.room_id
    }

    /// Feeds one input. Drain [`Self::poll_output`] afterwards.
    pub(crate) fn handle_input(&mut self, input: Input, now: Instant) {
        match input {
            Input::Connected => {
                if let Link::Opening {
                    step: step @ Step::Transport,
                    deadline,
                } = &mut self.link
                {
                    *step = Step::Hello;
                    *deadline = now + self.p.timing.attempt_timeout;
                    self.ever_connected = true;
                }
            }
            Input::ConnectFailed(why) => {
                debug!(room = %self.p.room_id, %why, "signaling connection failed");
                self.next_server();
                self.link_down(now, &why);
                self.last_failure = Some(why);
            }
            Input::CertificateRejected(why) => {
                debug!(room = %self.p.room_id, %why, "signaling connection refused");
                if matches!(self.phase, Phase::Login { .. }) && !self.ever_connected {
                    self.leave(
                        RoomStateChangedReason::LoginFailed,
                        ErrorCode::CONNECT_FAILED,
                        &why,
                    );
                    self.finish();
                    return;
                }
                self.next_server();
                self.link_down(now, &why);
                self.last_failure = Some(why);
            }
            Input::Closed(why) => {
                let why = self.close_reason.take().unwrap_or(why);
                debug!(room = %self.p.room_id, %why, "signaling connection down");
                self.link_down(now, &why);
            }
            Input::Message(msg) => self.on_message(msg, now),
            Input::Timeout => self.on_timeout(now),
            Input::Command(cmd) => self.on_command(cmd, now),
            Input::Media {
                stream_id,
                kind,
                update,
            } => self.on_media(stream_id, kind, update, now),
        }
    }

    /// The next thing to do. See the module docs.
    #[must_use]
    pub(crate) fn poll_output(&mut self) -> Output {
        if let Some(o) = self.out.pop_front() {
            return o;
        }
        if matches!(self.phase, Phase::Done) {
            return Output::Finished;
        }
        Output::Timeout(self.next_timeout())
    }

    // ----- inputs -----

    fn on_message(&mut self, msg: ServerMsg, now: Instant) {
        if let Link::Ready { last_rx, .. } = &mut self.link {
            *last_rx = now;
        }
        let back = self.quality.arrived(now, now);
        self.own_quality(back, now);
        match msg {
            ServerMsg::Hello {
                protocol,
                nonce,
                server_time_ms,
            } => {
                self.close_reason = None;
                // The server's clock decides when a token expires: the warning is timed by it.
                if let Ok(server_ms) = i64::try_from(server_time_ms)
                    && server_ms > 0
                {
                    self.clock_base = (now, server_ms);
                    if let Some(expire) = self.token_expire
                        && !self.token_warned
                    {
                        self.arm_expiry(expire);
                    }
                }
                if protocol != PROTOCOL_VERSION {
                    warn!(
                        protocol,
                        ours = PROTOCOL_VERSION,
                        "the server speaks another protocol version"
                    );
                }
                if let Link::Opening {
                    step: Step::Transport | Step::Hello,
                    deadline,
                } = &mut self.link
                {
                    *deadline = now + self.p.timing.attempt_timeout;
                    self.ever_connected = true;
                    self.send_login(&nonce);
                }
            }
            ServerMsg::LoginOk(ok) => {
                if let Link::Opening {
                    step: Step::Login { seq },
                    ..
                } = self.link
                    && ok.seq == seq
                {
                    self.on_login_ok(ok, now);
                }
            }
            ServerMsg::Ok { seq } => self.on_ok(seq, now),
            ServerMsg::Error {
                seq: Some(seq),
                code,
                message,
            } => self.on_error(seq, code, &message, now),
            ServerMsg::Error {
                seq: None,
                code,
                message,
            } => {
                if code == ErrorCode::SERVER_SHUTTING_DOWN
                    && self.p.servers > 1
                    && matches!(self.phase, Phase::Online)
                    && matches!(self.link, Link::Ready { .. })
                {
                    // A node of a cluster drains: move to the next server now, while this one
                    // still holds the session (the new login there ends it).
                    debug!(room = %self.p.room_id, %message, "the server asks to move");
                    self.out.push_back(Output::Close);
                    self.next_server();
                    self.link_down(now, &message);
                    return;
                }
                // The server closes the connection after this; the close drives what follows,
                // and says this reason (as huddle.js does; conformance vector
                // `server_error_then_close`).
                debug!(room = %self.p.room_id, ?code, %message, "server error before closing");
                self.close_reason = Some(format!("{}: {message}", code.0));
                self.event(Event::DebugError {
                    error_code: code,
                    func_name: "signaling".into(),
                    info: message,
                });
            }
            ServerMsg::Pong { seq, .. } => {
                self.pending.remove(&seq);
            }
            ServerMsg::UserUpdate {
                room_id,
                update_type,
                users,
            } => {
                if room_id == self.p.room_id && self.is_online() && self.p.user_status_notify {
                    self.apply_user_update(update_type, users);
                }
            }
            ServerMsg::StreamUpdate {
                room_id,
                update_type,
                streams,
            } => {
                if room_id == self.p.room_id && self.is_online() {
                    self.apply_stream_update(update_type, streams);
                }
            }
            ServerMsg::PlayUpdate { stream_id, available } => {
                if !self.is_online() {
                    return;
                }
                if let Some(p) = self.players.get_mut(&stream_id) {
                    let was = p.available;
                    p.available = available;
                    let muted = p.muted;
                    if available {
                        // A stream that comes back may be placed on another of the server's
                        // media cores than before: its mutes go again, ahead of the offer.
                        for (track, mute) in [(TrackKind::Audio, muted[0]), (TrackKind::Video, muted[1])] {
                            if mute && !was {
                                self.send_mute_play(stream_id.clone(), track, true);
                            }
                        }
                        self.open_play_media(&stream_id);
                    } else {
                        // An offer not answered yet stays: the server holds it until the stream
                        // is published (again). A connection the stream had is over.
                        if !self.offer_in_flight(self.players.get(&stream_id).map(|p| p.media)) {
                            self.close_play_media(&stream_id);
                        }
                        self.quality.stop_playing(&stream_id);
                    }
                    self.refresh_player(&stream_id, ErrorCode::OK, "");
                }
            }
            ServerMsg::RemoteDeviceState {
                stream_id,
                track,
                state,
            } => {
                // Reported for the streams this engine plays, as the hosted SDKs do.
                if self.is_online() && self.players.contains_key(&stream_id) {
                    self.event(match track {
                        TrackKind::Audio => Event::RemoteMicStateUpdate { stream_id, state },
                        TrackKind::Video => Event::RemoteCameraStateUpdate { stream_id, state },
                    });
                }
            }
            ServerMsg::TokenWillExpire { expire, remain_secs } => {
                // The server's clock decides the expiry; its warning stands in for the local
                // timer when it comes first (a client clock behind the server's). A warning for
                // a token already replaced is stale.
                if self.is_online() && !self.token_warned && self.token_expire.is_none_or(|e| e == expire) {
                    self.token_warn_at = None;
                    self.token_warned = true;
                    self.event(Event::RoomTokenWillExpire {
                        room_id: self.p.room_id.clone(),
                        remain_secs: remain_secs.max(0),
                    });
                }
            }
            ServerMsg::NetworkQuality {
                user_id,
                upstream,
                downstream,
            } => {
                if self.p.quality && self.is_online() && user_id != self.p.user.user_id {
                    self.quality.remote_report(user_id, upstream, downstream, now);
                }
            }
            ServerMsg::BroadcastMessage { .. }
            | ServerMsg::MessageSent { .. }
            | ServerMsg::BarrageMessage { .. }
            | ServerMsg::CustomCommand { .. }
            | ServerMsg::StreamExtraInfoUpdate { .. }
            | ServerMsg::RoomExtraInfoUpdate { .. }
            | ServerMsg::RoomOnlineUserCount { .. } => {
                self.im_message(&msg);
            }
            ServerMsg::Kicked { code, message } => {
                if matches!(self.phase, Phase::Done | Phase::LoggingOut { .. }) {
                    return;
                }
                self.leave(RoomStateChangedReason::KickOut, code, &message);
                self.finish();
            }
            ServerMsg::MediaAnswer {
                seq,
                stream_id,
                kind,
                sdp,
            } => {
                if let Some(Pending::MediaOffer { .. }) = self.pending.remove(&seq) {
                    self.on_media_answer(seq, stream_id, kind, sdp);
                }
            }
            ServerMsg::MediaState {
                stream_id,
                kind,
                state,
                code,
                message,
            } => {
                if self.is_online() {
                    self.on_media_state(stream_id, kind, state, code, &message, now);
                }
            }
            #[allow(unreachable_patterns)]
            other => debug!(room = %self.p.room_id, ?other, "message not handled"),
        }
    }

    fn on_login_ok(&mut self, ok: LoginOk, now: Instant) {
        let first = matches!(self.phase, Phase::Login { .. });
        let resumed = ok.resumed && !first;
        self.heartbeat = Duration::from_millis(u64::from(ok.heartbeat_ms.max(100)));
        self.session_timeout = Duration::from_millis(u64::from(
            ok.session_timeout_ms.max(ok.heartbeat_ms.saturating_mul(2)),
        ));
        self.link = Link::Ready {
            next_ping: now + self.heartbeat,
            last_rx: now,
        };
        self.resume = Some(Resume {
            session_id: ok.session_id,
            resume_key: ok.resume_key,
        });
        self.backoff.reset();
        self.phase = Phase::Online;
        if self.token_expire.is_none()
            && self.p.token.is_some()
            && let Some(expire) = ok.token_expire
        {
            self.arm_expiry(expire);
        }

        let reason = if first {
            RoomStateChangedReason::Logined
        } else {
            RoomStateChangedReason::Reconnected
        };
        self.room_event(reason, ErrorCode::OK, "");
        self.sync_lists(ok.users, ok.streams);

        if resumed {
            // The server session is the one we had: finish what was stopped during the break.
            for stream_id in std::mem::take(&mut self.unpublish_later) {
                let seq = self.request(Pending::Unpublish);
                self.send(ClientMsg::Unpublish { seq, stream_id });
            }
            for stream_id in std::mem::take(&mut self.stop_play_later) {
                let seq = self.request(Pending::StopPlay);
                self.send(ClientMsg::StopPlay { seq, stream_id });
            }
        } else {
            // A fresh server session knows nothing of ours: publish and play again.
            self.unpublish_later.clear();
            self.stop_play_later.clear();
            let budget = self.p.timing.reconnect_budget;
            if let Some(p) = &mut self.publisher {
                // Published before the break: the stream ID may still be held by the old
                // session (on a node not yet known dead, or not yet told of this login).
                if !first && (p.registered || p.requested) {
                    p.reclaim_until = Some(now + budget);
                    p.reclaims = 0;
                }
                p.registered = false;
                p.requested = false;
            }
            self.close_publish_media();
            let ids: Vec<StreamId> = self.players.keys().cloned().collect();
            for id in ids {
                self.close_play_media(&id);
                if let Some(p) = self.players.get_mut(&id) {
                    p.requested = false;
                    p.available = false;
                }
            }
        }
        match &self.publisher {
            Some(p) if p.registered => {
                // An offer in flight when the connection broke was lost with it.
                self.open_publish_media();
                self.refresh_publisher(ErrorCode::OK, "");
            }
            Some(_) => {
                if let Some(p) = &mut self.publisher {
                    p.reclaim_at = None;
                }
                self.send_publish()
            }
            None => {}
        }
        // Play again even on a resumed session: the answer tells the availability now, which
        // may have changed during the break.
        let ids: Vec<StreamId> = self.players.keys().cloned().collect();
        for stream_id in ids {
            self.send_play(stream_id);
        }
    }

    fn on_ok(&mut self, seq: u32, now: Instant) {
        match self.pending.remove(&seq) {
            Some(Pending::Quality { sent }) => self.quality.answered(now.saturating_duration_since(sent)),
            Some(Pending::Publish { ticket }) => {
                if let Some(p) = &mut self.publisher
                    && p.ticket == ticket
                {
                    p.registered = true;
                    p.reclaim_until = None;
                    p.reclaim_at = None;
                    self.open_publish_media();
                    self.refresh_publisher(ErrorCode::OK, "");
                }
            }
            Some(Pending::Logout) => self.finish(),
            Some(Pending::RenewToken(token)) => self.adopt_token(token.0),
            Some(Pending::Im { ticket, kind }) => self.im_result(kind, ticket, ErrorCode::OK, 0),
            _ => {}
        }
    }

    fn on_error(&mut self, seq: u32, code: ErrorCode, message: &str, now: Instant) {
        if let Link::Opening {
            step: Step::Login { seq: login_seq },
            ..
        } = self.link
            && seq == login_seq
        {
            match self.phase {
                Phase::Login { .. } if retriable(code) && self.p.servers > 1 => {
                    // This server is busy or shutting down; another may take the login (within
                    // the login timeout).
                    self.out.push_back(Output::Close);
                    self.next_server();
                    self.link_down(now, message);
                    self.last_failure = Some(message.to_string());
                }
                Phase::Login { .. } => {
                    self.leave(RoomStateChangedReason::LoginFailed, code, message);
                    self.finish();
                }
                Phase::Reconnecting { .. } if retriable(code) => {
                    // The server is reachable but busy: the usual backoff, not the quick retries
                    // that watch for the end of an outage.
                    self.broke_at = None;
                    self.out.push_back(Output::Close);
                    self.next_server();
                    self.link_down(now, message);
                }
                Phase::Reconnecting { .. } => {
                    self.leave(RoomStateChangedReason::ReconnectFailed, code, message);
                    self.finish();
                }
                _ => {}
            }
            return;
        }
        match self.pending.remove(&seq) {
            Some(Pending::Publish { ticket }) => {
                if let Some(p) = &mut self.publisher
                    && p.ticket == ticket
                    && code == ErrorCode::STREAM_ID_EXISTS
                    && p.reclaim_until.is_some_and(|until| now < until)
                {
                    // Most likely our own old session's claim: it ends with its node's lease,
                    // or when the old node sees this login. Ask again.
                    let at = now + p.next_reclaim_delay();
                    p.reclaim_at = Some(at);
                    p.requested = false;
                    debug!(room = %self.p.room_id, stream = %p.stream_id, "stream ID still held: publishing again soon");
                    // The offer sent with the publish is refused too; the next publish brings
                    // its own.
                    self.close_publish_media();
                    self.refresh_publisher(code, message);
                    return;
                }
                if self.publisher.as_ref().is_some_and(|p| p.ticket == ticket) {
                    self.close_publish_media();
                    let p = self.publisher.take().expect("checked");
                    self.out.push_back(Output::Release(Release::Publisher { ticket }));
                    self.publisher_event(p.stream_id, PublisherState::NoPublish, code, message);
                }
            }
            Some(Pending::Play { stream_id }) => {
                if self.players.remove(&stream_id).is_some() {
                    self.player_event(stream_id, PlayerState::NoPlay, code, message);
                }
            }
            Some(Pending::RenewToken(_)) => {
                self.event(Event::DebugError {
                    error_code: code,
                    func_name: "renew_token".into(),
                    info: message.to_string(),
                });
            }
            Some(Pending::Logout) => self.finish(),
            Some(Pending::Mute { func_name }) => {
                self.event(Event::DebugError {
                    error_code: code,
                    func_name: func_name.into(),
                    info: message.to_string(),
                });
            }
            Some(Pending::MediaOffer { stream_id, kind }) => {
                self.on_media_refused(seq, stream_id, kind, code, message, now)
            }
            Some(Pending::Im { ticket, kind }) => self.im_result(kind, ticket, code, 0),
            Some(other) => debug!(room = %self.p.room_id, ?other, ?code, message, "request refused"),
            None => debug!(room = %self.p.room_id, seq, ?code, message, "error for an unknown request"),
        }
    }

    fn on_timeout(&mut self, now: Instant) {
        match self.phase {
            Phase::Login { deadline } if now >= deadline => {
                let (code, why) = if self.ever_connected {
                    (
                        ErrorCode::LOGIN_TIMEOUT,
                        "the server did not answer the login in time",
                    )
                } else {
                    (ErrorCode::CONNECT_FAILED, "could not connect to the server")
                };
                let why = match (&self.last_failure, code) {
                    (Some(last), ErrorCode::CONNECT_FAILED) => format!("{why}: {last}"),
                    _ => why.to_string(),
                };
                self.leave(RoomStateChangedReason::LoginFailed, code, &why);
                self.finish();
                return;
            }
            Phase::Reconnecting { deadline } if now >= deadline => {
                self.leave(
                    RoomStateChangedReason::ReconnectFailed,
                    ErrorCode::RETRY_TIMEOUT,
                    "could not reconnect within the retry budget",
                );
                self.finish();
                return;
            }
            Phase::LoggingOut { deadline } if now >= deadline => {
                self.finish();
                return;
            }
            Phase::Done => return,
            _ => {}
        }
        match self.link {
            Link::Down { retry_at: Some(at) } if now >= at => self.start_attempt(now),
            Link::Opening { deadline, .. } if now >= deadline => {
                self.out.push_back(Output::Close);
                self.next_server();
                self.link_down(now, "the connection attempt timed out");
            }
            Link::Ready { next_ping, last_rx } if self.is_online() => {
                if now >= last_rx + self.session_timeout {
                    self.out.push_back(Output::Close);
                    self.link_down(now, "nothing heard from the server");
                } else if now >= next_ping {
                    let seq = self.request(Pending::Ping);
                    self.send(ClientMsg::Ping { seq });
                    self.link = Link::Ready {
                        next_ping: now + self.heartbeat,
                        last_rx,
                    };
                }
            }
            _ => {}
        }
        if self.publisher.as_mut().is_some_and(|p| p.retry.due(now)) {
            self.open_publish_media();
        }
        if self.is_ready()
            && let Some(p) = &mut self.publisher
            && p.reclaim_at.is_some_and(|at| now >= at)
        {
            p.reclaim_at = None;
            self.send_publish();
        }
        let due: Vec<StreamId> = self
            .players
            .iter_mut()
            .filter_map(|(id, p)| p.retry.due(now).then(|| id.clone()))
            .collect();
        for id in due {
            self.open_play_media(&id);
        }
        self.poll_quality(now);
        if let Some(at) = self.token_warn_at
            && now >= at
            && self.token_warning_allowed()
        {
            self.token_warn_at = None;
            self.token_warned = true;
            let remain_ms = self.token_expire.unwrap_or_default() * 1000 - self.unix_ms_at(now);
            self.event(Event::RoomTokenWillExpire {
                room_id: self.p.room_id.clone(),
                remain_secs: remain_ms.div_euclid(1000).max(0),
            });
        }
    }

    fn on_command(&mut self, cmd: Command, now: Instant) {
        if matches!(self.phase, Phase::Done | Phase::LoggingOut { .. }) {
            return;
        }
        match cmd {
            Command::Publish { stream_id, ticket } => {
                if let Some(p) = &mut self.publisher {
                    if p.stream_id == stream_id {
                        // Idempotent; the API's record now carries the newer ticket.
                        p.ticket = ticket;
                        return;
                    }
                    self.stop_publish();
                }
                self.unpublish_later.remove(&stream_id);
                self.publisher = Some(Publisher::new(stream_id, ticket, self.p.media));
                self.refresh_publisher(ErrorCode::OK, "");
                if self.is_ready() {
                    self.send_publish();
                }
            }
            Command::StopPublish => self.stop_publish(),
            Command::Play { stream_id } => {
                if self.players.contains_key(&stream_id) {
                    return;
                }
                self.stop_play_later.remove(&stream_id);
                self.players.insert(stream_id.clone(), Player::new(self.p.media));
                self.refresh_player(&stream_id, ErrorCode::OK, "");
                if self.is_ready() {
                    self.send_play(stream_id);
                }
            }
            Command::StopPlay { stream_id } => {
                self.close_play_media(&stream_id);
                self.quality.stop_playing(&stream_id);
                if let Some(p) = self.players.remove(&stream_id) {
                    if self.is_ready() {
                        let seq = self.request(Pending::StopPlay);
                        self.send(ClientMsg::StopPlay {
                            seq,
                            stream_id: stream_id.clone(),
                        });
                    } else if p.requested {
                        self.stop_play_later.insert(stream_id.clone());
                    }
                    self.player_event(stream_id, PlayerState::NoPlay, ErrorCode::OK, "");
                }
            }
            Command::RenewToken { token } => {
                if self.is_ready() {
                    // Adopted when the server accepts it: a refused token must not replace the
                    // one in force (nor be used for the next login).
                    let seq = self.request(Pending::RenewToken(SecretToken(token.clone())));
                    self.send(ClientMsg::RenewToken { seq, token });
                } else {
                    // The next login uses it, and checks it.
                    self.adopt_token(token);
                }
            }
            Command::DeviceState { track, state } => {
                let slot = &mut self.devices[usize::from(track == TrackKind::Video)];
                if *slot == state {
                    return;
                }
                *slot = state;
                if self.is_ready()
                    && let Some(p) = &self.publisher
                    && (p.registered || p.requested)
                {
                    let stream_id = p.stream_id.clone();
                    self.send_device_state(stream_id, track, state);
                }
            }
            Command::MutePlay {
                stream_id,
                track,
                mute,
            } => {
                let ready = self.is_ready();
                let Some(p) = self.players.get_mut(&stream_id) else {
                    return;
                };
                let slot = &mut p.muted[usize::from(track == TrackKind::Video)];
                if *slot == mute {
                    return;
                }
                *slot = mute;
                if ready && p.requested {
                    self.send_mute_play(stream_id, track, mute);
                }
            }
            Command::Im { ticket, req } => self.im_request(ticket, req),
            Command::Logout => {
                let ready = self.is_ready();
                self.leave(RoomStateChangedReason::Logout, ErrorCode::OK, "");
                if ready {
                    let seq = self.request(Pending::Logout);
                    self.send(ClientMsg::Logout { seq });
                    self.phase = Phase::LoggingOut {
                        deadline: now + self.p.timing.logout_timeout,
                    };
                } else {
                    self.finish();
                }
            }
        }
    }

    // ----- connection -----

    fn start_attempt(&mut self, now: Instant) {
        self.link = Link::Opening {
            deadline: now + self.p.timing.attempt_timeout,
            step: Step::Transport,
        };
        self.out.push_back(Output::Connect { server: self.server });
    }

    /// The current server failed an attempt: the next attempt goes to the next one (with one
    /// server, the same). A connection that was up and broke is retried on the same server
    /// first: a short network break is the usual cause, and the server may still hold the
    /// session for a resume.
    fn next_server(&mut self) {
        self.server = (self.server + 1) % self.p.servers.max(1);
    }

    /// The current connection is gone (closed, failed or given up).
    fn link_down(&mut self, now: Instant, why: &str) {
        // A renewal whose answer was lost may have been accepted: the next login uses (and
        // checks) the newer token.
        let mut renewal = None;
        let mut lost = Vec::new();
        for (_, p) in self.pending.drain() {
            match p {
                Pending::RenewToken(t) => renewal = Some(t.0),
                Pending::Im { ticket, kind } => lost.push((ticket, kind)),
                _ => {}
            }
        }
        lost.sort_unstable_by_key(|(ticket, _)| *ticket);
        self.im_unanswered(lost);
        if let Some(token) = renewal {
            self.adopt_token(token);
        }
        match self.phase {
            Phase::Done => {}
            Phase::LoggingOut { .. } => self.finish(),
            Phase::Online => self.begin_reconnect(now, why),
            Phase::Login { .. } | Phase::Reconnecting { .. } => self.schedule_attempt(now),
        }
    }

    fn begin_reconnect(&mut self, now: Instant, why: &str) {
        self.phase = Phase::Reconnecting {
            deadline: now + self.p.timing.reconnect_budget,
        };
        self.link = Link::Down { retry_at: None };
        self.broke_at = Some(now);
        self.room_event(
            RoomStateChangedReason::Reconnecting,
            ErrorCode::TEMPORARY_BREAK,
            why,
        );
        self.refresh_publisher(ErrorCode::PUBLISH_TEMPORARY_BREAK, why);
        let ids: Vec<StreamId> = self.players.keys().cloned().collect();
        for id in ids {
            self.refresh_player(&id, ErrorCode::PLAY_TEMPORARY_BREAK, why);
        }
        self.schedule_attempt(now);
    }

    /// The next connection attempt: now, or after the backoff delay (at most
    /// `retry_fast_max` early in a break).
    fn schedule_attempt(&mut self, now: Instant) {
        let t = &self.p.timing;
        let delay = match (self.phase, self.broke_at) {
            (Phase::Reconnecting { .. }, Some(broke)) if now < broke + t.retry_fast_window => {
                self.backoff.next_delay_within(t.retry_fast_max)
            }
            _ => self.backoff.next_delay(),
        };
        if delay.is_zero() {
            self.start_attempt(now);
        } else {
            self.link = Link::Down {
                retry_at: Some(now + delay),
            };
        }
    }

    fn send_login(&mut self, nonce: &str) {
        let auth = if let Some(token) = &self.p.token {
            Auth::Token(token.clone())
        } else if let Some(sign) = &self.p.app_sign {
            Auth::Sign(huddle_token::sign_challenge(
                sign,
                self.p.app_id.get(),
                self.p.room_id.as_str(),
                self.p.user.user_id.as_str(),
                nonce,
            ))
        } else {
            // The API refuses such a login; never send one without auth.
            let reason = match self.phase {
                Phase::Login { .. } => RoomStateChangedReason::LoginFailed,
                _ => RoomStateChangedReason::ReconnectFailed,
            };
            self.leave(
                reason,
                ErrorCode::AUTHENTICATION_FAILED,
                "no AppSign and no token",
            );
            self.finish();
            return;
        };
        let seq = self.alloc_seq();
        let resume = match self.phase {
            Phase::Reconnecting { .. } => self.resume.clone(),
            _ => None,
        };
        self.send(ClientMsg::Login(Login {
            seq,
            protocol: PROTOCOL_VERSION,
            app_id: self.p.app_id,
            room_id: self.p.room_id.clone(),
            user: self.p.user.clone(),
            auth,
            user_status_notify: self.p.user_status_notify,
            max_member_count: self.p.max_member_count,
            resume,
            // Its str0m starts ICE on the answer whichever DTLS role it gives (vendor patch 0006).
            setup_active: true,
        }));
        if let Link::Opening { step, .. } = &mut self.link {
            *step = Step::Login { seq };
        }
    }

    // ----- streams -----

    fn send_publish(&mut self) {
        let Some(p) = &self.publisher else { return };
        let (stream_id, ticket) = (p.stream_id.clone(), p.ticket);
        let seq = self.request(Pending::Publish { ticket });
        self.send(ClientMsg::Publish {
            seq,
            stream_id: stream_id.clone(),
            extra_info: self.stream_extra_info.clone(),
        });
        if let Some(p) = &mut self.publisher {
            p.requested = true;
        }
        // The server handles requests in order: the states follow the publish they belong to.
        for (track, state) in [
            (TrackKind::Audio, self.devices[0]),
            (TrackKind::Video, self.devices[1]),
        ] {
            if state != DeviceState::Open {
                self.send_device_state(stream_id.clone(), track, state);
            }
        }
        // The media offer follows at once, without waiting for the `ok`: the server handles a
        // connection's requests in order, so the offer is checked once the publish is decided
        // (and refused with the publish's own error if it was refused).
        self.open_publish_media();
    }

    fn send_device_state(&mut self, stream_id: StreamId, track: TrackKind, state: DeviceState) {
        let seq = self.request(Pending::Mute {
            func_name: "set_device_state",
        });
        self.send(ClientMsg::SetDeviceState {
            seq,
            stream_id,
            track,
            state,
        });
    }

    fn send_mute_play(&mut self, stream_id: StreamId, track: TrackKind, mute: bool) {
        let seq = self.request(Pending::Mute {
            func_name: "mute_play",
        });
        self.send(ClientMsg::MutePlay {
            seq,
            stream_id,
            track,
            mute,
        });
    }

    fn send_play(&mut self, stream_id: StreamId) {
        let seq = self.request(Pending::Play {
            stream_id: stream_id.clone(),
        });
        let muted = match self.players.get_mut(&stream_id) {
            Some(p) => {
                p.requested = true;
                p.muted
            }
            None => [false; 2],
        };
        self.send(ClientMsg::Play {
            seq,
            stream_id: stream_id.clone(),
        });
        // A new server session has forgotten the mutes; the play comes first (in order).
        for (track, mute) in [(TrackKind::Audio, muted[0]), (TrackKind::Video, muted[1])] {
            if mute {
                self.send_mute_play(stream_id.clone(), track, true);
            }
        }
        // The media offer follows at once, also for a stream not published yet: the server
        // holds it until the stream is there and its publisher's media is negotiated.
        self.open_play_media(&stream_id);
    }

    fn stop_publish(&mut self) {
        self.close_publish_media();
        self.quality.stop_publishing();
        let Some(p) = self.publisher.take() else { return };
        if p.registered || p.requested {
            if self.is_ready() {
                let seq = self.request(Pending::Unpublish);
                self.send(ClientMsg::Unpublish {
                    seq,
                    stream_id: p.stream_id.clone(),
                });
            } else {
                self.unpublish_later.insert(p.stream_id.clone());
            }
        }
        self.publisher_event(p.stream_id, PublisherState::NoPublish, ErrorCode::OK, "");
    }

    /// Reports the publisher's state if the signaling facts changed it.
    fn refresh_publisher(&mut self, code: ErrorCode, message: &str) {
        let online = self.is_online();
        let Some(p) = &mut self.publisher else { return };
        let state = p.target_state(online);
        if state != p.state {
            p.state = state;
            let id = p.stream_id.clone();
            self.publisher_event(id, state, code, message);
        }
    }

    /// Reports a player's state if the signaling facts changed it.
    fn refresh_player(&mut self, stream_id: &StreamId, code: ErrorCode, message: &str) {
        let online = self.is_online();
        let Some(p) = self.players.get_mut(stream_id) else {
            return;
        };
        let state = p.target_state(online);
        if state != p.state {
            p.state = state;
            self.player_event(stream_id.clone(), state, code, message);
        }
    }

    // ----- media -----

    /// Whether a stream in this media state needs a (new) offer: none was made, or the one made
    /// was lost with a broken connection.
    fn needs_offer(&self, link: MediaLink) -> bool {
        match link {
            MediaLink::Idle => true,
            MediaLink::Offered { seq } => !self.pending.contains_key(&seq),
            MediaLink::Answered => false,
        }
    }

    /// Whether a stream's media offer waits for its answer on the current connection.
    fn offer_in_flight(&self, link: Option<MediaLink>) -> bool {
        matches!(link, Some(MediaLink::Offered { seq }) if self.pending.contains_key(&seq))
    }

    /// Offers the publisher's media connection if it has none and may have one: the stream is
    /// registered, or its `publish` went out on this connection (the offer follows it).
    fn open_publish_media(&mut self) {
        if !self.p.media || !self.is_ready() {
            return;
        }
        let Some(p) = &self.publisher else { return };
        if !(p.registered || p.requested) || !self.needs_offer(p.media) || p.retry.at.is_some() {
            return;
        }
        let stream_id = p.stream_id.clone();
        let kind = MediaRole::Publish;
        let seq = self.request(Pending::MediaOffer {
            stream_id: stream_id.clone(),
            kind,
        });
        if let Some(p) = &mut self.publisher {
            p.media = MediaLink::Offered { seq };
            p.flowing = false;
        }
        self.out.push_back(Output::MediaOpen { seq, stream_id, kind });
    }

    fn close_publish_media(&mut self) {
        let Some(p) = &mut self.publisher else { return };
        p.flowing = false;
        if p.media != MediaLink::Idle {
            p.media = MediaLink::Idle;
            let stream_id = p.stream_id.clone();
            self.out.push_back(Output::MediaClose {
                stream_id,
                kind: MediaRole::Publish,
            });
        }
    }

    /// Offers a player's media connection if it has none and its `play` went out on this
    /// connection (the server holds an offer for a stream not published yet).
    fn open_play_media(&mut self, stream_id: &StreamId) {
        if !self.p.media || !self.is_ready() {
            return;
        }
        let Some(p) = self.players.get(stream_id) else {
            return;
        };
        if !p.requested || !self.needs_offer(p.media) || p.retry.at.is_some() {
            return;
        }
        let kind = MediaRole::Play;
        let seq = self.request(Pending::MediaOffer {
            stream_id: stream_id.clone(),
            kind,
        });
        if let Some(p) = self.players.get_mut(stream_id) {
            p.media = MediaLink::Offered { seq };
            p.first_frame = false;
        }
        self.out.push_back(Output::MediaOpen {
            seq,
            stream_id: stream_id.clone(),
            kind,
        });
    }

    fn close_play_media(&mut self, stream_id: &StreamId) {
        let Some(p) = self.players.get_mut(stream_id) else {
            return;
        };
        p.first_frame = false;
        if p.media != MediaLink::Idle {
            p.media = MediaLink::Idle;
            self.out.push_back(Output::MediaClose {
                stream_id: stream_id.clone(),
                kind: MediaRole::Play,
            });
        }
    }

    fn media_link(&mut self, stream_id: &StreamId, kind: MediaRole) -> Option<&mut MediaLink> {
        match kind {
            MediaRole::Publish => self
                .publisher
                .as_mut()
                .filter(|p| p.stream_id == *stream_id)
                .map(|p| &mut p.media),
            MediaRole::Play => self.players.get_mut(stream_id).map(|p| &mut p.media),
        }
    }

    fn on_media_answer(&mut self, seq: u32, stream_id: StreamId, kind: MediaRole, sdp: String) {
        let Some(link) = self.media_link(&stream_id, kind) else {
            return;
        };
        if *link != (MediaLink::Offered { seq }) {
            return; // an older offer's answer
        }
        *link = MediaLink::Answered;
        self.out.push_back(Output::MediaAnswer { stream_id, kind, sdp });
    }

    fn on_media_refused(
        &mut self,
        seq: u32,
        stream_id: StreamId,
        kind: MediaRole,
        code: ErrorCode,
        message: &str,
        now: Instant,
    ) {
        let Some(link) = self.media_link(&stream_id, kind) else {
            return;
        };
        if *link != (MediaLink::Offered { seq }) {
            return;
        }
        match kind {
            MediaRole::Publish => self.close_publish_media(),
            MediaRole::Play => {
                self.close_play_media(&stream_id);
                // Refused as "not found" while the stream is available: its publisher's media
                // did not start while the server waited for it (`play_wait`). The play stands:
                // offer again, with the backoff of a lost connection. A stream that went away
                // (its `play_update` came first) brings a new offer when it is back.
                if code == ErrorCode::STREAM_NOT_FOUND
                    && let Some(p) = self.players.get_mut(&stream_id)
                    && p.available
                {
                    p.retry.lost(now);
                    self.open_play_media(&stream_id);
                }
            }
        }
        if code != ErrorCode::STREAM_NOT_FOUND {
            self.event(Event::DebugError {
                error_code: code,
                func_name: "media_offer".into(),
                info: format!("{stream_id}: {message}"),
            });
        }
    }

    /// The server reports a media connection's state.
    fn on_media_state(
        &mut self,
        stream_id: StreamId,
        kind: MediaRole,
        state: PeerState,
        code: ErrorCode,
        message: &str,
        now: Instant,
    ) {
        if kind == MediaRole::Publish
            && (code == ErrorCode::STREAM_STOPPED_BY_SERVER || code == ErrorCode::STREAM_TAKEN_OVER)
            && self.publisher.as_ref().is_some_and(|p| p.stream_id == stream_id)
        {
            // The app's server stopped the stream (server API `DeleteStream`), or another node
            // of the cluster took its ID over (the same user's newer login there): the server
            // already forgot it, so nothing is unpublished or retried; the app hears why.
            self.close_publish_media();
            if let Some(p) = self.publisher.take() {
                self.publisher_event(p.stream_id, PublisherState::NoPublish, code, message);
            }
            return;
        }
        match state {
            PeerState::Connected => {}
            PeerState::Closed | PeerState::Failed => {
                let link = self.media_link(&stream_id, kind).map(|l| *l);
                // The media task may have seen the close (DTLS close_notify) first and left the
                // link idle: a failure is retried all the same.
                let ours = link == Some(MediaLink::Answered)
                    || (state == PeerState::Failed && link == Some(MediaLink::Idle));
                if !ours {
                    return; // not about the connection we have now
                }
                debug!(room = %self.p.room_id, %stream_id, ?kind, ?state, ?code, message, "media connection ended by the server");
                if state == PeerState::Failed {
                    self.media_down(stream_id, kind, true, "media connection failed", now);
                } else {
                    // The stream's publisher stopped: as when the stream goes away (its
                    // `play_update` follows), not a break.
                    self.media_down(stream_id, kind, false, "", now);
                }
            }
        }
    }

    /// A media connection is gone; offer a new one when `retry` and the stream is still wanted.
    /// A break (`retry`) reports 1003020 / 1004020 with `why`; an end reports no error.
    fn media_down(&mut self, stream_id: StreamId, kind: MediaRole, retry: bool, why: &str, now: Instant) {
        match kind {
            MediaRole::Publish => {
                self.close_publish_media();
                let code = if retry {
                    if let Some(p) = &mut self.publisher {
                        p.retry.lost(now);
                    }
                    self.open_publish_media();
                    ErrorCode::PUBLISH_TEMPORARY_BREAK
                } else {
                    ErrorCode::OK
                };
                self.refresh_publisher(code, why);
            }
            MediaRole::Play => {
                self.close_play_media(&stream_id);
                let code = if retry {
                    if let Some(p) = self.players.get_mut(&stream_id) {
                        p.retry.lost(now);
                    }
                    self.open_play_media(&stream_id);
                    ErrorCode::PLAY_TEMPORARY_BREAK
                } else {
                    ErrorCode::OK
                };
                self.refresh_player(&stream_id, code, why);
            }
        }
    }

    /// A media task reported.
    fn on_media(&mut self, stream_id: StreamId, kind: MediaRole, update: MediaUpdate, now: Instant) {
        if matches!(self.phase, Phase::Done | Phase::LoggingOut { .. }) {
            return;
        }
        match update {
            MediaUpdate::Lost => {
                if self.media_link(&stream_id, kind).is_some() {
                    self.media_down(stream_id, kind, true, "media connection lost", now);
                }
            }
            // The server closed it and says why on the signaling connection (`media_state`,
            // `play_update`); until then the stream has no media.
            MediaUpdate::Closed => {
                if self.media_link(&stream_id, kind).is_some() {
                    self.media_down(stream_id, kind, false, "", now);
                }
            }
            MediaUpdate::PublishStats(sample) => {
                if self.p.quality && self.publisher.as_ref().is_some_and(|p| p.stream_id == stream_id) {
                    let back = self.quality.publish_sample(&stream_id, sample, now);
                    self.own_quality(back, now);
                }
            }
            MediaUpdate::PlayStats(sample) => {
                if self.p.quality && self.players.get(&stream_id).is_some_and(|p| p.available) {
                    let back = self.quality.play_sample(&stream_id, sample, now);
                    self.own_quality(back, now);
                }
            }
            MediaUpdate::CapturedAudioFirstFrame => self.event(Event::PublisherCapturedAudioFirstFrame),
            MediaUpdate::CapturedVideoFirstFrame => self.event(Event::PublisherCapturedVideoFirstFrame),
            MediaUpdate::Flowing => {
                if let Some(p) = &mut self.publisher
                    && p.stream_id == stream_id
                {
                    p.flowing = true;
                    p.retry.up(now);
                    self.refresh_publisher(ErrorCode::OK, "");
                }
            }
            MediaUpdate::RecvAudioFirstFrame | MediaUpdate::RecvVideoFirstFrame => {
                let Some(p) = self.players.get_mut(&stream_id) else {
                    return;
                };
                p.first_frame = true;
                p.retry.up(now);
                self.event(if update == MediaUpdate::RecvAudioFirstFrame {
                    Event::PlayerRecvAudioFirstFrame {
                        stream_id: stream_id.clone(),
                    }
                } else {
                    Event::PlayerRecvVideoFirstFrame {
                        stream_id: stream_id.clone(),
                    }
                });
                self.refresh_player(&stream_id, ErrorCode::OK, "");
            }
        }
    }

    // ----- users and streams the app sees -----

    /// Reports the differences between what the app was told and the room as the server
    /// describes it now.
    fn sync_lists(&mut self, users: Vec<User>, streams: Vec<StreamInfo>) {
        let me = self.p.user.user_id.clone();
        if self.p.user_status_notify {
            let now: BTreeMap<UserId, User> = users
                .into_iter()
                .filter(|u| u.user_id != me)
                .map(|u| (u.user_id.clone(), u))
                .collect();
            let gone: Vec<User> = self
                .users
                .values()
                .filter(|u| !now.contains_key(&u.user_id))
                .cloned()
                .collect();
            let new: Vec<User> = now
                .values()
                .filter(|u| !self.users.contains_key(&u.user_id))
                .cloned()
                .collect();
            self.users = now;
            self.user_event(UpdateType::Delete, gone);
            self.user_event(UpdateType::Add, new);
        }
        let now: BTreeMap<StreamId, StreamInfo> = streams
            .into_iter()
            .filter(|s| s.user_id != me)
            .map(|s| (s.stream_id.clone(), s))
            .collect();
        let gone: Vec<StreamInfo> = self
            .streams
            .iter()
            .filter(|(id, s)| now.get(*id) != Some(*s))
            .map(|(_, s)| s.clone())
            .collect();
        let new: Vec<StreamInfo> = now
            .iter()
            .filter(|(id, s)| self.streams.get(*id) != Some(*s))
            .map(|(_, s)| s.clone())
            .collect();
        self.streams = now;
        self.stream_event(UpdateType::Delete, gone);
        self.stream_event(UpdateType::Add, new);
    }

    fn apply_user_update(&mut self, update_type: UpdateType, users: Vec<User>) {
        let me = self.p.user.user_id.clone();
        if update_type == UpdateType::Delete {
            for u in &users {
                self.quality.remote_left(&u.user_id);
            }
        }
        let mut changed = Vec::new();
        for u in users.into_iter().filter(|u| u.user_id != me) {
            let is_new = match update_type {
                UpdateType::Add => self.users.insert(u.user_id.clone(), u.clone()).is_none(),
                UpdateType::Delete => self.users.remove(&u.user_id).is_some(),
            };
            if is_new {
                changed.push(u);
            }
        }
        self.user_event(update_type, changed);
    }

    fn apply_stream_update(&mut self, update_type: UpdateType, streams: Vec<StreamInfo>) {
        let me = self.p.user.user_id.clone();
        let mut changed = Vec::new();
        for s in streams.into_iter().filter(|s| s.user_id != me) {
            let is_new = match update_type {
                UpdateType::Add => self.streams.insert(s.stream_id.clone(), s.clone()).as_ref() != Some(&s),
                UpdateType::Delete => self.streams.remove(&s.stream_id).is_some(),
            };
            if is_new {
                changed.push(s);
            }
        }
        self.stream_event(update_type, changed);
    }

    // ----- leaving -----

    /// Ends the room for the app: releases the API's record, reports the room state, then every
    /// publisher and player as stopped with the same code.
    fn leave(&mut self, reason: RoomStateChangedReason, code: ErrorCode, message: &str) {
        self.close_publish_media();
        let ids: Vec<StreamId> = self.players.keys().cloned().collect();
        for id in ids {
            self.close_play_media(&id);
        }
        self.quality.stop_all();
        self.out.push_back(Output::Release(Release::Room));
        self.room_event(reason, code, message);
        if let Some(p) = self.publisher.take() {
            self.publisher_event(p.stream_id, PublisherState::NoPublish, code, message);
        }
        for (id, _) in std::mem::take(&mut self.players) {
            self.player_event(id, PlayerState::NoPlay, code, message);
        }
        self.token_warn_at = None;
    }

    /// Closes the connection; the session is over.
    fn finish(&mut self) {
        self.out.push_back(Output::Close);
        self.phase = Phase::Done;
        self.link = Link::Down { retry_at: None };
        self.pending.clear();
    }

    // ----- tokens -----

    /// Makes `token` the session's token (used by the next login) and re-arms the warning.
    fn adopt_token(&mut self, token: String) {
        self.p.token = Some(token);
        self.arm_token();
    }

    fn arm_token(&mut self) {
        self.token_warn_at = None;
        self.token_expire = None;
        self.token_warned = false;
        let Some(token) = &self.p.token else { return };
        match huddle_token::peek_expire(token) {
            Ok(expire) => self.arm_expiry(expire),
            Err(e) => debug!(error = %e, "cannot read the token's expiry; no expiry warning"),
        }
    }

    fn arm_expiry(&mut self, expire: i64) {
        self.token_expire = Some(expire);
        let warn_ms = expire
            .saturating_mul(1000)
            .saturating_sub(self.p.timing.token_warning.as_millis() as i64);
        let (base, base_ms) = self.clock_base;
        let after = u64::try_from(warn_ms.saturating_sub(base_ms)).unwrap_or(0);
        self.token_warn_at = Some(base + Duration::from_millis(after));
    }

    fn token_warning_allowed(&self) -> bool {
        matches!(self.phase, Phase::Online | Phase::Reconnecting { .. })
    }

    fn unix_ms_at(&self, now: Instant) -> i64 {
        let (base, base_ms) = self.clock_base;
        base_ms + now.saturating_duration_since(base).as_millis() as i64
    }

    // ----- quality -----

    /// Quality is reported while logged in, the breaks included.
    fn quality_allowed(&self) -> bool {
        self.p.quality && matches!(self.phase, Phase::Online | Phase::Reconnecting { .. })
    }

    /// Reports this user's levels at once (`Some`: they came back from `Die`), to the app and
    /// to the room (the others need not wait for the next tick either).
    fn own_quality(&mut self, levels: Option<(StreamQualityLevel, StreamQualityLevel)>, now: Instant) {
        if let Some((up, down)) = levels
            && self.quality_allowed()
        {
            self.event(Event::NetworkQuality {
                user_id: None,
                upstream_quality: up,
                downstream_quality: down,
            });
            self.report_quality(up, down, now);
        }
    }

    fn report_quality(&mut self, upstream: StreamQualityLevel, downstream: StreamQualityLevel, now: Instant) {
        if self.is_ready() {
            let seq = self.request(Pending::Quality { sent: now });
            self.send(ClientMsg::NetworkQuality {
                seq,
                upstream,
                downstream,
            });
        }
    }

    /// The quality events and the report due at `now`.
    fn poll_quality(&mut self, now: Instant) {
        if !self.quality_allowed() {
            return;
        }
        let due = self.quality.poll(now);
        if let Some((stream_id, quality)) = due.publisher {
            self.event(Event::PublisherQualityUpdate { stream_id, quality });
        }
        for (stream_id, quality) in due.players {
            self.event(Event::PlayerQualityUpdate { stream_id, quality });
        }
        if let Some((up, down)) = due.own {
            self.event(Event::NetworkQuality {
                user_id: None,
                upstream_quality: up,
                downstream_quality: down,
            });
            if due.report {
                self.report_quality(up, down, now);
            }
        }
        for (user, up, down) in due.remote {
            self.event(Event::NetworkQuality {
                user_id: Some(user),
                upstream_quality: up,
                downstream_quality: down,
            });
        }
    }

    // ----- helpers -----

    fn is_online(&self) -> bool {
        matches!(self.phase, Phase::Online)
    }

    fn is_ready(&self) -> bool {
        self.is_online() && matches!(self.link, Link::Ready { .. })
    }

    fn next_timeout(&self) -> Option<Instant> {
        let mut at: Option<Instant> = None;
        let mut consider = |t: Instant| at = Some(at.map_or(t, |a| a.min(t)));
        match self.phase {
            Phase::Login { deadline } | Phase::Reconnecting { deadline } | Phase::LoggingOut { deadline } => {
                consider(deadline)
            }
            Phase::Online => {}
            Phase::Done => return None,
        }
        match self.link {
            Link::Down { retry_at: Some(t) } => consider(t),
            Link::Down { retry_at: None } => {}
            Link::Opening { deadline, .. } => consider(deadline),
            Link::Ready { next_ping, last_rx } => {
                if self.is_online() {
                    consider(next_ping);
                    consider(last_rx + self.session_timeout);
                }
            }
        }
        if let Some(t) = self.token_warn_at
            && self.token_warning_allowed()
        {
            consider(t);
        }
        if self.quality_allowed()
            && let Some(t) = self.quality.next_timeout()
        {
            consider(t);
        }
        if self.is_ready()
            && let Some(t) = self.publisher.as_ref().and_then(|p| p.reclaim_at)
        {
            consider(t);
        }
        let retries = self.publisher.iter().map(|p| &p.retry);
        for t in retries
            .chain(self.players.values().map(|p| &p.retry))
            .filter_map(|r| r.at)
        {
            consider(t);
        }
        at
    }

    fn alloc_seq(&mut self) -> u32 {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.checked_add(1).unwrap_or(1);
        seq
    }

    fn request(&mut self, what: Pending) -> u32 {
        let seq = self.alloc_seq();
        self.pending.insert(seq, what);
        seq
    }

    fn send(&mut self, msg: ClientMsg) {
        self.out.push_back(Output::Send(msg));
    }

    fn event(&mut self, e: Event) {
        self.out.push_back(Output::Event(e));
    }

    fn room_event(&mut self, reason: RoomStateChangedReason, code: ErrorCode, message: &str) {
        let extended_data = extended(message);
        self.event(Event::RoomStateChanged {
            room_id: self.p.room_id.clone(),
            reason,
            error_code: code,
            extended_data: extended_data.clone(),
        });
        self.event(Event::RoomStateUpdate {
            room_id: self.p.room_id.clone(),
            state: reason.state(),
            error_code: code,
            extended_data,
        });
    }

    fn publisher_event(
        &mut self,
        stream_id: StreamId,
        state: PublisherState,
        code: ErrorCode,
        message: &str,
    ) {
        self.event(Event::PublisherStateUpdate {
            stream_id,
            state,
            error_code: code,
            extended_data: extended(message),
        });
    }

    fn player_event(&mut self, stream_id: StreamId, state: PlayerState, code: ErrorCode, message: &str) {
        self.event(Event::PlayerStateUpdate {
            stream_id,
            state,
            error_code: code,
            extended_data: extended(message),
        });
    }

    fn user_event(&mut self, update_type: UpdateType, users: Vec<User>) {
        if !users.is_empty() {
            self.event(Event::RoomUserUpdate {
                room_id: self.p.room_id.clone(),
                update_type,
                users,
            });
        }
    }

    fn stream_event(&mut self, update_type: UpdateType, streams: Vec<StreamInfo>) {
        if !streams.is_empty() {
            self.event(Event::RoomStreamUpdate {
                room_id: self.p.room_id.clone(),
                update_type,
                streams,
                extended_data: String::new(),
            });
        }
    }
}

/// Login refusals worth another attempt while reconnecting (the server is busy, restarting or
/// cannot reach its cluster store); any other refusal (auth, room full, …) ends the room.
/// `huddle.js` has the same list (checked by `crate::web_tables`).
pub(crate) const RETRIABLE_LOGIN_REFUSALS: [ErrorCode; 7] = [
    ErrorCode::SERVER_BUSY,
    ErrorCode::SERVER_SHUTTING_DOWN,
    ErrorCode::CLUSTER_UNAVAILABLE,
    ErrorCode::RATE_LIMITED,
    ErrorCode::INTERNAL,
    ErrorCode::LOGIN_TIMEOUT,
    ErrorCode::SLOW_CONSUMER,
];

fn retriable(code: ErrorCode) -> bool {
    RETRIABLE_LOGIN_REFUSALS.contains(&code)
}
