//! Speech calls over an impaired network, scored: what the quality tests (`tests/quality.rs`)
//! and the loss-curve benchmark (`benches/loss_curve.rs`) measure. A server behind the
//! `huddle-netsim` proxies, a publisher sending the speech sample from a WAV file and a player
//! recording it, the player's links impaired once the call is up; `audio_score.py` scores the
//! recording (wideband PESQ, STOI).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use huddle::{AudioSink, AudioSource, Engine, Event, PlayerState, PublisherState, RoomConfig};
use huddle_media::impair::Impairment;
use huddle_media::{AudioFrame, AudioSink as _, AudioSource as _, Playback, WavRecorder, WavSource};
use huddle_netsim::Direction;

use super::netsim::{Client, Net};
use super::{Events, engine_with, user};

pub const SPEECH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../huddle-media/tests/data/speech-16k.wav"
);

/// A path for a test's media file, in a directory of this test process.
pub fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("huddle-media-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// The speech sample with `lead_in` of silence before it and 0.5 s after, as a 48 kHz WAV. The
/// lead-in lets the receiver's adaptive jitter buffer settle (its delay steps at start-up, or
/// on an impaired network, land in silence): the score is of the call's steady state.
pub fn padded_speech(path: &Path, lead_in: Duration) {
    let mut src = WavSource::open(SPEECH, Playback::Once).unwrap();
    let mut out = WavRecorder::create(path).unwrap();
    for _ in 0..lead_in.as_millis() / 20 {
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
pub struct Conditions {
    /// Share of the player's downlink packets lost.
    pub loss: f64,
    /// Mean loss burst length in packets (1: independent losses).
    pub burst: f64,
    /// One-way delay of each of the player's links.
    pub delay: Duration,
    /// Jitter (uniform, 0 to this) on each of the player's links.
    pub jitter: Duration,
    /// Share of the player's downlink packets held back by `late_by` more (a packet late now
    /// and then, overtaken by the next ones).
    pub late: f64,
    /// How late such a packet is.
    pub late_by: Duration,
}

impl Conditions {
    pub fn random(loss: f64) -> Conditions {
        Conditions {
            loss,
            burst: 1.0,
            delay: Duration::from_millis(50),
            jitter: Duration::from_millis(5),
            late: 0.0,
            late_by: Duration::from_millis(20),
        }
    }

    /// A clean loopback call: no delay, jitter or loss beyond the machine's own.
    pub fn clean() -> Conditions {
        Conditions {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            ..Conditions::random(0.0)
        }
    }

    pub fn bursty(loss: f64) -> Conditions {
        Conditions {
            burst: 3.0,
            ..Conditions::random(loss)
        }
    }

    /// Delay and jitter on both of `client`'s links, the loss on its downlink (a player) or on
    /// its uplink (a publisher, `uplink`).
    pub fn impair(&self, net: &Net, client: &Client, uplink: bool) {
        let mut lossy = Impairment::default();
        lossy.delay = self.delay;
        lossy.jitter = self.jitter;
        lossy.loss = self.loss;
        lossy.burst = self.burst;
        let mut clean = Impairment::default();
        clean.delay = self.delay;
        clean.jitter = self.jitter;
        // Late packets on the leg that carries the audio (the lossy one).
        lossy.reorder = self.late;
        lossy.reorder_delay = self.late_by;
        let (down, up) = if uplink { (clean, lossy) } else { (lossy, clean) };
        net.impair(Some(client), Direction::Down, down);
        net.impair(Some(client), Direction::Up, up);
    }
}

pub fn voice_engine(client: &Client, user_id: &str) -> (Engine, Events) {
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
pub fn speech_call(seed: u64, cond: Conditions, tag: &str) -> serde_json::Value {
    let net = Net::start(seed);
    let (a, b) = (net.client(10), net.client(11));
    let sent = tmp(&format!("sent-{tag}.wav"));
    let heard = tmp(&format!("heard-{tag}.wav"));
    padded_speech(&sent, Duration::from_secs(2));

    let (bob, mut eb) = voice_engine(&b, "bob");
    bob.set_audio_sink(AudioSink::Wav(heard.clone())).unwrap();
    bob.start_playing_stream("alice-voice").unwrap();
    eb.player("alice-voice", PlayerState::PlayRequesting);

    let (alice, mut ea) = voice_engine(&a, "alice");
    // `HUDDLE_QUALITY_AUDIO=legacy`: the encoder settings before the adapter (32 kbit/s, a 10 %
    // FEC loss hint, held), for the side-by-side of `scripts/quality.sh clean`.
    if std::env::var("HUDDLE_QUALITY_AUDIO").is_ok_and(|v| v == "legacy") {
        let mut legacy = huddle::AudioConfig::default();
        legacy.bitrate = 32_000;
        legacy.loss_hint_percent = 10;
        legacy.adaptive = false;
        alice.set_audio_config(legacy).unwrap();
    }
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

    let mut score = score(&heard);
    let delivered = after.delivered.saturating_sub(before.delivered);
    let dropped = after.dropped.saturating_sub(before.dropped);
    score["seed"] = seed.into();
    score["loss"] = cond.loss.into();
    score["burst"] = cond.burst.into();
    score["rtt_ms"] = (2 * cond.delay.as_millis() as u64).into();
    score["jitter_ms"] = (cond.jitter.as_millis() as u64).into();
    score["late"] = cond.late.into();
    score["late_ms"] = (cond.late_by.as_millis() as u64).into();
    score["applied_loss"] = (dropped as f64 / (delivered + dropped).max(1) as f64).into();
    score["leg"] = if uplink { "publisher" } else { "player" }.into();
    eprintln!("speech over {cond:?}, seed {seed}: {score}");
    score
}

pub fn stoi(score: &serde_json::Value) -> f64 {
    score["stoi"]
        .as_f64()
        .unwrap_or_else(|| panic!("no STOI (is PyPI `pystoi` installed? scripts/test.sh does it): {score}"))
}

/// Scores a recording of the speech sample with `audio_score.py` (aligned wideband PESQ, STOI,
/// the 200 ms windows): one JSON object.
pub fn score(heard: &Path) -> serde_json::Value {
    let out = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/audio_score.py"))
        .arg(SPEECH)
        .arg(heard)
        .output()
        .expect("run python3 audio_score.py");
    assert!(
        out.status.success(),
        "audio_score.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
