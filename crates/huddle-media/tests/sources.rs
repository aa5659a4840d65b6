//! WAV and tone sources, the WAV recorder and the mixer.

mod common;

use std::f64::consts::TAU;
use std::io::Cursor;

use common::{best_lag, correlation, rms, samples, tone_frequency};
use huddle_media::{
    AudioFrame, AudioSink, AudioSource, FRAME_SAMPLES, Playback, ToneSource, WavRecorder, WavSource, mix,
};

/// A WAV file in memory: a `freq` Hz sine of peak `amp` on every channel (the right channel
/// scaled by `right_gain`), `secs` long.
fn wav_tone(
    rate: u32,
    channels: u16,
    format: (hound::SampleFormat, u16),
    freq: f64,
    amp: f64,
    right_gain: f64,
    secs: f64,
) -> Vec<u8> {
    let spec = hound::WavSpec {
        channels,
        sample_rate: rate,
        bits_per_sample: format.1,
        sample_format: format.0,
    };
    let mut buf = Cursor::new(Vec::new());
    let mut writer = hound::WavWriter::new(&mut buf, spec).unwrap();
    let n = (secs * f64::from(rate)).round() as usize;
    for i in 0..n {
        let s = amp * (TAU * freq * i as f64 / f64::from(rate)).sin();
        for ch in 0..channels {
            let s = if ch == 1 { s * right_gain } else { s };
            match format {
                (hound::SampleFormat::Float, _) => writer.write_sample(s as f32).unwrap(),
                (hound::SampleFormat::Int, bits) => {
                    let full = f64::from(1u32 << (bits - 1));
                    writer
                        .write_sample((s * full).round().clamp(-full, full - 1.0) as i32)
                        .unwrap()
                }
            }
        }
    }
    writer.finalize().unwrap();
    buf.into_inner()
}

fn read_all(wav: Vec<u8>) -> Vec<AudioFrame> {
    let mut source = WavSource::from_reader(Cursor::new(wav), Playback::Once).unwrap();
    let mut frames = Vec::new();
    while let Some(frame) = source.read_frame().unwrap() {
        frames.push(frame);
    }
    assert!(
        source.read_frame().unwrap().is_none(),
        "an ended source stays ended"
    );
    frames
}

const INT16: (hound::SampleFormat, u16) = (hound::SampleFormat::Int, 16);

#[test]
fn resampling_keeps_the_tone_its_level_and_its_start() {
    let cases = [
        (16_000, 1, INT16, 440.0),
        (22_050, 1, INT16, 1000.0),
        (44_100, 2, INT16, 1000.0),
        (32_000, 1, (hound::SampleFormat::Float, 32), 700.0),
        (8_000, 1, (hound::SampleFormat::Int, 8), 300.0),
        (11_025, 1, INT16, 1000.0),
        (96_000, 1, INT16, 1000.0),
        (48_000, 2, (hound::SampleFormat::Int, 24), 1000.0),
    ];
    for (rate, channels, format, freq) in cases {
        let secs = 0.73;
        let frames = read_all(wav_tone(rate, channels, format, freq, 0.5, 1.0, secs));
        // The file's length, rounded up to whole frames (the last one padded with silence).
        let expected_frames = (secs * 48_000.0 / FRAME_SAMPLES as f64).ceil() as usize;
        assert_eq!(frames.len(), expected_frames, "{rate} Hz: frame count");
        for (i, f) in frames.iter().enumerate() {
            assert_eq!(f.timestamp, (i * FRAME_SAMPLES) as u32);
        }
        let x = samples(&frames);
        let body = &x[4_800..(secs * 48_000.0) as usize - 4_800];
        let measured = tone_frequency(body, 48_000.0);
        let level = rms(body) * 2f64.sqrt();
        // Starts with the file: matches a 48 kHz tone generated from t = 0, without delay (a
        // lag of one sample would already bring the correlation of 1 kHz below 0.992).
        let reference: Vec<f64> = (0..x.len())
            .map(|i| 0.5 * (TAU * freq * i as f64 / 48_000.0).sin())
            .collect();
        let lag = best_lag(&reference[4_800..14_400], &x[4_800..], 0..=10);
        let lead = best_lag(&x[4_800..14_400], &reference[4_800..], 0..=10);
        let c = correlation(&reference[..body.len()], &x[..body.len()]);
        eprintln!(
            "{rate} Hz x{channels} {format:?}: {measured:.3} Hz, peak {level:.4}, lag {lag}/{lead}, corr {c:.5}"
        );
        assert!(
            (measured - freq).abs() < 0.2,
            "{rate} Hz: measured {measured:.3} Hz for {freq} Hz"
        );
        assert!((level - 0.5).abs() < 0.01, "{rate} Hz: level {level:.4}");
        assert_eq!((lag, lead), (0, 0), "{rate} Hz: output shifted");
        assert!(c > 0.9995, "{rate} Hz: correlation {c}");
        // The padding after the end of the file is silence.
        assert!(
            x[(secs * 48_000.0) as usize + 50..]
                .iter()
                .all(|s| s.abs() < 0.02),
            "{rate} Hz: tail"
        );
    }
}

#[test]
fn stereo_is_mixed_down_to_the_average_of_the_channels() {
    // Right channel in antiphase: the average is silence.
    let silent = samples(&read_all(wav_tone(44_100, 2, INT16, 500.0, 0.5, -1.0, 0.3)));
    assert!(rms(&silent) < 1e-3, "rms {}", rms(&silent));
    // Right channel silent: half the level.
    let half = samples(&read_all(wav_tone(48_000, 2, INT16, 500.0, 0.5, 0.0, 0.3)));
    assert!((rms(&half[960..12_000]) * 2f64.sqrt() - 0.25).abs() < 0.005);
}

#[test]
fn a_looped_file_plays_on_without_a_gap() {
    // 0.525 s of 440 Hz at 16 kHz: 231 whole periods, so the looped signal is one clean tone;
    // 26.25 frames, so the seams fall inside frames.
    let wav = wav_tone(16_000, 1, INT16, 440.0, 0.5, 1.0, 0.525);
    let mut source = WavSource::from_reader(Cursor::new(wav), Playback::Loop).unwrap();
    assert_eq!((source.file_sample_rate(), source.file_channels()), (16_000, 1));
    assert_eq!(source.file_duration().as_millis(), 525);
    let frames: Vec<AudioFrame> = (0..150)
        .map(|_| source.read_frame().unwrap().expect("never ends"))
        .collect();
    let x = samples(&frames);
    let f = tone_frequency(&x[2_000..], 48_000.0);
    assert!((f - 440.0).abs() < 0.05, "{f}");
    let reference: Vec<f64> = (0..x.len())
        .map(|i| 0.5 * (TAU * 440.0 * i as f64 / 48_000.0).sin())
        .collect();
    let c = correlation(&reference[1_000..], &x[1_000..]);
    assert!(c > 0.999, "correlation {c}");
}

#[test]
fn an_empty_file_ends_at_once_and_cannot_loop() {
    let wav = wav_tone(16_000, 1, INT16, 440.0, 0.5, 1.0, 0.0);
    assert!(read_all(wav.clone()).is_empty());
    assert!(WavSource::from_reader(Cursor::new(wav), Playback::Loop).is_err());
    let err = WavSource::from_reader(Cursor::new(b"not a wav file".to_vec()), Playback::Once).unwrap_err();
    assert_eq!(err.code(), 1_000_006, "{err}");
}

#[test]
fn the_tone_source_has_its_frequency_and_level() {
    let mut tone = ToneSource::new(1234.5, 0.25).unwrap();
    let frames: Vec<AudioFrame> = (0..25).map(|_| tone.read_frame().unwrap().unwrap()).collect();
    let x = samples(&frames);
    assert!((tone_frequency(&x, 48_000.0) - 1234.5).abs() < 0.05);
    assert!((rms(&x) * 2f64.sqrt() - 0.25).abs() < 0.001);
    assert!(ToneSource::new(0.0, 0.5).is_err());
    assert!(ToneSource::new(30_000.0, 0.5).is_err());
    assert!(ToneSource::new(440.0, 1.5).is_err());
}

#[test]
fn recorded_frames_read_back_exactly() {
    let mut tone = ToneSource::new(440.0, 0.8).unwrap();
    let frames: Vec<AudioFrame> = (0..20).map(|_| tone.next_frame()).collect();
    let mut buf = Cursor::new(Vec::new());
    let mut recorder = WavRecorder::from_writer(&mut buf).unwrap();
    for f in &frames {
        recorder.write_frame(f).unwrap();
    }
    assert_eq!(recorder.frames(), 20);
    recorder.finish().unwrap();
    let wav = buf.into_inner();
    let spec = hound::WavReader::new(Cursor::new(&wav)).unwrap().spec();
    assert_eq!(
        (spec.sample_rate, spec.channels, spec.bits_per_sample),
        (48_000, 1, 16)
    );
    assert_eq!(read_all(wav), frames);

    let dir = std::env::temp_dir().join(format!("huddle-media-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("recording.wav");
    let mut recorder = WavRecorder::create(&path).unwrap();
    recorder.write_frame(&frames[0]).unwrap();
    drop(recorder); // finishes the file too
    let mut source = WavSource::open(&path, Playback::Once).unwrap();
    assert_eq!(source.read_frame().unwrap().as_ref(), Some(&frames[0]));
    assert!(source.read_frame().unwrap().is_none());
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(WavSource::open(dir.join("missing.wav"), Playback::Once).is_err());
}

#[test]
fn mixing_sums_and_saturates() {
    let mut a = AudioFrame::silence(960);
    let mut b = AudioFrame::silence(960);
    let mut c = AudioFrame::silence(960);
    a.samples[..3].copy_from_slice(&[20_000, -20_000, 100]);
    b.samples[..3].copy_from_slice(&[20_000, -20_000, 200]);
    c.samples[..3].copy_from_slice(&[-20_000, 20_000, 300]);
    let abc = mix(960, [&a, &b, &c]);
    assert_eq!(&abc.samples[..3], &[20_000, -20_000, 600]);
    assert_eq!(mix(960, [&c, &b, &a]), abc, "order does not matter");
    assert_eq!(&mix(0, [&a, &b]).samples[..2], &[i16::MAX, i16::MIN]);
    assert_eq!(mix(7, []), AudioFrame::silence(7));
    let mut d = a.clone();
    d.mix_in(&b);
    assert_eq!(&d.samples[..3], &[i16::MAX, i16::MIN, 300]);
}
