//! ICE over TCP (RFC 6544) for clients whose network blocks UDP: the server's passive candidates
//! on one TCP port (`tcp_port`, default 7881), each connection carrying the datagrams of one peer
//! connection framed as RFC 4571 says (a 16-bit length before each).
//!
//! - **A connection belongs to one shard**: the shard of its first frame, which must be a STUN
//!   check whose USERNAME names a shard ([`stun_shard`]) and arrive within
//!   [`FIRST_FRAME_TIMEOUT`]; anything else closes it. The shard checks the message itself (its
//!   PC's ICE agent: credentials, integrity), as for UDP.
//! - **Frames in**: each goes to the shard as [`ShardMsg::TcpFrame`], counted against the same
//!   bound as the UDP datagrams handed over ([`MAX_QUEUED_DATAGRAMS`]): a flood costs frames,
//!   never memory. A frame longer than [`MAX_DATAGRAM`] closes the connection (no WebRTC
//!   datagram is that long).
//! - **Frames out**: the shard keeps each connection's sender ([`ShardMsg::TcpOpen`]) and queues
//!   the framed transmits of its PCs there; a connection whose queue is full (the client reads
//!   too slowly) loses them, as a congested UDP path would, rather than delaying its shard.
//! - **Bounds**: [`MAX_TCP_CONNECTIONS`] at once, `max_connections_per_ip` per address, and a
//!   connection with no frame for [`IDLE_TIMEOUT`] is closed (clients send consent checks every
//!   few seconds).
//!
//! This path allocates a buffer per frame, unlike the UDP path: it is the fallback, for the few
//! clients that cannot use UDP, and its cost is dominated by TCP itself.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use huddle_proto::framing::FrameDecoder;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::candidates::Destination;
use super::mmsg::Waker;
use super::{MAX_DATAGRAM, MAX_QUEUED_DATAGRAMS, ShardMsg};
use crate::sfu::Counters;
use crate::sfu::shard::stun_shard;

/// ICE-TCP connections at once, at most; beyond, new ones are closed at once.
pub(crate) const MAX_TCP_CONNECTIONS: usize = 10_000;

/// How long a new connection may take to send its first frame (a STUN check).
pub(crate) const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection that sends nothing for this long is closed (its PC has consent checks every few
/// seconds while it lives).
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Framed datagrams queued for one connection's writer; beyond, new ones are dropped.
pub(crate) const WRITE_QUEUE: usize = 256;

/// What the connections need of the media plane.
#[derive(Clone)]
pub(crate) struct Plane {
    /// Every shard's channel.
    pub(crate) shards: Vec<mpsc::Sender<ShardMsg>>,
    /// Per shard: datagrams handed over and not yet handled.
    pub(crate) queues: Vec<Arc<AtomicUsize>>,
    /// Wakes thread 0, where shard 0 runs.
    pub(crate) waker: Arc<Waker>,
    pub(crate) counters: Arc<Counters>,
    /// Which candidate a connection accepted on a local address counts as reached (its IP; the
    /// port is the TCP port).
    pub(crate) destination: Destination,
    pub(crate) port: u16,
    /// `max_connections_per_ip` (0: no limit).
    pub(crate) max_per_ip: usize,
}

impl Plane {
    fn send(&self, shard: usize, msg: ShardMsg) -> bool {
        let ok = self.shards[shard].send(msg).is_ok();
        if shard == 0 {
            self.waker.wake();
        }
        ok
    }
}

/// Binds the ICE-TCP listener on `ip` (a `[::]` one takes IPv4 too), port `port` (0: a free
/// one).
pub(crate) fn bind(ip: IpAddr, port: u16) -> io::Result<std::net::TcpListener> {
    let addr = SocketAddr::new(ip, port);
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    if addr.is_ipv6() && ip.is_unspecified() {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Accepts ICE-TCP connections on `listener` until `shutdown`.
pub(crate) async fn serve(
    listener: std::net::TcpListener,
    plane: Plane,
    mut shutdown: watch::Receiver<bool>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %e, "ICE-TCP listener unusable: media over TCP is off");
            return;
        }
    };
    let open = Arc::new(AtomicUsize::new(0));
    let per_ip: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let (stream, from) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: do not spin.
                debug!(error = %e, "ICE-TCP accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let from = SocketAddr::new(from.ip().to_canonical(), from.port());
        let Some(slot) = Slot::take(&open, &per_ip, from.ip(), plane.max_per_ip) else {
            debug!(%from, "ICE-TCP connection refused: limit reached");
            continue;
        };
        let Ok(local) = stream.local_addr() else { continue };
        let to = SocketAddr::new(
            plane.destination.of(Some(local.ip().to_canonical())).ip(),
            plane.port,
        );
        let _ = stream.set_nodelay(true);
        let plane = plane.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            connection(stream, from, to, &plane, shutdown).await;
            drop(slot);
        });
    }
    info!("ICE-TCP listener stopped");
}

/// A connection's place in the limits, given back on drop.
struct Slot {
    open: Arc<AtomicUsize>,
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl Slot {
    fn take(
        open: &Arc<AtomicUsize>,
        per_ip: &Arc<Mutex<HashMap<IpAddr, usize>>>,
        ip: IpAddr,
        max_per_ip: usize,
    ) -> Option<Slot> {
        if open.fetch_add(1, Ordering::AcqRel) >= MAX_TCP_CONNECTIONS {
            open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let mut table = per_ip.lock();
        let n = table.entry(ip).or_default();
        if max_per_ip > 0 && *n >= max_per_ip {
            drop(table);
            open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        *n += 1;
        Some(Slot {
            open: open.clone(),
            per_ip: per_ip.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        let mut table = self.per_ip.lock();
        if let Some(n) = table.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                table.remove(&self.ip);
            }
        }
    }
}

/// Reads until the next whole frame: `Ok(None)` at the end of the stream.
async fn next_frame(
    stream: &mut (impl AsyncReadExt + Unpin),
    decoder: &mut FrameDecoder,
) -> io::Result<Option<Vec<u8>>> {
    let mut chunk = [0u8; 4096];
    loop {
        match decoder.next_frame() {
            Ok(Some(f)) => return Ok(Some(f)),
            Ok(None) => {}
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        decoder.push(&chunk[..n]);
    }
}

async fn connection(
    stream: TcpStream,
    from: SocketAddr,
    to: SocketAddr,
    plane: &Plane,
    mut shutdown: watch::Receiver<bool>,
) {
    let (mut rd, mut wr) = stream.into_split();
    let mut decoder = FrameDecoder::new(MAX_DATAGRAM);
    let first = tokio::time::timeout(FIRST_FRAME_TIMEOUT, next_frame(&mut rd, &mut decoder)).await;
    let (shard, first) = match first {
        Ok(Ok(Some(f))) => (stun_shard(&f, plane.shards.len()), f),
        _ => (None, Vec::new()),
    };
    let Some(shard) = shard else {
        debug!(%from, "ICE-TCP connection closed: no STUN check for this server first");
        plane.counters.count_unroutable();
        return;
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(WRITE_QUEUE);
    if !plane.send(shard, ShardMsg::TcpOpen { from, tx }) {
        return;
    }
    let writer = tokio::spawn(async move {
        while let Some(f) = rx.recv().await {
            if wr.write_all(&f).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    debug!(%from, %to, shard, "ICE-TCP connection");
    let mut pending = Some(first);
    loop {
        if let Some(datagram) = pending.take() {
            if plane.queues[shard].fetch_add(1, Ordering::AcqRel) >= MAX_QUEUED_DATAGRAMS {
                plane.queues[shard].fetch_sub(1, Ordering::AcqRel);
                plane.counters.count_overload();
            } else if !plane.send(shard, ShardMsg::TcpFrame { from, to, datagram }) {
                break;
            }
        }
        let read = tokio::select! {
            r = tokio::time::timeout(IDLE_TIMEOUT, next_frame(&mut rd, &mut decoder)) => r,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        match read {
            Ok(Ok(Some(f))) => pending = Some(f),
            Ok(Ok(None)) => break,
            Ok(Err(e)) => {
                debug!(%from, error = %e, "ICE-TCP connection closed");
                break;
            }
            Err(_) => {
                debug!(%from, "ICE-TCP connection idle: closed");
                break;
            }
        }
    }
    plane.send(shard, ShardMsg::TcpClosed { from });
    // The shard drops its sender on TcpClosed: the writer sends what is queued and ends.
    let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_are_read_across_reads_and_bad_ones_refused() {
        let mut d = FrameDecoder::new(MAX_DATAGRAM);
        let mut input: &[u8] = &[0, 2, 9, 8, 0, 1, 7];
        assert_eq!(next_frame(&mut input, &mut d).await.unwrap(), Some(vec![9, 8]));
        assert_eq!(next_frame(&mut input, &mut d).await.unwrap(), Some(vec![7]));
        assert_eq!(next_frame(&mut input, &mut d).await.unwrap(), None, "a clean end");
        let too_long = (MAX_DATAGRAM as u16 + 1).to_be_bytes();
        let mut d = FrameDecoder::new(MAX_DATAGRAM);
        assert!(next_frame(&mut &too_long[..], &mut d).await.is_err());
    }

    #[test]
    fn slots_bound_connections_per_address() {
        let open = Arc::new(AtomicUsize::new(0));
        let per_ip = Arc::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let a = Slot::take(&open, &per_ip, ip, 2).unwrap();
        let b = Slot::take(&open, &per_ip, ip, 2).unwrap();
        assert!(Slot::take(&open, &per_ip, ip, 2).is_none());
        assert!(Slot::take(&open, &per_ip, "192.0.2.2".parse().unwrap(), 2).is_some());
        drop(a);
        assert!(Slot::take(&open, &per_ip, ip, 2).is_some());
        drop(b);
        assert_eq!(open.load(Ordering::Acquire), 0);
        assert!(per_ip.lock().is_empty());
    }
}
