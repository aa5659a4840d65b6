//! Webhooks end to end: a real HTTP receiver on 127.0.0.1, an outage of it (it answers 503), a
//! server restart in between, and then every event arrives, in order, with contiguous sequence
//! numbers, each signature verified by Python with the hosted platform's published algorithm
//! (`sha1` of the sorted secret, timestamp and nonce). A receiver then asks for a replay.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use common::ws::*;
use huddle_server::{BackgroundServer, ServerConfig, WebhookConfig, test_app};
use parking_lot::Mutex;
use serde_json::Value;

const SECRET: &str = "receiver-callback-secret";

#[derive(Clone, Default)]
struct Receiver {
    down: Arc<AtomicBool>,
    refused: Arc<AtomicUsize>,
    got: Arc<Mutex<Vec<Value>>>,
}

async fn hook(State(r): State<Receiver>, body: String) -> StatusCode {
    if r.down.load(Ordering::SeqCst) {
        r.refused.fetch_add(1, Ordering::SeqCst);
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    r.got
        .lock()
        .push(serde_json::from_str(&body).expect("a JSON body"));
    StatusCode::OK
}

async fn start_receiver() -> (Receiver, String) {
    let r = Receiver::default();
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(r.clone());
    let addr = common::serve_http(app).await;
    (r, format!("http://{addr}/hook?source=huddle"))
}

fn config(data_dir: &std::path::Path, url: &str) -> ServerConfig {
    let mut app = test_app(APP);
    app.webhooks = vec![WebhookConfig {
        url: url.to_string(),
        callback_secret: Some(SECRET.into()),
    }];
    let mut c = ServerConfig::for_tests(vec![app]);
    c.data_dir = data_dir.to_path_buf();
    c.heartbeat = Duration::from_secs(20);
    c.session_timeout = Duration::from_secs(60);
    c
}

/// Waits (at most 30 s) until `f` holds.
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Verifies every body's signature with Python, as the platform's sample code does; returns
/// how many matched.
fn python_verified(bodies: &[Value]) -> usize {
    let script = "import hashlib, json, sys\n\
                  secret = sys.argv[1]\n\
                  ok = 0\n\
                  for line in sys.stdin:\n\
                  \x20   b = json.loads(line)\n\
                  \x20   parts = sorted([secret, str(b['timestamp']), str(b['nonce'])])\n\
                  \x20   if hashlib.sha1(''.join(parts).encode('utf-8')).hexdigest() == b['signature']:\n\
                  \x20       ok += 1\n\
                  print(ok)";
    let mut child = Command::new("python3")
        .args(["-c", script, SECRET])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    {
        let mut stdin = child.stdin.take().unwrap();
        for b in bodies {
            writeln!(stdin, "{b}").unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().parse().unwrap()
}

fn seqs(got: &[Value]) -> Vec<u64> {
    got.iter().map(|v| v["seq"].as_u64().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_across_an_outage_and_a_restart() {
    let dir = std::env::temp_dir().join(format!("huddle-webhooks-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (receiver, url) = start_receiver().await;

    let server = BackgroundServer::start(config(&dir, &url)).unwrap();
    let mut alice = Client::connect(&server).await;
    alice.login("r1", "alice", false).await;
    assert_ok(alice.publish("s1").await);
    until("three events", || receiver.got.lock().len() == 3).await;

    // The receiver goes down; the call goes on unhindered.
    receiver.down.store(true, Ordering::SeqCst);
    assert_ok(alice.unpublish("s1").await);
    let mut bob = Client::connect(&server).await;
    bob.login("r2", "bob", false).await;
    let seq = alice.next_seq();
    assert_ok(alice.request(huddle_proto::ClientMsg::Logout { seq }).await);
    until("a refused delivery", || {
        receiver.refused.load(Ordering::SeqCst) > 0
    })
    .await;
    // The server stops with events undelivered (bob's session ends with it, untold).
    server.stop();
    drop(bob);

    // A new server on the same data directory; the receiver comes back.
    let server = BackgroundServer::start(config(&dir, &url)).unwrap();
    receiver.down.store(false, Ordering::SeqCst);
    until("eight events", || receiver.got.lock().len() >= 8).await;
    let got = receiver.got.lock().clone();
    assert_eq!(seqs(&got), (1..=8).collect::<Vec<u64>>(), "{got:#?}");
    let names: Vec<&str> = got.iter().map(|v| v["event"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "room_create",
            "room_login",
            "stream_create",
            "stream_close",
            "room_create",
            "room_login",
            "room_logout",
            "room_close"
        ]
    );
    assert_eq!(python_verified(&got), got.len());
    for v in &got {
        assert_eq!(v["appid"], APP.to_string());
    }
    assert_eq!(got[1]["user_account"], "alice");
    assert_eq!(got[1]["room_seq"], got[0]["room_session_id"]);
    assert_eq!(got[2]["stream_id"], "s1");
    assert_eq!(got[2]["extra_info"], "x-s1");
    assert_eq!(got[4]["id_name"], "bob");
    assert_eq!(got[6]["user_account"], "alice");
    assert_eq!(got[7]["room_id"], "r1");

    // A later event continues the sequence.
    let mut carol = Client::connect(&server).await;
    carol.login("r3", "carol", false).await;
    until("ten events", || receiver.got.lock().len() >= 10).await;
    assert_eq!(seqs(&receiver.got.lock())[8..], [9, 10]);

    // A replay from 7 sends 7 to 10 again.
    let replay = |from: u64| {
        let app = test_app(APP);
        let ts = now_secs();
        let nonce = format!("replay{from}{ts}");
        let text = format!("{APP}{nonce}{}{ts}", app.server_secret.as_str());
        let out = Command::new("python3")
            .args([
                "-c",
                "import hashlib,sys; print(hashlib.md5(sys.argv[1].encode()).hexdigest())",
                &text,
            ])
            .output()
            .unwrap();
        let sig = String::from_utf8(out.stdout).unwrap().trim().to_string();
        format!(
            "/server-api/?Action=ReplayCallbacks&AppId={APP}&SignatureNonce={nonce}&Timestamp={ts}&Signature={sig}&SignatureVersion=2.0&FromSeq={from}"
        )
    };
    let answer = http_get(server.addr(), &replay(7)).await;
    assert_eq!(answer["Code"], 0, "{answer}");
    assert_eq!(
        (
            answer["Data"]["FromSeq"].as_u64(),
            answer["Data"]["LastSeq"].as_u64()
        ),
        (Some(7), Some(10))
    );
    until("the replay", || receiver.got.lock().len() >= 14).await;
    assert_eq!(seqs(&receiver.got.lock())[10..], [7, 8, 9, 10]);
    let answer = http_get(server.addr(), &replay(99)).await;
    assert_eq!(answer["Code"], 1009034, "{answer}");

    // /metrics: nothing left to deliver.
    let metrics = http_text(server.addr(), "/metrics").await;
    assert!(
        metrics.contains(&format!("huddle_webhook_queue_depth{{app_id=\"{APP}\"}} 0")),
        "{metrics}"
    );
    assert!(
        metrics.contains("huddle_webhook_deliveries_total{result=\"failed\"}"),
        "{metrics}"
    );
    drop(carol);
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

async fn http_text(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).await.unwrap();
    response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> Value {
    serde_json::from_str(&http_text(addr, path).await).unwrap()
}
