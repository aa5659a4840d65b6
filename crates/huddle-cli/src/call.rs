//! `huddle call`: one SDK engine driven from the command line, its events as JSON lines.
//!
//! Each line is one `EventHandler` callback, named in snake_case without `on_`, with the callback's
//! parameters as fields (an empty `extended_data` is left out) and `t_ms` since the command started.
//!
//! Media: the published audio comes from `--source` (a WAV file, looped, or `tone:HZ`; silence
//! without it), video from `--camera` (the test pattern or a Y4M file; no video without it); the
//! mix of the played streams is recorded with `--record`, their video with `--record-video`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use huddle::{
    AudioConfig, AudioConfigPreset, AudioSink, AudioSource, Engine, EngineProfile, ErrorCode, Event,
    EventHandler, HuddleError, RoomConfig, RoomStateChangedReason, User, UserId, VideoSource,
};
use serde_json::{Value, json};
use tokio::sync::mpsc;

#[derive(clap::Args)]
pub struct CallArgs {
    /// The server's signaling address, `ws://HOST:PORT`, or `wss://HOST[:PORT]` over TLS.
    /// Repeat it to name the other servers of a deployment: the call starts on the first and
    /// moves to the next when one cannot be reached or is shutting down.
    #[arg(long, required = true)]
    server: Vec<String>,
    /// A CA certificate (PEM) that the wss:// server's certificate may chain to, besides the
    /// system's roots: for a self-hosted server with a certificate of your own CA.
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// The AppID.
    #[arg(long)]
    app_id: u32,
    /// The app's AppSign (64 hex characters); or log in with --token.
    #[arg(long, conflicts_with = "token", required_unless_present = "token")]
    app_sign: Option<String>,
    /// A Token04 token for this user.
    #[arg(long)]
    token: Option<String>,
    /// The room to log in to (created on first login).
    #[arg(long)]
    room: String,
    /// The user ID.
    #[arg(long)]
    user: String,
    /// Receive room_user_update events.
    #[arg(long)]
    user_status_notify: bool,
    /// Publish a stream under this ID once logged in.
    #[arg(long)]
    publish: Option<String>,
    /// Play this stream once logged in (repeatable).
    #[arg(long = "play")]
    play: Vec<String>,
    /// Leave after this many seconds (default: run until interrupted).
    #[arg(long)]
    duration: Option<f64>,
    /// The published audio: a WAV file (looped) or `tone:HZ` (default: silence).
    #[arg(long, value_name = "FILE.wav|tone:HZ")]
    source: Option<String>,
    /// Publish video: the test pattern (`testsrc`, the default) or a Y4M file (looped). Without
    /// this flag the call is voice only: no video is negotiated.
    #[arg(long, value_name = "testsrc|FILE.y4m", num_args = 0..=1, default_missing_value = "testsrc")]
    camera: Option<String>,
    /// The published audio's preset: `basic` (16 kbit/s), `standard` (48 kbit/s, the default),
    /// `standard-stereo` (56), `high` (128) or `high-stereo` (192), as the hosted SDKs name them.
    #[arg(long, value_name = "PRESET")]
    audio_preset: Option<String>,
    /// The published audio's bitrate on a clean network, in bit/s (instead of the preset's).
    #[arg(long, value_name = "BPS")]
    audio_bitrate: Option<u32>,
    /// The Opus FEC loss hint on a clean network, in percent (default 2 for voice).
    #[arg(long, value_name = "PERCENT")]
    audio_loss_hint: Option<u8>,
    /// Keep the audio settings fixed instead of following the receivers' reports.
    #[arg(long)]
    audio_fixed: bool,
    /// Record the mix of the played streams (48 kHz mono WAV).
    #[arg(long, value_name = "FILE.wav")]
    record: Option<PathBuf>,
    /// Record the video of the played stream (Y4M); with several --play, one file per stream
    /// (FILE-STREAM.y4m).
    #[arg(long, value_name = "FILE.y4m")]
    record_video: Option<PathBuf>,
    /// Send TEXT as a broadcast message to the room once logged in (repeatable; sent in order;
    /// each result is printed as `im_send_broadcast_message_result`).
    #[arg(long, value_name = "TEXT")]
    broadcast_message: Vec<String>,
    /// The published stream's extra info (set before the publish).
    #[arg(long, value_name = "TEXT")]
    stream_extra_info: Option<String>,
}

/// The audio source a `--source` value names.
fn audio_source(spec: &str) -> Result<AudioSource, HuddleError> {
    match spec.strip_prefix("tone:") {
        Some(hz) => {
            let hz: f64 = hz.parse().map_err(|_| {
                HuddleError::new(
                    ErrorCode::INVALID_PARAMETER,
                    format!("--source {spec}: not a frequency"),
                )
            })?;
            Ok(AudioSource::Tone { hz })
        }
        None => Ok(AudioSource::Wav {
            path: spec.into(),
            looped: true,
        }),
    }
}

/// The audio config of the `--audio-*` flags (errors: 1000006 for an unknown preset or a value
/// out of range).
fn audio_config(args: &CallArgs) -> Result<AudioConfig, HuddleError> {
    let preset = match args.audio_preset.as_deref().unwrap_or("standard") {
        "basic" => AudioConfigPreset::BasicQuality,
        "standard" => AudioConfigPreset::StandardQuality,
        "standard-stereo" => AudioConfigPreset::StandardQualityStereo,
        "high" => AudioConfigPreset::HighQuality,
        "high-stereo" => AudioConfigPreset::HighQualityStereo,
        other => {
            return Err(HuddleError::new(
                ErrorCode::INVALID_PARAMETER,
                format!("--audio-preset {other}: not basic, standard, standard-stereo, high or high-stereo"),
            ));
        }
    };
    let mut config = AudioConfig::preset(preset);
    if let Some(bitrate) = args.audio_bitrate {
        config.bitrate = bitrate;
    }
    if let Some(hint) = args.audio_loss_hint {
        config.loss_hint_percent = hint;
    }
    config.adaptive = !args.audio_fixed;
    Ok(config)
}

/// The video source a `--camera` value names.
fn video_source(spec: &str) -> VideoSource {
    if spec == "testsrc" {
        VideoSource::default()
    } else {
        VideoSource::Y4m {
            path: spec.into(),
            looped: true,
        }
    }
}

/// Where the video of `stream` is recorded: `base` itself when one stream is played, else
/// `base` with `-STREAM` before its extension.
fn video_path(base: &Path, stream: &str, streams: usize) -> PathBuf {
    if streams <= 1 {
        return base.to_path_buf();
    }
    let stem = base
        .file_stem()
        .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
    let ext = base
        .extension()
        .map_or_else(|| "y4m".into(), |e| e.to_string_lossy().into_owned());
    base.with_file_name(format!("{stem}-{stream}.{ext}"))
}

/// What the event handler tells the command's main loop.
enum Signal {
    LoggedIn,
    /// The call is over for good (login failed, kicked, reconnection gave up).
    Ended(ErrorCode),
}

/// Prints every callback as a JSON line and forwards the ones that steer the command.
struct Printer {
    start: Instant,
    out: Mutex<std::io::Stdout>,
    signals: mpsc::UnboundedSender<Signal>,
}

impl EventHandler for Printer {
    fn on_event(&self, event: &Event) {
        let mut line = serde_json::Map::new();
        line.insert("t_ms".into(), json!(self.start.elapsed().as_millis() as u64));
        if let Value::Object(fields) = event.to_json() {
            line.extend(fields);
        }
        {
            let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
            // A closed stdout (the reader went away) must not stop the call; nothing to report to.
            let _ = writeln!(out, "{}", Value::Object(line));
            let _ = out.flush();
        }
        if let Event::RoomStateChanged {
            reason, error_code, ..
        } = event
        {
            let signal = match reason {
                RoomStateChangedReason::Logined => Some(Signal::LoggedIn),
                RoomStateChangedReason::LoginFailed
                | RoomStateChangedReason::KickOut
                | RoomStateChangedReason::ReconnectFailed => Some(Signal::Ended(*error_code)),
                _ => None,
            };
            if let Some(s) = signal {
                let _ = self.signals.send(s);
            }
        }
    }
}

pub fn run(args: CallArgs) -> ExitCode {
    let start = Instant::now();
    match call(args, start) {
        Ok(code) if code.is_ok() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("huddle call: error {}: {}", e.code, e.message);
            ExitCode::from(2)
        }
    }
}

/// Runs the call; returns the code that ended it (0 when it ended as asked).
fn call(args: CallArgs, start: Instant) -> Result<ErrorCode, huddle::HuddleError> {
    let mut profile = EngineProfile::new(args.app_id, args.server[0].clone());
    profile.fallback_servers = args.server[1..].to_vec();
    profile.app_sign = args.app_sign.clone();
    if let Some(path) = &args.ca_file {
        let pem = std::fs::read_to_string(path).map_err(|e| {
            HuddleError::new(
                ErrorCode::INVALID_PARAMETER,
                format!("--ca-file {}: {e}", path.display()),
            )
        })?;
        profile.ca_cert_pem = Some(pem);
    }
    let engine = Engine::create(profile)?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    engine.set_event_handler(Arc::new(Printer {
        start,
        out: Mutex::new(std::io::stdout()),
        signals: tx,
    }));
    engine.enable_camera(args.camera.is_some());
    if let Some(spec) = &args.source {
        engine.set_audio_source(audio_source(spec)?)?;
    }
    engine.set_audio_config(audio_config(&args)?)?;
    if let Some(spec) = &args.camera {
        engine.set_video_source(video_source(spec))?;
    }
    if let Some(path) = &args.record {
        engine.set_audio_sink(AudioSink::Wav(path.clone()))?;
    }
    if let Some(base) = &args.record_video {
        for stream in &args.play {
            engine.set_video_sink_y4m(stream, Some(video_path(base, stream, args.play.len())))?;
        }
    }

    let user = User::new(UserId::new(args.user.as_str())?);
    let mut config = RoomConfig::default();
    config.is_user_status_notify = args.user_status_notify;
    config.token = args.token.clone();
    engine.login_room(&args.room, user, config)?;
    if let Some(extra) = &args.stream_extra_info {
        engine.set_stream_extra_info(extra)?;
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| huddle::HuddleError::new(ErrorCode::INTERNAL, format!("runtime: {e}")))?;
    let deadline = args.duration.map(|d| start + Duration::from_secs_f64(d.max(0.0)));
    let ended = rt.block_on(async {
        let until_deadline = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(until_deadline);
        let interrupted = crate::interrupted();
        tokio::pin!(interrupted);
        loop {
            tokio::select! {
                _ = &mut until_deadline => return ErrorCode::OK,
                _ = &mut interrupted => return ErrorCode::OK,
                signal = rx.recv() => match signal {
                    Some(Signal::LoggedIn) => {
                        if let Some(stream) = &args.publish
                            && let Err(e) = engine.start_publishing_stream(stream)
                        {
                            eprintln!("huddle call: publish {stream}: error {}: {}", e.code, e.message);
                            return e.code;
                        }
                        for stream in &args.play {
                            if let Err(e) = engine.start_playing_stream(stream) {
                                eprintln!("huddle call: play {stream}: error {}: {}", e.code, e.message);
                                return e.code;
                            }
                        }
                        for text in &args.broadcast_message {
                            if let Err(e) = engine.send_broadcast_message(&args.room, text) {
                                eprintln!("huddle call: broadcast message: error {}: {}", e.code, e.message);
                                return e.code;
                            }
                        }
                    }
                    Some(Signal::Ended(code)) => return code,
                    None => return ErrorCode::OK,
                },
            }
        }
    });
    if ended.is_ok() {
        if args.publish.is_some() {
            let _ = engine.stop_publishing_stream();
        }
        for stream in &args.play {
            let _ = engine.stop_playing_stream(stream);
        }
        let _ = engine.logout_room(&args.room);
    }
    engine.destroy();
    Ok(ended)
}
