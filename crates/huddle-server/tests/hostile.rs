//! Hostile input against a running server: a flood of junk UDP at the media port while a real
//! call runs (its loss compared with the same call without the flood), malformed and oversized
//! signaling from many connections, and a connection flood from one address against the
//! per-address limits (`docs/security.md`).
//!
//! The str0m client and the signaling helpers are `tests/common/` (shared with `tests/media.rs`).

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use huddle_proto::{
    AppId, Auth, ClientMsg, ErrorCode, Login, MediaRole, PROTOCOL_VERSION, RoomId, ServerMsg, User, UserId,
};
use huddle_server::{BackgroundServer, ServerConfig, test_app};
use rand::Rng;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

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
        assert_sent_in_order(&sent, &p.got);
        got += p.got.len();
    }
    // Signaling still answers.
    bob.ping().await;
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

/// Sends `text` and returns the one reply (an error), whose message names no internals.
async fn expect_error(ws: &mut Ws, msg: Message) -> ErrorCode {
    let asked: String = msg.to_text().unwrap_or("(binary)").chars().take(60).collect();
    ws.send(msg).await.unwrap();
    let (msgs, _) = read_some(ws, 1, WAIT).await;
    let m = msgs.first().expect("a reply (the connection closed)");
    match m {
        ServerMsg::Error { code, message, .. } => {
            assert_no_internals(message, &asked);
            *code
        }
        _ => panic!("expected an error, got {m:?}"),
    }
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
        r#"{"type":"ping","seq":"one"}"#.into(),
        r#"{"type":"ping"}"#.into(),
        r#"{"type":7,"seq":1}"#.into(),
        r#"{"type":"login","seq":1,"protocol":1,"app_id":1,"room_id":"r","user":5,"auth":7}"#.into(),
        r#"{"type":"media_offer","seq":1,"stream_id":"s","kind":"both","sdp":""}"#.into(),
        r#"{"type":"ping","seq":1"#.into(),
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
        setup_active: false,
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
    // A connection that trickles its request head a byte at a time is closed at the same
    // deadline: what counts is the whole head (up to the blank line), not its first byte.
    use tokio::io::AsyncWriteExt;
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let trickle = async {
        for _ in 0..60 {
            if slow.write_all(b"X").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(3), trickle).await;
    assert!(
        closed_within(&mut slow, Duration::from_secs(1)).await,
        "a connection trickling its headers stays open"
    );
    // The first-request deadline is over once the request arrived: a session lives on.
    let mut alice = Client::login_url(&url, "alice").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    alice.publish("after-the-deadline").await;
}

/// A WebSocket opened by hand over TCP (the upgrade, then the server's `hello`), to send frames no
/// well-behaved client library would.
async fn raw_websocket(addr: SocketAddr) -> TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    // The 101 answer, then the hello frame (a text frame the server does not mask).
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(tcp.read_u8().await.unwrap());
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let (_, payload) = read_frame(&mut tcp).await.expect("hello");
    assert!(String::from_utf8_lossy(&payload).contains("hello"));
    tcp
}

/// Reads one server frame: its opcode and payload (`None` if the stream ends).
async fn read_frame(tcp: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let b0 = tcp.read_u8().await.ok()?;
    let b1 = tcp.read_u8().await.ok()?;
    let len = match b1 & 0x7f {
        126 => usize::from(tcp.read_u16().await.ok()?),
        127 => usize::try_from(tcp.read_u64().await.ok()?).ok()?,
        n => usize::from(n),
    };
    let mut payload = vec![0; len];
    tcp.read_exact(&mut payload).await.ok()?;
    Some((b0 & 0x0f, payload))
}

/// A client frame: `first` (FIN, RSV, opcode), `payload`, masked unless `unmasked`, with `len` as
/// its length field when given (a lie).
fn client_frame(first: u8, payload: &[u8], unmasked: bool) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut f = vec![first];
    let masked_bit = if unmasked { 0 } else { 0x80 };
    if payload.len() < 126 {
        f.push(masked_bit | payload.len() as u8);
    } else {
        f.push(masked_bit | 126);
        f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    if unmasked {
        f.extend_from_slice(payload);
    } else {
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    }
    f
}

#[tokio::test]
async fn websocket_protocol_violations_are_closed_with_their_codes() {
    use tokio::io::AsyncWriteExt;
    let server = BackgroundServer::start(config()).unwrap();
    let cases: [(&str, Vec<u8>, u16); 6] = [
        (
            "invalid UTF-8 in a text frame",
            client_frame(0x81, &[0xff, 0xfe, 0x41], false),
            1007,
        ),
        ("a reserved opcode", client_frame(0x83, b"x", false), 1002),
        ("RSV1 set", client_frame(0xc1, b"{}", false), 1002),
        ("an unmasked client frame", client_frame(0x81, b"{}", true), 1002),
        (
            "a control frame over 125 bytes",
            client_frame(0x89, &[0; 200], false),
            1002,
        ),
        (
            "a continuation with nothing to continue",
            client_frame(0x80, b"x", false),
            1002,
        ),
    ];
    for (what, frame, want) in cases {
        let mut tcp = raw_websocket(server.addr()).await;
        tcp.write_all(&frame).await.unwrap();
        let close = tokio::time::timeout(WAIT, async {
            while let Some((op, payload)) = read_frame(&mut tcp).await {
                if op == 0x8 {
                    return Some(payload);
                }
            }
            None
        })
        .await
        .unwrap_or_else(|_| panic!("{what}: no close in time"));
        let payload = close.unwrap_or_else(|| panic!("{what}: the connection ended without a close frame"));
        let code = u16::from_be_bytes([payload[0], payload[1]]);
        let reason = String::from_utf8_lossy(&payload[2..]).to_string();
        assert_eq!(code, want, "{what}: closed with {code} {reason:?}");
        assert!(
            !reason.is_empty() && reason.len() < 64,
            "{what}: reason {reason:?}"
        );
    }
    // The server is fine: a normal client still logs in.
    let mut alice = Client::login(&server, "alice").await;
    alice.publish("after-the-violations").await;
}
