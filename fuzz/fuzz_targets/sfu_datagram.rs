//! Arbitrary datagrams into the SFU core's `handle_datagram`, from arbitrary addresses, after a
//! real publish and play session is set up in memory (ICE, DTLS and SRTP up), so that the STUN,
//! DTLS and SRTP/SRTCP paths of connected peer connections are reached, not only the demux.
//!
//! The input is a list of records `[op, len, bytes[len]]`:
//! - raw bytes from the publisher's, the player's or a stranger's address;
//! - a datagram the publisher or player really sent (STUN checks, DTLS, SRTP, SRTCP), with fuzz
//!   bytes XORed in at an offset (so that well-formed headers carry corrupt bodies);
//! - a STUN binding request of a client with fuzz bytes after its header, from any address;
//! - virtual time passing (timers, retransmissions, consent) and real media from the publisher.
//!
//! At most 256 records a run (setting up the two connections costs more than the records, so
//! long inputs pay: run with `-len_control=0 -max_len=4096`).
//!
//! Nothing may panic and the SFU's invariants must hold throughout.
#![no_main]

use std::net::SocketAddr;
use std::time::Duration;

use huddle_proto::MediaRole;
use huddle_server::sfu::testkit::{Peer, Sim};
use libfuzzer_sys::fuzz_target;
use str0m::media::MediaKind;

fn mutate(captured: &[Vec<u8>], pick: impl Fn(&[u8]) -> bool, bytes: &[u8]) -> Option<Vec<u8>> {
    let candidates: Vec<&Vec<u8>> = captured.iter().filter(|d| pick(d)).collect();
    let (&idx, rest) = bytes.split_first()?;
    let (&off, rest) = rest.split_first().unwrap_or((&0, &[]));
    let mut d = candidates
        .get(usize::from(idx) % candidates.len().max(1))?
        .to_vec();
    if d.is_empty() {
        return None;
    }
    let start = usize::from(off) % d.len();
    for (i, b) in rest.iter().enumerate() {
        let j = (start + i) % d.len();
        d[j] ^= b;
    }
    Some(d)
}

fuzz_target!(|data: &[u8]| {
    let mut sim = Sim::new();
    let (mut publisher, offer) = Peer::new(sim.now, 10_001, MediaRole::Publish, true);
    publisher.capture = true;
    sim.negotiate(&mut publisher, offer, 1, "s", MediaRole::Publish);
    let (mut player, offer) = Peer::new(sim.now, 10_002, MediaRole::Play, true);
    (player.capture, player.keep) = (true, false);
    sim.negotiate(&mut player, offer, 2, "s", MediaRole::Play);
    sim.connect(&mut [&mut publisher, &mut player]);
    for i in 0..3u8 {
        let now = sim.now;
        publisher.send(MediaKind::Audio, &[0xf8, i, i, i], now);
        publisher.send(MediaKind::Video, &[0x90, 0x80, i, 1, 2, 3], now);
        sim.run(&mut [&mut publisher, &mut player], 5);
    }
    let stranger: SocketAddr = "127.0.0.1:40000".parse().unwrap();

    let mut rest = data;
    let mut steps = 0;
    while rest.len() >= 2 && steps < 256 {
        steps += 1;
        let op = rest[0];
        let len = usize::from(rest[1]).min(rest.len() - 2);
        let bytes = &rest[2..2 + len];
        rest = &rest[2 + len..];
        let now = sim.now;
        match op % 10 {
            0 => sim.sfu.handle_datagram(now, publisher.addr, bytes),
            1 => sim.sfu.handle_datagram(now, player.addr, bytes),
            2 => {
                // A stranger, at an address chosen by the input.
                let port = bytes.first().map_or(40000, |b| 40000 + u16::from(*b));
                let from = SocketAddr::new(stranger.ip(), port);
                sim.sfu.handle_datagram(now, from, bytes.get(1..).unwrap_or(&[]));
            }
            3 => {
                if let Some(d) = mutate(&publisher.sent, |_| true, bytes) {
                    sim.sfu.handle_datagram(now, publisher.addr, &d);
                }
            }
            4 => {
                if let Some(d) = mutate(&player.sent, |_| true, bytes) {
                    sim.sfu.handle_datagram(now, player.addr, &d);
                }
            }
            5 | 6 => {
                // A client's STUN check with its body corrupted, from its address or a stranger's.
                let from = if op % 10 == 5 { publisher.addr } else { stranger };
                if let Some(d) = mutate(&publisher.sent, |d| d.first().is_some_and(|b| *b < 2), bytes) {
                    sim.sfu.handle_datagram(now, from, &d);
                }
            }
            7 => {
                // A client's real datagram replayed from another address.
                if let Some(d) = mutate(&player.sent, |_| true, &bytes[..bytes.len().min(1)]) {
                    sim.sfu.handle_datagram(now, stranger, &d);
                }
            }
            8 => {
                // Up to 300 ms of virtual time (retransmissions, timers), in 1 ms ticks.
                let ms = bytes.first().map_or(1, |b| u64::from(*b % 16) * 20);
                sim.run(&mut [&mut publisher, &mut player], ms.max(1));
            }
            _ => {
                let kind = if bytes.first().is_some_and(|b| b & 1 == 1) {
                    MediaKind::Video
                } else {
                    MediaKind::Audio
                };
                publisher.send(kind, bytes, now);
                sim.run(&mut [&mut publisher, &mut player], 1);
            }
        }
        sim.exchange(&mut [&mut publisher, &mut player]);
        sim.drain_signals();
        sim.sfu.check_invariants().expect("SFU invariants");
        sim.sfu.handle_timeout(sim.now);
    }
    sim.now += Duration::from_millis(1);
    sim.run(&mut [&mut publisher, &mut player], 10);
});
