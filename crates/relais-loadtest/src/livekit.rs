//! A simulated LiveKit participant: the `/rtc` WebSocket (binary protobuf,
//! dual peer connection), a subscriber PC that answers the server's offers and
//! a publisher PC that publishes with `AddTrackRequest` + offer (msid track id =
//! cid). Every wait is bounded; failures end up in the [`Report`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use relais_auth::{AccessToken, VideoGrant};
use relais_proto::livekit::{
    signal_request, signal_response, AddTrackRequest, DisconnectReason, LeaveRequest, Ping,
    SessionDescription, SignalRequest, SignalResponse, SubscribedQualityUpdate, TrackSource,
    TrackType, VideoLayer, VideoQuality,
};
use str0m::change::SdpPendingOffer;
use str0m::media::{MediaKind, Mid};
use tokio::time::{sleep_until, timeout};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::media::Encoder;
use crate::peer::{readable, Outgoing, Peer};
use crate::stats::{Failure, Report};
use crate::{Ctx, Spec};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn fail(report: &mut Report, f: Failure, detail: impl Into<String>) {
    if report.failure.is_none() {
        report.failure = Some(f);
        report.failure_detail = Some(detail.into());
    }
}

pub fn token(ctx: &Ctx, spec: &Spec) -> anyhow::Result<String> {
    let grant = VideoGrant {
        room_join: Some(true),
        room: spec.room.clone(),
        can_publish: Some(spec.video || spec.audio),
        can_subscribe: Some(spec.subscribe),
        ..Default::default()
    };
    Ok(
        AccessToken::new(ctx.api_key.clone(), ctx.api_secret.clone())
            .with_identity(spec.identity.clone())
            .with_ttl(Duration::from_secs(3600))
            .with_grant(grant)
            .to_jwt()?,
    )
}

async fn send(ws: &mut Ws, m: signal_request::Message) -> bool {
    let req = SignalRequest { message: Some(m) };
    let fut = ws.send(Message::Binary(req.encode_to_vec().into()));
    matches!(timeout(Duration::from_secs(2), fut).await, Ok(Ok(())))
}

/// Local publishing state.
struct Publishing {
    peer: Peer,
    /// (cid, kind, rids, sid once published)
    tracks: Vec<(String, MediaKind, Vec<&'static str>, Option<String>)>,
    out: Vec<Outgoing>,
    /// Each published track's m-line, by track SID (for dynacast).
    mids: Vec<(String, Mid)>,
    pending: Option<SdpPendingOffer>,
    offer_id: u32,
    offered: bool,
}

impl Publishing {
    /// Like an SDK with dynacast: stop encoding the simulcast layers nobody
    /// receives; a layer that comes back starts on a keyframe.
    fn apply_dynacast(&mut self, update: &SubscribedQualityUpdate) {
        let Some(&(_, mid)) = self.mids.iter().find(|(sid, _)| *sid == update.track_sid) else {
            return;
        };
        for quality in &update.subscribed_qualities {
            let Some(rid) = usize::try_from(quality.quality)
                .ok()
                .and_then(|q| SIMULCAST_RIDS.get(q))
            else {
                continue;
            };
            let layer = |o: &&mut Outgoing| o.mid == mid && o.rid.is_some_and(|r| &*r == *rid);
            for o in self.out.iter_mut().filter(layer) {
                if quality.enabled && !o.enabled {
                    o.encoder.force_keyframe = true;
                }
                o.enabled = quality.enabled;
            }
        }
    }
}

/// Simulcast layers low to high, as livekit-client names them (LOW, MEDIUM, HIGH).
const SIMULCAST_RIDS: [&str; 3] = ["q", "h", "f"];

pub async fn run(ctx: Arc<Ctx>, spec: Spec) -> Report {
    let mut report = Report {
        subscriber: spec.subscribe,
        ..Default::default()
    };
    let shared = ctx.shared.clone();
    let start = Instant::now();
    let jwt = match token(&ctx, &spec) {
        Ok(t) => t,
        Err(e) => {
            fail(&mut report, Failure::Other, format!("token: {e}"));
            return report;
        }
    };
    let url = format!(
        "{}/rtc?access_token={jwt}&auto_subscribe={}&sdk=rust&version=0.1.0&protocol=16&adaptive_stream=0",
        ctx.url.trim_end_matches('/'),
        if spec.subscribe { 1 } else { 0 }
    );
    // tungstenite zeroes its whole read buffer (128 KiB by default) before every
    // read, and the loop below polls the socket on each of its wake-ups: with
    // the default that was half of the load generator's CPU.
    let ws_config = WebSocketConfig::default().read_buffer_size(4096);
    let connect = tokio_tungstenite::connect_async_with_config(url, Some(ws_config), false);
    let mut ws = match timeout(ctx.join_timeout, connect).await {
        Err(_) => {
            fail(&mut report, Failure::Timeout, "websocket connect");
            Shared::add(&shared.joins_failed, 1);
            return report;
        }
        Ok(Err(tungstenite::Error::Http(resp))) => {
            fail(
                &mut report,
                Failure::Refused,
                format!("HTTP {}", resp.status()),
            );
            Shared::add(&shared.joins_failed, 1);
            return report;
        }
        Ok(Err(e)) => {
            fail(&mut report, Failure::Dropped, format!("websocket: {e}"));
            Shared::add(&shared.joins_failed, 1);
            return report;
        }
        Ok(Ok((ws, _))) => ws,
    };

    // The first frame must be the join.
    let remaining = ctx.join_timeout.saturating_sub(start.elapsed());
    let mut first = None;
    match timeout(remaining, next_signal(&mut ws)).await {
        Err(_) => fail(&mut report, Failure::Timeout, "no JoinResponse"),
        Ok(Err(detail)) => fail(&mut report, Failure::Dropped, detail),
        Ok(Ok(resp)) => match resp.message {
            Some(signal_response::Message::Join(_)) => {
                report.join_ms = Some(start.elapsed().as_secs_f64() * 1e3);
            }
            Some(signal_response::Message::Leave(l)) => fail(
                &mut report,
                Failure::Refused,
                format!("leave {:?}", l.reason()),
            ),
            other => {
                first = other;
                fail(&mut report, Failure::Other, "first frame is not a join");
            }
        },
    }
    let _ = first;
    if report.failure.is_some() {
        Shared::add(&shared.joins_failed, 1);
        let _ = timeout(Duration::from_secs(1), ws.close(None)).await;
        return report;
    }
    Shared::add(&shared.joins_ok, 1);

    let now = Instant::now();
    let counting = (spec.subscribe && !spec.decode).then_some(&ctx.counting);
    let mut sub = match Peer::new(ctx.local_ip, ctx.receive_buffer, now, counting) {
        Ok(p) => Some(p),
        Err(e) => {
            fail(&mut report, Failure::Other, format!("socket: {e}"));
            None
        }
    };
    let mut publishing = None;
    if spec.video || spec.audio {
        match Peer::new(ctx.local_ip, ctx.receive_buffer, now, None) {
            Ok(peer) => {
                let mut tracks = Vec::new();
                if spec.video {
                    let rids = if ctx.simulcast {
                        SIMULCAST_RIDS.to_vec()
                    } else {
                        vec![]
                    };
                    tracks.push((format!("v-{}", spec.identity), MediaKind::Video, rids, None));
                }
                if spec.audio {
                    tracks.push((
                        format!("a-{}", spec.identity),
                        MediaKind::Audio,
                        vec![],
                        None,
                    ));
                }
                for (cid, kind, rids, _) in &tracks {
                    let video = *kind == MediaKind::Video;
                    let layers = rids
                        .iter()
                        .enumerate()
                        .map(|(i, rid)| VideoLayer {
                            quality: [VideoQuality::Low, VideoQuality::Medium, VideoQuality::High]
                                [i] as i32,
                            width: 320 << i,
                            height: 180 << i,
                            bitrate: (ctx.video_bitrate >> (2 * (2 - i))) as u32,
                            rid: rid.to_string(),
                            ..Default::default()
                        })
                        .collect();
                    let req = AddTrackRequest {
                        cid: cid.clone(),
                        name: if video { "camera" } else { "microphone" }.into(),
                        r#type: if video {
                            TrackType::Video
                        } else {
                            TrackType::Audio
                        } as i32,
                        source: if video {
                            TrackSource::Camera
                        } else {
                            TrackSource::Microphone
                        } as i32,
                        width: if video { 1280 } else { 0 },
                        height: if video { 720 } else { 0 },
                        layers,
                        ..Default::default()
                    };
                    if !send(&mut ws, signal_request::Message::AddTrack(req)).await {
                        fail(&mut report, Failure::Dropped, "send add_track");
                    }
                }
                publishing = Some(Publishing {
                    peer,
                    tracks,
                    out: Vec::new(),
                    mids: Vec::new(),
                    pending: None,
                    offer_id: 0,
                    offered: false,
                });
            }
            Err(e) => fail(&mut report, Failure::Other, format!("socket: {e}")),
        }
    }

    let mut buf = vec![0u8; 2048];
    let mut next_ping = Instant::now() + Duration::from_secs(5);
    let connect_deadline = Instant::now() + ctx.connect_timeout;
    let mut connected_recorded = false;
    let mut next_media: Option<Instant> = None;
    let mut outbox: Vec<signal_request::Message> = Vec::new();
    let mut server_left = false;
    loop {
        let now = Instant::now();
        if now >= ctx.end {
            break;
        }
        let mut wake = ctx.end.min(next_ping);
        if !connected_recorded {
            wake = wake.min(connect_deadline);
        }
        if let Some(p) = &sub {
            wake = wake.min(p.deadline);
        }
        if let Some(p) = &publishing {
            wake = wake.min(p.peer.deadline);
        }
        if let Some(t) = next_media {
            wake = wake.min(t);
        }
        let pub_peer = publishing.as_ref().map(|p| &p.peer);
        // In this order, and no further than the first that is ready: most
        // wake-ups are a datagram, and polling the WebSocket and arming the
        // timer for each (as an unbiased select does at random) cost the load
        // generator several per cent of its CPU. The WebSocket waits only
        // while a socket stays readable from one turn to the next, which at
        // these rates (hundreds of datagrams a second, up to 64 read a turn)
        // means the task is far behind.
        let result: Result<(), String> = tokio::select! {
            biased;
            _ = readable(sub.as_ref()) => {
                sub.as_mut().map_or(Ok(()), |p| p.receive_ready(&mut buf, &shared).map_err(|e| e.to_string()))
            },
            _ = readable(pub_peer) => {
                publishing.as_mut().map_or(Ok(()), |p| p.peer.receive_ready(&mut buf, &shared).map_err(|e| e.to_string()))
            },
            _ = sleep_until(wake.into()) => Ok(()),
            msg = next_signal(&mut ws) => match msg {
                Ok(resp) => on_signal(resp, &ctx, &mut sub, &mut publishing, &mut outbox, &mut server_left),
                Err(e) => { server_left = true; Err(e) }
            },
        };
        if let Err(e) = result {
            fail(&mut report, Failure::Dropped, e);
            break;
        }
        // Timers and media.
        let now = Instant::now();
        if let Some(p) = sub.as_mut() {
            if let Err(e) = p.timeout(now, &shared) {
                fail(&mut report, Failure::Other, e.to_string());
                break;
            }
        }
        if let Some(p) = publishing.as_mut() {
            if let Err(e) = p.peer.timeout(now, &shared) {
                fail(&mut report, Failure::Other, e.to_string());
                break;
            }
            match p.peer.send_due(now, &mut p.out, &shared, &mut report) {
                Ok(n) => next_media = n,
                Err(e) => {
                    fail(&mut report, Failure::Other, e.to_string());
                    break;
                }
            }
            for mid in p.peer.take_events(&shared, &mut report) {
                for o in p.out.iter_mut().filter(|o| o.mid == mid) {
                    o.encoder.force_keyframe = true;
                }
            }
        }
        if let Some(p) = sub.as_mut() {
            p.take_events(&shared, &mut report);
        }
        if !connected_recorded {
            let up = if spec.subscribe {
                sub.as_ref().is_some_and(|p| p.connected)
            } else {
                publishing.as_ref().is_some_and(|p| p.peer.connected)
                    || sub.as_ref().is_some_and(|p| p.connected)
            };
            if up {
                connected_recorded = true;
                report.connect_ms = Some(start.elapsed().as_secs_f64() * 1e3);
                Shared::add(&shared.connected, 1);
            } else if now >= connect_deadline {
                connected_recorded = true;
                fail(
                    &mut report,
                    Failure::MediaTimeout,
                    "peer connection not connected",
                );
            }
        }
        if now >= next_ping {
            next_ping = now + Duration::from_secs(5);
            outbox.push(signal_request::Message::PingReq(Ping {
                timestamp: crate::media::unix_micros() as i64 / 1000,
                rtt: 0,
            }));
        }
        for m in outbox.drain(..) {
            if !send(&mut ws, m).await {
                fail(&mut report, Failure::Dropped, "signal send failed");
                server_left = true;
                break;
            }
        }
        if server_left {
            break;
        }
    }
    if !server_left {
        let leave = LeaveRequest {
            reason: DisconnectReason::ClientInitiated as i32,
            ..Default::default()
        };
        let _ = send(&mut ws, signal_request::Message::Leave(leave)).await;
        let _ = timeout(Duration::from_secs(1), ws.close(None)).await;
    }
    if publishing
        .as_ref()
        .is_some_and(|p| p.out.iter().any(|o| o.ssrc.is_some()))
    {
        Shared::add(&shared.published, 1);
    }
    report
}

/// The next server message, skipping pings and text; Err when the socket ends.
async fn next_signal(ws: &mut Ws) -> Result<SignalResponse, String> {
    loop {
        match ws.next().await {
            None => return Err("websocket closed".into()),
            Some(Err(e)) => return Err(format!("websocket: {e}")),
            Some(Ok(Message::Binary(b))) => {
                return SignalResponse::decode(b.as_ref()).map_err(|e| format!("decode: {e}"))
            }
            Some(Ok(Message::Close(_))) => return Err("websocket closed by server".into()),
            Some(Ok(_)) => continue,
        }
    }
}

fn on_signal(
    resp: SignalResponse,
    ctx: &Ctx,
    sub: &mut Option<Peer>,
    publishing: &mut Option<Publishing>,
    outbox: &mut Vec<signal_request::Message>,
    server_left: &mut bool,
) -> Result<(), String> {
    use signal_response::Message as M;
    let shared = &ctx.shared;
    let Some(m) = resp.message else {
        return Ok(());
    };
    match m {
        M::Offer(sd) => {
            let Some(p) = sub.as_mut() else {
                return Ok(());
            };
            let answer = p.accept_offer(&sd.sdp, shared).map_err(|e| e.to_string())?;
            outbox.push(signal_request::Message::Answer(SessionDescription {
                r#type: "answer".into(),
                sdp: answer,
                id: sd.id,
                ..Default::default()
            }));
        }
        M::Answer(sd) => {
            let Some(p) = publishing.as_mut() else {
                return Ok(());
            };
            if let Some(pending) = p.pending.take() {
                p.peer
                    .accept_answer(pending, &sd.sdp, shared)
                    .map_err(|e| e.to_string())?;
                p.peer.bind_outgoing(&mut p.out);
            }
        }
        M::Trickle(t) => {
            let v: serde_json::Value = serde_json::from_str(&t.candidate_init).unwrap_or_default();
            if let Some(c) = v.get("candidate").and_then(|c| c.as_str()) {
                let peer = if t.target == 1 {
                    sub.as_mut()
                } else {
                    publishing.as_mut().map(|p| &mut p.peer)
                };
                if let Some(peer) = peer {
                    peer.add_remote_candidate(c);
                }
            }
        }
        M::TrackPublished(r) => {
            let Some(p) = publishing.as_mut() else {
                return Ok(());
            };
            if let Some(t) = p.tracks.iter_mut().find(|t| t.0 == r.cid) {
                t.3 = Some(r.track.map(|t| t.sid).unwrap_or_default());
            }
            if !p.offered && p.tracks.iter().all(|t| t.3.is_some()) {
                p.offered = true;
                let media: Vec<(MediaKind, String, Vec<&str>)> = p
                    .tracks
                    .iter()
                    .map(|(cid, kind, rids, _)| (*kind, cid.clone(), rids.clone()))
                    .collect();
                let stream = format!("s-{}", p.tracks[0].0);
                let made = p
                    .peer
                    .offer_media(&media, &stream, shared)
                    .map_err(|e| e.to_string())?;
                if let Some((sdp, pending, mids)) = made {
                    let now = Instant::now();
                    for ((_, kind, rids, sid), mid) in p.tracks.iter().zip(mids) {
                        if let Some(sid) = sid {
                            p.mids.push((sid.clone(), mid));
                        }
                        if *kind == MediaKind::Audio {
                            let tag = ctx.next_tag();
                            p.out.push(Outgoing::new(
                                mid,
                                None,
                                Encoder::audio(tag, ctx.audio_bitrate),
                                now,
                            ));
                        } else if rids.is_empty() {
                            let e = ctx.video_encoder(ctx.video_bitrate);
                            p.out.push(Outgoing::new(mid, None, e, now));
                        } else {
                            for (i, rid) in rids.iter().enumerate() {
                                let rate = ctx.video_bitrate >> (2 * (rids.len() - 1 - i));
                                let e = ctx.video_encoder(rate);
                                p.out.push(Outgoing::new(mid, Some(rid), e, now));
                            }
                        }
                    }
                    p.pending = Some(pending);
                    p.offer_id += 1;
                    outbox.push(signal_request::Message::Offer(SessionDescription {
                        r#type: "offer".into(),
                        sdp,
                        id: p.offer_id,
                        ..Default::default()
                    }));
                }
            }
        }
        M::SubscribedQualityUpdate(update) => {
            if let Some(p) = publishing.as_mut() {
                p.apply_dynacast(&update);
            }
        }
        M::Leave(l) => {
            *server_left = true;
            return Err(format!("server leave {:?}", l.reason()));
        }
        _ => {}
    }
    Ok(())
}

use crate::stats::Shared;

#[cfg(test)]
mod tests {
    use super::*;
    use relais_proto::livekit::SubscribedQuality;

    #[tokio::test]
    async fn dynacast_stops_and_restarts_simulcast_layers() {
        let now = Instant::now();
        let peer = Peer::new("127.0.0.1".parse().unwrap(), None, now, None).unwrap();
        let mid = Mid::from("v0");
        let out = SIMULCAST_RIDS
            .iter()
            .map(|rid| {
                let mut e = Encoder::video(1, 1_000_000, Duration::from_secs(2), 0.0);
                e.force_keyframe = false;
                Outgoing::new(mid, Some(rid), e, now)
            })
            .collect();
        let mut p = Publishing {
            peer,
            tracks: Vec::new(),
            out,
            mids: vec![("TR_v".to_string(), mid)],
            pending: None,
            offer_id: 0,
            offered: true,
        };
        let update = |enabled: [bool; 3]| SubscribedQualityUpdate {
            track_sid: "TR_v".into(),
            subscribed_qualities: (0..3)
                .map(|q| SubscribedQuality {
                    quality: q,
                    enabled: enabled[q as usize],
                })
                .collect(),
            ..Default::default()
        };
        let state = |p: &Publishing| -> Vec<(bool, bool)> {
            p.out
                .iter()
                .map(|o| (o.enabled, o.encoder.force_keyframe))
                .collect()
        };

        p.apply_dynacast(&update([true, false, false]));
        assert_eq!(state(&p), [(true, false), (false, false), (false, false)]);
        // Back on: the layers that return start with a keyframe.
        p.apply_dynacast(&update([true, true, true]));
        assert_eq!(state(&p), [(true, false), (true, true), (true, true)]);
        // Another track's update changes nothing.
        let mut other = update([false, false, false]);
        other.track_sid = "TR_other".into();
        p.apply_dynacast(&other);
        assert!(p.out.iter().all(|o| o.enabled));
    }
}
