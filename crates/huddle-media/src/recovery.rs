//! How long a receiver waits for frames that come back late: [`RecoveryDelay`].

use std::collections::VecDeque;
use std::time::Duration;

use crate::audio::FRAME_DURATION;

/// Packets whose lateness is remembered (10 s of 20 ms frames).
const WINDOW: usize = 500;
/// Frames late counted at most (the deepest RED a receiver recovers from).
const MAX_LATE: u8 = 8;
/// A lateness seen this many times in the window is waited for.
const MIN_COUNT: usize = 1;

/// The smallest playout delay that lets frames arriving late in the sequence be played: a frame
/// lost on the wire comes back in the redundant blocks (RFC 2198 RED) of the packets after it,
/// *d* frames (20 × *d* ms) after it was due; a reordered packet is late the same way.
///
/// Fed every audio packet's sequence number in arrival order ([`RecoveryDelay::on_packet`]), it
/// remembers over the last 10 s how many frames behind the newest one each arrived, and asks
/// for one frame of delay plus the largest such lateness. On a clean network that is 20 ms, the
/// jitter buffer's default minimum; with 30 % random loss and three levels of redundancy it is
/// 80 ms within a second or two. It grows at the first recovery of a kind (the jitter buffer
/// makes the step in a pause of the speech when it can, so growing early is what keeps the
/// steps out of words) and comes down 10 s after the last one (the buffer then shrinks slowly).
#[derive(Debug, Clone)]
pub struct RecoveryDelay {
    highest: Option<i64>,
    /// Lateness in frames of the recent packets, oldest first.
    recent: VecDeque<u8>,
    /// Packets in `recent` at least `d` frames late, for d = 1..=MAX_LATE (index d - 1).
    counts: [usize; MAX_LATE as usize],
    frames: u8,
}

impl Default for RecoveryDelay {
    fn default() -> Self {
        RecoveryDelay::new()
    }
}

impl RecoveryDelay {
    /// Nothing seen yet: one frame of delay.
    pub fn new() -> RecoveryDelay {
        RecoveryDelay {
            highest: None,
            recent: VecDeque::with_capacity(WINDOW),
            counts: [0; MAX_LATE as usize],
            frames: 0,
        }
    }

    /// The minimum delay wanted now.
    pub fn min_delay(&self) -> Duration {
        FRAME_DURATION * (1 + u32::from(self.frames))
    }

    /// A packet with RTP sequence number `seq` arrived (RED-recovered frames count with the
    /// sequence number they were recovered for). Returns how many frames behind the newest
    /// packet it is (0 for the newest; at most 8, 0 for anything later, which is too late to
    /// be waited for). A frame recovered *d* frames late would have arrived about 20 × *d* ms
    /// earlier: a caller can date it so (the jitter buffer then does not mistake redundancy
    /// for network jitter) and cover the lateness with [`RecoveryDelay::min_delay`].
    pub fn on_packet(&mut self, seq: u16) -> u8 {
        let late = match self.highest {
            None => {
                self.highest = Some(i64::from(seq));
                0
            }
            Some(h) => {
                let ext = h + i64::from(seq.wrapping_sub(h as u16) as i16);
                if ext > h {
                    self.highest = Some(ext);
                    0
                } else if h - ext <= i64::from(MAX_LATE) {
                    (h - ext) as u8
                } else {
                    0 // too late to be waited for: a stale packet, not a recovery
                }
            }
        };
        if self.recent.len() == WINDOW
            && let Some(old) = self.recent.pop_front()
        {
            for c in &mut self.counts[..usize::from(old)] {
                *c -= 1;
            }
        }
        self.recent.push_back(late);
        for c in &mut self.counts[..usize::from(late)] {
            *c += 1;
        }
        self.frames = self.counts.iter().take_while(|&&c| c >= MIN_COUNT).count() as u8;
        late
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clean_stream_wants_one_frame() {
        let mut r = RecoveryDelay::new();
        for seq in 0..1000u16 {
            assert_eq!(r.on_packet(seq.wrapping_add(65_000)), 0);
        }
        assert_eq!(r.min_delay(), Duration::from_millis(20));
    }

    #[test]
    fn frames_recovered_late_raise_it_and_it_comes_back_down() {
        let mut r = RecoveryDelay::new();
        // Every 10th frame comes back two packets late (from the redundancy of seq + 2).
        let mut changes = Vec::new();
        for base in (0..300u16).step_by(10) {
            for seq in base..base + 10 {
                if seq % 10 == 5 {
                    continue;
                }
                assert_eq!(r.on_packet(seq), 0);
                if seq % 10 == 7 {
                    // Recovered with packet 7: 2 frames late.
                    assert_eq!(r.on_packet(seq - 2), 2);
                }
                if changes.last() != Some(&r.min_delay()) {
                    changes.push(r.min_delay());
                }
            }
        }
        assert_eq!(r.min_delay(), Duration::from_millis(60));
        assert_eq!(
            changes,
            vec![Duration::from_millis(20), Duration::from_millis(60)],
            "once seen, 2 frames late"
        );
        // Then a clean network for 10 s: back to one frame.
        for seq in 300..810u16 {
            r.on_packet(seq);
        }
        assert_eq!(r.min_delay(), Duration::from_millis(20));
    }

    #[test]
    fn stale_packets_are_not_waited_for() {
        let mut r = RecoveryDelay::new();
        for seq in 0..100u16 {
            r.on_packet(seq);
        }
        // More than 8 frames late: too late for any buffer, not a recovery.
        for _ in 0..3 {
            assert_eq!(r.on_packet(10), 0);
        }
        assert_eq!(r.min_delay(), Duration::from_millis(20));
        // One frame 3 late: waited for, for 10 s.
        assert_eq!(r.on_packet(96), 3);
        assert_eq!(r.min_delay(), Duration::from_millis(80));
        for seq in 100..599u16 {
            r.on_packet(seq);
        }
        assert_eq!(r.min_delay(), Duration::from_millis(80));
        r.on_packet(599);
        assert_eq!(r.min_delay(), Duration::from_millis(20));
    }

    /// With the jitter buffer: frames that come back six packets late (the deepest RED level
    /// the SDK sends) are played once `RecoveryDelay` has seen one. Without it the buffer's own
    /// peak detector holds its delay at most 80 ms above the usual and they come too late.
    #[test]
    fn late_frames_are_played_with_the_raised_minimum() {
        use crate::jitter::{JitterBuffer, JitterConfig, Playout};
        use std::time::Instant;

        fn run(with_recovery: bool) -> (usize, usize) {
            let start = Instant::now();
            let mut jb = JitterBuffer::new(JitterConfig::default());
            let mut r = RecoveryDelay::new();
            let at = |ms: u64| start + Duration::from_millis(ms);
            // Every 25th frame is lost on the wire and comes back with the packet six after it.
            let mut arrivals: Vec<(u64, u16)> = Vec::new();
            for seq in 0..500u16 {
                let sent = u64::from(seq) * 20 + 5;
                if seq % 25 == 10 {
                    arrivals.push((sent + 120, seq));
                } else {
                    arrivals.push((sent, seq));
                }
            }
            arrivals.sort();
            let (mut played, mut recovered_played) = (0, 0);
            let mut next = 0;
            for ms in 0..10_200u64 {
                while next < arrivals.len() && arrivals[next].0 <= ms {
                    let seq = arrivals[next].1;
                    let late = r.on_packet(seq);
                    let mut arrival = at(ms);
                    if with_recovery {
                        jb.set_min_delay(r.min_delay());
                        arrival -= FRAME_DURATION * u32::from(late);
                    }
                    jb.insert(seq, u32::from(seq) * 960, vec![1], arrival);
                    next += 1;
                }
                while let Some(p) = jb.pop(at(ms)) {
                    if let Playout::Packet { seq, .. } = p {
                        played += 1;
                        if seq % 25 == 10 {
                            recovered_played += 1;
                        }
                    }
                }
            }
            (played, recovered_played)
        }
        let (_, without) = run(false);
        let (played, with) = run(true);
        eprintln!("late frames played: {with} of 20 with, {without} without");
        // 20 frames came back late; the first one teaches the delay.
        assert!(with >= 19, "{with} of 20 late frames played ({played} in all)");
        assert!(without < with, "without the raised minimum: {without}");
    }
}
