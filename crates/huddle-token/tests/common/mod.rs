//! Test-only Token04 tooling written independently of the crate: a hand-written Base64 codec,
//! hand-written JSON writers for every style of the official generators (Token04 §4), the binary
//! layout packed and unpacked by hand, and the ciphers called directly through `aes-gcm` / `cbc`.
//! Nothing here calls `huddle_token`, so agreeing with it is evidence, not tautology.
#![allow(dead_code)]

use aes::Aes256;
use aes::cipher::block_padding::NoPadding;
use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use aes_gcm::aead::Aead;
use aes_gcm::{Aes256Gcm, KeyInit};

// ------------------------------------------------------------------------------------------------
// Base64 (standard alphabet, `=` padding), written from RFC 4648.

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub fn b64_encode(data: &[u8]) -> String {
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Strict decoder: length multiple of 4, padding only at the end, zero trailing bits.
pub fn b64_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::new();
    let quads = bytes.len() / 4;
    for (qi, quad) in bytes.chunks(4).enumerate() {
        let pad = quad.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && qi + 1 != quads) {
            return None;
        }
        let mut n = 0u32;
        for &c in &quad[..4 - pad] {
            let v = B64.iter().position(|&x| x == c)? as u32;
            n = (n << 6) | v;
        }
        n <<= 6 * pad as u32;
        let produced = 3 - pad;
        let all = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        if all[produced..].iter().any(|&b| b != 0) {
            return None; // non-zero trailing bits
        }
        out.extend_from_slice(&all[..produced]);
    }
    Some(out)
}

// ------------------------------------------------------------------------------------------------
// JSON in the styles of the official generators (Token04 §4).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Python `json.dumps(separators=(',',':'), ensure_ascii=False)` / Node `JSON.stringify`.
    PythonNode,
    /// Go `encoding/json` (≤ 1.21 writes `\b` `\f` as `\u0008` `\u000c`).
    Go,
    /// PHP `json_encode($a, JSON_HEX_AMP)`.
    Php,
    /// Java json-simple `JSONObject` (HashMap order).
    Java,
}

impl Style {
    pub fn name(self) -> &'static str {
        match self {
            Style::PythonNode => "python_node",
            Style::Go => "go",
            Style::Php => "php",
            Style::Java => "java",
        }
    }
}

/// A JSON string literal (with quotes) escaped the way `style`'s generator escapes it.
pub fn json_str(s: &str, style: Style) -> String {
    let mut out = String::from("\"");
    for ch in s.chars() {
        let c = ch as u32;
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' if style != Style::Go => out.push_str("\\b"),
            '\u{c}' if style != Style::Go => out.push_str("\\f"),
            '/' if matches!(style, Style::Php | Style::Java) => out.push_str("\\/"),
            '<' | '>' if style == Style::Go => out.push_str(&format!("\\u{c:04x}")),
            '&' if matches!(style, Style::Go | Style::Php) => out.push_str("\\u0026"),
            '\u{2028}' | '\u{2029}' if style == Style::Go => out.push_str(&format!("\\u{c:04x}")),
            _ if c < 0x20 => {
                if style == Style::Java {
                    out.push_str(&format!("\\u{c:04X}"));
                } else {
                    out.push_str(&format!("\\u{c:04x}"));
                }
            }
            // json-simple escapes U+007F..U+009F and U+2000..U+20FF, upper-case hex.
            _ if style == Style::Java && ((0x7f..=0x9f).contains(&c) || (0x2000..=0x20ff).contains(&c)) => {
                out.push_str(&format!("\\u{c:04X}"));
            }
            // PHP escapes every non-ASCII character as UTF-16 units, lower-case hex.
            _ if style == Style::Php && c > 0x7f => {
                let mut units = [0u16; 2];
                for unit in ch.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            _ => out.push(ch),
        }
    }
    out.push('"');
    out
}

/// The fields of a token JSON. `payload: None` is written as `null` (Java passes `null` through).
#[derive(Debug, Clone)]
pub struct Fields {
    pub app_id: u32,
    pub user_id: String,
    pub nonce: i32,
    pub ctime: i64,
    pub expire: i64,
    pub payload: Option<String>,
}

/// The compact plaintext in the key order and escaping of `style`.
pub fn plaintext(f: &Fields, style: Style) -> String {
    let payload = match &f.payload {
        Some(p) => json_str(p, style),
        None => "null".to_owned(),
    };
    let kv = |k: &str, v: String| format!("\"{k}\":{v}");
    let app_id = kv("app_id", f.app_id.to_string());
    let user_id = kv("user_id", json_str(&f.user_id, style));
    let nonce = kv("nonce", f.nonce.to_string());
    let ctime = kv("ctime", f.ctime.to_string());
    let expire = kv("expire", f.expire.to_string());
    let payload = kv("payload", payload);
    let parts = match style {
        Style::PythonNode => [app_id, user_id, nonce, ctime, expire, payload],
        Style::Go | Style::Php => [app_id, user_id, ctime, expire, nonce, payload],
        Style::Java => [user_id, payload, expire, ctime, app_id, nonce],
    };
    format!("{{{}}}", parts.join(","))
}

// ------------------------------------------------------------------------------------------------
// Ciphers and layout.

pub fn key(secret: &str) -> [u8; 32] {
    secret.as_bytes().try_into().expect("test secrets are 32 bytes")
}

pub fn gcm_encrypt(secret: &str, iv: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let nonce: [u8; 12] = iv.try_into().expect("12-byte GCM nonce");
    Aes256Gcm::new(&key(secret).into())
        .encrypt(&nonce.into(), plaintext)
        .expect("gcm encrypt")
}

pub fn gcm_decrypt(secret: &str, iv: &[u8], content: &[u8]) -> Option<Vec<u8>> {
    let nonce: [u8; 12] = iv.try_into().ok()?;
    Aes256Gcm::new(&key(secret).into())
        .decrypt(&nonce.into(), content)
        .ok()
}

/// PKCS#7 padding by hand.
pub fn pkcs7(plaintext: &[u8]) -> Vec<u8> {
    let pad = 16 - plaintext.len() % 16;
    let mut out = plaintext.to_vec();
    out.extend(std::iter::repeat_n(pad as u8, pad));
    out
}

/// Raw AES-256-CBC over already padded (or deliberately mis-padded) blocks.
pub fn cbc_encrypt_raw(secret: &str, iv: &[u8], padded: &[u8]) -> Vec<u8> {
    assert_eq!(padded.len() % 16, 0);
    let iv: [u8; 16] = iv.try_into().expect("16-byte CBC IV");
    let mut buf = padded.to_vec();
    let len = buf.len();
    cbc::Encryptor::<Aes256>::new(&key(secret).into(), &iv.into())
        .encrypt_padded_mut::<NoPadding>(&mut buf, len)
        .expect("block multiple");
    buf
}

pub fn cbc_decrypt_raw(secret: &str, iv: &[u8], content: &[u8]) -> Option<Vec<u8>> {
    let iv: [u8; 16] = iv.try_into().ok()?;
    let mut buf = content.to_vec();
    let n = cbc::Decryptor::<Aes256>::new(&key(secret).into(), &iv.into())
        .decrypt_padded_mut::<NoPadding>(&mut buf)
        .ok()?
        .len();
    buf.truncate(n);
    Some(buf)
}

/// `expire | iv_len | iv | content_len | content | mode?` (all big-endian).
pub fn pack(expire: i64, iv: &[u8], content: &[u8], mode: Option<u8>) -> Vec<u8> {
    let mut bin = expire.to_be_bytes().to_vec();
    bin.extend_from_slice(&(iv.len() as u16).to_be_bytes());
    bin.extend_from_slice(iv);
    bin.extend_from_slice(&(content.len() as u16).to_be_bytes());
    bin.extend_from_slice(content);
    bin.extend(mode);
    bin
}

pub fn token_of(bin: &[u8]) -> String {
    format!("04{}", b64_encode(bin))
}

/// The fields of a binary token, unpacked by hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    pub expire: i64,
    pub iv: Vec<u8>,
    pub content: Vec<u8>,
    pub mode: Option<u8>,
}

pub fn unpack(token: &str) -> Option<Unpacked> {
    let bin = b64_decode(token.strip_prefix("04")?)?;
    let expire = i64::from_be_bytes(bin.get(0..8)?.try_into().ok()?);
    let iv_len = u16::from_be_bytes(bin.get(8..10)?.try_into().ok()?) as usize;
    let iv = bin.get(10..10 + iv_len)?.to_vec();
    let at = 10 + iv_len;
    let content_len = u16::from_be_bytes(bin.get(at..at + 2)?.try_into().ok()?) as usize;
    let content = bin.get(at + 2..at + 2 + content_len)?.to_vec();
    let rest = &bin[at + 2 + content_len..];
    let mode = match rest {
        [] => None,
        [m] => Some(*m),
        _ => return None,
    };
    Some(Unpacked {
        expire,
        iv,
        content,
        mode,
    })
}

/// Independent decoder: returns the header expiry and the plaintext.
pub fn indep_decode(token: &str, secret: &str) -> Option<(i64, Vec<u8>)> {
    let u = unpack(token)?;
    let plaintext = match (u.mode, u.iv.len()) {
        (Some(1), 12) => gcm_decrypt(secret, &u.iv, &u.content)?,
        (None | Some(0), 16) => {
            let padded = cbc_decrypt_raw(secret, &u.iv, &u.content)?;
            let pad = *padded.last()? as usize;
            if pad == 0 || pad > 16 || padded[padded.len() - pad..].iter().any(|&b| b as usize != pad) {
                return None;
            }
            padded[..padded.len() - pad].to_vec()
        }
        _ => return None,
    };
    Some((u.expire, plaintext))
}

/// Deterministic pseudo-random bytes for a label (SHA-256 based), so vectors are reproducible.
pub fn det_bytes(label: &str, n: usize) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut out = Vec::new();
    let mut counter = 0u32;
    while out.len() < n {
        let mut h = Sha256::new();
        h.update(label.as_bytes());
        h.update(counter.to_be_bytes());
        out.extend_from_slice(&h.finalize());
        counter += 1;
    }
    out.truncate(n);
    out
}
