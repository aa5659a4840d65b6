//! Messages, custom commands, extra info and the online user count between engines, against a
//! real server.

mod common;

use common::*;
use huddle::{ErrorCode, Event, PublisherState, RoomConfig};

fn broadcast_texts(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::IMRecvBroadcastMessage { messages, .. } => {
                Some(messages.iter().map(|m| m.message.clone()))
            }
            _ => None,
        })
        .flatten()
        .collect()
}

#[test]
fn engines_exchange_messages_commands_and_extra_info_within_their_room_only() {
    let server = server();
    let (alice, mut ea) = logged_in(&server, "chat", "alice", RoomConfig::default());
    let (bob, mut eb) = logged_in(&server, "chat", "bob", RoomConfig::default());
    let (_carol, mut ec) = logged_in(&server, "chat", "carol", RoomConfig::default());
    let (_dave, mut ed) = logged_in(&server, "other", "dave", RoomConfig::default());

    // Refused at once: bad arguments and another room.
    assert_eq!(
        alice.send_broadcast_message("chat", "").unwrap_err().code,
        ErrorCode::IM_CONTENT_INVALID
    );
    assert_eq!(
        alice.send_broadcast_message("other", "hi").unwrap_err().code,
        ErrorCode::NOT_LOGGED_IN
    );
    assert_eq!(
        alice
            .set_room_extra_info("chat", "a-long-key!", "v")
            .unwrap_err()
            .code,
        ErrorCode::ROOM_EXTRA_INFO_KEY_INVALID
    );

    // Broadcast: two in order, each with its result; the third within the second is refused.
    let s1 = alice.send_broadcast_message("chat", "one").unwrap();
    let s2 = alice.send_broadcast_message("chat", "two").unwrap();
    let s3 = alice.send_broadcast_message("chat", "three").unwrap();
    let result = |events: &mut Events, seq: u64| match events.wait(
        "broadcast result",
        |e| matches!(e, Event::IMSendBroadcastMessageResult { seq: s, .. } if *s == seq),
    ) {
        Event::IMSendBroadcastMessageResult {
            error_code,
            message_id,
            ..
        } => (error_code, message_id),
        _ => unreachable!(),
    };
    let (c1, id1) = result(&mut ea, s1);
    let (c2, id2) = result(&mut ea, s2);
    let (c3, _) = result(&mut ea, s3);
    assert_eq!(
        (c1, c2, c3),
        (ErrorCode::OK, ErrorCode::OK, ErrorCode::IM_USER_RATE_LIMITED)
    );
    assert!(id2 > id1);
    for events in [&mut eb, &mut ec] {
        events.wait_until("both messages", |seen| broadcast_texts(seen).len() >= 2);
        assert_eq!(broadcast_texts(&events.seen), ["one", "two"]);
    }

    // Barrage, from bob to the others.
    let seq = bob.send_barrage_message("chat", "wow").unwrap();
    eb.wait("barrage result", |e| {
        matches!(e, Event::IMSendBarrageMessageResult { seq: s, error_code: ErrorCode::OK, message_id, .. } if *s == seq && !message_id.is_empty())
    });
    ea.wait("barrage", |e| {
        matches!(e, Event::IMRecvBarrageMessage { messages, .. } if messages[0].message == "wow" && messages[0].from_user.user_id.as_str() == "bob")
    });

    // A custom command to bob alone; to dave (another room) refused.
    alice
        .send_custom_command("chat", "mute please", &["bob"])
        .unwrap();
    eb.wait("custom command", |e| {
        matches!(e, Event::IMRecvCustomCommand { from_user, command, .. } if command == "mute please" && from_user.user_id.as_str() == "alice")
    });
    let seq = alice.send_custom_command("chat", "hello", &["dave"]).unwrap();
    ea.wait("custom command refused", |e| {
        matches!(e, Event::IMSendCustomCommandResult { seq: s, error_code: ErrorCode::CUSTOM_COMMAND_NO_RECIPIENT, .. } if *s == seq)
    });

    // Stream extra info, set after the publish.
    bob.start_publishing_stream("bob-s").unwrap();
    assert_eq!(eb.publisher("bob-s", PublisherState::Publishing), ErrorCode::OK);
    let seq = bob.set_stream_extra_info("on stage").unwrap();
    eb.wait("stream extra info result", |e| {
        matches!(e, Event::PublisherSetStreamExtraInfoResult { seq: s, error_code: ErrorCode::OK } if *s == seq)
    });
    ea.wait("stream extra info", |e| {
        matches!(e, Event::RoomStreamExtraInfoUpdate { streams, .. } if streams[0].stream_id.as_str() == "bob-s" && streams[0].extra_info == "on stage")
    });

    // Room extra info: the others now, a late joiner at its login.
    let seq = alice.set_room_extra_info("chat", "topic", "rust").unwrap();
    ea.wait("room extra info result", |e| {
        matches!(e, Event::RoomSetRoomExtraInfoResult { seq: s, error_code: ErrorCode::OK, .. } if *s == seq)
    });
    eb.wait("room extra info", |e| {
        matches!(e, Event::RoomExtraInfoUpdate { room_extra_info_list: l, .. } if l[0].key == "topic" && l[0].value == "rust")
    });
    let (_eve, mut ee) = logged_in(&server, "chat", "eve", RoomConfig::default());
    ee.wait("room extra info at login", |e| {
        matches!(e, Event::RoomExtraInfoUpdate { room_extra_info_list: l, .. } if l[0].value == "rust" && l[0].update_user.user_id.as_str() == "alice")
    });
    ee.wait("online count at login", |e| {
        matches!(e, Event::RoomOnlineUserCountUpdate { count: 4, .. })
    });
    ee.wait("the late joiner sees bob's stream with its extra info", |e| {
        matches!(e, Event::RoomStreamUpdate { streams, .. } if streams.iter().any(|s| s.extra_info == "on stage"))
    });

    // Nothing of room "chat" reached dave, and nobody got their own messages back.
    ed.drain();
    let dave_saw = &ed.seen;
    assert!(
        !dave_saw.iter().any(|e| matches!(
            e,
            Event::IMRecvBroadcastMessage { .. }
                | Event::IMRecvBarrageMessage { .. }
                | Event::IMRecvCustomCommand { .. }
                | Event::RoomExtraInfoUpdate { .. }
                | Event::RoomStreamExtraInfoUpdate { .. }
        )),
        "{dave_saw:?}"
    );
    ea.drain();
    assert!(broadcast_texts(&ea.seen).is_empty());
    ec.drain();
    assert!(
        !ec.seen
            .iter()
            .any(|e| matches!(e, Event::IMRecvCustomCommand { .. })),
        "carol got bob's command"
    );
}
