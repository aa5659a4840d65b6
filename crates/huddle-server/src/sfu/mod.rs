//! The SFU core: WebRTC peer connections and RTP forwarding, as a sans-IO state machine.
//!
//! [`Sfu`] owns one [`str0m::Rtc`] per media peer connection ("PC") and the tables that route
//! datagrams to them. It owns no socket, task or clock: the caller feeds it commands from
//! signaling ([`Sfu::handle_command`]), datagrams from the one UDP socket
//! ([`Sfu::handle_datagram`]) and the time ([`Sfu::handle_timeout`] when [`Sfu::poll_timeout`]
//! is reached), and drains what it wants done: datagrams to send ([`Sfu::poll_transmit`]) and
//! signaling messages to sessions ([`Sfu::poll_signal`]). `docs/sfu.md` describes the design.
//!
//! - **One PC per stream and direction.** A publish PC only receives (the client's audio and/or
//!   video), a play PC only sends. The client always offers; the server answers (ICE-lite, one
//!   host candidate: the shared UDP socket). RTP mode: packets are forwarded without decoding or
//!   re-packetizing, with each receiver's SSRC, sequence numbers and timestamps ([`Rewriter`]).
//! - **Demultiplexing.** STUN by the server's ICE username fragment (each PC has its own), which
//!   also teaches the address table; everything else by the remote address. Anything else is
//!   dropped and counted.
//! - **Invariant.** After every mutation of an `Rtc`, its output is drained until it returns a
//!   timeout. Mutations of *other* PCs (forwarded packets, keyframe requests) mark them dirty; every
//!   entry point ends by draining the dirty PCs, so no drive recurses into another.
//! - **Isolation.** Forwarding writes into each receiver's own send queue and never waits; a
//!   receiver that stops reading loses only its own packets (the kernel drops them), and a PC that
//!   fails is closed alone.
//!
//! The code: `types` (configuration, commands, counters), `pc` (peer connections and their
//! lifecycle), `demux` (which PC a datagram is for), `timers`, `forward` (packets to players,
//! the flush); this file holds the [`Sfu`] itself and its small accessors.

mod demux;
mod forward;
mod padding;
mod pc;
pub mod placement;
pub mod red;
mod relay;
mod rewrite;
pub mod shard;
mod timers;
mod types;

pub use rewrite::Rewriter;
pub use types::{Command, Counters, FirstPacket, LATENCY_BUCKETS, MediaStats, Offer, SfuConfig};

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use huddle_proto::{AppId, MediaRole, ServerMsg, StreamId};
use str0m::config::DtlsCert;
use str0m::net::{Protocol, Transmit};

use crate::registry::SessionId;

use pc::{Pc, StreamEntry};
use types::queue_transmit;

/// At most one keyframe request is forwarded to a publisher per stream in this interval.
pub const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_millis(500);

pub(crate) type StreamKey = (AppId, StreamId);

/// The SFU: see the [module documentation](self).
pub struct Sfu {
    config: SfuConfig,
    /// One DTLS certificate for every PC (generating one per PC costs milliseconds).
    cert: Option<DtlsCert>,
    counters: Arc<Counters>,
    pcs: Vec<Option<Box<Pc>>>,
    free: Vec<usize>,
    live: usize,
    by_ufrag: HashMap<String, usize>,
    by_addr: HashMap<(Protocol, SocketAddr), usize>,
    by_owner: HashMap<(SessionId, StreamKey, MediaRole), usize>,
    streams: HashMap<StreamKey, StreamEntry>,
    /// The tracks players muted (`mute_play`), audio and video, by session and stream: applied
    /// to each new play PC of the stream (a reconnect keeps the mute).
    play_mutes: HashMap<(SessionId, StreamKey), [bool; 2]>,
    next_epoch: u32,
    /// PC deadlines (str0m timeouts and connect deadlines), earliest first. Entries go stale when
    /// a PC's timeout moves or it closes; they are skipped when popped (see `Pc::scheduled`).
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    /// Deadlines of waiting play offers (some may be answered already).
    pending_deadlines: BinaryHeap<Reverse<Instant>>,
    dirty: Vec<usize>,
    /// Streams whose entry was removed, not yet taken by [`Sfu::poll_released`].
    released: Vec<StreamKey>,
    /// Scratch list of `handle_timeout`: the timers due now.
    due: Vec<(Instant, usize)>,
    transmits: VecDeque<Transmit>,
    signals: VecDeque<(SessionId, ServerMsg)>,
    /// Whether [`Sfu::flush`] may take str0m's send fast path (always, but for the benchmark
    /// that measures what it saves: `benches/forward.rs`).
    fast_path: bool,
    /// Where recorded streams' packets go (`crate::recording`); `None`: nothing is recorded.
    recorder: Option<Arc<crate::recording::Recorder>>,
}

impl std::fmt::Debug for Sfu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sfu")
            .field("candidates", &self.config.candidates)
            .field("peer_connections", &self.live)
            .field("streams", &self.streams.len())
            .finish_non_exhaustive()
    }
}

impl Sfu {
    /// An SFU with no peer connection; `counters` are updated as it runs.
    pub fn new(config: SfuConfig, counters: Arc<Counters>) -> Sfu {
        let cert = huddle_dtls::crypto_provider()
            .dtls_provider
            .generate_certificate();
        Sfu {
            config,
            cert,
            counters,
            pcs: Vec::new(),
            free: Vec::new(),
            live: 0,
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
            by_owner: HashMap::new(),
            streams: HashMap::new(),
            play_mutes: HashMap::new(),
            next_epoch: 0,
            timers: BinaryHeap::new(),
            pending_deadlines: BinaryHeap::new(),
            dirty: Vec::new(),
            released: Vec::new(),
            due: Vec::new(),
            transmits: VecDeque::new(),
            signals: VecDeque::new(),
            fast_path: true,
            recorder: None,
        }
    }

    /// Records the streams `recorder` asks for (see [`crate::recording`]).
    pub fn set_recorder(&mut self, recorder: Arc<crate::recording::Recorder>) {
        self.recorder = Some(recorder);
    }

    /// Turns str0m's send fast path off (or back on), so that `benches/forward.rs` can measure
    /// what it saves against stock str0m's way of sending written RTP.
    #[cfg(any(test, feature = "testkit"))]
    pub fn set_fast_path(&mut self, on: bool) {
        self.fast_path = on;
    }

    /// The server's ICE candidates.
    pub fn candidates(&self) -> &[SocketAddr] {
        &self.config.candidates
    }

    /// The first candidate (127.0.0.1:9 if there is none, which nothing then reaches).
    fn first_candidate(&self) -> SocketAddr {
        self.config
            .candidates
            .first()
            .copied()
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9)))
    }

    /// Open peer connections.
    pub fn peer_connections(&self) -> usize {
        self.live
    }

    fn pc(&mut self, id: usize) -> Option<&mut Pc> {
        self.pcs.get_mut(id).and_then(|p| p.as_deref_mut())
    }

    /// Whether the stream has state here (a PC or a waiting play offer).
    #[must_use]
    pub fn has_stream(&self, app: AppId, stream_id: &StreamId) -> bool {
        self.streams.contains_key(&(app, stream_id.clone()))
    }

    /// The next stream whose state this SFU dropped (for the shard placement table).
    #[must_use]
    pub fn poll_released(&mut self) -> Option<(AppId, StreamId)> {
        self.released.pop()
    }

    /// The next datagram to send.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next signaling message for a session.
    #[must_use]
    pub fn poll_signal(&mut self) -> Option<(SessionId, ServerMsg)> {
        self.signals.pop_front()
    }

    fn push_transmit(&mut self, t: Transmit) {
        queue_transmit(&mut self.transmits, &self.counters, t);
    }

    /// Checks the internal tables against each other; `Err` names the first inconsistency. For
    /// tests.
    pub fn check_invariants(&self) -> Result<(), String> {
        let live = self.pcs.iter().flatten().count();
        if live != self.live {
            return Err(format!("live count {} != {live}", self.live));
        }
        for (u, id) in &self.by_ufrag {
            match self.pcs.get(*id).and_then(Option::as_ref) {
                Some(pc) if &pc.ufrag == u => {}
                _ => return Err(format!("ufrag {u} -> dead PC {id}")),
            }
        }
        for (a, id) in &self.by_addr {
            if self.pcs.get(*id).and_then(Option::as_ref).is_none() {
                return Err(format!("address {a:?} -> dead PC {id}"));
            }
        }
        for ((s, k, r), id) in &self.by_owner {
            match self.pcs.get(*id).and_then(Option::as_ref) {
                Some(pc) if pc.owner == *s && &pc.key == k && pc.media_role() == *r => {}
                _ => return Err(format!("owner {s:?} {} -> wrong PC {id}", k.1)),
            }
        }
        for (k, e) in &self.streams {
            for id in e.publisher.iter().chain(&e.players) {
                if self.pcs.get(*id).and_then(Option::as_ref).is_none() {
                    return Err(format!("stream {} -> dead PC {id}", k.1));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod sim;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
