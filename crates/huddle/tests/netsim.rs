//! The impairment harness itself: a call through the per-client proxies of `common::netsim`
//! reaches the server from each client's own IP and carries media.

mod common;

use common::netsim::Net;
use common::*;
use huddle::{AudioSource, Event, PlayerState, PublisherState, RoomConfig};

#[test]
fn a_call_passes_through_each_clients_own_proxies() {
    let net = Net::start(1);
    let (a, b) = (net.client(10), net.client(11));

    let (alice, mut ea) = engine_with(a.profile());
    alice.enable_camera(false);
    alice
        .login_room("netsim", user("alice"), RoomConfig::default())
        .unwrap();
    ea.room(huddle::RoomStateChangedReason::Logined);
    alice.set_audio_source(AudioSource::Tone { hz: 440.0 }).unwrap();
    alice.start_publishing_stream("alice-voice").unwrap();
    ea.publisher("alice-voice", PublisherState::Publishing);

    let (bob, mut eb) = engine_with(b.profile());
    bob.enable_camera(false);
    bob.login_room("netsim", user("bob"), RoomConfig::default())
        .unwrap();
    eb.room(huddle::RoomStateChangedReason::Logined);
    bob.start_playing_stream("alice-voice").unwrap();
    eb.wait("first audio frame", |e| {
        matches!(e, Event::PlayerRecvAudioFirstFrame { .. })
    });
    eb.player("alice-voice", PlayerState::Playing);

    // A second of the call: 50 audio packets a second go up.
    std::thread::sleep(std::time::Duration::from_secs(1));
    // Both clients' media went through the UDP proxy, each from its own IP, both ways.
    let stats = net.udp.stats();
    for c in [&a, &b] {
        let s = stats
            .get(&c.ip)
            .unwrap_or_else(|| panic!("no media from {}: {stats:?}", c.ip));
        assert!(s.up.delivered > 0 && s.down.delivered > 0, "{}: {s:?}", c.ip);
    }
    assert!(
        stats[&a.ip].up.delivered >= 40,
        "the publisher's audio went up: {stats:?}"
    );
    assert_eq!(a.tcp.connections(), 1);
    assert_eq!(b.tcp.connections(), 1);
    bob.destroy();
    alice.destroy();
}
