//! The SFU's public vocabulary: its configuration, the commands signaling sends it, and the
//! counters it keeps (shared with monitoring).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use huddle_proto::{AppId, MediaRole, StreamId, TrackKind};
use str0m::net::Transmit;

use crate::registry::SessionId;

/// Datagrams queued for the socket before new ones are dropped (the shell drains the queue after
/// every input, so this is only reached when the socket refuses to send).
pub(super) const MAX_QUEUED_TRANSMITS: usize = 8192;

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
    /// Draw DTLS's retransmission jitter from this seed instead of at random
    /// (`huddle_dtls::crypto_provider_seeded`): for simulations on virtual time that must come
    /// out the same on every run (the SDK's end-to-end harness). `None` (the default) for
    /// every real server.
    pub dtls_seed: Option<u64>,
    /// How often the server sends its RTCP receiver report on a publish connection's audio
    /// (str0m's default for audio is 5 s). The publisher's quality events and its encoder's
    /// adapter read their loss, jitter and RTT from these reports, so they are only as timely
    /// as the reports are frequent (`docs/quality.md`, "Quality events under loss"). Video
    /// keeps str0m's 1 s.
    pub publish_report_interval: Duration,
    /// Whether the receiver reports to a publisher carry the worst loss of its players
    /// without RED (so that its in-band FEC covers them; `docs/quality.md`, "FEC for players
    /// without RED"). On by default; off only to measure without it.
    pub report_players_loss: bool,
    /// Whether the server answers an `a=setup:actpass` offer as the DTLS client
    /// (`a=setup:active`, RFC 5763 section 5's recommendation) when the client declared that it
    /// starts ICE on such an answer ([`Offer::setup_active`]): its ClientHello leaves with its
    /// response to the client's first ICE check, and the handshake ends one flight earlier; a
    /// player's media flows once the server's Finished is out (`forward`; `docs/quality.md`,
    /// "Setup under loss"). An offer that says `active` or `passive` gets the other role
    /// either way. On by default (`dtls_active` in the server's configuration).
    pub dtls_active: bool,
}

impl SfuConfig {
    /// Defaults around one `candidate`: 15 s connect timeout, 5 s play wait, 20 000 PCs, shard
    /// 0, a receiver report a second to publishers.
    pub fn new(candidate: SocketAddr) -> SfuConfig {
        SfuConfig {
            candidates: vec![candidate],
            tcp_port: None,
            connect_timeout: Duration::from_secs(15),
            play_wait: Duration::from_secs(5),
            max_peer_connections: 20_000,
            shard: 0,
            dtls_seed: None,
            publish_report_interval: Duration::from_secs(1),
            report_players_loss: true,
            dtls_active: true,
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
    /// The session stops (`mute`) or resumes receiving one track of a stream it plays
    /// (`mute_play`): kept for its play PCs of the stream until it stops playing it.
    MutePlay {
        /// The session.
        session: SessionId,
        /// The app.
        app: AppId,
        /// The stream.
        stream_id: StreamId,
        /// Audio or video.
        track: TrackKind,
        /// Stop (true) or resume (false).
        mute: bool,
    },
    /// The session ended (logout, kick, grace expiry): close its PCs, and the play PCs of the
    /// streams it published.
    SessionGone {
        /// The session.
        session: SessionId,
    },
    /// Pull the stream from the node that publishes it: build a relay publisher (a PC that
    /// offers to receive the stream, on the link's socket at `local`) and hand its offer to
    /// `session` as a `media_answer` whose `sdp` is the offer (`docs/cluster.md`).
    PullOffer {
        /// The link's session (not a client's).
        session: SessionId,
        /// The app.
        app: AppId,
        /// The stream.
        stream_id: StreamId,
        /// The address of the link's socket.
        local: SocketAddr,
    },
    /// The stream's node answered the pull's offer.
    PullAnswer {
        /// The link's session.
        session: SessionId,
        /// The app.
        app: AppId,
        /// The stream.
        stream_id: StreamId,
        /// The SDP answer.
        sdp: String,
    },
    /// The stream is to be recorded (server API `StartRecord`): ask the recorder for a tap if
    /// its publisher's media is here and it has none.
    Record {
        /// The app.
        app: AppId,
        /// The stream.
        stream_id: StreamId,
    },
    /// The link broke: close the relay publisher alone (the players keep their PCs and get
    /// media again from the next link).
    PullBroken {
        /// The link's session.
        session: SessionId,
        /// The app.
        app: AppId,
        /// The stream.
        stream_id: StreamId,
    },
}

impl Command {
    /// The stream the command is about (none for `SessionGone`, which is about every stream).
    #[must_use]
    pub fn stream(&self) -> Option<(AppId, &StreamId)> {
        match self {
            Command::Offer(o) => Some((o.app, &o.stream_id)),
            Command::ClosePublish { app, stream_id }
            | Command::ClosePlay { app, stream_id, .. }
            | Command::MutePlay { app, stream_id, .. }
            | Command::PullOffer { app, stream_id, .. }
            | Command::PullAnswer { app, stream_id, .. }
            | Command::PullBroken { app, stream_id, .. }
            | Command::Record { app, stream_id } => Some((*app, stream_id)),
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
    /// The client starts ICE when answered `a=setup:active` (its `Login` said so): the answer
    /// may make the server the DTLS client ([`SfuConfig::dtls_active`]).
    pub setup_active: bool,
    /// Play: how far back the player waits for RED's copies (`media_offer`'s `red_depth`).
    pub red_depth: u8,
}

/// Counters of the media plane, shared by its threads and with monitoring (relaxed atomic
/// increments: no lock, no ordering needed).
#[derive(Debug, Default)]
pub struct Counters {
    /// RTP payload bytes received from publishers.
    pub(super) rtp_bytes_in: AtomicU64,
    /// RTP payload bytes written to players.
    pub(super) rtp_bytes_forwarded: AtomicU64,
    /// Packets missing from publishers' sequence numbers when a later one arrived.
    pub(super) rtp_lost: AtomicU64,
    /// NACKs received from players (str0m's egress statistics).
    pub(super) nacks_in: AtomicU64,
    /// NACKs sent to publishers (str0m's ingress statistics).
    pub(super) nacks_out: AtomicU64,
    /// Packets sent again to players in answer to their NACKs.
    pub(super) rtx_sent: AtomicU64,
    /// How long after its offer a PC forwarded (play) or received (publish) its first packet.
    pub first_packet: FirstPacket,
    pub(super) datagrams_in: AtomicU64,
    pub(super) dropped_unknown: AtomicU64,
    pub(super) dropped_invalid: AtomicU64,
    pub(super) rtp_in: AtomicU64,
    pub(super) rtp_forwarded: AtomicU64,
    pub(super) rtp_muted: AtomicU64,
    pub(super) transmits_dropped: AtomicU64,
    pub(super) keyframe_requests: AtomicU64,
    pub(super) pcs_opened: AtomicU64,
    pub(super) pcs_closed: AtomicU64,
    pub(super) pcs_connected: AtomicU64,
    pub(super) dropped_overload: AtomicU64,
    pub(super) dropped_stale: AtomicU64,
}

/// Queues a datagram for the socket, or drops and counts it when the queue is full.
pub(super) fn queue_transmit(transmits: &mut VecDeque<Transmit>, counters: &Counters, t: Transmit) {
    if transmits.len() >= MAX_QUEUED_TRANSMITS {
        bump(&counters.transmits_dropped);
    } else {
        transmits.push_back(t);
    }
}

pub(super) fn bump(c: &AtomicU64) {
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
            rtp_bytes_in: g(&self.rtp_bytes_in),
            rtp_bytes_forwarded: g(&self.rtp_bytes_forwarded),
            rtp_lost: g(&self.rtp_lost),
            nacks_in: g(&self.nacks_in),
            nacks_out: g(&self.nacks_out),
            rtx_sent: g(&self.rtx_sent),
            datagrams_in: g(&self.datagrams_in),
            dropped_unknown: g(&self.dropped_unknown),
            dropped_invalid: g(&self.dropped_invalid),
            rtp_in: g(&self.rtp_in),
            rtp_forwarded: g(&self.rtp_forwarded),
            rtp_muted: g(&self.rtp_muted),
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
    /// RTP payload bytes received from publishers (headers not counted).
    pub rtp_bytes_in: u64,
    /// RTP payload bytes written to players (one copy per player; headers not counted).
    pub rtp_bytes_forwarded: u64,
    /// Packets missing from a publisher's sequence numbers when a later packet arrived: lost
    /// upstream or reordered (a NACK may still bring them).
    pub rtp_lost: u64,
    /// NACKs received from players (each may name several packets).
    pub nacks_in: u64,
    /// NACKs sent to publishers.
    pub nacks_out: u64,
    /// Packets sent again to players (RTX) in answer to their NACKs.
    pub rtx_sent: u64,
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
    /// RTP packets not written to a player because it muted their track (`mute_play`).
    pub rtp_muted: u64,
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

/// The seconds from an offer to a PC's first packet, by role: a Prometheus histogram whose
/// children are looked up once here, so that an observation is a few atomic additions on the
/// shard's thread (once per PC, never per packet).
pub struct FirstPacket {
    /// The family (`huddle_first_packet_seconds`), registered by `/metrics`.
    pub vec: prometheus::HistogramVec,
    pub(super) publish: prometheus::Histogram,
    pub(super) play: prometheus::Histogram,
}

/// The buckets of the latency histograms: 10 ms to 10 s, about three per decade.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

impl Default for FirstPacket {
    fn default() -> FirstPacket {
        let vec = prometheus::HistogramVec::new(
            prometheus::HistogramOpts::new(
                "huddle_first_packet_seconds",
                "From a media offer to the PC's first RTP packet: forwarded to the player (role play; \
                 a play offer that waits for the publisher's media counts the wait), or received \
                 from the publisher (role publish).",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["role"],
        )
        .expect("a valid histogram");
        let publish = vec.with_label_values(&["publish"]);
        let play = vec.with_label_values(&["play"]);
        FirstPacket { vec, publish, play }
    }
}

impl std::fmt::Debug for FirstPacket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FirstPacket")
            .field("publish", &self.publish.get_sample_count())
            .field("play", &self.play.get_sample_count())
            .finish()
    }
}

impl FirstPacket {
    pub(super) fn observe(&self, play: bool, took: std::time::Duration) {
        let h = if play { &self.play } else { &self.publish };
        h.observe(took.as_secs_f64());
    }
}
