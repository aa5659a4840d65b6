//! The run: joins publishers, then subscribers, measures over a fixed window, stops everything and
//! builds the [`Report`]. Every client is a task on the caller's tokio runtime, so a few threads
//! drive hundreds of clients.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, oneshot, watch};
use tokio::task::JoinHandle;

use crate::metrics::{Histogram, ProcSample, ProcTarget, StreamStats, loss_ratio, thread_cpu_us};
use crate::packet::{MAX_LEN, Probe};
use crate::peer::{PcRole, PcSetup, period_of, run_pc};
use crate::relay::SUBSCRIBE;
use crate::report::{Dist, PlayPhases, ProcReport, Report, ServerReport, thread_cores};
use crate::{LoadError, Plan, StreamSpec, Target, UserSpec, netguard};

/// Packets in flight when the window closes still count if they arrive within this.
const DRAIN: Duration = Duration::from_millis(300);
/// How long stopped clients get to finish before they are aborted.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Live counters of the whole run.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub sent: AtomicU64,
    pub received: AtomicU64,
    pub publishers_ready: AtomicU64,
    pub plays_ready: AtomicU64,
}

/// What every client of a run shares.
pub(crate) struct Shared {
    epoch: Instant,
    window_start_us: AtomicU64,
    window_end_us: AtomicU64,
    pub counters: Counters,
    pub stop: watch::Sender<bool>,
    pub packet_period: Duration,
}

impl Shared {
    /// A run's state whose window is always open (the churn soak counts every packet).
    pub(crate) fn open(rate: u32) -> Shared {
        let s = Shared::new(rate);
        s.window_start_us.store(0, Ordering::Relaxed);
        s
    }

    fn new(rate: u32) -> Shared {
        Shared {
            epoch: Instant::now(),
            window_start_us: AtomicU64::new(u64::MAX),
            window_end_us: AtomicU64::new(u64::MAX),
            counters: Counters::default(),
            stop: watch::channel(false).0,
            packet_period: period_of(rate),
        }
    }

    /// Microseconds since the run's epoch: the clock of the probes' send times.
    pub fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// Whether a probe sent at `sent_us` belongs to the measurement window.
    pub fn in_window(&self, sent_us: u64) -> bool {
        sent_us >= self.window_start_us.load(Ordering::Relaxed)
            && sent_us < self.window_end_us.load(Ordering::Relaxed)
    }

    /// Counts a probe sent at `sent_us` by the client `out`.
    pub fn count_sent(&self, sent_us: u64, out: &mut ClientOutcome) {
        self.counters.sent.fetch_add(1, Ordering::Relaxed);
        if self.in_window(sent_us) {
            out.sent_in_window += 1;
        }
    }
}

/// What one received stream measured.
#[derive(Debug, Default)]
pub(crate) struct StreamOutcome {
    pub stats: StreamStats,
    pub latency: Histogram,
    /// Latency up to the datagram entering the client's socket (kernel timestamp).
    pub latency_socket: Histogram,
    pub first_packet_ms: Option<f64>,
    pub first_packet_at: Option<Instant>,
}

/// What one client connection (a publish or a play) measured.
#[derive(Debug, Default)]
pub(crate) struct ClientOutcome {
    /// Probes sent in the window (publishers).
    pub sent_in_window: u64,
    /// Start of this connection's negotiation → ICE and DTLS up (plain mode: first packet).
    pub join_ms: Option<f64>,
    /// The first play of each subscriber: start of its login → first packet.
    pub login_first_packet_ms: Option<f64>,
    /// Play connections: what was received.
    pub stream: Option<StreamOutcome>,
    /// Play connections: where the join's time went.
    pub phases: PhaseTimes,
    pub error: Option<String>,
    /// The index of the client's signaling server ([`Target::servers`]).
    pub server: usize,
    /// Play connections: the server of the stream's publisher.
    pub publisher_server: Option<usize>,
    /// The first outcome of a client whose login succeeded.
    pub logged_in: bool,
}

/// The phases of a play join, ms, each from the end of the one before (see
/// [`PlayPhases`](crate::PlayPhases)); `login` only on a subscriber's first play.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct PhaseTimes {
    pub login: Option<f64>,
    pub signaling: Option<f64>,
    pub ice: Option<f64>,
    pub dtls: Option<f64>,
    pub first_packet: Option<f64>,
}

impl ClientOutcome {
    pub(crate) fn failed(e: impl ToString) -> ClientOutcome {
        ClientOutcome {
            error: Some(e.to_string()),
            ..ClientOutcome::default()
        }
    }
}

/// How the clients of a run are made: over a [`Target`] with WebRTC, or plain UDP to a relay.
trait Clients: Send + Sync + 'static {
    fn spawn_publisher(
        self: &Arc<Self>,
        index: u32,
        ready: oneshot::Sender<()>,
    ) -> JoinHandle<Vec<ClientOutcome>>;
    fn spawn_subscriber(
        self: &Arc<Self>,
        index: u32,
        readies: Vec<oneshot::Sender<()>>,
    ) -> JoinHandle<Vec<ClientOutcome>>;
    /// The signaling servers the clients are spread over (none for the plain relay).
    fn servers(&self) -> Vec<String>;
    /// The index in [`Clients::servers`] of `user`'s server.
    fn server_of(&self, user: &UserSpec) -> usize;
}

struct RtcClients<T: Target> {
    target: Arc<T>,
    plan: Plan,
    shared: Arc<Shared>,
    cert: Option<str0m::config::DtlsCert>,
    joins: Arc<Semaphore>,
    ip: IpAddr,
}

impl<T: Target> Clients for RtcClients<T> {
    fn spawn_publisher(
        self: &Arc<Self>,
        index: u32,
        ready: oneshot::Sender<()>,
    ) -> JoinHandle<Vec<ClientOutcome>> {
        let me = self.clone();
        tokio::spawn(async move {
            let permit = me.joins.clone().acquire_owned().await;
            let joined = Instant::now();
            let user = UserSpec::publisher(&me.plan, index);
            let stream = StreamSpec::of(&me.plan, index);
            let server = me.target.server_of(&user);
            let mut conn = match me.target.connect(&user).await {
                Ok(c) => c,
                Err(e) => {
                    let mut out = ClientOutcome::failed(format!("publisher {index} connect: {e}"));
                    out.server = server;
                    return vec![out];
                }
            };
            let setup = async {
                let mut setup = PcSetup::new(me.ip, me.cert.as_ref())?;
                me.target.publish(&mut conn, &stream, &mut setup).await?;
                Ok::<_, LoadError>(setup)
            }
            .await;
            drop(permit);
            let mut out = match setup {
                Ok(setup) => {
                    let role = PcRole::Publish { publisher: index };
                    run_pc(setup, role, me.shared.clone(), joined, ready).await
                }
                Err(e) => ClientOutcome::failed(format!("publisher {index}: {e}")),
            };
            (out.server, out.logged_in) = (server, true);
            me.target.disconnect(conn).await;
            vec![out]
        })
    }

    fn spawn_subscriber(
        self: &Arc<Self>,
        index: u32,
        readies: Vec<oneshot::Sender<()>>,
    ) -> JoinHandle<Vec<ClientOutcome>> {
        let me = self.clone();
        tokio::spawn(async move {
            let permit = me.joins.clone().acquire_owned().await;
            let joined = Instant::now();
            let user = UserSpec::subscriber(&me.plan, index);
            let server = me.target.server_of(&user);
            let publisher_server = |p: usize| me.target.server_of(&UserSpec::publisher(&me.plan, p as u32));
            let mut conn = match me.target.connect(&user).await {
                Ok(c) => c,
                Err(e) => {
                    let e = format!("subscriber {index} connect: {e}");
                    let failed = |p| ClientOutcome {
                        server,
                        publisher_server: Some(publisher_server(p)),
                        ..ClientOutcome::failed(&e)
                    };
                    return (0..readies.len()).map(failed).collect();
                }
            };
            let login_ms = joined.elapsed().as_secs_f64() * 1e3;
            let mut plays = Vec::new();
            let mut outs = Vec::new();
            let mut play_servers = Vec::new();
            for (p, ready) in readies.into_iter().enumerate() {
                let stream = StreamSpec::of(&me.plan, p as u32);
                let started = Instant::now();
                let setup = async {
                    let mut setup = PcSetup::new(me.ip, me.cert.as_ref())?;
                    me.target.play(&mut conn, &stream, &mut setup).await?;
                    Ok::<_, LoadError>(setup)
                }
                .await;
                match setup {
                    Ok(setup) => {
                        let shared = me.shared.clone();
                        plays.push(tokio::spawn(run_pc(setup, PcRole::Play, shared, started, ready)));
                        play_servers.push(publisher_server(p));
                    }
                    Err(e) => outs.push(ClientOutcome {
                        publisher_server: Some(publisher_server(p)),
                        ..ClientOutcome::failed(format!("subscriber {index} play {p}: {e}"))
                    }),
                }
            }
            drop(permit);
            for (play, from) in plays.into_iter().zip(play_servers) {
                let mut out = play.await.unwrap_or_else(ClientOutcome::failed);
                out.publisher_server = Some(from);
                outs.push(out);
            }
            for o in &mut outs {
                o.server = server;
            }
            me.target.disconnect(conn).await;
            set_login_first_packet(&mut outs, joined);
            if let Some(o) = outs.first_mut() {
                o.phases.login = Some(login_ms);
                o.logged_in = true;
            }
            outs
        })
    }

    fn servers(&self) -> Vec<String> {
        self.target.servers()
    }

    fn server_of(&self, user: &UserSpec) -> usize {
        self.target.server_of(user)
    }
}

struct PlainClients {
    relay: SocketAddr,
    shared: Arc<Shared>,
}

impl Clients for PlainClients {
    fn spawn_publisher(
        self: &Arc<Self>,
        index: u32,
        ready: oneshot::Sender<()>,
    ) -> JoinHandle<Vec<ClientOutcome>> {
        let me = self.clone();
        tokio::spawn(async move { vec![plain_client(&me, Some(index), index, Instant::now(), ready).await] })
    }

    fn spawn_subscriber(
        self: &Arc<Self>,
        _index: u32,
        readies: Vec<oneshot::Sender<()>>,
    ) -> JoinHandle<Vec<ClientOutcome>> {
        let me = self.clone();
        tokio::spawn(async move {
            let joined = Instant::now();
            let mut plays = Vec::new();
            for (p, ready) in readies.into_iter().enumerate() {
                let me = me.clone();
                plays.push(tokio::spawn(async move {
                    plain_client(&me, None, p as u32, joined, ready).await
                }));
            }
            let mut outs = Vec::new();
            for play in plays {
                outs.push(play.await.unwrap_or_else(ClientOutcome::failed));
            }
            set_login_first_packet(&mut outs, joined);
            outs
        })
    }

    fn servers(&self) -> Vec<String> {
        Vec::new()
    }

    fn server_of(&self, _user: &UserSpec) -> usize {
        0
    }
}

/// Marks, on a subscriber's outcomes, its login → first packet of any stream (the time a user
/// waits to hear someone).
fn set_login_first_packet(outs: &mut [ClientOutcome], login: Instant) {
    let first = outs
        .iter()
        .filter_map(|o| o.stream.as_ref()?.first_packet_at)
        .min();
    if let (Some(at), Some(o)) = (first, outs.first_mut()) {
        o.login_first_packet_ms = Some(at.duration_since(login).as_secs_f64() * 1e3);
    }
}

/// A plain UDP client of the B0 relay: a publisher (`publisher` set) sends probes; a player
/// subscribes to `stream` (repeating the request until media arrives) and receives.
async fn plain_client(
    me: &PlainClients,
    publisher: Option<u32>,
    stream: u32,
    joined: Instant,
    ready: oneshot::Sender<()>,
) -> ClientOutcome {
    let mut out = ClientOutcome::default();
    let bind: SocketAddr = (me.relay.ip(), 0).into();
    let socket = match tokio::net::UdpSocket::bind(bind).await {
        Ok(s) => s,
        Err(e) => return ClientOutcome::failed(format!("bind: {e}")),
    };
    let shared = &me.shared;
    let mut stop = shared.stop.subscribe();
    let mut ready = Some(ready);
    let mut buf = [0u8; 2048];
    let mut seq = 0u32;
    let mut so = StreamOutcome::default();
    let mut subscribe = [0u8; 8];
    subscribe[..4].copy_from_slice(&SUBSCRIBE);
    subscribe[4..].copy_from_slice(&stream.to_be_bytes());
    let period = match publisher {
        Some(_) => shared.packet_period,
        None => Duration::from_millis(100),
    };
    let mut next = Instant::now();
    if publisher.is_some() {
        out.join_ms = Some(0.0);
        if let Some(tx) = ready.take() {
            let _ = tx.send(());
        }
    }
    loop {
        tokio::select! {
            biased;
            _ = stopped(&mut stop) => break,
            r = socket.recv_from(&mut buf), if publisher.is_none() => {
                let Ok((n, _)) = r else { continue };
                let now_us = shared.now_us();
                let Some(p) = Probe::parse(&buf[..n]) else { continue };
                if so.first_packet_ms.is_none() {
                    let ms = joined.elapsed().as_secs_f64() * 1e3;
                    so.first_packet_at = Some(Instant::now());
                    so.first_packet_ms = Some(ms);
                    out.join_ms = Some(ms);
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(());
                    }
                }
                let in_window = shared.in_window(p.sent_us);
                if so.stats.on_packet(p.seq, p.sent_us, now_us, in_window) {
                    shared.counters.received.fetch_add(1, Ordering::Relaxed);
                    if in_window {
                        so.latency.record(now_us.saturating_sub(p.sent_us));
                    }
                }
            }
            _ = tokio::time::sleep_until(next.into()) => {
                let now = Instant::now();
                match publisher {
                    Some(index) => {
                        let mut payload = [0u8; MAX_LEN];
                        let sent_us = shared.now_us();
                        let n = Probe { publisher: index, seq, sent_us }.write(&mut payload);
                        if socket.send_to(&payload[..n], me.relay).await.is_ok() {
                            shared.count_sent(sent_us, &mut out);
                        }
                        seq = seq.wrapping_add(1);
                    }
                    None => {
                        if so.first_packet_ms.is_none() {
                            let _ = socket.send_to(&subscribe, me.relay).await;
                        }
                    }
                }
                next += period;
                if next + 5 * period < now {
                    next = now + period;
                }
            }
        }
    }
    if publisher.is_none() {
        out.stream = Some(so);
    }
    out
}

/// Resolves once the run is told to stop (also when it was told before the call).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Runs `plan` against `target`: every client a WebRTC peer connection.
///
/// Refuses a [`Plan::bind`] or signaling URL outside the [`netguard`](crate::netguard) rule.
pub async fn run<T: Target>(target: Arc<T>, plan: Plan) -> Result<Report, LoadError> {
    plan.validate()?;
    netguard::check_bind(plan.bind)?;
    for url in target.servers() {
        netguard::check_url(&url, plan.bind)?;
    }
    let shared = Arc::new(Shared::new(plan.packet_rate));
    let cert = str0m::crypto::from_feature_flags()
        .dtls_provider
        .generate_certificate();
    target.prepare(&plan).await?;
    let ip = plan.bind;
    let clients = Arc::new(RtcClients {
        target: target.clone(),
        joins: Arc::new(Semaphore::new(plan.join_concurrency.max(1))),
        plan: plan.clone(),
        shared: shared.clone(),
        cert,
        ip,
    });
    let report = drive(clients, &plan, shared, target.name(), "webrtc").await;
    target.cleanup().await;
    report
}

/// Runs `plan` as plain UDP (no ICE, DTLS or SRTP) against the B0 relay at `relay`; its clients
/// bind the relay's IP, which must be [`Plan::bind`] or loopback
/// ([`netguard`](crate::netguard)).
pub async fn run_plain(relay: SocketAddr, plan: Plan) -> Result<Report, LoadError> {
    plan.validate()?;
    netguard::check_bind(plan.bind)?;
    if !netguard::may_send(plan.bind, relay.ip()) {
        return Err(LoadError::Plan(format!(
            "relay {relay}: neither loopback nor the bind address {}",
            plan.bind
        )));
    }
    let shared = Arc::new(Shared::new(plan.packet_rate));
    let clients = Arc::new(PlainClients {
        relay,
        shared: shared.clone(),
    });
    drive(clients, &plan, shared, "b0-relay", "plain-udp").await
}

/// Samples of the server and of this process, taken each second and at the window's edges.
#[derive(Default)]
struct Samples {
    server: Vec<ProcSample>,
}

async fn drive<C: Clients>(
    clients: Arc<C>,
    plan: &Plan,
    shared: Arc<Shared>,
    target: &str,
    mode: &str,
) -> Result<Report, LoadError> {
    let started = Instant::now();
    let hard_deadline = started + plan.max_run;
    let server = plan.server;
    let me = ProcTarget::this_process();
    let server_before = server.map(|s| s.sample()).transpose().map_err(LoadError::Io)?;
    let samples = Arc::new(Mutex::new(Samples::default()));
    let phase = Arc::new(Mutex::new("join publishers"));
    let progress = spawn_progress(
        plan.progress,
        shared.clone(),
        server,
        samples.clone(),
        phase.clone(),
    );

    // Publishers first: players need something to play.
    let mut pub_tasks = Vec::new();
    let mut ready = Vec::new();
    for p in 0..plan.publishers {
        let (tx, rx) = oneshot::channel();
        ready.push(rx);
        pub_tasks.push(clients.spawn_publisher(p, tx));
    }
    let publishers_ready = wait_ready(
        ready,
        plan.join_timeout.min(remaining(hard_deadline)),
        &shared,
        true,
    )
    .await;
    *phase.lock().expect("not poisoned") = "join subscribers";
    let mut sub_tasks = Vec::new();
    let mut ready = Vec::new();
    for s in 0..plan.subscribers {
        let mut txs = Vec::new();
        for _ in 0..plan.publishers {
            let (tx, rx) = oneshot::channel();
            ready.push(rx);
            txs.push(tx);
        }
        sub_tasks.push(clients.spawn_subscriber(s, txs));
    }
    let plays_ready = wait_ready(
        ready,
        plan.join_timeout.min(remaining(hard_deadline)),
        &shared,
        false,
    )
    .await;

    // The measurement window.
    *phase.lock().expect("not poisoned") = "measure";
    let window = plan.duration.min(remaining(hard_deadline).saturating_sub(DRAIN));
    let gen_start = me.sample().map_err(LoadError::Io)?;
    let server_start = server.map(|s| s.sample()).transpose().map_err(LoadError::Io)?;
    let threads_start = server.filter(|s| s.tid.is_none()).map(|s| thread_cpu_us(s.pid));
    let start_us = shared.now_us();
    shared.window_start_us.store(start_us, Ordering::Relaxed);
    tokio::time::sleep(window).await;
    let end_us = shared.now_us();
    shared.window_end_us.store(end_us, Ordering::Relaxed);
    let server_end = server.map(|s| s.sample()).transpose().map_err(LoadError::Io)?;
    let threads_end = server.filter(|s| s.tid.is_none()).map(|s| thread_cpu_us(s.pid));
    let gen_end = me.sample().map_err(LoadError::Io)?;
    *phase.lock().expect("not poisoned") = "drain";
    tokio::time::sleep(DRAIN).await;
    let _ = shared.stop.send(true);
    *phase.lock().expect("not poisoned") = "stop";

    let mut errors = Vec::new();
    let stop_deadline = tokio::time::Instant::now() + STOP_GRACE;
    let pub_outs = collect(pub_tasks, stop_deadline, &mut errors).await;
    let play_outs = collect(sub_tasks, stop_deadline, &mut errors).await;
    progress.abort();
    let samples = std::mem::take(&mut *samples.lock().expect("not poisoned"));

    // Aggregate.
    let window_s = (end_us - start_us) as f64 / 1e6;
    let sent_in_window: Vec<u64> = pub_outs.iter().map(|o| o.sent_in_window).collect();
    let sent: u64 = sent_in_window.iter().sum();
    // Each publisher is expected at each subscriber.
    let expected = sent * u64::from(plan.subscribers);
    let mut latency = Histogram::default();
    let mut latency_socket = Histogram::default();
    let mut delivered = 0;
    let mut duplicates = 0;
    let mut jitters = Vec::new();
    let mut firsts = Vec::new();
    let mut play_joins = Vec::new();
    let mut login_firsts = Vec::new();
    let mut phases: [Vec<f64>; 5] = Default::default();
    for o in &play_outs {
        let p = &o.phases;
        for (all, v) in phases
            .iter_mut()
            .zip([p.login, p.signaling, p.ice, p.dtls, p.first_packet])
        {
            all.extend(v);
        }
        if let Some(ms) = o.login_first_packet_ms {
            login_firsts.push(ms);
        }
        if let Some(ms) = o.join_ms {
            play_joins.push(ms);
        }
        if let Some(s) = &o.stream {
            delivered += s.stats.received_in_window;
            duplicates += s.stats.duplicates;
            latency.merge(&s.latency);
            latency_socket.merge(&s.latency_socket);
            if s.stats.received >= 2 {
                jitters.push(s.stats.jitter_us() / 1e3);
            }
            if let Some(ms) = s.first_packet_ms {
                firsts.push(ms);
            }
        }
    }
    for o in pub_outs.iter().chain(&play_outs) {
        if let Some(e) = &o.error
            && errors.len() < 20
        {
            errors.push(e.clone());
        }
    }
    let pub_joins: Vec<f64> = pub_outs.iter().filter_map(|o| o.join_ms).collect();
    let play_streams = u64::from(plan.publishers) * u64::from(plan.subscribers);
    let server_report = match (server, server_before, server_start, server_end) {
        (Some(t), Some(before), Some(start), Some(end)) => {
            let mut r = ProcReport::new(t, before, start, end, &samples.server, delivered, play_streams);
            if let (Some(a), Some(b)) = (&threads_start, &threads_end) {
                r.threads = thread_cores(a, b, end.at.duration_since(start.at).as_secs_f64());
            }
            Some(r)
        }
        _ => None,
    };
    let servers = per_server(clients.as_ref(), plan, &pub_outs, &play_outs);
    let cpu_us = gen_end.cpu_us.saturating_sub(gen_start.cpu_us) as f64;
    Ok(Report {
        target: target.to_string(),
        mode: mode.to_string(),
        publishers: plan.publishers,
        subscribers: plan.subscribers,
        play_streams,
        packet_rate: plan.packet_rate,
        window_s,
        publishers_joined: publishers_ready,
        play_streams_joined: plays_ready,
        sent_packets: sent,
        expected_packets: expected,
        delivered_packets: delivered,
        delivered_pps: delivered as f64 / window_s.max(1e-9),
        loss: loss_ratio(expected, delivered),
        duplicates,
        jitter_ms_mean: if jitters.is_empty() {
            None
        } else {
            Some(jitters.iter().sum::<f64>() / jitters.len() as f64)
        },
        jitter_ms_max: jitters.iter().copied().reduce(f64::max),
        latency_ms: Dist::from_histogram_us(&latency),
        latency_socket_ms: Dist::from_histogram_us(&latency_socket),
        publish_join_ms: Dist::from_samples(&pub_joins),
        play_join_ms: Dist::from_samples(&play_joins),
        first_packet_ms: Dist::from_samples(&firsts),
        login_first_packet_ms: Dist::from_samples(&login_firsts),
        play_phases_ms: phases.iter().any(|p| !p.is_empty()).then(|| {
            let [login, signaling, ice, dtls, first_packet] =
                phases.each_ref().map(|p| Dist::from_samples(p));
            PlayPhases {
                login,
                signaling,
                ice,
                dtls,
                first_packet,
            }
        }),
        server: server_report,
        generator_cpu_cores: cpu_us / 1e6 / window_s.max(1e-9),
        generator_runq_wait_s: gen_end.runq_wait_us.saturating_sub(gen_start.runq_wait_us) as f64 / 1e6,
        total_s: started.elapsed().as_secs_f64(),
        errors,
        servers,
    })
}

/// The clients' outcomes per signaling server: assigned publishers and subscribers from the plan
/// (a client task that had to be aborted still counts there), the rest from the outcomes.
fn per_server<C: Clients>(
    clients: &C,
    plan: &Plan,
    pub_outs: &[ClientOutcome],
    play_outs: &[ClientOutcome],
) -> Vec<ServerReport> {
    let mut servers: Vec<ServerReport> = clients
        .servers()
        .into_iter()
        .map(|url| ServerReport {
            url,
            ..ServerReport::default()
        })
        .collect();
    if servers.is_empty() {
        return servers;
    }
    for p in 0..plan.publishers {
        servers[clients.server_of(&UserSpec::publisher(plan, p))].publishers += 1;
    }
    for s in 0..plan.subscribers {
        servers[clients.server_of(&UserSpec::subscriber(plan, s))].subscribers += 1;
    }
    for o in pub_outs {
        let s = &mut servers[o.server];
        s.logins += u64::from(o.logged_in);
        s.publishes_joined += u64::from(o.error.is_none() && o.join_ms.is_some());
        s.failures += u64::from(o.error.is_some());
    }
    for o in play_outs {
        let s = &mut servers[o.server];
        let media = o.stream.as_ref().is_some_and(|st| st.stats.received > 0);
        let cross = o.publisher_server.is_some_and(|p| p != o.server);
        s.logins += u64::from(o.logged_in);
        s.plays += 1;
        s.plays_joined += u64::from(o.join_ms.is_some());
        s.plays_with_media += u64::from(media);
        s.cross_node_plays += u64::from(cross);
        s.cross_node_plays_with_media += u64::from(cross && media);
        s.failures += u64::from(o.error.is_some());
    }
    servers
}

/// Waits for the client tasks until `deadline` (aborting the late ones) and gathers their outcomes.
async fn collect(
    tasks: Vec<JoinHandle<Vec<ClientOutcome>>>,
    deadline: tokio::time::Instant,
    errors: &mut Vec<String>,
) -> Vec<ClientOutcome> {
    let mut outs = Vec::new();
    for mut task in tasks {
        match tokio::time::timeout_at(deadline, &mut task).await {
            Ok(Ok(o)) => outs.extend(o),
            Ok(Err(e)) => errors.push(format!("client task: {e}")),
            Err(_) => {
                task.abort();
                errors.push("client task did not stop in time".into());
            }
        }
    }
    outs
}

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// Waits for every ready signal (or the timeout); returns how many arrived.
async fn wait_ready(
    ready: Vec<oneshot::Receiver<()>>,
    timeout: Duration,
    shared: &Shared,
    publishers: bool,
) -> u64 {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut ok = 0;
    for rx in ready {
        if let Ok(Ok(())) = tokio::time::timeout_at(deadline, rx).await {
            ok += 1;
            let c = if publishers {
                &shared.counters.publishers_ready
            } else {
                &shared.counters.plays_ready
            };
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
    ok
}

/// Each second: samples the server, and prints a progress line on stderr when `print`.
fn spawn_progress(
    print: bool,
    shared: Arc<Shared>,
    server: Option<ProcTarget>,
    samples: Arc<Mutex<Samples>>,
    phase: Arc<Mutex<&'static str>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let start = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        let mut last_sent = 0;
        let mut last_recv = 0;
        let mut last_cpu: Option<ProcSample> = server.and_then(|s| s.sample().ok());
        loop {
            tick.tick().await;
            let sent = shared.counters.sent.load(Ordering::Relaxed);
            let recv = shared.counters.received.load(Ordering::Relaxed);
            let mut server_txt = String::new();
            if let Some(s) = server.and_then(|s| s.sample().ok()) {
                if let Some(prev) = last_cpu {
                    let dt = s.at.duration_since(prev.at).as_secs_f64().max(1e-9);
                    let cpu = s.cpu_us.saturating_sub(prev.cpu_us) as f64 / 1e6 / dt * 100.0;
                    server_txt = format!("  server {cpu:5.1}% CPU {:6.1} MiB", s.rss_kib as f64 / 1024.0);
                }
                last_cpu = Some(s);
                samples.lock().expect("not poisoned").server.push(s);
            }
            if print {
                eprintln!(
                    "[{:6.1}s] {:<16} pubs {:>4} plays {:>6}  sent {:>7}/s  recv {:>8}/s{server_txt}",
                    start.elapsed().as_secs_f64(),
                    *phase.lock().expect("not poisoned"),
                    shared.counters.publishers_ready.load(Ordering::Relaxed),
                    shared.counters.plays_ready.load(Ordering::Relaxed),
                    sent - last_sent,
                    recv - last_recv,
                );
            }
            last_sent = sent;
            last_recv = recv;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_bounds() {
        let s = Shared::new(50);
        assert!(!s.in_window(0));
        s.window_start_us.store(100, Ordering::Relaxed);
        assert!(s.in_window(100));
        assert!(s.in_window(u64::MAX - 1));
        s.window_end_us.store(200, Ordering::Relaxed);
        assert!(s.in_window(199));
        assert!(!s.in_window(200));
        assert!(!s.in_window(99));
    }
}
