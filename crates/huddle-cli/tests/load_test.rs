//! `huddle serve` and `huddle load-test` as processes: short runs on loopback.

mod common;

use std::process::Command;

use common::{APP_ID, APP_SIGN, Serve, huddle, serve, tempdir, write_config};
use serde_json::Value;

/// A `huddle serve` on free ports and the app to log in to it with.
struct Server {
    serve: Serve,
    app_id: String,
    app_sign: String,
}

/// A dev-mode `huddle serve` (a data directory of its own) with the app of its banner.
fn serve_dev() -> Server {
    let data = tempdir("load-test").join("data");
    let serve = serve(&["--data-dir", data.to_str().unwrap()]);
    let field = |name: &str| {
        serve
            .banner
            .iter()
            .find_map(|l| Some(l.trim().strip_prefix(name)?.trim().to_string()))
            .unwrap_or_else(|| panic!("no {name} in {:?}", serve.banner))
    };
    let (app_id, app_sign) = (field("app_id:"), field("app_sign:"));
    Server {
        serve,
        app_id,
        app_sign,
    }
}

/// A `huddle serve` with `--config` and the tests' app in it (no dev mode): a 1 s grace, so that
/// dropped sessions are gone soon after the run.
fn serve_configured() -> Server {
    let dir = tempdir("churn-test");
    let config = write_config(
        dir.join("huddle.toml"),
        &format!("data_dir = {:?}\ngrace_ms = 1000\n", dir.join("data")),
    );
    Server {
        serve: serve(&["--config", config.to_str().unwrap()]),
        app_id: APP_ID.into(),
        app_sign: APP_SIGN.into(),
    }
}

/// Runs `cmd`, which must succeed and print one JSON object on stdout; returns it and stderr.
fn json_report(cmd: &mut Command) -> (Value, String) {
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{:?}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    assert_eq!(stdout.trim().lines().count(), 1, "{stdout}");
    (serde_json::from_str(stdout.trim()).unwrap(), stderr)
}

#[test]
fn load_test_reports_json_against_huddle_serve() {
    let server = serve_dev();
    let pid = server.serve.child.id().to_string();
    let url = server.serve.url.clone();
    let started = std::time::Instant::now();
    let mut cmd = huddle();
    cmd.args(["load-test", "--server", &url, "--app-id", &server.app_id])
        .args(["--app-sign", &server.app_sign, "--server-pid", &pid])
        .args(["--publishers", "2", "--subscribers", "3", "--duration", "2"])
        .args(["--join-timeout", "10", "--json", "--strict"]);
    let (r, stderr) = json_report(&mut cmd);
    // Bounded: 2 s window, joins, drain and stop.
    assert!(started.elapsed().as_secs() < 40);
    // Progress lines on stderr.
    assert!(stderr.contains("measure"), "no progress line: {stderr}");
    assert_eq!(r["target"], "huddle");
    assert_eq!(r["mode"], "webrtc");
    assert_eq!(r["publishers_joined"], 2);
    assert_eq!(r["play_streams_joined"], 6);
    assert_eq!(r["errors"].as_array().unwrap().len(), 0, "{r}");
    // 2 publishers × 50/s to 3 subscribers each: 300 packets/s.
    let pps = r["delivered_pps"].as_f64().unwrap();
    assert!((270.0..=330.0).contains(&pps), "delivered {pps}/s");
    // Loopback: no loss (a packet or two at most on a busy machine; --strict passed means 0).
    assert!(r["loss"].as_f64().unwrap() < 0.01, "{r}");
    for key in [
        "publish_join_ms",
        "play_join_ms",
        "first_packet_ms",
        "login_first_packet_ms",
    ] {
        assert!(r[key]["p50"].as_f64().unwrap() > 0.0, "{key}: {r}");
    }
    assert_eq!(r["first_packet_ms"]["n"], 6);
    assert!(r["latency_ms"]["p50"].as_f64().unwrap() < 50.0, "{r}");
    assert!(
        r["latency_socket_ms"]["p50"].as_f64().unwrap()
            <= r["latency_ms"]["p50"].as_f64().unwrap() * 1.04 + 0.001
    );
    let s = &r["server"];
    assert_eq!(s["pid"].as_u64().unwrap().to_string(), pid);
    assert!(s["cpu_s"].as_f64().unwrap() > 0.0, "{r}");
    assert!(s["rss_kib_end"].as_u64().unwrap() > 0);
    assert!(s["cpu_us_per_packet"].as_f64().unwrap() > 0.0);
}

#[test]
fn load_test_prints_a_table_and_refuses_bad_plans() {
    let server = serve_dev();
    let url = format!("{}/ws", server.serve.url);
    let base = [
        "load-test",
        "--server",
        &url,
        "--app-id",
        &server.app_id,
        "--app-sign",
    ];
    let out = huddle()
        .args(base)
        .arg(&server.app_sign)
        .args([
            "--publishers",
            "1",
            "--subscribers",
            "1",
            "--duration",
            "1",
            "--quiet",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("target            huddle (webrtc)"), "{stdout}");
    assert!(
        stdout.contains("1 publishers x 1 subscribers = 1 play streams"),
        "{stdout}"
    );
    assert!(stdout.contains("login→1st pkt ms  p50"), "{stdout}");
    assert!(
        out.stderr.is_empty(),
        "--quiet: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Out of bounds: exit 2 before any client starts.
    for bad in [
        &["--publishers", "1001"][..],
        &["--publishers", "100", "--subscribers", "201"],
        &["--duration", "601"],
    ] {
        let out = huddle()
            .args(base)
            .arg(&server.app_sign)
            .args(bad)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
    }
    // A wrong AppSign: every login is refused (1001005); the report names it, exit 1.
    let wrong = "00".repeat(32);
    let out = huddle()
        .args(base)
        .arg(&wrong)
        .args(["--duration", "1", "--quiet", "--join-timeout", "5"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout} {stderr}");
    assert!(stdout.contains("joined            0/2 publishers"), "{stdout}");
    assert!(
        stderr.contains("no publisher joined; first error:") && stderr.contains("1001005"),
        "{stderr}"
    );
    // Only loopback (or a namespace-made address): elsewhere refused.
    let out = huddle()
        .args([
            "load-test",
            "--janus",
            "ws://192.0.2.1:8188",
            "--duration",
            "1",
            "--quiet",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("signaling URL"));
}

/// The churn soak in short: 8 clients join, publish, play, hold and leave (cleanly, by dropping
/// the socket, or mid-ICE) for 20 s. A leak detector, not a timing test: cycles complete without
/// an error, the server is empty again at the end (connections, sessions, rooms, streams, peer
/// connections, from its `/api/info`), and its RSS after the warm-up grows by less than 8 MiB.
#[test]
fn churn_soak_leaves_the_server_empty_and_its_memory_flat() {
    let server = serve_configured();
    let pid = server.serve.child.id().to_string();
    let url = server.serve.url.clone();
    let mut cmd = huddle();
    cmd.args([
        "load-test",
        "--churn",
        "--server",
        &url,
        "--app-id",
        &server.app_id,
    ])
    .args(["--app-sign", &server.app_sign, "--server-pid", &pid])
    .args([
        "--clients",
        "8",
        "--duration",
        "20s",
        "--warmup",
        "5s",
        "--seed",
        "7",
    ])
    .args(["--json", "--strict", "--quiet"]);
    let (r, _) = json_report(&mut cmd);
    println!("{r}");
    assert_eq!(r["mode"], "churn");
    assert_eq!(r["clients"], 8);
    assert_eq!(r["seed"], 7);
    let n = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("{k}: {r}"));
    assert!(n("cycles_completed") > 0, "{r}");
    assert_eq!(
        n("cycles_completed"),
        n("cycles_clean") + n("cycles_dropped") + n("cycles_mid_ice")
    );
    assert!(n("cycles_clean") > 0, "{r}");
    // Seeded: some cycles of every kind.
    assert!(n("cycles_dropped") + n("cycles_mid_ice") > 0, "{r}");
    assert_eq!(n("cycles_failed"), 0, "{r}");
    assert!(r["errors"].as_object().unwrap().is_empty(), "{r}");
    assert!(n("plays_with_media") > 0, "{r}");
    assert!(n("packets_received") > 0, "{r}");
    // Back to empty.
    let live = &r["live_end"];
    for k in [
        "connections",
        "sessions",
        "detached",
        "rooms",
        "streams",
        "peer_connections",
    ] {
        assert_eq!(live[k], 0, "{k} left at the end: {r}");
    }
    assert!(r["empty_after_s"].as_f64().is_some(), "{r}");
    // Memory: sampled each second, flat (loosely) after the warm-up.
    let m = &r["memory"];
    assert_eq!(m["pid"].as_u64().unwrap().to_string(), pid);
    let kib = |k: &str| m[k].as_u64().unwrap_or_else(|| panic!("{k}: {m}"));
    assert!(kib("rss_kib_start") > 0 && kib("rss_kib_end") > 0);
    assert!(m["samples_after_warmup"].as_u64().unwrap() >= 5, "{m}");
    let growth = kib("rss_kib_max_after_warmup").saturating_sub(kib("rss_kib_warmup_end"));
    assert!(growth < 8 * 1024, "RSS grew {growth} KiB after the warm-up: {m}");
}
