//! A slow app never hurts the call: an event handler that takes 2 s per event, with a real
//! server whose session timeout is 2 s, does not stall heartbeats, media or the logout, and the
//! events it cannot take are reported exactly.

mod common;

use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use huddle::{
    AudioSink, AudioSource, Engine, Event, EventHandler, PlayerState, PublisherState, RoomStateChangedReason,
};

/// Records each event, then sleeps 2 s.
struct Slow(Mutex<Sender<Event>>);

impl EventHandler for Slow {
    fn on_event(&self, event: &Event) {
        let _ = self.0.lock().unwrap().send(event.clone());
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// The engine's events as an [`huddle::EventStream`] sees them, on a thread of its own.
fn observe(engine: &Engine) -> Receiver<Event> {
    let mut stream = engine.events();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async move {
            while let Some(e) = stream.recv().await {
                if tx.send(e).is_err() {
                    break;
                }
            }
        });
    });
    rx
}

/// Waits for an event matching `pred` on `rx`, keeping every event in `seen`.
fn wait(rx: &Receiver<Event>, seen: &mut Vec<Event>, what: &str, pred: impl Fn(&Event) -> bool) {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let left = end.saturating_duration_since(Instant::now());
        let e = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no {what}; got {seen:#?}"));
        let hit = pred(&e);
        seen.push(e);
        if hit {
            return;
        }
    }
}

/// The RMS of `x`.
fn rms(x: &[i16]) -> f64 {
    (x.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / x.len().max(1) as f64).sqrt()
}

#[test]
fn a_handler_that_takes_two_seconds_per_event_stalls_nothing() {
    let server = server();
    let (alice, mut ea) = voice_engine(&server, "slow", "alice");
    alice.set_audio_source(AudioSource::Tone { hz: 600.0 }).unwrap();
    alice.start_publishing_stream("alice-slow").unwrap();
    ea.publisher("alice-slow", PublisherState::Publishing);

    let mut p = profile(&server);
    p.config.event_queue = 4;
    let bob = Engine::create(p).unwrap();
    bob.enable_camera(false);
    bob.set_audio_sink(AudioSink::Custom).unwrap();
    let (tx, handled) = channel();
    bob.set_event_handler(Arc::new(Slow(Mutex::new(tx))));
    let observed = observe(&bob);
    let mut seen = Vec::new();

    bob.login_room("slow", user("bob"), notify()).unwrap();
    bob.start_playing_stream("alice-slow").unwrap();
    wait(&observed, &mut seen, "Playing", |e| {
        matches!(
            e,
            Event::PlayerStateUpdate {
                state: PlayerState::Playing,
                ..
            }
        )
    });

    // Four times the server's session timeout (2 s; heartbeats every 500 ms): the tone is heard
    // in every half second, the session never breaks.
    let mut quiet = Vec::new();
    for i in 0..16 {
        let heard = pull(&bob, Duration::from_millis(500));
        let level = rms(&heard);
        if level < 1000.0 {
            quiet.push((i, level, heard.len()));
        }
    }
    assert!(quiet.is_empty(), "half seconds without the tone: {quiet:?}");
    seen.extend(observed.try_iter());
    let broke: Vec<&Event> = seen
        .iter()
        .filter(|e| {
            matches!(
                e,
                Event::RoomStateChanged {
                    reason: RoomStateChangedReason::Reconnecting | RoomStateChangedReason::KickOut,
                    ..
                }
            )
        })
        .collect();
    assert!(broke.is_empty(), "the session broke: {broke:?}");
    assert_eq!(server.stats().sessions, 2, "{:?}", server.stats());

    // The logout completes (the server forgets the session) while the handler is still far
    // behind.
    bob.logout_room("slow").unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    while server.stats().sessions != 1 {
        assert!(
            Instant::now() < end,
            "the logout never reached the server: {:?}",
            server.stats()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut got: Vec<Event> = handled.try_iter().collect();
    assert!(
        !got.iter().any(|e| matches!(
            e,
            Event::RoomStateChanged {
                reason: RoomStateChangedReason::Logout,
                ..
            }
        )),
        "the handler was not behind"
    );
    wait(&observed, &mut seen, "Logout", |e| {
        matches!(
            e,
            Event::RoomStateChanged {
                reason: RoomStateChangedReason::Logout,
                ..
            }
        )
    });

    // The handler got a prefix of what happened, with each run of events it could not take
    // replaced by one report of exactly how many.
    while !got.iter().any(|e| matches!(e, Event::EventsDropped { .. })) {
        got.push(
            handled
                .recv_timeout(Duration::from_secs(30))
                .expect("the slow handler's events"),
        );
    }
    bob.destroy();
    got.extend(handled.try_iter());
    seen.extend(observed.try_iter());
    let mut at = 0;
    for e in &got {
        match e {
            Event::EventsDropped { count } => {
                assert!(*count > 0);
                at += *count as usize;
            }
            e => {
                assert_eq!(
                    Some(e),
                    seen.get(at),
                    "the handler's event {at} is not the engine's"
                );
                at += 1;
            }
        }
    }
    assert!(at <= seen.len());
    eprintln!(
        "the handler took {} events, and was told of {} dropped, of the {} that happened",
        got.iter()
            .filter(|e| !matches!(e, Event::EventsDropped { .. }))
            .count(),
        got.iter()
            .map(|e| match e {
                Event::EventsDropped { count } => *count,
                _ => 0,
            })
            .sum::<u64>(),
        seen.len()
    );
}

/// Counts frames, taking 2 s over each.
#[derive(Default)]
struct SlowRenderer(std::sync::atomic::AtomicUsize);

impl huddle::VideoRenderer for SlowRenderer {
    fn on_remote_video_frame(&self, _stream_id: &str, _frame: &huddle::I420Frame) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// A video renderer that takes 2 s per frame costs frames, not the stream's audio (which comes
/// on the same connection) nor the session.
#[test]
fn a_renderer_that_takes_two_seconds_per_frame_stalls_nothing() {
    let server = server();
    let (bob, mut eb) = voice_engine(&server, "slow-video", "bob");
    let renderer = Arc::new(SlowRenderer::default());
    bob.set_video_renderer(Some(renderer.clone()));
    bob.set_audio_sink(AudioSink::Custom).unwrap();
    bob.start_playing_stream("alice-cam").unwrap();

    let (alice, mut ea) = engine_with(profile(&server));
    alice.enable_camera(true);
    alice.set_audio_source(AudioSource::Tone { hz: 600.0 }).unwrap();
    alice
        .login_room("slow-video", user("alice"), huddle::RoomConfig::default())
        .unwrap();
    alice.start_publishing_stream("alice-cam").unwrap();
    ea.publisher("alice-cam", PublisherState::Publishing);
    eb.wait(
        "first video frame",
        |e| matches!(e, Event::PlayerRecvVideoFirstFrame { stream_id } if stream_id.as_str() == "alice-cam"),
    );
    eb.player("alice-cam", PlayerState::Playing);

    let mut quiet = Vec::new();
    for i in 0..16 {
        let heard = pull(&bob, Duration::from_millis(500));
        let level = rms(&heard);
        if level < 1000.0 {
            quiet.push((i, level, heard.len()));
        }
    }
    assert!(quiet.is_empty(), "half seconds without the tone: {quiet:?}");
    let rendered = renderer.0.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        (1..=6).contains(&rendered),
        "{rendered} frames rendered in 8 s at 2 s each"
    );
    eb.drain();
    let broke = eb.seen.iter().any(|e| {
        matches!(
            e,
            Event::RoomStateChanged {
                reason: RoomStateChangedReason::Reconnecting,
                ..
            } | Event::PlayerStateUpdate {
                state: PlayerState::PlayRequesting,
                error_code: huddle::ErrorCode::PLAY_TEMPORARY_BREAK,
                ..
            }
        )
    });
    assert!(!broke, "the stream or the session broke: {:?}", eb.seen);
    bob.destroy();
    alice.destroy();
}
