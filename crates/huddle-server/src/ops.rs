//! The server API's actions as the cluster's: each action that acts on sessions, streams or
//! recordings is an [`Op`], run by every node on its own part ([`run_local`]) and answered
//! with what it did there. On one node the op runs here alone; in a cluster it goes to every
//! node through Redis pub/sub ([`Bus`]): published on `huddle:ops`, each node (the asking one
//! included) runs it and answers on the asker's own channel `huddle:ops:reply:{node}`. The
//! asker waits for as many answers as `PUBLISH` reported subscribers (at most [`ASK_TIMEOUT`]),
//! so it knows when every live node has answered.
//!
//! Why pub/sub and not the room histories (Redis streams): an op is a question to the nodes
//! alive *now*, answered at once; a node that is not subscribed at that moment has nothing of
//! the room to act on (its sessions are gone with its connection to Redis, or it is starting),
//! and nothing needs replaying later. A kick or a stopped stream then reaches the room's other
//! nodes through the room's history, as any change does.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use huddle_proto::{AppId, ErrorCode, RoomId, StreamId, User, UserId};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::signaling::ServerState;

/// The channel every node listens to for ops.
const OPS_CHANNEL: &str = "huddle:ops";
/// How long an asker waits for the nodes' answers.
pub(crate) const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a starting node waits for its first subscription before it serves anyway.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(5);
/// How long one Redis command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);

/// What the API asks of every node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Op {
    /// The rooms of the app with a member on the node, with the whole room's counts.
    Rooms,
    /// Kick these users' sessions in the room.
    Kick {
        room: RoomId,
        users: Vec<UserId>,
        reason: String,
    },
    /// Kick every session of the room.
    Close { room: RoomId, reason: String },
    /// Stop the stream if it is published on the node.
    StopStream { room: RoomId, stream: StreamId },
    /// Send a broadcast message to the room, by node `to` alone (one with a member).
    Broadcast {
        room: RoomId,
        sender: User,
        message: String,
        to: String,
    },
    /// Start recording task `task` of the room on the node (its publishers, now and later).
    RecordStart {
        room: RoomId,
        stream: Option<StreamId>,
        task: String,
    },
    /// Stop recording task `task` on the node.
    RecordStop { task: String },
    /// The node's part of recording task `task`.
    RecordDescribe { task: String },
}

#[derive(Debug, Serialize, Deserialize)]
struct Request {
    id: u64,
    from: String,
    app: u32,
    op: Op,
}

#[derive(Debug, Serialize, Deserialize)]
struct Reply {
    id: u64,
    node: String,
    result: Value,
}

/// Runs `op` of `app` on this node's part: what it did, as JSON (each op's own shape).
pub(crate) fn run_local(state: &ServerState, node: &str, app: AppId, op: &Op) -> Value {
    match op {
        Op::Rooms => {
            let rooms = state.with_registry(|r, _| {
                r.room_ids(app)
                    .into_iter()
                    .filter_map(|id| r.room(app, &id).map(|v| (id, v)))
                    .map(|(id, v)| json!({"RoomId": id.as_str(), "UserCount": v.users.len(), "StreamCount": v.streams.len()}))
                    .collect::<Vec<_>>()
            });
            json!({ "rooms": rooms })
        }
        Op::Kick { room, users, reason } => {
            let kicked = state.with_registry(|r, out| {
                users
                    .iter()
                    .filter(|u| {
                        r.session_of(app, room, u)
                            .is_some_and(|s| r.kick(s, ErrorCode::KICKED_BY_SERVER, reason, out))
                    })
                    .map(|u| u.as_str().to_string())
                    .collect::<Vec<_>>()
            });
            json!({ "kicked": kicked })
        }
        Op::Close { room, reason } => {
            let closed = state.with_registry(|r, out| {
                let sessions = r.room_sessions(app, room);
                let n = sessions.len();
                for s in sessions {
                    let _ = r.kick(s, ErrorCode::KICKED_BY_SERVER, reason, out);
                }
                n
            });
            json!({ "closed": closed })
        }
        Op::StopStream { room, stream } => {
            let stopped = state.with_registry(|r, out| {
                r.stop_stream(
                    app,
                    room,
                    stream,
                    ErrorCode::STREAM_STOPPED_BY_SERVER,
                    "the stream was stopped by the app's server",
                    out,
                )
            });
            json!({ "stopped": stopped })
        }
        Op::Broadcast {
            room,
            sender,
            message,
            to,
        } => {
            if to != node {
                return json!({});
            }
            let sent = state.with_registry(|r, out| {
                r.server_broadcast(
                    app,
                    room,
                    sender.clone(),
                    message.clone(),
                    crate::registry::Clock::now().unix_ms,
                    out,
                )
            });
            json!({ "message_id": sent })
        }
        Op::RecordStart { room, stream, task } => {
            match state
                .recorder()
                .start_task_as(app, room, stream.clone(), task.clone())
            {
                Ok(now) => {
                    state.record_streams(app, now);
                    json!({ "started": true })
                }
                // Known already: from the cluster's task list when this node started.
                Err(crate::recording::StartError::Exists(Some(other))) if other == *task => {
                    json!({ "started": true })
                }
                Err(crate::recording::StartError::Exists(other)) => {
                    json!({ "started": false, "exists": other })
                }
            }
        }
        Op::RecordStop { task } => json!({ "found": state.recorder().stop_task(app, task) }),
        Op::RecordDescribe { task } => json!({ "part": state.recorder().describe(app, task) }),
    }
}

/// Asks every node of the cluster (or this node alone, without one) to run `op`: the answers,
/// by node.
pub(crate) async fn ask(state: &ServerState, app: AppId, op: Op) -> Result<Vec<(String, Value)>, String> {
    match state.api().bus() {
        Some(bus) => bus.ask(app, op).await,
        None => Ok(vec![(String::new(), run_local(state, "", app, &op))]),
    }
}

/// The node ID that owns an entry of the store (`node|epoch`).
pub(crate) fn owner_node(owner: &str) -> &str {
    owner.split('|').next().unwrap_or("")
}

/// The ops channel of a cluster over Redis pub/sub.
pub(crate) struct Bus {
    client: redis::Client,
    node: String,
    con: redis::aio::ConnectionManager,
    next: AtomicU64,
    /// Askers waiting for answers, by request ID.
    waiting: Mutex<HashMap<u64, mpsc::UnboundedSender<Reply>>>,
}

impl Bus {
    /// Connects to the Redis at `url` as node `node`, subscribes, and serves ops for `state`
    /// until the server stops. Returns once subscribed (so this node answers from now on), or
    /// after [`SUBSCRIBE_WAIT`] with the subscription still being retried.
    pub(crate) async fn start(url: &str, node: &str, state: ServerState) -> Result<Arc<Bus>, String> {
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(2);
        let mut tries = 0;
        let con = loop {
            match client.get_connection_manager_with_config(config.clone()).await {
                Ok(con) => break con,
                Err(e) if tries < 5 => {
                    debug!("the ops channel's connection failed ({e}); retrying");
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e.to_string()),
            }
        };
        let bus = Arc::new(Bus {
            client,
            node: node.to_string(),
            con,
            next: AtomicU64::new(1),
            waiting: Mutex::new(HashMap::new()),
        });
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(serve(bus.clone(), state, ready_tx));
        if tokio::time::timeout(SUBSCRIBE_WAIT, ready_rx).await.is_err() {
            warn!("the server API's ops channel is not subscribed yet; retrying in the background");
        }
        Ok(bus)
    }

    fn tasks_key(app: AppId) -> String {
        format!("huddle:rec:{app}:tasks")
    }

    /// Keeps a recording task in the cluster's list of running tasks (a node that starts
    /// later takes it up), before it is started on the nodes.
    pub(crate) async fn save_task(&self, app: AppId, task: &str, op: &Op) -> Result<(), String> {
        let mut con = self.con.clone();
        let text = serde_json::to_string(op).map_err(|e| e.to_string())?;
        let _: i64 = redis::cmd("HSET")
            .arg(Self::tasks_key(app))
            .arg(task)
            .arg(text)
            .query_async(&mut con)
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Takes a task off the cluster's list (stopped, or refused).
    pub(crate) async fn forget_task(&self, app: AppId, task: &str) {
        let mut con = self.con.clone();
        let done: Result<i64, _> = redis::cmd("HDEL")
            .arg(Self::tasks_key(app))
            .arg(task)
            .query_async(&mut con)
            .await;
        if let Err(e) = done {
            warn!(%app, task, "a stopped recording task stays in the cluster's list: {e}");
        }
    }

    /// Starts on this node the recording tasks the cluster runs.
    async fn resume_tasks(&self, state: &ServerState) {
        for app in state.config().apps.iter().map(|a| a.app_id) {
            let mut con = self.con.clone();
            let tasks: Result<HashMap<String, String>, _> = redis::cmd("HGETALL")
                .arg(Self::tasks_key(app))
                .query_async(&mut con)
                .await;
            let tasks = match tasks {
                Ok(t) => t,
                Err(e) => {
                    warn!(%app, "the cluster's recording tasks could not be read: {e}");
                    continue;
                }
            };
            for text in tasks.values() {
                if let Ok(op @ Op::RecordStart { .. }) = serde_json::from_str::<Op>(text) {
                    let _ = run_local(state, &self.node, app, &op);
                }
            }
        }
    }

    /// This node's ID.
    pub(crate) fn node(&self) -> &str {
        &self.node
    }

    /// Spends a server API nonce of `app` for the cluster: `true` the first time within
    /// `secs`, `false` when any node took it already.
    pub(crate) async fn spend_nonce(&self, app: AppId, nonce: &str, secs: i64) -> Result<bool, String> {
        let mut con = self.con.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(format!("huddle:api:nonce:{app}:{nonce}"))
            .arg(1)
            .arg("NX")
            .arg("EX")
            .arg(secs)
            .query_async(&mut con)
            .await
            .map_err(|e| e.to_string())?;
        Ok(set.is_some())
    }

    fn reply_channel(node: &str) -> String {
        format!("{OPS_CHANNEL}:reply:{node}")
    }

    async fn subscribe(&self) -> Result<redis::aio::PubSub, String> {
        let mut pubsub = tokio::time::timeout(COMMAND_TIMEOUT, self.client.get_async_pubsub())
            .await
            .map_err(|_| "no answer in time".to_string())?
            .map_err(|e| e.to_string())?;
        pubsub.subscribe(OPS_CHANNEL).await.map_err(|e| e.to_string())?;
        pubsub
            .subscribe(Self::reply_channel(&self.node))
            .await
            .map_err(|e| e.to_string())?;
        Ok(pubsub)
    }

    /// Publishes `op` to every node and gathers their answers (every live node's, or what
    /// came within [`ASK_TIMEOUT`]).
    pub(crate) async fn ask(&self, app: AppId, op: Op) -> Result<Vec<(String, Value)>, String> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.waiting.lock().insert(id, tx);
        let request = Request {
            id,
            from: self.node.clone(),
            app: app.get(),
            op,
        };
        let text = serde_json::to_string(&request).map_err(|e| e.to_string())?;
        let mut con = self.con.clone();
        let published: Result<usize, _> = redis::cmd("PUBLISH")
            .arg(OPS_CHANNEL)
            .arg(text)
            .query_async(&mut con)
            .await;
        let expected = match published {
            Ok(n) => n,
            Err(e) => {
                self.waiting.lock().remove(&id);
                return Err(e.to_string());
            }
        };
        let mut answers = Vec::new();
        let deadline = tokio::time::Instant::now() + ASK_TIMEOUT;
        while answers.len() < expected {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(r)) => answers.push((r.node, r.result)),
                Ok(None) | Err(_) => break,
            }
        }
        self.waiting.lock().remove(&id);
        if answers.len() < expected {
            warn!(
                answered = answers.len(),
                expected, "not every node answered a server API op in time"
            );
        }
        Ok(answers)
    }
}

/// Serves ops and routes answers until the server stops; subscribes again after a lost
/// connection. After each subscription it takes up the cluster's running recording tasks (a
/// task started while this node was not subscribed is in that list).
async fn serve(bus: Arc<Bus>, state: ServerState, ready: tokio::sync::oneshot::Sender<()>) {
    let mut shutdown = state.shutdown_receiver();
    let mut ready = Some(ready);
    let mut backoff = Duration::from_millis(100);
    loop {
        let current = match bus.subscribe().await {
            Ok(p) => {
                backoff = Duration::from_millis(100);
                p
            }
            Err(e) => {
                debug!("server API ops channel not subscribed ({e}); retrying");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        bus.resume_tasks(&state).await;
        if let Some(r) = ready.take() {
            let _ = r.send(());
        } else {
            info!("server API ops channel subscribed again");
        }
        let mut messages = current.into_on_message();
        loop {
            let msg = tokio::select! {
                m = messages.next() => m,
                _ = shutdown.changed() => return,
            };
            let Some(msg) = msg else { break };
            let Ok(payload) = msg.get_payload::<String>() else {
                continue;
            };
            if msg.get_channel_name() == OPS_CHANNEL {
                let (id, from, result) = match serde_json::from_str::<Request>(&payload) {
                    Ok(req) => {
                        let result = match AppId::new(req.app) {
                            Ok(app) => run_local(&state, &bus.node, app, &req.op),
                            Err(_) => json!({}),
                        };
                        (req.id, req.from, result)
                    }
                    // An op this node cannot read (a node of another version): answered empty,
                    // so that the asker does not wait for it.
                    Err(e) => {
                        let v: Value = serde_json::from_str(&payload).unwrap_or_default();
                        let (Some(id), Some(from)) = (v["id"].as_u64(), v["from"].as_str()) else {
                            warn!("an unreadable server API op was ignored");
                            continue;
                        };
                        warn!("a server API op this node cannot read was answered empty: {e}");
                        (id, from.to_string(), json!({}))
                    }
                };
                let reply = Reply {
                    id,
                    node: bus.node.clone(),
                    result,
                };
                let Ok(text) = serde_json::to_string(&reply) else {
                    continue;
                };
                let mut con = bus.con.clone();
                let sent: Result<usize, _> = redis::cmd("PUBLISH")
                    .arg(Bus::reply_channel(&from))
                    .arg(text)
                    .query_async(&mut con)
                    .await;
                if let Err(e) = sent {
                    warn!("a server API op's answer was not sent: {e}");
                }
            } else if let Ok(reply) = serde_json::from_str::<Reply>(&payload) {
                let tx = bus.waiting.lock().get(&reply.id).cloned();
                if let Some(tx) = tx {
                    let _ = tx.send(reply);
                }
            }
        }
        warn!("server API ops channel lost; subscribing again");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_travel_as_tagged_json() {
        let req = Request {
            id: 7,
            from: "node-a".into(),
            app: 9,
            op: Op::Kick {
                room: RoomId::new("r1").unwrap(),
                users: vec![UserId::new("bob").unwrap()],
                reason: "bye".into(),
            },
        };
        let text = serde_json::to_string(&req).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["op"]["op"], "kick");
        assert_eq!(v["op"]["users"][0], "bob");
        let b = Request {
            id: 8,
            from: "node-a".into(),
            app: 9,
            op: Op::Broadcast {
                room: RoomId::new("r1").unwrap(),
                sender: User::new(UserId::new("ops").unwrap()),
                message: "hi".into(),
                to: "node-b".into(),
            },
        };
        let back: Request = serde_json::from_str(&serde_json::to_string(&b).unwrap()).unwrap();
        assert!(matches!(back.op, Op::Broadcast { ref to, .. } if to == "node-b"));
        let back: Request = serde_json::from_str(&text).unwrap();
        assert!(matches!(back.op, Op::Kick { ref users, .. } if users.len() == 1));
        assert_eq!(owner_node("node-a|12"), "node-a");
        assert_eq!(owner_node(""), "");
    }
}
