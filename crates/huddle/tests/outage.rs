//! Network outages, tested and measured: a signaling drop, media and signaling outages of 1, 5
//! and 25 s for one client, a server restart, and a server gone for good.
//!
//! Each test runs a call of two engines through the impairment proxies of `common::netsim`:
//! Alice and Bob each publish a tone and play the other's. The outages hit Alice. The tests check
//! what the apps see (room, publisher and player states with their codes; no user or stream
//! Delete/Add for Bob when Alice's session resumes) and measure, from the moment the network
//! returns, the time to `Reconnected` and the time until each side *hears* the other again (the
//! first loud 20 ms frame of pulled PCM).
//!
//! The numbers are printed (`cargo test -p huddle --test outage -- --nocapture`, lines starting
//! with `RECOVERY`) and asserted only loosely: the machines are shared and noisy. The ≤ 1 s
//! target is reported in `docs/quality.md` ("Recovery"), not asserted. The tests that measure
//! hold [`measuring`] so that they do not disturb each other; the two 25 s outages run at once in
//! the one long test and wait outside it until their networks return.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::netsim::{Client, MEDIA_IP, Net};
use common::*;
use huddle::{
    AudioSink, AudioSource, Engine, ErrorCode, Event, PlayerState, PublisherState,
    RoomStateChangedReason as Reason, StreamQualityLevel, UpdateType,
};
use huddle_netsim::Scope;
use huddle_server::{BackgroundServer, ServerConfig};

/// The tests that measure hold this, one at a time.
static MEASURING: Mutex<()> = Mutex::new(());

fn measuring() -> MutexGuard<'static, ()> {
    MEASURING.lock().unwrap_or_else(|e| e.into_inner())
}

/// A loose bound on recovery times: far above the target, only to catch a recovery that does
/// not happen in any reasonable time.
const LOOSE: Duration = Duration::from_secs(5);

/// The RMS above which a pulled chunk counts as the tone (the tones are at half scale, RMS
/// about 11 600; concealment fades to silence within a fraction of a second).
const LOUD_RMS: f64 = 2000.0;

/// Pulls an engine's rendered audio (custom sink) every 5 ms on a thread of its own and keeps
/// when each chunk came and how loud it was.
struct Meter {
    chunks: Arc<Mutex<Vec<(Instant, f64)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Meter {
    fn start(engine: &Engine) -> Meter {
        engine.set_audio_sink(AudioSink::Custom).unwrap();
        let handle = engine.handle();
        let chunks = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (chunks.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0i16; 4800];
            while !s.load(Ordering::Relaxed) {
                let n = handle.fetch_audio_frame(&mut buf);
                if n > 0 {
                    let sum: f64 = buf[..n].iter().map(|x| f64::from(*x).powi(2)).sum();
                    let rms = (sum / n as f64).sqrt();
                    c.lock().unwrap().push((Instant::now(), rms));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Meter {
            chunks,
            stop,
            thread: Some(thread),
        }
    }

    /// How long after `t` the first loud chunk came, waiting up to `timeout` for it.
    fn loud_after(&self, t: Instant, timeout: Duration) -> Option<Duration> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((at, _)) = self
                .chunks
                .lock()
                .unwrap()
                .iter()
                .find(|(at, rms)| *at >= t && *rms > LOUD_RMS)
            {
                return Some(*at - t);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The longest stretch without a loud chunk between `from` and `to`.
    fn longest_gap(&self, from: Instant, to: Instant) -> Duration {
        let chunks = self.chunks.lock().unwrap();
        let mut last = from;
        let mut gap = Duration::ZERO;
        for (at, _) in chunks
            .iter()
            .filter(|(at, rms)| *at >= from && *at <= to && *rms > LOUD_RMS)
        {
            gap = gap.max(*at - last);
            last = *at;
        }
        gap.max(to.saturating_duration_since(last))
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const ALICE_VOICE: &str = "alice-voice";
const BOB_VOICE: &str = "bob-voice";

/// A call: Alice and Bob publish a tone each and play each other's.
struct Call {
    alice: Engine,
    ea: Events,
    bob: Engine,
    eb: Events,
    /// What Alice hears (Bob's tone through Alice's downlink).
    alice_hears: Meter,
    /// What Bob hears (Alice's tone through Alice's uplink).
    bob_hears: Meter,
}

impl Call {
    /// Both logged in to `room`, publishing, playing and hearing each other.
    fn start(a: &Client, b: &Client, room: &str) -> Call {
        Self::start_with(a, b, room, false)
    }

    /// As [`Self::start`]; the recorders keep the quality events when `quality`.
    fn start_with(a: &Client, b: &Client, room: &str, quality: bool) -> Call {
        let join = |client: &Client, who: &str, hz: f64, publish: &str| {
            let (engine, mut events) = if quality {
                engine_with_quality(client.profile())
            } else {
                engine_with(client.profile())
            };
            engine.enable_camera(false);
            engine.set_audio_source(AudioSource::Tone { hz }).unwrap();
            engine.login_room(room, user(who), notify()).unwrap();
            assert_eq!(events.room(Reason::Logined), ErrorCode::OK);
            engine.start_publishing_stream(publish).unwrap();
            events.publisher(publish, PublisherState::Publishing);
            (engine, events)
        };
        let (alice, mut ea) = join(a, "alice", 440.0, ALICE_VOICE);
        let (bob, mut eb) = join(b, "bob", 660.0, BOB_VOICE);
        let alice_hears = Meter::start(&alice);
        let bob_hears = Meter::start(&bob);
        alice.start_playing_stream(BOB_VOICE).unwrap();
        bob.start_playing_stream(ALICE_VOICE).unwrap();
        ea.player(BOB_VOICE, PlayerState::Playing);
        eb.player(ALICE_VOICE, PlayerState::Playing);
        ea.stream(UpdateType::Add, BOB_VOICE);
        eb.stream(UpdateType::Add, ALICE_VOICE);
        ea.user(UpdateType::Add, "bob");
        let now = Instant::now();
        for (who, meter) in [("alice", &alice_hears), ("bob", &bob_hears)] {
            assert!(
                meter.loud_after(now, LOOSE).is_some(),
                "{who} does not hear the other before the outage"
            );
        }
        Call {
            alice,
            ea,
            bob,
            eb,
            alice_hears,
            bob_hears,
        }
    }

    /// Where each side's events are now (for [`since`]).
    fn mark(&mut self) -> (usize, usize) {
        self.ea.drain();
        self.eb.drain();
        (self.ea.seen.len(), self.eb.seen.len())
    }

    /// Waits until both hear each other after `back`; returns (Bob hears Alice, Alice hears
    /// Bob), each measured from `back`.
    fn media_back(&self, back: Instant) -> (Duration, Duration) {
        let bob = self
            .bob_hears
            .loud_after(back, LOOSE * 2)
            .expect("Bob hears Alice again");
        let alice = self
            .alice_hears
            .loud_after(back, LOOSE * 2)
            .expect("Alice hears Bob again");
        (bob, alice)
    }

    /// Checks that the meters heard the break: nothing loud for most of `from..to` (so that
    /// what [`Self::media_back`] measures is the return of the media, not its tail).
    fn check_silence(&self, from: Instant, to: Instant) {
        let quiet = (to - from) / 2;
        for (who, meter) in [("Bob", &self.bob_hears), ("Alice", &self.alice_hears)] {
            let gap = meter.longest_gap(from, to);
            assert!(gap >= quiet, "{who} heard the other through the outage: {gap:?}");
        }
    }

    /// Alice's return after a break from `from` until the network came `back`: waits for her room
    /// and streams to come back and both to hear each other, checks the silence in between, and
    /// returns the time to `Reconnected` and (Bob hears Alice, Alice hears Bob), all from `back`.
    fn returned(&mut self, from: Instant, back: Instant) -> (Duration, (Duration, Duration)) {
        let reconnected = expect_return(&mut self.ea, back);
        let heard = self.media_back(back);
        self.check_silence(from, back);
        (reconnected, heard)
    }

    fn end(self) {
        drop((self.alice_hears, self.bob_hears));
        self.bob.destroy();
        self.alice.destroy();
    }
}

/// The events received since `mark` (drained first).
fn since(events: &mut Events, mark: usize) -> Vec<Event> {
    events.drain();
    events.seen[mark..].to_vec()
}

/// The user and stream updates among `events`.
fn list_updates(events: &[Event]) -> Vec<&Event> {
    events
        .iter()
        .filter(|e| matches!(e, Event::RoomUserUpdate { .. } | Event::RoomStreamUpdate { .. }))
        .collect()
}

/// The room state changes among `events`.
fn room_changes(events: &[Event]) -> Vec<(Reason, ErrorCode)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::RoomStateChanged {
                reason, error_code, ..
            } => Some((*reason, *error_code)),
            _ => None,
        })
        .collect()
}

/// The state updates (as `"stream:State:code"`) of publishers and players among `events`.
fn stream_states(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::PublisherStateUpdate {
                stream_id,
                state,
                error_code,
                ..
            } => Some(format!("{stream_id}:{state:?}:{}", error_code.0)),
            Event::PlayerStateUpdate {
                stream_id,
                state,
                error_code,
                ..
            } => Some(format!("{stream_id}:{state:?}:{}", error_code.0)),
            _ => None,
        })
        .collect()
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// The room state changes of one break that ended in the same session.
const ONE_BREAK: [(Reason, ErrorCode); 2] = [
    (Reason::Reconnecting, ErrorCode::TEMPORARY_BREAK),
    (Reason::Reconnected, ErrorCode::OK),
];

/// Alice's stream states through a break of her media connections and their return.
const STREAMS_BROKEN_AND_BACK: [&str; 4] = [
    "alice-voice:PublishRequesting:1003020",
    "bob-voice:PlayRequesting:1004020",
    "alice-voice:Publishing:0",
    "bob-voice:Playing:0",
];

/// A publisher of `publishing` and a player of `playing` go to Requesting with their break codes.
fn expect_streams_break(events: &mut Events, publishing: &str, playing: &str) {
    assert_eq!(
        events.publisher(publishing, PublisherState::PublishRequesting),
        ErrorCode::PUBLISH_TEMPORARY_BREAK
    );
    assert_eq!(
        events.player(playing, PlayerState::PlayRequesting),
        ErrorCode::PLAY_TEMPORARY_BREAK
    );
}

/// Alice's room, publisher and player go to Reconnecting / Requesting with their codes.
fn expect_break(ea: &mut Events) {
    assert_eq!(ea.room(Reason::Reconnecting), ErrorCode::TEMPORARY_BREAK);
    expect_streams_break(ea, ALICE_VOICE, BOB_VOICE);
}

/// Alice's room, publisher and player come back; returns the time from `back` to
/// `Reconnected`.
fn expect_return(ea: &mut Events, back: Instant) -> Duration {
    assert_eq!(ea.room(Reason::Reconnected), ErrorCode::OK);
    let reconnected = back.elapsed();
    assert_eq!(
        ea.publisher(ALICE_VOICE, PublisherState::Publishing),
        ErrorCode::OK
    );
    assert_eq!(ea.player(BOB_VOICE, PlayerState::Playing), ErrorCode::OK);
    reconnected
}

/// Alice's session resumed: since the marks `(ma, mb)` Bob saw nothing at all, and Alice no list
/// change and one break of her room. Returns Alice's events since her mark.
fn expect_resumed(call: &mut Call, (ma, mb): (usize, usize)) -> Vec<Event> {
    let eb = since(&mut call.eb, mb);
    assert!(eb.is_empty(), "Bob saw {eb:#?}");
    let ea = since(&mut call.ea, ma);
    assert!(list_updates(&ea).is_empty(), "{ea:#?}");
    assert_eq!(room_changes(&ea), ONE_BREAK);
    ea
}

/// Prints a `RECOVERY` line: `what`, then the time to `Reconnected` (`-`: there was no break of
/// the room) and until each side hears the other; and checks them against [`LOOSE`].
fn report(what: &str, reconnected: Option<Duration>, (bob, alice): (Duration, Duration)) {
    println!(
        "RECOVERY {what} reconnected_ms={} media_ms(bob_hears_alice)={} media_ms(alice_hears_bob)={}",
        reconnected.map_or("-".to_string(), |r| ms(r).to_string()),
        ms(bob),
        ms(alice)
    );
    if let Some(reconnected) = reconnected {
        assert!(reconnected < LOOSE, "{reconnected:?}");
    }
    assert!(bob < LOOSE && alice < LOOSE, "{bob:?} {alice:?}");
}

/// Sleeps until `secs` after `started`, holding [`measuring`] for the last second: a long test
/// lets the others measure while it waits, and measures itself once its outage is over.
fn sleep_then_measure(started: Instant, secs: u64) -> MutexGuard<'static, ()> {
    std::thread::sleep(Duration::from_secs(secs - 1).saturating_sub(started.elapsed()));
    let m = measuring();
    std::thread::sleep(Duration::from_secs(secs).saturating_sub(started.elapsed()));
    m
}

/// A server whose grace outlasts the 1 s and 5 s outages (heartbeat and session timeout of the
/// test config: the break is noticed 2 s into the outage, by both ends).
fn resuming_server(seed: u64) -> Net {
    Net::start_with(seed, |c| c.grace = Duration::from_secs(10))
}

#[test]
fn a_signaling_drop_resumes_and_media_keeps_flowing() {
    let net = resuming_server(11);
    let (a, b) = (net.client(20), net.client(21));
    let mut call = Call::start(&a, &b, "drop");
    let _m = measuring();
    let marks = call.mark();

    let cut = Instant::now();
    a.tcp.cut();
    expect_break(&mut call.ea);
    let reconnected = expect_return(&mut call.ea, cut);
    std::thread::sleep(Duration::from_secs(1));
    let end = Instant::now();
    let (gap_bob, gap_alice) = (
        call.bob_hears.longest_gap(cut, end),
        call.alice_hears.longest_gap(cut, end),
    );
    println!(
        "RECOVERY signaling-drop path=resume reconnected_ms={} longest_gap_ms(bob_hears)={} longest_gap_ms(alice_hears)={}",
        ms(reconnected),
        ms(gap_bob),
        ms(gap_alice)
    );
    // Media does not depend on the signaling connection.
    assert!(gap_bob < Duration::from_secs(1), "{gap_bob:?}");
    assert!(gap_alice < Duration::from_secs(1), "{gap_alice:?}");
    assert_eq!(a.tcp.connections(), 1, "one signaling connection again");

    // Alice's session resumed: Bob saw nothing at all, Alice no list change.
    expect_resumed(&mut call, marks);
    call.end();
}

#[test]
fn a_one_second_outage_goes_unnoticed_but_for_the_audio() {
    // A session timeout longer than the outage with margin: the signaling connection survives
    // (its bytes are held, as TCP would retransmit them).
    let net = Net::start_with(12, |c| {
        c.session_timeout = Duration::from_secs(3);
        c.grace = Duration::from_secs(10);
    });
    let (a, b) = (net.client(22), net.client(23));
    let mut call = Call::start(&a, &b, "one");
    let _m = measuring();
    let (ma, mb) = call.mark();

    net.outage(&a, true);
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    net.outage(&a, false);
    let back = Instant::now();
    let heard = call.media_back(back);
    call.check_silence(started, back);
    std::thread::sleep(Duration::from_millis(500));
    report("outage=1s path=none", None, heard);

    let ea = since(&mut call.ea, ma);
    let eb = since(&mut call.eb, mb);
    assert!(ea.is_empty(), "Alice saw {ea:#?}");
    assert!(eb.is_empty(), "Bob saw {eb:#?}");
    call.end();
}

#[test]
fn a_five_second_outage_resumes_within_the_grace() {
    let net = resuming_server(13);
    let (a, b) = (net.client(24), net.client(25));
    let mut call = Call::start(&a, &b, "five");
    let _m = measuring();
    let marks = call.mark();

    net.outage(&a, true);
    let started = Instant::now();
    // Noticed by the silence of the signaling connection (session timeout 2 s).
    expect_break(&mut call.ea);
    std::thread::sleep(Duration::from_secs(5).saturating_sub(started.elapsed()));
    net.outage(&a, false);
    let back = Instant::now();
    let (reconnected, heard) = call.returned(started, back);
    report("outage=5s path=resume", Some(reconnected), heard);

    // Resumed: Bob saw nothing (no user or stream Delete/Add, no player change), Alice's lists
    // did not change.
    std::thread::sleep(Duration::from_millis(300));
    let ea = expect_resumed(&mut call, marks);
    // The media connections were kept (no new first frame).
    assert!(
        !ea.iter()
            .any(|e| matches!(e, Event::PlayerRecvAudioFirstFrame { .. })),
        "{ea:#?}"
    );
    assert_eq!(stream_states(&ea), STREAMS_BROKEN_AND_BACK);
    call.end();
}

#[test]
fn a_25_second_outage_resumes_within_the_default_grace_and_logs_in_afresh_past_a_short_one() {
    // The suite's one long test: both 25 s outages at once, on servers of their own (the call of
    // each mostly waits), beside the short tests.
    std::thread::scope(|s| {
        let resume = s.spawn(outage_of_25_s_within_the_default_grace);
        let relogin = s.spawn(outage_of_25_s_past_a_short_grace);
        for t in [resume, relogin] {
            if let Err(panic) = t.join() {
                std::panic::resume_unwind(panic);
            }
        }
    });
}

/// A 25 s outage with the test config's short grace (300 ms): the session ends 2.3 s into the
/// outage, so Alice comes back as a new session, publishes and plays again, and Bob sees her leave
/// and return.
fn outage_of_25_s_past_a_short_grace() {
    let net = Net::start(14);
    let (a, b) = (net.client(26), net.client(27));
    let mut call = Call::start(&a, &b, "long");
    let (ma, mb) = call.mark();

    net.outage(&a, true);
    let started = Instant::now();
    expect_break(&mut call.ea);
    // Bob sees Alice's session end with the grace.
    call.eb.stream(UpdateType::Delete, ALICE_VOICE);
    call.eb.user(UpdateType::Delete, "alice");
    assert_eq!(
        call.eb.player(ALICE_VOICE, PlayerState::PlayRequesting),
        ErrorCode::OK
    );
    let _m = sleep_then_measure(started, 25);
    net.outage(&a, false);
    let back = Instant::now();
    let lasted = back - started;
    let (reconnected, heard) = call.returned(started, back);
    call.eb.stream(UpdateType::Add, ALICE_VOICE);
    call.eb.user(UpdateType::Add, "alice");
    assert_eq!(call.eb.player(ALICE_VOICE, PlayerState::Playing), ErrorCode::OK);
    report(
        &format!("outage={}ms path=relogin", ms(lasted)),
        Some(reconnected),
        heard,
    );

    // Alice's room: one break; her lists end as they were (Bob and his stream).
    let ea = since(&mut call.ea, ma);
    assert_eq!(room_changes(&ea), ONE_BREAK);
    assert!(known_streams(&call.ea.seen).contains(BOB_VOICE));
    assert!(known_users(&call.ea.seen).contains("bob"));
    let eb = since(&mut call.eb, mb);
    assert!(room_changes(&eb).is_empty(), "{eb:#?}");
    call.end();
}

/// A 25 s outage with the server's default liveness and grace: a connection silent for 15 s is
/// dropped and its session kept 20 s more, so a 25 s outage (a tunnel, a lift) comes back as the
/// same user with the same streams; the others see nothing. Alice's media connections end first
/// (about 10 s in, while her signaling still looks up; the server forgets them at 15 s), her
/// signaling at 15 s; the connections are offered again as soon as the session resumes.
fn outage_of_25_s_within_the_default_grace() {
    let net = Net::start_with(18, |c| {
        let d = ServerConfig::default();
        (c.heartbeat, c.session_timeout, c.grace) = (d.heartbeat, d.session_timeout, d.grace);
    });
    let (a, b) = (net.client(33), net.client(34));
    let mut call = Call::start(&a, &b, "tunnel");
    let marks = call.mark();

    net.outage(&a, true);
    let started = Instant::now();
    // The media connections give up first (about 10 s in): the streams report their break while
    // the room is still connected.
    std::thread::sleep(Duration::from_secs(7));
    expect_streams_break(&mut call.ea, ALICE_VOICE, BOB_VOICE);
    let media_lost = started.elapsed();
    assert_eq!(call.ea.room(Reason::Reconnecting), ErrorCode::TEMPORARY_BREAK);
    let signaling_lost = started.elapsed();
    let _m = sleep_then_measure(started, 25);
    net.outage(&a, false);
    let back = Instant::now();
    let lasted = back - started;
    let (reconnected, heard) = call.returned(started, back);
    report(
        &format!(
            "outage={}ms path=resume(default grace) media_lost_at_ms={} signaling_lost_at_ms={}",
            ms(lasted),
            ms(media_lost),
            ms(signaling_lost)
        ),
        Some(reconnected),
        heard,
    );
    assert!(media_lost < signaling_lost, "{media_lost:?} {signaling_lost:?}");

    // Resumed: Bob saw nothing at all; Alice's lists did not change.
    std::thread::sleep(Duration::from_millis(300));
    let ea = expect_resumed(&mut call, marks);
    // Each connection ends on its own: the order of the two is open, and so is the order of
    // their returns.
    let mut states = stream_states(&ea);
    assert_eq!(states.len(), 4, "{states:?}");
    states[..2].sort();
    states[2..].sort();
    assert_eq!(states, STREAMS_BROKEN_AND_BACK);
    // New connections (a new first frame).
    assert!(
        ea.iter().any(
            |e| matches!(e, Event::PlayerRecvAudioFirstFrame { stream_id } if stream_id.as_str() == BOB_VOICE)
        ),
        "{ea:#?}"
    );
    call.end();
}

#[test]
fn a_restarted_server_gets_the_call_back() {
    let Net { server, udp } = Net::start(15);
    let net_udp = udp;
    let (addr, media) = (server.addr(), server.udp_addr());
    let client = |host: u8| {
        let ip = format!("127.0.0.{host}").parse().unwrap();
        let tcp = huddle_netsim::TcpProxy::start(std::net::SocketAddr::new(ip, 0), addr).unwrap();
        Client { ip, tcp }
    };
    let (a, b) = (client(28), client(29));
    let mut call = Call::start(&a, &b, "phoenix");
    let _m = measuring();

    let stopped = Instant::now();
    server.stop();
    expect_break(&mut call.ea);
    assert_eq!(call.eb.room(Reason::Reconnecting), ErrorCode::TEMPORARY_BREAK);
    expect_streams_break(&mut call.eb, BOB_VOICE, ALICE_VOICE);

    // Down for a second, then back on the same ports with the same app and a fresh memory:
    // both log in afresh, publish and play again.
    std::thread::sleep(Duration::from_secs(1).saturating_sub(stopped.elapsed()));
    let mut config = ServerConfig::for_tests(vec![app()]);
    config.listen = addr;
    config.udp_port = media.port();
    config.public_ip = Some(MEDIA_IP.parse().unwrap());
    let restarted = Instant::now();
    let _server = BackgroundServer::start(config).expect("restart on the same ports");
    let (reconnected, heard) = call.returned(stopped, restarted);
    assert_eq!(call.eb.room(Reason::Reconnected), ErrorCode::OK);
    call.eb.publisher(BOB_VOICE, PublisherState::Publishing);
    call.eb.player(ALICE_VOICE, PlayerState::Playing);
    report("server-restart path=relogin", Some(reconnected), heard);
    drop(net_udp);
    call.end();
}

#[test]
fn a_server_gone_for_good_fails_the_reconnection_after_the_budget() {
    // Measures nothing: runs beside the others.
    let net = Net::start(16);
    let a = net.client(30);
    let mut profile = a.profile();
    profile.config.reconnect_budget = Duration::from_secs(2);
    let (alice, mut ea) = engine_with(profile);
    alice.enable_camera(false);
    alice.login_room("gone", user("alice"), notify()).unwrap();
    ea.room(Reason::Logined);
    alice.start_publishing_stream(ALICE_VOICE).unwrap();
    ea.publisher(ALICE_VOICE, PublisherState::Publishing);
    alice.start_playing_stream("nobody").unwrap();
    ea.player("nobody", PlayerState::PlayRequesting);

    // The server vanishes for Alice: her connection is cut, new ones are closed at once, her
    // media goes nowhere.
    net.udp.set_outage(Scope::Ip(a.ip), true);
    a.tcp.set_refusing(true);
    a.tcp.cut();
    assert_eq!(ea.room(Reason::Reconnecting), ErrorCode::TEMPORARY_BREAK);
    let broke = Instant::now();
    assert_eq!(
        ea.publisher(ALICE_VOICE, PublisherState::PublishRequesting),
        ErrorCode::PUBLISH_TEMPORARY_BREAK
    );
    assert_eq!(ea.room(Reason::ReconnectFailed), ErrorCode::RETRY_TIMEOUT);
    let took = broke.elapsed();
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_eq!(
        ea.publisher(ALICE_VOICE, PublisherState::NoPublish),
        ErrorCode::RETRY_TIMEOUT
    );
    assert_eq!(ea.player("nobody", PlayerState::NoPlay), ErrorCode::RETRY_TIMEOUT);
    // Retried often within the budget (the retry delay is capped while reconnecting).
    println!("RECOVERY gone-for-good path=failed failed_after_ms={}", ms(took));
    assert_eq!(
        alice.start_publishing_stream(ALICE_VOICE).unwrap_err().code,
        ErrorCode::NOT_LOGGED_IN
    );
    alice.destroy();
}

/// The levels of a `network_quality` event about `user` (`None`: the engine's own user).
fn levels_of(e: &Event, user: Option<&str>) -> Option<(StreamQualityLevel, StreamQualityLevel)> {
    match e {
        Event::NetworkQuality {
            user_id,
            upstream_quality,
            downstream_quality,
        } if user_id.as_ref().map(|u| u.as_str()) == user => Some((*upstream_quality, *downstream_quality)),
        _ => None,
    }
}

fn is_level(l: Option<(StreamQualityLevel, StreamQualityLevel)>) -> bool {
    use StreamQualityLevel::{Die, Unknown};
    l.is_some_and(|(up, down)| ![Die, Unknown].contains(&up) && ![Die, Unknown].contains(&down))
}

/// Waits until an event after `mark` satisfies `pred`.
fn after(events: &mut Events, mark: usize, what: &str, pred: impl Fn(&Event) -> bool) {
    events.wait_until(what, |seen| seen.len() > mark && seen[mark..].iter().any(&pred));
}

#[test]
fn a_five_second_outage_shows_as_die_and_the_levels_come_back_with_the_audio() {
    use StreamQualityLevel::{Die, Unknown};
    // The server's default liveness (a connection silent for 15 s is dropped): the signaling
    // connection outlives the outage and the room never breaks. Only the quality events tell the
    // apps (before them, nothing did).
    let net = Net::start_with(19, |c| {
        let d = ServerConfig::default();
        (c.heartbeat, c.session_timeout, c.grace) = (d.heartbeat, d.session_timeout, d.grace);
    });
    let (a, b) = (net.client(35), net.client(36));
    let mut call = Call::start_with(&a, &b, "die", true);
    // Levels before the outage, for Alice and (relayed) for Bob about her.
    after(&mut call.ea, 0, "Alice's own levels", |e| {
        is_level(levels_of(e, None))
    });
    after(&mut call.eb, 0, "Alice's levels at Bob", |e| {
        is_level(levels_of(e, Some("alice")))
    });
    let _m = measuring();
    let (ma, mb) = call.mark();

    net.outage(&a, true);
    let started = Instant::now();
    after(&mut call.ea, ma, "Die", |e| {
        levels_of(e, None) == Some((Die, Die))
    });
    let die = started.elapsed();
    // Bob sees Alice's reports stop: Unknown (one missed), Die (three missed) if it lasts.
    after(&mut call.eb, mb, "Alice unknown at Bob", |e| {
        matches!(levels_of(e, Some("alice")), Some((Unknown | Die, Unknown | Die)))
    });
    let unknown_at_bob = started.elapsed();
    std::thread::sleep(Duration::from_secs(5).saturating_sub(started.elapsed()));
    let (ma2, mb2) = call.mark();
    net.outage(&a, false);
    let back = Instant::now();
    after(&mut call.ea, ma2, "Alice's own levels again", |e| {
        levels_of(e, None).is_some_and(|(up, down)| up != Die && down != Die)
    });
    let level_back = back.elapsed();
    let heard = call.media_back(back);
    call.check_silence(started, back);
    after(&mut call.ea, ma2, "Bob's stream quality again", |e| {
        matches!(e, Event::PlayerQualityUpdate { stream_id, quality }
            if stream_id.as_str() == BOB_VOICE && quality.level != Die)
    });
    after(&mut call.eb, mb2, "Alice's levels at Bob again", |e| {
        is_level(levels_of(e, Some("alice")))
    });
    let level_at_bob = back.elapsed();
    println!(
        "QUALITY outage=5s die_after_ms={} unknown_at_other_after_ms={} own_level_back_ms={} level_back_at_other_ms={}",
        ms(die),
        ms(unknown_at_bob),
        ms(level_back),
        ms(level_at_bob)
    );
    report("outage=5s path=none(default liveness)", None, heard);
    // Die came during the outage (the 3 s rule; exact timing in scripts/quality.sh), before the
    // network returned; the room and the streams never changed state.
    assert!(die < Duration::from_secs(5), "{die:?}");
    assert!(level_back < LOOSE, "{level_back:?}");
    let ea = since(&mut call.ea, ma);
    assert!(room_changes(&ea).is_empty(), "{ea:#?}");
    assert!(stream_states(&ea).is_empty(), "{ea:#?}");
    call.end();
}
