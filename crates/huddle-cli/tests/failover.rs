//! A cluster of real `huddle serve --redis … --node-id …` processes on a real `redis-server`,
//! with SDK clients that name every node (`fallback_servers`): a node killed with SIGKILL in
//! the middle of a call, Redis restarted, a duplicate login across nodes, a node drained with
//! SIGTERM, then a churn soak. One test, one set of processes: each phase starts from what the
//! one before left, so the suite pays for the processes once.
//!
//! Every wait is bounded; the nodes and Redis are killed when the test ends, however it ends.
//! The nodes' logs are kept in `$TMPDIR/huddle-cli-failover-…/` when it fails (removed when it
//! passes).

mod common;
#[path = "../../huddle-server/tests/common/redis.rs"]
#[allow(dead_code)]
mod redis;

use std::path::Path;
use std::process::Command;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{APP_ID, APP_SIGN, Serve, serve_command, tempdir, tone_db, write_config};
use huddle::{
    AudioSink, AudioSource, Engine, EngineConfig, EngineProfile, Event, EventHandler, RoomConfig, User,
    UserId,
};
use redis::RedisServer;
use serde_json::Value;

/// The nodes' lease: short, so that a dead node's part leaves quickly.
const LEASE_MS: u64 = 1000;
/// How long the test waits for something the cluster does by itself: generous, since the
/// machine is shared; the test asserts what happens, and prints how long it took.
const WAIT: Duration = Duration::from_secs(30);
const ROOM: &str = "failover";

// ----- the processes -----

/// A `huddle serve` process of the cluster; killed (SIGKILL) on drop if still running.
struct Node {
    id: String,
    serve: Serve,
}

impl Node {
    fn start(dir: &Path, redis: &RedisServer, id: &str) -> Node {
        Node::start_with(dir, redis, id, &format!("cluster_lease_ms = {LEASE_MS}\n"))
    }

    /// A node with `lease` as its lease line of the config (empty: the default lease).
    fn start_with(dir: &Path, redis: &RedisServer, id: &str, lease: &str) -> Node {
        let config = write_config(
            dir.join(format!("{id}.toml")),
            &format!(
                "{lease}cluster_secret = \"the test cluster's secret\"\n\
                 drain_timeout_ms = 20000\n"
            ),
        );
        let log = dir.join(format!("{id}.log"));
        let serve = Serve::try_start(
            serve_command()
                .arg("--config")
                .arg(&config)
                .args(["--redis", &redis.url, "--node-id", id])
                .env("RUST_LOG", "info")
                .stderr(std::fs::File::create(&log).unwrap()),
        )
        .unwrap_or_else(|banner| panic!("node {id} did not start: {banner:?} (see {})", log.display()));
        Node {
            id: id.to_string(),
            serve,
        }
    }

    fn url(&self) -> String {
        self.serve.url.clone()
    }

    fn pid(&self) -> u32 {
        self.serve.child.id()
    }

    /// The process's resident memory, in KiB.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    fn kill9(&mut self) {
        let _ = self.serve.child.kill();
        let _ = self.serve.child.wait();
    }

    fn sigterm(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -TERM {}", self.id);
    }

    fn running(&mut self) -> bool {
        self.serve.child.try_wait().unwrap().is_none()
    }

    /// Waits for the process to exit by itself; returns when it did and its status code.
    fn wait_exit(&mut self, within: Duration) -> (Instant, Option<i32>) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.serve.child.try_wait().unwrap() {
                return (Instant::now(), status.code());
            }
            assert!(Instant::now() < deadline, "{} did not exit", self.id);
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The keys in Redis (through `redis-cli`, installed with `redis-server`).
fn redis_keys(redis: &RedisServer) -> Vec<String> {
    let port = redis.url.rsplit(':').next().unwrap();
    let out = Command::new("redis-cli")
        .args(["-p", port, "--raw", "KEYS", "*"])
        .output()
        .expect("redis-cli");
    let mut keys: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    keys.sort();
    keys
}

// ----- the clients -----

/// Records each event (as `huddle call` prints it) with when it came.
struct Recorder(Mutex<Sender<(Instant, Value)>>);

impl EventHandler for Recorder {
    fn on_event(&self, event: &Event) {
        if !event.is_quality() {
            let _ = self.0.lock().unwrap().send((Instant::now(), event.to_json()));
        }
    }
}

/// An SDK client of the cluster: its engine, its events so far, and what it hears.
struct Client {
    user: String,
    engine: Engine,
    rx: Receiver<(Instant, Value)>,
    events: Vec<(Instant, Value)>,
    ear: Option<Ear>,
}

impl Client {
    /// Logs `user` in to the test room through `servers` (the first, then the others in order).
    fn join(user: &str, servers: &[&Node]) -> Client {
        let mut p = EngineProfile::new(APP_ID.parse().unwrap(), servers[0].url());
        p.app_sign = Some(APP_SIGN.into());
        p.fallback_servers = servers[1..].iter().map(|n| n.url()).collect();
        let mut c = EngineConfig::default();
        c.login_timeout = Duration::from_secs(10);
        c.attempt_timeout = Duration::from_secs(2);
        c.logout_timeout = Duration::from_millis(500);
        c.reconnect_budget = Duration::from_secs(20);
        p.config = c;
        let engine = Engine::create(p).expect("engine");
        let (tx, rx) = channel();
        engine.set_event_handler(Arc::new(Recorder(Mutex::new(tx))));
        engine.enable_camera(false);
        let mut config = RoomConfig::default();
        config.is_user_status_notify = true;
        engine
            .login_room(ROOM, User::new(UserId::new(user).unwrap()), config)
            .unwrap();
        let mut c = Client {
            user: user.into(),
            engine,
            rx,
            events: Vec::new(),
            ear: None,
        };
        c.wait("login", |e| {
            e["event"] == "room_state_changed" && e["reason"] == "Logined"
        });
        c
    }

    fn publish_tone(&mut self, stream: &str) {
        self.engine
            .set_audio_source(AudioSource::Tone { hz: TONE_HZ })
            .unwrap();
        self.engine.start_publishing_stream(stream).unwrap();
        self.wait_publishing(stream);
    }

    fn wait_publishing(&mut self, stream: &str) -> Instant {
        self.wait(&format!("{stream} publishing"), |e| {
            e["event"] == "publisher_state_update" && e["stream_id"] == stream && e["state"] == "Publishing"
        })
    }

    /// Plays `stream` and listens to what it plays.
    fn play(&mut self, stream: &str) {
        self.engine.set_audio_sink(AudioSink::Custom).unwrap();
        self.engine.start_playing_stream(stream).unwrap();
        self.ear = Some(Ear::start(self.engine.handle()));
    }

    /// Takes in the events that came so far.
    fn pump(&mut self) {
        while let Ok(e) = self.rx.try_recv() {
            self.events.push(e);
        }
    }

    /// Waits for an event matching `pred`, whenever it came; returns when it came.
    fn wait(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Instant {
        self.wait_since(what, None, pred)
    }

    /// Waits for an event matching `pred` that came at or after `since`.
    fn wait_after(&mut self, what: &str, since: Instant, pred: impl Fn(&Value) -> bool) -> Instant {
        self.wait_since(what, Some(since), pred)
    }

    fn wait_since(&mut self, what: &str, since: Option<Instant>, pred: impl Fn(&Value) -> bool) -> Instant {
        let deadline = Instant::now() + WAIT;
        loop {
            self.pump();
            if let Some((at, _)) = self
                .events
                .iter()
                .find(|(at, e)| since.is_none_or(|s| *at >= s) && pred(e))
            {
                return *at;
            }
            assert!(
                Instant::now() < deadline,
                "{}: timed out waiting for {what}; saw {:#?}",
                self.user,
                self.events.iter().map(|(_, e)| e).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The room events (`room_user_update`, `room_stream_update`) since `since`, as
    /// "user Add bob" / "stream Delete s1" lines.
    fn room_events_since(&mut self, since: Instant) -> Vec<String> {
        self.pump();
        let mut out = Vec::new();
        for (at, e) in &self.events {
            if *at < since {
                continue;
            }
            let (kind, list, key) = match e["event"].as_str() {
                Some("room_user_update") => ("user", "users", "user_id"),
                Some("room_stream_update") => ("stream", "streams", "stream_id"),
                _ => continue,
            };
            for item in e[list].as_array().into_iter().flatten() {
                out.push(format!(
                    "{kind} {} {}",
                    e["update_type"].as_str().unwrap_or("?"),
                    item[key].as_str().unwrap_or("?")
                ));
            }
        }
        out
    }

    /// [`Ear::tone_after`], with the client's events in the message if the tone never comes.
    fn tone_after(&mut self, what: &str, since: Instant, span: usize) -> Instant {
        match self.ear().try_tone_after(since, span) {
            Some(at) => at,
            None => {
                self.pump();
                panic!(
                    "{what}: the tone was not heard by {}; its events: {:#?}",
                    self.user,
                    self.events.iter().map(|(_, e)| e).collect::<Vec<_>>()
                )
            }
        }
    }

    fn ear(&self) -> &Ear {
        self.ear.as_ref().expect("the client plays")
    }

    fn destroy(mut self) {
        if let Some(ear) = self.ear.take() {
            ear.stop();
        }
        self.engine.destroy();
    }
}

const TONE_HZ: f64 = 440.0;

/// What a player hears, 100 ms at a time: whether the window holds the published tone.
struct Ear {
    windows: Arc<Mutex<Vec<(Instant, bool)>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Ear {
    fn start(engine: huddle::EngineHandle) -> Ear {
        let windows = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (w, s) = (windows.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut pcm: Vec<i16> = Vec::new();
            let mut buf = vec![0i16; 4800];
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(20));
                let n = engine.fetch_audio_frame(&mut buf);
                pcm.extend_from_slice(&buf[..n]);
                while pcm.len() >= 4800 {
                    let window: Vec<i16> = pcm.drain(..4800).collect();
                    w.lock().unwrap().push((Instant::now(), hears_tone(&window)));
                }
            }
        });
        Ear {
            windows,
            stop,
            thread: Some(thread),
        }
    }

    /// Waits until the tone is heard after `since` (for `span` of windows in a row); returns
    /// when the first window of that run ended.
    fn try_tone_after(&self, since: Instant, span: usize) -> Option<Instant> {
        let deadline = Instant::now() + WAIT;
        loop {
            {
                let w = self.windows.lock().unwrap();
                let after: Vec<&(Instant, bool)> = w.iter().filter(|(at, _)| *at > since).collect();
                for (i, win) in after.windows(span).enumerate() {
                    if win.iter().all(|(_, tone)| *tone) {
                        return Some(after[i].0);
                    }
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until a window without the tone comes after `since`; returns when it ended.
    fn silence_after(&self, what: &str, since: Instant) -> Instant {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some((at, _)) = self
                .windows
                .lock()
                .unwrap()
                .iter()
                .find(|(at, tone)| *at > since && !tone)
            {
                return *at;
            }
            assert!(Instant::now() < deadline, "{what}: no gap in the tone");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The first window without the tone that ended after `since` and before `until`, if any
    /// (waits until `until` has passed). `None`: the tone went on throughout (a gap short
    /// enough for the player's loss concealment to bridge).
    fn gap_between(&self, since: Instant, until: Instant) -> Option<Instant> {
        while Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.windows
            .lock()
            .unwrap()
            .iter()
            .find(|(at, tone)| *at > since && *at < until && !tone)
            .map(|(at, _)| *at)
    }

    /// The windows that ended between `from` and `to`: how many, and how many held the tone.
    fn tone_between(&self, from: Instant, to: Instant) -> (usize, usize) {
        let w = self.windows.lock().unwrap();
        let span: Vec<bool> = w
            .iter()
            .filter(|(at, _)| *at > from && *at <= to)
            .map(|(_, t)| *t)
            .collect();
        (span.len(), span.iter().filter(|t| **t).count())
    }

    fn stop(mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A 100 ms window holds the tone: loud enough (above -40 dBFS) and mostly at its frequency.
fn hears_tone(x: &[i16]) -> bool {
    let rms = (x.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / x.len() as f64).sqrt();
    rms > 328.0 && tone_db(x, TONE_HZ) > -3.0
}

/// Whether node `node`'s lease is in Redis now (it lives until it ends unrenewed).
fn lease_alive(redis: &RedisServer, node: &str) -> bool {
    let port = redis.url.rsplit(':').next().unwrap();
    let out = Command::new("redis-cli")
        .args(["-p", port, "--raw", "EXISTS", &format!("huddle:node:{node}")])
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).trim() == "1"
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

// ----- a node killed in the middle of a call -----

/// The clients of a call across nodes A, B and C, as [`kill_a_in_a_call`] leaves them.
struct KilledCall {
    alice: Client,
    dave: Client,
    bob: Client,
    carol: Client,
    /// When node A was killed.
    killed: Instant,
    /// When Alice had reconnected, and when she published again.
    back: Instant,
    republished: Instant,
}

/// Alice publishes a tone on A; Bob on B and Carol on C play it (pulled from A) and hear it. Dave
/// on A knows only A: he cannot come back when A dies, and must leave for the others. Then A is
/// killed (SIGKILL) in the middle of the call, and Alice reconnects to a live node within the
/// retry budget and publishes again.
fn kill_a_in_a_call(a: &mut Node, b: &Node, c: &Node) -> KilledCall {
    let mut alice = Client::join("alice", &[&*a, b, c]);
    alice.publish_tone("s-alice");
    let mut dave = Client::join("dave", &[&*a]);
    dave.publish_tone("s-dave");
    let mut bob = Client::join("bob", &[b, c, &*a]);
    bob.play("s-alice");
    let mut carol = Client::join("carol", &[c, b, &*a]);
    carol.play("s-alice");
    let start = Instant::now();
    bob.tone_after("bob before the kill", start, 3);
    carol.tone_after("carol before the kill", start, 3);

    let killed = Instant::now();
    a.kill9();
    let back = alice.wait_after("alice reconnected", killed, |e| {
        e["event"] == "room_state_changed" && e["reason"] == "Reconnected"
    });
    let republished = alice.wait_after("alice publishing again", killed, |e| {
        e["event"] == "publisher_state_update" && e["stream_id"] == "s-alice" && e["state"] == "Publishing"
    });
    KilledCall {
        alice,
        dave,
        bob,
        carol,
        killed,
        back,
        republished,
    }
}

/// Waits until player `p` sees Dave (who knew only the killed node) leave; returns when, and the
/// room events `p` saw since the kill, in none of which Alice (who moved) left.
fn dave_left(p: &mut Client, killed: Instant) -> (Instant, Vec<String>) {
    let at = p.wait_after("dave gone", killed, |e| {
        e["event"] == "room_user_update" && e["update_type"] == "Delete" && e["users"][0]["user_id"] == "dave"
    });
    let seen = p.room_events_since(killed);
    assert!(
        !seen.contains(&"user Delete alice".to_string()),
        "{}: alice moved, she never left: {seen:?}",
        p.user
    );
    (at, seen)
}

// ----- the tests -----

#[test]
fn a_cluster_of_processes_survives_kill_restart_duplicate_login_drain_and_churn() {
    let dir = tempdir("failover-phases");
    let mut redis = RedisServer::start();
    let mut a = Node::start(&dir, &redis, "node-a");
    let mut b = Node::start(&dir, &redis, "node-b");
    let c = Node::start(&dir, &redis, "node-c");

    // ----- kill -9 of node A in the middle of a call -----
    let KilledCall {
        mut alice,
        dave,
        mut bob,
        mut carol,
        killed,
        back,
        republished,
    } = kill_a_in_a_call(&mut a, &b, &c);
    // The players on the other nodes hear her again: first the gap, then the tone.
    let mut media_back = Vec::new();
    for p in [&mut bob, &mut carol] {
        let gap = p.ear().silence_after(&p.user, killed);
        media_back.push(p.tone_after("after the kill", gap, 5) - killed);
    }
    // Dave's user and stream leave for the others, stream first, within the lease and a reap;
    // nobody sees alice leave (she came back before the reap).
    let mut dave_gone = Duration::ZERO;
    for p in [&mut bob, &mut carol] {
        let (at, seen) = dave_left(p, killed);
        dave_gone = dave_gone.max(at - killed);
        let dave: Vec<&String> = seen
            .iter()
            .filter(|e| e.ends_with(" dave") || e.ends_with(" s-dave"))
            .collect();
        assert_eq!(
            dave,
            ["stream Delete s-dave", "user Delete dave"],
            "{}: {seen:?}",
            p.user
        );
        // Alice's stream is in the room once: either it moved silently, or it left and came back.
        let s: Vec<&String> = seen.iter().filter(|e| e.ends_with(" s-alice")).collect();
        assert!(
            s.is_empty() || s == ["stream Delete s-alice", "stream Add s-alice"],
            "{}: {seen:?}",
            p.user
        );
    }
    // Dave's stream ID is free again: Erin publishes it on C.
    let mut erin = Client::join("erin", &[&c, &b]);
    erin.publish_tone("s-dave");
    erin.engine.stop_publishing_stream().unwrap();
    dave.destroy();
    println!(
        "kill -9 of a node (lease {LEASE_MS} ms): its publisher reconnected in {} ms and published again in {} ms; \
         media back at the players on the other nodes {} ms and {} ms after the kill; \
         the dead node's user left {} ms after the kill",
        ms(back - killed),
        ms(republished - killed),
        ms(media_back[0]),
        ms(media_back[1]),
        ms(dave_gone)
    );

    // ----- Redis restarted (empty) in the middle of the call -----
    let before = Instant::now();
    redis.restart();
    let restarted = Instant::now();
    // No stream ID is handed out twice: Erin asks for Alice's over and over, and is never
    // granted it; once B has claimed it again the answer is "exists", before that "retry".
    let mut answers = Vec::new();
    loop {
        let asked = Instant::now();
        erin.engine.start_publishing_stream("s-alice").unwrap();
        erin.wait_after("an answer to erin's publish", asked, |e| {
            e["event"] == "publisher_state_update"
                && e["stream_id"] == "s-alice"
                && e["state"] != "PublishRequesting"
        });
        let (_, e) = erin
            .events
            .iter()
            .rev()
            .find(|(_, e)| e["event"] == "publisher_state_update" && e["stream_id"] == "s-alice")
            .unwrap()
            .clone();
        assert_eq!(e["state"], "NoPublish", "s-alice was granted twice: {e}");
        let code = e["error_code"].as_u64().unwrap();
        assert!(code == 1003028 || code == 1009009, "{e}");
        answers.push(code);
        if code == 1003028 {
            break;
        }
        assert!(Instant::now() < restarted + WAIT, "B never claimed s-alice again");
        std::thread::sleep(Duration::from_millis(50));
    }
    let reclaimed = Instant::now();
    // The call went on: the players heard the tone all along (a window or two may fall in
    // the player's own adjustments, none to the restart).
    std::thread::sleep(Duration::from_secs(1));
    for p in [&bob, &carol] {
        let (windows, tone) = p.ear().tone_between(before, Instant::now());
        assert!(
            windows >= 10 && tone + 2 >= windows,
            "{}: {tone} of {windows} windows held the tone",
            p.user
        );
    }
    println!(
        "Redis restart: s-alice claimed again within {} ms ({} publishes of it answered 1009009 meanwhile); the players heard the tone throughout",
        ms(reclaimed - restarted),
        answers.iter().filter(|c| **c == 1009009).count()
    );

    // ----- the same user on two nodes: the older session is kicked -----
    let mut gina_b = Client::join("gina", &[&b]);
    let mut gina_c = Client::join("gina", &[&c]);
    gina_b.wait("gina on B kicked", |e| {
        e["event"] == "room_state_changed" && e["reason"] == "KickOut" && e["error_code"] == 1002050
    });
    let since = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    for p in [&mut bob, &mut carol] {
        let seen = p.room_events_since(since - Duration::from_secs(1));
        assert!(
            !seen.iter().any(|e| e == "user Delete gina"),
            "{}: gina stays: {seen:?}",
            p.user
        );
    }
    gina_c.pump();
    assert!(
        !gina_c.events.iter().any(|(_, e)| e["reason"] == "KickOut"),
        "the newer session stays"
    );
    gina_b.destroy();
    gina_c.destroy();

    // ----- SIGTERM drains node B: its clients move, then it exits -----
    // On B now: Alice (publishing) and Bob (playing). Carol on C plays Alice's stream.
    let term = Instant::now();
    b.sigterm();
    let mut moved = Vec::new();
    for p in [&mut alice, &mut bob] {
        p.wait_after("told to move", term, |e| {
            e["event"] == "room_state_changed" && e["reason"] == "Reconnecting"
        });
        let at = p.wait_after("moved", term, |e| {
            e["event"] == "room_state_changed" && e["reason"] == "Reconnected"
        });
        moved.push(at);
    }
    assert!(b.running(), "both clients moved before node B exited");
    let (exited, code) = b.wait_exit(WAIT);
    assert_eq!(code, Some(0), "a drained node exits cleanly");
    let moved_last = moved.iter().max().copied().unwrap();
    assert!(moved_last < exited);
    alice.wait_after("alice publishing on C", term, |e| {
        e["event"] == "publisher_state_update" && e["stream_id"] == "s-alice" && e["state"] == "Publishing"
    });
    let heard = carol.tone_after("after the drain", exited, 5);
    bob.tone_after("after the drain", exited, 5);
    let seen = carol.room_events_since(term);
    assert!(
        !seen
            .iter()
            .any(|e| e == "user Delete alice" || e == "user Delete bob"),
        "moves are not leaves: {seen:?}"
    );
    println!(
        "SIGTERM drain: both clients moved {} ms after the signal; the node exited {} ms after it; \
         carol on the third node heard the moved publisher {} ms after the signal",
        ms(moved_last - term),
        ms(exited - term),
        ms(heard - term)
    );
    for p in [alice, bob, carol, erin] {
        p.destroy();
    }

    // ----- churn across three nodes -----
    drop(a);
    drop(b);
    let a = Node::start(&dir, &redis, "node-a");
    let b = Node::start(&dir, &redis, "node-b");
    let nodes = [&a, &b, &c];
    let round = |r: usize| {
        // On each node: one publisher; on each node a player of the next node's stream.
        let mut pubs = Vec::new();
        for (i, n) in nodes.iter().enumerate() {
            let mut p = Client::join(&format!("p{i}"), &[n]);
            p.publish_tone(&format!("churn-{i}"));
            pubs.push(p);
        }
        let mut players = Vec::new();
        for (i, n) in nodes.iter().enumerate() {
            let mut p = Client::join(&format!("l{i}"), &[n]);
            p.play(&format!("churn-{}", (i + 1) % 3));
            p.wait("playing", |e| {
                e["event"] == "player_state_update" && e["state"] == "Playing"
            });
            players.push(p);
        }
        for p in players.into_iter().chain(pubs) {
            p.engine.logout_room(ROOM).unwrap();
            p.destroy();
        }
        let _ = r;
    };
    // HUDDLE_FAILOVER_CHURN_ROUNDS: a longer soak (each round prints the nodes' memory).
    let rounds: usize = std::env::var("HUDDLE_FAILOVER_CHURN_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8)
        .max(3);
    round(0);
    round(1);
    std::thread::sleep(Duration::from_millis(500));
    let warm: Vec<u64> = nodes.iter().map(|n| n.rss_kib()).collect();
    for r in 2..rounds {
        round(r);
        if rounds > 8 {
            println!(
                "churn round {r}: {:?} KiB",
                nodes.iter().map(|n| n.rss_kib()).collect::<Vec<_>>()
            );
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let after: Vec<u64> = nodes.iter().map(|n| n.rss_kib()).collect();
    println!("churn: resident memory per node after 2 rounds {warm:?} KiB, after {rounds} {after:?} KiB");
    for (i, (w, a)) in warm.iter().zip(&after).enumerate() {
        // Flat: no growth with the rounds beyond the allocator's slack (2 MiB).
        assert!(
            *a <= w + 2048,
            "node {i} grew from {w} to {a} KiB over {} rounds",
            rounds - 2
        );
    }
    // No key is left once the nodes are gone: each node's leave removes its lease and claims,
    // and the rooms' keys expire three leases after their last change. The lease counter stays:
    // fencing tokens never go back.
    for n in nodes {
        n.sigterm();
    }
    for mut n in [a, b, c] {
        n.wait_exit(WAIT);
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let keys = redis_keys(&redis);
        if keys == ["huddle:epoch"] {
            break;
        }
        assert!(Instant::now() < deadline, "keys left in Redis: {keys:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// kill -9 with the default lease (10 s): the killed node's publisher, back on another node as
/// the same user, publishes its stream ID again at once (its newer login takes the ID over from
/// the dead node's session) rather than after the dead node's lease; the players on the other
/// nodes hear it again, and the dead node's other user and stream still leave for them (no
/// ghost) once its lease ends.
#[test]
fn with_the_default_lease_a_moved_publisher_does_not_wait_for_the_dead_nodes_lease() {
    let dir = tempdir("failover-default-lease");
    let redis = RedisServer::start();
    let mut a = Node::start_with(&dir, &redis, "node-a", "");
    let b = Node::start_with(&dir, &redis, "node-b", "");
    let c = Node::start_with(&dir, &redis, "node-c", "");
    let mut call = kill_a_in_a_call(&mut a, &b, &c);
    // Taken over while the dead node's lease still held: the publish did not wait for it.
    let lease_held = lease_alive(&redis, "node-a");
    // Media back: the tone after the gap the kill made (none heard if the players' loss
    // concealment bridged it: then the tone never stopped for them).
    let mut media_back = Vec::new();
    for p in [&mut call.bob, &mut call.carol] {
        let gap = p
            .ear()
            .gap_between(call.killed, call.republished + Duration::from_secs(3));
        media_back.push(match gap {
            Some(gap) => format!("{} ms", ms(p.tone_after("after the kill", gap, 5) - call.killed)),
            None => "no gap heard".to_string(),
        });
    }
    println!(
        "kill -9 of a node (default lease): its publisher reconnected in {} ms and published again in {} ms \
         (the dead node's lease still held: {lease_held}); media back at the players on the other nodes: \
         {} and {} after the kill",
        ms(call.back - call.killed),
        ms(call.republished - call.killed),
        media_back[0],
        media_back[1],
    );
    assert!(lease_held, "the publisher waited for the dead node's lease");
    // No ghost: Dave (who knew only A) and his stream leave for the others once A's lease
    // ends; Alice never leaves.
    for p in [&mut call.bob, &mut call.carol] {
        let (at, seen) = dave_left(p, call.killed);
        let s: Vec<&String> = seen.iter().filter(|e| e.ends_with(" s-alice")).collect();
        assert!(
            s.is_empty(),
            "{}: alice's stream moved silently: {seen:?}",
            p.user
        );
        println!(
            "{}: the dead node's user left {} ms after the kill",
            p.user,
            ms(at - call.killed)
        );
    }
    call.dave.destroy();
    for p in [call.alice, call.bob, call.carol] {
        p.destroy();
    }
    let _ = std::fs::remove_dir_all(&dir);
}
