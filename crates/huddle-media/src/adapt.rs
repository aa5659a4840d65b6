//! The publisher's audio settings ([`AudioConfig`], with the hosted SDKs' presets) and the
//! sans-IO controller that moves the encoder with the receivers' reports ([`AudioAdapter`]).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::error::{MediaError, Result};

/// The audio presets of the hosted SDKs (ZEGO's `ZegoAudioConfigPreset`, same names, same
/// order, same bitrates).
///
/// | preset | bitrate | ZEGO channels | Huddle sends |
/// |---|---|---|---|
/// | [`BasicQuality`](Self::BasicQuality) | 16 kbit/s | mono | mono voice |
/// | [`StandardQuality`](Self::StandardQuality) (the default) | 48 kbit/s | mono | mono voice |
/// | [`StandardQualityStereo`](Self::StandardQualityStereo) | 56 kbit/s | stereo | mono music |
/// | [`HighQuality`](Self::HighQuality) | 128 kbit/s | mono | mono voice |
/// | [`HighQualityStereo`](Self::HighQualityStereo) (music) | 192 kbit/s | stereo | mono music |
///
/// Where Huddle differs: its audio pipeline is mono (48 kHz, one channel end to end), so the
/// stereo presets keep their bitrate and turn the encoder to music (libopus `AUDIO`
/// application, no in-band FEC: music is coded by CELT, which carries none) but send one
/// channel. The bitrate is a starting point that follows the network (see [`AudioAdapter`]),
/// where ZEGO's is fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
#[doc(alias = "ZegoAudioConfigPreset")]
pub enum AudioConfigPreset {
    /// 16 kbit/s, voice.
    BasicQuality,
    /// 48 kbit/s, voice (the default).
    #[default]
    StandardQuality,
    /// 56 kbit/s, music (stereo in ZEGO's SDKs; mono here).
    StandardQualityStereo,
    /// 128 kbit/s, voice.
    HighQuality,
    /// 192 kbit/s, music (stereo in ZEGO's SDKs; mono here).
    HighQualityStereo,
}

/// What the publisher's Opus encoder starts from. Build it from a preset
/// ([`AudioConfig::preset`]; the default is [`AudioConfigPreset::StandardQuality`]) and change
/// the fields as needed; the engine checks it ([`AudioConfig::validate`]) when it is set.
///
/// ```
/// use huddle_media::{AudioConfig, AudioConfigPreset};
/// let config = AudioConfig::preset(AudioConfigPreset::StandardQuality);
/// assert_eq!((config.bitrate, config.fec, config.adaptive), (48_000, true, true));
/// assert_eq!(config, AudioConfig::default());
///
/// let mut bad = AudioConfig::default();
/// bad.bitrate = 1_000; // below Opus' 6 kbit/s
/// assert_eq!(bad.validate().unwrap_err().code(), 1000006);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
#[doc(alias = "ZegoAudioConfig")]
pub struct AudioConfig {
    /// Target bitrate on a clean network, in bit/s (6 000 to 510 000).
    pub bitrate: u32,
    /// Channels of the preset (1 or 2). Huddle sends mono whatever this says (see
    /// [`AudioConfigPreset`]); 2 marks a music preset.
    pub channels: u8,
    /// Music rather than voice: the encoder's `AUDIO` application instead of `VOIP`.
    pub music: bool,
    /// Opus in-band FEC (voice only: each packet also carries a coarse copy of the frame
    /// before it).
    pub fec: bool,
    /// The FEC loss hint on a clean network, in percent (0 to 50): the floor that the hint
    /// comes back to. The default 2 % keeps a little FEC for losses the publisher cannot see
    /// (those on the players' downlinks, see [`AudioAdapter`]); measured offline on the speech
    /// sample at 48 kbit/s: wideband PESQ 4.11, against 4.15 without FEC and 3.92 with 10 %.
    pub loss_hint_percent: u8,
    /// Follow the receivers' reports ([`AudioAdapter`]); `false` keeps these settings fixed.
    pub adaptive: bool,
    /// Send RED (RFC 2198 redundancy) when the connection negotiated it.
    pub red: bool,
}

impl AudioConfig {
    /// The settings of a preset.
    pub fn preset(preset: AudioConfigPreset) -> AudioConfig {
        let (bitrate, channels) = match preset {
            AudioConfigPreset::BasicQuality => (16_000, 1),
            AudioConfigPreset::StandardQuality => (48_000, 1),
            AudioConfigPreset::StandardQualityStereo => (56_000, 2),
            AudioConfigPreset::HighQuality => (128_000, 1),
            AudioConfigPreset::HighQualityStereo => (192_000, 2),
        };
        let music = channels == 2;
        AudioConfig {
            bitrate,
            channels,
            music,
            fec: !music,
            loss_hint_percent: if music { 0 } else { 2 },
            adaptive: true,
            red: true,
        }
    }

    /// Checks the ranges: bitrate 6 000..=510 000 bit/s, 1 or 2 channels, a loss hint of at
    /// most 50 %. Errors are [`MediaError::InvalidArgument`] (code 1000006).
    pub fn validate(&self) -> Result<()> {
        if !(6_000..=510_000).contains(&self.bitrate) {
            return Err(MediaError::InvalidArgument(format!(
                "audio bitrate must be 6000..=510000 bit/s, got {}",
                self.bitrate
            )));
        }
        if !(1..=2).contains(&self.channels) {
            return Err(MediaError::InvalidArgument(format!(
                "audio channels must be 1 or 2, got {}",
                self.channels
            )));
        }
        if self.loss_hint_percent > MAX_HINT {
            return Err(MediaError::InvalidArgument(format!(
                "the loss hint must be 0..={MAX_HINT} %, got {}",
                self.loss_hint_percent
            )));
        }
        Ok(())
    }
}

impl AudioConfig {
    /// The Opus encoder settings of the clean-network start (what
    /// [`AudioAdapter::settings`] gives before any report).
    ///
    /// ```
    /// let opus = huddle_media::AudioConfig::default().opus_config();
    /// assert_eq!((opus.bitrate, opus.fec, opus.packet_loss_percent), (48_000, true, 2));
    /// ```
    pub fn opus_config(&self) -> crate::OpusConfig {
        let start = AudioAdapter::new(self.clone()).settings();
        crate::OpusConfig {
            bitrate: start.bitrate,
            fec: start.fec,
            packet_loss_percent: start.packet_loss_percent,
            music: self.music,
            ..Default::default()
        }
    }
}

impl Default for AudioConfig {
    fn default() -> Self {
        AudioConfig::preset(AudioConfigPreset::default())
    }
}

/// What the encoder should use now (from [`AudioAdapter::settings`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct EncoderSettings {
    /// Target bitrate in bit/s.
    pub bitrate: u32,
    /// In-band FEC on.
    pub fec: bool,
    /// The FEC loss hint in percent.
    pub packet_loss_percent: u8,
    /// Wrap packets in RED.
    pub red: bool,
}

/// Highest loss hint, in percent (beyond, FEC cannot repair much more and takes the bits of
/// the audio itself).
const MAX_HINT: u8 = 50;
/// Reports remembered for stepping down (10 s): the hint and the bitrate only fall once the
/// loss has stayed lower for that long.
const HOLD: Duration = Duration::from_secs(10);
/// At most one step down per this long.
const STEP_DOWN_EVERY: Duration = Duration::from_secs(5);
/// A loss below this many percent above the hint does not raise it (the hysteresis band).
const RAISE_MARGIN: u8 = 1;
/// RTT this much above the lowest seen means queues are filling: loss with it is congestion.
const QUEUEING: Duration = Duration::from_millis(100);
/// Loss (percent) that, with queueing, counts as congestion.
const CONGESTION_LOSS: u8 = 5;

/// Moves the Opus encoder's FEC loss hint and bitrate with what receivers report (RTCP
/// receiver reports: fraction lost and round-trip time), sans-IO: fed with reports and time,
/// it gives [`EncoderSettings`]. No clock, no socket; tests drive it on virtual time.
///
/// - **A clean-network start.** The configured bitrate (48 kbit/s by default) and the floor
///   loss hint (2 %): within 0.05 wideband PESQ of Opus without FEC, while an isolated loss
///   on a leg the publisher cannot see (a player's downlink: the SFU's receiver reports to the
///   publisher tell only its uplink) is still repaired from the next packet.
/// - **Random loss** (the RTT steady): the hint rises at once to the reported loss (capped at
///   50 %) and the bitrate by 3 % per point of hint (at most +50 %) so that the FEC copy does
///   not take the bits of the audio (measured offline: 48 kbit/s with a 10 % hint scores PESQ
///   3.92, 64 kbit/s 4.12).
/// - **Congestion** (loss of 5 % or more while the RTT is 100 ms or more above the lowest
///   seen): the bitrate halves (not below 6 kbit/s) instead, since more bits would add to the
///   queue that loses them.
/// - **Hysteresis**: a report must exceed the hint by more than a point to raise it; the hint
///   and the bitrate step down only once every report of the last 10 s allows it, at most
///   once every 5 s, so a call with loss now and then does not flap.
/// - **RED** keeps its place: on whenever [`AudioConfig::red`] is (it is what repairs bursts
///   and the players' downlinks, which the publisher's reports do not show).
///
/// A config with `adaptive: false` gives its own settings whatever the reports say.
///
/// ```
/// use std::time::{Duration, Instant};
/// use huddle_media::{AudioAdapter, AudioConfig};
///
/// let t0 = Instant::now();
/// let mut adapter = AudioAdapter::new(AudioConfig::default());
/// assert_eq!((adapter.settings().bitrate, adapter.settings().packet_loss_percent), (48_000, 2));
/// // 20 % lost, RTT steady: more FEC and the bits to pay for it, at once.
/// adapter.on_report(t0, 0.20, Some(Duration::from_millis(40)));
/// assert_eq!(adapter.settings().packet_loss_percent, 20);
/// assert!(adapter.settings().bitrate > 48_000);
/// // Clean again: back to the start, but only after 10 s of clean reports.
/// for s in 1..=40 {
///     adapter.on_report(t0 + Duration::from_secs(s), 0.0, Some(Duration::from_millis(40)));
/// }
/// assert_eq!(adapter.settings().packet_loss_percent, 2);
/// assert_eq!(adapter.settings().bitrate, 48_000);
/// ```
#[derive(Debug, Clone)]
pub struct AudioAdapter {
    config: AudioConfig,
    /// The FEC loss hint in percent.
    hint: u8,
    /// Loss with queueing was reported in the last 10 s: the bitrate is halved.
    congested: bool,
    /// (time, loss in percent, congestion) of the recent reports, oldest first.
    recent: VecDeque<(Instant, u8, bool)>,
    last_step: Option<Instant>,
    min_rtt: Option<Duration>,
    /// The last cumulative counters (highest sequence number, packets lost).
    last_cumulative: Option<(u64, u64)>,
}

impl AudioAdapter {
    /// Starts at the clean-network settings of `config` (not validated here: see
    /// [`AudioConfig::validate`]; out-of-range values are clamped).
    pub fn new(config: AudioConfig) -> Self {
        AudioAdapter {
            hint: config.loss_hint_percent.min(MAX_HINT),
            config,
            congested: false,
            recent: VecDeque::new(),
            last_step: None,
            min_rtt: None,
            last_cumulative: None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &AudioConfig {
        &self.config
    }

    /// Takes a new configuration (the application changed it): starts again from its
    /// clean-network settings, keeping what it learnt of the RTT.
    pub fn set_config(&mut self, config: AudioConfig) {
        let min_rtt = self.min_rtt;
        let last = self.last_cumulative;
        *self = AudioAdapter::new(config);
        self.min_rtt = min_rtt;
        self.last_cumulative = last;
    }

    /// Takes one receiver report at `now`: its fraction lost (0.0 to 1.0, RTCP's 8-bit value
    /// divided by 256) and the round-trip time computed from it, if known.
    pub fn on_report(&mut self, now: Instant, fraction_lost: f32, rtt: Option<Duration>) {
        if !fraction_lost.is_finite() || !self.config.adaptive {
            return;
        }
        let loss = (fraction_lost.clamp(0.0, 1.0) * 100.0).round() as u8;
        if let Some(rtt) = rtt {
            self.min_rtt = Some(self.min_rtt.map_or(rtt, |m| m.min(rtt)));
        }
        let queueing = match (rtt, self.min_rtt) {
            (Some(rtt), Some(min)) => rtt >= min + QUEUEING,
            _ => false,
        };
        let congested = queueing && loss >= CONGESTION_LOSS;
        while self
            .recent
            .front()
            .is_some_and(|&(at, _, _)| now.saturating_duration_since(at) > HOLD)
        {
            self.recent.pop_front();
        }
        self.recent.push_back((now, loss, congested));

        let floor = self.config.loss_hint_percent.min(MAX_HINT);
        let wanted = loss.clamp(floor, MAX_HINT);
        if wanted > self.hint.saturating_add(RAISE_MARGIN) || (congested && !self.congested) {
            // Up at once.
            self.hint = self.hint.max(wanted);
            self.congested |= congested;
            self.last_step = Some(now);
            return;
        }
        // Down only as far as every report of the last 10 s allows, and not too often.
        let rested = self
            .last_step
            .is_none_or(|t| now.saturating_duration_since(t) >= STEP_DOWN_EVERY);
        if !rested {
            return;
        }
        let window_loss = self.recent.iter().map(|&(_, l, _)| l).max().unwrap_or(0);
        let window_congested = self.recent.iter().any(|&(_, _, c)| c);
        let mut stepped = false;
        let target = window_loss.clamp(floor, MAX_HINT);
        if target < self.hint {
            // Half of the way down per step (but at least a point).
            self.hint = (target + (self.hint - target) / 2).min(self.hint - 1).max(target);
            stepped = true;
        }
        if self.congested && !window_congested {
            self.congested = false;
            stepped = true;
        }
        if stepped {
            self.last_step = Some(now);
        }
    }

    /// Takes a report's cumulative counters instead (what str0m keeps from the last RTCP
    /// report block: the extended highest sequence number received and the packets lost so
    /// far), so it can be called with every stats event: a report that says nothing new (the
    /// same highest sequence number) is ignored, and the first one only sets the reference.
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use huddle_media::{AudioAdapter, AudioConfig};
    /// let t0 = Instant::now();
    /// let mut adapter = AudioAdapter::new(AudioConfig::default());
    /// adapter.on_cumulative(t0, 1_000, 3, None); // the reference
    /// adapter.on_cumulative(t0 + Duration::from_secs(1), 1_250, 53, None); // 50 of 250 lost
    /// assert_eq!(adapter.settings().packet_loss_percent, 20);
    /// ```
    pub fn on_cumulative(&mut self, now: Instant, highest_seq: u64, lost: u64, rtt: Option<Duration>) {
        self.on_report_block(now, highest_seq, lost, None, rtt);
    }

    /// As [`AudioAdapter::on_cumulative`], with the reports' own fraction lost when there is
    /// one (0.0 to 1.0, averaged over the reports since the last call): the higher of the two
    /// counts. A forwarding server may report more than it lost itself — the loss of its
    /// players that can only repair with in-band FEC (Huddle's server does, as LiveKit's) —
    /// and the FEC should cover that too.
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use huddle_media::{AudioAdapter, AudioConfig};
    /// let t0 = Instant::now();
    /// let mut adapter = AudioAdapter::new(AudioConfig::default());
    /// adapter.on_report_block(t0, 1_000, 0, None, None); // the reference
    /// // Nothing lost upstream, but the reports say 12 %: a player downstream loses that.
    /// adapter.on_report_block(t0 + Duration::from_secs(1), 1_050, 0, Some(0.12), None);
    /// assert_eq!(adapter.settings().packet_loss_percent, 12);
    /// ```
    pub fn on_report_block(
        &mut self,
        now: Instant,
        highest_seq: u64,
        lost: u64,
        fraction_lost: Option<f32>,
        rtt: Option<Duration>,
    ) {
        let last = self.last_cumulative.replace((highest_seq, lost));
        let reported = fraction_lost.filter(|f| f.is_finite()).unwrap_or(0.0);
        let Some((last_seq, last_lost)) = last else {
            // The counters need a reference; a report's own fraction does not.
            if reported > 0.0 {
                self.on_report(now, reported, rtt);
            }
            return;
        };
        if highest_seq <= last_seq {
            return;
        }
        let expected = (highest_seq - last_seq) as f32;
        let counted = lost.saturating_sub(last_lost) as f32 / expected;
        self.on_report(now, counted.max(reported), rtt);
    }

    /// The encoder settings for now.
    pub fn settings(&self) -> EncoderSettings {
        let base = self.config.bitrate.clamp(6_000, 510_000);
        let bitrate = if !self.config.adaptive {
            base
        } else if self.congested {
            (base / 2).max(6_000)
        } else if self.config.fec {
            // 3 % more per point of hint above the floor, at most +50 %.
            let extra = u32::from(self.hint.saturating_sub(self.config.loss_hint_percent)) * 3;
            (u64::from(base) * u64::from(100 + extra.min(50)) / 100).min(510_000) as u32
        } else {
            base
        };
        EncoderSettings {
            bitrate,
            fec: self.config.fec,
            packet_loss_percent: if self.config.fec { self.hint } else { 0 },
            red: self.config.red,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RTT: Option<Duration> = Some(Duration::from_millis(50));

    fn secs(t0: Instant, s: u64) -> Instant {
        t0 + Duration::from_secs(s)
    }

    #[test]
    fn presets_follow_the_hosted_sdks() {
        let rates: Vec<u32> = [
            AudioConfigPreset::BasicQuality,
            AudioConfigPreset::StandardQuality,
            AudioConfigPreset::StandardQualityStereo,
            AudioConfigPreset::HighQuality,
            AudioConfigPreset::HighQualityStereo,
        ]
        .into_iter()
        .map(|p| AudioConfig::preset(p).bitrate)
        .collect();
        assert_eq!(rates, [16_000, 48_000, 56_000, 128_000, 192_000]);
        let music = AudioConfig::preset(AudioConfigPreset::HighQualityStereo);
        assert!(music.music && !music.fec && music.channels == 2);
        for p in [
            AudioConfigPreset::BasicQuality,
            AudioConfigPreset::HighQualityStereo,
        ] {
            AudioConfig::preset(p).validate().unwrap();
        }
    }

    #[test]
    fn bad_configs_are_numbered_errors() {
        for edit in [
            (|c: &mut AudioConfig| c.bitrate = 5_999) as fn(&mut AudioConfig),
            |c| c.bitrate = 600_000,
            |c| c.channels = 0,
            |c| c.channels = 3,
            |c| c.loss_hint_percent = 51,
        ] {
            let mut c = AudioConfig::default();
            edit(&mut c);
            assert_eq!(c.validate().unwrap_err().code(), 1_000_006, "{c:?}");
        }
    }

    #[test]
    fn a_clean_network_keeps_the_clean_settings() {
        let t0 = Instant::now();
        let mut a = AudioAdapter::new(AudioConfig::default());
        let start = a.settings();
        assert_eq!(
            (start.bitrate, start.fec, start.packet_loss_percent, start.red),
            (48_000, true, 2, true)
        );
        for s in 0..60 {
            a.on_report(secs(t0, s), 0.0, RTT);
            assert_eq!(a.settings(), start);
        }
    }

    #[test]
    fn random_loss_raises_fec_and_bitrate_at_once_and_they_come_back_slowly() {
        let t0 = Instant::now();
        let mut a = AudioAdapter::new(AudioConfig::default());
        a.on_report(t0, 0.10, RTT);
        assert_eq!(a.settings().packet_loss_percent, 10);
        assert_eq!(a.settings().bitrate, 48_000 * 124 / 100);
        // Clean reports: nothing for 10 s, then halfway steps at most every 5 s.
        let mut hints = Vec::new();
        for s in 1..=40 {
            a.on_report(secs(t0, s), 0.0, RTT);
            hints.push(a.settings().packet_loss_percent);
        }
        assert!(hints[..9].iter().all(|&h| h == 10), "{hints:?}");
        let changes = hints.windows(2).filter(|w| w[0] != w[1]).count();
        assert!(changes <= 4, "{hints:?}");
        assert_eq!(*hints.last().unwrap(), 2);
        assert_eq!(a.settings().bitrate, 48_000);
    }

    #[test]
    fn loss_that_comes_and_goes_does_not_flap() {
        let t0 = Instant::now();
        let mut a = AudioAdapter::new(AudioConfig::default());
        let mut changes = 0;
        let mut last = a.settings();
        // 8 % lost every third report, clean otherwise, for two minutes.
        for s in 0..120 {
            let loss = if s % 3 == 0 { 0.08 } else { 0.0 };
            a.on_report(secs(t0, s), loss, RTT);
            if a.settings() != last {
                changes += 1;
                last = a.settings();
            }
        }
        assert_eq!(changes, 1, "{last:?}");
        assert_eq!(last.packet_loss_percent, 8);
        // Jitter of a point around the hint does not move it either.
        a.on_report(secs(t0, 121), 0.09, RTT);
        assert_eq!(a.settings().packet_loss_percent, 8);
    }

    #[test]
    fn loss_with_a_growing_rtt_is_congestion_and_lowers_the_bitrate() {
        let t0 = Instant::now();
        let mut a = AudioAdapter::new(AudioConfig::default());
        a.on_report(t0, 0.0, Some(Duration::from_millis(40)));
        a.on_report(secs(t0, 1), 0.06, Some(Duration::from_millis(200)));
        assert_eq!(a.settings().bitrate, 24_000);
        assert_eq!(a.settings().packet_loss_percent, 6);
        // Queues drain: the bitrate comes back once 10 s of reports are clean of congestion.
        for s in 2..=11 {
            a.on_report(secs(t0, s), 0.0, Some(Duration::from_millis(45)));
            assert_eq!(a.settings().bitrate, 24_000, "at {s} s");
        }
        for s in 12..=20 {
            a.on_report(secs(t0, s), 0.0, Some(Duration::from_millis(45)));
        }
        assert!(a.settings().bitrate >= 48_000);
    }

    #[test]
    fn fixed_configs_and_music_ignore_or_skip_fec() {
        let t0 = Instant::now();
        let fixed = AudioConfig {
            adaptive: false,
            bitrate: 32_000,
            loss_hint_percent: 10,
            ..Default::default()
        };
        let mut a = AudioAdapter::new(fixed);
        a.on_report(t0, 0.4, RTT);
        assert_eq!(
            (a.settings().bitrate, a.settings().packet_loss_percent),
            (32_000, 10)
        );

        let mut m = AudioAdapter::new(AudioConfig::preset(AudioConfigPreset::HighQualityStereo));
        m.on_report(t0, 0.2, RTT);
        let s = m.settings();
        assert_eq!(
            (s.bitrate, s.fec, s.packet_loss_percent, s.red),
            (192_000, false, 0, true)
        );
    }

    #[test]
    fn cumulative_counters_give_the_loss_between_reports() {
        let t0 = Instant::now();
        let mut a = AudioAdapter::new(AudioConfig::default());
        a.on_cumulative(t0, 1_000, 0, RTT);
        a.on_cumulative(secs(t0, 1), 1_000, 0, RTT); // nothing new
        a.on_cumulative(secs(t0, 2), 1_100, 30, RTT);
        assert_eq!(a.settings().packet_loss_percent, 30);
    }
}
