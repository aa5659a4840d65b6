//! The latency a pull between two nodes adds, side by side with one node in one run: a
//! publisher on node A, one player on A and one on node B (which pulls the stream from A over
//! its link), both custom render; each sample is one 20 ms burst pushed into the publisher's
//! custom capture and found in both renders, so the two mouth-to-ear times of a sample come from
//! the same packets. Two in-process nodes on a `redis-server` of the benchmark's own (Debian's).
//!
//! `cargo bench -p huddle --bench cluster_latency` (`HUDDLE_LATENCY_SAMPLES`, default 15).
//! Prints both medians and the median of the per-sample differences (B minus A).

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
    for e in [far, near, alice] {
        e.destroy();
    }
}
