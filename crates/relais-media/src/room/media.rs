//! What str0m reports about the room's sessions: connections, negotiated
//! media, stream statistics, NACKs — and each published RTP packet, forwarded
//! to the subscribers of its track.

use std::sync::Arc;
use std::time::{Duration, Instant};

use relais_proto::livekit::{
    participant_info, signal_response, SpeakersChanged, TrackSource, TrackType,
};
use str0m::format::{Codec, PayloadParams};
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid, Pt, Rid, SenderFeedback};
use str0m::rtp::rtcp::Rtcp;
use str0m::rtp::{Extension, RawPacket, RtpPacket, Ssrc, VideoOrientation};
use str0m::stats::{MediaEgressStats, MediaIngressStats};
use str0m::Event;
use tracing::{debug, info};

use crate::codec::{CodecKind, Vp8Header, Vp8Rewrite, Vp9Layer};
use crate::config::STATS_INTERVAL;
use crate::dynacast::LayerDemand;
use crate::egress::{self, Downstream, SourcePacket, TrackHistory};
use crate::forward::{Forward, Incoming};
use crate::ingress::{IngressStream, Opened, RepairStream};
use crate::participant::{DataKind, ForwardedCopy, ParticipantKey, PeerRole, PeerSession};
use crate::payload::Payload;
use crate::receive_register::write_delay_since_reference;
use crate::speakers::AudioLevelMeter;
use crate::stats::{Direction as StatsDirection, DropReason, Kind, StreamSample};
use crate::subscriber_rtcp::{self, Feedback, ReportBlock, Verdict};

use super::{
    layer_qualities, rid_quality, Layer, PendingEvent, PublishedTrack, Room, RoomEvent, RoomOutput,
    FRAME_WAIT, KEYFRAME_REQUEST_INTERVAL,
};

impl Room {
    pub(crate) fn process_events(&mut self, now: Instant) {
        while let Some(PendingEvent {
            participant,
            role,
            event,
        }) = self.events.pop_front()
        {
            self.handle_event(now, participant, role, event);
        }
    }

    fn handle_event(&mut self, now: Instant, key: ParticipantKey, role: PeerRole, event: Event) {
        if let Event::RtpPacket(pkt) = event {
            // The hot path: no span of its own (the caller's is the publisher's).
            if role == PeerRole::Publisher {
                self.on_rtp(now, key, pkt);
            }
            return;
        }
        if let Event::RawPacket(raw) = event {
            // Only subscriber sessions with direct video and publisher
            // sessions with direct ingress ask for these.
            match (role, *raw) {
                // What str0m read of a subscriber's reports, when Relais
                // did not ([`Room::read_subscriber_rtcp`]).
                (PeerRole::Subscriber, RawPacket::RtcpRx(Rtcp::ReceiverReport(report))) => {
                    for block in report.reports.iter() {
                        let block = ReportBlock {
                            ssrc: *block.ssrc,
                            // 24 bits, signed.
                            packets_lost: ((block.packets_lost << 8) as i32) >> 8,
                            jitter: block.jitter,
                            last_sender_report: block.last_sr_time,
                            delay_since_last_sender_report: block.last_sr_delay,
                        };
                        self.on_subscriber_feedback(now, key, Feedback::Report(block));
                    }
                }
                (PeerRole::Subscriber, RawPacket::RtcpRx(Rtcp::Nack(nack))) => {
                    let lost = nack
                        .reports
                        .iter()
                        .flat_map(|e| subscriber_rtcp::lost(e.pid, e.blp));
                    self.on_direct_nack(now, key, nack.ssrc, lost)
                }
                (PeerRole::Publisher, RawPacket::RtcpRx(Rtcp::ExtendedReport(report))) => {
                    let ingress = self
                        .participants
                        .get_mut(&key)
                        .and_then(|p| p.publisher.as_mut())
                        .and_then(|s| s.direct.as_deref_mut())
                        .and_then(|d| d.ingress.as_deref_mut());
                    if let Some(ingress) = ingress {
                        ingress.on_extended_report(&report, now);
                    }
                }
                _ => {}
            }
            return;
        }
        let span = self.span_for(key);
        let _span = span.enter();
        match event {
            Event::MediaIngressStats(stats) if role == PeerRole::Publisher => {
                self.on_ingress_stats(key, &stats)
            }
            Event::SenderFeedback(report) if role == PeerRole::Publisher => {
                self.on_sender_report(key, &report)
            }
            Event::MediaEgressStats(stats) if role == PeerRole::Subscriber => {
                self.on_egress_stats(key, &stats)
            }
            Event::Connected => self.on_connected(key, role),
            Event::MediaAdded(added) if role == PeerRole::Publisher => {
                self.on_media_added(now, key, added.mid, added.kind)
            }
            Event::MediaChanged(changed) if role == PeerRole::Publisher => {
                self.on_media_changed(now, key, changed.mid, changed.direction)
            }
            Event::ChannelOpen(id, label) => {
                if let Some(p) = self.participants.get_mut(&key) {
                    match role {
                        PeerRole::Publisher => {
                            if let Some(kind) = DataKind::from_label(&label) {
                                p.publisher_channels.insert(id, kind);
                            }
                        }
                        PeerRole::Subscriber => p.subscriber_channels_open += 1,
                    }
                }
            }
            Event::ChannelData(data) if role == PeerRole::Publisher => {
                let kind = self
                    .participants
                    .get(&key)
                    .and_then(|p| p.publisher_channels.get(&data.id).copied());
                if let Some(kind) = kind {
                    self.on_data(now, key, kind, &data.data);
                }
            }
            Event::KeyframeRequest(req) if role == PeerRole::Subscriber => {
                let sid = self
                    .participants
                    .get(&key)
                    .and_then(|p| p.downtracks.get(&req.mid))
                    .map(|d| d.track_sid.clone());
                self.on_keyframe_request(now, req.kind, sid);
            }
            Event::IceConnectionStateChange(state) => {
                debug!(?key, ?role, ?state, "ice state");
            }
            _ => {}
        }
    }

    /// A subscriber asked for a keyframe of the track `sid` it receives.
    fn on_keyframe_request(
        &mut self,
        now: Instant,
        kind: KeyframeRequestKind,
        sid: Option<String>,
    ) {
        let out = StatsDirection::Outgoing as usize;
        match kind {
            KeyframeRequestKind::Pli => self.stats.plis[out] += 1,
            KeyframeRequestKind::Fir => self.stats.firs[out] += 1,
        }
        if let Some(sid) = sid {
            self.request_keyframe(now, &sid);
        }
    }

    /// A subscriber lost packets of a stream Relais sends itself: only
    /// Relais has them ([`egress::resend`]).
    fn on_direct_nack(
        &mut self,
        now: Instant,
        key: ParticipantKey,
        ssrc: Ssrc,
        lost: impl IntoIterator<Item = u16>,
    ) {
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        // The track the stream forwards holds the packets (few NACKs: a
        // search of the subscriber's downtracks is cheap enough).
        let Some(track) = p
            .downtracks
            .values()
            .find(|d| d.ssrc == Some(ssrc))
            .and_then(|d| self.tracks.get(d.track_sid.as_str()))
        else {
            return;
        };
        let layer = |i: u8| track.layers.get(usize::from(i)).map(|l| &l.kept);
        let sent = egress::resend(
            &mut p.subscriber,
            ssrc,
            lost,
            layer,
            now,
            &mut self.outgoing,
        );
        self.stats.direct_resent += sent;
    }

    /// A subscriber's compound RTCP, read by Relais itself if every stream
    /// it names is one Relais sends ([`subscriber_rtcp`]): true if it was
    /// (or was a replay, dropped), and str0m is not to see it.
    pub(super) fn read_subscriber_rtcp(
        &mut self,
        now: Instant,
        key: ParticipantKey,
        datagram: &[u8],
    ) -> bool {
        let direct = self
            .participants
            .get_mut(&key)
            .and_then(|p| p.subscriber.direct.as_deref_mut());
        let Some(direct) = direct else {
            return false;
        };
        let Some(keys) = direct.report_keys.get() else {
            return false;
        };
        let streams = &direct.streams;
        let ours = |ssrc: u32, repair: bool| {
            streams.contains_key(&Ssrc::from(ssrc))
                || repair && streams.values().any(|s| s.repair_ssrc() == Some(ssrc))
        };
        let mut plain = std::mem::take(&mut self.reports);
        let read = direct.reports_read.read(keys, datagram, &mut plain, ours);
        if read == Verdict::Read {
            self.stats.reports_read += 1;
            subscriber_rtcp::for_each(&plain, |feedback| {
                self.on_subscriber_feedback(now, key, feedback)
            });
            // A keyframe asked for drove the publisher's session.
            self.process_events(now);
        }
        self.reports = plain;
        read != Verdict::Pass
    }

    fn on_subscriber_feedback(
        &mut self,
        now: Instant,
        key: ParticipantKey,
        feedback: Feedback<'_>,
    ) {
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        let direct = p.subscriber.direct.as_deref_mut();
        match feedback {
            Feedback::Report(block) => {
                let Some(direct) = direct else {
                    return;
                };
                let ntp_now = egress::ntp_at(now, direct.epoch);
                // A block on a repair stream says nothing Relais keeps.
                if let Some(stream) = direct.streams.get_mut(&Ssrc::from(block.ssrc)) {
                    let downstream = &mut stream.downstream;
                    downstream.packets_lost = u64::try_from(block.packets_lost).unwrap_or(0);
                    downstream.jitter = block.jitter;
                    downstream.rtt = block.round_trip(ntp_now).or(downstream.rtt);
                }
            }
            Feedback::Nack { ssrc, entries } => {
                if let Some(stream) = direct.and_then(|d| d.streams.get_mut(&Ssrc::from(ssrc))) {
                    stream.downstream.nacks += 1;
                }
                let lost = subscriber_rtcp::nack_entries(entries);
                self.on_direct_nack(now, key, Ssrc::from(ssrc), lost);
            }
            Feedback::KeyframeRequest { ssrc, kind } => {
                let sid = p
                    .downtracks
                    .values()
                    .find(|d| d.ssrc == Some(Ssrc::from(ssrc)))
                    .map(|d| d.track_sid.clone());
                self.on_keyframe_request(now, kind, sid);
            }
            Feedback::ReferenceTime { ssrc, ntp } => {
                let Some(direct) = direct else {
                    return;
                };
                // Answered as it arrives: held for no time at all. Sent by
                // one of the streams the session's RTCP is about.
                let (Some(keys), Some(route), Some(sender)) = (
                    direct.keys.get(),
                    direct.route,
                    direct.streams.keys().next(),
                ) else {
                    return;
                };
                let mut answer = Vec::with_capacity(24 + 20);
                write_delay_since_reference(**sender, ssrc, (ntp >> 16) as u32, 0, &mut answer);
                keys.protect_rtcp(&mut answer);
                self.outgoing.push(route.0, route.1, route.2, &answer);
            }
        }
    }

    /// A publisher's sender report, for the report blocks Relais writes on
    /// a stream it reads itself (str0m keeps it for its own otherwise).
    fn on_sender_report(&mut self, key: ParticipantKey, report: &SenderFeedback) {
        let stream = self
            .participants
            .get_mut(&key)
            .and_then(|p| p.publisher.as_mut())
            .and_then(|s| s.direct.as_deref_mut())
            .and_then(|d| d.ingress.as_deref_mut())
            .and_then(|i| i.streams.get_mut(&*report.sender_info.ssrc));
        if let Some(stream) = stream {
            // The middle 32 bits of its NTP time (RFC 3550 §6.4.1, LSR).
            let ntp = egress::ntp_time(report.sender_info.ntp_time);
            stream.last_sender_report = Some(((ntp >> 16) as u32, report.received_at));
        }
    }

    /// str0m's periodic report on a stream a publisher sends us.
    fn on_ingress_stats(&mut self, key: ParticipantKey, s: &MediaIngressStats) {
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        let Some(track) = p
            .published_by_mid
            .get(&s.mid)
            .and_then(|sid| self.tracks.get(sid))
        else {
            return;
        };
        let Some(publisher) = p.publisher.as_mut() else {
            return;
        };
        // A stream Relais reads itself is sampled from its own register
        // ([`Room::sample_streams`]): str0m sees little of it.
        let ssrc = track
            .layers
            .iter()
            .find(|l| l.rid == s.rid)
            .and_then(|l| l.ssrc);
        let ingress = publisher
            .direct
            .as_deref()
            .and_then(|d| d.ingress.as_deref());
        if let (Some(ssrc), Some(ingress)) = (ssrc, ingress) {
            if ingress.streams.contains_key(&*ssrc) {
                return;
            }
        }
        let seen = publisher.stats_seen.entry((s.mid, s.rid)).or_default();
        let (nacks, packets) = seen.advance(s.nacks, s.packets);
        // str0m reports the loss fraction of our last receiver report, not a count.
        let lost = match s.loss.map(f64::from) {
            Some(f) if f > 0.0 && f < 1.0 => (packets as f64 * f / (1.0 - f)).round() as u64,
            _ => 0,
        };
        let sample = stream_sample(track, StatsDirection::Incoming, s.jitter, s.rtt, lost);
        self.record_stream(key, sample, nacks, packets, s.rtt);
    }

    /// The statistics of the streams Relais reads or sends itself, at
    /// str0m's interval for the others: a publisher's from their registers,
    /// a subscriber's from what it reported to Relais.
    pub(super) fn sample_streams(&mut self, now: Instant) {
        let mut samples = Vec::new();
        for p in self.participants.values_mut() {
            let ingress = p
                .publisher
                .as_mut()
                .and_then(|s| s.direct.as_deref_mut())
                .and_then(|d| d.ingress.as_deref_mut())
                .filter(|i| i.next_sample <= now);
            if let Some(ingress) = ingress {
                ingress.next_sample = now + STATS_INTERVAL;
                let rtt = ingress.rtt;
                for (ssrc, stream) in &mut ingress.streams {
                    let Some(track) = p
                        .ssrc_routes
                        .get(&Ssrc::from(*ssrc))
                        .and_then(|(sid, _)| self.tracks.get(&**sid))
                    else {
                        continue;
                    };
                    let (packets, lost) = stream.register.take_counts();
                    let nacks = std::mem::take(&mut stream.nacked);
                    let jitter = stream.register.jitter();
                    let sample = stream_sample(track, StatsDirection::Incoming, jitter, rtt, lost);
                    samples.push((p.key, sample, nacks, packets, rtt));
                }
            }
            let egress = p
                .subscriber
                .direct
                .as_deref_mut()
                .filter(|d| d.next_sample <= now);
            if let Some(egress) = egress {
                egress.next_sample = now + STATS_INTERVAL;
                for (ssrc, stream) in &mut egress.streams {
                    let Some(track) = p
                        .downtracks
                        .values()
                        .find(|d| d.ssrc == Some(*ssrc))
                        .and_then(|d| self.tracks.get(d.track_sid.as_str()))
                    else {
                        continue;
                    };
                    let (packets, lost, nacks) = stream.downstream.take_sample(stream.packets);
                    let Downstream { jitter, rtt, .. } = stream.downstream;
                    let sample = stream_sample(track, StatsDirection::Outgoing, jitter, rtt, lost);
                    samples.push((p.key, sample, nacks, packets, rtt));
                }
            }
        }
        for (key, sample, nacks, packets, rtt) in samples {
            self.record_stream(key, sample, nacks, packets, rtt);
        }
    }

    /// str0m's periodic report on a stream we send a subscriber, with what the
    /// subscriber's receiver reports said.
    fn on_egress_stats(&mut self, key: ParticipantKey, s: &MediaEgressStats) {
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        let Some(track) = p
            .downtracks
            .get(&s.mid)
            .and_then(|d| self.tracks.get(&d.track_sid))
        else {
            return;
        };
        // A stream Relais sends itself is sampled from what the subscriber
        // reported to Relais ([`Room::sample_streams`]).
        let direct = p.subscriber.direct.as_deref().is_some_and(|direct| {
            let ssrc = p.downtracks.get(&s.mid).and_then(|d| d.ssrc);
            ssrc.is_some_and(|ssrc| direct.streams.contains_key(&ssrc))
        });
        if direct {
            return;
        }
        let seen = p.subscriber.stats_seen.entry((s.mid, s.rid)).or_default();
        let (nacks, packets) = seen.advance(s.nacks, s.packets);
        let (jitter, lost) = match &s.remote {
            Some(remote) => {
                let lost = remote.packets_lost.saturating_sub(seen.lost);
                seen.lost = remote.packets_lost;
                (remote.jitter, lost)
            }
            None => (0, 0),
        };
        let sample = stream_sample(track, StatsDirection::Outgoing, jitter, s.rtt, lost);
        self.record_stream(key, sample, nacks, packets, s.rtt);
    }

    /// Count what a stream's report said since the last one, in the node's
    /// stats and in the participant's connection quality.
    fn record_stream(
        &mut self,
        key: ParticipantKey,
        sample: StreamSample,
        nacks: u64,
        packets: u64,
        rtt: Option<Duration>,
    ) {
        self.stats.nacks[sample.direction as usize] += nacks;
        self.qualities.observe(key, packets, sample.lost, rtt);
        self.stats.sample(sample);
    }

    fn on_connected(&mut self, key: ParticipantKey, role: PeerRole) {
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        if let Some(session) = p.session_mut(role) {
            session.connected = true;
        }
        if role == p.primary() && !p.is_active() {
            p.info.state = participant_info::State::Active as i32;
            p.touch();
            info!("participant active");
            self.stats.rtc_connected += 1;
            let info = p.info.clone();
            self.outputs
                .push_back(RoomOutput::Event(Box::new(RoomEvent::ParticipantJoined(
                    info,
                ))));
            self.broadcast_participant(key, false, false);
            self.tell_qualities_on_connect(key);
            // Speakers are sent as changes: a newcomer learns who speaks now once
            // it is connected (SDKs drop updates that come before their join is done).
            let speaking = self.speaker_infos(&self.speakers.current());
            if !speaking.is_empty() {
                self.signal(
                    key,
                    signal_response::Message::SpeakersChanged(SpeakersChanged {
                        speakers: speaking,
                    }),
                );
            }
        }
    }

    /// A publisher m-line changed direction: the client stopped sending on it
    /// (unpublish) or reuses it for a new track.
    fn on_media_changed(
        &mut self,
        now: Instant,
        key: ParticipantKey,
        mid: Mid,
        direction: Direction,
    ) {
        let Some(p) = self.participants.get(&key) else {
            return;
        };
        let published = p.published_by_mid.get(&mid).cloned();
        match published {
            Some(sid) if !direction.is_receiving() => self.unpublish_own(now, key, &sid),
            None if direction.is_receiving() => {
                let kind = p
                    .publisher
                    .as_ref()
                    .and_then(|s| s.rtc.media(mid))
                    .map(|m| m.kind());
                if let Some(kind) = kind {
                    self.on_media_added(now, key, mid, kind);
                }
            }
            _ => {}
        }
    }

    /// Remove one of `key`'s own tracks: from its info, from every subscriber,
    /// and tell the room.
    fn unpublish_own(&mut self, now: Instant, key: ParticipantKey, sid: &str) {
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        p.forget_published(sid);
        p.touch();
        let info = p.info.clone();
        info!(participant = %info.identity, track = %sid, "track unpublished");
        self.unpublish(now, sid, &info);
        self.broadcast_participant(key, false, true);
    }

    /// A new m-line on a publisher PC: bind it to the pending track with the
    /// same client track id (the SDP msid), or the first pending one of its kind.
    fn on_media_added(&mut self, now: Instant, key: ParticipantKey, mid: Mid, kind: MediaKind) {
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        let Some(publisher) = p.publisher.as_ref() else {
            return;
        };
        let Some(media) = publisher.rtc.media(mid) else {
            return;
        };
        // Clients also offer receive-only m-lines on this PC; only what they send is a track.
        if !matches!(media.direction(), Direction::RecvOnly | Direction::SendRecv) {
            return;
        }
        let msid_track = media.track_id().to_string();
        let simulcast_rids: Vec<Rid> = match media.rids_rx() {
            str0m::media::Rids::Specific(rids) => rids.to_vec(),
            _ => Vec::new(),
        };
        let wanted = if kind == MediaKind::Audio {
            TrackType::Audio
        } else {
            TrackType::Video
        } as i32;
        let pos = p
            .pending_tracks
            .iter()
            .position(|(cid, _)| *cid == msid_track)
            .or_else(|| {
                p.pending_tracks
                    .iter()
                    .position(|(_, t)| t.r#type == wanted)
            });
        let Some(pos) = pos else {
            debug!(participant = %p.info.identity, %mid, "media without a pending track");
            return;
        };
        let (_, mut info) = p.pending_tracks.remove(pos);
        info.mid = mid.to_string();
        // The negotiated codec, reported with the track before any media flows.
        let wanted = info.codecs.first().map(|c| c.mime_type.as_str());
        if let Some(codec) = negotiated_codec(&publisher.rtc, mid, wanted) {
            info.mime_type = codec.mime_type().to_string();
        }
        let layers = if simulcast_rids.is_empty() {
            vec![Layer {
                rid: None,
                ssrc: None,
                last_seen: None,
                kept: TrackHistory::new(kind),
            }]
        } else {
            let mut by_quality: Vec<Rid> = simulcast_rids;
            by_quality.sort_by_key(rid_quality);
            by_quality
                .into_iter()
                .map(|rid| Layer {
                    rid: Some(rid),
                    ssrc: None,
                    last_seen: None,
                    kept: TrackHistory::new(kind),
                })
                .collect()
        };
        let demand = LayerDemand::new(layer_qualities(&layers, &info).len());
        let sid = info.sid.clone();
        p.published_by_mid.insert(mid, sid.clone());
        p.info.tracks.push(info.clone());
        p.info.is_publisher = true;
        p.touch();
        let publisher_info = p.info.clone();
        self.tracks.insert(
            sid.clone(),
            PublishedTrack {
                info: info.clone(),
                publisher: key,
                kind,
                codec: None,
                layers,
                best_layer: 0,
                flowing: 0,
                first_packet: None,
                subscribers: Vec::new(),
                last_keyframe_request: None,
                audio_level: AudioLevelMeter::default(),
                demand,
            },
        );
        info!(participant = %publisher_info.identity, track = %sid, %mid, "track published");
        self.outputs
            .push_back(RoomOutput::Event(Box::new(RoomEvent::TrackPublished(
                publisher_info,
                info,
            ))));
        self.broadcast_participant(key, false, false);
        let subscribers: Vec<ParticipantKey> = self
            .participants
            .keys()
            .copied()
            .filter(|k| *k != key)
            .collect();
        for sub in subscribers {
            if self.wants_auto_subscribe(sub) && self.subscribe(sub, &sid, false) {
                self.negotiate_subscriber(now, sub);
            }
        }
    }

    /// A publisher's RTP packet that str0m read: the first packets of each
    /// stream, which show Relais the stream (its route to a track and
    /// layer, its codec, and — with direct ingress — what Relais needs to
    /// read the rest itself), retransmissions, and everything on sessions
    /// without direct ingress.
    fn on_rtp(&mut self, now: Instant, key: ParticipantKey, pkt: RtpPacket) {
        let ssrc = pkt.header.ssrc;
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        // RTP arrives only on a publisher PC, so there is one.
        let Some(publisher) = p.publisher.as_mut() else {
            return;
        };
        if !p.ssrc_routes.contains_key(&ssrc) {
            let Some((mid, rid)) = publisher
                .rtc
                .direct_api()
                .stream_rx(&ssrc)
                .map(|s| (s.mid(), s.rid()))
            else {
                self.stats.drop_packet(DropReason::UnknownTrack);
                return;
            };
            let Some(sid) = p.published_by_mid.get(&mid).cloned() else {
                self.stats.drop_packet(DropReason::UnknownTrack);
                return;
            };
            let Some(track) = self.tracks.get_mut(&sid) else {
                self.stats.drop_packet(DropReason::UnknownTrack);
                return;
            };
            let layer = track.layers.iter().position(|l| l.rid == rid).unwrap_or(0);
            track.layers[layer].ssrc = Some(ssrc);
            if track.codec.is_none() {
                track.codec = publisher
                    .rtc
                    .codec_config()
                    .find(|c| c.pt() == pkt.header.payload_type)
                    .map(|c| (CodecKind::from_str0m(c.spec().codec), *c));
                if let Some((codec, _)) = track.codec {
                    track.info.mime_type = codec.mime_type().to_string();
                    if let Some(t) = p.info.tracks.iter_mut().find(|t| t.sid == sid) {
                        t.mime_type = track.info.mime_type.clone();
                    }
                }
            }
            if let Some((_, params)) = track.codec {
                read_directly(publisher, ssrc, mid, params.spec().clock_rate.get());
            }
            p.ssrc_routes.insert(ssrc, (sid.into(), layer));
        }
        read_repairs_directly(publisher, ssrc);
        // With direct ingress the stream's register numbers every packet,
        // whichever path it came by (a retransmission repairs a loss it saw).
        let register = publisher
            .direct
            .as_deref_mut()
            .and_then(|d| d.ingress.as_deref_mut())
            .and_then(|i| i.streams.get_mut(&*ssrc))
            .map(|s| &mut s.register);
        let seq = match register {
            Some(register) => {
                let seq = register.extend(*pkt.seq_no as u16);
                if !register.is_new(seq) {
                    return;
                }
                register.record(seq, pkt.header.timestamp, pkt.timestamp);
                seq
            }
            None => *pkt.seq_no,
        };
        let ext = &pkt.header.ext_vals;
        let mut published = Published {
            ssrc,
            seq,
            timestamp: pkt.header.timestamp,
            marker: pkt.header.marker,
            size: pkt.header.header_len + pkt.payload.len(),
            arrival: pkt.timestamp,
            audio_level: ext.audio_level,
            voice_activity: ext.voice_activity,
            video_orientation: ext.video_orientation,
            body: Body::Read(pkt.payload),
        };
        self.forward(now, key, &mut published);
    }

    /// A publisher's packet that Relais opened itself ([`crate::ingress`]),
    /// its payload in `payload`; if forwarded, `payload` is left holding
    /// another buffer ([`crate::payload`]).
    pub(super) fn on_opened(
        &mut self,
        now: Instant,
        key: ParticipantKey,
        opened: Opened,
        payload: &mut Vec<u8>,
    ) {
        let mut published = Published {
            ssrc: opened.ssrc.into(),
            seq: opened.seq,
            timestamp: opened.timestamp,
            marker: opened.marker,
            size: opened.size,
            arrival: now,
            audio_level: opened.audio_level,
            voice_activity: opened.voice_activity,
            video_orientation: opened.video_orientation,
            body: Body::Opened(payload),
        };
        self.forward(now, key, &mut published);
    }

    /// The hot path: one published RTP packet, out to the subscribers of its
    /// track.
    fn forward(&mut self, now: Instant, key: ParticipantKey, pkt: &mut Published) {
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        let Some((sid, layer)) = p.ssrc_routes.get(&pkt.ssrc).cloned() else {
            self.stats.drop_packet(DropReason::UnknownTrack);
            return;
        };
        let Some(track) = self.tracks.get_mut(&*sid) else {
            self.stats.drop_packet(DropReason::UnknownTrack);
            return;
        };
        let kind = Kind::of(track.kind) as usize;
        let size = pkt.size as u64;
        self.stats.packets_in[kind] += 1;
        self.stats.bytes_in[kind] += size;
        self.stats.direct_in[kind] += u64::from(matches!(pkt.body, Body::Opened(_)));
        if let Some(level) = pkt.audio_level {
            track.audio_level.observe(level);
        }
        let Some((codec, params)) = track.codec else {
            self.stats.drop_packet(DropReason::NoCodec);
            return;
        };
        let first_on_layer = track.layers[layer].last_seen.is_none();
        track.layers[layer].last_seen = Some(now);
        if first_on_layer {
            track.first_packet.get_or_insert(now);
        }
        if first_on_layer && layer > track.best_layer {
            track.best_layer = layer;
            for s in &mut track.subscribers {
                s.aim(layer, track.flowing, self.load_layer_cap);
            }
        }
        let bytes = pkt.body.bytes();
        let vp8 = if codec == CodecKind::Vp8 {
            Vp8Header::parse(bytes)
        } else {
            None
        };
        let incoming = Incoming {
            layer,
            seq: pkt.seq,
            timestamp: pkt.timestamp,
            keyframe: codec.starts_keyframe(bytes),
            vp8,
            svc: (codec == CodecKind::Vp9)
                .then(|| Vp9Layer::parse(bytes))
                .flatten(),
            marker: pkt.marker,
            arrival: pkt.arrival,
            clock_rate: params.spec().clock_rate.get(),
        };
        let is_video = track.kind == MediaKind::Video;
        let source = SourcePacket {
            layer: layer as u8,
            seq: incoming.seq,
            timestamp: incoming.timestamp,
            marker: incoming.marker,
            vp8,
        };
        let mut need_keyframe = false;
        // The payload as the copies share it, made with the first copy that
        // needs it: Relais's copies read it from the layer's buffers (the
        // buffer it was opened into becomes one), str0m's from one shared
        // copy of it.
        let mut for_direct: Option<Payload> = None;
        let mut for_str0m: Option<Arc<[u8]>> = None;
        for sub in &mut track.subscribers {
            // Until the subscriber's m-line is negotiated nothing can be sent: leave
            // its forwarder untouched so that what it first gets is a keyframe, not
            // the deltas after one it never saw.
            let Some(s) = self.participants.get_mut(&sub.subscriber) else {
                self.stats.drop_packet(DropReason::NotNegotiated);
                continue;
            };
            if sub.out_ssrc.is_none() {
                sub.out_ssrc = sub
                    .mid
                    .and_then(|mid| s.downtracks.get(&mid))
                    .and_then(|d| d.ssrc);
            }
            let Some(out_ssrc) = sub.out_ssrc else {
                self.stats.drop_packet(DropReason::NotNegotiated);
                continue;
            };
            let layer_before = sub.forwarder.current_layer();
            let rewrite = match sub.forwarder.forward(&incoming) {
                Forward::Drop => continue,
                Forward::NeedKeyframe => {
                    need_keyframe = true;
                    self.stats.drop_packet(DropReason::WaitingKeyframe);
                    continue;
                }
                Forward::Send(r) => r,
            };
            if layer_before != Some(layer) {
                s.span
                    .in_scope(|| debug!(track = %sid, layer, "forwarding starts on a keyframe"));
            }
            // Up to a higher spatial layer only on a keyframe: ask for one.
            need_keyframe |= sub.forwarder.spatial_up_pending();
            if sub.out_pt.is_none() {
                sub.out_pt = matching_pt(s.subscriber.rtc.codec_config().params(), &params);
            }
            let Some(out_pt) = sub.out_pt else {
                self.stats.drop_packet(DropReason::NotNegotiated);
                continue;
            };
            // The stream exists: its SSRC was learnt from it, and it is stopped
            // only after this subscription is gone.
            let session = &mut s.subscriber;
            let direct_kind = if is_video {
                self.config.direct_video
            } else {
                self.config.direct_audio
            };
            let direct = direct_kind && session.direct_ready();
            let payload = if direct {
                self.stats.direct_out[kind] += 1;
                let kept = &mut track.layers[layer].kept;
                for_direct
                    .get_or_insert_with(|| match &mut pkt.body {
                        Body::Read(read) => Payload::Read(read.clone()),
                        Body::Opened(opened) => kept.buffer(pkt.seq, opened),
                    })
                    .clone()
            } else {
                let shared = for_str0m.get_or_insert_with(|| match (&pkt.body, &for_direct) {
                    (Body::Read(read), _) => read.clone(),
                    // Moved out of the opened buffer already.
                    (Body::Opened(_), Some(kept)) => Arc::from(&**kept),
                    (Body::Opened(opened), None) => Arc::from(opened.as_slice()),
                });
                Payload::Read(shared.clone())
            };
            // str0m must not resend a video copy on the RTX SSRC Relais
            // numbers itself: two senders of one SSRC under one key could
            // repeat an SRTP nonce. Lost, it costs a keyframe (PLI) instead.
            let nackable =
                is_video && (direct || !self.config.direct_video || session.direct.is_none());
            let copy = ForwardedCopy {
                ssrc: out_ssrc,
                pt: out_pt,
                seq: rewrite.seq,
                timestamp: rewrite.timestamp,
                wallclock: pkt.arrival,
                marker: rewrite.marker,
                nackable,
                audio_level: pkt.audio_level,
                voice_activity: pkt.voice_activity,
                video_orientation: pkt.video_orientation,
                payload,
                clock_rate: incoming.clock_rate,
                source,
                vp8: (rewrite.vp8_picture_id.is_some() || rewrite.vp8_tl0_pic_idx.is_some())
                    .then_some(Vp8Rewrite {
                        picture_id: rewrite.vp8_picture_id,
                        tl0_pic_idx: rewrite.vp8_tl0_pic_idx,
                    }),
                direct,
            };
            // Written when the session is next polled, with whatever else
            // the round wrote to it: the next timeout round drives it once
            // for a whole receive batch — on a fan-out helper, in a large
            // room — not once per packet.
            session.unwritten.push(copy);
            self.stats.packets_out[kind] += 1;
            self.stats.bytes_out[kind] += size;
            if is_video && !rewrite.marker {
                if session.frame_wait.is_none() {
                    let until = now + FRAME_WAIT;
                    session.frame_wait = Some(until);
                    self.frame_waits.push_back((until, sub.subscriber));
                }
                continue;
            }
            self.copies_leaving += 1;
            session.deadline = session.deadline.min(now);
            if !session.listed {
                session.listed = true;
                if self.due_now.is_empty() {
                    self.due_now_since = now;
                }
                self.due_now.push((sub.subscriber, PeerRole::Subscriber));
            }
        }
        if let Some(payload) = for_direct {
            // Kept for the subscribers' NACKs (video), its buffer for a later
            // packet; a packet nobody was sent directly is not (a layer no one
            // is sent directly holds no memory).
            track.layers[layer]
                .kept
                .keep(source, payload, pkt.video_orientation);
        }
        if need_keyframe {
            self.request_keyframe(now, &sid);
        }
    }

    /// Ask the publisher of `sid` for a keyframe on each layer a subscriber waits
    /// for, at most once per [`KEYFRAME_REQUEST_INTERVAL`].
    pub(super) fn request_keyframe(&mut self, now: Instant, sid: &str) {
        let Some(track) = self.tracks.get_mut(sid) else {
            return;
        };
        if track.kind != MediaKind::Video {
            return;
        }
        if track
            .last_keyframe_request
            .is_some_and(|t| now.duration_since(t) < KEYFRAME_REQUEST_INTERVAL)
        {
            return;
        }
        track.last_keyframe_request = Some(now);
        let Some(p) = self.participants.get_mut(&track.publisher) else {
            return;
        };
        // Asked on the forwarding's path too, which enters no span.
        let span = p.span.clone();
        let _span = span.enter();
        let mut wanted: Vec<usize> = track
            .subscribers
            .iter()
            .map(|s| s.forwarder.target_layer())
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        let Some(publisher) = p.publisher.as_mut() else {
            return;
        };
        let mut api = publisher.rtc.direct_api();
        for layer in wanted {
            let ssrc = track.layers.get(layer).and_then(|l| l.ssrc);
            let rx = ssrc.and_then(|ssrc| api.stream_rx(&ssrc));
            debug!(track = %sid, layer, asked = rx.is_some(), "keyframe wanted from the publisher");
            if let Some(rx) = rx {
                rx.request_keyframe(KeyframeRequestKind::Pli);
                self.stats.plis[StatsDirection::Incoming as usize] += 1;
            }
        }
        let publisher = track.publisher;
        self.drain(now, publisher, PeerRole::Publisher);
    }
}

/// A published RTP packet as the forwarding reads it, whichever path it
/// came by.
pub(crate) struct Published<'a> {
    ssrc: Ssrc,
    /// Extended past 16 bits.
    seq: u64,
    timestamp: u32,
    marker: bool,
    /// Header and payload, as received (for the byte counts).
    size: usize,
    arrival: Instant,
    audio_level: Option<i8>,
    voice_activity: Option<bool>,
    video_orientation: Option<VideoOrientation>,
    body: Body<'a>,
}

/// A published packet's payload as it came in.
enum Body<'a> {
    /// Read by str0m, shared already.
    Read(Arc<[u8]>),
    /// Opened by Relais ([`crate::ingress`]), in the room's buffer.
    Opened(&'a mut Vec<u8>),
}

impl Body<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Body::Read(read) => read,
            Body::Opened(opened) => opened,
        }
    }
}

/// From now on Relais reads the publisher's stream `ssrc` itself, if the
/// session has a direct ingress: str0m, which stops seeing the stream, must
/// not ask for what it misses (Relais does, [`crate::ingress`]).
fn read_directly(publisher: &mut PeerSession, ssrc: Ssrc, mid: Mid, clock_rate: u32) {
    let Some(ingress) = publisher
        .direct
        .as_deref_mut()
        .and_then(|d| d.ingress.as_deref_mut())
    else {
        return;
    };
    let extmap = publisher.rtc.media(mid).map(|m| m.remote_extmap());
    let id_of = |ext: Extension| extmap.as_ref().and_then(|map| map.id_of(ext));
    let stream = IngressStream::new(
        clock_rate,
        id_of(Extension::AudioLevel),
        id_of(Extension::VideoOrientation),
    );
    ingress.streams.insert(*ssrc, stream);
    if let Some(rx) = publisher.rtc.direct_api().stream_rx(&ssrc) {
        rx.suppress_nack(true);
    }
}

/// A packet of the stream `ssrc`, which Relais reads itself, came through
/// str0m: a first packet, or one str0m unwrapped from the stream's repair
/// (RTX) stream. Once str0m knows the repair stream, Relais reads it too
/// ([`crate::ingress::RepairStream`]).
fn read_repairs_directly(publisher: &mut PeerSession, ssrc: Ssrc) {
    let ingress = publisher
        .direct
        .as_deref_mut()
        .and_then(|d| d.ingress.as_deref_mut());
    let Some(ingress) = ingress else {
        return;
    };
    let Some(stream) = ingress.streams.get_mut(&*ssrc).filter(|s| !s.repairs_read) else {
        return;
    };
    let Some(repair) = publisher
        .rtc
        .direct_api()
        .stream_rx(&ssrc)
        .and_then(|s| s.rtx())
    else {
        return;
    };
    stream.repairs_read = true;
    ingress.repairs.insert(*repair, RepairStream::new(*ssrc));
}

/// A quality sample of one of `track`'s streams; `jitter` in RTP timestamp units.
fn stream_sample(
    track: &PublishedTrack,
    direction: StatsDirection,
    jitter: u32,
    rtt: Option<Duration>,
    lost: u64,
) -> StreamSample {
    let clock_rate = track
        .codec
        .map_or(90_000, |(_, params)| params.spec().clock_rate.get());
    StreamSample {
        direction,
        kind: Kind::of(track.kind),
        source: TrackSource::try_from(track.info.source).unwrap_or(TrackSource::Unknown),
        jitter_us: (jitter > 0 && clock_rate > 0)
            .then(|| f64::from(jitter) * 1e6 / f64::from(clock_rate)),
        rtt_ms: rtt.map(|d| d.as_secs_f64() * 1000.0),
        lost,
    }
}

/// The codec a publisher's m-line will most likely carry: the first payload
/// type of the negotiated list that we know.
/// The codec a publisher's m-line will carry: the one its track asked for
/// (`wanted`, e.g. `"vp9"`, which the answer put first), else the first
/// negotiated one.
fn negotiated_codec(rtc: &str0m::Rtc, mid: Mid, wanted: Option<&str>) -> Option<CodecKind> {
    let media = rtc.media(mid)?;
    let negotiated: Vec<CodecKind> = media
        .remote_pts()
        .iter()
        .filter_map(|pt| {
            rtc.codec_config()
                .find(|c| c.pt() == *pt)
                .map(|c| CodecKind::from_str0m(c.spec().codec))
                .filter(|k| *k != CodecKind::Other)
        })
        .collect();
    let wanted = wanted.map(|w| w.rsplit('/').next().unwrap_or(w).to_ascii_lowercase());
    negotiated
        .iter()
        .find(|k| {
            wanted.as_deref().is_some_and(|w| {
                k.mime_type()
                    .rsplit('/')
                    .next()
                    .is_some_and(|name| name.eq_ignore_ascii_case(w))
            })
        })
        .or(negotiated.first())
        .copied()
}

/// The payload type on the subscriber PC that carries the publisher's codec.
fn matching_pt(candidates: &[PayloadParams], publisher: &PayloadParams) -> Option<Pt> {
    let want = publisher.spec();
    let same_codec = |c: &&PayloadParams| c.spec().codec == want.codec;
    let exact = candidates.iter().filter(same_codec).find(|c| {
        want.codec != Codec::H264
            || (c.spec().format.profile_level_id == want.format.profile_level_id
                && c.spec().format.packetization_mode == want.format.packetization_mode)
    });
    exact
        .or_else(|| candidates.iter().find(same_codec))
        .map(|c| c.pt())
}
