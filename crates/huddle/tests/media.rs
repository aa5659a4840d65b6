//! The media plane end to end: SDK engines publishing and playing real audio and video through a
//! real huddle-server SFU on 127.0.0.1 (str0m on both sides, ICE + DTLS-SRTP over UDP).
//!
//! Speech is scored with wideband PESQ by `audio_score.py` (PyPI `pesq`, numpy, scipy; installed
//! by `scripts/test.sh`). The measurement test prints login → first audio frame and mouth-to-ear
//! latency (run with `--nocapture` to see them).

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use common::quality::{padded_speech, score, tmp};
use common::*;
use huddle::{
    AudioSink, AudioSource, Event, I420Frame, PlayerState, PublisherState, RoomConfig, VideoRenderer,
    VideoSource,
};
use huddle_media::{AudioSource as _, Playback, TestPattern, WavSource, Y4mReader, psnr};

/// The tests that score quality or measure latency run alone (`exclusive`); the others share the
/// machine (`shared`). Tests of one binary run in parallel, and a 2-core machine running three
/// engines' media besides would measure itself, not the SDK.
static MACHINE: RwLock<()> = RwLock::new(());

fn exclusive() -> RwLockWriteGuard<'static, ()> {
    MACHINE.write().unwrap_or_else(|e| e.into_inner())
}

fn shared() -> RwLockReadGuard<'static, ()> {
    MACHINE.read().unwrap_or_else(|e| e.into_inner())
}

/// Reads a recorded 48 kHz mono WAV.
fn read_wav(path: &Path) -> Vec<i16> {
    let mut src = WavSource::open(path, Playback::Once).unwrap();
    let mut v = Vec::new();
    while let Some(f) = src.read_frame().unwrap() {
        v.extend_from_slice(&f.samples);
    }
    v
}

/// Power of `hz` in `x` relative to the signal's power (Goertzel), in dB.
fn tone_db(x: &[i16], hz: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * hz / 48_000.0;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    let mut energy = 1e-9;
    for &v in x {
        let v = f64::from(v) / 32768.0;
        energy += v * v;
        let s = v + coeff * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    // A pure tone of any amplitude gives power = energy × N / 2.
    10.0 * (power / (energy * x.len() as f64 / 2.0)).log10()
}

/// One call carrying the speech sample; returns the recording's score.
fn speech_call() -> serde_json::Value {
    let server = server();
    let sent = tmp("speech-sent.wav");
    let heard = tmp("speech-heard.wav");
    padded_speech(&sent, Duration::from_millis(1_500));

    // The player comes first: its offer waits at the server for the publisher's media.
    let (bob, mut eb) = voice_engine(&server, "speech", "bob");
    bob.set_audio_sink(AudioSink::Wav(heard.clone())).unwrap();
    bob.start_playing_stream("alice-voice").unwrap();
    eb.player("alice-voice", PlayerState::PlayRequesting);

    let (alice, mut ea) = voice_engine(&server, "speech", "alice");
    alice
        .set_audio_source(AudioSource::Wav {
            path: sent.clone(),
            looped: false,
        })
        .unwrap();
    alice.start_publishing_stream("alice-voice").unwrap();
    ea.wait("captured first frame", |e| {
        matches!(e, Event::PublisherCapturedAudioFirstFrame)
    });
    ea.publisher("alice-voice", PublisherState::Publishing);
    first_audio_frame(&mut eb, "alice-voice");
    eb.player("alice-voice", PlayerState::Playing);

    std::thread::sleep(Duration::from_millis(5_900));
    bob.set_audio_sink(AudioSink::Discard).unwrap(); // completes the file
    let score = score(&heard);
    eprintln!("speech through the SFU: {score}");
    score
}

/// The speech gets through the real engine: WAV source, publish task, UDP sockets, the SFU,
/// play task, mixer, WAV sink. What needs sockets and threads is checked here: every 200 ms
/// window of speech is in the recording (each searched within ±30 ms of where the previous one
/// was found, so that scheduling stalls of a loaded machine, which shift what follows, do not
/// read as a missing part).
/// How well it sounds (PESQ, STOI at one alignment) depends on the machine's load here (one
/// run failed at PESQ 3.42 under load, docs/quality.md "Score drops traced"), so it is asserted
/// on virtual time (the same SDK and SFU code, no socket, sleep or thread): the loss curve's 0 %
/// point (`media::netem`, `the_loss_curve_from_the_start_of_the_call`: PESQ ≥ 3.9 on five
/// seeds, 4.07 measured) and the jitter call (`a_clean_call_with_jitter_is_scored`). The PESQ
/// found here is printed.
#[test]
fn speech_arrives_intact() {
    let _machine = exclusive();
    let score = speech_call();
    let tracked = score["min_window_corr_tracked"].as_f64().unwrap();
    assert!(
        tracked >= 0.7,
        "a part of the speech is missing or garbled: {score}"
    );
    assert!(score["windows"].as_u64().unwrap() >= 10, "{score}");
}

/// Collects decoded frames.
#[derive(Default)]
struct Frames(Mutex<Vec<(String, I420Frame)>>);

impl VideoRenderer for Frames {
    fn on_remote_video_frame(&self, stream_id: &str, frame: &I420Frame) {
        self.0
            .lock()
            .unwrap()
            .push((stream_id.to_string(), frame.clone()));
    }
}

#[test]
fn video_frames_match_the_source() {
    let _machine = shared();
    let server = server();
    let recorded = tmp("video.y4m");
    let (bob, mut eb) = voice_engine(&server, "video", "bob");
    let frames = Arc::new(Frames::default());
    bob.set_video_renderer(Some(frames.clone()));
    bob.set_video_sink_y4m("alice-cam", Some(recorded.clone()))
        .unwrap();
    bob.start_playing_stream("alice-cam").unwrap();

    let (alice, mut ea) = engine_with(profile(&server));
    alice.enable_camera(true);
    alice
        .set_video_source(VideoSource::TestPattern {
            width: 320,
            height: 240,
            fps: 30,
        })
        .unwrap();
    alice
        .login_room("video", user("alice"), RoomConfig::default())
        .unwrap();
    alice.start_publishing_stream("alice-cam").unwrap();
    ea.publisher("alice-cam", PublisherState::Publishing);
    eb.wait(
        "first video frame",
        |e| matches!(e, Event::PlayerRecvVideoFirstFrame { stream_id } if stream_id.as_str() == "alice-cam"),
    );
    std::thread::sleep(Duration::from_millis(1_500));
    bob.stop_playing_stream("alice-cam").unwrap();
    std::thread::sleep(Duration::from_millis(100));

    let got: Vec<I420Frame> = frames.0.lock().unwrap().iter().map(|(_, f)| f.clone()).collect();
    assert!(got.len() >= 30, "only {} frames decoded in 1.5 s", got.len());
    // Align: the first decoded frame is some frame n of the pattern; each next one n + 1 (a
    // dropped frame shows as a skip).
    let pattern = TestPattern::new(320, 240).unwrap();
    let mut next = 0u64;
    let mut worst = f64::MAX;
    for (i, f) in got.iter().enumerate() {
        let range = if i == 0 { 0..60 } else { next..next + 4 };
        let (n, p) = range
            .map(|n| (n, psnr(&pattern.frame(n), f).unwrap()))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap();
        worst = worst.min(p);
        next = n + 1;
    }
    eprintln!("video: {} frames, worst PSNR {worst:.1} dB", got.len());
    assert!(worst >= 30.0, "worst PSNR {worst:.1} dB < 30 dB");

    let mut reader = Y4mReader::open(&recorded).unwrap();
    assert_eq!((reader.width(), reader.height()), (320, 240));
    let mut n = 0;
    while reader.read_frame().unwrap().is_some() {
        n += 1;
    }
    assert!(
        n >= got.len() - 2,
        "{n} frames in the Y4M file, {} rendered",
        got.len()
    );
}

#[test]
fn voice_only_negotiates_no_video() {
    let _machine = shared();
    let server = server();
    let (bob, mut eb) = voice_engine(&server, "voice", "bob");
    let frames = Arc::new(Frames::default());
    bob.set_video_renderer(Some(frames.clone()));
    bob.start_playing_stream("alice-v").unwrap();
    let (alice, mut ea) = voice_engine(&server, "voice", "alice");
    alice.start_publishing_stream("alice-v").unwrap();
    ea.publisher("alice-v", PublisherState::Publishing);
    first_audio_frame(&mut eb, "alice-v");
    std::thread::sleep(Duration::from_millis(300));
    assert!(frames.0.lock().unwrap().is_empty());
    assert!(
        !ea.drain()
            .iter()
            .any(|e| matches!(e, Event::PublisherCapturedVideoFirstFrame))
    );
}

#[test]
fn publisher_stops_and_restarts_under_the_same_id() {
    let _machine = shared();
    let server = server();
    let (bob, mut eb) = voice_engine(&server, "restart", "bob");
    bob.set_audio_sink(AudioSink::Custom).unwrap();
    bob.start_playing_stream("alice-r").unwrap();
    eb.player("alice-r", PlayerState::PlayRequesting);

    let (alice, mut ea) = voice_engine(&server, "restart", "alice");
    alice.set_audio_source(AudioSource::Tone { hz: 600.0 }).unwrap();
    alice.start_publishing_stream("alice-r").unwrap();
    ea.publisher("alice-r", PublisherState::Publishing);
    first_audio_frame(&mut eb, "alice-r");
    eb.player("alice-r", PlayerState::Playing);
    let heard = pull(&bob, Duration::from_millis(300));
    assert!(tone_db(&heard[heard.len() / 2..], 600.0) > -3.0, "no 600 Hz tone");

    alice.stop_publishing_stream().unwrap();
    ea.publisher("alice-r", PublisherState::NoPublish);
    eb.player("alice-r", PlayerState::PlayRequesting);
    let quiet = pull(&bob, Duration::from_millis(1_300));
    let tail = &quiet[quiet.len() - 4800..];
    assert!(
        tail.iter().all(|s| s.abs() < 100),
        "still hearing something after stop"
    );

    alice.set_audio_source(AudioSource::Tone { hz: 900.0 }).unwrap();
    alice.start_publishing_stream("alice-r").unwrap();
    ea.publisher("alice-r", PublisherState::Publishing);
    first_audio_frame(&mut eb, "alice-r");
    eb.player("alice-r", PlayerState::Playing);
    let heard = pull(&bob, Duration::from_millis(300));
    assert!(
        tone_db(&heard[heard.len() / 2..], 900.0) > -3.0,
        "no 900 Hz tone after the restart"
    );
}

#[test]
fn three_publishers_and_three_players_hear_each_other() {
    let _machine = shared();
    let server = server();
    let tones = [("ann", 440.0), ("ben", 700.0), ("cat", 1_100.0)];
    let mut engines = Vec::new();
    for (name, hz) in tones {
        let (e, ev) = voice_engine(&server, "trio", name);
        e.set_audio_source(AudioSource::Tone { hz }).unwrap();
        e.set_audio_sink(AudioSink::Wav(tmp(&format!("trio-{name}.wav"))))
            .unwrap();
        e.start_publishing_stream(&format!("{name}-s")).unwrap();
        engines.push((name, e, ev));
    }
    for (name, e, _) in &engines {
        for (other, _) in tones {
            if other != *name {
                e.start_playing_stream(&format!("{other}-s")).unwrap();
            }
        }
    }
    for (name, _, ev) in &mut engines {
        ev.publisher(&format!("{name}-s"), PublisherState::Publishing);
        for (other, _) in tones {
            if other != *name {
                ev.player(&format!("{other}-s"), PlayerState::Playing);
            }
        }
    }
    std::thread::sleep(Duration::from_millis(800));
    for (name, e, _) in &engines {
        e.set_audio_sink(AudioSink::Discard).unwrap();
        let rec = read_wav(&tmp(&format!("trio-{name}.wav")));
        let tail = &rec[rec.len().saturating_sub(24_000)..];
        for (other, hz) in tones {
            let db = tone_db(tail, hz);
            if other == *name {
                assert!(db < -20.0, "{name} hears itself at {hz} Hz ({db:.1} dB)");
            } else {
                // Two equal tones: each carries half of the power (-3 dB).
                assert!(db > -6.0, "{name} does not hear {other} at {hz} Hz ({db:.1} dB)");
            }
        }
    }
}

/// A player that logs in to a stream already published gets its first audio frame, and each
/// 20 ms burst pushed into the publisher's custom capture comes out of the player's custom
/// render, once, after it was pushed. How fast (login → first frame, mouth to ear) is measured by
/// `benches/latency.rs` against the targets, not asserted here.
#[test]
fn a_pushed_burst_comes_out_of_the_players_render() {
    let _machine = shared();
    let server = server();
    let (alice, mut ea) = voice_engine(&server, "burst", "alice");
    alice.set_audio_source(AudioSource::Custom).unwrap();
    alice.start_publishing_stream("alice-b").unwrap();
    ea.publisher("alice-b", PublisherState::Publishing);
    let (bob, mut eb) = voice_engine(&server, "burst", "bob");
    bob.set_audio_sink(AudioSink::Custom).unwrap();
    bob.start_playing_stream("alice-b").unwrap();
    first_audio_frame(&mut eb, "alice-b");
    for _ in 0..3 {
        // Heard (it fails after 2 s without).
        mouth_to_ear(&alice, &bob);
        // The rest of the burst, then nothing loud: it came out once.
        pull(&bob, Duration::from_millis(100));
        let after = pull(&bob, Duration::from_millis(200));
        assert!(!after.is_empty(), "the render goes on after the burst");
        assert!(
            after.iter().all(|s| s.abs() <= 3000),
            "the burst came out more than once"
        );
    }
}
