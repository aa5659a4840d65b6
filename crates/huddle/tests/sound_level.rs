//! The sound-level monitor end to end: an engine publishes speech and silence in turn through a
//! real huddle-server on 127.0.0.1; the player's remote levels, the publisher's captured levels
//! and both sides' active speakers follow them.

mod common;

use std::path::Path;
use std::time::Duration;

use common::quality::{SPEECH, tmp};
use common::*;
use huddle::{Event, PlayerState, PublisherState, SoundLevelConfig, SoundLevelInfo};
use huddle_media::{AudioFrame, AudioSink as _, AudioSource as _, Playback, WavRecorder, WavSource};

/// Silence (1.5 s), the speech sample (3.7 s), silence (2.5 s), the sample again, silence (1.5 s).
fn alternating(path: &Path) {
    let mut out = WavRecorder::create(path).unwrap();
    let silence = |out: &mut WavRecorder, ms: u32| {
        for _ in 0..ms / 20 {
            out.write_frame(&AudioFrame::silence(0)).unwrap();
        }
    };
    let speech = |out: &mut WavRecorder| {
        let mut src = WavSource::open(SPEECH, Playback::Once).unwrap();
        while let Some(f) = src.read_frame().unwrap() {
            out.write_frame(&f).unwrap();
        }
    };
    silence(&mut out, 1_500);
    speech(&mut out);
    silence(&mut out, 2_500);
    speech(&mut out);
    silence(&mut out, 1_500);
    out.finish().unwrap();
}

/// Reports every 100 ms: the two speeches are 37 reports long, the silence between them 25.
const SPEECH_REPORTS: usize = 37;
const GAP_REPORTS: usize = 25;

/// Checks that `reports` (one every 100 ms) follow the alternating file: quiet until the first
/// speech, voiced and loud through each speech, quiet and not voiced in the silence between
/// (once the voice hangover is over), and after.
fn check_follows(who: &str, reports: &[SoundLevelInfo]) {
    let trace: String = reports
        .iter()
        .map(|r| format!("{:.0}{} ", r.sound_level, if r.vad { "*" } else { "" }))
        .collect();
    eprintln!("{who}: {trace}");
    let start = reports
        .iter()
        .position(|r| r.vad)
        .unwrap_or_else(|| panic!("{who}: never voiced: {trace}"));
    // (The report before the first voiced one holds the speech's first 32 ms: the onset.)
    assert!(
        reports[..start.saturating_sub(1)]
            .iter()
            .all(|r| r.sound_level < 10.0),
        "{who}: loud before the speech: {trace}"
    );
    let second = start + SPEECH_REPORTS + GAP_REPORTS;
    assert!(
        reports.len() >= second + SPEECH_REPORTS + 10,
        "{who}: too few reports ({}): {trace}",
        reports.len()
    );
    // Through each speech (a few reports' margin at its ends for the network's delay changes).
    for from in [start, second] {
        let speech = &reports[from + 3..from + SPEECH_REPORTS - 3];
        let voiced = speech.iter().filter(|r| r.vad).count();
        assert!(
            voiced * 100 >= speech.len() * 85,
            "{who}: speech voiced in {voiced} of {} reports: {trace}",
            speech.len()
        );
        let mean = speech.iter().map(|r| r.sound_level).sum::<f32>() / speech.len() as f32;
        assert!(mean > 50.0, "{who}: speech at level {mean}: {trace}");
    }
    // The silences: from 1 s after a speech (its hangover and the margin) to shortly before the
    // next.
    for quiet in [
        &reports[start + SPEECH_REPORTS + 10..second - 3],
        &reports[second + SPEECH_REPORTS + 10..second + SPEECH_REPORTS + 12],
    ] {
        assert!(
            quiet.iter().all(|r| !r.vad && r.sound_level < 10.0),
            "{who}: silence heard as voice: {trace}"
        );
    }
}

fn remote_levels(events: &[Event], stream: &str) -> Vec<SoundLevelInfo> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::RemoteSoundLevelUpdate { sound_levels } => sound_levels.get(stream).copied(),
            _ => None,
        })
        .collect()
}

fn captured_levels(events: &[Event]) -> Vec<SoundLevelInfo> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::CapturedSoundLevelUpdate { info } => Some(*info),
            _ => None,
        })
        .collect()
}

/// The active-speaker lists, in order.
fn speakers(events: &[Event]) -> Vec<Vec<String>> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::ActiveSpeakersChanged { stream_ids } => {
                Some(stream_ids.iter().map(|s| s.to_string()).collect())
            }
            _ => None,
        })
        .collect()
}

#[test]
fn remote_and_captured_levels_follow_speech_and_silence() {
    let server = server();
    let sent = tmp("levels-sent.wav");
    alternating(&sent);

    let (bob, mut eb) = voice_engine(&server, "levels", "bob");
    bob.start_sound_level_monitor(SoundLevelConfig::new(100, true))
        .unwrap();
    bob.start_playing_stream("alice-main").unwrap();
    eb.player("alice-main", PlayerState::PlayRequesting);

    let (alice, mut ea) = voice_engine(&server, "levels", "alice");
    alice
        .start_sound_level_monitor(SoundLevelConfig::default())
        .unwrap();
    alice
        .set_audio_source(huddle::AudioSource::Wav {
            path: sent.clone(),
            looped: false,
        })
        .unwrap();
    alice.start_publishing_stream("alice-main").unwrap();
    ea.publisher("alice-main", PublisherState::Publishing);
    eb.player("alice-main", PlayerState::Playing);
    // The file lasts 13 s from the first captured frame; a little more for the network.
    std::thread::sleep(Duration::from_millis(14_500));
    eb.drain();
    ea.drain();
    bob.stop_sound_level_monitor();

    // The played stream's levels, measured on its decoded audio.
    let remote = remote_levels(&eb.seen, "alice-main");
    check_follows("bob hears alice-main", &remote);
    // The publisher's captured levels, measured before encoding.
    let captured = captured_levels(&ea.seen);
    // Before publishing, the captured level is 0.
    assert_eq!(captured[0], SoundLevelInfo::default());
    let from = captured.iter().position(|r| r.sound_level > 0.0).unwrap_or(0);
    check_follows("alice's capture", &captured[from.saturating_sub(1)..]);

    // Both sides' active speakers: alice-main while she speaks, nobody in the silences.
    let want: Vec<Vec<String>> = vec![
        vec!["alice-main".into()],
        vec![],
        vec!["alice-main".into()],
        vec![],
    ];
    assert_eq!(speakers(&eb.seen), want, "bob's active speakers");
    assert_eq!(speakers(&ea.seen), want, "alice's active speakers");

    // Stopped: no more level events.
    std::thread::sleep(Duration::from_millis(300));
    eb.drain();
    let n = eb.seen.len();
    std::thread::sleep(Duration::from_millis(500));
    eb.drain();
    assert!(
        eb.seen[n..].iter().all(|e| !e.is_sound_level()),
        "level events after stop"
    );
    bob.destroy();
    alice.destroy();
}

#[test]
fn an_interval_outside_100_to_3000_ms_is_refused() {
    let (engine, _events) = engine_with(profile(&server()));
    for ms in [0, 99, 3001] {
        let e = engine
            .start_sound_level_monitor(SoundLevelConfig::new(ms, true))
            .unwrap_err();
        assert_eq!(e.code.as_u32(), 1009065, "{ms} ms");
        assert!(e.message.contains("100–3000 ms"), "{}", e.message);
    }
    engine
        .start_sound_level_monitor(SoundLevelConfig::new(3000, false))
        .unwrap();
    engine.stop_sound_level_monitor();
    engine.destroy();
}
