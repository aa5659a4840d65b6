//! Measures the media building blocks: Opus and VP8 cost per frame, VP8 quality at typical
//! bitrates, jitter buffer cost per packet.
//!
//! `cargo run --release -p huddle-media --example media_bench` (drop `--release` for debug
//! numbers; libopus and libvpx are the system's optimised builds either way, so only the Rust
//! side changes).

use std::time::{Duration, Instant};

use huddle_media::{
    AudioFrame, JitterBuffer, JitterConfig, OpusConfig, OpusDecoder, OpusEncoder, TestPattern, ToneSource,
    Vp8Config, Vp8Decoder, Vp8Encoder, psnr,
};

fn main() -> Result<(), huddle_media::MediaError> {
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    println!("huddle-media bench ({profile} build)\n");

    // Opus: 10 s of a tone, 20 ms frames.
    let mut tone = ToneSource::new(440.0, 0.5)?;
    let frames: Vec<AudioFrame> = (0..500).map(|_| tone.next_frame()).collect();
    let mut encoder = OpusEncoder::new(OpusConfig::default())?;
    let started = Instant::now();
    let packets: Vec<Vec<u8>> = frames
        .iter()
        .map(|f| encoder.encode(f))
        .collect::<Result<_, _>>()?;
    let encode = started.elapsed() / 500;
    let mut decoder = OpusDecoder::new()?;
    let started = Instant::now();
    for p in &packets {
        decoder.decode(p)?;
    }
    let decode = started.elapsed() / 500;
    println!("Opus 32 kbit/s FEC: encode {encode:?}/frame, decode {decode:?}/frame");

    // VP8 at the default speed, then a speed sweep at 640x480.
    println!("\nVP8, 60 frames of the test pattern at 30 fps:");
    println!("size       kbit/s  cpu_used  PSNR dB  actual kbit/s  encode ms  decode ms");
    for (w, h, kbps, cpu) in [
        (320, 240, 300, -8),
        (640, 480, 800, -6),
        (640, 480, 800, -8),
        (640, 480, 800, -12),
        (1280, 720, 1500, -8),
    ] {
        let mut config = Vp8Config::new(w, h);
        config.bitrate_kbps = kbps;
        config.cpu_used = cpu;
        let mut encoder = Vp8Encoder::new(config)?;
        let mut decoder = Vp8Decoder::new()?;
        let pattern = TestPattern::new(w, h)?;
        let (mut enc_time, mut dec_time, mut bytes, mut quality) = (Duration::ZERO, Duration::ZERO, 0, 0.0);
        let n = 60;
        for i in 0..n {
            let source = pattern.frame(i);
            let started = Instant::now();
            let out = encoder.encode(&source, i as i64 * 3000)?;
            enc_time += started.elapsed();
            bytes += out[0].data.len();
            let started = Instant::now();
            let picture = decoder.decode(&out[0].data)?.expect("a picture");
            dec_time += started.elapsed();
            quality += psnr(&source, &picture)?;
        }
        println!(
            "{:<10} {:>6}  {:>8}  {:>7.1}  {:>13.0}  {:>9.2}  {:>9.2}",
            format!("{w}x{h}"),
            kbps,
            cpu,
            quality / n as f64,
            bytes as f64 * 8.0 * 30.0 / n as f64 / 1000.0,
            enc_time.as_secs_f64() * 1000.0 / n as f64,
            dec_time.as_secs_f64() * 1000.0 / n as f64,
        );
    }

    // Jitter buffer: one insert and one pop per 20 ms packet.
    let mut jb = JitterBuffer::new(JitterConfig::default());
    let t0 = Instant::now();
    let n = 100_000u32;
    let started = Instant::now();
    for i in 0..n {
        let now = t0 + Duration::from_millis(20 * u64::from(i));
        jb.insert(i as u16, 960 * i, vec![0; 80], now);
        while jb.pop(now + Duration::from_millis(25)).is_some() {}
    }
    println!(
        "\nJitter buffer: {:?} per packet (insert + pop)",
        started.elapsed() / n
    );
    Ok(())
}
