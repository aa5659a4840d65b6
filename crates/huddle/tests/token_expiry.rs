//! Tokens over time through the SDK against a real server: `on_room_token_will_expire`, a
//! `renew_token` that keeps the room, a refused renewal that harms nothing, and a token left to
//! expire, which ends the room with `KickOut` 1002056 (`docs/protocol.md`). Tokens live 4 s, so
//! the 30 s warning comes at once.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use huddle::{ErrorCode, Event, PublisherState, RoomConfig, RoomStateChangedReason, UpdateType};

fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn token(user_id: &str, secs: i64) -> String {
    huddle_token::TokenBuilder::new(APP_ID, user_id, app().server_secret.as_str())
        .effective_secs(secs)
        .build()
        .unwrap()
}

/// A token-only engine logged in to `room` as `user_id` with a token living `secs` seconds;
/// returns the token's expiry too.
fn token_login(
    server: &huddle_server::BackgroundServer,
    room: &str,
    user_id: &str,
    secs: i64,
) -> (huddle::Engine, Events, i64) {
    let mut p = profile(server);
    p.app_sign = None;
    let (engine, mut events) = engine_with(p);
    let t = token(user_id, secs);
    let expire = huddle_token::peek_expire(&t).unwrap();
    let mut config = RoomConfig::default();
    config.token = Some(t);
    engine.login_room(room, user(user_id), config).unwrap();
    assert_eq!(events.room(RoomStateChangedReason::Logined), ErrorCode::OK);
    (engine, events, expire)
}

fn warning(events: &mut Events) -> i64 {
    match events.wait("token warning", |e| {
        matches!(e, Event::RoomTokenWillExpire { .. })
    }) {
        Event::RoomTokenWillExpire { remain_secs, .. } => remain_secs,
        _ => unreachable!(),
    }
}

/// Asserts that no event received so far matches `pred`.
fn assert_none_yet(events: &mut Events, pred: impl Fn(&Event) -> bool) {
    events.drain();
    assert!(!events.seen.iter().any(pred), "{:#?}", events.seen);
}

#[test]
fn an_unrenewed_token_ends_the_room_with_1002056() {
    let server = server();
    let (_watcher, mut ew) = logged_in(&server, "expiring", "watcher", notify());
    let (alice, mut ea, _) = token_login(&server, "expiring", "alice", 4);
    assert!((0..=4).contains(&warning(&mut ea)));
    alice.start_publishing_stream("alice-cam").unwrap();
    ea.publisher("alice-cam", PublisherState::Publishing);
    ew.stream(UpdateType::Add, "alice-cam");

    // Not renewed: the server ends the session at the expiry, the app hears why.
    ea.kicked_out(ErrorCode::KICKED_TOKEN_EXPIRED, "alice-cam");
    // The others see the stream and the user go once.
    ew.stream(UpdateType::Delete, "alice-cam");
    ew.user(UpdateType::Delete, "alice");
    assert_eq!(server.stats().sessions, 1);
    assert_eq!(server.stats().streams, 0);
    // The room is over for the engine: a call for it is refused, a new login works.
    assert_eq!(
        alice
            .renew_token("expiring", &token("alice", 3600))
            .unwrap_err()
            .code,
        ErrorCode::NOT_LOGGED_IN
    );
    let mut config = RoomConfig::default();
    config.token = Some(token("alice", 3600));
    alice.login_room("expiring", user("alice"), config).unwrap();
    assert_eq!(ea.room(RoomStateChangedReason::Logined), ErrorCode::OK);
    let deletes = ew
        .seen
        .iter()
        .filter(|e| {
            matches!(
                e,
                Event::RoomStreamUpdate {
                    update_type: UpdateType::Delete,
                    ..
                }
            )
        })
        .count();
    assert_eq!(deletes, 1);
}

#[test]
fn renew_token_keeps_the_room_and_a_bad_renewal_harms_nothing() {
    let server = server();
    let (_watcher, mut ew) = logged_in(&server, "renewing", "watcher", notify());
    let (alice, mut ea, expire) = token_login(&server, "renewing", "alice", 4);
    assert!((0..=4).contains(&warning(&mut ea)));
    alice.start_publishing_stream("alice-cam").unwrap();
    ea.publisher("alice-cam", PublisherState::Publishing);

    // Only the logged-in room can be renewed.
    assert_eq!(
        alice
            .renew_token("elsewhere", &token("alice", 3600))
            .unwrap_err()
            .code,
        ErrorCode::NOT_LOGGED_IN
    );
    // A token of another user is refused by the server (reported, the room goes on).
    alice.renew_token("renewing", &token("mallory", 3600)).unwrap();
    match ea.wait("refused renewal", |e| matches!(e, Event::DebugError { .. })) {
        Event::DebugError {
            error_code,
            func_name,
            ..
        } => {
            assert_eq!(error_code, ErrorCode::TOKEN_USER_ID_MISMATCH);
            assert_eq!(func_name, "renew_token");
        }
        _ => unreachable!(),
    }
    // A good one in time keeps the room past the old expiry.
    alice.renew_token("renewing", &token("alice", 3600)).unwrap();
    while now_secs() <= expire + 1 {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_none_yet(&mut ea, |e| {
        matches!(
            e,
            Event::RoomStateChanged {
                reason: RoomStateChangedReason::KickOut,
                ..
            }
        )
    });
    assert_eq!(server.stats().streams, 1);
    assert_none_yet(&mut ew, |e| {
        matches!(
            e,
            Event::RoomStreamUpdate {
                update_type: UpdateType::Delete,
                ..
            }
        )
    });
    alice.logout_room("renewing").unwrap();
    ea.room(RoomStateChangedReason::Logout);
}
