//! How long a signaling message takes on a lossy path: Linux TCP's loss recovery on an
//! established, idle connection, segment by segment, on virtual time.
//!
//! Written by hand because no crate simulates a kernel's TCP sender on a seeded virtual clock;
//! it models only what decides when the last byte of one message reaches the peer:
//!
//! - the RTT estimate is known (the WebSocket is up since login): RTO = SRTT + max(4·RTTVAR,
//!   `tcp_rto_min`), Linux's `__tcp_set_rto` with `rttvar_us` floored at 200 ms, so about
//!   RTT + 200 ms on a steady path (RFC 6298's 1 s floor is not Linux's);
//! - RACK-TLP (RFC 8985, Linux's default since 4.18): a tail loss probe after PTO = 2·SRTT,
//!   plus `tcp_rto_min` when one segment is in flight (the receiver may delay its ACK) or 2 ms
//!   when more are (`tcp_schedule_loss_probe`), and never later than the RTO; the probe
//!   retransmits the last segment and re-arms the RTO from then; one probe until new data is
//!   acknowledged;
//! - a hole before a delivered segment is repaired by RACK once the segment after it is
//!   acknowledged and SRTT + reo_wnd (min RTT / 4) have passed since the hole was sent;
//! - the RTO fires when nothing else did: the first unacknowledged segment again, the timer
//!   doubled (`icsk_backoff`) until new data is acknowledged; after it, the other lost
//!   segments follow as the acknowledgements come (slow start from one segment);
//! - the sender's socket options ([`Options`]): `TCP_RTO_MIN_US` replaces `tcp_rto_min` in
//!   the RTO and in a one-segment probe; `TCP_THIN_LINEAR_TIMEOUTS` keeps the first six RTOs
//!   from doubling while fewer than four segments are out (`tcp_retransmit_timer` in
//!   `net/ipv4/tcp_timer.c`, `tcp_stream_is_thin`);
//! - the receiver acknowledges every segment at once with SACK (out-of-order data is ACKed
//!   immediately; in-order data may be delayed up to 40 ms by delayed ACK, which only makes
//!   the sender learn later, not the data arrive later — left out), and ACKs cross the
//!   reverse link, where they can be lost too.
//!
//! Left out: the congestion window beyond slow start's first segments (a signaling message
//! is a few segments), F-RTO and spurious-retransmission undo (they change later sends, not
//! this message's arrival), and the interplay of two messages in flight at once on one
//! connection (the harness keeps them in order: a message is delivered no earlier than the
//! one before it on the same direction).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use rand::Rng;
use rand::rngs::StdRng;

/// Linux's `tcp_rto_min` (`TCP_RTO_MIN`, 200 ms).
pub(crate) const RTO_MIN: Duration = Duration::from_millis(200);

/// The payload of one segment: a 1500-byte MTU less IPv4, TCP and its timestamp option.
pub(crate) const MSS: usize = 1448;

/// Linux's `TCP_THIN_LINEAR_RETRIES`: RTOs of a thin stream that keep the timer linear.
const THIN_LINEAR_RETRIES: u32 = 6;

/// The sender's socket options that change its loss recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Options {
    /// The socket's `tcp_rto_min` (`TCP_RTO_MIN_US`, Linux 6.15; [`RTO_MIN`] by default): the
    /// floor of RTTVAR in the RTO (`tcp_rtt_estimator`'s `mdev_max_us`) and the delayed-ACK
    /// allowance of a one-segment tail probe (`tcp_schedule_loss_probe`).
    pub(crate) rto_min: Duration,
    /// `TCP_THIN_LINEAR_TIMEOUTS`: while the stream is thin (fewer than 4 segments out and out
    /// of the initial slow start, which the first RTO ends: `tcp_enter_loss` sets ssthresh
    /// before the timer is re-armed), the first [`THIN_LINEAR_RETRIES`] RTOs do not double
    /// (`tcp_retransmit_timer`).
    pub(crate) thin_linear: bool,
}

impl Options {
    /// What the server and the SDK set on their signaling sockets
    /// ([`huddle_udp::set_thin_stream`]).
    pub(crate) fn thin_stream() -> Options {
        Options {
            rto_min: huddle_udp::THIN_STREAM_RTO_MIN,
            thin_linear: true,
        }
    }
}

impl Default for Options {
    /// Linux's defaults.
    fn default() -> Options {
        Options {
            rto_min: RTO_MIN,
            thin_linear: false,
        }
    }
}

/// One direction of an established connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Path {
    /// One way, data direction, and its uniform jitter (0 to it).
    pub(crate) delay: Duration,
    pub(crate) jitter: Duration,
    /// Loss probability of the data direction and of the ACK direction.
    pub(crate) loss: f64,
    pub(crate) ack_loss: f64,
    /// One way, ACK direction, and its jitter.
    pub(crate) ack_delay: Duration,
    pub(crate) ack_jitter: Duration,
    /// The sender's socket options.
    pub(crate) options: Options,
}

impl Path {
    /// The smoothed RTT the sender has learnt since login: both delays and the mean jitter.
    fn srtt(&self) -> Duration {
        self.delay + self.ack_delay + (self.jitter + self.ack_jitter) / 2
    }

    /// The lowest RTT seen (RACK's reordering window is a quarter of it).
    fn min_rtt(&self) -> Duration {
        self.delay + self.ack_delay
    }

    /// RTO = SRTT + max(4·RTTVAR, `tcp_rto_min`): with the small variance of a steady path,
    /// SRTT + 200 ms (SRTT + the socket's `TCP_RTO_MIN_US` when set).
    fn rto(&self) -> Duration {
        let rttvar = (self.jitter + self.ack_jitter) / 2;
        self.srtt() + (rttvar * 4).max(self.options.rto_min)
    }
}

/// The segments a message of `bytes` takes (WebSocket and TLS framing included by the caller).
pub(crate) fn segments(bytes: usize) -> usize {
    bytes.div_ceil(MSS).max(1)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    /// Segment `i` reaches the receiver.
    Data(usize),
    /// An ACK reaches the sender, with what the receiver had then (a bit set).
    Ack(u64),
    /// The sender's timer (its generation: a re-armed timer supersedes the old one).
    Timer(u64),
    /// RACK's reordering timer: check the holes again.
    Reorder,
}

/// When a message of `n` segments, handed to the socket at `sent`, has fully reached the
/// receiver, under Linux's loss recovery on `path` with the loss draws of `rng`.
pub(crate) fn deliver(sent: Instant, n: usize, path: &Path, rng: &mut StdRng) -> Instant {
    let n = n.clamp(1, 63);
    let all: u64 = (1u64 << n) - 1;
    let mut events: BinaryHeap<Reverse<(Instant, Ev)>> = BinaryHeap::new();
    // Sender state: each segment's last transmission (time, then order on the wire).
    let mut last_tx = vec![(sent, 0u64); n];
    let mut order = 0u64;
    let mut sacked: u64 = 0;
    let mut lost: u64 = 0; // marked lost by an RTO, sent again as ACKs come
    let mut backoff = 0u32;
    let mut retransmits = 0u32; // RTOs since new data was last acknowledged (`icsk_retransmits`)
    let mut probe_used = false;
    let mut recovering = false; // in RACK recovery or after an RTO: no probes (CA_Open only)
    let mut timer_gen = 0u64;
    let mut timer_probe = false;
    // Receiver state.
    let mut received: u64 = 0;

    let transmit =
        |i: usize, at: Instant, events: &mut BinaryHeap<Reverse<(Instant, Ev)>>, rng: &mut StdRng| {
            if !rng.gen_bool(path.loss.clamp(0.0, 0.99)) {
                let j = jitter(path.jitter, rng);
                events.push(Reverse((at + path.delay + j, Ev::Data(i))));
            }
        };
    // The timer after a transmission or an ACK of new data (`tcp_set_xmit_timer`): the probe
    // when allowed, never later than the RTO restarted from now.
    let arm = |now: Instant, sacked: u64, probe_used: bool, recovering: bool, backoff: u32| {
        let outstanding = (0..n).filter(|i| sacked & (1 << i) == 0).count();
        let rto_at = now + path.rto() * 2u32.pow(backoff.min(6));
        if probe_used || recovering {
            return (rto_at, false);
        }
        let pto = path.srtt() * 2
            + if outstanding == 1 {
                path.options.rto_min
            } else {
                Duration::from_millis(2)
            };
        ((now + pto).min(rto_at), true)
    };
    fn set_timer(
        at: (Instant, bool),
        generation: &mut u64,
        probe: &mut bool,
        events: &mut BinaryHeap<Reverse<(Instant, Ev)>>,
    ) -> u64 {
        *generation += 1;
        *probe = at.1;
        events.push(Reverse((at.0, Ev::Timer(*generation))));
        *generation
    }

    for (i, tx) in last_tx.iter_mut().enumerate() {
        order += 1;
        *tx = (sent, order);
        transmit(i, sent, &mut events, rng);
    }
    let mut current = set_timer(
        arm(sent, sacked, probe_used, recovering, backoff),
        &mut timer_gen,
        &mut timer_probe,
        &mut events,
    );

    // Bounded: each step moves time on or ends a retransmission.
    for _ in 0..100_000 {
        let Some(Reverse((now, ev))) = events.pop() else {
            break;
        };

        match ev {
            Ev::Data(i) => {
                received |= 1 << i;
                if received == all {
                    return now;
                }
                if !rng.gen_bool(path.ack_loss.clamp(0.0, 0.99)) {
                    let j = jitter(path.ack_jitter, rng);
                    events.push(Reverse((now + path.ack_delay + j, Ev::Ack(received))));
                }
            }
            Ev::Ack(have) => {
                let new = have & !sacked;
                if new == 0 {
                    continue;
                }
                sacked |= have;
                backoff = 0;
                retransmits = 0;
                probe_used = false;
                // RACK: segments sent before the newest one just acknowledged are lost once
                // SRTT + reo_wnd has passed since they were sent.
                let newest = (0..n).filter(|i| new & (1 << i) != 0).map(|i| last_tx[i]).max();
                let reo = path.min_rtt() / 4;
                let mut reorder_at: Option<Instant> = None;
                for (i, tx) in last_tx.iter().enumerate() {
                    let bit = 1 << i;
                    if sacked & bit != 0 || newest.is_none_or(|nw| *tx >= nw) {
                        continue;
                    }
                    let deadline = tx.0 + path.srtt() + reo;
                    if deadline <= now {
                        lost |= bit;
                    } else {
                        reorder_at = Some(reorder_at.map_or(deadline, |d| d.min(deadline)));
                    }
                }
                if let Some(at) = reorder_at {
                    events.push(Reverse((at, Ev::Reorder)));
                }
                for (i, tx) in last_tx.iter_mut().enumerate() {
                    if lost & (1 << i) != 0 {
                        lost &= !(1 << i);
                        order += 1;
                        *tx = (now, order);
                        recovering = true;
                        transmit(i, now, &mut events, rng);
                    }
                }
                current = set_timer(
                    arm(now, sacked, probe_used, recovering, backoff),
                    &mut timer_gen,
                    &mut timer_probe,
                    &mut events,
                );
            }
            Ev::Reorder => {
                let reo = path.min_rtt() / 4;
                let newest = (0..n)
                    .filter(|i| sacked & (1 << i) != 0)
                    .map(|i| last_tx[i])
                    .max();
                for (i, tx) in last_tx.iter_mut().enumerate() {
                    if sacked & (1 << i) == 0
                        && newest.is_some_and(|nw| *tx < nw)
                        && tx.0 + path.srtt() + reo <= now
                    {
                        order += 1;
                        *tx = (now, order);
                        recovering = true;
                        transmit(i, now, &mut events, rng);
                    }
                }
            }
            Ev::Timer(g) => {
                if g != current {
                    continue;
                }
                let unacked: Vec<usize> = (0..n).filter(|i| sacked & (1 << i) == 0).collect();
                let (Some(&first), Some(&last)) = (unacked.first(), unacked.last()) else {
                    continue;
                };
                if timer_probe {
                    // Tail loss probe: the last segment again; the RTO restarted from now.
                    probe_used = true;
                    order += 1;
                    last_tx[last] = (now, order);
                    transmit(last, now, &mut events, rng);
                } else {
                    // RTO: the first unacknowledged segment, the timer doubled (kept, for a
                    // thin stream with linear timeouts: `packets_out` counts every segment
                    // from the first unacknowledged one, SACKed or not); the others are lost
                    // and follow with the ACKs.
                    retransmits += 1;
                    let thin = n - first < 4;
                    if !(path.options.thin_linear && thin && retransmits <= THIN_LINEAR_RETRIES) {
                        backoff += 1;
                    }
                    recovering = true;
                    order += 1;
                    last_tx[first] = (now, order);
                    for &i in &unacked[1..] {
                        lost |= 1 << i;
                    }
                    transmit(first, now, &mut events, rng);
                }
                current = set_timer(
                    arm(now, sacked, probe_used, recovering, backoff),
                    &mut timer_gen,
                    &mut timer_probe,
                    &mut events,
                );
            }
        }
    }
    sent + Duration::from_secs(120)
}

fn jitter(max: Duration, rng: &mut StdRng) -> Duration {
    if max.is_zero() {
        Duration::ZERO
    } else {
        Duration::from_micros(rng.gen_range(0..=max.as_micros() as u64))
    }
}

/// The harness's model before: one loss draw per message, each loss costing a timeout of
/// 200 ms + RTT doubling (no tail loss probe, no per-segment losses). Kept for the before/after
/// figures of `docs/quality.md`.
pub(crate) fn deliver_legacy(sent: Instant, path: &Path, rng: &mut StdRng) -> Instant {
    let mut at = sent + path.delay;
    let mut rto = RTO_MIN + path.delay + path.ack_delay;
    while path.loss > 0.0 && rng.gen_bool(path.loss.clamp(0.0, 0.99)) {
        at += rto;
        rto *= 2;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn path(loss: f64) -> Path {
        Path {
            delay: Duration::from_millis(50),
            jitter: Duration::ZERO,
            loss,
            ack_loss: loss,
            ack_delay: Duration::from_millis(50),
            ack_jitter: Duration::ZERO,
            options: Options::default(),
        }
    }

    /// On a steady 100 ms RTT path, Linux's RTO is 300 ms and a single-segment tail probe
    /// (2·SRTT + 200 ms = 400 ms) is capped by it.
    #[test]
    fn the_timers_are_linux_defaults() {
        let p = path(0.0);
        assert_eq!(p.rto(), Duration::from_millis(300));
        let mut rng = StdRng::seed_from_u64(1);
        let t0 = Instant::now();
        assert_eq!(deliver(t0, 1, &p, &mut rng) - t0, Duration::from_millis(50));
        assert_eq!(deliver(t0, 3, &p, &mut rng) - t0, Duration::from_millis(50));
    }

    /// The arrival times of a one-segment message lost k times in a row (every draw made
    /// lossy by a 0.99 loss until the budget runs out is not possible to force, so: the
    /// possible arrival times over many seeds are Linux's schedule: the probe at the RTO,
    /// 300 ms, then RTOs 300, 600, 1200 ms after each other (sent at 0, 300, 600, 1200, 2400).
    #[test]
    fn a_lost_single_segment_follows_probe_then_doubling_rtos() {
        let p = path(0.5);
        let t0 = Instant::now();
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..2000 {
            let mut rng = StdRng::seed_from_u64(seed);
            seen.insert((deliver(t0, 1, &p, &mut rng) - t0).as_millis());
        }
        let first: Vec<u128> = seen.iter().copied().take(5).collect();
        assert_eq!(first, vec![50, 350, 650, 1250, 2450], "{seen:?}");
    }

    /// A hole before a delivered segment is repaired by RACK, not by a timer: about one RTT
    /// and a quarter after it was sent, earlier than the probe or the RTO.
    #[test]
    fn a_hole_is_repaired_by_rack() {
        let p = path(0.3);
        let t0 = Instant::now();
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..2000 {
            let mut rng = StdRng::seed_from_u64(seed);
            seen.insert((deliver(t0, 3, &p, &mut rng) - t0).as_millis());
        }
        // 50: no loss; 175 (100 ms to learn of the later segment, 25 ms reo_wnd, 50 ms back):
        // a hole repaired by RACK; 252: the tail probe of a multi-segment flight (2·SRTT + 2 ms).
        assert!(
            seen.contains(&50) && seen.contains(&175) && seen.contains(&252),
            "{seen:?}"
        );
        // Nothing arrives between the first try and RACK's repair.
        assert!(seen.iter().all(|t| *t == 50 || *t >= 175), "{seen:?}");
    }

    /// The schedule of a lost single segment with the thin-stream options
    /// ([`Options::thin_stream`]): the RTO is SRTT + 50 ms = 150 ms (before the probe's
    /// 2·SRTT + 50 ms) and does not double: tries at 0, 150, 300, 450, 600 ms. With linear
    /// timeouts alone, 300 ms apart.
    #[test]
    fn the_thin_stream_options_retry_a_lost_segment_linearly_and_sooner() {
        let t0 = Instant::now();
        for (options, want) in [
            (Options::thin_stream(), vec![50, 200, 350, 500, 650]),
            (
                Options {
                    rto_min: RTO_MIN,
                    thin_linear: true,
                },
                vec![50, 350, 650, 950, 1250],
            ),
        ] {
            let p = Path { options, ..path(0.5) };
            let mut seen = std::collections::BTreeSet::new();
            for seed in 0..2000 {
                let mut rng = StdRng::seed_from_u64(seed);
                seen.insert((deliver(t0, 1, &p, &mut rng) - t0).as_millis());
            }
            let first: Vec<u128> = seen.iter().copied().take(5).collect();
            assert_eq!(first, want, "{options:?}: {seen:?}");
        }
    }

    /// The old model waited 300 ms, then 600, 1200 ms more: later than Linux from the second
    /// loss on.
    #[test]
    fn the_old_model_was_slower_than_linux_after_two_losses() {
        let p = path(0.5);
        let t0 = Instant::now();
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..2000 {
            let mut rng = StdRng::seed_from_u64(seed);
            seen.insert((deliver_legacy(t0, &p, &mut rng) - t0).as_millis());
        }
        let first: Vec<u128> = seen.iter().copied().take(4).collect();
        assert_eq!(first, vec![50, 350, 950, 2150]);
    }
}
