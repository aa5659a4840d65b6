//! B0, the machine's ceiling: a plain UDP relay that fans every publisher's packets out to its
//! subscribers, one thread, batched with `recvmmsg`/`sendmmsg`, no SRTP, no parsing beyond the
//! probe header. What a real SFU costs per packet is compared with what this costs.
//!
//! Protocol (IPv4): a datagram `"SUB\0" + publisher (u32 BE)` subscribes its sender to a
//! publisher; a probe ([`crate::packet`]) is forwarded to the subscribers of the publisher it names.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::metrics::ProcTarget;
use crate::packet::Probe;

/// The subscribe request's prefix.
pub const SUBSCRIBE: [u8; 4] = *b"SUB\0";

/// Datagrams read per `recvmmsg`.
const BATCH: usize = 64;
/// Datagrams written per `sendmmsg`.
const SEND_BATCH: usize = 256;
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
        // The thread wakes this often to see the stop flag.
        socket.set_read_timeout(Some(Duration::from_millis(50)))?;
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

fn from_sockaddr(a: &libc::sockaddr_in) -> SocketAddrV4 {
    SocketAddrV4::new(a.sin_addr.s_addr.to_ne_bytes().into(), u16::from_be(a.sin_port))
}

/// One queued datagram: which receive buffer and to whom.
#[derive(Clone, Copy)]
struct Out {
    buf: usize,
    len: usize,
    to: libc::sockaddr_in,
}

fn relay_loop(socket: &UdpSocket, stop: &AtomicBool, forwarded: &AtomicU64) -> io::Result<RelayStats> {
    let fd = socket.as_raw_fd();
    let mut stats = RelayStats::default();
    let mut bufs = vec![[0u8; MTU]; BATCH];
    // SAFETY (for the zeroed values below): these are plain C structs for which all-zero is valid.
    let mut names: Vec<libc::sockaddr_in> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut iovs: Vec<libc::iovec> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut msgs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut subs: HashMap<u32, Vec<libc::sockaddr_in>> = HashMap::new();
    let mut out: Vec<Out> = Vec::with_capacity(SEND_BATCH);
    let mut out_iovs: Vec<libc::iovec> = vec![unsafe { std::mem::zeroed() }; SEND_BATCH];
    let mut out_msgs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; SEND_BATCH];

    while !stop.load(Ordering::Relaxed) {
        for i in 0..BATCH {
            iovs[i] = libc::iovec {
                iov_base: bufs[i].as_mut_ptr().cast(),
                iov_len: MTU,
            };
            msgs[i].msg_hdr.msg_name = (&mut names[i] as *mut libc::sockaddr_in).cast();
            msgs[i].msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            msgs[i].msg_hdr.msg_iov = &mut iovs[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_len = 0;
        }
        // SAFETY: every mmsghdr points into buffers that live across the call.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted => continue,
                _ => return Err(e),
            }
        }
        stats.recv_calls += 1;
        for i in 0..n as usize {
            let len = msgs[i].msg_len as usize;
            let data = &bufs[i][..len];
            if len == 8 && data[..4] == SUBSCRIBE {
                let publisher = u32::from_be_bytes(data[4..8].try_into().expect("4 bytes"));
                let from = from_sockaddr(&names[i]);
                if subs.len() >= MAX_PUBLISHERS && !subs.contains_key(&publisher) {
                    continue;
                }
                let list = subs.entry(publisher).or_default();
                if list.len() < MAX_SUBSCRIBERS_PER_PUBLISHER
                    && !list.iter().any(|a| from_sockaddr(a) == from)
                {
                    list.push(names[i]);
                }
                continue;
            }
            stats.received += 1;
            let Some(probe) = Probe::parse(data) else { continue };
            let Some(list) = subs.get(&probe.publisher) else {
                continue;
            };
            for to in list {
                if out.len() == SEND_BATCH {
                    flush(fd, &bufs, &mut out, &mut out_iovs, &mut out_msgs, &mut stats);
                }
                out.push(Out { buf: i, len, to: *to });
            }
        }
        // The receive buffers are reused by the next recvmmsg: send everything now.
        flush(fd, &bufs, &mut out, &mut out_iovs, &mut out_msgs, &mut stats);
        forwarded.store(stats.forwarded, Ordering::Relaxed);
    }
    Ok(stats)
}

/// Sends the queued datagrams with as few `sendmmsg` calls as the kernel allows.
fn flush(
    fd: libc::c_int,
    bufs: &[[u8; MTU]],
    out: &mut Vec<Out>,
    iovs: &mut [libc::iovec],
    msgs: &mut [libc::mmsghdr],
    stats: &mut RelayStats,
) {
    for (k, o) in out.iter_mut().enumerate() {
        iovs[k] = libc::iovec {
            iov_base: bufs[o.buf].as_ptr() as *mut libc::c_void,
            iov_len: o.len,
        };
        msgs[k].msg_hdr.msg_name = (&mut o.to as *mut libc::sockaddr_in).cast();
        msgs[k].msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        msgs[k].msg_hdr.msg_iov = &mut iovs[k];
        msgs[k].msg_hdr.msg_iovlen = 1;
        msgs[k].msg_len = 0;
    }
    let mut done = 0;
    while done < out.len() {
        // SAFETY: msgs[done..out.len()] point at live buffers and addresses (out is not touched
        // until the loop ends).
        let n = unsafe {
            libc::sendmmsg(
                fd,
                msgs[done..].as_mut_ptr(),
                (out.len() - done) as libc::c_uint,
                0,
            )
        };
        stats.send_calls += 1;
        if n <= 0 {
            // This datagram failed (e.g. a subscriber that went away): skip it, as UDP would.
            done += 1;
            continue;
        }
        stats.forwarded += n as u64;
        done += n as usize;
    }
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
