//! HTTPS and WSS on the signaling listener (`tls_cert`, `tls_key`): the certificate files, read
//! once at start, and the TLS acceptor the listener hands each connection to
//! ([`crate::ServerState::guard_listener`]).
//!
//! rustls on the aws-lc-rs provider (the one str0m already links; no second crypto library),
//! TLS 1.2 and 1.3, ALPN `http/1.1` only (the server speaks HTTP/1.1; the WebSocket upgrade is an
//! HTTP/1.1 request).

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig as RustlsConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::ConfigError;

/// Reads the PEM certificate chain at `cert` (the server's certificate first, as certbot's
/// `fullchain.pem`) and the PEM private key at `key` (PKCS#8, PKCS#1 or SEC1, as certbot's
/// `privkey.pem`), and builds the acceptor. Every failure names the file.
pub(crate) fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, ConfigError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })
    };
    let invalid = |path: &Path, why: &str| ConfigError::Invalid(format!("{}: {why}", path.display()));

    let cert_pem = read(cert)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(cert, &format!("not a valid PEM certificate chain ({e})")))?;
    if chain.is_empty() {
        return Err(invalid(
            cert,
            "no PEM certificate (-----BEGIN CERTIFICATE-----) in the tls_cert file",
        ));
    }
    let key_pem = read(key)?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        invalid(
            key,
            &format!("no PEM private key (PKCS#8, PKCS#1 or SEC1) in the tls_key file ({e})"),
        )
    })?;

    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = RustlsConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::Invalid(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| {
            ConfigError::Invalid(format!(
                "{} and {}: the certificate and key are not usable together ({e})",
                cert.display(),
                key.display()
            ))
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The first byte of a TLS connection: a handshake record (RFC 8446, 5.1). Anything else on the
/// TLS port is most likely plain HTTP.
pub(crate) const HANDSHAKE_RECORD: u8 = 0x16;

/// What a plain-HTTP client on the TLS port gets before the connection closes.
pub(crate) const PLAIN_HTTP_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
    Content-Type: text/plain; charset=utf-8\r\nConnection: close\r\nContent-Length: 59\r\n\r\n\
    This port serves HTTPS and WSS: use https:// and wss:// .\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_answer_has_the_right_length() {
        let text = std::str::from_utf8(PLAIN_HTTP_ANSWER).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("Content-Length: {}", body.len())),
            "{}",
            body.len()
        );
    }
}
