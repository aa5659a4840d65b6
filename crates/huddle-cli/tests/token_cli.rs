//! `huddle token new` / `huddle token verify`, run as a user runs them.

use std::process::{Command, Output};

const SECRET: &str = "fa94dd0f974cf2e293728a526b028271";

fn huddle(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_huddle"))
        .args(args)
        .output()
        .expect("run huddle")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

/// The official generators' deterministic tokens (../shared/token04-vectors.json), each verified by
/// the CLI at a time before their expiry.
#[test]
fn verify_accepts_official_vectors() {
    let cases = [
        (
            "04AAAAAGVT/xAAEDAxMjM0NTY3ODlhYmNkZWYAcPDOWcZeMCPxbh1dpHzCTREIwK2oIO5x78Qlcu9iUMPYkqBI5TvjB3JwCxC9+klE8/eu//t2uE7+o7gQ53yB/JkIFUA6xyD5rb5rd5NER5knvdDJH2auGOam8ZKJG5qT/1t+UUUnbL8ghIsUgkbwAAg=",
            r#"{"app_id":1,"user_id":"demo","nonce":123456789,"ctime":1700000000,"expire":1700003600,"payload":""}"#,
        ),
        (
            "04AAAAAGVT/xAADGFiY2RlZmdoaWprbABzPyKEWiWtizuQcfDgPvQTy+YAycG/bvG4gYXrkA5j6sUo2GIGy+rLXmzj8lyyKQMvQOYE8B2xawM/LXTxFgRSdrUZLe0HbdEEByKJx9DIojD05Q3SoGZnbH62vHS6hoPbUnhOrJ4uHpV1rZUBgnMgokjWrAE=",
            r#"{"app_id":1,"user_id":"demo","nonce":123456789,"ctime":1700000000,"expire":1700003600,"payload":""}"#,
        ),
    ];
    for (token, json) in cases {
        let o = huddle(&[
            "token",
            "verify",
            "--secret",
            SECRET,
            "--app-id",
            "1",
            "--user",
            "demo",
            "--now",
            "1700000001",
            token,
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(stdout(&o).trim(), json);
    }
}

#[test]
fn verify_reports_codes_and_exit_1() {
    let gcm = "04AAAAAGVT/xAADGFiY2RlZmdoaWprbABzPyKEWiWtizuQcfDgPvQTy+YAycG/bvG4gYXrkA5j6sUo2GIGy+rLXmzj8lyyKQMvQOYE8B2xawM/LXTxFgRSdrUZLe0HbdEEByKJx9DIojD05Q3SoGZnbH62vHS6hoPbUnhOrJ4uHpV1rZUBgnMgokjWrAE=";
    let expired = huddle(&["token", "verify", "--secret", SECRET, "--now", "1700003600", gcm]);
    assert_eq!(expired.status.code(), Some(1));
    assert!(
        stderr(&expired).starts_with("error 1002078"),
        "{}",
        stderr(&expired)
    );
    assert!(stdout(&expired).is_empty());

    let tampered = gcm.replace("rAE=", "rQE=");
    let o = huddle(&[
        "token",
        "verify",
        "--secret",
        SECRET,
        "--now",
        "1700000001",
        &tampered,
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).starts_with("error 1002075"), "{}", stderr(&o));

    let o = huddle(&[
        "token",
        "verify",
        "--secret",
        SECRET,
        "--user",
        "bob",
        "--now",
        "1700000001",
        gcm,
    ]);
    assert!(stderr(&o).starts_with("error 1002079"), "{}", stderr(&o));
    let o = huddle(&[
        "token",
        "verify",
        "--secret",
        SECRET,
        "--app-id",
        "2",
        "--now",
        "1700000001",
        gcm,
    ]);
    assert!(stderr(&o).starts_with("error 1002077"), "{}", stderr(&o));
    let o = huddle(&["token", "verify", "--secret", SECRET, "03abc"]);
    assert!(stderr(&o).starts_with("error 1002074"), "{}", stderr(&o));
}

#[test]
fn new_roundtrips_and_passes_an_independent_decoder() {
    let o = huddle(&[
        "token",
        "new",
        "--app-id",
        "4242",
        "--secret",
        SECRET,
        "--user",
        "alice",
        "--ttl",
        "600",
        "--room",
        "r1",
        "--login",
        "--publish",
        "--stream",
        "s1",
        "--stream",
        "s2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let token = stdout(&o).trim().to_string();
    assert!(token.starts_with("04"));

    let v = huddle(&[
        "token", "verify", "--secret", SECRET, "--app-id", "4242", "--user", "alice", &token,
    ]);
    assert!(v.status.success(), "{}", stderr(&v));
    let claims: serde_json::Value = serde_json::from_str(stdout(&v).trim()).unwrap();
    assert_eq!(claims["app_id"], 4242);
    assert_eq!(
        claims["expire"].as_i64().unwrap() - claims["ctime"].as_i64().unwrap(),
        600
    );
    let payload: serde_json::Value = serde_json::from_str(claims["payload"].as_str().unwrap()).unwrap();
    assert_eq!(payload["room_id"], "r1");
    assert_eq!(payload["privilege"]["1"], 1);
    assert_eq!(payload["privilege"]["2"], 1);
    assert_eq!(payload["stream_id_list"], serde_json::json!(["s1", "s2"]));

    // Python's `cryptography`, from the spec alone: proves the bytes are standard Token04.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/token04_decode.py");
    let py = Command::new("python3")
        .args([script, SECRET, &token])
        .output()
        .expect("python3 runs");
    assert!(
        py.status.success(),
        "independent decoder refused: {}",
        stderr(&py)
    );
    let independent: serde_json::Value = serde_json::from_str(stdout(&py).trim()).unwrap();
    assert_eq!(independent, claims);
}

#[test]
fn new_refuses_bad_input() {
    let o = huddle(&["token", "new", "--app-id", "0", "--secret", SECRET, "--user", "a"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).starts_with("error "), "{}", stderr(&o));
    let o = huddle(&[
        "token", "new", "--app-id", "1", "--secret", "short", "--user", "a",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let o = huddle(&[
        "token", "new", "--app-id", "1", "--secret", SECRET, "--user", "a", "--ttl", "0",
    ]);
    assert_eq!(o.status.code(), Some(1));
}

/// Every token of the project's own vector set (all four JSON styles of the official generators,
/// both ciphers, non-ASCII user IDs, privilege payloads), and every negative case, through the CLI.
#[test]
fn verify_handles_every_json_style_and_every_negative_vector() {
    let data: serde_json::Value =
        serde_json::from_str(include_str!("../../huddle-token/tests/data/own-vectors.json")).unwrap();
    let mut styles = std::collections::BTreeSet::new();
    for v in data["vectors"].as_array().unwrap() {
        let now = (v["header_expire"].as_i64().unwrap() - 1).to_string();
        let o = huddle(&[
            "token",
            "verify",
            "--secret",
            v["secret"].as_str().unwrap(),
            "--now",
            &now,
            v["token"].as_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}: {}", v["id"], stderr(&o));
        let got: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
        assert_eq!(got, v["expected"], "{}", v["id"]);
        styles.insert((
            v["json_style"].as_str().unwrap().to_string(),
            v["cipher"].as_str().unwrap().to_string(),
        ));
    }
    assert!(styles.len() >= 6, "styles × ciphers covered: {styles:?}");
    for v in data["negative_vectors"].as_array().unwrap() {
        let mut args = vec![
            "token".to_string(),
            "verify".into(),
            "--secret".into(),
            v["secret"].as_str().unwrap().into(),
        ];
        if let Some(now) = v["now"].as_i64() {
            args.extend(["--now".into(), now.to_string()]);
        }
        if let Some(app) = v["app_id"].as_u64() {
            args.extend(["--app-id".into(), app.to_string()]);
        }
        if let Some(user) = v["user_id"].as_str() {
            args.extend(["--user".into(), user.into()]);
        }
        args.push(v["token"].as_str().unwrap().into());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = huddle(&args);
        assert_eq!(o.status.code(), Some(1), "{} was accepted", v["id"]);
        let want = format!("error {}", v["code"]);
        assert!(
            stderr(&o).starts_with(&want),
            "{}: want {want}, got {}",
            v["id"],
            stderr(&o)
        );
    }
}
