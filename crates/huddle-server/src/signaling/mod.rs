//! The signaling shell: WebSocket connections around the sans-IO [`Registry`].
//!
//! Each connection runs a reader (this task) and a writer task fed by a bounded queue. The registry
//! and the map from sessions to their connection queues sit behind one short-held mutex; outputs are
//! delivered with `try_send` while it is held, so each session receives its messages in the order
//! the registry produced them and no session ever waits for another. A connection whose queue is
//! full is closed (1009005) and its session detached, as any broken connection is.
//!
//! The module's parts, one concern each:
//! - `guard`: the TCP guard in front of axum (per-address TCP caps, first-byte deadline, TLS).
//! - `admission`: the per-address WebSocket limits and the client address behind a proxy.
//! - `hub`: the registry and where each session's messages go (delivery, closing).
//! - `conn`: the WebSocket loops of one connection (reader, writer, rate limit).
//! - `requests`: what each client request does to the registry and the media plane.
//! - `timers`: the registry's timers (resume grace, token warnings and expiry).

mod admission;
mod cluster;
mod conn;
mod guard;
mod hub;
mod relay;
mod requests;
mod timers;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::extract::ws::Message;
use axum::routing::get;
use huddle_proto::{ErrorCode, HuddleError, MAX_MESSAGE_BYTES, SIGNALING_PATH};
use parking_lot::Mutex;
use tokio::sync::{Notify, watch};
use tracing::{Instrument, info};

use crate::auth::Authenticator;
use crate::config::{ConfigError, ServerConfig};
use crate::media;
use crate::registry::{Limits, Registry, RoomView, Stats};
use crate::sfu::{Counters, MediaStats};
use admission::{PER_IP_PRUNE, PerIpTable};
use conn::ws_handler;
use hub::Hub;

/// The WebSocket message size limit: the protocol's limit plus room for what a frame adds, so that
/// a message just over [`MAX_MESSAGE_BYTES`] is still read and answered 1009002 by the decoder.
const WS_MAX_MESSAGE: usize = MAX_MESSAGE_BYTES + 4096;

/// The WebSocket read buffer reserved per connection (see `ws_handler`).
const WS_READ_BUFFER: usize = 4096;

/// How long the writer may take to flush its last messages and the close frame, and how long the
/// peer then has to answer the close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Free queue slots the reader wants before it handles the next request (a request is answered
/// with at most two messages: `ok` and `play_update`).
const OWN_REPLY_ROOM: usize = 4;

/// How long [`crate::run`] waits for connections to close after a shutdown.
pub(crate) const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// The server's shared state: configuration, apps, the registry and the live connections.
/// Cheap to clone.
#[derive(Clone)]
pub struct ServerState(Arc<Shared>);

struct Shared {
    config: ServerConfig,
    auth: Authenticator,
    hub: Mutex<Hub>,
    /// Wakes the timer task ([`timers::run`]) after an operation that may have armed a timer
    /// earlier than the one it sleeps for.
    timer_wake: Arc<Notify>,
    /// The timer task, started with the first operation that needs it.
    timer_task: OnceLock<()>,
    /// The cluster store: one node in memory from the start, or Redis once
    /// [`ServerState::connect_store`] connected it.
    store: OnceLock<Arc<dyn crate::store::Store>>,
    /// The queue to the store task (a clone is in the hub, for releases).
    store_tx: tokio::sync::mpsc::Sender<cluster::StoreOp>,
    /// The store task's end of the queue until the task starts.
    store_rx: Mutex<Option<tokio::sync::mpsc::Receiver<cluster::StoreOp>>>,
    /// Set by [`ServerState::abandon_cluster`]: the store task stops renewing the lease and
    /// leaves nothing.
    abandon: watch::Sender<bool>,
    /// Set by [`ServerState::cut_off_cluster`]: the store task and the room reader pause (a
    /// node cut off from Redis and the other nodes for a while, its lease still running).
    cut_off: watch::Sender<bool>,
    /// Set once, to `true`, when the server shuts down.
    shutdown: watch::Sender<bool>,
    /// Set once when the server starts draining ([`ServerState::drain`]): no new login.
    draining: AtomicBool,
    /// Open WebSocket connections (each one a task).
    connections: AtomicUsize,
    /// The most `connections` reached since [`ServerState::take_connections_peak`] last asked.
    connections_peak: AtomicUsize,
    /// Notified when `connections` drops to zero.
    idle: Notify,
    /// What `/metrics` shows.
    metrics: crate::metrics::Metrics,
    /// The media socket, bound but not yet handed to the media task.
    udp: Mutex<Option<std::net::UdpSocket>>,
    /// The media socket's bound address.
    udp_addr: OnceLock<SocketAddr>,
    /// The ICE-TCP listener (`tcp_port`), bound with the media socket.
    tcp: Mutex<Option<std::net::TcpListener>>,
    /// The ICE-TCP listener's bound address.
    tcp_addr: OnceLock<SocketAddr>,
    /// The media task, once started.
    media_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    counters: Arc<Counters>,
    /// Open connections and the connection-rate bucket of each peer IP address.
    per_ip: Mutex<PerIpTable>,
    /// Open TCP connections of each peer IP address ([`ServerState::guard_listener`]); an
    /// address without one has no entry.
    tcp_per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// The TLS acceptor, with `tls_cert` and `tls_key` (read once, at start).
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// The links to other nodes and the pulls served to them, by their session IDs: where the
    /// media plane's signals to them go ([`relay`]).
    relays: Mutex<HashMap<crate::registry::SessionId, tokio::sync::mpsc::Sender<huddle_proto::ServerMsg>>>,
    /// The puller's end of the pull queue until the puller starts ([`relay`]).
    pull_rx: Mutex<Option<tokio::sync::mpsc::Receiver<relay::PullOp>>>,
    /// The server API's nonces and counters (`crate::api`).
    api: crate::api::ApiState,
    /// The webhook logs and deliverers, when an app has a webhook (`crate::webhooks`).
    webhooks: Option<Arc<crate::webhooks::Webhooks>>,
    /// Recording (`crate::recording`): tasks, taps handed to the shards, writer threads.
    recorder: Arc<crate::recording::Recorder>,
}

impl ServerState {
    /// Validates `config` and builds the state (no socket is opened).
    ///
    /// With `tls_cert` and `tls_key` it reads the certificate chain and key: a file that cannot
    /// be read or holds no usable certificate or key is a [`ConfigError`] that names it.
    pub fn new(config: ServerConfig) -> Result<ServerState, ConfigError> {
        config.validate()?;
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::acceptor(cert, key)?),
            _ => None,
        };
        let registry = Registry::new(Limits::from(&config));
        let webhooks = crate::webhooks::Webhooks::open(&config)?.map(Arc::new);
        let recorder = Arc::new(crate::recording::Recorder::new(
            config
                .record_dir
                .clone()
                .unwrap_or_else(|| config.data_dir.join("recordings")),
            webhooks.as_ref().map(|w| w.sender()),
            config.apps.iter().filter(|a| a.auto_record).map(|a| a.app_id),
            crate::recording::writer_count(config.record_writers),
        ));
        let counters = Arc::new(Counters::default());
        let (store_tx, store_rx) = tokio::sync::mpsc::channel(cluster::STORE_QUEUE);
        let (pull_tx, pull_rx) = tokio::sync::mpsc::channel(relay::PULL_QUEUE);
        let store = OnceLock::new();
        if config.redis.is_none() {
            let local: Arc<dyn crate::store::Store> = Arc::new(crate::store::MemoryStore::new());
            let _ = store.set(local);
        }
        let timer_wake = Arc::new(Notify::new());
        Ok(ServerState(Arc::new(Shared {
            auth: Authenticator::new(&config.apps),
            config,
            hub: Mutex::new(Hub {
                registry,
                conns: HashMap::new(),
                media: None,
                store: store_tx.clone(),
                follows: HashMap::new(),
                follows_changed: Arc::new(Notify::new()),
                pulls: pull_tx,
                timer_wake: timer_wake.clone(),
                webhooks: webhooks.as_ref().map(|w| w.tap()),
                recorder: recorder.clone(),
                held_plays: HashMap::new(),
                told_available: std::collections::HashSet::new(),
            }),
            store,
            store_tx,
            store_rx: Mutex::new(Some(store_rx)),
            abandon: watch::Sender::new(false),
            cut_off: watch::Sender::new(false),
            timer_wake,
            timer_task: OnceLock::new(),
            shutdown: watch::Sender::new(false),
            draining: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
            connections_peak: AtomicUsize::new(0),
            idle: Notify::new(),
            metrics: crate::metrics::Metrics::new(&counters),
            udp: Mutex::new(None),
            udp_addr: OnceLock::new(),
            tcp: Mutex::new(None),
            tcp_addr: OnceLock::new(),
            media_task: Mutex::new(None),
            counters,
            per_ip: Mutex::new(PerIpTable {
                map: HashMap::new(),
                prune_at: PER_IP_PRUNE,
            }),
            tcp_per_ip: Mutex::new(HashMap::new()),
            tls,
            relays: Mutex::new(HashMap::new()),
            pull_rx: Mutex::new(Some(pull_rx)),
            api: crate::api::ApiState::new(),
            webhooks,
            recorder,
        })))
    }

    /// Whether the server speaks TLS (HTTPS and WSS) on its listener.
    pub fn is_tls(&self) -> bool {
        self.0.tls.is_some()
    }

    /// Binds the media UDP socket now (the IP of `listen`, `udp_port`), if not yet bound, and
    /// returns its address. [`crate::serve`] binds it otherwise when it starts.
    pub fn bind_media(&self) -> std::io::Result<SocketAddr> {
        if let Some(addr) = self.0.udp_addr.get() {
            return Ok(*addr);
        }
        let socket = media::bind(&self.0.config)?;
        let addr = socket.local_addr()?;
        if let Some(port) = self.0.config.tcp_port {
            let listener = media::bind_tcp(self.0.config.listen.ip(), port)?;
            let _ = self.0.tcp_addr.set(listener.local_addr()?);
            *self.0.tcp.lock() = Some(listener);
        }
        *self.0.udp.lock() = Some(socket);
        let _ = self.0.udp_addr.set(addr);
        Ok(addr)
    }

    /// The bound address of the ICE-TCP listener, once bound (`None` with `tcp_port` off).
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.0.tcp_addr.get().copied()
    }

    /// The bound address of the media UDP socket, once bound.
    pub fn udp_addr(&self) -> Option<SocketAddr> {
        self.0.udp_addr.get().copied()
    }

    /// Counts of the media plane.
    pub fn media_stats(&self) -> MediaStats {
        self.0.counters.snapshot()
    }

    /// Starts the media task (binding the socket if needed); a no-op if it runs. Must be called
    /// within a tokio runtime.
    pub(crate) fn start_media(&self) -> std::io::Result<()> {
        let mut task = self.0.media_task.lock();
        if task.is_some() {
            return Ok(());
        }
        self.bind_media()?;
        let Some(socket) = self.0.udp.lock().take() else {
            return Err(std::io::Error::other("the media socket was already used"));
        };
        let tcp = self.0.tcp.lock().take();
        let (signal_tx, signal_rx) = media::signal_channel();
        let (tx, handle) = media::spawn(
            &self.0.config,
            self.shutdown_receiver(),
            signal_tx,
            socket,
            tcp,
            self.0.counters.clone(),
            self.0.recorder.clone(),
        )?;
        // Ends by itself once the media threads are gone (every sender dropped).
        tokio::spawn(hub::deliver_signals(self.clone(), signal_rx).in_current_span());
        self.0.hub.lock().media = Some(tx);
        *task = Some(handle);
        Ok(())
    }

    /// Waits for the media task to end (after [`ServerState::shutdown`]).
    pub(crate) async fn join_media(&self) {
        let task = self.0.media_task.lock().take();
        if let Some(task) = task {
            let _ = task.await;
        }
        self.0.hub.lock().media = None;
    }

    pub(crate) fn shutdown_receiver(&self) -> watch::Receiver<bool> {
        self.0.shutdown.subscribe()
    }

    /// The configuration in force.
    pub fn config(&self) -> &ServerConfig {
        &self.0.config
    }

    /// Counts of the registry: sessions, detached sessions, rooms, streams.
    pub fn stats(&self) -> Stats {
        self.0.hub.lock().registry.stats()
    }

    /// The room `room_id` of `app_id` as its members see it now (`None`: no such room).
    pub fn room(&self, app_id: huddle_proto::AppId, room_id: &huddle_proto::RoomId) -> Option<RoomView> {
        self.0.hub.lock().registry.room(app_id, room_id)
    }

    /// Runs `f` on the registry under the hub lock and delivers what it output, as a client
    /// request does (the server API's actions).
    pub(crate) fn with_registry<R>(
        &self,
        f: impl FnOnce(&mut Registry, &mut Vec<crate::registry::Output>) -> R,
    ) -> R {
        let mut hub = self.0.hub.lock();
        let mut out = Vec::new();
        let r = f(&mut hub.registry, &mut out);
        hub.dispatch(out);
        r
    }

    /// The cluster store, once connected.
    pub(crate) fn cluster_store(&self) -> Option<Arc<dyn crate::store::Store>> {
        self.0.store.get().cloned()
    }

    /// The server API's state.
    pub(crate) fn api(&self) -> &crate::api::ApiState {
        &self.0.api
    }

    /// The recorder.
    pub(crate) fn recorder(&self) -> &Arc<crate::recording::Recorder> {
        &self.0.recorder
    }

    /// Tells the media plane that these streams are to be recorded (`StartRecord`): each shard
    /// that has one asks the recorder for a tap.
    pub(crate) fn record_streams(&self, app: huddle_proto::AppId, streams: Vec<huddle_proto::StreamId>) {
        let hub = self.0.hub.lock();
        if let Some(media) = &hub.media {
            for stream_id in streams {
                media.send(crate::sfu::Command::Record { app, stream_id });
            }
        }
    }

    /// The webhooks, when an app has one.
    pub(crate) fn webhooks(&self) -> Option<&Arc<crate::webhooks::Webhooks>> {
        self.0.webhooks.as_ref()
    }

    /// Starts the webhook writer and deliverers (within a tokio runtime); a no-op without
    /// webhooks or after the first call.
    pub(crate) fn start_webhooks(&self) {
        if let Some(w) = &self.0.webhooks {
            w.start(self.shutdown_receiver(), self.cluster_store());
        }
    }

    /// Stops the webhook writer once every event queued so far is kept (on disk, or in the
    /// cluster's log), and the deliveries in flight ended.
    pub(crate) async fn stop_webhooks(&self) {
        if let Some(w) = &self.0.webhooks {
            w.stop().await;
        }
    }

    /// Checks the registry's invariants, its timers' included ([`Registry::check_invariants`]).
    pub fn check_invariants(&self) -> Result<(), String> {
        self.0.hub.lock().registry.check_invariants()
    }

    /// Open WebSocket connections.
    pub fn connections(&self) -> usize {
        self.0.connections.load(Ordering::Acquire)
    }

    /// What `/metrics` shows.
    pub(crate) fn metrics(&self) -> &crate::metrics::Metrics {
        &self.0.metrics
    }

    /// The most WebSocket connections open at once since the last call (at least those open now).
    pub(crate) fn take_connections_peak(&self) -> usize {
        let open = self.connections();
        self.0.connections_peak.swap(open, Ordering::AcqRel).max(open)
    }

    /// Starts shutting down: every connection is closed ("going away"; their sessions are not
    /// detached) and the grace timers stop. Idempotent.
    pub fn shutdown(&self) {
        self.0.shutdown.send_replace(true);
    }

    /// Whether [`ServerState::shutdown`] was called.
    pub fn is_shutting_down(&self) -> bool {
        *self.0.shutdown.borrow()
    }

    /// Drains before a shutdown (what `huddle serve` does on SIGTERM): `/readyz` answers 503 so
    /// that a load balancer sends no one new, fresh logins are refused with 1009008 (a client
    /// retries, reaching a restarted or another node), resumes of existing sessions are still
    /// taken, and calls in progress go on. Returns when no session is left, when `drain_timeout`
    /// has passed, or when `cut_short` completes (a second signal), whichever comes first; the
    /// caller then shuts down ([`ServerState::shutdown`], which closes what is left with
    /// "going away").
    pub async fn drain(&self, cut_short: impl std::future::Future<Output = ()>) {
        self.0.draining.store(true, Ordering::Release);
        let timeout = self.0.config.drain_timeout;
        let sessions = self.stats().sessions;
        info!(
            sessions,
            timeout_ms = timeout.as_millis() as u64,
            "draining: no new logins"
        );
        if self.0.config.redis.is_some() {
            self.tell_sessions_to_move();
        }
        let empty = async {
            while self.stats().sessions > 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        tokio::select! {
            () = empty => info!("drained: no session left"),
            () = tokio::time::sleep(timeout) => {
                info!(sessions = self.stats().sessions, "drain timeout: closing what is left");
            }
            () = cut_short => info!("drain cut short"),
        }
    }

    /// In a cluster, a draining node tells each attached session to move: an `error` without
    /// `seq`, 1009008, on a connection it keeps open. The SDK then logs in to its next server at
    /// once; when that login reaches this node through the store (the same user in the same
    /// room on another node), the session here ends as a duplicate login, without a delete
    /// for the others. A client that does not move keeps its session until the drain timeout.
    /// A node alone has nowhere to send its clients: it waits for their sessions to end.
    fn tell_sessions_to_move(&self) {
        let notice = hub::error_text(
            None,
            &HuddleError::new(
                ErrorCode::SERVER_SHUTTING_DOWN,
                "this node is draining: log in to another node of the cluster",
            ),
        );
        let hub = self.0.hub.lock();
        let mut told = 0usize;
        for conn in hub.conns.values() {
            if conn.tx.try_send(Message::Text(notice.clone())).is_ok() {
                told += 1;
            }
        }
        info!(told, "draining: sessions told to move to another node");
    }

    /// Whether [`ServerState::drain`] has started.
    pub fn is_draining(&self) -> bool {
        self.0.draining.load(Ordering::Acquire)
    }

    /// Whether the server takes new logins: the media plane runs and it is neither draining nor
    /// shutting down (`GET /readyz`).
    pub fn is_ready(&self) -> bool {
        self.0.media_task.lock().is_some() && !self.is_draining() && !self.is_shutting_down()
    }

    /// Waits until no connection task runs.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.0.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.connections() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Builds the HTTP router: `GET /ws` (signaling), `GET /healthz` (liveness: `"ok"` while the
/// process serves HTTP) and `GET /readyz` (readiness: 200 `"ready"` while it takes new logins,
/// 503 `"draining"` or `"starting"` otherwise). Serve it with
/// `into_make_service_with_connect_info::<SocketAddr>()` to log peer addresses. Other routes can
/// be merged into it.
pub fn router(state: ServerState) -> Router {
    Router::new()
        .route(SIGNALING_PATH, get(ws_handler))
        .route(relay::CLUSTER_PATH, get(relay::cluster_ws))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn readyz(State(state): State<ServerState>) -> (axum::http::StatusCode, &'static str) {
    use axum::http::StatusCode;
    if state.is_ready() {
        (StatusCode::OK, "ready")
    } else if state.is_draining() || state.is_shutting_down() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}
