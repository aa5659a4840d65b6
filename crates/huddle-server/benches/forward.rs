//! The SFU core's own cost of forwarding audio: one publisher, N players, on the in-memory
//! network of `sfu::testkit` (no socket, so no kernel time: what is left is SRTP in and out,
//! str0m's per-connection work, rewriting and queueing).
//!
//! ```sh
//! cargo bench -p huddle-server --features testkit --bench forward
//! HUDDLE_FORWARD_PLAYERS="1 20 200" HUDDLE_FORWARD_PACKETS=300 HUDDLE_FORWARD_ROUNDS=7 \
//!     cargo bench -p huddle-server --features testkit --bench forward
//! ```
//!
//! `HUDDLE_FORWARD_MODES` compares ways of sending what the SFU writes (see `Mode::parse`): the
//! server's (`fast`: str0m's send fast path after each datagram) against stock str0m after each
//! datagram (`stock`) or once per batch of `HUDDLE_FORWARD_BATCH` datagrams (`stock-batch`):
//!
//! ```sh
//! HUDDLE_FORWARD_MODES="fast stock stock-batch" HUDDLE_FORWARD_BATCH=4 \
//!     cargo bench -p huddle-server --features testkit --bench forward
//! ```
//!
//! Prints, per N, the median over rounds of the CPU time of the SFU per forwarded packet and
//! per packet in (handling the publisher's datagram and draining every player's datagram),
//! with the spread. Every player must receive every packet, or the run stops.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use huddle_proto::MediaRole;
use huddle_server::sfu::testkit::{Peer, Sim, payload};
use str0m::Input;
use str0m::media::MediaKind;

mod util;
use util::{env_list, median};

struct Bench {
    sim: Sim,
    publisher: Peer,
    players: Vec<Peer>,
    /// Address → index in `players` (the publisher is `usize::MAX`).
    by_addr: HashMap<SocketAddr, usize>,
    sent: usize,
}

impl Bench {
    fn new(n: usize) -> Bench {
        let mut sim = Sim::new();
        let (mut publisher, offer) = Peer::new(sim.now, 10_000, MediaRole::Publish, false);
        sim.negotiate(&mut publisher, offer, 1, "s", MediaRole::Publish);
        let mut players: Vec<Peer> = (0..n)
            .map(|i| {
                let port = 11_000 + u16::try_from(i).expect("at most 50 000 players");
                let (mut p, offer) = Peer::new(sim.now, port, MediaRole::Play, false);
                p.keep = false;
                sim.negotiate(&mut p, offer, 10 + i as u64, "s", MediaRole::Play);
                p
            })
            .collect();
        {
            let mut all: Vec<&mut Peer> = std::iter::once(&mut publisher)
                .chain(players.iter_mut())
                .collect();
            sim.connect(&mut all);
        }
        let mut by_addr: HashMap<SocketAddr, usize> =
            players.iter().enumerate().map(|(i, p)| (p.addr, i)).collect();
        by_addr.insert(publisher.addr, usize::MAX);
        Bench {
            sim,
            publisher,
            players,
            by_addr,
            sent: 0,
        }
    }

    /// Datagrams from the server to the peers; their answers back to the server, until quiet.
    fn exchange(&mut self, mut down: Vec<(SocketAddr, Vec<u8>)>) {
        let now = self.sim.now;
        let server = self.sim.server;
        while !down.is_empty() {
            let mut up = Vec::new();
            for (to, bytes) in down.drain(..) {
                match self.by_addr.get(&to) {
                    Some(&usize::MAX) => self.publisher.receive(now, server, &bytes, &mut up),
                    Some(&i) => self.players[i].receive(now, server, &bytes, &mut up),
                    None => {}
                }
            }
            for (from, bytes) in &up {
                self.sim.sfu.handle_datagram(now, *from, bytes);
            }
            while let Some(t) = self.sim.sfu.poll_transmit() {
                down.push((t.destination, t.contents.into()));
            }
        }
    }

    /// Sends `packets` audio packets 20 ms apart, handed to the SFU `batch` at a time (as
    /// one `recvmmsg` would return them when they queue up); returns the SFU's time handling
    /// them.
    fn round(&mut self, packets: usize, mode: Mode) -> Duration {
        let mut in_sfu = Duration::ZERO;
        for _ in 0..packets.div_ceil(mode.batch) {
            let mut up = Vec::new();
            for _ in 0..mode.batch {
                self.sim.now += Duration::from_millis(20);
                let now = self.sim.now;
                self.publisher.send(MediaKind::Audio, &payload(self.sent), now);
                self.sent += 1;
                let _ = self.publisher.rtc.handle_input(Input::Timeout(now));
                self.publisher.drain(&mut up);
            }
            let now = self.sim.now;
            let mut down = Vec::with_capacity(self.players.len() * mode.batch + 4);
            // Timed: the publisher's datagrams in, every datagram out of the SFU's queue.
            let t = Instant::now();
            if mode.per_batch {
                self.sim.sfu.handle_datagram_batch(now, &up);
            } else {
                for (from, bytes) in &up {
                    self.sim.sfu.handle_datagram(now, *from, bytes);
                }
            }
            while let Some(tr) = self.sim.sfu.poll_transmit() {
                down.push((tr.destination, tr.contents.into()));
            }
            in_sfu += t.elapsed();
            // Not timed: the players receive (and must get every packet), and their own traffic
            // (ICE consent, RTCP) and the server's timers keep the connections alive.
            self.exchange(down);
            let mut up = Vec::new();
            for p in &mut self.players {
                let _ = p.rtc.handle_input(Input::Timeout(now));
                p.drain(&mut up);
            }
            for (from, bytes) in &up {
                self.sim.sfu.handle_datagram(now, *from, bytes);
            }
            if self.sim.sfu.poll_timeout().is_some_and(|t| t <= now) {
                self.sim.sfu.handle_timeout(now);
            }
            let mut down = Vec::new();
            while let Some(t) = self.sim.sfu.poll_transmit() {
                down.push((t.destination, t.contents.into()));
            }
            self.exchange(down);
        }
        for (i, p) in self.players.iter().enumerate() {
            assert_eq!(p.received, self.sent as u64, "player {i} missed packets");
        }
        in_sfu
    }
}

/// How the SFU sends what it writes: what the modes compare.
#[derive(Clone, Copy)]
struct Mode {
    name: &'static str,
    /// str0m's send fast path (`Rtc::send_written_rtp`, vendor/patches/0002-send-fast-path.patch).
    fast_path: bool,
    /// One flush per batch of received datagrams rather than per datagram.
    per_batch: bool,
    /// Datagrams per batch.
    batch: usize,
}

impl Mode {
    fn parse(name: &str, batch: usize) -> Option<Mode> {
        let (name, fast_path, per_batch) = match name {
            // What the server does: fast path, a flush after each datagram.
            "fast" => ("fast", true, false),
            // Stock str0m: a full timeout and drain per written PC, after each datagram.
            "stock" => ("stock", false, false),
            // Stock str0m, one full timeout and drain per written PC per batch.
            "stock-batch" => ("stock-batch", false, true),
            // Both.
            "fast-batch" => ("fast-batch", true, true),
            _ => return None,
        };
        Some(Mode {
            name,
            fast_path,
            per_batch,
            batch,
        })
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this once, briefly.
    let quick = !std::env::args().any(|a| a == "--bench");
    let players = env_list(
        "HUDDLE_FORWARD_PLAYERS",
        if quick { &[1, 20] } else { &[1, 20, 200] },
    );
    let packets = env_list("HUDDLE_FORWARD_PACKETS", &[if quick { 20 } else { 300 }])[0];
    let rounds = env_list("HUDDLE_FORWARD_ROUNDS", &[if quick { 1 } else { 7 }])[0].max(1);
    let batch = env_list("HUDDLE_FORWARD_BATCH", &[1])[0].max(1);
    // HUDDLE_FORWARD_MODES: any of fast, stock, stock-batch, fast-batch (quick: all of them).
    let modes: Vec<Mode> = std::env::var("HUDDLE_FORWARD_MODES")
        .unwrap_or_else(|_| {
            if quick {
                "fast stock stock-batch fast-batch"
            } else {
                "fast"
            }
            .into()
        })
        .split_whitespace()
        .map(|m| Mode::parse(m, batch).unwrap_or_else(|| panic!("unknown mode {m}")))
        .collect();
    println!(
        "SFU core, audio forwarding, in memory ({packets} packets per round, {batch} per batch, {rounds} rounds, median [min-max])"
    );
    for n in players {
        for &mode in &modes {
            let mut bench = Bench::new(n);
            bench.sim.sfu.set_fast_path(mode.fast_path);
            bench.round(packets.min(50), mode); // warm-up
            let mut per_fwd = Vec::new();
            let mut per_in = Vec::new();
            for _ in 0..rounds {
                let sent = packets.div_ceil(batch) * batch;
                let t = bench.round(packets, mode).as_secs_f64() * 1e6;
                per_fwd.push(t / (sent * n) as f64);
                per_in.push(t / sent as f64);
            }
            let (lo, hi) = (
                per_fwd.iter().copied().fold(f64::MAX, f64::min),
                per_fwd.iter().copied().fold(0.0, f64::max),
            );
            println!(
                "{:<11} 1 x {n:>4}: {:>6.3} µs per forwarded packet [{lo:.3}-{hi:.3}], {:>8.2} µs per packet in",
                mode.name,
                median(&mut per_fwd),
                median(&mut per_in),
            );
        }
    }
}
