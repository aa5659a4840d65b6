//! The Huddle server library: apps and auth, the room registry, and WebSocket signaling.
//!
//! - [`config`]: [`ServerConfig`], layered defaults → TOML file → validation, and dev mode.
//! - [`auth`]: AppSign challenge and Token04 checks at login, token privileges at publish.
//! - [`registry`]: the sans-IO room registry (apps, rooms, users, sessions, streams, plays).
//! - signaling: the tokio/axum shell around the registry ([`router`], [`ServerState`]).
//! - [`turn`]: short-lived TURN credentials for coturn, handed out with `login_ok`.
//! - [`sfu`]: the sans-IO SFU (WebRTC peer connections, RTP forwarding) and, privately, its tokio
//!   shell on the one media UDP socket (`docs/sfu.md`).
//!
//! The protocol is `docs/protocol.md`. Run a server with [`run`] on a bound listener, or with
//! [`BackgroundServer`] from synchronous code and tests:
//!
//! ```no_run
//! use huddle_server::{BackgroundServer, ServerConfig, test_app};
//!
//! let server = BackgroundServer::start(ServerConfig::for_tests(vec![test_app(1)]))?;
//! println!("signaling at {}", server.ws_url());
//! server.stop();
//! # Ok::<(), std::io::Error>(())
//! ```

// `deny`, not `forbid`: the one exception is a `malloc_trim` (`memory.rs`), allowed there alone.
// The media plane's batched socket calls (`recvmmsg`/`sendmmsg` through libc) are the
// `huddle-udp` crate's, whose one unsafe module argues its soundness.
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod api;
pub mod auth;
pub mod cli;
pub mod config;
mod media;
mod memory;
mod metrics;
mod ops;
pub mod recording;
pub mod registry;
pub mod sfu;
mod signaling;
pub mod store;
mod tls;
pub mod turn;
mod web;
mod webhooks;

use std::future::Future;
use std::net::SocketAddr;

pub use config::{
    AppConfig, ConfigError, Secret, ServerConfig, TurnConfig, WebhookConfig, default_data_dir, test_app,
};
pub use registry::Stats;
pub use sfu::MediaStats;
pub use signaling::{ServerState, router};

fn invalid_config(e: ConfigError) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, e)
}

/// Runs the server on `listener` until `shutdown` completes, then closes every connection
/// ("going away") and returns once they are closed (at most a few seconds).
///
/// Fails at once if `config` does not validate (`InvalidInput`).
pub async fn run(
    listener: tokio::net::TcpListener,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let state = ServerState::new(config).map_err(invalid_config)?;
    serve(listener, state, shutdown).await
}

/// Serves `state` on `listener` (see [`run`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ServerState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, apps = state.config().apps.len(), dev_mode = state.config().dev_mode, "listening");
    }
    state
        .connect_store()
        .await
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::ConnectionRefused, e))?;
    if let Ok(addr) = listener.local_addr() {
        state.advertise_cluster(addr).await;
    }
    state.start_media()?;
    api::start_cluster(&state).await;
    state.start_webhooks();
    tokio::spawn(memory::trim_after_bursts(state.clone()));
    let app = router(state.clone())
        .merge(web::routes(state.clone()))
        .merge(api::routes(state.clone()))
        .into_make_service_with_connect_info::<SocketAddr>();
    let trigger = state.clone();
    // The guard turns Nagle off (signaling messages are small and latency-bound), caps raw TCP
    // connections per address and closes one that sends nothing within the login timeout: axum
    // runs hyper without a timer, so its header timeout never fires on its own.
    let listener = axum::serve::ListenerExt::tap_io(state.guard_listener(listener), |_| {});
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            trigger.shutdown();
        })
        .await;
    state.shutdown();
    state.join_media().await;
    // The media plane is gone, so every recording's tap is dropped: the writers finish the
    // files (within their 50 ms poll); wait for that, bounded.
    let recordings_done = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while state
        .recorder()
        .counts()
        .active
        .load(std::sync::atomic::Ordering::Relaxed)
        > 0
        && tokio::time::Instant::now() < recordings_done
    {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    state.stop_webhooks().await;
    if tokio::time::timeout(signaling::SHUTDOWN_TIMEOUT, state.wait_idle())
        .await
        .is_err()
    {
        tracing::warn!(
            connections = state.connections(),
            "connections still open after the shutdown timeout"
        );
    }
    tracing::info!("stopped");
    result
}

/// A server running on its own thread and tokio runtime, for tests and for embedding in
/// synchronous code. Dropping it stops it too.
pub struct BackgroundServer {
    addr: SocketAddr,
    udp_addr: SocketAddr,
    state: ServerState,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl BackgroundServer {
    /// Binds `config.listen` (which may be `127.0.0.1:0`) and starts serving. Returns once the
    /// socket is bound: connections made after this are accepted.
    pub fn start(config: ServerConfig) -> std::io::Result<BackgroundServer> {
        let listener = std::net::TcpListener::bind(config.listen)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let state = ServerState::new(config).map_err(invalid_config)?;
        let udp_addr = state.bind_media()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let serve_state = state.clone();
        let thread = std::thread::Builder::new()
            .name(format!("huddle-server-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    serve(listener, serve_state, async move {
                        let _ = stopped.await;
                    })
                    .await
                })
            })?;
        Ok(BackgroundServer {
            addr,
            udp_addr,
            state,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The signaling URL, `ws://127.0.0.1:PORT/ws`, or `wss://` with TLS (a wildcard listen
    /// address is given as loopback).
    pub fn ws_url(&self) -> String {
        let scheme = if self.state.is_tls() { "wss" } else { "ws" };
        format!("{scheme}://{}{}", self.local_addr(), huddle_proto::SIGNALING_PATH)
    }

    /// The web page's URL, `http://127.0.0.1:PORT/`, or `https://` with TLS.
    pub fn http_url(&self) -> String {
        let scheme = if self.state.is_tls() { "https" } else { "http" };
        format!("{scheme}://{}/", self.local_addr())
    }

    fn local_addr(&self) -> SocketAddr {
        let mut addr = self.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        addr
    }

    /// The bound address of the media UDP socket (the server's ICE candidate uses its port with
    /// `public_ip`).
    pub fn udp_addr(&self) -> SocketAddr {
        self.udp_addr
    }

    /// Counts of the media plane.
    pub fn media_stats(&self) -> MediaStats {
        self.state.media_stats()
    }

    /// The server's state (configuration, counts).
    pub fn state(&self) -> &ServerState {
        &self.state
    }

    /// Counts of the registry: sessions, detached sessions, rooms, streams.
    pub fn stats(&self) -> Stats {
        self.state.stats()
    }

    /// Stops gracefully (connections closed with "going away") and joins the thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            match thread.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("server stopped with an error: {e}"),
                Err(_) => tracing::warn!("server thread panicked"),
            }
        }
    }
}

impl Drop for BackgroundServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl std::fmt::Debug for BackgroundServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackgroundServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}
