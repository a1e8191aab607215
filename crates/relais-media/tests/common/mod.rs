//! A deterministic test bench for the media core: one [`Shard`], simulated
//! LiveKit clients built on str0m, a simulated network and a hand-driven clock.
//!
//! * Time: [`Sim::now`] only moves when the bench moves it, to the earliest
//!   thing that is due (a datagram or signal message arriving, an `Rtc` or shard
//!   timeout, a media frame to send).
//! * Network: every datagram takes [`Sim::latency`]; [`Sim::drop_filter`] may
//!   drop any of them (deterministically, it sees each datagram in order).
//! * Signaling: the WebSocket is a queue per direction with
//!   [`Sim::signal_latency`]; clients react like a LiveKit SDK (answer the
//!   server's subscriber offers, offer on the publisher PC after `add_track`).
//! * Clients run str0m in RTP mode (full ICE agent, controlling) with one
//!   address per peer connection, and record what their str0m emits.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use relais_media::{
    JoinError, JoinParams, MediaConfig, ParticipantKey, RoomEvent, Shard, ShardOutput,
};
use relais_proto::livekit::{
    signal_request, signal_response, AddTrackRequest, DataPacket, ParticipantInfo,
    ParticipantPermission, SessionDescription, SignalRequest, SignalResponse, TrackSource,
    TrackType, VideoLayer, VideoQuality,
};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::channel::{ChannelConfig, ChannelId, Reliability};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Pt, Rid, Simulcast, SimulcastLayer};
use str0m::net::{Protocol, Receive};
use str0m::rtp::rtcp::Rtcp;
use str0m::rtp::{ExtensionValues, RawPacket, RtpWrite, Ssrc, VideoOrientation};
use str0m::{Candidate, Event, Input, Output, Rtc};

/// The node's UDP mux address, the only server candidate.
pub const SERVER: &str = "10.0.0.1:7882";
pub const ROOM: &str = "test-room";

pub fn server_addr() -> SocketAddr {
    SERVER.parse().unwrap()
}

/// Optional log output for debugging a test: `RUST_LOG=relais_media=debug`.
pub fn init_log() {
    use tracing_subscriber::EnvFilter;
    if std::env::var("RUST_LOG").is_ok() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// A datagram in flight.
#[derive(Debug, Clone)]
pub struct Datagram {
    pub at: Instant,
    pub source: SocketAddr,
    pub destination: SocketAddr,
    pub contents: Vec<u8>,
}

/// The clear-text fields of an (S)RTP header, or `None` for STUN, DTLS and RTCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpInfo {
    pub pt: u8,
    pub seq: u16,
    pub ssrc: u32,
}

pub fn rtp_info(buf: &[u8]) -> Option<RtpInfo> {
    if buf.len() < 12 || !(128..=191).contains(&buf[0]) {
        return None;
    }
    // RFC 5761: 192..=223 in the second byte is RTCP.
    if (192..=223).contains(&buf[1]) {
        return None;
    }
    Some(RtpInfo {
        pt: buf[1] & 0x7f,
        seq: u16::from_be_bytes([buf[2], buf[3]]),
        ssrc: u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]),
    })
}

/// An RTP packet a client's subscriber PC delivered.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub mid: Mid,
    /// The msid track id of the m-line: the server puts the track SID there.
    pub track_id: String,
    pub seq: u64,
    pub timestamp: u32,
    pub pt: Pt,
    pub marker: bool,
    pub payload: Arc<[u8]>,
    /// The video orientation header extension, if the packet had one.
    pub orientation: Option<VideoOrientation>,
}

impl Received {
    /// VP8: this packet starts a keyframe (S=1, PID=0, P=0).
    pub fn is_vp8_keyframe_start(&self) -> bool {
        vp8_keyframe_start(&self.payload)
    }

    /// The frame counter the simulated encoder wrote at the end of each payload.
    pub fn frame_no(&self) -> u32 {
        let p = &self.payload;
        let n = p.len();
        u32::from_be_bytes([p[n - 8], p[n - 7], p[n - 6], p[n - 5]])
    }

    /// The publisher's own sequence number, also written into the payload.
    pub fn source_seq(&self) -> u32 {
        let p = &self.payload;
        let n = p.len();
        u32::from_be_bytes([p[n - 4], p[n - 3], p[n - 2], p[n - 1]])
    }
}

/// What a subscriber received of a stream whose publisher sent `sent`
/// packets: all but the last few in flight (and more than `at_least`), with
/// continuous outgoing sequence numbers, one per source packet, in order.
pub fn assert_whole_and_in_order(rx: &[&Received], sent: usize, at_least: usize, what: &str) {
    assert!(
        rx.len() + 8 >= sent && rx.len() > at_least,
        "{what}: received {} of {sent}",
        rx.len()
    );
    for w in rx.windows(2) {
        assert_eq!(w[1].seq, w[0].seq + 1, "{what}: seq jump");
        assert_eq!(
            w[1].source_seq(),
            w[0].source_seq() + 1,
            "{what}: source gap"
        );
    }
}

pub fn vp8_keyframe_start(payload: &[u8]) -> bool {
    let Some(&first) = payload.first() else {
        return false;
    };
    if first & 0x10 == 0 || first & 0x07 != 0 {
        return false;
    }
    let mut at = 1;
    if first & 0x80 != 0 {
        let x = payload[1];
        at += 1;
        if x & 0x80 != 0 {
            at += if payload[at] & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            at += 1;
        }
        if x & 0x30 != 0 {
            at += 1;
        }
    }
    payload.get(at).is_some_and(|b| b & 0x01 == 0)
}

/// The 15-bit VP8 picture id of a payload written by [`LocalTrack`].
pub fn vp8_picture_id(payload: &[u8]) -> Option<u16> {
    if payload.len() < 4 || payload[0] & 0x80 == 0 || payload[1] & 0x80 == 0 {
        return None;
    }
    (payload[2] & 0x80 != 0).then(|| (u16::from(payload[2] & 0x7f) << 8) | u16::from(payload[3]))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackState {
    /// `add_track` sent, waiting for `track_published`.
    Announced,
    /// Transceiver added, offer in flight.
    Negotiating,
    /// Sending media.
    Live,
    /// Transceiver set inactive (removeTrack); no more media.
    Removed,
}

/// A track the client publishes, with a tiny "encoder".
pub struct LocalTrack {
    pub cid: String,
    pub kind: MediaKind,
    pub sid: Option<String>,
    pub mid: Option<Mid>,
    pub state: TrackState,
    pub ssrc: Option<Ssrc>,
    pub pt: Option<Pt>,
    next_send: Option<Instant>,
    /// The (extended) sequence number of the next packet sent.
    pub seq: u64,
    timestamp: u32,
    picture_id: u16,
    pub frames_sent: u32,
    /// Frame numbers that were keyframes.
    pub keyframes: Vec<u32>,
    /// The next frame is a keyframe (first frame, or asked for by PLI/FIR).
    pub force_keyframe: bool,
    /// When the publisher PC reported a keyframe request for this track.
    pub keyframe_requests: Vec<Instant>,
    /// Packets sent: (source seq, frame number, keyframe start).
    pub sent: Vec<(u64, u32, bool)>,
    /// When each packet of `sent` was written to the publisher PC.
    pub sent_at: Vec<Instant>,
    /// Simulcast layers, low to high (empty: one stream). Each sends every
    /// frame, its payload filled with [`layer_fill`] of its index.
    pub simulcast: Vec<SimulcastTx>,
    /// Video: the rotation each frame's last packet says (as a phone held
    /// sideways sends it), if any.
    pub orientation: Option<VideoOrientation>,
    /// Packets a delta frame takes (a keyframe twice as many); video only.
    pub packets_per_frame: u32,
    /// Between frames: 20 ms of audio, a 30th of a second of video.
    pub frame_interval: Duration,
}

/// One simulcast layer of a [`LocalTrack`].
pub struct SimulcastTx {
    pub rid: Rid,
    pub ssrc: Option<Ssrc>,
    seq: u64,
    force_keyframe: bool,
}

/// A VP8 RTP payload: descriptor with a 15-bit picture id (S bit on the first
/// packet of a frame), on the first packet the payload header (P bit 0 for a
/// keyframe, show_frame) and a keyframe's start code, then `len` bytes of `fill`.
fn vp8_payload(picture_id: u16, first: bool, key: bool, len: usize, fill: u8) -> Vec<u8> {
    let mut payload = vec![
        if first { 0x90 } else { 0x80 },
        0x80,
        0x80 | (picture_id >> 8) as u8,
        picture_id as u8,
    ];
    if first {
        payload.extend_from_slice(&[if key { 0x10 } else { 0x11 }, 0x02, 0x00]);
        if key {
            payload.extend_from_slice(&[0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01]);
        }
    }
    payload.resize(payload.len() + len, fill);
    payload
}

/// The byte a simulcast layer's payloads are filled with (the layer, seen by a receiver).
pub fn layer_fill(layer: usize) -> u8 {
    0x60 + layer as u8
}

/// The simulcast layers (by payload fill) client `index` received of track
/// `sid` in the last `window`, each run of one layer once.
pub fn layers_received(sim: &Sim, index: usize, sid: &str, window: Duration) -> Vec<usize> {
    let since = sim.now - window;
    let mut layers: Vec<usize> = sim
        .client(index)
        .received(sid)
        .into_iter()
        .filter(|r| r.at >= since)
        .filter_map(|r| (0..3).find(|l| r.payload.last() == Some(&layer_fill(*l))))
        .collect();
    layers.dedup();
    layers
}

/// Alice (client 0) publishes a simulcast camera ("cam") that Bob (client 1)
/// receives: the bench once Bob gets the top layer, and the track's SID.
pub fn simulcast_to_bob() -> (Sim, String) {
    let mut sim = Sim::new();
    sim.join("alice");
    sim.join("bob");
    sim.run_until_connected(Duration::from_secs(2));
    sim.publish_simulcast(0, "cam");
    sim.run_for(Duration::from_secs(3));
    let sid = sim.track_sid(0, "cam");
    assert_eq!(
        layers_received(&sim, 1, &sid, Duration::from_millis(500)),
        [2],
        "Bob gets the top layer"
    );
    (sim, sid)
}

/// The qualities the latest `SubscribedQualityUpdate` to client `index` enables.
pub fn enabled_qualities(sim: &Sim, index: usize) -> Vec<i32> {
    let updates = sim
        .client(index)
        .signals_matching(|m| matches!(m, signal_response::Message::SubscribedQualityUpdate(_)));
    let Some(signal_response::Message::SubscribedQualityUpdate(update)) = updates.last() else {
        return Vec::new();
    };
    update
        .subscribed_qualities
        .iter()
        .filter(|q| q.enabled)
        .map(|q| q.quality)
        .collect()
}

impl LocalTrack {
    fn new(cid: &str, kind: MediaKind) -> Self {
        LocalTrack {
            cid: cid.to_string(),
            kind,
            sid: None,
            mid: None,
            state: TrackState::Announced,
            ssrc: None,
            pt: None,
            next_send: None,
            seq: 1000,
            timestamp: 7777,
            picture_id: 100,
            frames_sent: 0,
            keyframes: Vec::new(),
            force_keyframe: true,
            keyframe_requests: Vec::new(),
            sent: Vec::new(),
            sent_at: Vec::new(),
            simulcast: Vec::new(),
            orientation: None,
            packets_per_frame: 2,
            frame_interval: match kind {
                MediaKind::Audio => Duration::from_millis(20),
                MediaKind::Video => Duration::from_micros(33_333),
            },
        }
    }
}

/// Rewrites an SDP before a simulated client sends it.
pub type SdpFilter = Box<dyn Fn(&str) -> String>;

pub struct Client {
    pub identity: String,
    pub key: ParticipantKey,
    pub pub_addr: SocketAddr,
    pub sub_addr: SocketAddr,
    pub publisher: Rtc,
    pub subscriber: Rtc,
    pub_deadline: Instant,
    sub_deadline: Instant,
    pub sid: String,
    /// Everything the server sent on the WebSocket, in order.
    pub signals: Vec<(Instant, SignalResponse)>,
    /// The latest info per participant SID as a client would keep it (by version).
    pub participants: HashMap<String, ParticipantInfo>,
    pub tracks: Vec<LocalTrack>,
    pub_pending: Option<SdpPendingOffer>,
    pub_offer_id: u32,
    pub_again: bool,
    pub_negotiated_once: bool,
    pub pub_reliable: Option<ChannelId>,
    pub pub_lossy: Option<ChannelId>,
    pub pub_channels_open: Vec<ChannelId>,
    /// Subscriber offers received (SDP), in order.
    pub sub_offers: Vec<String>,
    /// Data channels the server opened on the subscriber PC, by id.
    pub sub_channels: HashMap<ChannelId, String>,
    /// Data received on the subscriber PC: (channel label, bytes).
    pub data_in: Vec<(String, Vec<u8>)>,
    pub rtp_in: Vec<Received>,
    /// Subscriber-PC media events: added (mid, track id) and direction changes.
    pub media_added: Vec<(Mid, MediaKind, String)>,
    pub media_changed: Vec<(Instant, Mid, Direction)>,
    /// NACKs the subscriber PC sent: (media ssrc, lost seq).
    pub nacks_sent: Vec<(Ssrc, u16)>,
    /// Sender reports the subscriber PC received: (ssrc, sender's packet count).
    pub sender_reports: Vec<(Ssrc, u32)>,
    /// RTP packets the subscriber PC received on an RTX payload type.
    pub rtx_received: usize,
    pub connected_pub: bool,
    pub connected_sub: bool,
    pub disconnected: bool,
    /// The leave the server sent with its disconnect, if any.
    pub leave: Option<relais_proto::livekit::LeaveRequest>,
    /// Rewrites this client's subscriber answers before they are sent (bad-input tests).
    pub answer_filter: Option<SdpFilter>,
    /// Added to [`Sim::latency`] for this client's datagrams, both ways.
    pub extra_latency: Duration,
    /// Replaces [`Sim::signal_latency`] for this client's WebSocket, both ways.
    pub signal_latency: Option<Duration>,
}

impl Client {
    fn new(
        identity: &str,
        key: ParticipantKey,
        index: u8,
        now: Instant,
        config: &MediaConfig,
    ) -> Self {
        let pub_addr: SocketAddr = format!("10.0.1.{index}:40000").parse().unwrap();
        let sub_addr: SocketAddr = format!("10.0.1.{index}:40001").parse().unwrap();
        let build = |addr: SocketAddr| {
            let mut rtc = Rtc::builder()
                .set_rtp_mode(true)
                .enable_raw_packets(true)
                .set_crypto_provider(config.crypto.clone())
                .build(now);
            rtc.add_local_candidate(Candidate::host(addr, Protocol::Udp).unwrap());
            rtc
        };
        Client {
            identity: identity.to_string(),
            key,
            pub_addr,
            sub_addr,
            publisher: build(pub_addr),
            subscriber: build(sub_addr),
            pub_deadline: now,
            sub_deadline: now,
            sid: String::new(),
            signals: Vec::new(),
            participants: HashMap::new(),
            tracks: Vec::new(),
            pub_pending: None,
            pub_offer_id: 0,
            pub_again: false,
            pub_negotiated_once: false,
            pub_reliable: None,
            pub_lossy: None,
            pub_channels_open: Vec::new(),
            sub_offers: Vec::new(),
            sub_channels: HashMap::new(),
            data_in: Vec::new(),
            rtp_in: Vec::new(),
            media_added: Vec::new(),
            media_changed: Vec::new(),
            nacks_sent: Vec::new(),
            sender_reports: Vec::new(),
            rtx_received: 0,
            connected_pub: false,
            connected_sub: false,
            disconnected: false,
            leave: None,
            answer_filter: None,
            extra_latency: Duration::ZERO,
            signal_latency: None,
        }
    }

    pub fn track(&self, cid: &str) -> &LocalTrack {
        self.tracks
            .iter()
            .find(|t| t.cid == cid)
            .expect("no such track")
    }

    pub fn track_mut(&mut self, cid: &str) -> &mut LocalTrack {
        self.tracks
            .iter_mut()
            .find(|t| t.cid == cid)
            .expect("no such track")
    }

    /// Packets received for one remote track SID.
    /// The SSRC the subscriber PC receives `track_sid` on.
    pub fn subscriber_ssrc(&mut self, track_sid: &str) -> Ssrc {
        let mid = self
            .media_added
            .iter()
            .find(|(_, _, t)| t == track_sid)
            .map(|(mid, _, _)| *mid)
            .expect("an m-line for the track");
        self.subscriber
            .direct_api()
            .stream_rx_by_mid(mid, None)
            .map(|s| s.ssrc())
            .expect("a stream for the m-line")
    }

    pub fn received(&self, track_sid: &str) -> Vec<&Received> {
        self.rtp_in
            .iter()
            .filter(|r| r.track_id == track_sid)
            .collect()
    }

    /// The latest info this client holds about `identity`.
    pub fn participant(&self, identity: &str) -> Option<&ParticipantInfo> {
        self.participants.values().find(|p| p.identity == identity)
    }

    /// Signal messages of one kind, e.g. `|m| matches!(m, Message::Update(_))`.
    pub fn signals_matching(
        &self,
        f: impl Fn(&signal_response::Message) -> bool,
    ) -> Vec<&signal_response::Message> {
        self.signals
            .iter()
            .filter_map(|(_, s)| s.message.as_ref())
            .filter(|m| f(m))
            .collect()
    }

    /// The label of a data channel on the subscriber PC.
    pub fn sub_channel_open(&self, label: &str) -> bool {
        self.sub_channels.values().any(|l| l == label)
    }
}

/// Decides, for each datagram sent, whether the network loses it.
pub type DropFilter = Box<dyn FnMut(&Datagram) -> bool>;

/// The bench.
pub struct Sim {
    pub start: Instant,
    pub now: Instant,
    pub shard: Shard,
    pub config: MediaConfig,
    pub clients: Vec<Client>,
    pub latency: Duration,
    pub signal_latency: Duration,
    /// Return true to drop a datagram; sees every datagram once, when sent.
    pub drop_filter: Option<DropFilter>,
    pub dropped: Vec<Datagram>,
    pub room_events: Vec<(Instant, RoomEvent)>,
    net: VecDeque<Datagram>,
    to_server: VecDeque<(Instant, ParticipantKey, SignalRequest)>,
    to_clients: VecDeque<(Instant, ParticipantKey, SignalResponse)>,
    next_key: u64,
    /// Steps taken, to keep an eye on the bench's own cost.
    pub steps: u64,
    /// Copies of media the shard said it wrote, summed over its datagrams.
    pub copies_written: u64,
    /// The most datagrams one timeout call of the shard wrote.
    pub most_written_in_a_timeout: usize,
    /// Offers the shard signalled to subscribers, and the most in one of its
    /// timeout calls.
    pub offers_signalled: usize,
    pub most_offers_in_a_timeout: usize,
    /// With `Some`, each timeout call of the shard is logged: whether a
    /// room's turn had been cut before it, and where its datagrams went, in
    /// the order written.
    pub timeout_log: Option<Vec<(bool, Vec<SocketAddr>)>>,
    /// When the shard was given the time (its timeout came due).
    pub shard_timeouts: Vec<Instant>,
    /// When RTP reached the shard.
    pub rtp_to_shard: Vec<Instant>,
    /// Drive the shard's timers as the server does: with the work a datagram
    /// or signal message brings when due, and on their own only at
    /// [`Shard::wake_by`]. Off: at every [`Shard::poll_timeout`].
    pub lazy_timers: bool,
    /// Timeout rounds the shard was woken for alone: no datagram or signal
    /// message for it in the same step.
    pub timer_wakes: u64,
    /// Datagrams and signal messages handed to the shard.
    inputs: u64,
    /// Called with true before each call that hands the shard work and with
    /// false after it: a test can tell what the shard does from what the
    /// simulated clients do on the same thread.
    pub shard_scope: fn(bool),
}

impl Default for Sim {
    fn default() -> Self {
        Self::new()
    }
}

impl Sim {
    pub fn new() -> Self {
        init_log();
        let now = Instant::now();
        let mut config = MediaConfig::new(
            vec![relais_media::udp_host_candidate(server_addr()).unwrap()],
            "ND_test".into(),
        )
        .unwrap();
        // The simulated clock starts now: grids and reports count from it, the same in every run.
        config.clock_epoch.0 = now;
        Sim {
            start: now,
            now,
            shard: Shard::new(0, config.clone()),
            config,
            clients: Vec::new(),
            latency: Duration::from_millis(5),
            signal_latency: Duration::from_millis(10),
            drop_filter: None,
            dropped: Vec::new(),
            room_events: Vec::new(),
            shard_timeouts: Vec::new(),
            rtp_to_shard: Vec::new(),
            lazy_timers: false,
            timer_wakes: 0,
            inputs: 0,
            net: VecDeque::new(),
            to_server: VecDeque::new(),
            to_clients: VecDeque::new(),
            next_key: 1,
            steps: 0,
            copies_written: 0,
            most_written_in_a_timeout: 0,
            offers_signalled: 0,
            most_offers_in_a_timeout: 0,
            timeout_log: None,
            shard_scope: |_| {},
        }
    }

    /// Simulated time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Join a participant (the `/rtc` WebSocket was accepted); returns its index.
    pub fn join(&mut self, identity: &str) -> usize {
        self.try_join(identity).expect("join")
    }

    /// Join like [`Sim::join`], but a refusal is the caller's to look at (and
    /// leaves no client behind).
    pub fn try_join(&mut self, identity: &str) -> Result<usize, JoinError> {
        self.try_join_to(ROOM, identity)
    }

    /// Join a participant to `room` (created if new); returns its index.
    pub fn join_to(&mut self, room: &str, identity: &str) -> usize {
        self.try_join_to(room, identity).expect("join")
    }

    fn try_join_to(&mut self, room: &str, identity: &str) -> Result<usize, JoinError> {
        let key = ParticipantKey(self.next_key);
        self.next_key += 1;
        let index = self.clients.len();
        let client = Client::new(identity, key, index as u8 + 1, self.now, &self.config);
        self.clients.push(client);
        let params = JoinParams {
            key,
            identity: identity.to_string(),
            name: identity.to_string(),
            metadata: String::new(),
            attributes: BTreeMap::new(),
            permission: ParticipantPermission {
                can_subscribe: true,
                can_publish: true,
                can_publish_data: true,
                can_update_metadata: true,
                ..Default::default()
            },
            kind: 0,
            auto_subscribe: true,
            protocol: 16,
            client_info: None,
        };
        let joined = self.shard.join(self.now, 0, room, true, params);
        self.collect_shard();
        match joined {
            Ok(_) => Ok(index),
            Err(e) => {
                self.clients.pop();
                Err(e)
            }
        }
    }

    pub fn client(&self, index: usize) -> &Client {
        &self.clients[index]
    }

    pub fn client_mut(&mut self, index: usize) -> &mut Client {
        &mut self.clients[index]
    }

    /// Publish a track like an SDK: `add_track` first, the transceiver after
    /// `track_published`.
    pub fn publish(&mut self, index: usize, kind: MediaKind, cid: &str) {
        let (ty, source) = match kind {
            MediaKind::Audio => (TrackType::Audio, TrackSource::Microphone),
            MediaKind::Video => (TrackType::Video, TrackSource::Camera),
        };
        self.clients[index].tracks.push(LocalTrack::new(cid, kind));
        let req = AddTrackRequest {
            cid: cid.to_string(),
            name: cid.to_string(),
            r#type: ty as i32,
            source: source as i32,
            width: if kind == MediaKind::Video { 640 } else { 0 },
            height: if kind == MediaKind::Video { 360 } else { 0 },
            ..Default::default()
        };
        self.send_signal(index, signal_request::Message::AddTrack(req));
    }

    /// Publish a VP8 camera in simulcast, layers `q`, `h`, `f` (low to high),
    /// announced like livekit-client does (`AddTrackRequest.layers`, rids in
    /// the offer).
    pub fn publish_simulcast(&mut self, index: usize, cid: &str) {
        let mut track = LocalTrack::new(cid, MediaKind::Video);
        track.simulcast = ["q", "h", "f"]
            .into_iter()
            .map(|rid| SimulcastTx {
                rid: Rid::from(rid),
                ssrc: None,
                seq: 5000,
                force_keyframe: true,
            })
            .collect();
        self.clients[index].tracks.push(track);
        let layers = [
            (VideoQuality::Low, 160, 90),
            (VideoQuality::Medium, 320, 180),
            (VideoQuality::High, 640, 360),
        ]
        .into_iter()
        .map(|(quality, width, height)| VideoLayer {
            quality: quality as i32,
            width,
            height,
            ..Default::default()
        })
        .collect();
        let req = AddTrackRequest {
            cid: cid.to_string(),
            name: cid.to_string(),
            r#type: TrackType::Video as i32,
            source: TrackSource::Camera as i32,
            width: 640,
            height: 360,
            layers,
            ..Default::default()
        };
        self.send_signal(index, signal_request::Message::AddTrack(req));
    }

    /// Unpublish like `removeTrack`: the transceiver goes inactive, then renegotiate.
    pub fn unpublish(&mut self, index: usize, cid: &str) {
        let now = self.now;
        let c = &mut self.clients[index];
        c.track_mut(cid).state = TrackState::Removed;
        self.negotiate_publisher(index, now);
    }

    /// Negotiate the publisher PC now (data channels only, if nothing is published).
    pub fn connect_publisher(&mut self, index: usize) {
        let now = self.now;
        self.negotiate_publisher(index, now);
    }

    /// Send a DataPacket on the client's publisher `_reliable` (or `_lossy`) channel.
    pub fn send_data(&mut self, index: usize, reliable: bool, packet: &DataPacket) {
        let now = self.now;
        let c = &mut self.clients[index];
        let id = if reliable {
            c.pub_reliable
        } else {
            c.pub_lossy
        };
        let id = id.expect("publisher data channels not negotiated");
        let bytes = packet.encode_to_vec();
        c.publisher
            .channel(id)
            .expect("channel open")
            .write(true, &bytes)
            .expect("channel write");
        self.drain_client(index, true, now);
    }

    pub fn send_signal(&mut self, index: usize, message: signal_request::Message) {
        let key = self.clients[index].key;
        let at = self.now + self.signal_latency_of(key);
        let req = SignalRequest {
            message: Some(message),
        };
        insert_by_time(&mut self.to_server, (at, key, req), |e| e.0);
    }

    fn signal_latency_of(&self, key: ParticipantKey) -> Duration {
        self.clients
            .iter()
            .find(|c| c.key == key)
            .and_then(|c| c.signal_latency)
            .unwrap_or(self.signal_latency)
    }

    /// One-way latency between the server and the address `a` or `b` (a client's).
    fn latency_between(&self, a: SocketAddr, b: SocketAddr) -> Duration {
        let extra = self
            .clients
            .iter()
            .find(|c| [c.pub_addr, c.sub_addr].iter().any(|x| *x == a || *x == b))
            .map_or(Duration::ZERO, |c| c.extra_latency);
        self.latency + extra
    }

    /// Run the world for `d` of simulated time.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        self.run_until(end, |_| false);
    }

    /// Run until `done` holds (checked after every step) or `limit` passes;
    /// returns whether `done` held.
    pub fn run_until_cond(&mut self, limit: Duration, done: impl Fn(&Sim) -> bool) -> bool {
        let end = self.now + limit;
        self.run_until(end, done)
    }

    fn run_until(&mut self, end: Instant, done: impl Fn(&Sim) -> bool) -> bool {
        loop {
            if done(self) {
                return true;
            }
            let next = self.next_time();
            if next > end {
                self.now = end;
                return false;
            }
            // Never stand still: a component that keeps asking for "now" gets 100µs.
            self.now = next.max(self.now + Duration::from_micros(100));
            if self.now > end {
                self.now = end;
            }
            self.step();
        }
    }

    fn next_time(&self) -> Instant {
        let mut next = self.now + Duration::from_secs(3600);
        let mut consider = |t: Instant| next = next.min(t);
        if let Some(d) = self.net.front() {
            consider(d.at);
        }
        if let Some((t, _, _)) = self.to_server.front() {
            consider(*t);
        }
        if let Some((t, _, _)) = self.to_clients.front() {
            consider(*t);
        }
        let shard = if self.lazy_timers {
            self.shard.wake_by()
        } else {
            self.shard.poll_timeout()
        };
        if let Some(t) = shard {
            consider(t);
        }
        for c in &self.clients {
            if c.disconnected {
                continue;
            }
            consider(c.pub_deadline);
            consider(c.sub_deadline);
            for t in &c.tracks {
                if let (TrackState::Live, Some(at)) = (t.state, t.next_send) {
                    consider(at);
                }
            }
        }
        next
    }

    fn step(&mut self) {
        self.steps += 1;
        let now = self.now;
        let inputs = self.inputs;
        // Datagrams.
        while self.net.front().is_some_and(|d| d.at <= now) {
            let d = self.net.pop_front().unwrap();
            self.deliver(now, d);
        }
        // Signal messages, client → server.
        while self.to_server.front().is_some_and(|(t, _, _)| *t <= now) {
            let (_, key, req) = self.to_server.pop_front().unwrap();
            self.inputs += 1;
            (self.shard_scope)(true);
            self.shard.handle_signal(now, key, req);
            (self.shard_scope)(false);
            self.collect_shard();
        }
        // Signal messages, server → client.
        while self.to_clients.front().is_some_and(|(t, _, _)| *t <= now) {
            let (_, key, msg) = self.to_clients.pop_front().unwrap();
            if let Some(index) = self.clients.iter().position(|c| c.key == key) {
                self.on_signal(index, now, msg);
            }
        }
        // Timers.
        let woken = self.inputs > inputs
            || !self.lazy_timers
            || self.shard.wake_by().is_some_and(|t| t <= now);
        if woken && self.shard.poll_timeout().is_some_and(|t| t <= now) {
            if self.inputs == inputs {
                self.timer_wakes += 1;
            }
            self.shard_timeouts.push(now);
            let cut_before = !self.shard.rooms_cut().is_empty();
            (self.shard_scope)(true);
            self.shard.handle_timeout(now);
            (self.shard_scope)(false);
            let outgoing = self.shard.outgoing();
            self.most_written_in_a_timeout = self.most_written_in_a_timeout.max(outgoing.len());
            if let Some(log) = self.timeout_log.as_mut() {
                log.push((
                    cut_before,
                    outgoing.iter().map(|(d, _)| d.destination).collect(),
                ));
            }
            let offers = self.offers_signalled;
            self.collect_shard();
            self.most_offers_in_a_timeout = self
                .most_offers_in_a_timeout
                .max(self.offers_signalled - offers);
        }
        for index in 0..self.clients.len() {
            if self.clients[index].disconnected {
                continue;
            }
            for publisher in [true, false] {
                let c = &mut self.clients[index];
                let (deadline, rtc) = if publisher {
                    (c.pub_deadline, &mut c.publisher)
                } else {
                    (c.sub_deadline, &mut c.subscriber)
                };
                if deadline <= now {
                    rtc.handle_input(Input::Timeout(now))
                        .expect("client timeout");
                    self.drain_client(index, publisher, now);
                }
            }
            self.send_media(index, now);
        }
    }

    fn deliver(&mut self, now: Instant, d: Datagram) {
        if d.destination == server_addr() {
            if rtp_info(&d.contents).is_some() {
                self.rtp_to_shard.push(now);
            }
            self.inputs += 1;
            (self.shard_scope)(true);
            self.copies_written += self
                .shard
                .handle_datagram(now, Protocol::Udp, d.source, d.destination, &d.contents)
                .copies;
            (self.shard_scope)(false);
            self.collect_shard();
            return;
        }
        let Some(index) = self
            .clients
            .iter()
            .position(|c| c.pub_addr == d.destination || c.sub_addr == d.destination)
        else {
            return;
        };
        let c = &mut self.clients[index];
        if c.disconnected {
            return;
        }
        let publisher = c.pub_addr == d.destination;
        let rtc = if publisher {
            &mut c.publisher
        } else {
            &mut c.subscriber
        };
        let receive = Receive::new(Protocol::Udp, d.source, d.destination, &d.contents)
            .expect("parsable datagram");
        rtc.handle_input(Input::Receive(now, receive))
            .expect("client input");
        self.drain_client(index, publisher, now);
    }

    fn send_datagram(&mut self, d: Datagram) {
        if let Some(filter) = self.drop_filter.as_mut() {
            if filter(&d) {
                self.dropped.push(d);
                return;
            }
        }
        insert_by_time(&mut self.net, d, |d| d.at);
    }

    /// Move the shard's outputs into the network, the WebSocket queues and the event log.
    fn collect_shard(&mut self) {
        let outgoing = self.shard.outgoing();
        let sent: Vec<_> = outgoing
            .iter()
            .map(|(t, contents)| (t.source, t.destination, contents.to_vec()))
            .collect();
        outgoing.clear();
        for (source, destination, contents) in sent {
            let d = Datagram {
                at: self.now + self.latency_between(source, destination),
                source,
                destination,
                contents,
            };
            self.send_datagram(d);
        }
        while let Some(out) = self.shard.poll_output() {
            match out {
                ShardOutput::Signal(key, msg) => {
                    if matches!(msg.message, Some(signal_response::Message::Offer(_))) {
                        self.offers_signalled += 1;
                    }
                    let at = self.now + self.signal_latency_of(key);
                    insert_by_time(
                        &mut self.to_clients,
                        (at, key, Arc::unwrap_or_clone(msg)),
                        |e| e.0,
                    );
                }
                ShardOutput::EncodedSignal(key, bytes) => {
                    let msg = SignalResponse::decode(bytes.as_slice())
                        .expect("an encoded signal decodes");
                    let at = self.now + self.signal_latency_of(key);
                    insert_by_time(&mut self.to_clients, (at, key, msg), |e| e.0);
                }
                ShardOutput::Disconnect(key, leave) => {
                    if let Some(c) = self.clients.iter_mut().find(|c| c.key == key) {
                        c.disconnected = true;
                        c.leave = leave;
                    }
                }
                ShardOutput::Event { event, .. } => self.room_events.push((self.now, *event)),
                ShardOutput::RoomClosed(_) => {}
            }
        }
    }

    /// Poll one client PC until it asks for time, reacting to its events.
    fn drain_client(&mut self, index: usize, publisher: bool, now: Instant) {
        let mut events = Vec::new();
        loop {
            let c = &mut self.clients[index];
            let (rtc, addr) = if publisher {
                (&mut c.publisher, c.pub_addr)
            } else {
                (&mut c.subscriber, c.sub_addr)
            };
            match rtc.poll_output().expect("client poll_output") {
                Output::Timeout(t) => {
                    if publisher {
                        c.pub_deadline = t;
                    } else {
                        c.sub_deadline = t;
                    }
                    break;
                }
                Output::Transmit(t) => {
                    assert_eq!(t.source, addr);
                    let d = Datagram {
                        at: now + self.latency_between(t.source, t.destination),
                        source: t.source,
                        destination: t.destination,
                        contents: t.contents.to_vec(),
                    };
                    self.send_datagram(d);
                }
                Output::Event(e) => events.push(e),
            }
        }
        for e in events {
            self.on_client_event(index, publisher, now, e);
        }
    }

    fn on_client_event(&mut self, index: usize, publisher: bool, now: Instant, e: Event) {
        let c = &mut self.clients[index];
        match e {
            Event::Connected => {
                if publisher {
                    c.connected_pub = true;
                } else {
                    c.connected_sub = true;
                }
            }
            Event::KeyframeRequest(req) if publisher => {
                if let Some(t) = c.tracks.iter_mut().find(|t| t.mid == Some(req.mid)) {
                    t.force_keyframe = true;
                    t.keyframe_requests.push(now);
                    for layer in &mut t.simulcast {
                        if req.rid.is_none_or(|rid| rid == layer.rid) {
                            layer.force_keyframe = true;
                        }
                    }
                }
            }
            Event::ChannelOpen(id, label) => {
                if publisher {
                    c.pub_channels_open.push(id);
                } else {
                    c.sub_channels.insert(id, label);
                }
            }
            Event::ChannelData(data) if !publisher => {
                let label = c.sub_channels.get(&data.id).cloned().unwrap_or_default();
                c.data_in.push((label, data.data));
            }
            Event::MediaAdded(m) if !publisher => {
                let track_id = c
                    .subscriber
                    .media(m.mid)
                    .map(|m| m.track_id().to_string())
                    .unwrap_or_default();
                c.media_added.push((m.mid, m.kind, track_id));
            }
            Event::MediaChanged(m) if !publisher => {
                c.media_changed.push((now, m.mid, m.direction));
            }
            Event::RtpPacket(pkt) if !publisher => {
                let ssrc = pkt.header.ssrc;
                let mid = c
                    .subscriber
                    .direct_api()
                    .stream_rx(&ssrc)
                    .map(|s| s.mid())
                    .expect("RTP on a known stream");
                let track_id = c
                    .subscriber
                    .media(mid)
                    .map(|m| m.track_id().to_string())
                    .unwrap_or_default();
                c.rtp_in.push(Received {
                    at: now,
                    mid,
                    track_id,
                    seq: *pkt.seq_no,
                    timestamp: pkt.header.timestamp,
                    pt: pkt.header.payload_type,
                    marker: pkt.header.marker,
                    payload: pkt.payload.clone(),
                    orientation: pkt.header.ext_vals.video_orientation,
                });
            }
            Event::RawPacket(raw) if !publisher => match *raw {
                RawPacket::RtcpTx(Rtcp::Nack(n)) => {
                    for entry in n.reports.iter() {
                        c.nacks_sent.push((n.ssrc, entry.pid));
                        for bit in 0..16 {
                            if entry.blp & (1 << bit) != 0 {
                                c.nacks_sent.push((n.ssrc, entry.pid.wrapping_add(bit + 1)));
                            }
                        }
                    }
                }
                RawPacket::RtcpRx(Rtcp::SenderReport(sr)) => {
                    let info = sr.sender_info;
                    c.sender_reports.push((info.ssrc, info.sender_packet_count));
                }
                RawPacket::RtpRx(h, _) => {
                    let is_rtx = c
                        .subscriber
                        .codec_config()
                        .params()
                        .iter()
                        .any(|p| p.resend() == Some(h.payload_type));
                    if is_rtx {
                        c.rtx_received += 1;
                    }
                }
                _ => {}
            },
            _ => {}
        }
    }

    /// The client's side of the WebSocket.
    fn on_signal(&mut self, index: usize, now: Instant, msg: SignalResponse) {
        use signal_response::Message as M;
        self.clients[index].signals.push((now, msg.clone()));
        let Some(message) = msg.message else {
            return;
        };
        match message {
            M::Join(join) => {
                let c = &mut self.clients[index];
                let me = join.participant.unwrap_or_default();
                c.sid = me.sid.clone();
                for p in join.other_participants {
                    c.participants.insert(p.sid.clone(), p);
                }
            }
            M::Update(update) => {
                let c = &mut self.clients[index];
                for p in update.participants {
                    let newer = c
                        .participants
                        .get(&p.sid)
                        .is_none_or(|old| p.version > old.version);
                    if newer {
                        c.participants.insert(p.sid.clone(), p);
                    }
                }
            }
            M::Offer(sd) => {
                let c = &mut self.clients[index];
                c.sub_offers.push(sd.sdp.clone());
                let offer = SdpOffer::from_sdp_string(&sd.sdp).expect("server offer parses");
                let answer = c
                    .subscriber
                    .sdp_api()
                    .accept_offer(offer)
                    .expect("server offer accepted");
                self.drain_client(index, false, now);
                let mut sdp = answer.to_sdp_string();
                if let Some(filter) = &self.clients[index].answer_filter {
                    sdp = filter(&sdp);
                }
                self.send_signal(
                    index,
                    signal_request::Message::Answer(SessionDescription {
                        r#type: "answer".into(),
                        sdp,
                        id: sd.id,
                        ..Default::default()
                    }),
                );
            }
            M::Answer(sd) => {
                let c = &mut self.clients[index];
                assert_eq!(sd.id, c.pub_offer_id, "answer echoes the offer id");
                let pending = c.pub_pending.take().expect("answer without an offer");
                let answer = SdpAnswer::from_sdp_string(&sd.sdp).expect("server answer parses");
                c.publisher
                    .sdp_api()
                    .accept_answer(pending, answer)
                    .expect("server answer accepted");
                let vp8 = find_pt(&c.publisher, Codec::Vp8);
                let opus = find_pt(&c.publisher, Codec::Opus);
                for t in &mut c.tracks {
                    if t.state != TrackState::Negotiating {
                        continue;
                    }
                    let mid = t.mid.unwrap();
                    for layer in &mut t.simulcast {
                        layer.ssrc = c
                            .publisher
                            .direct_api()
                            .stream_tx_by_mid(mid, Some(layer.rid))
                            .map(|s| s.ssrc());
                        assert!(
                            layer.ssrc.is_some(),
                            "send stream of {} after the answer",
                            layer.rid
                        );
                    }
                    t.ssrc = c
                        .publisher
                        .direct_api()
                        .stream_tx_by_mid(mid, t.simulcast.first().map(|l| l.rid))
                        .map(|s| s.ssrc());
                    assert!(t.ssrc.is_some(), "send stream after the answer");
                    t.pt = Some(match t.kind {
                        MediaKind::Audio => opus,
                        MediaKind::Video => vp8,
                    });
                    t.state = TrackState::Live;
                    t.next_send = Some(now);
                }
                let again = std::mem::take(&mut c.pub_again);
                self.drain_client(index, true, now);
                if again {
                    self.negotiate_publisher(index, now);
                }
            }
            M::TrackPublished(resp) => {
                let c = &mut self.clients[index];
                if let Some(t) = c.tracks.iter_mut().find(|t| t.cid == resp.cid) {
                    t.sid = resp.track.map(|t| t.sid);
                }
                self.negotiate_publisher(index, now);
            }
            _ => {}
        }
    }

    /// Offer the publisher PC's changes (new transceivers, removed tracks, data channels).
    fn negotiate_publisher(&mut self, index: usize, now: Instant) {
        let c = &mut self.clients[index];
        if c.pub_pending.is_some() {
            c.pub_again = true;
            return;
        }
        let mut api = c.publisher.sdp_api();
        if !c.pub_negotiated_once {
            c.pub_negotiated_once = true;
            c.pub_reliable = Some(api.add_channel_with_config(ChannelConfig {
                label: "_reliable".into(),
                ordered: true,
                reliability: Reliability::Reliable,
                ..Default::default()
            }));
            c.pub_lossy = Some(api.add_channel_with_config(ChannelConfig {
                label: "_lossy".into(),
                ordered: false,
                reliability: Reliability::MaxRetransmits { retransmits: 0 },
                ..Default::default()
            }));
        }
        for t in &mut c.tracks {
            match t.state {
                TrackState::Announced if t.sid.is_some() => {
                    let simulcast = (!t.simulcast.is_empty()).then(|| {
                        let mut s = Simulcast::new();
                        for layer in &t.simulcast {
                            s.add_send_layer(SimulcastLayer::new(&layer.rid));
                        }
                        s
                    });
                    let mid = api.add_media(
                        t.kind,
                        Direction::SendOnly,
                        Some(format!("stream-{}", t.cid)),
                        Some(t.cid.clone()),
                        simulcast,
                    );
                    t.mid = Some(mid);
                    t.state = TrackState::Negotiating;
                }
                TrackState::Removed => {
                    if let Some(mid) = t.mid {
                        api.set_direction(mid, Direction::Inactive);
                    }
                    t.next_send = None;
                }
                _ => {}
            }
        }
        let Some((offer, pending)) = api.apply() else {
            return;
        };
        c.pub_pending = Some(pending);
        c.pub_offer_id += 1;
        let sd = SessionDescription {
            r#type: "offer".into(),
            sdp: offer.to_sdp_string(),
            id: c.pub_offer_id,
            ..Default::default()
        };
        self.drain_client(index, true, now);
        self.send_signal(index, signal_request::Message::Offer(sd));
    }

    /// The simulated encoders: Opus every 20 ms, VP8 at 30 fps (keyframes of 4
    /// packets on the first frame and on request, otherwise 2 packets).
    fn send_media(&mut self, index: usize, now: Instant) {
        let c = &mut self.clients[index];
        let mut wrote = false;
        for t in &mut c.tracks {
            let (TrackState::Live, Some(at)) = (t.state, t.next_send) else {
                continue;
            };
            if at > now {
                continue;
            }
            t.next_send = Some(at + t.frame_interval);
            let frame = t.frames_sent;
            t.frames_sent += 1;
            let pt = t.pt.unwrap();
            if !t.simulcast.is_empty() {
                let mut api = c.publisher.direct_api();
                for (index, layer) in t.simulcast.iter_mut().enumerate() {
                    let Some(tx) = layer.ssrc.and_then(|ssrc| api.stream_tx(&ssrc)) else {
                        continue;
                    };
                    let key = std::mem::take(&mut layer.force_keyframe);
                    let count = if key { 3 } else { 1 };
                    for i in 0..count {
                        let first = i == 0;
                        let payload = vp8_payload(t.picture_id, first, key, 100, layer_fill(index));
                        tx.write_rtp(
                            RtpWrite::new(pt, layer.seq.into(), t.timestamp, now, payload)
                                .marker(i == count - 1)
                                .nackable(true),
                        );
                        layer.seq += 1;
                    }
                }
                t.timestamp = t.timestamp.wrapping_add(3000);
                t.picture_id = (t.picture_id + 1) & 0x7fff;
                wrote = true;
                continue;
            }
            let ssrc = t.ssrc.unwrap();
            let mut api = c.publisher.direct_api();
            let Some(tx) = api.stream_tx(&ssrc) else {
                continue;
            };
            match t.kind {
                MediaKind::Audio => {
                    let mut payload = vec![0xfc; 40];
                    payload.extend_from_slice(&frame.to_be_bytes());
                    payload.extend_from_slice(&(t.seq as u32).to_be_bytes());
                    tx.write_rtp(RtpWrite::new(pt, t.seq.into(), t.timestamp, now, payload));
                    t.sent.push((t.seq, frame, false));
                    t.sent_at.push(now);
                    t.seq += 1;
                    t.timestamp = t
                        .timestamp
                        .wrapping_add((t.frame_interval.as_micros() * 48 / 1000) as u32);
                }
                MediaKind::Video => {
                    let key = std::mem::take(&mut t.force_keyframe);
                    if key {
                        t.keyframes.push(frame);
                    }
                    let count = t.packets_per_frame * if key { 2 } else { 1 };
                    for i in 0..count {
                        let first = i == 0;
                        let mut payload = vp8_payload(t.picture_id, first, key, 200, 0x55);
                        payload.extend_from_slice(&frame.to_be_bytes());
                        payload.extend_from_slice(&(t.seq as u32).to_be_bytes());
                        let last = i == count - 1;
                        let ext = ExtensionValues {
                            video_orientation: t.orientation.filter(|_| last),
                            ..Default::default()
                        };
                        tx.write_rtp(
                            RtpWrite::new(pt, t.seq.into(), t.timestamp, now, payload)
                                .marker(last)
                                .ext_vals(ext)
                                .nackable(true),
                        );
                        t.sent.push((t.seq, frame, key && first));
                        t.sent_at.push(now);
                        t.seq += 1;
                    }
                    t.timestamp = t.timestamp.wrapping_add(3000);
                    t.picture_id = (t.picture_id + 1) & 0x7fff;
                }
            }
            wrote = true;
        }
        if wrote {
            self.drain_client(index, true, now);
        }
    }

    /// Have the network lose every `nth` packet of payload type `pt` (RTX
    /// has its own) sent to or from `at`, at most `count` of them, each
    /// sequence number once, while the world runs `during`; returns the
    /// sequence numbers of the packets lost.
    pub fn lose_every_nth(
        &mut self,
        at: SocketAddr,
        pt: Pt,
        nth: u32,
        count: usize,
        during: Duration,
    ) -> Vec<u16> {
        let mut seen = 0u32;
        let mut lost = std::collections::HashSet::new();
        self.drop_filter = Some(Box::new(move |d| {
            if d.destination != at && d.source != at {
                return false;
            }
            let Some(rtp) = rtp_info(&d.contents) else {
                return false;
            };
            if rtp.pt != *pt || lost.len() >= count {
                return false;
            }
            seen += 1;
            seen.is_multiple_of(nth) && lost.insert(rtp.seq)
        }));
        self.run_for(during);
        self.drop_filter = None;
        self.dropped
            .iter()
            .map(|d| rtp_info(&d.contents).unwrap().seq)
            .collect()
    }

    /// The SID the server assigned to a client's track.
    pub fn track_sid(&self, index: usize, cid: &str) -> String {
        self.clients[index]
            .track(cid)
            .sid
            .clone()
            .expect("track_published received")
    }

    /// Run until every client's subscriber PC (and publisher PC, once
    /// negotiated) is connected.
    pub fn run_until_connected(&mut self, limit: Duration) {
        let ok = self.run_until_cond(limit, |s| {
            s.clients
                .iter()
                .all(|c| c.connected_sub && (!c.pub_negotiated_once || c.connected_pub))
        });
        assert!(ok, "peer connections did not connect within {limit:?}");
    }
}

/// Queue `item` after every entry due no later than it (FIFO per due time).
fn insert_by_time<T>(queue: &mut VecDeque<T>, item: T, at: impl Fn(&T) -> Instant) {
    let t = at(&item);
    let pos = queue.iter().rposition(|e| at(e) <= t).map_or(0, |p| p + 1);
    queue.insert(pos, item);
}

fn find_pt(rtc: &Rtc, codec: Codec) -> Pt {
    rtc.codec_config()
        .find(|p| p.spec().codec == codec)
        .map(|p| p.pt())
        .expect("codec configured")
}

/// Sequence numbers from `seqs` (any order, duplicates allowed) missing between
/// the lowest and the highest.
pub fn gaps(seqs: impl IntoIterator<Item = u64>) -> Vec<u64> {
    let mut v: Vec<u64> = seqs.into_iter().collect();
    v.sort_unstable();
    v.dedup();
    let mut missing = Vec::new();
    for w in v.windows(2) {
        missing.extend(w[0] + 1..w[1]);
    }
    missing
}
