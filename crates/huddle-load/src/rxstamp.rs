//! Kernel receive timestamps (`SO_TIMESTAMPNS`): when a datagram entered the client's socket, so a
//! run can split a probe's latency into the part before the socket (sender, server, kernel) and the
//! time it waited in the socket for the generator (the generator's own queueing). The socket
//! calls are `huddle-udp`'s.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;

/// Asks the kernel to stamp every datagram the socket receives.
pub(crate) fn enable(socket: &impl AsFd) -> io::Result<()> {
    huddle_udp::enable_rx_timestamps(socket)
}

/// One non-blocking receive: the length, the sender, and how long the datagram waited in the
/// socket (now − its kernel timestamp, µs) when the socket stamps datagrams.
pub(crate) fn recv(socket: &impl AsFd, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, Option<u64>)> {
    let d = huddle_udp::recv_one(socket, buf)?;
    let from = d
        .from
        .ok_or_else(|| io::Error::other("datagram from an unknown address family"))?;
    Ok((d.bytes.len(), from, d.at.and_then(huddle_udp::age_us)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_show_how_long_a_datagram_waited() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        enable(&rx).unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        // The kernel switches receive timestamping on for the whole stack lazily (a deferred
        // static key) when the first socket asks: until then a datagram is stamped when it is
        // read, not when it arrives. Let that happen before the datagram that is measured.
        let mut buf = [0u8; 64];
        tx.send_to(b"warm-up", rx.local_addr().unwrap()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        recv(&rx, &mut buf).unwrap();
        tx.send_to(b"hello", rx.local_addr().unwrap()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(30));
        let (n, from, waited) = recv(&rx, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(from, tx.local_addr().unwrap());
        let waited = waited.expect("a kernel timestamp");
        assert!((25_000..2_000_000).contains(&waited), "{waited} us");
        assert_eq!(recv(&rx, &mut buf).unwrap_err().kind(), io::ErrorKind::WouldBlock);
    }
}
