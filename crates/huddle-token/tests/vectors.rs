//! The official Token04 test vectors (tokens made by ZEGO's own generators, copied from
//! `shared/token04-vectors.json` into `tests/data/official-vectors.json`).

use huddle_token::{Cipher, TokenBuilder, TokenError, VerifyOptions, decode, peek_expire, verify};
use serde_json::Value;

const OFFICIAL: &str = include_str!("data/official-vectors.json");

fn official() -> Value {
    serde_json::from_str(OFFICIAL).expect("official vectors parse")
}

fn cipher_of(v: &Value) -> Cipher {
    match v["cipher"].as_str() {
        Some("AES-256-GCM") => Cipher::Gcm,
        Some("AES-256-CBC") => Cipher::Cbc,
        other => panic!("unknown cipher {other:?}"),
    }
}

#[test]
fn official_vectors_are_reproduced_byte_for_byte() {
    let doc = official();
    let vectors = doc["vectors"].as_array().expect("vectors");
    assert_eq!(vectors.len(), 4);
    for v in vectors {
        let id = v["id"].as_str().unwrap();
        let inputs = &v["inputs"];
        let fixed = &v["fixed_randomness"];
        let token = TokenBuilder::new(
            inputs["app_id"].as_u64().unwrap() as u32,
            inputs["user_id"].as_str().unwrap(),
            inputs["server_secret"].as_str().unwrap(),
        )
        .effective_secs(inputs["effective_time_in_seconds"].as_i64().unwrap())
        .payload(inputs["payload"].as_str().unwrap().to_owned())
        .cipher(cipher_of(v))
        .ctime(fixed["ctime"].as_i64().unwrap())
        .nonce(fixed["nonce"].as_i64().unwrap() as i32)
        .iv(hex::decode(fixed["iv_hex"].as_str().unwrap()).unwrap())
        .build()
        .unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(token, v["token"].as_str().unwrap(), "{id}");
    }
}

#[test]
fn official_vectors_decode_to_the_expected_json() {
    let doc = official();
    for v in doc["vectors"].as_array().unwrap() {
        let id = v["id"].as_str().unwrap();
        let token = v["token"].as_str().unwrap();
        let secret = v["inputs"]["server_secret"].as_str().unwrap();
        let expected = &v["expected"];
        let json = &expected["json"];
        let expire = json["expire"].as_i64().unwrap();

        let decoded = decode(token, secret).unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(decoded.cipher, cipher_of(v), "{id}");
        assert_eq!(
            decoded.header_expire,
            expected["header_expire"].as_i64().unwrap(),
            "{id}"
        );
        assert_eq!(
            hex::encode(&decoded.iv),
            expected["iv_hex"].as_str().unwrap(),
            "{id}"
        );
        assert_eq!(
            decoded.claims.to_json(),
            expected["plaintext_utf8"].as_str().unwrap(),
            "{id}"
        );
        assert_eq!(peek_expire(token), Ok(expire), "{id}");

        let opts = VerifyOptions {
            app_id: Some(json["app_id"].as_u64().unwrap() as u32),
            user_id: Some(json["user_id"].as_str().unwrap()),
            now: expire - 1,
        };
        let claims = verify(token, secret, &opts).unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(serde_json::to_value(&claims).unwrap(), *json, "{id}");
        assert_eq!(
            verify(token, secret, &VerifyOptions { now: expire, ..opts }),
            Err(TokenError::Expired { expire, now: expire }),
            "{id}"
        );

        match expected.get("payload_json") {
            Some(payload) => {
                let p = claims.privileges().unwrap().expect("privilege payload");
                assert_eq!(p.room_id, payload["room_id"].as_str().unwrap());
                assert_eq!(p.login, Some(payload["privilege"]["1"] == 1));
                assert_eq!(p.publish, Some(payload["privilege"]["2"] == 1));
                assert_eq!(p.stream_id_list, None);
                assert_eq!(
                    p.to_payload(),
                    json["payload"].as_str().unwrap(),
                    "{id}: compact form"
                );
            }
            None => assert_eq!(claims.privileges(), Ok(None), "{id}"),
        }
    }
}

#[test]
fn official_negative_vectors_are_rejected() {
    let doc = official();
    let negatives = doc["negative_vectors"].as_array().unwrap();
    assert_eq!(negatives.len(), 2);
    for v in negatives {
        let id = v["id"].as_str().unwrap();
        let err = decode(v["token"].as_str().unwrap(), v["server_secret"].as_str().unwrap()).expect_err(id);
        match v["expect_error"].as_str().unwrap() {
            "decrypt" => assert_eq!(err, TokenError::Decrypt, "{id}"),
            "format" => {
                assert_eq!(err, TokenError::BadPrefix, "{id}");
                assert_eq!(err.code(), 1002074);
            }
            other => panic!("{id}: unknown expectation {other}"),
        }
    }
}

#[test]
fn worked_example_of_the_spec() {
    // §3: the GCM token of c01 is 140 bytes, 8 + 2 + 12 + 2 + 115 + 1.
    let token = TokenBuilder::new(1, "demo", "fa94dd0f974cf2e293728a526b028271")
        .effective_secs(3600)
        .ctime(1_700_000_000)
        .nonce(123_456_789)
        .iv(b"abcdefghijkl".to_vec())
        .build()
        .unwrap();
    use base64::Engine as _;
    let bin = base64::engine::general_purpose::STANDARD
        .decode(&token[2..])
        .unwrap();
    assert_eq!(bin.len(), 140);
    assert_eq!(
        hex::encode(&bin[..24]),
        "000000006553ff10000c6162636465666768696a6b6c0073"
    );
    assert_eq!(hex::encode(&bin[24..32]), "3f22845a25ad8b3b");
    assert_eq!(hex::encode(&bin[132..]), "827320a248d6ac01");
}
