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
//! Sends never wait (`MSG_DONTWAIT`, whatever the socket's mode): a datagram the kernel refuses
//! is dropped and counted by the caller, as UDP may drop it anyway. On Linux receives never wait
//! either (they take what is queued, up to [`BATCH`]); the caller waits with [`Waiter::wait`].
//! Elsewhere (a fallback, not tuned) the socket is blocking with a short receive timeout set by
//! [`Waiter::wait`], and wakers are not needed: a receive never blocks longer than 10 ms.

use std::io;
use std::net::{SocketAddr, UdpSocket};

/// Datagrams per system call, each way.
pub(crate) const BATCH: usize = 64;

/// A datagram to send.
pub(crate) trait Outgoing {
    /// Where to.
    fn destination(&self) -> SocketAddr;
    /// The bytes.
    fn payload(&self) -> &[u8];
}

impl Outgoing for str0m::net::Transmit {
    fn destination(&self) -> SocketAddr {
        self.destination
    }
    fn payload(&self) -> &[u8] {
        &self.contents
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

/// Asks the kernel to stamp each datagram received on `socket` with its arrival time
/// (`SO_TIMESTAMPNS`, the realtime clock), which [`RecvBatch`] then reports.
#[cfg(target_os = "linux")]
pub(crate) fn enable_rx_timestamps(socket: &UdpSocket) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: the option value is a c_int that outlives the call, and its size is passed.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Elsewhere datagrams carry no arrival time.
#[cfg(not(target_os = "linux"))]
pub(crate) fn enable_rx_timestamps(_socket: &UdpSocket) -> io::Result<()> {
    Ok(())
}

/// Room for one `SCM_TIMESTAMPNS` control message (a `timespec`), with the kernel's alignment.
#[cfg(target_os = "linux")]
const CONTROL: usize = 64;

/// Up to [`BATCH`] received datagrams, in buffers reused from call to call.
pub(crate) struct RecvBatch {
    /// `BATCH` slots of `size` bytes.
    buf: Vec<u8>,
    size: usize,
    /// Per slot: the sender (`None`: an address family other than IPv4/IPv6), the length and the
    /// kernel's arrival time (ns since the Unix epoch) when the socket stamps datagrams.
    got: Vec<(Option<SocketAddr>, usize, Option<u64>)>,
    #[cfg(target_os = "linux")]
    names: Vec<libc::sockaddr_storage>,
    /// Per slot: room for the control message carrying the arrival time.
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

    /// The datagrams received by the last [`RecvBatch::recv`]: sender (`None` for a family other
    /// than IPv4 and IPv6), bytes, and the kernel's arrival time in ns since the Unix epoch (when
    /// [`enable_rx_timestamps`] was called on the socket).
    pub(crate) fn iter(&self) -> impl Iterator<Item = (Option<SocketAddr>, &[u8], Option<u64>)> + '_ {
        self.got
            .iter()
            .enumerate()
            .map(|(i, (from, len, at))| (*from, &self.buf[i * self.size..i * self.size + len], *at))
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
            // SAFETY: each mmsghdr points to one iovec over its own `size`-byte slot of `buf` and
            // to its own sockaddr_storage, all of which outlive the call; the kernel writes at
            // most `iov_len` / `msg_namelen` bytes into them.
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
            self.got.push((from_storage(name), len, arrival(&msg.msg_hdr)));
        }
        Ok(())
    }

    #[cfg(not(target_os = "linux"))]
    fn recv_inner(&mut self, socket: &UdpSocket) -> io::Result<()> {
        let (len, from) = socket.recv_from(&mut self.buf[..self.size])?;
        self.got.push((Some(from), len, None));
        Ok(())
    }
}

/// The `SCM_TIMESTAMPNS` arrival time in a received message's control data, in ns since the Unix
/// epoch.
#[cfg(target_os = "linux")]
fn arrival(hdr: &libc::msghdr) -> Option<u64> {
    // SAFETY: `hdr` was filled in by recvmmsg: its control pointer and length describe the
    // slot's control buffer, which the CMSG macros walk without leaving it; the timespec is read
    // unaligned from the message's data.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(hdr);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                return u64::try_from(ts.tv_sec)
                    .ok()
                    .map(|s| s * 1_000_000_000 + ts.tv_nsec as u64);
            }
            c = libc::CMSG_NXTHDR(hdr, c);
        }
    }
    None
}

/// Sends batches of datagrams, with the address storage reused from call to call.
pub(crate) struct SendBatch {
    #[cfg(target_os = "linux")]
    names: Vec<libc::sockaddr_storage>,
}

impl SendBatch {
    pub(crate) fn new() -> SendBatch {
        SendBatch {
            #[cfg(target_os = "linux")]
            // SAFETY: sockaddr_storage is plain data; all zeroes is a valid (AF_UNSPEC) value.
            names: vec![unsafe { std::mem::zeroed() }; BATCH],
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
        for (((d, name), iov), msg) in chunk
            .iter()
            .zip(self.names.iter_mut())
            .zip(iovs.iter_mut())
            .zip(msgs.iter_mut())
        {
            let payload = d.payload();
            // The kernel only reads through a send's iovec.
            iov.iov_base = payload.as_ptr().cast_mut().cast();
            iov.iov_len = payload.len();
            msg.msg_hdr.msg_name = (name as *mut libc::sockaddr_storage).cast();
            msg.msg_hdr.msg_namelen = to_storage(d.destination(), name);
            msg.msg_hdr.msg_iov = iov;
            msg.msg_hdr.msg_iovlen = 1;
        }
        let mut refused = 0;
        let mut sent = 0;
        while sent < chunk.len() {
            let rest = &mut msgs[sent..chunk.len()];
            // SAFETY: each mmsghdr points to one iovec over a payload borrowed from `chunk` and
            // to its own sockaddr_storage holding `msg_namelen` valid bytes; all outlive the
            // call, and the kernel does not write through them.
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
            if let Err(e) = socket.send_to(d.payload(), d.destination()) {
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

/// Writes `addr` into `out`; returns the length of the address written.
#[cfg(target_os = "linux")]
fn to_storage(addr: SocketAddr, out: &mut libc::sockaddr_storage) -> libc::socklen_t {
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

/// The address in `s`, if it is IPv4 or IPv6.
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
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
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
            let mut sender = SendBatch::new();
            assert_eq!(sender.send(&tx, &out), 0);
            let mut batch = RecvBatch::new(2048);
            let mut waiter = Waiter::new(std::sync::Arc::new(Waker::new().unwrap()));
            let mut got = Vec::new();
            while got.len() < out.len() {
                waiter.wait(&rx, Duration::from_secs(2)).unwrap();
                let n = batch.recv(&rx).unwrap();
                assert!((1..=BATCH).contains(&n));
                for (from, bytes, at) in batch.iter() {
                    assert_eq!(from, Some(tx.local_addr().unwrap()));
                    assert_eq!(at, None, "no arrival times unless asked for");
                    got.push(bytes.to_vec());
                }
            }
            let want: Vec<Vec<u8>> = out.into_iter().map(|(_, b)| b).collect();
            assert_eq!(got, want);
        }
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn datagrams_carry_the_kernels_arrival_time_when_asked() {
        let (tx, rx) = pair("127.0.0.1").unwrap();
        enable_rx_timestamps(&rx).unwrap();
        let mut waiter = Waiter::new(std::sync::Arc::new(Waker::new().unwrap()));
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        for i in 0..3u8 {
            tx.send_to(&[i; 40], rx.local_addr().unwrap()).unwrap();
        }
        std::thread::sleep(Duration::from_millis(30));
        let mut batch = RecvBatch::new(2048);
        waiter.wait(&rx, Duration::from_secs(2)).unwrap();
        assert_eq!(batch.recv(&rx).unwrap(), 3);
        let after = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        for (i, (_, bytes, at)) in batch.iter().enumerate() {
            assert_eq!(bytes, &[i as u8; 40]);
            let at = at.expect("an arrival time");
            assert!(before <= at && at <= after, "{before} <= {at} <= {after}");
            // Stamped on arrival, not when read 30 ms later.
            assert!(after - at >= 25_000_000, "{}", after - at);
        }
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
        assert_eq!(batch.iter().next().unwrap().1, &[7; 16]);
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
        assert_eq!(SendBatch::new().send(&tx, &out), 2);
        let mut batch = RecvBatch::new(64);
        let mut got = Vec::new();
        while got.len() < 2 {
            batch.recv(&rx).unwrap();
            got.extend(batch.iter().map(|(_, b, _)| b.to_vec()));
        }
        assert_eq!(got, vec![vec![1], vec![4]]);
    }
}
