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

pub mod placement;
pub mod red;
mod rewrite;
pub mod shard;

pub use rewrite::Rewriter;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use huddle_proto::{AppId, ErrorCode, HuddleError, MediaRole, PeerState, ServerMsg, StreamId};
use rand::Rng;
use str0m::change::SdpOffer;
use str0m::config::DtlsCert;
use str0m::format::Codec;
use str0m::media::{KeyframeRequestKind, MediaKind, Mid, Pt};
use str0m::net::{Protocol, Receive, TcpType, Transmit};
use str0m::rtp::{Extension, ExtensionValues, RtpPacket, RtpWrite, Ssrc};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcConfig};
use tracing::{debug, info, warn};

use crate::registry::SessionId;

/// At most one keyframe request is forwarded to a publisher per stream in this interval.
pub const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_millis(500);

/// Datagrams queued for the socket before new ones are dropped (the shell drains the queue after
/// every input, so this is only reached when the socket refuses to send).
const MAX_QUEUED_TRANSMITS: usize = 8192;

/// Remote addresses remembered per PC (a client's latest addresses that passed a connectivity
/// check).
const MAX_ADDRS_PER_PC: usize = 4;

/// Play offers waiting for a publisher's media, per stream.
const MAX_PENDING_PER_STREAM: usize = 64;

/// A datagram that looks like RTP, to ask an `Rtc` whether it would accept non-STUN traffic from an
/// address (that is, whether a connectivity check from there succeeded).
const PROBE_RTP: [u8; 12] = [0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// The SFU's settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SfuConfig {
    /// The server's ICE candidates, in order of preference, at least one: the advertised IPs
    /// and the bound UDP port. A datagram is handed over with the candidate it was sent to
    /// ([`Sfu::handle_datagram_to`]), and each PC's datagrams leave from the candidate its
    /// client reached ([`Transmit::source`]).
    pub candidates: Vec<SocketAddr>,
    /// The TCP port of the server's ICE-TCP candidates (RFC 6544 passive), one on each IP of
    /// `candidates`, for clients whose network blocks UDP; `None`: UDP only.
    pub tcp_port: Option<u16>,
    /// A PC that does not connect (ICE and DTLS) in this time is closed as failed.
    pub connect_timeout: Duration,
    /// How long a play offer waits for the publisher's media offer (when the stream is published
    /// but its media has not been negotiated yet).
    pub play_wait: Duration,
    /// Peer connections at once; offers beyond are refused (1009006).
    pub max_peer_connections: usize,
    /// This SFU's index among the media plane's shards (below [`shard::MAX_SHARDS`]): its PCs'
    /// ICE username fragments start with it ([`shard::ice_credentials`]).
    pub shard: usize,
}

impl SfuConfig {
    /// Defaults around one `candidate`: 15 s connect timeout, 5 s play wait, 20 000 PCs, shard 0.
    pub fn new(candidate: SocketAddr) -> SfuConfig {
        SfuConfig {
            candidates: vec![candidate],
            tcp_port: None,
            connect_timeout: Duration::from_secs(15),
            play_wait: Duration::from_secs(5),
            max_peer_connections: 20_000,
            shard: 0,
        }
    }
}

/// What signaling asks of the media plane, in the order the registry decided it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Command {
    /// A `media_offer`, already checked against the registry.
    Offer(Offer),
    /// The stream is no longer published (unpublish): close its publish PC and every play PC of
    /// it (their sessions get `media_state` closed).
    ClosePublish {
        /// The app.
        app: AppId,
        /// The stream.
        stream_id: StreamId,
    },
    /// The session stopped playing the stream: close its play PC.
    ClosePlay {
        /// The session.
        session: SessionId,
        /// The app.
        app: AppId,
        /// The stream.
        stream_id: StreamId,
    },
    /// The session ended (logout, kick, grace expiry): close its PCs, and the play PCs of the
    /// streams it published.
    SessionGone {
        /// The session.
        session: SessionId,
    },
}

impl Command {
    /// The stream the command is about (none for `SessionGone`, which is about every stream).
    #[must_use]
    pub fn stream(&self) -> Option<(AppId, &StreamId)> {
        match self {
            Command::Offer(o) => Some((o.app, &o.stream_id)),
            Command::ClosePublish { app, stream_id } | Command::ClosePlay { app, stream_id, .. } => {
                Some((*app, stream_id))
            }
            Command::SessionGone { .. } => None,
        }
    }
}

/// A `media_offer` from a session.
#[derive(Debug, Clone)]
pub struct Offer {
    /// Who offers.
    pub session: SessionId,
    /// The session's app.
    pub app: AppId,
    /// The stream.
    pub stream_id: StreamId,
    /// Publish or play.
    pub role: MediaRole,
    /// The request number, echoed in the answer.
    pub seq: u32,
    /// The SDP offer.
    pub sdp: String,
}

/// Counters of the media plane, shared by its threads and with monitoring (relaxed atomic
/// increments: no lock, no ordering needed).
#[derive(Debug, Default)]
pub struct Counters {
    datagrams_in: AtomicU64,
    dropped_unknown: AtomicU64,
    dropped_invalid: AtomicU64,
    rtp_in: AtomicU64,
    rtp_forwarded: AtomicU64,
    transmits_dropped: AtomicU64,
    keyframe_requests: AtomicU64,
    pcs_opened: AtomicU64,
    pcs_closed: AtomicU64,
    pcs_connected: AtomicU64,
    dropped_overload: AtomicU64,
    dropped_stale: AtomicU64,
}

/// Queues a datagram for the socket, or drops and counts it when the queue is full.
fn queue_transmit(transmits: &mut VecDeque<Transmit>, counters: &Counters, t: Transmit) {
    if transmits.len() >= MAX_QUEUED_TRANSMITS {
        bump(&counters.transmits_dropped);
    } else {
        transmits.push_back(t);
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    /// Counts a datagram the socket refused to send (`transmits_dropped`).
    pub fn count_send_failure(&self) {
        bump(&self.transmits_dropped);
    }

    /// Counts a received datagram that no shard's PC can own (the sharded media plane's router:
    /// `datagrams_in` and `dropped_unknown`).
    pub fn count_unroutable(&self) {
        bump(&self.datagrams_in);
        bump(&self.dropped_unknown);
    }

    /// Counts a received datagram dropped because its shard is too far behind
    /// (`datagrams_in` and `dropped_overload`).
    pub fn count_overload(&self) {
        bump(&self.datagrams_in);
        bump(&self.dropped_overload);
    }

    /// Counts a received RTP datagram dropped because it waited too long in the server's queues
    /// to be of use (`datagrams_in` and `dropped_stale`).
    pub fn count_stale(&self) {
        bump(&self.datagrams_in);
        bump(&self.dropped_stale);
    }

    /// A snapshot.
    pub fn snapshot(&self) -> MediaStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MediaStats {
            datagrams_in: g(&self.datagrams_in),
            dropped_unknown: g(&self.dropped_unknown),
            dropped_invalid: g(&self.dropped_invalid),
            rtp_in: g(&self.rtp_in),
            rtp_forwarded: g(&self.rtp_forwarded),
            transmits_dropped: g(&self.transmits_dropped),
            keyframe_requests: g(&self.keyframe_requests),
            pcs_opened: g(&self.pcs_opened),
            pcs_closed: g(&self.pcs_closed),
            pcs_connected: g(&self.pcs_connected),
            dropped_overload: g(&self.dropped_overload),
            dropped_stale: g(&self.dropped_stale),
        }
    }
}

/// Counts of the media plane since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MediaStats {
    /// UDP datagrams received.
    pub datagrams_in: u64,
    /// Datagrams that belong to no PC (unknown address or ICE username), dropped.
    pub dropped_unknown: u64,
    /// Datagrams that are not STUN, DTLS, RTP or RTCP, or that their PC refused, dropped.
    pub dropped_invalid: u64,
    /// RTP packets received from publishers.
    pub rtp_in: u64,
    /// RTP packets written to players (one per player per packet).
    pub rtp_forwarded: u64,
    /// Datagrams not sent: the queue to the socket was full, or the socket refused them.
    pub transmits_dropped: u64,
    /// Keyframe requests forwarded to publishers.
    pub keyframe_requests: u64,
    /// Peer connections opened (answers sent).
    pub pcs_opened: u64,
    /// Peer connections closed.
    pub pcs_closed: u64,
    /// Peer connections that connected (ICE and DTLS).
    pub pcs_connected: u64,
    /// Datagrams dropped on receipt because their shard was too far behind (overload).
    pub dropped_overload: u64,
    /// RTP dropped because it had waited in the server's queues longer than it could still be
    /// of use (overload: forwarding it late would only add latency).
    pub dropped_stale: u64,
}

type StreamKey = (AppId, StreamId);

/// The media a publisher sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Kinds {
    audio: bool,
    video: bool,
}

/// A played track: where the server writes one kind of the stream's media.
#[derive(Debug)]
struct TrackOut {
    kind: MediaKind,
    mid: Mid,
    pt: Pt,
    /// Audio: the player's RED payload type, when it negotiated RED (RFC 2198) for Opus.
    red_pt: Option<Pt>,
    rewriter: Rewriter,
}

/// One media peer connection.
struct Pc {
    rtc: Rtc,
    owner: SessionId,
    key: StreamKey,
    role: MediaRole,
    /// The server's ICE username fragment of this PC (the `by_ufrag` key).
    ufrag: String,
    /// The remote addresses in `by_addr` that lead here.
    addrs: Vec<(Protocol, SocketAddr)>,
    /// The str0m timeout that has the live entry in the timer heap.
    scheduled: Option<Instant>,
    connect_deadline: Instant,
    connected: bool,
    /// In the dirty list: mutated, to be drained.
    dirty: bool,
    /// Mutated by more than forwarded RTP (a keyframe request): the drain must give it the
    /// time and poll it in full, not only send what was written.
    dirty_full: bool,
    /// Publish: the source number of this connection (changes when a publisher re-offers).
    epoch: u32,
    /// Publish: the kind of each received media line.
    mids: Vec<(Mid, MediaKind)>,
    /// Publish: the kind of each SSRC seen (a cache of `mids` by SSRC).
    ssrc_kinds: Vec<(Ssrc, MediaKind)>,
    /// Publish: the RED payload type the publisher sends Opus in and Opus's own payload type,
    /// when it negotiated RED.
    red_in: Option<(Pt, Pt)>,
    /// Publish: the highest extended sequence number of audio received (to tell which frames
    /// a RED packet's redundancy can restore for players without RED).
    last_audio_seq: Option<u64>,
    /// Play: the tracks sent.
    tracks: Vec<TrackOut>,
}

impl Pc {
    fn kind_of(&mut self, ssrc: Ssrc) -> Option<MediaKind> {
        if let Some((_, k)) = self.ssrc_kinds.iter().find(|(s, _)| *s == ssrc) {
            return Some(*k);
        }
        let mid = self.rtc.direct_api().stream_rx(&ssrc)?.mid();
        let kind = self.mids.iter().find(|(m, _)| *m == mid)?.1;
        if self.ssrc_kinds.len() < 8 {
            self.ssrc_kinds.push((ssrc, kind));
        }
        Some(kind)
    }
}

/// A play offer waiting for the publisher's media.
#[derive(Debug)]
struct Pending {
    session: SessionId,
    seq: u32,
    sdp: String,
    deadline: Instant,
}

/// What the SFU knows of one stream.
#[derive(Debug, Default)]
struct StreamEntry {
    /// The session that published media for it (kept while its PC reconnects).
    publisher_session: Option<SessionId>,
    publisher: Option<usize>,
    /// What the publisher sends (`None` until a publish offer was accepted).
    kinds: Option<Kinds>,
    players: Vec<usize>,
    pending: Vec<Pending>,
    last_keyframe_request: Option<Instant>,
}

impl StreamEntry {
    fn is_unused(&self) -> bool {
        self.publisher.is_none() && self.players.is_empty() && self.pending.is_empty()
    }
}

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

fn invalid(why: impl std::fmt::Display) -> HuddleError {
    HuddleError::new(ErrorCode::MEDIA_OFFER_INVALID, why.to_string())
}

/// Parses a client's SDP offer. The parser's own message (positions, pointers, its internals) is
/// logged, never answered: the client gets the project's words.
fn parse_offer(sdp: &str) -> Result<SdpOffer, HuddleError> {
    SdpOffer::from_sdp_string(sdp).map_err(|e| {
        debug!(error = %e, "SDP offer refused");
        invalid("the SDP offer could not be parsed")
    })
}

/// The answer with the user name of its origin line (`o=`) replaced by `-`: str0m writes its name
/// and version there, which tells a stranger which library (and which of its bugs) to aim at.
fn plain_origin(sdp: &str) -> String {
    let mut out = String::with_capacity(sdp.len());
    let mut done = false;
    for line in sdp.split_inclusive('\n') {
        match line.strip_prefix("o=").and_then(|rest| rest.split_once(' ')) {
            Some((_, rest)) if !done => {
                done = true;
                out.push_str("o=- ");
                out.push_str(rest);
            }
            _ => out.push_str(line),
        }
    }
    out
}

/// A server-side failure to set up a PC: logged with its cause, answered as internal.
fn setup_failed(what: &str, e: impl std::fmt::Display) -> HuddleError {
    warn!(error = %e, "{what}");
    HuddleError::new(
        ErrorCode::INTERNAL,
        "the media plane could not set up the connection",
    )
}

fn failure_code(role: MediaRole) -> ErrorCode {
    match role {
        MediaRole::Publish => ErrorCode::PUBLISH_TEMPORARY_BREAK,
        MediaRole::Play => ErrorCode::PLAY_TEMPORARY_BREAK,
    }
}

/// The offer with the media lines of kinds the publisher does not send made inactive, so that the
/// answer declines them (`a=inactive`) instead of promising media that never comes.
fn restrict_offer(sdp: &str, kinds: Kinds) -> String {
    let mut out = String::with_capacity(sdp.len() + 16);
    let mut reject = false;
    for line in sdp.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\r', '\n']);
        if let Some(m) = bare.strip_prefix("m=") {
            reject = (m.starts_with("audio") && !kinds.audio) || (m.starts_with("video") && !kinds.video);
        }
        if reject && matches!(bare, "a=sendrecv" | "a=recvonly" | "a=sendonly") {
            out.push_str("a=inactive");
            out.push_str(&line[bare.len()..]);
        } else {
            out.push_str(line);
        }
    }
    out
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
            next_epoch: 0,
            timers: BinaryHeap::new(),
            pending_deadlines: BinaryHeap::new(),
            dirty: Vec::new(),
            released: Vec::new(),
            due: Vec::new(),
            transmits: VecDeque::new(),
            signals: VecDeque::new(),
            fast_path: true,
        }
    }

    /// Turns str0m's send fast path off (or back on), so that `benches/forward.rs` can measure
    /// what it saves against stock str0m's way of sending written RTP.
    #[cfg(any(test, feature = "testkit"))]
    pub fn set_fast_path(&mut self, on: bool) {
        self.fast_path = on;
    }

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

    /// Applies a command from signaling.
    pub fn handle_command(&mut self, now: Instant, cmd: Command) {
        match cmd {
            Command::Offer(o) => self.handle_offer(now, o),
            Command::ClosePublish { app, stream_id } => self.close_publish(now, &(app, stream_id)),
            Command::ClosePlay {
                session,
                app,
                stream_id,
            } => self.close_play(now, session, &(app, stream_id)),
            Command::SessionGone { session } => self.session_gone(now, session),
        }
        self.flush(now);
    }

    /// Answers a `media_offer` (the answer or an error goes to [`Sfu::poll_signal`]). A play offer
    /// for a stream whose publisher has not negotiated media yet waits for it (at most
    /// [`SfuConfig::play_wait`]).
    pub fn handle_offer(&mut self, now: Instant, o: Offer) {
        let key = (o.app, o.stream_id.clone());
        let result = match o.role {
            MediaRole::Publish => self.offer_publish(now, o.session, &key, &o.sdp).map(Some),
            MediaRole::Play => self.offer_play(now, o.session, &key, o.seq, o.sdp.clone()),
        };
        match result {
            Ok(Some(sdp)) => self.answer(o.session, o.seq, &key, o.role, sdp),
            Ok(None) => {}
            Err(e) => {
                debug!(session = %o.session, stream = %o.stream_id, code = e.code.0, message = %e.message, "media offer refused");
                self.signals
                    .push_back((o.session, ServerMsg::error(Some(o.seq), &e)));
            }
        }
        self.flush(now);
    }

    fn answer(&mut self, to: SessionId, seq: u32, key: &StreamKey, role: MediaRole, sdp: String) {
        self.signals.push_back((
            to,
            ServerMsg::MediaAnswer {
                seq,
                stream_id: key.1.clone(),
                kind: role,
                sdp,
            },
        ));
    }

    /// A new `Rtc` answering `sdp`; returns it with the answer.
    fn build_rtc(&self, now: Instant, sdp: &str, role: MediaRole) -> Result<(Rtc, String), HuddleError> {
        if self.live >= self.config.max_peer_connections {
            return Err(HuddleError::new(
                ErrorCode::SERVER_BUSY,
                "the media plane is at its peer connection limit",
            ));
        }
        let offer = parse_offer(sdp)?;
        let mut config = RtcConfig::new()
            .set_ice_lite(true)
            .set_rtp_mode(true)
            .clear_codecs()
            // RED (RFC 2198) for Opus when the offer has it, as browsers negotiate it: publishers
            // may send redundant audio, players may receive it (see `forward`).
            .enable_opus(true, true)
            .enable_vp8(true);
        if let Some(cert) = &self.cert {
            config = config.set_dtls_cert(cert.clone());
        }
        // One DTLS configuration for every PC: str0m's default validates dimpl's crypto provider
        // again for each one, ~0.65 ms of this shard's thread per offer (`huddle_dtls`).
        config = config
            .set_crypto_provider(huddle_dtls::crypto_provider())
            .set_local_ice_credentials(shard::ice_credentials(self.config.shard));
        if role == MediaRole::Play {
            // No transport-wide congestion control on what the server sends yet (no bandwidth
            // estimation to feed): without it str0m keeps no history of the last 1000 packets
            // sent, which is most of a play connection's memory. Nor absolute send time: it
            // feeds only a receiver's REMB estimate, which nothing here reads, and stamping it
            // (a wall clock conversion per packet) was 6 % of the SFU's time per forwarded packet.
            config = config
                .clear_extension_map()
                .set_extension(1, Extension::AudioLevel)
                .set_extension(4, Extension::RtpMid)
                .set_extension(10, Extension::RtpStreamId)
                .set_extension(11, Extension::RepairedRtpStreamId)
                .set_extension(13, Extension::VideoOrientation);
        }
        let mut rtc = config.build(now);
        if self.config.candidates.is_empty() {
            return Err(HuddleError::new(
                ErrorCode::INTERNAL,
                "the server has no media candidate",
            ));
        }
        for addr in &self.config.candidates {
            let candidate =
                Candidate::host(*addr, "udp").map_err(|e| setup_failed("server candidate refused", e))?;
            rtc.add_local_candidate(candidate);
        }
        for addr in self.tcp_candidates() {
            // RFC 6544: the server only accepts connections (passive); its type preference puts
            // it below the UDP candidates, so a client that reaches both nominates UDP.
            let tcp = Candidate::builder()
                .tcp()
                .host(addr)
                .tcptype(TcpType::Passive)
                .build()
                .map_err(|e| setup_failed("server TCP candidate refused", e))?;
            rtc.add_local_candidate(tcp);
        }
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| {
                debug!(error = %e, "SDP offer not answerable");
                invalid("the offer has nothing the server can answer (it takes Opus audio and VP8 video, with ICE and DTLS)")
            })?;
        Ok((rtc, plain_origin(&answer.to_sdp_string())))
    }

    fn insert(&mut self, now: Instant, rtc: Rtc, owner: SessionId, key: StreamKey, role: MediaRole) -> usize {
        let mut rtc = rtc;
        let ufrag = rtc.direct_api().local_ice_credentials().ufrag;
        let pc = Box::new(Pc {
            rtc,
            owner,
            key,
            role,
            ufrag,
            addrs: Vec::new(),
            scheduled: None,
            connect_deadline: now + self.config.connect_timeout,
            connected: false,
            dirty: false,
            dirty_full: false,
            epoch: 0,
            mids: Vec::new(),
            ssrc_kinds: Vec::new(),
            red_in: None,
            last_audio_seq: None,
            tracks: Vec::new(),
        });
        self.live += 1;
        let deadline = pc.connect_deadline;
        let id = match self.free.pop() {
            Some(i) => {
                self.pcs[i] = Some(pc);
                i
            }
            None => {
                self.pcs.push(Some(pc));
                self.pcs.len() - 1
            }
        };
        self.timers.push(Reverse((deadline, id)));
        id
    }

    /// Makes a newly negotiated PC reachable (ICE username, owner) and replaces the owner's
    /// earlier PC for the same stream and role.
    fn register(&mut self, now: Instant, id: usize) {
        let Some(pc) = self.pc(id) else { return };
        let owner_key = (pc.owner, pc.key.clone(), pc.role);
        let ufrag = pc.ufrag.clone();
        if let Some(old) = self.by_owner.get(&owner_key).copied() {
            self.close_pc(now, old, None);
        }
        self.by_owner.insert(owner_key, id);
        self.by_ufrag.insert(ufrag, id);
        bump(&self.counters.pcs_opened);
    }

    fn pc(&mut self, id: usize) -> Option<&mut Pc> {
        self.pcs.get_mut(id).and_then(|p| p.as_deref_mut())
    }

    fn offer_publish(
        &mut self,
        now: Instant,
        session: SessionId,
        key: &StreamKey,
        sdp: &str,
    ) -> Result<String, HuddleError> {
        let (rtc, answer) = self.build_rtc(now, sdp, MediaRole::Publish)?;
        let id = self.insert(now, rtc, session, key.clone(), MediaRole::Publish);
        let Some(pc) = self.pc(id) else {
            return Err(invalid("the offer could not be negotiated"));
        };
        for mid in mids_of(&answer) {
            if let Some(m) = pc.rtc.media(mid)
                && !m.disabled()
                && m.direction().is_receiving()
            {
                pc.mids.push((mid, m.kind()));
            }
        }
        pc.red_in = pc
            .rtc
            .codec_config()
            .params()
            .iter()
            .find(|p| p.spec().codec == Codec::Opus)
            .and_then(|p| Some((p.red()?, p.pt())));
        let kinds = Kinds {
            audio: pc.mids.iter().any(|(_, k)| k.is_audio()),
            video: pc.mids.iter().any(|(_, k)| k.is_video()),
        };
        if !kinds.audio && !kinds.video {
            self.close_pc(now, id, None);
            return Err(invalid("the offer sends neither Opus audio nor VP8 video"));
        }
        self.register(now, id);
        self.next_epoch = self.next_epoch.wrapping_add(1);
        let epoch = self.next_epoch;
        if let Some(pc) = self.pc(id) {
            pc.epoch = epoch;
        }
        let entry = self.streams.entry(key.clone()).or_default();
        let previous = entry.publisher.replace(id);
        entry.publisher_session = Some(session);
        entry.kinds = Some(kinds);
        let pending = std::mem::take(&mut entry.pending);
        if let Some(old) = previous.filter(|old| *old != id) {
            self.close_pc(now, old, None);
        }
        info!(%session, stream = %key.1, audio = kinds.audio, video = kinds.video, "publish media negotiated");
        // The play offers that waited for this publisher.
        for p in pending {
            if p.deadline < now {
                self.signals
                    .push_back((p.session, ServerMsg::error(Some(p.seq), &not_started())));
                continue;
            }
            match self.accept_play(now, p.session, key, &p.sdp, kinds) {
                Ok(sdp) => self.answer(p.session, p.seq, key, MediaRole::Play, sdp),
                Err(e) => self
                    .signals
                    .push_back((p.session, ServerMsg::error(Some(p.seq), &e))),
            }
        }
        Ok(answer)
    }

    fn offer_play(
        &mut self,
        now: Instant,
        session: SessionId,
        key: &StreamKey,
        seq: u32,
        sdp: String,
    ) -> Result<Option<String>, HuddleError> {
        let kinds = self.streams.get(key).and_then(|e| e.kinds);
        if let Some(kinds) = kinds {
            return self.accept_play(now, session, key, &sdp, kinds).map(Some);
        }
        // Published, but the publisher has not negotiated its media yet: wait for it.
        parse_offer(&sdp)?;
        let deadline = now + self.config.play_wait;
        let entry = self.streams.entry(key.clone()).or_default();
        if let Some(i) = entry.pending.iter().position(|p| p.session == session) {
            // A newer offer of the same session replaces the older one.
            let old = entry.pending.remove(i);
            let e = HuddleError::new(ErrorCode::MEDIA_OFFER_INVALID, "replaced by a newer offer");
            self.signals
                .push_back((session, ServerMsg::error(Some(old.seq), &e)));
        }
        let entry = self.streams.entry(key.clone()).or_default();
        if entry.pending.len() >= MAX_PENDING_PER_STREAM {
            return Err(HuddleError::new(
                ErrorCode::SERVER_BUSY,
                "too many play offers wait for this stream",
            ));
        }
        entry.pending.push(Pending {
            session,
            seq,
            sdp,
            deadline,
        });
        self.pending_deadlines.push(Reverse(deadline));
        Ok(None)
    }

    fn accept_play(
        &mut self,
        now: Instant,
        session: SessionId,
        key: &StreamKey,
        sdp: &str,
        kinds: Kinds,
    ) -> Result<String, HuddleError> {
        let sdp = restrict_offer(sdp, kinds);
        let (rtc, answer) = self.build_rtc(now, &sdp, MediaRole::Play)?;
        let id = self.insert(now, rtc, session, key.clone(), MediaRole::Play);
        if let Some(pc) = self.pc(id) {
            for mid in mids_of(&answer) {
                if let Some(m) = pc.rtc.media(mid)
                    && !m.disabled()
                    && m.direction().is_sending()
                {
                    let kind = m.kind();
                    add_track(pc, mid, kind);
                }
            }
        }
        if self.pc(id).is_none_or(|pc| pc.tracks.is_empty()) {
            self.close_pc(now, id, None);
            let has = match (kinds.audio, kinds.video) {
                (true, true) => "Opus audio and VP8 video",
                (true, false) => "Opus audio",
                _ => "VP8 video",
            };
            return Err(invalid(format!(
                "the offer receives none of the stream's media (it has {has})"
            )));
        }
        self.register(now, id);
        self.streams.entry(key.clone()).or_default().players.push(id);
        info!(%session, stream = %key.1, "play media negotiated");
        Ok(answer)
    }

    /// Closes a PC. `notify`: tell its owner (`media_state`) why.
    fn close_pc(&mut self, now: Instant, id: usize, notify: Option<(PeerState, ErrorCode, String)>) {
        let Some(mut pc) = self.pcs.get_mut(id).and_then(Option::take) else {
            return;
        };
        self.free.push(id);
        self.live -= 1;
        if self.by_ufrag.get(&pc.ufrag) == Some(&id) {
            self.by_ufrag.remove(&pc.ufrag);
        }
        for a in &pc.addrs {
            if self.by_addr.get(a) == Some(&id) {
                self.by_addr.remove(a);
            }
        }
        let owner_key = (pc.owner, pc.key.clone(), pc.role);
        if self.by_owner.get(&owner_key) == Some(&id) {
            self.by_owner.remove(&owner_key);
            bump(&self.counters.pcs_closed);
        }
        if let Some(entry) = self.streams.get_mut(&pc.key) {
            if entry.publisher == Some(id) {
                entry.publisher = None;
            }
            entry.players.retain(|p| *p != id);
            if entry.is_unused() && entry.publisher_session.is_none() {
                self.drop_stream(&pc.key);
            }
        }
        // Tell the peer (RTCP BYE, DTLS close_notify) and send what that produced.
        if pc.rtc.is_alive() && pc.rtc.close().is_ok() {
            for _ in 0..32 {
                match pc.rtc.poll_output() {
                    Ok(Output::Transmit(t)) => self.push_transmit(t),
                    Ok(Output::Event(_)) => {}
                    Ok(Output::Timeout(_)) | Err(_) => break,
                }
                if !pc.rtc.is_alive() {
                    break;
                }
            }
        }
        let _ = now;
        if let Some((state, code, message)) = notify {
            self.signals.push_back((
                pc.owner,
                ServerMsg::MediaState {
                    stream_id: pc.key.1.clone(),
                    kind: pc.role,
                    state,
                    code,
                    message,
                },
            ));
        }
    }

    fn fail_pc(&mut self, now: Instant, id: usize, why: &str) {
        let Some(pc) = self.pc(id) else { return };
        let code = failure_code(pc.role);
        info!(session = %pc.owner, stream = %pc.key.1, role = ?pc.role, why, "media connection failed");
        self.close_pc(now, id, Some((PeerState::Failed, code, why.to_string())));
    }

    /// The stream is no longer published.
    fn close_publish(&mut self, now: Instant, key: &StreamKey) {
        let Some(mut entry) = self.streams.remove(key) else {
            return;
        };
        entry.publisher_session = None;
        let publisher = entry.publisher.take();
        let players = std::mem::take(&mut entry.players);
        let pending = std::mem::take(&mut entry.pending);
        // Put it back empty so that close_pc finds consistent state; it is removed below.
        self.streams.insert(key.clone(), entry);
        if let Some(p) = publisher {
            self.close_pc(now, p, None);
        }
        for p in players {
            self.close_pc(
                now,
                p,
                Some((
                    PeerState::Closed,
                    ErrorCode::STREAM_NOT_FOUND,
                    "the stream's publisher stopped".into(),
                )),
            );
        }
        for p in pending {
            self.signals
                .push_back((p.session, ServerMsg::error(Some(p.seq), &not_started())));
        }
        if self.streams.get(key).is_some_and(StreamEntry::is_unused) {
            self.drop_stream(key);
        }
    }

    fn close_play(&mut self, now: Instant, session: SessionId, key: &StreamKey) {
        if let Some(id) = self
            .by_owner
            .get(&(session, key.clone(), MediaRole::Play))
            .copied()
        {
            self.close_pc(now, id, None);
        }
        if let Some(entry) = self.streams.get_mut(key) {
            entry.pending.retain(|p| p.session != session);
            if entry.is_unused() && entry.publisher_session.is_none() {
                self.drop_stream(key);
            }
        }
    }

    fn session_gone(&mut self, now: Instant, session: SessionId) {
        let published: Vec<StreamKey> = self
            .streams
            .iter()
            .filter(|(_, e)| e.publisher_session == Some(session))
            .map(|(k, _)| k.clone())
            .collect();
        for key in published {
            self.close_publish(now, &key);
        }
        let owned: Vec<usize> = self
            .by_owner
            .iter()
            .filter(|((s, _, _), _)| *s == session)
            .map(|(_, id)| *id)
            .collect();
        for id in owned {
            self.close_pc(now, id, None);
        }
        let mut empty = Vec::new();
        for (key, entry) in &mut self.streams {
            entry.pending.retain(|p| p.session != session);
            if entry.is_unused() && entry.publisher_session.is_none() {
                empty.push(key.clone());
            }
        }
        for key in empty {
            self.drop_stream(&key);
        }
    }

    /// Removes a stream's entry, reporting it through [`Sfu::poll_released`].
    fn drop_stream(&mut self, key: &StreamKey) {
        if self.streams.remove(key).is_some() {
            self.released.push(key.clone());
        }
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
    fn receive(&mut self, now: Instant, proto: Protocol, from: SocketAddr, to: SocketAddr, buf: &[u8]) {
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
    fn learn_address(&mut self, now: Instant, id: usize, proto: Protocol, from: SocketAddr, to: SocketAddr) {
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

    /// The ICE-TCP candidates: each candidate's IP with the TCP port.
    fn tcp_candidates(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.config.tcp_port.into_iter().flat_map(|port| {
            self.config
                .candidates
                .iter()
                .map(move |c| SocketAddr::new(c.ip(), port))
        })
    }

    /// Drives time: PCs whose timeout is due, connect deadlines and waiting play offers.
    pub fn handle_timeout(&mut self, now: Instant) {
        // Take the due entries first: a PC rescheduled at `now` waits for the next call.
        // The list is kept between calls (no allocation per timer event).
        let mut due = std::mem::take(&mut self.due);
        while let Some(Reverse((t, id))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            due.push((t, id));
        }
        for (t, id) in due.drain(..) {
            let Some(pc) = self.pc(id) else { continue };
            if !pc.connected && now >= pc.connect_deadline {
                self.fail_pc(now, id, "not connected in time (ICE or DTLS)");
                continue;
            }
            if pc.scheduled != Some(t) {
                continue; // stale
            }
            pc.scheduled = None;
            if let Err(e) = pc.rtc.handle_input(Input::Timeout(now)) {
                debug!(error = %e, "media timeout handling failed");
                self.fail_pc(now, id, "the connection failed");
                continue;
            }
            self.drive(id, now);
        }
        self.due = due;
        let mut expire = false;
        while self.pending_deadlines.peek().is_some_and(|Reverse(t)| *t <= now) {
            self.pending_deadlines.pop();
            expire = true;
        }
        if expire {
            self.expire_pending(now);
        }
        self.flush(now);
        if self.timers.len() > 4 * self.live + 1024 {
            self.compact_timers();
        }
    }

    fn expire_pending(&mut self, now: Instant) {
        let mut expired = Vec::new();
        for entry in self.streams.values_mut() {
            entry.pending.retain(|p| {
                if p.deadline <= now {
                    expired.push((p.session, p.seq));
                    false
                } else {
                    true
                }
            });
        }
        for (session, seq) in expired {
            self.signals
                .push_back((session, ServerMsg::error(Some(seq), &not_started())));
        }
        let released = &mut self.released;
        self.streams.retain(|k, e| {
            let keep = !(e.is_unused() && e.publisher_session.is_none());
            if !keep {
                released.push(k.clone());
            }
            keep
        });
    }

    /// Rebuilds the timer heap without its stale entries.
    fn compact_timers(&mut self) {
        self.timers.clear();
        for (id, pc) in self.pcs.iter().enumerate() {
            let Some(pc) = pc else { continue };
            if let Some(t) = pc.scheduled {
                self.timers.push(Reverse((t, id)));
            }
            if !pc.connected {
                self.timers.push(Reverse((pc.connect_deadline, id)));
            }
        }
    }

    /// When [`Sfu::handle_timeout`] is due next, if anything waits (possibly early: a stale
    /// entry makes a call that finds nothing to do).
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let pc = self.timers.peek().map(|Reverse((t, _))| *t);
        let pending = self.pending_deadlines.peek().map(|Reverse(t)| *t);
        match (pc, pending) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
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

    /// Marks a PC mutated by more than forwarded RTP, to be given the time and drained in full.
    fn mark_dirty(&mut self, id: usize) {
        if let Some(pc) = self.pc(id) {
            pc.dirty_full = true;
            if !pc.dirty {
                pc.dirty = true;
                self.dirty.push(id);
            }
        }
    }

    /// Drains every PC mutated from outside its own drive, so that forwarded packets leave in
    /// the same pass as the packet that brought them.
    ///
    /// A PC that was only written RTP takes str0m's fast path, `Rtc::send_written_rtp` (our
    /// patch, vendor/patches/0002-send-fast-path.patch): its packets are protected and queued for the socket
    /// without running its other timers, which keep their schedule. That halves the SFU's own
    /// time per forwarded packet (benches/forward.rs). Otherwise (a keyframe request, or a PC
    /// the fast path does not take) str0m sends what was written when time moves, so the PC is
    /// given the time and drained in full.
    fn flush(&mut self, now: Instant) {
        while let Some(id) = self.dirty.pop() {
            let Sfu {
                pcs,
                transmits,
                counters,
                ..
            } = self;
            let Some(pc) = pcs.get_mut(id).and_then(|p| p.as_deref_mut()) else {
                continue;
            };
            if !std::mem::take(&mut pc.dirty_full) && self.fast_path {
                let sent = pc
                    .rtc
                    .send_written_rtp(now, |t| queue_transmit(transmits, counters, t));
                if sent {
                    pc.dirty = false;
                    continue;
                }
            }
            if let Err(e) = pc.rtc.handle_input(Input::Timeout(now)) {
                debug!(error = %e, "media timeout handling failed");
                self.fail_pc(now, id, "the connection failed");
                continue;
            }
            self.drive(id, now);
        }
    }

    /// Drains one PC's output until it returns a timeout.
    fn drive(&mut self, id: usize, now: Instant) {
        loop {
            let Some(pc) = self.pc(id) else { return };
            pc.dirty = false;
            if !pc.rtc.is_alive() {
                self.close_pc(now, id, None);
                return;
            }
            match pc.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    if pc.scheduled != Some(t) {
                        pc.scheduled = Some(t);
                        self.timers.push(Reverse((t, id)));
                    }
                    return;
                }
                Ok(Output::Transmit(t)) => self.push_transmit(t),
                Ok(Output::Event(e)) => self.on_event(now, id, e),
                Err(e) => {
                    debug!(error = %e, "media output failed");
                    self.fail_pc(now, id, "the connection failed");
                    return;
                }
            }
        }
    }

    fn on_event(&mut self, now: Instant, id: usize, event: Event) {
        match event {
            Event::RtpPacket(packet) => self.forward(now, id, &packet),
            Event::KeyframeRequest(req) => {
                if let Some(pc) = self.pc(id)
                    && pc.role == MediaRole::Play
                {
                    let key = pc.key.clone();
                    self.request_keyframe(now, &key, req.kind);
                }
            }
            Event::Connected => {
                let Some(pc) = self.pc(id) else { return };
                pc.connected = true;
                let (owner, key, role) = (pc.owner, pc.key.clone(), pc.role);
                let has_video = pc.tracks.iter().any(|t| t.kind.is_video());
                bump(&self.counters.pcs_connected);
                info!(session = %owner, stream = %key.1, ?role, "media connected");
                self.signals.push_back((
                    owner,
                    ServerMsg::MediaState {
                        stream_id: key.1.clone(),
                        kind: role,
                        state: PeerState::Connected,
                        code: ErrorCode::OK,
                        message: String::new(),
                    },
                ));
                if has_video {
                    // A new viewer needs a keyframe to start decoding.
                    self.request_keyframe(now, &key, KeyframeRequestKind::Pli);
                }
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                self.fail_pc(now, id, "ICE disconnected (no connectivity checks)");
            }
            Event::Closed => {
                // The client closed it (DTLS close_notify): nothing to tell.
                self.close_pc(now, id, None);
            }
            _ => {}
        }
    }

    /// Forwards one packet of a publisher to every connected player of its stream.
    ///
    /// Audio the publisher sends as RED (RFC 2198) goes unchanged to the players that
    /// negotiated RED, on their RED payload type; the others get the primary block alone, as
    /// plain Opus, preceded by the frames that were lost upstream and that the packet's
    /// redundant blocks carry (see [`red`]).
    fn forward(&mut self, now: Instant, from: usize, packet: &RtpPacket) {
        bump(&self.counters.rtp_in);
        let Sfu {
            pcs,
            streams,
            counters,
            dirty,
            ..
        } = self;
        let Some(src) = pcs.get_mut(from).and_then(|p| p.as_deref_mut()) else {
            return;
        };
        if src.role != MediaRole::Publish {
            return;
        }
        let Some(kind) = src.kind_of(packet.header.ssrc) else {
            return;
        };
        let source = (u64::from(src.epoch) << 32) | u64::from(*packet.header.ssrc);
        let seq = *packet.seq_no;
        // The primary's payload type when this is a RED packet.
        let red_primary = match src.red_in {
            Some((red_pt, opus_pt)) if kind.is_audio() && packet.header.payload_type == red_pt => {
                Some(opus_pt)
            }
            _ => None,
        };
        let last_audio_seq = if kind.is_audio() {
            let last = src.last_audio_seq;
            if last.is_none_or(|l| seq > l) {
                src.last_audio_seq = Some(seq);
            }
            last
        } else {
            None
        };
        let Some(entry) = streams.get(&src.key) else {
            return;
        };
        let ext = ExtensionValues {
            audio_level: packet.header.ext_vals.audio_level,
            voice_activity: packet.header.ext_vals.voice_activity,
            ..ExtensionValues::default()
        };
        let no_ext = ExtensionValues::default();
        // A RED packet as plain Opus, made once for all the players without RED: the primary
        // and the frames recovered from the redundancy (`None`: malformed, not forwarded).
        let mut plain: Option<Option<PlainAudio>> = None;
        let ts = packet.header.timestamp;
        let mut forwarded = 0;
        for &pid in &entry.players {
            let Some(p) = pcs.get_mut(pid).and_then(|p| p.as_deref_mut()) else {
                continue;
            };
            if !p.connected {
                continue;
            }
            let Pc { rtc, tracks, .. } = p;
            let Some(track) = tracks.iter_mut().find(|t| t.kind == kind) else {
                continue;
            };
            let mut sent = 0;
            match red_primary {
                Some(opus_pt) if track.red_pt.is_none() => {
                    let plain = plain.get_or_insert_with(|| {
                        let split = red::split(&packet.payload, *opus_pt)?;
                        let recovered = red::recover(&split, last_audio_seq, seq, ts)
                            .map(|(s, t, b)| (s, t, Arc::from(b)))
                            .collect();
                        Some(PlainAudio {
                            primary: Arc::from(split.primary),
                            recovered,
                        })
                    });
                    let Some(plain) = plain.as_ref() else { continue };
                    for (s, t, b) in &plain.recovered {
                        let out = Outgoing {
                            seq: *s,
                            ts: *t,
                            payload: b.clone(),
                            marker: false,
                            red: false,
                        };
                        sent += u64::from(send_on(rtc, track, source, now, packet.timestamp, out, &no_ext));
                    }
                    let out = Outgoing {
                        seq,
                        ts,
                        payload: plain.primary.clone(),
                        marker: packet.header.marker,
                        red: false,
                    };
                    sent += u64::from(send_on(rtc, track, source, now, packet.timestamp, out, &ext));
                }
                _ => {
                    let out = Outgoing {
                        seq,
                        ts,
                        payload: packet.payload.clone(),
                        marker: packet.header.marker,
                        red: red_primary.is_some(),
                    };
                    sent += u64::from(send_on(rtc, track, source, now, packet.timestamp, out, &ext));
                }
            }
            if sent == 0 {
                continue;
            }
            forwarded += sent;
            if !p.dirty {
                p.dirty = true;
                dirty.push(pid);
            }
        }
        // Once per packet, not per player: the counters are shared by every shard's thread.
        counters.rtp_forwarded.fetch_add(forwarded, Ordering::Relaxed);
    }

    /// Asks the stream's publisher for a keyframe, at most once per
    /// [`KEYFRAME_REQUEST_INTERVAL`].
    fn request_keyframe(&mut self, now: Instant, key: &StreamKey, kind: KeyframeRequestKind) {
        let Some(entry) = self.streams.get_mut(key) else {
            return;
        };
        if entry
            .last_keyframe_request
            .is_some_and(|t| now < t + KEYFRAME_REQUEST_INTERVAL)
        {
            return;
        }
        let Some(pid) = entry.publisher else { return };
        let Some(pc) = self.pcs.get_mut(pid).and_then(|p| p.as_deref_mut()) else {
            return;
        };
        let Some(mid) = pc.mids.iter().find(|(_, k)| k.is_video()).map(|(m, _)| *m) else {
            return;
        };
        let mut api = pc.rtc.direct_api();
        let Some(rx) = api.stream_rx_by_mid(mid, None) else {
            return;
        };
        rx.request_keyframe(kind);
        entry.last_keyframe_request = Some(now);
        bump(&self.counters.keyframe_requests);
        self.mark_dirty(pid);
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
                Some(pc) if pc.owner == *s && &pc.key == k && pc.role == *r => {}
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

/// The media line IDs of an SDP (its `a=mid:` lines).
fn mids_of(sdp: &str) -> Vec<Mid> {
    sdp.lines()
        .filter_map(|l| l.trim_end().strip_prefix("a=mid:"))
        .map(Mid::from)
        .collect()
}

fn not_started() -> HuddleError {
    HuddleError::new(
        ErrorCode::STREAM_NOT_FOUND,
        "the stream's publisher has not started its media",
    )
}

/// A publisher's RED packet made plain Opus for the players without RED.
struct PlainAudio {
    primary: Arc<[u8]>,
    /// Frames lost upstream and restored from the redundant blocks: (seq, ts, payload).
    recovered: Vec<(u64, u32, Arc<[u8]>)>,
}

/// One packet to write to a played track, in the publisher's sequence and timestamp space.
struct Outgoing {
    seq: u64,
    ts: u32,
    payload: Arc<[u8]>,
    marker: bool,
    /// A RED payload: sent on the track's RED payload type.
    red: bool,
}

/// Writes a packet to a played track, rewritten into the player's sequence and timestamp
/// space; false when it predates the player's view of the source or the track has no stream.
fn send_on(
    rtc: &mut Rtc,
    track: &mut TrackOut,
    source: u64,
    now: Instant,
    wallclock: Instant,
    out: Outgoing,
    ext: &ExtensionValues,
) -> bool {
    let Some((seq, ts)) = track.rewriter.map(source, out.seq, out.ts, now) else {
        return false;
    };
    let pt = match (out.red, track.red_pt) {
        (true, Some(red)) => red,
        _ => track.pt,
    };
    let mut api = rtc.direct_api();
    let Some(tx) = api.stream_tx_by_mid(track.mid, None) else {
        return false;
    };
    tx.write_rtp(
        RtpWrite::new(pt, seq.into(), ts, wallclock, out.payload)
            .marker(out.marker)
            .ext_vals(ext.clone())
            // Opus is repaired by RED and in-band FEC, not NACK (browsers do not negotiate NACK
            // for audio, and str0m cannot retransmit a RED packet): only video goes to the send
            // buffer.
            .nackable(track.kind.is_video()),
    );
    true
}

/// Sets up a played track for `mid` if the PC can send `kind` with our codec.
fn add_track(pc: &mut Pc, mid: Mid, kind: MediaKind) {
    let (codec, clock_rate) = if kind.is_audio() {
        (Codec::Opus, 48_000)
    } else {
        (Codec::Vp8, 90_000)
    };
    let Some(media) = pc.rtc.media(mid) else { return };
    let remote = media.remote_pts();
    let Some((pt, red_pt)) = pc
        .rtc
        .codec_config()
        .params()
        .iter()
        .find(|p| p.spec().codec == codec && remote.contains(&p.pt()))
        .map(|p| (p.pt(), p.red()))
    else {
        return;
    };
    let mut api = pc.rtc.direct_api();
    let Some(tx) = api.stream_tx_by_mid(mid, None) else {
        return;
    };
    if kind.is_video() {
        // str0m's default send buffer (1000 packets, 3 s), without its cap on the share of
        // retransmissions (15 %): on a lossy downlink the cap dropped the queued answers to a
        // player's NACKs, and the player then waited for its five NACKs to run out (about 0.9 s
        // at 100 ms RTT) before asking for a keyframe. The retransmissions are what the player
        // lost, no more.
        tx.set_rtx_cache(1000, Duration::from_secs(3), None);
    }
    let mut rng = rand::thread_rng();
    pc.tracks.push(TrackOut {
        kind,
        mid,
        pt,
        red_pt,
        rewriter: Rewriter::new(clock_rate, rng.gen_range(1..0x4000), rng.r#gen()),
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_answer_origin_names_no_library() {
        let sdp = "v=0\r\no=str0m-0.25.0 123 2 IN IP4 0.0.0.0\r\ns=-\r\n";
        assert_eq!(
            super::plain_origin(sdp),
            "v=0\r\no=- 123 2 IN IP4 0.0.0.0\r\ns=-\r\n"
        );
        assert_eq!(super::plain_origin("v=0\r\n"), "v=0\r\n");
    }

    use super::*;

    #[test]
    fn restrict_offer_makes_missing_kinds_inactive() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=recvonly\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=recvonly\r\n";
        let audio_only = restrict_offer(
            sdp,
            Kinds {
                audio: true,
                video: false,
            },
        );
        assert_eq!(
            audio_only,
            "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=recvonly\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=inactive\r\n"
        );
        let both = Kinds {
            audio: true,
            video: true,
        };
        assert_eq!(restrict_offer(sdp, both), sdp);
    }

    #[test]
    fn junk_datagrams_are_dropped_and_counted() {
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

#[cfg(test)]
mod sim;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
