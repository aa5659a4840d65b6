//! Short-lived TURN credentials for coturn (or any TURN server) in the TURN REST API scheme
//! (draft-uberti-behave-turn-rest, coturn's `use-auth-secret` with `static-auth-secret`): the
//! username is `{expiry}:{user}`, with `expiry` in Unix seconds, and the password is the base64
//! of HMAC-SHA1 over the username, keyed by the secret that Huddle and the TURN server share. The
//! TURN server checks the HMAC and the expiry itself; nothing else passes between the two.
//!
//! Huddle runs no TURN server of its own: relaying is coturn's job (`docs/deploy.md`).

use base64::Engine as _;
use hmac::{Hmac, Mac};
use huddle_proto::{AppId, IceServer, UserId};
use sha1::Sha1;

use crate::config::TurnConfig;

/// The ICE servers for one login at `now` (Unix seconds): the configured URLs with credentials
/// valid for `credential_ttl`. The user part of the username is `{app_id}.{user_id}`, so that
/// the TURN server's logs say whose allocation it is.
///
/// ```
/// use std::time::Duration;
/// use huddle_server::{TurnConfig, turn::ice_servers};
///
/// let turn = TurnConfig {
///     urls: vec!["turn:turn.example.com:3478".into()],
///     secret: "0123456789abcdef0123".into(),
///     credential_ttl: Duration::from_secs(3600),
/// };
/// let servers = ice_servers(&turn, 7.try_into().unwrap(), &"alice".parse().unwrap(), 1_700_000_000);
/// assert_eq!(servers[0].username.as_deref(), Some("1700003600:7.alice"));
/// ```
pub fn ice_servers(turn: &TurnConfig, app_id: AppId, user_id: &UserId, now: i64) -> Vec<IceServer> {
    let expiry = now.saturating_add(i64::try_from(turn.credential_ttl.as_secs()).unwrap_or(i64::MAX));
    let username = format!("{expiry}:{app_id}.{user_id}");
    let credential = password(&turn.secret, &username);
    vec![IceServer {
        urls: turn.urls.clone(),
        username: Some(username),
        credential: Some(credential),
    }]
}

/// The TURN REST API password for `username`: base64(HMAC-SHA1(secret, username)).
pub fn password(secret: &str, username: &str) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_matches_a_known_hmac_sha1() {
        // RFC 2202 test case 2: HMAC-SHA1("Jefe", "what do ya want for nothing?")
        // = effcdf6ae5eb2fa2d27416d5f184df9c259a7c79.
        let expected = base64::engine::general_purpose::STANDARD
            .encode(hex::decode("effcdf6ae5eb2fa2d27416d5f184df9c259a7c79").unwrap());
        assert_eq!(password("Jefe", "what do ya want for nothing?"), expected);
    }

    #[test]
    fn credentials_expire_after_the_ttl_and_name_the_user() {
        let turn = TurnConfig {
            urls: vec![
                "turns:t.example:443?transport=tcp".into(),
                "turn:t.example:3478".into(),
            ],
            secret: "s3cret-s3cret-s3cret".into(),
            credential_ttl: std::time::Duration::from_secs(86_400),
        };
        let app = AppId::new(42).unwrap();
        let s = ice_servers(&turn, app, &"bob".parse().unwrap(), 1000);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].urls, turn.urls);
        let user = s[0].username.clone().unwrap();
        assert_eq!(user, "87400:42.bob");
        assert_eq!(s[0].credential.clone().unwrap(), password(&turn.secret, &user));
        // Another user or another time: other credentials.
        let other = ice_servers(&turn, app, &"eve".parse().unwrap(), 1000);
        assert_ne!(other[0].credential, s[0].credential);
    }
}
