//! A room: its participants, their peer connections, the tracks they publish
//! and who receives what. Sans-IO like str0m underneath it: signal messages,
//! datagrams and time go in; signal messages, datagrams and events come out of
//! [`Room::poll_output`].
//!
//! The room's work, by what starts it:
//! * `signaling` — a participant's signal requests: offers and answers,
//!   published tracks, mutes, metadata, subscriptions, track settings.
//! * `drive` — datagrams and time: driving the str0m sessions that are due.
//! * `media` — what str0m reports: connections, negotiated media, stream
//!   statistics, and each published RTP packet, forwarded to subscribers.
//! * `review` — the periodic review: simulcast layers, dynacast, connection
//!   qualities, active speakers.
//! * `data` — data packets between participants, and from the server.
//! * `announce` — what the room tells its participants.
//! * `admin` — what the room API (RoomService) can do to a room.

mod admin;
mod announce;
mod data;
mod drive;
mod media;
mod review;
mod signaling;

pub use admin::{AdminError, RpcFailure, RpcReply};
pub(crate) use drive::drive_session;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use relais_proto::ids;
use relais_proto::livekit::{
    self, leave_request, participant_info, ClientInfo, DisconnectReason, JoinResponse,
    LeaveRequest, ParticipantInfo, ParticipantPermission, ServerInfo, SignalResponse, TrackInfo,
    UpdateTrackSettings, VideoQuality,
};
use str0m::format::PayloadParams;
use str0m::ice::IceCreds;
use str0m::media::{MediaKind, Mid, Pt, Rid};
use str0m::net::Protocol;
use str0m::rtp::Ssrc;
use str0m::Event;
use tracing::{info, Span};

use crate::codec::CodecKind;
use crate::config::MediaConfig;
use crate::dtls::{self, KeyTaps};
use crate::dynacast::LayerDemand;
use crate::egress::TrackHistory;
use crate::forward::TrackForwarder;
use crate::ingress::Ingress;
use crate::outgoing::Outgoing;
use crate::participant::{
    CachedInfo, DirectEgress, Negotiation, Participant, ParticipantKey, PeerRole, PeerSession,
    SharedSpan, SubscriberChange,
};
use crate::quality::ConnectionQualities;
use crate::speakers::{ActiveSpeakers, AudioLevelMeter};
use crate::stats::MediaStats;
use crate::timers::{Queued, TimerGrid, TimerQueue};
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
    /// A `SignalResponse` for one participant, already encoded in protobuf:
    /// its join response (see [`relais_proto::encode_join_response`]).
    EncodedSignal(ParticipantKey, Vec<u8>),
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

/// Where a datagram came from and went to: what str0m is told with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addresses {
    pub proto: Protocol,
    pub source: SocketAddr,
    pub destination: SocketAddr,
}

pub(crate) struct Layer {
    pub(crate) rid: Option<Rid>,
    pub(crate) ssrc: Option<Ssrc>,
    pub(crate) last_seen: Option<Instant>,
    /// With direct egress: the layer's last packets, for subscribers' NACKs
    /// (video), and the buffers they were opened into, for the next.
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
    /// wants and the room's load cap ([`Room::set_load_layer_cap`]). With
    /// the layers known to flow (`flowing`, a bit per layer; 0 while the
    /// track's first packets are too recent to tell), a layer that does not
    /// is never aimed at: the best one within the wish, else the smallest
    /// above it within the load cap — a publisher that stopped sending its
    /// low layer still reaches the subscribers who asked for it.
    fn aim(&mut self, best_layer: usize, flowing: u32, load_cap: usize) {
        let wish = self.max_layer.min(load_cap);
        let target = flowing_target(flowing, wish, load_cap).unwrap_or(best_layer.min(wish));
        self.forwarder.set_target_layer(target);
        let load_spatial = u8::try_from(load_cap).ok();
        let spatial = match (self.max_spatial, load_spatial) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.forwarder.set_spatial_target(spatial);
    }
}

/// Of the layers in `flowing` (a bit per layer), the highest up to `wish`,
/// else the lowest above it up to `cap`; `None` if none is.
fn flowing_target(flowing: u32, wish: usize, cap: usize) -> Option<usize> {
    let flows = |layer: &usize| *layer < 32 && flowing >> layer & 1 == 1;
    (0..=wish.min(31))
        .rev()
        .find(flows)
        .or_else(|| (wish.saturating_add(1)..=cap.min(31)).find(flows))
}

pub(crate) struct PublishedTrack {
    pub(crate) info: TrackInfo,
    pub(crate) publisher: ParticipantKey,
    pub(crate) kind: MediaKind,
    pub(crate) codec: Option<(CodecKind, PayloadParams)>,
    pub(crate) layers: Vec<Layer>,
    pub(crate) best_layer: usize,
    /// The layers flowing at the last review, a bit per layer; 0 until the
    /// track's first packet is [`LAYER_STALE_AFTER`] old (layers start a few
    /// packets apart: no subscriber is moved up for a layer about to start).
    pub(crate) flowing: u32,
    /// When the track's first packet came.
    pub(crate) first_packet: Option<Instant>,
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
    /// The last [`Room::handle_timeout`] stopped at its turn with sessions
    /// still due (at the front of `due_now`) or offers still to make.
    turn_cut: bool,
    /// Subscribers to send a new offer to, and since when the first waits:
    /// a track unpublished in a large room changes every subscriber's
    /// session at once, and the offers go out a turn at a time.
    offers_due: VecDeque<ParticipantKey>,
    offers_due_since: Instant,
    /// Subscriber sessions holding the copies of an unfinished video frame
    /// ([`FRAME_WAIT`]), by when they leave anyway. In order, as every wait
    /// is equally long: a queue, not the timer heap, which a frame that ends
    /// in time (nearly all) would leave an entry behind in to pop and re-queue
    /// — per frame and subscriber. An entry no longer the session's
    /// ([`PeerSession::frame_wait`]) is dropped when it comes up.
    frame_waits: VecDeque<(Instant, ParticipantKey)>,
    /// Where the shard's timer queue has this room ([`Room::poll_timeout`]).
    pub(crate) queued: Queued,
    /// Where the shard's queue of wake-ups has it ([`Room::wake_by`]).
    pub(crate) wake_queued: Queued,
    /// When the room became empty (or was created empty).
    pub(crate) empty_since: Option<Instant>,
    /// Whether it became empty by its last participant leaving: LiveKit then
    /// closes it after the departure timeout (time for that participant to
    /// come back), and one nobody joined after the empty timeout.
    pub(crate) emptied_by_departure: bool,
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
    pub(crate) server_rpcs: admin::ServerRpcs,
    /// Counters since the shard last collected them ([`Room::take_stats`]).
    pub(crate) stats: MediaStats,
    /// Copies of media written to subscribers since the room was made that
    /// leave in the next round (not waiting for the rest of their frame);
    /// what [`Room::handle_receive`] reports is the difference it made.
    copies_leaving: u64,
    /// The buffer the publisher's next packet is opened into
    /// ([`crate::ingress`]): if the packet is forwarded, its layer keeps this
    /// buffer and gives another back ([`crate::payload`]).
    opened: Vec<u8>,
    /// Where a publisher's sender report is cut down for str0m
    /// ([`crate::srtcp::SrtcpKeys::without_descriptions`]), and a
    /// subscriber's report opened for Relais ([`crate::subscriber_rtcp`]).
    reports: Vec<u8>,
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
            turn_cut: false,
            offers_due: VecDeque::new(),
            offers_due_since: now,
            frame_waits: VecDeque::new(),
            queued: None,
            wake_queued: None,
            empty_since: Some(now),
            emptied_by_departure: false,
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
            opened: Vec::new(),
            reports: Vec::new(),
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
        self.participants.get(&key).map(|p| &*p.info)
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
            info: CachedInfo::new(info),
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
        self.outputs.push_back(RoomOutput::EncodedSignal(key, join));
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
        // A publisher's congestion feedback is Relais's (`crate::twcc`), and
        // so are its streams with direct ingress, and a subscriber's media
        // with direct egress.
        let mut direct = (publisher || self.config.direct_audio || self.config.direct_video)
            .then(|| Box::new(DirectEgress::new(now, self.config.clock_epoch)));
        if let Some(direct) = &mut direct {
            if publisher && self.config.direct_ingress {
                direct.ingress = Some(Box::new(Ingress::new(now, self.config.clock_epoch)));
            }
            dtls::tap_next_session(if publisher {
                KeyTaps {
                    srtcp: Some(direct.rtcp_keys.clone()),
                    srtp_in: direct.ingress.as_ref().map(|i| i.keys.clone()),
                    srtcp_in: Some(direct.report_keys.clone()),
                    ..KeyTaps::default()
                }
            } else {
                KeyTaps {
                    srtp: Some(direct.keys.clone()),
                    srtcp_in: Some(direct.report_keys.clone()),
                    ..KeyTaps::default()
                }
            });
        }
        let rtc = self
            .config
            .build_rtc(ice_creds(ufrag.clone()), now, publisher);
        // Disarmed if the build made no DTLS instance of ours.
        dtls::take_taps();
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

    /// `key`'s join response, encoded: everyone else's info is copied in
    /// as each keeps it encoded ([`CachedInfo`]), not cloned into the
    /// message nor encoded again for each newcomer.
    fn join_response(&mut self, key: ParticipantKey) -> Vec<u8> {
        let p = &self.participants[&key];
        let participant = Some(ParticipantInfo::clone(&p.info));
        let subscriber_primary = p.subscriber_primary();
        let others: Vec<&[u8]> = self
            .participants
            .values_mut()
            .filter(|o| o.key != key && !o.is_hidden())
            .map(|o| o.info.encoded())
            .collect();
        let join = JoinResponse {
            room: Some(self.info.clone()),
            participant,
            server_version: self.config.server_version.clone(),
            subscriber_primary,
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
        };
        relais_proto::encode_join_response(join, &others)
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
        let was_active = p.is_active();
        p.info.state = participant_info::State::Disconnected as i32;
        p.info.disconnect_reason = reason as i32;
        p.info.tracks.clear();
        p.touch();
        if !p.is_hidden() {
            self.announce(key, p.info.clone(), false, false);
        }
        // LiveKit: a participant that never became ACTIVE "aborted" its connection.
        let event = if was_active {
            RoomEvent::ParticipantLeft(p.info.into_inner())
        } else {
            RoomEvent::ParticipantConnectionAborted(p.info.into_inner())
        };
        self.outputs.push_back(RoomOutput::Event(Box::new(event)));
        self.info.num_participants = self.participants.len() as u32;
        if self.participants.is_empty() {
            self.empty_since = Some(now);
            self.emptied_by_departure = true;
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
            self.queue_offer(now, key);
        }
        self.outputs
            .push_back(RoomOutput::Event(Box::new(RoomEvent::TrackUnpublished(
                publisher.clone(),
                track.info,
            ))));
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

    /// Whether the last [`Room::handle_timeout`] left sessions due, or
    /// offers to make, at the end of its turn
    /// ([`MediaConfig::drive_turn_datagrams`](crate::MediaConfig::drive_turn_datagrams)):
    /// a caller driving several rooms lets the others go first.
    pub fn turn_cut(&self) -> bool {
        self.turn_cut
    }

    /// The earliest time the room needs [`Room::handle_timeout`].
    pub fn poll_timeout(&self) -> Instant {
        let (copies, periodic) = self.deadlines();
        copies.map_or(periodic, |c| c.min(periodic))
    }

    /// The latest time [`Room::handle_timeout`] may be called without
    /// delaying anything that matters: copies leave when due, the periodic
    /// work may wait up to `MediaConfig::timer_slack` after its deadline.
    pub fn wake_by(&self) -> Instant {
        let (copies, periodic) = self.deadlines();
        let periodic = periodic + self.config.timer_slack;
        copies.map_or(periodic, |c| c.min(periodic))
    }

    /// The room's next deadlines: copies to send (due now, or a frame's wait
    /// ending) and offers to make, and the earliest periodic work (sessions'
    /// timers, the layer review, an empty room's timeout).
    fn deadlines(&self) -> (Option<Instant>, Instant) {
        let sessions = self.timers.next();
        let periodic = [sessions, self.closes_at()]
            .into_iter()
            .flatten()
            .fold(self.next_layer_check, Instant::min);
        let due_now = (!self.due_now.is_empty()).then_some(self.due_now_since);
        let offers = (!self.offers_due.is_empty()).then_some(self.offers_due_since);
        let frame_wait = self.frame_waits.front().map(|&(until, _)| until);
        let copies = [due_now, offers, frame_wait].into_iter().flatten().min();
        (copies, periodic)
    }

    /// When the room closes unless someone joins first: its empty or its
    /// departure timeout after it became empty ([`Room::emptied_by_departure`]).
    pub(crate) fn closes_at(&self) -> Option<Instant> {
        let (_, seconds) = self.closing_timeout();
        Some(self.empty_since? + Duration::from_secs(u64::from(seconds)))
    }

    /// Which timeout closes the room once it is empty, and its seconds.
    pub(crate) fn closing_timeout(&self) -> (&'static str, u32) {
        if self.emptied_by_departure {
            ("departure", self.info.departure_timeout)
        } else {
            ("empty", self.info.empty_timeout)
        }
    }

    /// Next thing for the world to do, if any.
    pub fn poll_output(&mut self) -> Option<RoomOutput> {
        self.outputs.pop_front()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn subscription(max_layer: usize) -> Subscription {
        Subscription {
            subscriber: ParticipantKey(1),
            mid: None,
            forwarder: TrackForwarder::new(0),
            out_pt: None,
            out_ssrc: None,
            max_layer,
            max_spatial: None,
        }
    }

    #[test]
    fn a_subscriber_is_aimed_at_a_layer_that_flows() {
        let (low, mid, high) = (0b001, 0b010, 0b100);
        // Flowing layers known: the best within the wish, else the smallest above.
        let mut s = subscription(0);
        s.aim(2, high | mid | low, usize::MAX);
        assert_eq!(s.forwarder.target_layer(), 0);
        s.aim(2, high | mid, usize::MAX);
        assert_eq!(
            s.forwarder.target_layer(),
            1,
            "the low layer stopped: the next one up"
        );
        s.aim(2, high, usize::MAX);
        assert_eq!(s.forwarder.target_layer(), 2);
        let mut s = subscription(1);
        s.aim(2, high | low, usize::MAX);
        assert_eq!(
            s.forwarder.target_layer(),
            0,
            "the middle layer stopped: the one below"
        );
        // The room's load cap is never passed for a layer above the wish.
        let mut s = subscription(0);
        s.aim(2, high | mid, 1);
        assert_eq!(s.forwarder.target_layer(), 1);
        s.aim(2, high, 1);
        assert_eq!(
            s.forwarder.target_layer(),
            0,
            "nothing within the cap flows"
        );
        // Not known yet (the track's first packets): the wish within the best seen.
        let mut s = subscription(1);
        s.aim(2, 0, usize::MAX);
        assert_eq!(s.forwarder.target_layer(), 1);
        s.aim(0, 0, usize::MAX);
        assert_eq!(s.forwarder.target_layer(), 0);
        let mut s = subscription(usize::MAX);
        s.aim(2, high | low, usize::MAX);
        assert_eq!(
            s.forwarder.target_layer(),
            2,
            "no wish: the best that flows"
        );
    }
}
