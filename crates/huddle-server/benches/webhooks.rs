//! Webhook delivery, one node (the data-directory log) and a cluster of three (the log in
//! Redis), side by side in one run (`cargo bench -p huddle-server --bench webhooks`; needs
//! `redis-server`, as the cluster tests):
//!
//! - **Delay**: users log in and out one after another (one every 20 ms, round-robin over the
//!   nodes), the receiver up; the delay of each `room_login` / `room_logout` is its arrival at the
//!   receiver minus the event's own time (`login_time` / `logout_time`, Unix ms, taken where the
//!   registry changed). p50 and p95.
//! - **Throughput**: the receiver answers 503 while users log in and out as fast as the test
//!   clients can (a backlog); then it comes back, and the backlog's delivery rate through the one
//!   receiver is measured from its first to its last event.
//!
//! Sizes: `HUDDLE_HOOK_BENCH_PACED` (default 200 logins) and `HUDDLE_HOOK_BENCH_BACKLOG`
//! (default 1000 logins, each with its logout).

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::StatusCode;
use common::Client;
use common::redis::RedisServer;
use huddle_proto::ClientMsg;
use huddle_server::{BackgroundServer, WebhookConfig};
use parking_lot::Mutex;
use serde_json::Value;

#[derive(Clone, Default)]
struct Receiver {
    down: Arc<AtomicBool>,
    /// Each event taken: its arrival (Unix ms, fractional) and body.
    got: Arc<Mutex<Vec<(f64, Value)>>>,
}

fn unix_ms_f() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1000.0
}

async fn hook(State(r): State<Receiver>, body: String) -> StatusCode {
    if r.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let at = unix_ms_f();
    if let Ok(v) = serde_json::from_str::<Value>(&body) {
        r.got.lock().push((at, v));
    }
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

fn node(redis: Option<&RedisServer>, id: &str, url: &str, dir: &std::path::Path) -> BackgroundServer {
    let mut config = common::config();
    config.apps[0].webhooks = vec![WebhookConfig {
        url: url.to_string(),
        callback_secret: None,
    }];
    config.data_dir = dir.join(id);
    // Every test client comes from 127.0.0.1, faster than a real one would.
    config.connection_rate_per_ip = 100_000;
    config.connection_burst_per_ip = 100_000;
    config.max_connections_per_ip = 100_000;
    if let Some(r) = redis {
        config.redis = Some(r.url.clone());
        config.node_id = Some(id.into());
        config.cluster_lease = Duration::from_secs(3);
    }
    BackgroundServer::start(config).unwrap()
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

async fn logout(c: &mut Client) {
    let seq = c.next_seq();
    c.ok(ClientMsg::Logout { seq }).await;
}

async fn wait_for(r: &Receiver, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while r.got.lock().len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} events came",
            r.got.lock().len()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

struct Figures {
    p50: f64,
    p95: f64,
    rate: f64,
    events: usize,
}

async fn run(name: &str, nodes: &[BackgroundServer], r: &Receiver) -> Figures {
    let paced = env("HUDDLE_HOOK_BENCH_PACED", 200);
    let backlog = env("HUDDLE_HOOK_BENCH_BACKLOG", 1000);
    // A member that keeps the room open on every node, so that room_create / room_close do not
    // come and go with each login.
    let mut keep = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        keep.push(Client::login(n, &format!("keep-{i}")).await);
    }
    let base = nodes.len() + 1; // room_create and the keepers' logins
    wait_for(r, base).await;
    // Delay: paced logins and logouts.
    let start = r.got.lock().len();
    for i in 0..paced {
        let n = &nodes[i % nodes.len()];
        let mut c = Client::login(n, &format!("p{i}")).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
        logout(&mut c).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    wait_for(r, start + 2 * paced).await;
    let mut delays: Vec<f64> = r.got.lock()[start..]
        .iter()
        .filter_map(|(at, e)| {
            let t = e["login_time"]
                .as_str()
                .filter(|_| e["event"] == "room_login")
                .or(e["logout_time"].as_str())?
                .parse::<f64>()
                .ok()?;
            Some(at - t)
        })
        .collect();
    delays.sort_by(f64::total_cmp);
    // Throughput: a backlog while the receiver is down, then delivered.
    r.down.store(true, Ordering::SeqCst);
    for i in 0..backlog {
        let n = &nodes[i % nodes.len()];
        let mut c = Client::login(n, &format!("b{i}")).await;
        logout(&mut c).await;
    }
    // Every event appended (the writers are quick; the deliverer is in its backoff).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = r.got.lock().len();
    r.down.store(false, Ordering::SeqCst);
    wait_for(r, before + 2 * backlog).await;
    let got = r.got.lock();
    let burst = &got[before..before + 2 * backlog];
    let span = (burst[burst.len() - 1].0 - burst[0].0) / 1000.0;
    let rate = (burst.len() - 1) as f64 / span;
    let seqs: Vec<u64> = got.iter().map(|(_, e)| e["seq"].as_u64().unwrap_or(0)).collect();
    let gapless = seqs.windows(2).all(|w| w[1] == w[0] + 1);
    println!(
        "{name}: {} events, delay p50 {:.1} ms p95 {:.1} ms over {} events; backlog of {} delivered at {:.0} events/s; sequence {}",
        got.len(),
        pct(&delays, 0.5),
        pct(&delays, 0.95),
        delays.len(),
        burst.len(),
        rate,
        if gapless { "gap-free" } else { "WITH GAPS" },
    );
    Figures {
        p50: pct(&delays, 0.5),
        p95: pct(&delays, 0.95),
        rate,
        events: got.len(),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("webhooks: bench");
        return;
    }
    let dir = std::env::temp_dir().join(format!("huddle-hook-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);

    let (r1, url1) = start_receiver().await;
    let single = [node(None, "single", &url1, &dir)];
    let one = run("one node (data directory)", &single, &r1).await;
    for n in single {
        n.stop();
    }

    let redis = RedisServer::start();
    let (r3, url3) = start_receiver().await;
    let cluster = [
        node(Some(&redis), "bench-a", &url3, &dir),
        node(Some(&redis), "bench-b", &url3, &dir),
        node(Some(&redis), "bench-c", &url3, &dir),
    ];
    let three = run("three nodes (Redis)", &cluster, &r3).await;
    for n in cluster {
        n.stop();
    }
    println!();
    println!("| | one node | three nodes on Redis |");
    println!("| --- | --- | --- |");
    println!(
        "| delay event → receiver, p50 | {:.1} ms | {:.1} ms |",
        one.p50, three.p50
    );
    println!(
        "| delay event → receiver, p95 | {:.1} ms | {:.1} ms |",
        one.p95, three.p95
    );
    println!(
        "| backlog through one receiver | {:.0} events/s | {:.0} events/s |",
        one.rate, three.rate
    );
    println!("| events | {} | {} |", one.events, three.events);
    let _ = std::fs::remove_dir_all(&dir);
}
