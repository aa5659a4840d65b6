//! A deterministic "poor man's fuzz": ~20k mutated and random tokens through every parser,
//! seeded so failures reproduce. The libFuzzer targets in `fuzz/` go further.

mod common;

use huddle_token::{Cipher, Privileges, TokenBuilder, VerifyOptions, decode, peek_expire, verify};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SECRET: &str = "fa94dd0f974cf2e293728a526b028271";
const CTIME: i64 = 1_700_000_000;
const ITERATIONS: usize = 20_000;
const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=";

fn opts() -> VerifyOptions<'static> {
    VerifyOptions {
        app_id: Some(1),
        user_id: Some("demo"),
        now: CTIME + 1,
    }
}

/// Runs every entry point; returns whether `verify` accepted the token.
fn exercise(token: &str) -> bool {
    let verified = verify(token, SECRET, &opts());
    let decoded = decode(token, SECRET);
    let peeked = peek_expire(token);
    let _ = Privileges::parse(token);
    // Consistency between the entry points.
    if let Ok(d) = &decoded {
        assert_eq!(peeked, Ok(d.header_expire));
    }
    if verified.is_ok() {
        assert!(decoded.is_ok());
    }
    verified.is_ok()
}

fn mutate_binary(rng: &mut StdRng, bin: &[u8]) -> Vec<u8> {
    let mut b = bin.to_vec();
    match rng.gen_range(0..7) {
        0 => {
            let i = rng.gen_range(0..b.len());
            b[i] ^= 1 << rng.gen_range(0..8);
        }
        1 => {
            for _ in 0..rng.gen_range(1..8) {
                let i = rng.gen_range(0..b.len());
                b[i] = rng.r#gen();
            }
        }
        2 => b.truncate(rng.gen_range(0..b.len())),
        3 => {
            let extra: Vec<u8> = (0..rng.gen_range(1..4)).map(|_| rng.r#gen()).collect();
            b.extend(extra);
        }
        4 => {
            // Length fields: iv_len at 8..10, content_len after the IV.
            let iv_len = u16::from_be_bytes([b[8], b[9]]) as usize;
            let at = if rng.gen_bool(0.5) { 8 } else { 10 + iv_len };
            let v: u16 = rng.r#gen();
            b[at..at + 2].copy_from_slice(&v.to_be_bytes());
        }
        5 => {
            let i = rng.gen_range(0..b.len());
            b.remove(i);
        }
        _ => {
            let i = rng.gen_range(0..=b.len());
            b.insert(i, rng.r#gen());
        }
    }
    b
}

fn mutate_text(rng: &mut StdRng, token: &str) -> String {
    let mut t: Vec<u8> = token.as_bytes().to_vec();
    match rng.gen_range(0..5) {
        0 => {
            let i = rng.gen_range(0..t.len());
            t[i] = B64[rng.gen_range(0..B64.len())];
        }
        1 => {
            let i = rng.gen_range(0..t.len());
            t[i] = rng.gen_range(0..128);
        }
        2 => t.truncate(rng.gen_range(0..t.len())),
        3 => {
            let i = rng.gen_range(0..=t.len());
            t.insert(i, b" \n\t=A+/-_*"[rng.gen_range(0..10)]);
        }
        _ => {
            let i = rng.gen_range(0..t.len());
            t.remove(i);
        }
    }
    String::from_utf8_lossy(&t).into_owned()
}

fn random_text(rng: &mut StdRng) -> String {
    let len = rng.gen_range(0..300);
    match rng.gen_range(0..3) {
        0 => (0..len).map(|_| rng.r#gen::<char>()).collect(),
        1 => {
            let body: String = (0..len)
                .map(|_| B64[rng.gen_range(0..B64.len())] as char)
                .collect();
            format!("04{body}")
        }
        _ => {
            let bin: Vec<u8> = (0..len).map(|_| rng.r#gen()).collect();
            common::token_of(&bin)
        }
    }
}

/// The same token, or the one other encoding the format allows: a CBC token followed by the
/// tolerated mode byte 0 (Token04 §6 step 3).
fn equivalent(candidate: &str, original: &str) -> bool {
    if candidate == original {
        return true;
    }
    let (Some(c), Some(o)) = (common::unpack(candidate), common::unpack(original)) else {
        return false;
    };
    o.mode.is_none() && c.mode == Some(0) && (c.expire, &c.iv, &c.content) == (o.expire, &o.iv, &o.content)
}

#[test]
fn mutated_and_random_tokens_never_panic_and_never_verify() {
    let mut rng = StdRng::seed_from_u64(0x4875_6464_6c65_0004);
    let payload = Privileges {
        room_id: "room".into(),
        login: Some(true),
        ..Default::default()
    }
    .to_payload();
    let mut originals = Vec::new();
    for cipher in [Cipher::Gcm, Cipher::Cbc] {
        for payload in [String::new(), payload.clone()] {
            let iv: Vec<u8> = (0..cipher.iv_len()).map(|_| rng.r#gen()).collect();
            let token = TokenBuilder::new(1, "demo", SECRET)
                .cipher(cipher)
                .ctime(CTIME)
                .nonce(rng.r#gen())
                .iv(iv)
                .payload(payload)
                .build()
                .unwrap();
            originals.push(token);
        }
    }
    for t in &originals {
        assert!(exercise(t), "originals verify");
    }

    let mut rejected = 0;
    for i in 0..ITERATIONS {
        let original = &originals[i % originals.len()];
        let candidate = match i % 3 {
            0 => {
                let bin = common::b64_decode(&original[2..]).unwrap();
                common::token_of(&mutate_binary(&mut rng, &bin))
            }
            1 => mutate_text(&mut rng, original),
            _ => random_text(&mut rng),
        };
        let accepted = exercise(&candidate);
        if equivalent(&candidate, original) {
            assert!(accepted, "{candidate}");
        } else {
            assert!(!accepted, "mutated token verified: {candidate}");
            rejected += 1;
        }
    }
    assert!(rejected > ITERATIONS * 9 / 10);
}

#[test]
fn random_privilege_payloads_never_panic() {
    let mut rng = StdRng::seed_from_u64(5);
    let seeds = [
        r#"{"room_id":"r","privilege":{"1":1,"2":0},"stream_id_list":["a","b"]}"#,
        r#"{"room_id": "r", "privilege": {"1": 1}, "stream_id_list": null}"#,
    ];
    for i in 0..5_000 {
        let seed = seeds[i % 2];
        let text = if i % 5 == 0 {
            random_text(&mut rng)
        } else {
            mutate_text(&mut rng, seed)
        };
        if let Ok(p) = Privileges::parse(&text) {
            // Whatever parses round-trips through the compact form.
            assert_eq!(Privileges::parse(&p.to_payload()).unwrap(), p);
        }
    }
    // Deep nesting is refused by serde_json's recursion limit, not a stack overflow.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(Privileges::parse(&deep).is_err());
}
