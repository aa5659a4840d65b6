//! Audio devices (`AudioSource::Microphone`, `AudioSink::Speaker`): on a machine without a sound
//! card (CI, these servers) or in a build without the `device` feature, choosing them fails at
//! once with a numbered error that says why; it neither panics nor hangs.

use std::time::{Duration, Instant};

use huddle::{AudioSink, AudioSource, Engine, EngineProfile, ErrorCode};

fn engine() -> Engine {
    let mut p = EngineProfile::new(7, "ws://127.0.0.1:9");
    p.app_sign = Some("00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff".into());
    Engine::create(p).unwrap()
}

/// Whether this machine has a sound card at all (Linux: ALSA's device nodes).
fn has_sound_card() -> bool {
    std::fs::read_dir("/dev/snd")
        .is_ok_and(|mut d| d.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("pcm"))))
}

#[test]
fn microphone_without_a_device_is_a_clear_error() {
    let engine = engine();
    let t = Instant::now();
    let r = engine.set_audio_source(AudioSource::Microphone);
    assert!(t.elapsed() < Duration::from_secs(5), "took {:?}", t.elapsed());
    match r {
        Err(e) => {
            assert_eq!(e.code, ErrorCode::DEVICE_UNAVAILABLE, "{e}");
            assert_eq!(e.code.as_u32(), 1_009_020);
            assert!(e.message.contains("microphone"), "{e}");
            eprintln!("set_audio_source(Microphone): {e}");
        }
        Ok(()) => assert!(
            cfg!(feature = "device") && has_sound_card(),
            "a microphone opened without a sound card"
        ),
    }
    engine.destroy();
}

#[test]
fn speaker_without_a_device_is_a_clear_error() {
    let engine = engine();
    let t = Instant::now();
    let r = engine.set_audio_sink(AudioSink::Speaker);
    assert!(t.elapsed() < Duration::from_secs(5), "took {:?}", t.elapsed());
    match r {
        Err(e) => {
            assert_eq!(e.code, ErrorCode::DEVICE_UNAVAILABLE, "{e}");
            assert!(e.message.contains("speaker"), "{e}");
            eprintln!("set_audio_sink(Speaker): {e}");
        }
        Ok(()) => assert!(
            cfg!(feature = "device") && has_sound_card(),
            "a speaker opened without a sound card"
        ),
    }
    engine.destroy();
}
