//! The per-address limits on WebSocket connections (rate and open count) and the client's
//! address behind a trusted proxy.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::ServerState;
use huddle_proto::{ErrorCode, HuddleError};

/// The per-address table, pruned of idle addresses when it doubles (amortized O(1) per new
/// connection however many addresses connect).
pub(super) struct PerIpTable {
    pub(super) map: HashMap<IpAddr, PerIp>,
    pub(super) prune_at: usize,
}

/// What the per-address limits know of one IP address.
pub(super) struct PerIp {
    pub(super) open: usize,
    /// New connections allowed now (refilled at `connection_rate_per_ip`).
    pub(super) tokens: f64,
    pub(super) at: Instant,
}

/// Past this many tracked addresses (or twice as many as the last pruning kept), idle ones (no
/// connection, bucket full) are forgotten.
pub(super) const PER_IP_PRUNE: usize = 4096;

/// The address the per-address limits count under: an IPv4 address (also when mapped into IPv6),
/// or the /64 prefix of an IPv6 address (one host usually holds a whole /64, so counting single
/// IPv6 addresses would limit nothing).
pub(super) fn limit_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
    }
}

/// One entry of `X-Forwarded-For`: an IP address, maybe with a port (`192.0.2.1:4711`,
/// `[2001:db8::1]:4711`) or in brackets.
pub(super) fn parse_forwarded_ip(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| {
            entry
                .strip_prefix('[')
                .and_then(|e| e.strip_suffix(']'))
                .and_then(|e| e.parse().ok())
        })
}

/// An admitted connection's place in its address's count; released on drop.
pub(super) struct IpSlot {
    pub(super) state: ServerState,
    pub(super) ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut table = self.state.0.per_ip.lock();
        if let Some(e) = table.map.get_mut(&self.ip) {
            e.open = e.open.saturating_sub(1);
        }
    }
}

impl ServerState {
    /// Whether `ip` is one of `trusted_proxies`.
    pub(super) fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0
            .config
            .trusted_proxies
            .iter()
            .any(|p| p.to_canonical() == ip)
    }

    /// The address of the client that sent a request over a connection from `peer`: `peer`
    /// itself, unless `peer` is one of `trusted_proxies`; then the rightmost address of the
    /// `X-Forwarded-For` header(s) that is not itself a trusted proxy (each proxy appends the
    /// address it got the request from, so everything left of that one is the client's word).
    /// `peer` if the header is missing, or that entry is not an IP address.
    ///
    /// This is the address the per-address WebSocket limits count and the loopback-only
    /// answers of `/api/info` check.
    ///
    /// ```
    /// use axum::http::HeaderMap;
    /// use huddle_server::{ServerConfig, ServerState, test_app};
    ///
    /// let mut config = ServerConfig::for_tests(vec![test_app(1)]);
    /// config.trusted_proxies = vec!["10.0.0.2".parse().unwrap()];
    /// let state = ServerState::new(config).unwrap();
    /// let mut headers = HeaderMap::new();
    /// // The client wrote the first entry itself; the proxy appended the address it saw.
    /// headers.insert("x-forwarded-for", "192.0.2.66, 203.0.113.7".parse().unwrap());
    /// let ip = |peer: &str| state.client_ip(peer.parse().unwrap(), &headers).to_string();
    /// assert_eq!(ip("10.0.0.2"), "203.0.113.7"); // through the trusted proxy
    /// assert_eq!(ip("198.51.100.1"), "198.51.100.1"); // anyone else: the header is ignored
    /// ```
    pub fn client_ip(&self, peer: IpAddr, headers: &axum::http::HeaderMap) -> IpAddr {
        if !self.is_trusted_proxy(peer) {
            return peer;
        }
        let entries: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        for entry in entries.iter().rev() {
            match parse_forwarded_ip(entry) {
                Some(ip) if self.is_trusted_proxy(ip) => continue,
                Some(ip) => return ip.to_canonical(),
                None => return peer,
            }
        }
        peer
    }
}

impl ServerState {
    /// Admits a new connection from `ip` under the per-address limits: the connection rate
    /// (1009004 beyond it; an attempt refused by it does not count) and the open connections
    /// (1009006).
    pub(super) fn admit(&self, ip: IpAddr) -> Result<IpSlot, HuddleError> {
        let ip = limit_key(ip);
        let c = &self.0.config;
        let now = Instant::now();
        let burst = f64::from(c.connection_burst_per_ip.max(1));
        let mut table = self.0.per_ip.lock();
        if table.map.len() >= table.prune_at && !table.map.contains_key(&ip) {
            let rate = f64::from(c.connection_rate_per_ip);
            table.map.retain(|_, e| {
                e.open > 0 || (rate > 0.0 && e.tokens + now.duration_since(e.at).as_secs_f64() * rate < burst)
            });
            table.prune_at = (2 * table.map.len()).max(PER_IP_PRUNE);
        }
        let e = table.map.entry(ip).or_insert(PerIp {
            open: 0,
            tokens: burst,
            at: now,
        });
        if c.connection_rate_per_ip > 0 {
            let elapsed = now.saturating_duration_since(e.at).as_secs_f64();
            e.tokens = (e.tokens + elapsed * f64::from(c.connection_rate_per_ip)).min(burst);
            e.at = now;
            if e.tokens < 1.0 {
                return Err(HuddleError::new(
                    ErrorCode::RATE_LIMITED,
                    format!(
                        "more than {} new connections a second from this address (bursts of {})",
                        c.connection_rate_per_ip, c.connection_burst_per_ip
                    ),
                ));
            }
            e.tokens -= 1.0;
        }
        if c.max_connections_per_ip > 0 && e.open >= c.max_connections_per_ip {
            return Err(HuddleError::new(
                ErrorCode::SERVER_BUSY,
                format!(
                    "more than {} open connections from this address",
                    c.max_connections_per_ip
                ),
            ));
        }
        e.open += 1;
        Ok(IpSlot {
            state: self.clone(),
            ip,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServerConfig;

    fn state(f: impl FnOnce(&mut ServerConfig)) -> ServerState {
        let mut config = ServerConfig::for_tests(vec![crate::config::test_app(1)]);
        f(&mut config);
        ServerState::new(config).unwrap()
    }

    fn ip(n: u32) -> IpAddr {
        IpAddr::from(n.to_be_bytes())
    }

    #[test]
    fn per_address_limits_count_open_connections_and_new_ones() {
        let s = state(|c| {
            c.max_connections_per_ip = 2;
            c.connection_rate_per_ip = 1;
            c.connection_burst_per_ip = 3;
        });
        let a = s.admit(ip(1)).unwrap();
        let _b = s.admit(ip(1)).unwrap();
        assert_eq!(s.admit(ip(1)).err().unwrap().code, ErrorCode::SERVER_BUSY);
        // Another address is not affected.
        let _c = s.admit(ip(2)).unwrap();
        drop(a);
        // The place is free, but the burst of 3 is spent (the refused attempt took a token too).
        assert_eq!(s.admit(ip(1)).err().unwrap().code, ErrorCode::RATE_LIMITED);
        // Off when 0.
        let s = state(|c| {
            c.max_connections_per_ip = 0;
            c.connection_rate_per_ip = 0;
        });
        let slots: Vec<_> = (0..5000).map(|_| s.admit(ip(1)).unwrap()).collect();
        assert_eq!(s.0.per_ip.lock().map[&ip(1)].open, 5000);
        drop(slots);
        assert_eq!(s.0.per_ip.lock().map[&ip(1)].open, 0);
    }

    #[test]
    fn ipv6_addresses_count_by_their_64_prefix() {
        let s = state(|c| {
            c.max_connections_per_ip = 2;
            c.connection_rate_per_ip = 0;
        });
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        let _a = s.admit(v6("2001:db8:1:2::1")).unwrap();
        let _b = s.admit(v6("2001:db8:1:2:ffff::9")).unwrap();
        assert_eq!(
            s.admit(v6("2001:db8:1:2:abcd::7")).err().unwrap().code,
            ErrorCode::SERVER_BUSY
        );
        let _c = s.admit(v6("2001:db8:1:3::1")).unwrap();
        // An IPv4-mapped address is its IPv4 address.
        let _d = s.admit(v6("::ffff:192.0.2.1")).unwrap();
        let _e = s.admit(v6("192.0.2.1")).unwrap();
        assert_eq!(
            s.admit(v6("192.0.2.1")).err().unwrap().code,
            ErrorCode::SERVER_BUSY
        );
    }

    #[test]
    fn the_per_address_table_forgets_idle_addresses() {
        let s = state(|c| c.connection_rate_per_ip = 1_000_000_000);
        let mut held = Vec::new();
        for n in 0..20_000 {
            let slot = s.admit(ip(n)).unwrap();
            // One address in a hundred keeps its connection open.
            if n % 100 == 0 {
                held.push(slot);
            }
        }
        let len = s.0.per_ip.lock().map.len();
        assert!(len <= 2 * PER_IP_PRUNE, "{len} addresses tracked");
        drop(held);
    }
}
