//! Opus in Ogg (RFC 7845), written as packets arrive: the `OpusHead` and `OpusTags` header pages,
//! then one audio packet per Opus frame group as received, with granule positions (48 kHz
//! samples) taken from the packets' place on the recording's timeline.
//!
//! The `ogg` crate lays out the pages (lacing, CRC-32, page sequence numbers, BOS/EOS flags).
//! What it cannot know is done here: the Opus headers, each packet's duration (from its TOC byte,
//! RFC 6716 §3.1) and where a page must end. A **gap** (packets lost, or the publisher sent
//! nothing for a while) is kept as a gap: the page before it ends at the last packet before the
//! gap, and the next page's granule position counts from the packet after it, so a decoder that
//! derives packet times from granule positions (RFC 7845 §4) puts silence there. No audio is made
//! up to fill it.

use std::io::{self, Write};

use ogg::writing::{PacketWriteEndInfo, PacketWriter};

/// Opus runs at 48 kHz in Ogg whatever the encoder's bandwidth (RFC 7845 §4).
pub(crate) const RATE: u64 = 48_000;

/// A page is ended after this many packets (one second of 20 ms frames) even without a gap, so
/// that a file cut short (a crash) loses at most about a second and players can seek.
const PACKETS_PER_PAGE: u32 = 50;

/// The samples (at 48 kHz) an Opus packet holds, from its TOC byte and, for code 3, its frame
/// count byte (RFC 6716 §3.1); `None` for an empty or malformed packet, or one longer than
/// 120 ms (which RFC 6716 forbids).
pub(crate) fn opus_samples(packet: &[u8]) -> Option<u64> {
    let toc = *packet.first()?;
    let config = toc >> 3;
    // Frame sizes in units of 2.5 ms (120 samples).
    let units: u64 = match config {
        0..=11 => [4, 8, 16, 24][usize::from(config % 4)],
        12..=15 => [4, 8][usize::from(config % 2)],
        _ => [1, 2, 4, 8][usize::from(config % 4)],
    };
    let frames: u64 = match toc & 3 {
        0 => 1,
        1 | 2 => 2,
        _ => u64::from(*packet.get(1)? & 0x3f),
    };
    let samples = units * 120 * frames;
    (frames > 0 && samples <= 5760).then_some(samples)
}

/// Whether an Opus packet is coded stereo (the TOC's `s` bit).
fn is_stereo(packet: &[u8]) -> bool {
    packet.first().is_some_and(|t| t & 0x04 != 0)
}

/// What became of a packet handed to [`OggOpusWriter::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Written (or held to be written with the next one).
    Written,
    /// It starts before the end of the packet written last (a duplicate, or reordered beyond the
    /// reorder window): dropped.
    Late,
    /// Not an Opus packet (empty, bad TOC): dropped.
    Malformed,
}

/// Writes one Opus stream into an Ogg file on `W` (see the [module documentation](self)).
pub(crate) struct OggOpusWriter<W: Write> {
    pages: PacketWriter<'static, W>,
    serial: u32,
    /// The last packet, written when the next one tells whether a gap follows it: its bytes and
    /// its end on the timeline (the granule position it gives its page).
    held: Option<(Vec<u8>, u64)>,
    /// Whether the headers are written (at the first packet: its TOC tells the channel count).
    started: bool,
    /// Packets in the page being filled.
    in_page: u32,
    /// The end (in samples) of the last packet taken.
    end: u64,
    /// The start of the first packet taken.
    first: Option<u64>,
    /// Gaps kept so far (for the tests and the log).
    pub(crate) gaps: u64,
}

impl<W: Write> OggOpusWriter<W> {
    /// A writer of the logical stream `serial` on `out` (nothing is written before the first
    /// packet).
    pub(crate) fn new(out: W, serial: u32) -> OggOpusWriter<W> {
        OggOpusWriter {
            pages: PacketWriter::new(out),
            serial,
            held: None,
            started: false,
            in_page: 0,
            end: 0,
            first: None,
            gaps: 0,
        }
    }

    /// The end of the last packet taken, in samples on the timeline.
    pub(crate) fn span_end(&self) -> u64 {
        self.end
    }

    /// The time covered, first packet's start to last packet's end, in samples.
    pub(crate) fn span(&self) -> u64 {
        self.first.map_or(0, |f| self.end.saturating_sub(f))
    }

    /// The `OpusHead` (RFC 7845 §5.1) and `OpusTags` (§5.2) packets, each on a page of its own.
    fn headers(&mut self, channels: u8) -> io::Result<()> {
        let mut head = Vec::with_capacity(19);
        head.extend_from_slice(b"OpusHead");
        head.push(1); // version
        head.push(channels);
        // Pre-skip 0: the recording starts in the middle of the encoder's stream, where there is
        // no encoder delay to skip; its first few milliseconds may sound as the decoder
        // converges.
        head.extend_from_slice(&0u16.to_le_bytes());
        head.extend_from_slice(&(RATE as u32).to_le_bytes()); // the input rate, for information
        head.extend_from_slice(&0i16.to_le_bytes()); // output gain
        head.push(0); // channel mapping family 0: mono or stereo
        self.pages
            .write_packet(head, self.serial, PacketWriteEndInfo::EndPage, 0)?;
        let vendor = concat!("huddle ", env!("CARGO_PKG_VERSION"));
        let mut tags = Vec::new();
        tags.extend_from_slice(b"OpusTags");
        tags.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
        tags.extend_from_slice(vendor.as_bytes());
        tags.extend_from_slice(&0u32.to_le_bytes()); // no user comments
        self.pages
            .write_packet(tags, self.serial, PacketWriteEndInfo::EndPage, 0)?;
        self.pages.inner_mut().flush()
    }

    /// Takes the packet that starts at sample `start` of the file's timeline.
    pub(crate) fn push(&mut self, start: u64, packet: &[u8]) -> io::Result<Pushed> {
        let Some(samples) = opus_samples(packet) else {
            return Ok(Pushed::Malformed);
        };
        if !self.started {
            self.headers(if is_stereo(packet) { 2 } else { 1 })?;
            self.started = true;
            self.first = Some(start);
        } else if start < self.end {
            return Ok(Pushed::Late);
        }
        let gap = self.held.is_some() && start > self.end;
        if let Some((bytes, end)) = self.held.take() {
            self.in_page += 1;
            let close = if gap || self.in_page >= PACKETS_PER_PAGE {
                self.in_page = 0;
                PacketWriteEndInfo::EndPage
            } else {
                PacketWriteEndInfo::NormalPacket
            };
            let page_ended = matches!(close, PacketWriteEndInfo::EndPage);
            self.pages.write_packet(bytes, self.serial, close, end)?;
            if page_ended {
                // The file is written a page at a time: what a page holds (about a second)
                // is all a recording keeps in memory, and all a crash loses.
                self.pages.inner_mut().flush()?;
            }
        }
        if gap {
            self.gaps += 1;
        }
        self.end = start + samples;
        self.held = Some((packet.to_vec(), self.end));
        Ok(Pushed::Written)
    }

    /// Writes the last packet on the last page (end of stream) and returns the writer.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        if let Some((bytes, end)) = self.held.take() {
            self.pages
                .write_packet(bytes, self.serial, PacketWriteEndInfo::EndStream, end)?;
        }
        let mut out = self.pages.into_inner();
        out.flush()?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A 20 ms mono CELT packet (config 31: 20 ms fullband; code 0: one frame) with a body.
    fn frame(fill: u8) -> Vec<u8> {
        vec![31 << 3, fill, fill, fill]
    }

    /// The pages of an Ogg file: (header type, granule position, sequence number, CRC ok).
    fn pages(bytes: &[u8]) -> Vec<(u8, u64, u32, bool)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at + 27 <= bytes.len() {
            assert_eq!(&bytes[at..at + 4], b"OggS", "page at {at}");
            let segments = usize::from(bytes[at + 26]);
            let body: usize = bytes[at + 27..at + 27 + segments]
                .iter()
                .map(|b| usize::from(*b))
                .sum();
            let len = 27 + segments + body;
            let page = &bytes[at..at + len];
            let granule = u64::from_le_bytes(page[6..14].try_into().unwrap());
            let seq = u32::from_le_bytes(page[18..22].try_into().unwrap());
            let crc = u32::from_le_bytes(page[22..26].try_into().unwrap());
            let mut zeroed = page.to_vec();
            zeroed[22..26].fill(0);
            out.push((page[5], granule, seq, crc == ogg_crc(&zeroed)));
            at += len;
        }
        assert_eq!(at, bytes.len(), "trailing bytes");
        out
    }

    /// CRC-32 as Ogg defines it (polynomial 0x04c11db7, no reflection, initial 0), written out
    /// here independently of the crate that writes the pages.
    fn ogg_crc(data: &[u8]) -> u32 {
        let mut crc = 0u32;
        for b in data {
            crc ^= u32::from(*b) << 24;
            for _ in 0..8 {
                crc = if crc & 0x8000_0000 != 0 {
                    (crc << 1) ^ 0x04c1_1db7
                } else {
                    crc << 1
                };
            }
        }
        crc
    }

    #[test]
    fn toc_bytes_give_packet_durations() {
        assert_eq!(opus_samples(&[31 << 3]), Some(960)); // CELT 20 ms
        assert_eq!(opus_samples(&[(31 << 3) | 1]), Some(1920)); // two frames
        assert_eq!(opus_samples(&[(28 << 3) | 3, 3]), Some(360)); // three 2.5 ms frames
        assert_eq!(opus_samples(&[1 << 3]), Some(960)); // SILK 20 ms
        assert_eq!(opus_samples(&[3 << 3]), Some(2880)); // SILK 60 ms
        assert_eq!(opus_samples(&[13 << 3]), Some(960)); // hybrid 20 ms
        assert_eq!(opus_samples(&[]), None);
        assert_eq!(opus_samples(&[(31 << 3) | 3]), None); // code 3 without a count
        assert_eq!(opus_samples(&[(31 << 3) | 3, 0]), None); // zero frames
        assert_eq!(opus_samples(&[(3 << 3) | 3, 3]), None); // 180 ms > 120 ms
    }

    #[test]
    fn headers_then_pages_with_valid_crcs_and_granules() {
        let mut w = OggOpusWriter::new(Cursor::new(Vec::new()), 7);
        for i in 0..120u64 {
            assert_eq!(w.push(i * 960, &frame(i as u8)).unwrap(), Pushed::Written);
        }
        assert_eq!(w.span(), 120 * 960);
        let bytes = w.finish().unwrap().into_inner();
        let p = pages(&bytes);
        assert!(p.iter().all(|(_, _, _, crc)| *crc), "{p:?}");
        // OpusHead (BOS), OpusTags, then pages of 50, 50 and 20 packets; EOS on the last.
        assert_eq!(p[0].0 & 2, 2);
        assert_eq!((p[0].1, p[1].1), (0, 0));
        let granules: Vec<u64> = p[2..].iter().map(|x| x.1).collect();
        assert_eq!(granules, [50 * 960, 100 * 960, 120 * 960]);
        assert_eq!(p.last().unwrap().0 & 4, 4);
        let seqs: Vec<u32> = p.iter().map(|x| x.2).collect();
        assert_eq!(seqs, (0..p.len() as u32).collect::<Vec<_>>());
        // The header's fields (RFC 7845 §5.1): version 1, one channel, pre-skip 0, 48 kHz.
        let head = &bytes[28..47];
        assert_eq!(&head[..8], b"OpusHead");
        assert_eq!((head[8], head[9]), (1, 1));
        assert_eq!(u32::from_le_bytes(head[12..16].try_into().unwrap()), 48_000);
    }

    #[test]
    fn a_gap_ends_the_page_and_the_granules_skip_it() {
        let mut w = OggOpusWriter::new(Cursor::new(Vec::new()), 1);
        for i in 0..10u64 {
            w.push(i * 960, &frame(1)).unwrap();
        }
        // 2 s of nothing (publisher paused), then 5 more frames.
        let resume = 10 * 960 + 96_000;
        for i in 0..5u64 {
            w.push(resume + i * 960, &frame(2)).unwrap();
        }
        assert_eq!(w.gaps, 1);
        let bytes = w.finish().unwrap().into_inner();
        let p = pages(&bytes);
        let granules: Vec<u64> = p[2..].iter().map(|x| x.1).collect();
        // The page before the gap ends at 10 frames; the one after ends 5 frames past the resume
        // point, so its first packet starts at `resume`, not right after the 10th frame.
        assert_eq!(granules, [10 * 960, resume + 5 * 960]);
        // Nothing was added: the file holds exactly the 15 packets sent.
        let mut reader = ogg::PacketReader::new(Cursor::new(bytes));
        let mut audio = 0;
        while let Some(pkt) = reader.read_packet().unwrap() {
            if !pkt.data.starts_with(b"Opus") {
                audio += 1;
            }
        }
        assert_eq!(audio, 15);
    }

    #[test]
    fn late_and_malformed_packets_are_dropped() {
        let mut w = OggOpusWriter::new(Cursor::new(Vec::new()), 1);
        w.push(0, &frame(1)).unwrap();
        w.push(960, &frame(1)).unwrap();
        assert_eq!(w.push(960, &frame(1)).unwrap(), Pushed::Late);
        assert_eq!(w.push(0, &frame(1)).unwrap(), Pushed::Late);
        assert_eq!(w.push(1920, &[]).unwrap(), Pushed::Malformed);
        assert_eq!(w.push(1920, &frame(1)).unwrap(), Pushed::Written);
        assert_eq!(w.gaps, 0);
    }

    #[test]
    fn a_stream_that_starts_late_has_its_start_in_the_first_granule() {
        let mut w = OggOpusWriter::new(Cursor::new(Vec::new()), 1);
        w.push(48_000, &frame(1)).unwrap();
        w.push(48_960, &frame(1)).unwrap();
        assert_eq!(w.span(), 1920);
        let p = pages(&w.finish().unwrap().into_inner());
        assert_eq!(p[2].1, 48_000 + 1920);
    }
}
