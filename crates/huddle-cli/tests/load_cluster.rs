//! `huddle load-test` over two `huddle serve --redis` nodes on a real redis-server: the clients
//! are spread over both, and plays of a publisher on the other node get media (the relay between
//! nodes).

mod common;

use common::{APP_ID, APP_SIGN, Serve, huddle, serve_command, tempdir, write_config};
use serde_json::Value;

// The server tests' redis-server helper, shared rather than copied; its restart is not used here.
#[path = "../../huddle-server/tests/common/redis.rs"]
#[allow(dead_code)]
mod redis;

/// `huddle serve` as cluster node `id` on `redis`, with the tests' app and the cluster secret that
/// lets nodes pull each other's streams, on free ports (everything in its configuration file).
fn node(redis: &str, id: &str) -> Serve {
    let dir = tempdir(&format!("load-cluster-{id}"));
    let config = write_config(
        dir.join("huddle.toml"),
        &format!(
            "data_dir = {:?}\ngrace_ms = 1000\nredis = {redis:?}\nnode_id = {id:?}\n\
             cluster_secret = \"a secret the test nodes share\"\n",
            dir.join("data")
        ),
    );
    Serve::try_start(serve_command().arg("--config").arg(&config))
        .unwrap_or_else(|banner| panic!("node {id} did not start: {banner:?}"))
}

#[test]
fn load_test_spreads_clients_over_two_nodes_and_plays_cross_nodes() {
    let redis = redis::RedisServer::start();
    let a = node(&redis.url, "load-a");
    let b = node(&redis.url, "load-b");
    let out = huddle()
        .args(["load-test", "--server", &a.url, "--server", &b.url])
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
