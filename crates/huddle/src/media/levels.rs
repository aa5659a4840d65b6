//! The sound-level monitor: the captured signal's and each played stream's level and voice
//! activity (`huddle_media::SoundLevelMeter`), reported at the app's interval, and the active
//! speakers.
//!
//! The publish task feeds the captured frames (before encoding); the mixer task feeds each played
//! stream's decoded frame (before mixing) and, every 20 ms tick, asks [`LevelMonitor::tick`] for
//! the events that are due. Nothing is measured while the monitor is stopped.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use huddle_media::{AudioFrame, FRAME_MS, SoundLevelMeter};
use huddle_proto::{ErrorCode, HuddleError, StreamId};

use crate::event::{Event, SoundLevelInfo};

/// ZEGO's allowed range for the monitor's interval, in milliseconds.
pub(crate) const INTERVAL_MIN_MS: u32 = 100;
pub(crate) const INTERVAL_MAX_MS: u32 = 3000;

/// The sound-level monitor's configuration (ZEGO Express's `ZegoSoundLevelConfig`).
///
/// ```
/// use huddle::SoundLevelConfig;
/// let c = SoundLevelConfig::default();
/// assert_eq!((c.millisecond, c.enable_vad), (100, true));
/// let slow = SoundLevelConfig::new(500, false);
/// assert_eq!(slow.millisecond, 500);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
#[doc(alias = "ZegoSoundLevelConfig")]
pub struct SoundLevelConfig {
    /// The interval of the sound-level events, 100–3000 ms (ZEGO's range; default 100).
    /// Levels are measured every 20 ms frame, so the events come at the multiple of 20 ms
    /// nearest the interval on average.
    pub millisecond: u32,
    /// Whether the events carry the voice-activity decision (`vad`); without it `vad` is
    /// always `false`. Default `true` (ZEGO's default is `false`: its VAD costs more).
    #[doc(alias = "enableVAD")]
    pub enable_vad: bool,
}

impl SoundLevelConfig {
    /// A configuration with this interval and VAD choice.
    pub fn new(millisecond: u32, enable_vad: bool) -> SoundLevelConfig {
        SoundLevelConfig {
            millisecond,
            enable_vad,
        }
    }

    /// 1009065 outside 100–3000 ms.
    pub(crate) fn check(&self) -> Result<(), HuddleError> {
        if (INTERVAL_MIN_MS..=INTERVAL_MAX_MS).contains(&self.millisecond) {
            Ok(())
        } else {
            Err(HuddleError::new(
                ErrorCode::SOUND_LEVEL_INTERVAL_INVALID,
                format!(
                    "the sound-level interval is {} ms; it must be {INTERVAL_MIN_MS}–{INTERVAL_MAX_MS} ms",
                    self.millisecond
                ),
            ))
        }
    }
}

impl Default for SoundLevelConfig {
    fn default() -> Self {
        SoundLevelConfig::new(100, true)
    }
}

/// Ticks without a captured frame after which the capture counts as stopped (200 ms).
const CAPTURE_GONE_TICKS: u32 = 10;

/// The monitor, shared by the API, the publish task and the mixer task.
#[derive(Default)]
pub(crate) struct LevelMonitor {
    state: Mutex<Option<Running>>,
}

struct Running {
    config: SoundLevelConfig,
    /// The published stream and its meter, while publishing.
    captured: Option<(StreamId, SoundLevelMeter)>,
    /// Ticks since the last captured frame (the publish task and the mixer run at their own
    /// pace: a tick may see two frames, the next none).
    captured_stale: u32,
    remote: HashMap<StreamId, SoundLevelMeter>,
    /// Milliseconds since the last report.
    elapsed_ms: u32,
    speakers: ActiveSpeakers,
}

impl LevelMonitor {
    fn lock(&self) -> MutexGuard<'_, Option<Running>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts (or restarts with a new configuration) the monitor.
    pub(crate) fn start(&self, config: SoundLevelConfig) -> Result<(), HuddleError> {
        config.check()?;
        let mut state = self.lock();
        match state.as_mut() {
            Some(r) => r.config = config,
            None => {
                *state = Some(Running {
                    config,
                    captured: None,
                    captured_stale: 0,
                    remote: HashMap::new(),
                    elapsed_ms: 0,
                    speakers: ActiveSpeakers::default(),
                })
            }
        }
        Ok(())
    }

    /// Stops the monitor: no more events; the active speakers are forgotten.
    pub(crate) fn stop(&self) {
        *self.lock() = None;
    }

    /// A captured frame of the published stream `stream_id`, before encoding.
    pub(crate) fn captured(&self, stream_id: &StreamId, frame: &AudioFrame) {
        let mut state = self.lock();
        let Some(r) = state.as_mut() else { return };
        if r.captured.as_ref().is_none_or(|(id, _)| id != stream_id) {
            r.captured = SoundLevelMeter::new().ok().map(|m| (stream_id.clone(), m));
        }
        if let Some((_, meter)) = r.captured.as_mut() {
            meter.push_frame(&frame.samples);
            r.captured_stale = 0;
        }
    }

    /// Whether the monitor runs (the mixer then hands its frames in).
    pub(crate) fn running(&self) -> bool {
        self.lock().is_some()
    }

    /// One mixer tick: every played stream and its decoded frame, if it gave one. Returns the
    /// events that are due: the levels at the interval, the active speakers when they change.
    pub(crate) fn tick(&self, played: &[(StreamId, Option<&AudioFrame>)]) -> Vec<Event> {
        let mut state = self.lock();
        let Some(r) = state.as_mut() else {
            return Vec::new();
        };
        r.remote.retain(|id, _| played.iter().any(|(p, _)| p == id));
        let mut heard: Vec<(StreamId, f32, bool)> = Vec::with_capacity(played.len() + 1);
        for (id, frame) in played {
            if !r.remote.contains_key(id) {
                let Ok(meter) = SoundLevelMeter::new() else {
                    continue;
                };
                r.remote.insert(id.clone(), meter);
            }
            let meter = r.remote.get_mut(id).expect("inserted");
            if let Some(frame) = frame {
                meter.push_frame(&frame.samples);
                heard.push((id.clone(), meter.frame_level(), meter.vad()));
            }
        }
        r.captured_stale = r.captured_stale.saturating_add(1);
        if r.captured_stale > CAPTURE_GONE_TICKS {
            // Not publishing any more: the captured meter is dropped, and its events say 0,
            // as ZEGO's do without capture.
            r.captured = None;
        } else if let Some((id, meter)) = &r.captured {
            heard.push((id.clone(), meter.frame_level(), meter.vad()));
        }
        let mut events = Vec::new();
        if let Some(speakers) = r.speakers.update(&heard, FRAME_MS) {
            events.push(Event::ActiveSpeakersChanged { stream_ids: speakers });
        }
        r.elapsed_ms += FRAME_MS;
        if r.elapsed_ms + FRAME_MS / 2 >= r.config.millisecond {
            r.elapsed_ms = r.elapsed_ms.saturating_sub(r.config.millisecond);
            let vad = r.config.enable_vad;
            let info = |m: &mut SoundLevelMeter| {
                let l = m.take();
                SoundLevelInfo {
                    sound_level: l.sound_level,
                    vad: vad && l.vad,
                }
            };
            let captured = r
                .captured
                .as_mut()
                .map_or(SoundLevelInfo::default(), |(_, m)| info(m));
            let remote: BTreeMap<String, SoundLevelInfo> = r
                .remote
                .iter_mut()
                .map(|(id, m)| (id.as_str().to_string(), info(m)))
                .collect();
            events.push(Event::CapturedSoundLevelUpdate { info: captured });
            events.push(Event::RemoteSoundLevelUpdate { sound_levels: remote });
        }
        events
    }
}

/// The most active speakers reported at most.
pub(crate) const MAX_SPEAKERS: usize = 3;
/// Voice this long (on top of the meter's 32 ms onset) makes a stream a speaker: a cough or a
/// "hm" does not.
const JOIN_MS: u32 = 200;
/// No voice for this long (on top of the meter's 320 ms hangover) ends a speaker: a breath
/// between sentences does not.
const LEAVE_MS: u32 = 600;
/// A speaker overtakes the one before it only when louder by this many points (smoothed; 6
/// points are 3.6 dB), so that two people at about the same level do not swap at every word.
const SWAP_MARGIN: f32 = 6.0;
/// Smoothing of the levels that order the speakers: about 400 ms.
const SMOOTHING: f32 = FRAME_MS as f32 / 400.0;

#[derive(Debug, Default, Clone, Copy)]
struct Speaker {
    smoothed: f32,
    voiced_ms: u32,
    quiet_ms: u32,
}

/// The active speakers: the streams with voice, loudest first, with hysteresis in time (join and
/// leave delays) and in level (the swap margin). Pure; fed every 20 ms.
#[derive(Debug, Default)]
pub(crate) struct ActiveSpeakers {
    state: HashMap<StreamId, Speaker>,
    /// The speakers in order (all of them; the first `MAX_SPEAKERS` are reported).
    order: Vec<StreamId>,
    reported: Vec<StreamId>,
}

impl ActiveSpeakers {
    /// One frame of every stream heard (its level and voice decision). Streams not heard are
    /// gone. Returns the new list when the reported one changed.
    pub(crate) fn update(&mut self, heard: &[(StreamId, f32, bool)], ms: u32) -> Option<Vec<StreamId>> {
        self.state.retain(|id, _| heard.iter().any(|(h, _, _)| h == id));
        for (id, level, vad) in heard {
            let s = self.state.entry(id.clone()).or_default();
            s.smoothed += (level - s.smoothed) * SMOOTHING;
            if *vad {
                s.voiced_ms = s.voiced_ms.saturating_add(ms);
                s.quiet_ms = 0;
            } else {
                s.quiet_ms = s.quiet_ms.saturating_add(ms);
                if s.quiet_ms >= LEAVE_MS {
                    s.voiced_ms = 0;
                }
            }
        }
        let state = &self.state;
        self.order
            .retain(|id| state.get(id).is_some_and(|s| s.quiet_ms < LEAVE_MS));
        let mut joining: Vec<&StreamId> = state
            .iter()
            .filter(|(id, s)| s.voiced_ms >= JOIN_MS && s.quiet_ms == 0 && !self.order.contains(id))
            .map(|(id, _)| id)
            .collect();
        joining.sort();
        self.order.extend(joining.into_iter().cloned());
        // Adjacent swaps only past the margin: a stable order that still follows who is louder.
        let level = |id: &StreamId| state.get(id).map_or(0.0, |s| s.smoothed);
        for _ in 0..self.order.len() {
            let mut swapped = false;
            for i in 1..self.order.len() {
                if level(&self.order[i]) > level(&self.order[i - 1]) + SWAP_MARGIN {
                    self.order.swap(i, i - 1);
                    swapped = true;
                }
            }
            if !swapped {
                break;
            }
        }
        let now: Vec<StreamId> = self.order.iter().take(MAX_SPEAKERS).cloned().collect();
        if now != self.reported {
            self.reported = now.clone();
            Some(now)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> StreamId {
        StreamId::new(s).unwrap()
    }

    /// Feeds `frames` 20 ms frames of `heard`; returns every change.
    fn run(sp: &mut ActiveSpeakers, heard: &[(&str, f32, bool)], frames: usize) -> Vec<Vec<String>> {
        let heard: Vec<_> = heard.iter().map(|(s, l, v)| (id(s), *l, *v)).collect();
        (0..frames)
            .filter_map(|_| sp.update(&heard, 20))
            .map(|l| l.iter().map(|s| s.as_str().to_string()).collect())
            .collect()
    }

    #[test]
    fn speakers_join_after_voice_and_leave_after_silence() {
        let mut sp = ActiveSpeakers::default();
        // 180 ms of voice: not yet.
        assert!(run(&mut sp, &[("a", 60.0, true), ("b", 10.0, false)], 9).is_empty());
        assert_eq!(
            run(&mut sp, &[("a", 60.0, true), ("b", 10.0, false)], 1),
            vec![vec!["a"]]
        );
        // A breath of 500 ms: still speaking, no event.
        assert!(run(&mut sp, &[("a", 5.0, false), ("b", 10.0, false)], 25).is_empty());
        assert!(run(&mut sp, &[("a", 60.0, true), ("b", 10.0, false)], 10).is_empty());
        // 600 ms without voice: gone.
        assert_eq!(
            run(&mut sp, &[("a", 5.0, false), ("b", 10.0, false)], 30),
            vec![Vec::<String>::new()]
        );
        // A stream that goes away is no longer a speaker.
        run(&mut sp, &[("a", 60.0, true)], 20);
        assert_eq!(run(&mut sp, &[], 1), vec![Vec::<String>::new()]);
    }

    #[test]
    fn the_order_follows_the_levels_with_a_margin() {
        let mut sp = ActiveSpeakers::default();
        run(&mut sp, &[("a", 60.0, true)], 20);
        // b joins, a little louder: second, no swap (within the margin) however long.
        let changes = run(&mut sp, &[("a", 60.0, true), ("b", 64.0, true)], 100);
        assert_eq!(changes, vec![vec!["a", "b"]]);
        // b much louder: first, once (no flapping while both keep talking).
        let changes = run(&mut sp, &[("a", 60.0, true), ("b", 75.0, true)], 100);
        assert_eq!(changes, vec![vec!["b", "a"]]);
        // Alternating words at about the same level: no change at all.
        let mut changes = Vec::new();
        for i in 0..50 {
            let (la, lb) = if i % 2 == 0 { (70.0, 66.0) } else { (66.0, 70.0) };
            changes.extend(run(&mut sp, &[("a", la, true), ("b", lb, true)], 15));
        }
        assert!(changes.is_empty(), "{changes:?}");
        // At most three reported.
        let changes = run(
            &mut sp,
            &[
                ("a", 60.0, true),
                ("b", 60.0, true),
                ("c", 60.0, true),
                ("d", 90.0, true),
            ],
            60,
        );
        assert_eq!(changes.last().unwrap().len(), MAX_SPEAKERS);
        assert_eq!(changes.last().unwrap()[0], "d");
    }

    #[test]
    fn the_interval_is_checked_and_reports_come_at_it() {
        assert_eq!(
            SoundLevelConfig::new(99, true).check().unwrap_err().code,
            ErrorCode::SOUND_LEVEL_INTERVAL_INVALID
        );
        assert!(SoundLevelConfig::new(3001, true).check().is_err());
        assert!(SoundLevelConfig::new(100, true).check().is_ok());
        let m = LevelMonitor::default();
        assert!(m.tick(&[]).is_empty(), "stopped: nothing");
        m.start(SoundLevelConfig::new(200, true)).unwrap();
        let frame = AudioFrame::silence(0);
        let s1 = id("s1");
        let reports: Vec<usize> = (0..50)
            .map(|_| {
                m.captured(&s1, &frame);
                m.tick(&[(id("p"), Some(&frame))])
                    .iter()
                    .filter(|e| matches!(e, Event::RemoteSoundLevelUpdate { .. }))
                    .count()
            })
            .collect();
        // 50 ticks of 20 ms: a report every 10 ticks.
        assert_eq!(reports.iter().sum::<usize>(), 5);
        assert_eq!(reports[9], 1);
        m.stop();
        assert!(m.tick(&[(id("p"), Some(&frame))]).is_empty());
    }
}
