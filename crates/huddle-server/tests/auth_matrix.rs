//! The isolation and auth matrix (issue 5): every forbidden action is refused with its exact code,
//! and nothing of anyone else is touched. Over real WebSockets on 127.0.0.1.
//!
//! Three victims publish and play in two apps and three rooms. Attackers (strangers, and
//! legitimate users of the apps with restricted tokens) then try, one case at a time, what they
//! must not do. After **every** case each victim proves with a ping barrier that it got no event,
//! the victims' rooms (users, streams) are exactly as before, and the registry's invariants hold.
//! At the end the victims still work: their streams play, their plays follow, they log out cleanly.
//!
//! The signaling client is `tests/common/ws.rs`.

mod common;

use std::time::Duration;

use common::ws::*;
use futures_util::SinkExt;
use huddle_proto::{AppId, Auth, ClientMsg, ErrorCode, Login, LoginOk, RoomId, ServerMsg};
use huddle_server::BackgroundServer;
use huddle_server::registry::RoomView;
use huddle_token::{Privileges, TokenBuilder};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

fn server() -> BackgroundServer {
    server_with(|config| {
        // The matrix sends many messages on few connections; the limits have their own tests.
        config.rate_limit_per_sec = 100_000;
        config.rate_limit_burst = 100_000;
        config.heartbeat = Duration::from_secs(10);
        config.session_timeout = Duration::from_secs(60);
    })
}

fn secret(app_id: u32) -> String {
    app(app_id).server_secret.as_str().to_string()
}

/// A GCM token carrying `app` in its JSON, encrypted with `secret`.
fn token_with(app: u32, secret: &str, user: &str, privileges: Option<&Privileges>) -> String {
    let mut b = TokenBuilder::new(app, user, secret).effective_secs(3600);
    if let Some(p) = privileges {
        b = b.privileges(p);
    }
    b.build().unwrap()
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard Base64 with padding (the tokens' alphabet).
fn b64_encode(bin: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bin.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn b64_decode(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in text.as_bytes().chunks(4) {
        let digits: Vec<u32> = chunk
            .iter()
            .take_while(|c| **c != b'=')
            .map(|c| B64.iter().position(|b| b == c).unwrap() as u32)
            .collect();
        let n = digits
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, d)| n | d << (18 - 6 * i));
        for i in 0..digits.len().saturating_sub(1) {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

/// `token` with the byte at `offset` of its binary form (after "04") XORed with `mask`.
fn tamper(token: &str, offset: usize, mask: u8) -> String {
    let mut bin = b64_decode(&token[2..]);
    let i = offset.min(bin.len() - 1);
    bin[i] ^= mask;
    format!("04{}", b64_encode(&bin))
}

fn app_id(n: u32) -> AppId {
    AppId::new(n).unwrap()
}

fn room_id(r: &str) -> RoomId {
    RoomId::new(r).unwrap()
}

/// A new connection logged in to `room` of `app` as `user`, with `auth` or the app's AppSign
/// (and user updates).
async fn logged_in(
    server: &BackgroundServer,
    app: u32,
    room: &str,
    user: &str,
    auth: Option<Auth>,
) -> (Client, LoginOk) {
    let mut c = Client::connect(server).await;
    let mut l = c.login_msg(app, room, user, true);
    if let Some(auth) = auth {
        l.auth = auth;
    }
    match c.try_login(l).await {
        ServerMsg::LoginOk(ok) => (c, ok),
        other => panic!("{user}: expected login_ok, got {other:?}"),
    }
}

/// The victims and what must stay as it is.
struct World {
    server: BackgroundServer,
    victims: Vec<(&'static str, Client)>,
    /// The victims' rooms: (app, room) and how they look.
    rooms: Vec<((u32, &'static str), Option<RoomView>)>,
    cases: usize,
}

impl World {
    fn rooms_now(&self) -> Vec<((u32, &'static str), Option<RoomView>)> {
        [(APP, "r1"), (APP, "r2"), (OTHER_APP, "r1")]
            .into_iter()
            .map(|(a, r)| ((a, r), self.server.state().room(app_id(a), &room_id(r))))
            .collect()
    }

    /// Takes the state every later case is checked against.
    async fn settle(&mut self) {
        for (_, v) in &mut self.victims {
            v.barrier().await;
        }
        self.rooms = self.rooms_now();
    }

    /// Asserts that case `name` touched no victim: no event, rooms as before, invariants.
    async fn untouched(&mut self, name: &str) {
        self.cases += 1;
        for (who, v) in &mut self.victims {
            let events = v.barrier().await;
            assert_eq!(events, vec![], "{name}: {who} got events");
        }
        assert_eq!(self.rooms_now(), self.rooms, "{name}: a victim's room changed");
        self.server
            .state()
            .check_invariants()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[tokio::test]
async fn every_forbidden_action_is_refused_with_its_code_and_touches_nobody() {
    let server = server();
    // ----- the victims -----
    let (mut v, v_ok) = logged_in(&server, APP, "r1", "victim", None).await;
    v.ok_json(json!({"type":"publish","stream_id":"v-cam"})).await;
    v.ok_json(json!({"type":"play","stream_id":"x-cam"})).await;
    let (mut v2, _) = logged_in(&server, APP, "r2", "victim2", None).await;
    v2.ok_json(json!({"type":"publish","stream_id":"v2-cam"})).await;
    let (mut vb, _) = logged_in(&server, OTHER_APP, "r1", "victimb", None).await;
    vb.ok_json(json!({"type":"publish","stream_id":"b-cam"})).await;

    // ----- the attackers, logged in legitimately -----
    // mallory may publish m-cam only, in r3; quentin may not publish; nadia shares the
    // victim's room (AppSign: everything allowed); oscar is in the other app's r1.
    let listed = Privileges {
        room_id: "r3".into(),
        publish: Some(true),
        stream_id_list: Some(vec!["m-cam".into()]),
        ..Default::default()
    };
    let (mut m, _) = logged_in(
        &server,
        APP,
        "r3",
        "mallory",
        Some(Auth::Token(token(APP, "mallory", Some(&listed)))),
    )
    .await;
    let (mut q, _) = logged_in(
        &server,
        APP,
        "r3",
        "quentin",
        Some(Auth::Token(token(APP, "quentin", Some(&no_publish())))),
    )
    .await;
    let (mut n, _) = logged_in(&server, APP, "r1", "nadia", None).await;
    let (mut o, _) = logged_in(&server, OTHER_APP, "r1", "oscar", None).await;

    let mut w = World {
        server,
        victims: vec![("victim", v), ("victim2", v2), ("victimb", vb)],
        rooms: Vec::new(),
        cases: 0,
    };
    w.settle().await;
    assert_eq!(
        w.rooms
            .iter()
            .map(|(_, r)| r.as_ref().unwrap().streams.len())
            .sum::<usize>(),
        3
    );

    // ----- logins that must fail (all as the victim, in the victim's room: one that passed
    // would kick the victim) -----
    let mut s = Client::connect(&w.server).await;
    let base = s.login_msg(APP, "r1", "victim", true);
    let with = |auth: Auth| Login { auth, ..base.clone() };
    let good = token(APP, "victim", None);
    let expired = token_made_at(APP, "victim", 1_700_000_000, 3600);
    let cbc = cbc_token(APP, "victim");
    // Offsets in the GCM layout: expire 0..8, iv_len 8..10, iv 10..22, content_len 22..24,
    // ciphertext, tag (last 16 before the mode byte), mode (last).
    let len = b64_decode(&good[2..]).len();
    assert_eq!(
        b64_encode(&b64_decode(&good[2..])),
        good[2..],
        "the test's Base64"
    );
    let login_cases: Vec<(&str, Login, ErrorCode)> = vec![
        (
            "wrong AppSign (another app's)",
            with(s.sign(OTHER_APP, APP, "r1", "victim")),
            ErrorCode::APP_SIGN_INCORRECT,
        ),
        (
            "AppSign answer for another user",
            with(s.sign(APP, APP, "r1", "nadia")),
            ErrorCode::APP_SIGN_INCORRECT,
        ),
        (
            "AppSign answer for another room",
            with(s.sign(APP, APP, "r2", "victim")),
            ErrorCode::APP_SIGN_INCORRECT,
        ),
        (
            "AppSign answer of zeros",
            with(Auth::Sign("00".repeat(32))),
            ErrorCode::APP_SIGN_INCORRECT,
        ),
        (
            "AppSign answer empty",
            with(Auth::Sign(String::new())),
            ErrorCode::APP_SIGN_INCORRECT,
        ),
        (
            "unknown AppID (sign)",
            Login {
                app_id: app_id(99),
                auth: s.sign(APP, 99, "r1", "victim"),
                ..base.clone()
            },
            ErrorCode::APP_ID_UNKNOWN,
        ),
        (
            "unknown AppID (token)",
            Login {
                app_id: app_id(99),
                auth: Auth::Token(token_with(99, &secret(APP), "victim", None)),
                ..base.clone()
            },
            ErrorCode::APP_ID_UNKNOWN,
        ),
        (
            "token of another app",
            with(Auth::Token(token(OTHER_APP, "victim", None))),
            ErrorCode::TOKEN_DECRYPT,
        ),
        (
            "token naming another AppID under this app's secret",
            with(Auth::Token(token_with(OTHER_APP, &secret(APP), "victim", None))),
            ErrorCode::TOKEN_APP_ID_MISMATCH,
        ),
        (
            "token of another user",
            with(Auth::Token(token(APP, "nadia", None))),
            ErrorCode::TOKEN_USER_ID_MISMATCH,
        ),
        (
            "token of another room",
            with(Auth::Token(token(APP, "victim", Some(&room_only("r2"))))),
            ErrorCode::TOKEN_ROOM_FORBIDDEN,
        ),
        (
            "token without login privilege",
            with(Auth::Token(token(APP, "victim", Some(&no_login())))),
            ErrorCode::TOKEN_ROOM_FORBIDDEN,
        ),
        (
            "expired token",
            with(Auth::Token(expired)),
            ErrorCode::TOKEN_EXPIRED,
        ),
        (
            "CBC token, app disallows CBC",
            with(Auth::Token(cbc)),
            ErrorCode::TOKEN_FORMAT,
        ),
        (
            "tampered: header expiry",
            with(Auth::Token(tamper(&good, 7, 0x01))),
            ErrorCode::TOKEN_CONTENT,
        ),
        (
            "tampered: header expiry high byte",
            with(Auth::Token(tamper(&good, 0, 0x40))),
            ErrorCode::TOKEN_CONTENT,
        ),
        (
            "tampered: IV length",
            with(Auth::Token(tamper(&good, 9, 0x04))),
            ErrorCode::TOKEN_FORMAT,
        ),
        (
            "tampered: IV",
            with(Auth::Token(tamper(&good, 12, 0x01))),
            ErrorCode::TOKEN_DECRYPT,
        ),
        (
            "tampered: content length",
            with(Auth::Token(tamper(&good, 23, 0x01))),
            ErrorCode::TOKEN_FORMAT,
        ),
        (
            "tampered: ciphertext start",
            with(Auth::Token(tamper(&good, 24, 0x01))),
            ErrorCode::TOKEN_DECRYPT,
        ),
        (
            "tampered: ciphertext middle",
            with(Auth::Token(tamper(&good, len / 2, 0x80))),
            ErrorCode::TOKEN_DECRYPT,
        ),
        (
            "tampered: GCM tag",
            with(Auth::Token(tamper(&good, len - 5, 0x01))),
            ErrorCode::TOKEN_DECRYPT,
        ),
        (
            "tampered: mode byte",
            with(Auth::Token(tamper(&good, len - 1, 0x02))),
            ErrorCode::TOKEN_FORMAT,
        ),
        (
            "tampered: prefix",
            with(Auth::Token(format!("05{}", &good[2..]))),
            ErrorCode::TOKEN_FORMAT,
        ),
        (
            "tampered: base64",
            with(Auth::Token(format!("{}!", &good[..good.len() - 1]))),
            ErrorCode::TOKEN_FORMAT,
        ),
        (
            "truncated token",
            with(Auth::Token(good[..good.len() / 2].to_string())),
            ErrorCode::TOKEN_FORMAT,
        ),
        (
            "empty token",
            with(Auth::Token(String::new())),
            ErrorCode::TOKEN_FORMAT,
        ),
        (
            // A stolen resume key is useless without the user's own auth.
            "resume with the victim's key, wrong AppSign",
            Login {
                resume: resume_of(&v_ok),
                ..with(Auth::Sign("11".repeat(32)))
            },
            ErrorCode::APP_SIGN_INCORRECT,
        ),
        (
            "resume with the victim's key, another user's token",
            Login {
                resume: resume_of(&v_ok),
                ..with(Auth::Token(token(APP, "mallory", None)))
            },
            ErrorCode::TOKEN_USER_ID_MISMATCH,
        ),
        (
            "other protocol version",
            Login {
                protocol: 99,
                ..base.clone()
            },
            ErrorCode::PROTOCOL_VERSION,
        ),
    ];
    for (name, mut login, expected) in login_cases {
        login.seq = s.next_seq();
        let reply = s.request(ClientMsg::Login(login)).await;
        assert_eq!(code_of(&reply), expected, "{name}: {reply:?}");
        w.untouched(name).await;
    }

    // ----- requests on a connection that is not logged in (after all those refusals) -----
    let not_logged_in = [
        json!({"type":"publish","stream_id":"v-cam"}),
        json!({"type":"unpublish","stream_id":"v-cam"}),
        json!({"type":"play","stream_id":"v-cam"}),
        json!({"type":"stop_play","stream_id":"x-cam"}),
        json!({"type":"logout"}),
        json!({"type":"renew_token","token": good}),
        json!({"type":"media_offer","stream_id":"v-cam","kind":"play","sdp":"v=0\r\n"}),
        json!({"type":"media_offer","stream_id":"v-cam","kind":"publish","sdp":"v=0\r\n"}),
        json!({"type":"ping"}),
    ];
    for req in not_logged_in {
        let name = format!("not logged in: {}", req["type"]);
        let reply = s.request_json(req).await;
        assert_eq!(code_of(&reply), ErrorCode::NOT_LOGGED_IN, "{name}: {reply:?}");
        w.untouched(&name).await;
    }

    // ----- what logged-in attackers must not do -----
    let other_app_token = token(OTHER_APP, "mallory", None);
    let table: Vec<(&str, char, Value, ErrorCode)> = vec![
        (
            "publish without publish privilege",
            'q',
            json!({"type":"publish","stream_id":"q-cam"}),
            ErrorCode::PUBLISH_FORBIDDEN,
        ),
        (
            "publish outside the token's stream list",
            'm',
            json!({"type":"publish","stream_id":"other-cam"}),
            ErrorCode::PUBLISH_FORBIDDEN,
        ),
        (
            "publish the victim's stream ID (not in the list)",
            'm',
            json!({"type":"publish","stream_id":"v-cam"}),
            ErrorCode::PUBLISH_FORBIDDEN,
        ),
        (
            "duplicate stream ID, same room",
            'n',
            json!({"type":"publish","stream_id":"v-cam"}),
            ErrorCode::STREAM_ID_EXISTS,
        ),
        (
            "duplicate stream ID, another room",
            'n',
            json!({"type":"publish","stream_id":"v2-cam"}),
            ErrorCode::STREAM_ID_EXISTS,
        ),
        (
            "unpublish another session's stream",
            'n',
            json!({"type":"unpublish","stream_id":"v-cam"}),
            ErrorCode::STREAM_NOT_FOUND,
        ),
        (
            "unpublish another room's stream",
            'm',
            json!({"type":"unpublish","stream_id":"v2-cam"}),
            ErrorCode::STREAM_NOT_FOUND,
        ),
        (
            "unpublish another app's stream",
            'm',
            json!({"type":"unpublish","stream_id":"b-cam"}),
            ErrorCode::STREAM_NOT_FOUND,
        ),
        (
            "media offer to publish another session's stream",
            'n',
            json!({"type":"media_offer","stream_id":"v-cam","kind":"publish","sdp":"v=0\r\n"}),
            ErrorCode::STREAM_NOT_FOUND,
        ),
        (
            "media offer to play a stream not played",
            'm',
            json!({"type":"media_offer","stream_id":"v-cam","kind":"play","sdp":"v=0\r\n"}),
            ErrorCode::STREAM_NOT_FOUND,
        ),
        (
            "media offer to play another app's stream",
            'o',
            json!({"type":"media_offer","stream_id":"v-cam","kind":"play","sdp":"v=0\r\n"}),
            ErrorCode::STREAM_NOT_FOUND,
        ),
        (
            "renew with the victim's token",
            'm',
            json!({"type":"renew_token","token": token(APP, "victim", None)}),
            ErrorCode::TOKEN_USER_ID_MISMATCH,
        ),
        (
            "renew with a token for the victim's room",
            'm',
            json!({"type":"renew_token","token": token(APP, "mallory", Some(&room_only("r1")))}),
            ErrorCode::TOKEN_ROOM_FORBIDDEN,
        ),
        (
            "renew with another app's token",
            'm',
            json!({"type":"renew_token","token": other_app_token}),
            ErrorCode::TOKEN_DECRYPT,
        ),
        (
            "renew with a tampered token",
            'm',
            json!({"type":"renew_token","token": tamper(&token(APP, "mallory", None), 30, 1)}),
            ErrorCode::TOKEN_DECRYPT,
        ),
        (
            "renew with a CBC token",
            'm',
            json!({"type":"renew_token","token": cbc_token(APP, "mallory")}),
            ErrorCode::TOKEN_FORMAT,
        ),
        // There is no message to answer, close or steer another session's peer connection: the
        // server's messages sent by a client are malformed.
        (
            "media_answer from a client",
            'm',
            json!({"type":"media_answer","stream_id":"v-cam","kind":"publish","sdp":"v=0\r\n"}),
            ErrorCode::MALFORMED_MESSAGE,
        ),
        (
            "media_state from a client",
            'm',
            json!({"type":"media_state","stream_id":"v-cam","kind":"publish","state":"closed","code":0,"message":""}),
            ErrorCode::MALFORMED_MESSAGE,
        ),
        (
            "ICE candidate message",
            'm',
            json!({"type":"ice_candidate","stream_id":"v-cam","candidate":"candidate:1 1 udp 1 127.0.0.1 9 typ host"}),
            ErrorCode::MALFORMED_MESSAGE,
        ),
        (
            "media close message",
            'm',
            json!({"type":"media_close","stream_id":"v-cam","kind":"play"}),
            ErrorCode::MALFORMED_MESSAGE,
        ),
        (
            "kicked from a client",
            'm',
            json!({"type":"kicked","code":1002055,"message":"bye"}),
            ErrorCode::MALFORMED_MESSAGE,
        ),
        (
            "stream_update from a client",
            'n',
            json!({"type":"stream_update","room_id":"r1","update_type":"Delete","streams":[]}),
            ErrorCode::MALFORMED_MESSAGE,
        ),
        (
            "media offer with an unknown kind",
            'm',
            json!({"type":"media_offer","stream_id":"v-cam","kind":"answer","sdp":"v=0\r\n"}),
            ErrorCode::MALFORMED_MESSAGE,
        ),
        (
            "log in again on a logged-in connection, as the victim",
            'm',
            {
                // With a valid AppSign answer for the victim on this connection's nonce.
                let auth = m.sign(APP, APP, "r1", "victim");
                serde_json::to_value(ClientMsg::Login(Login {
                    seq: 0,
                    auth,
                    ..base.clone()
                }))
                .unwrap()
            },
            ErrorCode::ALREADY_LOGGED_IN,
        ),
        // Malformed and bad fields.
        (
            "publish without stream_id",
            'm',
            json!({"type":"publish"}),
            ErrorCode::MALFORMED_MESSAGE,
        ),
        (
            "stream_id of the wrong type",
            'm',
            json!({"type":"publish","stream_id":5}),
            ErrorCode::MALFORMED_MESSAGE,
        ),
        (
            "sdp of the wrong type",
            'm',
            json!({"type":"media_offer","stream_id":"m-cam","kind":"publish","sdp":1}),
            ErrorCode::MALFORMED_MESSAGE,
        ),
        (
            "unknown type",
            'm',
            json!({"type":"become_admin"}),
            ErrorCode::MALFORMED_MESSAGE,
        ),
        (
            "no type",
            'm',
            json!({"stream_id":"v-cam"}),
            ErrorCode::MALFORMED_MESSAGE,
        ),
        (
            "stream ID with a space",
            'm',
            json!({"type":"play","stream_id":"v cam"}),
            ErrorCode::STREAM_ID_INVALID_CHARACTER,
        ),
        (
            "stream ID with a path",
            'm',
            json!({"type":"unpublish","stream_id":"../v-cam"}),
            ErrorCode::STREAM_ID_INVALID_CHARACTER,
        ),
        (
            "stream ID with a control character",
            'm',
            json!({"type":"play","stream_id":"v-cam\u{0}"}),
            ErrorCode::STREAM_ID_INVALID_CHARACTER,
        ),
        (
            "empty stream ID",
            'm',
            json!({"type":"unpublish","stream_id":""}),
            ErrorCode::STREAM_ID_EMPTY,
        ),
        (
            "stream ID too long",
            'm',
            json!({"type":"publish","stream_id":"s".repeat(257)}),
            ErrorCode::STREAM_ID_TOO_LONG,
        ),
        (
            "extra info too long",
            'm',
            json!({"type":"publish","stream_id":"m-cam","extra_info":"x".repeat(1025)}),
            ErrorCode::EXTRA_INFO_TOO_LONG,
        ),
    ];
    for (name, who, req, expected) in table {
        let c = match who {
            'm' => &mut m,
            'q' => &mut q,
            'n' => &mut n,
            _ => &mut o,
        };
        let reply = c.request_json(req).await;
        assert_eq!(code_of(&reply), expected, "{name}: {reply:?}");
        w.untouched(name).await;
    }

    // Messages whose seq cannot be read are answered without one.
    let seqless = [
        "{".to_string(),
        "[1,2]".into(),
        "null".into(),
        "\"publish\"".into(),
        r#"{"type":"publish","stream_id":"m-cam"}"#.into(),
        r#"{"type":"publish","seq":-1,"stream_id":"m-cam"}"#.into(),
        r#"{"type":"publish","seq":4294967296,"stream_id":"m-cam"}"#.into(),
        r#"{"type":"publish","seq":"1","stream_id":"m-cam"}"#.into(),
        format!("{}{}", "[".repeat(30_000), "]".repeat(30_000)),
        "{\"type\":\"ping\",\"seq\":1".into(),
    ];
    for text in seqless {
        let name = format!("malformed: {}", &text[..text.len().min(40)]);
        m.send_raw(text).await;
        let reply = m.reply(None).await;
        assert_eq!(code_of(&reply), ErrorCode::MALFORMED_MESSAGE, "{name}: {reply:?}");
        w.untouched(&name).await;
    }
    m.ws.send(Message::binary(vec![0u8, 1, 2])).await.unwrap();
    assert_eq!(code_of(&m.reply(None).await), ErrorCode::MALFORMED_MESSAGE);
    w.untouched("binary frame").await;

    // ----- allowed, but confined to the attacker's own room and app -----
    // A `room_id` in a request is not part of it: the request acts on the connection's room.
    let reply = m
        .request_json(json!({"type":"publish","stream_id":"m-cam","room_id":"r1"}))
        .await;
    assert!(matches!(reply, ServerMsg::Ok { .. }), "{reply:?}");
    w.untouched("publish naming the victim's room lands in the attacker's")
        .await;
    assert_eq!(
        w.server
            .state()
            .room(app_id(APP), &room_id("r3"))
            .unwrap()
            .streams
            .iter()
            .map(|s| s.stream_id.as_str())
            .collect::<Vec<_>>(),
        vec!["m-cam"]
    );
    // Stopping a play one does not have is a no-op (the victim still plays x-cam: below).
    o.ok_json(json!({"type":"stop_play","stream_id":"x-cam"})).await;
    m.ok_json(json!({"type":"stop_play","stream_id":"x-cam"})).await;
    w.untouched("stop_play of a stream the victim plays").await;
    // Playing is per AppID: the other app's attacker does not see the victim's stream.
    o.ok_json(json!({"type":"play","stream_id":"v-cam"})).await;
    assert_eq!(
        o.barrier().await,
        vec![ServerMsg::PlayUpdate {
            stream_id: sid("v-cam"),
            available: false
        }]
    );
    w.untouched("playing a stream ID of another AppID").await;
    // A resume with the victim's session and key by another user is a new session of that user.
    let mut r = Client::connect(&w.server).await;
    let mut l = r.login_msg(APP, "r3", "mallory2", true);
    l.resume = resume_of(&v_ok);
    match r.request(ClientMsg::Login(l)).await {
        ServerMsg::LoginOk(ok) => {
            assert!(!ok.resumed);
            assert_ne!(ok.session_id, v_ok.session_id);
        }
        other => panic!("{other:?}"),
    }
    w.untouched("resume of the victim's session by another user")
        .await;
    // A logout naming the victim's room ends the attacker's own session only.
    let (mut l, _) = logged_in(&w.server, APP, "r3", "lou", None).await;
    let seq = l.next_seq();
    l.send_raw(json!({"type":"logout","seq":seq,"room_id":"r1"}).to_string())
        .await;
    let (msgs, _) = l.until_closed().await;
    assert_eq!(msgs, vec![ServerMsg::Ok { seq }]);
    w.untouched("logout naming the victim's room").await;
    // An oversized message closes the sender's connection only.
    let (mut big, _) = logged_in(&w.server, APP, "r3", "olga", None).await;
    big.send_raw(format!(
        r#"{{"type":"publish","seq":1,"stream_id":"v-cam","extra_info":"{}"}}"#,
        "x".repeat(huddle_proto::MAX_MESSAGE_BYTES)
    ))
    .await;
    assert_eq!(code_of(&big.recv().await), ErrorCode::MESSAGE_TOO_LARGE);
    w.untouched("oversized message").await;

    // ----- the victims still work -----
    let cases = w.cases;
    let (mut x, _) = logged_in(&w.server, APP, "r9", "xavier", None).await;
    x.ok_json(json!({"type":"publish","stream_id":"x-cam"})).await;
    let (_, v) = &mut w.victims[0];
    assert_eq!(
        v.barrier().await,
        vec![ServerMsg::PlayUpdate {
            stream_id: sid("x-cam"),
            available: true
        }]
    );
    let (mut p, _) = logged_in(&w.server, APP, "r8", "paul", None).await;
    p.ok_json(json!({"type":"play","stream_id":"v-cam"})).await;
    assert_eq!(
        p.barrier().await,
        vec![ServerMsg::PlayUpdate {
            stream_id: sid("v-cam"),
            available: true
        }]
    );
    for (_, v) in &mut w.victims {
        let seq = v.next_seq();
        v.send(&ClientMsg::Logout { seq }).await;
        assert_eq!(v.reply(Some(seq)).await, ServerMsg::Ok { seq });
    }
    eprintln!("auth matrix: {cases} cases, each refused or confined, no victim touched");
    assert!(cases > 80, "{cases}");
}
