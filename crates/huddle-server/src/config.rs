//! Server configuration, layered: built-in defaults, then a TOML file (unknown keys refused), then
//! validation. `huddle.example.toml` at the repository root shows every key with its default.
//!
//! With no configured app the server runs in *dev mode*: [`ServerConfig::use_dev_app`] loads one app
//! from `{data_dir}/dev-app.toml`, or generates and saves it there, so that its credentials stay the
//! same across restarts.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use huddle_proto::AppId;
use huddle_token::{AppSign, ServerSecret};
use rand::Rng;
use serde::Deserialize;

/// The name of the dev-mode app file in the data directory.
pub const DEV_APP_FILE: &str = "dev-app.toml";

/// Why a configuration could not be loaded or is not valid.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The TOML text is not valid or has an unknown key.
    #[error("{origin}: {message}")]
    Parse {
        /// The file, or `<string>`.
        origin: String,
        /// The parser's message (with line and column).
        message: String,
    },
    /// The values do not make a usable configuration.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// One app: its ID and credentials.
///
/// `Debug` never prints the AppSign or the server secret.
#[derive(Clone, Debug)]
pub struct AppConfig {
    /// The AppID.
    pub app_id: AppId,
    /// The AppSign (32 bytes; 64 hex characters in files). Clients prove they hold it by answering
    /// the login challenge.
    pub app_sign: AppSign,
    /// The server secret (32 characters) that Token04 tokens are encrypted with.
    pub server_secret: ServerSecret,
    /// Whether logins may use AES-CBC Token04 tokens (`allow_cbc_tokens`, default `false`).
    ///
    /// CBC tokens have no integrity: whoever holds one can rewrite the first 16 bytes of its JSON
    /// through the IV (the start of the user ID with the legacy generators' key order) and log in
    /// as someone else. AES-GCM tokens are authenticated and always accepted. Turn this on only
    /// for an app whose token server still uses a CBC-only generator (`docs/security.md`).
    pub allow_cbc_tokens: bool,
    /// Where the app's server hears of rooms, users and streams (`webhook_url`, or
    /// `[[apps.webhooks]]` tables; `docs/operations.md`).
    pub webhooks: Vec<WebhookConfig>,
    /// Whether every stream of the app is recorded from its first packet (`auto_record`,
    /// default `false`; `docs/operations.md`, "Recording").
    pub auto_record: bool,
}

/// One receiver of an app's webhook events (`[[apps.webhooks]]`).
///
/// `Debug` never prints the callback secret.
#[derive(Clone)]
pub struct WebhookConfig {
    /// The receiver's URL, `http://` or `https://` (`url`).
    pub url: String,
    /// The secret the events are signed with (`callback_secret`; default: the app's server
    /// secret), as the hosted platform's callback secret.
    pub callback_secret: Option<String>,
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// Checks a webhook URL: `http://` or `https://` with a host, at most 2048 bytes.
fn check_webhook_url(url: &str) -> Result<(), String> {
    if url.len() > 2048 {
        return Err("a webhook url is at most 2048 bytes".into());
    }
    let uri: axum::http::Uri = url
        .parse()
        .map_err(|_| format!("webhook url {url:?} is not a valid URL"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("webhook url {url:?} must start with http:// or https://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("webhook url {url:?} has no host"));
    }
    Ok(())
}

impl AppConfig {
    /// An app with freshly generated random credentials.
    pub fn generate(app_id: AppId) -> AppConfig {
        AppConfig {
            app_id,
            app_sign: AppSign::generate(),
            server_secret: ServerSecret::generate(),
            allow_cbc_tokens: false,
            webhooks: Vec::new(),
            auto_record: false,
        }
    }

    /// The app as a `[[apps]]` TOML table (contains the secrets).
    pub fn to_toml(&self) -> String {
        let mut t = format!(
            "[[apps]]\napp_id = {}\napp_sign = \"{}\"\nserver_secret = \"{}\"\n",
            self.app_id,
            self.app_sign.to_hex(),
            self.server_secret.as_str()
        );
        if self.allow_cbc_tokens {
            t.push_str("allow_cbc_tokens = true\n");
        }
        t
    }
}

/// TURN servers for clients that no direct path reaches (`[turn]`): coturn, or any TURN server
/// with the REST API's shared secret (coturn's `use-auth-secret` and `static-auth-secret`).
///
/// `Debug` never prints the secret.
#[derive(Clone)]
pub struct TurnConfig {
    /// The TURN URLs given to clients, e.g. `turns:turn.example.com:443?transport=tcp`
    /// (`urls`; `turn:`, `turns:` or `stun:` URLs).
    pub urls: Vec<String>,
    /// The shared secret, the same as coturn's `static-auth-secret` (`secret`).
    pub secret: String,
    /// How long handed-out credentials stay valid (`credential_ttl_secs`, default one day, as the
    /// TURN REST API draft recommends).
    pub credential_ttl: Duration,
}

impl TurnConfig {
    /// The default lifetime of handed-out credentials: one day.
    pub const DEFAULT_TTL: Duration = Duration::from_secs(86_400);
}

impl fmt::Debug for TurnConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurnConfig")
            .field("urls", &self.urls)
            .field("credential_ttl", &self.credential_ttl)
            .finish_non_exhaustive()
    }
}

/// An app with fixed, publicly known credentials, for tests (never for production).
///
/// The AppSign is the AppID as 8 hex digits followed by `ab` repeated; the server secret is the
/// AppID as 8 hex digits followed by `cd` repeated.
///
/// # Panics
///
/// If `app_id` is 0.
pub fn test_app(app_id: u32) -> AppConfig {
    let app_id = AppId::new(app_id).expect("test_app needs a non-zero AppID");
    let sign = format!("{:08x}{}", app_id.get(), "ab".repeat(28));
    let secret = format!("{:08x}{}", app_id.get(), "cd".repeat(12));
    AppConfig {
        app_id,
        app_sign: sign.parse().expect("64 hex characters"),
        server_secret: secret.parse().expect("32 characters"),
        allow_cbc_tokens: false,
        webhooks: Vec::new(),
        auto_record: false,
    }
}

/// A secret of the configuration (`metrics_token`, `cluster_secret`): used as text through
/// `Deref`, never printed: `Debug` (and so a logged [`ServerConfig`]) shows `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl std::ops::Deref for Secret {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Secret {
        Secret(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Secret {
        Secret(s.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Everything the server needs to run. Build it with [`ServerConfig::default`],
/// [`ServerConfig::load`], [`ServerConfig::from_toml_str`], [`ServerConfig::dev`] or
/// [`ServerConfig::for_tests`], adjust fields, and pass it to [`crate::run`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServerConfig {
    /// The HTTP/WebSocket address (`listen`, default `127.0.0.1:7880`).
    pub listen: SocketAddr,
    /// The UDP port of the media plane (`udp_port`, default 7882; 0 picks a free port). The socket
    /// is bound on the IP of `listen`.
    pub udp_port: u16,
    /// The TCP port of ICE over TCP (RFC 6544 passive candidates beside the UDP ones, for clients
    /// whose network blocks UDP; `tcp_port`, `--tcp-port`, default 7881, as LiveKit's; 0 in the
    /// file turns it off: `None`). `Some(0)` picks a free port (tests). Bound on the IP of
    /// `listen`.
    pub tcp_port: Option<u16>,
    /// The address clients send media to, advertised as the server's one ICE candidate with the
    /// bound UDP port (`public_ip`, `--public-ip`; default none). Set it when the host sits behind a
    /// 1:1 NAT (a cloud VM's public address) or a proxy forwards its media: every datagram is then
    /// taken as sent to it. Without it the server advertises the IP of `listen`, or, on a wildcard
    /// listen, each address of the host's interfaces (`docs/deploy.md`).
    pub public_ip: Option<IpAddr>,
    /// Threads that run the SFU, each a shard with its own peer connections, all on the one UDP
    /// port (`media_workers`, default 0: one per CPU the server may run on, as `taskset` or a
    /// container's CPU set allows; at most 256). The first of them also reads the socket and
    /// hands each datagram to its shard (`docs/sfu.md`).
    pub media_workers: usize,
    /// Whether the server answers a client's `a=setup:actpass` media offer as the DTLS client
    /// (`a=setup:active`, RFC 5763 section 5) when the client's login declared that it starts
    /// ICE on such an answer (`setup_active`; the SDK does, huddle.js not yet): the handshake ends a
    /// flight earlier, and a player's media flows once the server's Finished is out
    /// (`dtls_active`, default true; `docs/protocol.md`, `docs/quality.md` "Setup under loss").
    /// Off: every answer is `a=setup:passive`, as before.
    pub dtls_active: bool,
    /// The configured apps (`[[apps]]`).
    pub apps: Vec<AppConfig>,
    /// Where the server keeps its files (`data_dir`, default [`default_data_dir`]).
    pub data_dir: PathBuf,
    /// Where recordings go (`record_dir`, default `{data_dir}/recordings`).
    pub record_dir: Option<PathBuf>,
    /// Threads writing the recordings' files (`record_writers`, default 0: one per CPU the
    /// server may run on, at most 16; at most 64). Each takes many recordings in turn
    /// (`docs/operations.md`, "Recording").
    pub record_writers: usize,
    /// Dev mode asked for (`dev`, `--dev`; default false): run the generated dev app, with its
    /// token route, even when `listen` is not a loopback address ([`ServerConfig::resolve_apps`]).
    pub dev: bool,
    /// True when the only app is the generated dev-mode app.
    pub dev_mode: bool,
    /// A PEM certificate chain for HTTPS and WSS (`tls_cert`, `--tls-cert`; with `tls_key`), the
    /// server's certificate first (certbot's `fullchain.pem`). Read once, when the server state
    /// is built: a file that cannot be read or parsed is a [`ConfigError`] naming it. Without it
    /// the server speaks plain HTTP (behind a TLS reverse proxy, or on loopback).
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of `tls_cert` (`tls_key`, `--tls-key`).
    pub tls_key: Option<PathBuf>,
    /// Reverse proxies whose `X-Forwarded-For` header is believed (`trusted_proxies`, default
    /// none): a connection from one of these addresses counts, for the per-address limits and
    /// the loopback-only answers, as the client address the proxy reports (the rightmost entry
    /// of the header that is not itself a trusted proxy;
    /// [`ServerState::client_ip`](crate::ServerState::client_ip)), and is exempt from the raw
    /// TCP cap per address. From other addresses the header is ignored.
    pub trusted_proxies: Vec<IpAddr>,
    /// TURN servers handed to clients with the login answer (`[turn]`, default none).
    pub turn: Option<TurnConfig>,
    /// The Redis that the nodes of a cluster share (`redis`, `redis://HOST:PORT`; default none:
    /// one node, everything in memory). See `docs/cluster.md`.
    pub redis: Option<String>,
    /// This node's ID in the cluster (`node_id`, 1 to 64 of `[0-9A-Za-z_.-]`; default: the host
    /// name and the signaling port). Only with `redis`.
    pub node_id: Option<String>,
    /// The secret the nodes of a cluster share to pull each other's streams (`cluster_secret`,
    /// at least 16 characters; default none: this node neither pulls nor serves pulls, and a
    /// stream of another node stays unavailable here). Only with `redis`. Never sent: a pull is
    /// signed with an HMAC of it (`docs/cluster.md`).
    pub cluster_secret: Option<Secret>,
    /// The URL other nodes reach this node's signaling at to pull its streams (`cluster_url`,
    /// `ws://HOST:PORT` or `wss://…`; default: the bound listen address). Only with `redis`.
    pub cluster_url: Option<String>,
    /// The bearer token that opens `/metrics` to addresses other than loopback
    /// (`metrics_token`, default none: loopback only). See `docs/operations.md`.
    pub metrics_token: Option<Secret>,
    /// A node's lease in the cluster store (`cluster_lease_ms`, default 10 s, at least 300 ms):
    /// renewed every third of it; what a node owns (stream IDs, its users and streams in shared
    /// rooms) is gone for the others within about a lease and a third after it dies. Only with
    /// `redis`.
    pub cluster_lease: Duration,
    /// How long a pull of another node's stream goes on after its last player here left
    /// (`pull_linger_ms`, default 5 s; 0: it stops at once), so that a player who comes back or
    /// the next one does not wait for a new link. Only with `redis` and `cluster_secret`.
    pub pull_linger: Duration,
    /// In a cluster, how many webhook events the log in Redis keeps per app
    /// (`webhook_log_events`, default 100,000, from 1,000 to 10,000,000): the undelivered ones
    /// and the last delivered ones, for `ReplayCallbacks` (`docs/operations.md`). Only with
    /// `redis` (a node alone keeps its log in the data directory).
    pub webhook_log_events: usize,
    /// After SIGTERM, how long calls in progress may go on before the server closes them and
    /// exits (`drain_timeout_ms`, default 30 s); new logins are refused meanwhile.
    pub drain_timeout: Duration,
    /// How often clients send `ping` (`heartbeat_ms`, default 5 s).
    pub heartbeat: Duration,
    /// A connection silent this long is dropped and its session detached (`session_timeout_ms`,
    /// default 15 s).
    pub session_timeout: Duration,
    /// How long a detached session keeps its user and streams (`grace_ms`, default 20 s).
    pub grace: Duration,
    /// How long a new connection may take to log in (`login_timeout_ms`, default 10 s).
    pub login_timeout: Duration,
    /// The member limit of a room whose first login asks for 0 (`default_max_member_count`, 1000).
    pub default_max_member_count: u32,
    /// Streams published at once in one AppID (`max_streams_per_app`, 10 000).
    pub max_streams_per_app: usize,
    /// Streams one session publishes at once (`max_streams_per_session`, 4).
    pub max_streams_per_session: usize,
    /// Streams one session plays at once (`max_plays_per_session`, 32).
    pub max_plays_per_session: usize,
    /// Sessions on this server, attached or in grace (`max_sessions`, 100 000). Also bounds the
    /// open WebSocket connections.
    pub max_sessions: usize,
    /// Messages queued for one connection before it counts as too slow (`outbound_queue`, 1024).
    pub outbound_queue: usize,
    /// Sustained messages per second a connection may send (`rate_limit_per_sec`, 50).
    pub rate_limit_per_sec: u32,
    /// Burst of messages a connection may send (`rate_limit_burst`, 100).
    pub rate_limit_burst: u32,
    /// Open WebSocket connections from one IP address, an IPv6 address counting by its /64 prefix
    /// (`max_connections_per_ip`, 1000; 0: no limit). Beyond it a new connection gets `error`
    /// 1009006 and is closed. Behind a reverse proxy list the proxy in `trusted_proxies`, or
    /// every client counts under the proxy's address (`docs/security.md`).
    pub max_connections_per_ip: usize,
    /// New WebSocket connections per second from one IP address, sustained
    /// (`connection_rate_per_ip`, 50; 0: no limit). Beyond it a new connection gets `error`
    /// 1009004 and is closed.
    pub connection_rate_per_ip: u32,
    /// Burst of new connections from one IP address (`connection_burst_per_ip`, 500).
    pub connection_burst_per_ip: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 7880)),
            udp_port: 7882,
            tcp_port: Some(7881),
            public_ip: None,
            media_workers: 0,
            dtls_active: true,
            apps: Vec::new(),
            data_dir: default_data_dir(),
            record_dir: None,
            record_writers: 0,
            dev: false,
            dev_mode: false,
            tls_cert: None,
            tls_key: None,
            trusted_proxies: Vec::new(),
            turn: None,
            redis: None,
            node_id: None,
            cluster_secret: None,
            cluster_url: None,
            metrics_token: None,
            cluster_lease: Duration::from_secs(10),
            pull_linger: Duration::from_secs(5),
            webhook_log_events: 100_000,
            drain_timeout: Duration::from_secs(30),
            heartbeat: Duration::from_secs(5),
            session_timeout: Duration::from_secs(15),
            grace: Duration::from_secs(20),
            login_timeout: Duration::from_secs(10),
            default_max_member_count: 1000,
            max_streams_per_app: 10_000,
            max_streams_per_session: 4,
            max_plays_per_session: 32,
            max_sessions: 100_000,
            outbound_queue: 1024,
            rate_limit_per_sec: 50,
            rate_limit_burst: 100,
            max_connections_per_ip: 1000,
            connection_rate_per_ip: 50,
            connection_burst_per_ip: 500,
        }
    }
}

/// The default data directory: `$HUDDLE_DATA_DIR`, else `$HOME/.local/share/huddle`, else
/// `./huddle-data`.
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HUDDLE_DATA_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(home).join(".local/share/huddle");
    }
    PathBuf::from("huddle-data")
}

/// The keys of the file format ([`FileConfig`]), checked against `huddle.example.toml`.
#[cfg(test)]
const FILE_KEYS: &[&str] = &[
    "listen",
    "udp_port",
    "tcp_port",
    "public_ip",
    "media_workers",
    "dtls_active",
    "data_dir",
    "record_dir",
    "record_writers",
    "dev",
    "tls_cert",
    "tls_key",
    "trusted_proxies",
    "drain_timeout_ms",
    "redis",
    "node_id",
    "cluster_secret",
    "cluster_url",
    "metrics_token",
    "cluster_lease_ms",
    "pull_linger_ms",
    "webhook_log_events",
    "heartbeat_ms",
    "session_timeout_ms",
    "grace_ms",
    "login_timeout_ms",
    "default_max_member_count",
    "max_streams_per_app",
    "max_streams_per_session",
    "max_plays_per_session",
    "max_sessions",
    "outbound_queue",
    "rate_limit_per_sec",
    "rate_limit_burst",
    "max_connections_per_ip",
    "connection_rate_per_ip",
    "connection_burst_per_ip",
];

/// The file format: every key optional, unknown keys refused.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    udp_port: Option<u16>,
    tcp_port: Option<u16>,
    public_ip: Option<IpAddr>,
    media_workers: Option<usize>,
    dtls_active: Option<bool>,
    data_dir: Option<PathBuf>,
    record_dir: Option<PathBuf>,
    record_writers: Option<usize>,
    dev: Option<bool>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    #[serde(default)]
    trusted_proxies: Vec<IpAddr>,
    turn: Option<FileTurn>,
    drain_timeout_ms: Option<u64>,
    redis: Option<String>,
    node_id: Option<String>,
    cluster_secret: Option<String>,
    cluster_url: Option<String>,
    metrics_token: Option<String>,
    cluster_lease_ms: Option<u64>,
    pull_linger_ms: Option<u64>,
    webhook_log_events: Option<usize>,
    heartbeat_ms: Option<u64>,
    session_timeout_ms: Option<u64>,
    grace_ms: Option<u64>,
    login_timeout_ms: Option<u64>,
    default_max_member_count: Option<u32>,
    max_streams_per_app: Option<usize>,
    max_streams_per_session: Option<usize>,
    max_plays_per_session: Option<usize>,
    max_sessions: Option<usize>,
    outbound_queue: Option<usize>,
    rate_limit_per_sec: Option<u32>,
    rate_limit_burst: Option<u32>,
    max_connections_per_ip: Option<usize>,
    connection_rate_per_ip: Option<u32>,
    connection_burst_per_ip: Option<u32>,
    #[serde(default)]
    apps: Vec<FileApp>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileApp {
    app_id: u32,
    app_sign: String,
    server_secret: String,
    #[serde(default)]
    allow_cbc_tokens: bool,
    webhook_url: Option<String>,
    #[serde(default)]
    webhooks: Vec<FileWebhook>,
    #[serde(default)]
    auto_record: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileWebhook {
    url: String,
    callback_secret: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTurn {
    urls: Vec<String>,
    secret: String,
    credential_ttl_secs: Option<u64>,
}

/// The dev-mode app file: exactly one `[[apps]]` table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DevFile {
    apps: Vec<FileApp>,
}

fn parse_toml<T: serde::de::DeserializeOwned>(text: &str, origin: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        origin: origin.to_string(),
        message: e.to_string().trim().into(),
    })
}

fn convert_apps(apps: Vec<FileApp>) -> Result<Vec<AppConfig>, ConfigError> {
    apps.into_iter()
        .enumerate()
        .map(|(i, a)| {
            let app_id = AppId::new(a.app_id)
                .map_err(|_| ConfigError::Invalid(format!("apps[{i}]: app_id must not be 0")))?;
            let app_sign = a.app_sign.parse().map_err(|_| {
                ConfigError::Invalid(format!(
                    "apps[{i}] (app_id {app_id}): app_sign must be 64 hexadecimal characters"
                ))
            })?;
            let server_secret = a.server_secret.parse().map_err(|_| {
                ConfigError::Invalid(format!(
                    "apps[{i}] (app_id {app_id}): server_secret must be exactly 32 characters (it is {})",
                    a.server_secret.len()
                ))
            })?;
            let mut webhooks: Vec<WebhookConfig> = a
                .webhook_url
                .into_iter()
                .map(|url| WebhookConfig {
                    url,
                    callback_secret: None,
                })
                .collect();
            webhooks.extend(a.webhooks.into_iter().map(|w| WebhookConfig {
                url: w.url,
                callback_secret: w.callback_secret,
            }));
            Ok(AppConfig {
                app_id,
                app_sign,
                server_secret,
                allow_cbc_tokens: a.allow_cbc_tokens,
                webhooks,
                auto_record: a.auto_record,
            })
        })
        .collect()
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

impl ServerConfig {
    /// A configuration for tests: listens on `127.0.0.1:0`, heartbeat 500 ms, session timeout 2 s,
    /// grace 300 ms, login timeout 2 s, data in the system's temporary directory.
    pub fn for_tests(apps: Vec<AppConfig>) -> ServerConfig {
        ServerConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            udp_port: 0,
            tcp_port: Some(0),
            apps,
            data_dir: std::env::temp_dir().join("huddle-test-data"),
            record_dir: None,
            record_writers: 0,
            heartbeat: Duration::from_millis(500),
            session_timeout: Duration::from_secs(2),
            grace: Duration::from_millis(300),
            login_timeout: Duration::from_secs(2),
            ..ServerConfig::default()
        }
    }

    /// Defaults overridden by the TOML `text`, then validated.
    ///
    /// ```
    /// let config = huddle_server::ServerConfig::from_toml_str(r#"
    ///     listen = "0.0.0.0:7880"
    ///     grace_ms = 5000
    ///     [[apps]]
    ///     app_id = 7
    ///     app_sign = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
    ///     server_secret = "fa94dd0f974cf2e293728a526b028271"
    /// "#).unwrap();
    /// assert_eq!(config.grace.as_millis(), 5000);
    /// assert!(huddle_server::ServerConfig::from_toml_str("colour = 1").is_err());
    /// ```
    pub fn from_toml_str(text: &str) -> Result<ServerConfig, ConfigError> {
        Self::from_toml_origin(text, "<string>")
    }

    /// Reads the TOML file at `path` (see [`ServerConfig::from_toml_str`]). A relative `data_dir` is
    /// relative to the working directory.
    pub fn load(path: impl AsRef<Path>) -> Result<ServerConfig, ConfigError> {
        let config = Self::load_unchecked(path)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads the TOML file at `path` without [`ServerConfig::validate`]: for `huddle serve`,
    /// whose flags come on top of the file (a file with `cluster_secret` and `--redis` on the
    /// command line is valid) and which validates the result.
    pub(crate) fn load_unchecked(path: impl AsRef<Path>) -> Result<ServerConfig, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml_unchecked(&text, &path.display().to_string())
    }

    fn from_toml_origin(text: &str, origin: &str) -> Result<ServerConfig, ConfigError> {
        let config = Self::from_toml_unchecked(text, origin)?;
        config.validate()?;
        Ok(config)
    }

    fn from_toml_unchecked(text: &str, origin: &str) -> Result<ServerConfig, ConfigError> {
        let f: FileConfig = parse_toml(text, origin)?;
        let d = ServerConfig::default();
        let config = ServerConfig {
            listen: f.listen.unwrap_or(d.listen),
            udp_port: f.udp_port.unwrap_or(d.udp_port),
            tcp_port: f.tcp_port.map_or(d.tcp_port, |p| (p != 0).then_some(p)),
            public_ip: f.public_ip.or(d.public_ip),
            media_workers: f.media_workers.unwrap_or(d.media_workers),
            dtls_active: f.dtls_active.unwrap_or(d.dtls_active),
            apps: convert_apps(f.apps)?,
            data_dir: f.data_dir.unwrap_or(d.data_dir),
            record_dir: f.record_dir,
            record_writers: f.record_writers.unwrap_or(d.record_writers),
            dev: f.dev.unwrap_or(d.dev),
            dev_mode: false,
            tls_cert: f.tls_cert,
            tls_key: f.tls_key,
            trusted_proxies: f.trusted_proxies,
            turn: f.turn.map(|t| TurnConfig {
                urls: t.urls,
                secret: t.secret,
                credential_ttl: Duration::from_secs(
                    t.credential_ttl_secs.unwrap_or(TurnConfig::DEFAULT_TTL.as_secs()),
                ),
            }),
            redis: f.redis,
            node_id: f.node_id,
            cluster_secret: f.cluster_secret.map(Secret::from),
            cluster_url: f.cluster_url,
            metrics_token: f.metrics_token.map(Secret::from),
            cluster_lease: f.cluster_lease_ms.map_or(d.cluster_lease, ms),
            pull_linger: f.pull_linger_ms.map_or(d.pull_linger, ms),
            webhook_log_events: f.webhook_log_events.unwrap_or(d.webhook_log_events),
            drain_timeout: f.drain_timeout_ms.map_or(d.drain_timeout, ms),
            heartbeat: f.heartbeat_ms.map_or(d.heartbeat, ms),
            session_timeout: f.session_timeout_ms.map_or(d.session_timeout, ms),
            grace: f.grace_ms.map_or(d.grace, ms),
            login_timeout: f.login_timeout_ms.map_or(d.login_timeout, ms),
            default_max_member_count: f.default_max_member_count.unwrap_or(d.default_max_member_count),
            max_streams_per_app: f.max_streams_per_app.unwrap_or(d.max_streams_per_app),
            max_streams_per_session: f.max_streams_per_session.unwrap_or(d.max_streams_per_session),
            max_plays_per_session: f.max_plays_per_session.unwrap_or(d.max_plays_per_session),
            max_sessions: f.max_sessions.unwrap_or(d.max_sessions),
            outbound_queue: f.outbound_queue.unwrap_or(d.outbound_queue),
            rate_limit_per_sec: f.rate_limit_per_sec.unwrap_or(d.rate_limit_per_sec),
            rate_limit_burst: f.rate_limit_burst.unwrap_or(d.rate_limit_burst),
            max_connections_per_ip: f.max_connections_per_ip.unwrap_or(d.max_connections_per_ip),
            connection_rate_per_ip: f.connection_rate_per_ip.unwrap_or(d.connection_rate_per_ip),
            connection_burst_per_ip: f.connection_burst_per_ip.unwrap_or(d.connection_burst_per_ip),
        };
        Ok(config)
    }

    /// Dev mode: defaults, `data_dir`, and the one dev app loaded from (or generated into)
    /// `{data_dir}/dev-app.toml`.
    pub fn dev(data_dir: impl Into<PathBuf>) -> Result<ServerConfig, ConfigError> {
        let mut config = ServerConfig {
            data_dir: data_dir.into(),
            ..ServerConfig::default()
        };
        config.use_dev_app()?;
        Ok(config)
    }

    /// The dev-mode app file: `{data_dir}/dev-app.toml`.
    pub fn dev_app_path(&self) -> PathBuf {
        self.data_dir.join(DEV_APP_FILE)
    }

    /// Replaces the apps with the dev-mode app, loaded from [`ServerConfig::dev_app_path`] or, when
    /// that file does not exist, generated (random AppID and credentials) and saved there (mode 0600
    /// on Unix), and sets `dev_mode`. Returns the app.
    pub fn use_dev_app(&mut self) -> Result<&AppConfig, ConfigError> {
        let path = self.dev_app_path();
        let app = match std::fs::read_to_string(&path) {
            Ok(text) => {
                let file: DevFile = parse_toml(&text, &path.display().to_string())?;
                let mut apps = convert_apps(file.apps)?;
                if apps.len() != 1 {
                    return Err(ConfigError::Invalid(format!(
                        "{}: the dev app file must hold exactly one [[apps]] table",
                        path.display()
                    )));
                }
                apps.remove(0)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let id = rand::thread_rng().gen_range(100_000_000..1_000_000_000u32);
                let app = AppConfig::generate(AppId::new(id).expect("non-zero"));
                write_private(&path, &dev_file_text(&app))?;
                app
            }
            Err(source) => return Err(ConfigError::Io { path, source }),
        };
        self.apps = vec![app];
        self.dev_mode = true;
        Ok(&self.apps[0])
    }

    /// Decides where the apps come from, once the file and the flags are read:
    ///
    /// - configured `[[apps]]`: those (with `dev` too, an error: dev mode would replace them);
    /// - none, and `dev` asked for or `listen` on a loopback address: dev mode
    ///   ([`ServerConfig::use_dev_app`]);
    /// - none, on any other address: an error that says what to do. A dev-mode server mints tokens
    ///   for anyone who reaches it (`POST /api/dev-token`), so it never starts there by accident.
    ///
    /// ```
    /// let mut c = huddle_server::ServerConfig::from_toml_str("listen = \"0.0.0.0:7880\"").unwrap();
    /// assert!(c.resolve_apps().unwrap_err().to_string().contains("--dev"));
    /// ```
    pub fn resolve_apps(&mut self) -> Result<(), ConfigError> {
        if !self.apps.is_empty() {
            if self.dev {
                return Err(ConfigError::Invalid(
                    "dev mode replaces the configured [[apps]]: remove `dev` (--dev) or the apps".into(),
                ));
            }
            return Ok(());
        }
        if self.dev || self.listen.ip().is_loopback() {
            self.use_dev_app()?;
            return Ok(());
        }
        Err(ConfigError::Invalid(format!(
            "no app is configured and {} is not a loopback address. Configure your apps in a \
             config file (`[[apps]]`, see huddle.example.toml) and pass --config FILE, or pass --dev \
             to run the generated dev app there anyway (anyone who reaches the server can then mint \
             tokens for it)",
            self.listen
        )))
    }

    /// Checks the values: unique non-zero AppIDs, positive timings (heartbeat < session timeout,
    /// all below 2^32 ms), and non-zero limits.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        for (i, app) in self.apps.iter().enumerate() {
            if let Some(j) = self.apps[..i].iter().position(|a| a.app_id == app.app_id) {
                return invalid(format!(
                    "app_id {} is configured twice (apps[{j}] and apps[{i}])",
                    app.app_id
                ));
            }
            for (k, w) in app.webhooks.iter().enumerate() {
                if let Err(e) = check_webhook_url(&w.url) {
                    return invalid(format!("apps[{i}] (app_id {}): {e}", app.app_id));
                }
                if app.webhooks[..k].iter().any(|o| o.url == w.url) {
                    return invalid(format!(
                        "apps[{i}] (app_id {}): webhook url {:?} is configured twice",
                        app.app_id, w.url
                    ));
                }
                if let Some(secret) = &w.callback_secret
                    && !(8..=256).contains(&secret.len())
                {
                    return invalid(format!(
                        "apps[{i}] (app_id {}): a webhook callback_secret is 8 to 256 characters",
                        app.app_id
                    ));
                }
            }
        }
        let timings = [
            ("heartbeat_ms", self.heartbeat),
            ("session_timeout_ms", self.session_timeout),
            ("grace_ms", self.grace),
            ("login_timeout_ms", self.login_timeout),
            ("cluster_lease_ms", self.cluster_lease),
        ];
        if self.pull_linger.as_millis() > 600_000 {
            return invalid("pull_linger_ms must be at most 600000 (10 minutes)".into());
        }
        for (name, d) in timings {
            if d.is_zero() || d.as_millis() > u128::from(u32::MAX) {
                return invalid(format!("{name} must be between 1 and {} ms", u32::MAX));
            }
        }
        if self.session_timeout <= self.heartbeat {
            return invalid(format!(
                "session_timeout_ms ({}) must be longer than heartbeat_ms ({})",
                self.session_timeout.as_millis(),
                self.heartbeat.as_millis()
            ));
        }
        let limits = [
            ("default_max_member_count", self.default_max_member_count as usize),
            ("max_streams_per_app", self.max_streams_per_app),
            ("max_streams_per_session", self.max_streams_per_session),
            ("max_plays_per_session", self.max_plays_per_session),
            ("max_sessions", self.max_sessions),
            ("outbound_queue", self.outbound_queue),
            ("rate_limit_per_sec", self.rate_limit_per_sec as usize),
            ("rate_limit_burst", self.rate_limit_burst as usize),
        ];
        if let Some((name, _)) = limits.iter().find(|(_, v)| *v == 0) {
            return invalid(format!("{name} must not be 0"));
        }
        if self.media_workers > crate::sfu::shard::MAX_SHARDS {
            return invalid(format!(
                "media_workers ({}) must be at most {} (0: one per CPU)",
                self.media_workers,
                crate::sfu::shard::MAX_SHARDS
            ));
        }
        if self.record_writers > crate::recording::MAX_WRITERS {
            return invalid(format!(
                "record_writers ({}) must be at most {} (0: one per CPU)",
                self.record_writers,
                crate::recording::MAX_WRITERS
            ));
        }
        if let Some(ip) = self.public_ip
            && (ip.is_unspecified() || ip.is_multicast())
        {
            return invalid(format!(
                "public_ip {ip} is not an address clients can send media to"
            ));
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => return invalid("tls_cert is set without tls_key".into()),
            (None, Some(_)) => return invalid("tls_key is set without tls_cert".into()),
            _ => {}
        }
        if let Some(url) = &self.redis
            && !(url.starts_with("redis://") && url.len() > "redis://".len())
        {
            return invalid(format!("redis {url:?} is not a redis://HOST:PORT URL"));
        }
        if let Some(id) = &self.node_id {
            if self.redis.is_none() {
                return invalid("node_id is set without redis".into());
            }
            let ok = !id.is_empty()
                && id.len() <= 64
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
            if !ok {
                return invalid(format!("node_id {id:?} must be 1 to 64 of [0-9A-Za-z_.-]"));
            }
        }
        if let Some(secret) = &self.cluster_secret {
            if self.redis.is_none() {
                return invalid("cluster_secret is set without redis".into());
            }
            if secret.len() < 16 {
                return invalid("cluster_secret must be at least 16 characters".into());
            }
        }
        if let Some(url) = &self.cluster_url {
            if self.redis.is_none() {
                return invalid("cluster_url is set without redis".into());
            }
            if !(url.starts_with("ws://") || url.starts_with("wss://")) {
                return invalid(format!("cluster_url {url:?} is not a ws:// or wss:// URL"));
            }
        }
        if !(1_000..=10_000_000).contains(&self.webhook_log_events) {
            return invalid("webhook_log_events must be from 1000 to 10000000".into());
        }
        if self.cluster_lease < Duration::from_millis(300) {
            return invalid("cluster_lease_ms must be at least 300 ms".into());
        }
        if self.drain_timeout.as_millis() > u128::from(u32::MAX) {
            return invalid(format!("drain_timeout_ms must be at most {} ms", u32::MAX));
        }
        if let Some(token) = &self.metrics_token
            && (token.len() < 16 || token.len() > 256 || !token.bytes().all(|b| b.is_ascii_graphic()))
        {
            return invalid(
                "metrics_token must be 16 to 256 printable ASCII characters without spaces".into(),
            );
        }
        if let Some(turn) = &self.turn {
            if turn.urls.is_empty() {
                return invalid("[turn] urls must list at least one turn: or turns: URL".into());
            }
            if let Some(u) = turn
                .urls
                .iter()
                .find(|u| !["turn:", "turns:", "stun:"].iter().any(|p| u.starts_with(p)))
            {
                return invalid(format!("[turn] urls: {u:?} is not a turn:, turns: or stun: URL"));
            }
            if turn.secret.len() < 16 {
                return invalid(
                    "[turn] secret must be at least 16 characters (coturn's static-auth-secret)".into(),
                );
            }
            if turn.credential_ttl.is_zero() || turn.credential_ttl > Duration::from_secs(7 * 86_400) {
                return invalid("[turn] credential_ttl_secs must be between 1 and 604800 (a week)".into());
            }
        }
        if self.connection_rate_per_ip > 0 && self.connection_burst_per_ip == 0 {
            return invalid(
                "connection_burst_per_ip must not be 0 when connection_rate_per_ip is set".into(),
            );
        }
        // A resume is answered with login_ok and a play_update for every played stream at once.
        if self.outbound_queue < self.max_plays_per_session + 2 {
            return invalid(format!(
                "outbound_queue ({}) must be at least max_plays_per_session + 2 ({})",
                self.outbound_queue,
                self.max_plays_per_session + 2
            ));
        }
        Ok(())
    }

    /// The configured app with this ID.
    pub fn app(&self, app_id: AppId) -> Option<&AppConfig> {
        self.apps.iter().find(|a| a.app_id == app_id)
    }
}

fn dev_file_text(app: &AppConfig) -> String {
    format!(
        "# Huddle dev-mode app, generated on first start and kept so that its credentials stay the\n\
         # same across restarts. Keep it private. Delete this file to get a new app.\n\n{}",
        app.to_toml()
    )
}

/// Writes `text` to `path` (creating the directory), readable by the owner only on Unix; the file
/// is written beside and renamed into place so that a crash never leaves half a file.
fn write_private(path: &Path, text: &str) -> Result<(), ConfigError> {
    let io = |source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let result = (|| {
        use std::io::Write;
        let mut file = options.open(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

impl fmt::Display for AppConfig {
    /// The AppID only; the credentials are secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "app {}", self.app_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIGN: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    const SECRET: &str = "fa94dd0f974cf2e293728a526b028271";

    fn app_toml(id: u32) -> String {
        format!("[[apps]]\napp_id = {id}\napp_sign = \"{SIGN}\"\nserver_secret = \"{SECRET}\"\n")
    }

    fn err(text: &str) -> String {
        ServerConfig::from_toml_str(text).unwrap_err().to_string()
    }

    #[test]
    fn debug_prints_no_secret() {
        let mut c = ServerConfig::for_tests(vec![test_app(1)]);
        c.metrics_token = Some("the-metrics-token-123".into());
        c.cluster_secret = Some("the-cluster-secret-456".into());
        let printed = format!("{c:?}");
        assert!(
            !printed.contains("the-metrics-token") && !printed.contains("the-cluster-secret"),
            "{printed}"
        );
        assert!(printed.contains("<redacted>"));
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = ServerConfig::from_toml_str("").unwrap();
        assert_eq!(c.listen, "127.0.0.1:7880".parse().unwrap());
        assert_eq!(c.udp_port, 7882);
        assert_eq!(c.tcp_port, Some(7881));
        assert_eq!(
            ServerConfig::from_toml_str("tcp_port = 0").unwrap().tcp_port,
            None
        );
        assert_eq!(
            ServerConfig::from_toml_str("tcp_port = 443").unwrap().tcp_port,
            Some(443)
        );
        assert_eq!(c.heartbeat, Duration::from_secs(5));
        assert_eq!(c.session_timeout, Duration::from_secs(15));
        assert_eq!(c.grace, Duration::from_secs(20));
        assert_eq!(c.login_timeout, Duration::from_secs(10));
        assert_eq!(c.default_max_member_count, 1000);
        assert_eq!(
            (
                c.max_streams_per_app,
                c.max_streams_per_session,
                c.max_plays_per_session
            ),
            (10_000, 4, 32)
        );
        assert_eq!((c.rate_limit_per_sec, c.rate_limit_burst), (50, 100));
        assert!(c.apps.is_empty() && !c.dev_mode);
        assert_eq!(c.media_workers, 0);
        assert!(c.dtls_active);
    }

    #[test]
    fn dtls_active_is_read_and_typed() {
        assert!(
            !ServerConfig::from_toml_str("dtls_active = false")
                .unwrap()
                .dtls_active
        );
        assert!(
            ServerConfig::from_toml_str("dtls_active = true")
                .unwrap()
                .dtls_active
        );
        assert!(err("dtls_active = 1").contains("dtls_active"));
        assert!(err("dtls_active = \"yes\"").contains("dtls_active"));
    }

    #[test]
    fn media_workers_is_read_and_bounded() {
        assert_eq!(
            ServerConfig::from_toml_str("media_workers = 3")
                .unwrap()
                .media_workers,
            3
        );
        assert_eq!(
            ServerConfig::from_toml_str("media_workers = 256")
                .unwrap()
                .media_workers,
            256
        );
        assert!(err("media_workers = 257").contains("media_workers"));
        assert!(err("media_workers = -1").contains("media_workers"));
    }

    #[test]
    fn file_overrides_defaults() {
        let text = format!(
            "listen = \"0.0.0.0:9000\"\nudp_port = 9002\npublic_ip = \"10.0.0.1\"\ndata_dir = \"/tmp/x\"\nheartbeat_ms = 1000\n\
             session_timeout_ms = 3000\ngrace_ms = 700\nmax_sessions = 10\n{}{}",
            app_toml(1),
            app_toml(2)
        );
        let c = ServerConfig::from_toml_str(&text).unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.udp_port, 9002);
        assert_eq!(c.public_ip, Some("10.0.0.1".parse::<IpAddr>().unwrap()));
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.grace, Duration::from_millis(700));
        assert_eq!(c.max_sessions, 10);
        assert_eq!(c.apps.len(), 2);
        assert_eq!(c.apps[1].app_id.get(), 2);
        assert_eq!(c.apps[0].app_sign.to_hex(), SIGN);
        assert_eq!(c.apps[0].server_secret.as_str(), SECRET);
        assert!(c.app(AppId::new(2).unwrap()).is_some());
        assert!(c.app(AppId::new(3).unwrap()).is_none());
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(
            err("colour = 1").contains("unknown field `colour`"),
            "{}",
            err("colour = 1")
        );
        let e = err(&format!("{}extra = 1\n", app_toml(1)));
        assert!(e.contains("unknown field `extra`"), "{e}");
    }

    #[test]
    fn bad_values_are_refused_with_clear_messages() {
        let e = err(&format!("{}{}", app_toml(5), app_toml(5)));
        assert!(e.contains("app_id 5 is configured twice"), "{e}");
        let e = err(&app_toml(1).replace(SIGN, "abc"));
        assert!(e.contains("app_sign must be 64 hexadecimal characters"), "{e}");
        let e = err(&app_toml(1).replace(SIGN, &"zz".repeat(32)));
        assert!(e.contains("app_sign"), "{e}");
        let e = err(&app_toml(1).replace(SECRET, "short"));
        assert!(e.contains("server_secret must be exactly 32 characters"), "{e}");
        assert!(err(&app_toml(0)).contains("app_id must not be 0"));
        assert!(err("heartbeat_ms = 0").contains("heartbeat_ms"));
        assert!(err("heartbeat_ms = 20000").contains("longer than heartbeat_ms"));
        assert!(err("outbound_queue = 0").contains("outbound_queue must not be 0"));
        assert!(err("outbound_queue = 33").contains("at least max_plays_per_session + 2"));
        assert!(err("listen = \"nowhere\"").contains("listen"));
        assert!(err("udp_port = 70000").contains("udp_port"));
        assert!(err("[[apps]]\napp_id = 1\n").contains("missing field"));
        for bad in ["0.0.0.0", "::", "224.0.0.1"] {
            let e = err(&format!("public_ip = \"{bad}\""));
            assert!(e.contains("not an address clients can send media to"), "{e}");
        }
    }

    #[test]
    fn example_file_parses_and_shows_the_defaults() {
        let text = include_str!("../../../huddle.example.toml");
        assert!(ServerConfig::from_toml_str(text).unwrap().apps.is_empty());
        // The commented-out app is valid too.
        let text = [
            "[[apps]]",
            "app_id",
            "app_sign",
            "server_secret",
            "allow_cbc_tokens",
        ]
        .iter()
        .fold(text.to_string(), |t, key| {
            t.replace(&format!("\n# {key}"), &format!("\n{key}"))
        });
        let c = ServerConfig::from_toml_str(&text).unwrap();
        let d = ServerConfig::default();
        assert_eq!(c.dev, d.dev);
        assert_eq!(c.tls_cert, d.tls_cert);
        assert_eq!(c.trusted_proxies, d.trusted_proxies);
        assert_eq!(c.drain_timeout, d.drain_timeout);
        assert!(c.turn.is_none());
        assert_eq!(c.media_workers, d.media_workers);
        assert_eq!(c.dtls_active, d.dtls_active);
        assert_eq!(c.listen, d.listen);
        assert_eq!(c.udp_port, d.udp_port);
        assert_eq!(c.tcp_port, d.tcp_port);
        assert_eq!(c.public_ip, d.public_ip);
        assert_eq!(c.heartbeat, d.heartbeat);
        assert_eq!(c.session_timeout, d.session_timeout);
        assert_eq!(c.grace, d.grace);
        assert_eq!(c.login_timeout, d.login_timeout);
        assert_eq!(c.default_max_member_count, d.default_max_member_count);
        assert_eq!(c.max_streams_per_app, d.max_streams_per_app);
        assert_eq!(c.max_streams_per_session, d.max_streams_per_session);
        assert_eq!(c.max_plays_per_session, d.max_plays_per_session);
        assert_eq!(c.max_sessions, d.max_sessions);
        assert_eq!(c.outbound_queue, d.outbound_queue);
        assert_eq!(c.rate_limit_per_sec, d.rate_limit_per_sec);
        assert_eq!(c.rate_limit_burst, d.rate_limit_burst);
        assert_eq!(c.max_connections_per_ip, d.max_connections_per_ip);
        assert_eq!(c.connection_rate_per_ip, d.connection_rate_per_ip);
        assert_eq!(c.connection_burst_per_ip, d.connection_burst_per_ip);
        assert_eq!(c.apps.len(), 1);
        assert!(!c.apps[0].allow_cbc_tokens);
        let on =
            ServerConfig::from_toml_str(&text.replace("allow_cbc_tokens = false", "allow_cbc_tokens = true"))
                .unwrap();
        assert!(on.apps[0].allow_cbc_tokens);
        assert!(on.apps[0].to_toml().contains("allow_cbc_tokens = true"));
        // The commented-out TURN table is valid and shows its default lifetime.
        let turn = ["[turn]", "urls", "secret", "credential_ttl_secs"]
            .iter()
            .fold(text.clone(), |t, key| {
                t.replace(&format!("\n# {key}"), &format!("\n{key}"))
            });
        let turn = ServerConfig::from_toml_str(&turn).unwrap().turn.unwrap();
        assert_eq!(turn.credential_ttl, TurnConfig::DEFAULT_TTL);
        assert_eq!(turn.urls.len(), 2);
        // Every key of the file format appears in the example (commented out or not).
        let example = include_str!("../../../huddle.example.toml");
        for key in FILE_KEYS {
            assert!(
                example.contains(&format!("\n{key} =")) || example.contains(&format!("\n# {key} =")),
                "huddle.example.toml does not show `{key}`"
            );
        }
    }

    #[test]
    fn every_file_key_is_listed() {
        // FILE_KEYS is what the example test checks; an unknown key proves the list is the
        // parser's: each listed key is accepted, and a typo of one is refused.
        for key in FILE_KEYS {
            let e = ServerConfig::from_toml_str(&format!("{key}x = 1"));
            assert!(e.unwrap_err().to_string().contains("unknown field"), "{key}");
        }
    }

    #[test]
    fn dev_mode_only_on_loopback_or_when_asked() {
        let dir = std::env::temp_dir().join(format!("huddle-dev-resolve-{}", std::process::id()));
        let with = |text: &str| {
            let mut c =
                ServerConfig::from_toml_str(&format!("data_dir = {:?}\n{text}", dir.display().to_string()))
                    .unwrap();
            c.resolve_apps().map(|()| c)
        };
        assert!(with("").unwrap().dev_mode);
        assert!(with("listen = \"[::1]:7880\"").unwrap().dev_mode);
        let e = with("listen = \"0.0.0.0:7880\"").unwrap_err().to_string();
        assert!(e.contains("no app is configured") && e.contains("--dev"), "{e}");
        assert!(with("listen = \"192.0.2.1:7880\"").is_err());
        assert!(with("listen = \"0.0.0.0:7880\"\ndev = true").unwrap().dev_mode);
        let apps = with(&format!("listen = \"0.0.0.0:7880\"\n{}", app_toml(3))).unwrap();
        assert!(!apps.dev_mode && apps.apps.len() == 1);
        let e = with(&format!("dev = true\n{}", app_toml(3)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("dev mode replaces"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn tls_and_turn_are_checked() {
        assert!(err("tls_cert = \"a.pem\"").contains("tls_cert is set without tls_key"));
        assert!(err("tls_key = \"a.pem\"").contains("tls_key is set without tls_cert"));
        let turn = |body: &str| err(&format!("[turn]\n{body}"));
        assert!(turn("urls = []\nsecret = \"0123456789abcdef\"").contains("at least one"));
        assert!(turn("urls = [\"http://x\"]\nsecret = \"0123456789abcdef\"").contains("not a turn:"));
        assert!(turn("urls = [\"turn:x\"]\nsecret = \"short\"").contains("at least 16"));
        assert!(
            turn("urls = [\"turn:x\"]\nsecret = \"0123456789abcdef\"\ncredential_ttl_secs = 0")
                .contains("credential_ttl_secs")
        );
        let c = ServerConfig::from_toml_str("[turn]\nurls = [\"turn:x\"]\nsecret = \"0123456789abcdef\"")
            .unwrap();
        assert!(!format!("{c:?}").contains("0123456789abcdef"));
    }

    #[test]
    fn dev_app_is_generated_once_and_reloaded() {
        let dir = std::env::temp_dir().join(format!("huddle-dev-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = ServerConfig::dev(&dir).unwrap();
        assert!(first.dev_mode);
        assert_eq!(first.apps.len(), 1);
        assert!(first.dev_app_path().exists());
        let second = ServerConfig::dev(&dir).unwrap();
        assert_eq!(first.apps[0].app_id, second.apps[0].app_id);
        assert_eq!(first.apps[0].app_sign.to_hex(), second.apps[0].app_sign.to_hex());
        assert_eq!(
            first.apps[0].server_secret.as_str(),
            second.apps[0].server_secret.as_str()
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(first.dev_app_path())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(first.dev_app_path(), "apps = []").unwrap();
        assert!(
            ServerConfig::dev(&dir)
                .unwrap_err()
                .to_string()
                .contains("exactly one")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn test_app_is_fixed_and_valid() {
        let a = test_app(7);
        assert_eq!(a.app_sign.to_hex(), test_app(7).app_sign.to_hex());
        assert_ne!(a.app_sign.to_hex(), test_app(8).app_sign.to_hex());
        assert_eq!(a.server_secret.as_str().len(), 32);
        let debug = format!("{a:?}");
        assert!(!debug.contains(&a.app_sign.to_hex()) && !debug.contains(a.server_secret.as_str()));
        assert!(ServerConfig::for_tests(vec![a]).validate().is_ok());
    }

    #[test]
    fn webhooks_are_read_and_checked() {
        let c = ServerConfig::from_toml_str(&format!(
            "{}webhook_url = \"https://a.example/hook\"\n[[apps.webhooks]]\nurl = \"http://127.0.0.1:9/x\"\ncallback_secret = \"s3cret-long\"\n",
            app_toml(1)
        ))
        .unwrap();
        let w = &c.apps[0].webhooks;
        assert_eq!(w.len(), 2);
        assert_eq!(
            (w[0].url.as_str(), w[0].callback_secret.as_deref()),
            ("https://a.example/hook", None)
        );
        assert_eq!(w[1].callback_secret.as_deref(), Some("s3cret-long"));
        assert!(!format!("{w:?}").contains("s3cret"), "Debug prints no secret");
        for (extra, needle) in [
            ("webhook_url = \"ftp://a/\"\n", "http:// or https://"),
            ("webhook_url = \"not a url\"\n", "not a valid URL"),
            (
                "webhook_url = \"http://a/\"\n[[apps.webhooks]]\nurl = \"http://a/\"\n",
                "twice",
            ),
            (
                "[[apps.webhooks]]\nurl = \"http://a/\"\ncallback_secret = \"short\"\n",
                "8 to 256",
            ),
        ] {
            let e = ServerConfig::from_toml_str(&format!("{}{extra}", app_toml(1)))
                .and_then(|c| c.validate().map(|()| c))
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{extra}: {e}");
        }
    }
}
