//! HTTPS and WSS served by the server itself (`tls_cert`, `tls_key`), on real sockets on
//! 127.0.0.1 with a test CA made by rcgen: the page, the API, the probes and signaling over TLS;
//! plain HTTP and `ws://` against the TLS port; handshakes that never finish; bad certificate
//! files.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::certs::TestCerts;
use common::{Client, WAIT};
use huddle_proto::ServerMsg;
use huddle_server::{BackgroundServer, ServerConfig};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn tls_config(certs: &TestCerts) -> ServerConfig {
    let mut config = common::config();
    config.tls_cert = Some(certs.cert_file.clone());
    config.tls_key = Some(certs.key_file.clone());
    config
}

/// One HTTPS GET (HTTP/1.1, `Connection: close`) to `host` (a name or an IP in the
/// certificate): the negotiated ALPN protocol, the status and the body.
async fn https_get(
    addr: SocketAddr,
    host: &str,
    config: Arc<rustls::ClientConfig>,
    path: &str,
) -> (String, u16, String) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(config);
    let name = ServerName::try_from(host.to_string()).unwrap();
    let mut tls = tokio::time::timeout(WAIT, connector.connect(name, tcp))
        .await
        .expect("TLS handshake timed out")
        .expect("TLS handshake");
    let alpn = String::from_utf8_lossy(tls.get_ref().1.alpn_protocol().unwrap_or_default()).into_owned();
    tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(WAIT, tls.read_to_end(&mut response))
        .await
        .expect("response timed out");
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (alpn, status, body)
}

#[tokio::test]
async fn https_serves_the_page_the_api_the_probes_and_wss_signaling() {
    let certs = TestCerts::new("server-https");
    let server = BackgroundServer::start(tls_config(&certs)).unwrap();
    assert!(
        server.ws_url().starts_with("wss://127.0.0.1:"),
        "{}",
        server.ws_url()
    );
    assert!(
        server.http_url().starts_with("https://127.0.0.1:"),
        "{}",
        server.http_url()
    );
    let client = common::tls_client(&certs, &[b"h2", b"http/1.1"]);
    let addr = server.addr();

    let (alpn, status, body) = https_get(addr, "localhost", client.clone(), "/").await;
    assert_eq!(alpn, "http/1.1", "the server offers HTTP/1.1 only");
    assert_eq!(status, 200);
    assert!(body.contains("<html") || body.contains("<!doctype"), "{body}");
    let (_, status, body) = https_get(addr, "127.0.0.1", client.clone(), "/sdk/huddle.js").await;
    assert_eq!(status, 200);
    assert!(body.contains("export"), "{}", &body[..body.len().min(200)]);
    let (_, status, body) = https_get(addr, "localhost", client.clone(), "/api/info").await;
    assert_eq!(status, 200);
    let info: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info["protocol"], 1, "{info}");
    assert!(info["live"].is_object(), "asked from loopback: {info}");
    assert_eq!(
        https_get(addr, "localhost", client.clone(), "/healthz").await.1,
        200
    );
    let (_, status, body) = https_get(addr, "localhost", client.clone(), "/readyz").await;
    assert_eq!((status, body.as_str()), (200, "ready"));

    // Signaling over WSS: two users log in, one publishes and the other sees the stream.
    let mut ws_client = (*client).clone();
    ws_client.alpn_protocols = vec![b"http/1.1".to_vec()];
    let ws_client = Arc::new(ws_client);
    let wss = |url: String| {
        let connector = tokio_tungstenite::Connector::Rustls(ws_client.clone());
        async move {
            tokio_tungstenite::connect_async_tls_with_config(url, None, false, Some(connector))
                .await
                .expect("wss connect")
                .0
        }
    };
    let mut alice = Client::login_ws(wss(server.ws_url()).await, "alice").await;
    let url = server.ws_url().replace("127.0.0.1", "localhost");
    let mut bob = Client::login_ws(wss(url).await, "bob").await;
    alice.publish("over-tls").await;
    bob.wait_for(|m| {
        matches!(m, ServerMsg::StreamUpdate { streams, .. }
            if streams.iter().any(|s| s.stream_id.as_str() == "over-tls"))
    })
    .await;
    assert!(bob.play("over-tls").await, "the stream is available to bob");
    assert_eq!(server.stats().sessions, 2);
}

#[tokio::test]
async fn plain_http_and_ws_on_the_tls_port_fail_cleanly() {
    let certs = TestCerts::new("server-plain");
    let server = BackgroundServer::start(tls_config(&certs)).unwrap();
    // A plain WebSocket client gets an HTTP error, at once, not a hang.
    let url = server.ws_url().replace("wss://", "ws://");
    let result = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("a plain ws:// client hangs on the TLS port");
    let err = result.expect_err("a plain ws:// client connected to the TLS port");
    assert!(err.to_string().contains("400"), "{err}");
    // A plain HTTP client is told what to use.
    let mut tcp = TcpStream::connect(server.addr()).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut answer))
        .await
        .expect("the answer to plain HTTP never ends")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 400") && answer.contains("https://"),
        "{answer}"
    );
    // The server serves TLS clients as before.
    let client = common::tls_client(&certs, &[b"h2", b"http/1.1"]);
    assert_eq!(
        https_get(server.addr(), "localhost", client, "/healthz").await.1,
        200
    );
}

/// Whether the server closed `s`: reads until the end or an error (at most `within`).
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 256];
    let end = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(end, s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn handshakes_that_never_finish_are_cut_and_hold_up_nobody() {
    let certs = TestCerts::new("server-stall");
    let mut config = tls_config(&certs);
    config.login_timeout = Duration::from_millis(500);
    let server = BackgroundServer::start(config).unwrap();
    // One sends nothing; one sends the start of a ClientHello record and stops.
    let started = std::time::Instant::now();
    let mut silent = TcpStream::connect(server.addr()).await.unwrap();
    let mut stalled = TcpStream::connect(server.addr()).await.unwrap();
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x00, 0xc8, 0x01, 0x00])
        .await
        .unwrap();
    // Meanwhile others are served.
    let client = common::tls_client(&certs, &[b"h2", b"http/1.1"]);
    assert_eq!(
        https_get(server.addr(), "localhost", client.clone(), "/healthz")
            .await
            .1,
        200
    );
    // Both are closed once the login timeout has passed (generous bound: a busy machine), and
    // not before: the timeout closes them.
    assert!(
        closed_within(&mut silent, Duration::from_secs(10)).await,
        "silent connection kept"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(450),
        "{:?}",
        started.elapsed()
    );
    assert!(
        closed_within(&mut stalled, Duration::from_secs(10)).await,
        "stalled handshake kept"
    );
    // A connection that finished its handshake but sends no request is closed too.
    let tcp = TcpStream::connect(server.addr()).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(client);
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf))
        .await
        .expect("an idle TLS connection stays open");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}

#[tokio::test]
async fn untrusted_certificates_are_refused_by_clients() {
    // The server's certificate is signed by a CA the client does not know.
    let certs = TestCerts::new("server-untrusted");
    let other = TestCerts::new("server-other-ca");
    let server = BackgroundServer::start(tls_config(&certs)).unwrap();
    let tcp = TcpStream::connect(server.addr()).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(common::tls_client(&other, &[b"h2", b"http/1.1"]));
    let err = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect_err("a certificate from an unknown CA was accepted");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
}

#[test]
fn bad_certificate_files_are_config_errors_that_name_the_file() {
    let certs = TestCerts::new("server-bad");
    let try_start = |cert: &std::path::Path, key: &std::path::Path| {
        let mut config = common::config();
        config.tls_cert = Some(cert.to_path_buf());
        config.tls_key = Some(key.to_path_buf());
        BackgroundServer::start(config).map(drop).unwrap_err()
    };
    let missing = certs.dir.join("missing.pem");
    let e = try_start(&missing, &certs.key_file);
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    assert!(e.to_string().contains("missing.pem"), "{e}");
    let e = try_start(&certs.cert_file, &missing);
    assert!(e.to_string().contains("missing.pem"), "{e}");
    // The key where the certificate should be, and the other way round.
    let e = try_start(&certs.key_file, &certs.key_file).to_string();
    assert!(
        e.contains("privkey.pem") && e.contains("no PEM certificate"),
        "{e}"
    );
    let e = try_start(&certs.cert_file, &certs.cert_file).to_string();
    assert!(
        e.contains("fullchain.pem") && e.contains("no PEM private key"),
        "{e}"
    );
    // A key that is not the certificate's.
    let other = TestCerts::new("server-bad-other");
    let e = try_start(&certs.cert_file, &other.key_file).to_string();
    assert!(e.contains("not usable together"), "{e}");

    // The command says so and exits with 2, the configuration error's code.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_huddle-server"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--udp-port",
            "0",
            "--tcp-port",
            "0",
            "--tls-cert",
        ])
        .arg(&missing)
        .arg("--tls-key")
        .arg(&certs.key_file)
        .env("HUDDLE_DATA_DIR", &certs.dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("missing.pem") && !stderr.contains("panicked"),
        "{stderr}"
    );
}
