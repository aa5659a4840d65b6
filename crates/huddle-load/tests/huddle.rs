//! The Huddle adapter against an in-process Huddle server (signaling + SFU): 2 publishers × 3
//! subscribers for 2 seconds, every client a WebRTC peer.

use std::sync::Arc;
use std::time::Duration;

use huddle_load::{HuddleTarget, Plan};
use huddle_server::{BackgroundServer, ServerConfig, test_app};

const APP: u32 = 77;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webrtc_through_huddle() {
    let server = BackgroundServer::start(ServerConfig::for_tests(vec![test_app(APP)])).unwrap();
    let target = Arc::new(HuddleTarget::new(server.ws_url(), APP, test_app(APP).app_sign));
    let mut plan = Plan::default();
    plan.publishers = 2;
    plan.subscribers = 3;
    plan.duration = Duration::from_secs(2);
    plan.join_timeout = Duration::from_secs(10);
    plan.max_run = Duration::from_secs(40);
    let report = huddle_load::run(target, plan).await.unwrap();
    println!("{}", report.to_table());
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.publishers_joined, 2);
    assert_eq!(report.play_streams_joined, 6);
    assert!(report.sent_packets >= 180, "{}", report.sent_packets);
    assert!(report.loss < 0.02, "loss {}", report.loss);
    // The kernel stamps every datagram: the latency to the socket is part of the whole.
    let latency = report.latency_ms.unwrap();
    let to_socket = report.latency_socket_ms.unwrap();
    assert_eq!(to_socket.n, latency.n);
    assert!(
        to_socket.p50 <= latency.p50 * 1.04 + 0.001,
        "{to_socket:?} vs {latency:?}"
    );
    let first = report.first_packet_ms.unwrap();
    assert_eq!(first.n, 6);
    // A connection whose first ICE check is lost waits for str0m's 250 ms STUN retransmission;
    // the generator once lost every first check (see `peer::drain`). Loopback joins take ~10 ms.
    let join = report.play_join_ms.unwrap();
    assert!(join.p50 < 200.0, "play join p50 {} ms", join.p50);
}
