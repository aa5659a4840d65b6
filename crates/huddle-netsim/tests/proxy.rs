//! The proxies on real loopback sockets.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use huddle_media::impair::Impairment;
use huddle_netsim::{Direction, Scope, TcpProxy, UdpProxy};

fn udp_echo() -> (UdpSocket, std::thread::JoinHandle<()>) {
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    let s = server.try_clone().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let t = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            if &buf[..n] == b"quit" {
                return;
            }
            s.send_to(&buf[..n], from).unwrap();
        }
    });
    (server, t)
}

fn client(ip: &str) -> UdpSocket {
    let c = UdpSocket::bind((ip, 0)).unwrap();
    c.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    c
}

#[test]
fn udp_relays_both_ways_with_delay_and_per_client_loss() {
    let (server, echo) = udp_echo();
    let proxy = UdpProxy::start("127.0.0.1:0".parse().unwrap(), server.local_addr().unwrap(), 1).unwrap();
    let mut slow = Impairment::default();
    slow.delay = Duration::from_millis(40);
    proxy.set_impairment(Scope::All, Direction::Down, slow);
    let mut lossy = Impairment::default();
    lossy.loss = 0.5;
    proxy.set_impairment(Scope::Ip("127.0.0.7".parse().unwrap()), Direction::Up, lossy);

    // A clean client: every datagram comes back, at least 40 ms later.
    let a = client("127.0.0.1");
    let mut buf = [0u8; 64];
    for i in 0..20u8 {
        let sent = Instant::now();
        a.send_to(&[i], proxy.local_addr()).unwrap();
        let (n, from) = a.recv_from(&mut buf).unwrap();
        assert_eq!((n, buf[0], from), (1, i, proxy.local_addr()));
        assert!(sent.elapsed() >= Duration::from_millis(40));
    }

    // The lossy client loses about half of its datagrams on the way up.
    let b = client("127.0.0.7");
    let mut back = 0;
    for i in 0..200u8 {
        b.send_to(&[i], proxy.local_addr()).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    b.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    while b.recv_from(&mut buf).is_ok() {
        back += 1;
    }
    assert!((60..=140).contains(&back), "{back} of 200 came back");
    let stats = proxy.stats();
    let b_stats = stats[&"127.0.0.7".parse().unwrap()];
    assert_eq!(b_stats.up.sent, 200);
    assert_eq!(b_stats.up.dropped + b_stats.down.delivered, 200);
    assert_eq!(stats[&"127.0.0.1".parse().unwrap()].up.dropped, 0);

    // An outage of the clean client drops everything; after it, traffic flows again.
    proxy.set_outage(Scope::Ip("127.0.0.1".parse().unwrap()), true);
    a.send_to(b"lost", proxy.local_addr()).unwrap();
    assert!(a.recv_from(&mut buf).is_err());
    proxy.set_outage(Scope::Ip("127.0.0.1".parse().unwrap()), false);
    a.send_to(b"back", proxy.local_addr()).unwrap();
    let (n, _) = a.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"back");

    server.send_to(b"quit", server.local_addr().unwrap()).unwrap();
    echo.join().unwrap();
}

#[test]
fn tcp_stalls_then_delivers_and_cuts() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = listener.local_addr().unwrap();
    let echo = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 64];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => s.write_all(&buf[..n]).unwrap(),
            }
        }
    });
    let proxy = TcpProxy::start("127.0.0.1:0".parse().unwrap(), upstream).unwrap();
    let mut c = TcpStream::connect(proxy.local_addr()).unwrap();
    c.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut buf = [0u8; 64];
    c.write_all(b"one").unwrap();
    assert_eq!(c.read(&mut buf).unwrap(), 3);

    proxy.set_stalled(true);
    c.write_all(b"two").unwrap();
    assert!(c.read(&mut buf).is_err(), "nothing passes while stalled");
    proxy.set_stalled(false);
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(c.read(&mut buf).unwrap(), 3);
    assert_eq!(&buf[..3], b"two");
    assert_eq!(proxy.connections(), 1);

    proxy.cut();
    assert_eq!(c.read(&mut buf).unwrap_or(0), 0, "a cut connection is closed");
    echo.join().unwrap();

    proxy.set_refusing(true);
    let mut d = TcpStream::connect(proxy.local_addr()).unwrap();
    d.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(
        d.read(&mut buf).unwrap_or(0),
        0,
        "refused connections close at once"
    );
}
