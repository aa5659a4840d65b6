//! A moving test pattern: a camera-less video source whose frames all differ.

use super::{I420Frame, check_dimensions};
use crate::error::Result;

/// 75 % colour bars (Y, U, V; BT.601 studio range): white, yellow, cyan, green, magenta, red,
/// blue, black.
const BARS: [(u8, u8, u8); 8] = [
    (180, 128, 128),
    (162, 44, 142),
    (131, 156, 44),
    (112, 72, 58),
    (84, 184, 198),
    (65, 100, 212),
    (35, 212, 114),
    (16, 128, 128),
];

/// Generates a moving test pattern: colour bars on top of a "plasma" of three drifting sine
/// gratings (their sum changes shape every frame, so motion search alone cannot predict it), a
/// bouncing checkered box (sharp edges, pure motion) and the frame number in binary along the
/// bottom. Every frame differs from the one before, with detail, edges and motion an encoder
/// has to spend bits on, so a PSNR measured on it means something. Deterministic: frame `n` is
/// always the same picture.
///
/// ```
/// use huddle_media::{TestPattern, psnr};
/// let mut pattern = TestPattern::new(320, 240)?;
/// let a = pattern.next_frame();
/// let b = pattern.next_frame();
/// assert!(psnr(&a, &b)? < 30.0); // they differ
/// assert_eq!(a, pattern.frame(0));
/// # Ok::<(), huddle_media::MediaError>(())
/// ```
#[derive(Debug, Clone)]
pub struct TestPattern {
    width: u32,
    height: u32,
    index: u64,
}

impl TestPattern {
    /// A pattern of this size.
    pub fn new(width: u32, height: u32) -> Result<Self> {
        check_dimensions(width, height)?;
        Ok(TestPattern {
            width,
            height,
            index: 0,
        })
    }

    /// The next frame (frame 0 first).
    pub fn next_frame(&mut self) -> I420Frame {
        let frame = self.frame(self.index);
        self.index += 1;
        frame
    }

    /// Frame number `n`.
    pub fn frame(&self, n: u64) -> I420Frame {
        let (w, h) = (self.width as usize, self.height as usize);
        let mut frame = I420Frame::new(self.width, self.height).expect("size checked in new");
        let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
        let (luma, u, v) = frame.planes_mut();
        let t = n as usize;
        let bars_h = h / 6;
        let box_size = (w.min(h) / 4).max(2);
        let box_x = triangle(t * 4, w.saturating_sub(box_size));
        let box_y = bars_h + triangle(t * 3, h.saturating_sub(box_size + bars_h));
        let cell = (box_size / 6).max(1);

        // Each grating is amp * sin(kx * x + ky * y + speed * t); split as
        // sin(kx x) cos(ky y + s t) + cos(kx x) sin(ky y + s t) so a pixel costs a few
        // multiplications instead of three sines.
        const GRATINGS: [(f64, f64, f64, f64); 3] = [
            (44.0, 0.071, 0.043, 0.19),
            (32.0, -0.052, 0.118, -0.23),
            (20.0, 0.157, 0.149, 0.31),
        ];
        let columns: Vec<[(f64, f64); 3]> = (0..w)
            .map(|x| GRATINGS.map(|(_, kx, _, _)| ((kx * x as f64).sin(), (kx * x as f64).cos())))
            .collect();
        for y in 0..h {
            let rows = GRATINGS.map(|(amp, _, ky, speed)| {
                let phase = ky * y as f64 + speed * n as f64;
                (amp * phase.cos(), amp * phase.sin())
            });
            let row = &mut luma[y * w..(y + 1) * w];
            for (x, p) in row.iter_mut().enumerate() {
                *p = if y < bars_h {
                    BARS[x * 8 / w].0
                } else if (box_x..box_x + box_size).contains(&x) && (box_y..box_y + box_size).contains(&y) {
                    let (cx, cy) = ((x - box_x) / cell, (y - box_y) / cell);
                    if (cx + cy) % 2 == 0 { 235 } else { 40 }
                } else {
                    let mut v = 126.0;
                    for ((sx, cx), (a, b)) in columns[x].iter().zip(&rows) {
                        v += sx * a + cx * b;
                    }
                    v.clamp(16.0, 235.0) as u8
                };
            }
        }
        // The frame number in binary: 16 blocks along the bottom, white for 1.
        let block = (w / 32).clamp(1, 16);
        if h > block * 2 {
            for bit in 0..16.min(w / block) {
                let on = (n >> bit) & 1 == 1;
                for y in h - block * 2..h - block {
                    for x in bit * block..(bit + 1) * block {
                        luma[y * w + x] = if on { 235 } else { 16 };
                    }
                }
            }
        }
        for y in 0..ch {
            for x in 0..cw {
                let i = y * cw + x;
                let (px, py) = (x * 2, y * 2);
                (u[i], v[i]) = if py < bars_h {
                    let bar = BARS[(px * 8 / w).min(7)];
                    (bar.1, bar.2)
                } else if (box_x..box_x + box_size).contains(&px) && (box_y..box_y + box_size).contains(&py) {
                    (90, 200)
                } else {
                    (
                        (96 + triangle(px + t, 63)) as u8,
                        (96 + triangle(py + 2 * t, 63)) as u8,
                    )
                };
            }
        }
        frame
    }
}

/// A triangle wave over `0..=max` (up then down), at position `p`.
fn triangle(p: usize, max: usize) -> usize {
    if max == 0 {
        return 0;
    }
    let period = 2 * max;
    let q = p % period;
    if q <= max { q } else { period - q }
}
