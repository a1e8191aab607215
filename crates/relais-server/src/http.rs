//! The main HTTP port: health check, `/rtc` signaling, `/rtc/validate`, and
//! the not-yet-implemented single-PC paths that make SDKs fall back to `/rtc`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use relais_auth::{Claims, TokenVerifier};
use relais_media::{JoinError, JoinParams};
use relais_proto::limits::FieldLimits;
use relais_proto::livekit::{client_info, ClientInfo, ParticipantPermission, TrackSource};
use tracing::{debug, info, Instrument};

use crate::metrics;
use crate::shards::Shards;
use crate::signal;
use crate::websocket::Upgrade;

/// Largest signal message accepted on the WebSocket (LiveKit's limit).
pub const MAX_SIGNAL_MESSAGE: usize = 2 * 1024 * 1024;

/// Shared state of the HTTP handlers.
pub struct AppState {
    pub verifier: TokenVerifier,
    pub shards: Shards,
    pub auto_create: bool,
    /// Lengths and sizes a token's identity, room, metadata and attributes may have.
    pub limits: FieldLimits,
    pub ping_timeout: Duration,
    /// Room placement and signal relay (single node: everything is local).
    pub cluster: Arc<crate::cluster::Cluster>,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(health))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/rtc", get(rtc))
        .route("/rtc/validate", get(validate))
        .route("/rtc/v1", get(single_pc_not_implemented))
        .route("/rtc/v1/validate", get(single_pc_not_implemented))
        .with_state(state)
}

/// LiveKit's health check: 200 `OK` while the node serves (every shard thread
/// runs), 406 `Not Ready` otherwise. It stays 200 while draining: existing
/// sessions are still served, and LiveKit's Helm chart uses `/` as its liveness
/// probe. Orchestrators that must stop sending joins use `/readyz`.
async fn health(State(state): State<Arc<AppState>>) -> Response {
    if state.shards.node().is_serving() {
        (StatusCode::OK, "OK").into_response()
    } else {
        (StatusCode::NOT_ACCEPTABLE, "Not Ready").into_response()
    }
}

/// Liveness: 200 unless a shard thread is stuck.
async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    if state.shards.node().is_alive() {
        (StatusCode::OK, "alive").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "a shard thread is stuck").into_response()
    }
}

/// Readiness: 200 while the node takes new rooms and joins; 503 while it
/// drains (after SIGTERM) or cannot place rooms (a shard thread not running).
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let node = state.shards.node();
    if state.cluster.coordinator.is_draining() {
        node.start_draining();
    }
    if node.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response()
    } else if !node.is_ready() {
        (StatusCode::SERVICE_UNAVAILABLE, "shards not running").into_response()
    } else {
        (StatusCode::OK, "ready").into_response()
    }
}

/// Until the single-PC protocol exists, a 404 without "requested room does not
/// exist" makes every SDK fall back to the two-PC `/rtc` path.
async fn single_pc_not_implemented() -> Response {
    with_cors(
        (
            StatusCode::NOT_FOUND,
            "single peer connection mode is not supported",
        )
            .into_response(),
    )
}

fn with_cors(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    response
}

/// A token that passed every join check.
struct JoinGrant {
    claims: Claims,
    identity: String,
    room: String,
}

/// Why a join is refused before any session exists: HTTP status and plain text.
type Refusal = (StatusCode, String);

fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Result<JoinGrant, Refusal> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let token = bearer
        .or(query.get("access_token").map(String::as_str))
        .filter(|t| !t.is_empty())
        .ok_or((
            StatusCode::UNAUTHORIZED,
            "no authorization token".to_string(),
        ))?;
    let claims = state.verifier.verify(token).map_err(|e| {
        (
            StatusCode::UNAUTHORIZED,
            format!("invalid authorization token: {e}"),
        )
    })?;
    let video = claims.video.clone().unwrap_or_default();
    if !video.is_room_join() {
        return Err((StatusCode::UNAUTHORIZED, "permissions denied".into()));
    }
    let identity = claims.identity().to_string();
    if identity.is_empty() {
        return Err((StatusCode::BAD_REQUEST, "identity cannot be empty".into()));
    }
    if video.room.is_empty() {
        return Err((StatusCode::BAD_REQUEST, "room name cannot be empty".into()));
    }
    let limits = &state.limits;
    let within = limits
        .check_identity(&identity)
        .and_then(|()| limits.check_room_name(&video.room))
        .and_then(|()| {
            limits.check_participant(
                claims.name.as_deref().unwrap_or_default(),
                claims.metadata.as_deref().unwrap_or_default(),
                claims.attributes.as_ref().unwrap_or(&BTreeMap::new()),
            )
        });
    if let Err(exceeded) = within {
        return Err((StatusCode::BAD_REQUEST, exceeded.to_string()));
    }
    Ok(JoinGrant {
        room: video.room,
        identity,
        claims,
    })
}

async fn validate(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let response = match authenticate(&state, &headers, &query) {
        Ok(_) => (StatusCode::OK, "success".to_string()).into_response(),
        Err(refusal) => refusal.into_response(),
    };
    with_cors(response)
}

/// What a client is told when its room refuses it: the metric's reason, the
/// HTTP status, and the text (which SDKs show).
fn join_refusal(refused: &JoinError) -> (&'static str, StatusCode, String) {
    match refused {
        JoinError::RoomFull(max) => (
            "room_full",
            StatusCode::SERVICE_UNAVAILABLE,
            format!("room is full: max participants {max} reached"),
        ),
        JoinError::NoSuchRoom => (
            "no_such_room",
            StatusCode::NOT_FOUND,
            "requested room does not exist".to_string(),
        ),
        JoinError::Overloaded => (
            "overloaded",
            StatusCode::SERVICE_UNAVAILABLE,
            "server overloaded: the room's shard is at capacity, try again later".to_string(),
        ),
        JoinError::Closed => (
            "room_closed",
            StatusCode::SERVICE_UNAVAILABLE,
            "room is closing".to_string(),
        ),
    }
}

fn flag(query: &HashMap<String, String>, name: &str, default: bool) -> bool {
    query
        .get(name)
        .map_or(default, |v| v == "1" || v.eq_ignore_ascii_case("true"))
}

fn permission(claims: &Claims) -> ParticipantPermission {
    let video = claims.video.clone().unwrap_or_default();
    let sources = video
        .can_publish_sources
        .iter()
        .flatten()
        .filter_map(|s| match s.as_str() {
            "camera" => Some(TrackSource::Camera),
            "microphone" => Some(TrackSource::Microphone),
            "screen_share" => Some(TrackSource::ScreenShare),
            "screen_share_audio" => Some(TrackSource::ScreenShareAudio),
            _ => None,
        })
        .map(|s| s as i32)
        .collect();
    ParticipantPermission {
        can_subscribe: video.can_subscribe(),
        can_publish: video.can_publish(),
        can_publish_data: video.can_publish_data(),
        can_publish_sources: sources,
        hidden: video.is_hidden(),
        recorder: video.is_recorder(),
        can_update_metadata: video.can_update_own_metadata(),
        agent: video.is_agent(),
        can_subscribe_metrics: video.can_subscribe_metrics(),
        can_manage_agent_session: video.can_manage_agent_session(),
    }
}

fn participant_kind(kind: Option<&str>) -> i32 {
    match kind.unwrap_or("standard") {
        "ingress" => 1,
        "egress" => 2,
        "sip" => 3,
        "agent" => 4,
        "connector" => 7,
        "bridge" => 8,
        _ => 0,
    }
}

fn client_info(query: &HashMap<String, String>) -> ClientInfo {
    let sdk = match query.get("sdk").map(String::as_str) {
        Some("js") => client_info::Sdk::Js,
        Some("swift" | "ios") => client_info::Sdk::Swift,
        Some("android") => client_info::Sdk::Android,
        Some("flutter") => client_info::Sdk::Flutter,
        Some("go") => client_info::Sdk::Go,
        Some("unity") => client_info::Sdk::Unity,
        Some("reactnative") => client_info::Sdk::ReactNative,
        Some("rust") => client_info::Sdk::Rust,
        Some("python") => client_info::Sdk::Python,
        Some("cpp") => client_info::Sdk::Cpp,
        Some("unityweb") => client_info::Sdk::UnityWeb,
        Some("node") => client_info::Sdk::Node,
        _ => client_info::Sdk::Unknown,
    };
    let text = |k: &str| query.get(k).cloned().unwrap_or_default();
    ClientInfo {
        sdk: sdk as i32,
        version: text("version"),
        protocol: query
            .get("protocol")
            .and_then(|p| p.parse().ok())
            .unwrap_or(0),
        os: text("os"),
        os_version: text("os_version"),
        device_model: text("device_model"),
        browser: text("browser"),
        browser_version: text("browser_version"),
        network: text("network"),
        client_protocol: query
            .get("client_protocol")
            .and_then(|p| p.parse().ok())
            .unwrap_or(0),
        ..Default::default()
    }
}

async fn rtc(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    Query(query): Query<HashMap<String, String>>,
    ws: Upgrade,
) -> Response {
    let started = std::time::Instant::now();
    let grant = match authenticate(&state, &headers, &query) {
        Ok(g) => g,
        Err(refusal) => {
            metrics::join_refused(if refusal.0 == StatusCode::UNAUTHORIZED {
                "unauthorized"
            } else {
                "bad_request"
            });
            return refusal.into_response();
        }
    };
    if flag(&query, "reconnect", false) {
        // Sessions are not kept across signal loss yet: the only frame is a leave
        // asking for a full rejoin, which every SDK handles (protocol.md §1.7).
        debug!(identity = %grant.identity, "resume requested; asking for a full rejoin");
        return ws.on_upgrade(MAX_SIGNAL_MESSAGE, signal::refuse_resume);
    }
    // The room may live on another node: relay the whole signal connection there.
    match state.cluster.route_join(&grant.room, &headers).await {
        crate::cluster::Route::Local => {}
        crate::cluster::Route::Relay(node) => {
            return state
                .cluster
                .clone()
                .relay(ws, node, &uri, &headers, MAX_SIGNAL_MESSAGE)
                .await
        }
        crate::cluster::Route::Refuse(status, reason, text) => {
            metrics::join_refused(reason);
            return (status, text).into_response();
        }
    }
    let client = client_info(&query);
    let params = JoinParams {
        key: state.shards.new_participant_key(),
        identity: grant.identity.clone(),
        name: grant.claims.name.clone().unwrap_or_default(),
        metadata: grant.claims.metadata.clone().unwrap_or_default(),
        attributes: grant.claims.attributes.clone().unwrap_or_default(),
        permission: permission(&grant.claims),
        kind: participant_kind(grant.claims.kind.as_deref()),
        auto_subscribe: flag(&query, "auto_subscribe", true),
        protocol: client.protocol,
        client_info: Some(client),
    };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let handle = match state
        .shards
        .join(&grant.room, state.auto_create, params, tx)
        .await
    {
        Ok(h) => {
            metrics::join_admitted(started);
            h
        }
        Err(refused) => {
            let (reason, status, text) = join_refusal(&refused);
            metrics::join_refused(reason);
            return (status, text).into_response();
        }
    };
    let span = handle.span().clone();
    span.in_scope(|| info!("signal connection accepted"));
    let on_fail = handle.clone();
    let ping_timeout = state.ping_timeout;
    ws.on_upgrade_or_else(
        MAX_SIGNAL_MESSAGE,
        move || on_fail.remove(relais_proto::livekit::DisconnectReason::JoinFailure),
        move |socket| signal::run(socket, handle, rx, ping_timeout).instrument(span),
    )
}
