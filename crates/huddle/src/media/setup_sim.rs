//! Setting up a client peer connection under loss, on virtual time.
//!
//! A client `Rtc` as the SDK builds it ([`client_config`]) and a server `Rtc` as the SFU builds
//! it (ICE-lite, the DTLS client as it answers the `actpass` of a client that declared
//! `setup_active` with `SfuConfig::dtls_active` (the default), or the DTLS server; RTP mode, the same `huddle_dtls` provider) exchange datagrams
//! through two seeded [`Link`]s (plus one each way for the publisher's media) (`huddle_media::impair`, the project's sans-IO netem): random
//! loss each way and a fixed delay, no socket and no sleep. Each call runs from the moment both
//! hold the SDP (the answer applied) until both report `Connected` (ICE and DTLS up, SRTP keys
//! on both ends) or a virtual deadline passes. What it shows (`docs/quality.md`, "Setup under
//! loss"): how long setup takes with the browser-like schedule and with the one before, with
//! the server as DTLS client and as DTLS server, and how far one end's `Connected` runs ahead
//! of the other's (the server's "media connected" before the client can decrypt, or the
//! client's `Publishing` before the server can).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use huddle_media::impair::{Impairment, Link};
use huddle_proto::MediaRole;
use str0m::change::SdpOffer;
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};

use super::pc::{SetupTiming, client_config};

/// One call's outcome: when each end reported `Connected`, from the answer.
#[derive(Debug, Clone, Copy)]
struct Setup {
    client: Option<Duration>,
    server: Option<Duration>,
    /// Publish: the first RTP packet the server decrypted (the client writes one every 20 ms
    /// from its `Connected`, which is its `Publishing`).
    media: Option<Duration>,
}

/// The seed of dimpl's retransmission jitter (the server's; the client's is the next number).
const SEED: u64 = 0x5e7u64;

/// A datagram in flight.
type Datagram = Vec<u8>;

/// The server's side, as `huddle_server::sfu` configures a peer connection; `dtls_active`: it
/// answers `actpass` as the DTLS client (`SfuConfig::dtls_active`, the default, for a client
/// that declared `setup_active`), else as the DTLS server (as before, and for older clients).
fn server_config(timing: SetupTiming, dtls_active: bool) -> RtcConfig {
    RtcConfig::new()
        .set_ice_lite(true)
        .set_dtls_active_answer(dtls_active)
        .set_rtp_mode(true)
        .clear_codecs()
        .enable_opus(true, true)
        .enable_vp8(true)
        .set_crypto_provider(huddle_dtls::crypto_provider_seeded(timing.dtls(), SEED))
}

/// One side of the call.
struct Side {
    rtc: Rtc,
    addr: SocketAddr,
    connected: Option<Instant>,
    /// The first RTP packet received and decrypted.
    media: Option<Instant>,
    next: Instant,
}

impl Side {
    /// Drains the output: datagrams onto `link`, `Connected` noted; the next timeout kept.
    /// RTP goes on `rtp` (a link of its own, so that the media the client writes draws no
    /// loss from the handshake's link: the same handshake losses with and without it).
    fn drain(&mut self, link: &mut Link<Datagram>, rtp: &mut Link<Datagram>, now: Instant) {
        loop {
            let Ok(output) = self.rtc.poll_output() else {
                // The handshake failed: this side never connects (the SDK would offer again).
                self.next = now + Duration::from_secs(3600);
                return;
            };
            match output {
                Output::Timeout(t) => {
                    self.next = t.max(now);
                    return;
                }
                // RTP and RTCP (RFC 7983: first byte 128–191) on their own link.
                Output::Transmit(t) if (128..192).contains(&t.contents[0]) => {
                    rtp.send(t.contents.to_vec(), now)
                }
                Output::Transmit(t) => link.send(t.contents.to_vec(), now),
                Output::Event(Event::Connected) => {
                    self.connected.get_or_insert(now);
                }
                Output::Event(Event::RtpPacket(_)) => {
                    self.media.get_or_insert(now);
                }
                Output::Event(_) => {}
            }
        }
    }

    fn receive(&mut self, from: SocketAddr, data: &[u8], now: Instant) {
        let r = Receive::new(Protocol::Udp, from, self.addr, data).expect("a datagram");
        // A datagram the `Rtc` refuses (a late one after a failure) is dropped, as the SDK does.
        let _ = self.rtc.handle_input(Input::Receive(now, r));
    }
}

/// One call: `loss` on each direction, `rtt` round trip, until both are connected or `limit`.
fn call(seed: u64, loss: f64, rtt: Duration, role: MediaRole, server: Server, limit: Duration) -> Setup {
    let Server { timing, dtls_active } = server;
    let t0 = Instant::now();
    let caddr: SocketAddr = "10.0.0.1:5000".parse().expect("address");
    let saddr: SocketAddr = "10.0.0.2:7882".parse().expect("address");
    // Seeded DTLS jitter on both sides: the same figures on every run.
    let mut client = client_config(timing)
        .set_crypto_provider(huddle_dtls::crypto_provider_seeded(timing.dtls(), SEED + 1))
        .build(t0);
    client.add_local_candidate(Candidate::host(caddr, "udp").expect("candidate"));
    let mut server = server_config(timing, dtls_active).build(t0);
    server.add_local_candidate(Candidate::host(saddr, "udp").expect("candidate"));
    let dir = match role {
        MediaRole::Publish => Direction::SendOnly,
        MediaRole::Play => Direction::RecvOnly,
    };
    let mut api = client.sdp_api();
    let mid = api.add_media(MediaKind::Audio, dir, None, None, None);
    let (offer, pending) = api.apply().expect("an offer");
    let offer = SdpOffer::from_sdp_string(&offer.to_sdp_string()).expect("the offer parses");
    let answer = server.sdp_api().accept_offer(offer).expect("answered");
    client.sdp_api().accept_answer(pending, answer).expect("accepted");

    let mut one_way = Impairment::default();
    one_way.loss = loss;
    one_way.delay = rtt / 2;
    let mut up = Link::new(one_way.clone(), seed * 2);
    let mut rtp_up = Link::new(one_way.clone(), seed * 2 + 1_000_000);
    let mut rtp_down = Link::new(one_way.clone(), seed * 2 + 1_000_001);
    let mut down = Link::new(one_way, seed * 2 + 1);
    let mut c = Side {
        rtc: client,
        addr: caddr,
        connected: None,
        media: None,
        next: t0,
    };
    let mut s = Side {
        rtc: server,
        addr: saddr,
        connected: None,
        media: None,
        next: t0,
    };
    let publish = role == MediaRole::Publish;
    let mut frame = 0u64;
    let mut now = t0;
    while now < t0 + limit
        && (c.connected.is_none() || s.connected.is_none() || (publish && s.media.is_none()))
    {
        let frame_at = c.connected.map(|t| t + Duration::from_millis(20) * frame as u32);
        if publish && frame_at.is_some_and(|t| t <= now) {
            // An Opus frame of silence, as the SDK's publisher writes one every 20 ms.
            let pt = c.rtc.writer(mid).and_then(|w| {
                w.payload_params()
                    .find(|p| p.spec().codec == Codec::Opus)
                    .map(|p| p.pt())
            });
            if let (Some(pt), Some(w)) = (pt, c.rtc.writer(mid)) {
                let time = MediaTime::new(frame * 960, Frequency::FORTY_EIGHT_KHZ);
                let _ = w.write(pt, now, time, vec![0xf8, 0xff, 0xfe]);
            }
            frame += 1;
            c.drain(&mut up, &mut rtp_up, now);
        }
        if c.next <= now {
            let _ = c.rtc.handle_input(Input::Timeout(now));
            c.drain(&mut up, &mut rtp_up, now);
        }
        if s.next <= now {
            let _ = s.rtc.handle_input(Input::Timeout(now));
            s.drain(&mut down, &mut rtp_down, now);
        }
        while let Some(d) = up.recv(now).or_else(|| rtp_up.recv(now)) {
            s.receive(caddr, &d, now);
            s.drain(&mut down, &mut rtp_down, now);
        }
        while let Some(d) = down.recv(now).or_else(|| rtp_down.recv(now)) {
            c.receive(saddr, &d, now);
            c.drain(&mut up, &mut rtp_up, now);
        }
        let mut next = c.next.min(s.next);
        if publish && let Some(t) = c.connected.map(|t| t + Duration::from_millis(20) * frame as u32) {
            next = next.min(t);
        }
        let arrivals = [
            up.next_arrival(),
            down.next_arrival(),
            rtp_up.next_arrival(),
            rtp_down.next_arrival(),
        ];
        for at in arrivals.into_iter().flatten() {
            next = next.min(at);
        }
        // Time always moves (str0m paces its own timeouts, at least 1 ms here).
        now = next.max(now + Duration::from_millis(1));
    }
    Setup {
        client: c.connected.map(|t| t - t0),
        server: s.connected.map(|t| t - t0),
        media: s.media.map(|t| t - t0),
    }
}

/// The `q`-quantile (0..=1) of `v` (sorted), the nearest rank.
fn quantile(v: &[Duration], q: f64) -> Duration {
    let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

/// What is compared: the client and server timers, and the server's DTLS role.
#[derive(Debug, Clone, Copy)]
struct Server {
    timing: SetupTiming,
    dtls_active: bool,
}

/// What 200 calls gave.
struct Figures {
    /// The client's `Connected` (when it can publish or play), sorted.
    times: Vec<Duration>,
    /// The largest lag of the client's `Connected` behind the server's.
    client_lag: Duration,
    /// The largest lag of the server's `Connected` behind the client's: the client says
    /// `Publishing` while the server cannot decrypt yet.
    server_lag: Duration,
    /// How far the later end's `Connected` came after the earlier one's, per call, sorted.
    gaps: Vec<Duration>,
    /// Publish: from the client's `Connected` (its `Publishing`) to the first packet the server
    /// decrypted, per call, sorted (50 ms, one way, when nothing is in the way).
    dead: Vec<Duration>,
    /// Calls not connected on both ends within the limit.
    unfinished: usize,
}

impl Figures {
    fn line(&self, label: &str, role: MediaRole) -> String {
        let t = &self.times;
        format!(
            "SETUP {label} {role:?} loss 30%: p50 {} ms, p95 {} ms, max {} ms, client lag <= {} ms, server lag <= {} ms, one end behind the other p50 {} ms p95 {} ms, unfinished {}",
            ms(quantile(t, 0.5)),
            ms(quantile(t, 0.95)),
            ms(quantile(t, 1.0)),
            ms(self.client_lag),
            ms(self.server_lag),
            ms(quantile(&self.gaps, 0.5)),
            ms(quantile(&self.gaps, 0.95)),
            self.unfinished
        ) + &if self.dead.is_empty() {
            String::new()
        } else {
            format!(
                "; first packet at the server after Publishing: p50 {} ms, p95 {} ms, max {} ms",
                ms(quantile(&self.dead, 0.5)),
                ms(quantile(&self.dead, 0.95)),
                ms(quantile(&self.dead, 1.0))
            )
        }
    }
}

/// Setup times of `seeds` calls, and how far each end ran ahead of the other.
fn run(seeds: std::ops::RangeInclusive<u64>, loss: f64, role: MediaRole, server: Server) -> Figures {
    let limit = Duration::from_secs(20);
    let mut f = Figures {
        times: Vec::new(),
        client_lag: Duration::ZERO,
        server_lag: Duration::ZERO,
        gaps: Vec::new(),
        dead: Vec::new(),
        unfinished: 0,
    };
    for seed in seeds {
        let r = call(seed, loss, Duration::from_millis(100), role, server, limit);
        match (r.client, r.server) {
            (Some(c), Some(s)) => {
                f.times.push(c);
                f.client_lag = f.client_lag.max(c.saturating_sub(s));
                f.server_lag = f.server_lag.max(s.saturating_sub(c));
                f.gaps.push(c.max(s) - c.min(s));
                if let Some(m) = r.media {
                    f.dead.push(m.saturating_sub(c));
                }
            }
            (c, s) => {
                f.unfinished += 1;
                if let (None, Some(s)) = (c, s) {
                    f.client_lag = f.client_lag.max(limit - s);
                }
                if let (Some(c), None) = (c, s) {
                    f.server_lag = f.server_lag.max(limit - c);
                }
            }
        }
    }
    f.times.sort();
    f.gaps.sort();
    f.dead.sort();
    f
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// At 30 % random loss each way and 100 ms RTT, 200 seeds, publish and play, with the server
/// as DTLS client (`SfuConfig::dtls_active`, the default) and as DTLS server, in one run:
/// every call is up on both ends, 95 % of them within 0.65 s with the server as DTLS client
/// (0.58 s measured; 0.96 s as DTLS server), the slowest within 2 s; neither end's `Connected` runs ahead of the other's by more
/// than 1.5 s (1.13 s measured with the client behind, 1.38 s with the server behind: its
/// "media connected" waits for the client's final flight, the media does not, below); and a
/// publisher's first packets reach the server (decrypted) within 200 ms of its
/// `Connected` (its `Publishing`), whichever end finished the handshake first (130 ms measured:
/// 50 ms one way and the media's own losses). The figures: `docs/quality.md`, "Setup under
/// loss"; the same on every run.
#[test]
fn setup_under_30_percent_loss_is_up_within_a_second() {
    for role in [MediaRole::Publish, MediaRole::Play] {
        for (label, dtls_active) in [("server DTLS server", false), ("server DTLS client", true)] {
            let server = Server {
                timing: SetupTiming::Browser,
                dtls_active,
            };
            let f = run(1..=200, 0.3, role, server);
            println!("{}", f.line(label, role));
            let (p95, max) = (quantile(&f.times, 0.95), quantile(&f.times, 1.0));
            assert_eq!(
                f.unfinished, 0,
                "{label} {role:?}: every call connects on both ends"
            );
            assert!(max <= Duration::from_secs(2), "{label} {role:?}: slowest {max:?}");
            let bound = if dtls_active { 650 } else { 1000 };
            assert!(
                p95 <= Duration::from_millis(bound),
                "{label} {role:?}: p95 {p95:?}"
            );
            assert!(
                f.client_lag.max(f.server_lag) <= Duration::from_millis(1500),
                "{label} {role:?}: one end connected {:?} / {:?} after the other",
                f.client_lag,
                f.server_lag
            );
            if role == MediaRole::Publish {
                assert_eq!(
                    f.dead.len(),
                    200,
                    "{label}: media reached the server in every call"
                );
                let dead = quantile(&f.dead, 1.0);
                assert!(
                    dead <= Duration::from_millis(200),
                    "{label}: first packet {dead:?} after Publishing"
                );
            }
        }
    }
}

/// The schedule before, for comparison (printed; asserted only where the issue saw it): a
/// DTLS flight lost once waits 1 s, then 2, 4, 8 s, so the client reaches `Connected` seconds
/// after the server, or never.
#[test]
fn legacy_setup_under_30_percent_loss_lags_by_seconds() {
    let server = Server {
        timing: SetupTiming::Legacy,
        dtls_active: false,
    };
    let f = run(1..=200, 0.3, MediaRole::Publish, server);
    println!("{}", f.line("legacy", MediaRole::Publish));
    assert!(quantile(&f.times, 0.95) > Duration::from_secs(2));
}
