//! The web debug page and `huddle.js`, embedded in the binary, and the small JSON API the page
//! uses.
//!
//! - `GET /` (the page), `/app.js`, `/style.css`, `/sdk/huddle.js` (the browser SDK's entry, an ES
//!   module) and its modules `/sdk/sdk/*.js` (`web/sdk/`: the URLs mirror the files, so that the
//!   entry's relative imports resolve the same in the page and in node).
//! - `GET /api/info`: `{"dev_mode": bool, "protocol": 1}`, and in dev mode also the dev app's
//!   `app_id` (public; the page pre-fills it). Asked from a loopback address (monitoring on the
//!   host, the churn soak of `huddle load-test --churn`), also `"live"`: the server's counts now,
//!   `{"connections", "sessions", "detached", "rooms", "streams", "peer_connections"}` (read-only,
//!   aggregate; not given to other addresses). Through a `trusted_proxies` proxy the address is
//!   the client's from `X-Forwarded-For` ([`ServerState::client_ip`]).
//! - `POST /api/dev-token`, **only in dev mode** (the route does not exist otherwise: 404): JSON
//!   `{"app_id", "user_id", "room_id"?, "effective_secs"?}` → `{"token": "04…", "expire": unix_s}`,
//!   a Token04 token minted with the dev app's server secret. With a `room_id` the token may log in
//!   to that room only (and publish). Bad input is answered 400 with `{"code", "message"}`, the
//!   code from the system's table (`docs/errors.md`).
//!
//! The files live in `web/` at the repository root; they are compiled in, so a release binary
//! serves the page without any file beside it.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::connect_info::ConnectInfo;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use huddle_proto::{AppId, ErrorCode, HuddleError, PROTOCOL_VERSION, RoomId, UserId};
use huddle_token::{Privileges, TokenBuilder};
use serde::Deserialize;
use serde_json::json;

use crate::signaling::ServerState;

const INDEX_HTML: &str = include_str!("../../../web/index.html");
const APP_JS: &str = include_str!("../../../web/app.js");
const STYLE_CSS: &str = include_str!("../../../web/style.css");
const HUDDLE_JS: &str = include_str!("../../../web/huddle.js");

/// The SDK's modules (`web/sdk/`), served at `/sdk/sdk/<name>`. `tests/web.rs` checks that every
/// file of that directory is here.
const SDK_MODULES: &[(&str, &str)] = &[
    ("engine.js", include_str!("../../../web/sdk/engine.js")),
    ("errors.js", include_str!("../../../web/sdk/errors.js")),
    ("levels.js", include_str!("../../../web/sdk/levels.js")),
    ("monitor.js", include_str!("../../../web/sdk/monitor.js")),
    ("pc.js", include_str!("../../../web/sdk/pc.js")),
    ("protocol.js", include_str!("../../../web/sdk/protocol.js")),
    ("quality.js", include_str!("../../../web/sdk/quality.js")),
    ("stats.js", include_str!("../../../web/sdk/stats.js")),
    ("token.js", include_str!("../../../web/sdk/token.js")),
    ("types.js", include_str!("../../../web/sdk/types.js")),
];

/// The longest lifetime a dev token may ask for (a day), and the default (an hour).
const MAX_DEV_TOKEN_SECS: i64 = 24 * 3600;
const DEFAULT_DEV_TOKEN_SECS: i64 = 3600;

/// The page, the SDK and the JSON API, merged into the signaling router by [`crate::serve`]. The
/// dev-token route exists only when the server runs in dev mode.
pub(crate) fn routes(state: ServerState) -> Router {
    let mut router = Router::new()
        .route("/", get(|| asset(INDEX_HTML, "text/html; charset=utf-8")))
        .route(
            "/index.html",
            get(|| asset(INDEX_HTML, "text/html; charset=utf-8")),
        )
        .route("/app.js", get(|| asset(APP_JS, "text/javascript; charset=utf-8")))
        .route("/style.css", get(|| asset(STYLE_CSS, "text/css; charset=utf-8")))
        .route(
            "/sdk/huddle.js",
            get(|| asset(HUDDLE_JS, "text/javascript; charset=utf-8")),
        )
        .route("/api/info", get(info))
        .route("/metrics", get(metrics));
    for &(name, body) in SDK_MODULES {
        router = router.route(
            &format!("/sdk/sdk/{name}"),
            get(move || asset(body, "text/javascript; charset=utf-8")),
        );
    }
    let router = if state.config().dev_mode {
        router.route("/api/dev-token", post(dev_token))
    } else {
        router
    };
    router.with_state(state)
}

async fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // The page changes with the binary; a stale cached copy would talk an old protocol.
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

async fn info(
    State(state): State<ServerState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: axum::http::HeaderMap,
) -> Response {
    let config = state.config();
    let mut body = json!({ "dev_mode": config.dev_mode, "protocol": PROTOCOL_VERSION });
    if config.dev_mode
        && let Some(app) = config.apps.first()
    {
        body["app_id"] = json!(app.app_id.get());
    }
    // Behind a trusted proxy on the same host, the client's address, not the proxy's.
    if peer.is_some_and(|Extension(ConnectInfo(a))| {
        state.client_ip(a.ip(), &headers).to_canonical().is_loopback()
    }) {
        body["live"] = live_counts(&state);
    }
    Json(body).into_response()
}

/// `/metrics`, Prometheus' text format: to loopback (the client's address behind a trusted
/// proxy), or to anyone with `Authorization: Bearer <metrics_token>`; else 403 with 1009030.
async fn metrics(
    State(state): State<ServerState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: axum::http::HeaderMap,
) -> Response {
    let loopback = peer.is_some_and(|Extension(ConnectInfo(a))| {
        state.client_ip(a.ip(), &headers).to_canonical().is_loopback()
    });
    let token = state.config().metrics_token.as_deref().is_some_and(|t| {
        let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        crate::metrics::token_matches(t, authorization)
    });
    if !loopback && !token {
        return api_error(
            StatusCode::FORBIDDEN,
            &HuddleError::new(
                ErrorCode::ACCESS_DENIED,
                "/metrics answers loopback, or a request with Authorization: Bearer <metrics_token>",
            ),
        );
    }
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        state.metrics().render(&state),
    )
        .into_response()
}

/// The server's counts now: open WebSocket connections, sessions (attached or in grace), detached
/// sessions, rooms, published streams and open peer connections (opened − closed).
fn live_counts(state: &ServerState) -> serde_json::Value {
    let stats = state.stats();
    let media = state.media_stats();
    json!({
        "connections": state.connections(),
        "sessions": stats.sessions,
        "detached": stats.detached,
        "rooms": stats.rooms,
        "streams": stats.streams,
        "peer_connections": media.pcs_opened.saturating_sub(media.pcs_closed),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DevTokenRequest {
    app_id: u32,
    user_id: String,
    #[serde(default)]
    room_id: Option<String>,
    #[serde(default)]
    effective_secs: Option<i64>,
}

fn api_error(status: StatusCode, err: &HuddleError) -> Response {
    (
        status,
        Json(json!({ "code": err.code.as_u32(), "message": err.message })),
    )
        .into_response()
}

fn bad_request(err: &HuddleError) -> Response {
    api_error(StatusCode::BAD_REQUEST, err)
}

async fn dev_token(State(state): State<ServerState>, body: Bytes) -> Response {
    let req: DevTokenRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return bad_request(&HuddleError::new(
                ErrorCode::INVALID_PARAMETER,
                format!("expected JSON {{\"app_id\", \"user_id\", \"room_id\"?, \"effective_secs\"?}}: {e}"),
            ));
        }
    };
    let app_id = match AppId::new(req.app_id) {
        Ok(a) => a,
        Err(e) => return bad_request(&e),
    };
    let config = state.config();
    let Some(app) = config.app(app_id) else {
        return bad_request(&HuddleError::new(
            ErrorCode::APP_ID_UNKNOWN,
            format!("the AppID {app_id} is not the dev app's"),
        ));
    };
    let user_id = match UserId::new(req.user_id) {
        Ok(u) => u,
        Err(e) => return bad_request(&e),
    };
    let secs = req.effective_secs.unwrap_or(DEFAULT_DEV_TOKEN_SECS);
    if !(1..=MAX_DEV_TOKEN_SECS).contains(&secs) {
        return bad_request(&HuddleError::new(
            ErrorCode::INVALID_PARAMETER,
            format!("effective_secs must be 1..={MAX_DEV_TOKEN_SECS}"),
        ));
    }
    let mut builder =
        TokenBuilder::new(app_id.get(), user_id.as_str(), app.server_secret.as_str()).effective_secs(secs);
    if let Some(room) = req.room_id.filter(|r| !r.is_empty()) {
        let room = match RoomId::new(room) {
            Ok(r) => r,
            Err(e) => return bad_request(&e),
        };
        builder = builder.privileges(&Privileges {
            room_id: room.as_str().to_string(),
            login: Some(true),
            publish: Some(true),
            stream_id_list: None,
        });
    }
    match builder.build() {
        Ok(token) => {
            let expire = huddle_token::peek_expire(&token).unwrap_or_default();
            tracing::info!(app = %app_id, user = %user_id, "dev token issued");
            Json(json!({ "token": token, "expire": expire })).into_response()
        }
        Err(e) => api_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &HuddleError::new(ErrorCode::INTERNAL, e.to_string()),
        ),
    }
}
