//! The cluster's webhook log, in the Redis the nodes share: one sequence per app for the whole
//! cluster, one log every node appends to and reads replays from, and one delivering node per
//! receiver at a time.
//!
//! - **Numbering.** Each node's writer task appends its events with one Lua script ([`APPEND`]):
//!   `INCR huddle:hooks:{app}:seq` and `XADD huddle:hooks:{app}:log` with the stream ID
//!   `0-{seq}`, so the log's IDs *are* the sequence numbers and a replay reads from `0-{from}`.
//!   The log is trimmed to about `webhook_log_events` entries per app (`MAXLEN ~`).
//! - **The room's life is the cluster's.** The same script keeps, per room, who is in it on which
//!   node (`huddle:hooks:{app}:room:{room}`: users and streams with their owner `node|epoch`, and
//!   the room's session ID): `room_create` comes with the first member on any node, `room_close`
//!   after the last one leaves, whatever node they were on; a user who logs in on another node
//!   while still in the room there (a duplicate login) is no new login. What a node that died left
//!   behind (its lease no longer holds its epoch) is told as `stream_close` and `room_logout` by
//!   the next login to the room, before that login.
//! - **Delivery.** Every node runs one deliverer per receiver; the one that holds the receiver's
//!   delivery lease (`…:rx:{url hash}:lease`, `SET NX PX`, as long as the node's cluster lease,
//!   renewed every third of it) sends the events in order from the receiver's cursor
//!   (`…:rx:{url hash}:cursor`), the others wait for the lease. The cursor moves only while the
//!   lease holds (one script), so a node that lost its lease stops at once; a node that dies
//!   mid-delivery leaves its lease to expire and another node goes on from the cursor: at least
//!   once (the event in flight may come twice, with the same `seq`), never lost.
//!
//! `docs/operations.md` and `docs/cluster.md` list the keys and their lifetimes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use huddle_proto::AppId;
use parking_lot::Mutex;
use rand::Rng;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::{
    ATTEMPT_TIMEOUT, EventLog, FIRST_BACKOFF, LogFuture, MAX_BACKOFF, Pending, Replay, StartCtx,
    WebhookCounts, WriterMsg, attempt, signed_body, unix_ms, url_key,
};
use crate::config::AppConfig;

/// How long one Redis command may take before it fails (and is retried).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);
/// How long an idle deliverer waits on the log (`XREAD BLOCK`) before it looks at its cursor
/// and lease again (a replay moves the cursor back without a new event).
const READ_BLOCK: Duration = Duration::from_millis(250);
/// Events a deliverer reads at once.
const READ_COUNT: usize = 64;
/// How long a room's membership record lives after its last change (a room whose every node
/// died without a later login is forgotten then).
const ROOM_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long `stop` waits for the writer to append what was queued and for the deliveries in
/// flight to end.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// KEYS: the app's sequence, its log, the room's membership hash (any key for events without a
/// room). ARGV: 1 kind (`-`, `login`, `logout`, `screate`, `sclose`), 2 the event (JSON), 3 the
/// user or stream ID, 4 the owner `node|epoch`, 5 what is kept of the member, 6 a new room
/// session ID, 7 the log's length, 8 the room record's lifetime (ms), 9 the room ID, 10 now (ms).
/// Returns the last sequence number given (0: nothing to tell).
const APPEND: &str = r"
local h = KEYS[3]
local now = ARGV[10]
local function add(e, sid)
  local seq = redis.call('INCR', KEYS[1])
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[7], '0-' .. seq, 'e', e, 's', sid)
  return seq
end
local kind = ARGV[1]
if kind == '-' then return add(ARGV[2], '') end
local live = {}
local function alive(node, epoch)
  local k = node .. '|' .. epoch
  if live[k] == nil then live[k] = (redis.call('GET', 'huddle:node:' .. node) == epoch) end
  return live[k]
end
local function owned(v)
  return v and string.sub(v, 1, #ARGV[4] + 1) == ARGV[4] .. '|'
end
local sid = redis.call('HGET', h, '~sid')
local last = 0
if kind == 'login' then
  if sid then
    local all = redis.call('HGETALL', h)
    local gone_s, gone_u = {}, {}
    for i = 1, #all, 2 do
      local f, v = all[i], all[i + 1]
      local t = string.sub(f, 1, 2)
      if t == 's:' or t == 'u:' then
        local node, epoch, rest = string.match(v, '^([^|]*)|([^|]*)|(.*)$')
        if not node or not alive(node, epoch) then
          if t == 's:' then table.insert(gone_s, {f, rest or ''}) else table.insert(gone_u, {f, rest or ''}) end
        end
      end
    end
    for _, x in ipairs(gone_s) do
      redis.call('HDEL', h, x[1])
      local created, user, name = string.match(x[2], '^(%d*)|([^|]*)|(.*)$')
      local id = string.sub(x[1], 3)
      add(cjson.encode({event = 'stream_close', room_id = ARGV[9], channel_id = ARGV[9],
        user_id = user or '', user_name = name or '', stream_id = id, stream_alias = id, type = '0',
        create_time_ms = created or '0', close_time_ms = now}), sid)
    end
    for _, x in ipairs(gone_u) do
      redis.call('HDEL', h, x[1])
      redis.call('HINCRBY', h, '~n', -1)
      local login, nick = string.match(x[2], '^(%d*)|(.*)$')
      add(cjson.encode({event = 'room_logout', room_id = ARGV[9], user_account = string.sub(x[1], 3),
        user_nickname = nick or '', login_time = login or '0', logout_time = now, reason = 0}), sid)
    end
    if tonumber(redis.call('HGET', h, '~n') or '0') <= 0 then
      add(cjson.encode({event = 'room_close', room_id = ARGV[9], close_reason = 0, room_close_time = now}), sid)
      redis.call('DEL', h)
      sid = false
    end
  end
  local f = 'u:' .. ARGV[3]
  if redis.call('HEXISTS', h, f) == 1 then
    redis.call('HSET', h, f, ARGV[4] .. '|' .. ARGV[5])
    redis.call('PEXPIRE', h, ARGV[8])
    return 0
  end
  if not sid then
    sid = ARGV[6]
    redis.call('HSET', h, '~sid', sid)
    add(cjson.encode({event = 'room_create', room_id = ARGV[9], room_create_time = now, id_name = ARGV[3]}), sid)
  end
  redis.call('HSET', h, f, ARGV[4] .. '|' .. ARGV[5])
  redis.call('HINCRBY', h, '~n', 1)
  last = add(ARGV[2], sid)
elseif kind == 'logout' then
  local f = 'u:' .. ARGV[3]
  if not owned(redis.call('HGET', h, f)) then return 0 end
  redis.call('HDEL', h, f)
  last = add(ARGV[2], sid or '')
  if redis.call('HINCRBY', h, '~n', -1) <= 0 then
    last = add(cjson.encode({event = 'room_close', room_id = ARGV[9], close_reason = 0, room_close_time = now}), sid or '')
    redis.call('DEL', h)
    return last
  end
elseif kind == 'screate' then
  redis.call('HSET', h, 's:' .. ARGV[3], ARGV[4] .. '|' .. ARGV[5])
  last = add(ARGV[2], sid or '')
else
  local f = 's:' .. ARGV[3]
  if not owned(redis.call('HGET', h, f)) then return 0 end
  redis.call('HDEL', h, f)
  last = add(ARGV[2], sid or '')
end
redis.call('PEXPIRE', h, ARGV[8])
return last
";

/// KEYS: the delivery lease. ARGV: the holder's token, the lease (ms). 1 when held (taken or
/// renewed), 0 when another holds it.
const ACQUIRE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
";

/// KEYS: the delivery lease, the cursor, the app's sequence. ARGV: the holder's token, the
/// cursor the delivery started from, the sequence number delivered. Returns the app's last
/// sequence number; -1 when the lease is lost, -2 when a replay moved the cursor meanwhile.
const ADVANCE: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
if (redis.call('GET', KEYS[2]) or '0') ~= ARGV[2] then return -2 end
redis.call('SET', KEYS[2], ARGV[3])
return tonumber(redis.call('GET', KEYS[3]) or '0')
";

/// KEYS: the app's sequence, then a receiver's cursor. A receiver new to the cluster starts
/// with the events that come from now on.
const INIT: &str = r"
local s = redis.call('GET', KEYS[1]) or '0'
for i = 2, #KEYS do redis.call('SET', KEYS[i], s, 'NX') end
return 1
";

/// KEYS: the receivers' cursors. ARGV: the sequence number before the first to send again.
const REWIND: &str = r"
for i = 1, #KEYS do
  local c = tonumber(redis.call('GET', KEYS[i]) or '0')
  if c > tonumber(ARGV[1]) then redis.call('SET', KEYS[i], ARGV[1]) end
end
return 1
";

/// KEYS: the delivery lease. ARGV: the holder's token.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
";

fn seq_key(app: AppId) -> String {
    format!("huddle:hooks:{app}:seq")
}

fn log_key(app: AppId) -> String {
    format!("huddle:hooks:{app}:log")
}

fn room_key(app: AppId, room: &str) -> String {
    format!("huddle:hooks:{app}:room:{room}")
}

fn cursor_key(app: AppId, rx: &str) -> String {
    format!("huddle:hooks:{app}:rx:{rx}:cursor")
}

fn lease_key(app: AppId, rx: &str) -> String {
    format!("huddle:hooks:{app}:rx:{rx}:lease")
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// One receiver of an app.
struct Rx {
    url: String,
    secret: String,
    /// The URL's short hash, in its keys.
    key: String,
    /// Events not yet delivered, while this node delivers to it (0 otherwise).
    depth: AtomicU64,
}

struct AppHooks {
    app: AppId,
    receivers: Vec<Rx>,
}

struct Scripts {
    append: redis::Script,
    acquire: redis::Script,
    advance: redis::Script,
    init: redis::Script,
    rewind: redis::Script,
    release: redis::Script,
}

struct Shared {
    client: Result<redis::Client, String>,
    lease: Duration,
    keep: usize,
    apps: Vec<AppHooks>,
    scripts: Scripts,
    /// The connection for appends, replays and the deliverers' short commands, once made.
    con: tokio::sync::OnceCell<ConnectionManager>,
}

/// The event log of a cluster, in Redis ([`EventLog`]).
pub(crate) struct RedisLog {
    shared: Arc<Shared>,
    /// The writer and the deliverers, to wait for at [`EventLog::stop`].
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Told by the writer once it appended everything before `Stop`.
    writer_done: Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
}

impl RedisLog {
    /// The log of `apps` in the Redis at `url`; connects when started.
    pub(crate) fn new(url: &str, lease: Duration, keep: usize, apps: &[AppConfig]) -> RedisLog {
        let apps = apps
            .iter()
            .filter(|a| !a.webhooks.is_empty())
            .map(|a| AppHooks {
                app: a.app_id,
                receivers: a
                    .webhooks
                    .iter()
                    .map(|w| Rx {
                        url: w.url.clone(),
                        secret: w
                            .callback_secret
                            .clone()
                            .unwrap_or_else(|| a.server_secret.as_str().to_string()),
                        key: url_key(&w.url),
                        depth: AtomicU64::new(0),
                    })
                    .collect(),
            })
            .collect();
        RedisLog {
            shared: Arc::new(Shared {
                client: redis::Client::open(url).map_err(|e| e.to_string()),
                lease,
                keep,
                apps,
                scripts: Scripts {
                    append: redis::Script::new(APPEND),
                    acquire: redis::Script::new(ACQUIRE),
                    advance: redis::Script::new(ADVANCE),
                    init: redis::Script::new(INIT),
                    rewind: redis::Script::new(REWIND),
                    release: redis::Script::new(RELEASE),
                },
                con: tokio::sync::OnceCell::new(),
            }),
            tasks: Mutex::new(Vec::new()),
            writer_done: Mutex::new(None),
        }
    }
}

impl Shared {
    fn app(&self, app: AppId) -> Option<&AppHooks> {
        self.apps.iter().find(|a| a.app == app)
    }

    async fn connect(&self, response: Duration) -> Result<ConnectionManager, String> {
        let client = self.client.as_ref().map_err(Clone::clone)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(response))
            .set_number_of_retries(2);
        client
            .get_connection_manager_with_config(config)
            .await
            .map_err(|e| e.to_string())
    }

    /// The shared connection (made on first use).
    async fn con(&self) -> Result<ConnectionManager, String> {
        self.con
            .get_or_try_init(|| self.connect(COMMAND_TIMEOUT))
            .await
            .cloned()
    }

    /// Appends one event; the sequence number it got (0: nothing to tell, e.g. the logout of a
    /// user whose entry another node's login replaced).
    async fn append(&self, con: &mut ConnectionManager, owner: &str, p: &Pending) -> Result<u64, String> {
        let event = Value::Object(p.event.clone()).to_string();
        let mut inv = self.scripts.append.prepare_invoke();
        inv.key(seq_key(p.app)).key(log_key(p.app));
        match &p.track {
            Some(t) => {
                inv.key(room_key(p.app, t.room.as_str()))
                    .arg(t.kind.as_str())
                    .arg(event)
                    .arg(&t.id)
                    .arg(owner)
                    .arg(&t.value)
                    .arg((rand::thread_rng().r#gen::<u64>() >> 1).to_string())
                    .arg(self.keep)
                    .arg(ms(ROOM_TTL))
                    .arg(t.room.as_str())
                    .arg(unix_ms().to_string());
            }
            None => {
                inv.key(seq_key(p.app))
                    .arg("-")
                    .arg(event)
                    .arg("")
                    .arg(owner)
                    .arg("")
                    .arg("")
                    .arg(self.keep)
                    .arg(ms(ROOM_TTL))
                    .arg("")
                    .arg(unix_ms().to_string());
            }
        }
        inv.invoke_async(con).await.map_err(|e| e.to_string())
    }
}

impl EventLog for RedisLog {
    fn start(&self, rx: mpsc::Receiver<WriterMsg>, ctx: StartCtx) {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        *self.writer_done.lock() = Some(done_rx);
        let mut tasks = self.tasks.lock();
        let node = ctx
            .store
            .as_ref()
            .map_or_else(|| "node".to_string(), |s| s.node_id().to_string());
        tasks.push(tokio::spawn(write_loop(
            self.shared.clone(),
            rx,
            ctx.store.clone(),
            done_tx,
        )));
        for (a, hooks) in self.shared.apps.iter().enumerate() {
            for r in 0..hooks.receivers.len() {
                tasks.push(tokio::spawn(deliver_loop(
                    self.shared.clone(),
                    a,
                    r,
                    format!("{node}|{:016x}", rand::thread_rng().r#gen::<u64>()),
                    ctx.tls.clone(),
                    ctx.counts.clone(),
                    ctx.shutdown.clone(),
                )));
            }
        }
    }

    fn stop<'a>(&'a self, tx: &'a mpsc::Sender<WriterMsg>) -> LogFuture<'a, ()> {
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + STOP_WAIT;
            let done = self.writer_done.lock().take();
            if let Some(done) = done
                && tx.send_timeout(WriterMsg::Stop, STOP_WAIT).await.is_ok()
            {
                let _ = tokio::time::timeout_at(deadline, done).await;
            }
            let tasks: Vec<_> = std::mem::take(&mut *self.tasks.lock());
            for t in tasks {
                if tokio::time::timeout_at(deadline, t).await.is_err() {
                    warn!("a webhook task did not stop in time");
                }
            }
        })
    }

    fn depths(&self) -> Vec<(AppId, u64)> {
        let mut v: Vec<(AppId, u64)> = self
            .shared
            .apps
            .iter()
            .map(|a| {
                let d = a
                    .receivers
                    .iter()
                    .map(|r| r.depth.load(Ordering::Relaxed))
                    .max()
                    .unwrap_or(0);
                (a.app, d)
            })
            .collect();
        v.sort_by_key(|(a, _)| a.get());
        v
    }

    fn replay(&self, app: AppId, from: u64) -> LogFuture<'_, Replay> {
        Box::pin(async move {
            let Some(hooks) = self.shared.app(app) else {
                return Replay::NotConfigured;
            };
            let result: Result<Replay, String> = async {
                let mut con = self.shared.con().await?;
                let first: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
                    .arg(log_key(app))
                    .arg("-")
                    .arg("+")
                    .arg("COUNT")
                    .arg(1)
                    .query_async(&mut con)
                    .await
                    .map_err(|e| e.to_string())?;
                let last: Option<u64> = redis::cmd("GET")
                    .arg(seq_key(app))
                    .query_async(&mut con)
                    .await
                    .map_err(|e| e.to_string())?;
                let last = last.unwrap_or(0);
                let oldest = first
                    .first()
                    .and_then(|(id, _)| entry_seq(id))
                    .unwrap_or(last + 1);
                if from == 0 || from < oldest || from > last {
                    return Ok(Replay::Unavailable { oldest, last });
                }
                let mut inv = self.shared.scripts.rewind.prepare_invoke();
                for r in &hooks.receivers {
                    inv.key(cursor_key(app, &r.key));
                }
                let _: i64 = inv
                    .arg(from - 1)
                    .invoke_async(&mut con)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(Replay::Scheduled { from, last })
            }
            .await;
            result.unwrap_or_else(Replay::Unreachable)
        })
    }
}

/// The sequence number of a log entry (its ID is `0-{seq}`).
fn entry_seq(id: &str) -> Option<u64> {
    id.strip_prefix("0-")?.parse().ok()
}

/// The writer: appends each event this node queues, in order, retrying while Redis is away
/// (the queue then fills, and past [`super::CHANNEL_CAPACITY`] events are dropped and counted).
async fn write_loop(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<WriterMsg>,
    store: Option<Arc<dyn crate::store::Store>>,
    done: tokio::sync::oneshot::Sender<()>,
) {
    let mut backoff = Duration::from_millis(100);
    // The receivers' cursors exist before this node's first event: a receiver new to the
    // cluster gets the events from now on, this node's first one included.
    let mut con = loop {
        let init = async {
            let mut con = shared.con().await?;
            for a in &shared.apps {
                let mut inv = shared.scripts.init.prepare_invoke();
                inv.key(seq_key(a.app));
                for r in &a.receivers {
                    inv.key(cursor_key(a.app, &r.key));
                }
                let _: i64 = inv.invoke_async(&mut con).await.map_err(|e| e.to_string())?;
            }
            Ok::<_, String>(con)
        };
        match init.await {
            Ok(con) => break con,
            Err(e) => {
                warn!("the webhook log in Redis is not reachable ({e}); retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    };
    info!(apps = shared.apps.len(), "webhook log in the cluster store");
    while let Some(msg) = rx.recv().await {
        let p = match msg {
            WriterMsg::Event(p) => p,
            WriterMsg::Stop => break,
        };
        let mut backoff = Duration::from_millis(50);
        loop {
            let owner = store.as_ref().map_or_else(String::new, |s| s.owner());
            match shared.append(&mut con, &owner, &p).await {
                Ok(_) => break,
                Err(e) => {
                    // The event waits (in order) until Redis answers; a node stopping gives up
                    // after its stop wait.
                    warn!(app = %p.app, "webhook event not appended to the cluster log ({e}); retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
    let _ = done.send(());
    debug!("webhook writer stopped");
}

/// The event to send for a log entry: its JSON with the room's session ID of the cluster.
fn materialize(fields: &[String]) -> Option<String> {
    let mut e = None;
    let mut sid = "";
    for pair in fields.chunks(2) {
        match pair {
            [k, v] if k == "e" => e = Some(v.as_str()),
            [k, v] if k == "s" => sid = v.as_str(),
            _ => {}
        }
    }
    let mut map: Map<String, Value> = serde_json::from_str(e?).ok()?;
    if !sid.is_empty() {
        let name = map.get("event").and_then(Value::as_str).unwrap_or("");
        let field = if name == "room_login" || name == "room_logout" {
            "room_seq"
        } else {
            "room_session_id"
        };
        map.insert(field.into(), sid.into());
    }
    Some(Value::Object(map).to_string())
}

/// Why a deliverer stops delivering for now.
enum Halt {
    /// The lease went to another node, or a replay moved the cursor: read it again.
    Reread,
}

/// One receiver's deliverer on this node: waits for the receiver's delivery lease, then sends
/// the log's events in order from the cursor, retrying each with backoff.
async fn deliver_loop(
    shared: Arc<Shared>,
    a: usize,
    r: usize,
    token: String,
    tls: Arc<rustls::ClientConfig>,
    counts: Arc<WebhookCounts>,
    mut shutdown: watch::Receiver<bool>,
) {
    let app = shared.apps[a].app;
    let rx = &shared.apps[a].receivers[r];
    let uri: Option<axum::http::Uri> = rx.url.parse().ok();
    let lease_k = lease_key(app, &rx.key);
    let cursor_k = cursor_key(app, &rx.key);
    let renew_every = shared.lease / 3;
    let attempt_timeout = ATTEMPT_TIMEOUT.min(shared.lease / 2);
    // A connection of its own for the blocking read.
    let mut reader: Option<ConnectionManager> = None;
    let mut held_at: Option<Instant> = None;
    let mut backoff = FIRST_BACKOFF;
    'outer: loop {
        if *shutdown.borrow() {
            break;
        }
        let Ok(mut con) = shared.con().await else {
            sleep_or_stop(renew_every, &mut shutdown).await;
            continue;
        };
        // Hold (or renew) the lease.
        let held: Result<i64, _> = shared
            .scripts
            .acquire
            .key(&lease_k)
            .arg(&token)
            .arg(ms(shared.lease))
            .invoke_async(&mut con)
            .await;
        if !matches!(held, Ok(1)) {
            if held_at.take().is_some() {
                info!(%app, url = %rx.url, "webhook delivery lease went to another node");
            }
            rx.depth.store(0, Ordering::Relaxed);
            sleep_or_stop(renew_every, &mut shutdown).await;
            continue;
        }
        if held_at.is_none() {
            debug!(%app, url = %rx.url, "this node delivers the webhook events");
        }
        held_at = Some(Instant::now());
        let cursor: Option<u64> = match redis::cmd("GET").arg(&cursor_k).query_async(&mut con).await {
            Ok(c) => c,
            Err(_) => continue,
        };
        let Some(mut cursor) = cursor else {
            // The cursor was lost with Redis's data: from the events there are now on.
            let _: Result<i64, _> = shared
                .scripts
                .init
                .key(seq_key(app))
                .key(&cursor_k)
                .invoke_async(&mut con)
                .await;
            continue;
        };
        let entries: Vec<(String, Vec<String>)> = match redis::cmd("XRANGE")
            .arg(log_key(app))
            .arg(format!("0-{}", cursor + 1))
            .arg("+")
            .arg("COUNT")
            .arg(READ_COUNT)
            .query_async(&mut con)
            .await
        {
            Ok(e) => e,
            Err(e) => {
                debug!(%app, "webhook log read failed: {e}");
                sleep_or_stop(Duration::from_millis(100), &mut shutdown).await;
                continue;
            }
        };
        if entries.is_empty() {
            rx.depth.store(0, Ordering::Relaxed);
            // Wait for the next event (any node's), bounded so that the lease is renewed and a
            // replay seen.
            if reader.is_none() {
                reader = shared.connect(COMMAND_TIMEOUT + READ_BLOCK).await.ok();
            }
            if let Some(reader) = reader.as_mut() {
                let block = READ_BLOCK.min(renew_every);
                let mut cmd = redis::cmd("XREAD");
                cmd.arg("COUNT")
                    .arg(1)
                    .arg("BLOCK")
                    .arg(ms(block))
                    .arg("STREAMS")
                    .arg(log_key(app))
                    .arg(format!("0-{cursor}"));
                let read = cmd.query_async::<redis::Value>(reader);
                tokio::select! {
                    _ = read => {}
                    _ = shutdown.changed() => {}
                }
            } else {
                sleep_or_stop(READ_BLOCK, &mut shutdown).await;
            }
            continue;
        }
        for (id, fields) in entries {
            let Some(seq) = entry_seq(&id) else { continue };
            if seq > cursor + 1 {
                let lost = seq - cursor - 1;
                counts.dropped.fetch_add(lost, Ordering::Relaxed);
                warn!(%app, url = %rx.url, from = cursor + 1, to = seq - 1, "webhook events trimmed from the cluster log before delivery");
            }
            let event = materialize(&fields);
            loop {
                if *shutdown.borrow() {
                    break 'outer;
                }
                // Renew the lease before an attempt when a third of it has passed.
                if held_at.is_some_and(|t| t.elapsed() >= renew_every) {
                    let held: Result<i64, _> = shared
                        .scripts
                        .acquire
                        .key(&lease_k)
                        .arg(&token)
                        .arg(ms(shared.lease))
                        .invoke_async(&mut con)
                        .await;
                    match held {
                        Ok(1) => held_at = Some(Instant::now()),
                        Ok(_) => continue 'outer,
                        Err(_) => {
                            sleep_or_stop(Duration::from_millis(100), &mut shutdown).await;
                            continue;
                        }
                    }
                }
                let body = match &event {
                    Some(e) => signed_body(app, seq, &rx.secret, e),
                    None => Err("a logged event is not JSON".to_string()),
                };
                let result = attempt(uri.as_ref(), &tls, body, attempt_timeout).await;
                match result {
                    Ok(status) if (200..300).contains(&status) => {
                        counts.delivered.fetch_add(1, Ordering::Relaxed);
                        backoff = FIRST_BACKOFF;
                        match advance(&shared, &mut con, &lease_k, &cursor_k, &token, cursor, seq).await {
                            Ok(last) => {
                                cursor = seq;
                                rx.depth.store(last.saturating_sub(seq), Ordering::Relaxed);
                                break;
                            }
                            Err(Halt::Reread) => continue 'outer,
                        }
                    }
                    other => {
                        counts.failed.fetch_add(1, Ordering::Relaxed);
                        let why = match other {
                            Ok(status) => format!("HTTP status {status}"),
                            Err(e) => e,
                        };
                        debug!(%app, url = %rx.url, seq, %why, retry_in_ms = backoff.as_millis() as u64, "webhook delivery failed");
                        sleep_or_stop(backoff, &mut shutdown).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
        }
    }
    // Stopping: the lease is free for another node at once.
    rx.depth.store(0, Ordering::Relaxed);
    if let Ok(mut con) = shared.con().await {
        let _: Result<i64, _> = shared
            .scripts
            .release
            .key(&lease_k)
            .arg(&token)
            .invoke_async(&mut con)
            .await;
    }
}

/// Sleeps for `d`, or until the server stops.
async fn sleep_or_stop(d: Duration, shutdown: &mut watch::Receiver<bool>) {
    if *shutdown.borrow() {
        return;
    }
    tokio::select! {
        () = tokio::time::sleep(d) => {}
        _ = shutdown.changed() => {}
    }
}

/// Moves the cursor past `seq` while the lease holds; the app's last sequence number.
async fn advance(
    shared: &Shared,
    con: &mut ConnectionManager,
    lease_k: &str,
    cursor_k: &str,
    token: &str,
    before: u64,
    seq: u64,
) -> Result<u64, Halt> {
    // A failed write is retried: the event was taken, and only the cursor is behind.
    for _ in 0..20 {
        let r: Result<i64, _> = shared
            .scripts
            .advance
            .key(lease_k)
            .key(cursor_k)
            .key(seq_key_of(cursor_k))
            .arg(token)
            .arg(before)
            .arg(seq)
            .invoke_async(con)
            .await;
        match r {
            Ok(n) if n >= 0 => return Ok(u64::try_from(n).unwrap_or(0)),
            Ok(_) => return Err(Halt::Reread),
            Err(e) => {
                debug!("webhook cursor not moved ({e}); retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    Err(Halt::Reread)
}

/// The app's sequence key from one of its receiver keys (`huddle:hooks:{app}:rx:…`).
fn seq_key_of(cursor_k: &str) -> String {
    match cursor_k.find(":rx:") {
        Some(i) => format!("{}:seq", &cursor_k[..i]),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_becomes_its_event_with_the_clusters_room_session() {
        let fields = |e: &str, s: &str| vec!["e".to_string(), e.to_string(), "s".to_string(), s.to_string()];
        let login = materialize(&fields(r#"{"event":"room_login","room_seq":""}"#, "42")).unwrap();
        assert_eq!(serde_json::from_str::<Value>(&login).unwrap()["room_seq"], "42");
        let create = materialize(&fields(r#"{"event":"stream_create"}"#, "42")).unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&create).unwrap()["room_session_id"],
            "42"
        );
        let rec = materialize(&fields(r#"{"event":"record_started"}"#, "")).unwrap();
        assert!(
            serde_json::from_str::<Value>(&rec)
                .unwrap()
                .get("room_session_id")
                .is_none()
        );
        assert!(materialize(&fields("not json", "1")).is_none());
        assert_eq!(entry_seq("0-17"), Some(17));
        assert_eq!(entry_seq("5-1"), None);
        assert_eq!(seq_key_of("huddle:hooks:7:rx:abc:cursor"), "huddle:hooks:7:seq");
    }
}
