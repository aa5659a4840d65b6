//! What a pull between two nodes adds to forwarding, side by side with one node in one run: the
//! SFU cores of node A (the publisher's) and node B (the players'), wired by the link's
//! datagrams in memory (`sfu::testkit`, no socket), against one SFU with the publisher and the
//! same players (`docs/cluster.md`, "Numbers").
//!
//! ```sh
//! cargo bench -p huddle-server --features testkit --bench relay
//! HUDDLE_RELAY_PLAYERS="1 20" HUDDLE_RELAY_PACKETS=500 HUDDLE_RELAY_ROUNDS=7 \
//!     cargo bench -p huddle-server --features testkit --bench relay
//! ```
//!
//! For each packet the publisher sends, the benchmark times the SFU work it causes: on one
//! node, handling the publisher's datagram and draining every player's; across two, the same on
//! A (whose one player is the link) plus, on B, handling the link's datagram (the relay PC's
//! SRTP in) and draining B's players'. The difference is the CPU a relayed packet costs, and
//! B's share is the processing latency the hop adds (the link's socket and the kernel come on
//! top: they are not in memory). Every player must receive every packet, or the run stops.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use huddle_proto::{MediaRole, ServerMsg, StreamId};
use huddle_server::sfu::Command;
use huddle_server::sfu::testkit::{Peer, Sim, app, payload, session};
use str0m::Input;
use str0m::media::MediaKind;

mod util;
use util::{env_list, median};

/// The link's socket on node B.
const LINK: &str = "127.0.0.1:40000";
/// The link's session on both nodes.
const LINK_SESSION: u64 = 9;

/// A publisher on `a`; `n` players on `b` (pulled over the link) or, with no `b`, on `a`.
struct Setup {
    a: Sim,
    b: Option<Sim>,
    publisher: Peer,
    players: Vec<Peer>,
    sent: usize,
}

fn answer_for(sim: &mut Sim, who: u64) -> String {
    let i = sim
        .signals
        .iter()
        .position(|(s, m)| *s == session(who) && matches!(m, ServerMsg::MediaAnswer { .. }))
        .unwrap_or_else(|| panic!("no answer for {who}: {:?}", sim.signals));
    let ServerMsg::MediaAnswer { sdp, .. } = sim.signals.remove(i).1 else {
        unreachable!()
    };
    sdp
}

impl Setup {
    fn new(n: usize, relayed: bool) -> Setup {
        let mut a = Sim::new();
        let (mut publisher, offer) = Peer::new(a.now, 10_000, MediaRole::Publish, false);
        a.negotiate(&mut publisher, offer, 1, "s", MediaRole::Publish);
        let mut b = relayed.then(|| Sim::with_candidates(vec!["127.0.0.1:7883".parse().unwrap()]));
        if let Some(b) = &mut b {
            b.now = a.now;
            // The pull: B's relay PC offers, A answers it as a play, B takes the answer.
            b.command(Command::PullOffer {
                session: session(LINK_SESSION),
                app: app(),
                stream_id: StreamId::new("s").unwrap(),
                local: LINK.parse().unwrap(),
            });
            let offer = answer_for(b, LINK_SESSION);
            a.offer(LINK_SESSION, "s", MediaRole::Play, offer);
            let sdp = answer_for(&mut a, LINK_SESSION);
            b.command(Command::PullAnswer {
                session: session(LINK_SESSION),
                app: app(),
                stream_id: StreamId::new("s").unwrap(),
                sdp,
            });
        }
        let players = (0..n)
            .map(|i| {
                let sim = b.as_mut().unwrap_or(&mut a);
                let port = 11_000 + u16::try_from(i).expect("at most 50 000 players");
                let (mut p, offer) = Peer::new(sim.now, port, MediaRole::Play, false);
                p.keep = false;
                sim.negotiate(&mut p, offer, 10 + i as u64, "s", MediaRole::Play);
                p
            })
            .collect();
        let mut s = Setup {
            a,
            b,
            publisher,
            players,
            sent: 0,
        };
        for _ in 0..3000 {
            if s.publisher.connected && s.players.iter().all(|p| p.connected) {
                break;
            }
            s.tick(Duration::from_millis(1));
        }
        assert!(
            s.players.iter().all(|p| p.connected),
            "the players did not connect"
        );
        // Media flows end to end (the link's PC too) before anything is measured.
        for _ in 0..50 {
            s.send_one();
            s.tick(Duration::from_millis(20));
        }
        s.settle();
        for p in &mut s.players {
            p.received = 0;
        }
        s.sent = 0;
        s
    }

    /// `d` of virtual time: every peer's and node's timers, and what they send, until quiet.
    fn tick(&mut self, d: Duration) {
        self.a.now += d;
        let now = self.a.now;
        if let Some(b) = &mut self.b {
            b.now = now;
        }
        let mut up_a = Vec::new();
        let _ = self.publisher.rtc.handle_input(Input::Timeout(now));
        self.publisher.drain_to(&mut up_a);
        let mut up_players = Vec::new();
        for p in &mut self.players {
            let _ = p.rtc.handle_input(Input::Timeout(now));
            p.drain_to(&mut up_players);
        }
        for (from, to, bytes) in up_a {
            self.a.sfu.handle_datagram_to(now, from, to, &bytes);
        }
        let players_node = self.b.as_mut().unwrap_or(&mut self.a);
        for (from, to, bytes) in up_players {
            players_node.sfu.handle_datagram_to(now, from, to, &bytes);
        }
        if self.a.sfu.poll_timeout().is_some_and(|t| t <= now) {
            self.a.sfu.handle_timeout(now);
        }
        if let Some(b) = &mut self.b
            && b.sfu.poll_timeout().is_some_and(|t| t <= now)
        {
            b.sfu.handle_timeout(now);
        }
        self.settle();
    }

    /// Carries every queued datagram (and what it causes) until no node has one.
    fn settle(&mut self) {
        let now = self.a.now;
        let link: SocketAddr = LINK.parse().unwrap();
        let key = (app(), StreamId::new("s").unwrap());
        loop {
            let mut moved = false;
            while let Some(t) = self.a.sfu.poll_transmit() {
                moved = true;
                if t.destination == self.publisher.addr {
                    let mut up = Vec::new();
                    self.publisher.receive_to(now, t.source, &t.contents, &mut up);
                    for (from, to, bytes) in up {
                        self.a.sfu.handle_datagram_to(now, from, to, &bytes);
                    }
                } else if t.destination == link
                    && let Some(b) = &mut self.b
                {
                    b.sfu
                        .handle_relay_input(now, session(LINK_SESSION), &key, t.source, link, &t.contents);
                } else if let Some(p) = self.players.iter_mut().find(|p| p.addr == t.destination) {
                    let mut up = Vec::new();
                    p.receive_to(now, t.source, &t.contents, &mut up);
                    for (from, to, bytes) in up {
                        self.a.sfu.handle_datagram_to(now, from, to, &bytes);
                    }
                }
            }
            if let Some(b) = &mut self.b {
                while let Some(t) = b.sfu.poll_transmit() {
                    moved = true;
                    if t.source == link {
                        self.a
                            .sfu
                            .handle_datagram_to(now, link, t.destination, &t.contents);
                    } else if let Some(p) = self.players.iter_mut().find(|p| p.addr == t.destination) {
                        let mut up = Vec::new();
                        p.receive_to(now, t.source, &t.contents, &mut up);
                        for (from, to, bytes) in up {
                            b.sfu.handle_datagram_to(now, from, to, &bytes);
                        }
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn send_one(&mut self) {
        let now = self.a.now;
        self.publisher.send(MediaKind::Audio, &payload(self.sent), now);
        self.sent += 1;
        let _ = self.publisher.rtc.handle_input(Input::Timeout(now));
    }

    /// Sends `packets` audio packets 20 ms apart; returns, for each, the SFU time each node
    /// spent on it (A; B, zero on one node), in µs.
    fn round(&mut self, packets: usize) -> Vec<(f64, f64)> {
        let link: SocketAddr = LINK.parse().unwrap();
        let key = (app(), StreamId::new("s").unwrap());
        let mut times = Vec::with_capacity(packets);
        let mut down = Vec::new();
        for _ in 0..packets {
            let (mut on_a, mut on_b) = (Duration::ZERO, Duration::ZERO);
            self.tick(Duration::from_millis(20));
            let now = self.a.now;
            self.send_one();
            let mut up = Vec::new();
            self.publisher.drain_to(&mut up);
            // Timed on A: the publisher's datagram in, every datagram out.
            let t = Instant::now();
            for (from, to, bytes) in &up {
                self.a.sfu.handle_datagram_to(now, *from, *to, bytes);
            }
            while let Some(tr) = self.a.sfu.poll_transmit() {
                down.push(tr);
            }
            on_a += t.elapsed();
            if let Some(b) = &mut self.b {
                // Timed on B: the link's datagrams in, every datagram out.
                let t = Instant::now();
                for tr in down.iter().filter(|tr| tr.destination == link) {
                    b.sfu
                        .handle_relay_input(now, session(LINK_SESSION), &key, tr.source, link, &tr.contents);
                }
                let mut out = Vec::with_capacity(self.players.len());
                while let Some(tr) = b.sfu.poll_transmit() {
                    out.push(tr);
                }
                on_b += t.elapsed();
                down.retain(|tr| tr.destination != link);
                for tr in out {
                    if tr.source == link {
                        self.a
                            .sfu
                            .handle_datagram_to(now, link, tr.destination, &tr.contents);
                    } else if let Some(p) = self.players.iter_mut().find(|p| p.addr == tr.destination) {
                        let mut up = Vec::new();
                        p.receive_to(now, tr.source, &tr.contents, &mut up);
                        for (from, to, bytes) in up {
                            b.sfu.handle_datagram_to(now, from, to, &bytes);
                        }
                    }
                }
            }
            // Not timed: the players (on one node) and the publisher get what A sent.
            for tr in down.drain(..) {
                let mut up = Vec::new();
                if tr.destination == self.publisher.addr {
                    self.publisher.receive_to(now, tr.source, &tr.contents, &mut up);
                } else if let Some(p) = self.players.iter_mut().find(|p| p.addr == tr.destination) {
                    p.receive_to(now, tr.source, &tr.contents, &mut up);
                }
                for (from, to, bytes) in up {
                    self.a.sfu.handle_datagram_to(now, from, to, &bytes);
                }
            }
            self.settle();
            times.push((on_a.as_secs_f64() * 1e6, on_b.as_secs_f64() * 1e6));
        }
        for (i, p) in self.players.iter().enumerate() {
            assert_eq!(p.received, self.sent as u64, "player {i} missed packets");
        }
        times
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this once, briefly.
    let quick = !std::env::args().any(|a| a == "--bench");
    let players = env_list("HUDDLE_RELAY_PLAYERS", if quick { &[1] } else { &[1, 20] });
    let packets = env_list("HUDDLE_RELAY_PACKETS", &[if quick { 20 } else { 500 }])[0];
    let rounds = env_list("HUDDLE_RELAY_ROUNDS", &[if quick { 1 } else { 7 }])[0].max(1);
    println!(
        "SFU cores, one audio stream, in memory ({packets} packets per round, {rounds} rounds, the median over every packet in)"
    );
    for n in players {
        let mut one = Setup::new(n, false);
        let mut two = Setup::new(n, true);
        let (mut single, mut a_side, mut b_side) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            // Alternated in one run, so that both see the same machine.
            single.extend(one.round(packets).into_iter().map(|(a, _)| a));
            for (a, b) in two.round(packets) {
                a_side.push(a);
                b_side.push(b);
            }
        }
        // Medians over every packet: a packet whose handling the scheduler interrupted (other
        // processes share the cores) does not move them.
        let (single, a_side, b_side) = (median(&mut single), median(&mut a_side), median(&mut b_side));
        println!(
            "1 x {n:>3} players: one node {single:>7.2} µs | pulled: node A {a_side:>7.2} µs + node B {b_side:>7.2} µs \
             = {:>7.2} µs; the relay adds {:>6.2} µs of CPU per packet, and node B's {b_side:.2} µs of processing latency",
            a_side + b_side,
            a_side + b_side - single
        );
    }
}
