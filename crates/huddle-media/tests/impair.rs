//! The impairment model itself: rates, bursts, bounds and determinism.

use std::time::{Duration, Instant};

use huddle_media::impair::{Impairment, Link};

/// Sends `n` packets 20 ms apart and returns (index, one-way delay in ms) for each delivery.
fn run(config: Impairment, seed: u64, n: u64) -> (Vec<(u64, u64)>, Link<u64>) {
    let mut link = Link::new(config, seed);
    let t0 = Instant::now();
    let mut out = Vec::new();
    for ms in 0..n * 20 + 1_000 {
        let now = t0 + Duration::from_millis(ms);
        if ms % 20 == 0 && ms / 20 < n {
            link.send(ms / 20, now);
        }
        while let Some(i) = link.recv(now) {
            out.push((i, ms - i * 20));
        }
    }
    assert_eq!(link.in_flight(), 0);
    (out, link)
}

#[test]
fn independent_loss_has_the_configured_rate() {
    let mut config = Impairment::default();
    config.loss = 0.3;
    let (out, link) = run(config, 1, 5_000);
    let rate = 1.0 - out.len() as f64 / 5_000.0;
    assert!((rate - 0.3).abs() < 0.02, "{rate}");
    assert_eq!(link.stats().dropped as usize, 5_000 - out.len());
    assert!(out.iter().all(|&(_, d)| d == 0), "no delay configured");
}

#[test]
fn burst_loss_has_the_configured_rate_and_burst_length() {
    let mut config = Impairment::default();
    config.loss = 0.2;
    config.burst = 4.0;
    let (out, _) = run(config, 2, 20_000);
    let got: std::collections::BTreeSet<u64> = out.iter().map(|&(i, _)| i).collect();
    let lost = 20_000 - got.len();
    let bursts = (0..20_000u64)
        .filter(|i| !got.contains(i) && (*i == 0 || got.contains(&(i - 1))))
        .count();
    let rate = lost as f64 / 20_000.0;
    let mean_burst = lost as f64 / bursts as f64;
    assert!((rate - 0.2).abs() < 0.03, "rate {rate}");
    assert!((mean_burst - 4.0).abs() < 0.5, "mean burst {mean_burst}");
}

#[test]
fn delay_jitter_reordering_and_duplicates_stay_in_bounds() {
    let mut config = Impairment::default();
    config.delay = Duration::from_millis(30);
    config.jitter = Duration::from_millis(50);
    config.reorder = 0.1;
    config.reorder_delay = Duration::from_millis(100);
    config.duplicate = 0.05;
    let (out, link) = run(config, 3, 2_000);
    let stats = link.stats();
    assert_eq!(stats.delivered as usize, out.len());
    assert_eq!(out.len() as u64, 2_000 + stats.duplicated);
    assert!((150..250).contains(&stats.reordered), "{stats:?}");
    assert!((60..140).contains(&stats.duplicated), "{stats:?}");
    assert!(
        out.iter().all(|&(_, d)| (30..=181).contains(&d)),
        "delay out of bounds"
    );
    // Without the reordered packets, delays spread over the whole jitter range.
    let plain: Vec<u64> = out.iter().map(|&(_, d)| d).filter(|&d| d <= 80).collect();
    assert!(plain.iter().any(|&d| d <= 35) && plain.iter().any(|&d| d >= 75));
    let reordered = out.windows(2).filter(|w| w[1].0 < w[0].0).count();
    assert!(reordered > 100, "{reordered}");
}

#[test]
fn a_link_that_is_down_drops_everything() {
    let mut link = Link::new(Impairment::default(), 4);
    let now = Instant::now();
    link.set_down(true);
    link.send(1u8, now);
    link.set_down(false);
    link.send(2u8, now);
    assert_eq!(link.next_arrival(), Some(now));
    assert_eq!(link.recv(now), Some(2));
    assert_eq!(link.recv(now), None);
    assert_eq!(link.stats().dropped, 1);
}

#[test]
fn the_same_seed_gives_the_same_network() {
    let mut config = Impairment::default();
    config.jitter = Duration::from_millis(40);
    config.loss = 0.1;
    config.duplicate = 0.1;
    assert_eq!(run(config.clone(), 9, 500).0, run(config.clone(), 9, 500).0);
    assert_ne!(run(config.clone(), 9, 500).0, run(config, 10, 500).0);
}
