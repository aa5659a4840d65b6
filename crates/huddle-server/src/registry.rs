//! The room registry: apps, rooms, users, sessions, streams and plays, as a sans-IO state machine.
//!
//! The registry owns no socket, task or clock. Each operation takes what it needs (the time as an
//! [`Instant`] where it matters), changes the state, and pushes what must be sent into the caller's
//! `Vec<`[`Output`]`>` in the order it must be delivered. The caller (the signaling shell) delivers
//! the outputs while it still holds the registry, so that every session sees its messages in the
//! order the registry decided.
//!
//! An operation that fails returns `Err` and leaves both the state and `out` untouched: an error of
//! one session never changes another's state.
//!
//! # Session lifecycle
//!
//! ```text
//!   login ──► Attached ──detach(epoch)──► Detached ──expire(epoch)──► gone (as logout)
//!                ▲                            │
//!                └──────── login + resume ────┘
//!   Attached/Detached ──logout / kick / duplicate login──► gone
//! ```
//!
//! Every attach and detach bumps the session's *epoch*. `detach` and `expire` name the epoch they
//! act on, so a stale call (a connection that was replaced by a resume, a grace timer of an earlier
//! break) is a no-op.
//!
//! # Timers
//!
//! The registry keeps its own timers, as str0m does: the end of each detached session's grace
//! period (by the monotonic clock) and each token's warning and expiry (by the wall clock, which
//! tokens use). [`Registry::poll_timeout`] tells when the next one is due on each clock, and
//! [`Registry::handle_timeout`] runs every timer due at the given [`Clock`] reading, pushing what
//! they cause into `out` as any operation does: messages, and [`Output::Media`] for the media
//! plane. The shell has one timer for the whole registry; after any operation it polls again.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

use huddle_proto::{
    AppId, DeviceState, ErrorCode, HuddleError, Login, LoginOk, RoomExtraInfo, RoomId, ServerMsg, StreamId,
    StreamInfo, StreamQualityLevel, TrackKind, UpdateType, User, UserId,
};

use crate::auth::{Grant, check_publish};
use crate::config::ServerConfig;

/// A session: one user logged in to one room, across the connections that carry it (a resume
/// re-attaches it to a new connection).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(u64);

impl SessionId {
    /// The number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "S{}", self.0)
    }
}

impl SessionId {
    /// The session ID with this number (for the media plane's sessions that are not clients':
    /// the links between nodes).
    pub(crate) fn from_raw(n: u64) -> SessionId {
        SessionId(n)
    }
}

impl FromStr for SessionId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(SessionId)
    }
}

/// The shortest time between two relayed `network_quality` reports of one session.
pub const QUALITY_REPORT_MIN_INTERVAL: Duration = Duration::from_millis(900);

/// The most mute changes (`set_device_state` and `mute_play` together) a session makes in one
/// second; more are refused (1009062). A person clicks a mute button a few times a second at
/// most; each change of a published stream goes to every player on every node.
pub const MUTE_CHANGES_PER_SECOND: u32 = 20;

/// Something the registry wants done, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Output {
    /// Send `msg` to one session.
    Send {
        /// The recipient.
        to: SessionId,
        /// The message.
        msg: ServerMsg,
    },
    /// Send the same `msg` to several sessions (encode it once).
    Broadcast {
        /// The recipients (never empty).
        to: Vec<SessionId>,
        /// The message.
        msg: ServerMsg,
    },
    /// Send the same `msg` to several sessions, best effort: a session whose outbound queue is
    /// more than half full does not get it (barrage messages; never closes a connection).
    BroadcastLossy {
        /// The recipients (never empty).
        to: Vec<SessionId>,
        /// The message.
        msg: ServerMsg,
    },
    /// Close the session's connection once the messages before this output are sent. The session
    /// is already gone from the registry.
    Close {
        /// The session whose connection to close.
        session: SessionId,
    },
    /// Tell the media plane, in this order relative to the other outputs.
    Media(MediaCommand),
    /// Tell the cluster (the other nodes, through the store), in this order relative to the
    /// other outputs.
    Cluster(ClusterCommand),
}

/// A change of a room that the other nodes with members in it must see: made by this node
/// ([`ClusterCommand::Change`]) or by another ([`Registry::remote_update`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomChange {
    /// A user joined the room.
    UserAdd(User),
    /// A user left the room.
    UserDelete(UserId),
    /// A stream was published in the room.
    StreamAdd(StreamInfo),
    /// A stream of the room is no longer published.
    StreamDelete(StreamId),
    /// A message or custom command to members of the room (kept in the room's history only).
    Message(RoomMessage),
    /// A stream of the room has new extra info.
    StreamExtraInfo(StreamInfo),
    /// A key of the room's extra info was set (room-wide: no node owns it).
    RoomExtraInfo(RoomExtraInfo),
}

/// What the registry's decisions mean for the cluster: the rooms this node follows and the
/// changes of its own part of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterCommand {
    /// This node has members in the room now: read the room's history from `cursor` (where the
    /// [`RemoteRoom`] given to the login that created the room was taken) and feed it to
    /// [`Registry::remote_update`].
    Follow {
        /// The app.
        app: AppId,
        /// The room.
        room: RoomId,
        /// The opaque position in the room's history of the snapshot.
        cursor: String,
        /// The room's sequence number at the snapshot.
        seq: u64,
    },
    /// This node has no member in the room any more: stop reading its history.
    Unfollow {
        /// The app.
        app: AppId,
        /// The room.
        room: RoomId,
    },
    /// This node's part of the room changed: tell the others.
    Change {
        /// The app.
        app: AppId,
        /// The room.
        room: RoomId,
        /// What changed.
        change: RoomChange,
    },
}

/// The other nodes' part of a room, as the cluster store had it at `cursor`: their users and
/// streams, each with the opaque name of the node (and lease) that owns it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteRoom {
    /// The opaque position in the room's history of this snapshot.
    pub cursor: String,
    /// The room's sequence number at this snapshot.
    pub seq: u64,
    /// The users of other nodes, with their owners.
    pub users: Vec<(String, User)>,
    /// The streams of other nodes, with their owners.
    pub streams: Vec<(String, StreamInfo)>,
    /// The room's extra info, by whichever node set it.
    pub extra: Vec<RoomExtraInfo>,
}

/// This node's own part of one room ([`Registry::local_rooms`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalRoom {
    /// The app.
    pub app: AppId,
    /// The room.
    pub room: RoomId,
    /// This node's users in the room.
    pub users: Vec<User>,
    /// This node's streams in the room.
    pub streams: Vec<StreamInfo>,
}

/// What the registry's decisions mean for the media plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaCommand {
    /// The stream is no longer published: close its publish connection and its players'.
    ClosePublish {
        /// The session that published it.
        session: SessionId,
        /// The app.
        app: AppId,
        /// The stream.
        stream_id: StreamId,
    },
    /// The session stopped playing the stream: close its play connection.
    ClosePlay {
        /// The session.
        session: SessionId,
        /// The app.
        app: AppId,
        /// The stream.
        stream_id: StreamId,
    },
    /// The session ended (logout, kick, duplicate login, grace or token expiry): close all its
    /// connections.
    SessionGone {
        /// The session.
        session: SessionId,
    },
    /// A session here plays a stream that another node publishes: pull it from that node (once
    /// per stream: a pull that runs already is not started again).
    Pull {
        /// The app.
        app: AppId,
        /// The stream.
        stream_id: StreamId,
        /// The owner of the stream's entry in its room (`node|epoch`).
        owner: String,
    },
    /// The last player here of a pulled stream left. The shell arms the pull's linger with its
    /// clock ([`Registry::linger_pull`]); when it ends with no player back, the registry asks
    /// for [`MediaCommand::Unpull`].
    PullIdle {
        /// The app.
        app: AppId,
        /// The stream.
        stream_id: StreamId,
    },
    /// Stop pulling the stream: it is no longer published, or nobody here plays it any more.
    Unpull {
        /// The app.
        app: AppId,
        /// The stream.
        stream_id: StreamId,
    },
    /// The stream's publisher moved to another node (or here) while it was pulled: stop the
    /// link and close the relay PC alone, so that the players here keep their connections, and
    /// pull it from `owner` (none: it is published on this node now, and the local publisher
    /// takes the relay's place for them).
    PullMoved {
        /// The app.
        app: AppId,
        /// The stream.
        stream_id: StreamId,
        /// The new owner of the stream's entry (`node|epoch`), if another node.
        owner: Option<String>,
    },
}

/// A reading of both clocks the registry's timers use, taken together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    /// The monotonic clock (grace periods).
    pub at: Instant,
    /// The wall clock, in milliseconds since the Unix epoch (token expiries).
    pub unix_ms: u64,
}

impl Clock {
    /// The clocks now.
    pub fn now() -> Clock {
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Clock {
            at: Instant::now(),
            unix_ms,
        }
    }

    /// The wall clock in whole seconds since the Unix epoch.
    pub fn unix_secs(&self) -> i64 {
        i64::try_from(self.unix_ms / 1000).unwrap_or(i64::MAX)
    }
}

/// When the registry's next timer is due, on each clock (`None`: no timer on that clock).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[must_use]
pub struct Timeout {
    /// By the monotonic clock.
    pub at: Option<Instant>,
    /// By the wall clock, in milliseconds since the Unix epoch.
    pub unix_ms: Option<u64>,
}

/// How long before its token expires a session gets `token_will_expire` (what the hosted SDKs
/// use for `onRoomTokenWillExpire`).
pub const TOKEN_WARNING: Duration = Duration::from_secs(30);

/// The limits and timings the registry applies (see the fields of [`ServerConfig`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Member limit of a room whose first login asks for 0.
    pub default_max_member_count: u32,
    /// Streams published at once per AppID.
    pub max_streams_per_app: usize,
    /// Streams published at once per session.
    pub max_streams_per_session: usize,
    /// Streams played at once per session.
    pub max_plays_per_session: usize,
    /// Sessions, attached or detached.
    pub max_sessions: usize,
    /// Told to clients in `login_ok`.
    pub heartbeat_ms: u32,
    /// Told to clients in `login_ok`.
    pub session_timeout_ms: u32,
    /// How long a detached session waits for a resume.
    pub grace: Duration,
    /// How long a pull of another node's stream goes on after its last player here left
    /// (zero: it stops at once).
    pub pull_linger: Duration,
}

fn ms_u32(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

impl From<&ServerConfig> for Limits {
    fn from(c: &ServerConfig) -> Limits {
        Limits {
            default_max_member_count: c.default_max_member_count,
            max_streams_per_app: c.max_streams_per_app,
            max_streams_per_session: c.max_streams_per_session,
            max_plays_per_session: c.max_plays_per_session,
            max_sessions: c.max_sessions,
            heartbeat_ms: ms_u32(c.heartbeat),
            session_timeout_ms: ms_u32(c.session_timeout),
            grace: c.grace,
            pull_linger: c.pull_linger,
        }
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits::from(&ServerConfig::default())
    }
}

/// What [`Registry::check_publish`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishCheck {
    /// The session may publish the stream ID, new to it.
    New,
    /// The session publishes it already (publishing again is answered `ok`).
    Already,
}

/// A session (re-)attached by [`Registry::login`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attached {
    /// The session.
    pub session: SessionId,
    /// The epoch of this attachment: pass it to [`Registry::detach`] when the connection breaks.
    pub epoch: u64,
    /// Whether an existing session was resumed.
    pub resumed: bool,
}

/// A session detached by [`Registry::detach`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Detached {
    /// The epoch to pass to [`Registry::expire`].
    pub epoch: u64,
    /// When the grace period ends.
    pub deadline: Instant,
}

/// What the shell needs to know about a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// The app.
    pub app_id: AppId,
    /// The room.
    pub room_id: RoomId,
    /// The user.
    pub user_id: UserId,
    /// The current epoch.
    pub epoch: u64,
    /// Whether a connection carries the session now.
    pub attached: bool,
}

/// A room as its members see it: its users and streams, sorted by ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomView {
    /// The users (one session each).
    pub users: Vec<User>,
    /// The published streams.
    pub streams: Vec<StreamInfo>,
}

/// Counts, for monitoring and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Sessions, attached or detached.
    pub sessions: usize,
    /// Detached sessions waiting for a resume.
    pub detached: usize,
    /// Rooms in all apps.
    pub rooms: usize,
    /// Published streams in all apps.
    pub streams: usize,
}

/// The secret that resumes a session; `Debug` does not print it.
struct ResumeKey(String);

impl fmt::Debug for ResumeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResumeKey(<redacted>)")
    }
}

#[derive(Debug)]
struct Session {
    app: AppId,
    room: RoomId,
    user: User,
    user_status_notify: bool,
    resume_key: ResumeKey,
    grant: Grant,
    /// The streams this session publishes, in publish order.
    publishes: Vec<StreamId>,
    plays: BTreeSet<StreamId>,
    epoch: u64,
    /// `None` while attached; the end of the grace period while detached.
    detached_until: Option<Instant>,
    /// When this session's token timer is due (Unix ms), if armed: the warning, or after it
    /// the expiry.
    token_due: Option<u64>,
    /// Whether the warning for the current token was given (or was due while detached).
    token_warned: bool,
    /// When the session's last `network_quality` report was relayed (one a second at most).
    quality_at: Option<Instant>,
    /// The start of the session's current one-second window of mute changes and how many it
    /// made in it ([`MUTE_CHANGES_PER_SECOND`]).
    mute_window: Option<(Instant, u32)>,
    /// The session's broadcast messages in the last second.
    broadcast_rate: im::Rate,
}

impl Session {
    fn attached(&self) -> bool {
        self.detached_until.is_none()
    }
}

#[derive(Debug)]
struct Published {
    session: SessionId,
    room: RoomId,
    info: StreamInfo,
}

#[derive(Debug)]
struct Room {
    max_members: u32,
    /// One session per user ID.
    users: BTreeMap<UserId, SessionId>,
    streams: BTreeSet<StreamId>,
    /// The users of other nodes, with their owners (a user ID also on this node is shown once).
    remote_users: BTreeMap<UserId, (String, User)>,
    /// The streams of other nodes, with their owners.
    remote_streams: BTreeMap<StreamId, (String, StreamInfo)>,
    /// The room's extra info by key (room-wide, set on any node).
    extra: BTreeMap<String, RoomExtraInfo>,
    /// The room's message and extra info rates on this node.
    rates: im::RoomRates,
    /// When the room's next online user count is due (armed by the first login's
    /// [`Registry::online_count_after_login`]).
    count_due: Option<Instant>,
    /// Per local user, this node's adds of the user ([`RoomChange::UserAdd`]) sent to the
    /// cluster and not yet read back from the room's history ([`Registry::own_update`]). While
    /// one is on its way, the local session is the user's later login in the history's order:
    /// another node's add of the same user read now came earlier, and kicks nobody here.
    pending_adds: BTreeMap<UserId, u32>,
}

impl Room {
    /// Members of the room on every node (a user on two nodes counts once).
    fn member_count(&self) -> usize {
        self.users.len()
            + self
                .remote_users
                .keys()
                .filter(|u| !self.users.contains_key(*u))
                .count()
    }
}

#[derive(Debug, Default)]
struct App {
    rooms: HashMap<RoomId, Room>,
    /// Stream IDs are unique per AppID, across rooms.
    streams: HashMap<StreamId, Published>,
    /// Who plays each stream ID, published or not, in any room.
    players: HashMap<StreamId, BTreeSet<SessionId>>,
}

/// The registry of one server: see the [module documentation](self).
#[derive(Debug)]
pub struct Registry {
    limits: Limits,
    apps: HashMap<AppId, App>,
    sessions: HashMap<SessionId, Session>,
    /// Session IDs are drawn at random (not counted up), so that one session's ID says nothing
    /// about another's; the resume key is the secret (128 bits), the ID only names the session.
    ids: StdRng,
    /// The grace timers: every detached session by the end of its grace period.
    grace_timers: BTreeSet<(Instant, SessionId)>,
    /// The token timers: every session with a token by its `token_due`.
    token_timers: BTreeSet<(u64, SessionId)>,
    /// The rooms' online user count timers (an entry whose room's `count_due` differs is stale).
    count_timers: BTreeSet<(Instant, AppId, RoomId)>,
    /// Pulls with no player here, by the end of their linger ([`Registry::linger_pull`]).
    linger_timers: BTreeSet<(Instant, AppId, StreamId)>,
    /// The same pulls, with the end of their linger.
    lingering: HashMap<(AppId, StreamId), Instant>,
    /// The high bits of this node's message IDs (random, 20 bits).
    message_base: u64,
    /// The last message ID's low bits.
    message_seq: u64,
}

fn err(code: ErrorCode, message: impl Into<String>) -> HuddleError {
    HuddleError::new(code, message)
}

fn not_logged_in() -> HuddleError {
    err(ErrorCode::NOT_LOGGED_IN, "the session is not logged in")
}

fn internal(what: &str) -> HuddleError {
    err(ErrorCode::INTERNAL, format!("registry inconsistency: {what}"))
}

/// Constant-time equality of two secrets (the time depends on the length only).
fn secret_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The attached sessions of `room` other than `except`; only those that asked for user updates if
/// `notify_only`.
fn room_recipients(
    sessions: &HashMap<SessionId, Session>,
    room: &Room,
    except: SessionId,
    notify_only: bool,
) -> Vec<SessionId> {
    room.users
        .values()
        .copied()
        .filter(|id| *id != except)
        .filter(|id| {
            sessions
                .get(id)
                .is_some_and(|s| s.attached() && (!notify_only || s.user_status_notify))
        })
        .collect()
}

/// The streams of `room` on every node, sorted by stream ID.
fn room_streams(app: &App, room: &Room) -> Vec<StreamInfo> {
    let mut all: BTreeMap<&StreamId, &StreamInfo> = room
        .remote_streams
        .iter()
        .map(|(id, (_, info))| (id, info))
        .collect();
    for st in &room.streams {
        if let Some(p) = app.streams.get(st) {
            all.insert(st, &p.info);
        }
    }
    all.into_values().cloned().collect()
}

fn broadcast(out: &mut Vec<Output>, to: Vec<SessionId>, msg: ServerMsg) {
    if !to.is_empty() {
        out.push(Output::Broadcast { to, msg });
    }
}

/// The owner (`node|epoch`) of `stream_id` when another node publishes it in a room this node
/// follows, and this node does not publish it.
fn remote_owner<'a>(app: &'a App, stream_id: &StreamId) -> Option<&'a str> {
    if app.streams.contains_key(stream_id) {
        return None;
    }
    app.rooms
        .values()
        .find_map(|r| r.remote_streams.get(stream_id))
        .map(|(owner, _)| owner.as_str())
}

/// Removes `id` from the players of `stream_id`; when it was the last one here and another node
/// publishes the stream, stops pulling it.
fn remove_player(app: &mut App, app_id: AppId, stream_id: &StreamId, id: SessionId, out: &mut Vec<Output>) {
    let Some(players) = app.players.get_mut(stream_id) else {
        return;
    };
    if !players.remove(&id) || !players.is_empty() {
        return;
    }
    app.players.remove(stream_id);
    if remote_owner(app, stream_id).is_some() {
        out.push(Output::Media(MediaCommand::PullIdle {
            app: app_id,
            stream_id: stream_id.clone(),
        }));
    }
}

/// Tells the attached players of `stream_id` whether it is available.
fn play_update(
    sessions: &HashMap<SessionId, Session>,
    app: &App,
    stream_id: &StreamId,
    available: bool,
    out: &mut Vec<Output>,
) {
    let Some(players) = app.players.get(stream_id) else {
        return;
    };
    let to: Vec<SessionId> = players
        .iter()
        .copied()
        .filter(|id| sessions.get(id).is_some_and(Session::attached))
        .collect();
    broadcast(
        out,
        to.clone(),
        ServerMsg::PlayUpdate {
            stream_id: stream_id.clone(),
            available,
        },
    );
    if available && let Some(info) = stream_info(app, stream_id) {
        device_states(out, &to, info);
    }
}

/// The tracks whose device state differs between `old` and `new`, with the new state.
fn device_changes(old: &StreamInfo, new: &StreamInfo) -> Vec<(TrackKind, DeviceState)> {
    let mut changes = Vec::new();
    if old.mic_state != new.mic_state {
        changes.push((TrackKind::Audio, new.mic_state));
    }
    if old.camera_state != new.camera_state {
        changes.push((TrackKind::Video, new.camera_state));
    }
    changes
}

/// Whether `old` and `new` are the same stream but for their device states.
fn only_devices_differ(old: &StreamInfo, new: &StreamInfo) -> bool {
    old != new
        && old.user_id == new.user_id
        && old.user_name == new.user_name
        && old.extra_info == new.extra_info
}

/// The attached players of `stream_id` on this node.
fn attached_players(
    sessions: &HashMap<SessionId, Session>,
    players: &HashMap<StreamId, BTreeSet<SessionId>>,
    stream_id: &StreamId,
) -> Vec<SessionId> {
    players
        .get(stream_id)
        .map(|p| {
            p.iter()
                .copied()
                .filter(|id| sessions.get(id).is_some_and(Session::attached))
                .collect()
        })
        .unwrap_or_default()
}

/// Tells `to` the device states of `info` that are not `open` (what a player that starts now
/// cannot have seen change).
fn device_states(out: &mut Vec<Output>, to: &[SessionId], info: &StreamInfo) {
    let open = StreamInfo {
        mic_state: DeviceState::Open,
        camera_state: DeviceState::Open,
        ..info.clone()
    };
    for (track, state) in device_changes(&open, info) {
        broadcast(
            out,
            to.to_vec(),
            ServerMsg::RemoteDeviceState {
                stream_id: info.stream_id.clone(),
                track,
                state,
            },
        );
    }
}

/// The stream as this node knows it: published here, or by another node in a followed room.
fn stream_info<'a>(app: &'a App, stream_id: &StreamId) -> Option<&'a StreamInfo> {
    app.streams.get(stream_id).map(|p| &p.info).or_else(|| {
        app.rooms
            .values()
            .find_map(|r| r.remote_streams.get(stream_id))
            .map(|(_, info)| info)
    })
}

impl Registry {
    /// An empty registry.
    pub fn new(limits: Limits) -> Registry {
        let mut ids = StdRng::from_entropy();
        let message_base = u64::from(ids.next_u32() & 0xf_ffff) << 32;
        Registry {
            limits,
            apps: HashMap::new(),
            sessions: HashMap::new(),
            ids,
            grace_timers: BTreeSet::new(),
            token_timers: BTreeSet::new(),
            count_timers: BTreeSet::new(),
            linger_timers: BTreeSet::new(),
            lingering: HashMap::new(),
            message_base,
            message_seq: 0,
        }
    }

    /// A random session ID that no session holds (0 is never used).
    fn new_session_id(&mut self) -> SessionId {
        loop {
            let id = SessionId(self.ids.next_u64());
            if id.0 != 0 && !self.sessions.contains_key(&id) {
                return id;
            }
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Logs in: resumes the session named by `login.resume` when it still exists for the same
    /// AppID, room and user with the right resume key, or else starts a new session.
    ///
    /// The caller has authenticated the login (see [`crate::auth`]) and passes what it granted,
    /// and a fresh random `new_resume_key` for a new session.
    ///
    /// A new session kicks an older session of the same user in the room (1002050: `kicked`, its
    /// streams deleted, its connection closed; the user stays in the room). It is refused with
    /// 1002034 when the room is full and 1009006 when the server holds `max_sessions`. The room is
    /// created by its first login with `max_member_count` (0: the default). Sessions of the room
    /// with `user_status_notify` get `user_update` Add.
    ///
    /// A resume is answered `login_ok` with `resumed: true`, then a `play_update` for every stream
    /// the session plays (events sent while it was detached were lost); nobody else sees anything.
    pub fn login(
        &mut self,
        login: &Login,
        grant: Grant,
        new_resume_key: String,
        out: &mut Vec<Output>,
    ) -> Result<Attached, HuddleError> {
        self.login_with(login, grant, new_resume_key, None, out)
    }

    /// [`Registry::login`] in a cluster: `remote` is the other nodes' part of the room, read
    /// from the store just before. It is taken when this login creates the room on this node
    /// (which then pushes [`ClusterCommand::Follow`]); a room this node follows already is kept
    /// up to date by [`Registry::remote_update`] and `remote` is ignored. The room's member
    /// limit counts the members of every node. A new user (not a resume) pushes
    /// [`ClusterCommand::Change`] with [`RoomChange::UserAdd`].
    pub fn login_with(
        &mut self,
        login: &Login,
        grant: Grant,
        new_resume_key: String,
        remote: Option<RemoteRoom>,
        out: &mut Vec<Output>,
    ) -> Result<Attached, HuddleError> {
        if let Some(id) = self.resumable(login)
            && let Some(attached) = self.resume(id, login, grant.clone(), out)
        {
            return Ok(attached);
        }
        self.login_new(login, grant, new_resume_key, remote, out)
    }

    /// Whether this node follows the room (has members in it).
    pub fn follows(&self, app: AppId, room: &RoomId) -> bool {
        self.apps.get(&app).is_some_and(|a| a.rooms.contains_key(room))
    }

    fn resumable(&self, login: &Login) -> Option<SessionId> {
        let resume = login.resume.as_ref()?;
        let id: SessionId = resume.session_id.parse().ok()?;
        let s = self.sessions.get(&id)?;
        let same = s.app == login.app_id
            && s.room == login.room_id
            && s.user.user_id == login.user.user_id
            && secret_eq(&s.resume_key.0, &resume.resume_key);
        same.then_some(id)
    }

    fn resume(
        &mut self,
        id: SessionId,
        login: &Login,
        grant: Grant,
        out: &mut Vec<Output>,
    ) -> Option<Attached> {
        let s = self.sessions.get_mut(&id)?;
        s.epoch += 1;
        if let Some(until) = s.detached_until.take() {
            self.grace_timers.remove(&(until, id));
        }
        s.grant = grant;
        s.user_status_notify = login.user_status_notify;
        let epoch = s.epoch;
        self.arm_token(id);
        out.push(Output::Send {
            to: id,
            msg: self.login_ok(id, login.seq, true),
        });
        self.extra_after_login(id, out);
        if let (Some(s), Some(app)) = (self.sessions.get(&id), self.apps.get(&login.app_id)) {
            for stream_id in &s.plays {
                let available = app.streams.contains_key(stream_id);
                out.push(Output::Send {
                    to: id,
                    msg: ServerMsg::PlayUpdate {
                        stream_id: stream_id.clone(),
                        available,
                    },
                });
            }
        }
        Some(Attached {
            session: id,
            epoch,
            resumed: true,
        })
    }

    fn login_new(
        &mut self,
        login: &Login,
        grant: Grant,
        resume_key: String,
        remote: Option<RemoteRoom>,
        out: &mut Vec<Output>,
    ) -> Result<Attached, HuddleError> {
        let room = self
            .apps
            .get(&login.app_id)
            .and_then(|a| a.rooms.get(&login.room_id));
        let older = room.and_then(|r| r.users.get(&login.user.user_id)).copied();
        if older.is_none() {
            if self.sessions.len() >= self.limits.max_sessions {
                return Err(err(ErrorCode::SERVER_BUSY, "the server is at its session limit"));
            }
            let (members, max) = match (room, &remote) {
                (Some(r), _) => (r.member_count(), r.max_members),
                (None, Some(remote)) => {
                    let users: BTreeSet<&UserId> = remote.users.iter().map(|(_, u)| &u.user_id).collect();
                    let max = match login.max_member_count {
                        0 => self.limits.default_max_member_count,
                        n => n,
                    };
                    (users.len(), max)
                }
                (None, None) => (0, u32::MAX),
            };
            let rejoin = room.is_some_and(|r| r.remote_users.contains_key(&login.user.user_id))
                || remote
                    .as_ref()
                    .is_some_and(|r| r.users.iter().any(|(_, u)| u.user_id == login.user.user_id));
            if members >= max as usize && !rejoin {
                return Err(err(
                    ErrorCode::ROOM_FULL,
                    format!("the room is full ({max} members)"),
                ));
            }
        }
        // From here on nothing fails.
        if let Some(old) = older {
            self.send_duplicate_kick(old, out);
            self.remove_session(old, false, out);
        }
        let id = self.new_session_id();
        let max_members = match login.max_member_count {
            0 => self.limits.default_max_member_count,
            n => n,
        };
        let app = self.apps.entry(login.app_id).or_default();
        let room = match app.rooms.entry(login.room_id.clone()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let remote = remote.unwrap_or_default();
                out.push(Output::Cluster(ClusterCommand::Follow {
                    app: login.app_id,
                    room: login.room_id.clone(),
                    cursor: remote.cursor,
                    seq: remote.seq,
                }));
                let extra = remote.extra.into_iter().map(|i| (i.key.clone(), i)).collect();
                e.insert(Room {
                    max_members,
                    users: BTreeMap::new(),
                    streams: BTreeSet::new(),
                    extra,
                    rates: im::RoomRates::default(),
                    count_due: None,
                    pending_adds: BTreeMap::new(),
                    remote_users: remote
                        .users
                        .into_iter()
                        .map(|(owner, u)| (u.user_id.clone(), (owner, u)))
                        .collect(),
                    remote_streams: remote
                        .streams
                        .into_iter()
                        .map(|(owner, s)| (s.stream_id.clone(), (owner, s)))
                        .collect(),
                })
            }
        };
        room.users.insert(login.user.user_id.clone(), id);
        self.sessions.insert(
            id,
            Session {
                app: login.app_id,
                room: login.room_id.clone(),
                user: login.user.clone(),
                user_status_notify: login.user_status_notify,
                resume_key: ResumeKey(resume_key),
                grant,
                publishes: Vec::new(),
                plays: BTreeSet::new(),
                epoch: 1,
                detached_until: None,
                token_due: None,
                token_warned: false,
                quality_at: None,
                mute_window: None,
                broadcast_rate: im::Rate::default(),
            },
        );
        self.arm_token(id);
        out.push(Output::Send {
            to: id,
            msg: self.login_ok(id, login.seq, false),
        });
        self.extra_after_login(id, out);
        let room = self
            .apps
            .get_mut(&login.app_id)
            .and_then(|a| a.rooms.get_mut(&login.room_id));
        if let (None, Some(room)) = (older, room) {
            *room.pending_adds.entry(login.user.user_id.clone()).or_default() += 1;
            if !room.remote_users.contains_key(&login.user.user_id) {
                let to = room_recipients(&self.sessions, room, id, true);
                broadcast(
                    out,
                    to,
                    ServerMsg::UserUpdate {
                        room_id: login.room_id.clone(),
                        update_type: UpdateType::Add,
                        users: vec![login.user.clone()],
                    },
                );
            }
            out.push(Output::Cluster(ClusterCommand::Change {
                app: login.app_id,
                room: login.room_id.clone(),
                change: RoomChange::UserAdd(login.user.clone()),
            }));
        }
        Ok(Attached {
            session: id,
            epoch: 1,
            resumed: false,
        })
    }

    /// `login_ok` for session `id` with the room as it is now.
    fn login_ok(&self, id: SessionId, seq: u32, resumed: bool) -> ServerMsg {
        let s = &self.sessions[&id];
        let app = self.apps.get(&s.app);
        let room = app.and_then(|a| a.rooms.get(&s.room));
        let users = match room {
            Some(room) if s.user_status_notify => self
                .room_users(room)
                .into_iter()
                .filter(|u| u.user_id != s.user.user_id)
                .collect(),
            _ => Vec::new(),
        };
        let streams = match (app, room) {
            (Some(app), Some(room)) => room_streams(app, room),
            _ => Vec::new(),
        };
        ServerMsg::LoginOk(LoginOk {
            seq,
            session_id: id.to_string(),
            resume_key: s.resume_key.0.clone(),
            room_id: s.room.clone(),
            resumed,
            users,
            streams,
            heartbeat_ms: self.limits.heartbeat_ms,
            session_timeout_ms: self.limits.session_timeout_ms,
            grace_ms: ms_u32(self.limits.grace),
            token_expire: s.grant.token_expire,
            // The signaling shell adds the TURN credentials (`crate::turn`).
            ice_servers: Vec::new(),
        })
    }

    /// Ends a session at once: `ok`, then its connection closes; the room gets `stream_update`
    /// Delete for its streams and `user_update` Delete (opted-in sessions); players of its streams
    /// get `play_update` false.
    pub fn logout(&mut self, id: SessionId, seq: u32, out: &mut Vec<Output>) -> Result<(), HuddleError> {
        if !self.sessions.contains_key(&id) {
            return Err(not_logged_in());
        }
        out.push(Output::Send {
            to: id,
            msg: ServerMsg::Ok { seq },
        });
        out.push(Output::Close { session: id });
        self.remove_session(id, true, out);
        Ok(())
    }

    /// Ends a session from the server side (admin, shutdown): it gets `kicked` with `code`, its
    /// connection closes, and it leaves the room as on logout. Returns whether the session existed.
    pub fn kick(&mut self, id: SessionId, code: ErrorCode, message: &str, out: &mut Vec<Output>) -> bool {
        if !self.sessions.contains_key(&id) {
            return false;
        }
        out.push(Output::Send {
            to: id,
            msg: ServerMsg::Kicked {
                code,
                message: message.into(),
            },
        });
        out.push(Output::Close { session: id });
        self.remove_session(id, true, out);
        true
    }

    /// Removes a session with its streams and plays. `leaves`: the user leaves the room (logout,
    /// expiry) rather than being replaced by a newer session of the same user (duplicate login).
    /// Tells session `id` it is kicked out as a duplicate login (1002050) and closes it.
    fn send_duplicate_kick(&self, id: SessionId, out: &mut Vec<Output>) {
        out.push(Output::Send {
            to: id,
            msg: ServerMsg::Kicked {
                code: ErrorCode::KICKED_DUPLICATE_LOGIN,
                message: "the same user ID logged in to this room elsewhere".into(),
            },
        });
        out.push(Output::Close { session: id });
    }

    /// Ends session `id` because its user logged in to the room on another node.
    fn kick_duplicate(&mut self, id: SessionId, out: &mut Vec<Output>) {
        self.send_duplicate_kick(id, out);
        self.remove_session(id, true, out);
    }

    fn remove_session(&mut self, id: SessionId, leaves: bool, out: &mut Vec<Output>) {
        let Some(s) = self.sessions.remove(&id) else {
            return;
        };
        if let Some(until) = s.detached_until {
            self.grace_timers.remove(&(until, id));
        }
        if let Some(due) = s.token_due {
            self.token_timers.remove(&(due, id));
        }
        out.push(Output::Media(MediaCommand::SessionGone { session: id }));
        let sessions = &self.sessions;
        let Some(app) = self.apps.get_mut(&s.app) else {
            return;
        };
        for stream_id in &s.plays {
            remove_player(app, s.app, stream_id, id, out);
        }
        let mut gone = Vec::new();
        for stream_id in &s.publishes {
            if let Some(p) = app.streams.remove(stream_id) {
                if let Some(room) = app.rooms.get_mut(&p.room) {
                    room.streams.remove(stream_id);
                }
                play_update(sessions, app, stream_id, false, out);
                out.push(Output::Cluster(ClusterCommand::Change {
                    app: s.app,
                    room: p.room.clone(),
                    change: RoomChange::StreamDelete(stream_id.clone()),
                }));
                gone.push(p.info);
            }
        }
        let Some(room) = app.rooms.get_mut(&s.room) else {
            return;
        };
        if !gone.is_empty() {
            let to = room_recipients(sessions, room, id, false);
            broadcast(
                out,
                to,
                ServerMsg::StreamUpdate {
                    room_id: s.room.clone(),
                    update_type: UpdateType::Delete,
                    streams: gone,
                },
            );
        }
        if leaves {
            if room.users.get(&s.user.user_id) == Some(&id) {
                room.users.remove(&s.user.user_id);
            }
            out.push(Output::Cluster(ClusterCommand::Change {
                app: s.app,
                room: s.room.clone(),
                change: RoomChange::UserDelete(s.user.user_id.clone()),
            }));
            if !room.remote_users.contains_key(&s.user.user_id) {
                let to = room_recipients(sessions, room, id, true);
                broadcast(
                    out,
                    to,
                    ServerMsg::UserUpdate {
                        room_id: s.room.clone(),
                        update_type: UpdateType::Delete,
                        users: vec![s.user.clone()],
                    },
                );
            }
        }
        if room.users.is_empty() {
            app.rooms.remove(&s.room);
            out.push(Output::Cluster(ClusterCommand::Unfollow {
                app: s.app,
                room: s.room.clone(),
            }));
        }
        if app.rooms.is_empty() {
            self.apps.remove(&s.app);
        }
    }

    /// Whether session `id` may publish `stream_id` now, with the error [`Registry::publish`]
    /// would give (privileges, uniqueness in this node's AppID, limits), without changing
    /// anything: what the shell checks before it claims the ID in the cluster store.
    pub fn check_publish(&self, id: SessionId, stream_id: &StreamId) -> Result<PublishCheck, HuddleError> {
        let s = self.sessions.get(&id).ok_or_else(not_logged_in)?;
        check_publish(s.grant.privileges.as_ref(), stream_id)?;
        let app = self
            .apps
            .get(&s.app)
            .ok_or_else(|| internal("session without app"))?;
        if let Some(p) = app.streams.get(stream_id) {
            if p.session == id {
                return Ok(PublishCheck::Already);
            }
            return Err(err(
                ErrorCode::STREAM_ID_EXISTS,
                format!("the stream ID {stream_id} is already published in this AppID"),
            ));
        }
        if s.publishes.len() >= self.limits.max_streams_per_session {
            return Err(err(
                ErrorCode::TOO_MANY_STREAMS,
                format!(
                    "a session publishes at most {} streams",
                    self.limits.max_streams_per_session
                ),
            ));
        }
        if app.streams.len() >= self.limits.max_streams_per_app {
            return Err(err(
                ErrorCode::TOO_MANY_STREAMS,
                format!(
                    "the AppID has reached its limit of {} streams",
                    self.limits.max_streams_per_app
                ),
            ));
        }
        Ok(PublishCheck::New)
    }

    /// Publishes `stream_id` (extra info already validated): checked against the session's token
    /// privileges (1003025), unique in the AppID (1003028), idempotent for the same session, within
    /// the per-session and per-app limits (1003040). Answers `ok`; the room's other sessions get
    /// `stream_update` Add and the stream's players `play_update` true.
    pub fn publish(
        &mut self,
        id: SessionId,
        seq: u32,
        stream_id: &StreamId,
        extra_info: &str,
        out: &mut Vec<Output>,
    ) -> Result<(), HuddleError> {
        if self.check_publish(id, stream_id)? == PublishCheck::Already {
            out.push(Output::Send {
                to: id,
                msg: ServerMsg::Ok { seq },
            });
            return Ok(());
        }
        // `check_publish` has checked the limits.
        let s = self.sessions.get(&id).ok_or_else(not_logged_in)?;
        let app = self
            .apps
            .get(&s.app)
            .ok_or_else(|| internal("session without app"))?;
        if !app.rooms.contains_key(&s.room) {
            return Err(internal("session without room"));
        }
        // From here on nothing fails.
        let info = StreamInfo {
            user_id: s.user.user_id.clone(),
            user_name: s.user.user_name.clone(),
            stream_id: stream_id.clone(),
            extra_info: extra_info.to_string(),
            mic_state: DeviceState::Open,
            camera_state: DeviceState::Open,
        };
        let room_id = s.room.clone();
        let app_id = s.app;
        if let Some(s) = self.sessions.get_mut(&id) {
            s.publishes.push(stream_id.clone());
        }
        let sessions = &self.sessions;
        let Some(app) = self.apps.get_mut(&app_id) else {
            return Err(internal("app vanished"));
        };
        app.streams.insert(
            stream_id.clone(),
            Published {
                session: id,
                room: room_id.clone(),
                info: info.clone(),
            },
        );
        let Some(room) = app.rooms.get_mut(&room_id) else {
            return Err(internal("room vanished"));
        };
        room.streams.insert(stream_id.clone());
        // The ID was another node's (its publisher moved here before that node's entry was
        // reaped): the members knew the stream already, and its players here stop pulling it.
        let was_remote = room.remote_streams.remove(stream_id);
        out.push(Output::Send {
            to: id,
            msg: ServerMsg::Ok { seq },
        });
        if was_remote.is_some() && app.players.contains_key(stream_id) {
            out.push(Output::Media(MediaCommand::PullMoved {
                app: app_id,
                stream_id: stream_id.clone(),
                owner: None,
            }));
        } else if let Some(at) = self.lingering.remove(&(app_id, stream_id.clone())) {
            // A lingering pull of it stops: the stream is published here now.
            self.linger_timers.remove(&(at, app_id, stream_id.clone()));
            out.push(Output::Media(MediaCommand::PullMoved {
                app: app_id,
                stream_id: stream_id.clone(),
                owner: None,
            }));
        }
        out.push(Output::Cluster(ClusterCommand::Change {
            app: app_id,
            room: room_id.clone(),
            change: RoomChange::StreamAdd(info.clone()),
        }));
        if was_remote.as_ref().is_none_or(|(_, old)| *old != info) {
            let to = room_recipients(sessions, room, id, false);
            broadcast(
                out,
                to,
                ServerMsg::StreamUpdate {
                    room_id,
                    update_type: UpdateType::Add,
                    streams: vec![info],
                },
            );
        }
        play_update(sessions, app, stream_id, true, out);
        Ok(())
    }

    /// Stops publishing `stream_id` (1004002 if this session does not publish it). Answers `ok`;
    /// the room's other sessions get `stream_update` Delete and the players `play_update` false.
    pub fn unpublish(
        &mut self,
        id: SessionId,
        seq: u32,
        stream_id: &StreamId,
        out: &mut Vec<Output>,
    ) -> Result<(), HuddleError> {
        let s = self.sessions.get_mut(&id).ok_or_else(not_logged_in)?;
        let Some(pos) = s.publishes.iter().position(|p| p == stream_id) else {
            return Err(err(
                ErrorCode::STREAM_NOT_FOUND,
                format!("this session does not publish the stream ID {stream_id}"),
            ));
        };
        s.publishes.remove(pos);
        let (app_id, room_id) = (s.app, s.room.clone());
        out.push(Output::Send {
            to: id,
            msg: ServerMsg::Ok { seq },
        });
        let sessions = &self.sessions;
        let Some(app) = self.apps.get_mut(&app_id) else {
            return Ok(());
        };
        let Some(p) = app.streams.remove(stream_id) else {
            return Ok(());
        };
        out.push(Output::Media(MediaCommand::ClosePublish {
            session: id,
            app: app_id,
            stream_id: stream_id.clone(),
        }));
        out.push(Output::Cluster(ClusterCommand::Change {
            app: app_id,
            room: room_id.clone(),
            change: RoomChange::StreamDelete(stream_id.clone()),
        }));
        if let Some(room) = app.rooms.get_mut(&room_id) {
            room.streams.remove(stream_id);
            let to = room_recipients(sessions, room, id, false);
            broadcast(
                out,
                to,
                ServerMsg::StreamUpdate {
                    room_id,
                    update_type: UpdateType::Delete,
                    streams: vec![p.info],
                },
            );
        }
        play_update(sessions, app, stream_id, false, out);
        Ok(())
    }

    /// Plays `stream_id` of the session's AppID, published or not, in any room (idempotent; at most
    /// `max_plays_per_session`, 1004030). Answers `ok`, then `play_update` with its availability now.
    pub fn play(
        &mut self,
        id: SessionId,
        seq: u32,
        stream_id: &StreamId,
        out: &mut Vec<Output>,
    ) -> Result<(), HuddleError> {
        let s = self.sessions.get_mut(&id).ok_or_else(not_logged_in)?;
        let app = self
            .apps
            .get_mut(&s.app)
            .ok_or_else(|| internal("session without app"))?;
        if !s.plays.contains(stream_id) {
            if s.plays.len() >= self.limits.max_plays_per_session {
                return Err(err(
                    ErrorCode::TOO_MANY_PLAYS,
                    format!(
                        "a session plays at most {} streams",
                        self.limits.max_plays_per_session
                    ),
                ));
            }
            s.plays.insert(stream_id.clone());
            app.players.entry(stream_id.clone()).or_default().insert(id);
        }
        let remote = remote_owner(app, stream_id);
        let available = app.streams.contains_key(stream_id) || remote.is_some();
        out.push(Output::Send {
            to: id,
            msg: ServerMsg::Ok { seq },
        });
        if let Some(owner) = remote {
            // A lingering pull goes on for this player (the puller keeps a link it has).
            if let Some(at) = self.lingering.remove(&(s.app, stream_id.clone())) {
                self.linger_timers.remove(&(at, s.app, stream_id.clone()));
            }
            out.push(Output::Media(MediaCommand::Pull {
                app: s.app,
                stream_id: stream_id.clone(),
                owner: owner.to_string(),
            }));
        }
        out.push(Output::Send {
            to: id,
            msg: ServerMsg::PlayUpdate {
                stream_id: stream_id.clone(),
                available,
            },
        });
        if let Some(info) = stream_info(app, stream_id) {
            device_states(out, &[id], info);
        }
        Ok(())
    }

    /// Stops playing `stream_id`; `ok` also when not playing it.
    pub fn stop_play(
        &mut self,
        id: SessionId,
        seq: u32,
        stream_id: &StreamId,
        out: &mut Vec<Output>,
    ) -> Result<(), HuddleError> {
        let s = self.sessions.get_mut(&id).ok_or_else(not_logged_in)?;
        let app_id = s.app;
        if s.plays.remove(stream_id)
            && let Some(app) = self.apps.get_mut(&s.app)
        {
            remove_player(app, app_id, stream_id, id, out);
        }
        out.push(Output::Send {
            to: id,
            msg: ServerMsg::Ok { seq },
        });
        out.push(Output::Media(MediaCommand::ClosePlay {
            session: id,
            app: app_id,
            stream_id: stream_id.clone(),
        }));
        Ok(())
    }

    /// A session's own network quality (`network_quality`): relayed to the other attached
    /// sessions of its room on this node, and answered `ok`. A report less than
    /// [`QUALITY_REPORT_MIN_INTERVAL`] after the session's last one is refused (1009050) and not
    /// relayed, so that one client cannot make the room's traffic grow with its own rate (the
    /// SDKs report every 2 s).
    pub fn network_quality(
        &mut self,
        id: SessionId,
        seq: u32,
        upstream: StreamQualityLevel,
        downstream: StreamQualityLevel,
        now: Instant,
        out: &mut Vec<Output>,
    ) -> Result<(), HuddleError> {
        let s = self.sessions.get_mut(&id).ok_or_else(not_logged_in)?;
        if s.quality_at
            .is_some_and(|at| now.saturating_duration_since(at) < QUALITY_REPORT_MIN_INTERVAL)
        {
            return Err(HuddleError::from(ErrorCode::QUALITY_REPORT_TOO_FREQUENT));
        }
        s.quality_at = Some(now);
        let msg = ServerMsg::NetworkQuality {
            user_id: s.user.user_id.clone(),
            upstream,
            downstream,
        };
        let to = self
            .apps
            .get(&s.app)
            .and_then(|a| a.rooms.get(&s.room))
            .map(|room| room_recipients(&self.sessions, room, id, false))
            .unwrap_or_default();
        out.push(Output::Send {
            to: id,
            msg: ServerMsg::Ok { seq },
        });
        broadcast(out, to, msg);
        Ok(())
    }

    /// Counts one mute change of the session against [`MUTE_CHANGES_PER_SECOND`] (1009062 beyond).
    fn count_mute_change(s: &mut Session, now: Instant) -> Result<(), HuddleError> {
        match &mut s.mute_window {
            Some((start, n)) if now.saturating_duration_since(*start) < Duration::from_secs(1) => {
                if *n >= MUTE_CHANGES_PER_SECOND {
                    return Err(HuddleError::from(ErrorCode::MUTE_TOO_FREQUENT));
                }
                *n += 1;
            }
            _ => s.mute_window = Some((now, 1)),
        }
        Ok(())
    }

    /// The publisher's microphone (`Audio`) or camera (`Video`) state of a stream it publishes
    /// (`set_device_state`; 1009060 for another stream, 1009062 when too frequent). Answers `ok`;
    /// a change is kept with the stream (the cluster sees it as the stream's new info) and sent
    /// to the stream's players here as `remote_device_state` (other nodes send it to theirs in
    /// [`Registry::remote_update`]).
    #[allow(clippy::too_many_arguments)]
    pub fn set_device_state(
        &mut self,
        id: SessionId,
        seq: u32,
        stream_id: &StreamId,
        track: TrackKind,
        state: DeviceState,
        now: Instant,
        out: &mut Vec<Output>,
    ) -> Result<(), HuddleError> {
        let s = self.sessions.get_mut(&id).ok_or_else(not_logged_in)?;
        if !s.publishes.contains(stream_id) {
            return Err(err(
                ErrorCode::MUTE_NOT_PUBLISHING,
                format!("this session does not publish the stream ID {stream_id}"),
            ));
        }
        Self::count_mute_change(s, now)?;
        let (app_id, room_id) = (s.app, s.room.clone());
        out.push(Output::Send {
            to: id,
            msg: ServerMsg::Ok { seq },
        });
        let sessions = &self.sessions;
        let Some(app) = self.apps.get_mut(&app_id) else {
            return Ok(());
        };
        let Some(p) = app.streams.get_mut(stream_id) else {
            return Ok(());
        };
        let slot = match track {
            TrackKind::Audio => &mut p.info.mic_state,
            TrackKind::Video => &mut p.info.camera_state,
        };
        if *slot == state {
            return Ok(());
        }
        *slot = state;
        let info = p.info.clone();
        out.push(Output::Cluster(ClusterCommand::Change {
            app: app_id,
            room: room_id,
            change: RoomChange::StreamAdd(info),
        }));
        let to = attached_players(sessions, &app.players, stream_id);
        broadcast(
            out,
            to,
            ServerMsg::RemoteDeviceState {
                stream_id: stream_id.clone(),
                track,
                state,
            },
        );
        Ok(())
    }

    /// Checks a `mute_play` of `stream_id` (1009061 when the session does not play it, 1009062
    /// when too frequent) and counts it; the media plane does the muting. Returns the app.
    pub fn check_mute_play(
        &mut self,
        id: SessionId,
        stream_id: &StreamId,
        now: Instant,
    ) -> Result<AppId, HuddleError> {
        let s = self.sessions.get_mut(&id).ok_or_else(not_logged_in)?;
        if !s.plays.contains(stream_id) {
            return Err(err(
                ErrorCode::MUTE_NOT_PLAYING,
                format!("this session does not play the stream ID {stream_id}"),
            ));
        }
        Self::count_mute_change(s, now)?;
        Ok(s.app)
    }

    /// Replaces the session's grant after a token renewal (checked by the caller as at login).
    /// The new privileges must allow every stream the session publishes now (else 1003025 and
    /// nothing changes: unpublish first). Answers `ok`.
    pub fn renew(
        &mut self,
        id: SessionId,
        seq: u32,
        grant: Grant,
        out: &mut Vec<Output>,
    ) -> Result<(), HuddleError> {
        let s = self.sessions.get_mut(&id).ok_or_else(not_logged_in)?;
        for stream_id in &s.publishes {
            check_publish(grant.privileges.as_ref(), stream_id).map_err(|e| {
                err(
                    e.code,
                    format!(
                        "{} (this session publishes {stream_id} now: unpublish it before renewing with this token)",
                        e.message
                    ),
                )
            })?;
        }
        s.grant = grant;
        self.arm_token(id);
        out.push(Output::Send {
            to: id,
            msg: ServerMsg::Ok { seq },
        });
        Ok(())
    }

    /// The connection of attachment `epoch` broke: the session stays, detached, until the returned
    /// deadline (`now` + grace); nobody sees a change. `None` (nothing done) when the session is
    /// gone, already detached, or re-attached since (another epoch).
    pub fn detach(&mut self, id: SessionId, epoch: u64, now: Instant) -> Option<Detached> {
        let s = self.sessions.get_mut(&id)?;
        if s.epoch != epoch || !s.attached() {
            return None;
        }
        let deadline = now + self.limits.grace;
        s.epoch += 1;
        s.detached_until = Some(deadline);
        self.grace_timers.insert((deadline, id));
        Some(Detached {
            epoch: s.epoch,
            deadline,
        })
    }

    /// The grace period of detachment `epoch` is over: the session ends as on logout (without the
    /// `ok`). A no-op returning `false` if the session was resumed or ended meanwhile, or if `now`
    /// is before the deadline.
    pub fn expire(&mut self, id: SessionId, epoch: u64, now: Instant, out: &mut Vec<Output>) -> bool {
        let due = self
            .sessions
            .get(&id)
            .is_some_and(|s| s.epoch == epoch && s.detached_until.is_some_and(|until| now >= until));
        if due {
            self.remove_session(id, true, out);
        }
        due
    }

    /// The expiry (Unix seconds) of the session's token; `None` for a session without one
    /// (AppSign login) or a session that does not exist.
    pub fn token_expire(&self, id: SessionId) -> Option<i64> {
        self.sessions.get(&id).and_then(|s| s.grant.token_expire)
    }

    /// Warns the session that its token, expiring at `expire`, expires soon (`token_will_expire`
    /// with the seconds left at `now`, Unix seconds). A no-op returning `false` when the session
    /// is gone or holds another token now (renewed), or is detached (nobody to tell).
    pub fn warn_token(&self, id: SessionId, expire: i64, now: i64, out: &mut Vec<Output>) -> bool {
        let due = self
            .sessions
            .get(&id)
            .is_some_and(|s| s.attached() && s.grant.token_expire == Some(expire));
        if due {
            out.push(Output::Send {
                to: id,
                msg: ServerMsg::TokenWillExpire {
                    expire,
                    remain_secs: (expire - now).max(0),
                },
            });
        }
        due
    }

    /// Ends the session if its token has expired at `now` (Unix seconds) without a renewal: it
    /// gets `kicked` 1002056 (if attached) and leaves the room as on logout (its streams are
    /// deleted, the room sees `stream_update` and `user_update` Delete). A no-op returning `false`
    /// when the session is gone, has no token, or holds a token still valid at `now` (a token is
    /// valid while `now < expire`).
    pub fn expire_token(&mut self, id: SessionId, now: i64, out: &mut Vec<Output>) -> bool {
        let due = self
            .sessions
            .get(&id)
            .is_some_and(|s| s.grant.token_expire.is_some_and(|e| now >= e));
        due && self.kick(
            id,
            ErrorCode::KICKED_TOKEN_EXPIRED,
            "the token expired and was not renewed",
            out,
        )
    }

    /// (Re-)arms the token timer of session `id` for the token it holds now (disarms it for a
    /// session without one): the warning [`TOKEN_WARNING`] before the expiry, then the expiry.
    fn arm_token(&mut self, id: SessionId) {
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        if let Some(due) = s.token_due.take() {
            self.token_timers.remove(&(due, id));
        }
        s.token_warned = false;
        let Some(expire) = s.grant.token_expire else {
            return;
        };
        let expire_ms = u64::try_from(expire).unwrap_or(0).saturating_mul(1000);
        let warning_ms = u64::try_from(TOKEN_WARNING.as_millis()).unwrap_or(u64::MAX);
        let due = expire_ms.saturating_sub(warning_ms);
        s.token_due = Some(due);
        self.token_timers.insert((due, id));
    }

    /// When the next timer is due, on each clock.
    pub fn poll_timeout(&self) -> Timeout {
        let grace = self.grace_timers.first().map(|(at, _)| *at);
        let count = self.count_timers.first().map(|(at, _, _)| *at);
        let linger = self.linger_timers.first().map(|(at, _, _)| *at);
        Timeout {
            at: [grace, count, linger].into_iter().flatten().min(),
            unix_ms: self.token_timers.first().map(|(due, _)| *due),
        }
    }

    /// Runs every timer due at `now`, in deadline order (grace periods first, then tokens):
    ///
    /// - a detached session whose grace period is over ends as on logout ([`Registry::expire`]);
    /// - a session whose token expires within [`TOKEN_WARNING`] gets `token_will_expire`
    ///   ([`Registry::warn_token`]; not while detached: a resume re-arms the warning);
    /// - a session whose token has expired without a renewal is kicked with 1002056
    ///   ([`Registry::expire_token`]).
    ///
    /// Ending sessions push [`MediaCommand::SessionGone`]. Returns the number of timers run.
    pub fn handle_timeout(&mut self, now: Clock, out: &mut Vec<Output>) -> usize {
        let mut ran = 0;
        while let Some(&(until, id)) = self.grace_timers.first() {
            if until > now.at {
                break;
            }
            self.grace_timers.pop_first();
            ran += 1;
            if let Some(epoch) = self.sessions.get(&id).map(|s| s.epoch) {
                self.expire(id, epoch, now.at, out);
            }
        }
        while let Some(&(due, id)) = self.token_timers.first() {
            if due > now.unix_ms {
                break;
            }
            self.token_timers.pop_first();
            ran += 1;
            let Some(s) = self.sessions.get_mut(&id) else {
                continue;
            };
            s.token_due = None;
            let Some(expire) = s.grant.token_expire else {
                continue;
            };
            if s.token_warned {
                self.expire_token(id, now.unix_secs(), out);
                continue;
            }
            s.token_warned = true;
            let expire_ms = u64::try_from(expire).unwrap_or(0).saturating_mul(1000);
            s.token_due = Some(expire_ms);
            self.token_timers.insert((expire_ms, id));
            self.warn_token(id, expire, now.unix_secs(), out);
        }
        ran + self.handle_count_timers(now.at, out) + self.handle_linger_timers(now.at, out)
    }

    /// Arms the linger of a pull whose last player here left ([`MediaCommand::PullIdle`]), at
    /// `now` (the shell's clock): the pull goes on until `now` + `pull_linger` and stops then
    /// ([`MediaCommand::Unpull`]) unless a player came back; with no linger it stops at once.
    pub fn linger_pull(&mut self, app_id: AppId, stream_id: &StreamId, now: Instant, out: &mut Vec<Output>) {
        let key = (app_id, stream_id.clone());
        if self
            .apps
            .get(&app_id)
            .is_some_and(|a| a.players.contains_key(stream_id))
        {
            return;
        }
        if let Some(at) = self.lingering.remove(&key) {
            self.linger_timers.remove(&(at, app_id, stream_id.clone()));
        }
        if self.limits.pull_linger.is_zero() {
            out.push(Output::Media(MediaCommand::Unpull {
                app: app_id,
                stream_id: stream_id.clone(),
            }));
            return;
        }
        let at = now + self.limits.pull_linger;
        self.linger_timers.insert((at, app_id, stream_id.clone()));
        self.lingering.insert(key, at);
    }

    /// Whether the pull of `stream_id` lingers (no player here, not stopped yet).
    pub fn lingers(&self, app_id: AppId, stream_id: &StreamId) -> bool {
        self.lingering.contains_key(&(app_id, stream_id.clone()))
    }

    /// Ends the linger of a pull early, because its stream left or moved: the pull stops now
    /// (`moved_here`: published on this node now, so the link stops and the stream's local
    /// publisher stays). Returns whether it lingered.
    fn end_linger(
        &mut self,
        app_id: AppId,
        stream_id: &StreamId,
        moved_here: bool,
        out: &mut Vec<Output>,
    ) -> bool {
        let Some(at) = self.lingering.remove(&(app_id, stream_id.clone())) else {
            return false;
        };
        self.linger_timers.remove(&(at, app_id, stream_id.clone()));
        out.push(Output::Media(if moved_here {
            MediaCommand::PullMoved {
                app: app_id,
                stream_id: stream_id.clone(),
                owner: None,
            }
        } else {
            MediaCommand::Unpull {
                app: app_id,
                stream_id: stream_id.clone(),
            }
        }));
        true
    }

    /// Stops the pulls whose linger ended with no player back.
    fn handle_linger_timers(&mut self, now: Instant, out: &mut Vec<Output>) -> usize {
        let mut ran = 0;
        while let Some((at, app_id, stream_id)) = self.linger_timers.first().cloned() {
            if at > now {
                break;
            }
            ran += 1;
            let here = self.publishes_here(app_id, &stream_id);
            self.end_linger(app_id, &stream_id, here, out);
        }
        ran
    }

    /// The users of `room` on every node, sorted by user ID (a user on two nodes once: the
    /// local session's).
    fn room_users(&self, room: &Room) -> Vec<User> {
        let mut all: BTreeMap<&UserId, &User> =
            room.remote_users.iter().map(|(id, (_, u))| (id, u)).collect();
        for (uid, sid) in &room.users {
            if let Some(s) = self.sessions.get(sid) {
                all.insert(uid, &s.user);
            }
        }
        all.into_values().cloned().collect()
    }

    /// This node's own change, read back from the room's history (the reader skips it
    /// otherwise): an add of a user tells that the user's login here has its place in the
    /// history's order now (see [`Registry::remote_update`] on duplicate logins).
    pub fn own_update(&mut self, app_id: AppId, room_id: &RoomId, change: &RoomChange) {
        let RoomChange::UserAdd(user) = change else {
            return;
        };
        if let Some(room) = self.apps.get_mut(&app_id).and_then(|a| a.rooms.get_mut(room_id))
            && let Some(n) = room.pending_adds.get_mut(&user.user_id)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                room.pending_adds.remove(&user.user_id);
            }
        }
    }

    /// Stops the publish of `stream_id` by `session` because another node took its ID over
    /// ([`crate::store::Store::take_fenced`]): as [`Registry::stop_stream`] with 1009041. Returns
    /// whether the session published it.
    pub fn stop_taken_over(
        &mut self,
        app_id: AppId,
        stream_id: &StreamId,
        session: SessionId,
        out: &mut Vec<Output>,
    ) -> bool {
        let Some(room) = self
            .apps
            .get(&app_id)
            .and_then(|a| a.streams.get(stream_id))
            .filter(|p| p.session == session)
            .map(|p| p.room.clone())
        else {
            return false;
        };
        self.stop_stream(
            app_id,
            &room,
            stream_id,
            ErrorCode::STREAM_TAKEN_OVER,
            "the stream ID was taken over on another node: this publish stopped",
            out,
        )
    }

    /// Ends this node's session of `user_id` in the room because the user's entry in the
    /// cluster is another node's later login (found when this node restored its part after a
    /// lost lease): `kicked` 1002050, as for a duplicate login. Returns whether there was one.
    pub fn kick_replaced(
        &mut self,
        app_id: AppId,
        room_id: &RoomId,
        user_id: &UserId,
        out: &mut Vec<Output>,
    ) -> bool {
        match self.session_of(app_id, room_id, user_id) {
            Some(id) => {
                self.kick_duplicate(id, out);
                true
            }
            None => false,
        }
    }

    /// Another node's part of a room changed: `owner` names that node (and its lease), as the
    /// store does. The room's attached members here see it as they see local changes
    /// (`user_update` to those that asked for it, `stream_update` to all), except when it
    /// changes nothing they see: a user or stream also present on this node, or an add that
    /// only renews an entry (a node registered anew), or a delete by an owner that no longer
    /// holds the entry. A room this node does not follow is ignored. Returns whether the
    /// registry changed.
    pub fn remote_update(
        &mut self,
        app_id: AppId,
        room_id: &RoomId,
        owner: &str,
        change: RoomChange,
        out: &mut Vec<Output>,
    ) -> bool {
        let change = match change {
            RoomChange::Message(m) => {
                if !self.follows(app_id, room_id) {
                    return false;
                }
                self.deliver_local(app_id, room_id, &m, out);
                return true;
            }
            RoomChange::StreamExtraInfo(info) => {
                return self.remote_stream_extra_info(app_id, room_id, owner, info, out);
            }
            RoomChange::RoomExtraInfo(info) => {
                return self.remote_room_extra_info(app_id, room_id, info, out);
            }
            other => other,
        };
        let sessions = &self.sessions;
        let Some(app) = self.apps.get_mut(&app_id) else {
            return false;
        };
        let players = &app.players;
        let Some(room) = app.rooms.get_mut(room_id) else {
            return false;
        };
        // A stream of the room now published, or no longer, on another node: its players here.
        let mut availability: Option<(StreamId, bool)> = None;
        let (notify_only, update) = match change {
            RoomChange::UserAdd(user) => {
                let earlier = room
                    .remote_users
                    .get(&user.user_id)
                    .map(|(o, _)| owner_node(o).to_string());
                let known = earlier.is_some();
                let shadowed = room.users.get(&user.user_id).copied();
                if shadowed.is_some() && room.pending_adds.get(&user.user_id).is_some_and(|n| *n > 0) {
                    // This node's own add of the user is still on its way into the room's
                    // history: the session here is the later login, and the other node kicks
                    // its own when it reads that add (one winner, the same on every node).
                    return true;
                }
                room.remote_users
                    .insert(user.user_id.clone(), (owner.to_string(), user.clone()));
                if let Some(older) = shadowed
                    && earlier.as_deref() != Some(owner_node(owner))
                {
                    // The same user logged in to the room on another node after the session
                    // here (a node re-adding what it had is a renewal, not a login): the older
                    // session is kicked, as on one node. Its leave changes nothing the others
                    // see: the user stays, on the other node.
                    self.kick_duplicate(older, out);
                    return true;
                }
                if known || shadowed.is_some() {
                    return true;
                }
                (
                    true,
                    ServerMsg::UserUpdate {
                        room_id: room_id.clone(),
                        update_type: UpdateType::Add,
                        users: vec![user],
                    },
                )
            }
            RoomChange::UserDelete(user_id) => {
                if room.remote_users.get(&user_id).is_none_or(|(o, _)| o != owner) {
                    return false;
                }
                let Some((_, user)) = room.remote_users.remove(&user_id) else {
                    return false;
                };
                if room.users.contains_key(&user_id) {
                    return true;
                }
                (
                    true,
                    ServerMsg::UserUpdate {
                        room_id: room_id.clone(),
                        update_type: UpdateType::Delete,
                        users: vec![user],
                    },
                )
            }
            RoomChange::StreamAdd(info) => {
                let earlier = room
                    .remote_streams
                    .get(&info.stream_id)
                    .map(|(o, _)| owner_node(o).to_string());
                let known = earlier.is_some();
                let shadowed = room.streams.contains(&info.stream_id);
                let old = room
                    .remote_streams
                    .get(&info.stream_id)
                    .map(|(_, old)| old.clone());
                let changed = old.as_ref().is_some_and(|old| *old != info);
                room.remote_streams
                    .insert(info.stream_id.clone(), (owner.to_string(), info.clone()));
                // Published again on another node (its publisher moved there before the old
                // node's entry was reaped): pulled from there from now on.
                let moved = earlier.as_deref().is_some_and(|n| n != owner_node(owner));
                if moved && !shadowed && players.contains_key(&info.stream_id) {
                    out.push(Output::Media(MediaCommand::PullMoved {
                        app: app_id,
                        stream_id: info.stream_id.clone(),
                        owner: Some(owner.to_string()),
                    }));
                } else if moved
                    && !shadowed
                    && let Some(at) = self.lingering.remove(&(app_id, info.stream_id.clone()))
                {
                    // A lingering pull from the old node stops; a player here pulls it anew.
                    self.linger_timers.remove(&(at, app_id, info.stream_id.clone()));
                    out.push(Output::Media(MediaCommand::Unpull {
                        app: app_id,
                        stream_id: info.stream_id.clone(),
                    }));
                }
                if shadowed || (known && !changed) {
                    return true;
                }
                // Only the publisher's microphone or camera changed: its players here hear of
                // it, and nobody else (the room's stream list is the same).
                if let Some(old) = old.filter(|old| only_devices_differ(old, &info)) {
                    let to = attached_players(sessions, players, &info.stream_id);
                    for (track, state) in device_changes(&old, &info) {
                        broadcast(
                            out,
                            to.clone(),
                            ServerMsg::RemoteDeviceState {
                                stream_id: info.stream_id.clone(),
                                track,
                                state,
                            },
                        );
                    }
                    return true;
                }
                if !known {
                    availability = Some((info.stream_id.clone(), true));
                }
                (
                    false,
                    ServerMsg::StreamUpdate {
                        room_id: room_id.clone(),
                        update_type: UpdateType::Add,
                        streams: vec![info],
                    },
                )
            }
            RoomChange::StreamDelete(stream_id) => {
                if room
                    .remote_streams
                    .get(&stream_id)
                    .is_none_or(|(o, _)| o != owner)
                {
                    return false;
                }
                let Some((_, info)) = room.remote_streams.remove(&stream_id) else {
                    return false;
                };
                if room.streams.contains(&stream_id) {
                    return true;
                }
                availability = Some((stream_id.clone(), false));
                (
                    false,
                    ServerMsg::StreamUpdate {
                        room_id: room_id.clone(),
                        update_type: UpdateType::Delete,
                        streams: vec![info],
                    },
                )
            }
            RoomChange::Message(_) | RoomChange::StreamExtraInfo(_) | RoomChange::RoomExtraInfo(_) => {
                return false;
            }
        };
        let to = room
            .users
            .values()
            .copied()
            .filter(|id| {
                sessions
                    .get(id)
                    .is_some_and(|s| s.attached() && (!notify_only || s.user_status_notify))
            })
            .collect();
        broadcast(out, to, update);
        if let Some((stream_id, false)) = &availability {
            // A lingering pull of a stream that left stops now.
            self.end_linger(app_id, stream_id, false, out);
        }
        if let Some((stream_id, available)) = availability
            && let Some(app) = self.apps.get(&app_id)
            && app.players.contains_key(&stream_id)
        {
            play_update(&self.sessions, app, &stream_id, available, out);
            let cmd = if available {
                MediaCommand::Pull {
                    app: app_id,
                    stream_id,
                    owner: owner.to_string(),
                }
            } else {
                MediaCommand::Unpull {
                    app: app_id,
                    stream_id,
                }
            };
            out.push(Output::Media(cmd));
        }
        true
    }

    /// Brings the other nodes' part of a followed room in line with `remote`, a fresh snapshot
    /// from the store (after a gap in the room's history, or the store lost its data): what is
    /// gone is deleted and what is new added, as [`Registry::remote_update`] would, deletes
    /// first. A room this node does not follow is ignored.
    pub fn remote_sync(
        &mut self,
        app_id: AppId,
        room_id: &RoomId,
        remote: RemoteRoom,
        out: &mut Vec<Output>,
    ) {
        self.apply_snapshot(app_id, room_id, remote, true, out);
    }

    /// Like [`Registry::remote_sync`], but only adds and updates: what the snapshot lacks stays.
    /// For the time after the store lost its data, while the nodes put their parts back (a part
    /// not restored yet is not gone); a full [`Registry::remote_sync`] follows.
    pub fn remote_merge(
        &mut self,
        app_id: AppId,
        room_id: &RoomId,
        remote: RemoteRoom,
        out: &mut Vec<Output>,
    ) {
        self.apply_snapshot(app_id, room_id, remote, false, out);
    }

    fn apply_snapshot(
        &mut self,
        app_id: AppId,
        room_id: &RoomId,
        remote: RemoteRoom,
        deletes: bool,
        out: &mut Vec<Output>,
    ) {
        let Some(room) = self.apps.get(&app_id).and_then(|a| a.rooms.get(room_id)) else {
            return;
        };
        let users: BTreeMap<UserId, (String, User)> = remote
            .users
            .into_iter()
            .map(|(o, u)| (u.user_id.clone(), (o, u)))
            .collect();
        let streams: BTreeMap<StreamId, (String, StreamInfo)> = remote
            .streams
            .into_iter()
            .map(|(o, s)| (s.stream_id.clone(), (o, s)))
            .collect();
        let mut changes = Vec::new();
        for (id, (owner, _)) in &room.remote_streams {
            if deletes && !streams.contains_key(id) {
                changes.push((owner.clone(), RoomChange::StreamDelete(id.clone())));
            }
        }
        for (id, (owner, _)) in &room.remote_users {
            if deletes && !users.contains_key(id) {
                changes.push((owner.clone(), RoomChange::UserDelete(id.clone())));
            }
        }
        for (_, (owner, user)) in users {
            changes.push((owner, RoomChange::UserAdd(user)));
        }
        for (_, (owner, info)) in streams {
            changes.push((owner, RoomChange::StreamAdd(info)));
        }
        for info in remote.extra {
            changes.push((String::new(), RoomChange::RoomExtraInfo(info)));
        }
        for (owner, change) in changes {
            self.remote_update(app_id, room_id, &owner, change, out);
        }
    }

    /// This node's own part of every room it has members in: what it tells the cluster store
    /// again after the store lost it (the node's lease expired, or Redis restarted empty).
    pub fn local_rooms(&self) -> Vec<LocalRoom> {
        let mut rooms = Vec::new();
        for (app_id, app) in &self.apps {
            for (room_id, room) in &app.rooms {
                rooms.push(LocalRoom {
                    app: *app_id,
                    room: room_id.clone(),
                    users: room
                        .users
                        .values()
                        .filter_map(|id| self.sessions.get(id).map(|s| s.user.clone()))
                        .collect(),
                    streams: room
                        .streams
                        .iter()
                        .filter_map(|st| app.streams.get(st).map(|p| p.info.clone()))
                        .collect(),
                });
            }
        }
        rooms
    }

    /// Every stream published on this node, with its app and session: what it claims again
    /// after the store lost its claims.
    pub fn local_publishes(&self) -> Vec<(AppId, StreamId, SessionId)> {
        self.apps
            .iter()
            .flat_map(|(app_id, app)| app.streams.iter().map(|(st, p)| (*app_id, st.clone(), p.session)))
            .collect()
    }

    /// What the shell needs to know about a session, if it exists.
    pub fn session(&self, id: SessionId) -> Option<SessionInfo> {
        self.sessions.get(&id).map(|s| SessionInfo {
            app_id: s.app,
            room_id: s.room.clone(),
            user_id: s.user.user_id.clone(),
            epoch: s.epoch,
            attached: s.attached(),
        })
    }

    /// Whether session `id` publishes `stream_id` now.
    pub fn publishes(&self, id: SessionId, stream_id: &StreamId) -> bool {
        self.sessions
            .get(&id)
            .is_some_and(|s| s.publishes.contains(stream_id))
    }

    /// Whether session `id` plays `stream_id`: `None` if it does not, else whether the stream is
    /// published now.
    pub fn play_status(&self, id: SessionId, stream_id: &StreamId) -> Option<bool> {
        let s = self.sessions.get(&id)?;
        if !s.plays.contains(stream_id) {
            return None;
        }
        Some(
            self.apps
                .get(&s.app)
                .is_some_and(|a| a.streams.contains_key(stream_id) || remote_owner(a, stream_id).is_some()),
        )
    }

    /// Whether a session of this node publishes `stream_id` of `app` now.
    pub fn publishes_here(&self, app: AppId, stream_id: &StreamId) -> bool {
        self.apps
            .get(&app)
            .is_some_and(|a| a.streams.contains_key(stream_id))
    }

    /// The room `room_id` of `app_id` now, if it exists.
    pub fn room(&self, app_id: AppId, room_id: &RoomId) -> Option<RoomView> {
        let app = self.apps.get(&app_id)?;
        let room = app.rooms.get(room_id)?;
        Some(RoomView {
            users: self.room_users(room),
            streams: room_streams(app, room),
        })
    }

    /// The rooms of `app_id` this node has members in, sorted (the server API's room list).
    pub fn room_ids(&self, app_id: AppId) -> Vec<RoomId> {
        let mut ids: Vec<RoomId> = self
            .apps
            .get(&app_id)
            .map(|a| a.rooms.keys().cloned().collect())
            .unwrap_or_default();
        ids.sort();
        ids
    }

    /// This node's session of `user_id` in the room, if it has one (the server API's kick).
    pub fn session_of(&self, app_id: AppId, room_id: &RoomId, user_id: &UserId) -> Option<SessionId> {
        self.apps
            .get(&app_id)?
            .rooms
            .get(room_id)?
            .users
            .get(user_id)
            .copied()
    }

    /// This node's sessions in the room (the server API's close and broadcast).
    pub fn room_sessions(&self, app_id: AppId, room_id: &RoomId) -> Vec<SessionId> {
        self.apps
            .get(&app_id)
            .and_then(|a| a.rooms.get(room_id))
            .map(|r| r.users.values().copied().collect())
            .unwrap_or_default()
    }

    /// The attached sessions of the room on this node (who gets a broadcast message now).
    pub fn room_attached(&self, app_id: AppId, room_id: &RoomId) -> Vec<SessionId> {
        self.room_sessions(app_id, room_id)
            .into_iter()
            .filter(|id| self.sessions.get(id).is_some_and(Session::attached))
            .collect()
    }

    /// Stops `stream_id` of the room from the server side (the server API's `DeleteStream`): as
    /// the publisher's own unpublish, except that the publisher gets `media_state` closed with
    /// `code` instead of an `ok`. Returns whether this node published it in that room.
    pub fn stop_stream(
        &mut self,
        app_id: AppId,
        room_id: &RoomId,
        stream_id: &StreamId,
        code: ErrorCode,
        message: &str,
        out: &mut Vec<Output>,
    ) -> bool {
        let Some(p) = self.apps.get(&app_id).and_then(|a| a.streams.get(stream_id)) else {
            return false;
        };
        if p.room != *room_id {
            return false;
        }
        let session = p.session;
        let mut inner = Vec::new();
        if self.unpublish(session, 0, stream_id, &mut inner).is_err() {
            return false;
        }
        for o in inner {
            match o {
                Output::Send {
                    to,
                    msg: ServerMsg::Ok { .. },
                } if to == session => out.push(Output::Send {
                    to: session,
                    msg: ServerMsg::MediaState {
                        stream_id: stream_id.clone(),
                        kind: huddle_proto::MediaRole::Publish,
                        state: huddle_proto::PeerState::Closed,
                        code,
                        message: message.into(),
                    },
                }),
                o => out.push(o),
            }
        }
        true
    }

    /// Counts of sessions, rooms and streams.
    pub fn stats(&self) -> Stats {
        Stats {
            sessions: self.sessions.len(),
            detached: self.sessions.values().filter(|s| !s.attached()).count(),
            rooms: self.apps.values().map(|a| a.rooms.len()).sum(),
            streams: self.apps.values().map(|a| a.streams.len()).sum(),
        }
    }

    /// Checks every internal invariant; `Err` names the first one broken. Cheap enough for tests and
    /// debug assertions, not for every operation in production.
    pub fn check_invariants(&self) -> Result<(), String> {
        let fail = |m: String| Err(m);
        for (id, s) in &self.sessions {
            let Some(app) = self.apps.get(&s.app) else {
                return fail(format!("{id:?}: no app"));
            };
            let Some(room) = app.rooms.get(&s.room) else {
                return fail(format!("{id:?}: no room"));
            };
            if room.users.get(&s.user.user_id) != Some(id) {
                return fail(format!("{id:?}: not the room's session of its user"));
            }
            if s.publishes.len() > self.limits.max_streams_per_session
                || s.plays.len() > self.limits.max_plays_per_session
            {
                return fail(format!("{id:?}: over a limit"));
            }
            for st in &s.publishes {
                match app.streams.get(st) {
                    Some(p) if p.session == *id && p.room == s.room && room.streams.contains(st) => {}
                    _ => return fail(format!("{id:?}: published {st} not registered")),
                }
            }
            for st in &s.plays {
                if !app.players.get(st).is_some_and(|p| p.contains(id)) {
                    return fail(format!("{id:?}: played {st} not registered"));
                }
            }
        }
        for (id, s) in &self.sessions {
            if let Some(until) = s.detached_until
                && !self.grace_timers.contains(&(until, *id))
            {
                return fail(format!("{id:?}: detached without a grace timer"));
            }
            if let Some(due) = s.token_due
                && !self.token_timers.contains(&(due, *id))
            {
                return fail(format!("{id:?}: token timer not registered"));
            }
            if s.token_due.is_none() && s.grant.token_expire.is_some() && !s.token_warned {
                return fail(format!("{id:?}: token without a timer"));
            }
        }
        for (until, id) in &self.grace_timers {
            if self.sessions.get(id).and_then(|s| s.detached_until) != Some(*until) {
                return fail(format!("grace timer of {id:?} does not match a detached session"));
            }
        }
        for (due, id) in &self.token_timers {
            if self.sessions.get(id).and_then(|s| s.token_due) != Some(*due) {
                return fail(format!("token timer of {id:?} does not match its session"));
            }
        }
        for (app_id, app) in &self.apps {
            if app.rooms.is_empty() {
                return fail(format!("app {app_id}: empty app kept"));
            }
            for (room_id, room) in &app.rooms {
                if room.users.is_empty() {
                    return fail(format!("room {room_id}: empty room kept"));
                }
                for (user, id) in &room.users {
                    match self.sessions.get(id) {
                        Some(s) if &s.user.user_id == user && &s.room == room_id && s.app == *app_id => {}
                        _ => return fail(format!("room {room_id}: user {user} has no matching session")),
                    }
                }
                for st in &room.streams {
                    if app.streams.get(st).is_none_or(|p| &p.room != room_id) {
                        return fail(format!("room {room_id}: stream {st} not registered"));
                    }
                }
                if room.remote_users.iter().any(|(id, (_, u))| *id != u.user_id)
                    || room
                        .remote_streams
                        .iter()
                        .any(|(id, (_, st))| *id != st.stream_id)
                {
                    return fail(format!("room {room_id}: a remote entry under another ID"));
                }
            }
            for (st, p) in &app.streams {
                if !self
                    .sessions
                    .get(&p.session)
                    .is_some_and(|s| s.publishes.contains(st))
                {
                    return fail(format!("stream {st}: publisher does not publish it"));
                }
                if p.info.stream_id != *st {
                    return fail(format!("stream {st}: info names another stream"));
                }
            }
            if app.streams.len() > self.limits.max_streams_per_app {
                return fail(format!("app {app_id}: over the stream limit"));
            }
            for (st, players) in &app.players {
                if players.is_empty() {
                    return fail(format!("stream {st}: empty player set kept"));
                }
                for id in players {
                    if !self
                        .sessions
                        .get(id)
                        .is_some_and(|s| s.plays.contains(st) && s.app == *app_id)
                    {
                        return fail(format!("stream {st}: player {id:?} does not play it"));
                    }
                }
            }
        }
        Ok(())
    }
}

mod im;

pub use im::{
    BARRAGE_PER_ROOM, BROADCAST_PER_ROOM, BROADCAST_PER_USER, COMMAND_MANY_PER_ROOM, COMMAND_ONE_PER_ROOM,
    MessageKind, ONLINE_COUNT_INTERVAL, ROOM_EXTRA_KEYS, ROOM_EXTRA_PER_ROOM, RoomMessage,
};

#[cfg(test)]
mod tests;

/// The node part of an owner (`node|epoch`) as the store writes it.
fn owner_node(owner: &str) -> &str {
    owner.split('|').next().unwrap_or(owner)
}
