//! The cluster store against a real `redis-server` (Debian's, installed by `scripts/test.sh`):
//! each test starts its own on a free loopback port with a temporary directory, and stops it.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use huddle_proto::{AppId, StreamId};
use huddle_server::registry::SessionId;
use huddle_server::store::{Claim, RedisStore, Store, StoreError};

/// A `redis-server` of the test's own, killed on drop.
struct RedisServer {
    child: Child,
    dir: std::path::PathBuf,
    url: String,
}

impl RedisServer {
    fn start() -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("huddle-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test.sh: apt-get install -y redis-server)");
        let server = RedisServer {
            child,
            dir,
            url: format!("redis://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn session(n: u64) -> SessionId {
    n.to_string().parse().unwrap()
}

fn stream(s: &str) -> StreamId {
    StreamId::new(s).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_from_several_nodes_have_exactly_one_winner() {
    let redis = RedisServer::start();
    let app = AppId::new(1).unwrap();
    let mut nodes = Vec::new();
    for n in 0..4 {
        let store = RedisStore::connect(&redis.url, &format!("node-{n}"), Duration::from_secs(10))
            .await
            .unwrap();
        nodes.push(Arc::new(store));
    }
    const ROUNDS: usize = 100;
    const PER_NODE: u64 = 8;
    for round in 0..ROUNDS {
        let id = stream(&format!("race-{round}"));
        let mut claims = Vec::new();
        for (n, node) in nodes.iter().enumerate() {
            for k in 0..PER_NODE {
                let (node, id) = (node.clone(), id.clone());
                let who = session(n as u64 * 1000 + k + 1);
                claims.push(tokio::spawn(async move {
                    (who, node.claim_stream(app, &id, who).await.unwrap())
                }));
            }
        }
        let mut winners = Vec::new();
        for c in claims {
            let (who, claim) = c.await.unwrap();
            if claim == Claim::Won {
                winners.push(who);
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
        // The winner claims again: still its own; the same ID in another app is free.
        let w = winners[0];
        let owner = &nodes[(w.get() / 1000) as usize];
        assert_eq!(owner.claim_stream(app, &id, w).await.unwrap(), Claim::Won);
        let other_app = AppId::new(2).unwrap();
        assert_eq!(
            nodes[0]
                .claim_stream(other_app, &id, session(99_999))
                .await
                .unwrap(),
            Claim::Won
        );
    }
    // A release frees the ID for the others; releasing what one does not hold changes nothing.
    let id = stream("race-0");
    let taken = nodes[1].claim_stream(app, &id, session(5)).await.unwrap();
    if taken == Claim::Taken {
        nodes[1].release_stream(app, &id, session(5)).await.unwrap();
        assert_eq!(
            nodes[1].claim_stream(app, &id, session(5)).await.unwrap(),
            Claim::Taken
        );
    }
    for node in &nodes {
        node.leave().await.unwrap();
    }
    assert_eq!(
        nodes[1]
            .claim_stream(app, &id, session(5))
            .await
            .unwrap_err()
            .to_string(),
        StoreError::LeaseLost.to_string(),
        "a node that left claims nothing"
    );
}

#[tokio::test]
async fn a_dead_nodes_ids_are_free_after_its_lease_and_it_is_fenced_out() {
    let redis = RedisServer::start();
    let app = AppId::new(1).unwrap();
    let lease = Duration::from_millis(600);
    let a = RedisStore::connect(&redis.url, "node-a", lease).await.unwrap();
    let b = RedisStore::connect(&redis.url, "node-b", lease).await.unwrap();
    let id = stream("s1");
    let kept = stream("s2");
    assert_eq!(a.claim_stream(app, &id, session(1)).await.unwrap(), Claim::Won);
    assert_eq!(b.claim_stream(app, &id, session(2)).await.unwrap(), Claim::Taken);
    // Renewals keep the lease, and what the node holds, past the lease's length.
    assert_eq!(b.claim_stream(app, &kept, session(2)).await.unwrap(), Claim::Won);
    let start = Instant::now();
    let mut a_renewed = Instant::now();
    while start.elapsed() < lease * 2 {
        a.renew_lease().await.unwrap();
        a_renewed = Instant::now();
        b.renew_lease().await.unwrap();
        tokio::time::sleep(lease / 4).await;
    }
    assert_eq!(b.claim_stream(app, &id, session(2)).await.unwrap(), Claim::Taken);
    // Node A stops renewing (it died, or is cut off): after its lease, its IDs are free.
    let start = Instant::now();
    let won = loop {
        b.renew_lease().await.unwrap();
        if b.claim_stream(app, &id, session(2)).await.unwrap() == Claim::Won {
            break a_renewed.elapsed();
        }
        assert!(start.elapsed() < lease * 4, "the dead node's ID is still taken");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        won + Duration::from_millis(100) >= lease,
        "freed after {won:?}, before the lease ended"
    );
    // A comes back: its renewal tells it the lease was lost, and under its new lease it wins
    // nothing B holds.
    let old_epoch = a.epoch();
    assert!(matches!(a.renew_lease().await, Err(StoreError::LeaseLost)));
    assert!(a.epoch() > old_epoch);
    assert_eq!(a.claim_stream(app, &id, session(1)).await.unwrap(), Claim::Taken);
    assert_eq!(
        a.claim_stream(app, &kept, session(1)).await.unwrap(),
        Claim::Taken
    );
    // B leaves cleanly: its IDs are free at once.
    b.leave().await.unwrap();
    assert_eq!(a.claim_stream(app, &id, session(1)).await.unwrap(), Claim::Won);
    assert_eq!(a.claim_stream(app, &kept, session(1)).await.unwrap(), Claim::Won);
}

#[tokio::test]
async fn a_node_that_cannot_reach_its_redis_fails_with_an_error_not_a_hang() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let start = Instant::now();
    let r = RedisStore::connect(
        &format!("redis://127.0.0.1:{port}"),
        "node-x",
        Duration::from_secs(10),
    )
    .await;
    assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
    assert!(start.elapsed() < Duration::from_secs(10), "{:?}", start.elapsed());
}
