//! Which addresses the server advertises as its ICE candidates, and which local address each
//! received datagram counts as sent to (`docs/sfu.md`, "Candidates").
//!
//! - **`public_ip` set:** one candidate, `public_ip:udp_port`, and every datagram is taken as
//!   sent to it: a 1:1 NAT (or a proxy) rewrites the destination before the host sees it.
//! - **A specific listen IP:** that IP; the kernel delivers only datagrams sent to it.
//! - **A wildcard listen:** every address of the host's interfaces, read once at start
//!   (`getifaddrs`), of the socket's families: `0.0.0.0` is IPv4 only, `[::]` is one dual-stack
//!   socket for IPv4 and IPv6. Left out: IPv6 link-local addresses (a candidate cannot carry the
//!   scope they need) and loopback, unless the host has nothing else (a machine with no network:
//!   local clients still work). Loopback is left out otherwise because a remote client would send
//!   its checks to *its own* loopback, and browsers (Firefox) never pair with it anyway. The
//!   socket then reports each datagram's destination (`IP_PKTINFO`), which is the candidate the
//!   client reached, and replies leave from that address (see `mmsg`).

use std::io;
use std::net::{IpAddr, SocketAddr};

/// Candidates advertised at most (a host with more addresses, say a container host, advertises
/// its first ones; set `public_ip` or a specific listen IP there).
pub(crate) const MAX_CANDIDATES: usize = 16;

/// The local address a received datagram counts as sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Destination {
    /// Always this one (`public_ip`, or a specific listen IP).
    Fixed(SocketAddr),
    /// The datagram's own destination IP (from the kernel) and the socket's port; `fallback`
    /// (the first candidate) if the kernel did not say.
    PerDatagram {
        /// The bound port.
        port: u16,
        /// Used when a datagram comes without its destination.
        fallback: SocketAddr,
    },
}

impl Destination {
    /// The candidate address for a datagram that the kernel says was sent to `to`.
    pub(crate) fn of(&self, to: Option<IpAddr>) -> SocketAddr {
        match *self {
            Destination::Fixed(addr) => addr,
            Destination::PerDatagram { port, fallback } => {
                to.map_or(fallback, |ip| SocketAddr::new(ip, port))
            }
        }
    }

    /// Whether the socket must report each datagram's destination and send each reply from the
    /// address it answers.
    pub(crate) fn per_datagram(&self) -> bool {
        matches!(self, Destination::PerDatagram { .. })
    }
}

/// What the media plane advertises and how it reads destinations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    /// The ICE candidates, in order of preference.
    pub(crate) candidates: Vec<SocketAddr>,
    /// How a datagram's destination is found.
    pub(crate) destination: Destination,
}

/// The plan for a socket bound to `bound` with `public_ip` configured; `host` lists the host's
/// addresses (called only for a wildcard listen without `public_ip`).
pub(crate) fn plan(
    bound: SocketAddr,
    public_ip: Option<IpAddr>,
    host: impl FnOnce() -> io::Result<Vec<IpAddr>>,
) -> io::Result<Plan> {
    let port = bound.port();
    if let Some(ip) = public_ip {
        let c = SocketAddr::new(ip.to_canonical(), port);
        return Ok(Plan {
            candidates: vec![c],
            destination: Destination::Fixed(c),
        });
    }
    let listen = bound.ip().to_canonical();
    if !listen.is_unspecified() {
        let c = SocketAddr::new(listen, port);
        return Ok(Plan {
            candidates: vec![c],
            destination: Destination::Fixed(c),
        });
    }
    let ips = choose(bound.is_ipv6(), &host()?);
    let Some(first) = ips.first() else {
        return Err(io::Error::other(
            "the host has no IP address to advertise as a media candidate (set public_ip)",
        ));
    };
    let fallback = SocketAddr::new(*first, port);
    Ok(Plan {
        candidates: ips.into_iter().map(|ip| SocketAddr::new(ip, port)).collect(),
        destination: Destination::PerDatagram { port, fallback },
    })
}

/// The candidate IPs of a wildcard listen among the host's addresses `host`: IPv4 ones, and IPv6
/// ones too when `dual_stack`; no IPv6 link-local, unspecified or multicast address; loopback
/// only when nothing else is left. In the host's order, without duplicates, at most
/// [`MAX_CANDIDATES`].
pub(crate) fn choose(dual_stack: bool, host: &[IpAddr]) -> Vec<IpAddr> {
    let usable = |ip: &IpAddr| match ip {
        IpAddr::V4(v4) => !v4.is_unspecified() && !v4.is_multicast() && !v4.is_broadcast(),
        IpAddr::V6(v6) => {
            dual_stack && !v6.is_unspecified() && !v6.is_multicast() && !v6.is_unicast_link_local()
        }
    };
    let mut out: Vec<IpAddr> = Vec::new();
    let mut loopback: Vec<IpAddr> = Vec::new();
    for ip in host.iter().map(|ip| ip.to_canonical()).filter(usable) {
        let list = if ip.is_loopback() { &mut loopback } else { &mut out };
        if !list.contains(&ip) {
            list.push(ip);
        }
    }
    if out.is_empty() {
        out = loopback;
    }
    out.truncate(MAX_CANDIDATES);
    out
}

/// The addresses of the host's interfaces (`getifaddrs`), in its order.
pub(crate) fn host_ips() -> io::Result<Vec<IpAddr>> {
    Ok(if_addrs::get_if_addrs()?.into_iter().map(|i| i.ip()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    const HOST: &[&str] = &[
        "127.0.0.1",
        "10.1.2.3",
        "::1",
        "fe80::1",
        "192.168.7.9",
        "2001:db8::5",
        "10.1.2.3",
        "::ffff:172.16.0.4",
    ];

    #[test]
    fn a_wildcard_v4_listen_advertises_the_hosts_ipv4_addresses_without_loopback() {
        assert_eq!(
            choose(false, &ips(HOST)),
            ips(&["10.1.2.3", "192.168.7.9", "172.16.0.4"])
        );
    }

    #[test]
    fn a_dual_stack_listen_adds_ipv6_but_not_link_local() {
        assert_eq!(
            choose(true, &ips(HOST)),
            ips(&["10.1.2.3", "192.168.7.9", "2001:db8::5", "172.16.0.4"])
        );
    }

    #[test]
    fn loopback_only_when_there_is_nothing_else() {
        assert_eq!(choose(false, &ips(&["127.0.0.1", "::1"])), ips(&["127.0.0.1"]));
        assert_eq!(
            choose(true, &ips(&["127.0.0.1", "fe80::2", "::1"])),
            ips(&["127.0.0.1", "::1"])
        );
        assert_eq!(choose(false, &ips(&["::1", "fe80::2"])), Vec::<IpAddr>::new());
        assert_eq!(choose(true, &[]), Vec::<IpAddr>::new());
    }

    #[test]
    fn candidates_are_bounded() {
        let many: Vec<IpAddr> = (0..40u8).map(|i| IpAddr::from([10, 0, 0, i])).collect();
        let got = choose(false, &many);
        assert_eq!(got.len(), MAX_CANDIDATES);
        assert_eq!(got[..], many[..MAX_CANDIDATES]);
    }

    #[test]
    fn public_ip_is_the_one_candidate_and_every_destination() {
        let never = || -> io::Result<Vec<IpAddr>> { panic!("no enumeration with public_ip") };
        for bound in ["0.0.0.0:5000", "127.0.0.1:5000", "[::]:5000"] {
            let p = plan(addr(bound), Some("203.0.113.7".parse().unwrap()), never).unwrap();
            assert_eq!(p.candidates, vec![addr("203.0.113.7:5000")]);
            assert!(!p.destination.per_datagram());
            assert_eq!(
                p.destination.of(Some("10.0.0.5".parse().unwrap())),
                addr("203.0.113.7:5000")
            );
            assert_eq!(p.destination.of(None), addr("203.0.113.7:5000"));
        }
    }

    #[test]
    fn a_specific_listen_ip_is_the_one_candidate() {
        let never = || -> io::Result<Vec<IpAddr>> { panic!("no enumeration for a specific IP") };
        let p = plan(addr("10.1.2.3:7882"), None, never).unwrap();
        assert_eq!(p.candidates, vec![addr("10.1.2.3:7882")]);
        assert_eq!(p.destination, Destination::Fixed(addr("10.1.2.3:7882")));
        let p = plan(addr("[::ffff:10.1.2.3]:7882"), None, never).unwrap();
        assert_eq!(p.candidates, vec![addr("10.1.2.3:7882")], "canonical");
    }

    #[test]
    fn a_wildcard_listen_takes_each_datagrams_destination() {
        let p = plan(addr("0.0.0.0:7882"), None, || Ok(ips(HOST))).unwrap();
        assert_eq!(
            p.candidates,
            vec![
                addr("10.1.2.3:7882"),
                addr("192.168.7.9:7882"),
                addr("172.16.0.4:7882")
            ]
        );
        assert!(p.destination.per_datagram());
        assert_eq!(
            p.destination.of(Some("192.168.7.9".parse().unwrap())),
            addr("192.168.7.9:7882")
        );
        assert_eq!(p.destination.of(None), addr("10.1.2.3:7882"));
        let p = plan(addr("[::]:7882"), None, || Ok(ips(HOST))).unwrap();
        assert!(p.candidates.contains(&addr("[2001:db8::5]:7882")));
        // Nothing to advertise, or no way to list: an error at start, not a silent failure.
        assert!(plan(addr("0.0.0.0:1"), None, || Ok(ips(&["::1"]))).is_err());
        assert!(plan(addr("0.0.0.0:1"), None, || Err(io::Error::other("no getifaddrs"))).is_err());
    }

    #[test]
    fn this_hosts_addresses_include_loopback() {
        let got = host_ips().unwrap();
        assert!(got.contains(&"127.0.0.1".parse().unwrap()), "{got:?}");
        assert!(!choose(false, &got).is_empty());
    }
}
