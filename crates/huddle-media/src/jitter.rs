//! The adaptive audio jitter buffer (documented on [`JitterBuffer`]).

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use crate::audio::{FRAME_DURATION, FRAME_SAMPLES, SAMPLE_RATE};

/// Ring size: packets the buffer can hold, from the playout point on (1.28 s of audio). A
/// packet further ahead, or further behind, restarts the buffer.
const CAPACITY: usize = 64;
/// Packets whose transit feeds the delay estimate (2 s).
const WINDOW: usize = 100;
/// Of these, the last ones from whose fastest the minimum delay counts (0.5 s).
const RECENT: usize = 25;
/// One frame in microseconds.
const FRAME_US: i64 = 20_000;
/// The target shrinks by at most this much per second of arrivals (10 ms/s).
const SHRINK_PER_SEC_US: i64 = 10_000;
/// The delay may exceed the target by this much before a frame is dropped (1.5 frames: the
/// tick grid alone makes it vary by up to one frame).
const DROP_THRESHOLD_US: i64 = FRAME_US + FRAME_US / 2;
/// ... and only when that has lasted this many ticks (200 ms), so one late packet does not
/// cost a frame.
const DROP_HOLD_TICKS: u32 = 10;
/// A packet later than the percentile (a delay spike: a scheduling hiccup, a burst) keeps the
/// target at least at its delay for this long (10 s; then it shrinks as usual), so that the
/// next spike like it, which on a busy machine or a bursty link is likely, costs nothing.
const PEAK_HOLD_US: i64 = 10_000_000;
/// A spike holds the target at most this far above the percentile (80 ms): enough for the
/// scheduling hiccups of a busy machine, while one catastrophic stall (a suspended process, a
/// Wi-Fi scan) does not keep a quarter of a second of delay for the next 10 s.
const PEAK_CAP_US: i64 = 80_000;
/// Spikes remembered at most.
const PEAKS: usize = 16;
/// While the caller reports speech, an optional delay step (growing by less than a frame,
/// dropping a frame) is put off for at most this many ticks (5 s), waiting for a pause.
const DEFER_TICKS: u32 = 250;
/// A missing frame this close (µs) to the lateness of the last packet played is due by the
/// delay reached so far (see `due_now` in `tick`).
const DUE_TOLERANCE_US: i64 = 2_000;
/// After this long with an empty buffer the stream is taken as stopped: `pop` returns `None`
/// until packets come again.
const STALL_TICKS: u32 = 50;
/// A packet whose timestamp is more than 1 s off what its sequence number predicts (beyond
/// DTX gaps of 400 ms) restarts the buffer.
const TS_JUMP: i64 = SAMPLE_RATE as i64;
/// Two packets in a row, later than `max_delay` while the buffer is starved, whose transits
/// agree within this much (40 ms), are a lasting step of the delay (a path change, a sender's
/// stall after which its packets keep coming late): the buffer re-anchors on them.
const STEP_AGREE_US: i64 = 2 * FRAME_US;

/// Settings of a [`JitterBuffer`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct JitterConfig {
    /// Smallest delay (default 20 ms: one frame, so the packet after a lost one is here).
    pub min_delay: Duration,
    /// Largest delay (default 300 ms, at most 1 s); packets later than this are dropped.
    pub max_delay: Duration,
    /// Share of packets that should arrive in time, 0.5 to 1.0 (default 0.95).
    pub percentile: f64,
}

impl Default for JitterConfig {
    fn default() -> Self {
        JitterConfig {
            min_delay: FRAME_DURATION,
            max_delay: Duration::from_millis(300),
            percentile: 0.95,
        }
    }
}

/// What to play for one 20 ms tick.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Playout {
    /// The packet for this tick: decode it.
    Packet {
        /// Its RTP sequence number.
        seq: u16,
        /// Its RTP timestamp.
        rtp_ts: u32,
        /// The Opus payload.
        payload: Vec<u8>,
    },
    /// The packet for this tick is lost. Decode FEC from `fec_from` (the next packet, still in
    /// the buffer and handed out again on the next tick) when it is given, else conceal.
    Lost {
        /// Sequence number of the lost packet.
        seq: u16,
        /// The payload of the packet right after it, when it has arrived.
        fec_from: Option<Vec<u8>>,
    },
    /// No packet is due: the buffer is waiting for one or growing its delay. Conceal one
    /// frame; no sequence number is consumed.
    Expand,
}

impl fmt::Debug for Playout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Playout::Packet { seq, rtp_ts, payload } => {
                write!(
                    f,
                    "Packet {{ seq: {seq}, rtp_ts: {rtp_ts}, len: {} }}",
                    payload.len()
                )
            }
            Playout::Lost { seq, fec_from } => {
                write!(f, "Lost {{ seq: {seq}, fec: {} }}", fec_from.is_some())
            }
            Playout::Expand => f.write_str("Expand"),
        }
    }
}

/// What [`JitterBuffer::insert`] did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Inserted {
    /// Stored for playout.
    Buffered,
    /// Already received: dropped.
    Duplicate,
    /// Its playout time has passed: dropped.
    Late,
    /// It jumped far from the stream (sender restart, long pause): the buffer started over
    /// with it.
    Restarted,
    /// It carried no audio (an empty payload: an RTP padding-only packet, which Chromium sends
    /// on the audio stream to probe the bandwidth): its sequence number is skipped at playout,
    /// taking no time.
    Padding,
}

/// Counters and delays of a [`JitterBuffer`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct JitterStats {
    /// Delay the buffer aims at, above the fastest recent packet.
    pub target_delay: Duration,
    /// Delay of the last played packet above the fastest recent packet (the buffering delay
    /// the listener hears, without the network's own base delay).
    pub current_delay: Duration,
    /// The measured jitter: 95th percentile of the packets' delay above the fastest one.
    pub jitter: Duration,
    /// Packets held now.
    pub buffered: usize,
    /// Packets inserted (all of them, duplicates and late ones too).
    pub received: u64,
    /// Packets handed out as [`Playout::Packet`].
    pub played: u64,
    /// Packets that arrived after their playout time (also counted in `lost`).
    pub late: u64,
    /// Packets received twice.
    pub duplicates: u64,
    /// Frames reported as [`Playout::Lost`] (or skipped while catching up) whose loss is
    /// certain: a later packet arrived. Missing frames at the end of a stream do not count.
    pub lost: u64,
    /// Lost frames handed out with the next packet for FEC.
    pub fec_recovered: u64,
    /// Frames the caller had to conceal: `Lost` without FEC, and `Expand`.
    pub concealed: u64,
    /// Of `concealed`, the [`Playout::Expand`] ones.
    pub expanded: u64,
    /// Packets dropped to shrink the delay.
    pub discarded: u64,
    /// Ticks at which a delay step (an expand or a drop) was put off because the caller
    /// reported speech (see [`JitterBuffer::set_speech`]).
    pub deferred: u64,
    /// Times the buffer started over (see [`Inserted::Restarted`]).
    pub restarts: u64,
    /// Sequence numbers that carried no audio, skipped at playout without taking time:
    /// padding-only packets ([`Inserted::Padding`]) and gaps in the sequence numbers across
    /// which the timestamp did not advance.
    pub padding: u64,
}

#[derive(Debug)]
struct Slot {
    seq: i64,
    ts: i64,
    payload: Vec<u8>,
}

/// An adaptive audio jitter buffer, sans-IO.
///
/// Packets go in with [`JitterBuffer::insert`] as they arrive; every 20 ms the caller takes
/// out what to play with [`JitterBuffer::pop`]. Time is an argument: the buffer reads no clock,
/// owns no thread, and the same inputs always give the same outputs.
///
/// # How it decides
///
/// For each packet the buffer measures its *transit*: arrival time minus sender timestamp. The
/// fastest recent packet gives the reference (the minimum transit over the last 100 packets);
/// a packet arriving `d` later than that reference is `d` "delayed by jitter".
///
/// A frame is played when the packet one frame after it would normally have arrived too:
/// the target delay is the 95th percentile of `d` over the last 100 packets (2 s) plus one
/// frame (20 ms), clamped to `[min_delay, max_delay]` (20 ms to 300 ms by default). On a clean
/// network that is 20 ms, and the frame after a lost one is already here, so Opus FEC can
/// recover every isolated loss. A packet later than that percentile (a spike) keeps the target
/// at least at its delay (at most 80 ms above the percentile) for 10 s, so that the next spike
/// like it costs nothing. The target grows at once when jitter grows and shrinks by at most
/// 10 ms per second when the network calms.
///
/// The delay follows the target by whole frames: when it is too short the buffer plays an
/// [`Playout::Expand`] (a concealed frame that consumes no packet); when it is more than
/// 1.5 frames too long for 200 ms it drops one frame (counted in [`JitterStats::discarded`]).
/// A caller that reports voice activity ([`JitterBuffer::set_speech`]) gets these steps in the
/// pauses of the speech; one that time-stretches ([`JitterBuffer::set_stretching`], as
/// [`AudioPlayer`](crate::AudioPlayer) does) moves the delay in speech itself, by a pitch
/// period at a time, asking for each frame where its audio ends ([`JitterBuffer::pop_at`]).
///
/// A missing packet whose time has come is reported as [`Playout::Lost`], with the next
/// packet's payload when it is here for FEC. If nothing after it had arrived either and the
/// packet then shows up within `max_delay`, the buffer takes it after all: the concealed frames
/// played meanwhile become expansion (so an Opus DTX gap or a delay spike costs no audio).
///
/// A packet more than 64 frames (1.28 s) away from the playout point, or whose timestamp is
/// more than 1 s off what its sequence number predicts, is a new stream (a sender restart, a
/// long pause): the buffer starts over with it ([`Inserted::Restarted`]). After 1 s with an
/// empty buffer the stream is taken as stopped and `pop` returns `None` until packets come; the
/// next packet starts it over. Two packets in a row later than `max_delay` while the buffer is
/// starved, about equally late, are a lasting step of the delay (a path change, a sender that
/// stalled and stays late), which the target cannot follow: the buffer starts over with them
/// too, so a step costs about its own length rather than every packet after it.
///
/// Playout follows the timestamps: a packet with an empty payload (RTP padding only, which
/// Chromium sends on the audio stream as a bandwidth probe, with the previous packet's
/// timestamp) is not a frame ([`Inserted::Padding`]): its sequence number is skipped at playout
/// without taking time, and its transit is not measured. A missing sequence number after which
/// the next packet carries the timestamp the missing one would have had is skipped the same way
/// (padding dropped before the buffer), not concealed.
///
/// Sequence numbers and timestamps are unwrapped to 64 bits, so they wrap around freely. The
/// buffer holds at most 64 packets; it assumes 20 ms packets (what every browser sends).
///
/// # Driving it
///
/// ```
/// use std::time::{Duration, Instant};
/// use huddle_media::{JitterBuffer, JitterConfig, Playout};
///
/// let mut jb = JitterBuffer::new(JitterConfig::default());
/// let t0 = Instant::now(); // any instant: only differences matter
/// for i in 0..10u16 {
///     let now = t0 + Duration::from_millis(20 * u64::from(i));
///     jb.insert(i, 960 * u32::from(i), vec![i as u8], now);
///     // Call pop at least every 20 ms (more often is fine); drain it.
///     while let Some(out) = jb.pop(now + Duration::from_millis(5)) {
///         match out {
///             Playout::Packet { payload, .. } => { /* decoder.decode(&payload) */ }
///             Playout::Lost { fec_from: Some(next), .. } => { /* decoder.decode_fec(&next) */ }
///             _ => { /* decoder.conceal() */ }
///         }
///     }
/// }
/// assert_eq!(jb.stats().lost, 0);
/// ```
///
/// `pop` hands out one output per 20 ms of `now`, on a grid that starts when the first frame is
/// due; a caller driven by an audio device should pass the device's sample clock as `now`.
pub struct JitterBuffer {
    config: JitterConfig,
    slots: Vec<Option<Slot>>,
    /// Extended sequence numbers received recently (to tell duplicates from late packets).
    seen: Vec<i64>,
    /// Extended sequence numbers of padding-only packets received recently (skipped at
    /// playout).
    padding: Vec<i64>,
    buffered: usize,
    stream: Option<Stream>,
    stats: JitterStats,
    /// The caller's voice activity (see [`JitterBuffer::set_speech`]).
    speech: bool,
    /// The caller time-stretches (see [`JitterBuffer::set_stretching`]).
    stretching: bool,
    /// A raise of the smallest delay that came in speech, waiting for a pause, and the ticks it
    /// has waited (see [`JitterBuffer::set_min_delay`]).
    pending_min_delay: Option<(Duration, u32)>,
}

/// Everything that starts over with a new stream.
struct Stream {
    /// Time origin: the first arrival.
    base: Instant,
    /// Timestamp origin: the first packet's extended timestamp.
    ts_base: i64,
    /// Highest extended sequence number seen, and its extended timestamp.
    highest_seq: i64,
    highest_ts: i64,
    /// Transits (arrival - timestamp, in µs) of the last `WINDOW` packets.
    transits: VecDeque<i64>,
    /// Recent spikes: (arrival in µs, transit in µs), oldest first.
    peaks: VecDeque<(i64, i64)>,
    scratch: Vec<i64>,
    min_transit: i64,
    /// The smallest transit of the last `RECENT` packets: what the minimum delay counts from.
    recent_min_transit: i64,
    /// Playout offset: a frame with timestamp `ts` is due at `ts + offset` (µs).
    offset: i64,
    last_arrival: i64,
    /// The frame to play next (`None` until playout starts).
    next_seq: Option<i64>,
    next_ts: i64,
    playing: bool,
    /// When the next output is due.
    next_tick: Option<Instant>,
    /// Consecutive `Lost` frames reported while nothing after them had arrived.
    tentative: i64,
    /// Frames `next_ts` went past a missing sequence number without moving on from it: when
    /// the packets around a hole hold more sequence numbers than frames (some of them were
    /// padding), a missing frame is reported by its timestamp, and a packet of it that comes
    /// later is dropped instead of played a second time.
    ts_ahead: i64,
    /// Consecutive ticks with an empty buffer.
    empty_ticks: u32,
    /// Consecutive ticks with the delay above the drop threshold.
    over_ticks: u32,
    /// Consecutive ticks with a delay step put off for speech.
    deferred_ticks: u32,
    /// Lateness (µs) of the last packet handed out: how far the delay is above its target.
    last_lateness: i64,
    /// Speech has been played since the stream started (see [`JitterBuffer::speech_played`]).
    speech_played: bool,
    /// The last packet that came later than `max_delay` while the buffer was starved, with its
    /// arrival and transit (µs): if the next one is as late, the delay stepped up for good.
    step: Option<(Slot, Instant, i64)>,
}

impl Stream {
    fn us(&self, t: Instant) -> i64 {
        match t.checked_duration_since(self.base) {
            Some(d) => d.as_micros() as i64,
            None => -(self.base.duration_since(t).as_micros() as i64),
        }
    }

    fn ts_us(&self, ts: i64) -> i64 {
        (ts - self.ts_base) * 1_000_000 / i64::from(SAMPLE_RATE)
    }
}

fn duration_us(us: i64) -> Duration {
    Duration::from_micros(us.max(0) as u64)
}

impl JitterBuffer {
    /// Creates an empty buffer.
    pub fn new(mut config: JitterConfig) -> Self {
        // The ring holds 1.28 s from the playout point on: keep the delay well inside it.
        config.max_delay = config.max_delay.min(Duration::from_secs(1));
        config.min_delay = config.min_delay.min(config.max_delay);
        config.percentile = if config.percentile.is_finite() {
            config.percentile.clamp(0.5, 1.0)
        } else {
            0.95
        };
        JitterBuffer {
            config,
            slots: (0..CAPACITY).map(|_| None).collect(),
            seen: vec![i64::MIN; CAPACITY],
            padding: vec![i64::MIN; CAPACITY],
            buffered: 0,
            stream: None,
            stats: JitterStats::default(),
            speech: false,
            stretching: false,
            pending_min_delay: None,
        }
    }

    /// The settings.
    pub fn config(&self) -> &JitterConfig {
        &self.config
    }

    /// Tells the buffer whether the audio just played is speech (voice activity, e.g. the
    /// decoded frame's level). While it is, the delay steps that can wait are put off until a
    /// pause, for at most 5 s: growing the delay while the frame's packet is here (it is played
    /// now; the expand comes later) and dropping a frame to shrink it. A step in a pause is
    /// inaudible; one in the middle of a word costs a concealed or a missing 20 ms. What cannot
    /// wait still happens at once: a frame whose packet is not here is concealed, and a buffer
    /// behind by more than `max_delay` catches up. A caller that never calls this gets every
    /// step as soon as it is due.
    pub fn set_speech(&mut self, active: bool) {
        self.speech = active;
        if active && let Some(s) = self.stream.as_mut() {
            s.speech_played = true;
        }
        if !active && let Some((pending, _)) = self.pending_min_delay.take() {
            self.apply_min_delay(pending);
        }
    }

    /// Whether the caller has reported speech ([`set_speech`](Self::set_speech)) since the
    /// stream started: until then every delay step is made in silence, before the first word.
    pub fn speech_played(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| s.speech_played)
    }

    /// Tells the buffer that the caller changes the delay during speech itself, by
    /// time-stretching the decoded audio (see [`crate::stretch`] and [`crate::AudioPlayer`]),
    /// driven by [`delay_error_us`](Self::delay_error_us) and [`pop_at`](Self::pop_at). Then the
    /// delay steps that [`set_speech`](Self::set_speech) puts off wait for a pause for as long
    /// as it takes (not at most 5 s): the stretching does them meanwhile. And a frame missing in
    /// speech while the delay is still growing towards the target, with later packets here, is
    /// not waited for with a concealed frame inserted: it is due by the delay reached so far
    /// and reported [`Playout::Lost`] (with FEC from the next packet when that is here). A
    /// raise of the minimum delay in speech waits for a pause (see
    /// [`set_min_delay`](Self::set_min_delay)).
    pub fn set_stretching(&mut self, on: bool) {
        self.stretching = on;
        if !on && let Some((pending, _)) = self.pending_min_delay.take() {
            self.apply_min_delay(pending);
        }
    }

    /// How far the delay of the last packet handed out is from the target, in microseconds:
    /// positive when the buffer holds more than it aims at (a caller that stretches should
    /// shorten, see [`crate::stretch::accelerate`]), negative when less
    /// ([`crate::stretch::expand`]). Zero before playout starts.
    pub fn delay_error_us(&self) -> i64 {
        self.stream.as_ref().map_or(0, |s| s.last_lateness)
    }

    /// Changes the smallest delay (`JitterConfig::min_delay`, at most `max_delay`), e.g. to
    /// give frames that arrive late because they come back from redundancy (RFC 2198 RED: a
    /// lost frame travels again in the next packets) the time to arrive. The target follows at
    /// once when it grows and by the usual steps when it shrinks.
    ///
    /// Except in speech when the caller time-stretches ([`set_speech`](Self::set_speech),
    /// [`set_stretching`](Self::set_stretching)): a raise then waits for the next pause (at most
    /// 5 s, then the stretching reaches it), where the buffer grows by whole frames that nobody
    /// hears. Reached in the word, the raise (up to 120 ms when RED's deepest level is waited
    /// for) would slow the speech by up to half for a few hundred milliseconds; meanwhile a
    /// frame that comes back late from redundancy, beyond the delay there is, is concealed (a
    /// lost frame, with FEC from the next packet when that is here), as it would have been
    /// before the raise.
    pub fn set_min_delay(&mut self, min_delay: Duration) {
        let min_delay = min_delay.min(self.config.max_delay);
        let playing = self.stream.as_ref().is_some_and(|s| s.playing);
        if min_delay > self.config.min_delay && self.speech && self.stretching && playing {
            let waited = self.pending_min_delay.map_or(0, |(_, ticks)| ticks);
            self.pending_min_delay = Some((min_delay, waited));
            return;
        }
        self.pending_min_delay = None;
        self.apply_min_delay(min_delay);
    }

    /// The raise of the smallest delay waiting for a pause (see
    /// [`set_min_delay`](Self::set_min_delay)), if any.
    pub fn pending_min_delay(&self) -> Option<Duration> {
        self.pending_min_delay.map(|(d, _)| d)
    }

    /// Makes `min_delay` the smallest delay; the target follows at once when it grows.
    fn apply_min_delay(&mut self, min_delay: Duration) {
        self.config.min_delay = min_delay;
        if let Some(s) = self.stream.as_mut() {
            let wanted = s.recent_min_transit + min_delay.as_micros() as i64;
            s.offset = s.offset.max(wanted);
        }
    }

    /// Whether the buffer is playing and starved: the packet for its next output has not
    /// arrived, nor anything after it. A caller that runs behind real time (its own thread
    /// was not scheduled, so the sender's packets may be queued behind it on the same machine)
    /// can wait a little for them before popping, instead of concealing what is about to come.
    pub fn is_starved(&self) -> bool {
        self.stream
            .as_ref()
            .is_some_and(|s| s.playing && s.next_seq.is_some() && self.buffered == 0)
    }

    /// Counters and current delays.
    pub fn stats(&self) -> JitterStats {
        let mut stats = self.stats;
        stats.buffered = self.buffered;
        if let Some(s) = &self.stream {
            stats.target_delay = duration_us(s.offset - s.min_transit);
        }
        stats
    }

    /// Takes a packet (RTP sequence number, RTP timestamp at 48 kHz, Opus payload) that arrived
    /// at `arrival`, on the same clock as [`pop`](Self::pop)'s `now`.
    pub fn insert(&mut self, seq: u16, rtp_ts: u32, payload: Vec<u8>, arrival: Instant) -> Inserted {
        self.stats.received += 1;
        if payload.is_empty() {
            return self.insert_padding(seq, rtp_ts);
        }
        self.insert_audio(seq, rtp_ts, payload, arrival)
    }

    /// Starts the stream over with a packet, as a new stream (a new delay anchor).
    fn restart(&mut self, seq: u16, rtp_ts: u32, payload: Vec<u8>, arrival: Instant) {
        self.clear();
        self.stats.restarts += 1;
        self.start_stream(seq, rtp_ts, arrival);
        self.store(i64::from(seq), i64::from(rtp_ts), payload);
    }

    fn insert_audio(&mut self, seq: u16, rtp_ts: u32, payload: Vec<u8>, arrival: Instant) -> Inserted {
        let Some(stream) = &self.stream else {
            self.start_stream(seq, rtp_ts, arrival);
            self.store(i64::from(seq), i64::from(rtp_ts), payload);
            return Inserted::Buffered;
        };
        let ext_seq = stream.highest_seq + i64::from(seq.wrapping_sub(stream.highest_seq as u16) as i16);
        let ext_ts = stream.highest_ts + i64::from(rtp_ts.wrapping_sub(stream.highest_ts as u32) as i32);
        let predicted_ts = stream.highest_ts + (ext_seq - stream.highest_seq) * FRAME_SAMPLES as i64;
        let base_seq = stream
            .next_seq
            .unwrap_or_else(|| self.lowest_buffered().unwrap_or(ext_seq));
        // A stream taken as stopped (see `note_empty`) starts over with its next packet: its old
        // delay anchor says nothing about when the packets come now.
        let stopped = stream.next_seq.is_some() && !stream.playing;
        let jumped = ext_seq >= base_seq + CAPACITY as i64
            || ext_seq < base_seq - CAPACITY as i64
            || (ext_ts - predicted_ts).abs() > TS_JUMP;
        if jumped || stopped {
            self.restart(seq, rtp_ts, payload, arrival);
            return Inserted::Restarted;
        }

        let idx = ext_seq.rem_euclid(CAPACITY as i64) as usize;
        let in_buffer = self.slots[idx].as_ref().is_some_and(|s| s.seq == ext_seq);
        if self.seen[idx] == ext_seq || in_buffer {
            self.stats.duplicates += 1;
            return Inserted::Duplicate;
        }
        self.measure(ext_ts, arrival);
        let stream = self.stream.as_mut().expect("stream exists");
        if ext_seq > stream.highest_seq {
            stream.highest_seq = ext_seq;
            stream.highest_ts = ext_ts;
        }
        if let Some(next) = stream.next_seq {
            if ext_seq < next || ext_ts < stream.next_ts {
                // Its time has passed. If every frame since it was reported lost while nothing
                // after it had arrived, and it can still be played within `max_delay`, take it:
                // the concealed frames become expansion. Counted both in sequence numbers and
                // in frames by timestamp: either may run ahead of the other (an Opus DTX gap:
                // one sequence number for many frames; padding: sequence numbers for none).
                let seq_behind = (next - ext_seq).max(0);
                let ts_behind = ((stream.next_ts - ext_ts) / FRAME_SAMPLES as i64).max(0);
                let delay = stream.us(arrival) - stream.ts_us(ext_ts) - stream.min_transit;
                if seq_behind.max(ts_behind) <= stream.tentative
                    && delay <= self.config.max_delay.as_micros() as i64
                {
                    // The frames reported missing before it are lost for sure now.
                    let behind = if ext_seq < next { seq_behind } else { ts_behind };
                    self.stats.lost += (stream.tentative - behind) as u64;
                    stream.tentative = 0;
                    stream.next_seq = Some(ext_seq);
                    stream.next_ts = ext_ts;
                    self.stats.expanded += behind as u64;
                    self.store(ext_seq, ext_ts, payload);
                    return Inserted::Buffered;
                }
                // Later than `max_delay` while the buffer is starved: if the packet before was
                // too, by about as much, the delay stepped up for good (a path change, or a
                // sender that stalled and stays late), which the target, bounded by `max_delay`,
                // cannot follow. Re-anchor on these packets, as a new stream, so playout resumes
                // with them instead of dropping every packet as late until the buffer gives up.
                let starved = self.buffered == 0 && stream.tentative > 0;
                let transit = stream.us(arrival) - stream.ts_us(ext_ts);
                if starved && delay > self.config.max_delay.as_micros() as i64 {
                    let step = stream.step.take();
                    if let Some((first, at, first_transit)) = step
                        && first.seq < ext_seq
                        && (transit - first_transit).abs() <= STEP_AGREE_US
                    {
                        // The frames missing before the first of them are lost for sure; it and
                        // the frames after it are played after all.
                        let replayed = (next - first.seq).clamp(0, stream.tentative);
                        self.stats.lost += (stream.tentative - replayed) as u64;
                        self.stats.late -= 1;
                        self.restart(first.seq as u16, first.ts as u32, first.payload, at);
                        return self.insert_audio(seq, rtp_ts, payload, arrival);
                    }
                    self.stats.late += 1;
                    let stream = self.stream.as_mut().expect("stream exists");
                    stream.step = Some((
                        Slot {
                            seq: ext_seq,
                            ts: ext_ts,
                            payload,
                        },
                        arrival,
                        transit,
                    ));
                    self.seen[idx] = ext_seq;
                    return Inserted::Late;
                }
                self.seen[idx] = ext_seq;
                self.stats.late += 1;
                return Inserted::Late;
            }
            // A packet from the playout point on: the frames reported lost while nothing had
            // arrived are lost indeed.
            self.stats.lost += stream.tentative as u64;
            stream.tentative = 0;
            stream.step = None;
        }
        self.store(ext_seq, ext_ts, payload);
        Inserted::Buffered
    }

    /// A padding-only packet (no payload). It takes a sequence number but no time: its
    /// timestamp repeats the previous packet's, and the next audio packet's timestamp follows
    /// that one as if there had been no padding. It is remembered (so that playout skips its
    /// sequence number instead of concealing a frame for it) and keeps the sequence number
    /// and timestamp tracking in step, but its transit is not measured: it was sent whenever
    /// the sender's pacer wanted to probe, not when its timestamp's audio was captured.
    fn insert_padding(&mut self, seq: u16, rtp_ts: u32) -> Inserted {
        self.stats.padding += 1;
        let lowest = self.lowest_buffered();
        let Some(stream) = self.stream.as_mut() else {
            return Inserted::Padding;
        };
        let ext_seq = stream.highest_seq + i64::from(seq.wrapping_sub(stream.highest_seq as u16) as i16);
        let ext_ts = stream.highest_ts + i64::from(rtp_ts.wrapping_sub(stream.highest_ts as u32) as i32);
        let base_seq = stream.next_seq.or(lowest).unwrap_or(ext_seq);
        if ext_seq >= base_seq + CAPACITY as i64 || ext_seq < base_seq - CAPACITY as i64 {
            // Far from the stream: nothing to skip (a restart waits for audio).
            return Inserted::Padding;
        }
        if ext_seq > stream.highest_seq {
            stream.highest_seq = ext_seq;
            stream.highest_ts = ext_ts;
        }
        let idx = ext_seq.rem_euclid(CAPACITY as i64) as usize;
        self.padding[idx] = ext_seq;
        self.seen[idx] = ext_seq;
        Inserted::Padding
    }

    /// Whether sequence number `seq`, due next and not in the buffer, carried no audio:
    /// a padding-only packet, or (when padding was filtered before the buffer) a gap after
    /// which the next packet's timestamp is the one `seq` would have had.
    fn carries_no_audio(&self, seq: i64, next_ts: i64) -> bool {
        if self.is_padding(seq) {
            return true;
        }
        self.next_buffered_after(seq)
            .is_some_and(|next| next.ts <= next_ts)
    }

    /// Whether a padding-only packet with this sequence number was received.
    fn is_padding(&self, seq: i64) -> bool {
        self.padding[seq.rem_euclid(CAPACITY as i64) as usize] == seq
    }

    /// The buffered packet with the lowest sequence number above `seq`.
    fn next_buffered_after(&self, seq: i64) -> Option<&Slot> {
        self.slots
            .iter()
            .flatten()
            .filter(|s| s.seq > seq)
            .min_by_key(|s| s.seq)
    }

    /// The output for the next 20 ms tick, if one is due at `now`.
    ///
    /// Returns `None` before the first frame is due, between ticks, and once the stream has
    /// stopped (nothing received for a second); otherwise exactly one output per 20 ms of `now`.
    /// Call it at least every 20 ms and drain it (`while let Some(out) = jb.pop(now)`).
    pub fn pop(&mut self, now: Instant) -> Option<Playout> {
        let max_delay = self.config.max_delay;
        let stream = self.stream.as_mut()?;
        let tick = match stream.next_tick {
            Some(due) if now < due => return None,
            // The caller stalled for longer than any delay we keep: pick up at `now` (the
            // frames in between are dropped as the delay catches up) rather than replay them.
            Some(due) if now - due > max_delay => now,
            Some(due) => due,
            None => {
                if !self.try_start(now) {
                    return None;
                }
                now
            }
        };
        let out = self.tick(tick);
        if let Some(stream) = self.stream.as_mut() {
            stream.next_tick = stream.playing.then_some(tick + FRAME_DURATION);
        }
        Some(out)
    }

    /// The output for a frame whose playout starts at `at`, off any grid: for a caller that
    /// time-stretches, whose frames start wherever the audio it already has ends (see
    /// [`AudioPlayer`](crate::AudioPlayer)). Returns `None` before the first frame is due and
    /// once the stream has stopped; otherwise one output per call. Do not mix with
    /// [`pop`](Self::pop) on one buffer.
    pub fn pop_at(&mut self, at: Instant) -> Option<Playout> {
        let stream = self.stream.as_ref()?;
        if !stream.playing && !self.try_start(at) {
            return None;
        }
        let out = self.tick(at);
        if let Some(stream) = self.stream.as_mut() {
            stream.next_tick = stream.playing.then_some(at + FRAME_DURATION);
        }
        Some(out)
    }

    /// When [`pop`](Self::pop) has something next: the next tick while playing, the moment the
    /// first packet is due while waiting to start, `None` with nothing buffered. A caller that
    /// sleeps until then (rather than on its own 20 ms timer) plays each frame as soon as it is
    /// due, without up to a frame of extra delay from the timer's phase.
    pub fn next_due(&self) -> Option<Instant> {
        let s = self.stream.as_ref()?;
        if let Some(due) = s.next_tick {
            return Some(due);
        }
        let first = self.peek(self.lowest_buffered()?)?;
        let at = s.ts_us(first.ts) + s.offset;
        Some(if at >= 0 {
            s.base + Duration::from_micros(at as u64)
        } else {
            s.base
        })
    }

    fn start_stream(&mut self, seq: u16, rtp_ts: u32, arrival: Instant) {
        let transit = 0; // arrival at the time origin, timestamp at the timestamp origin
        self.stream = Some(Stream {
            base: arrival,
            ts_base: i64::from(rtp_ts),
            highest_seq: i64::from(seq),
            highest_ts: i64::from(rtp_ts),
            transits: VecDeque::from([transit]),
            peaks: VecDeque::new(),
            scratch: Vec::with_capacity(WINDOW),
            min_transit: transit,
            recent_min_transit: transit,
            offset: transit + self.config.min_delay.as_micros() as i64,
            last_arrival: 0,
            next_seq: None,
            next_ts: 0,
            playing: false,
            next_tick: None,
            tentative: 0,
            ts_ahead: 0,
            empty_ticks: 0,
            over_ticks: 0,
            deferred_ticks: 0,
            last_lateness: 0,
            speech_played: false,
            step: None,
        });
    }

    /// Updates the delay estimate with a packet's transit.
    fn measure(&mut self, ext_ts: i64, arrival: Instant) {
        let min_delay = self.config.min_delay.as_micros() as i64;
        let max_delay = self.config.max_delay.as_micros() as i64;
        let percentile = self.config.percentile;
        let s = self.stream.as_mut().expect("stream exists");
        let now = s.us(arrival);
        let transit = now - s.ts_us(ext_ts);
        if s.transits.len() == WINDOW {
            s.transits.pop_front();
        }
        s.transits.push_back(transit);
        s.min_transit = *s.transits.iter().min().expect("not empty");
        s.scratch.clear();
        s.scratch.extend(s.transits.iter().copied());
        // Rounded down, so that with few packets (at the start) one outlier is not the estimate.
        let rank = (percentile * (s.scratch.len() - 1) as f64) as usize;
        let high = *s.scratch.select_nth_unstable(rank).1;
        self.stats.jitter = duration_us(high - s.min_transit);
        // Spikes above the percentile hold the target up for a while (see PEAK_HOLD_US).
        while s.peaks.front().is_some_and(|&(at, _)| now - at > PEAK_HOLD_US) {
            s.peaks.pop_front();
        }
        if transit > high {
            if s.peaks.len() == PEAKS {
                s.peaks.pop_front();
            }
            s.peaks.push_back((now, transit));
        }
        let peak = s.peaks.iter().map(|&(_, t)| t).max().unwrap_or(high);
        let high = high.max(peak.min(high + PEAK_CAP_US));

        // The smallest delay counts from the fastest of the last half second's packets, not of
        // the window's 2 s: after the network's base delay steps up (a route change), the
        // window's fastest packet is from before the step for 2 s, and a minimum counted from
        // it (RED's deepest level waited for) falls short by the step until it leaves the
        // window, then the target jumps by the step at once (see `RECENT`).
        s.recent_min_transit = *s.transits.iter().rev().take(RECENT).min().expect("not empty");
        // (Not `clamp`: after a step larger than `max_delay` the two bounds cross.)
        let wanted = (high + FRAME_US)
            .max(s.recent_min_transit + min_delay)
            .min(s.min_transit + max_delay);
        let elapsed = (now - s.last_arrival).max(0);
        s.last_arrival = s.last_arrival.max(now);
        s.offset = if wanted >= s.offset {
            wanted
        } else {
            (s.offset - elapsed * SHRINK_PER_SEC_US / 1_000_000).max(wanted)
        };
        s.offset = s.offset.min(s.min_transit + max_delay);
    }

    fn store(&mut self, ext_seq: i64, ext_ts: i64, payload: Vec<u8>) {
        let idx = ext_seq.rem_euclid(CAPACITY as i64) as usize;
        match self.slots[idx].replace(Slot {
            seq: ext_seq,
            ts: ext_ts,
            payload,
        }) {
            None => self.buffered += 1,
            // Only a stream spread over more than the ring can do this: keep the newer packet.
            Some(_) => self.stats.discarded += 1,
        }
        self.seen[idx] = ext_seq;
    }

    fn take(&mut self, ext_seq: i64) -> Option<Slot> {
        let idx = ext_seq.rem_euclid(CAPACITY as i64) as usize;
        if self.slots[idx].as_ref().is_some_and(|s| s.seq == ext_seq) {
            self.buffered -= 1;
            self.slots[idx].take()
        } else {
            None
        }
    }

    fn peek(&self, ext_seq: i64) -> Option<&Slot> {
        self.slots[ext_seq.rem_euclid(CAPACITY as i64) as usize]
            .as_ref()
            .filter(|s| s.seq == ext_seq)
    }

    fn lowest_buffered(&self) -> Option<i64> {
        self.slots.iter().flatten().map(|s| s.seq).min()
    }

    fn clear(&mut self) {
        // A raise waiting for a pause is the new stream's minimum from its start.
        if let Some((pending, _)) = self.pending_min_delay.take() {
            self.config.min_delay = pending;
        }
        self.slots.iter_mut().for_each(|s| *s = None);
        self.seen.iter_mut().for_each(|s| *s = i64::MIN);
        self.padding.iter_mut().for_each(|s| *s = i64::MIN);
        self.buffered = 0;
        self.stream = None;
    }

    /// Starts playout at the oldest buffered packet once it is due, dropping packets too old
    /// to be worth playing.
    fn try_start(&mut self, now: Instant) -> bool {
        loop {
            let Some(first) = self.lowest_buffered() else {
                return false;
            };
            let s = self.stream.as_ref().expect("stream exists");
            let slot = self.peek(first).expect("lowest is buffered");
            let lateness = s.us(now) - s.ts_us(slot.ts) - s.offset;
            if lateness < 0 {
                return false;
            }
            if lateness >= FRAME_US {
                self.take(first);
                self.stats.discarded += 1;
                continue;
            }
            let ts = slot.ts;
            let s = self.stream.as_mut().expect("stream exists");
            s.next_seq = Some(first);
            s.next_ts = ts;
            s.playing = true;
            s.tentative = 0;
            s.ts_ahead = 0;
            s.empty_ticks = 0;
            s.over_ticks = 0;
            return true;
        }
    }

    /// Produces the output for a tick at `tick`, while playing.
    fn tick(&mut self, tick: Instant) -> Playout {
        if let Some((pending, waited)) = self.pending_min_delay {
            if !self.speech || waited >= DEFER_TICKS {
                self.pending_min_delay = None;
                self.apply_min_delay(pending);
            } else {
                self.pending_min_delay = Some((pending, waited + 1));
            }
        }
        let max_delay = self.config.max_delay.as_micros() as i64;
        // Hopelessly behind (the caller stalled): skip frames until one is on time.
        let mut catching_up = false;
        loop {
            let s = self.stream.as_ref().expect("stream exists");
            let seq = s.next_seq.expect("playing");
            if self.peek(seq).is_none() && self.carries_no_audio(seq, s.next_ts) {
                // Padding (a browser's bandwidth probe): no frame to play, no time taken. (Not
                // counted when it is the sequence number of a frame reported lost by its
                // timestamp, see `ts_ahead`, or counted already.)
                if s.ts_ahead == 0 && !self.is_padding(seq) {
                    self.stats.padding += 1;
                }
                let s = self.stream.as_mut().expect("stream exists");
                s.next_seq = Some(seq + 1);
                continue;
            }
            let oldest_reported = s.next_ts - s.ts_ahead * FRAME_SAMPLES as i64;
            if let Some(slot) = self.peek(seq)
                && (oldest_reported..s.next_ts).contains(&slot.ts)
            {
                // Its frame was reported lost already (see `ts_ahead`): do not play it twice.
                self.take(seq);
                self.stats.late += 1;
                let s = self.stream.as_mut().expect("stream exists");
                s.next_seq = Some(seq + 1);
                continue;
            }
            let ts = self.peek(seq).map_or(s.next_ts, |slot| slot.ts);
            let delay = s.us(tick) - s.ts_us(ts);
            let lateness = delay - s.offset;
            let present = self.peek(seq).is_some();
            let buffer_empty = self.buffered == 0;
            let speech = self.speech;
            let stretching = self.stretching;
            let s = self.stream.as_mut().expect("stream exists");

            // Growing with the packet here can wait for a pause (for as long as it takes when
            // the caller stretches meanwhile).
            let can_wait = speech && (stretching || s.deferred_ticks < DEFER_TICKS);
            let defer_expand = lateness < 0 && present && can_wait;
            // A frame missing in speech while the stretching is still growing the delay to the
            // target, with later packets here (lost on the wire, or overtaken): it is due by the
            // delay the listener has now (as late as the last packet played, give or take the
            // tick grid). Waiting for it would put a whole frame into the word; it is reported
            // lost instead (FEC from the next packet when that is here), and the delay keeps
            // growing by stretching.
            let due_now = lateness < 0
                && !present
                && !buffer_empty
                && speech
                && stretching
                && lateness >= s.last_lateness.min(0) - DUE_TOLERANCE_US;
            if lateness < 0 && !defer_expand && !due_now {
                s.over_ticks = 0;
                s.deferred_ticks = 0;
                self.stats.expanded += 1;
                self.stats.concealed += 1;
                self.note_empty(buffer_empty);
                return Playout::Expand;
            }
            catching_up |= lateness > max_delay;
            s.over_ticks = if lateness >= DROP_THRESHOLD_US {
                s.over_ticks + 1
            } else {
                0
            };
            let want_drop = s.over_ticks >= DROP_HOLD_TICKS;
            // Dropping a frame of speech can wait for a pause too.
            let defer_drop = want_drop && present && can_wait;
            if defer_expand || defer_drop {
                s.deferred_ticks += 1;
                self.stats.deferred += 1;
            } else if lateness >= 0 && !want_drop {
                s.deferred_ticks = 0;
            }
            if (want_drop && !defer_drop) || (catching_up && lateness >= FRAME_US) {
                // Too much delay for a while: skip this frame (free when it is missing).
                s.over_ticks = 0;
                s.deferred_ticks = 0;
                s.tentative = 0;
                s.next_seq = Some(seq + 1);
                s.next_ts = ts + FRAME_SAMPLES as i64;
                if self.take(seq).is_some() {
                    self.stats.discarded += 1;
                } else if !buffer_empty {
                    self.stats.lost += 1;
                }
                continue;
            }

            s.next_seq = Some(seq + 1);
            s.next_ts = ts + FRAME_SAMPLES as i64;
            if present {
                let slot = self.take(seq).expect("present");
                let s = self.stream.as_mut().expect("stream exists");
                s.tentative = 0;
                s.ts_ahead = 0;
                s.empty_ticks = 0;
                self.stats.played += 1;
                self.stats.current_delay = duration_us(delay - s.min_transit);
                s.last_lateness = lateness;
                return Playout::Packet {
                    seq: slot.seq as u16,
                    rtp_ts: slot.ts as u32,
                    payload: slot.payload,
                };
            }
            let fec_from = self
                .next_buffered_after(seq)
                .filter(|next| next.ts == ts + FRAME_SAMPLES as i64)
                .map(|next| next.payload.clone());
            if fec_from.is_some() {
                self.stats.fec_recovered += 1;
            } else {
                self.stats.concealed += 1;
            }
            // More sequence numbers than frames up to the next packet: some of them were padding
            // (lost or late), and which one held this frame is not known yet. Report the frame
            // by its timestamp and stay at this sequence number: the packets after it are
            // skipped (padding) or dropped (this frame, late) when they come.
            let unaccounted = self.next_buffered_after(seq).is_some_and(|next| {
                let padding = (seq + 1..next.seq).filter(|&p| self.is_padding(p)).count() as i64;
                next.seq - seq - padding > (next.ts - ts) / FRAME_SAMPLES as i64
            });
            // With later packets here the frame is lost for sure; with none it is only missing
            // so far (counted as lost once a later packet comes, see `insert`).
            let s = self.stream.as_mut().expect("stream exists");
            if unaccounted {
                s.next_seq = Some(seq);
                s.ts_ahead += 1;
            }
            if buffer_empty {
                s.tentative += 1;
            } else {
                self.stats.lost += 1;
            }
            self.note_empty(buffer_empty);
            return Playout::Lost {
                seq: seq as u16,
                fec_from,
            };
        }
    }

    /// Counts ticks with an empty buffer and stops playout when the stream seems to have
    /// stopped.
    fn note_empty(&mut self, empty: bool) {
        let s = self.stream.as_mut().expect("stream exists");
        s.empty_ticks = if empty { s.empty_ticks + 1 } else { 0 };
        if s.empty_ticks >= STALL_TICKS {
            // The stream stopped: the frames missing at its end were never sent.
            s.playing = false;
            s.empty_ticks = 0;
            s.tentative = 0;
        }
    }
}

impl fmt::Debug for JitterBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JitterBuffer")
            .field("config", &self.config)
            .field("stats", &self.stats())
            .finish()
    }
}
