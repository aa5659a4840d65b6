//! The shell around the cluster store ([`crate::store`]): one task per node owns every call to
//! it, in the order signaling asked, and renews the node's lease.
//!
//! Claims (a publish waits for the answer) and releases (an unpublish, the end of a session:
//! nobody waits) share one bounded queue, so that a release decided before a claim reaches the
//! store before it: a stream ID unpublished and published again at once is not refused because
//! its own release was still on the way. When the queue is full a claim is answered
//! 1009009 (retry), and a release waits for room in a task of its own (it may then overtake or
//! be overtaken; a claim refused for it is worth retrying too).

use std::sync::Arc;

use huddle_proto::{AppId, ErrorCode, HuddleError, StreamId};
use tokio::sync::{mpsc, oneshot};
use tracing::{Instrument, info, warn};

use super::ServerState;
use crate::registry::SessionId;
use crate::store::{Claim, Store, StoreError};

/// Store operations waiting for the store task, at most.
pub(super) const STORE_QUEUE: usize = 1024;

/// What the store task is asked.
pub(super) enum StoreOp {
    Claim {
        app: AppId,
        stream_id: StreamId,
        session: SessionId,
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
            tokio::spawn(run(store.clone(), rx, self.shutdown_receiver()).in_current_span());
        }
    }

    /// Claims `stream_id` for `session` in the cluster: `Ok` when it is the session's now,
    /// 1003028 when another session holds it, 1009009 when the store cannot answer.
    pub(super) async fn claim_stream(
        &self,
        app: AppId,
        stream_id: &StreamId,
        session: SessionId,
    ) -> Result<(), HuddleError> {
        let busy = || HuddleError::new(ErrorCode::CLUSTER_UNAVAILABLE, "the cluster store is busy: retry");
        if self.0.store.get().is_none() {
            return Err(busy());
        }
        self.start_store_task();
        let (reply, answer) = oneshot::channel();
        let op = StoreOp::Claim {
            app,
            stream_id: stream_id.clone(),
            session,
            reply,
        };
        self.0.store_tx.try_send(op).map_err(|_| busy())?;
        match answer.await {
            Ok(Ok(Claim::Won)) => Ok(()),
            Ok(Ok(Claim::Taken)) => Err(HuddleError::new(
                ErrorCode::STREAM_ID_EXISTS,
                format!("the stream ID {stream_id} is already published in this AppID"),
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

/// The store task: the operations in order, the lease renewed, and the node's leave at
/// shutdown.
async fn run(
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<StoreOp>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut renew = tokio::time::interval(store.renew_every());
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            op = rx.recv() => match op {
                Some(op) => handle(&*store, op).await,
                None => break,
            },
            _ = renew.tick() => match store.renew_lease().await {
                Ok(()) => {}
                Err(StoreError::LeaseLost) => warn!(
                    node = store.node_id(),
                    "the node's lease expired: registered anew; stream IDs it held may be another node's now"
                ),
                Err(e) => warn!(node = store.node_id(), "lease renewal failed: {e}"),
            },
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

async fn handle(store: &dyn Store, op: StoreOp) {
    let result = match op {
        StoreOp::Claim {
            app,
            stream_id,
            session,
            reply,
        } => {
            let _ = reply.send(store.claim_stream(app, &stream_id, session).await);
            return;
        }
        StoreOp::Release {
            app,
            stream_id,
            session,
        } => store.release_stream(app, &stream_id, session).await,
        StoreOp::ReleaseSession { session } => store.release_session(session).await,
    };
    if let Err(e) = result {
        warn!("releasing in the cluster store failed (it expires with the lease): {e}");
    }
}
