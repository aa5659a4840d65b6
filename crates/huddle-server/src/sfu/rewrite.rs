//! Per-receiver RTP sequence-number and timestamp rewriting.
//!
//! Every played track has its own SSRC, sequence space and timestamp space. A [`Rewriter`] maps the
//! packets of whichever source feeds the track (the publisher's connection of the moment, and the
//! SSRC it sends with) into that space by a constant offset per source, so that:
//!
//! - a receiver that joins late starts at its own first sequence number (with ROC 0, as SRTP
//!   needs without signaling) and sees no gap;
//! - when the source changes (the publisher restarts or re-offers), the receiver's sequence numbers
//!   continue at the next number and its timestamps advance by the wall-clock time that passed, so
//!   its jitter buffer sees one continuous stream with a pause, not a jump;
//! - reordering, loss and retransmissions of one source keep their shape (a constant offset maps
//!   a gap to a gap and a late packet to its place), so NACKs from the receiver name the right
//!   packets in the server's send buffer.

use std::time::Instant;

/// What the receiver saw last: the highest sequence number sent and its timestamp.
#[derive(Debug, Clone, Copy)]
struct Last {
    seq: u64,
    ts: u32,
    at: Instant,
}

/// Maps source packets into one receiver's sequence and timestamp space (see the module docs).
#[derive(Debug, Clone)]
pub struct Rewriter {
    clock_rate: u32,
    start_seq: u64,
    start_ts: u32,
    /// The source the offsets belong to.
    source: Option<u64>,
    /// The first source sequence number of this source: earlier ones predate the receiver.
    first_in: u64,
    /// That packet's timestamp.
    first_ts: u32,
    seq_delta: i64,
    ts_delta: u32,
    last: Option<Last>,
}

impl Rewriter {
    /// A rewriter for a track with this clock rate whose first packet gets `start_seq` (below
    /// 2^15, so that the rollover counter starts at 0) and timestamp `start_ts`.
    pub fn new(clock_rate: u32, start_seq: u16, start_ts: u32) -> Rewriter {
        Rewriter {
            clock_rate: clock_rate.max(1),
            start_seq: u64::from(start_seq & 0x7fff),
            start_ts,
            source: None,
            first_in: 0,
            first_ts: 0,
            seq_delta: 0,
            ts_delta: 0,
            last: None,
        }
    }

    /// Maps a packet of `source` (any number that changes when the source changes: the
    /// connection's epoch and the SSRC) with extended sequence number `seq` and timestamp `ts`,
    /// received at `now`. `None`: the packet predates this receiver's view of the source (drop it).
    pub fn map(&mut self, source: u64, seq: u64, ts: u32, now: Instant) -> Option<(u64, u32)> {
        if self.source != Some(source) {
            let (next_seq, next_ts) = match self.last {
                None => (self.start_seq, self.start_ts),
                Some(l) => {
                    // At least one 20 ms frame later, so that no two packets of different
                    // sources share a timestamp.
                    let min_step = u64::from(self.clock_rate / 50).max(1);
                    let elapsed = now.saturating_duration_since(l.at);
                    let ticks =
                        (elapsed.as_micros() as u64).saturating_mul(u64::from(self.clock_rate)) / 1_000_000;
                    (l.seq + 1, l.ts.wrapping_add(ticks.max(min_step) as u32))
                }
            };
            self.seq_delta = next_seq as i64 - seq as i64;
            self.ts_delta = next_ts.wrapping_sub(ts);
            self.first_in = seq;
            self.first_ts = ts;
            self.source = Some(source);
        }
        if seq < self.first_in {
            return None;
        }
        let out_seq = (seq as i64).wrapping_add(self.seq_delta) as u64;
        let out_ts = ts.wrapping_add(self.ts_delta);
        if self.last.is_none_or(|l| out_seq > l.seq) {
            self.last = Some(Last {
                seq: out_seq,
                ts: out_ts,
                at: now,
            });
        }
        Some((out_seq, out_ts))
    }

    /// How far back, in timestamp ticks, this receiver's view of `source` begins from a packet
    /// of timestamp `ts`: 0 for the first packet of a new source (or after
    /// [`Rewriter::resume`]). A RED packet's redundant blocks further back predate the view, as
    /// a packet of theirs would ([`Rewriter::map`] drops those), and are left out
    /// (`red::in_view`).
    pub fn ticks_in_view(&self, source: u64, ts: u32) -> u32 {
        match self.source {
            Some(s) if s == source => {
                let ticks = ts.wrapping_sub(self.first_ts);
                if ticks < 1 << 31 { ticks } else { 0 }
            }
            _ => 0,
        }
    }

    /// The receiver missed the source's packets for a while on purpose (a play mute): the next
    /// packet continues the receiver's numbers as a new source would (next sequence number,
    /// timestamp advanced by the time that passed), so that the receiver sees a pause, not a
    /// loss to repair, and packets from before the pause are not sent any more.
    pub fn resume(&mut self) {
        self.source = None;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn late_joiner_starts_at_its_own_numbers() {
        let t0 = Instant::now();
        let mut r = Rewriter::new(48_000, 1000, 5);
        // The source is long-running: extended sequence numbers past a rollover.
        assert_eq!(r.map(1, 200_000, 4_000_000_000, t0), Some((1000, 5)));
        assert_eq!(r.map(1, 200_001, 4_000_000_960, t0), Some((1001, 965)));
        // Timestamps wrap with the source.
        assert_eq!(
            r.map(1, 200_002, 4_000_001_920u32.wrapping_add(300_000_000), t0),
            Some((1002, 1925u32.wrapping_add(300_000_000)))
        );
    }

    #[test]
    fn the_view_of_a_source_begins_at_its_first_packet() {
        let t0 = Instant::now();
        let mut r = Rewriter::new(48_000, 1000, 5);
        // Before any packet, and for the first packet of a source: nothing in view before it.
        assert_eq!(r.ticks_in_view(1, 4_294_966_000), 0);
        r.map(1, 200_000, 4_294_966_000, t0);
        // Across the timestamp's wrap, and not for an older packet.
        assert_eq!(r.ticks_in_view(1, 4_294_966_000u32.wrapping_add(2880)), 2880);
        assert_eq!(r.ticks_in_view(1, 4_294_966_000 - 960), 0);
        // Another source, or the same after a pause (`resume`), begins a new view.
        assert_eq!(r.ticks_in_view(2, 4_294_966_000u32.wrapping_add(2880)), 0);
        r.resume();
        assert_eq!(r.ticks_in_view(1, 4_294_966_000u32.wrapping_add(5760)), 0);
    }

    #[test]
    fn loss_and_reordering_keep_their_shape_and_old_packets_are_dropped() {
        let t0 = Instant::now();
        let mut r = Rewriter::new(48_000, 10, 0);
        assert_eq!(r.map(7, 50, 0, t0), Some((10, 0)));
        assert_eq!(r.map(7, 53, 2880, t0), Some((13, 2880)));
        // A late packet and a retransmission land in their places.
        assert_eq!(r.map(7, 51, 960, t0), Some((11, 960)));
        assert_eq!(r.map(7, 51, 960, t0), Some((11, 960)));
        // Before the receiver's first packet: never seen by it, dropped.
        assert_eq!(r.map(7, 49, 0, t0), None);
    }

    #[test]
    fn a_new_source_continues_the_stream() {
        let t0 = Instant::now();
        let mut r = Rewriter::new(48_000, 100, 1000);
        for i in 0..10u64 {
            r.map(1, 500 + i, 960 * i as u32, t0 + Duration::from_millis(20 * i));
        }
        // Last sent: seq 109, ts 1000 + 9 * 960 at t0 + 180 ms. The publisher restarts 2 s later
        // with new random numbers.
        let t1 = t0 + Duration::from_millis(2180);
        let (seq, ts) = r.map(2, 40_000, 123_456, t1).unwrap();
        assert_eq!(seq, 110);
        assert_eq!(ts, 1000 + 9 * 960 + 96_000);
        assert_eq!(r.map(2, 40_001, 123_456 + 960, t1), Some((111, ts + 960)));
        // An immediate switch still advances by one frame.
        let (seq, ts2) = r.map(3, 7, 0, t1).unwrap();
        assert_eq!((seq, ts2), (112, ts + 960 + 960));
    }

    #[test]
    fn a_resumed_track_shows_a_pause_not_a_gap() {
        let t0 = Instant::now();
        let mut r = Rewriter::new(48_000, 100, 0);
        assert_eq!(r.map(1, 10, 0, t0), Some((100, 0)));
        // Source packets 11..=59 are not sent (muted); 1 s later the track resumes.
        r.resume();
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(r.map(1, 60, 50 * 960, t1), Some((101, 48_000)));
        assert_eq!(r.map(1, 61, 51 * 960, t1), Some((102, 48_960)));
        // A retransmission from before the pause is not sent.
        assert_eq!(r.map(1, 30, 20 * 960, t1), None);
    }
}
