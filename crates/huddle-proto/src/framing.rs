//! RFC 4571 framing: datagrams over a byte stream, each after its length as a 16-bit big-endian
//! number. ICE over TCP (RFC 6544) carries STUN, DTLS, RTP and RTCP this way; the server's
//! ICE-TCP listener and the SDK's ICE-TCP fallback both frame with this module. Sans IO: feed
//! what the stream gave to a [`FrameDecoder`] and take the frames out.

/// A frame that cannot be a datagram of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A zero length (no datagram is empty).
    #[error("an empty frame")]
    Empty,
    /// Longer than the decoder's limit.
    #[error("a frame of {0} bytes, over the limit")]
    TooLong(usize),
}

/// `datagram` with its length before it; `None` if it is over 65 535 bytes.
///
/// ```
/// assert_eq!(huddle_proto::framing::encode(&[7, 8]).unwrap(), [0, 2, 7, 8]);
/// ```
pub fn encode(datagram: &[u8]) -> Option<Vec<u8>> {
    let len = u16::try_from(datagram.len()).ok()?;
    let mut f = Vec::with_capacity(datagram.len() + 2);
    f.extend_from_slice(&len.to_be_bytes());
    f.extend_from_slice(datagram);
    Some(f)
}

/// Splits a byte stream into frames of at most `max` bytes.
///
/// ```
/// use huddle_proto::framing::FrameDecoder;
///
/// let mut d = FrameDecoder::new(1500);
/// d.push(&[0, 3, 1, 2]);
/// assert_eq!(d.next_frame(), Ok(None)); // not whole yet
/// d.push(&[3, 0, 1, 9]);
/// assert_eq!(d.next_frame(), Ok(Some(vec![1, 2, 3])));
/// assert_eq!(d.next_frame(), Ok(Some(vec![9])));
/// assert_eq!(d.next_frame(), Ok(None));
/// ```
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Where the next frame starts in `buf`.
    start: usize,
    max: usize,
}

impl FrameDecoder {
    /// A decoder that refuses frames longer than `max` bytes.
    pub fn new(max: usize) -> FrameDecoder {
        FrameDecoder {
            buf: Vec::new(),
            start: 0,
            max,
        }
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, data: &[u8]) {
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            // Keep the buffer short: what was taken out goes.
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// The next whole frame, `Ok(None)` until one is; an error for a frame that cannot be a
    /// datagram (the stream is then unusable: close it).
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let rest = &self.buf[self.start..];
        let Some(head) = rest.get(..2) else {
            return Ok(None);
        };
        let len = usize::from(u16::from_be_bytes([head[0], head[1]]));
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if len > self.max {
            return Err(FrameError::TooLong(len));
        }
        let Some(frame) = rest.get(2..2 + len) else {
            return Ok(None);
        };
        let frame = frame.to_vec();
        self.start += 2 + len;
        Ok(Some(frame))
    }

    /// Bytes held that are not yet a whole frame.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_anywhere_come_out_whole_and_in_order() {
        let datagrams: Vec<Vec<u8>> = (1..40u8).map(|n| vec![n; usize::from(n) * 7]).collect();
        let stream: Vec<u8> = datagrams.iter().flat_map(|d| encode(d).unwrap()).collect();
        for chunk in [1, 2, 3, 5, 64, 1000] {
            let mut d = FrameDecoder::new(1500);
            let mut out = Vec::new();
            for piece in stream.chunks(chunk) {
                d.push(piece);
                while let Some(f) = d.next_frame().unwrap() {
                    out.push(f);
                }
            }
            assert_eq!(out, datagrams, "chunks of {chunk}");
            assert_eq!(d.pending(), 0);
        }
    }

    #[test]
    fn bad_lengths_are_errors() {
        let mut d = FrameDecoder::new(100);
        d.push(&[0, 101]);
        assert_eq!(d.next_frame(), Err(FrameError::TooLong(101)));
        let mut d = FrameDecoder::new(100);
        d.push(&[0, 0, 1]);
        assert_eq!(d.next_frame(), Err(FrameError::Empty));
        assert!(encode(&vec![0; 65_536]).is_none());
        assert_eq!(encode(&vec![1; 65_535]).unwrap().len(), 65_537);
    }
}
