//! The microphone and the speaker (the `device` feature): cpal's input and output devices (the
//! system's default, or one chosen by ID or name), converted to and from Huddle's 48 kHz mono
//! `i16`; and the list of devices ([`audio_device_list`]).
//!
//! Each open device is owned by a thread of its own, which builds the cpal stream, starts it and
//! holds it until the handle is dropped (cpal streams are not `Send` on every platform). Between
//! cpal's callback thread and the engine sits a bounded ring ([`Ring`]): the callback never
//! blocks on the engine for longer than a short lock, and neither side can make the other grow
//! without bound. Opening waits at most [`OPEN_TIMEOUT`] for the device; every failure is a
//! [`ErrorCode::DEVICE_UNAVAILABLE`] error that says what could not be opened and why.
//!
//! Conversion: the device's default configuration is used (any sample rate, channel count and
//! sample format cpal knows); channels are averaged on capture and duplicated on playout, the
//! rate is converted by linear interpolation ([`Linear`]), which is cheap and good enough for
//! speech between common rates. A device that runs at 48 kHz is passed through.

use std::collections::VecDeque;
#[cfg(feature = "device")]
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
#[cfg(feature = "device")]
use std::thread::JoinHandle;
#[cfg(feature = "device")]
use std::time::Duration;

#[cfg(feature = "device")]
use huddle_media::SAMPLE_RATE;
use huddle_proto::{ErrorCode, HuddleError};

/// How long opening a device may take before it counts as unavailable.
#[cfg(feature = "device")]
const OPEN_TIMEOUT: Duration = Duration::from_secs(3);
/// Captured audio kept for the publisher at most (200 ms); older samples are dropped.
#[cfg(feature = "device")]
const CAPTURE_RING: usize = 48_000 / 5;
/// Mixed audio kept for the speaker at most (200 ms); older samples are dropped.
#[cfg(feature = "device")]
const PLAYOUT_RING: usize = 48_000 / 5;

/// A bounded FIFO of 48 kHz mono samples shared by a device callback and the engine. Pushing
/// beyond the capacity drops the oldest samples; popping from an empty ring gives silence.
#[cfg_attr(not(feature = "device"), allow(dead_code))]
pub(crate) struct Ring {
    q: Mutex<VecDeque<i16>>,
    cap: usize,
}

#[cfg_attr(not(feature = "device"), allow(dead_code))]
impl Ring {
    pub(crate) fn new(cap: usize) -> Arc<Ring> {
        Arc::new(Ring {
            q: Mutex::new(VecDeque::with_capacity(cap)),
            cap,
        })
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<i16>> {
        self.q.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends samples, dropping the oldest beyond the capacity; returns how many were dropped.
    pub(crate) fn push(&self, samples: impl IntoIterator<Item = i16>) -> usize {
        let mut q = self.lock();
        q.extend(samples);
        let excess = q.len().saturating_sub(self.cap);
        q.drain(..excess);
        excess
    }

    /// Fills `out` from the front; the part that finds nothing is silence. Returns how many
    /// samples were real.
    pub(crate) fn pop_into(&self, out: &mut [i16]) -> usize {
        let mut q = self.lock();
        let n = q.len().min(out.len());
        for (o, s) in out.iter_mut().zip(q.drain(..n)) {
            *o = s;
        }
        out[n..].fill(0);
        n
    }

    /// Samples held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// A streaming sample-rate converter by linear interpolation, `from` Hz to `to` Hz.
#[cfg_attr(not(feature = "device"), allow(dead_code))]
pub(crate) struct Linear {
    /// Input samples per output sample.
    step: f64,
    /// Position of the next output between `prev` (0.0) and `cur` (1.0).
    pos: f64,
    prev: f32,
    cur: f32,
}

#[cfg_attr(not(feature = "device"), allow(dead_code))]
impl Linear {
    pub(crate) fn new(from: u32, to: u32) -> Linear {
        Linear {
            step: f64::from(from) / f64::from(to.max(1)),
            pos: 0.0,
            prev: 0.0,
            cur: 0.0,
        }
    }

    /// Pushes input samples, calling `out` for every output sample they complete.
    pub(crate) fn push(&mut self, input: &[f32], mut out: impl FnMut(f32)) {
        for &x in input {
            self.prev = self.cur;
            self.cur = x;
            while self.pos < 1.0 {
                out(self.prev + (self.cur - self.prev) * self.pos as f32);
                self.pos += self.step;
            }
            self.pos -= 1.0;
        }
    }

    /// Produces one output sample, pulling input samples from `next` as needed.
    pub(crate) fn pull(&mut self, mut next: impl FnMut() -> f32) -> f32 {
        while self.pos >= 1.0 {
            self.prev = self.cur;
            self.cur = next();
            self.pos -= 1.0;
        }
        let y = self.prev + (self.cur - self.prev) * self.pos as f32;
        self.pos += self.step;
        y
    }
}

/// Which side of the audio a device is on, as in
/// [`audio_device_list`] and [`Engine::use_audio_device`](crate::Engine::use_audio_device).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[doc(alias = "ZegoAudioDeviceType")]
pub enum AudioDeviceType {
    /// A microphone (capture).
    Input,
    /// A speaker (playout).
    Output,
}

impl AudioDeviceType {
    fn what(self) -> &'static str {
        match self {
            AudioDeviceType::Input => "microphone",
            AudioDeviceType::Output => "speaker",
        }
    }
}

/// An audio device the system offers ([`audio_device_list`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
#[doc(alias = "ZegoDeviceInfo")]
pub struct DeviceInfo {
    /// What identifies the device to the audio system, stable across runs (on Linux the ALSA
    /// name, as `alsa:hw:CARD=PCH,DEV=0`); give it to
    /// [`Engine::use_audio_device`](crate::Engine::use_audio_device).
    pub device_id: String,
    /// Its name for people (the ID again when the system gives none).
    pub device_name: String,
}

/// The microphones ([`AudioDeviceType::Input`]) or speakers ([`AudioDeviceType::Output`]) the
/// system offers, for [`Engine::use_audio_device`](crate::Engine::use_audio_device).
///
/// It needs no engine (unlike ZEGO's `getAudioDeviceList`, a method there), so that a program
/// can offer the choice before it creates one. Listing opens no device; on Linux it asks ALSA
/// for its PCM names, which may include virtual devices (`null`, `default`) on a machine
/// without a sound card: [`Engine::set_audio_source`](crate::Engine::set_audio_source) with
/// [`AudioSource::Microphone`](crate::AudioSource::Microphone) is what proves that a device
/// works.
///
/// ```
/// use huddle::{AudioDeviceType, ErrorCode, audio_device_list};
///
/// match audio_device_list(AudioDeviceType::Input) {
///     Ok(mics) => {
///         for mic in mics {
///             println!("{}: {}", mic.device_id, mic.device_name);
///         }
///     }
///     // A build without the `device` feature, or no audio system at all.
///     Err(e) => assert_eq!(e.code, ErrorCode::DEVICE_UNAVAILABLE),
/// }
/// ```
///
/// Errors: 1009020 (`DEVICE_UNAVAILABLE`) in a build without the `device` feature or when the
/// audio system cannot be asked.
#[doc(alias = "getAudioDeviceList")]
pub fn audio_device_list(device_type: AudioDeviceType) -> Result<Vec<DeviceInfo>, HuddleError> {
    #[cfg(feature = "device")]
    {
        cpal_impl::list(device_type)
    }
    #[cfg(not(feature = "device"))]
    {
        Err(unavailable(device_type.what(), NO_FEATURE))
    }
}

/// Why a build without the `device` feature cannot open or list devices.
#[cfg(not(feature = "device"))]
const NO_FEATURE: &str = "this build of the SDK has no device support (cargo feature `device`)";

/// The device `wanted` names among `devices` (its ID, its ID without the host prefix, or else
/// its name); 1009084 when none.
pub(crate) fn find<'a>(
    device_type: AudioDeviceType,
    devices: &'a [DeviceInfo],
    wanted: &str,
) -> Result<&'a DeviceInfo, HuddleError> {
    devices
        .iter()
        .find(|d| d.device_id == wanted)
        .or_else(|| {
            // The ID without its host (`hw:0` for `alsa:hw:0`), as the audio system names it.
            devices
                .iter()
                .find(|d| d.device_id.split_once(':').is_some_and(|(_, id)| id == wanted))
        })
        .or_else(|| devices.iter().find(|d| d.device_name == wanted))
        .ok_or_else(|| {
            let what = device_type.what();
            let known = if devices.is_empty() {
                format!("the system offers no {what}")
            } else {
                let ids: Vec<&str> = devices.iter().map(|d| d.device_id.as_str()).collect();
                format!("the {what}s: {}", ids.join(", "))
            };
            HuddleError::new(
                ErrorCode::DEVICE_NOT_FOUND,
                format!("no {what} has the ID or name {wanted:?} ({known})"),
            )
        })
}

/// The error for a device that cannot be opened.
pub(crate) fn unavailable(what: &str, why: impl std::fmt::Display) -> HuddleError {
    HuddleError::new(
        ErrorCode::DEVICE_UNAVAILABLE,
        format!("cannot open the {what}: {why}"),
    )
}

/// The default microphone, capturing into a ring of 48 kHz mono samples until dropped.
#[cfg_attr(not(feature = "device"), allow(dead_code))]
pub(crate) struct Microphone {
    pub(crate) ring: Arc<Ring>,
    #[cfg(feature = "device")]
    owner: DeviceThread,
}

/// The default speaker, playing a ring of 48 kHz mono samples until dropped.
#[cfg_attr(not(feature = "device"), allow(dead_code))]
pub(crate) struct Speaker {
    pub(crate) ring: Arc<Ring>,
    #[cfg(feature = "device")]
    _owner: DeviceThread,
}

#[cfg(not(feature = "device"))]
impl Microphone {
    pub(crate) fn open(_device: Option<&str>) -> Result<Microphone, HuddleError> {
        Err(unavailable("microphone", NO_FEATURE))
    }
}

#[cfg(not(feature = "device"))]
impl Speaker {
    pub(crate) fn open(_device: Option<&str>) -> Result<Speaker, HuddleError> {
        Err(unavailable("speaker", NO_FEATURE))
    }
}

#[cfg(feature = "device")]
impl std::fmt::Debug for Microphone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Microphone")
            .field("device", &self.owner.name)
            .finish()
    }
}

/// The thread that owns a cpal stream; dropping it stops the stream and joins the thread.
#[cfg(feature = "device")]
struct DeviceThread {
    name: String,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

#[cfg(feature = "device")]
impl Drop for DeviceThread {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(feature = "device")]
mod cpal_impl {
    use super::*;
    use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
    use cpal::{FromSample, Sample, SampleFormat, SizedSample, StreamConfig};
    use tracing::warn;

    use AudioDeviceType as Dir;

    /// The devices of `dir` the default host offers.
    pub(super) fn list(dir: Dir) -> Result<Vec<DeviceInfo>, HuddleError> {
        let what = dir.what();
        let host = cpal::default_host();
        let devices: Vec<cpal::Device> = match dir {
            Dir::Input => host.input_devices().map(|d| d.collect()),
            Dir::Output => host.output_devices().map(|d| d.collect()),
        }
        .map_err(|e| {
            unavailable(
                what,
                format!("cannot list the devices (audio host {:?}): {e}", host.id()),
            )
        })?;
        Ok(devices
            .iter()
            .filter_map(|d| {
                let device_id = d.id().ok()?.to_string();
                let device_name = d
                    .description()
                    .map(|desc| desc.name().to_string())
                    .unwrap_or_else(|_| device_id.clone());
                Some(DeviceInfo {
                    device_id,
                    device_name,
                })
            })
            .collect())
    }

    /// Opens the device of `dir` that `wanted` names (the default without one) on a thread of
    /// its own; returns once the stream plays (or failed to).
    pub(super) fn spawn(
        dir: Dir,
        wanted: Option<String>,
        ring: Arc<Ring>,
    ) -> Result<DeviceThread, HuddleError> {
        let what = dir.what();
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<String, HuddleError>>(1);
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("huddle-{what}"))
            .spawn(move || {
                let stream = match open_stream(dir, wanted.as_deref(), ring) {
                    Ok((stream, name)) => {
                        let _ = ready_tx.send(Ok(name));
                        stream
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                // Until the handle is dropped (the sender goes away).
                let _ = stop_rx.recv();
                drop(stream);
            })
            .map_err(|e| unavailable(what, format!("cannot start its thread: {e}")))?;
        match ready_rx.recv_timeout(OPEN_TIMEOUT) {
            Ok(Ok(name)) => Ok(DeviceThread {
                name,
                stop: Some(stop_tx),
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // The thread is stuck in the audio system: leave it (it ends when it returns,
                // since nobody waits for the stream) and report.
                Err(unavailable(
                    what,
                    format!("the audio system did not answer in {} s", OPEN_TIMEOUT.as_secs()),
                ))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let _ = thread.join();
                Err(unavailable(what, "the device thread ended while opening it"))
            }
        }
    }

    /// Opens the stream; a failure says so when the machine has no sound card at all.
    fn open_stream(
        dir: Dir,
        wanted: Option<&str>,
        ring: Arc<Ring>,
    ) -> Result<(cpal::Stream, String), HuddleError> {
        open_stream_inner(dir, wanted, ring).map_err(|mut e| {
            if e.code == ErrorCode::DEVICE_UNAVAILABLE
                && let Some(hint) = no_sound_card()
            {
                e.message.push_str(hint);
            }
            e
        })
    }

    /// A note for errors when Linux lists no sound card (`/proc/asound/cards`).
    fn no_sound_card() -> Option<&'static str> {
        if !cfg!(target_os = "linux") {
            return None;
        }
        let cards = std::fs::read_to_string("/proc/asound/cards").unwrap_or_default();
        let none = cards.trim().is_empty() || cards.contains("no soundcards");
        none.then_some(" (this machine has no sound card: /proc/asound/cards lists none)")
    }

    fn open_stream_inner(
        dir: Dir,
        wanted: Option<&str>,
        ring: Arc<Ring>,
    ) -> Result<(cpal::Stream, String), HuddleError> {
        let what = dir.what();
        let host = cpal::default_host();
        let device = match wanted {
            Some(wanted) => {
                let listed = list(dir)?;
                let id = find(dir, &listed, wanted)?
                    .device_id
                    .parse::<cpal::DeviceId>()
                    .map_err(|e| {
                        unavailable(
                            what,
                            format!("{wanted:?}: the audio system does not take its ID back: {e}"),
                        )
                    })?;
                host.device_by_id(&id)
                    .ok_or_else(|| unavailable(what, format!("{wanted:?} went away while opening it")))?
            }
            None => match dir {
                Dir::Input => host.default_input_device(),
                Dir::Output => host.default_output_device(),
            }
            .ok_or_else(|| unavailable(what, format!("no default {what} (audio host {:?})", host.id())))?,
        };
        let name = device
            .description()
            .map(|d| d.to_string())
            .unwrap_or_else(|_| "default".to_string());
        let supported = match dir {
            Dir::Input => device.default_input_config(),
            Dir::Output => device.default_output_config(),
        }
        .map_err(|e| unavailable(what, format!("{name:?}: {e}")))?;
        let format = supported.sample_format();
        let config = supported.config();
        macro_rules! build {
            ($($f:ident => $t:ty),*) => {
                match (dir, format) {
                    $(
                        (Dir::Input, SampleFormat::$f) => build_input::<$t>(&device, config, ring),
                        (Dir::Output, SampleFormat::$f) => build_output::<$t>(&device, config, ring),
                    )*
                    _ => return Err(unavailable(what, format!("{name:?}: sample format {format} is not supported"))),
                }
            };
        }
        let stream = build!(I8 => i8, I16 => i16, I32 => i32, U8 => u8, U16 => u16, U32 => u32, F32 => f32, F64 => f64)
            .map_err(|e| unavailable(what, format!("{name:?}: {e}")))?;
        stream
            .play()
            .map_err(|e| unavailable(what, format!("{name:?}: cannot start it: {e}")))?;
        Ok((stream, name))
    }

    fn build_input<T>(
        device: &cpal::Device,
        config: StreamConfig,
        ring: Arc<Ring>,
    ) -> Result<cpal::Stream, cpal::Error>
    where
        T: SizedSample,
        f32: FromSample<T>,
    {
        let channels = usize::from(config.channels.max(1));
        let mut resampler = Linear::new(config.sample_rate, SAMPLE_RATE);
        let passthrough = config.sample_rate == SAMPLE_RATE;
        let mut mono: Vec<f32> = Vec::new();
        let mut out: Vec<i16> = Vec::new();
        device.build_input_stream::<T, _, _>(
            config,
            move |data: &[T], _| {
                mono.clear();
                mono.extend(
                    data.chunks(channels)
                        .map(|c| c.iter().map(|&s| f32::from_sample(s)).sum::<f32>() / c.len() as f32),
                );
                out.clear();
                if passthrough {
                    out.extend(mono.iter().map(|&s| to_i16(s)));
                } else {
                    resampler.push(&mono, |s| out.push(to_i16(s)));
                }
                ring.push(out.iter().copied());
            },
            |e| warn!(error = %e, "microphone stream error"),
            None,
        )
    }

    fn build_output<T>(
        device: &cpal::Device,
        config: StreamConfig,
        ring: Arc<Ring>,
    ) -> Result<cpal::Stream, cpal::Error>
    where
        T: SizedSample + FromSample<f32>,
    {
        let channels = usize::from(config.channels.max(1));
        let mut resampler = Linear::new(SAMPLE_RATE, config.sample_rate);
        device.build_output_stream::<T, _, _>(
            config,
            move |data: &mut [T], _| {
                // One short lock per callback; an empty ring plays silence.
                let mut q = ring.lock();
                for frame in data.chunks_mut(channels) {
                    let y = resampler.pull(|| q.pop_front().map_or(0.0, |s| f32::from(s) / 32768.0));
                    let v = T::from_sample(y);
                    frame.iter_mut().for_each(|s| *s = v);
                }
            },
            |e| warn!(error = %e, "speaker stream error"),
            None,
        )
    }

    fn to_i16(s: f32) -> i16 {
        i16::from_sample(s.clamp(-1.0, 1.0))
    }
}

#[cfg(feature = "device")]
impl Microphone {
    /// Opens the microphone `device` names (its ID or name; the default without one) and
    /// starts capturing (errors: 1009020, 1009084 for no such device).
    pub(crate) fn open(device: Option<&str>) -> Result<Microphone, HuddleError> {
        let ring = Ring::new(CAPTURE_RING);
        let owner = cpal_impl::spawn(AudioDeviceType::Input, device.map(str::to_string), ring.clone())?;
        Ok(Microphone { ring, owner })
    }
}

#[cfg(feature = "device")]
impl Speaker {
    /// Opens the speaker `device` names (its ID or name; the default without one) and starts
    /// playing (silence until frames come; errors: 1009020, 1009084 for no such device).
    pub(crate) fn open(device: Option<&str>) -> Result<Speaker, HuddleError> {
        let ring = Ring::new(PLAYOUT_RING);
        let owner = cpal_impl::spawn(AudioDeviceType::Output, device.map(str::to_string), ring.clone())?;
        Ok(Speaker { ring, _owner: owner })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_are_found_by_id_then_name() {
        let d = |id: &str, name: &str| DeviceInfo {
            device_id: id.into(),
            device_name: name.into(),
        };
        let list = [
            d("alsa:hw:0", "USB mic"),
            d("alsa:null", "alsa:hw:0"),
            d("alsa:x", "USB mic"),
        ];
        let t = AudioDeviceType::Input;
        assert_eq!(
            find(t, &list, "alsa:hw:0").unwrap(),
            &list[0],
            "an ID before a name"
        );
        assert_eq!(
            find(t, &list, "null").unwrap(),
            &list[1],
            "the ID without its host"
        );
        assert_eq!(
            find(t, &list, "USB mic").unwrap(),
            &list[0],
            "the first of a name"
        );
        let e = find(t, &list, "usb mic").unwrap_err();
        assert_eq!(e.code, ErrorCode::DEVICE_NOT_FOUND);
        assert!(e.message.contains("alsa:null"), "{}", e.message);
        let e = find(AudioDeviceType::Output, &[], "x").unwrap_err();
        assert_eq!(e.code, ErrorCode::DEVICE_NOT_FOUND);
        assert!(e.message.contains("offers no speaker"), "{}", e.message);
    }

    /// The engine's device choice: without the feature nothing can be listed or chosen
    /// (1009020); with it, an unlisted device is refused (1009084) and the choice is kept for
    /// the microphone source. An empty ID (the default) is always taken.
    #[test]
    fn the_engine_chooses_listed_devices_only() {
        let engine = crate::Engine::create(crate::EngineProfile::new(1, "ws://127.0.0.1:9")).unwrap();
        assert_eq!(engine.use_audio_device(AudioDeviceType::Input, ""), Ok(()));
        assert_eq!(engine.use_audio_device(AudioDeviceType::Output, ""), Ok(()));
        let listed = audio_device_list(AudioDeviceType::Input);
        let refused = engine
            .use_audio_device(AudioDeviceType::Input, "no-such-device")
            .unwrap_err();
        if cfg!(feature = "device") {
            let listed = listed.expect("ALSA answers even without a sound card");
            assert_eq!(refused.code, ErrorCode::DEVICE_NOT_FOUND, "{}", refused.message);
            if let Some(first) = listed.first() {
                engine
                    .use_audio_device(AudioDeviceType::Input, &first.device_id)
                    .unwrap();
                let chosen = engine.handle().shared_input_device();
                assert_eq!(chosen.as_deref(), Some(first.device_id.as_str()));
            }
        } else {
            for e in [listed.unwrap_err(), refused] {
                assert_eq!(e.code, ErrorCode::DEVICE_UNAVAILABLE);
                assert!(e.message.contains("feature `device`"), "{}", e.message);
            }
            let e = engine
                .set_audio_source(crate::AudioSource::Microphone)
                .unwrap_err();
            assert_eq!(e.code, ErrorCode::DEVICE_UNAVAILABLE);
            let e = engine.set_audio_sink(crate::AudioSink::Speaker).unwrap_err();
            assert_eq!(e.code, ErrorCode::DEVICE_UNAVAILABLE);
        }
        engine.destroy();
    }

    #[test]
    fn ring_is_bounded_and_pads_with_silence() {
        let r = Ring::new(4);
        assert_eq!(r.push([1, 2, 3, 4, 5, 6]), 2);
        assert_eq!(r.len(), 4);
        let mut out = [9i16; 6];
        assert_eq!(r.pop_into(&mut out), 4);
        assert_eq!(out, [3, 4, 5, 6, 0, 0]);
    }

    fn tone(rate: u32, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (2.0 * std::f64::consts::PI * 440.0 * i as f64 / f64::from(rate)).sin() as f32 * 0.5)
            .collect()
    }

    #[test]
    fn linear_converts_the_rate_and_keeps_a_tone() {
        for rate in [8_000u32, 16_000, 44_100, 96_000] {
            let input = tone(rate, rate as usize); // 1 s
            let mut out = Vec::new();
            let mut r = Linear::new(rate, 48_000);
            for chunk in input.chunks(441) {
                r.push(chunk, |s| out.push(s));
            }
            assert!((out.len() as i64 - 48_000).abs() <= 2, "{rate}: {}", out.len());
            let want = tone(48_000, out.len());
            // Compare after the one-sample start-up delay of the converter.
            let d = (48_000 / rate).max(1) as usize;
            let err: f32 = out[d..]
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(err < 0.05, "{rate}: max error {err}");
        }
    }

    #[test]
    fn linear_pull_matches_push() {
        let input = tone(48_000, 4_800);
        let mut pushed = Vec::new();
        Linear::new(48_000, 44_100).push(&input, |s| pushed.push(s));
        let mut it = input.iter().copied();
        let mut r = Linear::new(48_000, 44_100);
        let pulled: Vec<f32> = (0..pushed.len())
            .map(|_| r.pull(|| it.next().unwrap_or(0.0)))
            .collect();
        let err = pushed
            .iter()
            .zip(&pulled)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(err < 0.05, "max difference {err}");
    }
}
