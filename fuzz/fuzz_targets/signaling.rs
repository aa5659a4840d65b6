//! Arbitrary text through the signaling decoder (`ClientMsg::decode`) and, line by line, through
//! the server's message handling without sockets: each line is one client message on one of four
//! connections, decoded and applied to the sans-IO room registry as the signaling shell applies
//! it (login, logout, publish, unpublish, play, stop_play; plus connection breaks and grace
//! expiry). Nothing may panic, the registry's invariants must hold after every step, and every
//! decoded message must survive an encode → decode round trip unchanged.
#![no_main]

use std::time::{Duration, Instant};

use huddle_proto::{ClientMsg, ErrorCode, HuddleError, ServerMsg};
use huddle_server::auth::Grant;
use huddle_server::registry::{Limits, Output, Registry, SessionId};
use libfuzzer_sys::fuzz_target;

fn limits() -> Limits {
    Limits {
        default_max_member_count: 3,
        max_streams_per_app: 4,
        max_streams_per_session: 2,
        max_plays_per_session: 3,
        max_sessions: 5,
        heartbeat_ms: 5000,
        session_timeout_ms: 15000,
        grace: Duration::from_secs(20),
    }
}

/// One connection: the session attached to it and its epoch.
#[derive(Default, Clone, Copy)]
struct Conn {
    session: Option<(SessionId, u64)>,
    detached: Option<(SessionId, u64, Instant)>,
}

fn check(out: &[Output]) {
    for o in out {
        let msg = match o {
            Output::Send { msg, .. } => msg,
            Output::Broadcast { to, msg } => {
                assert!(!to.is_empty(), "broadcast to nobody");
                msg
            }
            // Closes and media commands carry no message to decode.
            Output::Close { .. } | Output::Media(_) => continue,
        };
        // Whatever the server sends must decode on the client side.
        let text = msg.encode();
        ServerMsg::decode(&text).expect("server messages decode");
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The whole input as one message.
    if let Ok(m) = ClientMsg::decode(text) {
        assert_eq!(ClientMsg::decode(&m.encode()).expect("re-decodes"), m);
    }
    // Line by line, against the registry.
    let mut reg = Registry::new(limits());
    let mut conns = [Conn::default(); 4];
    let mut now = Instant::now();
    let mut keys = 0u32;
    for line in text.lines().take(64) {
        let mut chars = line.chars();
        let Some(c) = chars.next() else { continue };
        let i = (c as usize) % conns.len();
        let rest = chars.as_str();
        let mut out = Vec::new();
        match rest {
            // Connection `i` breaks: its session is detached.
            "!" => {
                if let Some((id, epoch)) = conns[i].session.take()
                    && let Some(d) = reg.detach(id, epoch, now)
                {
                    conns[i].detached = Some((id, d.epoch, d.deadline));
                }
            }
            // Time passes past connection `i`'s grace deadline.
            "~" => {
                if let Some((id, epoch, deadline)) = conns[i].detached.take() {
                    now = now.max(deadline);
                    reg.expire(id, epoch, now, &mut out);
                }
            }
            _ => {
                let msg = match ClientMsg::decode(rest) {
                    Ok(m) => m,
                    Err(e) => {
                        assert_ne!(e.error.code, ErrorCode(0));
                        continue;
                    }
                };
                assert_eq!(ClientMsg::decode(&msg.encode()).expect("re-decodes"), msg);
                let result: Result<(), HuddleError> = match (&msg, conns[i].session) {
                    (ClientMsg::Login(login), None) => {
                        keys += 1;
                        let grant = Grant {
                            privileges: None,
                            token_expire: None,
                        };
                        reg.login(login, grant, format!("key{keys}"), &mut out)
                            .map(|att| {
                                conns[i].session = Some((att.session, att.epoch));
                                // A resume moves the session off any other connection.
                                for (j, c) in conns.iter_mut().enumerate() {
                                    if j != i && c.session.is_some_and(|(s, _)| s == att.session) {
                                        c.session = None;
                                    }
                                }
                            })
                    }
                    (_, None) => Err(HuddleError::from(ErrorCode::NOT_LOGGED_IN)),
                    (ClientMsg::Login(_), Some(_)) => Err(HuddleError::from(ErrorCode::ALREADY_LOGGED_IN)),
                    (ClientMsg::Logout { seq }, Some((id, _))) => reg.logout(id, *seq, &mut out),
                    (
                        ClientMsg::Publish {
                            seq,
                            stream_id,
                            extra_info,
                        },
                        Some((id, _)),
                    ) => reg.publish(id, *seq, stream_id, extra_info, &mut out),
                    (ClientMsg::Unpublish { seq, stream_id }, Some((id, _))) => {
                        reg.unpublish(id, *seq, stream_id, &mut out)
                    }
                    (ClientMsg::Play { seq, stream_id }, Some((id, _))) => {
                        reg.play(id, *seq, stream_id, &mut out)
                    }
                    (ClientMsg::StopPlay { seq, stream_id }, Some((id, _))) => {
                        reg.stop_play(id, *seq, stream_id, &mut out)
                    }
                    (ClientMsg::MediaOffer { stream_id, .. }, Some((id, _))) => {
                        let _ = reg.publishes(id, stream_id);
                        let _ = reg.play_status(id, stream_id);
                        Ok(())
                    }
                    (ClientMsg::RenewToken { seq, .. }, Some((id, _))) => reg.renew(
                        id,
                        *seq,
                        Grant {
                            privileges: None,
                            token_expire: None,
                        },
                        &mut out,
                    ),
                    (ClientMsg::Ping { .. }, Some(_)) => Ok(()),
                };
                if let Err(e) = result {
                    assert_ne!(e.code, ErrorCode(0));
                }
            }
        }
        // Sessions that the registry ended are no longer attached anywhere.
        for o in &out {
            if let Output::Close { session } = o {
                for c in conns.iter_mut() {
                    if c.session.is_some_and(|(s, _)| s == *session) {
                        c.session = None;
                    }
                }
            }
        }
        check(&out);
        reg.check_invariants().expect("registry invariants");
        let stats = reg.stats();
        assert!(stats.sessions <= limits().max_sessions, "{stats:?}");
    }
});
