//! The probe payload every simulated publisher sends: Opus-sized, with a valid Opus TOC byte, and
//! carrying what receivers need to measure loss, latency and jitter.
//!
//! Layout (big endian):
//!
//! ```text
//! 0      1..4   4..8          8..12   12..20            20..len
//! TOC    "HDL"  publisher id  seq     send time (µs)    padding (0x55)
//! ```
//!
//! The send time counts microseconds from the run's epoch (one `Instant` shared by every client of
//! the run, which all live in one process), so receiver minus sender is the one-way latency on
//! loopback. The length varies with the sequence number between [`MIN_LEN`] and [`MAX_LEN`] bytes,
//! the range of 20 ms Opus voice frames.

/// The Opus TOC byte: config 15 (hybrid, fullband, 20 ms), mono, one frame per packet: what a
/// 48 kHz voice encoder with in-band FEC emits.
pub const OPUS_TOC: u8 = 15 << 3;

/// Marks our payloads (and lets the B0 relay tell media from control datagrams).
pub const MAGIC: [u8; 3] = *b"HDL";

/// The header's length.
pub const HEADER_LEN: usize = 20;

/// The shortest payload.
pub const MIN_LEN: usize = 60;

/// The longest payload.
pub const MAX_LEN: usize = 120;

/// What a probe payload carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// The sending publisher's index in the run.
    pub publisher: u32,
    /// The publisher's packet counter, from 0.
    pub seq: u32,
    /// When it was sent: microseconds since the run's epoch.
    pub sent_us: u64,
}

/// The payload length for a sequence number: deterministic, spread over `MIN_LEN..=MAX_LEN`.
pub fn payload_len(seq: u32) -> usize {
    // A multiplicative hash spreads consecutive numbers over the range.
    let spread = (MAX_LEN - MIN_LEN + 1) as u32;
    let mut x = seq.wrapping_mul(0x9e37_79b1);
    x ^= x >> 15;
    x = x.wrapping_mul(0x85eb_ca6b);
    x ^= x >> 13;
    MIN_LEN + (x % spread) as usize
}

impl Probe {
    /// Writes the payload into `buf` (at least [`MAX_LEN`] bytes) and returns its length.
    pub fn write(&self, buf: &mut [u8]) -> usize {
        let len = payload_len(self.seq);
        buf[0] = OPUS_TOC;
        buf[1..4].copy_from_slice(&MAGIC);
        buf[4..8].copy_from_slice(&self.publisher.to_be_bytes());
        buf[8..12].copy_from_slice(&self.seq.to_be_bytes());
        buf[12..20].copy_from_slice(&self.sent_us.to_be_bytes());
        buf[HEADER_LEN..len].fill(0x55);
        len
    }

    /// Reads a payload; `None` when it is not one of ours.
    pub fn parse(buf: &[u8]) -> Option<Probe> {
        if buf.len() < HEADER_LEN || buf[0] != OPUS_TOC || buf[1..4] != MAGIC {
            return None;
        }
        Some(Probe {
            publisher: u32::from_be_bytes(buf[4..8].try_into().ok()?),
            seq: u32::from_be_bytes(buf[8..12].try_into().ok()?),
            sent_us: u64::from_be_bytes(buf[12..20].try_into().ok()?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut buf = [0u8; MAX_LEN];
        for seq in [0, 1, 2, 77, u32::MAX] {
            let p = Probe {
                publisher: 9,
                seq,
                sent_us: 1_234_567_890_123,
            };
            let n = p.write(&mut buf);
            assert!((MIN_LEN..=MAX_LEN).contains(&n), "{n}");
            assert_eq!(Probe::parse(&buf[..n]), Some(p));
        }
    }

    #[test]
    fn lengths_cover_the_range() {
        let lens: Vec<usize> = (0..1000).map(payload_len).collect();
        assert!(lens.iter().all(|l| (MIN_LEN..=MAX_LEN).contains(l)));
        assert!(*lens.iter().min().unwrap() < MIN_LEN + 5);
        assert!(*lens.iter().max().unwrap() > MAX_LEN - 5);
    }

    #[test]
    fn foreign_payloads_are_refused() {
        assert_eq!(Probe::parse(&[OPUS_TOC, b'H', b'D']), None);
        let mut buf = [0u8; MAX_LEN];
        let n = Probe::default_for_test().write(&mut buf);
        buf[0] = 0xfc;
        assert_eq!(Probe::parse(&buf[..n]), None);
    }

    impl Probe {
        fn default_for_test() -> Probe {
            Probe {
                publisher: 0,
                seq: 0,
                sent_us: 0,
            }
        }
    }
}
