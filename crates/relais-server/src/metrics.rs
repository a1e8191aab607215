//! Metrics: the names Relais exports (LiveKit's where a LiveKit dashboard looks
//! for them, `relais_*` for its own), the Prometheus exporter behind
//! `prometheus.port`, and the per-shard collector that turns the media core's
//! plain counters into metrics once a second.
//!
//! Everything goes through the `metrics` facade. The media path never calls it:
//! rooms count into `u64` fields ([`relais_media::MediaStats`]) and each shard
//! thread hands the deltas over in [`ShardMetrics::flush`]. The list of names
//! with their meaning is in `docs/operations.md`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::Engine;
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use relais_media::stats::{Direction, DropReason, Kind};
use relais_media::{MediaStats, ShardGauges};
use tracing::{info, warn};

use crate::config::PrometheusConfig;
use crate::fan_out::FanOutCounts;
use crate::udp::Sent;

// ---------------------------------------------------------------- LiveKit's names

/// Gauge: rooms open on this node.
pub const ROOM_TOTAL: &str = "livekit_room_total";
/// Histogram (seconds): how long rooms lived, observed when they close.
pub const ROOM_DURATION_SECONDS: &str = "livekit_room_duration_seconds";
/// Gauge: participants in the rooms of this node.
pub const PARTICIPANT_TOTAL: &str = "livekit_participant_total";
/// Counter `{state}`: join attempts by outcome: `signal_connected` (admitted
/// to a room), `signal_failed` (refused), `rtc_connected` (media connected,
/// participant ACTIVE).
pub const PARTICIPANT_JOIN_TOTAL: &str = "livekit_participant_join_total";
/// Gauge `{kind}`: published tracks (`AUDIO`, `VIDEO`).
pub const TRACK_PUBLISHED_TOTAL: &str = "livekit_track_published_total";
/// Gauge `{kind}`: subscriptions, one per subscriber and track.
pub const TRACK_SUBSCRIBED_TOTAL: &str = "livekit_track_subscribed_total";
/// Counter `{direction, transmission, kind}`: RTP packets.
pub const PACKET_TOTAL: &str = "livekit_packet_total";
/// Counter `{direction, transmission, kind}`: RTP bytes (header and payload).
pub const PACKET_BYTES: &str = "livekit_packet_bytes";
/// Counter `{direction}`: NACKs sent to publishers (`incoming`) and received
/// from subscribers (`outgoing`).
pub const NACK_TOTAL: &str = "livekit_nack_total";
/// Counter `{direction}`: PLIs, as [`NACK_TOTAL`].
pub const PLI_TOTAL: &str = "livekit_pli_total";
/// Counter `{direction}`: FIRs, as [`NACK_TOTAL`].
pub const FIR_TOTAL: &str = "livekit_fir_total";
/// Counter `{direction, source, type}`: RTP packets lost.
pub const PACKET_LOSS_TOTAL: &str = "livekit_packet_loss_total";
/// Histogram `{direction, source, type}` (µs): interarrival jitter per stream.
pub const JITTER_US: &str = "livekit_jitter_us";
/// Histogram `{direction, source, type}` (ms): round-trip time per stream.
pub const RTT_MS: &str = "livekit_rtt_ms";
/// Gauge (ns): mean time from a media packet's arrival to sending its last
/// copy, over the last second.
pub const FORWARD_LATENCY_NS: &str = "livekit_forward_latency_ns";
/// Histogram (ms): from a media packet's arrival (the kernel's stamp) to its
/// last copy handed to the kernel; one sample per forwarded audio packet and
/// per video frame (its last packet: the ones before it leave no later).
pub const FORWARD_LATENCY_MS: &str = "relais_forward_latency_ms";
/// Histogram (ms): from the `/rtc` request to the join response queued.
pub const SESSION_JOIN_LATENCY_MS: &str = "livekit_session_join_latency_ms";
/// Counter `{service, method, status, code}`: Twirp requests by status family
/// (`200`, `4xx`, `5xx`) and Twirp error code.
pub const TWIRP_REQUEST_STATUS: &str = "livekit_node_twirp_request_status";

// ---------------------------------------------------------------- Relais's own

/// Histogram `{shard}` (ms): how long a shard worked each time before it went
/// back to its sockets — a round of datagrams, commands and timers, or its
/// once-a-second housekeeping. A datagram that arrives meanwhile waits for
/// the rest of it; rounds of several milliseconds make a forwarding latency
/// tail.
pub const SHARD_ROUND_MS: &str = "relais_shard_round_ms";
/// Counter `{shard}` (µs): time a shard thread spent working (not waiting).
/// `rate(...[1m]) / 1e6` is the thread's utilisation, 0 to 1.
pub const SHARD_BUSY_MICROSECONDS: &str = "relais_shard_busy_microseconds_total";
/// Counter `{shard}` (µs): time a shard thread was ready to work but waited
/// for its CPU, which another thread or process had: what other work on the
/// node's cores takes from the media (a forwarding latency tail).
pub const SHARD_RUN_DELAY_MICROSECONDS: &str = "relais_shard_run_delay_microseconds_total";
/// Gauge `{shard}`: 1 while the shard sheds load (every subscriber gets the
/// lowest simulcast layer, see `shedding.rs`), else 0.
pub const SHARD_SHEDDING: &str = "relais_shard_shedding";
/// Gauge `{shard}`: 1 while the shard takes joins; 0 while it sheds load or
/// was busier than `limit.shard_busy_fraction` over the last second.
pub const SHARD_ACCEPTING_JOINS: &str = "relais_shard_accepting_joins";
/// Gauge `{shard}`: rooms the shard hosts (new rooms go to the shard with the
/// most to spare, see `room_directory.rs`).
pub const SHARD_ROOMS: &str = "relais_shard_rooms";
/// Gauge: streams this node sends itself (`rtc.direct_audio`,
/// `rtc.direct_video`), one per subscription once media flows; each video one
/// keeps its last 256 packets for NACKs.
pub const DIRECT_STREAMS: &str = "relais_direct_streams";
/// Counter: `recv` system calls on the media UDP socket.
pub const UDP_RECEIVE_SYSCALLS: &str = "relais_udp_receive_syscalls_total";
/// Counter: datagrams those calls returned (÷ syscalls = datagrams per syscall).
pub const UDP_DATAGRAMS_RECEIVED: &str = "relais_udp_datagrams_received_total";
/// Counter: bytes of received datagrams.
pub const UDP_BYTES_RECEIVED: &str = "relais_udp_bytes_received_total";
/// Counter: `send` system calls on the media UDP socket.
pub const UDP_SEND_SYSCALLS: &str = "relais_udp_send_syscalls_total";
/// Counter: datagrams those calls sent.
pub const UDP_DATAGRAMS_SENT: &str = "relais_udp_datagrams_sent_total";
/// Counter: of those, datagrams sent within a GSO message of several.
pub const UDP_DATAGRAMS_SEGMENTED: &str = "relais_udp_datagrams_segmented_total";
/// Counter: bytes of sent datagrams.
pub const UDP_BYTES_SENT: &str = "relais_udp_bytes_sent_total";
/// Counter: sessions driven in chunks, on a shard thread and the fan-out
/// helpers at once (a round with `rtc.fan_out_min_sessions` or more due).
pub const FAN_OUT_SESSIONS: &str = "relais_fan_out_sessions_total";
/// Counter `{kind}`: forwarded RTP packets Relais protected and sent itself,
/// not through str0m (`rtc.direct_audio`, `rtc.direct_video`).
pub const DIRECT_EGRESS_PACKETS: &str = "relais_direct_egress_packets_total";
/// Counter `{kind}`: received RTP packets Relais opened itself, not through
/// str0m (`rtc.direct_ingress`).
pub const DIRECT_INGRESS_PACKETS: &str = "relais_direct_ingress_packets_total";
/// Counter: of the directly sent video, packets Relais sent again to answer a
/// subscriber's NACK (`rtc.direct_video`).
pub const DIRECT_RESENT_PACKETS: &str = "relais_direct_resent_packets_total";
/// Counter: subscribers' compound RTCP packets Relais read itself, not
/// through str0m (reports and feedback on the streams it sends).
pub const SUBSCRIBER_REPORTS_READ: &str = "relais_subscriber_reports_read_total";
/// Counter: of those chunks, the ones a helper thread drove.
pub const FAN_OUT_HELPER_CHUNKS: &str = "relais_fan_out_helper_chunks_total";
/// Counter `{reason}`: packets dropped, see [`DropReason`] and the `udp_*` reasons.
pub const PACKETS_DROPPED: &str = "relais_packets_dropped_total";
/// Counter `{reason}`: joins refused before reaching a room or by it.
pub const JOIN_REFUSED: &str = "relais_join_refused_total";
/// Counter: ICE-TCP connections accepted on `rtc.tcp_port`.
pub const ICE_TCP_CONNECTIONS: &str = "relais_ice_tcp_connections_total";
/// Gauge: ICE-TCP connections open now.
pub const ICE_TCP_OPEN: &str = "relais_ice_tcp_open_connections";
/// Counter `{reason}`: ICE-TCP connections closed or refused, see [`crate::tcp`].
pub const ICE_TCP_CLOSED: &str = "relais_ice_tcp_closed_total";
/// Gauge: 1 while the node is ready (`/readyz` 200), else 0.
pub const NODE_READY: &str = "relais_node_ready";
/// Gauge: 1 once the node drains (SIGTERM received), else 0.
pub const NODE_DRAINING: &str = "relais_node_draining";

/// Drop reasons counted outside the media core.
pub const DROP_UDP_UNROUTABLE: &str = "udp_unroutable";
pub const DROP_UDP_SEND_ERROR: &str = "udp_send_error";
/// The owning shard's datagram queue was full (the shard is not keeping up).
pub const DROP_SHARD_QUEUE_FULL: &str = "shard_queue_full";
/// RTP or RTCP that waited in its shard's queue longer than a listener would:
/// the shard fell behind and skips it rather than forward it late.
pub const DROP_STALE_MEDIA: &str = "stale_media";
/// An ICE-TCP connection's write queue was full (the peer reads too slowly).
pub const DROP_TCP_WRITE_QUEUE_FULL: &str = "tcp_write_queue_full";
/// A packet for an ICE-TCP peer whose connection is gone.
pub const DROP_TCP_NOT_CONNECTED: &str = "tcp_not_connected";

/// LiveKit's `node_type` for a media server.
pub const NODE_TYPE: &str = "SERVER";

/// `transmission` label of what Relais forwards (packets sent again on a NACK,
/// by Relais's direct egress or by str0m, are not counted apart).
const TRANSMISSION_INITIAL: &str = "initial";

/// Buckets as LiveKit's (`pkg/telemetry/prometheus`), so dashboards' quantiles match.
const ROOM_DURATION_BUCKETS: &[f64] = &[
    5.0, 10.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 18000.0, 36000.0,
];
const JITTER_BUCKETS: &[f64] = &[
    1000.0, 10000.0, 30000.0, 50000.0, 70000.0, 100000.0, 300000.0, 600000.0, 1000000.0,
];
const RTT_BUCKETS: &[f64] = &[
    50.0, 100.0, 150.0, 200.0, 250.0, 500.0, 750.0, 1000.0, 5000.0, 10000.0,
];
/// Fine below 5 ms: the forwarding target is a p99 under 5 ms.
const FORWARD_LATENCY_BUCKETS: &[f64] = &[
    0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0, 300.0, 1000.0,
];
/// Fine from 50 µs (a light round) to the 5 ms of the latency target.
const SHARD_ROUND_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0, 300.0,
];
const JOIN_LATENCY_BUCKETS: &[f64] = &[
    10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
];

/// Install the global recorder with `node_id`/`node_type` on every series and
/// describe every metric. Call once, before the shards start.
pub fn install(node_id: &str) -> anyhow::Result<PrometheusHandle> {
    let mut builder = PrometheusBuilder::new()
        .add_global_label("node_id", node_id)
        .add_global_label("node_type", NODE_TYPE);
    for (name, buckets) in [
        (ROOM_DURATION_SECONDS, ROOM_DURATION_BUCKETS),
        (JITTER_US, JITTER_BUCKETS),
        (RTT_MS, RTT_BUCKETS),
        (SESSION_JOIN_LATENCY_MS, JOIN_LATENCY_BUCKETS),
        (FORWARD_LATENCY_MS, FORWARD_LATENCY_BUCKETS),
        (SHARD_ROUND_MS, SHARD_ROUND_BUCKETS),
    ] {
        builder = builder.set_buckets_for_metric(Matcher::Full(name.to_string()), buckets)?;
    }
    let handle = builder
        .install_recorder()
        .context("installing the metrics recorder")?;
    describe();
    Ok(handle)
}

fn describe() {
    describe_gauge!(ROOM_TOTAL, "Rooms open on this node");
    describe_histogram!(
        ROOM_DURATION_SECONDS,
        Unit::Seconds,
        "How long closed rooms lived"
    );
    describe_gauge!(PARTICIPANT_TOTAL, "Participants in this node's rooms");
    describe_counter!(
        PARTICIPANT_JOIN_TOTAL,
        "Join attempts by state: signal_connected, signal_failed, rtc_connected"
    );
    describe_gauge!(TRACK_PUBLISHED_TOTAL, "Published tracks by kind");
    describe_gauge!(
        TRACK_SUBSCRIBED_TOTAL,
        "Track subscriptions (subscriber x track) by kind"
    );
    describe_counter!(
        PACKET_TOTAL,
        "RTP packets by direction (incoming from publishers, outgoing to subscribers) and kind"
    );
    describe_counter!(
        PACKET_BYTES,
        Unit::Bytes,
        "RTP bytes (header + payload) by direction and kind"
    );
    describe_counter!(
        NACK_TOTAL,
        "NACKs sent to publishers (incoming) or received from subscribers (outgoing)"
    );
    describe_counter!(
        PLI_TOTAL,
        "PLIs sent to publishers (incoming) or received from subscribers (outgoing)"
    );
    describe_counter!(
        FIR_TOTAL,
        "FIRs sent to publishers (incoming) or received from subscribers (outgoing)"
    );
    describe_counter!(PACKET_LOSS_TOTAL, "RTP packets lost, per stream direction");
    describe_histogram!(JITTER_US, "Interarrival jitter per stream, microseconds");
    describe_histogram!(RTT_MS, "Round-trip time per stream, milliseconds");
    describe_gauge!(
        FORWARD_LATENCY_NS,
        "Mean time from a media packet's arrival to sending its last copy, last second, ns"
    );
    describe_histogram!(
        FORWARD_LATENCY_MS,
        "Time from a media packet's arrival to its last copy handed to the kernel, milliseconds"
    );
    describe_histogram!(
        SESSION_JOIN_LATENCY_MS,
        "Time from the /rtc request to the join response, milliseconds"
    );
    describe_counter!(
        TWIRP_REQUEST_STATUS,
        "Twirp requests by service, method, status family and error code"
    );
    describe_histogram!(
        SHARD_ROUND_MS,
        Unit::Milliseconds,
        "How long each shard worked each time before it went back to its sockets"
    );
    describe_counter!(
        SHARD_BUSY_MICROSECONDS,
        Unit::Microseconds,
        "Time each shard thread spent working rather than waiting"
    );
    describe_counter!(
        SHARD_RUN_DELAY_MICROSECONDS,
        Unit::Microseconds,
        "Time each shard thread was ready to work but waited for its CPU"
    );
    describe_gauge!(
        SHARD_SHEDDING,
        "1 while the shard falls behind: every subscriber gets the lowest simulcast layer"
    );
    describe_gauge!(SHARD_ROOMS, "Rooms each shard hosts");
    describe_gauge!(
        DIRECT_STREAMS,
        "Streams the node protects and sends itself, one per subscription carrying media"
    );
    describe_gauge!(
        SHARD_ACCEPTING_JOINS,
        "1 while the shard takes joins; 0 while it sheds load or is busier than limit.shard_busy_fraction"
    );
    describe_counter!(
        UDP_RECEIVE_SYSCALLS,
        "recv system calls on the media socket"
    );
    describe_counter!(
        UDP_DATAGRAMS_RECEIVED,
        "Datagrams received on the media socket"
    );
    describe_counter!(
        UDP_BYTES_RECEIVED,
        Unit::Bytes,
        "Bytes received on the media socket"
    );
    describe_counter!(UDP_SEND_SYSCALLS, "send system calls on the media socket");
    describe_counter!(UDP_DATAGRAMS_SENT, "Datagrams sent on the media socket");
    describe_counter!(
        FAN_OUT_SESSIONS,
        "Sessions driven in chunks, on a shard thread and the fan-out helpers at once"
    );
    describe_counter!(
        DIRECT_EGRESS_PACKETS,
        "Forwarded RTP packets Relais protected and sent itself (rtc.direct_audio, rtc.direct_video)"
    );
    describe_counter!(
        DIRECT_INGRESS_PACKETS,
        "Received RTP packets Relais opened itself (rtc.direct_ingress)"
    );
    describe_counter!(
        DIRECT_RESENT_PACKETS,
        "Directly sent video packets Relais sent again for a subscriber's NACK (rtc.direct_video)"
    );
    describe_counter!(
        SUBSCRIBER_REPORTS_READ,
        "Subscribers' compound RTCP packets Relais read itself, not through str0m"
    );
    describe_counter!(
        FAN_OUT_HELPER_CHUNKS,
        "Chunks of sessions a fan-out helper thread drove"
    );
    describe_counter!(
        UDP_DATAGRAMS_SEGMENTED,
        "Datagrams sent within a GSO message of several (same destination, same size)"
    );
    describe_counter!(
        UDP_BYTES_SENT,
        Unit::Bytes,
        "Bytes sent on the media socket"
    );
    describe_counter!(PACKETS_DROPPED, "Packets dropped, by reason");
    describe_counter!(JOIN_REFUSED, "Joins refused, by reason");
    describe_counter!(ICE_TCP_CONNECTIONS, "ICE-TCP connections accepted");
    describe_gauge!(ICE_TCP_OPEN, "ICE-TCP connections open");
    describe_counter!(
        ICE_TCP_CLOSED,
        "ICE-TCP connections closed or refused, by reason"
    );
    describe_gauge!(NODE_READY, "1 while the node accepts new rooms and joins");
    describe_gauge!(NODE_DRAINING, "1 once the node is draining");
    // Pre-create the series dashboards expect even before the first call.
    for g in [
        ROOM_TOTAL,
        PARTICIPANT_TOTAL,
        FORWARD_LATENCY_NS,
        ICE_TCP_OPEN,
    ] {
        gauge!(g).set(0.0);
    }
    for kind in Kind::ALL {
        gauge!(TRACK_PUBLISHED_TOTAL, "kind" => kind.track_type()).increment(0.0);
        gauge!(TRACK_SUBSCRIBED_TOTAL, "kind" => kind.track_type()).increment(0.0);
    }
    for state in ["signal_connected", "signal_failed", "rtc_connected"] {
        counter!(PARTICIPANT_JOIN_TOTAL, "state" => state).absolute(0);
    }
}

/// Serve `/metrics` (Prometheus text format) on `addr`, behind basic auth when
/// `prometheus.username`/`password` are set. Returns once bound.
pub async fn serve(
    addr: SocketAddr,
    handle: PrometheusHandle,
    config: &PrometheusConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let auth = BasicAuth::new(&config.username, &config.password);
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    let app = Router::new()
        .route("/metrics", get(render))
        .with_state((handle, auth));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the prometheus port {addr}"))?;
    info!(%addr, "prometheus metrics on /metrics");
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            warn!(error = %e, "prometheus listener failed");
        }
    }))
}

/// Expected `Authorization` header value, if any. `Debug` never shows it.
#[derive(Clone)]
struct BasicAuth(Option<String>);

impl BasicAuth {
    fn new(username: &str, password: &str) -> Self {
        if username.is_empty() && password.is_empty() {
            return BasicAuth(None);
        }
        let token =
            base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
        BasicAuth(Some(format!("Basic {token}")))
    }

    fn allows(&self, headers: &HeaderMap) -> bool {
        let Some(expected) = &self.0 else {
            return true;
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        constant_time_eq(given, expected.as_bytes())
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn render(
    State((handle, auth)): State<(PrometheusHandle, BasicAuth)>,
    headers: HeaderMap,
) -> Response {
    if !auth.allows(&headers) {
        let mut response = (StatusCode::UNAUTHORIZED, "unauthorized").into_response();
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"metrics\""),
        );
        return response;
    }
    let mut response = handle.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

// ---------------------------------------------------------------- Twirp

/// Middleware counting `/twirp/<package>.<Service>/<Method>` requests in
/// [`TWIRP_REQUEST_STATUS`], as LiveKit does: status `200`, `4xx` or `5xx`,
/// and the Twirp error code of an error body.
pub async fn twirp_status(request: Request, next: Next) -> Response {
    let Some((service, method)) = twirp_route(request.uri().path()) else {
        return next.run(request).await;
    };
    let response = next.run(request).await;
    let status = response.status();
    let family = match status.as_u16() {
        400..=499 => "4xx".to_string(),
        500..=599 => "5xx".to_string(),
        s => s.to_string(),
    };
    if status.is_success() {
        counter!(TWIRP_REQUEST_STATUS, "service" => service, "method" => method,
            "status" => family, "code" => "")
        .increment(1);
        return response;
    }
    // Error bodies are small JSON objects: read the code, then pass the body on.
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let code = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("code").and_then(|c| c.as_str()).map(twirp_code))
        .unwrap_or("");
    counter!(TWIRP_REQUEST_STATUS, "service" => service, "method" => method,
        "status" => family, "code" => code)
    .increment(1);
    Response::from_parts(parts, Body::from(bytes))
}

/// `("RoomService", "ListRooms")` from `/twirp/livekit.RoomService/ListRooms`.
/// Unknown names are folded into `other` so clients cannot mint series.
fn twirp_route(path: &str) -> Option<(&'static str, &'static str)> {
    let rest = path.strip_prefix("/twirp/")?;
    let (service, method) = rest.split_once('/')?;
    let service = service.rsplit('.').next().unwrap_or(service);
    const SERVICES: &[&str] = &[
        "RoomService",
        "Egress",
        "Ingress",
        "SIP",
        "AgentDispatchService",
    ];
    use relais_control::room_service::twirp::METHODS;
    let service = SERVICES
        .iter()
        .find(|s| **s == service)
        .copied()
        .unwrap_or("other");
    let method = METHODS
        .iter()
        .find(|m| **m == method)
        .copied()
        .unwrap_or("other");
    Some((service, method))
}

fn twirp_code(code: &str) -> &'static str {
    const CODES: &[&str] = &[
        "canceled",
        "unknown",
        "invalid_argument",
        "malformed",
        "deadline_exceeded",
        "not_found",
        "bad_route",
        "already_exists",
        "permission_denied",
        "unauthenticated",
        "resource_exhausted",
        "failed_precondition",
        "aborted",
        "out_of_range",
        "unimplemented",
        "internal",
        "unavailable",
        "dataloss",
    ];
    CODES
        .iter()
        .find(|c| **c == code)
        .copied()
        .unwrap_or("other")
}

// ---------------------------------------------------------------- joins

/// A join admitted to a room, and how long it took from the `/rtc` request.
pub fn join_admitted(started: Instant) {
    counter!(PARTICIPANT_JOIN_TOTAL, "state" => "signal_connected").increment(1);
    metrics::histogram!(SESSION_JOIN_LATENCY_MS).record(started.elapsed().as_secs_f64() * 1000.0);
}

/// A join refused; `reason` is a fixed label value.
pub fn join_refused(reason: &'static str) {
    counter!(PARTICIPANT_JOIN_TOTAL, "state" => "signal_failed").increment(1);
    counter!(JOIN_REFUSED, "reason" => reason).increment(1);
}

/// Room lifecycle metrics that come with room events.
pub fn room_event(event: &relais_media::RoomEvent) {
    if let relais_media::RoomEvent::RoomFinished(room) = event {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let lived = (now_ms - room.creation_time_ms).max(0) as f64 / 1000.0;
        metrics::histogram!(ROOM_DURATION_SECONDS).record(lived);
    }
}

// ---------------------------------------------------------------- forward latency

/// Sums the shards add their forward-latency samples to, once a second each;
/// [`publish_forward_latency`] turns them into the node's gauge.
static FORWARD_LATENCY_SUM_NS: AtomicU64 = AtomicU64::new(0);
static FORWARD_LATENCY_COUNT: AtomicU64 = AtomicU64::new(0);

/// Set [`FORWARD_LATENCY_NS`] to the mean since the previous call (kept when
/// nothing was forwarded). Called once a second.
pub fn publish_forward_latency() {
    let sum = FORWARD_LATENCY_SUM_NS.swap(0, Ordering::Relaxed);
    let count = FORWARD_LATENCY_COUNT.swap(0, Ordering::Relaxed);
    if count > 0 {
        gauge!(FORWARD_LATENCY_NS).set(sum as f64 / count as f64);
    }
}

// ---------------------------------------------------------------- node traffic

/// UDP bytes received and sent since start, added once a second by the
/// receive thread and the shards; the cluster heartbeat turns them into rates.
static UDP_BYTES_IN_TOTAL: AtomicU64 = AtomicU64::new(0);
static UDP_BYTES_OUT_TOTAL: AtomicU64 = AtomicU64::new(0);

/// UDP bytes (received, sent) since start, as of the last flushes.
pub fn udp_bytes_totals() -> (u64, u64) {
    (
        UDP_BYTES_IN_TOTAL.load(Ordering::Relaxed),
        UDP_BYTES_OUT_TOTAL.load(Ordering::Relaxed),
    )
}

// ---------------------------------------------------------------- shard collector

/// One shard thread's counters that are not the media core's, and what it
/// last reported of its gauges. Owned by the thread: no sharing, no atomics.
pub struct ShardMetrics {
    shard: String,
    last_flush: Instant,
    gauges: ShardGauges,
    /// Time spent working since the last flush.
    busy: Duration,
    pub(crate) sent: Sent,
    fan_out_sessions: u64,
    fan_out_helper_chunks: u64,
    pub tcp_write_queue_full: u64,
    pub tcp_not_connected: u64,
    pub stale_media: u64,
    /// Sum and count of forward latencies since the last flush (the gauge).
    pub(crate) latency_sum_ns: u64,
    pub(crate) latency_count: u64,
    /// [`FORWARD_LATENCY_MS`]: one record per packet into the node's
    /// histogram, shared by every shard, was a contended cache line per packet
    /// and most of the shard's metrics work at light load.
    forward_latency: FlushedHistogram,
    /// [`SHARD_ROUND_MS`].
    rounds: FlushedHistogram,
    /// The thread's run delay as last read, for [`SHARD_RUN_DELAY_MICROSECONDS`].
    run_delay: Duration,
}

/// A histogram a shard thread fills by bucket (sum in ms, count) and hands to
/// the recorder at its flush, each bucket's values as their mean, as many
/// times: the exposition is the one a record per value gave.
struct FlushedHistogram {
    bounds: &'static [f64],
    /// One per bound, and one for the values above the last.
    buckets: Vec<(f64, u64)>,
    histogram: metrics::Histogram,
}

impl FlushedHistogram {
    fn new(bounds: &'static [f64], histogram: metrics::Histogram) -> Self {
        FlushedHistogram {
            bounds,
            buckets: vec![(0.0, 0); bounds.len() + 1],
            histogram,
        }
    }

    fn record(&mut self, ms: f64) {
        // Prometheus's buckets hold the values up to their bound (`le`).
        let bucket = self.bounds.partition_point(|&bound| bound < ms);
        let (sum, count) = &mut self.buckets[bucket];
        *sum += ms;
        *count += 1;
    }

    fn flush(&mut self) {
        for (i, (sum, count)) in self.buckets.iter_mut().enumerate() {
            let (sum, count) = (std::mem::take(sum), std::mem::take(count));
            if count == 0 {
                continue;
            }
            let lower = i.checked_sub(1).map_or(f64::MIN, |j| self.bounds[j]);
            let upper = self.bounds.get(i).copied().unwrap_or(f64::MAX);
            // Rounding must not move the mean out of its bucket.
            let mean = (sum / count as f64).clamp(lower.next_up(), upper);
            self.histogram.record_many(mean, count as usize);
        }
    }
}

/// How often shard threads hand their counters to the recorder.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

impl ShardMetrics {
    pub fn new(shard: usize, now: Instant) -> Self {
        ShardMetrics {
            last_flush: now,
            gauges: ShardGauges::default(),
            busy: Duration::ZERO,
            sent: Sent::default(),
            fan_out_sessions: 0,
            fan_out_helper_chunks: 0,
            tcp_write_queue_full: 0,
            tcp_not_connected: 0,
            stale_media: 0,
            latency_sum_ns: 0,
            latency_count: 0,
            forward_latency: FlushedHistogram::new(
                FORWARD_LATENCY_BUCKETS,
                metrics::histogram!(FORWARD_LATENCY_MS),
            ),
            rounds: FlushedHistogram::new(
                SHARD_ROUND_BUCKETS,
                metrics::histogram!(SHARD_ROUND_MS, "shard" => shard.to_string()),
            ),
            shard: shard.to_string(),
            run_delay: Duration::ZERO,
        }
    }

    /// The shard thread's run delay since it started (`thread_class::run_delay`):
    /// what grew since the last reading is counted.
    pub fn waited_for_cpu(&mut self, since_start: Duration) {
        let grown = since_start.saturating_sub(self.run_delay);
        self.run_delay = self.run_delay.max(since_start);
        counter!(SHARD_RUN_DELAY_MICROSECONDS, "shard" => self.shard.clone())
            .increment(grown.as_micros() as u64);
    }

    /// What a `sendmmsg` (or several) did.
    pub fn sent(&mut self, sent: Sent) {
        self.sent += sent;
    }

    /// What the shard's session driver did on its threads ([`crate::fan_out`]).
    pub fn fanned_out(&mut self, counts: FanOutCounts) {
        self.sent += counts.sent;
        self.fan_out_sessions += counts.sessions;
        self.fan_out_helper_chunks += counts.helper_chunks;
    }

    /// A media packet's copies have all been handed to the kernel, `latency`
    /// after it arrived.
    pub fn forwarded(&mut self, latency: Duration) {
        self.latency_sum_ns += latency.as_nanos() as u64;
        self.latency_count += 1;
        self.forward_latency.record(latency.as_secs_f64() * 1000.0);
    }

    /// The shard worked for `work` before going back to its sockets.
    pub fn worked(&mut self, work: Duration) {
        self.busy += work;
        self.rounds.record(work.as_secs_f64() * 1000.0);
    }

    /// The fraction of the time since the last flush the shard spent working.
    pub fn busy_fraction(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.last_flush).as_secs_f64();
        if elapsed > 0.0 {
            (self.busy.as_secs_f64() / elapsed).min(1.0)
        } else {
            0.0
        }
    }

    /// True once a second: time to call [`ShardMetrics::flush`].
    pub fn due(&self, now: Instant) -> bool {
        now.duration_since(self.last_flush) >= FLUSH_INTERVAL
    }

    /// Hand everything counted since the last flush to the recorder. Returns
    /// the shard's gauges (for readiness and drain).
    pub fn flush(&mut self, now: Instant, stats: MediaStats, gauges: ShardGauges) -> ShardGauges {
        self.last_flush = now;
        self.flush_gauges(gauges);
        flush_media(&stats);
        let busy = std::mem::take(&mut self.busy);
        counter!(SHARD_BUSY_MICROSECONDS, "shard" => self.shard.clone())
            .increment(busy.as_micros() as u64);
        let mut sent = std::mem::take(&mut self.sent);
        add_if(UDP_SEND_SYSCALLS, sent.syscalls);
        add_if(UDP_DATAGRAMS_SENT, sent.datagrams);
        add_if(UDP_DATAGRAMS_SEGMENTED, sent.segmented);
        UDP_BYTES_OUT_TOTAL.fetch_add(sent.bytes, Ordering::Relaxed);
        add_if(UDP_BYTES_SENT, sent.bytes);
        add_if(FAN_OUT_SESSIONS, std::mem::take(&mut self.fan_out_sessions));
        add_if(
            FAN_OUT_HELPER_CHUNKS,
            std::mem::take(&mut self.fan_out_helper_chunks),
        );
        for (reason, n) in [
            (DROP_UDP_SEND_ERROR, &mut sent.dropped),
            (DROP_TCP_WRITE_QUEUE_FULL, &mut self.tcp_write_queue_full),
            (DROP_TCP_NOT_CONNECTED, &mut self.tcp_not_connected),
            (DROP_STALE_MEDIA, &mut self.stale_media),
        ] {
            let n = std::mem::take(n);
            if n > 0 {
                counter!(PACKETS_DROPPED, "reason" => reason).increment(n);
            }
        }
        self.forward_latency.flush();
        self.rounds.flush();
        FORWARD_LATENCY_SUM_NS
            .fetch_add(std::mem::take(&mut self.latency_sum_ns), Ordering::Relaxed);
        FORWARD_LATENCY_COUNT.fetch_add(std::mem::take(&mut self.latency_count), Ordering::Relaxed);
        gauges
    }

    /// Node-wide gauges are sums over shards: each shard adds its change.
    fn flush_gauges(&mut self, new: ShardGauges) {
        let old = std::mem::replace(&mut self.gauges, new);
        let delta = |a: u64, b: u64| b as f64 - a as f64;
        if new.rooms != old.rooms {
            gauge!(ROOM_TOTAL).increment(delta(old.rooms, new.rooms));
            gauge!(SHARD_ROOMS, "shard" => self.shard.clone()).set(new.rooms as f64);
        }
        if new.participants != old.participants {
            gauge!(PARTICIPANT_TOTAL).increment(delta(old.participants, new.participants));
        }
        if new.direct_streams != old.direct_streams {
            gauge!(DIRECT_STREAMS).increment(delta(old.direct_streams, new.direct_streams));
        }
        for kind in Kind::ALL {
            let k = kind as usize;
            if new.tracks_published[k] != old.tracks_published[k] {
                gauge!(TRACK_PUBLISHED_TOTAL, "kind" => kind.track_type())
                    .increment(delta(old.tracks_published[k], new.tracks_published[k]));
            }
            if new.tracks_subscribed[k] != old.tracks_subscribed[k] {
                gauge!(TRACK_SUBSCRIBED_TOTAL, "kind" => kind.track_type())
                    .increment(delta(old.tracks_subscribed[k], new.tracks_subscribed[k]));
            }
        }
    }
}

fn add_if(name: &'static str, n: u64) {
    if n > 0 {
        counter!(name).increment(n);
    }
}

fn flush_media(stats: &MediaStats) {
    for kind in Kind::ALL {
        let k = kind as usize;
        let t = kind.track_type();
        for (direction, packets, bytes) in [
            (Direction::Incoming, stats.packets_in[k], stats.bytes_in[k]),
            (
                Direction::Outgoing,
                stats.packets_out[k],
                stats.bytes_out[k],
            ),
        ] {
            if packets > 0 {
                let labels = [
                    ("direction", direction.label()),
                    ("transmission", TRANSMISSION_INITIAL),
                    ("kind", t),
                ];
                counter!(PACKET_TOTAL, &labels).increment(packets);
                counter!(PACKET_BYTES, &labels).increment(bytes);
            }
        }
        if stats.direct_out[k] > 0 {
            counter!(DIRECT_EGRESS_PACKETS, "kind" => t).increment(stats.direct_out[k]);
        }
        if stats.direct_in[k] > 0 {
            counter!(DIRECT_INGRESS_PACKETS, "kind" => t).increment(stats.direct_in[k]);
        }
    }
    for direction in Direction::ALL {
        let d = direction as usize;
        for (name, n) in [
            (NACK_TOTAL, stats.nacks[d]),
            (PLI_TOTAL, stats.plis[d]),
            (FIR_TOTAL, stats.firs[d]),
        ] {
            if n > 0 {
                counter!(name, "direction" => direction.label()).increment(n);
            }
        }
    }
    for reason in DropReason::ALL {
        let n = stats.dropped[reason as usize];
        if n > 0 {
            counter!(PACKETS_DROPPED, "reason" => reason.label()).increment(n);
        }
    }
    if stats.direct_resent > 0 {
        counter!(DIRECT_RESENT_PACKETS).increment(stats.direct_resent);
    }
    if stats.reports_read > 0 {
        counter!(SUBSCRIBER_REPORTS_READ).increment(stats.reports_read);
    }
    if stats.rtc_connected > 0 {
        counter!(PARTICIPANT_JOIN_TOTAL, "state" => "rtc_connected").increment(stats.rtc_connected);
    }
    for s in &stats.samples {
        let labels = [
            ("direction", s.direction.label()),
            ("source", s.source_label()),
            ("type", s.kind.track_type()),
        ];
        if s.lost > 0 {
            counter!(PACKET_LOSS_TOTAL, &labels).increment(s.lost);
        }
        if let Some(j) = s.jitter_us {
            metrics::histogram!(JITTER_US, &labels).record(j);
        }
        if let Some(r) = s.rtt_ms.filter(|r| *r > 0.0) {
            metrics::histogram!(RTT_MS, &labels).record(r);
        }
    }
}

/// The UDP receive thread's counters, flushed once a second.
pub struct ReceiveMetrics {
    last_flush: Instant,
    pub syscalls: u64,
    pub datagrams: u64,
    pub bytes: u64,
    pub unroutable: u64,
    pub shard_queue_full: u64,
}

impl ReceiveMetrics {
    pub fn new(now: Instant) -> Self {
        ReceiveMetrics {
            last_flush: now,
            syscalls: 0,
            datagrams: 0,
            bytes: 0,
            unroutable: 0,
            shard_queue_full: 0,
        }
    }

    pub fn flush_if_due(&mut self, now: Instant) {
        if now.duration_since(self.last_flush) < FLUSH_INTERVAL {
            return;
        }
        self.last_flush = now;
        add_if(UDP_RECEIVE_SYSCALLS, std::mem::take(&mut self.syscalls));
        add_if(UDP_DATAGRAMS_RECEIVED, std::mem::take(&mut self.datagrams));
        let bytes = std::mem::take(&mut self.bytes);
        UDP_BYTES_IN_TOTAL.fetch_add(bytes, Ordering::Relaxed);
        add_if(UDP_BYTES_RECEIVED, bytes);
        let n = std::mem::take(&mut self.unroutable);
        if n > 0 {
            counter!(PACKETS_DROPPED, "reason" => DROP_UDP_UNROUTABLE).increment(n);
        }
        let n = std::mem::take(&mut self.shard_queue_full);
        if n > 0 {
            counter!(PACKETS_DROPPED, "reason" => DROP_SHARD_QUEUE_FULL).increment(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twirp_labels_are_closed() {
        assert_eq!(
            twirp_route("/twirp/livekit.RoomService/ListRooms"),
            Some(("RoomService", "ListRooms"))
        );
        assert_eq!(
            twirp_route("/twirp/livekit.RoomService/Evil<script>"),
            Some(("RoomService", "other"))
        );
        assert_eq!(twirp_route("/twirp/x.Y/Z"), Some(("other", "other")));
        assert_eq!(twirp_route("/rtc"), None);
        assert_eq!(twirp_code("not_found"), "not_found");
        assert_eq!(twirp_code("made_up"), "other");
    }

    /// A recorder with the shard histograms' buckets, and a reader of one
    /// series' value in its exposition.
    fn shard_recorder() -> (
        metrics_exporter_prometheus::PrometheusRecorder,
        impl Fn(&str) -> f64,
    ) {
        let mut builder = PrometheusBuilder::new();
        for (name, buckets) in [
            (FORWARD_LATENCY_MS, FORWARD_LATENCY_BUCKETS),
            (SHARD_ROUND_MS, SHARD_ROUND_BUCKETS),
        ] {
            builder = builder
                .set_buckets_for_metric(Matcher::Full(name.to_string()), buckets)
                .unwrap();
        }
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        let value = move |series: &str| -> f64 {
            let text = handle.render();
            let line = text
                .lines()
                .find(|l| l.starts_with(series))
                .unwrap_or_else(|| panic!("{series} in {text}"));
            line.rsplit(' ').next().unwrap().parse().unwrap()
        };
        (recorder, value)
    }

    /// Latencies go to the node's histogram at the flush, by bucket: the
    /// exposition is the one a record per packet gave.
    #[test]
    fn forward_latencies_are_recorded_by_bucket_at_the_flush() {
        let (recorder, value) = shard_recorder();
        let latencies = [0.1, 0.2, 0.24, 0.3, 4.0, 4.5, 4.9, 2000.0];
        metrics::with_local_recorder(&recorder, || {
            let now = Instant::now();
            let mut shard = ShardMetrics::new(0, now);
            for ms in latencies {
                shard.forwarded(Duration::from_secs_f64(ms / 1000.0));
            }
            assert_eq!(
                value("relais_forward_latency_ms_count"),
                0.0,
                "nothing recorded before the flush"
            );
            shard.flush(now, MediaStats::default(), ShardGauges::default());
        });
        let bucket = |le: &str| value(&format!("relais_forward_latency_ms_bucket{{le=\"{le}\"}}"));
        assert_eq!(bucket("0.25"), 3.0);
        assert_eq!(bucket("0.5"), 4.0);
        assert_eq!(bucket("3"), 4.0);
        assert_eq!(bucket("5"), 7.0);
        assert_eq!(bucket("1000"), 7.0);
        assert_eq!(bucket("+Inf"), 8.0);
        assert_eq!(value("relais_forward_latency_ms_count"), 8.0);
        let sum: f64 = latencies.iter().sum();
        assert!((value("relais_forward_latency_ms_sum") - sum).abs() < 1e-6);
    }

    /// Each time a shard worked is a sample of its own round histogram at the
    /// flush, and counts in its busy time.
    #[test]
    fn a_shards_rounds_are_recorded_under_its_label_at_the_flush() {
        let (recorder, value) = shard_recorder();
        let rounds = [0.03, 0.2, 0.9, 4.0, 7.5];
        metrics::with_local_recorder(&recorder, || {
            let now = Instant::now();
            let mut shard = ShardMetrics::new(3, now);
            for ms in rounds {
                shard.worked(Duration::from_secs_f64(ms / 1000.0));
            }
            let busy = shard.busy_fraction(now + Duration::from_secs(1));
            assert!((busy - rounds.iter().sum::<f64>() / 1000.0).abs() < 1e-6);
            shard.flush(now, MediaStats::default(), ShardGauges::default());
        });
        let bucket = |le: &str| {
            value(&format!(
                "relais_shard_round_ms_bucket{{shard=\"3\",le=\"{le}\"}}"
            ))
        };
        assert_eq!(bucket("0.05"), 1.0);
        assert_eq!(bucket("1"), 3.0);
        assert_eq!(bucket("5"), 4.0);
        assert_eq!(bucket("10"), 5.0);
        assert_eq!(value("relais_shard_round_ms_count{shard=\"3\"}"), 5.0);
        let busy_us = value("relais_shard_busy_microseconds_total{shard=\"3\"}");
        assert!((busy_us - 12_630.0).abs() <= 1.0, "{busy_us}");
    }

    /// The run delay read each second counts what it grew by.
    #[test]
    fn a_shards_wait_for_its_cpu_is_counted_as_it_grows() {
        let (recorder, value) = shard_recorder();
        metrics::with_local_recorder(&recorder, || {
            let mut shard = ShardMetrics::new(2, Instant::now());
            for ms in [4, 4, 10, 25] {
                shard.waited_for_cpu(Duration::from_millis(ms));
            }
        });
        let waited = value("relais_shard_run_delay_microseconds_total{shard=\"2\"}");
        assert_eq!(waited, 25_000.0);
    }

    #[test]
    fn basic_auth() {
        let mut h = HeaderMap::new();
        assert!(BasicAuth::new("", "").allows(&h));
        let auth = BasicAuth::new("prom", "s3cret");
        assert!(!auth.allows(&h));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic cHJvbTpzM2NyZXQ="),
        );
        assert!(auth.allows(&h));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic cHJvbTpzM2NyZXR="),
        );
        assert!(!auth.allows(&h));
    }
}
