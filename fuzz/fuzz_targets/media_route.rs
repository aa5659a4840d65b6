//! Arbitrary datagrams from arbitrary addresses into the parsers that see a stranger's bytes
//! before any integrity check: the shard router (`sfu::shard::Router`: STUN USERNAME, address
//! table) and the RED splitter (`sfu::red`: the blocks of a RED payload and the frames they
//! recover). Nothing may panic; a route is always a valid shard; recovered frames lie strictly
//! before the packet and within `MAX_RECOVER` of it; the address table stays bounded.
//!
//! Input: byte 0 the shard count (1..=8), byte 1 the source address's last octet, byte 2 what
//! to do (route, learn, RED), bytes 3..11 the RED packet's sequence numbers, the rest the
//! datagram.
#![no_main]

use std::net::SocketAddr;

use huddle_server::sfu::red::{MAX_RECOVER, recover, split};
use huddle_server::sfu::shard::Router;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 11 {
        return;
    }
    let shards = usize::from(data[0] % 8) + 1;
    let from = SocketAddr::from(([10, 0, 0, data[1]], 5000 + u16::from(data[1])));
    let seq = u64::from(u32::from_le_bytes([data[3], data[4], data[5], data[6]]));
    let last = u64::from(u32::from_le_bytes([data[7], data[8], data[9], data[10]]));
    let datagram = &data[11..];

    let mut router = Router::new(shards, 4);
    for (i, chunk) in datagram.chunks(16).enumerate() {
        let addr = SocketAddr::from(([10, 0, 1, chunk[0]], 6000));
        if data[2] & 1 == 1 {
            router.learn(addr, i % (shards + 1));
        }
        if let Some(s) = router.route(addr, chunk) {
            assert!(s < shards);
        }
        assert!(router.len() <= 8);
    }
    if let Some(s) = router.route(from, datagram) {
        assert!(s < shards);
    }

    if let Some(packet) = split(datagram, data[2] & 0x7f) {
        let last = (data[2] & 0x80 == 0).then_some(last);
        for (s, _ts, payload) in recover(&packet, last, seq, 0) {
            assert!(s < seq && s + MAX_RECOVER >= seq, "frame {s} recovered for {seq}");
            assert!(!payload.is_empty());
        }
    }
});
