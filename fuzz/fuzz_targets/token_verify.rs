//! Arbitrary input through every huddle-token parser of untrusted text: none may panic.
#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use huddle_token::{Privileges, VerifyOptions, decode, peek_expire, verify};
use libfuzzer_sys::fuzz_target;

const SECRET: &str = "fa94dd0f974cf2e293728a526b028271";

fn exercise(text: &str) {
    let opts = VerifyOptions {
        app_id: Some(1),
        user_id: Some("demo"),
        now: 1_700_000_000,
    };
    let verified = verify(text, SECRET, &opts);
    let decoded = decode(text, SECRET);
    let peeked = peek_expire(text);
    if let Ok(d) = &decoded {
        assert_eq!(peeked, Ok(d.header_expire));
    }
    if verified.is_ok() {
        assert!(decoded.is_ok());
    }
    if let Ok(p) = Privileges::parse(text) {
        assert_eq!(Privileges::parse(&p.to_payload()).as_ref(), Ok(&p));
    }
}

fuzz_target!(|data: &[u8]| {
    // The bytes as token text...
    if let Ok(text) = std::str::from_utf8(data) {
        exercise(text);
    }
    // ...and as the binary layout behind a valid prefix and Base64, to reach the layout parser.
    exercise(&format!("04{}", STANDARD.encode(data)));
});
