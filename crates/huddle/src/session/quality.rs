//! Quality of the streams and of the network, sans IO: the media tasks' counters and the
//! signaling arrivals in, with the time; quality levels, MOS estimates and the `Die` rule out.
//!
//! The session owns one [`Monitor`] and asks it, at its timers, for the events to deliver:
//! every [`STREAM_INTERVAL`] the publisher's and players' quality, every [`NETWORK_INTERVAL`]
//! this user's network levels (to the app and, as `network_quality`, to the server, which
//! relays them to the room) and the other users' last reported levels. Nothing arriving (media,
//! RTCP, STUN or signaling) for [`DIE_AFTER`] makes this user's levels `Die` at once; the first
//! arrival after that brings them back at once.
//!
//! ZEGO Express documents its intervals (3 s, 2 s) and its levels, not its thresholds; those
//! here are ours (`docs/quality.md`, "Quality events"), and `huddle.js` uses the same ones
//! (`crate::web_tables`).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use huddle_proto::{StreamId, StreamQualityLevel as Level, UserId};

use crate::event::{PlayStreamQuality, PublishStreamQuality};
use crate::media::{PlaySample, PublishSample};

/// Stream quality events, this often (ZEGO's `onPublisherQualityUpdate` interval).
pub(crate) const STREAM_INTERVAL: Duration = Duration::from_secs(3);
/// Network quality events and reports, this often (ZEGO's `onNetworkQuality` interval).
pub(crate) const NETWORK_INTERVAL: Duration = Duration::from_secs(2);
/// Nothing received for this long: `Die`.
pub(crate) const DIE_AFTER: Duration = Duration::from_secs(3);
/// Another user's report this late (one report missed, with slack) makes its levels `Unknown`…
pub(crate) const REMOTE_UNKNOWN_AFTER: Duration = Duration::from_secs(3);
/// … this late (three reports missed) `Die`; then the user is forgotten until it reports again.
pub(crate) const REMOTE_DIE_AFTER: Duration = Duration::from_secs(6);
/// Other users' levels kept at most (a room's size is bounded by the server; this bounds what a
/// misbehaving server could make us keep).
const REMOTE_MAX: usize = 1000;
/// Counter samples kept per stream (one a second; a window needs at most `STREAM_INTERVAL`).
const HISTORY: usize = 8;

/// The thresholds of the levels: a measure below the first is `Excellent`, below the second
/// `Good`, below the third `Medium`, else `Bad`; a stream's level is its worst measure's.
/// (loss fraction, RTT ms, jitter ms).
pub(crate) const LOSS_LEVELS: [f64; 3] = [0.02, 0.05, 0.15];
pub(crate) const RTT_LEVELS: [f64; 3] = [100.0, 200.0, 400.0];
pub(crate) const JITTER_LEVELS: [f64; 3] = [20.0, 50.0, 100.0];

fn grade(x: f64, limits: [f64; 3]) -> u8 {
    limits.iter().take_while(|l| x >= **l).count() as u8
}

/// The level of a path with this loss (fraction), RTT and jitter (ms).
pub(crate) fn level_of(loss: f64, rtt_ms: f64, jitter_ms: f64) -> Level {
    let worst = grade(loss, LOSS_LEVELS)
        .max(grade(rtt_ms, RTT_LEVELS))
        .max(grade(jitter_ms, JITTER_LEVELS));
    [Level::Excellent, Level::Good, Level::Medium, Level::Bad][usize::from(worst)]
}

/// A listening-quality estimate (MOS, 1.0–4.5) by the ITU-T G.107 E-model, simplified as is
/// usual for VoIP monitoring: the delay impairment from the mouth-to-ear delay `delay_ms`, and
/// the loss impairment from the fraction of frames lost after recovery, with a burst robustness
/// of 10 for Opus with concealment (no codec impairment at zero loss: Opus wideband).
pub(crate) fn mos(delay_ms: f64, loss: f64) -> f64 {
    let d = delay_ms.max(0.0);
    let id = 0.024 * d + if d > 177.3 { 0.11 * (d - 177.3) } else { 0.0 };
    let p = (loss * 100.0).clamp(0.0, 100.0);
    let ie = 95.0 * p / (p + 10.0);
    let r = (93.2 - id - ie).clamp(0.0, 100.0);
    let m = 1.0 + 0.035 * r + 7.0e-6 * r * (r - 60.0) * (100.0 - r);
    m.clamp(1.0, 4.5)
}

fn kbps(bytes: u64, over: Duration) -> f64 {
    if over.is_zero() {
        0.0
    } else {
        bytes as f64 * 8.0 / over.as_secs_f64() / 1000.0
    }
}

/// The samples of one stream's connection.
#[derive(Debug)]
struct Track<S> {
    history: VecDeque<(Instant, S)>,
    /// When the stream started (or its connection was replaced): a stream that never received
    /// anything is `Die` `DIE_AFTER` after it.
    since: Instant,
    /// Its last event said `Die`: the next arrival brings an event at once.
    dead: bool,
}

impl<S: Copy> Track<S> {
    fn new(now: Instant) -> Self {
        Track {
            history: VecDeque::new(),
            since: now,
            dead: false,
        }
    }

    fn push(&mut self, now: Instant, s: S) {
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back((now, s));
    }

    /// When its connection last received anything (its start before that).
    fn last_rx(&self) -> Instant
    where
        S: LastRx,
    {
        self.history
            .back()
            .and_then(|(_, s)| s.last_rx())
            .unwrap_or(self.since)
    }

    /// Whether its event is due now, between the regular ones: it has just gone silent for
    /// `DIE_AFTER` (`Die` at once, as this user's network levels are), or it received again
    /// after a `Die` (its levels back at once).
    fn due_now(&self, now: Instant) -> bool
    where
        S: LastRx,
    {
        let silent = now.saturating_duration_since(self.last_rx()) >= DIE_AFTER;
        silent != self.dead
    }

    /// When [`Self::due_now`] can next become true without a new sample.
    fn next_due(&self) -> Option<Instant>
    where
        S: LastRx,
    {
        (!self.dead).then(|| self.last_rx() + DIE_AFTER)
    }

    /// The oldest sample within `span` before the newest, and the newest.
    fn window(&self, span: Duration) -> Option<((Instant, S), (Instant, S))> {
        let newest = *self.history.back()?;
        let oldest = self
            .history
            .iter()
            .find(|(t, _)| newest.0.saturating_duration_since(*t) <= span)
            .copied()?;
        Some((oldest, newest))
    }
}

/// A media task's sample: when its connection last received anything.
trait LastRx {
    fn last_rx(&self) -> Option<Instant>;
}

impl LastRx for PublishSample {
    fn last_rx(&self) -> Option<Instant> {
        self.last_rx
    }
}

impl LastRx for PlaySample {
    fn last_rx(&self) -> Option<Instant> {
        self.last_rx
    }
}

/// Another user's last report.
#[derive(Debug)]
struct Remote {
    upstream: Level,
    downstream: Level,
    at: Instant,
}

/// The quality state of one room session. See the module docs.
#[derive(Debug)]
pub(crate) struct Monitor {
    publisher: Option<(StreamId, Track<PublishSample>)>,
    players: BTreeMap<StreamId, Track<PlaySample>>,
    remote: BTreeMap<UserId, Remote>,
    /// The last time anything arrived (a signaling message, or what a media task last received).
    last_rx: Option<Instant>,
    /// `Die` was reported for this user and nothing arrived since.
    dead: bool,
    next_stream: Option<Instant>,
    next_network: Option<Instant>,
    /// The signaling round trip of the last answered report.
    signaling_rtt: Option<Duration>,
    /// A stream whose last event said `Die` received again: its event is due then.
    back_at: Option<Instant>,
}

/// What the session should do at a quality timer.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Due {
    pub(crate) publisher: Option<(StreamId, PublishStreamQuality)>,
    pub(crate) players: Vec<(StreamId, PlayStreamQuality)>,
    /// This user's levels, to report to the app (and to the server when `report`).
    pub(crate) own: Option<(Level, Level)>,
    pub(crate) report: bool,
    pub(crate) remote: Vec<(UserId, Level, Level)>,
}

impl Monitor {
    pub(crate) fn new() -> Monitor {
        Monitor {
            publisher: None,
            players: BTreeMap::new(),
            remote: BTreeMap::new(),
            last_rx: None,
            dead: false,
            next_stream: None,
            next_network: None,
            signaling_rtt: None,
            back_at: None,
        }
    }

    fn active(&self) -> bool {
        self.publisher.is_some() || !self.players.is_empty()
    }

    /// Starts the timers when the first stream starts.
    fn arm(&mut self, now: Instant) {
        self.next_stream.get_or_insert(now + STREAM_INTERVAL);
        self.next_network.get_or_insert(now + NETWORK_INTERVAL);
        self.last_rx.get_or_insert(now);
    }

    pub(crate) fn stop_publishing(&mut self) {
        self.publisher = None;
    }

    pub(crate) fn stop_playing(&mut self, stream_id: &StreamId) {
        self.players.remove(stream_id);
    }

    /// Forgets every stream (the room ended).
    pub(crate) fn stop_all(&mut self) {
        self.publisher = None;
        self.players.clear();
        self.dead = false;
    }

    /// Something arrived at `at`. Returns this user's levels when they come back from `Die`
    /// (to be reported at once).
    pub(crate) fn arrived(&mut self, at: Instant, now: Instant) -> Option<(Level, Level)> {
        if self.last_rx.is_none_or(|t| at > t) {
            self.last_rx = Some(at);
        }
        if self.dead && now.saturating_duration_since(at) < DIE_AFTER {
            self.dead = false;
            return self.active().then(|| self.own_levels(now));
        }
        None
    }

    /// The publisher's counters of the last second. The first sample of a stream starts its
    /// track (and the timers); counters that went back mean a new media connection: its
    /// track starts over.
    pub(crate) fn publish_sample(
        &mut self,
        stream_id: &StreamId,
        s: PublishSample,
        now: Instant,
    ) -> Option<(Level, Level)> {
        let same = self.publisher.as_ref().is_some_and(|(id, _)| id == stream_id);
        if !same {
            self.publisher = Some((stream_id.clone(), Track::new(now)));
        }
        let (_, track) = self.publisher.as_mut().expect("set above");
        if track
            .history
            .back()
            .is_some_and(|(_, p)| s.audio_bytes < p.audio_bytes || s.expected < p.expected)
        {
            *track = Track::new(now);
        }
        track.push(now, s);
        if track.due_now(now) && track.dead {
            self.back_at = Some(now);
        }
        self.arm(now);
        s.last_rx.and_then(|at| self.arrived(at, now))
    }

    /// A player's counters of the last second (as [`Self::publish_sample`]).
    pub(crate) fn play_sample(
        &mut self,
        stream_id: &StreamId,
        s: PlaySample,
        now: Instant,
    ) -> Option<(Level, Level)> {
        let track = self
            .players
            .entry(stream_id.clone())
            .or_insert_with(|| Track::new(now));
        if track
            .history
            .back()
            .is_some_and(|(_, p)| s.audio_bytes < p.audio_bytes || s.played < p.played)
        {
            *track = Track::new(now);
        }
        track.push(now, s);
        if track.due_now(now) && track.dead {
            self.back_at = Some(now);
        }
        self.arm(now);
        s.last_rx.and_then(|at| self.arrived(at, now))
    }

    /// A report of ours was answered after `rtt`.
    pub(crate) fn answered(&mut self, rtt: Duration) {
        self.signaling_rtt = Some(rtt);
    }

    /// Another user's levels, relayed by the server.
    pub(crate) fn remote_report(&mut self, user: UserId, upstream: Level, downstream: Level, now: Instant) {
        if self.remote.len() >= REMOTE_MAX && !self.remote.contains_key(&user) {
            return;
        }
        self.remote.insert(
            user,
            Remote {
                upstream,
                downstream,
                at: now,
            },
        );
    }

    /// The user left: its levels are no longer reported.
    pub(crate) fn remote_left(&mut self, user: &UserId) {
        self.remote.remove(user);
    }

    /// Whether nothing arrived for `DIE_AFTER` at `now`.
    fn silent(&self, now: Instant) -> bool {
        self.last_rx
            .is_some_and(|t| now.saturating_duration_since(t) >= DIE_AFTER)
    }

    fn rtt(&self) -> Option<Duration> {
        let published = self
            .publisher
            .as_ref()
            .and_then(|(_, t)| t.history.back())
            .and_then(|(_, s)| s.rtt);
        published.or(self.signaling_rtt)
    }

    fn publish_quality(&self, track: &Track<PublishSample>, now: Instant) -> PublishStreamQuality {
        let mut q = PublishStreamQuality::default();
        let last_rx = track
            .history
            .back()
            .and_then(|(_, s)| s.last_rx)
            .unwrap_or(track.since);
        let dead = now.saturating_duration_since(last_rx) >= DIE_AFTER;
        let Some(((t0, a), (t1, b))) = track.window(STREAM_INTERVAL) else {
            q.level = if dead { Level::Die } else { Level::Unknown };
            return q;
        };
        let dt = t1.saturating_duration_since(t0);
        q.rtt = b.rtt.map_or(0, |r| r.as_millis() as u32);
        q.jitter = b.jitter_ms;
        q.total_send_bytes = b.audio_bytes + b.video_bytes;
        q.audio_kbps = kbps(b.audio_bytes.saturating_sub(a.audio_bytes), dt);
        q.video_kbps = kbps(b.video_bytes.saturating_sub(a.video_bytes), dt);
        // Counted from the window's first sample with a receiver report: `expected` is the
        // server's extended highest sequence number, which starts where the publisher's
        // sequence numbers start (at random), not at zero.
        let base = track
            .history
            .iter()
            .filter(|(t, s)| *t >= t0 && *t <= t1 && s.expected > 0)
            .map(|(_, s)| s)
            .next()
            .unwrap_or(&b);
        let expected = b.expected.saturating_sub(base.expected);
        let lost = b.lost.saturating_sub(base.lost);
        let measured = expected > 0;
        if measured {
            q.packet_lost_rate = (lost as f64 / expected as f64).min(1.0);
        }
        q.level = if dead {
            Level::Die
        } else if measured || b.rtt.is_some() {
            level_of(q.packet_lost_rate, f64::from(q.rtt), f64::from(q.jitter))
        } else {
            Level::Unknown
        };
        if q.level != Level::Die && q.level != Level::Unknown {
            // What the server hears: half the round trip, one frame, a jitter allowance.
            let delay = f64::from(q.rtt) / 2.0 + 20.0 + 2.0 * f64::from(q.jitter);
            q.mos = mos(delay, q.packet_lost_rate);
        }
        q
    }

    fn play_quality(&self, track: &Track<PlaySample>, now: Instant) -> PlayStreamQuality {
        let mut q = PlayStreamQuality::default();
        let last_rx = track
            .history
            .back()
            .and_then(|(_, s)| s.last_rx)
            .unwrap_or(track.since);
        let dead = now.saturating_duration_since(last_rx) >= DIE_AFTER;
        let Some(((t0, a), (t1, b))) = track.window(STREAM_INTERVAL) else {
            q.level = if dead { Level::Die } else { Level::Unknown };
            return q;
        };
        let dt = t1.saturating_duration_since(t0);
        q.rtt = self.rtt().map_or(0, |r| r.as_millis() as u32);
        q.jitter = b.jitter.as_millis() as u32;
        q.delay = b.delay.as_millis() as u32;
        q.total_recv_bytes = b.audio_bytes + b.video_bytes;
        q.audio_kbps = kbps(b.audio_bytes.saturating_sub(a.audio_bytes), dt);
        q.video_kbps = kbps(b.video_bytes.saturating_sub(a.video_bytes), dt);
        // The loss of each RTCP interval in the window, averaged.
        let losses: Vec<f64> = track
            .history
            .iter()
            .filter(|(t, _)| *t > t0 && *t <= t1)
            .filter_map(|(_, s)| s.loss.map(f64::from))
            .collect();
        if !losses.is_empty() {
            q.packet_lost_rate = (losses.iter().sum::<f64>() / losses.len() as f64).clamp(0.0, 1.0);
        }
        let played = b.played.saturating_sub(a.played);
        let concealed = b.concealed.saturating_sub(a.concealed);
        let frames = played + concealed;
        if frames > 0 {
            q.audio_concealed_rate = concealed as f64 / frames as f64;
        }
        q.level = if dead {
            Level::Die
        } else if frames > 0 || !losses.is_empty() {
            level_of(q.packet_lost_rate, f64::from(q.rtt), f64::from(q.jitter))
        } else {
            Level::Unknown
        };
        if frames > 0 && q.level != Level::Die {
            // Mouth to ear: half the round trip, one frame, the jitter buffer's delay.
            let delay = f64::from(q.rtt) / 2.0 + 20.0 + f64::from(q.delay);
            q.mos = mos(delay, q.audio_concealed_rate);
        }
        q
    }

    /// This user's (upstream, downstream) levels now: `Die` both when nothing arrived for
    /// `DIE_AFTER`; else the publisher's level up and the worst player's down (`Unknown`
    /// without one, or before its first measure).
    fn own_levels(&self, now: Instant) -> (Level, Level) {
        if self.silent(now) {
            return (Level::Die, Level::Die);
        }
        let known = |l: Level| (l != Level::Die).then_some(l);
        let up = self
            .publisher
            .as_ref()
            .map(|(_, t)| self.publish_quality(t, now).level)
            .and_then(known)
            .unwrap_or(Level::Unknown);
        let down = self
            .players
            .values()
            .map(|t| self.play_quality(t, now).level)
            .filter(|l| *l != Level::Unknown && *l != Level::Die)
            .max()
            .unwrap_or(Level::Unknown);
        (up, down)
    }

    /// The next instant the monitor needs the time.
    pub(crate) fn next_timeout(&self) -> Option<Instant> {
        if !self.active() && self.remote.is_empty() {
            return None;
        }
        let die = (!self.dead && self.active())
            .then(|| self.last_rx.map(|t| t + DIE_AFTER))
            .flatten();
        // A stream going silent (its `Die` at once), or back after one (`back_at`).
        let silent = self
            .publisher
            .iter()
            .filter_map(|(_, t)| t.next_due())
            .chain(self.players.values().filter_map(Track::next_due))
            .min();
        [
            self.next_stream.filter(|_| self.active()),
            self.next_network,
            die,
            silent.filter(|_| self.active()),
            self.back_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// What is due at `now` (timers that are not due are left alone).
    pub(crate) fn poll(&mut self, now: Instant) -> Due {
        let mut due = Due::default();
        let active = self.active();
        if !active && self.remote.is_empty() {
            self.next_stream = None;
            self.next_network = None;
            return due;
        }
        let regular = active && self.next_stream.is_some_and(|t| now >= t);
        if regular {
            self.next_stream = Some(now + STREAM_INTERVAL);
        }
        self.back_at = None;
        // Every stream's event at the regular interval; between, the event of a stream that
        // has just gone silent for `DIE_AFTER` or come back after that (ZEGO reports only at
        // its 3 s interval; `docs/quality.md`, "Quality events").
        due.publisher = self
            .publisher
            .as_ref()
            .filter(|(_, t)| regular || t.due_now(now))
            .map(|(id, t)| (id.clone(), self.publish_quality(t, now)));
        due.players = self
            .players
            .iter()
            .filter(|(_, t)| regular || t.due_now(now))
            .map(|(id, t)| (id.clone(), self.play_quality(t, now)))
            .collect();
        if let (Some((_, q)), Some((_, t))) = (&due.publisher, &mut self.publisher) {
            t.dead = q.level == Level::Die;
        }
        for (id, q) in &due.players {
            if let Some(t) = self.players.get_mut(id) {
                t.dead = q.level == Level::Die;
            }
        }
        let network_due = self.next_network.is_some_and(|t| now >= t);
        if network_due {
            self.next_network = Some(now + NETWORK_INTERVAL);
            let mut gone = Vec::new();
            for (user, r) in &self.remote {
                let age = now.saturating_duration_since(r.at);
                let (up, down) = if age > REMOTE_DIE_AFTER {
                    gone.push(user.clone());
                    (Level::Die, Level::Die)
                } else if age > REMOTE_UNKNOWN_AFTER {
                    (Level::Unknown, Level::Unknown)
                } else {
                    (r.upstream, r.downstream)
                };
                due.remote.push((user.clone(), up, down));
            }
            for user in gone {
                self.remote.remove(&user);
            }
        }
        if active {
            let silent = self.silent(now);
            if silent && !self.dead {
                // Reported at once, not at the next tick.
                self.dead = true;
                due.own = Some((Level::Die, Level::Die));
            } else if network_due {
                due.own = Some(self.own_levels(now));
                due.report = !silent;
            }
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_follow_the_worst_measure() {
        assert_eq!(level_of(0.0, 20.0, 5.0), Level::Excellent);
        assert_eq!(level_of(0.03, 20.0, 5.0), Level::Good);
        assert_eq!(level_of(0.0, 250.0, 5.0), Level::Medium);
        assert_eq!(level_of(0.0, 20.0, 150.0), Level::Bad);
        assert_eq!(level_of(0.3, 20.0, 5.0), Level::Bad);
    }

    #[test]
    fn mos_falls_with_loss_and_delay() {
        let clean = mos(40.0, 0.0);
        assert!(clean > 4.3 && clean <= 4.5, "{clean}");
        assert!(mos(40.0, 0.05) < clean);
        assert!(mos(40.0, 0.05) > mos(40.0, 0.2));
        assert!(mos(400.0, 0.0) < mos(100.0, 0.0));
        assert_eq!(mos(40.0, 1.0), 1.0);
    }

    /// A published stream whose connection stops receiving gets its `Die` event 3 s after
    /// the last arrival, between the 3 s events, and its levels back at once with the first
    /// sample that shows an arrival; other users' events are not disturbed.
    #[test]
    fn a_silent_stream_reports_die_at_once_and_comes_back_at_once() {
        let t0 = Instant::now();
        let id = StreamId::new("s").expect("a stream ID");
        let mut m = Monitor::new();
        let sample = |n: u64, at: Instant| PublishSample {
            audio_bytes: n * 1000,
            expected: n * 50,
            rtt: Some(Duration::from_millis(100)),
            last_rx: Some(at),
            ..PublishSample::default()
        };
        let mut events = Vec::new();
        // Samples every second; the connection receives until 4 s, then nothing until 10 s.
        // The regular events come at 3, 6, 9, 12 s.
        for n in 0..14u64 {
            let at = t0 + Duration::from_secs(n);
            while let Some(t) = m.next_timeout().filter(|t| *t <= at) {
                if let Some((_, q)) = m.poll(t).publisher {
                    events.push((t - t0, q.level));
                }
            }
            let rx = if (5..10).contains(&n) {
                t0 + Duration::from_secs(4)
            } else {
                at
            };
            m.publish_sample(&id, sample(n, rx), at);
            while let Some(t) = m.next_timeout().filter(|t| *t <= at) {
                if let Some((_, q)) = m.poll(t).publisher {
                    events.push((t - t0, q.level));
                }
            }
        }
        let die: Vec<_> = events.iter().filter(|(_, l)| *l == Level::Die).collect();
        assert_eq!(
            die.first().map(|(t, _)| *t),
            Some(Duration::from_secs(7)),
            "Die 3 s after the last arrival, not at a 3 s tick: {events:?}"
        );
        let back = events
            .iter()
            .find(|(t, l)| *t >= Duration::from_secs(10) && *l != Level::Die)
            .map(|(t, _)| *t);
        assert_eq!(back, Some(Duration::from_secs(10)), "{events:?}");
        // Die is reported once, not at every poll, while the stream stays silent.
        let repeated = events
            .iter()
            .filter(|(t, l)| *l == Level::Die && *t < Duration::from_secs(9))
            .count();
        assert_eq!(repeated, 1, "{events:?}");
    }

    /// The first publish event's loss is counted from the first receiver report, not from
    /// zero: the server's extended highest sequence number starts where the publisher's
    /// random first sequence number does (it read 0.1 % for a 5 % loss, different in every
    /// process).
    #[test]
    fn the_publish_loss_counts_from_the_first_report() {
        let t0 = Instant::now();
        let id = StreamId::new("s").expect("a stream ID");
        let mut m = Monitor::new();
        // Connected at 0 s with no report yet; reports from 1 s: 50 packets a second from
        // sequence number 20 000, 5 % of them lost.
        let mut events = Vec::new();
        for n in 0..4u64 {
            let at = t0 + Duration::from_secs(n);
            let reported = n > 0;
            m.publish_sample(
                &id,
                PublishSample {
                    audio_bytes: n * 1000,
                    expected: if reported { 20_000 + n * 50 } else { 0 },
                    lost: if reported { n * 5 / 2 } else { 0 },
                    rtt: reported.then(|| Duration::from_millis(100)),
                    last_rx: Some(at),
                    ..PublishSample::default()
                },
                at,
            );
            while let Some(t) = m.next_timeout().filter(|t| *t <= at) {
                events.extend(m.poll(t).publisher.map(|(_, q)| q));
            }
        }
        let q = events.first().expect("the 3 s event");
        assert!(
            (q.packet_lost_rate - 0.05).abs() < 1e-9,
            "loss {} over the reports' 100 packets",
            q.packet_lost_rate
        );
    }
}
