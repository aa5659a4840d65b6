//! Login authentication and token privileges. Pure functions over the configured apps: the caller
//! passes the time.
//!
//! A login proves access with the AppSign challenge answer (`sign`) or a Token04 `token`. When a
//! token carries a privilege payload, its room and login privilege are checked here at login
//! (1002080), and the resulting [`Grant`] travels with the session so that each `publish` is checked
//! against it ([`check_publish`], 1003025).

use std::collections::HashMap;

use huddle_proto::{AppId, Auth, ErrorCode, HuddleError, Login, RoomId, StreamId, UserId};
use huddle_token::{Cipher, Privileges, TokenError, VerifyOptions};

use crate::config::AppConfig;

/// What a successful authentication grants the session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grant {
    /// The token's privilege payload; `None` for AppSign logins and tokens without a payload
    /// (everything allowed).
    pub privileges: Option<Privileges>,
    /// The token's expiry, Unix seconds; `None` for AppSign logins.
    pub token_expire: Option<i64>,
}

/// The configured apps, looked up by AppID.
#[derive(Debug, Clone, Default)]
pub struct Authenticator {
    apps: HashMap<AppId, AppConfig>,
}

fn token_error(e: &TokenError) -> HuddleError {
    HuddleError::new(ErrorCode(e.code()), e.to_string())
}

impl Authenticator {
    /// The authenticator of these apps (a later duplicate AppID replaces an earlier one; the
    /// configuration's validation refuses duplicates).
    pub fn new(apps: &[AppConfig]) -> Authenticator {
        Authenticator {
            apps: apps.iter().map(|a| (a.app_id, a.clone())).collect(),
        }
    }

    /// The app with this ID.
    pub fn app(&self, app_id: AppId) -> Option<&AppConfig> {
        self.apps.get(&app_id)
    }

    /// Checks a login: the app exists (1001004), then the AppSign challenge answer over `nonce`
    /// (1001005) or the token (1002074–1002079) and its room and login privileges (1002080).
    /// `now` is the time in Unix seconds.
    pub fn authenticate(&self, login: &Login, nonce: &str, now: i64) -> Result<Grant, HuddleError> {
        let app = self.known_app(login.app_id)?;
        match &login.auth {
            Auth::Sign(answer) => {
                let ok = huddle_token::verify_challenge(
                    &app.app_sign,
                    login.app_id.get(),
                    login.room_id.as_str(),
                    login.user.user_id.as_str(),
                    nonce,
                    answer,
                );
                if ok {
                    Ok(Grant::default())
                } else {
                    Err(HuddleError::from(ErrorCode::APP_SIGN_INCORRECT))
                }
            }
            Auth::Token(token) => {
                self.verify_token(login.app_id, &login.room_id, &login.user.user_id, token, now)
            }
        }
    }

    /// Checks a token for this app, user and room (at login, and when a session renews its token):
    /// 1001004 for an unknown app, the token's own codes (1002074–1002079), then 1002080 when its
    /// privileges forbid the room or logging in.
    pub fn verify_token(
        &self,
        app_id: AppId,
        room_id: &RoomId,
        user_id: &UserId,
        token: &str,
        now: i64,
    ) -> Result<Grant, HuddleError> {
        let app = self.known_app(app_id)?;
        if !app.allow_cbc_tokens
            && huddle_token::decode(token, app.server_secret.as_str()).is_ok_and(|d| d.cipher == Cipher::Cbc)
        {
            // CBC has no integrity: a holder can rewrite the first block of the JSON through the
            // IV (docs/security.md).
            return Err(HuddleError::new(
                ErrorCode::TOKEN_FORMAT,
                format!("AES-CBC tokens are not accepted for the AppID {app_id} (allow_cbc_tokens)"),
            ));
        }
        let opts = VerifyOptions {
            app_id: Some(app_id.get()),
            user_id: Some(user_id.as_str()),
            now,
        };
        let claims =
            huddle_token::verify(token, app.server_secret.as_str(), &opts).map_err(|e| token_error(&e))?;
        let privileges = claims.privileges().map_err(|e| token_error(&e))?;
        if let Some(p) = &privileges {
            if !p.allows_room(room_id.as_str()) {
                return Err(HuddleError::new(
                    ErrorCode::TOKEN_ROOM_FORBIDDEN,
                    "the token is for another room",
                ));
            }
            if !p.allows_login() {
                return Err(HuddleError::new(
                    ErrorCode::TOKEN_ROOM_FORBIDDEN,
                    "the token does not allow logging in",
                ));
            }
        }
        Ok(Grant {
            privileges,
            token_expire: Some(claims.expire),
        })
    }

    fn known_app(&self, app_id: AppId) -> Result<&AppConfig, HuddleError> {
        self.apps.get(&app_id).ok_or_else(|| {
            HuddleError::new(
                ErrorCode::APP_ID_UNKNOWN,
                format!("the AppID {app_id} is not configured"),
            )
        })
    }
}

/// Checks that `privileges` (from the session's [`Grant`]) allow publishing `stream_id`: the
/// publish privilege, then the stream ID list (1003025). `None` allows everything.
pub fn check_publish(privileges: Option<&Privileges>, stream_id: &StreamId) -> Result<(), HuddleError> {
    let Some(p) = privileges else { return Ok(()) };
    if !p.allows_publish() {
        return Err(HuddleError::new(
            ErrorCode::PUBLISH_FORBIDDEN,
            "the token does not allow publishing",
        ));
    }
    if !p.allows_stream(stream_id.as_str()) {
        return Err(HuddleError::new(
            ErrorCode::PUBLISH_FORBIDDEN,
            format!("the token does not allow publishing the stream ID {stream_id}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use huddle_proto::{PROTOCOL_VERSION, User};
    use huddle_token::{Cipher, TokenBuilder};

    use super::*;
    use crate::config::test_app;

    const NOW: i64 = 1_700_000_000;

    fn auth() -> Authenticator {
        Authenticator::new(&[test_app(7), test_app(8)])
    }

    fn login(app: u32, room: &str, user: &str, auth: Auth) -> Login {
        Login {
            seq: 1,
            protocol: PROTOCOL_VERSION,
            app_id: AppId::new(app).unwrap(),
            room_id: RoomId::new(room).unwrap(),
            user: User::new(UserId::new(user).unwrap()),
            auth,
            user_status_notify: false,
            max_member_count: 0,
            resume: None,
            setup_active: false,
        }
    }

    fn sign(app: u32, room: &str, user: &str, nonce: &str) -> Auth {
        Auth::Sign(huddle_token::sign_challenge(
            &test_app(app).app_sign,
            app,
            room,
            user,
            nonce,
        ))
    }

    fn token(app: u32, user: &str, privileges: Option<&Privileges>) -> String {
        let secret = test_app(app).server_secret;
        let mut b = TokenBuilder::new(app, user, secret.as_str())
            .ctime(NOW)
            .effective_secs(3600);
        if let Some(p) = privileges {
            b = b.privileges(p);
        }
        b.build().unwrap()
    }

    fn code(r: Result<Grant, HuddleError>) -> ErrorCode {
        r.unwrap_err().code
    }

    #[test]
    fn sign_login() {
        let a = auth();
        let ok = a
            .authenticate(&login(7, "r1", "alice", sign(7, "r1", "alice", "n1")), "n1", NOW)
            .unwrap();
        assert_eq!(ok, Grant::default());
        // Another nonce, room, user or app's sign does not match.
        for (l, nonce) in [
            (login(7, "r1", "alice", sign(7, "r1", "alice", "n1")), "n2"),
            (login(7, "r2", "alice", sign(7, "r1", "alice", "n1")), "n1"),
            (login(7, "r1", "bob", sign(7, "r1", "alice", "n1")), "n1"),
            (login(7, "r1", "alice", sign(8, "r1", "alice", "n1")), "n1"),
            (login(7, "r1", "alice", Auth::Sign("zz".into())), "n1"),
            (login(7, "r1", "alice", Auth::Sign(String::new())), "n1"),
        ] {
            assert_eq!(
                code(a.authenticate(&l, nonce, NOW)),
                ErrorCode::APP_SIGN_INCORRECT
            );
        }
    }

    #[test]
    fn unknown_app() {
        let a = auth();
        let l = login(9, "r1", "alice", sign(9, "r1", "alice", "n"));
        assert_eq!(code(a.authenticate(&l, "n", NOW)), ErrorCode::APP_ID_UNKNOWN);
        let l = login(9, "r1", "alice", Auth::Token(token(9, "alice", None)));
        assert_eq!(code(a.authenticate(&l, "n", NOW)), ErrorCode::APP_ID_UNKNOWN);
    }

    #[test]
    fn token_login_and_errors() {
        let a = auth();
        let t = token(7, "alice", None);
        let g = a
            .authenticate(&login(7, "r1", "alice", Auth::Token(t.clone())), "n", NOW + 10)
            .unwrap();
        assert_eq!(
            g,
            Grant {
                privileges: None,
                token_expire: Some(NOW + 3600)
            }
        );
        let cases = [
            (
                login(7, "r1", "alice", Auth::Token(t.clone())),
                NOW + 3600,
                ErrorCode::TOKEN_EXPIRED,
            ),
            (
                login(7, "r1", "bob", Auth::Token(t.clone())),
                NOW,
                ErrorCode::TOKEN_USER_ID_MISMATCH,
            ),
            (
                login(7, "r1", "alice", Auth::Token("hello".into())),
                NOW,
                ErrorCode::TOKEN_FORMAT,
            ),
            (
                login(7, "r1", "alice", Auth::Token(String::new())),
                NOW,
                ErrorCode::TOKEN_FORMAT,
            ),
            // A token of app 8 decrypts with app 8's secret only.
            (
                login(7, "r1", "alice", Auth::Token(token(8, "alice", None))),
                NOW,
                ErrorCode::TOKEN_DECRYPT,
            ),
        ];
        for (l, now, expected) in cases {
            assert_eq!(code(a.authenticate(&l, "n", now)), expected, "{l:?}");
        }
        // Tampering with the ciphertext breaks decryption.
        let mut bytes = t.into_bytes();
        let i = bytes.len() / 2;
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert_eq!(
            code(a.authenticate(&login(7, "r1", "alice", Auth::Token(tampered)), "n", NOW)),
            ErrorCode::TOKEN_DECRYPT
        );
        // A token for another AppID encrypted with this app's secret.
        let other = TokenBuilder::new(99, "alice", test_app(7).server_secret.as_str())
            .ctime(NOW)
            .build()
            .unwrap();
        assert_eq!(
            code(a.authenticate(&login(7, "r1", "alice", Auth::Token(other)), "n", NOW)),
            ErrorCode::TOKEN_APP_ID_MISMATCH
        );
        // CBC tokens (the older generators) have no integrity: refused unless the app allows them.
        let cbc = TokenBuilder::new(7, "alice", test_app(7).server_secret.as_str())
            .ctime(NOW)
            .cipher(Cipher::Cbc)
            .build()
            .unwrap();
        let refused = a
            .authenticate(&login(7, "r1", "alice", Auth::Token(cbc.clone())), "n", NOW)
            .unwrap_err();
        assert_eq!(refused.code, ErrorCode::TOKEN_FORMAT);
        assert!(refused.message.contains("allow_cbc_tokens"), "{refused:?}");
        let legacy = Authenticator::new(&[AppConfig {
            allow_cbc_tokens: true,
            ..test_app(7)
        }]);
        assert!(
            legacy
                .authenticate(&login(7, "r1", "alice", Auth::Token(cbc.clone())), "n", NOW)
                .is_ok()
        );
        // The same holds for a renewal.
        let (room, user) = (RoomId::new("r1").unwrap(), UserId::new("alice").unwrap());
        assert_eq!(
            code(a.verify_token(AppId::new(7).unwrap(), &room, &user, &cbc, NOW)),
            ErrorCode::TOKEN_FORMAT
        );
        assert!(
            legacy
                .verify_token(AppId::new(7).unwrap(), &room, &user, &cbc, NOW)
                .is_ok()
        );
        // A CBC-looking string that does not decrypt keeps its own error.
        assert_eq!(
            code(a.authenticate(&login(7, "r1", "alice", Auth::Token("04AAAA".into())), "n", NOW)),
            ErrorCode::TOKEN_FORMAT
        );
    }

    #[test]
    fn token_privileges_at_login() {
        let a = auth();
        let p = |room: &str, login: Option<bool>| Privileges {
            room_id: room.into(),
            login,
            publish: None,
            stream_id_list: None,
        };
        let try_login = |privileges: &Privileges, room: &str| {
            a.authenticate(
                &login(7, room, "alice", Auth::Token(token(7, "alice", Some(privileges)))),
                "n",
                NOW,
            )
        };
        assert!(
            try_login(&p("r1", Some(true)), "r1")
                .unwrap()
                .privileges
                .is_some()
        );
        assert!(try_login(&p("", None), "any").is_ok());
        assert_eq!(
            code(try_login(&p("r1", Some(true)), "r2")),
            ErrorCode::TOKEN_ROOM_FORBIDDEN
        );
        assert_eq!(
            code(try_login(&p("r1", Some(false)), "r1")),
            ErrorCode::TOKEN_ROOM_FORBIDDEN
        );
        assert_eq!(
            code(try_login(&p("", Some(false)), "r1")),
            ErrorCode::TOKEN_ROOM_FORBIDDEN
        );
        // Renewal checks the same.
        let t = token(7, "alice", Some(&p("r1", None)));
        let room = RoomId::new("r2").unwrap();
        let user = UserId::new("alice").unwrap();
        assert_eq!(
            code(a.verify_token(AppId::new(7).unwrap(), &room, &user, &t, NOW)),
            ErrorCode::TOKEN_ROOM_FORBIDDEN
        );
    }

    #[test]
    fn publish_privileges() {
        let s1 = StreamId::new("s1").unwrap();
        let s2 = StreamId::new("s2").unwrap();
        assert!(check_publish(None, &s1).is_ok());
        let all = Privileges::default();
        assert!(check_publish(Some(&all), &s1).is_ok());
        let no = Privileges {
            publish: Some(false),
            ..Default::default()
        };
        assert_eq!(
            check_publish(Some(&no), &s1).unwrap_err().code,
            ErrorCode::PUBLISH_FORBIDDEN
        );
        let listed = Privileges {
            publish: Some(true),
            stream_id_list: Some(vec!["s1".into()]),
            ..Default::default()
        };
        assert!(check_publish(Some(&listed), &s1).is_ok());
        assert_eq!(
            check_publish(Some(&listed), &s2).unwrap_err().code,
            ErrorCode::PUBLISH_FORBIDDEN
        );
        let empty_list = Privileges {
            stream_id_list: Some(vec![]),
            ..Default::default()
        };
        assert!(check_publish(Some(&empty_list), &s2).is_ok());
    }
}
