//! The UDP impairment proxy (see the crate docs).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use huddle_media::impair::{Impairment, Link, LinkStats};
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use tracing::debug;

use crate::{Direction, Scope};

/// Clients (remote addresses) relayed at most; datagrams from further ones are dropped.
const MAX_CLIENTS: usize = 4096;

/// The longest the proxy thread sleeps without looking at its settings.
const MAX_WAIT: Duration = Duration::from_millis(50);

const LISTEN: Token = Token(0);
const WAKE: Token = Token(1);
/// Upstream socket `i` is registered as `Token(FIRST_UPSTREAM + i)`.
const FIRST_UPSTREAM: usize = 2;

/// What a scope's clients get.
#[derive(Debug, Clone, Default)]
struct Rule {
    up: Impairment,
    down: Impairment,
    outage: bool,
}

#[derive(Debug, Default)]
struct Settings {
    all: Rule,
    per_ip: HashMap<IpAddr, Rule>,
}

impl Settings {
    fn rule(&self, ip: IpAddr) -> &Rule {
        self.per_ip.get(&ip).unwrap_or(&self.all)
    }

    fn rule_mut(&mut self, scope: Scope) -> &mut Rule {
        match scope {
            Scope::All => &mut self.all,
            Scope::Ip(ip) => {
                let all = self.all.clone();
                self.per_ip.entry(ip).or_insert(all)
            }
        }
    }
}

#[derive(Debug, Default)]
struct Shared {
    settings: Mutex<Settings>,
    /// Bumped on every change of `settings`, so the thread re-applies them.
    epoch: AtomicU64,
    stop: AtomicBool,
    stats: Mutex<HashMap<IpAddr, UdpProxyStats>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Counters of one client IP's two links.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct UdpProxyStats {
    /// Client to server.
    pub up: LinkStats,
    /// Server to client.
    pub down: LinkStats,
}

/// A UDP relay with seeded impairments per client IP and direction (see the crate docs).
///
/// Dropping it stops its thread and closes its sockets.
#[derive(Debug)]
pub struct UdpProxy {
    local: SocketAddr,
    shared: Arc<Shared>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

impl UdpProxy {
    /// Listens on `listen` and relays to `upstream`. Links are seeded from `seed`, so the same
    /// traffic meets the same losses in every run.
    pub fn start(listen: SocketAddr, upstream: SocketAddr, seed: u64) -> io::Result<UdpProxy> {
        let mut socket = UdpSocket::bind(listen)?;
        let local = socket.local_addr()?;
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut socket, LISTEN, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
        let shared = Arc::new(Shared::default());
        let relay = Relay {
            poll,
            socket,
            upstream,
            seed,
            shared: shared.clone(),
            clients: Vec::new(),
            by_addr: HashMap::new(),
            links: HashMap::new(),
            epoch: 0,
            buf: vec![0; 65536],
        };
        let thread = std::thread::Builder::new()
            .name("huddle-netsim-udp".into())
            .spawn(move || relay.run())?;
        Ok(UdpProxy {
            local,
            shared,
            waker,
            thread: Some(thread),
        })
    }

    /// The address clients send to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Sets the impairment of one direction for `scope`, from now on (datagrams in flight keep
    /// their arrival time).
    pub fn set_impairment(&self, scope: Scope, direction: Direction, impairment: Impairment) {
        self.change(scope, |rule| match direction {
            Direction::Up => rule.up = impairment,
            Direction::Down => rule.down = impairment,
        });
    }

    /// Starts (`true`) or ends an outage for `scope`: every datagram either way is dropped.
    pub fn set_outage(&self, scope: Scope, outage: bool) {
        self.change(scope, |rule| rule.outage = outage);
    }

    /// Counters per client IP.
    pub fn stats(&self) -> HashMap<IpAddr, UdpProxyStats> {
        lock(&self.shared.stats).clone()
    }

    fn change(&self, scope: Scope, f: impl FnOnce(&mut Rule)) {
        let mut settings = lock(&self.shared.settings);
        f(settings.rule_mut(scope));
        self.shared.epoch.fetch_add(1, Ordering::AcqRel);
        drop(settings);
        let _ = self.waker.wake();
    }
}

impl Drop for UdpProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One direction of one client IP: datagrams with the index of their client.
type DatagramLink = Link<(usize, Vec<u8>)>;

/// The proxy thread's state.
struct Relay {
    poll: Poll,
    socket: UdpSocket,
    upstream: SocketAddr,
    seed: u64,
    shared: Arc<Shared>,
    /// Per client address: its upstream socket.
    clients: Vec<(SocketAddr, UdpSocket)>,
    by_addr: HashMap<SocketAddr, usize>,
    /// Per client IP: the up and down links. A datagram carries the index of its client.
    links: HashMap<IpAddr, (DatagramLink, DatagramLink)>,
    epoch: u64,
    buf: Vec<u8>,
}

impl Relay {
    fn run(mut self) {
        let mut events = Events::with_capacity(256);
        while !self.shared.stop.load(Ordering::Acquire) {
            let now = Instant::now();
            let wait = self
                .next_arrival()
                .map(|t| t.saturating_duration_since(now))
                .unwrap_or(MAX_WAIT)
                .min(MAX_WAIT);
            if let Err(e) = self.poll.poll(&mut events, Some(wait)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    debug!(error = %e, "netsim poll failed");
                }
                continue;
            }
            self.apply_settings();
            for event in events.iter() {
                match event.token() {
                    LISTEN => self.read_clients(),
                    WAKE => {}
                    Token(t) => self.read_upstream(t - FIRST_UPSTREAM),
                }
            }
            self.deliver(Instant::now());
            self.publish_stats();
        }
    }

    fn next_arrival(&self) -> Option<Instant> {
        self.links
            .values()
            .flat_map(|(up, down)| [up.next_arrival(), down.next_arrival()])
            .flatten()
            .min()
    }

    fn apply_settings(&mut self) {
        let epoch = self.shared.epoch.load(Ordering::Acquire);
        if epoch == self.epoch {
            return;
        }
        self.epoch = epoch;
        let settings = lock(&self.shared.settings);
        for (ip, (up, down)) in &mut self.links {
            let rule = settings.rule(*ip);
            up.set_config(rule.up.clone());
            up.set_down(rule.outage);
            down.set_config(rule.down.clone());
            down.set_down(rule.outage);
        }
    }

    fn links_for(&mut self, ip: IpAddr) -> &mut (DatagramLink, DatagramLink) {
        let seed = self.seed;
        let shared = &self.shared;
        self.links.entry(ip).or_insert_with(|| {
            let settings = lock(&shared.settings);
            let rule = settings.rule(ip);
            let ip_seed = match ip {
                IpAddr::V4(v4) => u64::from(u32::from(v4)),
                IpAddr::V6(v6) => u128::from(v6) as u64,
            };
            let mut up = Link::new(rule.up.clone(), seed ^ ip_seed.rotate_left(17));
            let mut down = Link::new(rule.down.clone(), seed ^ ip_seed.rotate_left(41) ^ 1);
            up.set_down(rule.outage);
            down.set_down(rule.outage);
            (up, down)
        })
    }

    fn read_clients(&mut self) {
        let mut errors = 0;
        loop {
            let (n, from) = match self.socket.recv_from(&mut self.buf) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    // As in `read_upstream`: ICMP errors of earlier sends, once each.
                    debug!(error = %e, "netsim receive failed");
                    errors += 1;
                    if errors > 16 {
                        return;
                    }
                    continue;
                }
            };
            let Some(client) = self.client(from) else {
                continue;
            };
            let data = self.buf[..n].to_vec();
            let now = Instant::now();
            self.links_for(from.ip()).0.send((client, data), now);
        }
    }

    /// The index of `from`'s upstream socket, made on its first datagram.
    fn client(&mut self, from: SocketAddr) -> Option<usize> {
        if let Some(&i) = self.by_addr.get(&from) {
            return Some(i);
        }
        if self.clients.len() >= MAX_CLIENTS {
            return None;
        }
        // Bind on the client's own IP, so the server sees one address per client IP.
        let made = UdpSocket::bind(SocketAddr::new(from.ip(), 0)).and_then(|mut s| {
            s.connect(self.upstream)?;
            let token = Token(FIRST_UPSTREAM + self.clients.len());
            self.poll.registry().register(&mut s, token, Interest::READABLE)?;
            Ok(s)
        });
        match made {
            Ok(s) => {
                let i = self.clients.len();
                self.clients.push((from, s));
                self.by_addr.insert(from, i);
                Some(i)
            }
            Err(e) => {
                debug!(error = %e, %from, "netsim could not open an upstream socket");
                None
            }
        }
    }

    fn read_upstream(&mut self, i: usize) {
        let Some((client, _)) = self.clients.get(i) else {
            return;
        };
        let ip = client.ip();
        let mut errors = 0;
        loop {
            let n = match self.clients[i].1.recv(&mut self.buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    // ICMP errors (the server is gone) show up here once each; keep draining
                    // (the poll is edge-triggered), but never spin on a socket that only fails.
                    debug!(error = %e, "netsim upstream receive failed");
                    errors += 1;
                    if errors > 16 {
                        return;
                    }
                    continue;
                }
            };
            let data = self.buf[..n].to_vec();
            let now = Instant::now();
            self.links_for(ip).1.send((i, data), now);
        }
    }

    fn deliver(&mut self, now: Instant) {
        for (up, down) in self.links.values_mut() {
            while let Some((i, data)) = up.recv(now) {
                // A full buffer or a server that is gone loses the datagram, as a network would.
                let _ = self.clients[i].1.send(&data);
            }
            while let Some((i, data)) = down.recv(now) {
                let _ = self.socket.send_to(&data, self.clients[i].0);
            }
        }
    }

    fn publish_stats(&self) {
        let mut stats = lock(&self.shared.stats);
        for (ip, (up, down)) in &self.links {
            stats.insert(
                *ip,
                UdpProxyStats {
                    up: up.stats(),
                    down: down.stats(),
                },
            );
        }
    }
}
