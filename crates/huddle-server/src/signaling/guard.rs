//! The TCP guard in front of axum: per-address caps on raw TCP connections, the deadline for
//! the first request, TLS handshakes in their own tasks.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::ServerState;
use super::admission::limit_key;
use tracing::{debug, warn};

/// Raw TCP connections allowed per address beyond `max_connections_per_ip` (plain HTTP beside the
/// WebSockets).
pub(super) const TCP_SLACK_PER_IP: usize = 64;

/// A TCP connection's place in its address's count; released on drop. `ip` is `None` for a
/// trusted proxy's connection, which is not counted.
pub(super) struct TcpSlot {
    pub(super) state: ServerState,
    pub(super) ip: Option<IpAddr>,
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
    pub(super) inner: tokio::net::TcpListener,
    pub(super) state: ServerState,
    /// TLS handshakes under way, each its own task so that a slow one holds up nobody; each ends
    /// by the connection's deadline. Dropped (aborted) with the listener.
    pub(super) handshakes: tokio::task::JoinSet<Option<(GuardedStream, SocketAddr)>>,
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
                    // Signaling messages are small and latency-bound: no Nagle (the thin-stream
                    // options come from the listener, [`ServerState::guard_listener`]).
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
pub(super) async fn tls_handshake(
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
pub(super) enum Transport {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>),
}

/// A connection accepted by a [`GuardedListener`] (TCP, or TLS over TCP with `tls_cert`): fails
/// its reads with `TimedOut` if the head of its first HTTP request (up to the blank line) has not
/// arrived by the deadline, so that a client trickling its headers a byte at a time holds the
/// connection no longer than one that sends nothing; holds its place in its address's count.
pub struct GuardedStream {
    pub(super) inner: Transport,
    /// Until the request head is complete.
    pub(super) head_deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    /// The last four bytes read while the head is incomplete (big-endian), to find `\r\n\r\n`
    /// across reads.
    pub(super) head_tail: u32,
    pub(super) _slot: TcpSlot,
}

/// `\r\n\r\n`, the end of an HTTP request head.
pub(super) const HEAD_END: u32 = u32::from_be_bytes(*b"\r\n\r\n");

impl GuardedStream {
    pub(super) fn new(inner: Transport, deadline: tokio::time::Instant, slot: TcpSlot) -> GuardedStream {
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

impl ServerState {
    /// Wraps the signaling listener so that raw TCP connections obey the per-address limits too:
    /// at most `max_connections_per_ip` + 64 open TCP connections per address (the margin
    /// leaves room for plain HTTP beside the WebSockets, so that a client normally meets the
    /// WebSocket limit and its numbered error first; beyond it a new connection is closed at
    /// once; a `trusted_proxies` address is not capped, since all its clients share it), and a
    /// connection that has not sent the first byte of its HTTP request within `login_timeout`
    /// is closed. With `tls_cert` the listener speaks TLS: each handshake runs in its own task
    /// and must finish within the same `login_timeout`. Accepted connections have Nagle off
    /// and the loss recovery of a thin stream on what the server sends (linear RTOs, a 50 ms
    /// RTO floor: `huddle_udp::set_thin_stream`, docs/quality.md's setup). Those two are set
    /// on the listener, which every accepted connection inherits them from: the kernel takes a
    /// connection's first RTT sample from the handshake's last ACK, before `accept()` returns,
    /// and bakes the RTO floor of that moment into the RTT variance (`tcp_rtt_estimator`), so
    /// set after `accept()` the floor would leave the first replies (TLS, the HTTP upgrade,
    /// the login) on RTOs of about 200 ms (loopback `tcpi_rto`: 200 ms, 52 ms inherited).
    /// Serve it through `axum::serve::ListenerExt::tap_io` to keep the peer address as
    /// `ConnectInfo<SocketAddr>`.
    pub fn guard_listener(&self, listener: tokio::net::TcpListener) -> GuardedListener {
        if let Err(e) = huddle_udp::set_thin_stream(&listener) {
            debug!(error = %e, "thin-stream TCP options not all set on the signaling listener");
        }
        GuardedListener {
            inner: listener,
            state: self.clone(),
            handshakes: tokio::task::JoinSet::new(),
        }
    }
}

impl ServerState {
    /// Counts a new TCP connection from `ip`; `None` beyond the limit.
    pub(super) fn admit_tcp(&self, ip: IpAddr) -> Option<TcpSlot> {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServerConfig;
    use axum::serve::Listener as _;

    /// A signaling connection the guard accepts has no Nagle and the thin-stream options on
    /// the server's socket, inherited from the listener (read back from the kernel on a real
    /// loopback connection).
    #[tokio::test]
    async fn an_accepted_signaling_socket_is_a_thin_stream() {
        let state = ServerState::new(ServerConfig::for_tests(vec![crate::config::test_app(1)])).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut guarded = state.guard_listener(listener);
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (stream, _) = guarded.accept().await;
        let Transport::Plain(tcp) = &stream.inner else {
            panic!("a plain connection without TLS");
        };
        assert!(tcp.nodelay().unwrap());
        let thin = huddle_udp::thin_stream(tcp).unwrap();
        assert!(thin.is_as_set(), "{thin:?}");
    }
}
