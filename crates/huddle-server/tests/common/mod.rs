//! What the server's end-to-end tests share (`tests/media.rs`, `tests/hostile.rs`,
//! `tests/token_expiry.rs`): a test server, a signaling client over the WebSocket (login with the
//! AppSign challenge, requests matched to their replies, events kept while waiting), and a str0m
//! client peer connection on its own UDP socket, stepped by the test (RTP mode: the payloads sent
//! are checked as received, in order). [`ws`] is the raw signaling client of the tests that speak
//! the protocol message by message.
//!
//! Each test binary uses part of it: `dead_code` is allowed here and in the submodules.
#![allow(dead_code)]

pub mod certs;
pub mod redis;
pub mod ws;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use huddle_proto::{
    AppId, Auth, ClientMsg, ErrorCode, Login, LoginOk, MediaRole, PROTOCOL_VERSION, PeerState, RoomId,
    ServerMsg, StreamId, User, UserId,
};
use huddle_server::{BackgroundServer, ServerConfig, test_app};
use rand::Rng;
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpWrite;
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcConfig};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Panics if an error message the server sent names its internals: a memory address, a Rust
/// module path or type, a source file, a panic, a library's parser text, or spans lines.
pub fn assert_no_internals(message: &str, asked: &str) {
    let leaks = [
        "0x",
        "Pointer",
        "::",
        "panicked",
        ".rs",
        "src/",
        "str0m",
        "serde",
        "Parse error",
        "Unexpected",
        "struct ",
        "variant identifier",
        "u32",
        "u64",
        "\n",
    ];
    if let Some(leak) = leaks.iter().find(|l| message.contains(*l)) {
        panic!("the answer to {asked:?} names internals ({leak:?}): {message:?}");
    }
}

pub const APP: u32 = 21;
pub const WAIT: Duration = Duration::from_secs(5);
pub const ROOM: &str = "media-room";

pub fn config() -> ServerConfig {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut config = ServerConfig::for_tests(vec![test_app(APP)]);
    // These clients do not send heartbeats.
    config.heartbeat = Duration::from_secs(10);
    config.session_timeout = Duration::from_secs(60);
    config
}

pub fn server() -> BackgroundServer {
    BackgroundServer::start(config()).unwrap()
}

pub fn sid(s: &str) -> StreamId {
    StreamId::new(s).unwrap()
}

/// Serves `app` on a free port of 127.0.0.1 in the background (a webhook receiver, say);
/// returns its address.
pub async fn serve_http(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

// ----- signaling -----

/// A client's signaling WebSocket, plain or over TLS.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The first message on a WebSocket just opened: `Ok` for the server's `hello`, the code of the
/// error it refused the connection with.
pub async fn first_message(ws: &mut Ws) -> Result<(), ErrorCode> {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no first message")
        {
            Some(Ok(Message::Text(t))) => {
                return match ServerMsg::decode(t.as_str()).unwrap() {
                    ServerMsg::Hello { .. } => Ok(()),
                    ServerMsg::Error { code, .. } => Err(code),
                    other => panic!("unexpected first message {other:?}"),
                };
            }
            Some(Ok(_)) => continue,
            other => panic!("closed before the first message: {other:?}"),
        }
    }
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub seq: u32,
    /// Events read while waiting for something else.
    pub events: Vec<ServerMsg>,
}

impl Client {
    pub async fn login(server: &BackgroundServer, user: &str) -> Client {
        Client::login_url(&server.ws_url(), user).await
    }

    pub async fn login_url(url: &str, user: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Client::login_ws(ws, user).await
    }

    /// Logs in on a WebSocket already open (over TLS, say).
    pub async fn login_ws(ws: WebSocketStream<MaybeTlsStream<TcpStream>>, user: &str) -> Client {
        let (c, reply) = Client::try_login_ws(ws, ROOM, user, false).await;
        assert!(matches!(reply, ServerMsg::LoginOk(LoginOk { .. })), "{reply:?}");
        c
    }

    /// Logs in as a client from before `Login::setup_active` (which sends no such field).
    pub async fn login_older(server: &BackgroundServer, user: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(&server.ws_url()).await.unwrap();
        let (c, reply) = Client::try_login_declaring(ws, ROOM, user, false, false).await;
        assert!(matches!(reply, ServerMsg::LoginOk(LoginOk { .. })), "{reply:?}");
        c
    }

    /// Logs `user` in to `room` on a WebSocket already open, by AppSign: the client and the
    /// reply (`login_ok` or `error`).
    pub async fn try_login_ws(
        ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
        room: &str,
        user: &str,
        user_status_notify: bool,
    ) -> (Client, ServerMsg) {
        Client::try_login_declaring(ws, room, user, user_status_notify, true).await
    }

    /// As [`Client::try_login_ws`], declaring `setup_active` or not.
    pub async fn try_login_declaring(
        ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
        room: &str,
        user: &str,
        user_status_notify: bool,
        setup_active: bool,
    ) -> (Client, ServerMsg) {
        let mut c = Client {
            ws,
            seq: 0,
            events: Vec::new(),
        };
        let ServerMsg::Hello { nonce, .. } = c.recv().await else {
            panic!("expected hello");
        };
        let sign = huddle_token::sign_challenge(&test_app(APP).app_sign, APP, room, user, &nonce);
        let seq = c.next_seq();
        let login = ClientMsg::Login(Login {
            seq,
            protocol: PROTOCOL_VERSION,
            app_id: AppId::new(APP).unwrap(),
            room_id: RoomId::new(room).unwrap(),
            user: User::new(UserId::new(user).unwrap()),
            auth: Auth::Sign(sign),
            user_status_notify,
            max_member_count: 0,
            resume: None,
            setup_active,
        });
        let reply = c.request(login).await;
        (c, reply)
    }

    pub fn next_seq(&mut self) -> u32 {
        self.seq += 1;
        self.seq
    }

    /// The next message but the room's online user count (after every login, then every
    /// 30 s), which [`Client::recv_any`] returns too.
    pub async fn recv(&mut self) -> ServerMsg {
        loop {
            let m = self.recv_any().await;
            if !matches!(m, ServerMsg::RoomOnlineUserCount { .. }) {
                return m;
            }
        }
    }

    /// The next message.
    pub async fn recv_any(&mut self) -> ServerMsg {
        loop {
            let item = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for a signaling message");
            match item {
                Some(Ok(Message::Text(t))) => return ServerMsg::decode(t.as_str()).unwrap(),
                Some(Ok(Message::Close(_))) | None => panic!("signaling closed"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("signaling error: {e}"),
            }
        }
    }

    /// Sends a request and returns its reply; events before it are kept in `events`.
    pub async fn request(&mut self, msg: ClientMsg) -> ServerMsg {
        let seq = msg.seq();
        self.ws.send(Message::text(msg.encode())).await.unwrap();
        loop {
            let m = self.recv().await;
            match &m {
                ServerMsg::Ok { seq: s }
                | ServerMsg::MessageSent { seq: s, .. }
                | ServerMsg::LoginOk(LoginOk { seq: s, .. })
                | ServerMsg::MediaAnswer { seq: s, .. }
                | ServerMsg::Error { seq: Some(s), .. }
                    if *s == seq =>
                {
                    return m;
                }
                _ => self.events.push(m),
            }
        }
    }

    /// Pings and waits for the pong: the server still answers signaling.
    pub async fn ping(&mut self) {
        let seq = self.next_seq();
        self.ws
            .send(Message::text(ClientMsg::Ping { seq }.encode()))
            .await
            .unwrap();
        self.wait_for(|m| matches!(m, ServerMsg::Pong { seq: s, .. } if *s == seq))
            .await;
    }

    pub async fn ok(&mut self, msg: ClientMsg) {
        let reply = self.request(msg).await;
        assert!(matches!(reply, ServerMsg::Ok { .. }), "{reply:?}");
    }

    pub async fn publish(&mut self, stream: &str) {
        let seq = self.next_seq();
        self.ok(ClientMsg::Publish {
            seq,
            stream_id: sid(stream),
            extra_info: String::new(),
        })
        .await;
    }

    pub async fn unpublish(&mut self, stream: &str) {
        let seq = self.next_seq();
        self.ok(ClientMsg::Unpublish {
            seq,
            stream_id: sid(stream),
        })
        .await;
    }

    /// Plays and returns the availability in the first `play_update`.
    pub async fn play(&mut self, stream: &str) -> bool {
        let seq = self.next_seq();
        self.ok(ClientMsg::Play {
            seq,
            stream_id: sid(stream),
        })
        .await;
        self.wait_play_update(stream).await
    }

    pub async fn wait_for(&mut self, mut f: impl FnMut(&ServerMsg) -> bool) -> ServerMsg {
        if let Some(i) = self.events.iter().position(&mut f) {
            return self.events.remove(i);
        }
        loop {
            let m = self.recv().await;
            if f(&m) {
                return m;
            }
            self.events.push(m);
        }
    }

    pub async fn wait_play_update(&mut self, stream: &str) -> bool {
        match self
            .wait_for(
                |m| matches!(m, ServerMsg::PlayUpdate { stream_id, .. } if stream_id.as_str() == stream),
            )
            .await
        {
            ServerMsg::PlayUpdate { available, .. } => available,
            _ => unreachable!(),
        }
    }

    pub async fn wait_media_state(&mut self, stream: &str, role: MediaRole) -> (PeerState, ErrorCode) {
        match self
            .wait_for(|m| {
                matches!(m, ServerMsg::MediaState { stream_id, kind, .. }
                    if stream_id.as_str() == stream && *kind == role)
            })
            .await
        {
            ServerMsg::MediaState { state, code, .. } => (state, code),
            _ => unreachable!(),
        }
    }

    /// Waits until the server reports the connection of `stream` and `role` connected.
    pub async fn media_up(&mut self, stream: &str, role: MediaRole) {
        assert_eq!(
            self.wait_media_state(stream, role).await,
            (PeerState::Connected, ErrorCode::OK)
        );
    }

    /// Sends a media offer; returns the answer SDP or the error code.
    pub async fn offer(&mut self, stream: &str, role: MediaRole, sdp: String) -> Result<String, ErrorCode> {
        let seq = self.next_seq();
        self.send_offer(seq, stream, role, sdp).await;
        self.offer_reply(seq).await
    }

    pub async fn send_offer(&mut self, seq: u32, stream: &str, role: MediaRole, sdp: String) {
        let msg = ClientMsg::MediaOffer {
            seq,
            stream_id: sid(stream),
            kind: role,
            sdp,
            red_depth: 0,
        };
        self.ws.send(Message::text(msg.encode())).await.unwrap();
    }

    pub async fn offer_reply(&mut self, seq: u32) -> Result<String, ErrorCode> {
        let m = self
            .wait_for(|m| {
                matches!(m, ServerMsg::MediaAnswer { seq: s, .. } | ServerMsg::Error { seq: Some(s), .. } if *s == seq)
            })
            .await;
        match m {
            ServerMsg::MediaAnswer { sdp, .. } => Ok(sdp),
            ServerMsg::Error { code, .. } => Err(code),
            _ => unreachable!(),
        }
    }
}

// ----- media peers -----

/// A client peer connection on its own UDP socket.
pub struct Peer {
    pub rtc: Rtc,
    pub socket: UdpSocket,
    pub local: SocketAddr,
    pub pending: Option<SdpPendingOffer>,
    pub audio: Mid,
    pub created: Instant,
    pub connected_at: Option<Instant>,
    pub closed: bool,
    /// Whether the peer reads its socket (a player that stops reading lets the kernel drop).
    pub reading: bool,
    /// Payloads of the RTP packets received.
    pub got: Vec<Vec<u8>>,
    pub next_seq: u64,
}

impl Peer {
    /// A new peer and its SDP offer: send-only audio for a publisher, receive-only for a player.
    pub fn new(role: MediaRole) -> (Peer, String) {
        Peer::new_at(role, "127.0.0.1")
    }

    /// A peer whose socket and host candidate are on `ip`.
    pub fn new_at(role: MediaRole, ip: &str) -> (Peer, String) {
        let now = Instant::now();
        let socket = UdpSocket::bind((ip, 0)).unwrap();
        socket.set_nonblocking(true).unwrap();
        let local = socket.local_addr().unwrap();
        let mut rtc = RtcConfig::new()
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .build(now);
        rtc.add_local_candidate(Candidate::host(local, "udp").unwrap());
        let dir = match role {
            MediaRole::Publish => Direction::SendOnly,
            MediaRole::Play => Direction::RecvOnly,
        };
        let mut api = rtc.sdp_api();
        let audio = api.add_media(MediaKind::Audio, dir, None, None, None);
        let (offer, pending) = api.apply().unwrap();
        let peer = Peer {
            rtc,
            socket,
            local,
            pending: Some(pending),
            audio,
            created: now,
            connected_at: None,
            closed: false,
            reading: true,
            got: Vec::new(),
            next_seq: rand::thread_rng().gen_range(1000..30_000),
        };
        (peer, offer.to_sdp_string())
    }

    pub fn accept(&mut self, answer: &str) {
        let answer = SdpAnswer::from_sdp_string(answer).unwrap();
        let pending = self.pending.take().unwrap();
        self.rtc.sdp_api().accept_answer(pending, answer).unwrap();
    }

    pub fn connected(&self) -> bool {
        self.connected_at.is_some() && !self.closed
    }

    /// Reads what arrived, drives time and sends what the peer wants sent.
    pub fn step(&mut self, now: Instant) {
        if self.closed {
            return;
        }
        let mut buf = [0u8; 2048];
        while self.reading {
            let Ok((n, from)) = self.socket.recv_from(&mut buf) else {
                break;
            };
            if let Ok(r) = Receive::new(Protocol::Udp, from, self.local, &buf[..n]) {
                if self.rtc.handle_input(Input::Receive(now, r)).is_err() {
                    self.closed = true;
                    return;
                }
                // str0m's invariant: drain the output after every input (an RTP packet not
                // polled before the next input is lost).
                self.drain();
            }
        }
        if self.rtc.handle_input(Input::Timeout(now)).is_err() {
            self.closed = true;
            return;
        }
        self.drain();
    }

    /// Polls the output until it returns a timeout: sends, and records events.
    pub fn drain(&mut self) {
        loop {
            if !self.rtc.is_alive() {
                self.closed = true;
                return;
            }
            match self.rtc.poll_output() {
                Ok(Output::Transmit(t)) => {
                    let _ = self.socket.send_to(&t.contents, t.destination);
                }
                Ok(Output::Timeout(_)) => return,
                Ok(Output::Event(e)) => match e {
                    Event::Connected => self.connected_at = Some(Instant::now()),
                    Event::RtpPacket(p) => self.got.push(p.payload.to_vec()),
                    Event::Closed | Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                        self.closed = true;
                    }
                    _ => {}
                },
                Err(_) => {
                    self.closed = true;
                    return;
                }
            }
        }
    }

    /// Sends one Opus-shaped packet (20 ms of 48 kHz) with `payload`.
    pub fn send_audio(&mut self, payload: &[u8], now: Instant) {
        let pt = self
            .rtc
            .codec_config()
            .params()
            .iter()
            .find(|p| p.spec().codec == Codec::Opus)
            .map(|p| p.pt())
            .unwrap();
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut api = self.rtc.direct_api();
        let tx = api.stream_tx_by_mid(self.audio, None).expect("a send stream");
        tx.write_rtp(RtpWrite::new(pt, seq.into(), (seq * 960) as u32, now, payload.to_vec()).nackable(true));
    }
}

/// A synthetic Opus packet: TOC byte 0xf8 (CELT fullband, 20 ms, mono, one frame) and random
/// bytes.
pub fn opus_payload() -> Vec<u8> {
    let mut rng = rand::thread_rng();
    let len = rng.gen_range(40..120);
    let mut p = vec![0xf8u8];
    p.extend((0..len).map(|_| rng.r#gen::<u8>()));
    p
}

/// Steps `peers` every millisecond until `done` holds or `timeout` passes; returns whether it held.
pub async fn run_until(
    peers: &mut [&mut Peer],
    timeout: Duration,
    mut done: impl FnMut(&[&mut Peer]) -> bool,
) -> bool {
    let end = Instant::now() + timeout;
    loop {
        let now = Instant::now();
        for p in peers.iter_mut() {
            p.step(now);
        }
        if done(peers) {
            return true;
        }
        if now >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The publisher (`peers[0]`) sends `count` packets at 50 per second while every peer is stepped;
/// then the peers run a little longer for the last packets to land. Returns the payloads sent.
pub async fn stream_audio(peers: &mut [&mut Peer], count: usize) -> Vec<Vec<u8>> {
    stream_at(peers, count, Duration::from_millis(20)).await
}

/// The publisher (`peers[0]`) sends `count` packets every `interval` while every peer is stepped.
pub async fn stream_at(peers: &mut [&mut Peer], count: usize, interval: Duration) -> Vec<Vec<u8>> {
    let mut sent = Vec::with_capacity(count);
    let start = Instant::now();
    while sent.len() < count {
        let now = Instant::now();
        if now >= start + interval * sent.len() as u32 {
            let payload = opus_payload();
            peers[0].send_audio(&payload, now);
            sent.push(payload);
        }
        for p in peers.iter_mut() {
            p.step(now);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    run_until(peers, Duration::from_millis(300), |_| false).await;
    sent
}

/// Asserts that `got` is `sent` in order with at most 5% missing, and returns how many arrived.
pub fn assert_in_order(sent: &[Vec<u8>], got: &[Vec<u8>]) -> usize {
    assert_sent_in_order(sent, got);
    assert!(
        got.len() * 100 >= sent.len() * 95,
        "only {} of {} packets arrived",
        got.len(),
        sent.len()
    );
    got.len()
}

/// Asserts that every payload of `got` was sent, in the order of `sent` (any may be missing).
pub fn assert_sent_in_order(sent: &[Vec<u8>], got: &[Vec<u8>]) {
    let mut i = 0;
    for g in got {
        let Some(pos) = sent[i..].iter().position(|s| s == g) else {
            panic!("a received payload was not sent, or arrived out of order");
        };
        i += pos + 1;
    }
}

/// Negotiates and connects a publisher for `stream` (already published by `client`).
pub async fn start_publisher(client: &mut Client, stream: &str) -> Peer {
    let (mut peer, offer) = Peer::new(MediaRole::Publish);
    let answer = client.offer(stream, MediaRole::Publish, offer).await.unwrap();
    assert!(answer.contains("a=ice-lite"), "{answer}");
    assert!(answer.contains("useinbandfec=1"), "{answer}");
    // The origin line names no library (nor its version).
    assert!(answer.contains("\no=- ") && !answer.contains("str0m"), "{answer}");
    peer.accept(&answer);
    peer
}

pub async fn start_player(client: &mut Client, stream: &str) -> Peer {
    let (mut peer, offer) = Peer::new(MediaRole::Play);
    let answer = client.offer(stream, MediaRole::Play, offer).await.unwrap();
    peer.accept(&answer);
    peer
}

pub async fn connect(peers: &mut [&mut Peer]) {
    assert!(
        run_until(peers, WAIT, |ps| ps.iter().all(|p| p.connected())).await,
        "peers did not connect"
    );
}

/// A rustls client that trusts the test CA of `certs`, and nothing else, offering `alpn` (here,
/// not in `certs.rs`, which the SDK's and the CLI's tests include without rustls).
pub fn tls_client(certs: &certs::TestCerts, alpn: &[&[u8]]) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(certs.ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    std::sync::Arc::new(config)
}
