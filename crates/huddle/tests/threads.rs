//! The engine leaves no thread behind. Alone in its test binary, so that no other engine's
//! threads are counted.

mod common;

use common::*;
use huddle::{Engine, PlayerState, PublisherState, RoomConfig, RoomStateChangedReason};

/// The threads of this process whose name starts with the SDK's prefix (Linux).
fn sdk_threads() -> Vec<String> {
    let mut names = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let comm = task.unwrap().path().join("comm");
        if let Ok(name) = std::fs::read_to_string(comm) {
            let name = name.trim().to_string();
            if name.starts_with("huddle-sdk-") {
                names.push(name);
            }
        }
    }
    names.sort();
    names
}

#[test]
fn destroy_and_drop_join_every_thread() {
    let server = server();
    assert!(sdk_threads().is_empty(), "{:?}", sdk_threads());

    // destroy(), after a login with a publisher and a player.
    let (engine, mut events) = engine_with(profile(&server));
    engine
        .login_room("threads", user("t"), RoomConfig::default())
        .unwrap();
    events.room(RoomStateChangedReason::Logined);
    engine.start_publishing_stream("t-s").unwrap();
    events.publisher("t-s", PublisherState::Publishing);
    engine.start_playing_stream("t-s").unwrap();
    events.player("t-s", PlayerState::Playing);
    let running = sdk_threads();
    assert!(running.contains(&"huddle-sdk-evt".to_string()), "{running:?}");
    assert!(running.contains(&"huddle-sdk-eng".to_string()), "{running:?}");
    assert!(
        running.iter().any(|t| t.starts_with("huddle-sdk-rt-")),
        "{running:?}"
    );
    engine.destroy();
    assert!(sdk_threads().is_empty(), "left behind: {:?}", sdk_threads());
    // destroy logged out: the handler got the Logout before the end.
    events.room(RoomStateChangedReason::Logout);
    // ... confirmed by the server before destroy returned: no session left waiting for a resume.
    assert_eq!(server.stats().sessions, 0, "{:?}", server.stats());

    // Dropping, while a login is still in progress.
    let (engine, _events) = engine_with(profile(&server));
    engine
        .login_room("threads", user("t2"), RoomConfig::default())
        .unwrap();
    drop(engine);
    assert!(sdk_threads().is_empty(), "left behind: {:?}", sdk_threads());

    // An engine that never logged in.
    drop(Engine::create(profile(&server)).unwrap());
    assert!(sdk_threads().is_empty(), "left behind: {:?}", sdk_threads());
}
