//! Video frames (I420), the VP8 codec, a moving test pattern, Y4M files and PSNR.

pub(crate) mod pattern;
pub(crate) mod vp8;
pub(crate) mod y4m;

use std::fmt;

use crate::error::{MediaError, Result};

/// Largest width or height accepted (VP8 itself stops at 16383).
pub const MAX_DIMENSION: u32 = 16_383;

/// An 8-bit YUV 4:2:0 frame in the I420 layout: the Y plane, then U, then V, each plane tightly
/// packed (stride = plane width). The chroma planes are `(width + 1) / 2` by `(height + 1) / 2`.
///
/// ```
/// use huddle_media::I420Frame;
/// let mut frame = I420Frame::new(320, 240)?;
/// frame.y_mut()[0] = 235;
/// assert_eq!((frame.y().len(), frame.u().len(), frame.v().len()), (76_800, 19_200, 19_200));
/// # Ok::<(), huddle_media::MediaError>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct I420Frame {
    width: u32,
    height: u32,
    data: Vec<u8>,
}

impl I420Frame {
    /// A black frame (studio-range black: Y 16, U and V 128).
    pub fn new(width: u32, height: u32) -> Result<Self> {
        check_dimensions(width, height)?;
        let (y, c) = plane_sizes(width, height);
        let mut data = vec![128u8; y + 2 * c];
        data[..y].fill(16);
        Ok(I420Frame { width, height, data })
    }

    /// A frame from the I420 bytes of one picture (Y, then U, then V, tightly packed).
    pub fn from_data(width: u32, height: u32, data: Vec<u8>) -> Result<Self> {
        check_dimensions(width, height)?;
        let needed = Self::data_len(width, height);
        if data.len() != needed {
            return Err(MediaError::InvalidArgument(format!(
                "an I420 frame of {width}x{height} takes {needed} bytes, got {}",
                data.len()
            )));
        }
        Ok(I420Frame { width, height, data })
    }

    /// Bytes of an I420 picture of this size.
    pub fn data_len(width: u32, height: u32) -> usize {
        let (y, c) = plane_sizes(width, height);
        y + 2 * c
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Width and height of the U and V planes.
    pub fn chroma_size(&self) -> (u32, u32) {
        (self.width.div_ceil(2), self.height.div_ceil(2))
    }

    /// All three planes, one after the other.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The luma plane (`width` bytes a row).
    pub fn y(&self) -> &[u8] {
        &self.data[..self.y_len()]
    }

    /// The U plane (`(width + 1) / 2` bytes a row).
    pub fn u(&self) -> &[u8] {
        let (y, c) = (self.y_len(), self.c_len());
        &self.data[y..y + c]
    }

    /// The V plane.
    pub fn v(&self) -> &[u8] {
        let (y, c) = (self.y_len(), self.c_len());
        &self.data[y + c..]
    }

    /// The luma plane, writable.
    pub fn y_mut(&mut self) -> &mut [u8] {
        let y = self.y_len();
        &mut self.data[..y]
    }

    /// The three planes, writable.
    pub fn planes_mut(&mut self) -> (&mut [u8], &mut [u8], &mut [u8]) {
        let (y, c) = (self.y_len(), self.c_len());
        let (luma, chroma) = self.data.split_at_mut(y);
        let (u, v) = chroma.split_at_mut(c);
        (luma, u, v)
    }

    /// The bytes, giving the frame up.
    pub fn into_data(self) -> Vec<u8> {
        self.data
    }

    fn y_len(&self) -> usize {
        self.width as usize * self.height as usize
    }

    fn c_len(&self) -> usize {
        plane_sizes(self.width, self.height).1
    }
}

impl fmt::Debug for I420Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("I420Frame")
            .field("width", &self.width)
            .field("height", &self.height)
            .finish_non_exhaustive()
    }
}

/// Luma and (one) chroma plane sizes in bytes.
fn plane_sizes(width: u32, height: u32) -> (usize, usize) {
    let y = width as usize * height as usize;
    let c = width.div_ceil(2) as usize * height.div_ceil(2) as usize;
    (y, c)
}

pub(crate) fn check_dimensions(width: u32, height: u32) -> Result<()> {
    if width == 0 || height == 0 || width > MAX_DIMENSION || height > MAX_DIMENSION {
        return Err(MediaError::InvalidArgument(format!(
            "frame size {width}x{height} is outside 1x1..={MAX_DIMENSION}x{MAX_DIMENSION}"
        )));
    }
    Ok(())
}

/// Peak signal-to-noise ratio of `b` against `a`, in dB, over all three planes (the sum of
/// squared errors over every Y, U and V sample, as libvpx and ffmpeg report "overall" PSNR).
/// Identical frames give 100 dB, the cap libvpx uses.
///
/// ```
/// use huddle_media::{I420Frame, psnr};
/// let a = I420Frame::new(16, 16)?;
/// let mut b = a.clone();
/// assert_eq!(psnr(&a, &b)?, 100.0);
/// b.y_mut().iter_mut().for_each(|p| *p += 1); // error 1 on 256 of the 384 samples
/// assert!((psnr(&a, &b)? - 49.9).abs() < 0.1);
/// # Ok::<(), huddle_media::MediaError>(())
/// ```
pub fn psnr(a: &I420Frame, b: &I420Frame) -> Result<f64> {
    if (a.width, a.height) != (b.width, b.height) {
        return Err(MediaError::InvalidArgument(format!(
            "PSNR of frames of different sizes ({}x{} and {}x{})",
            a.width, a.height, b.width, b.height
        )));
    }
    let sse: u64 = a
        .data
        .iter()
        .zip(&b.data)
        .map(|(&x, &y)| {
            let d = u64::from(x.abs_diff(y));
            d * d
        })
        .sum();
    Ok(psnr_from_sse(sse, a.data.len()))
}

/// PSNR of the luma planes only.
pub fn psnr_y(a: &I420Frame, b: &I420Frame) -> Result<f64> {
    if (a.width, a.height) != (b.width, b.height) {
        return Err(MediaError::InvalidArgument(
            "PSNR of frames of different sizes".into(),
        ));
    }
    let sse: u64 = a
        .y()
        .iter()
        .zip(b.y())
        .map(|(&x, &y)| {
            let d = u64::from(x.abs_diff(y));
            d * d
        })
        .sum();
    Ok(psnr_from_sse(sse, a.y().len()))
}

fn psnr_from_sse(sse: u64, samples: usize) -> f64 {
    const MAX_PSNR: f64 = 100.0;
    if sse == 0 {
        return MAX_PSNR;
    }
    let mse = sse as f64 / samples as f64;
    (10.0 * (255.0 * 255.0 / mse).log10()).min(MAX_PSNR)
}
