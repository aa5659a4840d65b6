//! End-to-end media tests: real WebRTC (the str0m clients of `tests/common/`) over UDP on 127.0.0.1 through a
//! [`BackgroundServer`], negotiated over the signaling WebSocket.
//!
//! The publisher sends Opus-shaped RTP packets (a valid TOC byte and random bytes; the encoder
//! lives in another crate) at 50 per second; players check that they receive the same payloads,
//! in order. Every client peer connection has its own UDP socket, as browsers do.

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::*;
use futures_util::SinkExt;
use huddle_proto::{ClientMsg, ErrorCode, MediaRole, PeerState, ServerMsg};
use huddle_server::BackgroundServer;
use rand::Rng;
use tokio_tungstenite::tungstenite::Message;

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

/// A client that declares `setup_active` (as the SDK and huddle.js do) is answered as the DTLS
/// client, publisher and player; one from before it, which does not, is answered as the DTLS
/// server, as before. Media flows through the server either way, between the two kinds too.
#[tokio::test]
async fn the_dtls_role_follows_what_the_login_declared() {
    let server = server();
    for (publisher_new, player_new) in [(true, false), (false, true)] {
        let login = |new: bool, user: &'static str| {
            let server = &server;
            async move {
                if new {
                    Client::login(server, user).await
                } else {
                    Client::login_older(server, user).await
                }
            }
        };
        let stream = format!("roles-{publisher_new}");
        let mut alice = login(publisher_new, "alice").await;
        let mut bob = login(player_new, "bob").await;
        let role = |new: bool| if new { "a=setup:active" } else { "a=setup:passive" };
        alice.publish(&stream).await;
        let (mut publisher, offer) = Peer::new(MediaRole::Publish);
        assert!(offer.contains("a=setup:actpass"), "{offer}");
        let answer = alice.offer(&stream, MediaRole::Publish, offer).await.unwrap();
        assert!(answer.contains(role(publisher_new)), "{answer}");
        publisher.accept(&answer);
        assert!(bob.play(&stream).await);
        let (mut player, offer) = Peer::new(MediaRole::Play);
        let answer = bob.offer(&stream, MediaRole::Play, offer).await.unwrap();
        assert!(answer.contains(role(player_new)), "{answer}");
        player.accept(&answer);
        connect(&mut [&mut publisher, &mut player]).await;
        alice.media_up(&stream, MediaRole::Publish).await;
        bob.media_up(&stream, MediaRole::Play).await;
        let sent = stream_audio(&mut [&mut publisher, &mut player], 50).await;
        assert_in_order(&sent, &player.got);
        let seq = alice.next_seq();
        alice.ok(ClientMsg::Logout { seq }).await;
        let seq = bob.next_seq();
        bob.ok(ClientMsg::Logout { seq }).await;
    }
}

/// Sends `msg` without waiting for its reply.
async fn send(c: &mut Client, msg: ClientMsg) {
    c.ws.send(Message::text(msg.encode())).await.unwrap();
}

/// `publish` and its `media_offer` sent together; returns the offer's request number.
async fn publish_with_offer(c: &mut Client, stream: &str, sdp: String) -> u32 {
    let seq = c.next_seq();
    send(
        c,
        ClientMsg::Publish {
            seq,
            stream_id: sid(stream),
            extra_info: String::new(),
        },
    )
    .await;
    let offer = c.next_seq();
    c.send_offer(offer, stream, MediaRole::Publish, sdp).await;
    offer
}

/// The reply to request `seq`: `Ok` or the error code.
async fn reply_to(c: &mut Client, seq: u32) -> Result<(), ErrorCode> {
    let m = c
        .wait_for(
            |m| matches!(m, ServerMsg::Ok { seq: s } | ServerMsg::Error { seq: Some(s), .. } if *s == seq),
        )
        .await;
    match m {
        ServerMsg::Ok { .. } => Ok(()),
        ServerMsg::Error { code, .. } => Err(code),
        _ => unreachable!(),
    }
}

/// The SDKs send a stream's `media_offer` right behind its `publish` or `play`, without
/// waiting for the reply, and the player also before the stream is published: the server
/// answers the publish offer once the publish is decided, holds the play offer until the
/// stream is published (then the media plane holds it until the publisher's media is
/// negotiated), and media flows. An offer sent with a refused publish is refused with the
/// publish's own code; a held play offer is refused when a newer one replaces it or the play
/// stops.
#[tokio::test]
async fn offers_sent_with_their_publish_or_play_are_answered_in_order() {
    let server = server();
    let mut alice = Client::login(&server, "alice").await;
    let mut bob = Client::login(&server, "bob").await;
    let mut carol = Client::login(&server, "carol").await;

    // Bob plays before Alice publishes, his offer with the play.
    let (mut player, offer) = Peer::new(MediaRole::Play);
    let play = bob.next_seq();
    send(
        &mut bob,
        ClientMsg::Play {
            seq: play,
            stream_id: sid("s1"),
        },
    )
    .await;
    let play_offer = bob.next_seq();
    bob.send_offer(play_offer, "s1", MediaRole::Play, offer).await;
    assert_eq!(reply_to(&mut bob, play).await, Ok(()));
    assert!(!bob.wait_play_update("s1").await);
    // Held, not refused: a ping sent behind it is answered, and no reply to the offer yet.
    bob.ping().await;
    assert!(
        !bob.events
            .iter()
            .any(|m| matches!(m, ServerMsg::MediaAnswer { .. } | ServerMsg::Error { .. })),
        "{:?}",
        bob.events
    );

    // Alice publishes with her offer: `ok`, then the answer.
    let (mut publisher, offer) = Peer::new(MediaRole::Publish);
    let publish_offer = publish_with_offer(&mut alice, "s1", offer).await;
    assert_eq!(reply_to(&mut alice, publish_offer - 1).await, Ok(()));
    let answer = alice
        .offer_reply(publish_offer)
        .await
        .expect("the publish offer is answered");
    publisher.accept(&answer);
    // Bob hears the stream is there, and his held offer is answered.
    assert!(bob.wait_play_update("s1").await);
    let answer = bob
        .offer_reply(play_offer)
        .await
        .expect("the held play offer is answered");
    player.accept(&answer);
    connect(&mut [&mut publisher, &mut player]).await;
    alice.media_up("s1", MediaRole::Publish).await;
    bob.media_up("s1", MediaRole::Play).await;
    let sent = stream_audio(&mut [&mut publisher, &mut player], 50).await;
    assert_in_order(&sent, &player.got);

    // An offer that answers the news of the stream, arriving after it went away again, is
    // refused as before (the client offers again on the next `play_update`)...
    let (_, offer) = Peer::new(MediaRole::Play);
    alice.unpublish("s1").await;
    assert!(!bob.wait_play_update("s1").await);
    assert_eq!(
        bob.offer("s1", MediaRole::Play, offer).await,
        Err(ErrorCode::STREAM_NOT_FOUND)
    );
    // ... while one sent with a new play is held again, and answered when the stream is back.
    assert!(!bob.play("s1").await);
    let (_, offer) = Peer::new(MediaRole::Play);
    let again = bob.next_seq();
    bob.send_offer(again, "s1", MediaRole::Play, offer).await;
    bob.ping().await;
    let (_, offer) = Peer::new(MediaRole::Publish);
    let republished = publish_with_offer(&mut alice, "s1", offer).await;
    assert!(alice.offer_reply(republished).await.is_ok());
    assert!(bob.wait_play_update("s1").await);
    assert!(bob.offer_reply(again).await.is_ok());

    // Carol tries to publish the same ID with her offer: both refused with the publish's code.
    let (_, offer) = Peer::new(MediaRole::Publish);
    let refused = publish_with_offer(&mut carol, "s1", offer).await;
    assert_eq!(
        reply_to(&mut carol, refused - 1).await,
        Err(ErrorCode::STREAM_ID_EXISTS)
    );
    assert_eq!(carol.offer_reply(refused).await, Err(ErrorCode::STREAM_ID_EXISTS));
    // A publish of another stream accepted between them does not change that.
    let taken = carol.next_seq();
    let own = carol.next_seq();
    for (seq, stream) in [(taken, "s1"), (own, "c1")] {
        send(
            &mut carol,
            ClientMsg::Publish {
                seq,
                stream_id: sid(stream),
                extra_info: String::new(),
            },
        )
        .await;
    }
    let (offers, mut sdps) = (
        [carol.next_seq(), carol.next_seq()],
        [Peer::new(MediaRole::Publish).1, Peer::new(MediaRole::Publish).1],
    );
    for (seq, stream) in offers.iter().zip(["s1", "c1"]) {
        let sdp = std::mem::take(&mut sdps[usize::from(stream == "c1")]);
        carol.send_offer(*seq, stream, MediaRole::Publish, sdp).await;
    }
    assert_eq!(
        reply_to(&mut carol, taken).await,
        Err(ErrorCode::STREAM_ID_EXISTS)
    );
    assert_eq!(reply_to(&mut carol, own).await, Ok(()));
    assert_eq!(
        carol.offer_reply(offers[0]).await,
        Err(ErrorCode::STREAM_ID_EXISTS)
    );
    assert!(carol.offer_reply(offers[1]).await.is_ok());
    // Without a publish before it, an offer is refused as before.
    let (_, offer) = Peer::new(MediaRole::Publish);
    assert_eq!(
        carol.offer("s2", MediaRole::Publish, offer).await,
        Err(ErrorCode::STREAM_NOT_FOUND)
    );

    // A held play offer replaced by a newer one is refused (1009007); stopping the play
    // refuses the newer one (1004002).
    assert!(!carol.play("later").await);
    let first = carol.next_seq();
    let (_, offer) = Peer::new(MediaRole::Play);
    carol.send_offer(first, "later", MediaRole::Play, offer).await;
    let second = carol.next_seq();
    let (_, offer) = Peer::new(MediaRole::Play);
    carol.send_offer(second, "later", MediaRole::Play, offer).await;
    assert_eq!(
        carol.offer_reply(first).await,
        Err(ErrorCode::MEDIA_OFFER_INVALID)
    );
    let seq = carol.next_seq();
    carol
        .ok(ClientMsg::StopPlay {
            seq,
            stream_id: sid("later"),
        })
        .await;
    assert_eq!(carol.offer_reply(second).await, Err(ErrorCode::STREAM_NOT_FOUND));
    let stats = server.media_stats();
    assert_eq!(
        stats.pcs_opened, 5,
        "only the offers answered opened a connection: {stats:?}"
    );
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
    bob.ping().await;
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

/// Ten players get what one publisher sends at 500 packets per second over real UDP, with the
/// media shards as configured by default (one per CPU): at most 1 % lost on a busy machine.
/// What it costs the server per forwarded packet is a benchmark, not a test: `scripts/bench.sh`
/// (B1, server CPU per forwarded packet over UDP, `docs/benchmarks.md`) and, for the SFU core
/// alone, `benches/forward.rs`.
#[tokio::test]
async fn ten_players_get_500_packets_per_second_over_udp() {
    let (players_n, packets) = (10, 500);
    let mut config = config();
    config.media_workers = 0;
    let server = BackgroundServer::start(config).unwrap();
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
    let before = server.media_stats();
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
    let forwarded = server.media_stats().rtp_forwarded - before.rtp_forwarded;
    let received: usize = players.iter().map(|p| p.got.len()).sum();
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

/// The shard of the server's PC from its answer: the first two characters of its ICE username
/// fragment.
fn answer_shard(answer: &str) -> usize {
    let ufrag = answer
        .lines()
        .find_map(|l| l.trim_end().strip_prefix("a=ice-ufrag:"))
        .expect("an ICE username fragment");
    huddle_server::sfu::shard::ufrag_shard(ufrag).expect("a shard prefix")
}

/// Two media shards on the one UDP port: streams land on both (placement by load: four streams
/// split two and two), each stream's publisher and player share the stream's shard (the server's
/// answers say which: the shard is the prefix of each PC's ICE username fragment), media flows on
/// every stream at once, and a session's end closes its PCs on every shard.
#[tokio::test]
async fn streams_on_two_shards() {
    let mut config = config();
    config.media_workers = 2;
    let server = BackgroundServer::start(config).unwrap();
    let streams: Vec<String> = (0..4).map(|i| format!("sh{i}")).collect();
    let mut alice = Client::login(&server, "alice").await;
    let mut bob = Client::login(&server, "bob").await;
    let mut publishers = Vec::new();
    let mut players = Vec::new();
    let mut per_shard = [0; 2];
    for name in &streams {
        alice.publish(name).await;
        let (mut publisher, offer) = Peer::new(MediaRole::Publish);
        let answer = alice.offer(name, MediaRole::Publish, offer).await.unwrap();
        let shard = answer_shard(&answer);
        per_shard[shard] += 1;
        publisher.accept(&answer);
        assert!(bob.play(name).await);
        let (mut player, offer) = Peer::new(MediaRole::Play);
        let answer = bob.offer(name, MediaRole::Play, offer).await.unwrap();
        assert_eq!(
            answer_shard(&answer),
            shard,
            "{name}: the player's PC is on its stream's shard"
        );
        player.accept(&answer);
        publishers.push(publisher);
        players.push(player);
    }
    // The least-loaded shard takes each new stream (fewest streams first).
    assert_eq!(per_shard, [2, 2], "four streams on two shards");
    {
        let mut all: Vec<&mut Peer> = publishers.iter_mut().chain(players.iter_mut()).collect();
        connect(&mut all).await;
    }
    for name in &streams {
        alice.media_up(name, MediaRole::Publish).await;
        bob.media_up(name, MediaRole::Play).await;
    }
    // Every publisher sends 50 packets at 50 a second, all at once.
    let mut sent = vec![Vec::new(); streams.len()];
    let start = Instant::now();
    while sent[0].len() < 50 {
        let now = Instant::now();
        if now >= start + Duration::from_millis(20 * sent[0].len() as u64) {
            for (p, s) in publishers.iter_mut().zip(&mut sent) {
                let payload = opus_payload();
                p.send_audio(&payload, now);
                s.push(payload);
            }
        }
        for p in publishers.iter_mut().chain(players.iter_mut()) {
            p.step(now);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    {
        let mut all: Vec<&mut Peer> = publishers.iter_mut().chain(players.iter_mut()).collect();
        run_until(&mut all, Duration::from_millis(300), |_| false).await;
    }
    for (player, sent) in players.iter().zip(&sent) {
        assert_in_order(sent, &player.got);
    }
    let stats = server.media_stats();
    assert_eq!((stats.pcs_opened, stats.pcs_connected), (8, 8), "{stats:?}");
    assert_eq!(stats.dropped_overload, 0, "{stats:?}");

    // Alice's session ends: the shards close her publish PCs and the players' of her streams.
    let seq = alice.next_seq();
    alice.ok(ClientMsg::Logout { seq }).await;
    for name in &streams {
        assert_eq!(
            bob.wait_media_state(name, MediaRole::Play).await,
            (PeerState::Closed, ErrorCode::STREAM_NOT_FOUND)
        );
    }
    assert_eq!(server.media_stats().pcs_closed, 8);
}

/// The answer's origin line (`o=`) names neither str0m nor a version of it.
fn assert_answer_names_no_library(sdp: &str) {
    let origin = sdp.lines().find(|l| l.starts_with("o=")).expect("an origin line");
    assert!(origin.starts_with("o=- "), "{origin}");
    assert!(!sdp.to_lowercase().contains("str0m"), "{sdp}");
}

/// A refused offer is answered in the project's own words: no parser positions, memory addresses,
/// module paths or library internals, whatever the offer held.
#[tokio::test]
async fn refused_offers_leak_no_internals() {
    let server = server();
    let mut alice = Client::login(&server, "alice").await;
    alice.publish("s1").await;
    let (_, good) = Peer::new(MediaRole::Publish);
    let offers = [
        "garbage\u{0}\u{1}".to_string(),
        "v=0\r\nnonsense".to_string(),
        String::new(),
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n".to_string(),
        good.replace("a=fingerprint", "a=fingerprnt"),
        good.replace("a=ice-ufrag", "a=ice-ufrg"),
        good.replace("opus", "speex"),
        "x".repeat(40_000),
    ];
    let mut answered = 0;
    for sdp in offers.into_iter().chain(std::iter::once(good.clone())) {
        let seq = alice.next_seq();
        alice.send_offer(seq, "s1", MediaRole::Publish, sdp.clone()).await;
        let m = alice
            .wait_for(|m| matches!(m, ServerMsg::MediaAnswer { seq: s, .. } | ServerMsg::Error { seq: Some(s), .. } if *s == seq))
            .await;
        let (code, message) = match m {
            ServerMsg::Error { code, message, .. } => (code, message),
            // An offer that is still answered is not a refusal; its answer names no library.
            ServerMsg::MediaAnswer { sdp, .. } => {
                assert_answer_names_no_library(&sdp);
                answered += 1;
                continue;
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(code, ErrorCode::MEDIA_OFFER_INVALID, "{message}");
        assert_no_internals(&message, &sdp[..sdp.len().min(40)]);
    }
    assert!(answered >= 1, "the good offer was not answered");
}
