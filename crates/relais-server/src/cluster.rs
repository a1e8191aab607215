//! This node in a cluster: the heartbeat task, signal relay to the node that
//! hosts a room, and cluster-wide RoomService (Twirp) routing.
//!
//! The coordinator ([`relais_cluster::Coordinator`]) is asked once per new
//! participant and per RoomService call; once a participant has joined, its
//! signal and media never touch Redis. See `docs/cluster.md`.
//!
//! * **Join on the wrong node.** A authenticates the token, asks the
//!   coordinator where the room lives, and when it is B, opens its own
//!   WebSocket to B's `/rtc` with the same path, query and `Authorization`, plus
//!   [`FORWARDED_BY`]. B's refusal (401, 404, 503…) is passed through as is;
//!   otherwise A upgrades the client and copies frames both ways. B's answer
//!   SDP carries B's ICE candidates, so media flows to B directly.
//! * **RoomService.** `ListRooms` is asked of every node and merged; calls on
//!   one room are forwarded to the room's owner (same body, same
//!   `Authorization`) and its answer is returned unchanged.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{to_bytes, Body, Bytes};
use axum::extract::ws::{self, WebSocket, WebSocketUpgrade};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use prost::Message as _;
use relais_auth::TokenVerifier;
use relais_cluster::{
    ClusterError, Coordinator, InProcess, LocalSnapshot, NodeInfo, NodeStats, Placement,
    RedisCoordinator, RedisSettings,
};
use relais_control::room_service::RoomBackend;
use relais_proto::livekit::{ListRoomsRequest, ListRoomsResponse, Room};
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::room_api::ShardsBackend;

/// Header a node adds when it relays a join or forwards a RoomService call;
/// its value is the sender's node id. The receiver serves the request itself.
pub const FORWARDED_BY: &str = "x-relais-forwarded-by";

/// Largest RoomService body routed (the service's own limit).
const MAX_ROUTED_BODY: usize = relais_control::room_service::MAX_REQUEST_BYTES;
/// Time to open the relay WebSocket to the room's node.
const RELAY_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time for a forwarded RoomService call (PerformRpc may wait up to 60 s).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(75);
/// Time for one node's part of a fanned-out ListRooms.
const FANOUT_TIMEOUT: Duration = Duration::from_secs(5);

/// This node's part in the cluster (or the single-node stand-in).
pub struct Cluster {
    pub coordinator: Arc<dyn Coordinator>,
    relays: AtomicUsize,
    client: Client<HttpConnector, Full<Bytes>>,
    heartbeat_interval: Duration,
    verifier: TokenVerifier,
}

/// Where a join goes.
pub enum Route {
    Local,
    Relay(Box<NodeInfo>),
    Refuse(StatusCode, String),
}

/// `host:port` other nodes use to reach this node's HTTP port.
fn http_address(config: &Config, node_ip: std::net::IpAddr) -> anyhow::Result<String> {
    let configured = config.cluster.node_http_address.trim();
    if !configured.is_empty() {
        return Ok(configured.to_string());
    }
    if config.port == 0 {
        anyhow::bail!(
            "with redis configured, set a fixed `port` or `cluster.node_http_address` \
             (other nodes must reach this node's HTTP port)"
        );
    }
    Ok(SocketAddr::new(node_ip, config.port).to_string())
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Cluster {
    /// The coordinator `config` asks for: Redis when `redis.address` is set,
    /// else the in-process one. Does not wait for Redis.
    pub fn new(
        config: &Config,
        media_node_id: &str,
        node_ip: std::net::IpAddr,
        verifier: TokenVerifier,
    ) -> anyhow::Result<Arc<Cluster>> {
        let cluster_config = config.cluster.clone();
        let id = if cluster_config.node_id.is_empty() {
            media_node_id.to_string()
        } else {
            cluster_config.node_id.clone()
        };
        let me = NodeInfo {
            id,
            instance: relais_proto::ids::new_id(""),
            http_address: if config.redis.is_configured() {
                http_address(config, node_ip)?
            } else {
                SocketAddr::new(node_ip, config.port).to_string()
            },
            region: config.region.clone(),
            state: Default::default(),
            started_at_ms: unix_ms(),
            updated_at_ms: unix_ms(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            limits: cluster_config.limits,
            stats: NodeStats::default(),
        };
        let heartbeat_interval = Duration::from_millis(cluster_config.heartbeat_interval_ms);
        let coordinator: Arc<dyn Coordinator> = if config.redis.is_configured() {
            let settings = RedisSettings {
                address: config.redis.address.clone(),
                username: config.redis.username.clone(),
                password: config.redis.password.clone(),
                db: i64::from(config.redis.db),
            };
            info!(
                node_id = %me.id, http_address = %me.http_address, redis = %settings.address,
                region = %me.region, "cluster mode: Redis coordinator"
            );
            Arc::new(RedisCoordinator::new(&settings, cluster_config, me)?)
        } else {
            Arc::new(InProcess::new(me))
        };
        let client = Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
        Ok(Arc::new(Cluster {
            coordinator,
            relays: AtomicUsize::new(0),
            client,
            heartbeat_interval,
            verifier,
        }))
    }

    /// Signal connections relayed to other nodes right now.
    pub fn active_relays(&self) -> usize {
        self.relays.load(Ordering::SeqCst)
    }

    /// Start the heartbeat task and run the first heartbeat (bounded), so the
    /// node is registered before it serves.
    pub async fn start(self: &Arc<Self>, backend: ShardsBackend) {
        let first = self.beat(&backend);
        if tokio::time::timeout(Duration::from_secs(3), first)
            .await
            .is_err()
        {
            warn!("first heartbeat did not finish in time; continuing");
        }
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let ok = this.beat(&backend).await;
                // While Redis is away, try again soon so the node re-registers
                // and re-claims its rooms quickly when it returns.
                let pause = if ok {
                    this.heartbeat_interval
                } else {
                    this.heartbeat_interval.min(Duration::from_millis(250))
                };
                tokio::time::sleep(pause).await;
            }
        });
    }

    /// One heartbeat; true when the coordinator accepted it.
    async fn beat(&self, backend: &ShardsBackend) -> bool {
        let rooms = match tokio::time::timeout(
            Duration::from_secs(2),
            backend.list_rooms(Vec::new()),
        )
        .await
        {
            Ok(Ok(rooms)) => rooms,
            Ok(Err(e)) => {
                warn!(error = %e, "cannot list local rooms for the heartbeat");
                return false;
            }
            Err(_) => {
                warn!("shards did not list their rooms within 2 s; heartbeat skipped");
                return false;
            }
        };
        let num_cpus = relais_cluster::sysload::num_cpus();
        let load = relais_cluster::sysload::load_avg_1m();
        let stats = NodeStats {
            num_cpus,
            load_avg_1m: load,
            sysload: load / f64::from(num_cpus.max(1)),
            rooms: rooms.len() as u32,
            participants: rooms.iter().map(|r| r.num_participants).sum(),
            tracks: rooms.iter().map(|r| r.num_publishers).sum(),
            bytes_in_per_sec: 0,
            bytes_out_per_sec: 0,
            relayed: self.active_relays() as u32,
        };
        let snapshot = LocalSnapshot {
            stats,
            rooms: rooms.into_iter().map(|r| r.name).collect(),
        };
        match self.coordinator.heartbeat(snapshot).await {
            Ok(()) => true,
            Err(e) => {
                debug!(error = %e, "heartbeat failed");
                false
            }
        }
    }

    /// Drain: take no new rooms, and tell the others now.
    pub async fn start_draining(&self, backend: &ShardsBackend) {
        self.coordinator.set_draining();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.beat(backend)).await;
    }

    /// Leave the cluster (release room claims and the node record), bounded.
    pub async fn leave(&self) {
        if tokio::time::timeout(Duration::from_secs(3), self.coordinator.leave())
            .await
            .is_err()
        {
            warn!("leaving the cluster timed out; the records expire on their own");
        }
    }

    /// Where a new participant of `room` is served.
    pub async fn route_join(&self, room: &str, headers: &HeaderMap) -> Route {
        let forwarded = headers.contains_key(FORWARDED_BY);
        match self.coordinator.place(room, forwarded).await {
            Ok(Placement::Local) => Route::Local,
            Ok(Placement::Remote(node)) if forwarded => {
                // Never relay twice: the SDK retries and the next try lands right.
                Route::Refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("room {room} moved to node {}", node.id),
                )
            }
            Ok(Placement::Remote(node)) => Route::Relay(node),
            Err(e) => {
                let status = StatusCode::SERVICE_UNAVAILABLE;
                match &e {
                    ClusterError::Draining => debug!(%room, "join refused: draining"),
                    _ => warn!(%room, error = %e, "join refused"),
                }
                Route::Refuse(status, e.to_string())
            }
        }
    }

    /// Serve a join by relaying the signal connection to `node`.
    pub async fn relay(
        self: Arc<Self>,
        ws: WebSocketUpgrade,
        node: Box<NodeInfo>,
        uri: &Uri,
        headers: &HeaderMap,
        max_message_size: usize,
    ) -> Response {
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/rtc");
        let url = format!("ws://{}{}", node.http_address, path);
        let mut request = match url.as_str().into_client_request() {
            Ok(r) => r,
            Err(e) => {
                warn!(node = %node.id, address = %node.http_address, error = %e, "bad relay address");
                return (StatusCode::BAD_GATEWAY, "room node address is invalid").into_response();
            }
        };
        for name in [header::AUTHORIZATION, header::USER_AGENT] {
            if let Some(v) = headers.get(&name) {
                request.headers_mut().insert(name, v.clone());
            }
        }
        if let Ok(v) = HeaderValue::from_str(self.coordinator.node_id()) {
            request.headers_mut().insert(FORWARDED_BY, v);
        }
        let ws_config = tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(max_message_size))
            .max_frame_size(Some(max_message_size));
        let connect = tokio_tungstenite::connect_async_with_config(request, Some(ws_config), true);
        let upstream = match tokio::time::timeout(RELAY_CONNECT_TIMEOUT, connect).await {
            Ok(Ok((stream, _))) => stream,
            Ok(Err(tungstenite::Error::Http(response))) => {
                // The room's node refused: pass its answer through.
                let status = StatusCode::from_u16(response.status().as_u16())
                    .unwrap_or(StatusCode::BAD_GATEWAY);
                let body = response.into_body().unwrap_or_default();
                debug!(node = %node.id, %status, "room node refused the relayed join");
                return (status, body).into_response();
            }
            Ok(Err(e)) => {
                warn!(node = %node.id, address = %node.http_address, error = %e, "cannot reach the room's node");
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the node hosting this room is unreachable; retry",
                )
                    .into_response();
            }
            Err(_) => {
                warn!(node = %node.id, address = %node.http_address, "relay connect timed out");
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the node hosting this room did not answer; retry",
                )
                    .into_response();
            }
        };
        info!(node = %node.id, address = %node.http_address, "relaying signal connection");
        self.relays.fetch_add(1, Ordering::SeqCst);
        let guard = RelayGuard(self.clone());
        ws.max_message_size(max_message_size)
            .on_failed_upgrade(|e| debug!(error = %e, "client upgrade failed"))
            .on_upgrade(move |client| async move {
                pump(client, upstream).await;
                drop(guard);
            })
    }
}

struct RelayGuard(Arc<Cluster>);

impl Drop for RelayGuard {
    fn drop(&mut self) {
        self.0.relays.fetch_sub(1, Ordering::SeqCst);
    }
}

type Upstream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Copy data frames both ways until either side closes. Ping/pong is each
/// hop's own business (both WebSocket libraries answer pings themselves).
async fn pump(client: WebSocket, upstream: Upstream) {
    let (mut to_client, mut from_client) = client.split();
    let (mut to_node, mut from_node) = upstream.split();
    loop {
        tokio::select! {
            m = from_client.next() => match m {
                Some(Ok(ws::Message::Binary(b))) => {
                    if to_node.send(tungstenite::Message::Binary(b)).await.is_err() { break; }
                }
                Some(Ok(ws::Message::Text(t))) => {
                    if to_node.send(tungstenite::Message::text(t.as_str())).await.is_err() { break; }
                }
                Some(Ok(ws::Message::Ping(_) | ws::Message::Pong(_))) => {}
                Some(Ok(ws::Message::Close(frame))) => {
                    let frame = frame.map(|f| tungstenite::protocol::CloseFrame {
                        code: f.code.into(),
                        reason: f.reason.as_str().into(),
                    });
                    let _ = to_node.send(tungstenite::Message::Close(frame)).await;
                    break;
                }
                Some(Err(_)) | None => {
                    let _ = to_node.close().await;
                    break;
                }
            },
            m = from_node.next() => match m {
                Some(Ok(tungstenite::Message::Binary(b))) => {
                    if to_client.send(ws::Message::Binary(b)).await.is_err() { break; }
                }
                Some(Ok(tungstenite::Message::Text(t))) => {
                    if to_client.send(ws::Message::Text(t.as_str().into())).await.is_err() { break; }
                }
                Some(Ok(tungstenite::Message::Close(frame))) => {
                    let frame = frame.map(|f| ws::CloseFrame {
                        code: f.code.into(),
                        reason: f.reason.as_str().into(),
                    });
                    let _ = to_client.send(ws::Message::Close(frame)).await;
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    debug!(error = %e, "relay: room node connection failed");
                    let _ = to_client.close().await;
                    break;
                }
                None => {
                    let _ = to_client.close().await;
                    break;
                }
            },
        }
    }
    debug!("relay closed");
}

// ----------------------------------------------------------------- RoomService

/// Field 1 of every room-scoped RoomService request is the room name
/// (`room`, or `name` for CreateRoom).
#[derive(Clone, PartialEq, prost::Message)]
struct RoomField {
    #[prost(string, tag = "1")]
    room: String,
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"))
}

fn room_of(method: &str, json: bool, body: &[u8]) -> Option<String> {
    let room = if json {
        let v: serde_json::Value = serde_json::from_slice(body).ok()?;
        let key = if method == "CreateRoom" {
            "name"
        } else {
            "room"
        };
        v.get(key)?.as_str()?.to_string()
    } else {
        RoomField::decode(body).ok()?.room
    };
    (!room.is_empty()).then_some(room)
}

/// Axum middleware: RoomService (Twirp) calls act on the whole cluster.
/// Calls that are not for another node run here unchanged.
pub async fn route_room_service(
    State(cluster): State<Arc<Cluster>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(method) = request
        .uri()
        .path()
        .strip_prefix("/twirp/livekit.RoomService/")
        .map(str::to_string)
    else {
        return next.run(request).await;
    };
    if !cluster.coordinator.is_clustered() || request.headers().contains_key(FORWARDED_BY) {
        return next.run(request).await;
    }
    // Only authenticated callers make this node talk to others; the service
    // itself answers everyone else (with the proper Twirp error).
    let authorized = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.get(7..)
                .filter(|_| v[..7].eq_ignore_ascii_case("bearer "))
        })
        .is_some_and(|token| cluster.verifier.verify(token.trim()).is_ok());
    if !authorized {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let body = match to_bytes(body, MAX_ROUTED_BODY).await {
        Ok(b) => b,
        Err(_) => return next.run(Request::from_parts(parts, Body::empty())).await,
    };
    let json = is_json(&parts.headers);
    if method == "ListRooms" {
        return list_rooms_everywhere(&cluster, &parts.headers, json, &body).await;
    }
    let Some(room) = room_of(&method, json, &body) else {
        return next.run(Request::from_parts(parts, Body::from(body))).await;
    };
    let owner = if method == "CreateRoom" {
        match cluster.coordinator.place(&room, false).await {
            Ok(Placement::Remote(node)) => Some(*node),
            Ok(Placement::Local) => None,
            Err(e) => {
                warn!(%room, error = %e, "CreateRoom: no placement; creating here");
                None
            }
        }
    } else {
        match cluster.coordinator.locate(&room).await {
            Ok(owner) => owner,
            Err(e) => {
                debug!(%room, error = %e, "RoomService: owner unknown; answering here");
                None
            }
        }
    };
    match owner {
        Some(node) if node.id != cluster.coordinator.node_id() => {
            debug!(%room, %method, node = %node.id, "forwarding RoomService call to the room's node");
            forward(&cluster, &node, &parts.uri, &parts.headers, body).await
        }
        _ => next.run(Request::from_parts(parts, Body::from(body))).await,
    }
}

async fn post(
    cluster: &Cluster,
    node: &NodeInfo,
    path: &str,
    headers: &HeaderMap,
    content_type: Option<&HeaderValue>,
    body: Bytes,
    timeout: Duration,
) -> Result<(StatusCode, Option<HeaderValue>, Bytes), String> {
    let uri = format!("http://{}{}", node.http_address, path);
    let mut builder = hyper::Request::post(uri);
    if let Some(auth) = headers.get(header::AUTHORIZATION) {
        builder = builder.header(header::AUTHORIZATION, auth);
    }
    if let Some(ct) = content_type {
        builder = builder.header(header::CONTENT_TYPE, ct);
    }
    builder = builder.header(FORWARDED_BY, cluster.coordinator.node_id());
    let request = builder.body(Full::new(body)).map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(timeout, cluster.client.request(request))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let ct = response.headers().get(header::CONTENT_TYPE).cloned();
    let bytes = tokio::time::timeout(timeout, response.into_body().collect())
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, ct, bytes))
}

async fn forward(
    cluster: &Cluster,
    node: &NodeInfo,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    match post(
        cluster,
        node,
        path,
        headers,
        headers.get(header::CONTENT_TYPE),
        body,
        FORWARD_TIMEOUT,
    )
    .await
    {
        Ok((status, ct, bytes)) => {
            let mut response = (status, bytes).into_response();
            if let Some(ct) = ct {
                response.headers_mut().insert(header::CONTENT_TYPE, ct);
            }
            response
        }
        Err(e) => {
            warn!(node = %node.id, error = %e, "forwarding a RoomService call failed");
            twirp_unavailable("the node hosting this room is unreachable")
        }
    }
}

fn twirp_unavailable(msg: &str) -> Response {
    let body = serde_json::json!({"code": "unavailable", "msg": msg}).to_string();
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// ListRooms on every live node, merged. A node that does not answer is left
/// out (and logged); an error from a node (e.g. 401) is returned as is.
async fn list_rooms_everywhere(
    cluster: &Cluster,
    headers: &HeaderMap,
    json: bool,
    body: &[u8],
) -> Response {
    let request = if json {
        serde_json::from_slice::<ListRoomsRequest>(body).ok()
    } else {
        ListRoomsRequest::decode(body).ok()
    };
    let Some(request) = request else {
        return (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::json!({"code": "malformed", "msg": "the body is not a ListRoomsRequest"})
                .to_string(),
        )
            .into_response();
    };
    let nodes = cluster.coordinator.nodes().await.unwrap_or_default();
    let proto = HeaderValue::from_static("application/protobuf");
    let encoded = Bytes::from(request.encode_to_vec());
    let calls = nodes.iter().map(|node| {
        let encoded = encoded.clone();
        let proto = proto.clone();
        async move {
            let result = post(
                cluster,
                node,
                "/twirp/livekit.RoomService/ListRooms",
                headers,
                Some(&proto),
                encoded,
                FANOUT_TIMEOUT,
            )
            .await;
            (node, result)
        }
    });
    let mut rooms: Vec<Room> = Vec::new();
    for (node, result) in futures_util::future::join_all(calls).await {
        match result {
            Ok((StatusCode::OK, _, bytes)) => match ListRoomsResponse::decode(bytes) {
                Ok(part) => {
                    for room in part.rooms {
                        if rooms.iter().any(|r| r.name == room.name) {
                            warn!(room = %room.name, node = %node.id, "room listed by two nodes");
                        } else {
                            rooms.push(room);
                        }
                    }
                }
                Err(e) => warn!(node = %node.id, error = %e, "ListRooms: bad answer"),
            },
            Ok((status, ct, bytes)) => {
                let mut response = (status, bytes).into_response();
                if let Some(ct) = ct {
                    response.headers_mut().insert(header::CONTENT_TYPE, ct);
                }
                return response;
            }
            Err(e) => {
                warn!(node = %node.id, error = %e, "ListRooms: node did not answer; left out")
            }
        }
    }
    rooms.sort_by(|a, b| a.name.cmp(&b.name));
    let response = ListRoomsResponse { rooms };
    if json {
        match serde_json::to_vec(&response) {
            Ok(body) => (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response(),
            Err(_) => twirp_unavailable("cannot encode the answer"),
        }
    } else {
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/protobuf")],
            response.encode_to_vec(),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relais_proto::livekit::{CreateRoomRequest, RoomParticipantIdentity};

    #[test]
    fn finds_the_room_in_protobuf_and_json_bodies() {
        let pb = RoomParticipantIdentity {
            room: "r1".into(),
            identity: "alice".into(),
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(
            room_of("RemoveParticipant", false, &pb).as_deref(),
            Some("r1")
        );
        let pb = CreateRoomRequest {
            name: "r2".into(),
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(room_of("CreateRoom", false, &pb).as_deref(), Some("r2"));
        assert_eq!(
            room_of("SendData", true, br#"{"room":"r3","data":"AA=="}"#).as_deref(),
            Some("r3")
        );
        assert_eq!(
            room_of("CreateRoom", true, br#"{"name":"r4"}"#).as_deref(),
            Some("r4")
        );
        assert_eq!(room_of("SendData", true, b"not json"), None);
        assert_eq!(room_of("SendData", false, b"\xff\xff"), None);
        assert_eq!(room_of("SendData", true, br#"{"room":""}"#), None);
    }
}
