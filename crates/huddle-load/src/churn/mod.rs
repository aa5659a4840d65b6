//! The churn soak: simulated users that join, publish, play, hold, stop and leave in a loop for a
//! long run, while the server's memory is sampled; a leak shows as RSS that keeps growing with the
//! cycles, and as a server that is not empty once everyone left.
//!
//! Each of [`ChurnPlan::clients`] clients loops, with its own random generator seeded from
//! [`ChurnPlan::seed`] and its index:
//!
//! 1. WebSocket login (AppSign) as a new user of its room (`room_size` clients share a room);
//! 2. publish a stream over a real peer connection (str0m: ICE, DTLS, SRTP) sending Opus-sized
//!    probes at [`ChurnPlan::packet_rate`];
//! 3. play 1 to [`ChurnPlan::max_plays`] streams of others in its room that are live now, each over
//!    its own peer connection;
//! 4. hold a random time in [`ChurnPlan::hold_min`, `hold_max`];
//! 5. leave, one of three ways: **clean** (stop the connections, `unpublish`, `stop_play`,
//!    `logout`), **drop** (stop the connections and close the socket without a word: the server
//!    keeps the session for its grace period), or **mid-ICE** (publish, close the peer connection a
//!    few milliseconds into ICE and the socket without a logout: the server's connect timeout and
//!    grace clean up), with [`ChurnPlan::drop_ratio`] and [`ChurnPlan::mid_ice_ratio`].
//!
//! Races between users are expected and not errors: a stream whose publisher left before the play
//! (its first `play_update` says unavailable, or the play failed after it left) counts as *gone*.
//! Everything else that fails is an error, counted by phase and code (`login:1001005`,
//! `publish:signaling`, `play:no-media`, …).
//!
//! The server's RSS (from `/proc/PID`, [`ChurnPlan::server`]) is sampled each second; the report
//! gives it at the end of the warm-up and at the end, and the slope in KiB per 1000 cycles by least
//! squares over the samples after the warm-up. At the end the run waits (at most
//! [`ChurnPlan::empty_timeout`]) until the server's live counts (`GET /api/info`, asked from
//! loopback: connections, sessions, rooms, streams, peer connections) are all zero.
//!
//! The code: this file (the plan and the run), `cycle` (a client's loop), `report`, `http` (the
//! live counts) and `sampler` (the server's memory).

mod cycle;
mod http;
mod report;
mod sampler;

pub use http::fetch_live_counts;
pub use report::{ChurnMemory, ChurnReport, LiveCounts, RssSample};

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::metrics::ProcTarget;
use crate::{HuddleTarget, LoadError, MAX_DURATION, Target, netguard};
use cycle::{Counts, Ctx, client_loop};
use report::memory;
use sampler::spawn_sampler;

/// The most clients a churn run takes.
pub const MAX_CHURN_CLIENTS: u32 = 500;

/// The most streams a client plays in one cycle.
pub const MAX_CHURN_PLAYS: u32 = 8;

/// The longest hold.
pub const MAX_HOLD: Duration = Duration::from_secs(60);

/// What a churn run does.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ChurnPlan {
    /// Simulated clients, each looping on its own.
    pub clients: u32,
    /// How long clients start new cycles.
    pub duration: Duration,
    /// The samples before this are not in the slope (allocator pools and caches fill up).
    pub warmup: Duration,
    /// Seeds every client's random choices (with its index).
    pub seed: u64,
    /// The shortest hold of a cycle.
    pub hold_min: Duration,
    /// The longest hold of a cycle.
    pub hold_max: Duration,
    /// Streams of others a client plays per cycle, at most (at least one when any is live).
    pub max_plays: u32,
    /// Clients per room.
    pub room_size: u32,
    /// Share of cycles that end by closing the socket without a logout.
    pub drop_ratio: f64,
    /// Share of cycles that close the publish connection during ICE and then the socket.
    pub mid_ice_ratio: f64,
    /// Probes per second of each publisher.
    pub packet_rate: u32,
    /// How long a peer connection may take to connect.
    pub connect_timeout: Duration,
    /// How long to wait, after the last cycle, for the server to be empty.
    pub empty_timeout: Duration,
    /// Print a progress line on stderr each second.
    pub progress: bool,
    /// The server process whose memory to sample.
    pub server: Option<ProcTarget>,
    /// Names the run's rooms, users and streams apart from other runs.
    pub run_id: String,
    /// The clients' address ([`netguard`]).
    pub bind: IpAddr,
}

impl Default for ChurnPlan {
    fn default() -> Self {
        ChurnPlan {
            clients: 20,
            duration: Duration::from_secs(60),
            warmup: Duration::from_secs(12),
            seed: 1,
            hold_min: Duration::from_millis(500),
            hold_max: Duration::from_secs(3),
            max_plays: 2,
            room_size: 4,
            drop_ratio: 0.15,
            mid_ice_ratio: 0.1,
            packet_rate: 50,
            connect_timeout: Duration::from_secs(10),
            empty_timeout: Duration::from_secs(60),
            progress: false,
            server: None,
            run_id: format!("churn{:08x}", rand::random::<u32>()),
            bind: netguard::DEFAULT_BIND,
        }
    }
}

impl ChurnPlan {
    /// The default warm-up of a run of `duration`: a fifth of it, at most a minute.
    pub fn default_warmup(duration: Duration) -> Duration {
        (duration / 5).min(Duration::from_secs(60))
    }

    /// Checks the bounds.
    pub fn validate(&self) -> Result<(), LoadError> {
        let bad = |m: String| Err(LoadError::Plan(m));
        if self.clients == 0 || self.clients > MAX_CHURN_CLIENTS {
            return bad(format!("clients must be 1..={MAX_CHURN_CLIENTS}"));
        }
        if self.duration.is_zero() || self.duration > MAX_DURATION {
            return bad(format!("duration must be in (0, {MAX_DURATION:?}]"));
        }
        if self.warmup >= self.duration {
            return bad("the warm-up must be shorter than the run".into());
        }
        if self.hold_min > self.hold_max || self.hold_max > MAX_HOLD {
            return bad(format!("holds: hold_min <= hold_max <= {MAX_HOLD:?}"));
        }
        if self.max_plays > MAX_CHURN_PLAYS {
            return bad(format!("max_plays must be 0..={MAX_CHURN_PLAYS}"));
        }
        if !(1..=100).contains(&self.room_size) {
            return bad("room_size must be 1..=100".into());
        }
        let ratio = |r: f64| (0.0..=1.0).contains(&r);
        if !ratio(self.drop_ratio) || !ratio(self.mid_ice_ratio) || self.drop_ratio + self.mid_ice_ratio > 1.0
        {
            return bad("drop_ratio and mid_ice_ratio: in [0, 1], together at most 1".into());
        }
        if self.packet_rate == 0 || self.packet_rate > 1000 {
            return bad("packet rate must be 1..=1000 per second".into());
        }
        if self.connect_timeout.is_zero() || self.connect_timeout > Duration::from_secs(120) {
            return bad("connect_timeout must be in (0, 120 s]".into());
        }
        if self.empty_timeout > Duration::from_secs(600) {
            return bad("empty_timeout is at most 600 s".into());
        }
        crate::check_run_id(&self.run_id)
    }
}

/// Runs the churn soak `plan` against the Huddle server `target`.
///
/// Refuses a [`ChurnPlan::bind`] or signaling URL outside the [`netguard`] rule. Returns the
/// report also when cycles failed; `Err` only when the run could not be made.
pub async fn run_churn(target: Arc<HuddleTarget>, plan: ChurnPlan) -> Result<ChurnReport, LoadError> {
    plan.validate()?;
    netguard::check_bind(plan.bind)?;
    let urls = target.servers();
    for url in &urls {
        netguard::check_url(url, plan.bind)?;
    }
    let cert = str0m::crypto::from_feature_flags()
        .dtls_provider
        .generate_certificate();
    let started = Instant::now();
    let server = plan.server;
    let rss_start = server.map(|s| s.sample()).transpose()?.map(|s| s.rss_kib);
    let ctx = Arc::new(Ctx {
        target,
        cert,
        live: Mutex::default(),
        counts: Counts::default(),
        errors: Mutex::default(),
        end: started + plan.duration,
        plan: plan.clone(),
    });
    let samples = Arc::new(Mutex::new(Vec::new()));
    let sampler = spawn_sampler(ctx.clone(), started, samples.clone());
    let clients: Vec<JoinHandle<()>> = (0..plan.clients)
        .map(|i| tokio::spawn(client_loop(ctx.clone(), i)))
        .collect();
    // A cycle started just before the end takes at most its hold, the connect timeouts and the
    // signaling timeouts.
    let bound = ctx.end + plan.hold_max + 3 * plan.connect_timeout + Duration::from_secs(30);
    for mut c in clients {
        if tokio::time::timeout_at(bound.into(), &mut c).await.is_err() {
            c.abort();
            ctx.error("client:stuck".into(), "a client did not finish its cycle in time");
        }
    }
    let cycles_done = Instant::now();
    sampler.abort();
    let rss_end = server.map(|s| s.sample()).transpose()?.map(|s| s.rss_kib);

    // Back to empty? (Dropped sessions wait out the server's grace; mid-ICE connections its
    // connect timeout.)
    let mut live_end: Option<LiveCounts>;
    let mut empty_after_s = None;
    let wait_until = cycles_done + plan.empty_timeout;
    loop {
        // The cluster is empty when every node is (a room's rooms count on each node with members).
        let mut all = Some(LiveCounts::default());
        for url in &urls {
            let l = match fetch_live_counts(url).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!("live counts of {url}: {e}");
                    None
                }
            };
            all = all.zip(l).map(|(a, l)| a.sum(&l));
        }
        live_end = all;
        if live_end.is_some_and(|l| l.is_empty()) {
            empty_after_s = Some(cycles_done.elapsed().as_secs_f64());
            break;
        }
        if live_end.is_none() || Instant::now() >= wait_until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let rss_idle = server.map(|s| s.sample()).transpose()?.map(|s| s.rss_kib);
    let samples = std::mem::take(&mut *samples.lock().expect("not poisoned"));
    let warmup_s = plan.warmup.as_secs_f64();
    let memory = match (server, rss_start, rss_end, rss_idle) {
        (Some(t), Some(start), Some(end), Some(idle)) => {
            Some(memory(t.pid, start, samples, warmup_s, end, idle))
        }
        _ => None,
    };
    let c = &ctx.counts;
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let (errors, error_samples) = std::mem::take(&mut *ctx.errors.lock().expect("not poisoned"));
    Ok(ChurnReport {
        target: "huddle".into(),
        mode: "churn".into(),
        clients: plan.clients,
        seed: plan.seed,
        duration_s: plan.duration.as_secs_f64(),
        warmup_s,
        cycles_completed: g(&c.cycles),
        cycles_clean: g(&c.clean),
        cycles_dropped: g(&c.dropped),
        cycles_mid_ice: g(&c.mid_ice),
        cycles_failed: g(&c.failed),
        plays: g(&c.plays),
        plays_with_media: g(&c.plays_media),
        plays_gone: g(&c.plays_gone),
        packets_sent: g(&c.sent),
        packets_received: g(&c.received),
        errors,
        error_samples,
        memory,
        live_end,
        empty_after_s,
        total_s: started.elapsed().as_secs_f64(),
        servers: ctx.target.server_counts(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cycle::error_key;

    #[test]
    fn plans_are_bounded_and_errors_keyed() {
        assert!(ChurnPlan::default().validate().is_ok());
        let bad = [
            ChurnPlan {
                clients: 0,
                ..ChurnPlan::default()
            },
            ChurnPlan {
                warmup: Duration::from_secs(60),
                ..ChurnPlan::default()
            },
            ChurnPlan {
                drop_ratio: 0.7,
                mid_ice_ratio: 0.5,
                ..ChurnPlan::default()
            },
        ];
        for p in bad {
            assert!(p.validate().is_err(), "{p:?}");
        }
        assert_eq!(
            ChurnPlan::default_warmup(Duration::from_secs(600)),
            Duration::from_secs(60)
        );
        assert_eq!(
            ChurnPlan::default_warmup(Duration::from_secs(25)),
            Duration::from_secs(5)
        );
        assert_eq!(
            error_key("login", &LoadError::Refused("1001005 bad sign".into())),
            "login:1001005"
        );
        assert_eq!(
            error_key("play", &LoadError::Signaling("closed".into())),
            "play:signaling"
        );
    }
}
