//! Safe VP8 encoder and decoder over libvpx (`env-libvpx-sys`, crate `vpx_sys`).
//!
//! Every `unsafe` block below says why it is sound. The invariants they rely on:
//! - A context (`vpx_codec_ctx_t`) lives in a `Box` so its address never changes, is initialised
//!   once by `vpx_codec_*_init_ver` before the wrapper exists, is used only through `&mut self`
//!   (never from two threads at once) and is destroyed exactly once, in `Drop`.
//! - Pointers handed to libvpx point into live Rust buffers for the duration of the call, and
//!   libvpx keeps none of them after it returns (inputs are copied: the encoder's look-ahead
//!   is 0 frames and copies the picture; the decoder copies the bitstream it needs).
//! - Pointers returned by libvpx (packets, images, strings) are read before the next call on
//!   the same context, which is when they may become invalid.

use std::ffi::{CStr, c_int, c_uint};
use std::fmt;
use std::mem::MaybeUninit;
use std::ptr;

use vpx_sys as vpx;

use super::{I420Frame, check_dimensions};
use crate::error::{MediaError, Result};

/// The RTP clock rate of video, used as the encoder's time base: `pts` are 90 kHz ticks.
pub const VIDEO_CLOCK_RATE: u32 = 90_000;

/// Settings of a [`Vp8Encoder`].
///
/// The defaults are those of a real-time call, as browsers encode VP8: constant bitrate,
/// no look-ahead (one frame in, one frame out), error resilient, keyframes on request only
/// (plus one every 3000 frames), a fast speed preset.
///
/// ```
/// let mut config = huddle_media::Vp8Config::new(640, 480);
/// config.bitrate_kbps = 800;
/// assert_eq!(config.threads, 1);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Vp8Config {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Target bitrate in kbit/s.
    pub bitrate_kbps: u32,
    /// Nominal frame rate (frames per second), used until the timestamps tell the real one.
    pub fps: u32,
    /// libvpx speed preset, -16 to 16: higher magnitude is faster and coarser; negative values
    /// fix the speed instead of letting libvpx adapt it to the time left in the frame (which
    /// would make the output depend on the machine's load). Default -8.
    pub cpu_used: i32,
    /// Encoder threads, 1 or 2 (libvpx's own; 1 starts none).
    pub threads: u32,
    /// Error resilient mode: entropy contexts reset every frame, so one lost frame does not
    /// corrupt the decoding of the next ones beyond the references it breaks.
    pub error_resilient: bool,
    /// Frames between two forced keyframes (keyframes also come on request).
    pub keyframe_interval: u32,
    /// Let the rate control skip frames when the bitrate is too low for the content (an
    /// encode then yields no frame). Off by default: one frame in, one frame out.
    pub allow_frame_drop: bool,
}

impl Vp8Config {
    /// Defaults for this size: 300 kbit/s at 320x240 and below, 800 kbit/s up to 640x480,
    /// 1.5 Mbit/s at 720p, 2.5 Mbit/s above, at 30 frames per second.
    pub fn new(width: u32, height: u32) -> Self {
        let pixels = u64::from(width) * u64::from(height);
        let bitrate_kbps = match pixels {
            0..=76_800 => 300,
            76_801..=307_200 => 800,
            307_201..=921_600 => 1_500,
            _ => 2_500,
        };
        Vp8Config {
            width,
            height,
            bitrate_kbps,
            fps: 30,
            cpu_used: -8,
            threads: 1,
            error_resilient: true,
            keyframe_interval: 3000,
            allow_frame_drop: false,
        }
    }
}

/// One encoded VP8 frame.
#[derive(Clone, PartialEq, Eq)]
pub struct EncodedFrame {
    /// The VP8 bitstream of the frame (the RTP payload before the VP8 payload descriptor).
    pub data: Vec<u8>,
    /// Whether it is a keyframe (decodable on its own).
    pub keyframe: bool,
    /// Its timestamp in 90 kHz ticks, as given to [`Vp8Encoder::encode`].
    pub pts: i64,
}

impl fmt::Debug for EncodedFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncodedFrame")
            .field("len", &self.data.len())
            .field("keyframe", &self.keyframe)
            .field("pts", &self.pts)
            .finish()
    }
}

/// Whether a VP8 frame is a keyframe, from its first byte (RFC 6386 §9.1: bit 0 of the frame
/// tag is 0 for a keyframe, which also starts with the code `9d 01 2a` at byte 3).
///
/// ```
/// assert!(!huddle_media::vp8_is_keyframe(&[]));
/// ```
pub fn vp8_is_keyframe(frame: &[u8]) -> bool {
    frame.len() >= 10 && frame[0] & 1 == 0 && frame[3..6] == [0x9d, 0x01, 0x2a]
}

/// A VP8 encoder (libvpx, real-time mode).
///
/// ```
/// use huddle_media::{TestPattern, Vp8Config, Vp8Decoder, Vp8Encoder, psnr};
/// let mut pattern = TestPattern::new(160, 120)?;
/// let mut encoder = Vp8Encoder::new(Vp8Config::new(160, 120))?;
/// let mut decoder = Vp8Decoder::new()?;
/// let source = pattern.next_frame();
/// let encoded = encoder.encode(&source, 0)?;
/// assert!(encoded[0].keyframe);
/// let decoded = decoder.decode(&encoded[0].data)?.expect("a picture");
/// assert!(psnr(&source, &decoded)? > 25.0);
/// # Ok::<(), huddle_media::MediaError>(())
/// ```
pub struct Vp8Encoder {
    ctx: Box<vpx::vpx_codec_ctx_t>,
    /// The configuration libvpx was given; kept so `set_bitrate` can change one field.
    cfg: Box<vpx::vpx_codec_enc_cfg_t>,
    config: Vp8Config,
    force_keyframe: bool,
    last_pts: Option<i64>,
}

// SAFETY: a libvpx context has no affinity to the thread that created it (no thread-local
// state); it only must not be used from two threads at once, which `&mut self` guarantees.
unsafe impl Send for Vp8Encoder {}

impl Vp8Encoder {
    /// Creates an encoder.
    pub fn new(config: Vp8Config) -> Result<Self> {
        check_dimensions(config.width, config.height)?;
        if !(1..=2).contains(&config.threads) {
            return Err(MediaError::InvalidArgument(format!(
                "threads must be 1 or 2, got {}",
                config.threads
            )));
        }
        if !(-16..=16).contains(&config.cpu_used) {
            return Err(MediaError::InvalidArgument(format!(
                "cpu_used must be -16..=16, got {}",
                config.cpu_used
            )));
        }
        if config.bitrate_kbps == 0 || config.fps == 0 || config.keyframe_interval == 0 {
            return Err(MediaError::InvalidArgument(
                "bitrate, fps and keyframe interval must be above 0".into(),
            ));
        }
        let mut cfg = MaybeUninit::<vpx::vpx_codec_enc_cfg_t>::uninit();
        // SAFETY: `vpx_codec_vp8_cx` returns a pointer to a static interface. The config
        // pointer is valid for writes of one `vpx_codec_enc_cfg_t`, which libvpx fills entirely
        // on success (it copies a default struct); we read it only then.
        let mut cfg = unsafe {
            check(
                vpx::vpx_codec_enc_config_default(vpx::vpx_codec_vp8_cx(), cfg.as_mut_ptr(), 0),
                None,
                "vpx_codec_enc_config_default",
            )?;
            Box::new(cfg.assume_init())
        };
        cfg.g_w = config.width;
        cfg.g_h = config.height;
        cfg.g_threads = config.threads;
        cfg.g_timebase = vpx::vpx_rational {
            num: 1,
            den: VIDEO_CLOCK_RATE as c_int,
        };
        cfg.g_lag_in_frames = 0;
        cfg.g_pass = vpx::vpx_enc_pass::VPX_RC_ONE_PASS;
        cfg.g_error_resilient = if config.error_resilient {
            vpx::VPX_ERROR_RESILIENT_DEFAULT
        } else {
            0
        };
        cfg.rc_end_usage = vpx::vpx_rc_mode::VPX_CBR;
        cfg.rc_target_bitrate = config.bitrate_kbps;
        // Rate-control settings of WebRTC's VP8 encoder for camera content.
        cfg.rc_min_quantizer = 2;
        cfg.rc_max_quantizer = 56;
        cfg.rc_undershoot_pct = 100;
        cfg.rc_overshoot_pct = 15;
        cfg.rc_buf_initial_sz = 500;
        cfg.rc_buf_optimal_sz = 600;
        cfg.rc_buf_sz = 1000;
        cfg.rc_dropframe_thresh = if config.allow_frame_drop { 30 } else { 0 };
        cfg.rc_resize_allowed = 0;
        cfg.kf_mode = vpx::vpx_kf_mode::VPX_KF_AUTO;
        cfg.kf_min_dist = 0;
        cfg.kf_max_dist = config.keyframe_interval;

        // SAFETY: an all-zero context is a valid value (null pointers, `VPX_CODEC_OK`, zero
        // flags), which is what libvpx expects before init.
        let mut ctx: Box<vpx::vpx_codec_ctx_t> = Box::new(unsafe { std::mem::zeroed() });
        // SAFETY: `ctx` and `cfg` are valid, boxed (stable addresses) and outlive the context:
        // both are owned by the encoder, which destroys the context in `Drop` before they are
        // freed. On failure libvpx destroys what it allocated itself.
        unsafe {
            let err = vpx::vpx_codec_enc_init_ver(
                &mut *ctx,
                vpx::vpx_codec_vp8_cx(),
                &*cfg,
                0,
                vpx::VPX_ENCODER_ABI_VERSION as c_int,
            );
            check(err, Some(&mut ctx), "vpx_codec_enc_init_ver")?;
        }
        let mut encoder = Vp8Encoder {
            ctx,
            cfg,
            config: config.clone(),
            force_keyframe: false,
            last_pts: None,
        };
        // From here on, `Drop` destroys the context if a control fails.
        encoder.control(vpx::vp8e_enc_control_id::VP8E_SET_CPUUSED, config.cpu_used)?;
        encoder.control(vpx::vp8e_enc_control_id::VP8E_SET_NOISE_SENSITIVITY, 0)?;
        encoder.control(vpx::vp8e_enc_control_id::VP8E_SET_STATIC_THRESHOLD, 1)?;
        // Cap keyframes at 3x the average frame so a keyframe request does not flood the link.
        encoder.control(vpx::vp8e_enc_control_id::VP8E_SET_MAX_INTRA_BITRATE_PCT, 300)?;
        let partitions = if config.threads > 1 {
            vpx::vp8e_token_partitions::VP8_TWO_TOKENPARTITION
        } else {
            vpx::vp8e_token_partitions::VP8_ONE_TOKENPARTITION
        };
        encoder.control(
            vpx::vp8e_enc_control_id::VP8E_SET_TOKEN_PARTITIONS,
            partitions as c_int,
        )?;
        Ok(encoder)
    }

    /// The settings.
    pub fn config(&self) -> &Vp8Config {
        &self.config
    }

    /// Makes the next encoded frame a keyframe (on a receiver's PLI or FIR).
    pub fn force_keyframe(&mut self) {
        self.force_keyframe = true;
    }

    /// Changes the target bitrate (kbit/s) from the next frame on.
    pub fn set_bitrate(&mut self, kbps: u32) -> Result<()> {
        if kbps == 0 {
            return Err(MediaError::InvalidArgument("bitrate must be above 0".into()));
        }
        self.cfg.rc_target_bitrate = kbps;
        // SAFETY: the context is initialised (see the module invariants); libvpx copies the
        // configuration it is given.
        let err = unsafe { vpx::vpx_codec_enc_config_set(&mut *self.ctx, &*self.cfg) };
        check(err, Some(&mut self.ctx), "vpx_codec_enc_config_set")?;
        self.config.bitrate_kbps = kbps;
        Ok(())
    }

    /// Encodes a frame with timestamp `pts` (90 kHz ticks, increasing).
    ///
    /// Returns the encoded frames, normally exactly one; none when the rate control dropped the
    /// frame (only with [`Vp8Config::allow_frame_drop`]).
    pub fn encode(&mut self, frame: &I420Frame, pts: i64) -> Result<Vec<EncodedFrame>> {
        if (frame.width(), frame.height()) != (self.config.width, self.config.height) {
            return Err(MediaError::FrameSize {
                width: self.config.width,
                height: self.config.height,
                got_width: frame.width(),
                got_height: frame.height(),
            });
        }
        let nominal = i64::from(VIDEO_CLOCK_RATE / self.config.fps);
        let duration = match self.last_pts {
            Some(last) if pts > last => (pts - last).min(i64::from(VIDEO_CLOCK_RATE)),
            Some(_) => {
                return Err(MediaError::InvalidArgument(format!(
                    "frame timestamps must increase: {pts} after {}",
                    self.last_pts.unwrap_or_default()
                )));
            }
            None => nominal,
        };
        let mut flags: vpx::vpx_enc_frame_flags_t = 0;
        if self.force_keyframe {
            flags |= vpx::VPX_EFLAG_FORCE_KF as vpx::vpx_enc_frame_flags_t;
        }

        let (cw, _) = frame.chroma_size();
        let y_len = frame.y().len();
        let c_len = frame.u().len();
        let base = frame.data().as_ptr().cast_mut();
        let mut image = MaybeUninit::<vpx::vpx_image_t>::uninit();
        // SAFETY: `vpx_img_wrap` only fills the descriptor `image` (it allocates nothing when
        // given a buffer) and returns null on bad arguments, checked below. We then point the
        // planes at the tightly packed I420 planes of `frame` (its layout differs from
        // `vpx_img_wrap`'s for odd sizes); libvpx reads exactly d_w x d_h luma and
        // ((d_w+1)/2) x ((d_h+1)/2) chroma samples through these strides, all inside
        // `frame.data()`. libvpx never writes through an input image despite the `*mut`
        // fields. The picture is copied into libvpx's own buffers during `vpx_codec_encode`
        // (no look-ahead), so `frame` is free again once the call returns.
        unsafe {
            let img = vpx::vpx_img_wrap(
                image.as_mut_ptr(),
                vpx::vpx_img_fmt::VPX_IMG_FMT_I420,
                self.config.width as c_uint,
                self.config.height as c_uint,
                1,
                base,
            );
            if img.is_null() {
                return Err(MediaError::Vpx {
                    function: "vpx_img_wrap",
                    message: "invalid image".into(),
                });
            }
            let img = &mut *img;
            img.planes[0] = base;
            img.planes[1] = base.add(y_len);
            img.planes[2] = base.add(y_len + c_len);
            img.stride[0] = self.config.width as c_int;
            img.stride[1] = cw as c_int;
            img.stride[2] = cw as c_int;
            let err = vpx::vpx_codec_encode(
                &mut *self.ctx,
                img,
                pts,
                duration as _,
                flags,
                vpx::VPX_DL_REALTIME as _,
            );
            check(err, Some(&mut self.ctx), "vpx_codec_encode")?;
        }
        self.last_pts = Some(pts);

        let mut out = Vec::with_capacity(1);
        let mut iter: vpx::vpx_codec_iter_t = ptr::null();
        loop {
            // SAFETY: the context is initialised; `iter` is the iterator libvpx asks for,
            // starting null. The packet it returns stays valid until the next call on the
            // context, and we copy what we need from it before that.
            let pkt = unsafe { vpx::vpx_codec_get_cx_data(&mut *self.ctx, &mut iter) };
            if pkt.is_null() {
                break;
            }
            // SAFETY: non-null packets point to a valid `vpx_codec_cx_pkt_t`; for a frame packet
            // the `frame` union member is the active one and `buf` holds `sz` bytes.
            unsafe {
                let pkt = &*pkt;
                if pkt.kind != vpx::vpx_codec_cx_pkt_kind::VPX_CODEC_CX_FRAME_PKT {
                    continue;
                }
                let f = &pkt.data.frame;
                let data = std::slice::from_raw_parts(f.buf as *const u8, f.sz as usize).to_vec();
                out.push(EncodedFrame {
                    data,
                    keyframe: f.flags & vpx::VPX_FRAME_IS_KEY != 0,
                    pts: f.pts,
                });
            }
        }
        // A request holds until a keyframe is out (a dropped frame does not swallow it).
        if out.iter().any(|f| f.keyframe) {
            self.force_keyframe = false;
        }
        Ok(out)
    }

    fn control(&mut self, id: vpx::vp8e_enc_control_id, value: c_int) -> Result<()> {
        // SAFETY: the context is initialised; every control used here takes one `int` as its
        // variadic argument, which is what we pass.
        let err = unsafe { vpx::vpx_codec_control_(&mut *self.ctx, id as c_int, value) };
        check(err, Some(&mut self.ctx), "vpx_codec_control_")
    }
}

impl Drop for Vp8Encoder {
    fn drop(&mut self) {
        // SAFETY: the context was initialised in `new` (a wrapper exists only then) and is
        // destroyed only here, once.
        unsafe {
            vpx::vpx_codec_destroy(&mut *self.ctx);
        }
    }
}

impl fmt::Debug for Vp8Encoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vp8Encoder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A VP8 decoder (libvpx, one thread).
///
/// Feed it frames in order. After a lost frame the decoder may fail or show corrupt pictures
/// until the next keyframe: ask the sender for one ([`Vp8Encoder::force_keyframe`] on its side).
pub struct Vp8Decoder {
    ctx: Box<vpx::vpx_codec_ctx_t>,
    /// The configuration given at init, kept alive (and at its address) as long as the context.
    _cfg: Box<vpx::vpx_codec_dec_cfg_t>,
}

// SAFETY: as for `Vp8Encoder`.
unsafe impl Send for Vp8Decoder {}

impl Vp8Decoder {
    /// Creates a decoder.
    pub fn new() -> Result<Self> {
        let cfg = Box::new(vpx::vpx_codec_dec_cfg_t {
            threads: 1,
            w: 0,
            h: 0,
        });
        // SAFETY: an all-zero context is a valid value before init (see `Vp8Encoder::new`).
        let mut ctx: Box<vpx::vpx_codec_ctx_t> = Box::new(unsafe { std::mem::zeroed() });
        // SAFETY: `ctx` and `cfg` are boxed, valid and owned by the decoder, which destroys the
        // context in `Drop`; on failure libvpx cleans up after itself.
        unsafe {
            let err = vpx::vpx_codec_dec_init_ver(
                &mut *ctx,
                vpx::vpx_codec_vp8_dx(),
                &*cfg,
                0,
                vpx::VPX_DECODER_ABI_VERSION as c_int,
            );
            check(err, Some(&mut ctx), "vpx_codec_dec_init_ver")?;
        }
        Ok(Vp8Decoder { ctx, _cfg: cfg })
    }

    /// Decodes one frame. Returns the picture, or `None` when the frame shows nothing (VP8
    /// frames can be invisible).
    pub fn decode(&mut self, frame: &[u8]) -> Result<Option<I420Frame>> {
        if frame.is_empty() {
            return Err(MediaError::InvalidArgument("empty VP8 frame".into()));
        }
        let len = c_uint::try_from(frame.len())
            .map_err(|_| MediaError::InvalidArgument("VP8 frame larger than 4 GiB".into()))?;
        // SAFETY: the context is initialised; `frame` is valid for `len` bytes during the call
        // and libvpx keeps no pointer into it afterwards.
        let err = unsafe { vpx::vpx_codec_decode(&mut *self.ctx, frame.as_ptr(), len, ptr::null_mut(), 0) };
        check(err, Some(&mut self.ctx), "vpx_codec_decode")?;

        let mut picture = None;
        let mut iter: vpx::vpx_codec_iter_t = ptr::null();
        loop {
            // SAFETY: as in `Vp8Encoder::encode`; the image stays valid until the next call
            // on the context.
            let img = unsafe { vpx::vpx_codec_get_frame(&mut *self.ctx, &mut iter) };
            if img.is_null() {
                break;
            }
            // SAFETY: a non-null image from the decoder is a valid 8-bit I420 picture of
            // d_w x d_h whose planes hold `stride` bytes a row for their rows.
            picture = Some(unsafe { copy_image(&*img)? });
        }
        Ok(picture)
    }
}

/// Copies a decoded libvpx image into an [`I420Frame`].
///
/// # Safety
/// `img` must be a valid I420 image whose plane pointers and strides cover `d_w` x `d_h` luma
/// and `(d_w+1)/2` x `(d_h+1)/2` chroma samples.
unsafe fn copy_image(img: &vpx::vpx_image_t) -> Result<I420Frame> {
    if img.fmt != vpx::vpx_img_fmt::VPX_IMG_FMT_I420 {
        return Err(MediaError::Unsupported(format!(
            "decoded image format {:?}",
            img.fmt
        )));
    }
    let (w, h) = (img.d_w, img.d_h);
    let mut frame = I420Frame::new(w, h)?;
    let (cw, ch) = frame.chroma_size();
    let (y, u, v) = frame.planes_mut();
    for (plane, dst, pw, ph) in [(0, y, w, h), (1, u, cw, ch), (2, v, cw, ch)] {
        let (pw, ph) = (pw as usize, ph as usize);
        let stride = img.stride[plane] as isize;
        for row in 0..ph {
            // SAFETY: by the function's contract, row `row` of this plane starts at
            // `planes[plane] + row * stride` and holds at least `pw` bytes.
            let src =
                unsafe { std::slice::from_raw_parts(img.planes[plane].offset(row as isize * stride), pw) };
            dst[row * pw..(row + 1) * pw].copy_from_slice(src);
        }
    }
    Ok(frame)
}

impl Drop for Vp8Decoder {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`, destroyed only here, once (`_cfg` is freed after this).
        unsafe {
            vpx::vpx_codec_destroy(&mut *self.ctx);
        }
    }
}

impl fmt::Debug for Vp8Decoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vp8Decoder").finish_non_exhaustive()
    }
}

/// Turns a libvpx status into a `Result`, with libvpx' message for the context when there is
/// one.
fn check(
    err: vpx::vpx_codec_err_t,
    ctx: Option<&mut vpx::vpx_codec_ctx_t>,
    function: &'static str,
) -> Result<()> {
    if err == vpx::vpx_codec_err_t::VPX_CODEC_OK {
        return Ok(());
    }
    // SAFETY: libvpx returns static NUL-terminated strings for error codes, and for a context
    // a pointer to its (static or context-owned) detail string or null; both are read here,
    // before any other call on the context.
    let message = unsafe {
        let mut message = CStr::from_ptr(vpx::vpx_codec_err_to_string(err))
            .to_string_lossy()
            .into_owned();
        if let Some(ctx) = ctx {
            let detail = vpx::vpx_codec_error_detail(ctx);
            if !detail.is_null() {
                message.push_str(": ");
                message.push_str(&CStr::from_ptr(detail).to_string_lossy());
            }
        }
        message
    };
    Err(MediaError::Vpx { function, message })
}
