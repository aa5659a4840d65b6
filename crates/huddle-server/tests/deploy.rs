//! What a deployment relies on, over real sockets on 127.0.0.1: TURN credentials handed out with
//! `login_ok`, readiness, and the drain before a shutdown (SIGTERM in `huddle serve`).

mod common;

use std::time::Duration;

use common::ws::*;
use huddle_proto::{ClientMsg, ErrorCode};
use huddle_server::{TurnConfig, turn};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECRET: &str = "a-turn-secret-of-coturn";

/// `GET path`: the status code and the body.
async fn get(server: &huddle_server::BackgroundServer, path: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(server.addr()).await.unwrap();
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut text = String::new();
    tcp.read_to_string(&mut text).await.unwrap();
    let status = text[9..12].parse().unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    (status, body)
}

#[tokio::test]
async fn turn_credentials_come_fresh_with_every_login_ok() {
    let server = server_with(|c| {
        c.turn = Some(TurnConfig {
            urls: vec![
                "turns:turn.example.com:443?transport=tcp".into(),
                "turn:turn.example.com:3478".into(),
            ],
            secret: SECRET.into(),
            credential_ttl: Duration::from_secs(600),
        });
    });
    let mut a = Client::connect(&server).await;
    let before = now_secs();
    let ok = a.login("r1", "alice", false).await;
    assert_eq!(ok.ice_servers.len(), 1, "{:?}", ok.ice_servers);
    let s = &ok.ice_servers[0];
    assert_eq!(
        s.urls,
        [
            "turns:turn.example.com:443?transport=tcp",
            "turn:turn.example.com:3478"
        ]
    );
    let username = s.username.clone().unwrap();
    let (expiry, who) = username.split_once(':').unwrap();
    assert_eq!(who, format!("{APP}.alice"));
    let expiry: i64 = expiry.parse().unwrap();
    assert!((before + 600..=now_secs() + 600).contains(&expiry), "{expiry}");
    // What coturn computes from its static-auth-secret.
    assert_eq!(
        s.credential.as_deref(),
        Some(turn::password(SECRET, &username).as_str())
    );

    // Another user gets their own; a resume gets credentials too.
    let mut b = Client::connect(&server).await;
    let ok_b = b.login("r1", "bob", false).await;
    assert_ne!(ok_b.ice_servers[0].credential, s.credential);
    drop(a);
    let mut a2 = Client::connect(&server).await;
    let mut login = a2.login_msg(APP, "r1", "alice", false);
    login.resume = resume_of(&ok);
    let resumed = expect_login_ok(a2.try_login(login).await);
    assert!(resumed.resumed);
    assert_eq!(resumed.ice_servers.len(), 1);
}

#[tokio::test]
async fn without_turn_login_ok_has_no_ice_servers() {
    let server = server();
    let mut a = Client::connect(&server).await;
    assert!(a.login("r1", "alice", false).await.ice_servers.is_empty());
}

#[tokio::test]
async fn draining_refuses_new_logins_takes_resumes_and_ends_with_the_last_session() {
    let server = server_with(|c| c.drain_timeout = Duration::from_secs(60));
    assert_eq!(get(&server, "/readyz").await, (200, "ready".into()));
    let mut a = Client::connect(&server).await;
    let ok = a.login("r1", "alice", false).await;

    let state = server.state().clone();
    let (_cut, cut_short) = tokio::sync::oneshot::channel::<()>();
    let drain = tokio::spawn(async move {
        state
            .drain(async move {
                let _ = cut_short.await;
            })
            .await;
    });
    while !server.state().is_draining() {
        tokio::task::yield_now().await;
    }
    assert_eq!(get(&server, "/readyz").await, (503, "draining".into()));
    assert_eq!(get(&server, "/healthz").await, (200, "ok".into()));

    // A fresh login is refused with the retriable 1009008.
    let mut b = Client::connect(&server).await;
    let login = b.login_msg(APP, "r1", "bob", false);
    assert_eq!(
        code_of(&b.try_login(login).await),
        ErrorCode::SERVER_SHUTTING_DOWN
    );

    // The call in progress goes on: alice's session resumes from a new connection.
    drop(a);
    let mut a2 = Client::connect(&server).await;
    let mut login = a2.login_msg(APP, "r1", "alice", false);
    login.resume = resume_of(&ok);
    assert!(expect_login_ok(a2.try_login(login).await).resumed);
    assert!(!drain.is_finished());

    // The last session leaves: the drain is over, long before its 60 s.
    let seq = a2.next_seq();
    assert_ok(a2.request(ClientMsg::Logout { seq }).await);
    tokio::time::timeout(Duration::from_secs(10), drain)
        .await
        .expect("the drain ends when no session is left")
        .unwrap();
}

#[tokio::test]
async fn a_drain_ends_at_its_timeout_or_when_cut_short() {
    let server = server_with(|c| c.drain_timeout = Duration::from_millis(200));
    let mut a = Client::connect(&server).await;
    a.login("r1", "alice", false).await;
    // The session stays, yet the drain returns once its timeout has passed.
    tokio::time::timeout(
        Duration::from_secs(10),
        server.state().drain(std::future::pending()),
    )
    .await
    .expect("the drain timeout bounds the drain");
    assert_eq!(server.stats().sessions, 1);

    let server = server_with(|c| c.drain_timeout = Duration::from_secs(3600));
    let mut a = Client::connect(&server).await;
    a.login("r1", "alice", false).await;
    // A second signal cuts an hour-long drain short.
    tokio::time::timeout(Duration::from_secs(10), server.state().drain(async {}))
        .await
        .expect("cut short");
}

/// The `huddle-server` binary (no codecs linked) serves, is ready, and on SIGTERM drains and
/// exits 0 (no session: the drain ends at once).
#[test]
fn the_server_binary_serves_and_stops_cleanly_on_sigterm() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let data = std::env::temp_dir().join(format!("huddle-server-bin-{}", std::process::id()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_huddle-server"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--udp-port",
            "0",
            "--tcp-port",
            "0",
            "--data-dir",
        ])
        .arg(&data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("huddle server listening on ").map(str::to_string))
        .expect("a banner");
    std::thread::spawn(move || for _ in lines {});
    let readyz = || {
        use std::io::{Read, Write};
        let mut tcp = std::net::TcpStream::connect(&addr).unwrap();
        tcp.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        tcp.read_to_string(&mut text).unwrap();
        text
    };
    // Ready once the media plane runs (the banner comes just before).
    let mut answer = readyz();
    for _ in 0..100 {
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        answer = readyz();
    }
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("ready"),
        "{answer}"
    );
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = (0..200)
        .find_map(|_| {
            std::thread::sleep(Duration::from_millis(50));
            child.try_wait().unwrap()
        })
        .unwrap_or_else(|| {
            let _ = child.kill();
            panic!("huddle-server did not exit after SIGTERM");
        });
    assert!(status.success(), "{status:?}");
    let _ = std::fs::remove_dir_all(&data);
}
