//! Webhook delivery, as LiveKit does it (`shared/protocol.md` §6).
//!
//! Each event is POSTed to every configured URL with
//! `Content-Type: application/webhook+json`, `User-Agent: LiveKit` and
//! `Authorization: <JWT>` (raw, no `Bearer`), an HS256 token signed with the
//! webhook API key whose `sha256` claim is the standard padded base64 of the
//! SHA-256 of the exact body bytes. The body is the `WebhookEvent` in proto3
//! JSON (pbjson: lowerCamel, defaults omitted, int64 as strings).
//!
//! # Never blocking the caller
//!
//! [`WebhookNotifier::notify`] is synchronous, never waits and works from any
//! thread (shard threads call it): it stamps the event's `id` (`EV_…`) and
//! `created_at`, then `try_send`s it into a bounded queue. When the queue is
//! full the event is dropped, logged and counted.
//!
//! # Ordering and retries
//!
//! A dispatcher task hands each event to one worker per (URL, room): events of
//! a room reach a receiver in the order they were notified, one at a time,
//! while rooms (and URLs) proceed independently. A failed attempt (connection
//! error, timeout, HTTP 429 or 5xx other than 501) is retried with exponential
//! backoff until the event is older than [`WebhookSettings::max_age`] (LiveKit:
//! 30 s); then it is dropped with a warning and counted. Any other non-2xx
//! answer drops the event at once.
//!
//! # Metrics (through the `metrics` facade)
//!
//! * `livekit_webhook_dropped_total{reason}`: `queue_full`, `room_queue_full`,
//!   `max_age`, `rejected` (non-retryable status), `encode`;
//! * `livekit_webhook_sent_total`: deliveries answered with 2xx;
//! * `livekit_webhook_failures_total`: failed attempts (each retry counts).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use hyper::{Request, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use relais_auth::AccessToken;
use relais_proto::livekit::WebhookEvent;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

/// `Content-Type` of every delivery.
pub const CONTENT_TYPE_WEBHOOK: &str = "application/webhook+json";
/// Lifetime of the `Authorization` JWT (LiveKit: 5 minutes).
pub const TOKEN_TTL: Duration = Duration::from_secs(5 * 60);

/// Metric: events dropped, by `reason`.
pub const METRIC_DROPPED: &str = "livekit_webhook_dropped_total";
/// Metric: events delivered (2xx).
pub const METRIC_SENT: &str = "livekit_webhook_sent_total";
/// Metric: failed delivery attempts.
pub const METRIC_FAILURES: &str = "livekit_webhook_failures_total";

/// A worker with nothing to deliver for this long exits.
const WORKER_IDLE: Duration = Duration::from_secs(30);
/// At most this many requests in flight across all rooms and URLs.
const MAX_IN_FLIGHT: usize = 64;
/// A response body is read up to this size (then the connection is dropped).
const MAX_RESPONSE_BODY: usize = 64 * 1024;

/// What the notifier needs.
#[derive(Clone)]
pub struct WebhookSettings {
    /// Endpoints (`http://` or `https://`); every event goes to each.
    pub urls: Vec<String>,
    /// API key signing the token (`iss`).
    pub api_key: String,
    /// Its secret.
    pub api_secret: String,
    /// Capacity of the intake queue shared by all rooms.
    pub queue_size: usize,
    /// Capacity of each (URL, room) queue (LiveKit: 200).
    pub room_queue_size: usize,
    /// An event older than this is dropped instead of (re)tried (LiveKit: 30 s).
    pub max_age: Duration,
    /// Timeout of one HTTP attempt.
    pub request_timeout: Duration,
    /// First retry delay; doubled after each failure up to `backoff_max`.
    pub backoff_min: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
}

impl std::fmt::Debug for WebhookSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSettings")
            .field("urls", &self.urls.len())
            .field("api_key", &self.api_key)
            .field("queue_size", &self.queue_size)
            .field("room_queue_size", &self.room_queue_size)
            .field("max_age", &self.max_age)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

impl WebhookSettings {
    /// LiveKit's defaults for `urls`, signed by `api_key`/`api_secret`.
    pub fn new(urls: Vec<String>, api_key: String, api_secret: String) -> Self {
        WebhookSettings {
            urls,
            api_key,
            api_secret,
            queue_size: 4096,
            room_queue_size: 200,
            max_age: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
            backoff_min: Duration::from_millis(250),
            backoff_max: Duration::from_secs(5),
        }
    }
}

/// Why the notifier could not be built.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// A URL that does not parse or is not http(s).
    #[error("invalid webhook URL #{index}: {reason}")]
    InvalidUrl {
        /// Position in `webhook.urls` (the URL itself may hold a secret).
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// No API key or an empty secret.
    #[error("webhook signing key: {0}")]
    Key(String),
    /// The TLS client could not be set up (no root certificates).
    #[error("TLS for https webhook URLs: {0}")]
    Tls(String),
    /// Signing failed.
    #[error("signing the webhook token: {0}")]
    Signing(#[from] relais_auth::AuthError),
}

/// Counters of one notifier (also exported as metrics).
#[derive(Debug, Default)]
struct Counters {
    dropped_queue_full: AtomicU64,
    dropped_room_queue_full: AtomicU64,
    dropped_max_age: AtomicU64,
    dropped_rejected: AtomicU64,
    sent: AtomicU64,
    failures: AtomicU64,
}

/// A snapshot of a notifier's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WebhookStats {
    /// Dropped because the intake queue was full.
    pub dropped_queue_full: u64,
    /// Dropped because a (URL, room) queue was full.
    pub dropped_room_queue_full: u64,
    /// Dropped after `max_age` without success.
    pub dropped_max_age: u64,
    /// Dropped on a non-retryable HTTP status.
    pub dropped_rejected: u64,
    /// Delivered with a 2xx answer.
    pub sent: u64,
    /// Failed attempts.
    pub failures: u64,
}

impl WebhookStats {
    /// Every drop, whatever the reason.
    pub fn dropped(&self) -> u64 {
        self.dropped_queue_full
            + self.dropped_room_queue_full
            + self.dropped_max_age
            + self.dropped_rejected
    }
}

/// One event on its way.
struct Envelope {
    event: WebhookEvent,
    created: Instant,
}

/// One event for one URL.
struct Job {
    body: Bytes,
    name: Arc<str>,
    id: Arc<str>,
    created: Instant,
}

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

struct Target {
    uri: Uri,
    /// For logs: scheme and authority only (a path or query may hold a secret).
    label: String,
}

struct Shared {
    settings: WebhookSettings,
    targets: Vec<Target>,
    client: HttpClient,
    counters: Counters,
    in_flight: Semaphore,
}

/// Handle to the webhook delivery tasks. Cheap to clone; [`notify`] never
/// blocks. Dropping every handle lets the tasks finish what is queued and exit.
///
/// [`notify`]: WebhookNotifier::notify
#[derive(Clone)]
pub struct WebhookNotifier {
    tx: mpsc::Sender<Envelope>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for WebhookNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookNotifier")
            .field("urls", &self.shared.targets.len())
            .finish_non_exhaustive()
    }
}

impl WebhookNotifier {
    /// Validate `settings` and start the delivery tasks on the current tokio
    /// runtime (panics outside one, like `tokio::spawn`).
    pub fn start(settings: WebhookSettings) -> Result<Self, WebhookError> {
        if settings.api_key.is_empty() {
            return Err(WebhookError::Key("webhook.api_key is empty".into()));
        }
        if settings.api_secret.is_empty() {
            return Err(WebhookError::Key("the API secret is empty".into()));
        }
        let targets = settings
            .urls
            .iter()
            .enumerate()
            .map(|(index, url)| parse_target(index, url))
            .collect::<Result<Vec<_>, _>>()?;
        let client = build_client(targets.iter().any(|t| t.uri.scheme_str() == Some("https")))?;
        let (tx, rx) = mpsc::channel(settings.queue_size.max(1));
        let shared = Arc::new(Shared {
            settings,
            targets,
            client,
            counters: Counters::default(),
            in_flight: Semaphore::new(MAX_IN_FLIGHT),
        });
        tokio::spawn(dispatch(rx, shared.clone()));
        Ok(WebhookNotifier { tx, shared })
    }

    /// Queue `event` for every URL. Sets `id` (`EV_…`) and `created_at` (now,
    /// Unix seconds). Never blocks: when the queue is full the event is dropped
    /// and counted.
    pub fn notify(&self, mut event: WebhookEvent) {
        if self.shared.targets.is_empty() {
            return;
        }
        event.id = relais_proto::ids::new_id("EV_");
        event.created_at = unix_secs();
        let envelope = Envelope {
            event,
            created: Instant::now(),
        };
        match self.tx.try_send(envelope) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(e)) => {
                self.shared
                    .counters
                    .dropped_queue_full
                    .fetch_add(1, Ordering::Relaxed);
                metrics::counter!(METRIC_DROPPED, "reason" => "queue_full").increment(1);
                warn!(event = %e.event.event, id = %e.event.id, room = %room_of(&e.event),
                    "webhook queue full: event dropped");
            }
            Err(mpsc::error::TrySendError::Closed(e)) => {
                debug!(event = %e.event.event, "webhook notifier stopped: event dropped");
            }
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> WebhookStats {
        let c = &self.shared.counters;
        WebhookStats {
            dropped_queue_full: c.dropped_queue_full.load(Ordering::Relaxed),
            dropped_room_queue_full: c.dropped_room_queue_full.load(Ordering::Relaxed),
            dropped_max_age: c.dropped_max_age.load(Ordering::Relaxed),
            dropped_rejected: c.dropped_rejected.load(Ordering::Relaxed),
            sent: c.sent.load(Ordering::Relaxed),
            failures: c.failures.load(Ordering::Relaxed),
        }
    }
}

/// The `Authorization` value for `body`: an HS256 JWT with `iss` = `api_key`,
/// `exp` = now + 5 min and `sha256` = standard padded base64 of SHA-256(body).
pub fn sign(api_key: &str, api_secret: &str, body: &[u8]) -> Result<String, WebhookError> {
    Ok(AccessToken::new(api_key, api_secret)
        .with_ttl(TOKEN_TTL)
        .with_sha256(body_sha256(body))
        .to_jwt()?)
}

/// Standard (padded) base64 of the SHA-256 of `body`: the `sha256` claim.
pub fn body_sha256(body: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(body))
}

/// The request body: proto3 JSON as LiveKit writes it.
pub fn encode_body(event: &WebhookEvent) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(event)
}

fn room_of(event: &WebhookEvent) -> &str {
    event.room.as_ref().map_or("", |r| r.name.as_str())
}

fn unix_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn parse_target(index: usize, url: &str) -> Result<Target, WebhookError> {
    let invalid = |reason: String| WebhookError::InvalidUrl { index, reason };
    let uri: Uri = url.parse().map_err(|e| invalid(format!("{e}")))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(invalid("the scheme must be http or https".into())),
    }
    let Some(authority) = uri.authority() else {
        return Err(invalid("no host".into()));
    };
    // Never show credentials in logs.
    let host = authority.as_str().rsplit('@').next().unwrap_or_default();
    let label = format!("{}://{}", uri.scheme_str().unwrap_or_default(), host);
    Ok(Target { uri, label })
}

fn build_client(https: bool) -> Result<HttpClient, WebhookError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = if https {
        builder
            .with_provider_and_native_roots(provider)
            .map_err(|e| WebhookError::Tls(e.to_string()))?
    } else {
        // No https URL: a TLS config with no roots is never used.
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| WebhookError::Tls(e.to_string()))?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        builder.with_tls_config(config)
    };
    let connector = builder.https_or_http().enable_http1().build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

struct Worker {
    tx: mpsc::Sender<Job>,
    handle: JoinHandle<()>,
}

/// Routes each event to the worker of its (URL, room), starting workers as
/// needed. A new worker for a key first waits for the previous one to finish,
/// so events of one room never overtake each other.
async fn dispatch(mut rx: mpsc::Receiver<Envelope>, shared: Arc<Shared>) {
    let mut workers: HashMap<(usize, String), Worker> = HashMap::new();
    let mut since_prune = 0usize;
    while let Some(envelope) = rx.recv().await {
        let room = room_of(&envelope.event).to_string();
        let name: Arc<str> = envelope.event.event.as_str().into();
        let id: Arc<str> = envelope.event.id.as_str().into();
        let body = match encode_body(&envelope.event) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                warn!(event = %name, error = %e, "webhook event not encodable: dropped");
                metrics::counter!(METRIC_DROPPED, "reason" => "encode").increment(1);
                continue;
            }
        };
        for index in 0..shared.targets.len() {
            let job = Job {
                body: body.clone(),
                name: name.clone(),
                id: id.clone(),
                created: envelope.created,
            };
            let key = (index, room.clone());
            let job = match workers.get(&key) {
                None => job,
                Some(w) => match w.tx.try_send(job) {
                    Ok(()) => continue,
                    Err(mpsc::error::TrySendError::Closed(job)) => job,
                    Err(mpsc::error::TrySendError::Full(job)) => {
                        shared
                            .counters
                            .dropped_room_queue_full
                            .fetch_add(1, Ordering::Relaxed);
                        metrics::counter!(METRIC_DROPPED, "reason" => "room_queue_full")
                            .increment(1);
                        warn!(event = %job.name, id = %job.id, %room,
                            url = %shared.targets[index].label,
                            "webhook queue of the room full: event dropped");
                        continue;
                    }
                },
            };
            let previous = workers.remove(&key).map(|w| w.handle);
            let (tx, worker_rx) = mpsc::channel(shared.settings.room_queue_size.max(1));
            // A fresh channel has room for one.
            let _ = tx.try_send(job);
            let handle = tokio::spawn(work(shared.clone(), index, worker_rx, previous));
            workers.insert(key, Worker { tx, handle });
        }
        since_prune += 1;
        if since_prune >= 256 {
            since_prune = 0;
            workers.retain(|_, w| !w.handle.is_finished());
        }
    }
}

/// Delivers the jobs of one (URL, room) in order; exits when idle.
async fn work(
    shared: Arc<Shared>,
    index: usize,
    mut rx: mpsc::Receiver<Job>,
    previous: Option<JoinHandle<()>>,
) {
    if let Some(previous) = previous {
        let _ = previous.await;
    }
    loop {
        match tokio::time::timeout(WORKER_IDLE, rx.recv()).await {
            Ok(Some(job)) => deliver(&shared, index, job).await,
            Ok(None) => return,
            Err(_) => {
                // Idle: refuse new jobs (the dispatcher starts a successor that
                // waits for us), then finish what slipped in meanwhile.
                rx.close();
                while let Some(job) = rx.recv().await {
                    deliver(&shared, index, job).await;
                }
                return;
            }
        }
    }
}

enum Failure {
    /// Worth another try.
    Retry(String),
    /// The receiver refused it for good.
    Rejected(StatusCode),
}

async fn deliver(shared: &Shared, index: usize, job: Job) {
    let settings = &shared.settings;
    let target = &shared.targets[index];
    let mut backoff = settings.backoff_min;
    let mut attempts = 0u32;
    loop {
        if job.created.elapsed() >= settings.max_age {
            shared
                .counters
                .dropped_max_age
                .fetch_add(1, Ordering::Relaxed);
            metrics::counter!(METRIC_DROPPED, "reason" => "max_age").increment(1);
            warn!(event = %job.name, id = %job.id, url = %target.label, attempts,
                "webhook not delivered within its max age: dropped");
            return;
        }
        attempts += 1;
        let result = {
            let _permit = shared.in_flight.acquire().await;
            attempt(shared, target, &job).await
        };
        match result {
            Ok(()) => {
                shared.counters.sent.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(METRIC_SENT).increment(1);
                debug!(event = %job.name, id = %job.id, url = %target.label, attempts, "webhook delivered");
                return;
            }
            Err(Failure::Rejected(status)) => {
                shared
                    .counters
                    .dropped_rejected
                    .fetch_add(1, Ordering::Relaxed);
                metrics::counter!(METRIC_DROPPED, "reason" => "rejected").increment(1);
                warn!(event = %job.name, id = %job.id, url = %target.label, %status,
                    "webhook refused by the receiver: dropped");
                return;
            }
            Err(Failure::Retry(reason)) => {
                shared.counters.failures.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(METRIC_FAILURES).increment(1);
                debug!(event = %job.name, id = %job.id, url = %target.label, attempts, %reason,
                    retry_in = ?backoff, "webhook attempt failed");
            }
        }
        let remaining = settings.max_age.saturating_sub(job.created.elapsed());
        tokio::time::sleep(backoff.min(remaining)).await;
        backoff = (backoff * 2).min(settings.backoff_max);
    }
}

async fn attempt(shared: &Shared, target: &Target, job: &Job) -> Result<(), Failure> {
    let settings = &shared.settings;
    // Signed per attempt, so a late retry still carries a fresh `exp`.
    let token = sign(&settings.api_key, &settings.api_secret, &job.body)
        .map_err(|e| Failure::Retry(e.to_string()))?;
    let request = Request::post(target.uri.clone())
        .header(CONTENT_TYPE, CONTENT_TYPE_WEBHOOK)
        .header(USER_AGENT, "LiveKit")
        .header(AUTHORIZATION, token)
        .body(Full::new(job.body.clone()))
        .map_err(|e| Failure::Retry(e.to_string()))?;
    let exchange = async {
        let response = shared
            .client
            .request(request)
            .await
            .map_err(|e| Failure::Retry(error_chain(&e)))?;
        let status = response.status();
        // Read (a bounded amount of) the answer so the connection can be reused.
        let _ = http_body_util::Limited::new(response.into_body(), MAX_RESPONSE_BODY)
            .collect()
            .await;
        Ok::<_, Failure>(status)
    };
    let status = tokio::time::timeout(settings.request_timeout, exchange)
        .await
        .map_err(|_| {
            Failure::Retry(format!("no answer within {:?}", settings.request_timeout))
        })??;
    if status.is_success() {
        Ok(())
    } else if retryable(status) {
        Err(Failure::Retry(format!("HTTP {status}")))
    } else {
        Err(Failure::Rejected(status))
    }
}

/// Like LiveKit's retrying HTTP client: 429 and 5xx (except 501) are retried.
fn retryable(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
        || (status.is_server_error() && status != StatusCode::NOT_IMPLEMENTED)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

#[cfg(test)]
mod tests;
