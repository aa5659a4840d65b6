//! The session on virtual time: no sockets, no sleeps.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use huddle_proto::{
    AppId, Auth, ClientMsg, DeviceState, ErrorCode, LoginOk, Resume, RoomId, ServerMsg, StreamId, StreamInfo,
    UpdateType, User, UserId,
};
use huddle_token::AppSign;

use super::*;
use crate::event::Event;
use crate::media::{PlaySample, PublishSample};

const APP: u32 = 77;
const SIGN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn user(id: &str) -> User {
    User::new(UserId::new(id).unwrap())
}

fn stream(user_id: &str, stream_id: &str) -> StreamInfo {
    let u = user(user_id);
    StreamInfo {
        user_id: u.user_id,
        user_name: u.user_name,
        stream_id: StreamId::new(stream_id).unwrap(),
        extra_info: String::new(),
        mic_state: DeviceState::Open,
        camera_state: DeviceState::Open,
    }
}

fn sid(s: &str) -> StreamId {
    StreamId::new(s).unwrap()
}

fn timing() -> Timing {
    Timing::from(&EngineConfig::default())
}

fn params(token: Option<String>, timing: Timing) -> SessionParams {
    SessionParams {
        app_id: AppId::new(APP).unwrap(),
        app_sign: Some(Arc::new(SIGN.parse::<AppSign>().unwrap())),
        room_id: RoomId::new("room").unwrap(),
        user: user("me"),
        token,
        user_status_notify: true,
        max_member_count: 0,
        timing,
        media: false,
        quality: false,
        servers: 1,
    }
}

fn unix_ms_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// A session on virtual time, with everything it output.
struct Harness {
    s: Session,
    now: Instant,
    wake: Option<Instant>,
    finished: bool,
}

impl Harness {
    fn new(p: SessionParams) -> (Harness, Vec<Output>) {
        let now = Instant::now();
        let s = Session::new(p, now, unix_ms_now(), 1);
        let mut h = Harness {
            s,
            now,
            wake: None,
            finished: false,
        };
        let out = h.drain();
        (h, out)
    }

    fn drain(&mut self) -> Vec<Output> {
        let mut out = Vec::new();
        loop {
            match self.s.poll_output() {
                Output::Timeout(t) => {
                    self.wake = t;
                    return out;
                }
                Output::Finished => {
                    self.finished = true;
                    self.wake = None;
                    out.push(Output::Finished);
                    return out;
                }
                o => out.push(o),
            }
        }
    }

    fn input(&mut self, input: Input) -> Vec<Output> {
        self.s.handle_input(input, self.now);
        self.drain()
    }

    fn msg(&mut self, m: ServerMsg) -> Vec<Output> {
        self.input(Input::Message(m))
    }

    fn cmd(&mut self, c: Command) -> Vec<Output> {
        self.input(Input::Command(c))
    }

    /// Moves time forward by `d`, firing every timeout on the way.
    fn advance(&mut self, d: Duration) -> Vec<Output> {
        let target = self.now + d;
        let mut out = Vec::new();
        while let Some(w) = self.wake
            && w <= target
        {
            self.now = self.now.max(w);
            out.extend(self.input(Input::Timeout));
        }
        self.now = target;
        out
    }

    /// Connected, hello, login_ok: returns the login sent and the outputs after login_ok.
    fn log_in(&mut self, ok: impl FnOnce(u32) -> LoginOk) -> (huddle_proto::Login, Vec<Output>) {
        assert!(self.input(Input::Connected).is_empty());
        let out = self.msg(ServerMsg::Hello {
            protocol: 1,
            nonce: "n0nce".into(),
            server_time_ms: 0,
        });
        let login = match &sent(&out)[..] {
            [ClientMsg::Login(l)] => l.clone(),
            other => panic!("expected a login, got {other:?}"),
        };
        let out = self.msg(ServerMsg::LoginOk(ok(login.seq)));
        (login, out)
    }

    /// A login the server refuses: connected, the `hello`, and an `error` with `code` answering
    /// the login; returns the outputs of the refusal.
    fn refused_login(&mut self, code: ErrorCode) -> Vec<Output> {
        self.input(Input::Connected);
        let out = self.msg(ServerMsg::Hello {
            protocol: 1,
            nonce: "x".into(),
            server_time_ms: 0,
        });
        self.msg(ServerMsg::Error {
            seq: Some(sent(&out)[0].seq()),
            code,
            message: "refused".into(),
        })
    }
}

fn login_ok(seq: u32, resumed: bool, users: Vec<User>, streams: Vec<StreamInfo>) -> LoginOk {
    LoginOk {
        seq,
        session_id: "sess-1".into(),
        resume_key: "key-1".into(),
        room_id: RoomId::new("room").unwrap(),
        resumed,
        users,
        streams,
        heartbeat_ms: 1000,
        session_timeout_ms: 3000,
        grace_ms: 5000,
        token_expire: None,
        ice_servers: Vec::new(),
    }
}

fn sent(out: &[Output]) -> Vec<ClientMsg> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send(m) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

fn seq_of(out: &[Output], pred: impl Fn(&ClientMsg) -> bool) -> u32 {
    sent(out)
        .into_iter()
        .find(|m| pred(m))
        .map(|m| m.seq())
        .expect("no such message sent")
}

/// The events in a compact form. Checks that each room state change is followed by the matching
/// state update (and leaves the update out).
fn evs(out: &[Output]) -> Vec<String> {
    let events: Vec<&Event> = out
        .iter()
        .filter_map(|o| match o {
            Output::Event(e) => Some(e),
            _ => None,
        })
        .collect();
    let mut v = Vec::new();
    let mut i = 0;
    while i < events.len() {
        match events[i] {
            Event::RoomStateChanged {
                reason, error_code, ..
            } => {
                match events.get(i + 1) {
                    Some(Event::RoomStateUpdate {
                        state, error_code: c, ..
                    }) => {
                        assert_eq!(
                            (*state, *c),
                            (reason.state(), *error_code),
                            "state update after {reason:?}"
                        );
                    }
                    other => panic!("no state update after {reason:?}: {other:?}"),
                }
                v.push(format!("room {reason:?} {error_code}"));
                i += 1;
            }
            Event::RoomStateUpdate { .. } => panic!("a state update without a state change"),
            Event::RoomUserUpdate {
                update_type, users, ..
            } => {
                let ids: Vec<&str> = users.iter().map(|u| u.user_id.as_str()).collect();
                v.push(format!("users {update_type:?} {}", ids.join(",")));
            }
            Event::RoomStreamUpdate {
                update_type, streams, ..
            } => {
                let ids: Vec<&str> = streams.iter().map(|s| s.stream_id.as_str()).collect();
                v.push(format!("streams {update_type:?} {}", ids.join(",")));
            }
            Event::PublisherStateUpdate {
                stream_id,
                state,
                error_code,
                ..
            } => v.push(format!("pub {stream_id} {state:?} {error_code}")),
            Event::PlayerStateUpdate {
                stream_id,
                state,
                error_code,
                ..
            } => v.push(format!("play {stream_id} {state:?} {error_code}")),
            Event::RoomTokenWillExpire { remain_secs, .. } => v.push(format!("token {remain_secs}")),
            Event::DebugError {
                error_code,
                func_name,
                ..
            } => v.push(format!("debug {func_name} {error_code}")),
            other => v.push(format!("{other:?}")),
        }
        i += 1;
    }
    v
}

fn connects(out: &[Output]) -> usize {
    out.iter().filter(|o| matches!(o, Output::Connect { .. })).count()
}

fn position(out: &[Output], pred: impl Fn(&Output) -> bool) -> usize {
    out.iter().position(pred).expect("no such output")
}

/// Logged in, publishing `mine` (registered) and playing `theirs` (available).
fn online_with_streams() -> Harness {
    let (mut h, _) = Harness::new(params(None, timing()));
    h.log_in(|seq| {
        login_ok(
            seq,
            false,
            vec![user("bob"), user("carol")],
            vec![stream("bob", "theirs")],
        )
    });
    let out = h.cmd(Command::Publish {
        stream_id: sid("mine"),
        ticket: 1,
    });
    let publish = seq_of(&out, |m| matches!(m, ClientMsg::Publish { .. }));
    h.msg(ServerMsg::Ok { seq: publish });
    h.cmd(Command::Play {
        stream_id: sid("theirs"),
    });
    let out = h.msg(ServerMsg::PlayUpdate {
        stream_id: sid("theirs"),
        available: true,
    });
    assert_eq!(evs(&out), ["play theirs Playing 0"]);
    h
}

#[test]
fn login_answers_the_challenge_and_reports_the_room() {
    let (mut h, out) = Harness::new(params(None, timing()));
    assert_eq!(evs(&out), ["room Logining 0"]);
    assert_eq!(connects(&out), 1);
    let (login, out) = h.log_in(|seq| {
        login_ok(
            seq,
            false,
            vec![user("bob"), user("me")],
            vec![stream("bob", "bob-cam"), stream("me", "old")],
        )
    });
    let expected = huddle_token::sign_challenge(&SIGN.parse().unwrap(), APP, "room", "me", "n0nce");
    assert_eq!(login.auth, Auth::Sign(expected));
    assert_eq!(login.resume, None);
    assert!(login.user_status_notify);
    // The user's own entries are not reported.
    assert_eq!(
        evs(&out),
        ["room Logined 0", "users Add bob", "streams Add bob-cam"]
    );
    assert!(!h.finished);
}

#[test]
fn users_are_not_reported_without_user_status_notify() {
    let mut p = params(None, timing());
    p.user_status_notify = false;
    let (mut h, _) = Harness::new(p);
    let (login, out) = h.log_in(|seq| login_ok(seq, false, vec![user("bob")], vec![]));
    assert!(!login.user_status_notify);
    assert_eq!(evs(&out), ["room Logined 0"]);
    let out = h.msg(ServerMsg::UserUpdate {
        room_id: RoomId::new("room").unwrap(),
        update_type: UpdateType::Add,
        users: vec![user("carol")],
    });
    assert!(evs(&out).is_empty());
}

#[test]
fn calls_while_logging_in_go_out_after_login() {
    let (mut h, _) = Harness::new(params(None, timing()));
    let out = h.cmd(Command::Publish {
        stream_id: sid("mine"),
        ticket: 1,
    });
    assert_eq!(evs(&out), ["pub mine PublishRequesting 0"]);
    assert!(sent(&out).is_empty());
    let out = h.cmd(Command::Play {
        stream_id: sid("theirs"),
    });
    assert_eq!(evs(&out), ["play theirs PlayRequesting 0"]);
    let (_, out) = h.log_in(|seq| login_ok(seq, false, vec![], vec![]));
    let msgs = sent(&out);
    assert!(
        matches!(&msgs[..], [ClientMsg::Publish { .. }, ClientMsg::Play { .. }]),
        "{msgs:?}"
    );
    let out = h.msg(ServerMsg::Ok { seq: msgs[0].seq() });
    assert_eq!(evs(&out), ["pub mine Publishing 0"]);
    let out = h.msg(ServerMsg::Ok { seq: msgs[1].seq() });
    assert!(evs(&out).is_empty(), "play waits for play_update");
    let out = h.msg(ServerMsg::PlayUpdate {
        stream_id: sid("theirs"),
        available: false,
    });
    assert!(evs(&out).is_empty());
    let out = h.msg(ServerMsg::PlayUpdate {
        stream_id: sid("theirs"),
        available: true,
    });
    assert_eq!(evs(&out), ["play theirs Playing 0"]);
    let out = h.msg(ServerMsg::PlayUpdate {
        stream_id: sid("theirs"),
        available: false,
    });
    assert_eq!(evs(&out), ["play theirs PlayRequesting 0"]);
    // Idempotent calls change nothing.
    assert!(
        h.cmd(Command::Play {
            stream_id: sid("theirs")
        })
        .is_empty()
    );
    assert!(
        h.cmd(Command::Publish {
            stream_id: sid("mine"),
            ticket: 2
        })
        .is_empty()
    );
}

#[test]
fn a_refused_publish_releases_the_publisher_before_reporting() {
    let (mut h, _) = Harness::new(params(None, timing()));
    h.log_in(|seq| login_ok(seq, false, vec![], vec![]));
    let out = h.cmd(Command::Publish {
        stream_id: sid("taken"),
        ticket: 9,
    });
    let seq = seq_of(&out, |m| matches!(m, ClientMsg::Publish { .. }));
    let out = h.msg(ServerMsg::Error {
        seq: Some(seq),
        code: ErrorCode::STREAM_ID_EXISTS,
        message: "taken".into(),
    });
    assert_eq!(evs(&out), ["pub taken NoPublish 1003028"]);
    let release = position(&out, |o| {
        matches!(o, Output::Release(Release::Publisher { ticket: 9 }))
    });
    let event = position(&out, |o| matches!(o, Output::Event(_)));
    assert!(release < event);
    // A refused play stops the player.
    let out = h.cmd(Command::Play {
        stream_id: sid("many"),
    });
    let seq = seq_of(&out, |m| matches!(m, ClientMsg::Play { .. }));
    let out = h.msg(ServerMsg::Error {
        seq: Some(seq),
        code: ErrorCode::TOO_MANY_PLAYS,
        message: String::new(),
    });
    assert_eq!(evs(&out), ["play many NoPlay 1004030"]);
}

#[test]
fn a_refused_login_fails_with_the_code() {
    let (mut h, _) = Harness::new(params(None, timing()));
    h.cmd(Command::Publish {
        stream_id: sid("mine"),
        ticket: 1,
    });
    let out = h.refused_login(ErrorCode::APP_SIGN_INCORRECT);
    assert_eq!(
        evs(&out),
        ["room LoginFailed 1001005", "pub mine NoPublish 1001005"]
    );
    assert!(matches!(out[0], Output::Release(Release::Room)));
    assert!(matches!(out.last(), Some(Output::Finished)));
    assert!(h.finished);
}

#[test]
fn first_login_retries_with_backoff_then_fails_with_connect_failed() {
    let (mut h, _) = Harness::new(params(None, timing()));
    let start = h.now;
    let mut attempts = vec![start];
    let mut out = h.input(Input::ConnectFailed("refused".into()));
    while !h.finished {
        if connects(&out) > 0 {
            attempts.push(h.now);
            out = h.input(Input::ConnectFailed("refused".into()));
        } else {
            out = h.advance(Duration::from_millis(10));
        }
    }
    assert_eq!(evs(&out), ["room LoginFailed 1002030"]);
    assert_eq!(h.now.duration_since(start).as_secs(), 10);
    let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps[0] >= Duration::from_millis(180) && gaps[0] <= Duration::from_millis(330),
        "{gaps:?}"
    );
    assert!(gaps[1] > gaps[0] && gaps[2] > gaps[1], "backoff grows: {gaps:?}");
    assert!(gaps.iter().all(|g| *g <= Duration::from_millis(6260)), "{gaps:?}");
}

#[test]
fn first_login_without_an_answer_fails_with_login_timeout() {
    let (mut h, _) = Harness::new(params(None, timing()));
    h.input(Input::Connected);
    h.msg(ServerMsg::Hello {
        protocol: 1,
        nonce: "x".into(),
        server_time_ms: 0,
    });
    // The attempt times out after 5 s and is retried; the login gives up at 10 s.
    let out = h.advance(Duration::from_secs(5));
    assert!(matches!(out[..], [Output::Close]), "{out:?}");
    let out = h.advance(Duration::from_secs(5));
    assert_eq!(connects(&out), 1, "retried after the backoff delay");
    assert_eq!(evs(&out), ["room LoginFailed 1002031"]);
    assert!(h.finished);
}

#[test]
fn heartbeat_keeps_the_connection_and_silence_breaks_it() {
    let mut h = online_with_streams();
    let out = h.advance(Duration::from_millis(1000));
    let ping = seq_of(&out, |m| matches!(m, ClientMsg::Ping { .. }));
    h.msg(ServerMsg::Pong {
        seq: ping,
        server_time_ms: 0,
    });
    let out = h.advance(Duration::from_millis(2900));
    assert!(evs(&out).is_empty(), "the pong kept it alive");
    assert_eq!(sent(&out).len(), 2, "{out:?}");
    // No answer for 3 s (the session timeout): broken.
    let out = h.advance(Duration::from_millis(200));
    assert_eq!(
        evs(&out),
        [
            "room Reconnecting 1002051",
            "pub mine PublishRequesting 1003020",
            "play theirs PlayRequesting 1004020"
        ]
    );
    assert!(matches!(out[0], Output::Close));
    assert_eq!(connects(&out), 1, "the first retry goes out at once");
}

#[test]
fn resume_reports_only_the_differences() {
    let mut h = online_with_streams();
    h.input(Input::Closed("reset".into()));
    // Stopped during the break: reported at once, sent to the resumed session later.
    let out = h.cmd(Command::StopPublish);
    assert_eq!(evs(&out), ["pub mine NoPublish 0"]);
    assert!(sent(&out).is_empty());
    let (login, out) = h.log_in(|seq| {
        login_ok(
            seq,
            true,
            vec![user("bob"), user("dave")],
            vec![stream("bob", "theirs"), stream("dave", "new")],
        )
    });
    assert_eq!(
        login.resume,
        Some(Resume {
            session_id: "sess-1".into(),
            resume_key: "key-1".into()
        })
    );
    assert_eq!(
        evs(&out),
        [
            "room Reconnected 0",
            "users Delete carol",
            "users Add dave",
            "streams Add new"
        ]
    );
    let msgs = sent(&out);
    assert!(
        matches!(&msgs[..], [ClientMsg::Unpublish { .. }, ClientMsg::Play { .. }]),
        "{msgs:?}"
    );
    let out = h.msg(ServerMsg::PlayUpdate {
        stream_id: sid("theirs"),
        available: true,
    });
    assert_eq!(evs(&out), ["play theirs Playing 0"]);
}

#[test]
fn a_resumed_publisher_is_restored_at_once() {
    let mut h = online_with_streams();
    h.input(Input::Closed("reset".into()));
    let (_, out) = h.log_in(|seq| {
        login_ok(
            seq,
            true,
            vec![user("bob"), user("carol")],
            vec![stream("bob", "theirs")],
        )
    });
    assert_eq!(evs(&out), ["room Reconnected 0", "pub mine Publishing 0"]);
    assert!(matches!(&sent(&out)[..], [ClientMsg::Play { .. }]));
}

#[test]
fn a_fresh_session_after_a_break_publishes_and_plays_again() {
    let mut h = online_with_streams();
    h.input(Input::Closed("reset".into()));
    h.cmd(Command::StopPlay {
        stream_id: sid("theirs"),
    });
    h.cmd(Command::Play {
        stream_id: sid("other"),
    });
    let (_, out) = h.log_in(|seq| login_ok(seq, false, vec![user("bob")], vec![]));
    assert_eq!(
        evs(&out),
        [
            "room Reconnected 0",
            "users Delete carol",
            "streams Delete theirs"
        ]
    );
    let msgs = sent(&out);
    assert!(
        matches!(&msgs[..], [ClientMsg::Publish { stream_id: a, .. }, ClientMsg::Play { stream_id: b, .. }]
            if a.as_str() == "mine" && b.as_str() == "other"),
        "no unpublish or stop_play for a fresh session: {msgs:?}"
    );
    let out = h.msg(ServerMsg::Ok { seq: msgs[0].seq() });
    assert_eq!(evs(&out), ["pub mine Publishing 0"]);
}

#[test]
fn reconnecting_gives_up_after_the_budget() {
    let mut t = timing();
    t.reconnect_budget = Duration::from_secs(2);
    let (mut h, _) = Harness::new(params(None, t));
    h.log_in(|seq| login_ok(seq, false, vec![], vec![]));
    h.cmd(Command::Publish {
        stream_id: sid("mine"),
        ticket: 1,
    });
    h.cmd(Command::Play {
        stream_id: sid("theirs"),
    });
    let start = h.now;
    let mut out = h.input(Input::Closed("server gone".into()));
    assert_eq!(evs(&out)[0], "room Reconnecting 1002051");
    let mut tries = 0;
    while !h.finished {
        if connects(&out) > 0 {
            tries += 1;
            out = h.input(Input::ConnectFailed("refused".into()));
        } else {
            out = h.advance(Duration::from_millis(10));
        }
    }
    assert!(tries >= 4, "{tries}");
    assert_eq!(h.now.duration_since(start), Duration::from_secs(2));
    assert_eq!(
        evs(&out),
        [
            "room ReconnectFailed 1002053",
            "pub mine NoPublish 1002053",
            "play theirs NoPlay 1002053"
        ]
    );
    assert!(matches!(out[0], Output::Release(Release::Room)));
}

#[test]
fn reconnect_login_errors_retry_or_end() {
    let mut h = online_with_streams();
    h.input(Input::Closed("reset".into()));
    let out = h.refused_login(ErrorCode::SERVER_BUSY);
    assert!(evs(&out).is_empty(), "busy is retried");
    let out = h.advance(Duration::from_secs(1));
    assert_eq!(connects(&out), 1);
    let out = h.refused_login(ErrorCode::TOKEN_EXPIRED);
    assert_eq!(evs(&out)[0], "room ReconnectFailed 1002078");
    assert!(h.finished);
}

#[test]
fn kicked_ends_without_retry() {
    let mut h = online_with_streams();
    let out = h.msg(ServerMsg::Kicked {
        code: ErrorCode::KICKED_DUPLICATE_LOGIN,
        message: "elsewhere".into(),
    });
    assert_eq!(
        evs(&out),
        [
            "room KickOut 1002050",
            "pub mine NoPublish 1002050",
            "play theirs NoPlay 1002050"
        ]
    );
    assert_eq!(connects(&out), 0);
    assert!(h.finished);
}

#[test]
fn logout_reports_at_once_and_waits_for_the_answer() {
    let mut h = online_with_streams();
    let out = h.cmd(Command::Logout);
    assert_eq!(
        evs(&out),
        ["room Logout 0", "pub mine NoPublish 0", "play theirs NoPlay 0"]
    );
    let seq = seq_of(&out, |m| matches!(m, ClientMsg::Logout { .. }));
    assert!(!h.finished);
    // Nothing else is reported after the logout.
    let out = h.msg(ServerMsg::StreamUpdate {
        room_id: RoomId::new("room").unwrap(),
        update_type: UpdateType::Add,
        streams: vec![stream("bob", "late")],
    });
    assert!(evs(&out).is_empty());
    let out = h.msg(ServerMsg::Ok { seq });
    assert!(matches!(out[..], [Output::Close, Output::Finished]), "{out:?}");

    // Without an answer it ends after the logout timeout; while reconnecting, at once.
    let mut h = online_with_streams();
    h.cmd(Command::Logout);
    let out = h.advance(Duration::from_secs(1));
    assert!(matches!(out.last(), Some(Output::Finished)));
    let mut h = online_with_streams();
    h.input(Input::Closed("reset".into()));
    let out = h.cmd(Command::Logout);
    assert_eq!(evs(&out)[0], "room Logout 0");
    assert!(matches!(out.last(), Some(Output::Finished)));
}

#[test]
fn list_updates_report_changes_only() {
    let (mut h, _) = Harness::new(params(None, timing()));
    h.log_in(|seq| login_ok(seq, false, vec![user("bob")], vec![stream("bob", "s1")]));
    let room = || RoomId::new("room").unwrap();
    let users = |t, ids: &[&str]| ServerMsg::UserUpdate {
        room_id: room(),
        update_type: t,
        users: ids.iter().map(|i| user(i)).collect(),
    };
    assert_eq!(
        evs(&h.msg(users(UpdateType::Add, &["bob", "carol"]))),
        ["users Add carol"]
    );
    assert!(evs(&h.msg(users(UpdateType::Delete, &["zed"]))).is_empty());
    assert_eq!(
        evs(&h.msg(users(UpdateType::Delete, &["bob"]))),
        ["users Delete bob"]
    );
    let streams = |t, s: Vec<StreamInfo>| ServerMsg::StreamUpdate {
        room_id: room(),
        update_type: t,
        streams: s,
    };
    assert!(evs(&h.msg(streams(UpdateType::Add, vec![stream("bob", "s1")]))).is_empty());
    assert_eq!(
        evs(&h.msg(streams(UpdateType::Delete, vec![stream("bob", "s1")]))),
        ["streams Delete s1"]
    );
    let other_room = ServerMsg::StreamUpdate {
        room_id: RoomId::new("elsewhere").unwrap(),
        update_type: UpdateType::Add,
        streams: vec![stream("x", "s9")],
    };
    assert!(evs(&h.msg(other_room)).is_empty());
}

#[test]
fn token_expiry_is_announced_and_renewal_rearms_it() {
    let token = |secs| {
        huddle_token::TokenBuilder::new(APP, "me", SECRET)
            .effective_secs(secs)
            .build()
            .unwrap()
    };
    let (mut h, _) = Harness::new(params(Some(token(60)), timing()));
    let quiet = |seq| LoginOk {
        heartbeat_ms: 600_000,
        session_timeout_ms: 1_800_000,
        ..login_ok(seq, false, vec![], vec![])
    };
    let (login, _) = h.log_in(quiet);
    assert!(matches!(login.auth, Auth::Token(_)));
    let out = h.advance(Duration::from_secs(28));
    assert!(evs(&out).is_empty());
    let out = h.advance(Duration::from_secs(3));
    let e = evs(&out);
    assert!(e == ["token 30"] || e == ["token 29"], "{e:?}");
    // A renewal the server refuses is reported and does not replace the token in force.
    let first = token_of(&h);
    let out = h.cmd(Command::RenewToken { token: token(100) });
    let seq = seq_of(&out, |m| matches!(m, ClientMsg::RenewToken { .. }));
    let out = h.msg(ServerMsg::Error {
        seq: Some(seq),
        code: ErrorCode::TOKEN_USER_ID_MISMATCH,
        message: "?".into(),
    });
    assert_eq!(evs(&out), ["debug renew_token 1002079"]);
    assert_eq!(token_of(&h), first);
    // An accepted one is adopted, and announced again 30 s before its expiry.
    let renewed = token(100);
    let out = h.cmd(Command::RenewToken {
        token: renewed.clone(),
    });
    let seq = seq_of(&out, |m| matches!(m, ClientMsg::RenewToken { .. }));
    assert_eq!(token_of(&h), first, "adopted before the server's answer");
    h.msg(ServerMsg::Ok { seq });
    assert_eq!(token_of(&h), renewed);
    let announced: Vec<String> = evs(&h.advance(Duration::from_secs(75)));
    assert!(announced.iter().any(|e| e.starts_with("token ")), "{announced:?}");
    // The next login uses the renewed token.
    h.input(Input::Closed("reset".into()));
    let (login, _) = h.log_in(|seq| login_ok(seq, true, vec![], vec![]));
    assert_eq!(login.auth, Auth::Token(renewed));
    // A renewal whose answer is lost with the connection is used (and checked) by the next login.
    let lost = token(200);
    h.cmd(Command::RenewToken { token: lost.clone() });
    h.input(Input::Closed("reset".into()));
    let (login, _) = h.log_in(|seq| login_ok(seq, true, vec![], vec![]));
    assert_eq!(login.auth, Auth::Token(lost));
}

/// Renews the token, and the server accepts it.
fn renew(h: &mut Harness, token: String) {
    let out = h.cmd(Command::RenewToken { token });
    let seq = seq_of(&out, |m| matches!(m, ClientMsg::RenewToken { .. }));
    h.msg(ServerMsg::Ok { seq });
}

fn token_of(h: &Harness) -> String {
    h.s.p.token.clone().unwrap()
}

#[test]
fn replies_to_replaced_requests_are_ignored() {
    let (mut h, _) = Harness::new(params(None, timing()));
    h.log_in(|seq| login_ok(seq, false, vec![], vec![]));
    let out = h.cmd(Command::Publish {
        stream_id: sid("a"),
        ticket: 1,
    });
    let first = seq_of(&out, |m| matches!(m, ClientMsg::Publish { .. }));
    let out = h.cmd(Command::StopPublish);
    assert!(matches!(&sent(&out)[..], [ClientMsg::Unpublish { .. }]));
    h.cmd(Command::Publish {
        stream_id: sid("b"),
        ticket: 2,
    });
    let out = h.msg(ServerMsg::Ok { seq: first });
    assert!(evs(&out).is_empty(), "{:?}", evs(&out));
}

#[test]
fn a_renewed_token_already_in_the_warning_window_is_announced_at_once() {
    let token = |secs| {
        huddle_token::TokenBuilder::new(APP, "me", SECRET)
            .effective_secs(secs)
            .build()
            .unwrap()
    };
    let mut t = timing();
    t.token_warning = Duration::from_secs(3600);
    let (mut h, _) = Harness::new(params(Some(token(3000)), t));
    let (_, out) = h.log_in(|seq| login_ok(seq, false, vec![], vec![]));
    assert_eq!(evs(&out), ["room Logined 0"]);
    let out = h.advance(Duration::ZERO);
    assert_eq!(evs(&out), ["token 2999"]);
    renew(&mut h, token(3500));
    let out = h.advance(Duration::ZERO);
    assert_eq!(evs(&out), ["token 3499"]);
    // Renewed with a longer token: announced when its window comes.
    renew(&mut h, token(5000));
    assert!(evs(&h.advance(Duration::ZERO)).is_empty());
    let left = h.s.token_warn_at.unwrap().duration_since(h.now).as_secs();
    assert!((1398..=1400).contains(&left), "{left}");
}

#[test]
fn the_servers_token_warning_stands_in_for_the_local_one_once() {
    let token = |secs| {
        huddle_token::TokenBuilder::new(APP, "me", SECRET)
            .effective_secs(secs)
            .build()
            .unwrap()
    };
    let t = token(100);
    let expire = huddle_token::peek_expire(&t).unwrap();
    let (mut h, _) = Harness::new(params(Some(t), timing()));
    let quiet = |seq| LoginOk {
        heartbeat_ms: 600_000,
        session_timeout_ms: 1_800_000,
        ..login_ok(seq, false, vec![], vec![])
    };
    h.log_in(quiet);
    // A warning for another token is stale; the server's for this one comes before the local
    // timer (a client clock behind the server's) and replaces it.
    let warn = |expire| ServerMsg::TokenWillExpire {
        expire,
        remain_secs: 30,
    };
    assert!(evs(&h.msg(warn(expire - 50))).is_empty());
    assert_eq!(evs(&h.msg(warn(expire))), ["token 30"]);
    assert!(evs(&h.msg(warn(expire))).is_empty());
    assert!(evs(&h.advance(Duration::from_secs(90))).is_empty());
    // A renewal re-arms both.
    let t = token(40);
    let expire = huddle_token::peek_expire(&t).unwrap();
    renew(&mut h, t);
    let out = h.advance(Duration::ZERO);
    assert_eq!(evs(&out).len(), 1, "{:?}", evs(&out));
    assert!(evs(&h.msg(warn(expire))).is_empty());
    // The end of the session comes as a kick with its code.
    let out = h.msg(ServerMsg::Kicked {
        code: ErrorCode::KICKED_TOKEN_EXPIRED,
        message: "expired".into(),
    });
    assert_eq!(evs(&out)[0], "room KickOut 1002056");
}

// ----- media plane -----

fn media_params() -> SessionParams {
    let mut p = params(None, timing());
    p.media = true;
    p
}

/// The `MediaOpen` outputs as (seq, stream, kind).
fn opens(out: &[Output]) -> Vec<(u32, String, MediaRole)> {
    out.iter()
        .filter_map(|o| match o {
            Output::MediaOpen { seq, stream_id, kind } => Some((*seq, stream_id.to_string(), *kind)),
            _ => None,
        })
        .collect()
}

fn closes(out: &[Output]) -> Vec<(String, MediaRole)> {
    out.iter()
        .filter_map(|o| match o {
            Output::MediaClose { stream_id, kind } => Some((stream_id.to_string(), *kind)),
            _ => None,
        })
        .collect()
}

fn media(h: &mut Harness, stream: &str, kind: MediaRole, update: MediaUpdate) -> Vec<Output> {
    h.input(Input::Media {
        stream_id: sid(stream),
        kind,
        update,
    })
}

/// Answers the one media offer of `out`, for `stream` and `kind`.
fn answer(h: &mut Harness, out: &[Output], stream: &str, kind: MediaRole) {
    let [(seq, offered, k)] = &opens(out)[..] else {
        panic!("expected one offer: {out:?}");
    };
    assert_eq!((offered.as_str(), *k), (stream, kind));
    h.msg(ServerMsg::MediaAnswer {
        seq: *seq,
        stream_id: sid(stream),
        kind,
        sdp: "v=0".into(),
    });
}

/// The first audio frame of the played `stream` arrives: reported, and the player is `Playing`.
fn expect_first_frame(h: &mut Harness, stream: &str) {
    let out = media(h, stream, MediaRole::Play, MediaUpdate::RecvAudioFirstFrame);
    assert_eq!(
        evs(&out),
        [
            format!("PlayerRecvAudioFirstFrame {{ stream_id: {stream:?} }}"),
            format!("play {stream} Playing 0")
        ]
    );
}

/// Publishes `stream`: the server accepts, the offer (sent with the publish) is answered, and
/// media flows.
fn publish_flowing(h: &mut Harness, stream: &str) {
    let out = h.cmd(Command::Publish {
        stream_id: sid(stream),
        ticket: 1,
    });
    let publish = seq_of(&out, |m| matches!(m, ClientMsg::Publish { .. }));
    h.msg(ServerMsg::Ok { seq: publish });
    answer(h, &out, stream, MediaRole::Publish);
    media(h, stream, MediaRole::Publish, MediaUpdate::Flowing);
}

#[test]
fn publishing_waits_for_media_to_flow() {
    let (mut h, _) = Harness::new(media_params());
    h.log_in(|seq| login_ok(seq, false, vec![], vec![]));
    let out = h.cmd(Command::Publish {
        stream_id: sid("mine"),
        ticket: 1,
    });
    assert_eq!(evs(&out), ["pub mine PublishRequesting 0"]);
    let publish = seq_of(&out, |m| matches!(m, ClientMsg::Publish { .. }));
    // The offer goes right behind the publish, without waiting for its `ok`.
    let [(offer, stream, MediaRole::Publish)] = &opens(&out)[..] else {
        panic!("expected one publish offer: {out:?}");
    };
    assert_eq!(stream, "mine");
    let sent_publish = position(&out, |o| matches!(o, Output::Send(ClientMsg::Publish { .. })));
    let open = position(&out, |o| matches!(o, Output::MediaOpen { .. }));
    assert!(sent_publish < open, "{out:?}");
    // Registered, but no media yet: still requesting, and no second offer.
    let out = h.msg(ServerMsg::Ok { seq: publish });
    assert!(evs(&out).is_empty(), "{:?}", evs(&out));
    assert!(opens(&out).is_empty(), "{out:?}");
    let out = h.msg(ServerMsg::MediaAnswer {
        seq: *offer,
        stream_id: sid("mine"),
        kind: MediaRole::Publish,
        sdp: "v=0".into(),
    });
    assert!(matches!(&out[..], [Output::MediaAnswer { sdp, .. }, ..] if sdp == "v=0"));
    let out = media(
        &mut h,
        "mine",
        MediaRole::Publish,
        MediaUpdate::CapturedAudioFirstFrame,
    );
    assert_eq!(evs(&out), ["PublisherCapturedAudioFirstFrame"]);
    let out = media(&mut h, "mine", MediaRole::Publish, MediaUpdate::Flowing);
    assert_eq!(evs(&out), ["pub mine Publishing 0"]);

    // Lost: back to requesting with the break code, and a new offer at once.
    let out = media(&mut h, "mine", MediaRole::Publish, MediaUpdate::Lost);
    assert_eq!(evs(&out), ["pub mine PublishRequesting 1003020"]);
    assert_eq!(closes(&out), [("mine".to_string(), MediaRole::Publish)]);
    assert_eq!(opens(&out).len(), 1);

    // Stopping closes the media connection.
    let out = h.cmd(Command::StopPublish);
    assert_eq!(closes(&out), [("mine".to_string(), MediaRole::Publish)]);
    assert_eq!(evs(&out), ["pub mine NoPublish 0"]);
}

#[test]
fn playing_offers_with_the_play_and_waits_for_a_frame() {
    let (mut h, _) = Harness::new(media_params());
    h.log_in(|seq| login_ok(seq, false, vec![], vec![]));
    // The offer goes right behind the play, before the stream is published: the server holds
    // it until the stream is there.
    let played = h.cmd(Command::Play {
        stream_id: sid("theirs"),
    });
    let play = seq_of(&played, |m| matches!(m, ClientMsg::Play { .. }));
    assert_eq!(opens(&played).len(), 1, "{played:?}");
    let out = h.msg(ServerMsg::Ok { seq: play });
    assert!(opens(&out).is_empty());
    let out = h.msg(ServerMsg::PlayUpdate {
        stream_id: sid("theirs"),
        available: false,
    });
    assert!(
        opens(&out).is_empty() && closes(&out).is_empty(),
        "the offer stays while the server holds it: {out:?}"
    );
    let out = h.msg(ServerMsg::PlayUpdate {
        stream_id: sid("theirs"),
        available: true,
    });
    assert!(evs(&out).is_empty(), "Playing waits for the first frame");
    assert!(opens(&out).is_empty(), "no second offer: {out:?}");
    answer(&mut h, &played, "theirs", MediaRole::Play);
    expect_first_frame(&mut h, "theirs");
    // The publisher stops: the server closes the connection, then says the stream is gone.
    let out = h.msg(ServerMsg::MediaState {
        stream_id: sid("theirs"),
        kind: MediaRole::Play,
        state: PeerState::Closed,
        code: ErrorCode::STREAM_NOT_FOUND,
        message: "the stream's publisher stopped".into(),
    });
    assert_eq!(evs(&out), ["play theirs PlayRequesting 0"]);
    assert_eq!(closes(&out), [("theirs".to_string(), MediaRole::Play)]);
    assert!(opens(&out).is_empty());
    let out = h.msg(ServerMsg::PlayUpdate {
        stream_id: sid("theirs"),
        available: false,
    });
    assert!(evs(&out).is_empty() && closes(&out).is_empty());
    // Back: a new offer.
    let out = h.msg(ServerMsg::PlayUpdate {
        stream_id: sid("theirs"),
        available: true,
    });
    assert_eq!(opens(&out).len(), 1);
    // A refused offer for a stream that went away again (its `play_update` first) is quiet,
    // and waits for the stream.
    let (seq, _, _) = opens(&out)[0].clone();
    h.msg(ServerMsg::PlayUpdate {
        stream_id: sid("theirs"),
        available: false,
    });
    let out = h.msg(ServerMsg::Error {
        seq: Some(seq),
        code: ErrorCode::STREAM_NOT_FOUND,
        message: "gone".into(),
    });
    assert!(evs(&out).is_empty());
    assert_eq!(closes(&out).len(), 1);
    assert!(opens(&out).is_empty(), "{out:?}");
    // Refused while the stream is published (its publisher's media did not start while the
    // server waited): offered again at once, then after the backoff of a lost connection.
    let out = h.msg(ServerMsg::PlayUpdate {
        stream_id: sid("theirs"),
        available: true,
    });
    let mut seq = opens(&out)[0].0;
    for wait in [0, 250] {
        let mut out = h.msg(ServerMsg::Error {
            seq: Some(seq),
            code: ErrorCode::STREAM_NOT_FOUND,
            message: "the stream's publisher has not started its media".into(),
        });
        assert!(evs(&out).is_empty(), "{out:?}");
        let refused = h.now;
        while opens(&out).is_empty() {
            h.msg(ServerMsg::Pong {
                seq: 0,
                server_time_ms: 0,
            });
            out = h.advance(Duration::from_millis(10));
        }
        assert_eq!((h.now - refused).as_millis(), wait);
        seq = opens(&out)[0].0;
    }
}

#[test]
fn media_survives_a_resumed_session_and_restarts_with_a_fresh_one() {
    let (mut h, _) = Harness::new(media_params());
    h.log_in(|seq| login_ok(seq, false, vec![], vec![]));
    publish_flowing(&mut h, "mine");

    // A resumed session keeps the media connection as it is.
    h.input(Input::Closed("reset".into()));
    let (_, out) = h.log_in(|seq| login_ok(seq, true, vec![], vec![]));
    assert!(opens(&out).is_empty() && closes(&out).is_empty(), "{out:?}");
    assert_eq!(evs(&out), ["room Reconnected 0", "pub mine Publishing 0"]);

    // A fresh one forgot it: closed, published again, offered again with the publish.
    h.input(Input::Closed("reset".into()));
    let (_, out) = h.log_in(|seq| login_ok(seq, false, vec![], vec![]));
    assert_eq!(closes(&out), [("mine".to_string(), MediaRole::Publish)]);
    assert_eq!(opens(&out).len(), 1);
    let publish = seq_of(&out, |m| matches!(m, ClientMsg::Publish { .. }));
    let out = h.msg(ServerMsg::Ok { seq: publish });
    assert!(opens(&out).is_empty());
}

/// A publish refused takes the offer sent with it along: the media connection is closed with
/// the publisher, and the offer's own refusal (the same code) is not reported again. A publish
/// retried as a reclaim brings a new offer with it.
#[test]
fn a_refused_publish_closes_the_offer_sent_with_it() {
    let (mut h, _) = Harness::new(media_params());
    h.log_in(|seq| login_ok(seq, false, vec![], vec![]));
    let out = h.cmd(Command::Publish {
        stream_id: sid("taken"),
        ticket: 1,
    });
    let publish = seq_of(&out, |m| matches!(m, ClientMsg::Publish { .. }));
    let [(offer, _, MediaRole::Publish)] = opens(&out)[..] else {
        panic!("expected one publish offer: {out:?}");
    };
    let out = h.msg(ServerMsg::Error {
        seq: Some(publish),
        code: ErrorCode::STREAM_ID_EXISTS,
        message: "taken".into(),
    });
    assert_eq!(closes(&out), [("taken".to_string(), MediaRole::Publish)]);
    assert_eq!(evs(&out), ["pub taken NoPublish 1003028"]);
    let out = h.msg(ServerMsg::Error {
        seq: Some(offer),
        code: ErrorCode::STREAM_ID_EXISTS,
        message: "taken".into(),
    });
    assert!(
        out.iter().all(|o| !matches!(
            o,
            Output::Event(_) | Output::MediaOpen { .. } | Output::MediaClose { .. }
        )),
        "{out:?}"
    );

    // Published, then a fresh session after a break: the stream ID is still held by the old
    // session; the publish and its offer are refused, and both go again together.
    publish_flowing(&mut h, "mine");
    let out = h.input(Input::Closed("node died".into()));
    next_connect(&mut h, out);
    let (_, out) = h.log_in(|seq| login_ok(seq, false, vec![], vec![]));
    let publish = seq_of(&out, |m| matches!(m, ClientMsg::Publish { .. }));
    let [(offer, _, MediaRole::Publish)] = opens(&out)[..] else {
        panic!("expected one publish offer: {out:?}");
    };
    let out = h.msg(ServerMsg::Error {
        seq: Some(publish),
        code: ErrorCode::STREAM_ID_EXISTS,
        message: "taken".into(),
    });
    assert_eq!(closes(&out), [("mine".to_string(), MediaRole::Publish)]);
    assert!(evs(&out).is_empty(), "still requesting: {out:?}");
    let out = h.msg(ServerMsg::Error {
        seq: Some(offer),
        code: ErrorCode::STREAM_ID_EXISTS,
        message: "taken".into(),
    });
    assert!(evs(&out).is_empty() && opens(&out).is_empty(), "{out:?}");
    let mut out = Vec::new();
    while !sent(&out).iter().any(|m| matches!(m, ClientMsg::Publish { .. })) {
        h.msg(ServerMsg::Pong {
            seq: 0,
            server_time_ms: 0,
        });
        out = h.advance(Duration::from_millis(10));
    }
    assert_eq!(opens(&out).len(), 1, "{out:?}");
}

/// The delays between the connection attempts of a break where every attempt fails at once,
/// over `span` of virtual time; returns with an attempt in progress.
fn retry_gaps(h: &mut Harness, span: Duration) -> Vec<(Duration, Duration)> {
    let start = h.now;
    let mut out = h.input(Input::Closed("reset".into()));
    let mut last = h.now;
    let mut gaps = Vec::new();
    while !h.finished {
        if connects(&out) > 0 {
            gaps.push((h.now.duration_since(start), h.now.duration_since(last)));
            last = h.now;
            if h.now.duration_since(start) >= span {
                break;
            }
            out = h.input(Input::ConnectFailed("refused".into()));
        } else {
            out = h.advance(Duration::from_millis(5));
        }
    }
    gaps
}

#[test]
fn a_break_is_retried_often_at_first_then_backs_off() {
    let (mut h, _) = Harness::new(params(None, timing()));
    h.log_in(|seq| login_ok(seq, false, vec![], vec![]));
    let gaps = retry_gaps(&mut h, Duration::from_secs(60));
    // The first attempt at once; then at most 500 ms apart (400 ms with jitter) for 30 s, so
    // that the end of an outage is noticed within half a second.
    assert_eq!(gaps[0].1, Duration::ZERO);
    let (early, late): (Vec<_>, Vec<_>) = gaps[1..]
        .iter()
        .partition(|(at, _)| *at <= Duration::from_secs(30));
    assert!(early.len() >= 60, "{early:?}");
    assert!(
        early.iter().all(|(_, gap)| *gap <= Duration::from_millis(505)),
        "{early:?}"
    );
    // Then the usual backoff, up to 5 s (with jitter).
    assert!(
        late.iter()
            .skip(1)
            .all(|(_, gap)| *gap >= Duration::from_millis(3750)),
        "{late:?}"
    );
    assert!(
        late.iter().all(|(_, gap)| *gap <= Duration::from_millis(6255)),
        "{late:?}"
    );

    // A new break starts fast again.
    let (_, out) = h.log_in(|seq| login_ok(seq, true, vec![], vec![]));
    assert_eq!(evs(&out)[0], "room Reconnected 0");
    let gaps = retry_gaps(&mut h, Duration::from_secs(5));
    assert!(
        gaps.iter().all(|(_, gap)| *gap <= Duration::from_millis(505)),
        "{gaps:?}"
    );
}

#[test]
fn a_media_connection_lost_during_a_break_is_offered_again_on_resume() {
    let (mut h, _) = Harness::new(media_params());
    h.log_in(|seq| login_ok(seq, false, vec![], vec![stream("them", "theirs")]));
    publish_flowing(&mut h, "mine");
    let played = h.cmd(Command::Play {
        stream_id: sid("theirs"),
    });
    h.msg(ServerMsg::PlayUpdate {
        stream_id: sid("theirs"),
        available: true,
    });
    answer(&mut h, &played, "theirs", MediaRole::Play);
    media(
        &mut h,
        "theirs",
        MediaRole::Play,
        MediaUpdate::RecvAudioFirstFrame,
    );

    // The network goes: signaling breaks, then the connections' ICE gives up.
    let out = h.input(Input::Closed("nothing heard from the server".into()));
    assert_eq!(
        evs(&out),
        [
            "room Reconnecting 1002051",
            "pub mine PublishRequesting 1003020",
            "play theirs PlayRequesting 1004020"
        ]
    );
    for (stream, kind) in [("mine", MediaRole::Publish), ("theirs", MediaRole::Play)] {
        let out = media(&mut h, stream, kind, MediaUpdate::Lost);
        // Closed, and not offered while signaling is down; no new state to report.
        assert_eq!(closes(&out), [(stream.to_string(), kind)]);
        assert!(opens(&out).is_empty() && evs(&out).is_empty(), "{out:?}");
    }

    // The session resumes: the publisher offers again at once, the player with its play; both
    // report their state again only when media is back.
    let (_, out) = h.log_in(|seq| login_ok(seq, true, vec![], vec![stream("them", "theirs")]));
    assert_eq!(evs(&out), ["room Reconnected 0"]);
    let opened: Vec<(String, MediaRole)> = opens(&out).into_iter().map(|(_, s, k)| (s, k)).collect();
    assert_eq!(
        opened,
        [
            ("mine".to_string(), MediaRole::Publish),
            ("theirs".to_string(), MediaRole::Play)
        ],
        "{out:?}"
    );
    let play = seq_of(&out, |m| matches!(m, ClientMsg::Play { .. }));
    h.msg(ServerMsg::Ok { seq: play });
    let out = h.msg(ServerMsg::PlayUpdate {
        stream_id: sid("theirs"),
        available: true,
    });
    assert!(opens(&out).is_empty(), "{out:?}");
    assert!(evs(&out).is_empty(), "{out:?}");
    let out = media(&mut h, "mine", MediaRole::Publish, MediaUpdate::Flowing);
    assert_eq!(evs(&out), ["pub mine Publishing 0"]);
    expect_first_frame(&mut h, "theirs");
}

#[test]
fn a_busy_server_is_retried_with_the_usual_backoff() {
    let mut h = online_with_streams();
    h.input(Input::Closed("reset".into()));
    let mut gaps = Vec::new();
    let mut last = h.now;
    for _ in 0..6 {
        let out = h.refused_login(ErrorCode::SERVER_BUSY);
        assert!(evs(&out).is_empty(), "busy is retried");
        let mut out = Vec::new();
        while connects(&out) == 0 {
            out = h.advance(Duration::from_millis(5));
        }
        gaps.push(h.now.duration_since(last));
        last = h.now;
    }
    // 250 ms doubling (±25%): the fourth retry waits at least 1.5 s.
    assert!(gaps[3] >= Duration::from_millis(1500), "{gaps:?}");
}

/// The message of the first room state change in `out`.
fn room_message(out: &[Output]) -> String {
    out.iter()
        .find_map(|o| match o {
            Output::Event(Event::RoomStateChanged { extended_data, .. }) => Some(extended_data.clone()),
            _ => None,
        })
        .expect("a room state change")
}

#[test]
fn an_untrusted_certificate_fails_the_first_login_at_once() {
    let (mut h, _) = Harness::new(params(None, timing()));
    h.cmd(Command::Publish {
        stream_id: sid("mine"),
        ticket: 1,
    });
    let out = h.input(Input::CertificateRejected("certificate not trusted".into()));
    assert_eq!(
        evs(&out),
        ["room LoginFailed 1002030", "pub mine NoPublish 1002030"]
    );
    assert!(room_message(&out).contains("certificate not trusted"));
    assert!(h.finished);
}

#[test]
fn a_first_login_that_never_connects_says_why() {
    let (mut h, _) = Harness::new(params(None, timing()));
    let mut out = h.input(Input::ConnectFailed("connection refused".into()));
    while !h.finished {
        out = if connects(&out) > 0 {
            h.input(Input::ConnectFailed("connection refused".into()))
        } else {
            h.advance(Duration::from_millis(10))
        };
    }
    assert_eq!(evs(&out), ["room LoginFailed 1002030"]);
    let message = room_message(&out);
    assert!(
        message.contains("could not connect") && message.contains("connection refused"),
        "{message}"
    );
}

#[test]
fn an_untrusted_certificate_while_reconnecting_is_retried() {
    let (mut h, _) = Harness::new(params(None, timing()));
    h.log_in(|seq| login_ok(seq, false, vec![], vec![]));
    let mut out = h.input(Input::Closed("reset".into()));
    assert_eq!(evs(&out), ["room Reconnecting 1002051"]);
    // A certificate being replaced: refused once, then the server is back.
    while connects(&out) == 0 {
        out = h.advance(Duration::from_millis(10));
    }
    out = h.input(Input::CertificateRejected("certificate not trusted".into()));
    assert!(evs(&out).is_empty(), "{:?}", evs(&out));
    assert!(!h.finished);
    while connects(&out) == 0 {
        out = h.advance(Duration::from_millis(10));
    }
}

// ----- several servers -----

/// The servers named by the `Connect` outputs.
fn servers_of(out: &[Output]) -> Vec<usize> {
    out.iter()
        .filter_map(|o| match o {
            Output::Connect { server } => Some(*server),
            _ => None,
        })
        .collect()
}

/// The server of the next `Connect`: in `out` (the outputs of the last input), or else after
/// advancing time until one comes.
fn next_connect(h: &mut Harness, out: Vec<Output>) -> usize {
    let mut out = out;
    for _ in 0..2000 {
        if let [server] = servers_of(&out)[..] {
            return server;
        }
        assert!(!h.finished, "ended before connecting again: {:?}", evs(&out));
        out = h.advance(Duration::from_millis(10));
    }
    panic!("no connection attempt within 20 s");
}

fn several(servers: usize) -> SessionParams {
    let mut p = params(None, timing());
    p.servers = servers;
    p
}

#[test]
fn failed_attempts_go_round_the_servers() {
    let (mut h, out) = Harness::new(several(3));
    assert_eq!(servers_of(&out), [0]);
    let mut tried = Vec::new();
    for _ in 0..3 {
        let out = h.input(Input::ConnectFailed("refused".into()));
        tried.push(next_connect(&mut h, out));
    }
    assert_eq!(tried, [1, 2, 0]);
    // A timed-out attempt moves on too.
    let out = h.advance(timing().attempt_timeout);
    assert!(out.iter().any(|o| matches!(o, Output::Close)), "{out:?}");
    assert_eq!(next_connect(&mut h, out), 1);
}

/// An attempt that steps forward (the WebSocket opens, the `hello` comes) gets the attempt
/// timeout again from there: a login answer that comes late on a lossy path is still taken, not
/// thrown away with its connection; an attempt stuck at any step is still given up.
#[test]
fn an_attempt_is_given_up_only_after_a_timeout_without_a_step_forward() {
    // The defaults: 5 s an attempt, 10 s the whole login.
    assert_eq!(timing().attempt_timeout, Duration::from_secs(5));
    let s = Duration::from_secs;
    let hello = || ServerMsg::Hello {
        protocol: 1,
        nonce: "n0nce".into(),
        server_time_ms: 0,
    };
    let closed = |out: &[Output]| out.iter().any(|o| matches!(o, Output::Close));
    // The WebSocket opens at 3 s and the hello comes at 6 s: the login answer at 9 s is taken.
    let (mut h, _) = Harness::new(several(1));
    assert!(h.advance(s(3)).is_empty());
    assert!(h.input(Input::Connected).is_empty());
    assert!(
        h.advance(s(3)).is_empty(),
        "the WebSocket opened at 3 s: a new timeout"
    );
    let out = h.msg(hello());
    let seq = sent(&out)[0].seq();
    let out = h.advance(s(3));
    assert!(!closed(&out), "{out:?}");
    let out = h.msg(ServerMsg::LoginOk(login_ok(seq, false, vec![], vec![])));
    assert_eq!(evs(&out)[0], "room Logined 0");
    // No answer to the login: the attempt is given up 5 s after the hello (at 2 s), and another
    // one starts (the login has 10 s in all).
    let (mut h, _) = Harness::new(several(1));
    h.input(Input::Connected);
    h.advance(s(2));
    h.msg(hello());
    let out = h.advance(Duration::from_millis(4900));
    assert!(!closed(&out), "{out:?}");
    let out = h.advance(Duration::from_millis(200));
    assert!(closed(&out), "{out:?}");
    assert!(evs(&out).is_empty(), "not a failure yet: {:?}", evs(&out));
}

#[test]
fn a_login_refused_as_shutting_down_tries_the_next_server() {
    let (mut h, _) = Harness::new(several(2));
    let out = h.refused_login(ErrorCode::SERVER_SHUTTING_DOWN);
    assert!(evs(&out).is_empty(), "not a failure yet: {:?}", evs(&out));
    assert_eq!(next_connect(&mut h, out), 1);
    let (_, out) = h.log_in(|seq| login_ok(seq, false, vec![], vec![]));
    assert_eq!(evs(&out)[0], "room Logined 0");
    // With one server the same refusal ends the login, as it always did.
    let (mut h, _) = Harness::new(several(1));
    let out = h.refused_login(ErrorCode::SERVER_SHUTTING_DOWN);
    assert_eq!(evs(&out)[0], "room LoginFailed 1009008");
}

#[test]
fn a_login_refused_because_the_cluster_store_is_away_tries_the_next_server() {
    let (mut h, _) = Harness::new(several(2));
    let out = h.refused_login(ErrorCode::CLUSTER_UNAVAILABLE);
    assert!(evs(&out).is_empty(), "not a failure yet: {:?}", evs(&out));
    assert_eq!(next_connect(&mut h, out), 1);
    let (_, out) = h.log_in(|seq| login_ok(seq, false, vec![], vec![]));
    assert_eq!(evs(&out)[0], "room Logined 0");
}

#[test]
fn a_broken_connection_is_retried_on_its_server_first() {
    let (mut h, _) = Harness::new(several(3));
    let out = h.input(Input::ConnectFailed("refused".into()));
    assert_eq!(next_connect(&mut h, out), 1);
    h.log_in(|seq| login_ok(seq, false, vec![], vec![]));
    // Server 1 breaks: the session may still be there (resume), so it is asked first.
    let out = h.input(Input::Closed("reset".into()));
    assert_eq!(next_connect(&mut h, out), 1);
    // It is gone for good (killed): on to the next.
    let out = h.input(Input::ConnectFailed("refused".into()));
    assert_eq!(next_connect(&mut h, out), 2);
    // Refused as busy while reconnecting: on again.
    let out = h.refused_login(ErrorCode::SERVER_BUSY);
    assert!(evs(&out).is_empty(), "{:?}", evs(&out));
    assert_eq!(next_connect(&mut h, out), 0);
}

#[test]
fn media_connections_that_die_young_are_offered_again_with_growing_delays() {
    let (mut h, _) = Harness::new(media_params());
    h.log_in(|seq| login_ok(seq, false, vec![], vec![]));
    publish_flowing(&mut h, "mine");
    // The first loss is offered again at once.
    let out = media(&mut h, "mine", MediaRole::Publish, MediaUpdate::Lost);
    answer(&mut h, &out, "mine", MediaRole::Publish);
    // Then every new connection dies before it carries media: the offers spread out.
    let mut gaps = Vec::new();
    for _ in 0..5 {
        let lost_at = h.now;
        let mut out = media(&mut h, "mine", MediaRole::Publish, MediaUpdate::Lost);
        for _ in 0..400 {
            if !opens(&out).is_empty() {
                break;
            }
            // The server answers (signaling stays up while media is retried).
            h.msg(ServerMsg::Pong {
                seq: 0,
                server_time_ms: 0,
            });
            out = h.advance(Duration::from_millis(50));
        }
        gaps.push(h.now - lost_at);
        answer(&mut h, &out, "mine", MediaRole::Publish);
    }
    let ms: Vec<u128> = gaps.iter().map(|g| g.as_millis()).collect();
    assert_eq!(ms, [250, 500, 1000, 2000, 4000], "{gaps:?}");
    // One that lasts resets it: the next loss is offered again at once.
    let out = media(&mut h, "mine", MediaRole::Publish, MediaUpdate::Flowing);
    assert_eq!(evs(&out), ["pub mine Publishing 0"]);
    for _ in 0..30 {
        h.msg(ServerMsg::Pong {
            seq: 0,
            server_time_ms: 0,
        });
        h.advance(Duration::from_secs(1));
    }
    let out = media(&mut h, "mine", MediaRole::Publish, MediaUpdate::Lost);
    assert_eq!(opens(&out).len(), 1, "{out:?}");
}

// ----- quality -----

/// The quality events in a compact form: `pubq STREAM LEVEL`, `playq STREAM LEVEL`,
/// `net USER UP DOWN` (`-` for this user).
fn qevs(out: &[Output]) -> Vec<String> {
    out.iter()
        .filter_map(|o| match o {
            Output::Event(Event::PublisherQualityUpdate { stream_id, quality }) => {
                Some(format!("pubq {stream_id} {:?}", quality.level))
            }
            Output::Event(Event::PlayerQualityUpdate { stream_id, quality }) => {
                Some(format!("playq {stream_id} {:?}", quality.level))
            }
            Output::Event(Event::NetworkQuality {
                user_id,
                upstream_quality,
                downstream_quality,
            }) => Some(format!(
                "net {} {upstream_quality:?} {downstream_quality:?}",
                user_id.as_ref().map_or("-", |u| u.as_str())
            )),
            _ => None,
        })
        .collect()
}

/// The counters a clean publish and a clean play connection report after `secs` seconds.
fn clean_samples(secs: u64, last_rx: Instant) -> (PublishSample, PlaySample) {
    (
        PublishSample {
            audio_bytes: 6000 * secs,
            expected: 50 * secs,
            rtt: Some(Duration::from_millis(40)),
            jitter_ms: 2,
            last_rx: Some(last_rx),
            ..Default::default()
        },
        PlaySample {
            audio_bytes: 6000 * secs,
            loss: Some(0.0),
            jitter: Duration::from_millis(8),
            delay: Duration::from_millis(40),
            played: 50 * secs,
            last_rx: Some(last_rx),
            ..Default::default()
        },
    )
}

/// A session that publishes `mine` and plays `theirs` with quality on, on a server whose
/// liveness outlasts a 5 s outage (the default 15 s).
fn quality_call() -> Harness {
    let mut p = media_params();
    p.quality = true;
    let (mut h, _) = Harness::new(p);
    h.log_in(|seq| LoginOk {
        heartbeat_ms: 5000,
        session_timeout_ms: 15000,
        ..login_ok(seq, false, vec![user("bob")], vec![stream("bob", "theirs")])
    });
    publish_flowing(&mut h, "mine");
    let played = h.cmd(Command::Play {
        stream_id: sid("theirs"),
    });
    let play = seq_of(&played, |m| matches!(m, ClientMsg::Play { .. }));
    h.msg(ServerMsg::Ok { seq: play });
    h.msg(ServerMsg::PlayUpdate {
        stream_id: sid("theirs"),
        available: true,
    });
    answer(&mut h, &played, "theirs", MediaRole::Play);
    expect_first_frame(&mut h, "theirs");
    h
}

/// One second of a call: the media tasks' samples (last received now, or at `silent_since`),
/// then the time.
fn second(h: &mut Harness, secs: u64, silent_since: Option<Instant>) -> Vec<Output> {
    let (p, q) = clean_samples(secs, silent_since.unwrap_or(h.now));
    let mut out = media(h, "mine", MediaRole::Publish, MediaUpdate::PublishStats(p));
    out.extend(media(h, "theirs", MediaRole::Play, MediaUpdate::PlayStats(q)));
    out.extend(h.advance(Duration::from_secs(1)));
    out
}

/// The report of this user's levels in `out`, answered by the server.
fn answer_reports(h: &mut Harness, out: &[Output]) -> Vec<(StreamQualityLevel, StreamQualityLevel)> {
    let mut levels = Vec::new();
    for m in sent(out) {
        if let ClientMsg::NetworkQuality {
            seq,
            upstream,
            downstream,
        } = m
        {
            levels.push((upstream, downstream));
            h.msg(ServerMsg::Ok { seq });
        }
    }
    levels
}

#[test]
fn quality_is_reported_every_3_s_per_stream_and_every_2_s_per_user() {
    let mut h = quality_call();
    let mut out = Vec::new();
    for secs in 1..=6 {
        let o = second(&mut h, secs, None);
        answer_reports(&mut h, &o);
        out.extend(o);
    }
    // Stream quality at 3 s and 6 s after the first sample; network quality at 2, 4 and 6 s,
    // each also reported to the server.
    assert_eq!(
        qevs(&out),
        [
            "net - Excellent Excellent",
            "pubq mine Excellent",
            "playq theirs Excellent",
            "net - Excellent Excellent",
            "pubq mine Excellent",
            "playq theirs Excellent",
            "net - Excellent Excellent",
        ]
    );
    let reports: Vec<_> = sent(&out)
        .into_iter()
        .filter(|m| matches!(m, ClientMsg::NetworkQuality { .. }))
        .collect();
    assert_eq!(reports.len(), 3, "{reports:?}");
    // The numbers: 48 kbit/s each way, no loss, the publisher's RTT for both.
    let q = out
        .iter()
        .find_map(|o| match o {
            Output::Event(Event::PlayerQualityUpdate { quality, .. }) => Some(*quality),
            _ => None,
        })
        .unwrap();
    assert_eq!((q.rtt, q.jitter, q.delay), (40, 8, 40));
    assert!((q.audio_kbps - 48.0).abs() < 0.01, "{q:?}");
    assert_eq!((q.packet_lost_rate, q.audio_concealed_rate), (0.0, 0.0));
    assert!(q.mos > 4.3, "{q:?}");
}

#[test]
fn quality_of_an_outage_is_die_after_3_s_and_a_level_again_with_the_first_arrival() {
    use StreamQualityLevel::Die;
    let mut h = quality_call();
    for secs in 1..=4 {
        let o = second(&mut h, secs, None);
        answer_reports(&mut h, &o);
    }
    // The network goes: the media tasks' samples say nothing arrived since, and no signaling
    // comes. Die exactly 3 s after the last arrival, at once (not at the next 2 s tick).
    let last = h.now;
    let mut out = Vec::new();
    let mut died_at = None;
    for secs in 5..=9 {
        let o = second(&mut h, secs, Some(last));
        if died_at.is_none() && qevs(&o).iter().any(|e| e == "net - Die Die") {
            died_at = Some(h.now);
        }
        out.extend(o);
    }
    // Before the 3 s are up, the regular tick may still report the last levels; from the
    // first Die on, only Die.
    let own: Vec<String> = qevs(&out)
        .into_iter()
        .filter(|e| e.starts_with("net -"))
        .collect();
    let first = own.iter().position(|e| e == "net - Die Die").expect("Die");
    assert!(own[first..].iter().all(|e| e == "net - Die Die"), "{own:?}");
    let died_at = died_at.unwrap();
    assert!(died_at - last <= Duration::from_secs(4), "{:?}", died_at - last);
    // Stream levels die with it; no report can go out while dead.
    assert!(
        qevs(&out).contains(&"pubq mine Die".to_string()),
        "{:?}",
        qevs(&out)
    );
    assert!(
        qevs(&out).contains(&"playq theirs Die".to_string()),
        "{:?}",
        qevs(&out)
    );
    let die = out
        .iter()
        .position(|o| {
            matches!(
                o,
                Output::Event(Event::NetworkQuality {
                    upstream_quality: Die,
                    ..
                })
            )
        })
        .unwrap();
    assert!(
        !sent(&out[die..])
            .iter()
            .any(|m| matches!(m, ClientMsg::NetworkQuality { .. })),
        "{out:?}"
    );
    // The network returns: the first sample with a new arrival brings a level back at once.
    let (p, _) = clean_samples(10, h.now);
    let out = media(&mut h, "mine", MediaRole::Publish, MediaUpdate::PublishStats(p));
    let back = qevs(&out);
    assert_eq!(back.len(), 1, "{back:?}");
    assert!(
        back[0].starts_with("net - ") && !back[0].contains("Die"),
        "{back:?}"
    );
    // And the reports start again at the next tick.
    let mut out = second(&mut h, 11, None);
    out.extend(second(&mut h, 12, None));
    assert_eq!(answer_reports(&mut h, &out).len(), 1, "{out:?}");
}

#[test]
fn quality_of_other_users_is_relayed_then_unknown_then_die_when_their_reports_stop() {
    use StreamQualityLevel::*;
    let mut h = quality_call();
    let bob = |up, down| ServerMsg::NetworkQuality {
        user_id: UserId::new("bob").unwrap(),
        upstream: up,
        downstream: down,
    };
    h.msg(bob(Good, Medium));
    let mut out = Vec::new();
    for secs in 1..=10 {
        if secs == 2 {
            h.msg(bob(Good, Bad));
        }
        let o = second(&mut h, secs, None);
        answer_reports(&mut h, &o);
        out.extend(o);
    }
    let bobs: Vec<String> = qevs(&out)
        .into_iter()
        .filter(|e| e.starts_with("net bob"))
        .collect();
    // 2 s: the last report; 4 s: still fresh (2 s old); 6 s: one missed: Unknown; 8 s: three
    // missed: Die, then forgotten.
    assert_eq!(
        bobs,
        [
            "net bob Good Bad",
            "net bob Good Bad",
            "net bob Unknown Unknown",
            "net bob Die Die"
        ]
    );
    // A report from ourselves (a second session of our user) is not someone else's.
    let out = h.msg(ServerMsg::NetworkQuality {
        user_id: UserId::new("me").unwrap(),
        upstream: Bad,
        downstream: Bad,
    });
    assert!(qevs(&out).is_empty());
}

#[test]
fn broadcast_messages_of_the_room_are_reported_in_order() {
    let mut h = online_with_streams();
    let msg = |id: u64, room: &str, text: &str| ServerMsg::BroadcastMessage {
        room_id: RoomId::new(room).unwrap(),
        message_id: id,
        send_time_ms: 1_700_000_000_000 + id,
        from_user: user("admin"),
        message: text.into(),
    };
    let mut got = Vec::new();
    for m in [
        msg(1, "room", "hello"),
        msg(2, "other", "not ours"),
        msg(3, "room", "bye"),
    ] {
        for o in h.msg(m) {
            if let Output::Event(Event::IMRecvBroadcastMessage { room_id, messages }) = o {
                assert_eq!(room_id.as_str(), "room");
                for m in messages {
                    got.push((
                        m.message_id,
                        m.send_time,
                        m.from_user.user_id.to_string(),
                        m.message,
                    ));
                }
            }
        }
    }
    assert_eq!(
        got,
        [
            (1, 1_700_000_000_001, "admin".to_string(), "hello".to_string()),
            (3, 1_700_000_000_003, "admin".to_string(), "bye".to_string())
        ]
    );
}

#[test]
fn a_stream_stopped_by_the_server_ends_the_publisher_without_an_unpublish() {
    let (mut h, _) = Harness::new(media_params());
    h.log_in(|seq| login_ok(seq, false, vec![], vec![]));
    publish_flowing(&mut h, "mine");
    let out = h.msg(ServerMsg::MediaState {
        stream_id: sid("mine"),
        kind: MediaRole::Publish,
        state: PeerState::Closed,
        code: ErrorCode::STREAM_STOPPED_BY_SERVER,
        message: "stopped".into(),
    });
    assert_eq!(evs(&out), ["pub mine NoPublish 1009033"]);
    assert_eq!(closes(&out), [("mine".to_string(), MediaRole::Publish)]);
    assert!(
        !sent(&out)
            .iter()
            .any(|m| matches!(m, ClientMsg::Unpublish { .. })),
        "{out:?}"
    );
    // Nothing is retried: no new offer later either.
    let out = h.advance(Duration::from_secs(10));
    assert!(opens(&out).is_empty(), "{out:?}");
}

/// A publish whose stream ID another node of the cluster took over (1009041) ends as one the
/// server stopped: `NoPublish` with the code, no unpublish, no retry.
#[test]
fn a_stream_taken_over_on_another_node_ends_the_publisher_without_a_retry() {
    let (mut h, _) = Harness::new(media_params());
    h.log_in(|seq| login_ok(seq, false, vec![], vec![]));
    publish_flowing(&mut h, "mine");
    let out = h.msg(ServerMsg::MediaState {
        stream_id: sid("mine"),
        kind: MediaRole::Publish,
        state: PeerState::Closed,
        code: ErrorCode::STREAM_TAKEN_OVER,
        message: "taken over".into(),
    });
    assert_eq!(evs(&out), ["pub mine NoPublish 1009041"]);
    assert!(
        !sent(&out)
            .iter()
            .any(|m| matches!(m, ClientMsg::Unpublish { .. } | ClientMsg::Publish { .. })),
        "{out:?}"
    );
    let out = h.advance(Duration::from_secs(10));
    assert!(opens(&out).is_empty(), "{out:?}");
}

/// A node of a cluster that drains says so (`error` 1009008 without `seq`): the session moves
/// to its next server at once, and publishes and plays there again.
#[test]
fn a_draining_node_is_left_for_the_next_server_at_once() {
    let (mut h, out) = Harness::new(several(2));
    assert_eq!(servers_of(&out), [0]);
    h.log_in(|seq| login_ok(seq, false, vec![], vec![]));
    let out = h.cmd(Command::Publish {
        stream_id: sid("mine"),
        ticket: 1,
    });
    let publish = seq_of(&out, |m| matches!(m, ClientMsg::Publish { .. }));
    h.msg(ServerMsg::Ok { seq: publish });
    let out = h.msg(ServerMsg::Error {
        seq: None,
        code: ErrorCode::SERVER_SHUTTING_DOWN,
        message: "draining".into(),
    });
    let close = position(&out, |o| matches!(o, Output::Close));
    let connect = position(&out, |o| matches!(o, Output::Connect { .. }));
    assert!(close < connect, "the old connection closes first: {out:?}");
    assert_eq!(servers_of(&out), [1], "to the next server, without a delay");
    assert_eq!(
        evs(&out),
        ["room Reconnecting 1002051", "pub mine PublishRequesting 1003020"]
    );
    let (_, out) = h.log_in(|seq| login_ok(seq, false, vec![], vec![]));
    assert!(
        matches!(&sent(&out)[..], [ClientMsg::Publish { stream_id, .. }] if stream_id.as_str() == "mine")
    );
}

/// Publishing again on a fresh session of another node, the stream ID may still be held by the
/// session left behind (until its node's lease ends, or it hears of the new login): "exists" is
/// retried, 250 ms and then longer apart, and the publisher is not dropped; a first publish so
/// refused fails at once.
#[test]
fn a_republish_refused_as_existing_is_retried_until_the_old_claim_ends() {
    let (mut h, _) = Harness::new(several(2));
    h.log_in(|seq| login_ok(seq, false, vec![], vec![]));
    let out = h.cmd(Command::Publish {
        stream_id: sid("mine"),
        ticket: 1,
    });
    let publish = seq_of(&out, |m| matches!(m, ClientMsg::Publish { .. }));
    h.msg(ServerMsg::Ok { seq: publish });
    let out = h.input(Input::Closed("node died".into()));
    next_connect(&mut h, out);
    let (_, out) = h.log_in(|seq| login_ok(seq, false, vec![], vec![]));
    let mut publish = seq_of(&out, |m| matches!(m, ClientMsg::Publish { .. }));
    let start = h.now;
    let mut gaps = Vec::new();
    for _ in 0..4 {
        let out = h.msg(ServerMsg::Error {
            seq: Some(publish),
            code: ErrorCode::STREAM_ID_EXISTS,
            message: "taken".into(),
        });
        assert!(evs(&out).is_empty(), "still requesting: {:?}", evs(&out));
        let mut out = Vec::new();
        let asked = h.now;
        while !sent(&out).iter().any(|m| matches!(m, ClientMsg::Publish { .. })) {
            out = h.advance(Duration::from_millis(10));
            // Heartbeats go on meanwhile.
            for m in sent(&out) {
                if let ClientMsg::Ping { seq } = m {
                    h.msg(ServerMsg::Pong {
                        seq,
                        server_time_ms: 0,
                    });
                }
            }
        }
        gaps.push((h.now - asked).as_millis() / 10 * 10);
        publish = seq_of(&out, |m| matches!(m, ClientMsg::Publish { .. }));
    }
    assert_eq!(gaps, [250, 500, 1000, 1000]);
    let out = h.msg(ServerMsg::Ok { seq: publish });
    assert_eq!(evs(&out), ["pub mine Publishing 0"]);
    assert!(h.now - start < timing().reconnect_budget);

    // A first publish refused as existing: no retry.
    let out = h.cmd(Command::Publish {
        stream_id: sid("other"),
        ticket: 2,
    });
    let publish = seq_of(&out, |m| matches!(m, ClientMsg::Publish { .. }));
    let out = h.msg(ServerMsg::Error {
        seq: Some(publish),
        code: ErrorCode::STREAM_ID_EXISTS,
        message: "taken".into(),
    });
    assert_eq!(evs(&out), ["pub other NoPublish 1003028"]);
}

// ----- mute -----

fn device_state(out: &[Output]) -> Vec<(String, TrackKind, DeviceState)> {
    sent(out)
        .into_iter()
        .filter_map(|m| match m {
            ClientMsg::SetDeviceState {
                stream_id,
                track,
                state,
                ..
            } => Some((stream_id.to_string(), track, state)),
            _ => None,
        })
        .collect()
}

fn mute_plays(out: &[Output]) -> Vec<(String, TrackKind, bool)> {
    sent(out)
        .into_iter()
        .filter_map(|m| match m {
            ClientMsg::MutePlay {
                stream_id,
                track,
                mute,
                ..
            } => Some((stream_id.to_string(), track, mute)),
            _ => None,
        })
        .collect()
}

#[test]
fn the_publishers_mute_is_sent_with_the_stream_and_again_after_a_fresh_login() {
    let mut h = online_with_streams();
    let out = h.cmd(Command::DeviceState {
        track: TrackKind::Audio,
        state: DeviceState::Mute,
    });
    assert_eq!(
        device_state(&out),
        [("mine".into(), TrackKind::Audio, DeviceState::Mute)]
    );
    // The same state again sends nothing.
    let out = h.cmd(Command::DeviceState {
        track: TrackKind::Audio,
        state: DeviceState::Mute,
    });
    assert!(sent(&out).is_empty());
    // A refusal is reported as a debug error, nothing else changes.
    let seq = seq_of(
        &h.cmd(Command::DeviceState {
            track: TrackKind::Video,
            state: DeviceState::Mute,
        }),
        |m| matches!(m, ClientMsg::SetDeviceState { .. }),
    );
    let out = h.msg(ServerMsg::Error {
        seq: Some(seq),
        code: ErrorCode::MUTE_TOO_FREQUENT,
        message: "too often".into(),
    });
    assert_eq!(evs(&out), ["debug set_device_state 1009062"]);
    // The server forgot the session (no resume): the new publish carries the states after it.
    h.input(Input::Closed("reset".into()));
    let (_, out) = h.log_in(|seq| login_ok(seq, false, vec![], vec![stream("bob", "theirs")]));
    let msgs = sent(&out);
    let publish = msgs
        .iter()
        .position(|m| matches!(m, ClientMsg::Publish { .. }))
        .unwrap();
    let first_state = msgs
        .iter()
        .position(|m| matches!(m, ClientMsg::SetDeviceState { .. }))
        .unwrap();
    assert!(publish < first_state, "{msgs:?}");
    assert_eq!(
        device_state(&out),
        [
            ("mine".into(), TrackKind::Audio, DeviceState::Mute),
            ("mine".into(), TrackKind::Video, DeviceState::Mute)
        ]
    );
    // Before any publish, a state is kept and sent with the publish.
    let (mut h, _) = Harness::new(params(None, timing()));
    h.log_in(|seq| login_ok(seq, false, vec![], vec![]));
    let out = h.cmd(Command::DeviceState {
        track: TrackKind::Audio,
        state: DeviceState::Mute,
    });
    assert!(sent(&out).is_empty());
    let out = h.cmd(Command::Publish {
        stream_id: sid("mine"),
        ticket: 1,
    });
    assert_eq!(
        device_state(&out),
        [("mine".into(), TrackKind::Audio, DeviceState::Mute)]
    );
}

#[test]
fn play_mutes_follow_the_play_and_remote_states_become_events() {
    let mut h = online_with_streams();
    let out = h.cmd(Command::MutePlay {
        stream_id: sid("theirs"),
        track: TrackKind::Audio,
        mute: true,
    });
    assert_eq!(mute_plays(&out), [("theirs".into(), TrackKind::Audio, true)]);
    // A stream not played: nothing to send.
    let out = h.cmd(Command::MutePlay {
        stream_id: sid("other"),
        track: TrackKind::Audio,
        mute: true,
    });
    assert!(sent(&out).is_empty());
    // The remote side's states, for the played stream only.
    let out = h.msg(ServerMsg::RemoteDeviceState {
        stream_id: sid("theirs"),
        track: TrackKind::Audio,
        state: DeviceState::Mute,
    });
    let out2 = h.msg(ServerMsg::RemoteDeviceState {
        stream_id: sid("theirs"),
        track: TrackKind::Video,
        state: DeviceState::Open,
    });
    let out3 = h.msg(ServerMsg::RemoteDeviceState {
        stream_id: sid("unplayed"),
        track: TrackKind::Audio,
        state: DeviceState::Mute,
    });
    let events: Vec<_> = [out, out2, out3]
        .iter()
        .flat_map(|o| o.iter())
        .filter_map(|o| match o {
            Output::Event(e) => Some(e.to_json()),
            _ => None,
        })
        .collect();
    assert_eq!(
        events,
        [
            serde_json::json!({"event": "remote_mic_state_update", "stream_id": "theirs", "state": "Mute"}),
            serde_json::json!({"event": "remote_camera_state_update", "stream_id": "theirs", "state": "Open"}),
        ]
    );
    // After a break without resume, the play is sent again with its mute after it.
    h.input(Input::Closed("reset".into()));
    let (_, out) = h.log_in(|seq| login_ok(seq, false, vec![], vec![stream("bob", "theirs")]));
    let msgs = sent(&out);
    let play = msgs
        .iter()
        .position(|m| matches!(m, ClientMsg::Play { .. }))
        .unwrap();
    let mute = msgs
        .iter()
        .position(|m| matches!(m, ClientMsg::MutePlay { .. }))
        .unwrap();
    assert!(play < mute, "{msgs:?}");
    assert_eq!(mute_plays(&out), [("theirs".into(), TrackKind::Audio, true)]);
    // The stream goes and comes back: the mute goes again (the stream may be placed on another
    // of the server's media cores; the media offer comes after it, from the media plane).
    h.msg(ServerMsg::PlayUpdate {
        stream_id: sid("theirs"),
        available: false,
    });
    let out = h.msg(ServerMsg::PlayUpdate {
        stream_id: sid("theirs"),
        available: true,
    });
    assert_eq!(mute_plays(&out), [("theirs".into(), TrackKind::Audio, true)]);
    // Unmuting sends it.
    let out = h.cmd(Command::MutePlay {
        stream_id: sid("theirs"),
        track: TrackKind::Audio,
        mute: false,
    });
    assert_eq!(mute_plays(&out), [("theirs".into(), TrackKind::Audio, false)]);
}

// ----- messages and extra info -----

/// The events of `out` (none of the state events).
fn events(out: &[Output]) -> Vec<Event> {
    out.iter()
        .filter_map(|o| match o {
            Output::Event(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn message_requests_report_their_results_with_the_callers_number() {
    let mut h = online_with_streams();
    let out = h.cmd(Command::Im {
        ticket: 7,
        req: ImRequest::Broadcast("hi".into()),
    });
    let seq = seq_of(
        &out,
        |m| matches!(m, ClientMsg::SendBroadcastMessage { message, .. } if message == "hi"),
    );
    let out = h.msg(ServerMsg::MessageSent { seq, message_id: 42 });
    assert_eq!(
        events(&out),
        [Event::IMSendBroadcastMessageResult {
            room_id: RoomId::new("room").unwrap(),
            seq: 7,
            error_code: ErrorCode::OK,
            message_id: 42
        }]
    );
    let out = h.cmd(Command::Im {
        ticket: 8,
        req: ImRequest::Command {
            command: "go".into(),
            to_users: vec![UserId::new("nobody").unwrap()],
        },
    });
    let seq = seq_of(&out, |m| matches!(m, ClientMsg::SendCustomCommand { .. }));
    let out = h.msg(ServerMsg::Error {
        seq: Some(seq),
        code: ErrorCode::CUSTOM_COMMAND_NO_RECIPIENT,
        message: "none".into(),
    });
    assert_eq!(
        events(&out),
        [Event::IMSendCustomCommandResult {
            room_id: RoomId::new("room").unwrap(),
            seq: 8,
            error_code: ErrorCode::CUSTOM_COMMAND_NO_RECIPIENT
        }]
    );
    // Unanswered when the connection breaks: failed (1000002), in call order; while
    // reconnecting, refused at once and nothing is sent.
    for ticket in [9, 10] {
        h.cmd(Command::Im {
            ticket,
            req: ImRequest::RoomExtraInfo {
                key: "k".into(),
                value: "v".into(),
            },
        });
    }
    let out = h.input(Input::Closed("reset".into()));
    let failed: Vec<(u64, ErrorCode)> = events(&out)
        .into_iter()
        .filter_map(|e| match e {
            Event::RoomSetRoomExtraInfoResult { seq, error_code, .. } => Some((seq, error_code)),
            _ => None,
        })
        .collect();
    assert_eq!(
        failed,
        [(9, ErrorCode::NOT_LOGGED_IN), (10, ErrorCode::NOT_LOGGED_IN)]
    );
    let out = h.cmd(Command::Im {
        ticket: 11,
        req: ImRequest::Barrage("x".into()),
    });
    assert!(sent(&out).is_empty());
    assert!(matches!(
        &events(&out)[..],
        [Event::IMSendBarrageMessageResult { seq: 11, error_code: ErrorCode::NOT_LOGGED_IN, message_id, .. }] if message_id.is_empty()
    ));
}

#[test]
fn stream_extra_info_set_before_the_publish_goes_with_it_and_after_it_alone_behind_it() {
    let (mut h, _) = Harness::new(params(None, timing()));
    h.log_in(|seq| login_ok(seq, false, vec![], vec![]));
    let out = h.cmd(Command::Im {
        ticket: 1,
        req: ImRequest::StreamExtraInfo("early".into()),
    });
    assert!(sent(&out).is_empty());
    assert_eq!(
        events(&out),
        [Event::PublisherSetStreamExtraInfoResult {
            seq: 1,
            error_code: ErrorCode::OK
        }]
    );
    let out = h.cmd(Command::Publish {
        stream_id: sid("mine"),
        ticket: 2,
    });
    let publish = sent(&out)
        .into_iter()
        .find_map(|m| match m {
            ClientMsg::Publish { seq, extra_info, .. } => Some((seq, extra_info)),
            _ => None,
        })
        .unwrap();
    assert_eq!(publish.1, "early");
    // Set while the publish awaits its answer: sent at once, behind the publish.
    let out = h.cmd(Command::Im {
        ticket: 4,
        req: ImRequest::StreamExtraInfo("meanwhile".into()),
    });
    assert!(matches!(
        &sent(&out)[..],
        [ClientMsg::SetStreamExtraInfo { extra_info, .. }] if extra_info == "meanwhile"
    ));
    h.msg(ServerMsg::Ok { seq: publish.0 });
    let out = h.cmd(Command::Im {
        ticket: 3,
        req: ImRequest::StreamExtraInfo("later".into()),
    });
    assert!(matches!(
        &sent(&out)[..],
        [ClientMsg::SetStreamExtraInfo { stream_id, extra_info, .. }] if stream_id.as_str() == "mine" && extra_info == "later"
    ));
}

#[test]
fn the_others_messages_commands_and_extra_info_become_events() {
    let mut h = online_with_streams();
    let room = RoomId::new("room").unwrap();
    let out = h.msg(ServerMsg::CustomCommand {
        room_id: room.clone(),
        from_user: user("bob"),
        command: "c".into(),
    });
    assert!(matches!(&events(&out)[..], [Event::IMRecvCustomCommand { command, .. }] if command == "c"));
    let out = h.msg(ServerMsg::BarrageMessage {
        room_id: room.clone(),
        message_id: 5,
        send_time_ms: 1,
        from_user: user("bob"),
        message: "b".into(),
    });
    assert!(
        matches!(&events(&out)[..], [Event::IMRecvBarrageMessage { messages, .. }] if messages[0].message_id == "5")
    );
    let mut updated = stream("bob", "theirs");
    updated.extra_info = "new".into();
    let out = h.msg(ServerMsg::StreamExtraInfoUpdate {
        room_id: room.clone(),
        streams: vec![updated.clone()],
    });
    assert_eq!(
        events(&out),
        [Event::RoomStreamExtraInfoUpdate {
            room_id: room.clone(),
            streams: vec![updated]
        }]
    );
    let out = h.msg(ServerMsg::RoomOnlineUserCount {
        room_id: room.clone(),
        count: 3,
    });
    assert_eq!(
        events(&out),
        [Event::RoomOnlineUserCountUpdate {
            room_id: room,
            count: 3
        }]
    );
    // Another room's are ignored.
    let out = h.msg(ServerMsg::RoomOnlineUserCount {
        room_id: RoomId::new("other").unwrap(),
        count: 3,
    });
    assert!(events(&out).is_empty());
}
