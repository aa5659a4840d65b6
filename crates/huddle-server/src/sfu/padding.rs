//! A publisher's audio without its padding-only packets, sans IO.
//!
//! Chromium probes the bandwidth with padding-only RTP packets on the audio stream when it has
//! no RTX stream to pad on (an audio-only publish): up to three after an audio packet, on its
//! SSRC, sequence numbers and payload type (RED's when it sends RED), with that packet's
//! timestamp and no audio. Measured on a Chromium 10 % loss call (docs/quality.md, "Interop
//! under loss"): 1126 packets on the audio stream for 441 frames. Forwarded as they came, they
//! cost the players the repair of the real frames: a lost frame's padding carries its timestamp,
//! so a RED receiver takes the frame for received (str0m restored 10 of 71 lost frames on that
//! call), the SFU's own restoration for players without RED places a redundant block by
//! sequence number (a frame back is not a packet back any more), and aiortc's 16-slot jitter
//! buffer fills with numbers that hold nothing.
//!
//! So the SFU drops them (LiveKit's forwarder does too) and numbers the audio it forwards
//! without them: [`AudioSeq`] maps each audio packet's sequence number to one that skips the
//! padding received and the padding lost on the way (a gap in the numbers that the timestamps
//! show held no frame), so players see one number per frame.

use std::collections::VecDeque;

use str0m::rtp::Ssrc;

/// Samples of one 20 ms Opus frame at 48 kHz: how far apart the timestamps of two packets in a
/// row are taken to be until two numbered in a row show a shorter packet duration.
const FRAME_TICKS: u32 = 960;

/// Audio packets remembered to place a reordered one (1.3 s of 20 ms frames).
const RECENT: usize = 64;

/// The sequence numbers of one publisher's audio with the padding taken out.
#[derive(Debug, Default)]
pub(super) struct AudioSeq {
    ssrc: Option<Ssrc>,
    /// (sequence number in, sequence number out, timestamp) of the latest audio packets, in
    /// the order of their numbers.
    recent: VecDeque<(u64, u64, u32)>,
    /// The packet duration in timestamp ticks: 20 ms, or less when two audio packets numbered
    /// in a row were closer.
    frame: u32,
    /// Padding-only packets dropped.
    pub(super) dropped: u64,
}

impl AudioSeq {
    /// Whether an audio packet of `payload` is padding only: no payload once its padding is
    /// taken off (str0m does that), or a RED payload of no block. Such a packet carries nothing
    /// a player can use.
    pub(super) fn is_padding(payload: &[u8]) -> bool {
        payload.is_empty()
    }

    /// A padding-only packet was dropped.
    pub(super) fn on_padding(&mut self) {
        self.dropped += 1;
    }

    /// The number to forward an audio packet of `ssrc` (extended sequence number `seq`,
    /// timestamp `ts`) with; `None` for a packet older than the ones remembered (reordered by
    /// more than 1.3 s: too late for any player).
    ///
    /// It follows the nearest packet before it: one number further per number in between, but
    /// never more than the packets its timestamp is ahead (the numbers beyond were padding,
    /// received or lost). The packet duration is 20 ms (what browsers send), or the shortest
    /// step between two packets numbered in a row; timestamps that are not a whole number of
    /// packets apart keep the numbers as they are. A new SSRC starts over.
    pub(super) fn map(&mut self, ssrc: Ssrc, seq: u64, ts: u32) -> Option<u64> {
        if self.ssrc != Some(ssrc) {
            self.ssrc = Some(ssrc);
            self.recent.clear();
            self.frame = FRAME_TICKS;
        }
        let Some(&(last_in, ..)) = self.recent.back() else {
            self.recent.push_back((seq, seq, ts));
            return Some(seq);
        };
        if let Some(&(_, out, _)) = self.recent.iter().find(|r| r.0 == seq) {
            return Some(out); // a duplicate: the same number again
        }
        // The nearest packet before this one (the last one, unless this one is reordered).
        let at = self.recent.partition_point(|r| r.0 < seq);
        let &(prev_in, prev_out, prev_ts) = self.recent.get(at.checked_sub(1)?)?;
        let numbers = seq - prev_in;
        let ticks = ts.wrapping_sub(prev_ts);
        let ahead = ticks > 0 && ticks < u32::MAX / 2;
        if numbers == 1 && ahead {
            self.frame = self.frame.min(ticks);
        }
        let step = if ahead && ticks % self.frame == 0 {
            numbers.min(u64::from(ticks / self.frame))
        } else {
            numbers
        };
        let mut out = prev_out + step;
        // A reordered packet stays before the ones after it.
        if let Some(&(_, next_out, _)) = self.recent.get(at) {
            if out >= next_out {
                return None;
            }
            out = out.min(next_out - 1);
        }
        if seq > last_in {
            self.recent.push_back((seq, out, ts));
        } else {
            self.recent.insert(at, (seq, out, ts));
        }
        if self.recent.len() > RECENT {
            self.recent.pop_front();
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a() -> Ssrc {
        Ssrc::from(7)
    }

    #[test]
    fn a_stream_without_padding_keeps_its_numbers() {
        let mut s = AudioSeq::default();
        for (seq, ts) in [(100u64, 0u32), (101, 960), (103, 2880), (104, 3840)] {
            assert_eq!(s.map(a(), seq, ts), Some(seq), "{seq}");
        }
        // A pause in the speech (DTX: the timestamp jumps further than the numbers).
        assert_eq!(s.map(a(), 105, 3840 + 960 * 20), Some(105));
    }

    #[test]
    fn padding_received_and_lost_takes_no_number() {
        let mut s = AudioSeq::default();
        assert_eq!(s.map(a(), 10, 0), Some(10));
        // 11, 12: padding (dropped by the caller); 13 is the next frame.
        s.on_padding();
        s.on_padding();
        assert_eq!(s.map(a(), 13, 960), Some(11));
        // 14 padding lost, 15 a frame lost, 16 padding received, 17 the frame after: one
        // number is missing, the lost frame's.
        s.on_padding();
        assert_eq!(s.map(a(), 17, 2880), Some(13));
        assert_eq!(s.dropped, 3);
        // The lost frame comes after all (reordered): it takes the number between.
        assert_eq!(s.map(a(), 15, 1920), Some(12));
        assert_eq!(s.map(a(), 15, 1920), Some(12), "a duplicate");
    }

    #[test]
    fn reordered_packets_stay_in_order_and_timestamps_wrap() {
        let mut s = AudioSeq::default();
        let t0 = u32::MAX - 960;
        assert_eq!(s.map(a(), 1, t0), Some(1));
        assert_eq!(s.map(a(), 4, t0.wrapping_add(2 * 960)), Some(3));
        // 3 came late: one frame after 1 by its timestamp, the number between.
        assert_eq!(s.map(a(), 3, t0.wrapping_add(960)), Some(2));
        // Older than anything remembered, or a new source.
        assert_eq!(s.map(a(), 0, t0.wrapping_sub(960)), None);
        assert_eq!(s.map(Ssrc::from(8), 500, 0), Some(500));
    }

    #[test]
    fn shorter_packets_are_learned_and_longer_ones_keep_their_numbers() {
        // 10 ms packets: learned from two in a row, then a lost one is a lost one.
        let mut s = AudioSeq::default();
        assert_eq!(s.map(a(), 1, 0), Some(1));
        assert_eq!(s.map(a(), 2, 480), Some(2));
        assert_eq!(s.map(a(), 4, 480 * 3), Some(4));
        // 40 ms packets: two 20 ms frames a number, never fewer numbers than packets.
        let mut s = AudioSeq::default();
        assert_eq!(s.map(a(), 1, 0), Some(1));
        assert_eq!(s.map(a(), 3, 1920 * 2), Some(3));
    }
}
