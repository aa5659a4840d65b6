//! What the app gives the engine: the profile at creation and a room config at each login.

use std::fmt;
use std::time::Duration;

/// The use case the engine is tuned for.
///
/// The control plane carries it; the media plane (next) picks codecs, bitrates and audio
/// processing from it, as the hosted SDKs do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Scenario {
    /// General purpose.
    #[default]
    Default,
    /// One-to-one or small-group voice calls: low latency speech.
    StandardVoiceCall,
    /// Voice calls tuned for sound quality over bandwidth.
    HighQualityVoiceCall,
    /// One-to-one or small-group video calls.
    StandardVideoCall,
    /// Video calls tuned for picture quality over bandwidth.
    HighQualityVideoCall,
    /// Audio chat rooms with many listeners.
    StandardChatroom,
    /// Audio chat rooms tuned for sound quality.
    HighQualityChatroom,
    /// One or a few hosts, many viewers.
    Broadcast,
    /// Singing with accompaniment.
    Karaoke,
}

/// How the engine is created: the app's credentials, the scenario and the server.
///
/// ```
/// use huddle::{EngineProfile, Scenario};
/// let mut profile = EngineProfile::new(1234, "ws://127.0.0.1:7880");
/// profile.app_sign = Some("00".repeat(32));
/// profile.scenario = Scenario::StandardVoiceCall;
/// profile.config.reconnect_budget = std::time::Duration::from_secs(60);
/// ```
#[derive(Clone, Default)]
pub struct EngineProfile {
    /// The app, as configured on the server (non-zero).
    pub app_id: u32,
    /// The app's AppSign, 64 hexadecimal characters. `None` for an engine that only logs in
    /// with tokens ([`RoomConfig::token`]). It never leaves the engine: logins answer the
    /// server's challenge with a signature made from it.
    pub app_sign: Option<String>,
    /// The use case.
    pub scenario: Scenario,
    /// The server: `ws://host:port[/path]`, or `wss://host[:port][/path]` for a server behind
    /// TLS (its own or a reverse proxy's); the path defaults to `/ws`.
    pub server: String,
    /// More servers of the same deployment (the nodes of a cluster, or the addresses of one
    /// server), each written as [`server`](Self::server). A connection goes to `server` first and
    /// stays with a server while it answers; after an attempt that fails (unreachable, timed out,
    /// or refused as busy or shutting down, such as 1009006 or 1009008) the next goes to the next server in
    /// this list, round and round, within the login timeout or the reconnect budget. A connection
    /// that was up and broke is retried on its own server first. Empty (the default): one server.
    ///
    /// On a new server the room is joined afresh: the engine publishes and plays again what it
    /// had, as after any break that its server did not outlast. (The hosted SDKs pick their
    /// servers themselves; a self-hosted deployment names its own, as it would behind a load
    /// balancer.)
    ///
    /// ```
    /// use huddle::EngineProfile;
    /// let mut profile = EngineProfile::new(1234, "wss://a.huddle.example.com");
    /// profile.fallback_servers = vec!["wss://b.huddle.example.com".into()];
    /// ```
    pub fallback_servers: Vec<String>,
    /// An extra CA certificate (PEM text, one or more certificates) that `wss://` servers' certificates
    /// may chain to, besides the system's roots: for a self-hosted server whose certificate is
    /// issued by your own CA. `None` (the default): the system's roots only.
    ///
    /// ```
    /// use huddle::EngineProfile;
    /// let mut profile = EngineProfile::new(1234, "wss://huddle.example.com");
    /// # let pem = String::new();
    /// // let pem = std::fs::read_to_string("my-ca.pem")?;
    /// profile.ca_cert_pem = Some(pem).filter(|p| !p.is_empty());
    /// ```
    pub ca_cert_pem: Option<String>,
    /// Timings and sizes; the defaults suit most apps.
    pub config: EngineConfig,
}

impl EngineProfile {
    /// A profile for `app_id` at `server`, with no AppSign and the defaults otherwise.
    pub fn new(app_id: u32, server: impl Into<String>) -> Self {
        EngineProfile {
            app_id,
            server: server.into(),
            ..Default::default()
        }
    }
}

impl fmt::Debug for EngineProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EngineProfile")
            .field("app_id", &self.app_id)
            .field("app_sign", &self.app_sign.as_ref().map(|_| "<redacted>"))
            .field("scenario", &self.scenario)
            .field("server", &self.server)
            .field("fallback_servers", &self.fallback_servers)
            .field("ca_cert_pem", &self.ca_cert_pem.as_ref().map(|_| "<PEM>"))
            .field("config", &self.config)
            .finish()
    }
}

/// Engine timings and sizes.
///
/// ```
/// let mut config = huddle::EngineConfig::default();
/// config.login_timeout = std::time::Duration::from_secs(5);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EngineConfig {
    /// How long the first login of a room may take, connection retries included, before it
    /// fails with 1002030 (never connected) or 1002031 (connected, no answer). Default 10 s.
    pub login_timeout: Duration,
    /// How long the engine keeps trying to get a broken room connection back before it gives up
    /// with 1002053. Default 20 minutes, as in the hosted SDKs.
    pub reconnect_budget: Duration,
    /// The first delay between two connection attempts; it doubles at each failure, with ±25%
    /// jitter. Default 250 ms.
    pub retry_delay_min: Duration,
    /// The largest delay between two connection attempts. Default 5 s.
    ///
    /// In the first 30 s of a break the delay is at most 400 ms (500 ms with the jitter, or
    /// this value if lower), so that the end of a short outage is noticed within half a second;
    /// after that the backoff goes on up to this value.
    pub retry_delay_max: Duration,
    /// How long one connection attempt (TCP, WebSocket, hello, login) may go without a step
    /// forward: it starts again from when the WebSocket opens and from the `hello`, so a slow
    /// but working connection is not given up for a fresh one. Default 5 s.
    pub attempt_timeout: Duration,
    /// How long before a token's expiry `on_room_token_will_expire` fires. Default 30 s.
    pub token_warning: Duration,
    /// How long a logout (also the one `destroy` does) waits for the server's answer before it
    /// closes the connection anyway. Default 1 s.
    pub logout_timeout: Duration,
    /// Worker threads of the engine's runtime (besides its control thread and its event thread).
    /// Default 2.
    pub worker_threads: usize,
    /// Capacity of the queue from the engine to the event thread. When the app's handler is
    /// this far behind, the engine drops the events that do not fit (it never waits for the
    /// handler) and reports them with `on_events_dropped` once there is room. Default 8192.
    pub event_queue: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            login_timeout: Duration::from_secs(10),
            reconnect_budget: Duration::from_secs(20 * 60),
            retry_delay_min: Duration::from_millis(250),
            retry_delay_max: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(5),
            token_warning: Duration::from_secs(30),
            logout_timeout: Duration::from_secs(1),
            worker_threads: 2,
            event_queue: 8192,
        }
    }
}

/// How to log in to a room.
///
/// ```
/// let mut config = huddle::RoomConfig::default();
/// config.is_user_status_notify = true;
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RoomConfig {
    /// The room's member limit if this login creates the room; 0 for the server's default.
    pub max_member_count: u32,
    /// Whether this engine wants `on_room_user_update` (users coming and going).
    pub is_user_status_notify: bool,
    /// A Token04 token from the app's server. When set the login uses it instead of the AppSign;
    /// an engine created without an AppSign must set it.
    pub token: Option<String>,
}

impl fmt::Debug for RoomConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoomConfig")
            .field("max_member_count", &self.max_member_count)
            .field("is_user_status_notify", &self.is_user_status_notify)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}
