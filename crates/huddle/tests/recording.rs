//! Recording end to end: a real server records a real SDK publisher's speech and video (the
//! server API's `StartRecord`, or an app's `auto_record`), and the files are checked with the
//! tools people will open them with: `ffmpeg` decodes the Ogg/Opus file without a complaint and
//! its speech is scored against what was sent (`audio_score.py`, as the media tests score a
//! player's audio), `ffprobe` counts the WebM's VP8 frames and shows the gap that a media outage
//! of the publisher left in the Ogg granule positions. The recording state is read from the
//! server API (`DescribeRecordStatus`) and from the webhooks (`record_started`,
//! `record_stopped`, `record_failed`). `ffmpeg` (Debian's package) and the Python scorer are
//! installed by `scripts/test.sh`.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::netsim::Net;
use common::quality::{padded_speech, score, tmp};
use common::*;
use huddle::{AudioSource, PublisherState, RoomConfig, VideoSource};
use huddle_server::WebhookConfig;
use serde_json::Value;

/// `hex(md5(AppId + SignatureNonce + ServerSecret + Timestamp))`, computed by Python's hashlib
/// (an implementation of its own, as an app's server would have).
fn signature(nonce: &str, timestamp: u64) -> String {
    let secret = app().server_secret.as_str().to_string();
    let text = format!("{APP_ID}{nonce}{secret}{timestamp}");
    let out = Command::new("python3")
        .args([
            "-c",
            "import hashlib,sys; print(hashlib.md5(sys.argv[1].encode()).hexdigest())",
            &text,
        ])
        .output()
        .expect("python3 runs");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A signed server API call (`GET /server-api/?Action=…`); returns the JSON answer.
fn api(addr: SocketAddr, action: &str, params: &str) -> Value {
    static NONCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let nonce = format!(
        "{:08x}{:08x}",
        std::process::id(),
        NONCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let sig = signature(&nonce, ts);
    let q = format!(
        "Action={action}&AppId={APP_ID}&SignatureNonce={nonce}&Timestamp={ts}&Signature={sig}&SignatureVersion=2.0&{params}"
    );
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    write!(
        tcp,
        "GET /server-api/?{q} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).unwrap();
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {response}"))
}

/// A webhook receiver: answers 200 to every POST and keeps the JSON bodies.
struct Hooks {
    url: String,
    events: Arc<Mutex<Vec<Value>>>,
}

impl Hooks {
    fn start() -> Hooks {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let events = Arc::new(Mutex::new(Vec::new()));
        let keep = events.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let mut reader = BufReader::new(conn);
                let mut len = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; len];
                if reader.read_exact(&mut body).is_err() {
                    continue;
                }
                if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                    keep.lock().unwrap().push(v);
                }
                let _ = reader
                    .get_mut()
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            }
        });
        Hooks { url, events }
    }

    /// Waits (at most 10 s) for an event named `name`.
    fn wait(&self, name: &str) -> Value {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(e) = self.events.lock().unwrap().iter().find(|e| e["event"] == name) {
                return e.clone();
            }
            assert!(
                Instant::now() < end,
                "no {name} webhook: {:?}",
                self.events.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Runs a tool; returns its stdout, after checking that it succeeded and said nothing on stderr
/// (at `-v error`, any line there is a complaint about the file).
fn run_quiet(tool: &str, args: &[&str]) -> String {
    let out = Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool} (Debian's ffmpeg package, scripts/test.sh) does not run: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "{tool} {args:?} complained: {stderr}"
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The Ogg packets' times (pts, duration) in seconds, as ffprobe reads them from the granules.
fn ogg_packets(path: &Path) -> Vec<(f64, f64)> {
    let p = path.to_str().unwrap();
    let csv = run_quiet(
        "ffprobe",
        &[
            "-v",
            "error",
            "-select_streams",
            "a:0",
            "-show_entries",
            "packet=pts_time,duration_time",
            "-of",
            "csv=p=0",
            p,
        ],
    );
    csv.lines()
        .filter_map(|l| {
            let (a, b) = l.split_once(',')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .collect()
}

/// Waits (at most 10 s) until the task's status is `status`; returns the description.
fn wait_status(addr: SocketAddr, task: &str, status: i64) -> Value {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let v = api(addr, "DescribeRecordStatus", &format!("TaskId={task}"));
        assert_eq!(v["Code"], 0, "{v}");
        if v["Data"]["Status"] == status {
            return v["Data"].clone();
        }
        assert!(Instant::now() < end, "status never {status}: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn file_of<'a>(data: &'a Value, format: &str) -> &'a Value {
    data["RecordFiles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["OutputFileFormat"] == format)
        .unwrap_or_else(|| panic!("no {format} file: {data}"))
}

#[test]
fn a_recorded_call_plays_in_ffmpeg_scores_and_keeps_its_gap() {
    let dir = tmp("recordings");
    let hooks = Hooks::start();
    let hook_url = hooks.url.clone();
    let net = Net::start_with(11, move |c| {
        c.record_dir = Some(dir);
        c.apps[0].webhooks.push(WebhookConfig {
            url: hook_url,
            callback_secret: None,
        });
    });
    let addr = net.server.addr();
    // The task comes first: the stream is recorded from its first packet.
    let started = api(addr, "StartRecord", "RoomId=rec");
    assert_eq!(started["Code"], 0, "{started}");
    let task = started["Data"]["TaskId"].as_str().unwrap().to_string();
    assert_eq!(wait_status(addr, &task, 1)["RecordFiles"], serde_json::json!([]));
    // A second task for the same room is refused.
    assert_eq!(api(addr, "StartRecord", "RoomId=rec")["Code"], 1009088);

    let sent = tmp("rec-sent.wav");
    padded_speech(&sent, Duration::from_millis(1_000));
    let alice_net = net.client(10);
    let (alice, mut ea) = engine_with(alice_net.profile());
    alice.enable_camera(true);
    alice
        .set_video_source(VideoSource::TestPattern {
            width: 320,
            height: 240,
            fps: 15,
        })
        .unwrap();
    alice
        .set_audio_source(AudioSource::Wav {
            path: sent.clone(),
            looped: false,
        })
        .unwrap();
    alice
        .login_room("rec", user("alice"), RoomConfig::default())
        .unwrap();
    alice.start_publishing_stream("alice-av").unwrap();
    ea.publisher("alice-av", PublisherState::Publishing);
    let hook = hooks.wait("record_started");
    assert_eq!(hook["task_id"], task.as_str());
    assert_eq!(hook["stream_id"], "alice-av");

    // The speech (about 5 s with its padding), then a second in which none of the publisher's
    // media reaches the server, then two more seconds.
    std::thread::sleep(Duration::from_millis(6_000));
    net.udp.set_outage(huddle_netsim::Scope::Ip(alice_net.ip), true);
    std::thread::sleep(Duration::from_millis(1_000));
    net.udp.set_outage(huddle_netsim::Scope::Ip(alice_net.ip), false);
    std::thread::sleep(Duration::from_millis(2_000));
    let live = wait_status(addr, &task, 2);
    assert!(file_of(&live, "ogg")["FileSize"].as_u64().unwrap() > 0, "{live}");
    alice.stop_publishing_stream().unwrap();

    // The stream ended: its recording finished its files. The task goes on for the room's next
    // streams until it is stopped.
    let end = Instant::now() + Duration::from_secs(10);
    let hook = loop {
        if let Some(e) = hooks
            .events
            .lock()
            .unwrap()
            .iter()
            .find(|e| e["event"] == "record_stopped")
        {
            break e.clone();
        }
        assert!(Instant::now() < end, "no record_stopped");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(api(addr, "StopRecord", &format!("TaskId={task}"))["Code"], 0);
    let data = wait_status(addr, &task, 3);
    eprintln!("recorded: {data}");
    assert_eq!(data["DroppedPackets"], 0, "{data}");
    let ogg = file_of(&data, "ogg");
    let webm = file_of(&data, "webm");
    let ogg_path = PathBuf::from(ogg["FilePath"].as_str().unwrap());
    let webm_path = PathBuf::from(webm["FilePath"].as_str().unwrap());
    // The webhook tells the same files, sizes and durations as the API.
    let hooked: Vec<&Value> = hook["files"].as_array().unwrap().iter().collect();
    assert_eq!(hooked.len(), 2, "{hook}");
    for f in hooked {
        let api_file = file_of(&data, f["format"].as_str().unwrap());
        assert_eq!(f["file_path"], api_file["FilePath"]);
        assert_eq!(f["file_size"], api_file["FileSize"]);
        assert_eq!(f["duration_ms"], api_file["Duration"]);
        assert_eq!(
            std::fs::metadata(f["file_path"].as_str().unwrap()).unwrap().len(),
            f["file_size"].as_u64().unwrap()
        );
    }
    let audio_ms = ogg["Duration"].as_u64().unwrap();
    assert!((8_000..10_500).contains(&audio_ms), "{data}");

    // ffmpeg decodes the Ogg/Opus without a word; the speech in it scores as the codec does.
    let decoded = tmp("rec-decoded.wav");
    run_quiet(
        "ffmpeg",
        &[
            "-v",
            "error",
            "-y",
            "-i",
            ogg_path.to_str().unwrap(),
            "-ac",
            "1",
            "-ar",
            "48000",
            decoded.to_str().unwrap(),
        ],
    );
    let s = score(&decoded);
    eprintln!("recorded speech: {s}");
    let pesq = s["pesq"].as_f64().unwrap();
    assert!(pesq >= 3.8, "wideband PESQ of the recording {pesq} < 3.8: {s}");
    assert!(s["min_window_corr"].as_f64().unwrap() >= 0.8, "{s}");

    // The outage is a gap of about a second in the packets' times (from the granule positions);
    // nothing else is.
    let packets = ogg_packets(&ogg_path);
    let gaps: Vec<f64> = packets
        .windows(2)
        .map(|w| w[1].0 - (w[0].0 + w[0].1))
        .filter(|g| *g > 0.001)
        .collect();
    eprintln!("gaps in the Ogg: {gaps:?}");
    let big: Vec<f64> = gaps.iter().copied().filter(|g| *g > 0.2).collect();
    assert_eq!(big.len(), 1, "one gap for the outage: {gaps:?}");
    assert!((0.7..1.5).contains(&big[0]), "{gaps:?}");
    // No audio was made up: the packets cover the duration less the gaps.
    let covered: f64 = packets.iter().map(|p| p.1).sum();
    let total = audio_ms as f64 / 1000.0;
    let gap_sum: f64 = gaps.iter().sum();
    assert!(
        (covered + gap_sum - total).abs() < 0.05,
        "{covered} + {gap_sum} vs {total}"
    );

    // The WebM: VP8, starting on a keyframe, every frame decodable, about 15 per second.
    let w = webm_path.to_str().unwrap();
    run_quiet("ffmpeg", &["-v", "error", "-i", w, "-f", "null", "-"]);
    let probe: Value = serde_json::from_str(&run_quiet(
        "ffprobe",
        &[
            "-v",
            "error",
            "-count_frames",
            "-show_entries",
            "stream=codec_name,width,height,nb_read_frames:format=format_name",
            "-of",
            "json",
            w,
        ],
    ))
    .unwrap();
    eprintln!("webm: {probe}");
    let stream = &probe["streams"][0];
    assert_eq!(stream["codec_name"], "vp8");
    assert_eq!(
        (stream["width"].as_u64(), stream["height"].as_u64()),
        (Some(320), Some(240))
    );
    let frames: u64 = stream["nb_read_frames"].as_str().unwrap().parse().unwrap();
    let video_s = webm["Duration"].as_u64().unwrap() as f64 / 1000.0;
    // Less the outage and the wait for the keyframe after it.
    assert!(
        frames as f64 >= (video_s - 2.0) * 15.0 * 0.8,
        "{frames} frames in {video_s} s"
    );
    let first_key = run_quiet(
        "ffprobe",
        &[
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "packet=flags",
            "-read_intervals",
            "%+#1",
            "-of",
            "csv=p=0",
            w,
        ],
    );
    assert!(
        first_key.trim().starts_with('K'),
        "the first frame is not a keyframe: {first_key}"
    );
    // Audio and video share the timeline: both start near the recording's time zero.
    let starts: Vec<f64> = [ogg_path.to_str().unwrap(), w]
        .iter()
        .map(|p| {
            run_quiet(
                "ffprobe",
                &[
                    "-v",
                    "error",
                    "-show_entries",
                    "format=start_time",
                    "-of",
                    "csv=p=0",
                    p,
                ],
            )
            .trim()
            .parse()
            .unwrap()
        })
        .collect();
    assert!(starts.iter().all(|s| (0.0..0.5).contains(s)), "{starts:?}");
}

#[test]
fn an_unwritable_directory_is_reported_and_the_call_goes_on() {
    // A directory under a regular file cannot be created, whoever runs the test (even root).
    let file = tmp("not-a-directory");
    std::fs::write(&file, b"x").unwrap();
    let hooks = Hooks::start();
    let hook_url = hooks.url.clone();
    let dir = file.join("recordings");
    let net = Net::start_with(12, move |c| {
        c.record_dir = Some(dir);
        c.apps[0].auto_record = true;
        c.apps[0].webhooks.push(WebhookConfig {
            url: hook_url,
            callback_secret: None,
        });
    });
    let addr = net.server.addr();
    // The API refuses at once: 1009085.
    let v = api(addr, "StartRecord", "RoomId=rec");
    assert_eq!(v["Code"], 1009085, "{v}");
    assert!(v["Message"].as_str().unwrap().contains("not-a-directory"), "{v}");
    // Unknown tasks: 1009087; a bad TaskId: 2.
    assert_eq!(
        api(addr, "DescribeRecordStatus", "TaskId=0123456789abcdef")["Code"],
        1009087
    );
    assert_eq!(api(addr, "StopRecord", "TaskId=no%20such")["Code"], 2);

    // auto_record: the stream's recording fails (webhook with 1009085), the publisher publishes on.
    let alice_net = net.client(10);
    let (alice, mut ea) = engine_with(alice_net.profile());
    alice.enable_camera(false);
    alice.set_audio_source(AudioSource::Tone { hz: 440.0 }).unwrap();
    alice
        .login_room("rec", user("alice"), RoomConfig::default())
        .unwrap();
    alice.start_publishing_stream("alice-voice").unwrap();
    ea.publisher("alice-voice", PublisherState::Publishing);
    let failed = hooks.wait("record_failed");
    assert_eq!(failed["code"], 1009085, "{failed}");
    assert_eq!(failed["stream_id"], "alice-voice");
    let task = failed["task_id"].as_str().unwrap();
    let data = wait_status(addr, task, 4);
    assert_eq!(data["ErrorCode"], 1009085, "{data}");
    // The call is not disturbed: a player hears the publisher.
    let (bob, mut eb) = voice_engine(&net.server, "rec", "bob");
    bob.start_playing_stream("alice-voice").unwrap();
    first_audio_frame(&mut eb, "alice-voice");
    assert!(
        !ea.drain().iter().any(|e| matches!(e, huddle::Event::PublisherStateUpdate { state, .. } if *state != PublisherState::Publishing)),
        "the publisher's state changed"
    );
}
