//! Where the generator may send: loopback only, or the one address it binds when that address lives
//! in a network namespace of its own.
//!
//! The rule of the machines this runs on: benchmark traffic goes to 127.0.0.0/8 or ::1, or to
//! addresses inside a network namespace the benchmark made itself. `scripts/bench.sh` makes one
//! (`ip netns add`, `lo` up, one namespace-local interface with 10.77.0.1) and runs Janus, Huddle
//! and the generator in it; Janus's ICE leaves loopback out, so its clients there bind 10.77.0.1.
//!
//! Three checks keep every code path inside that rule:
//! - [`check_bind`]: the clients' address ([`Plan::bind`](crate::Plan::bind), default 127.0.0.1)
//!   is loopback, or a namespace-only address: the process is not in the machine's network
//!   namespace (the initial one, or PID 1's) and its namespace has no default route (nothing
//!   outside is reachable from it);
//! - [`check_url`]: signaling goes to loopback or to that bind address;
//! - [`may_send`]: every datagram a client peer connection sends goes to loopback or to the bind
//!   address, whatever candidates the server offers (others are dropped).

use std::net::{IpAddr, Ipv4Addr};

use crate::LoadError;

/// The clients' address unless told otherwise.
pub const DEFAULT_BIND: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Whether a client bound to `bind` may send to `dest`: loopback, or `bind` itself (a local
/// address; a non-loopback one passed [`check_bind`]).
pub fn may_send(bind: IpAddr, dest: IpAddr) -> bool {
    let dest = dest.to_canonical();
    dest.is_loopback() || (!dest.is_unspecified() && dest == bind.to_canonical())
}

/// Accepts a loopback address; a non-loopback one only inside a network namespace of its own that
/// has no default route (see the module).
pub fn check_bind(bind: IpAddr) -> Result<(), LoadError> {
    let bind = bind.to_canonical();
    if bind.is_loopback() {
        return Ok(());
    }
    let refuse = |why: String| {
        Err(LoadError::Plan(format!(
            "bind address {bind}: {why}; outside a network namespace made for the run, clients \
             bind loopback only (scripts/bench.sh runs non-loopback loads in `ip netns`)"
        )))
    };
    if bind.is_unspecified() || bind.is_multicast() {
        return refuse("not a unicast address".into());
    }
    match own_namespace() {
        Ok(true) => {}
        Ok(false) => return refuse("this process is in the machine's network namespace".into()),
        Err(e) => return refuse(format!("cannot tell the network namespace ({e})")),
    }
    match has_default_route() {
        Ok(false) => Ok(()),
        Ok(true) => refuse("this network namespace has a default route".into()),
        Err(e) => refuse(format!("cannot read the routes ({e})")),
    }
}

/// Accepts a `ws://` or `wss://` URL whose host is loopback (`localhost`, 127.x, `[::1]`) or
/// `bind`.
pub fn check_url(url: &str, bind: IpAddr) -> Result<(), LoadError> {
    let bad = |why: &str| Err(LoadError::Plan(format!("signaling URL {url}: {why}")));
    let Some(rest) = url.strip_prefix("ws://").or_else(|| url.strip_prefix("wss://")) else {
        return bad("not ws:// or wss://");
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return bad("no user info, please");
    }
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.split(':').next().unwrap_or(""),
    };
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(());
    }
    match host.parse::<IpAddr>() {
        Ok(ip) if may_send(bind, ip) => Ok(()),
        Ok(_) => bad("the host is neither loopback nor the clients' bind address"),
        Err(_) => bad("the host must be an IP address (or localhost)"),
    }
}

/// The inode of the machine's (initial) network namespace in `/proc/*/ns/net`: fixed since Linux
/// 6.14 (`PROC_NET_INIT_INO`), numbered at boot before.
const INIT_NET_INO: u64 = 0xEFFF_FFF9;

/// Whether this process's network namespace is not the machine's: not the initial one, and not
/// PID 1's when that can be read (a sandbox may hide PID 1; the missing default route is then the
/// remaining check).
fn own_namespace() -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let me = std::fs::metadata("/proc/self/ns/net")?;
    if me.ino() == INIT_NET_INO {
        return Ok(false);
    }
    match std::fs::metadata("/proc/1/ns/net") {
        Ok(init) => Ok((me.dev(), me.ino()) != (init.dev(), init.ino())),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Ok(true),
        Err(e) => Err(e),
    }
}

/// Whether this network namespace has an IPv4 or IPv6 default route (`/proc/net` is per
/// namespace).
fn has_default_route() -> std::io::Result<bool> {
    let v4 = std::fs::read_to_string("/proc/net/route")?;
    // Iface Destination Gateway …: a default route has destination 00000000 and mask 00000000.
    let v4_default = v4.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 7 && f[1] == "00000000" && f[7] == "00000000"
    });
    // dest prefix-len …: ::/0 (the loopback-bound unreachable route of the kernel has device lo).
    let v6_default = std::fs::read_to_string("/proc/net/ipv6_route")
        .map(|t| {
            t.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() == 10 && f[0].bytes().all(|b| b == b'0') && f[1] == "00" && f[9] != "lo"
            })
        })
        .unwrap_or(false);
    Ok(v4_default || v6_default)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn sends_only_to_loopback_or_the_bind_address() {
        let lo = ip("127.0.0.1");
        assert!(may_send(lo, ip("127.0.0.1")));
        assert!(may_send(lo, ip("127.8.9.10")));
        assert!(may_send(lo, ip("::1")));
        assert!(may_send(lo, ip("::ffff:127.0.0.1")));
        assert!(!may_send(lo, ip("192.0.2.2")));
        assert!(!may_send(lo, ip("8.8.8.8")));
        assert!(!may_send(lo, ip("0.0.0.0")));
        assert!(!may_send(lo, ip("fd00::2")));
        let ns = ip("10.77.0.1");
        assert!(may_send(ns, ip("10.77.0.1")));
        assert!(may_send(ns, ip("::ffff:10.77.0.1")));
        assert!(may_send(ns, ip("127.0.0.1")));
        assert!(!may_send(ns, ip("10.77.0.2")));
        assert!(!may_send(ns, ip("192.0.2.2")));
        assert!(!may_send(ip("0.0.0.0"), ip("0.0.0.0")));
    }

    #[test]
    fn loopback_binds_anywhere_others_not_in_the_machines_namespace() {
        check_bind(ip("127.0.0.1")).unwrap();
        check_bind(ip("::1")).unwrap();
        assert!(check_bind(ip("0.0.0.0")).is_err());
        assert!(check_bind(ip("::")).is_err());
        assert!(check_bind(ip("224.0.0.1")).is_err());
        // The tests run in the machine's namespace (or one with a default route): refused.
        if !own_namespace().unwrap_or(false) || has_default_route().unwrap_or(true) {
            let err = check_bind(ip("192.0.2.2")).unwrap_err().to_string();
            assert!(err.contains("bind address 192.0.2.2"), "{err}");
        }
    }

    #[test]
    fn signaling_only_to_loopback_or_the_bind_address() {
        let lo = ip("127.0.0.1");
        let ns = ip("10.77.0.1");
        check_url("ws://127.0.0.1:8188", lo).unwrap();
        check_url("ws://localhost:7880/ws", lo).unwrap();
        check_url("ws://[::1]:7880/ws", lo).unwrap();
        check_url("ws://10.77.0.1:7880/ws", ns).unwrap();
        check_url("ws://127.0.0.1:8188", ns).unwrap();
        assert!(check_url("ws://10.77.0.1:7880/ws", lo).is_err());
        assert!(check_url("ws://192.0.2.2:8188", lo).is_err());
        assert!(check_url("ws://example.com/ws", lo).is_err());
        assert!(check_url("ws://127.0.0.1@192.0.2.2/ws", lo).is_err());
        assert!(check_url("http://127.0.0.1:8188", lo).is_err());
    }
}
