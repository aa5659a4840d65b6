//! A seeded network impairment model for deterministic tests on virtual time.
//!
//! A [`Link`] carries packets of any type from a sender to a receiver with delay, jitter, loss
//! (independent or in bursts), reordering and duplication drawn from a seeded random generator:
//! the same seed and the same calls give the same deliveries, on any machine. Nothing sleeps and
//! nothing reads a clock; the test moves time forward itself.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use huddle_media::impair::{Impairment, Link};
//!
//! let mut config = Impairment::default();
//! config.delay = Duration::from_millis(30);
//! config.jitter = Duration::from_millis(50);
//! config.loss = 0.3;
//! let mut link = Link::new(config, 7);
//!
//! let t0 = Instant::now();
//! let mut received = Vec::new();
//! for ms in 0..3_000u64 {
//!     let now = t0 + Duration::from_millis(ms);
//!     if ms % 20 == 0 && ms < 2_000 {
//!         link.send(ms / 20, now);
//!     }
//!     while let Some(packet) = link.recv(now) {
//!         received.push(packet);
//!     }
//! }
//! assert!((55..=85).contains(&received.len())); // about 70 % of 100
//! ```

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How a [`Link`] damages traffic. The default is a perfect link with no delay.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Impairment {
    /// Base one-way delay.
    pub delay: Duration,
    /// Extra delay drawn uniformly from `[0, jitter]` for each packet (packets reorder when it
    /// exceeds their spacing).
    pub jitter: Duration,
    /// Share of packets lost, 0.0 to 1.0.
    pub loss: f64,
    /// Mean length of a loss burst in packets (Gilbert-Elliott model); 1.0 gives independent
    /// losses.
    pub burst: f64,
    /// Share of packets held back by `reorder_delay` more (so later packets overtake them).
    pub reorder: f64,
    /// Extra delay of a reordered packet.
    pub reorder_delay: Duration,
    /// Share of packets delivered twice (the copy 1 ms later).
    pub duplicate: f64,
}

impl Default for Impairment {
    fn default() -> Self {
        Impairment {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 0.0,
            burst: 1.0,
            reorder: 0.0,
            reorder_delay: Duration::from_millis(40),
            duplicate: 0.0,
        }
    }
}

/// Counters of a [`Link`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LinkStats {
    /// Packets given to [`Link::send`].
    pub sent: u64,
    /// Packets dropped (loss model or link down).
    pub dropped: u64,
    /// Packets handed out by [`Link::recv`] (duplicates included).
    pub delivered: u64,
    /// Packets sent twice.
    pub duplicated: u64,
    /// Packets held back to reorder them.
    pub reordered: u64,
}

/// A one-way link with seeded impairments (see the [module docs](self)).
#[derive(Debug)]
pub struct Link<P> {
    config: Impairment,
    rng: StdRng,
    queue: BinaryHeap<InFlight<P>>,
    /// Order of sending, to break ties between equal arrival times deterministically.
    order: u64,
    /// Gilbert-Elliott state: in a loss burst.
    bad: bool,
    down: bool,
    stats: LinkStats,
}

#[derive(Debug)]
struct InFlight<P> {
    at: Instant,
    order: u64,
    packet: P,
}

impl<P> PartialEq for InFlight<P> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}
impl<P> Eq for InFlight<P> {}
impl<P> PartialOrd for InFlight<P> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<P> Ord for InFlight<P> {
    // Reversed: BinaryHeap is a max-heap and the earliest arrival must come out first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.order).cmp(&(self.at, self.order))
    }
}

impl<P: Clone> Link<P> {
    /// A link with these impairments, drawing from a generator seeded with `seed`.
    pub fn new(config: Impairment, seed: u64) -> Self {
        Link {
            config,
            rng: StdRng::seed_from_u64(seed),
            queue: BinaryHeap::new(),
            order: 0,
            bad: false,
            down: false,
            stats: LinkStats::default(),
        }
    }

    /// The impairments.
    pub fn config(&self) -> &Impairment {
        &self.config
    }

    /// Changes the impairments from now on (packets in flight keep their arrival time).
    pub fn set_config(&mut self, config: Impairment) {
        self.config = config;
    }

    /// Takes the link down (every packet sent is dropped) or up again, for outage tests.
    pub fn set_down(&mut self, down: bool) {
        self.down = down;
    }

    /// Counters.
    pub fn stats(&self) -> LinkStats {
        self.stats
    }

    /// Sends a packet at `now`.
    pub fn send(&mut self, packet: P, now: Instant) {
        self.stats.sent += 1;
        if self.down || self.lose() {
            self.stats.dropped += 1;
            return;
        }
        let mut delay = self.config.delay;
        if !self.config.jitter.is_zero() {
            delay += self.config.jitter.mul_f64(self.rng.r#gen::<f64>());
        }
        if self.config.reorder > 0.0 && self.rng.gen_bool(self.config.reorder.clamp(0.0, 1.0)) {
            delay += self.config.reorder_delay;
            self.stats.reordered += 1;
        }
        if self.config.duplicate > 0.0 && self.rng.gen_bool(self.config.duplicate.clamp(0.0, 1.0)) {
            self.stats.duplicated += 1;
            self.push(packet.clone(), now + delay + Duration::from_millis(1));
        }
        self.push(packet, now + delay);
    }

    /// The next packet that has arrived by `now`, earliest first.
    pub fn recv(&mut self, now: Instant) -> Option<P> {
        if self.queue.peek()?.at > now {
            return None;
        }
        self.stats.delivered += 1;
        self.queue.pop().map(|p| p.packet)
    }

    /// When the next packet arrives, if one is in flight (to advance virtual time to it).
    pub fn next_arrival(&self) -> Option<Instant> {
        self.queue.peek().map(|p| p.at)
    }

    /// Packets in flight.
    pub fn in_flight(&self) -> usize {
        self.queue.len()
    }

    fn push(&mut self, packet: P, at: Instant) {
        self.order += 1;
        self.queue.push(InFlight {
            at,
            order: self.order,
            packet,
        });
    }

    fn lose(&mut self) -> bool {
        let loss = self.config.loss.clamp(0.0, 1.0);
        if loss == 0.0 {
            return false;
        }
        if self.config.burst <= 1.0 || loss >= 1.0 {
            return self.rng.gen_bool(loss);
        }
        // Gilbert-Elliott with a lossless good state and an all-loss bad state: leaving the bad
        // state with probability 1/burst gives bursts of `burst` packets on average, and entering
        // it with loss/(1-loss) of that gives `loss` overall.
        let leave = 1.0 / self.config.burst;
        let enter = (loss * leave / (1.0 - loss)).min(1.0);
        self.bad = if self.bad {
            !self.rng.gen_bool(leave)
        } else {
            self.rng.gen_bool(enter)
        };
        self.bad
    }
}
