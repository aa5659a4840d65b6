//! Audio that survives loss, measured: the speech sample through a real server, with the
//! player's network impaired by the `huddle-netsim` proxies (50 ms each way, so 100 ms RTT, a
//! few ms of jitter, random or bursty loss on the player's downlink), scored with wideband PESQ
//! and STOI by `audio_score.py` (PyPI `pesq`, `pystoi`). `docs/quality.md` has the method, the
//! curve and how to reproduce it (`scripts/quality.sh` runs the `loss_curve` benchmark, `benches/loss_curve.rs`).
//!
//! Video recovers from loss by retransmission (NACK → RTX from the SFU's send buffer) and
//! keyframe requests: `video_keeps_flowing_under_loss`.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::netsim::Net;
use common::quality::{Conditions, speech_call, stoi};
use common::*;
use huddle::{Event, I420Frame, PublisherState, RoomConfig, VideoRenderer, VideoSource};

/// The heavy tests run one at a time: a 2-core machine running two engines, a server and the
/// proxies for two calls at once would measure itself.
static MACHINE: Mutex<()> = Mutex::new(());

fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    MACHINE.lock().unwrap_or_else(|e| e.into_inner())
}

/// The design target (DESIGN.md): wideband PESQ ≥ 3.0 at 30 % random loss with 100 ms RTT.
/// Measured 3.3–3.6 on idle runs (docs/quality.md); a busy machine costs a little.
#[test]
fn speech_is_good_at_30_percent_loss() {
    let _machine = exclusive();
    let score = speech_call(30, Conditions::random(0.30), "30");
    let pesq = score["pesq"].as_f64().unwrap();
    assert!(pesq >= 3.0, "wideband PESQ {pesq} < 3.0 at 30 % loss: {score}");
}

/// The design target: intelligible at 60 % random loss (STOI ≥ 0.8) with 100 ms RTT.
#[test]
fn speech_is_intelligible_at_60_percent_loss() {
    let _machine = exclusive();
    let score = speech_call(60, Conditions::random(0.60), "60");
    let s = stoi(&score);
    assert!(s >= 0.8, "STOI {s} < 0.8 at 60 % loss: {score}");
}

/// The target for a clean call: STOI ≥ 0.98 at a single alignment with ±20 ms of jitter
/// (0–40 ms uniform on each of the player's links, no loss). Measured 0.995 (PESQ 4.07) on three
/// seeds, as without jitter (`docs/quality.md`, "Clean calls"); `media::netem`'s
/// `a_clean_call_with_jitter_is_scored` checks the same on virtual time. The floor is lower: a
/// scheduling stall of this shared machine mid-speech is a step the scorer reads.
#[test]
fn a_clean_call_with_jitter_stays_aligned() {
    let _machine = exclusive();
    let cond = Conditions {
        jitter: Duration::from_millis(40),
        ..Conditions::clean()
    };
    let score = speech_call(1, cond, "jitter");
    let s = stoi(&score);
    assert!(s >= 0.95, "STOI {s} < 0.95 with ±20 ms jitter: {score}");
}

/// Counts decoded video frames and when the last one came.
#[derive(Default)]
struct Frames(Mutex<(u64, Option<Instant>)>);

impl VideoRenderer for Frames {
    fn on_remote_video_frame(&self, _stream_id: &str, _frame: &I420Frame) {
        let mut f = self.0.lock().unwrap();
        f.0 += 1;
        f.1 = Some(Instant::now());
    }
}

/// Video through 10 % loss with 100 ms RTT on the player's downlink: lost packets come back by
/// NACK and RTX from the SFU's send buffer, and a frame that cannot be completed in time costs
/// a keyframe request; either way frames keep being decoded, with no long freeze.
#[test]
fn video_keeps_flowing_under_loss() {
    let _machine = exclusive();
    let net = Net::start(7);
    let (a, b) = (net.client(10), net.client(11));
    let (alice, mut ea) = engine_with(a.profile());
    alice
        .login_room("quality-video", user("alice"), RoomConfig::default())
        .unwrap();
    ea.room(huddle::RoomStateChangedReason::Logined);
    alice
        .set_video_source(VideoSource::TestPattern {
            width: 320,
            height: 240,
            fps: 15,
        })
        .unwrap();
    alice.start_publishing_stream("alice-cam").unwrap();
    ea.publisher("alice-cam", PublisherState::Publishing);

    let frames = Arc::new(Frames::default());
    let (bob, mut eb) = engine_with(b.profile());
    bob.set_video_renderer(Some(frames.clone()));
    bob.login_room("quality-video", user("bob"), RoomConfig::default())
        .unwrap();
    eb.room(huddle::RoomStateChangedReason::Logined);
    bob.start_playing_stream("alice-cam").unwrap();
    eb.wait("first video frame", |e| {
        matches!(e, Event::PlayerRecvVideoFirstFrame { .. })
    });
    Conditions {
        loss: 0.10,
        ..Conditions::random(0.0)
    }
    .impair(&net, &b, false);
    let start = frames.0.lock().unwrap().0;
    // Sampled every 100 ms for 6 s: the longest time without a decoded frame.
    let mut longest = Duration::ZERO;
    for _ in 0..60 {
        std::thread::sleep(Duration::from_millis(100));
        if let Some(last) = frames.0.lock().unwrap().1 {
            longest = longest.max(last.elapsed());
        }
    }
    let decoded = frames.0.lock().unwrap().0 - start;
    eprintln!("video at 10 % loss: {decoded} frames in 6 s, longest gap {longest:?}");
    bob.destroy();
    alice.destroy();
    // 15 fps for 6 s is 90 frames; measured 87-90, the longest gap 0.23-0.33 s (a frame waiting
    // for its retransmission). Generous bounds: the machine is shared. Before the SFU lifted
    // str0m's cap on retransmissions, 65-73 frames and gaps of 0.6-1.6 s (NACKs unanswered until
    // they ran out, then a keyframe request).
    assert!(decoded >= 60, "only {decoded} frames decoded in 6 s at 10 % loss");
    assert!(longest < Duration::from_secs(1), "video froze for {longest:?}");
}
