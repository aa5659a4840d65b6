//! The generator against the B0 relay on 127.0.0.1, in process: 2 publishers × 3 subscribers for
//! 2 seconds of plain UDP.

use std::time::Duration;

use huddle_load::{Plan, Relay};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_udp_through_the_relay() {
    let relay = Relay::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut plan = Plan::default();
    plan.publishers = 2;
    plan.subscribers = 3;
    plan.duration = Duration::from_secs(2);
    plan.join_timeout = Duration::from_secs(5);
    plan.max_run = Duration::from_secs(20);
    plan.server = Some(relay.proc_target());
    let report = huddle_load::run_plain(relay.local_addr(), plan).await.unwrap();
    let stats = relay.stop().unwrap();
    println!("{}", report.to_table());
    assert_eq!(report.publishers_joined, 2);
    assert_eq!(report.play_streams_joined, 6);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    // 2 publishers × 50/s × ~2 s, each to 3 subscribers.
    assert!(
        (190..=210).contains(&report.sent_packets),
        "{}",
        report.sent_packets
    );
    assert_eq!(report.expected_packets, report.sent_packets * 3);
    // Loopback on a shared machine: allow a packet or two.
    assert!(report.loss < 0.01, "loss {}", report.loss);
    assert!(
        (270.0..=330.0).contains(&report.delivered_pps),
        "{}",
        report.delivered_pps
    );
    let latency = report.latency_ms.unwrap();
    assert!(latency.p50 < 50.0, "{latency:?}");
    assert!(report.jitter_ms_mean.unwrap() < 20.0);
    assert_eq!(report.first_packet_ms.unwrap().n, 6);
    let server = report.server.as_ref().unwrap();
    assert!(server.tid.is_some());
    assert!(stats.forwarded >= report.delivered_packets);
    // The JSON carries the same numbers (to serde_json's float precision: compare as JSON).
    let back: huddle_load::Report = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(back.delivered_packets, report.delivered_packets);
    assert_eq!(back.errors, report.errors);
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(json["target"], "b0-relay");
    assert!(json["server"]["cpu_us_per_packet"].is_number());
}
