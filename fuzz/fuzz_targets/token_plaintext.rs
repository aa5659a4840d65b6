//! Arbitrary bytes as the *authenticated* plaintext of a GCM token, to reach the JSON content
//! checks (a fuzzer cannot forge GCM tags). Neither verify nor decode may panic, and whatever
//! verifies must round-trip through the canonical JSON.
#![no_main]

use aes_gcm::aead::Aead;
use aes_gcm::{Aes256Gcm, KeyInit};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use huddle_token::{VerifyOptions, decode, verify};
use libfuzzer_sys::fuzz_target;

const SECRET: &[u8; 32] = b"fa94dd0f974cf2e293728a526b028271";
const IV: [u8; 12] = *b"abcdefghijkl";

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 || data.len() > 4096 {
        return;
    }
    let (header, plaintext) = data.split_at(8);
    let Ok(content) = Aes256Gcm::new(SECRET.into()).encrypt(&IV.into(), plaintext) else {
        return;
    };
    let mut bin = header.to_vec();
    bin.extend_from_slice(&12u16.to_be_bytes());
    bin.extend_from_slice(&IV);
    bin.extend_from_slice(&(content.len() as u16).to_be_bytes());
    bin.extend_from_slice(&content);
    bin.push(1);
    let token = format!("04{}", STANDARD.encode(&bin));
    let secret = std::str::from_utf8(SECRET).unwrap();

    if let Ok(d) = decode(&token, secret) {
        // The canonical JSON is read back to the same claims.
        let reparsed: huddle_token::TokenClaims =
            serde_json::from_str(&d.claims.to_json()).expect("canonical claims JSON parses");
        assert_eq!(reparsed, d.claims);
        let _ = d.claims.privileges();
    }
    let _ = verify(&token, secret, &VerifyOptions::new(0));
});
