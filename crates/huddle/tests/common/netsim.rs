//! A server behind impairment proxies, one pair per client (see `huddle-netsim`).
//!
//! The server advertises its media candidate on 127.0.0.2, where a [`UdpProxy`] relays to the
//! real media port on 127.0.0.1. Each client gets its own loopback IP (127.0.0.10, .11, …) and a
//! [`TcpProxy`] there in front of the signaling port: the SDK binds its media sockets to the IP
//! that routes to its signaling host, so everything a client sends passes its own proxies and
//! can be impaired alone.

use std::net::{IpAddr, SocketAddr};

use huddle::EngineProfile;
use huddle_media::impair::Impairment;
use huddle_netsim::{Direction, Scope, TcpProxy, UdpProxy};
use huddle_server::{BackgroundServer, ServerConfig};

use super::{APP_ID, app, fast_config};

/// Where the server's media candidate is advertised (the UDP proxy listens there).
pub const MEDIA_IP: &str = "127.0.0.2";

/// A server and the UDP proxy in front of its media port.
pub struct Net {
    pub server: BackgroundServer,
    pub udp: UdpProxy,
}

impl Net {
    /// A test server (see `common::server`) with `tweak` applied to its config, behind the
    /// proxy. `seed` seeds every loss and jitter draw.
    pub fn start_with(seed: u64, tweak: impl FnOnce(&mut ServerConfig)) -> Net {
        let mut config = ServerConfig::for_tests(vec![app()]);
        config.public_ip = Some(MEDIA_IP.parse().unwrap());
        tweak(&mut config);
        let server = BackgroundServer::start(config).expect("server starts");
        let media = server.udp_addr();
        let udp = UdpProxy::start(
            SocketAddr::new(MEDIA_IP.parse().unwrap(), media.port()),
            SocketAddr::new("127.0.0.1".parse().unwrap(), media.port()),
            seed,
        )
        .expect("UDP proxy starts");
        Net { server, udp }
    }

    /// [`Net::start_with`] the test config as it is.
    pub fn start(seed: u64) -> Net {
        Net::start_with(seed, |_| {})
    }

    /// A client on its own loopback IP `127.0.0.{host}` (host ≥ 10), with a TCP proxy there.
    pub fn client(&self, host: u8) -> Client {
        assert!(host >= 10, "127.0.0.1 and .2 are the server's");
        let ip: IpAddr = format!("127.0.0.{host}").parse().unwrap();
        let tcp = TcpProxy::start(SocketAddr::new(ip, 0), self.server.addr()).expect("TCP proxy starts");
        Client { ip, tcp }
    }

    /// Impairs one direction of one client's media (or of every client's, with `None`).
    pub fn impair(&self, client: Option<&Client>, direction: Direction, impairment: Impairment) {
        let scope = client.map_or(Scope::All, |c| Scope::Ip(c.ip));
        self.udp.set_impairment(scope, direction, impairment);
    }

    /// Starts or ends a full network outage of `client`: its media datagrams are dropped and its
    /// signaling bytes held (delivered when the outage ends, unless a side gave up before).
    pub fn outage(&self, client: &Client, on: bool) {
        client.tcp.set_stalled(on);
        self.udp.set_outage(Scope::Ip(client.ip), on);
    }
}

/// One client's address and signaling proxy.
pub struct Client {
    pub ip: IpAddr,
    pub tcp: TcpProxy,
}

impl Client {
    /// The signaling URL through this client's proxy.
    pub fn ws_url(&self) -> String {
        format!("ws://{}{}", self.tcp.local_addr(), huddle_proto::SIGNALING_PATH)
    }

    /// A profile for the test app through this client's proxy.
    pub fn profile(&self) -> EngineProfile {
        let mut p = EngineProfile::new(APP_ID, self.ws_url());
        p.app_sign = Some(app().app_sign.to_hex());
        p.config = fast_config();
        p
    }
}
