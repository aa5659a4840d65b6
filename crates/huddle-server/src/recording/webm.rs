//! VP8 in WebM: RTP packets made whole frames again (RFC 7741), and the frames written with
//! libwebm's muxer (the `webm` crate), which lays out the EBML, clusters, cues and, at the end,
//! the duration.
//!
//! The depacketizer is ours (no crate does RFC 7741 on its own, apart from whole WebRTC stacks):
//! it reads the VP8 payload descriptor, joins the partitions of one picture (one RTP timestamp,
//! from the packet with `S` set and partition 0 to the one with the marker bit), and drops a
//! picture with a missing packet. The file starts on a keyframe (the first keyframe's header
//! gives the track's width and height), and after a dropped picture nothing is written until
//! the next keyframe, so that no frame in the file refers to one that is not there.

use std::io::{Seek, Write};

use webm::mux::{SegmentBuilder, SegmentMode, VideoCodecId, VideoTrack, Writer};

/// The VP8 payload descriptor's length and its `S` bit and partition index (RFC 7741 §4.2), or
/// `None` when the payload is too short for what its flags announce.
pub(crate) fn vp8_descriptor(payload: &[u8]) -> Option<(usize, bool, u8)> {
    let b0 = *payload.first()?;
    let start = b0 & 0x10 != 0;
    let partition = b0 & 0x07;
    let mut len = 1;
    if b0 & 0x80 != 0 {
        let x = *payload.get(1)?;
        len += 1;
        if x & 0x80 != 0 {
            // PictureID: 7 or 15 bits (M bit).
            let m = *payload.get(len)?;
            len += if m & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            len += 1; // TL0PICIDX
        }
        if x & 0x30 != 0 {
            len += 1; // TID / KEYIDX
        }
    }
    (payload.len() > len).then_some((len, start, partition))
}

/// Whether a VP8 frame is a keyframe (the frame tag's `P` bit is 0), and its width and height
/// when it is (RFC 6386 §9.1: start code, then 14-bit width and height).
pub(crate) fn vp8_keyframe(frame: &[u8]) -> Option<(u32, u32)> {
    if frame.len() < 10 || frame[0] & 1 != 0 || frame[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let w = u32::from(u16::from_le_bytes([frame[6], frame[7]]) & 0x3fff);
    let h = u32::from(u16::from_le_bytes([frame[8], frame[9]]) & 0x3fff);
    (w > 0 && h > 0).then_some((w, h))
}

/// A whole VP8 picture from its RTP packets.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Picture {
    /// The RTP timestamp (90 kHz) of its packets.
    pub(crate) rtp_ts: u64,
    pub(crate) data: Vec<u8>,
    /// Its width and height, when it is a keyframe.
    pub(crate) keyframe: Option<(u32, u32)>,
}

/// Joins RTP packets (in sequence order, as the reorder buffer hands them) into pictures.
#[derive(Debug, Default)]
pub(crate) struct Depacketizer {
    /// The picture being joined: its timestamp, bytes, and the next sequence number it needs.
    current: Option<(u64, Vec<u8>, u64)>,
    /// Pictures dropped for a missing packet or a broken descriptor.
    pub(crate) broken: u64,
}

impl Depacketizer {
    /// Takes the next packet (extended sequence number, extended timestamp, marker, payload);
    /// returns a picture when this packet completes one.
    pub(crate) fn push(&mut self, seq: u64, rtp_ts: u64, marker: bool, payload: &[u8]) -> Option<Picture> {
        let Some((skip, start, partition)) = vp8_descriptor(payload) else {
            if self.current.take().is_some() {
                self.broken += 1;
            }
            return None;
        };
        let body = &payload[skip..];
        if start && partition == 0 {
            if self.current.take().is_some() {
                // The previous picture never saw its marker.
                self.broken += 1;
            }
            self.current = Some((rtp_ts, body.to_vec(), seq + 1));
        } else {
            match &mut self.current {
                Some((ts, data, next)) if *ts == rtp_ts && *next == seq => {
                    data.extend_from_slice(body);
                    *next = seq + 1;
                }
                Some(_) => {
                    self.current = None;
                    self.broken += 1;
                    return None;
                }
                // The middle of a picture whose start was lost (or came before the recording).
                None => return None,
            }
        }
        if !marker {
            return None;
        }
        let (rtp_ts, data, _) = self.current.take()?;
        let keyframe = vp8_keyframe(&data);
        Some(Picture {
            rtp_ts,
            data,
            keyframe,
        })
    }
}

/// Why a frame was not written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Skipped {
    /// Waiting for a keyframe (at the start, or after a lost picture).
    NeedKeyframe,
    /// Its time is before the last frame's.
    Late,
}

/// What went wrong writing the file: the muxer refused (its writer failed underneath: see the
/// caller's IO error), or the finalization failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MuxError;

/// Writes VP8 pictures into a WebM file on `W`, from a keyframe on.
pub(crate) struct WebmVp8Writer<W: Write + Seek> {
    /// `Err` until the first keyframe: the destination, waiting for the track's size.
    state: Result<(webm::mux::Segment<W>, VideoTrack), Option<W>>,
    /// The last frame's time (ns), frames must not go back.
    last_ns: Option<u64>,
    first_ns: Option<u64>,
    /// A picture was lost since the last keyframe: only a keyframe is written next.
    need_keyframe: bool,
    pub(crate) frames: u64,
    pub(crate) keyframes: u64,
    /// The size of the first keyframe.
    pub(crate) size: Option<(u32, u32)>,
}

impl<W: Write + Seek> WebmVp8Writer<W> {
    /// A writer on `out` (nothing is written before the first keyframe).
    pub(crate) fn new(out: W) -> WebmVp8Writer<W> {
        WebmVp8Writer {
            state: Err(Some(out)),
            last_ns: None,
            first_ns: None,
            need_keyframe: true,
            frames: 0,
            keyframes: 0,
            size: None,
        }
    }

    /// A picture was lost: write nothing until the next keyframe.
    pub(crate) fn lost(&mut self) {
        self.need_keyframe = true;
    }

    /// Whether the writer waits for a keyframe.
    pub(crate) fn needs_keyframe(&self) -> bool {
        self.need_keyframe
    }

    /// The time covered, first frame to last, in ns.
    pub(crate) fn span_ns(&self) -> u64 {
        match (self.first_ns, self.last_ns) {
            (Some(f), Some(l)) => l - f,
            _ => 0,
        }
    }

    /// Writes `picture` at `at_ns` on the file's timeline.
    pub(crate) fn push(&mut self, at_ns: u64, picture: &Picture) -> Result<Result<(), Skipped>, MuxError> {
        if self.last_ns.is_some_and(|l| at_ns < l) {
            return Ok(Err(Skipped::Late));
        }
        if self.need_keyframe && picture.keyframe.is_none() {
            return Ok(Err(Skipped::NeedKeyframe));
        }
        if let Err(out) = &mut self.state {
            let Some((w, h)) = picture.keyframe else {
                return Ok(Err(Skipped::NeedKeyframe));
            };
            let out = out.take().ok_or(MuxError)?;
            let builder = SegmentBuilder::new(Writer::new(out))
                .and_then(|b| b.set_mode(SegmentMode::File))
                .and_then(|b| b.set_writing_app(concat!("huddle ", env!("CARGO_PKG_VERSION"))))
                .and_then(|b| b.add_video_track(w, h, VideoCodecId::VP8, None))
                .map_err(|_| MuxError)?;
            let (builder, track) = builder;
            self.size = Some((w, h));
            self.state = Ok((builder.build(), track));
        }
        let Ok((segment, track)) = &mut self.state else {
            return Err(MuxError);
        };
        let key = picture.keyframe.is_some();
        segment
            .add_frame(*track, &picture.data, at_ns, key)
            .map_err(|_| MuxError)?;
        self.need_keyframe = false;
        self.frames += 1;
        self.keyframes += u64::from(key);
        self.first_ns.get_or_insert(at_ns);
        self.last_ns = Some(at_ns);
        Ok(Ok(()))
    }

    /// Finalizes the file (cues, duration) and returns the destination; `None` when no keyframe
    /// came (nothing was written).
    pub(crate) fn finish(self) -> Result<Option<W>, MuxError> {
        match self.state {
            Err(out) => Ok(out.filter(|_| false)),
            Ok((segment, _)) => segment
                .finalize(None)
                .map(|w| Some(w.into_inner()))
                .map_err(|_| MuxError),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A VP8 keyframe header of `w`×`h` followed by `body` bytes.
    fn keyframe(w: u16, h: u16, body: usize) -> Vec<u8> {
        let mut f = vec![0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a];
        f.extend_from_slice(&w.to_le_bytes());
        f.extend_from_slice(&h.to_le_bytes());
        f.resize(10 + body, 0xab);
        f
    }

    fn interframe(body: usize) -> Vec<u8> {
        let mut f = vec![0x31, 0x01, 0x00];
        f.resize(3 + body, 0xcd);
        f
    }

    /// RTP payloads of `frame` in chunks of `mtu`, with a descriptor carrying a 15-bit picture ID.
    fn packetize(frame: &[u8], mtu: usize) -> Vec<Vec<u8>> {
        frame
            .chunks(mtu)
            .enumerate()
            .map(|(i, c)| {
                let mut p = vec![if i == 0 { 0x90 } else { 0x80 }, 0x80, 0x81, 0x23];
                p.extend_from_slice(c);
                p
            })
            .collect()
    }

    #[test]
    fn descriptors_of_every_shape() {
        assert_eq!(vp8_descriptor(&[0x10, 9]), Some((1, true, 0)));
        assert_eq!(vp8_descriptor(&[0x90, 0x80, 0x05, 9]), Some((3, true, 0)));
        assert_eq!(vp8_descriptor(&[0x90, 0x80, 0x85, 0x05, 9]), Some((4, true, 0)));
        assert_eq!(
            vp8_descriptor(&[0x81, 0xf0, 0x85, 0x05, 1, 2, 9]),
            Some((6, false, 1))
        );
        assert_eq!(vp8_descriptor(&[0x90, 0x80, 0x85]), None);
        assert_eq!(vp8_descriptor(&[0x10]), None);
        assert_eq!(vp8_descriptor(&[]), None);
    }

    #[test]
    fn packets_join_into_pictures_and_a_hole_drops_one() {
        let mut d = Depacketizer::default();
        let key = keyframe(320, 240, 3000);
        let packets = packetize(&key, 1000);
        let n = packets.len();
        let mut out = None;
        for (i, p) in packets.iter().enumerate() {
            out = d.push(10 + i as u64, 9000, i == n - 1, p);
        }
        let pic = out.unwrap();
        assert_eq!(pic.data, key);
        assert_eq!(pic.keyframe, Some((320, 240)));
        // A picture with its middle packet lost gives nothing.
        let inter = interframe(2500);
        let packets = packetize(&inter, 1000);
        assert_eq!(d.push(20, 12000, false, &packets[0]), None);
        assert_eq!(d.push(22, 12000, true, &packets[2]), None);
        assert_eq!(d.broken, 1);
        // The next whole one comes through.
        let p = packetize(&inter, 5000);
        let pic = d.push(23, 15000, true, &p[0]).unwrap();
        assert_eq!(pic.keyframe, None);
        assert_eq!(pic.data, inter);
    }

    #[test]
    fn the_file_starts_on_a_keyframe_and_reads_back() {
        let mut w = WebmVp8Writer::new(Cursor::new(Vec::new()));
        let pic = |key: bool, ts: u64| Picture {
            rtp_ts: ts,
            data: if key {
                keyframe(640, 360, 500)
            } else {
                interframe(200)
            },
            keyframe: key.then_some((640, 360)),
        };
        // Interframes before the first keyframe are not written.
        assert_eq!(w.push(0, &pic(false, 0)).unwrap(), Err(Skipped::NeedKeyframe));
        let ms = 1_000_000u64;
        w.push(100 * ms, &pic(true, 0)).unwrap().unwrap();
        for i in 1..30u64 {
            w.push((100 + 33 * i) * ms, &pic(false, 0)).unwrap().unwrap();
        }
        // A lost picture: the interframes after it wait for the next keyframe.
        w.lost();
        assert_eq!(
            w.push(1200 * ms, &pic(false, 0)).unwrap(),
            Err(Skipped::NeedKeyframe)
        );
        w.push(1300 * ms, &pic(true, 0)).unwrap().unwrap();
        assert_eq!(w.push(1299 * ms, &pic(false, 0)).unwrap(), Err(Skipped::Late));
        assert_eq!((w.frames, w.keyframes), (31, 2));
        assert_eq!(w.span_ns(), 1200 * ms);
        let bytes = w.finish().unwrap().unwrap().into_inner();
        let mut mkv = matroska_demuxer::MatroskaFile::open(Cursor::new(bytes)).unwrap();
        assert_eq!(mkv.ebml_header().doc_type(), "webm");
        let track = &mkv.tracks()[0];
        assert_eq!(track.codec_id(), "V_VP8");
        let video = track.video().unwrap();
        assert_eq!(
            (video.pixel_width().get(), video.pixel_height().get()),
            (640, 360)
        );
        let mut frame = matroska_demuxer::Frame::default();
        let mut times = Vec::new();
        let mut keys = 0;
        while mkv.next_frame(&mut frame).unwrap() {
            times.push(frame.timestamp);
            keys += u32::from(frame.is_keyframe == Some(true));
        }
        // Timestamps in ms (libwebm's default timecode scale), the first frame at 100 ms.
        assert_eq!(times.len(), 31);
        assert_eq!(times[0], 100);
        assert_eq!(*times.last().unwrap(), 1300);
        assert_eq!(keys, 2);
    }

    #[test]
    fn no_keyframe_no_file() {
        let mut w = WebmVp8Writer::new(Cursor::new(Vec::new()));
        let p = Picture {
            rtp_ts: 0,
            data: interframe(10),
            keyframe: None,
        };
        assert_eq!(w.push(0, &p).unwrap(), Err(Skipped::NeedKeyframe));
        assert!(w.finish().unwrap().is_none());
    }
}
