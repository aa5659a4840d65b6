//! App credentials (AppSign, ServerSecret) and the AppSign login challenge.

use std::fmt;
use std::str::FromStr;

use hmac::{Hmac, Mac};
use rand::RngCore;
use rand::rngs::OsRng;
use sha2::Sha256;

use crate::TokenError;

type HmacSha256 = Hmac<Sha256>;

/// Domain separation tag of the login challenge message.
const CHALLENGE_TAG: &str = "huddle-login-v1";

/// An app's AppSign: 32 secret bytes, written as 64 hex characters. It never crosses the wire;
/// clients prove they hold it with [`sign_challenge`].
///
/// `Debug` does not print the bytes.
///
/// ```
/// use huddle_token::AppSign;
///
/// let sign: AppSign = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff".parse()?;
/// assert_eq!(format!("{sign:?}"), "AppSign(<redacted>)");
/// assert!("not hex".parse::<AppSign>().is_err());
/// # Ok::<(), huddle_token::TokenError>(())
/// ```
#[derive(Clone)]
pub struct AppSign([u8; 32]);

impl AppSign {
    /// A new random AppSign from the operating system's CSPRNG.
    ///
    /// # Panics
    ///
    /// Only if the operating system's random number generator fails.
    pub fn generate() -> AppSign {
        let mut bytes = [0u8; 32];
        OsRng.fill_bytes(&mut bytes);
        AppSign(bytes)
    }

    /// Wraps 32 raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> AppSign {
        AppSign(bytes)
    }

    /// The 64 lowercase hex characters of the AppSign.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl FromStr for AppSign {
    type Err = TokenError;

    /// Parses exactly 64 hex characters (either case); anything else is
    /// [`TokenError::InvalidAppSign`].
    fn from_str(s: &str) -> Result<AppSign, TokenError> {
        let mut bytes = [0u8; 32];
        if s.len() != 64 {
            return Err(TokenError::InvalidAppSign);
        }
        hex::decode_to_slice(s, &mut bytes).map_err(|_| TokenError::InvalidAppSign)?;
        Ok(AppSign(bytes))
    }
}

impl fmt::Debug for AppSign {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AppSign(<redacted>)")
    }
}

/// The HMAC over the challenge message, fed piece by piece.
fn challenge_mac(app_sign: &AppSign, app_id: u32, room_id: &str, user_id: &str, nonce: &str) -> HmacSha256 {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(&app_sign.0).expect("HMAC accepts any key length");
    let app_id = app_id.to_string();
    for (i, part) in [CHALLENGE_TAG, &app_id, room_id, user_id, nonce]
        .into_iter()
        .enumerate()
    {
        if i > 0 {
            mac.update(b"\n");
        }
        mac.update(part.as_bytes());
    }
    mac
}

/// Answers a server login challenge: the lowercase hex HMAC-SHA256, keyed by the 32 AppSign
/// bytes, of `"huddle-login-v1\n{app_id}\n{room_id}\n{user_id}\n{nonce}"`.
///
/// The fields are joined by newlines, so they must not contain `'\n'` themselves; Huddle's room
/// and user ID rules exclude it and the server chooses the nonce.
///
/// ```
/// use huddle_token::{AppSign, sign_challenge, verify_challenge};
///
/// let sign = AppSign::generate();
/// let sig = sign_challenge(&sign, 1, "room1", "alice", "server-nonce");
/// assert_eq!(sig.len(), 64);
/// assert!(verify_challenge(&sign, 1, "room1", "alice", "server-nonce", &sig));
/// assert!(!verify_challenge(&sign, 1, "room1", "bob", "server-nonce", &sig));
/// ```
pub fn sign_challenge(app_sign: &AppSign, app_id: u32, room_id: &str, user_id: &str, nonce: &str) -> String {
    hex::encode(
        challenge_mac(app_sign, app_id, room_id, user_id, nonce)
            .finalize()
            .into_bytes(),
    )
}

/// Checks a challenge answer made by [`sign_challenge`] in constant time. `signature_hex` must be
/// 64 hex characters (either case); anything else is `false`.
pub fn verify_challenge(
    app_sign: &AppSign,
    app_id: u32,
    room_id: &str,
    user_id: &str,
    nonce: &str,
    signature_hex: &str,
) -> bool {
    let mut signature = [0u8; 32];
    if signature_hex.len() != 64 || hex::decode_to_slice(signature_hex, &mut signature).is_err() {
        return false;
    }
    challenge_mac(app_sign, app_id, room_id, user_id, nonce)
        .verify_slice(&signature)
        .is_ok()
}

/// An app's ServerSecret: exactly 32 bytes whose raw bytes are the Token04 AES-256 key.
/// The ZEGO-style console value is 32 lowercase hex characters, and [`generate`](Self::generate)
/// makes such a value, but any 32-byte string is accepted.
///
/// `Debug` does not print the secret, and there is no `Display`: use [`as_str`](Self::as_str)
/// where the secret is really needed.
///
/// ```
/// use huddle_token::ServerSecret;
///
/// let secret: ServerSecret = "fa94dd0f974cf2e293728a526b028271".parse()?;
/// assert_eq!(secret.as_str().len(), 32);
/// assert_eq!(format!("{secret:?}"), "ServerSecret(<redacted>)");
/// assert!("too short".parse::<ServerSecret>().is_err());
/// # Ok::<(), huddle_token::TokenError>(())
/// ```
#[derive(Clone)]
pub struct ServerSecret(String);

impl ServerSecret {
    /// A new random secret: 32 lowercase hex characters (128 bits) from the operating system's
    /// CSPRNG.
    ///
    /// # Panics
    ///
    /// Only if the operating system's random number generator fails.
    pub fn generate() -> ServerSecret {
        let mut bytes = [0u8; 16];
        OsRng.fill_bytes(&mut bytes);
        ServerSecret(hex::encode(bytes))
    }

    /// The secret text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ServerSecret {
    type Err = TokenError;

    /// Accepts exactly 32 bytes; anything else is [`TokenError::InvalidSecret`].
    fn from_str(s: &str) -> Result<ServerSecret, TokenError> {
        ServerSecret::try_from(s.to_owned())
    }
}

impl TryFrom<String> for ServerSecret {
    type Error = TokenError;

    fn try_from(s: String) -> Result<ServerSecret, TokenError> {
        if s.len() != 32 {
            return Err(TokenError::InvalidSecret { len: s.len() });
        }
        Ok(ServerSecret(s))
    }
}

impl fmt::Debug for ServerSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServerSecret(<redacted>)")
    }
}
