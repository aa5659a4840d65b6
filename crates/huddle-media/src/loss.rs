//! The Opus encoder's packet-loss hint, from the loss the receiving side reports.

/// Follows the packet loss that RTCP receiver reports tell (their *fraction lost*), as the
/// percentage to give [`OpusEncoder::set_packet_loss_percent`](crate::OpusEncoder::set_packet_loss_percent),
/// so that the in-band FEC is as strong as the network needs: more redundancy when packets
/// are lost, more bits for the audio itself when they are not.
///
/// - It rises at once to a report's loss (a burst of loss needs FEC now) and falls slowly
///   (a quarter of the way towards the report per report, about one a second), so that one
///   clean second in a lossy call does not switch FEC off.
/// - It never goes below `floor` (default 2 %): libopus only produces FEC with a hint above 0,
///   and the first loss of a clean call is then still recoverable. It never goes above 50 %.
/// - [`LossHint::on_report`] returns the new percentage only when it changed (the encoder is
///   not reconfigured for nothing).
///
/// ```
/// use huddle_media::LossHint;
/// let mut hint = LossHint::new(10);
/// assert_eq!(hint.on_report(0.30), Some(30)); // 30 % lost: at once
/// assert_eq!(hint.on_report(0.0), Some(23)); // then down slowly
/// assert_eq!(hint.percent(), 23);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct LossHint {
    /// The hint as a fraction (0.0 to 0.5).
    value: f32,
    floor: f32,
    /// What the encoder was last told, in percent.
    told: u8,
    /// The last cumulative report: (highest sequence number, packets lost).
    last_cumulative: Option<(u64, u64)>,
}

/// Highest hint given to the encoder, as a fraction.
const CEILING: f32 = 0.5;
/// Share of the way towards a lower report taken per report.
const RELEASE: f32 = 0.25;

impl LossHint {
    /// Starts at `initial_percent` (what the encoder was created with; Huddle's default is 10).
    pub fn new(initial_percent: u8) -> Self {
        let value = (f32::from(initial_percent) / 100.0).clamp(0.0, CEILING);
        LossHint {
            value,
            floor: 0.02,
            told: initial_percent.min(50),
            last_cumulative: None,
        }
    }

    /// Sets the lowest hint in percent (0 lets FEC switch off on a clean network).
    pub fn with_floor(mut self, percent: u8) -> Self {
        self.floor = (f32::from(percent) / 100.0).clamp(0.0, CEILING);
        self
    }

    /// Takes one report's fraction lost (0.0 to 1.0; RTCP's 8-bit value divided by 256).
    /// Returns the new percentage when it differs from the last one returned.
    pub fn on_report(&mut self, fraction_lost: f32) -> Option<u8> {
        let reported = if fraction_lost.is_finite() {
            fraction_lost.clamp(0.0, 1.0)
        } else {
            return None;
        };
        self.value = if reported >= self.value {
            reported
        } else {
            self.value - (self.value - reported) * RELEASE
        }
        .clamp(self.floor, CEILING);
        let percent = self.percent();
        (percent != self.told).then(|| {
            self.told = percent;
            percent
        })
    }

    /// Takes a report's cumulative counters instead: the extended highest sequence number
    /// received and the cumulative number of packets lost (what an RTCP report block carries,
    /// and what str0m keeps from the last one). The loss is that of the packets between this
    /// report and the previous one; a report that says nothing new (same highest sequence
    /// number) is ignored, so it can be called with every stats event. The first report only
    /// sets the reference.
    ///
    /// ```
    /// use huddle_media::LossHint;
    /// let mut hint = LossHint::new(10);
    /// assert_eq!(hint.on_cumulative(1_000, 3), None); // the reference
    /// assert_eq!(hint.on_cumulative(1_250, 53), Some(20)); // 50 of 250 lost
    /// assert_eq!(hint.on_cumulative(1_250, 53), None); // the same report again
    /// ```
    pub fn on_cumulative(&mut self, highest_seq: u64, lost: u64) -> Option<u8> {
        let last = self.last_cumulative.replace((highest_seq, lost));
        let (last_seq, last_lost) = last?;
        if highest_seq <= last_seq {
            // The same report again, or a restarted stream (then this one is the reference).
            return None;
        }
        let expected = (highest_seq - last_seq) as f32;
        self.on_report(lost.saturating_sub(last_lost) as f32 / expected)
    }

    /// The current hint in percent.
    pub fn percent(&self) -> u8 {
        (self.value * 100.0).round() as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rises_at_once_and_falls_slowly_to_the_floor() {
        let mut h = LossHint::new(10);
        assert_eq!(h.on_report(0.0), Some(8));
        let mut last = 8;
        for _ in 0..30 {
            if let Some(p) = h.on_report(0.0) {
                assert!(p < last, "{p} after {last}");
                last = p;
            }
        }
        assert_eq!(h.percent(), 2, "the floor");
        assert_eq!(h.on_report(0.0), None, "unchanged: no reconfiguration");
        assert_eq!(h.on_report(0.15), Some(15));
        assert_eq!(h.on_report(0.05), Some(13));
        assert_eq!(h.on_report(0.9), Some(50), "the ceiling");
        assert_eq!(h.on_report(f32::NAN), None);
    }

    #[test]
    fn cumulative_counters_give_the_loss_between_reports() {
        let mut h = LossHint::new(10);
        assert_eq!(h.on_cumulative(500, 0), None);
        assert_eq!(h.on_cumulative(500, 0), None, "no new report");
        // 5 s of audio (250 packets), 75 lost: 30 %.
        assert_eq!(h.on_cumulative(750, 75), Some(30));
        // Duplicates can make the cumulative count go down: no loss, not a negative one.
        assert_eq!(h.on_cumulative(1_000, 70), Some(23));
        // A restarted stream (lower sequence number) resets the reference.
        assert_eq!(h.on_cumulative(10, 0), None);
        assert_eq!(h.on_cumulative(260, 0), Some(17));
    }

    #[test]
    fn a_floor_of_zero_lets_fec_switch_off() {
        let mut h = LossHint::new(10).with_floor(0);
        for _ in 0..40 {
            h.on_report(0.0);
        }
        assert_eq!(h.percent(), 0);
    }

    #[test]
    fn the_hint_is_accepted_by_the_encoder() {
        let mut enc = crate::OpusEncoder::new(crate::OpusConfig::default()).unwrap();
        let mut h = LossHint::new(enc.config().packet_loss_percent);
        for loss in [0.0, 0.3, 0.3, 0.0, 1.0] {
            if let Some(p) = h.on_report(loss) {
                enc.set_packet_loss_percent(p).unwrap();
            }
            assert_eq!(enc.config().packet_loss_percent, h.percent());
        }
    }
}
