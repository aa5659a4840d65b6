//! Huddle over its WebSocket signaling (`docs/protocol.md`).
//!
//! Per user one connection: `hello` (the challenge nonce), `login` answered with the AppSign
//! HMAC (`huddle_token::sign_challenge`), pings every `heartbeat_ms`. A publisher sends `publish`
//! then `media_offer {kind: publish}` with our send-only offer and applies the `media_answer`. A
//! subscriber sends `play` per stream, waits for `play_update {available: true}`, then
//! `media_offer {kind: play}` with a receive-only offer (the client always offers).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use huddle_proto::{
    AppId, Auth, ClientMsg, ErrorCode, Login, MediaRole, PROTOCOL_VERSION, RoomId, StreamId, User, UserId,
};
use huddle_token::AppSign;
use serde_json::Value;

use crate::ws::{WsClient, WsProtocol};
use crate::{LoadError, PcSetup, Plan, StreamSpec, Target, UserSpec};

/// How long a request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The heartbeat when `login_ok` names none usable.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);
/// How often a play offer refused as "not started" is made again.
const PLAY_OFFER_RETRIES: u32 = 2;
/// How long, at most, a refused play offer waits for the stream's next `play_update`.
const PLAY_OFFER_RETRY_WAIT: Duration = Duration::from_millis(200);
/// Pings use sequence numbers from here, apart from requests.
const PING_SEQ_BASE: u32 = 1 << 30;

/// A Huddle server, or the nodes of a Huddle cluster, as a load [`Target`].
///
/// With several signaling URLs (the nodes of a cluster, as a load balancer would spread clients)
/// users are assigned round-robin ([`Target::server_of`]): publisher `p` to server `p mod n`,
/// subscriber `s` to server `(s + 1) mod n`, churn client `c` to `c mod n`. Subscriber 0 thus
/// lands on another node than publisher 0, and as every subscriber plays every publisher, with
/// two or more servers a share of the plays (half with two nodes and an even publisher count)
/// crosses nodes, which is what a cluster's load is about.
pub struct HuddleTarget {
    urls: Vec<String>,
    app_id: u32,
    app_sign: AppSign,
    counts: Vec<Arc<ServerCounters>>,
}

/// Live counts of one server's users (the churn soak reports them per server).
#[derive(Debug, Default)]
struct ServerCounters {
    logins: AtomicU64,
    login_failures: AtomicU64,
    joins: AtomicU64,
    join_failures: AtomicU64,
}

/// What the users of one server did so far ([`HuddleTarget::server_counts`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServerCounts {
    /// The signaling URL.
    pub url: String,
    /// Logins answered `login_ok`.
    pub logins: u64,
    /// Logins that failed (connect, refused, timeout).
    pub login_failures: u64,
    /// Publishes and plays whose signaling completed (SDP answer applied).
    pub joins: u64,
    /// Publishes and plays whose signaling failed.
    pub join_failures: u64,
}

impl ServerCounters {
    fn count_join<T>(&self, r: &Result<T, LoadError>) {
        let n = if r.is_ok() {
            &self.joins
        } else {
            &self.join_failures
        };
        n.fetch_add(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for HuddleTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HuddleTarget")
            .field("urls", &self.urls)
            .field("app_id", &self.app_id)
            .finish_non_exhaustive()
    }
}

impl HuddleTarget {
    /// A Huddle server whose signaling is at `url` (`ws://HOST:PORT/ws`), logging in to app
    /// `app_id` with its AppSign.
    pub fn new(url: impl Into<String>, app_id: u32, app_sign: AppSign) -> HuddleTarget {
        HuddleTarget::cluster(vec![url.into()], app_id, app_sign).expect("one URL is a cluster of one")
    }

    /// The nodes of a cluster, their signaling at `urls` (at least one), the users spread over
    /// them round-robin (see [`HuddleTarget`]).
    pub fn cluster(urls: Vec<String>, app_id: u32, app_sign: AppSign) -> Result<HuddleTarget, LoadError> {
        if urls.is_empty() {
            return Err(LoadError::Plan("no signaling server given".into()));
        }
        Ok(HuddleTarget {
            counts: urls.iter().map(|_| Arc::default()).collect(),
            urls,
            app_id,
            app_sign,
        })
    }

    /// Logins, publishes and plays per server, so far.
    pub fn server_counts(&self) -> Vec<ServerCounts> {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        self.urls
            .iter()
            .zip(&self.counts)
            .map(|(url, c)| ServerCounts {
                url: url.clone(),
                logins: g(&c.logins),
                login_failures: g(&c.login_failures),
                joins: g(&c.joins),
                join_failures: g(&c.join_failures),
            })
            .collect()
    }

    async fn login(&self, server: usize, user: &UserSpec) -> Result<HuddleConn, LoadError> {
        let protocol = WsProtocol {
            subprotocol: None,
            reply_key: |v| match v.get("type").and_then(Value::as_str) {
                Some("pong") => None,
                _ => v.get("seq").and_then(Value::as_u64).map(|s| s.to_string()),
            },
            // Pings follow the login's heartbeat_ms (below).
            keepalive: None,
        };
        let mut ws = WsClient::connect(&self.urls[server], protocol).await?;
        let hello = ws
            .wait_event(REQUEST_TIMEOUT, |v| {
                v.get("type").and_then(Value::as_str) == Some("hello")
            })
            .await?;
        let nonce = hello
            .get("nonce")
            .and_then(Value::as_str)
            .ok_or_else(|| LoadError::Signaling("hello without nonce".into()))?
            .to_owned();
        let mut conn = HuddleConn {
            ws,
            next_seq: 0,
            pinger: None,
            counts: self.counts[server].clone(),
        };
        let sign =
            huddle_token::sign_challenge(&self.app_sign, self.app_id, &user.room_id, &user.user_id, &nonce);
        let login = Login {
            seq: 0,
            protocol: PROTOCOL_VERSION,
            app_id: AppId::new(self.app_id).map_err(bad_id)?,
            room_id: RoomId::new(&user.room_id).map_err(bad_id)?,
            user: User::new(UserId::new(&user.user_id).map_err(bad_id)?),
            auth: Auth::Sign(sign),
            user_status_notify: false,
            max_member_count: 0,
            resume: None,
            setup_active: true,
        };
        let ok = conn.call(|seq| ClientMsg::Login(Login { seq, ..login })).await?;
        let heartbeat = ok
            .get("heartbeat_ms")
            .and_then(Value::as_u64)
            .filter(|&ms| ms >= 10)
            .map_or(DEFAULT_HEARTBEAT, Duration::from_millis);
        let out = conn.ws.sender();
        conn.pinger = Some(tokio::spawn(async move {
            let mut seq = PING_SEQ_BASE;
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
            loop {
                tick.tick().await;
                seq = seq.wrapping_add(1);
                if out.send(ClientMsg::Ping { seq }.encode()).await.is_err() {
                    return;
                }
            }
        }));
        Ok(conn)
    }

    async fn publish_on(
        &self,
        conn: &mut HuddleConn,
        stream: &StreamSpec,
        pc: &mut PcSetup,
    ) -> Result<(), LoadError> {
        let stream_id = StreamId::new(&stream.stream_id).map_err(bad_id)?;
        conn.call(|seq| ClientMsg::Publish {
            seq,
            stream_id,
            extra_info: String::new(),
        })
        .await?;
        conn.offer(stream, MediaRole::Publish, pc).await
    }

    async fn play_on(
        &self,
        conn: &mut HuddleConn,
        stream: &StreamSpec,
        pc: &mut PcSetup,
    ) -> Result<(), LoadError> {
        let stream_id = StreamId::new(&stream.stream_id).map_err(bad_id)?;
        conn.call(|seq| ClientMsg::Play { seq, stream_id }).await?;
        conn.wait_play_update(&stream.stream_id, REQUEST_TIMEOUT, |available| available)
            .await?;
        conn.offer(stream, MediaRole::Play, pc).await
    }
}

/// One logged-in user.
pub struct HuddleConn {
    ws: WsClient,
    next_seq: u32,
    /// Sends `ping` every `heartbeat_ms` of the `login_ok`.
    pinger: Option<tokio::task::JoinHandle<()>>,
    /// Its server's counts.
    counts: Arc<ServerCounters>,
}

impl Drop for HuddleConn {
    fn drop(&mut self) {
        if let Some(p) = self.pinger.take() {
            p.abort();
        }
    }
}

fn bad_id(e: impl std::fmt::Display) -> LoadError {
    LoadError::Plan(format!("ID: {e}"))
}

impl HuddleConn {
    /// Sends a request and returns its reply (`ok`, `login_ok`, `media_answer`); `error` is `Err`.
    async fn call(&mut self, make: impl FnOnce(u32) -> ClientMsg) -> Result<Value, LoadError> {
        self.next_seq += 1;
        let seq = self.next_seq;
        let msg: Value = serde_json::from_str(&make(seq).encode()).expect("our JSON parses");
        let reply = self.ws.request(seq.to_string(), &msg, REQUEST_TIMEOUT).await?;
        if reply.get("type").and_then(Value::as_str) == Some("error") {
            return Err(LoadError::Refused(format!(
                "{} {}",
                reply["code"],
                reply["message"].as_str().unwrap_or("")
            )));
        }
        Ok(reply)
    }

    /// Waits for a `play_update` of `stream_id` whose availability `want` accepts; returns it.
    async fn wait_play_update(
        &mut self,
        stream_id: &str,
        timeout: Duration,
        want: impl Fn(bool) -> bool,
    ) -> Result<bool, LoadError> {
        let v = self
            .ws
            .wait_event(timeout, |v| {
                v.get("type").and_then(Value::as_str) == Some("play_update")
                    && v.get("stream_id").and_then(Value::as_str) == Some(stream_id)
                    && v.get("available").and_then(Value::as_bool).is_some_and(&want)
            })
            .await?;
        Ok(v["available"].as_bool() == Some(true))
    }

    /// Plays `stream` and, when it is available (the first `play_update`), negotiates `pc` for
    /// it; `Ok(false)` when it is not (its publisher left meanwhile: the play is stopped again).
    pub(crate) async fn play_if_available(
        &mut self,
        stream: &StreamSpec,
        pc: &mut PcSetup,
    ) -> Result<bool, LoadError> {
        let r = self.try_play_if_available(stream, pc).await;
        if !matches!(r, Ok(false)) {
            self.counts.count_join(&r);
        }
        r
    }

    async fn try_play_if_available(
        &mut self,
        stream: &StreamSpec,
        pc: &mut PcSetup,
    ) -> Result<bool, LoadError> {
        let stream_id = StreamId::new(&stream.stream_id).map_err(bad_id)?;
        self.call(|seq| ClientMsg::Play { seq, stream_id }).await?;
        if !self
            .wait_play_update(&stream.stream_id, REQUEST_TIMEOUT, |_| true)
            .await?
        {
            self.stop_play(stream).await?;
            return Ok(false);
        }
        self.offer(stream, MediaRole::Play, pc).await?;
        Ok(true)
    }

    /// `unpublish`.
    pub(crate) async fn unpublish(&mut self, stream: &StreamSpec) -> Result<(), LoadError> {
        let stream_id = StreamId::new(&stream.stream_id).map_err(bad_id)?;
        self.call(|seq| ClientMsg::Unpublish { seq, stream_id })
            .await
            .map(drop)
    }

    /// `stop_play`.
    pub(crate) async fn stop_play(&mut self, stream: &StreamSpec) -> Result<(), LoadError> {
        let stream_id = StreamId::new(&stream.stream_id).map_err(bad_id)?;
        self.call(|seq| ClientMsg::StopPlay { seq, stream_id })
            .await
            .map(drop)
    }

    /// `logout`, answered `ok`.
    pub(crate) async fn logout(&mut self) -> Result<(), LoadError> {
        self.call(|seq| ClientMsg::Logout { seq }).await.map(drop)
    }

    async fn offer(
        &mut self,
        stream: &StreamSpec,
        kind: MediaRole,
        pc: &mut PcSetup,
    ) -> Result<(), LoadError> {
        let stream_id = StreamId::new(&stream.stream_id).map_err(bad_id)?;
        let sdp = pc.create_offer(kind == MediaRole::Publish)?;
        let mut refused = 0;
        let reply = loop {
            let offer = |seq| ClientMsg::MediaOffer {
                seq,
                stream_id: stream_id.clone(),
                kind,
                sdp: sdp.clone(),
                red_depth: 0,
            };
            match self.call(offer).await {
                // A play of a stream published on another node may be offered before that node's
                // media reached this one (1004002, "not started"): as the SDK does, wait for the
                // stream's next `play_update` (or a moment) and offer again.
                Err(LoadError::Refused(why))
                    if kind == MediaRole::Play
                        && why.starts_with(&ErrorCode::STREAM_NOT_FOUND.0.to_string())
                        && refused < PLAY_OFFER_RETRIES =>
                {
                    refused += 1;
                    let _ = self
                        .wait_play_update(&stream.stream_id, PLAY_OFFER_RETRY_WAIT, |a| a)
                        .await;
                }
                r => break r?,
            }
        };
        let answer = reply
            .get("sdp")
            .and_then(Value::as_str)
            .ok_or_else(|| LoadError::Signaling(format!("no SDP in {reply}")))?;
        pc.accept_answer(answer)
    }
}

impl Target for HuddleTarget {
    type Conn = HuddleConn;

    fn name(&self) -> &'static str {
        "huddle"
    }

    fn signaling_url(&self) -> &str {
        &self.urls[0]
    }

    async fn prepare(&self, _plan: &Plan) -> Result<(), LoadError> {
        // Rooms are made by their first login.
        Ok(())
    }

    fn servers(&self) -> Vec<String> {
        self.urls.clone()
    }

    fn server_of(&self, user: &UserSpec) -> usize {
        let n = self.urls.len();
        let i = user.index as usize % n;
        if user.publisher { i } else { (i + 1) % n }
    }

    async fn connect(&self, user: &UserSpec) -> Result<HuddleConn, LoadError> {
        let server = self.server_of(user);
        let r = self.login(server, user).await;
        let c = &self.counts[server];
        let n = if r.is_ok() { &c.logins } else { &c.login_failures };
        n.fetch_add(1, Ordering::Relaxed);
        r
    }

    async fn publish(
        &self,
        conn: &mut HuddleConn,
        stream: &StreamSpec,
        pc: &mut PcSetup,
    ) -> Result<(), LoadError> {
        let r = self.publish_on(conn, stream, pc).await;
        conn.counts.count_join(&r);
        r
    }

    async fn play(
        &self,
        conn: &mut HuddleConn,
        stream: &StreamSpec,
        pc: &mut PcSetup,
    ) -> Result<(), LoadError> {
        let r = self.play_on(conn, stream, pc).await;
        conn.counts.count_join(&r);
        r
    }

    async fn disconnect(&self, mut conn: HuddleConn) {
        let _ = conn.call(|seq| ClientMsg::Logout { seq }).await;
    }

    async fn cleanup(&self) {}
}
