//! Test certificates made with rcgen: a CA, and a server certificate it signs for `localhost` and
//! `127.0.0.1`, written as PEM files in a fresh directory. Shared with the SDK's TLS test
//! (`crates/huddle/tests/tls.rs` includes this file).
#![allow(dead_code)]

use std::path::PathBuf;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// PEM files of a test CA and a server certificate.
pub struct TestCerts {
    pub dir: PathBuf,
    /// The CA's certificate (PEM text), what clients must trust.
    pub ca_pem: String,
    /// The CA's certificate file.
    pub ca_file: PathBuf,
    /// The server's certificate chain file (its certificate, then the CA's).
    pub cert_file: PathBuf,
    /// The server's private key file (PKCS#8).
    pub key_file: PathBuf,
    /// The server certificate (DER), for SPKI pinning in the browser test.
    pub cert_der: Vec<u8>,
}

impl TestCerts {
    /// Makes a CA and a server certificate for `localhost` and `127.0.0.1` under
    /// `{tmp}/huddle-certs-{tag}-{pid}`.
    pub fn new(tag: &str) -> TestCerts {
        let dir = std::env::temp_dir().join(format!("huddle-certs-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();

        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("Huddle test CA {tag}"));
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);

        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, "localhost");
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();

        let ca_pem = ca_cert.pem();
        let ca_file = dir.join("ca.pem");
        let cert_file = dir.join("fullchain.pem");
        let key_file = dir.join("privkey.pem");
        std::fs::write(&ca_file, &ca_pem).unwrap();
        std::fs::write(&cert_file, format!("{}{}", cert.pem(), ca_pem)).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        TestCerts {
            dir,
            ca_pem,
            ca_file,
            cert_file,
            key_file,
            cert_der: cert.der().to_vec(),
        }
    }
}

impl Drop for TestCerts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
