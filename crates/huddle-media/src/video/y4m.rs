//! YUV4MPEG2 (`.y4m`) files: raw 8-bit 4:2:0 video with a one-line text header.

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::Path;

use super::{I420Frame, check_dimensions};
use crate::error::{MediaError, Result};

/// Longest header or frame-header line accepted (real ones are well under 100 bytes).
const MAX_LINE: u64 = 4096;

/// Reads a Y4M file frame by frame.
///
/// Accepts 8-bit 4:2:0 (`C420jpeg`, the default when `C` is absent, `C420`, `C420mpeg2`,
/// `C420paldv`: they differ only in chroma siting, which is kept as is) and `Cmono` (read with
/// neutral chroma). Other colour spaces (4:2:2, 4:4:4, high bit depth) are refused with
/// [`MediaError::Unsupported`].
///
/// ```
/// use huddle_media::{TestPattern, Y4mReader, Y4mWriter};
/// let mut file = Vec::new();
/// let mut writer = Y4mWriter::new(&mut file, 64, 48, (30, 1))?;
/// let frame = TestPattern::new(64, 48)?.next_frame();
/// writer.write_frame(&frame)?;
/// drop(writer);
///
/// let mut reader = Y4mReader::new(std::io::Cursor::new(file))?;
/// assert_eq!((reader.width(), reader.height(), reader.frame_rate()), (64, 48, (30, 1)));
/// assert_eq!(reader.read_frame()?, Some(frame));
/// assert_eq!(reader.read_frame()?, None);
/// # Ok::<(), huddle_media::MediaError>(())
/// ```
pub struct Y4mReader<R: BufRead = BufReader<File>> {
    reader: R,
    width: u32,
    height: u32,
    frame_rate: (u32, u32),
    colour_space: String,
    mono: bool,
    /// Length of the file header, where the first frame starts.
    header_len: u64,
    line: Vec<u8>,
}

impl Y4mReader<BufReader<File>> {
    /// Opens a Y4M file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let file = File::open(path.as_ref()).map_err(|e| {
            MediaError::Io(std::io::Error::new(
                e.kind(),
                format!("{}: {e}", path.as_ref().display()),
            ))
        })?;
        Y4mReader::new(BufReader::new(file))
    }
}

impl<R: BufRead> Y4mReader<R> {
    /// Reads the header from `reader`.
    pub fn new(mut reader: R) -> Result<Self> {
        let mut line = Vec::new();
        if !read_line(&mut reader, &mut line)? {
            return Err(MediaError::Format("Y4M: empty file".into()));
        }
        let header_len = line.len() as u64 + 1;
        let text =
            std::str::from_utf8(&line).map_err(|_| MediaError::Format("Y4M: header is not text".into()))?;
        let mut params = text.split(' ');
        if params.next() != Some("YUV4MPEG2") {
            return Err(MediaError::Format("Y4M: missing YUV4MPEG2 signature".into()));
        }
        let (mut width, mut height, mut frame_rate) = (None, None, (30, 1));
        let mut colour_space = "420jpeg".to_string();
        for param in params.filter(|p| !p.is_empty()) {
            let (tag, value) = param.split_at(1);
            match tag {
                "W" => width = Some(parse_number(value, "width")?),
                "H" => height = Some(parse_number(value, "height")?),
                "F" => {
                    let (num, den) = parse_ratio(value, "frame rate")?;
                    // 0:0 means unknown.
                    if num > 0 && den > 0 {
                        frame_rate = (num, den);
                    }
                }
                "C" => colour_space = value.to_string(),
                // Interlacing, aspect ratio and extensions do not change the data layout.
                _ => {}
            }
        }
        let (Some(width), Some(height)) = (width, height) else {
            return Err(MediaError::Format("Y4M: header without W or H".into()));
        };
        check_dimensions(width, height)?;
        let mono = match colour_space.as_str() {
            "420jpeg" | "420" | "420mpeg2" | "420paldv" => false,
            "mono" => true,
            other => {
                return Err(MediaError::Unsupported(format!(
                    "Y4M colour space C{other} (8-bit 4:2:0 only)"
                )));
            }
        };
        Ok(Y4mReader {
            reader,
            width,
            height,
            frame_rate,
            colour_space,
            mono,
            header_len,
            line,
        })
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Frame rate as (numerator, denominator) frames per second (30:1 when the file does not
    /// say).
    pub fn frame_rate(&self) -> (u32, u32) {
        self.frame_rate
    }

    /// The colour space tag without its `C` (`"420jpeg"`, `"420mpeg2"`, `"mono"`...).
    pub fn colour_space(&self) -> &str {
        &self.colour_space
    }

    /// The next frame, or `None` at the end of the file.
    pub fn read_frame(&mut self) -> Result<Option<I420Frame>> {
        if !read_line(&mut self.reader, &mut self.line)? {
            return Ok(None);
        }
        if !self.line.starts_with(b"FRAME") {
            return Err(MediaError::Format("Y4M: expected a FRAME header".into()));
        }
        let mut frame = I420Frame::new(self.width, self.height)?;
        let target = if self.mono {
            frame.y_mut()
        } else {
            frame.planes_mut_all()
        };
        self.reader.read_exact(target).map_err(|e| match e.kind() {
            ErrorKind::UnexpectedEof => MediaError::Format("Y4M: file ends inside a frame".into()),
            _ => MediaError::Io(e),
        })?;
        if self.mono {
            let (_, u, v) = frame.planes_mut();
            u.fill(128);
            v.fill(128);
        }
        Ok(Some(frame))
    }
}

impl<R: BufRead + Seek> Y4mReader<R> {
    /// Goes back to the first frame (to loop a file).
    pub fn rewind(&mut self) -> Result<()> {
        self.reader.seek(SeekFrom::Start(self.header_len))?;
        Ok(())
    }
}

impl<R: BufRead> fmt::Debug for Y4mReader<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Y4mReader")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("frame_rate", &self.frame_rate)
            .field("colour_space", &self.colour_space)
            .finish_non_exhaustive()
    }
}

/// Reads one `\n`-terminated line (without the `\n`) into `line`. Returns false at the end of
/// the input before any byte.
fn read_line(reader: &mut impl BufRead, line: &mut Vec<u8>) -> Result<bool> {
    line.clear();
    let n = reader.by_ref().take(MAX_LINE).read_until(b'\n', line)?;
    if n == 0 {
        return Ok(false);
    }
    if line.pop() != Some(b'\n') {
        return Err(MediaError::Format(
            "Y4M: header line too long or truncated".into(),
        ));
    }
    Ok(true)
}

fn parse_number(value: &str, what: &str) -> Result<u32> {
    value
        .parse()
        .map_err(|_| MediaError::Format(format!("Y4M: bad {what} {value:?}")))
}

fn parse_ratio(value: &str, what: &str) -> Result<(u32, u32)> {
    let (num, den) = value
        .split_once(':')
        .ok_or_else(|| MediaError::Format(format!("Y4M: bad {what} {value:?}")))?;
    Ok((parse_number(num, what)?, parse_number(den, what)?))
}

impl I420Frame {
    /// All the bytes, writable (for readers filling a frame in one go).
    fn planes_mut_all(&mut self) -> &mut [u8] {
        &mut self.data
    }
}

/// Writes frames to a Y4M file (`C420jpeg`, progressive, square pixels).
pub struct Y4mWriter<W: Write = BufWriter<File>> {
    writer: W,
    width: u32,
    height: u32,
}

impl Y4mWriter<BufWriter<File>> {
    /// Creates (or truncates) a Y4M file for frames of this size and frame rate
    /// (numerator, denominator).
    pub fn create(path: impl AsRef<Path>, width: u32, height: u32, frame_rate: (u32, u32)) -> Result<Self> {
        let file = File::create(path.as_ref()).map_err(|e| {
            MediaError::Io(std::io::Error::new(
                e.kind(),
                format!("{}: {e}", path.as_ref().display()),
            ))
        })?;
        Y4mWriter::new(BufWriter::new(file), width, height, frame_rate)
    }
}

impl<W: Write> Y4mWriter<W> {
    /// Writes the header to `writer`.
    pub fn new(mut writer: W, width: u32, height: u32, frame_rate: (u32, u32)) -> Result<Self> {
        check_dimensions(width, height)?;
        if frame_rate.0 == 0 || frame_rate.1 == 0 {
            return Err(MediaError::InvalidArgument("frame rate must be above 0".into()));
        }
        writeln!(
            writer,
            "YUV4MPEG2 W{width} H{height} F{}:{} Ip A1:1 C420jpeg",
            frame_rate.0, frame_rate.1
        )?;
        Ok(Y4mWriter {
            writer,
            width,
            height,
        })
    }

    /// Appends a frame.
    pub fn write_frame(&mut self, frame: &I420Frame) -> Result<()> {
        if (frame.width(), frame.height()) != (self.width, self.height) {
            return Err(MediaError::FrameSize {
                width: self.width,
                height: self.height,
                got_width: frame.width(),
                got_height: frame.height(),
            });
        }
        self.writer.write_all(b"FRAME\n")?;
        self.writer.write_all(frame.data())?;
        Ok(())
    }

    /// Flushes and gives the writer back.
    pub fn finish(mut self) -> Result<W> {
        self.writer.flush()?;
        Ok(self.writer)
    }
}

impl<W: Write> fmt::Debug for Y4mWriter<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Y4mWriter")
            .field("width", &self.width)
            .field("height", &self.height)
            .finish_non_exhaustive()
    }
}
