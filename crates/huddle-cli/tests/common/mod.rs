//! What the CLI's process tests share: the configured app, a `huddle serve` of it, reading
//! recorded tones, and the speech sample with its scorer.
// Each test file uses part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// The app of the tests' config files.
pub const APP_ID: &str = "424242";
pub const APP_SIGN: &str = "8f3a1c2b4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";
pub const SECRET: &str = "0123456789abcdef0123456789abcdef";

/// The samples of a 16-bit mono WAV file (the `data` chunk).
pub fn wav_samples(path: &Path) -> Vec<i16> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let at = bytes.windows(4).position(|w| w == b"data").expect("a data chunk") + 8;
    bytes[at..]
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

/// The 20 ms frames (48 kHz) of `samples` that hold something louder than quiet noise (a
/// sample above 1000), one after the other: what was heard, without the silences.
pub fn loud(samples: &[i16]) -> Vec<i16> {
    samples
        .chunks(960)
        .filter(|c| c.iter().any(|s| s.abs() > 1000))
        .flatten()
        .copied()
        .collect()
}

/// Power of `hz` (48 kHz samples) relative to the signal's power, in dB (Goertzel).
pub fn tone_db(x: &[i16], hz: f64) -> f64 {
    let coeff = 2.0 * (2.0 * std::f64::consts::PI * hz / 48_000.0).cos();
    let (mut s1, mut s2, mut energy) = (0.0f64, 0.0f64, 1e-9);
    for &v in x {
        let v = f64::from(v) / 32768.0;
        energy += v * v;
        let s = v + coeff * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    10.0 * ((s1 * s1 + s2 * s2 - coeff * s1 * s2) / (energy * x.len() as f64 / 2.0)).log10()
}

/// The speech sample (16 kHz mono) with 1.5 s of silence before it and 0.5 s after, as a WAV
/// file: `huddle call --source` loops it, and the scorer finds one whole repetition.
pub fn padded_speech(path: &Path) {
    let speech = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../huddle-media/tests/data/speech-16k.wav"
    );
    let bytes = std::fs::read(speech).unwrap();
    let at = bytes.windows(4).position(|w| w == b"data").expect("a data chunk") + 8;
    let mut pcm = vec![0u8; 16_000 * 3]; // 1.5 s of silence, 16-bit
    pcm.extend_from_slice(&bytes[at..]);
    pcm.extend(std::iter::repeat_n(0u8, 16_000)); // 0.5 s
    let mut wav = Vec::with_capacity(44 + pcm.len());
    let n = pcm.len() as u32;
    for (chunk, v) in [(&b"RIFF"[..], 36 + n), (b"WAVE", u32::MAX), (b"fmt ", 16)] {
        wav.extend_from_slice(chunk);
        if v != u32::MAX {
            wav.extend_from_slice(&v.to_le_bytes());
        }
    }
    // PCM, mono, 16 kHz, 32 000 bytes/s, 2-byte frames, 16 bits.
    for v in [1u16, 1] {
        wav.extend_from_slice(&v.to_le_bytes());
    }
    wav.extend_from_slice(&16_000u32.to_le_bytes());
    wav.extend_from_slice(&32_000u32.to_le_bytes());
    for v in [2u16, 16] {
        wav.extend_from_slice(&v.to_le_bytes());
    }
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&n.to_le_bytes());
    wav.extend_from_slice(&pcm);
    std::fs::write(path, wav).unwrap();
}

/// The scores of a recording of the speech sample (`crates/huddle/tests/audio_score.py`, which
/// aligns it first; numpy, scipy, PyPI `pesq` and `pystoi`, installed by scripts/test.sh).
pub fn speech_score(heard: &Path) -> serde_json::Value {
    let out = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../huddle/tests/audio_score.py"
        ))
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../huddle-media/tests/data/speech-16k.wav"
        ))
        .arg(heard)
        .output()
        .expect("run python3 audio_score.py");
    assert!(
        out.status.success(),
        "audio_score.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Wideband PESQ of a recording of the speech sample.
pub fn pesq(heard: &Path) -> f64 {
    let score = speech_score(heard);
    score["pesq"]
        .as_f64()
        .unwrap_or_else(|| panic!("no PESQ in {score}"))
}

/// A fresh directory for a test's files, `$TMPDIR/huddle-cli-TAG-PID-N` (N counts this process's
/// directories: the tests of a file run at once, each with its own).
pub fn tempdir(tag: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "huddle-cli-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The `huddle` binary under test.
pub fn huddle() -> Command {
    Command::new(env!("CARGO_BIN_EXE_huddle"))
}

/// The arguments of a `huddle call` of the tests' app (logged in by AppSign) through the server
/// at `url`; the caller adds the room, the user and the rest.
pub fn call_args(url: &str) -> [&str; 7] {
    [
        "call",
        "--server",
        url,
        "--app-id",
        APP_ID,
        "--app-sign",
        APP_SIGN,
    ]
}

/// The standard error of a run that must have been refused as bad input (exit code 2, before
/// anything ran); fails with it when the run was not refused.
pub fn refused(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "not refused: {stderr}");
    stderr
}

/// A server address nobody listens on: calls to it end before any login.
pub const NOWHERE: &str = "ws://127.0.0.1:9";

/// `huddle serve ARGS` on free ports, once it listens.
pub fn serve(args: &[&str]) -> Serve {
    Serve::start(serve_command().args(args))
}

/// `huddle serve` on free ports (HTTP, UDP and ICE-TCP: the tests run at once, each with its own
/// server), its stderr dropped; the caller adds its arguments (`--config FILE`, …) and
/// [`Serve::start`]s it.
pub fn serve_command() -> Command {
    let mut cmd = huddle();
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--udp-port",
        "0",
        "--tcp-port",
        "0",
    ])
    .stderr(Stdio::null());
    cmd
}

/// A `huddle serve` process; killed on drop.
pub struct Serve {
    pub child: Child,
    /// Where it listens (`127.0.0.1:PORT`).
    pub addr: String,
    /// Its signaling URL (`ws://127.0.0.1:PORT`).
    pub url: String,
    /// Its start banner, line by line.
    pub banner: Vec<String>,
}

impl Serve {
    /// Spawns `cmd` (a [`serve_command`]) and reads its banner: through the web page line, or in
    /// dev mode (no `--config`) through the app's credentials, which come after it.
    pub fn start(cmd: &mut Command) -> Serve {
        Serve::try_start(cmd)
            .unwrap_or_else(|banner| panic!("huddle serve did not start; it printed {banner:?}"))
    }

    /// [`Serve::start`]; `Err`: the banner the server printed before it ended without saying
    /// where it listens.
    pub fn try_start(cmd: &mut Command) -> Result<Serve, Vec<String>> {
        let dev = !cmd.get_args().any(|a| a == "--config");
        let mut child = cmd.stdout(Stdio::piped()).spawn().expect("start huddle serve");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut banner = Vec::new();
        let mut addr = None;
        while let Some(Ok(line)) = lines.next() {
            if let Some(a) = line.strip_prefix("huddle server listening on ") {
                addr = Some(a.trim().to_string());
            }
            let done = line.contains(if dev { "server_secret:" } else { "web page:" });
            banner.push(line);
            if done {
                break;
            }
        }
        let Some(addr) = addr else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(banner);
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(Serve {
            child,
            url: format!("ws://{addr}"),
            addr,
            banner,
        })
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes the config file `path`: the top-level `keys` (TOML lines, or none), then the tests' app.
/// Returns `path`.
pub fn write_config(path: PathBuf, keys: &str) -> PathBuf {
    std::fs::write(
        &path,
        format!(
            "{keys}\n[[apps]]\napp_id = {APP_ID}\napp_sign = \"{APP_SIGN}\"\nserver_secret = \"{SECRET}\"\n"
        ),
    )
    .unwrap();
    path
}

/// Starts `huddle serve` with a config file of the tests' app written in `dir`, and waits until
/// it listens.
pub fn serve_app(dir: &Path) -> Serve {
    Serve::start(
        serve_command()
            .arg("--config")
            .arg(write_config(dir.join("huddle.toml"), "")),
    )
}
