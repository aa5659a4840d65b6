//! One client peer connection: a str0m [`Rtc`] and its own UDP socket.
//!
//! The `Rtc` is sans IO; this wrapper feeds it datagrams and time and performs what it asks.
//! Its I/O is behind a seam ([`Wire`]): the engine's tasks give it a UDP socket, the
//! virtual-time harness (`media::netem`) a queue that it carries through impaired links itself.
//! Invariant (str0m's): after every mutation, [`Pc::drive`] drains `poll_output` until it
//! returns a timeout. The client always offers; the server (ICE-lite) answers and learns our
//! address from our connectivity checks, so the offer carries one host candidate: the socket's
//! address on the interface that routes to the server.
//!
//! **ICE over TCP, the fallback.** When the answer carries a passive TCP candidate of the server
//! (RFC 6544) and ICE over UDP has not connected [`TCP_FALLBACK_DELAY`] after the answer (a
//! network that blocks UDP), the PC connects to that candidate, adds the connection's address as
//! an active TCP candidate of its own, and str0m checks and nominates the TCP pair; datagrams
//! then travel framed (RFC 4571, `huddle_proto::framing`) by a small task that owns the stream.
//! UDP keeps its higher priority: a path where both work nominates UDP. There is no TURN client
//! (str0m has none): a network that lets neither UDP nor TCP to the server through is not
//! reached.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::time::{Duration, Instant};

use huddle_proto::MediaRole;
use socket2::SockRef;
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Pt};
use str0m::net::{Protocol, Receive, TcpType};
use str0m::rtp::{Extension, ExtensionMap};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::debug;

use super::MediaUpdate;

/// Largest datagram read.
pub(crate) const RECV_BUF: usize = 2048;

/// How long after the answer ICE over UDP may take to connect before the PC also tries the
/// server's ICE-TCP candidate: a check and its answer cross most networks well within it, so a
/// PC whose UDP works never opens a TCP connection.
pub(crate) const TCP_FALLBACK_DELAY: Duration = Duration::from_millis(300);

/// How long connecting to the server's ICE-TCP candidate may take.
const TCP_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Frames queued each way between a PC and its TCP task; beyond, outgoing ones are dropped (as
/// a congested path would) and incoming ones wait.
const TCP_QUEUE: usize = 256;

/// What the TCP task tells its PC.
#[derive(Debug)]
pub(crate) enum TcpEvent {
    /// Connected from this local address.
    Connected(SocketAddr),
    /// A datagram from the server.
    Frame(Vec<u8>),
    /// The connection failed or ended.
    Closed,
}

/// What a PC receives next ([`Pc::recv`]).
#[derive(Debug)]
pub(crate) enum Incoming {
    /// A UDP datagram of this length in the buffer, from this address.
    Udp(usize, SocketAddr),
    /// From the ICE-TCP connection.
    Tcp(TcpEvent),
    /// The socket failed (nothing to do).
    Error,
}

/// The ICE-TCP fallback of a PC.
struct TcpLink {
    /// The server's passive candidate.
    server: SocketAddr,
    /// Our end, once connected (our active candidate).
    local: Option<SocketAddr>,
    out: mpsc::Sender<Vec<u8>>,
    events: mpsc::Receiver<TcpEvent>,
}

/// The server's passive ICE-TCP candidate of the address family of `local` in an SDP answer.
fn tcp_candidate(sdp: &str, local: SocketAddr) -> Option<SocketAddr> {
    sdp.lines()
        .filter_map(|l| l.trim_end().strip_prefix("a=candidate:"))
        .filter_map(|c| {
            // foundation component transport priority address port typ host [tcptype passive]
            let f: Vec<&str> = c.split_whitespace().collect();
            let passive = f.windows(2).any(|w| w[0] == "tcptype" && w[1] == "passive");
            if f.len() < 6 || !f[2].eq_ignore_ascii_case("tcp") || !passive {
                return None;
            }
            let ip: IpAddr = f[4].parse().ok()?;
            Some(SocketAddr::new(ip, f[5].parse().ok()?))
        })
        .find(|a| a.is_ipv4() == local.is_ipv4())
}

/// Connects to `server` and carries framed datagrams both ways until either side ends.
async fn tcp_link(server: SocketAddr, mut out: mpsc::Receiver<Vec<u8>>, events: mpsc::Sender<TcpEvent>) {
    let stream = match tokio::time::timeout(TCP_CONNECT_TIMEOUT, tokio::net::TcpStream::connect(server)).await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            debug!(%server, error = %e, "ICE-TCP connect failed");
            let _ = events.send(TcpEvent::Closed).await;
            return;
        }
        Err(_) => {
            debug!(%server, "ICE-TCP connect timed out");
            let _ = events.send(TcpEvent::Closed).await;
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    let Ok(local) = stream.local_addr() else {
        let _ = events.send(TcpEvent::Closed).await;
        return;
    };
    if events.send(TcpEvent::Connected(local)).await.is_err() {
        return;
    }
    let (mut rd, mut wr) = stream.into_split();
    let reader = async {
        let mut decoder = huddle_proto::framing::FrameDecoder::new(RECV_BUF);
        let mut chunk = [0u8; 4096];
        loop {
            match decoder.next_frame() {
                Ok(Some(f)) => {
                    if events.send(TcpEvent::Frame(f)).await.is_err() {
                        return;
                    }
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    debug!(error = %e, "ICE-TCP stream unusable");
                    return;
                }
            }
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => decoder.push(&chunk[..n]),
            }
        }
    };
    let writer = async {
        while let Some(f) = out.recv().await {
            if wr.write_all(&f).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        () = reader => {}
        () = writer => {}
    }
    let _ = events.send(TcpEvent::Closed).await;
}

/// The frames back each RED packet repeats (see `docs/quality.md` for the measurements behind
/// the choice): frame *n* travels in packets *n*, *n + 1*, *n + 3* and *n + 6*, so a frame is
/// lost only when those four packets all are, and a burst of up to six lost packets is repaired
/// in full (with `[1, 2, 3]`, the same cost, a burst of four already loses a frame; measured:
/// PESQ 2.65 against 1.70 at 30 % bursty loss, 3.20 against 2.46 at 50 % random). Opus FEC in
/// packet *n + 1* restores a coarse copy of what is left when *n + 1* came back. Costs about 4×
/// the audio payload: ≈ 170 kbit/s with headers during speech instead of ≈ 57 (Opus at
/// 32 kbit/s), about what a small video stream costs. A frame that comes back from level 6
/// arrives 120 ms late: the player's jitter buffer waits for it only while such recoveries
/// happen (`RecoveryDelay`).
pub(crate) const RED_DISTANCES: &[u32] = &[1, 3, 6];

/// What a `media_offer` declares as `red_depth`: for a play, how far back the player waits for
/// RED's copies (`play::RecoveryDelay` waits for the deepest of [`RED_DISTANCES`]), so that the
/// server sends it the frames 1, 3 and 6 back (a player declaring less gets 1, 2 and 3); 0 for a
/// publish.
pub(crate) fn red_depth(kind: MediaRole) -> u8 {
    match kind {
        MediaRole::Play => RED_DISTANCES
            .iter()
            .copied()
            .max()
            .map_or(0, |d| u8::try_from(d).unwrap_or(u8::MAX)),
        MediaRole::Publish => 0,
    }
}

/// The RED levels to send, `None` for no RED: [`RED_DISTANCES`] unless the environment variable
/// `HUDDLE_AUDIO_RED` says otherwise, `0` for none or a list like `1,3,6` (a measurement knob:
/// `scripts/quality.sh` compares the loss curve without RED and with other patterns).
fn red_distances() -> Option<&'static [u32]> {
    static RED: std::sync::OnceLock<Option<Vec<u32>>> = std::sync::OnceLock::new();
    RED.get_or_init(|| match std::env::var("HUDDLE_AUDIO_RED") {
        Ok(v) if v.trim() == "0" => None,
        Ok(v) => {
            let d: Vec<u32> = v.split(',').filter_map(|x| x.trim().parse().ok()).collect();
            Some(if d.is_empty() { RED_DISTANCES.to_vec() } else { d })
        }
        Err(_) => Some(RED_DISTANCES.to_vec()),
    })
    .as_deref()
}

/// How often a connected client checks that the server still answers (STUN consent checks on
/// the selected pair; str0m's default is 3 s).
const ICE_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(400);

/// Unanswered checks in a row that end a client connection (str0m's default is 9).
const ICE_MAX_UNANSWERED: usize = 24;

/// The first check's retransmission timeout while setting up: libwebrtc checks a pair that is
/// not writable yet every 48 ms (`WEAK_PING_INTERVAL`), RFC 8445's pacing Ta of 50 ms; str0m
/// doubles from here up to [`ICE_CHECK_INTERVAL`] (50, 100, 200, 400 ms).
const ICE_INITIAL_RTO: std::time::Duration = std::time::Duration::from_millis(50);

/// How a client connection's ICE and DTLS retransmit while setting up (`docs/quality.md`,
/// "Setup under loss").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SetupTiming {
    /// As fast as a browser's: an ICE check every 50 ms until connected, DTLS flights from
    /// 50 ms on ([`huddle_dtls::HandshakeTiming::BROWSER`]).
    Browser,
    /// [`SetupTiming::Browser`] with the ICE checks of setup doubling from 50 ms to 400 ms
    /// instead of paced (the schedule before; kept for the before/after figures of the
    /// virtual-time harness).
    #[cfg_attr(not(test), allow(dead_code))]
    Doubling,
    /// The schedule before: ICE checks from 250 ms, DTLS flights from 1 s with 4 retries.
    Legacy,
}

impl SetupTiming {
    /// [`SetupTiming::Browser`], or [`SetupTiming::Legacy`] with `HUDDLE_SETUP_TIMING=legacy`
    /// in the environment (measurements before/after with the same binaries; the server reads
    /// the same variable through `huddle_dtls`).
    pub(crate) fn of_process() -> SetupTiming {
        match huddle_dtls::HandshakeTiming::of_process() {
            huddle_dtls::HandshakeTiming::LEGACY => SetupTiming::Legacy,
            _ => SetupTiming::Browser,
        }
    }

    pub(crate) fn dtls(self) -> huddle_dtls::HandshakeTiming {
        match self {
            SetupTiming::Browser | SetupTiming::Doubling => huddle_dtls::HandshakeTiming::BROWSER,
            SetupTiming::Legacy => huddle_dtls::HandshakeTiming::LEGACY,
        }
    }
}

/// Sizes the ICE checks of a client connection. While setting up, the first checks go out at
/// [`ICE_INITIAL_RTO`] doubling (250 ms before), so a check lost on a lossy path is sent again
/// within a round trip, as a browser does. Once connected, the consent checks are sized so that
/// an outage of a few seconds does not end the connection while a long one is noticed before
/// the server forgets it: checks every [`ICE_CHECK_INTERVAL`], then, unanswered, from the
/// initial RTO again up to that interval; 24 unanswered checks in a row end it (`Lost`), about
/// 9 s into an outage. The server (ICE-lite) forgets a connection 15 s after its last check, so
/// a client never keeps a connection the server has dropped, and a lost one is offered again as
/// soon as signaling is back (`docs/protocol.md`, "Reconnection"). Many short checks rather than
/// a few long ones, so that a very lossy path is not mistaken for a dead one: with 60% loss each
/// way (a check answered one time in six), 24 in a row fail about once in 400 checks (3
/// minutes; 9 in a row, str0m's default, once in 25). Two and a half checks a second cost the
/// server a few microseconds a second per connection.
///
/// With [`SetupTiming::Browser`], the checks of setup are paced rather than doubling: one every
/// [`ICE_INITIAL_RTO`] until ICE connects (libwebrtc pings a pair that is not writable every
/// 48 ms, each ping a new transaction), up to [`ICE_SETUP_CHECKS`] unanswered (6 s), then the
/// consent schedule above ([`Pc::drive`] switches when ICE connects). At 30 % loss each way a
/// check is answered seven times in twenty: doubling waits 50, 100, 200, 400 ms between tries,
/// the pace 50 ms each.
fn set_ice_timing(config: &mut RtcConfig, timing: SetupTiming) {
    let (initial, max, retransmits) = match timing {
        SetupTiming::Browser => (ICE_INITIAL_RTO, ICE_INITIAL_RTO, ICE_SETUP_CHECKS),
        SetupTiming::Doubling => (ICE_INITIAL_RTO, ICE_CHECK_INTERVAL, ICE_MAX_UNANSWERED),
        SetupTiming::Legacy => (
            std::time::Duration::from_millis(250),
            ICE_CHECK_INTERVAL,
            ICE_MAX_UNANSWERED,
        ),
    };
    config.set_initial_stun_rto(initial);
    config.set_max_stun_rto(max);
    config.set_max_stun_retransmits(retransmits);
}

/// Unanswered checks of setup, one every [`ICE_INITIAL_RTO`], before ICE gives up: 6 s. Few
/// enough that `initial_rto << tries` keeps its bits: str0m's ICE (`is` 0.12,
/// `StunTiming::stun_resend_delay`) computes each delay so in a `u128` before capping it. It was
/// 180: from the 128th try the shift overflowed, a panic in a debug build (an SDK whose server
/// was down panicked 6.4 s into setup) and in release a delay of 0 or a garbled one.
const ICE_SETUP_CHECKS: usize = 120;
const _: () = assert!(
    ICE_INITIAL_RTO.as_millis().leading_zeros() as usize >= ICE_SETUP_CHECKS,
    "is 0.12 shifts the initial RTO by the try count"
);

/// The configuration of every client peer connection (the offerer, ICE-full, DTLS client).
pub(crate) fn client_config(timing: SetupTiming) -> RtcConfig {
    let mut config = RtcConfig::new()
        // DTLS configured once for the process, not validated again per connection (0.65 ms
        // of CPU each; `huddle_dtls`), with this timing.
        .set_crypto_provider(huddle_dtls::crypto_provider_with(timing.dtls()))
        .clear_codecs()
        // RED (RFC 2198, `red/48000/2` with fmtp `111/111`, as browsers offer it): each
        // Opus packet also carries the previous frames, and a player recovers a lost
        // frame from the packets after it (str0m wraps and unwraps it in frame mode).
        .enable_opus(true, red_distances().is_some())
        .set_red_distances(red_distances().unwrap_or(RED_DISTANCES))
        .enable_vp8(true)
        // The SDK's jitter buffer reorders and conceals: hand every audio packet over at once.
        .set_reordering_size_audio(0)
        // Once a second: the publisher feeds the RTCP loss reports to its Opus FEC.
        .set_stats_interval(Some(std::time::Duration::from_secs(1)))
        // A player's receiver reports every second (str0m's audio default is 5 s): without
        // RED, the server hands their loss to the publisher's FEC.
        .set_rtcp_report_interval_audio(std::time::Duration::from_secs(1))
        .set_extension_map(offer_extensions());
    set_ice_timing(&mut config, timing);
    config
}

/// The RTP header extensions the SDK offers: those something reads, at str0m's (and
/// browsers') IDs. str0m's standard map also offers absolute send time (it feeds only a
/// receiver's REMB estimate: nothing here estimates bandwidth from it, and the server does not
/// stamp it on what it forwards) and the simulcast stream IDs (the SDK sends no simulcast).
/// Each line costs its bytes twice, in the offer and echoed in the server's answer: without
/// these three, a `publish` with its voice offer fits one TCP segment (1448 bytes) instead of
/// two, one chance fewer to lose a segment of it on a lossy path (`docs/quality.md`, setup).
pub(crate) fn offer_extensions() -> ExtensionMap {
    let mut exts = ExtensionMap::empty();
    // Read by the server (the publisher's level, forwarded to the players).
    exts.set(1, Extension::AudioLevel);
    // Transport-wide sequence numbers: kept for send-side bandwidth estimation of video.
    exts.set(3, Extension::TransportSequenceNumber);
    // BUNDLE's demultiplexing.
    exts.set(4, Extension::RtpMid);
    exts.set(13, Extension::VideoOrientation);
    exts
}

/// The local IP address that routes to `host` (the signaling server's host), so that the
/// candidate in our offers is reachable from the server; loopback when it cannot be found.
pub(crate) fn local_ip_towards(host: &str) -> IpAddr {
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let Ok(addrs) = (host, 9).to_socket_addrs() else {
        return loopback;
    };
    let Some(remote) = prefer_ipv4(addrs) else {
        return loopback;
    };
    if remote.ip().is_loopback() {
        return remote.ip();
    }
    let bind: SocketAddr = if remote.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    UdpSocket::bind(bind)
        .and_then(|s| s.connect(remote).map(|_| s))
        .and_then(|s| s.local_addr())
        .map(|a| a.ip())
        .unwrap_or(loopback)
}

/// The address to reach among a name's addresses: an IPv4 one if there is one. A server on its
/// default or a `0.0.0.0` listen advertises IPv4 candidates only, and a PC bound to an IPv6
/// address has no pair with them (`localhost` resolves to `::1` first on some systems); a
/// dual-stack server advertises IPv4 too.
fn prefer_ipv4(addrs: impl Iterator<Item = SocketAddr>) -> Option<SocketAddr> {
    let mut first = None;
    for a in addrs {
        if a.is_ipv4() {
            return Some(a);
        }
        first.get_or_insert(a);
    }
    first
}

/// Where a PC's datagrams go and come from: the seam between the sans-IO peer connection and
/// its I/O. The engine's media tasks own a real socket; the virtual-time harness
/// (`media::netem`) carries the queued datagrams itself, through its impaired links.
pub(crate) enum Wire {
    /// A UDP socket, registered with the engine's runtime.
    Udp(tokio::net::UdpSocket),
    /// No socket: [`Pc::drive`] queues each datagram here (destination, bytes) for the caller
    /// to take with [`Pc::take_transmit`], and datagrams come in by [`Pc::receive`]. Only the
    /// harness makes one.
    #[cfg_attr(not(test), allow(dead_code))]
    Queue(std::collections::VecDeque<(SocketAddr, Vec<u8>)>),
}

/// A client peer connection: the `Rtc`, its wire, the offer.
pub(crate) struct Pc {
    pub(crate) rtc: Rtc,
    wire: Wire,
    pub(crate) local: SocketAddr,
    pub(crate) audio: Option<Mid>,
    pub(crate) video: Option<Mid>,
    pending: Option<SdpPendingOffer>,
    /// ICE and DTLS are up.
    pub(crate) connected: bool,
    /// The connection is over (closed, failed, or ICE lost).
    pub(crate) dead: bool,
    /// The server closed it (DTLS close_notify): it says why on the signaling connection.
    pub(crate) closed_by_peer: bool,
    /// ICE has a working pair (over UDP or TCP).
    ice_connected: bool,
    /// ICE checks are paced for setup ([`SetupTiming::Browser`]): once ICE connects, they
    /// switch to the consent schedule (`set_ice_timing`).
    paced_setup: bool,
    /// When to try ICE over TCP if ICE is not connected by then (set by the answer).
    tcp_fallback_at: Option<Instant>,
    /// The server's passive ICE-TCP candidate, from the answer.
    tcp_server: Option<SocketAddr>,
    tcp: Option<TcpLink>,
}

impl Pc {
    /// A new peer connection on `ip`:0 and its SDP offer: send-only audio (and video when
    /// `video`) for a publisher, receive-only audio and video for a player. Must be called
    /// inside the engine's runtime (the socket registers with it).
    pub(crate) fn new(ip: IpAddr, role: MediaRole, video: bool) -> std::io::Result<(Pc, String)> {
        let std_socket = UdpSocket::bind((ip, 0))?;
        std_socket.set_nonblocking(true)?;
        let local = std_socket.local_addr()?;
        let socket = tokio::net::UdpSocket::from_std(std_socket)?;
        let timing = SetupTiming::of_process();
        let config = client_config(timing);
        Pc::with_wire(
            config,
            timing,
            Instant::now(),
            local,
            Wire::Udp(socket),
            role,
            video,
        )
    }

    /// A peer connection with no socket ([`Wire::Queue`]), as `local` on a virtual network,
    /// built from `config` (made by [`client_config`] with `timing`) at `now`, and its offer.
    #[cfg(test)]
    pub(crate) fn queued(
        config: RtcConfig,
        timing: SetupTiming,
        now: Instant,
        local: SocketAddr,
        role: MediaRole,
        video: bool,
    ) -> std::io::Result<(Pc, String)> {
        Pc::with_wire(
            config,
            timing,
            now,
            local,
            Wire::Queue(Default::default()),
            role,
            video,
        )
    }

    fn with_wire(
        config: RtcConfig,
        timing: SetupTiming,
        now: Instant,
        local: SocketAddr,
        wire: Wire,
        role: MediaRole,
        video: bool,
    ) -> std::io::Result<(Pc, String)> {
        let mut rtc = config.build(now);
        let candidate = Candidate::host(local, "udp")
            .map_err(|e| std::io::Error::other(format!("host candidate {local}: {e}")))?;
        rtc.add_local_candidate(candidate);
        let dir = match role {
            MediaRole::Publish => Direction::SendOnly,
            MediaRole::Play => Direction::RecvOnly,
        };
        let mut api = rtc.sdp_api();
        let audio = Some(api.add_media(MediaKind::Audio, dir, None, None, None));
        let video = video.then(|| api.add_media(MediaKind::Video, dir, None, None, None));
        let (offer, pending) = api
            .apply()
            .ok_or_else(|| std::io::Error::other("no media to offer"))?;
        let pc = Pc {
            rtc,
            wire,
            local,
            audio,
            video,
            pending: Some(pending),
            connected: false,
            dead: false,
            closed_by_peer: false,
            ice_connected: false,
            paced_setup: timing == SetupTiming::Browser,
            tcp_fallback_at: None,
            tcp_server: None,
            tcp: None,
        };
        Ok((pc, offer.to_sdp_string()))
    }

    /// Applies the server's answer, received at `now`.
    pub(crate) fn accept_answer(&mut self, now: Instant, sdp: &str) -> Result<(), String> {
        let answer = SdpAnswer::from_sdp_string(sdp).map_err(|e| format!("bad answer: {e}"))?;
        let pending = self.pending.take().ok_or("no offer pending")?;
        self.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .map_err(|e| format!("answer refused: {e}"))?;
        self.tcp_server = tcp_candidate(sdp, self.local);
        if self.tcp_server.is_some() && !self.ice_connected {
            self.tcp_fallback_at = Some(now + TCP_FALLBACK_DELAY);
        }
        Ok(())
    }

    /// Waits for the next datagram: on the UDP socket, or from the ICE-TCP connection once
    /// there is one. Cancel-safe (a branch of `select!`). Never returns on a [`Wire::Queue`]
    /// (its caller hands datagrams over with [`Pc::receive`]).
    pub(crate) async fn recv(&mut self, buf: &mut [u8]) -> Incoming {
        let Wire::Udp(udp) = &self.wire else {
            return std::future::pending().await;
        };
        match &mut self.tcp {
            Some(link) => tokio::select! {
                r = udp.recv_from(buf) => r.map_or(Incoming::Error, |(n, from)| Incoming::Udp(n, from)),
                e = link.events.recv() => Incoming::Tcp(e.unwrap_or(TcpEvent::Closed)),
            },
            None => udp
                .recv_from(buf)
                .await
                .map_or(Incoming::Error, |(n, from)| Incoming::Udp(n, from)),
        }
    }

    /// Handles what [`Pc::recv`] returned (`buf` holds a UDP datagram).
    pub(crate) fn on_incoming(&mut self, now: Instant, incoming: Incoming, buf: &[u8]) {
        match incoming {
            Incoming::Udp(n, from) => self.receive(now, from, &buf[..n]),
            Incoming::Tcp(TcpEvent::Connected(local)) => {
                let Some(link) = &mut self.tcp else { return };
                link.local = Some(local);
                let candidate = Candidate::builder()
                    .tcp()
                    .host(local)
                    .tcptype(TcpType::Active)
                    .build();
                match candidate {
                    Ok(c) => {
                        debug!(%local, server = %link.server, "ICE-TCP connected: checking the TCP pair");
                        self.rtc.add_local_candidate(c);
                    }
                    Err(e) => debug!(error = %e, "no ICE-TCP candidate"),
                }
            }
            Incoming::Tcp(TcpEvent::Frame(data)) => {
                let Some((server, Some(local))) = self.tcp.as_ref().map(|l| (l.server, l.local)) else {
                    return;
                };
                let Ok(r) = Receive::new(Protocol::Tcp, server, local, &data) else {
                    return;
                };
                if let Err(e) = self.rtc.handle_input(Input::Receive(now, r)) {
                    debug!(error = %e, "peer connection input refused");
                    self.dead = true;
                }
            }
            Incoming::Tcp(TcpEvent::Closed) => {
                // The TCP path is gone; if it carried the media, ICE notices and ends the PC.
                debug!("ICE-TCP connection closed");
                self.tcp = None;
            }
            Incoming::Error => {}
        }
    }

    /// Starts the ICE-TCP fallback (see the module documentation).
    fn start_tcp(&mut self) {
        let Some(server) = self.tcp_server else { return };
        let (out_tx, out_rx) = mpsc::channel(TCP_QUEUE);
        let (ev_tx, ev_rx) = mpsc::channel(TCP_QUEUE);
        debug!(%server, "ICE over UDP not connected yet: trying ICE-TCP");
        tokio::spawn(tcp_link(server, out_rx, ev_tx));
        self.tcp = Some(TcpLink {
            server,
            local: None,
            out: out_tx,
            events: ev_rx,
        });
    }

    /// The payload type negotiated for `codec` on `mid`.
    pub(crate) fn pt(&mut self, mid: Mid, codec: Codec) -> Option<Pt> {
        let writer = self.rtc.writer(mid)?;
        writer
            .payload_params()
            .find(|p| p.spec().codec == codec)
            .map(|p| p.pt())
    }

    /// Feeds a datagram.
    pub(crate) fn receive(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        let Ok(r) = Receive::new(Protocol::Udp, from, self.local, data) else {
            return;
        };
        if let Err(e) = self.rtc.handle_input(Input::Receive(now, r)) {
            debug!(error = %e, "peer connection input refused");
            self.dead = true;
        }
    }

    /// Feeds the time (and starts the ICE-TCP fallback when it is due).
    pub(crate) fn timeout(&mut self, now: Instant) {
        if self.tcp_fallback_at.is_some_and(|t| t <= now) {
            self.tcp_fallback_at = None;
            if !self.ice_connected && self.tcp.is_none() {
                self.start_tcp();
            }
        }
        if let Err(e) = self.rtc.handle_input(Input::Timeout(now)) {
            debug!(error = %e, "peer connection timeout refused");
            self.dead = true;
        }
    }

    /// The next datagram [`Pc::drive`] queued on a [`Wire::Queue`] (destination, bytes).
    #[cfg(test)]
    pub(crate) fn take_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        match &mut self.wire {
            Wire::Queue(q) => q.pop_front(),
            Wire::Udp(_) => None,
        }
    }

    /// What to report when the connection is over.
    pub(crate) fn end_update(&self) -> MediaUpdate {
        if self.closed_by_peer {
            MediaUpdate::Closed
        } else {
            MediaUpdate::Lost
        }
    }

    /// Drains the `Rtc`'s output: sends its datagrams, hands its events to `on_event`, and
    /// returns when it next wants the time.
    pub(crate) fn drive(&mut self, mut on_event: impl FnMut(&mut Self, Event)) -> Option<Instant> {
        loop {
            if self.dead || !self.rtc.is_alive() {
                self.dead = true;
                return None;
            }
            match self.rtc.poll_output() {
                Ok(Output::Transmit(t)) if t.proto == Protocol::Tcp => {
                    // A full queue drops the datagram, as a congested path would.
                    if let (Some(link), Some(f)) = (&self.tcp, huddle_proto::framing::encode(&t.contents)) {
                        let _ = link.out.try_send(f);
                    }
                }
                Ok(Output::Transmit(t)) => match &mut self.wire {
                    // UDP: a full socket buffer drops the datagram, as the network would. Sent
                    // through the raw socket, not tokio's `try_send_to`, which answers WouldBlock
                    // until the reactor has seen the socket writable once and so dropped the
                    // first ICE check of a new connection (retried only after 250 ms).
                    Wire::Udp(socket) => {
                        let _ = SockRef::from(&*socket).send_to(&t.contents, &t.destination.into());
                    }
                    Wire::Queue(q) => q.push_back((t.destination, t.contents.to_vec())),
                },
                Ok(Output::Timeout(at)) => {
                    return Some(match self.tcp_fallback_at {
                        Some(t) => t.min(at),
                        None => at,
                    });
                }
                Ok(Output::Event(e)) => {
                    match &e {
                        Event::Connected => self.connected = true,
                        Event::IceConnectionStateChange(
                            IceConnectionState::Connected | IceConnectionState::Completed,
                        ) => {
                            self.ice_connected = true;
                            if std::mem::take(&mut self.paced_setup) {
                                // Setup is over: consent checks from now on.
                                self.rtc.direct_api().set_stun_timing(
                                    ICE_INITIAL_RTO,
                                    ICE_CHECK_INTERVAL,
                                    ICE_MAX_UNANSWERED,
                                );
                            }
                        }
                        Event::Closed => self.closed_by_peer = true,
                        Event::IceConnectionStateChange(IceConnectionState::Disconnected) => self.dead = true,
                        _ => {}
                    }
                    on_event(self, e);
                }
                Err(e) => {
                    debug!(error = %e, "peer connection failed");
                    self.dead = true;
                    return None;
                }
            }
        }
    }
}

/// Commands from the engine task to a media task.
#[derive(Debug)]
pub(crate) enum PcCommand {
    /// The server's SDP answer.
    Answer(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_with_both_families_is_reached_over_ipv4() {
        let v6: SocketAddr = "[::1]:9".parse().unwrap();
        let v4: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert_eq!(prefer_ipv4([v6, v4].into_iter()), Some(v4));
        assert_eq!(prefer_ipv4([v6].into_iter()), Some(v6));
        assert_eq!(prefer_ipv4(std::iter::empty()), None);
        assert!(local_ip_towards("127.0.0.1").is_ipv4());
        assert!(local_ip_towards("::1").is_ipv6());
    }

    #[test]
    fn the_servers_tcp_candidate_of_our_family_is_found_in_the_answer() {
        let sdp = "v=0\r\na=candidate:1 1 udp 2130706175 10.0.0.1 7882 typ host\r\n\
                   a=candidate:2 1 tcp 1509949695 10.0.0.1 7881 typ host tcptype passive\r\n\
                   a=candidate:3 1 tcp 1509949695 2001:db8::1 7881 typ host tcptype passive\r\n";
        let v4: SocketAddr = "10.0.0.2:5000".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::2]:5000".parse().unwrap();
        assert_eq!(tcp_candidate(sdp, v4), Some("10.0.0.1:7881".parse().unwrap()));
        assert_eq!(
            tcp_candidate(sdp, v6),
            Some("[2001:db8::1]:7881".parse().unwrap())
        );
        // Active or UDP candidates are not what the fallback connects to.
        let none = "a=candidate:2 1 tcp 1509949695 10.0.0.1 9 typ host tcptype active\r\n";
        assert_eq!(tcp_candidate(none, v4), None);
    }
}
