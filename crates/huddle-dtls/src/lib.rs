//! A str0m crypto provider with one DTLS configuration for the whole process.
//!
//! str0m-aws-lc-rs 0.7 builds a new `dimpl::Config` for every peer connection, and dimpl 0.9
//! validates its crypto provider on every build: a key exchange round trip in each of X25519,
//! P-256 and P-384 plus ECDSA P-256 and P-384 test signatures, about 0.65 ms of CPU per `Rtc`
//! (more than half of it P-384, which no handshake here uses: both ends prefer X25519 and sign
//! with P-256). This provider is the same dimpl configuration (aws-lc-rs, no server cookie: ICE
//! already checked return routability), validated once per MTU and shared by every `Rtc` built
//! with [`crypto_provider`]; the handshakes themselves are unchanged. Building an `Rtc` drops
//! from 0.65 ms to 0.01 ms. The SFU (50 players joining one stream were 33 ms of one shard's
//! thread), the load generator and the SDK all use it.
//!
//! ```
//! let config = str0m::RtcConfig::new().set_crypto_provider(huddle_dtls::crypto_provider());
//! let _rtc = config.build(std::time::Instant::now());
//! ```
//!
//! **Handshake timing.** The configuration also sets when a handshake flight that got no answer
//! is sent again ([`HandshakeTiming`]): dimpl's defaults (1 s, doubling, 4 retries) made a call
//! set up under loss wait seconds for a flight lost once, and give up after four; the
//! [`HandshakeTiming::BROWSER`] schedule starts as libwebrtc's and keeps its pace under loss (see there). `HUDDLE_SETUP_TIMING=legacy`
//! in the environment brings the old schedule back, for measurements before/after in one run
//! (`scripts/quality.sh setup`).

use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use str0m::crypto::dtls::{
    DtlsCert, DtlsImplError, DtlsInstance, DtlsOutput, DtlsProvider, DtlsVersion, ProtocolVersion,
};
use str0m::crypto::{CryptoError, CryptoProvider};

/// When a DTLS handshake flight that got no answer is sent again: after [`start_rto`], then
/// after twice as long each time up to [`max_rto`] (with dimpl's ±25 % jitter), [`retries`]
/// times at most; the handshake fails when the last one goes unanswered too.
///
/// [`start_rto`]: HandshakeTiming::start_rto
/// [`max_rto`]: HandshakeTiming::max_rto
/// [`retries`]: HandshakeTiming::retries
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeTiming {
    /// The first retransmission timeout of each flight.
    pub start_rto: Duration,
    /// The largest interval the backoff reaches (`dimpl::Config::flight_max_rto`, a patch of
    /// ours: vendor/README.md).
    pub max_rto: Duration,
    /// Retransmissions of a flight before the handshake fails.
    pub retries: usize,
}

impl HandshakeTiming {
    /// A browser's start, kept up under loss. libwebrtc's `OpenSSLStreamAdapter` starts
    /// BoringSSL's timer at 50 ms (`dtls_handshake_timeout_ms_`) and, once ICE has a round-trip
    /// time, at twice that RTT clamped to 50 ms–3 s (`DtlsTransport::ConfigureHandshakeTimeout`);
    /// BoringSSL doubles it on each timeout (to 60 s) and fails after 12 (`DTLS1_MAX_TIMEOUTS`).
    /// Here the start is 50 ms for every connection: str0m builds the DTLS instance (and dimpl
    /// fixes the timeout in its configuration) with the `Rtc`, before ICE has measured anything,
    /// so there is no later point at which an RTT could set it without changing both crates.
    /// Against an RTT above 50 ms this sends a flight a few times before its answer can come
    /// (about 0.6 KB each): under loss that extra copy is what gets through. Unlike BoringSSL
    /// the interval stops doubling at 200 ms (2 × a 100 ms RTT): with doubling alone, at 30 %
    /// loss each way a flight missed five times waits 1.6 s for its next copy, and one setup in
    /// twenty took more than 2 s (`docs/quality.md`, "Setup under loss"). 100 retries at that
    /// pace cover about 20 s; dimpl's 40 s deadline on the whole handshake stays the outer
    /// bound. A stuck handshake costs 5 datagrams of ≤ 0.6 KB a second.
    pub const BROWSER: HandshakeTiming = HandshakeTiming {
        start_rto: Duration::from_millis(50),
        max_rto: Duration::from_millis(200),
        retries: 100,
    };

    /// dimpl's defaults, which Huddle used before: 1 s, doubling without a cap, 4 retries (a
    /// flight unanswered after 1 + 2 + 4 + 8 + 16 s fails the handshake).
    pub const LEGACY: HandshakeTiming = HandshakeTiming {
        start_rto: Duration::from_secs(1),
        max_rto: Duration::MAX,
        retries: 4,
    };

    /// The schedule of this process: [`HandshakeTiming::BROWSER`], or
    /// [`HandshakeTiming::LEGACY`] when the environment has `HUDDLE_SETUP_TIMING=legacy` (read
    /// once; for measurements before/after with the same binaries).
    pub fn of_process() -> HandshakeTiming {
        static TIMING: OnceLock<HandshakeTiming> = OnceLock::new();
        *TIMING.get_or_init(|| match std::env::var("HUDDLE_SETUP_TIMING").as_deref() {
            Ok("legacy") => HandshakeTiming::LEGACY,
            _ => HandshakeTiming::BROWSER,
        })
    }
}

/// The DTLS half of [`crypto_provider`].
static DTLS: SharedConfigDtls = SharedConfigDtls {
    configs: Mutex::new(Vec::new()),
    timing: None,
    seed: None,
};

/// The provider for every `Rtc` of this process, with [`HandshakeTiming::of_process`].
pub fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            Arc::new(CryptoProvider {
                dtls_provider: &DTLS,
                ..str0m::crypto::from_feature_flags()
            })
        })
        .clone()
}

/// A provider with this handshake timing instead of the process's, for simulations that compare
/// schedules in one process. One provider per distinct timing lives as long as the process (a
/// str0m provider holds its DTLS half by `&'static`); ask for a handful, not one per connection.
pub fn crypto_provider_with(timing: HandshakeTiming) -> Arc<CryptoProvider> {
    provider(timing, None)
}

/// [`crypto_provider_with`], and dimpl's retransmission jitter drawn from `seed` (the same
/// sequence for every handshake made with this provider): for simulations that must come out
/// the same on every run. Never for real connections.
pub fn crypto_provider_seeded(timing: HandshakeTiming, seed: u64) -> Arc<CryptoProvider> {
    provider(timing, Some(seed))
}

fn provider(timing: HandshakeTiming, seed: Option<u64>) -> Arc<CryptoProvider> {
    type Providers = Vec<(HandshakeTiming, Option<u64>, Arc<CryptoProvider>)>;
    static PROVIDERS: Mutex<Providers> = Mutex::new(Vec::new());
    let mut providers = PROVIDERS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((_, _, p)) = providers.iter().find(|(t, s, _)| *t == timing && *s == seed) {
        return p.clone();
    }
    let dtls: &'static SharedConfigDtls = Box::leak(Box::new(SharedConfigDtls {
        configs: Mutex::new(Vec::new()),
        timing: Some(timing),
        seed,
    }));
    let provider = Arc::new(CryptoProvider {
        dtls_provider: dtls,
        ..str0m::crypto::from_feature_flags()
    });
    providers.push((timing, seed, provider.clone()));
    provider
}

/// dimpl over aws-lc-rs, with one validated configuration per MTU.
#[derive(Debug)]
struct SharedConfigDtls {
    configs: Mutex<Vec<(Option<usize>, Arc<dimpl::Config>)>>,
    /// The handshake timing; the process's when `None`.
    timing: Option<HandshakeTiming>,
    /// The seed of dimpl's non-cryptographic randomness (retransmission jitter), for
    /// simulations; from the system when `None`.
    seed: Option<u64>,
}

impl SharedConfigDtls {
    fn config(&self, mtu: Option<usize>) -> Result<Arc<dimpl::Config>, CryptoError> {
        let mut configs = self.configs.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, c)) = configs.iter().find(|(m, _)| *m == mtu) {
            return Ok(c.clone());
        }
        // As str0m-aws-lc-rs configures it, with the handshake timing.
        let timing = self.timing.unwrap_or_else(HandshakeTiming::of_process);
        // As the DTLS client (the server answers `actpass` with `active`), decrypt the peer's
        // SRTP once our Finished is out: its final flight lost on the way then costs no media
        // (dimpl patch, `vendor/README.md`; `docs/quality.md`, "Setup under loss").
        let mut builder = dimpl::Config::builder()
            .use_server_cookie(false)
            .early_srtp_keys(true)
            .flight_start_rto(timing.start_rto)
            .flight_max_rto(timing.max_rto)
            .flight_retries(timing.retries);
        if let Some(mtu) = mtu {
            builder = builder.mtu(mtu);
        }
        if let Some(seed) = self.seed {
            builder = builder.dangerously_set_rng_seed(seed);
        }
        let config = Arc::new(
            builder
                .build()
                .map_err(|e| CryptoError::Other(format!("dimpl config: {e}")))?,
        );
        configs.push((mtu, config.clone()));
        Ok(config)
    }
}

impl DtlsProvider for SharedConfigDtls {
    fn generate_certificate(&self) -> Option<DtlsCert> {
        str0m::crypto::from_feature_flags()
            .dtls_provider
            .generate_certificate()
    }

    fn new_dtls(
        &self,
        cert: &DtlsCert,
        now: Instant,
        dtls_version: DtlsVersion,
        mtu: Option<usize>,
    ) -> Result<Box<dyn DtlsInstance>, CryptoError> {
        let config = self.config(mtu)?;
        let cert = dimpl::DtlsCertificate {
            certificate: cert.certificate.clone(),
            private_key: cert.private_key.clone(),
        };
        let dtls = match dtls_version {
            DtlsVersion::Dtls12 => dimpl::Dtls::new_12(config, cert, now),
            DtlsVersion::Dtls13 => dimpl::Dtls::new_13(config, cert, now),
            DtlsVersion::Auto => dimpl::Dtls::new_auto(config, cert, now),
            v => return Err(CryptoError::Other(format!("unsupported DTLS version {v}"))),
        };
        Ok(Box::new(Instance(dtls)))
    }
}

/// One connection's DTLS.
struct Instance(dimpl::Dtls);

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance").finish_non_exhaustive()
    }
}

impl DtlsInstance for Instance {
    fn set_active(&mut self, active: bool) {
        self.0.set_active(active);
    }

    fn handle_packet(&mut self, packet: &[u8]) -> Result<(), DtlsImplError> {
        self.0.handle_packet(packet)
    }

    fn poll_output<'a>(&mut self, buf: &'a mut [u8]) -> DtlsOutput<'a> {
        self.0.poll_output(buf)
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), DtlsImplError> {
        self.0.handle_timeout(now)
    }

    fn send_application_data(&mut self, data: &[u8]) -> Result<usize, DtlsImplError> {
        self.0.send_application_data(data)
    }

    fn is_active(&self) -> bool {
        self.0.is_active()
    }

    fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.0.protocol_version()
    }

    fn is_closing(&self) -> bool {
        self.0.is_closing()
    }

    fn is_closed(&self) -> bool {
        self.0.is_closed()
    }

    fn close(&mut self) -> Result<(), DtlsImplError> {
        self.0.close()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Two `Rtc`s on this provider connect (ICE, DTLS) in memory, and share one configuration.
    #[test]
    fn shared_config_connects() {
        use str0m::change::SdpOffer;
        use str0m::media::{Direction, MediaKind};
        use str0m::{Candidate, Input, RtcConfig};

        let now = Instant::now();
        let make = |lite: bool, port: u16| {
            let mut rtc = RtcConfig::new()
                .set_ice_lite(lite)
                .set_crypto_provider(crypto_provider())
                .build(now);
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            rtc.add_local_candidate(Candidate::host(addr, "udp").expect("candidate"));
            (rtc, addr)
        };
        let (mut client, caddr) = make(false, 1000);
        let (mut server, saddr) = make(true, 2000);
        let mut api = client.sdp_api();
        api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
        let (offer, pending) = api.apply().expect("an offer");
        let offer = SdpOffer::from_sdp_string(&offer.to_sdp_string()).expect("parses");
        let answer = server.sdp_api().accept_offer(offer).expect("answered");
        client.sdp_api().accept_answer(pending, answer).expect("accepted");

        let mut t = now;
        let mut connected = [false, false];
        for _ in 0..200 {
            connected[0] |= pump(&mut client, &mut server, caddr, saddr, t);
            connected[1] |= pump(&mut server, &mut client, saddr, caddr, t);
            if connected == [true, true] {
                break;
            }
            t += Duration::from_millis(10);
            client.handle_input(Input::Timeout(t)).expect("timeout");
            server.handle_input(Input::Timeout(t)).expect("timeout");
        }
        assert_eq!(connected, [true, true]);
        let configs = DTLS.configs.lock().expect("not poisoned");
        assert_eq!(configs.len(), 1, "one configuration for both connections");
    }

    /// Delivers what `from` sends to `to`; whether `from` reported `Connected`.
    fn pump(
        from: &mut str0m::Rtc,
        to: &mut str0m::Rtc,
        from_addr: std::net::SocketAddr,
        to_addr: std::net::SocketAddr,
        now: Instant,
    ) -> bool {
        use str0m::net::{Protocol, Receive};
        use str0m::{Event, Input, Output};
        let mut connected = false;
        loop {
            match from.poll_output().expect("output") {
                Output::Timeout(_) => return connected,
                Output::Transmit(d) => {
                    let rx = Receive::new(Protocol::Udp, from_addr, to_addr, &d.contents).expect("datagram");
                    to.handle_input(Input::Receive(now, rx)).expect("input");
                }
                Output::Event(Event::Connected) => connected = true,
                Output::Event(_) => {}
            }
        }
    }
}
