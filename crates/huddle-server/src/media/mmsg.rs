//! Batched UDP socket IO for the media plane: `recvmmsg(2)` and `sendmmsg(2)` on Linux, one
//! datagram per system call elsewhere; and [`Waiter`], which sleeps until the socket is readable,
//! a [`Waker`] is woken or a timeout passes (`poll(2)` on the socket and an `eventfd(2)`).
//!
//! Written by hand on `libc` because neither socket2 nor tokio exposes the mmsg calls, and
//! quinn-udp batches only GSO segments to *one* destination, while the SFU's output goes to a
//! different address per player. This is the only file of the crate with `unsafe` code; its API is
//! safe: the buffers and the address storage are owned by [`RecvBatch`] / [`SendBatch`], and every
//! pointer handed to the kernel points into them (or into the caller's slices) for the duration of
//! the call only.
//!
//! Addresses are canonical both ways: on a dual-stack IPv6 socket an IPv4 peer shows up as the
//! IPv4 address (not `::ffff:a.b.c.d`), and IPv4 destinations are written v4-mapped. With
//! [`enable_pktinfo`] each received datagram also reports the local IP it was sent to
//! (`IP_PKTINFO` / `IPV6_PKTINFO`), and a [`SendBatch`] made with `set_source` sends each datagram
//! from its [`Outgoing::source`] the same way: on a host with several addresses, a reply leaves
//! from the address its request reached (the kernel's routing would otherwise pick one).
//!
//! Sends never wait (`MSG_DONTWAIT`, whatever the socket's mode): a datagram the kernel refuses
//! is dropped and counted by the caller, as UDP may drop it anyway. On Linux receives never wait
//! either (they take what is queued, up to [`BATCH`]); the caller waits with [`Waiter::wait`].
//! Elsewhere (a fallback, not tuned) the socket is blocking with a short receive timeout set by
//! [`Waiter::wait`], and wakers are not needed: a receive never blocks longer than 10 ms.

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};

/// Datagrams per system call, each way.
pub(crate) const BATCH: usize = 64;

/// A datagram to send.
pub(crate) trait Outgoing {
    /// Where to.
    fn destination(&self) -> SocketAddr;
    /// The bytes.
    fn payload(&self) -> &[u8];
    /// The local IP to send from (used by a [`SendBatch`] made with `set_source`).
    fn source(&self) -> Option<IpAddr> {
        None
    }
}

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

/// Sets an integer socket option.
#[cfg(target_os = "linux")]
fn set_int_option(
    socket: &UdpSocket,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the option value is a c_int that outlives the call, and its size is passed.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Asks the kernel to stamp each datagram received on `socket` with its arrival time
/// (`SO_TIMESTAMPNS`, the realtime clock), which [`RecvBatch`] then reports.
///
/// The kernel turns stamping on for the whole stack lazily (a static key switched from a work
/// queue) when the first socket asks: datagrams received before that are stamped when they are
/// read instead, so they look fresh. For the media plane that only means that late RTP is not
/// shed in the first moments after start, before any client could have negotiated media.
#[cfg(target_os = "linux")]
pub(crate) fn enable_rx_timestamps(socket: &UdpSocket) -> io::Result<()> {
    set_int_option(socket, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1)
}

/// Elsewhere datagrams carry no arrival time.
#[cfg(not(target_os = "linux"))]
pub(crate) fn enable_rx_timestamps(_socket: &UdpSocket) -> io::Result<()> {
    Ok(())
}

/// Asks the kernel to tell, for each datagram received on `socket`, the local IP it was sent to
/// (`IP_PKTINFO`; on an IPv6 socket `IPV6_RECVPKTINFO`, which covers the IPv4 datagrams of a
/// dual-stack socket too, as v4-mapped addresses), which [`RecvBatch`] then reports.
#[cfg(target_os = "linux")]
pub(crate) fn enable_pktinfo(socket: &UdpSocket) -> io::Result<()> {
    if socket.local_addr()?.is_ipv6() {
        set_int_option(socket, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1)
    } else {
        set_int_option(socket, libc::IPPROTO_IP, libc::IP_PKTINFO, 1)
    }
}

/// Elsewhere datagrams carry no destination (the media plane then takes its first candidate).
#[cfg(not(target_os = "linux"))]
pub(crate) fn enable_pktinfo(_socket: &UdpSocket) -> io::Result<()> {
    Ok(())
}

/// Room for the control messages of a received datagram: `SCM_TIMESTAMPNS` (a `timespec`, 32
/// bytes with its header) and `IP_PKTINFO` or `IPV6_PKTINFO` (32 or 40), with the kernel's
/// alignment.
#[cfg(target_os = "linux")]
const CONTROL: usize = 128;

/// Room for the one control message of a datagram sent with a source (`IPV6_PKTINFO`: 40 bytes).
#[cfg(target_os = "linux")]
const SEND_CONTROL: usize = 64;

/// One received datagram.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Received<'a> {
    /// The sender (canonical: an IPv4 peer of a dual-stack socket is an IPv4 address), `None` for
    /// an address family other than IPv4/IPv6.
    pub(crate) from: Option<SocketAddr>,
    /// The local IP it was sent to (canonical), when [`enable_pktinfo`] was called on the socket.
    pub(crate) to: Option<IpAddr>,
    /// The bytes (truncated to the batch's datagram size).
    pub(crate) bytes: &'a [u8],
    /// The kernel's arrival time in ns since the Unix epoch, when [`enable_rx_timestamps`] was
    /// called on the socket.
    pub(crate) at: Option<u64>,
}

/// A received slot: sender, destination, length, arrival time (see [`Received`]).
type Slot = (Option<SocketAddr>, Option<IpAddr>, usize, Option<u64>);

/// Up to [`BATCH`] received datagrams, in buffers reused from call to call.
pub(crate) struct RecvBatch {
    /// `BATCH` slots of `size` bytes.
    buf: Vec<u8>,
    size: usize,
    /// Per slot: the sender (`None`: an address family other than IPv4/IPv6), the local IP it
    /// was sent to (when the socket reports it), the length and the kernel's arrival time (ns
    /// since the Unix epoch) when the socket stamps datagrams.
    got: Vec<Slot>,
    #[cfg(target_os = "linux")]
    names: Vec<libc::sockaddr_storage>,
    /// Per slot: room for the control messages (arrival time, destination).
    #[cfg(target_os = "linux")]
    controls: Vec<[u64; CONTROL / 8]>,
}

impl RecvBatch {
    /// Room for [`BATCH`] datagrams of at most `size` bytes (longer ones are truncated).
    pub(crate) fn new(size: usize) -> RecvBatch {
        RecvBatch {
            buf: vec![0; BATCH * size],
            size,
            got: Vec::with_capacity(BATCH),
            #[cfg(target_os = "linux")]
            // SAFETY: sockaddr_storage is plain data; all zeroes is a valid (AF_UNSPEC) value.
            names: vec![unsafe { std::mem::zeroed() }; BATCH],
            #[cfg(target_os = "linux")]
            controls: vec![[0; CONTROL / 8]; BATCH],
        }
    }

    /// Receives the datagrams queued in the socket, up to [`BATCH`] (`WouldBlock`/`TimedOut` when
    /// there are none; see the module documentation for other systems). Returns how many
    /// datagrams the batch now holds.
    pub(crate) fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        self.got.clear();
        self.recv_inner(socket)?;
        Ok(self.got.len())
    }

    /// The datagrams received by the last [`RecvBatch::recv`].
    pub(crate) fn iter(&self) -> impl Iterator<Item = Received<'_>> + '_ {
        self.got
            .iter()
            .enumerate()
            .map(|(i, (from, to, len, at))| Received {
                from: *from,
                to: *to,
                bytes: &self.buf[i * self.size..i * self.size + len],
                at: *at,
            })
    }

    #[cfg(target_os = "linux")]
    fn recv_inner(&mut self, socket: &UdpSocket) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY (zeroed): iovec and mmsghdr are plain data; null pointers and zero lengths are
        // valid values, and every one used is filled in below.
        let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for ((((chunk, name), control), iov), msg) in self
            .buf
            .chunks_exact_mut(self.size)
            .zip(self.names.iter_mut())
            .zip(self.controls.iter_mut())
            .zip(iovs.iter_mut())
            .zip(msgs.iter_mut())
        {
            iov.iov_base = chunk.as_mut_ptr().cast();
            iov.iov_len = chunk.len();
            msg.msg_hdr.msg_name = (name as *mut libc::sockaddr_storage).cast();
            msg.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            msg.msg_hdr.msg_iov = iov;
            msg.msg_hdr.msg_iovlen = 1;
            msg.msg_hdr.msg_control = control.as_mut_ptr().cast();
            msg.msg_hdr.msg_controllen = CONTROL as _;
        }
        let n = loop {
            // SAFETY: each mmsghdr points to one iovec over its own `size`-byte slot of `buf`, to
            // its own sockaddr_storage and to its own control buffer, all of which outlive the
            // call; the kernel writes at most `iov_len` / `msg_namelen` / `msg_controllen` bytes
            // into them.
            let n = unsafe {
                libc::recvmmsg(
                    socket.as_raw_fd(),
                    msgs.as_mut_ptr(),
                    BATCH as libc::c_uint,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if n >= 0 {
                break n as usize;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        };
        for (msg, name) in msgs.iter().zip(&self.names).take(n) {
            let len = (msg.msg_len as usize).min(self.size);
            let (at, to) = control(&msg.msg_hdr);
            self.got.push((from_storage(name), to, len, at));
        }
        Ok(())
    }

    #[cfg(not(target_os = "linux"))]
    fn recv_inner(&mut self, socket: &UdpSocket) -> io::Result<()> {
        let (len, from) = socket.recv_from(&mut self.buf[..self.size])?;
        let from = SocketAddr::new(from.ip().to_canonical(), from.port());
        self.got.push((Some(from), None, len, None));
        Ok(())
    }
}

/// The `SCM_TIMESTAMPNS` arrival time (ns since the Unix epoch) and the `IP_PKTINFO` /
/// `IPV6_PKTINFO` destination (canonical) in a received message's control data.
#[cfg(target_os = "linux")]
fn control(hdr: &libc::msghdr) -> (Option<u64>, Option<IpAddr>) {
    let (mut at, mut to) = (None, None);
    // SAFETY: `hdr` was filled in by recvmmsg: its control pointer and length describe the
    // slot's control buffer, which the CMSG macros walk without leaving it. Each message's data
    // is read only when its length covers the structure, and read unaligned.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(hdr);
        while !c.is_null() {
            let len = (*c).cmsg_len as usize;
            let fits = |n: usize| len >= libc::CMSG_LEN(n as u32) as usize;
            match ((*c).cmsg_level, (*c).cmsg_type) {
                (libc::SOL_SOCKET, libc::SCM_TIMESTAMPNS) if fits(size_of::<libc::timespec>()) => {
                    let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                    at = u64::try_from(ts.tv_sec)
                        .ok()
                        .and_then(|s| s.checked_mul(1_000_000_000))
                        .and_then(|ns| ns.checked_add(u64::try_from(ts.tv_nsec).ok()?));
                }
                (libc::IPPROTO_IP, libc::IP_PKTINFO) if fits(size_of::<libc::in_pktinfo>()) => {
                    let info: libc::in_pktinfo = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                    to = Some(IpAddr::from(u32::from_be(info.ipi_addr.s_addr).to_be_bytes()));
                }
                (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) if fits(size_of::<libc::in6_pktinfo>()) => {
                    let info: libc::in6_pktinfo = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                    to = Some(IpAddr::from(info.ipi6_addr.s6_addr).to_canonical());
                }
                _ => {}
            }
            c = libc::CMSG_NXTHDR(hdr, c);
        }
    }
    (at, to)
}

/// Writes an `IP_PKTINFO` (IPv4 socket) or `IPV6_PKTINFO` (IPv6 socket; an IPv4 source
/// v4-mapped) control message asking to send from `source` into `buf`, and points `hdr` at it.
/// Nothing for an IPv6 source on an IPv4 socket (the kernel picks the source then).
#[cfg(target_os = "linux")]
fn set_source(source: IpAddr, v6_socket: bool, buf: &mut [u64; SEND_CONTROL / 8], hdr: &mut libc::msghdr) {
    let v6 = match (source, v6_socket) {
        (IpAddr::V6(_), false) => return,
        (_, true) => true,
        (IpAddr::V4(_), false) => false,
    };
    hdr.msg_control = buf.as_mut_ptr().cast();
    hdr.msg_controllen = SEND_CONTROL as _;
    // SAFETY: `hdr` points at `buf` (SEND_CONTROL bytes, 8-aligned), which holds a cmsghdr and
    // either pktinfo structure (CMSG_SPACE of in6_pktinfo is 40 bytes), so CMSG_FIRSTHDR is not
    // null and the header and data written stay inside it; the data is written unaligned.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(hdr);
        if v6 {
            let octets = match source {
                IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
                IpAddr::V6(a) => a.octets(),
            };
            (*c).cmsg_level = libc::IPPROTO_IPV6;
            (*c).cmsg_type = libc::IPV6_PKTINFO;
            (*c).cmsg_len = libc::CMSG_LEN(size_of::<libc::in6_pktinfo>() as u32) as _;
            let info = libc::in6_pktinfo {
                ipi6_addr: libc::in6_addr { s6_addr: octets },
                ipi6_ifindex: 0,
            };
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast(), info);
            hdr.msg_controllen = libc::CMSG_SPACE(size_of::<libc::in6_pktinfo>() as u32) as _;
        } else if let IpAddr::V4(a) = source {
            (*c).cmsg_level = libc::IPPROTO_IP;
            (*c).cmsg_type = libc::IP_PKTINFO;
            (*c).cmsg_len = libc::CMSG_LEN(size_of::<libc::in_pktinfo>() as u32) as _;
            let info = libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: libc::in_addr {
                    s_addr: u32::from(a).to_be(),
                },
                ipi_addr: libc::in_addr { s_addr: 0 },
            };
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast(), info);
            hdr.msg_controllen = libc::CMSG_SPACE(size_of::<libc::in_pktinfo>() as u32) as _;
        }
    }
}

/// Sends batches of datagrams, with the address storage reused from call to call.
pub(crate) struct SendBatch {
    #[cfg(target_os = "linux")]
    names: Vec<libc::sockaddr_storage>,
    /// Per slot: room for the source control message.
    #[cfg(target_os = "linux")]
    controls: Vec<[u64; SEND_CONTROL / 8]>,
    /// The socket is IPv6: IPv4 destinations and sources are written v4-mapped.
    v6: bool,
    /// Send each datagram from its [`Outgoing::source`].
    set_source: bool,
}

impl SendBatch {
    /// A sender for `socket`; with `set_source`, each datagram leaves from its
    /// [`Outgoing::source`] (for a socket bound to a wildcard address).
    pub(crate) fn new(socket: &UdpSocket, set_source: bool) -> SendBatch {
        SendBatch {
            #[cfg(target_os = "linux")]
            // SAFETY: sockaddr_storage is plain data; all zeroes is a valid (AF_UNSPEC) value.
            names: vec![unsafe { std::mem::zeroed() }; BATCH],
            #[cfg(target_os = "linux")]
            controls: vec![[0; SEND_CONTROL / 8]; BATCH],
            v6: socket.local_addr().is_ok_and(|a| a.is_ipv6()),
            set_source,
        }
    }

    /// Sends `datagrams` (at most [`BATCH`] system calls of up to [`BATCH`] datagrams each when
    /// the kernel takes them all) without waiting. Returns how many the kernel refused (full
    /// buffer, unreachable address, …): those are dropped.
    pub(crate) fn send<D: Outgoing>(&mut self, socket: &UdpSocket, datagrams: &[D]) -> usize {
        datagrams
            .chunks(BATCH)
            .map(|chunk| self.send_chunk(socket, chunk))
            .sum()
    }

    #[cfg(target_os = "linux")]
    fn send_chunk<D: Outgoing>(&mut self, socket: &UdpSocket, chunk: &[D]) -> usize {
        use std::os::fd::AsRawFd;
        debug_assert!(chunk.len() <= BATCH);
        // SAFETY (zeroed): plain data, see `RecvBatch::recv_inner`.
        let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for ((((d, name), control), iov), msg) in chunk
            .iter()
            .zip(self.names.iter_mut())
            .zip(self.controls.iter_mut())
            .zip(iovs.iter_mut())
            .zip(msgs.iter_mut())
        {
            let payload = d.payload();
            // The kernel only reads through a send's iovec.
            iov.iov_base = payload.as_ptr().cast_mut().cast();
            iov.iov_len = payload.len();
            msg.msg_hdr.msg_name = (name as *mut libc::sockaddr_storage).cast();
            msg.msg_hdr.msg_namelen = to_storage(d.destination(), self.v6, name);
            msg.msg_hdr.msg_iov = iov;
            msg.msg_hdr.msg_iovlen = 1;
            if self.set_source
                && let Some(source) = d.source()
            {
                set_source(source, self.v6, control, &mut msg.msg_hdr);
            }
        }
        let mut refused = 0;
        let mut sent = 0;
        while sent < chunk.len() {
            let rest = &mut msgs[sent..chunk.len()];
            // SAFETY: each mmsghdr points to one iovec over a payload borrowed from `chunk`, to
            // its own sockaddr_storage holding `msg_namelen` valid bytes and (or null) to its
            // own control buffer holding `msg_controllen` valid bytes; all outlive the call, and
            // the kernel does not write through them.
            let n = unsafe {
                libc::sendmmsg(
                    socket.as_raw_fd(),
                    rest.as_mut_ptr(),
                    rest.len() as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if n > 0 {
                sent += n as usize;
                continue;
            }
            let e = io::Error::last_os_error();
            if n < 0 && e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // The first datagram of the rest was refused: drop it and go on with the others.
            tracing::debug!(error = %e, to = %chunk[sent].destination(), "media send failed: dropped");
            refused += 1;
            sent += 1;
        }
        refused
    }

    #[cfg(not(target_os = "linux"))]
    fn send_chunk<D: Outgoing>(&mut self, socket: &UdpSocket, chunk: &[D]) -> usize {
        let mut refused = 0;
        for d in chunk {
            let to = match d.destination() {
                SocketAddr::V4(a) if self.v6 => SocketAddr::new(a.ip().to_ipv6_mapped().into(), a.port()),
                to => to,
            };
            let _ = self.set_source;
            if let Err(e) = socket.send_to(d.payload(), to) {
                tracing::debug!(error = %e, to = %d.destination(), "media send failed: dropped");
                refused += 1;
            }
        }
        refused
    }
}

/// Wakes a [`Waiter`] from another thread (an `eventfd` on Linux).
#[derive(Debug)]
pub(crate) struct Waker {
    #[cfg(target_os = "linux")]
    fd: std::os::fd::OwnedFd,
}

impl Waker {
    pub(crate) fn new() -> io::Result<Waker> {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::FromRawFd;
            // SAFETY: eventfd takes no pointers; a non-negative result is a new descriptor that
            // nothing else owns.
            let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `fd` is open and owned by nobody else.
            Ok(Waker {
                fd: unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) },
            })
        }
        #[cfg(not(target_os = "linux"))]
        Ok(Waker {})
    }

    /// Makes the waiter's current or next [`Waiter::wait`] return at once.
    pub(crate) fn wake(&self) {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let one: u64 = 1;
            // SAFETY: writes the 8 bytes of `one` to the eventfd. It fails only when the counter
            // would overflow, and then the waiter is woken already.
            let _ = unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
    }
}

/// Sleeps until a socket has a datagram, a [`Waker`] is woken or a timeout passes.
pub(crate) struct Waiter {
    waker: std::sync::Arc<Waker>,
}

impl Waiter {
    pub(crate) fn new(waker: std::sync::Arc<Waker>) -> Waiter {
        Waiter { waker }
    }

    /// Waits for one of the three (at most `timeout`, rounded up to milliseconds); clears the
    /// waker.
    #[cfg(target_os = "linux")]
    pub(crate) fn wait(&mut self, socket: &UdpSocket, timeout: std::time::Duration) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
        let mut fds = [
            libc::pollfd {
                fd: socket.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.waker.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(e)
            };
        }
        if fds[1].revents != 0 {
            let mut count = [0u8; 8];
            // SAFETY: reads at most 8 bytes into `count`; the eventfd is non-blocking.
            let _ = unsafe { libc::read(self.waker.fd.as_raw_fd(), count.as_mut_ptr().cast(), 8) };
        }
        Ok(())
    }

    /// Sets the socket's receive timeout (at most 10 ms): the next receive waits.
    #[cfg(not(target_os = "linux"))]
    pub(crate) fn wait(&mut self, socket: &UdpSocket, timeout: std::time::Duration) -> io::Result<()> {
        let _ = &self.waker;
        let t = timeout.clamp(
            std::time::Duration::from_millis(1),
            std::time::Duration::from_millis(10),
        );
        socket.set_read_timeout(Some(t))
    }
}

/// Writes `addr` into `out` (an IPv4 address v4-mapped for an IPv6 socket, `v6`); returns the
/// length of the address written.
#[cfg(target_os = "linux")]
fn to_storage(addr: SocketAddr, v6: bool, out: &mut libc::sockaddr_storage) -> libc::socklen_t {
    let addr = match addr {
        SocketAddr::V4(a) if v6 => SocketAddr::new(a.ip().to_ipv6_mapped().into(), a.port()),
        a => a,
    };
    // SAFETY: sockaddr_storage is larger than and aligned at least as sockaddr_in and
    // sockaddr_in6, so either may be written into it.
    match addr {
        SocketAddr::V4(a) => {
            let sin = unsafe { &mut *(out as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr = libc::in_addr {
                s_addr: u32::from(*a.ip()).to_be(),
            };
            sin.sin_zero = [0; 8];
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            let sin6 = unsafe { &mut *(out as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_addr = libc::in6_addr {
                s6_addr: a.ip().octets(),
            };
            sin6.sin6_scope_id = a.scope_id();
            size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// The address in `s`, if it is IPv4 or IPv6; canonical (a v4-mapped IPv6 address, as an IPv4
/// peer of a dual-stack socket shows up, is returned as IPv4).
#[cfg(target_os = "linux")]
fn from_storage(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
    // SAFETY: the family says which structure the kernel wrote; sockaddr_storage is larger than
    // and aligned at least as either.
    match i32::from(s.ss_family) {
        libc::AF_INET => {
            let sin = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            let sin6 = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            if let Some(v4) = ip.to_ipv4_mapped() {
                return Some(SocketAddr::V4(SocketAddrV4::new(
                    v4,
                    u16::from_be(sin6.sin6_port),
                )));
            }
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pair(ip: &str) -> Option<(UdpSocket, UdpSocket)> {
        let a = UdpSocket::bind((ip, 0)).ok()?;
        let b = UdpSocket::bind((ip, 0)).ok()?;
        Some((a, b))
    }

    #[test]
    fn a_batch_goes_out_and_comes_back_in_order() {
        for ip in ["127.0.0.1", "::1"] {
            let Some((tx, rx)) = pair(ip) else { continue };
            rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let to = rx.local_addr().unwrap();
            // More than two batches, with sizes from 0 to 1490 bytes (few large ones: the
            // receive buffer may be small).
            let out: Vec<(SocketAddr, Vec<u8>)> = (0..150u32)
                .map(|i| {
                    (
                        to,
                        vec![
                            i as u8;
                            if i % 16 == 0 {
                                i as usize * 10
                            } else {
                                i as usize % 50
                            }
                        ],
                    )
                })
                .collect();
            let mut sender = SendBatch::new(&tx, false);
            assert_eq!(sender.send(&tx, &out), 0);
            let mut batch = RecvBatch::new(2048);
            let mut waiter = Waiter::new(std::sync::Arc::new(Waker::new().unwrap()));
            let mut got = Vec::new();
            while got.len() < out.len() {
                waiter.wait(&rx, Duration::from_secs(2)).unwrap();
                let n = batch.recv(&rx).unwrap();
                assert!((1..=BATCH).contains(&n));
                for d in batch.iter() {
                    assert_eq!(d.from, Some(tx.local_addr().unwrap()));
                    assert_eq!(d.at, None, "no arrival times unless asked for");
                    assert_eq!(d.to, None, "no destinations unless asked for");
                    got.push(d.bytes.to_vec());
                }
            }
            let want: Vec<Vec<u8>> = out.into_iter().map(|(_, b)| b).collect();
            assert_eq!(got, want);
        }
    }

    fn unix_ns() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn datagrams_carry_the_kernels_arrival_time_when_asked() {
        let (tx, rx) = pair("127.0.0.1").unwrap();
        enable_rx_timestamps(&rx).unwrap();
        let mut waiter = Waiter::new(std::sync::Arc::new(Waker::new().unwrap()));
        let mut batch = RecvBatch::new(2048);
        // The kernel switches receive timestamps on for the whole stack lazily (a static key,
        // from a work queue) when the first socket asks: until then a datagram is stamped when it
        // is read, not when it arrived. On a machine where no other socket has them on, that is
        // now: wait until a throwaway datagram comes back stamped on arrival (it waited 10 ms in
        // the socket), at most 2 s, before measuring.
        for _ in 0..100 {
            tx.send_to(b"warm-up", rx.local_addr().unwrap()).unwrap();
            std::thread::sleep(Duration::from_millis(10));
            waiter.wait(&rx, Duration::from_secs(2)).unwrap();
            assert_eq!(batch.recv(&rx).unwrap(), 1);
            let read = unix_ns();
            let at = batch.iter().next().unwrap().at.expect("an arrival time");
            if read.saturating_sub(at) >= 5_000_000 {
                break;
            }
        }
        let before = unix_ns();
        for i in 0..3u8 {
            tx.send_to(&[i; 40], rx.local_addr().unwrap()).unwrap();
        }
        std::thread::sleep(Duration::from_millis(30));
        waiter.wait(&rx, Duration::from_secs(2)).unwrap();
        assert_eq!(batch.recv(&rx).unwrap(), 3);
        let after = unix_ns();
        for (i, d) in batch.iter().enumerate() {
            assert_eq!(d.bytes, &[i as u8; 40]);
            let at = d.at.expect("an arrival time");
            assert!(before <= at && at <= after, "{before} <= {at} <= {after}");
            // Stamped on arrival, not when read 30 ms later.
            assert!(after - at >= 25_000_000, "{}", after - at);
        }
    }

    /// Receives one datagram on `rx` (waiting at most 2 s).
    fn recv_one(rx: &UdpSocket, batch: &mut RecvBatch) -> (Option<SocketAddr>, Option<IpAddr>, Vec<u8>) {
        let mut waiter = Waiter::new(std::sync::Arc::new(Waker::new().unwrap()));
        waiter.wait(rx, Duration::from_secs(2)).unwrap();
        assert_eq!(batch.recv(rx).unwrap(), 1);
        let d = batch.iter().next().unwrap();
        (d.from, d.to, d.bytes.to_vec())
    }

    /// A socket bound to a wildcard address (`wildcard`) receives on each of `locals` (addresses
    /// of this host) from a client bound there, reports each datagram's destination, and replies
    /// from that destination when sending with a source.
    #[cfg(target_os = "linux")]
    fn wildcard_socket_answers_from_where_it_was_reached(wildcard: &str, locals: &[&str]) {
        let addr = SocketAddr::new(wildcard.parse().unwrap(), 0);
        let sock =
            socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::DGRAM, None).unwrap();
        if addr.is_ipv6() {
            // Dual stack, as media::bind makes it, whatever net.ipv6.bindv6only says.
            sock.set_only_v6(false).unwrap();
        }
        sock.bind(&addr.into()).unwrap();
        let server = UdpSocket::from(sock);
        enable_pktinfo(&server).unwrap();
        let port = server.local_addr().unwrap().port();
        let mut sender = SendBatch::new(&server, true);
        let mut batch = RecvBatch::new(2048);
        for (i, local) in locals.iter().enumerate() {
            let ip: IpAddr = local.parse().unwrap();
            let client = UdpSocket::bind((ip, 0)).unwrap();
            client.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            client.send_to(&[i as u8; 8], (ip, port)).unwrap();
            let (from, to, bytes) = recv_one(&server, &mut batch);
            let canonical = client.local_addr().unwrap();
            assert_eq!(from, Some(canonical), "{wildcard} via {local}");
            assert_eq!(to, Some(ip), "{wildcard} via {local}: the destination");
            assert_eq!(bytes, vec![i as u8; 8]);
            // The reply leaves from the address the client sent to, whatever the route says.
            let reply = vec![(to, canonical, vec![0xa0 + i as u8])];
            assert_eq!(sender.send(&server, &reply), 0);
            let mut buf = [0u8; 16];
            let (n, replied_from) = client.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], &[0xa0 + i as u8]);
            assert_eq!(
                replied_from,
                SocketAddr::new(ip, port),
                "{wildcard} via {local}: the source"
            );
        }
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn an_ipv4_wildcard_socket_reports_destinations_and_replies_from_them() {
        // 127.0.0.2 is on `lo` (all of 127/8 is), but the kernel would answer a client there
        // from 127.0.0.1 without a source.
        wildcard_socket_answers_from_where_it_was_reached(
            "0.0.0.0",
            &["127.0.0.1", "127.0.0.2", "127.0.0.3"],
        );
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_dual_stack_socket_reports_canonical_addresses_and_replies_from_them() {
        let Ok(probe) = UdpSocket::bind("[::1]:0") else {
            panic!("this test needs IPv6 on lo (::1)");
        };
        drop(probe);
        wildcard_socket_answers_from_where_it_was_reached("::", &["127.0.0.2", "::1", "127.0.0.1"]);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn without_set_source_the_kernel_picks_the_source() {
        // The counter-test of the two above: what a wildcard socket does without a source (the
        // reason the media plane sets one).
        let server = UdpSocket::bind("0.0.0.0:0").unwrap();
        let port = server.local_addr().unwrap().port();
        let client = UdpSocket::bind("127.0.0.2:0").unwrap();
        client.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let to = client.local_addr().unwrap();
        let out = vec![(Some("127.0.0.2".parse::<IpAddr>().unwrap()), to, vec![1u8])];
        assert_eq!(SendBatch::new(&server, false).send(&server, &out), 0);
        let mut buf = [0u8; 4];
        let (_, from) = client.recv_from(&mut buf).unwrap();
        assert_eq!(from, SocketAddr::from(([127, 0, 0, 1], port)));
    }

    #[test]
    fn long_datagrams_are_truncated_and_nothing_is_an_error() {
        let (tx, rx) = pair("127.0.0.1").unwrap();
        rx.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let mut waiter = Waiter::new(std::sync::Arc::new(Waker::new().unwrap()));
        tx.send_to(&[7; 100], rx.local_addr().unwrap()).unwrap();
        let mut batch = RecvBatch::new(16);
        waiter.wait(&rx, Duration::from_secs(2)).unwrap();
        assert_eq!(batch.recv(&rx).unwrap(), 1);
        assert_eq!(batch.iter().next().unwrap().bytes, &[7; 16]);
        let e = batch.recv(&rx).unwrap_err();
        assert!(matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ));
    }

    #[test]
    fn a_waiter_wakes_on_its_waker_a_datagram_or_the_timeout() {
        let (tx, rx) = pair("127.0.0.1").unwrap();
        let waker = std::sync::Arc::new(Waker::new().unwrap());
        let mut waiter = Waiter::new(waker.clone());
        // The timeout.
        waiter.wait(&rx, Duration::from_millis(10)).unwrap();
        // A wake from another thread (made before the wait counts too).
        let w = waker.clone();
        let thread = std::thread::spawn(move || w.wake());
        thread.join().unwrap();
        waiter.wait(&rx, Duration::from_secs(600)).unwrap();
        // A datagram.
        tx.send_to(&[1], rx.local_addr().unwrap()).unwrap();
        waiter.wait(&rx, Duration::from_secs(600)).unwrap();
        assert_eq!(RecvBatch::new(64).recv(&rx).unwrap(), 1);
    }

    #[test]
    fn refused_datagrams_are_counted_and_the_rest_sent() {
        let (tx, rx) = pair("127.0.0.1").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let to = rx.local_addr().unwrap();
        // An IPv6 destination on an IPv4 socket is refused; a datagram beyond 64 KiB too.
        let v6: SocketAddr = "[::1]:9".parse().unwrap();
        let out = vec![(to, vec![1]), (v6, vec![2]), (to, vec![3; 70_000]), (to, vec![4])];
        assert_eq!(SendBatch::new(&tx, false).send(&tx, &out), 2);
        let mut batch = RecvBatch::new(64);
        let mut got = Vec::new();
        while got.len() < 2 {
            batch.recv(&rx).unwrap();
            got.extend(batch.iter().map(|d| d.bytes.to_vec()));
        }
        assert_eq!(got, vec![vec![1], vec![4]]);
    }
}
