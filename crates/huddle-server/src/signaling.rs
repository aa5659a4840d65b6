//! The signaling shell: WebSocket connections around the sans-IO [`Registry`].
//!
//! Each connection runs a reader (this task) and a writer task fed by a bounded queue. The registry
//! and the map from sessions to their connection queues sit behind one short-held mutex; outputs are
//! delivered with `try_send` while it is held, so each session receives its messages in the order
//! the registry produced them and no session ever waits for another. A connection whose queue is
//! full is closed (1009005) and its session detached, as any broken connection is.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Extension;
use axum::Router;
use axum::extract::State;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use huddle_proto::{
    ClientMsg, ErrorCode, HuddleError, Login, MAX_MESSAGE_BYTES, MediaRole, PROTOCOL_VERSION, SIGNALING_PATH,
    ServerMsg,
};
use parking_lot::Mutex;
use rand::RngCore;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Notify, mpsc, watch};
use tracing::{Instrument, debug, info, warn};

use crate::auth::Authenticator;
use crate::config::{ConfigError, ServerConfig};
use crate::media::{self, MediaTx};
use crate::registry::{Detached, Limits, Output, Registry, RoomView, SessionId, Stats};
use crate::sfu::{Command, Counters, MediaStats, Offer};

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

/// How long before its token expires a session gets `token_will_expire` (what the hosted SDKs
/// use for `onRoomTokenWillExpire`).
pub(crate) const TOKEN_WARNING: Duration = Duration::from_secs(30);

/// The server's shared state: configuration, apps, the registry and the live connections.
/// Cheap to clone.
#[derive(Clone)]
pub struct ServerState(Arc<Shared>);

struct Shared {
    config: ServerConfig,
    auth: Authenticator,
    hub: Mutex<Hub>,
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
}

/// The per-address table, pruned of idle addresses when it doubles (amortized O(1) per new
/// connection however many addresses connect).
struct PerIpTable {
    map: HashMap<IpAddr, PerIp>,
    prune_at: usize,
}

/// What the per-address limits know of one IP address.
struct PerIp {
    open: usize,
    /// New connections allowed now (refilled at `connection_rate_per_ip`).
    tokens: f64,
    at: Instant,
}

/// Past this many tracked addresses (or twice as many as the last pruning kept), idle ones (no
/// connection, bucket full) are forgotten.
const PER_IP_PRUNE: usize = 4096;

/// The address the per-address limits count under: an IPv4 address (also when mapped into IPv6),
/// or the /64 prefix of an IPv6 address (one host usually holds a whole /64, so counting single
/// IPv6 addresses would limit nothing).
fn limit_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
    }
}

/// One entry of `X-Forwarded-For`: an IP address, maybe with a port (`192.0.2.1:4711`,
/// `[2001:db8::1]:4711`) or in brackets.
fn parse_forwarded_ip(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| {
            entry
                .strip_prefix('[')
                .and_then(|e| e.strip_suffix(']'))
                .and_then(|e| e.parse().ok())
        })
}

/// Raw TCP connections allowed per address beyond `max_connections_per_ip` (plain HTTP beside the
/// WebSockets).
const TCP_SLACK_PER_IP: usize = 64;

/// A TCP connection's place in its address's count; released on drop. `ip` is `None` for a
/// trusted proxy's connection, which is not counted.
struct TcpSlot {
    state: ServerState,
    ip: Option<IpAddr>,
}

impl Drop for TcpSlot {
    fn drop(&mut self) {
        let Some(ip) = self.ip else { return };
        let mut map = self.state.0.tcp_per_ip.lock();
        if let Some(open) = map.get_mut(&ip) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                map.remove(&ip);
            }
        }
    }
}

/// The signaling listener with the per-address TCP limits and, with `tls_cert`, TLS
/// ([`ServerState::guard_listener`]).
pub struct GuardedListener {
    inner: tokio::net::TcpListener,
    state: ServerState,
    /// TLS handshakes under way, each its own task so that a slow one holds up nobody; each ends
    /// by the connection's deadline. Dropped (aborted) with the listener.
    handshakes: tokio::task::JoinSet<Option<(GuardedStream, SocketAddr)>>,
}

impl axum::serve::Listener for GuardedListener {
    type Io = GuardedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (GuardedStream, SocketAddr) {
        loop {
            let accepted = tokio::select! {
                r = self.inner.accept() => r,
                Some(done) = self.handshakes.join_next(), if !self.handshakes.is_empty() => {
                    if let Ok(Some(conn)) = done {
                        return conn;
                    }
                    continue;
                }
            };
            match accepted {
                Ok((stream, addr)) => {
                    let Some(slot) = self.state.admit_tcp(addr.ip()) else {
                        debug!(%addr, "per-address TCP limit: connection closed");
                        continue;
                    };
                    // Signaling messages are small and latency-bound: no Nagle.
                    let _ = stream.set_nodelay(true);
                    // One deadline for the TLS handshake and the first byte of the request.
                    let deadline = tokio::time::Instant::now() + self.state.0.config.login_timeout;
                    match &self.state.0.tls {
                        None => return (GuardedStream::new(Transport::Plain(stream), deadline, slot), addr),
                        Some(acceptor) => {
                            let acceptor = acceptor.clone();
                            self.handshakes
                                .spawn(tls_handshake(acceptor, stream, addr, deadline, slot));
                        }
                    }
                }
                // As axum's own listener: errors of one connection are skipped, others (out of
                // file descriptors) wait a moment.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionRefused
                            | std::io::ErrorKind::ConnectionAborted
                            | std::io::ErrorKind::ConnectionReset
                    ) => {}
                Err(e) => {
                    warn!("accept error: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// Runs the server side of a TLS handshake until `deadline`. A client that speaks plain HTTP to
/// the TLS port gets a 400 that says so; a handshake that fails or takes too long is dropped.
async fn tls_handshake(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: tokio::net::TcpStream,
    addr: SocketAddr,
    deadline: tokio::time::Instant,
    slot: TcpSlot,
) -> Option<(GuardedStream, SocketAddr)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let handshake = async {
        let mut first = [0u8; 1];
        if stream.peek(&mut first).await? == 1 && first[0] != crate::tls::HANDSHAKE_RECORD {
            let mut stream = stream;
            stream.write_all(crate::tls::PLAIN_HTTP_ANSWER).await?;
            let _ = stream.shutdown().await;
            // Read what the client sent (a little, until it closes or the deadline) before
            // closing: a close with unread data is a reset, which may destroy the answer.
            let mut sink = [0u8; 4096];
            let mut read = 0;
            while read < 64 * 1024 {
                match stream.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => read += n,
                }
            }
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "plain HTTP on the TLS port",
            ));
        }
        acceptor.accept(stream).await
    };
    match tokio::time::timeout_at(deadline, handshake).await {
        Ok(Ok(tls)) => Some((
            GuardedStream::new(Transport::Tls(Box::new(tls)), deadline, slot),
            addr,
        )),
        Ok(Err(e)) => {
            debug!(%addr, "TLS handshake failed: {e}");
            None
        }
        Err(_) => {
            debug!(%addr, "TLS handshake not finished within the login timeout: connection closed");
            None
        }
    }
}

/// The transport under a [`GuardedStream`].
enum Transport {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>),
}

/// A connection accepted by a [`GuardedListener`] (TCP, or TLS over TCP with `tls_cert`): fails
/// its reads with `TimedOut` if the head of its first HTTP request (up to the blank line) has not
/// arrived by the deadline, so that a client trickling its headers a byte at a time holds the
/// connection no longer than one that sends nothing; holds its place in its address's count.
pub struct GuardedStream {
    inner: Transport,
    /// Until the request head is complete.
    head_deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    /// The last four bytes read while the head is incomplete (big-endian), to find `\r\n\r\n`
    /// across reads.
    head_tail: u32,
    _slot: TcpSlot,
}

/// `\r\n\r\n`, the end of an HTTP request head.
const HEAD_END: u32 = u32::from_be_bytes(*b"\r\n\r\n");

impl GuardedStream {
    fn new(inner: Transport, deadline: tokio::time::Instant, slot: TcpSlot) -> GuardedStream {
        GuardedStream {
            inner,
            head_deadline: Some(Box::pin(tokio::time::sleep_until(deadline))),
            head_tail: 0,
            _slot: slot,
        }
    }
}

/// Forwards a poll to the transport, whichever it is.
macro_rules! on_conn {
    ($self:ident, $s:ident => $e:expr) => {
        match &mut $self.inner {
            Transport::Plain($s) => {
                let $s = std::pin::Pin::new($s);
                $e
            }
            Transport::Tls($s) => {
                let $s = std::pin::Pin::new(&mut **$s);
                $e
            }
        }
    };
}

impl tokio::io::AsyncRead for GuardedStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::future::Future;
        use std::task::Poll;
        let this = &mut *self;
        let before = buf.filled().len();
        match on_conn!(this, s => s.poll_read(cx, buf)) {
            Poll::Ready(r) => {
                if this.head_deadline.is_some() {
                    for b in &buf.filled()[before..] {
                        this.head_tail = this.head_tail << 8 | u32::from(*b);
                        if this.head_tail == HEAD_END {
                            this.head_deadline = None;
                            break;
                        }
                    }
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                let timed_out = this
                    .head_deadline
                    .as_mut()
                    .is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready());
                if timed_out {
                    Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no whole HTTP request head in time",
                    )))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl tokio::io::AsyncWrite for GuardedStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        on_conn!(self, s => s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        on_conn!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match &self.inner {
            Transport::Plain(s) => s.is_write_vectored(),
            Transport::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        on_conn!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        on_conn!(self, s => s.poll_shutdown(cx))
    }
}

/// An admitted connection's place in its address's count; released on drop.
struct IpSlot {
    state: ServerState,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut table = self.state.0.per_ip.lock();
        if let Some(e) = table.map.get_mut(&self.ip) {
            e.open = e.open.saturating_sub(1);
        }
    }
}

/// The registry and where each attached session's messages go.
struct Hub {
    registry: Registry,
    conns: HashMap<SessionId, ConnHandle>,
    /// Commands to the media plane, sent under the hub lock so that they follow the registry's
    /// order. `None` until the media plane runs.
    media: Option<MediaTx>,
    /// The token timer of each session whose token expires (warning, then the end of the
    /// session), with the number of its arming; aborted when the session ends or renews.
    token_timers: HashMap<SessionId, (u64, tokio::task::AbortHandle)>,
    /// Counts the armings of token timers.
    token_timer_gen: u64,
}

/// The connection that carries a session now.
struct ConnHandle {
    /// The registry epoch of this attachment.
    epoch: u64,
    tx: mpsc::Sender<Message>,
    ctl: Arc<watch::Sender<Closing>>,
}

/// Whether and how a connection is closing; set once (the first reason wins).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Closing {
    Open,
    /// Send what is queued, then close (logout, kick, login timeout, the peer went away).
    AfterQueue,
    /// Close at once, ahead of the queue, after this error (slow consumer, oversized message) if
    /// any (session timeout, replaced by a resume).
    Now(Option<Utf8Bytes>),
    /// The server is shutting down: close with "going away".
    Shutdown,
    /// The peer broke the WebSocket protocol (RFC 6455, 7.4.1): close at once with this code and
    /// reason, after this error if any.
    Violation {
        error: Option<Utf8Bytes>,
        code: u16,
        reason: &'static str,
    },
}

impl Closing {
    /// Whether the writer must stop sending the queue.
    fn is_hard(&self) -> bool {
        matches!(
            self,
            Closing::Now(_) | Closing::Shutdown | Closing::Violation { .. }
        )
    }
}

fn close(ctl: &watch::Sender<Closing>, how: Closing) {
    ctl.send_if_modified(|c| {
        if *c == Closing::Open {
            *c = how;
            true
        } else {
            false
        }
    });
}

fn text(msg: &ServerMsg) -> Utf8Bytes {
    Utf8Bytes::from(msg.encode())
}

fn error_text(seq: Option<u32>, err: &HuddleError) -> Utf8Bytes {
    text(&ServerMsg::error(seq, err))
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

impl Hub {
    /// Delivers the registry's outputs, in order, without waiting.
    fn dispatch(&mut self, out: Vec<Output>) {
        for o in out {
            match o {
                Output::Send { to, msg } => {
                    debug!(session = %to, msg = msg_type(&msg), "send");
                    self.deliver(to, Message::Text(text(&msg)));
                }
                Output::Broadcast { to, msg } => {
                    debug!(sessions = to.len(), msg = msg_type(&msg), "broadcast");
                    let t = text(&msg);
                    for id in to {
                        self.deliver(id, Message::Text(t.clone()));
                    }
                }
                Output::Close { session } => {
                    if let Some(h) = self.conns.remove(&session) {
                        close(&h.ctl, Closing::AfterQueue);
                    }
                    self.disarm_token(session);
                    // The session is gone from the registry: so are its media connections.
                    self.media_command(Command::SessionGone { session });
                }
            }
        }
    }

    /// Stops the token timer of a session that ended.
    fn disarm_token(&mut self, session: SessionId) {
        if let Some((_, timer)) = self.token_timers.remove(&session) {
            timer.abort();
        }
    }

    /// Sends a command to the media plane (dropped when it does not run). `false`: refused (too
    /// many offers in flight).
    fn media_command(&self, cmd: Command) -> bool {
        match &self.media {
            Some(m) => m.send(cmd),
            None => !matches!(cmd, Command::Offer(_)),
        }
    }

    fn deliver(&mut self, to: SessionId, m: Message) {
        let Some(h) = self.conns.get(&to) else { return };
        match h.tx.try_send(m) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                warn!(session = %to, "outbound queue full: closing the connection (1009005)");
                if let Some(h) = self.conns.remove(&to) {
                    close(&h.ctl, Closing::Now(Some(slow_consumer())));
                }
            }
            Err(TrySendError::Closed(_)) => {
                self.conns.remove(&to);
            }
        }
    }
}

fn slow_consumer() -> Utf8Bytes {
    error_text(None, &HuddleError::from(ErrorCode::SLOW_CONSUMER))
}

fn msg_type(m: &ServerMsg) -> &'static str {
    match m {
        ServerMsg::Hello { .. } => "hello",
        ServerMsg::LoginOk(_) => "login_ok",
        ServerMsg::Ok { .. } => "ok",
        ServerMsg::Error { .. } => "error",
        ServerMsg::Pong { .. } => "pong",
        ServerMsg::UserUpdate { .. } => "user_update",
        ServerMsg::StreamUpdate { .. } => "stream_update",
        ServerMsg::PlayUpdate { .. } => "play_update",
        ServerMsg::Kicked { .. } => "kicked",
        ServerMsg::MediaAnswer { .. } => "media_answer",
        ServerMsg::MediaState { .. } => "media_state",
        ServerMsg::TokenWillExpire { .. } => "token_will_expire",
    }
}

/// Counts down while a connection task runs; wakes [`ServerState::wait_idle`] at zero.
struct ConnGuard(ServerState);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if self.0.0.connections.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.0.idle.notify_waiters();
        }
    }
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
        Ok(ServerState(Arc::new(Shared {
            auth: Authenticator::new(&config.apps),
            config,
            hub: Mutex::new(Hub {
                registry,
                conns: HashMap::new(),
                media: None,
                token_timers: HashMap::new(),
                token_timer_gen: 0,
            }),
            shutdown: watch::Sender::new(false),
            draining: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
            connections_peak: AtomicUsize::new(0),
            idle: Notify::new(),
            udp: Mutex::new(None),
            udp_addr: OnceLock::new(),
            tcp: Mutex::new(None),
            tcp_addr: OnceLock::new(),
            media_task: Mutex::new(None),
            counters: Arc::new(Counters::default()),
            per_ip: Mutex::new(PerIpTable {
                map: HashMap::new(),
                prune_at: PER_IP_PRUNE,
            }),
            tcp_per_ip: Mutex::new(HashMap::new()),
            tls,
        })))
    }

    /// Wraps the signaling listener so that raw TCP connections obey the per-address limits too:
    /// at most `max_connections_per_ip` + 64 open TCP connections per address (the margin
    /// leaves room for plain HTTP beside the WebSockets, so that a client normally meets the
    /// WebSocket limit and its numbered error first; beyond it a new connection is closed at
    /// once; a `trusted_proxies` address is not capped, since all its clients share it), and a
    /// connection that has not sent the first byte of its HTTP request within `login_timeout`
    /// is closed. With `tls_cert` the listener speaks TLS: each handshake runs in its own task
    /// and must finish within the same `login_timeout`. Accepted connections have Nagle off.
    /// Serve it through `axum::serve::ListenerExt::tap_io` to keep the peer address as
    /// `ConnectInfo<SocketAddr>`.
    pub fn guard_listener(&self, listener: tokio::net::TcpListener) -> GuardedListener {
        GuardedListener {
            inner: listener,
            state: self.clone(),
            handshakes: tokio::task::JoinSet::new(),
        }
    }

    /// Whether the server speaks TLS (HTTPS and WSS) on its listener.
    pub fn is_tls(&self) -> bool {
        self.0.tls.is_some()
    }

    /// Whether `ip` is one of `trusted_proxies`.
    fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0
            .config
            .trusted_proxies
            .iter()
            .any(|p| p.to_canonical() == ip)
    }

    /// The address of the client that sent a request over a connection from `peer`: `peer`
    /// itself, unless `peer` is one of `trusted_proxies`; then the rightmost address of the
    /// `X-Forwarded-For` header(s) that is not itself a trusted proxy (each proxy appends the
    /// address it got the request from, so everything left of that one is the client's word).
    /// `peer` if the header is missing, or that entry is not an IP address.
    ///
    /// This is the address the per-address WebSocket limits count and the loopback-only
    /// answers of `/api/info` check.
    ///
    /// ```
    /// use axum::http::HeaderMap;
    /// use huddle_server::{ServerConfig, ServerState, test_app};
    ///
    /// let mut config = ServerConfig::for_tests(vec![test_app(1)]);
    /// config.trusted_proxies = vec!["10.0.0.2".parse().unwrap()];
    /// let state = ServerState::new(config).unwrap();
    /// let mut headers = HeaderMap::new();
    /// // The client wrote the first entry itself; the proxy appended the address it saw.
    /// headers.insert("x-forwarded-for", "192.0.2.66, 203.0.113.7".parse().unwrap());
    /// let ip = |peer: &str| state.client_ip(peer.parse().unwrap(), &headers).to_string();
    /// assert_eq!(ip("10.0.0.2"), "203.0.113.7"); // through the trusted proxy
    /// assert_eq!(ip("198.51.100.1"), "198.51.100.1"); // anyone else: the header is ignored
    /// ```
    pub fn client_ip(&self, peer: IpAddr, headers: &axum::http::HeaderMap) -> IpAddr {
        if !self.is_trusted_proxy(peer) {
            return peer;
        }
        let entries: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        for entry in entries.iter().rev() {
            match parse_forwarded_ip(entry) {
                Some(ip) if self.is_trusted_proxy(ip) => continue,
                Some(ip) => return ip.to_canonical(),
                None => return peer,
            }
        }
        peer
    }

    /// Counts a new TCP connection from `ip`; `None` beyond the limit.
    fn admit_tcp(&self, ip: IpAddr) -> Option<TcpSlot> {
        if self.is_trusted_proxy(ip) {
            return Some(TcpSlot {
                state: self.clone(),
                ip: None,
            });
        }
        let max = self.0.config.max_connections_per_ip;
        let ip = limit_key(ip);
        let mut map = self.0.tcp_per_ip.lock();
        let open = map.entry(ip).or_insert(0);
        if max > 0 && *open >= max + TCP_SLACK_PER_IP {
            if *open == 0 {
                map.remove(&ip);
            }
            return None;
        }
        *open += 1;
        Some(TcpSlot {
            state: self.clone(),
            ip: Some(ip),
        })
    }

    /// Admits a new connection from `ip` under the per-address limits: the connection rate
    /// (1009004 beyond it; an attempt refused by it does not count) and the open connections
    /// (1009006).
    fn admit(&self, ip: IpAddr) -> Result<IpSlot, HuddleError> {
        let ip = limit_key(ip);
        let c = &self.0.config;
        let now = Instant::now();
        let burst = f64::from(c.connection_burst_per_ip.max(1));
        let mut table = self.0.per_ip.lock();
        if table.map.len() >= table.prune_at && !table.map.contains_key(&ip) {
            let rate = f64::from(c.connection_rate_per_ip);
            table.map.retain(|_, e| {
                e.open > 0 || (rate > 0.0 && e.tokens + now.duration_since(e.at).as_secs_f64() * rate < burst)
            });
            table.prune_at = (2 * table.map.len()).max(PER_IP_PRUNE);
        }
        let e = table.map.entry(ip).or_insert(PerIp {
            open: 0,
            tokens: burst,
            at: now,
        });
        if c.connection_rate_per_ip > 0 {
            let elapsed = now.saturating_duration_since(e.at).as_secs_f64();
            e.tokens = (e.tokens + elapsed * f64::from(c.connection_rate_per_ip)).min(burst);
            e.at = now;
            if e.tokens < 1.0 {
                return Err(HuddleError::new(
                    ErrorCode::RATE_LIMITED,
                    format!(
                        "more than {} new connections a second from this address (bursts of {})",
                        c.connection_rate_per_ip, c.connection_burst_per_ip
                    ),
                ));
            }
            e.tokens -= 1.0;
        }
        if c.max_connections_per_ip > 0 && e.open >= c.max_connections_per_ip {
            return Err(HuddleError::new(
                ErrorCode::SERVER_BUSY,
                format!(
                    "more than {} open connections from this address",
                    c.max_connections_per_ip
                ),
            ));
        }
        e.open += 1;
        Ok(IpSlot {
            state: self.clone(),
            ip,
        })
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
        let (tx, handle) = media::spawn(self.clone(), socket, tcp, self.0.counters.clone())?;
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

    /// Delivers the media plane's messages to their sessions (dropped for detached ones).
    pub(crate) fn deliver_media(&self, signals: &mut Vec<(SessionId, ServerMsg)>) {
        let mut hub = self.0.hub.lock();
        for (to, msg) in signals.drain(..) {
            debug!(session = %to, msg = msg_type(&msg), "media signal");
            hub.deliver(to, Message::Text(text(&msg)));
        }
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

    /// Checks the registry's invariants ([`Registry::check_invariants`]), and that every token
    /// timer belongs to a live session (tests).
    pub fn check_invariants(&self) -> Result<(), String> {
        let hub = self.0.hub.lock();
        hub.registry.check_invariants()?;
        match hub
            .token_timers
            .keys()
            .find(|id| hub.registry.session(**id).is_none())
        {
            Some(id) => Err(format!("token timer of the ended session {id:?}")),
            None => Ok(()),
        }
    }

    /// Open WebSocket connections.
    pub fn connections(&self) -> usize {
        self.0.connections.load(Ordering::Acquire)
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

    /// Serves one upgraded WebSocket until it closes. `admission` is the per-address verdict
    /// (`Ok(None)`: the peer address is unknown); a refused connection gets its error and closes.
    async fn serve_socket(self, socket: WebSocket, admission: Result<Option<IpSlot>, HuddleError>) {
        let open = self.0.connections.fetch_add(1, Ordering::AcqRel) + 1;
        self.0.connections_peak.fetch_max(open, Ordering::AcqRel);
        let _guard = ConnGuard(self.clone());
        let config = &self.0.config;
        let (sink, mut stream) = socket.split();
        let (tx, rx) = mpsc::channel(config.outbound_queue);
        let (ctl, ctl_rx) = watch::channel(Closing::Open);
        let ctl = Arc::new(ctl);
        let writer = tokio::spawn(write_loop(sink, rx, ctl_rx).in_current_span());
        let mut conn = Conn {
            state: self.clone(),
            tx,
            ctl,
            nonce: random_hex(16),
            session: None,
            bucket: TokenBucket::new(config.rate_limit_per_sec, config.rate_limit_burst),
            dropped_in_a_row: 0,
        };
        // Held until the connection ends.
        let (_slot, refused) = match admission {
            Ok(slot) => (slot, None),
            Err(e) => (None, Some(e)),
        };
        if let Some(e) = refused {
            warn!(code = e.code.0, "per-address limit: connection refused");
            close(&conn.ctl, Closing::Now(Some(error_text(None, &e))));
        } else if self.connections() > config.max_sessions {
            // Open connections are bounded like sessions (a connection logs in to at most one).
            warn!("connection limit reached");
            let busy = HuddleError::new(ErrorCode::SERVER_BUSY, "the server is at its connection limit");
            close(&conn.ctl, Closing::Now(Some(error_text(None, &busy))));
        } else {
            conn.read_loop(&mut stream).await;
        }
        conn.finish();
        drop(conn);
        let _ = writer.await;
        // The closing handshake: read (and drop) until the peer closes too, so that data still
        // unread does not turn our close into a reset that could destroy the last messages.
        let drain = async { while let Some(Ok(_)) = stream.next().await {} };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, drain).await;
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

async fn ws_handler(
    State(state): State<ServerState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: axum::http::HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let addr = peer.map(|Extension(ConnectInfo(addr))| addr);
    let client = addr.map(|a| state.client_ip(a.ip(), &headers));
    // Admitted before the upgrade, so that the count covers the connection from its start.
    let admission = client.map(|ip| state.admit(ip)).transpose();
    let peer = match (addr, client) {
        (Some(a), Some(ip)) if ip != a.ip() => format!("{ip} via {a}"),
        (Some(a), _) => a.to_string(),
        _ => String::new(),
    };
    // tungstenite reserves its whole read buffer per connection (128 KiB by default), most of
    // the memory of a connection that never logs in; signaling messages are small, and a larger
    // one grows the buffer for that connection only.
    ws.max_message_size(WS_MAX_MESSAGE)
        .max_frame_size(WS_MAX_MESSAGE)
        .read_buffer_size(WS_READ_BUFFER)
        .on_upgrade(move |socket| {
            let span = tracing::info_span!("conn", %peer);
            state.serve_socket(socket, admission).instrument(span)
        })
}

/// Writes the queue to the socket until the connection closes, then the close frame.
async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Message>,
    mut ctl: watch::Receiver<Closing>,
) {
    loop {
        let msg = tokio::select! {
            biased;
            _ = ctl.wait_for(|c| *c != Closing::Open) => break,
            m = rx.recv() => match m {
                Some(m) => m,
                None => break,
            },
        };
        tokio::select! {
            biased;
            r = sink.send(msg) => if r.is_err() { return },
            _ = ctl.wait_for(Closing::is_hard) => break,
        }
    }
    let closing = ctl.borrow().clone();
    let finish = async {
        let mut reason = "";
        let code = match closing {
            Closing::Now(Some(last)) => {
                sink.send(Message::Text(last)).await?;
                1000
            }
            Closing::Now(None) => 1000,
            Closing::Shutdown => 1001,
            Closing::Violation {
                error,
                code,
                reason: why,
            } => {
                if let Some(last) = error {
                    sink.send(Message::Text(last)).await?;
                }
                reason = why;
                code
            }
            Closing::Open | Closing::AfterQueue => {
                rx.close();
                while let Some(m) = rx.recv().await {
                    sink.send(m).await?;
                }
                1000
            }
        };
        sink.send(Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        })))
        .await?;
        sink.close().await
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, finish).await;
}

/// A token bucket: `rate` tokens a second, at most `burst`.
struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: tokio::time::Instant,
}

impl TokenBucket {
    fn new(rate: u32, burst: u32) -> TokenBucket {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate: f64::from(rate),
            burst,
            tokens: burst,
            at: tokio::time::Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The reading side of one connection.
struct Conn {
    state: ServerState,
    tx: mpsc::Sender<Message>,
    ctl: Arc<watch::Sender<Closing>>,
    /// The login challenge of this connection.
    nonce: String,
    /// The attached session and the epoch of this attachment.
    session: Option<(SessionId, u64)>,
    bucket: TokenBucket,
    /// Messages dropped by the rate limit since the last one accepted.
    dropped_in_a_row: u32,
}

impl Conn {
    fn config(&self) -> &ServerConfig {
        &self.state.0.config
    }

    /// Queues a message for this connection (not through the registry).
    fn send(&self, msg: &ServerMsg) {
        match self.tx.try_send(Message::Text(text(msg))) {
            Ok(()) | Err(TrySendError::Closed(_)) => {}
            Err(TrySendError::Full(_)) => close(&self.ctl, Closing::Now(Some(slow_consumer()))),
        }
    }

    fn reply_error(&self, seq: Option<u32>, err: &HuddleError) {
        debug!(?seq, code = err.code.0, message = %err.message, "error reply");
        self.send(&ServerMsg::error(seq, err));
    }

    async fn read_loop(&mut self, stream: &mut SplitStream<WebSocket>) {
        let mut ctl = self.ctl.subscribe();
        let mut shutdown = self.state.0.shutdown.subscribe();
        let login_deadline = tokio::time::Instant::now() + self.config().login_timeout;
        let session_timeout = self.config().session_timeout;
        let mut last_heard = tokio::time::Instant::now();
        self.send(&ServerMsg::Hello {
            protocol: PROTOCOL_VERSION,
            nonce: self.nonce.clone(),
            server_time_ms: unix_ms(),
        });
        loop {
            let deadline = if self.session.is_some() {
                last_heard + session_timeout
            } else {
                login_deadline
            };
            if self.tx.capacity() < OWN_REPLY_ROOM {
                // The peer sends faster than it reads its replies: stop reading until the writer
                // catches up (TCP backpressure), rather than overflow the queue with our replies.
                let room = OWN_REPLY_ROOM.min(self.tx.max_capacity());
                tokio::select! {
                    biased;
                    _ = ctl.wait_for(|c| *c != Closing::Open) => return,
                    _ = shutdown.wait_for(|s| *s) => {
                        close(&self.ctl, Closing::Shutdown);
                        return;
                    }
                    () = tokio::time::sleep(session_timeout) => {
                        info!("the peer does not read its replies: closing");
                        close(&self.ctl, Closing::Now(Some(slow_consumer())));
                        return;
                    }
                    permits = self.tx.reserve_many(room) => {
                        if permits.is_err() {
                            return;
                        }
                    }
                }
            }
            let item = tokio::select! {
                biased;
                _ = ctl.wait_for(|c| *c != Closing::Open) => return,
                _ = shutdown.wait_for(|s| *s) => {
                    close(&self.ctl, Closing::Shutdown);
                    return;
                }
                () = tokio::time::sleep_until(deadline) => {
                    if self.session.is_some() {
                        info!("session timeout: no message for {session_timeout:?}");
                        close(&self.ctl, Closing::Now(None));
                    } else {
                        let timeout = self.config().login_timeout;
                        self.reply_error(None, &HuddleError::new(
                            ErrorCode::LOGIN_TIMEOUT,
                            format!("no login within {timeout:?}"),
                        ));
                        close(&self.ctl, Closing::AfterQueue);
                    }
                    return;
                }
                item = stream.next() => item,
            };
            last_heard = tokio::time::Instant::now();
            match item {
                None | Some(Ok(Message::Close(_))) => return,
                Some(Err(e)) => {
                    match violation(e) {
                        Some(Violation::TooLarge) => self.too_large(),
                        Some(Violation::Protocol { code, reason }) => {
                            info!(code, reason, "WebSocket protocol violation: closing");
                            close(
                                &self.ctl,
                                Closing::Violation {
                                    error: None,
                                    code,
                                    reason,
                                },
                            );
                        }
                        None => debug!("read error"),
                    }
                    return;
                }
                Some(Ok(Message::Text(t))) => self.on_text(t.as_str()),
                Some(Ok(Message::Binary(_))) => {
                    if self.rate_ok(None) {
                        self.reply_error(
                            None,
                            &HuddleError::new(ErrorCode::MALFORMED_MESSAGE, "binary frames are not accepted"),
                        );
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            }
        }
    }

    fn too_large(&self) {
        let err = HuddleError::new(
            ErrorCode::MESSAGE_TOO_LARGE,
            format!("messages are limited to {MAX_MESSAGE_BYTES} bytes"),
        );
        info!("message too large: closing");
        close(
            &self.ctl,
            Closing::Violation {
                error: Some(error_text(None, &err)),
                code: 1009,
                reason: "message too big",
            },
        );
    }

    /// Applies the rate limit; answers 1009004 to a dropped message, and closes a connection that
    /// keeps sending far beyond the limit (a whole burst dropped in a row).
    fn rate_ok(&mut self, seq: Option<u32>) -> bool {
        if self.bucket.take() {
            self.dropped_in_a_row = 0;
            return true;
        }
        self.dropped_in_a_row += 1;
        let err = HuddleError::new(
            ErrorCode::RATE_LIMITED,
            format!(
                "more than {} messages a second (bursts of {})",
                self.config().rate_limit_per_sec,
                self.config().rate_limit_burst
            ),
        );
        if self.dropped_in_a_row > self.config().rate_limit_burst {
            // What was accepted is answered first: the replies already queued, then this error,
            // then the close (bounded by the close timeout, as any queue drain is).
            warn!("rate limit exceeded by a whole burst: closing");
            self.reply_error(None, &err);
            close(&self.ctl, Closing::AfterQueue);
        } else {
            self.reply_error(seq, &err);
        }
        false
    }

    fn on_text(&mut self, text: &str) {
        let msg = match ClientMsg::decode(text) {
            Ok(m) => m,
            Err(e) if e.error.code == ErrorCode::MESSAGE_TOO_LARGE => return self.too_large(),
            Err(e) => {
                if self.rate_ok(e.seq) {
                    self.reply_error(e.seq, &e.error);
                }
                return;
            }
        };
        if !self.rate_ok(Some(msg.seq())) {
            return;
        }
        let Some((id, _)) = self.session else {
            match msg {
                ClientMsg::Login(login) => self.login(login),
                other => self.reply_error(
                    Some(other.seq()),
                    &HuddleError::new(ErrorCode::NOT_LOGGED_IN, "log in first"),
                ),
            }
            return;
        };
        debug!(session = %id, seq = msg.seq(), "request");
        let mut out = Vec::new();
        let mut hub = self.state.0.hub.lock();
        let reg = &mut hub.registry;
        let (seq, result) = match &msg {
            ClientMsg::Login(l) => (
                l.seq,
                Err(HuddleError::new(
                    ErrorCode::ALREADY_LOGGED_IN,
                    "this connection is logged in already",
                )),
            ),
            ClientMsg::Logout { seq } => {
                let r = reg.logout(id, *seq, &mut out);
                if r.is_ok() {
                    info!(session = %id, "logout");
                    self.session = None;
                }
                (*seq, r)
            }
            ClientMsg::Publish {
                seq,
                stream_id,
                extra_info,
            } => {
                let r = reg.publish(id, *seq, stream_id, extra_info, &mut out);
                if r.is_ok() {
                    info!(session = %id, %stream_id, "publish");
                }
                (*seq, r)
            }
            ClientMsg::Unpublish { seq, stream_id } => {
                let app = reg.session(id).map(|s| s.app_id);
                let r = reg.unpublish(id, *seq, stream_id, &mut out);
                if r.is_ok() {
                    info!(session = %id, %stream_id, "unpublish");
                    if let Some(app) = app {
                        hub.media_command(Command::ClosePublish {
                            app,
                            stream_id: stream_id.clone(),
                        });
                    }
                }
                (*seq, r)
            }
            ClientMsg::Play { seq, stream_id } => (*seq, reg.play(id, *seq, stream_id, &mut out)),
            ClientMsg::StopPlay { seq, stream_id } => {
                let r = reg.stop_play(id, *seq, stream_id, &mut out);
                if r.is_ok()
                    && let Some(s) = hub.registry.session(id)
                {
                    hub.media_command(Command::ClosePlay {
                        session: id,
                        app: s.app_id,
                        stream_id: stream_id.clone(),
                    });
                }
                (*seq, r)
            }
            ClientMsg::MediaOffer {
                seq,
                stream_id,
                kind,
                sdp,
            } => (*seq, media_offer(&hub, id, *seq, stream_id, *kind, sdp)),
            ClientMsg::Ping { seq } => {
                drop(hub);
                self.send(&ServerMsg::Pong {
                    seq: *seq,
                    server_time_ms: unix_ms(),
                });
                return;
            }
            ClientMsg::RenewToken { seq, token } => {
                let who = reg.session(id);
                drop(hub);
                return self.renew(id, *seq, who, token);
            }
        };
        hub.dispatch(out);
        drop(hub);
        if let Err(e) = result {
            self.reply_error(Some(seq), &e);
        }
    }

    fn login(&mut self, login: Login) {
        let seq = Some(login.seq);
        if login.protocol != PROTOCOL_VERSION {
            return self.reply_error(
                seq,
                &HuddleError::new(
                    ErrorCode::PROTOCOL_VERSION,
                    format!(
                        "the server speaks protocol {PROTOCOL_VERSION}, not {}",
                        login.protocol
                    ),
                ),
            );
        }
        if login.resume.is_none() && self.state.is_draining() {
            info!(app = %login.app_id, room = %login.room_id, user = %login.user.user_id, "login refused: draining");
            return self.reply_error(seq, &HuddleError::from(ErrorCode::SERVER_SHUTTING_DOWN));
        }
        let now = unix_secs();
        let grant = match self.state.0.auth.authenticate(&login, &self.nonce, now) {
            Ok(g) => g,
            Err(e) => {
                info!(app = %login.app_id, room = %login.room_id, user = %login.user.user_id, code = e.code.0, "login refused");
                return self.reply_error(seq, &e);
            }
        };
        let mut out = Vec::new();
        let mut hub = self.state.0.hub.lock();
        match hub.registry.login(&login, grant, random_hex(16), &mut out) {
            Ok(att) => {
                if let Some(turn) = &self.state.0.config.turn {
                    // The registry decides membership; how to reach the media plane (TURN
                    // credentials, fresh on every login) is the shell's to add.
                    let servers = crate::turn::ice_servers(turn, login.app_id, &login.user.user_id, now);
                    for o in &mut out {
                        if let Output::Send {
                            to,
                            msg: ServerMsg::LoginOk(ok),
                        } = o
                            && *to == att.session
                        {
                            ok.ice_servers = servers.clone();
                        }
                    }
                }
                let handle = ConnHandle {
                    epoch: att.epoch,
                    tx: self.tx.clone(),
                    ctl: self.ctl.clone(),
                };
                if let Some(old) = hub.conns.insert(att.session, handle) {
                    // A resume from a new connection: the old one is half-open.
                    close(&old.ctl, Closing::Now(None));
                }
                hub.dispatch(out);
                let expire = hub.registry.token_expire(att.session);
                self.state.arm_token(&mut hub, att.session, expire);
                drop(hub);
                self.session = Some((att.session, att.epoch));
                info!(
                    app = %login.app_id, room = %login.room_id, user = %login.user.user_id,
                    session = %att.session, resumed = att.resumed, "login"
                );
            }
            Err(e) => {
                drop(hub);
                info!(app = %login.app_id, room = %login.room_id, user = %login.user.user_id, code = e.code.0, "login refused");
                self.reply_error(seq, &e);
            }
        }
    }

    fn renew(&mut self, id: SessionId, seq: u32, who: Option<crate::registry::SessionInfo>, token: &str) {
        let Some(who) = who else {
            return self.reply_error(Some(seq), &HuddleError::from(ErrorCode::NOT_LOGGED_IN));
        };
        let now = unix_secs();
        let grant = match self
            .state
            .0
            .auth
            .verify_token(who.app_id, &who.room_id, &who.user_id, token, now)
        {
            Ok(g) => g,
            Err(e) => return self.reply_error(Some(seq), &e),
        };
        let mut out = Vec::new();
        let mut hub = self.state.0.hub.lock();
        let r = hub.registry.renew(id, seq, grant, &mut out);
        hub.dispatch(out);
        if r.is_ok() {
            let expire = hub.registry.token_expire(id);
            self.state.arm_token(&mut hub, id, expire);
        }
        drop(hub);
        match r {
            Ok(()) => info!(session = %id, "token renewed"),
            Err(e) => self.reply_error(Some(seq), &e),
        }
    }

    /// The connection is over: let the writer finish, and detach the session (grace) unless it
    /// ended, moved to another connection, or the server is shutting down.
    fn finish(&mut self) {
        close(&self.ctl, Closing::AfterQueue);
        let Some((id, epoch)) = self.session.take() else {
            return;
        };
        let mut hub = self.state.0.hub.lock();
        if hub.conns.get(&id).is_some_and(|h| h.epoch == epoch) {
            hub.conns.remove(&id);
        }
        if self.state.is_shutting_down() {
            return;
        }
        if let Some(d) = hub.registry.detach(id, epoch, Instant::now()) {
            drop(hub);
            info!(session = %id, grace = ?self.config().grace, "connection lost: session detached");
            self.state.spawn_expiry(id, d);
        }
    }
}

impl ServerState {
    /// Ends the detached session when its grace period is over, unless it was resumed.
    fn spawn_expiry(&self, id: SessionId, d: Detached) {
        let state = self.clone();
        let mut shutdown = self.0.shutdown.subscribe();
        tokio::spawn(
            async move {
                tokio::select! {
                    () = tokio::time::sleep_until(tokio::time::Instant::from_std(d.deadline)) => {
                        let mut out = Vec::new();
                        let mut hub = state.0.hub.lock();
                        // The timer fired: the deadline is reached even if the clocks differ by a tick.
                        let now = Instant::now().max(d.deadline);
                        if hub.registry.expire(id, d.epoch, now, &mut out) {
                            info!(session = %id, "grace period over: session ended");
                            hub.media_command(Command::SessionGone { session: id });
                            hub.disarm_token(id);
                        }
                        hub.dispatch(out);
                    }
                    _ = shutdown.wait_for(|s| *s) => {}
                }
            }
            .in_current_span(),
        );
    }
}

impl ServerState {
    /// (Re-)arms the token timer of session `id` for a token expiring at `expire` (Unix
    /// seconds), replacing any earlier one; `None` (no token) only disarms. The timer sends
    /// `token_will_expire` [`TOKEN_WARNING`] before the expiry (at once if less is left) and ends
    /// the session at the expiry with `kicked` 1002056 unless a renewal re-armed it meanwhile.
    /// Both steps are checked again under the hub lock ([`Registry::warn_token`],
    /// [`Registry::expire_token`]), so a timer that lost a race with a renewal does nothing.
    fn arm_token(&self, hub: &mut Hub, id: SessionId, expire: Option<i64>) {
        hub.disarm_token(id);
        let Some(expire) = expire else { return };
        hub.token_timer_gen += 1;
        let arming = hub.token_timer_gen;
        let state = self.clone();
        let mut shutdown = self.0.shutdown.subscribe();
        let task = tokio::spawn(
            async move {
                let expire_ms = u64::try_from(expire).unwrap_or(0).saturating_mul(1000);
                let warn_ms = expire_ms.saturating_sub(u64::try_from(TOKEN_WARNING.as_millis()).unwrap_or(0));
                tokio::select! {
                    () = state.token_step(id, arming, warn_ms, expire_ms) => {}
                    _ = shutdown.wait_for(|s| *s) => {}
                }
            }
            .in_current_span(),
        );
        hub.token_timers.insert(id, (arming, task.abort_handle()));
    }

    /// The two steps of a token timer: the warning at `warn_ms`, the end at `expire_ms` (Unix
    /// milliseconds, by the wall clock that tokens use).
    async fn token_step(&self, id: SessionId, arming: u64, warn_ms: u64, expire_ms: u64) {
        sleep_until_unix_ms(warn_ms).await;
        {
            let mut out = Vec::new();
            let mut hub = self.0.hub.lock();
            let now = unix_secs();
            let expire = i64::try_from(expire_ms / 1000).unwrap_or(i64::MAX);
            if hub.registry.warn_token(id, expire, now, &mut out) {
                info!(session = %id, remain_secs = expire - now, "token expires soon: warned");
            }
            hub.dispatch(out);
        }
        sleep_until_unix_ms(expire_ms).await;
        let mut out = Vec::new();
        let mut hub = self.0.hub.lock();
        if hub.registry.expire_token(id, unix_secs(), &mut out) {
            info!(session = %id, "token expired without renewal: session ended (1002056)");
        }
        // The kick's `Close` disarms this timer; otherwise forget it if it is still ours.
        hub.dispatch(out);
        if hub.token_timers.get(&id).is_some_and(|(g, _)| *g == arming) {
            hub.token_timers.remove(&id);
        }
    }
}

fn unix_secs() -> i64 {
    i64::try_from(unix_ms() / 1000).unwrap_or(i64::MAX)
}

/// Sleeps until the wall clock reads `at` (Unix milliseconds): in steps, as the monotonic clock
/// that timers use and the wall clock may drift apart.
async fn sleep_until_unix_ms(at: u64) {
    loop {
        let now = unix_ms();
        if now >= at {
            return;
        }
        // At most ten minutes at a time, so that a wall clock that jumps is followed (and a
        // long-lived token's timer wakes rarely).
        tokio::time::sleep(Duration::from_millis((at - now).min(600_000))).await;
    }
}

/// Checks a `media_offer` against the registry and hands it to the media plane, which answers it
/// on its own (`media_answer` or `error`).
fn media_offer(
    hub: &Hub,
    id: SessionId,
    seq: u32,
    stream_id: &huddle_proto::StreamId,
    role: MediaRole,
    sdp: &str,
) -> Result<(), HuddleError> {
    let reg = &hub.registry;
    let app = reg
        .session(id)
        .ok_or_else(|| HuddleError::from(ErrorCode::NOT_LOGGED_IN))?
        .app_id;
    match role {
        MediaRole::Publish if !reg.publishes(id, stream_id) => {
            return Err(HuddleError::new(
                ErrorCode::STREAM_NOT_FOUND,
                format!("publish the stream {stream_id} before offering its media"),
            ));
        }
        MediaRole::Play => match reg.play_status(id, stream_id) {
            None => {
                return Err(HuddleError::new(
                    ErrorCode::STREAM_NOT_FOUND,
                    format!("play the stream {stream_id} before offering to receive it"),
                ));
            }
            Some(false) => {
                return Err(HuddleError::new(
                    ErrorCode::STREAM_NOT_FOUND,
                    format!("the stream {stream_id} is not published now (wait for play_update)"),
                ));
            }
            Some(true) => {}
        },
        MediaRole::Publish => {}
    }
    if hub.media.is_none() {
        return Err(HuddleError::new(
            ErrorCode::SERVER_BUSY,
            "the media plane is not running",
        ));
    }
    let offer = Offer {
        session: id,
        app,
        stream_id: stream_id.clone(),
        role,
        seq,
        sdp: sdp.to_string(),
    };
    if hub.media_command(Command::Offer(offer)) {
        Ok(())
    } else {
        Err(HuddleError::new(
            ErrorCode::SERVER_BUSY,
            "the media plane is busy: offer again later",
        ))
    }
}

/// Whether a read error is tungstenite's "message too long".
/// What a WebSocket read error says about the peer.
enum Violation {
    /// A message over the limit (answered 1009002, closed 1009).
    TooLarge,
    /// A broken protocol: closed with this code and reason (RFC 6455, 7.4.1).
    Protocol { code: u16, reason: &'static str },
}

/// The peer's fault behind a read error, if it is one (else the connection just broke).
fn violation(e: axum::Error) -> Option<Violation> {
    use tokio_tungstenite::tungstenite::Error as WsError;
    use tokio_tungstenite::tungstenite::error::CapacityError;
    match e.into_inner().downcast::<WsError>().map(|b| *b) {
        Ok(WsError::Capacity(CapacityError::MessageTooLong { .. })) => Some(Violation::TooLarge),
        // 1007: data inconsistent with the message type (a text frame that is not UTF-8).
        Ok(WsError::Utf8(_)) => Some(Violation::Protocol {
            code: 1007,
            reason: "invalid UTF-8 in a text message",
        }),
        // 1002: reserved bits or opcodes, an unmasked client frame, a bad control frame or
        // continuation.
        Ok(WsError::Protocol(_) | WsError::Capacity(_)) => Some(Violation::Protocol {
            code: 1002,
            reason: "WebSocket protocol error",
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(f: impl FnOnce(&mut ServerConfig)) -> ServerState {
        let mut config = ServerConfig::for_tests(vec![crate::config::test_app(1)]);
        f(&mut config);
        ServerState::new(config).unwrap()
    }

    fn ip(n: u32) -> IpAddr {
        IpAddr::from(n.to_be_bytes())
    }

    #[test]
    fn per_address_limits_count_open_connections_and_new_ones() {
        let s = state(|c| {
            c.max_connections_per_ip = 2;
            c.connection_rate_per_ip = 1;
            c.connection_burst_per_ip = 3;
        });
        let a = s.admit(ip(1)).unwrap();
        let _b = s.admit(ip(1)).unwrap();
        assert_eq!(s.admit(ip(1)).err().unwrap().code, ErrorCode::SERVER_BUSY);
        // Another address is not affected.
        let _c = s.admit(ip(2)).unwrap();
        drop(a);
        // The place is free, but the burst of 3 is spent (the refused attempt took a token too).
        assert_eq!(s.admit(ip(1)).err().unwrap().code, ErrorCode::RATE_LIMITED);
        // Off when 0.
        let s = state(|c| {
            c.max_connections_per_ip = 0;
            c.connection_rate_per_ip = 0;
        });
        let slots: Vec<_> = (0..5000).map(|_| s.admit(ip(1)).unwrap()).collect();
        assert_eq!(s.0.per_ip.lock().map[&ip(1)].open, 5000);
        drop(slots);
        assert_eq!(s.0.per_ip.lock().map[&ip(1)].open, 0);
    }

    #[test]
    fn ipv6_addresses_count_by_their_64_prefix() {
        let s = state(|c| {
            c.max_connections_per_ip = 2;
            c.connection_rate_per_ip = 0;
        });
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        let _a = s.admit(v6("2001:db8:1:2::1")).unwrap();
        let _b = s.admit(v6("2001:db8:1:2:ffff::9")).unwrap();
        assert_eq!(
            s.admit(v6("2001:db8:1:2:abcd::7")).err().unwrap().code,
            ErrorCode::SERVER_BUSY
        );
        let _c = s.admit(v6("2001:db8:1:3::1")).unwrap();
        // An IPv4-mapped address is its IPv4 address.
        let _d = s.admit(v6("::ffff:192.0.2.1")).unwrap();
        let _e = s.admit(v6("192.0.2.1")).unwrap();
        assert_eq!(
            s.admit(v6("192.0.2.1")).err().unwrap().code,
            ErrorCode::SERVER_BUSY
        );
    }

    #[test]
    fn the_per_address_table_forgets_idle_addresses() {
        let s = state(|c| c.connection_rate_per_ip = 1_000_000_000);
        let mut held = Vec::new();
        for n in 0..20_000 {
            let slot = s.admit(ip(n)).unwrap();
            // One address in a hundred keeps its connection open.
            if n % 100 == 0 {
                held.push(slot);
            }
        }
        let len = s.0.per_ip.lock().map.len();
        assert!(len <= 2 * PER_IP_PRUNE, "{len} addresses tracked");
        drop(held);
    }
}
