//! Tokens made by `TokenBuilder` decoded by a from-scratch decoder (hand-written Base64 and
//! layout, the ciphers called directly, JSON compared with a hand-written canonical writer):
//! evidence that the output is standard Token04 and not only readable by this crate.

mod common;

use huddle_token::{Cipher, Privileges, TokenBuilder};
use serde_json::{Value, json};

const SECRET: &str = "3f5c0e1b8a9d7e6f4a2b1c0d9e8f7a6b";

fn check(cipher: Cipher, app_id: u32, user_id: &str, payload: &str) {
    let ctime = 1_712_345_678;
    let token = TokenBuilder::new(app_id, user_id, SECRET)
        .cipher(cipher)
        .ctime(ctime)
        .effective_secs(86_400)
        .payload(payload.to_owned())
        .build()
        .unwrap();

    // Layout by hand.
    assert!(token.starts_with("04"));
    let u = common::unpack(&token).expect("standard layout");
    assert_eq!(u.expire, ctime + 86_400);
    match cipher {
        Cipher::Gcm => {
            assert_eq!(u.iv.len(), 12);
            assert_eq!(u.mode, Some(1));
        }
        Cipher::Cbc => {
            assert_eq!(u.iv.len(), 16);
            assert_eq!(u.mode, None, "CBC tokens end after the content");
            assert_eq!(u.content.len() % 16, 0);
        }
    }
    // The Base64 is the canonical standard encoding of the bytes.
    let bin = common::b64_decode(&token[2..]).unwrap();
    assert_eq!(common::b64_encode(&bin), token[2..]);

    // Decrypt independently and read the JSON.
    let (expire, plaintext) = common::indep_decode(&token, SECRET).expect("independent decrypt");
    assert_eq!(expire, u.expire);
    let text = String::from_utf8(plaintext).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let nonce = v["nonce"].as_i64().unwrap();
    assert!((0..=i64::from(i32::MAX)).contains(&nonce));
    assert_eq!(
        v,
        json!({
            "app_id": app_id, "user_id": user_id, "nonce": nonce,
            "ctime": ctime, "expire": ctime + 86_400, "payload": payload,
        })
    );
    // Byte-exact canonical (python_node) form, as written by the independent JSON writer.
    let fields = common::Fields {
        app_id,
        user_id: user_id.to_owned(),
        nonce: nonce as i32,
        ctime,
        expire: ctime + 86_400,
        payload: Some(payload.to_owned()),
    };
    assert_eq!(text, common::plaintext(&fields, common::Style::PythonNode));

    // A wrong key fails the independent decoder too.
    assert!(
        common::indep_decode(&token, "ffffffffffffffffffffffffffffffff").is_none() || cipher == Cipher::Cbc
    );
}

#[test]
fn builder_output_decodes_with_an_independent_decoder() {
    let privileges = Privileges {
        room_id: "room-9".into(),
        login: Some(true),
        publish: Some(true),
        stream_id_list: Some(vec!["cam".into(), "screen".into()]),
    }
    .to_payload();
    for cipher in [Cipher::Gcm, Cipher::Cbc] {
        check(cipher, 1, "demo", "");
        check(cipher, u32::MAX, "张三_李四", "");
        check(cipher, 42, "😀 \"quoted\" \\ / <&> \u{2028}\t\u{1}", "");
        check(cipher, 2_913_569_222, "alice", &privileges);
        check(
            cipher,
            7,
            &"u".repeat(64),
            "{\"room_id\": \"r\", \"privilege\": {\"1\": 1}}",
        );
        // Plaintext lengths around every block boundary.
        for n in 1..=40 {
            check(cipher, 3, &"x".repeat(n), "");
        }
    }
}
