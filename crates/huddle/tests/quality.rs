//! Audio that survives loss, measured: the speech sample through a real server, with the
//! player's network impaired by the `huddle-netsim` proxies (50 ms each way, so 100 ms RTT, a
//! few ms of jitter, random or bursty loss on the player's downlink), scored with wideband PESQ
//! and STOI by `audio_score.py` (PyPI `pesq`, `pystoi`). `docs/quality.md` has the method, the
//! curve and how to reproduce it (`scripts/quality.sh` runs the `#[ignore]`d `loss_curve`).
//!
//! Video recovers from loss by retransmission (NACK → RTX from the SFU's send buffer) and
//! keyframe requests: `video_keeps_flowing_under_loss`.

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::netsim::{Client, Net};
use common::*;
use huddle::{
    AudioSink, AudioSource, Engine, Event, I420Frame, PlayerState, PublisherState, RoomConfig, VideoRenderer,
    VideoSource,
};
use huddle_media::impair::Impairment;
use huddle_media::{AudioFrame, AudioSink as _, AudioSource as _, Playback, WavRecorder, WavSource};
use huddle_netsim::Direction;

const SPEECH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../huddle-media/tests/data/speech-16k.wav"
);

/// The heavy tests run one at a time: a 2-core machine running two engines, a server and the
/// proxies for two calls at once would measure itself.
static MACHINE: Mutex<()> = Mutex::new(());

fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    MACHINE.lock().unwrap_or_else(|e| e.into_inner())
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("huddle-quality-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// The speech sample with 2 s of silence before it (the jitter buffer settles on the impaired
/// network before the speech starts: its delay steps land in silence) and 0.5 s after, as a
/// 48 kHz WAV.
fn padded_speech(path: &Path) {
    let mut src = WavSource::open(SPEECH, Playback::Once).unwrap();
    let mut out = WavRecorder::create(path).unwrap();
    for _ in 0..100 {
        out.write_frame(&AudioFrame::silence(0)).unwrap();
    }
    while let Some(f) = src.read_frame().unwrap() {
        out.write_frame(&f).unwrap();
    }
    for _ in 0..25 {
        out.write_frame(&AudioFrame::silence(0)).unwrap();
    }
    out.finish().unwrap();
}

/// The network of one measurement: the player's links.
#[derive(Debug, Clone, Copy)]
struct Conditions {
    /// Share of the player's downlink packets lost.
    loss: f64,
    /// Mean loss burst length in packets (1: independent losses).
    burst: f64,
    /// One-way delay of each of the player's links.
    delay: Duration,
    /// Jitter (uniform, 0 to this) on each of the player's links.
    jitter: Duration,
}

impl Conditions {
    fn random(loss: f64) -> Conditions {
        Conditions {
            loss,
            burst: 1.0,
            delay: Duration::from_millis(50),
            jitter: Duration::from_millis(5),
        }
    }

    fn bursty(loss: f64) -> Conditions {
        Conditions {
            burst: 3.0,
            ..Conditions::random(loss)
        }
    }

    /// Delay and jitter on both of `client`'s links, the loss on its downlink (a player) or on
    /// its uplink (a publisher, `uplink`).
    fn impair(&self, net: &Net, client: &Client, uplink: bool) {
        let mut lossy = Impairment::default();
        lossy.delay = self.delay;
        lossy.jitter = self.jitter;
        lossy.loss = self.loss;
        lossy.burst = self.burst;
        let mut clean = Impairment::default();
        clean.delay = self.delay;
        clean.jitter = self.jitter;
        let (down, up) = if uplink { (clean, lossy) } else { (lossy, clean) };
        net.impair(Some(client), Direction::Down, down);
        net.impair(Some(client), Direction::Up, up);
    }
}

fn voice_engine(client: &Client, user_id: &str) -> (Engine, Events) {
    let (engine, mut events) = engine_with(client.profile());
    engine.enable_camera(false);
    engine
        .login_room("quality", user(user_id), RoomConfig::default())
        .unwrap();
    events.room(huddle::RoomStateChangedReason::Logined);
    (engine, events)
}

/// One call carrying the speech sample over `cond`, seeded with `seed`; returns the score of
/// the recording (`pesq`, `stoi`, ...) with the conditions and the loss the proxy applied.
fn speech_call(seed: u64, cond: Conditions, tag: &str) -> serde_json::Value {
    let net = Net::start(seed);
    let (a, b) = (net.client(10), net.client(11));
    let sent = tmp(&format!("sent-{tag}.wav"));
    let heard = tmp(&format!("heard-{tag}.wav"));
    padded_speech(&sent);

    let (bob, mut eb) = voice_engine(&b, "bob");
    bob.set_audio_sink(AudioSink::Wav(heard.clone())).unwrap();
    bob.start_playing_stream("alice-voice").unwrap();
    eb.player("alice-voice", PlayerState::PlayRequesting);

    let (alice, mut ea) = voice_engine(&a, "alice");
    alice
        .set_audio_source(AudioSource::Wav {
            path: sent.clone(),
            looped: false,
        })
        .unwrap();
    alice.start_publishing_stream("alice-voice").unwrap();
    ea.publisher("alice-voice", PublisherState::Publishing);
    eb.wait("first audio frame", |e| {
        matches!(e, Event::PlayerRecvAudioFirstFrame { .. })
    });
    // The network goes bad once the call is up (the handshakes are not what is measured); the
    // speech starts about 2 s later.
    // `HUDDLE_QUALITY_LEG=publisher`: the publisher's links instead, the loss on its uplink
    // (then the SFU receives the gaps, and players without RED get the frames it restores).
    let uplink = std::env::var("HUDDLE_QUALITY_LEG").is_ok_and(|v| v == "publisher");
    let (client, ip) = if uplink { (&a, a.ip) } else { (&b, b.ip) };
    let leg = |s: &huddle_netsim::UdpProxyStats| if uplink { s.up } else { s.down };
    let before = net.udp.stats().get(&ip).map(leg).unwrap_or_default();
    cond.impair(&net, client, uplink);
    std::thread::sleep(Duration::from_millis(7_000));
    let after = leg(&net.udp.stats()[&ip]);
    bob.set_audio_sink(AudioSink::Discard).unwrap(); // completes the file
    bob.destroy();
    alice.destroy();

    let out = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/audio_score.py"))
        .arg(SPEECH)
        .arg(&heard)
        .output()
        .expect("run python3 audio_score.py");
    assert!(
        out.status.success(),
        "audio_score.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut score: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let delivered = after.delivered.saturating_sub(before.delivered);
    let dropped = after.dropped.saturating_sub(before.dropped);
    score["seed"] = seed.into();
    score["loss"] = cond.loss.into();
    score["burst"] = cond.burst.into();
    score["rtt_ms"] = (2 * cond.delay.as_millis() as u64).into();
    score["jitter_ms"] = (cond.jitter.as_millis() as u64).into();
    score["applied_loss"] = (dropped as f64 / (delivered + dropped).max(1) as f64).into();
    score["leg"] = if uplink { "publisher" } else { "player" }.into();
    eprintln!("speech over {cond:?}, seed {seed}: {score}");
    score
}

fn stoi(score: &serde_json::Value) -> f64 {
    score["stoi"]
        .as_f64()
        .unwrap_or_else(|| panic!("no STOI (is PyPI `pystoi` installed? scripts/test.sh does it): {score}"))
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

/// The curve of `docs/quality.md`: PESQ and STOI at 0–70 % random and bursty loss with 100 ms
/// RTT, one line of JSON per call appended to `$HUDDLE_QUALITY_OUT` (default: stderr only).
/// `HUDDLE_QUALITY_LOSSES` (percentages, comma-separated), `HUDDLE_QUALITY_MODELS` (`random`,
/// `bursty`) and `HUDDLE_QUALITY_SEEDS` choose the points; `HUDDLE_QUALITY_LEG=publisher` puts
/// the loss on the publisher's uplink instead of the player's downlink, `HUDDLE_AUDIO_RED` (read
/// by the SDK) turns RED off (`0`) or sets its levels (`1,3,6`).
/// Run by `scripts/quality.sh`.
#[test]
#[ignore = "minutes long; run by scripts/quality.sh"]
fn loss_curve() {
    let _machine = exclusive();
    let losses: Vec<u32> = std::env::var("HUDDLE_QUALITY_LOSSES")
        .unwrap_or_else(|_| "0,10,20,30,40,50,60,70".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let seeds: Vec<u64> = std::env::var("HUDDLE_QUALITY_SEEDS")
        .unwrap_or_else(|_| "1".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let models: Vec<String> = std::env::var("HUDDLE_QUALITY_MODELS")
        .unwrap_or_else(|_| "random,bursty".into())
        .split(',')
        .map(|s| s.trim().to_string())
        .collect();
    let out = std::env::var_os("HUDDLE_QUALITY_OUT").map(PathBuf::from);
    let red = std::env::var("HUDDLE_AUDIO_RED").unwrap_or_else(|_| "default".into());
    for &seed in &seeds {
        for model in models.iter().map(String::as_str) {
            for &loss in &losses {
                let p = f64::from(loss) / 100.0;
                let cond = if model == "random" {
                    Conditions::random(p)
                } else {
                    Conditions::bursty(p)
                };
                let mut score = speech_call(seed * 1000 + u64::from(loss), cond, &format!("{model}-{loss}"));
                score["model"] = model.into();
                score["red"] = red.as_str().into();
                if let Some(path) = &out {
                    let mut f = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .unwrap();
                    writeln!(f, "{score}").unwrap();
                }
            }
        }
    }
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
