//! Deterministic tests of every registry rule of `docs/protocol.md`.

use huddle_proto::{Auth, DeviceState, PROTOCOL_VERSION, Resume, TrackKind, UserName};
use huddle_token::Privileges;

use super::*;

const APP: u32 = 7;
const OTHER_APP: u32 = 8;

fn app_id(n: u32) -> AppId {
    AppId::new(n).unwrap()
}
fn room(r: &str) -> RoomId {
    RoomId::new(r).unwrap()
}
fn sid(s: &str) -> StreamId {
    StreamId::new(s).unwrap()
}
fn user(u: &str) -> User {
    User::new(UserId::new(u).unwrap())
}

fn login_msg(app: u32, room_id: &str, user_id: &str, notify: bool) -> Login {
    Login {
        seq: 1,
        protocol: PROTOCOL_VERSION,
        app_id: app_id(app),
        room_id: room(room_id),
        user: user(user_id),
        auth: Auth::Sign(String::new()),
        user_status_notify: notify,
        max_member_count: 0,
        resume: None,
        setup_active: false,
    }
}

/// A message delivered to one session, broadcasts flattened.
type Msgs = Vec<(SessionId, ServerMsg)>;

/// The registry plus a virtual clock; checks the invariants after every operation.
struct H {
    reg: Registry,
    now: Instant,
    keys: u32,
}

impl H {
    fn new() -> H {
        H::with(Limits::default())
    }

    fn with(limits: Limits) -> H {
        H {
            reg: Registry::new(limits),
            now: Instant::now(),
            keys: 0,
        }
    }

    fn check(&self) {
        if let Err(e) = self.reg.check_invariants() {
            panic!("invariant broken: {e}\n{:#?}", self.reg);
        }
    }

    /// Runs `op`; on error checks that nothing was output.
    fn run<T>(
        &mut self,
        op: impl FnOnce(&mut Registry, &mut Vec<Output>) -> Result<T, HuddleError>,
    ) -> (Result<T, HuddleError>, Vec<Output>) {
        let mut out = Vec::new();
        let r = op(&mut self.reg, &mut out);
        if r.is_err() {
            assert!(out.is_empty(), "an error produced output: {out:?}");
        }
        self.check();
        (r, out)
    }

    fn try_login_with(
        &mut self,
        login: &Login,
        grant: Grant,
    ) -> (Result<Attached, HuddleError>, Vec<Output>) {
        self.keys += 1;
        let key = format!("key{}", self.keys);
        self.run(|r, out| r.login(login, grant, key, out))
    }

    fn login_full(&mut self, login: &Login) -> (Attached, Msgs) {
        let (r, out) = self.try_login_with(login, Grant::default());
        (r.unwrap(), flatten(out).0)
    }

    fn login(&mut self, room_id: &str, user_id: &str, notify: bool) -> SessionId {
        self.login_full(&login_msg(APP, room_id, user_id, notify))
            .0
            .session
    }

    fn publish(&mut self, id: SessionId, stream: &str) -> Result<Msgs, ErrorCode> {
        let (r, out) = self.run(|reg, out| reg.publish(id, 2, &sid(stream), "x", out));
        r.map(|()| flatten(out).0).map_err(|e| e.code)
    }

    fn unpublish(&mut self, id: SessionId, stream: &str) -> Result<Msgs, ErrorCode> {
        let (r, out) = self.run(|reg, out| reg.unpublish(id, 3, &sid(stream), out));
        r.map(|()| flatten(out).0).map_err(|e| e.code)
    }

    fn play(&mut self, id: SessionId, stream: &str) -> Result<Msgs, ErrorCode> {
        let (r, out) = self.run(|reg, out| reg.play(id, 4, &sid(stream), out));
        r.map(|()| flatten(out).0).map_err(|e| e.code)
    }

    fn stop_play(&mut self, id: SessionId, stream: &str) -> Msgs {
        let (r, out) = self.run(|reg, out| reg.stop_play(id, 5, &sid(stream), out));
        r.unwrap();
        flatten(out).0
    }

    fn logout(&mut self, id: SessionId) -> (Msgs, Vec<SessionId>) {
        let (r, out) = self.run(|reg, out| reg.logout(id, 6, out));
        r.unwrap();
        flatten(out)
    }

    fn detach(&mut self, id: SessionId, epoch: u64) -> Option<Detached> {
        let d = self.reg.detach(id, epoch, self.now);
        self.check();
        d
    }

    /// Room `room_id`'s change `change` from node `owner`, as the room reader hands it over:
    /// whether it applied, and what it output.
    fn remote(
        &mut self,
        app: AppId,
        room_id: &RoomId,
        owner: &str,
        change: RoomChange,
    ) -> (bool, Vec<Output>) {
        let mut out = Vec::new();
        let applied = self.reg.remote_update(app, room_id, owner, change, &mut out);
        (applied, out)
    }

    fn expire(&mut self, id: SessionId, epoch: u64) -> (bool, Msgs) {
        let mut out = Vec::new();
        let done = self.reg.expire(id, epoch, self.now, &mut out);
        self.check();
        (done, flatten(out).0)
    }
}

/// Splits outputs into delivered messages (broadcasts flattened) and closes.
fn flatten(out: Vec<Output>) -> (Msgs, Vec<SessionId>) {
    let mut msgs = Vec::new();
    let mut closes = Vec::new();
    for o in out {
        match o {
            Output::Send { to, msg } => msgs.push((to, msg)),
            Output::Broadcast { to, msg } | Output::BroadcastLossy { to, msg } => {
                assert!(!to.is_empty(), "empty broadcast");
                msgs.extend(to.into_iter().map(|t| (t, msg.clone())));
            }
            Output::Close { session } => closes.push(session),
            Output::Media(_) | Output::Cluster(_) => {}
        }
    }
    (msgs, closes)
}

fn to(msgs: &Msgs, id: SessionId) -> Vec<ServerMsg> {
    msgs.iter()
        .filter(|(t, _)| *t == id)
        .map(|(_, m)| m.clone())
        .collect()
}

fn login_ok(msgs: &Msgs, id: SessionId) -> LoginOk {
    match to(msgs, id).into_iter().next() {
        Some(ServerMsg::LoginOk(ok)) => ok,
        other => panic!("expected login_ok, got {other:?}"),
    }
}

fn info(u: &str, s: &str) -> StreamInfo {
    StreamInfo {
        user_id: UserId::new(u).unwrap(),
        user_name: UserName::new(u).unwrap(),
        stream_id: sid(s),
        extra_info: "x".into(),
        mic_state: DeviceState::Open,
        camera_state: DeviceState::Open,
    }
}

fn users_msg(r: &str, t: UpdateType, u: &[&str]) -> ServerMsg {
    ServerMsg::UserUpdate {
        room_id: room(r),
        update_type: t,
        users: u.iter().map(|u| user(u)).collect(),
    }
}

fn streams_msg(r: &str, t: UpdateType, s: &[(&str, &str)]) -> ServerMsg {
    ServerMsg::StreamUpdate {
        room_id: room(r),
        update_type: t,
        streams: s.iter().map(|(u, s)| info(u, s)).collect(),
    }
}

fn play_msg(s: &str, available: bool) -> ServerMsg {
    ServerMsg::PlayUpdate {
        stream_id: sid(s),
        available,
    }
}

fn ok(seq: u32) -> ServerMsg {
    ServerMsg::Ok { seq }
}

#[test]
fn login_creates_the_room_and_answers_login_ok() {
    let mut h = H::new();
    let (a, msgs) = h.login_full(&login_msg(APP, "r1", "alice", true));
    assert_eq!(msgs.len(), 1, "only the login_ok: {msgs:?}");
    let ok = login_ok(&msgs, a.session);
    assert_eq!(ok.seq, 1);
    assert_eq!(ok.session_id, a.session.to_string());
    assert_eq!(ok.resume_key, "key1");
    assert_eq!(ok.room_id, room("r1"));
    assert!(!ok.resumed && !a.resumed);
    assert!(ok.users.is_empty() && ok.streams.is_empty());
    assert_eq!(
        (ok.heartbeat_ms, ok.session_timeout_ms, ok.grace_ms),
        (5000, 15000, 20000)
    );
    assert_eq!(ok.token_expire, None);
    assert_eq!(
        h.reg.stats(),
        Stats {
            sessions: 1,
            detached: 0,
            rooms: 1,
            streams: 0
        }
    );
    let info = h.reg.session(a.session).unwrap();
    assert_eq!(
        (info.app_id, info.room_id, info.user_id.as_str(), info.attached),
        (app_id(APP), room("r1"), "alice", true)
    );
}

#[test]
fn token_expiry_is_reported_in_login_ok() {
    let mut h = H::new();
    let grant = Grant {
        privileges: None,
        token_expire: Some(1234),
    };
    let (r, out) = h.try_login_with(&login_msg(APP, "r1", "alice", false), grant);
    let a = r.unwrap().session;
    assert_eq!(login_ok(&flatten(out).0, a).token_expire, Some(1234));
}

#[test]
fn user_updates_go_only_to_opted_in_sessions() {
    let mut h = H::new();
    let a = h.login("r1", "alice", true);
    let (b, msgs) = h.login_full(&login_msg(APP, "r1", "bob", false));
    let b = b.session;
    assert_eq!(to(&msgs, a), vec![users_msg("r1", UpdateType::Add, &["bob"])]);
    assert!(login_ok(&msgs, b).users.is_empty(), "bob did not opt in");
    let (c, msgs) = h.login_full(&login_msg(APP, "r1", "carol", true));
    let c = c.session;
    assert_eq!(to(&msgs, a), vec![users_msg("r1", UpdateType::Add, &["carol"])]);
    assert!(to(&msgs, b).is_empty());
    assert_eq!(login_ok(&msgs, c).users, vec![user("alice"), user("bob")]);
    // Another room sees nothing.
    let (_, msgs) = h.login_full(&login_msg(APP, "r2", "dave", true));
    assert_eq!(msgs.len(), 1);
    // Logout: Delete to opted-in sessions only.
    let (msgs, closes) = h.logout(b);
    assert_eq!(to(&msgs, b), vec![ok(6)]);
    assert_eq!(closes, vec![b]);
    assert_eq!(to(&msgs, a), vec![users_msg("r1", UpdateType::Delete, &["bob"])]);
    assert_eq!(to(&msgs, c), vec![users_msg("r1", UpdateType::Delete, &["bob"])]);
    assert_eq!(msgs.len(), 3);
}

#[test]
fn stream_updates_go_to_the_room_but_not_the_publisher() {
    let mut h = H::new();
    let a = h.login("r1", "alice", false);
    let b = h.login("r1", "bob", false);
    let c = h.login("r2", "carol", false);
    let msgs = h.publish(a, "s1").unwrap();
    assert_eq!(to(&msgs, a), vec![ok(2)]);
    assert_eq!(
        to(&msgs, b),
        vec![streams_msg("r1", UpdateType::Add, &[("alice", "s1")])]
    );
    assert!(to(&msgs, c).is_empty());
    // Existing streams come in login_ok.
    let (d, msgs) = h.login_full(&login_msg(APP, "r1", "dave", false));
    assert_eq!(login_ok(&msgs, d.session).streams, vec![info("alice", "s1")]);
    let msgs = h.unpublish(a, "s1").unwrap();
    assert_eq!(to(&msgs, a), vec![ok(3)]);
    assert_eq!(
        to(&msgs, b),
        vec![streams_msg("r1", UpdateType::Delete, &[("alice", "s1")])]
    );
    assert_eq!(
        to(&msgs, d.session),
        vec![streams_msg("r1", UpdateType::Delete, &[("alice", "s1")])]
    );
    assert!(to(&msgs, c).is_empty());
    assert_eq!(h.unpublish(a, "s1"), Err(ErrorCode::STREAM_NOT_FOUND));
    assert_eq!(h.unpublish(b, "nope"), Err(ErrorCode::STREAM_NOT_FOUND));
}

#[test]
fn stream_ids_are_unique_per_app_across_rooms() {
    let mut h = H::new();
    let a = h.login("r1", "alice", false);
    let b = h.login("r2", "bob", false);
    h.publish(a, "s1").unwrap();
    assert_eq!(h.publish(b, "s1"), Err(ErrorCode::STREAM_ID_EXISTS));
    // Someone else cannot unpublish it either.
    assert_eq!(h.unpublish(b, "s1"), Err(ErrorCode::STREAM_NOT_FOUND));
    // Another AppID may use the same ID.
    let (o, _) = h.login_full(&login_msg(OTHER_APP, "r1", "alice", false));
    h.publish(o.session, "s1").unwrap();
    // Publishing again from the same session is idempotent: ok, no events.
    let c = h.login("r1", "carol", false);
    let msgs = h.publish(a, "s1").unwrap();
    assert_eq!(msgs, vec![(a, ok(2))]);
    assert!(to(&msgs, c).is_empty());
    assert_eq!(h.reg.stats().streams, 2);
}

#[test]
fn stream_limits() {
    let mut h = H::with(Limits {
        max_streams_per_session: 2,
        max_streams_per_app: 3,
        ..Limits::default()
    });
    let a = h.login("r1", "alice", false);
    let b = h.login("r2", "bob", false);
    h.publish(a, "a1").unwrap();
    h.publish(a, "a2").unwrap();
    assert_eq!(h.publish(a, "a3"), Err(ErrorCode::TOO_MANY_STREAMS));
    h.publish(a, "a2").unwrap(); // idempotent even at the limit
    h.publish(b, "b1").unwrap();
    assert_eq!(h.publish(b, "b2"), Err(ErrorCode::TOO_MANY_STREAMS));
    h.unpublish(a, "a1").unwrap();
    h.publish(b, "b2").unwrap();
    // Another AppID has its own budget.
    let (o, _) = h.login_full(&login_msg(OTHER_APP, "r1", "x", false));
    h.publish(o.session, "o1").unwrap();
}

#[test]
fn default_limits_are_the_documented_ones() {
    let mut h = H::new();
    let a = h.login("r1", "alice", false);
    for i in 0..4 {
        h.publish(a, &format!("s{i}")).unwrap();
    }
    assert_eq!(h.publish(a, "s4"), Err(ErrorCode::TOO_MANY_STREAMS));
    for i in 0..32 {
        h.play(a, &format!("p{i}")).unwrap();
    }
    assert_eq!(h.play(a, "p32"), Err(ErrorCode::TOO_MANY_PLAYS));
    h.play(a, "p0").unwrap(); // idempotent at the limit
    h.stop_play(a, "p0");
    h.play(a, "p32").unwrap();
}

#[test]
fn play_follows_the_stream_across_rooms() {
    let mut h = H::new();
    let p = h.login("r2", "player", false);
    let a = h.login("r1", "alice", false);
    // Before it is published: ok, then available = false.
    assert_eq!(
        h.play(p, "s1").unwrap(),
        vec![(p, ok(4)), (p, play_msg("s1", false))]
    );
    // Idempotent.
    assert_eq!(
        h.play(p, "s1").unwrap(),
        vec![(p, ok(4)), (p, play_msg("s1", false))]
    );
    let msgs = h.publish(a, "s1").unwrap();
    assert_eq!(to(&msgs, p), vec![play_msg("s1", true)], "player in another room");
    assert_eq!(
        h.play(p, "s1").unwrap(),
        vec![(p, ok(4)), (p, play_msg("s1", true))]
    );
    let msgs = h.unpublish(a, "s1").unwrap();
    assert_eq!(to(&msgs, p), vec![play_msg("s1", false)]);
    // The publisher may play its own stream.
    h.play(a, "s1").unwrap();
    let msgs = h.publish(a, "s1").unwrap();
    assert_eq!(to(&msgs, a), vec![ok(2), play_msg("s1", true)]);
    assert_eq!(to(&msgs, p), vec![play_msg("s1", true)]);
    // After stop_play, no more updates.
    assert_eq!(h.stop_play(p, "s1"), vec![(p, ok(5))]);
    assert_eq!(h.stop_play(p, "never"), vec![(p, ok(5))]);
    let msgs = h.unpublish(a, "s1").unwrap();
    assert!(to(&msgs, p).is_empty());
    // Plays do not cross AppIDs.
    let (o, _) = h.login_full(&login_msg(OTHER_APP, "r1", "x", false));
    h.play(o.session, "s1").unwrap();
    let msgs = h.publish(a, "s1").unwrap();
    assert!(to(&msgs, o.session).is_empty());
}

#[test]
fn play_update_when_the_publisher_leaves_vanishes_or_is_kicked() {
    let mut h = H::new();
    let p = h.login("r2", "player", false);
    for how in ["logout", "expire", "kicked", "server"] {
        let a = h.login("r1", "alice", false);
        h.publish(a, "s1").unwrap();
        h.play(p, "s1").unwrap();
        let msgs = match how {
            "logout" => h.logout(a).0,
            "expire" => {
                let d = h.detach(a, 1).unwrap();
                h.now = d.deadline;
                h.expire(a, d.epoch).1
            }
            "kicked" => h.login_full(&login_msg(APP, "r1", "alice", false)).1,
            _ => {
                let mut out = Vec::new();
                assert!(h.reg.kick(a, ErrorCode::KICKED_BY_SERVER, "bye", &mut out));
                h.check();
                flatten(out).0
            }
        };
        assert_eq!(to(&msgs, p), vec![play_msg("s1", false)], "{how}");
        if how == "kicked" {
            // Clean up the new session of alice.
            let (id, _) = h
                .reg
                .sessions
                .iter()
                .find(|(_, s)| s.user.user_id.as_str() == "alice")
                .unwrap();
            let id = *id;
            h.logout(id);
        }
    }
}

#[test]
fn room_full_and_member_count() {
    let mut h = H::with(Limits {
        default_max_member_count: 3,
        ..Limits::default()
    });
    // The first login sets the limit.
    let mut l = login_msg(APP, "r1", "u1", false);
    l.max_member_count = 2;
    h.login_full(&l);
    h.login("r1", "u2", false);
    let (r, _) = h.try_login_with(&login_msg(APP, "r1", "u3", false), Grant::default());
    assert_eq!(r.unwrap_err().code, ErrorCode::ROOM_FULL);
    // Later logins do not change it.
    let mut l = login_msg(APP, "r1", "u3", false);
    l.max_member_count = 10;
    let (r, _) = h.try_login_with(&l, Grant::default());
    assert_eq!(r.unwrap_err().code, ErrorCode::ROOM_FULL);
    // A duplicate login of a member is not refused.
    h.login("r1", "u2", false);
    // 0 means the server default.
    for i in 0..3 {
        h.login("r2", &format!("u{i}"), false);
    }
    let (r, _) = h.try_login_with(&login_msg(APP, "r2", "u9", false), Grant::default());
    assert_eq!(r.unwrap_err().code, ErrorCode::ROOM_FULL);
}

#[test]
fn server_session_limit() {
    let mut h = H::with(Limits {
        max_sessions: 2,
        ..Limits::default()
    });
    h.login("r1", "a", false);
    h.login("r2", "b", false);
    let (r, _) = h.try_login_with(&login_msg(APP, "r3", "c", false), Grant::default());
    assert_eq!(r.unwrap_err().code, ErrorCode::SERVER_BUSY);
    // Replacing a session (duplicate login) does not need a new slot.
    h.login("r2", "b", false);
}

#[test]
fn duplicate_login_kicks_the_older_session() {
    let mut h = H::new();
    let w = h.login("r1", "watcher", true);
    let p = h.login("r9", "player", false);
    let old = h.login("r1", "alice", true);
    h.publish(old, "s1").unwrap();
    h.play(old, "x").unwrap();
    h.play(p, "s1").unwrap();
    let (new, out) = h.try_login_with(&login_msg(APP, "r1", "alice", true), Grant::default());
    let new = new.unwrap().session;
    let (msgs, closes) = flatten(out);
    assert_eq!(
        to(&msgs, old),
        vec![ServerMsg::Kicked {
            code: ErrorCode::KICKED_DUPLICATE_LOGIN,
            message: "the same user ID logged in to this room elsewhere".into()
        }]
    );
    assert_eq!(closes, vec![old]);
    // The watcher sees the stream go, but no user Delete/Add.
    assert_eq!(
        to(&msgs, w),
        vec![streams_msg("r1", UpdateType::Delete, &[("alice", "s1")])]
    );
    assert_eq!(to(&msgs, p), vec![play_msg("s1", false)]);
    let ok = login_ok(&msgs, new);
    assert_eq!(ok.users, vec![user("watcher")]);
    assert!(ok.streams.is_empty());
    assert!(h.reg.session(old).is_none());
    // The older session's plays are gone with it.
    assert!(!h.reg.apps[&app_id(APP)].players.contains_key(&sid("x")));
    assert_eq!(h.reg.stats().sessions, 3);
    // The new session can publish the same stream ID again.
    h.publish(new, "s1").unwrap();
}

#[test]
fn logout_cleans_everything_and_removes_empty_rooms() {
    let mut h = H::new();
    let a = h.login("r1", "alice", true);
    let b = h.login("r1", "bob", false);
    h.publish(a, "s1").unwrap();
    h.publish(a, "s2").unwrap();
    h.play(a, "s3").unwrap();
    let (msgs, closes) = h.logout(a);
    assert_eq!(closes, vec![a]);
    // Bob did not opt in to user updates: only the streams.
    assert_eq!(
        to(&msgs, b),
        vec![streams_msg(
            "r1",
            UpdateType::Delete,
            &[("alice", "s1"), ("alice", "s2")]
        )]
    );
    assert_eq!(
        h.reg.stats(),
        Stats {
            sessions: 1,
            detached: 0,
            rooms: 1,
            streams: 0
        }
    );
    h.logout(b);
    assert_eq!(h.reg.stats(), Stats::default());
    assert!(h.reg.apps.is_empty());
    // Everything on a gone session is 1000002.
    for code in [
        h.publish(a, "s1").unwrap_err(),
        h.unpublish(a, "s1").unwrap_err(),
        h.play(a, "s1").unwrap_err(),
        h.run(|r, out| r.logout(a, 1, out)).0.unwrap_err().code,
        h.run(|r, out| r.stop_play(a, 1, &sid("s"), out))
            .0
            .unwrap_err()
            .code,
        h.run(|r, out| r.renew(a, 1, Grant::default(), out))
            .0
            .unwrap_err()
            .code,
    ] {
        assert_eq!(code, ErrorCode::NOT_LOGGED_IN);
    }
    // A room is created again by its next first login, with that login's limit.
    let mut l = login_msg(APP, "r1", "u1", false);
    l.max_member_count = 1;
    h.login_full(&l);
    let (r, _) = h.try_login_with(&login_msg(APP, "r1", "u2", false), Grant::default());
    assert_eq!(r.unwrap_err().code, ErrorCode::ROOM_FULL);
}

#[test]
fn detached_sessions_stay_for_the_grace_period_then_leave() {
    let mut h = H::with(Limits {
        grace: Duration::from_millis(300),
        ..Limits::default()
    });
    let w = h.login("r1", "watcher", true);
    let p = h.login("r2", "player", false);
    let a = h.login("r1", "alice", true);
    h.publish(a, "s1").unwrap();
    h.play(p, "s1").unwrap();
    let start = h.now;
    let d = h.detach(a, 1).unwrap();
    assert_eq!(d.deadline, start + Duration::from_millis(300));
    assert_eq!(h.reg.stats().detached, 1);
    assert!(!h.reg.session(a).unwrap().attached);
    // Detaching again (stale epoch or already detached) does nothing.
    assert!(h.detach(a, 1).is_none());
    assert!(h.detach(a, d.epoch).is_none());
    // A detached session receives nothing; the others see it as before.
    let b = h.login("r1", "bob", true);
    let msgs = h.publish(b, "s2").unwrap();
    assert!(to(&msgs, a).is_empty());
    assert_eq!(
        to(&msgs, w),
        vec![streams_msg("r1", UpdateType::Add, &[("bob", "s2")])]
    );
    let (c, msgs) = h.login_full(&login_msg(APP, "r1", "carol", true));
    assert_eq!(
        login_ok(&msgs, c.session).users,
        vec![user("alice"), user("bob"), user("watcher")]
    );
    assert_eq!(
        login_ok(&msgs, c.session).streams,
        vec![info("alice", "s1"), info("bob", "s2")]
    );
    // Too early: nothing.
    h.now = start + Duration::from_millis(299);
    assert_eq!(h.expire(a, d.epoch), (false, vec![]));
    // Wrong epoch: nothing.
    h.now = start + Duration::from_millis(300);
    assert_eq!(h.expire(a, d.epoch + 1), (false, vec![]));
    let (done, msgs) = h.expire(a, d.epoch);
    assert!(done);
    assert_eq!(
        to(&msgs, w),
        vec![
            streams_msg("r1", UpdateType::Delete, &[("alice", "s1")]),
            users_msg("r1", UpdateType::Delete, &["alice"])
        ]
    );
    assert_eq!(to(&msgs, p), vec![play_msg("s1", false)]);
    assert!(to(&msgs, a).is_empty());
    assert!(h.reg.session(a).is_none());
    // Expiring twice does nothing.
    assert_eq!(h.expire(a, d.epoch), (false, vec![]));
}

fn resume_login(room_id: &str, user_id: &str, ok: &LoginOk) -> Login {
    let mut l = login_msg(APP, room_id, user_id, true);
    l.seq = 9;
    l.resume = Some(Resume {
        session_id: ok.session_id.clone(),
        resume_key: ok.resume_key.clone(),
    });
    l
}

#[test]
fn resume_within_grace_is_invisible_to_the_others() {
    let mut h = H::new();
    let w = h.login("r1", "watcher", true);
    let (a, msgs) = h.login_full(&login_msg(APP, "r1", "alice", false));
    let first_ok = login_ok(&msgs, a.session);
    let a = a.session;
    h.publish(a, "s1").unwrap();
    h.play(a, "s1").unwrap();
    h.play(a, "later").unwrap();
    let d = h.detach(a, 1).unwrap();
    // Meanwhile the world changes: a stream appears that alice plays.
    let b = h.login("r2", "bob", false);
    h.publish(b, "later").unwrap();
    let (r, msgs) = h.login_full(&resume_login("r1", "alice", &first_ok));
    assert_eq!(
        r,
        Attached {
            session: a,
            epoch: d.epoch + 1,
            resumed: true
        }
    );
    let ok = login_ok(&msgs, a);
    assert!(ok.resumed);
    assert_eq!(ok.seq, 9);
    assert_eq!(ok.session_id, first_ok.session_id);
    assert_eq!(ok.resume_key, first_ok.resume_key);
    assert_eq!(
        ok.users,
        vec![user("watcher")],
        "user_status_notify of the resuming login applies"
    );
    assert_eq!(ok.streams, vec![info("alice", "s1")]);
    // Then the state of every played stream.
    assert_eq!(to(&msgs, a)[1..], [play_msg("later", true), play_msg("s1", true)]);
    assert!(
        to(&msgs, w).is_empty() && to(&msgs, b).is_empty(),
        "others see nothing: {msgs:?}"
    );
    // The old grace timer finds another epoch.
    h.now += Duration::from_secs(60);
    assert_eq!(h.expire(a, d.epoch), (false, vec![]));
    assert!(h.reg.session(a).unwrap().attached);
}

#[test]
fn resume_of_an_attached_session_replaces_its_connection() {
    let mut h = H::new();
    let (a, msgs) = h.login_full(&login_msg(APP, "r1", "alice", false));
    let first_ok = login_ok(&msgs, a.session);
    let (r, _) = h.login_full(&resume_login("r1", "alice", &first_ok));
    assert_eq!(
        r,
        Attached {
            session: a.session,
            epoch: 2,
            resumed: true
        }
    );
    // The old connection breaking later does not detach the resumed session.
    assert!(h.detach(a.session, 1).is_none());
    assert!(h.reg.session(a.session).unwrap().attached);
    assert!(h.detach(a.session, 2).is_some());
}

#[test]
fn resume_that_does_not_match_starts_a_new_session() {
    let mut h = H::new();
    let (a, msgs) = h.login_full(&login_msg(APP, "r1", "alice", false));
    let first_ok = login_ok(&msgs, a.session);
    let a = a.session;
    h.publish(a, "s1").unwrap();
    // Another room or user: a new session (in the other room).
    let (r, _) = h.login_full(&resume_login("r2", "alice", &first_ok));
    assert!(!r.resumed);
    assert_ne!(r.session, a);
    let (r, _) = h.login_full(&resume_login("r1", "bob", &first_ok));
    assert!(!r.resumed);
    // A wrong key or a garbage session ID: a new session, which kicks the old one of that user.
    let mut bad = first_ok.clone();
    bad.resume_key = "wrong".into();
    let (r, out) = h.try_login_with(&resume_login("r1", "alice", &bad), Grant::default());
    let r = r.unwrap();
    assert!(!r.resumed);
    assert_eq!(flatten(out).1, vec![a], "the old session is kicked");
    let mut garbage = first_ok.clone();
    garbage.session_id = "not a number".into();
    let (r2, _) = h.login_full(&resume_login("r1", "alice", &garbage));
    assert!(!r2.resumed);
    // A session that expired cannot be resumed.
    let (c, msgs) = h.login_full(&login_msg(APP, "r3", "carol", false));
    let c_ok = login_ok(&msgs, c.session);
    let d = h.detach(c.session, 1).unwrap();
    h.now = d.deadline;
    assert!(h.expire(c.session, d.epoch).0);
    let (r, _) = h.login_full(&resume_login("r3", "carol", &c_ok));
    assert!(!r.resumed);
    assert_ne!(r.session, c.session);
}

#[test]
fn publish_checks_token_privileges() {
    let mut h = H::new();
    let grant = |publish: Option<bool>, list: Option<Vec<&str>>| Grant {
        privileges: Some(Privileges {
            room_id: String::new(),
            login: None,
            publish,
            stream_id_list: list.map(|l| l.into_iter().map(String::from).collect()),
        }),
        token_expire: Some(1),
    };
    let (a, _) = h.try_login_with(&login_msg(APP, "r1", "alice", false), grant(Some(false), None));
    let a = a.unwrap().session;
    assert_eq!(h.publish(a, "s1"), Err(ErrorCode::PUBLISH_FORBIDDEN));
    let (b, _) = h.try_login_with(
        &login_msg(APP, "r1", "bob", false),
        grant(Some(true), Some(vec!["b1"])),
    );
    let b = b.unwrap().session;
    assert_eq!(h.publish(b, "b2"), Err(ErrorCode::PUBLISH_FORBIDDEN));
    h.publish(b, "b1").unwrap();
    // Renewing the token replaces the privileges.
    let (r, _) = h.run(|reg, out| reg.renew(a, 7, grant(None, None), out));
    r.unwrap();
    h.publish(a, "s1").unwrap();
    // A renewal must allow what the session publishes now: refused, nothing changes.
    let (r, out) = h.run(|reg, out| reg.renew(a, 8, grant(Some(false), None), out));
    assert_eq!(r.unwrap_err().code, ErrorCode::PUBLISH_FORBIDDEN);
    assert!(out.is_empty());
    h.publish(a, "s2").unwrap();
    let (r, _) = h.run(|reg, out| reg.renew(a, 9, grant(Some(true), Some(vec!["s1"])), out));
    assert_eq!(r.unwrap_err().code, ErrorCode::PUBLISH_FORBIDDEN);
    let (r, _) = h.run(|reg, out| reg.unpublish(a, 10, &sid("s2"), out));
    r.unwrap();
    let (r, out) = h.run(|reg, out| reg.renew(a, 11, grant(Some(true), Some(vec!["s1"])), out));
    r.unwrap();
    assert_eq!(flatten(out).0, vec![(a, ok(11))]);
    assert_eq!(h.publish(a, "s2"), Err(ErrorCode::PUBLISH_FORBIDDEN));
}

#[test]
fn an_expired_token_ends_the_session_and_a_renewal_moves_the_expiry() {
    let mut h = H::new();
    let w = h.login("r1", "watcher", true);
    let grant = |expire| Grant {
        privileges: None,
        token_expire: Some(expire),
    };
    let (a, _) = h.try_login_with(&login_msg(APP, "r1", "alice", false), grant(100));
    let a = a.unwrap().session;
    h.publish(a, "s1").unwrap();
    assert_eq!(h.reg.token_expire(a), Some(100));
    assert_eq!(h.reg.token_expire(w), None);
    // The warning names the token it is for; a stale one is a no-op.
    let mut out = Vec::new();
    assert!(h.reg.warn_token(a, 100, 80, &mut out));
    assert_eq!(
        flatten(out).0,
        vec![(
            a,
            ServerMsg::TokenWillExpire {
                expire: 100,
                remain_secs: 20
            }
        )]
    );
    let mut out = Vec::new();
    assert!(!h.reg.warn_token(a, 99, 80, &mut out));
    assert!(!h.reg.warn_token(w, 100, 80, &mut out));
    // Valid while now < expire; sessions without a token never expire.
    assert!(!h.reg.expire_token(a, 99, &mut out));
    assert!(!h.reg.expire_token(w, i64::MAX, &mut out));
    assert!(out.is_empty());
    // A renewal moves the expiry.
    let (r, _) = h.run(|reg, out| reg.renew(a, 5, grant(200), out));
    r.unwrap();
    assert!(!h.reg.expire_token(a, 150, &mut out));
    assert!(!h.reg.warn_token(a, 100, 150, &mut out));
    assert!(out.is_empty());
    // At the expiry: kicked (1002056), the stream and the user deleted once.
    assert!(h.reg.expire_token(a, 200, &mut out));
    let (sends, closes) = flatten(out);
    assert_eq!(closes, vec![a]);
    assert!(matches!(
        &sends[0],
        (s, ServerMsg::Kicked { code, .. }) if *s == a && *code == ErrorCode::KICKED_TOKEN_EXPIRED
    ));
    let to_w: Vec<_> = sends
        .iter()
        .filter(|(s, _)| *s == w)
        .map(|(_, m)| m.clone())
        .collect();
    assert_eq!(to_w.len(), 2, "{to_w:?}");
    assert!(
        matches!(&to_w[0], ServerMsg::StreamUpdate { update_type: UpdateType::Delete, streams, .. } if streams.len() == 1)
    );
    assert!(matches!(
        &to_w[1],
        ServerMsg::UserUpdate {
            update_type: UpdateType::Delete,
            ..
        }
    ));
    assert_eq!(h.reg.stats().sessions, 1);
    assert_eq!(h.reg.stats().streams, 0);
    h.reg.check_invariants().unwrap();
    // Gone: a second expiry is a no-op.
    let mut out = Vec::new();
    assert!(!h.reg.expire_token(a, 300, &mut out));
    assert!(out.is_empty());
}

#[test]
fn server_kick_ends_the_session_like_logout() {
    let mut h = H::new();
    let w = h.login("r1", "watcher", true);
    let a = h.login("r1", "alice", false);
    let mut out = Vec::new();
    assert!(h.reg.kick(a, ErrorCode::KICKED_BY_SERVER, "admin", &mut out));
    h.check();
    let (msgs, closes) = flatten(out);
    assert_eq!(
        to(&msgs, a),
        vec![ServerMsg::Kicked {
            code: ErrorCode::KICKED_BY_SERVER,
            message: "admin".into()
        }]
    );
    assert_eq!(closes, vec![a]);
    assert_eq!(
        to(&msgs, w),
        vec![users_msg("r1", UpdateType::Delete, &["alice"])]
    );
    assert!(
        !h.reg
            .kick(a, ErrorCode::KICKED_BY_SERVER, "again", &mut Vec::new())
    );
}

/// A tiny deterministic PRNG for the random walk.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

#[test]
fn random_operations_keep_every_invariant() {
    let mut h = H::with(Limits {
        max_streams_per_session: 2,
        max_plays_per_session: 3,
        max_streams_per_app: 5,
        max_sessions: 12,
        default_max_member_count: 4,
        ..Limits::default()
    });
    let mut rng = Lcg(42);
    let users = ["a", "b", "c", "d", "e"];
    let rooms = ["r1", "r2", "r3"];
    let streams = ["s1", "s2", "s3", "s4", "s5", "s6"];
    // (session, epoch, resume info) of sessions we know about, live or not.
    let mut known: Vec<(SessionId, u64, LoginOk)> = Vec::new();
    let mut detached: Vec<(SessionId, Detached)> = Vec::new();
    let mut totals = (0usize, 0usize, 0usize);
    for step in 0..20_000 {
        let pick = |rng: &mut Lcg, known: &Vec<(SessionId, u64, LoginOk)>| {
            if known.is_empty() {
                SessionId(999)
            } else {
                known[rng.next(known.len())].0
            }
        };
        match rng.next(10) {
            0 | 1 => {
                let app = if rng.next(4) == 0 { OTHER_APP } else { APP };
                let mut l = login_msg(app, rooms[rng.next(3)], users[rng.next(5)], rng.next(2) == 0);
                if !known.is_empty() && rng.next(3) == 0 {
                    let k = &known[rng.next(known.len())].2;
                    l.resume = Some(Resume {
                        session_id: k.session_id.clone(),
                        resume_key: k.resume_key.clone(),
                    });
                }
                let (r, out) = h.try_login_with(&l, Grant::default());
                if let Ok(att) = r {
                    let msgs = flatten(out).0;
                    known.push((att.session, att.epoch, login_ok(&msgs, att.session)));
                }
            }
            2 => {
                let id = pick(&mut rng, &known);
                let _ = h.publish(id, streams[rng.next(6)]);
            }
            3 => {
                let id = pick(&mut rng, &known);
                let _ = h.unpublish(id, streams[rng.next(6)]);
            }
            4 => {
                let id = pick(&mut rng, &known);
                let _ = h.play(id, streams[rng.next(6)]);
            }
            5 => {
                let id = pick(&mut rng, &known);
                let _ = h.run(|r, out| r.stop_play(id, 1, &sid(streams[rng.next(6)]), out));
            }
            6 => {
                let id = pick(&mut rng, &known);
                let _ = h.run(|r, out| r.logout(id, 1, out));
            }
            7 if !known.is_empty() => {
                let (id, epoch, _) = known[rng.next(known.len())].clone();
                if let Some(d) = h.detach(id, epoch) {
                    detached.push((id, d));
                }
            }
            8 if !detached.is_empty() => {
                let (id, d) = detached.swap_remove(rng.next(detached.len()));
                h.now = h.now.max(d.deadline);
                let _ = h.expire(id, d.epoch);
            }
            _ => h.now += Duration::from_millis(rng.next(100) as u64),
        }
        // Keep the epochs we know current so detaches hit sometimes.
        for k in known.iter_mut() {
            if let Some(s) = h.reg.session(k.0)
                && s.attached
                && rng.next(2) == 0
            {
                k.1 = s.epoch;
            }
        }
        known.retain(|k| h.reg.session(k.0).is_some() || step % 7 != 0);
        let st = h.reg.stats();
        totals.0 += st.sessions;
        totals.1 += st.streams;
        totals.2 += st.detached;
    }
    // The walk keeps a populated registry (averages x100), or it would prove little.
    let avg = (totals.0 / 200, totals.1 / 200, totals.2 / 200);
    assert!(avg.0 > 300 && avg.1 > 100 && avg.2 > 50, "{avg:?}");
}

/// Session IDs are random: neither counted up nor small, so that one says nothing of another.
#[test]
fn session_ids_are_random_not_sequential() {
    let mut h = H::new();
    let ids: Vec<u64> = (0..64)
        .map(|i| h.login("r", &format!("u{i}"), false).get())
        .collect();
    let distinct: BTreeSet<u64> = ids.iter().copied().collect();
    assert_eq!(distinct.len(), ids.len(), "IDs repeat: {ids:?}");
    let steps: BTreeSet<u64> = ids.windows(2).map(|w| w[1].wrapping_sub(w[0])).collect();
    assert!(steps.len() > 60, "IDs advance in a pattern: {ids:?}");
    // Random 64-bit numbers: all but about one in four billion use the upper half.
    assert!(
        ids.iter().filter(|&&id| id > u64::from(u32::MAX)).count() >= 60,
        "small IDs: {ids:?}"
    );
}

/// The media plane's commands among `out`, in order.
fn media(out: &[Output]) -> Vec<MediaCommand> {
    out.iter()
        .filter_map(|o| match o {
            Output::Media(c) => Some(c.clone()),
            _ => None,
        })
        .collect()
}

impl H {
    /// Both clocks at `self.now`, the wall clock reading `unix_ms`.
    fn clock(&self, unix_ms: u64) -> Clock {
        Clock {
            at: self.now,
            unix_ms,
        }
    }

    /// Runs the timers due at `self.now` and wall time `unix_ms`.
    fn tick(&mut self, unix_ms: u64) -> (usize, Vec<Output>) {
        let mut out = Vec::new();
        let ran = self.reg.handle_timeout(self.clock(unix_ms), &mut out);
        self.check();
        (ran, out)
    }
}

#[test]
fn a_grace_timer_ends_a_detached_session_on_virtual_time_and_a_resume_disarms_it() {
    let grace = Duration::from_millis(300);
    let mut h = H::with(Limits {
        grace,
        ..Limits::default()
    });
    let w = h.login("r1", "watcher", true);
    let (a, msgs) = h.login_full(&login_msg(APP, "r1", "alice", true));
    let a_ok = login_ok(&msgs, a.session);
    let a = a.session;
    let b = h.login("r1", "bob", false);
    h.publish(a, "s1").unwrap();
    h.play(w, "s1").unwrap();
    assert_eq!(
        h.reg.poll_timeout(),
        Timeout::default(),
        "no timer while all are attached"
    );
    let start = h.now;
    let d = h.detach(a, 1).unwrap();
    h.detach(b, 1).unwrap();
    assert_eq!(h.reg.poll_timeout().at, Some(start + grace));
    assert_eq!(h.reg.poll_timeout().unix_ms, None);
    // Alice comes back within the grace period and breaks again: her first timer is gone, the
    // new one ends later than bob's.
    h.now += Duration::from_millis(100);
    let (r, _) = h.try_login_with(&resume_login("r1", "alice", &a_ok), Grant::default());
    assert!(r.unwrap().resumed);
    let d2 = h.detach(a, d.epoch + 1).unwrap();
    assert_eq!(
        h.reg.poll_timeout().at,
        Some(start + grace),
        "bob's timer is first"
    );
    // One tick early: nothing.
    h.now = start + grace - Duration::from_millis(1);
    assert_eq!(h.tick(0), (0, vec![]));
    // Due: bob leaves as on logout, with his media closed (one timer ran: alice's first one was
    // disarmed by her resume).
    h.now = start + grace;
    let (ran, out) = h.tick(0);
    assert_eq!(ran, 1);
    assert_eq!(media(&out), vec![MediaCommand::SessionGone { session: b }]);
    assert_eq!(
        flatten(out.clone()).0,
        vec![(w, users_msg("r1", UpdateType::Delete, &["bob"]))]
    );
    assert!(h.reg.session(b).is_none());
    assert_eq!(h.reg.poll_timeout().at, Some(d2.deadline));
    // Alice's later detachment ends at its own deadline: her stream goes, her player is told.
    h.now = d2.deadline;
    let (ran, out) = h.tick(0);
    assert_eq!(ran, 1);
    assert_eq!(media(&out), vec![MediaCommand::SessionGone { session: a }]);
    let msgs = flatten(out).0;
    assert!(msgs.contains(&(w, play_msg("s1", false))), "{msgs:?}");
    assert!(msgs.contains(&(w, streams_msg("r1", UpdateType::Delete, &[("alice", "s1")]))));
    assert!(msgs.contains(&(w, users_msg("r1", UpdateType::Delete, &["alice"]))));
    assert_eq!(h.reg.poll_timeout(), Timeout::default());
    assert_eq!(h.reg.stats().sessions, 1);
}

#[test]
fn token_timers_warn_then_expire_on_virtual_wall_time_and_follow_renewals() {
    let mut h = H::new();
    let w = h.login("r1", "watcher", true);
    let grant = |expire| Grant {
        privileges: None,
        token_expire: Some(expire),
    };
    let (a, _) = h.try_login_with(&login_msg(APP, "r1", "alice", false), grant(100));
    let a = a.unwrap().session;
    h.publish(a, "s1").unwrap();
    // The warning is due TOKEN_WARNING (30 s) before the expiry, by the wall clock.
    assert_eq!(h.reg.poll_timeout().unix_ms, Some(70_000));
    assert_eq!(h.reg.poll_timeout().at, None);
    assert_eq!(h.tick(69_999), (0, vec![]));
    let (ran, out) = h.tick(70_000);
    assert_eq!(ran, 1);
    assert_eq!(
        flatten(out).0,
        vec![(
            a,
            ServerMsg::TokenWillExpire {
                expire: 100,
                remain_secs: 30
            }
        )]
    );
    // Then the expiry; a renewal before it moves both steps to the new token.
    assert_eq!(h.reg.poll_timeout().unix_ms, Some(100_000));
    let (r, _) = h.run(|reg, out| reg.renew(a, 5, grant(200), out));
    r.unwrap();
    assert_eq!(h.reg.poll_timeout().unix_ms, Some(170_000));
    assert_eq!(
        h.tick(100_000),
        (0, vec![]),
        "the old token's expiry is forgotten"
    );
    // A detached session is not warned; a resume re-arms the warning (due at once: 10 s left).
    let d = h.detach(a, 1).unwrap();
    let (ran, out) = h.tick(170_000);
    assert_eq!((ran, out), (1, vec![]));
    assert_eq!(h.reg.poll_timeout().unix_ms, Some(200_000));
    // The wall-clock expiry comes before the grace period ends: kicked (1002056) even while
    // detached, the stream and the user deleted, the media closed; the grace timer goes with it.
    assert!(d.deadline > h.now);
    let (ran, out) = h.tick(200_000);
    assert_eq!(ran, 1);
    assert_eq!(media(&out), vec![MediaCommand::SessionGone { session: a }]);
    let (sends, closes) = flatten(out);
    assert_eq!(closes, vec![a]);
    assert!(matches!(
        &sends[0],
        (s, ServerMsg::Kicked { code, .. }) if *s == a && *code == ErrorCode::KICKED_TOKEN_EXPIRED
    ));
    assert!(sends.contains(&(w, users_msg("r1", UpdateType::Delete, &["alice"]))));
    assert_eq!(h.reg.poll_timeout(), Timeout::default());
    assert_eq!(h.reg.stats().streams, 0);
}

#[test]
fn a_resume_rearms_the_token_warning_missed_while_detached() {
    let mut h = H::new();
    let grant = |expire| Grant {
        privileges: None,
        token_expire: Some(expire),
    };
    let login = login_msg(APP, "r1", "alice", false);
    let (a, out) = h.try_login_with(&login, grant(100));
    let a = a.unwrap();
    let ok = login_ok(&flatten(out).0, a.session);
    h.detach(a.session, a.epoch).unwrap();
    // The warning falls due while detached: nobody to tell.
    assert_eq!(h.tick(75_000), (1, vec![]));
    let (r, _) = h.try_login_with(&resume_login("r1", "alice", &ok), grant(100));
    assert!(r.unwrap().resumed);
    // Re-armed by the resume, and overdue: given at the next tick, with the seconds left.
    assert_eq!(h.reg.poll_timeout().unix_ms, Some(70_000));
    let (ran, out) = h.tick(80_000);
    assert_eq!(ran, 1);
    assert_eq!(
        flatten(out).0,
        vec![(
            a.session,
            ServerMsg::TokenWillExpire {
                expire: 100,
                remain_secs: 20
            }
        )]
    );
}

#[test]
fn unpublish_stop_play_and_logout_tell_the_media_plane_in_order() {
    let mut h = H::new();
    let a = h.login("r1", "alice", false);
    let b = h.login("r1", "bob", false);
    h.publish(a, "s1").unwrap();
    h.play(b, "s1").unwrap();
    let (r, out) = h.run(|reg, out| reg.stop_play(b, 5, &sid("s1"), out));
    r.unwrap();
    assert_eq!(
        media(&out),
        vec![MediaCommand::ClosePlay {
            session: b,
            app: app_id(APP),
            stream_id: sid("s1")
        }]
    );
    let (r, out) = h.run(|reg, out| reg.unpublish(a, 3, &sid("s1"), out));
    r.unwrap();
    assert_eq!(
        media(&out),
        vec![MediaCommand::ClosePublish {
            session: a,
            app: app_id(APP),
            stream_id: sid("s1")
        }]
    );
    // An error outputs nothing, the media plane included.
    let (r, out) = h.run(|reg, out| reg.unpublish(a, 3, &sid("s1"), out));
    assert!(r.is_err() && out.is_empty());
    let (r, out) = h.run(|reg, out| reg.logout(a, 6, out));
    r.unwrap();
    assert_eq!(media(&out), vec![MediaCommand::SessionGone { session: a }]);
}

// ----- rooms across nodes -----

/// The cluster commands among `out`.
fn cluster(out: &[Output]) -> Vec<ClusterCommand> {
    out.iter()
        .filter_map(|o| match o {
            Output::Cluster(c) => Some(c.clone()),
            _ => None,
        })
        .collect()
}

/// Feeds node `from`'s changes (its cluster outputs) to registry `to` as the room reader does.
fn relay(from: &str, out: &[Output], to: &mut H) -> Msgs {
    let mut msgs = Vec::new();
    for c in cluster(out) {
        if let ClusterCommand::Change { app, room, change } = c {
            let (_, o) = to.remote(app, &room, from, change);
            to.check();
            msgs.extend(flatten(o).0);
        }
    }
    msgs
}

/// Node `h`'s part of room `r` as a snapshot for another node, owned by `owner`.
fn snapshot_of(h: &H, r: &str, owner: &str) -> RemoteRoom {
    let local = h
        .reg
        .local_rooms()
        .into_iter()
        .find(|l| l.room == room(r))
        .expect("the node has the room");
    RemoteRoom {
        cursor: "5-0".into(),
        seq: 5,
        users: local.users.into_iter().map(|u| (owner.to_string(), u)).collect(),
        streams: local
            .streams
            .into_iter()
            .map(|s| (owner.to_string(), s))
            .collect(),
        extra: Vec::new(),
    }
}

fn login_remote(h: &mut H, r: &str, u: &str, remote: RemoteRoom) -> (SessionId, Msgs, Vec<Output>) {
    let (res, out) = h.run(|reg, out| {
        reg.login_with(
            &login_msg(APP, r, u, true),
            Grant::default(),
            "k".into(),
            Some(remote),
            out,
        )
    });
    let id = res.unwrap().session;
    (id, flatten(out.clone()).0, out)
}

#[test]
fn a_user_on_another_node_sees_the_whole_room_and_its_changes_in_order() {
    let (mut a, mut b) = (H::new(), H::new());
    let alice = a.login("r", "alice", true);
    a.publish(alice, "s-alice").unwrap();
    // Bob logs in on node B with A's part of the room: login_ok lists both, and B follows it.
    let (bob, msgs, out) = login_remote(&mut b, "r", "bob", snapshot_of(&a, "r", "A|1"));
    let ok = login_ok(&msgs, bob);
    assert_eq!(ok.users, vec![user("alice")]);
    assert_eq!(ok.streams, vec![info("alice", "s-alice")]);
    let cmds = cluster(&out);
    assert_eq!(
        cmds[0],
        ClusterCommand::Follow {
            app: app_id(APP),
            room: room("r"),
            cursor: "5-0".into(),
            seq: 5
        }
    );
    assert_eq!(
        cmds[1],
        ClusterCommand::Change {
            app: app_id(APP),
            room: room("r"),
            change: RoomChange::UserAdd(user("bob"))
        }
    );
    // A's members see bob join, then his stream, in that order.
    let seen = relay("B|1", &out, &mut a);
    assert_eq!(seen, vec![(alice, users_msg("r", UpdateType::Add, &["bob"]))]);
    let (r, out) = b.run(|reg, out| reg.publish(bob, 2, &sid("s-bob"), "x", out));
    r.unwrap();
    assert_eq!(
        relay("B|1", &out, &mut a),
        vec![(alice, streams_msg("r", UpdateType::Add, &[("bob", "s-bob")]))]
    );
    assert_eq!(a.reg.room(app_id(APP), &room("r")).unwrap().users.len(), 2);
    // Alice unpublishes, then logs out: B sees the stream go, then the user; A stops following.
    let (r, out) = a.run(|reg, out| reg.unpublish(alice, 3, &sid("s-alice"), out));
    r.unwrap();
    assert_eq!(
        relay("A|1", &out, &mut b),
        vec![(bob, streams_msg("r", UpdateType::Delete, &[("alice", "s-alice")]))]
    );
    let (r, out) = a.run(|reg, out| reg.logout(alice, 6, out));
    r.unwrap();
    assert!(cluster(&out).contains(&ClusterCommand::Unfollow {
        app: app_id(APP),
        room: room("r")
    }));
    assert_eq!(
        relay("A|1", &out, &mut b),
        vec![(bob, users_msg("r", UpdateType::Delete, &["alice"]))]
    );
    assert!(!a.reg.follows(app_id(APP), &room("r")));
    let view = b.reg.room(app_id(APP), &room("r")).unwrap();
    assert_eq!(view.users, vec![user("bob")]);
    assert_eq!(view.streams, vec![info("bob", "s-bob")]);
}

#[test]
fn a_dead_nodes_part_leaves_by_sync_and_stale_or_foreign_deletes_change_nothing() {
    let (mut a, mut b) = (H::new(), H::new());
    let alice = a.login("r", "alice", true);
    a.publish(alice, "s1").unwrap();
    let (bob, _, _) = login_remote(&mut b, "r", "bob", snapshot_of(&a, "r", "A|1"));
    // A delete by an owner that does not hold the entry (an old lease of A) changes nothing.
    let (applied, out) = b.remote(
        app_id(APP),
        &room("r"),
        "A|0",
        RoomChange::UserDelete(UserId::new("alice").unwrap()),
    );
    assert!(!applied);
    assert!(out.is_empty());
    // A re-add by A's new lease (it registered anew) shows nothing either.
    let (applied, mut out) = b.remote(app_id(APP), &room("r"), "A|2", RoomChange::UserAdd(user("alice")));
    assert!(applied);
    assert!(out.is_empty(), "{out:?}");
    // Node A died: a fresh snapshot without it removes its stream, then its user.
    b.reg
        .remote_sync(app_id(APP), &room("r"), RemoteRoom::default(), &mut out);
    b.check();
    assert_eq!(
        flatten(out).0,
        vec![
            (bob, streams_msg("r", UpdateType::Delete, &[("alice", "s1")])),
            (bob, users_msg("r", UpdateType::Delete, &["alice"])),
        ]
    );
    assert_eq!(
        b.reg.room(app_id(APP), &room("r")).unwrap().users,
        vec![user("bob")]
    );
    // Events of a room this node does not follow are ignored.
    let (applied, out) = b.remote(
        app_id(APP),
        &room("elsewhere"),
        "A|1",
        RoomChange::UserAdd(user("x")),
    );
    assert!(!applied);
    assert!(out.is_empty());
}

#[test]
fn the_member_limit_counts_every_node_and_a_user_on_two_nodes_shows_once() {
    let mut a = H::new();
    let mut remote = RemoteRoom::default();
    for u in ["u1", "u2"] {
        remote.users.push(("B|1".into(), user(u)));
    }
    let mut login = login_msg(APP, "r", "u3", true);
    login.max_member_count = 2;
    let (r, _) =
        a.run(|reg, out| reg.login_with(&login, Grant::default(), "k".into(), Some(remote.clone()), out));
    assert_eq!(r.unwrap_err().code, ErrorCode::ROOM_FULL);
    // u1 is on B already: logging in here too is no new member.
    let mut login = login_msg(APP, "r", "u1", true);
    login.max_member_count = 2;
    let (r, out) =
        a.run(|reg, out| reg.login_with(&login, Grant::default(), "k".into(), Some(remote.clone()), out));
    let u1 = r.unwrap().session;
    let ok = login_ok(&flatten(out).0, u1);
    assert_eq!(ok.users, vec![user("u2")], "itself is not listed, u2 is");
    let view = a.reg.room(app_id(APP), &room("r")).unwrap();
    assert_eq!(view.users, vec![user("u1"), user("u2")]);
    // B's u1 leaves: u1 is still here, nobody sees a delete.
    let (_, out) = a.remote(
        app_id(APP),
        &room("r"),
        "B|1",
        RoomChange::UserDelete(UserId::new("u1").unwrap()),
    );
    assert!(flatten(out).0.is_empty());
    assert_eq!(a.reg.room(app_id(APP), &room("r")).unwrap().users.len(), 2);
}

/// `network_quality` goes to the other attached sessions of the same room only, once a second
/// at most per session.
#[test]
fn network_quality_is_relayed_to_the_room_and_rate_limited() {
    use StreamQualityLevel::{Bad, Good};
    let mut h = H::new();
    let a = h.login("q", "alice", false);
    let b = h.login("q", "bob", false);
    let c = h.login("q", "carol", true);
    let elsewhere = h.login("other", "dave", true);
    let t0 = h.now;
    let report = |h: &mut H, id, seq, at| h.run(|reg, out| reg.network_quality(id, seq, Good, Bad, at, out));

    let (r, out) = report(&mut h, a, 9, t0);
    r.unwrap();
    let msgs = flatten(out).0;
    assert_eq!(to(&msgs, a), vec![ServerMsg::Ok { seq: 9 }]);
    let relayed = ServerMsg::NetworkQuality {
        user_id: UserId::new("alice").unwrap(),
        upstream: Good,
        downstream: Bad,
    };
    // Whatever their user status notify says: the SDK decides what to show.
    assert_eq!(to(&msgs, b), vec![relayed.clone()]);
    assert_eq!(to(&msgs, c), vec![relayed.clone()]);
    assert!(to(&msgs, elsewhere).is_empty());

    // Again within the interval: refused, nothing relayed (`run` checks that errors output
    // nothing).
    let (r, _) = report(&mut h, a, 10, t0 + Duration::from_millis(500));
    assert_eq!(r.unwrap_err().code, ErrorCode::QUALITY_REPORT_TOO_FREQUENT);
    // Another session has its own budget; the first one's comes back after the interval.
    report(&mut h, b, 3, t0 + Duration::from_millis(500)).0.unwrap();
    let (r, out) = report(&mut h, a, 11, t0 + QUALITY_REPORT_MIN_INTERVAL);
    r.unwrap();
    assert_eq!(to(&flatten(out).0, b), vec![relayed]);

    // A detached session is not sent to; a session that is gone cannot report.
    h.detach(b, 1).unwrap();
    let (r, out) = report(&mut h, c, 4, t0 + Duration::from_secs(5));
    r.unwrap();
    let msgs = flatten(out).0;
    assert!(to(&msgs, b).is_empty());
    assert_eq!(to(&msgs, a).len(), 1);
    h.logout(c);
    let (r, _) = report(&mut h, c, 5, t0 + Duration::from_secs(9));
    assert_eq!(r.unwrap_err().code, ErrorCode::NOT_LOGGED_IN);
}

#[test]
fn the_server_api_stops_a_stream_and_finds_sessions() {
    let mut h = H::new();
    let a = h.login("r1", "alice", false);
    let b = h.login("r1", "bob", false);
    let _c = h.login("r2", "carol", false);
    h.publish(a, "s1").unwrap();
    assert_eq!(h.reg.room_ids(app_id(APP)), vec![room("r1"), room("r2")]);
    assert_eq!(
        h.reg
            .session_of(app_id(APP), &room("r1"), &UserId::new("bob").unwrap()),
        Some(b)
    );
    assert_eq!(
        h.reg
            .session_of(app_id(APP), &room("r2"), &UserId::new("bob").unwrap()),
        None
    );
    let mut in_r1 = h.reg.room_sessions(app_id(APP), &room("r1"));
    in_r1.sort();
    let mut expect = vec![a, b];
    expect.sort();
    assert_eq!(in_r1, expect);
    // Not in that room: nothing happens.
    let (stopped, out) = h.run(|r, out| {
        Ok::<_, HuddleError>(r.stop_stream(
            app_id(APP),
            &room("r2"),
            &sid("s1"),
            ErrorCode::STREAM_STOPPED_BY_SERVER,
            "x",
            out,
        ))
    });
    assert!(!stopped.unwrap() && out.is_empty());
    let (stopped, out) = h.run(|r, out| {
        Ok::<_, HuddleError>(r.stop_stream(
            app_id(APP),
            &room("r1"),
            &sid("s1"),
            ErrorCode::STREAM_STOPPED_BY_SERVER,
            "stopped",
            out,
        ))
    });
    assert!(stopped.unwrap());
    let msgs = flatten(out).0;
    assert_eq!(
        to(&msgs, a),
        vec![ServerMsg::MediaState {
            stream_id: sid("s1"),
            kind: huddle_proto::MediaRole::Publish,
            state: huddle_proto::PeerState::Closed,
            code: ErrorCode::STREAM_STOPPED_BY_SERVER,
            message: "stopped".into(),
        }]
    );
    assert_eq!(
        to(&msgs, b),
        vec![streams_msg("r1", UpdateType::Delete, &[("alice", "s1")])]
    );
    assert_eq!(h.unpublish(a, "s1"), Err(ErrorCode::STREAM_NOT_FOUND));
    h.publish(a, "s1").unwrap();
}

/// The same user logging in to the room on another node kicks the older session (1002050), as
/// on one node. Its leave is silent for the others (the user stays, on the newer node); its
/// stream leaves. A node re-adding its own user (a renewal) kicks nobody.
#[test]
fn a_login_of_the_same_user_on_another_node_kicks_the_older_session() {
    let (mut a, mut b) = (H::new(), H::new());
    let alice = a.login("r", "alice", true);
    // A reads its own add of alice back from the room's history: her login has its place there.
    a.reg
        .own_update(app_id(APP), &room("r"), &RoomChange::UserAdd(user("alice")));
    a.publish(alice, "s-alice").unwrap();
    let carol = a.login("r", "carol", true);
    // Alice logs in again on node B (her client moved): B lists A's part of the room.
    let (alice_b, _, out) = login_remote(&mut b, "r", "alice", snapshot_of(&a, "r", "A|1"));
    // A renewal of the same user by node A itself would not kick alice on B.
    let (_, o) = b.remote(app_id(APP), &room("r"), "A|2", RoomChange::UserAdd(user("alice")));
    assert!(flatten(o).1.is_empty(), "a renewal kicks nobody");
    // A hears of B's login: its alice is kicked and closed; carol sees her stream go, not her.
    let mut o = Vec::new();
    for c in cluster(&out) {
        if let ClusterCommand::Change { app, room, change } = c {
            o.extend(a.remote(app, &room, "B|1", change).1);
            a.check();
        }
    }
    let cmds = cluster(&o);
    let (msgs, closes) = flatten(o);
    assert_eq!(closes, vec![alice]);
    assert_eq!(
        to(&msgs, alice),
        vec![ServerMsg::Kicked {
            code: ErrorCode::KICKED_DUPLICATE_LOGIN,
            message: "the same user ID logged in to this room elsewhere".into(),
        }]
    );
    assert_eq!(
        to(&msgs, carol),
        vec![streams_msg("r", UpdateType::Delete, &[("alice", "s-alice")])]
    );
    // A tells the store its session left (the store ignores the user's delete: B owns the
    // entry now).
    assert!(cmds.contains(&ClusterCommand::Change {
        app: app_id(APP),
        room: room("r"),
        change: RoomChange::StreamDelete(sid("s-alice")),
    }));
    let view = a.reg.room(app_id(APP), &room("r")).unwrap();
    assert_eq!(view.users, vec![user("alice"), user("carol")]);
    assert!(view.streams.is_empty());
    assert!(!a.reg.publishes_here(app_id(APP), &sid("s-alice")));
    // B's alice lives on and may publish the ID again.
    let (r, _) = b.run(|reg, out| reg.publish(alice_b, 2, &sid("s-alice"), "", out));
    r.unwrap();
}

/// A stream published again on another node before its old node's entry was reaped (its
/// publisher moved): the members saw it already and see nothing; its players on a third node
/// pull it from the new node, and on the new node they stop pulling and play it locally, in
/// both cases keeping their connections (`PullMoved`, not `Unpull`).
#[test]
fn a_stream_that_moves_to_another_node_is_pulled_from_there() {
    let (mut a, mut b, mut c) = (H::new(), H::new(), H::new());
    let alice = a.login("r", "alice", true);
    a.publish(alice, "s1").unwrap();
    let snap = snapshot_of(&a, "r", "A|1");
    let (carol, _, _) = login_remote(&mut c, "r", "carol", snap.clone());
    let pulls = |h: &mut H, id| {
        let (r, out) = h.run(|reg, out| reg.play(id, 4, &sid("s1"), out));
        r.unwrap();
        media(&out)
    };
    assert!(matches!(&pulls(&mut c, carol)[..], [MediaCommand::Pull { owner, .. }] if owner == "A|1"));
    let (bob, _, _) = login_remote(&mut b, "r", "bob", snap);
    assert!(matches!(&pulls(&mut b, bob)[..], [MediaCommand::Pull { owner, .. }] if owner == "A|1"));
    // Node A died; alice publishes s1 again on node B before A's entry is reaped.
    let (alice_b, _, _) = login_remote(&mut b, "r", "alice", RemoteRoom::default());
    let (r, out) = b.run(|reg, out| reg.publish(alice_b, 2, &sid("s1"), "x", out));
    r.unwrap();
    assert!(
        media(&out).contains(&MediaCommand::PullMoved {
            app: app_id(APP),
            stream_id: sid("s1"),
            owner: None,
        }),
        "B plays it locally now: {out:?}"
    );
    assert!(
        !flatten(out.clone())
            .0
            .iter()
            .any(|(_, m)| matches!(m, ServerMsg::StreamUpdate { .. })),
        "bob knew the stream"
    );
    let mut o = Vec::new();
    for cmd in cluster(&out) {
        if let ClusterCommand::Change { app, room, change } = cmd {
            o.extend(c.remote(app, &room, "B|1", change).1);
            c.check();
        }
    }
    assert_eq!(
        media(&o),
        vec![MediaCommand::PullMoved {
            app: app_id(APP),
            stream_id: sid("s1"),
            owner: Some("B|1".into()),
        }]
    );
    assert!(flatten(o).0.is_empty(), "carol knew the stream");
    // A's late reap of its old entry changes nothing (the entry is B's).
    let (applied, o) = c.remote(
        app_id(APP),
        &room("r"),
        "A|1",
        RoomChange::StreamDelete(sid("s1")),
    );
    assert!(!applied);
    assert!(o.is_empty());
}

/// After the store lost its data, a snapshot taken before a node put its part back lacks that
/// part: merged, it removes nothing; the full sync after the settling removes what is gone.
#[test]
fn a_merged_snapshot_only_adds_and_a_full_sync_then_removes() {
    let (mut a, mut b) = (H::new(), H::new());
    let alice = a.login("r", "alice", true);
    a.publish(alice, "s1").unwrap();
    let (bob, _, _) = login_remote(&mut b, "r", "bob", snapshot_of(&a, "r", "A|1"));
    let mut carol = RemoteRoom::default();
    carol.users.push(("C|2".into(), user("carol")));
    let mut out = Vec::new();
    b.reg
        .remote_merge(app_id(APP), &room("r"), carol.clone(), &mut out);
    b.check();
    assert_eq!(
        flatten(out).0,
        vec![(bob, users_msg("r", UpdateType::Add, &["carol"]))]
    );
    let view = b.reg.room(app_id(APP), &room("r")).unwrap();
    assert_eq!(view.users, vec![user("alice"), user("bob"), user("carol")]);
    assert_eq!(view.streams, vec![info("alice", "s1")]);
    let mut out = Vec::new();
    b.reg.remote_sync(app_id(APP), &room("r"), carol, &mut out);
    assert_eq!(
        flatten(out).0,
        vec![
            (bob, streams_msg("r", UpdateType::Delete, &[("alice", "s1")])),
            (bob, users_msg("r", UpdateType::Delete, &["alice"])),
        ]
    );
}

// ----- mute: device states and play mutes -----

fn device_msg(s: &str, track: TrackKind, state: DeviceState) -> ServerMsg {
    ServerMsg::RemoteDeviceState {
        stream_id: sid(s),
        track,
        state,
    }
}

#[test]
fn a_publishers_mute_reaches_its_players_and_late_players_across_nodes() {
    let (mut a, mut b) = (H::new(), H::new());
    let alice = a.login("r", "alice", true);
    let carol = a.login("r", "carol", true);
    let dave = a.login("r", "dave", true);
    a.publish(alice, "s1").unwrap();
    a.play(carol, "s1").unwrap();
    // Bob on node B plays alice's stream too.
    let (bob, _, _) = login_remote(&mut b, "r", "bob", snapshot_of(&a, "r", "A|1"));
    let (r, _) = b.run(|reg, out| reg.play(bob, 4, &sid("s1"), out));
    r.unwrap();

    let now = a.now;
    let (r, out) = a.run(|reg, out| {
        reg.set_device_state(
            alice,
            7,
            &sid("s1"),
            TrackKind::Audio,
            DeviceState::Mute,
            now,
            out,
        )
    });
    r.unwrap();
    // Alice gets `ok`, her player carol the state; dave, who does not play it, nothing.
    assert_eq!(
        flatten(out.clone()).0,
        vec![
            (alice, ServerMsg::Ok { seq: 7 }),
            (carol, device_msg("s1", TrackKind::Audio, DeviceState::Mute))
        ]
    );
    let _ = dave;
    // The cluster sees it as the stream's new info; node B tells its player bob, nobody else.
    let mut muted = info("alice", "s1");
    muted.mic_state = DeviceState::Mute;
    assert!(cluster(&out).contains(&ClusterCommand::Change {
        app: app_id(APP),
        room: room("r"),
        change: RoomChange::StreamAdd(muted.clone()),
    }));
    assert_eq!(
        relay("A|1", &out, &mut b),
        vec![(bob, device_msg("s1", TrackKind::Audio, DeviceState::Mute))]
    );
    assert_eq!(
        b.reg.room(app_id(APP), &room("r")).unwrap().streams,
        vec![muted.clone()]
    );
    // The same state again changes nothing (ok alone).
    let (r, out) = a.run(|reg, out| {
        reg.set_device_state(
            alice,
            8,
            &sid("s1"),
            TrackKind::Audio,
            DeviceState::Mute,
            now,
            out,
        )
    });
    r.unwrap();
    assert_eq!(flatten(out).0, vec![(alice, ServerMsg::Ok { seq: 8 })]);

    // A late player on each node hears the state when it starts playing; a late joiner sees it
    // in the room's stream list.
    let msgs = a.play(dave, "s1").unwrap();
    assert_eq!(
        to(&msgs, dave),
        vec![
            ServerMsg::Ok { seq: 4 },
            ServerMsg::PlayUpdate {
                stream_id: sid("s1"),
                available: true
            },
            device_msg("s1", TrackKind::Audio, DeviceState::Mute),
        ]
    );
    let (erin, msgs, _) = login_remote(&mut b, "r", "erin", snapshot_of(&a, "r", "A|1"));
    assert_eq!(login_ok(&msgs, erin).streams, vec![muted]);
    let (r, out) = b.run(|reg, out| reg.play(erin, 4, &sid("s1"), out));
    r.unwrap();
    assert!(
        flatten(out)
            .0
            .contains(&(erin, device_msg("s1", TrackKind::Audio, DeviceState::Mute)))
    );

    // Unmuting the microphone and muting the camera: each change alone.
    let (r, out) = a.run(|reg, out| {
        reg.set_device_state(
            alice,
            9,
            &sid("s1"),
            TrackKind::Video,
            DeviceState::Mute,
            now,
            out,
        )
    });
    r.unwrap();
    let seen = relay("A|1", &out, &mut b);
    assert!(seen.contains(&(bob, device_msg("s1", TrackKind::Video, DeviceState::Mute))));
    assert!(
        !seen
            .iter()
            .any(|(_, m)| matches!(m, ServerMsg::StreamUpdate { .. })),
        "{seen:?}"
    );
}

#[test]
fn mute_requests_for_streams_not_ones_own_or_too_fast_are_refused_with_codes() {
    let mut h = H::new();
    let alice = h.login("r", "alice", false);
    let bob = h.login("r", "bob", false);
    h.publish(alice, "s1").unwrap();
    let now = h.now;
    // Bob does not publish s1, and nobody publishes s2.
    for (who, s) in [(bob, "s1"), (alice, "s2")] {
        let (r, _) = h.run(|reg, out| {
            reg.set_device_state(who, 1, &sid(s), TrackKind::Audio, DeviceState::Mute, now, out)
        });
        assert_eq!(r.unwrap_err().code, ErrorCode::MUTE_NOT_PUBLISHING);
    }
    // Muting a stream one does not play.
    assert_eq!(
        h.reg.check_mute_play(bob, &sid("s1"), now).unwrap_err().code,
        ErrorCode::MUTE_NOT_PLAYING
    );
    h.play(bob, "s1").unwrap();
    assert_eq!(h.reg.check_mute_play(bob, &sid("s1"), now), Ok(app_id(APP)));
    // 20 changes a second (play mutes and device states together); the 21st is refused, and a
    // second later they are allowed again.
    for i in 1..MUTE_CHANGES_PER_SECOND {
        h.reg
            .check_mute_play(bob, &sid("s1"), now + Duration::from_millis(u64::from(i)))
            .unwrap();
    }
    assert_eq!(
        h.reg
            .check_mute_play(bob, &sid("s1"), now + Duration::from_millis(500))
            .unwrap_err()
            .code,
        ErrorCode::MUTE_TOO_FREQUENT
    );
    h.reg
        .check_mute_play(bob, &sid("s1"), now + Duration::from_secs(1))
        .unwrap();
    let (r, _) = h.run(|reg, out| {
        for i in 0..MUTE_CHANGES_PER_SECOND {
            let state = if i % 2 == 0 {
                DeviceState::Mute
            } else {
                DeviceState::Open
            };
            reg.set_device_state(alice, 1, &sid("s1"), TrackKind::Audio, state, now, out)?;
        }
        Ok(())
    });
    r.unwrap();
    let (r, _) = h.run(|reg, out| {
        reg.set_device_state(
            alice,
            1,
            &sid("s1"),
            TrackKind::Audio,
            DeviceState::Mute,
            now,
            out,
        )
    });
    assert_eq!(r.unwrap_err().code, ErrorCode::MUTE_TOO_FREQUENT);
}

mod im;

/// Two logins of one user on two nodes at the same moment, each node's add of the user in the
/// room's history in the order A, then B: node A reads its own add back and then B's, and kicks
/// its session (the earlier login); node B reads A's add while its own is still on its way, and
/// keeps its session (the later login). One winner, whatever order each node reads in.
#[test]
fn simultaneous_logins_of_one_user_on_two_nodes_kick_only_the_earlier() {
    let (mut a, mut b) = (H::new(), H::new());
    let (app, r) = (app_id(APP), room("r"));
    let alice_a = a.login("r", "alice", true);
    let alice_b = b.login("r", "alice", true);
    // B reads A's add before its own came back: nothing happens on B.
    let (applied, o) = b.remote(app, &r, "A|1", RoomChange::UserAdd(user("alice")));
    assert!(applied);
    assert!(o.is_empty(), "{o:?}");
    b.reg.own_update(app, &r, &RoomChange::UserAdd(user("alice")));
    b.check();
    // A reads its own add, then B's: alice on A is kicked.
    a.reg.own_update(app, &r, &RoomChange::UserAdd(user("alice")));
    let (_, o) = a.remote(app, &r, "B|1", RoomChange::UserAdd(user("alice")));
    a.check();
    let (msgs, closes) = flatten(o);
    assert_eq!(closes, vec![alice_a]);
    assert_eq!(
        to(&msgs, alice_a),
        vec![ServerMsg::Kicked {
            code: ErrorCode::KICKED_DUPLICATE_LOGIN,
            message: "the same user ID logged in to this room elsewhere".into(),
        }]
    );
    // A's session leaving deletes nothing the others see (B's entry holds alice); B's session
    // stays, and a later login of alice on a third node kicks it, since B's add came back.
    let (applied, _) = b.remote(
        app,
        &r,
        "A|1",
        RoomChange::UserDelete(UserId::new("alice").unwrap()),
    );
    assert!(!applied);
    assert_eq!(b.reg.room(app, &r).unwrap().users, vec![user("alice")]);
    let (_, o) = b.remote(app, &r, "C|1", RoomChange::UserAdd(user("alice")));
    assert_eq!(flatten(o).1, vec![alice_b]);
}

/// The last player here of a pulled stream leaves: the pull goes idle, not stopped, and lingers
/// for `pull_linger` from the shell's clock. A player who comes back within it keeps the pull
/// (a `Pull` the puller finds running; no `Unpull`); once the linger has passed with nobody
/// back, `Unpull`. A stream that leaves, moves to another node or is published here while its
/// pull lingers stops the pull at once. With no linger, the pull stops at once.
#[test]
fn an_idle_pull_lingers_before_it_stops() {
    let mut a = H::new();
    let mut b = H::new();
    let alice = a.login("r", "alice", true);
    a.publish(alice, "s1").unwrap();
    let snap = snapshot_of(&a, "r", "A|1");
    let (bob, _, _) = login_remote(&mut b, "r", "bob", snap.clone());
    let (app, s1) = (app_id(APP), sid("s1"));
    let linger = b.reg.limits().pull_linger;
    assert_eq!(linger, Duration::from_secs(5), "the default");
    let play = |h: &mut H, id| {
        let (r, out) = h.run(|reg, out| reg.play(id, 4, &sid("s1"), out));
        r.unwrap();
        media(&out)
    };
    // What a stop asks of the pull (the player's own PC closes too).
    let stop = |h: &mut H, id| {
        let (r, out) = h.run(|reg, out| reg.stop_play(id, 5, &sid("s1"), out));
        r.unwrap();
        let mut m = media(&out);
        m.retain(|c| !matches!(c, MediaCommand::ClosePlay { .. }));
        m
    };
    let idle = vec![MediaCommand::PullIdle {
        app,
        stream_id: s1.clone(),
    }];
    let unpull = MediaCommand::Unpull {
        app,
        stream_id: s1.clone(),
    };
    assert!(matches!(&play(&mut b, bob)[..], [MediaCommand::Pull { .. }]));
    // Bob stops: the pull is idle; the shell arms its linger.
    assert_eq!(stop(&mut b, bob), idle);
    let t0 = b.now;
    let mut o = Vec::new();
    b.reg.linger_pull(app, &s1, t0, &mut o);
    assert!(o.is_empty(), "{o:?}");
    assert!(b.reg.lingers(app, &s1));
    assert_eq!(b.reg.poll_timeout().at, Some(t0 + linger));
    b.now = t0 + linger - Duration::from_millis(1);
    assert!(media(&b.tick(0).1).is_empty(), "not before the linger ends");
    // Bob plays again within the linger: the pull goes on, and no timer stops it.
    assert!(matches!(&play(&mut b, bob)[..], [MediaCommand::Pull { .. }]));
    assert!(!b.reg.lingers(app, &s1));
    b.now = t0 + linger * 3;
    assert!(media(&b.tick(0).1).is_empty());
    // Bob leaves for good: once the linger has passed, the pull stops.
    assert_eq!(stop(&mut b, bob), idle);
    let t1 = b.now;
    b.reg.linger_pull(app, &s1, t1, &mut Vec::new());
    b.now = t1 + linger;
    assert_eq!(media(&b.tick(0).1), vec![unpull.clone()]);
    assert!(!b.reg.lingers(app, &s1));
    // A stream that leaves while its pull lingers: the pull stops at once.
    play(&mut b, bob);
    stop(&mut b, bob);
    b.reg.linger_pull(app, &s1, b.now, &mut Vec::new());
    let (_, o) = b.remote(app, &room("r"), "A|1", RoomChange::StreamDelete(s1.clone()));
    assert!(media(&o).contains(&unpull), "{o:?}");
    assert!(!b.reg.lingers(app, &s1));
    assert!(b.reg.poll_timeout().at.is_none_or(|at| at > b.now + linger));
    // Published again on node C while a pull from A lingers: the pull from A stops (a player
    // here would pull it from C anew).
    b.remote(app, &room("r"), "A|1", RoomChange::StreamAdd(info("alice", "s1")));
    play(&mut b, bob);
    stop(&mut b, bob);
    b.reg.linger_pull(app, &s1, b.now, &mut Vec::new());
    let (_, o) = b.remote(app, &room("r"), "C|1", RoomChange::StreamAdd(info("alice", "s1")));
    assert_eq!(media(&o), vec![unpull.clone()]);
    // Published here while a pull of it lingers: the link stops, the local publisher stays.
    play(&mut b, bob);
    stop(&mut b, bob);
    b.reg.linger_pull(app, &s1, b.now, &mut Vec::new());
    let (alice_b, _, _) = login_remote(&mut b, "r", "alice", RemoteRoom::default());
    let (r, out) = b.run(|reg, out| reg.publish(alice_b, 2, &sid("s1"), "x", out));
    r.unwrap();
    assert!(
        media(&out).contains(&MediaCommand::PullMoved {
            app,
            stream_id: s1.clone(),
            owner: None,
        }),
        "{out:?}"
    );
    assert!(!b.reg.lingers(app, &s1));
    // No linger configured: an idle pull stops at once.
    let mut c = H::with(Limits {
        pull_linger: Duration::ZERO,
        ..Limits::default()
    });
    let (carol, _, _) = login_remote(&mut c, "r", "carol", snap);
    play(&mut c, carol);
    assert_eq!(stop(&mut c, carol), idle);
    let mut o = Vec::new();
    c.reg.linger_pull(app, &s1, c.now, &mut o);
    assert_eq!(media(&o), vec![unpull]);
    assert!(!c.reg.lingers(app, &s1));
}
