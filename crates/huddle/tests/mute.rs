//! Mute end to end: SDK engines through a real huddle-server on 127.0.0.1. A muted microphone is
//! heard as silence by the players and reported to them (late players too); a player's muted
//! stream is no longer sent to it by the server; unmuting brings both back.

mod common;

use std::time::Duration;

use common::*;
use huddle::{AudioSink, AudioSource, Event, PlayerState, PublisherState, RemoteDeviceState};

/// The root mean square of the last `ms` milliseconds of `x` (48 kHz), in sample units.
fn rms_tail(x: &[i16], ms: usize) -> f64 {
    let n = (ms * 48).min(x.len());
    assert!(n > 0, "nothing was rendered");
    let tail = &x[x.len() - n..];
    (tail.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / n as f64).sqrt()
}

fn mic_state(events: &mut Events, stream: &str, state: RemoteDeviceState) {
    events.wait(&format!("remote mic {state:?} of {stream}"), |e| {
        matches!(e, Event::RemoteMicStateUpdate { stream_id, state: s } if stream_id.as_str() == stream && *s == state)
    });
}

#[test]
fn a_muted_microphone_is_heard_as_silence_and_reported_to_players() {
    let server = server();
    let (bob, mut eb) = voice_engine(&server, "mute", "bob");
    bob.set_audio_sink(AudioSink::Custom).unwrap();
    bob.start_playing_stream("alice-m").unwrap();
    let (alice, mut ea) = voice_engine(&server, "mute", "alice");
    alice.set_audio_source(AudioSource::Tone { hz: 600.0 }).unwrap();
    alice.start_publishing_stream("alice-m").unwrap();
    ea.publisher("alice-m", PublisherState::Publishing);
    first_audio_frame(&mut eb, "alice-m");
    eb.player("alice-m", PlayerState::Playing);
    let loud = rms_tail(&pull(&bob, Duration::from_millis(400)), 200);
    assert!(loud > 3000.0, "the tone is heard before muting: rms {loud:.0}");

    alice.mute_microphone(true);
    assert!(alice.is_microphone_muted());
    mic_state(&mut eb, "alice-m", RemoteDeviceState::Mute);
    let muted = rms_tail(&pull(&bob, Duration::from_millis(600)), 300);
    eprintln!("player's rms: tone {loud:.0}, microphone muted {muted:.1}");
    assert!(muted < 30.0, "silence while muted: rms {muted:.1}");
    // Silence is still sent: the stream keeps playing (no stall, no state change).
    assert!(
        !eb.drain()
            .iter()
            .any(|e| matches!(e, Event::PlayerStateUpdate { .. })),
        "the player's state changed while the publisher was muted"
    );

    // A player that starts while the microphone is muted hears of it at once.
    let (carol, mut ec) = voice_engine(&server, "mute", "carol");
    carol.start_playing_stream("alice-m").unwrap();
    mic_state(&mut ec, "alice-m", RemoteDeviceState::Mute);

    // The stream's mute holds as the microphone's does; unmuting both brings the tone back.
    alice.mute_publish_stream_audio(true);
    alice.mute_microphone(false);
    assert!(rms_tail(&pull(&bob, Duration::from_millis(400)), 200) < 30.0);
    alice.mute_publish_stream_audio(false);
    mic_state(&mut eb, "alice-m", RemoteDeviceState::Open);
    mic_state(&mut ec, "alice-m", RemoteDeviceState::Open);
    let back = rms_tail(&pull(&bob, Duration::from_millis(500)), 200);
    assert!(back > 3000.0, "the tone is back after unmuting: rms {back:.0}");
    drop(carol);
}

#[test]
fn a_muted_play_stream_is_not_sent_and_comes_back() {
    let server = server();
    let (bob, mut eb) = voice_engine(&server, "mute-play", "bob");
    bob.set_audio_sink(AudioSink::Custom).unwrap();
    bob.start_playing_stream("alice-p").unwrap();
    let (alice, mut ea) = voice_engine(&server, "mute-play", "alice");
    alice.set_audio_source(AudioSource::Tone { hz: 600.0 }).unwrap();
    alice.start_publishing_stream("alice-p").unwrap();
    ea.publisher("alice-p", PublisherState::Publishing);
    first_audio_frame(&mut eb, "alice-p");
    assert!(rms_tail(&pull(&bob, Duration::from_millis(400)), 200) > 3000.0);

    bob.mute_play_stream_audio("alice-p", true).unwrap();
    // Let the mute reach the server, then count what it holds back over one second.
    std::thread::sleep(Duration::from_millis(300));
    let before = server.media_stats();
    let heard = pull(&bob, Duration::from_millis(1_000));
    let after = server.media_stats();
    let muted = after.rtp_muted - before.rtp_muted;
    let forwarded = after.rtp_forwarded - before.rtp_forwarded;
    eprintln!("in 1 s of play mute: {muted} packets held back, {forwarded} forwarded");
    // 50 packets a second of audio; none of them goes to bob.
    assert!(muted >= 30, "the server held back only {muted} packets");
    assert_eq!(forwarded, 0, "the server still sent the muted stream");
    assert!(rms_tail(&heard, 500) < 30.0);

    bob.mute_play_stream_audio("alice-p", false).unwrap();
    let back = rms_tail(&pull(&bob, Duration::from_millis(600)), 200);
    assert!(back > 3000.0, "the tone is back after unmuting: rms {back:.0}");
    // Still playing all along.
    assert!(!eb.drain().iter().any(|e| matches!(
        e,
        Event::PlayerStateUpdate { state, .. } if *state != PlayerState::Playing
    )));

    // Bad input to the API is refused with the stream ID's own code.
    assert_eq!(
        bob.mute_play_stream_audio("a b", true).unwrap_err().code,
        huddle::ErrorCode::STREAM_ID_INVALID_CHARACTER
    );
}

#[test]
fn a_muted_speaker_renders_silence_while_the_stream_still_arrives() {
    let server = server();
    let (bob, mut eb) = voice_engine(&server, "mute-speaker", "bob");
    bob.set_audio_sink(AudioSink::Custom).unwrap();
    bob.start_playing_stream("alice-s").unwrap();
    let (alice, mut ea) = voice_engine(&server, "mute-speaker", "alice");
    alice.set_audio_source(AudioSource::Tone { hz: 600.0 }).unwrap();
    alice.start_publishing_stream("alice-s").unwrap();
    ea.publisher("alice-s", PublisherState::Publishing);
    first_audio_frame(&mut eb, "alice-s");
    bob.mute_speaker(true);
    assert!(bob.is_speaker_muted());
    let before = server.media_stats().rtp_forwarded;
    let heard = pull(&bob, Duration::from_millis(600));
    assert!(
        rms_tail(&heard, 300) < 1.0,
        "the muted speaker renders digital silence"
    );
    assert!(
        server.media_stats().rtp_forwarded - before >= 20,
        "the stream still arrives"
    );
    bob.mute_speaker(false);
    assert!(rms_tail(&pull(&bob, Duration::from_millis(400)), 200) > 3000.0);
}
