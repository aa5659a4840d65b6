//! End-to-end signaling tests over real WebSockets on 127.0.0.1, with the raw client of
//! `tests/common/ws.rs` (tokio-tungstenite). Waiting is done on messages with timeouts, not with
//! fixed sleeps; what a session did *not* get is proven with [`Client::barrier`].

mod common;

use std::time::{Duration, Instant};

use common::ws::*;
use futures_util::SinkExt;
use huddle_proto::{AppId, Auth, ClientMsg, ErrorCode, Login, RoomId, ServerMsg, UpdateType};
use huddle_token::Privileges;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn three_users_see_each_other() {
    let server = server();
    let mut a = Client::connect(&server).await;
    let ok = a.login("r1", "alice", true).await;
    assert!(!ok.resumed && ok.users.is_empty() && ok.streams.is_empty());
    assert_eq!(
        (ok.heartbeat_ms, ok.session_timeout_ms, ok.grace_ms),
        (500, 2000, 300)
    );
    assert_ok(a.publish("a-cam").await);

    let mut b = Client::connect(&server).await;
    let ok = b.login("r1", "bob", false).await;
    assert!(ok.users.is_empty(), "bob did not opt in to users");
    assert_eq!(
        ok.streams,
        vec![info("alice", "a-cam")],
        "existing streams come in login_ok"
    );
    assert_eq!(a.recv().await, users("r1", UpdateType::Add, &["bob"]));

    let mut c = Client::connect(&server).await;
    let ok = c.login("r1", "carol", true).await;
    assert_eq!(ok.users, vec![user("alice"), user("bob")]);
    assert_eq!(ok.streams, vec![info("alice", "a-cam")]);
    assert_eq!(a.recv().await, users("r1", UpdateType::Add, &["carol"]));
    assert_eq!(b.barrier().await, vec![], "bob gets no user_update");

    assert_ok(b.publish("b-cam").await);
    assert_eq!(
        a.recv().await,
        streams("r1", UpdateType::Add, &[("bob", "b-cam")])
    );
    assert_eq!(
        c.recv().await,
        streams("r1", UpdateType::Add, &[("bob", "b-cam")])
    );
    assert_eq!(b.barrier().await, vec![], "the publisher gets no stream_update");

    // Someone in another room sees nothing.
    let mut d = Client::connect(&server).await;
    let ok = d.login("r2", "dave", true).await;
    assert!(ok.users.is_empty() && ok.streams.is_empty());
    assert_ok(a.unpublish("a-cam").await);
    assert_eq!(
        b.recv().await,
        streams("r1", UpdateType::Delete, &[("alice", "a-cam")])
    );
    assert_eq!(d.barrier().await, vec![]);
    assert_eq!(server.stats().sessions, 4);
}

#[tokio::test]
async fn stream_ids_are_unique_per_app() {
    let server = server();
    let mut a = Client::connect(&server).await;
    a.login("r1", "alice", false).await;
    assert_ok(a.publish("s1").await);
    assert_ok(a.publish("s1").await); // idempotent
    let mut b = Client::connect(&server).await;
    b.login("r2", "bob", false).await;
    assert_eq!(code_of(&b.publish("s1").await), ErrorCode::STREAM_ID_EXISTS);
    assert_eq!(code_of(&b.unpublish("s1").await), ErrorCode::STREAM_NOT_FOUND);
    let mut o = Client::connect(&server).await;
    let l = o.login_msg(OTHER_APP, "r1", "alice", false);
    expect_login_ok(o.try_login(l).await);
    assert_ok(o.publish("s1").await);
    // Bad IDs get their own codes, and the session goes on.
    b.send_raw(r#"{"type":"publish","seq":5,"stream_id":"a b"}"#.into())
        .await;
    assert_eq!(code_of(&b.recv().await), ErrorCode::STREAM_ID_INVALID_CHARACTER);
    assert_ok(b.publish("s2").await);
}

#[tokio::test]
async fn room_full() {
    let server = server();
    let mut a = Client::connect(&server).await;
    let mut l = a.login_msg(APP, "small", "u1", false);
    l.max_member_count = 2;
    expect_login_ok(a.try_login(l).await);
    let mut b = Client::connect(&server).await;
    b.login("small", "u2", false).await;
    let mut c = Client::connect(&server).await;
    let l = c.login_msg(APP, "small", "u3", false);
    assert_eq!(code_of(&c.try_login(l).await), ErrorCode::ROOM_FULL);
    // The refused connection may log in elsewhere.
    c.login("big", "u3", false).await;
}

#[tokio::test]
async fn duplicate_login_kicks_the_older_session() {
    let server = server();
    let mut w = Client::connect(&server).await;
    w.login("r1", "watcher", true).await;
    let mut old = Client::connect(&server).await;
    old.login("r1", "alice", true).await;
    assert_eq!(w.recv().await, users("r1", UpdateType::Add, &["alice"]));
    assert_ok(old.publish("a-cam").await);
    assert_eq!(
        w.recv().await,
        streams("r1", UpdateType::Add, &[("alice", "a-cam")])
    );

    let mut new = Client::connect(&server).await;
    let ok = new.login("r1", "alice", true).await;
    assert_eq!(ok.users, vec![user("watcher")]);
    assert!(ok.streams.is_empty());
    let (msgs, end) = old.until_closed().await;
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert!(matches!(&msgs[0], ServerMsg::Kicked { code, .. } if *code == ErrorCode::KICKED_DUPLICATE_LOGIN));
    assert_eq!(end, End::Close(1000));
    // The watcher sees the stream go but no user Delete/Add.
    assert_eq!(
        w.barrier().await,
        vec![streams("r1", UpdateType::Delete, &[("alice", "a-cam")])]
    );
    assert_eq!(server.stats().sessions, 2);
    assert_ok(new.publish("a-cam").await);
}

#[tokio::test]
async fn login_errors() {
    let server = server();
    let mut c = Client::connect(&server).await;
    let room = RoomId::new("r1").unwrap();
    let base = c.login_msg(APP, "r1", "alice", false);
    let with = |auth: Auth, app_id: u32| Login {
        auth,
        app_id: AppId::new(app_id).unwrap(),
        ..base.clone()
    };
    let expired = token_made_at(APP, "alice", now_secs() - 7200, 3600);
    let mut tampered = token(APP, "alice", None).into_bytes();
    let i = tampered.len() / 2;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    let cases = [
        (
            with(Auth::Sign("00".repeat(32)), APP),
            ErrorCode::APP_SIGN_INCORRECT,
        ),
        (with(base.auth.clone(), 99), ErrorCode::APP_ID_UNKNOWN),
        (with(Auth::Token(expired), APP), ErrorCode::TOKEN_EXPIRED),
        (
            with(Auth::Token(String::from_utf8(tampered).unwrap()), APP),
            ErrorCode::TOKEN_DECRYPT,
        ),
        (
            with(Auth::Token(token(APP, "bob", None)), APP),
            ErrorCode::TOKEN_USER_ID_MISMATCH,
        ),
        (
            with(Auth::Token(token(APP, "alice", Some(&room_only("r2")))), APP),
            ErrorCode::TOKEN_ROOM_FORBIDDEN,
        ),
        (
            with(Auth::Token(token(APP, "alice", Some(&no_login()))), APP),
            ErrorCode::TOKEN_ROOM_FORBIDDEN,
        ),
        (with(Auth::Token("garbage".into()), APP), ErrorCode::TOKEN_FORMAT),
        (
            Login {
                protocol: 99,
                ..base.clone()
            },
            ErrorCode::PROTOCOL_VERSION,
        ),
    ];
    for (login, expected) in cases {
        let reply = c.try_login(login.clone()).await;
        assert_eq!(code_of(&reply), expected, "{login:?}");
    }
    // AppID 0 and bad IDs are refused by the decoder with their own codes.
    c.send_raw(r#"{"type":"login","seq":7,"app_id":0}"#.into()).await;
    assert_eq!(
        c.recv().await,
        ServerMsg::Error {
            seq: Some(7),
            code: ErrorCode::APP_ID_UNKNOWN,
            message: "the AppID must not be zero".into()
        }
    );
    // The connection is still usable: a correct login now succeeds, a token login too.
    let ok = expect_login_ok(
        c.try_login(Login {
            seq: 50,
            ..base.clone()
        })
        .await,
    );
    assert_eq!(ok.room_id, room);
    assert_eq!(ok.token_expire, None);
    // Logging in twice on one connection is refused.
    let again = c.try_login(Login { seq: 51, ..base }).await;
    assert_eq!(code_of(&again), ErrorCode::ALREADY_LOGGED_IN);
    let mut t = Client::connect(&server).await;
    let mut l = t.login_msg(APP, "r1", "tom", false);
    l.auth = Auth::Token(token(APP, "tom", Some(&room_only("r1"))));
    let ok = expect_login_ok(t.try_login(l).await);
    assert!(ok.token_expire.unwrap() > now_secs());
}

#[tokio::test]
async fn publish_privileges_of_the_token() {
    let server = server();
    let mut c = Client::connect(&server).await;
    let mut l = c.login_msg(APP, "r1", "alice", false);
    l.auth = Auth::Token(token(APP, "alice", Some(&no_publish())));
    expect_login_ok(c.try_login(l).await);
    assert_eq!(code_of(&c.publish("s1").await), ErrorCode::PUBLISH_FORBIDDEN);

    let mut d = Client::connect(&server).await;
    let mut l = d.login_msg(APP, "r1", "bob", false);
    let listed = Privileges {
        publish: Some(true),
        stream_id_list: Some(vec!["b1".into()]),
        ..Default::default()
    };
    l.auth = Auth::Token(token(APP, "bob", Some(&listed)));
    expect_login_ok(d.try_login(l).await);
    assert_eq!(code_of(&d.publish("b2").await), ErrorCode::PUBLISH_FORBIDDEN);
    assert_ok(d.publish("b1").await);

    // Renewing the token replaces the privileges; a bad token is refused and changes nothing.
    let reply = c.renew(token(APP, "bob", None)).await;
    assert_eq!(code_of(&reply), ErrorCode::TOKEN_USER_ID_MISMATCH);
    assert_eq!(code_of(&c.publish("s1").await), ErrorCode::PUBLISH_FORBIDDEN);
    assert_ok(c.renew(token(APP, "alice", None)).await);
    assert_ok(c.publish("s1").await);
}

#[tokio::test]
async fn dropped_connection_keeps_the_session_for_the_grace_period() {
    let server = server();
    let mut w = Client::connect(&server).await;
    w.login("r1", "watcher", true).await;
    let mut p = Client::connect(&server).await;
    p.login("r2", "player", false).await;
    assert_ok(p.play("a-cam").await);
    assert_eq!(p.recv().await, play_update("a-cam", false));

    let mut a = Client::connect(&server).await;
    a.login("r1", "alice", true).await;
    assert_ok(a.publish("a-cam").await);
    assert_eq!(w.recv().await, users("r1", UpdateType::Add, &["alice"]));
    assert_eq!(
        w.recv().await,
        streams("r1", UpdateType::Add, &[("alice", "a-cam")])
    );
    assert_eq!(p.recv().await, play_update("a-cam", true));

    // The TCP connection goes away without logout or close frame.
    let dropped = Instant::now();
    drop(a);
    // During grace the others still see alice and her stream.
    let mut n = Client::connect(&server).await;
    let ok = n.login("r1", "newcomer", true).await;
    assert_eq!(ok.users, vec![user("alice"), user("watcher")]);
    assert_eq!(ok.streams, vec![info("alice", "a-cam")]);
    assert_eq!(w.recv().await, users("r1", UpdateType::Add, &["newcomer"]));
    // Then, after the grace period (300 ms), the stream and the user go.
    assert_eq!(
        w.recv().await,
        streams("r1", UpdateType::Delete, &[("alice", "a-cam")])
    );
    assert!(
        dropped.elapsed() >= Duration::from_millis(250),
        "{:?}",
        dropped.elapsed()
    );
    assert_eq!(w.recv().await, users("r1", UpdateType::Delete, &["alice"]));
    assert_eq!(
        n.recv().await,
        streams("r1", UpdateType::Delete, &[("alice", "a-cam")])
    );
    assert_eq!(n.recv().await, users("r1", UpdateType::Delete, &["alice"]));
    assert_eq!(p.recv().await, play_update("a-cam", false));
    assert_eq!(server.stats().sessions, 3);
}

#[tokio::test]
async fn resume_within_grace_is_invisible_to_the_others() {
    let server = server();
    let mut w = Client::connect(&server).await;
    w.login("r1", "watcher", true).await;
    let mut a = Client::connect(&server).await;
    let first = a.login("r1", "alice", false).await;
    assert_ok(a.publish("a-cam").await);
    assert_ok(a.play("later").await);
    assert_eq!(a.recv().await, play_update("later", false));
    assert_eq!(w.recv().await, users("r1", UpdateType::Add, &["alice"]));
    assert_eq!(
        w.recv().await,
        streams("r1", UpdateType::Add, &[("alice", "a-cam")])
    );
    drop(a);

    // While alice is away, the stream she plays appears.
    let mut b = Client::connect(&server).await;
    b.login("r2", "bob", false).await;
    assert_ok(b.publish("later").await);

    let mut a = Client::connect(&server).await;
    let mut l = a.login_msg(APP, "r1", "alice", true);
    l.resume = resume_of(&first);
    let ok = expect_login_ok(a.try_login(l).await);
    assert!(ok.resumed);
    assert_eq!(ok.session_id, first.session_id);
    assert_eq!(ok.users, vec![user("watcher")]);
    assert_eq!(ok.streams, vec![info("alice", "a-cam")]);
    // The state of the streams it plays follows the login_ok.
    assert_eq!(a.recv().await, play_update("later", true));
    // Well past the grace period, the others have still seen nothing, and the session lives.
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(w.barrier().await, vec![]);
    assert_eq!(a.barrier().await, vec![]);
    assert_eq!(server.stats().sessions, 3);
    assert_eq!(server.stats().detached, 0);
    assert_ok(a.unpublish("a-cam").await);
    assert_eq!(
        w.recv().await,
        streams("r1", UpdateType::Delete, &[("alice", "a-cam")])
    );
}

#[tokio::test]
async fn resume_replaces_a_half_open_connection() {
    let server = server();
    let mut a = Client::connect(&server).await;
    let first = a.login("r1", "alice", false).await;
    let mut a2 = Client::connect(&server).await;
    let mut l = a2.login_msg(APP, "r1", "alice", false);
    l.resume = resume_of(&first);
    assert!(expect_login_ok(a2.try_login(l).await).resumed);
    // The old connection is closed without a kick; the session stays attached to the new one.
    let (msgs, _) = a.until_closed().await;
    assert_eq!(msgs, vec![]);
    assert_eq!(a2.barrier().await, vec![]);
    assert_eq!(server.stats().detached, 0);
    assert_ok(a2.publish("s").await);
}

#[tokio::test]
async fn oversized_message_is_refused_and_closes() {
    let server = server();
    for size in [huddle_proto::MAX_MESSAGE_BYTES + 10, 200 * 1024] {
        let mut c = Client::connect(&server).await;
        c.login("r1", &format!("u{size}"), false).await;
        let pad = "x".repeat(size);
        c.send_raw(format!(r#"{{"type":"ping","seq":1,"pad":"{pad}"}}"#))
            .await;
        let (msgs, end) = c.until_closed().await;
        assert_eq!(msgs.len(), 1, "{msgs:?}");
        assert_eq!(code_of(&msgs[0]), ErrorCode::MESSAGE_TOO_LARGE);
        assert!(matches!(msgs[0], ServerMsg::Error { seq: None, .. }));
        if size < 100 * 1024 {
            // RFC 6455's "message too big".
            assert_eq!(end, End::Close(1009));
        }
        // Beyond the WebSocket limit the server cannot read the rest of the frame, so closing the
        // socket with unread data may reset the connection before the close frame is read.
    }
    // The sessions are detached, as for any broken connection, and end after the grace period.
    let mut w = Client::connect(&server).await;
    let ok = w.login("r1", "w", true).await;
    assert_eq!(ok.users.len(), 2);
    let mut gone = Vec::new();
    for _ in 0..2 {
        match w.recv().await {
            ServerMsg::UserUpdate {
                update_type: UpdateType::Delete,
                users,
                ..
            } => gone.extend(users),
            other => panic!("{other:?}"),
        }
    }
    gone.sort_by(|a, b| a.user_id.cmp(&b.user_id));
    assert_eq!(gone, ok.users);
}

#[tokio::test]
async fn malformed_messages_are_answered_and_the_session_survives() {
    let server = server();
    let mut c = Client::connect(&server).await;
    // Before login: malformed is malformed; a request is 1000002.
    c.send_raw("{not json".into()).await;
    assert_eq!(code_of(&c.recv().await), ErrorCode::MALFORMED_MESSAGE);
    c.send(&ClientMsg::Publish {
        seq: 3,
        stream_id: sid("s"),
        extra_info: String::new(),
    })
    .await;
    assert!(
        matches!(c.recv().await, ServerMsg::Error { seq: Some(3), code, .. } if code == ErrorCode::NOT_LOGGED_IN)
    );
    c.send(&ClientMsg::Ping { seq: 4 }).await;
    assert!(
        matches!(c.recv().await, ServerMsg::Error { seq: Some(4), code, .. } if code == ErrorCode::NOT_LOGGED_IN)
    );
    c.login("r1", "alice", false).await;
    for bad in [
        "{",
        "[1]",
        r#"{"type":"nope","seq":8}"#,
        r#"{"type":"publish","seq":9}"#,
    ] {
        c.send_raw(bad.into()).await;
        assert_eq!(code_of(&c.recv().await), ErrorCode::MALFORMED_MESSAGE, "{bad}");
    }
    c.ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(code_of(&c.recv().await), ErrorCode::MALFORMED_MESSAGE);
    assert_eq!(c.barrier().await, vec![]);
    assert_ok(c.publish("s1").await);
}

#[tokio::test]
async fn play_before_publish_follows_the_stream() {
    let server = server();
    let mut p = Client::connect(&server).await;
    p.login("r2", "player", false).await;
    assert_ok(p.play("s1").await);
    assert_eq!(p.recv().await, play_update("s1", false));
    let mut a = Client::connect(&server).await;
    a.login("r1", "alice", false).await;
    assert_ok(a.publish("s1").await);
    assert_eq!(p.recv().await, play_update("s1", true));
    assert_ok(a.unpublish("s1").await);
    assert_eq!(p.recv().await, play_update("s1", false));
    assert_ok(p.stop_play("s1").await);
    assert_ok(a.publish("s1").await);
    assert_eq!(p.barrier().await, vec![], "no updates after stop_play");
}

#[tokio::test]
async fn logout_answers_ok_then_closes() {
    let server = server();
    let mut w = Client::connect(&server).await;
    w.login("r1", "watcher", true).await;
    let mut a = Client::connect(&server).await;
    a.login("r1", "alice", false).await;
    assert_eq!(w.recv().await, users("r1", UpdateType::Add, &["alice"]));
    assert_ok(a.publish("a-cam").await);
    assert_eq!(
        w.recv().await,
        streams("r1", UpdateType::Add, &[("alice", "a-cam")])
    );
    a.send(&ClientMsg::Logout { seq: 77 }).await;
    let (msgs, end) = a.until_closed().await;
    assert_eq!(msgs, vec![ServerMsg::Ok { seq: 77 }]);
    assert_eq!(end, End::Close(1000));
    assert_eq!(
        w.recv().await,
        streams("r1", UpdateType::Delete, &[("alice", "a-cam")])
    );
    assert_eq!(w.recv().await, users("r1", UpdateType::Delete, &["alice"]));
    assert_eq!(server.stats().sessions, 1);
}

#[tokio::test]
async fn login_timeout() {
    let server = server_with(|c| c.login_timeout = Duration::from_millis(200));
    let mut c = Client::connect(&server).await;
    let (msgs, end) = c.until_closed().await;
    assert_eq!(msgs.len(), 1);
    assert_eq!(code_of(&msgs[0]), ErrorCode::LOGIN_TIMEOUT);
    assert_eq!(end, End::Close(1000));
}

#[tokio::test]
async fn silent_connection_times_out_into_grace() {
    let server = server_with(|c| {
        c.heartbeat = Duration::from_millis(100);
        c.session_timeout = Duration::from_millis(300);
        c.grace = Duration::from_secs(10);
    });
    let mut a = Client::connect(&server).await;
    a.login("r1", "alice", false).await;
    let (msgs, end) = a.until_closed().await;
    assert_eq!(msgs, vec![]);
    assert_eq!(end, End::Close(1000));
    let stats = server.stats();
    assert_eq!((stats.sessions, stats.detached), (1, 1));
}

#[tokio::test]
async fn rate_limit() {
    let server = server_with(|c| {
        c.rate_limit_per_sec = 5;
        c.rate_limit_burst = 10;
    });
    let mut c = Client::connect(&server).await;
    c.login("r1", "alice", false).await;
    for seq in 0..15 {
        c.send(&ClientMsg::Ping { seq }).await;
    }
    let mut pongs = 0;
    let mut limited = Vec::new();
    for _ in 0..15 {
        match c.recv().await {
            ServerMsg::Pong { .. } => pongs += 1,
            ServerMsg::Error { seq, code, .. } => {
                assert_eq!(code, ErrorCode::RATE_LIMITED);
                limited.push(seq.unwrap());
            }
            other => panic!("{other:?}"),
        }
    }
    // The login took one token of the burst of 10; a slow machine may refill a few meanwhile.
    assert!((9..=13).contains(&pongs), "{pongs} pongs");
    assert_eq!(pongs + limited.len(), 15);
    // Far beyond the limit, the connection is closed, but only after what it accepted is
    // answered: 300 pings sent at once, every accepted one gets its pong, every dropped one its
    // 1009004 until the close, whose 1009004 has no seq and comes last.
    // A new connection: its own bucket, full.
    let mut c = Client::connect(&server).await;
    c.login("r1", "bob", false).await;
    // In one write: the server reads them in one go, far ahead of its writer.
    for seq in 100..400 {
        c.ws.feed(Message::text(ClientMsg::Ping { seq }.encode()))
            .await
            .unwrap();
    }
    c.ws.flush().await.unwrap();
    let (msgs, end) = c.until_closed().await;
    assert_eq!(end, End::Close(1000));
    let pongs = msgs
        .iter()
        .filter(|m| matches!(m, ServerMsg::Pong { .. }))
        .count();
    assert!(pongs >= 9, "{pongs} pongs for the accepted burst: {msgs:?}");
    let last = msgs.last().expect("messages before the close");
    assert!(
        matches!(
            last,
            ServerMsg::Error {
                seq: None,
                code: ErrorCode::RATE_LIMITED,
                ..
            }
        ),
        "{last:?}"
    );
    let answered = msgs
        .iter()
        .filter(|m| matches!(m, ServerMsg::Error { seq: Some(_), .. }))
        .count();
    assert_eq!(
        pongs + answered + 1,
        msgs.len(),
        "only pongs and rate-limit answers: {msgs:?}"
    );
}

#[tokio::test]
async fn slow_consumer_is_closed_and_detached() {
    let server = server_with(|c| {
        c.outbound_queue = 8;
        c.max_plays_per_session = 2;
        c.rate_limit_per_sec = 1_000_000;
        c.rate_limit_burst = 1_000_000;
        c.grace = Duration::from_secs(10);
    });
    let mut slow = Client::connect(&server).await;
    slow.login("r1", "slow", false).await;
    let mut fast = Client::connect(&server).await;
    fast.login("r1", "fast", false).await;
    // The slow client never reads: its socket buffers fill, then its queue, then it is closed.
    let extra = "e".repeat(1000);
    let started = Instant::now();
    let mut n = 0u32;
    while server.stats().detached == 0 {
        assert!(started.elapsed() < Duration::from_secs(8), "never detached");
        for _ in 0..100 {
            n += 1;
            let stream_id = sid("s");
            fast.send(&ClientMsg::Publish {
                seq: n,
                stream_id: stream_id.clone(),
                extra_info: extra.clone(),
            })
            .await;
            n += 1;
            fast.send(&ClientMsg::Unpublish { seq: n, stream_id }).await;
        }
        assert_eq!(fast.barrier().await.len(), 200);
    }
    // The fast client was never disturbed; the slow one ends with 1009005 after what it had.
    let (msgs, end) = slow.until_closed().await;
    assert_eq!(code_of(msgs.last().unwrap()), ErrorCode::SLOW_CONSUMER);
    assert_eq!(end, End::Close(1000));
}

#[tokio::test]
async fn healthz_and_shutdown() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = server();
    let mut tcp = TcpStream::connect(server.addr()).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    tcp.read_to_string(&mut body).await.unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.ends_with("ok"), "{body}");

    let mut c = Client::connect(&server).await;
    c.login("r1", "alice", false).await;
    let stopping = Instant::now();
    let stop = tokio::task::spawn_blocking(move || server.stop());
    let (msgs, end) = c.until_closed().await;
    assert_eq!(msgs, vec![]);
    assert_eq!(end, End::Close(1001));
    drop(c);
    stop.await.unwrap();
    assert!(
        stopping.elapsed() < Duration::from_secs(2),
        "{:?}",
        stopping.elapsed()
    );
}

/// Mute over the wire: a publisher's state reaches its player (and a late player and a late
/// joiner's stream list); bad input gets its numbered code and the session goes on.
#[tokio::test]
async fn mute_states_reach_players_and_bad_mutes_get_codes() {
    let server = server();
    let mut a = Client::connect(&server).await;
    a.login("r", "alice", false).await;
    assert_ok(a.publish("s1").await);
    let mut p = Client::connect(&server).await;
    p.login("r", "player", false).await;
    assert_ok(p.play("s1").await);
    assert_eq!(p.recv().await, play_update("s1", true));

    assert_ok(a.request_json(serde_json::json!({"type": "set_device_state", "stream_id": "s1", "track": "audio", "state": "mute"})).await);
    let want = ServerMsg::RemoteDeviceState {
        stream_id: huddle_proto::StreamId::new("s1").unwrap(),
        track: huddle_proto::TrackKind::Audio,
        state: huddle_proto::DeviceState::Mute,
    };
    assert_eq!(p.recv().await, want);
    // A late player hears it with the play; a late joiner sees it in the room's streams.
    let mut late = Client::connect(&server).await;
    let ok = late.login("r", "late", false).await;
    assert_eq!(ok.streams[0].mic_state, huddle_proto::DeviceState::Mute);
    assert_ok(late.play("s1").await);
    assert_eq!(late.recv().await, play_update("s1", true));
    assert_eq!(late.recv().await, want);

    // Not one's own stream, a stream not played, a bad track name.
    let m = p.request_json(serde_json::json!({"type": "set_device_state", "stream_id": "s1", "track": "audio", "state": "open"})).await;
    assert_eq!(code_of(&m), ErrorCode::MUTE_NOT_PUBLISHING);
    let m = a
        .request_json(
            serde_json::json!({"type": "mute_play", "stream_id": "s1", "track": "audio", "mute": true}),
        )
        .await;
    assert_eq!(code_of(&m), ErrorCode::MUTE_NOT_PLAYING);
    let m = p
        .request_json(
            serde_json::json!({"type": "mute_play", "stream_id": "s1", "track": "voice", "mute": true}),
        )
        .await;
    assert_eq!(code_of(&m), ErrorCode::MALFORMED_MESSAGE);
    assert_ok(
        p.request_json(
            serde_json::json!({"type": "mute_play", "stream_id": "s1", "track": "audio", "mute": true}),
        )
        .await,
    );
    assert_eq!(
        a.barrier().await,
        vec![],
        "the publisher hears of nobody's play mute"
    );
}
