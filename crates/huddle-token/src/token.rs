//! Token04: generation (§2–§4), layout parsing and verification (§6).

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use aes::Aes256;
use aes::cipher::block_padding::NoPadding;
use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use aes_gcm::aead::Aead;
use aes_gcm::{Aes256Gcm, KeyInit};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rand::rngs::OsRng;
use rand::{Rng, RngCore};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Privileges, TokenError};

/// The two ASCII characters in front of every Token04 token.
pub const TOKEN_VERSION_PREFIX: &str = "04";

const KEY_LEN: usize = 32;
const GCM_IV_LEN: usize = 12;
const CBC_IV_LEN: usize = 16;
const GCM_TAG_LEN: usize = 16;
const BLOCK_LEN: usize = 16;
const MODE_CBC: u8 = 0;
const MODE_GCM: u8 = 1;
/// Largest content the builder writes: Python packs lengths with a signed `!h` and Java reads
/// them with `getShort()`, so a longer content would break those decoders (Token04 §8).
const MAX_BUILD_CONTENT_LEN: usize = i16::MAX as usize;
/// Largest binary token: expire, iv_len, iv, content_len, content, mode byte.
const MAX_BINARY_LEN: usize = 8 + 2 + u16::MAX as usize + 2 + u16::MAX as usize + 1;
/// Base64 length of [`MAX_BINARY_LEN`] bytes.
const MAX_BODY_LEN: usize = MAX_BINARY_LEN.div_ceil(3) * 4;
/// Default lifetime of a built token.
const DEFAULT_EFFECTIVE_SECS: i64 = 3600;

/// The cipher of a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Cipher {
    /// AES-256-GCM, 12-byte nonce, 16-byte tag, no AAD, trailing mode byte `0x01`. The current
    /// format and the builder's default.
    #[default]
    Gcm,
    /// AES-256-CBC with PKCS#7 padding and a 16-byte IV, no trailing mode byte. The legacy
    /// ("deprecated") format. It has no integrity protection: prefer GCM.
    Cbc,
}

impl Cipher {
    /// The IV (GCM nonce) length this cipher uses: 12 for GCM, 16 for CBC.
    pub const fn iv_len(self) -> usize {
        match self {
            Cipher::Gcm => GCM_IV_LEN,
            Cipher::Cbc => CBC_IV_LEN,
        }
    }
}

impl fmt::Display for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Cipher::Gcm => "AES-256-GCM",
            Cipher::Cbc => "AES-256-CBC",
        })
    }
}

/// The encrypted JSON content of a token (Token04 §4).
///
/// The field order is the canonical (`python_node`) JSON order, so serializing this struct with
/// `serde_json` (or [`TokenClaims::to_json`]) gives the exact plaintext the Python and Node.js
/// generators write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenClaims {
    /// The AppID the token was issued for.
    pub app_id: u32,
    /// The user the token was issued to.
    pub user_id: String,
    /// Random salt.
    pub nonce: i32,
    /// Creation time, Unix seconds (informational).
    pub ctime: i64,
    /// Expiry, Unix seconds; the token is valid while `now < expire`.
    pub expire: i64,
    /// `""` or a privilege payload (see [`Privileges`]).
    pub payload: String,
}

impl TokenClaims {
    /// The privilege payload, parsed; `None` when `payload` is empty (a basic token).
    pub fn privileges(&self) -> Result<Option<Privileges>, TokenError> {
        if self.payload.is_empty() {
            return Ok(None);
        }
        Privileges::parse(&self.payload).map(Some)
    }

    /// The canonical JSON plaintext: keys `app_id, user_id, nonce, ctime, expire, payload`, compact,
    /// non-ASCII written raw, only `"`, `\` and control characters escaped.
    ///
    /// ```
    /// let claims = huddle_token::TokenClaims {
    ///     app_id: 1, user_id: "demo".into(), nonce: 123456789, ctime: 1700000000,
    ///     expire: 1700003600, payload: String::new(),
    /// };
    /// assert_eq!(
    ///     claims.to_json(),
    ///     r#"{"app_id":1,"user_id":"demo","nonce":123456789,"ctime":1700000000,"expire":1700003600,"payload":""}"#
    /// );
    /// ```
    pub fn to_json(&self) -> String {
        // Serializing a struct of strings and integers cannot fail.
        serde_json::to_string(self).expect("token claims serialize")
    }
}

/// Builds new tokens. GCM by default, valid for 3600 s unless [`effective_secs`](Self::effective_secs)
/// says otherwise.
///
/// `ctime` defaults to the current system time, the nonce and the IV to values from the operating
/// system's CSPRNG. Fixing them ([`ctime`](Self::ctime), [`nonce`](Self::nonce), [`iv`](Self::iv))
/// is meant for tests and test vectors: **never reuse a GCM IV with the same secret.**
///
/// ```
/// use huddle_token::{TokenBuilder, VerifyOptions, verify};
///
/// let secret = "fa94dd0f974cf2e293728a526b028271";
/// let token = TokenBuilder::new(1, "demo", secret).effective_secs(3600).build()?;
/// assert!(token.starts_with("04"));
///
/// let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
/// let claims = verify(&token, secret, &VerifyOptions { app_id: Some(1), user_id: Some("demo"), now })?;
/// assert_eq!(claims.user_id, "demo");
/// # Ok::<(), huddle_token::TokenError>(())
/// ```
///
/// A deterministic token (the worked example of the spec):
///
/// ```
/// use huddle_token::TokenBuilder;
///
/// let token = TokenBuilder::new(1, "demo", "fa94dd0f974cf2e293728a526b028271")
///     .effective_secs(3600)
///     .ctime(1700000000)
///     .nonce(123456789)
///     .iv(b"abcdefghijkl".to_vec())
///     .build()?;
/// assert!(token.starts_with("04AAAAAGVT/xAADGFiY2RlZmdoaWprbABzPyKEWiWt"));
/// # Ok::<(), huddle_token::TokenError>(())
/// ```
#[derive(Clone)]
#[must_use = "a TokenBuilder does nothing until build() is called"]
pub struct TokenBuilder {
    app_id: u32,
    user_id: String,
    secret: String,
    effective_secs: i64,
    payload: String,
    cipher: Cipher,
    ctime: Option<i64>,
    nonce: Option<i32>,
    iv: Option<Vec<u8>>,
}

impl fmt::Debug for TokenBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenBuilder")
            .field("app_id", &self.app_id)
            .field("user_id", &self.user_id)
            .field("secret", &"<redacted>")
            .field("effective_secs", &self.effective_secs)
            .field("payload", &self.payload)
            .field("cipher", &self.cipher)
            .field("ctime", &self.ctime)
            .field("nonce", &self.nonce)
            .field("iv", &self.iv.as_ref().map(hex::encode))
            .finish()
    }
}

impl TokenBuilder {
    /// Starts a token for `user_id` of app `app_id`, encrypted with the 32-byte `secret`.
    /// Inputs are checked by [`build`](Self::build).
    pub fn new(app_id: u32, user_id: &str, secret: &str) -> TokenBuilder {
        TokenBuilder {
            app_id,
            user_id: user_id.to_owned(),
            secret: secret.to_owned(),
            effective_secs: DEFAULT_EFFECTIVE_SECS,
            payload: String::new(),
            cipher: Cipher::Gcm,
            ctime: None,
            nonce: None,
            iv: None,
        }
    }

    /// Lifetime in seconds (`expire = ctime + secs`); must be `> 0`. Default 3600.
    pub fn effective_secs(mut self, secs: i64) -> Self {
        self.effective_secs = secs;
        self
    }

    /// Sets the raw `payload` string (default `""`). See also [`privileges`](Self::privileges).
    pub fn payload(mut self, payload: String) -> Self {
        self.payload = payload;
        self
    }

    /// Sets the payload to the compact wire form of `privileges` (replaces any payload).
    pub fn privileges(mut self, privileges: &Privileges) -> Self {
        self.payload = privileges.to_payload();
        self
    }

    /// Chooses the cipher (default [`Cipher::Gcm`]).
    pub fn cipher(mut self, cipher: Cipher) -> Self {
        self.cipher = cipher;
        self
    }

    /// Fixes the creation time in Unix seconds (default: now).
    pub fn ctime(mut self, ctime: i64) -> Self {
        self.ctime = Some(ctime);
        self
    }

    /// Fixes the JSON nonce (default: random in `0..=i32::MAX`).
    pub fn nonce(mut self, nonce: i32) -> Self {
        self.nonce = Some(nonce);
        self
    }

    /// Fixes the IV: 12 bytes for GCM, 16 for CBC (default: random). For tests and vectors only.
    pub fn iv(mut self, iv: Vec<u8>) -> Self {
        self.iv = Some(iv);
        self
    }

    /// Validates the inputs (app id, user id, secret, effective time, in that order, as the
    /// official generators do) and returns the token.
    ///
    /// # Panics
    ///
    /// Only if the operating system's random number generator fails.
    pub fn build(self) -> Result<String, TokenError> {
        if self.app_id == 0 {
            return Err(TokenError::InvalidAppId);
        }
        if self.user_id.is_empty() {
            return Err(TokenError::InvalidUserId);
        }
        let key = secret_key(&self.secret)?;
        let invalid_time = TokenError::InvalidEffectiveTime {
            secs: self.effective_secs,
        };
        if self.effective_secs <= 0 {
            return Err(invalid_time);
        }
        let ctime = self.ctime.unwrap_or_else(unix_now);
        let expire = ctime.checked_add(self.effective_secs).ok_or(invalid_time)?;
        let nonce = self.nonce.unwrap_or_else(|| OsRng.gen_range(0..=i32::MAX));

        let claims = TokenClaims {
            app_id: self.app_id,
            user_id: self.user_id,
            nonce,
            ctime,
            expire,
            payload: self.payload,
        };
        let plaintext = claims.to_json().into_bytes();
        let content_len = match self.cipher {
            Cipher::Gcm => plaintext.len() + GCM_TAG_LEN,
            Cipher::Cbc => (plaintext.len() / BLOCK_LEN + 1) * BLOCK_LEN,
        };
        if content_len > MAX_BUILD_CONTENT_LEN {
            return Err(TokenError::PayloadTooLong {
                len: content_len,
                max: MAX_BUILD_CONTENT_LEN,
            });
        }

        let iv = match self.iv {
            Some(iv) if iv.len() == self.cipher.iv_len() => iv,
            Some(iv) => {
                return Err(TokenError::IvLength {
                    cipher: self.cipher,
                    len: iv.len(),
                });
            }
            None => {
                let mut iv = vec![0u8; self.cipher.iv_len()];
                OsRng.fill_bytes(&mut iv);
                iv
            }
        };
        let content = encrypt(self.cipher, &key, &iv, &plaintext)?;
        Ok(pack(expire, self.cipher, &iv, &content))
    }
}

/// What the caller expects of a token in [`verify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyOptions<'a> {
    /// The AppID the token must have been issued for; `None` skips the check.
    pub app_id: Option<u32>,
    /// The user the token must have been issued to; `None` skips the check.
    pub user_id: Option<&'a str>,
    /// The current time in Unix seconds: the token is expired when `now >= expire`.
    pub now: i64,
}

impl VerifyOptions<'_> {
    /// Options that check only the expiry against `now`.
    pub fn new(now: i64) -> Self {
        VerifyOptions {
            app_id: None,
            user_id: None,
            now,
        }
    }
}

/// A decrypted token that passed the format and content checks (see [`decode`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// The encrypted JSON content.
    pub claims: TokenClaims,
    /// The cipher the token uses.
    pub cipher: Cipher,
    /// The clear-text header expiry (always equal to `claims.expire` after a successful decode).
    pub header_expire: i64,
    /// The IV (GCM nonce), 12 or 16 bytes.
    pub iv: Vec<u8>,
}

/// Verifies a token: [`decode`]s it, then checks the AppID and user ID (when given) and the expiry.
///
/// The checks run in the order of Token04 §6, so the first failure is: format, decryption,
/// content, header/JSON expiry mismatch, AppID, user ID, expiry.
///
/// ```
/// use huddle_token::{verify, TokenError, VerifyOptions};
///
/// let token = "04AAAAAGVT/xAADGFiY2RlZmdoaWprbABzPyKEWiWtizuQcfDgPvQTy+YAycG/bvG4gYXrkA5j6sUo2GIGy+rLXmzj8lyyKQMvQOYE8B2xawM/LXTxFgRSdrUZLe0HbdEEByKJx9DIojD05Q3SoGZnbH62vHS6hoPbUnhOrJ4uHpV1rZUBgnMgokjWrAE=";
/// let secret = "fa94dd0f974cf2e293728a526b028271";
/// let opts = VerifyOptions { app_id: Some(1), user_id: Some("demo"), now: 1700000000 };
/// assert_eq!(verify(token, secret, &opts)?.expire, 1700003600);
///
/// let late = VerifyOptions { now: 1700003600, ..opts };
/// assert_eq!(verify(token, secret, &late).unwrap_err().code(), 1002078);
/// # Ok::<(), TokenError>(())
/// ```
pub fn verify(token: &str, secret: &str, opts: &VerifyOptions) -> Result<TokenClaims, TokenError> {
    let decoded = decode(token, secret)?;
    let claims = decoded.claims;
    match opts.app_id {
        Some(expected) if expected != claims.app_id => {
            return Err(TokenError::AppIdMismatch {
                expected,
                actual: claims.app_id,
            });
        }
        _ => {}
    }
    if opts.user_id.is_some_and(|expected| expected != claims.user_id) {
        return Err(TokenError::UserIdMismatch);
    }
    if opts.now >= claims.expire {
        return Err(TokenError::Expired {
            expire: claims.expire,
            now: opts.now,
        });
    }
    Ok(claims)
}

/// Decodes a token: checks its layout, decrypts it, checks the JSON content and that the
/// clear-text header expiry equals the encrypted one. It does not check the expiry against the
/// clock, the AppID or the user ID (see [`verify`]).
///
/// Accepts GCM and CBC tokens, and every JSON style of the official generators (any key order,
/// any standard escaping, `payload` `null` or absent read as `""`; unknown keys are ignored).
///
/// Errors, in order: [`TokenError::InvalidSecret`]; the format errors (code 1002074);
/// [`TokenError::Decrypt`]; [`TokenError::InvalidClaims`]; [`TokenError::ExpireMismatch`].
/// For CBC tokens, which have no integrity, every failure from the padding check to the JSON
/// content check is [`TokenError::Decrypt`], so that errors give no padding oracle.
///
/// A token string is not a unique name for a token: a CBC token may also carry the tolerated
/// trailing mode byte `0`, so key replay or revocation caches on the claims (or the IV), not on
/// the string.
pub fn decode(token: &str, secret: &str) -> Result<Decoded, TokenError> {
    let key = secret_key(secret)?;
    let bin = decode_body(token)?;
    let layout = parse_layout_bytes(&bin)?;
    let claims = match layout.cipher {
        Cipher::Gcm => {
            let plaintext = gcm_decrypt(&key, layout.iv, layout.content)?;
            parse_claims(&plaintext).map_err(TokenError::InvalidClaims)?
        }
        // CBC has no integrity: any failure after decryption may come from a wrong key or a
        // tampered token, and telling padding failures apart from later ones would be a
        // padding oracle. Everything up to a valid claims object is therefore `Decrypt`.
        Cipher::Cbc => cbc_decrypt(&key, layout.iv, layout.content)
            .and_then(|plaintext| parse_claims(&plaintext).ok())
            .ok_or(TokenError::Decrypt)?,
    };
    if claims.expire != layout.expire {
        return Err(TokenError::ExpireMismatch {
            header: layout.expire,
            claims: claims.expire,
        });
    }
    Ok(Decoded {
        claims,
        cipher: layout.cipher,
        header_expire: layout.expire,
        iv: layout.iv.to_vec(),
    })
}

/// Reads the clear-text expiry of a token without the secret, for token-will-expire timers.
///
/// Clients read the first 8 bytes after the prefix; this also checks the whole layout (the
/// format checks of [`decode`]), so a token that cannot be valid yields an error. The value is
/// not authenticated: only [`decode`]/[`verify`] prove it equals the encrypted expiry.
///
/// ```
/// let token = "04AAAAAGVT/xAADGFiY2RlZmdoaWprbABzPyKEWiWtizuQcfDgPvQTy+YAycG/bvG4gYXrkA5j6sUo2GIGy+rLXmzj8lyyKQMvQOYE8B2xawM/LXTxFgRSdrUZLe0HbdEEByKJx9DIojD05Q3SoGZnbH62vHS6hoPbUnhOrJ4uHpV1rZUBgnMgokjWrAE=";
/// assert_eq!(huddle_token::peek_expire(token), Ok(1700003600));
/// ```
pub fn peek_expire(token: &str) -> Result<i64, TokenError> {
    let bin = decode_body(token)?;
    Ok(parse_layout_bytes(&bin)?.expire)
}

// ------------------------------------------------------------------------------------------------
// Layout

/// The fields of a binary token, borrowed from the decoded bytes.
struct Layout<'a> {
    expire: i64,
    iv: &'a [u8],
    content: &'a [u8],
    cipher: Cipher,
}

/// Strips the prefix and decodes strict standard Base64.
fn decode_body(token: &str) -> Result<Vec<u8>, TokenError> {
    let body = token
        .strip_prefix(TOKEN_VERSION_PREFIX)
        .ok_or(TokenError::BadPrefix)?;
    if body.len() > MAX_BODY_LEN {
        return Err(TokenError::TokenTooLong {
            len: body.len(),
            max: MAX_BODY_LEN,
        });
    }
    // STANDARD: `+/` alphabet, padding required and canonical, trailing bits must be zero,
    // whitespace is an invalid symbol.
    STANDARD.decode(body).map_err(|_| TokenError::Base64)
}

fn parse_layout_bytes(bin: &[u8]) -> Result<Layout<'_>, TokenError> {
    let mut r = Reader { rest: bin };
    let expire = i64::from_be_bytes(r.array("expire")?);
    let iv_len = usize::from(u16::from_be_bytes(r.array("iv_len")?));
    let iv = r.take(iv_len, "iv")?;
    let content_len = usize::from(u16::from_be_bytes(r.array("content_len")?));
    let content = r.take(content_len, "content")?;
    let cipher = match *r.rest {
        [] | [MODE_CBC] => Cipher::Cbc,
        [MODE_GCM] => Cipher::Gcm,
        [mode] => return Err(TokenError::BadMode { mode }),
        ref rest => return Err(TokenError::TrailingBytes { count: rest.len() }),
    };
    if iv.len() != cipher.iv_len() {
        return Err(TokenError::IvLength {
            cipher,
            len: iv.len(),
        });
    }
    let content_ok = match cipher {
        Cipher::Gcm => content.len() >= GCM_TAG_LEN,
        Cipher::Cbc => !content.is_empty() && content.len() % BLOCK_LEN == 0,
    };
    if !content_ok {
        return Err(TokenError::ContentLength {
            cipher,
            len: content.len(),
        });
    }
    Ok(Layout {
        expire,
        iv,
        content,
        cipher,
    })
}

/// A bounds-checked cursor over the binary token.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], TokenError> {
        if self.rest.len() < n {
            return Err(TokenError::Truncated { field });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], TokenError> {
        let bytes = self.take(N, field)?;
        bytes.try_into().map_err(|_| TokenError::Truncated { field })
    }
}

/// Writes `"04" + Base64(expire | iv_len | iv | content_len | content [| 0x01])`.
fn pack(expire: i64, cipher: Cipher, iv: &[u8], content: &[u8]) -> String {
    let mut bin = Vec::with_capacity(8 + 2 + iv.len() + 2 + content.len() + 1);
    bin.extend_from_slice(&expire.to_be_bytes());
    // Both lengths were checked by the caller (iv 12/16, content <= i16::MAX).
    bin.extend_from_slice(&(iv.len() as u16).to_be_bytes());
    bin.extend_from_slice(iv);
    bin.extend_from_slice(&(content.len() as u16).to_be_bytes());
    bin.extend_from_slice(content);
    if cipher == Cipher::Gcm {
        bin.push(MODE_GCM);
    }
    let mut token = String::with_capacity(TOKEN_VERSION_PREFIX.len() + bin.len().div_ceil(3) * 4);
    token.push_str(TOKEN_VERSION_PREFIX);
    STANDARD.encode_string(&bin, &mut token);
    token
}

// ------------------------------------------------------------------------------------------------
// Crypto

/// The secret's raw bytes are the AES-256 key (they are not hex-decoded).
fn secret_key(secret: &str) -> Result<[u8; KEY_LEN], TokenError> {
    secret
        .as_bytes()
        .try_into()
        .map_err(|_| TokenError::InvalidSecret { len: secret.len() })
}

fn encrypt(cipher: Cipher, key: &[u8; KEY_LEN], iv: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, TokenError> {
    let iv_error = || TokenError::IvLength {
        cipher,
        len: iv.len(),
    };
    match cipher {
        Cipher::Gcm => {
            let nonce: [u8; GCM_IV_LEN] = iv.try_into().map_err(|_| iv_error())?;
            Aes256Gcm::new(&(*key).into())
                .encrypt(&nonce.into(), plaintext)
                // Only fails for plaintexts of gigabytes; the caller bounds the length.
                .map_err(|_| TokenError::PayloadTooLong {
                    len: plaintext.len(),
                    max: MAX_BUILD_CONTENT_LEN,
                })
        }
        Cipher::Cbc => {
            let iv: [u8; CBC_IV_LEN] = iv.try_into().map_err(|_| iv_error())?;
            let encryptor = cbc::Encryptor::<Aes256>::new(&(*key).into(), &iv.into());
            Ok(encryptor.encrypt_padded_vec_mut::<aes::cipher::block_padding::Pkcs7>(plaintext))
        }
    }
}

fn gcm_decrypt(key: &[u8; KEY_LEN], iv: &[u8], content: &[u8]) -> Result<Vec<u8>, TokenError> {
    let nonce: [u8; GCM_IV_LEN] = iv.try_into().map_err(|_| TokenError::IvLength {
        cipher: Cipher::Gcm,
        len: iv.len(),
    })?;
    Aes256Gcm::new(&(*key).into())
        .decrypt(&nonce.into(), content)
        .map_err(|_| TokenError::Decrypt)
}

/// Decrypts and strips PKCS#7 padding, checking every padding byte. `None` on any failure.
fn cbc_decrypt(key: &[u8; KEY_LEN], iv: &[u8], content: &[u8]) -> Option<Vec<u8>> {
    let iv: [u8; CBC_IV_LEN] = iv.try_into().ok()?;
    let mut buf = content.to_vec();
    let decryptor = cbc::Decryptor::<Aes256>::new(&(*key).into(), &iv.into());
    let len = decryptor.decrypt_padded_mut::<NoPadding>(&mut buf).ok()?.len();
    buf.truncate(len);
    let pad = usize::from(*buf.last()?);
    if pad == 0 || pad > BLOCK_LEN || pad > buf.len() {
        return None;
    }
    let start = buf.len() - pad;
    // Fold over all pad bytes rather than stopping at the first bad one.
    let bad = buf[start..].iter().fold(0u8, |acc, &b| acc | (b ^ pad as u8));
    if bad != 0 {
        return None;
    }
    buf.truncate(start);
    Some(buf)
}

// ------------------------------------------------------------------------------------------------
// JSON content

/// Checks the decrypted JSON (Token04 §6 step 5). Keys may come in any order; unknown keys are
/// ignored; `payload` `null` or absent reads as `""`.
fn parse_claims(plaintext: &[u8]) -> Result<TokenClaims, &'static str> {
    let text = std::str::from_utf8(plaintext).map_err(|_| "plaintext is not UTF-8")?;
    let value: Value = serde_json::from_str(text).map_err(|_| "plaintext is not valid JSON")?;
    let obj = value.as_object().ok_or("plaintext is not a JSON object")?;

    let app_id = obj
        .get("app_id")
        .and_then(Value::as_u64)
        .and_then(|id| u32::try_from(id).ok())
        .filter(|&id| id != 0)
        .ok_or("app_id is missing or not an integer in 1..=4294967295")?;
    let user_id = obj
        .get("user_id")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
        .ok_or("user_id is missing, empty or not a string")?;
    let nonce = obj
        .get("nonce")
        .and_then(Value::as_i64)
        .and_then(|n| i32::try_from(n).ok())
        .ok_or("nonce is missing or not a 32-bit integer")?;
    let ctime = obj
        .get("ctime")
        .and_then(Value::as_i64)
        .ok_or("ctime is missing or not a 64-bit integer")?;
    let expire = obj
        .get("expire")
        .and_then(Value::as_i64)
        .ok_or("expire is missing or not a 64-bit integer")?;
    let payload = match obj.get("payload") {
        None | Some(Value::Null) => "",
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err("payload is not a string or null"),
    };
    Ok(TokenClaims {
        app_id,
        user_id: user_id.to_owned(),
        nonce,
        ctime,
        expire,
        payload: payload.to_owned(),
    })
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
