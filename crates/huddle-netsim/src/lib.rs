//! Network trouble on real sockets, for Huddle's tests and quality measurements.
//!
//! These machines' kernels have no `netem`, so delay, jitter and reordering cannot be made by the
//! kernel between network namespaces. This crate makes them in user space, between the clients
//! and the server, on loopback:
//!
//! - [`UdpProxy`] stands where the server's media candidate is advertised and relays datagrams to
//!   the real media port through one upstream socket per client. Each direction of each client
//!   (told apart by its IP address: give every client its own `127.0.0.x`) goes through a seeded
//!   [`huddle_media::impair::Link`]: loss (random or in bursts), delay, jitter, reordering and
//!   outages.
//! - [`TcpProxy`] stands in front of the signaling port: it can stall every connection (bytes
//!   are held, as during an outage, and delivered when it ends) or cut them all at once.
//!
//! An SDK client binds its media socket to the IP that routes to its signaling host, so pointing
//! a client at a [`TcpProxy`] on `127.0.0.5` also makes its media come from `127.0.0.5`: one proxy
//! pair then impairs that client alone.
//!
//! ```
//! use huddle_netsim::{Direction, Scope, TcpProxy, UdpProxy};
//! use huddle_media::impair::Impairment;
//! use std::time::Duration;
//!
//! // A server's media port would be here; any UDP socket will do for the example.
//! let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
//! let proxy = UdpProxy::start("127.0.0.1:0".parse().unwrap(), server.local_addr().unwrap(), 7).unwrap();
//! let mut bad = Impairment::default();
//! bad.loss = 0.3;
//! bad.delay = Duration::from_millis(50);
//! proxy.set_impairment(Scope::All, Direction::Down, bad);
//! proxy.set_outage(Scope::All, true);
//! proxy.set_outage(Scope::All, false);
//! ```

mod tcp;
mod udp;

pub use tcp::TcpProxy;
pub use udp::{UdpProxy, UdpProxyStats};

use std::net::IpAddr;

/// Which clients a setting applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Every client, present and future, that has no setting of its own.
    All,
    /// The clients sending from this IP address.
    Ip(IpAddr),
}

/// A direction through a proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Client to server.
    Up,
    /// Server to client.
    Down,
}
