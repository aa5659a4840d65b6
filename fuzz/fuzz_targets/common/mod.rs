//! An in-memory network of str0m clients and the SFU core (after `src/sfu/sim.rs`): real
//! publish and play peer connections, set up on virtual time, so that fuzz input reaches the
//! paths behind ICE, DTLS and SRTP.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use huddle_proto::{AppId, MediaRole, ServerMsg, StreamId};
use huddle_server::registry::SessionId;
use huddle_server::sfu::{Command, Counters, Offer, Sfu, SfuConfig};
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpWrite;
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};

pub const SERVER: &str = "127.0.0.1:7882";

pub fn app() -> AppId {
    AppId::new(1).unwrap()
}

pub fn session(n: u64) -> SessionId {
    format!("{n}").parse().unwrap()
}

/// A client peer connection with its own address.
pub struct Peer {
    pub rtc: Rtc,
    pub addr: SocketAddr,
    pending: Option<SdpPendingOffer>,
    mids: Vec<(Mid, MediaKind)>,
    pub connected: bool,
    pub closed: bool,
    pub got: usize,
    seq: u64,
    /// Every datagram this peer sent to the server (to mutate).
    pub sent: Vec<Vec<u8>>,
}

impl Peer {
    pub fn new(now: Instant, port: u16, role: MediaRole, video: bool) -> (Peer, String) {
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut rtc = RtcConfig::new()
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .build(now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
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
        let (offer, pending) = api.apply().unwrap();
        let peer = Peer {
            rtc,
            addr,
            pending: Some(pending),
            mids,
            connected: false,
            closed: false,
            got: 0,
            seq: 100,
            sent: Vec::new(),
        };
        (peer, offer.to_sdp_string())
    }

    /// Sends one audio packet (or video with `video`).
    pub fn send(&mut self, video: bool, payload: &[u8], now: Instant) {
        let kind = if video { MediaKind::Video } else { MediaKind::Audio };
        let Some(&(mid, _)) = self.mids.iter().find(|(_, k)| *k == kind) else {
            return;
        };
        let codec = if video { Codec::Vp8 } else { Codec::Opus };
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
        self.seq += 1;
        let seq = self.seq;
        let mut api = self.rtc.direct_api();
        if let Some(tx) = api.stream_tx_by_mid(mid, None) {
            tx.write_rtp(
                RtpWrite::new(pt, seq.into(), (seq * 960) as u32, now, payload.to_vec()).marker(true),
            );
        }
    }

    fn drain(&mut self, out: &mut Vec<(SocketAddr, Vec<u8>)>) {
        while self.rtc.is_alive() {
            match self.rtc.poll_output() {
                Ok(Output::Transmit(t)) => {
                    let bytes: Vec<u8> = t.contents.into();
                    if self.sent.len() < 256 {
                        self.sent.push(bytes.clone());
                    }
                    out.push((self.addr, bytes));
                }
                Ok(Output::Timeout(_)) => return,
                Ok(Output::Event(e)) => match e {
                    Event::Connected => self.connected = true,
                    Event::RtpPacket(_) => self.got += 1,
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
}

/// The SFU and its clients on one virtual network.
pub struct Sim {
    pub sfu: Sfu,
    pub now: Instant,
    pub server: SocketAddr,
    pub signals: Vec<(SessionId, ServerMsg)>,
}

impl Sim {
    pub fn new() -> Sim {
        let server: SocketAddr = SERVER.parse().unwrap();
        let counters = Arc::new(Counters::default());
        Sim {
            sfu: Sfu::new(SfuConfig::new(server), counters),
            now: Instant::now(),
            server,
            signals: Vec::new(),
        }
    }

    pub fn command(&mut self, cmd: Command) {
        self.sfu.handle_command(self.now, cmd);
        self.drain_signals();
    }

    pub fn drain_signals(&mut self) {
        while let Some(s) = self.sfu.poll_signal() {
            // Whatever goes to a session must encode and decode.
            ServerMsg::decode(&s.1.encode()).expect("media signals decode");
            self.signals.push(s);
        }
    }

    pub fn offer(&mut self, who: u64, stream: &str, role: MediaRole, sdp: String) {
        self.command(Command::Offer(Offer {
            session: session(who),
            app: app(),
            stream_id: StreamId::new(stream).unwrap(),
            role,
            seq: 1,
            sdp,
        }));
    }

    /// Offers for `peer` and applies the answer.
    pub fn negotiate(&mut self, peer: &mut Peer, offer: String, who: u64, stream: &str, role: MediaRole) {
        self.offer(who, stream, role, offer);
        let i = self
            .signals
            .iter()
            .position(|(s, m)| *s == session(who) && matches!(m, ServerMsg::MediaAnswer { .. }))
            .expect("an answer");
        let ServerMsg::MediaAnswer { sdp, .. } = self.signals.remove(i).1 else {
            unreachable!()
        };
        let pending = peer.pending.take().unwrap();
        peer.rtc
            .sdp_api()
            .accept_answer(pending, SdpAnswer::from_sdp_string(&sdp).unwrap())
            .unwrap();
    }

    /// One millisecond of virtual time: every peer and the SFU exchange what they have.
    pub fn tick(&mut self, peers: &mut [&mut Peer]) {
        self.now += Duration::from_millis(1);
        let now = self.now;
        let mut up = Vec::new();
        for p in peers.iter_mut() {
            if !p.closed {
                let _ = p.rtc.handle_input(Input::Timeout(now));
                p.drain(&mut up);
            }
        }
        for (from, bytes) in up {
            self.sfu.handle_datagram(now, from, &bytes);
        }
        if self.sfu.poll_timeout().is_some_and(|t| t <= now) {
            self.sfu.handle_timeout(now);
        }
        self.deliver(peers);
        self.drain_signals();
        self.sfu.check_invariants().expect("SFU invariants");
    }

    /// Delivers the SFU's datagrams to the peers (and their answers back).
    pub fn deliver(&mut self, peers: &mut [&mut Peer]) {
        let now = self.now;
        let mut up = Vec::new();
        while let Some(t) = self.sfu.poll_transmit() {
            let Some(p) = peers.iter_mut().find(|p| p.addr == t.destination) else {
                continue;
            };
            if p.closed {
                continue;
            }
            if let Ok(r) = Receive::new(Protocol::Udp, self.server, p.addr, &t.contents) {
                let _ = p.rtc.handle_input(Input::Receive(now, r));
                p.drain(&mut up);
            }
        }
        for (from, bytes) in up {
            self.sfu.handle_datagram(now, from, &bytes);
        }
    }

    pub fn run(&mut self, peers: &mut [&mut Peer], ms: u64) {
        for _ in 0..ms {
            self.tick(peers);
        }
    }

    /// Ticks until every peer is connected (or gives up after 2 s of virtual time).
    pub fn connect(&mut self, peers: &mut [&mut Peer]) -> bool {
        for _ in 0..2000 {
            if peers.iter().all(|p| p.connected) {
                return true;
            }
            self.tick(peers);
        }
        false
    }
}
