//! `huddle serve` and `huddle call` as processes, the way scripts use them.

mod common;

use common::{
    APP_ID, APP_SIGN, NOWHERE, SECRET, Serve, call_args, huddle, loud, padded_speech, refused, serve,
    serve_app, speech_score, tempdir, tone_db, wav_samples, write_config,
};
use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

#[path = "../../huddle-server/tests/common/certs.rs"]
mod certs;

fn events(o: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line: {l:?}: {e}")))
        .collect()
}

fn has(events: &[Value], pred: impl Fn(&Value) -> bool) -> bool {
    events.iter().any(pred)
}

#[test]
fn two_calls_see_each_other() {
    let dir = tempdir("serve-call");
    let server = serve_app(&dir);
    let url = server.url.clone();

    let call = |user: &str, extra: &[&str], secs: &str| {
        huddle()
            .args(call_args(&url))
            .args([
                "--room",
                "r1",
                "--user",
                user,
                "--user-status-notify",
                "--duration",
                secs,
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // B plays before A publishes: it waits (PlayRequesting), then plays.
    let b = call("bob", &["--play", "alice-main"], "4");
    std::thread::sleep(Duration::from_millis(500));
    let a = call("alice", &["--publish", "alice-main"], "2");
    let a = a.wait_with_output().unwrap();
    let b = b.wait_with_output().unwrap();
    assert!(
        a.status.success(),
        "alice: {}",
        String::from_utf8_lossy(&a.stderr)
    );
    assert!(b.status.success(), "bob: {}", String::from_utf8_lossy(&b.stderr));
    let (ea, eb) = (events(&a), events(&b));

    for e in ea.iter().chain(&eb) {
        assert!(e["t_ms"].is_u64() && e["event"].is_string(), "{e}");
    }
    let logined =
        |e: &Value| e["event"] == "room_state_changed" && e["reason"] == "Logined" && e["error_code"] == 0;
    assert!(has(&ea, logined) && has(&eb, logined));
    assert!(has(&ea, |e| e["event"] == "publisher_state_update"
        && e["state"] == "Publishing"));
    assert!(has(&eb, |e| e["event"] == "player_state_update"
        && e["state"] == "PlayRequesting"));
    assert!(has(&eb, |e| e["event"] == "player_state_update"
        && e["state"] == "Playing"));
    assert!(has(&eb, |e| e["event"] == "room_stream_update"
        && e["update_type"] == "Add"
        && e["streams"]
            == serde_json::json!([{"user_id":"alice","user_name":"alice","stream_id":"alice-main","extra_info":""}])));
    // Alice left after 2 s: Bob sees her stream and her user go.
    assert!(has(&eb, |e| e["event"] == "room_stream_update"
        && e["update_type"] == "Delete"));
    assert!(has(&eb, |e| e["event"] == "room_user_update"
        && e["update_type"] == "Add"
        && e["users"][0]["user_id"] == "alice"));
    assert!(has(&eb, |e| e["event"] == "room_user_update"
        && e["update_type"] == "Delete"));
    assert!(has(&ea, |e| e["event"] == "room_state_changed"
        && e["reason"] == "Logout"));
}

#[test]
fn call_reports_a_refused_login_and_exits_1() {
    let dir = tempdir("serve-call");
    let server = serve_app(&dir);
    let wrong_sign = "00".repeat(32);
    let o = huddle()
        .args(["call", "--server", &server.url, "--app-id", APP_ID])
        .args([
            "--app-sign",
            &wrong_sign,
            "--room",
            "r1",
            "--user",
            "eve",
            "--duration",
            "5",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let ev = events(&o);
    assert!(has(&ev, |e| e["event"] == "room_state_changed"
        && e["reason"] == "LoginFailed"
        && e["error_code"] == 1001005));

    // --server repeated: an address where nothing listens first, then the server.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let o = huddle()
        .args(["call", "--server", &format!("ws://{dead_addr}")])
        .args(["--server", &server.url, "--app-id", APP_ID])
        .args([
            "--app-sign",
            APP_SIGN,
            "--room",
            "r1",
            "--user",
            "fay",
            "--duration",
            "0.5",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(has(&events(&o), |e| e["reason"] == "Logined"));

    // A token login works without the AppSign.
    let token = huddle()
        .args([
            "token", "new", "--app-id", APP_ID, "--secret", SECRET, "--user", "tina",
        ])
        .output()
        .unwrap();
    let token = String::from_utf8(token.stdout).unwrap();
    let o = huddle()
        .args(["call", "--server", &server.url, "--app-id", APP_ID])
        .args([
            "--token",
            token.trim(),
            "--room",
            "r1",
            "--user",
            "tina",
            "--duration",
            "0.5",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(has(&events(&o), |e| e["reason"] == "Logined"));

    // Bad input is a numbered error, not a panic.
    let o = huddle()
        .args(call_args(&server.url))
        .args(["--room", "r 1", "--user", "x", "--duration", "1"])
        .output()
        .unwrap();
    let stderr = refused(&o);
    assert!(stderr.contains("1002012"), "{stderr}");
}

#[test]
fn call_over_wss_trusts_the_ca_file() {
    let dir = tempdir("serve-call");
    let config = write_config(dir.join("huddle.toml"), "");
    let certs = certs::TestCerts::new("cli-wss");
    let server = serve(&[
        "--config",
        config.to_str().unwrap(),
        "--tls-cert",
        certs.cert_file.to_str().unwrap(),
        "--tls-key",
        certs.key_file.to_str().unwrap(),
    ]);
    assert!(
        server.banner.iter().any(|l| l.contains("signaling: wss://")),
        "{:?}",
        server.banner
    );
    let port = server.addr.rsplit(':').next().unwrap();
    let call = |extra: &[&str]| {
        huddle()
            .args(call_args(&format!("wss://localhost:{port}")))
            .args(["--room", "r1", "--user", "tess", "--duration", "0.5"])
            .args(extra)
            .output()
            .unwrap()
    };
    let o = call(&["--ca-file", certs.ca_file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(has(&events(&o), |e| e["reason"] == "Logined"));
    // Without the CA: 1002030, saying the certificate was not trusted.
    let o = call(&[]);
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stderr));
    let ev = events(&o);
    assert!(
        has(&ev, |e| e["reason"] == "LoginFailed"
            && e["error_code"] == 1002030
            && e.to_string().contains("certificate was not trusted")),
        "{ev:?}"
    );
    // A CA file that is not there, or not a certificate: a numbered error, exit code 2.
    for bad in [dir.join("missing.pem"), certs.key_file.clone()] {
        let o = call(&["--ca-file", bad.to_str().unwrap()]);
        let stderr = refused(&o);
        assert!(
            stderr.contains("1000006") && !stderr.contains("panicked"),
            "{stderr}"
        );
    }
}

#[test]
fn dev_mode_credentials_are_stable_across_restarts() {
    let dir = tempdir("serve-call");
    let data = dir.join("data");
    let data = data.to_str().unwrap();
    let creds = |s: &Serve| -> Vec<String> {
        s.banner
            .iter()
            .filter(|l| l.contains("app_id:") || l.contains("app_sign:") || l.contains("server_secret:"))
            .cloned()
            .collect()
    };
    let first = serve(&["--data-dir", data]);
    let c1 = creds(&first);
    drop(first);
    let second = serve(&["--data-dir", data]);
    let c2 = creds(&second);
    assert_eq!(c1.len(), 3, "{:?}", second.banner);
    assert_eq!(c1, c2);
}

#[test]
fn config_with_unknown_key_is_refused() {
    let dir = tempdir("serve-call");
    let path = dir.join("bad.toml");
    std::fs::write(&path, "listen = \"127.0.0.1:0\"\nlisten_port = 3\n").unwrap();
    let o = huddle()
        .args(["serve", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = refused(&o);
    assert!(stderr.contains("listen_port"), "{stderr}");
}

#[test]
fn calls_carry_audio_and_video() {
    let dir = tempdir("serve-call");
    let server = serve_app(&dir);
    let url = server.url.clone();
    let wav = dir.join("heard.wav");
    let y4m = dir.join("seen.y4m");
    let call = |user: &str, extra: &[&str], secs: &str| {
        huddle()
            .args(call_args(&url))
            .args(["--room", "media", "--user", user, "--duration", secs])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (wav_s, y4m_s) = (wav.display().to_string(), y4m.display().to_string());
    let b = call(
        "bob",
        &["--play", "alice-av", "--record", &wav_s, "--record-video", &y4m_s],
        "3.5",
    );
    std::thread::sleep(Duration::from_millis(300));
    let a = call(
        "alice",
        &[
            "--publish",
            "alice-av",
            "--source",
            "tone:500",
            "--camera",
            "testsrc",
        ],
        "2.5",
    );
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(
        a.status.success(),
        "alice: {}",
        String::from_utf8_lossy(&a.stderr)
    );
    assert!(b.status.success(), "bob: {}", String::from_utf8_lossy(&b.stderr));
    let (ea, eb) = (events(&a), events(&b));
    assert!(
        has(&ea, |e| e["event"] == "publisher_captured_audio_first_frame"),
        "{ea:?}"
    );
    assert!(
        has(&ea, |e| e["event"] == "publisher_captured_video_first_frame"),
        "{ea:?}"
    );
    assert!(
        has(&eb, |e| e["event"] == "player_recv_audio_first_frame"
            && e["stream_id"] == "alice-av"),
        "{eb:?}"
    );
    assert!(
        has(&eb, |e| e["event"] == "player_recv_video_first_frame"
            && e["stream_id"] == "alice-av"),
        "{eb:?}"
    );

    let samples = wav_samples(&wav);
    assert!(
        samples.len() > 48_000 * 2,
        "only {} samples recorded",
        samples.len()
    );
    let loud = loud(&samples);
    assert!(loud.len() > 48_000, "less than a second of tone recorded");
    assert!(
        tone_db(&loud, 500.0) > -3.0,
        "the recording is not the 500 Hz tone"
    );

    let video = std::fs::read(&y4m).unwrap();
    assert!(
        video.starts_with(b"YUV4MPEG2 W320 H240"),
        "not the expected Y4M header"
    );
    let frames = video.windows(6).filter(|w| w == b"FRAME\n").count();
    assert!(frames >= 20, "only {frames} video frames recorded");
}

#[test]
fn a_bad_source_is_refused() {
    let out = huddle()
        .args(call_args(NOWHERE))
        .args(["--room", "r", "--user", "u", "--source", "tone:abc"])
        .output()
        .unwrap();
    let stderr = refused(&out);
    assert!(stderr.contains("1000006"), "{stderr}");
}

#[test]
fn a_bad_audio_config_is_refused() {
    for bad in [
        &["--audio-preset", "loud"][..],
        &["--audio-bitrate", "1000"],
        &["--audio-loss-hint", "90"],
    ] {
        let out = huddle()
            .args(call_args(NOWHERE))
            .args(["--room", "r", "--user", "u"])
            .args(bad)
            .output()
            .unwrap();
        let stderr = refused(&out);
        assert!(stderr.contains("1000006"), "{bad:?}: {stderr}");
    }
}

#[test]
fn a_public_listener_without_apps_refuses_to_start_and_mints_nothing() {
    let dir = tempdir("serve-call");
    let data = dir.join("data");
    let o = huddle()
        .args([
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--udp-port",
            "0",
            "--tcp-port",
            "0",
            "--data-dir",
        ])
        .arg(&data)
        .output()
        .unwrap();
    let stderr = refused(&o);
    assert!(
        stderr.contains("no app is configured") && stderr.contains("--dev") && stderr.contains("[[apps]]"),
        "{stderr}"
    );
    // No dev app was generated.
    assert!(!data.join("dev-app.toml").exists());

    // A config file that forgot its [[apps]] is refused the same way.
    let path = dir.join("no-apps.toml");
    std::fs::write(&path, "listen = \"0.0.0.0:0\"\nudp_port = 0\n").unwrap();
    let o = huddle()
        .args(["serve", "--config", path.to_str().unwrap(), "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    refused(&o);
}

#[test]
fn dev_on_a_public_listener_only_when_asked() {
    let dir = tempdir("serve-call");
    let mut child = huddle()
        .args([
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--udp-port",
            "0",
            "--tcp-port",
            "0",
            "--dev",
            "--data-dir",
        ])
        .arg(dir.join("data"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines: Vec<String> = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .take_while(|l| !l.contains("server_secret:"))
        .collect();
    let _ = child.kill();
    let _ = child.wait();
    assert!(lines.iter().any(|l| l.contains("dev mode")), "{lines:?}");
}

/// A client on aiortc (`tests/aiortc_peer.py`, PyPI `aiortc`, installed by scripts/test.sh): a
/// WebRTC stack this project did not write.
fn aiortc_peer(server: &Serve, user: &str, args: &[&str], seconds: &str) -> std::process::Child {
    Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/aiortc_peer.py"))
        .args(["--url", &format!("ws://{}/ws", server.addr), "--app-id", APP_ID])
        .args(["--app-sign", APP_SIGN, "--room", "interop", "--user", user])
        .args(args)
        .args(["--duration", seconds])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 tests/aiortc_peer.py")
}

/// Speech both ways between `huddle call` and aiortc, through the server at once: each side
/// publishes the speech sample and plays the other's, and both recordings are scored.
#[test]
fn aiortc_and_huddle_call_hear_each_other() {
    let dir = tempdir("serve-call");
    let server = serve_app(&dir);
    let speech = dir.join("speech.wav");
    padded_speech(&speech);
    let speech = speech.to_str().unwrap();
    let interop_call = |user: &str, args: &[&str], seconds: &str| {
        huddle()
            .args(call_args(&server.url))
            .args(["--room", "interop", "--user", user])
            .args(args)
            .args(["--duration", seconds])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let heard_by_aiortc = dir.join("heard-by-aiortc.wav");
    let heard_by_call = dir.join("heard-by-call.wav");

    // The publishers first, so that both streams exist when the players ask. The speech loops
    // every 5.7 s; 13 s of recording hold at least one whole repetition wherever they start.
    let aiortc_pub = aiortc_peer(
        &server,
        "py-pub",
        &["--publish", "from-aiortc", "--source", speech],
        "18",
    );
    let call_pub = interop_call("rs-pub", &["--publish", "from-call", "--source", speech], "18");
    std::thread::sleep(Duration::from_millis(1500));
    let aiortc_play = aiortc_peer(
        &server,
        "py-play",
        &[
            "--play",
            "from-call",
            "--record",
            heard_by_aiortc.to_str().unwrap(),
        ],
        "13",
    );
    let call_play = interop_call(
        "rs-play",
        &[
            "--play",
            "from-aiortc",
            "--record",
            heard_by_call.to_str().unwrap(),
        ],
        "13",
    );

    let mut logs = Vec::new();
    for (name, child) in [
        ("aiortc publisher", aiortc_pub),
        ("huddle call publisher", call_pub),
        ("aiortc player", aiortc_play),
        ("huddle call player", call_play),
    ] {
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{name} failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        logs.push((name, stdout));
    }
    for (name, log) in &logs {
        if name.starts_with("aiortc") {
            assert!(log.contains("\"media_connected\""), "{name}: {log}");
        }
    }
    // Speech arrives whole both ways: every 200 ms window of the sample is found in the
    // recording, following a delay that the player's jitter buffer may move during speech (on a
    // loaded machine aiortc's Python sender bursts, and the buffer stretches its audio to absorb
    // it: 80 ms over half a second was seen). The PESQ floor catches a garbled call; the figures
    // themselves belong to scripts/quality.sh.
    for (way, heard) in [
        ("huddle call -> aiortc", &heard_by_aiortc),
        ("aiortc -> huddle call", &heard_by_call),
    ] {
        let score = speech_score(heard);
        eprintln!("interop {way}: {score}");
        let tracked = score["min_window_corr_tracked"].as_f64().unwrap();
        let pesq = score["pesq"].as_f64().unwrap();
        assert!(
            tracked >= 0.7,
            "{way}: a part of the speech is missing or garbled: {score}"
        );
        assert!(pesq >= 2.5, "{way}: PESQ {pesq:.2}: {score}");
    }
}

/// `--sound-level-interval`: the player's remote levels and the publisher's captured levels come
/// out as JSON lines, and follow the speech (voiced while it plays).
#[test]
fn sound_levels_come_out_as_json_lines() {
    let dir = tempdir("serve-call");
    let server = serve_app(&dir);
    let url = server.url.clone();
    let speech = dir.join("speech.wav");
    padded_speech(&speech);
    let call = |user: &str, extra: &[&str], secs: &str| {
        huddle()
            .args(call_args(&url))
            .args(["--room", "levels", "--user", user, "--duration", secs])
            .args(["--sound-level-interval", "200"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let b = call("bob", &["--play", "alice-main"], "8");
    std::thread::sleep(Duration::from_millis(300));
    let a = call(
        "alice",
        &["--publish", "alice-main", "--source", speech.to_str().unwrap()],
        "7",
    );
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(
        a.status.success(),
        "alice: {}",
        String::from_utf8_lossy(&a.stderr)
    );
    assert!(b.status.success(), "bob: {}", String::from_utf8_lossy(&b.stderr));
    let (ea, eb) = (events(&a), events(&b));
    let remote: Vec<&Value> = eb
        .iter()
        .filter(|e| e["event"] == "remote_sound_level_update")
        .filter_map(|e| e["sound_levels"].get("alice-main"))
        .collect();
    assert!(remote.len() > 15, "{} remote reports", remote.len());
    assert!(
        remote
            .iter()
            .any(|l| l["vad"] == true && l["sound_level"].as_f64().unwrap() > 40.0)
    );
    assert!(
        remote
            .iter()
            .any(|l| l["vad"] == false && l["sound_level"].as_f64().unwrap() < 10.0)
    );
    let captured: Vec<&Value> = ea
        .iter()
        .filter(|e| e["event"] == "captured_sound_level_update")
        .collect();
    assert!(
        captured
            .iter()
            .any(|l| l["vad"] == true && l["sound_level"].as_f64().unwrap() > 40.0)
    );
    assert!(has(&eb, |e| e["event"] == "active_speakers_changed"
        && e["stream_ids"] == serde_json::json!(["alice-main"])));
}

#[test]
fn a_bad_sound_level_interval_is_refused() {
    let out = huddle()
        .args(call_args(NOWHERE))
        .args(["--room", "r", "--user", "u", "--sound-level-interval", "50"])
        .output()
        .unwrap();
    let stderr = refused(&out);
    assert!(
        stderr.contains("1009065") && stderr.contains("100–3000 ms"),
        "{stderr}"
    );
}
