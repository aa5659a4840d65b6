//! Test helpers: a recording event handler, waiting for events, engines against a real server.
#![allow(dead_code)]

pub mod netsim;
pub mod quality;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::{Duration, Instant};

use huddle::{
    Engine, EngineConfig, EngineProfile, ErrorCode, Event, EventHandler, PlayerState, PublisherState,
    RoomConfig, RoomStateChangedReason, UpdateType, User, UserId,
};
use huddle_server::{AppConfig, BackgroundServer, ServerConfig};

/// How long a test waits for an event before failing.
pub const WAIT: Duration = Duration::from_secs(10);

/// An event handler that records every event into a channel: all but the periodic quality
/// events (which would break the tests that check exact event sequences), unless made
/// [`Recorder::with_quality`].
pub struct Recorder {
    tx: Mutex<Sender<Event>>,
    quality: bool,
}

impl Recorder {
    pub fn new() -> (Arc<Recorder>, Events) {
        Self::make(false)
    }

    /// A recorder that keeps the quality events too.
    pub fn with_quality() -> (Arc<Recorder>, Events) {
        Self::make(true)
    }

    fn make(quality: bool) -> (Arc<Recorder>, Events) {
        let (tx, rx) = channel();
        (
            Arc::new(Recorder {
                tx: Mutex::new(tx),
                quality,
            }),
            Events {
                rx,
                seen: Vec::new(),
                unclaimed: VecDeque::new(),
            },
        )
    }

    fn record(&self, e: Event) {
        let _ = self.tx.lock().unwrap().send(e);
    }
}

impl EventHandler for Recorder {
    fn on_event(&self, event: &Event) {
        if self.quality || !event.is_quality() {
            self.record(event.clone());
        }
    }
}

/// The events a [`Recorder`] saw, with waiting helpers.
///
/// A wait claims the first unclaimed event that matches, whether it arrived before the wait or
/// during it; events it passes over stay unclaimed for later waits (the state waits below also
/// claim the older states of the same thing).
pub struct Events {
    rx: Receiver<Event>,
    /// Every event received so far, in order.
    pub seen: Vec<Event>,
    /// Indexes into `seen` of the events no wait has claimed.
    unclaimed: VecDeque<usize>,
}

impl Events {
    /// Waits for an unclaimed event matching `pred`.
    pub fn wait(&mut self, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
        let i = self.wait_index(what, WAIT, pred);
        self.seen[i].clone()
    }

    /// Like [`Self::wait`] with a timeout of its own.
    pub fn wait_for(&mut self, what: &str, timeout: Duration, pred: impl Fn(&Event) -> bool) -> Event {
        let i = self.wait_index(what, timeout, pred);
        self.seen[i].clone()
    }

    fn wait_index(&mut self, what: &str, timeout: Duration, pred: impl Fn(&Event) -> bool) -> usize {
        if let Some(pos) = self.unclaimed.iter().position(|i| pred(&self.seen[*i])) {
            return self.unclaimed.remove(pos).unwrap();
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(e) => {
                    let matched = pred(&e);
                    self.seen.push(e);
                    if matched {
                        return self.seen.len() - 1;
                    }
                    self.unclaimed.push_back(self.seen.len() - 1);
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("timed out waiting for {what}; saw {:#?}", self.seen)
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("no more events while waiting for {what}; saw {:#?}", self.seen)
                }
            }
        }
    }

    /// Waits for a state event matching `pred`, and claims the older unclaimed events of the
    /// same `kind` (earlier states of the same thing) with it.
    fn wait_state(
        &mut self,
        what: &str,
        kind: impl Fn(&Event) -> bool,
        pred: impl Fn(&Event) -> bool,
    ) -> Event {
        let at = self.wait_index(what, WAIT, pred);
        let seen = &self.seen;
        self.unclaimed.retain(|i| *i > at || !kind(&seen[*i]));
        self.seen[at].clone()
    }

    /// Waits until `cond` holds for every event received so far (checked after each new one).
    pub fn wait_until(&mut self, what: &str, cond: impl Fn(&[Event]) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !cond(&self.seen) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(e) => {
                    self.seen.push(e);
                    self.unclaimed.push_back(self.seen.len() - 1);
                }
                Err(_) => panic!("timed out waiting for {what}; saw {:#?}", self.seen),
            }
        }
    }

    /// Receives every event already delivered, without waiting; returns them.
    pub fn drain(&mut self) -> Vec<Event> {
        let mut v = Vec::new();
        while let Ok(e) = self.rx.try_recv() {
            self.seen.push(e.clone());
            self.unclaimed.push_back(self.seen.len() - 1);
            v.push(e);
        }
        v
    }

    /// Waits for a room state change with this reason; returns its error code.
    pub fn room(&mut self, reason: RoomStateChangedReason) -> ErrorCode {
        let kind = |e: &Event| matches!(e, Event::RoomStateChanged { .. });
        let pred = |e: &Event| matches!(e, Event::RoomStateChanged { reason: r, .. } if *r == reason);
        match self.wait_state(&format!("room {reason:?}"), kind, pred) {
            Event::RoomStateChanged { error_code, .. } => error_code,
            _ => unreachable!(),
        }
    }

    /// Waits for the publisher to reach `state`; returns the error code.
    pub fn publisher(&mut self, stream: &str, state: PublisherState) -> ErrorCode {
        let kind = |e: &Event| matches!(e, Event::PublisherStateUpdate { stream_id, .. } if stream_id.as_str() == stream);
        let pred = |e: &Event| matches!(e, Event::PublisherStateUpdate { stream_id, state: s, .. } if stream_id.as_str() == stream && *s == state);
        match self.wait_state(&format!("publisher {stream} {state:?}"), kind, pred) {
            Event::PublisherStateUpdate { error_code, .. } => error_code,
            _ => unreachable!(),
        }
    }

    /// Waits for the room's `KickOut` with `code`, and for the publisher of `publishing` to stop
    /// with the same code.
    pub fn kicked_out(&mut self, code: ErrorCode, publishing: &str) {
        assert_eq!(self.room(RoomStateChangedReason::KickOut), code);
        assert_eq!(self.publisher(publishing, PublisherState::NoPublish), code);
    }

    /// Waits for a player to reach `state`; returns the error code.
    pub fn player(&mut self, stream: &str, state: PlayerState) -> ErrorCode {
        let kind = |e: &Event| matches!(e, Event::PlayerStateUpdate { stream_id, .. } if stream_id.as_str() == stream);
        let pred = |e: &Event| matches!(e, Event::PlayerStateUpdate { stream_id, state: s, .. } if stream_id.as_str() == stream && *s == state);
        match self.wait_state(&format!("player {stream} {state:?}"), kind, pred) {
            Event::PlayerStateUpdate { error_code, .. } => error_code,
            _ => unreachable!(),
        }
    }

    /// Waits for a stream update of this type that lists `stream`.
    pub fn stream(&mut self, update: UpdateType, stream: &str) {
        self.wait(&format!("stream {update:?} {stream}"), |e| {
            matches!(e, Event::RoomStreamUpdate { update_type, streams, .. }
                if *update_type == update && streams.iter().any(|s| s.stream_id.as_str() == stream))
        });
    }

    /// Waits for a user update of this type that lists `user`.
    pub fn user(&mut self, update: UpdateType, user: &str) {
        self.wait(&format!("user {update:?} {user}"), |e| {
            matches!(e, Event::RoomUserUpdate { update_type, users, .. }
                if *update_type == update && users.iter().any(|u| u.user_id.as_str() == user))
        });
    }

    /// Every user update received so far (seen and pending), as (type, user IDs).
    pub fn user_updates(&mut self) -> Vec<(UpdateType, Vec<String>)> {
        self.drain();
        self.seen
            .iter()
            .filter_map(|e| match e {
                Event::RoomUserUpdate {
                    update_type, users, ..
                } => Some((
                    *update_type,
                    users.iter().map(|u| u.user_id.to_string()).collect(),
                )),
                _ => None,
            })
            .collect()
    }
}

/// The app every test uses.
pub const APP_ID: u32 = 4242;

pub fn app() -> AppConfig {
    huddle_server::test_app(APP_ID)
}

/// A server on 127.0.0.1 with a free port and the test app.
pub fn server() -> BackgroundServer {
    BackgroundServer::start(ServerConfig::for_tests(vec![app()])).expect("server starts")
}

pub fn user(id: &str) -> User {
    User::new(UserId::new(id).unwrap())
}

/// A profile for the test app at `server`.
pub fn profile(server: &BackgroundServer) -> EngineProfile {
    let mut p = EngineProfile::new(APP_ID, server.ws_url());
    p.app_sign = Some(app().app_sign.to_hex());
    p.config = fast_config();
    p
}

/// Short timings, so that failures show quickly.
pub fn fast_config() -> EngineConfig {
    let mut c = EngineConfig::default();
    c.login_timeout = Duration::from_secs(5);
    c.attempt_timeout = Duration::from_secs(2);
    c.logout_timeout = Duration::from_millis(500);
    c
}

/// An engine with a recorder.
pub fn engine_with(profile: EngineProfile) -> (Engine, Events) {
    let engine = Engine::create(profile).expect("engine");
    let (rec, events) = Recorder::new();
    engine.set_event_handler(rec);
    (engine, events)
}

/// An engine with a recorder that keeps the quality events too.
pub fn engine_with_quality(profile: EngineProfile) -> (Engine, Events) {
    let engine = Engine::create(profile).expect("engine");
    let (rec, events) = Recorder::with_quality();
    engine.set_event_handler(rec);
    (engine, events)
}

pub fn notify() -> RoomConfig {
    let mut c = RoomConfig::default();
    c.is_user_status_notify = true;
    c
}

/// An engine logged in to `room` as `user_id` (user status notify as given).
pub fn logged_in(
    server: &BackgroundServer,
    room: &str,
    user_id: &str,
    config: RoomConfig,
) -> (Engine, Events) {
    let (engine, mut events) = engine_with(profile(server));
    engine.login_room(room, user(user_id), config).unwrap();
    assert_eq!(events.room(RoomStateChangedReason::Logined), ErrorCode::OK);
    (engine, events)
}

/// The streams the app knows of after `events` (Add and Delete applied in order).
pub fn known_streams(events: &[Event]) -> std::collections::BTreeSet<String> {
    let mut set = std::collections::BTreeSet::new();
    for e in events {
        if let Event::RoomStreamUpdate {
            update_type, streams, ..
        } = e
        {
            for s in streams {
                match update_type {
                    UpdateType::Add => set.insert(s.stream_id.to_string()),
                    UpdateType::Delete => set.remove(s.stream_id.as_str()),
                };
            }
        }
    }
    set
}

/// The users the app knows of after `events` (Add and Delete applied in order).
pub fn known_users(events: &[Event]) -> std::collections::BTreeSet<String> {
    let mut set = std::collections::BTreeSet::new();
    for e in events {
        if let Event::RoomUserUpdate {
            update_type, users, ..
        } = e
        {
            for u in users {
                match update_type {
                    UpdateType::Add => set.insert(u.user_id.to_string()),
                    UpdateType::Delete => set.remove(u.user_id.as_str()),
                };
            }
        }
    }
    set
}

/// Pulls custom-rendered audio for `d`; returns it.
pub fn pull(engine: &huddle::Engine, d: std::time::Duration) -> Vec<i16> {
    let end = std::time::Instant::now() + d;
    let mut all = Vec::new();
    let mut buf = [0i16; 4800];
    while std::time::Instant::now() < end {
        let n = engine.fetch_audio_frame(&mut buf);
        all.extend_from_slice(&buf[..n]);
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    all
}

/// An engine without camera, logged in to `room` as `user_id`.
pub fn voice_engine(server: &huddle_server::BackgroundServer, room: &str, user_id: &str) -> (Engine, Events) {
    let (engine, events) = engine_with(profile(server));
    engine.enable_camera(false);
    engine
        .login_room(room, user(user_id), RoomConfig::default())
        .unwrap();
    (engine, events)
}

/// Waits for the first audio frame of `stream`.
pub fn first_audio_frame(events: &mut Events, stream: &str) {
    events.wait(
        &format!("first audio frame of {stream}"),
        |e| matches!(e, Event::PlayerRecvAudioFirstFrame { stream_id } if stream_id.as_str() == stream),
    );
}

/// One mouth-to-ear time: a loud 20 ms 1 kHz burst pushed into `publisher`'s custom capture,
/// found in `player`'s custom render (both engines already publishing and playing one stream;
/// what the render held before the push is dropped). Fails after 2 s without it.
pub fn mouth_to_ear(publisher: &Engine, player: &Engine) -> Duration {
    let burst: Vec<i16> = (0..960)
        .map(|i| ((i as f64 * 2.0 * std::f64::consts::PI * 1000.0 / 48_000.0).sin() * 20_000.0) as i16)
        .collect();
    let mut buf = [0i16; 4800];
    while player.fetch_audio_frame(&mut buf) > 0 {}
    let t0 = Instant::now();
    publisher.push_audio_frame(&burst).unwrap();
    loop {
        let n = player.fetch_audio_frame(&mut buf);
        let now = Instant::now();
        if let Some(k) = buf[..n].iter().position(|s| s.abs() > 3000) {
            // The chunk just fetched was rendered at `now` (within the 1 ms poll); sample k of
            // it plays k / 48 ms after the chunk's start.
            return now + Duration::from_secs_f64(k as f64 / 48_000.0) - t0;
        }
        assert!(t0.elapsed() < Duration::from_secs(2), "burst never heard");
        std::thread::sleep(Duration::from_millis(1));
    }
}
