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
use tokio_tungstenite::tungstenite::Error as WsError;
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

/// Opens the TCP connection of a signaling WebSocket to `url`'s host and port (the scheme's
/// default when absent), as tokio-tungstenite's `connect_async` does, with the socket options
/// of a small, latency-bound stream: no Nagle, and Linux's thin-stream loss recovery on what
/// the SDK sends (`huddle_udp::set_thin_stream`: linear RTOs, a 50 ms RTO floor; the
/// server sets the same on its side, docs/quality.md's setup). Written here because
/// tokio-tungstenite sets no option but `TCP_NODELAY` on a socket it opens.
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
    let stream = tokio::net::TcpStream::connect((host, port)).await?;
    stream.set_nodelay(true)?;
    if let Err(e) = huddle_udp::set_thin_stream(&stream) {
        debug!(error = %e, "thin-stream TCP options not all set");
    }
    Ok(stream)
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

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The SDK's signaling socket (IPv4, and an IPv6 literal with its brackets) has no Nagle
    /// and the thin-stream options, read back from the kernel on a real loopback connection.
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
            assert!(thin.linear_timeouts, "{thin:?}");
            if let Some(floor) = thin.rto_min {
                // In jiffies: rounded up by less than one (absent on kernels before 6.15).
                let asked = huddle_udp::THIN_STREAM_RTO_MIN;
                assert!(
                    floor >= asked && floor < asked + Duration::from_millis(10),
                    "{floor:?}"
                );
            }
        }
        // A URL without a host is refused before any connection.
        assert!(connect_tcp("ws:///ws").await.is_err());
    }
}
