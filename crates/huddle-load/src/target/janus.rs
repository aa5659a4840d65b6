//! Janus (1.x) videoroom over its WebSocket API (`janus-protocol`).
//!
//! Per user one Janus session on its own WebSocket, kept alive every 25 s. A publisher attaches one
//! videoroom handle, joins the room as `publisher` with its feed ID (index + 1), and `publish`es
//! with our JSEP offer; Janus answers in the `configured` event. A subscriber attaches one handle
//! per played feed (one peer connection per stream, as Huddle does), joins as `subscriber` to that
//! feed, receives Janus's offer in the `attached` event, and `start`s with our answer. Both send
//! `trickle {completed: true}`: our one host candidate is in the SDP. The run's room is created
//! with enough publisher slots and destroyed at the end.
//!
//! Janus gathers its ICE candidates with libnice, which leaves loopback out: with only `lo` it
//! offers no candidate a client can reach. The benchmark therefore runs Janus and the generator in
//! a network namespace of their own with one namespace-local address (10.77.0.1), and the clients
//! bind that address ([`Plan::bind`](crate::Plan::bind)); see `scripts/bench.sh`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::ws::{WsClient, WsProtocol};
use crate::{LoadError, PcSetup, Plan, StreamSpec, Target, UserSpec};

/// How long a Janus request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Janus drops sessions silent for 60 s (`session_timeout`); keep well inside.
const KEEPALIVE: Duration = Duration::from_secs(25);
const VIDEOROOM: &str = "janus.plugin.videoroom";

/// Janus videoroom as a load [`Target`].
#[derive(Debug)]
pub struct JanusTarget {
    url: String,
    room: AtomicU64,
}

impl JanusTarget {
    /// A Janus whose WebSocket transport listens at `url` (e.g. `ws://127.0.0.1:8188`).
    pub fn new(url: impl Into<String>) -> JanusTarget {
        JanusTarget {
            url: url.into(),
            room: AtomicU64::new(0),
        }
    }

    fn room(&self) -> u64 {
        self.room.load(Ordering::Relaxed)
    }
}

/// One user's Janus session.
pub struct JanusConn {
    ws: WsClient,
    session: u64,
    next_tx: u64,
}

fn feed_of(stream: &StreamSpec) -> u64 {
    u64::from(stream.publisher) + 1
}

impl JanusConn {
    async fn open(url: &str) -> Result<JanusConn, LoadError> {
        let session_id = Arc::new(AtomicU64::new(0));
        let sid = session_id.clone();
        let protocol = WsProtocol {
            subprotocol: Some("janus-protocol"),
            reply_key: |v| {
                if v.get("janus").and_then(Value::as_str) == Some("ack") {
                    return None;
                }
                v.get("transaction").and_then(Value::as_str).map(str::to_owned)
            },
            keepalive: Some((
                KEEPALIVE,
                Box::new(move || {
                    json!({"janus": "keepalive", "session_id": sid.load(Ordering::Relaxed), "transaction": "ka"})
                        .to_string()
                }),
            )),
        };
        let ws = WsClient::connect(url, protocol).await?;
        let mut conn = JanusConn {
            ws,
            session: 0,
            next_tx: 0,
        };
        let reply = conn.call(json!({"janus": "create"})).await?;
        conn.session = id_of(&reply)?;
        session_id.store(conn.session, Ordering::Relaxed);
        Ok(conn)
    }

    /// Sends a request (adding transaction and session) and returns Janus's reply: `success`,
    /// or for plugin messages the `event` after the `ack`. Janus errors become `Err`.
    async fn call(&mut self, mut msg: Value) -> Result<Value, LoadError> {
        self.next_tx += 1;
        let tx = format!("t{}", self.next_tx);
        msg["transaction"] = json!(tx);
        if self.session != 0 {
            msg["session_id"] = json!(self.session);
        }
        let reply = self.ws.request(tx, &msg, REQUEST_TIMEOUT).await?;
        if reply.get("janus").and_then(Value::as_str) == Some("error") {
            return Err(LoadError::Refused(format!("janus: {}", reply["error"])));
        }
        if let Some(data) = reply.pointer("/plugindata/data")
            && let Some(err) = data.get("error")
        {
            return Err(LoadError::Refused(format!(
                "videoroom {}: {err}",
                data.get("error_code").unwrap_or(&Value::Null)
            )));
        }
        Ok(reply)
    }

    async fn attach(&mut self) -> Result<u64, LoadError> {
        let reply = self.call(json!({"janus": "attach", "plugin": VIDEOROOM})).await?;
        id_of(&reply)
    }

    async fn message(&mut self, handle: u64, body: Value, jsep: Option<Value>) -> Result<Value, LoadError> {
        let mut msg = json!({"janus": "message", "handle_id": handle, "body": body});
        if let Some(j) = jsep {
            msg["jsep"] = j;
        }
        self.call(msg).await
    }

    async fn trickle_done(&mut self, handle: u64) -> Result<(), LoadError> {
        self.next_tx += 1;
        let msg = json!({
            "janus": "trickle", "session_id": self.session, "handle_id": handle,
            "transaction": format!("t{}", self.next_tx), "candidate": {"completed": true},
        });
        self.ws.send(&msg).await
    }
}

fn id_of(reply: &Value) -> Result<u64, LoadError> {
    reply
        .pointer("/data/id")
        .and_then(Value::as_u64)
        .ok_or_else(|| LoadError::Signaling(format!("no id in {reply}")))
}

fn videoroom_kind(reply: &Value) -> &str {
    reply
        .pointer("/plugindata/data/videoroom")
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn sdp_of(reply: &Value, kind: &str) -> Result<String, LoadError> {
    let jsep = reply
        .get("jsep")
        .ok_or_else(|| LoadError::Signaling(format!("no jsep {kind} in {}", videoroom_kind(reply))))?;
    if jsep.get("type").and_then(Value::as_str) != Some(kind) {
        return Err(LoadError::Signaling(format!(
            "expected a jsep {kind}, got {jsep}"
        )));
    }
    jsep.get("sdp")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| LoadError::Signaling("jsep without sdp".into()))
}

impl Target for JanusTarget {
    type Conn = JanusConn;

    fn name(&self) -> &'static str {
        "janus"
    }

    fn signaling_url(&self) -> &str {
        &self.url
    }

    async fn prepare(&self, plan: &Plan) -> Result<(), LoadError> {
        let mut conn = JanusConn::open(&self.url).await?;
        let handle = conn.attach().await?;
        // A JSON-safe random room number (Janus rooms are u64; JavaScript clients want < 2^53).
        let room = (rand::random::<u64>() >> 12).max(1);
        let body = json!({
            "request": "create", "room": room, "permanent": false, "is_private": true,
            "description": plan.run_id, "publishers": plan.publishers,
            "audiocodec": "opus", "videocodec": "vp8", "notify_joining": false,
        });
        let reply = conn.message(handle, body, None).await?;
        if videoroom_kind(&reply) != "created" {
            return Err(LoadError::Refused(format!("room create: {reply}")));
        }
        self.room.store(room, Ordering::Relaxed);
        self.disconnect(conn).await;
        Ok(())
    }

    async fn connect(&self, _user: &UserSpec) -> Result<JanusConn, LoadError> {
        JanusConn::open(&self.url).await
    }

    async fn publish(
        &self,
        conn: &mut JanusConn,
        stream: &StreamSpec,
        pc: &mut PcSetup,
    ) -> Result<(), LoadError> {
        let handle = conn.attach().await?;
        let body = json!({
            "request": "join", "ptype": "publisher", "room": self.room(),
            "id": feed_of(stream), "display": stream.stream_id,
        });
        let reply = conn.message(handle, body, None).await?;
        if videoroom_kind(&reply) != "joined" {
            return Err(LoadError::Refused(format!("publisher join: {reply}")));
        }
        let offer = pc.create_offer(true)?;
        let reply = conn
            .message(
                handle,
                json!({"request": "publish", "audio": true, "video": false}),
                Some(json!({"type": "offer", "sdp": offer})),
            )
            .await?;
        let answer = sdp_of(&reply, "answer")?;
        tracing::debug!(%offer, %answer, "janus publish");
        pc.accept_answer(&answer)?;
        conn.trickle_done(handle).await
    }

    async fn play(
        &self,
        conn: &mut JanusConn,
        stream: &StreamSpec,
        pc: &mut PcSetup,
    ) -> Result<(), LoadError> {
        let handle = conn.attach().await?;
        let body = json!({
            "request": "join", "ptype": "subscriber", "room": self.room(),
            "streams": [{"feed": feed_of(stream)}],
        });
        // Janus lists a publisher's feed only once its own side of the publisher's connection is
        // up ("webrtcup"), which can come a little after our side saw DTLS connect: a subscriber
        // that asks at once gets 428 "No such feed". Ask again every 10 ms for up to 2 s; the
        // wait counts in the subscriber's join and first-packet times.
        let mut tries = 0;
        let reply = loop {
            match conn.message(handle, body.clone(), None).await {
                Err(LoadError::Refused(why)) if why.starts_with("videoroom 428") && tries < 200 => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                r => break r?,
            }
        };
        if videoroom_kind(&reply) != "attached" {
            return Err(LoadError::Refused(format!("subscriber join: {reply}")));
        }
        let offer = sdp_of(&reply, "offer")?;
        let answer = pc.accept_offer(&offer)?;
        tracing::debug!(%offer, %answer, "janus play");
        conn.message(
            handle,
            json!({"request": "start"}),
            Some(json!({"type": "answer", "sdp": answer})),
        )
        .await?;
        conn.trickle_done(handle).await
    }

    async fn disconnect(&self, mut conn: JanusConn) {
        // Destroying the session detaches its handles and hangs up their peer connections.
        let _ = conn.call(json!({"janus": "destroy"})).await;
    }

    async fn cleanup(&self) {
        let room = self.room();
        if room == 0 {
            return;
        }
        if let Ok(mut conn) = JanusConn::open(&self.url).await {
            if let Ok(handle) = conn.attach().await {
                let _ = conn
                    .message(handle, json!({"request": "destroy", "room": room}), None)
                    .await;
            }
            self.disconnect(conn).await;
        }
    }
}
