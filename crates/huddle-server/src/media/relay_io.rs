//! The datagrams of the cluster's pull links, off the signaling runtime (`docs/cluster.md`,
//! "The link's datagrams").
//!
//! A node that pulls a stream from another node has one UDP socket per link (the relay PC's,
//! see `sfu::relay`). Its datagrams used to travel through a task of the signaling runtime in
//! both directions (a socket read, a copy into a `Vec`, a channel to the shard; the shard's
//! transmits through another channel back to the task): two task wake-ups and a reactor turn
//! per packet, on a runtime that also encodes room-sized answers. Now:
//!
//! - **Out**: the stream's shard sends its relay PC's transmits on the link's socket itself
//!   (`send_to`, never waiting: the socket is non-blocking; a datagram the kernel refuses is
//!   dropped and counted, as on the media socket).
//! - **In**: one thread per node (`huddle-relay`) waits on every link socket at once (`mio`,
//!   epoll) and hands what it reads to the stream's shard in batches, as thread 0 hands the
//!   media socket's datagrams to the other shards: the same recycled [`Batch`] buffers (no
//!   allocation per packet), counted against the shard's [`MAX_QUEUED_DATAGRAMS`] (beyond it,
//!   new datagrams are dropped: `dropped_overload`), stamped with the time they were read so
//!   that RTP that then waits too long in the shard's channel is shed as the media socket's is.
//!
//! **Only the owner's datagrams.** A link's socket takes datagrams only from the addresses the
//! stream's node answered with (its candidates, from an answer signed with the cluster's secret:
//! `signaling::relay`); until the answer, none. Anything else is dropped here and counted
//! (`dropped_unknown`), before it reaches a shard. What does come from there is then checked by
//! the relay PC as any PC checks its peer: STUN message integrity with the answer's ICE password,
//! the DTLS certificate against the answer's fingerprint, SRTP authentication of every packet.
//! So a node takes link media only from a node that holds the cluster's secret.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};
use tracing::{debug, warn};

use super::mmsg::Waker as ShardWaker;
use super::{Batch, MAX_DATAGRAM, MAX_QUEUED_DATAGRAMS, ShardMsg, unix_ns};
use crate::sfu::Counters;

/// The token of the thread's own waker (commands from signaling).
const WAKE: Token = Token(0);

/// Datagrams put in one batch for a shard before it is handed over.
const BATCH_ITEMS: usize = 64;

/// What the relay thread is told.
pub(super) enum Op {
    /// A link's socket (a clone of the shard's), for the stream's shard `shard`.
    Open {
        local: SocketAddr,
        socket: std::net::UdpSocket,
        shard: usize,
    },
    /// The addresses the link takes datagrams from (the stream's node's candidates).
    Peers {
        local: SocketAddr,
        peers: Vec<SocketAddr>,
    },
    /// The link's socket is closed.
    Close {
        local: SocketAddr,
    },
    Stop,
}

/// The media plane's handle on the relay thread.
#[derive(Debug, Clone)]
pub(super) struct RelayIo {
    ops: mpsc::Sender<Op>,
    waker: Arc<mio::Waker>,
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Open { local, shard, .. } => write!(f, "Open({local}, shard {shard})"),
            Op::Peers { local, peers } => write!(f, "Peers({local}, {peers:?})"),
            Op::Close { local } => write!(f, "Close({local})"),
            Op::Stop => f.write_str("Stop"),
        }
    }
}

impl RelayIo {
    /// Tells the thread `op`; `false` when the thread is gone.
    pub(super) fn send(&self, op: Op) -> bool {
        let sent = self.ops.send(op).is_ok();
        if let Err(e) = self.waker.wake() {
            debug!(error = %e, "waking the relay thread failed");
        }
        sent
    }
}

/// What the relay thread needs of the media plane.
pub(super) struct Plane {
    /// Every shard's channel.
    pub(super) shards: Vec<mpsc::Sender<ShardMsg>>,
    /// Per shard: datagrams handed over and not yet handled.
    pub(super) queues: Vec<Arc<AtomicUsize>>,
    /// Wakes thread 0 (shard 0 sleeps in `poll`, not on its channel).
    pub(super) shard0: Arc<ShardWaker>,
    pub(super) counters: Arc<Counters>,
    /// Emptied batches, back from the shards.
    pub(super) recycle: mpsc::Receiver<Batch>,
}

/// Starts the relay thread (`huddle-relay`).
pub(super) fn spawn(plane: Plane) -> io::Result<(RelayIo, std::thread::JoinHandle<()>)> {
    let poll = Poll::new()?;
    let waker = Arc::new(mio::Waker::new(poll.registry(), WAKE)?);
    let (ops, rx) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("huddle-relay".into())
        .spawn(move || Thread::new(poll, rx, plane).run())?;
    Ok((RelayIo { ops, waker }, thread))
}

/// One link's socket, as the thread reads it.
struct Link {
    socket: UdpSocket,
    local: SocketAddr,
    shard: usize,
    /// Where datagrams are taken from; empty until the answer.
    peers: Vec<SocketAddr>,
}

struct Thread {
    poll: Poll,
    ops: mpsc::Receiver<Op>,
    plane: Plane,
    links: HashMap<Token, Link>,
    by_local: HashMap<SocketAddr, Token>,
    next_token: usize,
    /// Per shard, the batch being filled.
    out: Vec<Option<Batch>>,
}

impl Thread {
    fn new(poll: Poll, ops: mpsc::Receiver<Op>, plane: Plane) -> Thread {
        let out = (0..plane.shards.len()).map(|_| None).collect();
        Thread {
            poll,
            ops,
            plane,
            links: HashMap::new(),
            by_local: HashMap::new(),
            next_token: 1,
            out,
        }
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(256);
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            if let Err(e) = self.poll.poll(&mut events, None) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                warn!(error = %e, "the relay thread cannot wait on its sockets");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            // Commands first: a link's peers are set before its relay PC can send a check, so
            // the owner's first answer is never taken for a stranger's datagram.
            if !self.take_ops() {
                break;
            }
            for event in &events {
                if event.token() != WAKE {
                    self.read(event.token(), &mut buf);
                }
            }
            self.hand_over_all();
        }
        debug!("relay thread stopped");
    }

    /// Applies the waiting commands; `false` on `Stop` (or when the media plane is gone).
    fn take_ops(&mut self) -> bool {
        loop {
            match self.ops.try_recv() {
                Ok(Op::Open { local, socket, shard }) => self.open(local, socket, shard),
                Ok(Op::Peers { local, peers }) => {
                    if let Some(link) = self.by_local.get(&local).and_then(|t| self.links.get_mut(t)) {
                        link.peers = peers;
                    }
                }
                Ok(Op::Close { local }) => {
                    if let Some(mut link) = self.by_local.remove(&local).and_then(|t| self.links.remove(&t)) {
                        let _ = self.poll.registry().deregister(&mut link.socket);
                    }
                }
                Ok(Op::Stop) | Err(mpsc::TryRecvError::Disconnected) => return false,
                Err(mpsc::TryRecvError::Empty) => return true,
            }
        }
    }

    fn open(&mut self, local: SocketAddr, socket: std::net::UdpSocket, shard: usize) {
        if shard >= self.plane.shards.len() {
            return;
        }
        if let Err(e) = socket.set_nonblocking(true) {
            warn!(%local, error = %e, "a link's socket cannot be made non-blocking");
            return;
        }
        let mut socket = UdpSocket::from_std(socket);
        let token = Token(self.next_token);
        self.next_token += 1;
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut socket, token, Interest::READABLE)
        {
            warn!(%local, error = %e, "a link's socket cannot be watched");
            return;
        }
        if let Some(old) = self.by_local.insert(local, token)
            && let Some(mut link) = self.links.remove(&old)
        {
            let _ = self.poll.registry().deregister(&mut link.socket);
        }
        self.links.insert(
            token,
            Link {
                socket,
                local,
                shard,
                peers: Vec::new(),
            },
        );
    }

    /// Reads the link's socket until it is empty (the readiness is edge-triggered).
    fn read(&mut self, token: Token, buf: &mut [u8]) {
        let Some(link) = self.links.get(&token) else {
            return;
        };
        let (local, shard) = (link.local, link.shard);
        let at = Some(unix_ns());
        loop {
            let Some(link) = self.links.get(&token) else {
                return;
            };
            match link.socket.recv_from(buf) {
                Ok((n, from)) => {
                    if !link.peers.contains(&from) {
                        self.plane.counters.count_unroutable();
                        continue;
                    }
                    let batch = self.out[shard]
                        .get_or_insert_with(|| self.plane.recycle.try_recv().unwrap_or_default());
                    batch.push(from, local, &buf[..n], at);
                    if batch.items.len() >= BATCH_ITEMS {
                        self.hand_over(shard);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // An ICMP error reported on the socket (the owner's port closed): the link's
                    // relay PC times out on its own; nothing to read now.
                    debug!(%local, error = %e, "a link's socket reported an error");
                    return;
                }
            }
        }
    }

    fn hand_over_all(&mut self) {
        for shard in 0..self.out.len() {
            self.hand_over(shard);
        }
    }

    /// Hands the shard its batch, unless it is too far behind (then the batch's datagrams are
    /// dropped and counted).
    fn hand_over(&mut self, shard: usize) {
        let Some(mut b) = self.out[shard].take() else {
            return;
        };
        let n = b.items.len();
        if n == 0 {
            self.out[shard] = Some(b);
            return;
        }
        let queue = &self.plane.queues[shard];
        if queue.fetch_add(n, Ordering::AcqRel) >= MAX_QUEUED_DATAGRAMS {
            queue.fetch_sub(n, Ordering::AcqRel);
            for _ in 0..n {
                self.plane.counters.count_overload();
            }
            b.clear();
            self.out[shard] = Some(b);
            return;
        }
        if self.plane.shards[shard]
            .send(ShardMsg::RelayDatagrams(b))
            .is_err()
        {
            queue.fetch_sub(n, Ordering::AcqRel);
            for _ in 0..n {
                self.plane.counters.count_unroutable();
            }
            return;
        }
        if shard == 0 {
            self.plane.shard0.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plane(n: usize) -> (Plane, Vec<mpsc::Receiver<ShardMsg>>, mpsc::Sender<Batch>) {
        let (shards, rxs) = (0..n).map(|_| mpsc::channel()).unzip();
        let (recycle_tx, recycle) = mpsc::channel();
        let plane = Plane {
            shards,
            queues: (0..n).map(|_| Arc::new(AtomicUsize::new(0))).collect(),
            shard0: Arc::new(ShardWaker::new().unwrap()),
            counters: Arc::new(Counters::default()),
            recycle,
        };
        (plane, rxs, recycle_tx)
    }

    fn datagrams(rx: &mpsc::Receiver<ShardMsg>, within: Duration) -> Vec<(SocketAddr, SocketAddr, Vec<u8>)> {
        let mut got = Vec::new();
        let end = std::time::Instant::now() + within;
        while let Some(left) = end.checked_duration_since(std::time::Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(ShardMsg::RelayDatagrams(b)) => {
                    got.extend(b.iter().map(|(f, t, d, _)| (f, t, d.to_vec())));
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        got
    }

    /// Waits (at most 5 s) until `f` holds, or fails.
    fn wait_for(f: impl Fn() -> bool) {
        let end = std::time::Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(std::time::Instant::now() < end, "not reached in 5 s");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn a_link_takes_datagrams_only_from_its_peers_and_hands_them_to_its_shard() {
        let (plane, rxs, _recycle) = plane(2);
        let counters = plane.counters.clone();
        let queues = plane.queues.clone();
        let (io, thread) = spawn(plane).unwrap();
        let link = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let local = link.local_addr().unwrap();
        let owner = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let stranger = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(io.send(Op::Open {
            local,
            socket: link.try_clone().unwrap(),
            shard: 1,
        }));
        // Before the answer names the owner, nothing is taken.
        owner.send_to(b"early", local).unwrap();
        wait_for(|| counters.snapshot().dropped_unknown == 1);
        assert!(io.send(Op::Peers {
            local,
            peers: vec![owner.local_addr().unwrap()],
        }));
        stranger.send_to(b"forged", local).unwrap();
        for i in 0..3u8 {
            owner.send_to(&[i; 12], local).unwrap();
        }
        let mut got = Vec::new();
        while got.len() < 3 {
            let more = datagrams(&rxs[1], Duration::from_millis(200));
            assert!(!more.is_empty(), "the owner's datagrams never came: {got:?}");
            got.extend(more);
        }
        let from = owner.local_addr().unwrap();
        assert_eq!(
            got,
            (0..3u8).map(|i| (from, local, vec![i; 12])).collect::<Vec<_>>()
        );
        assert!(rxs[0].try_recv().is_err(), "nothing for the other shard");
        assert_eq!(
            queues[1].load(Ordering::Acquire),
            3,
            "counted against the shard's bound"
        );
        wait_for(|| counters.snapshot().dropped_unknown == 2);
        // Closed: the socket is no longer read (the thread takes its commands before it reads).
        assert!(io.send(Op::Close { local }));
        owner.send_to(b"late", local).unwrap();
        assert!(datagrams(&rxs[1], Duration::from_millis(200)).is_empty());
        assert!(io.send(Op::Stop));
        thread.join().unwrap();
    }

    #[test]
    fn a_shard_too_far_behind_loses_the_links_datagrams() {
        let (plane, rxs, _recycle) = plane(1);
        let counters = plane.counters.clone();
        plane.queues[0].store(MAX_QUEUED_DATAGRAMS, Ordering::Release);
        let (io, thread) = spawn(plane).unwrap();
        let link = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let local = link.local_addr().unwrap();
        let owner = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        io.send(Op::Open {
            local,
            socket: link.try_clone().unwrap(),
            shard: 0,
        });
        io.send(Op::Peers {
            local,
            peers: vec![owner.local_addr().unwrap()],
        });
        owner.send_to(&[1; 12], local).unwrap();
        wait_for(|| counters.snapshot().dropped_overload == 1);
        assert!(rxs[0].try_recv().is_err());
        io.send(Op::Stop);
        thread.join().unwrap();
    }
}
