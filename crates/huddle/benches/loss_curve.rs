//! The loss curve of `docs/quality.md`, a benchmark (minutes long, so not a test): speech calls
//! through a real server at 0–70 % random and bursty loss with 100 ms RTT, scored with wideband
//! PESQ and STOI (see `tests/common/quality.rs`). Run by `scripts/quality.sh`:
//! `cargo bench -p huddle --bench loss_curve`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Write as _;
use std::path::PathBuf;

use common::quality::{Conditions, speech_call};

/// PESQ and STOI at 0–70 % random and bursty loss with 100 ms
/// RTT, one line of JSON per call appended to `$HUDDLE_QUALITY_OUT` (default: stderr only).
/// `HUDDLE_QUALITY_LOSSES` (percentages, comma-separated), `HUDDLE_QUALITY_MODELS` (`random`,
/// `bursty`; `clean`, `late`, `jitter` for the clean-call checks) and `HUDDLE_QUALITY_SEEDS` choose the points; `HUDDLE_QUALITY_LEG=publisher` puts
/// the loss on the publisher's uplink instead of the player's downlink, `HUDDLE_AUDIO_RED` (read
/// by the SDK) turns RED off (`0`) or sets its levels (`1,3,6`).
fn main() {
    let losses: Vec<u32> = std::env::var("HUDDLE_QUALITY_LOSSES")
        .unwrap_or_else(|_| "0,10,20,30,40,50,60,70".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let seeds: Vec<u64> = std::env::var("HUDDLE_QUALITY_SEEDS")
        .unwrap_or_else(|_| "1".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let models: Vec<String> = std::env::var("HUDDLE_QUALITY_MODELS")
        .unwrap_or_else(|_| "random,bursty".into())
        .split(',')
        .map(|s| s.trim().to_string())
        .collect();
    let out = std::env::var_os("HUDDLE_QUALITY_OUT").map(PathBuf::from);
    let red = std::env::var("HUDDLE_AUDIO_RED").unwrap_or_else(|_| "default".into());
    for &seed in &seeds {
        for model in models.iter().map(String::as_str) {
            for &loss in &losses {
                let p = f64::from(loss) / 100.0;
                let cond = match model {
                    "random" => Conditions::random(p),
                    "bursty" => Conditions::bursty(p),
                    // The clean-call checks (`scripts/quality.sh clean`): a loopback call with
                    // no impairment, one packet in a hundred (one every 2 s) 20 ms late, and
                    // ±20 ms of jitter (0-40 ms uniform), each with `p` random loss.
                    "clean" => Conditions::clean(),
                    "late" => Conditions {
                        late: 0.01,
                        late_by: std::time::Duration::from_millis(20),
                        ..Conditions::clean()
                    },
                    "jitter" => Conditions {
                        jitter: std::time::Duration::from_millis(40),
                        ..Conditions::clean()
                    },
                    other => panic!("unknown model {other}"),
                };
                let cond = Conditions { loss: p, ..cond };
                let mut score = speech_call(seed * 1000 + u64::from(loss), cond, &format!("{model}-{loss}"));
                score["model"] = model.into();
                score["red"] = red.as_str().into();
                if let Some(path) = &out {
                    let mut f = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .unwrap();
                    writeln!(f, "{score}").unwrap();
                }
            }
        }
    }
}
