//! The API's synchronous checks, and behaviour without a server.

use std::sync::Arc;
use std::sync::mpsc::channel;
use std::time::Duration;

use huddle::{
    Engine, EngineConfig, EngineProfile, ErrorCode, EventHandler, RoomConfig, RoomStateChangedReason, User,
    UserId,
};

const SIGN: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

/// A server address where nothing listens.
fn nowhere() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("ws://{addr}")
}

fn profile() -> EngineProfile {
    let mut p = EngineProfile::new(7, nowhere());
    p.app_sign = Some(SIGN.into());
    p
}

fn user(id: &str) -> User {
    User::new(UserId::new(id).unwrap())
}

fn code<T: std::fmt::Debug>(r: Result<T, huddle::HuddleError>) -> ErrorCode {
    r.unwrap_err().code
}

#[test]
fn create_checks_the_profile() {
    let mut p = profile();
    p.app_id = 0;
    assert_eq!(code(Engine::create(p)), ErrorCode::APP_ID_UNKNOWN);
    let mut p = profile();
    p.app_sign = Some("abc".into());
    assert_eq!(code(Engine::create(p)), ErrorCode::APP_SIGN_INVALID);
    let mut p = profile();
    p.app_sign = Some("zz".repeat(32));
    assert_eq!(code(Engine::create(p)), ErrorCode::APP_SIGN_INVALID);
    let mut p = profile();
    p.server = "http://127.0.0.1:1".into();
    assert_eq!(code(Engine::create(p)), ErrorCode::INVALID_PARAMETER);
    let mut p = profile();
    p.config.worker_threads = 0;
    assert_eq!(code(Engine::create(p)), ErrorCode::INVALID_PARAMETER);
    // The AppSign never shows in Debug output.
    let shown = format!("{:?}", profile());
    assert!(!shown.contains(SIGN) && shown.contains("redacted"), "{shown}");
}

#[test]
fn calls_check_ids_and_state() {
    let engine = Engine::create(profile()).unwrap();
    for r in [
        engine.start_publishing_stream("s"),
        engine.stop_publishing_stream(),
        engine.start_playing_stream("s"),
        engine.stop_playing_stream("s"),
        engine.logout_room("r"),
        engine.renew_token("r", "04abc"),
    ] {
        assert_eq!(code(r), ErrorCode::NOT_LOGGED_IN);
    }
    assert_eq!(
        code(engine.login_room("a b", user("u"), RoomConfig::default())),
        ErrorCode::ROOM_ID_INVALID_CHARACTER
    );
    assert_eq!(
        code(engine.login_room("", user("u"), RoomConfig::default())),
        ErrorCode::ROOM_ID_EMPTY
    );
    assert_eq!(
        code(engine.login_room(&"r".repeat(129), user("u"), RoomConfig::default())),
        ErrorCode::ROOM_ID_TOO_LONG
    );
    assert_eq!(code(UserId::new("a:b")), ErrorCode::USER_ID_INVALID_CHARACTER);

    engine.login_room("r", user("u"), RoomConfig::default()).unwrap();
    assert_eq!(
        code(engine.login_room("r", user("u"), RoomConfig::default())),
        ErrorCode::ALREADY_LOGGED_IN
    );
    assert_eq!(
        code(engine.login_room("other", user("u"), RoomConfig::default())),
        ErrorCode::ALREADY_LOGGED_IN
    );
    assert_eq!(
        code(engine.start_publishing_stream("a.b")),
        ErrorCode::STREAM_ID_INVALID_CHARACTER
    );
    assert_eq!(
        code(engine.start_publishing_stream("")),
        ErrorCode::STREAM_ID_EMPTY
    );
    assert_eq!(
        code(engine.start_playing_stream(&"s".repeat(257))),
        ErrorCode::STREAM_ID_TOO_LONG
    );
    // Calls while logging in are accepted and go out once logged in.
    engine.start_publishing_stream("mine").unwrap();
    engine.start_publishing_stream("mine").unwrap();
    assert_eq!(
        code(engine.start_publishing_stream("another")),
        ErrorCode::ALREADY_PUBLISHING
    );
    engine.start_playing_stream("theirs").unwrap();
    assert_eq!(code(engine.logout_room("other")), ErrorCode::NOT_LOGGED_IN);
    assert_eq!(code(engine.renew_token("r", "")), ErrorCode::INVALID_PARAMETER);
    engine.renew_token("r", "04abc").unwrap();
    engine.logout_room("r").unwrap();
    assert_eq!(
        code(engine.start_playing_stream("theirs")),
        ErrorCode::NOT_LOGGED_IN
    );
    engine.login_room("r", user("u"), RoomConfig::default()).unwrap();

    let handle = engine.handle();
    engine.destroy();
    assert_eq!(
        code(handle.login_room("x", user("u"), RoomConfig::default())),
        ErrorCode::ENGINE_NOT_CREATED
    );
    assert_eq!(
        code(handle.start_playing_stream("s")),
        ErrorCode::ENGINE_NOT_CREATED
    );
}

#[test]
fn a_token_only_engine_needs_a_token() {
    let mut p = profile();
    p.app_sign = None;
    let engine = Engine::create(p).unwrap();
    assert_eq!(
        code(engine.login_room("r", user("u"), RoomConfig::default())),
        ErrorCode::AUTHENTICATION_FAILED
    );
    let mut config = RoomConfig::default();
    config.token = Some("04whatever".into());
    engine.login_room("r", user("u"), config).unwrap();
}

struct Reasons(std::sync::Mutex<std::sync::mpsc::Sender<(RoomStateChangedReason, ErrorCode)>>);

impl EventHandler for Reasons {
    fn on_room_state_changed(&self, _: &str, reason: RoomStateChangedReason, code: ErrorCode, _: &str) {
        let _ = self.0.lock().unwrap().send((reason, code));
    }
}

#[test]
fn no_server_fails_the_login_with_connect_failed() {
    let mut p = profile();
    let mut c = EngineConfig::default();
    c.login_timeout = Duration::from_millis(800);
    p.config = c;
    let engine = Engine::create(p).unwrap();
    let (tx, rx) = channel();
    engine.set_event_handler(Arc::new(Reasons(tx.into())));
    engine.login_room("r", user("u"), RoomConfig::default()).unwrap();
    let wait = || rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(wait(), (RoomStateChangedReason::Logining, ErrorCode::OK));
    assert_eq!(
        wait(),
        (RoomStateChangedReason::LoginFailed, ErrorCode::CONNECT_FAILED)
    );
    // The failed login released the room: logging in again is allowed.
    engine.login_room("r", user("u"), RoomConfig::default()).unwrap();
    assert_eq!(wait(), (RoomStateChangedReason::Logining, ErrorCode::OK));
}

#[test]
fn usable_from_inside_a_tokio_runtime() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let engine = Engine::create(profile()).unwrap();
        let mut events = engine.events();
        engine.login_room("r", user("u"), RoomConfig::default()).unwrap();
        let first = tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .unwrap();
        assert!(
            matches!(
                first,
                Some(huddle::Event::RoomStateChanged {
                    reason: RoomStateChangedReason::Logining,
                    ..
                })
            ),
            "{first:?}"
        );
        engine.start_playing_stream("s").unwrap();
        // Destroying blocks briefly but must not panic inside a runtime.
        engine.destroy();
        // The stream ends with the engine (after the events before the end).
        while let Some(_e) = tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .unwrap()
        {}
    });
}

#[test]
fn audio_config_takes_presets_and_refuses_bad_values() {
    use huddle::{AudioConfig, AudioConfigPreset};
    let engine = Engine::create(profile()).unwrap();
    assert_eq!(engine.audio_config().bitrate, 48_000);
    engine
        .set_audio_config(AudioConfig::preset(AudioConfigPreset::HighQualityStereo))
        .unwrap();
    assert_eq!(engine.audio_config().bitrate, 192_000);
    for edit in [
        (|c: &mut AudioConfig| c.bitrate = 0) as fn(&mut AudioConfig),
        |c| c.bitrate = u32::MAX,
        |c| c.channels = 6,
        |c| c.loss_hint_percent = 200,
    ] {
        let mut bad = AudioConfig::default();
        edit(&mut bad);
        assert_eq!(code(engine.set_audio_config(bad)), ErrorCode::INVALID_PARAMETER);
    }
    // A refused config leaves the last good one.
    assert_eq!(engine.audio_config().bitrate, 192_000);
    assert!(engine.player_audio_stats("nobody").is_none());
    let handle = engine.handle();
    engine.destroy();
    assert_eq!(
        code(handle.set_audio_config(AudioConfig::default())),
        ErrorCode::ENGINE_NOT_CREATED
    );
}
