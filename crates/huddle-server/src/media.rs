//! The media plane's IO shell: the one UDP socket and N shards of the sans-IO [`Sfu`], each on
//! its own thread (`docs/sfu.md`, "Sharding over cores").
//!
//! ```text
//!             recvmmsg     huddle-media-0: Router ──► its own Sfu (shard 0)   ──► sendmmsg on
//!  UDP port ─────────────► STUN by the ufrag's    ──► huddle-media-1: Sfu     ──► the same
//!                          shard, the rest by     ──► huddle-media-N: Sfu     ──► socket
//!                          address (learned from the shards' passed checks)
//!                          commands from signaling go to the stream's shard ▲
//! ```
//!
//! - **Threads, not tokio tasks.** The media plane is CPU-bound and its system calls never wait
//!   (`recvmmsg`/`sendmmsg` with `MSG_DONTWAIT`; thread 0 sleeps in `poll`), so plain threads
//!   skip the reactor's bookkeeping; the kernel spreads them over the cores, and `taskset` or
//!   `top -H` show them by name (`huddle-media-N`).
//! - **Candidates** ([`candidates`]): `public_ip`, else the listen IP, else (a wildcard listen)
//!   the host's addresses. On a wildcard listen the kernel tells each datagram's destination
//!   (`IP_PKTINFO`), which the SFU takes as the candidate the client reached, and each reply
//!   leaves from its connection's candidate (`mmsg`). A `[::]` listen is one dual-stack socket;
//!   addresses are canonical (IPv4 peers as IPv4) from the socket on.
//! - **Thread 0 receives.** It reads up to 64 datagrams per system call and hands each to its
//!   shard ([`Router`]): a STUN check by the shard index in the server's ICE username fragment,
//!   anything else by the source address, learned from the shards once a check from it passed.
//!   Shard 0 runs on this thread, so its datagrams (all of them, with one worker) are handled
//!   where they are read, with no hand-off. The other shards' datagrams go to them in batches
//!   (buffers recycled, no allocation per packet); a shard more than [`MAX_QUEUED_DATAGRAMS`]
//!   behind loses new ones (`dropped_overload`).
//! - **Late RTP is shed.** The kernel stamps each datagram's arrival (`SO_TIMESTAMPNS`); RTP
//!   that reaches its shard more than [`STALE_RTP`] after arriving is dropped and counted
//!   (`dropped_stale`) instead of forwarded, so overload costs the excess packets rather than
//!   adding seconds of queueing to every stream.
//! - **Shards.** Each owns an [`Sfu`] (its PCs, tables and timer heap) and waits for a batch, a
//!   command or its next timer (thread 0: for a datagram, a command — its [`Waker`] is woken —
//!   or shard 0's next timer). After each batch or command it runs the due timers (so they never
//!   starve under load), sends what its SFU queued in batches of up to 64 datagrams per
//!   `sendmmsg` on the shared socket (a datagram the kernel refuses is dropped and counted: UDP
//!   may lose it anyway) and hands the SFU's signaling messages (`media_answer`, an offer's
//!   `error`, `media_state`) to signaling through one bounded channel ([`signal_channel`]). A
//!   shard takes no lock of signaling's: the task at the other end of the channel owns their
//!   delivery. When the channel is full the shard keeps its messages, in order, and offers them
//!   again at its next step (within [`SIGNAL_RETRY`]); past [`MAX_PENDING_SIGNALS`] waiting in
//!   one shard, new ones are dropped and logged (a client whose `media_answer` is lost offers
//!   again after its own timeout; media already flowing is not affected).
//! - **Commands keep the registry's order.** Signaling sends them under the registry lock. An
//!   offer, `ClosePublish` and `ClosePlay` go to the stream's shard ([`Placement`]: the least
//!   loaded shard when the stream first appears, the same one while it has state there), so a
//!   stream's publish PC and its play PCs live together and an offer and the close that follows
//!   it travel on the same channel, never reordered; `SessionGone` goes to every shard. Offers in
//!   flight are bounded ([`MAX_OFFERS_IN_FLIGHT`], beyond: 1009006); closes are bounded by the
//!   sessions and their rate limit.
//! - **Pull links** (`relay_io`): a stream pulled from another node of the cluster has its
//!   relay PC in its shard and a UDP socket of its own. The shard sends on that socket itself;
//!   one thread (`huddle-relay`, on nodes with `cluster_secret`) reads every link's socket and
//!   hands the datagrams to their shards as thread 0 does the media socket's (batches, the
//!   same bound). Neither direction passes through signaling's runtime.
//! - **Shutdown** (the server's shutdown signal): every shard is told to stop (thread 0 woken),
//!   and the task returned by [`spawn`] ends once every thread is joined.

mod candidates;
mod mmsg;
mod relay_io;
mod tcp;

use huddle_proto::{AppId, StreamId};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use str0m::net::{Protocol, Transmit};
use tracing::{debug, info, warn};

use parking_lot::Mutex;

use crate::config::ServerConfig;
use crate::registry::SessionId;
use crate::sfu::placement::Placement;
use crate::sfu::shard::{MAX_SHARDS, ROUTES_PER_GENERATION, Router};
use crate::sfu::{Command, Counters, Sfu, SfuConfig};
use mmsg::{BATCH, RecvBatch, SendBatch, Waiter, Waker};

/// Offers sent to the media plane and not yet handled, at most.
pub(crate) const MAX_OFFERS_IN_FLIGHT: usize = 256;

/// The largest datagram read (larger ones are truncated and then refused by the SFU).
const MAX_DATAGRAM: usize = 2048;

/// Datagrams handed to a shard and not yet handled, at most; beyond, new ones are dropped
/// (`dropped_overload`) rather than queued without bound.
const MAX_QUEUED_DATAGRAMS: usize = 8192;

/// Kernel buffer asked for each direction of the media socket, so that a burst (many players,
/// a keyframe) is not dropped while the threads are busy. The kernel may cap it
/// (`net.core.rmem_max`).
const SOCKET_BUFFER: usize = 4 << 20;

/// RTP that waited longer than this between arriving at the socket and reaching its shard (the
/// kernel's receive buffer, then the shard's channel) is dropped instead of forwarded: under
/// overload the queues would otherwise turn the excess into seconds of delay for everyone, and
/// audio this late is past any player's jitter buffer anyway. RTCP, STUN and DTLS always go
/// through.
const STALE_RTP: Duration = Duration::from_millis(200);

/// The longest a shard sleeps without a timer.
const IDLE_WAKE: Duration = Duration::from_secs(1);

/// A message of the media plane to one session.
pub(crate) type Signal = (SessionId, huddle_proto::ServerMsg);

/// Signals in the channel from every shard to signaling's delivery task, at most.
pub(crate) const SIGNAL_QUEUE: usize = 1024;

/// Signals a shard keeps while the channel is full, at most; beyond, new ones are dropped.
pub(crate) const MAX_PENDING_SIGNALS: usize = 1024;

/// How soon a shard with signals waiting for room in the channel offers them again.
pub(crate) const SIGNAL_RETRY: Duration = Duration::from_millis(5);

/// The channel from the shards to whoever delivers their signals (signaling). Bounded: see
/// the module documentation for what happens when it is full.
pub(crate) fn signal_channel() -> (
    tokio::sync::mpsc::Sender<Signal>,
    tokio::sync::mpsc::Receiver<Signal>,
) {
    tokio::sync::mpsc::channel(SIGNAL_QUEUE)
}

/// What a shard's thread is sent.
enum ShardMsg {
    Datagrams(Batch),
    Command(Command),
    /// A new ICE-TCP connection from `from`: where its PCs' transmits go (framed).
    TcpOpen {
        from: SocketAddr,
        tx: tokio::sync::mpsc::Sender<Vec<u8>>,
    },
    /// A datagram of the ICE-TCP connection from `from`, accepted on the candidate `to`.
    TcpFrame {
        from: SocketAddr,
        to: SocketAddr,
        datagram: Vec<u8>,
    },
    /// The ICE-TCP connection from `from` ended.
    TcpClosed {
        from: SocketAddr,
    },
    /// A pull's link (`signaling::relay`) of the stream `key` has its socket at `local`: the
    /// transmits of its relay PC (those from `local`) are sent on it, and what the relay thread
    /// reads from it goes to the relay PC of the link `session`.
    RelayOpen {
        local: SocketAddr,
        session: SessionId,
        key: (AppId, StreamId),
        socket: Arc<std::net::UdpSocket>,
    },
    /// Datagrams the relay thread read from links' sockets (each item's destination is the
    /// link's socket).
    RelayDatagrams(Batch),
    /// The link's socket at `local` is closed.
    RelayClosed {
        local: SocketAddr,
    },
    Stop,
}

/// Datagrams for one shard, packed in one buffer; recycled between thread 0 (which receives)
/// and the shard.
#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    /// Sender, the candidate it was sent to, end offset in `bytes`, the kernel's arrival time (ns
    /// since the Unix epoch).
    items: Vec<(SocketAddr, SocketAddr, usize, Option<u64>)>,
}

impl Batch {
    fn push(&mut self, from: SocketAddr, to: SocketAddr, datagram: &[u8], at: Option<u64>) {
        self.bytes.extend_from_slice(datagram);
        self.items.push((from, to, self.bytes.len(), at));
    }

    fn iter(&self) -> impl Iterator<Item = (SocketAddr, SocketAddr, &[u8], Option<u64>)> + '_ {
        let mut start = 0;
        self.items.iter().map(move |(from, to, end, at)| {
            let d = &self.bytes[start..*end];
            start = *end;
            (*from, *to, d, *at)
        })
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.items.clear();
    }
}

/// The signaling side's handle on the media plane.
#[derive(Debug, Clone)]
pub(crate) struct MediaTx {
    shards: Vec<mpsc::Sender<ShardMsg>>,
    /// Wakes thread 0 (shard 0 runs there and sleeps in `poll`, not on its channel).
    waker: Arc<Waker>,
    offers_in_flight: Arc<AtomicUsize>,
    /// Which shard each stream lives in (`sfu::placement`), shared with the shards.
    placement: Arc<Mutex<Placement>>,
    /// The thread that reads the pull links' sockets (`None` in unit tests).
    relay: Option<relay_io::RelayIo>,
}

impl std::fmt::Debug for ShardMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShardMsg::Datagrams(b) => write!(f, "Datagrams({})", b.items.len()),
            ShardMsg::Command(c) => write!(f, "Command({c:?})"),
            ShardMsg::TcpOpen { from, .. } => write!(f, "TcpOpen({from})"),
            ShardMsg::TcpFrame { from, datagram, .. } => write!(f, "TcpFrame({from}, {})", datagram.len()),
            ShardMsg::TcpClosed { from } => write!(f, "TcpClosed({from})"),
            ShardMsg::RelayOpen { local, .. } => write!(f, "RelayOpen({local})"),
            ShardMsg::RelayDatagrams(b) => write!(f, "RelayDatagrams({})", b.items.len()),
            ShardMsg::RelayClosed { local } => write!(f, "RelayClosed({local})"),
            ShardMsg::Stop => f.write_str("Stop"),
        }
    }
}

impl MediaTx {
    /// Queues a command for its shard (every shard for `SessionGone`); offers are refused
    /// (`false`) when too many are in flight.
    pub(crate) fn send(&self, cmd: Command) -> bool {
        let Some((app, stream_id)) = cmd.stream() else {
            let mut ok = true;
            for tx in &self.shards {
                ok &= tx.send(ShardMsg::Command(cmd.clone())).is_ok();
            }
            self.waker.wake();
            return ok;
        };
        let is_offer = matches!(cmd, Command::Offer(_));
        if is_offer && self.offers_in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_OFFERS_IN_FLIGHT {
            self.offers_in_flight.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        let key = (app, stream_id.clone());
        // Counted in flight before it can reach the shard, which reports it handled.
        let shard = self.placement.lock().route(app, stream_id);
        let sent = self.shards[shard].send(ShardMsg::Command(cmd)).is_ok();
        if !sent {
            // The shard's thread is gone: nothing will report this command.
            self.placement.lock().handled(&key, true);
        }
        if shard == 0 {
            self.waker.wake();
        }
        if !sent && is_offer {
            self.offers_in_flight.fetch_sub(1, Ordering::AcqRel);
        }
        sent
    }
}

impl MediaTx {
    /// Starts a pull (`signaling::relay`): the link's `socket` goes to the stream's shard (its
    /// relay PC's transmits are sent on it) and to the relay thread (which reads it), then
    /// `cmd` ([`Command::PullOffer`]) to the shard, in this order. `false` when the media plane
    /// cannot take it.
    pub(crate) fn pull(&self, cmd: Command, socket: std::net::UdpSocket) -> bool {
        let Some((app, stream_id)) = cmd.stream() else {
            return false;
        };
        let Some(relay) = &self.relay else {
            return false;
        };
        let (Ok(local), Ok(()), Ok(reader)) = (
            socket.local_addr(),
            socket.set_nonblocking(true),
            socket.try_clone(),
        ) else {
            return false;
        };
        let Command::PullOffer { session, .. } = &cmd else {
            return false;
        };
        let session = *session;
        let key = (app, stream_id.clone());
        let shard = self.placement.lock().route(app, stream_id);
        let open = ShardMsg::RelayOpen {
            local,
            session,
            key: key.clone(),
            socket: Arc::new(socket),
        };
        let opened = self.shards[shard].send(open).is_ok()
            && relay.send(relay_io::Op::Open {
                local,
                socket: reader,
                shard,
            });
        let sent = opened && self.shards[shard].send(ShardMsg::Command(cmd)).is_ok();
        if !sent {
            self.placement.lock().handled(&key, true);
        }
        if shard == 0 {
            self.waker.wake();
        }
        sent
    }

    /// The link's socket at `local` takes datagrams from `peers` only (the stream's node's
    /// candidates, from its signed answer); until this, from nobody.
    pub(crate) fn relay_peers(&self, local: SocketAddr, peers: Vec<SocketAddr>) {
        if let Some(relay) = &self.relay {
            relay.send(relay_io::Op::Peers { local, peers });
        }
    }

    /// The link's socket at `local` is closed: the relay thread and every shard forget it.
    pub(crate) fn relay_closed(&self, local: SocketAddr) {
        if let Some(relay) = &self.relay {
            relay.send(relay_io::Op::Close { local });
        }
        for tx in &self.shards {
            let _ = tx.send(ShardMsg::RelayClosed { local });
        }
        self.waker.wake();
    }
}

/// The realtime clock in ns since the Unix epoch (the clock of the kernel's arrival stamps).
fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Whether `datagram` is RTP (not RTCP: RFC 5761's payload types 64–95 with the marker bit are
/// RTCP's 192–223) that reached the socket at `at` and is older than [`STALE_RTP`] at `now`
/// (ns since the Unix epoch). Without an arrival time nothing is stale; a clock that stepped
/// back makes nothing stale either.
fn is_stale_rtp(datagram: &[u8], at: Option<u64>, now: u64) -> bool {
    let Some(at) = at else { return false };
    let rtp =
        datagram.len() >= 12 && (128..192).contains(&datagram[0]) && !(192..=223).contains(&datagram[1]);
    rtp && now.saturating_sub(at) > STALE_RTP.as_nanos() as u64
}

/// Binds the media socket for `config`: the IP of `listen`, port `udp_port`; on `[::]` one
/// dual-stack socket (IPv4 too, whatever `net.ipv6.bindv6only` says).
pub(crate) fn bind(config: &crate::ServerConfig) -> io::Result<std::net::UdpSocket> {
    let addr = SocketAddr::new(config.listen.ip(), config.udp_port);
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    if addr.ip() == std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED) {
        sock.set_only_v6(false)?;
    }
    sock.bind(&addr.into())?;
    let socket = std::net::UdpSocket::from(sock);
    let sock = socket2::SockRef::from(&socket);
    if let Err(e) = sock
        .set_recv_buffer_size(SOCKET_BUFFER)
        .and_then(|()| sock.set_send_buffer_size(SOCKET_BUFFER))
    {
        warn!(error = %e, "could not enlarge the media socket buffers");
    }
    if let Err(e) = mmsg::enable_rx_timestamps(&socket) {
        warn!(error = %e, "no arrival times on the media socket: late RTP is not shed");
    }
    Ok(socket)
}

/// Binds the ICE-TCP listener: the IP of `listen`, port `tcp_port` ([`tcp::bind`]).
pub(crate) fn bind_tcp(ip: std::net::IpAddr, port: u16) -> io::Result<std::net::TcpListener> {
    tcp::bind(ip, port)
}

/// The number of shards for `media_workers` (0: one per core this process may run on).
pub(crate) fn shard_count(media_workers: usize) -> usize {
    let n = match media_workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    n.clamp(1, MAX_SHARDS)
}

/// Starts the media plane on `socket`: the shard threads (thread 0 also receives), and (within
/// a tokio runtime) a task that stops and joins them at shutdown. Returns the command handle and
/// that task.
///
/// The shards send their signals on `signals` ([`signal_channel`]) and the plane stops when
/// `shutdown` turns `true`: the media plane knows nothing else of signaling.
pub(crate) fn spawn(
    config: &ServerConfig,
    shutdown: tokio::sync::watch::Receiver<bool>,
    signals: tokio::sync::mpsc::Sender<Signal>,
    socket: std::net::UdpSocket,
    tcp_listener: Option<std::net::TcpListener>,
    counters: Arc<Counters>,
    recorder: Arc<crate::recording::Recorder>,
) -> io::Result<(MediaTx, tokio::task::JoinHandle<()>)> {
    let local = socket.local_addr()?;
    let tcp_port = match &tcp_listener {
        Some(l) => Some(l.local_addr()?.port()),
        None => None,
    };
    let plan = candidates::plan(local, config.public_ip, candidates::host_ips)?;
    let per_datagram = plan.destination.per_datagram();
    if per_datagram {
        // Without destinations every check would count as sent to the first candidate, and
        // str0m drops the checks sent to any other.
        mmsg::enable_pktinfo(&socket)?;
    }
    // Receives and sends never wait on Linux (MSG_DONTWAIT; thread 0 sleeps in poll). The mode
    // matters only for the fallback elsewhere: blocking receives with a short timeout.
    socket.set_nonblocking(false)?;
    socket.set_read_timeout(Some(Duration::from_millis(10)))?;
    let socket = Arc::new(socket);
    let n = shard_count(config.media_workers);
    let config_dtls_active = config.dtls_active;
    let offers_in_flight = Arc::new(AtomicUsize::new(0));
    let placement = Arc::new(Mutex::new(Placement::new(n)));
    let waker = Arc::new(Waker::new()?);
    let (learn_tx, learn_rx) = mpsc::channel();
    let (recycle_tx, recycle_rx) = mpsc::channel();
    let (relay_recycle_tx, relay_recycle_rx) = mpsc::channel();
    let mut senders = Vec::with_capacity(n);
    let mut shards = Vec::with_capacity(n);
    for index in 0..n {
        let (tx, rx) = mpsc::channel();
        let mut config = SfuConfig::new(plan.candidates[0]);
        config.candidates = plan.candidates.clone();
        config.tcp_port = tcp_port;
        config.shard = index;
        config.dtls_active = config_dtls_active;
        senders.push(tx);
        let mut sfu = Sfu::new(config, counters.clone());
        sfu.set_recorder(recorder.clone());
        shards.push(Shard {
            index,
            sfu,
            rx,
            socket: socket.clone(),
            signals: SignalOut::new(signals.clone()),
            counters: counters.clone(),
            queued: Arc::new(AtomicUsize::new(0)),
            offers_in_flight: offers_in_flight.clone(),
            placement: placement.clone(),
            reported_pcs: 0,
            learn: learn_tx.clone(),
            recycle: recycle_tx.clone(),
            relay_recycle: relay_recycle_tx.clone(),
            sender: SendBatch::new(&socket, per_datagram),
            out: Vec::with_capacity(BATCH),
            tcp: HashMap::new(),
            relays: HashMap::new(),
        });
    }
    drop((learn_tx, recycle_tx, relay_recycle_tx));
    let mut threads = Vec::with_capacity(n);
    let mut shards = shards.into_iter();
    let shard0 = shards.next().expect("at least one shard");
    let mut queues = vec![shard0.queued.clone()];
    for shard in shards {
        queues.push(shard.queued.clone());
        // On an error, the senders dropped on return stop the threads already started.
        threads.push(
            std::thread::Builder::new()
                .name(format!("huddle-media-{}", shard.index))
                .spawn(move || shard.run())?,
        );
    }
    // The pull links' sockets are read by a thread of their own, on a node that pulls.
    let relay = if config.cluster_secret.is_some() {
        let (relay, relay_thread) = relay_io::spawn(relay_io::Plane {
            shards: senders.clone(),
            queues: queues.clone(),
            shard0: waker.clone(),
            counters: counters.clone(),
            recycle: relay_recycle_rx,
        })?;
        threads.push(relay_thread);
        Some(relay)
    } else {
        None
    };
    let tcp_plane = tcp_port.map(|port| tcp::Plane {
        shards: senders.clone(),
        queues: queues.clone(),
        waker: waker.clone(),
        counters: counters.clone(),
        destination: plan.destination,
        port,
        max_per_ip: config.max_connections_per_ip,
    });
    let receiver = Receiver {
        socket: socket.clone(),
        router: Router::new(n, ROUTES_PER_GENERATION),
        shard0,
        shards: senders.clone(),
        queues,
        learn: learn_rx,
        recycle: recycle_rx,
        waiter: Waiter::new(waker.clone()),
        destination: plan.destination,
    };
    threads.insert(
        0,
        std::thread::Builder::new()
            .name("huddle-media-0".into())
            .spawn(move || receiver.run())?,
    );
    let advertised = plan
        .candidates
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ");
    info!(%local, candidates = %advertised, per_datagram_destination = per_datagram, shards = n, "media plane listening");
    if let (Some(listener), Some(plane)) = (tcp_listener, tcp_plane) {
        info!(
            tcp_port = plane.port,
            "ICE-TCP listening (passive candidates on the same addresses)"
        );
        tokio::spawn(tcp::serve(listener, plane, shutdown.clone()));
    }
    let mut shutdown = shutdown;
    let stopper = senders.clone();
    let stop_waker = waker.clone();
    let stop_relay = relay.clone();
    let task = tokio::spawn(async move {
        let _ = shutdown.wait_for(|s| *s).await;
        for tx in &stopper {
            let _ = tx.send(ShardMsg::Stop);
        }
        stop_waker.wake();
        if let Some(relay) = &stop_relay {
            relay.send(relay_io::Op::Stop);
        }
        let joined = tokio::task::spawn_blocking(move || {
            for t in threads {
                if t.join().is_err() {
                    warn!("a media thread panicked");
                }
            }
        })
        .await;
        if joined.is_err() {
            warn!("joining the media threads failed");
        }
        info!("media plane stopped");
    });
    Ok((
        MediaTx {
            shards: senders,
            waker,
            offers_in_flight,
            placement,
            relay,
        },
        task,
    ))
}

/// Thread 0: receives for every shard and runs shard 0.
struct Receiver {
    socket: Arc<std::net::UdpSocket>,
    router: Router,
    shard0: Shard,
    /// Every shard's channel (shard 0's carries only commands and the stop).
    shards: Vec<mpsc::Sender<ShardMsg>>,
    /// Per shard: datagrams handed over and not yet handled (shard 0's stays 0).
    queues: Vec<Arc<AtomicUsize>>,
    /// Addresses whose connectivity check passed, and their shard.
    learn: mpsc::Receiver<(SocketAddr, usize)>,
    /// Emptied batches, back from the shards.
    recycle: mpsc::Receiver<Batch>,
    waiter: Waiter,
    /// Which candidate a datagram was sent to.
    destination: candidates::Destination,
}

impl Receiver {
    fn run(mut self) {
        let mut batch = RecvBatch::new(MAX_DATAGRAM);
        let mut out: Vec<Option<Batch>> = (0..self.shards.len()).map(|_| None).collect();
        'run: loop {
            // Commands first, but at most a batch of them between two reads of the socket, so
            // that a storm of offers does not starve the media.
            let mut more_commands = true;
            for _ in 0..BATCH {
                match self.shard0.rx.try_recv() {
                    Ok(ShardMsg::Stop) | Err(mpsc::TryRecvError::Disconnected) => break 'run,
                    Ok(msg) => {
                        self.shard0.handle(msg);
                        self.shard0.step();
                    }
                    Err(mpsc::TryRecvError::Empty) => {
                        more_commands = false;
                        break;
                    }
                }
            }
            let received = match batch.recv(&self.socket) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                    ) =>
                {
                    0
                }
                Err(e) => {
                    // Not expected on an unconnected UDP socket; do not spin on it.
                    debug!(error = %e, "media receive failed");
                    std::thread::sleep(Duration::from_millis(1));
                    0
                }
            };
            if received > 0 {
                self.dispatch(&batch, &mut out);
            }
            self.shard0.step();
            if received < BATCH && !more_commands {
                // The socket is (nearly) empty: sleep until a datagram, a command or a timer.
                let wait = self.shard0.next_wait();
                if !wait.is_zero()
                    && let Err(e) = self.waiter.wait(&self.socket, wait)
                {
                    debug!(error = %e, "media wait failed");
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        self.shard0.stopped();
    }

    /// Routes the received datagrams: shard 0's are handled here, the others' sent in batches.
    fn dispatch(&mut self, batch: &RecvBatch, out: &mut [Option<Batch>]) {
        // Learn before routing: a shard reports an address before it answers the check, so the
        // client's next datagrams find it here.
        while let Ok((addr, shard)) = self.learn.try_recv() {
            self.router.learn(addr, shard);
        }
        let now = Instant::now();
        let wall = unix_ns();
        for d in batch.iter() {
            let (datagram, at) = (d.bytes, d.at);
            let Some((from, shard)) = d.from.and_then(|f| Some((f, self.router.route(f, datagram)?))) else {
                self.shard0.counters.count_unroutable();
                continue;
            };
            let to = self.destination.of(d.to);
            if shard == 0 {
                self.shard0.datagram(now, wall, from, to, datagram, at);
                if datagram.first().is_some_and(|b| *b < 2) {
                    // Shard 0 may have reported this address just now.
                    while let Ok((addr, shard)) = self.learn.try_recv() {
                        self.router.learn(addr, shard);
                    }
                }
            } else {
                out[shard]
                    .get_or_insert_with(|| self.recycle.try_recv().unwrap_or_default())
                    .push(from, to, datagram, at);
            }
        }
        for (shard, slot) in out.iter_mut().enumerate() {
            let Some(mut b) = slot.take() else { continue };
            let n = b.items.len();
            let counters = &self.shard0.counters;
            if self.queues[shard].fetch_add(n, Ordering::AcqRel) >= MAX_QUEUED_DATAGRAMS {
                self.queues[shard].fetch_sub(n, Ordering::AcqRel);
                for _ in 0..n {
                    counters.count_overload();
                }
                b.clear();
                *slot = Some(b);
                continue;
            }
            if self.shards[shard].send(ShardMsg::Datagrams(b)).is_err() {
                // The shard's thread is gone (it panicked): its traffic is lost, the other
                // shards' is not.
                self.queues[shard].fetch_sub(n, Ordering::AcqRel);
                for _ in 0..n {
                    counters.count_unroutable();
                }
            }
        }
    }
}

/// A shard's end of the signal channel, with the signals waiting for room in it.
struct SignalOut {
    tx: tokio::sync::mpsc::Sender<Signal>,
    /// In order, at most [`MAX_PENDING_SIGNALS`].
    pending: std::collections::VecDeque<Signal>,
    /// Dropped since the last report, the channel and the backlog being full.
    dropped: u64,
}

impl SignalOut {
    fn new(tx: tokio::sync::mpsc::Sender<Signal>) -> SignalOut {
        SignalOut {
            tx,
            pending: std::collections::VecDeque::new(),
            dropped: 0,
        }
    }

    /// Keeps `s` behind the waiting ones, or drops it (counted) when [`MAX_PENDING_SIGNALS`] wait.
    fn push(&mut self, s: Signal) {
        if self.pending.len() < MAX_PENDING_SIGNALS {
            self.pending.push_back(s);
        } else {
            self.dropped += 1;
        }
    }

    /// Offers the waiting signals to the channel, in order, until it is full. Returns how many
    /// were dropped since the last report, once the backlog has room again.
    #[must_use]
    fn flush(&mut self) -> Option<u64> {
        use tokio::sync::mpsc::error::TrySendError;
        while let Some(s) = self.pending.pop_front() {
            match self.tx.try_send(s) {
                Ok(()) => {}
                Err(TrySendError::Full(s)) => {
                    self.pending.push_front(s);
                    break;
                }
                // Nobody delivers any more (shutdown): nothing to keep them for.
                Err(TrySendError::Closed(_)) => {
                    self.pending.clear();
                    break;
                }
            }
        }
        if self.dropped > 0 && self.pending.len() < MAX_PENDING_SIGNALS / 2 {
            return Some(std::mem::take(&mut self.dropped));
        }
        None
    }
}

/// One shard: its SFU and what it needs to talk to the socket, the router and signaling.
struct Shard {
    index: usize,
    sfu: Sfu,
    rx: mpsc::Receiver<ShardMsg>,
    socket: Arc<std::net::UdpSocket>,
    /// Signals to signaling's delivery task.
    signals: SignalOut,
    counters: Arc<Counters>,
    queued: Arc<AtomicUsize>,
    offers_in_flight: Arc<AtomicUsize>,
    placement: Arc<Mutex<Placement>>,
    /// The PC count last given to `placement`.
    reported_pcs: usize,
    learn: mpsc::Sender<(SocketAddr, usize)>,
    recycle: mpsc::Sender<Batch>,
    sender: SendBatch,
    /// Datagrams taken from the SFU, not yet sent (at most a batch).
    out: Vec<Transmit>,
    /// The ICE-TCP connections of this shard's PCs, by client address ([`tcp`]).
    tcp: HashMap<SocketAddr, tokio::sync::mpsc::Sender<Vec<u8>>>,
    /// Emptied relay batches, back to the relay thread.
    relay_recycle: mpsc::Sender<Batch>,
    /// The sockets of pulls' links whose relay PCs live here, by their address (the source of
    /// their PCs' transmits, the destination of what the relay thread reads from them).
    relays: HashMap<SocketAddr, RelayEnd>,
}

/// A pull link's socket, as its stream's shard knows it.
struct RelayEnd {
    session: SessionId,
    key: (AppId, StreamId),
    socket: Arc<std::net::UdpSocket>,
}

impl Shard {
    /// The loop of shards 1 to N-1: wait for a message or the next timer, handle, step.
    fn run(mut self) {
        loop {
            match self.rx.recv_timeout(self.next_wait()) {
                Ok(ShardMsg::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Ok(msg) => self.handle(msg),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            self.step();
        }
        self.stopped();
    }

    /// How long the shard may sleep: until its next timer, at most [`IDLE_WAKE`].
    fn next_wait(&self) -> Duration {
        let now = Instant::now();
        let idle = if self.signals.pending.is_empty() {
            IDLE_WAKE
        } else {
            SIGNAL_RETRY
        };
        self.sfu
            .poll_timeout()
            .map_or(idle, |t| t.saturating_duration_since(now))
            .min(idle)
    }

    fn handle(&mut self, msg: ShardMsg) {
        match msg {
            ShardMsg::Command(cmd) => {
                if matches!(cmd, Command::Offer(_)) {
                    self.offers_in_flight.fetch_sub(1, Ordering::AcqRel);
                }
                let key = cmd.stream().map(|(app, id)| (app, id.clone()));
                self.sfu.handle_command(Instant::now(), cmd);
                let mut placement = self.placement.lock();
                while let Some(k) = self.sfu.poll_released() {
                    placement.released(&k);
                }
                if let Some((app, id)) = key {
                    placement.handled(&(app, id.clone()), self.sfu.has_stream(app, &id));
                }
                self.reported_pcs = self.sfu.peer_connections();
                placement.set_pcs(self.index, self.reported_pcs);
            }
            ShardMsg::Datagrams(mut batch) => {
                let now = Instant::now();
                let wall = unix_ns();
                for (from, to, datagram, at) in batch.iter() {
                    self.datagram(now, wall, from, to, datagram, at);
                }
                self.queued.fetch_sub(batch.items.len(), Ordering::AcqRel);
                batch.clear();
                let _ = self.recycle.send(batch);
            }
            ShardMsg::TcpOpen { from, tx } => {
                self.tcp.insert(from, tx);
            }
            ShardMsg::TcpFrame { from, to, datagram } => {
                self.queued.fetch_sub(1, Ordering::AcqRel);
                self.sfu
                    .handle_input(Instant::now(), Protocol::Tcp, from, to, &datagram);
                self.send(false);
            }
            ShardMsg::TcpClosed { from } => {
                self.tcp.remove(&from);
            }
            ShardMsg::RelayOpen {
                local,
                session,
                key,
                socket,
            } => {
                self.relays.insert(local, RelayEnd { session, key, socket });
            }
            ShardMsg::RelayDatagrams(mut batch) => {
                let now = Instant::now();
                let wall = unix_ns();
                for (from, to, datagram, at) in batch.iter() {
                    if is_stale_rtp(datagram, at, wall) {
                        self.counters.count_stale();
                        continue;
                    }
                    let Some(end) = self.relays.get(&to) else {
                        self.counters.count_unroutable();
                        continue;
                    };
                    self.sfu
                        .handle_relay_input(now, end.session, &end.key, from, to, datagram);
                    self.send(false);
                }
                self.queued.fetch_sub(batch.items.len(), Ordering::AcqRel);
                batch.clear();
                let _ = self.relay_recycle.send(batch);
            }
            ShardMsg::RelayClosed { local } => {
                self.relays.remove(&local);
            }
            ShardMsg::Stop => {}
        }
    }

    /// One datagram from `from` to the candidate `to`, routed here; `at` is when it reached the
    /// socket and `wall` the time now, both in ns since the Unix epoch (stale RTP is dropped:
    /// [`STALE_RTP`]).
    fn datagram(
        &mut self,
        now: Instant,
        wall: u64,
        from: SocketAddr,
        to: SocketAddr,
        datagram: &[u8],
        at: Option<u64>,
    ) {
        if is_stale_rtp(datagram, at, wall) {
            self.counters.count_stale();
            return;
        }
        self.sfu.handle_datagram_to(now, from, to, datagram);
        if datagram.first().is_some_and(|b| *b < 2) && self.sfu.routes_address(from) {
            // Before the check's answer leaves: see `Receiver::dispatch`.
            let _ = self.learn.send((from, self.index));
        }
        self.send(false);
    }

    /// After each message or batch: the due timers, then send everything queued and deliver the
    /// signaling messages.
    fn step(&mut self) {
        let now = Instant::now();
        if self.sfu.poll_timeout().is_some_and(|t| t <= now) {
            self.sfu.handle_timeout(now);
        }
        self.report_placement();
        self.send(true);
        while let Some(s) = self.sfu.poll_signal() {
            self.signals.push(s);
        }
        if let Some(dropped) = self.signals.flush() {
            warn!(
                shard = self.index,
                dropped, "signaling fell behind: media signals dropped"
            );
        }
    }

    /// Moves the SFU's queued datagrams into `out` and sends them in batches: every full batch,
    /// and with `all` the rest too.
    fn send(&mut self, all: bool) {
        loop {
            while self.out.len() < BATCH {
                match self.sfu.poll_transmit() {
                    Some(t) if t.proto == Protocol::Tcp => self.send_tcp(&t),
                    Some(t) if !self.relays.is_empty() && self.relays.contains_key(&t.source) => {
                        self.send_relay(&t);
                    }
                    Some(t) => self.out.push(t),
                    None => break,
                }
            }
            if self.out.is_empty() || (self.out.len() < BATCH && !all) {
                return;
            }
            let refused = self.sender.send(&self.socket, &self.out);
            for _ in 0..refused {
                self.counters.count_send_failure();
            }
            self.out.clear();
        }
    }

    /// Queues a transmit on its ICE-TCP connection; dropped (and counted) when the connection is
    /// gone or its queue is full.
    fn send_tcp(&mut self, t: &Transmit) {
        let sent = self
            .tcp
            .get(&t.destination)
            .zip(huddle_proto::framing::encode(&t.contents))
            .is_some_and(|(tx, f)| tx.try_send(f).is_ok());
        if !sent {
            self.counters.count_send_failure();
        }
    }

    /// Sends a relay PC's transmit on its link's socket, never waiting (the socket is
    /// non-blocking); dropped (and counted) when the link is gone or the kernel refuses it.
    fn send_relay(&mut self, t: &Transmit) {
        let sent = self
            .relays
            .get(&t.source)
            .is_some_and(|end| end.socket.send_to(&t.contents, t.destination).is_ok());
        if !sent {
            self.counters.count_send_failure();
        }
    }

    /// Streams the SFU dropped on its own (failed or timed-out PCs), and its PC count when it
    /// changed, to the placement table: the lock is taken only then, never per packet.
    fn report_placement(&mut self) {
        let first = self.sfu.poll_released();
        let pcs = self.sfu.peer_connections();
        if first.is_none() && pcs == self.reported_pcs {
            return;
        }
        let mut placement = self.placement.lock();
        if let Some(k) = first {
            placement.released(&k);
        }
        while let Some(k) = self.sfu.poll_released() {
            placement.released(&k);
        }
        self.reported_pcs = pcs;
        placement.set_pcs(self.index, pcs);
    }

    fn stopped(&self) {
        if self.sfu.peer_connections() > 0 {
            warn!(
                shard = self.index,
                pcs = self.sfu.peer_connections(),
                "media shard stopped with open peer connections"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sfu::Offer;
    use huddle_proto::{AppId, MediaRole, StreamId};

    fn handle(n: usize) -> (MediaTx, Vec<mpsc::Receiver<ShardMsg>>) {
        let (shards, rxs) = (0..n).map(|_| mpsc::channel()).unzip();
        let tx = MediaTx {
            shards,
            waker: Arc::new(Waker::new().unwrap()),
            offers_in_flight: Arc::new(AtomicUsize::new(0)),
            placement: Arc::new(Mutex::new(Placement::new(n))),
            relay: None,
        };
        (tx, rxs)
    }

    fn commands(rx: &mpsc::Receiver<ShardMsg>) -> Vec<String> {
        rx.try_iter()
            .map(|m| match m {
                ShardMsg::Command(Command::Offer(o)) => format!("offer {}", o.stream_id),
                ShardMsg::Command(Command::ClosePublish { stream_id, .. }) => {
                    format!("unpublish {stream_id}")
                }
                ShardMsg::Command(Command::ClosePlay { stream_id, .. }) => format!("stop {stream_id}"),
                ShardMsg::Command(Command::SessionGone { .. }) => "gone".into(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn commands_go_to_the_stream_shard_in_order_and_session_ends_to_all() {
        let (tx, rxs) = handle(3);
        let app = AppId::new(9).unwrap();
        let session = "4".parse().unwrap();
        let offer = |s: &str| {
            Command::Offer(Offer {
                session,
                app,
                stream_id: StreamId::new(s).unwrap(),
                role: MediaRole::Publish,
                seq: 1,
                sdp: String::new(),
                setup_active: true,
                red_depth: 0,
            })
        };
        let mut want: Vec<Vec<String>> = vec![Vec::new(); 3];
        for i in 0..12 {
            let s = format!("s{i}");
            assert!(tx.send(offer(&s)));
            let key = (app, StreamId::new(&s).unwrap());
            let shard = tx.placement.lock().shard_of(&key).expect("placed");
            assert!(tx.send(Command::ClosePlay {
                session,
                app,
                stream_id: StreamId::new(&s).unwrap(),
            }));
            assert!(tx.send(Command::ClosePublish {
                app,
                stream_id: StreamId::new(&s).unwrap(),
            }));
            want[shard].extend([
                format!("offer {s}"),
                format!("stop {s}"),
                format!("unpublish {s}"),
            ]);
        }
        assert!(tx.send(Command::SessionGone { session }));
        for (rx, mut want) in rxs.iter().zip(want) {
            assert_eq!(want.len(), 12, "12 streams over 3 shards: 4 each");
            want.push("gone".into());
            assert_eq!(commands(rx), want);
        }
        assert_eq!(tx.offers_in_flight.load(Ordering::Acquire), 12);
    }

    #[test]
    fn a_full_signal_channel_keeps_signals_in_order_then_drops_and_counts() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(2);
        let mut out = SignalOut::new(tx);
        let signal = |n: u32| {
            (
                "1".parse::<SessionId>().unwrap(),
                huddle_proto::ServerMsg::Pong {
                    seq: n,
                    server_time_ms: 0,
                },
            )
        };
        let total = MAX_PENDING_SIGNALS as u32 + 3;
        for n in 0..total {
            out.push(signal(n));
        }
        // The backlog keeps its limit (the last three are dropped); two fit in the channel.
        assert_eq!(out.flush(), None);
        assert_eq!(out.pending.len(), MAX_PENDING_SIGNALS - 2);
        let mut seen = Vec::new();
        let mut reports = Vec::new();
        loop {
            while let Ok((_, m)) = rx.try_recv() {
                let huddle_proto::ServerMsg::Pong { seq, .. } = m else {
                    panic!("not a pong");
                };
                seen.push(seq);
            }
            if out.pending.is_empty() {
                break;
            }
            reports.extend(out.flush());
        }
        // The three dropped are reported once, when the backlog has room again.
        assert_eq!(reports, vec![3]);
        assert_eq!(out.dropped, 0);
        assert_eq!(seen, (0..MAX_PENDING_SIGNALS as u32).collect::<Vec<_>>());
        // Once delivery is gone, the backlog is not kept.
        out.push(signal(0));
        drop(rx);
        assert_eq!(out.flush(), None);
        assert!(out.pending.is_empty());
    }

    #[test]
    fn only_rtp_that_waited_too_long_is_stale() {
        let ms = 1_000_000u64;
        let now = 10_000 * ms;
        let rtp = [0x80, 111, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0xf8];
        let rtp_marker = [0x80, 111 | 0x80, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0xf8];
        let rtcp_sr = [0x80, 200, 0, 6, 0, 0, 0, 1, 0, 0, 0, 0, 0];
        let stun = [0u8, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42, 0, 0, 0, 0];
        let dtls = [22u8, 254, 253, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(is_stale_rtp(&rtp, Some(now - 201 * ms), now));
        assert!(is_stale_rtp(&rtp_marker, Some(now - 500 * ms), now));
        assert!(!is_stale_rtp(&rtp, Some(now - 199 * ms), now));
        assert!(!is_stale_rtp(&rtp, None, now), "no arrival time: never stale");
        assert!(
            !is_stale_rtp(&rtp, Some(now + 50 * ms), now),
            "a clock that stepped back"
        );
        for other in [&rtcp_sr[..], &stun, &dtls, &rtp[..4]] {
            assert!(!is_stale_rtp(other, Some(now - 5_000 * ms), now), "{other:?}");
        }
    }

    #[test]
    fn offers_in_flight_are_bounded() {
        let (tx, _rxs) = handle(2);
        let app = AppId::new(9).unwrap();
        let offer = || {
            Command::Offer(Offer {
                session: "1".parse().unwrap(),
                app,
                stream_id: StreamId::new("s").unwrap(),
                role: MediaRole::Play,
                seq: 1,
                sdp: String::new(),
                setup_active: true,
                red_depth: 0,
            })
        };
        for _ in 0..MAX_OFFERS_IN_FLIGHT {
            assert!(tx.send(offer()));
        }
        assert!(!tx.send(offer()));
        // Closes are never refused.
        assert!(tx.send(Command::ClosePublish {
            app,
            stream_id: StreamId::new("s").unwrap(),
        }));
    }
}
