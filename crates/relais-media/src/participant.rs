//! A participant's two peer connections and what it publishes and receives.

use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use relais_proto::livekit::{participant_info, ParticipantInfo, ParticipantPermission, TrackInfo};
use relais_proto::Message;
use str0m::change::SdpPendingOffer;
use str0m::channel::ChannelId;
use str0m::media::{MediaKind, Mid, Pt, Rid};
use str0m::net::{Protocol, Transmit};
use str0m::rtp::{ExtensionValues, RtpWrite, Ssrc, VideoOrientation, Vp8Descriptor};
use str0m::Rtc;

use crate::codec::Vp8Rewrite;
use crate::config::STATS_INTERVAL;
use crate::dtls::{ReportKeySlot, SrtcpSlot};
use crate::egress::{DirectStream, KeySlot, SourcePacket};
use crate::ingress::Ingress;
use crate::payload::Payload;
use crate::stun;
use crate::subscriber_rtcp::SubscriberRtcp;
use crate::timers::{Queued, TimerGrid};
use crate::twcc::TransportFeedback;
use crate::HashMap;

/// Identifies a participant within a shard; never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParticipantKey(pub u64);

/// Which of a participant's two peer connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PeerRole {
    /// Client offers; carries the participant's own media and data to us.
    Publisher,
    /// We offer; carries everyone else's media and data to the participant.
    Subscriber,
}

/// A participant's info, with its protobuf encoding kept until it changes.
///
/// Every newcomer's join response lists everyone else's info: a wave of N
/// joins writes N² infos, each spread over several heap blocks (its
/// strings, its tracks). Encoded once per change, an info is one block to
/// copy. Reading goes through [`Deref`]; any mutable access
/// ([`DerefMut`]) drops the encoding, so it cannot go stale.
#[derive(Debug)]
pub(crate) struct CachedInfo {
    info: ParticipantInfo,
    encoded: Option<Box<[u8]>>,
}

impl CachedInfo {
    pub fn new(info: ParticipantInfo) -> Self {
        Self {
            info,
            encoded: None,
        }
    }

    pub fn into_inner(self) -> ParticipantInfo {
        self.info
    }

    /// The info in protobuf, encoded now if it changed since last asked.
    pub fn encoded(&mut self) -> &[u8] {
        let info = &self.info;
        self.encoded
            .get_or_insert_with(|| info.encode_to_vec().into_boxed_slice())
    }
}

impl Deref for CachedInfo {
    type Target = ParticipantInfo;

    fn deref(&self) -> &ParticipantInfo {
        &self.info
    }
}

impl DerefMut for CachedInfo {
    fn deref_mut(&mut self) -> &mut ParticipantInfo {
        self.encoded = None;
        &mut self.info
    }
}

/// One str0m peer connection and when it next wants time.
///
/// In declaration order (`repr(C)`): what the forwarding touches for every
/// subscriber of every packet comes first, within one or two cache lines —
/// left to the compiler, it spread over four.
#[repr(C)]
pub(crate) struct PeerSession {
    /// Media forwarded to this session and not yet given to str0m: written
    /// when the session is next polled (`room::poll_session`), so that the
    /// writes happen where the drive does — on a fan-out helper, for a large
    /// room. Keeps a small capacity: no allocation per packet.
    pub unwritten: Vec<ForwardedCopy>,
    /// str0m's next timeout, as of the last drain (rounded up to `grid`).
    pub deadline: Instant,
    /// Until when the copies of an unfinished video frame wait for the rest
    /// of it (`Room::frame_waits`); cleared when the session is polled.
    pub frame_wait: Option<Instant>,
    /// On the room's list of sessions with copies to send next round
    /// (`Room::due_now`), or on the round's list of due sessions: listed once.
    pub listed: bool,
    /// `direct` has its keys and route ([`PeerSession::direct_ready`]).
    direct_ready: bool,
    /// Due in this round and to be handed to the room's session driver
    /// (set and cleared within one [`crate::Room::handle_timeout`]).
    pub ready: bool,
    pub connected: bool,
    /// str0m reported an error (e.g. a failed DTLS handshake): the session is dead.
    pub failed: bool,
    /// What Relais sends (and, on a publisher session, reads) itself: on a
    /// subscriber session with direct egress (`MediaConfig::direct_audio` /
    /// `direct_video`) the SRTP sending keys once DTLS is done, where str0m
    /// last sent, and the streams Relais sends itself; on a publisher
    /// session the feedback and the direct ingress.
    pub direct: Option<Box<DirectEgress>>,
    /// Boxed: an `Rtc` is kilobytes inline, and the room's participant map
    /// keeps up to half its slots empty — of that size without the box.
    pub rtc: Box<Rtc>,
    pub ufrag: String,
    /// Publisher sessions: the grid their str0m deadlines are rounded up to.
    pub grid: Option<TimerGrid>,
    /// Where the room's timer queue has this session.
    pub queued: Queued,
    /// Cumulative counters of str0m's last stats event per stream, to report deltas.
    pub stats_seen: HashMap<(Mid, Option<Rid>), StreamSeen>,
}

/// What Relais does on a session itself, and where it sends: a subscriber
/// session's direct egress ([`crate::egress`]), a publisher session's
/// congestion feedback ([`crate::twcc`]) and direct ingress
/// ([`crate::ingress`]).
pub(crate) struct DirectEgress {
    /// SRTP keys (subscriber sessions with direct egress).
    pub keys: KeySlot,
    /// SRTCP keys (publisher sessions).
    pub rtcp_keys: SrtcpSlot,
    /// The peer's SRTCP keys: a publisher's sender reports are cut down
    /// before str0m reads them
    /// ([`crate::srtcp::SrtcpKeys::without_descriptions`]); a subscriber's
    /// reports on the streams Relais sends are read by Relais.
    pub report_keys: ReportKeySlot,
    /// Subscriber sessions: the reports Relais read ([`SubscriberRtcp`]).
    pub reports_read: SubscriberRtcp,
    /// Publisher sessions that numbered their packets: the feedback on them.
    pub feedback: Option<TransportFeedback>,
    /// Publisher sessions: the streams Relais reads itself
    /// (`MediaConfig::direct_ingress`).
    pub ingress: Option<Box<Ingress>>,
    /// Protocol, source and destination of the pair str0m sends media on
    /// (see [`DirectEgress::follow`]).
    pub route: Option<(Protocol, SocketAddr, SocketAddr)>,
    /// Where the client's last nomination came from (a binding request with
    /// USE-CANDIDATE; it counts once str0m answers it).
    pub nominated: Option<(Protocol, SocketAddr)>,
    pub streams: HashMap<Ssrc, DirectStream>,
    /// When str0m itself next wants the time (the session's deadline also
    /// moves earlier for the copies queued to it).
    pub str0m_due: Instant,
    /// The core's clock at a wall-clock time, for the sender reports.
    pub epoch: (Instant, SystemTime),
    /// Subscriber sessions: when the statistics of the streams Relais sends
    /// are next sampled ([`crate::Room`]'s `sample_streams`).
    pub next_sample: Instant,
}

impl DirectEgress {
    pub fn new(now: Instant, epoch: (Instant, SystemTime)) -> Self {
        DirectEgress {
            keys: KeySlot::default(),
            rtcp_keys: SrtcpSlot::default(),
            report_keys: ReportKeySlot::default(),
            reports_read: SubscriberRtcp::default(),
            feedback: None,
            ingress: None,
            route: None,
            nominated: None,
            streams: HashMap::default(),
            str0m_due: now,
            epoch,
            next_sample: now + STATS_INTERVAL,
        }
    }

    /// Learn the route from a datagram str0m sends: DTLS and SRTP go on the
    /// nominated pair, and so does its answer to a nomination — but not its
    /// answers to the checks a client keeps making on other pairs.
    pub fn follow(&mut self, t: &Transmit) {
        let to = (t.proto, t.destination);
        if !stun::is_stun(&t.contents) || self.nominated == Some(to) {
            let route = Some((t.proto, t.source, t.destination));
            if self.route != route {
                tracing::debug!(proto = ?t.proto, from = %t.source, to = %t.destination, "direct egress route");
            }
            self.route = route;
        }
    }

    /// Keys and a route known: copies can leave without str0m.
    pub fn ready(&self) -> bool {
        self.keys.get().is_some() && self.route.is_some()
    }

    /// When the session next wants time for what Relais sends on it, given
    /// str0m's own deadline.
    pub fn deadline(&self, str0m_due: Instant) -> Instant {
        let feedback = self.feedback.as_ref().and_then(TransportFeedback::due);
        let ingress = self.ingress.as_deref().and_then(Ingress::due);
        [feedback, ingress]
            .into_iter()
            .flatten()
            .fold(str0m_due, Instant::min)
    }
}

/// Most copies a session's queue of unwritten media keeps room for between
/// rounds (6 KiB): a loaded round's worth of audio or video frames; a
/// larger burst grows it for that round only.
pub(crate) const UNWRITTEN_KEPT: usize = 64;

/// One copy of a forwarded packet for one subscriber stream, as str0m will be
/// asked to write it: 96 bytes, where str0m's own write command takes 320.
pub(crate) struct ForwardedCopy {
    pub ssrc: Ssrc,
    pub pt: Pt,
    pub seq: u64,
    pub timestamp: u32,
    pub wallclock: Instant,
    pub marker: bool,
    /// Kept for retransmission on NACK (video).
    pub nackable: bool,
    pub audio_level: Option<i8>,
    pub voice_activity: Option<bool>,
    pub video_orientation: Option<VideoOrientation>,
    pub payload: Payload,
    /// The RTP clock rate of the track (for direct egress's sender reports).
    pub clock_rate: u32,
    /// The published packet it was made from (kept for repair by its
    /// layer's [`crate::egress::TrackHistory`]).
    pub source: SourcePacket,
    /// The VP8 picture id / TL0PICIDX this subscriber's copy carries.
    pub vp8: Option<Vp8Rewrite>,
    /// Relais sends it itself, without str0m ([`crate::egress`]).
    pub direct: bool,
}

impl ForwardedCopy {
    pub fn into_write(self) -> RtpWrite {
        let patch = self.vp8.and_then(|r| str0m_vp8_patch(&self.payload, r));
        let ext = ExtensionValues {
            audio_level: self.audio_level,
            voice_activity: self.voice_activity,
            video_orientation: self.video_orientation,
            ..Default::default()
        };
        let write = RtpWrite::new(
            self.pt,
            self.seq.into(),
            self.timestamp,
            self.wallclock,
            self.payload.to_str0m(),
        )
        .marker(self.marker)
        .ext_vals(ext)
        .nackable(self.nackable);
        match patch {
            Some(patch) => write.vp8_patch(patch),
            None => write,
        }
    }
}

/// The rewrite as str0m applies it while it packetizes the copy.
fn str0m_vp8_patch(payload: &[u8], rewrite: Vp8Rewrite) -> Option<str0m::rtp::Vp8Patch> {
    let mut builder = Vp8Descriptor::parse(payload).ok()?.patch();
    if let Some(id) = rewrite.picture_id {
        builder = builder.picture_id(id);
    }
    if let Some(t) = rewrite.tl0_pic_idx {
        builder = builder.tl0_pic_idx(t);
    }
    builder.build().ok()
}

/// What the previous stats event of a stream said (cumulative values).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct StreamSeen {
    pub nacks: u64,
    pub packets: u64,
    pub lost: u64,
}

impl StreamSeen {
    /// Take a stream's new cumulative NACK and packet counts; returns how
    /// many of each came since the last report.
    pub fn advance(&mut self, nacks: u64, packets: u64) -> (u64, u64) {
        let delta = (
            nacks.saturating_sub(self.nacks),
            packets.saturating_sub(self.packets),
        );
        (self.nacks, self.packets) = (nacks, packets);
        delta
    }
}

impl PeerSession {
    /// When the session is next due given str0m's own deadline: the
    /// earliest of it and what Relais sends on the session itself, on the
    /// session's timer grid (publishers), so that one wake-up serves them
    /// all across the shard.
    pub fn next_due(&self, str0m_due: Instant, now: Instant) -> Instant {
        let due = self
            .direct
            .as_deref()
            .map_or(str0m_due, |direct| direct.deadline(str0m_due));
        self.grid.map_or(due, |grid| grid.round_up(due, now))
    }

    /// Copies can leave by direct egress: its keys and route are known.
    /// Once they are, that is kept here, beside what every copy touches
    /// anyway: the keys sit behind a pointer of their own, and following it
    /// for each copy was a cache miss per subscriber per packet.
    pub fn direct_ready(&mut self) -> bool {
        if !self.direct_ready {
            self.direct_ready = self.direct.as_deref().is_some_and(DirectEgress::ready);
        }
        self.direct_ready
    }

    pub fn new(rtc: Rtc, ufrag: String, now: Instant) -> Self {
        PeerSession {
            rtc: Box::new(rtc),
            ufrag,
            deadline: now,
            grid: None,
            queued: None,
            connected: false,
            failed: false,
            ready: false,
            listed: false,
            frame_wait: None,
            unwritten: Vec::new(),
            direct: None,
            direct_ready: false,
            stats_seen: HashMap::default(),
        }
    }
}

/// The reliability class of a LiveKit data channel (`_reliable` / `_lossy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DataKind {
    Reliable,
    Lossy,
}

impl DataKind {
    pub fn from_label(label: &str) -> Option<Self> {
        match label {
            "_reliable" => Some(DataKind::Reliable),
            "_lossy" => Some(DataKind::Lossy),
            _ => None,
        }
    }
}

/// The subscriber PC's offer/answer state: at most one offer in flight.
#[derive(Default)]
pub(crate) struct Negotiation {
    pub pending: Option<SdpPendingOffer>,
    /// Changes were made while an offer was in flight: offer again after the answer.
    pub again: bool,
    /// On the room's queue of offers to make (`Room::offers_due`).
    pub queued: bool,
    pub last_offer_id: u32,
}

/// A change to the subscriber PC waiting for the next offer. str0m's `SdpApi`
/// keeps changes only until it is applied or dropped, so they queue here.
pub(crate) enum SubscriberChange {
    DataChannels,
    AddTrack {
        sid: String,
        kind: MediaKind,
        stream_id: String,
    },
    Stop(Mid),
}

/// A track this participant receives, on one m-line of its subscriber PC.
pub(crate) struct Downtrack {
    pub track_sid: String,
    pub mid: Mid,
    /// Known once the answer is applied.
    pub ssrc: Option<Ssrc>,
}

/// A span the media core enters for every datagram, shared by reference
/// count. Entering one while its room is borrowed needs a handle of one's
/// own, and cloning a `tracing::Span` for that touches what every thread
/// shares (the dispatcher's reference count, the registry's slot): 150–300 ns
/// per packet, more with shards on several cores (`benches/logging.rs`). An
/// `Arc`'s count is the room's alone.
pub type SharedSpan = Arc<tracing::Span>;

/// In declaration order (`repr(C)`): the subscriber session's forwarding
/// fields first, next to the room map's key (which the map keeps just
/// before its value) — the forwarding looks the participant up by that key
/// for every copy.
#[repr(C)]
pub(crate) struct Participant {
    pub subscriber: PeerSession,
    pub key: ParticipantKey,
    /// `participant{participant, participant_sid}`, a child of the room's span.
    pub span: SharedSpan,
    pub info: CachedInfo,
    pub permission: ParticipantPermission,
    pub protocol: i32,
    pub auto_subscribe: bool,
    /// Created by the client's first publisher offer: a participant that only
    /// receives never offers one, and an idle peer connection costs tens of KiB.
    pub publisher: Option<PeerSession>,
    /// Tracks announced with AddTrackRequest whose media has not arrived yet, by cid.
    pub pending_tracks: Vec<(String, TrackInfo)>,
    /// Published tracks by publisher-PC mid.
    pub published_by_mid: HashMap<Mid, String>,
    /// Incoming SSRC → (track sid, simulcast layer), learned on first packet.
    pub ssrc_routes: HashMap<Ssrc, (Arc<str>, usize)>,
    pub publisher_channels: HashMap<ChannelId, DataKind>,
    pub subscriber_reliable: Option<ChannelId>,
    pub subscriber_lossy: Option<ChannelId>,
    pub subscriber_channels_open: u8,
    pub negotiation: Negotiation,
    /// Tracks received, by subscriber-PC mid.
    pub downtracks: HashMap<Mid, Downtrack>,
    pub subscriber_changes: Vec<SubscriberChange>,
    /// Tracks this participant wants but may not receive yet: its
    /// subscription limit for their kind is reached. In the order asked for;
    /// the first that fits is subscribed when a subscription ends.
    pub waiting_subscriptions: Vec<String>,
    pub last_reliable_seq: u32,
}

impl Participant {
    /// The peer connection of `role`, if it exists (see [`Participant::publisher`]).
    pub fn session(&self, role: PeerRole) -> Option<&PeerSession> {
        match role {
            PeerRole::Publisher => self.publisher.as_ref(),
            PeerRole::Subscriber => Some(&self.subscriber),
        }
    }

    pub fn session_mut(&mut self, role: PeerRole) -> Option<&mut PeerSession> {
        self.session_and_span_mut(role).0
    }

    /// [`Participant::session_mut`], with the participant's span borrowed
    /// beside it.
    pub fn session_and_span_mut(
        &mut self,
        role: PeerRole,
    ) -> (Option<&mut PeerSession>, &SharedSpan) {
        let session = match role {
            PeerRole::Publisher => self.publisher.as_mut(),
            PeerRole::Subscriber => Some(&mut self.subscriber),
        };
        (session, &self.span)
    }

    /// The PC whose connection makes the participant ACTIVE.
    pub fn primary(&self) -> PeerRole {
        if self.subscriber_primary() {
            PeerRole::Subscriber
        } else {
            PeerRole::Publisher
        }
    }

    pub fn subscriber_primary(&self) -> bool {
        self.protocol > 2 && self.permission.can_subscribe
    }

    pub fn is_hidden(&self) -> bool {
        self.permission.hidden
    }

    /// Bump the version so clients accept the next update about this participant.
    pub fn touch(&mut self) {
        self.info.version += 1;
    }

    /// Forget one of its own tracks: its m-line, its SSRCs and its entry in
    /// the participant's info.
    pub fn forget_published(&mut self, sid: &str) {
        self.published_by_mid.retain(|_, s| s != sid);
        let ingress = self
            .publisher
            .as_mut()
            .and_then(|s| s.direct.as_deref_mut())
            .and_then(|d| d.ingress.as_deref_mut());
        if let Some(ingress) = ingress {
            // Its streams go back to str0m: a reused m-line is shown anew.
            let routes = &self.ssrc_routes;
            ingress.streams.retain(|ssrc, _| {
                routes
                    .get(&Ssrc::from(*ssrc))
                    .is_none_or(|(s, _)| &**s != sid)
            });
        }
        self.ssrc_routes.retain(|_, (s, _)| &**s != sid);
        self.info.tracks.retain(|t| t.sid != sid);
        self.info.is_publisher = !self.info.tracks.is_empty();
    }

    /// True if `track_sid` is received or about to be (queued for the next offer).
    pub fn receives(&self, track_sid: &str) -> bool {
        self.received_tracks().any(|sid| sid == track_sid)
    }

    /// The sids of the tracks it receives: negotiated, or queued to be.
    pub fn received_tracks(&self) -> impl Iterator<Item = &str> {
        let negotiated = self.downtracks.values().map(|d| d.track_sid.as_str());
        let queued = self.subscriber_changes.iter().filter_map(|c| match c {
            SubscriberChange::AddTrack { sid, .. } => Some(sid.as_str()),
            _ => None,
        });
        negotiated.chain(queued)
    }

    /// Connected (ACTIVE): what it is told arrives after its join is done.
    pub fn is_active(&self) -> bool {
        self.info.state == participant_info::State::Active as i32
    }

    /// Stop receiving `track_sid`: drop a queued add, or queue the m-line's stop.
    pub fn stop_receiving(&mut self, track_sid: &str) {
        self.subscriber_changes
            .retain(|c| !matches!(c, SubscriberChange::AddTrack { sid, .. } if sid == track_sid));
        let mid = self
            .downtracks
            .values()
            .find(|d| d.track_sid == track_sid)
            .map(|d| d.mid);
        if let Some(mid) = mid {
            let downtrack = self.downtracks.remove(&mid);
            // Its sender report state and kept packets go with it.
            let ssrc = downtrack.and_then(|d| d.ssrc);
            if let (Some(ssrc), Some(direct)) = (ssrc, self.subscriber.direct.as_deref_mut()) {
                direct.streams.remove(&ssrc);
                // Copies still queued would register the stream again.
                self.subscriber.unwritten.retain(|c| c.ssrc != ssrc);
            }
            self.subscriber_changes.push(SubscriberChange::Stop(mid));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transmit(to: &str, contents: Vec<u8>) -> Transmit {
        Transmit {
            proto: Protocol::Udp,
            source: "10.0.0.1:7882".parse().unwrap(),
            destination: to.parse().unwrap(),
            contents: contents.into(),
        }
    }

    /// A STUN binding success response (only its header matters here).
    fn stun_response() -> Vec<u8> {
        let mut msg = vec![0x01, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
        msg.extend_from_slice(&[7; 12]);
        msg
    }

    #[test]
    fn the_route_follows_the_nominated_pair_not_every_check() {
        let now = Instant::now();
        let mut direct = DirectEgress::new(now, (now, SystemTime::now()));
        let route = |d: &DirectEgress| d.route.map(|(_, _, to)| to.to_string());
        // Answers to checks on any pair: no route yet.
        direct.follow(&transmit("192.0.2.1:5000", stun_response()));
        assert_eq!(route(&direct), None);
        // The client nominates the pair from .2; str0m answers it: the route.
        direct.nominated = Some((Protocol::Udp, "192.0.2.2:6000".parse().unwrap()));
        direct.follow(&transmit("192.0.2.2:6000", stun_response()));
        assert_eq!(route(&direct).as_deref(), Some("192.0.2.2:6000"));
        // The client keeps checking the other pair: the route stays.
        direct.follow(&transmit("192.0.2.1:5000", stun_response()));
        assert_eq!(route(&direct).as_deref(), Some("192.0.2.2:6000"));
        // DTLS and SRTP go where str0m sends media.
        direct.follow(&transmit("192.0.2.3:7000", vec![22, 0xfe, 0xfd]));
        assert_eq!(route(&direct).as_deref(), Some("192.0.2.3:7000"));
        direct.follow(&transmit("192.0.2.4:8000", vec![0x80, 96, 0, 1]));
        assert_eq!(route(&direct).as_deref(), Some("192.0.2.4:8000"));
    }
}
