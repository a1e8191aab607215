use std::sync::Mutex;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use axum::routing::post;
use axum::Router;
use relais_auth::{KeyProvider, TokenVerifier};
use relais_proto::livekit::{ParticipantInfo, Room};

use super::*;

const KEY: &str = "webhookKey";
const SECRET: &str = "webhookSecret0123456789";

fn verifier() -> TokenVerifier {
    TokenVerifier::new(KeyProvider::from_map([(KEY, SECRET)]).unwrap())
}

fn event(name: &str, room: &str, identity: &str) -> WebhookEvent {
    WebhookEvent {
        event: name.into(),
        room: Some(Room {
            sid: "RM_test".into(),
            name: room.into(),
            ..Default::default()
        }),
        participant: Some(ParticipantInfo {
            sid: "PA_test".into(),
            identity: identity.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn token_carries_the_body_hash() {
    let body = br#"{"event":"room_started"}"#;
    let token = sign(KEY, SECRET, body).unwrap();
    assert!(!token.starts_with("Bearer"));
    let claims = verifier().verify(&token).unwrap();
    assert_eq!(claims.iss.as_deref(), Some(KEY));
    assert_eq!(claims.sub, None);
    let sha = claims.sha256.expect("sha256 claim");
    // Standard, padded base64 of the raw digest (what Python and Node compare).
    assert_eq!(sha.len(), 44);
    assert!(sha.ends_with('='));
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(&sha)
        .unwrap();
    assert_eq!(decoded, Sha256::digest(body).to_vec());
    let (exp, nbf) = (claims.exp.unwrap(), claims.nbf.unwrap());
    assert_eq!(exp - nbf, TOKEN_TTL.as_secs());
    // A different body does not match.
    assert_ne!(sha, body_sha256(br#"{"event":"room_finished"}"#));
}

#[test]
fn body_is_proto3_json_with_defaults_omitted() {
    let mut ev = event("participant_joined", "r1", "alice");
    ev.id = "EV_abc".into();
    ev.created_at = 1_700_000_000;
    let json: serde_json::Value = serde_json::from_slice(&encode_body(&ev).unwrap()).unwrap();
    assert_eq!(json["event"], "participant_joined");
    assert_eq!(json["createdAt"], "1700000000");
    assert_eq!(json["id"], "EV_abc");
    assert_eq!(json["room"]["name"], "r1");
    assert_eq!(json["participant"]["identity"], "alice");
    assert!(json.get("numDropped").is_none());
    assert!(json.get("created_at").is_none());
    assert!(json["participant"].get("state").is_none());
}

#[test]
fn bad_urls_are_refused() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for url in ["ftp://example.invalid/hook", "not a url", "/just/a/path"] {
            let s = WebhookSettings::new(vec![url.into()], KEY.into(), SECRET.into());
            assert!(
                matches!(
                    WebhookNotifier::start(s),
                    Err(WebhookError::InvalidUrl { index: 0, .. })
                ),
                "{url}"
            );
        }
        let s = WebhookSettings::new(vec!["http://127.0.0.1:1/".into()], KEY.into(), "".into());
        assert!(matches!(
            WebhookNotifier::start(s),
            Err(WebhookError::Key(_))
        ));
    });
}

// ---------------------------------------------------------------- a receiver

#[derive(Debug, Clone)]
struct Received {
    at: Instant,
    headers: HeaderMap,
    body: Bytes,
}

impl Received {
    fn event(&self) -> WebhookEvent {
        serde_json::from_slice(&self.body).unwrap()
    }
}

type Behaviour = Arc<dyn Fn(&WebhookEvent, usize) -> (u16, Duration) + Send + Sync>;

#[derive(Clone)]
struct Receiver {
    received: Arc<Mutex<Vec<Received>>>,
    behaviour: Behaviour,
}

async fn hook(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> AxumStatus {
    let ev: WebhookEvent = serde_json::from_slice(&body).unwrap_or_default();
    let n = {
        let mut all = r.received.lock().unwrap();
        all.push(Received {
            at: Instant::now(),
            headers,
            body,
        });
        all.iter().filter(|x| x.event().id == ev.id).count()
    };
    let (status, delay) = (r.behaviour)(&ev, n);
    tokio::time::sleep(delay).await;
    AxumStatus::from_u16(status).unwrap()
}

/// Starts a receiver; `behaviour(event, nth_attempt_of_this_id)` gives the
/// status and how long to wait before answering.
async fn receiver(behaviour: Behaviour) -> (String, Arc<Mutex<Vec<Received>>>) {
    let received = Arc::new(Mutex::new(Vec::new()));
    let app = Router::new()
        .route("/hook", post(hook))
        .with_state(Receiver {
            received: received.clone(),
            behaviour,
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), received)
}

fn settings(url: &str) -> WebhookSettings {
    let mut s = WebhookSettings::new(vec![url.into()], KEY.into(), SECRET.into());
    s.backoff_min = Duration::from_millis(10);
    s.backoff_max = Duration::from_millis(50);
    s
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_are_signed_and_verifiable() {
    let (url, received) = receiver(Arc::new(|_, _| (200, Duration::ZERO))).await;
    let n = WebhookNotifier::start(settings(&url)).unwrap();
    n.notify(event("room_started", "r1", ""));
    n.notify(event("participant_joined", "r1", "alice"));
    until("two deliveries", || n.stats().sent == 2).await;
    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), 2);
    let now = unix_secs();
    let mut ids = Vec::new();
    for r in &got {
        assert_eq!(r.headers["content-type"], CONTENT_TYPE_WEBHOOK);
        assert_eq!(r.headers["user-agent"], "LiveKit");
        let auth = r.headers["authorization"].to_str().unwrap();
        let claims = verifier().verify(auth).unwrap();
        assert_eq!(claims.sha256.unwrap(), body_sha256(&r.body));
        let ev = r.event();
        assert!(ev.id.starts_with("EV_"), "{}", ev.id);
        assert!((now - ev.created_at).abs() <= 5, "{}", ev.created_at);
        ids.push(ev.id);
    }
    assert_ne!(ids[0], ids[1]);
    assert_eq!(got[0].event().event, "room_started");
    assert_eq!(got[1].event().event, "participant_joined");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_room_in_order_rooms_independent() {
    // Room "slow" takes 100 ms per delivery; room "fast" answers at once.
    let (url, received) = receiver(Arc::new(|ev, _| {
        let slow = ev.room.as_ref().is_some_and(|r| r.name == "slow");
        (200, Duration::from_millis(if slow { 100 } else { 0 }))
    }))
    .await;
    let n = WebhookNotifier::start(settings(&url)).unwrap();
    for i in 0..10 {
        n.notify(event("participant_joined", "slow", &format!("p{i}")));
        n.notify(event("participant_joined", "fast", &format!("p{i}")));
    }
    until("twenty deliveries", || n.stats().sent == 20).await;
    let got = received.lock().unwrap().clone();
    for room in ["slow", "fast"] {
        let order: Vec<String> = got
            .iter()
            .map(Received::event)
            .filter(|e| e.room.as_ref().unwrap().name == room)
            .map(|e| e.participant.unwrap().identity)
            .collect();
        let expected: Vec<String> = (0..10).map(|i| format!("p{i}")).collect();
        assert_eq!(order, expected, "room {room}");
    }
    // The slow room did not hold the fast one back.
    let last_fast = got
        .iter()
        .filter(|r| r.event().room.unwrap().name == "fast")
        .map(|r| r.at)
        .max()
        .unwrap();
    let slow: Vec<Instant> = got
        .iter()
        .filter(|r| r.event().room.unwrap().name == "slow")
        .map(|r| r.at)
        .collect();
    assert!(last_fast < slow[3], "fast room waited for the slow one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_retried_in_order() {
    // The first event fails twice with 500; the second must wait for it.
    let (url, received) = receiver(Arc::new(|ev, nth| {
        let first = ev.participant.as_ref().is_some_and(|p| p.identity == "a");
        (if first && nth <= 2 { 500 } else { 200 }, Duration::ZERO)
    }))
    .await;
    let n = WebhookNotifier::start(settings(&url)).unwrap();
    n.notify(event("participant_joined", "r", "a"));
    n.notify(event("participant_joined", "r", "b"));
    until("two deliveries", || n.stats().sent == 2).await;
    let identities: Vec<String> = received
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.event().participant.unwrap().identity)
        .collect();
    assert_eq!(identities, ["a", "a", "a", "b"]);
    let stats = n.stats();
    assert_eq!(stats.failures, 2);
    assert_eq!(stats.dropped(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_receiver_is_retried_after_timeout() {
    let (url, received) = receiver(Arc::new(|_, nth| {
        (200, Duration::from_millis(if nth == 1 { 2000 } else { 0 }))
    }))
    .await;
    let mut s = settings(&url);
    s.request_timeout = Duration::from_millis(200);
    let n = WebhookNotifier::start(s).unwrap();
    n.notify(event("room_started", "r", ""));
    until("a delivery", || n.stats().sent == 1).await;
    assert_eq!(n.stats().failures, 1);
    assert_eq!(received.lock().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gives_up_after_max_age_and_counts() {
    let (url, received) = receiver(Arc::new(|_, _| (503, Duration::ZERO))).await;
    let mut s = settings(&url);
    s.max_age = Duration::from_millis(300);
    let n = WebhookNotifier::start(s).unwrap();
    n.notify(event("room_started", "r", ""));
    until("the drop", || n.stats().dropped_max_age == 1).await;
    let attempts = received.lock().unwrap().len();
    assert!(attempts >= 3, "only {attempts} attempts");
    assert_eq!(n.stats().sent, 0);
    assert_eq!(n.stats().failures as usize, attempts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_are_not_retried() {
    let (url, received) = receiver(Arc::new(|_, _| (400, Duration::ZERO))).await;
    let n = WebhookNotifier::start(settings(&url)).unwrap();
    n.notify(event("room_started", "r", ""));
    until("the drop", || n.stats().dropped_rejected == 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(received.lock().unwrap().len(), 1);
}

#[tokio::test(flavor = "current_thread")]
async fn full_queue_drops_without_blocking_and_counts() {
    let (url, received) = receiver(Arc::new(|_, _| (200, Duration::ZERO))).await;
    let mut s = settings(&url);
    s.queue_size = 2;
    let n = WebhookNotifier::start(s).unwrap();
    // On a current-thread runtime nothing is dequeued until we yield.
    let started = Instant::now();
    for i in 0..5 {
        n.notify(event("participant_joined", "r", &format!("p{i}")));
    }
    assert!(started.elapsed() < Duration::from_millis(100));
    assert_eq!(n.stats().dropped_queue_full, 3);
    until("the queued two", || n.stats().sent == 2).await;
    let identities: Vec<String> = received
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.event().participant.unwrap().identity)
        .collect();
    assert_eq!(identities, ["p0", "p1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_room_queue_drops_and_counts() {
    // The receiver holds the first delivery for a while; the room queue holds 2.
    let (url, _received) = receiver(Arc::new(|_, _| (200, Duration::from_millis(300)))).await;
    let mut s = settings(&url);
    s.room_queue_size = 2;
    let n = WebhookNotifier::start(s).unwrap();
    n.notify(event("participant_joined", "r", "p0"));
    tokio::time::sleep(Duration::from_millis(100)).await; // p0 is in flight
    for i in 1..6 {
        n.notify(event("participant_joined", "r", &format!("p{i}")));
    }
    until("drops", || n.stats().dropped_room_queue_full == 3).await;
    until("the rest", || n.stats().sent == 3).await;
}
