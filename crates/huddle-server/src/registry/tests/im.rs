//! Messages, custom commands, extra info and the online user count, on virtual time.

use super::*;

const SECOND: Duration = Duration::from_secs(1);

impl H {
    fn im_clock(&self) -> Clock {
        Clock {
            at: self.now,
            unix_ms: 1_000_000,
        }
    }

    fn send(
        &mut self,
        id: SessionId,
        kind: MessageKind,
        text: &str,
    ) -> Result<(Msgs, Vec<Output>), ErrorCode> {
        let now = self.im_clock();
        let (r, out) = self.run(|reg, out| reg.send_message(id, 9, kind, text, now, out));
        r.map(|()| (flatten(out.clone()).0, out)).map_err(|e| e.code)
    }

    fn command(&mut self, id: SessionId, text: &str, to: &[&str]) -> Result<(Msgs, Vec<Output>), ErrorCode> {
        let now = self.im_clock();
        let to: Vec<UserId> = to.iter().map(|u| UserId::new(*u).unwrap()).collect();
        let (r, out) = self.run(|reg, out| reg.send_custom_command(id, 9, text, &to, now, out));
        r.map(|()| (flatten(out.clone()).0, out)).map_err(|e| e.code)
    }

    fn room_extra(
        &mut self,
        id: SessionId,
        key: &str,
        value: &str,
    ) -> Result<(Msgs, Vec<Output>), ErrorCode> {
        let now = self.im_clock();
        let (r, out) = self.run(|reg, out| reg.set_room_extra_info(id, 9, key, value, now, out));
        r.map(|()| (flatten(out.clone()).0, out)).map_err(|e| e.code)
    }
}

fn recipients(msgs: &Msgs) -> Vec<SessionId> {
    let mut v: Vec<SessionId> = msgs
        .iter()
        .filter(|(_, m)| !matches!(m, ServerMsg::Ok { .. } | ServerMsg::MessageSent { .. }))
        .map(|(t, _)| *t)
        .collect();
    v.sort();
    v
}

fn sorted(mut v: Vec<SessionId>) -> Vec<SessionId> {
    v.sort();
    v
}

#[test]
fn a_broadcast_message_reaches_everyone_else_in_the_room_and_nothing_else() {
    let mut h = H::new();
    let alice = h.login("r", "alice", false);
    let bob = h.login("r", "bob", false);
    let carol = h.login("r", "carol", false);
    let _dave = h.login("r2", "dave", false);
    let (eve, _) = h.login_full(&login_msg(OTHER_APP, "r", "eve", false));
    let (msgs, _) = h.send(alice, MessageKind::Broadcast, "hello").unwrap();
    let id1 = match to(&msgs, alice).as_slice() {
        [ServerMsg::MessageSent { seq: 9, message_id }] => *message_id,
        other => panic!("expected message_sent, got {other:?}"),
    };
    assert_eq!(recipients(&msgs), sorted(vec![bob, carol]));
    assert_eq!(
        to(&msgs, bob),
        vec![ServerMsg::BroadcastMessage {
            room_id: room("r"),
            message_id: id1,
            send_time_ms: 1_000_000,
            from_user: user("alice"),
            message: "hello".into(),
        }]
    );
    assert!(to(&msgs, eve.session).is_empty());
    // The next message has a larger ID (after the user's rate allows it again).
    h.now += SECOND;
    let (msgs, _) = h.send(alice, MessageKind::Broadcast, "again").unwrap();
    let ServerMsg::MessageSent { message_id: id2, .. } = to(&msgs, alice)[0] else {
        panic!("expected message_sent");
    };
    assert!(id2 > id1);
    // IDs stay exact as JavaScript numbers.
    assert!(id2 < 1 << 53);
}

#[test]
fn messages_are_refused_over_1_kb_and_over_the_rates_and_allowed_again_a_second_later() {
    let mut h = H::new();
    let ids: Vec<SessionId> = (0..12).map(|i| h.login("r", &format!("u{i}"), false)).collect();
    assert_eq!(
        h.send(ids[0], MessageKind::Broadcast, "").unwrap_err(),
        ErrorCode::IM_CONTENT_INVALID
    );
    let big = "x".repeat(1025);
    assert_eq!(
        h.send(ids[0], MessageKind::Broadcast, &big).unwrap_err(),
        ErrorCode::IM_CONTENT_INVALID
    );
    h.send(ids[0], MessageKind::Broadcast, &"x".repeat(1024)).unwrap();
    // Two broadcast messages a second per user.
    h.send(ids[0], MessageKind::Broadcast, "2").unwrap();
    assert_eq!(
        h.send(ids[0], MessageKind::Broadcast, "3").unwrap_err(),
        ErrorCode::IM_USER_RATE_LIMITED
    );
    // Ten a second in the room: users 1..=8 bring the room to 10.
    for id in &ids[1..9] {
        h.send(*id, MessageKind::Broadcast, "m").unwrap();
    }
    assert_eq!(
        h.send(ids[9], MessageKind::Broadcast, "m").unwrap_err(),
        ErrorCode::IM_ROOM_RATE_LIMITED
    );
    h.now += SECOND;
    h.send(ids[9], MessageKind::Broadcast, "m").unwrap();
    h.send(ids[0], MessageKind::Broadcast, "m").unwrap();
    // Barrage: twenty a second in the room, from anyone.
    for _ in 0..20 {
        h.send(ids[1], MessageKind::Barrage, "b").unwrap();
    }
    assert_eq!(
        h.send(ids[2], MessageKind::Barrage, "b").unwrap_err(),
        ErrorCode::IM_ROOM_RATE_LIMITED
    );
    h.now += SECOND;
    h.send(ids[2], MessageKind::Barrage, "b").unwrap();
}

#[test]
fn barrage_messages_are_best_effort_broadcasts() {
    let mut h = H::new();
    let alice = h.login("r", "alice", false);
    let bob = h.login("r", "bob", false);
    let (_, out) = h.send(alice, MessageKind::Barrage, "wow").unwrap();
    let lossy: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            Output::BroadcastLossy { to, msg } => Some((to.clone(), msg.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(lossy.len(), 1);
    assert_eq!(lossy[0].0, vec![bob]);
    assert!(matches!(&lossy[0].1, ServerMsg::BarrageMessage { message, .. } if message == "wow"));
}

#[test]
fn a_custom_command_reaches_the_chosen_users_of_the_room_only() {
    let mut h = H::new();
    let alice = h.login("r", "alice", false);
    let bob = h.login("r", "bob", false);
    let carol = h.login("r", "carol", false);
    let dave = h.login("r2", "dave", false);
    let (bob_elsewhere, _) = h.login_full(&login_msg(OTHER_APP, "r", "bob", false));
    let (msgs, _) = h.command(alice, "go", &["bob"]).unwrap();
    assert_eq!(to(&msgs, alice), vec![ServerMsg::Ok { seq: 9 }]);
    assert_eq!(recipients(&msgs), vec![bob]);
    assert_eq!(
        to(&msgs, bob),
        vec![ServerMsg::CustomCommand {
            room_id: room("r"),
            from_user: user("alice"),
            command: "go".into()
        }]
    );
    // Empty: everyone else in the room.
    let (msgs, _) = h.command(alice, "all", &[]).unwrap();
    assert_eq!(recipients(&msgs), sorted(vec![bob, carol]));
    // A user of another room (or the sender) is skipped; with nobody left, refused.
    let (msgs, _) = h.command(alice, "x", &["bob", "dave"]).unwrap();
    assert_eq!(recipients(&msgs), vec![bob]);
    assert_eq!(
        h.command(alice, "x", &["dave"]).unwrap_err(),
        ErrorCode::CUSTOM_COMMAND_NO_RECIPIENT
    );
    assert_eq!(
        h.command(alice, "x", &["alice"]).unwrap_err(),
        ErrorCode::CUSTOM_COMMAND_NO_RECIPIENT
    );
    assert_eq!(
        h.command(dave, "x", &[]).unwrap_err(),
        ErrorCode::CUSTOM_COMMAND_NO_RECIPIENT
    );
    assert!(to(&msgs, bob_elsewhere.session).is_empty() && to(&msgs, dave).is_empty());
    assert_eq!(
        h.command(alice, "", &["bob"]).unwrap_err(),
        ErrorCode::IM_CONTENT_INVALID
    );
    let many: Vec<String> = (0..101).map(|i| format!("u{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    assert_eq!(
        h.command(alice, "x", &many).unwrap_err(),
        ErrorCode::CUSTOM_COMMAND_NO_RECIPIENT
    );
}

#[test]
fn custom_commands_are_limited_to_200_a_second_to_one_user_and_10_to_several() {
    let mut h = H::new();
    let alice = h.login("r", "alice", false);
    h.login("r", "bob", false);
    h.login("r", "carol", false);
    for _ in 0..10 {
        h.command(alice, "many", &[]).unwrap();
    }
    assert_eq!(
        h.command(alice, "many", &["bob", "carol"]).unwrap_err(),
        ErrorCode::IM_ROOM_RATE_LIMITED
    );
    for _ in 0..200 {
        h.command(alice, "one", &["bob"]).unwrap();
    }
    assert_eq!(
        h.command(alice, "one", &["carol"]).unwrap_err(),
        ErrorCode::IM_ROOM_RATE_LIMITED
    );
    h.now += SECOND;
    h.command(alice, "one", &["carol"]).unwrap();
    h.command(alice, "many", &[]).unwrap();
}

#[test]
fn stream_extra_info_updates_reach_the_room_and_later_logins() {
    let mut h = H::new();
    let alice = h.login("r", "alice", false);
    let bob = h.login("r", "bob", false);
    h.publish(alice, "s1").unwrap();
    let (r, out) = h.run(|reg, out| reg.set_stream_extra_info(alice, 9, &sid("s1"), "muted", out));
    r.unwrap();
    let msgs = flatten(out.clone()).0;
    assert_eq!(to(&msgs, alice), vec![ServerMsg::Ok { seq: 9 }]);
    let mut expected = info("alice", "s1");
    expected.extra_info = "muted".into();
    assert_eq!(
        to(&msgs, bob),
        vec![ServerMsg::StreamExtraInfoUpdate {
            room_id: room("r"),
            streams: vec![expected.clone()]
        }]
    );
    assert!(cluster(&out).contains(&ClusterCommand::Change {
        app: app_id(APP),
        room: room("r"),
        change: RoomChange::StreamExtraInfo(expected.clone()),
    }));
    let (carol, msgs) = h.login_full(&login_msg(APP, "r", "carol", false));
    assert_eq!(login_ok(&msgs, carol.session).streams, vec![expected]);
    // Only the publisher sets it; too long is refused.
    let (r, _) = h.run(|reg, out| reg.set_stream_extra_info(bob, 9, &sid("s1"), "x", out));
    assert_eq!(r.unwrap_err().code, ErrorCode::STREAM_NOT_FOUND);
    let big = "x".repeat(1025);
    let (r, _) = h.run(|reg, out| reg.set_stream_extra_info(alice, 9, &sid("s1"), &big, out));
    assert_eq!(r.unwrap_err().code, ErrorCode::EXTRA_INFO_TOO_LONG);
}

#[test]
fn room_extra_info_has_one_key_of_10_bytes_with_128_byte_values_and_reaches_late_joiners() {
    let mut h = H::new();
    let alice = h.login("r", "alice", false);
    let bob = h.login("r", "bob", false);
    assert_eq!(
        h.room_extra(alice, "", "v").unwrap_err(),
        ErrorCode::ROOM_EXTRA_INFO_KEY_INVALID
    );
    assert_eq!(
        h.room_extra(alice, "12345678901", "v").unwrap_err(),
        ErrorCode::ROOM_EXTRA_INFO_KEY_INVALID
    );
    let long = "v".repeat(129);
    assert_eq!(
        h.room_extra(alice, "k", &long).unwrap_err(),
        ErrorCode::ROOM_EXTRA_INFO_VALUE_TOO_LONG
    );
    let (msgs, out) = h.room_extra(alice, "1234567890", &"v".repeat(128)).unwrap();
    assert_eq!(to(&msgs, alice), vec![ServerMsg::Ok { seq: 9 }]);
    let set = RoomExtraInfo {
        key: "1234567890".into(),
        value: "v".repeat(128),
        update_user: user("alice"),
        update_time_ms: 1_000_000,
    };
    assert_eq!(
        to(&msgs, bob),
        vec![ServerMsg::RoomExtraInfoUpdate {
            room_id: room("r"),
            infos: vec![set.clone()]
        }]
    );
    assert_eq!(cluster(&out).len(), 1);
    assert_eq!(
        h.room_extra(bob, "other", "v").unwrap_err(),
        ErrorCode::ROOM_EXTRA_INFO_KEY_LIMIT
    );
    // A late joiner gets it right after login_ok; another room has none.
    let (carol, msgs) = h.login_full(&login_msg(APP, "r", "carol", false));
    let carol_msgs = to(&msgs, carol.session);
    assert!(matches!(carol_msgs[0], ServerMsg::LoginOk(_)));
    assert_eq!(
        carol_msgs[1],
        ServerMsg::RoomExtraInfoUpdate {
            room_id: room("r"),
            infos: vec![set]
        }
    );
    let (dave, msgs) = h.login_full(&login_msg(APP, "r2", "dave", false));
    assert_eq!(to(&msgs, dave.session).len(), 1);
    // Ten changes a second in the room (one made above).
    for i in 0..9 {
        h.room_extra(bob, "1234567890", &i.to_string()).unwrap();
    }
    assert_eq!(
        h.room_extra(bob, "1234567890", "x").unwrap_err(),
        ErrorCode::ROOM_EXTRA_INFO_RATE_LIMITED
    );
    h.now += SECOND;
    h.room_extra(bob, "1234567890", "x").unwrap();
}

#[test]
fn the_online_user_count_comes_at_login_and_every_30_seconds() {
    let mut h = H::new();
    let alice = h.login("r", "alice", false);
    let mut out = Vec::new();
    h.reg.online_count_after_login(alice, h.now, &mut out);
    let count = |n| ServerMsg::RoomOnlineUserCount {
        room_id: room("r"),
        count: n,
    };
    assert_eq!(flatten(out).0, vec![(alice, count(1))]);
    let start = h.now;
    h.now += SECOND * 10;
    let bob = h.login("r", "bob", false);
    let mut out = Vec::new();
    h.reg.online_count_after_login(bob, h.now, &mut out);
    assert_eq!(flatten(out).0, vec![(bob, count(2))]);
    // The room's timer runs from its first login, not from bob's.
    assert_eq!(h.reg.poll_timeout().at, Some(start + ONLINE_COUNT_INTERVAL));
    let mut out = Vec::new();
    let at = |d| Clock {
        at: d,
        unix_ms: 1_000_000,
    };
    assert_eq!(
        h.reg
            .handle_timeout(at(start + ONLINE_COUNT_INTERVAL - SECOND), &mut out),
        0
    );
    assert!(out.is_empty());
    assert_eq!(
        h.reg.handle_timeout(at(start + ONLINE_COUNT_INTERVAL), &mut out),
        1
    );
    assert_eq!(
        sorted(flatten(out.clone()).0.iter().map(|(t, _)| *t).collect()),
        sorted(vec![alice, bob])
    );
    assert!(flatten(out).0.iter().all(|(_, m)| *m == count(2)));
    assert_eq!(h.reg.poll_timeout().at, Some(start + ONLINE_COUNT_INTERVAL * 2));
    // Once the room is gone its timer does nothing.
    h.logout(alice);
    h.logout(bob);
    let mut out = Vec::new();
    assert_eq!(
        h.reg
            .handle_timeout(at(start + ONLINE_COUNT_INTERVAL * 2), &mut out),
        0
    );
    assert!(out.is_empty());
}

#[test]
fn messages_commands_and_extra_info_reach_the_members_of_another_node() {
    let (mut a, mut b) = (H::new(), H::new());
    let alice = a.login("r", "alice", false);
    let (out_b, bob) = {
        let (bob, _, out) = login_remote(&mut b, "r", "bob", snapshot_of(&a, "r", "A|1"));
        (out, bob)
    };
    // Node A learns of bob.
    relay("B|1", &out_b, &mut a);
    let carol = b.login("r", "carol", false);
    // A broadcast message on A reaches bob and carol on B, in order.
    let (_, out1) = a.send(alice, MessageKind::Broadcast, "one").unwrap();
    let (_, out2) = a.send(alice, MessageKind::Broadcast, "two").unwrap();
    let mut got = relay("A|1", &out1, &mut b);
    got.extend(relay("A|1", &out2, &mut b));
    let texts = |id| -> Vec<String> {
        to(&got, id)
            .into_iter()
            .filter_map(|m| match m {
                ServerMsg::BroadcastMessage { message, .. } => Some(message),
                _ => None,
            })
            .collect()
    };
    assert_eq!(texts(bob), vec!["one", "two"]);
    assert_eq!(texts(carol), vec!["one", "two"]);
    // A custom command to bob (on B) reaches bob only.
    let (_, out) = a.command(alice, "psst", &["bob"]).unwrap();
    let got = relay("A|1", &out, &mut b);
    assert_eq!(recipients(&got), vec![bob]);
    // Room extra info set on A reaches B's members and B's later logins.
    let (_, out) = a.room_extra(alice, "topic", "rust").unwrap();
    let got = relay("A|1", &out, &mut b);
    assert_eq!(recipients(&got), sorted(vec![bob, carol]));
    let (dan, msgs) = b.login_full(&login_msg(APP, "r", "dan", false));
    assert!(
        matches!(&to(&msgs, dan.session)[1], ServerMsg::RoomExtraInfoUpdate { infos, .. } if infos[0].value == "rust")
    );
    // Read back on A (its own change, in the history's order), it changes nothing there.
    let again = relay("A|1", &out, &mut a);
    assert!(again.is_empty());
    // Stream extra info of a stream published on A.
    let (_, out) = a.run(|reg, out| reg.publish(alice, 2, &sid("s1"), "x", out));
    relay("A|1", &out, &mut b);
    let (r, out) = a.run(|reg, out| reg.set_stream_extra_info(alice, 9, &sid("s1"), "y", out));
    r.unwrap();
    let got = relay("A|1", &out, &mut b);
    assert!(to(&got, carol).iter().any(
        |m| matches!(m, ServerMsg::StreamExtraInfoUpdate { streams, .. } if streams[0].extra_info == "y")
    ));
    assert!(b.reg.room(app_id(APP), &room("r")).unwrap().streams[0].extra_info == "y");
}

#[test]
fn a_late_joiner_on_another_node_gets_the_room_extra_info_from_the_snapshot() {
    let mut a = H::new();
    let alice = a.login("r", "alice", false);
    a.room_extra(alice, "k", "v").unwrap();
    let mut snapshot = snapshot_of(&a, "r", "A|1");
    snapshot.extra = vec![RoomExtraInfo {
        key: "k".into(),
        value: "v".into(),
        update_user: user("alice"),
        update_time_ms: 5,
    }];
    let mut b = H::new();
    let (bob, msgs, _) = login_remote(&mut b, "r", "bob", snapshot);
    assert!(
        matches!(&to(&msgs, bob)[1], ServerMsg::RoomExtraInfoUpdate { infos, .. } if infos[0].key == "k")
    );
}
