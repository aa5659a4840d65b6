//! The server API: an app's own server asks about and acts on its rooms over HTTP, signed as the
//! hosted platform's server API signs its requests, so that code written for it calls Huddle
//! with a new base URL (`{server}/server-api/`) and nothing else.
//!
//! `GET` or `POST /server-api/?Action=…&AppId=…&SignatureNonce=…&Timestamp=…&Signature=…&SignatureVersion=2.0&…`
//! with `Signature = hex(md5(AppId + SignatureNonce + ServerSecret + Timestamp))`, a timestamp
//! within [`MAX_SKEW_SECS`] of the server's clock, and a nonce not seen within that window (a
//! replay is refused with 1009031; the memory of nonces is bounded, [`MAX_NONCES`], and refuses
//! with 1009032 rather than forget one early). Business parameters come in the query string
//! (lists as `RoomId[]=a&RoomId[]=b`) or, with `POST`, as a JSON object body.
//!
//! Every answer is HTTP 200 with `{"Code", "Message", "RequestId", "Data"?}`: `Code` 0 is
//! success; the hosted platform's own codes where it has one (signature, timestamp, action,
//! parameter errors, rooms and users that do not exist), else Huddle's from `docs/errors.md`.
//! `docs/operations.md` is the reference of every action.

use std::collections::{BTreeSet, HashMap};

use axum::Router;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{Method, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use huddle_proto::{AppId, ErrorCode, HuddleError, RoomId, StreamId, StreamInfo, User, UserId, UserName};
use md5::{Digest, Md5};
use parking_lot::Mutex;
use serde_json::{Value, json};

use crate::ops::Op;
use crate::signaling::ServerState;
use crate::webhooks::Replay;

/// The API's path (with or without a trailing `/`).
pub(crate) const API_PATH: &str = "/server-api";
/// How far a request's `Timestamp` may be from the server's clock (the hosted platform allows
/// ten minutes).
pub(crate) const MAX_SKEW_SECS: i64 = 600;
/// Nonces remembered at most (all apps): each for as long as its request's timestamp is valid.
pub(crate) const MAX_NONCES: usize = 100_000;
/// The largest request body.
const MAX_BODY: usize = 64 * 1024;
/// The longest `SignatureNonce`.
const MAX_NONCE_LEN: usize = 64;
/// `DescribeUserNum` takes at most this many rooms (as the hosted platform).
const MAX_ROOMS_PER_QUERY: usize = 10;
/// `KickoutUser` takes at most this many users (as the hosted platform).
const MAX_KICK_USERS: usize = 5;
/// `DescribeUserList` returns at most this many users per call.
const MAX_USER_PAGE: usize = 200;
/// The longest broadcast message, in bytes.
const MAX_MESSAGE_BYTES: usize = 1024;
/// The longest `CustomReason`, in bytes.
const MAX_REASON_BYTES: usize = 256;

/// The hosted platform's return codes that the API shares.
mod code {
    pub const SUCCESS: i64 = 0;
    pub const BUSY: i64 = 1;
    pub const BAD_PARAMETER: i64 = 2;
    pub const APP_ID_FORMAT: i64 = 100_000_001;
    pub const TIMESTAMP_EMPTY: i64 = 100_000_002;
    pub const TIMESTAMP_FORMAT: i64 = 100_000_003;
    pub const SIGNATURE_EXPIRED: i64 = 100_000_004;
    pub const SIGNATURE_ERROR: i64 = 100_000_005;
    pub const ACTION_EMPTY: i64 = 100_000_006;
    pub const ACTION_UNSUPPORTED: i64 = 100_000_007;
    pub const NONCE_EMPTY: i64 = 100_000_008;
    pub const SIGNATURE_EMPTY: i64 = 100_000_009;
    pub const SECRET_UNKNOWN: i64 = 100_000_010;
    pub const BODY: i64 = 100_000_012;
    pub const VERSION_EMPTY: i64 = 100_000_013;
    pub const VERSION_UNSUPPORTED: i64 = 100_000_014;
    pub const ROOM_NOT_FOUND: i64 = 50_001;
    pub const USER_NOT_FOUND: i64 = 50_002;
}

/// A refused request: its code and message.
#[derive(Debug)]
struct ApiError {
    code: i64,
    message: String,
}

fn fail(code: i64, message: impl Into<String>) -> ApiError {
    ApiError {
        code,
        message: message.into(),
    }
}

fn huddle(e: &HuddleError) -> ApiError {
    fail(i64::from(e.code.as_u32()), e.message.clone())
}

/// A bad business parameter: the hosted platform's code 2, with Huddle's own code for the
/// reason in the message.
fn bad(param: &str, e: &HuddleError) -> ApiError {
    fail(
        code::BAD_PARAMETER,
        format!("{param}: {} ({})", e.message, e.code.as_u32()),
    )
}

fn bad_text(param: &str, why: &str) -> ApiError {
    fail(code::BAD_PARAMETER, format!("{param}: {why}"))
}

/// The server API's state: the nonces seen, and in a cluster the channel to the other nodes.
pub(crate) struct ApiState {
    nonces: Mutex<NonceCache>,
    /// The ops channel of the cluster (`crate::ops`), once started; `None` on one node.
    bus: std::sync::OnceLock<std::sync::Arc<crate::ops::Bus>>,
}

impl ApiState {
    pub(crate) fn new() -> ApiState {
        ApiState {
            nonces: Mutex::new(NonceCache::default()),
            bus: std::sync::OnceLock::new(),
        }
    }

    /// The cluster's ops channel, when this node is one of a cluster.
    pub(crate) fn bus(&self) -> Option<&std::sync::Arc<crate::ops::Bus>> {
        self.bus.get()
    }
}

/// In a cluster: starts the ops channel through which the API's actions reach every node.
/// A node whose Redis does not answer starts without it and logs why (its API then acts on
/// its own sessions only).
pub(crate) async fn start_cluster(state: &ServerState) {
    let (Some(url), Some(store)) = (state.config().redis.clone(), state.cluster_store()) else {
        return;
    };
    match crate::ops::Bus::start(&url, store.node_id(), state.clone()).await {
        Ok(bus) => {
            let _ = state.api().bus.set(bus);
        }
        Err(e) => tracing::warn!("the server API's ops channel did not start: {e}"),
    }
}

/// The nonces of valid requests, each kept until its timestamp is out of the window (a replay
/// after that is refused as expired).
#[derive(Default)]
struct NonceCache {
    seen: HashMap<(AppId, String), i64>,
    /// By when each is forgotten (Unix seconds).
    order: BTreeSet<(i64, AppId, String)>,
}

impl NonceCache {
    fn check_and_insert(
        &mut self,
        app: AppId,
        nonce: &str,
        timestamp: i64,
        now: i64,
    ) -> Result<(), ApiError> {
        while let Some(first) = self.order.first() {
            if first.0 >= now {
                break;
            }
            if let Some((_, a, n)) = self.order.pop_first() {
                self.seen.remove(&(a, n));
            }
        }
        let key = (app, nonce.to_string());
        if self.seen.contains_key(&key) {
            return Err(huddle(&HuddleError::from(ErrorCode::API_NONCE_REPLAYED)));
        }
        if self.seen.len() >= MAX_NONCES {
            return Err(huddle(&HuddleError::from(ErrorCode::API_NONCE_CACHE_FULL)));
        }
        let forget = timestamp.saturating_add(MAX_SKEW_SECS);
        self.order.insert((forget, app, key.1.clone()));
        self.seen.insert(key, forget);
        Ok(())
    }
}

/// The request's parameters: the query's, then a JSON body's.
#[derive(Default)]
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(query: Option<&str>, body: &[u8]) -> Result<Params, ApiError> {
        let mut pairs: Vec<(String, String)> = query
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default();
        if !body.iter().all(u8::is_ascii_whitespace) {
            let v: Value = serde_json::from_slice(body)
                .map_err(|_| fail(code::BODY, "the request body is not a JSON object"))?;
            let Value::Object(map) = v else {
                return Err(fail(code::BODY, "the request body is not a JSON object"));
            };
            for (k, v) in map {
                let mut push = |v: &Value| match v {
                    Value::String(s) => pairs.push((k.clone(), s.clone())),
                    Value::Number(n) => pairs.push((k.clone(), n.to_string())),
                    Value::Bool(b) => pairs.push((k.clone(), b.to_string())),
                    _ => {}
                };
                match &v {
                    Value::Array(items) => items.iter().for_each(&mut push),
                    other => push(other),
                }
            }
        }
        Ok(Params(pairs))
    }

    /// The first value of `name` (or `name[]`).
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name || k.strip_suffix("[]") == Some(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name` and `name[]`.
    fn list(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == name || k.strip_suffix("[]") == Some(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn required(&self, name: &str) -> Result<&str, ApiError> {
        self.get(name).ok_or_else(|| bad_text(name, "missing"))
    }

    fn room(&self) -> Result<RoomId, ApiError> {
        RoomId::new(self.required("RoomId")?).map_err(|e| bad("RoomId", &e))
    }

    fn number(&self, name: &str, default: u64, max: u64) -> Result<u64, ApiError> {
        match self.get(name) {
            None | Some("") => Ok(default),
            Some(v) => match v.parse::<u64>() {
                Ok(n) if n <= max => Ok(n),
                _ => Err(bad_text(name, &format!("must be a whole number from 0 to {max}"))),
            },
        }
    }
}

fn request_id() -> String {
    use rand::Rng;
    rand::thread_rng()
        .gen_range(1_000_000_000_000_000u64..10_000_000_000_000_000)
        .to_string()
}

fn answer(request_id: &str, result: Result<Option<Value>, ApiError>) -> Response {
    let body = match result {
        Ok(data) => {
            let mut v = json!({"Code": code::SUCCESS, "Message": "success", "RequestId": request_id});
            if let Some(d) = data {
                v["Data"] = d;
            }
            v
        }
        Err(e) => json!({"Code": e.code, "Message": e.message, "RequestId": request_id}),
    };
    ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// The API's routes, merged into the server's router by [`crate::serve`].
pub(crate) fn routes(state: ServerState) -> Router {
    Router::new()
        .route(API_PATH, any(handle))
        .route(&format!("{API_PATH}/"), any(handle))
        .with_state(state)
}

async fn handle(
    State(state): State<ServerState>,
    method: Method,
    RawQuery(query): RawQuery,
    body: Body,
) -> Response {
    let id = request_id();
    if method != Method::GET && method != Method::POST {
        return answer(&id, Err(fail(code::BODY, "use GET or POST")));
    }
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return answer(
                &id,
                Err(fail(
                    code::BODY,
                    format!("the request body is over {MAX_BODY} bytes or broken"),
                )),
            );
        }
    };
    let result = async {
        let params = Params::parse(query.as_deref(), &body)?;
        let (app, action) = authenticate(&state, &params)?;
        cluster_nonce(&state, app, &params).await?;
        run(&state, app, action, &params).await
    }
    .await;
    if let Err(e) = &result {
        tracing::debug!(code = e.code, message = %e.message, "server API request refused");
    }
    answer(&id, result)
}

/// In a cluster, a nonce is spent for every node: `SET NX` of `huddle:api:nonce:{app}:{nonce}`
/// for the rest of its request's window, so a request replayed to another node is refused too.
async fn cluster_nonce(state: &ServerState, app: AppId, p: &Params) -> Result<(), ApiError> {
    let Some(bus) = state.api().bus() else {
        return Ok(());
    };
    let nonce = p.get("SignatureNonce").unwrap_or_default();
    let ts = p
        .get("Timestamp")
        .and_then(|t| t.parse::<i64>().ok())
        .unwrap_or(0);
    let now = i64::try_from(crate::registry::Clock::now().unix_ms / 1000).unwrap_or(i64::MAX);
    let left_secs = (ts + MAX_SKEW_SECS - now).clamp(1, 2 * MAX_SKEW_SECS);
    match bus.spend_nonce(app, nonce, left_secs).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(huddle(&HuddleError::new(
            ErrorCode::API_NONCE_REPLAYED,
            "this SignatureNonce was used already (on this or another node)",
        ))),
        Err(e) => Err(fail(
            code::BUSY,
            format!("the cluster store could not be read: {e}"),
        )),
    }
}

/// Checks the common parameters and the signature; returns the app and the action.
fn authenticate<'a>(state: &ServerState, p: &'a Params) -> Result<(AppId, &'a str), ApiError> {
    let action = p
        .get("Action")
        .filter(|a| !a.is_empty())
        .ok_or_else(|| fail(code::ACTION_EMPTY, "Action is missing"))?;
    let app_text = p
        .get("AppId")
        .ok_or_else(|| fail(code::APP_ID_FORMAT, "AppId is missing"))?;
    let app = app_text
        .parse::<u32>()
        .ok()
        .and_then(|n| AppId::new(n).ok())
        .ok_or_else(|| fail(code::APP_ID_FORMAT, "AppId must be a non-zero 32-bit number"))?;
    let nonce = p
        .get("SignatureNonce")
        .filter(|n| !n.is_empty())
        .ok_or_else(|| fail(code::NONCE_EMPTY, "SignatureNonce is missing"))?;
    if nonce.len() > MAX_NONCE_LEN || !nonce.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad_text(
            "SignatureNonce",
            &format!("at most {MAX_NONCE_LEN} printable ASCII characters"),
        ));
    }
    let ts_text = p
        .get("Timestamp")
        .filter(|t| !t.is_empty())
        .ok_or_else(|| fail(code::TIMESTAMP_EMPTY, "Timestamp is missing"))?;
    let timestamp = ts_text
        .parse::<i64>()
        .map_err(|_| fail(code::TIMESTAMP_FORMAT, "Timestamp must be Unix seconds"))?;
    let signature = p
        .get("Signature")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| fail(code::SIGNATURE_EMPTY, "Signature is missing"))?;
    match p.get("SignatureVersion") {
        None | Some("") => return Err(fail(code::VERSION_EMPTY, "SignatureVersion is missing")),
        Some("2.0") => {}
        Some(_) => return Err(fail(code::VERSION_UNSUPPORTED, "SignatureVersion must be 2.0")),
    }
    let Some(config) = state.config().apps.iter().find(|a| a.app_id == app) else {
        return Err(fail(
            code::SECRET_UNKNOWN,
            format!("the AppId {app} is not configured"),
        ));
    };
    let now = crate::registry::Clock::now().unix_secs();
    if (now - timestamp).abs() > MAX_SKEW_SECS {
        return Err(fail(
            code::SIGNATURE_EXPIRED,
            format!("the Timestamp is more than {MAX_SKEW_SECS} s from the server's clock"),
        ));
    }
    let expected = sign(app, nonce, config.server_secret.as_str(), ts_text);
    if !secret_eq(&expected, &signature.to_ascii_lowercase()) {
        return Err(fail(code::SIGNATURE_ERROR, "the Signature does not match"));
    }
    state
        .api()
        .nonces
        .lock()
        .check_and_insert(app, nonce, timestamp, now)?;
    Ok((app, action))
}

/// `hex(md5(AppId + SignatureNonce + ServerSecret + Timestamp))`.
pub(crate) fn sign(app: AppId, nonce: &str, secret: &str, timestamp: &str) -> String {
    let text = format!("{}{nonce}{secret}{timestamp}", app.get());
    hex::encode(Md5::digest(text.as_bytes()))
}

/// Constant-time equality (the time depends on the length only).
fn secret_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A room as the cluster sees it: the registry's view where this node has members (it holds
/// the other nodes' part too), else the store's snapshot of the other nodes' part.
async fn room_view(
    state: &ServerState,
    app: AppId,
    room: &RoomId,
) -> Result<Option<(Vec<User>, Vec<StreamInfo>)>, ApiError> {
    if let Some(v) = state.room(app, room) {
        return Ok(Some((v.users, v.streams)));
    }
    let Some(store) = state.cluster_store() else {
        return Ok(None);
    };
    let snap = store
        .room_snapshot(app, room)
        .await
        .map_err(|e| fail(code::BUSY, format!("the cluster store could not be read: {e}")))?;
    let mut users: Vec<User> = snap.users.into_iter().map(|(_, u)| u).collect();
    users.sort_by(|a, b| a.user_id.cmp(&b.user_id));
    users.dedup_by(|a, b| a.user_id == b.user_id);
    let mut streams: Vec<StreamInfo> = snap.streams.into_iter().map(|(_, s)| s).collect();
    streams.sort_by(|a, b| a.stream_id.cmp(&b.stream_id));
    if users.is_empty() && streams.is_empty() {
        return Ok(None);
    }
    Ok(Some((users, streams)))
}

/// Runs `op` on every node (`crate::ops`): their answers.
async fn cluster(state: &ServerState, app: AppId, op: Op) -> Result<Vec<(String, Value)>, ApiError> {
    crate::ops::ask(state, app, op)
        .await
        .map_err(|e| fail(code::BUSY, format!("the cluster could not be asked: {e}")))
}

/// `DescribeRecordStatus` of a task from every node's part: the files of all of them, the
/// state of the task as a whole (recording on any node: 2; else failed on any: 4 with its code;
/// else ended: 3; else waiting: 1).
fn merge_record_parts(parts: Vec<Value>) -> Option<Value> {
    let mut iter = parts.into_iter();
    let mut task = iter.next()?;
    let rest: Vec<Value> = iter.collect();
    let status = |v: &Value| v["Status"].as_u64().unwrap_or(1);
    let mut best = status(&task);
    for part in rest {
        let s = status(&part);
        if let (Some(files), Some(more)) =
            (task["RecordFiles"].as_array_mut(), part["RecordFiles"].as_array())
        {
            files.extend(more.iter().cloned());
        }
        let dropped =
            task["DroppedPackets"].as_u64().unwrap_or(0) + part["DroppedPackets"].as_u64().unwrap_or(0);
        task["DroppedPackets"] = dropped.into();
        let created = task["CreateTimestamp"]
            .as_u64()
            .unwrap_or(u64::MAX)
            .min(part["CreateTimestamp"].as_u64().unwrap_or(u64::MAX));
        task["CreateTimestamp"] = created.into();
        let rank = |s: u64| match s {
            2 => 3,
            4 => 2,
            3 => 1,
            _ => 0,
        };
        if part.get("ErrorCode").is_some() && task.get("ErrorCode").is_none() {
            task["ErrorCode"] = part["ErrorCode"].clone();
            task["ErrorMessage"] = part["ErrorMessage"].clone();
        }
        if rank(s) > rank(best) {
            best = s;
        }
    }
    task["Status"] = best.into();
    if best != 4
        && let Some(m) = task.as_object_mut()
    {
        m.remove("ErrorCode");
        m.remove("ErrorMessage");
    }
    Some(task)
}

fn reason(p: &Params, default: &str) -> Result<String, ApiError> {
    match p.get("CustomReason") {
        None | Some("") => Ok(default.to_string()),
        Some(r) if r.len() > MAX_REASON_BYTES || r.chars().any(char::is_control) => Err(bad_text(
            "CustomReason",
            &format!("at most {MAX_REASON_BYTES} bytes, no control characters"),
        )),
        Some(r) => Ok(r.to_string()),
    }
}

async fn run(state: &ServerState, app: AppId, action: &str, p: &Params) -> Result<Option<Value>, ApiError> {
    match action {
        "DescribeRoomList" => {
            // Every node lists the rooms it has a member in, each with the whole room's counts.
            let mut rooms: std::collections::BTreeMap<String, Value> = std::collections::BTreeMap::new();
            for (_, answer) in cluster(state, app, Op::Rooms).await? {
                for room in answer["rooms"].as_array().into_iter().flatten() {
                    if let Some(id) = room["RoomId"].as_str() {
                        rooms.entry(id.to_string()).or_insert_with(|| room.clone());
                    }
                }
            }
            Ok(Some(json!({"RoomList": rooms.into_values().collect::<Vec<_>>()})))
        }
        "DescribeUserNum" => {
            let ids = p.list("RoomId");
            if ids.is_empty() || ids.len() > MAX_ROOMS_PER_QUERY {
                return Err(bad_text(
                    "RoomId",
                    &format!("give 1 to {MAX_ROOMS_PER_QUERY} rooms"),
                ));
            }
            let mut list = Vec::new();
            for id in ids {
                let room = RoomId::new(id).map_err(|e| bad("RoomId", &e))?;
                let count = room_view(state, app, &room).await?.map_or(0, |(u, _)| u.len());
                list.push(json!({"RoomId": room.as_str(), "UserCount": count, "AdminUserCount": 0}));
            }
            Ok(Some(json!({"UserCountList": list})))
        }
        "DescribeUserList" | "DescribeUsers" => {
            let room = p.room()?;
            let mode = p.number("Mode", 0, 1)?;
            let limit = usize::try_from(p.number("Limit", MAX_USER_PAGE as u64, MAX_USER_PAGE as u64)?)
                .unwrap_or(MAX_USER_PAGE);
            let start = match p.get("Marker") {
                None | Some("") => 0,
                Some(m) => m
                    .parse::<usize>()
                    .map_err(|_| bad_text("Marker", "not a marker from an earlier answer"))?,
            };
            let mut users = room_view(state, app, &room)
                .await?
                .map(|(u, _)| u)
                .unwrap_or_default();
            if mode == 1 {
                users.reverse();
            }
            let page: Vec<Value> = users
                .iter()
                .skip(start)
                .take(limit)
                .map(|u| json!({"UserId": u.user_id.as_str(), "UserName": u.user_name.as_str(), "UserRole": 0}))
                .collect();
            let next = start.saturating_add(page.len());
            let marker = if next < users.len() && limit > 0 {
                next.to_string()
            } else {
                String::new()
            };
            Ok(Some(json!({"Marker": marker, "UserList": page})))
        }
        "DescribeSimpleStreamList" => {
            let room = p.room()?;
            let streams = room_view(state, app, &room)
                .await?
                .map(|(_, s)| s)
                .unwrap_or_default();
            let list: Vec<Value> = streams
                .iter()
                .map(|s| json!({"StreamId": s.stream_id.as_str(), "UserId": s.user_id.as_str(), "UserName": s.user_name.as_str(), "ExtraInfo": s.extra_info}))
                .collect();
            Ok(Some(json!({"StreamList": list})))
        }
        "KickoutUser" => {
            let room = p.room()?;
            let ids = p.list("UserId");
            if ids.is_empty() || ids.len() > MAX_KICK_USERS {
                return Err(bad_text("UserId", &format!("give 1 to {MAX_KICK_USERS} users")));
            }
            let users = ids
                .into_iter()
                .map(|u| UserId::new(u).map_err(|e| bad("UserId", &e)))
                .collect::<Result<Vec<_>, _>>()?;
            let why = reason(p, "kicked out by the app's server")?;
            let op = Op::Kick {
                room: room.clone(),
                users: users.clone(),
                reason: why,
            };
            let mut kicked: Vec<String> = Vec::new();
            for (_, answer) in cluster(state, app, op).await? {
                for u in answer["kicked"].as_array().into_iter().flatten() {
                    if let Some(u) = u.as_str() {
                        kicked.push(u.to_string());
                    }
                }
            }
            kicked.sort();
            kicked.dedup();
            // Users the store lists in the room whose node did not answer in time.
            let listed = room_view(state, app, &room).await?;
            let elsewhere: Vec<&str> = users
                .iter()
                .filter(|u| !kicked.iter().any(|k| k == u.as_str()))
                .filter(|u| {
                    listed
                        .as_ref()
                        .is_some_and(|(us, _)| us.iter().any(|x| x.user_id == **u))
                })
                .map(UserId::as_str)
                .collect();
            if kicked.is_empty() && elsewhere.is_empty() {
                return Err(fail(code::USER_NOT_FOUND, "none of the users is in the room"));
            }
            Ok(Some(json!({"KickedUsers": kicked, "OtherNodeUsers": elsewhere})))
        }
        "CloseRoom" => {
            let room = p.room()?;
            let why = reason(p, "the room was closed by the app's server")?;
            let listed = room_view(state, app, &room).await?;
            let op = Op::Close {
                room: room.clone(),
                reason: why,
            };
            let closed: u64 = cluster(state, app, op)
                .await?
                .iter()
                .filter_map(|(_, a)| a["closed"].as_u64())
                .sum();
            if closed == 0 && listed.is_none() {
                return Err(fail(code::ROOM_NOT_FOUND, "the room does not exist"));
            }
            // Users of nodes that did not answer in time (none when every node did).
            let others = if closed == 0 {
                listed.map_or(0, |(u, _)| u.len())
            } else {
                0
            };
            Ok(Some(json!({"ClosedSessions": closed, "OtherNodeUsers": others})))
        }
        "DeleteStream" => {
            let room = p.room()?;
            if let Some(u) = p.get("UserId") {
                UserId::new(u).map_err(|e| bad("UserId", &e))?;
            }
            let stream = StreamId::new(p.required("StreamId")?).map_err(|e| bad("StreamId", &e))?;
            let op = Op::StopStream {
                room: room.clone(),
                stream: stream.clone(),
            };
            let stopped = cluster(state, app, op)
                .await?
                .iter()
                .any(|(_, a)| a["stopped"] == Value::Bool(true));
            if stopped {
                return Ok(None);
            }
            Err(fail(
                i64::from(ErrorCode::STREAM_NOT_FOUND.as_u32()),
                "the stream is not published in the room",
            ))
        }
        "SendBroadcastMessage" => {
            let room = p.room()?;
            let from = UserId::new(p.required("UserId")?).map_err(|e| bad("UserId", &e))?;
            let name = match p.get("UserName") {
                None | Some("") => UserName::new(from.as_str()).map_err(|e| bad("UserName", &e))?,
                Some(n) => UserName::new(n).map_err(|e| bad("UserName", &e))?,
            };
            p.number("MessageCategory", 1, 2).and_then(|c| {
                if c == 0 {
                    Err(bad_text("MessageCategory", "1 (system) or 2 (chat)"))
                } else {
                    Ok(c)
                }
            })?;
            let message = p.required("MessageContent")?;
            if message.is_empty() || message.len() > MAX_MESSAGE_BYTES {
                return Err(bad_text(
                    "MessageContent",
                    &format!("1 to {MAX_MESSAGE_BYTES} bytes"),
                ));
            }
            // As on the hosted platform, a session of the sender's own user ID does not get it;
            // members on other nodes get it through the room's history.
            let from = User {
                user_id: from,
                user_name: name,
            };
            // Sent by one node with a member in the room (this one if it has one): the others'
            // members get it through the room's history.
            let here = state.room(app, &room).is_some()
                && state.with_registry(|r, _| !r.room_sessions(app, &room).is_empty());
            let to = if here {
                Some(
                    state
                        .api()
                        .bus()
                        .map_or_else(String::new, |b| b.node().to_string()),
                )
            } else {
                match state.cluster_store() {
                    Some(store) if state.api().bus().is_some() => store
                        .room_snapshot(app, &room)
                        .await
                        .map_err(|e| fail(code::BUSY, format!("the cluster store could not be read: {e}")))?
                        .users
                        .first()
                        .map(|(owner, _)| crate::ops::owner_node(owner).to_string()),
                    _ => None,
                }
            };
            let Some(to) = to else {
                return Err(fail(code::ROOM_NOT_FOUND, "the room has no member"));
            };
            let op = Op::Broadcast {
                room: room.clone(),
                sender: from,
                message: message.to_string(),
                to,
            };
            let sent = cluster(state, app, op)
                .await?
                .iter()
                .find_map(|(_, a)| a["message_id"].as_u64());
            let Some(message_id) = sent else {
                return Err(fail(code::ROOM_NOT_FOUND, "the room has no member"));
            };
            Ok(Some(json!({"MessageId": message_id})))
        }
        "ReplayCallbacks" => {
            let from = p.number("FromSeq", 0, u64::MAX)?;
            let Some(hooks) = state.webhooks() else {
                return Err(huddle(&HuddleError::from(ErrorCode::WEBHOOK_NOT_CONFIGURED)));
            };
            match hooks.replay(app, from).await {
                Replay::Scheduled { from, last } => Ok(Some(json!({"FromSeq": from, "LastSeq": last}))),
                Replay::NotConfigured => Err(huddle(&HuddleError::from(ErrorCode::WEBHOOK_NOT_CONFIGURED))),
                Replay::Unavailable { oldest, last } => Err(fail(
                    i64::from(ErrorCode::WEBHOOK_SEQ_UNAVAILABLE.as_u32()),
                    format!("FromSeq must be from {oldest} to {last} (the events kept)"),
                )),
                Replay::Unreachable(e) => Err(fail(
                    code::BUSY,
                    format!("the cluster's webhook log could not be read: {e}"),
                )),
            }
        }
        "StartRecord" => {
            let room = p.room()?;
            let stream = match p.get("StreamId") {
                None | Some("") => None,
                Some(s) => Some(StreamId::new(s).map_err(|e| bad("StreamId", &e))?),
            };
            // The directory is checked here, off the runtime's threads, so that an unwritable
            // one is refused at once; a disk that fills later fails the recording alone.
            let recorder = state.recorder().clone();
            let checked = tokio::task::spawn_blocking(move || recorder.check_dir(app))
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
            if let Err(why) = checked {
                return Err(fail(
                    i64::from(ErrorCode::RECORD_DIR_UNWRITABLE.as_u32()),
                    format!("the recording directory is not writable: {why}"),
                ));
            }
            // Every node starts the task: each records the room's streams published on it.
            let task = crate::recording::Recorder::new_task_id();
            let op = Op::RecordStart {
                room: room.clone(),
                stream,
                task: task.clone(),
            };
            if let Some(bus) = state.api().bus() {
                bus.save_task(app, &task, &op)
                    .await
                    .map_err(|e| fail(code::BUSY, format!("the cluster store could not be written: {e}")))?;
            }
            let answers = cluster(state, app, op).await?;
            let refused = answers
                .iter()
                .find(|(_, a)| a["started"] == Value::Bool(false))
                .map(|(_, a)| a["exists"].as_str().map(str::to_string));
            if let Some(existing) = refused {
                // Undo it where it started.
                if let Some(bus) = state.api().bus() {
                    bus.forget_task(app, &task).await;
                }
                let _ = cluster(state, app, Op::RecordStop { task }).await;
                return Err(fail(
                    i64::from(ErrorCode::RECORD_TASK_EXISTS.as_u32()),
                    match existing {
                        Some(t) => format!("the room is recorded already by task {t}"),
                        None => "the app records every stream already (auto_record)".to_string(),
                    },
                ));
            }
            Ok(Some(json!({"TaskId": task})))
        }
        "StopRecord" | "DescribeRecordStatus" => {
            let task = p.required("TaskId")?;
            if task.is_empty() || task.len() > 64 || !task.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(bad_text("TaskId", "the TaskId StartRecord returned"));
            }
            let not_found = || {
                fail(
                    i64::from(ErrorCode::RECORD_TASK_NOT_FOUND.as_u32()),
                    "no recording task has this TaskId",
                )
            };
            if action == "StopRecord" {
                let op = Op::RecordStop {
                    task: task.to_string(),
                };
                let found = cluster(state, app, op)
                    .await?
                    .iter()
                    .any(|(_, a)| a["found"] == Value::Bool(true));
                if found && let Some(bus) = state.api().bus() {
                    bus.forget_task(app, task).await;
                }
                return if found { Ok(None) } else { Err(not_found()) };
            }
            let op = Op::RecordDescribe {
                task: task.to_string(),
            };
            let parts: Vec<Value> = cluster(state, app, op)
                .await?
                .into_iter()
                .map(|(_, mut a)| a["part"].take())
                .filter(|p| p.is_object())
                .collect();
            merge_record_parts(parts).map(Some).ok_or_else(not_found)
        }
        other => Err(fail(
            code::ACTION_UNSUPPORTED,
            format!(
                "the Action {:?} is not supported",
                other.chars().take(64).collect::<String>()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(n: u32) -> AppId {
        AppId::new(n).unwrap()
    }

    #[test]
    fn a_record_task_is_told_from_every_nodes_part() {
        let part = |status: u64, files: Value, created: u64| {
            json!({"TaskId": "t", "RoomId": "r", "Status": status, "CreateTimestamp": created,
                   "RecordFiles": files, "DroppedPackets": 1})
        };
        // Waiting on two nodes, recording on the third: recording, with its files.
        let merged = merge_record_parts(vec![
            part(1, json!([]), 30),
            part(2, json!([{"StreamId": "s", "FileSize": 10}]), 20),
            part(1, json!([]), 25),
        ])
        .unwrap();
        assert_eq!(merged["Status"], 2);
        assert_eq!(merged["RecordFiles"].as_array().unwrap().len(), 1);
        assert_eq!(merged["DroppedPackets"], 3);
        assert_eq!(merged["CreateTimestamp"], 20);
        // A failure on one node, ended elsewhere: failed, with its code.
        let mut failed = part(4, json!([]), 1);
        failed["ErrorCode"] = 1009086.into();
        failed["ErrorMessage"] = "disk full".into();
        let merged = merge_record_parts(vec![part(3, json!([]), 1), failed]).unwrap();
        assert_eq!(merged["Status"], 4);
        assert_eq!(merged["ErrorCode"], 1009086);
        // No node knows the task.
        assert!(merge_record_parts(Vec::new()).is_none());
    }

    #[test]
    fn the_signature_is_md5_of_app_nonce_secret_timestamp() {
        let s = sign(app(1234567890), "15215528852396", "secret", "1234567890");
        assert_eq!(
            s,
            hex::encode(Md5::digest(b"123456789015215528852396secret1234567890"))
        );
    }

    #[test]
    fn a_nonce_is_refused_again_until_its_window_ends() {
        let mut c = NonceCache::default();
        c.check_and_insert(app(1), "n1", 1000, 1000).unwrap();
        let e = c.check_and_insert(app(1), "n1", 1000, 1001).unwrap_err();
        assert_eq!(e.code, 1009031);
        // Another app may use the same nonce.
        c.check_and_insert(app(2), "n1", 1000, 1001).unwrap();
        // Once the first request's timestamp is out of the window, the nonce is forgotten.
        c.check_and_insert(app(1), "n2", 1700, 1700).unwrap();
        assert!(!c.seen.contains_key(&(app(1), "n1".to_string())));
        assert_eq!(c.seen.len(), 1);
    }

    #[test]
    fn a_full_nonce_memory_refuses_rather_than_forgets() {
        let mut c = NonceCache::default();
        for i in 0..MAX_NONCES {
            c.check_and_insert(app(1), &i.to_string(), 5000, 5000).unwrap();
        }
        let e = c.check_and_insert(app(1), "one-more", 5000, 5000).unwrap_err();
        assert_eq!(e.code, 1009032);
        // Still remembered: a replay of the first is a replay.
        assert_eq!(
            c.check_and_insert(app(1), "0", 5000, 5001).unwrap_err().code,
            1009031
        );
    }

    #[test]
    fn params_take_lists_from_the_query_and_a_json_body() {
        let p = Params::parse(
            Some("RoomId%5B%5D=a&RoomId[]=b&Limit=3"),
            br#"{"UserId": ["u1", "u2"], "Mode": 1}"#,
        )
        .unwrap();
        assert_eq!(p.list("RoomId"), ["a", "b"]);
        assert_eq!(p.list("UserId"), ["u1", "u2"]);
        assert_eq!(p.number("Mode", 0, 1).unwrap(), 1);
        assert_eq!(p.number("Limit", 200, 200).unwrap(), 3);
        assert_eq!(p.number("Limit", 0, 2).unwrap_err().code, 2);
        assert_eq!(Params::parse(None, b"[1]").err().unwrap().code, code::BODY);
    }
}
