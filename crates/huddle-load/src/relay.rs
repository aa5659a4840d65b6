//! B0, the machine's ceiling: a plain UDP relay that fans every publisher's packets out to its
//! subscribers, one thread, batched with `recvmmsg`/`sendmmsg` (`huddle-udp`, as the server), no SRTP, no parsing beyond the
//! probe header. What a real SFU costs per packet is compared with what this costs.
//!
//! Protocol (IPv4): a datagram `"SUB\0" + publisher (u32 BE)` subscribes its sender to a
//! publisher; a probe ([`crate::packet`]) is forwarded to the subscribers of the publisher it names.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use huddle_udp::{RecvBatch, SendBatch, Waiter, Waker};

use crate::metrics::ProcTarget;
use crate::packet::Probe;

/// The subscribe request's prefix.
pub const SUBSCRIBE: [u8; 4] = *b"SUB\0";

/// Datagrams queued before they are sent (`huddle_udp` sends them `BATCH` per `sendmmsg`).
const SEND_BATCH: usize = 256;
/// How often the thread looks at the stop flag when no datagram comes.
const STOP_CHECK: Duration = Duration::from_millis(50);
/// Largest datagram relayed.
const MTU: usize = 1500;
/// Bounds on the relay's table.
const MAX_PUBLISHERS: usize = 100_000;
const MAX_SUBSCRIBERS_PER_PUBLISHER: usize = 10_000;
/// Kernel socket buffers asked for (capped by net.core.{r,w}mem_max unless root).
const SOCKET_BUFFER: usize = 8 << 20;

/// What the relay did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RelayStats {
    /// Datagrams read.
    pub received: u64,
    /// Datagrams handed to the kernel for sending.
    pub forwarded: u64,
    /// `sendmmsg` calls.
    pub send_calls: u64,
    /// `recvmmsg` calls that returned data.
    pub recv_calls: u64,
}

/// A running relay thread; [`Relay::stop`] ends it.
pub struct Relay {
    addr: SocketAddr,
    thread_target: ProcTarget,
    stop: Arc<AtomicBool>,
    forwarded: Arc<AtomicU64>,
    thread: Option<JoinHandle<io::Result<RelayStats>>>,
}

impl Relay {
    /// Binds `addr` (IPv4; port 0 for any) and starts the relay thread.
    pub fn start(addr: SocketAddr) -> io::Result<Relay> {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
        let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
        let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
        socket.bind(&addr.into())?;
        let socket: UdpSocket = socket.into();
        let addr = socket.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let forwarded = Arc::new(AtomicU64::new(0));
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (stop2, fwd2) = (stop.clone(), forwarded.clone());
        let thread = std::thread::Builder::new()
            .name("b0-relay".into())
            .spawn(move || {
                let _ = tid_tx.send(ProcTarget::this_thread());
                relay_loop(&socket, &stop2, &fwd2)
            })?;
        let thread_target = tid_rx
            .recv()
            .map_err(|_| io::Error::other("relay thread died at start"))?;
        Ok(Relay {
            addr,
            thread_target,
            stop,
            forwarded,
            thread: Some(thread),
        })
    }

    /// The relay's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The relay thread, for sampling its CPU time.
    pub fn proc_target(&self) -> ProcTarget {
        self.thread_target
    }

    /// Datagrams forwarded so far.
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::Relaxed)
    }

    /// Stops the thread and returns what it did.
    pub fn stop(mut self) -> io::Result<RelayStats> {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take().expect("running");
        thread
            .join()
            .map_err(|_| io::Error::other("relay thread panicked"))?
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn relay_loop(socket: &UdpSocket, stop: &AtomicBool, forwarded: &AtomicU64) -> io::Result<RelayStats> {
    let mut stats = RelayStats::default();
    let mut batch = RecvBatch::new(MTU);
    let mut sender = SendBatch::new(socket, false);
    // Nothing wakes the waiter but datagrams and the timeout: the stop flag is read that often.
    let mut waiter = Waiter::new(Arc::new(Waker::new()?));
    let mut subs: HashMap<u32, Vec<SocketAddrV4>> = HashMap::new();

    while !stop.load(Ordering::Relaxed) {
        match batch.recv(socket) {
            Ok(_) => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                waiter.wait(socket, STOP_CHECK)?;
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        stats.recv_calls += 1;
        // Borrows the receive buffers: one small allocation per batch, not per datagram.
        let mut out: Vec<(SocketAddr, &[u8])> = Vec::with_capacity(SEND_BATCH);
        for d in batch.iter() {
            let Some(SocketAddr::V4(from)) = d.from else {
                continue;
            };
            if d.bytes.len() == 8 && d.bytes[..4] == SUBSCRIBE {
                let publisher = u32::from_be_bytes(d.bytes[4..8].try_into().expect("4 bytes"));
                if subs.len() >= MAX_PUBLISHERS && !subs.contains_key(&publisher) {
                    continue;
                }
                let list = subs.entry(publisher).or_default();
                if list.len() < MAX_SUBSCRIBERS_PER_PUBLISHER && !list.contains(&from) {
                    list.push(from);
                }
                continue;
            }
            stats.received += 1;
            let Some(probe) = Probe::parse(d.bytes) else {
                continue;
            };
            let Some(list) = subs.get(&probe.publisher) else {
                continue;
            };
            out.extend(list.iter().map(|to| (SocketAddr::V4(*to), d.bytes)));
            if out.len() >= SEND_BATCH {
                send(socket, &mut sender, &mut out, &mut stats);
            }
        }
        // The receive buffers are reused by the next receive: send everything now.
        send(socket, &mut sender, &mut out, &mut stats);
        forwarded.store(stats.forwarded, Ordering::Relaxed);
    }
    Ok(stats)
}

/// Sends the queued datagrams; a refused one (e.g. a subscriber that went away) is skipped, as
/// UDP would.
fn send(
    socket: &UdpSocket,
    sender: &mut SendBatch,
    out: &mut Vec<(SocketAddr, &[u8])>,
    stats: &mut RelayStats,
) {
    let refused = sender.send(socket, out);
    stats.forwarded += (out.len() - refused) as u64;
    stats.send_calls = sender.calls();
    out.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relays_to_subscribers() {
        let relay = Relay::start("127.0.0.1:0".parse().unwrap()).unwrap();
        let to = relay.local_addr();
        let subs: Vec<UdpSocket> = (0..3).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
        for (i, s) in subs.iter().enumerate() {
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut req = [0u8; 8];
            req[..4].copy_from_slice(&SUBSCRIBE);
            // Two subscribe to publisher 7, one to publisher 8.
            req[4..].copy_from_slice(&(if i < 2 { 7u32 } else { 8 }).to_be_bytes());
            s.send_to(&req, to).unwrap();
            s.send_to(&req, to).unwrap(); // a repeat is not a second subscription
        }
        std::thread::sleep(Duration::from_millis(100));
        let publisher = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut buf = [0u8; 200];
        for seq in 0..10 {
            let n = Probe {
                publisher: 7,
                seq,
                sent_us: 0,
            }
            .write(&mut buf);
            publisher.send_to(&buf[..n], to).unwrap();
        }
        for s in &subs[..2] {
            for seq in 0..10 {
                let n = s.recv(&mut buf).unwrap();
                assert_eq!(Probe::parse(&buf[..n]).unwrap().seq, seq);
            }
        }
        subs[2]
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        assert!(subs[2].recv(&mut buf).is_err());
        let stats = relay.stop().unwrap();
        assert_eq!(stats.received, 10);
        assert_eq!(stats.forwarded, 20);
    }
}
