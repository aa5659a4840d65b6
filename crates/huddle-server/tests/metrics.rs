//! `/metrics`: the families a scrape shows after a login and a publish, Prometheus' own checker
//! (`promtool check metrics`, Debian's `prometheus`, installed by `scripts/test.sh`) on the text,
//! and who may scrape: loopback, or anyone with the bearer token.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use common::*;
use huddle_server::BackgroundServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "test-metrics-token-0123456789";

/// `GET /metrics` with extra header lines; returns the status and the body.
async fn scrape(addr: SocketAddr, headers: &str) -> (u16, String) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of the one sample of `name` (with its labels as written, e.g. `x{reason="a"}`).
fn sample(text: &str, name: &str) -> f64 {
    let line = text
        .lines()
        .find(|l| l.split_once(' ').is_some_and(|(n, _)| n == name))
        .unwrap_or_else(|| panic!("no sample {name} in:\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// Runs `promtool check metrics` on `text`; panics with its findings if it objects.
fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus; scripts/test.sh installs it)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn a_scrape_shows_the_call_and_passes_promtool() {
    let server = server();
    let (status, before) = scrape(server.addr(), "").await;
    assert_eq!(status, 200, "{before}");
    assert_eq!(sample(&before, "huddle_sessions"), 0.0);

    let mut alice = Client::login(&server, "alice").await;
    alice.publish("alice-main").await;
    let _bob = Client::login(&server, "bob").await;
    let (status, text) = scrape(server.addr(), "").await;
    assert_eq!(status, 200);
    assert_eq!(sample(&text, "huddle_sessions"), 2.0);
    assert_eq!(sample(&text, "huddle_rooms"), 1.0);
    assert_eq!(sample(&text, "huddle_streams"), 1.0);
    assert!(sample(&text, "huddle_connections") >= 2.0);
    assert_eq!(
        sample(&text, "huddle_login_duration_seconds_count{resumed=\"false\"}"),
        2.0
    );
    for family in [
        "huddle_udp_datagrams_received_total",
        "huddle_udp_datagrams_dropped_total{reason=\"unknown\"}",
        "huddle_rtp_packets_forwarded_total",
        "huddle_keyframe_requests_total",
        "huddle_peer_connections",
        "huddle_peer_connections_opened_total",
    ] {
        sample(&text, family);
    }
    promtool_check(&text);

    // Alice leaves: the gauges follow.
    drop(alice);
    let deadline = std::time::Instant::now() + WAIT * 6;
    loop {
        let (_, text) = scrape(server.addr(), "").await;
        if sample(&text, "huddle_streams") == 0.0 || std::time::Instant::now() > deadline {
            assert_eq!(sample(&text, "huddle_streams"), 0.0, "{text}");
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn only_loopback_or_the_token_may_scrape() {
    // The server believes 127.0.0.1 as a proxy, so a forwarded address stands for a stranger.
    let mut config = config();
    config.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    config.metrics_token = Some(TOKEN.into());
    let server = BackgroundServer::start(config).unwrap();
    let stranger = "X-Forwarded-For: 203.0.113.7\r\n";
    let (status, body) = scrape(server.addr(), stranger).await;
    assert_eq!(status, 403);
    assert!(body.contains("1009030"), "{body}");
    assert!(!body.contains("huddle_sessions"), "{body}");
    for wrong in [
        "Bearer nope",
        "Basic dGVzdA==",
        "Bearer test-metrics-token-012345678",
    ] {
        let (status, _) = scrape(server.addr(), &format!("{stranger}Authorization: {wrong}\r\n")).await;
        assert_eq!(status, 403, "{wrong}");
    }
    let (status, body) = scrape(
        server.addr(),
        &format!("{stranger}Authorization: Bearer {TOKEN}\r\n"),
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.contains("huddle_sessions 0"), "{body}");
    // Without a configured token, a stranger gets nothing whatever it sends.
    let mut config = common::config();
    config.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    let server = BackgroundServer::start(config).unwrap();
    let (status, _) = scrape(
        server.addr(),
        &format!("{stranger}Authorization: Bearer {TOKEN}\r\n"),
    )
    .await;
    assert_eq!(status, 403);
}

/// The sum of every sample of `name` (any labels), and how many there are.
fn samples(text: &str, name: &str) -> (f64, usize) {
    let mut sum = 0.0;
    let mut n = 0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        if series == name
            || series
                .strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{'))
        {
            sum += value.parse::<f64>().unwrap();
            n += 1;
        }
    }
    (sum, n)
}

#[tokio::test]
async fn a_real_call_moves_the_media_families() {
    use huddle_proto::MediaRole;
    let server = server();
    let mut alice = Client::login(&server, "alice").await;
    let mut bob = Client::login(&server, "bob").await;
    alice.publish("metered").await;
    let mut publisher = start_publisher(&mut alice, "metered").await;
    assert!(bob.play("metered").await);
    let mut player = start_player(&mut bob, "metered").await;
    connect(&mut [&mut publisher, &mut player]).await;
    alice.media_up("metered", MediaRole::Publish).await;
    bob.media_up("metered", MediaRole::Play).await;
    let sent = stream_audio(&mut [&mut publisher, &mut player], 100).await;
    let got = assert_in_order(&sent, &player.got);

    let (status, text) = scrape(server.addr(), "").await;
    assert_eq!(status, 200);
    let received = sample(&text, "huddle_rtp_payload_received_bytes_total");
    let forwarded = sample(&text, "huddle_rtp_payload_forwarded_bytes_total");
    let payload_sent: usize = sent.iter().map(Vec::len).sum();
    let payload_got: usize = player.got.iter().map(Vec::len).sum();
    println!(
        "{got}/100 packets; payload bytes sent {payload_sent}, received by the server {received}, \
         forwarded {forwarded}, reached the player {payload_got}"
    );
    // One player: everything received is forwarded (the test's publisher sends no RED).
    assert!(received > 0.0);
    assert!(received <= payload_sent as f64);
    assert!(forwarded >= received, "{forwarded} < {received}");
    assert!(forwarded >= payload_got as f64);
    // The first packet of each side was timed once.
    assert_eq!(
        sample(&text, "huddle_first_packet_seconds_count{role=\"publish\"}"),
        1.0
    );
    assert_eq!(
        sample(&text, "huddle_first_packet_seconds_count{role=\"play\"}"),
        1.0
    );
    let play_first = sample(&text, "huddle_first_packet_seconds_sum{role=\"play\"}");
    assert!(play_first > 0.0, "{play_first}");
    // The media threads used some CPU: at least shard 0, the receiving thread.
    let (cpu, shards) = samples(&text, "huddle_media_shard_cpu_seconds_total");
    assert!(shards >= 1, "{text}");
    assert!(cpu > 0.0, "{cpu}");
    assert!(sample(&text, "huddle_media_shard_cpu_seconds_total{shard=\"0\"}") > 0.0);
    // On loopback nothing is lost; the families are there, and counters.
    let lost = sample(&text, "huddle_rtp_packets_lost_total");
    assert!(lost <= (100 - got) as f64, "{lost}");
    sample(&text, "huddle_nacks_received_total");
    sample(&text, "huddle_nacks_sent_total");
    for family in [
        "huddle_first_packet_seconds",
        "huddle_media_shard_cpu_seconds_total",
        "huddle_nacks_received_total",
        "huddle_nacks_sent_total",
        "huddle_rtp_packets_lost_total",
    ] {
        let ty = if family.ends_with("_seconds") {
            "histogram"
        } else {
            "counter"
        };
        assert!(text.contains(&format!("# TYPE {family} {ty}\n")), "{family}");
    }
    // The join histogram's buckets span 10 ms to 10 s.
    for le in ["0.01", "10"] {
        sample(
            &text,
            &format!("huddle_login_duration_seconds_bucket{{resumed=\"false\",le=\"{le}\"}}"),
        );
        sample(
            &text,
            &format!("huddle_first_packet_seconds_bucket{{role=\"play\",le=\"{le}\"}}"),
        );
    }
    promtool_check(&text);
}
