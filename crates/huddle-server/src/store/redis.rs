//! The store of a cluster on Redis: leases, stream-ID claims, each change one Lua script so
//! that it is atomic (`docs/cluster.md` lists the keys and their lifetimes).
//!
//! Fencing: registering takes a fresh *lease epoch* from one counter (`huddle:epoch`), and a
//! claim names its owner as `node|epoch|session`. A claim succeeds only while the claiming
//! node's lease still holds its epoch, and it takes an ID held by another owner only once that
//! owner's node no longer holds the owner's epoch (its lease expired, or the node restarted and
//! registered anew). So a node cut off longer than its lease cannot win anything with its old
//! epoch, and its IDs are free the moment its lease ends.
//!
//! Rooms: each room has a hash of users and one of streams (field: the ID; value:
//! `node|epoch|JSON`, the owner first), a history (a Redis stream, trimmed to about
//! [`HISTORY`] entries) and a sequence counter. Every change of a node's part is one script
//! that changes the hash and appends to the history together, so a snapshot (the hashes and
//! the history's last ID, read in one script) and the events after it are exactly the room.
//!
//! Settling: when Redis lost its data (a restart without persistence), a node that had a lease
//! finds its counter gone as it registers anew, and marks the store as settling for one lease:
//! meanwhile only re-claims of IDs the nodes still publish succeed ([`Store::reclaim_stream`]),
//! so an ID is not handed to a new publisher before its live owner has claimed it again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use huddle_proto::{AppId, RoomId, StreamId, UserId};
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tracing::warn;

use super::{Claim, Claimant, RoomCursor, RoomEvent, Store, StoreError, StoreFuture};
use crate::registry::{RemoteRoom, RoomChange, SessionId};

/// How long one Redis command may take (connecting included) before the operation fails.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);

const REGISTER: &str = r"
local e = redis.call('INCR', KEYS[2])
if e == 1 and ARGV[2] == '1' then redis.call('SET', KEYS[4], '1', 'PX', ARGV[1]) end
redis.call('SET', KEYS[1], e, 'PX', ARGV[1])
redis.call('DEL', KEYS[3])
return e
";

/// KEYS: the lease, the node's set of stream keys. ARGV: epoch, lease (ms), `node|epoch|`.
/// Returns `{}` when the lease is gone, else `{'ok', lost...}`: the keys of the set no longer
/// held under this lease (taken over by another node), which leave the set.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {} end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local out = {'ok'}
local keys = redis.call('SMEMBERS', KEYS[2])
for _, k in ipairs(keys) do
  local v = redis.call('GET', k)
  if v and string.sub(v, 1, #ARGV[3]) == ARGV[3] then
    redis.call('PEXPIRE', k, ARGV[2])
    local app = string.match(k, '^huddle:stream:([^:]*):')
    if app then redis.call('PEXPIRE', 'huddle:app:' .. app .. ':streams', ARGV[2]) end
  else
    redis.call('SREM', KEYS[2], k)
    table.insert(out, k)
  end
end
if #keys > 0 then redis.call('PEXPIRE', KEYS[2], ARGV[2]) end
return out
";

/// KEYS: the stream key, this node's lease, its set of stream keys, the settle mark, the
/// claimant's room users hash, the app's hash of published streams. ARGV: the owner record
/// (`node|epoch|session|room|user`), epoch, lease (ms), the lease key prefix, restore (`1`),
/// `node|epoch`, `room|user`, the user ID, the stream ID, the AppID-wide stream limit.
/// Returns 1 (won), 2 (taken over from an older login of the same user), 0 (taken), -1 (lease
/// lost), -2 (settling), -3 (the app is at its stream limit).
///
/// The app's hash counts its streams across the nodes (field: the stream ID, value: the
/// holder's `node|epoch`); entries of dead leases are swept out only when the count reaches
/// the limit, so a claim below it costs no scan.
const CLAIM: &str = r"
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return -1 end
if ARGV[5] ~= '1' and redis.call('EXISTS', KEYS[4]) == 1 then return -2 end
local cur = redis.call('GET', KEYS[1])
local won = 1
if cur and cur ~= ARGV[1] then
  local node, epoch, rest = string.match(cur, '^([^|]*)|([^|]*)|[^|]*|?(.*)$')
  if node and redis.call('GET', ARGV[4] .. node) == epoch then
    if ARGV[5] == '1' or rest ~= ARGV[7] or node .. '|' .. epoch == ARGV[6] then return 0 end
    local u = redis.call('HGET', KEYS[5], ARGV[8])
    if not u or string.sub(u, 1, #ARGV[6] + 1) ~= ARGV[6] .. '|' then return 0 end
    won = 2
  end
end
local limit = tonumber(ARGV[10])
if ARGV[5] ~= '1' and redis.call('HEXISTS', KEYS[6], ARGV[9]) == 0 then
  local n = redis.call('HLEN', KEYS[6])
  if n >= limit then
    local all = redis.call('HGETALL', KEYS[6])
    for i = 1, #all, 2 do
      local node, epoch = string.match(all[i + 1], '^([^|]*)|([^|]*)$')
      if not node or redis.call('GET', ARGV[4] .. node) ~= epoch then
        redis.call('HDEL', KEYS[6], all[i])
        n = n - 1
      end
    end
  end
  if n >= limit then return -3 end
end
redis.call('HSET', KEYS[6], ARGV[9], ARGV[6])
redis.call('PEXPIRE', KEYS[6], ARGV[3])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
redis.call('SADD', KEYS[3], KEYS[1])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
return won
";

/// KEYS: the stream key, the node's set, the app's hash of streams. ARGV: `node|epoch|session|`
/// (the record's start), the stream ID.
const RELEASE: &str = r"
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, #ARGV[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('HDEL', KEYS[3], ARGV[2])
end
redis.call('SREM', KEYS[2], KEYS[1])
return 1
";

const LEAVE: &str = r"
for _, k in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local v = redis.call('GET', k)
  if v and string.sub(v, 1, #ARGV[2]) == ARGV[2] then
    redis.call('DEL', k)
    local app, id = string.match(k, '^huddle:stream:([^:]*):(.*)$')
    if app then redis.call('HDEL', 'huddle:app:' .. app .. ':streams', id) end
  end
end
redis.call('DEL', KEYS[2])
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
";

/// KEYS: users, streams or extra hash, history, sequence, this node's lease. ARGV: owner, epoch,
/// field, `add` (owned entry), `readd` (an add after a lost lease: not over another live
/// node's entry), `set` (room-wide entry), `log` (history only) or `del`, value (JSON), event
/// kind, history length, key lifetime (ms), the lease key prefix.
const ROOM_CHANGE: &str = r"
if redis.call('GET', KEYS[4]) ~= ARGV[2] then return -1 end
if ARGV[4] == 'readd' then
  local cur = redis.call('HGET', KEYS[1], ARGV[3])
  if cur then
    local node, epoch = string.match(cur, '^([^|]*)|([^|]*)|')
    if node and node .. '|' .. epoch ~= ARGV[1] and redis.call('GET', ARGV[9] .. node) == epoch then
      return 0
    end
  end
  redis.call('HSET', KEYS[1], ARGV[3], ARGV[1] .. '|' .. ARGV[5])
elseif ARGV[4] == 'add' then
  redis.call('HSET', KEYS[1], ARGV[3], ARGV[1] .. '|' .. ARGV[5])
elseif ARGV[4] == 'set' then
  redis.call('HSET', KEYS[1], ARGV[3], ARGV[5])
elseif ARGV[4] == 'log' then
else
  local cur = redis.call('HGET', KEYS[1], ARGV[3])
  if not cur or string.sub(cur, 1, #ARGV[1] + 1) ~= ARGV[1] .. '|' then return 0 end
  redis.call('HDEL', KEYS[1], ARGV[3])
end
local seq = redis.call('INCR', KEYS[3])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[7], '*', 'seq', seq, 'owner', ARGV[1],
  'kind', ARGV[6], 'field', ARGV[3], 'data', ARGV[5])
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[8]) end
return 1
";

/// KEYS: users hash, streams hash, history, sequence, extra hash. ARGV: the asking node's owner,
/// the lease key prefix. Returns the history's last ID, the sequence, the live entries of
/// others, and the room's extra info.
const SNAPSHOT: &str = r"
local function live(h)
  local out = {}
  local all = redis.call('HGETALL', h)
  for i = 1, #all, 2 do
    local v = all[i + 1]
    local node, epoch = string.match(v, '^([^|]*)|([^|]*)|')
    if node and redis.call('GET', ARGV[2] .. node) == epoch
      and string.sub(v, 1, #ARGV[1] + 1) ~= ARGV[1] .. '|' then
      table.insert(out, v)
    end
  end
  return out
end
local last = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
local id = '0-0'
if #last > 0 then id = last[1][1] end
local seq = redis.call('GET', KEYS[4]) or '0'
return {id, seq, live(KEYS[1]), live(KEYS[2]), redis.call('HVALS', KEYS[5])}
";

/// KEYS: users hash, streams hash, history, sequence, extra hash. ARGV: the lease key prefix,
/// history length, key lifetime (ms). Deletes the entries whose owner's lease has ended.
const REAP: &str = r"
local n = 0
for _, h in ipairs({2, 1}) do
  local all = redis.call('HGETALL', KEYS[h])
  for i = 1, #all, 2 do
    local v = all[i + 1]
    local node, epoch = string.match(v, '^([^|]*)|([^|]*)|')
    if not node or redis.call('GET', ARGV[1] .. node) ~= epoch then
      redis.call('HDEL', KEYS[h], all[i])
      local seq = redis.call('INCR', KEYS[4])
      local kind = 'ud'
      if h == 2 then kind = 'sd' end
      redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*', 'seq', seq,
        'owner', (node or '') .. '|' .. (epoch or ''), 'kind', kind, 'field', all[i], 'data', '')
      n = n + 1
    end
  end
end
for i = 1, 5 do redis.call('PEXPIRE', KEYS[i], ARGV[3]) end
return n
";

/// About how many events a room's history keeps: a follower further behind than this reads a
/// fresh snapshot instead (it sees a gap in the sequence).
pub const HISTORY: usize = 1024;

/// How long `XREAD` waits for a room event before the reader looks at its rooms again.
const READ_BLOCK: Duration = Duration::from_millis(250);

/// Events read at once, at most.
const READ_COUNT: usize = 256;

/// The key that marks the store as settling after it lost its data.
const SETTLE_KEY: &str = "huddle:settle";

/// The key prefix of a room: `huddle:room:{app}:{room}`, then `:users`, `:streams`, `:extra`,
/// `:log`, `:seq`.
fn room_key(app: AppId, room: &RoomId, part: &str) -> String {
    format!("huddle:room:{app}:{room}:{part}")
}

/// The key of node `node`'s lease (its value: the lease epoch).
fn node_key(node: &str) -> String {
    format!("huddle:node:{node}")
}

/// The key of the URL node `node` advertises for pulls (lives with its lease).
fn node_url_key(node: &str) -> String {
    format!("huddle:node:{node}:url")
}

/// The key of the set of stream keys node `node` holds.
fn node_streams_key(node: &str) -> String {
    format!("huddle:node:{node}:streams")
}

/// The key of an app's hash of published streams (stream ID → `node|epoch`): the AppID-wide
/// stream count.
fn app_streams_key(app: AppId) -> String {
    format!("huddle:app:{app}:streams")
}

/// The key of a stream ID (its value: the owner, `node|epoch|session|room|user`).
fn stream_key(app: AppId, stream_id: &StreamId) -> String {
    format!("huddle:stream:{app}:{stream_id}")
}

/// The store of one node of a cluster on Redis ([`Store`]).
pub struct RedisStore {
    con: ConnectionManager,
    /// A connection of its own for the reader's blocking `XREAD`, so that it never delays a
    /// claim.
    reader: ConnectionManager,
    node: String,
    lease: Duration,
    /// The epoch of this node's lease (0: none).
    epoch: AtomicU64,
    /// The stream IDs each session of this node holds, to release them when it ends.
    held: Mutex<HashMap<SessionId, Vec<(AppId, StreamId)>>>,
    /// The URL other nodes pull this node's streams from ([`Store::advertise`]).
    url: Mutex<Option<String>>,
    /// The room and user (`room|user`) of each session that claimed with them, kept across a
    /// lost lease so that a re-claim records them again.
    tags: Mutex<HashMap<SessionId, String>>,
    /// Streams one AppID may publish at once across the cluster (`max_streams_per_app`).
    stream_limit: usize,
    /// IDs the last renewals found taken over by another node ([`Store::take_fenced`]).
    fenced: Mutex<Vec<(AppId, StreamId, SessionId)>>,
    scripts: Scripts,
}

struct Scripts {
    register: redis::Script,
    renew: redis::Script,
    claim: redis::Script,
    release: redis::Script,
    leave: redis::Script,
    room_change: redis::Script,
    snapshot: redis::Script,
    reap: redis::Script,
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
            .get_connection_manager_with_config(config.clone())
            .await
            .map_err(unavailable)?;
        let reader = client
            .get_connection_manager_with_config(
                config.set_response_timeout(Some(COMMAND_TIMEOUT + READ_BLOCK)),
            )
            .await
            .map_err(unavailable)?;
        let store = RedisStore {
            con,
            reader,
            node: node.to_string(),
            lease,
            epoch: AtomicU64::new(0),
            held: Mutex::new(HashMap::new()),
            url: Mutex::new(None),
            tags: Mutex::new(HashMap::new()),
            stream_limit: usize::MAX,
            fenced: Mutex::new(Vec::new()),
            scripts: Scripts {
                register: redis::Script::new(REGISTER),
                renew: redis::Script::new(RENEW),
                claim: redis::Script::new(CLAIM),
                release: redis::Script::new(RELEASE),
                leave: redis::Script::new(LEAVE),
                room_change: redis::Script::new(ROOM_CHANGE),
                snapshot: redis::Script::new(SNAPSHOT),
                reap: redis::Script::new(REAP),
            },
        };
        store.register().await?;
        Ok(store)
    }

    /// Sets the most streams one AppID publishes at once across the cluster (claims beyond are
    /// answered [`Claim::OverLimit`]); unlimited by default.
    pub fn with_stream_limit(mut self, limit: usize) -> RedisStore {
        self.stream_limit = limit;
        self
    }

    /// The epoch of this node's lease now (0: none).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Takes a new lease (a new epoch): nothing held under an earlier one counts any more.
    async fn register(&self) -> Result<u64, StoreError> {
        let mut con = self.con.clone();
        let had_lease = self.epoch() != 0;
        let epoch: u64 = self
            .scripts
            .register
            .key(node_key(&self.node))
            .key("huddle:epoch")
            .key(node_streams_key(&self.node))
            .key(SETTLE_KEY)
            .arg(ms(self.lease))
            .arg(if had_lease { "1" } else { "0" })
            .invoke_async(&mut con)
            .await
            .map_err(unavailable)?;
        self.held.lock().clear();
        self.epoch.store(epoch, Ordering::Release);
        Ok(epoch)
    }

    /// Writes the advertised URL, if any, for the lease's lifetime.
    async fn publish_url(&self) -> Result<(), StoreError> {
        let url = self.url.lock().clone();
        let Some(url) = url else { return Ok(()) };
        let mut con = self.con.clone();
        let () = redis::cmd("SET")
            .arg(node_url_key(&self.node))
            .arg(url)
            .arg("PX")
            .arg(ms(self.lease))
            .query_async(&mut con)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// The start of the owner record of what `session` claims under lease `epoch`.
    fn session_owner(&self, epoch: u64, session: SessionId) -> String {
        format!("{}|{epoch}|{session}|", self.node)
    }

    /// The stream keys a renewal found taken over: noted for [`Store::take_fenced`] and
    /// forgotten here (their release would change nothing).
    fn note_fenced(&self, lost: &[String]) {
        if lost.is_empty() {
            return;
        }
        let mut fenced = Vec::new();
        let mut held = self.held.lock();
        for (session, list) in held.iter_mut() {
            list.retain(|(app, stream_id)| {
                let gone = lost.contains(&stream_key(*app, stream_id));
                if gone {
                    fenced.push((*app, stream_id.clone(), *session));
                }
                !gone
            });
        }
        held.retain(|_, list| !list.is_empty());
        drop(held);
        warn!(node = %self.node, ?fenced, "stream IDs of this node were taken over by another node");
        self.fenced.lock().extend(fenced);
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
            .key(app_streams_key(app))
            .arg(self.session_owner(epoch, session))
            .arg(stream_id.as_str())
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
            let renewed: Vec<String> = self
                .scripts
                .renew
                .key(node_key(&self.node))
                .key(node_streams_key(&self.node))
                .arg(epoch)
                .arg(ms(self.lease))
                .arg(format!("{}|{epoch}|", self.node))
                .invoke_async(&mut con)
                .await
                .map_err(unavailable)?;
            if let Some((_, lost)) = renewed.split_first() {
                self.note_fenced(lost);
                self.publish_url().await?;
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
        Box::pin(self.claim(app, stream_id, session, None, false))
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
            self.tags.lock().remove(&session);
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
            self.tags.lock().clear();
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

    fn reclaim_stream<'a>(
        &'a self,
        app: AppId,
        stream_id: &'a StreamId,
        session: SessionId,
    ) -> StoreFuture<'a, Claim> {
        Box::pin(self.claim(app, stream_id, session, None, true))
    }

    fn owner(&self) -> String {
        format!("{}|{}", self.node, self.epoch())
    }

    fn room_change<'a>(
        &'a self,
        app: AppId,
        room: &'a RoomId,
        change: &'a RoomChange,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let (part, field, op, value, kind) = match change {
                RoomChange::UserAdd(u) => ("users", u.user_id.to_string(), "add", json(u)?, "ua"),
                RoomChange::UserDelete(id) => ("users", id.to_string(), "del", String::new(), "ud"),
                RoomChange::StreamAdd(s) => ("streams", s.stream_id.to_string(), "add", json(s)?, "sa"),
                RoomChange::StreamDelete(id) => ("streams", id.to_string(), "del", String::new(), "sd"),
                RoomChange::Message(m) => ("users", String::new(), "log", json(m)?, "m"),
                RoomChange::StreamExtraInfo(s) => ("streams", s.stream_id.to_string(), "add", json(s)?, "sx"),
                RoomChange::RoomExtraInfo(i) => ("extra", i.key.clone(), "set", json(i)?, "rx"),
            };
            self.change(app, room, part, field, op, value, kind).await?;
            Ok(())
        })
    }

    fn room_snapshot<'a>(&'a self, app: AppId, room: &'a RoomId) -> StoreFuture<'a, RemoteRoom> {
        Box::pin(async move {
            let mut con = self.con.clone();
            type Reply = (String, String, Vec<String>, Vec<String>, Vec<String>);
            let (cursor, seq, users, streams, extra): Reply = self
                .scripts
                .snapshot
                .key(room_key(app, room, "users"))
                .key(room_key(app, room, "streams"))
                .key(room_key(app, room, "log"))
                .key(room_key(app, room, "seq"))
                .key(room_key(app, room, "extra"))
                .arg(self.owner())
                .arg("huddle:node:")
                .invoke_async(&mut con)
                .await
                .map_err(unavailable)?;
            Ok(RemoteRoom {
                cursor,
                seq: seq.parse().unwrap_or(0),
                users: users.iter().filter_map(|v| entry(v)).collect(),
                streams: streams.iter().filter_map(|v| entry(v)).collect(),
                extra: extra
                    .iter()
                    .filter_map(|v| serde_json::from_str(v).ok())
                    .collect(),
            })
        })
    }

    fn read_rooms<'a>(&'a self, rooms: &'a [RoomCursor]) -> StoreFuture<'a, Vec<RoomEvent>> {
        Box::pin(async move {
            if rooms.is_empty() {
                tokio::time::sleep(READ_BLOCK).await;
                return Ok(Vec::new());
            }
            let mut cmd = redis::cmd("XREAD");
            cmd.arg("COUNT")
                .arg(READ_COUNT)
                .arg("BLOCK")
                .arg(ms(READ_BLOCK))
                .arg("STREAMS");
            for r in rooms {
                cmd.arg(room_key(r.app, &r.room, "log"));
            }
            for r in rooms {
                cmd.arg(&r.cursor);
            }
            let mut con = self.reader.clone();
            type Reply = Option<Vec<(String, Vec<(String, HashMap<String, String>)>)>>;
            let reply: Reply = cmd.query_async(&mut con).await.map_err(unavailable)?;
            let mut events = Vec::new();
            for (key, entries) in reply.unwrap_or_default() {
                let Some(r) = rooms.iter().find(|r| room_key(r.app, &r.room, "log") == key) else {
                    continue;
                };
                for (id, fields) in entries {
                    match event(r, id, &fields) {
                        Some(e) => events.push(e),
                        None => warn!(key, "an unreadable room event was skipped"),
                    }
                }
            }
            Ok(events)
        })
    }

    fn reap_rooms<'a>(&'a self, rooms: &'a [(AppId, RoomId)]) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            for (app, room) in rooms {
                let mut con = self.con.clone();
                let _: i64 = self
                    .scripts
                    .reap
                    .key(room_key(*app, room, "users"))
                    .key(room_key(*app, room, "streams"))
                    .key(room_key(*app, room, "log"))
                    .key(room_key(*app, room, "seq"))
                    .key(room_key(*app, room, "extra"))
                    .arg("huddle:node:")
                    .arg(HISTORY)
                    .arg(ms(self.room_lifetime()))
                    .invoke_async(&mut con)
                    .await
                    .map_err(unavailable)?;
            }
            Ok(())
        })
    }

    fn advertise(&self, url: String) {
        *self.url.lock() = Some(url);
    }

    fn claim_stream_for<'a>(
        &'a self,
        app: AppId,
        stream_id: &'a StreamId,
        who: &'a Claimant,
    ) -> StoreFuture<'a, Claim> {
        Box::pin(self.claim(app, stream_id, who.session, Some(who), false))
    }

    fn take_fenced(&self) -> Vec<(AppId, StreamId, SessionId)> {
        std::mem::take(&mut *self.fenced.lock())
    }

    fn restore_user<'a>(
        &'a self,
        app: AppId,
        room: &'a RoomId,
        user: &'a huddle_proto::User,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let r = self
                .change(
                    app,
                    room,
                    "users",
                    user.user_id.to_string(),
                    "readd",
                    json(user)?,
                    "ua",
                )
                .await?;
            Ok(r == 1)
        })
    }

    fn node_url<'a>(&'a self, node: &'a str) -> StoreFuture<'a, Option<String>> {
        Box::pin(async move {
            let mut con = self.con.clone();
            redis::cmd("GET")
                .arg(node_url_key(node))
                .query_async(&mut con)
                .await
                .map_err(unavailable)
        })
    }
}

/// A value as JSON (what a room's hash and history hold).
fn json<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Unavailable(format!("encoding an entry: {e}")))
}

/// An entry of a room's hash, `node|epoch|JSON`: its owner and value (`None`: unreadable).
fn entry<T: serde::de::DeserializeOwned>(v: &str) -> Option<(String, T)> {
    let mut parts = v.splitn(3, '|');
    let (node, epoch, data) = (parts.next()?, parts.next()?, parts.next()?);
    let value = serde_json::from_str(data).ok()?;
    Some((format!("{node}|{epoch}"), value))
}

/// An event of a room's history (`None`: unreadable).
fn event(room: &RoomCursor, id: String, f: &HashMap<String, String>) -> Option<RoomEvent> {
    let field = f.get("field")?;
    let change = match f.get("kind")?.as_str() {
        "ua" => RoomChange::UserAdd(serde_json::from_str(f.get("data")?).ok()?),
        "ud" => RoomChange::UserDelete(UserId::new(field).ok()?),
        "sa" => RoomChange::StreamAdd(serde_json::from_str(f.get("data")?).ok()?),
        "sd" => RoomChange::StreamDelete(StreamId::new(field).ok()?),
        "m" => RoomChange::Message(serde_json::from_str(f.get("data")?).ok()?),
        "sx" => RoomChange::StreamExtraInfo(serde_json::from_str(f.get("data")?).ok()?),
        "rx" => RoomChange::RoomExtraInfo(serde_json::from_str(f.get("data")?).ok()?),
        _ => return None,
    };
    Some(RoomEvent {
        app: room.app,
        room: room.room.clone(),
        cursor: id,
        seq: f.get("seq")?.parse().ok()?,
        owner: f.get("owner")?.clone(),
        change,
    })
}

impl RedisStore {
    /// How long a room's keys live without a change or a reap: three leases.
    fn room_lifetime(&self) -> Duration {
        self.lease * 3
    }

    /// One change of this node's part of a room (the `ROOM_CHANGE` script): 1 done, 0 not (a
    /// delete of an entry not this node's, a re-add over another live node's entry).
    #[allow(clippy::too_many_arguments)]
    async fn change(
        &self,
        app: AppId,
        room: &RoomId,
        part: &str,
        field: String,
        op: &str,
        value: String,
        kind: &str,
    ) -> Result<i64, StoreError> {
        let epoch = self.epoch();
        let mut con = self.con.clone();
        let r: i64 = self
            .scripts
            .room_change
            .key(room_key(app, room, part))
            .key(room_key(app, room, "log"))
            .key(room_key(app, room, "seq"))
            .key(node_key(&self.node))
            .arg(format!("{}|{epoch}", self.node))
            .arg(epoch)
            .arg(field)
            .arg(op)
            .arg(value)
            .arg(kind)
            .arg(HISTORY)
            .arg(ms(self.room_lifetime()))
            .arg("huddle:node:")
            .invoke_async(&mut con)
            .await
            .map_err(unavailable)?;
        if r < 0 {
            return Err(StoreError::LeaseLost);
        }
        Ok(r)
    }

    /// A claim (see [`Store::claim_stream`]); `who`: the claimant's room and user, recorded
    /// with the claim, and what allows a takeover from an older login of the same user.
    async fn claim(
        &self,
        app: AppId,
        stream_id: &StreamId,
        session: SessionId,
        who: Option<&Claimant>,
        restore: bool,
    ) -> Result<Claim, StoreError> {
        {
            let epoch = self.epoch();
            // A re-claim records the room and user of the session's first claim again (a
            // restore never takes over, but a newer login may take over from it later).
            let tag = match who {
                Some(w) => {
                    let tag = format!("{}|{}", w.room, w.user);
                    self.tags.lock().insert(session, tag.clone());
                    tag
                }
                None => self.tags.lock().get(&session).cloned().unwrap_or_default(),
            };
            let users = who
                .map(|w| room_key(app, &w.room, "users"))
                .unwrap_or_else(|| format!("huddle:nouser:{app}"));
            let mut con = self.con.clone();
            let r: i64 = self
                .scripts
                .claim
                .key(stream_key(app, stream_id))
                .key(node_key(&self.node))
                .key(node_streams_key(&self.node))
                .key(SETTLE_KEY)
                .key(users)
                .key(app_streams_key(app))
                .arg(format!("{}{tag}", self.session_owner(epoch, session)))
                .arg(epoch)
                .arg(ms(self.lease))
                .arg("huddle:node:")
                .arg(if restore { "1" } else { "0" })
                .arg(format!("{}|{epoch}", self.node))
                .arg(&tag)
                .arg(who.map(|w| w.user.to_string()).unwrap_or_default())
                .arg(stream_id.as_str())
                .arg(self.stream_limit)
                .invoke_async(&mut con)
                .await
                .map_err(unavailable)?;
            match r {
                1 | 2 => {
                    let mut held = self.held.lock();
                    let list = held.entry(session).or_default();
                    if !list.iter().any(|(a, s)| *a == app && s == stream_id) {
                        list.push((app, stream_id.clone()));
                    }
                    Ok(if r == 2 { Claim::TakenOver } else { Claim::Won })
                }
                0 => Ok(Claim::Taken),
                -2 => Err(StoreError::Settling),
                -3 => Ok(Claim::OverLimit),
                _ => Err(StoreError::LeaseLost),
            }
        }
    }
}
