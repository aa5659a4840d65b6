//! Arbitrary SDP text into the SFU's offer path (`Command::Offer`, publish and play), with and
//! without a publisher whose media is negotiated, and arbitrary JSON into `media_offer` decoding.
//! Nothing may panic; every offer is answered (answer or error) and the SFU's invariants hold.
//!
//! Input: the first byte picks the case, the rest is the SDP text (lossy UTF-8, as a JSON string
//! field can carry anything but invalid UTF-8).
#![no_main]

use std::sync::OnceLock;

use huddle_proto::{MediaRole, ServerMsg};
use huddle_server::sfu::Command;
use huddle_server::sfu::testkit::{Peer, Sim, session};
use libfuzzer_sys::fuzz_target;

/// A real publish offer (audio and video), made once.
fn publish_offer() -> &'static str {
    static OFFER: OnceLock<String> = OnceLock::new();
    OFFER.get_or_init(|| {
        let sim = Sim::new();
        Peer::new(sim.now, 10_001, MediaRole::Publish, true).1
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&case, rest)) = data.split_first() else {
        return;
    };
    let sdp = String::from_utf8_lossy(rest).into_owned();
    let mut sim = Sim::new();
    let (role, with_publisher) = match case % 4 {
        0 => (MediaRole::Publish, false),
        1 => (MediaRole::Play, false),
        2 => (MediaRole::Play, true),
        _ => (MediaRole::Publish, true),
    };
    if with_publisher {
        // A publisher with negotiated media: play offers are answered at once, publish offers
        // replace its connection.
        sim.offer(1, "s", MediaRole::Publish, publish_offer().to_owned());
        sim.signals.clear();
    }
    sim.offer(2, "s", role, sdp.clone());
    let answered = sim.signals.iter().any(|(s, m)| {
        *s == session(2) && matches!(m, ServerMsg::MediaAnswer { .. } | ServerMsg::Error { .. })
    });
    // A play offer without a publisher waits for it (answered later or expired).
    assert!(
        answered || (role == MediaRole::Play && !with_publisher),
        "offer not answered"
    );
    sim.sfu.check_invariants().expect("SFU invariants");
    // The same text as the publisher's re-offer, then everything closes cleanly.
    if with_publisher && role == MediaRole::Play {
        sim.offer(1, "s", MediaRole::Publish, sdp);
    }
    sim.now += std::time::Duration::from_secs(6);
    sim.sfu.handle_timeout(sim.now);
    sim.drain_signals();
    sim.command(Command::SessionGone { session: session(2) });
    sim.command(Command::SessionGone { session: session(1) });
    sim.sfu.check_invariants().expect("SFU invariants");
    assert_eq!(sim.sfu.peer_connections(), 0);
    while sim.sfu.poll_transmit().is_some() {}
});
