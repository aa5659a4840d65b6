//! One simulated client peer connection: a str0m [`Rtc`] on its own UDP socket, negotiated by a
//! [`Target`](crate::Target) through [`PcSetup`], then driven by [`run_pc`] on the run's runtime.
//!
//! str0m's invariant: after every mutation (input, write, SDP change) `poll_output` is drained until
//! it returns a timeout; [`drain`] does that and is called after each one.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::Interest;

use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::config::DtlsCert;
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcConfig};

use crate::packet::{MAX_LEN, Probe};
use crate::run::{ClientOutcome, PhaseTimes, Shared, StreamOutcome, stopped};
use crate::{LoadError, netguard};

/// Largest datagram read.
const RECV_BUF: usize = 2048;

/// A peer connection being negotiated: the target drives the SDP exchange through it.
pub struct PcSetup {
    rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
    pending: Option<SdpPendingOffer>,
    /// The audio line we offered (publishers).
    mid: Option<Mid>,
    /// When the remote SDP was applied (the end of signaling).
    negotiated: Option<Instant>,
}

impl std::fmt::Debug for PcSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PcSetup").field("local", &self.local).finish()
    }
}

impl PcSetup {
    /// A new peer connection on `ip`:0 with Opus only. `cert` is shared by the run's clients
    /// (making a DTLS certificate per client would dominate the start of large runs).
    pub(crate) fn new(ip: IpAddr, cert: Option<&DtlsCert>) -> Result<PcSetup, LoadError> {
        let socket = UdpSocket::bind((ip, 0)).map_err(LoadError::Io)?;
        socket.set_nonblocking(true).map_err(LoadError::Io)?;
        // Kernel receive stamps split a probe's latency at the socket (`rxstamp`); a kernel
        // without them only loses that split.
        if let Err(e) = crate::rxstamp::enable(&socket) {
            tracing::debug!("SO_TIMESTAMPNS: {e}");
        }
        let local = socket.local_addr().map_err(LoadError::Io)?;
        let mut config = RtcConfig::new()
            // DTLS configured once for the process, not validated again per connection (`huddle_dtls`).
            .set_crypto_provider(huddle_dtls::crypto_provider())
            .clear_codecs()
            .enable_opus(true, false)
            // We measure reordering and loss ourselves: hand every packet over at once.
            .set_reordering_size_audio(0);
        if let Some(cert) = cert {
            config = config.set_dtls_cert(cert.clone());
        }
        let mut rtc = config.build(Instant::now());
        let candidate = Candidate::host(local, "udp")
            .map_err(|e| LoadError::Media(format!("host candidate {local}: {e}")))?;
        rtc.add_local_candidate(candidate);
        Ok(PcSetup {
            rtc,
            socket,
            local,
            pending: None,
            mid: None,
            negotiated: None,
        })
    }

    /// The local address of the connection's socket.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// An SDP offer with one audio line: `sendonly` for a publisher, `recvonly` for a player.
    pub fn create_offer(&mut self, send: bool) -> Result<String, LoadError> {
        let dir = if send {
            Direction::SendOnly
        } else {
            Direction::RecvOnly
        };
        let mut api = self.rtc.sdp_api();
        self.mid = Some(api.add_media(MediaKind::Audio, dir, None, None, None));
        let (offer, pending) = api
            .apply()
            .ok_or_else(|| LoadError::Media("no media to offer".into()))?;
        self.pending = Some(pending);
        Ok(offer.to_sdp_string())
    }

    /// Applies the remote answer to our offer.
    pub fn accept_answer(&mut self, sdp: &str) -> Result<(), LoadError> {
        let answer =
            SdpAnswer::from_sdp_string(sdp).map_err(|e| LoadError::Media(format!("bad SDP answer: {e}")))?;
        let pending = self
            .pending
            .take()
            .ok_or_else(|| LoadError::Media("no offer pending".into()))?;
        self.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .map_err(|e| LoadError::Media(format!("answer refused: {e}")))?;
        self.negotiated = Some(Instant::now());
        Ok(())
    }

    /// Answers a remote offer (the server offers what we receive).
    pub fn accept_offer(&mut self, sdp: &str) -> Result<String, LoadError> {
        let offer =
            SdpOffer::from_sdp_string(sdp).map_err(|e| LoadError::Media(format!("bad SDP offer: {e}")))?;
        let answer = self
            .rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| LoadError::Media(format!("offer refused: {e}")))?;
        self.negotiated = Some(Instant::now());
        Ok(answer.to_sdp_string())
    }
}

/// Sends the `Rtc`'s datagrams and hands its events to `on_event` until it returns the next
/// timeout; `Err` when the connection is over.
/// Datagrams go only where [`netguard::may_send`] allows (loopback, or the address the socket is
/// bound to inside the run's network namespace); others are dropped, as an unreachable candidate.
fn drain(
    rtc: &mut Rtc,
    socket: &UdpSocket,
    guard: &mut SendGuard,
    mut on_event: impl FnMut(Event),
) -> Result<Instant, LoadError> {
    loop {
        if !rtc.is_alive() {
            return Err(LoadError::Media("peer connection closed".into()));
        }
        match rtc.poll_output() {
            Ok(Output::Timeout(at)) => return Ok(at),
            Ok(Output::Transmit(t)) => {
                // UDP: a full socket buffer drops the datagram, as the network would. This is the
                // plain (non-blocking) socket, not tokio's `try_send_to`: that one answers
                // WouldBlock until the reactor has seen the socket writable once, which silently
                // dropped the first ICE check of every connection (then retried after str0m's 250 ms
                // STUN RTO).
                if guard.allows(t.destination) {
                    let _ = socket.send_to(&t.contents, t.destination);
                }
            }
            Ok(Output::Event(Event::IceConnectionStateChange(IceConnectionState::Disconnected))) => {
                return Err(LoadError::Media("ICE disconnected".into()));
            }
            Ok(Output::Event(e)) => on_event(e),
            Err(e) => return Err(LoadError::Media(format!("peer connection: {e}"))),
        }
    }
}

/// [`netguard::may_send`] for one connection, with one warning per refused destination address.
struct SendGuard {
    local: IpAddr,
    refused: Vec<IpAddr>,
}

impl SendGuard {
    fn allows(&mut self, dest: SocketAddr) -> bool {
        if netguard::may_send(self.local, dest.ip()) {
            return true;
        }
        if !self.refused.contains(&dest.ip()) {
            self.refused.push(dest.ip());
            tracing::warn!(
                local = %self.local, %dest,
                "not sending to a remote candidate outside loopback and the bind address"
            );
        }
        false
    }
}

/// What a connection does once negotiated.
pub(crate) enum PcRole {
    /// Sends probes at the run's rate as this publisher index.
    Publish { publisher: u32 },
    /// Receives a publisher's probes.
    Play,
}

/// Drives a negotiated connection until the run stops; `joined` is when its negotiation started
/// (for join and first-packet times).
pub(crate) async fn run_pc(
    setup: PcSetup,
    role: PcRole,
    shared: Arc<Shared>,
    joined: Instant,
    ready: tokio::sync::oneshot::Sender<()>,
) -> ClientOutcome {
    let PcSetup {
        mut rtc,
        socket,
        local,
        pending: _,
        mid,
        negotiated,
    } = setup;
    let mut out = ClientOutcome::default();
    // Sends go through a clone of the plain socket (see `drain`); receives through tokio.
    let (send_socket, socket) = match socket
        .try_clone()
        .and_then(|send| Ok((send, tokio::net::UdpSocket::from_std(socket)?)))
    {
        Ok(s) => s,
        Err(e) => {
            out.error = Some(format!("socket: {e}"));
            return out;
        }
    };
    let mut ready = Some(ready);
    let mut stop = shared.stop.subscribe();
    let period = shared.packet_period;
    let mut buf = vec![0u8; RECV_BUF];
    let mut payload = [0u8; MAX_LEN];
    let mut connected = false;
    let mut audio: Option<Mid> = mid;
    let mut pt: Option<Pt> = None;
    let mut seq: u32 = 0;
    let mut next_send = Instant::now();
    let mut stream = StreamOutcome::default();
    let mut ice_at: Option<Instant> = None;
    let mut connected_at: Option<Instant> = None;
    let mut guard = SendGuard {
        local: local.ip(),
        refused: Vec::new(),
    };

    let result: Result<(), LoadError> = async {
        let on_event = |e: Event,
                        connected: &mut bool,
                        audio: &mut Option<Mid>,
                        stream: &mut StreamOutcome,
                        out: &mut ClientOutcome,
                        (ice_at, connected_at): (&mut Option<Instant>, &mut Option<Instant>),
                        waited_us: Option<u64>| match e {
            Event::IceConnectionStateChange(
                IceConnectionState::Connected | IceConnectionState::Completed,
            ) => {
                ice_at.get_or_insert_with(Instant::now);
            }
            Event::Connected => {
                *connected = true;
                connected_at.get_or_insert_with(Instant::now);
                out.join_ms = Some(joined.elapsed().as_secs_f64() * 1e3);
            }
            Event::MediaAdded(m) if m.kind == MediaKind::Audio => {
                audio.get_or_insert(m.mid);
            }
            Event::MediaData(data) => {
                let now_us = shared.now_us();
                if let Some(p) = Probe::parse(&data.data) {
                    if stream.first_packet_ms.is_none() {
                        stream.first_packet_at = Some(Instant::now());
                        stream.first_packet_ms = Some(joined.elapsed().as_secs_f64() * 1e3);
                    }
                    let in_window = shared.in_window(p.sent_us);
                    if stream.stats.on_packet(p.seq, p.sent_us, now_us, in_window) {
                        shared
                            .counters
                            .received
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if in_window {
                            let latency = now_us.saturating_sub(p.sent_us);
                            stream.latency.record(latency);
                            if let Some(w) = waited_us {
                                stream.latency_socket.record(latency.saturating_sub(w));
                            }
                        }
                    }
                }
            }
            _ => {}
        };
        let mut next_timeout = drain(&mut rtc, &send_socket, &mut guard, |e| {
            let at = (&mut ice_at, &mut connected_at);
            on_event(e, &mut connected, &mut audio, &mut stream, &mut out, at, None)
        })?;
        loop {
            if connected && let Some(tx) = ready.take() {
                let _ = tx.send(());
            }
            let publishing = matches!(role, PcRole::Publish { .. }) && connected;
            let wake = if publishing {
                next_timeout.min(next_send)
            } else {
                next_timeout
            };
            let mut waited_us = None;
            tokio::select! {
                biased;
                _ = stopped(&mut stop) => return Ok(()),
                r = socket.async_io(Interest::READABLE, || crate::rxstamp::recv(&socket, &mut buf)) => {
                    let (n, from, w) = r.map_err(LoadError::Io)?;
                    waited_us = w;
                    if let Ok(rx) = Receive::new(Protocol::Udp, from, local, &buf[..n]) {
                        rtc.handle_input(Input::Receive(Instant::now(), rx))
                            .map_err(|e| LoadError::Media(format!("input: {e}")))?;
                    }
                }
                _ = tokio::time::sleep_until(wake.into()) => {
                    let now = Instant::now();
                    if publishing && now >= next_send {
                        let PcRole::Publish { publisher } = role else { unreachable!() };
                        if let Some((mid, pt)) = pt_for(&mut rtc, audio, &mut pt) {
                            let sent_us = shared.now_us();
                            let n = Probe { publisher, seq, sent_us }.write(&mut payload);
                            let time = MediaTime::new(u64::from(seq) * 960, Frequency::FORTY_EIGHT_KHZ);
                            if let Some(w) = rtc.writer(mid) {
                                w.write(pt, now, time, &payload[..n])
                                    .map_err(|e| LoadError::Media(format!("write: {e}")))?;
                                shared.count_sent(sent_us, &mut out);
                            }
                            seq = seq.wrapping_add(1);
                        }
                        next_send += period;
                        if next_send + 5 * period < now {
                            // Far behind (an overloaded machine): keep the rate, drop the backlog.
                            next_send = now + period;
                        }
                    } else {
                        rtc.handle_input(Input::Timeout(now))
                            .map_err(|e| LoadError::Media(format!("timeout: {e}")))?;
                    }
                }
            }
            next_timeout = drain(&mut rtc, &send_socket, &mut guard, |e| {
                let at = (&mut ice_at, &mut connected_at);
                on_event(
                    e,
                    &mut connected,
                    &mut audio,
                    &mut stream,
                    &mut out,
                    at,
                    waited_us,
                )
            })?;
        }
    }
    .await;
    if let Err(e) = result {
        out.error = Some(e.to_string());
    }
    rtc.disconnect();
    if matches!(role, PcRole::Play) {
        let ms = |from: Option<Instant>, to: Option<Instant>| {
            Some(to?.saturating_duration_since(from?).as_secs_f64() * 1e3)
        };
        out.phases = PhaseTimes {
            login: None,
            signaling: ms(Some(joined), negotiated),
            ice: ms(negotiated, ice_at),
            dtls: ms(ice_at, connected_at),
            first_packet: ms(connected_at, stream.first_packet_at),
        };
        out.stream = Some(stream);
    }
    out
}

/// The audio line and its Opus payload type, resolved once.
fn pt_for(rtc: &mut Rtc, audio: Option<Mid>, pt: &mut Option<Pt>) -> Option<(Mid, Pt)> {
    let mid = audio?;
    if let Some(pt) = *pt {
        return Some((mid, pt));
    }
    let found = rtc
        .writer(mid)?
        .payload_params()
        .find(|p| p.spec().codec == Codec::Opus)
        .map(|p| p.pt())?;
    *pt = Some(found);
    Some((mid, found))
}

/// The period between two packets at `rate` per second.
pub(crate) fn period_of(rate: u32) -> Duration {
    Duration::from_secs_f64(1.0 / f64::from(rate.max(1)))
}
