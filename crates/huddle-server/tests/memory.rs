//! Server memory per played stream, measured with a counting allocator (this test binary holds one
//! test, so nothing else allocates meanwhile).
//!
//! The SFU core and str0m clients exchange datagrams in memory on virtual time. After the players
//! have connected and received a few seconds of audio, the live heap is measured; then the server
//! closes every play connection while the clients stay as they are, and the heap is measured
//! again: the difference is what the server holds for those played streams.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use huddle_proto::{AppId, MediaRole, ServerMsg, StreamId};
use huddle_server::registry::SessionId;
use huddle_server::sfu::{Command, Counters, Offer, Sfu, SfuConfig};
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpWrite;
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator and only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

struct Peer {
    rtc: Rtc,
    pending: Option<SdpPendingOffer>,
    addr: SocketAddr,
    mid: Mid,
    connected: bool,
    got: usize,
}

fn peer(now: Instant, port: u16, dir: Direction) -> (Peer, String) {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut rtc = RtcConfig::new()
        .set_rtp_mode(true)
        .clear_codecs()
        .enable_opus(true, false)
        .build(now);
    rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
    let mut api = rtc.sdp_api();
    let mid = api.add_media(MediaKind::Audio, dir, None, None, None);
    let (offer, pending) = api.apply().unwrap();
    let p = Peer {
        rtc,
        pending: Some(pending),
        addr,
        mid,
        connected: false,
        got: 0,
    };
    (p, offer.to_sdp_string())
}

fn offer(sfu: &mut Sfu, now: Instant, p: &mut Peer, offer: String, session: u64, role: MediaRole) {
    sfu.handle_command(
        now,
        Command::Offer(Offer {
            session: session.to_string().parse::<SessionId>().unwrap(),
            app: AppId::new(1).unwrap(),
            stream_id: StreamId::new("m").unwrap(),
            role,
            seq: 1,
            sdp: offer,
            setup_active: true,
            red_depth: 0,
        }),
    );
    let mut answer = None;
    while let Some((_, m)) = sfu.poll_signal() {
        if let ServerMsg::MediaAnswer { sdp, .. } = m {
            answer = Some(sdp);
        }
    }
    let pending = p.pending.take().unwrap();
    p.rtc
        .sdp_api()
        .accept_answer(pending, SdpAnswer::from_sdp_string(&answer.unwrap()).unwrap())
        .unwrap();
}

fn tick(sfu: &mut Sfu, server: SocketAddr, now: Instant, peers: &mut [Peer]) {
    let mut up: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
    for p in peers.iter_mut() {
        let _ = p.rtc.handle_input(Input::Timeout(now));
        drain(p, &mut up);
    }
    for (from, bytes) in up.drain(..) {
        sfu.handle_datagram(now, from, &bytes);
    }
    if sfu.poll_timeout().is_some_and(|t| t <= now) {
        sfu.handle_timeout(now);
    }
    while let Some(t) = sfu.poll_transmit() {
        if let Some(p) = peers.iter_mut().find(|p| p.addr == t.destination)
            && let Ok(r) = Receive::new(Protocol::Udp, server, p.addr, &t.contents)
        {
            let _ = p.rtc.handle_input(Input::Receive(now, r));
            drain(p, &mut up);
        }
    }
    for (from, bytes) in up {
        sfu.handle_datagram(now, from, &bytes);
    }
    while sfu.poll_signal().is_some() {}
}

fn drain(p: &mut Peer, out: &mut Vec<(SocketAddr, Vec<u8>)>) {
    while let Ok(o) = p.rtc.poll_output() {
        match o {
            Output::Transmit(t) => out.push((p.addr, t.contents.into())),
            Output::Timeout(_) => return,
            Output::Event(Event::Connected) => p.connected = true,
            Output::Event(Event::RtpPacket(_)) => p.got += 1,
            Output::Event(_) => {}
        }
    }
}

#[test]
fn server_memory_per_played_stream() {
    const PLAYERS: usize = 50;
    let server: SocketAddr = "127.0.0.1:7882".parse().unwrap();
    let mut sfu = Sfu::new(SfuConfig::new(server), Arc::new(Counters::default()));
    let mut now = Instant::now();
    let mut peers = Vec::new();
    let (mut publisher, o) = peer(now, 20_000, Direction::SendOnly);
    offer(&mut sfu, now, &mut publisher, o, 1, MediaRole::Publish);
    peers.push(publisher);
    for i in 0..PLAYERS {
        let (mut p, o) = peer(now, 20_001 + i as u16, Direction::RecvOnly);
        offer(&mut sfu, now, &mut p, o, 10 + i as u64, MediaRole::Play);
        peers.push(p);
    }
    for _ in 0..3000 {
        now += Duration::from_millis(1);
        tick(&mut sfu, server, now, &mut peers);
        if peers.iter().all(|p| p.connected) {
            break;
        }
    }
    assert!(peers.iter().all(|p| p.connected));
    let connected = LIVE.load(Ordering::Relaxed);
    let pt = peers[0]
        .rtc
        .codec_config()
        .params()
        .iter()
        .find(|p| p.spec().codec == Codec::Opus)
        .unwrap()
        .pt();
    // Twenty seconds of audio: every history and buffer reaches its steady size.
    for i in 0..1000u64 {
        now += Duration::from_millis(20);
        let mid = peers[0].mid;
        let payload: Vec<u8> = (0..80).map(|j| (i + j) as u8).collect();
        let mut api = peers[0].rtc.direct_api();
        api.stream_tx_by_mid(mid, None).unwrap().write_rtp(RtpWrite::new(
            pt,
            (1000 + i).into(),
            (i * 960) as u32,
            now,
            payload,
        ));
        tick(&mut sfu, server, now, &mut peers);
    }
    assert!(
        peers[1..].iter().all(|p| p.got >= 990),
        "players received the audio"
    );
    let with = LIVE.load(Ordering::Relaxed);
    for i in 0..PLAYERS {
        sfu.handle_command(
            now,
            Command::SessionGone {
                session: (10 + i as u64).to_string().parse().unwrap(),
            },
        );
    }
    while sfu.poll_transmit().is_some() {}
    while sfu.poll_signal().is_some() {}
    assert_eq!(sfu.peer_connections(), 1);
    let without = LIVE.load(Ordering::Relaxed);
    let per_player = (with - without) / PLAYERS as isize;
    println!(
        "connected, before audio: {} bytes per player more than after closing",
        (connected - without) / PLAYERS as isize
    );
    println!(
        "server memory per played stream (audio, send buffer full): {per_player} bytes ({:.1} KiB)",
        per_player as f64 / 1024.0
    );
    // DESIGN.md: at most 64 KiB per played stream.
    assert!(per_player <= 64 * 1024, "{per_player} bytes per played stream");
}
