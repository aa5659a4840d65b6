//! Sharding the SFU over cores, sans-IO: which shard a stream, an ICE username fragment and a
//! received datagram belong to (`docs/sfu.md`, "Sharding over cores").
//!
//! The media plane runs N [`Sfu`](super::Sfu)s, each on its own thread with its own tables and
//! timers, all on the one UDP port. A stream's publish PC and all its play PCs live in one shard,
//! chosen when the stream first appears by [`Placement`](super::placement::Placement) (the shard
//! with the fewest streams, then the fewest PCs, then [`stream_shard`]) and kept while the shard
//! has state of it, so forwarding never leaves it. Each shard's ICE username fragments start with
//! its index ([`ice_credentials`]), so the receiving thread's [`Router`] sends a STUN check to its
//! shard by the server half of `USERNAME`; every other datagram goes by its source address, which
//! the router learns from the shards: a shard reports an address once a connectivity check from it
//! passed (message integrity included), so what a stranger sends never teaches the router. The
//! shard still checks everything itself, as a lone SFU does.

use std::collections::HashMap;
use std::net::SocketAddr;

use huddle_proto::{AppId, StreamId};
use str0m::IceCreds;

/// The most shards (the ufrag prefix is one byte, two hex digits).
pub const MAX_SHARDS: usize = 256;

/// Addresses the [`Router`] remembers per generation (it keeps two: see [`Router`]).
pub const ROUTES_PER_GENERATION: usize = 1 << 16;

/// Fresh ICE credentials for a PC of shard `shard`: str0m's random ones, with the username
/// fragment's first two characters replaced by the shard as two lowercase hex digits (14 random
/// characters remain, far above ICE's 24 bits).
pub fn ice_credentials(shard: usize) -> IceCreds {
    let mut creds = IceCreds::new();
    let rest = creds.ufrag.get(2..).unwrap_or_default();
    creds.ufrag = format!("{:02x}{rest}", shard % MAX_SHARDS);
    creds
}

/// The shard whose PCs use the ICE username fragment `ufrag` (its first two characters as hex),
/// if it has that form.
pub fn ufrag_shard(ufrag: &str) -> Option<usize> {
    let prefix = ufrag.get(..2)?;
    if !prefix
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    u8::from_str_radix(prefix, 16).ok().map(usize::from)
}

/// A stream's hashed shard among `shards`: FNV-1a of the AppID and the stream ID. Placement's
/// last tie-break ([`Placement::route`](super::placement::Placement::route)), once the shards
/// have as many streams and PCs as each other; it does not by itself say where a stream lives.
pub fn stream_shard(app: AppId, stream_id: &StreamId, shards: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in app
        .get()
        .to_le_bytes()
        .iter()
        .chain(stream_id.as_str().as_bytes())
    {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % shards.max(1) as u64) as usize
}

/// The USERNAME attribute of a STUN message, if it has one. Only what routing needs is read
/// (header, attribute framing): the shard parses the message fully and checks its integrity.
fn stun_username(m: &[u8]) -> Option<&str> {
    const MAGIC: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
    const USERNAME: u16 = 0x0006;
    if m.len() < 20 || m[4..8] != MAGIC || usize::from(u16::from_be_bytes([m[2], m[3]])) != m.len() - 20 {
        return None;
    }
    let mut attrs = &m[20..];
    while attrs.len() >= 4 {
        let kind = u16::from_be_bytes([attrs[0], attrs[1]]);
        let len = usize::from(u16::from_be_bytes([attrs[2], attrs[3]]));
        let value = attrs.get(4..4 + len)?;
        if kind == USERNAME {
            return std::str::from_utf8(value).ok();
        }
        attrs = attrs.get((4 + len).next_multiple_of(4)..)?;
    }
    None
}

/// The shard among `shards` of a STUN message by the server's ICE username fragment (the first
/// half of its USERNAME), if it has that form. An ICE-TCP connection belongs to the shard of its
/// first message.
pub fn stun_shard(datagram: &[u8], shards: usize) -> Option<usize> {
    let (local, _) = stun_username(datagram)?.split_once(':')?;
    ufrag_shard(local).filter(|s| *s < shards)
}

/// Routes each received datagram to a shard (see the [module documentation](self)).
///
/// The address table is bounded by two generations of [`Router::new`]'s `per_generation` entries:
/// new and refreshed entries go to the young one; when it is full, the old one is dropped and the
/// young one becomes old. A lookup that hits the old generation moves the entry back to the young
/// one, so an address in use is never evicted, while one silent for a generation is.
#[derive(Debug)]
pub struct Router {
    shards: usize,
    per_generation: usize,
    young: HashMap<SocketAddr, u16>,
    old: HashMap<SocketAddr, u16>,
}

impl Router {
    /// A router over `shards` shards (1 to [`MAX_SHARDS`]) remembering at most
    /// `2 × per_generation` addresses.
    pub fn new(shards: usize, per_generation: usize) -> Router {
        Router {
            shards: shards.clamp(1, MAX_SHARDS),
            per_generation: per_generation.max(1),
            young: HashMap::new(),
            old: HashMap::new(),
        }
    }

    /// The shard `datagram` from `from` goes to, or `None` (drop it): STUN by the server's ICE
    /// username fragment, anything else by the learned address.
    pub fn route(&mut self, from: SocketAddr, datagram: &[u8]) -> Option<usize> {
        let first = *datagram.first()?;
        if first < 2 {
            return stun_shard(datagram, self.shards);
        }
        if let Some(s) = self.young.get(&from) {
            return Some(usize::from(*s));
        }
        let s = self.old.remove(&from)?;
        self.insert(from, s);
        Some(usize::from(s))
    }

    /// A connectivity check from `addr` passed on `shard`: its other traffic goes there.
    pub fn learn(&mut self, addr: SocketAddr, shard: usize) {
        if shard >= self.shards {
            return;
        }
        self.old.remove(&addr);
        self.insert(addr, shard as u16);
    }

    fn insert(&mut self, addr: SocketAddr, shard: u16) {
        if self.young.len() >= self.per_generation && !self.young.contains_key(&addr) {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(addr, shard);
    }

    /// Addresses remembered.
    pub fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }

    /// Whether no address is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A STUN binding request whose USERNAME is `username` (no integrity: the router does not
    /// check it, the shard does).
    fn stun(username: &str) -> Vec<u8> {
        let u = username.as_bytes();
        let padded = u.len().div_ceil(4) * 4;
        let mut m = vec![0, 1];
        m.extend_from_slice(&((4 + padded) as u16).to_be_bytes());
        m.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
        m.extend_from_slice(&[9; 12]);
        m.extend_from_slice(&[0, 6]);
        m.extend_from_slice(&(u.len() as u16).to_be_bytes());
        m.extend_from_slice(u);
        m.resize(20 + 4 + padded, 0);
        m
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    const RTP: [u8; 12] = [0x80, 111, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];

    #[test]
    fn ufrags_carry_their_shard() {
        for shard in [0, 1, 9, 10, 15, 16, 200, 255] {
            let creds = ice_credentials(shard);
            assert_eq!(creds.ufrag.len(), 16, "{creds:?}");
            assert_eq!(ufrag_shard(&creds.ufrag), Some(shard));
            assert!(creds.pass.len() >= 22);
        }
        assert_ne!(ice_credentials(3).ufrag, ice_credentials(3).ufrag);
        for bad in ["", "a", "zz12", "AB12", "-1xx", "é1"] {
            assert_eq!(ufrag_shard(bad), None, "{bad}");
        }
    }

    #[test]
    fn streams_spread_over_shards_and_stay_put() {
        let app = AppId::new(7).unwrap();
        let mut counts = [0usize; 4];
        for i in 0..400 {
            let s = StreamId::new(format!("stream-{i}")).unwrap();
            let shard = stream_shard(app, &s, 4);
            assert_eq!(shard, stream_shard(app, &s, 4));
            counts[shard] += 1;
        }
        assert!(counts.iter().all(|c| *c > 50), "{counts:?}");
        let s = StreamId::new("x").unwrap();
        assert_eq!(stream_shard(app, &s, 1), 0);
        assert_eq!(stream_shard(app, &s, 0), 0);
    }

    #[test]
    fn stun_goes_to_its_shard_by_ufrag_and_teaches_nothing() {
        let mut r = Router::new(3, 16);
        let u1 = ice_credentials(1).ufrag;
        let u2 = ice_credentials(2).ufrag;
        assert_eq!(r.route(addr(1000), &stun(&format!("{u1}:abcd"))), Some(1));
        assert_eq!(r.route(addr(1000), &stun(&format!("{u2}:abcd"))), Some(2));
        // Routing a check learns nothing: the shard reports the address once the check passed.
        assert_eq!(r.route(addr(1000), &RTP), None);
        assert!(r.is_empty());
        // A shard that does not exist, a ufrag of another form, no USERNAME, no colon.
        assert_eq!(
            r.route(addr(1000), &stun(&format!("{}:abcd", ice_credentials(3).ufrag))),
            None
        );
        assert_eq!(r.route(addr(1000), &stun("zzzzzzzz:abcd")), None);
        assert_eq!(r.route(addr(1000), &stun(&u1)), None);
        let mut no_user = stun("ab");
        no_user.truncate(20);
        no_user[2..4].copy_from_slice(&[0, 0]);
        assert_eq!(r.route(addr(1000), &no_user), None);
    }

    #[test]
    fn other_datagrams_go_by_learned_address() {
        let mut r = Router::new(2, 16);
        assert_eq!(r.route(addr(1), &RTP), None);
        r.learn(addr(1), 1);
        r.learn(addr(2), 0);
        assert_eq!(r.route(addr(1), &RTP), Some(1));
        assert_eq!(r.route(addr(1), &[22; 40]), Some(1)); // DTLS
        assert_eq!(r.route(addr(2), &RTP), Some(0));
        assert_eq!(r.route(addr(3), &RTP), None);
        // A newer check from the same address on another shard takes it over.
        r.learn(addr(1), 0);
        assert_eq!(r.route(addr(1), &RTP), Some(0));
        // A shard that does not exist is not learned.
        r.learn(addr(4), 2);
        assert_eq!(r.route(addr(4), &RTP), None);
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn the_table_is_bounded_and_evicts_the_silent() {
        let mut r = Router::new(2, 4);
        for p in 0..4 {
            r.learn(addr(p), 1);
        }
        // The young generation is full: the next one starts a new one.
        r.learn(addr(4), 0);
        assert_eq!(r.len(), 5);
        // Address 0 is in use: a lookup moves it to the young generation.
        assert_eq!(r.route(addr(0), &RTP), Some(1));
        for p in 5..8 {
            r.learn(addr(p), 0);
        }
        // Generation full again: 1, 2 and 3 (silent) are gone; 0 (in use) is not.
        r.learn(addr(8), 0);
        assert!(r.len() <= 8);
        for p in 1..4 {
            assert_eq!(r.route(addr(p), &RTP), None, "{p}");
        }
        assert_eq!(r.route(addr(0), &RTP), Some(1));
        for p in [4, 7, 8] {
            assert_eq!(r.route(addr(p), &RTP), Some(0), "{p}");
        }
        // However many addresses come, at most two generations are kept.
        for p in 100..10_000 {
            r.learn(addr(p), 1);
            assert!(r.len() <= 8);
        }
    }

    #[test]
    fn junk_is_dropped() {
        let mut r = Router::new(2, 16);
        r.learn(addr(1), 1);
        let junk: Vec<Vec<u8>> = vec![
            vec![],
            vec![0],
            vec![1; 19],
            vec![0; 20],
            vec![1; 1500],
            (0..=255).collect(),
        ];
        for j in &junk {
            // STUN-looking junk goes nowhere, even from a known address.
            assert_eq!(r.route(addr(1), j), None, "{j:?}");
            assert_eq!(r.route(addr(2), j), None, "{j:?}");
        }
        // Non-STUN junk from a known address goes to its shard (which drops it).
        assert_eq!(r.route(addr(1), &[0xff; 10]), Some(1));
        assert_eq!(r.route(addr(2), &[0xff; 10]), None);
    }
}
