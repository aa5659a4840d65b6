//! Tokens over time, over real WebSockets on 127.0.0.1: the `token_will_expire` warning, renewal,
//! and the end of a session whose token expires unrenewed (`kicked` 1002056, its streams and user
//! deleted once for the others, nothing left behind). Tokens here live 3–4 s, so the 30 s warning
//! comes at once and the expiry within seconds; the waits are on messages, with timeouts.
//!
//! The signaling client is `tests/common/ws.rs`; the media test uses the str0m peers of
//! `tests/common/`.

mod common;

use std::time::Duration;

use common::ws::*;
use huddle_proto::{AppId, Auth, ClientMsg, ErrorCode, Login, RoomId, ServerMsg, UpdateType};
use huddle_server::{BackgroundServer, ServerConfig};
use huddle_token::Privileges;

fn server() -> BackgroundServer {
    server_with(|_| {})
}

fn server_with(f: impl FnOnce(&mut ServerConfig)) -> BackgroundServer {
    common::ws::server_with(|config| {
        // These clients send no heartbeats while they wait for an expiry.
        config.heartbeat = Duration::from_secs(10);
        config.session_timeout = Duration::from_secs(60);
        f(config);
    })
}

/// A token of [`APP`] for `user` that lives `secs` seconds from now.
fn lasting(user: &str, secs: i64) -> String {
    token_for(APP, user, secs, None)
}

/// The `token_will_expire` a session gets for a token expiring at `expire`, with at most
/// `max_remain` seconds left.
fn assert_warning(m: &ServerMsg, expire: i64, max_remain: i64) {
    match m {
        ServerMsg::TokenWillExpire {
            expire: e,
            remain_secs,
        } => {
            assert_eq!(*e, expire);
            assert!((0..=max_remain).contains(remain_secs), "{remain_secs}");
        }
        other => panic!("expected token_will_expire, got {other:?}"),
    }
}

#[tokio::test]
async fn an_unrenewed_token_warns_then_ends_the_session_leaving_nothing_behind() {
    let server = server();
    let mut w = Client::connect(&server).await;
    w.login("r1", "watcher", true).await;
    let mut p = Client::connect(&server).await;
    p.login("r2", "player", true).await;
    assert_ok(p.play("a-cam").await);
    assert_eq!(p.recv().await, play_update("a-cam", false));

    let mut a = Client::connect(&server).await;
    let ok = a.login_token("r1", "alice", lasting("alice", 3)).await;
    let expire = ok.token_expire.unwrap();
    // Less than 30 s left: the warning comes at once, after the login_ok.
    assert_warning(&a.recv().await, expire, 3);
    assert_ok(a.publish("a-cam").await);
    assert_ok(a.play("b-cam").await);
    assert_eq!(w.recv().await, users("r1", UpdateType::Add, &["alice"]));
    assert_eq!(
        w.recv().await,
        streams("r1", UpdateType::Add, &[("alice", "a-cam")])
    );
    assert_eq!(p.recv().await, play_update("a-cam", true));

    // At the expiry: kicked with 1002056, then the connection closes.
    let (msgs, end) = a.until_closed().await;
    let kicks: Vec<_> = msgs
        .iter()
        .filter(|m| matches!(m, ServerMsg::Kicked { .. }))
        .collect();
    assert_eq!(kicks.len(), 1, "{msgs:?}");
    assert!(
        matches!(kicks[0], ServerMsg::Kicked { code, .. } if *code == ErrorCode::KICKED_TOKEN_EXPIRED),
        "{msgs:?}"
    );
    assert_eq!(end, End::Close(1000));
    // The others see the stream and the user go, exactly once.
    assert_eq!(
        w.barrier().await,
        vec![
            streams("r1", UpdateType::Delete, &[("alice", "a-cam")]),
            users("r1", UpdateType::Delete, &["alice"]),
        ]
    );
    assert_eq!(p.barrier().await, vec![play_update("a-cam", false)]);
    let stats = server.stats();
    assert_eq!((stats.sessions, stats.streams), (2, 0));
    server.state().check_invariants().unwrap();
    let room = server
        .state()
        .room(AppId::new(APP).unwrap(), &RoomId::new("r1").unwrap())
        .unwrap();
    assert_eq!((room.users, room.streams), (vec![user("watcher")], vec![]));

    // The expired token no longer logs in; a fresh one does, and publishes the same ID again.
    let mut a = Client::connect(&server).await;
    let l = a.login_msg(APP, "r1", "alice", true);
    let expired = token_made_at(APP, "alice", expire - 2, 2);
    let reply = a
        .request(ClientMsg::Login(Login {
            auth: Auth::Token(expired),
            ..l.clone()
        }))
        .await;
    assert_eq!(code_of(&reply), ErrorCode::TOKEN_EXPIRED);
    a.login_token("r1", "alice", lasting("alice", 3600)).await;
    assert_ok(a.publish("a-cam").await);
    // A session whose token is far from its expiry gets no warning.
    assert_eq!(a.barrier().await, vec![]);
}

#[tokio::test]
async fn a_renewed_token_keeps_the_session_past_the_old_expiry() {
    let server = server();
    let mut w = Client::connect(&server).await;
    w.login("r1", "watcher", true).await;
    let mut a = Client::connect(&server).await;
    let ok = a.login_token("r1", "alice", lasting("alice", 3)).await;
    assert_warning(&a.recv().await, ok.token_expire.unwrap(), 3);
    assert_ok(a.publish("a-cam").await);

    // A renewal that itself expires soon is warned about in turn.
    let short = lasting("alice", 3);
    let short_expire = huddle_token::peek_expire(&short).unwrap();
    assert_ok(a.renew(short).await);
    assert_warning(&a.recv().await, short_expire, 3);
    // A long one: no warning, no kick, past both expiries.
    assert_ok(a.renew(lasting("alice", 3600)).await);
    let until = short_expire + 1;
    while now_secs() < until {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(a.barrier().await, vec![]);
    assert_ok(a.publish("a-cam2").await);
    // The watcher saw alice come and publish, and nothing go.
    assert_eq!(
        w.barrier().await,
        vec![
            users("r1", UpdateType::Add, &["alice"]),
            streams("r1", UpdateType::Add, &[("alice", "a-cam")]),
            streams("r1", UpdateType::Add, &[("alice", "a-cam2")]),
        ]
    );
    assert_eq!(server.stats().sessions, 2);
    server.state().check_invariants().unwrap();
}

#[tokio::test]
async fn a_bad_renewal_is_refused_with_its_code_and_changes_nothing() {
    let server = server_with(|c| {
        c.apps = vec![app(APP), app(OTHER_APP)];
    });
    let mut w = Client::connect(&server).await;
    w.login("r1", "watcher", true).await;
    let listed = Privileges {
        room_id: "r1".into(),
        publish: Some(true),
        stream_id_list: Some(vec!["a-cam".into()]),
        ..Default::default()
    };
    let mut a = Client::connect(&server).await;
    let ok = a
        .login_token("r1", "alice", token_for(APP, "alice", 3, Some(&listed)))
        .await;
    let expire = ok.token_expire.unwrap();
    assert_warning(&a.recv().await, expire, 3);
    assert_ok(a.publish("a-cam").await);
    assert_eq!(w.recv().await, users("r1", UpdateType::Add, &["alice"]));
    assert_eq!(
        w.recv().await,
        streams("r1", UpdateType::Add, &[("alice", "a-cam")])
    );

    let expired = token_made_at(APP, "alice", now_secs() - 100, 10);
    let mut tampered = lasting("alice", 3600).into_bytes();
    let i = tampered.len() / 2;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    let cbc = cbc_token(APP, "alice");
    let other_stream = Privileges {
        stream_id_list: Some(vec!["other".into()]),
        ..Default::default()
    };
    let cases = [
        (expired, ErrorCode::TOKEN_EXPIRED),
        (lasting("bob", 3600), ErrorCode::TOKEN_USER_ID_MISMATCH),
        (
            token_for(APP, "alice", 3600, Some(&room_only("r2"))),
            ErrorCode::TOKEN_ROOM_FORBIDDEN,
        ),
        (
            token_for(APP, "alice", 3600, Some(&no_login())),
            ErrorCode::TOKEN_ROOM_FORBIDDEN,
        ),
        // Another app's token does not decrypt with this app's secret.
        (
            token_for(OTHER_APP, "alice", 3600, None),
            ErrorCode::TOKEN_DECRYPT,
        ),
        (String::from_utf8(tampered).unwrap(), ErrorCode::TOKEN_DECRYPT),
        (cbc, ErrorCode::TOKEN_FORMAT),
        ("garbage".into(), ErrorCode::TOKEN_FORMAT),
        (String::new(), ErrorCode::TOKEN_FORMAT),
        // A token that would not allow what the session publishes now.
        (
            token_for(APP, "alice", 3600, Some(&no_publish())),
            ErrorCode::PUBLISH_FORBIDDEN,
        ),
        (
            token_for(APP, "alice", 3600, Some(&other_stream)),
            ErrorCode::PUBLISH_FORBIDDEN,
        ),
    ];
    for (t, expected) in cases {
        let reply = a.renew(t).await;
        assert_eq!(code_of(&reply), expected);
        // Nothing changed: the session publishes on, the others saw nothing.
        assert_eq!(w.barrier().await, vec![]);
        assert_eq!(server.stats().streams, 1);
    }
    // The old token's privileges still apply (b-cam is not in its list) and its expiry too: the
    // session ends at it, with exactly one Delete for its stream.
    assert_eq!(code_of(&a.publish("b-cam").await), ErrorCode::PUBLISH_FORBIDDEN);
    let (msgs, _) = a.until_closed().await;
    assert!(
        msgs.iter()
            .any(|m| matches!(m, ServerMsg::Kicked { code, .. } if *code == ErrorCode::KICKED_TOKEN_EXPIRED)),
        "{msgs:?}"
    );
    assert_eq!(
        w.barrier().await,
        vec![
            streams("r1", UpdateType::Delete, &[("alice", "a-cam")]),
            users("r1", UpdateType::Delete, &["alice"]),
        ]
    );
    server.state().check_invariants().unwrap();
}

#[tokio::test]
async fn a_detached_session_ends_at_its_token_expiry_and_cannot_resume() {
    // A grace period far longer than the token: the expiry ends the session first.
    let server = server_with(|c| c.grace = Duration::from_secs(30));
    let mut w = Client::connect(&server).await;
    w.login("r1", "watcher", true).await;
    let mut a = Client::connect(&server).await;
    let first = a.login_token("r1", "alice", lasting("alice", 3)).await;
    assert_ok(a.publish("a-cam").await);
    assert_eq!(w.recv().await, users("r1", UpdateType::Add, &["alice"]));
    assert_eq!(
        w.recv().await,
        streams("r1", UpdateType::Add, &[("alice", "a-cam")])
    );
    drop(a);
    // Detached, then ended at the expiry (long before the grace period is over).
    assert_eq!(
        w.recv().await,
        streams("r1", UpdateType::Delete, &[("alice", "a-cam")])
    );
    assert_eq!(w.recv().await, users("r1", UpdateType::Delete, &["alice"]));
    let stats = server.stats();
    assert_eq!((stats.sessions, stats.detached, stats.streams), (1, 0, 0));
    server.state().check_invariants().unwrap();

    // A resume with the expired token is refused; with a fresh one it is a new session.
    let mut a = Client::connect(&server).await;
    let mut l = Login {
        auth: Auth::Token(lasting("alice", 3600)),
        ..a.login_msg(APP, "r1", "alice", true)
    };
    l.resume = resume_of(&first);
    let stale = Login {
        auth: Auth::Token(token_made_at(APP, "alice", first.token_expire.unwrap() - 2, 2)),
        ..l.clone()
    };
    assert_eq!(
        code_of(&a.request(ClientMsg::Login(stale)).await),
        ErrorCode::TOKEN_EXPIRED
    );
    let ok = expect_login_ok(a.try_login(l).await);
    assert!(!ok.resumed);
    assert_eq!(w.recv().await, users("r1", UpdateType::Add, &["alice"]));
}

#[tokio::test]
async fn a_resume_with_a_new_token_takes_over_its_expiry() {
    let server = server_with(|c| c.grace = Duration::from_secs(30));
    let mut a = Client::connect(&server).await;
    let first = a.login_token("r1", "alice", lasting("alice", 3)).await;
    assert_warning(&a.recv().await, first.token_expire.unwrap(), 3);
    assert_ok(a.publish("a-cam").await);
    drop(a);
    let mut a = Client::connect(&server).await;
    let mut l = Login {
        auth: Auth::Token(lasting("alice", 3600)),
        ..a.login_msg(APP, "r1", "alice", true)
    };
    l.resume = resume_of(&first);
    let ok = expect_login_ok(a.try_login(l).await);
    assert!(ok.resumed);
    assert!(ok.token_expire.unwrap() > now_secs() + 3000);
    // Past the first token's expiry the session lives on.
    while now_secs() <= first.token_expire.unwrap() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(a.barrier().await, vec![]);
    assert_eq!(server.stats().streams, 1);
    // Sessions logged in with the AppSign have no token and never expire.
    let mut s = Client::connect(&server).await;
    let ok = s.login("r1", "signer", true).await;
    assert_eq!(ok.token_expire, None);
    assert_eq!(s.barrier().await, vec![]);
    server.state().check_invariants().unwrap();
}

#[tokio::test]
async fn the_media_connections_of_an_expired_session_close() {
    use huddle_proto::{MediaRole, PeerState};
    let server = common::server();
    // Alice logs in with the AppSign and renews with a token that expires in 4 s: a session that
    // took a token is bound by it.
    let mut alice = common::Client::login(&server, "alice").await;
    alice.publish("a-cam").await;
    let seq = alice.next_seq();
    let short = lasting("alice", 4);
    alice.ok(ClientMsg::RenewToken { seq, token: short }).await;
    let mut bob = common::Client::login(&server, "bob").await;
    assert!(bob.play("a-cam").await);
    let mut publisher = common::start_publisher(&mut alice, "a-cam").await;
    let mut player = common::start_player(&mut bob, "a-cam").await;
    common::connect(&mut [&mut publisher, &mut player]).await;
    alice.media_up("a-cam", MediaRole::Publish).await;
    bob.media_up("a-cam", MediaRole::Play).await;
    let opened = server.media_stats().pcs_opened;
    assert_eq!(opened, 2);

    // At the expiry: alice is kicked, bob's play connection closes (1004002) and the stream goes.
    let kicked = alice.wait_for(|m| matches!(m, ServerMsg::Kicked { .. })).await;
    assert!(
        matches!(kicked, ServerMsg::Kicked { code, .. } if code == ErrorCode::KICKED_TOKEN_EXPIRED),
        "{kicked:?}"
    );
    assert_eq!(
        bob.wait_media_state("a-cam", MediaRole::Play).await,
        (PeerState::Closed, ErrorCode::STREAM_NOT_FOUND)
    );
    assert!(!bob.wait_play_update("a-cam").await);
    // Both connections are closed at the server: nothing is left of alice.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while server.media_stats().pcs_closed < opened {
        assert!(std::time::Instant::now() < deadline, "{:?}", server.media_stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!((server.stats().sessions, server.stats().streams), (1, 0));
    server.state().check_invariants().unwrap();
}
