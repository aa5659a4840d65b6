//! The server API over real HTTP: requests signed the way the hosted platform's published
//! sample code signs them (Python's `hashlib.md5`, run as a separate process, so that the
//! server is checked against an independent implementation), the refusals of bad signatures,
//! stale timestamps, replays and bad parameters with their numbered codes, and each action on a
//! room with real signaling clients in it.

mod common;

use std::net::SocketAddr;
use std::process::Command;

use common::ws::*;
use huddle_proto::{ClientMsg, ErrorCode, MediaRole, PeerState, ServerMsg, UpdateType};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The signature as the hosted platform's Python sample computes it.
fn python_signature(app_id: u32, nonce: &str, secret: &str, timestamp: i64) -> String {
    let script = "import hashlib, sys\n\
                  app_id, nonce, secret, ts = sys.argv[1:5]\n\
                  print(hashlib.md5((str(app_id) + nonce + secret + str(ts)).encode('utf-8')).hexdigest())";
    let out = Command::new("python3")
        .args([
            "-c",
            script,
            &app_id.to_string(),
            nonce,
            secret,
            &timestamp.to_string(),
        ])
        .output()
        .expect("python3 runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn random_nonce() -> String {
    format!("{:016x}", rand_u64())
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish()
}

/// The common parameters of a request of `APP`, signed at `timestamp` with `nonce`.
fn signed(action: &str, nonce: &str, timestamp: i64) -> String {
    let secret = app(APP).server_secret.as_str().to_string();
    let sig = python_signature(APP, nonce, &secret, timestamp);
    format!(
        "Action={action}&AppId={APP}&SignatureNonce={nonce}&Timestamp={timestamp}&Signature={sig}&SignatureVersion=2.0"
    )
}

async fn http(addr: SocketAddr, method: &str, path_query: &str, body: &str) -> (u16, Value) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path_query} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    let text = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, v)
}

/// A signed GET of `action` with extra `params`; returns the JSON answer.
async fn call(addr: SocketAddr, action: &str, params: &str) -> Value {
    let q = signed(action, &random_nonce(), now_secs());
    let (status, v) = http(addr, "GET", &format!("/server-api/?{q}&{params}"), "").await;
    assert_eq!(status, 200);
    assert!(v["RequestId"].as_str().is_some_and(|r| !r.is_empty()), "{v}");
    v
}

fn code(v: &Value) -> i64 {
    v["Code"].as_i64().unwrap_or_else(|| panic!("no Code in {v}"))
}

#[tokio::test]
async fn signatures_timestamps_and_replays() {
    let server = server();
    let addr = server.addr();
    // A request signed as the hosted platform's sample signs it is accepted.
    let v = call(addr, "DescribeRoomList", "").await;
    assert_eq!(code(&v), 0, "{v}");
    assert_eq!(v["Message"], "success");
    assert_eq!(v["Data"]["RoomList"], Value::Array(vec![]));

    // The same request again (same nonce) is a replay.
    let nonce = random_nonce();
    let q = signed("DescribeRoomList", &nonce, now_secs());
    let (_, first) = http(addr, "GET", &format!("/server-api?{q}"), "").await;
    assert_eq!(code(&first), 0, "{first}");
    let (_, again) = http(addr, "GET", &format!("/server-api?{q}"), "").await;
    assert_eq!(code(&again), 1009031, "{again}");

    // Timestamps: 9 minutes off either way are fine, 11 are not.
    for (skew, expect) in [(-540, 0), (540, 0), (-660, 100000004), (660, 100000004)] {
        let q = signed("DescribeRoomList", &random_nonce(), now_secs() + skew);
        let (_, v) = http(addr, "GET", &format!("/server-api/?{q}"), "").await;
        assert_eq!(code(&v), expect, "skew {skew}: {v}");
    }

    // A wrong signature, and a signature made with another app's secret.
    let q = signed("DescribeRoomList", &random_nonce(), now_secs()).replace("Signature=", "Signature=0");
    let (_, v) = http(addr, "GET", &format!("/server-api/?{q}"), "").await;
    assert_eq!(code(&v), 100000005, "{v}");
    let ts = now_secs();
    let nonce = random_nonce();
    let other = python_signature(APP, &nonce, app(OTHER_APP).server_secret.as_str(), ts);
    let q = format!(
        "Action=DescribeRoomList&AppId={APP}&SignatureNonce={nonce}&Timestamp={ts}&Signature={other}&SignatureVersion=2.0"
    );
    let (_, v) = http(addr, "GET", &format!("/server-api/?{q}"), "").await;
    assert_eq!(code(&v), 100000005, "{v}");
    // A refused request does not use up its nonce: signed right, it goes through.
    let good = python_signature(APP, &nonce, app(APP).server_secret.as_str(), ts);
    let q = format!(
        "Action=DescribeRoomList&AppId={APP}&SignatureNonce={nonce}&Timestamp={ts}&Signature={good}&SignatureVersion=2.0"
    );
    let (_, v) = http(addr, "GET", &format!("/server-api/?{q}"), "").await;
    assert_eq!(code(&v), 0, "{v}");

    // Each missing or malformed common parameter has its code.
    let ts = now_secs();
    let full = signed("DescribeRoomList", &random_nonce(), ts);
    let without = |name: &str| {
        full.split('&')
            .filter(|kv| !kv.starts_with(&format!("{name}=")))
            .collect::<Vec<_>>()
            .join("&")
    };
    for (query, expect) in [
        (without("Action"), 100000006),
        (without("AppId"), 100000001),
        (without("SignatureNonce"), 100000008),
        (without("Timestamp"), 100000002),
        (without("Signature"), 100000009),
        (without("SignatureVersion"), 100000013),
        (
            full.replace("SignatureVersion=2.0", "SignatureVersion=1.0"),
            100000014,
        ),
        (
            full.replace(&format!("Timestamp={ts}"), "Timestamp=yesterday"),
            100000003,
        ),
        (full.replace(&format!("AppId={APP}"), "AppId=0"), 100000001),
        (full.replace(&format!("AppId={APP}"), "AppId=999"), 100000010),
        (
            full.replace("Action=DescribeRoomList", "Action=DropAllTables"),
            100000007,
        ),
    ] {
        let (_, v) = http(addr, "GET", &format!("/server-api/?{query}"), "").await;
        assert_eq!(code(&v), expect, "{query}: {v}");
        common::assert_no_internals(v["Message"].as_str().unwrap(), &query);
    }

    // Business parameters: the platform's code 2, with Huddle's reason in the message.
    for (action, params, needle) in [
        ("DescribeUserList", "RoomId=a%20b", "1002012"),
        ("DescribeUserList", "RoomId=r&Limit=500", "Limit"),
        ("DescribeUserList", "RoomId=r&Mode=2", "Mode"),
        ("DescribeUserList", "RoomId=r&Marker=x", "Marker"),
        ("DescribeUserList", "", "RoomId: missing"),
        ("DescribeUserNum", "", "RoomId"),
        (
            "KickoutUser",
            "RoomId=r&UserId[]=a&UserId[]=b&UserId[]=c&UserId[]=d&UserId[]=e&UserId[]=f",
            "UserId",
        ),
        (
            "KickoutUser",
            &format!("RoomId=r&UserId={}", "u".repeat(65)),
            "1002007",
        ),
        ("SendBroadcastMessage", "RoomId=r&UserId=admin", "MessageContent"),
        (
            "SendBroadcastMessage",
            &format!("RoomId=r&UserId=admin&MessageContent={}", "x".repeat(1025)),
            "MessageContent",
        ),
        (
            "SendBroadcastMessage",
            "RoomId=r&UserId=admin&MessageContent=hi&MessageCategory=3",
            "MessageCategory",
        ),
        ("DeleteStream", "RoomId=r&StreamId=a.b", "1000016"),
        ("CloseRoom", "RoomId=r&CustomReason=%07", "CustomReason"),
    ] {
        let v = call(addr, action, params).await;
        assert_eq!(code(&v), 2, "{action} {params}: {v}");
        let m = v["Message"].as_str().unwrap();
        assert!(m.contains(needle), "{action} {params}: {m}");
        common::assert_no_internals(m, params);
    }

    // A POST with the business parameters in a JSON body; a body that is not an object.
    let q = signed("DescribeUserNum", &random_nonce(), now_secs());
    let (_, v) = http(
        addr,
        "POST",
        &format!("/server-api/?{q}"),
        r#"{"RoomId": ["r1", "r2"]}"#,
    )
    .await;
    assert_eq!(code(&v), 0, "{v}");
    assert_eq!(v["Data"]["UserCountList"].as_array().unwrap().len(), 2);
    let q = signed("DescribeUserNum", &random_nonce(), now_secs());
    let (_, v) = http(addr, "POST", &format!("/server-api/?{q}"), "[1, 2").await;
    assert_eq!(code(&v), 100000012, "{v}");
}

#[tokio::test]
async fn actions_on_a_room_with_clients() {
    // The raw clients send no heartbeat while the test calls the API (each call runs Python).
    let server = server_with(|c| {
        c.heartbeat = std::time::Duration::from_secs(20);
        c.session_timeout = std::time::Duration::from_secs(60);
    });
    let addr = server.addr();
    let mut alice = Client::connect(&server).await;
    alice.login("r1", "alice", true).await;
    let mut bob = Client::connect(&server).await;
    bob.login("r1", "bob", true).await;
    assert_eq!(alice.recv().await, users("r1", UpdateType::Add, &["bob"]));
    assert_ok(alice.publish("s1").await);
    assert_eq!(
        bob.recv().await,
        streams("r1", UpdateType::Add, &[("alice", "s1")])
    );

    let v = call(addr, "DescribeRoomList", "").await;
    assert_eq!(v["Data"]["RoomList"][0]["RoomId"], "r1", "{v}");
    assert_eq!(v["Data"]["RoomList"][0]["UserCount"], 2);
    assert_eq!(v["Data"]["RoomList"][0]["StreamCount"], 1);

    let v = call(addr, "DescribeUserNum", "RoomId[]=r1&RoomId[]=nobody").await;
    assert_eq!(code(&v), 0, "{v}");
    let list = v["Data"]["UserCountList"].as_array().unwrap();
    assert_eq!(
        (list[0]["RoomId"].as_str(), list[0]["UserCount"].as_u64()),
        (Some("r1"), Some(2))
    );
    assert_eq!(
        (list[1]["RoomId"].as_str(), list[1]["UserCount"].as_u64()),
        (Some("nobody"), Some(0))
    );

    // Paging with Marker.
    let v = call(addr, "DescribeUserList", "RoomId=r1&Limit=1").await;
    assert_eq!(v["Data"]["UserList"][0]["UserId"], "alice", "{v}");
    let marker = v["Data"]["Marker"].as_str().unwrap().to_string();
    assert!(!marker.is_empty());
    let v = call(
        addr,
        "DescribeUserList",
        &format!("RoomId=r1&Limit=1&Marker={marker}"),
    )
    .await;
    assert_eq!(v["Data"]["UserList"][0]["UserId"], "bob", "{v}");
    assert_eq!(v["Data"]["Marker"], "");
    let v = call(addr, "DescribeUsers", "RoomId=r1&Mode=1").await;
    let ids: Vec<&str> = v["Data"]["UserList"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["UserId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["bob", "alice"]);

    let v = call(addr, "DescribeSimpleStreamList", "RoomId=r1").await;
    assert_eq!(v["Data"]["StreamList"][0]["StreamId"], "s1", "{v}");
    assert_eq!(v["Data"]["StreamList"][0]["UserId"], "alice");

    // A broadcast from the app's server reaches everyone in the room.
    let v = call(
        addr,
        "SendBroadcastMessage",
        "RoomId=r1&UserId=admin&UserName=Admin&MessageCategory=1&MessageContent=hello%20room",
    )
    .await;
    assert_eq!(code(&v), 0, "{v}");
    let id = v["Data"]["MessageId"].as_u64().unwrap();
    for c in [&mut alice, &mut bob] {
        match c.recv().await {
            ServerMsg::BroadcastMessage {
                room_id,
                message_id,
                from_user,
                message,
                send_time_ms,
            } => {
                assert_eq!(
                    (room_id.as_str(), message_id, message.as_str()),
                    ("r1", id, "hello room")
                );
                assert_eq!(
                    (from_user.user_id.as_str(), from_user.user_name.as_str()),
                    ("admin", "Admin")
                );
                assert!(send_time_ms > 1_600_000_000_000);
            }
            other => panic!("expected broadcast_message, got {other:?}"),
        }
    }
    // Sent as bob: bob's own session does not get it.
    let v = call(
        addr,
        "SendBroadcastMessage",
        "RoomId=r1&UserId=bob&MessageContent=from%20bob",
    )
    .await;
    assert_eq!(code(&v), 0, "{v}");
    assert!(
        matches!(alice.recv().await, ServerMsg::BroadcastMessage { ref message, .. } if message == "from bob")
    );
    assert!(bob.barrier().await.is_empty());
    let v = call(
        addr,
        "SendBroadcastMessage",
        "RoomId=nobody&UserId=admin&MessageContent=x",
    )
    .await;
    assert_eq!(code(&v), 50001, "{v}");

    // DeleteStream stops alice's stream: she hears why, bob sees it go.
    let v = call(addr, "DescribeSimpleStreamList", "RoomId=r1").await;
    assert_eq!(v["Data"]["StreamList"][0]["StreamId"], "s1", "{v}");
    let v = call(addr, "DeleteStream", "RoomId=r1&UserId=admin&StreamId=s1").await;
    assert_eq!(code(&v), 0, "{v}");
    match alice.recv().await {
        ServerMsg::MediaState {
            stream_id,
            kind,
            state,
            code,
            ..
        } => {
            assert_eq!(
                (stream_id.as_str(), kind, state, code),
                (
                    "s1",
                    MediaRole::Publish,
                    PeerState::Closed,
                    ErrorCode::STREAM_STOPPED_BY_SERVER
                )
            );
        }
        other => panic!("expected media_state, got {other:?}"),
    }
    assert_eq!(
        bob.recv().await,
        streams("r1", UpdateType::Delete, &[("alice", "s1")])
    );
    let v = call(addr, "DeleteStream", "RoomId=r1&StreamId=s1").await;
    assert_eq!(code(&v), 1004002, "{v}");
    // The stream ID is free again: alice may publish it anew.
    assert_ok(alice.publish("s1").await);
    assert_eq!(
        bob.recv().await,
        streams("r1", UpdateType::Add, &[("alice", "s1")])
    );

    // KickoutUser: bob is kicked with 1002055; a user who is not there is 50002.
    let v = call(addr, "KickoutUser", "RoomId=r1&UserId[]=bob&CustomReason=bye").await;
    assert_eq!(code(&v), 0, "{v}");
    assert_eq!(v["Data"]["KickedUsers"][0], "bob");
    let (msgs, _) = bob.until_closed().await;
    assert!(
        msgs.contains(&ServerMsg::Kicked {
            code: ErrorCode::KICKED_BY_SERVER,
            message: "bye".into()
        }),
        "{msgs:?}"
    );
    assert_eq!(alice.recv().await, users("r1", UpdateType::Delete, &["bob"]));
    let v = call(addr, "KickoutUser", "RoomId=r1&UserId=carol").await;
    assert_eq!(code(&v), 50002, "{v}");

    // CloseRoom ends everyone; then the room does not exist.
    let v = call(addr, "CloseRoom", "RoomId=r1").await;
    assert_eq!(code(&v), 0, "{v}");
    assert_eq!(v["Data"]["ClosedSessions"], 1);
    let (msgs, _) = alice.until_closed().await;
    assert!(
        msgs.iter()
            .any(|m| matches!(m, ServerMsg::Kicked { code, .. } if *code == ErrorCode::KICKED_BY_SERVER)),
        "{msgs:?}"
    );
    let v = call(addr, "DescribeUserNum", "RoomId=r1").await;
    assert_eq!(v["Data"]["UserCountList"][0]["UserCount"], 0);
    let v = call(addr, "CloseRoom", "RoomId=r1").await;
    assert_eq!(code(&v), 50001, "{v}");
    assert_eq!(server.stats().sessions, 0);
    server.state().check_invariants().unwrap();
    let _ = ClientMsg::Ping { seq: 0 };
}

#[tokio::test]
async fn recording_tasks_start_describe_and_stop() {
    let dir = std::env::temp_dir().join(format!("huddle-api-rec-{}", rand_u64()));
    let record_dir = dir.clone();
    let server = server_with(move |c| c.record_dir = Some(record_dir));
    let addr = server.addr();
    // A task for a room with no stream yet: waiting (1), no file.
    let v = call(addr, "StartRecord", "RoomId=r1").await;
    assert_eq!(code(&v), 0, "{v}");
    let task = v["Data"]["TaskId"].as_str().unwrap().to_string();
    assert_eq!(task.len(), 16);
    let d = call(addr, "DescribeRecordStatus", &format!("TaskId={task}")).await;
    assert_eq!(code(&d), 0, "{d}");
    assert_eq!(d["Data"]["Status"], 1);
    assert_eq!(d["Data"]["RoomId"], "r1");
    assert_eq!(d["Data"]["RecordFiles"], Value::Array(vec![]));
    // The directory was created and probed, and nothing was left in it.
    assert_eq!(std::fs::read_dir(dir.join(APP.to_string())).unwrap().count(), 0);
    // One task per room; another room may have its own; one stream of a room alone.
    assert_eq!(code(&call(addr, "StartRecord", "RoomId=r1").await), 1009088);
    let other = call(addr, "StartRecord", "RoomId=r2&StreamId=s1").await;
    assert_eq!(code(&other), 0, "{other}");
    let other = other["Data"]["TaskId"].as_str().unwrap().to_string();
    assert_eq!(
        call(addr, "DescribeRecordStatus", &format!("TaskId={other}")).await["Data"]["StreamId"],
        "s1"
    );
    // Stopped: ended (3); the room may be recorded again.
    assert_eq!(
        code(&call(addr, "StopRecord", &format!("TaskId={task}")).await),
        0
    );
    let d = call(addr, "DescribeRecordStatus", &format!("TaskId={task}")).await;
    assert_eq!(d["Data"]["Status"], 3, "{d}");
    assert_eq!(code(&call(addr, "StartRecord", "RoomId=r1").await), 0);
    // Bad input: numbered codes.
    assert_eq!(code(&call(addr, "StartRecord", "").await), 2);
    assert_eq!(
        code(&call(addr, "StartRecord", "RoomId=r1&StreamId=a%20b").await),
        2
    );
    assert_eq!(code(&call(addr, "StopRecord", "").await), 2);
    assert_eq!(code(&call(addr, "StopRecord", "TaskId=a%2Fb").await), 2);
    let unknown = call(addr, "DescribeRecordStatus", "TaskId=ffffffffffffffff").await;
    assert_eq!(code(&unknown), 1009087, "{unknown}");
    let _ = std::fs::remove_dir_all(&dir);
}
