//! The cluster store: what the nodes of a cluster must agree on, behind one trait.
//!
//! The room registry ([`crate::registry`]) stays each node's own sans-IO state machine; what
//! must hold across nodes goes through a [`Store`], chosen once at start-up
//! ([`from_config`]): [`MemoryStore`] for one node (the default, no Redis), [`RedisStore`] when
//! `redis` is configured. Nothing else knows which one runs (the split LiveKit makes between
//! its local and Redis routers and stores).
//!
//! What the store holds so far (`docs/cluster.md`):
//!
//! - **Node leases.** A node registers with a lease it renews ([`Store::renew_lease`]); what
//!   it owns expires with its lease.
//! - **Stream IDs**, unique per AppID across the cluster: a publish first claims its ID
//!   ([`Store::claim_stream`]), atomically and fenced by the owner's lease; an unpublish or the
//!   end of the session releases it. The same user's newer login on another node takes an ID
//!   over from a live holder at once ([`Store::claim_stream_for`]); the older holder learns at
//!   its next renewal ([`Store::take_fenced`]). The AppID-wide stream limit is counted in the
//!   same claim.
//! - **Rooms across nodes.** Each node's part of a shared room (its users and streams, owned by
//!   its lease) and the room's history of changes ([`Store::room_change`],
//!   [`Store::room_snapshot`], [`Store::read_rooms`]); what a dead node owned is removed, with
//!   the events its absence means, by the nodes that follow the room ([`Store::reap_rooms`]).

mod memory;
mod redis;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use huddle_proto::{AppId, ErrorCode, HuddleError, RoomId, StreamId, UserId};

use crate::config::ServerConfig;
use crate::registry::{RemoteRoom, RoomChange, SessionId};

pub use self::memory::MemoryStore;
pub use self::redis::RedisStore;

/// What a store operation returns.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// The answer to a claim of a stream ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The ID is this session's now (or was already).
    Won,
    /// Another session (on this node or another live one) holds it.
    Taken,
    /// It was held by a live session of the same user in the same room on another node, and
    /// this session is that user's newer login there ([`Store::claim_stream_for`]): the ID is
    /// this session's now, and the older holder is fenced (its node finds out at its next
    /// renewal, [`Store::take_fenced`]).
    TakenOver,
    /// The AppID publishes as many streams across the cluster as it may
    /// (`max_streams_per_app`); a dead node's streams stop counting when its lease ends.
    OverLimit,
}

/// Who claims a stream ID: the session, and the room and user it is logged in as (a newer
/// login of the same user may take the ID over from an older one, [`Store::claim_stream_for`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimant {
    /// The session.
    pub session: SessionId,
    /// The session's room.
    pub room: RoomId,
    /// The session's user.
    pub user: UserId,
}

/// One change in a room's history, as read from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomEvent {
    /// The app.
    pub app: AppId,
    /// The room.
    pub room: RoomId,
    /// The opaque position of this event in the room's history (read on from here).
    pub cursor: String,
    /// The room's sequence number: one more than the event before it, unless events were lost
    /// (the follower then reads a fresh snapshot).
    pub seq: u64,
    /// The node (and lease) that owns what changed, `node|epoch` (this node's own start with
    /// its [`Store::node_id`] and `|`).
    pub owner: String,
    /// What changed.
    pub change: RoomChange,
}

/// A followed room and where to read its history on from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomCursor {
    /// The app.
    pub app: AppId,
    /// The room.
    pub room: RoomId,
    /// The position of the last event read (or of the snapshot).
    pub cursor: String,
}

/// Whether cursor `a` comes after cursor `b` in a room's history (Redis stream IDs,
/// `MS-SEQ`; anything unreadable counts as the start).
pub fn cursor_after(a: &str, b: &str) -> bool {
    fn parse(c: &str) -> (u64, u64) {
        let (ms, seq) = c.split_once('-').unwrap_or((c, "0"));
        (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
    }
    parse(a) > parse(b)
}

/// Why a store operation failed. The operation changed nothing it reports as failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store did not answer in time or refused the command.
    #[error("the cluster store failed: {0}")]
    Unavailable(String),
    /// This node's lease expired (it was cut off longer than the lease): what it owned may be
    /// another node's now.
    #[error("this node's lease was lost")]
    LeaseLost,
    /// The store lost its data (Redis restarted empty) and, for one lease, takes back only the
    /// IDs the nodes still publish.
    #[error("the cluster store restarted and is settling: retry shortly")]
    Settling,
}

impl From<&StoreError> for HuddleError {
    fn from(e: &StoreError) -> HuddleError {
        HuddleError::new(ErrorCode::CLUSTER_UNAVAILABLE, e.to_string())
    }
}

/// What the nodes of a cluster share. Every method is safe to call from several tasks at once;
/// the implementations answer in bounded time (a Redis command times out).
pub trait Store: Send + Sync + 'static {
    /// This node's ID in the cluster.
    fn node_id(&self) -> &str;

    /// Registers this node, or renews its lease (every [`Store::renew_every`]). A renewal after
    /// the lease expired fails with [`StoreError::LeaseLost`] and registers the node anew,
    /// without what it owned before.
    fn renew_lease(&self) -> StoreFuture<'_, ()>;

    /// How often to renew the lease.
    fn renew_every(&self) -> Duration;

    /// Claims `stream_id` of `app` for `session` of this node: atomically, exactly one of any
    /// number of concurrent claims from any nodes wins; an ID held by a node whose lease
    /// expired is free.
    fn claim_stream<'a>(
        &'a self,
        app: AppId,
        stream_id: &'a StreamId,
        session: SessionId,
    ) -> StoreFuture<'a, Claim>;

    /// Releases `stream_id` of `app` if `session` holds it (a no-op otherwise).
    fn release_stream<'a>(
        &'a self,
        app: AppId,
        stream_id: &'a StreamId,
        session: SessionId,
    ) -> StoreFuture<'a, ()>;

    /// Releases everything `session` holds (the session ended).
    fn release_session(&self, session: SessionId) -> StoreFuture<'_, ()>;

    /// Leaves the cluster (shutdown): drops the lease and everything this node holds.
    fn leave(&self) -> StoreFuture<'_, ()>;

    /// The name of this node's current lease (`node|epoch`), which owns its part of the rooms:
    /// events with this owner are the node's own.
    fn owner(&self) -> String;

    /// Claims again, after the store lost this node's claims (its lease was lost and taken
    /// anew), an ID the node still publishes: as [`Store::claim_stream`], but allowed while the
    /// store settles after losing its data.
    fn reclaim_stream<'a>(
        &'a self,
        app: AppId,
        stream_id: &'a StreamId,
        session: SessionId,
    ) -> StoreFuture<'a, Claim>;

    /// Records a change of this node's part of a room and appends it to the room's history.
    /// A delete of an entry this node's lease does not own changes nothing.
    fn room_change<'a>(&'a self, app: AppId, room: &'a RoomId, change: &'a RoomChange)
    -> StoreFuture<'a, ()>;

    /// The other nodes' live part of a room and the position of its history now.
    fn room_snapshot<'a>(&'a self, app: AppId, room: &'a RoomId) -> StoreFuture<'a, RemoteRoom>;

    /// The events of `rooms` after their cursors, in order per room; waits a short while (a
    /// fraction of a second) when there are none.
    fn read_rooms<'a>(&'a self, rooms: &'a [RoomCursor]) -> StoreFuture<'a, Vec<RoomEvent>>;

    /// Removes from `rooms` what nodes whose lease ended still own there, appending a delete
    /// for each to the room's history, and keeps the rooms' keys alive.
    fn reap_rooms<'a>(&'a self, rooms: &'a [(AppId, RoomId)]) -> StoreFuture<'a, ()>;

    /// Sets the URL other nodes reach this node's signaling at to pull its streams; it is
    /// published with the lease from the next renewal on, and lives as long as the lease.
    fn advertise(&self, url: String);

    /// The URL node `node` advertised ([`Store::advertise`]), while its lease lives.
    fn node_url<'a>(&'a self, node: &'a str) -> StoreFuture<'a, Option<String>>;

    /// [`Store::claim_stream`] for `who`, which may also take the ID over from a *live* holder:
    /// when the holder is a session of the same user in the same room on another node, and
    /// the room's entry for that user is this node's (the user's later login, in the room
    /// history's order: `docs/cluster.md`, "Failover without the lease"). Answers
    /// [`Claim::TakenOver`] then. A store of one node has nothing to take over from.
    fn claim_stream_for<'a>(
        &'a self,
        app: AppId,
        stream_id: &'a StreamId,
        who: &'a Claimant,
    ) -> StoreFuture<'a, Claim> {
        self.claim_stream(app, stream_id, who.session)
    }

    /// The stream IDs this node's sessions held that the last renewal found taken over by
    /// another node (a newer login of the same user, or a claim while this node was cut off):
    /// each with the session that held it. The node must stop those publishes. Taken once.
    fn take_fenced(&self) -> Vec<(AppId, StreamId, SessionId)> {
        Vec::new()
    }

    /// A user added again by [`Store::room_change`] after this node's lease was lost (a
    /// restore), unless another live node's entry holds the user now (the user logged in
    /// there later): `Ok(false)` then, and nothing changed.
    fn restore_user<'a>(
        &'a self,
        app: AppId,
        room: &'a RoomId,
        user: &'a huddle_proto::User,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            self.room_change(app, room, &RoomChange::UserAdd(user.clone()))
                .await?;
            Ok(true)
        })
    }
}

/// The store `config` asks for: Redis at `redis` as node `node_id`, else one node in memory.
/// Connects (and registers the node) before it returns, so that a node that cannot reach its
/// Redis does not start.
pub async fn from_config(config: &ServerConfig) -> Result<Arc<dyn Store>, StoreError> {
    match &config.redis {
        Some(url) => {
            let node_id = config.node_id.clone().unwrap_or_else(|| default_node_id(config));
            let store = RedisStore::connect(url, &node_id, config.cluster_lease)
                .await?
                .with_stream_limit(config.max_streams_per_app);
            Ok(Arc::new(store))
        }
        None => Ok(Arc::new(MemoryStore::new())),
    }
}

/// A node ID for a node that was given none: its host name and signaling port.
fn default_node_id(config: &ServerConfig) -> String {
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let host = host.trim();
    let host = if host.is_empty() { "node" } else { host };
    format!("{host}-{}", config.listen.port())
}
