//! Opus round trips, FEC against PLC.

mod common;

use common::{best_lag, correlation, samples, snr_db, speech_frames};
use huddle_media::{
    AudioFrame, FRAME_SAMPLES, OpusConfig, OpusDecoder, OpusEncoder, ToneSource, packet_has_fec,
};

/// Opus' codec delay in VOIP mode: the encoder's look-ahead, 6.5 ms at 48 kHz.
const CODEC_DELAY: usize = 312;
/// Lags searched around it when aligning decoded audio with the input: less than half a period
/// of the 1 kHz test tone, so the alignment of a periodic signal is not ambiguous.
const SEARCH: usize = 20;

fn encode_all(frames: &[AudioFrame], config: &OpusConfig) -> Vec<Vec<u8>> {
    let mut encoder = OpusEncoder::new(config.clone()).unwrap();
    frames.iter().map(|f| encoder.encode(f).unwrap()).collect()
}

fn decode_all(packets: &[Vec<u8>]) -> Vec<AudioFrame> {
    let mut decoder = OpusDecoder::new().unwrap();
    packets.iter().map(|p| decoder.decode(p).unwrap()).collect()
}

/// Aligns `decoded` with `original` (skipping the first `skip` frames as warm-up) and returns
/// (lag, SNR dB, correlation).
fn compare(original: &[AudioFrame], decoded: &[AudioFrame], skip: usize) -> (usize, f64, f64) {
    let (x, y) = (samples(original), samples(decoded));
    let start = skip * FRAME_SAMPLES;
    // Search the lag on half a second, then measure everywhere.
    let probe = &x[start..start + 24_000];
    let lag = best_lag(probe, &y[start..], CODEC_DELAY - SEARCH..=CODEC_DELAY + SEARCH);
    let end = x.len() - CODEC_DELAY - SEARCH;
    let (x, y) = (&x[start..end], &y[start + lag..end + lag]);
    (lag, snr_db(x, y), correlation(x, y))
}

#[test]
fn a_1khz_tone_survives_the_round_trip() {
    let mut tone = ToneSource::new(1000.0, 0.5).unwrap();
    let input: Vec<AudioFrame> = (0..50).map(|_| tone.next_frame()).collect();
    let mut encoder = OpusEncoder::new(OpusConfig::default()).unwrap();
    let lookahead = encoder.lookahead().unwrap();
    let packets: Vec<Vec<u8>> = input.iter().map(|f| encoder.encode(f).unwrap()).collect();
    let output = decode_all(&packets);

    let (lag, snr, corr) = compare(&input, &output, 5);
    eprintln!("tone: lookahead {lookahead}, lag {lag}, SNR {snr:.1} dB, correlation {corr:.4}");
    // The decoder's output lags by the encoder's look-ahead (6.5 ms at 48 kHz in VOIP mode),
    // give or take the group delay of Opus' internal filters.
    assert_eq!(lookahead, CODEC_DELAY);
    assert!(lag.abs_diff(lookahead) <= 4, "lag {lag}");
    assert!(snr > 20.0, "SNR {snr:.1} dB");
    assert!(corr > 0.995, "correlation {corr:.4}");
    let bytes: usize = packets.iter().map(Vec::len).sum();
    // 50 frames are one second: the bitrate is what was asked for.
    let kbps = bytes * 8 / 1000;
    eprintln!("tone: {kbps} kbit/s");
    assert!((20..=48).contains(&kbps), "{kbps} kbit/s for a 32 kbit/s target");
}

#[test]
fn speech_survives_the_round_trip() {
    let input = speech_frames();
    let output = decode_all(&encode_all(&input, &OpusConfig::default()));
    let (lag, snr, corr) = compare(&input, &output, 5);
    eprintln!("speech: lag {lag}, SNR {snr:.1} dB, correlation {corr:.4}");
    assert!(lag.abs_diff(CODEC_DELAY) <= 4, "lag {lag}");
    assert!(snr > 8.0, "SNR {snr:.1} dB");
    assert!(corr > 0.9, "correlation {corr:.4}");
}

/// Loses every 8th frame of the speech sample and recovers it with FEC from the next packet,
/// or with PLC; FEC must come much closer to the original.
#[test]
fn fec_recovers_a_lost_frame_better_than_plc() {
    let input = speech_frames();
    let mut config = OpusConfig::default();
    config.packet_loss_percent = 20;
    let packets = encode_all(&input, &config);
    let with_fec = packets[1..].iter().filter(|p| packet_has_fec(p)).count();
    eprintln!("{with_fec} of {} packets carry FEC", packets.len() - 1);
    assert!(
        with_fec * 10 >= (packets.len() - 1) * 8,
        "FEC in only {with_fec} packets"
    );
    // The flag is the FEC one, not voice activity: without FEC (or without a loss hint) none.
    let mut off = config.clone();
    off.fec = false;
    assert!(!encode_all(&input, &off).iter().any(|p| packet_has_fec(p)));
    let mut no_hint = config.clone();
    no_hint.packet_loss_percent = 0;
    assert!(!encode_all(&input, &no_hint).iter().any(|p| packet_has_fec(p)));

    let lost: Vec<usize> = (8..packets.len() - 1).step_by(8).collect();
    let run = |use_fec: bool| {
        let mut decoder = OpusDecoder::new().unwrap();
        (0..packets.len())
            .map(|i| {
                if !lost.contains(&i) {
                    decoder.decode(&packets[i]).unwrap()
                } else if use_fec {
                    decoder.decode_fec(&packets[i + 1]).unwrap()
                } else {
                    decoder.conceal()
                }
            })
            .collect::<Vec<_>>()
    };
    let (fec, plc) = (run(true), run(false));

    // Measure both on the lost frames only, against the original delayed by the codec delay.
    let x = samples(&input);
    let (lag, _, _) = compare(&input, &decode_all(&packets), 5);
    let (mut energy, mut fec_err, mut plc_err) = (0.0, 0.0, 0.0);
    let mut voiced = 0;
    for &k in &lost {
        let original = &x[k * FRAME_SAMPLES - lag..(k + 1) * FRAME_SAMPLES - lag];
        let frame_energy: f64 = original.iter().map(|s| s * s).sum();
        if frame_energy < 1e-3 * FRAME_SAMPLES as f64 * 0.01 {
            continue; // silence: nothing to recover
        }
        voiced += 1;
        energy += frame_energy;
        for (i, &o) in original.iter().enumerate() {
            fec_err += (o - f64::from(fec[k].samples[i]) / 32768.0).powi(2);
            plc_err += (o - f64::from(plc[k].samples[i]) / 32768.0).powi(2);
        }
    }
    let fec_snr = 10.0 * (energy / fec_err).log10();
    let plc_snr = 10.0 * (energy / plc_err).log10();
    eprintln!("{voiced} voiced lost frames: FEC SNR {fec_snr:.1} dB, PLC SNR {plc_snr:.1} dB");
    assert!(voiced >= 10);
    assert!(
        fec_snr > plc_snr + 3.0,
        "FEC {fec_snr:.1} dB vs PLC {plc_snr:.1} dB"
    );
    assert!(fec_snr > 6.0, "FEC {fec_snr:.1} dB");
}

#[test]
fn decoding_rejects_what_is_not_a_20ms_packet() {
    let mut decoder = OpusDecoder::new().unwrap();
    assert!(decoder.decode(&[]).is_err());
    // TOC 0x08: SILK narrowband 20 ms -> fine; config 0 (10 ms) is not.
    let err = decoder.decode(&[0x00, 0xff, 0xff]).unwrap_err();
    assert!(
        matches!(err, huddle_media::MediaError::FrameDuration { samples: 480 }),
        "{err}"
    );
    assert_eq!(err.code(), 1_000_006);
    // Concealment always yields a frame.
    assert_eq!(decoder.conceal().samples.len(), FRAME_SAMPLES);
}

#[test]
fn encoder_settings_are_checked_and_kept() {
    let mut encoder = OpusEncoder::new(OpusConfig::default()).unwrap();
    assert!(encoder.set_bitrate(1_000).is_err());
    encoder.set_bitrate(64_000).unwrap();
    encoder.set_packet_loss_percent(30).unwrap();
    assert!(encoder.set_packet_loss_percent(101).is_err());
    encoder.set_dtx(true).unwrap();
    let config = encoder.config();
    assert_eq!(
        (config.bitrate, config.packet_loss_percent, config.dtx, config.fec),
        (64_000, 30, true, true)
    );
    // With DTX on, silence shrinks to tiny packets after a few frames.
    let sizes: Vec<usize> = (0..30)
        .map(|_| encoder.encode(&AudioFrame::silence(0)).unwrap().len())
        .collect();
    assert!(sizes[20..].iter().all(|&n| n <= 2), "{sizes:?}");
}
