//! The recorded arrivals of a traced call (`scripts/fec_replay.py`): one packet a line,
//! `seq ts arrival_seconds payload_hex`. Shared by `tests/player.rs` and `examples/fec_replay.rs`.

/// The packets of `text`: sequence number, RTP timestamp, arrival (s) and payload.
pub fn parse(text: &str) -> Vec<(u16, u32, f64, Vec<u8>)> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let bytes = (0..f[3].len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&f[3][i..i + 2], 16).expect("hex"))
                .collect();
            (
                f[0].parse().expect("seq"),
                f[1].parse().expect("ts"),
                f[2].parse().expect("arrival"),
                bytes,
            )
        })
        .collect()
}
