//! Webhooks: rooms created and closed, users logged in and out, streams created and closed, told
//! to the URLs each app configures (`webhook_url`, `[[apps.webhooks]]`), signed as the hosted
//! platform signs its callbacks so that its published verification code works unchanged:
//! `signature = sha1(sort([callback_secret, timestamp, nonce]).join(""))`, hex.
//!
//! The path of an event, and why nothing is lost:
//!
//! 1. The hub sees the registry's [`ClusterCommand`]s while it dispatches an operation
//!    ([`WebhookTap::observe`]): they are exactly the changes of this node's part of each room.
//!    The tap turns them into events and queues them with `try_send` on a bounded channel: a call
//!    never waits for a webhook. Only a full channel (the disk stalled for
//!    [`CHANNEL_CAPACITY`] events) drops one, counted in `/metrics`.
//! 2. The writer thread numbers each event (a per-app sequence number, contiguous from 1 over the
//!    app's whole history) and appends it to `{data_dir}/webhooks/app-{app_id}.jsonl`, one JSON
//!    line each, synced to disk per batch. It is a thread of its own since file writes block.
//! 3. One deliverer task per receiver URL sends the events in order, one at a time, and moves its
//!    cursor (`app-{app_id}.{url hash}.cursor`) past an event once the receiver answered 2xx.
//!    A failure is retried with a doubling delay (1 s up to 60 s), forever: a receiver that is
//!    down for an hour gets the hour's events, in order, when it comes back; after a restart the
//!    server reads the log and the cursors again and goes on where it stopped.
//!
//! Delivery is at least once: an event whose answer was lost (or whose cursor was not yet written
//! when the server stopped) is sent again. Receivers skip a `seq` they have seen. A receiver can
//! also ask for events again from a sequence number (the server API's `ReplayCallbacks`).
//!
//! Memory and disk are bounded: the log keeps every event that some receiver still waits for (at
//! most [`MAX_KEPT`]; past that the oldest are dropped and counted) plus the last [`KEEP_DELIVERED`]
//! delivered ones for replays, and is rewritten without the rest when it grows to twice that.
//!
//! That is the [`FileLog`] of a node alone. In a cluster (`redis` set) the same events go to
//! [`cluster::RedisLog`] behind the same [`EventLog`] seam: one sequence per app for the whole
//! cluster, the room's life (`room_create` / `room_close`) from every node's members, one
//! delivering node per receiver under a lease, and replays from any node (`docs/operations.md`).

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::http::Uri;
use huddle_proto::{AppId, RoomId, StreamId, StreamInfo, UserId, UserName};
use parking_lot::Mutex;
use rand::Rng;
use serde_json::{Map, Value, json};
use sha1::{Digest, Sha1};
use tokio::sync::{Notify, mpsc, watch};
use tracing::{debug, info, warn};

use crate::config::{AppConfig, ConfigError};

mod cluster;
use crate::registry::{ClusterCommand, RoomChange};

/// Events queued between the hub and the writer thread.
pub(crate) const CHANNEL_CAPACITY: usize = 16_384;
/// Delivered events kept for replays, per app.
pub(crate) const KEEP_DELIVERED: usize = 10_000;
/// Events kept per app at most (delivered or not).
pub(crate) const MAX_KEPT: usize = 200_000;
/// How long one delivery attempt may take (connect, send, answer).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// The first retry delay, doubled after each failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The signature of a callback: SHA-1 over the secret, the timestamp and the nonce, sorted as
/// strings and joined, in lower-case hex (the hosted platform's callback signature).
pub(crate) fn callback_signature(secret: &str, timestamp: &str, nonce: &str) -> String {
    let mut parts = [secret, timestamp, nonce];
    parts.sort_unstable();
    hex::encode(Sha1::digest(parts.concat().as_bytes()))
}

/// An event on its way to the writer.
pub(crate) struct Pending {
    app: AppId,
    event: Map<String, Value>,
    /// In a cluster: what the event changes in the room's life there ([`cluster::RedisLog`]
    /// decides `room_create` / `room_close` from every node's members).
    track: Option<Track>,
}

/// What a room event of a cluster changes in the room's life (see [`Pending::track`]).
#[derive(Debug, Clone)]
pub(crate) struct Track {
    room: RoomId,
    kind: TrackKind,
    /// The user or stream ID.
    id: String,
    /// What the log keeps of it, to tell its end if its node dies: for a user
    /// `{login_ms}|{nickname}`, for a stream `{create_ms}|{user_id}|{user_name}`.
    value: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TrackKind {
    Login,
    Logout,
    StreamCreate,
    StreamClose,
}

impl TrackKind {
    fn as_str(self) -> &'static str {
        match self {
            TrackKind::Login => "login",
            TrackKind::Logout => "logout",
            TrackKind::StreamCreate => "screate",
            TrackKind::StreamClose => "sclose",
        }
    }
}

pub(crate) enum WriterMsg {
    Event(Pending),
    Stop,
}

/// One receiver of an app's events.
struct Receiver {
    url: String,
    secret: String,
    cursor_path: PathBuf,
}

struct LogInner {
    /// The log file, open for appending (`None` after a write error: events are kept in memory
    /// only until the next successful rewrite).
    file: Option<std::fs::File>,
    /// Kept events, by sequence number, as JSON text of the event without the signing fields.
    events: VecDeque<(u64, Arc<str>)>,
    next_seq: u64,
    /// Lines in the file (kept and dropped), to know when to rewrite it.
    lines: usize,
    /// Per receiver: the last sequence number it answered 2xx (or was replayed to before).
    cursors: Vec<u64>,
}

/// One app's event log and receivers.
struct AppLog {
    app: AppId,
    path: PathBuf,
    receivers: Vec<Receiver>,
    inner: Mutex<LogInner>,
    /// Wakes the deliverers: new events, or a replay.
    wake: Notify,
}

/// Counts for `/metrics`.
#[derive(Default)]
pub(crate) struct WebhookCounts {
    pub(crate) delivered: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) dropped: AtomicU64,
}

/// What [`Webhooks::start`] hands to the event log: where its tasks stop, the counts, the TLS
/// client configuration, and the cluster store (for the Redis log: this node's lease).
pub(crate) struct StartCtx {
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) counts: Arc<WebhookCounts>,
    pub(crate) tls: Arc<rustls::ClientConfig>,
    pub(crate) store: Option<Arc<dyn crate::store::Store>>,
}

/// A boxed future of the event logs.
pub(crate) type LogFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Where the apps' events are numbered, kept and delivered from: the data directory on one
/// node ([`FileLog`]), or Redis when nodes share one ([`cluster::RedisLog`]). Chosen once at
/// start ([`Webhooks::open`]); nothing else knows which one runs (as with the cluster store).
pub(crate) trait EventLog: Send + Sync + 'static {
    /// Starts numbering what `rx` brings and delivering it (within a tokio runtime).
    fn start(&self, rx: mpsc::Receiver<WriterMsg>, ctx: StartCtx);
    /// Finishes: every event queued so far is kept (written, or appended to the cluster log),
    /// and the deliveries in flight end (their receivers are then free for another node).
    fn stop<'a>(&'a self, tx: &'a mpsc::Sender<WriterMsg>) -> LogFuture<'a, ()>;
    /// Per app: events not yet delivered to every receiver (by this node).
    fn depths(&self) -> Vec<(AppId, u64)>;
    /// Sends the app's events from `from` on again, to every receiver.
    fn replay(&self, app: AppId, from: u64) -> LogFuture<'_, Replay>;
}

/// Every app's webhooks: the event log (a file per app, or the cluster's in Redis), the queue
/// to it and the counts.
pub(crate) struct Webhooks {
    log: Arc<dyn EventLog>,
    apps: Vec<AppId>,
    /// Whether the rooms' lives are the cluster's (the log numbers and tells `room_create` /
    /// `room_close` from the members of every node) or this node's.
    cluster: bool,
    tx: mpsc::Sender<WriterMsg>,
    rx: Mutex<Option<mpsc::Receiver<WriterMsg>>>,
    pub(crate) counts: Arc<WebhookCounts>,
}

/// What a replay request found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Replay {
    /// Events from `from` to `last` will be sent again.
    Scheduled { from: u64, last: u64 },
    /// The app has no webhook.
    NotConfigured,
    /// `from` is older than the oldest kept event (`oldest`) or past the last one (`last`).
    Unavailable { oldest: u64, last: u64 },
    /// The cluster's log could not be read (Redis did not answer).
    Unreachable(String),
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> ConfigError + '_ {
    move |source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The event log's line: `{"seq": N, "event": {...}}`.
fn log_line(seq: u64, event: &str) -> String {
    format!("{{\"seq\":{seq},\"event\":{event}}}\n")
}

impl Webhooks {
    /// Opens the event log of the apps with webhooks: in Redis when `config.redis` is set (the
    /// cluster's, `docs/operations.md`), else under `{data_dir}/webhooks`. `None` when no app
    /// has a webhook.
    pub(crate) fn open(config: &crate::config::ServerConfig) -> Result<Option<Webhooks>, ConfigError> {
        let apps = &config.apps;
        if apps.iter().all(|a| a.webhooks.is_empty()) {
            return Ok(None);
        }
        let (log, cluster): (Arc<dyn EventLog>, bool) = match &config.redis {
            Some(url) => (
                Arc::new(cluster::RedisLog::new(
                    url,
                    config.cluster_lease,
                    config.webhook_log_events,
                    apps,
                )),
                true,
            ),
            None => (Arc::new(FileLog::open(&config.data_dir, apps)?), false),
        };
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        Ok(Some(Webhooks {
            log,
            apps: apps
                .iter()
                .filter(|a| !a.webhooks.is_empty())
                .map(|a| a.app_id)
                .collect(),
            cluster,
            tx,
            rx: Mutex::new(Some(rx)),
            counts: Arc::new(WebhookCounts::default()),
        }))
    }

    /// The hub's end: turns registry changes into events.
    pub(crate) fn tap(&self) -> WebhookTap {
        WebhookTap {
            tx: self.tx.clone(),
            counts: self.counts.clone(),
            apps: self.apps.clone(),
            cluster: self.cluster,
            rooms: HashMap::new(),
            users: HashMap::new(),
            streams: HashMap::new(),
        }
    }

    /// Starts the log's writer and deliverers (within a tokio runtime). A no-op after the first
    /// call.
    pub(crate) fn start(&self, shutdown: watch::Receiver<bool>, store: Option<Arc<dyn crate::store::Store>>) {
        let Some(rx) = self.rx.lock().take() else {
            return;
        };
        self.log.start(
            rx,
            StartCtx {
                shutdown,
                counts: self.counts.clone(),
                tls: tls_config(),
                store,
            },
        );
    }

    /// A handle that queues events from other parts of the server (recording), numbered and
    /// delivered as the registry's are.
    pub(crate) fn sender(&self) -> WebhookSender {
        WebhookSender {
            tx: self.tx.clone(),
            counts: self.counts.clone(),
            apps: self.apps.clone(),
        }
    }

    /// Stops once every event queued so far is kept, and the deliveries in flight ended.
    pub(crate) async fn stop(&self) {
        self.log.stop(&self.tx).await;
    }

    /// Per app: events not yet delivered to every receiver.
    pub(crate) fn depths(&self) -> Vec<(AppId, u64)> {
        self.log.depths()
    }

    /// Sends the app's events from `from` on again, to every receiver.
    pub(crate) async fn replay(&self, app: AppId, from: u64) -> Replay {
        if !self.apps.contains(&app) {
            return Replay::NotConfigured;
        }
        self.log.replay(app, from).await
    }
}

/// The event log of one node: a file per app in the data directory, a writer thread that
/// numbers and appends, one deliverer task per receiver.
pub(crate) struct FileLog {
    logs: HashMap<AppId, Arc<AppLog>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl FileLog {
    fn open(data_dir: &Path, apps: &[AppConfig]) -> Result<FileLog, ConfigError> {
        let dir = data_dir.join("webhooks");
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let mut logs = HashMap::new();
        for app in apps.iter().filter(|a| !a.webhooks.is_empty()) {
            let log = open_log(&dir, app)?;
            logs.insert(app.app_id, Arc::new(log));
        }
        Ok(FileLog {
            logs,
            writer: Mutex::new(None),
        })
    }
}

impl EventLog for FileLog {
    fn start(&self, rx: mpsc::Receiver<WriterMsg>, ctx: StartCtx) {
        let logs: HashMap<AppId, Arc<AppLog>> = self.logs.clone();
        let counts = ctx.counts.clone();
        let writer = std::thread::Builder::new()
            .name("huddle-webhooks".into())
            .spawn(move || write_loop(rx, &logs, &counts));
        match writer {
            Ok(handle) => *self.writer.lock() = Some(handle),
            Err(e) => warn!("the webhook writer thread could not start: {e}"),
        }
        for log in self.logs.values() {
            for idx in 0..log.receivers.len() {
                tokio::spawn(deliver_loop(
                    log.clone(),
                    idx,
                    ctx.tls.clone(),
                    ctx.counts.clone(),
                    ctx.shutdown.clone(),
                ));
            }
        }
    }

    fn stop<'a>(&'a self, tx: &'a mpsc::Sender<WriterMsg>) -> LogFuture<'a, ()> {
        Box::pin(async move {
            // The channel may be full: the writer drains it, so a blocking send ends.
            let handle = self.writer.lock().take();
            if let Some(handle) = handle {
                let tx = tx.clone();
                let _ = std::thread::spawn(move || tx.blocking_send(WriterMsg::Stop)).join();
                let _ = handle.join();
            }
        })
    }

    fn depths(&self) -> Vec<(AppId, u64)> {
        let mut v: Vec<(AppId, u64)> = self
            .logs
            .values()
            .map(|log| {
                let inner = log.inner.lock();
                let last = inner.next_seq - 1;
                let min = inner.cursors.iter().copied().min().unwrap_or(last);
                (log.app, last.saturating_sub(min))
            })
            .collect();
        v.sort_by_key(|(a, _)| a.get());
        v
    }

    fn replay(&self, app: AppId, from: u64) -> LogFuture<'_, Replay> {
        let result = (|| {
            let Some(log) = self.logs.get(&app) else {
                return Replay::NotConfigured;
            };
            let mut inner = log.inner.lock();
            let last = inner.next_seq - 1;
            let oldest = inner.events.front().map_or(inner.next_seq, |(s, _)| *s);
            if from == 0 || from < oldest || from > last {
                return Replay::Unavailable { oldest, last };
            }
            for c in &mut inner.cursors {
                *c = (*c).min(from - 1);
            }
            drop(inner);
            log.wake.notify_waiters();
            Replay::Scheduled { from, last }
        })();
        Box::pin(async move { result })
    }
}

fn url_key(url: &str) -> String {
    hex::encode(&Sha1::digest(url.as_bytes())[..6])
}

fn open_log(dir: &Path, app: &AppConfig) -> Result<AppLog, ConfigError> {
    let path = dir.join(format!("app-{}.jsonl", app.app_id));
    let mut events = VecDeque::new();
    let mut lines = 0;
    let mut last = 0u64;
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            for line in text.lines() {
                lines += 1;
                // A line cut short by a crash (the last one) is skipped; the seq numbers of the
                // lines before it stay.
                let Ok(v) = serde_json::from_str::<Value>(line) else {
                    warn!(path = %path.display(), "skipping an unreadable webhook log line");
                    continue;
                };
                let (Some(seq), Some(event)) = (v.get("seq").and_then(Value::as_u64), v.get("event")) else {
                    continue;
                };
                if seq <= last {
                    continue;
                }
                last = seq;
                events.push_back((seq, Arc::<str>::from(event.to_string())));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&path)(e)),
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io_err(&path))?;
    let mut receivers = Vec::new();
    let mut cursors = Vec::new();
    for w in &app.webhooks {
        let cursor_path = dir.join(format!("app-{}.{}.cursor", app.app_id, url_key(&w.url)));
        let cursor = match std::fs::read_to_string(&cursor_path) {
            Ok(t) => t.trim().parse::<u64>().unwrap_or(0).min(last),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // A receiver new to this log starts with the events that come from now on.
                write_cursor_sync(&cursor_path, last).map_err(io_err(&cursor_path))?;
                last
            }
            Err(e) => return Err(io_err(&cursor_path)(e)),
        };
        cursors.push(cursor);
        receivers.push(Receiver {
            url: w.url.clone(),
            secret: w
                .callback_secret
                .clone()
                .unwrap_or_else(|| app.server_secret.as_str().to_string()),
            cursor_path,
        });
    }
    info!(app = %app.app_id, kept = events.len(), last_seq = last, receivers = receivers.len(), "webhook log opened");
    let log = AppLog {
        app: app.app_id,
        path,
        receivers,
        inner: Mutex::new(LogInner {
            file: Some(file),
            events,
            next_seq: last + 1,
            lines,
            cursors,
        }),
        wake: Notify::new(),
    };
    prune(&mut log.inner.lock(), None);
    Ok(log)
}

fn write_cursor_sync(path: &Path, seq: u64) -> std::io::Result<()> {
    let tmp = path.with_extension("cursor.tmp");
    std::fs::write(&tmp, format!("{seq}\n"))?;
    std::fs::rename(&tmp, path)
}

/// Drops what the log need not keep: delivered events beyond [`KEEP_DELIVERED`], and the oldest
/// past [`MAX_KEPT`] (counted as dropped when a receiver still waited for them).
fn prune(inner: &mut LogInner, counts: Option<&WebhookCounts>) {
    let min_cursor = inner.cursors.iter().copied().min().unwrap_or(0);
    let delivered = inner.events.iter().take_while(|(s, _)| *s <= min_cursor).count();
    for _ in 0..delivered.saturating_sub(KEEP_DELIVERED) {
        inner.events.pop_front();
    }
    while inner.events.len() > MAX_KEPT {
        if let Some((seq, _)) = inner.events.pop_front()
            && seq > min_cursor
        {
            if let Some(c) = counts {
                c.dropped.fetch_add(1, Ordering::Relaxed);
            }
            for cur in &mut inner.cursors {
                *cur = (*cur).max(seq);
            }
        }
    }
}

/// Rewrites the log file with the kept events only (write, sync, rename).
fn compact(log: &AppLog, inner: &mut LogInner) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = log.path.with_extension("jsonl.tmp");
    let mut text = String::new();
    for (seq, event) in &inner.events {
        text.push_str(&log_line(*seq, event));
    }
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_data()?;
    std::fs::rename(&tmp, &log.path)?;
    inner.file = Some(std::fs::OpenOptions::new().append(true).open(&log.path)?);
    inner.lines = inner.events.len();
    Ok(())
}

/// The writer thread: numbers, appends and syncs events in batches until `Stop`.
fn write_loop(mut rx: mpsc::Receiver<WriterMsg>, logs: &HashMap<AppId, Arc<AppLog>>, counts: &WebhookCounts) {
    use std::io::Write;
    let mut stop = false;
    while !stop {
        let Some(first) = rx.blocking_recv() else { break };
        let mut batch = vec![first];
        while batch.len() < 512 {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let mut touched: Vec<&Arc<AppLog>> = Vec::new();
        let mut text: HashMap<AppId, String> = HashMap::new();
        for m in batch {
            let p = match m {
                WriterMsg::Event(p) => p,
                WriterMsg::Stop => {
                    stop = true;
                    continue;
                }
            };
            let Some(log) = logs.get(&p.app) else { continue };
            let mut inner = log.inner.lock();
            let seq = inner.next_seq;
            inner.next_seq += 1;
            let event: Arc<str> = Value::Object(p.event).to_string().into();
            text.entry(p.app).or_default().push_str(&log_line(seq, &event));
            inner.events.push_back((seq, event));
            inner.lines += 1;
            prune(&mut inner, Some(counts));
            if !touched.iter().any(|l| l.app == log.app) {
                touched.push(log);
            }
        }
        for log in touched {
            let mut inner = log.inner.lock();
            let t = text.remove(&log.app).unwrap_or_default();
            let written = match inner.file.as_mut() {
                Some(f) => f.write_all(t.as_bytes()).and_then(|()| f.sync_data()),
                None => Err(std::io::Error::other("the log file is not open")),
            };
            if let Err(e) = written {
                warn!(app = %log.app, path = %log.path.display(), "webhook log write failed ({e}); rewriting it");
                inner.file = None;
                if let Err(e) = compact(log, &mut inner) {
                    warn!(app = %log.app, "webhook log rewrite failed: {e}");
                }
            } else if inner.lines > 2 * inner.events.len() + 1024
                && let Err(e) = compact(log, &mut inner)
            {
                warn!(app = %log.app, "webhook log rewrite failed: {e}");
            }
            drop(inner);
            log.wake.notify_waiters();
        }
    }
    debug!("webhook writer stopped");
}

/// The TLS client configuration for `https://` receivers: the system's roots.
fn tls_config() -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth());
    match config {
        Ok(c) => Arc::new(c),
        // aws-lc-rs always supports the default versions; this keeps a clear message if not.
        Err(e) => panic!("TLS client configuration: {e}"),
    }
}

/// The body sent for `event`: the event with `appid`, `seq`, `timestamp`, `nonce` and `signature`.
fn signed_body(app: AppId, seq: u64, secret: &str, event: &str) -> Result<String, String> {
    let mut map: Map<String, Value> =
        serde_json::from_str(event).map_err(|e| format!("a logged event is not JSON: {e}"))?;
    let timestamp = unix_ms() / 1000;
    let nonce = rand::thread_rng()
        .gen_range(100_000_000u64..1_000_000_000)
        .to_string();
    let signature = callback_signature(secret, &timestamp.to_string(), &nonce);
    map.insert("appid".into(), app.get().to_string().into());
    map.insert("seq".into(), seq.into());
    map.insert("timestamp".into(), timestamp.into());
    map.insert("nonce".into(), nonce.into());
    map.insert("signature".into(), signature.into());
    Ok(Value::Object(map).to_string())
}

/// One deliverer: sends the log's events to receiver `idx` in order, retrying with backoff.
async fn deliver_loop(
    log: Arc<AppLog>,
    idx: usize,
    tls: Arc<rustls::ClientConfig>,
    counts: Arc<WebhookCounts>,
    mut shutdown: watch::Receiver<bool>,
) {
    let receiver = &log.receivers[idx];
    let uri: Option<Uri> = receiver.url.parse().ok();
    let mut backoff = FIRST_BACKOFF;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let notified = log.wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let next = {
            let inner = log.inner.lock();
            let cursor = inner.cursors[idx];
            inner
                .events
                .iter()
                .find(|(s, _)| *s > cursor)
                .map(|(s, e)| (cursor, *s, e.clone()))
        };
        let Some((before, seq, event)) = next else {
            tokio::select! {
                () = &mut notified => {}
                _ = shutdown.changed() => {}
            }
            continue;
        };
        let body = signed_body(log.app, seq, &receiver.secret, &event);
        let result = attempt(uri.as_ref(), &tls, body, ATTEMPT_TIMEOUT).await;
        match result {
            Ok(status) if (200..300).contains(&status) => {
                counts.delivered.fetch_add(1, Ordering::Relaxed);
                backoff = FIRST_BACKOFF;
                let cursor = {
                    let mut inner = log.inner.lock();
                    // A replay that moved the cursor back meanwhile wins.
                    if inner.cursors[idx] == before {
                        inner.cursors[idx] = seq;
                    }
                    prune(&mut inner, None);
                    inner.cursors[idx]
                };
                if let Err(e) = write_cursor(&receiver.cursor_path, cursor).await {
                    warn!(app = %log.app, "webhook cursor not written ({e}): events may be sent again after a restart");
                }
            }
            other => {
                counts.failed.fetch_add(1, Ordering::Relaxed);
                let why = match other {
                    Ok(status) => format!("HTTP status {status}"),
                    Err(e) => e,
                };
                debug!(app = %log.app, url = %receiver.url, seq, %why, retry_in_ms = backoff.as_millis() as u64, "webhook delivery failed");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

async fn write_cursor(path: &Path, seq: u64) -> std::io::Result<()> {
    let tmp = path.with_extension("cursor.tmp");
    tokio::fs::write(&tmp, format!("{seq}\n")).await?;
    tokio::fs::rename(&tmp, path).await
}

/// One delivery attempt of a signed `body` to `uri` (None: the receiver's URL did not parse),
/// bounded by `timeout`; the receiver's status, or why there is none. Both logs (the data
/// directory's and the cluster's) deliver through it.
async fn attempt(
    uri: Option<&Uri>,
    tls: &Arc<rustls::ClientConfig>,
    body: Result<String, String>,
    timeout: Duration,
) -> Result<u16, String> {
    match (uri, body) {
        (Some(uri), Ok(body)) => match tokio::time::timeout(timeout, post(uri, tls, body)).await {
            Ok(r) => r,
            Err(_) => Err("no answer in time".to_string()),
        },
        (None, _) => Err("the url is not valid".to_string()),
        (_, Err(e)) => Err(e),
    }
}

/// POSTs `body` (JSON) to `uri` over HTTP/1.1; returns the status.
async fn post(uri: &Uri, tls: &Arc<rustls::ClientConfig>, body: String) -> Result<u16, String> {
    let host = uri.host().ok_or("no host")?.trim_matches(['[', ']']).to_string();
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    if https {
        let name =
            rustls_pki_types::ServerName::try_from(host.clone()).map_err(|e| format!("host name: {e}"))?;
        let stream = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        send(stream, uri, body).await
    } else {
        send(tcp, uri, body).await
    }
}

async fn send<IO>(io: IO, uri: &Uri, body: String) -> Result<u16, String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let conn = tokio::spawn(conn);
    let authority = uri.authority().map_or_else(String::new, |a| a.to_string());
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let request = hyper::Request::post(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(
            hyper::header::USER_AGENT,
            concat!("huddle/", env!("CARGO_PKG_VERSION")),
        )
        .body(http_body_util::Full::new(axum::body::Bytes::from(body)))
        .map_err(|e| format!("request: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("HTTP: {e}"));
    conn.abort();
    Ok(response?.status().as_u16())
}

/// Queues webhook events from any thread without waiting (see [`Webhooks::sender`]).
#[derive(Clone)]
pub(crate) struct WebhookSender {
    tx: mpsc::Sender<WriterMsg>,
    counts: Arc<WebhookCounts>,
    apps: Vec<AppId>,
}

impl WebhookSender {
    /// Queues `event` for `app` (nothing when the app has no webhook); a full queue drops it,
    /// counted as the registry's events are.
    pub(crate) fn send(&self, app: AppId, event: Map<String, Value>) {
        if !self.apps.contains(&app) {
            return;
        }
        if self
            .tx
            .try_send(WriterMsg::Event(Pending {
                app,
                event,
                track: None,
            }))
            .is_err()
        {
            self.counts.dropped.fetch_add(1, Ordering::Relaxed);
            warn!(%app, "webhook queue full: recording event dropped");
        }
    }
}

/// The life of a room on this node, for its events.
struct RoomLife {
    session_id: u64,
    /// `room_create` waits for the first user (its `id_name`).
    announced: bool,
}

/// The hub's end of the webhooks: turns [`ClusterCommand`]s into events and queues them.
pub(crate) struct WebhookTap {
    tx: mpsc::Sender<WriterMsg>,
    counts: Arc<WebhookCounts>,
    apps: Vec<AppId>,
    /// In a cluster the log tells `room_create` / `room_close` (from every node's members), and
    /// the room's session ID is the cluster's: the tap tracks users and streams only.
    cluster: bool,
    rooms: HashMap<(AppId, RoomId), RoomLife>,
    /// Users by room: their names and login times (the logout event carries them).
    users: HashMap<(AppId, RoomId, UserId), (UserName, u64)>,
    /// Streams: their info and creation time (the close event carries them).
    streams: HashMap<(AppId, StreamId), (StreamInfo, u64)>,
}

impl WebhookTap {
    fn queue(&self, app: AppId, event: Map<String, Value>) {
        self.queue_tracked(app, event, None);
    }

    /// Queues a room event; in a cluster with what it changes in the room's life.
    fn queue_room(
        &self,
        app: AppId,
        event: Map<String, Value>,
        room: &RoomId,
        kind: TrackKind,
        id: &str,
        value: String,
    ) {
        let track = self.cluster.then(|| Track {
            room: room.clone(),
            kind,
            id: id.to_string(),
            value,
        });
        self.queue_tracked(app, event, track);
    }

    fn queue_tracked(&self, app: AppId, event: Map<String, Value>, track: Option<Track>) {
        let name = event
            .get("event")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if self
            .tx
            .try_send(WriterMsg::Event(Pending { app, event, track }))
            .is_err()
        {
            self.counts.dropped.fetch_add(1, Ordering::Relaxed);
            warn!(%app, event = %name, "webhook queue full: event dropped");
        }
    }

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    /// Observes one registry output (called by the hub, in the registry's order).
    pub(crate) fn observe(&mut self, cmd: &ClusterCommand) {
        let app = match cmd {
            ClusterCommand::Follow { app, .. }
            | ClusterCommand::Unfollow { app, .. }
            | ClusterCommand::Change { app, .. } => *app,
        };
        if !self.apps.contains(&app) {
            return;
        }
        let now = unix_ms();
        match cmd {
            ClusterCommand::Follow { .. } | ClusterCommand::Unfollow { .. } if self.cluster => {}
            ClusterCommand::Follow { room, .. } => {
                let session_id = rand::thread_rng().r#gen::<u64>() >> 1;
                self.rooms.insert(
                    (app, room.clone()),
                    RoomLife {
                        session_id,
                        announced: false,
                    },
                );
            }
            ClusterCommand::Unfollow { room, .. } => {
                if let Some(life) = self.rooms.remove(&(app, room.clone()))
                    && life.announced
                {
                    self.queue(
                        app,
                        Self::obj(json!({
                            "event": "room_close",
                            "room_id": room.as_str(),
                            "room_session_id": life.session_id.to_string(),
                            "close_reason": 0,
                            "room_close_time": now.to_string(),
                        })),
                    );
                }
            }
            ClusterCommand::Change { room, change, .. } => self.change(app, room, change, now),
        }
    }

    fn room_seq(&self, app: AppId, room: &RoomId) -> String {
        self.rooms
            .get(&(app, room.clone()))
            .map_or_else(String::new, |l| l.session_id.to_string())
    }

    fn change(&mut self, app: AppId, room: &RoomId, change: &RoomChange, now: u64) {
        match change {
            // No webhook event of the hosted platforms carries these.
            RoomChange::Message(_) | RoomChange::StreamExtraInfo(_) | RoomChange::RoomExtraInfo(_) => {}
            RoomChange::UserAdd(user) => {
                if let Some(life) = self.rooms.get_mut(&(app, room.clone()))
                    && !life.announced
                {
                    life.announced = true;
                    let session_id = life.session_id;
                    self.queue(
                        app,
                        Self::obj(json!({
                            "event": "room_create",
                            "room_id": room.as_str(),
                            "room_session_id": session_id.to_string(),
                            "room_create_time": now.to_string(),
                            "id_name": user.user_id.as_str(),
                        })),
                    );
                }
                self.users.insert(
                    (app, room.clone(), user.user_id.clone()),
                    (user.user_name.clone(), now),
                );
                self.queue_room(
                    app,
                    Self::obj(json!({
                        "event": "room_login",
                        "room_id": room.as_str(),
                        "room_seq": self.room_seq(app, room),
                        "user_account": user.user_id.as_str(),
                        "user_nickname": user.user_name.as_str(),
                        "login_time": now.to_string(),
                    })),
                    room,
                    TrackKind::Login,
                    user.user_id.as_str(),
                    format!("{now}|{}", user.user_name.as_str()),
                );
            }
            RoomChange::UserDelete(user_id) => {
                let (name, login) = self
                    .users
                    .remove(&(app, room.clone(), user_id.clone()))
                    .map_or_else(
                        || (user_id.as_str().to_string(), 0),
                        |(n, t)| (n.as_str().to_string(), t),
                    );
                self.queue_room(
                    app,
                    Self::obj(json!({
                        "event": "room_logout",
                        "room_id": room.as_str(),
                        "room_seq": self.room_seq(app, room),
                        "user_account": user_id.as_str(),
                        "user_nickname": name,
                        "login_time": login.to_string(),
                        "logout_time": now.to_string(),
                        "reason": 0,
                    })),
                    room,
                    TrackKind::Logout,
                    user_id.as_str(),
                    String::new(),
                );
            }
            RoomChange::StreamAdd(info) => {
                self.streams
                    .insert((app, info.stream_id.clone()), (info.clone(), now));
                self.queue_room(
                    app,
                    Self::obj(json!({
                        "event": "stream_create",
                        "room_id": room.as_str(),
                        "channel_id": room.as_str(),
                        "room_session_id": self.room_seq(app, room),
                        "user_id": info.user_id.as_str(),
                        "user_name": info.user_name.as_str(),
                        "publish_id": info.user_id.as_str(),
                        "publish_name": info.user_name.as_str(),
                        "stream_id": info.stream_id.as_str(),
                        "stream_alias": info.stream_id.as_str(),
                        "extra_info": info.extra_info,
                        "create_time": (now / 1000).to_string(),
                        "create_time_ms": now.to_string(),
                    })),
                    room,
                    TrackKind::StreamCreate,
                    info.stream_id.as_str(),
                    format!("{now}|{}|{}", info.user_id.as_str(), info.user_name.as_str()),
                );
            }
            RoomChange::StreamDelete(stream_id) => {
                let known = self.streams.remove(&(app, stream_id.clone()));
                let (user_id, user_name, created) = known.map_or_else(
                    || (String::new(), String::new(), 0),
                    |(i, t)| {
                        (
                            i.user_id.as_str().to_string(),
                            i.user_name.as_str().to_string(),
                            t,
                        )
                    },
                );
                self.queue_room(
                    app,
                    Self::obj(json!({
                        "event": "stream_close",
                        "room_id": room.as_str(),
                        "channel_id": room.as_str(),
                        "room_session_id": self.room_seq(app, room),
                        "user_id": user_id,
                        "user_name": user_name,
                        "stream_id": stream_id.as_str(),
                        "stream_alias": stream_id.as_str(),
                        "type": "0",
                        "create_time_ms": created.to_string(),
                        "close_time_ms": now.to_string(),
                    })),
                    room,
                    TrackKind::StreamClose,
                    stream_id.as_str(),
                    String::new(),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_sha1_of_the_sorted_parts() {
        // sorted: "1499676978" < "350176" < "secret"
        let expect = hex::encode(Sha1::digest(b"1499676978350176secret"));
        assert_eq!(callback_signature("secret", "1499676978", "350176"), expect);
        assert_eq!(callback_signature("secret", "1499676978", "350176").len(), 40);
    }
}
