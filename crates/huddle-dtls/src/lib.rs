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

use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Instant;

use str0m::crypto::dtls::{
    DtlsCert, DtlsImplError, DtlsInstance, DtlsOutput, DtlsProvider, DtlsVersion, ProtocolVersion,
};
use str0m::crypto::{CryptoError, CryptoProvider};

/// The DTLS half of [`crypto_provider`].
static DTLS: SharedConfigDtls = SharedConfigDtls {
    configs: Mutex::new(Vec::new()),
};

/// The provider for every `Rtc` of this process.
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

/// dimpl over aws-lc-rs, with one validated configuration per MTU.
#[derive(Debug)]
struct SharedConfigDtls {
    configs: Mutex<Vec<(Option<usize>, Arc<dimpl::Config>)>>,
}

impl SharedConfigDtls {
    fn config(&self, mtu: Option<usize>) -> Result<Arc<dimpl::Config>, CryptoError> {
        let mut configs = self.configs.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, c)) = configs.iter().find(|(m, _)| *m == mtu) {
            return Ok(c.clone());
        }
        // As str0m-aws-lc-rs configures it.
        let mut builder = dimpl::Config::builder().use_server_cookie(false);
        if let Some(mtu) = mtu {
            builder = builder.mtu(mtu);
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
