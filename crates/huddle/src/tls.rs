//! `wss://`: the TLS client configuration (rustls on aws-lc-rs) and what a failed handshake
//! means.
//!
//! Certificates are verified against the system's roots (`rustls-native-certs`: the OS store,
//! or the files `SSL_CERT_FILE`/`SSL_CERT_DIR` name) plus the app's extra CA
//! ([`crate::EngineProfile::ca_cert_pem`]), for servers with a certificate of their own CA.

use std::sync::Arc;

use huddle_proto::{ErrorCode, HuddleError};
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tracing::debug;

/// The certificates of a PEM text; 1000006 if it holds none or a broken one.
pub(crate) fn parse_ca(pem: &str) -> Result<Vec<CertificateDer<'static>>, HuddleError> {
    let bad = |why: String| HuddleError::new(ErrorCode::INVALID_PARAMETER, format!("ca_cert_pem: {why}"));
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not a valid PEM certificate ({e})")))?;
    if certs.is_empty() {
        return Err(bad(
            "no PEM certificate (-----BEGIN CERTIFICATE-----) in it".into()
        ));
    }
    Ok(certs)
}

/// The client configuration for `wss://`: the system's roots and `extra_ca`, ALPN `http/1.1`
/// (the WebSocket upgrade is an HTTP/1.1 request).
pub(crate) fn client_config(extra_ca: Option<&str>) -> Result<Arc<rustls::ClientConfig>, HuddleError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    if !native.errors.is_empty() {
        debug!(errors = ?native.errors, "some system root certificates could not be loaded");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    debug!(added, ignored, "system root certificates");
    if let Some(pem) = extra_ca {
        for cert in parse_ca(pem)? {
            roots.add(cert).map_err(|e| {
                HuddleError::new(
                    ErrorCode::INVALID_PARAMETER,
                    format!("ca_cert_pem: not a usable CA certificate ({e})"),
                )
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| HuddleError::new(ErrorCode::INTERNAL, format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// If `e` is the server's certificate being refused, what to tell the app.
pub(crate) fn untrusted_certificate(e: &tokio_tungstenite::tungstenite::Error) -> Option<String> {
    let tokio_tungstenite::tungstenite::Error::Io(io) = e else {
        return None;
    };
    let rustls_error = io.get_ref()?.downcast_ref::<rustls::Error>()?;
    match rustls_error {
        rustls::Error::InvalidCertificate(_) => Some(format!(
            "the server's certificate was not trusted ({rustls_error}): give its CA to the \
             engine (EngineProfile::ca_cert_pem) or use a certificate from a public CA"
        )),
        _ => None,
    }
}
