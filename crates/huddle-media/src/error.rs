//! The crate's single error type and its Huddle error codes.

/// An argument is invalid (`INVALID_PARAMETER` in the Huddle error table).
const CODE_INVALID_PARAMETER: u32 = 1_000_006;
/// A codec library failed where it should not (`INTERNAL`).
const CODE_INTERNAL: u32 = 1_009_099;

/// Everything that can go wrong in the media building blocks.
///
/// Each variant maps to a numbered Huddle error code through [`MediaError::code`]:
///
/// | code | variants |
/// |---|---|
/// | 1000006 (`INVALID_PARAMETER`) | [`InvalidArgument`](Self::InvalidArgument), [`FrameSize`](Self::FrameSize), [`FrameDuration`](Self::FrameDuration), [`Unsupported`](Self::Unsupported), [`Format`](Self::Format), [`Io`](Self::Io) (a media file the application named could not be read or written) |
/// | 1009099 (`INTERNAL`) | [`Opus`](Self::Opus), [`Vpx`](Self::Vpx), [`Resampler`](Self::Resampler) |
///
/// A corrupt packet from the network surfaces as [`Opus`](Self::Opus) or [`Vpx`](Self::Vpx):
/// a receiver treats it as a lost packet (conceal, or ask for a keyframe) rather than a failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MediaError {
    /// An argument is out of range (bitrate, frame size, amplitude, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A video frame does not have the size the encoder was configured for.
    #[error("frame is {got_width}x{got_height}, the encoder was configured for {width}x{height}")]
    FrameSize {
        /// Configured width.
        width: u32,
        /// Configured height.
        height: u32,
        /// Width of the frame given.
        got_width: u32,
        /// Height of the frame given.
        got_height: u32,
    },
    /// An Opus packet does not hold exactly one 20 ms frame (960 samples at 48 kHz).
    #[error("Opus packet decodes to {samples} samples, expected 960 (20 ms at 48 kHz)")]
    FrameDuration {
        /// Samples per channel the packet holds (0 when the decoder refused it as too long).
        samples: usize,
    },
    /// A file or stream uses a format this crate does not handle (e.g. Y4M `C444`, 10-bit video).
    #[error("unsupported format: {0}")]
    Unsupported(String),
    /// A WAV or Y4M file is malformed.
    #[error("malformed media file: {0}")]
    Format(String),
    /// Reading or writing a media file failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// libopus returned an error.
    #[error("opus {function} failed: {message}")]
    Opus {
        /// The libopus function that failed.
        function: &'static str,
        /// libopus' description of the error.
        message: &'static str,
    },
    /// libvpx returned an error.
    #[error("libvpx {function} failed: {message}")]
    Vpx {
        /// The libvpx function that failed.
        function: &'static str,
        /// libvpx' description of the error (with its detail when it gave one).
        message: String,
    },
    /// The resampler refused its input (a bug in this crate if it ever happens).
    #[error("resampler failed: {0}")]
    Resampler(String),
}

impl MediaError {
    /// The Huddle error code of this error (see the table on [`MediaError`]).
    ///
    /// ```
    /// use huddle_media::MediaError;
    /// assert_eq!(MediaError::InvalidArgument("bitrate".into()).code(), 1000006);
    /// ```
    pub fn code(&self) -> u32 {
        match self {
            MediaError::InvalidArgument(_)
            | MediaError::FrameSize { .. }
            | MediaError::FrameDuration { .. }
            | MediaError::Unsupported(_)
            | MediaError::Format(_)
            | MediaError::Io(_) => CODE_INVALID_PARAMETER,
            MediaError::Opus { .. } | MediaError::Vpx { .. } | MediaError::Resampler(_) => CODE_INTERNAL,
        }
    }
}

impl From<opus::Error> for MediaError {
    fn from(e: opus::Error) -> Self {
        MediaError::Opus {
            function: e.function(),
            message: e.description(),
        }
    }
}

impl From<hound::Error> for MediaError {
    fn from(e: hound::Error) -> Self {
        match e {
            hound::Error::IoError(io) => MediaError::Io(io),
            hound::Error::Unsupported => MediaError::Unsupported("WAV sample format".into()),
            other => MediaError::Format(format!("WAV: {other}")),
        }
    }
}

/// `Result` with [`MediaError`].
pub type Result<T, E = MediaError> = std::result::Result<T, E>;
