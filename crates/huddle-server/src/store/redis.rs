//! The store of a cluster on Redis: leases, stream-ID claims, each change one Lua script so
//! that it is atomic (`docs/cluster.md` lists the keys and their lifetimes).
//!
//! Fencing: registering takes a fresh *lease epoch* from one counter (`huddle:epoch`), and a
//! claim names its owner as `node|epoch|session`. A claim succeeds only while the claiming
//! node's lease still holds its epoch, and it takes an ID held by another owner only once that
//! owner's node no longer holds the owner's epoch (its lease expired, or the node restarted and
//! registered anew). So a node cut off longer than its lease cannot win anything with its old
//! epoch, and its IDs are free the moment its lease ends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use huddle_proto::{AppId, StreamId};
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{Claim, Store, StoreError, StoreFuture};
use crate::registry::SessionId;

/// A node's lease when nothing else is configured: renewed every third of it, so two renewals
/// may fail before the node's state expires.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);

/// How long one Redis command may take (connecting included) before the operation fails.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);

const REGISTER: &str = r"
local e = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], e, 'PX', ARGV[1])
redis.call('DEL', KEYS[3])
return e
";

const RENEW: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local keys = redis.call('SMEMBERS', KEYS[2])
for _, k in ipairs(keys) do redis.call('PEXPIRE', k, ARGV[2]) end
if #keys > 0 then redis.call('PEXPIRE', KEYS[2], ARGV[2]) end
return 1
";

const CLAIM: &str = r"
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return -1 end
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then
  local node, epoch = string.match(cur, '^([^|]*)|([^|]*)|')
  if node and redis.call('GET', ARGV[4] .. node) == epoch then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
redis.call('SADD', KEYS[3], KEYS[1])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
return 1
";

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('SREM', KEYS[2], KEYS[1])
return 1
";

const LEAVE: &str = r"
for _, k in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local v = redis.call('GET', k)
  if v and string.sub(v, 1, #ARGV[2]) == ARGV[2] then redis.call('DEL', k) end
end
redis.call('DEL', KEYS[2])
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
";

/// The key of node `node`'s lease (its value: the lease epoch).
fn node_key(node: &str) -> String {
    format!("huddle:node:{node}")
}

/// The key of the set of stream keys node `node` holds.
fn node_streams_key(node: &str) -> String {
    format!("huddle:node:{node}:streams")
}

/// The key of a stream ID (its value: the owner, `node|epoch|session`).
fn stream_key(app: AppId, stream_id: &StreamId) -> String {
    format!("huddle:stream:{app}:{stream_id}")
}

/// The store of one node of a cluster on Redis ([`Store`]).
pub struct RedisStore {
    con: ConnectionManager,
    node: String,
    lease: Duration,
    /// The epoch of this node's lease (0: none).
    epoch: AtomicU64,
    /// The stream IDs each session of this node holds, to release them when it ends.
    held: Mutex<HashMap<SessionId, Vec<(AppId, StreamId)>>>,
    scripts: Scripts,
}

struct Scripts {
    register: redis::Script,
    renew: redis::Script,
    claim: redis::Script,
    release: redis::Script,
    leave: redis::Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("node", &self.node)
            .field("epoch", &self.epoch.load(Ordering::Acquire))
            .finish_non_exhaustive()
    }
}

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl RedisStore {
    /// Connects to Redis at `url` (`redis://HOST:PORT`) as node `node` and registers it with a
    /// lease of `lease`.
    pub async fn connect(url: &str, node: &str, lease: Duration) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(url).map_err(unavailable)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(2);
        let con = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(unavailable)?;
        let store = RedisStore {
            con,
            node: node.to_string(),
            lease,
            epoch: AtomicU64::new(0),
            held: Mutex::new(HashMap::new()),
            scripts: Scripts {
                register: redis::Script::new(REGISTER),
                renew: redis::Script::new(RENEW),
                claim: redis::Script::new(CLAIM),
                release: redis::Script::new(RELEASE),
                leave: redis::Script::new(LEAVE),
            },
        };
        store.register().await?;
        Ok(store)
    }

    /// The epoch of this node's lease now (0: none).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Takes a new lease (a new epoch): nothing held under an earlier one counts any more.
    async fn register(&self) -> Result<u64, StoreError> {
        let mut con = self.con.clone();
        let epoch: u64 = self
            .scripts
            .register
            .key(node_key(&self.node))
            .key("huddle:epoch")
            .key(node_streams_key(&self.node))
            .arg(ms(self.lease))
            .invoke_async(&mut con)
            .await
            .map_err(unavailable)?;
        self.held.lock().clear();
        self.epoch.store(epoch, Ordering::Release);
        Ok(epoch)
    }

    fn owner(&self, epoch: u64, session: SessionId) -> String {
        format!("{}|{epoch}|{session}", self.node)
    }

    fn forget(&self, app: AppId, stream_id: &StreamId, session: SessionId) {
        let mut held = self.held.lock();
        if let Some(list) = held.get_mut(&session) {
            list.retain(|(a, s)| !(*a == app && s == stream_id));
            if list.is_empty() {
                held.remove(&session);
            }
        }
    }

    async fn release_one(
        &self,
        app: AppId,
        stream_id: &StreamId,
        session: SessionId,
    ) -> Result<(), StoreError> {
        let epoch = self.epoch();
        let mut con = self.con.clone();
        let _: i64 = self
            .scripts
            .release
            .key(stream_key(app, stream_id))
            .key(node_streams_key(&self.node))
            .arg(self.owner(epoch, session))
            .invoke_async(&mut con)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

impl Store for RedisStore {
    fn node_id(&self) -> &str {
        &self.node
    }

    fn renew_lease(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let epoch = self.epoch();
            let mut con = self.con.clone();
            let renewed: i64 = self
                .scripts
                .renew
                .key(node_key(&self.node))
                .key(node_streams_key(&self.node))
                .arg(epoch)
                .arg(ms(self.lease))
                .invoke_async(&mut con)
                .await
                .map_err(unavailable)?;
            if renewed == 1 {
                return Ok(());
            }
            // Expired (or taken over by a restart with the same node ID): start again, empty.
            self.register().await?;
            Err(StoreError::LeaseLost)
        })
    }

    fn renew_every(&self) -> Duration {
        self.lease / 3
    }

    fn claim_stream<'a>(
        &'a self,
        app: AppId,
        stream_id: &'a StreamId,
        session: SessionId,
    ) -> StoreFuture<'a, Claim> {
        Box::pin(async move {
            let epoch = self.epoch();
            let mut con = self.con.clone();
            let r: i64 = self
                .scripts
                .claim
                .key(stream_key(app, stream_id))
                .key(node_key(&self.node))
                .key(node_streams_key(&self.node))
                .arg(self.owner(epoch, session))
                .arg(epoch)
                .arg(ms(self.lease))
                .arg("huddle:node:")
                .invoke_async(&mut con)
                .await
                .map_err(unavailable)?;
            match r {
                1 => {
                    let mut held = self.held.lock();
                    let list = held.entry(session).or_default();
                    if !list.iter().any(|(a, s)| *a == app && s == stream_id) {
                        list.push((app, stream_id.clone()));
                    }
                    Ok(Claim::Won)
                }
                0 => Ok(Claim::Taken),
                _ => Err(StoreError::LeaseLost),
            }
        })
    }

    fn release_stream<'a>(
        &'a self,
        app: AppId,
        stream_id: &'a StreamId,
        session: SessionId,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.forget(app, stream_id, session);
            self.release_one(app, stream_id, session).await
        })
    }

    fn release_session(&self, session: SessionId) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let list = self.held.lock().remove(&session).unwrap_or_default();
            let mut result = Ok(());
            for (app, stream_id) in list {
                if let Err(e) = self.release_one(app, &stream_id, session).await {
                    // The rest are still released; what failed expires with the lease if the
                    // node dies, or stays this session's (gone) until the node leaves.
                    result = Err(e);
                }
            }
            result
        })
    }

    fn leave(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let epoch = self.epoch.swap(0, Ordering::AcqRel);
            self.held.lock().clear();
            let mut con = self.con.clone();
            let _: i64 = self
                .scripts
                .leave
                .key(node_key(&self.node))
                .key(node_streams_key(&self.node))
                .arg(epoch)
                .arg(format!("{}|{epoch}|", self.node))
                .invoke_async(&mut con)
                .await
                .map_err(unavailable)?;
            Ok(())
        })
    }
}
