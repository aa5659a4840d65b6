//! Batched UDP socket IO for Huddle's media plane and load generator: `recvmmsg(2)` and
//! `sendmmsg(2)` with a different destination per datagram, the local address each datagram
//! reached (`IP_PKTINFO`/`IPV6_PKTINFO`) and its kernel receive timestamp (`SO_TIMESTAMPNS`);
//! and [`Waiter`], which sleeps until the socket is readable, a [`Waker`] is woken or a timeout
//! passes (`poll(2)` on the socket and an `eventfd(2)`).
//!
//! Why not quinn-udp, whose shape this follows: its send path takes one `Transmit` to *one*
//! destination (GSO segments of one flow, a `sendmsg` per destination), while an SFU's output
//! goes to a different address per player, which is what `sendmmsg` batches; and its `RecvMeta`
//! carries no receive timestamp, which the media plane uses to shed late RTP and the load
//! generator to split latency at the socket. Its pktinfo and batching on receive would do.
//!
//! All of the crate's `unsafe` is in one private module, `sys`, whose soundness is argued once at
//! its top; the rest of the crate denies `unsafe_code`.
//!
//! Addresses are canonical both ways: on a dual-stack IPv6 socket an IPv4 peer shows up as the
//! IPv4 address (not `::ffff:a.b.c.d`), and IPv4 destinations and sources are written v4-mapped.
//!
//! Sends never wait (`MSG_DONTWAIT`, whatever the socket's mode): a datagram the kernel refuses
//! is dropped and counted, as UDP may drop it anyway. On Linux receives never wait either (they
//! take what is queued, up to [`BATCH`]); the caller waits with [`Waiter::wait`]. Elsewhere (a
//! fallback, not tuned) one datagram per system call, the socket blocking with a short receive
//! timeout set by [`Waiter::wait`], no pktinfo and no timestamps.
#![deny(unsafe_code)]

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
#[cfg(target_os = "linux")]
use std::os::fd::AsFd;
use std::time::Duration;

#[cfg(target_os = "linux")]
mod sys;

/// Datagrams per system call, each way.
pub const BATCH: usize = 64;

/// A datagram to send.
pub trait Outgoing {
    /// Where to.
    fn destination(&self) -> SocketAddr;
    /// The bytes.
    fn payload(&self) -> &[u8];
    /// The local IP to send from (used by a [`SendBatch`] made with `set_source`).
    fn source(&self) -> Option<IpAddr> {
        None
    }
}

#[cfg(feature = "str0m")]
impl Outgoing for str0m::net::Transmit {
    fn destination(&self) -> SocketAddr {
        self.destination
    }
    fn payload(&self) -> &[u8] {
        &self.contents
    }
    /// The local candidate the connection uses, which is the address the client sends to.
    fn source(&self) -> Option<IpAddr> {
        Some(self.source.ip())
    }
}

impl Outgoing for (Option<IpAddr>, SocketAddr, Vec<u8>) {
    fn destination(&self) -> SocketAddr {
        self.1
    }
    fn payload(&self) -> &[u8] {
        &self.2
    }
    fn source(&self) -> Option<IpAddr> {
        self.0
    }
}

impl Outgoing for (SocketAddr, Vec<u8>) {
    fn destination(&self) -> SocketAddr {
        self.0
    }
    fn payload(&self) -> &[u8] {
        &self.1
    }
}

impl Outgoing for (SocketAddr, &[u8]) {
    fn destination(&self) -> SocketAddr {
        self.0
    }
    fn payload(&self) -> &[u8] {
        self.1
    }
}

/// Linux's `TCP_RTO_MIN_US` (6.15; `include/uapi/linux/tcp.h`), not in the libc crate yet.
#[cfg(target_os = "linux")]
const TCP_RTO_MIN_US: libc::c_int = 45;

/// Linux's `TCP_RTO_MAX_MS` (6.15; `include/uapi/linux/tcp.h`), not in the libc crate yet.
#[cfg(target_os = "linux")]
const TCP_RTO_MAX_MS: libc::c_int = 44;

/// The ceiling of the retransmission timeout [`set_thin_stream`] sets, instead of Linux's 120 s
/// (`TCP_RTO_MAX`); the kernel takes nothing lower (1 s to 120 s). On a lossy path a connection
/// whose handshake ACK was lost takes its first RTT sample from the data that completed it (a
/// 0.5 s sample on a 100 ms path: an RTO near 1.4 s), and RTOs double from there; interop calls
/// at 16 and 30 % loss waited 1.3–2.6 s for one lost WebSocket upgrade answer
/// (docs/quality.md, "Interop under loss").
pub const THIN_STREAM_RTO_MAX: Duration = Duration::from_secs(1);

/// The floor of the retransmission timeout [`set_thin_stream`] sets, instead of Linux's 200 ms
/// (`TCP_RTO_MIN`). The RTO stays SRTT + max(4·RTTVAR, this): a path whose RTT varies (or a
/// peer that delays its ACKs) still gets its margin from the variance the kernel measures.
pub const THIN_STREAM_RTO_MIN: Duration = Duration::from_millis(50);

/// Loss recovery for a TCP connection carrying small, latency-bound messages (Huddle's
/// signaling), on the data this end sends:
///
/// - `TCP_THIN_LINEAR_TIMEOUTS`: while fewer than four segments are out, the first six RTOs
///   do not double (`tcp_retransmit_timer` in `net/ipv4/tcp_timer.c`;
///   `Documentation/networking/tcp-thin.rst`). Linux ≥ 2.6.34.
/// - `TCP_RTO_MIN_US` = [`THIN_STREAM_RTO_MIN`]: a lost segment is sent again after
///   SRTT + 50 ms rather than SRTT + 200 ms, and the tail probe of a lone segment waits
///   2·SRTT + 50 ms rather than 2·SRTT + 200 ms (`tcp_schedule_loss_probe`). Linux ≥ 6.15;
///   older kernels refuse it (`ENOPROTOOPT`) and keep their 200 ms.
/// - `TCP_RTO_MAX_MS` = [`THIN_STREAM_RTO_MAX`]: no RTO longer than 1 s, whatever the RTT
///   estimate or the backoff (`tcp_bound_rto`, `tcp_retransmit_timer`). Linux ≥ 6.15, as above.
///
/// All are tried; the first refusal is returned (the caller logs it: the connection works
/// either way). Elsewhere than Linux, nothing is set.
#[cfg(target_os = "linux")]
pub fn set_thin_stream(socket: &impl AsFd) -> io::Result<()> {
    let fd = socket.as_fd();
    let thin = sys::set_int_option(fd, libc::IPPROTO_TCP, libc::TCP_THIN_LINEAR_TIMEOUTS, 1);
    let micros = THIN_STREAM_RTO_MIN.as_micros() as libc::c_int;
    let rto_min = sys::set_int_option(fd, libc::IPPROTO_TCP, TCP_RTO_MIN_US, micros);
    let millis = THIN_STREAM_RTO_MAX.as_millis() as libc::c_int;
    let rto_max = sys::set_int_option(fd, libc::IPPROTO_TCP, TCP_RTO_MAX_MS, millis);
    thin.and(rto_min).and(rto_max)
}

/// Elsewhere the kernel's defaults stay.
#[cfg(not(target_os = "linux"))]
pub fn set_thin_stream<S>(_socket: &S) -> io::Result<()> {
    Ok(())
}

/// What [`set_thin_stream`] sets, as the kernel reports it on a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThinStream {
    /// `TCP_THIN_LINEAR_TIMEOUTS` is on.
    pub linear_timeouts: bool,
    /// The socket's `TCP_RTO_MIN_US`; `None` on a kernel without the option.
    pub rto_min: Option<Duration>,
    /// The socket's `TCP_RTO_MAX_MS`; `None` on a kernel without the option.
    pub rto_max: Option<Duration>,
}

impl ThinStream {
    /// Whether these are the options [`set_thin_stream`] asks for: linear timeouts, and the RTO
    /// floor and ceiling where the kernel has the options (stored in jiffies, so rounded up by
    /// less than one tick: 52 ms at 250 Hz).
    pub fn is_as_set(&self) -> bool {
        let near = |got: Duration, want: Duration| got >= want && got < want + Duration::from_millis(10);
        self.linear_timeouts
            && self.rto_min.is_none_or(|floor| near(floor, THIN_STREAM_RTO_MIN))
            && self
                .rto_max
                .is_none_or(|ceiling| near(ceiling, THIN_STREAM_RTO_MAX))
    }
}

/// Reads the options of [`set_thin_stream`] back from `socket`.
#[cfg(target_os = "linux")]
pub fn thin_stream(socket: &impl AsFd) -> io::Result<ThinStream> {
    let fd = socket.as_fd();
    let linear_timeouts = sys::int_option(fd, libc::IPPROTO_TCP, libc::TCP_THIN_LINEAR_TIMEOUTS)? != 0;
    let rto_min = match sys::int_option(fd, libc::IPPROTO_TCP, TCP_RTO_MIN_US) {
        Ok(us) => Some(Duration::from_micros(us.max(0) as u64)),
        Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => None,
        Err(e) => return Err(e),
    };
    let rto_max = match sys::int_option(fd, libc::IPPROTO_TCP, TCP_RTO_MAX_MS) {
        Ok(ms) => Some(Duration::from_millis(ms.max(0) as u64)),
        Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => None,
        Err(e) => return Err(e),
    };
    Ok(ThinStream {
        linear_timeouts,
        rto_min,
        rto_max,
    })
}

/// Asks the kernel to stamp each datagram received on `socket` with its arrival time
/// (`SO_TIMESTAMPNS`, the realtime clock), which [`Received::at`] then reports.
///
/// The kernel turns stamping on for the whole stack lazily (a static key switched from a work
/// queue) when the first socket asks: datagrams received before that are stamped when they are
/// read instead, so they look fresh.
#[cfg(target_os = "linux")]
pub fn enable_rx_timestamps(socket: &impl AsFd) -> io::Result<()> {
    sys::set_int_option(socket.as_fd(), libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1)
}

/// Elsewhere datagrams carry no arrival time.
#[cfg(not(target_os = "linux"))]
pub fn enable_rx_timestamps(_socket: &UdpSocket) -> io::Result<()> {
    Ok(())
}

/// Asks the kernel to tell, for each datagram received on `socket`, the local IP it was sent to
/// (`IP_PKTINFO`; on an IPv6 socket `IPV6_RECVPKTINFO`, which covers the IPv4 datagrams of a
/// dual-stack socket too), which [`Received::to`] then reports.
#[cfg(target_os = "linux")]
pub fn enable_pktinfo(socket: &UdpSocket) -> io::Result<()> {
    if socket.local_addr()?.is_ipv6() {
        sys::set_int_option(socket.as_fd(), libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1)
    } else {
        sys::set_int_option(socket.as_fd(), libc::IPPROTO_IP, libc::IP_PKTINFO, 1)
    }
}

/// Elsewhere datagrams carry no destination.
#[cfg(not(target_os = "linux"))]
pub fn enable_pktinfo(_socket: &UdpSocket) -> io::Result<()> {
    Ok(())
}

/// ns since the Unix epoch of a `timespec`, if it is after the epoch and fits.
pub(crate) fn timespec_ns(sec: i64, nsec: i64) -> Option<u64> {
    u64::try_from(sec)
        .ok()?
        .checked_mul(1_000_000_000)?
        .checked_add(u64::try_from(nsec).ok()?)
}

/// How long ago (µs, by the realtime clock) a datagram stamped `at` (ns since the Unix epoch)
/// arrived; `None` if the stamp is in the future (the clock was set back).
pub fn age_us(at: u64) -> Option<u64> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_nanos();
    now.checked_sub(u128::from(at))
        .map(|d| u64::try_from(d / 1_000).unwrap_or(u64::MAX))
}

/// One received datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received<'a> {
    /// The sender (canonical: an IPv4 peer of a dual-stack socket is an IPv4 address), `None` for
    /// an address family other than IPv4/IPv6.
    pub from: Option<SocketAddr>,
    /// The local IP it was sent to (canonical), when [`enable_pktinfo`] was called on the socket.
    pub to: Option<IpAddr>,
    /// The bytes (at most the buffer's size).
    pub bytes: &'a [u8],
    /// The datagram was longer than the buffer and lost its tail.
    pub truncated: bool,
    /// The kernel's arrival time in ns since the Unix epoch, when [`enable_rx_timestamps`] was
    /// called on the socket.
    pub at: Option<u64>,
}

/// One datagram (never waiting: `WouldBlock` when there is none), into `buf`: for a client
/// with one socket per connection, where a [`RecvBatch`]'s 64 slots would be memory wasted.
#[cfg(target_os = "linux")]
pub fn recv_one<'a>(socket: &impl AsFd, buf: &'a mut [u8]) -> io::Result<Received<'a>> {
    let m = sys::recv_one(socket.as_fd(), buf)?;
    Ok(Received {
        from: m.from,
        to: m.to,
        bytes: &buf[..m.len.min(buf.len())],
        truncated: m.truncated,
        at: m.at,
    })
}

/// Up to [`BATCH`] received datagrams, in buffers reused from call to call.
pub struct RecvBatch {
    /// `BATCH` slots of `size` bytes.
    buf: Vec<u8>,
    size: usize,
    /// What the kernel said about each datagram of the last receive, in slot order.
    #[cfg(target_os = "linux")]
    got: Vec<sys::Meta>,
    #[cfg(target_os = "linux")]
    slots: sys::RecvSlots,
    #[cfg(not(target_os = "linux"))]
    got: Option<(SocketAddr, usize, bool)>,
}

impl RecvBatch {
    /// Room for [`BATCH`] datagrams of at most `size` bytes (longer ones are truncated).
    ///
    /// # Panics
    /// If `size` is 0.
    pub fn new(size: usize) -> RecvBatch {
        assert!(size > 0, "a datagram slot holds at least a byte");
        RecvBatch {
            buf: vec![0; BATCH * size],
            size,
            #[cfg(target_os = "linux")]
            got: Vec::with_capacity(BATCH),
            #[cfg(target_os = "linux")]
            slots: sys::RecvSlots::new(),
            #[cfg(not(target_os = "linux"))]
            got: None,
        }
    }

    /// Receives the datagrams queued in the socket, up to [`BATCH`] (`WouldBlock`/`TimedOut` when
    /// there are none). Returns how many datagrams the batch now holds.
    #[cfg(target_os = "linux")]
    pub fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        self.got.clear();
        self.slots
            .recv(socket.as_fd(), &mut self.buf, self.size, &mut self.got)?;
        Ok(self.got.len())
    }

    /// Receives one datagram (the fallback elsewhere).
    #[cfg(not(target_os = "linux"))]
    pub fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        self.got = None;
        let (len, from) = socket.recv_from(&mut self.buf[..self.size])?;
        let from = SocketAddr::new(from.ip().to_canonical(), from.port());
        self.got = Some((from, len, false));
        Ok(1)
    }

    /// The datagrams received by the last [`RecvBatch::recv`].
    #[cfg(target_os = "linux")]
    pub fn iter(&self) -> impl Iterator<Item = Received<'_>> + '_ {
        self.got.iter().enumerate().map(|(i, m)| {
            let start = i * self.size;
            Received {
                from: m.from,
                to: m.to,
                bytes: &self.buf[start..start + m.len.min(self.size)],
                truncated: m.truncated,
                at: m.at,
            }
        })
    }

    /// The datagram received by the last [`RecvBatch::recv`].
    #[cfg(not(target_os = "linux"))]
    pub fn iter(&self) -> impl Iterator<Item = Received<'_>> + '_ {
        self.got.iter().map(|&(from, len, truncated)| Received {
            from: Some(from),
            to: None,
            bytes: &self.buf[..len],
            truncated,
            at: None,
        })
    }
}

/// Sends batches of datagrams, with the address storage reused from call to call.
pub struct SendBatch {
    #[cfg(target_os = "linux")]
    slots: sys::SendSlots,
    /// The socket is IPv6: IPv4 destinations and sources are written v4-mapped.
    v6: bool,
    /// Send each datagram from its [`Outgoing::source`].
    set_source: bool,
    /// System calls made so far.
    calls: u64,
}

impl SendBatch {
    /// A sender for `socket`; with `set_source`, each datagram leaves from its
    /// [`Outgoing::source`] (for a socket bound to a wildcard address: a reply leaves from the
    /// address its request reached, where the kernel's routing would otherwise pick one).
    pub fn new(socket: &UdpSocket, set_source: bool) -> SendBatch {
        SendBatch {
            #[cfg(target_os = "linux")]
            slots: sys::SendSlots::new(),
            v6: socket.local_addr().is_ok_and(|a| a.is_ipv6()),
            set_source,
            calls: 0,
        }
    }

    /// Sends `datagrams` (one system call per [`BATCH`] datagrams when the kernel takes them
    /// all) without waiting. Returns how many the kernel refused (full buffer, unreachable
    /// address, …): those are dropped.
    pub fn send<D: Outgoing>(&mut self, socket: &UdpSocket, datagrams: &[D]) -> usize {
        datagrams
            .chunks(BATCH)
            .map(|chunk| self.send_chunk(socket, chunk))
            .sum()
    }

    /// System calls made so far.
    pub fn calls(&self) -> u64 {
        self.calls
    }

    #[cfg(target_os = "linux")]
    fn send_chunk<D: Outgoing>(&mut self, socket: &UdpSocket, chunk: &[D]) -> usize {
        let mut refused = 0;
        let (v6, set_source) = (self.v6, self.set_source);
        let datagrams = chunk.iter().map(|d| {
            let source = if set_source { d.source() } else { None };
            (for_socket(v6, d.destination()), source, d.payload())
        });
        let calls = self.slots.send(socket.as_fd(), self.v6, datagrams, |i, e| {
            tracing::debug!(error = %e, to = %chunk[i].destination(), "UDP send failed: dropped");
            refused += 1;
        });
        self.calls += calls as u64;
        refused
    }

    #[cfg(not(target_os = "linux"))]
    fn send_chunk<D: Outgoing>(&mut self, socket: &UdpSocket, chunk: &[D]) -> usize {
        let mut refused = 0;
        for d in chunk {
            self.calls += 1;
            if let Err(e) = socket.send_to(d.payload(), for_socket(self.v6, d.destination())) {
                tracing::debug!(error = %e, to = %d.destination(), "UDP send failed: dropped");
                refused += 1;
            }
        }
        refused
    }
}

/// `addr` as a socket of the family `v6` wants it (IPv4 v4-mapped on an IPv6 socket).
fn for_socket(v6: bool, addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(a) if v6 => SocketAddr::new(a.ip().to_ipv6_mapped().into(), a.port()),
        a => a,
    }
}

/// Wakes a [`Waiter`] from another thread (an `eventfd` on Linux).
#[derive(Debug)]
pub struct Waker {
    #[cfg(target_os = "linux")]
    fd: std::os::fd::OwnedFd,
}

impl Waker {
    /// A new waker.
    pub fn new() -> io::Result<Waker> {
        Ok(Waker {
            #[cfg(target_os = "linux")]
            fd: sys::eventfd()?,
        })
    }

    /// Makes the waiter's current or next [`Waiter::wait`] return at once.
    pub fn wake(&self) {
        #[cfg(target_os = "linux")]
        sys::eventfd_add(self.fd.as_fd());
    }
}

/// Sleeps until a socket has a datagram, a [`Waker`] is woken or a timeout passes.
pub struct Waiter {
    waker: std::sync::Arc<Waker>,
}

impl Waiter {
    /// A waiter that `waker` wakes.
    pub fn new(waker: std::sync::Arc<Waker>) -> Waiter {
        Waiter { waker }
    }

    /// Waits for one of the three (at most `timeout`, rounded up to milliseconds); clears the
    /// waker.
    #[cfg(target_os = "linux")]
    pub fn wait(&mut self, socket: &UdpSocket, timeout: std::time::Duration) -> io::Result<()> {
        if sys::poll2(socket.as_fd(), self.waker.fd.as_fd(), timeout)? {
            sys::eventfd_clear(self.waker.fd.as_fd());
        }
        Ok(())
    }

    /// Sets the socket's receive timeout (at most 10 ms): the next receive waits.
    #[cfg(not(target_os = "linux"))]
    pub fn wait(&mut self, socket: &UdpSocket, timeout: std::time::Duration) -> io::Result<()> {
        let _ = &self.waker;
        let t = timeout.clamp(
            std::time::Duration::from_millis(1),
            std::time::Duration::from_millis(10),
        );
        socket.set_read_timeout(Some(t))
    }
}
