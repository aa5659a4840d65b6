//! Decodes a recorded Opus stream three ways, to see what in-band FEC is worth on it.
//!
//! usage: fec_replay FRAMES OUT [SENT.wav OFFSET_MS BITRATE LOSS_PCT]
//!
//! FRAMES has one line per frame the publisher sent, in its order: `R <hex>` for a frame the
//! player received, `L <hex>` for one it did not (`scripts/fec_replay.py` writes it from a traced
//! interop call). Writes `OUT-perfect.wav` (every frame decoded), `OUT-conceal.wav` (lost frames
//! concealed) and `OUT-fec.wav` (a lost frame whose next packet came recovered from that packet's
//! FEC, as the player does), and prints how many lost frames had FEC at hand and whether
//! `decode_fec` failed. With SENT.wav, the frames are first re-encoded from that file (from
//! OFFSET_MS on) with this crate's encoder at BITRATE and LOSS_PCT, keeping the loss pattern: the
//! same losses on another encoder's stream.
//!
//! usage: fec_replay --player ARRIVALS OUT
//!
//! Plays what a player received (`seq ts arrival_s hex` a line, in arrival order) through
//! [`AudioPlayer`] on virtual time, pulling a frame every 20 ms, into `OUT-player.wav`, and prints
//! the player's counters.

#[path = "../tests/support/arrivals.rs"]
mod arrivals;

use std::io::BufRead;
use std::time::{Duration, Instant};

use huddle_media::{
    AudioFrame, AudioPlayer, FRAME_SAMPLES, JitterConfig, OpusConfig, OpusDecoder, OpusEncoder,
    packet_has_fec,
};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 4 && args[1] == "--player" {
        return replay_player(&args[2], &args[3]);
    }
    if args.len() != 3 && args.len() != 7 {
        eprintln!("usage: fec_replay FRAMES OUT [SENT.wav OFFSET_MS BITRATE LOSS_PCT]");
        std::process::exit(2);
    }
    let file = std::fs::File::open(&args[1]).expect("FRAMES");
    let mut frames: Vec<(bool, Vec<u8>)> = std::io::BufReader::new(file)
        .lines()
        .map(|l| {
            let l = l.expect("FRAMES line");
            let (kind, hex) = l.split_once(' ').expect("`R HEX` or `L HEX`");
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
                .collect();
            (kind == "R", bytes)
        })
        .collect();
    if args.len() == 7 {
        let pcm: Vec<i16> = hound::WavReader::open(&args[3])
            .expect("SENT.wav")
            .samples::<i16>()
            .map(|s| s.expect("sample"))
            .collect();
        let offset = args[4].parse::<usize>().expect("OFFSET_MS") * 48;
        let mut config = OpusConfig::default();
        config.bitrate = args[5].parse().expect("BITRATE");
        config.packet_loss_percent = args[6].parse().expect("LOSS_PCT");
        let mut encoder = OpusEncoder::new(config).expect("encoder");
        for (i, frame) in frames.iter_mut().enumerate() {
            let at = offset + i * FRAME_SAMPLES;
            let mut samples = [0; FRAME_SAMPLES];
            if let Some(s) = pcm.get(at..at + FRAME_SAMPLES) {
                samples.copy_from_slice(s);
            }
            frame.1 = encoder
                .encode(&AudioFrame {
                    timestamp: 0,
                    samples,
                })
                .expect("encode");
        }
    }
    let new = || OpusDecoder::new().expect("decoder");
    let (mut perfect, mut conceal, mut fec) = (new(), new(), new());
    let (mut out_perfect, mut out_conceal, mut out_fec) = (Vec::new(), Vec::new(), Vec::new());
    let (mut lost, mut next_here, mut next_fec, mut fec_errors, mut decode_errors) = (0, 0, 0, 0, 0);
    for (i, (received, packet)) in frames.iter().enumerate() {
        let mut decode = |d: &mut OpusDecoder| {
            d.decode(packet).unwrap_or_else(|_| {
                decode_errors += 1;
                d.conceal()
            })
        };
        out_perfect.extend_from_slice(&decode(&mut perfect).samples);
        if *received {
            out_conceal.extend_from_slice(&decode(&mut conceal).samples);
            out_fec.extend_from_slice(&decode(&mut fec).samples);
            continue;
        }
        lost += 1;
        out_conceal.extend_from_slice(&conceal.conceal().samples);
        let frame = match frames.get(i + 1) {
            Some((true, next)) => {
                next_here += 1;
                next_fec += usize::from(packet_has_fec(next));
                fec.decode_fec(next).unwrap_or_else(|e| {
                    eprintln!("decode_fec failed: {e}");
                    fec_errors += 1;
                    fec.conceal()
                })
            }
            _ => fec.conceal(),
        };
        out_fec.extend_from_slice(&frame.samples);
    }
    println!(
        "frames {} lost {lost} next-received {next_here} next-with-fec {next_fec} decode_fec-errors {fec_errors} decode-errors {decode_errors}",
        frames.len()
    );
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 48_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    for (name, samples) in [
        ("perfect", out_perfect),
        ("conceal", out_conceal),
        ("fec", out_fec),
    ] {
        let mut w = hound::WavWriter::create(format!("{}-{name}.wav", args[2]), spec).expect("OUT");
        for s in samples {
            w.write_sample(s).expect("write");
        }
        w.finalize().expect("write");
    }
}

fn replay_player(arrivals: &str, out: &str) {
    let text = std::fs::read_to_string(arrivals).expect("ARRIVALS");
    let packets = arrivals::parse(&text);
    let mut player = AudioPlayer::new(JitterConfig::default()).expect("player");
    let start = Instant::now();
    let t0 = packets[0].2;
    let end = packets.last().expect("packets").2 - t0 + 0.5;
    let at = |s: f64| start + Duration::from_secs_f64(s);
    let mut next = 0;
    let mut samples = Vec::new();
    let mut tick = 0.0;
    while tick < end {
        while next < packets.len() && packets[next].2 - t0 <= tick {
            let (seq, ts, arrival, payload) = packets[next].clone();
            player.insert(seq, ts, payload, at(arrival - t0));
            next += 1;
        }
        match player.pull(at(tick)) {
            Some(f) => samples.extend_from_slice(&f.samples),
            None => samples.extend_from_slice(&[0; FRAME_SAMPLES]),
        }
        tick += 0.02;
    }
    println!("{:?}", player.stats());
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 48_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(format!("{out}-player.wav"), spec).expect("OUT");
    for s in samples {
        w.write_sample(s).expect("write");
    }
    w.finalize().expect("write");
}
