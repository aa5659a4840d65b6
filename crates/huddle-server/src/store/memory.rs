//! The store of a single node: the stream IDs it holds, in memory. No lease: the process is
//! the node, and what it holds ends with it.

use std::collections::HashMap;
use std::time::Duration;

use huddle_proto::{AppId, RoomId, StreamId};
use parking_lot::Mutex;

use super::{Claim, RoomCursor, RoomEvent, Store, StoreFuture};
use crate::registry::{RemoteRoom, RoomChange, SessionId};

/// One node's store ([`Store`]): every answer is ready at once.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    streams: HashMap<(AppId, StreamId), SessionId>,
    /// The stream IDs each session holds.
    by_session: HashMap<SessionId, Vec<(AppId, StreamId)>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Stream IDs held now.
    pub fn streams(&self) -> usize {
        self.inner.lock().streams.len()
    }
}

impl Inner {
    fn release(&mut self, app: AppId, stream_id: &StreamId, session: SessionId) {
        let key = (app, stream_id.clone());
        if self.streams.get(&key) != Some(&session) {
            return;
        }
        self.streams.remove(&key);
        if let Some(held) = self.by_session.get_mut(&session) {
            held.retain(|k| *k != key);
            if held.is_empty() {
                self.by_session.remove(&session);
            }
        }
    }
}

impl Store for MemoryStore {
    fn node_id(&self) -> &str {
        "local"
    }

    fn renew_lease(&self) -> StoreFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }

    fn renew_every(&self) -> Duration {
        // Nothing to renew: the task that renews wakes rarely.
        Duration::from_secs(3600)
    }

    fn claim_stream<'a>(
        &'a self,
        app: AppId,
        stream_id: &'a StreamId,
        session: SessionId,
    ) -> StoreFuture<'a, Claim> {
        let mut inner = self.inner.lock();
        let key = (app, stream_id.clone());
        let claim = match inner.streams.get(&key) {
            Some(owner) if *owner == session => Claim::Won,
            Some(_) => Claim::Taken,
            None => {
                inner.streams.insert(key.clone(), session);
                inner.by_session.entry(session).or_default().push(key);
                Claim::Won
            }
        };
        Box::pin(async move { Ok(claim) })
    }

    fn release_stream<'a>(
        &'a self,
        app: AppId,
        stream_id: &'a StreamId,
        session: SessionId,
    ) -> StoreFuture<'a, ()> {
        self.inner.lock().release(app, stream_id, session);
        Box::pin(async { Ok(()) })
    }

    fn release_session(&self, session: SessionId) -> StoreFuture<'_, ()> {
        let mut inner = self.inner.lock();
        for (app, stream_id) in inner.by_session.remove(&session).unwrap_or_default() {
            inner.streams.remove(&(app, stream_id));
        }
        Box::pin(async { Ok(()) })
    }

    fn leave(&self) -> StoreFuture<'_, ()> {
        *self.inner.lock() = Inner::default();
        Box::pin(async { Ok(()) })
    }

    fn owner(&self) -> String {
        "local".into()
    }

    fn reclaim_stream<'a>(
        &'a self,
        app: AppId,
        stream_id: &'a StreamId,
        session: SessionId,
    ) -> StoreFuture<'a, Claim> {
        self.claim_stream(app, stream_id, session)
    }

    // One node: a room has no other part, and its history holds only this node's own events,
    // which nobody needs to read.

    fn room_change<'a>(&'a self, _: AppId, _: &'a RoomId, _: &'a RoomChange) -> StoreFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }

    fn room_snapshot<'a>(&'a self, _: AppId, _: &'a RoomId) -> StoreFuture<'a, RemoteRoom> {
        Box::pin(async { Ok(RemoteRoom::default()) })
    }

    fn read_rooms<'a>(&'a self, _: &'a [RoomCursor]) -> StoreFuture<'a, Vec<RoomEvent>> {
        // No other node writes: nothing ever comes.
        Box::pin(std::future::pending())
    }

    fn reap_rooms<'a>(&'a self, _: &'a [(AppId, RoomId)]) -> StoreFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }

    fn advertise(&self, _: String) {
        // One node: nobody pulls from it.
    }

    fn node_url<'a>(&'a self, _: &'a str) -> StoreFuture<'a, Option<String>> {
        Box::pin(async { Ok(None) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block<T>(f: StoreFuture<'_, T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
            .unwrap()
    }

    #[test]
    fn one_session_holds_an_id_per_app_until_it_releases_it_or_ends() {
        let store = MemoryStore::new();
        let (a, b): (SessionId, SessionId) = ("1".parse().unwrap(), "2".parse().unwrap());
        let app = AppId::new(1).unwrap();
        let other_app = AppId::new(2).unwrap();
        let s = StreamId::new("s").unwrap();
        let t = StreamId::new("t").unwrap();
        assert_eq!(block(store.claim_stream(app, &s, a)), Claim::Won);
        assert_eq!(block(store.claim_stream(app, &s, a)), Claim::Won, "idempotent");
        assert_eq!(block(store.claim_stream(app, &s, b)), Claim::Taken);
        assert_eq!(
            block(store.claim_stream(other_app, &s, b)),
            Claim::Won,
            "per AppID"
        );
        // Only the holder releases.
        block(store.release_stream(app, &s, b));
        assert_eq!(block(store.claim_stream(app, &s, b)), Claim::Taken);
        block(store.release_stream(app, &s, a));
        assert_eq!(block(store.claim_stream(app, &s, b)), Claim::Won);
        assert_eq!(block(store.claim_stream(app, &t, b)), Claim::Won);
        assert_eq!(store.streams(), 3);
        // The end of a session releases all it held.
        block(store.release_session(b));
        assert_eq!(store.streams(), 0);
        assert_eq!(block(store.claim_stream(app, &t, a)), Claim::Won);
        block(store.leave());
        assert_eq!(store.streams(), 0);
    }
}
