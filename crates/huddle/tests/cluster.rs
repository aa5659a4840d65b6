//! Two in-process nodes on a real `redis-server`, through the SDK: a stream published on node A
//! and played on node B is pulled from A once and fanned out on B (`docs/cluster.md`, "Playing
//! a stream of another node").

mod common;
// The server tests' own Redis helper: one copy of how a test starts and stops its redis-server.
#[path = "../../huddle-server/tests/common/redis.rs"]
#[allow(dead_code)]
mod redis;

use std::time::Duration;

use common::quality::{padded_speech, score, tmp};
use common::{APP_ID, Events, app, engine_with, first_audio_frame, user};
use huddle::{AudioSink, AudioSource, Engine, EngineProfile, PlayerState, PublisherState, RoomConfig};
use huddle_server::{BackgroundServer, ServerConfig};
use redis::RedisServer;

/// The tests run one at a time: each runs two nodes and four engines, and on a shared 2-core
/// machine a second one beside it makes the side-by-side comparison a comparison of loads.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// How long a test waits for what the cluster does by itself (a lease to end): generous, since
/// the machine is shared; the tests assert what happens, not how fast.
const CLUSTER_WAIT: Duration = Duration::from_secs(30);

/// A node of the test cluster on `redis`, with a 1 s lease and the cluster's secret.
fn node(redis: &RedisServer, id: &str) -> BackgroundServer {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut config = ServerConfig::for_tests(vec![app()]);
    config.redis = Some(redis.url.clone());
    config.node_id = Some(id.into());
    config.cluster_lease = Duration::from_secs(1);
    config.cluster_secret = Some("a secret the test nodes share".into());
    BackgroundServer::start(config).expect("node starts")
}

/// A voice-only engine of the test app logged in to `room` on `server`.
fn voice(server: &BackgroundServer, room: &str, user_id: &str) -> (Engine, Events) {
    let mut p = EngineProfile::new(APP_ID, server.ws_url());
    p.app_sign = Some(app().app_sign.to_hex());
    p.config = common::fast_config();
    let (engine, mut events) = engine_with(p);
    engine.enable_camera(false);
    engine
        .login_room(room, user(user_id), RoomConfig::default())
        .unwrap();
    events.room(huddle::RoomStateChangedReason::Logined);
    (engine, events)
}

/// The speech sample published on node A, heard at once by a player on A and a player on B
/// (pulled over the link): the two recordings of the one call, scored side by side.
#[test]
fn speech_played_on_another_node_scores_as_on_the_publishers_node() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let redis = RedisServer::start();
    let a = node(&redis, "node-a");
    let b = node(&redis, "node-b");
    let sent = tmp("cluster-sent.wav");
    let heard_a = tmp("cluster-heard-a.wav");
    let heard_b = tmp("cluster-heard-b.wav");
    padded_speech(&sent, Duration::from_secs(2));

    let (near, mut en) = voice(&a, "relay", "near");
    let (far, mut ef) = voice(&b, "relay", "far");
    near.set_audio_sink(AudioSink::Wav(heard_a.clone())).unwrap();
    far.set_audio_sink(AudioSink::Wav(heard_b.clone())).unwrap();
    near.start_playing_stream("speech").unwrap();
    far.start_playing_stream("speech").unwrap();

    let (alice, mut ea) = voice(&a, "relay", "alice");
    alice
        .set_audio_source(AudioSource::Wav {
            path: sent.clone(),
            looped: false,
        })
        .unwrap();
    alice.start_publishing_stream("speech").unwrap();
    ea.publisher("speech", PublisherState::Publishing);
    for (events, who) in [
        (&mut en, "the player on node A"),
        (&mut ef, "the player on node B"),
    ] {
        events.wait_for(&format!("the first audio frame at {who}"), CLUSTER_WAIT, |e| {
            matches!(e, huddle::Event::PlayerRecvAudioFirstFrame { stream_id } if stream_id.as_str() == "speech")
        });
    }
    // The lead-in (2 s), the speech (3.7 s) and the tail (0.5 s), with room to spare.
    std::thread::sleep(Duration::from_secs(7));
    near.set_audio_sink(AudioSink::Discard).unwrap();
    far.set_audio_sink(AudioSink::Discard).unwrap();
    let (a_stats, b_stats) = (a.media_stats(), b.media_stats());
    far.destroy();
    near.destroy();
    alice.destroy();

    let on_a = score(&heard_a);
    let on_b = score(&heard_b);
    eprintln!("same node: {on_a}\nother node: {on_b}");
    let pesq = |s: &serde_json::Value| {
        s["pesq"]
            .as_f64()
            .unwrap_or_else(|| panic!("no PESQ (is PyPI `pesq` installed? scripts/test.sh does it): {s}"))
    };
    assert!(pesq(&on_a) > 3.0, "the call on one node is clean: {on_a}");
    assert!(
        pesq(&on_b) >= pesq(&on_a) - 0.1,
        "the pulled stream scores within 0.1 PESQ of the same call on one node: {} vs {}",
        pesq(&on_b),
        pesq(&on_a)
    );
    // Node B received the stream once (the link) and forwarded it to its one player.
    assert!(b_stats.rtp_in > 0 && b_stats.rtp_forwarded > 0, "{b_stats:?}");
    // Node A: the publisher and two players (one of them the link).
    assert_eq!(a_stats.pcs_connected, 3, "{a_stats:?}");
}

/// Three players on node B cost node A one player (the link); when A dies, B's players hear
/// that the stream is gone (`play_update` false: their player state falls back to
/// PlayRequesting).
#[test]
fn three_players_on_another_node_cost_one_link_and_hear_when_its_node_dies() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let redis = RedisServer::start();
    let a = node(&redis, "node-a");
    let b = node(&redis, "node-b");
    let (alice, mut ea) = voice(&a, "relay3", "alice");
    alice.set_audio_source(AudioSource::Tone { hz: 440.0 }).unwrap();
    alice.start_publishing_stream("tone").unwrap();
    ea.publisher("tone", PublisherState::Publishing);

    let mut players = Vec::new();
    for name in ["p1", "p2", "p3"] {
        let (engine, mut events) = voice(&b, "relay3", name);
        engine.start_playing_stream("tone").unwrap();
        first_audio_frame(&mut events, "tone");
        events.player("tone", PlayerState::Playing);
        players.push((engine, events));
    }
    let a_stats = a.media_stats();
    assert_eq!(
        a_stats.pcs_connected, 2,
        "node A serves its publisher and one link, whatever the players on B: {a_stats:?}"
    );
    // Over a second of the stream, with the three players connected: every packet node B
    // receives once goes out three times.
    let before = b.media_stats();
    std::thread::sleep(Duration::from_secs(1));
    let after = b.media_stats();
    let received = after.rtp_in - before.rtp_in;
    let forwarded = after.rtp_forwarded - before.rtp_forwarded;
    assert!(
        received > 0 && forwarded >= 3 * received - 3,
        "node B fans the one received stream out to its three players: {received} in, {forwarded} out"
    );

    // Node A dies: no lease renewal, no leave, its links cut.
    a.state().abandon_cluster();
    drop(a);
    for (_, events) in &mut players {
        events.wait_for("the stream gone with its node", CLUSTER_WAIT, |e| {
            matches!(e, huddle::Event::PlayerStateUpdate { stream_id, state: PlayerState::PlayRequesting, .. } if stream_id.as_str() == "tone")
        });
    }
    for (engine, _) in players {
        engine.destroy();
    }
    alice.destroy();
}
