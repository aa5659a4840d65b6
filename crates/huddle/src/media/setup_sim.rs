//! Setting up a client peer connection under loss, on virtual time.
//!
//! A client `Rtc` as the SDK builds it ([`client_config`]) and a server `Rtc` as the SFU builds
//! it (ICE-lite, the DTLS server, RTP mode, the same `huddle_dtls` provider) exchange datagrams
//! through two seeded [`Link`]s (`huddle_media::impair`, the project's sans-IO netem): random
//! loss each way and a fixed delay, no socket and no sleep. Each call runs from the moment both
//! hold the SDP (the answer applied) until both report `Connected` (ICE and DTLS up, SRTP keys
//! on both ends) or a virtual deadline passes. What it shows (`docs/quality.md`, "Setup under
//! loss"): how long setup takes with the browser-like schedule and with the one before, and
//! that the server no longer reports a connection that the client does not reach.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use huddle_media::impair::{Impairment, Link};
use huddle_proto::MediaRole;
use str0m::change::SdpOffer;
use str0m::media::{Direction, MediaKind};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};

use super::pc::{SetupTiming, client_config};

/// One call's outcome: when each end reported `Connected`, from the answer.
#[derive(Debug, Clone, Copy)]
struct Setup {
    client: Option<Duration>,
    server: Option<Duration>,
}

/// The seed of dimpl's retransmission jitter (the server's; the client's is the next number).
const SEED: u64 = 0x5e7u64;

/// A datagram in flight.
type Datagram = Vec<u8>;

/// The server's side, as `huddle_server::sfu` configures a peer connection.
fn server_config(timing: SetupTiming) -> RtcConfig {
    RtcConfig::new()
        .set_ice_lite(true)
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
    next: Instant,
}

impl Side {
    /// Drains the output: datagrams onto `link`, `Connected` noted; the next timeout kept.
    fn drain(&mut self, link: &mut Link<Datagram>, now: Instant) {
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
                Output::Transmit(t) => link.send(t.contents.to_vec(), now),
                Output::Event(Event::Connected) => {
                    self.connected.get_or_insert(now);
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
fn call(seed: u64, loss: f64, rtt: Duration, role: MediaRole, timing: SetupTiming, limit: Duration) -> Setup {
    let t0 = Instant::now();
    let caddr: SocketAddr = "10.0.0.1:5000".parse().expect("address");
    let saddr: SocketAddr = "10.0.0.2:7882".parse().expect("address");
    // Seeded DTLS jitter on both sides: the same figures on every run.
    let mut client = client_config(timing)
        .set_crypto_provider(huddle_dtls::crypto_provider_seeded(timing.dtls(), SEED + 1))
        .build(t0);
    client.add_local_candidate(Candidate::host(caddr, "udp").expect("candidate"));
    let mut server = server_config(timing).build(t0);
    server.add_local_candidate(Candidate::host(saddr, "udp").expect("candidate"));
    let dir = match role {
        MediaRole::Publish => Direction::SendOnly,
        MediaRole::Play => Direction::RecvOnly,
    };
    let mut api = client.sdp_api();
    api.add_media(MediaKind::Audio, dir, None, None, None);
    let (offer, pending) = api.apply().expect("an offer");
    let offer = SdpOffer::from_sdp_string(&offer.to_sdp_string()).expect("the offer parses");
    let answer = server.sdp_api().accept_offer(offer).expect("answered");
    client.sdp_api().accept_answer(pending, answer).expect("accepted");

    let mut one_way = Impairment::default();
    one_way.loss = loss;
    one_way.delay = rtt / 2;
    let mut up = Link::new(one_way.clone(), seed * 2);
    let mut down = Link::new(one_way, seed * 2 + 1);
    let mut c = Side {
        rtc: client,
        addr: caddr,
        connected: None,
        next: t0,
    };
    let mut s = Side {
        rtc: server,
        addr: saddr,
        connected: None,
        next: t0,
    };
    let mut now = t0;
    while now < t0 + limit && (c.connected.is_none() || s.connected.is_none()) {
        if c.next <= now {
            let _ = c.rtc.handle_input(Input::Timeout(now));
            c.drain(&mut up, now);
        }
        if s.next <= now {
            let _ = s.rtc.handle_input(Input::Timeout(now));
            s.drain(&mut down, now);
        }
        while let Some(d) = up.recv(now) {
            s.receive(caddr, &d, now);
            s.drain(&mut down, now);
        }
        while let Some(d) = down.recv(now) {
            c.receive(saddr, &d, now);
            c.drain(&mut up, now);
        }
        let mut next = c.next.min(s.next);
        for at in [up.next_arrival(), down.next_arrival()].into_iter().flatten() {
            next = next.min(at);
        }
        // Time always moves (str0m paces its own timeouts, at least 1 ms here).
        now = next.max(now + Duration::from_millis(1));
    }
    Setup {
        client: c.connected.map(|t| t - t0),
        server: s.connected.map(|t| t - t0),
    }
}

/// The `q`-quantile (0..=1) of `v` (sorted), the nearest rank.
fn quantile(v: &[Duration], q: f64) -> Duration {
    let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

/// Setup times of `seeds` calls (the client's `Connected`, which is when it can publish or
/// play), and the largest lag of the client's `Connected` behind the server's.
fn run(
    seeds: std::ops::RangeInclusive<u64>,
    loss: f64,
    role: MediaRole,
    timing: SetupTiming,
) -> (Vec<Duration>, Duration, usize) {
    let limit = Duration::from_secs(20);
    let mut times = Vec::new();
    let mut lag = Duration::ZERO;
    let mut unfinished = 0;
    for seed in seeds {
        let r = call(seed, loss, Duration::from_millis(100), role, timing, limit);
        match (r.client, r.server) {
            (Some(c), Some(s)) => {
                times.push(c);
                lag = lag.max(c.saturating_sub(s));
            }
            _ => {
                unfinished += 1;
                if let Some(s) = r.server {
                    lag = lag.max(limit - s);
                }
            }
        }
    }
    times.sort();
    (times, lag, unfinished)
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// At 30 % random loss each way and 100 ms RTT, every call of 200 seeds is up on both ends
/// within 5 virtual seconds, 95 % of them within 2 s (1.5 s measured; the rest is ICE, whose
/// checks still back off to 400 ms), and the client's `Connected` (its `Publishing`) follows
/// the server's ("media connected") by at most 2.5 s (2.0 s with this seed; 19.8 s, and 11 calls
/// never connected on the client, before).
#[test]
fn setup_under_30_percent_loss_is_up_within_a_second() {
    for role in [MediaRole::Publish, MediaRole::Play] {
        let (times, lag, unfinished) = run(1..=200, 0.3, role, SetupTiming::Browser);
        let (p50, p95, max) = (
            quantile(&times, 0.5),
            quantile(&times, 0.95),
            quantile(&times, 1.0),
        );
        println!(
            "SETUP browser {role:?} loss 30%: p50 {} ms, p95 {} ms, max {} ms, client lag <= {} ms, unfinished {unfinished}",
            ms(p50),
            ms(p95),
            ms(max),
            ms(lag)
        );
        assert_eq!(unfinished, 0, "{role:?}: every call connects on both ends");
        assert!(max <= Duration::from_secs(5), "{role:?}: slowest setup {max:?}");
        assert!(p95 <= Duration::from_secs(2), "{role:?}: p95 {p95:?}");
        assert!(
            lag <= Duration::from_millis(2500),
            "{role:?}: the client connected {lag:?} after the server"
        );
    }
}

/// The schedule before, for comparison (printed; asserted only where the issue saw it): a
/// DTLS flight lost once waits 1 s, then 2, 4, 8 s, so the client reaches `Connected` seconds
/// after the server, or never.
#[test]
fn legacy_setup_under_30_percent_loss_lags_by_seconds() {
    let (times, lag, unfinished) = run(1..=200, 0.3, MediaRole::Publish, SetupTiming::Legacy);
    println!(
        "SETUP legacy Publish loss 30%: p50 {} ms, p95 {} ms, max {} ms, client lag <= {} ms, unfinished {unfinished}",
        ms(quantile(&times, 0.5)),
        ms(quantile(&times, 0.95)),
        ms(quantile(&times, 1.0)),
        ms(lag)
    );
    assert!(quantile(&times, 0.95) > Duration::from_secs(2));
}
