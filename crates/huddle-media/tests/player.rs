//! The audio player (jitter buffer, decoding, time-stretching) on virtual time with real speech
//! through Opus: a late packet now and then must not put a gap or a 20 ms step inside a word.

#[path = "support/arrivals.rs"]
mod arrivals;
mod common;

use std::time::{Duration, Instant};

use huddle_media::{AudioFrame, AudioPlayer, JitterConfig, OpusEncoder};

/// The largest lag step allowed between adjacent 10 ms windows inside a word: one pitch
/// period stretched (at most 10 ms) and the tracker's tolerance; a whole frame is 960.
const MAX_STEP: usize = 600;

/// Leading silence before the speech (frames).
const LEAD: usize = 50;

/// The speech sample three times over after 1 s of silence, as 20 ms frames.
fn talk() -> Vec<AudioFrame> {
    let speech = common::speech_frames();
    let mut frames = vec![AudioFrame::silence(0); LEAD];
    for _ in 0..3 {
        frames.extend(speech.iter().cloned());
    }
    frames.extend(vec![AudioFrame::silence(0); 25]);
    frames
}

/// Plays `frames` through Opus and a player; packet `i` arrives 30 ms after it is sent plus
/// `late(i)` ms. Returns the played signal (one frame per 20 ms tick) and the player.
fn call(frames: &[AudioFrame], stretching: bool, late: impl Fn(usize) -> u64) -> (Vec<i16>, AudioPlayer) {
    call_with(frames, stretching, late, None)
}

/// [`call`], raising the buffer's minimum delay to `.1` when frame `.0` is sent.
fn call_with(
    frames: &[AudioFrame],
    stretching: bool,
    late: impl Fn(usize) -> u64,
    raise: Option<(usize, Duration)>,
) -> (Vec<i16>, AudioPlayer) {
    let mut encoder = OpusEncoder::new(huddle_media::AudioConfig::default().opus_config()).unwrap();
    let mut player = AudioPlayer::new(JitterConfig::default()).unwrap();
    player.set_stretching(stretching);
    let t0 = Instant::now();
    let mut in_flight: Vec<(u64, u16, u32, Vec<u8>)> = Vec::new();
    let mut out = Vec::new();
    let end = frames.len() as u64 * 20 + 500;
    for ms in 0..end {
        if ms % 20 == 0 && ((ms / 20) as usize) < frames.len() {
            let i = (ms / 20) as usize;
            let packet = encoder.encode(&frames[i]).unwrap();
            if let Some((at, delay)) = raise
                && at == i
            {
                player.jitter().set_min_delay(delay);
            }
            in_flight.push((ms + 30 + late(i), i as u16, 960 * i as u32, packet));
        }
        in_flight.sort_by_key(|p| p.0);
        while in_flight.first().is_some_and(|p| p.0 <= ms) {
            let (_, seq, ts, payload) = in_flight.remove(0);
            player.insert(seq, ts, payload, t0 + Duration::from_millis(ms));
        }
        // The output device ticks every 20 ms, 7 ms into the sender's period.
        if ms % 20 == 7 {
            match player.pull(t0 + Duration::from_millis(ms)) {
                Some(f) => out.extend_from_slice(&f.samples),
                None => out.extend_from_slice(&[0; 960]),
            }
        }
    }
    (out, player)
}

/// The same speech through Opus with nothing late: the reference.
fn reference(frames: &[AudioFrame]) -> Vec<f64> {
    let (out, _) = call(frames, true, |_| 0);
    out.iter().map(|&s| f64::from(s) / 32768.0).collect()
}

/// For each voiced 20 ms window of `reference` from `from` on, the best normalised correlation of
/// `played` with it within ±`shift` samples of lag `lag`; the lowest, and where.
fn worst_window(reference: &[f64], played: &[f64], lag: usize, shift: usize, from: usize) -> (f64, usize) {
    let win = 960;
    let loud = 0.03; // RMS of a voiced window (about -30 dBFS)
    let mut worst = (1.0, 0);
    let mut start = from;
    while start + win + lag + shift < played.len().min(reference.len()) {
        let r = &reference[start..start + win];
        if common::rms(r) > loud {
            let best = (0..=2 * shift)
                .step_by(8)
                .map(|d| {
                    common::correlation(r, &played[start + lag + d - shift..start + lag + d - shift + win])
                })
                .fold(-1.0, f64::max);
            if best < worst.0 {
                worst = (best, start);
            }
        }
        start += win;
    }
    worst
}

/// No run of 10 ms of (near) silence inside the loud parts of the reference, once aligned.
fn longest_hole(reference: &[f64], played: &[f64], from: usize) -> usize {
    let mut longest = 0;
    let mut run = 0;
    for i in from..reference.len().min(played.len()) {
        // A hole: the output near zero where the reference's 10 ms around it is loud.
        let lo = i.saturating_sub(240);
        let loud = common::rms(&reference[lo..(i + 240).min(reference.len())]) > 0.05;
        if loud && played[i].abs() < 1e-3 {
            run += 1;
            longest = longest.max(run);
        } else {
            run = 0;
        }
    }
    longest
}

#[test]
fn a_packet_20ms_late_every_2s_costs_no_step_in_speech() {
    let frames = talk();
    let every_2s = |i: usize| if i % 100 == 70 { 20 } else { 0 };
    let (played, player) = call(&frames, true, every_2s);
    let stats = player.stats();
    eprintln!("stretching: {stats:?}");
    let played: Vec<f64> = played.iter().map(|&s| f64::from(s) / 32768.0).collect();
    let reference = reference(&frames);

    // After the first late packet (1.4 s) has taught the buffer the network's spikes: nothing
    // concealed, no hole, every voiced 20 ms within 0.9 correlation of the reference with at
    // most a few ms of drift (the stretching moves the delay by periods, not frames).
    let from = 48 * 3_000;
    let lag = common::best_lag(&reference[from..from + 48_000], &played[from..], 0..=4_800);
    let (worst, at) = worst_window(&reference, &played, lag, 240, from);
    let hole = longest_hole(&reference, &played, from + lag);
    let (jump, jump_at) = largest_jump(&lag_track(&reference, &played, from, 0..4_800));
    eprintln!(
        "largest jump inside a word: {} ms at {} ms",
        jump / 48,
        jump_at / 48
    );
    assert!(
        jump <= MAX_STEP,
        "the delay jumped {} ms inside a word at {} ms",
        jump / 48,
        jump_at / 48
    );
    assert!(
        worst > 0.9,
        "voiced window at {} ms correlates {worst:.3}",
        at / 48
    );
    assert!(hole < 240, "a hole of {} ms inside speech", hole / 48);
    assert_eq!(
        stats.jitter.lost, 0,
        "late packets that could be placed count as lost: {stats:?}"
    );
    // One whole frame at most: the first late packet, concealed before the buffer knew.
    assert!(stats.jitter.expanded <= 1, "whole frames inserted: {stats:?}");
    assert!(stats.added_delay <= Duration::from_millis(60), "{stats:?}");
}

/// The alignment of `played` to `reference` followed window by window: for each voiced 10 ms
/// window of the reference from `from` on, the lag (samples) at which `played` matches it best
/// (within `lags`), when it matches well (correlation ≥ 0.8). A delay step of a whole inserted
/// or dropped frame shows as a jump of 960 samples between neighbouring windows; a stretch by a
/// pitch period as a step of at most 480.
fn lag_track(
    reference: &[f64],
    played: &[f64],
    from: usize,
    lags: std::ops::Range<usize>,
) -> Vec<(usize, usize)> {
    let win = 480;
    // Each window is searched within 25 ms of the last lag found (the first one everywhere in
    // `lags`): in a vowel, lags whole pitch periods apart match almost as well, and a search
    // without a prior could hop between them.
    let near = 1_200;
    let mut track: Vec<(usize, usize)> = Vec::new();
    let mut start = from;
    while start + win + lags.end < played.len().min(reference.len()) {
        let r = &reference[start..start + win];
        if common::rms(r) > 0.03 {
            let range = match track.last() {
                Some(&(_, prev)) => prev.saturating_sub(near).max(lags.start)..(prev + near).min(lags.end),
                None => lags.clone(),
            };
            let scores: Vec<(f64, usize)> = range
                .step_by(2)
                .map(|d| (common::correlation(r, &played[start + d..start + d + win]), d))
                .collect();
            let best = scores.iter().map(|s| s.0).fold(-1.0, f64::max);
            // Of the lags about as good as the best, the one nearest the last: a vowel matches
            // a period away almost as well, a real step does not match at the old lag at all.
            let prev = track.last().map(|t| t.1);
            let (corr, lag) = scores
                .iter()
                .filter(|s| s.0 >= best - 0.03)
                .min_by_key(|s| prev.map_or(0, |p| s.1.abs_diff(p)))
                .copied()
                .unwrap_or((-1.0, 0));
            // Only clear matches: a window across a cross-fade matches no lag well.
            if corr >= 0.97 {
                track.push((start, lag));
            }
        }
        start += win;
    }
    track
}

/// The largest change of lag between adjacent voiced 10 ms windows (inside one word; at most
/// one frame boundary, so at most one stretch, lies between them), and where.
fn largest_jump(track: &[(usize, usize)]) -> (usize, usize) {
    track
        .windows(2)
        .filter(|w| w[1].0 - w[0].0 == 480)
        .map(|w| (w[1].1.abs_diff(w[0].1), w[1].0))
        .max()
        .unwrap_or((0, 0))
}

/// The buffer's minimum delay raised from 20 to 60 ms in the middle of a word (in the longest
/// voiced run of the sample, as the SDK does when RED starts bringing frames back late): the
/// largest jump of the alignment inside a word, and the player.
fn raised_in_speech(stretching: bool) -> (usize, AudioPlayer) {
    let frames = talk();
    let (played, player) = call_with(
        &frames,
        stretching,
        |_| 0,
        Some((LEAD + 153, Duration::from_millis(60))),
    );
    let played: Vec<f64> = played.iter().map(|&s| f64::from(s) / 32768.0).collect();
    let reference = reference(&frames);
    let track = lag_track(&reference, &played, 48 * 1_000, 0..4_800);
    let (jump, at) = largest_jump(&track);
    eprintln!(
        "stretching {stretching}: largest jump {} ms at {} ms",
        jump / 48,
        at / 48
    );
    (jump, player)
}

/// A raise in the middle of a word waits for the next pause, where the buffer grows by whole
/// frames nobody hears: neither a 20 ms step nor a word slowed down by stretching.
#[test]
fn a_delay_raised_in_speech_is_reached_in_the_next_pause_not_in_the_word() {
    let (jump, mut player) = raised_in_speech(true);
    let stats = player.stats();
    eprintln!("{stats:?}");
    assert!(stats.added_delay >= Duration::from_millis(55), "{stats:?}");
    assert_eq!(player.jitter().pending_min_delay(), None, "{stats:?}");
    assert_eq!(stats.speech_inserts, 0, "{stats:?}");
    // Reached in the pause, not by stretching the word.
    assert!(stats.jitter.expanded > 0, "{stats:?}");
    assert!(stats.stretched_time < Duration::from_millis(10), "{stats:?}");
    assert!(
        jump <= MAX_STEP,
        "the delay jumped {} ms inside a word: {stats:?}",
        jump / 48
    );
    // The measure itself: 20 ms repeated in the middle of the same word (what a concealed
    // frame inserted by a whole-frame step sounds like) shows as a jump of a frame.
    let frames = talk();
    let reference = reference(&frames);
    let at = 960 * (LEAD + 158);
    let mut stepped = reference[..at].to_vec();
    stepped.extend_from_within(at - 960..at);
    stepped.extend_from_slice(&reference[at..]);
    let (jump_off, _) = largest_jump(&lag_track(&reference, &stepped, 48 * 1_000, 0..4_800));
    assert!(
        jump_off >= 900,
        "the measure misses a whole-frame step ({jump_off} samples)"
    );
}

#[test]
fn the_delay_comes_back_down_by_accelerating_after_a_spike() {
    // One packet 60 ms late at 2 s (a spike the buffer had not seen): the delay it leaves is
    // taken back by accelerating voiced frames, not by dropping frames in speech.
    let frames = talk();
    let (_, player) = call(&frames, true, |i| if i == 100 { 60 } else { 0 });
    let stats = player.stats();
    eprintln!("{stats:?}");
    assert!(stats.accelerated > 0, "{stats:?}");
    assert_eq!(stats.jitter.discarded, 0, "{stats:?}");
}

/// 10 s of a sung vowel: harmonics of 140 Hz with a slow vibrato, no pause anywhere.
fn vowel() -> Vec<AudioFrame> {
    let mut phase = 0.0f64;
    let samples: Vec<f32> = (0..48_000 * 10)
        .map(|n| {
            let t = n as f64 / 48_000.0;
            let f0 = 140.0 * (1.0 + 0.05 * (std::f64::consts::TAU * 0.7 * t).sin());
            phase += std::f64::consts::TAU * f0 / 48_000.0;
            let s: f64 = (1..=8).map(|k| (k as f64 * phase).sin() / k as f64).sum();
            (0.15 * s) as f32
        })
        .collect();
    samples
        .chunks_exact(960)
        .enumerate()
        .map(|(i, c)| AudioFrame::from_f32(960 * i as u32, c).unwrap())
        .collect()
}

/// Speech with no pause for the buffer to step in (a long vowel, a song): the minimum delay is
/// raised to 60 ms at 2 s. Returns the largest lag step between adjacent 10 ms windows of the
/// vowel (not of the concealment after the stream ends).
fn raised_without_pause(stretching: bool) -> (usize, AudioPlayer) {
    let frames = vowel();
    let (played, player) = call_with(&frames, stretching, |_| 0, Some((100, Duration::from_millis(60))));
    let played: Vec<f64> = played.iter().map(|&s| f64::from(s) / 32768.0).collect();
    let mut reference = reference(&frames);
    reference.truncate(960 * frames.len());
    let (jump, at) = largest_jump(&lag_track(&reference, &played, 48 * 1_000, 0..4_800));
    eprintln!(
        "no pause, stretching {stretching}: largest jump {jump} samples at {} ms",
        at / 48
    );
    (jump, player)
}

/// The raise waits 5 s for a pause that never comes, then the stretching reaches it.
#[test]
fn without_a_pause_the_delay_still_moves_by_stretching() {
    let (jump, player) = raised_without_pause(true);
    let stats = player.stats();
    eprintln!("{stats:?}");
    assert!(stats.stretched > 0, "{stats:?}");
    assert!(stats.added_delay >= Duration::from_millis(55), "{stats:?}");
    assert!(
        jump <= MAX_STEP,
        "the delay jumped {} ms inside the vowel: {stats:?}",
        jump / 48
    );
    // The counter-check: whole-frame steps (stretching off) wait 5 s for a pause that never
    // comes, then insert concealed frames in the vowel. (The alignment measure does not see
    // them: the windows across a concealed frame match no lag well and are left out. It saw a
    // step at the end of the stream, after the vowel, which it no longer measures.)
    let (_, off) = raised_without_pause(false);
    let off = off.stats();
    assert!(off.speech_inserts >= 2, "{off:?}");
    assert_eq!(off.stretched, 0, "{off:?}");
}

/// One packet 60 ms late in the middle of a word (in the longest voiced run of the sample): the
/// buffer's target jumps by about that much at once. Made up by stretching at once, that would
/// be six voiced frames in a row each a pitch period longer, the word slowed by almost half; it
/// waits for the next pause instead, where the buffer grows by whole frames nobody hears (as it
/// does without stretching).
#[test]
fn a_target_jump_in_a_word_waits_for_the_pause() {
    let frames = talk();
    let (played, player) = call(&frames, true, |i| if i == LEAD + 153 { 60 } else { 0 });
    let stats = player.stats();
    eprintln!("{stats:?}");
    let played: Vec<f64> = played.iter().map(|&s| f64::from(s) / 32768.0).collect();
    let reference = reference(&frames);
    let (jump, at) = largest_jump(&lag_track(&reference, &played, 48 * 1_000, 0..4_800));
    eprintln!("largest jump {} ms at {} ms", jump / 48, at / 48);
    // The delay grew to the new target, in the pause.
    assert!(stats.added_delay >= Duration::from_millis(70), "{stats:?}");
    assert!(stats.jitter.expanded > 0, "{stats:?}");
    assert!(stats.stretched_time < Duration::from_millis(25), "{stats:?}");
    assert_eq!(stats.speech_inserts, 0, "{stats:?}");
    assert!(
        jump <= MAX_STEP,
        "the delay jumped {} ms inside a word",
        jump / 48
    );
}

/// What an SDK player received from a Firefox publisher in a real call (see
/// `tests/data/README.md`): a 330 ms stall after which every packet comes ≈ 350 ms later than
/// before, past the buffer's 300 ms `max_delay`. Returns the arrivals, in seconds from the first.
fn firefox_stall() -> Vec<(u16, u32, f64, Vec<u8>)> {
    let text = include_str!("data/firefox-stall.arrivals");
    let mut packets = arrivals::parse(text);
    let t0 = packets[0].2;
    packets.iter_mut().for_each(|p| p.2 -= t0);
    packets
}

#[test]
fn a_lasting_delay_step_after_a_stall_costs_about_the_stall() {
    let packets = firefox_stall();
    // The stall: the longest gap between arrivals.
    let (resume, gap) = (1..packets.len())
        .map(|i| (i, packets[i].2 - packets[i - 1].2))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .expect("packets");
    assert!(gap > 0.3, "{gap}");
    let (stall_from, stall_to) = (packets[resume - 1].2, packets[resume].2);
    let stall_frames = (gap / 0.02).round() as u64;

    let mut player = AudioPlayer::new(JitterConfig::default()).expect("player");
    let start = Instant::now();
    let at = |s: f64| start + Duration::from_secs_f64(s);
    let (mut next, mut tick) = (0, 0.0);
    let (mut before, mut after) = (None, None);
    while tick < packets.last().expect("packets").2 + 0.5 {
        while next < packets.len() && packets[next].2 <= tick {
            let (seq, ts, arrival, payload) = packets[next].clone();
            player.insert(seq, ts, payload, at(arrival));
            next += 1;
        }
        player.pull(at(tick));
        let concealed = player.stats().jitter.concealed;
        if tick <= stall_from {
            before = Some(concealed);
        }
        // A second after the packets come again (the call's 10 % loss goes on meanwhile).
        if tick <= stall_to + 1.0 {
            after = Some(concealed);
        }
        tick += 0.02;
    }
    let stats = player.stats().jitter;
    let cost = after.expect("ticks") - before.expect("ticks");
    // The stall's own frames, a frame of the tick grid, and the call's ongoing loss (about 5 of
    // the 50 frames of that second, most of them recovered by FEC).
    assert!(
        cost <= stall_frames + 6,
        "{cost} frames concealed for a {stall_frames}-frame stall: {stats:?}"
    );
    assert_eq!(stats.discarded, 0, "{stats:?}");
}
