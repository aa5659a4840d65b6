//! The shell around the cluster store ([`crate::store`]): one task per node owns every call to
//! it, in the order signaling asked, and renews the node's lease.
//!
//! Claims (a publish waits for the answer) and releases (an unpublish, the end of a session:
//! nobody waits) share one bounded queue, so that a release decided before a claim reaches the
//! store before it: a stream ID unpublished and published again at once is not refused because
//! its own release was still on the way. When the queue is full a claim is answered
//! 1009009 (retry), and a release waits for room in a task of its own (it may then overtake or
//! be overtaken; a claim refused for it is worth retrying too).
//!
//! Rooms across nodes: the registry's [`ClusterCommand::Change`]s (this node's users and
//! streams joining and leaving shared rooms) go through the same queue, so they reach the store
//! in the registry's order. One that fails (Redis unreachable) waits in an outbox, with every
//! change after it, and is sent again in order after the next lease renewal that succeeds. A
//! second task, the room reader, reads the history of every room the node follows and feeds
//! the other nodes' changes to the registry ([`Registry::remote_update`]); on a gap in a room's
//! sequence it reads a fresh snapshot instead ([`Registry::remote_sync`]). After each renewal
//! the store task also reaps the followed rooms: what a node whose lease ended still owned
//! there is deleted, and the followers see it leave.
//!
//! When the node's lease was lost (it was cut off longer than the lease, or Redis restarted
//! empty) it registers anew and *restores*: it claims again every stream ID it still publishes,
//! adds its users and streams to their rooms again, and re-reads every followed room.
//!
//! [`ClusterCommand::Change`]: crate::registry::ClusterCommand::Change
//! [`Registry::remote_update`]: crate::registry::Registry::remote_update
//! [`Registry::remote_sync`]: crate::registry::Registry::remote_sync

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use huddle_proto::{AppId, ErrorCode, HuddleError, RoomId, StreamId};
use tokio::sync::{mpsc, oneshot};
use tracing::{Instrument, error, info, warn};

use super::ServerState;
use crate::registry::{RemoteRoom, RoomChange, SessionId};
use crate::store::{Claim, Claimant, RoomCursor, Store, StoreError, cursor_after};

/// Room changes kept while the store cannot be reached, at most; beyond, the oldest are dropped
/// (logged): what they would have removed then stays until this node's lease ends.
const OUTBOX: usize = 4096;

/// How long the room reader waits after the store failed before it reads again.
const READ_RETRY: Duration = Duration::from_millis(500);

/// Store operations waiting for the store task, at most.
pub(super) const STORE_QUEUE: usize = 1024;

/// What the store task is asked.
pub(super) enum StoreOp {
    Claim {
        app: AppId,
        stream_id: StreamId,
        who: Claimant,
        reply: oneshot::Sender<Result<Claim, StoreError>>,
    },
    Release {
        app: AppId,
        stream_id: StreamId,
        session: SessionId,
    },
    ReleaseSession {
        session: SessionId,
    },
    /// This node's part of a shared room changed.
    Room {
        app: AppId,
        room: RoomId,
        change: RoomChange,
    },
    /// Answered once every operation queued before it was done (or is waiting in the outbox).
    Barrier(oneshot::Sender<()>),
}

impl ServerState {
    /// Connects the store `config` asks for ([`crate::store::from_config`]) if none is set yet
    /// (one node in memory is set at once; Redis needs this), and starts the store task.
    pub(crate) async fn connect_store(&self) -> Result<(), StoreError> {
        if self.0.store.get().is_none() {
            let store = crate::store::from_config(&self.0.config).await?;
            info!(node = store.node_id(), "cluster store connected");
            let _ = self.0.store.set(store);
        }
        self.start_store_task();
        Ok(())
    }

    /// Starts the store task once a store is set (within a tokio runtime); a no-op after.
    fn start_store_task(&self) {
        let Some(store) = self.0.store.get() else {
            return;
        };
        if let Some(rx) = self.0.store_rx.lock().take() {
            tokio::spawn(run(self.clone(), store.clone(), rx, self.shutdown_receiver()).in_current_span());
            tokio::spawn(read_rooms(self.clone(), store.clone(), self.shutdown_receiver()).in_current_span());
            self.start_puller();
        }
    }

    /// Publishes, with this node's lease, the URL other nodes pull its streams from
    /// (`cluster_url`, else `ws://` or `wss://` and `listen`, the bound signaling address).
    pub(crate) async fn advertise_cluster(&self, listen: std::net::SocketAddr) {
        let Some(store) = self.0.store.get() else { return };
        if self.0.config.redis.is_none() || self.0.config.cluster_secret.is_none() {
            return;
        }
        let url = self.0.config.cluster_url.clone().unwrap_or_else(|| {
            let scheme = if self.is_tls() { "wss" } else { "ws" };
            format!("{scheme}://{listen}{}", super::relay::CLUSTER_PATH)
        });
        info!(%url, "pulls of this node's streams served at");
        store.advertise(url);
        if let Err(e) = store.renew_lease().await {
            warn!("publishing this node's pull address: {e} (it is published with the next renewal)");
        }
    }

    /// For tests: the node stops renewing its lease and will leave nothing behind at shutdown,
    /// as a node killed with SIGKILL does; its room reader stops too. Its users, streams and
    /// stream IDs in the store are then the others' to remove once its lease ends.
    #[doc(hidden)]
    pub fn abandon_cluster(&self) {
        self.0.abandon.send_replace(true);
    }

    /// For tests: while `cut` is true, the node neither talks to the store (no renewal, no
    /// claim, no room change: they wait) nor reads its rooms, as a node cut off from Redis
    /// and the other nodes; its lease runs on meanwhile. `false` reconnects it.
    #[doc(hidden)]
    pub fn cut_off_cluster(&self, cut: bool) {
        self.0.cut_off.send_replace(cut);
    }

    /// For tests: whether a session of this node publishes `stream_id` of `app` now.
    #[doc(hidden)]
    pub fn publishes_here(&self, app: AppId, stream_id: &StreamId) -> bool {
        self.0.hub.lock().registry.publishes_here(app, stream_id)
    }

    /// For tests: whether this node's pull of `stream_id` of `app` lingers (no player here,
    /// not stopped yet).
    #[doc(hidden)]
    pub fn pull_lingers(&self, app: AppId, stream_id: &StreamId) -> bool {
        self.0.hub.lock().registry.lingers(app, stream_id)
    }

    /// For tests: returns once every change this node queued for the cluster store before the
    /// call was handed to the store (the others may read it now; one waiting in the outbox for
    /// an unreachable store counts as handed). `false` when the store task does not run.
    #[doc(hidden)]
    pub async fn cluster_barrier(&self) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.0.store_tx.send(StoreOp::Barrier(tx)).await.is_err() {
            return false;
        }
        rx.await.is_ok()
    }

    /// The other nodes' part of `room` for a login, or 1009009 when the store cannot answer
    /// (new logins fail closed while the cluster store is unreachable).
    pub(super) async fn room_snapshot(&self, app: AppId, room: &RoomId) -> Result<RemoteRoom, HuddleError> {
        let Some(store) = self.0.store.get() else {
            return Err(HuddleError::new(
                ErrorCode::CLUSTER_UNAVAILABLE,
                "the cluster store is not connected: retry",
            ));
        };
        store.room_snapshot(app, room).await.map_err(|e| {
            warn!(%app, %room, "login refused: the cluster store did not answer: {e}");
            HuddleError::new(
                ErrorCode::CLUSTER_UNAVAILABLE,
                "the cluster store could not be reached: retry",
            )
        })
    }

    /// Claims `stream_id` for `who` in the cluster: `Ok` when it is the session's now (taken
    /// over, if need be, from an older login of the same user on another node), 1003028 when
    /// another session holds it, 1009009 when the store cannot answer.
    pub(super) async fn claim_stream(
        &self,
        app: AppId,
        stream_id: &StreamId,
        who: Claimant,
    ) -> Result<(), HuddleError> {
        let busy = || HuddleError::new(ErrorCode::CLUSTER_UNAVAILABLE, "the cluster store is busy: retry");
        if self.0.store.get().is_none() {
            return Err(busy());
        }
        self.start_store_task();
        let (reply, answer) = oneshot::channel();
        let session = who.session;
        let op = StoreOp::Claim {
            app,
            stream_id: stream_id.clone(),
            who,
            reply,
        };
        self.0.store_tx.try_send(op).map_err(|_| busy())?;
        match answer.await {
            Ok(Ok(Claim::Won)) => Ok(()),
            Ok(Ok(Claim::TakenOver)) => {
                info!(%app, %stream_id, %session, "stream ID taken over from an older login of the same user");
                Ok(())
            }
            Ok(Ok(Claim::Taken)) => Err(HuddleError::new(
                ErrorCode::STREAM_ID_EXISTS,
                format!("the stream ID {stream_id} is already published in this AppID"),
            )),
            Ok(Ok(Claim::OverLimit)) => Err(HuddleError::new(
                ErrorCode::TOO_MANY_STREAMS,
                format!(
                    "the AppID has reached its limit of {} streams across the cluster",
                    self.0.config.max_streams_per_app
                ),
            )),
            Ok(Err(StoreError::Settling)) => Err(HuddleError::new(
                ErrorCode::CLUSTER_UNAVAILABLE,
                "the cluster store restarted and is settling: retry in a few seconds",
            )),
            Ok(Err(e)) => Err(HuddleError::from(&e)),
            Err(_) => Err(busy()),
        }
    }
}

/// Queues a release on `queue` without waiting (see the module documentation when it is full).
pub(super) fn release(queue: &mpsc::Sender<StoreOp>, op: StoreOp) {
    if let Err(mpsc::error::TrySendError::Full(op)) = queue.try_send(op) {
        let queue = queue.clone();
        tokio::spawn(async move {
            let _ = queue.send(op).await;
        });
    }
}

/// The store task: the operations in order, the lease renewed (then the outbox sent again and
/// the followed rooms reaped), a restore after a lost lease, and the node's leave at shutdown.
async fn run(
    state: ServerState,
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<StoreOp>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut renew = tokio::time::interval(store.renew_every());
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut outbox = VecDeque::new();
    loop {
        connected(&state).await;
        tokio::select! {
            op = rx.recv() => match op {
                Some(op) => handle(&state, &*store, op, &mut outbox).await,
                None => break,
            },
            _ = renew.tick() => match store.renew_lease().await {
                Ok(()) => {
                    stop_taken_over(&state, store.take_fenced());
                    flush(&state, &*store, &mut outbox).await;
                    reap(&state, &*store).await;
                }
                Err(StoreError::LeaseLost) => {
                    warn!(
                        node = store.node_id(),
                        "the node's lease was lost: registered anew, restoring its stream IDs and rooms"
                    );
                    restore(&state, &*store, &mut outbox).await;
                }
                Err(e) => warn!(node = store.node_id(), "lease renewal failed: {e}"),
            },
            () = abandoned(&state) => {
                warn!(node = store.node_id(), "abandoned the cluster: no renewal, no leave");
                return;
            }
            () = async {
                let _ = shutdown.wait_for(|s| *s).await;
            } => break,
        }
    }
    match store.leave().await {
        Ok(()) => info!(node = store.node_id(), "left the cluster store"),
        Err(e) => warn!(
            node = store.node_id(),
            "leaving the cluster store failed (its lease will expire): {e}"
        ),
    }
}

async fn handle(
    state: &ServerState,
    store: &dyn Store,
    op: StoreOp,
    outbox: &mut VecDeque<(AppId, RoomId, RoomChange)>,
) {
    let result = match op {
        StoreOp::Claim {
            app,
            stream_id,
            who,
            reply,
        } => {
            let _ = reply.send(store.claim_stream_for(app, &stream_id, &who).await);
            return;
        }
        StoreOp::Release {
            app,
            stream_id,
            session,
        } => store.release_stream(app, &stream_id, session).await,
        StoreOp::ReleaseSession { session } => store.release_session(session).await,
        StoreOp::Barrier(reply) => {
            let _ = reply.send(());
            return;
        }
        StoreOp::Room { app, room, change } => {
            if outbox.is_empty() {
                match store.room_change(app, &room, &change).await {
                    Ok(()) => return,
                    Err(StoreError::LeaseLost) => {
                        // The lease is gone: register anew now and restore, which sends the
                        // node's rooms as the registry has them (this change included).
                        if let Err(StoreError::LeaseLost) = store.renew_lease().await {
                            restore(state, store, outbox).await;
                        }
                        return;
                    }
                    Err(e) => warn!(%app, %room, "a room change waits for the cluster store: {e}"),
                }
            }
            if outbox.len() >= OUTBOX {
                error!("the room outbox is full: the oldest change is dropped");
                outbox.pop_front();
            }
            outbox.push_back((app, room, change));
            return;
        }
    };
    if let Err(e) = result {
        warn!("releasing in the cluster store failed (it expires with the lease): {e}");
    }
}

/// Stops this node's publishes whose stream IDs another node took over (fenced: the same
/// user's newer login there, or a claim while this node was cut off): their publishers get
/// `media_state` closed 1009041.
fn stop_taken_over(state: &ServerState, fenced: Vec<(AppId, StreamId, SessionId)>) {
    if fenced.is_empty() {
        return;
    }
    let mut hub = state.0.hub.lock();
    let mut out = Vec::new();
    for (app, stream_id, session) in fenced {
        if hub.registry.stop_taken_over(app, &stream_id, session, &mut out) {
            warn!(%app, %stream_id, %session, "a publish stopped: its stream ID was taken over on another node");
        }
    }
    hub.dispatch(out);
}

/// Completes once the node is not cut off ([`ServerState::cut_off_cluster`]).
async fn connected(state: &ServerState) {
    let mut rx = state.0.cut_off.subscribe();
    let _ = rx.wait_for(|c| !*c).await;
}

/// Completes once [`ServerState::abandon_cluster`] was called.
async fn abandoned(state: &ServerState) {
    let mut rx = state.0.abandon.subscribe();
    let _ = rx.wait_for(|a| *a).await;
}

/// Sends the outbox again, in order, up to the first failure.
async fn flush(state: &ServerState, store: &dyn Store, outbox: &mut VecDeque<(AppId, RoomId, RoomChange)>) {
    while let Some((app, room, change)) = outbox.front() {
        match store.room_change(*app, room, change).await {
            Ok(()) => {
                outbox.pop_front();
            }
            Err(StoreError::LeaseLost) => return restore(state, store, outbox).await,
            Err(_) => return,
        }
    }
}

/// Reaps the rooms this node follows (see [`Store::reap_rooms`]).
async fn reap(state: &ServerState, store: &dyn Store) {
    let rooms: Vec<(AppId, RoomId)> = state.0.hub.lock().follows.keys().cloned().collect();
    if let Err(e) = store.reap_rooms(&rooms).await {
        warn!("reaping the followed rooms failed: {e}");
    }
}

/// After the lease was lost and taken anew: claims again what this node publishes, adds its
/// users and streams to their rooms again, and has every followed room read afresh. The outbox
/// is dropped: the registry's state now is what counts.
async fn restore(state: &ServerState, store: &dyn Store, outbox: &mut VecDeque<(AppId, RoomId, RoomChange)>) {
    outbox.clear();
    let publishes = state.0.hub.lock().registry.local_publishes();
    let mut lost = Vec::new();
    for (app, stream_id, session) in publishes {
        match store.reclaim_stream(app, &stream_id, session).await {
            Ok(Claim::Won | Claim::TakenOver | Claim::OverLimit) => {}
            Ok(Claim::Taken) => {
                error!(
                    %app, %stream_id, %session,
                    "a stream ID this node publishes was claimed by another node while this node's lease was lost: the publish stops"
                );
                lost.push((app, stream_id, session));
            }
            Err(e) => warn!(%app, %stream_id, "claiming a stream ID again failed: {e}"),
        }
    }
    stop_taken_over(state, lost);
    let rooms = state.0.hub.lock().registry.local_rooms();
    for room in rooms {
        for user in room.users {
            match store.restore_user(room.app, &room.room, &user).await {
                Ok(true) => {}
                Ok(false) => {
                    // The user logged in again on another node meanwhile: that login is the
                    // later one, and the session here ends as a duplicate login.
                    warn!(app = %room.app, room = %room.room, user = %user.user_id,
                        "a user of this node logged in on another node while its lease was lost: kicked here");
                    let mut hub = state.0.hub.lock();
                    let mut out = Vec::new();
                    hub.registry
                        .kick_replaced(room.app, &room.room, &user.user_id, &mut out);
                    hub.dispatch(out);
                }
                Err(e) => {
                    warn!(app = %room.app, room = %room.room, "restoring a room change waits: {e}");
                    outbox.push_back((room.app, room.room.clone(), RoomChange::UserAdd(user)));
                }
            }
        }
        for change in room.streams.into_iter().map(RoomChange::StreamAdd) {
            if let Err(e) = store.room_change(room.app, &room.room, &change).await {
                warn!(app = %room.app, room = %room.room, "restoring a room change waits: {e}");
                outbox.push_back((room.app, room.room.clone(), change));
            }
        }
    }
    // Every live node restores within a third of a lease of the restart; until a lease has
    // passed, what a snapshot lacks may be a part not restored yet, not a part that is gone.
    let settled = tokio::time::Instant::now() + state.0.config.cluster_lease;
    let mut hub = state.0.hub.lock();
    for f in hub.follows.values_mut() {
        f.resync = true;
        f.settle_until = Some(settled);
    }
    hub.follows_changed.notify_one();
}

/// The room reader: the history of every followed room, the other nodes' changes fed to the
/// registry in order; a fresh snapshot for a room marked for it.
async fn read_rooms(
    state: ServerState,
    store: Arc<dyn Store>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let changed = state.0.hub.lock().follows_changed.clone();
    loop {
        connected(&state).await;
        let (rooms, resync) = {
            let hub = state.0.hub.lock();
            let mut rooms = Vec::with_capacity(hub.follows.len());
            let mut resync = Vec::new();
            for ((app, room), f) in &hub.follows {
                rooms.push(RoomCursor {
                    app: *app,
                    room: room.clone(),
                    cursor: f.cursor.clone(),
                });
                if f.resync || f.settle_until.is_some_and(|t| tokio::time::Instant::now() >= t) {
                    resync.push((*app, room.clone()));
                }
            }
            (rooms, resync)
        };
        for (app, room) in resync {
            match store.room_snapshot(app, &room).await {
                Ok(snapshot) => {
                    let mut hub = state.0.hub.lock();
                    if let Some(f) = hub.follows.get_mut(&(app, room.clone())) {
                        f.cursor = snapshot.cursor.clone();
                        f.seq = snapshot.seq;
                        f.resync = false;
                        let settling = f.settle_until.is_some_and(|t| tokio::time::Instant::now() < t);
                        if !settling {
                            f.settle_until = None;
                        }
                        let mut out = Vec::new();
                        if settling {
                            hub.registry.remote_merge(app, &room, snapshot, &mut out);
                        } else {
                            hub.registry.remote_sync(app, &room, snapshot, &mut out);
                        }
                        hub.dispatch(out);
                    }
                }
                Err(e) => {
                    warn!(%app, %room, "reading a room afresh failed: {e}");
                    tokio::time::sleep(READ_RETRY).await;
                }
            }
        }
        tokio::select! {
            r = store.read_rooms(&rooms), if !rooms.is_empty() => match r {
                Ok(events) if !events.is_empty() => {
                    // The node's own events, of this lease or an earlier one, are skipped: its
                    // registry is the truth about its own part.
                    let own = format!("{}|", store.node_id());
                    let mut hub = state.0.hub.lock();
                    let mut out = Vec::new();
                    for ev in events {
                        let Some(f) = hub.follows.get_mut(&(ev.app, ev.room.clone())) else {
                            continue;
                        };
                        if !cursor_after(&ev.cursor, &f.cursor) {
                            continue;
                        }
                        f.cursor = ev.cursor;
                        if ev.seq != f.seq + 1 {
                            f.resync = true;
                        }
                        f.seq = ev.seq;
                        // Room extra info is room-wide: every node applies every change in the
                        // history's order, its own too, so all end with the same last value.
                        if !ev.owner.starts_with(&own) || matches!(ev.change, RoomChange::RoomExtraInfo(_)) {
                            hub.registry.remote_update(ev.app, &ev.room, &ev.owner, ev.change, &mut out);
                        } else {
                            hub.registry.own_update(ev.app, &ev.room, &ev.change);
                        }
                    }
                    hub.dispatch(out);
                }
                Ok(_) => {}
                Err(e) => {
                    warn!("reading the followed rooms failed: {e}");
                    tokio::time::sleep(READ_RETRY).await;
                }
            },
            () = changed.notified() => {}
            () = abandoned(&state) => return,
            () = async {
                let _ = shutdown.wait_for(|s| *s).await;
            } => return,
        }
    }
}
