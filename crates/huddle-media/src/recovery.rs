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
/// Share of frames recovered from a redundancy level deeper than the first from which the
/// expected redundancy is waited for in full ...
const LOSSY: f64 = 0.01;
/// ... counted over at least this many packets.
const LOSS_SAMPLE: usize = 50;

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
///
/// Told what redundancy the sender sends ([`RecoveryDelay::expecting`]) and which frames came
/// back from beyond its first level ([`RecoveryDelay::on_deep_recovery`]), it does not wait
/// for the deeper levels to show themselves: once two packets in a row are lost often enough
/// for them to matter, it asks for the deepest level's delay at once (see `docs/quality.md`,
/// "End to end on virtual time": at ≈ 30 % loss end to end the deeper levels come back during
/// the first words otherwise, and each step is heard).
#[derive(Debug, Clone)]
pub struct RecoveryDelay {
    highest: Option<i64>,
    /// Lateness in frames of the recent packets, and whether a deep recovery came with each,
    /// oldest first.
    recent: VecDeque<(u8, bool)>,
    /// Deep recoveries in `recent`.
    recovered: usize,
    /// Waiting for the level expected (see [`RecoveryDelay::on_deep_recovery`]).
    predicting: bool,
    /// Packets in `recent` at least `d` frames late, for d = 1..=MAX_LATE (index d - 1).
    counts: [usize; MAX_LATE as usize],
    frames: u8,
    /// The deepest redundancy the sender is expected to send, in frames (0: learn it only
    /// from what comes back).
    expected: u8,
    /// The listener has heard speech on the stream (see [`RecoveryDelay::set_speech_played`]).
    speech_played: bool,
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
            expected: 0,
            recovered: 0,
            predicting: false,
            speech_played: true,
        }
    }

    /// Expecting the sender's redundancy to reach `frames` back (at most 8): see
    /// [`RecoveryDelay::min_delay`].
    pub fn expecting(frames: u8) -> RecoveryDelay {
        RecoveryDelay {
            expected: frames.min(MAX_LATE),
            ..RecoveryDelay::new()
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
        self.on_frame(seq)
    }

    /// A frame came back from a redundancy level deeper than the first (it was lost and so
    /// was the packet right after it, which carried its first copy), as told by the packet
    /// that brought it. These give how often two packets in a row are lost: from 1 % of the
    /// frames of the last 10 s (counted over at least 50; twice at least, once before speech was
    /// heard: [`RecoveryDelay::set_speech_played`]), deep recoveries are common enough
    /// that the delay for the deepest level expected ([`RecoveryDelay::expecting`]) is wanted
    /// at once, rather than when the first frame from that level comes back (most often in the
    /// middle of speech, where the step is heard). It is held until no deep recovery is left in
    /// the last 10 s. The random loss that does this is 10 % or
    /// more on the wire.
    pub fn on_deep_recovery(&mut self) {
        if let Some(last) = self.recent.back_mut()
            && !last.1
        {
            last.1 = true;
            self.recovered += 1;
        }
        self.update();
    }

    /// Tells whether the listener has heard speech on the stream yet (a caller that does not
    /// say is taken to have). Until then a step of the delay costs nothing that can be heard
    /// (the jitter buffer makes it in the silence before the first word), so one deep recovery
    /// is evidence enough to wait for the deepest level expected; afterwards it takes two, as
    /// the step may land in a word or a pause. With a short silence before the speech (1 s
    /// from the call's start at ≈ 30 % loss end to end), the second deep recovery most often
    /// came in the first words: the raise then waited for a pause, the frames that came back
    /// from the deeper levels meanwhile were concealed, and the step in that pause moved the
    /// rest of the speech by 60–100 ms (`docs/quality.md`, "End to end on virtual time").
    pub fn set_speech_played(&mut self, played: bool) {
        self.speech_played = played;
    }

    fn on_frame(&mut self, seq: u16) -> u8 {
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
            && let Some((old, was_recovered)) = self.recent.pop_front()
        {
            for c in &mut self.counts[..usize::from(old)] {
                *c -= 1;
            }
            self.recovered -= usize::from(was_recovered);
        }
        self.recent.push_back((late, false));
        for c in &mut self.counts[..usize::from(late)] {
            *c += 1;
        }
        self.update();
        late
    }

    fn update(&mut self) {
        let seen = self.counts.iter().take_while(|&&c| c >= MIN_COUNT).count() as u8;
        let share = self.recovered as f64 / self.recent.len().max(LOSS_SAMPLE) as f64;
        // Once wanted, held while any deep recovery is in the window (not flapping around the
        // threshold: each change is a step to make).
        let evidence = if self.speech_played { 2 } else { 1 };
        if self.recovered >= evidence && share >= LOSSY {
            self.predicting = true;
        } else if self.recovered == 0 {
            self.predicting = false;
        }
        let predicted = if self.predicting { self.expected } else { 0 };
        self.frames = seen.max(predicted);
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
    fn deep_recoveries_wait_for_the_deepest_level_expected_at_once() {
        for (mut r, wanted) in [
            (RecoveryDelay::expecting(6), 140),
            // Not told what to expect: only the lateness seen.
            (RecoveryDelay::new(), 20),
        ] {
            for seq in 0..60u16 {
                r.on_packet(seq);
            }
            // One frame lost with the packet after it, recovered from a deeper level: once is
            // not yet a pattern.
            r.on_deep_recovery();
            assert_eq!(r.min_delay(), Duration::from_millis(20));
            for seq in 60..100u16 {
                r.on_packet(seq);
            }
            // Twice in 100 frames (2 %): two packets in a row are often lost.
            r.on_deep_recovery();
            assert_eq!(r.min_delay(), Duration::from_millis(wanted));
            // It holds while one is in the last 10 s (500 frames), and comes down after.
            for seq in 100..599u16 {
                r.on_packet(seq);
            }
            assert_eq!(r.min_delay(), Duration::from_millis(wanted));
            r.on_packet(599);
            assert_eq!(r.min_delay(), Duration::from_millis(20));
        }
    }

    #[test]
    fn before_speech_one_deep_recovery_is_enough() {
        let mut r = RecoveryDelay::expecting(6);
        r.set_speech_played(false);
        for seq in 0..30u16 {
            r.on_packet(seq);
        }
        // Nothing heard yet: the step costs nothing, one deep recovery is taken as the pattern.
        r.on_deep_recovery();
        assert_eq!(r.min_delay(), Duration::from_millis(140));
        // Held once speech is heard, as before, while the recovery is in the window.
        r.set_speech_played(true);
        for seq in 30..529u16 {
            r.on_packet(seq);
        }
        assert_eq!(r.min_delay(), Duration::from_millis(140));
        r.on_packet(529);
        assert_eq!(r.min_delay(), Duration::from_millis(20));
        // After speech, one is not enough.
        for seq in 530..560u16 {
            r.on_packet(seq);
        }
        r.on_deep_recovery();
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
