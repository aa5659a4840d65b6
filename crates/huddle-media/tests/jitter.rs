//! The jitter buffer on virtual time, through the seeded impairment model.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use huddle_media::impair::{Impairment, Link};
use huddle_media::{Inserted, JitterBuffer, JitterConfig, JitterStats, Playout};

const MS: Duration = Duration::from_millis(1);

fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

/// A packet on the simulated link: (seq, RTP timestamp, payload).
type Packet = (u16, u32, Vec<u8>);

fn payload(i: u64) -> Vec<u8> {
    i.to_be_bytes().to_vec()
}

/// One simulated call: a sender producing a packet every 20 ms through a `Link`, a receiver
/// inserting what arrives and popping at its own 20 ms cadence (offset by `phase` ms).
struct Sim {
    jb: JitterBuffer,
    link: Link<Packet>,
    t0: Instant,
    ms: u64,
    phase: u64,
    first_seq: u16,
    first_ts: u32,
    /// Packet index -> arrival time (ms), for what the receiver got.
    arrived: BTreeMap<u64, u64>,
    /// (time in ms, output) for every pop.
    outputs: Vec<(u64, Playout)>,
    inserted: Vec<Inserted>,
}

impl Sim {
    fn new(config: JitterConfig, impairment: Impairment, seed: u64) -> Self {
        Sim {
            jb: JitterBuffer::new(config),
            link: Link::new(impairment, seed),
            t0: Instant::now(),
            ms: 0,
            phase: 7,
            first_seq: 1000,
            first_ts: 123_456,
            arrived: BTreeMap::new(),
            outputs: Vec::new(),
            inserted: Vec::new(),
        }
    }

    fn index_of(&self, seq: u16) -> u64 {
        u64::from(seq.wrapping_sub(self.first_seq))
    }

    /// Runs `ms` milliseconds; the sender sends packets `range` (one every 20 ms, packet i at
    /// i * 20 ms) when their time comes.
    fn run(&mut self, ms: u64, send: impl Fn(u64) -> bool) {
        for _ in 0..ms {
            let now = self.t0 + millis(self.ms);
            if self.ms.is_multiple_of(20) {
                let i = self.ms / 20;
                if send(i) {
                    let seq = self.first_seq.wrapping_add(i as u16);
                    let ts = self.first_ts.wrapping_add(960 * i as u32);
                    self.link.send((seq, ts, payload(i)), now);
                }
            }
            while let Some((seq, ts, data)) = self.link.recv(now) {
                self.arrived.entry(self.index_of(seq)).or_insert(self.ms);
                self.inserted.push(self.jb.insert(seq, ts, data, now));
            }
            if self.ms % 20 == self.phase {
                while let Some(out) = self.jb.pop(now) {
                    self.outputs.push((self.ms, out));
                }
            }
            self.ms += 1;
        }
    }

    fn stats(&self) -> JitterStats {
        self.jb.stats()
    }

    /// Indices of the packets played, in order.
    fn played(&self) -> Vec<u64> {
        self.outputs
            .iter()
            .filter_map(|(_, o)| match o {
                Playout::Packet { payload, .. } => Some(u64::from_be_bytes(payload[..].try_into().unwrap())),
                _ => None,
            })
            .collect()
    }
}

fn impairment(delay_ms: u64, jitter_ms: u64, loss: f64) -> Impairment {
    let mut config = Impairment::default();
    config.delay = millis(delay_ms);
    config.jitter = millis(jitter_ms);
    config.loss = loss;
    config
}

#[test]
fn a_clean_network_plays_everything_with_20_to_40_ms_of_delay() {
    let mut sim = Sim::new(JitterConfig::default(), impairment(30, 0, 0.0), 1);
    sim.run(10_000, |i| i < 400);
    let stats = sim.stats();
    eprintln!("clean: {stats:?}");
    assert_eq!(sim.played(), (0..400).collect::<Vec<_>>());
    assert_eq!(
        (stats.lost, stats.late, stats.fec_recovered, stats.discarded),
        (0, 0, 0, 0)
    );
    assert_eq!(stats.target_delay, 20 * MS);
    assert!(
        (20 * MS..40 * MS).contains(&stats.current_delay),
        "{:?}",
        stats.current_delay
    );
    // Nothing but packets until the stream ended (then concealment until it is taken as stopped).
    let last_packet = sim
        .outputs
        .iter()
        .rposition(|(_, o)| matches!(o, Playout::Packet { .. }))
        .unwrap();
    assert!(
        sim.outputs[..last_packet]
            .iter()
            .all(|(_, o)| matches!(o, Playout::Packet { .. }))
    );
    // The first packet is played 20 to 40 ms after it arrived, on the receiver's tick.
    let (first_out, _) = sim.outputs[0];
    assert!((50..70).contains(&first_out), "first output at {first_out} ms");
    // One output per 20 ms tick, then nothing once the stream is taken as stopped.
    assert!(sim.outputs.windows(2).all(|w| w[1].0 - w[0].0 == 20));
    assert!(sim.jb.pop(sim.t0 + 20_000 * MS).is_none());
}

#[test]
fn the_delay_grows_fast_with_50ms_of_jitter_and_shrinks_slowly_after() {
    let mut sim = Sim::new(JitterConfig::default(), impairment(30, 50, 0.0), 2);
    sim.run(1_000, |_| true);
    let early = sim.stats();
    sim.run(19_000, |_| true);
    let jittery = sim.stats();
    let played_jittery = sim.played().len() as u64;
    eprintln!("after 1 s: {early:?}\nafter 20 s: {jittery:?}");
    // 50 ms of uniform jitter: 95th percentile 47.5 ms, plus one frame.
    assert!(
        early.target_delay >= 55 * MS,
        "grows within a second: {:?}",
        early.target_delay
    );
    assert!(
        (60 * MS..=80 * MS).contains(&jittery.target_delay),
        "{:?}",
        jittery.target_delay
    );
    assert!(jittery.current_delay >= 55 * MS, "{:?}", jittery.current_delay);
    // Late packets are rare once the target is set: fewer than 2 %.
    assert!(
        jittery.late * 50 <= jittery.received,
        "{} late of {}",
        jittery.late,
        jittery.received
    );
    assert!(
        jittery.lost * 50 <= jittery.received,
        "{} lost of {}",
        jittery.lost,
        jittery.received
    );
    let mut order = sim.played();
    let len = order.len();
    order.dedup();
    assert_eq!(order.len(), len, "each packet once");
    assert!(order.windows(2).all(|w| w[0] < w[1]), "in order");

    // The network calms down: the delay shrinks, slowly.
    sim.link.set_config(impairment(30, 0, 0.0));
    sim.run(3_000, |_| true);
    let calming = sim.stats();
    sim.run(12_000, |_| true);
    let calm = sim.stats();
    eprintln!("calm 3 s: {calming:?}\ncalm 15 s: {calm:?}");
    assert!(
        calming.target_delay >= 45 * MS,
        "shrinks slowly: {:?}",
        calming.target_delay
    );
    assert!(calm.target_delay <= 25 * MS, "{:?}", calm.target_delay);
    assert!(calm.current_delay < 45 * MS, "{:?}", calm.current_delay);
    // It shrank by dropping a few frames, not by losing them.
    assert!(calm.discarded > jittery.discarded);
    assert!(calm.discarded - jittery.discarded <= 4, "{calm:?}");
    assert_eq!(calm.lost, jittery.lost);
    assert!(sim.played().len() as u64 > played_jittery + 700);
}

#[test]
fn reordering_within_the_delay_loses_nothing() {
    // Every fifth packet or so arrives 30 ms late, after the next one.
    let mut reordering = impairment(20, 0, 0.0);
    reordering.reorder = 0.2;
    reordering.reorder_delay = 30 * MS;

    // With a delay that covers it from the start: every packet, in order, no concealment.
    let mut config = JitterConfig::default();
    config.min_delay = 60 * MS;
    let mut sim = Sim::new(config, reordering.clone(), 3);
    sim.run(10_500, |i| i < 500);
    let stats = sim.stats();
    eprintln!("reorder, 60 ms: {stats:?}");
    assert!(sim.link.stats().reordered > 80);
    assert_eq!(sim.played(), (0..500).collect::<Vec<_>>());
    assert_eq!((stats.lost, stats.late, stats.expanded), (0, 0, 0));

    // Adaptive from 20 ms: the buffer learns the reordering within the first second, then
    // nothing is lost.
    let mut sim = Sim::new(JitterConfig::default(), reordering, 4);
    sim.run(1_000, |_| true);
    let warm = sim.stats();
    sim.run(10_000, |_| true);
    let stats = sim.stats();
    eprintln!("reorder, adaptive: {warm:?} then {stats:?}");
    assert!(stats.target_delay >= 40 * MS, "{:?}", stats.target_delay);
    assert_eq!(
        (stats.lost, stats.late),
        (warm.lost, warm.late),
        "no loss after the first second"
    );
    assert!(warm.late <= 3);
}

#[test]
fn with_30_percent_loss_every_loss_is_reported_with_fec_when_the_next_packet_is_there() {
    for (seed, jitter_ms) in [(5, 0), (6, 0), (7, 30)] {
        let mut sim = Sim::new(JitterConfig::default(), impairment(40, jitter_ms, 0.3), seed);
        sim.run(20_000, |i| i < 900);
        let stats = sim.stats();
        eprintln!("30 % loss, {jitter_ms} ms jitter: {stats:?}");
        let received: BTreeSet<u64> = sim.arrived.keys().copied().collect();
        let first = *received.first().unwrap();
        let last = *received.last().unwrap();
        assert!((550..700).contains(&received.len()), "{}", received.len());

        let mut reported = BTreeSet::new();
        let (mut with_next, mut fec) = (0, 0);
        for (at, out) in &sim.outputs {
            let Playout::Lost { seq, fec_from } = out else {
                continue;
            };
            let i = sim.index_of(*seq);
            if i > last {
                continue; // the end of the stream
            }
            assert!(reported.insert(i), "{i} reported twice");
            let next_here = sim.arrived.get(&(i + 1)).is_some_and(|&t| t <= *at);
            if let Some(next) = fec_from {
                assert_eq!(next, &payload(i + 1), "FEC must come from the packet after {i}");
            }
            if next_here {
                with_next += 1;
                fec += usize::from(fec_from.is_some());
            } else {
                assert!(fec_from.is_none());
            }
            if jitter_ms == 0 {
                assert!(!received.contains(&i), "{i} was received but reported lost");
                assert_eq!(fec_from.is_some(), next_here, "packet {i}");
            }
        }
        // Every packet between the first and last received is played or reported lost.
        let played: BTreeSet<u64> = sim.played().into_iter().collect();
        for i in first..=last {
            assert!(played.contains(&i) ^ reported.contains(&i), "packet {i}");
        }
        eprintln!(
            "  {} lost reported, {with_next} with the next packet here, {fec} with FEC",
            reported.len()
        );
        assert_eq!(fec, with_next);
        assert!(fec * 100 >= reported.len() * 60, "{fec} of {}", reported.len());
        assert_eq!(stats.fec_recovered as usize, fec);
        if jitter_ms == 0 {
            assert_eq!(played.len(), received.len());
            assert_eq!(stats.lost as usize, reported.len());
            assert_eq!(stats.target_delay, 20 * MS);
        }
    }
}

#[test]
fn sequence_numbers_and_timestamps_wrap_around() {
    let mut sim = Sim::new(JitterConfig::default(), impairment(30, 10, 0.0), 8);
    sim.first_seq = 65_400;
    sim.first_ts = u32::MAX - 960 * 50 + 7;
    sim.run(6_000, |i| i < 250);
    let stats = sim.stats();
    assert_eq!(
        sim.played().len(),
        250 - stats.lost as usize - stats.discarded as usize
    );
    assert!(stats.lost <= 3 && stats.restarts == 0, "{stats:?}");
    let seqs: Vec<u16> = sim
        .outputs
        .iter()
        .filter_map(|(_, o)| match o {
            Playout::Packet { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect();
    assert!(seqs.contains(&65_535) && seqs.contains(&0));
    assert!(seqs.windows(2).all(|w| w[1].wrapping_sub(w[0]) as i16 > 0));
}

#[test]
fn duplicates_are_dropped_and_counted() {
    let mut dup = impairment(30, 0, 0.0);
    dup.duplicate = 0.25;
    let mut sim = Sim::new(JitterConfig::default(), dup, 9);
    sim.run(5_000, |i| i < 200);
    let stats = sim.stats();
    assert_eq!(sim.played(), (0..200).collect::<Vec<_>>());
    assert_eq!(stats.duplicates, sim.link.stats().duplicated);
    assert!(stats.duplicates > 30);
    assert_eq!(
        sim.inserted.iter().filter(|&&i| i == Inserted::Duplicate).count() as u64,
        stats.duplicates
    );
}

#[test]
fn a_caller_that_sleeps_until_next_due_plays_after_exactly_the_target_delay() {
    let mut jb = JitterBuffer::new(JitterConfig::default());
    let t0 = Instant::now();
    assert_eq!(jb.next_due(), None);
    // Packets arrive 3 ms after each 20 ms boundary; the caller wakes only at `next_due`.
    let mut wake = None;
    let mut played = Vec::new();
    for ms in 0..1_000u64 {
        let now = t0 + millis(ms);
        if ms % 20 == 3 {
            let i = ms / 20;
            jb.insert(i as u16, 960 * i as u32, payload(i), now);
            wake = jb.next_due();
        }
        if wake.is_some_and(|w| w <= now) {
            while let Some(out) = jb.pop(now) {
                if let Playout::Packet { seq, .. } = out {
                    played.push((seq, ms));
                }
            }
            wake = jb.next_due();
        }
    }
    // Every packet is played 20 ms after it arrived.
    assert_eq!(played.len(), 49);
    assert!(
        played.iter().all(|&(seq, ms)| ms == u64::from(seq) * 20 + 23),
        "{played:?}"
    );
    assert_eq!(jb.stats().current_delay, 20 * MS);
}

#[test]
fn a_late_packet_is_dropped_and_its_frame_was_recovered_from_the_next_one() {
    let mut jb = JitterBuffer::new(JitterConfig::default());
    let t0 = Instant::now();
    let mut outs = Vec::new();
    for ms in 0..400u64 {
        let now = t0 + millis(ms);
        if ms % 20 == 0 && ms / 20 != 6 {
            let i = ms / 20;
            assert_eq!(
                jb.insert(i as u16, 960 * i as u32, payload(i), now),
                Inserted::Buffered
            );
        }
        if ms == 300 {
            // Packet 6 arrives 180 ms late, long after its frame was played.
            assert_eq!(jb.insert(6, 960 * 6, payload(6), now), Inserted::Late);
        }
        if ms % 20 == 5 {
            outs.extend(jb.pop(now));
        }
    }
    assert!(
        outs.contains(&Playout::Lost {
            seq: 6,
            fec_from: Some(payload(7))
        }),
        "{outs:?}"
    );
    let stats = jb.stats();
    assert_eq!(
        (stats.late, stats.lost, stats.fec_recovered),
        (1, 1, 1),
        "{stats:?}"
    );
    // The spike holds the target up: the next one like it will be in time.
    assert!(stats.target_delay >= 80 * MS, "{stats:?}");
    assert!(stats.played >= 12, "{stats:?}");
    assert_eq!(
        jb.insert(6, 960 * 6, payload(6), t0 + 400 * MS),
        Inserted::Duplicate
    );
}

#[test]
fn a_sender_restart_starts_the_buffer_over() {
    let mut sim = Sim::new(JitterConfig::default(), impairment(30, 0, 0.0), 10);
    sim.run(2_000, |i| i < 100);
    // The sender restarts with new random sequence numbers and timestamps.
    sim.first_seq = 40_000;
    sim.first_ts = 7;
    let before = sim.stats();
    sim.run(2_020, |_| true);
    let stats = sim.stats();
    eprintln!("restart: {stats:?}");
    assert_eq!(stats.restarts, 1);
    assert_eq!(
        sim.inserted.iter().filter(|&&i| i == Inserted::Restarted).count(),
        1
    );
    assert_eq!(stats.lost, before.lost);
    // The new stream plays from its first packet on.
    assert!(stats.played >= before.played + 95, "{stats:?}");
}

#[test]
fn an_opus_dtx_gap_costs_no_audio() {
    // 40 packets, then 400 ms of silence with one DTX packet in between, then speech again:
    // sequence numbers stay contiguous, timestamps jump.
    let mut jb = JitterBuffer::new(JitterConfig::default());
    let t0 = Instant::now();
    let mut sent = Vec::new();
    for i in 0..40u64 {
        sent.push((i * 20, i as u16, 960 * i as u32));
    }
    sent.push((40 * 20 + 400, 40, 960 * (40 + 20)));
    sent.push((40 * 20 + 800, 41, 960 * (40 + 40)));
    for i in 42..80u64 {
        sent.push((40 * 20 + 800 + (i - 41) * 20, i as u16, 960 * (i as u32 + 39)));
    }
    let mut outs = Vec::new();
    for ms in 0..3_000u64 {
        let now = t0 + millis(ms);
        for &(at, seq, ts) in &sent {
            if at + 25 == ms {
                jb.insert(seq, ts, vec![seq as u8], now);
            }
        }
        if ms % 20 == 3 {
            outs.extend(jb.pop(now));
        }
    }
    let stats = jb.stats();
    eprintln!("dtx: {stats:?}");
    assert_eq!(
        (stats.played, stats.lost, stats.late, stats.discarded),
        (80, 0, 0, 0)
    );
    assert!(
        stats.expanded >= 38,
        "the gaps are played as expansion: {stats:?}"
    );
}

#[test]
fn after_an_outage_media_is_back_within_the_delay() {
    let mut sim = Sim::new(JitterConfig::default(), impairment(30, 5, 0.0), 11);
    sim.run(3_000, |_| true);
    sim.link.set_down(true);
    sim.run(2_000, |_| true);
    sim.link.set_down(false);
    let back = sim.ms;
    sim.run(2_000, |_| true);
    let first_after = sim
        .outputs
        .iter()
        .find(|(at, o)| *at >= back && matches!(o, Playout::Packet { .. }))
        .map(|(at, _)| *at)
        .unwrap();
    eprintln!(
        "outage: first packet played {} ms after the link came back; {:?}",
        first_after - back,
        sim.stats()
    );
    // One-way delay 30-35 ms, buffer target about 30 ms, one tick: well under 100 ms.
    assert!(first_after - back < 100, "{} ms", first_after - back);
}

#[test]
fn a_stalled_caller_catches_up_instead_of_replaying_the_past() {
    let mut jb = JitterBuffer::new(JitterConfig::default());
    let t0 = Instant::now();
    let mut outs = Vec::new();
    for ms in 0..4_000u64 {
        let now = t0 + millis(ms);
        if ms % 20 == 0 {
            let i = ms / 20;
            jb.insert(i as u16, 960 * i as u32, payload(i), now);
        }
        // The caller does not pop between 1 s and 2 s.
        if ms % 20 == 5 && !(1_000..2_000).contains(&ms) {
            let before = outs.len();
            while let Some(out) = jb.pop(now) {
                outs.push(out);
            }
            assert!(
                outs.len() - before <= 1,
                "at {ms} ms: {} outputs at once",
                outs.len() - before
            );
        }
    }
    let stats = jb.stats();
    eprintln!("stalled caller: {stats:?}");
    assert!(stats.current_delay < 40 * MS, "{stats:?}");
    assert!(stats.discarded >= 45, "{stats:?}");
    assert_eq!(stats.lost, 0);
}

#[test]
fn simulations_are_deterministic() {
    let run = || {
        let mut bad = impairment(40, 60, 0.2);
        bad.burst = 3.0;
        bad.reorder = 0.05;
        bad.duplicate = 0.02;
        let mut sim = Sim::new(JitterConfig::default(), bad, 12);
        sim.run(8_000, |i| i < 350);
        let stats = sim.stats();
        (sim.outputs, stats)
    };
    let (a, b) = (run(), run());
    assert_eq!(a, b);
    eprintln!("burst loss: {:?}", a.1);
}

/// Drives a buffer by hand: packet i is sent at i × 20 ms and arrives `5 + extra(i)` ms later;
/// the receiver pops at 7 ms past every 20 ms and reports `speech(ms)` before each pop.
/// Returns (time of the pop in ms, output).
fn drive(
    jb: &mut JitterBuffer,
    until_ms: u64,
    extra: impl Fn(u64) -> u64,
    speech: impl Fn(u64) -> bool,
) -> Vec<(u64, Playout)> {
    let t0 = Instant::now();
    let mut pending: Vec<(u64, u64)> = Vec::new(); // (arrival ms, index)
    let mut outs = Vec::new();
    for ms in 0..until_ms {
        if ms % 20 == 0 {
            let i = ms / 20;
            pending.push((ms + 5 + extra(i), i));
        }
        pending.sort();
        while pending.first().is_some_and(|&(at, _)| at <= ms) {
            let (_, i) = pending.remove(0);
            jb.insert(i as u16, 960 * i as u32, payload(i), t0 + millis(ms));
        }
        if ms % 20 == 7 {
            jb.set_speech(speech(ms));
            while let Some(out) = jb.pop(t0 + millis(ms)) {
                outs.push((ms, out));
            }
        }
    }
    outs
}

#[test]
fn a_delay_spike_holds_the_target_so_the_next_one_costs_nothing() {
    let mut jb = JitterBuffer::new(JitterConfig::default());
    // Two 40 ms hiccups 6 s apart (packets 50-51, then 350-351 held back and sent in a burst).
    let spike = |i: u64| match i {
        50 => 40,
        51 => 20,
        350 => 40,
        351 => 20,
        _ => 0,
    };
    // Speech in 1 s bursts with 1 s pauses.
    let outs = drive(&mut jb, 8_000, spike, |ms| (ms / 1_000) % 2 == 0);
    let stats = jb.stats();
    eprintln!("{stats:?}");
    let bad = |o: &Playout| !matches!(o, Playout::Packet { .. });
    let first: Vec<_> = outs
        .iter()
        .filter(|(ms, o)| (1_000..1_400).contains(ms) && bad(o))
        .collect();
    assert!(!first.is_empty(), "the first spike is a surprise");
    let second: Vec<_> = outs.iter().filter(|(ms, o)| *ms >= 6_000 && bad(o)).collect();
    assert!(
        second.is_empty(),
        "the second spike must cost nothing: {second:?}"
    );
    assert!(stats.target_delay >= 60 * MS, "{stats:?}");
    assert_eq!(stats.late, 0);
}

#[test]
fn delay_steps_wait_for_a_pause_in_speech() {
    // Packet 100 comes 15 ms late: the target grows above the current delay. While the caller
    // reports speech the buffer plays on (the packets are here) and expands only in the pause
    // that starts at 3 s.
    let speech = |ms: u64| ms < 3_000;
    let mut jb = JitterBuffer::new(JitterConfig::default());
    let outs = drive(&mut jb, 4_000, |i| if i == 100 { 15 } else { 0 }, speech);
    let stats = jb.stats();
    eprintln!("{stats:?}");
    let steps: Vec<u64> = outs
        .iter()
        .filter(|(_, o)| matches!(o, Playout::Expand))
        .map(|(ms, _)| *ms)
        .collect();
    assert!(stats.deferred > 0, "{stats:?}");
    assert!(!steps.is_empty(), "the delay grows in the pause");
    assert!(
        steps.iter().all(|&ms| !(100..3_000).contains(&ms)),
        "expanded during speech at {steps:?} ms"
    );
    assert_eq!((stats.lost, stats.late), (0, 0), "{stats:?}");

    // The same without voice activity reports: the step comes at once, in the middle of it.
    let mut jb = JitterBuffer::new(JitterConfig::default());
    let outs = drive(&mut jb, 4_000, |i| if i == 100 { 15 } else { 0 }, |_| false);
    assert!(
        outs.iter()
            .any(|(ms, o)| matches!(o, Playout::Expand) && (2_000..2_400).contains(ms)),
        "without the hint the step is immediate"
    );
}

#[test]
fn starved_means_playing_with_nothing_to_play() {
    let mut jb = JitterBuffer::new(JitterConfig::default());
    let t0 = Instant::now();
    assert!(!jb.is_starved(), "not playing yet");
    jb.insert(0, 0, payload(0), t0);
    jb.insert(1, 960, payload(1), t0 + 20 * MS);
    assert!(!jb.is_starved());
    assert!(matches!(
        jb.pop(t0 + 25 * MS),
        Some(Playout::Packet { seq: 0, .. })
    ));
    assert!(!jb.is_starved(), "packet 1 is here");
    assert!(matches!(
        jb.pop(t0 + 45 * MS),
        Some(Playout::Packet { seq: 1, .. })
    ));
    assert!(jb.is_starved(), "packet 2 is due next and nothing is here");
    // A caller that waits for it (it was behind real time) gets it played, not concealed.
    jb.insert(2, 1920, payload(2), t0 + 40 * MS);
    assert!(!jb.is_starved());
    assert!(matches!(
        jb.pop(t0 + 65 * MS),
        Some(Playout::Packet { seq: 2, .. })
    ));
}

/// Drives a buffer with a list of packets (arrival ms, seq, ts, payload); pops at 7 ms past
/// every 20 ms. Returns (time of the pop in ms, output) and what each insert said.
fn drive_packets(
    jb: &mut JitterBuffer,
    until_ms: u64,
    mut packets: Vec<(u64, u16, u32, Vec<u8>)>,
) -> (Vec<(u64, Playout)>, Vec<Inserted>) {
    let t0 = Instant::now();
    packets.sort_by_key(|p| p.0);
    let mut packets = packets.into_iter().peekable();
    let mut outs = Vec::new();
    let mut inserted = Vec::new();
    for ms in 0..until_ms {
        while let Some((_, seq, ts, data)) = packets.next_if(|p| p.0 <= ms) {
            inserted.push(jb.insert(seq, ts, data, t0 + millis(ms)));
        }
        if ms % 20 == 7 {
            while let Some(out) = jb.pop(t0 + millis(ms)) {
                outs.push((ms, out));
            }
        }
    }
    (outs, inserted)
}

/// What Chromium sends on an audio-only stream (recorded at the native player, see
/// docs/media.md): 20 ms Opus packets, and every 5 s a bandwidth probe of RTP padding-only
/// packets interleaved with them. Each padding packet takes the next sequence number, repeats
/// the timestamp of the audio packet before it and has an empty payload (str0m strips the
/// padding); the audio packets' timestamps go on as if there were no padding. Frame `i` is sent
/// at `i` × 20 ms and arrives 5 ms later; after each frame in `probed` comes one padding packet
/// (`with_padding` false: the padding never reaches the buffer, as when a layer before it drops
/// it). Returns the packets, and each frame's sequence number.
fn chromium_stream(frames: u64, probed: &[u64], with_padding: bool) -> Vec<(u64, u16, u32, Vec<u8>)> {
    let mut packets = Vec::new();
    let mut seq: u16 = 7000;
    for i in 0..frames {
        let ts = 960 * i as u32;
        packets.push((20 * i + 5, seq, ts, payload(i)));
        seq = seq.wrapping_add(1);
        if probed.contains(&i) {
            if with_padding {
                packets.push((20 * i + 11, seq, ts, Vec::new()));
            }
            seq = seq.wrapping_add(1);
        }
    }
    packets
}

#[test]
fn padding_only_packets_take_no_playout_time() {
    // Two probes of three padding packets, at 5 s and 10 s, as recorded from Chromium: before
    // the fix each was played as a (concealed) frame of its own, and the delay stepped by 60 ms.
    let probed = [250, 251, 252, 500, 501, 502];
    for with_padding in [true, false] {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        let (outs, inserted) = drive_packets(&mut jb, 12_000, chromium_stream(590, &probed, with_padding));
        let stats = jb.stats();
        eprintln!("padding {with_padding}: {stats:?}");
        let played: Vec<u64> = outs
            .iter()
            .filter_map(|(_, o)| match o {
                Playout::Packet { payload, .. } => {
                    assert!(!payload.is_empty(), "an empty payload was handed out");
                    Some(u64::from_be_bytes(payload[..].try_into().unwrap()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(played, (0..590).collect::<Vec<_>>(), "every frame once, in order");
        // Nothing concealed between the first frame and the last: no delay step at all.
        let first = outs
            .iter()
            .position(|(_, o)| matches!(o, Playout::Packet { .. }))
            .unwrap();
        let last = outs
            .iter()
            .rposition(|(_, o)| matches!(o, Playout::Packet { .. }))
            .unwrap();
        let steps: Vec<_> = outs[first..=last]
            .iter()
            .filter(|(_, o)| !matches!(o, Playout::Packet { .. }))
            .collect();
        assert!(steps.is_empty(), "delay steps: {steps:?}");
        assert_eq!(stats.padding, 6, "{stats:?}");
        // (The frames after the last one are concealed as missing: the stream ends there.)
        assert_eq!(
            (stats.lost, stats.expanded, stats.discarded),
            (0, 0, 0),
            "{stats:?}"
        );
        assert!(
            stats.target_delay <= 25 * MS,
            "padding must not count as jitter: {stats:?}"
        );
        assert!(stats.current_delay <= 25 * MS, "{stats:?}");
        let padded = inserted.iter().filter(|i| **i == Inserted::Padding).count();
        assert_eq!(padded, if with_padding { 6 } else { 0 });
    }
}

#[test]
fn a_lost_frame_before_padding_is_recovered_from_the_frame_after_it() {
    // Frame 250 is lost; the padding packet after it stands between it and frame 251.
    let mut packets = chromium_stream(400, &[250], true);
    packets.retain(|p| p.3 != payload(250));
    let mut jb = JitterBuffer::new(JitterConfig::default());
    let (outs, _) = drive_packets(&mut jb, 8_000, packets);
    let lost: Vec<_> = outs
        .iter()
        .filter(|(ms, _)| *ms < 8_000 - 20)
        .filter(|(_, o)| !matches!(o, Playout::Packet { .. }))
        .collect();
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert!(
        matches!(&lost[0].1, Playout::Lost { fec_from: Some(next), .. } if *next == payload(251)),
        "{lost:?}"
    );
    let stats = jb.stats();
    assert_eq!(
        (stats.lost, stats.fec_recovered, stats.padding),
        (1, 1, 1),
        "{stats:?}"
    );
}

#[test]
fn padding_alone_starts_nothing_and_a_padding_packet_is_not_a_duplicate_of_audio() {
    let mut jb = JitterBuffer::new(JitterConfig::default());
    let t0 = Instant::now();
    assert_eq!(jb.insert(5, 0, Vec::new(), t0), Inserted::Padding);
    assert_eq!(jb.pop(t0 + 100 * MS), None, "no stream from padding alone");
    assert_eq!(jb.next_due(), None);
    assert_eq!(jb.insert(6, 0, payload(0), t0 + 20 * MS), Inserted::Buffered);
    assert!(matches!(
        jb.pop(t0 + 45 * MS),
        Some(Playout::Packet { seq: 6, .. })
    ));
}

#[test]
fn padding_over_a_jittery_lossy_link_costs_no_frame() {
    // The Chromium stream (a probe of three padding packets every 5 s) through 30 ms of
    // jitter, 10 % loss and some reordering: the padding packets are lost, late or reordered
    // like the audio. Whatever happens to them, no frame is played twice, an empty payload is
    // never handed out, and each frame takes one output (played or lost) and padding none.
    let probed: Vec<u64> = (0..1_000).filter(|i| i % 250 < 3).collect();
    let packets = chromium_stream(1_000, &probed, true);
    for seed in 0..20 {
        let mut impairment = impairment(40, 30, 0.1);
        impairment.reorder = 0.05;
        let mut link: Link<Packet> = Link::new(impairment, seed);
        let mut jb = JitterBuffer::new(JitterConfig::default());
        let t0 = Instant::now();
        let mut outs = Vec::new();
        let mut pending = packets.iter().peekable();
        for ms in 0..21_000u64 {
            let now = t0 + millis(ms);
            // chromium_stream's times are arrivals 5 ms after sending: send at that time - 5.
            while let Some((_, seq, ts, data)) = pending.next_if(|p| p.0 - 5 <= ms) {
                link.send((*seq, *ts, data.clone()), now);
            }
            while let Some((seq, ts, data)) = link.recv(now) {
                jb.insert(seq, ts, data, now);
            }
            if ms % 20 == 7 {
                while let Some(out) = jb.pop(now) {
                    outs.push(out);
                }
            }
        }
        let stats = jb.stats();
        let mut frames = BTreeSet::new();
        for out in &outs {
            if let Playout::Packet { payload, .. } = out {
                assert!(
                    !payload.is_empty(),
                    "seed {seed}: an empty payload was handed out"
                );
                let frame = u64::from_be_bytes(payload[..].try_into().unwrap());
                assert!(frames.insert(frame), "seed {seed}: frame {frame} played twice");
            }
        }
        // From the first frame played to the last, one output per frame: padding takes none.
        let is_packet = |o: &Playout| matches!(o, Playout::Packet { .. });
        let first = outs.iter().position(is_packet).unwrap();
        let last = outs.iter().rposition(is_packet).unwrap();
        let span = frames.last().unwrap() - frames.first().unwrap() + 1;
        let frame_outputs = outs[first..=last]
            .iter()
            .filter(|o| matches!(o, Playout::Packet { .. } | Playout::Lost { .. }))
            .count() as u64;
        // (A frame reported lost while nothing had arrived and played after all when it came
        // turns its `Lost` into expansion: counted in `expanded`, not among the outputs.)
        let expands = outs.iter().filter(|o| matches!(o, Playout::Expand)).count() as u64;
        let late_played = stats.expanded - expands;
        assert!(
            frame_outputs <= span + late_played && frame_outputs + stats.discarded >= span,
            "seed {seed}: {frame_outputs} outputs for {span} frames: {stats:?}"
        );
        assert!(stats.played >= 850, "seed {seed}: {stats:?}");
        assert!(stats.padding >= 6, "seed {seed}: {stats:?}");
    }
}

/// With the caller stretching in speech, a raised minimum delay is not met by a concealed frame
/// inserted when a packet is missing: that frame is due by the delay reached so far (reported
/// lost, with FEC from the next packet), and the delay keeps growing by stretching. Without
/// stretching the same missing frame is waited for (an expand).
#[test]
fn a_frame_missing_while_the_delay_grows_in_speech_is_not_waited_for() {
    for stretching in [true, false] {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        jb.set_stretching(stretching);
        let t0 = Instant::now();
        let mut outs = Vec::new();
        // Packets every 20 ms, 5 ms in flight; packet 60 is lost. The caller pops each frame
        // where the last one ends, as a stretching player does without stretching (the delay
        // then stays below the target for as long as it takes).
        let mut at = None;
        for i in 0..100u64 {
            let now = t0 + millis(20 * i + 5);
            if i == 50 {
                jb.set_min_delay(millis(80));
            }
            if i != 60 {
                jb.insert(i as u16, 960 * i as u32, payload(i), now);
            }
            jb.set_speech(true);
            let due = at.unwrap_or(now);
            if due <= now
                && let Some(out) = jb.pop_at(due)
            {
                outs.push(out);
                at = Some(due + millis(20));
            }
        }
        let around_60: Vec<_> = outs
            .iter()
            .filter(|o| match o {
                Playout::Packet { seq, .. } | Playout::Lost { seq, .. } => (58..=62).contains(seq),
                Playout::Expand => true,
                _ => false,
            })
            .collect();
        eprintln!("stretching {stretching}: {around_60:?}");
        let lost_with_fec = outs.iter().any(|o| {
            matches!(
                o,
                Playout::Lost {
                    seq: 60,
                    fec_from: Some(_)
                }
            )
        });
        let expands = outs.iter().filter(|o| matches!(o, Playout::Expand)).count();
        if stretching {
            assert!(lost_with_fec, "{around_60:?}");
            assert_eq!(expands, 0, "{around_60:?}");
        } else {
            assert!(expands > 0, "{around_60:?}");
        }
    }
}

/// With the caller stretching, a raise of the minimum delay in speech waits for the pause (the
/// target stays, a frame missing meanwhile is due by the delay there is); it is applied when
/// the caller reports the pause, or after 5 s of speech without one. Without stretching it
/// applies at once.
#[test]
fn a_raised_minimum_waits_for_a_pause_when_the_caller_stretches() {
    for stretching in [true, false] {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        jb.set_stretching(stretching);
        let t0 = Instant::now();
        let mut at = None;
        let mut targets = Vec::new();
        // Packets every 20 ms, 5 ms in flight; speech from 0.5 s to 1 s and from 1.2 s to 7 s;
        // the minimum is raised to 80 ms at 0.8 s and to 100 ms at 1.4 s.
        for i in 0..400u64 {
            let now = t0 + millis(20 * i + 5);
            if i == 40 {
                jb.set_min_delay(millis(80));
            }
            if i == 70 {
                jb.set_min_delay(millis(100));
            }
            jb.insert(i as u16, 960 * i as u32, payload(i), now);
            jb.set_speech((25..50).contains(&i) || (60..350).contains(&i));
            let due = at.unwrap_or(now);
            if due <= now && jb.pop_at(due).is_some() {
                at = Some(due + millis(20));
            }
            targets.push(jb.stats().target_delay);
        }
        let target_at = |i: usize| targets[i];
        eprintln!(
            "stretching {stretching}: {:?} {:?} {:?} {:?} {:?}",
            target_at(45),
            target_at(52),
            target_at(100),
            target_at(330),
            target_at(399)
        );
        if stretching {
            assert!(target_at(45) < millis(40), "in the word: {:?}", target_at(45));
            assert_eq!(target_at(52), millis(80), "in the pause");
            // The second raise: 5 s of speech with no pause (250 ticks from 1.4 s), then it
            // applies.
            assert_eq!(target_at(100), millis(80));
            assert_eq!(target_at(330), millis(100));
            assert_eq!(jb.pending_min_delay(), None);
        } else {
            assert_eq!(target_at(45), millis(80));
            assert_eq!(target_at(100), millis(100));
        }
    }
}

/// ICE over TCP: a segment lost on the way waits for TCP's retransmission (`stall_ms`) and holds
/// back every packet behind it, which then arrive in one clump; one such stall every `every`
/// packets for the first 10 s, then a clean path for 20 s. Returns the frames concealed in each
/// second and the target at the end.
fn tcp_clumps(stall_ms: u64, every: u64) -> (Vec<usize>, Duration) {
    let held = stall_ms / 20;
    let extra = move |i: u64| {
        let k = i % every;
        if i < 500 && (5..5 + held).contains(&k) {
            stall_ms - 20 * (k - 5)
        } else {
            0
        }
    };
    let mut jb = JitterBuffer::new(JitterConfig::default());
    let outs = drive(&mut jb, 30_000, extra, |_| false);
    let per_second = (0..30u64)
        .map(|s| {
            outs.iter()
                .filter(|(ms, o)| *ms / 1000 == s && !matches!(o, Playout::Packet { .. }))
                .count()
        })
        .collect();
    (per_second, jb.stats().target_delay)
}

/// Bursty delivery (ICE over TCP): the first clump costs what it holds back, the buffer then
/// holds a delay that covers the next ones (its peak detector: 10 s), and once the clumps stop
/// it comes back down (10 ms per second). A stall longer than the largest delay (300 ms) costs
/// its excess every time.
#[test]
fn tcp_clumps_grow_the_delay_and_it_comes_back_after() {
    // (stall, a stall every so many packets)
    for (stall, every) in [(100, 25), (200, 50), (200, 250)] {
        let (concealed, target) = tcp_clumps(stall, every);
        eprintln!(
            "stall {stall} ms every {} ms: concealed per second {concealed:?}; target at the end {target:?}",
            every * 20
        );
        assert!(concealed[0] as u64 <= stall / 20, "{concealed:?}");
        assert!(concealed[1..].iter().all(|&n| n == 0), "{stall}: {concealed:?}");
        assert!(target <= 40 * MS, "{stall}: {target:?} at the end");
    }
    let (concealed, target) = tcp_clumps(400, 100);
    eprintln!("stall 400 ms every 2000 ms: concealed per second {concealed:?}; target at the end {target:?}");
    assert!(concealed[1..].iter().all(|&n| n <= 5), "{concealed:?}");
    assert!(target <= 120 * MS, "{target:?} 20 s after the last stall");
}

/// The network's base delay steps up by 50 ms (a route change; the quality tests impair a call
/// already up this way) with a raised minimum delay: the minimum counts from the packets of the
/// last half second, so the target takes the step within that time, not 2 s later when the
/// last packet from before the step leaves the window (then at once, often in speech).
#[test]
fn a_step_of_the_base_delay_is_in_the_minimum_within_half_a_second() {
    let mut jb = JitterBuffer::new(JitterConfig::default());
    jb.set_min_delay(millis(140));
    let t0 = Instant::now();
    let mut targets = Vec::new();
    for i in 0..200u64 {
        // 5 ms in flight, 55 ms from packet 50 on.
        let flight = if i < 50 { 5 } else { 55 };
        jb.insert(i as u16, 960 * i as u32, payload(i), t0 + millis(20 * i + flight));
        while jb.pop(t0 + millis(20 * i + flight)).is_some() {}
        targets.push(jb.stats().target_delay);
    }
    // Before: 140 ms. From half a second after the step: 140 ms above the packets now, which is
    // 190 ms above the window's fastest packet while that is from before the step (counted
    // from it, it stayed at 140 until packet 149, then jumped by 50 ms at once).
    eprintln!(
        "targets at 49, 80, 149, 199: {:?}",
        [targets[49], targets[80], targets[149], targets[199]]
    );
    assert_eq!(targets[49], millis(140));
    for (i, t) in targets.iter().enumerate().skip(50 + 25) {
        let expected = if i < 149 { millis(190) } else { millis(140) };
        assert!(
            t.abs_diff(expected) <= MS,
            "packet {i}: target {t:?}, expected {expected:?}"
        );
    }
}

/// `speech_played` says whether the caller reported speech since the stream started: false
/// through the silence before the first word, true from it on, and false again for a new
/// stream (a restart).
#[test]
fn speech_played_is_per_stream() {
    let mut jb = JitterBuffer::new(JitterConfig::default());
    assert!(!jb.speech_played());
    let silence = drive(&mut jb, 400, |_| 0, |_| false);
    assert!(silence.iter().any(|(_, p)| matches!(p, Playout::Packet { .. })));
    assert!(!jb.speech_played());
    drive(&mut jb, 100, |_| 0, |_| true);
    assert!(jb.speech_played());
    // A packet far off the stream's timestamps starts a new stream: nothing heard on it yet.
    let t = Instant::now();
    assert_eq!(jb.insert(30_000, 900_000_000, payload(1), t), Inserted::Restarted);
    assert!(!jb.speech_played());
}

/// Packets every 20 ms, 30 ms on the way; `late(i)` ms more for packet `i`, `None` when it is
/// lost. Pops every ms for 6 s; returns the outputs (time in ms, output) and the buffer.
fn stepped(late: impl Fn(u64) -> Option<u64>) -> (Vec<(u64, Playout)>, JitterBuffer) {
    let mut jb = JitterBuffer::new(JitterConfig::default());
    let t0 = Instant::now();
    let mut arrivals: Vec<(u64, u64)> = (0..250u64)
        .filter_map(|i| late(i).map(|l| (i * 20 + 30 + l, i)))
        .collect();
    arrivals.sort();
    let mut next = 0;
    let mut outs = Vec::new();
    for ms in 0..6_000u64 {
        let now = t0 + millis(ms);
        while next < arrivals.len() && arrivals[next].0 <= ms {
            let i = arrivals[next].1;
            jb.insert(i as u16, 960 * i as u32, payload(i), now);
            next += 1;
        }
        while let Some(out) = jb.pop(now) {
            outs.push((ms, out));
        }
    }
    (outs, jb)
}

#[test]
fn a_lasting_delay_step_beyond_max_delay_costs_about_the_stall() {
    // No packet for 330 ms from packet 100 on, then every packet 350 ms later than before (past
    // the 300 ms `max_delay`), for good: a sender that stalled, or a path change.
    let (outs, jb) = stepped(|i| Some(if i < 100 { 0 } else { 350 }));
    let stats = jb.stats();
    let concealed = outs
        .iter()
        // (Up to the last packet: after it the stream ends, concealed until taken as stopped.)
        .filter(|(ms, o)| *ms <= 5_360 && matches!(o, Playout::Expand | Playout::Lost { .. }))
        .count();
    // 17 frames for the stall and one or two for the tick grid as playout resumes; the rest of
    // the stream is played.
    assert!(concealed <= 20, "{concealed} concealed: {stats:?}");
    assert!(stats.played >= 247, "{stats:?}");
    assert_eq!((stats.discarded, stats.restarts), (0, 1), "{stats:?}");
}

#[test]
fn one_packet_far_too_late_in_a_loss_burst_does_not_move_the_delay() {
    // Packets 100-129 are lost but for 105, which comes 400 ms late, into the starved buffer;
    // then the stream goes on as before. One packet is no lasting step: it is dropped as late,
    // nothing restarts.
    let (_, jb) = stepped(|i| match i {
        105 => Some(400),
        100..130 => None,
        _ => Some(0),
    });
    let stats = jb.stats();
    // (Its transit holds the target up as a spike would, by at most 80 ms.)
    assert_eq!((stats.late, stats.restarts), (1, 0), "{stats:?}");
    assert!(stats.current_delay <= millis(120), "{stats:?}");
}
