//! No codec context leaks: its own test binary, so that no other test allocates meanwhile.

use huddle_media::{TestPattern, Vp8Config, Vp8Decoder, Vp8Encoder};

#[test]
fn codecs_are_freed_when_dropped() {
    fn resident_kib() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
        statm
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u64>().ok())
            .unwrap_or(0)
            * 4
    }
    let frame = TestPattern::new(320, 240).unwrap().frame(3);
    let cycle = || {
        let mut encoder = Vp8Encoder::new(Vp8Config::new(320, 240)).unwrap();
        let mut decoder = Vp8Decoder::new().unwrap();
        let encoded = encoder.encode(&frame, 0).unwrap();
        decoder.decode(&encoded[0].data).unwrap().unwrap();
    };
    for _ in 0..5 {
        cycle();
    }
    let before = resident_kib();
    for _ in 0..60 {
        cycle();
    }
    let grown = resident_kib().saturating_sub(before);
    // An encoder and a decoder of 320x240 hold over 1 MiB: leaking them would show.
    assert!(
        grown < 16 * 1024,
        "resident memory grew by {grown} KiB over 60 encoders and decoders"
    );
}
