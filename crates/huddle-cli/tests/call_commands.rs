//! `huddle call` driven through standard input, as scripts drive it: one real `huddle serve`,
//! calls that log in, publish, play, record, log out and quit by command, with their result
//! lines, their refusals and the events they cause.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{NOWHERE, Serve, call_args, huddle, loud, serve_app, tempdir, tone_db, wav_samples};
use serde_json::{Value, json};

/// How long a test waits for a line before it fails (a guard against hangs, not a speed check).
const PATIENCE: Duration = Duration::from_secs(30);

/// A `huddle call` with piped standard input and output; killed on drop.
struct Call {
    name: &'static str,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<Value>,
    /// Every line read so far, in order.
    seen: Vec<Value>,
}

impl Drop for Call {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Call {
    fn start(name: &'static str, server: &Serve, args: &[&str]) -> Call {
        let mut child = huddle()
            .args(call_args(&server.url))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start huddle call");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let v: Value =
                    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line: {line:?}: {e}"));
                if tx.send(v).is_err() {
                    return;
                }
            }
        });
        Call {
            name,
            stdin: child.stdin.take(),
            child,
            lines,
            seen: Vec::new(),
        }
    }

    fn send_raw(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    fn send(&mut self, cmd: Value) {
        self.send_raw(&cmd.to_string());
    }

    /// The first line from now on that matches.
    fn expect(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if pred(&v) {
                        return v;
                    }
                }
                Err(_) => panic!("{}: no {what}; saw {:#?}", self.name, self.seen),
            }
        }
    }

    /// Sends a command with `id` and returns its result line.
    fn command(&mut self, mut cmd: Value, id: u64) -> Value {
        cmd["id"] = json!(id);
        self.send(cmd.clone());
        self.expect(&format!("the result of {cmd}"), |v| {
            v.get("result").is_some() && v["id"] == id
        })
    }

    /// Where in the lines seen the first match is.
    fn position(&self, pred: impl Fn(&Value) -> bool) -> Option<usize> {
        self.seen.iter().position(pred)
    }

    /// Waits for the process to end, reading its last lines; returns its exit code.
    fn wait(&mut self) -> i32 {
        while let Ok(v) = self.lines.recv_timeout(PATIENCE) {
            self.seen.push(v);
        }
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "{}: did not exit", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn event<'a>(name: &'a str, field: &'a str, value: &'a str) -> impl Fn(&Value) -> bool + 'a {
    move |v| v["event"] == name && v[field] == value
}

#[test]
fn a_call_scripted_through_stdin() {
    let dir = tempdir("cmd");
    let server = serve_app(&dir);
    let heard = dir.join("bob.wav");

    // Bob starts without a room: everything comes from his commands.
    let mut bob = Call::start("bob", &server, &[]);
    let r = bob.command(
        json!({"cmd": "start_playing_stream", "stream_id": "alice-main"}),
        1,
    );
    assert_eq!(r["error_code"], 1000002, "no room yet: {r}");
    assert!(r["message"].is_string() && r["t_ms"].is_u64());

    // Every kind of bad line gets its code; none ends the call.
    bob.send_raw("{\"cmd\": \"start_playing_stream\"");
    let r = bob.expect("the refusal of a broken line", |v| v["result"].is_null());
    assert_eq!(r["error_code"], 1009080, "{r}");
    let r = bob.command(json!({"cmd": "fly"}), 2);
    assert_eq!(
        (r["error_code"].as_u64(), r["result"].as_str()),
        (Some(1009081), Some("fly"))
    );
    assert!(
        r["message"].as_str().unwrap().contains("start_playing_stream"),
        "{r}"
    );
    let r = bob.command(json!({"cmd": "start_playing_stream"}), 3);
    assert_eq!(r["error_code"], 1009082, "{r}");
    assert!(r["message"].as_str().unwrap().contains("stream_id"), "{r}");
    let r = bob.command(json!({"cmd": "enable_camera", "enable": "yes"}), 4);
    assert_eq!(r["error_code"], 1009082, "{r}");
    bob.send_raw(&format!(
        "{{\"cmd\":\"quit\",\"pad\":\"{}\"}}",
        "x".repeat(70_000)
    ));
    let r = bob.expect("the refusal of a long line", |v| v["error_code"] == 1009083);
    assert!(r["result"].is_null(), "{r}");

    let r = bob.command(
        json!({"cmd": "set_audio_sink", "sink": heard.to_str().unwrap()}),
        5,
    );
    assert_eq!(r["error_code"], 0, "{r}");
    let r = bob.command(
        json!({"cmd": "login_room", "room": "r1", "user": "bob", "user_status_notify": true}),
        6,
    );
    assert_eq!(r["error_code"], 0, "{r}");
    bob.expect("bob's login", event("room_state_changed", "reason", "Logined"));
    let r = bob.command(
        json!({"cmd": "start_playing_stream", "stream_id": "alice-main"}),
        7,
    );
    assert_eq!(r["error_code"], 0, "{r}");
    bob.expect(
        "bob waiting for the stream",
        event("player_state_update", "state", "PlayRequesting"),
    );
    // The result line comes before the events the command causes.
    let result = bob.position(|v| v["id"] == 7).unwrap();
    let requesting = bob
        .position(event("player_state_update", "state", "PlayRequesting"))
        .unwrap();
    assert!(result < requesting, "the result after its event: {:#?}", bob.seen);

    // Alice logs in from the flags, publishes a tone by command, and closes her input.
    let mut alice = Call::start(
        "alice",
        &server,
        &["--room", "r1", "--user", "alice", "--duration", "120"],
    );
    alice.expect("alice's login", event("room_state_changed", "reason", "Logined"));
    let r = alice.command(json!({"cmd": "set_audio_source", "source": "tone:440"}), 1);
    assert_eq!(r["error_code"], 0, "{r}");
    let r = alice.command(json!({"cmd": "set_audio_config", "preset": "basic"}), 2);
    assert_eq!(r["error_code"], 0, "{r}");
    let r = alice.command(
        json!({"cmd": "start_publishing_stream", "stream_id": "alice-main"}),
        3,
    );
    assert_eq!(r["error_code"], 0, "{r}");
    alice.expect(
        "alice publishing",
        event("publisher_state_update", "state", "Publishing"),
    );
    let r = alice.command(json!({"cmd": "renew_token", "token": "not-a-token"}), 4);
    assert_eq!(r["error_code"], 0, "queued: {r}");
    let e = alice.expect("the refused renewal", |v| v["event"] == "debug_error");
    assert_eq!(e["func_name"], "renew_token", "{e}");
    drop(alice.stdin.take());

    // Bob hears her: her call goes on after her input ended.
    bob.expect("alice's audio", |v| v["event"] == "player_recv_audio_first_frame");
    bob.expect("bob playing", event("player_state_update", "state", "Playing"));
    // A quality report of the stream: a stretch of the tone is recorded by then.
    bob.expect("a quality report", |v| v["event"] == "player_quality_update");
    let r = bob.command(
        json!({"cmd": "stop_playing_stream", "stream_id": "alice-main"}),
        8,
    );
    assert_eq!(r["error_code"], 0, "{r}");
    bob.expect(
        "bob stopped playing",
        event("player_state_update", "state", "NoPlay"),
    );
    let r = bob.command(
        json!({"cmd": "start_playing_stream", "stream_id": "alice-main"}),
        9,
    );
    assert_eq!(r["error_code"], 0, "{r}");
    bob.expect(
        "bob playing again",
        event("player_state_update", "state", "Playing"),
    );
    assert!(
        alice.child.try_wait().unwrap().is_none(),
        "alice's call ended with her input"
    );

    // Bob logs out and in again by command; the call goes on in between.
    let r = bob.command(json!({"cmd": "logout"}), 10);
    assert_eq!(r["error_code"], 0, "{r}");
    bob.expect("bob's logout", event("room_state_changed", "reason", "Logout"));
    let r = bob.command(json!({"cmd": "stop_publishing_stream"}), 11);
    assert_eq!(r["error_code"], 1000002, "logged out: {r}");
    let r = bob.command(json!({"cmd": "login", "room": "r1", "user": "bob2"}), 12);
    assert_eq!(r["error_code"], 0, "{r}");
    bob.expect("bob2's login", event("room_state_changed", "reason", "Logined"));
    let r = bob.command(
        json!({"cmd": "start_publishing_stream", "stream_id": "alice-main"}),
        13,
    );
    assert_eq!(r["error_code"], 0, "{r}");
    let e = bob.expect(
        "the taken stream ID",
        event("publisher_state_update", "state", "NoPublish"),
    );
    assert_eq!(e["error_code"], 1003028, "{e}");

    let r = bob.command(json!({"cmd": "quit"}), 14);
    assert_eq!(r["error_code"], 0, "{r}");
    assert_eq!(bob.wait(), 0, "bob's exit code");
    assert!(
        bob.seen
            .iter()
            .filter(|v| v["event"] == "room_state_changed" && v["reason"] == "Logout")
            .count()
            == 2,
        "quit logs out: {:#?}",
        bob.seen
    );

    // Alice, whose input is closed, still ends on SIGTERM with a logout.
    let pid = alice.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert_eq!(alice.wait(), 0, "alice's exit code");
    assert!(
        alice
            .position(event("room_state_changed", "reason", "Logout"))
            .is_some()
    );

    // What bob recorded is her tone.
    let samples = wav_samples(&heard);
    let loud = loud(&samples);
    assert!(
        loud.len() >= 960 * 25,
        "only {} loud samples recorded",
        loud.len()
    );
    assert!(
        tone_db(&loud, 440.0) > -3.0,
        "the recording is not the 440 Hz tone"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_call_ends_with_its_input_when_asked() {
    // No server is reached: the call has no room, and its input is empty.
    let out = huddle()
        .args(call_args(NOWHERE))
        .arg("--quit-on-eof")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout.is_empty(), "{}", String::from_utf8_lossy(&out.stdout));

    // Commands before the end are answered.
    let mut child = huddle()
        .args(call_args(NOWHERE))
        .arg("--quit-on-eof")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"{\"cmd\":\"enable_camera\",\"enable\":true,\"id\":\"a\"}\n{\"cmd\":\"logout_room\",\"id\":\"b\"}")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(
        (&lines[0]["id"], &lines[0]["error_code"]),
        (&json!("a"), &json!(0))
    );
    assert_eq!(
        (&lines[1]["id"], &lines[1]["error_code"]),
        (&json!("b"), &json!(1000002))
    );
}
