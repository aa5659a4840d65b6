//! The reverse-proxy setups of `docs/deploy.md`, run for real: nginx and Caddy (Debian's
//! `nginx-light` and `caddy`, installed by `scripts/test.sh`) terminate TLS with a test
//! certificate on 127.0.0.1 and forward to the server, which lists 127.0.0.1 in
//! `trusted_proxies`. Clients connect from 127.0.0.2 and 127.0.0.3 (loopback addresses of their
//! own) through the proxy over `wss://`; each is counted under its own address by the
//! per-address limit, whatever `X-Forwarded-For` it sends itself.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::certs::TestCerts;
use common::{WAIT, Ws, first_message};
use huddle_proto::ErrorCode;
use huddle_server::BackgroundServer;
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// A proxy process, stopped on drop.
struct Proxy {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn proxy_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("huddle-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Starts `program` (its output in `{dir}/log`) and waits until it accepts on `port`.
fn start(mut cmd: Command, program: &str, port: u16, dir: PathBuf) -> Proxy {
    let log = dir.join("log");
    let out = std::fs::File::create(&log).unwrap();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program} (scripts/test.sh installs it): {e}"));
    let mut proxy = Proxy { child, port, dir };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = proxy.child.try_wait().unwrap() {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("{program} exited ({status}):\n{log}");
        }
        assert!(Instant::now() < deadline, "{program} does not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    proxy
}

/// nginx with the `server` block of docs/deploy.md (TLS on a test port, the test certificate).
fn nginx(upstream: SocketAddr, certs: &TestCerts) -> Proxy {
    let dir = proxy_dir("nginx");
    let port = free_port();
    let d = dir.display();
    let conf = format!(
        r#"
daemon off;
# One process, so that stopping it stops nginx (a master's workers would outlive a SIGKILL).
master_process off;
pid {d}/nginx.pid;
error_log stderr warn;
events {{}}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;

    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}

    server {{
        listen 127.0.0.1:{port} ssl;
        server_name localhost;

        ssl_certificate     {cert};
        ssl_certificate_key {key};
        ssl_protocols       TLSv1.2 TLSv1.3;

        location / {{
            proxy_pass http://{upstream};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
        }}
    }}
}}
"#,
        cert = certs.cert_file.display(),
        key = certs.key_file.display(),
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let mut cmd = Command::new(nginx_bin());
    cmd.arg("-p")
        .arg(&dir)
        .arg("-e")
        .arg("stderr")
        .arg("-c")
        .arg(&path);
    start(cmd, "nginx", port, dir)
}

fn nginx_bin() -> &'static Path {
    [Path::new("/usr/sbin/nginx"), Path::new("nginx")]
        .into_iter()
        .find(|p| p.exists())
        .unwrap_or(Path::new("nginx"))
}

/// Caddy with the site block of docs/deploy.md, its certificate given (`tls`) instead of
/// fetched: nothing leaves the machine.
fn caddy(upstream: SocketAddr, certs: &TestCerts) -> Proxy {
    let dir = proxy_dir("caddy");
    let port = free_port();
    let caddyfile = format!(
        "{{\n\tadmin off\n\tauto_https off\n\tstorage file_system {d}/data\n}}\n\n\
         https://localhost:{port} {{\n\ttls {cert} {key}\n\treverse_proxy {upstream}\n}}\n",
        d = dir.display(),
        cert = certs.cert_file.display(),
        key = certs.key_file.display(),
    );
    let path = dir.join("Caddyfile");
    std::fs::write(&path, caddyfile).unwrap();
    let mut cmd = Command::new("caddy");
    cmd.args(["run", "--adapter", "caddyfile", "--config"])
        .arg(&path)
        .env("HOME", &dir)
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .env("XDG_DATA_HOME", dir.join("data"));
    start(cmd, "caddy", port, dir)
}

/// A server behind a proxy on 127.0.0.1: one WebSocket per client address.
fn server() -> BackgroundServer {
    let mut config = common::config();
    config.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    config.max_connections_per_ip = 1;
    config.connection_rate_per_ip = 0;
    BackgroundServer::start(config).unwrap()
}

/// Opens `wss://localhost:PORT/ws` through the proxy from the local address `from`, sending
/// `X-Forwarded-For: xff` itself if given; returns whether the server said `hello` (or the
/// refusal's code) and the socket.
async fn connect(
    proxy: &Proxy,
    tls: &Arc<rustls::ClientConfig>,
    from: Ipv4Addr,
    xff: Option<&str>,
) -> (Result<(), ErrorCode>, Ws) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    let tcp = socket
        .connect(SocketAddr::from((Ipv4Addr::LOCALHOST, proxy.port)))
        .await
        .unwrap();
    let mut request = format!("wss://localhost:{}/ws", proxy.port)
        .into_client_request()
        .unwrap();
    if let Some(xff) = xff {
        request
            .headers_mut()
            .insert("x-forwarded-for", HeaderValue::from_str(xff).unwrap());
    }
    let connector = tokio_tungstenite::Connector::Rustls(tls.clone());
    let (mut ws, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::client_async_tls_with_config(request, tcp, None, Some(connector)),
    )
    .await
    .expect("the WebSocket upgrade through the proxy timed out")
    .expect("the WebSocket upgrade through the proxy");
    (first_message(&mut ws).await, ws)
}

/// What both proxies must give: each client address its own count, a client's own
/// `X-Forwarded-For` changing nothing.
async fn clients_are_counted_apart(proxy: &Proxy, certs: &TestCerts, server: &BackgroundServer) {
    let tls = common::tls_client(certs, &[b"http/1.1"]);
    let a = Ipv4Addr::new(127, 0, 0, 2);
    let b = Ipv4Addr::new(127, 0, 0, 3);
    let (first, _a) = connect(proxy, &tls, a, Some("203.0.113.1")).await;
    assert_eq!(first, Ok(()));
    // b pretends to be a: it is counted as itself.
    let (second, _b) = connect(proxy, &tls, b, Some("127.0.0.2")).await;
    assert_eq!(second, Ok(()));
    // a pretends to be someone else: it is still a, which has its one connection.
    let (again, _) = connect(proxy, &tls, a, Some("203.0.113.9")).await;
    assert_eq!(again, Err(ErrorCode::SERVER_BUSY));
    let (again, _) = connect(proxy, &tls, a, None).await;
    assert_eq!(again, Err(ErrorCode::SERVER_BUSY));
    assert_eq!(server.state().config().trusted_proxies.len(), 1);
}

#[tokio::test]
async fn nginx_as_in_the_deploy_guide() {
    let certs = TestCerts::new("nginx");
    let server = server();
    let proxy = nginx(server.addr(), &certs);
    clients_are_counted_apart(&proxy, &certs, &server).await;
}

#[tokio::test]
async fn caddy_as_in_the_deploy_guide() {
    let certs = TestCerts::new("caddy");
    let server = server();
    let proxy = caddy(server.addr(), &certs);
    clients_are_counted_apart(&proxy, &certs, &server).await;
}
