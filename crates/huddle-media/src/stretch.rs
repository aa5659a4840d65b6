//! Time-stretching of decoded speech by one pitch period, as WebRTC's NetEq does it
//! (`accelerate` and `preemptive expand`): how the jitter buffer changes its delay in the middle
//! of a word without inserting or dropping 20 ms.
//!
//! Written here rather than taken from a crate: the crates that stretch audio (the `wsola`
//! crate, 0.1 with one release; SoundTouch bindings; phase vocoders) change the tempo of a
//! continuous stream by a ratio and hold tens of milliseconds of their own; a jitter buffer
//! needs the opposite: a decision per 20 ms frame, by exactly one pitch period, only where the
//! signal allows it, with no delay of its own. It is about 150 lines.
//!
//! The method (NetEq's `TimeStretch`): find the pitch period `P` (2.5 to 10 ms, the lag of the
//! highest normalised autocorrelation, searched at 12 kHz and refined at 48 kHz); when the
//! frame is voiced (correlation ≥ 0.9, NetEq's threshold) or quiet, cross-fade two consecutive
//! periods into one (accelerate, `P` samples shorter) or one period into two (expand, `P`
//! samples longer). Both ends of the frame are untouched, so it joins its neighbours without a
//! click. Unvoiced loud frames (noise-like: a fricative) are left alone, and so are voices
//! below 100 Hz (a period longer than half a 20 ms frame): their steps wait for a pause.

/// Shortest pitch period searched, in samples at 48 kHz (2.5 ms: 400 Hz).
const MIN_PERIOD: usize = 120;
/// Longest pitch period searched (10 ms: 100 Hz).
const MAX_PERIOD: usize = 480;
/// Decimation of the coarse search (48 kHz to 12 kHz).
const DECIMATE: usize = 4;
/// Normalised correlation from which a frame counts as voiced (NetEq: 14746 in Q14, 0.9).
const VOICED: f32 = 0.9;
/// Mean square below which a frame is quiet enough to stretch whatever its shape
/// (about -45 dBFS).
const QUIET: f64 = 184.0 * 184.0;

/// What [`accelerate`] and [`expand`] found in a frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Period {
    /// The pitch period in samples at 48 kHz.
    pub samples: usize,
    /// Normalised autocorrelation at that lag, at 12 kHz (1.0: perfectly periodic).
    pub correlation: f32,
}

/// The pitch period of `x` (searched up to 10 ms, or half of `x` when shorter), or `None`
/// for a frame too short (under 240 samples).
pub fn pitch_period(x: &[i16]) -> Option<Period> {
    let max = MAX_PERIOD.min(x.len() / 2);
    if max < MIN_PERIOD {
        return None;
    }
    // The comparison window: as long as the longest lag searched.
    let window = max;
    let coarse: Vec<f32> = x
        .chunks_exact(DECIMATE)
        .map(|c| c.iter().map(|&s| f32::from(s)).sum::<f32>() / DECIMATE as f32)
        .collect();
    let (lo, hi, w) = (MIN_PERIOD / DECIMATE, max / DECIMATE, window / DECIMATE);
    let scores: Vec<(usize, f32)> = (lo..=hi)
        .filter(|&lag| lag + w <= coarse.len())
        .map(|lag| (lag, ncc(&coarse[..w], &coarse[lag..lag + w])))
        .collect();
    let best = scores.iter().map(|s| s.1).fold(f32::MIN, f32::max);
    // The shortest lag about as good as the best: the period, not a multiple of it.
    let mut i = scores.iter().position(|s| s.1 >= best - 0.02)?;
    while i + 1 < scores.len() && scores[i + 1].1 > scores[i].1 {
        i += 1; // to the top of that peak
    }
    let (best_coarse, voicing) = scores[i];
    let center = best_coarse * DECIMATE;
    let (from, to) = (
        center.saturating_sub(DECIMATE).max(MIN_PERIOD),
        (center + DECIMATE).min(max),
    );
    // The lag is refined at 48 kHz; the voicing is judged at 12 kHz (the band where a voice's
    // periodicity lies, as NetEq judges it at 4 kHz).
    let samples = (from..=to)
        .filter(|&lag| lag + window <= x.len())
        .max_by(|&a, &b| {
            ncc_i16(&x[..window], &x[a..a + window]).total_cmp(&ncc_i16(&x[..window], &x[b..b + window]))
        })?;
    Some(Period {
        samples,
        correlation: voicing,
    })
}

/// Whether a frame may be stretched by `period`: voiced, or quiet.
fn stretchable(x: &[i16], period: &Period) -> bool {
    if period.correlation >= VOICED {
        return true;
    }
    let energy = x.iter().map(|&s| f64::from(s) * f64::from(s)).sum::<f64>() / x.len().max(1) as f64;
    energy < QUIET
}

/// Shortens `x` by one pitch period (cross-fading two periods into one) when it is voiced or
/// quiet; `None` when it cannot be stretched unnoticed.
///
/// ```
/// // A 200 Hz tone (a 240-sample period): 960 samples become 720.
/// let x: Vec<i16> = (0..960).map(|i| ((i as f32 * 200.0 / 48_000.0 * std::f32::consts::TAU).sin() * 8_000.0) as i16).collect();
/// let y = huddle_media::stretch::accelerate(&x).unwrap();
/// assert_eq!(y.len(), 720);
/// ```
pub fn accelerate(x: &[i16]) -> Option<Vec<i16>> {
    let period = pitch_period(x)?;
    if !stretchable(x, &period) {
        return None;
    }
    let p = period.samples;
    let mut out = Vec::with_capacity(x.len() - p);
    crossfade(&x[..p], &x[p..2 * p], &mut out);
    out.extend_from_slice(&x[2 * p..]);
    Some(out)
}

/// Lengthens `x` by one pitch period (repeating a period, cross-faded) when it is voiced or
/// quiet; `None` when it cannot be stretched unnoticed.
///
/// ```
/// let x: Vec<i16> = (0..960).map(|i| ((i as f32 * 200.0 / 48_000.0 * std::f32::consts::TAU).sin() * 8_000.0) as i16).collect();
/// let y = huddle_media::stretch::expand(&x).unwrap();
/// assert_eq!(y.len(), 1200);
/// ```
pub fn expand(x: &[i16]) -> Option<Vec<i16>> {
    let period = pitch_period(x)?;
    if !stretchable(x, &period) {
        return None;
    }
    let p = period.samples;
    let mut out = Vec::with_capacity(x.len() + p);
    out.extend_from_slice(&x[..p]);
    crossfade(&x[p..2 * p], &x[..p], &mut out);
    out.extend_from_slice(&x[p..]);
    Some(out)
}

/// Appends a linear cross-fade from `from` (fading out) to `to` (fading in).
fn crossfade(from: &[i16], to: &[i16], out: &mut Vec<i16>) {
    let n = from.len().min(to.len());
    for i in 0..n {
        let w = if n > 1 { i as f32 / (n - 1) as f32 } else { 1.0 };
        let s = f32::from(from[i]) * (1.0 - w) + f32::from(to[i]) * w;
        out.push(s.round().clamp(-32768.0, 32767.0) as i16);
    }
}

fn ncc(a: &[f32], b: &[f32]) -> f32 {
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        ab += f64::from(x) * f64::from(y);
        aa += f64::from(x) * f64::from(x);
        bb += f64::from(y) * f64::from(y);
    }
    if aa <= 0.0 || bb <= 0.0 {
        0.0
    } else {
        (ab / (aa * bb).sqrt()) as f32
    }
}

fn ncc_i16(a: &[i16], b: &[i16]) -> f32 {
    let (mut ab, mut aa, mut bb) = (0i64, 0i64, 0i64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (i64::from(x), i64::from(y));
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0 || bb == 0 {
        0.0
    } else {
        (ab as f64 / ((aa as f64) * (bb as f64)).sqrt()) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(hz: f32, n: usize) -> Vec<i16> {
        (0..n)
            .map(|i| ((i as f32 * hz / 48_000.0 * std::f32::consts::TAU).sin() * 8_000.0) as i16)
            .collect()
    }

    #[test]
    fn the_pitch_period_of_a_voice_like_tone_is_found() {
        let p = pitch_period(&tone(150.0, 960)).unwrap();
        assert_eq!(p.samples, 320);
        assert!(p.correlation > 0.99);
    }

    #[test]
    fn stretching_a_voiced_frame_keeps_it_smooth() {
        let x = tone(180.0, 960);
        for y in [accelerate(&x).unwrap(), expand(&x).unwrap()] {
            // Both ends untouched, and no jump anywhere larger than the tone's own slope.
            assert_eq!(y[0], x[0]);
            assert_eq!(y[y.len() - 1], x[x.len() - 1]);
            let max_step = x.windows(2).map(|w| (w[1] - w[0]).abs()).max().unwrap();
            let y_step = y.windows(2).map(|w| (w[1] - w[0]).abs()).max().unwrap();
            assert!(y_step <= max_step + 60, "{y_step} > {max_step}");
        }
    }

    #[test]
    fn loud_noise_is_left_alone_and_silence_is_stretched() {
        let mut state = 12_345u32;
        let noise: Vec<i16> = (0..960)
            .map(|_| {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                ((state >> 16) as i16) / 2
            })
            .collect();
        assert!(accelerate(&noise).is_none());
        assert!(expand(&noise).is_none());
        assert!(accelerate(&[0; 960]).is_some());
    }
}
