//! `huddle call`: one SDK engine driven from the command line, its events as JSON lines.
//!
//! Each line is one `EventHandler` callback, named in snake_case without `on_`, with the callback's
//! parameters as fields (an empty `extended_data` is left out) and `t_ms` since the command started.
//!
//! Media: the published audio comes from `--source` (a WAV file, looped, or `tone:HZ`; silence
//! without it), video from `--camera` (the test pattern or a Y4M file; no video without it); the
//! mix of the played streams is recorded with `--record`, their video with `--record-video`.
//! `--mute-mic` and `--mute-camera` join muted (the players get `remote_mic_state_update` /
//! `remote_camera_state_update` `Mute`).
//! `--sound-level-interval MS` adds the sound-level and active-speaker events.
//!
//! Standard input takes commands, one JSON object per line, each answered by a result line
//! ([`crate::commands`]; `docs/cli.md`). Standard input ending does not end the call: a script
//! that pipes a few commands in and closes its end still sees the call through to `--duration`,
//! Ctrl-C or a `quit` command, as a call started without any input does. `--quit-on-eof` asks
//! for the other behaviour.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use huddle::{
    AudioConfig, AudioDeviceType, AudioSink, AudioSource, Engine, EngineProfile, ErrorCode, Event,
    EventHandler, HuddleError, RoomStateChangedReason, SoundLevelConfig, User, UserId,
};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::commands::{self, Call, Input, Next, Output};

#[derive(clap::Args)]
pub struct CallArgs {
    /// The server's signaling address, `ws://HOST:PORT`, or `wss://HOST[:PORT]` over TLS.
    /// Repeat it to name the other servers of a deployment: the call starts on the first and
    /// moves to the next when one cannot be reached or is shutting down.
    #[arg(long, required_unless_present = "list_devices")]
    server: Vec<String>,
    /// A CA certificate (PEM) that the wss:// server's certificate may chain to, besides the
    /// system's roots: for a self-hosted server with a certificate of your own CA.
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// The AppID.
    #[arg(long, required_unless_present = "list_devices")]
    app_id: Option<u32>,
    /// The app's AppSign (64 hex characters); or log in with --token.
    #[arg(long, conflicts_with = "token", required_unless_present_any = ["token", "list_devices"])]
    app_sign: Option<String>,
    /// A Token04 token for this user.
    #[arg(long)]
    token: Option<String>,
    /// The room to log in to at start (created on first login). Without --room and --user the
    /// call waits for a `login_room` command on standard input.
    #[arg(long, requires = "user")]
    room: Option<String>,
    /// The user ID.
    #[arg(long, requires = "room")]
    user: Option<String>,
    /// Receive room_user_update events.
    #[arg(long)]
    user_status_notify: bool,
    /// Publish a stream under this ID once logged in (the login at start).
    #[arg(long, requires = "room")]
    publish: Option<String>,
    /// Play this stream once logged in (the login at start; repeatable).
    #[arg(long = "play", requires = "room")]
    play: Vec<String>,
    /// Leave after this many seconds (default: run until interrupted).
    #[arg(long)]
    duration: Option<f64>,
    /// The published audio: a WAV file (looped), `tone:HZ`, `mic` (as --mic) or `silence`
    /// (the default).
    #[arg(long, value_name = "FILE.wav|tone:HZ|mic|silence", conflicts_with = "mic")]
    source: Option<String>,
    /// Publish from the microphone (the system's default, or --mic-device).
    #[arg(long)]
    mic: bool,
    /// The microphone to use, by its ID or name as --list-devices prints them (implies --mic).
    #[arg(long, value_name = "ID|NAME", conflicts_with = "source")]
    mic_device: Option<String>,
    /// Play the mix of the played streams on the speaker (the system's default, or
    /// --speaker-device).
    #[arg(long, conflicts_with = "record")]
    speaker: bool,
    /// The speaker to use, by its ID or name as --list-devices prints them (implies --speaker).
    #[arg(long, value_name = "ID|NAME", conflicts_with = "record")]
    speaker_device: Option<String>,
    /// Print the microphones and speakers, one JSON line each, and exit.
    #[arg(long, exclusive = true)]
    list_devices: bool,
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
    /// Join with the microphone muted (`mute_microphone`): the published stream carries
    /// silence and its players are told `Mute`.
    #[arg(long)]
    mute_mic: bool,
    /// Join with the published video muted (`mute_publish_stream_video`): no video is sent.
    #[arg(long)]
    mute_camera: bool,
    /// Record the mix of the played streams (48 kHz mono WAV).
    #[arg(long, value_name = "FILE.wav")]
    record: Option<PathBuf>,
    /// Start the sound-level monitor with this interval (100–3000 ms): `captured_sound_level_update`
    /// and `remote_sound_level_update` lines at the interval, `active_speakers_changed` when the
    /// speakers change.
    #[arg(long, value_name = "MS")]
    sound_level_interval: Option<u32>,
    /// Record the video of the played stream (Y4M); with several --play, one file per stream
    /// (FILE-STREAM.y4m).
    #[arg(long, value_name = "FILE.y4m")]
    record_video: Option<PathBuf>,
    /// End the call when standard input ends (by default the call goes on without commands).
    #[arg(long)]
    quit_on_eof: bool,
}

/// The audio config of the `--audio-*` flags (errors: 1000006 for an unknown preset or a value
/// out of range).
fn audio_config(args: &CallArgs) -> Result<AudioConfig, HuddleError> {
    let preset = commands::audio_preset(args.audio_preset.as_deref().unwrap_or("standard"))?;
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
    out: Arc<Output>,
    signals: mpsc::UnboundedSender<Signal>,
}

impl EventHandler for Printer {
    fn on_event(&self, event: &Event) {
        if let Value::Object(fields) = event.to_json() {
            self.out.lock().line(fields);
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
    // The SDK's logs on stderr when RUST_LOG asks for them (stdout is the events'), e.g.
    // `RUST_LOG=huddle::media::play=trace` for every audio packet a player gets.
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init();
    }
    let result = if args.list_devices {
        list_devices().map(|()| ErrorCode::OK)
    } else {
        call(args, start)
    };
    match result {
        Ok(code) if code.is_ok() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("huddle call: error {}: {}", e.code, e.message);
            ExitCode::from(2)
        }
    }
}

/// `--list-devices`: one JSON line per device, the microphones first.
fn list_devices() -> Result<(), HuddleError> {
    let mut out = std::io::stdout().lock();
    for (device_type, name) in [
        (AudioDeviceType::Input, "input"),
        (AudioDeviceType::Output, "output"),
    ] {
        for d in huddle::audio_device_list(device_type)? {
            let line = serde_json::json!({
                "device_type": name,
                "device_id": d.device_id,
                "device_name": d.device_name,
            });
            // A closed stdout ends the listing; there is no one left to tell.
            if writeln!(out, "{line}").is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Runs the call; returns the code that ended it (0 when it ended as asked).
fn call(args: CallArgs, start: Instant) -> Result<ErrorCode, huddle::HuddleError> {
    let app_id = args.app_id.unwrap_or_default();
    let server = args.server.first().cloned().unwrap_or_default();
    let mut profile = EngineProfile::new(app_id, server);
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
    let out = Arc::new(Output::new(start, Box::new(std::io::stdout())));
    engine.set_event_handler(Arc::new(Printer {
        out: out.clone(),
        signals: tx,
    }));
    engine.enable_camera(args.camera.is_some());
    engine.mute_microphone(args.mute_mic);
    engine.mute_publish_stream_video(args.mute_camera);
    if let Some(device) = &args.mic_device {
        engine.use_audio_device(AudioDeviceType::Input, device)?;
    }
    if let Some(device) = &args.speaker_device {
        engine.use_audio_device(AudioDeviceType::Output, device)?;
    }
    if args.mic || args.mic_device.is_some() {
        engine.set_audio_source(AudioSource::Microphone)?;
    } else if let Some(spec) = &args.source {
        engine.set_audio_source(commands::audio_source(spec, true)?)?;
    }
    if args.speaker || args.speaker_device.is_some() {
        engine.set_audio_sink(AudioSink::Speaker)?;
    }
    engine.set_audio_config(audio_config(&args)?)?;
    if let Some(spec) = &args.camera {
        engine.set_video_source(commands::video_source(spec))?;
    }
    if let Some(path) = &args.record {
        engine.set_audio_sink(AudioSink::Wav(path.clone()))?;
    }
    if let Some(base) = &args.record_video {
        for stream in &args.play {
            engine.set_video_sink_y4m(stream, Some(video_path(base, stream, args.play.len())))?;
        }
    }

    if let Some(ms) = args.sound_level_interval {
        engine.start_sound_level_monitor(SoundLevelConfig::new(ms, true))?;
    }

    let mut call = Call::new(engine.handle(), args.token.clone(), args.user_status_notify);
    // --publish and --play follow the login at start only; later logins are the script's.
    let mut start_login = false;
    if let (Some(room), Some(user)) = (&args.room, &args.user) {
        call.login(room, User::new(UserId::new(user.as_str())?), None, None)?;
        start_login = true;
    }
    let (lines_tx, mut lines) = mpsc::channel::<Option<Input>>(16);
    // Blocking reads on a thread of their own: it ends with standard input, or stays blocked
    // in its read when the call ends first (the process exits with it).
    std::thread::Builder::new()
        .name("huddle-stdin".into())
        .spawn(move || {
            commands::read_lines(std::io::stdin().lock(), |line| {
                lines_tx.blocking_send(Some(line)).is_ok()
            });
            let _ = lines_tx.blocking_send(None);
        })
        .map_err(|e| HuddleError::new(ErrorCode::INTERNAL, format!("cannot read standard input: {e}")))?;
    let mut stdin_open = true;

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
                line = lines.recv(), if stdin_open => match line {
                    Some(Some(input)) => {
                        if call.handle(&input, &out) == Next::Quit {
                            return ErrorCode::OK;
                        }
                    }
                    _ => {
                        if args.quit_on_eof {
                            return ErrorCode::OK;
                        }
                        stdin_open = false;
                    }
                },
                signal = rx.recv() => match signal {
                    Some(Signal::LoggedIn) if std::mem::take(&mut start_login) => {
                        if let Some(stream) = &args.publish {
                            if let Err(e) = call.engine.start_publishing_stream(stream) {
                                eprintln!("huddle call: publish {stream}: error {}: {}", e.code, e.message);
                                return e.code;
                            }
                            call.publishing = Some(stream.clone());
                        }
                        for stream in &args.play {
                            if let Err(e) = call.engine.start_playing_stream(stream) {
                                eprintln!("huddle call: play {stream}: error {}: {}", e.code, e.message);
                                return e.code;
                            }
                            call.playing.insert(stream.clone());
                        }
                    }
                    Some(Signal::LoggedIn) => {}
                    Some(Signal::Ended(code)) => {
                        call.left();
                        return code;
                    }
                    None => return ErrorCode::OK,
                },
            }
        }
    });
    if ended.is_ok() {
        call.finish();
    }
    engine.destroy();
    Ok(ended)
}
