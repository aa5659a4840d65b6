//! One signaling connection: a WebSocket pump between the server and the engine task.
//!
//! The task connects, then forwards every server message to the engine and every queued
//! client message to the server, until either side ends. It decides nothing: what a message or
//! a close means is the session's business.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use huddle_proto::{MAX_MESSAGE_BYTES, ServerMsg};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tracing::debug;

/// Identifies a connection, so that the engine ignores what a replaced one still reports.
pub(crate) type ConnId = u64;

/// Messages queued for the server on one connection; more means the connection is stuck.
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

/// Runs one connection to `url` (`wss://` with `tls`). Ends when the server closes, the network
/// breaks, or the engine drops the sending side of `outgoing` (then it closes the WebSocket
/// politely).
pub(crate) async fn run(
    id: ConnId,
    url: String,
    tls: Option<Arc<rustls::ClientConfig>>,
    connect_timeout: Duration,
    mut outgoing: mpsc::Receiver<String>,
    events: mpsc::Sender<ConnEvent>,
) {
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES));
    let connector = tls.map(tokio_tungstenite::Connector::Rustls);
    let connecting =
        tokio_tungstenite::connect_async_tls_with_config(url.as_str(), Some(config), true, connector);
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
                Some(text) => {
                    if let Err(e) = sink.send(Message::Text(text.into())).await {
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
