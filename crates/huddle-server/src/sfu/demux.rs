//! Demultiplexing: which PC a datagram from the one UDP socket (or an ICE-TCP frame) is for —
//! STUN by the server's ICE username fragment, which teaches the address table, the rest by
//! the remote address.

use std::net::SocketAddr;
use std::time::Instant;

use str0m::Input;
use str0m::net::{Protocol, Receive};
use tracing::debug;

use super::Sfu;
use super::types::bump;

/// Remote addresses remembered per PC (a client's latest addresses that passed a connectivity
/// check).
pub(super) const MAX_ADDRS_PER_PC: usize = 4;

/// A datagram that looks like RTP, to ask an `Rtc` whether it would accept non-STUN traffic from an
/// address (that is, whether a connectivity check from there succeeded).
pub(super) const PROBE_RTP: [u8; 12] = [0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

impl Sfu {
    /// Handles a batch of datagrams (as one `recvmmsg` returns them) and flushes the written
    /// PCs once at the end instead of after each datagram: a PC written by several datagrams of
    /// the batch is given the time and drained once. For the benchmark that asks whether this
    /// alone would make the fast path unnecessary (`benches/forward.rs`).
    #[cfg(any(test, feature = "testkit"))]
    pub fn handle_datagram_batch(&mut self, now: Instant, batch: &[(SocketAddr, Vec<u8>)]) {
        let to = self.first_candidate();
        for (from, buf) in batch {
            self.receive(now, Protocol::Udp, *from, to, buf);
        }
        self.flush(now);
    }

    /// Whether datagrams from `addr` reach a PC (a connectivity check from there passed): the
    /// sharded media plane's router learns the address after a STUN datagram.
    pub fn routes_address(&self, addr: SocketAddr) -> bool {
        self.by_addr.contains_key(&(Protocol::Udp, addr))
    }

    /// Handles one datagram received from `from` on the media socket, sent to the first
    /// candidate (see [`Sfu::handle_datagram_to`]).
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, buf: &[u8]) {
        let to = self.first_candidate();
        self.handle_datagram_to(now, from, to, buf);
    }

    /// Handles one datagram received from `from` on the media socket, sent to the candidate
    /// `to` (with several candidates, the address the socket says it arrived on). A connectivity
    /// check to an address that is not a candidate is dropped by the PC's ICE agent.
    pub fn handle_datagram_to(&mut self, now: Instant, from: SocketAddr, to: SocketAddr, buf: &[u8]) {
        self.handle_input(now, Protocol::Udp, from, to, buf);
    }

    /// Handles one datagram received over `proto` from `from`, sent to the candidate `to`: a UDP
    /// datagram, or (TCP) a frame of an ICE-TCP connection (RFC 4571) accepted on `to`, whose
    /// answers leave as transmits with that protocol and destination.
    pub fn handle_input(
        &mut self,
        now: Instant,
        proto: Protocol,
        from: SocketAddr,
        to: SocketAddr,
        buf: &[u8],
    ) {
        self.receive(now, proto, from, to, buf);
        self.flush(now);
    }

    /// [`Sfu::handle_input`] but for the flush, which the caller does.
    pub(super) fn receive(
        &mut self,
        now: Instant,
        proto: Protocol,
        from: SocketAddr,
        to: SocketAddr,
        buf: &[u8],
    ) {
        bump(&self.counters.datagrams_in);
        let is_stun = buf.first().is_some_and(|b| *b < 2);
        let id = if is_stun {
            // The server's username fragment comes first in the USERNAME of a check to it.
            str0m::ice::StunMessage::parse(buf).ok().and_then(|m| {
                let (local, _) = m.split_username()?;
                self.by_ufrag.get(local).copied()
            })
        } else {
            self.by_addr.get(&(proto, from)).copied()
        };
        let Some(id) = id else {
            bump(&self.counters.dropped_unknown);
            return;
        };
        let Ok(receive) = Receive::new(proto, from, to, buf) else {
            bump(&self.counters.dropped_invalid);
            return;
        };
        let input = Input::Receive(now, receive);
        let Some(pc) = self.pc(id) else { return };
        if !pc.rtc.accepts(&input) {
            bump(&self.counters.dropped_invalid);
            return;
        }
        if let Err(e) = pc.rtc.handle_input(input) {
            debug!(error = %e, "media input refused");
            self.fail_pc(now, id, "the connection failed (bad input)");
            return;
        }
        if is_stun {
            self.learn_address(now, id, proto, from, to);
        }
        self.drive(id, now);
    }

    /// After a connectivity check from `from`, routes that address's other traffic to the PC if
    /// its ICE agent now accepts it.
    pub(super) fn learn_address(
        &mut self,
        now: Instant,
        id: usize,
        proto: Protocol,
        from: SocketAddr,
        to: SocketAddr,
    ) {
        let key = (proto, from);
        if self.by_addr.get(&key) == Some(&id) {
            return;
        }
        let Some(pc) = self.pc(id) else { return };
        let Ok(probe) = Receive::new(proto, from, to, &PROBE_RTP) else {
            return;
        };
        if !pc.rtc.accepts(&Input::Receive(now, probe)) {
            return;
        }
        // A client whose address keeps changing (NAT rebinding, a new network) keeps its
        // latest addresses.
        let oldest = (pc.addrs.len() >= MAX_ADDRS_PER_PC).then(|| pc.addrs.remove(0));
        pc.addrs.push(key);
        if let Some(old) = oldest
            && self.by_addr.get(&old) == Some(&id)
        {
            self.by_addr.remove(&old);
        }
        // A newer PC from the same address (a client reusing its port) takes the address over.
        self.by_addr.insert(key, id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use crate::sfu::{Counters, SfuConfig};

    #[test]
    pub(super) fn junk_datagrams_are_dropped_and_counted() {
        let counters = Arc::new(Counters::default());
        let mut sfu = Sfu::new(SfuConfig::new("127.0.0.1:9".parse().unwrap()), counters.clone());
        let now = Instant::now();
        let from: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let mut stun = vec![0u8, 1, 0, 8, 0x21, 0x12, 0xa4, 0x42];
        stun.extend_from_slice(&[7; 12]);
        stun.extend_from_slice(&[0, 6, 0, 4, b'a', b':', b'b', 0]);
        let junk: Vec<Vec<u8>> = vec![
            vec![],
            vec![0],
            vec![0x80; 3],
            vec![0xff; 1500],
            vec![22; 40],
            stun,
            (0..=255).collect(),
        ];
        for j in &junk {
            sfu.handle_datagram(now, from, j);
        }
        let s = counters.snapshot();
        assert_eq!(s.datagrams_in, junk.len() as u64);
        assert_eq!(s.dropped_unknown + s.dropped_invalid, junk.len() as u64);
        assert!(sfu.poll_transmit().is_none() && sfu.poll_signal().is_none());
        sfu.check_invariants().unwrap();
    }
}
