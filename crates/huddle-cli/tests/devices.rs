//! `huddle call --mic`, `--speaker`, `--list-devices` and the device choice: refused with their
//! codes where there is no device, and wired through to the SDK where there is one.
//!
//! These machines have no sound card. "No device at all" is made certain on any Linux machine
//! by pointing ALSA at an empty configuration (`ALSA_CONFIG_PATH`); the machine's own
//! configuration is checked as it is; and ALSA's `null` device (which every ALSA configuration
//! defines, sound card or not) stands in for a microphone and a speaker in a real call. For
//! audio through real, paced devices, a PulseAudio server of the test's own with null sinks
//! sits behind ALSA's `pulse` device (Debian's pulseaudio, pulseaudio-utils and
//! libasound2-plugins, which scripts/test.sh installs).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{NOWHERE, call_args, huddle, loud, refused, serve_app, tempdir};
use serde_json::{Value, json};

/// `huddle ARGS` with ALSA seeing no device at all.
fn without_devices(dir: &std::path::Path, args: &[&str]) -> Output {
    let empty = dir.join("empty-alsa.conf");
    std::fs::write(&empty, "").unwrap();
    huddle()
        .args(args)
        .env("ALSA_CONFIG_PATH", &empty)
        .output()
        .unwrap()
}

#[test]
fn without_any_device_the_flags_are_refused_with_their_codes() {
    let dir = tempdir("dev-none");
    let list = without_devices(&dir, &["call", "--list-devices"]);
    assert!(list.status.success(), "{}", String::from_utf8_lossy(&list.stderr));
    assert!(
        list.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&list.stdout)
    );

    let err = refused(&without_devices(
        &dir,
        &[&call_args(NOWHERE)[..], &["--mic"]].concat(),
    ));
    assert!(err.contains("error 1009020: cannot open the microphone"), "{err}");
    let err = refused(&without_devices(
        &dir,
        &[&call_args(NOWHERE)[..], &["--speaker"]].concat(),
    ));
    assert!(err.contains("error 1009020: cannot open the speaker"), "{err}");
    let err = refused(&without_devices(
        &dir,
        &[&call_args(NOWHERE)[..], &["--mic-device", "hw:0"]].concat(),
    ));
    assert!(
        err.contains(
            "error 1009084: no microphone has the ID or name \"hw:0\" (the system offers no microphone)"
        ),
        "{err}"
    );
    let err = refused(&without_devices(
        &dir,
        &[&call_args(NOWHERE)[..], &["--source", "mic"]].concat(),
    ));
    assert!(err.contains("error 1009020"), "{err}");
    // Flags that cannot go together are refused before anything opens.
    let out = huddle()
        .args(call_args(NOWHERE))
        .args(["--speaker", "--record", "x.wav"])
        .output()
        .unwrap();
    refused(&out);
    let _ = std::fs::remove_dir_all(&dir);
}

/// This machine as it is: without a sound card (/proc/asound/cards lists none) the default
/// microphone and speaker are refused with 1009020 and a message that says why; with one,
/// the devices are listed.
#[test]
fn this_machine_answers_for_its_sound_cards() {
    let cards = std::fs::read_to_string("/proc/asound/cards").unwrap_or_default();
    let no_card = cards.trim().is_empty() || cards.contains("no soundcards");
    let list = huddle().args(["call", "--list-devices"]).output().unwrap();
    assert!(list.status.success(), "{}", String::from_utf8_lossy(&list.stderr));
    let devices: Vec<Value> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for d in &devices {
        assert!(d["device_type"] == "input" || d["device_type"] == "output", "{d}");
        assert!(d["device_id"].as_str().is_some_and(|s| !s.is_empty()), "{d}");
        assert!(d["device_name"].is_string(), "{d}");
    }
    if no_card {
        for (flag, what) in [("--mic", "microphone"), ("--speaker", "speaker")] {
            let out = huddle().args(call_args(NOWHERE)).arg(flag).output().unwrap();
            let err = refused(&out);
            assert!(
                err.contains(&format!("error 1009020: cannot open the {what}")),
                "{err}"
            );
            assert!(err.contains("this machine has no sound card"), "{err}");
        }
    } else {
        assert!(
            devices.iter().any(|d| d["device_type"] == "input"),
            "a sound card but no microphone listed: {devices:?}"
        );
    }
}

/// A call's output lines as they come.
struct Lines(mpsc::Receiver<Value>, Vec<Value>);

impl Lines {
    fn of(child: &mut Child) -> Lines {
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(serde_json::from_str::<Value>(&line).unwrap());
            }
        });
        Lines(rx, Vec::new())
    }

    /// The next line that matches (waiting at most 30 s, a guard against hangs).
    fn expect(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self
                .0
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(v) => {
                    self.1.push(v.clone());
                    if pred(&v) {
                        return v;
                    }
                }
                Err(_) => panic!("no {what}; saw {:#?}", self.1),
            }
        }
    }
}

/// ALSA's `null` device as the microphone of one call and the speaker of another, chosen by
/// name on the command line and by command: the device path from the flags to the SDK's
/// capture and playout works (the null device gives silence and is not paced, so what is
/// heard is not checked here; `serve_call.rs` checks the audio path with files).
#[test]
fn devices_chosen_by_name_carry_a_call() {
    let dir = tempdir("dev-null");
    let server = serve_app(&dir);
    let call = |user: &str, extra: &[&str]| {
        let mut child = huddle()
            .args(call_args(&server.url))
            .args(["--room", "dev", "--user", user, "--duration", "60"])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let lines = Lines::of(&mut child);
        (child, lines)
    };
    let (mut alice, mut alice_out) = call("alice", &["--mic-device", "null", "--publish", "a-mic"]);
    alice_out.expect("alice publishing from the null microphone", |v| {
        v["event"] == "publisher_state_update" && v["state"] == "Publishing"
    });
    let (mut bob, mut bob_out) = call("bob", &["--speaker-device", "alsa:null", "--play", "a-mic"]);
    bob_out.expect("bob playing to the null speaker", |v| {
        v["event"] == "player_state_update" && v["state"] == "Playing"
    });

    // By command: the speaker moves while it plays; unknown devices are refused.
    let send = |child: &mut Child, cmd: Value| {
        let stdin = child.stdin.as_mut().unwrap();
        writeln!(stdin, "{cmd}").unwrap();
        stdin.flush().unwrap();
    };
    for (id, cmd, code) in [
        (
            1,
            json!({"cmd": "use_audio_device", "device_type": "output", "device_id": "null"}),
            0,
        ),
        (
            2,
            json!({"cmd": "use_audio_device", "device_type": "output", "device_id": "no-such"}),
            1009084,
        ),
        (
            3,
            json!({"cmd": "use_audio_device", "device_type": "input", "device_id": "alsa:null"}),
            0,
        ),
        (4, json!({"cmd": "set_audio_source", "source": "mic"}), 0),
        (5, json!({"cmd": "set_audio_sink", "sink": "speaker"}), 0),
    ] {
        let mut cmd = cmd;
        cmd["id"] = json!(id);
        send(&mut bob, cmd.clone());
        let r = bob_out.expect(&format!("the result of {cmd}"), |v| v["id"] == id);
        assert_eq!(r["error_code"], code, "{cmd}: {r}");
        if code != 0 {
            assert!(r["message"].as_str().unwrap().contains("alsa:null"), "{r}");
        }
    }
    send(&mut bob, json!({"cmd": "quit", "id": 9}));
    bob_out.expect("bob's quit", |v| v["id"] == 9);
    assert!(bob.wait().unwrap().success());
    send(&mut alice, json!({"cmd": "quit"}));
    assert!(alice.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A PulseAudio server of the test's own (null sinks, paced by PulseAudio's clock, on a private
/// socket); killed on drop. ALSA reaches it through its `pulse` plugin (libasound2-plugins).
struct Pulse {
    child: Child,
    socket: PathBuf,
}

impl Drop for Pulse {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Pulse {
    /// Sinks `tone` (a 440 Hz sine plays into it) and `heard`, and their `.monitor` sources.
    fn start(dir: &std::path::Path) -> Pulse {
        let socket = dir.join("native");
        let child = Command::new("pulseaudio")
            .args(["--daemonize=no", "-n", "--exit-idle-time=-1", "--use-pid-file=no"])
            .args(["--disable-shm=yes", "--log-target=stderr"])
            .arg("-L")
            .arg(format!("module-native-protocol-unix socket={} auth-anonymous=1", socket.display()))
            .args(["-L", "module-null-sink sink_name=tone", "-L", "module-null-sink sink_name=heard"])
            .args(["-L", "module-sine sink=tone frequency=440"])
            .env("HOME", dir)
            .env("XDG_RUNTIME_DIR", dir)
            .env("PULSE_RUNTIME_PATH", dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pulseaudio (apt: pulseaudio pulseaudio-utils libasound2-plugins; scripts/test.sh installs them)");
        let pulse = Pulse { child, socket };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !pulse
            .client("pactl")
            .arg("info")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            assert!(Instant::now() < deadline, "pulseaudio did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        pulse
    }

    /// A command that talks to this server only.
    fn client(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("PULSE_SERVER", format!("unix:{}", self.socket.display()));
        c
    }
}

/// Power of `hz` relative to the whole signal, in dB (48 kHz samples).
fn tone_db(x: &[i16], hz: f64) -> f64 {
    common::tone_db(x, hz)
}

/// Real, paced devices: PulseAudio's null sinks behind ALSA's `pulse` device. Alice's
/// microphone hears a 440 Hz sine; Bob's speaker plays into another sink, whose monitor is
/// recorded: the tone went through `--mic-device`, the SDK's capture, Opus, the server, the
/// SDK's playout and `--speaker-device`.
#[test]
fn a_tone_goes_through_a_microphone_and_a_speaker() {
    let dir = tempdir("dev-pulse");
    let pulse = Pulse::start(&dir);
    let server = serve_app(&dir);
    let call = |user: &str, env: (&str, &str), extra: &[&str]| {
        let mut child = pulse
            .client(env!("CARGO_BIN_EXE_huddle"))
            .env(env.0, env.1)
            .args(call_args(&server.url))
            .args(["--room", "pulse", "--user", user, "--duration", "60"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let lines = Lines::of(&mut child);
        (child, lines)
    };
    let (mut alice, mut alice_out) = call(
        "alice",
        ("PULSE_SOURCE", "tone.monitor"),
        &["--mic-device", "pulse", "--publish", "a"],
    );
    alice_out.expect("alice publishing from the microphone", |v| {
        v["event"] == "publisher_state_update" && v["state"] == "Publishing"
    });
    let (mut bob, mut bob_out) = call(
        "bob",
        ("PULSE_SINK", "heard"),
        &["--speaker-device", "pulse", "--play", "a"],
    );
    bob_out.expect("bob playing to the speaker", |v| {
        v["event"] == "player_state_update" && v["state"] == "Playing"
    });

    // Three seconds of what the speaker played (its start may be silence, while the player's
    // jitter buffer and the devices' buffers fill).
    let mut rec = pulse
        .client("parec")
        .args([
            "-d",
            "heard.monitor",
            "--rate=48000",
            "--channels=1",
            "--format=s16le",
            "--raw",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("parec (pulseaudio-utils)");
    let mut raw = vec![0u8; 3 * 96_000];
    std::io::Read::read_exact(rec.stdout.as_mut().unwrap(), &mut raw).unwrap();
    let _ = rec.kill();
    let _ = rec.wait();
    for child in [&mut alice, &mut bob] {
        let _ = child.kill();
        let _ = child.wait();
    }
    let samples: Vec<i16> = raw
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    let loud = loud(&samples);
    assert!(
        loud.len() >= 48_000,
        "the speaker played {} loud samples in 3 s",
        loud.len()
    );
    let (at_440, at_1000) = (tone_db(&loud, 440.0), tone_db(&loud, 1000.0));
    eprintln!(
        "speaker: {:.2} s of tone in 3 s; 440 Hz at {at_440:.1} dB, 1 kHz at {at_1000:.1} dB",
        loud.len() as f64 / 48_000.0
    );
    // The tone is told by its spectrum (440 Hz some 50 dB above 1 kHz); its level through the
    // paced virtual devices varies with how the engine's clock and the device's meet (-5.5 dB on
    // a quiet machine, -15.5 dB once in CI), so the level bound only says it is clearly there.
    assert!(
        at_440 > -25.0 && at_440 - at_1000 > 30.0,
        "not the 440 Hz tone: {at_440:.1} dB at 440 Hz, {at_1000:.1} dB at 1 kHz"
    );
    drop(pulse);
    let _ = std::fs::remove_dir_all(&dir);
}
