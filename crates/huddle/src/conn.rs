//! One signaling connection: a WebSocket pump between the server and the engine task.
//!
//! The task connects, then forwards every server message to the engine and every queued
//! client message to the server, until either side ends. It decides nothing: what a message or
//! a close means is the session's business.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use huddle_proto::{MAX_MESSAGE_BYTES, ServerMsg};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tracing::debug;

/// Identifies a connection, so that the engine ignores what a replaced one still reports.
pub(crate) type ConnId = u64;

/// Batches of messages queued for the server on one connection; more means the connection is
/// stuck.
pub(crate) const SEND_QUEUE: usize = 256;

/// Where the connections go: the servers' signaling URLs (the first preferred) and, for
/// `wss://`, the TLS client configuration.
pub(crate) struct Endpoint {
    pub(crate) urls: Vec<String>,
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
}

/// What a connection reports to the engine task.
#[derive(Debug)]
pub(crate) enum ConnEvent {
    /// The WebSocket is open.
    Connected(ConnId),
    /// The WebSocket could not be opened.
    Failed(ConnId, String),
    /// The server's TLS certificate was refused (a failure that retrying does not mend).
    CertificateRejected(ConnId, String),
    /// A message from the server.
    Message(ConnId, ServerMsg),
    /// The connection closed or broke.
    Closed(ConnId, String),
}

/// How long the first TCP connection attempt of a signaling connection has before a second one
/// to the same address starts alongside it: Chromium's backup connect job waits 250 ms
/// (`ClientSocketPool::kMaxConnectRetryIntervalMs`, `ConnectRetryInterval()` in
/// `net/socket/transport_client_socket_pool.h`). Without it a lost SYN or SYN-ACK costs Linux's
/// initial RTO of 1 s (`TCP_TIMEOUT_INIT`, set by `tcp_connect_init` through
/// `tcp_timeout_init`; only a BPF `sock_ops` program changes it), a second loss 1 s more on
/// Linux ≥ 6.5 (`tcp_syn_linear_timeouts`, 4 by default) or 2 s more before. No socket option
/// shortens it: `TCP_RTO_MIN_US` floors RTOs computed from RTT samples, and thin-stream
/// linear timeouts apply only in `TCP_ESTABLISHED` (`tcp_retransmit_timer`).
/// docs/quality.md's setup section has the figures.
pub(crate) const BACKUP_CONNECT_AFTER: Duration = Duration::from_millis(250);

/// Runs `attempt` once and, if it has not completed when `backup_after` does, a second time
/// alongside it; the first attempt to succeed wins and the other is dropped (a TCP connect
/// future dropped closes its socket; a SYN-ACK that still arrives for it is answered with a
/// reset). An attempt that fails before the backup starts is the answer (a refusal from the
/// address is not mended by asking again); once both run, a failure waits for the other.
/// Sans-IO in the sense that matters for tests: the timer and the attempts are the caller's.
async fn staggered<T, E, A, F>(backup_after: impl Future<Output = ()>, mut attempt: A) -> Result<T, E>
where
    A: FnMut() -> F,
    F: Future<Output = Result<T, E>>,
{
    let mut first = std::pin::pin!(attempt());
    tokio::select! {
        biased;
        done = &mut first => return done,
        () = backup_after => {}
    }
    let mut second = std::pin::pin!(attempt());
    tokio::select! {
        biased;
        done = &mut first => match done {
            Ok(won) => Ok(won),
            Err(_) => second.await,
        },
        done = &mut second => match done {
            Ok(won) => Ok(won),
            Err(_) => first.await,
        },
    }
}

/// Opens the TCP connection of a signaling WebSocket to `url`'s host and port (the scheme's
/// default when absent), as tokio-tungstenite's `connect_async` does (each resolved address in
/// turn), with a backup attempt after [`BACKUP_CONNECT_AFTER`] as browsers make. Written here
/// because tokio-tungstenite sets no option but `TCP_NODELAY` on a socket it opens.
async fn connect_tcp(url: &str) -> Result<tokio::net::TcpStream, WsError> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    use tokio_tungstenite::tungstenite::error::UrlError;
    let request = url.into_client_request()?;
    let uri = request.uri();
    let host = uri.host().ok_or(WsError::Url(UrlError::NoHostName))?;
    // An IPv6 literal's brackets are not part of the address.
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port = uri
        .port_u16()
        .or(match uri.scheme_str() {
            Some("wss") => Some(443),
            Some("ws") => Some(80),
            _ => None,
        })
        .ok_or(WsError::Url(UrlError::UnsupportedUrlScheme))?;
    // Resolved once, so that the backup attempt goes to the same addresses.
    let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
    let stream = staggered(tokio::time::sleep(BACKUP_CONNECT_AFTER), || connect_any(&addrs)).await?;
    Ok(stream)
}

/// One connection attempt: each of `addrs` in turn until one connects (tokio's
/// `TcpStream::connect` order), the first error when none does.
async fn connect_any(addrs: &[std::net::SocketAddr]) -> std::io::Result<tokio::net::TcpStream> {
    let mut first_error = None;
    for &addr in addrs {
        match connect_thin(addr).await {
            Ok(stream) => return Ok(stream),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the host resolved to no address",
        )
    }))
}

/// Connects to `addr` with the socket options of a small, latency-bound stream: no Nagle, and
/// Linux's thin-stream loss recovery on what the SDK sends (`huddle_udp::set_thin_stream`:
/// linear RTOs, a 50 ms RTO floor; the server sets the same on its side, docs/quality.md's
/// setup). Set before `connect()`, because the kernel bakes the RTO floor into the RTT
/// variance when it takes the first RTT sample, from the SYN-ACK (`tcp_rtt_estimator`:
/// `rttvar_us = max(mdev_us, tcp_rto_min_us(sk))`): set after, the TLS and WebSocket
/// handshakes that follow run on RTOs of about 200 ms (read back on loopback: `tcpi_rto`
/// 200 ms after, 52 ms before). Neither option shortens the SYN's own 1 s RTO.
async fn connect_thin(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_nodelay(true)?;
    if let Err(e) = huddle_udp::set_thin_stream(&socket) {
        debug!(error = %e, "thin-stream TCP options not all set");
    }
    socket.connect(addr).await
}

/// Runs one connection to `url` (`wss://` with `tls`). Ends when the server closes, the network
/// breaks, or the engine drops the sending side of `outgoing` (then it closes the WebSocket
/// politely).
///
/// `outgoing` carries batches (what one pass of the engine sends): a batch, and any batches
/// already queued behind it, go out in one write, so that a request and what follows it at once
/// (a publish and its media offer) share TCP segments: on a lossy path each segment is one more
/// chance to wait for a retransmission, and TCP holds everything behind a lost one.
pub(crate) async fn run(
    id: ConnId,
    url: String,
    tls: Option<Arc<rustls::ClientConfig>>,
    connect_timeout: Duration,
    mut outgoing: mpsc::Receiver<Vec<String>>,
    events: mpsc::Sender<ConnEvent>,
) {
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES));
    let connector = tls.map(tokio_tungstenite::Connector::Rustls);
    let connecting = async {
        let stream = connect_tcp(&url).await?;
        tokio_tungstenite::client_async_tls_with_config(url.as_str(), stream, Some(config), connector).await
    };
    let ws = match tokio::time::timeout(connect_timeout, connecting).await {
        Ok(Ok((ws, _response))) => ws,
        Ok(Err(e)) => {
            let event = match crate::tls::untrusted_certificate(&e) {
                Some(why) => ConnEvent::CertificateRejected(id, why),
                None => ConnEvent::Failed(id, e.to_string()),
            };
            let _ = events.send(event).await;
            return;
        }
        Err(_) => {
            let _ = events
                .send(ConnEvent::Failed(id, "connect timed out".into()))
                .await;
            return;
        }
    };
    if events.send(ConnEvent::Connected(id)).await.is_err() {
        return;
    }
    let (mut sink, mut stream) = ws.split();
    let why = loop {
        tokio::select! {
            out = outgoing.recv() => match out {
                Some(batch) => {
                    if let Err(e) = send_batch(&mut sink, batch, &mut outgoing).await {
                        break format!("send failed: {e}");
                    }
                }
                None => {
                    // The engine is done with this connection.
                    let _ = tokio::time::timeout(Duration::from_millis(500), sink.close()).await;
                    return;
                }
            },
            frame = stream.next() => match frame {
                Some(Ok(Message::Text(text))) => match ServerMsg::decode(text.as_str()) {
                    Ok(msg) => {
                        if events.send(ConnEvent::Message(id, msg)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => debug!(conn = id, error = %e, "ignoring a server message"),
                },
                Some(Ok(Message::Close(frame))) => {
                    break frame.map_or_else(|| "closed by the server".into(), |f| format!("closed by the server: {f}"));
                }
                Some(Ok(_)) => {} // ping, pong (answered by tungstenite), binary: nothing to do
                Some(Err(e)) => break format!("connection error: {e}"),
                None => break "connection closed".into(),
            },
        }
    };
    let _ = events.send(ConnEvent::Closed(id, why)).await;
}

/// Writes `batch` and the batches queued behind it as one flush (tungstenite buffers what it is
/// fed until then).
async fn send_batch<S>(
    sink: &mut S,
    batch: Vec<String>,
    queued: &mut mpsc::Receiver<Vec<String>>,
) -> Result<(), WsError>
where
    S: futures_util::Sink<Message, Error = WsError> + Unpin,
{
    for text in batch {
        sink.feed(Message::Text(text.into())).await?;
    }
    while let Ok(more) = queued.try_recv() {
        for text in more {
            sink.feed(Message::Text(text.into())).await?;
        }
    }
    sink.flush().await
}

#[cfg(test)]
mod staggering_tests {
    use std::cell::RefCell;

    use futures_util::FutureExt as _;
    use tokio::sync::oneshot;

    use super::*;

    /// The attempts the code under test started, each finished by the test through its sender.
    #[derive(Default)]
    struct Attempts(RefCell<Vec<oneshot::Sender<Result<usize, String>>>>);

    impl Attempts {
        fn start(&self) -> impl Future<Output = Result<usize, String>> + use<> {
            let (tx, rx) = oneshot::channel();
            self.0.borrow_mut().push(tx);
            async move { rx.await.unwrap_or_else(|_| Err("abandoned by the test".into())) }
        }
        fn started(&self) -> usize {
            self.0.borrow().len()
        }
        fn finish(&self, i: usize, result: Result<usize, String>) {
            let tx = std::mem::replace(&mut self.0.borrow_mut()[i], oneshot::channel().0);
            tx.send(result).unwrap();
        }
        /// The code under test dropped attempt `i` (or it finished).
        fn dropped(&self, i: usize) -> bool {
            self.0.borrow()[i].is_closed()
        }
    }

    /// A timer the test fires by hand.
    fn timer() -> (oneshot::Sender<()>, impl Future<Output = ()>) {
        let (tx, rx) = oneshot::channel::<()>();
        (tx, async move {
            let _ = rx.await;
        })
    }

    #[test]
    fn an_attempt_done_before_the_backup_delay_is_the_only_one() {
        for result in [Ok(0), Err("refused".to_string())] {
            let attempts = Attempts::default();
            let (_fire, backup_after) = timer();
            let mut connect = std::pin::pin!(staggered(backup_after, || attempts.start()));
            assert!(connect.as_mut().now_or_never().is_none());
            assert_eq!(attempts.started(), 1);
            attempts.finish(0, result.clone());
            assert_eq!(connect.as_mut().now_or_never(), Some(result));
            assert_eq!(attempts.started(), 1, "no backup after an answer");
        }
    }

    #[test]
    fn after_the_delay_a_backup_runs_alongside_and_the_first_to_connect_wins() {
        for winner in [0, 1] {
            let attempts = Attempts::default();
            let (fire, backup_after) = timer();
            let mut connect = std::pin::pin!(staggered(backup_after, || attempts.start()));
            assert!(connect.as_mut().now_or_never().is_none());
            assert_eq!(attempts.started(), 1);
            fire.send(()).unwrap();
            assert!(connect.as_mut().now_or_never().is_none());
            assert_eq!(attempts.started(), 2, "the backup starts when the delay ends");
            assert!(!attempts.dropped(0) && !attempts.dropped(1));
            attempts.finish(winner, Ok(winner));
            assert_eq!(connect.as_mut().now_or_never(), Some(Ok(winner)));
            // The loser's future is gone with the race: its socket is closed.
            assert!(attempts.dropped(1 - winner), "the other attempt is dropped");
            assert_eq!(attempts.started(), 2);
        }
    }

    #[test]
    fn once_both_run_a_failure_waits_for_the_other_attempt() {
        for failed in [0, 1] {
            let attempts = Attempts::default();
            let (fire, backup_after) = timer();
            let mut connect = std::pin::pin!(staggered(backup_after, || attempts.start()));
            assert!(connect.as_mut().now_or_never().is_none());
            fire.send(()).unwrap();
            assert!(connect.as_mut().now_or_never().is_none());
            attempts.finish(failed, Err("timed out".into()));
            assert!(
                connect.as_mut().now_or_never().is_none(),
                "the other may still connect"
            );
            // The other's answer is the result, success or failure.
            attempts.finish(1 - failed, Err("unreachable".into()));
            assert_eq!(connect.as_mut().now_or_never(), Some(Err("unreachable".into())));
        }
        let attempts = Attempts::default();
        let (fire, backup_after) = timer();
        let mut connect = std::pin::pin!(staggered(backup_after, || attempts.start()));
        assert!(connect.as_mut().now_or_never().is_none());
        fire.send(()).unwrap();
        assert!(connect.as_mut().now_or_never().is_none());
        attempts.finish(1, Err("timed out".into()));
        assert!(connect.as_mut().now_or_never().is_none());
        attempts.finish(0, Ok(0));
        assert_eq!(connect.as_mut().now_or_never(), Some(Ok(0)));
    }
}

#[cfg(test)]
mod batching_tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use futures_util::FutureExt as _;

    use super::*;

    /// A sink that records what it is fed and each flush.
    #[derive(Default)]
    struct Recorder(Vec<String>);

    impl futures_util::Sink<Message> for Recorder {
        type Error = WsError;
        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
            Poll::Ready(Ok(()))
        }
        fn start_send(mut self: Pin<&mut Self>, item: Message) -> Result<(), WsError> {
            self.0.push(item.into_text().unwrap().to_string());
            Ok(())
        }
        fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
            self.0.push("FLUSH".into());
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
            Poll::Ready(Ok(()))
        }
    }

    /// A batch and the batches queued behind it are written with one flush (one write to the
    /// socket), in order; a batch queued later gets its own.
    #[test]
    fn queued_batches_go_out_in_one_flush() {
        let (tx, mut rx) = mpsc::channel(SEND_QUEUE);
        let mut sink = Recorder::default();
        tx.try_send(vec!["c".to_string()]).unwrap();
        let batch = vec!["a".to_string(), "b".to_string()];
        send_batch(&mut sink, batch, &mut rx)
            .now_or_never()
            .unwrap()
            .unwrap();
        assert_eq!(sink.0, ["a", "b", "c", "FLUSH"]);
        tx.try_send(vec!["d".to_string()]).unwrap();
        let next = rx.try_recv().unwrap();
        send_batch(&mut sink, next, &mut rx)
            .now_or_never()
            .unwrap()
            .unwrap();
        assert_eq!(sink.0[4..], ["d", "FLUSH"]);
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The SDK's signaling socket (IPv4, and an IPv6 literal with its brackets) has no Nagle
    /// and the thin-stream options, read back from the kernel on a real loopback connection
    /// (they are set before `connect()`, and the kernel keeps them through the handshake).
    #[tokio::test]
    async fn the_signaling_socket_is_a_thin_stream() {
        for ip in ["127.0.0.1", "::1"] {
            let Ok(listener) = tokio::net::TcpListener::bind((ip, 0)).await else {
                continue; // no IPv6 on this host
            };
            let addr = listener.local_addr().unwrap();
            let stream = connect_tcp(&format!("ws://{addr}/ws")).await.unwrap();
            assert_eq!(stream.peer_addr().unwrap(), addr);
            assert!(stream.nodelay().unwrap());
            let thin = huddle_udp::thin_stream(&stream).unwrap();
            assert!(thin.is_as_set(), "{thin:?}");
        }
        // A name goes to each of its addresses in turn: `localhost` may resolve to ::1 first,
        // where nothing listens on this port.
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let stream = connect_tcp(&format!("ws://localhost:{port}/ws")).await.unwrap();
        assert_eq!(stream.peer_addr().unwrap(), listener.local_addr().unwrap());
        assert!(huddle_udp::thin_stream(&stream).unwrap().is_as_set());
        // A refusal is the answer, with no backup attempt to wait for.
        drop((stream, listener));
        let refused = connect_tcp(&format!("ws://127.0.0.1:{port}/ws"))
            .await
            .unwrap_err();
        assert!(
            matches!(&refused, WsError::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused),
            "{refused}"
        );
        // A URL without a host is refused before any connection.
        assert!(connect_tcp("ws:///ws").await.is_err());
    }
}
