//! What a participant's signal requests do to its room: offers and answers,
//! published tracks, mutes, metadata, subscriptions and track settings, and
//! the subscriber renegotiations they lead to.

use std::collections::BTreeMap;
use std::time::Instant;

use relais_proto::ids;
use relais_proto::limits::LimitExceeded;
use relais_proto::livekit::{
    request_response, signal_request, signal_response, AddTrackRequest, DisconnectReason,
    MuteTrackRequest, RequestResponse, SessionDescription, SignalRequest, SignalTarget,
    SimulcastCodecInfo, SubscriptionError, SubscriptionResponse, TrackInfo, TrackPublishedResponse,
    TrackSource, TrackType, TrickleRequest, UpdateParticipantMetadata, UpdateSubscription,
    UpdateTrackSettings, VideoQuality,
};
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::channel::{ChannelConfig, Reliability};
use str0m::media::{Direction, MediaKind, Mid};
use tracing::{debug, warn};

use crate::forward::TrackForwarder;
use crate::participant::{Downtrack, ParticipantKey, PeerRole, SubscriberChange};
use crate::sdp_order;
use crate::twcc::{self, TransportFeedback};

use super::{apply_attributes, Room, Subscription, MAX_PENDING_TRACKS};

/// Queued offers made in one turn of a room's timeout: an offer to a
/// subscriber (str0m's SDP, its text, the trickled candidate) takes ~25 µs,
/// and the 400 of a track unpublished in a room of 400 took 10 ms at once.
const OFFERS_PER_TURN: usize = 16;

impl Room {
    /// Handle one message from a participant's WebSocket. Pings are answered at
    /// the edge and never reach the room.
    pub fn handle_signal(&mut self, now: Instant, key: ParticipantKey, req: SignalRequest) {
        let Some(span) = self.participants.get(&key).map(|p| p.span.clone()) else {
            return;
        };
        let _span = span.enter();
        let Some(message) = req.message else {
            return;
        };
        use signal_request::Message as M;
        match message {
            M::Offer(sd) => self.on_publisher_offer(now, key, sd),
            M::Answer(sd) => self.on_subscriber_answer(now, key, sd),
            M::Trickle(_) => {
                // ICE-lite: we learn the client's addresses from its checks.
            }
            M::AddTrack(req) => self.on_add_track(key, req),
            M::Mute(req) => self.on_mute(key, req),
            M::Subscription(req) => self.on_update_subscription(now, key, req),
            M::Leave(_) => self.remove_participant(now, key, DisconnectReason::ClientInitiated),
            M::UpdateMetadata(req) => self.on_update_metadata(key, req),
            M::TrackSetting(settings) => self.on_track_settings(now, key, settings),
            M::UpdateLayers(_) | M::SubscriptionPermission(_) => {}
            M::SyncState(_) | M::Simulate(_) => {}
            M::Ping(_) | M::PingReq(_) => {}
            M::UpdateAudioTrack(_) | M::UpdateVideoTrack(_) => {}
            _ => {}
        }
        self.process_events(now);
    }

    fn on_publisher_offer(&mut self, now: Instant, key: ParticipantKey, sd: SessionDescription) {
        if self
            .participants
            .get(&key)
            .is_some_and(|p| p.publisher.is_none())
        {
            let session = self.open_session(now, key, PeerRole::Publisher);
            if let Some(p) = self.participants.get_mut(&key) {
                p.publisher = Some(session);
            }
        }
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        let Some(publisher) = p.publisher.as_mut() else {
            return;
        };
        tracing::trace!(participant = %p.info.identity, sdp = %sd.sdp, "publisher offer");
        let offer = match SdpOffer::from_sdp_string(&sd.sdp) {
            Ok(o) => o,
            Err(e) => {
                warn!(participant = %p.info.identity, error = %e, "unparsable publisher offer");
                self.remove_participant(now, key, DisconnectReason::StateMismatch);
                return;
            }
        };
        match publisher.rtc.sdp_api().accept_offer(offer) {
            Ok(answer) => {
                // The codec each new track asked for goes first in its m-line.
                let pending = &p.pending_tracks;
                let wanted = |track: &str| {
                    let (_, info) = pending.iter().find(|(cid, _)| cid == track)?;
                    let codec = info.codecs.first()?.mime_type.as_str();
                    Some(codec.rsplit('/').next().unwrap_or(codec).to_string())
                };
                let sdp = sdp_order::order_answer(&sd.sdp, &answer.to_sdp_string(), wanted);
                // Relais gives the publisher its congestion feedback.
                let sdp = twcc::answer_with_transport_cc(&sd.sdp, &sdp);
                if let (Some(id), Some(direct)) = (
                    twcc::offered_ext_id(&sd.sdp),
                    publisher.direct.as_deref_mut(),
                ) {
                    match &mut direct.feedback {
                        Some(feedback) => feedback.set_ext_id(id),
                        None => {
                            direct.feedback = Some(TransportFeedback::new(id, rand::random(), now))
                        }
                    }
                }
                let answer = SessionDescription {
                    r#type: "answer".into(),
                    sdp,
                    id: sd.id,
                    ..Default::default()
                };
                self.drain(now, key, PeerRole::Publisher);
                let first_mid = first_mid(&answer.sdp);
                self.signal(key, signal_response::Message::Answer(answer));
                self.trickle_candidates(key, SignalTarget::Publisher, first_mid);
            }
            Err(e) => {
                warn!(participant = %p.info.identity, error = %e, "rejected publisher offer");
                self.remove_participant(now, key, DisconnectReason::StateMismatch);
            }
        }
    }

    fn on_subscriber_answer(&mut self, now: Instant, key: ParticipantKey, sd: SessionDescription) {
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        let Some(pending) = p.negotiation.pending.take() else {
            debug!(participant = %p.info.identity, "subscriber answer without an offer");
            return;
        };
        let answer = match SdpAnswer::from_sdp_string(&sd.sdp) {
            Ok(a) => a,
            Err(e) => {
                warn!(participant = %p.info.identity, error = %e, "unparsable subscriber answer");
                self.remove_participant(now, key, DisconnectReason::StateMismatch);
                return;
            }
        };
        if let Err(e) = p.subscriber.rtc.sdp_api().accept_answer(pending, answer) {
            warn!(participant = %p.info.identity, error = %e, "rejected subscriber answer");
            self.remove_participant(now, key, DisconnectReason::StateMismatch);
            return;
        }
        // Sending streams exist now: learn their SSRCs.
        let mids: Vec<Mid> = p.downtracks.keys().copied().collect();
        for mid in mids {
            let ssrc = p
                .subscriber
                .rtc
                .direct_api()
                .stream_tx_by_mid(mid, None)
                .map(|s| s.ssrc());
            if let Some(d) = p.downtracks.get_mut(&mid) {
                if d.ssrc.is_none() && ssrc.is_some() {
                    d.ssrc = ssrc;
                }
            }
        }
        let again = std::mem::take(&mut p.negotiation.again);
        self.drain(now, key, PeerRole::Subscriber);
        // New receivers need a keyframe to start decoding — only they: an answer
        // also follows every renegotiation, and tracks already flowing to this
        // subscriber need none. Throttled like every request: when many join at
        // once, one keyframe serves them all instead of one keyframe each.
        let sids: Vec<String> = self.participants[&key]
            .downtracks
            .values()
            .map(|d| d.track_sid.clone())
            .filter(|sid| {
                self.tracks.get(sid).is_some_and(|t| {
                    t.subscribers
                        .iter()
                        .any(|s| s.subscriber == key && s.forwarder.wants_keyframe())
                })
            })
            .collect();
        for sid in sids {
            self.request_keyframe(now, &sid);
        }
        if again {
            self.negotiate_subscriber(now, key);
        }
    }

    fn on_add_track(&mut self, key: ParticipantKey, req: AddTrackRequest) {
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        let source = TrackSource::try_from(req.source).unwrap_or(TrackSource::Unknown);
        let allowed = p.permission.can_publish
            && (p.permission.can_publish_sources.is_empty()
                || p.permission.can_publish_sources.contains(&(source as i32)));
        let kind = TrackType::try_from(req.r#type).ok();
        let reject = |reason: request_response::Reason, message: &str| RequestResponse {
            reason: reason as i32,
            message: message.to_string(),
            request: Some(request_response::Request::AddTrack(req.clone())),
            ..Default::default()
        };
        let refusal = if !allowed {
            Some(reject(
                request_response::Reason::NotAllowed,
                "not allowed to publish this source",
            ))
        } else if !matches!(kind, Some(TrackType::Audio | TrackType::Video)) {
            Some(reject(
                request_response::Reason::UnsupportedType,
                "only audio and video tracks can be published",
            ))
        } else if p.pending_tracks.iter().any(|(cid, _)| *cid == req.cid) {
            Some(reject(
                request_response::Reason::Queued,
                "track already pending",
            ))
        } else if p.pending_tracks.len() >= MAX_PENDING_TRACKS {
            Some(reject(
                request_response::Reason::LimitExceeded,
                "too many pending tracks",
            ))
        } else {
            None
        };
        if let Some(refusal) = refusal {
            debug!(participant = %p.info.identity, cid = %req.cid, "add_track refused");
            self.signal(key, signal_response::Message::RequestResponse(refusal));
            return;
        }
        let kind = kind.unwrap_or(TrackType::Audio);
        let track = TrackInfo {
            sid: ids::track_sid(kind, source),
            r#type: kind as i32,
            name: req.name.clone(),
            muted: req.muted,
            width: req.width,
            height: req.height,
            simulcast: req.layers.len() > 1,
            disable_dtx: req.disable_dtx,
            source: source as i32,
            layers: req.layers.clone(),
            disable_red: req.disable_red,
            encryption: req.encryption,
            stream: req.stream.clone(),
            audio_features: req.audio_features.clone(),
            backup_codec_policy: req.backup_codec_policy,
            // The codecs the client asked for, first the one to publish with.
            codecs: req
                .simulcast_codecs
                .iter()
                .filter(|c| !c.codec.is_empty())
                .map(|c| SimulcastCodecInfo {
                    mime_type: c.codec.clone(),
                    cid: c.cid.clone(),
                    layers: c.layers.clone(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        p.pending_tracks.push((req.cid.clone(), track.clone()));
        self.signal(
            key,
            signal_response::Message::TrackPublished(TrackPublishedResponse {
                cid: req.cid,
                track: Some(track),
            }),
        );
    }

    fn on_mute(&mut self, key: ParticipantKey, req: MuteTrackRequest) {
        let owned = self
            .tracks
            .get(&req.sid)
            .is_some_and(|t| t.publisher == key);
        if !owned {
            debug!(track = %req.sid, "mute for a track the participant does not publish");
            let refusal = RequestResponse {
                reason: request_response::Reason::NotFound as i32,
                message: format!("track {} is not published by this participant", req.sid),
                request: Some(request_response::Request::Mute(req)),
                ..Default::default()
            };
            self.signal(key, signal_response::Message::RequestResponse(refusal));
            return;
        }
        let Some(track) = self.tracks.get_mut(&req.sid) else {
            return;
        };
        track.info.muted = req.muted;
        let updated = track.info.clone();
        if let Some(p) = self.participants.get_mut(&key) {
            if let Some(t) = p.info.tracks.iter_mut().find(|t| t.sid == req.sid) {
                *t = updated;
            }
            p.touch();
        }
        self.broadcast_participant(key, false, false);
    }

    fn on_update_metadata(&mut self, key: ParticipantKey, req: UpdateParticipantMetadata) {
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        if !p.permission.can_update_metadata {
            let refusal = RequestResponse {
                request_id: req.request_id,
                reason: request_response::Reason::NotAllowed as i32,
                message: "does not have permission to update own metadata".into(),
                request: Some(request_response::Request::UpdateMetadata(req)),
            };
            self.signal(key, signal_response::Message::RequestResponse(refusal));
            return;
        }
        // Checked as the participant would be after the update (an empty field
        // keeps its value, an empty attribute value deletes the key).
        let mut attributes = p.info.attributes.clone();
        apply_attributes(&mut attributes, &req.attributes);
        let name = if req.name.is_empty() {
            &p.info.name
        } else {
            &req.name
        };
        let metadata = if req.metadata.is_empty() {
            &p.info.metadata
        } else {
            &req.metadata
        };
        let exceeded = self
            .config
            .field_limits
            .check_participant(name, metadata, &attributes)
            .err()
            .map(|e| match e {
                LimitExceeded::Name => "exceeds name length limit",
                LimitExceeded::Attributes => "exceeds attributes size limit",
                _ => "exceeds metadata size limit",
            });
        if let Some(message) = exceeded {
            let refusal = RequestResponse {
                request_id: req.request_id,
                reason: request_response::Reason::LimitExceeded as i32,
                message: message.into(),
                request: Some(request_response::Request::UpdateMetadata(req)),
            };
            self.signal(key, signal_response::Message::RequestResponse(refusal));
            return;
        }
        self.update_participant(key, Some(req.name), Some(req.metadata), req.attributes);
        if let Some(p) = self.participants.get(&key) {
            if p.protocol > 14 && req.request_id != 0 {
                let ok = RequestResponse {
                    request_id: req.request_id,
                    reason: request_response::Reason::Ok as i32,
                    ..Default::default()
                };
                self.signal(key, signal_response::Message::RequestResponse(ok));
            }
        }
    }

    /// Change a participant's name, metadata and attributes (an empty attribute
    /// value deletes the key) and tell everyone, the participant included.
    pub fn update_participant(
        &mut self,
        key: ParticipantKey,
        name: Option<String>,
        metadata: Option<String>,
        attributes: BTreeMap<String, String>,
    ) {
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        // A field left empty in the request keeps its value, as LiveKit does.
        if let Some(name) = name.filter(|n| !n.is_empty()) {
            p.info.name = name;
        }
        if let Some(metadata) = metadata.filter(|m| !m.is_empty()) {
            p.info.metadata = metadata;
        }
        apply_attributes(&mut p.info.attributes, &attributes);
        p.touch();
        self.broadcast_participant(key, true, false);
    }

    fn on_update_subscription(
        &mut self,
        now: Instant,
        key: ParticipantKey,
        req: UpdateSubscription,
    ) {
        let mut sids = req.track_sids;
        sids.extend(
            req.participant_tracks
                .into_iter()
                .flat_map(|pt| pt.track_sids),
        );
        let mut changed = false;
        for sid in sids {
            if !self.tracks.contains_key(&sid) {
                debug!(track = %sid, "subscription update for an unknown track");
                let response = SubscriptionResponse {
                    track_sid: sid,
                    err: SubscriptionError::SeTrackNotfound as i32,
                };
                self.signal(
                    key,
                    signal_response::Message::SubscriptionResponse(response),
                );
                continue;
            }
            changed |= if req.subscribe {
                self.subscribe(key, &sid, true)
            } else {
                self.unsubscribe(key, &sid)
            };
        }
        if changed {
            self.update_dynacast(now);
            self.negotiate_subscriber(now, key);
        }
    }

    /// A subscriber's wishes for tracks it receives: pause them (`disabled`,
    /// e.g. video not on screen) or cap their simulcast layer by the size it
    /// shows them at or by quality. Unknown or unsubscribed tracks are ignored.
    fn on_track_settings(
        &mut self,
        now: Instant,
        key: ParticipantKey,
        settings: UpdateTrackSettings,
    ) {
        let pause = settings.disabled || settings.quality == VideoQuality::Off as i32;
        let mut wants_keyframe = Vec::new();
        for sid in &settings.track_sids {
            let Some(track) = self.tracks.get_mut(sid) else {
                continue;
            };
            let cap = track.layer_cap(&settings);
            let spatial_cap = track.spatial_cap(&settings);
            let (best, flowing) = (track.best_layer, track.flowing);
            let Some(sub) = track.subscribers.iter_mut().find(|s| s.subscriber == key) else {
                continue;
            };
            sub.max_layer = cap;
            sub.max_spatial = spatial_cap;
            sub.aim(best, flowing, self.load_layer_cap);
            sub.forwarder.set_paused(pause);
            debug!(track = %sid, ?settings, paused = pause, target_layer = sub.forwarder.target_layer(), "track settings");
            if sub.forwarder.wants_keyframe() {
                wants_keyframe.push(sid.clone());
            }
        }
        for sid in wants_keyframe {
            self.request_keyframe(now, &sid);
        }
        // A video back on screen needs its layers encoded again at once (fewer
        // layers are let go only after dynacast's delay anyway).
        self.update_dynacast(now);
    }

    /// Whether `key` may receive one more track of `kind` under its
    /// subscription limit.
    fn has_subscription_room(&self, key: ParticipantKey, kind: MediaKind) -> bool {
        let limits = self.config.subscription_limits;
        let limit = if kind == MediaKind::Video {
            limits.video
        } else {
            limits.audio
        };
        if limit == 0 {
            return true;
        }
        let Some(p) = self.participants.get(&key) else {
            return false;
        };
        // Its own subscriptions only: negotiated ones and those queued.
        let negotiated = p
            .downtracks
            .values()
            .filter(|d| {
                self.tracks
                    .get(&d.track_sid)
                    .is_some_and(|t| t.kind == kind)
            })
            .count();
        let queued = p
            .subscriber_changes
            .iter()
            .filter(|c| matches!(c, SubscriberChange::AddTrack { kind: k, .. } if *k == kind))
            .count();
        negotiated + queued < limit as usize
    }

    /// Add a downtrack for `sid` to `key`'s subscriber PC (negotiated by the
    /// caller). Past `key`'s subscription limit, `sid` waits instead.
    pub(super) fn subscribe(&mut self, key: ParticipantKey, sid: &str, explicit: bool) -> bool {
        let Some((kind, publisher)) = self.tracks.get(sid).map(|t| (t.kind, t.publisher)) else {
            return false;
        };
        let has_room = self.has_subscription_room(key, kind);
        let Some(p) = self.participants.get_mut(&key) else {
            return false;
        };
        if publisher == key || !p.permission.can_subscribe || p.receives(sid) {
            return false;
        }
        if !has_room {
            if !p.waiting_subscriptions.iter().any(|w| w == sid) {
                debug!(participant = %p.info.identity, track = %sid, "subscription limit reached: track waits");
                p.waiting_subscriptions.push(sid.to_string());
            }
            return false;
        }
        p.waiting_subscriptions.retain(|w| w != sid);
        let learns_quality = self.learns_quality_now(key, publisher);
        let Some(track) = self.tracks.get_mut(sid) else {
            return false;
        };
        let Some(publisher_sid) = self
            .participants
            .get(&track.publisher)
            .map(|pb| pb.info.sid.clone())
        else {
            return false;
        };
        let p = self.participants.get_mut(&key).expect("checked above");
        p.subscriber_changes.push(SubscriberChange::AddTrack {
            sid: sid.to_string(),
            kind: track.kind,
            stream_id: format!("{publisher_sid}|{sid}"),
        });
        track.subscribers.push(Subscription {
            subscriber: key,
            mid: None,
            forwarder: TrackForwarder::new(track.best_layer.min(self.load_layer_cap)),
            max_layer: usize::MAX,
            max_spatial: None,
            out_pt: None,
            out_ssrc: None,
        });
        debug!(participant = %p.info.identity, track = %sid, explicit, "subscribed");
        if learns_quality {
            self.tell_quality_on_subscribe(key, publisher);
        }
        true
    }

    /// Whether a new subscription of `key` to a track of `publisher` is its
    /// first to `publisher` since both connected — what tells it
    /// `publisher`'s quality. (A newcomer learns the qualities it follows
    /// once connected.)
    fn learns_quality_now(&self, key: ParticipantKey, publisher: ParticipantKey) -> bool {
        let (Some(p), Some(publisher_p)) = (
            self.participants.get(&key),
            self.participants.get(&publisher),
        ) else {
            return false;
        };
        p.is_active()
            && publisher_p.is_active()
            && !p
                .received_tracks()
                .any(|s| self.tracks.get(s).is_some_and(|t| t.publisher == publisher))
    }

    fn unsubscribe(&mut self, key: ParticipantKey, sid: &str) -> bool {
        let Some(p) = self.participants.get_mut(&key) else {
            return false;
        };
        p.waiting_subscriptions.retain(|w| w != sid);
        if !p.receives(sid) {
            return false;
        }
        p.stop_receiving(sid);
        if let Some(track) = self.tracks.get_mut(sid) {
            track.subscribers.retain(|s| s.subscriber != key);
        }
        self.subscribe_waiting(key);
        true
    }

    /// Subscribe `key` to the tracks it waits for that fit under its limits now.
    pub(super) fn subscribe_waiting(&mut self, key: ParticipantKey) {
        let waiting = self
            .participants
            .get(&key)
            .map(|p| p.waiting_subscriptions.clone())
            .unwrap_or_default();
        for sid in waiting {
            self.subscribe(key, &sid, false);
        }
    }

    /// Offer `key`'s subscriber session its changes at the room's next
    /// timeout, a turn at a time with the others queued
    /// ([`Room::send_queued_offers`]).
    pub(super) fn queue_offer(&mut self, now: Instant, key: ParticipantKey) {
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        if std::mem::replace(&mut p.negotiation.queued, true) {
            return;
        }
        if self.offers_due.is_empty() {
            self.offers_due_since = now;
        }
        self.offers_due.push_back(key);
    }

    /// Make the queued offers: [`OFFERS_PER_TURN`] of them when the room's
    /// timeouts go in turns, all of them otherwise. Returns whether some are
    /// left for the next turn.
    pub(super) fn send_queued_offers(&mut self, now: Instant) -> bool {
        let turn = if self.config.drive_turn_datagrams > 0 {
            OFFERS_PER_TURN
        } else {
            usize::MAX
        };
        for _ in 0..turn {
            let Some(key) = self.offers_due.pop_front() else {
                return false;
            };
            if let Some(p) = self.participants.get_mut(&key) {
                p.negotiation.queued = false;
                self.negotiate_subscriber(now, key);
            }
        }
        !self.offers_due.is_empty()
    }

    /// Offer the subscriber PC's pending changes, or remember to once the
    /// answer to the offer in flight arrives.
    pub(super) fn negotiate_subscriber(&mut self, now: Instant, key: ParticipantKey) {
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        if p.negotiation.pending.is_some() {
            p.negotiation.again = true;
            return;
        }
        if p.subscriber_changes.is_empty() {
            return;
        }
        let mut api = p.subscriber.rtc.sdp_api();
        let mut added = Vec::new();
        for change in p.subscriber_changes.drain(..) {
            match change {
                SubscriberChange::DataChannels => {
                    p.subscriber_reliable = Some(api.add_channel_with_config(ChannelConfig {
                        label: "_reliable".into(),
                        ordered: true,
                        reliability: Reliability::Reliable,
                        ..Default::default()
                    }));
                    p.subscriber_lossy = Some(api.add_channel_with_config(ChannelConfig {
                        label: "_lossy".into(),
                        ordered: false,
                        reliability: Reliability::MaxRetransmits { retransmits: 0 },
                        ..Default::default()
                    }));
                }
                SubscriberChange::AddTrack {
                    sid,
                    kind,
                    stream_id,
                } => {
                    let mid = api.add_media(
                        kind,
                        Direction::SendOnly,
                        Some(stream_id),
                        Some(sid.clone()),
                        None,
                    );
                    added.push((sid, mid));
                }
                SubscriberChange::Stop(mid) => api.stop_media(mid),
            }
        }
        let Some((offer, pending)) = api.apply() else {
            return;
        };
        for (sid, mid) in added {
            p.downtracks.insert(
                mid,
                Downtrack {
                    track_sid: sid.clone(),
                    mid,
                    ssrc: None,
                },
            );
            if let Some(sub) = self
                .tracks
                .get_mut(&sid)
                .and_then(|t| t.subscribers.iter_mut().find(|s| s.subscriber == key))
            {
                sub.mid = Some(mid);
                sub.out_ssrc = None;
            }
        }
        p.negotiation.pending = Some(pending);
        p.negotiation.last_offer_id += 1;
        let sd = SessionDescription {
            r#type: "offer".into(),
            sdp: offer.to_sdp_string(),
            id: p.negotiation.last_offer_id,
            ..Default::default()
        };
        self.drain(now, key, PeerRole::Subscriber);
        let first_mid = first_mid(&sd.sdp);
        self.signal(key, signal_response::Message::Offer(sd));
        self.trickle_candidates(key, SignalTarget::Subscriber, first_mid);
    }

    /// Our ICE candidates are in every SDP we send; they are also trickled, as
    /// LiveKit does, the last one marked `final`.
    fn trickle_candidates(&mut self, key: ParticipantKey, target: SignalTarget, mid: String) {
        let count = self.config.candidates.len();
        for i in 0..count {
            let candidate = &self.config.candidates[i];
            let init = serde_json::json!({
                "candidate": candidate.to_sdp_string(),
                "sdpMid": mid,
                "sdpMLineIndex": 0,
            });
            let trickle = TrickleRequest {
                candidate_init: init.to_string(),
                target: target as i32,
                r#final: i + 1 == count,
            };
            self.signal(key, signal_response::Message::Trickle(trickle));
        }
    }
}

/// The mid of the first m-line of an SDP (the one trickled candidates refer to).
fn first_mid(sdp: &str) -> String {
    sdp.lines()
        .find_map(|l| l.trim_end().strip_prefix("a=mid:"))
        .unwrap_or("0")
        .to_string()
}
