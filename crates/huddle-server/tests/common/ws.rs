//! A raw signaling client over a real WebSocket on 127.0.0.1 (tokio-tungstenite), for the tests
//! that speak the protocol message by message (`tests/signaling.rs`, `tests/token_expiry.rs`,
//! `tests/auth_matrix.rs`), and the messages they expect, built from short names.
//!
//! Waiting is done on messages with timeouts, not with fixed sleeps. To prove that a session did
//! *not* get a message, [`Client::barrier`] sends a `ping` and collects what arrives before its
//! `pong`: the server queues every event of an operation before it answers the operation, so an
//! event that was not before the pong was never sent.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use huddle_proto::{
    AppId, Auth, ClientMsg, DeviceState, ErrorCode, Login, LoginOk, PROTOCOL_VERSION, Resume, RoomId,
    ServerMsg, StreamInfo, UpdateType, User, UserId,
};
use huddle_server::{AppConfig, BackgroundServer, ServerConfig, test_app};
use huddle_token::{Cipher, Privileges, TokenBuilder};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub use super::{APP, sid};

/// A second app of the servers of [`server_with`].
pub const OTHER_APP: u32 = 22;

/// How long a client waits for the next message: longer than any token of these tests lives.
pub const WAIT: Duration = Duration::from_secs(6);

/// A server of the test config with the apps [`APP`] and [`OTHER_APP`], changed by `f`.
pub fn server_with(f: impl FnOnce(&mut ServerConfig)) -> BackgroundServer {
    let mut config = ServerConfig::for_tests(vec![test_app(APP), test_app(OTHER_APP)]);
    f(&mut config);
    BackgroundServer::start(config).unwrap()
}

pub fn server() -> BackgroundServer {
    server_with(|_| {})
}

pub fn app(n: u32) -> AppConfig {
    test_app(n)
}

pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A GCM token of `app_id` for `user` that lives `secs` seconds from now.
pub fn token_for(app_id: u32, user: &str, secs: i64, privileges: Option<&Privileges>) -> String {
    let mut b = TokenBuilder::new(app_id, user, app(app_id).server_secret.as_str()).effective_secs(secs);
    if let Some(p) = privileges {
        b = b.privileges(p);
    }
    b.build().unwrap()
}

/// A GCM token of `app_id` for `user` that lives an hour.
pub fn token(app_id: u32, user: &str, privileges: Option<&Privileges>) -> String {
    token_for(app_id, user, 3600, privileges)
}

/// A GCM token of `app_id` for `user` made at `ctime` (Unix seconds) and living `secs` seconds
/// from then: one already expired, with a `ctime` in the past.
pub fn token_made_at(app_id: u32, user: &str, ctime: i64, secs: i64) -> String {
    TokenBuilder::new(app_id, user, app(app_id).server_secret.as_str())
        .ctime(ctime)
        .effective_secs(secs)
        .build()
        .unwrap()
}

/// A token of `app_id` for `user` in the legacy CBC format, living an hour.
pub fn cbc_token(app_id: u32, user: &str) -> String {
    TokenBuilder::new(app_id, user, app(app_id).server_secret.as_str())
        .cipher(Cipher::Cbc)
        .effective_secs(3600)
        .build()
        .unwrap()
}

/// Token privileges for the room `r` only.
pub fn room_only(r: &str) -> Privileges {
    Privileges {
        room_id: r.into(),
        ..Default::default()
    }
}

/// Token privileges that refuse the login.
pub fn no_login() -> Privileges {
    Privileges {
        login: Some(false),
        ..Default::default()
    }
}

/// Token privileges that refuse publishing.
pub fn no_publish() -> Privileges {
    Privileges {
        publish: Some(false),
        ..Default::default()
    }
}

/// The `resume` of a login that resumes the session of `ok`.
pub fn resume_of(ok: &LoginOk) -> Option<Resume> {
    Some(Resume {
        session_id: ok.session_id.clone(),
        resume_key: ok.resume_key.clone(),
    })
}

pub fn user(u: &str) -> User {
    User::new(UserId::new(u).unwrap())
}

/// Stream `s` of user `u`, as [`Client::publish`] publishes it.
pub fn info(u: &str, s: &str) -> StreamInfo {
    StreamInfo {
        user_id: UserId::new(u).unwrap(),
        user_name: huddle_proto::UserName::new(u).unwrap(),
        stream_id: sid(s),
        extra_info: format!("x-{s}"),
        mic_state: DeviceState::Open,
        camera_state: DeviceState::Open,
    }
}

pub fn users(room: &str, t: UpdateType, u: &[&str]) -> ServerMsg {
    ServerMsg::UserUpdate {
        room_id: RoomId::new(room).unwrap(),
        update_type: t,
        users: u.iter().map(|u| user(u)).collect(),
    }
}

/// A `stream_update` of (user, stream) pairs.
pub fn streams(room: &str, t: UpdateType, s: &[(&str, &str)]) -> ServerMsg {
    ServerMsg::StreamUpdate {
        room_id: RoomId::new(room).unwrap(),
        update_type: t,
        streams: s.iter().map(|(u, s)| info(u, s)).collect(),
    }
}

pub fn play_update(s: &str, available: bool) -> ServerMsg {
    ServerMsg::PlayUpdate {
        stream_id: sid(s),
        available,
    }
}

pub fn expect_login_ok(m: ServerMsg) -> LoginOk {
    match m {
        ServerMsg::LoginOk(ok) => ok,
        other => panic!("expected login_ok, got {other:?}"),
    }
}

pub fn assert_ok(m: ServerMsg) {
    assert!(matches!(m, ServerMsg::Ok { .. }), "expected ok, got {m:?}");
}

pub fn code_of(m: &ServerMsg) -> ErrorCode {
    match m {
        ServerMsg::Error { code, .. } => *code,
        other => panic!("expected an error, got {other:?}"),
    }
}

/// How a connection ended.
#[derive(Debug, PartialEq)]
pub enum End {
    /// A close frame with this code.
    Close(u16),
    /// The TCP stream ended or broke without a close frame.
    Gone,
}

/// A raw signaling client.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The challenge of the connection's `hello`.
    pub nonce: String,
    pub seq: u32,
}

impl Client {
    /// Connects and reads the `hello`.
    pub async fn connect(server: &BackgroundServer) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(server.ws_url()).await.unwrap();
        let mut c = Client {
            ws,
            nonce: String::new(),
            seq: 100,
        };
        match c.recv().await {
            ServerMsg::Hello {
                protocol,
                nonce,
                server_time_ms,
            } => {
                assert_eq!(protocol, PROTOCOL_VERSION);
                assert_eq!(nonce.len(), 32);
                assert!(server_time_ms > 1_600_000_000_000);
                c.nonce = nonce;
            }
            other => panic!("expected hello, got {other:?}"),
        }
        c
    }

    pub fn next_seq(&mut self) -> u32 {
        self.seq += 1;
        self.seq
    }

    pub async fn send(&mut self, msg: &ClientMsg) {
        self.send_raw(msg.encode()).await;
    }

    pub async fn send_raw(&mut self, text: String) {
        self.ws.send(Message::text(text)).await.unwrap();
    }

    /// The next message, or `Err` with how the connection ended. The room's online user count
    /// (after every login, then every 30 s) is skipped: tests of it read it in
    /// `registry/tests/im.rs` and `cluster.rs`.
    pub async fn try_recv(&mut self) -> Result<ServerMsg, End> {
        loop {
            let item = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for a message");
            match item {
                Some(Ok(Message::Text(t))) => match ServerMsg::decode(t.as_str()).unwrap() {
                    ServerMsg::RoomOnlineUserCount { .. } => continue,
                    m => return Ok(m),
                },
                Some(Ok(Message::Close(frame))) => {
                    return Err(End::Close(frame.map_or(1005, |f| u16::from(f.code))));
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Err(End::Gone),
            }
        }
    }

    pub async fn recv(&mut self) -> ServerMsg {
        match self.try_recv().await {
            Ok(m) => m,
            Err(end) => panic!("connection ended: {end:?}"),
        }
    }

    /// Reads until the connection ends; returns the messages before the end.
    pub async fn until_closed(&mut self) -> (Vec<ServerMsg>, End) {
        let mut msgs = Vec::new();
        loop {
            match self.try_recv().await {
                Ok(m) => msgs.push(m),
                Err(end) => return (msgs, end),
            }
        }
    }

    /// Pings and returns what arrived before the pong (see the module documentation).
    pub async fn barrier(&mut self) -> Vec<ServerMsg> {
        let seq = self.next_seq();
        self.send(&ClientMsg::Ping { seq }).await;
        let mut before = Vec::new();
        loop {
            match self.recv().await {
                ServerMsg::Pong {
                    seq: s,
                    server_time_ms,
                } if s == seq => {
                    assert!(server_time_ms > 0);
                    return before;
                }
                m => before.push(m),
            }
        }
    }

    /// Waits for the reply to request `seq` (`None`: an error without `seq`), skipping events
    /// and the replies to other requests.
    pub async fn reply(&mut self, seq: Option<u32>) -> ServerMsg {
        loop {
            let m = self.recv().await;
            let s = match &m {
                ServerMsg::Ok { seq }
                | ServerMsg::MessageSent { seq, .. }
                | ServerMsg::Pong { seq, .. }
                | ServerMsg::MediaAnswer { seq, .. } => Some(*seq),
                ServerMsg::LoginOk(ok) => Some(ok.seq),
                ServerMsg::Error { seq, .. } => *seq,
                _ => continue,
            };
            if s == seq {
                return m;
            }
        }
    }

    /// Sends a request and returns its reply, skipping events.
    pub async fn request(&mut self, msg: ClientMsg) -> ServerMsg {
        let seq = msg.seq();
        self.send(&msg).await;
        self.reply(Some(seq)).await
    }

    /// Sends a JSON object with a fresh `seq` added and returns the reply.
    pub async fn request_json(&mut self, mut v: Value) -> ServerMsg {
        let seq = self.next_seq();
        v["seq"] = json!(seq);
        self.send_raw(v.to_string()).await;
        self.reply(Some(seq)).await
    }

    /// Sends a JSON request (as [`Self::request_json`]) and asserts that it is answered `ok`.
    pub async fn ok_json(&mut self, v: Value) {
        assert_ok(self.request_json(v).await);
    }

    /// The AppSign answer with `sign_app`'s AppSign over `app`, `room`, `user` and the nonce.
    pub fn sign(&self, sign_app: u32, app_id: u32, room: &str, user: &str) -> Auth {
        Auth::Sign(huddle_token::sign_challenge(
            &app(sign_app).app_sign,
            app_id,
            room,
            user,
            &self.nonce,
        ))
    }

    /// A login to `room` of `app_id` with the app's AppSign answer for this connection's nonce.
    pub fn login_msg(&mut self, app_id: u32, room: &str, user_id: &str, notify: bool) -> Login {
        Login {
            seq: self.next_seq(),
            protocol: PROTOCOL_VERSION,
            app_id: AppId::new(app_id).unwrap(),
            room_id: RoomId::new(room).unwrap(),
            user: user(user_id),
            auth: self.sign(app_id, app_id, room, user_id),
            user_status_notify: notify,
            max_member_count: 0,
            resume: None,
            setup_active: true,
        }
    }

    /// Logs in and returns the reply (`login_ok` or `error`).
    pub async fn try_login(&mut self, login: Login) -> ServerMsg {
        self.request(ClientMsg::Login(login)).await
    }

    /// Logs in to `room` of [`APP`] with the AppSign.
    pub async fn login(&mut self, room: &str, user_id: &str, notify: bool) -> LoginOk {
        let l = self.login_msg(APP, room, user_id, notify);
        expect_login_ok(self.try_login(l).await)
    }

    /// Logs in to `room` of [`APP`] with `token` (and user updates).
    pub async fn login_token(&mut self, room: &str, user_id: &str, token: String) -> LoginOk {
        let l = Login {
            auth: Auth::Token(token),
            ..self.login_msg(APP, room, user_id, true)
        };
        expect_login_ok(self.try_login(l).await)
    }

    /// Publishes `stream` with the extra info `x-{stream}` (see [`info`]).
    pub async fn publish(&mut self, stream: &str) -> ServerMsg {
        let seq = self.next_seq();
        self.request(ClientMsg::Publish {
            seq,
            stream_id: sid(stream),
            extra_info: format!("x-{stream}"),
        })
        .await
    }

    pub async fn unpublish(&mut self, stream: &str) -> ServerMsg {
        let seq = self.next_seq();
        self.request(ClientMsg::Unpublish {
            seq,
            stream_id: sid(stream),
        })
        .await
    }

    pub async fn play(&mut self, stream: &str) -> ServerMsg {
        let seq = self.next_seq();
        self.request(ClientMsg::Play {
            seq,
            stream_id: sid(stream),
        })
        .await
    }

    pub async fn stop_play(&mut self, stream: &str) -> ServerMsg {
        let seq = self.next_seq();
        self.request(ClientMsg::StopPlay {
            seq,
            stream_id: sid(stream),
        })
        .await
    }

    pub async fn renew(&mut self, token: String) -> ServerMsg {
        let seq = self.next_seq();
        self.request(ClientMsg::RenewToken { seq, token }).await
    }
}
