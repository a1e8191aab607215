//! This node in a cluster: the heartbeat task and the signal relay to the
//! node that hosts a room (RoomService routing is in `room_routing`).
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

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use relais_auth::TokenVerifier;
use relais_cluster::{
    ClusterError, Coordinator, InProcess, LocalSnapshot, NodeInfo, NodeLimits, NodeStats,
    Placement, RedisCoordinator, RedisSettings,
};
use relais_control::room_service::RoomBackend;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::room_api::ShardsBackend;
use crate::websocket::{self, Socket, Upgrade};

/// Header a node adds when it relays a join or forwards a RoomService call;
/// its value is the sender's node id. The receiver serves the request itself.
pub const FORWARDED_BY: &str = "x-relais-forwarded-by";

/// Time to open the relay WebSocket to the room's node.
const RELAY_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// This node's part in the cluster (or the single-node stand-in).
pub struct Cluster {
    pub coordinator: Arc<dyn Coordinator>,
    relays: AtomicUsize,
    /// HTTP client for calls to other nodes.
    pub(crate) client: Client<HttpConnector, Full<Bytes>>,
    heartbeat_interval: Duration,
    /// The CPUs this process may use, read once: the standard library reads
    /// the cgroup's files to answer, ~0.1 ms a heartbeat on a quiet node.
    num_cpus: u32,
    /// The traffic rates the heartbeat publishes.
    traffic: std::sync::Mutex<TrafficRates>,
    /// Checks callers before this node talks to others on their behalf.
    pub(crate) verifier: TokenVerifier,
}

/// UDP byte totals at one instant.
#[derive(Clone, Copy)]
struct TrafficSample {
    at: std::time::Instant,
    bytes_in: u64,
    bytes_out: u64,
}

impl TrafficSample {
    fn now() -> Self {
        let (bytes_in, bytes_out) = crate::metrics::udp_bytes_totals();
        TrafficSample {
            at: std::time::Instant::now(),
            bytes_in,
            bytes_out,
        }
    }

    /// Bytes per second (in, out) from `earlier` to `self`.
    fn rates_since(&self, earlier: &TrafficSample) -> (u64, u64) {
        let secs = self.at.duration_since(earlier.at).as_secs_f64();
        if secs < 0.001 {
            return (0, 0);
        }
        let rate = |now: u64, then: u64| (now.saturating_sub(then) as f64 / secs) as u64;
        (
            rate(self.bytes_in, earlier.bytes_in),
            rate(self.bytes_out, earlier.bytes_out),
        )
    }
}

/// Bytes per second in and out, averaged over at least [`RATE_WINDOW`]: the
/// byte totals move once a second (when the shards flush), so a heartbeat-long
/// window would read 0 or double the rate.
#[derive(Default)]
struct TrafficRates {
    since: Option<TrafficSample>,
    per_sec: (u64, u64),
}

/// The shortest window [`TrafficRates`] averages over.
const RATE_WINDOW: Duration = Duration::from_secs(5);

impl TrafficRates {
    /// The rates as of `now` (recomputed once the window has passed).
    fn update(&mut self, now: TrafficSample) -> (u64, u64) {
        match self.since {
            None => self.since = Some(now),
            Some(since) if now.at.duration_since(since.at) >= RATE_WINDOW => {
                self.per_sec = now.rates_since(&since);
                self.since = Some(now);
            }
            Some(_) => {}
        }
        self.per_sec
    }
}

/// Where a join goes.
pub enum Route {
    Local,
    Relay(Box<NodeInfo>),
    /// Refused: the status, the metric's reason label, the text.
    Refuse(StatusCode, &'static str, String),
}

/// This node's limits: `cluster.limits` with the top-level `limit:` section's
/// traffic limits (LiveKit's keys) where those are set.
fn node_limits(config: &Config) -> NodeLimits {
    let cluster = config.cluster.limits;
    NodeLimits {
        num_tracks: match config.limit.num_tracks {
            0 => cluster.num_tracks,
            n => n,
        },
        bytes_per_sec: match config.limit.bytes_per_sec as u64 {
            0 => cluster.bytes_per_sec,
            n => n,
        },
        ..cluster
    }
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
            limits: node_limits(config),
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
            num_cpus: relais_cluster::sysload::num_cpus(),
            traffic: std::sync::Mutex::new(TrafficRates::default()),
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
        let (bytes_in_per_sec, bytes_out_per_sec) = self
            .traffic
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .update(TrafficSample::now());
        let num_cpus = self.num_cpus;
        let load = relais_cluster::sysload::load_avg_1m();
        let stats = NodeStats {
            num_cpus,
            load_avg_1m: load,
            sysload: load / f64::from(num_cpus.max(1)),
            rooms: rooms.len() as u32,
            participants: rooms.iter().map(|r| r.num_participants).sum(),
            tracks: backend.node().published_tracks() as u32,
            subscribed_tracks: backend.node().subscribed_tracks() as u32,
            bytes_in_per_sec,
            bytes_out_per_sec,
            relayed: self.active_relays() as u32,
        };
        let snapshot = LocalSnapshot {
            stats,
            rooms: rooms.into_iter().map(|r| r.name).collect(),
        };
        match self.coordinator.heartbeat(snapshot).await {
            Ok(lost) => {
                for room in lost {
                    match backend.move_room_away(&room).await {
                        Ok(true) => {
                            info!(%room, "room lives on another node: participants moved there")
                        }
                        Ok(false) => {}
                        Err(e) => warn!(%room, error = %e, "cannot move the room's participants"),
                    }
                }
                true
            }
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
                    "placement",
                    format!("room {room} moved to node {}", node.id),
                )
            }
            Ok(Placement::Remote(node)) => Route::Relay(node),
            Err(e) => {
                let reason = match &e {
                    _ if self.coordinator.is_draining() => {
                        debug!(%room, "join refused: draining");
                        "draining"
                    }
                    ClusterError::LimitReached(_) => {
                        debug!(%room, error = %e, "join refused");
                        "node_limit"
                    }
                    _ => {
                        warn!(%room, error = %e, "join refused");
                        "placement"
                    }
                };
                Route::Refuse(StatusCode::SERVICE_UNAVAILABLE, reason, e.to_string())
            }
        }
    }

    /// Serve a join by relaying the signal connection to `node`.
    pub async fn relay(
        self: Arc<Self>,
        ws: Upgrade,
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
            .max_frame_size(Some(max_message_size))
            .read_buffer_size(crate::websocket::READ_BUFFER);
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
                self.coordinator.report_unreachable(&node);
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the node hosting this room is unreachable; retry",
                )
                    .into_response();
            }
            Err(_) => {
                warn!(node = %node.id, address = %node.http_address, "relay connect timed out");
                self.coordinator.report_unreachable(&node);
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
        ws.on_upgrade(max_message_size, move |client| async move {
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
async fn pump(client: Socket, upstream: Upstream) {
    let (mut to_client, mut from_client) = client.split();
    let (mut to_node, mut from_node) = upstream.split();
    loop {
        tokio::select! {
            m = from_client.next() => match m {
                Some(Ok(m @ (Message::Binary(_) | Message::Text(_)))) => {
                    if to_node.send(m).await.is_err() { break; }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(m @ Message::Close(_))) => {
                    let _ = to_node.send(m).await;
                    break;
                }
                Some(Err(_)) | None => {
                    let _ = to_node.close().await;
                    break;
                }
            },
            m = from_node.next() => match m {
                Some(Ok(m @ (Message::Binary(_) | Message::Text(_)))) => {
                    if websocket::send(&mut to_client, m).await.is_err() { break; }
                }
                Some(Ok(m @ Message::Close(_))) => {
                    let _ = to_client.send(m).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traffic_rates_average_over_the_window() {
        let t0 = std::time::Instant::now();
        let at = |secs: u64, bytes_in: u64, bytes_out: u64| TrafficSample {
            at: t0 + Duration::from_secs(secs),
            bytes_in,
            bytes_out,
        };
        let mut rates = TrafficRates::default();
        assert_eq!(rates.update(at(0, 1_000, 0)), (0, 0));
        // Within the window: nothing new yet, even though the totals moved.
        assert_eq!(rates.update(at(1, 9_000, 4_000)), (0, 0));
        assert_eq!(rates.update(at(5, 51_000, 20_000)), (10_000, 4_000));
        // Kept until the next window ends; totals never going back is not trusted.
        assert_eq!(rates.update(at(7, 0, 0)), (10_000, 4_000));
        assert_eq!(rates.update(at(10, 0, 20_000)), (0, 0));
    }
}
