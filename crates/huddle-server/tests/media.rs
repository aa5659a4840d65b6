//! End-to-end media tests: real WebRTC (str0m clients written here) over UDP on 127.0.0.1 through a
//! [`BackgroundServer`], negotiated over the signaling WebSocket.
//!
//! The publisher sends Opus-shaped RTP packets (a valid TOC byte and random bytes; the encoder
//! lives in another crate) at 50 per second; players check that they receive the same payloads,
//! in order. Every client peer connection has its own UDP socket, as browsers do.

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

const APP: u32 = 21;
const WAIT: Duration = Duration::from_secs(5);
const ROOM: &str = "media-room";

fn server() -> BackgroundServer {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut config = ServerConfig::for_tests(vec![test_app(APP)]);
    // These clients do not send heartbeats.
    config.heartbeat = Duration::from_secs(10);
    config.session_timeout = Duration::from_secs(60);
    BackgroundServer::start(config).unwrap()
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
        let (ws, _) = tokio_tungstenite::connect_async(server.ws_url()).await.unwrap();
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
        let now = Instant::now();
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
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

#[tokio::test]
async fn publish_play_stop_and_restart() {
    let server = server();
    let mut alice = Client::login(&server, "alice").await;
    let mut bob = Client::login(&server, "bob").await;

    // Offers are refused before publish / play, and bad SDP is refused.
    let (_, offer) = Peer::new(MediaRole::Publish);
    assert_eq!(
        alice.offer("s1", MediaRole::Publish, offer.clone()).await,
        Err(ErrorCode::STREAM_NOT_FOUND)
    );
    assert_eq!(
        bob.offer("s1", MediaRole::Play, offer.clone()).await,
        Err(ErrorCode::STREAM_NOT_FOUND)
    );
    alice.publish("s1").await;
    assert_eq!(
        alice
            .offer("s1", MediaRole::Publish, "v=0\r\nnonsense".into())
            .await,
        Err(ErrorCode::MEDIA_OFFER_INVALID)
    );

    let t0 = Instant::now();
    let mut publisher = start_publisher(&mut alice, "s1").await;
    assert!(bob.play("s1").await);
    let mut player = start_player(&mut bob, "s1").await;
    let negotiated = t0.elapsed();
    connect(&mut [&mut publisher, &mut player]).await;
    let connect_pub = publisher.connected_at.unwrap() - publisher.created;
    let connect_play = player.connected_at.unwrap() - player.created;
    assert_eq!(
        alice.wait_media_state("s1", MediaRole::Publish).await,
        (PeerState::Connected, ErrorCode::OK)
    );
    assert_eq!(
        bob.wait_media_state("s1", MediaRole::Play).await,
        (PeerState::Connected, ErrorCode::OK)
    );

    let sent = stream_audio(&mut [&mut publisher, &mut player], 100).await;
    let got = assert_in_order(&sent, &player.got);
    let stats = server.media_stats();
    println!(
        "negotiation of both PCs {negotiated:?}; ICE+DTLS connect: publisher {connect_pub:?}, player \
         {connect_play:?}; {got}/100 packets received; {stats:?}"
    );
    assert!(stats.rtp_forwarded >= got as u64);

    // The publisher stops: the player is told and its PC closed.
    alice.unpublish("s1").await;
    assert!(!bob.wait_play_update("s1").await);
    assert_eq!(
        bob.wait_media_state("s1", MediaRole::Play).await,
        (PeerState::Closed, ErrorCode::STREAM_NOT_FOUND)
    );
    assert!(
        run_until(&mut [&mut publisher, &mut player], WAIT, |ps| ps[1].closed).await,
        "the player's PC was not closed"
    );

    // The publisher restarts under the same ID: the player offers again and receives again.
    alice.publish("s1").await;
    assert!(bob.wait_play_update("s1").await);
    let mut publisher = start_publisher(&mut alice, "s1").await;
    let mut player = start_player(&mut bob, "s1").await;
    connect(&mut [&mut publisher, &mut player]).await;
    alice.media_up("s1", MediaRole::Publish).await;
    bob.media_up("s1", MediaRole::Play).await;
    let sent = stream_audio(&mut [&mut publisher, &mut player], 50).await;
    assert_in_order(&sent, &player.got);

    // Logout closes the session's PCs (and the players' of its streams).
    let seq = alice.next_seq();
    alice.ok(ClientMsg::Logout { seq }).await;
    assert_eq!(
        bob.wait_media_state("s1", MediaRole::Play).await,
        (PeerState::Closed, ErrorCode::STREAM_NOT_FOUND)
    );
    let stats = server.media_stats();
    assert_eq!(stats.pcs_opened, 4, "{stats:?}");
    assert_eq!(stats.pcs_closed, 4, "{stats:?}");
}

#[tokio::test]
async fn player_offers_before_the_publisher_has_media() {
    let server = server();
    let mut alice = Client::login(&server, "alice").await;
    let mut bob = Client::login(&server, "bob").await;
    assert!(!bob.play("early").await);
    let (mut player, offer) = Peer::new(MediaRole::Play);
    assert_eq!(
        bob.offer("early", MediaRole::Play, offer.clone()).await,
        Err(ErrorCode::STREAM_NOT_FOUND)
    );

    alice.publish("early").await;
    assert!(bob.wait_play_update("early").await);
    // The play offer arrives before the publisher's media offer: it waits for it.
    let seq = bob.next_seq();
    bob.send_offer(seq, "early", MediaRole::Play, offer).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut publisher = start_publisher(&mut alice, "early").await;
    let answer = bob.offer_reply(seq).await.unwrap();
    player.accept(&answer);
    connect(&mut [&mut publisher, &mut player]).await;
    // Media flows once the server says the connections are up.
    alice.media_up("early", MediaRole::Publish).await;
    bob.media_up("early", MediaRole::Play).await;
    let sent = stream_audio(&mut [&mut publisher, &mut player], 50).await;
    assert_in_order(&sent, &player.got);
}

#[tokio::test]
async fn a_player_that_stops_reading_does_not_disturb_another() {
    let server = server();
    let mut alice = Client::login(&server, "alice").await;
    let mut bob = Client::login(&server, "bob").await;
    let mut carol = Client::login(&server, "carol").await;
    alice.publish("s2").await;
    let mut publisher = start_publisher(&mut alice, "s2").await;
    assert!(bob.play("s2").await);
    assert!(carol.play("s2").await);
    let mut p1 = start_player(&mut bob, "s2").await;
    let mut p2 = start_player(&mut carol, "s2").await;
    connect(&mut [&mut publisher, &mut p1, &mut p2]).await;
    alice.media_up("s2", MediaRole::Publish).await;
    bob.media_up("s2", MediaRole::Play).await;
    carol.media_up("s2", MediaRole::Play).await;
    p2.reading = false;
    let sent = stream_audio(&mut [&mut publisher, &mut p1, &mut p2], 100).await;
    assert_in_order(&sent, &p1.got);
    assert!(p2.got.is_empty());
}

#[tokio::test]
async fn junk_datagrams_neither_crash_nor_disturb() {
    let server = server();
    let mut alice = Client::login(&server, "alice").await;
    let mut bob = Client::login(&server, "bob").await;
    alice.publish("s3").await;
    let mut publisher = start_publisher(&mut alice, "s3").await;
    assert!(bob.play("s3").await);
    let mut player = start_player(&mut bob, "s3").await;
    connect(&mut [&mut publisher, &mut player]).await;
    alice.media_up("s3", MediaRole::Publish).await;
    bob.media_up("s3", MediaRole::Play).await;

    // Junk while media flows: from a stranger, and from the player's own address (so it reaches
    // the player's PC), paced so that the kernel does not drop it before the server reads it.
    let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
    let spoofer = player.socket.try_clone().unwrap();
    let target = server.udp_addr();
    let sender = std::thread::spawn(move || {
        let mut rng = rand::thread_rng();
        let mut junk: Vec<Vec<u8>> = vec![
            vec![],
            vec![0],
            vec![0x80; 12],
            vec![0x16; 13],
            vec![0; 20],
            vec![1; 1500],
        ];
        for _ in 0..400 {
            let len = rng.gen_range(0..1400);
            let mut j: Vec<u8> = (0..len).map(|_| rng.r#gen()).collect();
            if let Some(b) = j.first_mut() {
                // Cover the STUN, DTLS and RTP/RTCP ranges of the first byte.
                *b = [0, 1, 20, 23, 128, 144, 200, 255][rng.gen_range(0..8)];
            }
            junk.push(j);
        }
        for j in &junk {
            let _ = stranger.send_to(j, target);
            let _ = spoofer.send_to(j, target);
            std::thread::sleep(Duration::from_micros(2500));
        }
        junk.len() as u64
    });
    let sent = stream_audio(&mut [&mut publisher, &mut player], 100).await;
    let junk = sender.join().unwrap();
    assert_in_order(&sent, &player.got);
    let stats = server.media_stats();
    println!("{junk} junk datagrams from each of two sockets: {stats:?}");
    // Nearly all of the stranger's junk is dropped as unknown (the kernel may drop a few).
    assert!(stats.dropped_unknown >= junk * 9 / 10, "{stats:?}");
    // The server still answers signaling.
    let seq = bob.next_seq();
    bob.ws
        .send(Message::text(ClientMsg::Ping { seq }.encode()))
        .await
        .unwrap();
    bob.wait_for(|m| matches!(m, ServerMsg::Pong { seq: s, .. } if *s == seq))
        .await;
}

#[tokio::test]
async fn a_vanished_publisher_closes_its_players_after_the_grace_period() {
    let server = server();
    let mut alice = Client::login(&server, "alice").await;
    let mut bob = Client::login(&server, "bob").await;
    alice.publish("s4").await;
    let mut publisher = start_publisher(&mut alice, "s4").await;
    assert!(bob.play("s4").await);
    let mut player = start_player(&mut bob, "s4").await;
    connect(&mut [&mut publisher, &mut player]).await;
    alice.media_up("s4", MediaRole::Publish).await;
    bob.media_up("s4", MediaRole::Play).await;
    // Alice's signaling connection breaks (no logout). Media goes on while her session waits
    // for a resume...
    drop(alice);
    let sent = stream_audio(&mut [&mut publisher, &mut player], 10).await;
    assert_in_order(&sent, &player.got);
    // ...and when the grace period (300 ms in tests) is over, the player is told and closed.
    assert!(!bob.wait_play_update("s4").await);
    assert_eq!(
        bob.wait_media_state("s4", MediaRole::Play).await,
        (PeerState::Closed, ErrorCode::STREAM_NOT_FOUND)
    );
    assert!(
        run_until(&mut [&mut publisher, &mut player], WAIT, |ps| ps[0].closed
            && ps[1].closed)
        .await,
        "both client PCs saw the server close them"
    );
}

/// On-CPU time of the server's thread (the `BackgroundServer` runs signaling and media on one
/// thread), from the scheduler's statistics.
fn server_thread_cpu(server: &BackgroundServer) -> Option<Duration> {
    let name = format!("huddle-server-{}", server.addr().port());
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let dir = task.ok()?.path();
        let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
        // Thread names are cut to 15 bytes.
        if name.starts_with(comm.trim()) && comm.trim().len() >= 14 {
            let stat = std::fs::read_to_string(dir.join("schedstat")).ok()?;
            let ns: u64 = stat.split_whitespace().next()?.parse().ok()?;
            return Some(Duration::from_nanos(ns));
        }
    }
    None
}

/// Ten players get what one publisher sends at 500 packets per second over real UDP, and what it
/// costs the server (syscalls included): 1 publisher, 10 players (`HUDDLE_BENCH_PLAYERS`), 500
/// packets (`HUDDLE_BENCH_PACKETS`). For the cost, run it with
/// `cargo test -p huddle-server --release --test media -- --nocapture cpu_per_forwarded`.
#[tokio::test]
async fn cpu_per_forwarded_packet_over_udp() {
    // HUDDLE_BENCH_PLAYERS overrides the number of players.
    let players_n: usize = std::env::var("HUDDLE_BENCH_PLAYERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let packets: usize = std::env::var("HUDDLE_BENCH_PACKETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let server = server();
    let mut alice = Client::login(&server, "alice").await;
    alice.publish("load").await;
    let mut publisher = start_publisher(&mut alice, "load").await;
    let mut clients = Vec::new();
    let mut players = Vec::new();
    for i in 0..players_n {
        let mut c = Client::login(&server, &format!("p{i}")).await;
        assert!(c.play("load").await);
        players.push(start_player(&mut c, "load").await);
        clients.push(c);
    }
    {
        let mut all: Vec<&mut Peer> = std::iter::once(&mut publisher)
            .chain(players.iter_mut())
            .collect();
        connect(&mut all).await;
    }
    let before = (
        server_thread_cpu(&server).expect("schedstat"),
        server.media_stats(),
    );
    let start = Instant::now();
    let mut sent = 0;
    while sent < packets {
        let now = Instant::now();
        if now >= start + Duration::from_millis(2 * sent as u64) {
            publisher.send_audio(&opus_payload(), now);
            sent += 1;
        }
        publisher.step(now);
        for p in &mut players {
            p.step(now);
        }
        tokio::task::yield_now().await;
    }
    let mut all: Vec<&mut Peer> = std::iter::once(&mut publisher)
        .chain(players.iter_mut())
        .collect();
    run_until(&mut all, Duration::from_millis(300), |_| false).await;
    let after = (server_thread_cpu(&server).unwrap(), server.media_stats());
    let forwarded = after.1.rtp_forwarded - before.1.rtp_forwarded;
    let datagrams = after.1.datagrams_in - before.1.datagrams_in;
    let cpu = after.0 - before.0;
    let received: usize = players.iter().map(|p| p.got.len()).sum();
    println!(
        "{players_n} players x {packets} packets: {forwarded} forwarded, {received} received, {datagrams} \
         datagrams in; server thread CPU {cpu:?}: {:.2} µs per forwarded packet (receive, SRTP in and out, \
         send syscalls, RTCP, ICE); {:?}",
        cpu.as_secs_f64() * 1e6 / forwarded as f64,
        after.1
    );
    // Loopback drops nothing at this rate; allow 1% for a machine busy with other work.
    let expected = (packets * players_n) as u64;
    assert!(
        forwarded * 100 >= expected * 99,
        "forwarded {forwarded} of {expected}"
    );
    assert!(
        received as u64 * 100 >= forwarded * 99,
        "received {received} of {forwarded} forwarded"
    );
}
