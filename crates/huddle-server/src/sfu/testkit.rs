//! A virtual network for the SFU core: str0m clients and an [`Sfu`] exchange datagrams in memory
//! on virtual time (no socket, no sleep), with loss injected where a caller wants it.
//!
//! The deterministic SFU tests (`sfu/sim.rs`) and the forwarding benchmark
//! (`benches/forward.rs`, feature `testkit`) share it. Not part of the server's API.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use huddle_proto::{AppId, MediaRole, ServerMsg, StreamId};
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{RtpPacket, RtpWrite};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};

use super::{Command, Counters, Offer, Sfu, SfuConfig};
use crate::registry::SessionId;

const SERVER: &str = "127.0.0.1:7882";

/// The one app of the virtual network.
pub fn app() -> AppId {
    AppId::new(1).expect("app 1")
}

/// The session numbered `n`.
pub fn session(n: u64) -> SessionId {
    format!("{n}").parse().expect("a session ID")
}

/// A client peer connection with its own address.
pub struct Peer {
    /// The client's WebRTC state.
    pub rtc: Rtc,
    /// Its address on the virtual network.
    pub addr: SocketAddr,
    pending: Option<SdpPendingOffer>,
    mids: Vec<(Mid, MediaKind)>,
    /// ICE and DTLS are up.
    pub connected: bool,
    /// The connection ended (closed or failed).
    pub closed: bool,
    /// Every RTP packet received, in order.
    pub got: Vec<RtpPacket>,
    /// Keyframe requests received.
    pub keyframe_requests: usize,
    /// The next sequence number to send, audio then video.
    pub seq: [u64; 2],
    /// Keep received packets in `got` (a benchmark counts them only).
    pub keep: bool,
    /// RTP packets received.
    pub received: u64,
    /// Keep the datagrams this peer sends in `sent` (a fuzz target mutates them).
    pub capture: bool,
    /// The first 256 datagrams sent to the server, when `capture`.
    pub sent: Vec<Vec<u8>>,
}

impl Peer {
    /// A client on 127.0.0.1:`port` offering to publish or play audio, and video when `video`;
    /// returns it with its offer.
    pub fn new(now: Instant, port: u16, role: MediaRole, video: bool) -> (Peer, String) {
        Peer::with_red(now, port, role, video, false)
    }

    /// A peer that offers RED (RFC 2198) for Opus when `red`.
    pub fn with_red(now: Instant, port: u16, role: MediaRole, video: bool, red: bool) -> (Peer, String) {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut rtc = RtcConfig::new()
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, red)
            .enable_vp8(true)
            .build(now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").expect("a host candidate"));
        let dir = match role {
            MediaRole::Publish => Direction::SendOnly,
            MediaRole::Play => Direction::RecvOnly,
        };
        let mut api = rtc.sdp_api();
        let mut mids = vec![(
            api.add_media(MediaKind::Audio, dir, None, None, None),
            MediaKind::Audio,
        )];
        if video {
            mids.push((
                api.add_media(MediaKind::Video, dir, None, None, None),
                MediaKind::Video,
            ));
        }
        let (offer, pending) = api.apply().expect("an offer");
        let peer = Peer {
            rtc,
            addr,
            pending: Some(pending),
            mids,
            connected: false,
            closed: false,
            got: Vec::new(),
            keyframe_requests: 0,
            seq: [100, 5000],
            keep: true,
            received: 0,
            capture: false,
            sent: Vec::new(),
        };
        (peer, offer.to_sdp_string())
    }

    /// Applies the server's answer to the peer's offer.
    ///
    /// # Panics
    /// When no offer is pending or the answer does not apply.
    pub fn accept(&mut self, sdp: &str) {
        let pending = self.pending.take().expect("an offer pending");
        self.rtc
            .sdp_api()
            .accept_answer(pending, SdpAnswer::from_sdp_string(sdp).expect("an SDP answer"))
            .expect("the answer applies");
    }

    /// The media line of `kind`.
    pub fn mid(&self, kind: MediaKind) -> Mid {
        self.mids
            .iter()
            .find(|(_, k)| *k == kind)
            .expect("a media line")
            .0
    }

    /// Writes one RTP packet of `kind` (the next sequence number, marker set, NACK-able); nothing
    /// when the peer has no such media or stream (say its connection failed).
    pub fn send(&mut self, kind: MediaKind, payload: &[u8], now: Instant) {
        let codec = if kind.is_audio() { Codec::Opus } else { Codec::Vp8 };
        let Some(pt) = self
            .rtc
            .codec_config()
            .params()
            .iter()
            .find(|p| p.spec().codec == codec)
            .map(|p| p.pt())
        else {
            return;
        };
        let Some(&(mid, _)) = self.mids.iter().find(|(_, k)| *k == kind) else {
            return;
        };
        let i = usize::from(kind.is_video());
        let seq = self.seq[i];
        self.seq[i] += 1;
        let mut api = self.rtc.direct_api();
        let Some(tx) = api.stream_tx_by_mid(mid, None) else {
            return;
        };
        let step = if kind.is_audio() { 960 } else { 3000 };
        tx.write_rtp(
            RtpWrite::new(pt, seq.into(), (seq * step) as u32, now, payload.to_vec())
                .marker(true)
                .nackable(true),
        );
    }

    /// Drains the peer's output: datagrams to the server go to `out` (sender and bytes).
    pub fn drain(&mut self, out: &mut Vec<(SocketAddr, Vec<u8>)>) {
        let mut with_to = Vec::new();
        self.drain_to(&mut with_to);
        out.extend(with_to.into_iter().map(|(from, _, bytes)| (from, bytes)));
    }

    /// Drains the peer's output: datagrams to the server go to `out` (sender, the server address
    /// they are sent to, bytes).
    pub fn drain_to(&mut self, out: &mut Vec<(SocketAddr, SocketAddr, Vec<u8>)>) {
        while self.rtc.is_alive() {
            match self.rtc.poll_output() {
                Ok(Output::Transmit(t)) => {
                    let bytes: Vec<u8> = t.contents.into();
                    if self.capture && self.sent.len() < 256 {
                        self.sent.push(bytes.clone());
                    }
                    out.push((self.addr, t.destination, bytes));
                }
                Ok(Output::Timeout(_)) => return,
                Ok(Output::Event(e)) => match e {
                    Event::Connected => self.connected = true,
                    Event::RtpPacket(p) => {
                        self.received += 1;
                        if self.keep {
                            self.got.push(p);
                        }
                    }
                    Event::KeyframeRequest(_) => self.keyframe_requests += 1,
                    Event::Closed => self.closed = true,
                    _ => {}
                },
                Err(_) => {
                    self.closed = true;
                    return;
                }
            }
        }
        self.closed = true;
    }

    /// Hands the peer a datagram from the server and drains its output into `up`.
    pub fn receive(
        &mut self,
        now: Instant,
        server: SocketAddr,
        bytes: &[u8],
        up: &mut Vec<(SocketAddr, Vec<u8>)>,
    ) {
        if self.closed {
            return;
        }
        if let Ok(r) = Receive::new(Protocol::Udp, server, self.addr, bytes) {
            let _ = self.rtc.handle_input(Input::Receive(now, r));
            self.drain(up);
        }
    }

    /// As [`Peer::receive`], with the server address each datagram in `up` is sent to.
    pub fn receive_to(
        &mut self,
        now: Instant,
        server: SocketAddr,
        bytes: &[u8],
        up: &mut Vec<(SocketAddr, SocketAddr, Vec<u8>)>,
    ) {
        if self.closed {
            return;
        }
        if let Ok(r) = Receive::new(Protocol::Udp, server, self.addr, bytes) {
            let _ = self.rtc.handle_input(Input::Receive(now, r));
            self.drain_to(up);
        }
    }
}

/// Decides whether a datagram from the server to a client address is lost.
pub type DropFilter = Box<dyn FnMut(SocketAddr, &[u8]) -> bool>;

/// The SFU and its clients on one virtual network.
pub struct Sim {
    /// The SFU under test.
    pub sfu: Sfu,
    /// Its counters.
    pub counters: Arc<Counters>,
    /// Virtual time.
    pub now: Instant,
    /// The SFU's address (its first candidate).
    pub server: SocketAddr,
    /// Server addresses that lose every datagram sent to them (a candidate the clients cannot
    /// reach).
    pub unreachable: Vec<SocketAddr>,
    /// Datagrams the clients sent to an unreachable address.
    pub lost_up: u64,
    /// Every distinct source address the SFU sent from.
    pub sources: Vec<SocketAddr>,
    /// Signaling messages from the SFU, not yet taken.
    pub signals: Vec<(SessionId, ServerMsg)>,
    /// Drops datagrams from the server to a client when it returns true.
    pub drop_down: DropFilter,
    /// Drops datagrams from a client (its address) to the server when it returns true.
    pub drop_up: DropFilter,
    /// The `red_depth` the next play offers declare (the SDK's, [`crate::sfu::red::SDK_DEPTH`],
    /// unless a test sets it; 0 is a browser's).
    pub red_depth: u8,
}

impl Default for Sim {
    fn default() -> Self {
        Sim::new()
    }
}

impl Sim {
    /// An SFU alone on the network, at the current time.
    pub fn new() -> Sim {
        Sim::with_candidates(vec![SERVER.parse().expect("the server address")])
    }

    /// An SFU with these candidates (at least one).
    ///
    /// # Panics
    /// With no candidate.
    pub fn with_candidates(candidates: Vec<SocketAddr>) -> Sim {
        let server = candidates[0];
        let counters = Arc::new(Counters::default());
        let mut config = SfuConfig::new(server);
        config.candidates = candidates;
        Sim {
            sfu: Sfu::new(config, counters.clone()),
            counters,
            now: Instant::now(),
            server,
            unreachable: Vec::new(),
            lost_up: 0,
            sources: Vec::new(),
            signals: Vec::new(),
            drop_down: Box::new(|_, _| false),
            drop_up: Box::new(|_, _| false),
            red_depth: super::red::SDK_DEPTH,
        }
    }

    /// Gives the SFU a signaling command and collects its signals.
    pub fn command(&mut self, cmd: Command) {
        self.sfu.handle_command(self.now, cmd);
        self.drain_signals();
    }

    /// Collects the SFU's signaling messages into `signals`.
    ///
    /// # Panics
    /// When one does not survive encoding and decoding (what goes to a session must).
    pub fn drain_signals(&mut self) {
        while let Some(s) = self.sfu.poll_signal() {
            ServerMsg::decode(&s.1.encode()).expect("media signals decode");
            self.signals.push(s);
        }
    }

    /// Session `who` offers `sdp` to publish or play `stream` (sequence number 1).
    pub fn offer(&mut self, who: u64, stream: &str, role: MediaRole, sdp: String) {
        self.command(Command::Offer(Offer {
            session: session(who),
            app: app(),
            stream_id: StreamId::new(stream).expect("a stream ID"),
            role,
            seq: 1,
            sdp,
            setup_active: true,
            red_depth: self.red_depth,
        }));
    }

    /// Offers for `peer` (session `who`, stream `stream`) and applies the answer.
    ///
    /// # Panics
    /// When the SFU does not answer.
    pub fn negotiate(&mut self, peer: &mut Peer, offer: String, who: u64, stream: &str, role: MediaRole) {
        self.offer(who, stream, role, offer);
        let i = self
            .signals
            .iter()
            .position(|(s, m)| *s == session(who) && matches!(m, ServerMsg::MediaAnswer { .. }))
            .unwrap_or_else(|| panic!("no answer: {:?}", self.signals));
        let ServerMsg::MediaAnswer { sdp, .. } = self.signals.remove(i).1 else {
            unreachable!()
        };
        peer.accept(&sdp);
    }

    /// Delivers the SFU's queued datagrams to the peers (through `drop_down`), from the source
    /// the SFU chose; what the peers answer goes to `up`.
    pub fn deliver(&mut self, peers: &mut [&mut Peer], up: &mut Vec<(SocketAddr, Vec<u8>)>) {
        let mut with_to = Vec::new();
        self.deliver_to(peers, &mut with_to);
        up.extend(with_to.into_iter().map(|(from, _, bytes)| (from, bytes)));
    }

    /// As [`Sim::deliver`], with the server address each answer is sent to.
    pub fn deliver_to(&mut self, peers: &mut [&mut Peer], up: &mut Vec<(SocketAddr, SocketAddr, Vec<u8>)>) {
        let now = self.now;
        while let Some(t) = self.sfu.poll_transmit() {
            if !self.sources.contains(&t.source) {
                self.sources.push(t.source);
            }
            if (self.drop_down)(t.destination, &t.contents) {
                continue;
            }
            let Some(p) = peers.iter_mut().find(|p| p.addr == t.destination) else {
                continue;
            };
            p.receive_to(now, t.source, &t.contents, up);
        }
    }

    /// Hands the clients' datagrams to the SFU, each with the server address it was sent to;
    /// those to an unreachable address are lost.
    fn up(&mut self, now: Instant, up: Vec<(SocketAddr, SocketAddr, Vec<u8>)>) {
        for (from, to, bytes) in up {
            if self.unreachable.contains(&to) {
                self.lost_up += 1;
                continue;
            }
            if (self.drop_up)(from, &bytes) {
                continue;
            }
            self.sfu.handle_datagram_to(now, from, to, &bytes);
        }
    }

    /// Delivers the SFU's queued datagrams to the peers and their answers back to the SFU.
    pub fn exchange(&mut self, peers: &mut [&mut Peer]) {
        let mut up = Vec::new();
        self.deliver_to(peers, &mut up);
        self.up(self.now, up);
    }

    /// One millisecond of virtual time: every peer and the SFU exchange what they have.
    ///
    /// # Panics
    /// When the SFU's tables break an invariant.
    pub fn tick(&mut self, peers: &mut [&mut Peer]) {
        self.now += Duration::from_millis(1);
        let now = self.now;
        let mut up = Vec::new();
        for p in peers.iter_mut() {
            if !p.closed {
                let _ = p.rtc.handle_input(Input::Timeout(now));
                p.drain_to(&mut up);
            }
        }
        self.up(now, up);
        if self.sfu.poll_timeout().is_some_and(|t| t <= now) {
            self.sfu.handle_timeout(now);
        }
        self.exchange(peers);
        self.drain_signals();
        self.sfu.check_invariants().expect("the SFU's invariants");
    }

    /// `ms` milliseconds of virtual time.
    pub fn run(&mut self, peers: &mut [&mut Peer], ms: u64) {
        for _ in 0..ms {
            self.tick(peers);
        }
    }

    /// Session 1 publishing stream "s" from 127.0.0.1:10001 and session 2 playing it from
    /// 10002, audio (and video when `video`), both connected.
    pub fn publisher_and_player(&mut self, video: bool) -> (Peer, Peer) {
        let (mut publisher, offer) = Peer::new(self.now, 10_001, MediaRole::Publish, video);
        self.negotiate(&mut publisher, offer, 1, "s", MediaRole::Publish);
        let (mut player, offer) = Peer::new(self.now, 10_002, MediaRole::Play, video);
        self.negotiate(&mut player, offer, 2, "s", MediaRole::Play);
        self.connect(&mut [&mut publisher, &mut player]);
        (publisher, player)
    }

    /// Runs until every peer is connected.
    ///
    /// # Panics
    /// When they are not within 2 s of virtual time.
    pub fn connect(&mut self, peers: &mut [&mut Peer]) {
        for _ in 0..2000 {
            if peers.iter().all(|p| p.connected) {
                return;
            }
            self.tick(peers);
        }
        panic!("peers did not connect");
    }
}

/// An Opus-like payload (a valid TOC byte, then 60 bytes that depend on `i`).
pub fn payload(i: usize) -> Vec<u8> {
    let mut p = vec![0xf8];
    p.extend((0..60).map(|j| (i * 7 + j) as u8));
    p
}
