//! The whole receive path on virtual time: speech -> Opus with FEC -> lossy, jittery link ->
//! jitter buffer -> decode / FEC / PLC, compared with the original.

mod common;

use std::time::{Duration, Instant};

use common::{samples, speech_frames};
use huddle_media::impair::{Impairment, Link};
use huddle_media::{
    AudioFrame, FRAME_SAMPLES, JitterBuffer, JitterConfig, OpusConfig, OpusDecoder, OpusEncoder, Playout,
};

/// Plays the speech sample through a link with `loss` and 20 ms of jitter; returns the SNR of
/// what was played against the original, over the frames the receiver played or lost.
fn play(loss: f64, use_fec: bool, seed: u64) -> (f64, u64) {
    let input = speech_frames();
    let mut config = OpusConfig::default();
    config.packet_loss_percent = 30;
    let mut encoder = OpusEncoder::new(config).unwrap();
    let mut impairment = Impairment::default();
    impairment.delay = Duration::from_millis(50);
    impairment.jitter = Duration::from_millis(20);
    impairment.loss = loss;
    let mut link = Link::new(impairment, seed);
    let mut jb = JitterBuffer::new(JitterConfig::default());
    let mut decoder = OpusDecoder::new().unwrap();
    // Decoded frames by input frame index (expansion frames have none and are left out).
    let mut played: Vec<Option<AudioFrame>> = vec![None; input.len()];

    let t0 = Instant::now();
    let first_seq: u16 = 65_000;
    for ms in 0..(input.len() as u64 * 20 + 1_000) {
        let now = t0 + Duration::from_millis(ms);
        if ms % 20 == 0 && ((ms / 20) as usize) < input.len() {
            let i = (ms / 20) as usize;
            let packet = encoder.encode(&input[i]).unwrap();
            link.send(
                (
                    first_seq.wrapping_add(i as u16),
                    (i * FRAME_SAMPLES) as u32,
                    packet,
                ),
                now,
            );
        }
        while let Some((seq, ts, payload)) = link.recv(now) {
            jb.insert(seq, ts, payload, now);
        }
        if ms % 20 == 11 {
            while let Some(out) = jb.pop(now) {
                match out {
                    Playout::Packet { seq, payload, .. } => {
                        played[usize::from(seq.wrapping_sub(first_seq))] =
                            Some(decoder.decode(&payload).unwrap());
                    }
                    Playout::Lost { seq, fec_from } => {
                        let frame = match fec_from {
                            Some(next) if use_fec => decoder.decode_fec(&next).unwrap(),
                            _ => decoder.conceal(),
                        };
                        let i = usize::from(seq.wrapping_sub(first_seq));
                        if i < played.len() {
                            played[i] = Some(frame);
                        }
                    }
                    _ => {
                        decoder.conceal();
                    }
                }
            }
        }
    }
    let x = samples(&input);
    let lag = 309; // Opus' codec delay (see tests/opus.rs)
    let (mut signal, mut noise) = (0.0, 0.0);
    for (k, frame) in played.iter().enumerate().skip(1) {
        let Some(frame) = frame else { continue };
        for (n, &s) in frame.samples.iter().enumerate() {
            let o = x[k * FRAME_SAMPLES + n - lag];
            signal += o * o;
            noise += (o - f64::from(s) / 32768.0).powi(2);
        }
    }
    (10.0 * (signal / noise).log10(), jb.stats().fec_recovered)
}

#[test]
fn fec_through_the_jitter_buffer_beats_concealment_at_30_percent_loss() {
    let (clean, _) = play(0.0, true, 1);
    let (fec, recovered) = play(0.3, true, 1);
    let (plc, _) = play(0.3, false, 1);
    eprintln!(
        "speech SNR: clean {clean:.1} dB, 30 % loss with FEC {fec:.1} dB, with PLC only {plc:.1} dB ({recovered} frames from FEC)"
    );
    assert!(clean > 8.0, "{clean:.1} dB");
    assert!(recovered > 20);
    assert!(fec > plc + 2.5, "FEC {fec:.1} dB, PLC {plc:.1} dB");
}
