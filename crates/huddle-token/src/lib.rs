//! Huddle's authentication primitives: "Token04" tokens and AppSign login challenges.
//!
//! Pure functions with no IO: verification never reads the clock, the caller passes `now`.
//!
//! # Token04
//!
//! Tokens are byte-compatible with the widely used Token04 format (ZEGO's
//! `zego_server_assistant`): `"04" + Base64(expire | iv_len | iv | content_len | content [| mode])`,
//! where `content` is the AES-256 encryption, keyed by the 32-byte server secret, of the JSON
//! `{"app_id":..,"user_id":..,"nonce":..,"ctime":..,"expire":..,"payload":..}`.
//! [`TokenBuilder`] writes AES-256-GCM tokens by default (CBC on request); [`verify`] and
//! [`decode`] accept both ciphers and every JSON style of the official generators.
//!
//! ```
//! use huddle_token::{Privileges, TokenBuilder, VerifyOptions, verify};
//!
//! let secret = "fa94dd0f974cf2e293728a526b028271";
//! let privileges = Privileges { room_id: "room1".into(), login: Some(true), publish: Some(false), ..Default::default() };
//! let token = TokenBuilder::new(1, "alice", secret)
//!     .effective_secs(3600)
//!     .ctime(1_700_000_000)
//!     .privileges(&privileges)
//!     .build()?;
//!
//! let claims = verify(&token, secret, &VerifyOptions { app_id: Some(1), user_id: Some("alice"), now: 1_700_000_100 })?;
//! let p = claims.privileges()?.expect("a privilege token");
//! assert!(p.check_login("room1").is_ok());
//! assert_eq!(p.check_publish("stream1").unwrap_err().code(), 1003025); // PUBLISH_FORBIDDEN
//! # Ok::<(), huddle_token::TokenError>(())
//! ```
//!
//! Prefer GCM: CBC tokens have no integrity protection. A holder of a CBC token can flip bits of
//! the IV to rewrite the first 16 plaintext bytes (with the Java key order, the first bytes of
//! `user_id`), so deployments that issue only GCM tokens should reject [`Cipher::Cbc`] (see
//! [`Decoded::cipher`]).
//!
//! # AppSign challenge
//!
//! The AppSign never crosses the wire: the server sends a nonce and the client answers with
//! [`sign_challenge`]; the server checks it with [`verify_challenge`].
//!
//! # Errors
//!
//! Every failure is a [`TokenError`] whose [`code`](TokenError::code) is a Huddle error code.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod appsign;
mod error;
mod privileges;
mod token;

pub use appsign::{AppSign, ServerSecret, sign_challenge, verify_challenge};
pub use error::{Denied, TokenError};
pub use privileges::Privileges;
pub use token::{
    Cipher, Decoded, TOKEN_VERSION_PREFIX, TokenBuilder, TokenClaims, VerifyOptions, decode, peek_expire,
    verify,
};
