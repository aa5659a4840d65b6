//! Rooms, users and streams against a real server.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use huddle::{
    Engine, EngineHandle, ErrorCode, Event, EventHandler, PlayerState, PublisherState, RoomConfig, RoomState,
    RoomStateChangedReason, UpdateType,
};

#[test]
fn three_engines_see_each_others_users_and_streams() {
    let server = server();
    let (a, mut ea) = logged_in(&server, "trio", "alice", notify());
    let (b, mut eb) = logged_in(&server, "trio", "bob", notify());
    ea.user(UpdateType::Add, "bob");
    eb.user(UpdateType::Add, "alice"); // in bob's login: the users already there
    // Carol does not opt in to user events.
    let (c, mut ec) = logged_in(&server, "trio", "carol", RoomConfig::default());
    ea.user(UpdateType::Add, "carol");
    eb.user(UpdateType::Add, "carol");

    for (engine, events, id) in [
        (&a, &mut ea, "alice-s"),
        (&b, &mut eb, "bob-s"),
        (&c, &mut ec, "carol-s"),
    ] {
        engine.start_publishing_stream(id).unwrap();
        assert_eq!(
            events.publisher(id, PublisherState::PublishRequesting),
            ErrorCode::OK
        );
        assert_eq!(events.publisher(id, PublisherState::Publishing), ErrorCode::OK);
    }
    for (events, others) in [
        (&mut ea, ["bob-s", "carol-s"]),
        (&mut eb, ["alice-s", "carol-s"]),
        (&mut ec, ["alice-s", "bob-s"]),
    ] {
        for s in others {
            events.stream(UpdateType::Add, s);
        }
    }

    c.logout_room("trio").unwrap();
    assert_eq!(ec.room(RoomStateChangedReason::Logout), ErrorCode::OK);
    assert_eq!(ec.publisher("carol-s", PublisherState::NoPublish), ErrorCode::OK);
    for events in [&mut ea, &mut eb] {
        events.stream(UpdateType::Delete, "carol-s");
        events.user(UpdateType::Delete, "carol");
    }

    // Nobody reported a stream of its own, and Carol never got a user event.
    for (events, own) in [(&mut ea, "alice-s"), (&mut eb, "bob-s"), (&mut ec, "carol-s")] {
        events.drain();
        assert!(
            !events
                .seen
                .iter()
                .any(|e| matches!(e, Event::RoomStreamUpdate { streams, .. }
            if streams.iter().any(|s| s.stream_id.as_str() == own)))
        );
    }
    assert!(ec.user_updates().is_empty(), "{:?}", ec.user_updates());
    // Each state change came with its state update.
    let states: Vec<RoomState> = ec
        .seen
        .iter()
        .filter_map(|e| match e {
            Event::RoomStateUpdate { state, .. } => Some(*state),
            _ => None,
        })
        .collect();
    assert_eq!(
        states,
        [
            RoomState::Connecting,
            RoomState::Connected,
            RoomState::Disconnected
        ]
    );
    drop((a, b, c));
}

#[test]
fn a_taken_stream_id_is_refused() {
    let server = server();
    let (a, mut ea) = logged_in(&server, "dup", "alice", RoomConfig::default());
    let (b, mut eb) = logged_in(&server, "dup2", "bob", RoomConfig::default());
    a.start_publishing_stream("same").unwrap();
    ea.publisher("same", PublisherState::Publishing);
    b.start_publishing_stream("same").unwrap();
    assert_eq!(
        eb.publisher("same", PublisherState::NoPublish),
        ErrorCode::STREAM_ID_EXISTS
    );
    // The refusal released the publisher: another ID goes.
    b.start_publishing_stream("other").unwrap();
    eb.publisher("other", PublisherState::Publishing);
}

#[test]
fn a_full_room_refuses_the_login() {
    let server = server();
    let mut config = RoomConfig::default();
    config.max_member_count = 1;
    let (_a, _) = logged_in(&server, "small", "alice", config);
    let (b, mut eb) = engine_with(profile(&server));
    b.login_room("small", user("bob"), RoomConfig::default()).unwrap();
    assert_eq!(eb.room(RoomStateChangedReason::LoginFailed), ErrorCode::ROOM_FULL);
}

#[test]
fn a_second_login_of_the_same_user_kicks_the_first() {
    let server = server();
    let (first, mut e1) = logged_in(&server, "kick", "alice", RoomConfig::default());
    first.start_publishing_stream("alice-1").unwrap();
    e1.publisher("alice-1", PublisherState::Publishing);
    let (second, mut e2) = logged_in(&server, "kick", "alice", RoomConfig::default());
    e1.kicked_out(ErrorCode::KICKED_DUPLICATE_LOGIN, "alice-1");
    // Kicked out is final: the room is released at once, and the engine does not come back (it
    // would kick the second login out in turn).
    assert_eq!(
        first.start_publishing_stream("x").unwrap_err().code,
        ErrorCode::NOT_LOGGED_IN
    );
    second.start_publishing_stream("alice-2").unwrap();
    e2.publisher("alice-2", PublisherState::Publishing);
    e1.drain();
    let after_kick: Vec<&Event> = e1
        .seen
        .iter()
        .skip_while(|e| {
            !matches!(
                e,
                Event::RoomStateChanged {
                    reason: RoomStateChangedReason::KickOut,
                    ..
                }
            )
        })
        .filter(|e| matches!(e, Event::RoomStateChanged { .. } | Event::RoomStateUpdate { .. }))
        .collect();
    assert!(
        matches!(
            after_kick[..],
            [
                _,
                Event::RoomStateUpdate {
                    state: RoomState::Disconnected,
                    ..
                }
            ]
        ),
        "{after_kick:?}"
    );
    assert!(
        !e2.drain()
            .iter()
            .any(|e| matches!(e, Event::RoomStateChanged { .. }))
    );
}

#[test]
fn a_wrong_app_sign_is_refused() {
    let server = server();
    let mut p = profile(&server);
    p.app_sign = Some("ee".repeat(32));
    let (engine, mut events) = engine_with(p);
    engine.login_room("r", user("u"), RoomConfig::default()).unwrap();
    assert_eq!(
        events.room(RoomStateChangedReason::LoginFailed),
        ErrorCode::APP_SIGN_INCORRECT
    );
}

#[test]
fn an_unknown_app_id_is_refused() {
    let server = server();
    let mut p = profile(&server);
    p.app_id = APP_ID + 1;
    let (engine, mut events) = engine_with(p);
    engine.login_room("r", user("u"), RoomConfig::default()).unwrap();
    assert_eq!(
        events.room(RoomStateChangedReason::LoginFailed),
        ErrorCode::APP_ID_UNKNOWN
    );
}

fn token(user_id: &str, ctime_offset: i64, secs: i64) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    huddle_token::TokenBuilder::new(APP_ID, user_id, app().server_secret.as_str())
        .ctime(now + ctime_offset)
        .effective_secs(secs)
        .build()
        .unwrap()
}

#[test]
fn token_logins_and_expiry() {
    let server = server();
    let mut p = profile(&server);
    p.app_sign = None;
    p.config.token_warning = Duration::from_secs(3600);
    let (engine, mut events) = engine_with(p);
    let mut config = RoomConfig::default();
    config.token = Some(token("tok", 0, 3000));
    engine.login_room("tokens", user("tok"), config).unwrap();
    events.room(RoomStateChangedReason::Logined);
    // Within the warning window at once: the app is told how long is left.
    match events.wait("token warning", |e| {
        matches!(e, Event::RoomTokenWillExpire { .. })
    }) {
        Event::RoomTokenWillExpire { remain_secs, .. } => assert!((2990..=3000).contains(&remain_secs)),
        _ => unreachable!(),
    }
    // Renewing is accepted by the API; a refusal by the server would come as a debug error.
    engine.renew_token("tokens", &token("tok", 0, 3500)).unwrap();
    match events.wait("token warning after renewal", |e| {
        matches!(e, Event::RoomTokenWillExpire { .. })
    }) {
        Event::RoomTokenWillExpire { remain_secs, .. } => assert!((3490..=3500).contains(&remain_secs)),
        _ => unreachable!(),
    }
    engine.logout_room("tokens").unwrap();
    events.room(RoomStateChangedReason::Logout);

    let mut config = RoomConfig::default();
    config.token = Some(token("tok", -100, 10));
    engine.login_room("tokens", user("tok"), config).unwrap();
    assert_eq!(
        events.room(RoomStateChangedReason::LoginFailed),
        ErrorCode::TOKEN_EXPIRED
    );
}

#[test]
fn a_player_waits_for_its_stream() {
    let server = server();
    let (viewer, mut ev) = logged_in(&server, "late", "viewer", RoomConfig::default());
    viewer.start_playing_stream("later").unwrap();
    assert_eq!(ev.player("later", PlayerState::PlayRequesting), ErrorCode::OK);
    let (host, mut eh) = logged_in(&server, "late", "host", RoomConfig::default());
    host.start_publishing_stream("later").unwrap();
    eh.publisher("later", PublisherState::Publishing);
    ev.player("later", PlayerState::Playing);
    host.stop_publishing_stream().unwrap();
    eh.publisher("later", PublisherState::NoPublish);
    ev.player("later", PlayerState::PlayRequesting);
    // And back when it is published again.
    host.start_publishing_stream("later").unwrap();
    ev.player("later", PlayerState::Playing);
    viewer.stop_playing_stream("later").unwrap();
    assert_eq!(ev.player("later", PlayerState::NoPlay), ErrorCode::OK);
}

/// A handler that drives the engine from inside its callbacks.
struct Reentrant {
    engine: Mutex<Option<EngineHandle>>,
    inner: Arc<Recorder>,
}

impl EventHandler for Reentrant {
    fn on_event(&self, event: &Event) {
        // The callbacks below first (they drive the engine), then the recorder.
        event.dispatch(self);
        self.inner.on_event(event);
    }
    fn on_room_state_changed(&self, _: &str, reason: RoomStateChangedReason, _: ErrorCode, _: &str) {
        if reason == RoomStateChangedReason::Logined {
            let engine = self.engine.lock().unwrap().clone().unwrap();
            engine.start_publishing_stream("self-s").unwrap();
            engine.start_playing_stream("self-s").unwrap();
        }
    }
    fn on_publisher_state_update(&self, _: &str, state: PublisherState, _: ErrorCode, _: &str) {
        if state == PublisherState::Publishing {
            let engine = self.engine.lock().unwrap().clone().unwrap();
            engine.stop_publishing_stream().unwrap();
            engine.logout_room("reentry").unwrap();
            // Logging in again from the handler works at once.
            engine
                .login_room("reentry", user("me"), RoomConfig::default())
                .unwrap();
        }
    }
}

#[test]
fn handlers_may_call_the_engine() {
    let server = server();
    let engine = Engine::create(profile(&server)).unwrap();
    let (inner, mut events) = Recorder::new();
    let handler = Arc::new(Reentrant {
        engine: Mutex::new(Some(engine.handle())),
        inner,
    });
    engine.set_event_handler(handler.clone());
    engine
        .login_room("reentry", user("me"), RoomConfig::default())
        .unwrap();
    events.room(RoomStateChangedReason::Logined);
    events.publisher("self-s", PublisherState::Publishing);
    // The handler stopped, logged out and logged in again.
    events.publisher("self-s", PublisherState::NoPublish);
    events.room(RoomStateChangedReason::Logout);
    events.room(RoomStateChangedReason::Logined);
    // A handle does not keep the engine alive, and fails cleanly once it is gone.
    let handle = handler.engine.lock().unwrap().take().unwrap();
    engine.destroy();
    assert_eq!(
        handle.stop_publishing_stream().unwrap_err().code,
        ErrorCode::ENGINE_NOT_CREATED
    );
}

#[test]
fn the_event_stream_sees_what_the_handler_sees() {
    let server = server();
    let (engine, mut events) = engine_with(profile(&server));
    let mut stream = engine.events();
    engine
        .login_room("streamed", user("s"), RoomConfig::default())
        .unwrap();
    events.room(RoomStateChangedReason::Logined);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let first_three: Vec<Event> = rt.block_on(async {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(tokio::time::timeout(WAIT, stream.recv()).await.unwrap().unwrap());
        }
        v
    });
    assert_eq!(first_three, events.seen[..3]);
    engine.destroy();
    assert!(
        rt.block_on(async { tokio::time::timeout(WAIT, stream.recv()).await.unwrap() })
            .is_some_and(|e| matches!(e, Event::RoomStateUpdate { .. }))
    );
}
