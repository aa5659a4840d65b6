//! Unit tests of the public API: builder input checks, privileges, AppSign challenges,
//! credentials, error codes.

mod common;

use huddle_token::{
    AppSign, Cipher, Denied, Privileges, ServerSecret, TokenBuilder, TokenError, VerifyOptions, decode,
    peek_expire, sign_challenge, verify, verify_challenge,
};

const SECRET: &str = "fa94dd0f974cf2e293728a526b028271";
const CTIME: i64 = 1_700_000_000;

fn builder() -> TokenBuilder {
    TokenBuilder::new(1, "demo", SECRET)
        .ctime(CTIME)
        .effective_secs(3600)
}

// ------------------------------------------------------------------------------------------------
// Builder

#[test]
fn builder_rejects_bad_inputs_in_the_official_order() {
    assert_eq!(
        TokenBuilder::new(0, "", "short").effective_secs(0).build(),
        Err(TokenError::InvalidAppId)
    );
    assert_eq!(
        TokenBuilder::new(1, "", "short").effective_secs(0).build(),
        Err(TokenError::InvalidUserId)
    );
    assert_eq!(
        TokenBuilder::new(1, "u", "short").effective_secs(0).build(),
        Err(TokenError::InvalidSecret { len: 5 })
    );
    assert_eq!(
        TokenBuilder::new(1, "u", &"x".repeat(33)).build(),
        Err(TokenError::InvalidSecret { len: 33 })
    );
    // 32 characters but more bytes: the rule is 32 bytes.
    assert_eq!(
        TokenBuilder::new(1, "u", &"é".repeat(32)).build(),
        Err(TokenError::InvalidSecret { len: 64 })
    );
    assert_eq!(
        TokenBuilder::new(1, "u", SECRET).effective_secs(0).build(),
        Err(TokenError::InvalidEffectiveTime { secs: 0 })
    );
    assert_eq!(
        TokenBuilder::new(1, "u", SECRET).effective_secs(-5).build(),
        Err(TokenError::InvalidEffectiveTime { secs: -5 })
    );
    assert_eq!(
        TokenBuilder::new(1, "u", SECRET)
            .ctime(i64::MAX - 10)
            .effective_secs(11)
            .build(),
        Err(TokenError::InvalidEffectiveTime { secs: 11 })
    );
    for err in [
        TokenError::InvalidAppId,
        TokenError::InvalidUserId,
        TokenError::InvalidSecret { len: 0 },
        TokenError::InvalidEffectiveTime { secs: 0 },
    ] {
        assert_eq!(err.code(), 1002074);
    }
}

#[test]
fn builder_rejects_a_fixed_iv_of_the_wrong_length() {
    assert_eq!(
        builder().iv(vec![0; 16]).build(),
        Err(TokenError::IvLength {
            cipher: Cipher::Gcm,
            len: 16
        })
    );
    assert_eq!(
        builder().cipher(Cipher::Cbc).iv(vec![0; 12]).build(),
        Err(TokenError::IvLength {
            cipher: Cipher::Cbc,
            len: 12
        })
    );
}

#[test]
fn builder_limits_the_content_to_what_every_decoder_reads() {
    // GCM content = plaintext + 16 must stay <= 32767 (Python/Java read the length as signed).
    let empty = huddle_token::TokenClaims {
        app_id: 1,
        user_id: "demo".into(),
        nonce: 0,
        ctime: CTIME,
        expire: CTIME + 3600,
        payload: String::new(),
    };
    let fits = 32767 - 16 - empty.to_json().len();
    let ok = builder().nonce(0).payload("p".repeat(fits)).build().unwrap();
    assert_eq!(
        verify(&ok, SECRET, &VerifyOptions::new(CTIME))
            .unwrap()
            .payload
            .len(),
        fits
    );
    assert_eq!(
        builder().nonce(0).payload("p".repeat(fits + 1)).build(),
        Err(TokenError::PayloadTooLong {
            len: 32768,
            max: 32767
        })
    );
    let err = builder()
        .cipher(Cipher::Cbc)
        .payload("p".repeat(40_000))
        .build()
        .unwrap_err();
    assert!(
        matches!(err, TokenError::PayloadTooLong { max: 32767, .. }),
        "{err:?}"
    );
}

#[test]
fn builder_defaults_gcm_random_iv_and_nonce() {
    let a = builder().build().unwrap();
    let b = builder().build().unwrap();
    assert_ne!(a, b, "random IV and nonce");
    let (da, db) = (decode(&a, SECRET).unwrap(), decode(&b, SECRET).unwrap());
    assert_eq!(da.cipher, Cipher::Gcm);
    assert_eq!(da.iv.len(), 12);
    assert_ne!(da.iv, db.iv);
    assert!(da.claims.nonce >= 0 && db.claims.nonce >= 0);
    assert_eq!(da.claims.expire, CTIME + 3600);

    let c = builder().cipher(Cipher::Cbc).build().unwrap();
    let dc = decode(&c, SECRET).unwrap();
    assert_eq!((dc.cipher, dc.iv.len()), (Cipher::Cbc, 16));

    // Default ctime is the current time and the default lifetime one hour.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let d = decode(&TokenBuilder::new(9, "x", SECRET).build().unwrap(), SECRET)
        .unwrap()
        .claims;
    assert!((d.ctime - now).abs() <= 5, "{} vs {now}", d.ctime);
    assert_eq!(d.expire - d.ctime, 3600);
}

#[test]
fn builder_debug_redacts_the_secret() {
    let dbg = format!("{:?}", builder().iv(b"abcdefghijkl".to_vec()));
    assert!(!dbg.contains(SECRET), "{dbg}");
    assert!(dbg.contains("<redacted>") && dbg.contains("demo"), "{dbg}");
}

#[test]
fn builder_privileges_round_trip() {
    let p = Privileges {
        room_id: "room-1".into(),
        login: Some(true),
        publish: Some(false),
        stream_id_list: Some(vec!["a".into(), "b".into()]),
    };
    let token = builder().privileges(&p).build().unwrap();
    let claims = verify(&token, SECRET, &VerifyOptions::new(CTIME)).unwrap();
    assert_eq!(
        claims.payload,
        r#"{"room_id":"room-1","privilege":{"1":1,"2":0},"stream_id_list":["a","b"]}"#
    );
    assert_eq!(claims.privileges().unwrap(), Some(p));
}

// ------------------------------------------------------------------------------------------------
// Verify

#[test]
fn verify_checks_in_spec_order_and_boundaries() {
    let token = builder().build().unwrap();
    let opts = VerifyOptions {
        app_id: Some(1),
        user_id: Some("demo"),
        now: CTIME + 3599,
    };
    assert!(verify(&token, SECRET, &opts).is_ok());
    assert_eq!(
        verify(
            &token,
            SECRET,
            &VerifyOptions {
                now: CTIME + 3600,
                ..opts
            }
        ),
        Err(TokenError::Expired {
            expire: CTIME + 3600,
            now: CTIME + 3600
        })
    );
    // Nothing is checked when not asked for; a token from the future (now < ctime) is accepted.
    assert!(verify(&token, SECRET, &VerifyOptions::new(0)).is_ok());
    assert!(verify(&token, SECRET, &VerifyOptions::new(i64::MIN)).is_ok());
    // User is checked before expiry, app before user.
    let late = VerifyOptions {
        app_id: Some(2),
        user_id: Some("x"),
        now: i64::MAX,
    };
    assert_eq!(
        verify(&token, SECRET, &late),
        Err(TokenError::AppIdMismatch {
            expected: 2,
            actual: 1
        })
    );
    assert_eq!(
        verify(&token, SECRET, &VerifyOptions { app_id: None, ..late }),
        Err(TokenError::UserIdMismatch)
    );
    // Secret errors come first.
    assert_eq!(
        verify("garbage", "short", &opts),
        Err(TokenError::InvalidSecret { len: 5 })
    );
}

#[test]
fn decode_and_peek_expire() {
    let token = builder().cipher(Cipher::Cbc).build().unwrap();
    let d = decode(&token, SECRET).unwrap();
    assert_eq!(d.header_expire, CTIME + 3600);
    assert_eq!(d.claims.expire, CTIME + 3600);
    assert_eq!(peek_expire(&token), Ok(CTIME + 3600));
    // peek_expire needs no secret but still checks the layout.
    assert_eq!(
        peek_expire("04AAAA"),
        Err(TokenError::Truncated { field: "expire" })
    );
    assert_eq!(peek_expire("nope"), Err(TokenError::BadPrefix));
    // Negative and far expiries survive the round trip.
    let t = TokenBuilder::new(1, "u", SECRET)
        .ctime(-100)
        .effective_secs(1)
        .build()
        .unwrap();
    assert_eq!(peek_expire(&t), Ok(-99));
}

#[test]
fn oversized_tokens_are_rejected_before_decoding() {
    let huge = format!("04{}", "A".repeat(200_000));
    assert!(matches!(
        peek_expire(&huge),
        Err(TokenError::TokenTooLong { len: 200_000, .. })
    ));
    assert!(matches!(
        decode(&huge, SECRET),
        Err(TokenError::TokenTooLong { .. })
    ));
}

#[test]
fn cbc_tokens_are_malleable_in_their_first_block() {
    // Documents a property of the legacy format, not a bug of this crate: CBC has no integrity,
    // so flipping IV bits flips the same bits of the first 16 plaintext bytes. With the Java key
    // order those are `{"user_id":"abcd`, so a token holder can rename the first 4 bytes of the
    // user ID. Deployments that only issue GCM tokens should refuse Cipher::Cbc.
    let fields = common::Fields {
        app_id: 1,
        user_id: "abcd5678".into(),
        nonce: 1,
        ctime: CTIME,
        expire: CTIME + 3600,
        payload: Some(String::new()),
    };
    let pt = common::plaintext(&fields, common::Style::Java);
    assert!(pt.starts_with(r#"{"user_id":"abcd"#));
    let iv = [7u8; 16];
    let content = common::cbc_encrypt_raw(SECRET, &iv, &common::pkcs7(pt.as_bytes()));
    let mut forged_iv = iv;
    for (i, (from, to)) in b"abcd".iter().zip(b"zzzz").enumerate() {
        forged_iv[12 + i] ^= from ^ to;
    }
    let forged = common::token_of(&common::pack(CTIME + 3600, &forged_iv, &content, None));
    let d = decode(&forged, SECRET).unwrap();
    assert_eq!(d.cipher, Cipher::Cbc);
    assert_eq!(d.claims.user_id, "zzzz5678");

    // The same trick on a GCM token fails the tag check.
    let gcm = TokenBuilder::new(1, "abcd5678", SECRET).build().unwrap();
    let mut u = common::unpack(&gcm).unwrap();
    u.iv[0] ^= 1;
    let tampered = common::token_of(&common::pack(u.expire, &u.iv, &u.content, u.mode));
    assert_eq!(decode(&tampered, SECRET), Err(TokenError::Decrypt));
}

#[test]
fn error_codes_and_messages() {
    let cases: [(TokenError, u32); 12] = [
        (TokenError::BadPrefix, 1002074),
        (TokenError::Base64, 1002074),
        (TokenError::Truncated { field: "iv" }, 1002074),
        (TokenError::BadMode { mode: 2 }, 1002074),
        (TokenError::InvalidAppSign, 1001006),
        (TokenError::Decrypt, 1002075),
        (TokenError::InvalidClaims("x"), 1002076),
        (TokenError::ExpireMismatch { header: 1, claims: 2 }, 1002076),
        (TokenError::InvalidPayload("x"), 1002076),
        (
            TokenError::AppIdMismatch {
                expected: 1,
                actual: 2,
            },
            1002077,
        ),
        (TokenError::UserIdMismatch, 1002079),
        (TokenError::PrivilegeDenied(Denied::Room), 1002080),
    ];
    assert_eq!(TokenError::PrivilegeDenied(Denied::Login).code(), 1002080);
    assert_eq!(TokenError::PrivilegeDenied(Denied::Publish).code(), 1003025);
    assert_eq!(TokenError::PrivilegeDenied(Denied::Stream).code(), 1003025);
    for (err, code) in cases {
        assert_eq!(err.code(), code, "{err:?}");
        assert!(!err.to_string().is_empty());
    }
    assert_eq!(TokenError::Expired { expire: 1, now: 1 }.code(), 1002078);
    assert_eq!(
        TokenError::IvLength {
            cipher: Cipher::Gcm,
            len: 16
        }
        .to_string(),
        "IV length 16 does not match AES-256-GCM (needs 12)"
    );
}

// ------------------------------------------------------------------------------------------------
// Privileges

#[test]
fn privileges_parse_every_style() {
    let compact =
        Privileges::parse(r#"{"room_id":"demo-room","privilege":{"1":1,"2":0},"stream_id_list":null}"#)
            .unwrap();
    assert_eq!(
        compact,
        Privileges {
            room_id: "demo-room".into(),
            login: Some(true),
            publish: Some(false),
            stream_id_list: None
        }
    );
    let spaced = Privileges::parse(
        r#"{"room_id": "r", "privilege": {"1": 1, "2": 1}, "stream_id_list": ["s1", "s2"]}"#,
    )
    .unwrap();
    assert_eq!(
        spaced.stream_id_list,
        Some(vec!["s1".to_owned(), "s2".to_owned()])
    );
    assert_eq!((spaced.login, spaced.publish), (Some(true), Some(true)));
    let escaped =
        Privileges::parse(r#"{"stream_id_list":[],"privilege":{"2":0},"room_id":"\u623f\/1"}"#).unwrap();
    assert_eq!(escaped.room_id, "房/1");
    assert_eq!((escaped.login, escaped.publish), (None, Some(false)));
    // Optional parts may be absent or null; unknown keys are ignored.
    assert_eq!(Privileges::parse("{}").unwrap(), Privileges::default());
    assert_eq!(
        Privileges::parse(r#"{"room_id":null,"privilege":{"1":null,"3":7},"x":1}"#).unwrap(),
        Privileges::default()
    );
}

#[test]
fn privileges_parse_rejects_bad_shapes() {
    for bad in [
        "",
        "not json",
        "[]",
        "null",
        r#"{"room_id":5}"#,
        r#"{"privilege":[1,0]}"#,
        r#"{"privilege":{"1":2}}"#,
        r#"{"privilege":{"1":true}}"#,
        r#"{"privilege":{"2":"1"}}"#,
        r#"{"privilege":{"1":-1}}"#,
        r#"{"privilege":{"1":1.0}}"#,
        r#"{"stream_id_list":"s1"}"#,
        r#"{"stream_id_list":[1]}"#,
        r#"{"room_id":"r"} trailing"#,
    ] {
        let err = Privileges::parse(bad).expect_err(bad);
        assert!(matches!(err, TokenError::InvalidPayload(_)), "{bad}: {err:?}");
        assert_eq!(err.code(), 1002076);
    }
}

#[test]
fn privileges_allow_rules() {
    let any = Privileges::default();
    assert!(any.allows_room("r") && any.allows_login() && any.allows_publish() && any.allows_stream("s"));

    let strict = Privileges {
        room_id: "r1".into(),
        login: Some(true),
        publish: Some(true),
        stream_id_list: Some(vec!["s1".into()]),
    };
    assert!(strict.allows_room("r1") && !strict.allows_room("r2") && !strict.allows_room(""));
    assert!(strict.allows_stream("s1") && !strict.allows_stream("s2"));
    assert_eq!(strict.check_login("r1"), Ok(()));
    assert_eq!(
        strict.check_login("R1"),
        Err(TokenError::PrivilegeDenied(Denied::Room))
    );
    assert_eq!(strict.check_publish("s1"), Ok(()));
    assert_eq!(
        strict.check_publish("s2"),
        Err(TokenError::PrivilegeDenied(Denied::Stream))
    );

    let denied = Privileges {
        login: Some(false),
        publish: Some(false),
        stream_id_list: Some(vec![]),
        ..any
    };
    assert!(!denied.allows_login() && !denied.allows_publish() && denied.allows_stream("anything"));
    assert_eq!(
        denied.check_login("x"),
        Err(TokenError::PrivilegeDenied(Denied::Login))
    );
    assert_eq!(
        denied.check_publish("x"),
        Err(TokenError::PrivilegeDenied(Denied::Publish))
    );
}

#[test]
fn privileges_to_payload_is_compact_and_round_trips() {
    let cases = [
        (
            Privileges::default(),
            r#"{"room_id":"","privilege":{},"stream_id_list":null}"#,
        ),
        (
            Privileges {
                room_id: "r\"1/é".into(),
                login: Some(false),
                publish: None,
                stream_id_list: Some(vec![]),
            },
            r#"{"room_id":"r\"1/é","privilege":{"1":0},"stream_id_list":[]}"#,
        ),
        (
            Privileges {
                room_id: "r".into(),
                login: None,
                publish: Some(true),
                stream_id_list: Some(vec!["a".into()]),
            },
            r#"{"room_id":"r","privilege":{"2":1},"stream_id_list":["a"]}"#,
        ),
    ];
    for (p, wire) in cases {
        assert_eq!(p.to_payload(), wire);
        assert_eq!(Privileges::parse(wire).unwrap(), p);
    }
}

// ------------------------------------------------------------------------------------------------
// AppSign challenge and credentials

const SIGN_HEX: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

#[test]
fn challenge_known_answers() {
    // Expected values computed with Python's hmac/hashlib over the documented message.
    let sign: AppSign = SIGN_HEX.parse().unwrap();
    assert_eq!(
        sign_challenge(&sign, 1_234_567, "room-1", "张三", "n0nce-XYZ"),
        "97a9fba65fffa997e5539a8c2391d428bfd6c8388e9483139804c6d6c83cba92"
    );
    let mut bytes = [0u8; 32];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = i as u8;
    }
    assert_eq!(
        sign_challenge(&AppSign::from_bytes(bytes), u32::MAX, "", "", ""),
        "e2be904e7434721b36263c87edaf9acaa63bc36b35e4c008c6ae8a77b291fd5f"
    );
}

#[test]
fn challenge_verify_accepts_only_the_exact_answer() {
    let sign: AppSign = SIGN_HEX.parse().unwrap();
    let sig = sign_challenge(&sign, 7, "room", "user", "nonce");
    assert!(verify_challenge(&sign, 7, "room", "user", "nonce", &sig));
    assert!(verify_challenge(
        &sign,
        7,
        "room",
        "user",
        "nonce",
        &sig.to_uppercase()
    ));
    assert!(!verify_challenge(&sign, 8, "room", "user", "nonce", &sig));
    assert!(!verify_challenge(&sign, 7, "room2", "user", "nonce", &sig));
    assert!(!verify_challenge(&sign, 7, "room", "user2", "nonce", &sig));
    assert!(!verify_challenge(&sign, 7, "room", "user", "nonce2", &sig));
    assert!(!verify_challenge(
        &AppSign::generate(),
        7,
        "room",
        "user",
        "nonce",
        &sig
    ));
    // Field boundaries matter: moving text between fields changes the message.
    assert!(!verify_challenge(&sign, 7, "roomu", "ser", "nonce", &sig));
    for bad in [
        "",
        &sig[..62],
        &format!("{sig}00"),
        &format!("{}zz", &sig[..62]),
        &format!(" {}", &sig[1..]),
    ] {
        assert!(!verify_challenge(&sign, 7, "room", "user", "nonce", bad), "{bad}");
    }
    let mut flipped = sig.clone().into_bytes();
    flipped[10] = if flipped[10] == b'0' { b'1' } else { b'0' };
    assert!(!verify_challenge(
        &sign,
        7,
        "room",
        "user",
        "nonce",
        std::str::from_utf8(&flipped).unwrap()
    ));
}

#[test]
fn app_sign_parse_and_redaction() {
    let sign: AppSign = SIGN_HEX.parse().unwrap();
    assert_eq!(sign.to_hex(), SIGN_HEX);
    assert_eq!(
        SIGN_HEX.to_uppercase().parse::<AppSign>().unwrap().to_hex(),
        SIGN_HEX
    );
    assert_eq!(format!("{sign:?}"), "AppSign(<redacted>)");
    for bad in [
        "",
        &SIGN_HEX[..63],
        &format!("{SIGN_HEX}0"),
        &format!("{}g", &SIGN_HEX[..63]),
        &format!("+{}", &SIGN_HEX[1..]),
    ] {
        assert_eq!(
            bad.parse::<AppSign>().unwrap_err(),
            TokenError::InvalidAppSign,
            "{bad}"
        );
    }
    // 64 bytes that are not 64 ASCII hex digits.
    assert!(format!("é{}", &SIGN_HEX[2..]).parse::<AppSign>().is_err());
    let a = AppSign::generate();
    let b = AppSign::generate();
    assert_ne!(a.to_hex(), b.to_hex());
    assert_eq!(a.to_hex().parse::<AppSign>().unwrap().to_hex(), a.to_hex());
}

#[test]
fn server_secret_parse_generate_and_redaction() {
    let s: ServerSecret = SECRET.parse().unwrap();
    assert_eq!(s.as_str(), SECRET);
    assert_eq!(format!("{s:?}"), "ServerSecret(<redacted>)");
    assert_eq!(
        "x".repeat(31).parse::<ServerSecret>().unwrap_err(),
        TokenError::InvalidSecret { len: 31 }
    );
    assert_eq!(
        ServerSecret::try_from("x".repeat(33)).unwrap_err(),
        TokenError::InvalidSecret { len: 33 }
    );
    assert!("any 32 bytes of text are a key!!".parse::<ServerSecret>().is_ok());

    let g = ServerSecret::generate();
    assert_eq!(g.as_str().len(), 32);
    assert!(
        g.as_str()
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
    );
    assert_ne!(g.as_str(), ServerSecret::generate().as_str());
    // A generated secret works as a token key.
    let token = TokenBuilder::new(5, "u", g.as_str())
        .ctime(CTIME)
        .build()
        .unwrap();
    assert_eq!(
        verify(&token, g.as_str(), &VerifyOptions::new(CTIME))
            .unwrap()
            .app_id,
        5
    );
}
