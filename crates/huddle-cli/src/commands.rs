//! `huddle call`'s commands: one JSON object per line on standard input, one result line on
//! standard output for each (`docs/cli.md` lists every command with its fields).
//!
//! A command is `{"cmd":"NAME", ...fields}` with an optional `id` (any JSON value) that comes
//! back in its result line, so that a script can match answers to questions:
//!
//! ```text
//! → {"cmd":"start_playing_stream","stream_id":"s1","id":7}
//! ← {"t_ms":1520,"result":"start_playing_stream","id":7,"error_code":0}
//! ```
//!
//! A refusal carries the code and a message: 1009080 for a line that is not one JSON object,
//! 1009081 for an unknown command, 1009082 for a field missing, of the wrong type or not of the
//! command, 1009083 for a line over [`MAX_LINE`]; and the SDK's own code when the engine refuses
//! the call (1000002 when no room is logged in, …). No input ends the call but `quit`.
//!
//! The result line is written before any event the command causes: the command runs while the
//! output is locked, and the SDK's event thread waits for that lock to print.
//!
//! # Adding a command
//!
//! One variant in [`Command`] (its name in snake_case is the `cmd`; its fields are the JSON
//! fields, `Option` or `#[serde(default)]` for optional ones) and one arm in [`Call::execute`].
//! Nothing else: parsing, unknown-field and type checks, `id` echo and the result line come
//! from the enum. Then its row in `docs/cli.md` (a test checks that every command has one).

use std::collections::BTreeSet;
use std::io::{BufRead, Write};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use huddle::{
    AudioConfig, AudioDeviceType, AudioSink, AudioSource, EngineHandle, ErrorCode, HuddleError, RoomConfig,
    User, UserId, UserName, VideoSource,
};
use serde::Deserialize;
use serde_json::{Map, Value, json};

/// The longest command line read (64 KiB); a longer one is skipped whole and refused with
/// 1009083, so that a runaway writer cannot make the call buffer without bound.
pub(crate) const MAX_LINE: usize = 64 * 1024;

/// Every command, named by its `cmd` (the variant in snake_case). Unknown fields are refused.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum Command {
    /// Log in to a room as a user (the call logs in at start when given `--room` and `--user`).
    /// `token` defaults to `--token`; `user_status_notify` to `--user-status-notify`.
    #[serde(alias = "login")]
    LoginRoom {
        room: String,
        user: String,
        user_name: Option<String>,
        token: Option<String>,
        user_status_notify: Option<bool>,
    },
    /// Leave the room (default: the one logged in). The call goes on, logged out.
    #[serde(alias = "logout")]
    LogoutRoom { room: Option<String> },
    /// Publish a stream.
    StartPublishingStream { stream_id: String },
    /// Stop publishing.
    StopPublishingStream {},
    /// Play a stream.
    StartPlayingStream { stream_id: String },
    /// Stop playing a stream.
    StopPlayingStream { stream_id: String },
    /// Turn the camera on or off, for the connections started after it.
    EnableCamera { enable: bool },
    /// The published audio's encoder settings: a preset (default: the settings now), then the
    /// fields given.
    SetAudioConfig {
        preset: Option<String>,
        bitrate: Option<u32>,
        loss_hint_percent: Option<u8>,
        adaptive: Option<bool>,
    },
    /// A new token for the room (default: the one logged in).
    RenewToken { token: String, room: Option<String> },
    /// Where the published audio comes from, as `--source` names it: `silence`, `tone:HZ`,
    /// `mic`, or a WAV file (looped unless `looped` is false). Publish again to apply it.
    SetAudioSource { source: String, looped: Option<bool> },
    /// Where the mix of the played streams goes: `discard`, `speaker`, or a WAV file to record.
    SetAudioSink { sink: String },
    /// Mute or unmute the microphone: the published audio is silence and the players are told
    /// (`remote_mic_state_update` Mute / Open).
    MuteMicrophone { mute: bool },
    /// Mute or unmute the speaker: the mix written to the sink is silence.
    MuteSpeaker { mute: bool },
    /// Stop or resume sending the published stream's audio (silence is sent instead).
    MutePublishStreamAudio { mute: bool },
    /// Stop or resume sending the published stream's video.
    MutePublishStreamVideo { mute: bool },
    /// Stop or resume receiving a played stream's audio (the server stops sending it).
    MutePlayStreamAudio { stream_id: String, mute: bool },
    /// Stop or resume receiving a played stream's video.
    MutePlayStreamVideo { stream_id: String, mute: bool },
    /// A broadcast message to the room (default: the one logged in); the result line has the
    /// `seq` that `im_send_broadcast_message_result` carries.
    SendBroadcastMessage { message: String, room: Option<String> },
    /// A barrage message to the room; the result line has the `seq` of
    /// `im_send_barrage_message_result`.
    SendBarrageMessage { message: String, room: Option<String> },
    /// A custom command to `to_users` of the room (everyone else when empty); the result line
    /// has the `seq` of `im_send_custom_command_result`.
    #[serde(rename = "send_custom_command")]
    SendCustom {
        command: String,
        #[serde(default)]
        to_users: Vec<String>,
        room: Option<String>,
    },
    /// The published stream's extra info; the result line has the `seq` of
    /// `publisher_set_stream_extra_info_result`.
    SetStreamExtraInfo { extra_info: String },
    /// The room's extra info under `key`; the result line has the `seq` of
    /// `room_set_room_extra_info_result`.
    SetRoomExtraInfo {
        key: String,
        value: String,
        room: Option<String>,
    },
    /// Where the published video comes from when the camera is on, as `--camera` names it:
    /// `testsrc` or a Y4M file (looped). Publish again to apply it.
    SetVideoSource { source: String },
    /// Record the video of a played stream into a Y4M file (`path` absent or null: stop), from
    /// its next connection on.
    SetVideoSinkY4m { stream_id: String, path: Option<String> },
    /// Choose the microphone (`input`) or speaker (`output`) by its ID or name
    /// (`--list-devices`); an empty `device_id` goes back to the system's default.
    UseAudioDevice {
        device_type: DeviceTypeName,
        device_id: String,
    },
    /// Start (or reconfigure) the sound-level monitor: `millisecond` 100–3000 (default 100;
    /// 1009065 outside), `enable_vad` (default true). Its events come out as lines
    /// (`captured_sound_level_update`, `remote_sound_level_update`, `active_speakers_changed`).
    StartSoundLevelMonitor {
        millisecond: Option<u32>,
        enable_vad: Option<bool>,
    },
    /// Stop the sound-level monitor.
    StopSoundLevelMonitor {},
    /// End the call: stop publishing and playing, log out, exit 0.
    Quit {},
}

/// `input` or `output`, as in `use_audio_device`.
#[derive(Debug, Deserialize, PartialEq, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub(crate) enum DeviceTypeName {
    Input,
    Output,
}

impl From<DeviceTypeName> for AudioDeviceType {
    fn from(t: DeviceTypeName) -> Self {
        match t {
            DeviceTypeName::Input => AudioDeviceType::Input,
            DeviceTypeName::Output => AudioDeviceType::Output,
        }
    }
}

/// What a command asks of the call's main loop beyond its result line.
#[derive(Debug, PartialEq)]
pub(crate) enum Next {
    Continue,
    Quit,
}

/// A command line read from standard input.
#[derive(Debug, PartialEq)]
pub(crate) enum Input {
    Line(String),
    /// A line over [`MAX_LINE`], skipped.
    TooLong,
    /// A line that is not UTF-8.
    NotUtf8,
}

/// A parsed line: its `id` (echoed), its command name (if it has one) and the command or the
/// refusal.
pub(crate) struct Parsed {
    pub(crate) id: Option<Value>,
    pub(crate) name: Option<String>,
    pub(crate) command: Result<Command, HuddleError>,
}

/// Parses one line; never fails as a whole: a bad line is a [`Parsed`] with its refusal.
pub(crate) fn parse(input: &Input) -> Parsed {
    let refuse = |code, message: String| Parsed {
        id: None,
        name: None,
        command: Err(HuddleError::new(code, message)),
    };
    let line = match input {
        Input::Line(line) => line,
        Input::TooLong => {
            return refuse(
                ErrorCode::COMMAND_TOO_LONG,
                format!("the line is longer than {} bytes; it was skipped", MAX_LINE),
            );
        }
        Input::NotUtf8 => return refuse(ErrorCode::COMMAND_MALFORMED, "the line is not UTF-8".into()),
    };
    let mut object = match serde_json::from_str::<Value>(line) {
        Ok(Value::Object(o)) => o,
        Ok(other) => {
            let kind = match other {
                Value::Null => "null",
                Value::Bool(_) => "a boolean",
                Value::Number(_) => "a number",
                Value::String(_) => "a string",
                Value::Array(_) => "an array",
                Value::Object(_) => unreachable!("matched above"),
            };
            return refuse(
                ErrorCode::COMMAND_MALFORMED,
                format!("the line is {kind}, not a JSON object such as {{\"cmd\":\"quit\"}}"),
            );
        }
        Err(e) => {
            return refuse(
                ErrorCode::COMMAND_MALFORMED,
                format!(
                    "the line is not JSON (column {}: {})",
                    e.column(),
                    json_problem(&e)
                ),
            );
        }
    };
    let id = object.remove("id");
    let name = match object.get("cmd") {
        Some(Value::String(s)) => s.clone(),
        _ => {
            return Parsed {
                id,
                name: None,
                command: Err(HuddleError::new(
                    ErrorCode::COMMAND_UNKNOWN,
                    format!(
                        "the line has no \"cmd\" string naming the command; commands: {}",
                        command_names().join(", ")
                    ),
                )),
            };
        }
    };
    let command = if is_command(&name) {
        Command::deserialize(Value::Object(object)).map_err(|e| {
            HuddleError::new(
                ErrorCode::COMMAND_FIELD_INVALID,
                format!("{name}: {}", field_problem(&e)),
            )
        })
    } else {
        Err(HuddleError::new(
            ErrorCode::COMMAND_UNKNOWN,
            format!("no command {name:?}; commands: {}", command_names().join(", ")),
        ))
    };
    Parsed {
        id,
        name: Some(name),
        command,
    }
}

/// What is wrong with a line that is not JSON, in a few words.
fn json_problem(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Eof => "it ends too early",
        _ => "unexpected character",
    }
}

/// What is wrong with a command's fields: serde's sentence (which names the field and the
/// type it wanted) without its position, which means nothing for a `Value`.
fn field_problem(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.find(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// The command names, as the enum's derive knows them.
///
/// Written by hand because serde keeps the list private: a probe deserializer offers a
/// `cmd` that is no command, and the derive answers through `Error::unknown_variant` with the
/// names it expects. This way adding a variant is all it takes to add a command.
fn command_names() -> Vec<&'static str> {
    match Command::deserialize(probe::Tag("\0")) {
        Err(probe::Error::Variants(names)) => names.to_vec(),
        _ => Vec::new(),
    }
}

/// Whether `name` is a command (or the alias of one).
fn is_command(name: &str) -> bool {
    !matches!(
        Command::deserialize(probe::Tag(name)),
        Err(probe::Error::Variants(_))
    )
}

mod probe {
    //! A deserializer that presents `{"cmd": NAME}` and records whether the tag was refused.
    use serde::de::{self, IntoDeserializer, MapAccess, Visitor};
    use std::fmt;

    #[derive(Debug)]
    pub(super) enum Error {
        /// The tag names no variant; these are the variants.
        Variants(&'static [&'static str]),
        Other,
    }

    impl fmt::Display for Error {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("probe")
        }
    }

    impl std::error::Error for Error {}

    impl de::Error for Error {
        fn custom<T: fmt::Display>(_: T) -> Self {
            Error::Other
        }
        fn unknown_variant(_: &str, expected: &'static [&'static str]) -> Self {
            Error::Variants(expected)
        }
    }

    pub(super) struct Tag<'a>(pub(super) &'a str);

    impl<'de, 'a> de::Deserializer<'de> for Tag<'a> {
        type Error = Error;
        fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            visitor.visit_map(OneEntry(Some(self.0)))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map struct enum
            identifier ignored_any
        }
    }

    struct OneEntry<'a>(Option<&'a str>);

    impl<'de, 'a> MapAccess<'de> for OneEntry<'a> {
        type Error = Error;
        fn next_key_seed<K: de::DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Error> {
            match self.0 {
                Some(_) => seed.deserialize("cmd".into_deserializer()).map(Some),
                None => Ok(None),
            }
        }
        fn next_value_seed<V: de::DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
            let tag = self.0.take().unwrap_or_default();
            seed.deserialize(tag.into_deserializer())
        }
    }
}

/// Standard output, shared by the event lines and the result lines; a line is written whole.
pub(crate) struct Output {
    start: Instant,
    out: Mutex<Box<dyn Write + Send>>,
}

impl Output {
    pub(crate) fn new(start: Instant, out: Box<dyn Write + Send>) -> Output {
        Output {
            start,
            out: Mutex::new(out),
        }
    }

    /// Holds the output: nothing else is printed until the guard is dropped.
    pub(crate) fn lock(&self) -> OutputGuard<'_> {
        OutputGuard {
            start: self.start,
            out: self.out.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }
}

pub(crate) struct OutputGuard<'a> {
    start: Instant,
    out: MutexGuard<'a, Box<dyn Write + Send>>,
}

impl OutputGuard<'_> {
    /// Writes `fields` as one line, after `t_ms`.
    pub(crate) fn line(&mut self, fields: Map<String, Value>) {
        let mut line = Map::new();
        line.insert("t_ms".into(), json!(self.start.elapsed().as_millis() as u64));
        line.extend(fields);
        // A closed stdout (the reader went away) must not stop the call; nothing to report to.
        let _ = writeln!(self.out, "{}", Value::Object(line));
        let _ = self.out.flush();
    }
}

/// The result line of a command.
pub(crate) fn result_line(
    parsed_id: Option<Value>,
    name: Option<String>,
    outcome: &Result<(), HuddleError>,
) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("result".into(), name.map_or(Value::Null, Value::String));
    if let Some(id) = parsed_id {
        m.insert("id".into(), id);
    }
    match outcome {
        Ok(()) => {
            m.insert("error_code".into(), json!(0));
        }
        Err(e) => {
            m.insert("error_code".into(), json!(e.code.as_u32()));
            m.insert("message".into(), json!(e.message));
        }
    }
    m
}

/// The call as the commands see and change it: the engine and what it is doing, so that the
/// end of the call stops what runs and logs out of the room it is in.
pub(crate) struct Call {
    pub(crate) engine: EngineHandle,
    /// `--token`, for logins that give none.
    pub(crate) token: Option<String>,
    /// `--user-status-notify`, for logins that do not say.
    pub(crate) user_status_notify: bool,
    /// The room logged in (or logging in).
    pub(crate) room: Option<String>,
    pub(crate) publishing: Option<String>,
    pub(crate) playing: BTreeSet<String>,
    /// The `seq` the last command's result event will carry (messages and extra info), for
    /// its result line.
    pub(crate) seq: Option<u64>,
}

impl Call {
    pub(crate) fn new(engine: EngineHandle, token: Option<String>, user_status_notify: bool) -> Call {
        Call {
            engine,
            token,
            user_status_notify,
            room: None,
            publishing: None,
            playing: BTreeSet::new(),
            seq: None,
        }
    }

    /// Reads, runs and answers one input line; the result line is written before any event
    /// the command causes.
    pub(crate) fn handle(&mut self, input: &Input, out: &Output) -> Next {
        let parsed = parse(input);
        let mut guard = out.lock();
        let (outcome, next) = match parsed.command {
            Ok(cmd) => match self.execute(cmd) {
                Ok(next) => (Ok(()), next),
                Err(e) => (Err(e), Next::Continue),
            },
            Err(e) => (Err(e), Next::Continue),
        };
        let mut line = result_line(parsed.id, parsed.name, &outcome);
        if let Some(seq) = self.seq.take()
            && outcome.is_ok()
        {
            line.insert("seq".into(), json!(seq));
        }
        guard.line(line);
        next
    }

    /// Runs one command.
    pub(crate) fn execute(&mut self, cmd: Command) -> Result<Next, HuddleError> {
        let engine = self.engine.clone();
        match cmd {
            Command::LoginRoom {
                room,
                user,
                user_name,
                token,
                user_status_notify,
            } => {
                let mut user = User::new(UserId::new(user.as_str())?);
                if let Some(name) = user_name {
                    user.user_name = UserName::new(name.as_str())?;
                }
                self.login(&room, user, token, user_status_notify)?;
            }
            Command::LogoutRoom { room } => {
                let room = self.room_or(room)?;
                engine.logout_room(&room)?;
                self.left();
            }
            Command::StartPublishingStream { stream_id } => {
                engine.start_publishing_stream(&stream_id)?;
                self.publishing = Some(stream_id);
            }
            Command::StopPublishingStream {} => {
                engine.stop_publishing_stream()?;
                self.publishing = None;
            }
            Command::StartPlayingStream { stream_id } => {
                engine.start_playing_stream(&stream_id)?;
                self.playing.insert(stream_id);
            }
            Command::StopPlayingStream { stream_id } => {
                engine.stop_playing_stream(&stream_id)?;
                self.playing.remove(&stream_id);
            }
            Command::EnableCamera { enable } => engine.enable_camera(enable),
            Command::SetAudioConfig {
                preset,
                bitrate,
                loss_hint_percent,
                adaptive,
            } => {
                let mut config = match preset {
                    Some(p) => AudioConfig::preset(audio_preset(&p)?),
                    None => engine.audio_config(),
                };
                if let Some(b) = bitrate {
                    config.bitrate = b;
                }
                if let Some(h) = loss_hint_percent {
                    config.loss_hint_percent = h;
                }
                if let Some(a) = adaptive {
                    config.adaptive = a;
                }
                engine.set_audio_config(config)?;
            }
            Command::RenewToken { token, room } => {
                let room = self.room_or(room)?;
                engine.renew_token(&room, &token)?;
            }
            Command::SetAudioSource { source, looped } => {
                engine.set_audio_source(audio_source(&source, looped.unwrap_or(true))?)?
            }
            Command::SetAudioSink { sink } => engine.set_audio_sink(audio_sink(&sink))?,
            Command::MuteMicrophone { mute } => engine.mute_microphone(mute),
            Command::MuteSpeaker { mute } => engine.mute_speaker(mute),
            Command::MutePublishStreamAudio { mute } => engine.mute_publish_stream_audio(mute),
            Command::MutePublishStreamVideo { mute } => engine.mute_publish_stream_video(mute),
            Command::MutePlayStreamAudio { stream_id, mute } => {
                engine.mute_play_stream(&stream_id, false, mute)?
            }
            Command::MutePlayStreamVideo { stream_id, mute } => {
                engine.mute_play_stream(&stream_id, true, mute)?
            }
            Command::SendBroadcastMessage { message, room } => {
                let room = self.room_or(room)?;
                self.seq = Some(engine.send_broadcast_message(&room, &message)?);
            }
            Command::SendBarrageMessage { message, room } => {
                let room = self.room_or(room)?;
                self.seq = Some(engine.send_barrage_message(&room, &message)?);
            }
            Command::SendCustom {
                command,
                to_users,
                room,
            } => {
                let room = self.room_or(room)?;
                let to: Vec<&str> = to_users.iter().map(String::as_str).collect();
                self.seq = Some(engine.send_custom_command(&room, &command, &to)?);
            }
            Command::SetStreamExtraInfo { extra_info } => {
                self.seq = Some(engine.set_stream_extra_info(&extra_info)?);
            }
            Command::SetRoomExtraInfo { key, value, room } => {
                let room = self.room_or(room)?;
                self.seq = Some(engine.set_room_extra_info(&room, &key, &value)?);
            }
            Command::SetVideoSource { source } => engine.set_video_source(video_source(&source))?,
            Command::SetVideoSinkY4m { stream_id, path } => {
                engine.set_video_sink_y4m(&stream_id, path.map(Into::into))?
            }
            Command::UseAudioDevice {
                device_type,
                device_id,
            } => engine.use_audio_device(device_type.into(), &device_id)?,
            Command::StartSoundLevelMonitor {
                millisecond,
                enable_vad,
            } => {
                let d = huddle::SoundLevelConfig::default();
                engine.start_sound_level_monitor(huddle::SoundLevelConfig::new(
                    millisecond.unwrap_or(d.millisecond),
                    enable_vad.unwrap_or(d.enable_vad),
                ))?
            }
            Command::StopSoundLevelMonitor {} => engine.stop_sound_level_monitor(),
            Command::Quit {} => return Ok(Next::Quit),
        }
        Ok(Next::Continue)
    }

    /// Logs in to `room` (the login at start and the `login_room` command).
    pub(crate) fn login(
        &mut self,
        room: &str,
        user: User,
        token: Option<String>,
        user_status_notify: Option<bool>,
    ) -> Result<(), HuddleError> {
        let mut config = RoomConfig::default();
        config.is_user_status_notify = user_status_notify.unwrap_or(self.user_status_notify);
        config.token = token.or_else(|| self.token.clone());
        self.engine.login_room(room, user, config)?;
        self.room = Some(room.to_string());
        Ok(())
    }

    /// The room is left (logged out, kicked out, or given up on): nothing runs any more.
    pub(crate) fn left(&mut self) {
        self.room = None;
        self.publishing = None;
        self.playing.clear();
    }

    /// Stops what runs and logs out, at the end of a call that ended as asked.
    pub(crate) fn finish(&mut self) {
        if let Some(room) = self.room.clone() {
            if self.publishing.is_some() {
                let _ = self.engine.stop_publishing_stream();
            }
            for stream in &self.playing {
                let _ = self.engine.stop_playing_stream(stream);
            }
            let _ = self.engine.logout_room(&room);
        }
        self.left();
    }

    fn room_or(&self, room: Option<String>) -> Result<String, HuddleError> {
        room.or_else(|| self.room.clone())
            .ok_or_else(|| HuddleError::new(ErrorCode::NOT_LOGGED_IN, "not logged in to a room"))
    }
}

/// The preset an `--audio-preset` value or a `set_audio_config` `preset` names (1000006 for
/// another).
pub(crate) fn audio_preset(name: &str) -> Result<huddle::AudioConfigPreset, HuddleError> {
    use huddle::AudioConfigPreset as P;
    Ok(match name {
        "basic" => P::BasicQuality,
        "standard" => P::StandardQuality,
        "standard-stereo" => P::StandardQualityStereo,
        "high" => P::HighQuality,
        "high-stereo" => P::HighQualityStereo,
        other => {
            return Err(HuddleError::new(
                ErrorCode::INVALID_PARAMETER,
                format!("audio preset {other:?}: not basic, standard, standard-stereo, high or high-stereo"),
            ));
        }
    })
}

/// The audio source a `--source` value or a `set_audio_source` `source` names: `silence`,
/// `tone:HZ`, `mic` (the microphone chosen with `--mic-device` / `use_audio_device`, or the
/// system's default), or a WAV file.
pub(crate) fn audio_source(spec: &str, looped: bool) -> Result<AudioSource, HuddleError> {
    if let Some(hz) = spec.strip_prefix("tone:") {
        let hz: f64 = hz.parse().map_err(|_| {
            HuddleError::new(
                ErrorCode::INVALID_PARAMETER,
                format!("audio source {spec:?}: not a frequency"),
            )
        })?;
        return Ok(AudioSource::Tone { hz });
    }
    Ok(match spec {
        "silence" => AudioSource::Silence,
        "mic" => AudioSource::Microphone,
        path => AudioSource::Wav {
            path: path.into(),
            looped,
        },
    })
}

/// The video source a `--camera` value or a `set_video_source` `source` names.
pub(crate) fn video_source(spec: &str) -> VideoSource {
    if spec == "testsrc" {
        VideoSource::default()
    } else {
        VideoSource::Y4m {
            path: spec.into(),
            looped: true,
        }
    }
}

/// The audio sink a `set_audio_sink` `sink` names: `discard`, `speaker`, or a WAV file.
pub(crate) fn audio_sink(spec: &str) -> AudioSink {
    match spec {
        "discard" => AudioSink::Discard,
        "speaker" => AudioSink::Speaker,
        path => AudioSink::Wav(path.into()),
    }
}

/// Reads standard input (or any reader) line by line into `tx` until it ends or the receiver
/// is gone. Lines are bounded by [`MAX_LINE`]; blank lines are skipped.
pub(crate) fn read_lines(mut reader: impl BufRead, mut send: impl FnMut(Input) -> bool) {
    let mut line: Vec<u8> = Vec::new();
    let mut too_long = false;
    loop {
        let (done, used) = match reader.fill_buf() {
            Ok([]) => (true, 0),
            Ok(buf) => match buf.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    if !too_long && line.len() + i <= MAX_LINE {
                        line.extend_from_slice(&buf[..i]);
                    } else {
                        too_long = true;
                    }
                    (false, i + 1)
                }
                None => {
                    let n = buf.len();
                    if !too_long && line.len() + n <= MAX_LINE {
                        line.extend_from_slice(buf);
                    } else {
                        too_long = true;
                        line.clear();
                    }
                    reader.consume(n);
                    continue;
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => (true, 0),
        };
        reader.consume(used);
        // A last line without its newline still counts.
        if !done || !line.is_empty() || too_long {
            let input = if too_long {
                Some(Input::TooLong)
            } else {
                let trimmed = line.strip_suffix(b"\r").unwrap_or(&line);
                match std::str::from_utf8(trimmed) {
                    Ok(s) if s.trim().is_empty() => None,
                    Ok(s) => Some(Input::Line(s.to_string())),
                    Err(_) => Some(Input::NotUtf8),
                }
            };
            if let Some(input) = input
                && !send(input)
            {
                return;
            }
        }
        line.clear();
        too_long = false;
        if done {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn line(s: &str) -> Parsed {
        parse(&Input::Line(s.to_string()))
    }

    fn code(p: &Parsed) -> u32 {
        p.command.as_ref().map_or_else(|e| e.code.as_u32(), |_| 0)
    }

    #[test]
    fn message_and_extra_info_commands_parse_with_their_fields() {
        assert_eq!(
            line(r#"{"cmd":"send_broadcast_message","message":"hi"}"#)
                .command
                .unwrap(),
            Command::SendBroadcastMessage {
                message: "hi".into(),
                room: None
            }
        );
        assert_eq!(
            line(r#"{"cmd":"send_custom_command","command":"go","to_users":["bob"],"room":"r"}"#)
                .command
                .unwrap(),
            Command::SendCustom {
                command: "go".into(),
                to_users: vec!["bob".into()],
                room: Some("r".into())
            }
        );
        assert_eq!(
            line(r#"{"cmd":"send_custom_command","command":"go"}"#)
                .command
                .unwrap(),
            Command::SendCustom {
                command: "go".into(),
                to_users: Vec::new(),
                room: None
            }
        );
        assert_eq!(
            line(r#"{"cmd":"set_room_extra_info","key":"topic","value":"v"}"#)
                .command
                .unwrap(),
            Command::SetRoomExtraInfo {
                key: "topic".into(),
                value: "v".into(),
                room: None
            }
        );
        assert_eq!(
            code(&line(r#"{"cmd":"set_stream_extra_info"}"#)),
            ErrorCode::COMMAND_FIELD_INVALID.as_u32()
        );
        assert_eq!(
            code(&line(
                r#"{"cmd":"send_barrage_message","message":"x","to_users":[]}"#
            )),
            ErrorCode::COMMAND_FIELD_INVALID.as_u32()
        );
    }

    #[test]
    fn commands_parse_with_their_fields() {
        let p = line(r#"{"cmd":"start_playing_stream","stream_id":"s1","id":7}"#);
        assert_eq!(p.id, Some(json!(7)));
        assert_eq!(p.name.as_deref(), Some("start_playing_stream"));
        assert_eq!(
            p.command.unwrap(),
            Command::StartPlayingStream {
                stream_id: "s1".into()
            }
        );
        assert_eq!(
            line(r#"{"cmd":"logout"}"#).command.unwrap(),
            Command::LogoutRoom { room: None }
        );
        assert_eq!(line(r#"{"cmd":"quit"}"#).command.unwrap(), Command::Quit {});
        assert_eq!(
            line(r#"{"id":"a","cmd":"set_audio_config","preset":"high","adaptive":false}"#)
                .command
                .unwrap(),
            Command::SetAudioConfig {
                preset: Some("high".into()),
                bitrate: None,
                loss_hint_percent: None,
                adaptive: Some(false)
            }
        );
    }

    #[test]
    fn bad_lines_get_their_codes_and_keep_the_id() {
        assert_eq!(code(&line("{not json")), 1009080);
        assert_eq!(code(&line("[1,2]")), 1009080);
        assert_eq!(code(&line("\"quit\"")), 1009080);
        assert_eq!(code(&parse(&Input::NotUtf8)), 1009080);
        assert_eq!(code(&parse(&Input::TooLong)), 1009083);

        let p = line(r#"{"cmd":"fly","id":3}"#);
        assert_eq!(
            (code(&p), p.id.clone(), p.name.as_deref()),
            (1009081, Some(json!(3)), Some("fly"))
        );
        let msg = p.command.unwrap_err().message;
        assert!(
            msg.contains("start_playing_stream") && msg.contains("quit"),
            "{msg}"
        );
        assert_eq!(code(&line(r#"{"stream_id":"s1"}"#)), 1009081);
        assert_eq!(code(&line(r#"{"cmd":5}"#)), 1009081);

        let p = line(r#"{"cmd":"start_playing_stream","id":[1]}"#);
        assert_eq!((code(&p), p.id.clone()), (1009082, Some(json!([1]))));
        let msg = p.command.unwrap_err().message;
        assert!(msg.contains("stream_id"), "{msg}");
        let p = line(r#"{"cmd":"start_playing_stream","stream_id":3}"#);
        assert_eq!(code(&p), 1009082);
        assert!(!p.command.unwrap_err().message.contains(" at line "));
        assert_eq!(code(&line(r#"{"cmd":"enable_camera","enable":"yes"}"#)), 1009082);
        assert_eq!(
            code(&line(
                r#"{"cmd":"mute_play_stream_video","stream_id":"s1","mute":"yes"}"#
            )),
            1009082
        );
        let p = line(r#"{"cmd":"stop_publishing_stream","stream":"s1"}"#);
        assert_eq!(code(&p), 1009082, "an unknown field is refused");
        assert_eq!(code(&line(r#"{"cmd":"quit","now":true}"#)), 1009082);
        let p = line(r#"{"cmd":"use_audio_device","device_type":"mic","device_id":""}"#);
        assert_eq!(code(&p), 1009082, "input or output only");
    }

    #[test]
    fn every_variant_is_a_command_name() {
        let names = command_names();
        for n in [
            "login_room",
            "logout_room",
            "start_publishing_stream",
            "stop_publishing_stream",
            "start_playing_stream",
            "stop_playing_stream",
            "enable_camera",
            "set_audio_config",
            "renew_token",
            "set_audio_source",
            "set_audio_sink",
            "mute_microphone",
            "mute_speaker",
            "mute_publish_stream_audio",
            "mute_publish_stream_video",
            "mute_play_stream_audio",
            "mute_play_stream_video",
            "set_video_source",
            "set_video_sink_y4m",
            "use_audio_device",
            "start_sound_level_monitor",
            "stop_sound_level_monitor",
            "quit",
        ] {
            assert!(names.contains(&n), "{n} in {names:?}");
            assert!(is_command(n));
        }
        assert!(is_command("logout") && is_command("login"));
        assert!(!is_command("fly") && !is_command(""));
    }

    /// docs/cli.md documents every command (a new variant fails here until it has its row).
    #[test]
    fn docs_cli_md_lists_every_command() {
        let doc = include_str!("../../../docs/cli.md");
        for name in command_names() {
            assert!(
                doc.contains(&format!("`{name}`")),
                "docs/cli.md lacks the command {name}"
            );
        }
        for code in [
            ErrorCode::COMMAND_MALFORMED,
            ErrorCode::COMMAND_UNKNOWN,
            ErrorCode::COMMAND_FIELD_INVALID,
            ErrorCode::COMMAND_TOO_LONG,
        ] {
            assert!(
                doc.contains(&code.as_u32().to_string()),
                "docs/cli.md lacks {code:?}"
            );
        }
    }

    fn read_all(input: &[u8]) -> Vec<Input> {
        let mut got = Vec::new();
        read_lines(std::io::BufReader::with_capacity(16, input), |i| {
            got.push(i);
            true
        });
        got
    }

    #[test]
    fn lines_are_bounded_and_split() {
        let long = "x".repeat(MAX_LINE + 1);
        let input = format!(
            "{{\"cmd\":\"quit\"}}\r\n\n  \n{long}\n\u{e9}\n{}\nlast",
            "y".repeat(MAX_LINE)
        );
        let mut bytes = input.into_bytes();
        bytes.extend_from_slice(b"\n\xff\xfe\n");
        let got = read_all(&bytes);
        assert_eq!(
            got,
            vec![
                Input::Line("{\"cmd\":\"quit\"}".into()),
                Input::TooLong,
                Input::Line("\u{e9}".into()),
                Input::Line("y".repeat(MAX_LINE)),
                Input::Line("last".into()),
                Input::NotUtf8,
            ]
        );
        // A last line without a newline, and a too-long one at the end.
        assert_eq!(read_all(b"{}"), vec![Input::Line("{}".into())]);
        assert_eq!(read_all(long.as_bytes()), vec![Input::TooLong]);
        assert_eq!(read_all(b""), vec![]);
    }

    #[test]
    fn result_lines() {
        let ok = result_line(Some(json!("q1")), Some("quit".into()), &Ok(()));
        assert_eq!(
            Value::Object(ok),
            json!({"result":"quit","id":"q1","error_code":0})
        );
        let err = result_line(
            None,
            None,
            &Err(HuddleError::new(
                ErrorCode::COMMAND_MALFORMED,
                "the line is not JSON",
            )),
        );
        assert_eq!(
            Value::Object(err),
            json!({"result":null,"error_code":1009080,"message":"the line is not JSON"})
        );
    }

    /// The commands run against a real engine (no server needed for what the engine itself
    /// refuses or accepts before any login).
    #[test]
    fn commands_run_against_an_engine() {
        let engine = huddle::Engine::create(huddle::EngineProfile::new(1, "ws://127.0.0.1:9")).unwrap();
        let mut call = Call::new(engine.handle(), None, false);
        let run = |call: &mut Call, s: &str| {
            let p = line(s);
            call.execute(p.command.unwrap()).map_err(|e| e.code.as_u32())
        };
        assert_eq!(
            run(&mut call, r#"{"cmd":"stop_publishing_stream"}"#),
            Err(1000002)
        );
        assert_eq!(run(&mut call, r#"{"cmd":"logout_room"}"#), Err(1000002));
        assert_eq!(
            run(&mut call, r#"{"cmd":"renew_token","token":"t"}"#),
            Err(1000002)
        );
        assert_eq!(
            run(&mut call, r#"{"cmd":"start_playing_stream","stream_id":"a b"}"#),
            Err(1000016)
        );
        assert_eq!(
            run(&mut call, r#"{"cmd":"set_audio_config","preset":"loud"}"#),
            Err(1000006)
        );
        assert_eq!(
            run(
                &mut call,
                r#"{"cmd":"set_audio_config","preset":"high","bitrate":96000}"#
            ),
            Ok(Next::Continue)
        );
        assert_eq!(call.engine.audio_config().bitrate, 96_000);
        assert_eq!(
            run(&mut call, r#"{"cmd":"set_audio_config","adaptive":false}"#),
            Ok(Next::Continue)
        );
        let c = call.engine.audio_config();
        assert_eq!(
            (c.bitrate, c.adaptive),
            (96_000, false),
            "fields apply over the settings now"
        );
        assert_eq!(
            run(&mut call, r#"{"cmd":"set_audio_source","source":"tone:880"}"#),
            Ok(Next::Continue)
        );
        assert_eq!(
            run(&mut call, r#"{"cmd":"set_audio_source","source":"tone:x"}"#),
            Err(1000006)
        );
        assert_eq!(
            run(&mut call, r#"{"cmd":"set_audio_source","source":"/no/such.wav"}"#),
            Err(1000006)
        );
        assert_eq!(
            run(&mut call, r#"{"cmd":"set_audio_source","source":"silence"}"#),
            Ok(Next::Continue)
        );
        assert_eq!(
            run(&mut call, r#"{"cmd":"enable_camera","enable":false}"#),
            Ok(Next::Continue)
        );
        assert!(!call.engine.is_camera_enabled());
        // Mute: the engine's state follows; a bad stream ID gets its own code.
        assert_eq!(
            run(&mut call, r#"{"cmd":"mute_microphone","mute":true}"#),
            Ok(Next::Continue)
        );
        assert!(call.engine.is_microphone_muted());
        assert_eq!(
            run(&mut call, r#"{"cmd":"mute_speaker","mute":true}"#),
            Ok(Next::Continue)
        );
        assert!(call.engine.is_speaker_muted());
        assert_eq!(
            run(
                &mut call,
                r#"{"cmd":"mute_play_stream_audio","stream_id":"a b","mute":true}"#
            ),
            Err(1000016)
        );
        assert_eq!(
            run(&mut call, r#"{"cmd":"mute_publish_stream_audio","mute":false}"#),
            Ok(Next::Continue)
        );
        assert_eq!(
            run(&mut call, r#"{"cmd":"set_video_source","source":"testsrc"}"#),
            Ok(Next::Continue)
        );
        assert_eq!(
            run(&mut call, r#"{"cmd":"set_video_source","source":"/no/such.y4m"}"#),
            Err(1000006)
        );
        let sink = r#"{"cmd":"set_video_sink_y4m","stream_id":"s1","path":"/tmp/v.y4m"}"#;
        assert_eq!(run(&mut call, sink), Ok(Next::Continue));
        assert_eq!(
            run(&mut call, r#"{"cmd":"set_video_sink_y4m","stream_id":"s1"}"#),
            Ok(Next::Continue)
        );
        assert_eq!(
            run(&mut call, r#"{"cmd":"set_video_sink_y4m","stream_id":""}"#),
            Err(1000015)
        );
        // No AppSign and no token: the engine refuses the login.
        assert_eq!(
            run(&mut call, r#"{"cmd":"login_room","room":"r","user":"u"}"#),
            Err(1002033)
        );
        assert_eq!(call.room, None);
        assert_eq!(
            run(&mut call, r#"{"cmd":"login_room","room":"r","user":"u u"}"#),
            Err(1002006)
        );
        assert_eq!(
            run(
                &mut call,
                r#"{"cmd":"start_sound_level_monitor","millisecond":50}"#
            ),
            Err(1009065)
        );
        assert_eq!(
            run(
                &mut call,
                r#"{"cmd":"start_sound_level_monitor","millisecond":200,"enable_vad":false}"#
            ),
            Ok(Next::Continue)
        );
        assert_eq!(
            run(&mut call, r#"{"cmd":"start_sound_level_monitor"}"#),
            Ok(Next::Continue)
        );
        assert_eq!(
            line(r#"{"cmd":"start_sound_level_monitor","interval":100}"#)
                .command
                .unwrap_err()
                .code
                .as_u32(),
            1009082
        );
        assert_eq!(
            run(&mut call, r#"{"cmd":"stop_sound_level_monitor"}"#),
            Ok(Next::Continue)
        );
        assert_eq!(run(&mut call, r#"{"cmd":"quit"}"#), Ok(Next::Quit));
        engine.destroy();
    }

    #[test]
    fn the_result_line_is_written_whole() {
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let out = Output::new(Instant::now(), Box::new(buf.clone()));
        let engine = huddle::Engine::create(huddle::EngineProfile::new(1, "ws://127.0.0.1:9")).unwrap();
        let mut call = Call::new(engine.handle(), None, false);
        assert_eq!(
            call.handle(&Input::Line(r#"{"cmd":"quit","id":1}"#.into()), &out),
            Next::Quit
        );
        assert_eq!(call.handle(&Input::Line("nope".into()), &out), Next::Continue);
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(
            (
                lines[0]["result"].as_str(),
                lines[0]["id"].as_u64(),
                lines[0]["error_code"].as_u64()
            ),
            (Some("quit"), Some(1), Some(0))
        );
        assert!(lines[0]["t_ms"].is_u64());
        assert_eq!(lines[1]["error_code"], 1009080);
        assert!(lines[1]["message"].as_str().unwrap().contains("not JSON"));
        engine.destroy();
    }
}
