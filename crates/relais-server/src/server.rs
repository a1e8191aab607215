//! Wiring: sockets, shard threads and the HTTP server, from a [`Config`].

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use relais_auth::TokenVerifier;
use relais_control::webhook::{WebhookNotifier, WebhookSettings};
use relais_control::room_service::{self, RoomService, ServiceOptions};
use relais_media::{MediaConfig, RoomDefaults};
use tracing::info;

use crate::config::Config;
use crate::events::EventSinks;
use crate::http::{router, AppState};
use crate::room_api::ShardsBackend;
use crate::shards::Shards;

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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("relais-io")
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
    let Some(udp_port) = config.rtc.udp_port else {
        bail!("rtc.udp_port must be set: Relais muxes all media on one UDP port");
    };
    let listen = config.listen_ips();
    let udp_ip = listen
        .first()
        .copied()
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let udp = UdpSocket::bind(SocketAddr::new(udp_ip, udp_port))
        .with_context(|| format!("binding the media UDP port {udp_ip}:{udp_port}"))?;
    let candidate = SocketAddr::new(node_ip(&config), udp.local_addr()?.port());

    let node_id = relais_proto::ids::new_id("ND_");
    let mut media = MediaConfig::new(vec![candidate], node_id.clone())?;
    media.region = config.region.clone();
    media.room_defaults = RoomDefaults {
        empty_timeout: Duration::from_secs(u64::from(config.room.empty_timeout)),
        departure_timeout: Duration::from_secs(u64::from(config.room.departure_timeout)),
        max_participants: config.room.max_participants,
    };
    let ping_timeout = media.ping_timeout;
    let shard_count = std::thread::available_parallelism().map_or(1, |n| n.get());
    let events = EventSinks {
        webhook: webhook_notifier(&config, &keys)?,
    };
    let shards =
        Shards::start(shard_count, media, udp, events).context("starting shard threads")?;

    let verifier = TokenVerifier::new(keys);
    let room_api = Arc::new(RoomService::new(
        verifier.clone(),
        ShardsBackend::new(shards.clone()),
        ServiceOptions::default(),
    ));
    let state = Arc::new(AppState {
        verifier,
        shards,
        auto_create: config.room.auto_create,
        ping_timeout,
    });
    // The room API (Twirp, and gRPC over h2c) shares the main port.
    let app = router(state).merge(room_service::router(room_api));
    let mut servers = Vec::new();
    for ip in listen {
        let addr = SocketAddr::new(ip, config.port);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the HTTP port {addr}"))?;
        info!(%addr, %candidate, %node_id, shards = shard_count, "relais listening");
        let app = app.clone();
        servers.push(tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown_signal())
                .await
        }));
    }
    for server in servers {
        server.await??;
    }
    info!("relais stopped");
    Ok(())
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
