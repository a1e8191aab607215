//! A room: its participants, their peer connections, the tracks they publish
//! and who receives what. Sans-IO like str0m underneath it: signal messages,
//! datagrams and time go in; signal messages, datagrams and events come out of
//! [`Room::poll_output`].

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use relais_proto::ids;
use relais_proto::limits::LimitExceeded;
use relais_proto::livekit::{
    self, data_packet, leave_request, participant_info, request_response, signal_request,
    signal_response, AddTrackRequest, ClientInfo, ConnectionQualityInfo, ConnectionQualityUpdate,
    DataPacket, DisconnectReason, JoinResponse, LeaveRequest, MuteTrackRequest, ParticipantInfo,
    ParticipantPermission, ParticipantUpdate, RequestResponse, ServerInfo, SessionDescription,
    SignalRequest, SignalResponse, SignalTarget, SimulcastCodecInfo, SpeakerInfo, SpeakersChanged,
    SubscribedCodec, SubscribedQuality, SubscribedQualityUpdate, SubscriptionError,
    SubscriptionResponse, TrackInfo, TrackPublishedResponse, TrackSource, TrackType,
    TrickleRequest, UpdateParticipantMetadata, UpdateSubscription, UpdateTrackSettings,
    VideoQuality,
};
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::channel::{ChannelConfig, Reliability};
use str0m::format::{Codec, PayloadParams};
use str0m::ice::IceCreds;
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid, Pt, Rid};
use str0m::net::Receive;
use str0m::rtp::rtcp::{Nack, Rtcp};
use str0m::rtp::{RawPacket, RtpPacket, Ssrc};
use str0m::stats::{MediaEgressStats, MediaIngressStats};
use str0m::{Event, Input, Output};
use tracing::{debug, info, warn, Span};

use crate::codec::{CodecKind, Vp8Header, Vp8Rewrite, Vp9Layer};
use crate::config::MediaConfig;
use crate::dynacast::{self, LayerDemand};
use crate::egress::{self, SourcePacket, TrackHistory};
use crate::fan_out::{DriveChunk, DueSession, SessionDriver};
use crate::forward::{Forward, Incoming, TrackForwarder};
use crate::outgoing::Outgoing;
use crate::participant::{
    DataKind, DirectEgress, Downtrack, ForwardedCopy, Negotiation, Participant, ParticipantKey,
    PeerRole, PeerSession, SharedSpan, SubscriberChange, UNWRITTEN_KEPT,
};
use crate::quality::{ConnectionQualities, QualityChange};
use crate::sdp_order;
use crate::speakers::{ActiveSpeakers, AudioLevelMeter, SpeakerChange};
use crate::stats::{Direction as StatsDirection, DropReason, Kind, MediaStats, StreamSample};
use crate::timers::{self, Queued, TimerGrid, TimerQueue};
use crate::HashMap;

/// How often the publisher may be asked for a keyframe per track.
const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_millis(300);
/// A simulcast layer with no packet for this long is considered stopped.
const LAYER_STALE_AFTER: Duration = Duration::from_millis(1500);
/// At most this many tracks announced but not yet carrying media.
const MAX_PENDING_TRACKS: usize = 20;
/// Longest a video copy that does not end its frame waits for the one that
/// does (the RTP marker), so that a frame's copies to a subscriber share one
/// drive of its session: str0m's fixed cost of a drive is most of a copy's
/// at moderate load. The subscriber decodes nothing before the frame's last
/// packet, so the wait costs the picture no time when the frame arrives
/// within it; a frame spread wider (a paced keyframe) leaves in parts.
const FRAME_WAIT: Duration = Duration::from_millis(10);

/// How often updates about participants that publish nothing go out, all in
/// one message (LiveKit's interval and rule): otherwise a room filling up
/// with listeners sends each member one message per newcomer, O(N²).
const LISTENER_UPDATE_INTERVAL: Duration = Duration::from_secs(3);

/// How often a room reviews layers, speakers, dynacast and connection quality.
const LAYER_CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// What the room asks of the world around it.
#[derive(Debug)]
pub enum RoomOutput {
    /// A signal message for one participant's WebSocket; a broadcast shares
    /// one message among its recipients.
    Signal(ParticipantKey, Arc<SignalResponse>),
    /// The participant is gone: send `leave` if given, then close its WebSocket.
    Disconnect(ParticipantKey, Option<LeaveRequest>),
    /// A peer connection was created; datagrams to this ufrag belong to it.
    SessionOpened {
        ufrag: String,
        participant: ParticipantKey,
        role: PeerRole,
    },
    /// A peer connection was closed.
    SessionClosed { ufrag: String },
    /// Something operators and webhooks care about.
    Event(Box<RoomEvent>),
}

/// Lifecycle events (webhooks, metrics, logs).
#[derive(Debug, Clone)]
pub enum RoomEvent {
    /// The room was created (webhook `room_started`).
    RoomStarted(livekit::Room),
    /// The room closed: empty past its timeout, or deleted (`room_finished`).
    RoomFinished(livekit::Room),
    /// The participant became ACTIVE (`participant_joined`).
    ParticipantJoined(ParticipantInfo),
    /// A participant that had been ACTIVE left (`participant_left`).
    ParticipantLeft(ParticipantInfo),
    /// A participant left without ever becoming ACTIVE
    /// (`participant_connection_aborted`).
    ParticipantConnectionAborted(ParticipantInfo),
    TrackPublished(ParticipantInfo, TrackInfo),
    TrackUnpublished(ParticipantInfo, TrackInfo),
}

/// Why a join was refused.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("room is full: at most {0} participants")]
    RoomFull(u32),
    #[error("room is closed")]
    Closed,
    #[error("requested room does not exist")]
    NoSuchRoom,
    /// The room's shard has no capacity to spare: more participants would
    /// make it worse for everyone already there.
    #[error("server overloaded: try again later")]
    Overloaded,
}

/// What the signaling edge learned from the token and the connect request.
#[derive(Debug, Clone)]
pub struct JoinParams {
    pub key: ParticipantKey,
    pub identity: String,
    pub name: String,
    pub metadata: String,
    pub attributes: BTreeMap<String, String>,
    pub permission: ParticipantPermission,
    pub kind: i32,
    pub auto_subscribe: bool,
    pub protocol: i32,
    pub client_info: Option<ClientInfo>,
}

pub(crate) struct Layer {
    pub(crate) rid: Option<Rid>,
    pub(crate) ssrc: Option<Ssrc>,
    pub(crate) last_seen: Option<Instant>,
    /// Video with direct egress: the layer's last packets, for subscribers'
    /// NACKs.
    pub(crate) kept: TrackHistory,
}

pub(crate) struct Subscription {
    pub(crate) subscriber: ParticipantKey,
    /// The subscriber-PC m-line, once negotiated.
    pub(crate) mid: Option<Mid>,
    pub(crate) forwarder: TrackForwarder,
    pub(crate) out_pt: Option<Pt>,
    /// The SSRC of the send stream on `mid`, once the subscriber's answer made
    /// one: kept here so that a copy's path reads this list, not the
    /// subscriber's downtracks and str0m's stream table (cache misses, one
    /// subscriber after another, on the room's serial path).
    pub(crate) out_ssrc: Option<Ssrc>,
    /// The highest layer the subscriber asked for (`UpdateTrackSettings`:
    /// adaptive stream, a chosen quality); `usize::MAX` until it says.
    pub(crate) max_layer: usize,
    /// Likewise for the spatial layers of a VP9 SVC track (`None`: all).
    pub(crate) max_spatial: Option<u8>,
}

impl Subscription {
    /// Aim at the best layer the publisher sends, within what the subscriber
    /// wants and the room's load cap ([`Room::set_load_layer_cap`]).
    fn aim(&mut self, best_layer: usize, load_cap: usize) {
        self.forwarder
            .set_target_layer(best_layer.min(self.max_layer).min(load_cap));
        let load_spatial = u8::try_from(load_cap).ok();
        let spatial = match (self.max_spatial, load_spatial) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.forwarder.set_spatial_target(spatial);
    }
}

pub(crate) struct PublishedTrack {
    pub(crate) info: TrackInfo,
    pub(crate) publisher: ParticipantKey,
    pub(crate) kind: MediaKind,
    pub(crate) codec: Option<(CodecKind, PayloadParams)>,
    pub(crate) layers: Vec<Layer>,
    pub(crate) best_layer: usize,
    pub(crate) subscribers: Vec<Subscription>,
    pub(crate) last_keyframe_request: Option<Instant>,
    /// Audio tracks: voice level over the current speaker interval.
    pub(crate) audio_level: AudioLevelMeter,
    /// Simulcast tracks: the layers subscribers want, for dynacast.
    pub(crate) demand: LayerDemand,
}

impl PublishedTrack {
    /// The quality a subscriber's settings ask for: that of the smallest layer
    /// at least as large as the size it shows the video at, or else the
    /// quality it named.
    fn wanted_quality(&self, settings: &UpdateTrackSettings) -> i32 {
        if settings.width > 0 || settings.height > 0 {
            self.info
                .layers
                .iter()
                .filter(|l| l.width >= settings.width && l.height >= settings.height)
                .map(|l| l.quality)
                .min()
                .unwrap_or(VideoQuality::High as i32)
        } else {
            settings.quality
        }
    }

    /// The highest spatial layer a subscriber's settings allow on a track sent
    /// as one SVC stream with several layers announced (`None`: all of them).
    fn spatial_cap(&self, settings: &UpdateTrackSettings) -> Option<u8> {
        if self.layers.len() > 1 {
            return None;
        }
        let qualities = layer_qualities(&self.layers, &self.info);
        if qualities.len() < 2 {
            return None;
        }
        let wanted = self.wanted_quality(settings);
        let index = qualities.iter().rposition(|&q| q <= wanted).unwrap_or(0);
        (index + 1 < qualities.len()).then_some(index as u8)
    }

    /// The highest layer a subscriber's settings allow: the smallest layer at
    /// least as large as the size it shows the video at, or else the layer of
    /// the quality it asked for.
    fn layer_cap(&self, settings: &UpdateTrackSettings) -> usize {
        if self.layers.len() < 2 {
            return usize::MAX;
        }
        let quality = self.wanted_quality(settings);
        self.layers
            .iter()
            .rposition(|l| l.rid.as_ref().map_or(0, |r| i32::from(rid_quality(r))) <= quality)
            .unwrap_or(0)
    }
}

/// An event str0m produced that the room handles after the drain.
pub(crate) struct PendingEvent {
    participant: ParticipantKey,
    role: PeerRole,
    event: Event,
}

/// The room's str0m sessions by deadline.
pub(crate) type SessionTimers = TimerQueue<(ParticipantKey, PeerRole)>;

/// One LiveKit room. See the module docs.
pub struct Room {
    pub(crate) info: livekit::Room,
    pub(crate) config: MediaConfig,
    pub(crate) shard: u8,
    pub(crate) participants: HashMap<ParticipantKey, Participant>,
    pub(crate) by_identity: HashMap<String, ParticipantKey>,
    pub(crate) tracks: HashMap<String, PublishedTrack>,
    pub(crate) outputs: VecDeque<RoomOutput>,
    /// The datagrams to send, written in place; the shard lends its buffer
    /// for each call and takes it back with the outputs.
    pub(crate) outgoing: Outgoing,
    /// Whether `outgoing` is the shard's, lent for the call in progress.
    pub(crate) outgoing_lent: bool,
    /// The buffers of the chunks a large room's sessions are driven in,
    /// kept between rounds (a fresh one each round would fault its pages in
    /// anew: a room of 1,000 writes ~300 KiB per chunk).
    chunk_buffers: Vec<Outgoing>,
    pub(crate) events: VecDeque<PendingEvent>,
    /// Every session's next str0m deadline: only due sessions are polled.
    pub(crate) timers: SessionTimers,
    /// Scratch list of the sessions due in [`Room::handle_timeout`].
    due: Vec<(ParticipantKey, PeerRole)>,
    /// Subscriber sessions given copies that leave in the next round, and
    /// since when the first waits. Kept out of `timers`: a packet to a large
    /// room would otherwise push every subscriber's session to the top of the
    /// heap and pop it again — O(log N) cache misses per copy.
    due_now: Vec<(ParticipantKey, PeerRole)>,
    due_now_since: Instant,
    /// Subscriber sessions holding the copies of an unfinished video frame
    /// ([`FRAME_WAIT`]), by when they leave anyway. In order, as every wait
    /// is equally long: a queue, not the timer heap, which a frame that ends
    /// in time (nearly all) would leave an entry behind in to pop and re-queue
    /// — per frame and subscriber. An entry no longer the session's
    /// ([`PeerSession::frame_wait`]) is dropped when it comes up.
    frame_waits: VecDeque<(Instant, ParticipantKey)>,
    /// Where the shard's timer queue has this room.
    pub(crate) queued: Queued,
    /// When the room became empty (or was created empty).
    pub(crate) empty_since: Option<Instant>,
    pub(crate) next_layer_check: Instant,
    /// Latest info of participants that publish nothing, for everyone at the
    /// next flush (see [`LISTENER_UPDATE_INTERVAL`]).
    pub(crate) listener_updates: BTreeMap<ParticipantKey, ParticipantInfo>,
    pub(crate) next_listener_flush: Instant,
    /// The highest simulcast layer anyone is sent while the shard sheds load;
    /// `usize::MAX` otherwise.
    pub(crate) load_layer_cap: usize,
    /// Who speaks, updated with the layer check; and when it last was.
    pub(crate) speakers: ActiveSpeakers<ParticipantKey>,
    /// Everyone's connection quality, from the streams' stats.
    pub(crate) qualities: ConnectionQualities<ParticipantKey>,
    pub(crate) last_speaker_update: Instant,
    pub(crate) closed: bool,
    /// Server-initiated RPCs (RoomService `PerformRpc`) awaiting their response.
    pub(crate) server_rpcs: crate::room_admin::ServerRpcs,
    /// Counters since the shard last collected them ([`Room::take_stats`]).
    pub(crate) stats: MediaStats,
    /// Copies of media written to subscribers since the room was made that
    /// leave in the next round (not waiting for the rest of their frame);
    /// what [`Room::handle_receive`] reports is the difference it made.
    copies_leaving: u64,
    /// `room{room, room_sid}`: entered around everything the room does, so
    /// every log line about it names it. Participants' spans are its children.
    pub(crate) span: SharedSpan,
}

impl Room {
    /// Create a room. `shard` is encoded in every ICE ufrag the room mints so the
    /// node's socket layer can route a STUN packet without a lookup.
    pub fn new(name: &str, config: MediaConfig, shard: u8, now: Instant, unix_ms: i64) -> Self {
        let defaults = config.room_defaults;
        let info = livekit::Room {
            sid: ids::new_id("RM_"),
            name: name.to_string(),
            empty_timeout: defaults.empty_timeout.as_secs() as u32,
            departure_timeout: defaults.departure_timeout.as_secs() as u32,
            max_participants: defaults.max_participants,
            creation_time: unix_ms / 1000,
            creation_time_ms: unix_ms,
            enabled_codecs: enabled_codecs(),
            ..Default::default()
        };
        // ERROR level: a span is kept whenever any event is logged, so the room's
        // fields are on every line whatever the configured level.
        let span = SharedSpan::new(
            tracing::error_span!(parent: None, "room", room = %info.name, room_sid = %info.sid),
        );
        let mut outputs = VecDeque::new();
        outputs.push_back(RoomOutput::Event(Box::new(RoomEvent::RoomStarted(
            info.clone(),
        ))));
        Room {
            info,
            config,
            shard,
            participants: HashMap::default(),
            by_identity: HashMap::default(),
            tracks: HashMap::default(),
            outputs,
            outgoing: Outgoing::default(),
            outgoing_lent: false,
            chunk_buffers: Vec::new(),
            events: VecDeque::new(),
            timers: TimerQueue::default(),
            due: Vec::new(),
            due_now: Vec::new(),
            due_now_since: now,
            frame_waits: VecDeque::new(),
            queued: None,
            empty_since: Some(now),
            next_layer_check: now,
            listener_updates: BTreeMap::new(),
            next_listener_flush: now,
            load_layer_cap: usize::MAX,
            speakers: ActiveSpeakers::default(),
            qualities: ConnectionQualities::default(),
            last_speaker_update: now,
            closed: false,
            server_rpcs: Default::default(),
            stats: MediaStats::default(),
            copies_leaving: 0,
            span,
        }
    }

    /// The room's span (`room{room, room_sid}`).
    pub fn span(&self) -> &Span {
        &self.span
    }

    /// The span of participant `key` (a child of the room's), or the room's.
    pub fn span_for(&self, key: ParticipantKey) -> SharedSpan {
        self.participants
            .get(&key)
            .map_or_else(|| self.span.clone(), |p| p.span.clone())
    }

    /// Counters since the previous call.
    pub fn take_stats(&mut self) -> MediaStats {
        std::mem::take(&mut self.stats)
    }

    /// A participant's info, by key.
    pub fn participant_info(&self, key: ParticipantKey) -> Option<&ParticipantInfo> {
        self.participants.get(&key).map(|p| &p.info)
    }

    pub fn info(&self) -> &livekit::Room {
        &self.info
    }

    pub fn name(&self) -> &str {
        &self.info.name
    }

    pub fn num_participants(&self) -> usize {
        self.participants.len()
    }

    /// True once the room has closed (empty past its timeout); drop it.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Participant infos, as RoomService and `ListParticipants` show them.
    pub fn participant_infos(&self) -> Vec<ParticipantInfo> {
        self.participants.values().map(|p| p.info.clone()).collect()
    }

    /// Admit a participant: answers with `join`, tells the others, and makes the
    /// first subscriber offer.
    pub fn join(
        &mut self,
        now: Instant,
        unix_ms: i64,
        params: JoinParams,
    ) -> Result<ParticipantKey, JoinError> {
        let room_span = self.span.clone();
        let _room = room_span.enter();
        if self.closed {
            return Err(JoinError::Closed);
        }
        // The same identity joining again replaces the old session.
        if let Some(old) = self.by_identity.get(&params.identity).copied() {
            self.remove_participant(now, old, DisconnectReason::DuplicateIdentity);
        }
        let max = self.info.max_participants;
        if max > 0 && self.participants.len() as u32 >= max {
            return Err(JoinError::RoomFull(max));
        }

        let key = params.key;
        let subscriber = self.open_session(now, key, PeerRole::Subscriber);
        let info = ParticipantInfo {
            sid: ids::new_id("PA_"),
            identity: params.identity.clone(),
            state: participant_info::State::Joining as i32,
            metadata: params.metadata,
            joined_at: unix_ms / 1000,
            joined_at_ms: unix_ms,
            name: params.name,
            version: 1,
            permission: Some(params.permission.clone()),
            region: self.config.region.clone(),
            kind: params.kind,
            attributes: params.attributes,
            client_protocol: params.client_info.as_ref().map_or(0, |c| c.client_protocol),
            ..Default::default()
        };
        let span = tracing::error_span!(
            parent: &*self.span,
            "participant",
            participant = %info.identity,
            participant_sid = %info.sid
        );
        let span = SharedSpan::new(span);
        let _participant = Span::clone(&span).entered();
        info!("participant joining");
        let participant = Participant {
            key,
            span,
            info,
            permission: params.permission,
            protocol: params.protocol,
            auto_subscribe: params.auto_subscribe,
            publisher: None,
            subscriber,
            pending_tracks: Vec::new(),
            published_by_mid: HashMap::default(),
            ssrc_routes: HashMap::default(),
            publisher_channels: HashMap::default(),
            subscriber_reliable: None,
            subscriber_lossy: None,
            subscriber_channels_open: 0,
            negotiation: Negotiation::default(),
            downtracks: HashMap::default(),
            subscriber_changes: Vec::new(),
            waiting_subscriptions: Vec::new(),
            last_reliable_seq: 0,
        };
        self.by_identity
            .insert(participant.info.identity.clone(), key);
        self.participants.insert(key, participant);
        self.empty_since = None;
        self.info.num_participants = self.participants.len() as u32;

        let join = self.join_response(key);
        self.signal(key, signal_response::Message::Join(join));
        if let Some(p) = self.participants.get_mut(&key) {
            p.info.state = participant_info::State::Joined as i32;
            p.touch();
        }
        self.broadcast_participant(key, false, false);

        // The subscriber PC always carries the server's data channels; with fast
        // start it also carries every existing track right away.
        if let Some(p) = self.participants.get_mut(&key) {
            p.subscriber_changes.push(SubscriberChange::DataChannels);
        }
        if self.wants_auto_subscribe(key) {
            let sids: Vec<String> = self
                .tracks
                .iter()
                .filter(|(_, t)| t.publisher != key)
                .map(|(sid, _)| sid.clone())
                .collect();
            for sid in sids {
                self.subscribe(key, &sid, false);
            }
            // Layers nobody watched may be off: back on now, not at the next tick.
            self.update_dynacast(now);
        }
        self.negotiate_subscriber(now, key);
        Ok(key)
    }

    fn wants_auto_subscribe(&self, key: ParticipantKey) -> bool {
        self.participants
            .get(&key)
            .is_some_and(|p| p.auto_subscribe && p.permission.can_subscribe)
    }

    /// A new peer connection of `key`'s, queued for time and announced to the
    /// shard so that datagrams to its ufrag find it.
    fn open_session(&mut self, now: Instant, key: ParticipantKey, role: PeerRole) -> PeerSession {
        // Two hex digits of shard, then randomness: the socket layer reads the shard.
        let ufrag = format!("{:02x}{}", self.shard, random_ice_chars(14));
        let publisher = role == PeerRole::Publisher;
        let direct = (!publisher && (self.config.direct_audio || self.config.direct_video))
            .then(|| Box::new(DirectEgress::new(now, self.config.clock_epoch)));
        if let Some(direct) = &direct {
            egress::tap_next_session(direct.keys.clone());
        }
        let rtc = self
            .config
            .build_rtc(ice_creds(ufrag.clone()), now, publisher);
        // Disarmed if the build made no DTLS instance of ours.
        egress::take_tapped_slot();
        let mut session = PeerSession::new(rtc, ufrag, now);
        session.direct = direct;
        if publisher {
            session.grid =
                TimerGrid::new(self.config.clock_epoch.0, self.config.publisher_timer_grid);
        }
        self.timers
            .schedule(&mut session.queued, &(key, role), session.deadline);
        self.outputs.push_back(RoomOutput::SessionOpened {
            ufrag: session.ufrag.clone(),
            participant: key,
            role,
        });
        session
    }

    fn join_response(&self, key: ParticipantKey) -> JoinResponse {
        let p = &self.participants[&key];
        let others = self
            .participants
            .values()
            .filter(|o| o.key != key && !o.is_hidden())
            .map(|o| o.info.clone())
            .collect();
        JoinResponse {
            room: Some(self.info.clone()),
            participant: Some(p.info.clone()),
            other_participants: others,
            server_version: self.config.server_version.clone(),
            subscriber_primary: p.subscriber_primary(),
            ping_timeout: self.config.ping_timeout.as_secs() as i32,
            ping_interval: self.config.ping_interval.as_secs() as i32,
            server_info: Some(ServerInfo {
                edition: livekit::server_info::Edition::Standard as i32,
                version: self.config.server_version.clone(),
                protocol: 16,
                region: self.config.region.clone(),
                node_id: self.config.node_id.clone(),
                debug_info: crate::config::RELAIS_VERSION.to_string(),
                ..Default::default()
            }),
            server_region: self.config.region.clone(),
            enabled_publish_codecs: enabled_codecs(),
            ..Default::default()
        }
    }

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
            let best = track.best_layer;
            let Some(sub) = track.subscribers.iter_mut().find(|s| s.subscriber == key) else {
                continue;
            };
            sub.max_layer = cap;
            sub.max_spatial = spatial_cap;
            sub.aim(best, self.load_layer_cap);
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
    fn subscribe(&mut self, key: ParticipantKey, sid: &str, explicit: bool) -> bool {
        let Some(kind) = self.tracks.get(sid).map(|t| t.kind) else {
            return false;
        };
        let has_room = self.has_subscription_room(key, kind);
        let Some(track) = self.tracks.get_mut(sid) else {
            return false;
        };
        let Some(p) = self.participants.get_mut(&key) else {
            return false;
        };
        if track.publisher == key || !p.permission.can_subscribe || p.receives(sid) {
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
        true
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
    fn subscribe_waiting(&mut self, key: ParticipantKey) {
        let waiting = self
            .participants
            .get(&key)
            .map(|p| p.waiting_subscriptions.clone())
            .unwrap_or_default();
        for sid in waiting {
            self.subscribe(key, &sid, false);
        }
    }

    /// Offer the subscriber PC's pending changes, or remember to once the
    /// answer to the offer in flight arrives.
    fn negotiate_subscriber(&mut self, now: Instant, key: ParticipantKey) {
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

    /// Remove a participant: close its PCs, unpublish its tracks, tell the others.
    pub fn remove_participant(
        &mut self,
        now: Instant,
        key: ParticipantKey,
        reason: DisconnectReason,
    ) {
        let Some(mut p) = self.participants.remove(&key) else {
            return;
        };
        let span = p.span.clone();
        let _span = span.enter();
        info!(?reason, "participant left");
        if self.by_identity.get(&p.info.identity) == Some(&key) {
            self.by_identity.remove(&p.info.identity);
        }
        for session in p.publisher.iter_mut().chain([&mut p.subscriber]) {
            session.rtc.disconnect();
            self.outputs.push_back(RoomOutput::SessionClosed {
                ufrag: session.ufrag.clone(),
            });
        }
        // Its subscriptions.
        for d in p.downtracks.values() {
            if let Some(t) = self.tracks.get_mut(&d.track_sid) {
                t.subscribers.retain(|s| s.subscriber != key);
            }
        }
        // Its tracks, from everyone who received them.
        let own: Vec<String> = p.published_by_mid.values().cloned().collect();
        for sid in own {
            self.unpublish(now, &sid, &p.info);
        }
        // Only a participant moved to another node is asked to come back.
        let action = match reason {
            DisconnectReason::Migration => leave_request::Action::Reconnect,
            _ => leave_request::Action::Disconnect,
        };
        let leave = match reason {
            DisconnectReason::ClientInitiated => None,
            _ => Some(LeaveRequest {
                reason: reason as i32,
                action: action as i32,
                ..Default::default()
            }),
        };
        self.outputs.push_back(RoomOutput::Disconnect(key, leave));
        let was_active = p.info.state == participant_info::State::Active as i32;
        p.info.state = participant_info::State::Disconnected as i32;
        p.info.disconnect_reason = reason as i32;
        p.info.tracks.clear();
        p.touch();
        if !p.is_hidden() {
            self.announce(key, p.info.clone(), false, false);
        }
        // LiveKit: a participant that never became ACTIVE "aborted" its connection.
        let event = if was_active {
            RoomEvent::ParticipantLeft(p.info)
        } else {
            RoomEvent::ParticipantConnectionAborted(p.info)
        };
        self.outputs.push_back(RoomOutput::Event(Box::new(event)));
        self.info.num_participants = self.participants.len() as u32;
        if self.participants.is_empty() {
            self.empty_since = Some(now);
        }
    }

    pub(crate) fn unpublish(&mut self, now: Instant, sid: &str, publisher: &ParticipantInfo) {
        let Some(track) = self.tracks.remove(sid) else {
            return;
        };
        let mut renegotiate = Vec::new();
        for sub in &track.subscribers {
            if let Some(s) = self.participants.get_mut(&sub.subscriber) {
                s.stop_receiving(sid);
                renegotiate.push(sub.subscriber);
            }
        }
        for p in self.participants.values_mut() {
            p.waiting_subscriptions.retain(|w| w != sid);
        }
        for key in renegotiate {
            // The slot it held goes to a track the subscriber waits for.
            self.subscribe_waiting(key);
            self.negotiate_subscriber(now, key);
        }
        self.outputs
            .push_back(RoomOutput::Event(Box::new(RoomEvent::TrackUnpublished(
                publisher.clone(),
                track.info,
            ))));
    }

    /// Datagram for one of this room's sessions (the shard found which).
    /// Returns how many copies of its media were written to subscribers to be
    /// sent when those sessions are next driven, in [`Room::handle_timeout`];
    /// copies of a video packet that does not end its frame wait for the one
    /// that does ([`FRAME_WAIT`]) and are not counted.
    pub fn handle_receive(
        &mut self,
        now: Instant,
        key: ParticipantKey,
        role: PeerRole,
        receive: Receive<'_>,
        nominates: bool,
    ) -> u64 {
        let before = self.copies_leaving;
        let Some(p) = self.participants.get_mut(&key) else {
            return 0;
        };
        let span = p.span.clone();
        let _span = span.enter();
        let Some(session) = p.session_mut(role) else {
            return 0;
        };
        if let (true, Some(direct)) = (nominates, session.direct.as_deref_mut()) {
            direct.nominated = Some((receive.proto, receive.source));
        }
        if let Err(e) = session.rtc.handle_input(Input::Receive(now, receive)) {
            self.stats.drop_packet(DropReason::Malformed);
            debug!(?role, error = %e, "bad datagram");
        }
        self.drain(now, key, role);
        self.process_events(now);
        self.settle_timers();
        self.copies_leaving - before
    }

    /// Drive the sessions whose deadline has passed; check room timers. With
    /// many sessions due (a large room's fan-out), `driver` drives them, on
    /// as many threads as it has (see [`crate::fan_out`]).
    pub fn handle_timeout(&mut self, now: Instant, driver: &dyn SessionDriver) {
        let room_span = self.span.clone();
        let _room = room_span.enter();
        // Collect first: a session driven here may want time again at `now`,
        // which is the next call's business, not a loop in this one.
        let mut due = std::mem::take(&mut self.due);
        due.append(&mut self.due_now);
        while let Some(&(until, key)) = self.frame_waits.front() {
            if until > now {
                break;
            }
            self.frame_waits.pop_front();
            let Some(session) = self.participants.get_mut(&key).map(|p| &mut p.subscriber) else {
                continue;
            };
            if session.frame_wait == Some(until) {
                session.frame_wait = None;
                session.deadline = session.deadline.min(until);
                if !session.listed {
                    session.listed = true;
                    due.push((key, PeerRole::Subscriber));
                }
            }
        }
        while let Some((entry, (key, role))) = self.timers.pop_due(now) {
            let Some(p) = self.participants.get_mut(&key) else {
                continue;
            };
            let Some(session) = p.session_mut(role) else {
                continue;
            };
            if timers::fire(&mut session.queued, entry) && !session.listed {
                session.listed = true;
                due.push((key, role));
            }
        }
        let in_chunks = driver.threads() > 1 && due.len() >= self.config.fan_out_min_sessions;
        // Copies forwarded while these are driven list their sessions anew.
        for &(key, role) in &due {
            if let Some(session) = self
                .participants
                .get_mut(&key)
                .and_then(|p| p.session_mut(role))
            {
                session.listed = false;
                // Driven here: warmed here (a chunk warms its own, where it is driven).
                if !in_chunks {
                    egress::warm(session);
                }
            }
        }
        if in_chunks {
            self.drive_in_chunks(now, &due, driver);
        } else {
            self.drive_in_place(now, &due);
        }
        self.process_events(now);

        // Peer connections that str0m gave up on (ICE timeout, DTLS failure):
        // that only happens while str0m handles input or time, and a failed
        // drain queues its session at once, so the due ones are all to check.
        for (key, _) in due.drain(..) {
            let Some(p) = self.participants.get(&key) else {
                continue;
            };
            let sessions = || p.publisher.iter().chain([&p.subscriber]);
            let reason = if sessions().any(|s| s.failed) {
                DisconnectReason::MediaFailure
            } else if sessions().any(|s| !s.rtc.is_alive()) {
                DisconnectReason::ConnectionTimeout
            } else {
                continue;
            };
            self.remove_participant(now, key, reason);
        }
        self.due = due;
        self.settle_timers();
        let participants = &self.participants;
        self.timers
            .compact(2 * participants.len(), |entry, (key, role)| {
                participants
                    .get(key)
                    .and_then(|p| p.session(*role))
                    .is_some_and(|s| s.queued == Some(entry))
            });

        if now >= self.next_layer_check {
            self.next_layer_check = next_tick(self.next_layer_check, LAYER_CHECK_INTERVAL, now);
            self.update_layer_targets(now);
            self.update_speakers(now);
            self.update_dynacast(now);
            self.update_qualities(now);
            self.flush_listener_updates(now);
        }
        if let Some(since) = self.empty_since {
            if now.duration_since(since) >= Duration::from_secs(u64::from(self.info.empty_timeout))
            {
                info!("closing empty room");
                self.finish();
            }
        }
    }

    /// Re-queue the sessions at the front of the timer heap whose entry is
    /// earlier than their deadline, drop stale ones, and drop the frame waits
    /// at the front whose frame has left: each would wake the shard for
    /// nothing.
    fn settle_timers(&mut self) {
        let participants = &mut self.participants;
        while let Some(&(until, key)) = self.frame_waits.front() {
            if participants
                .get(&key)
                .is_some_and(|p| p.subscriber.frame_wait == Some(until))
            {
                break;
            }
            self.frame_waits.pop_front();
        }
        while let Some((entry, (key, role))) = self.timers.pop_early_front(|entry, &(key, role)| {
            participants
                .get(&key)
                .and_then(|p| p.session(role))
                .is_none_or(|s| s.queued != Some(entry) || s.deadline > entry.0)
        }) {
            let Some(session) = participants.get_mut(&key).and_then(|p| p.session_mut(role)) else {
                continue;
            };
            if timers::fire(&mut session.queued, entry) {
                self.timers
                    .schedule(&mut session.queued, &(key, role), session.deadline);
            }
        }
    }

    /// Drive each due session on the caller's thread.
    fn drive_in_place(&mut self, now: Instant, due: &[(ParticipantKey, PeerRole)]) {
        for &(key, role) in due {
            let Some(session) =
                ready_session(&mut self.participants, &mut self.timers, now, key, role)
            else {
                continue;
            };
            if egress::send_direct_only(session, now, &mut self.outgoing) {
                let wake_at = session.deadline;
                self.timers
                    .schedule(&mut session.queued, &(key, role), wake_at);
                continue;
            }
            give_time(session, key, role, now);
            self.drain(now, key, role);
        }
    }

    /// Hand the due sessions to `driver` in chunks of about an equal share
    /// per thread (two per thread, so that one slow chunk is evened out).
    fn drive_in_chunks(
        &mut self,
        now: Instant,
        due: &[(ParticipantKey, PeerRole)],
        driver: &dyn SessionDriver,
    ) {
        let mut ready: usize = 0;
        for &(key, role) in due {
            if let Some(session) =
                ready_session(&mut self.participants, &mut self.timers, now, key, role)
            {
                session.ready = true;
                ready += 1;
            }
        }
        let size = ready.div_ceil(2 * driver.threads()).max(1);
        let mut chunks = Vec::with_capacity(ready.div_ceil(size));
        let buffers = &mut self.chunk_buffers;
        let mut new_chunk = || {
            DriveChunk::new(
                now,
                Span::clone(&self.span),
                size,
                buffers.pop().unwrap_or_default(),
            )
        };
        let mut chunk = new_chunk();
        // The ready sessions are borrowed from the participant map at once,
        // each on its own: a scan of the room, cheap next to driving most of it.
        for p in self.participants.values_mut() {
            let key = p.key;
            let sessions = p.publisher.iter_mut().map(|s| (PeerRole::Publisher, s));
            for (role, session) in sessions.chain([(PeerRole::Subscriber, &mut p.subscriber)]) {
                if !std::mem::take(&mut session.ready) {
                    continue;
                }
                chunk.sessions.push(DueSession {
                    key,
                    role,
                    session,
                    wake_at: now,
                });
                if chunk.len() == size {
                    let next = new_chunk();
                    chunks.push(std::mem::replace(&mut chunk, next));
                }
            }
        }
        if !chunk.is_empty() {
            chunks.push(chunk);
        }
        driver.drive(&mut chunks);
        for mut chunk in chunks {
            self.outgoing.append(&mut chunk.outgoing);
            self.chunk_buffers.push(chunk.outgoing);
            for due in chunk.sessions {
                self.timers
                    .schedule(&mut due.session.queued, &(due.key, due.role), due.wake_at);
            }
            self.events.extend(chunk.events);
        }
    }

    /// Close the room (once): later joins are refused, the shard drops it, and
    /// `RoomFinished` is emitted after every event already queued.
    pub(crate) fn finish(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.info.num_participants = self.participants.len() as u32;
        self.outputs
            .push_back(RoomOutput::Event(Box::new(RoomEvent::RoomFinished(
                self.info.clone(),
            ))));
    }

    /// The earliest time the room needs [`Room::handle_timeout`].
    pub fn poll_timeout(&self) -> Instant {
        let sessions = self.timers.next();
        let empty = self
            .empty_since
            .map(|s| s + Duration::from_secs(u64::from(self.info.empty_timeout)));
        let mut next = self.next_layer_check;
        let due_now = (!self.due_now.is_empty()).then_some(self.due_now_since);
        let frame_wait = self.frame_waits.front().map(|&(until, _)| until);
        for t in [sessions, empty, due_now, frame_wait].into_iter().flatten() {
            next = next.min(t);
        }
        next
    }

    /// Next thing for the world to do, if any.
    pub fn poll_output(&mut self) -> Option<RoomOutput> {
        self.outputs.pop_front()
    }

    /// Run str0m's output loop for one session until it asks for time.
    fn drain(&mut self, now: Instant, key: ParticipantKey, role: PeerRole) {
        let Some(session) = self
            .participants
            .get_mut(&key)
            .and_then(|p| p.session_mut(role))
        else {
            return;
        };
        drain_session(
            session,
            key,
            role,
            now,
            &mut self.outgoing,
            &mut self.events,
            &mut self.timers,
        );
    }

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
            // Only subscriber sessions with direct video ask for these.
            if let (PeerRole::Subscriber, RawPacket::RtcpRx(Rtcp::Nack(nack))) = (role, *raw) {
                self.on_direct_nack(now, key, &nack);
            }
            return;
        }
        let span = self.span_for(key);
        let _span = span.enter();
        match event {
            Event::MediaIngressStats(stats) if role == PeerRole::Publisher => {
                self.on_ingress_stats(key, &stats)
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
                let out = StatsDirection::Outgoing as usize;
                match req.kind {
                    KeyframeRequestKind::Pli => self.stats.plis[out] += 1,
                    KeyframeRequestKind::Fir => self.stats.firs[out] += 1,
                }
                let sid = self
                    .participants
                    .get(&key)
                    .and_then(|p| p.downtracks.get(&req.mid))
                    .map(|d| d.track_sid.clone());
                if let Some(sid) = sid {
                    self.request_keyframe(now, &sid);
                }
            }
            Event::IceConnectionStateChange(state) => {
                debug!(?key, ?role, ?state, "ice state");
            }
            _ => {}
        }
    }

    /// A subscriber lost packets of a stream Relais sends itself: only
    /// Relais has them ([`egress::resend`]).
    fn on_direct_nack(&mut self, now: Instant, key: ParticipantKey, nack: &Nack) {
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        // The track the stream forwards holds the packets (few NACKs: a
        // search of the subscriber's downtracks is cheap enough).
        let Some(track) = p
            .downtracks
            .values()
            .find(|d| d.ssrc == Some(nack.ssrc))
            .and_then(|d| self.tracks.get(d.track_sid.as_str()))
        else {
            return;
        };
        let layer = |i: u8| track.layers.get(usize::from(i)).map(|l| &l.kept);
        let sent = egress::resend(&mut p.subscriber, nack, layer, now, &mut self.outgoing);
        self.stats.direct_resent += sent;
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
        // Packets Relais sent itself on this stream, which str0m's count lacks.
        let direct = p.subscriber.direct.as_deref().and_then(|direct| {
            let ssrc = p.downtracks.get(&s.mid)?.ssrc?;
            direct.streams.get(&ssrc)
        });
        let sent = s.packets + direct.map_or(0, |d| u64::from(d.packets));
        let seen = p.subscriber.stats_seen.entry((s.mid, s.rid)).or_default();
        let (nacks, packets) = seen.advance(s.nacks, sent);
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
        if role == p.primary() && p.info.state != participant_info::State::Active as i32 {
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
            // Qualities too: a newcomer learns everyone's once connected, and
            // everyone learns the newcomer's when they learn of the newcomer
            // (SDKs drop the quality of a participant they do not know).
            let all =
                self.quality_infos(&self.qualities.current(self.participants.keys().copied()));
            if !all.is_empty() {
                self.signal(
                    key,
                    signal_response::Message::ConnectionQuality(ConnectionQualityUpdate {
                        updates: all,
                    }),
                );
            }
            if !self.listener_updates.contains_key(&key) {
                // The newcomer has its own already, in `all`.
                self.announce_qualities(std::iter::once(key), Some(key));
            }
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
                kept: TrackHistory::default(),
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
                    kept: TrackHistory::default(),
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

    /// The hot path: one RTP packet from a publisher, out to its subscribers.
    fn on_rtp(&mut self, now: Instant, key: ParticipantKey, pkt: RtpPacket) {
        let ssrc = pkt.header.ssrc;
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        let (sid, layer) = match p.ssrc_routes.get(&ssrc) {
            Some((sid, layer)) => (sid.clone(), *layer),
            None => {
                // RTP arrives only on a publisher PC, so there is one.
                let Some(publisher) = p.publisher.as_mut() else {
                    return;
                };
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
                let sid: Arc<str> = sid.into();
                p.ssrc_routes.insert(ssrc, (sid.clone(), layer));
                (sid, layer)
            }
        };
        let Some(track) = self.tracks.get_mut(&*sid) else {
            self.stats.drop_packet(DropReason::UnknownTrack);
            return;
        };
        let kind = Kind::of(track.kind) as usize;
        let size = (pkt.header.header_len + pkt.payload.len()) as u64;
        self.stats.packets_in[kind] += 1;
        self.stats.bytes_in[kind] += size;
        if let Some(level) = pkt.header.ext_vals.audio_level {
            track.audio_level.observe(level);
        }
        let Some((codec, params)) = track.codec else {
            self.stats.drop_packet(DropReason::NoCodec);
            return;
        };
        let first_on_layer = track.layers[layer].last_seen.is_none();
        track.layers[layer].last_seen = Some(now);
        if first_on_layer && layer > track.best_layer {
            track.best_layer = layer;
            for s in &mut track.subscribers {
                s.aim(layer, self.load_layer_cap);
            }
        }
        let vp8 = if codec == CodecKind::Vp8 {
            Vp8Header::parse(&pkt.payload)
        } else {
            None
        };
        let incoming = Incoming {
            layer,
            seq: *pkt.seq_no,
            timestamp: pkt.header.timestamp,
            keyframe: codec.starts_keyframe(&pkt.payload),
            vp8,
            svc: (codec == CodecKind::Vp9)
                .then(|| Vp9Layer::parse(&pkt.payload))
                .flatten(),
            marker: pkt.header.marker,
            arrival: pkt.timestamp,
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
        let mut sent_directly = false;
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
                debug!(subscriber = %s.info.identity, track = %sid, layer, "forwarding starts on a keyframe");
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
            let mut copy = ForwardedCopy {
                ssrc: out_ssrc,
                pt: out_pt,
                seq: rewrite.seq,
                timestamp: rewrite.timestamp,
                wallclock: pkt.timestamp,
                marker: rewrite.marker,
                nackable: is_video,
                audio_level: pkt.header.ext_vals.audio_level,
                voice_activity: pkt.header.ext_vals.voice_activity,
                video_orientation: pkt.header.ext_vals.video_orientation,
                payload: pkt.payload.clone(),
                clock_rate: incoming.clock_rate,
                source,
                vp8: (rewrite.vp8_picture_id.is_some() || rewrite.vp8_tl0_pic_idx.is_some())
                    .then_some(Vp8Rewrite {
                        picture_id: rewrite.vp8_picture_id,
                        tl0_pic_idx: rewrite.vp8_tl0_pic_idx,
                    }),
                direct: false,
            };
            // The stream exists: its SSRC was learnt from it, and it is stopped
            // only after this subscription is gone.
            let session = &mut s.subscriber;
            let direct_kind = if is_video {
                self.config.direct_video
            } else {
                self.config.direct_audio
            };
            if direct_kind && session.direct_ready() {
                copy.direct = true;
                sent_directly = true;
                self.stats.direct_out[kind] += 1;
            }
            if is_video && !copy.direct && self.config.direct_video && session.direct.is_some() {
                // str0m must not resend it on the RTX SSRC Relais numbers
                // itself: two senders of one SSRC under one key could repeat
                // an SRTP nonce. Lost, it costs a keyframe (PLI) instead.
                copy.nackable = false;
            }
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
        if is_video && sent_directly {
            // Kept for the subscribers' NACKs; a packet nobody was sent
            // directly is not (a layer no one watches holds no memory).
            let orientation = pkt.header.ext_vals.video_orientation;
            track.layers[layer]
                .kept
                .keep(source, &pkt.payload, orientation);
        }
        if need_keyframe {
            self.request_keyframe(now, &sid);
        }
    }

    /// Ask the publisher of `sid` for a keyframe on each layer a subscriber waits
    /// for, at most once per [`KEYFRAME_REQUEST_INTERVAL`].
    fn request_keyframe(&mut self, now: Instant, sid: &str) {
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

    /// Point every subscriber at the best layer still flowing.
    fn update_layer_targets(&mut self, now: Instant) {
        let load_cap = self.load_layer_cap;
        let mut wants_keyframe = Vec::new();
        for (sid, track) in &mut self.tracks {
            if track.layers.len() < 2 {
                continue;
            }
            let best = track
                .layers
                .iter()
                .rposition(|l| {
                    l.last_seen
                        .is_some_and(|t| now.duration_since(t) < LAYER_STALE_AFTER)
                })
                .unwrap_or(0);
            if best != track.best_layer {
                track.best_layer = best;
                for s in &mut track.subscribers {
                    s.aim(best, load_cap);
                }
            }
            if track
                .subscribers
                .iter()
                .any(|s| s.forwarder.wants_keyframe())
            {
                wants_keyframe.push(sid.clone());
            }
        }
        for sid in wants_keyframe {
            self.request_keyframe(now, &sid);
        }
    }

    /// Cap every subscriber's simulcast layer at `cap` (`usize::MAX`: no cap),
    /// for a shard that cannot keep up: the lowest layer of a 3-layer track is
    /// a fraction of the packets, so everyone gets smooth low-resolution video
    /// instead of the broken high-resolution video that skipped packets
    /// leave. Switches happen on keyframes (asked for here), and the publishers
    /// are told at once which layers are still received (dynacast).
    pub fn set_load_layer_cap(&mut self, now: Instant, cap: usize) {
        if cap == self.load_layer_cap {
            return;
        }
        self.load_layer_cap = cap;
        for track in self.tracks.values_mut() {
            let best = track.best_layer;
            for s in &mut track.subscribers {
                s.aim(best, cap);
            }
        }
        self.update_layer_targets(now);
        self.update_dynacast(now);
    }

    /// Tell publishers which simulcast layers anyone receives
    /// (`SubscribedQualityUpdate`, see `dynacast.rs`).
    fn update_dynacast(&mut self, now: Instant) {
        let load_cap = self.load_layer_cap;
        let mut updates = Vec::new();
        for (sid, track) in &mut self.tracks {
            let layer_qualities = layer_qualities(&track.layers, &track.info);
            let n = layer_qualities.len();
            if n < 2 {
                continue;
            }
            let simulcast = track.layers.len() > 1;
            let top = track
                .subscribers
                .iter()
                .filter(|s| !s.forwarder.is_paused())
                .map(|s| {
                    let wanted = if simulcast {
                        s.max_layer
                    } else {
                        s.max_spatial.map_or(usize::MAX, usize::from)
                    };
                    wanted.min(n - 1).min(load_cap)
                })
                .max();
            let Some(mask) = track.demand.update(now, dynacast::up_to(top, n)) else {
                continue;
            };
            let qualities: Vec<SubscribedQuality> = layer_qualities
                .iter()
                .enumerate()
                .map(|(i, &quality)| SubscribedQuality {
                    quality,
                    enabled: mask & (1 << i) != 0,
                })
                .collect();
            let codec = track
                .info
                .mime_type
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase();
            debug!(track = %sid, layers = format!("{mask:0n$b}"), "dynacast: layers wanted");
            updates.push((
                track.publisher,
                SubscribedQualityUpdate {
                    track_sid: sid.clone(),
                    subscribed_qualities: qualities.clone(),
                    subscribed_codecs: vec![SubscribedCodec { codec, qualities }],
                },
            ));
        }
        for (publisher, update) in updates {
            self.signal(
                publisher,
                signal_response::Message::SubscribedQualityUpdate(update),
            );
        }
    }

    /// Tell everyone whose connection quality changed (`ConnectionQualityUpdate`).
    fn update_qualities(&mut self, now: Instant) {
        let participants = &self.participants;
        let changes = self
            .qualities
            .update(now, |key| participants.contains_key(key));
        let updates = self.quality_infos(&changes);
        if updates.is_empty() {
            return;
        }
        self.signal_each(
            |_, _| true,
            signal_response::Message::ConnectionQuality(ConnectionQualityUpdate { updates }),
        );
    }

    fn quality_infos(
        &self,
        changes: &[QualityChange<ParticipantKey>],
    ) -> Vec<ConnectionQualityInfo> {
        changes
            .iter()
            .filter_map(|c| {
                let p = self.participants.get(&c.who).filter(|p| !p.is_hidden())?;
                Some(ConnectionQualityInfo {
                    participant_sid: p.info.sid.clone(),
                    quality: c.quality as i32,
                    score: c.score,
                })
            })
            .collect()
    }

    fn speaker_infos(&self, changes: &[SpeakerChange<ParticipantKey>]) -> Vec<SpeakerInfo> {
        changes
            .iter()
            .filter_map(|c| {
                let p = self.participants.get(&c.who)?;
                Some(SpeakerInfo {
                    sid: p.info.sid.clone(),
                    level: c.level,
                    active: c.active,
                })
            })
            .collect()
    }

    /// Tell everyone who started or stopped speaking (`SpeakersChanged`).
    fn update_speakers(&mut self, now: Instant) {
        let interval = now.duration_since(self.last_speaker_update);
        self.last_speaker_update = now;
        let mut levels: Vec<(ParticipantKey, f32)> = Vec::new();
        for track in self.tracks.values_mut() {
            let level = track.audio_level.take(interval);
            if level <= 0.0 {
                continue;
            }
            match levels.iter_mut().find(|(k, _)| *k == track.publisher) {
                Some((_, loudest)) => *loudest = loudest.max(level),
                None => levels.push((track.publisher, level)),
            }
        }
        let participants = &self.participants;
        let changes = self.speakers.update(&levels, |key| {
            participants.get(key).is_some_and(|p| !p.is_hidden())
        });
        if changes.is_empty() {
            return;
        }
        let speakers = self.speaker_infos(&changes);
        self.signal_each(
            |_, _| true,
            signal_response::Message::SpeakersChanged(SpeakersChanged { speakers }),
        );
    }

    /// A data packet from a publisher's `_reliable` or `_lossy` channel: stamp
    /// the sender, then deliver on the same kind of channel to its recipients.
    fn on_data(&mut self, now: Instant, key: ParticipantKey, kind: DataKind, bytes: &[u8]) {
        if self.take_server_rpc_reply(now, key, bytes) {
            return;
        }
        // Its recipients must know the sender: a listener still waiting for
        // the next batch of updates is announced now.
        if self.listener_updates.contains_key(&key) {
            self.broadcast_participant(key, false, true);
        }
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        if !p.permission.can_publish_data {
            debug!(participant = %p.info.identity, "data from a participant without canPublishData");
            return;
        }
        let Ok(mut packet) = DataPacket::decode(bytes) else {
            debug!(participant = %p.info.identity, "undecodable data packet");
            return;
        };
        if kind == DataKind::Reliable && packet.sequence != 0 {
            if packet.sequence <= p.last_reliable_seq {
                return;
            }
            p.last_reliable_seq = packet.sequence;
        }
        if matches!(packet.value, Some(data_packet::Value::Metrics(_))) {
            return;
        }
        packet.kind = match kind {
            DataKind::Reliable => data_packet::Kind::Reliable,
            DataKind::Lossy => data_packet::Kind::Lossy,
        } as i32;
        let (identity, psid) = if p.is_hidden() {
            (String::new(), String::new())
        } else {
            (p.info.identity.clone(), p.info.sid.clone())
        };
        packet.participant_identity = identity.clone();
        packet.participant_sid = psid.clone();
        if let Some(data_packet::Value::User(user)) = &mut packet.value {
            user.participant_identity = identity;
            user.participant_sid = psid;
            if packet.destination_identities.is_empty() {
                packet.destination_identities = user.destination_identities.clone();
            } else {
                user.destination_identities = packet.destination_identities.clone();
            }
        }
        let encoded = packet.encode_to_vec();
        let destinations = packet.destination_identities;
        self.deliver_data(now, Some(key), kind, &encoded, &destinations);
    }

    /// Send an encoded DataPacket to everyone but `from`, or to the named identities.
    fn deliver_data(
        &mut self,
        now: Instant,
        from: Option<ParticipantKey>,
        kind: DataKind,
        encoded: &[u8],
        destinations: &[String],
    ) {
        let recipients: Vec<ParticipantKey> = if destinations.is_empty() {
            self.participants
                .keys()
                .copied()
                .filter(|k| Some(*k) != from)
                .collect()
        } else {
            destinations
                .iter()
                .filter_map(|id| self.by_identity.get(id).copied())
                .filter(|k| Some(*k) != from)
                .collect()
        };
        for key in recipients {
            let Some(p) = self.participants.get_mut(&key) else {
                continue;
            };
            let channel = match kind {
                DataKind::Reliable => p.subscriber_reliable,
                DataKind::Lossy => p.subscriber_lossy,
            };
            let Some(mut ch) = channel.and_then(|id| p.subscriber.rtc.channel(id)) else {
                continue;
            };
            if let Err(e) = ch.write(true, encoded) {
                debug!(participant = %p.info.identity, error = %e, "data channel write failed");
            }
            self.drain(now, key, PeerRole::Subscriber);
        }
    }

    /// Send a server-originated data packet (RoomService SendData).
    pub fn send_data(&mut self, now: Instant, reliable: bool, packet: DataPacket) {
        let room_span = self.span.clone();
        let _room = room_span.enter();
        let kind = if reliable {
            DataKind::Reliable
        } else {
            DataKind::Lossy
        };
        let encoded = packet.encode_to_vec();
        self.deliver_data(now, None, kind, &encoded, &packet.destination_identities);
        self.process_events(now);
    }

    /// Tell everyone (but the participant itself, unless `include_self`) about
    /// `key`'s current info; see [`Room::announce`] for when. Hidden
    /// participants are announced to no one.
    pub(crate) fn broadcast_participant(
        &mut self,
        key: ParticipantKey,
        include_self: bool,
        immediate: bool,
    ) {
        let Some(p) = self.participants.get(&key) else {
            return;
        };
        let info = p.info.clone();
        if p.is_hidden() {
            if include_self {
                self.signal(key, participant_update(vec![info]));
            }
            return;
        }
        self.announce(key, info, include_self, immediate);
    }

    /// Everyone learns `info` about `key`: at once if it publishes or the
    /// change is `immediate` (its tracks changed), else with the next batch
    /// of listener updates; `key` itself at once if `include_self`.
    fn announce(
        &mut self,
        key: ParticipantKey,
        info: ParticipantInfo,
        include_self: bool,
        immediate: bool,
    ) {
        if immediate || info.is_publisher {
            let was_queued = self.listener_updates.remove(&key).is_some();
            self.signal_each(
                |k, _| k != key || include_self,
                participant_update(vec![info]),
            );
            if was_queued {
                // Those who did not know `key` did not keep its quality
                // either; `key` has its own from when it connected.
                self.announce_qualities(std::iter::once(key), Some(key));
            }
            return;
        }
        if include_self {
            self.signal(key, participant_update(vec![info.clone()]));
        }
        self.listener_updates.insert(key, info);
    }

    /// Send the batched listener updates to everyone, in one message, at most
    /// once per [`LISTENER_UPDATE_INTERVAL`].
    fn flush_listener_updates(&mut self, now: Instant) {
        if self.listener_updates.is_empty() || now < self.next_listener_flush {
            return;
        }
        self.next_listener_flush = now + LISTENER_UPDATE_INTERVAL;
        let infos = std::mem::take(&mut self.listener_updates);
        let keys: Vec<ParticipantKey> = infos.keys().copied().collect();
        self.signal_each(
            |_, _| true,
            participant_update(infos.into_values().collect()),
        );
        self.announce_qualities(keys.into_iter(), None);
    }

    /// Everyone but `except` learns the connection quality of `who` (present
    /// and visible).
    fn announce_qualities(
        &mut self,
        who: impl Iterator<Item = ParticipantKey>,
        except: Option<ParticipantKey>,
    ) {
        let updates = self.quality_infos(&self.qualities.current(who));
        if !updates.is_empty() {
            self.signal_each(
                |k, _| Some(k) != except,
                signal_response::Message::ConnectionQuality(ConnectionQualityUpdate { updates }),
            );
        }
    }

    /// Send one message to every participant `to` accepts: shared, not
    /// copied, so that an event in a room of N costs one message, not N.
    pub(crate) fn signal_each(
        &mut self,
        to: impl Fn(ParticipantKey, &Participant) -> bool,
        message: signal_response::Message,
    ) {
        let message = Arc::new(SignalResponse {
            message: Some(message),
        });
        for (&key, p) in &self.participants {
            if to(key, p) {
                self.outputs
                    .push_back(RoomOutput::Signal(key, Arc::clone(&message)));
            }
        }
    }

    pub(crate) fn signal(&mut self, key: ParticipantKey, message: signal_response::Message) {
        self.outputs.push_back(RoomOutput::Signal(
            key,
            Arc::new(SignalResponse {
                message: Some(message),
            }),
        ));
    }
}

fn drain_session(
    session: &mut PeerSession,
    key: ParticipantKey,
    role: PeerRole,
    now: Instant,
    out: &mut Outgoing,
    events: &mut VecDeque<PendingEvent>,
    timers: &mut SessionTimers,
) {
    let wake_at = poll_session(session, key, role, now, out, events);
    timers.schedule(&mut session.queued, &(key, role), wake_at);
}

/// The session of `key` and `role` if it is due at `now`. One that is not
/// (it was queued before str0m moved its deadline later) is queued again.
fn ready_session<'a>(
    participants: &'a mut HashMap<ParticipantKey, Participant>,
    timers: &mut SessionTimers,
    now: Instant,
    key: ParticipantKey,
    role: PeerRole,
) -> Option<&'a mut PeerSession> {
    let session = participants.get_mut(&key)?.session_mut(role)?;
    if session.deadline > now {
        timers.schedule(&mut session.queued, &(key, role), session.deadline);
        return None;
    }
    Some(session)
}

/// Give a due session the time, then run its output loop ([`poll_session`]).
pub(crate) fn drive_session(
    session: &mut PeerSession,
    key: ParticipantKey,
    role: PeerRole,
    now: Instant,
    out: &mut Outgoing,
    events: &mut impl Extend<PendingEvent>,
) -> Instant {
    if egress::send_direct_only(session, now, out) {
        return session.deadline;
    }
    give_time(session, key, role, now);
    poll_session(session, key, role, now, out, events)
}

/// Hand a due session what was forwarded to it, and the time.
fn give_time(session: &mut PeerSession, key: ParticipantKey, role: PeerRole, now: Instant) {
    write_forwarded(session);
    if let Err(e) = session.rtc.handle_input(Input::Timeout(now)) {
        debug!(?key, ?role, error = %e, "timeout input failed");
    }
}

/// Give str0m the media the room forwarded to `session` since it was last
/// polled; true if there was any.
fn write_forwarded(session: &mut PeerSession) -> bool {
    if session.unwritten.is_empty() {
        return false;
    }
    for copy in session.unwritten.drain(..) {
        // Gone only if a renegotiation removed the stream meanwhile.
        if let Some(tx) = session.rtc.direct_api().stream_tx(&copy.ssrc) {
            tx.write_rtp(copy.into_write());
        }
    }
    // A burst (a keyframe, a round that batched much) leaves no lasting memory.
    session.unwritten.shrink_to(UNWRITTEN_KEPT);
    true
}

/// Run str0m's output loop for one session until it asks for time; returns
/// when the session is next due: its deadline, or now if it just failed (so
/// that the next timeout round removes the participant).
pub(crate) fn poll_session(
    session: &mut PeerSession,
    key: ParticipantKey,
    role: PeerRole,
    now: Instant,
    out: &mut Outgoing,
    events: &mut impl Extend<PendingEvent>,
) -> Instant {
    // Whatever the session holds leaves now.
    session.frame_wait = None;
    egress::send_direct(session, out);
    // str0m sends what is written only once it is given the time.
    if write_forwarded(session) {
        if let Err(e) = session.rtc.handle_input(Input::Timeout(now)) {
            debug!(?key, ?role, error = %e, "timeout input failed");
        }
    }
    loop {
        match session.rtc.poll_output() {
            Ok(Output::Timeout(t)) => {
                let t = session.grid.map_or(t, |grid| grid.round_up(t, now));
                session.deadline = t;
                if let Some(direct) = session.direct.as_deref_mut() {
                    direct.str0m_due = t;
                }
                return t;
            }
            Ok(Output::Transmit(t)) => {
                if let Some(direct) = session.direct.as_deref_mut() {
                    direct.follow(&t);
                }
                out.push_transmit(t)
            }
            Ok(Output::Event(event)) => events.extend([PendingEvent {
                participant: key,
                role,
                event,
            }]),
            Err(e) => {
                warn!(?key, ?role, error = %e, "peer connection failed");
                session.failed = true;
                session.rtc.disconnect();
                session.deadline = now + Duration::from_secs(1);
                return now;
            }
        }
    }
}

/// The first of `previous + k·period` (k ≥ 1) after `now`: a periodic
/// deadline that keeps its phase. Taken from `now` instead, every room whose
/// check ran in the same late round (they are all handed that round's `now`)
/// would share one deadline from then on, and a shard's rooms, once so
/// aligned, would do their checks in one long round that holds up every
/// packet behind it.
fn next_tick(previous: Instant, period: Duration, now: Instant) -> Instant {
    let late = now.saturating_duration_since(previous);
    let periods = late.as_nanos() / period.as_nanos() + 1;
    previous + period * u32::try_from(periods).unwrap_or(u32::MAX)
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

/// Random characters valid in ICE ufrags and passwords (RFC 8839 ice-char).
fn random_ice_chars(n: usize) -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..n)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

/// The mid of the first m-line of an SDP (the one trickled candidates refer to).
fn first_mid(sdp: &str) -> String {
    sdp.lines()
        .find_map(|l| l.trim_end().strip_prefix("a=mid:"))
        .unwrap_or("0")
        .to_string()
}

fn ice_creds(ufrag: String) -> IceCreds {
    IceCreds {
        ufrag,
        pass: random_ice_chars(24),
    }
}

/// LiveKit's simulcast RIDs from low to high: q/h/f, or 2/1/0 in some clients.
/// The qualities of a video track's layers, lowest first: its simulcast
/// encodings, or the spatial layers announced for its one (SVC) encoding.
fn layer_qualities(layers: &[Layer], info: &TrackInfo) -> Vec<i32> {
    if layers.len() > 1 {
        return layers
            .iter()
            .map(|l| {
                l.rid
                    .as_ref()
                    .map_or(VideoQuality::High as i32, |r| i32::from(rid_quality(r)))
            })
            .collect();
    }
    let mut qualities: Vec<i32> = info.layers.iter().map(|l| l.quality).collect();
    qualities.sort_unstable();
    qualities.dedup();
    qualities
}

fn rid_quality(rid: &Rid) -> u8 {
    match &**rid {
        "q" | "2" => 0,
        "h" | "1" => 1,
        "f" | "0" => 2,
        _ => 3,
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

fn enabled_codecs() -> Vec<livekit::Codec> {
    [
        "audio/opus",
        "video/VP8",
        "video/H264",
        "video/VP9",
        "video/AV1",
    ]
    .into_iter()
    .map(|mime| livekit::Codec {
        mime: mime.to_string(),
        fmtp_line: String::new(),
    })
    .collect()
}

/// Apply an attribute update: an empty value deletes the key (LiveKit's rule).
fn apply_attributes(attributes: &mut BTreeMap<String, String>, update: &BTreeMap<String, String>) {
    for (k, v) in update {
        if v.is_empty() {
            attributes.remove(k);
        } else {
            attributes.insert(k.clone(), v.clone());
        }
    }
}

fn participant_update(participants: Vec<ParticipantInfo>) -> signal_response::Message {
    signal_response::Message::Update(ParticipantUpdate { participants })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_periodic_deadline_keeps_its_phase_when_late() {
        let t0 = Instant::now();
        let period = Duration::from_millis(500);
        let ms = Duration::from_millis;
        // On time, late within a period, late by several periods.
        assert_eq!(next_tick(t0, period, t0), t0 + ms(500));
        assert_eq!(next_tick(t0, period, t0 + ms(120)), t0 + ms(500));
        assert_eq!(next_tick(t0, period, t0 + ms(1_200)), t0 + ms(1_500));
        assert_eq!(next_tick(t0, period, t0 + ms(1_500)), t0 + ms(2_000));
        // Two rooms 200 ms apart, both handled in one late round: still apart.
        let late = t0 + ms(3_000);
        assert_eq!(next_tick(t0, period, late), t0 + ms(3_500));
        assert_eq!(next_tick(t0 + ms(200), period, late), t0 + ms(3_200));
    }
}
