//! The WebSocket loops of one connection: the reader (requests, rate limit, timeouts) and the
//! writer (a bounded queue, then the close frame).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::Extension;
use axum::extract::State;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use huddle_proto::{ErrorCode, HuddleError, MAX_MESSAGE_BYTES, PROTOCOL_VERSION, ServerMsg};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, watch};
use tracing::{Instrument, debug, info, warn};

use super::admission::IpSlot;
use super::hub::{Closing, close, error_text, random_hex, slow_consumer, text, unix_ms};
use super::{CLOSE_TIMEOUT, OWN_REPLY_ROOM, ServerState, WS_MAX_MESSAGE, WS_READ_BUFFER};
use crate::config::ServerConfig;
use crate::registry::SessionId;

/// Counts down while a connection task runs; wakes [`ServerState::wait_idle`] at zero.
pub(super) struct ConnGuard(ServerState);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if self.0.0.connections.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.0.idle.notify_waiters();
        }
    }
}

impl ServerState {
    /// Serves one upgraded WebSocket until it closes. `admission` is the per-address verdict
    /// (`Ok(None)`: the peer address is unknown); a refused connection gets its error and closes.
    pub(super) async fn serve_socket(
        self,
        socket: WebSocket,
        admission: Result<Option<IpSlot>, HuddleError>,
    ) {
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
            opened: std::time::Instant::now(),
            bucket: TokenBucket::new(config.rate_limit_per_sec, config.rate_limit_burst),
            dropped_in_a_row: 0,
            refused_publish: None,
            setup_active: false,
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

pub(super) async fn ws_handler(
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

/// Writes the queue to the socket until the connection closes, then the close frame. What is
/// queued together goes out in one write (fed, then flushed once): messages sent at once (a
/// stream update and the play update that follows it) share TCP segments, so that on a lossy
/// path one loss, not each message's, can hold them.
pub(super) async fn write_loop(
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
        let write = async {
            sink.feed(msg).await?;
            while let Ok(m) = rx.try_recv() {
                sink.feed(m).await?;
            }
            sink.flush().await
        };
        tokio::select! {
            biased;
            r = write => if r.is_err() { return },
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
pub(super) struct TokenBucket {
    pub(super) rate: f64,
    pub(super) burst: f64,
    pub(super) tokens: f64,
    pub(super) at: tokio::time::Instant,
}

impl TokenBucket {
    pub(super) fn new(rate: u32, burst: u32) -> TokenBucket {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate: f64::from(rate),
            burst,
            tokens: burst,
            at: tokio::time::Instant::now(),
        }
    }

    pub(super) fn take(&mut self) -> bool {
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
pub(super) struct Conn {
    pub(super) state: ServerState,
    pub(super) tx: mpsc::Sender<Message>,
    pub(super) ctl: Arc<watch::Sender<Closing>>,
    /// The login challenge of this connection.
    pub(super) nonce: String,
    /// The attached session and the epoch of this attachment.
    pub(super) session: Option<(SessionId, u64)>,
    /// When the WebSocket was upgraded (for the login duration in `/metrics`).
    pub(super) opened: std::time::Instant,
    pub(super) bucket: TokenBucket,
    /// Messages dropped by the rate limit since the last one accepted.
    pub(super) dropped_in_a_row: u32,
    /// The last `publish` this connection had refused, and why: a `media_offer` sent with it
    /// (before its answer) is refused with the same error. One at most (the newest refusal;
    /// a publish of that stream accepted later clears it, another stream's does not).
    pub(super) refused_publish: Option<(huddle_proto::StreamId, HuddleError)>,
    /// The login said the client starts ICE when answered `a=setup:active` (`Login`).
    pub(super) setup_active: bool,
}

impl Conn {
    pub(super) fn config(&self) -> &ServerConfig {
        &self.state.0.config
    }

    /// Queues a message for this connection (not through the registry).
    pub(super) fn send(&self, msg: &ServerMsg) {
        match self.tx.try_send(Message::Text(text(msg))) {
            Ok(()) | Err(TrySendError::Closed(_)) => {}
            Err(TrySendError::Full(_)) => close(&self.ctl, Closing::Now(Some(slow_consumer()))),
        }
    }

    pub(super) fn reply_error(&self, seq: Option<u32>, err: &HuddleError) {
        debug!(?seq, code = err.code.0, message = %err.message, "error reply");
        self.send(&ServerMsg::error(seq, err));
    }

    pub(super) async fn read_loop(&mut self, stream: &mut SplitStream<WebSocket>) {
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
                Some(Ok(Message::Text(t))) => self.on_text(t.as_str()).await,
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

    pub(super) fn too_large(&self) {
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
    pub(super) fn rate_ok(&mut self, seq: Option<u32>) -> bool {
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
}

impl Conn {
    /// The connection is over: let the writer finish, and detach the session (grace) unless it
    /// ended, moved to another connection, or the server is shutting down.
    pub(super) fn finish(&mut self) {
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
        if hub.registry.detach(id, epoch, Instant::now()).is_some() {
            drop(hub);
            info!(session = %id, grace = ?self.config().grace, "connection lost: session detached");
            // Its grace timer is armed in the registry.
            self.state.wake_timers();
        }
    }
}

/// Whether a read error is tungstenite's "message too long".
/// What a WebSocket read error says about the peer.
pub(super) enum Violation {
    /// A message over the limit (answered 1009002, closed 1009).
    TooLarge,
    /// A broken protocol: closed with this code and reason (RFC 6455, 7.4.1).
    Protocol { code: u16, reason: &'static str },
}

/// The peer's fault behind a read error, if it is one (else the connection just broke).
pub(super) fn violation(e: axum::Error) -> Option<Violation> {
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
