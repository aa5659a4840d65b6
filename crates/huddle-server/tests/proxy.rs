//! Behind a reverse proxy (`trusted_proxies`): the client address of a request from a trusted
//! proxy comes from `X-Forwarded-For` (the rightmost entry that is not a trusted proxy), for the
//! per-address WebSocket limits and the loopback-only counts of `/api/info`; from any other
//! address the header is ignored. A trusted proxy is not capped by the raw TCP limit.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::{WAIT, Ws, first_message};
use huddle_proto::ErrorCode;
use huddle_server::{BackgroundServer, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

fn config(trusted: &[&str]) -> ServerConfig {
    let mut config = common::config();
    config.trusted_proxies = trusted.iter().map(|p| p.parse::<IpAddr>().unwrap()).collect();
    config.max_connections_per_ip = 1;
    config.connection_rate_per_ip = 0;
    config
}

/// Opens a WebSocket with `X-Forwarded-For: xff` (if any); returns the first message (`hello`,
/// or the refusal's error code) and the socket.
async fn connect(server: &BackgroundServer, xff: Option<&str>) -> (Result<(), ErrorCode>, Ws) {
    let mut request = server.ws_url().into_client_request().unwrap();
    if let Some(xff) = xff {
        request
            .headers_mut()
            .insert("x-forwarded-for", HeaderValue::from_str(xff).unwrap());
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    (first_message(&mut ws).await, ws)
}

/// `GET /api/info` with `X-Forwarded-For: xff` (if any), as JSON.
async fn info(server: &BackgroundServer, xff: Option<&str>) -> serde_json::Value {
    let mut tcp = TcpStream::connect(server.addr()).await.unwrap();
    let header = xff.map_or(String::new(), |x| format!("X-Forwarded-For: {x}\r\n"));
    tcp.write_all(
        format!("GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\n{header}Connection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut response = String::new();
    tokio::time::timeout(WAIT, tcp.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    let body = response.split_once("\r\n\r\n").unwrap().1;
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {response}"))
}

#[tokio::test]
async fn forwarded_for_from_a_trusted_proxy_counts_per_client() {
    let server = BackgroundServer::start(config(&["127.0.0.1", "10.0.0.2"])).unwrap();
    // One connection per client address, and each client has its own count.
    let (first, _a) = connect(&server, Some("203.0.113.1")).await;
    assert_eq!(first, Ok(()));
    let (second, _b) = connect(&server, Some("203.0.113.2")).await;
    assert_eq!(second, Ok(()));
    let (again, _) = connect(&server, Some("203.0.113.1")).await;
    assert_eq!(again, Err(ErrorCode::SERVER_BUSY));
    // The rightmost entry that is not a trusted proxy is the client: what the client wrote
    // itself (left of it) changes nothing, and trusted hops (right of it) are skipped.
    let (spoofed, _) = connect(&server, Some("198.51.100.7, 203.0.113.2")).await;
    assert_eq!(spoofed, Err(ErrorCode::SERVER_BUSY));
    let (chained, _c) = connect(&server, Some("198.51.100.7, 203.0.113.3, 10.0.0.2")).await;
    assert_eq!(chained, Ok(()));
    let (again, _) = connect(&server, Some("203.0.113.3")).await;
    assert_eq!(again, Err(ErrorCode::SERVER_BUSY));
    // An entry may carry a port (IPv6 in brackets).
    let (v6, _d) = connect(&server, Some("[2001:db8::1]:4711")).await;
    assert_eq!(v6, Ok(()));
    let (v6_same_64, _) = connect(&server, Some("2001:db8::2")).await;
    assert_eq!(v6_same_64, Err(ErrorCode::SERVER_BUSY), "IPv6 counts by /64");
    // Without the header the proxy's own address counts.
    let (direct, _e) = connect(&server, None).await;
    assert_eq!(direct, Ok(()));
    let (direct_again, _) = connect(&server, None).await;
    assert_eq!(direct_again, Err(ErrorCode::SERVER_BUSY));

    // The loopback-only counts are for clients on loopback, not for everyone the proxy relays.
    assert!(info(&server, None).await["live"].is_object());
    assert!(info(&server, Some("127.0.0.1")).await["live"].is_object());
    let relayed = info(&server, Some("203.0.113.1")).await;
    assert!(relayed.get("live").is_none(), "{relayed}");
    let spoofed = info(&server, Some("203.0.113.1, 127.0.0.1")).await;
    assert!(spoofed.get("live").is_none(), "{spoofed}");
}

#[tokio::test]
async fn forwarded_for_from_an_untrusted_address_is_ignored() {
    // A proxy is trusted, but not the address the test connects from.
    let server = BackgroundServer::start(config(&["192.0.2.10"])).unwrap();
    let (first, _a) = connect(&server, Some("203.0.113.1")).await;
    assert_eq!(first, Ok(()));
    let (second, _) = connect(&server, Some("203.0.113.2")).await;
    assert_eq!(second, Err(ErrorCode::SERVER_BUSY), "counted as 127.0.0.1");
    // The header does not hide a loopback caller, nor make one of a stranger.
    assert!(info(&server, Some("203.0.113.1")).await["live"].is_object());
}

#[tokio::test]
async fn a_trusted_proxy_is_not_capped_by_the_tcp_limit() {
    let mut config = config(&["127.0.0.1"]);
    config.login_timeout = Duration::from_secs(30);
    let server = BackgroundServer::start(config).unwrap();
    // More raw connections than max_connections_per_ip + 64 from one address...
    let mut held = Vec::new();
    for _ in 0..80 {
        held.push(TcpStream::connect(server.addr()).await.unwrap());
    }
    // ...and the proxy's next request is still served.
    let live = info(&server, None).await;
    assert!(live["live"].is_object(), "{live}");
    let (ok, _ws) = connect(&server, Some("203.0.113.9")).await;
    assert_eq!(ok, Ok(()));
    drop(held);
}
