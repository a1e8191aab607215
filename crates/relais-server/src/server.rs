//! Wiring: sockets, shard threads and the HTTP server, from a [`Config`].

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use relais_auth::TokenVerifier;
use relais_control::room_service::{self, RoomService, ServiceOptions};
use relais_control::webhook::{WebhookNotifier, WebhookSettings};
use relais_media::{
    tcp_passive_candidate, udp_host_candidate, MediaConfig, RoomDefaults, SubscriptionLimits,
};
use tracing::{debug, info, warn};

use crate::cluster::Cluster;
use crate::config::Config;
use crate::events::EventSinks;
use crate::fan_out::FanOutPool;
use crate::http::{router, AppState};
use crate::room_api::ShardsBackend;
use crate::room_routing::route_room_service;
use crate::shards::{Shards, UdpSockets};

/// The webhook notifier, when `webhook.urls` is set. `webhook.api_key` must be
/// one of the configured keys (its secret signs every delivery).
fn webhook_notifier(
    config: &Config,
    keys: &relais_auth::KeyProvider,
) -> anyhow::Result<Option<WebhookNotifier>> {
    let webhook = &config.webhook;
    if webhook.urls.is_empty() {
        return Ok(None);
    }
    let Some(secret) = keys.secret(&webhook.api_key) else {
        bail!(
            "webhook.api_key {:?} is not one of the configured API keys",
            webhook.api_key
        );
    };
    let settings = WebhookSettings::new(
        webhook.urls.clone(),
        webhook.api_key.clone(),
        secret.to_string(),
    );
    let notifier = WebhookNotifier::start(settings).context("webhook")?;
    info!(urls = webhook.urls.len(), api_key = %webhook.api_key, "webhooks enabled");
    Ok(Some(notifier))
}

/// Run the node until SIGINT/SIGTERM.
pub fn run(config: Config) -> anyhow::Result<()> {
    // The runtime is the control plane: its threads yield to the media threads
    // (shards, receive thread, fan-out helpers), which set themselves back.
    crate::thread_class::control_plane();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("relais-io")
        .on_thread_start(crate::thread_class::control_plane)
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(config))
}

/// The IP advertised in ICE candidates: `rtc.node_ip`, else the first bind
/// address that is not unspecified, else loopback.
fn node_ip(config: &Config) -> IpAddr {
    if let Some(ip) = config.rtc.node_ip.as_deref().and_then(|s| s.parse().ok()) {
        return ip;
    }
    config
        .listen_ips()
        .into_iter()
        .find(|ip| !ip.is_unspecified())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let keys = config.key_provider()?;
    let Some(udp_ports) = config.rtc.udp_port else {
        bail!(
            "rtc.udp_port must be set: Relais muxes all media on one UDP port (or one per shard)"
        );
    };
    let listen = config.listen_ips();
    let udp_ip = listen
        .first()
        .copied()
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let mut udp = Vec::with_capacity(udp_ports.count());
    for port in udp_ports.ports() {
        let socket = UdpSocket::bind(SocketAddr::new(udp_ip, port))
            .with_context(|| format!("binding the media UDP port {udp_ip}:{port}"))?;
        crate::udp::size_buffers(&socket);
        if let Err(e) = crate::udp::stamp_arrivals(&socket) {
            warn!(error = %e, "no arrival stamps on the media socket: stale media is aged from when it is read");
        }
        if let Err(e) = crate::udp::never_fragment(&socket) {
            warn!(error = %e, "media datagrams may be fragmented (IP_MTU_DISCOVER)");
        }
        udp.push(socket);
    }
    // ICE over TCP listens where the UDP port does.
    let ice_tcp = match config.rtc.tcp_port {
        0 => None,
        port => {
            let listener = tokio::net::TcpListener::bind(SocketAddr::new(udp_ip, port))
                .await
                .with_context(|| format!("binding the ICE-TCP port {udp_ip}:{port}"))?;
            let advertised = SocketAddr::new(node_ip(&config), listener.local_addr()?.port());
            Some((listener, advertised))
        }
    };

    let node_id = relais_proto::ids::new_id("ND_");
    // Before the shards start, so every metric they touch is described.
    let prometheus = if config.prometheus.port != 0 {
        Some(crate::metrics::install(&node_id)?)
    } else {
        None
    };
    let mut media = MediaConfig::new(Vec::new(), node_id.clone())?;
    media.region = config.region.clone();
    media.field_limits = config.limit.field_limits();
    media.subscription_limits = SubscriptionLimits {
        video: config.limit.subscription_limit_video,
        audio: config.limit.subscription_limit_audio,
    };
    media.room_defaults = RoomDefaults {
        empty_timeout: Duration::from_secs(u64::from(config.room.empty_timeout)),
        departure_timeout: Duration::from_secs(u64::from(config.room.departure_timeout)),
        max_participants: config.room.max_participants,
    };
    media.fan_out_min_sessions = config.rtc.fan_out_min_sessions.max(1);
    media.drive_turn_datagrams = config.rtc.drive_turn_datagrams;
    media.timer_slack = Duration::from_millis(config.rtc.timer_slack_ms);
    media.direct_audio = config.rtc.direct_audio;
    media.direct_video = config.rtc.direct_video;
    media.direct_ingress = config.rtc.direct_ingress;
    let ping_timeout = media.ping_timeout;
    // One port: a shard per core behind a receive thread. A range: a shard per
    // port. One port and one core: the one shard reads the socket itself.
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let (shard_count, sockets) = match udp.len() {
        1 if cores > 1 => (cores, UdpSockets::Shared(udp.remove(0))),
        n => {
            if n < cores {
                warn!(
                    ports = n,
                    cores,
                    "rtc.udp_port has fewer ports than cores: one shard per port leaves cores idle"
                );
            }
            (n, UdpSockets::PerShard(udp))
        }
    };
    let shard_ports: Vec<u16> = match &sockets {
        UdpSockets::Shared(socket) => vec![socket.local_addr()?.port(); shard_count],
        UdpSockets::PerShard(sockets) => sockets
            .iter()
            .map(|s| s.local_addr().map(|a| a.port()))
            .collect::<Result<_, _>>()?,
    };
    // Each shard's sessions advertise the UDP port it reads.
    let mut configs = Vec::with_capacity(shard_count);
    for port in shard_ports {
        let mut shard_media = media.clone();
        if !config.rtc.tcp_only {
            let udp = SocketAddr::new(node_ip(&config), port);
            shard_media.candidates.push(udp_host_candidate(udp)?);
        }
        if let Some((_, advertised)) = &ice_tcp {
            shard_media
                .candidates
                .push(tcp_passive_candidate(*advertised)?);
        }
        configs.push(shard_media);
    }
    let events = EventSinks {
        webhook: webhook_notifier(&config, &keys)?,
    };
    let fan_out_threads = config
        .rtc
        .fan_out_threads
        .unwrap_or(cores.saturating_sub(1));
    let fan_out = FanOutPool::start(fan_out_threads).context("starting fan-out threads")?;
    let shards = Shards::start(
        configs,
        sockets,
        events,
        config.limit.shard_busy_fraction,
        fan_out,
    )
    .context("starting shard threads")?;
    let ice_tcp_candidate = ice_tcp.as_ref().map(|(_, advertised)| *advertised);
    if let Some((listener, advertised)) = ice_tcp {
        crate::tcp::spawn(listener, shards.clone(), advertised);
    }

    let verifier = TokenVerifier::new(keys);
    let cluster = Cluster::new(&config, &node_id, node_ip(&config), verifier.clone())?;
    let backend = ShardsBackend::new(shards.clone());
    cluster.start(backend.clone()).await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(drain_on_signal(
        cluster.clone(),
        backend,
        Duration::from_secs(u64::from(config.drain_timeout)),
        stop_tx,
    ));
    let room_api = Arc::new(RoomService::new(
        verifier.clone(),
        ShardsBackend::new(shards.clone()),
        ServiceOptions {
            limits: config.limit.field_limits(),
            ..ServiceOptions::default()
        },
    ));
    let state_node = shards.node().clone();
    let state = Arc::new(AppState {
        verifier,
        shards,
        auto_create: config.room.auto_create,
        limits: config.limit.field_limits(),
        ping_timeout,
        cluster: cluster.clone(),
    });
    // The room API (Twirp, and gRPC over h2c) shares the main port.
    let app = router(state)
        .merge(room_service::router(room_api))
        .layer(axum::middleware::from_fn_with_state(
            cluster.clone(),
            route_room_service,
        ))
        .layer(axum::middleware::from_fn(crate::metrics::twirp_status));
    tokio::spawn(node_metrics(state_node.clone(), cluster.clone()));
    if let Some(handle) = prometheus {
        for ip in &listen {
            let addr = SocketAddr::new(*ip, config.prometheus.port);
            crate::metrics::serve(
                addr,
                handle.clone(),
                &config.prometheus,
                std::future::pending(),
            )
            .await?;
        }
    }
    let mut servers = Vec::new();
    for ip in listen {
        let addr = SocketAddr::new(ip, config.port);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the HTTP port {addr}"))?;
        info!(%addr, node_ip = %node_ip(&config), udp_ports = %udp_ports, ice_tcp = ?ice_tcp_candidate,
            tcp_only = config.rtc.tcp_only,
            %node_id, shards = shard_count, "relais listening");
        // Routes made ready once here: served as a bare `Router`, axum would
        // rebuild them for every connection (2.5 % of a wave of joins).
        let app = app.clone().with_state(()).into_make_service();
        let mut stop = stop_rx.clone();
        servers.push(tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
        }));
    }
    for server in servers {
        server.await??;
    }
    info!("relais stopped");
    Ok(())
}

/// On SIGTERM/SIGINT: drain (no new rooms here; rooms here run until they are
/// empty and no relayed connection is left, or until `deadline`; a second
/// signal cuts it short), leave the cluster, then stop the HTTP servers.
async fn drain_on_signal(
    cluster: Arc<Cluster>,
    backend: ShardsBackend,
    deadline: Duration,
    stop: tokio::sync::watch::Sender<bool>,
) {
    use relais_control::room_service::RoomBackend;
    shutdown_signal().await;
    info!(
        deadline_s = deadline.as_secs(),
        "draining: no new rooms; waiting for rooms to empty"
    );
    cluster.start_draining(&backend).await;
    let until = tokio::time::Instant::now() + deadline;
    let second_signal = shutdown_signal();
    tokio::pin!(second_signal);
    loop {
        let participants: u32 = backend
            .list_rooms(Vec::new())
            .await
            .map(|rooms| rooms.iter().map(|r| r.num_participants).sum())
            .unwrap_or(0);
        let relays = cluster.active_relays();
        if participants == 0 && relays == 0 {
            info!("drained: no participant left");
            break;
        }
        if tokio::time::Instant::now() >= until {
            info!(participants, relays, "drain deadline reached; stopping");
            break;
        }
        tokio::select! {
            _ = &mut second_signal => {
                info!("second signal: stopping now");
                break;
            }
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
    cluster.leave().await;
    let _ = stop.send(true);
}

/// Once a second: readiness and draining gauges, forward latency; and the
/// heap's free pages given back once the node has quieted down.
async fn node_metrics(node: Arc<crate::node::NodeState>, cluster: Arc<Cluster>) {
    let mut tick = tokio::time::interval(crate::metrics::FLUSH_INTERVAL);
    let mut heap_trim = crate::heap_trim::HeapTrim::new(crate::metrics::FLUSH_INTERVAL);
    loop {
        tick.tick().await;
        if cluster.coordinator.is_draining() && node.start_draining() {
            info!("draining: /readyz now answers 503");
        }
        node.publish();
        crate::metrics::publish_forward_latency();
        if heap_trim.observe(node.participants()) {
            // The walk over the arenas takes milliseconds: off the runtime, on
            // a thread that ends with it (a blocking-pool thread would linger
            // idle for 10 s).
            let spawned = std::thread::Builder::new()
                .name("heap-trim".into())
                .spawn(|| {
                    let started = std::time::Instant::now();
                    if crate::heap_trim::release_free_memory() {
                        debug!(took = ?started.elapsed(), "free heap pages returned to the system");
                    }
                });
            if let Err(e) = spawned {
                warn!(error = %e, "cannot start a thread to trim the heap");
            }
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
