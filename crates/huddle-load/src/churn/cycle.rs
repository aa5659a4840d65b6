//! One client's loop and its cycle: login, publish, play, hold, leave (clean, dropped or mid-ICE),
//! counted by outcome and error.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::ChurnPlan;
use crate::peer::{PcRole, PcSetup, run_pc};
use crate::run::{ClientOutcome, Shared};
use crate::{HuddleTarget, LoadError, StreamSpec, Target, UserSpec};

/// How a cycle ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Exit {
    Clean,
    Drop,
    MidIce,
}

#[derive(Default)]
pub(super) struct Counts {
    pub(super) cycles: AtomicU64,
    pub(super) clean: AtomicU64,
    pub(super) dropped: AtomicU64,
    pub(super) mid_ice: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) plays: AtomicU64,
    pub(super) plays_media: AtomicU64,
    pub(super) plays_gone: AtomicU64,
    pub(super) sent: AtomicU64,
    pub(super) received: AtomicU64,
    pub(super) errors: AtomicU64,
}

/// What the clients share.
pub(super) struct Ctx {
    pub(super) target: Arc<HuddleTarget>,
    pub(super) plan: ChurnPlan,
    pub(super) cert: Option<str0m::config::DtlsCert>,
    /// Streams whose publish connection is up, per room: (stream ID, client).
    pub(super) live: Mutex<HashMap<u32, Vec<(String, u32)>>>,
    pub(super) counts: Counts,
    pub(super) errors: Mutex<(BTreeMap<String, u64>, Vec<String>)>,
    /// No cycle starts after this.
    pub(super) end: Instant,
}

pub(super) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// `phase:code`: the server's error code for a refusal, else the kind of failure.
pub(super) fn error_key(phase: &str, e: &LoadError) -> String {
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
    pub(super) fn error(&self, key: String, detail: impl std::fmt::Display) {
        bump(&self.counts.errors);
        let mut e = self.errors.lock().expect("not poisoned");
        if e.1.len() < 20 {
            e.1.push(format!("{key}: {detail}"));
        }
        *e.0.entry(key).or_default() += 1;
    }

    pub(super) fn load_error(&self, phase: &str, e: &LoadError) {
        self.error(error_key(phase, e), e);
    }

    pub(super) fn add_live(&self, room: u32, stream: &str, client: u32) {
        let mut live = self.live.lock().expect("not poisoned");
        live.entry(room).or_default().push((stream.to_string(), client));
    }

    pub(super) fn remove_live(&self, room: u32, stream: &str) {
        let mut live = self.live.lock().expect("not poisoned");
        if let Some(v) = live.get_mut(&room) {
            v.retain(|(s, _)| s != stream);
        }
    }

    pub(super) fn is_live(&self, room: u32, stream: &str) -> bool {
        let live = self.live.lock().expect("not poisoned");
        live.get(&room)
            .is_some_and(|v| v.iter().any(|(s, _)| s == stream))
    }

    /// Up to `n` live streams of others in `room`, at random.
    pub(super) fn pick(&self, room: u32, me: u32, n: u32, rng: &mut StdRng) -> Vec<String> {
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
pub(super) struct Play {
    pub(super) stream: String,
    pub(super) started: Instant,
    pub(super) ready: oneshot::Receiver<()>,
    pub(super) connected: bool,
    pub(super) task: JoinHandle<ClientOutcome>,
}

/// One client's loop until the run's end.
pub(super) async fn client_loop(ctx: Arc<Ctx>, index: u32) {
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

/// The connection of a churn client.
type Conn = <HuddleTarget as Target>::Conn;

/// What a cycle draws at its start, in this order (the run is reproducible from its seed).
struct Draw {
    exit: Exit,
    hold: Duration,
    plays: u32,
}

impl Draw {
    fn new(plan: &ChurnPlan, rng: &mut StdRng) -> Draw {
        let x: f64 = rng.r#gen();
        let exit = if x < plan.mid_ice_ratio {
            Exit::MidIce
        } else if x < plan.mid_ice_ratio + plan.drop_ratio {
            Exit::Drop
        } else {
            Exit::Clean
        };
        let hold = rng.gen_range(plan.hold_min..=plan.hold_max);
        let plays = if plan.max_plays == 0 {
            0
        } else {
            rng.gen_range(1..=plan.max_plays)
        };
        Draw { exit, hold, plays }
    }
}

/// One cycle: login, publish, play, hold, leave.
pub(super) async fn cycle(ctx: &Arc<Ctx>, index: u32, n: u64, rng: &mut StdRng) {
    let plan = &ctx.plan;
    let Draw {
        exit,
        hold,
        plays: want_plays,
    } = Draw::new(plan, rng);
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

    let mut plays = start_plays(ctx, &mut conn, room, index, want_plays, &shared, rng).await;

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
    ok &= judge_plays(ctx, plays, still_live).await;
    counts
        .sent
        .fetch_add(shared.counters.sent.load(Ordering::Relaxed), Ordering::Relaxed);
    counts.received.fetch_add(
        shared.counters.received.load(Ordering::Relaxed),
        Ordering::Relaxed,
    );
    match exit {
        Exit::Clean => {
            if let Err((phase, e)) = leave_clean(&mut conn, &stream, played).await {
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

/// Plays up to `want` live streams of others in `room` over their own peer connections.
async fn start_plays(
    ctx: &Arc<Ctx>,
    conn: &mut Conn,
    room: u32,
    index: u32,
    want: u32,
    shared: &Arc<Shared>,
    rng: &mut StdRng,
) -> Vec<Play> {
    let (plan, counts) = (&ctx.plan, &ctx.counts);
    let mut plays = Vec::new();
    for s in ctx.pick(room, index, want, rng) {
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
    plays
}

/// Counts how the plays ended (their connections stopped); false if one failed for another
/// reason than its publisher leaving.
async fn judge_plays(ctx: &Ctx, plays: Vec<Play>, still_live: Vec<bool>) -> bool {
    let counts = &ctx.counts;
    let mut ok = true;
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
    ok
}

/// A clean leave: unpublish, stop every play, log out; the phase that failed.
async fn leave_clean(
    conn: &mut Conn,
    stream: &StreamSpec,
    played: Vec<String>,
) -> Result<(), (&'static str, LoadError)> {
    conn.unpublish(stream).await.map_err(|e| ("unpublish", e))?;
    for s in played {
        let spec = StreamSpec {
            publisher: 0,
            stream_id: s,
        };
        conn.stop_play(&spec).await.map_err(|e| ("stop-play", e))?;
    }
    conn.logout().await.map_err(|e| ("logout", e))
}
