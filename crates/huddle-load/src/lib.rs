//! Huddle's load generator: simulated publishers and subscribers, each one a real WebRTC peer
//! connection (str0m: ICE, DTLS, SRTP), sending Opus-sized RTP at 50 packets per second with a
//! sequence number and send time in every payload, against a server behind the [`Target`] trait
//! ([`JanusTarget`], [`HuddleTarget`]); and B0, the plain UDP relay that gives the machine's ceiling
//! ([`Relay`], [`run_plain`]).
//!
//! A run ([`run`]) joins every publisher, then every subscriber (each plays every publisher, one
//! peer connection per played stream, as Huddle's protocol has it), measures over a fixed window,
//! and returns a [`Report`]: delivered packets per second, loss, jitter, one-way latency, join and
//! first-packet times, and the server's CPU and memory from `/proc`. Every client is a task on the
//! caller's tokio runtime with its own UDP socket, so two threads drive hundreds of clients. A run is
//! bounded: at most [`MAX_PUBLISHERS`] publishers, [`MAX_PLAY_STREAMS`] played streams, and
//! [`Plan::max_run`] of wall time.
//!
//! The churn soak ([`run_churn`], `huddle load-test --churn`) is the leak detector: clients that
//! log in, publish, play, hold and leave (cleanly, by dropping the socket, or mid-ICE) in a loop,
//! with the server's RSS sampled over the cycles and its live counts checked at the end
//! ([`ChurnReport`]).
//!
//! The flags of both command lines are [`cli::LoadArgs`] and [`cli::ChurnArgs`].
//!
//! It sends only to loopback, or, inside a network namespace made for the run, to the one address
//! its clients bind ([`Plan::bind`], default 127.0.0.1): see [`netguard`]. Janus's ICE ignores
//! loopback, so `scripts/bench.sh` runs Janus, Huddle and the generator in such a namespace with
//! `--bind 10.77.0.1`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), huddle_load::LoadError> {
//! use std::sync::Arc;
//! use huddle_load::{JanusTarget, Plan};
//!
//! let janus = Arc::new(JanusTarget::new("ws://127.0.0.1:8188"));
//! let mut plan = Plan::default();
//! (plan.publishers, plan.subscribers) = (2, 3);
//! // plan.bind = "10.77.0.1".parse().unwrap(); // inside the benchmark's network namespace
//! let report = huddle_load::run(janus, plan).await?;
//! println!("{}", report.to_table());
//! # Ok(()) }
//! ```

#![deny(unsafe_code)]

use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;

mod churn;
pub mod cli;
// Two libc calls without preconditions (gettid, sysconf); the socket calls are huddle-udp's.
#[allow(unsafe_code)]
pub mod metrics;
pub mod netguard;
pub mod packet;
mod peer;
mod relay;
mod report;
mod run;
mod rxstamp;
mod target;
mod ws;

pub use churn::{
    ChurnMemory, ChurnPlan, ChurnReport, LiveCounts, MAX_CHURN_CLIENTS, RssSample, fetch_live_counts,
    run_churn,
};
pub use peer::PcSetup;
pub use relay::{Relay, RelayStats};
pub use report::{Dist, PlayPhases, ProcReport, Report, ServerReport};
pub use run::{run, run_plain};
pub use target::huddle::{HuddleTarget, ServerCounts};
pub use target::janus::JanusTarget;

pub use metrics::ProcTarget;

/// The most publishers a run takes.
pub const MAX_PUBLISHERS: u32 = 1_000;
/// The most played streams (publishers × subscribers) a run takes.
pub const MAX_PLAY_STREAMS: u64 = 20_000;
/// The longest measurement window.
pub const MAX_DURATION: Duration = Duration::from_secs(3_600);

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The plan is out of bounds.
    #[error("bad plan: {0}")]
    Plan(String),
    /// Signaling with the target failed.
    #[error("signaling: {0}")]
    Signaling(String),
    /// The target refused a request.
    #[error("refused by the server: {0}")]
    Refused(String),
    /// A peer connection failed.
    #[error("media: {0}")]
    Media(String),
    /// A socket or `/proc` read failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// A server process could not be started.
    #[error("server process: {0}")]
    Process(String),
}

/// What to run.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Plan {
    /// Publishers, each sending one audio stream.
    pub publishers: u32,
    /// Subscribers, each playing every publisher's stream.
    pub subscribers: u32,
    /// Packets per second per publisher (50: 20 ms Opus frames).
    pub packet_rate: u32,
    /// The measurement window, after everyone joined.
    pub duration: Duration,
    /// How long joining may take (publishers, then again subscribers) before the window starts
    /// without the late ones.
    pub join_timeout: Duration,
    /// Clients negotiating at once.
    pub join_concurrency: usize,
    /// A hard bound on the whole run's wall time (joins, window, drain).
    pub max_run: Duration,
    /// Print a progress line on stderr each second.
    pub progress: bool,
    /// The server process (or thread) whose CPU and memory to sample.
    pub server: Option<ProcTarget>,
    /// Names the run's room and streams apart from other runs on the same server.
    pub run_id: String,
    /// The address the clients bind, and the only non-loopback address they send to
    /// ([`netguard`]): 127.0.0.1 unless the run is inside a network namespace of its own.
    pub bind: IpAddr,
}

impl Default for Plan {
    fn default() -> Self {
        Plan {
            publishers: 2,
            subscribers: 3,
            packet_rate: 50,
            duration: Duration::from_secs(5),
            join_timeout: Duration::from_secs(20),
            join_concurrency: 32,
            max_run: Duration::from_secs(120),
            progress: false,
            server: None,
            run_id: format!("load{:08x}", rand::random::<u32>()),
            bind: netguard::DEFAULT_BIND,
        }
    }
}

impl Plan {
    /// Checks the bounds.
    pub fn validate(&self) -> Result<(), LoadError> {
        let streams = u64::from(self.publishers) * u64::from(self.subscribers);
        if self.publishers == 0 || self.publishers > MAX_PUBLISHERS {
            return Err(LoadError::Plan(format!(
                "publishers must be 1..={MAX_PUBLISHERS}"
            )));
        }
        if streams > MAX_PLAY_STREAMS {
            return Err(LoadError::Plan(format!(
                "{streams} play streams; at most {MAX_PLAY_STREAMS}"
            )));
        }
        if self.packet_rate == 0 || self.packet_rate > 1000 {
            return Err(LoadError::Plan("packet rate must be 1..=1000 per second".into()));
        }
        if self.duration.is_zero() || self.duration > MAX_DURATION {
            return Err(LoadError::Plan(format!(
                "duration must be in (0, {MAX_DURATION:?}]"
            )));
        }
        if self.max_run < self.duration {
            return Err(LoadError::Plan("max_run is shorter than the window".into()));
        }
        check_run_id(&self.run_id)
    }
}

/// A run ID names rooms, users and streams: 1 to 32 of `[0-9A-Za-z_-]`.
pub(crate) fn check_run_id(id: &str) -> Result<(), LoadError> {
    let ok_id = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    if id.is_empty() || id.len() > 32 || !id.chars().all(ok_id) {
        return Err(LoadError::Plan("run_id: 1 to 32 of [0-9A-Za-z_-]".into()));
    }
    Ok(())
}

/// A simulated user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSpec {
    /// Index among the publishers, or among the subscribers.
    pub index: u32,
    /// Whether it publishes (else it plays).
    pub publisher: bool,
    /// `p{index}` or `s{index}`.
    pub user_id: String,
    /// The run's room.
    pub room_id: String,
}

impl UserSpec {
    fn publisher(plan: &Plan, index: u32) -> UserSpec {
        UserSpec {
            index,
            publisher: true,
            user_id: format!("p{index}"),
            room_id: plan.run_id.clone(),
        }
    }

    fn subscriber(plan: &Plan, index: u32) -> UserSpec {
        UserSpec {
            index,
            publisher: false,
            user_id: format!("s{index}"),
            room_id: plan.run_id.clone(),
        }
    }
}

/// A publisher's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSpec {
    /// The publisher's index.
    pub publisher: u32,
    /// `{run_id}-p{index}`, unique per run.
    pub stream_id: String,
}

impl StreamSpec {
    fn of(plan: &Plan, publisher: u32) -> StreamSpec {
        StreamSpec {
            publisher,
            stream_id: format!("{}-p{publisher}", plan.run_id),
        }
    }
}

/// A server the load runs against: its signaling, per user. The run calls [`Target::prepare`]
/// once, then per user [`Target::connect`], [`Target::publish`] or [`Target::play`] (once per
/// publisher), and [`Target::disconnect`] at the end; [`Target::cleanup`] last. The target drives
/// the SDP exchange through the [`PcSetup`] it is handed; media is the run's business.
pub trait Target: Send + Sync + 'static {
    /// A user's signaling connection.
    type Conn: Send + 'static;

    /// A short name for reports.
    fn name(&self) -> &'static str;

    /// The signaling URL (checked against [`netguard::check_url`] before the run); the first
    /// of [`Target::servers`].
    fn signaling_url(&self) -> &str;

    /// Every signaling URL the clients are spread over (each checked against
    /// [`netguard::check_url`]); [`Target::server_of`] says which one a user gets.
    fn servers(&self) -> Vec<String> {
        vec![self.signaling_url().to_string()]
    }

    /// The index in [`Target::servers`] of the server `user` logs in to.
    fn server_of(&self, user: &UserSpec) -> usize {
        let _ = user;
        0
    }

    /// Prepares the run's room (Janus: creates it).
    fn prepare(&self, plan: &Plan) -> impl Future<Output = Result<(), LoadError>> + Send;

    /// Opens a user's signaling (login, session).
    fn connect(&self, user: &UserSpec) -> impl Future<Output = Result<Self::Conn, LoadError>> + Send;

    /// Publishes `stream` over the connection `pc`, up to the remote SDP being applied.
    fn publish(
        &self,
        conn: &mut Self::Conn,
        stream: &StreamSpec,
        pc: &mut PcSetup,
    ) -> impl Future<Output = Result<(), LoadError>> + Send;

    /// Plays `stream` over the connection `pc`, up to the SDP exchange being complete.
    fn play(
        &self,
        conn: &mut Self::Conn,
        stream: &StreamSpec,
        pc: &mut PcSetup,
    ) -> impl Future<Output = Result<(), LoadError>> + Send;

    /// Ends a user's signaling.
    fn disconnect(&self, conn: Self::Conn) -> impl Future<Output = ()> + Send;

    /// Removes what [`Target::prepare`] made.
    fn cleanup(&self) -> impl Future<Output = ()> + Send;
}
