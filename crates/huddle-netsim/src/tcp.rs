//! The TCP proxy that stalls or cuts connections (see the crate docs).
//!
//! Plain threads: two per connection, one accepting. Tests open a handful of connections.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing::debug;

#[derive(Debug, Default)]
struct Shared {
    /// Bytes are held, not forwarded, while set.
    stalled: Mutex<bool>,
    unstalled: Condvar,
    /// New connections are closed at once while set.
    refusing: AtomicBool,
    stop: AtomicBool,
    /// Both ends of every live connection (clones, to shut them down from outside).
    conns: Mutex<Vec<(u64, TcpStream, TcpStream)>>,
    next_id: std::sync::atomic::AtomicU64,
    pumps: Mutex<Vec<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A TCP relay in front of a server's port (see the crate docs).
///
/// Dropping it closes every connection and joins its threads.
#[derive(Debug)]
pub struct TcpProxy {
    local: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl TcpProxy {
    /// Listens on `listen` and relays every connection to `upstream`.
    pub fn start(listen: SocketAddr, upstream: SocketAddr) -> io::Result<TcpProxy> {
        let listener = TcpListener::bind(listen)?;
        let local = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let accept = std::thread::Builder::new()
            .name("huddle-netsim-tcp".into())
            .spawn(move || accept_loop(listener, upstream, s))?;
        Ok(TcpProxy {
            local,
            shared,
            accept: Some(accept),
        })
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Stalls (`true`) or releases every connection, present and new: while stalled no byte
    /// passes either way (and no close either); they are delivered in order when it ends, as TCP
    /// retransmission would after an outage.
    pub fn set_stalled(&self, stalled: bool) {
        *lock(&self.shared.stalled) = stalled;
        self.shared.unstalled.notify_all();
    }

    /// While set, new connections are accepted and closed at once (the server looks down).
    pub fn set_refusing(&self, refusing: bool) {
        self.shared.refusing.store(refusing, Ordering::Release);
    }

    /// Cuts every live connection now: both ends see it closed.
    pub fn cut(&self) {
        for (_, a, b) in lock(&self.shared.conns).drain(..) {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
    }

    /// Connections relayed now.
    pub fn connections(&self) -> usize {
        lock(&self.shared.conns).len()
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.set_stalled(false);
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.local, Duration::from_secs(1));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        self.cut();
        let pumps = std::mem::take(&mut *lock(&self.shared.pumps));
        for p in pumps {
            let _ = p.join();
        }
    }
}

fn accept_loop(listener: TcpListener, upstream: SocketAddr, shared: Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        let client = match client {
            Ok(c) => c,
            Err(e) => {
                debug!(error = %e, "netsim accept failed");
                continue;
            }
        };
        if shared.refusing.load(Ordering::Acquire) {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        if let Err(e) = relay(client, upstream, &shared) {
            debug!(error = %e, "netsim could not relay a connection");
        }
    }
}

fn relay(client: TcpStream, upstream: SocketAddr, shared: &Arc<Shared>) -> io::Result<()> {
    let server = TcpStream::connect(upstream)?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    lock(&shared.conns).push((id, client.try_clone()?, server.try_clone()?));
    let mut pumps = lock(&shared.pumps);
    pumps.retain(|p| !p.is_finished());
    for (from, to) in [(client.try_clone()?, server.try_clone()?), (server, client)] {
        let s = shared.clone();
        pumps.push(
            std::thread::Builder::new()
                .name("huddle-netsim-pump".into())
                .spawn(move || pump(id, from, to, &s))?,
        );
    }
    Ok(())
}

/// Copies `from` to `to` until either closes, holding bytes while stalled.
fn pump(id: u64, mut from: TcpStream, mut to: TcpStream, shared: &Shared) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf).unwrap_or(0);
        // Hold what was read (or the close) while the network is out.
        let mut stalled = lock(&shared.stalled);
        while *stalled && !shared.stop.load(Ordering::Acquire) {
            stalled = shared
                .unstalled
                .wait(stalled)
                .unwrap_or_else(PoisonError::into_inner);
        }
        drop(stalled);
        if n == 0 || to.write_all(&buf[..n]).is_err() {
            let _ = to.shutdown(Shutdown::Write);
            let _ = from.shutdown(Shutdown::Read);
            // The connection is over once either direction is: cut the other one too.
            let mut conns = lock(&shared.conns);
            if let Some(i) = conns.iter().position(|(c, _, _)| *c == id) {
                let (_, a, b) = conns.swap_remove(i);
                let _ = a.shutdown(Shutdown::Both);
                let _ = b.shutdown(Shutdown::Both);
            }
            return;
        }
    }
}
