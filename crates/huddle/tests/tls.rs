//! The SDK over `wss://`: a real huddle-server serving TLS on 127.0.0.1 with a certificate of a
//! test CA (rcgen). With the CA given to the engine (`EngineProfile::ca_cert_pem`) two engines log
//! in, publish and play; without it the login fails with 1002030 and says why.

mod common;

#[path = "../../huddle-server/tests/common/certs.rs"]
mod certs;

use std::time::Duration;

use certs::TestCerts;
use common::*;
use huddle::{AudioSink, AudioSource, Engine, EngineProfile, Event, PlayerState, PublisherState, RoomConfig};
use huddle_server::{BackgroundServer, ServerConfig};

fn tls_server(certs: &TestCerts) -> BackgroundServer {
    let mut config = ServerConfig::for_tests(vec![app()]);
    config.tls_cert = Some(certs.cert_file.clone());
    config.tls_key = Some(certs.key_file.clone());
    BackgroundServer::start(config).expect("server starts")
}

fn wss_profile(server: &BackgroundServer, ca: Option<&str>) -> EngineProfile {
    let mut p = profile(server);
    assert!(p.server.starts_with("wss://"), "{}", p.server);
    p.ca_cert_pem = ca.map(str::to_string);
    p
}

#[test]
fn engines_log_in_publish_and_play_over_wss_with_the_extra_ca() {
    let certs = TestCerts::new("sdk-wss");
    let server = tls_server(&certs);
    let login = |user_id: &str, host: &str| {
        let mut p = wss_profile(&server, Some(&certs.ca_pem));
        p.server = p.server.replace("127.0.0.1", host);
        let (engine, mut events) = engine_with(p);
        engine.enable_camera(false);
        engine
            .login_room("tls-room", user(user_id), RoomConfig::default())
            .unwrap();
        assert_eq!(
            events.room(huddle::RoomStateChangedReason::Logined),
            huddle::ErrorCode::OK
        );
        (engine, events)
    };
    // By IP address and by name: the certificate is for both.
    let (alice, mut ea) = login("alice", "127.0.0.1");
    let (bob, mut eb) = login("bob", "localhost");
    bob.set_audio_sink(AudioSink::Custom).unwrap();
    alice.set_audio_source(AudioSource::Tone { hz: 600.0 }).unwrap();
    alice.start_publishing_stream("alice-tls").unwrap();
    assert_eq!(
        ea.publisher("alice-tls", PublisherState::Publishing),
        huddle::ErrorCode::OK
    );
    bob.start_playing_stream("alice-tls").unwrap();
    eb.wait(
        "first audio frame",
        |e| matches!(e, Event::PlayerRecvAudioFirstFrame { stream_id } if stream_id.as_str() == "alice-tls"),
    );
    eb.player("alice-tls", PlayerState::Playing);
    let heard = pull(&bob, Duration::from_millis(400));
    assert!(
        heard.iter().any(|s| s.abs() > 1000),
        "bob hears nothing of alice's tone"
    );
    assert_eq!(server.stats().sessions, 2);
}

#[test]
fn without_the_ca_the_login_fails_with_connect_failed_and_says_why() {
    let certs = TestCerts::new("sdk-untrusted");
    let server = tls_server(&certs);
    // Neither with the system's roots alone nor with another CA.
    let other = TestCerts::new("sdk-other-ca");
    for ca in [None, Some(other.ca_pem.as_str())] {
        let mut p = wss_profile(&server, ca);
        // Far longer than the test waits for the failure: it comes at the first refusal, not
        // when the retries run out.
        p.config.login_timeout = Duration::from_secs(600);
        let (engine, mut events) = engine_with(p);
        engine
            .login_room("tls-room", user("mallory"), RoomConfig::default())
            .unwrap();
        let failed = events.wait("login failed", |e| {
            matches!(
                e,
                Event::RoomStateChanged {
                    reason: huddle::RoomStateChangedReason::LoginFailed,
                    ..
                }
            )
        });
        let Event::RoomStateChanged {
            error_code,
            extended_data,
            ..
        } = failed
        else {
            unreachable!()
        };
        assert_eq!(error_code, huddle::ErrorCode::CONNECT_FAILED, "{extended_data}");
        assert!(
            extended_data.contains("certificate was not trusted") && extended_data.contains("ca_cert_pem"),
            "{extended_data}"
        );
        assert_eq!(server.stats().sessions, 0);
    }
}

#[test]
fn a_bad_ca_is_refused_at_create_and_wss_addresses_are_accepted() {
    let mut p = EngineProfile::new(APP_ID, "wss://127.0.0.1:1");
    p.ca_cert_pem = Some("not a certificate".into());
    let Err(e) = Engine::create(p.clone()) else {
        panic!("a junk CA was accepted")
    };
    assert_eq!(e.code, huddle::ErrorCode::INVALID_PARAMETER);
    assert!(e.message.contains("ca_cert_pem"), "{}", e.message);
    p.ca_cert_pem = Some("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into());
    let Err(e) = Engine::create(p.clone()) else {
        panic!("a broken CA was accepted")
    };
    assert_eq!(e.code, huddle::ErrorCode::INVALID_PARAMETER, "{}", e.message);
    p.ca_cert_pem = None;
    Engine::create(p).expect("a wss:// server address").destroy();
}
