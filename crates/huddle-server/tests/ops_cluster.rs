//! The server API, webhooks and recording of a cluster: three nodes on loopback sharing a
//! `redis-server` the test starts (as `tests/cluster.rs`).
//!
//! - A webhook receiver (with its own signature check) gets every event of a room whose users
//!   are spread over the three nodes, once each, in one gap-free sequence, across an outage of
//!   the receiver and a restart of a node; a replay asked of another node sends them again.
//! - The API answers the same on every node, and its actions asked of any node act where the
//!   users and streams are.
//! - A recording started through node B of a stream published on node A is reported by
//!   `DescribeRecordStatus` on node C, and stopped through C.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use common::redis::RedisServer;
use common::{APP, Client, ROOM};
use huddle_proto::{ClientMsg, ErrorCode, MediaRole, ServerMsg};
use huddle_server::{BackgroundServer, WebhookConfig, test_app};
use md5::Digest as _;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "cluster-receiver-secret";
/// How long the test waits for something the cluster does by itself.
const WAIT: Duration = Duration::from_secs(30);

#[derive(Clone, Default)]
struct Receiver {
    down: Arc<AtomicBool>,
    refused: Arc<AtomicUsize>,
    bad_signatures: Arc<AtomicUsize>,
    got: Arc<Mutex<Vec<Value>>>,
}

/// The receiver's own check of the hosted platform's callback signature:
/// `sha1(sort([secret, timestamp, nonce]).join(""))`.
fn signature_ok(body: &Value) -> bool {
    let ts = body["timestamp"].to_string();
    let nonce = body["nonce"].as_str().unwrap_or("").to_string();
    let mut parts = [SECRET.to_string(), ts, nonce];
    parts.sort();
    let digest = sha1::Sha1::digest(parts.concat().as_bytes());
    body["signature"].as_str() == Some(hex::encode(digest).as_str())
}

async fn hook(State(r): State<Receiver>, body: String) -> StatusCode {
    if r.down.load(Ordering::SeqCst) {
        r.refused.fetch_add(1, Ordering::SeqCst);
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let v: Value = serde_json::from_str(&body).expect("a JSON body");
    if !signature_ok(&v) {
        r.bad_signatures.fetch_add(1, Ordering::SeqCst);
        return StatusCode::FORBIDDEN;
    }
    r.got.lock().push(v);
    StatusCode::OK
}

async fn start_receiver() -> (Receiver, String) {
    let r = Receiver::default();
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(r.clone());
    let addr = common::serve_http(app).await;
    (r, format!("http://{addr}/hook"))
}

/// A node of the test cluster (1 s lease), with the receiver at `hook` if given.
fn node(
    redis: &RedisServer,
    id: &str,
    hook: Option<&str>,
    record_dir: Option<&std::path::Path>,
) -> BackgroundServer {
    let mut config = common::config();
    config.redis = Some(redis.url.clone());
    config.node_id = Some(id.into());
    config.cluster_lease = Duration::from_secs(1);
    if let Some(url) = hook {
        config.apps[0].webhooks = vec![WebhookConfig {
            url: url.to_string(),
            callback_secret: Some(SECRET.into()),
        }];
    }
    if let Some(dir) = record_dir {
        config.record_dir = Some(dir.to_path_buf());
    }
    BackgroundServer::start(config).unwrap()
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ----- the server API -----

fn now_secs() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

fn nonce() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// A signed query of `action` (the signature is checked against Python's in `tests/api.rs`).
fn signed(action: &str, nonce: &str) -> String {
    let secret = test_app(APP).server_secret.as_str().to_string();
    let ts = now_secs();
    let sig = hex::encode(md5::Md5::digest(format!("{APP}{nonce}{secret}{ts}").as_bytes()));
    format!(
        "Action={action}&AppId={APP}&SignatureNonce={nonce}&Timestamp={ts}&Signature={sig}&SignatureVersion=2.0"
    )
}

async fn get(addr: SocketAddr, query: &str) -> Value {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET /server-api/?{query} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).await.unwrap();
    let text = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

async fn call(server: &BackgroundServer, action: &str, params: &str) -> Value {
    get(server.addr(), &format!("{}&{params}", signed(action, &nonce()))).await
}

fn code(v: &Value) -> i64 {
    v["Code"].as_i64().unwrap_or_else(|| panic!("no Code in {v}"))
}

/// The room as each of the describing actions tells it, asked of `server`.
async fn describe(server: &BackgroundServer) -> Value {
    let room = format!("RoomId={ROOM}");
    let mut v = serde_json::json!({});
    for (action, params) in [
        ("DescribeRoomList", String::new()),
        ("DescribeUserNum", format!("RoomId[]={ROOM}")),
        ("DescribeUserList", room.clone()),
        ("DescribeSimpleStreamList", room.clone()),
    ] {
        let a = call(server, action, &params).await;
        assert_eq!(code(&a), 0, "{action}: {a}");
        v[action] = a["Data"].clone();
    }
    v
}

/// Waits until every node describes the room the same way, and that way holds `f`.
async fn same_on_all(nodes: &[&BackgroundServer], what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut answers = Vec::new();
        for n in nodes {
            answers.push(describe(n).await);
        }
        if answers.iter().all(|a| *a == answers[0]) && f(&answers[0]) {
            return answers.remove(0);
        }
        assert!(
            Instant::now() < deadline,
            "the nodes never agreed on {what}: {answers:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn user_ids(v: &Value) -> Vec<String> {
    v["DescribeUserList"]["UserList"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["UserId"].as_str().unwrap().to_string())
        .collect()
}

fn stream_ids(v: &Value) -> Vec<String> {
    v["DescribeSimpleStreamList"]["StreamList"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["StreamId"].as_str().unwrap().to_string())
        .collect()
}

async fn logout(c: &mut Client) {
    let seq = c.next_seq();
    c.ok(ClientMsg::Logout { seq }).await;
}

/// What a webhook event is about: its name and the user or stream.
fn key(e: &Value) -> String {
    let name = e["event"].as_str().unwrap_or("?");
    let what = match name {
        "room_login" | "room_logout" => e["user_account"].as_str(),
        "stream_create" | "stream_close" => e["stream_id"].as_str(),
        _ => e["room_id"].as_str(),
    };
    format!("{name} {}", what.unwrap_or("?"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rooms_webhooks_come_once_each_in_one_sequence_and_the_api_answers_for_the_cluster() {
    let redis = RedisServer::start();
    let (receiver, url) = start_receiver().await;
    let a = node(&redis, "node-a", Some(&url), None);
    let mut b = node(&redis, "node-b", Some(&url), None);
    let c = node(&redis, "node-c", Some(&url), None);

    // A room over three nodes.
    let mut alice = Client::login(&a, "alice").await;
    let mut bob = Client::login(&b, "bob").await;
    let mut carol = Client::login(&c, "carol").await;
    alice.publish("s-alice").await;
    until("the first five events", || receiver.got.lock().len() == 5).await;

    // The receiver goes down; the room goes on.
    receiver.down.store(true, Ordering::SeqCst);
    bob.publish("s-bob").await;
    logout(&mut carol).await;
    let mut dave = Client::login(&a, "dave").await;
    until("a refused delivery", || {
        receiver.refused.load(Ordering::SeqCst) > 0
    })
    .await;

    // Node B restarts (bob's session ends with it); a new user logs in through it.
    b.stop();
    drop(bob);
    b = node(&redis, "node-b", Some(&url), None);
    let mut erin = Client::login(&b, "erin").await;
    receiver.down.store(false, Ordering::SeqCst);

    // The API answers the same on every node.
    let room = same_on_all(&[&a, &b, &c], "alice, dave and erin", |v| {
        user_ids(v) == ["alice", "dave", "erin"]
    })
    .await;
    assert_eq!(stream_ids(&room), ["s-alice"], "{room:#}");
    assert_eq!(room["DescribeUserNum"]["UserCountList"][0]["UserCount"], 3);
    assert_eq!(
        room["DescribeRoomList"]["RoomList"],
        serde_json::json!([{"RoomId": ROOM, "UserCount": 3, "StreamCount": 1}]),
    );

    // Actions asked of a node where the user or stream is not act where it is.
    let bc = call(
        &c,
        "SendBroadcastMessage",
        &format!("RoomId={ROOM}&UserId=ops&MessageContent=hello"),
    )
    .await;
    assert_eq!(code(&bc), 0, "{bc}");
    for cl in [&mut alice, &mut dave, &mut erin] {
        let m = cl
            .wait_for(|m| matches!(m, ServerMsg::BroadcastMessage { .. }))
            .await;
        assert!(
            matches!(m, ServerMsg::BroadcastMessage { ref message, .. } if message == "hello"),
            "{m:?}"
        );
    }
    let del = call(&b, "DeleteStream", &format!("RoomId={ROOM}&StreamId=s-alice")).await;
    assert_eq!(code(&del), 0, "{del}");
    same_on_all(&[&a, &b, &c], "no stream", |v| stream_ids(v).is_empty()).await;
    let kick = call(&c, "KickoutUser", &format!("RoomId={ROOM}&UserId[]=dave")).await;
    assert_eq!(code(&kick), 0, "{kick}");
    assert_eq!(kick["Data"]["KickedUsers"], serde_json::json!(["dave"]), "{kick}");
    assert_eq!(kick["Data"]["OtherNodeUsers"], serde_json::json!([]), "{kick}");
    let m = dave.wait_for(|m| matches!(m, ServerMsg::Kicked { .. })).await;
    assert!(matches!(m, ServerMsg::Kicked { code, .. } if code == ErrorCode::KICKED_BY_SERVER));
    same_on_all(&[&a, &b, &c], "alice and erin", |v| {
        user_ids(v) == ["alice", "erin"]
    })
    .await;
    // A nonce spent on one node is refused by another.
    let n = nonce();
    assert_eq!(code(&get(a.addr(), &signed("DescribeRoomList", &n)).await), 0);
    assert_eq!(
        code(&get(c.addr(), &signed("DescribeRoomList", &n)).await),
        1009031
    );
    // Closing the room through the node with none of its members.
    let close = call(&c, "CloseRoom", &format!("RoomId={ROOM}")).await;
    assert_eq!(code(&close), 0, "{close}");
    assert_eq!(close["Data"]["ClosedSessions"], 2, "{close}");
    for cl in [&mut alice, &mut erin] {
        cl.wait_for(|m| matches!(m, ServerMsg::Kicked { .. })).await;
    }

    // Every event, once each, one sequence with no gap.
    let expected: HashMap<&str, usize> = [
        ("room_create media-room", 1),
        ("room_login alice", 1),
        ("room_login bob", 1),
        ("room_login carol", 1),
        ("room_login dave", 1),
        ("room_login erin", 1),
        ("stream_create s-alice", 1),
        ("stream_create s-bob", 1),
        ("room_logout carol", 1),
        ("room_logout bob", 1),
        ("stream_close s-bob", 1),
        ("stream_close s-alice", 1),
        ("room_logout dave", 1),
        ("room_logout alice", 1),
        ("room_logout erin", 1),
        ("room_close media-room", 1),
    ]
    .into_iter()
    .collect();
    let total: usize = expected.values().sum();
    until("every event", || receiver.got.lock().len() >= total).await;
    // Nothing more comes (a duplicate would, within the retry of a lost answer).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let got = receiver.got.lock().clone();
    let seqs: Vec<u64> = got.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=total as u64).collect::<Vec<_>>(), "{got:#?}");
    let mut counts: HashMap<String, usize> = HashMap::new();
    for e in &got {
        *counts.entry(key(e)).or_default() += 1;
        assert_eq!(e["appid"], APP.to_string());
    }
    let expected: HashMap<String, usize> = expected.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    assert_eq!(counts, expected, "{got:#?}");
    assert_eq!(receiver.bad_signatures.load(Ordering::SeqCst), 0);
    // In order where order is decided: the room opens first and closes last, one life.
    assert_eq!(key(&got[0]), "room_create media-room");
    assert_eq!(key(&got[total - 1]), "room_close media-room");
    let sessions: std::collections::HashSet<String> = got
        .iter()
        .map(|e| {
            e["room_session_id"]
                .as_str()
                .or(e["room_seq"].as_str())
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(sessions.len(), 1, "one life of the room: {sessions:?}");
    let pos = |k: &str| got.iter().position(|e| key(e) == k).unwrap();
    assert!(pos("stream_create s-alice") > pos("room_login alice"));
    assert!(pos("stream_close s-bob") < pos("room_logout bob"));
    assert!(pos("room_logout carol") > pos("room_login carol"));

    // A replay asked of another node than the one delivering: events 3 on, again, in order.
    let replay = call(&b, "ReplayCallbacks", "FromSeq=3").await;
    assert_eq!(code(&replay), 0, "{replay}");
    assert_eq!(replay["Data"]["LastSeq"], total as u64, "{replay}");
    until("the replay", || receiver.got.lock().len() >= 2 * total - 2).await;
    let again: Vec<u64> = receiver.got.lock()[total..]
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(again, (3..=total as u64).collect::<Vec<_>>());
    let stale = call(&c, "ReplayCallbacks", &format!("FromSeq={}", total + 1)).await;
    assert_eq!(code(&stale), 1009034, "{stale}");

    drop((alice, carol, dave, erin));
    for n in [a, b, c] {
        n.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_started_through_one_node_of_a_stream_on_another_is_told_by_a_third() {
    let redis = RedisServer::start();
    let dir = std::env::temp_dir().join(format!("huddle-ops-rec-{}", rand::random::<u64>()));
    let a = node(&redis, "rec-a", None, Some(&dir));
    let b = node(&redis, "rec-b", None, Some(&dir));
    let c = node(&redis, "rec-c", None, Some(&dir));

    // The room is recorded from B, before its stream is published on A.
    let start = call(&b, "StartRecord", &format!("RoomId={ROOM}")).await;
    assert_eq!(code(&start), 0, "{start}");
    let task = start["Data"]["TaskId"].as_str().unwrap().to_string();
    // One task per room for the whole cluster.
    assert_eq!(
        code(&call(&c, "StartRecord", &format!("RoomId={ROOM}")).await),
        1009088
    );
    let waiting = call(&c, "DescribeRecordStatus", &format!("TaskId={task}")).await;
    assert_eq!(waiting["Data"]["Status"], 1, "{waiting}");

    let mut alice = Client::login(&a, "alice").await;
    alice.publish("s-rec").await;
    let mut publisher = common::start_publisher(&mut alice, "s-rec").await;
    common::connect(&mut [&mut publisher]).await;
    alice.media_up("s-rec", MediaRole::Publish).await;
    common::stream_audio(&mut [&mut publisher], 100).await;

    // C tells what A records.
    let deadline = Instant::now() + WAIT;
    let status = loop {
        let d = call(&c, "DescribeRecordStatus", &format!("TaskId={task}")).await;
        assert_eq!(code(&d), 0, "{d}");
        let files = d["Data"]["RecordFiles"].as_array().cloned().unwrap_or_default();
        if d["Data"]["Status"] == 2 && files.iter().any(|f| f["FileSize"].as_u64() > Some(0)) {
            break d;
        }
        if Instant::now() >= deadline {
            let files: Vec<_> = walk(&dir);
            panic!("C never told the recording: {d}; files: {files:?}");
        }
        common::stream_audio(&mut [&mut publisher], 10).await;
    };
    let file = &status["Data"]["RecordFiles"][0];
    assert_eq!(file["StreamId"], "s-rec", "{status}");
    assert_eq!(file["OutputFileFormat"], "ogg", "{status}");
    assert!(
        file["FilePath"]
            .as_str()
            .unwrap()
            .contains(&format!("{APP}/{ROOM}/s-rec-")),
        "{status}"
    );
    assert_eq!(status["Data"]["RoomId"], ROOM);

    // Stopped through C: every node's part ends; B tells it.
    assert_eq!(code(&call(&c, "StopRecord", &format!("TaskId={task}")).await), 0);
    let deadline = Instant::now() + WAIT;
    loop {
        let d = call(&b, "DescribeRecordStatus", &format!("TaskId={task}")).await;
        if d["Data"]["Status"] == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "the task never ended: {d}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let unknown = call(&a, "StopRecord", "TaskId=ffffffffffffffff").await;
    assert_eq!(code(&unknown), 1009087, "{unknown}");
    drop(alice);
    for n in [a, b, c] {
        n.stop();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}
