//! Connection breaks: a server that restarts, and one that stays away.

mod common;

use std::time::{Duration, Instant};

use common::*;
use huddle::{ErrorCode, PlayerState, PublisherState, RoomStateChangedReason as Reason, UpdateType};
use huddle_server::{BackgroundServer, ServerConfig};

#[test]
fn a_restarted_server_gets_everyone_back() {
    let server = server();
    let addr = server.addr();
    let (alice, mut ea) = logged_in(&server, "phoenix", "alice", notify());
    let (bob, mut eb) = logged_in(&server, "phoenix", "bob", notify());
    alice.start_publishing_stream("alice-cam").unwrap();
    ea.publisher("alice-cam", PublisherState::Publishing);
    bob.start_playing_stream("alice-cam").unwrap();
    eb.player("alice-cam", PlayerState::Playing);
    eb.stream(UpdateType::Add, "alice-cam");

    server.stop();
    for events in [&mut ea, &mut eb] {
        assert_eq!(events.room(Reason::Reconnecting), ErrorCode::TEMPORARY_BREAK);
    }
    assert_eq!(
        ea.publisher("alice-cam", PublisherState::PublishRequesting),
        ErrorCode::PUBLISH_TEMPORARY_BREAK
    );
    assert_eq!(
        eb.player("alice-cam", PlayerState::PlayRequesting),
        ErrorCode::PLAY_TEMPORARY_BREAK
    );

    // Same port, fresh memory: the sessions cannot be resumed, so both log in anew, Alice
    // publishes again and Bob plays again.
    let mut config = ServerConfig::for_tests(vec![app()]);
    config.listen = addr;
    let _server = BackgroundServer::start(config).expect("restart on the same port");
    for events in [&mut ea, &mut eb] {
        assert_eq!(events.room(Reason::Reconnected), ErrorCode::OK);
    }
    ea.publisher("alice-cam", PublisherState::Publishing);
    eb.player("alice-cam", PlayerState::Playing);
    eb.wait_until("bob to know alice-cam again", |seen| {
        known_streams(seen).contains("alice-cam")
    });
    // Bob is in the room for Alice again (she may have seen him leave if she came back first).
    ea.wait_until("alice to know bob again", |seen| {
        known_users(seen).contains("bob")
    });
}

#[test]
fn reconnecting_gives_up_after_the_budget() {
    let server = server();
    let mut p = profile(&server);
    p.config.reconnect_budget = Duration::from_secs(2);
    let (engine, mut events) = engine_with(p);
    engine.login_room("gone", user("alice"), notify()).unwrap();
    events.room(Reason::Logined);
    engine.start_publishing_stream("alice-cam").unwrap();
    events.publisher("alice-cam", PublisherState::Publishing);
    engine.start_playing_stream("nobody").unwrap();
    events.player("nobody", PlayerState::PlayRequesting);

    server.stop();
    events.room(Reason::Reconnecting);
    let broke = Instant::now();
    assert_eq!(events.room(Reason::ReconnectFailed), ErrorCode::RETRY_TIMEOUT);
    let took = broke.elapsed();
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_secs(4),
        "{took:?}"
    );
    assert_eq!(
        events.publisher("alice-cam", PublisherState::NoPublish),
        ErrorCode::RETRY_TIMEOUT
    );
    assert_eq!(
        events.player("nobody", PlayerState::NoPlay),
        ErrorCode::RETRY_TIMEOUT
    );
    assert_eq!(
        engine.start_publishing_stream("alice-cam").unwrap_err().code,
        ErrorCode::NOT_LOGGED_IN
    );
}

/// An address where nothing listens (connections are refused at once).
fn dead_server() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("ws://{addr}/ws")
}

#[test]
fn a_login_goes_past_an_unreachable_server_to_the_next() {
    let live = server();
    let mut p = profile(&live);
    p.fallback_servers = vec![p.server.clone()];
    p.server = dead_server();
    let (engine, mut events) = engine_with(p);
    engine.login_room("fallback", user("alice"), notify()).unwrap();
    assert_eq!(events.room(Reason::Logined), ErrorCode::OK);
    assert_eq!(live.stats().sessions, 1);
}

#[test]
fn a_stopped_server_hands_its_users_to_the_next() {
    let a = server();
    let b = server();
    // Alice knows both servers and starts on A; Bob is on B alone (the two servers share
    // nothing: Alice meets Bob only once she is on B).
    let mut p = profile(&a);
    p.fallback_servers = vec![b.ws_url()];
    let (alice, mut ea) = engine_with(p);
    alice.login_room("moving", user("alice"), notify()).unwrap();
    ea.room(Reason::Logined);
    alice.start_publishing_stream("alice-cam").unwrap();
    ea.publisher("alice-cam", PublisherState::Publishing);
    let (bob, mut eb) = logged_in(&b, "moving", "bob", notify());
    bob.start_playing_stream("alice-cam").unwrap();
    eb.player("alice-cam", PlayerState::PlayRequesting);

    a.stop();
    assert_eq!(ea.room(Reason::Reconnecting), ErrorCode::TEMPORARY_BREAK);
    // A refuses the retry on its own address, so the next goes to B: a fresh session there,
    // and Alice publishes again.
    assert_eq!(ea.room(Reason::Reconnected), ErrorCode::OK);
    ea.publisher("alice-cam", PublisherState::Publishing);
    assert_eq!(b.stats().sessions, 2);
    eb.stream(UpdateType::Add, "alice-cam");
    eb.player("alice-cam", PlayerState::Playing);
    ea.wait_until("alice to know bob", |seen| known_users(seen).contains("bob"));
}
