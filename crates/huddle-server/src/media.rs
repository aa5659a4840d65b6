//! The media plane's IO shell: one UDP socket and one tokio task around the sans-IO [`Sfu`].
//!
//! The task waits for a datagram, a command from signaling, a timer or the shutdown. After each
//! wake-up it reads every datagram already queued in the socket (up to a batch), runs the timers
//! that are due (so that they never starve under load), sends what the SFU queued without waiting
//! (a datagram the socket refuses is dropped and counted: UDP may lose it anyway) and delivers the
//! SFU's signaling messages to their sessions.
//!
//! Commands arrive on one channel, in the order signaling produced them under the registry lock,
//! so an offer and the close that follows it are never reordered. Offers in flight are bounded
//! ([`MAX_OFFERS_IN_FLIGHT`], beyond: 1009006); closes are bounded by the sessions and their
//! rate limit.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use socket2::SockRef;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::sfu::{Command, Counters, Sfu, SfuConfig};
use crate::signaling::ServerState;

/// Offers sent to the media task and not yet handled, at most.
pub(crate) const MAX_OFFERS_IN_FLIGHT: usize = 256;

/// Datagrams read in one go before the SFU's output is flushed.
const READ_BATCH: usize = 64;

/// The largest datagram read (larger ones are truncated and then refused by the SFU).
const MAX_DATAGRAM: usize = 2048;

/// Kernel buffer asked for each direction of the media socket, so that a burst (many players,
/// a keyframe) is not dropped while the task is busy. The kernel may cap it (`net.core.rmem_max`).
const SOCKET_BUFFER: usize = 4 << 20;

/// The signaling side's handle on the media task.
#[derive(Debug, Clone)]
pub(crate) struct MediaTx {
    tx: mpsc::UnboundedSender<Command>,
    offers_in_flight: Arc<AtomicUsize>,
}

impl MediaTx {
    /// Queues a command; offers are refused (`false`) when too many are in flight.
    pub(crate) fn send(&self, cmd: Command) -> bool {
        if matches!(cmd, Command::Offer(_))
            && self.offers_in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_OFFERS_IN_FLIGHT
        {
            self.offers_in_flight.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        self.tx.send(cmd).is_ok()
    }
}

/// Binds the media socket for `config`: the IP of `listen`, port `udp_port`.
pub(crate) fn bind(config: &crate::ServerConfig) -> io::Result<std::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind(SocketAddr::new(config.listen.ip(), config.udp_port))?;
    socket.set_nonblocking(true)?;
    let sock = socket2::SockRef::from(&socket);
    if let Err(e) = sock
        .set_recv_buffer_size(SOCKET_BUFFER)
        .and_then(|()| sock.set_send_buffer_size(SOCKET_BUFFER))
    {
        warn!(error = %e, "could not enlarge the media socket buffers");
    }
    Ok(socket)
}

/// Starts the media task on `socket` (within a tokio runtime). Returns the command handle and
/// the task.
pub(crate) fn spawn(
    state: ServerState,
    socket: std::net::UdpSocket,
    counters: Arc<Counters>,
) -> io::Result<(MediaTx, tokio::task::JoinHandle<()>)> {
    let local = socket.local_addr()?;
    let candidate = SocketAddr::new(state.config().public_ip, local.port());
    let socket = UdpSocket::from_std(socket)?;
    let (tx, rx) = mpsc::unbounded_channel();
    let offers_in_flight = Arc::new(AtomicUsize::new(0));
    let sfu = Sfu::new(SfuConfig::new(candidate), counters.clone());
    info!(%local, %candidate, "media plane listening");
    let shutdown = state.shutdown_receiver();
    let task = tokio::spawn(run(
        state,
        socket,
        sfu,
        rx,
        offers_in_flight.clone(),
        counters,
        shutdown,
    ));
    Ok((MediaTx { tx, offers_in_flight }, task))
}

async fn run(
    state: ServerState,
    socket: UdpSocket,
    mut sfu: Sfu,
    mut rx: mpsc::UnboundedReceiver<Command>,
    offers_in_flight: Arc<AtomicUsize>,
    counters: Arc<Counters>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut signals = Vec::new();
    loop {
        // Send what the last step produced, then deliver signaling messages.
        // Sends go straight to the kernel through the raw socket, not tokio's `try_send_to`: that
        // answers WouldBlock whenever the reactor has not (yet, or again) seen the socket
        // writable, which drops datagrams the kernel would have taken. A full socket buffer
        // still drops, as the network would.
        let raw = SockRef::from(&socket);
        while let Some(t) = sfu.poll_transmit() {
            if let Err(e) = raw.send_to(&t.contents, &t.destination.into()) {
                counters.count_send_failure();
                debug!(error = %e, to = %t.destination, "media send failed: dropped");
            }
        }
        while let Some(s) = sfu.poll_signal() {
            signals.push(s);
        }
        if !signals.is_empty() {
            state.deliver_media(&mut signals);
        }
        let now = Instant::now();
        let deadline = sfu
            .poll_timeout()
            .unwrap_or(now + Duration::from_secs(1))
            .min(now + Duration::from_secs(1));
        tokio::select! {
            biased;
            _ = shutdown.wait_for(|s| *s) => break,
            cmd = rx.recv() => {
                let Some(cmd) = cmd else { break };
                handle_command(&mut sfu, cmd, &offers_in_flight);
                // Take whatever else is queued now, within a batch.
                for _ in 0..READ_BATCH {
                    match rx.try_recv() {
                        Ok(cmd) => handle_command(&mut sfu, cmd, &offers_in_flight),
                        Err(_) => break,
                    }
                }
            }
            r = socket.recv_from(&mut buf) => {
                match r {
                    Ok((n, from)) => sfu.handle_datagram(Instant::now(), from, &buf[..n]),
                    Err(e) => debug!(error = %e, "media receive failed"),
                }
                for _ in 1..READ_BATCH {
                    match socket.try_recv_from(&mut buf) {
                        Ok((n, from)) => sfu.handle_datagram(Instant::now(), from, &buf[..n]),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => {
                            debug!(error = %e, "media receive failed");
                            break;
                        }
                    }
                }
            }
            () = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {}
        }
        let now = Instant::now();
        if sfu.poll_timeout().is_some_and(|t| t <= now) {
            sfu.handle_timeout(now);
        }
    }
    if sfu.peer_connections() > 0 {
        warn!(
            pcs = sfu.peer_connections(),
            "media plane stopped with open peer connections"
        );
    }
    info!("media plane stopped");
}

fn handle_command(sfu: &mut Sfu, cmd: Command, offers_in_flight: &AtomicUsize) {
    if matches!(cmd, Command::Offer(_)) {
        offers_in_flight.fetch_sub(1, Ordering::AcqRel);
    }
    sfu.handle_command(Instant::now(), cmd);
}
