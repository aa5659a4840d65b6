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

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::metrics::ProcTarget;
use crate::peer::{PcRole, PcSetup, run_pc};
use crate::run::{ClientOutcome, Shared};
use crate::{HuddleTarget, LoadError, MAX_DURATION, StreamSpec, Target, UserSpec, netguard};

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

/// The server's counts, from `GET /api/info` (`"live"`, given to loopback callers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveCounts {
    /// Open WebSocket connections.
    pub connections: u64,
    /// Sessions, attached or in grace.
    pub sessions: u64,
    /// Sessions in grace.
    pub detached: u64,
    /// Rooms.
    pub rooms: u64,
    /// Published streams.
    pub streams: u64,
    /// Open peer connections.
    pub peer_connections: u64,
}

impl LiveCounts {
    /// Whether nothing is left.
    pub fn is_empty(&self) -> bool {
        *self == LiveCounts::default()
    }
}

/// One sample of the server's memory.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RssSample {
    /// Seconds since the start.
    pub t_s: f64,
    /// Cycles completed by then.
    pub cycles: u64,
    /// Resident set, KiB.
    pub rss_kib: u64,
}

/// The server's memory over a churn run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChurnMemory {
    /// The sampled process.
    pub pid: u32,
    /// RSS before the first client.
    pub rss_kib_start: u64,
    /// RSS at the end of the warm-up (the first sample after it).
    pub rss_kib_warmup_end: u64,
    /// RSS when the last cycle ended.
    pub rss_kib_end: u64,
    /// RSS once the server was empty again (or the wait for it ended).
    pub rss_kib_idle: u64,
    /// The largest RSS after the warm-up.
    pub rss_kib_max_after_warmup: u64,
    /// Least-squares slope of RSS over cycles completed, after the warm-up: KiB per 1000 cycles
    /// (`None` with fewer than two samples or no cycle between them).
    pub slope_kib_per_1000_cycles: Option<f64>,
    /// Samples after the warm-up (the slope's).
    pub samples_after_warmup: u64,
    /// Every sample, one a second.
    pub samples: Vec<RssSample>,
}

/// The result of a churn run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChurnReport {
    /// `huddle`.
    pub target: String,
    /// `churn`.
    pub mode: String,
    /// Clients.
    pub clients: u32,
    /// The seed.
    pub seed: u64,
    /// How long cycles were started, seconds.
    pub duration_s: f64,
    /// The warm-up, seconds.
    pub warmup_s: f64,
    /// Cycles that ran to their end (clean, dropped or mid-ICE).
    pub cycles_completed: u64,
    /// Completed cycles that logged out.
    pub cycles_clean: u64,
    /// Completed cycles that closed the socket without a logout.
    pub cycles_dropped: u64,
    /// Completed cycles that closed the publish connection during ICE.
    pub cycles_mid_ice: u64,
    /// Cycles cut short by an error.
    pub cycles_failed: u64,
    /// Plays asked for.
    pub plays: u64,
    /// Plays that received media.
    pub plays_with_media: u64,
    /// Plays whose publisher left meanwhile (expected).
    pub plays_gone: u64,
    /// Probes sent by publishers.
    pub packets_sent: u64,
    /// Probes received by players.
    pub packets_received: u64,
    /// Errors by `phase:code`.
    pub errors: BTreeMap<String, u64>,
    /// The first errors in full.
    pub error_samples: Vec<String>,
    /// The server's memory (with a server PID).
    pub memory: Option<ChurnMemory>,
    /// The server's counts at the end (`None`: it gave none).
    pub live_end: Option<LiveCounts>,
    /// Seconds after the last cycle until the server was empty (`None`: not within the wait).
    pub empty_after_s: Option<f64>,
    /// The whole run, seconds.
    pub total_s: f64,
}

impl ChurnReport {
    /// Whether the server was seen empty at the end.
    pub fn back_to_empty(&self) -> bool {
        self.live_end.is_some_and(|l| l.is_empty())
    }

    /// Errors in all.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// What makes the run not clean: no cycle, errors, a server not back to empty.
    pub fn failures(&self) -> Vec<String> {
        let mut f = Vec::new();
        if self.cycles_completed == 0 {
            f.push("no cycle completed".into());
        }
        if !self.errors.is_empty() {
            let first = self.error_samples.first().map_or("", String::as_str);
            f.push(format!(
                "{} errors ({:?}); first: {first}",
                self.error_count(),
                self.errors
            ));
        }
        match self.live_end {
            None => f.push("the server gave no live counts (GET /api/info from loopback)".into()),
            Some(l) if !l.is_empty() => f.push(format!("the server is not empty at the end: {l:?}")),
            Some(_) => {}
        }
        f
    }

    /// As one JSON object.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a report serializes")
    }

    /// As a table for people.
    pub fn to_table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "target            {} (churn), {} clients, seed {}",
            self.target, self.clients, self.seed
        );
        let _ = writeln!(
            t,
            "run               {:.1} s of cycles (warm-up {:.1} s), {:.1} s in all",
            self.duration_s, self.warmup_s, self.total_s
        );
        let _ = writeln!(
            t,
            "cycles            {} completed ({} clean, {} dropped socket, {} dropped mid-ICE), {} failed",
            self.cycles_completed,
            self.cycles_clean,
            self.cycles_dropped,
            self.cycles_mid_ice,
            self.cycles_failed
        );
        let _ = writeln!(
            t,
            "plays             {} asked, {} with media, {} gone (publisher left)",
            self.plays, self.plays_with_media, self.plays_gone
        );
        let _ = writeln!(
            t,
            "packets           {} sent, {} received",
            self.packets_sent, self.packets_received
        );
        if self.errors.is_empty() {
            let _ = writeln!(t, "errors            none");
        } else {
            let list: Vec<String> = self.errors.iter().map(|(k, n)| format!("{k} x{n}")).collect();
            let _ = writeln!(t, "errors            {}", list.join(", "));
            for e in self.error_samples.iter().take(5) {
                let _ = writeln!(t, "  {e}");
            }
        }
        match &self.memory {
            Some(m) => {
                let _ = writeln!(
                    t,
                    "server RSS KiB    start {}, warm-up end {}, end {}, idle {}, max after warm-up {}",
                    m.rss_kib_start,
                    m.rss_kib_warmup_end,
                    m.rss_kib_end,
                    m.rss_kib_idle,
                    m.rss_kib_max_after_warmup
                );
                let slope = m
                    .slope_kib_per_1000_cycles
                    .map_or("n/a".to_string(), |s| format!("{s:+.1}"));
                let _ = writeln!(
                    t,
                    "RSS slope         {slope} KiB per 1000 cycles ({} samples after warm-up)",
                    m.samples_after_warmup
                );
            }
            None => {
                let _ = writeln!(t, "server RSS        not sampled (no server PID)");
            }
        }
        let live = match (self.live_end, self.empty_after_s) {
            (None, _) => "no live counts (GET /api/info from loopback)".to_string(),
            (Some(l), Some(s)) if l.is_empty() => format!("empty {s:.1} s after the last cycle"),
            (Some(l), _) => format!(
                "NOT EMPTY: {} connections, {} sessions ({} detached), {} rooms, {} streams, {} peer \
                 connections",
                l.connections, l.sessions, l.detached, l.rooms, l.streams, l.peer_connections
            ),
        };
        let _ = writeln!(t, "server at end     {live}");
        t
    }
}

/// How a cycle ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    Clean,
    Drop,
    MidIce,
}

#[derive(Default)]
struct Counts {
    cycles: AtomicU64,
    clean: AtomicU64,
    dropped: AtomicU64,
    mid_ice: AtomicU64,
    failed: AtomicU64,
    plays: AtomicU64,
    plays_media: AtomicU64,
    plays_gone: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
    errors: AtomicU64,
}

/// What the clients share.
struct Ctx {
    target: Arc<HuddleTarget>,
    plan: ChurnPlan,
    cert: Option<str0m::config::DtlsCert>,
    /// Streams whose publish connection is up, per room: (stream ID, client).
    live: Mutex<HashMap<u32, Vec<(String, u32)>>>,
    counts: Counts,
    errors: Mutex<(BTreeMap<String, u64>, Vec<String>)>,
    /// No cycle starts after this.
    end: Instant,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// `phase:code`: the server's error code for a refusal, else the kind of failure.
fn error_key(phase: &str, e: &LoadError) -> String {
    let code = match e {
        LoadError::Refused(m) => m.split_whitespace().next().unwrap_or("refused").to_string(),
        LoadError::Signaling(_) => "signaling".into(),
        LoadError::Media(_) => "media".into(),
        LoadError::Io(_) => "io".into(),
        LoadError::Plan(_) => "plan".into(),
        LoadError::Process(_) => "process".into(),
    };
    format!("{phase}:{code}")
}

impl Ctx {
    fn error(&self, key: String, detail: impl std::fmt::Display) {
        bump(&self.counts.errors);
        let mut e = self.errors.lock().expect("not poisoned");
        if e.1.len() < 20 {
            e.1.push(format!("{key}: {detail}"));
        }
        *e.0.entry(key).or_default() += 1;
    }

    fn load_error(&self, phase: &str, e: &LoadError) {
        self.error(error_key(phase, e), e);
    }

    fn add_live(&self, room: u32, stream: &str, client: u32) {
        let mut live = self.live.lock().expect("not poisoned");
        live.entry(room).or_default().push((stream.to_string(), client));
    }

    fn remove_live(&self, room: u32, stream: &str) {
        let mut live = self.live.lock().expect("not poisoned");
        if let Some(v) = live.get_mut(&room) {
            v.retain(|(s, _)| s != stream);
        }
    }

    fn is_live(&self, room: u32, stream: &str) -> bool {
        let live = self.live.lock().expect("not poisoned");
        live.get(&room)
            .is_some_and(|v| v.iter().any(|(s, _)| s == stream))
    }

    /// Up to `n` live streams of others in `room`, at random.
    fn pick(&self, room: u32, me: u32, n: u32, rng: &mut StdRng) -> Vec<String> {
        let live = self.live.lock().expect("not poisoned");
        let mut others: Vec<String> = live
            .get(&room)
            .map(|v| {
                v.iter()
                    .filter(|(_, c)| *c != me)
                    .map(|(s, _)| s.clone())
                    .collect()
            })
            .unwrap_or_default();
        let mut out = Vec::new();
        while out.len() < n as usize && !others.is_empty() {
            out.push(others.swap_remove(rng.gen_range(0..others.len())));
        }
        out
    }
}

/// A play started in a cycle.
struct Play {
    stream: String,
    started: Instant,
    ready: oneshot::Receiver<()>,
    connected: bool,
    task: JoinHandle<ClientOutcome>,
}

/// One client's loop until the run's end.
async fn client_loop(ctx: Arc<Ctx>, index: u32) {
    let golden = 0x9e37_79b9_7f4a_7c15u64;
    let mut rng = StdRng::seed_from_u64(ctx.plan.seed ^ u64::from(index + 1).wrapping_mul(golden));
    // Spread the first logins over a second.
    tokio::time::sleep(Duration::from_millis(rng.gen_range(0..1000))).await;
    let mut n = 0u64;
    while Instant::now() < ctx.end {
        cycle(&ctx, index, n, &mut rng).await;
        n += 1;
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..200))).await;
    }
}

/// One cycle: login, publish, play, hold, leave.
async fn cycle(ctx: &Arc<Ctx>, index: u32, n: u64, rng: &mut StdRng) {
    let plan = &ctx.plan;
    let x: f64 = rng.r#gen();
    let exit = if x < plan.mid_ice_ratio {
        Exit::MidIce
    } else if x < plan.mid_ice_ratio + plan.drop_ratio {
        Exit::Drop
    } else {
        Exit::Clean
    };
    let hold = rng.gen_range(plan.hold_min..=plan.hold_max);
    let want_plays = if plan.max_plays == 0 {
        0
    } else {
        rng.gen_range(1..=plan.max_plays)
    };
    let room = index / plan.room_size;
    let user = UserSpec {
        index,
        publisher: true,
        user_id: format!("c{index}n{n}"),
        room_id: format!("{}-r{room}", plan.run_id),
    };
    let stream = StreamSpec {
        publisher: index,
        stream_id: format!("{}-c{index}n{n}", plan.run_id),
    };
    let shared = Arc::new(Shared::open(plan.packet_rate));
    let counts = &ctx.counts;
    let fail = || bump(&counts.failed);

    let mut conn = match ctx.target.connect(&user).await {
        Ok(c) => c,
        Err(e) => {
            ctx.load_error("login", &e);
            return fail();
        }
    };
    let publish = async {
        let mut setup = PcSetup::new(plan.bind, ctx.cert.as_ref())?;
        ctx.target.publish(&mut conn, &stream, &mut setup).await?;
        Ok::<_, LoadError>(setup)
    }
    .await;
    let setup = match publish {
        Ok(s) => s,
        Err(e) => {
            ctx.load_error("publish", &e);
            let _ = conn.logout().await;
            return fail();
        }
    };
    let role = PcRole::Publish { publisher: index };
    let started = Instant::now();
    let (ready_tx, ready_rx) = oneshot::channel();
    let publisher = tokio::spawn(run_pc(setup, role, shared.clone(), started, ready_tx));

    if exit == Exit::MidIce {
        // ICE has begun (the first checks go out at once); vanish a few milliseconds into it.
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..8))).await;
        let _ = shared.stop.send(true);
        let _ = publisher.await;
        drop(conn);
        bump(&counts.mid_ice);
        bump(&counts.cycles);
        return;
    }

    let stop_all = |shared: &Shared| {
        let _ = shared.stop.send(true);
    };
    if !matches!(
        tokio::time::timeout(plan.connect_timeout, ready_rx).await,
        Ok(Ok(()))
    ) {
        stop_all(&shared);
        let out = publisher.await.unwrap_or_else(ClientOutcome::failed);
        let detail = out
            .error
            .unwrap_or_else(|| format!("not connected in {:?}", plan.connect_timeout));
        ctx.error("publish:not-connected".into(), detail);
        let _ = conn.logout().await;
        return fail();
    }
    ctx.add_live(room, &stream.stream_id, index);

    // Plays of others' live streams.
    let mut plays = Vec::new();
    for s in ctx.pick(room, index, want_plays, rng) {
        bump(&counts.plays);
        let spec = StreamSpec {
            publisher: 0,
            stream_id: s.clone(),
        };
        let started = Instant::now();
        let result = async {
            let mut setup = PcSetup::new(plan.bind, ctx.cert.as_ref())?;
            let available = conn.play_if_available(&spec, &mut setup).await?;
            Ok::<_, LoadError>(available.then_some(setup))
        }
        .await;
        match result {
            Ok(Some(setup)) => {
                let (tx, rx) = oneshot::channel();
                let task = tokio::spawn(run_pc(setup, PcRole::Play, shared.clone(), started, tx));
                plays.push(Play {
                    stream: s,
                    started,
                    ready: rx,
                    connected: false,
                    task,
                });
            }
            Ok(None) => bump(&counts.plays_gone),
            Err(_) if !ctx.is_live(room, &s) => bump(&counts.plays_gone),
            Err(e) => ctx.load_error("play", &e),
        }
    }

    // Hold (not past the run's end); plays get their connect timeout, whatever the hold.
    let hold_end = Instant::now() + hold.min(ctx.end.saturating_duration_since(Instant::now()));
    tokio::time::sleep_until(hold_end.into()).await;
    for p in &mut plays {
        let deadline = (p.started + plan.connect_timeout).max(hold_end);
        p.connected = matches!(
            tokio::time::timeout_at(deadline.into(), &mut p.ready).await,
            Ok(Ok(()))
        );
    }
    // Whether each played stream's publisher is still there (it leaves the list before it stops).
    let still_live: Vec<bool> = plays.iter().map(|p| ctx.is_live(room, &p.stream)).collect();

    // Leave: nobody may start playing us from now on; then stop the connections.
    ctx.remove_live(room, &stream.stream_id);
    stop_all(&shared);
    let mut ok = true;
    let played: Vec<String> = plays.iter().map(|p| p.stream.clone()).collect();
    let out = publisher.await.unwrap_or_else(ClientOutcome::failed);
    if let Some(e) = out.error {
        ctx.error("publish:media".into(), e);
        ok = false;
    }
    for (p, live) in plays.into_iter().zip(still_live) {
        let out = p.task.await.unwrap_or_else(ClientOutcome::failed);
        let received = out.stream.as_ref().map_or(0, |s| s.stats.received);
        if received > 0 {
            bump(&counts.plays_media);
        } else if !live {
            bump(&counts.plays_gone);
        } else if !p.connected {
            let detail = out
                .error
                .unwrap_or_else(|| format!("{}: not connected", p.stream));
            ctx.error("play:not-connected".into(), detail);
            ok = false;
        } else if p.started.elapsed() > Duration::from_secs(1) {
            // Connected, its publisher sending all along, and nothing arrived.
            ctx.error("play:no-media".into(), format!("{}: 0 packets", p.stream));
            ok = false;
        }
    }
    counts
        .sent
        .fetch_add(shared.counters.sent.load(Ordering::Relaxed), Ordering::Relaxed);
    counts.received.fetch_add(
        shared.counters.received.load(Ordering::Relaxed),
        Ordering::Relaxed,
    );
    match exit {
        Exit::Clean => {
            let leave = async {
                conn.unpublish(&stream).await.map_err(|e| ("unpublish", e))?;
                for s in played {
                    let spec = StreamSpec {
                        publisher: 0,
                        stream_id: s,
                    };
                    conn.stop_play(&spec).await.map_err(|e| ("stop-play", e))?;
                }
                conn.logout().await.map_err(|e| ("logout", e))
            }
            .await;
            if let Err((phase, e)) = leave {
                ctx.load_error(phase, &e);
                ok = false;
            }
        }
        Exit::Drop | Exit::MidIce => drop(conn),
    }
    if !ok {
        return fail();
    }
    bump(&counts.cycles);
    bump(match exit {
        Exit::Clean => &counts.clean,
        Exit::Drop => &counts.dropped,
        Exit::MidIce => &counts.mid_ice,
    });
}

/// `host:port` of a `ws://host:port/...` URL.
fn authority(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("ws://")?;
    Some(rest.split('/').next().unwrap_or(rest)).filter(|a| !a.is_empty())
}

/// The server's live counts from `GET /api/info` (HTTP/1.1 on loopback); `Ok(None)` when it
/// gives none.
pub async fn fetch_live_counts(signaling_url: &str) -> Result<Option<LiveCounts>, LoadError> {
    let addr = authority(signaling_url)
        .ok_or_else(|| LoadError::Plan(format!("not a ws:// URL: {signaling_url}")))?;
    let io = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let req = format!("GET /api/info HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        s.take(256 * 1024).read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(5), io)
        .await
        .map_err(|_| LoadError::Signaling(format!("GET /api/info at {addr}: no answer in 5 s")))??;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| LoadError::Signaling("GET /api/info: no HTTP answer".into()))?;
    if !head.starts_with("HTTP/1.1 200") {
        let status = head.lines().next().unwrap_or("");
        return Err(LoadError::Signaling(format!("GET /api/info: {status}")));
    }
    let v: serde_json::Value =
        serde_json::from_str(body.trim()).map_err(|e| LoadError::Signaling(format!("GET /api/info: {e}")))?;
    Ok(v.get("live").and_then(|l| serde_json::from_value(l.clone()).ok()))
}

/// Least-squares slope of `y` over `x`; `None` without two distinct `x`.
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

fn memory(pid: u32, start: u64, samples: Vec<RssSample>, warmup_s: f64, end: u64, idle: u64) -> ChurnMemory {
    let after: Vec<&RssSample> = samples.iter().filter(|s| s.t_s >= warmup_s).collect();
    let points: Vec<(f64, f64)> = after
        .iter()
        .map(|s| (s.cycles as f64, s.rss_kib as f64))
        .collect();
    ChurnMemory {
        pid,
        rss_kib_start: start,
        rss_kib_warmup_end: after.first().map_or(end, |s| s.rss_kib),
        rss_kib_end: end,
        rss_kib_idle: idle,
        rss_kib_max_after_warmup: after.iter().map(|s| s.rss_kib).max().unwrap_or(end).max(end),
        slope_kib_per_1000_cycles: slope(&points).map(|s| s * 1000.0),
        samples_after_warmup: after.len() as u64,
        samples,
    }
}

/// Runs the churn soak `plan` against the Huddle server `target`.
///
/// Refuses a [`ChurnPlan::bind`] or signaling URL outside the [`netguard`] rule. Returns the
/// report also when cycles failed; `Err` only when the run could not be made.
pub async fn run_churn(target: Arc<HuddleTarget>, plan: ChurnPlan) -> Result<ChurnReport, LoadError> {
    plan.validate()?;
    netguard::check_bind(plan.bind)?;
    netguard::check_url(target.signaling_url(), plan.bind)?;
    let url = target.signaling_url().to_string();
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
    let mut live_end = None;
    let mut empty_after_s = None;
    let wait_until = cycles_done + plan.empty_timeout;
    loop {
        match fetch_live_counts(&url).await {
            Ok(l) => live_end = l,
            Err(e) => tracing::warn!("live counts: {e}"),
        }
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
    })
}

/// Each second: the server's RSS with the cycles so far, and a progress line when asked.
fn spawn_sampler(ctx: Arc<Ctx>, started: Instant, samples: Arc<Mutex<Vec<RssSample>>>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tick.tick().await;
            let t_s = started.elapsed().as_secs_f64();
            let cycles = ctx.counts.cycles.load(Ordering::Relaxed);
            let rss = ctx.plan.server.and_then(|s| s.sample().ok()).map(|s| s.rss_kib);
            if let Some(rss_kib) = rss {
                samples
                    .lock()
                    .expect("not poisoned")
                    .push(RssSample { t_s, cycles, rss_kib });
            }
            if ctx.plan.progress {
                let phase = if t_s < ctx.plan.warmup.as_secs_f64() {
                    "churn (warm-up)"
                } else {
                    "churn"
                };
                let rss = rss.map_or(String::new(), |r| {
                    format!("  server {:7.1} MiB", r as f64 / 1024.0)
                });
                eprintln!(
                    "[{t_s:6.1}s] {phase:<16} cycles {:>6}  failed {:>4}  errors {:>4}  plays {:>6}{rss}",
                    cycles,
                    ctx.counts.failed.load(Ordering::Relaxed),
                    ctx.counts.errors.load(Ordering::Relaxed),
                    ctx.counts.plays.load(Ordering::Relaxed),
                );
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_squares_slope() {
        assert_eq!(slope(&[]), None);
        assert_eq!(slope(&[(1.0, 5.0)]), None);
        assert_eq!(slope(&[(1.0, 5.0), (1.0, 7.0)]), None);
        let s = slope(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0), (3.0, 7.0)]).unwrap();
        assert!((s - 2.0).abs() < 1e-12);
        // Noise around a flat line: a slope near zero.
        let s = slope(&[(0.0, 10.0), (1.0, 12.0), (2.0, 10.0), (3.0, 12.0), (4.0, 10.0)]).unwrap();
        assert!(s.abs() < 0.01, "{s}");
    }

    #[test]
    fn memory_after_the_warmup() {
        let samples = (0..10)
            .map(|i| RssSample {
                t_s: f64::from(i),
                cycles: 100 * i as u64,
                rss_kib: if i < 3 {
                    1000 * (i as u64 + 1)
                } else {
                    5000 + i as u64
                },
            })
            .collect();
        let m = memory(1, 500, samples, 3.0, 5010, 4900);
        assert_eq!(m.rss_kib_warmup_end, 5003);
        assert_eq!(m.samples_after_warmup, 7);
        assert_eq!(m.rss_kib_max_after_warmup, 5010);
        // 1 KiB per 100 cycles: 10 KiB per 1000.
        assert!((m.slope_kib_per_1000_cycles.unwrap() - 10.0).abs() < 1e-9);
    }

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
        assert_eq!(authority("ws://127.0.0.1:7880/ws"), Some("127.0.0.1:7880"));
        assert_eq!(authority("ws://[::1]:1"), Some("[::1]:1"));
        assert_eq!(authority("http://x"), None);
    }
}
