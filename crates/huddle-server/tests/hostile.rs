//! Hostile input against a running server: a flood of junk UDP at the media port while a real
//! call runs (its loss compared with the same call without the flood), malformed and oversized
//! signaling from many connections, and a connection flood from one address against the
//! per-address limits (`docs/security.md`).
//!
//! The str0m client and the signaling helpers are copied from `tests/media.rs`.
#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

const APP: u32 = 21;
const WAIT: Duration = Duration::from_secs(5);
const ROOM: &str = "media-room";

fn config() -> ServerConfig {
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

fn server() -> BackgroundServer {
    BackgroundServer::start(config()).unwrap()
}

fn sid(s: &str) -> StreamId {
    StreamId::new(s).unwrap()
}

// ----- signaling -----

struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    seq: u32,
    /// Events read while waiting for something else.
    events: Vec<ServerMsg>,
}

impl Client {
    async fn login(server: &BackgroundServer, user: &str) -> Client {
        Client::login_url(&server.ws_url(), user).await
    }

    async fn login_url(url: &str, user: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let mut c = Client {
            ws,
            seq: 0,
            events: Vec::new(),
        };
        let ServerMsg::Hello { nonce, .. } = c.recv().await else {
            panic!("expected hello");
        };
        let sign = huddle_token::sign_challenge(&test_app(APP).app_sign, APP, ROOM, user, &nonce);
        let seq = c.next_seq();
        let login = ClientMsg::Login(Login {
            seq,
            protocol: PROTOCOL_VERSION,
            app_id: AppId::new(APP).unwrap(),
            room_id: RoomId::new(ROOM).unwrap(),
            user: User::new(UserId::new(user).unwrap()),
            auth: Auth::Sign(sign),
            user_status_notify: false,
            max_member_count: 0,
            resume: None,
        });
        let reply = c.request(login).await;
        assert!(matches!(reply, ServerMsg::LoginOk(LoginOk { .. })), "{reply:?}");
        c
    }

    fn next_seq(&mut self) -> u32 {
        self.seq += 1;
        self.seq
    }

    async fn recv(&mut self) -> ServerMsg {
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
    async fn request(&mut self, msg: ClientMsg) -> ServerMsg {
        let seq = msg.seq();
        self.ws.send(Message::text(msg.encode())).await.unwrap();
        loop {
            let m = self.recv().await;
            match &m {
                ServerMsg::Ok { seq: s }
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

    async fn ok(&mut self, msg: ClientMsg) {
        let reply = self.request(msg).await;
        assert!(matches!(reply, ServerMsg::Ok { .. }), "{reply:?}");
    }

    async fn publish(&mut self, stream: &str) {
        let seq = self.next_seq();
        self.ok(ClientMsg::Publish {
            seq,
            stream_id: sid(stream),
            extra_info: String::new(),
        })
        .await;
    }

    async fn unpublish(&mut self, stream: &str) {
        let seq = self.next_seq();
        self.ok(ClientMsg::Unpublish {
            seq,
            stream_id: sid(stream),
        })
        .await;
    }

    /// Plays and returns the availability in the first `play_update`.
    async fn play(&mut self, stream: &str) -> bool {
        let seq = self.next_seq();
        self.ok(ClientMsg::Play {
            seq,
            stream_id: sid(stream),
        })
        .await;
        self.wait_play_update(stream).await
    }

    async fn wait_for(&mut self, mut f: impl FnMut(&ServerMsg) -> bool) -> ServerMsg {
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

    async fn wait_play_update(&mut self, stream: &str) -> bool {
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

    async fn wait_media_state(&mut self, stream: &str, role: MediaRole) -> (PeerState, ErrorCode) {
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
    async fn media_up(&mut self, stream: &str, role: MediaRole) {
        assert_eq!(
            self.wait_media_state(stream, role).await,
            (PeerState::Connected, ErrorCode::OK)
        );
    }

    /// Sends a media offer; returns the answer SDP or the error code.
    async fn offer(&mut self, stream: &str, role: MediaRole, sdp: String) -> Result<String, ErrorCode> {
        let seq = self.next_seq();
        self.send_offer(seq, stream, role, sdp).await;
        self.offer_reply(seq).await
    }

    async fn send_offer(&mut self, seq: u32, stream: &str, role: MediaRole, sdp: String) {
        let msg = ClientMsg::MediaOffer {
            seq,
            stream_id: sid(stream),
            kind: role,
            sdp,
        };
        self.ws.send(Message::text(msg.encode())).await.unwrap();
    }

    async fn offer_reply(&mut self, seq: u32) -> Result<String, ErrorCode> {
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
struct Peer {
    rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
    pending: Option<SdpPendingOffer>,
    audio: Mid,
    created: Instant,
    connected_at: Option<Instant>,
    closed: bool,
    /// Whether the peer reads its socket (a player that stops reading lets the kernel drop).
    reading: bool,
    /// Payloads of the RTP packets received.
    got: Vec<Vec<u8>>,
    next_seq: u64,
}

impl Peer {
    /// A new peer and its SDP offer: send-only audio for a publisher, receive-only for a player.
    fn new(role: MediaRole) -> (Peer, String) {
        Peer::new_at(role, "127.0.0.1")
    }

    /// A peer whose socket and host candidate are on `ip`.
    fn new_at(role: MediaRole, ip: &str) -> (Peer, String) {
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

    fn accept(&mut self, answer: &str) {
        let answer = SdpAnswer::from_sdp_string(answer).unwrap();
        let pending = self.pending.take().unwrap();
        self.rtc.sdp_api().accept_answer(pending, answer).unwrap();
    }

    fn connected(&self) -> bool {
        self.connected_at.is_some() && !self.closed
    }

    /// Reads what arrived, drives time and sends what the peer wants sent.
    fn step(&mut self, now: Instant) {
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
    fn drain(&mut self) {
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
    fn send_audio(&mut self, payload: &[u8], now: Instant) {
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
fn opus_payload() -> Vec<u8> {
    let mut rng = rand::thread_rng();
    let len = rng.gen_range(40..120);
    let mut p = vec![0xf8u8];
    p.extend((0..len).map(|_| rng.r#gen::<u8>()));
    p
}

/// Steps `peers` every millisecond until `done` holds or `timeout` passes; returns whether it held.
async fn run_until(
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
async fn stream_audio(peers: &mut [&mut Peer], count: usize) -> Vec<Vec<u8>> {
    let mut sent = Vec::with_capacity(count);
    let start = Instant::now();
    while sent.len() < count {
        let now = Instant::now();
        let due = start + Duration::from_millis(20 * sent.len() as u64);
        if now >= due {
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
fn assert_in_order(sent: &[Vec<u8>], got: &[Vec<u8>]) -> usize {
    let mut i = 0;
    for g in got {
        let Some(pos) = sent[i..].iter().position(|s| s == g) else {
            panic!("a received payload was not sent, or arrived out of order");
        };
        i += pos + 1;
    }
    assert!(
        got.len() * 100 >= sent.len() * 95,
        "only {} of {} packets arrived",
        got.len(),
        sent.len()
    );
    got.len()
}

/// Negotiates and connects a publisher for `stream` (already published by `client`).
async fn start_publisher(client: &mut Client, stream: &str) -> Peer {
    let (mut peer, offer) = Peer::new(MediaRole::Publish);
    let answer = client.offer(stream, MediaRole::Publish, offer).await.unwrap();
    assert!(answer.contains("a=ice-lite"), "{answer}");
    assert!(answer.contains("useinbandfec=1"), "{answer}");
    peer.accept(&answer);
    peer
}

async fn start_player(client: &mut Client, stream: &str) -> Peer {
    let (mut peer, offer) = Peer::new(MediaRole::Play);
    let answer = client.offer(stream, MediaRole::Play, offer).await.unwrap();
    peer.accept(&answer);
    peer
}

async fn connect(peers: &mut [&mut Peer]) {
    assert!(
        run_until(peers, WAIT, |ps| ps.iter().all(|p| p.connected())).await,
        "peers did not connect"
    );
}

// ----- junk UDP -----

/// A STUN binding request with `USERNAME` = `username` and random transaction ID and attributes
/// (no valid MESSAGE-INTEGRITY: the key is the PC's password, which a stranger does not know).
fn stun_request(username: &str, rng: &mut impl Rng) -> Vec<u8> {
    let mut attrs = Vec::new();
    let mut attr = |t: u16, v: &[u8]| {
        attrs.extend_from_slice(&t.to_be_bytes());
        attrs.extend_from_slice(&(v.len() as u16).to_be_bytes());
        attrs.extend_from_slice(v);
        while attrs.len() % 4 != 0 {
            attrs.push(0);
        }
    };
    attr(0x0006, username.as_bytes());
    attr(0x0024, &rng.r#gen::<u32>().to_be_bytes()); // PRIORITY
    if rng.gen_bool(0.5) {
        attr(0x0025, &[]); // USE-CANDIDATE
    }
    let integrity: [u8; 20] = rng.r#gen();
    attr(0x0008, &integrity); // MESSAGE-INTEGRITY (wrong)
    attr(0x8028, &rng.r#gen::<u32>().to_be_bytes()); // FINGERPRINT (wrong)
    let mut m = Vec::with_capacity(20 + attrs.len());
    m.extend_from_slice(&0x0001u16.to_be_bytes());
    m.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    m.extend_from_slice(&0x2112_a442u32.to_be_bytes());
    let txid: [u8; 12] = rng.r#gen();
    m.extend_from_slice(&txid);
    m.extend_from_slice(&attrs);
    m
}

/// A pool of hostile datagrams: random bytes over every first-byte range, malformed RTP, RTCP and
/// DTLS records, and well-formed STUN checks for unknown usernames and for the server's real
/// username fragments (`ufrags`) with wrong integrity.
fn junk_pool(ufrags: &[String]) -> Vec<Vec<u8>> {
    let mut rng = rand::thread_rng();
    let mut pool = vec![
        vec![],
        vec![0],
        vec![0x80; 12],
        vec![0x16; 13],
        vec![0; 20],
        vec![1; 1200],
    ];
    while pool.len() < 4096 {
        let kind = rng.gen_range(0..8);
        let len = if rng.gen_bool(0.05) {
            rng.gen_range(200..1400)
        } else {
            rng.gen_range(0..200)
        };
        let mut d: Vec<u8> = (0..len).map(|_| rng.r#gen()).collect();
        match kind {
            // RTP-looking (version 2, random payload type).
            0 | 1 => {
                d.resize(d.len().max(12), 0);
                d[0] = 0x80 | (d[0] & 0x3f);
            }
            // RTCP-looking (SR, RR, SDES, BYE, feedback).
            2 => {
                d.resize(d.len().max(8), 0);
                d[0] = 0x80 | (d[0] & 0x1f);
                d[1] = rng.gen_range(200..=206);
            }
            // DTLS-looking records (handshake, alert, application data).
            3 => {
                d.resize(d.len().max(13), 0);
                d[0] = [20, 21, 22, 23][rng.gen_range(0..4)];
                d[1] = 0xfe;
                d[2] = 0xfd;
            }
            // STUN for a username the server never issued.
            4 => {
                d = stun_request(
                    &format!("{:08x}:{:08x}", rng.r#gen::<u32>(), rng.r#gen::<u32>()),
                    &mut rng,
                )
            }
            // STUN for a real PC's ufrag with a wrong integrity.
            5 if !ufrags.is_empty() => {
                let u = &ufrags[rng.gen_range(0..ufrags.len())];
                d = stun_request(&format!("{u}:{:08x}", rng.r#gen::<u32>()), &mut rng);
            }
            // STUN-looking garbage.
            6 => {
                d.resize(d.len().max(20), 0);
                d[0] = rng.gen_range(0..2);
            }
            _ => {}
        }
        pool.push(d);
    }
    pool
}

/// The server's ICE username fragment in an SDP answer.
fn ufrag(sdp: &str) -> Option<String> {
    sdp.lines()
        .find_map(|l| l.trim().strip_prefix("a=ice-ufrag:"))
        .map(str::to_owned)
}

struct Flood {
    sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Duration>,
}

/// Sends `pool` round-robin at `rate` datagrams a second to `target` from a separate thread: from
/// 16 stranger sockets, and one datagram in ten from `spoof` (a real client's own address).
fn start_flood(target: SocketAddr, pool: Vec<Vec<u8>>, spoof: UdpSocket, rate: u64) -> Flood {
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (s, st) = (sent.clone(), stop.clone());
    let thread = std::thread::spawn(move || {
        let strangers: Vec<UdpSocket> = (0..16).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
        let start = Instant::now();
        let mut n: u64 = 0;
        while !st.load(Ordering::Relaxed) {
            // Catch up to the schedule, then sleep a little.
            let due = start.elapsed().as_micros() as u64 * rate / 1_000_000;
            while n < due {
                let d = &pool[n as usize % pool.len()];
                let ok = if n % 10 == 9 {
                    spoof.send_to(d, target)
                } else {
                    strangers[n as usize % strangers.len()].send_to(d, target)
                };
                if ok.is_ok() {
                    s.fetch_add(1, Ordering::Relaxed);
                }
                n += 1;
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        start.elapsed()
    });
    Flood { sent, stop, thread }
}

impl Flood {
    /// Stops the flood; returns the datagrams sent and the rate achieved.
    fn stop(self) -> (u64, f64) {
        self.stop.store(true, Ordering::Relaxed);
        let elapsed = self.thread.join().unwrap();
        let sent = self.sent.load(Ordering::Relaxed);
        (sent, sent as f64 / elapsed.as_secs_f64())
    }
}

/// The publisher (`peers[0]`) sends `count` packets every `interval` while every peer is stepped.
async fn stream_at(peers: &mut [&mut Peer], count: usize, interval: Duration) -> Vec<Vec<u8>> {
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

/// One call (a publisher, two players) over `server`; with `flood_rate`, junk flows at the media
/// port meanwhile. Returns the packets expected and received by the players, and the flood's
/// datagrams and rate.
async fn call(server: &BackgroundServer, tag: &str, flood_rate: Option<u64>) -> (usize, usize, u64, f64) {
    const PACKETS: usize = 1000;
    let stream = format!("s-{tag}");
    let mut alice = Client::login(server, &format!("alice-{tag}")).await;
    let mut bob = Client::login(server, &format!("bob-{tag}")).await;
    let mut carol = Client::login(server, &format!("carol-{tag}")).await;
    alice.publish(&stream).await;
    let (mut publisher, offer) = Peer::new(MediaRole::Publish);
    let answer = alice.offer(&stream, MediaRole::Publish, offer).await.unwrap();
    let mut ufrags: Vec<String> = ufrag(&answer).into_iter().collect();
    publisher.accept(&answer);
    let mut players = Vec::new();
    for c in [&mut bob, &mut carol] {
        assert!(c.play(&stream).await);
        let (mut p, offer) = Peer::new(MediaRole::Play);
        let answer = c.offer(&stream, MediaRole::Play, offer).await.unwrap();
        ufrags.extend(ufrag(&answer));
        p.accept(&answer);
        players.push(p);
    }
    let [p1, p2] = &mut players[..] else {
        unreachable!()
    };
    connect(&mut [&mut publisher, p1, p2]).await;
    alice.media_up(&stream, MediaRole::Publish).await;
    bob.media_up(&stream, MediaRole::Play).await;
    carol.media_up(&stream, MediaRole::Play).await;

    let flood = flood_rate.map(|rate| {
        let spoof = p1.socket.try_clone().unwrap();
        start_flood(server.udp_addr(), junk_pool(&ufrags), spoof, rate)
    });
    // 200 packets a second (four Opus streams' worth) for 5 s.
    let sent = stream_at(&mut [&mut publisher, p1, p2], PACKETS, Duration::from_millis(5)).await;
    let (junk, rate) = flood.map_or((0, 0.0), Flood::stop);
    let mut got = 0;
    for p in [&*p1, &*p2] {
        assert!(p.connected(), "a player's connection broke");
        let mut i = 0;
        for g in &p.got {
            let pos = sent[i..]
                .iter()
                .position(|s| s == g)
                .expect("a received payload was not sent, or arrived out of order");
            i += pos + 1;
        }
        got += p.got.len();
    }
    // Signaling still answers.
    let seq = bob.next_seq();
    bob.ws
        .send(Message::text(ClientMsg::Ping { seq }.encode()))
        .await
        .unwrap();
    bob.wait_for(|m| matches!(m, ServerMsg::Pong { seq: s, .. } if *s == seq))
        .await;
    (2 * sent.len(), got, junk, rate)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_junk_udp_flood_costs_a_running_call_no_loss() {
    let server = server();
    let (base_expected, base_got, _, _) = call(&server, "quiet", None).await;
    let before = server.media_stats();
    let rate = std::env::var("HUDDLE_FLOOD_PPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let (expected, got, junk, achieved) = call(&server, "flood", Some(rate)).await;
    let after = server.media_stats();
    let loss = |e: usize, g: usize| 100.0 * (e - g) as f64 / e as f64;
    let (base_loss, flood_loss) = (loss(base_expected, base_got), loss(expected, got));
    let dropped =
        (after.dropped_unknown + after.dropped_invalid) - (before.dropped_unknown + before.dropped_invalid);
    println!(
        "without flood: {base_got}/{base_expected} delivered ({base_loss:.2}% loss); with {junk} junk \
         datagrams at {achieved:.0}/s: {got}/{expected} ({flood_loss:.2}% loss); server dropped {dropped} \
         as unknown/invalid; {after:?}"
    );
    assert!(
        flood_loss <= base_loss + 0.1,
        "the flood cost {:.2} percentage points of loss",
        flood_loss - base_loss
    );
    // The sender kept (nearly) the asked rate, and the server saw and dropped the junk.
    assert!(achieved >= rate as f64 * 0.8, "flood at only {achieved:.0}/s");
    assert!(
        dropped >= junk / 2,
        "{dropped} of {junk} junk datagrams dropped: {after:?}"
    );
}

// ----- hostile signaling -----

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What a raw connection read: messages, then how it ended (`None`: still open at the timeout).
async fn read_some(ws: &mut Ws, max: usize, timeout: Duration) -> (Vec<ServerMsg>, bool) {
    let mut msgs = Vec::new();
    let end = tokio::time::Instant::now() + timeout;
    while msgs.len() < max {
        match tokio::time::timeout_at(end, ws.next()).await {
            Err(_) => return (msgs, false),
            Ok(Some(Ok(Message::Text(t)))) => msgs.push(ServerMsg::decode(t.as_str()).unwrap()),
            Ok(Some(Ok(Message::Close(_)) | Err(_)) | None) => return (msgs, true),
            Ok(Some(Ok(_))) => {}
        }
    }
    (msgs, false)
}

fn code_of(m: &ServerMsg) -> Option<ErrorCode> {
    match m {
        ServerMsg::Error { code, .. } => Some(*code),
        _ => None,
    }
}

/// Sends `text` and returns the one reply (an error).
async fn expect_error(ws: &mut Ws, msg: Message) -> ErrorCode {
    ws.send(msg).await.unwrap();
    let (msgs, _) = read_some(ws, 1, WAIT).await;
    let m = msgs.first().expect("a reply (the connection closed)");
    code_of(m).unwrap_or_else(|| panic!("expected an error, got {m:?}"))
}

/// One hostile connection: malformed, wrong and oversized messages; returns the codes it got.
async fn hostile_connection(url: String, i: usize) -> Vec<ErrorCode> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let (hello, _) = read_some(&mut ws, 1, WAIT).await;
    assert!(
        matches!(hello.first(), Some(ServerMsg::Hello { .. })),
        "{hello:?}"
    );
    let deep = "[".repeat(60_000);
    let texts = [
        "}{".to_string(),
        "null".into(),
        "[]".into(),
        r#"{"type":"explode","seq":1}"#.into(),
        r#"{"type":"ping","seq":-1}"#.into(),
        r#"{"type":"ping","seq":99999999999999999999}"#.into(),
        r#"{"type":"publish","seq":2,"stream_id":"a b"}"#.into(),
        format!(
            r#"{{"type":"publish","seq":3,"stream_id":"{}"}}"#,
            "x".repeat(300)
        ),
        r#"{"type":"ping","seq":4}"#.into(), // before login: 1000002
        format!(
            r#"{{"type":"login","seq":5,"protocol":1,"app_id":{APP},"room_id":"r","user":{{"user_id":"u{i}","user_name":"U"}},"auth":{{"sign":"00"}}}}"#
        ),
        format!(
            r#"{{"type":"login","seq":6,"protocol":1,"app_id":999,"room_id":"r","user":{{"user_id":"u{i}","user_name":"U"}},"auth":{{"token":"04AAAA"}}}}"#
        ),
        "\u{0}\u{1}\u{fffd}".into(),
        deep,
    ];
    let mut codes = Vec::new();
    for t in texts {
        let head: String = t.chars().take(60).collect();
        let code = expect_error(&mut ws, Message::text(t)).await;
        assert_ne!(code, ErrorCode::OK, "{head}");
        codes.push(code);
    }
    codes.push(expect_error(&mut ws, Message::binary(vec![0u8; 100])).await);
    // An oversized message: 1009002, then the server closes.
    let big = format!(
        r#"{{"type":"ping","seq":9,"pad":"{}"}}"#,
        "x".repeat(huddle_proto::MAX_MESSAGE_BYTES)
    );
    let _ = ws.send(Message::text(big)).await;
    let (msgs, closed) = read_some(&mut ws, 4, WAIT).await;
    codes.extend(msgs.iter().filter_map(code_of));
    assert!(
        closed
            || msgs
                .iter()
                .any(|m| code_of(m) == Some(ErrorCode::MESSAGE_TOO_LARGE)),
        "{msgs:?}"
    );
    codes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_signaling_from_many_connections() {
    let server = server();
    let mut alice = Client::login(&server, "alice").await;
    let tasks: Vec<_> = (0..40)
        .map(|i| tokio::spawn(hostile_connection(server.ws_url(), i)))
        .collect();
    for t in tasks {
        let codes = t.await.unwrap();
        assert!(codes.iter().all(|c| *c != ErrorCode::OK), "{codes:?}");
        for expected in [
            ErrorCode::MALFORMED_MESSAGE,
            ErrorCode::NOT_LOGGED_IN,
            ErrorCode::APP_SIGN_INCORRECT,
            ErrorCode::APP_ID_UNKNOWN,
            ErrorCode::MESSAGE_TOO_LARGE,
        ] {
            assert!(codes.contains(&expected), "{expected:?} not in {codes:?}");
        }
    }
    // Nothing of it reached the room, and the server still serves.
    alice.publish("after").await;
    let _bob = Client::login(&server, "bob").await;
    assert_eq!(server.stats().sessions, 2);
    let deadline = Instant::now() + WAIT;
    while server.state().connections() > 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(server.state().connections(), 2);
}

/// Connects; returns the first message (hello, or the refusal) and whether the server closed.
async fn try_connect(url: &str) -> (Option<ServerMsg>, bool, Option<Ws>) {
    let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url).await else {
        return (None, true, None);
    };
    let (msgs, closed) = read_some(&mut ws, 1, WAIT).await;
    let first = msgs.into_iter().next();
    let closed = if matches!(first, Some(ServerMsg::Hello { .. })) {
        closed
    } else {
        // A refusal: the close follows.
        closed || read_some(&mut ws, 1, WAIT).await.1
    };
    (first, closed, Some(ws))
}

#[tokio::test]
async fn too_many_connections_from_one_address_are_refused_with_1009006() {
    let mut config = config();
    config.max_connections_per_ip = 3;
    config.connection_rate_per_ip = 0;
    let server = BackgroundServer::start(config).unwrap();
    let url = server.ws_url();
    let mut open = Vec::new();
    for _ in 0..3 {
        let (first, closed, ws) = try_connect(&url).await;
        assert!(
            matches!(first, Some(ServerMsg::Hello { .. })) && !closed,
            "{first:?}"
        );
        open.push(ws.unwrap());
    }
    let (first, closed, _) = try_connect(&url).await;
    assert_eq!(
        first.as_ref().and_then(code_of),
        Some(ErrorCode::SERVER_BUSY),
        "{first:?}"
    );
    assert!(closed);
    // A connection that closes frees its place.
    let mut ws = open.pop().unwrap();
    ws.close(None).await.unwrap();
    let _ = read_some(&mut ws, 8, WAIT).await;
    let deadline = Instant::now() + WAIT;
    while server.state().connections() > 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (first, closed, _ws) = try_connect(&url).await;
    assert!(
        matches!(first, Some(ServerMsg::Hello { .. })) && !closed,
        "{first:?}"
    );
}

#[tokio::test]
async fn connecting_too_often_from_one_address_is_refused_with_1009004() {
    let mut config = config();
    config.max_connections_per_ip = 0;
    config.connection_rate_per_ip = 4;
    config.connection_burst_per_ip = 5;
    let server = BackgroundServer::start(config).unwrap();
    let url = server.ws_url();
    let mut accepted = 0;
    let mut refused = Vec::new();
    for _ in 0..8 {
        let (first, closed, _) = try_connect(&url).await;
        match first {
            Some(ServerMsg::Hello { .. }) => accepted += 1,
            other => {
                assert!(closed);
                refused.push(other.as_ref().and_then(code_of));
            }
        }
    }
    // The burst, and at most one more refilled meanwhile.
    assert!((5..=6).contains(&accepted), "{accepted} accepted");
    assert!(
        refused.iter().all(|c| *c == Some(ErrorCode::RATE_LIMITED)),
        "{refused:?}"
    );
    // The bucket refills at 4 a second.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (first, _, _) = try_connect(&url).await;
    assert!(matches!(first, Some(ServerMsg::Hello { .. })), "{first:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_from_one_address_is_contained() {
    // The default limits: a burst of 500 new connections, 50 a second, 1000 open.
    let server = server();
    let url = server.ws_url();
    let mut alice = Client::login(&server, "alice").await;
    let start = Instant::now();
    let tasks: Vec<_> = (0..800)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { try_connect(&url).await })
        })
        .collect();
    let (mut accepted, mut limited, mut other) = (0, 0, Vec::new());
    let mut keep = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            (Some(ServerMsg::Hello { .. }), false, ws) => {
                accepted += 1;
                keep.extend(ws);
            }
            (Some(m), true, _) if code_of(&m) == Some(ErrorCode::RATE_LIMITED) => limited += 1,
            (first, closed, _) => other.push((first, closed)),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "800 connections at once from one address in {secs:.2} s: {accepted} accepted, {limited} refused (1009004)"
    );
    assert!(other.is_empty(), "{other:?}");
    // The burst, plus what the bucket refilled while the flood lasted.
    assert!(
        accepted >= 500 && accepted as f64 <= 501.0 + 50.0 * secs,
        "{accepted} accepted"
    );
    assert_eq!(accepted + limited, 800);
    // The room and the logged-in session are untouched.
    alice.publish("still-here").await;
    drop(keep);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_limits_let_a_busy_client_host_through() {
    // 300 connections in a quick burst (a test suite, an office behind one NAT) are all served.
    let server = server();
    let url = server.ws_url();
    let tasks: Vec<_> = (0..300)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { try_connect(&url).await })
        })
        .collect();
    let mut open = Vec::new();
    for t in tasks {
        let (first, closed, ws) = t.await.unwrap();
        assert!(
            matches!(first, Some(ServerMsg::Hello { .. })) && !closed,
            "{first:?}"
        );
        open.extend(ws);
    }
    assert_eq!(server.state().connections(), 300);
}

// ----- a call against an external server (impair/netns.sh smoke) -----

/// A publisher and a player against a server, from the address of the local interface that
/// routes to it; 500 packets at 50 a second. In the suite the server is a local one on a clean
/// loopback link; `impair/netns.sh smoke` points it at the server in another network namespace
/// over an impaired link with `HUDDLE_EXTERNAL_WS` (the test app 21 of this file) and
/// `HUDDLE_EXTERNAL_LOSS`, the loss per direction in percent.
#[tokio::test]
async fn external_call() {
    let local;
    let url = match std::env::var("HUDDLE_EXTERNAL_WS") {
        Ok(url) => url,
        Err(_) => {
            local = server();
            local.ws_url()
        }
    };
    let loss: f64 = std::env::var("HUDDLE_EXTERNAL_LOSS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    // The local address towards the server: a connected UDP socket tells it (nothing is sent).
    let host = url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let probe = UdpSocket::bind("0.0.0.0:0").unwrap();
    probe.connect(&host).unwrap();
    let ip = probe.local_addr().unwrap().ip().to_string();
    let started = Instant::now();
    let mut alice = Client::login_url(&url, "alice").await;
    let mut bob = Client::login_url(&url, "bob").await;
    let login_ms = started.elapsed().as_millis();
    alice.publish("ext").await;
    let (mut publisher, offer) = Peer::new_at(MediaRole::Publish, &ip);
    let answer = alice.offer("ext", MediaRole::Publish, offer).await.unwrap();
    publisher.accept(&answer);
    assert!(bob.play("ext").await);
    let (mut player, offer) = Peer::new_at(MediaRole::Play, &ip);
    let answer = bob.offer("ext", MediaRole::Play, offer).await.unwrap();
    player.accept(&answer);
    let t = Instant::now();
    assert!(
        run_until(
            &mut [&mut publisher, &mut player],
            Duration::from_secs(20),
            |ps| ps.iter().all(|p| p.connected())
        )
        .await,
        "peers did not connect within 20 s"
    );
    let connect_ms = t.elapsed().as_millis();
    alice.media_up("ext", MediaRole::Publish).await;
    bob.media_up("ext", MediaRole::Play).await;
    let sent = stream_at(&mut [&mut publisher, &mut player], 500, Duration::from_millis(20)).await;
    let got = player.got.len();
    let delivered = got as f64 / sent.len() as f64;
    // Two impaired hops (publisher to server, server to player).
    let expected = (1.0 - loss / 100.0).powi(2);
    println!(
        "external call from {ip} to {url}: logins {login_ms} ms, ICE+DTLS {connect_ms} ms, \
         {got}/{} delivered ({:.1}%; {:.1}% expected at {loss}% loss per hop)",
        sent.len(),
        100.0 * delivered,
        100.0 * expected
    );
    assert!(delivered >= expected - 0.1, "too much loss");
    assert!(player.connected() && publisher.connected());
}

// ----- CBC tokens -----

/// Logs in with a token over a real connection; returns the reply's error code (OK on success).
async fn token_login(url: &str, token: String) -> ErrorCode {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let _hello = read_some(&mut ws, 1, WAIT).await;
    let login = ClientMsg::Login(Login {
        seq: 1,
        protocol: PROTOCOL_VERSION,
        app_id: AppId::new(APP).unwrap(),
        room_id: RoomId::new(ROOM).unwrap(),
        user: User::new(UserId::new("alice").unwrap()),
        auth: Auth::Token(token),
        user_status_notify: false,
        max_member_count: 0,
        resume: None,
    });
    ws.send(Message::text(login.encode())).await.unwrap();
    let (msgs, _) = read_some(&mut ws, 1, WAIT).await;
    match msgs.first() {
        Some(ServerMsg::LoginOk(_)) => ErrorCode::OK,
        Some(m) => code_of(m).unwrap_or_else(|| panic!("{m:?}")),
        None => panic!("no reply"),
    }
}

#[tokio::test]
async fn cbc_tokens_are_refused_unless_the_app_allows_them() {
    let token = |cipher| {
        huddle_token::TokenBuilder::new(APP, "alice", test_app(APP).server_secret.as_str())
            .effective_secs(3600)
            .cipher(cipher)
            .build()
            .unwrap()
    };
    let strict = server();
    assert_eq!(
        token_login(&strict.ws_url(), token(huddle_token::Cipher::Cbc)).await,
        ErrorCode::TOKEN_FORMAT
    );
    assert_eq!(
        token_login(&strict.ws_url(), token(huddle_token::Cipher::Gcm)).await,
        ErrorCode::OK
    );
    let mut config = config();
    config.apps[0].allow_cbc_tokens = true;
    let legacy = BackgroundServer::start(config).unwrap();
    assert_eq!(
        token_login(&legacy.ws_url(), token(huddle_token::Cipher::Cbc)).await,
        ErrorCode::OK
    );
}

// ----- raw TCP -----

/// Signaling (no media plane) served through [`huddle_server::ServerState::guard_listener`], as
/// `huddle_server::serve` does once wired; returns its address.
async fn guarded_signaling(config: ServerConfig) -> SocketAddr {
    use axum::serve::ListenerExt;
    let state = huddle_server::ServerState::new(config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = huddle_server::router(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let listener = state.guard_listener(listener).tap_io(|_| {});
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// Whether the server closed `s` within `within` (reads nothing but the end).
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(within, s.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test]
async fn silent_tcp_connections_are_closed_and_counted_per_address() {
    let mut config = config();
    config.login_timeout = Duration::from_millis(500);
    config.max_connections_per_ip = 2;
    config.connection_rate_per_ip = 0;
    let addr = guarded_signaling(config).await;
    // A connection that never sends its HTTP request is closed after the login timeout.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    let t = Instant::now();
    assert!(
        closed_within(&mut idle, Duration::from_secs(3)).await,
        "an idle connection stays open"
    );
    assert!(t.elapsed() >= Duration::from_millis(400), "{:?}", t.elapsed());
    // At most 2 + 64 raw connections from one address; the next is closed at once.
    let mut held = Vec::new();
    for _ in 0..66 {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    let mut extra = TcpStream::connect(addr).await.unwrap();
    assert!(closed_within(&mut extra, Duration::from_millis(300)).await);
    // WebSockets still work once the held ones are gone (they time out too).
    drop(held);
    let url = format!("ws://{addr}/ws");
    let deadline = Instant::now() + WAIT;
    loop {
        let (first, closed, _ws) = try_connect(&url).await;
        if matches!(first, Some(ServerMsg::Hello { .. })) && !closed {
            break;
        }
        assert!(Instant::now() < deadline, "{first:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The first-request deadline is over once the request arrived: a session lives on.
    let mut alice = Client::login_url(&url, "alice").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    alice.publish("after-the-deadline").await;
}
