//! The cluster store against a real `redis-server` (Debian's, installed by `scripts/test.sh`):
//! each test starts its own on a free loopback port with a temporary directory, and stops it.

mod common;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use huddle_proto::{AppId, DeviceState, StreamId, TrackKind};
use huddle_server::registry::RoomChange;
use huddle_server::registry::SessionId;
use huddle_server::store::{Claim, Claimant, RedisStore, Store, StoreError};

use common::redis::RedisServer;

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

// ----- rooms across nodes: real servers on one real Redis -----

use common::{APP, Client, ROOM, WAIT};
use futures_util::SinkExt;
use huddle_proto::{ClientMsg, ErrorCode, LoginOk, RoomId, ServerMsg, StreamInfo, UpdateType, User, UserId};
use huddle_server::BackgroundServer;
use tokio_tungstenite::tungstenite::Message;

/// How long a test waits for something the cluster does by itself (a lease to end, a Redis
/// restart to settle): generous, since the machine is shared; the tests assert what happens,
/// not how fast.
const CLUSTER_WAIT: Duration = Duration::from_secs(30);

/// A node of the test cluster: the media test config on `redis` as `node`, with a short lease.
fn node(redis: &RedisServer, node: &str, lease: Duration) -> BackgroundServer {
    node_with(redis, node, lease, |_| {})
}

/// [`node`] with a change of its config.
fn node_with(
    redis: &RedisServer,
    node: &str,
    lease: Duration,
    change: impl FnOnce(&mut huddle_server::ServerConfig),
) -> BackgroundServer {
    let mut config = common::config();
    config.redis = Some(redis.url.clone());
    config.node_id = Some(node.into());
    config.cluster_lease = lease;
    change(&mut config);
    BackgroundServer::start(config).unwrap()
}

/// Logs `user` in to the test room on `server`, asking for user updates: the reply (`login_ok`
/// or `error`) and the client.
async fn try_join(server: &BackgroundServer, user: &str) -> (Client, ServerMsg) {
    try_join_room(server, ROOM, user).await
}

/// [`try_join`] to room `room`.
async fn try_join_room(server: &BackgroundServer, room: &str, user: &str) -> (Client, ServerMsg) {
    let (ws, _) = tokio_tungstenite::connect_async(server.ws_url()).await.unwrap();
    Client::try_login_ws(ws, room, user, true).await
}

async fn join(server: &BackgroundServer, user: &str) -> (Client, LoginOk) {
    match try_join(server, user).await {
        (c, ServerMsg::LoginOk(ok)) => (c, ok),
        (_, other) => panic!("login of {user} refused: {other:?}"),
    }
}

/// Logs in, retrying while the answer is 1009009 (the store is away or settling), until
/// `CLUSTER_WAIT`.
async fn join_when_ready(server: &BackgroundServer, user: &str) -> (Client, LoginOk) {
    let deadline = Instant::now() + CLUSTER_WAIT;
    loop {
        match try_join(server, user).await {
            (c, ServerMsg::LoginOk(ok)) => return (c, ok),
            (_, ServerMsg::Error { code, .. }) if code == ErrorCode::CLUSTER_UNAVAILABLE => {
                assert!(Instant::now() < deadline, "the cluster never took {user}'s login");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (_, other) => panic!("login of {user} refused: {other:?}"),
        }
    }
}

fn user(u: &str) -> User {
    User::new(UserId::new(u).unwrap())
}

fn info(u: &str, s: &str) -> StreamInfo {
    StreamInfo {
        user_id: UserId::new(u).unwrap(),
        user_name: huddle_proto::UserName::new(u).unwrap(),
        stream_id: stream(s),
        extra_info: String::new(),
        mic_state: DeviceState::Open,
        camera_state: DeviceState::Open,
    }
}

fn users_msg(t: UpdateType, u: &str) -> ServerMsg {
    ServerMsg::UserUpdate {
        room_id: RoomId::new(ROOM).unwrap(),
        update_type: t,
        users: vec![user(u)],
    }
}

fn streams_msg(t: UpdateType, u: &str, s: &str) -> ServerMsg {
    ServerMsg::StreamUpdate {
        room_id: RoomId::new(ROOM).unwrap(),
        update_type: t,
        streams: vec![info(u, s)],
    }
}

/// The next room event (`user_update` or `stream_update`) of `c`, kept ones first.
async fn room_event(c: &mut Client, within: Duration) -> ServerMsg {
    next_where(c, within, |m| {
        matches!(m, ServerMsg::UserUpdate { .. } | ServerMsg::StreamUpdate { .. })
    })
    .await
}

/// Sends a publish and returns the reply: `Ok` or the error code.
async fn try_publish(c: &mut Client, s: &str) -> Result<(), ErrorCode> {
    let seq = c.next_seq();
    let reply = c
        .request(ClientMsg::Publish {
            seq,
            stream_id: stream(s),
            extra_info: String::new(),
        })
        .await;
    match reply {
        ServerMsg::Ok { .. } => Ok(()),
        ServerMsg::Error { code, .. } => Err(code),
        other => panic!("unexpected reply to publish: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_spans_nodes_and_each_node_sees_the_others_changes_in_order() {
    let redis = RedisServer::start();
    let a = node(&redis, "node-a", Duration::from_secs(10));
    let b = node(&redis, "node-b", Duration::from_secs(10));
    let c3 = node(&redis, "node-c", Duration::from_secs(10));
    let (mut alice, _) = join(&a, "alice").await;
    alice.publish("s-alice").await;
    // A change reaches the store just after its own answer: wait for it, so that what Bob's
    // login lists is known (a login racing a change gets it as an event right after login_ok).
    assert!(a.state().cluster_barrier().await);
    // Bob logs in through B and sees the whole room: A's user and stream.
    let (mut bob, ok) = join(&b, "bob").await;
    assert_eq!(ok.users, vec![user("alice")]);
    assert_eq!(ok.streams, vec![info("alice", "s-alice")]);
    assert_eq!(
        room_event(&mut alice, WAIT).await,
        users_msg(UpdateType::Add, "bob")
    );
    assert!(b.state().cluster_barrier().await);
    // A third node: its user sees both others.
    let (mut dave, ok) = join(&c3, "dave").await;
    assert_eq!(ok.users, vec![user("alice"), user("bob")]);
    assert_eq!(
        room_event(&mut bob, WAIT).await,
        users_msg(UpdateType::Add, "dave")
    );
    // Carol comes and goes on A; Bob on B and Dave on C see each step, in order.
    let (mut carol, _) = join(&a, "carol").await;
    carol.publish("s-carol").await;
    carol.unpublish("s-carol").await;
    let seq = carol.next_seq();
    carol.ok(ClientMsg::Logout { seq }).await;
    let expected = [
        users_msg(UpdateType::Add, "carol"),
        streams_msg(UpdateType::Add, "carol", "s-carol"),
        streams_msg(UpdateType::Delete, "carol", "s-carol"),
        users_msg(UpdateType::Delete, "carol"),
    ];
    for watcher in [&mut bob, &mut dave] {
        for e in &expected {
            assert_eq!(&room_event(watcher, WAIT).await, e);
        }
    }
    // Stream IDs stay unique across the nodes; a stream published on B reaches A.
    assert_eq!(
        try_publish(&mut bob, "s-alice").await,
        Err(ErrorCode::STREAM_ID_EXISTS)
    );
    bob.publish("s-bob").await;
    // Alice saw Dave and Carol meanwhile; Bob's stream comes after them.
    let mut seen = Vec::new();
    loop {
        let e = room_event(&mut alice, WAIT).await;
        if e == streams_msg(UpdateType::Add, "bob", "s-bob") {
            break;
        }
        seen.push(e);
    }
    assert_eq!(seen[0], users_msg(UpdateType::Add, "dave"));
    assert_eq!(&seen[1..], &expected[..]);
    // Alice leaves: her stream, then herself, leave for the others.
    let seq = alice.next_seq();
    alice.ok(ClientMsg::Logout { seq }).await;
    for watcher in [&mut bob, &mut dave] {
        let mut seen = Vec::new();
        while seen.len() < 2 {
            let e = room_event(watcher, WAIT).await;
            // Dave also sees Bob's stream come.
            if e != streams_msg(UpdateType::Add, "bob", "s-bob") {
                seen.push(e);
            }
        }
        assert_eq!(
            seen,
            vec![
                streams_msg(UpdateType::Delete, "alice", "s-alice"),
                users_msg(UpdateType::Delete, "alice"),
            ]
        );
    }
    let view = c3
        .state()
        .room(AppId::new(APP).unwrap(), &RoomId::new(ROOM).unwrap())
        .unwrap();
    assert_eq!(view.users, vec![user("bob"), user("dave")]);
    assert_eq!(view.streams, vec![info("bob", "s-bob")]);
    assert_eq!(a.stats().rooms, 0, "A follows no room any more");
    for s in [a, b, c3] {
        s.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_users_and_streams_leave_for_the_others_and_its_ids_are_free() {
    let redis = RedisServer::start();
    let lease = Duration::from_secs(1);
    let a = node(&redis, "node-a", lease);
    let b = node(&redis, "node-b", lease);
    let (mut alice, _) = join(&a, "alice").await;
    alice.publish("s-alice").await;
    assert!(a.state().cluster_barrier().await);
    let (mut bob, ok) = join(&b, "bob").await;
    assert_eq!(ok.streams, vec![info("alice", "s-alice")]);
    assert_eq!(
        try_publish(&mut bob, "s-alice").await,
        Err(ErrorCode::STREAM_ID_EXISTS)
    );
    // Node A dies without a word to the store (as under SIGKILL): no renewal, no leave.
    a.state().abandon_cluster();
    let died = Instant::now();
    drop(alice);
    a.stop();
    // Within its lease (and a reap), Bob sees A's stream and user leave; no ghost stays.
    let ev = room_event(&mut bob, CLUSTER_WAIT).await;
    let gone_after = died.elapsed();
    assert_eq!(ev, streams_msg(UpdateType::Delete, "alice", "s-alice"));
    assert_eq!(
        room_event(&mut bob, WAIT).await,
        users_msg(UpdateType::Delete, "alice")
    );
    let view = b
        .state()
        .room(AppId::new(APP).unwrap(), &RoomId::new(ROOM).unwrap())
        .unwrap();
    assert_eq!(view.users, vec![user("bob")]);
    assert!(view.streams.is_empty());
    // A newcomer sees no ghost either, and A's stream ID is free.
    let (_erin, ok) = join(&b, "erin").await;
    assert_eq!(ok.users, vec![user("bob")]);
    assert!(ok.streams.is_empty());
    bob.publish("s-alice").await;
    println!(
        "a dead node's user and stream left for the others {gone_after:?} after it died (lease {lease:?})"
    );
    b.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_redis_restart_the_nodes_restore_the_room_and_no_stream_id_is_handed_out_twice() {
    let mut redis = RedisServer::start();
    let lease = Duration::from_secs(1);
    let a = node(&redis, "node-a", lease);
    let b = node(&redis, "node-b", lease);
    let (mut alice, _) = join(&a, "alice").await;
    alice.publish("s-alice").await;
    let (mut bob, _) = join(&b, "bob").await;
    bob.publish("s-bob").await;
    // Redis dies and comes back empty.
    redis.restart();
    let restarted = Instant::now();
    // Bob asks for A's stream ID over and over: never granted. Once A has claimed it again the
    // answer is "taken"; before, "retry" (the store is away or settling).
    let deadline = Instant::now() + CLUSTER_WAIT;
    let mut retries = 0;
    loop {
        match try_publish(&mut bob, "s-alice").await {
            Err(ErrorCode::STREAM_ID_EXISTS) => break,
            Err(ErrorCode::CLUSTER_UNAVAILABLE) => retries += 1,
            other => panic!("a stream ID published on A was answered {other:?} on B"),
        }
        assert!(Instant::now() < deadline, "A never claimed its stream ID again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reclaimed = restarted.elapsed();
    // The other way round too, and a new ID is granted once the store settled.
    let deadline = Instant::now() + CLUSTER_WAIT;
    loop {
        match try_publish(&mut alice, "s-new").await {
            Ok(()) => break,
            Err(ErrorCode::CLUSTER_UNAVAILABLE) => {}
            other => panic!("a fresh stream ID was answered {other:?}"),
        }
        assert!(Instant::now() < deadline, "the store never settled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        try_publish(&mut alice, "s-bob").await,
        Err(ErrorCode::STREAM_ID_EXISTS)
    );
    assert!(a.state().cluster_barrier().await);
    // Both nodes put their part of the room back: a newcomer on either sees all of it.
    let all_streams = vec![
        info("alice", "s-alice"),
        info("bob", "s-bob"),
        info("alice", "s-new"),
    ];
    for (server, name) in [(&a, "carol"), (&b, "dave")] {
        let (_c, ok) = join_when_ready(server, name).await;
        let mut users: Vec<_> = ok.users.iter().map(|u| u.user_id.to_string()).collect();
        users.retain(|u| u != "carol");
        assert_eq!(users, vec!["alice", "bob"], "{name} on {server:?}");
        assert_eq!(ok.streams, all_streams, "{name} on {server:?}");
    }
    println!(
        "after a Redis restart: A's stream ID re-claimed {reclaimed:?} later ({retries} publishes answered 1009009 meanwhile)"
    );
    let _ = alice.ws.send(Message::Close(None)).await;
    a.stop();
    b.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_new_logins_fail_closed_and_calls_in_progress_keep_their_media() {
    let mut redis = RedisServer::start();
    let a = node(&redis, "node-a", Duration::from_secs(1));
    let (mut alice, _) = join(&a, "alice").await;
    let (mut bob, _) = join(&a, "bob").await;
    alice.publish("s1").await;
    let mut publisher = common::start_publisher(&mut alice, "s1").await;
    assert!(bob.play("s1").await);
    let mut player = common::start_player(&mut bob, "s1").await;
    common::connect(&mut [&mut publisher, &mut player]).await;
    redis.kill();
    // A new login is refused with 1009009; so is a new stream ID.
    match try_join(&a, "carol").await.1 {
        ServerMsg::Error { code, .. } => assert_eq!(code, ErrorCode::CLUSTER_UNAVAILABLE),
        other => panic!("a login without the cluster store was answered {other:?}"),
    }
    assert_eq!(
        try_publish(&mut alice, "s2").await,
        Err(ErrorCode::CLUSTER_UNAVAILABLE)
    );
    // The call goes on: signaling answers and the media flows, in order.
    bob.ping().await;
    let sent = common::stream_audio(&mut [&mut publisher, &mut player], 100).await;
    common::assert_in_order(&sent, &player.got);
    // Redis comes back: logins are taken again, and the room is whole for them.
    redis.restart();
    let (_carol, ok) = join_when_ready(&a, "carol").await;
    assert_eq!(ok.users, vec![user("alice"), user("bob")]);
    assert_eq!(ok.streams, vec![info("alice", "s1")]);
    a.stop();
}

/// The next message of `c` that `pred` picks, kept ones first ([`Client::wait_for`]), within
/// `within`.
async fn next_where(c: &mut Client, within: Duration, pred: impl Fn(&ServerMsg) -> bool) -> ServerMsg {
    tokio::time::timeout(within, c.wait_for(pred))
        .await
        .expect("no such message came")
}

/// A publisher's mute on node A reaches its player on node B, and a user joining through node C
/// later sees it in the room's streams and gets it when it plays the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publishers_mute_reaches_players_on_other_nodes_and_late_joiners() {
    let redis = RedisServer::start();
    let a = node(&redis, "node-a", Duration::from_secs(10));
    let b = node(&redis, "node-b", Duration::from_secs(10));
    let c3 = node(&redis, "node-c", Duration::from_secs(10));
    let (mut alice, _) = join(&a, "alice").await;
    alice.publish("s-alice").await;
    assert!(a.state().cluster_barrier().await);
    let (mut bob, _) = join(&b, "bob").await;
    let seq = bob.next_seq();
    bob.ok(ClientMsg::Play {
        seq,
        stream_id: stream("s-alice"),
    })
    .await;
    let muted = ServerMsg::RemoteDeviceState {
        stream_id: stream("s-alice"),
        track: TrackKind::Audio,
        state: DeviceState::Mute,
    };
    let is_device = |m: &ServerMsg| matches!(m, ServerMsg::RemoteDeviceState { .. });
    let seq = alice.next_seq();
    alice
        .ok(ClientMsg::SetDeviceState {
            seq,
            stream_id: stream("s-alice"),
            track: TrackKind::Audio,
            state: DeviceState::Mute,
        })
        .await;
    assert_eq!(next_where(&mut bob, WAIT, is_device).await, muted);
    assert!(a.state().cluster_barrier().await);
    let (mut carol, ok) = join(&c3, "carol").await;
    assert_eq!(ok.streams.len(), 1);
    assert_eq!(ok.streams[0].mic_state, DeviceState::Mute);
    let seq = carol.next_seq();
    carol
        .ok(ClientMsg::Play {
            seq,
            stream_id: stream("s-alice"),
        })
        .await;
    assert_eq!(next_where(&mut carol, WAIT, is_device).await, muted);
    // Unmuted: both players hear of it, and nobody gets a stream update for it.
    let seq = alice.next_seq();
    alice
        .ok(ClientMsg::SetDeviceState {
            seq,
            stream_id: stream("s-alice"),
            track: TrackKind::Audio,
            state: DeviceState::Open,
        })
        .await;
    let open = ServerMsg::RemoteDeviceState {
        stream_id: stream("s-alice"),
        track: TrackKind::Audio,
        state: DeviceState::Open,
    };
    assert_eq!(next_where(&mut bob, WAIT, is_device).await, open);
    assert_eq!(next_where(&mut carol, WAIT, is_device).await, open);
    assert!(
        !bob.events
            .iter()
            .any(|m| matches!(m, ServerMsg::StreamUpdate { .. })),
        "a mute is not a stream update: {:?}",
        bob.events
    );
}

/// The next message of `c` that `pred` picks (kept events first), within `within`; the others
/// are kept.
async fn next_msg(
    c: &mut Client,
    within: Duration,
    what: &str,
    pred: impl Fn(&ServerMsg) -> bool,
) -> ServerMsg {
    if let Some(i) = c.events.iter().position(&pred) {
        return c.events.remove(i);
    }
    tokio::time::timeout(within, async {
        loop {
            let m = c.recv_any().await;
            if pred(&m) {
                return m;
            }
            c.events.push(m);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {what} came"))
}

fn broadcast_text(m: &ServerMsg) -> Option<&str> {
    match m {
        ServerMsg::BroadcastMessage { message, .. } => Some(message),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_commands_and_extra_info_cross_nodes_in_order() {
    let redis = RedisServer::start();
    let a = node(&redis, "node-a", Duration::from_secs(10));
    let b = node(&redis, "node-b", Duration::from_secs(10));
    let c3 = node(&redis, "node-c", Duration::from_secs(10));
    let (mut alice, _) = join(&a, "alice").await;
    assert!(a.state().cluster_barrier().await);
    let (mut bob, _) = join(&b, "bob").await;
    let (mut carol, _) = join(&b, "carol").await;
    // Node A knows Bob and Carol before Alice names Bob in a custom command.
    assert_eq!(
        room_event(&mut alice, WAIT).await,
        users_msg(UpdateType::Add, "bob")
    );
    assert_eq!(
        room_event(&mut alice, WAIT).await,
        users_msg(UpdateType::Add, "carol")
    );

    // Broadcast messages from A reach B's users in order, with the IDs their sender got.
    let mut ids = Vec::new();
    for text in ["one", "two"] {
        let seq = alice.next_seq();
        match alice
            .request(ClientMsg::SendBroadcastMessage {
                seq,
                message: text.into(),
            })
            .await
        {
            ServerMsg::MessageSent { message_id, .. } => ids.push(message_id),
            other => panic!("expected message_sent, got {other:?}"),
        }
    }
    for watcher in [&mut bob, &mut carol] {
        for (text, id) in ["one", "two"].into_iter().zip(&ids) {
            let m = next_msg(watcher, WAIT, "broadcast message", |m| {
                broadcast_text(m).is_some()
            })
            .await;
            assert_eq!(broadcast_text(&m), Some(text));
            assert!(
                matches!(m, ServerMsg::BroadcastMessage { message_id, ref from_user, .. } if message_id == *id && from_user.user_id.as_str() == "alice")
            );
        }
    }
    // And the other way: B to A.
    let seq = bob.next_seq();
    assert!(matches!(
        bob.request(ClientMsg::SendBroadcastMessage {
            seq,
            message: "from b".into()
        })
        .await,
        ServerMsg::MessageSent { .. }
    ));
    let m = next_msg(&mut alice, WAIT, "broadcast from B", |m| {
        broadcast_text(m).is_some()
    })
    .await;
    assert_eq!(broadcast_text(&m), Some("from b"));

    // A custom command from A to Bob on B reaches Bob alone.
    let seq = alice.next_seq();
    alice
        .ok(ClientMsg::SendCustomCommand {
            seq,
            command: "psst".into(),
            to_users: vec![UserId::new("bob").unwrap()],
        })
        .await;
    let m = next_msg(&mut bob, WAIT, "custom command", |m| {
        matches!(m, ServerMsg::CustomCommand { .. })
    })
    .await;
    assert!(matches!(m, ServerMsg::CustomCommand { ref command, .. } if command == "psst"));

    // Room extra info set on A reaches B's users; stream extra info too.
    let seq = alice.next_seq();
    alice
        .ok(ClientMsg::SetRoomExtraInfo {
            seq,
            key: "topic".into(),
            value: "planning".into(),
        })
        .await;
    alice.publish("s-alice").await;
    let seq = alice.next_seq();
    alice
        .ok(ClientMsg::SetStreamExtraInfo {
            seq,
            stream_id: stream("s-alice"),
            extra_info: "on stage".into(),
        })
        .await;
    for watcher in [&mut bob, &mut carol] {
        let m = next_msg(watcher, WAIT, "room extra info", |m| {
            matches!(m, ServerMsg::RoomExtraInfoUpdate { .. })
        })
        .await;
        assert!(
            matches!(m, ServerMsg::RoomExtraInfoUpdate { ref infos, .. } if infos[0].value == "planning" && infos[0].update_user.user_id.as_str() == "alice")
        );
        let m = next_msg(watcher, WAIT, "stream extra info", |m| {
            matches!(m, ServerMsg::StreamExtraInfoUpdate { .. })
        })
        .await;
        assert!(
            matches!(m, ServerMsg::StreamExtraInfoUpdate { ref streams, .. } if streams[0].extra_info == "on stage")
        );
    }
    // A late joiner on a node new to the room gets both from the store's snapshot.
    assert!(a.state().cluster_barrier().await);
    let (mut erin, ok) = join(&c3, "erin").await;
    assert_eq!(ok.streams[0].extra_info, "on stage");
    let m = next_msg(&mut erin, WAIT, "room extra info at login", |m| {
        matches!(m, ServerMsg::RoomExtraInfoUpdate { .. })
    })
    .await;
    assert!(
        matches!(m, ServerMsg::RoomExtraInfoUpdate { ref infos, .. } if infos[0].key == "topic" && infos[0].value == "planning")
    );
    let m = next_msg(&mut erin, WAIT, "online count", |m| {
        matches!(m, ServerMsg::RoomOnlineUserCount { .. })
    })
    .await;
    assert_eq!(
        m,
        ServerMsg::RoomOnlineUserCount {
            room_id: RoomId::new(ROOM).unwrap(),
            count: 4
        }
    );
    // Carol never got Bob's command, nor anyone their own messages.
    let carol_got = std::mem::take(&mut carol.events);
    assert!(
        !carol_got
            .iter()
            .any(|m| matches!(m, ServerMsg::CustomCommand { .. })),
        "{carol_got:?}"
    );
    assert!(
        !alice
            .events
            .iter()
            .any(|m| broadcast_text(m).is_some_and(|t| t != "from b"))
    );
    for s in [a, b, c3] {
        s.stop();
    }
}

// ----- failover without the lease, fencing, duplicate logins -----

fn alice_in(room: &RoomId, s: u64) -> Claimant {
    Claimant {
        session: session(s),
        room: room.clone(),
        user: UserId::new("alice").unwrap(),
    }
}

/// A newer login of the same user on another node takes a stream ID over from a live holder
/// (no wait for a lease); nobody else can, the older holder is fenced (its claims and
/// re-claims fail, its renewal reports the ID, its release changes nothing), and a restore of
/// the older login's user does not overwrite the newer one.
#[tokio::test]
async fn a_newer_login_of_the_same_user_takes_a_stream_id_over_and_the_older_holder_is_fenced() {
    let redis = RedisServer::start();
    let app = AppId::new(1).unwrap();
    let lease = Duration::from_secs(10);
    let a = RedisStore::connect(&redis.url, "node-a", lease).await.unwrap();
    let b = RedisStore::connect(&redis.url, "node-b", lease).await.unwrap();
    let c = RedisStore::connect(&redis.url, "node-c", lease).await.unwrap();
    let room = RoomId::new("r1").unwrap();
    let id = stream("s-alice");
    a.room_change(app, &room, &RoomChange::UserAdd(user("alice")))
        .await
        .unwrap();
    assert_eq!(
        a.claim_stream_for(app, &id, &alice_in(&room, 1)).await.unwrap(),
        Claim::Won
    );
    // Another user cannot take it; nor can Alice on B before B holds her entry in the room,
    // nor Alice in another room.
    let bob = Claimant {
        session: session(2),
        room: room.clone(),
        user: UserId::new("bob").unwrap(),
    };
    b.room_change(app, &room, &RoomChange::UserAdd(user("bob")))
        .await
        .unwrap();
    assert_eq!(b.claim_stream_for(app, &id, &bob).await.unwrap(), Claim::Taken);
    assert_eq!(
        b.claim_stream_for(app, &id, &alice_in(&room, 3)).await.unwrap(),
        Claim::Taken
    );
    let other_room = RoomId::new("r2").unwrap();
    b.room_change(app, &other_room, &RoomChange::UserAdd(user("alice")))
        .await
        .unwrap();
    assert_eq!(
        b.claim_stream_for(app, &id, &alice_in(&other_room, 3))
            .await
            .unwrap(),
        Claim::Taken
    );
    // Alice logs in to the room on B (the later login): B takes the ID over while A lives.
    b.room_change(app, &room, &RoomChange::UserAdd(user("alice")))
        .await
        .unwrap();
    assert_eq!(
        b.claim_stream_for(app, &id, &alice_in(&room, 3)).await.unwrap(),
        Claim::TakenOver
    );
    assert_eq!(
        b.claim_stream_for(app, &id, &alice_in(&room, 3)).await.unwrap(),
        Claim::Won
    );
    // A, only cut off and back now, cannot take it back: neither by a claim nor a re-claim.
    assert_eq!(
        a.claim_stream_for(app, &id, &alice_in(&room, 1)).await.unwrap(),
        Claim::Taken
    );
    assert_eq!(
        a.reclaim_stream(app, &id, session(1)).await.unwrap(),
        Claim::Taken
    );
    // Its renewal finds the ID taken over (once), and its release leaves B's claim alone.
    assert!(a.take_fenced().is_empty());
    a.renew_lease().await.unwrap();
    assert_eq!(a.take_fenced(), vec![(app, id.clone(), session(1))]);
    a.renew_lease().await.unwrap();
    assert!(a.take_fenced().is_empty(), "a fenced ID is reported once");
    a.release_stream(app, &id, session(1)).await.unwrap();
    a.release_session(session(1)).await.unwrap();
    assert_eq!(c.claim_stream(app, &id, session(9)).await.unwrap(), Claim::Taken);
    b.renew_lease().await.unwrap();
    assert!(b.take_fenced().is_empty(), "the new holder is not fenced");
    // A's restore of its (older) Alice does not overwrite B's (newer) entry; of a user nobody
    // else holds, it does.
    assert!(!a.restore_user(app, &room, &user("alice")).await.unwrap());
    let snap = c.room_snapshot(app, &room).await.unwrap();
    let owners: Vec<&str> = snap
        .users
        .iter()
        .filter(|(_, u)| u.user_id.as_str() == "alice")
        .map(|(o, _)| o.as_str())
        .collect();
    assert_eq!(owners, vec![b.owner().as_str()]);
    assert!(a.restore_user(app, &room, &user("dave")).await.unwrap());
    // The new holder's release frees the ID.
    b.release_session(session(3)).await.unwrap();
    assert_eq!(c.claim_stream(app, &id, session(9)).await.unwrap(), Claim::Won);
    for n in [&a, &b, &c] {
        n.leave().await.unwrap();
    }
}

/// Node A is cut off from the cluster (its lease still running) while its user Alice logs in
/// again on B and publishes her stream ID there: B gets the ID at once (no 1003028, no wait for
/// A's lease). When A comes back, its session of Alice finds itself fenced and stops (kicked as
/// a duplicate login, or its publish closed with 1009041), and no one saw Alice leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_node_finds_its_publish_taken_over_by_a_newer_login_and_stops() {
    let redis = RedisServer::start();
    let lease = Duration::from_secs(3);
    let a = node(&redis, "node-a", lease);
    let b = node(&redis, "node-b", lease);
    let (mut alice_a, _) = join(&a, "alice").await;
    alice_a.publish("s-alice").await;
    assert!(a.state().cluster_barrier().await);
    let (mut bob, ok) = join(&b, "bob").await;
    assert_eq!(ok.streams, vec![info("alice", "s-alice")]);
    a.state().cut_off_cluster(true);
    let (mut alice_b, _) = join(&b, "alice").await;
    assert_eq!(try_publish(&mut alice_b, "s-alice").await, Ok(()));
    assert!(b.state().cluster_barrier().await);
    // A comes back: its session of Alice stops.
    a.state().cut_off_cluster(false);
    let stop = next_where(&mut alice_a, CLUSTER_WAIT, |m| {
        matches!(m, ServerMsg::Kicked { code, .. } if *code == ErrorCode::KICKED_DUPLICATE_LOGIN)
            || matches!(m, ServerMsg::MediaState { code, .. } if *code == ErrorCode::STREAM_TAKEN_OVER)
    })
    .await;
    println!("the fenced session on the node that came back got {stop:?}");
    // Carol's login on A (after A read the room) lists Alice's stream once, held on B: A no
    // longer publishes it, and the ID stays B's.
    let app = AppId::new(APP).unwrap();
    let deadline = Instant::now() + CLUSTER_WAIT;
    while a.state().publishes_here(app, &stream("s-alice")) {
        assert!(
            Instant::now() < deadline,
            "node A still publishes the taken-over stream"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (mut carol, ok) = join(&a, "carol").await;
    assert_eq!(ok.streams, vec![info("alice", "s-alice")]);
    assert!(ok.users.contains(&user("alice")));
    assert_eq!(
        try_publish(&mut carol, "s-alice").await,
        Err(ErrorCode::STREAM_ID_EXISTS)
    );
    // Bob saw Carol come, and neither Alice nor her stream leave.
    assert!(a.state().cluster_barrier().await);
    assert_eq!(
        room_event(&mut bob, CLUSTER_WAIT).await,
        users_msg(UpdateType::Add, "carol")
    );
    assert!(
        !bob.events.iter().any(|m| matches!(
            m,
            ServerMsg::UserUpdate {
                update_type: UpdateType::Delete,
                ..
            } | ServerMsg::StreamUpdate {
                update_type: UpdateType::Delete,
                ..
            }
        )),
        "{:?}",
        bob.events
    );
    drop(alice_b);
    a.stop();
    b.stop();
}

/// Reads `c` until it is kicked as a duplicate login (`true`) or sees `marker` join the room
/// (`false`: its node read the room's history past every login before the marker's).
async fn kicked_before(c: &mut Client, marker: &str) -> bool {
    let m = next_where(c, CLUSTER_WAIT, |m| match m {
        ServerMsg::Kicked { .. } => true,
        ServerMsg::UserUpdate {
            update_type: UpdateType::Add,
            users,
            ..
        } => users.iter().any(|u| u.user_id.as_str() == marker),
        _ => false,
    })
    .await;
    match m {
        ServerMsg::Kicked { code, .. } => {
            assert_eq!(code, ErrorCode::KICKED_DUPLICATE_LOGIN);
            true
        }
        _ => false,
    }
}

/// The same user logs in on two of three nodes at the same moment, many times over: exactly
/// one of the two sessions is kicked (1002050), every time, and a user who joins afterwards
/// sees the user once, never leaving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_logins_of_one_user_on_two_nodes_have_one_winner() {
    let redis = RedisServer::start();
    let lease = Duration::from_secs(3);
    let nodes = [
        Arc::new(node(&redis, "node-a", lease)),
        Arc::new(node(&redis, "node-b", lease)),
        Arc::new(node(&redis, "node-c", lease)),
    ];
    let rounds: usize = std::env::var("HUDDLE_DUP_LOGIN_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let mut wins = [0usize; 2];
    for round in 0..rounds {
        let room = format!("dup-{round}");
        let (x, y, z) = (round % 3, (round + 1) % 3, (round + 2) % 3);
        let (first, second) = tokio::join!(
            try_join_room(&nodes[x], &room, "gina"),
            try_join_room(&nodes[y], &room, "gina")
        );
        let (mut first, mut second) = match (first, second) {
            ((c1, ServerMsg::LoginOk(_)), (c2, ServerMsg::LoginOk(_))) => (c1, c2),
            (a, b) => panic!("round {round}: a login was refused: {:?} {:?}", a.1, b.1),
        };
        assert!(nodes[x].state().cluster_barrier().await);
        assert!(nodes[y].state().cluster_barrier().await);
        // The marker's login comes after both in the room's history.
        let (mut marker, ok) = match try_join_room(&nodes[z], &room, "mark").await {
            (c, ServerMsg::LoginOk(ok)) => (c, ok),
            (_, other) => panic!("round {round}: marker refused: {other:?}"),
        };
        assert_eq!(ok.users, vec![user("gina")], "round {round}");
        let kicked = [
            kicked_before(&mut first, "mark").await,
            kicked_before(&mut second, "mark").await,
        ];
        assert_eq!(
            kicked.iter().filter(|k| **k).count(),
            1,
            "round {round}: kicked {kicked:?}"
        );
        wins[usize::from(kicked[0])] += 1;
        // The marker never sees Gina leave: the survivor's node holds her entry.
        assert!(nodes[z].state().cluster_barrier().await);
        let view = nodes[z]
            .state()
            .room(AppId::new(APP).unwrap(), &RoomId::new(&room).unwrap())
            .unwrap();
        assert_eq!(view.users, vec![user("gina"), user("mark")], "round {round}");
        assert!(
            !marker.events.iter().any(|m| matches!(
                m,
                ServerMsg::UserUpdate {
                    update_type: UpdateType::Delete,
                    ..
                }
            )),
            "round {round}: {:?}",
            marker.events
        );
        let seq = marker.next_seq();
        let _ = marker.request(ClientMsg::Logout { seq }).await;
    }
    println!(
        "{rounds} rounds: the first login won {} times, the second {}",
        wins[0], wins[1]
    );
    for n in nodes {
        if let Ok(n) = Arc::try_unwrap(n) {
            n.stop();
        }
    }
}

// ----- the AppID-wide stream limit -----

/// The keys in Redis matching `pattern`.
async fn keys(redis: &RedisServer, pattern: &str) -> Vec<String> {
    let client = redis::Client::open(redis.url.as_str()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("KEYS")
        .arg(pattern)
        .query_async(&mut con)
        .await
        .unwrap()
}

/// Concurrent claims of distinct stream IDs of one app from three nodes never exceed the
/// AppID-wide limit, and exactly the limit is granted; an ID held is `Taken`, not over the
/// limit; a release makes room for one more; a dead node's streams stop counting after its
/// lease; and nothing of the count is left in Redis when the nodes have left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_appid_wide_stream_limit_holds_across_nodes_and_a_dead_nodes_streams_stop_counting() {
    const LIMIT: usize = 5;
    let redis = RedisServer::start();
    let app = AppId::new(1).unwrap();
    let lease = Duration::from_millis(600);
    let mut nodes = Vec::new();
    for n in 0..3 {
        let store = RedisStore::connect(&redis.url, &format!("node-{n}"), lease)
            .await
            .unwrap()
            .with_stream_limit(LIMIT);
        nodes.push(Arc::new(store));
    }
    for round in 0..20 {
        let mut claims = Vec::new();
        for (n, node) in nodes.iter().enumerate() {
            for k in 0..8u64 {
                let node = node.clone();
                let who = session(n as u64 * 1000 + k + 1);
                let id = stream(&format!("r{round}-n{n}-k{k}"));
                claims.push(tokio::spawn(async move {
                    (
                        n,
                        who,
                        id.clone(),
                        node.claim_stream(app, &id, who).await.unwrap(),
                    )
                }));
            }
        }
        let mut won = Vec::new();
        for c in claims {
            let (n, who, id, claim) = c.await.unwrap();
            match claim {
                Claim::Won => won.push((n, who, id)),
                Claim::OverLimit => {}
                other => panic!("round {round}: {other:?}"),
            }
        }
        assert_eq!(won.len(), LIMIT, "round {round}: {won:?}");
        // An ID already held is taken, whatever the count.
        let (n, _, id) = &won[0];
        assert_eq!(
            nodes[(n + 1) % 3]
                .claim_stream(app, id, session(77_777))
                .await
                .unwrap(),
            Claim::Taken
        );
        // Another app has its own count.
        let other = AppId::new(2).unwrap();
        assert_eq!(
            nodes[0].claim_stream(other, id, session(88_888)).await.unwrap(),
            Claim::Won
        );
        nodes[0].release_session(session(88_888)).await.unwrap();
        // A release makes room for exactly one more.
        let (n, who, id) = won.pop().unwrap();
        nodes[n].release_stream(app, &id, who).await.unwrap();
        assert_eq!(
            nodes[2]
                .claim_stream(app, &stream("extra-1"), session(90_001))
                .await
                .unwrap(),
            Claim::Won
        );
        assert_eq!(
            nodes[1]
                .claim_stream(app, &stream("extra-2"), session(90_002))
                .await
                .unwrap(),
            Claim::OverLimit
        );
        nodes[2].release_session(session(90_001)).await.unwrap();
        for (n, who, _) in won {
            nodes[n].release_session(who).await.unwrap();
        }
    }
    // Node 0 holds three streams and dies (no renewal, no leave): while its lease holds they
    // count; once it has ended, they do not.
    for k in 0..3 {
        let id = stream(&format!("dead-{k}"));
        assert_eq!(
            nodes[0].claim_stream(app, &id, session(1)).await.unwrap(),
            Claim::Won
        );
    }
    for k in 0..2 {
        let id = stream(&format!("live-{k}"));
        assert_eq!(
            nodes[1].claim_stream(app, &id, session(2)).await.unwrap(),
            Claim::Won
        );
    }
    assert_eq!(
        nodes[2]
            .claim_stream(app, &stream("more-0"), session(3))
            .await
            .unwrap(),
        Claim::OverLimit
    );
    let start = Instant::now();
    loop {
        nodes[1].renew_lease().await.unwrap();
        nodes[2].renew_lease().await.unwrap();
        if nodes[2]
            .claim_stream(app, &stream("more-0"), session(3))
            .await
            .unwrap()
            == Claim::Won
        {
            break;
        }
        assert!(
            start.elapsed() < lease * 10,
            "the dead node's streams still count"
        );
        tokio::time::sleep(lease / 4).await;
    }
    for k in 1..3 {
        let id = stream(&format!("more-{k}"));
        assert_eq!(
            nodes[2].claim_stream(app, &id, session(3)).await.unwrap(),
            Claim::Won
        );
    }
    assert_eq!(
        nodes[2]
            .claim_stream(app, &stream("more-3"), session(3))
            .await
            .unwrap(),
        Claim::OverLimit
    );
    // The live nodes leave: the count's key goes with their streams, the dead node's entries
    // went in the sweep.
    nodes[1].leave().await.unwrap();
    nodes[2].leave().await.unwrap();
    assert_eq!(keys(&redis, "huddle:app:*").await, Vec::<String>::new());
}

/// Publishes of distinct stream IDs by clients on three nodes at once: exactly
/// `max_streams_per_app` of them succeed, the others are refused with 1003040.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_on_three_nodes_stop_at_the_appid_wide_limit() {
    const LIMIT: usize = 4;
    let redis = RedisServer::start();
    let lease = Duration::from_secs(3);
    let nodes: Vec<BackgroundServer> = ["node-a", "node-b", "node-c"]
        .into_iter()
        .map(|n| node_with(&redis, n, lease, |c| c.max_streams_per_app = LIMIT))
        .collect();
    let mut clients = Vec::new();
    for (n, server) in nodes.iter().enumerate() {
        for k in 0..3 {
            let (c, _) = join(server, &format!("u{n}{k}")).await;
            clients.push((format!("s{n}{k}"), c));
        }
    }
    let results = futures_util::future::join_all(
        clients
            .iter_mut()
            .map(|(s, c)| async move { try_publish(c, s).await }),
    )
    .await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let refused = results
        .iter()
        .filter(|r| **r == Err(ErrorCode::TOO_MANY_STREAMS))
        .count();
    assert_eq!((ok, refused), (LIMIT, clients.len() - LIMIT), "{results:?}");
    for n in nodes {
        n.stop();
    }
}

// ----- the linger of an idle pull -----

/// A player on node B stops a stream of node A: B's pull of it lingers (the registry's timer,
/// armed by the shell) and stops when the linger ends; a player who plays it again within the
/// linger keeps the pull (the linger is cancelled). The linger's logic is tested on virtual
/// time in the registry (`an_idle_pull_lingers_before_it_stops`); this is its wiring.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_pull_lingers_then_stops_and_a_player_coming_back_keeps_it() {
    let redis = RedisServer::start();
    let lease = Duration::from_secs(3);
    let a = node(&redis, "node-a", lease);
    let b = node_with(&redis, "node-b", lease, |c| {
        c.pull_linger = Duration::from_millis(300)
    });
    let c = node_with(&redis, "node-c", lease, |c| {
        c.pull_linger = Duration::from_secs(600)
    });
    let (mut alice, _) = join(&a, "alice").await;
    alice.publish("s-alice").await;
    assert!(a.state().cluster_barrier().await);
    let (app, s) = (AppId::new(APP).unwrap(), stream("s-alice"));
    // On B (short linger): the pull lingers after Bob stops, then stops by itself.
    let (mut bob, _) = join(&b, "bob").await;
    assert!(bob.play("s-alice").await);
    assert!(!b.state().pull_lingers(app, &s));
    stop_play(&mut bob, "s-alice").await;
    assert!(b.state().pull_lingers(app, &s), "the idle pull lingers");
    let deadline = Instant::now() + CLUSTER_WAIT;
    while b.state().pull_lingers(app, &s) {
        assert!(Instant::now() < deadline, "the linger never ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // On C (long linger): Carol comes back within it and keeps the pull.
    let (mut carol, _) = join(&c, "carol").await;
    assert!(carol.play("s-alice").await);
    stop_play(&mut carol, "s-alice").await;
    assert!(c.state().pull_lingers(app, &s));
    assert!(carol.play("s-alice").await);
    assert!(
        !c.state().pull_lingers(app, &s),
        "a player back cancels the linger"
    );
    // The stream leaves while a pull of it lingers: the pull stops with it.
    stop_play(&mut carol, "s-alice").await;
    assert!(c.state().pull_lingers(app, &s));
    alice.unpublish("s-alice").await;
    let deadline = Instant::now() + CLUSTER_WAIT;
    while c.state().pull_lingers(app, &s) {
        assert!(
            Instant::now() < deadline,
            "the pull of a stream that left lingers on"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for n in [a, b, c] {
        n.stop();
    }
}

/// Stops playing `s`.
async fn stop_play(c: &mut Client, s: &str) {
    let seq = c.next_seq();
    c.ok(ClientMsg::StopPlay {
        seq,
        stream_id: stream(s),
    })
    .await;
}

/// `publish` and its `media_offer` sent together, as the SDKs do; returns the replies to both
/// (the offer's: the answer's SDP or the error code).
async fn publish_with_offer(c: &mut Client, s: &str) -> (Result<(), ErrorCode>, Result<String, ErrorCode>) {
    let seq = c.next_seq();
    let publish = ClientMsg::Publish {
        seq,
        stream_id: stream(s),
        extra_info: String::new(),
    };
    c.ws.send(Message::text(publish.encode())).await.unwrap();
    let (_, sdp) = common::Peer::new(huddle_proto::MediaRole::Publish);
    let offer = c.next_seq();
    c.send_offer(offer, s, huddle_proto::MediaRole::Publish, sdp)
        .await;
    let reply = c
        .wait_for(
            |m| matches!(m, ServerMsg::Ok { seq: s } | ServerMsg::Error { seq: Some(s), .. } if *s == seq),
        )
        .await;
    let published = match reply {
        ServerMsg::Ok { .. } => Ok(()),
        ServerMsg::Error { code, .. } => Err(code),
        other => panic!("unexpected reply to publish: {other:?}"),
    };
    (published, c.offer_reply(offer).await)
}

/// A `media_offer` sent right behind its `publish` waits for the cluster store's claim: the
/// winner's is answered; on another node, in another room (so that only the store knows the
/// ID is taken), the loser's publish and its offer are both refused with the claim's code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offer_sent_with_its_publish_waits_for_the_claim_and_shares_its_refusal() {
    let redis = RedisServer::start();
    let a = node(&redis, "node-a", Duration::from_secs(10));
    let b = node(&redis, "node-b", Duration::from_secs(10));
    let (mut alice, _) = join(&a, "alice").await;
    let (published, answer) = publish_with_offer(&mut alice, "s-pipe").await;
    assert_eq!(published, Ok(()));
    assert!(answer.is_ok(), "{answer:?}");
    let (mut carol, reply) = try_join_room(&b, "another-room", "carol").await;
    assert!(matches!(reply, ServerMsg::LoginOk(_)), "{reply:?}");
    let (published, answer) = publish_with_offer(&mut carol, "s-pipe").await;
    assert_eq!(published, Err(ErrorCode::STREAM_ID_EXISTS));
    assert_eq!(answer, Err(ErrorCode::STREAM_ID_EXISTS));
    // A stream ID of her own goes through the claim and is answered.
    let (published, answer) = publish_with_offer(&mut carol, "s-carol").await;
    assert_eq!(published, Ok(()));
    assert!(answer.is_ok(), "{answer:?}");
}
