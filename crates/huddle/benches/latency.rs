//! Latency against DESIGN.md's targets, a benchmark (a figure, not a behaviour to assert): login
//! → first audio frame (target ≤ 50 ms on loopback) and mouth to ear SDK → SDK (target ≤ 60 ms),
//! through a real server on 127.0.0.1, custom capture → custom render. Run by
//! `scripts/quality.sh`, or alone: `cargo bench -p huddle --bench latency`
//! (`HUDDLE_LATENCY_SAMPLES`, default 9, samples of each).
//!
//! Prints the samples, their median and the target, and a JSON line with the medians to
//! `$HUDDLE_LATENCY_OUT` when set. Run it on an otherwise idle machine.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Write as _;
use std::time::{Duration, Instant};

use common::*;
use huddle::{AudioSink, AudioSource, PublisherState, RoomConfig};

/// DESIGN.md: login → first audio frame on loopback.
const FIRST_FRAME_TARGET_MS: f64 = 50.0;
/// DESIGN.md: mouth to ear, SDK → SDK.
const MOUTH_TO_EAR_TARGET_MS: f64 = 60.0;

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn report(what: &str, samples: &[f64], target: f64) -> f64 {
    let p50 = median(samples);
    let verdict = if p50 <= target { "within" } else { "over" };
    println!("{what}: p50 {p50:.1} ms ({verdict} the {target:.0} ms target); samples {samples:.1?}");
    p50
}

fn main() {
    let samples: usize = std::env::var("HUDDLE_LATENCY_SAMPLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(9)
        .max(1);
    let server = server();
    let (alice, mut ea) = voice_engine(&server, "latency", "alice");
    alice.set_audio_source(AudioSource::Custom).unwrap();
    alice.start_publishing_stream("alice-l").unwrap();
    ea.publisher("alice-l", PublisherState::Publishing);

    // Login → first audio frame decoded, for a stream already published.
    let mut first = Vec::new();
    for i in 0..samples {
        let (bob, mut eb) = engine_with(profile(&server));
        bob.enable_camera(false);
        let t0 = Instant::now();
        bob.login_room("latency", user(&format!("bob{i}")), RoomConfig::default())
            .unwrap();
        bob.start_playing_stream("alice-l").unwrap();
        first_audio_frame(&mut eb, "alice-l");
        first.push(t0.elapsed().as_secs_f64() * 1000.0);
        bob.destroy();
    }

    // Mouth to ear: a 20 ms burst pushed at t0, found in the custom render.
    let (bob, mut eb) = voice_engine(&server, "latency", "bob-ear");
    bob.set_audio_sink(AudioSink::Custom).unwrap();
    bob.start_playing_stream("alice-l").unwrap();
    first_audio_frame(&mut eb, "alice-l");
    pull(&bob, Duration::from_millis(500));
    let mut m2e = Vec::new();
    // The jitter buffer's share of it: its added delay (`PlayerStats::added_delay`) after each.
    let mut buffered = Vec::new();
    for _ in 0..samples {
        m2e.push(mouth_to_ear(&alice, &bob).as_secs_f64() * 1000.0);
        if let Some(stats) = bob.player_audio_stats("alice-l") {
            buffered.push(stats.added_delay.as_secs_f64() * 1000.0);
        }
        std::thread::sleep(Duration::from_millis(300));
    }

    let first_p50 = report("login → first audio frame", &first, FIRST_FRAME_TARGET_MS);
    let m2e_p50 = report(
        "mouth to ear (custom capture → custom render)",
        &m2e,
        MOUTH_TO_EAR_TARGET_MS,
    );
    let buffered_p50 = (!buffered.is_empty()).then(|| median(&buffered));
    if let Some(p50) = buffered_p50 {
        println!("of which the jitter buffer added: p50 {p50:.1} ms; samples {buffered:.1?}");
    }
    if let Ok(path) = std::env::var("HUDDLE_LATENCY_OUT") {
        let line = serde_json::json!({
            "first_frame_p50_ms": first_p50,
            "first_frame_target_ms": FIRST_FRAME_TARGET_MS,
            "mouth_to_ear_p50_ms": m2e_p50,
            "mouth_to_ear_target_ms": MOUTH_TO_EAR_TARGET_MS,
            "jitter_buffer_added_p50_ms": buffered_p50,
            "samples": samples,
        });
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("HUDDLE_LATENCY_OUT opens");
        writeln!(f, "{line}").expect("HUDDLE_LATENCY_OUT written");
    }
}
