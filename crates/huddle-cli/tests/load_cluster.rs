//! `huddle load-test` over two `huddle serve --redis` nodes on a real redis-server: the clients
//! are spread over both, and plays of a publisher on the other node get media (the relay between
//! nodes).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

// The server tests' redis-server helper, shared rather than copied; its restart is not used here.
#[path = "../../huddle-server/tests/common/redis.rs"]
#[allow(dead_code)]
mod redis;

const APP_ID: &str = "4243";
const APP_SIGN: &str = "8f3a1c2b4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";

/// A cluster node; killed on drop.
struct Node {
    child: Child,
    addr: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `huddle serve` as cluster node `id` on `redis`, with the test's app and the cluster secret that
/// lets nodes pull each other's streams, on free ports (everything in its configuration file).
fn node(redis: &str, id: &str) -> Node {
    let dir = std::env::temp_dir().join(format!("huddle-load-cluster-{}-{id}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("huddle.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\ngrace_ms = 1000\nredis = {redis:?}\nnode_id = {id:?}\n\
             cluster_secret = \"a secret the test nodes share\"\n\n[[apps]]\napp_id = {APP_ID}\napp_sign = \"{APP_SIGN}\"\n\
             server_secret = \"0123456789abcdef0123456789abcdef\"\n",
            dir.join("data")
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_huddle"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--udp-port",
            "0",
            "--tcp-port",
            "0",
        ])
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start huddle serve");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut addr = String::new();
    for line in lines.by_ref() {
        if let Some(a) = line.unwrap().trim().strip_prefix("huddle server listening on ") {
            addr = a.to_string();
            break;
        }
    }
    assert!(!addr.is_empty(), "node {id} did not start");
    std::thread::spawn(move || for _ in lines {});
    Node { child, addr }
}

#[test]
fn load_test_spreads_clients_over_two_nodes_and_plays_cross_nodes() {
    let redis = redis::RedisServer::start();
    let a = node(&redis.url, "load-a");
    let b = node(&redis.url, "load-b");
    let out = Command::new(env!("CARGO_BIN_EXE_huddle"))
        .args(["load-test", "--server", &format!("ws://{}", a.addr)])
        .args(["--server", &format!("ws://{}", b.addr)])
        .args(["--app-id", APP_ID, "--app-sign", APP_SIGN])
        .args(["--publishers", "2", "--subscribers", "2", "--duration", "2"])
        .args(["--join-timeout", "15", "--json", "--quiet"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}\n{stdout}\n{stderr}", out.status);
    let r: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(r["publishers_joined"], 2, "{r}");
    assert_eq!(r["play_streams_joined"], 4, "{r}");
    let servers = r["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 2, "{r}");
    for (s, addr) in servers.iter().zip([&a.addr, &b.addr]) {
        assert_eq!(s["url"], format!("ws://{addr}/ws"));
        // Publisher p on node p mod 2, subscriber s on node (s + 1) mod 2: one of each per node.
        assert_eq!(
            (&s["publishers"], &s["subscribers"]),
            (&1.into(), &1.into()),
            "{s}"
        );
        assert_eq!(s["logins"], 2, "{s}");
        assert_eq!(s["publishes_joined"], 1, "{s}");
        assert_eq!(s["failures"], 0, "{s}");
        // Each subscriber plays both publishers: one on its node, one across.
        assert_eq!(s["plays"], 2, "{s}");
        assert_eq!(s["cross_node_plays"], 1, "{s}");
        assert_eq!(s["cross_node_plays_with_media"], 1, "{s}");
        assert_eq!(s["plays_with_media"], 2, "{s}");
    }
    assert!(r["delivered_packets"].as_u64().unwrap() > 0, "{r}");
}
