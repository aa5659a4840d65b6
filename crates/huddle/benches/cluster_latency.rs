//! The latency a pull between two nodes adds, side by side with one node in one run: a
//! publisher on node A, one player on A and one on node B (which pulls the stream from A over
//! its link), both custom render; each sample is one 20 ms burst pushed into the publisher's
//! custom capture and found in both renders, so the two mouth-to-ear times of a sample come from
//! the same packets. Two in-process nodes on a `redis-server` of the benchmark's own (Debian's).
//!
//! `cargo bench -p huddle --bench cluster_latency` (`HUDDLE_LATENCY_SAMPLES`, default 15).
//! Prints both medians and the median of the per-sample differences (B minus A).
//!
//! Then the servers' CPU per packet (`HUDDLE_RELAY_CPU_SECONDS`, default 10 s a phase; 0 skips
//! it): the publisher sends a steady tone, heard first by the player on A alone (local
//! forwarding), then by the player on B alone (pulled). What is counted is the CPU time of the
//! servers' own threads (`huddle-server-*`: signaling; `huddle-media-*`: the shards;
//! `huddle-relay*`: the link's datagrams), both nodes together, from the kernel's per-thread
//! `schedstat` (nanoseconds); the SDK's threads are left out. The difference between the phases
//! is what a relayed packet costs the two nodes beyond forwarding it on one.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../../huddle-server/tests/common/redis.rs"]
#[allow(dead_code)]
mod redis;

use std::time::{Duration, Instant};

use common::{APP_ID, app, engine_with, fast_config, first_audio_frame, pull, user};
use huddle::{AudioSink, AudioSource, Engine, EngineProfile, PublisherState, RoomConfig};
use huddle_server::{BackgroundServer, ServerConfig};

fn node(redis: &redis::RedisServer, id: &str) -> BackgroundServer {
    let mut config = ServerConfig::for_tests(vec![app()]);
    config.redis = Some(redis.url.clone());
    config.node_id = Some(id.into());
    config.cluster_secret = Some("the benchmark's cluster secret".into());
    BackgroundServer::start(config).expect("node starts")
}

fn voice(server: &BackgroundServer, user_id: &str) -> (Engine, common::Events) {
    let mut p = EngineProfile::new(APP_ID, server.ws_url());
    p.app_sign = Some(app().app_sign.to_hex());
    p.config = fast_config();
    let (engine, events) = engine_with(p);
    engine.enable_camera(false);
    engine
        .login_room("latency", user(user_id), RoomConfig::default())
        .unwrap();
    (engine, events)
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One burst into `publisher`, found in each of `players`: the mouth-to-ear time of each.
fn burst_to(publisher: &Engine, players: &[&Engine]) -> Vec<f64> {
    let burst: Vec<i16> = (0..960)
        .map(|i| ((f64::from(i) * 2.0 * std::f64::consts::PI * 1000.0 / 48_000.0).sin() * 20_000.0) as i16)
        .collect();
    let mut buf = [0i16; 4800];
    for p in players {
        while p.fetch_audio_frame(&mut buf) > 0 {}
    }
    let t0 = Instant::now();
    publisher.push_audio_frame(&burst).unwrap();
    let mut heard: Vec<Option<f64>> = vec![None; players.len()];
    while heard.iter().any(Option::is_none) {
        for (i, p) in players.iter().enumerate() {
            if heard[i].is_some() {
                continue;
            }
            let n = p.fetch_audio_frame(&mut buf);
            let now = Instant::now();
            if let Some(k) = buf[..n].iter().position(|s| s.abs() > 3000) {
                let at = now + Duration::from_secs_f64(k as f64 / 48_000.0) - t0;
                heard[i] = Some(at.as_secs_f64() * 1000.0);
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(2), "burst never heard");
        std::thread::sleep(Duration::from_millis(1));
    }
    heard.into_iter().flatten().collect()
}

/// The CPU time, in ns, of this process's server threads (see the module documentation).
fn server_cpu_ns() -> u64 {
    let mut total = 0;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    for t in tasks.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let comm = comm.trim();
        if !["huddle-server-", "huddle-media-", "huddle-relay"]
            .iter()
            .any(|p| comm.starts_with(p))
        {
            continue;
        }
        let stat = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
        total += stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    total
}

/// Pushes a steady 440 Hz tone into `publisher` for `secs` (20 ms frames, paced), draining
/// `player`'s render; returns the server threads' CPU per frame sent, in µs.
fn steady(publisher: &Engine, player: &Engine, secs: u64) -> f64 {
    let frames = secs * 50;
    let mut buf = [0i16; 4800];
    let t0 = Instant::now();
    let cpu0 = server_cpu_ns();
    for n in 0..frames {
        let tone: Vec<i16> = (0..960)
            .map(|i| {
                let t = (n * 960 + i) as f64 / 48_000.0;
                ((t * 2.0 * std::f64::consts::PI * 440.0).sin() * 8_000.0) as i16
            })
            .collect();
        publisher.push_audio_frame(&tone).unwrap();
        while player.fetch_audio_frame(&mut buf) > 0 {}
        let next = t0 + Duration::from_millis(20 * (n + 1));
        if let Some(d) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
    }
    (server_cpu_ns() - cpu0) as f64 / 1000.0 / frames as f64
}

fn main() {
    let samples: usize = std::env::var("HUDDLE_LATENCY_SAMPLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15)
        .max(1);
    let redis = redis::RedisServer::start();
    let a = node(&redis, "node-a");
    let b = node(&redis, "node-b");
    let (alice, mut ea) = voice(&a, "alice");
    alice.set_audio_source(AudioSource::Custom).unwrap();
    alice.start_publishing_stream("burst").unwrap();
    ea.publisher("burst", PublisherState::Publishing);
    let (near, mut en) = voice(&a, "near");
    let (far, mut ef) = voice(&b, "far");
    for (p, e) in [(&near, &mut en), (&far, &mut ef)] {
        p.set_audio_sink(AudioSink::Custom).unwrap();
        p.start_playing_stream("burst").unwrap();
        first_audio_frame(e, "burst");
    }
    pull(&near, Duration::from_millis(500));
    pull(&far, Duration::from_millis(500));
    let (mut one, mut two, mut diff) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..samples {
        let t = burst_to(&alice, &[&near, &far]);
        one.push(t[0]);
        two.push(t[1]);
        diff.push(t[1] - t[0]);
        std::thread::sleep(Duration::from_millis(300));
    }
    println!(
        "mouth to ear, player on the publisher's node: p50 {:.1} ms; samples {one:.1?}",
        median(&one)
    );
    println!(
        "mouth to ear, player on another node (pulled): p50 {:.1} ms; samples {two:.1?}",
        median(&two)
    );
    println!(
        "added by the pull: p50 {:.1} ms per sample (B minus A)",
        median(&diff)
    );
    let cpu_secs: u64 = std::env::var("HUDDLE_RELAY_CPU_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    if cpu_secs > 0 {
        far.stop_playing_stream("burst").unwrap();
        std::thread::sleep(Duration::from_secs(1));
        let local = steady(&alice, &near, cpu_secs);
        near.stop_playing_stream("burst").unwrap();
        far.start_playing_stream("burst").unwrap();
        first_audio_frame(&mut ef, "burst");
        std::thread::sleep(Duration::from_secs(1));
        let pulled = steady(&alice, &far, cpu_secs);
        println!(
            "servers' CPU per packet sent: {local:.1} µs with the player on A (local), {pulled:.1} µs with \
             the player on B (pulled): {:.1} µs added by the pull",
            pulled - local
        );
    }
    for e in [far, near, alice] {
        e.destroy();
    }
}
