//! A small JSON-over-WebSocket client for signaling: requests matched to replies by a key that
//! each target defines (Janus: `transaction`; Huddle: `seq`), periodic keepalives, and events (the
//! messages no request waits for) kept in a bounded queue.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::LoadError;

/// Events kept for a connection that nobody reads (older ones are dropped).
const EVENT_QUEUE: usize = 256;
/// Outbound messages queued for the socket.
const OUT_QUEUE: usize = 64;

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Value>>>>;

/// How a target's messages are matched and kept alive.
pub(crate) struct WsProtocol {
    /// The `Sec-WebSocket-Protocol` to ask for (Janus needs `janus-protocol`).
    pub subprotocol: Option<&'static str>,
    /// The key a reply carries to match its request; `None` for events and acks.
    pub reply_key: fn(&Value) -> Option<String>,
    /// A keepalive message to send at this period (made fresh each time).
    pub keepalive: Option<(Duration, Box<dyn Fn() -> String + Send>)>,
}

/// One signaling connection; dropping it closes the socket.
pub(crate) struct WsClient {
    out: mpsc::Sender<String>,
    pending: Pending,
    events: mpsc::Receiver<Value>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WsClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WsClient {
    /// Connects to `url`.
    pub async fn connect(url: &str, protocol: WsProtocol) -> Result<WsClient, LoadError> {
        let mut request = url
            .into_client_request()
            .map_err(|e| LoadError::Signaling(format!("bad URL {url}: {e}")))?;
        if let Some(p) = protocol.subprotocol {
            request
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(p));
        }
        let (ws, _) = tokio_tungstenite::connect_async(request)
            .await
            .map_err(|e| LoadError::Signaling(format!("connect {url}: {e}")))?;
        let (mut sink, mut stream) = ws.split();
        let (out_tx, mut out_rx) = mpsc::channel::<String>(OUT_QUEUE);
        let (ev_tx, ev_rx) = mpsc::channel::<Value>(EVENT_QUEUE);
        let pending: Pending = Arc::default();
        let pending2 = pending.clone();
        let reply_key = protocol.reply_key;
        let keepalive = protocol.keepalive;
        let task = tokio::spawn(async move {
            let period = keepalive
                .as_ref()
                .map(|k| k.0)
                .unwrap_or(Duration::from_secs(3600));
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            loop {
                tokio::select! {
                    out = out_rx.recv() => {
                        let Some(text) = out else { break };
                        if sink.send(Message::text(text)).await.is_err() {
                            break;
                        }
                    }
                    _ = tick.tick(), if keepalive.is_some() => {
                        let text = (keepalive.as_ref().expect("checked").1)();
                        if sink.send(Message::text(text)).await.is_err() {
                            break;
                        }
                    }
                    msg = stream.next() => {
                        let text = match msg {
                            Some(Ok(Message::Text(t))) => t,
                            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                            Some(Ok(_)) => continue,
                        };
                        let Ok(value) = serde_json::from_str::<Value>(&text) else { continue };
                        let waiter = reply_key(&value)
                            .and_then(|k| pending2.lock().expect("not poisoned").remove(&k));
                        match waiter {
                            Some(tx) => {
                                let _ = tx.send(value);
                            }
                            None => {
                                let _ = ev_tx.try_send(value);
                            }
                        }
                    }
                }
            }
            let _ = sink.close().await;
            // Waiters see their sender dropped: the connection is gone.
            pending2.lock().expect("not poisoned").clear();
        });
        Ok(WsClient {
            out: out_tx,
            pending,
            events: ev_rx,
            task,
        })
    }

    /// Sends `msg` and waits (at most `timeout`) for the reply keyed `key`.
    pub async fn request(&self, key: String, msg: &Value, timeout: Duration) -> Result<Value, LoadError> {
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("not poisoned").insert(key.clone(), tx);
        self.send(msg).await?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(_)) => Err(LoadError::Signaling("connection closed".into())),
            Err(_) => {
                self.pending.lock().expect("not poisoned").remove(&key);
                Err(LoadError::Signaling(format!("no reply to {key} in {timeout:?}")))
            }
        }
    }

    /// A handle to send on this connection from another task.
    pub fn sender(&self) -> mpsc::Sender<String> {
        self.out.clone()
    }

    /// Sends `msg` without waiting for a reply.
    pub async fn send(&self, msg: &Value) -> Result<(), LoadError> {
        self.out
            .send(msg.to_string())
            .await
            .map_err(|_| LoadError::Signaling("connection closed".into()))
    }

    /// Waits (at most `timeout`) for an event that `pred` accepts; others are dropped.
    pub async fn wait_event(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> Result<Value, LoadError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(v)) if pred(&v) => return Ok(v),
                Ok(Some(_)) => continue,
                Ok(None) => return Err(LoadError::Signaling("connection closed".into())),
                Err(_) => return Err(LoadError::Signaling(format!("no awaited event in {timeout:?}"))),
            }
        }
    }
}
