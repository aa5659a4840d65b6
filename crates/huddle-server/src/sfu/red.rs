//! RFC 2198 redundant audio (RED) at the SFU, sans IO.
//!
//! A publisher that negotiated RED (`red/48000/2`, fmtp `111/111`, as browsers and the SDK
//! offer it) sends each Opus frame as the primary block of a RED packet, with copies of the
//! previous frames as redundant blocks. Players that did not negotiate RED get the primary
//! block alone, as plain Opus; and when packets were lost between the publisher and the SFU,
//! the frames they carried are taken from the redundant blocks of the next packet that arrived
//! and forwarded to those players as well (as LiveKit's "RED primary receiver" does), so a
//! player without RED still profits from the publisher's redundancy on the upstream leg.
//! Players that negotiated RED get RED of the depth they wait for whatever the publisher sent
//! (one block from Chromium, none from plain Opus publishers): each frame with the ones 1, 3
//! and 6 before it for the SDK's player, 1, 2 and 3 for browsers ([`distances`]), from the
//! SFU's [`History`] of the publisher's frames (as LiveKit's `RedReceiver` makes RED for its
//! subscribers), so their downlink is repaired as well as from an SDK publisher.

use str0m::rtp::{RedBlock, RedDecoder, RedEncoder, RedundantBlock};

/// Samples of one 20 ms Opus frame at 48 kHz: a redundant block's timestamp offset in frames.
pub const FRAME_TICKS: u32 = 960;

/// Frames recovered from one packet at most (the deepest redundancy the SDK sends is 3; browsers
/// send 1).
pub const MAX_RECOVER: u64 = 4;

/// A RED payload split into its blocks.
#[derive(Debug)]
pub struct RedPacket<'a> {
    /// The primary block: this packet's own Opus frame.
    pub primary: &'a [u8],
    /// The redundant blocks of the primary's payload type: (timestamp offset, payload), oldest
    /// first.
    pub redundant: Vec<(u32, &'a [u8])>,
}

/// Parses a RED payload whose blocks should carry `primary_pt`; `None` when it is malformed or
/// its primary block is of another payload type (it cannot be turned into plain Opus then).
pub fn split(payload: &[u8], primary_pt: u8) -> Option<RedPacket<'_>> {
    let blocks: Vec<RedBlock<'_>> = RedDecoder::decode(payload).ok()?;
    let (primary, rest) = blocks.split_last()?;
    if !primary.is_primary || primary.pt != primary_pt {
        return None;
    }
    let redundant = rest
        .iter()
        .filter(|b| b.pt == primary_pt && b.timestamp_offset > 0)
        .map(|b| (b.timestamp_offset, b.payload))
        .collect();
    Some(RedPacket {
        primary: primary.payload,
        redundant,
    })
}

/// The frames of `packet` (extended sequence number `seq`, timestamp `ts`) that fill a gap
/// after `last_seq`, the highest sequence number received before it: (sequence number,
/// timestamp, payload), oldest first. A redundant block belongs to the packet
/// `offset / 960` before this one (20 ms frames, no DTX gap in between: a block whose offset
/// is not a whole number of frames is not used). Nothing is recovered for a packet that is
/// not the newest (a reordered one), or across more than [`MAX_RECOVER`] frames.
pub fn recover<'a>(
    packet: &RedPacket<'a>,
    last_seq: Option<u64>,
    seq: u64,
    ts: u32,
) -> impl Iterator<Item = (u64, u32, &'a [u8])> {
    let missing_from = last_seq.map_or(seq, |l| (l + 1).max(seq.saturating_sub(MAX_RECOVER)));
    let usable = last_seq.is_some_and(|l| seq > l + 1);
    packet.redundant.iter().filter_map(move |&(offset, payload)| {
        if !usable || offset % FRAME_TICKS != 0 || payload.is_empty() {
            return None;
        }
        let back = u64::from(offset / FRAME_TICKS);
        let s = seq.checked_sub(back)?;
        (s >= missing_from && s < seq).then(|| (s, ts.wrapping_sub(offset), payload))
    })
}

/// The redundancy the SFU sends players that negotiated RED and wait for copies this far back
/// ([`SDK_DEPTH`] frames: the SDK's): the frames 1, 3 and 6 back, as the SDK's publishers send
/// (`huddle::media::pc::RED_DISTANCES`, measured there).
pub const DISTANCES: [u64; 3] = [1, 3, 6];

/// The `red_depth` (`media_offer`) from which a player gets [`DISTANCES`]: the SDK's player
/// waits for a copy up to 6 frames late.
pub const SDK_DEPTH: u8 = 6;

/// The redundancy for players that declare a shallower `red_depth`, or none (browsers):
/// Chromium's NetEq sizes its delay from the packets' arrival (40–110 ms under loss), so a
/// copy 6 frames back (120 ms late) mostly comes after its playout time and is discarded;
/// copies 1, 2 and 3 back come at most 60 ms late (docs/quality.md, "Nearer RED for
/// browser players").
pub const NEAR_DISTANCES: [u64; 3] = [1, 2, 3];

/// The distances to send a player that declared `red_depth`.
pub fn distances(red_depth: u8) -> &'static [u64] {
    if red_depth >= SDK_DEPTH {
        &DISTANCES
    } else {
        &NEAR_DISTANCES
    }
}

/// A RED payload longer than this drops its oldest blocks (well within a datagram).
const MAX_RED_BYTES: usize = 1100;

/// A publisher's recent audio frames, as plain Opus, to send players that negotiated RED with
/// redundancy of their own depth whatever the publisher sent: Chromium sends one redundant
/// frame, aiortc and Firefox none, and a frame lost on the player's downlink was then repaired
/// only when the publisher's redundancy happened to carry it (LiveKit's `RedReceiver` makes RED
/// for its subscribers the same way). Fed every audio frame the SFU has, received or restored
/// from the redundancy ([`History::push`]); [`wrap`] wraps a frame with the ones
/// [`DISTANCES`] before it ([`History::before`]). A publisher whose RED is that deep already
/// (the SDK) has its packets forwarded as they came: built here from the frames the SFU has,
/// they scored lower at 30 % loss per link on the virtual-time curve (2.67 against 3.05), for a
/// reason not established.
#[derive(Debug, Default)]
pub struct History {
    /// (sequence number, timestamp, payload), in sequence order, the last 8.
    frames: std::collections::VecDeque<(u64, u32, std::sync::Arc<[u8]>)>,
}

impl History {
    /// A frame the SFU has (an older one restored from redundancy goes in its place).
    pub fn push(&mut self, seq: u64, ts: u32, payload: std::sync::Arc<[u8]>) {
        let at = self.frames.partition_point(|f| f.0 < seq);
        if self.frames.get(at).is_some_and(|f| f.0 == seq) {
            return;
        }
        self.frames.insert(at, (seq, ts, payload));
        while self.frames.len() > 8 {
            self.frames.pop_front();
        }
    }

    /// The frames `distances` before frame `seq` (timestamp `ts`) that the SFU has, oldest
    /// first: (timestamp offset, payload), for [`wrap`].
    pub fn before(&self, seq: u64, ts: u32, distances: &[u64]) -> Vec<(u32, std::sync::Arc<[u8]>)> {
        distances
            .iter()
            .rev()
            .filter_map(|&d| {
                let (_, t, payload) = self.frames.iter().find(|f| f.0 + d == seq)?;
                let offset = ts.wrapping_sub(*t);
                (offset > 0 && offset < 1 << 14).then(|| (offset, payload.clone()))
            })
            .collect()
    }
}

/// How far back `distances` reach, in timestamp ticks (6 frames for [`DISTANCES`]).
pub fn deepest_ticks(distances: &[u64]) -> u32 {
    let deepest = distances.iter().copied().max().unwrap_or(0);
    u32::try_from(deepest)
        .unwrap_or(u32::MAX)
        .saturating_mul(FRAME_TICKS)
}

/// The blocks of `before` (from [`History::before`]) that a player whose view of the stream
/// began `ticks` before this frame has been sent the frame of
/// ([`super::rewrite::Rewriter::ticks_in_view`]): a block from before the player's first
/// packet predates its view, as a packet of its own would, and is left out. libwebrtc's NetEq
/// starts playing from the oldest frame in its buffer, so a first packet carrying the frame
/// 6 back made a Chromium player start 120 ms behind and accelerate that surplus away in the
/// first words (docs/quality.md, "SDK → Chromium on a clean path").
pub fn in_view(before: &[(u32, std::sync::Arc<[u8]>)], ticks: u32) -> Vec<(u32, std::sync::Arc<[u8]>)> {
    before
        .iter()
        .filter(|(offset, _)| *offset <= ticks)
        .cloned()
        .collect()
}

/// The RED payload of the Opus frame `primary` with the redundant frames `before` it (from
/// [`History::before`]), all of payload type `pt`; the oldest ones are left out beyond 1100
/// bytes.
pub fn wrap(pt: u8, primary: &[u8], before: &[(u32, std::sync::Arc<[u8]>)]) -> Vec<u8> {
    let mut blocks: Vec<RedundantBlock> = before
        .iter()
        .map(|(offset, payload)| RedundantBlock {
            pt,
            timestamp_offset: *offset,
            payload: payload.to_vec(),
        })
        .collect();
    while !blocks.is_empty()
        && primary.len() + blocks.iter().map(|b| b.payload.len() + 4).sum::<usize>() + 1 > MAX_RED_BYTES
    {
        blocks.remove(0);
    }
    RedEncoder::encode(pt, primary, &blocks)
}

/// Every frame the redundant blocks of `packet` (extended sequence number `seq`, timestamp
/// `ts`) carry: (sequence number, timestamp, payload), oldest first; placed as [`recover`]
/// places them (a block whose offset is not a whole number of frames is left out).
pub fn carried<'a>(packet: &RedPacket<'a>, seq: u64, ts: u32) -> impl Iterator<Item = (u64, u32, &'a [u8])> {
    packet.redundant.iter().filter_map(move |&(offset, payload)| {
        if offset % FRAME_TICKS != 0 || payload.is_empty() {
            return None;
        }
        let s = seq.checked_sub(u64::from(offset / FRAME_TICKS))?;
        Some((s, ts.wrapping_sub(offset), payload))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn red(primary: &[u8], older: &[(u32, &[u8])]) -> Vec<u8> {
        let blocks: Vec<RedundantBlock> = older
            .iter()
            .map(|&(timestamp_offset, p)| RedundantBlock {
                pt: 111,
                timestamp_offset,
                payload: p.to_vec(),
            })
            .collect();
        RedEncoder::encode(111, primary, &blocks)
    }

    #[test]
    fn splits_the_primary_and_the_redundant_blocks() {
        let bytes = red(b"now", &[(1920, b"two ago"), (960, b"one ago")]);
        let p = split(&bytes, 111).unwrap();
        assert_eq!(p.primary, b"now");
        assert_eq!(p.redundant, vec![(1920, &b"two ago"[..]), (960, &b"one ago"[..])]);
        // Plain RED without redundancy (the first packet of a talk spurt).
        let bytes = red(b"first", &[]);
        let p = split(&bytes, 111).unwrap();
        assert_eq!((p.primary, p.redundant.len()), (&b"first"[..], 0));
    }

    #[test]
    fn refuses_malformed_payloads_and_other_codecs() {
        assert!(split(&[], 111).is_none());
        assert!(split(&[0x80 | 111, 0, 0], 111).is_none()); // truncated block header
        assert!(split(&[0x80 | 111, 0, 0x04, 50, 111, 1, 2], 111).is_none()); // block beyond the end
        assert!(split(&red(b"x", &[]), 0).is_none()); // primary of another payload type
    }

    #[test]
    fn recovers_only_the_frames_missing_before_the_newest_packet() {
        let bytes = red(b"s10", &[(1920, b"s8"), (960, b"s9")]);
        let p = split(&bytes, 111).unwrap();
        let ts = 100_000u32;
        // 8 and 9 were lost: both come back, oldest first, with their own timestamps.
        let got: Vec<_> = recover(&p, Some(7), 10, ts).collect();
        assert_eq!(got, vec![(8, ts - 1920, &b"s8"[..]), (9, ts - 960, &b"s9"[..])]);
        // Only 9 was lost.
        let got: Vec<_> = recover(&p, Some(8), 10, ts).collect();
        assert_eq!(got, vec![(9, ts - 960, &b"s9"[..])]);
        // Every block, whatever was lost, for the history.
        let all: Vec<_> = carried(&p, 10, ts).map(|c| c.0).collect();
        assert_eq!(all, vec![8, 9]);
        // Nothing was lost, the packet is reordered, or it is the first one.
        assert_eq!(recover(&p, Some(9), 10, ts).count(), 0);
        assert_eq!(recover(&p, Some(12), 10, ts).count(), 0);
        assert_eq!(recover(&p, None, 10, ts).count(), 0);
        // Timestamps wrap.
        let got: Vec<_> = recover(&p, Some(8), 10, 500).collect();
        assert_eq!(got, vec![(9, 500u32.wrapping_sub(960), &b"s9"[..])]);
    }

    #[test]
    fn ignores_blocks_that_are_not_whole_frames() {
        let bytes = red(b"s10", &[(480, b"half")]);
        let p = split(&bytes, 111).unwrap();
        assert_eq!(recover(&p, Some(5), 10, 48_000).count(), 0);
    }
    #[test]
    fn history_wraps_a_frame_with_the_ones_1_3_and_6_before_it() {
        let mut h = History::default();
        let f = |i: u64| std::sync::Arc::<[u8]>::from(vec![i as u8; 3]);
        // Frames 10..=16, 13 missing then restored late, 11 never.
        for i in [10u64, 12, 14, 15, 16, 13] {
            h.push(i, i as u32 * 960, f(i));
        }
        let bytes = wrap(111, &[17; 3], &h.before(17, 17 * 960, &DISTANCES));
        let blocks = RedDecoder::decode(&bytes).unwrap();
        let got: Vec<(u32, u8)> = blocks
            .iter()
            .map(|b| (b.timestamp_offset, b.payload[0]))
            .collect();
        // 6 back is 11, which the SFU does not have: 14 (3 back) and 16 (1 back), then 17.
        assert_eq!(got, vec![(2880, 14), (960, 16), (0, 17)]);
        assert!(blocks.iter().all(|b| b.pt == 111));
        // The first frame: no redundancy.
        let first = wrap(111, &[1], &History::default().before(1, 960, &DISTANCES));
        let blocks = RedDecoder::decode(&first).unwrap();
        assert_eq!(blocks.len(), 1);
        // A player whose first packet was frame 15: 16 only (14 predates its view); its first
        // packet (no ticks in view): the primary alone.
        let before = h.before(17, 17 * 960, &DISTANCES);
        let offsets = |ticks| {
            let b = wrap(111, &[17; 3], &in_view(&before, ticks));
            let blocks = RedDecoder::decode(&b).unwrap();
            blocks.iter().map(|b| b.timestamp_offset).collect::<Vec<_>>()
        };
        assert_eq!(offsets(2 * 960), vec![960, 0]);
        assert_eq!(offsets(0), vec![0]);
        assert_eq!(offsets(deepest_ticks(&DISTANCES)), vec![2880, 960, 0]);
        // The near distances (a browser's): 3, 2 and 1 back.
        let near = wrap(111, &[17; 3], &h.before(17, 17 * 960, &NEAR_DISTANCES));
        let got: Vec<(u32, u8)> = RedDecoder::decode(&near)
            .unwrap()
            .iter()
            .map(|b| (b.timestamp_offset, b.payload[0]))
            .collect();
        assert_eq!(got, vec![(2880, 14), (1920, 15), (960, 16), (0, 17)]);
        assert_eq!(deepest_ticks(&NEAR_DISTANCES), 2880);
        assert_eq!(distances(0), &NEAR_DISTANCES[..]);
        assert_eq!(distances(5), &NEAR_DISTANCES[..]);
        assert_eq!(distances(SDK_DEPTH), &DISTANCES[..]);
    }
}
