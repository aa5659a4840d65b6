//! Deterministic tests of the SFU core on virtual time (see [`super::testkit`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use huddle_proto::{MediaRole, PeerState, ServerMsg, StreamId};
use str0m::format::Codec;
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Pt};
use str0m::rtp::RtpWrite;
use str0m::{Candidate, RtcConfig};

use super::testkit::{Peer, Sim, app, payload, session};
use super::{Command, Offer};

#[test]
fn a_publisher_reoffer_continues_the_players_stream() {
    let mut sim = Sim::new();
    let (mut pub1, offer) = Peer::new(sim.now, 10_001, MediaRole::Publish, false);
    sim.negotiate(&mut pub1, offer, 1, "s", MediaRole::Publish);
    let (mut player, offer) = Peer::new(sim.now, 10_002, MediaRole::Play, false);
    sim.negotiate(&mut player, offer, 2, "s", MediaRole::Play);
    sim.connect(&mut [&mut pub1, &mut player]);
    for i in 0..20 {
        let now = sim.now;
        pub1.send(MediaKind::Audio, &payload(i), now);
        sim.run(&mut [&mut pub1, &mut player], 20);
    }
    // The publisher restarts with a new connection (new SSRC, sequence numbers and timestamps).
    let (mut pub2, offer) = Peer::new(sim.now, 10_003, MediaRole::Publish, false);
    pub2.seq = [60_000, 0];
    sim.negotiate(&mut pub2, offer, 1, "s", MediaRole::Publish);
    sim.connect(&mut [&mut pub2, &mut player]);
    for i in 20..40 {
        let now = sim.now;
        pub2.send(MediaKind::Audio, &payload(i), now);
        sim.run(&mut [&mut pub2, &mut player], 20);
    }
    assert_eq!(player.got.len(), 40);
    let ssrc = player.got[0].header.ssrc;
    for (i, w) in player.got.windows(2).enumerate() {
        assert_eq!(*w[1].seq_no, *w[0].seq_no + 1, "sequence gap at {i}");
        let step = w[1].header.timestamp.wrapping_sub(w[0].header.timestamp);
        assert!((960..=960 * 200).contains(&step), "timestamp step {step} at {i}");
        assert_eq!(w[1].header.ssrc, ssrc);
    }
    for (i, p) in player.got.iter().enumerate() {
        assert_eq!(&p.payload[..], &payload(i)[..]);
    }
    // The old publisher connection was closed and told so (RTCP BYE, close_notify).
    assert!(sim.sfu.check_invariants().is_ok());
    assert_eq!(sim.sfu.peer_connections(), 2);
}

#[test]
fn keyframe_requests_reach_the_publisher_throttled() {
    let mut sim = Sim::new();
    let (mut publisher, offer) = Peer::new(sim.now, 10_001, MediaRole::Publish, true);
    sim.negotiate(&mut publisher, offer, 1, "v", MediaRole::Publish);
    sim.connect(&mut [&mut publisher]);
    // Some video first, so that the server knows the publisher's video stream.
    for i in 0..5 {
        let now = sim.now;
        publisher.send(MediaKind::Video, &payload(i), now);
        sim.run(&mut [&mut publisher], 30);
    }
    let (mut player, offer) = Peer::new(sim.now, 10_002, MediaRole::Play, true);
    sim.negotiate(&mut player, offer, 2, "v", MediaRole::Play);
    sim.connect(&mut [&mut publisher, &mut player]);
    sim.run(&mut [&mut publisher, &mut player], 50);
    // A new viewer of video asks for a keyframe at once.
    assert_eq!(publisher.keyframe_requests, 1);
    // A burst of requests from the player within the interval is folded into none...
    let mid = player.mid(MediaKind::Video);
    for _ in 0..10 {
        if let Some(rx) = player.rtc.direct_api().stream_rx_by_mid(mid, None) {
            rx.request_keyframe(KeyframeRequestKind::Pli);
        }
        sim.run(&mut [&mut publisher, &mut player], 20);
    }
    assert!(
        publisher.keyframe_requests <= 2,
        "{}",
        publisher.keyframe_requests
    );
    // ...and a request after the interval goes through.
    sim.run(&mut [&mut publisher, &mut player], 600);
    let before = publisher.keyframe_requests;
    if let Some(rx) = player.rtc.direct_api().stream_rx_by_mid(mid, None) {
        rx.request_keyframe(KeyframeRequestKind::Fir);
    }
    sim.run(&mut [&mut publisher, &mut player], 50);
    assert_eq!(publisher.keyframe_requests, before + 1);
    assert!(sim.counters.snapshot().keyframe_requests >= 2);
}

#[test]
fn lost_video_packets_are_retransmitted_from_the_send_buffer() {
    let mut sim = Sim::new();
    let (mut publisher, offer) = Peer::new(sim.now, 10_001, MediaRole::Publish, true);
    sim.negotiate(&mut publisher, offer, 1, "v", MediaRole::Publish);
    let (mut player, offer) = Peer::new(sim.now, 10_002, MediaRole::Play, true);
    sim.negotiate(&mut player, offer, 2, "v", MediaRole::Play);
    sim.connect(&mut [&mut publisher, &mut player]);
    // Lose every 5th video packet to the player (not the retransmissions, on the RTX payload type)
    // while the first 90 are sent; the last 10 let the player see the gaps at the end too.
    let player_addr = player.addr;
    let (vp8, rtx) = player
        .rtc
        .codec_config()
        .params()
        .iter()
        .find(|p| p.spec().codec == Codec::Vp8)
        .map(|p| (*p.pt(), p.resend().map(|r| *r)))
        .unwrap();
    assert!(rtx.is_some(), "VP8 is negotiated with RTX");
    let dropped = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counted = dropped.clone();
    let mut n = 0u32;
    sim.drop_down = Box::new(move |to, bytes| {
        let is_vp8 = bytes.len() > 12 && (128..192).contains(&bytes[0]) && (bytes[1] & 0x7f) == vp8;
        if to == player_addr && is_vp8 {
            n += 1;
            if n.is_multiple_of(5) && n <= 90 {
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return true;
            }
        }
        false
    });
    let mut sent = Vec::new();
    for i in 0..100 {
        let now = sim.now;
        let p = payload(i).repeat(3);
        publisher.send(MediaKind::Video, &p, now);
        sent.push(p);
        sim.run(&mut [&mut publisher, &mut player], 10);
    }
    sim.drop_down = Box::new(|_, _| false);
    // Past a statistics report (once a second), which carries the NACK and send counts.
    sim.run(
        &mut [&mut publisher, &mut player],
        1000 + super::pc::STATS_INTERVAL.as_millis() as u64,
    );
    assert_eq!(dropped.load(std::sync::atomic::Ordering::Relaxed), 18);
    // The metrics saw the player's NACKs and the retransmissions (a packet may be asked for
    // more than once), and no loss on the publisher's side.
    let stats = sim.counters.snapshot();
    assert!(stats.nacks_in >= 1, "{stats:?}");
    assert!((18..=36).contains(&stats.rtx_sent), "{stats:?}");
    assert_eq!(stats.rtp_lost, 0, "{stats:?}");
    assert_eq!(stats.nacks_out, 0, "{stats:?}");
    let mut got: Vec<(u64, Vec<u8>)> = player
        .got
        .iter()
        .filter(|p| p.payload.len() > 100)
        .map(|p| (*p.seq_no, p.payload.to_vec()))
        .collect();
    got.sort();
    got.dedup();
    let payloads: Vec<Vec<u8>> = got.into_iter().map(|(_, p)| p).collect();
    assert_eq!(payloads.len(), sent.len(), "lost packets were not all repaired");
    assert_eq!(payloads, sent);
}

#[test]
fn packets_lost_on_the_way_up_are_counted_and_asked_for_again() {
    let mut sim = Sim::new();
    let (mut publisher, offer) = Peer::new(sim.now, 10_001, MediaRole::Publish, true);
    sim.negotiate(&mut publisher, offer, 1, "v", MediaRole::Publish);
    let (mut player, offer) = Peer::new(sim.now, 10_002, MediaRole::Play, true);
    sim.negotiate(&mut player, offer, 2, "v", MediaRole::Play);
    sim.connect(&mut [&mut publisher, &mut player]);
    let publisher_addr = publisher.addr;
    let vp8 = *publisher
        .rtc
        .codec_config()
        .params()
        .iter()
        .find(|p| p.spec().codec == Codec::Vp8)
        .unwrap()
        .pt();
    // Lose every 10th of the publisher's first 90 video packets (not its retransmissions).
    let mut n = 0u32;
    sim.drop_up = Box::new(move |from, bytes| {
        let is_vp8 = bytes.len() > 12 && (128..192).contains(&bytes[0]) && (bytes[1] & 0x7f) == vp8;
        if from == publisher_addr && is_vp8 {
            n += 1;
            return n.is_multiple_of(10) && n <= 90;
        }
        false
    });
    for i in 0..100 {
        let now = sim.now;
        publisher.send(MediaKind::Video, &payload(i).repeat(3), now);
        sim.run(&mut [&mut publisher, &mut player], 10);
    }
    sim.run(
        &mut [&mut publisher, &mut player],
        1000 + super::pc::STATS_INTERVAL.as_millis() as u64,
    );
    let stats = sim.counters.snapshot();
    // Nine gaps seen as the next packet arrived, nine NACKs at least, and the repaired packets
    // received and forwarded: the byte counts agree for the one player.
    assert_eq!(stats.rtp_lost, 9, "{stats:?}");
    assert!(stats.nacks_out >= 9, "{stats:?}");
    assert!(stats.rtp_in >= 100, "{stats:?}");
    assert_eq!(stats.rtp_bytes_forwarded, stats.rtp_bytes_in, "{stats:?}");
    // The player saw the same gaps and may have asked for them too, but the server had
    // nothing to send again: the repairs reach it as regular packets.
    assert_eq!(stats.rtx_sent, 0, "{stats:?}");
}

#[test]
fn unpublish_closes_players_and_tells_them() {
    let mut sim = Sim::new();
    let (mut publisher, mut player) = sim.publisher_and_player(false);
    sim.signals.clear();
    sim.command(Command::ClosePublish {
        app: app(),
        stream_id: StreamId::new("s").unwrap(),
    });
    assert!(matches!(
        &sim.signals[..],
        [(s, ServerMsg::MediaState { state: PeerState::Closed, .. })] if *s == session(2)
    ));
    sim.run(&mut [&mut publisher, &mut player], 100);
    assert!(player.closed && publisher.closed, "the clients saw the close");
    assert_eq!(sim.sfu.peer_connections(), 0);
}

#[test]
fn a_client_that_vanishes_is_failed_and_told() {
    let mut sim = Sim::new();
    let (mut publisher, _player) = sim.publisher_and_player(false);
    sim.signals.clear();
    // The player goes silent (no ICE checks, no RTCP): only the publisher keeps running.
    let start = sim.now;
    for _ in 0..40_000 {
        sim.tick(&mut [&mut publisher]);
        if !sim.signals.is_empty() {
            break;
        }
    }
    let after = sim.now - start;
    assert!(
        matches!(
            &sim.signals[..],
            [(s, ServerMsg::MediaState { state: PeerState::Failed, kind: MediaRole::Play, .. })] if *s == session(2)
        ),
        "{:?}",
        sim.signals
    );
    assert!(
        after >= Duration::from_secs(10) && after <= Duration::from_secs(30),
        "{after:?}"
    );
    assert_eq!(sim.sfu.peer_connections(), 1);
}

#[test]
fn a_pc_that_never_connects_is_failed() {
    let mut sim = Sim::new();
    let (mut player, offer) = Peer::new(sim.now, 10_002, MediaRole::Publish, false);
    sim.negotiate(&mut player, offer, 2, "s", MediaRole::Publish);
    sim.signals.clear();
    for _ in 0..16_000 {
        sim.tick(&mut []);
    }
    assert!(matches!(
        &sim.signals[..],
        [(
            _,
            ServerMsg::MediaState {
                state: PeerState::Failed,
                kind: MediaRole::Publish,
                ..
            }
        )]
    ));
    assert_eq!(sim.sfu.peer_connections(), 0);
}

#[test]
fn a_play_answer_declines_what_the_publisher_does_not_send() {
    let mut sim = Sim::new();
    let (mut publisher, offer) = Peer::new(sim.now, 10_001, MediaRole::Publish, false);
    sim.negotiate(&mut publisher, offer, 1, "a", MediaRole::Publish);
    // The player offers audio and video; the stream has audio only.
    let (mut player, offer) = Peer::new(sim.now, 10_002, MediaRole::Play, true);
    sim.command(Command::Offer(Offer {
        session: session(2),
        app: app(),
        stream_id: StreamId::new("a").unwrap(),
        role: MediaRole::Play,
        seq: 9,
        sdp: offer,
        setup_active: true,
        red_depth: 0,
    }));
    let Some((_, ServerMsg::MediaAnswer { sdp, .. })) = sim.signals.pop() else {
        panic!("no answer: {:?}", sim.signals);
    };
    let video = &sdp[sdp.find("m=video").expect("the video line is answered")..];
    assert!(video.contains("a=inactive"), "{sdp}");
    let audio = &sdp[sdp.find("m=audio").unwrap()..sdp.find("m=video").unwrap()];
    assert!(
        audio.contains("a=sendonly") && audio.contains("useinbandfec=1"),
        "{sdp}"
    );
    player.accept(&sdp);
    sim.connect(&mut [&mut publisher, &mut player]);
    for i in 0..10 {
        let now = sim.now;
        publisher.send(MediaKind::Audio, &payload(i), now);
        sim.run(&mut [&mut publisher, &mut player], 20);
    }
    assert_eq!(player.got.len(), 10);

    // A play offer with video only, for the audio-only stream: refused.
    let now = sim.now;
    let mut rtc = RtcConfig::new().set_rtp_mode(true).build(now);
    rtc.add_local_candidate(Candidate::host("127.0.0.1:10003".parse().unwrap(), "udp").unwrap());
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    let (offer, _) = api.apply().unwrap();
    sim.command(Command::Offer(Offer {
        session: session(3),
        app: app(),
        stream_id: StreamId::new("a").unwrap(),
        role: MediaRole::Play,
        seq: 4,
        sdp: offer.to_sdp_string(),
        setup_active: true,
        red_depth: 0,
    }));
    assert!(
        matches!(
            sim.signals.pop(),
            Some((_, ServerMsg::Error { seq: Some(4), code, .. })) if code == huddle_proto::ErrorCode::MEDIA_OFFER_INVALID
        ),
        "{:?}",
        sim.signals
    );
    assert_eq!(sim.sfu.peer_connections(), 2);
}

#[test]
fn random_datagrams_from_anywhere_break_nothing() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut sim = Sim::new();
    let (mut publisher, mut player) = sim.publisher_and_player(true);
    let stranger: SocketAddr = "127.0.0.1:10999".parse().unwrap();
    let sources = [publisher.addr, player.addr, stranger];
    for i in 0..100 {
        let now = sim.now;
        publisher.send(MediaKind::Audio, &payload(i), now);
        for _ in 0..50 {
            let len = rng.gen_range(0..300);
            let mut junk: Vec<u8> = (0..len).map(|_| rng.r#gen()).collect();
            if let Some(b) = junk.first_mut() {
                *b = [0, 1, 20, 22, 23, 128, 129, 144, 200, 201, 255][rng.gen_range(0..11)];
            }
            if junk.len() >= 8 && junk[0] < 2 {
                // Some look like STUN with the magic cookie.
                junk[4..8].copy_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
            }
            let from = sources[rng.gen_range(0..sources.len())];
            sim.sfu.handle_datagram(now, from, &junk);
        }
        sim.run(&mut [&mut publisher, &mut player], 20);
    }
    let audio: Vec<_> = player.got.iter().filter(|p| p.payload.len() < 100).collect();
    assert_eq!(audio.len(), 100, "the stream went on");
    for (i, p) in audio.iter().enumerate() {
        assert_eq!(&p.payload[..], &payload(i)[..]);
    }
    let s = sim.counters.snapshot();
    assert!(s.dropped_unknown + s.dropped_invalid > 1000, "{s:?}");
    assert_eq!(sim.sfu.peer_connections(), 2);
}

#[test]
fn every_packet_is_delivered_at_a_high_packet_rate() {
    let mut sim = Sim::new();
    let (mut publisher, mut player) = sim.publisher_and_player(false);
    for i in 0..1000 {
        let now = sim.now;
        publisher.send(MediaKind::Audio, &payload(i), now);
        sim.run(&mut [&mut publisher, &mut player], 2);
    }
    sim.run(&mut [&mut publisher, &mut player], 100);
    assert_eq!(sim.counters.snapshot().rtp_forwarded, 1000);
    assert_eq!(player.got.len(), 1000);
}

/// Forwarded packets take str0m's send fast path (no timeout per packet), and the player's
/// connection keeps its RTCP: sender reports reach the player (lip sync and RTT need them).
#[test]
fn players_get_sender_reports_while_packets_take_the_fast_path() {
    let mut sim = Sim::new();
    let (mut publisher, mut player) = sim.publisher_and_player(false);
    for i in 0..800 {
        let now = sim.now;
        publisher.send(MediaKind::Audio, &payload(i), now);
        sim.run(&mut [&mut publisher, &mut player], 20);
    }
    assert_eq!(player.got.len(), 800);
    // str0m reports every 5 s (RFC 3550's minimum interval), as it does without the fast path.
    let mut counts: Vec<u32> = player
        .got
        .iter()
        .filter_map(|p| p.last_sender_info.map(|i| i.sender_packet_count))
        .collect();
    counts.dedup();
    assert!(counts.len() >= 3, "{counts:?}: sender reports in 16 s");
    // Each report counts the packets sent so far, fast path included.
    assert!(counts.windows(2).all(|w| w[1] >= w[0] + 200), "{counts:?}");
}

/// A publisher with RED, a player that negotiated RED and one that did not, connected through
/// the SFU on stream "r".
fn red_publisher_and_players() -> (Sim, Peer, Peer, Peer) {
    let mut sim = Sim::new();
    let (mut publisher, offer) = Peer::with_red(sim.now, 10_001, MediaRole::Publish, false, true);
    sim.negotiate(&mut publisher, offer, 1, "r", MediaRole::Publish);
    let (mut red_player, offer) = Peer::with_red(sim.now, 10_002, MediaRole::Play, false, true);
    sim.negotiate(&mut red_player, offer, 2, "r", MediaRole::Play);
    let (mut plain_player, offer) = Peer::new(sim.now, 10_003, MediaRole::Play, false);
    sim.negotiate(&mut plain_player, offer, 3, "r", MediaRole::Play);
    sim.connect(&mut [&mut publisher, &mut red_player, &mut plain_player]);
    (sim, publisher, red_player, plain_player)
}

/// A peer's negotiated Opus payload type and its RED payload type, if RED was negotiated.
fn opus_and_red_pt(peer: &Peer) -> (Pt, Option<Pt>) {
    let p = peer
        .rtc
        .codec_config()
        .params()
        .iter()
        .find(|p| p.spec().codec == Codec::Opus)
        .expect("Opus negotiated");
    (p.pt(), p.red())
}

/// What a player that did not negotiate RED got from a publisher of `frames` (20 ms apart):
/// every frame as plain Opus, with consecutive sequence numbers and timestamps 960 apart.
fn assert_plain_frames(player: &Peer, frames: &[Vec<u8>]) {
    let opus = opus_and_red_pt(player).0;
    let mut got: Vec<(u64, u32, Vec<u8>)> = player
        .got
        .iter()
        .map(|p| {
            assert_eq!(p.header.payload_type, opus);
            (*p.seq_no, p.header.timestamp, p.payload.to_vec())
        })
        .collect();
    got.sort();
    assert_eq!(got.iter().map(|g| g.2.clone()).collect::<Vec<_>>(), frames);
    for w in got.windows(2) {
        assert_eq!(w[1].0, w[0].0 + 1);
        assert_eq!(w[1].1, w[0].1.wrapping_add(960));
    }
}

/// What a player that negotiated RED got from a publisher of `frames` (20 ms apart): one
/// sequence number per frame, each packet's primary its frame, its redundant blocks the frames
/// 1, 3 and 6 before it (by number and by timestamp) that the SFU had, and every frame in some
/// packet.
fn assert_red_of_depth(player: &Peer, frames: &[Vec<u8>]) {
    use str0m::rtp::RedDecoder;

    let (seq0, ts0) = (*player.got[0].seq_no, player.got[0].header.timestamp);
    let mut carried = vec![false; frames.len()];
    for p in &player.got {
        let frame = u64::from(p.header.timestamp.wrapping_sub(ts0) / 960);
        assert_eq!(*p.seq_no - seq0, frame, "one number per frame");
        let blocks = RedDecoder::decode(&p.payload).expect("RED");
        let (primary, redundant) = blocks.split_last().unwrap();
        assert_eq!(primary.payload, &frames[frame as usize][..]);
        carried[frame as usize] = true;
        for b in redundant {
            let back = u64::from(b.timestamp_offset / 960);
            assert!(
                [1, 3, 6].contains(&back) && b.timestamp_offset % 960 == 0,
                "{back}"
            );
            assert_eq!(b.payload, &frames[(frame - back) as usize][..]);
            carried[(frame - back) as usize] = true;
        }
        assert!(
            redundant
                .windows(2)
                .all(|w| w[0].timestamp_offset > w[1].timestamp_offset)
        );
    }
    assert!(carried.iter().all(|c| *c), "{carried:?}");
}

/// A publisher's RED audio reaches a player that negotiated RED as RED of the SDK's depth, and a
/// player that did not as plain Opus: the primary blocks, and the frames lost upstream restored
/// from the redundancy of the packet after them.
#[test]
fn red_audio_is_forwarded_or_made_plain_per_player() {
    use str0m::rtp::{RedEncoder, RedundantBlock};

    let (mut sim, mut publisher, mut red_player, mut plain_player) = red_publisher_and_players();
    let (opus, red) = opus_and_red_pt(&publisher);
    let red = red.expect("the publisher negotiated RED");
    assert!(
        opus_and_red_pt(&red_player).1.is_some(),
        "the RED player negotiated RED"
    );
    assert_eq!(opus_and_red_pt(&plain_player).1, None);

    // 20 frames, two levels of redundancy; packets 10 and 11 are lost on the way up.
    let frames: Vec<Vec<u8>> = (0..20).map(payload).collect();
    let mut sent = Vec::new();
    for i in 0..20usize {
        let redundant: Vec<RedundantBlock> = (1..=2usize)
            .filter(|d| i >= *d)
            .rev()
            .map(|d| RedundantBlock {
                pt: *opus,
                timestamp_offset: 960 * d as u32,
                payload: frames[i - d].clone(),
            })
            .collect();
        let bytes = RedEncoder::encode(*opus, &frames[i], &redundant);
        if i != 10 && i != 11 {
            let now = sim.now;
            let mid = publisher.mid(MediaKind::Audio);
            let mut api = publisher.rtc.direct_api();
            let tx = api.stream_tx_by_mid(mid, None).unwrap();
            let seq = 100 + i as u64;
            tx.write_rtp(RtpWrite::new(
                red,
                seq.into(),
                (seq * 960) as u32,
                now,
                bytes.clone(),
            ));
            sent.push(bytes);
        }
        sim.run(&mut [&mut publisher, &mut red_player, &mut plain_player], 20);
    }
    sim.run(&mut [&mut publisher, &mut red_player, &mut plain_player], 200);

    // The RED player: RED on its payload type, of the SDK's depth (`red::History`): each
    // packet the frame and the ones 1, 3 and 6 before it, 10 and 11 among them.
    let red_pt = opus_and_red_pt(&red_player).1.unwrap();
    assert_eq!(red_player.got.len(), sent.len());
    assert!(red_player.got.iter().all(|p| p.header.payload_type == red_pt));
    assert_red_of_depth(&red_player, &frames);

    // The plain player: every frame, 10 and 11 restored.
    assert_plain_frames(&plain_player, &frames);
}

/// Chromium's audio-only publish (docs/quality.md, "Interop under loss"): RED with one block at
/// distance 1, and padding-only packets (bandwidth probes) on the audio stream after some
/// frames, with their timestamps. Lost upstream: frame 10 (its padding arrives), a padding of
/// frame 14 and frame 15. The players get one sequence number per frame, no padding: the RED
/// player a packet whose distance-1 block is the frame before it by number (str0m's receiver
/// restores a lost frame from it), the plain player every frame, 10 and 15 restored.
#[test]
fn padding_on_the_audio_is_dropped_and_numbered_out() {
    use str0m::rtp::{RedEncoder, RedundantBlock};

    let (mut sim, mut publisher, mut red_player, mut plain_player) = red_publisher_and_players();
    let (opus, red) = opus_and_red_pt(&publisher);
    let red = red.expect("RED negotiated");

    let frames: Vec<Vec<u8>> = (0..20).map(payload).collect();
    let mut seq = 100u64;
    let mut padding_sent = 0;
    for (i, frame) in frames.iter().enumerate() {
        let ts = (1000 + i as u32) * 960;
        let redundant: Vec<RedundantBlock> = (i > 0)
            .then(|| RedundantBlock {
                pt: *opus,
                timestamp_offset: 960,
                payload: frames[i - 1].clone(),
            })
            .into_iter()
            .collect();
        // The frame, then 0, 1 or 2 padding-only packets with its timestamp.
        let mut packets = vec![(RedEncoder::encode(*opus, frame, &redundant), i != 10 && i != 15)];
        for k in 0..i % 3 {
            packets.push((Vec::new(), !(i == 14 && k == 0)));
        }
        for (bytes, arrives) in packets {
            if arrives {
                padding_sent += usize::from(bytes.is_empty());
                let now = sim.now;
                let mid = publisher.mid(MediaKind::Audio);
                let mut api = publisher.rtc.direct_api();
                let tx = api.stream_tx_by_mid(mid, None).unwrap();
                tx.write_rtp(RtpWrite::new(red, seq.into(), ts, now, bytes));
            }
            seq += 1;
        }
        sim.run(&mut [&mut publisher, &mut red_player, &mut plain_player], 20);
    }
    sim.run(&mut [&mut publisher, &mut red_player, &mut plain_player], 200);
    assert!(padding_sent >= 10, "{padding_sent} padding packets sent");

    // The RED player: 18 packets (10 and 15 lost), no padding, one number per frame, each
    // with the frames 1, 3 and 6 before it by number and by timestamp (10 and 15 among them).
    assert_eq!(red_player.got.len(), 18);
    assert_red_of_depth(&red_player, &frames);

    // The plain player: every frame, 10 and 15 restored.
    assert_plain_frames(&plain_player, &frames);
}

/// The publisher sends frame `i` of `frames` (sequence number 100 + i, 960 ticks a frame) as
/// RED with the frames `depth` back that exist, as the SDK's publisher (1, 3, 6) or Chromium's
/// (1) does.
fn write_red_frame(
    publisher: &mut Peer,
    now: Instant,
    (opus, red): (Pt, Pt),
    frames: &[Vec<u8>],
    i: usize,
    depth: &[usize],
) {
    use str0m::rtp::{RedEncoder, RedundantBlock};

    let redundant: Vec<RedundantBlock> = depth
        .iter()
        .rev()
        .filter(|&&d| i >= d)
        .map(|&d| RedundantBlock {
            pt: *opus,
            timestamp_offset: 960 * d as u32,
            payload: frames[i - d].clone(),
        })
        .collect();
    let seq = 100 + i as u64;
    let mid = publisher.mid(MediaKind::Audio);
    let mut api = publisher.rtc.direct_api();
    let tx = api.stream_tx_by_mid(mid, None).unwrap();
    tx.write_rtp(RtpWrite::new(
        red,
        seq.into(),
        (seq * 960) as u32,
        now,
        RedEncoder::encode(*opus, &frames[i], &redundant),
    ));
}

/// A player that joins a running stream gets no redundant block from before its first packet:
/// libwebrtc's NetEq starts playing from the oldest frame in its buffer, so a first packet with
/// the frame 6 back made Chromium start 120 ms behind and accelerate that away in the first
/// words (docs/quality.md, "SDK → Chromium on a clean path"). Its depth grows with the frames
/// it has, to the SDK's 1, 3 and 6 back, from an SDK publisher (RED forwarded as it came) and
/// from Chromium's one block (RED made by the SFU) alike.
#[test]
fn a_late_player_gets_no_redundancy_from_before_its_first_packet() {
    use str0m::rtp::RedDecoder;

    for depth in [&[1usize, 3, 6][..], &[1][..]] {
        let mut sim = Sim::new();
        let (mut publisher, offer) = Peer::with_red(sim.now, 10_001, MediaRole::Publish, false, true);
        sim.negotiate(&mut publisher, offer, 1, "r", MediaRole::Publish);
        sim.connect(&mut [&mut publisher]);
        let (opus, red) = opus_and_red_pt(&publisher);
        let red = red.expect("RED negotiated");
        let (mut player, offer) = Peer::with_red(sim.now, 10_002, MediaRole::Play, false, true);
        let frames: Vec<Vec<u8>> = (0..30).map(payload).collect();
        for i in 0..frames.len() {
            if i == 10 {
                // The player joins once the stream is running.
                sim.negotiate(&mut player, offer.clone(), 2, "r", MediaRole::Play);
                sim.connect(&mut [&mut publisher, &mut player]);
            }
            write_red_frame(&mut publisher, sim.now, (opus, red), &frames, i, depth);
            sim.run(&mut [&mut publisher, &mut player], 20);
        }
        sim.run(&mut [&mut publisher, &mut player], 200);

        assert!(player.got.len() >= 15, "{depth:?}: {} packets", player.got.len());
        let (seq0, ts0) = (*player.got[0].seq_no, player.got[0].header.timestamp);
        for p in &player.got {
            let k = *p.seq_no - seq0;
            assert_eq!(u64::from(p.header.timestamp.wrapping_sub(ts0) / 960), k);
            let blocks = RedDecoder::decode(&p.payload).expect("RED");
            let backs: Vec<u64> = blocks
                .iter()
                .rev()
                .skip(1)
                .map(|b| u64::from(b.timestamp_offset / 960))
                .collect();
            let want: Vec<u64> = [1, 3, 6].into_iter().filter(|&d| d <= k).collect();
            assert_eq!(backs, want, "{depth:?}: packet {k} of the player's");
        }
    }
}

/// The redundancy a player gets depends on how far back it declares it waits for RED's copies
/// (`media_offer`'s `red_depth`): the SDK's player (6 frames) gets the frames 1, 3 and 6 back, a
/// player that declares nothing (a browser: Chromium's NetEq discards a copy that comes after
/// its playout time, docs/quality.md "Nearer RED for browser players") the frames 1, 2 and 3
/// back; from an SDK publisher (its RED forwarded as it came to the SDK's player) and from
/// Chromium's one block alike.
#[test]
fn a_player_gets_red_of_the_depth_it_declares() {
    use str0m::rtp::RedDecoder;

    for depth in [&[1usize, 3, 6][..], &[1][..]] {
        let mut sim = Sim::new();
        let (mut publisher, offer) = Peer::with_red(sim.now, 10_001, MediaRole::Publish, false, true);
        sim.negotiate(&mut publisher, offer, 1, "r", MediaRole::Publish);
        let (mut sdk, offer) = Peer::with_red(sim.now, 10_002, MediaRole::Play, false, true);
        sim.red_depth = super::red::SDK_DEPTH;
        sim.negotiate(&mut sdk, offer, 2, "r", MediaRole::Play);
        let (mut browser, offer) = Peer::with_red(sim.now, 10_003, MediaRole::Play, false, true);
        sim.red_depth = 0;
        sim.negotiate(&mut browser, offer, 3, "r", MediaRole::Play);
        sim.connect(&mut [&mut publisher, &mut sdk, &mut browser]);
        let (opus, red) = opus_and_red_pt(&publisher);
        let red = red.expect("RED negotiated");
        let frames: Vec<Vec<u8>> = (0..30).map(payload).collect();
        for i in 0..frames.len() {
            write_red_frame(&mut publisher, sim.now, (opus, red), &frames, i, depth);
            sim.run(&mut [&mut publisher, &mut sdk, &mut browser], 20);
        }
        sim.run(&mut [&mut publisher, &mut sdk, &mut browser], 200);

        for (player, distances) in [(&sdk, [1u64, 3, 6]), (&browser, [1, 2, 3])] {
            assert_eq!(player.got.len(), frames.len(), "{depth:?}");
            let (seq0, ts0) = (*player.got[0].seq_no, player.got[0].header.timestamp);
            for p in &player.got {
                let k = *p.seq_no - seq0;
                assert_eq!(u64::from(p.header.timestamp.wrapping_sub(ts0) / 960), k);
                let blocks = RedDecoder::decode(&p.payload).expect("RED");
                let (primary, redundant) = blocks.split_last().unwrap();
                assert_eq!(primary.payload, frames[k as usize]);
                let backs: Vec<u64> = redundant
                    .iter()
                    .rev()
                    .map(|b| u64::from(b.timestamp_offset / 960))
                    .collect();
                for b in redundant {
                    let back = u64::from(b.timestamp_offset / 960);
                    assert_eq!(b.payload, frames[(k - back) as usize]);
                }
                let want: Vec<u64> = distances.into_iter().filter(|&d| d <= k).collect();
                assert_eq!(
                    backs, want,
                    "{depth:?}: packet {k} to the player of {distances:?}"
                );
            }
        }
    }
}

#[test]
fn a_client_reaches_the_second_of_two_candidates() {
    // A multi-homed server: the clients cannot reach its first address, only its second.
    let first: SocketAddr = "10.0.0.1:7882".parse().unwrap();
    let second: SocketAddr = "192.168.5.1:7882".parse().unwrap();
    let mut sim = super::testkit::Sim::with_candidates(vec![first, second]);
    sim.unreachable.push(first);
    let (mut publisher, offer) = Peer::new(sim.now, 10_001, MediaRole::Publish, false);
    publisher.capture = true;
    sim.offer(1, "s", MediaRole::Publish, offer);
    let answer = sim
        .signals
        .iter()
        .find_map(|(_, m)| match m {
            ServerMsg::MediaAnswer { sdp, .. } => Some(sdp.clone()),
            _ => None,
        })
        .expect("an answer");
    sim.signals.clear();
    let candidates: Vec<&str> = answer.lines().filter(|l| l.starts_with("a=candidate")).collect();
    assert_eq!(candidates.len(), 2, "{answer}");
    assert!(candidates[0].contains("10.0.0.1 7882 typ host"), "{candidates:?}");
    assert!(
        candidates[1].contains("192.168.5.1 7882 typ host"),
        "{candidates:?}"
    );
    publisher.accept(&answer);
    let (mut player, offer) = Peer::new(sim.now, 10_002, MediaRole::Play, false);
    sim.negotiate(&mut player, offer, 2, "s", MediaRole::Play);
    sim.connect(&mut [&mut publisher, &mut player]);
    for i in 0..20 {
        let now = sim.now;
        publisher.send(MediaKind::Audio, &payload(i), now);
        sim.run(&mut [&mut publisher, &mut player], 20);
    }
    assert_eq!(player.got.len(), 20);
    // Both clients tried the first address too, and lost those checks.
    assert!(sim.lost_up >= 2, "{}", sim.lost_up);
    // Everything the SFU sent left from the address the clients reached.
    assert_eq!(sim.sources, vec![second]);
    // A check to an address that is not a candidate is dropped by the PC: no answer, no route
    // learned. The same check to the second candidate is answered, from there.
    let check = publisher
        .sent
        .iter()
        .find(|b| b.first().is_some_and(|x| *x < 2))
        .expect("a captured check")
        .clone();
    let stranger: SocketAddr = "127.0.0.1:10009".parse().unwrap();
    let now = sim.now;
    sim.sfu
        .handle_datagram_to(now, stranger, "10.9.9.9:7882".parse().unwrap(), &check);
    assert!(!sim.sfu.routes_address(stranger));
    assert!(
        sim.sfu.poll_transmit().is_none(),
        "an answer to a check to a non-candidate"
    );
    sim.sfu.handle_datagram_to(now, stranger, second, &check);
    let answer = sim
        .sfu
        .poll_transmit()
        .expect("an answer to a check to a candidate");
    assert_eq!((answer.source, answer.destination), (second, stranger));
    assert!(sim.sfu.check_invariants().is_ok());
}

/// A pull's relay PC holds its stream on its shard from the offer on (the placement table asks
/// `has_stream` after each command): before the answer comes, and until the link's session ends.
#[test]
fn a_pull_offer_holds_its_stream_until_the_link_ends() {
    let mut sim = Sim::new();
    let stream_id = StreamId::new("pulled").unwrap();
    let link = session(9);
    sim.command(Command::PullOffer {
        session: link,
        app: app(),
        stream_id: stream_id.clone(),
        local: "127.0.0.1:40000".parse().unwrap(),
    });
    assert!(
        matches!(&sim.signals[..], [(s, ServerMsg::MediaAnswer { .. })] if *s == link),
        "the relay offer: {:?}",
        sim.signals
    );
    assert!(
        sim.sfu.has_stream(app(), &stream_id),
        "forgotten between offer and answer"
    );
    sim.command(Command::SessionGone { session: link });
    assert!(!sim.sfu.has_stream(app(), &stream_id));
    assert_eq!(sim.sfu.poll_released(), Some((app(), stream_id)));
}

/// A player that mutes a track of the stream it plays receives none of it (the packets are not
/// sent, and counted), and after unmuting gets the stream again as one continuous sequence: a
/// pause, not a gap to NACK or conceal. The mute holds for a new play connection too.
#[test]
fn a_muted_play_track_is_not_sent_and_resumes_without_a_gap() {
    let mut sim = Sim::new();
    let (mut publisher, mut player) = sim.publisher_and_player(false);
    let mute = |mute| Command::MutePlay {
        session: session(2),
        app: app(),
        stream_id: StreamId::new("s").unwrap(),
        track: huddle_proto::TrackKind::Audio,
        mute,
    };
    let mut i = 0;
    let mut send = |sim: &mut Sim, publisher: &mut Peer, player: &mut Peer, n: usize| {
        for _ in 0..n {
            let now = sim.now;
            publisher.send(MediaKind::Audio, &payload(i), now);
            i += 1;
            sim.run(&mut [&mut *publisher, &mut *player], 20);
        }
    };
    send(&mut sim, &mut publisher, &mut player, 10);
    assert_eq!(player.got.len(), 10);
    sim.command(mute(true));
    send(&mut sim, &mut publisher, &mut player, 50);
    let c = sim.counters.snapshot();
    assert_eq!((player.got.len(), c.rtp_forwarded, c.rtp_muted), (10, 10, 50));
    sim.command(mute(false));
    send(&mut sim, &mut publisher, &mut player, 10);
    assert_eq!(player.got.len(), 20);
    for w in player.got.windows(2) {
        assert_eq!(
            *w[1].seq_no,
            *w[0].seq_no + 1,
            "a sequence gap the player would NACK"
        );
    }
    // The pause shows in the timestamps: about the 50 frames not sent.
    let step = player.got[10]
        .header
        .timestamp
        .wrapping_sub(player.got[9].header.timestamp);
    assert!((50 * 960..=60 * 960).contains(&step), "timestamp step {step}");
    assert_eq!(&player.got[10].payload[..], &payload(60)[..]);

    // Muted again, the player reconnects with a new offer: the new connection is muted too.
    sim.command(mute(true));
    let (mut player2, offer) = Peer::new(sim.now, 10_009, MediaRole::Play, false);
    sim.negotiate(&mut player2, offer, 2, "s", MediaRole::Play);
    sim.connect(&mut [&mut publisher, &mut player2]);
    let before = sim.counters.snapshot().rtp_muted;
    send(&mut sim, &mut publisher, &mut player2, 5);
    assert!(player2.got.is_empty());
    assert_eq!(sim.counters.snapshot().rtp_muted - before, 5);
    assert!(sim.sfu.check_invariants().is_ok());
}

/// A player's video mute holds its video back while its audio still flows; unmuting asks the
/// publisher for a keyframe, where the player's decoder starts again.
#[test]
fn an_unmuted_play_video_starts_at_a_requested_keyframe() {
    let mut sim = Sim::new();
    let (mut publisher, mut player) = sim.publisher_and_player(true);
    sim.run(&mut [&mut publisher, &mut player], 1000);
    let mute = |mute| Command::MutePlay {
        session: session(2),
        app: app(),
        stream_id: StreamId::new("s").unwrap(),
        track: huddle_proto::TrackKind::Video,
        mute,
    };
    sim.command(mute(true));
    let (before, requests) = (player.got.len(), publisher.keyframe_requests);
    for i in 0..10 {
        let now = sim.now;
        publisher.send(MediaKind::Video, &payload(i), now);
        publisher.send(MediaKind::Audio, &payload(100 + i), now);
        sim.run(&mut [&mut publisher, &mut player], 30);
    }
    // The audio came, the video did not.
    assert_eq!(player.got.len() - before, 10);
    assert_eq!(sim.counters.snapshot().rtp_muted, 10);
    sim.command(mute(false));
    sim.run(&mut [&mut publisher, &mut player], 50);
    assert_eq!(
        publisher.keyframe_requests,
        requests + 1,
        "unmuting asks for a keyframe"
    );
    let before = player.got.len();
    let now = sim.now;
    publisher.send(MediaKind::Video, &payload(20), now);
    sim.run(&mut [&mut publisher, &mut player], 50);
    assert_eq!(player.got.len() - before, 1, "the video flows again");
}

/// Whether a datagram is a STUN binding request that nominates its pair (USE-CANDIDATE).
fn nominates(bytes: &[u8]) -> bool {
    if bytes.len() < 20 || bytes[0..2] != [0x00, 0x01] {
        return false;
    }
    let mut at = 20;
    while at + 4 <= bytes.len() {
        let kind = u16::from_be_bytes([bytes[at], bytes[at + 1]]);
        let len = usize::from(u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]));
        if kind == 0x0025 {
            return true;
        }
        at += 4 + len.div_ceil(4) * 4;
    }
    false
}

/// A player whose DTLS is up before its ICE agent nominates a pair gets the stream packet by
/// packet from the keys on, along the path its DTLS took, not in one burst at the nomination.
/// Chromium nominates with its next check after the first that succeeds; when that one or its
/// answer is lost, the next comes with its ping interval (1-2 s on), and the server's DTLS
/// client (which needs only a successful check) is connected long before. str0m kept the
/// packets until there was a nominated pair and sent them together: 0.6-0.9 s of audio at
/// once, which Chromium's NetEq buffered and played up to 0.7 s late, accelerating it away
/// (docs/quality.md, "SDK → Chromium: a burst at nomination"; str0m patch 0010).
#[test]
fn a_player_gets_media_before_its_pair_is_nominated_packet_by_packet() {
    use std::cell::Cell;
    use std::rc::Rc;

    let mut sim = Sim::new();
    let (mut publisher, offer) = Peer::new(sim.now, 10_001, MediaRole::Publish, false);
    sim.negotiate(&mut publisher, offer, 1, "s", MediaRole::Publish);
    sim.connect(&mut [&mut publisher]);
    let (mut player, offer) = Peer::new(sim.now, 10_002, MediaRole::Play, false);
    let player_addr = player.addr;
    // The player's first nomination is lost; its other checks arrive.
    let lost = Rc::new(Cell::new(0));
    let count = lost.clone();
    sim.drop_up = Box::new(move |from, bytes| {
        let drop = count.get() < 1 && from == player_addr && nominates(bytes);
        count.set(count.get() + u32::from(drop));
        drop
    });
    sim.negotiate(&mut player, offer, 2, "s", MediaRole::Play);
    for i in 0..60 {
        publisher.send(MediaKind::Audio, &payload(i), sim.now);
        sim.run(&mut [&mut publisher, &mut player], 20);
    }

    assert_eq!(lost.get(), 1, "no nomination was lost");
    assert!(player.got.len() >= 30, "{} packets", player.got.len());
    // The most packets that arrived in one instant.
    let burst = player
        .got
        .chunk_by(|a, b| a.timestamp == b.timestamp)
        .map(<[_]>::len)
        .max();
    assert_eq!(burst, Some(1), "packets came together");
}
