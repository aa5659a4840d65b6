//! Opus alone on the speech sample at 48 kbit/s without FEC, written to
//! `target/quality/opus-alone-48k.wav`: the codec's ceiling that `scripts/quality.sh clean`
//! scores beside the calls (a tool that writes a file, not a check).
//!
//! `cargo run -q -p huddle-media --example opus_alone`

use std::path::PathBuf;

use huddle_media::{
    AudioFrame, AudioSink, AudioSource, OpusConfig, OpusDecoder, OpusEncoder, Playback, WavRecorder,
    WavSource,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut source = WavSource::open(manifest.join("tests/data/speech-16k.wav"), Playback::Once)?;
    // Padded as the calls' speech is (2 s of silence before, 0.5 s after), so that the scorer
    // aligns and trims both alike.
    let mut frames = vec![AudioFrame::silence(0); 100];
    while let Some(f) = source.read_frame()? {
        frames.push(f);
    }
    frames.extend(vec![AudioFrame::silence(0); 25]);

    let mut config = OpusConfig::default();
    config.bitrate = 48_000;
    config.fec = false;
    config.packet_loss_percent = 0;
    let mut encoder = OpusEncoder::new(config)?;
    let mut decoder = OpusDecoder::new()?;
    let dir = manifest.join("../../target/quality");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("opus-alone-48k.wav");
    let mut out = WavRecorder::create(&path)?;
    for f in &frames {
        let packet = encoder.encode(f)?;
        out.write_frame(&decoder.decode(&packet)?)?;
    }
    out.finish()?;
    println!("{}", path.display());
    Ok(())
}
