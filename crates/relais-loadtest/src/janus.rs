//! The same simulated participants against Janus's VideoRoom plugin over its
//! HTTP API: a session per participant, events on a long poll, publishers
//! `join` + `configure` with an offer, subscribers `join` (multistream, every
//! publisher feed of the room) and `start` with the answer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use str0m::media::MediaKind;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, timeout};

use crate::media::Encoder;
use crate::peer::{readable, Outgoing, Peer};
use crate::stats::{Failure, Report, Shared};
use crate::{Ctx, Spec};

pub type Http = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> Http {
    let mut conn = HttpConnector::new();
    conn.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(4096)
        .build(conn)
}

/// Publisher feed ids per Janus room, for subscribers to wait on.
#[derive(Default)]
pub struct Feeds {
    rooms: Mutex<HashMap<u64, Vec<u64>>>,
}

impl Feeds {
    fn add(&self, room: u64, feed: u64) {
        self.rooms
            .lock()
            .unwrap()
            .entry(room)
            .or_default()
            .push(feed);
    }
    fn get(&self, room: u64) -> Vec<u64> {
        self.rooms
            .lock()
            .unwrap()
            .get(&room)
            .cloned()
            .unwrap_or_default()
    }
}

static TX: AtomicU64 = AtomicU64::new(1);

fn tx() -> String {
    format!("t{}", TX.fetch_add(1, Ordering::Relaxed))
}

async fn request(
    http: &Http,
    method: &str,
    url: &str,
    body: Option<Value>,
) -> Result<Value, String> {
    let req = hyper::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            body.map(|b| b.to_string()).unwrap_or_default(),
        )))
        .map_err(|e| e.to_string())?;
    let resp = http.request(req).await.map_err(|e| format!("http: {e}"))?;
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("http body: {e}"))?
        .to_bytes();
    if !status.is_success() {
        return Err(format!("HTTP {status}"));
    }
    serde_json::from_slice(&bytes).map_err(|e| format!("json: {e}"))
}

async fn post(
    http: &Http,
    url: &str,
    mut body: Value,
    limit: Duration,
) -> Result<Value, (Failure, String)> {
    body["transaction"] = json!(tx());
    match timeout(limit, request(http, "POST", url, Some(body))).await {
        Err(_) => Err((Failure::Timeout, format!("POST {url}"))),
        Ok(Err(e)) => Err((Failure::Dropped, e)),
        Ok(Ok(v)) if v["janus"] == "error" => Err((Failure::Refused, v["error"].to_string())),
        Ok(Ok(v)) => Ok(v),
    }
}

/// Long-poll a session's events into a channel until the receiver goes away.
fn spawn_poller(http: Http, url: String) -> (mpsc::Receiver<Value>, tokio::task::JoinHandle<()>) {
    let (txc, rx) = mpsc::channel(64);
    let h = tokio::spawn(async move {
        loop {
            let got = timeout(
                Duration::from_secs(40),
                request(&http, "GET", &format!("{url}?maxev=10"), None),
            )
            .await;
            let v = match got {
                Ok(Ok(v)) => v,
                _ => {
                    // Tell the participant the event stream died, then stop.
                    let _ = txc.send(json!({"janus": "poll-failed"})).await;
                    return;
                }
            };
            let events = match v {
                Value::Array(a) => a,
                other => vec![other],
            };
            for e in events {
                if txc.send(e).await.is_err() {
                    return;
                }
            }
        }
    });
    (rx, h)
}

/// Wait for a plugin event (or a JSEP) matching `want`, bounded by `limit`.
async fn wait_event(
    rx: &mut mpsc::Receiver<Value>,
    limit: Duration,
    want: impl Fn(&Value) -> bool,
) -> Result<Value, (Failure, String)> {
    let end = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(end, rx.recv()).await {
            Err(_) => return Err((Failure::Timeout, "no Janus event".into())),
            Ok(None) => return Err((Failure::Dropped, "event stream ended".into())),
            Ok(Some(e)) => {
                if e["janus"] == "poll-failed" {
                    return Err((Failure::Dropped, "long poll failed".into()));
                }
                if let Some(err) = e["plugindata"]["data"].get("error") {
                    return Err((Failure::Refused, err.to_string()));
                }
                if want(&e) {
                    return Ok(e);
                }
            }
        }
    }
}

pub async fn run(ctx: Arc<Ctx>, spec: Spec, room: u64, feeds: Arc<Feeds>, http: Http) -> Report {
    let mut report = Report {
        subscriber: spec.subscribe,
        ..Default::default()
    };
    let start = Instant::now();
    let mut session_url = None;
    let mut poller = None;
    let r = run_inner(
        &ctx,
        &spec,
        room,
        &feeds,
        &http,
        &mut report,
        start,
        &mut session_url,
        &mut poller,
    )
    .await;
    if let Err((f, detail)) = r {
        if report.failure.is_none() {
            report.failure = Some(f);
            report.failure_detail = Some(detail);
        }
        if report.join_ms.is_none() {
            Shared::add(&ctx.shared.joins_failed, 1);
        }
    }
    if let Some(url) = session_url {
        let _ = post(
            &http,
            &url,
            json!({"janus": "destroy"}),
            Duration::from_secs(2),
        )
        .await;
    }
    if let Some(p) = poller {
        p.abort();
    }
    report
}

#[allow(clippy::too_many_arguments)]
async fn run_inner(
    ctx: &Arc<Ctx>,
    spec: &Spec,
    room: u64,
    feeds: &Feeds,
    http: &Http,
    report: &mut Report,
    start: Instant,
    session_url: &mut Option<String>,
    poller: &mut Option<tokio::task::JoinHandle<()>>,
) -> Result<(), (Failure, String)> {
    let shared = &ctx.shared;
    let base = ctx.url.trim_end_matches('/').to_string();
    let limit = ctx.join_timeout;
    let v = post(http, &base, json!({"janus": "create"}), limit).await?;
    let session = v["data"]["id"]
        .as_u64()
        .ok_or((Failure::Other, "no session id".to_string()))?;
    let surl = format!("{base}/{session}");
    *session_url = Some(surl.clone());
    let (mut events, h) = spawn_poller(http.clone(), surl.clone());
    *poller = Some(h);
    let v = post(
        http,
        &surl,
        json!({"janus": "attach", "plugin": "janus.plugin.videoroom"}),
        limit,
    )
    .await?;
    let handle = v["data"]["id"]
        .as_u64()
        .ok_or((Failure::Other, "no handle id".to_string()))?;
    let hurl = format!("{surl}/{handle}");
    let message = |body: Value, jsep: Option<Value>| {
        let mut m = json!({"janus": "message", "body": body});
        if let Some(j) = jsep {
            m["jsep"] = j;
        }
        m
    };
    let now = Instant::now();
    let counting = (spec.subscribe && !spec.decode).then_some(&ctx.counting);
    let mut peer = Peer::new(ctx.local_ip, ctx.receive_buffer, now, counting)
        .map_err(|e| (Failure::Other, e.to_string()))?;
    let mut out: Vec<Outgoing> = Vec::new();
    let publisher = spec.video || spec.audio;
    if publisher {
        // Make sure the room exists (427 "already exists" is fine).
        let create = json!({"request": "create", "room": room, "publishers": 1000,
            "bitrate": 0, "audiocodec": "opus", "videocodec": "vp8", "fir_freq": 0});
        match post(http, &hurl, message(create, None), limit).await {
            Ok(_) | Err((Failure::Refused, _)) => {}
            Err(e) => return Err(e),
        }
        let join = json!({"request": "join", "ptype": "publisher", "room": room, "display": spec.identity});
        post(http, &hurl, message(join, None), limit).await?;
        let joined = wait_event(&mut events, limit, |e| {
            e["plugindata"]["data"]["videoroom"] == "joined"
        })
        .await?;
        let feed = joined["plugindata"]["data"]["id"].as_u64().unwrap_or(0);
        report.join_ms = Some(start.elapsed().as_secs_f64() * 1e3);
        Shared::add(&shared.joins_ok, 1);
        let mut media: Vec<(MediaKind, String, Vec<&str>)> = Vec::new();
        if spec.audio {
            media.push((MediaKind::Audio, format!("a-{}", spec.identity), vec![]));
        }
        if spec.video {
            let rids = if ctx.simulcast {
                vec!["q", "h", "f"]
            } else {
                vec![]
            };
            media.push((MediaKind::Video, format!("v-{}", spec.identity), rids));
        }
        let (sdp, pending, mids) = peer
            .offer_media(&media, &format!("s-{}", spec.identity), shared)
            .map_err(|e| (Failure::Other, e.to_string()))?
            .ok_or((Failure::Other, "nothing to offer".to_string()))?;
        for ((kind, _, rids), mid) in media.iter().zip(mids) {
            if *kind == MediaKind::Audio {
                out.push(Outgoing::new(
                    mid,
                    None,
                    Encoder::audio(ctx.next_tag(), ctx.audio_bitrate),
                    now,
                ));
            } else if rids.is_empty() {
                let e = ctx.video_encoder(ctx.video_bitrate);
                out.push(Outgoing::new(mid, None, e, now));
            } else {
                for (i, rid) in rids.iter().enumerate() {
                    let rate = ctx.video_bitrate >> (2 * (rids.len() - 1 - i));
                    let e = ctx.video_encoder(rate);
                    out.push(Outgoing::new(mid, Some(rid), e, now));
                }
            }
        }
        let configure = json!({"request": "configure", "audio": spec.audio, "video": spec.video});
        post(
            http,
            &hurl,
            message(configure, Some(json!({"type": "offer", "sdp": sdp}))),
            limit,
        )
        .await?;
        let ev = wait_event(&mut events, limit, |e| e.get("jsep").is_some()).await?;
        let answer = ev["jsep"]["sdp"].as_str().unwrap_or_default().to_string();
        peer.accept_answer(pending, &answer, shared)
            .map_err(|e| (Failure::Other, e.to_string()))?;
        peer.bind_outgoing(&mut out);
        post(
            http,
            &hurl,
            json!({"janus": "trickle", "candidate": {"completed": true}}),
            limit,
        )
        .await?;
        feeds.add(room, feed);
    } else {
        // Wait (bounded) for the room's publishers to be configured.
        let until = Instant::now() + limit;
        let mut list = feeds.get(room);
        while list.len() < ctx.publishers_per_room && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(100)).await;
            list = feeds.get(room);
        }
        if list.is_empty() {
            return Err((
                Failure::Timeout,
                "no publisher feeds to subscribe to".into(),
            ));
        }
        let streams: Vec<Value> = list.iter().map(|f| json!({"feed": f})).collect();
        let join =
            json!({"request": "join", "ptype": "subscriber", "room": room, "streams": streams});
        post(http, &hurl, message(join, None), limit).await?;
        let ev = wait_event(&mut events, limit, |e| e.get("jsep").is_some()).await?;
        report.join_ms = Some(start.elapsed().as_secs_f64() * 1e3);
        Shared::add(&shared.joins_ok, 1);
        let offer = ev["jsep"]["sdp"].as_str().unwrap_or_default().to_string();
        let answer = peer
            .accept_offer(&offer, shared)
            .map_err(|e| (Failure::Other, e.to_string()))?;
        post(
            http,
            &hurl,
            message(
                json!({"request": "start"}),
                Some(json!({"type": "answer", "sdp": answer})),
            ),
            limit,
        )
        .await?;
        post(
            http,
            &hurl,
            json!({"janus": "trickle", "candidate": {"completed": true}}),
            limit,
        )
        .await?;
    }

    // Media loop.
    let mut buf = vec![0u8; 2048];
    let connect_deadline = Instant::now() + ctx.connect_timeout;
    let mut connected_recorded = false;
    let mut next_media: Option<Instant> = None;
    let some_peer = Some(peer);
    let mut peer_opt = some_peer;
    loop {
        let now = Instant::now();
        if now >= ctx.end {
            break;
        }
        let p = peer_opt.as_ref().expect("peer");
        let mut wake = ctx.end.min(p.deadline);
        if !connected_recorded {
            wake = wake.min(connect_deadline);
        }
        if let Some(t) = next_media {
            wake = wake.min(t);
        }
        // Datagrams first, as in the LiveKit mode (livekit::run).
        tokio::select! {
            biased;
            _ = readable(peer_opt.as_ref()) => {
                let p = peer_opt.as_mut().expect("peer");
                p.receive_ready(&mut buf, shared).map_err(|e| (Failure::Other, e.to_string()))?;
            }
            _ = sleep_until(wake.into()) => {}
            ev = events.recv() => {
                match ev {
                    None => return Err((Failure::Dropped, "event stream ended".into())),
                    Some(e) if e["janus"] == "hangup" || e["janus"] == "poll-failed" => {
                        return Err((Failure::Dropped, format!("janus {}", e["janus"])));
                    }
                    Some(_) => {}
                }
            }
        }
        let p = peer_opt.as_mut().expect("peer");
        let now = Instant::now();
        p.timeout(now, shared)
            .map_err(|e| (Failure::Other, e.to_string()))?;
        if !out.is_empty() {
            next_media = p
                .send_due(now, &mut out, shared, report)
                .map_err(|e| (Failure::Other, e.to_string()))?;
        }
        for mid in p.take_events(shared, report) {
            for o in out.iter_mut().filter(|o| o.mid == mid) {
                o.encoder.force_keyframe = true;
            }
        }
        if !connected_recorded {
            if p.connected {
                connected_recorded = true;
                report.connect_ms = Some(start.elapsed().as_secs_f64() * 1e3);
                Shared::add(&shared.connected, 1);
            } else if now >= connect_deadline {
                connected_recorded = true;
                report.failure = Some(Failure::MediaTimeout);
                report.failure_detail = Some("peer connection not connected".into());
            }
        }
    }
    if out.iter().any(|o| o.ssrc.is_some()) {
        Shared::add(&shared.published, 1);
    }
    Ok(())
}
