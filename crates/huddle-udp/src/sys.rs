//! The crate's only `unsafe` code: the Linux system calls and the C structures they read and
//! write. Everything above this module is safe Rust over these functions.
//!
//! # Why this is sound (argued once for the module)
//!
//! - **Plain C data.** `iovec`, `mmsghdr`, `msghdr`, `sockaddr_storage`, `pollfd` and `timespec`
//!   are plain data for which all-zero bytes are a valid value (null pointers, zero lengths,
//!   `AF_UNSPEC`); they are zeroed before use and every field the kernel reads is set.
//! - **Pointers live as long as the call.** Every pointer handed to the kernel points into
//!   storage owned by the caller's `&mut` borrow ([`RecvSlots`], [`SendSlots`], a payload slice,
//!   a local) that outlives the system call, and nothing keeps it afterwards. Each header points
//!   at its own buffer, address and control area, so no two overlap.
//! - **The kernel stays inside the lengths it is given.** `iov_len`, `msg_namelen` and
//!   `msg_controllen` are the sizes of the buffers they describe; the kernel writes at most
//!   that many bytes and reports in `msg_len` / `msg_namelen` / `msg_controllen` how many it did.
//! - **Control messages.** `CMSG_FIRSTHDR`/`CMSG_NXTHDR` only walk the control area described by
//!   the header; a message's data is read only when its `cmsg_len` covers the structure read,
//!   and read or written unaligned (`read_unaligned`/`write_unaligned`).
//! - **Addresses.** `sockaddr_storage` is larger than and aligned at least as `sockaddr_in` and
//!   `sockaddr_in6`; it is read as the structure its `ss_family` names, and written as the one
//!   whose family is set.
//! - **Descriptors.** A descriptor comes from a live `AsFd` borrow for the duration of the
//!   call; `eventfd` returns a new descriptor that is owned at once by an `OwnedFd`.
#![allow(unsafe_code)]

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

use crate::BATCH;

/// Room for the control messages of a received datagram: `SCM_TIMESTAMPNS` (a `timespec`, 32
/// bytes with its header) and `IP_PKTINFO` or `IPV6_PKTINFO` (32 or 40), with the kernel's
/// alignment.
pub(crate) const CONTROL: usize = 128;

/// Room for the one control message of a datagram sent with a source (`IPV6_PKTINFO`: 40 bytes).
const SEND_CONTROL: usize = 64;

/// What the kernel said about one received datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meta {
    /// The sender, canonical; `None` for another address family.
    pub(crate) from: Option<SocketAddr>,
    /// The local IP it was sent to (pktinfo), canonical.
    pub(crate) to: Option<IpAddr>,
    /// The bytes written into the buffer.
    pub(crate) len: usize,
    /// The datagram was longer than the buffer (`MSG_TRUNC`): its tail is lost.
    pub(crate) truncated: bool,
    /// `SCM_TIMESTAMPNS`, ns since the Unix epoch.
    pub(crate) at: Option<u64>,
}

/// Sets an integer socket option.
pub(crate) fn set_int_option(
    socket: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
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

/// Reads an integer socket option.
pub(crate) fn int_option(
    socket: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    let r = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Per-slot address and control storage for `recvmmsg`.
pub(crate) struct RecvSlots {
    names: Vec<libc::sockaddr_storage>,
    controls: Vec<[u64; CONTROL / 8]>,
}

impl RecvSlots {
    pub(crate) fn new() -> RecvSlots {
        RecvSlots {
            names: vec![unsafe { std::mem::zeroed() }; BATCH],
            controls: vec![[0; CONTROL / 8]; BATCH],
        }
    }

    /// One `recvmmsg` (never waiting) into `buf`'s `size`-byte slots; the metadata of each
    /// datagram received goes to `out`, in order.
    pub(crate) fn recv(
        &mut self,
        socket: BorrowedFd<'_>,
        buf: &mut [u8],
        size: usize,
        out: &mut Vec<Meta>,
    ) -> io::Result<()> {
        let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        let slots = buf.chunks_exact_mut(size).take(BATCH);
        let mut count = 0;
        for ((((chunk, name), control), iov), msg) in slots
            .zip(self.names.iter_mut())
            .zip(self.controls.iter_mut())
            .zip(iovs.iter_mut())
            .zip(msgs.iter_mut())
        {
            fill_recv_header(chunk, name, control, iov, &mut msg.msg_hdr);
            count += 1;
        }
        let n = loop {
            let n = unsafe {
                libc::recvmmsg(
                    socket.as_raw_fd(),
                    msgs.as_mut_ptr(),
                    count as libc::c_uint,
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
            let (at, to) = control(&msg.msg_hdr);
            out.push(Meta {
                from: from_storage(name),
                to,
                len: msg.msg_len as usize,
                truncated: msg.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
                at,
            });
        }
        Ok(())
    }
}

/// Points `hdr` at one receive slot.
fn fill_recv_header(
    chunk: &mut [u8],
    name: &mut libc::sockaddr_storage,
    control: &mut [u64; CONTROL / 8],
    iov: &mut libc::iovec,
    hdr: &mut libc::msghdr,
) {
    iov.iov_base = chunk.as_mut_ptr().cast();
    iov.iov_len = chunk.len();
    hdr.msg_name = (name as *mut libc::sockaddr_storage).cast();
    hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    hdr.msg_iov = iov;
    hdr.msg_iovlen = 1;
    hdr.msg_control = control.as_mut_ptr().cast();
    hdr.msg_controllen = CONTROL as _;
}

/// One `recvmsg` (never waiting) into `buf`.
pub(crate) fn recv_one(socket: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Meta> {
    let mut name: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut control_buf = [0u64; CONTROL / 8];
    let mut iov: libc::iovec = unsafe { std::mem::zeroed() };
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    fill_recv_header(buf, &mut name, &mut control_buf, &mut iov, &mut hdr);
    loop {
        let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut hdr, libc::MSG_DONTWAIT) };
        if n >= 0 {
            let (at, to) = control(&hdr);
            return Ok(Meta {
                from: from_storage(&name),
                to,
                len: n as usize,
                truncated: hdr.msg_flags & libc::MSG_TRUNC != 0,
                at,
            });
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// The `SCM_TIMESTAMPNS` arrival time (ns since the Unix epoch) and the `IP_PKTINFO` /
/// `IPV6_PKTINFO` destination (canonical) in a received message's control data.
fn control(hdr: &libc::msghdr) -> (Option<u64>, Option<IpAddr>) {
    let (mut at, mut to) = (None, None);
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(hdr);
        while !c.is_null() {
            let len = (*c).cmsg_len as usize;
            let fits = |n: usize| len >= libc::CMSG_LEN(n as u32) as usize;
            match ((*c).cmsg_level, (*c).cmsg_type) {
                (libc::SOL_SOCKET, libc::SCM_TIMESTAMPNS) if fits(size_of::<libc::timespec>()) => {
                    let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                    // time_t and c_long are 32 bits on some targets.
                    #[allow(clippy::useless_conversion)]
                    let (sec, nsec) = (ts.tv_sec.into(), ts.tv_nsec.into());
                    at = crate::timespec_ns(sec, nsec);
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

/// Per-slot address and control storage for `sendmmsg`.
pub(crate) struct SendSlots {
    names: Vec<libc::sockaddr_storage>,
    controls: Vec<[u64; SEND_CONTROL / 8]>,
}

/// One datagram for [`SendSlots::send`]: destination (already in the socket's family), the
/// source to send from, the bytes.
pub(crate) type Datagram<'a> = (SocketAddr, Option<IpAddr>, &'a [u8]);

impl SendSlots {
    pub(crate) fn new() -> SendSlots {
        SendSlots {
            names: vec![unsafe { std::mem::zeroed() }; BATCH],
            controls: vec![[0; SEND_CONTROL / 8]; BATCH],
        }
    }

    /// Sends up to [`BATCH`] datagrams without waiting, with as few `sendmmsg` calls as the
    /// kernel allows. `refused(i, error)` is told of each datagram the kernel refused (it is
    /// dropped and the others go on). Returns the number of system calls.
    pub(crate) fn send<'a>(
        &mut self,
        socket: BorrowedFd<'_>,
        v6_socket: bool,
        chunk: impl ExactSizeIterator<Item = Datagram<'a>>,
        mut refused: impl FnMut(usize, io::Error),
    ) -> usize {
        let len = chunk.len();
        debug_assert!(len <= BATCH);
        let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for ((((d, name), control), iov), msg) in chunk
            .zip(self.names.iter_mut())
            .zip(self.controls.iter_mut())
            .zip(iovs.iter_mut())
            .zip(msgs.iter_mut())
        {
            let (to, source, payload) = d;
            // The kernel only reads through a send's iovec.
            iov.iov_base = payload.as_ptr().cast_mut().cast();
            iov.iov_len = payload.len();
            msg.msg_hdr.msg_name = (name as *mut libc::sockaddr_storage).cast();
            msg.msg_hdr.msg_namelen = to_storage(to, name);
            msg.msg_hdr.msg_iov = iov;
            msg.msg_hdr.msg_iovlen = 1;
            if let Some(source) = source {
                set_source(source, v6_socket, control, &mut msg.msg_hdr);
            }
        }
        let (mut sent, mut calls) = (0, 0);
        while sent < len {
            let rest = &mut msgs[sent..len];
            let n = unsafe {
                libc::sendmmsg(
                    socket.as_raw_fd(),
                    rest.as_mut_ptr(),
                    rest.len() as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            calls += 1;
            if n > 0 {
                sent += n as usize;
                continue;
            }
            let e = io::Error::last_os_error();
            if n < 0 && e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // The first datagram of the rest was refused: drop it and go on with the others.
            refused(sent, e);
            sent += 1;
        }
        calls
    }
}

/// Writes an `IP_PKTINFO` (IPv4 socket) or `IPV6_PKTINFO` (IPv6 socket; an IPv4 source
/// v4-mapped) control message asking to send from `source` into `buf`, and points `hdr` at it.
/// Nothing for an IPv6 source on an IPv4 socket (the kernel picks the source then).
fn set_source(source: IpAddr, v6_socket: bool, buf: &mut [u64; SEND_CONTROL / 8], hdr: &mut libc::msghdr) {
    let v6 = match (source, v6_socket) {
        (IpAddr::V6(_), false) => return,
        (_, true) => true,
        (IpAddr::V4(_), false) => false,
    };
    hdr.msg_control = buf.as_mut_ptr().cast();
    hdr.msg_controllen = SEND_CONTROL as _;
    // `buf` (SEND_CONTROL bytes, 8-aligned) holds a cmsghdr and either pktinfo structure
    // (CMSG_SPACE of in6_pktinfo is 40 bytes), so CMSG_FIRSTHDR is not null.
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

/// A new non-blocking `eventfd`.
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds one to an eventfd. It fails only when the counter would overflow, and then a waiter is
/// woken already.
pub(crate) fn eventfd_add(fd: BorrowedFd<'_>) {
    let one: u64 = 1;
    let _ = unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
}

/// Clears an eventfd (non-blocking: nothing to clear is fine).
pub(crate) fn eventfd_clear(fd: BorrowedFd<'_>) {
    let mut count = [0u8; 8];
    let _ = unsafe { libc::read(fd.as_raw_fd(), count.as_mut_ptr().cast(), 8) };
}

/// `poll` for input on `socket` and `event` (at most `timeout`, rounded up to ms); whether
/// `event` is ready.
pub(crate) fn poll2(socket: BorrowedFd<'_>, event: BorrowedFd<'_>, timeout: Duration) -> io::Result<bool> {
    let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
    let mut fds = [socket, event].map(|fd| libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    });
    let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(e)
        };
    }
    Ok(fds[1].revents != 0)
}

/// Writes `addr` into `out`; returns the length of the address written.
fn to_storage(addr: SocketAddr, out: &mut libc::sockaddr_storage) -> libc::socklen_t {
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
fn from_storage(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
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
