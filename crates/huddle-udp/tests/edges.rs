#![cfg(target_os = "linux")]
//! The edges of huddle-udp over real sockets on loopback: batches in order, empty and full
//! batches, truncated datagrams, IPv4/IPv6 and dual-stack pktinfo, timestamps present and absent,
//! refused datagrams, the waiter.

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

use huddle_udp::{BATCH, RecvBatch, SendBatch, Waiter, Waker, enable_pktinfo, enable_rx_timestamps};

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
fn recv_single(rx: &UdpSocket, batch: &mut RecvBatch) -> (Option<SocketAddr>, Option<IpAddr>, Vec<u8>) {
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
    let sock = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::DGRAM, None).unwrap();
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
        let (from, to, bytes) = recv_single(&server, &mut batch);
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
    wildcard_socket_answers_from_where_it_was_reached("0.0.0.0", &["127.0.0.1", "127.0.0.2", "127.0.0.3"]);
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

#[test]
fn an_empty_batch_sends_nothing_and_an_empty_socket_would_block() {
    let (tx, rx) = pair("127.0.0.1").unwrap();
    let mut sender = SendBatch::new(&tx, false);
    let none: [(SocketAddr, Vec<u8>); 0] = [];
    assert_eq!(sender.send(&tx, &none), 0);
    assert_eq!(sender.calls(), 0, "no system call for nothing");
    let mut batch = RecvBatch::new(64);
    assert_eq!(batch.recv(&rx).unwrap_err().kind(), io::ErrorKind::WouldBlock);
    assert_eq!(
        batch.iter().count(),
        0,
        "a failed receive leaves no datagram behind"
    );
    let mut buf = [0u8; 8];
    assert_eq!(
        huddle_udp::recv_one(&rx, &mut buf).unwrap_err().kind(),
        io::ErrorKind::WouldBlock
    );
}

#[test]
fn a_full_batch_is_one_call_and_the_next_datagram_waits_for_the_next_receive() {
    let (tx, rx) = pair("127.0.0.1").unwrap();
    let to = rx.local_addr().unwrap();
    let out: Vec<(SocketAddr, Vec<u8>)> = (0..=BATCH).map(|i| (to, vec![i as u8; 4])).collect();
    let mut sender = SendBatch::new(&tx, false);
    assert_eq!(sender.send(&tx, &out[..BATCH]), 0);
    assert_eq!(sender.calls(), 1, "a full batch is one sendmmsg");
    assert_eq!(sender.send(&tx, &out[BATCH..]), 0);
    assert_eq!(sender.calls(), 2);
    std::thread::sleep(Duration::from_millis(20));
    let mut batch = RecvBatch::new(16);
    assert_eq!(batch.recv(&rx).unwrap(), BATCH, "a receive takes a full batch");
    for (i, d) in batch.iter().enumerate() {
        assert_eq!(d.bytes, &[i as u8; 4]);
        assert!(!d.truncated);
    }
    assert_eq!(batch.recv(&rx).unwrap(), 1, "and the rest comes with the next");
    assert_eq!(batch.iter().next().unwrap().bytes, &[BATCH as u8; 4]);
}

#[test]
fn an_ipv6_socket_reports_its_destination() {
    let Ok(rx) = UdpSocket::bind("[::1]:0") else {
        panic!("this test needs IPv6 on lo (::1)");
    };
    enable_pktinfo(&rx).unwrap();
    let tx = UdpSocket::bind("[::1]:0").unwrap();
    tx.send_to(b"six", rx.local_addr().unwrap()).unwrap();
    let mut batch = RecvBatch::new(64);
    let (from, to, bytes) = recv_single(&rx, &mut batch);
    assert_eq!(from, Some(tx.local_addr().unwrap()));
    assert_eq!(to, Some("::1".parse().unwrap()));
    assert_eq!(bytes, b"six");
}

#[test]
fn one_datagram_at_a_time_with_and_without_its_arrival_time() {
    let (tx, rx) = pair("127.0.0.1").unwrap();
    let mut buf = [0u8; 8];
    tx.send_to(b"plain", rx.local_addr().unwrap()).unwrap();
    std::thread::sleep(Duration::from_millis(10));
    let d = huddle_udp::recv_one(&rx, &mut buf).unwrap();
    assert_eq!(
        (d.bytes, d.at, d.to, d.truncated),
        (&b"plain"[..], None, None, false)
    );
    assert_eq!(d.from, Some(tx.local_addr().unwrap()));

    enable_rx_timestamps(&rx).unwrap();
    enable_pktinfo(&rx).unwrap();
    tx.send_to(b"stamped and long", rx.local_addr().unwrap()).unwrap();
    std::thread::sleep(Duration::from_millis(10));
    let d = huddle_udp::recv_one(&rx, &mut buf).unwrap();
    assert_eq!(d.bytes, b"stamped ");
    assert!(d.truncated);
    assert_eq!(d.to, Some("127.0.0.1".parse().unwrap()));
    let at = d.at.expect("an arrival time");
    let age = huddle_udp::age_us(at).expect("not in the future");
    assert!(age < 10_000_000, "{age} us");
}

/// The thin-stream options are set on a real TCP socket and read back as the kernel keeps
/// them: linear timeouts on, the RTO floor 50 ms and ceiling 1 s, up to a jiffy (or, on a kernel
/// before 6.15, the options refused by the setter and absent when read).
#[test]
fn a_thin_stream_has_linear_timeouts_a_50_ms_rto_floor_and_a_1_s_ceiling() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let before = huddle_udp::thin_stream(&stream).unwrap();
    assert!(!before.linear_timeouts, "{before:?}");
    let set = huddle_udp::set_thin_stream(&stream);
    let after = huddle_udp::thin_stream(&stream).unwrap();
    // Linear timeouts, and the floor in jiffies (4 ms at HZ=250), rounded up by less than one.
    assert!(after.is_as_set(), "{after:?}");
    match after.rto_min {
        Some(_) => {
            assert!(set.is_ok(), "{set:?}");
            assert_eq!(before.rto_min, Some(Duration::from_millis(200)), "{before:?}");
            assert_eq!(before.rto_max, Some(Duration::from_secs(120)), "{before:?}");
            assert!(after.rto_max.is_some(), "{after:?}");
        }
        None => assert_eq!(
            set.unwrap_err().raw_os_error(),
            Some(libc_enoprotoopt()),
            "an older kernel refuses TCP_RTO_MIN_US"
        ),
    }
}

/// `ENOPROTOOPT` on Linux.
fn libc_enoprotoopt() -> i32 {
    92
}
