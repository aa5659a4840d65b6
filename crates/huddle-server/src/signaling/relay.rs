//! Pulls between the nodes of a cluster: a node plays a stream another node publishes by
//! pulling it once over a link and fanning it out to its own players (`docs/cluster.md`,
//! "Playing a stream of another node").
//!
//! - **The puller** (one task per node, started with the store when `cluster_secret` is set)
//!   keeps one link per stream pulled here: the registry asks for a pull when a session plays a
//!   stream of another node ([`MediaCommand::Pull`](crate::registry::MediaCommand::Pull)) and
//!   stops it when the stream leaves the cluster or its last player here stops
//!   ([`MediaCommand::Unpull`](crate::registry::MediaCommand::Unpull)). Stopping closes the
//!   stream's relay publisher and any player PC left, in the registry's order.
//! - **A link** (a task): it connects to the owner's `/cluster/ws` (its URL from the store),
//!   binds a UDP socket of its own on the IP that reaches the owner and gives it to the media
//!   plane, has it build the relay publisher's offer ([`Command::PullOffer`]), sends it signed
//!   with the cluster's secret, checks the owner's signature on the answer, tells the media
//!   plane which addresses the link's socket may hear from (the answer's candidates) and hands
//!   the answer back ([`Command::PullAnswer`]). The link's datagrams never pass through this
//!   task: the stream's shard sends on the socket and the media plane's relay thread reads it
//!   (`media/relay_io.rs`); the task keeps the control (the WebSocket, the relay PC's state, the
//!   stop). When the link breaks (the WebSocket, the PC, or the owner's answer) it closes the
//!   relay PC alone ([`Command::PullBroken`]) — the players keep their PCs — and tries again
//!   after 250 ms, doubling to 8 s, as the SDK does, until the pull is stopped.
//! - **Serving a pull** (`GET /cluster/ws`): the owner checks the signature (an HMAC-SHA256 of
//!   the node, the app, the stream, the time and the offer's hash, keyed by `cluster_secret`;
//!   at most [`MAX_CLOCK_SKEW`] old), that it publishes the stream now, and answers the offer as
//!   any play offer of a session that exists only for the link: it is no room member, is never
//!   listed, and needs no login. The answer is signed too (an HMAC of the request's signature
//!   and the answer's hash), so the puller knows the ICE credentials, the DTLS fingerprint and
//!   the candidates it connects to come from a node of the cluster: a node takes link media only
//!   from a node holding the secret. The play PC lives as long as the WebSocket: when either
//!   ends, the other is closed.
//!
//! Each link and each served pull has a session ID of its own that no client session holds;
//! the media plane's signals to it (the offer, the answer, `media_state`) come here instead of
//! to a connection ([`ServerState::relay_signal`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use huddle_proto::{AppId, ErrorCode, HuddleError, MediaRole, PeerState, ServerMsg, StreamId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use tracing::{Instrument, debug, info, info_span, warn};

use super::ServerState;
use crate::registry::SessionId;
use crate::sfu::{Command, Offer};

/// The path other nodes pull this node's streams from.
pub const CLUSTER_PATH: &str = "/cluster/ws";

/// A pull signed longer ago than this (or this far in the future) is refused.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(30);

/// How long each step of setting up a link may take (connecting, the offer, the answer).
const STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// The first delay before a broken link is tried again, and the longest.
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(8);

/// Pull requests waiting for the puller, at most; beyond, a request is dropped and logged (the
/// next `play` of the stream asks again).
pub(super) const PULL_QUEUE: usize = 1024;

/// Signals for one link or served pull, at most.
const SIGNAL_QUEUE: usize = 64;

/// What the puller is asked (by the hub, in the registry's order).
#[derive(Debug)]
pub(super) enum PullOp {
    Pull {
        app: AppId,
        stream_id: StreamId,
        owner: String,
    },
    Unpull {
        app: AppId,
        stream_id: StreamId,
        /// The stream moved: only the relay PC closes (the link does it as it stops), the
        /// players keep their connections for the stream's next publisher.
        players_stay: bool,
    },
}

/// A link's first message: the offer, signed.
#[derive(Debug, Serialize, Deserialize)]
struct PullRequest {
    node: String,
    app: AppId,
    stream_id: StreamId,
    /// Seconds since the Unix epoch when it was signed.
    ts: i64,
    sdp: String,
    /// Hex HMAC-SHA256 of [`signed_text`], keyed by `cluster_secret`.
    mac: String,
}

/// The owner's reply: the answer, or why not.
#[derive(Debug, Default, Serialize, Deserialize)]
struct PullReply {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sdp: Option<String>,
    /// With an answer: hex HMAC-SHA256 of [`answer_text`], keyed by `cluster_secret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    code: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

/// What a pull signs: every field but the signature, the offer by its hash.
fn signed_text(node: &str, app: AppId, stream_id: &StreamId, ts: i64, sdp: &str) -> String {
    let hash = hex::encode(Sha256::digest(sdp.as_bytes()));
    format!("huddle-pull\n{node}\n{app}\n{stream_id}\n{ts}\n{hash}")
}

/// What an answer signs: the request's signature (so an answer fits one request only) and the
/// answer by its hash.
fn answer_text(request_mac: &str, sdp: &str) -> String {
    let hash = hex::encode(Sha256::digest(sdp.as_bytes()));
    format!("huddle-pull-answer\n{request_mac}\n{hash}")
}

fn sign_answer(secret: &str, request_mac: &str, sdp: &str) -> String {
    hex::encode(
        mac(secret, &answer_text(request_mac, sdp))
            .finalize()
            .into_bytes(),
    )
}

/// Whether `given` signs the answer `sdp` to the request signed `request_mac`.
fn verify_answer(secret: &str, request_mac: &str, sdp: &str, given: &str) -> bool {
    let Ok(given) = hex::decode(given) else {
        return false;
    };
    mac(secret, &answer_text(request_mac, sdp))
        .verify_slice(&given)
        .is_ok()
}

/// The UDP addresses among an SDP's candidates (`a=candidate:F C udp PRIO IP PORT typ …`):
/// where the stream's node sends the link's media from.
fn udp_candidates(sdp: &str) -> Vec<SocketAddr> {
    sdp.lines()
        .filter_map(|l| l.trim().strip_prefix("a=candidate:"))
        .filter_map(|c| {
            let f: Vec<&str> = c.split_whitespace().collect();
            if f.len() < 6 || !f[2].eq_ignore_ascii_case("udp") {
                return None;
            }
            let ip: std::net::IpAddr = f[4].parse().ok()?;
            let port: u16 = f[5].parse().ok()?;
            Some(SocketAddr::new(ip, port))
        })
        .collect()
}

fn mac(secret: &str, text: &str) -> Hmac<Sha256> {
    let mut m =
        <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    m.update(text.as_bytes());
    m
}

fn sign(secret: &str, node: &str, app: AppId, stream_id: &StreamId, ts: i64, sdp: &str) -> String {
    hex::encode(
        mac(secret, &signed_text(node, app, stream_id, ts, sdp))
            .finalize()
            .into_bytes(),
    )
}

/// Whether `req` is signed with `secret` within [`MAX_CLOCK_SKEW`] of `now` (Unix seconds).
fn verify(secret: &str, req: &PullRequest, now: i64) -> bool {
    let skew = i64::try_from(MAX_CLOCK_SKEW.as_secs()).unwrap_or(i64::MAX);
    if (now - req.ts).abs() > skew {
        return false;
    }
    let Ok(given) = hex::decode(&req.mac) else {
        return false;
    };
    mac(
        secret,
        &signed_text(&req.node, req.app, &req.stream_id, req.ts, &req.sdp),
    )
    .verify_slice(&given)
    .is_ok()
}

fn unix_secs() -> i64 {
    super::hub::unix_secs()
}

/// A session ID for a link or a served pull: random, as the registry's are; one that a link, a
/// served pull or a session holds now is drawn again. (A session created later could draw the
/// same 64 bits, as two sessions could: the chance is 2^-64 per pair.)
fn relay_session(state: &ServerState) -> SessionId {
    loop {
        let id = SessionId::from_raw(rand::random::<u64>() | 1);
        let taken =
            state.0.relays.lock().contains_key(&id) || state.0.hub.lock().registry.session(id).is_some();
        if !taken {
            return id;
        }
    }
}

impl ServerState {
    /// Hands a media signal to the link or served pull `to`, if it is one; `false` when `to` is
    /// a client's session.
    pub(super) fn relay_signal(&self, to: SessionId, msg: &ServerMsg) -> bool {
        let relays = self.0.relays.lock();
        let Some(tx) = relays.get(&to) else {
            return false;
        };
        if tx.try_send(msg.clone()).is_err() {
            debug!(session = %to, "relay signal dropped (its task is gone or behind)");
        }
        true
    }

    fn open_relay_session(&self) -> (SessionId, mpsc::Receiver<ServerMsg>) {
        let id = relay_session(self);
        let (tx, rx) = mpsc::channel(SIGNAL_QUEUE);
        self.0.relays.lock().insert(id, tx);
        (id, rx)
    }

    fn close_relay_session(&self, id: SessionId) {
        self.0.relays.lock().remove(&id);
    }

    fn media(&self) -> Option<crate::media::MediaTx> {
        self.0.hub.lock().media.clone()
    }

    /// Starts the puller if this node pulls (`cluster_secret` set); a no-op after.
    pub(super) fn start_puller(&self) {
        if self.0.config.cluster_secret.is_none() {
            return;
        }
        if let Some(rx) = self.0.pull_rx.lock().take() {
            tokio::spawn(puller(self.clone(), rx, self.shutdown_receiver()).in_current_span());
        }
    }
}

/// One link's handle in the puller.
struct LinkHandle {
    stop: watch::Sender<bool>,
}

/// The puller: one link per stream pulled (see the [module documentation](self)).
async fn puller(state: ServerState, mut rx: mpsc::Receiver<PullOp>, mut shutdown: watch::Receiver<bool>) {
    let mut links: HashMap<(AppId, StreamId), LinkHandle> = HashMap::new();
    loop {
        let op = tokio::select! {
            op = rx.recv() => op,
            () = until_set(&mut shutdown) => None,
        };
        let Some(op) = op else { break };
        match op {
            PullOp::Pull {
                app,
                stream_id,
                owner,
            } => {
                let key = (app, stream_id.clone());
                if links.get(&key).is_some_and(|l| !l.stop.is_closed()) {
                    continue;
                }
                let (stop, stopped) = watch::channel(false);
                links.insert(key, LinkHandle { stop });
                let span = info_span!("pull", %app, stream = %stream_id);
                tokio::spawn(link(state.clone(), app, stream_id, owner, stopped).instrument(span));
            }
            PullOp::Unpull {
                app,
                stream_id,
                players_stay,
            } => {
                let key = (app, stream_id.clone());
                if let Some(l) = links.remove(&key) {
                    l.stop.send_replace(true);
                }
                if players_stay {
                    continue;
                }
                // In the registry's order: a pull asked again after this starts anew.
                if let Some(media) = state.media() {
                    media.send(Command::ClosePublish { app, stream_id });
                }
            }
        }
    }
    for l in links.into_values() {
        l.stop.send_replace(true);
    }
}

/// Why an attempt of a link ended.
enum LinkEnd {
    /// The pull was stopped.
    Stopped,
    /// It broke; `connected`: after its media had connected.
    Broken { connected: bool, why: String },
}

/// A link, tried again with a doubling delay until it is stopped.
async fn link(
    state: ServerState,
    app: AppId,
    stream_id: StreamId,
    owner: String,
    mut stop: watch::Receiver<bool>,
) {
    let node = owner.split('|').next().unwrap_or_default().to_string();
    let mut delay = RETRY_FIRST;
    loop {
        let (session, signals) = state.open_relay_session();
        let end = attempt(&state, app, &stream_id, &node, session, signals, &mut stop).await;
        state.close_relay_session(session);
        if let Some(media) = state.media() {
            media.send(Command::PullBroken {
                session,
                app,
                stream_id: stream_id.clone(),
            });
        }
        match end {
            LinkEnd::Stopped => break,
            LinkEnd::Broken { connected, why } => {
                if connected {
                    delay = RETRY_FIRST;
                }
                warn!(%node, retry_ms = delay.as_millis() as u64, "pull link broken: {why}");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = until_set(&mut stop) => break,
        }
        delay = (delay * 2).min(RETRY_MAX);
    }
    debug!("pull stopped");
}

/// Returns once the flag is set (or its sender is gone).
async fn until_set(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|s| *s).await;
}

fn broken(why: impl std::fmt::Display) -> LinkEnd {
    LinkEnd::Broken {
        connected: false,
        why: why.to_string(),
    }
}

/// The local address of a WebSocket client's TCP connection (the IP that reaches the peer).
fn ws_local_addr(
    ws: &tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
) -> Option<SocketAddr> {
    match ws.get_ref() {
        tokio_tungstenite::MaybeTlsStream::Plain(s) => s.local_addr().ok(),
        tokio_tungstenite::MaybeTlsStream::Rustls(s) => s.get_ref().0.local_addr().ok(),
        _ => None,
    }
}

/// One attempt of a link: set up, then carry datagrams until it breaks or is stopped.
#[allow(clippy::too_many_lines)]
async fn attempt(
    state: &ServerState,
    app: AppId,
    stream_id: &StreamId,
    node: &str,
    session: SessionId,
    mut signals: mpsc::Receiver<ServerMsg>,
    stop: &mut watch::Receiver<bool>,
) -> LinkEnd {
    let Some(secret) = state.0.config.cluster_secret.clone() else {
        return LinkEnd::Stopped;
    };
    let Some(store) = state.0.store.get().cloned() else {
        return broken("the cluster store is not connected");
    };
    let url = match store.node_url(node).await {
        Ok(Some(url)) => url,
        Ok(None) => return broken(format!("node {node} advertises no address (its lease ended?)")),
        Err(e) => return broken(e),
    };
    let connect = tokio::time::timeout(STEP_TIMEOUT, tokio_tungstenite::connect_async(url.as_str()));
    let mut ws = match connect.await {
        Ok(Ok((ws, _))) => ws,
        Ok(Err(e)) => return broken(format!("connecting to {url}: {e}")),
        Err(_) => return broken(format!("connecting to {url}: timed out")),
    };
    let Some(local_ip) = ws_local_addr(&ws).map(|a| a.ip()) else {
        return broken("the link's local address is unknown");
    };
    let socket = match std::net::UdpSocket::bind(SocketAddr::new(local_ip, 0)) {
        Ok(s) => s,
        Err(e) => return broken(format!("binding the link's socket: {e}")),
    };
    let Ok(local) = socket.local_addr() else {
        return broken("the link's socket has no address");
    };
    let Some(media) = state.media() else {
        return broken("the media plane is not running");
    };
    let cmd = Command::PullOffer {
        session,
        app,
        stream_id: stream_id.clone(),
        local,
    };
    if !media.pull(cmd, socket) {
        media.relay_closed(local);
        return broken("the media plane refused the pull");
    }
    let end = carry(
        state,
        &media,
        &mut ws,
        local,
        &mut signals,
        stop,
        &secret,
        app,
        stream_id,
        session,
    )
    .await;
    media.relay_closed(local);
    let _ = ws.close(None).await;
    end
}

/// Exchanges the offer and the answer, then watches the link until it breaks or is stopped
/// (its datagrams travel between the socket and the shard: see the module documentation).
#[allow(clippy::too_many_arguments)]
async fn carry(
    state: &ServerState,
    media: &crate::media::MediaTx,
    ws: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    local: SocketAddr,
    signals: &mut mpsc::Receiver<ServerMsg>,
    stop: &mut watch::Receiver<bool>,
    secret: &str,
    app: AppId,
    stream_id: &StreamId,
    session: SessionId,
) -> LinkEnd {
    use tokio_tungstenite::tungstenite::Message as WsMessage;
    let offer = match tokio::time::timeout(STEP_TIMEOUT, signals.recv()).await {
        Ok(Some(ServerMsg::MediaAnswer { sdp, .. })) => sdp,
        Ok(Some(ServerMsg::Error { message, .. })) => {
            return broken(format!("the relay offer failed: {message}"));
        }
        _ => return broken("the media plane made no relay offer"),
    };
    let node = store_node(state);
    let ts = unix_secs();
    let request_mac = sign(secret, &node, app, stream_id, ts, &offer);
    let req = PullRequest {
        mac: request_mac.clone(),
        node,
        app,
        stream_id: stream_id.clone(),
        ts,
        sdp: offer,
    };
    let Ok(text) = serde_json::to_string(&req) else {
        return broken("the pull could not be encoded");
    };
    if let Err(e) = ws.send(WsMessage::text(text)).await {
        return broken(format!("sending the pull: {e}"));
    }
    let reply = loop {
        match tokio::time::timeout(STEP_TIMEOUT, ws.next()).await {
            Ok(Some(Ok(WsMessage::Text(t)))) => {
                break serde_json::from_str::<PullReply>(t.as_str()).unwrap_or_default();
            }
            Ok(Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_)))) => {}
            Ok(Some(Ok(_))) => break PullReply::default(),
            Ok(Some(Err(e))) => return broken(format!("reading the answer: {e}")),
            Ok(None) => return broken("the stream's node closed the link before answering"),
            Err(_) => return broken("the stream's node did not answer in time"),
        }
    };
    let Some(answer) = reply.sdp else {
        let code = reply.code.unwrap_or(0);
        let message = reply.message.unwrap_or_else(|| "no answer".into());
        return broken(format!("the stream's node refused the pull ({code}): {message}"));
    };
    let signed = reply
        .mac
        .as_deref()
        .is_some_and(|m| verify_answer(secret, &request_mac, &answer, m));
    if !signed {
        return broken("the answer is not signed with the cluster's secret");
    }
    // Before the relay PC has the answer (and so before it sends its first check): the link's
    // socket hears from the stream's node from then on, and from nobody else.
    media.relay_peers(local, udp_candidates(&answer));
    media.send(Command::PullAnswer {
        session,
        app,
        stream_id: stream_id.clone(),
        sdp: answer,
    });
    let mut connected = false;
    loop {
        tokio::select! {
            s = signals.recv() => match s {
                Some(ServerMsg::MediaState { state: PeerState::Connected, .. }) => {
                    if !connected {
                        info!("pull link connected");
                    }
                    connected = true;
                }
                Some(ServerMsg::MediaState { message, .. }) => {
                    return LinkEnd::Broken { connected, why: format!("the relay connection ended: {message}") };
                }
                Some(_) => {}
                None => return LinkEnd::Broken { connected, why: "the link's signals ended".into() },
            },
            m = ws.next() => match m {
                Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => {
                    return LinkEnd::Broken { connected, why: "the stream's node closed the link".into() };
                }
                Some(Ok(_)) => {}
            },
            () = until_set(stop) => return LinkEnd::Stopped,
        }
    }
}

fn store_node(state: &ServerState) -> String {
    state
        .0
        .store
        .get()
        .map(|s| s.node_id().to_string())
        .unwrap_or_default()
}

/// `GET /cluster/ws`: serves a pull of another node (see the [module documentation](self)).
pub(super) async fn cluster_ws(State(state): State<ServerState>, ws: WebSocketUpgrade) -> Response {
    ws.max_message_size(super::WS_MAX_MESSAGE)
        .on_upgrade(move |socket| serve_pull(state, socket).in_current_span())
}

fn reply_error(e: &HuddleError) -> Message {
    let reply = PullReply {
        code: Some(e.code.0),
        message: Some(e.message.clone()),
        ..PullReply::default()
    };
    Message::text(serde_json::to_string(&reply).unwrap_or_default())
}

async fn serve_pull(state: ServerState, mut socket: WebSocket) {
    let first = match tokio::time::timeout(STEP_TIMEOUT, socket.recv()).await {
        Ok(Some(Ok(Message::Text(t)))) => t,
        _ => return,
    };
    let req: PullRequest = match serde_json::from_str(first.as_str()) {
        Ok(r) => r,
        Err(_) => {
            let e = HuddleError::new(ErrorCode::MALFORMED_MESSAGE, "the pull is not a pull request");
            let _ = socket.send(reply_error(&e)).await;
            return;
        }
    };
    let authentic = state
        .0
        .config
        .cluster_secret
        .as_deref()
        .is_some_and(|secret| verify(secret, &req, unix_secs()));
    if !authentic {
        warn!(node = %req.node, "pull refused: not signed with the cluster's secret, or expired");
        let _ = socket
            .send(reply_error(&HuddleError::from(ErrorCode::CLUSTER_AUTH_FAILED)))
            .await;
        return;
    }
    let here = state
        .0
        .hub
        .lock()
        .registry
        .publishes_here(req.app, &req.stream_id);
    if !here {
        let e = HuddleError::new(
            ErrorCode::STREAM_NOT_FOUND,
            format!("the stream {} is not published on this node", req.stream_id),
        );
        let _ = socket.send(reply_error(&e)).await;
        return;
    }
    let (session, mut signals) = state.open_relay_session();
    info!(node = %req.node, stream = %req.stream_id, %session, "serving a pull");
    let offer = Offer {
        session,
        app: req.app,
        stream_id: req.stream_id.clone(),
        role: MediaRole::Play,
        seq: 1,
        sdp: req.sdp,
        // Another node's pull: it may run a server from before str0m started ICE on an
        // `active` answer (a rolling upgrade), and a relay's setup is not a user's wait.
        setup_active: false,
        // The pulling node forwards the SDK's depth as it comes to its SDK players and makes
        // other depths from its own history.
        red_depth: crate::sfu::red::SDK_DEPTH,
    };
    let sent = state.media().is_some_and(|m| m.send(Command::Offer(offer)));
    if sent {
        serve_answered(&state, &mut socket, &mut signals, &req.mac).await;
    } else {
        let _ = socket
            .send(reply_error(&HuddleError::new(
                ErrorCode::SERVER_BUSY,
                "the media plane is busy",
            )))
            .await;
    }
    state.close_relay_session(session);
    if let Some(m) = state.media() {
        m.send(Command::ClosePlay {
            session,
            app: req.app,
            stream_id: req.stream_id,
        });
    }
    let _ = socket.close().await;
    debug!(%session, "pull served to its end");
}

/// Sends the answer (signed: see the module documentation), then holds the link until the
/// WebSocket or the play PC ends.
async fn serve_answered(
    state: &ServerState,
    socket: &mut WebSocket,
    signals: &mut mpsc::Receiver<ServerMsg>,
    request_mac: &str,
) {
    let mut shutdown = state.shutdown_receiver();
    let Some(secret) = state.0.config.cluster_secret.as_deref() else {
        return;
    };
    let reply = match tokio::time::timeout(STEP_TIMEOUT, signals.recv()).await {
        Ok(Some(ServerMsg::MediaAnswer { sdp, .. })) => PullReply {
            mac: Some(sign_answer(secret, request_mac, &sdp)),
            sdp: Some(sdp),
            ..PullReply::default()
        },
        Ok(Some(ServerMsg::Error { code, message, .. })) => PullReply {
            code: Some(code.0),
            message: Some(message),
            ..PullReply::default()
        },
        _ => return,
    };
    let answered = reply.sdp.is_some();
    let Ok(text) = serde_json::to_string(&reply) else {
        return;
    };
    if socket.send(Message::text(text)).await.is_err() || !answered {
        return;
    }
    loop {
        tokio::select! {
            m = socket.recv() => match m {
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
            s = signals.recv() => match s {
                Some(ServerMsg::MediaState { state: PeerState::Connected, .. }) => {}
                Some(ServerMsg::MediaState { .. }) | None => return,
                Some(_) => {}
            },
            () = until_set(&mut shutdown) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pull_is_authentic_only_with_the_secret_and_in_time() {
        let app = AppId::new(7).unwrap();
        let stream = StreamId::new("s1").unwrap();
        let secret = "0123456789abcdef0123";
        let now = 1_700_000_000;
        let mut req = PullRequest {
            node: "b".into(),
            app,
            stream_id: stream.clone(),
            ts: now,
            sdp: "v=0\r\n".into(),
            mac: sign(secret, "b", app, &stream, now, "v=0\r\n"),
        };
        assert!(verify(secret, &req, now));
        assert!(verify(secret, &req, now + 30));
        assert!(!verify(secret, &req, now + 31), "expired");
        assert!(!verify("another secret of the same length", &req, now));
        req.sdp = "v=0\r\ns=changed\r\n".into();
        assert!(!verify(secret, &req, now), "the offer is signed");
        req.sdp = "v=0\r\n".into();
        req.node = "c".into();
        assert!(!verify(secret, &req, now), "the node is signed");
        req.node = "b".into();
        req.mac = "zz".into();
        assert!(!verify(secret, &req, now), "not hex");
    }

    #[test]
    fn an_answer_is_authentic_only_with_the_secret_and_for_its_request() {
        let secret = "0123456789abcdef0123";
        let answer = "v=0\r\na=candidate:1 1 udp 2130706431 10.0.0.5 7882 typ host\r\n";
        let m = sign_answer(secret, "request-1", answer);
        assert!(verify_answer(secret, "request-1", answer, &m));
        assert!(
            !verify_answer(secret, "request-2", answer, &m),
            "another request's"
        );
        assert!(!verify_answer(
            "another secret of the same length",
            "request-1",
            answer,
            &m
        ));
        assert!(
            !verify_answer(secret, "request-1", "v=0\r\n", &m),
            "the answer is signed"
        );
        assert!(!verify_answer(secret, "request-1", answer, "zz"), "not hex");
    }

    #[test]
    fn the_link_hears_from_the_answers_udp_candidates_only() {
        let sdp = "v=0\r\n\
                   a=candidate:1 1 udp 2130706431 10.0.0.5 7882 typ host\r\n\
                   a=candidate:2 1 UDP 2130706175 fd00::5 7882 typ host\r\n\
                   a=candidate:3 1 tcp 1518280447 10.0.0.5 7881 typ host tcptype passive\r\n\
                   a=candidate:4 1 udp\r\n\
                   a=candidate:5 1 udp 1 not-an-ip 1 typ host\r\n";
        assert_eq!(
            udp_candidates(sdp),
            vec![
                "10.0.0.5:7882".parse::<SocketAddr>().unwrap(),
                "[fd00::5]:7882".parse().unwrap()
            ]
        );
    }
}
