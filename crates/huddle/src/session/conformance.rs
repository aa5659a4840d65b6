//! The conformance vectors (`conformance/*.json` at the workspace root, described in
//! `docs/protocol.md`, "Conformance vectors") run against the sans-IO session on virtual time.
//! `web/tests/conformance.test.js` runs the same files against `huddle.js`.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::*;

/// One vector, as read from its file.
struct Vector {
    name: String,
    app_id: u32,
    start_unix_ms: i64,
    steps: Vec<Value>,
}

fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../conformance")
}

fn load(path: &Path) -> Vector {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let name = v["name"].as_str().expect("a name").to_string();
    assert_eq!(
        path.file_stem().and_then(|s| s.to_str()),
        Some(name.as_str()),
        "a vector's file is named after it"
    );
    assert!(
        v["about"].as_str().is_some_and(|a| !a.is_empty()),
        "{name}: says what it checks"
    );
    Vector {
        name,
        app_id: v["app_id"].as_u64().expect("app_id") as u32,
        start_unix_ms: v["start_unix_ms"].as_i64().expect("start_unix_ms"),
        steps: v["steps"].as_array().expect("steps").clone(),
    }
}

/// Matches `actual` against `pattern`: `"*"` matches anything, `"$name"` binds the value the
/// first time and must equal it afterwards; objects must have exactly the pattern's keys.
fn matches(
    pattern: &Value,
    actual: &Value,
    vars: &mut BTreeMap<String, Value>,
    path: &str,
) -> Result<(), String> {
    match (pattern, actual) {
        (Value::String(p), _) if p == "*" => Ok(()),
        (Value::String(p), _) if p.starts_with('$') => match vars.get(p) {
            Some(bound) if bound == actual => Ok(()),
            Some(bound) => Err(format!("{path}: {p} is {bound}, got {actual}")),
            None => {
                vars.insert(p.clone(), actual.clone());
                Ok(())
            }
        },
        (Value::Object(p), Value::Object(a)) => {
            let (pk, ak): (Vec<_>, Vec<_>) = (p.keys().collect(), a.keys().collect());
            if pk != ak {
                return Err(format!("{path}: fields {ak:?}, expected {pk:?}"));
            }
            for (k, pv) in p {
                matches(pv, &a[k], vars, &format!("{path}.{k}"))?;
            }
            Ok(())
        }
        (Value::Array(p), Value::Array(a)) => {
            if p.len() != a.len() {
                return Err(format!("{path}: {} entries, expected {}", a.len(), p.len()));
            }
            for (i, (pv, av)) in p.iter().zip(a).enumerate() {
                matches(pv, av, vars, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        _ if pattern == actual => Ok(()),
        _ => Err(format!("{path}: got {actual}, expected {pattern}")),
    }
}

/// Replaces the bound `"$name"` strings of a server message by their values.
fn substitute(v: &Value, vars: &BTreeMap<String, Value>) -> Value {
    match v {
        Value::String(s) if s.starts_with('$') => vars
            .get(s)
            .cloned()
            .unwrap_or_else(|| panic!("{s} is used before the client sent it")),
        Value::Object(m) => Value::Object(m.iter().map(|(k, x)| (k.clone(), substitute(x, vars))).collect()),
        Value::Array(a) => Value::Array(a.iter().map(|x| substitute(x, vars)).collect()),
        other => other.clone(),
    }
}

/// The session and everything it did that the vector has not checked yet.
struct Run {
    s: Option<Session>,
    now: Instant,
    wake: Option<Instant>,
    vars: BTreeMap<String, Value>,
    sent: VecDeque<Value>,
    events: Vec<Value>,
    connects: VecDeque<usize>,
    /// A connection is open or opening (so that a close by the client counts).
    live: bool,
    closes: usize,
    /// `transport_mode: refuse`: every connection attempt fails at once, counted here.
    refuse: bool,
    refused: usize,
    ticket: u64,
}

impl Run {
    fn session(&mut self) -> &mut Session {
        self.s.as_mut().expect("login_room first")
    }

    fn input(&mut self, input: Input) {
        let now = self.now;
        self.session().handle_input(input, now);
        self.drain();
    }

    fn drain(&mut self) {
        let Some(s) = self.s.as_mut() else { return };
        let mut refusals = 0;
        loop {
            match s.poll_output() {
                Output::Timeout(t) => {
                    self.wake = t;
                    break;
                }
                Output::Finished => {
                    self.wake = None;
                    break;
                }
                Output::Connect { server } => {
                    self.live = true;
                    if self.refuse {
                        refusals += 1;
                    } else {
                        self.connects.push_back(server);
                    }
                }
                Output::Send(msg) => self
                    .sent
                    .push_back(serde_json::to_value(&msg).expect("serializes")),
                Output::Close => {
                    if std::mem::take(&mut self.live) {
                        self.closes += 1;
                    }
                }
                Output::Event(e) => {
                    if !e.is_quality() {
                        self.events.push(e.to_json());
                    }
                }
                Output::Release(_) => {}
                other => panic!("no media in the vectors, got {other:?}"),
            }
        }
        // Each refused attempt is answered after the session asked for it, as a socket would.
        for _ in 0..refusals {
            self.refused += 1;
            self.live = false;
            self.input(Input::ConnectFailed("connection refused".into()));
        }
    }

    fn advance(&mut self, d: Duration) {
        let target = self.now + d;
        while let Some(w) = self.wake
            && w <= target
        {
            self.now = self.now.max(w);
            self.input(Input::Timeout);
        }
        self.now = target;
    }

    fn call(&mut self, v: &Vector, step: &Value) {
        let str_of = |k: &str| {
            step[k]
                .as_str()
                .unwrap_or_else(|| panic!("{k} in {step}"))
                .to_string()
        };
        let stream = |k: &str| StreamId::new(str_of(k)).expect("a valid stream ID");
        let cmd = match step["call"].as_str().expect("a call") {
            "login_room" => {
                let user: User = serde_json::from_value(step["user"].clone()).expect("a user");
                let p = SessionParams {
                    app_id: AppId::new(v.app_id).expect("an app ID"),
                    app_sign: None,
                    room_id: RoomId::new(str_of("room_id")).expect("a room ID"),
                    user,
                    token: Some(str_of("token")),
                    user_status_notify: step["user_status_notify"].as_bool().unwrap_or(false),
                    max_member_count: 0,
                    timing: Timing::from(&EngineConfig::default()),
                    media: false,
                    servers: 1,
                    quality: false,
                };
                self.s = Some(Session::new(p, self.now, v.start_unix_ms, 1));
                self.drain();
                return;
            }
            "start_publishing_stream" => {
                self.ticket += 1;
                Command::Publish {
                    stream_id: stream("stream_id"),
                    ticket: self.ticket,
                }
            }
            "stop_publishing_stream" => Command::StopPublish,
            "start_playing_stream" => Command::Play {
                stream_id: stream("stream_id"),
            },
            "stop_playing_stream" => Command::StopPlay {
                stream_id: stream("stream_id"),
            },
            "renew_token" => Command::RenewToken {
                token: str_of("token"),
            },
            "logout_room" => Command::Logout,
            other => panic!("unknown call {other}"),
        };
        self.input(Input::Command(cmd));
    }

    fn step(&mut self, v: &Vector, i: usize, step: &Value) {
        let at = format!("{} step {i} {step}", v.name);
        let obj = step.as_object().expect("a step is an object");
        if obj.contains_key("call") {
            self.call(v, step);
        } else if let Some(server) = obj.get("connect") {
            let got = self.connects.pop_front();
            assert_eq!(got, Some(server.as_u64().expect("an index") as usize), "{at}");
        } else if let Some(t) = obj.get("transport") {
            let input = match t.as_str() {
                Some("open") => Input::Connected,
                Some("close") => {
                    self.live = false;
                    Input::Closed("closed by the server".into())
                }
                Some("refuse") => {
                    self.live = false;
                    Input::ConnectFailed("connection refused".into())
                }
                _ => panic!("{at}: unknown transport step"),
            };
            self.input(input);
        } else if let Some(mode) = obj.get("transport_mode") {
            self.refuse = mode == "refuse";
        } else if let Some(msg) = obj.get("server") {
            let msg = substitute(msg, &self.vars);
            let parsed: ServerMsg = serde_json::from_value(msg.clone())
                .unwrap_or_else(|e| panic!("{at}: not a server message: {e}"));
            self.input(Input::Message(parsed));
        } else if let Some(pattern) = obj.get("client") {
            let got = self
                .sent
                .pop_front()
                .unwrap_or_else(|| panic!("{at}: the client sent nothing"));
            if let Err(e) = matches(pattern, &got, &mut self.vars, "client") {
                panic!("{at}: {e}\n  sent: {got}");
            }
        } else if let Some(ms) = obj.get("advance_ms") {
            self.advance(Duration::from_millis(ms.as_u64().expect("milliseconds")));
        } else if let Some(expected) = obj.get("events") {
            let got = Value::Array(std::mem::take(&mut self.events));
            if let Err(e) = matches(expected, &got, &mut self.vars, "events") {
                panic!("{at}: {e}\n  events: {got:#}");
            }
        } else if obj.contains_key("closed") {
            assert!(self.closes > 0, "{at}: the client did not close its connection");
            self.closes -= 1;
        } else if let Some(range) = obj.get("refused_connects") {
            let (lo, hi) = (range[0].as_u64().expect("min"), range[1].as_u64().expect("max"));
            let n = std::mem::take(&mut self.refused) as u64;
            assert!((lo..=hi).contains(&n), "{at}: {n} connection attempts");
        } else {
            panic!("{at}: unknown step");
        }
    }
}

fn run(v: &Vector) {
    let mut r = Run {
        s: None,
        now: Instant::now(),
        wake: None,
        vars: BTreeMap::new(),
        sent: VecDeque::new(),
        events: Vec::new(),
        connects: VecDeque::new(),
        live: false,
        closes: 0,
        refuse: false,
        refused: 0,
        ticket: 0,
    };
    for (i, step) in v.steps.iter().enumerate() {
        r.step(v, i, step);
    }
    let name = &v.name;
    assert!(
        r.sent.is_empty(),
        "{name}: sent but not in the vector: {:?}",
        r.sent
    );
    assert!(
        r.events.is_empty(),
        "{name}: events not in the vector: {:?}",
        r.events
    );
    assert!(r.connects.is_empty(), "{name}: connections not in the vector");
    assert_eq!(r.closes, 0, "{name}: closes not in the vector");
}

#[test]
fn every_conformance_vector_passes() {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(vectors_dir())
        .expect("the conformance directory")
        .map(|e| e.expect("an entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 10, "only {} vectors", paths.len());
    let failed: Vec<String> = paths
        .iter()
        .map(|path| load(path))
        .filter(|v| std::panic::catch_unwind(|| run(v)).is_err())
        .map(|v| v.name)
        .collect();
    assert!(failed.is_empty(), "vectors failed: {failed:?}");
}

/// The matcher itself: a wrong vector must fail, not pass by accident.
#[test]
fn the_matcher_binds_compares_and_is_strict_about_fields() {
    let mut vars = BTreeMap::new();
    let p = serde_json::json!({"type": "ping", "seq": "$s"});
    assert!(matches(&p, &serde_json::json!({"type": "ping", "seq": 4}), &mut vars, "").is_ok());
    assert_eq!(vars["$s"], 4);
    assert!(matches(&p, &serde_json::json!({"type": "ping", "seq": 5}), &mut vars, "").is_err());
    assert!(
        matches(
            &p,
            &serde_json::json!({"type": "ping", "seq": 4, "x": 1}),
            &mut vars,
            ""
        )
        .is_err()
    );
    assert!(
        matches(
            &serde_json::json!(["*"]),
            &serde_json::json!([{"a": 1}]),
            &mut vars,
            ""
        )
        .is_ok()
    );
    assert!(matches(&serde_json::json!(["*"]), &serde_json::json!([]), &mut vars, "").is_err());
}
