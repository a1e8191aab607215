//! Direct egress: forwarded audio (and video) protected and sent by Relais
//! itself.
//!
//! A copy given to str0m costs a whole session drive — a timeout input and an
//! output loop that walk every subsystem of the session (ICE, DTLS, SCTP,
//! every stream) — and audio is one packet per frame, so each audio copy pays
//! one (docs/benchmarks-journal.md, "Direct audio egress"). With `direct_audio` on, a
//! subscriber session's audio copies skip str0m: they are queued like any
//! copy, and when the session's turn comes in the round (on a fan-out helper,
//! in a large room) Relais protects them with the session's SRTP keys (AEAD
//! AES-GCM, RFC 7714) and sends them, with each stream's RTCP sender report —
//! and drives str0m only if it has something else to do (video written to it,
//! or its own deadline). str0m keeps everything else: ICE, DTLS, the session's
//! RTCP receive side (receiver reports, PLI), data channels — and video,
//! unless `direct_video` is on too: then each published layer's last packets
//! are kept once for all its subscribers ([`TrackHistory`]), each subscriber's
//! video stream keeps how it sent them ([`SendHistory`]), and the
//! subscriber's NACKs, which str0m hands over decrypted, are answered from
//! both on the stream's RTX SSRC.
//!
//! The keys come from the session's own DTLS: [`crate::dtls::tap_next_session`]
//! arms the node's DTLS provider so that the next DTLS instance built on this
//! thread — the one str0m builds inside `RtcConfig::build` — reports its SRTP
//! keying material into the session's [`KeySlot`].

use std::collections::VecDeque;
use std::num::NonZeroU16;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use aws_lc_rs::aead::{Aad, LessSafeKey};
use str0m::crypto::dtls::SrtpProfile;
use str0m::media::{MediaKind, Pt};
use str0m::rtp::{Extension, Ssrc, VideoOrientation};
use str0m::Rtc;

use crate::codec::{Vp8Header, Vp8Rewrite};
use crate::outgoing::Outgoing;
use crate::participant::{ForwardedCopy, PeerSession};
use crate::payload::Payload;
use crate::srtcp::{self, nonce, SrtcpSender, SALT_LEN};

/// Where a session's SRTP sender lands once its DTLS handshake is done.
pub(crate) type KeySlot = Arc<OnceLock<SrtpSender>>;

const TAG_LEN: usize = 16;
const RTP_HEADER_LEN: usize = 12;

/// One direction's SRTP and SRTCP keys of a session (AEAD AES-GCM only: what
/// str0m and browsers prefer; a session that negotiated AES-CM keeps str0m's
/// path).
pub(crate) struct SrtpSender {
    rtp: LessSafeKey,
    rtp_salt: [u8; SALT_LEN],
    rtcp: SrtcpSender,
}

impl SrtpSender {
    /// The sending keys from DTLS-SRTP keying material; the DTLS client sends
    /// with the client's.
    pub(crate) fn from_keying_material(
        material: &[u8],
        profile: SrtpProfile,
        dtls_client: bool,
    ) -> Option<Self> {
        let (rtp, rtp_salt, rtcp) = srtcp::gcm_keys(material, profile, dtls_client)?;
        Some(SrtpSender {
            rtp,
            rtp_salt,
            rtcp,
        })
    }

    /// Write `packet` protected into the start of `buf` (at least
    /// [`RtpPacket::max_len`] bytes) and return its length. The payload is
    /// sealed from where it is kept straight into `buf`: only what differs
    /// from it (the first bytes, see [`RtpPacket::head`]) is copied.
    pub(crate) fn seal_rtp(&self, packet: &RtpPacket, buf: &mut [u8]) -> usize {
        let header_len = packet.write_header(buf);
        let (header, body) = buf.split_at_mut(header_len);
        let fields = packet.header;
        // RFC 7714 §8.1: 00 00 || SSRC || ROC || SEQ, XOR the salt.
        let mut iv = [0u8; SALT_LEN];
        iv[2..6].copy_from_slice(&fields.ssrc.to_be_bytes());
        iv[6..10].copy_from_slice(&((fields.seq >> 16) as u32).to_be_bytes());
        iv[10..12].copy_from_slice(&(fields.seq as u16).to_be_bytes());
        let (head, head_len, taken) = packet.head();
        let rest = &packet.payload[taken..];
        let (head_out, rest_out) = body.split_at_mut(head_len);
        self.rtp
            .seal_out_of_place_scatter(
                nonce(iv, &self.rtp_salt),
                Aad::from(&header[..]),
                &head[..head_len],
                head_out,
                rest,
                &mut rest_out[..rest.len() + TAG_LEN],
            )
            .expect("AES-GCM seals any length we send");
        header_len + head_len + rest.len() + TAG_LEN
    }

    /// Protect one RTCP packet (see [`SrtcpSender::protect`]).
    pub(crate) fn protect_rtcp(&self, packet: &mut Vec<u8>) {
        self.rtcp.protect(packet);
    }
}

/// The plaintext bytes a packet may not share with the payload it was
/// received with: a retransmission's original sequence number, and the
/// payload's first bytes, which hold a VP8 descriptor (at most 6 bytes)
/// that the forwarder rewrites. Sealed apart from the rest of the payload
/// (measured: one AES block apart costs AES-GCM less than copying the whole
/// payload to change it in place).
const HEAD_MAX: usize = 2 + 16;

/// An RTP packet to send: an RTP header — with the video orientation in a
/// one-byte header extension (RFC 8285) if the packet carries one — then
/// the payload: behind the original sequence number for a retransmission on
/// RTX (RFC 4588 §4), with the VP8 descriptor rewritten if asked. Written
/// protected by [`SrtpSender::seal_rtp`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct RtpPacket<'a> {
    header: RtpFields,
    osn: Option<u16>,
    payload: &'a [u8],
    vp8: Option<Vp8Rewrite>,
}

#[cfg(test)]
impl<'a> RtpPacket<'a> {
    /// A packet with no rewrite, and the video orientation extension (ID,
    /// value) if given.
    pub(crate) fn for_test(
        seq: u64,
        ssrc: u32,
        orientation: Option<(u8, u8)>,
        payload: &'a [u8],
    ) -> Self {
        RtpPacket {
            header: RtpFields {
                pt: 96,
                marker: false,
                seq,
                timestamp: 3000,
                ssrc,
                orientation,
            },
            osn: None,
            payload,
            vp8: None,
        }
    }
}

impl RtpPacket<'_> {
    /// The most its protected packet takes.
    pub(crate) fn max_len(&self) -> usize {
        RTP_HEADER_LEN + 8 + 2 + self.payload.len() + TAG_LEN
    }

    /// Write the header at the start of `buf`; returns its length.
    fn write_header(&self, buf: &mut [u8]) -> usize {
        let header = self.header;
        buf[0] = if header.orientation.is_some() {
            0x90
        } else {
            0x80
        };
        buf[1] = (u8::from(header.marker) << 7) | (header.pt & 0x7f);
        buf[2..4].copy_from_slice(&(header.seq as u16).to_be_bytes());
        buf[4..8].copy_from_slice(&header.timestamp.to_be_bytes());
        buf[8..12].copy_from_slice(&header.ssrc.to_be_bytes());
        match header.orientation {
            // One word of elements: ID and length − 1 (0), the value, padding.
            Some((id, value)) => {
                buf[12..20].copy_from_slice(&[0xbe, 0xde, 0x00, 0x01, id << 4, value, 0, 0]);
                20
            }
            None => RTP_HEADER_LEN,
        }
    }

    /// The plaintext's first bytes as sent if they differ from the payload
    /// kept (see [`HEAD_MAX`]), how many they are, and how many of the
    /// payload's they stand for; none if the payload is sent as received.
    fn head(&self) -> ([u8; HEAD_MAX], usize, usize) {
        let mut head = [0u8; HEAD_MAX];
        if self.osn.is_none() && self.vp8.is_none() {
            return (head, 0, 0);
        }
        let at = match self.osn {
            Some(osn) => {
                head[..2].copy_from_slice(&osn.to_be_bytes());
                2
            }
            None => 0,
        };
        let taken = self.payload.len().min(HEAD_MAX - 2);
        head[at..at + taken].copy_from_slice(&self.payload[..taken]);
        if let Some(vp8) = self.vp8 {
            vp8.apply(&mut head[at..at + taken]);
        }
        (head, at + taken, taken)
    }
}

/// The header fields of a packet Relais sends.
#[derive(Debug, Clone, Copy)]
struct RtpFields {
    pt: u8,
    marker: bool,
    /// Extended: the rollover counter in the upper bits.
    seq: u64,
    timestamp: u32,
    ssrc: u32,
    /// The video orientation extension's negotiated ID and the value.
    orientation: Option<(u8, u8)>,
}

impl RtpFields {
    /// The fields of `copy`, its rotation written with the extension ID the
    /// subscriber negotiated (none negotiated: the receiver cannot read it).
    fn of(copy: &ForwardedCopy, orientation_id: Option<u8>) -> Self {
        RtpFields {
            pt: *copy.pt,
            marker: copy.marker,
            seq: copy.seq,
            timestamp: copy.timestamp,
            ssrc: *copy.ssrc,
            orientation: orientation_id.zip(copy.video_orientation.map(|o| o as u8)),
        }
    }
}

/// Send the session's copies marked direct (and each stream's sender report
/// when one is due), written into `out` in place; the others stay queued for
/// str0m. A session whose keys or route went away (never, in practice) gives
/// them to str0m instead.
pub(crate) fn send_direct(session: &mut PeerSession, out: &mut Outgoing) {
    let Some(direct) = session.direct.as_deref_mut() else {
        return;
    };
    if !session.unwritten.iter().any(|c| c.direct) {
        return;
    }
    let (Some(keys), Some(route)) = (direct.keys.get(), direct.route) else {
        session.unwritten.iter_mut().for_each(|c| c.direct = false);
        return;
    };
    let (streams, epoch, rtc) = (&mut direct.streams, direct.epoch, &mut session.rtc);
    session.unwritten.retain(|copy| {
        if !copy.direct {
            return true;
        }
        // Registered with its first copy, here rather than where copies are
        // made: a stream's state is then touched once per copy, when it
        // leaves. Video streams keep what they send, for NACKs.
        let stream = streams.entry(copy.ssrc).or_insert_with(|| {
            let mut stream = DirectStream::new(*copy.ssrc, copy.clock_rate, copy.wallclock);
            stream.history = copy.nackable.then(|| {
                Box::new(SendHistory::new(
                    VideoSend::negotiated(rtc, copy.ssrc, copy.pt),
                    copy.ssrc,
                ))
            });
            stream
        });
        let mut history = stream.history.as_deref_mut();
        let packet = RtpPacket {
            header: RtpFields::of(copy, history.as_ref().and_then(|h| h.orientation_id)),
            osn: None,
            payload: &copy.payload,
            vp8: copy.vp8,
        };
        out.write(route, packet.max_len(), |buf| keys.seal_rtp(&packet, buf));
        if let Some(history) = history.as_mut() {
            history.keep(copy);
        }
        let report = stream.sent(
            copy.timestamp,
            copy.wallclock,
            copy.payload.len(),
            copy.wallclock,
            epoch,
        );
        if let Some(mut report) = report {
            keys.protect_rtcp(&mut report);
            out.push(route.0, route.1, route.2, &report);
        }
        false
    });
}

/// Read what [`send_direct`] reads first of a session's direct egress state —
/// its box, its keys and the stream of its first copy — ahead of sending:
/// in a pass over many sessions these reads do not wait on one another, so
/// their cache misses overlap, where the sends would take them one by one.
pub(crate) fn warm(session: &PeerSession) {
    let Some(direct) = session.direct.as_deref() else {
        return;
    };
    let Some(first) = session.unwritten.first() else {
        return;
    };
    let keys = direct.keys.get().is_some();
    let stream = direct
        .streams
        .get(&first.ssrc)
        .map(|s| (s.packets, s.history.as_deref().map(|h| h.last_seq)));
    std::hint::black_box((keys, stream));
}

/// What Relais sends a publisher session on what it receives — the
/// congestion feedback ([`crate::twcc`]), and with direct ingress the NACKs
/// and receiver reports ([`crate::ingress`]) — when due, protected and sent;
/// dropped while the session has no keys or route yet.
pub(crate) fn send_feedback(session: &mut PeerSession, now: Instant, out: &mut Outgoing) {
    let Some(direct) = session.direct.as_deref_mut() else {
        return;
    };
    // A subscriber session has neither: its keys' slot, a cache line of its
    // own, is left untouched (a miss per session and drive in a large room).
    if direct.feedback.is_none() && direct.ingress.is_none() {
        return;
    }
    let (keys, route) = (direct.rtcp_keys.get(), direct.route);
    let mut send = |packet: &mut Vec<u8>| {
        if let (Some(keys), Some(route)) = (keys, route) {
            keys.protect(packet);
            out.push(route.0, route.1, route.2, packet);
        }
    };
    if let Some(feedback) = direct.feedback.as_mut() {
        while let Some(packet) = feedback.poll_feedback(now) {
            send(packet);
        }
    }
    if let Some(ingress) = direct.ingress.as_deref_mut() {
        ingress.poll_rtcp(now, send);
    }
}

/// A due session's feedback and direct copies sent; true if that was all it
/// was due for (nothing queued for str0m, str0m's own deadline not reached),
/// so that str0m is not driven at all — its deadline restored as the
/// session's.
pub(crate) fn send_direct_only(
    session: &mut PeerSession,
    now: Instant,
    out: &mut Outgoing,
) -> bool {
    send_feedback(session, now, out);
    send_direct(session, out);
    let Some(direct) = session.direct.as_deref() else {
        return false;
    };
    if !session.unwritten.is_empty() || direct.str0m_due <= now {
        return false;
    }
    session.frame_wait = None;
    session.deadline = session.next_due(direct.str0m_due, now);
    true
}

/// Answer a subscriber's NACK for a stream Relais sends itself: each lost
/// packet of `ssrc` still kept goes out again, on the stream's RTX SSRC if
/// it has one (str0m, which never saw these packets, could not). `layer`
/// gives the kept packets of each layer of the track the stream forwards.
/// Returns how many were sent.
pub(crate) fn resend<'a>(
    session: &mut PeerSession,
    ssrc: Ssrc,
    lost: impl IntoIterator<Item = u16>,
    layer: impl Fn(u8) -> Option<&'a TrackHistory>,
    now: Instant,
    out: &mut Outgoing,
) -> u64 {
    let Some(direct) = session.direct.as_deref_mut() else {
        return 0;
    };
    let (Some(keys), Some(route)) = (direct.keys.get(), direct.route) else {
        return 0;
    };
    let Some(history) = direct
        .streams
        .get_mut(&ssrc)
        .and_then(|s| s.history.as_deref_mut())
    else {
        return 0;
    };
    let mut sent = 0;
    for seq in lost {
        if let Some(packet) = history.repair(seq, &layer, now) {
            out.write(route, packet.max_len(), |buf| keys.seal_rtp(&packet, buf));
            sent += 1;
        }
    }
    sent
}

/// What a directly sent video stream needs from the subscriber's
/// negotiation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct VideoSend {
    pub repair: Repair,
    /// The ID of the video orientation header extension, if negotiated.
    pub orientation_id: Option<u8>,
}

impl VideoSend {
    /// What the subscriber's video stream `ssrc` needs from its negotiation:
    /// how it repairs a loss (on its RTX SSRC with the payload type
    /// negotiated to resend `pt`, when it has both) and the video orientation
    /// extension's ID.
    fn negotiated(rtc: &mut Rtc, ssrc: Ssrc, pt: Pt) -> Self {
        let rtx_pt = rtc
            .codec_config()
            .params()
            .iter()
            .find(|p| p.pt() == pt)
            .and_then(|p| p.resend());
        let (rtx_ssrc, mid) = match rtc.direct_api().stream_tx(&ssrc) {
            Some(tx) => (tx.rtx(), Some(tx.mid())),
            None => (None, None),
        };
        let orientation_id = mid
            .and_then(|mid| rtc.media(mid))
            .and_then(|m| m.remote_extmap().id_of(Extension::VideoOrientation));
        let repair = match (rtx_ssrc, rtx_pt) {
            (Some(ssrc), Some(pt)) => Repair::Rtx { ssrc, pt },
            _ => Repair::Resend,
        };
        VideoSend {
            repair,
            orientation_id,
        }
    }
}

/// How a directly sent video stream repairs a loss (from the subscriber's
/// negotiated codecs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Repair {
    /// On the stream's RTX SSRC with the RTX payload type (RFC 4588).
    Rtx { ssrc: Ssrc, pt: Pt },
    /// The same packet again (no RTX negotiated).
    Resend,
}

/// Packets kept for NACKs, per published video layer and per subscriber
/// stream: about 1–3 s of a camera's video, past any loss a receiver still
/// asks for.
const HISTORY: usize = 256;
/// Packets an audio layer keeps: none is asked for again, but their buffers
/// serve the next packets ([`Payload::take`]) once their copies have left —
/// in the round they came in, unless a session falls this far behind.
const AUDIO_KEPT: usize = 8;
/// A packet asked for again within this long is not sent again: one loss is
/// often in several NACKs of a burst.
const RESEND_GAP: Duration = Duration::from_millis(10);

/// The last packets a published layer received, by its sequence number
/// (video: [`HISTORY`] of them): kept once for every subscriber, so that a
/// copy sent costs its subscriber no reference to the payload and no
/// payload-sized slot. A subscriber never keeps a packet its layer no
/// longer has: it is sent a subset of the layer's packets, so its last
/// [`HISTORY`] come from about the layer's last [`HISTORY`]. A slot's
/// buffer is reused by the packet that takes the slot next.
pub(crate) struct TrackHistory {
    /// Empty until the layer's first packet is kept.
    slots: Vec<Option<Received>>,
    size: usize,
}

struct Received {
    source: SourcePacket,
    payload: Payload,
    /// The video orientation extension's value the packet came with.
    orientation: Option<u8>,
}

impl TrackHistory {
    pub(crate) fn new(kind: MediaKind) -> Self {
        let size = match kind {
            MediaKind::Video => HISTORY,
            MediaKind::Audio => AUDIO_KEPT,
        };
        TrackHistory {
            slots: Vec::new(),
            size,
        }
    }

    /// The payload of the packet `seq`, opened into `opened`, as the layer
    /// keeps it; `opened` is left holding the buffer of the packet whose
    /// slot it takes, if no copy still holds it ([`Payload::take`]). The
    /// slot stays empty until the packet is kept.
    pub(crate) fn buffer(&mut self, seq: u64, opened: &mut Vec<u8>) -> Payload {
        let old = self
            .slots
            .get_mut(seq as usize % self.size)
            .and_then(Option::take);
        Payload::take(old.map(|r| r.payload), opened)
    }

    pub(crate) fn keep(
        &mut self,
        source: SourcePacket,
        payload: Payload,
        orientation: Option<VideoOrientation>,
    ) {
        if self.slots.is_empty() {
            self.slots.resize_with(self.size, || None);
        }
        self.slots[source.seq as usize % self.size] = Some(Received {
            source,
            payload,
            orientation: orientation.map(|o| o as u8),
        });
    }

    fn get(&self, seq: u64) -> Option<&Received> {
        self.slots
            .get(seq as usize % self.size)?
            .as_ref()
            .filter(|r| r.source.seq == seq)
    }
}

/// The published packet a copy was made from, as its layer received it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SourcePacket {
    pub layer: u8,
    /// Extended, on its layer.
    pub seq: u64,
    pub timestamp: u32,
    pub marker: bool,
    /// Its VP8 descriptor, if it is VP8.
    pub vp8: Option<Vp8Header>,
}

/// How a subscriber's copies were made from their published packets, for
/// as long as that does not change: the forwarder moves sequence numbers,
/// timestamps and VP8 picture ids by offsets it changes only on a layer
/// switch or a skipped packet (and a late packet goes out with the offsets
/// of its time). A copy whose mapping is its stream's last
/// costs its [`SendHistory`] 4 bytes; a NACKed packet is rebuilt from its
/// layer's [`TrackHistory`] through the mapping it was sent with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mapping {
    layer: u8,
    pt: u8,
    seq: u64,
    timestamp: u32,
    marker_flipped: bool,
    /// VP8 descriptor offsets (`None`: the payload is sent as received).
    vp8: Option<(u16, u8)>,
}

impl Mapping {
    /// The mapping `copy` was made with; `None` if no mapping rebuilds it
    /// (a VP8 rewrite of a descriptor that does not parse: never, as the
    /// forwarder makes them).
    fn of(copy: &ForwardedCopy) -> Option<Self> {
        let source = copy.source;
        let mut mapping = Mapping {
            layer: source.layer,
            pt: *copy.pt,
            seq: copy.seq.wrapping_sub(source.seq),
            timestamp: copy.timestamp.wrapping_sub(source.timestamp),
            marker_flipped: copy.marker != source.marker,
            vp8: None,
        };
        let Some(sent) = copy.vp8 else {
            return Some(mapping);
        };
        let received = source.vp8?;
        let offset = |to: Option<u16>, from: Option<u16>| match (to, from) {
            (Some(to), Some(from)) => to.wrapping_sub(from),
            _ => 0,
        };
        let tl0 = |t: Option<u8>| t.map(u16::from);
        mapping.vp8 = Some((
            offset(sent.picture_id, received.picture_id),
            offset(tl0(sent.tl0_pic_idx), tl0(received.tl0_pic_idx)) as u8,
        ));
        (mapping.vp8_rewrite(received) == Some(sent)).then_some(mapping)
    }

    /// The VP8 rewrite of a copy of a packet whose descriptor is `received`.
    fn vp8_rewrite(&self, received: Vp8Header) -> Option<Vp8Rewrite> {
        let (picture_id, tl0_pic_idx) = self.vp8?;
        let mask = if received.picture_id_15bit {
            0x7fff
        } else {
            0x7f
        };
        Some(Vp8Rewrite {
            picture_id: received
                .picture_id
                .map(|id| id.wrapping_add(picture_id) & mask),
            tl0_pic_idx: received.tl0_pic_idx.map(|t| t.wrapping_add(tl0_pic_idx)),
        })
    }
}

/// A sent packet's entry: the low bits of its sequence number and its
/// mapping's number (never 0, so that an empty slot costs no more room).
#[derive(Clone, Copy)]
struct Sent {
    seq: u16,
    mapping: NonZeroU16,
}

/// How a directly sent video stream sent its last [`HISTORY`] packets — each
/// through one of its last mappings, the payloads its track's
/// ([`TrackHistory`]) — and what the stream's packets need from the
/// negotiation.
pub(crate) struct SendHistory {
    slots: [Option<Sent>; HISTORY],
    /// The mappings the slots refer to, oldest first, numbered up to
    /// `current`; at most one per slot, so no more are kept.
    mappings: VecDeque<(NonZeroU16, Option<Mapping>)>,
    current: (NonZeroU16, Option<Mapping>),
    /// The first and the highest sequence number sent (extended).
    first_seq: u64,
    last_seq: u64,
    ssrc: u32,
    repair: Repair,
    orientation_id: Option<u8>,
    /// The RTX stream's next sequence number (extended).
    rtx_seq: u64,
    /// Packets sent again lately, not to be sent again within [`RESEND_GAP`].
    resent: VecDeque<(u64, Instant)>,
}

impl SendHistory {
    pub(crate) fn new(video: VideoSend, ssrc: Ssrc) -> Self {
        SendHistory {
            slots: [None; HISTORY],
            mappings: VecDeque::new(),
            current: (NonZeroU16::MIN, None),
            first_seq: u64::MAX,
            last_seq: 0,
            ssrc: *ssrc,
            repair: video.repair,
            orientation_id: video.orientation_id,
            // RFC 4588 §4 wants a random start; this one is ours alone.
            rtx_seq: u64::from(rand::random::<u16>()),
            resent: VecDeque::new(),
        }
    }

    fn keep(&mut self, copy: &ForwardedCopy) {
        let mapping = Mapping::of(copy);
        if self.mappings.is_empty() || mapping != self.current.1 {
            let number = self.current.0.checked_add(1).unwrap_or(NonZeroU16::MIN);
            self.current = (number, mapping);
            if self.mappings.len() == HISTORY {
                self.mappings.pop_front();
            }
            self.mappings.push_back(self.current);
        }
        self.slots[copy.seq as usize % HISTORY] = Some(Sent {
            seq: copy.seq as u16,
            mapping: self.current.0,
        });
        self.first_seq = self.first_seq.min(copy.seq);
        self.last_seq = self.last_seq.max(copy.seq);
    }

    /// The packet that repairs the loss of `seq`, rebuilt from its layer's
    /// payload (`layer`); `None` if it is no longer kept or was just sent
    /// again.
    fn repair<'a>(
        &mut self,
        seq: u16,
        layer: impl Fn(u8) -> Option<&'a TrackHistory>,
        now: Instant,
    ) -> Option<RtpPacket<'a>> {
        let behind = u64::from((self.last_seq as u16).wrapping_sub(seq));
        let extended = self.last_seq.checked_sub(behind)?;
        if behind >= HISTORY as u64 || extended < self.first_seq {
            return None;
        }
        let sent = self.slots[extended as usize % HISTORY].filter(|s| s.seq == seq)?;
        let (_, mapping) = self.mappings.iter().find(|(n, _)| *n == sent.mapping)?;
        let mapping = (*mapping)?;
        let received = layer(mapping.layer)?.get(extended.wrapping_sub(mapping.seq))?;
        let vp8 = match mapping.vp8 {
            Some(_) => Some(mapping.vp8_rewrite(received.source.vp8?)?),
            None => None,
        };
        self.resent
            .retain(|(_, at)| now.saturating_duration_since(*at) < RESEND_GAP);
        if self.resent.iter().any(|(s, _)| *s == extended) {
            return None;
        }
        self.resent.push_back((extended, now));
        let fields = RtpFields {
            pt: mapping.pt,
            marker: received.source.marker != mapping.marker_flipped,
            seq: extended,
            timestamp: received.source.timestamp.wrapping_add(mapping.timestamp),
            ssrc: self.ssrc,
            orientation: self.orientation_id.zip(received.orientation),
        };
        let (header, osn) = match self.repair {
            Repair::Rtx { ssrc, pt } => {
                let rtx = RtpFields {
                    pt: *pt,
                    seq: self.rtx_seq,
                    ssrc: *ssrc,
                    ..fields
                };
                self.rtx_seq += 1;
                (rtx, Some(seq))
            }
            Repair::Resend => (fields, None),
        };
        Some(RtpPacket {
            header,
            osn,
            payload: &received.payload,
            vp8,
        })
    }
}

/// How often each directly sent stream reports (RFC 3550's 5 s minimum is
/// for a session's whole bandwidth; receivers want one a second or so for
/// lip sync, as str0m's audio default).
pub(crate) const SENDER_REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// What a directly sent stream's sender report needs.
pub(crate) struct DirectStream {
    pub ssrc: u32,
    pub clock_rate: u32,
    pub packets: u32,
    pub octets: u32,
    /// The last packet's RTP timestamp and the instant it stands for.
    pub last_rtp: (u32, Instant),
    pub next_report: Instant,
    /// Video: what was sent, for NACKs.
    pub history: Option<Box<SendHistory>>,
    /// What the subscriber said of the stream ([`crate::subscriber_rtcp`]).
    pub downstream: Downstream,
}

/// What a subscriber reported on a stream Relais sends it, and how much of
/// that the stream's last statistics sample counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Downstream {
    /// From its last receiver report: packets lost (cumulative), jitter (in
    /// the stream's clock units), the round trip.
    pub packets_lost: u64,
    pub jitter: u32,
    pub rtt: Option<Duration>,
    /// Its NACKs on the stream.
    pub nacks: u64,
    /// Packets sent, packets lost and NACKs at the last sample.
    sampled: (u32, u64, u64),
}

impl Downstream {
    /// What happened since the last sample, given the packets sent so far:
    /// packets sent, packets lost, NACKs.
    pub(crate) fn take_sample(&mut self, sent: u32) -> (u64, u64, u64) {
        let (sent_before, lost_before, nacks_before) = self.sampled;
        self.sampled = (sent, self.packets_lost, self.nacks);
        (
            u64::from(sent.wrapping_sub(sent_before)),
            self.packets_lost.saturating_sub(lost_before),
            self.nacks - nacks_before,
        )
    }
}

impl DirectStream {
    pub(crate) fn new(ssrc: u32, clock_rate: u32, now: Instant) -> Self {
        DirectStream {
            ssrc,
            clock_rate,
            packets: 0,
            octets: 0,
            last_rtp: (0, now),
            next_report: now,
            history: None,
            downstream: Downstream::default(),
        }
    }

    /// The SSRC the stream repairs losses on, if not its own.
    pub(crate) fn repair_ssrc(&self) -> Option<u32> {
        match self.history.as_deref()?.repair {
            Repair::Rtx { ssrc, .. } => Some(*ssrc),
            Repair::Resend => None,
        }
    }

    /// Count a sent packet; a sender report if one is due.
    pub(crate) fn sent(
        &mut self,
        timestamp: u32,
        wallclock: Instant,
        payload_len: usize,
        now: Instant,
        epoch: (Instant, SystemTime),
    ) -> Option<Vec<u8>> {
        self.packets = self.packets.wrapping_add(1);
        self.octets = self.octets.wrapping_add(payload_len as u32);
        self.last_rtp = (timestamp, wallclock);
        if now < self.next_report {
            return None;
        }
        self.next_report = now + SENDER_REPORT_INTERVAL;
        Some(self.sender_report(now, epoch))
    }

    /// An RTCP SR (RFC 3550 §6.4.1) for `now`, no report blocks.
    fn sender_report(&self, now: Instant, epoch: (Instant, SystemTime)) -> Vec<u8> {
        let (rtp, at) = self.last_rtp;
        let ahead = now.saturating_duration_since(at).as_secs_f64();
        let rtp_now = rtp.wrapping_add((ahead * f64::from(self.clock_rate)) as u32);
        let ntp = ntp_at(now, epoch);
        let mut sr = Vec::with_capacity(28 + 4 + TAG_LEN);
        sr.extend_from_slice(&[0x80, 200, 0, 6]);
        sr.extend_from_slice(&self.ssrc.to_be_bytes());
        sr.extend_from_slice(&ntp.to_be_bytes());
        sr.extend_from_slice(&rtp_now.to_be_bytes());
        sr.extend_from_slice(&self.packets.to_be_bytes());
        sr.extend_from_slice(&self.octets.to_be_bytes());
        sr
    }
}

/// The NTP time of `now` on the core's clock, given `epoch`: that clock at
/// one wall-clock time.
pub(crate) fn ntp_at(now: Instant, epoch: (Instant, SystemTime)) -> u64 {
    ntp_time(epoch.1 + now.saturating_duration_since(epoch.0))
}

/// The round trip an echoed time gives (RFC 3550 §6.4.1, RFC 3611 §4.5):
/// now, less the time Relais sent (`echoed`, the middle 32 bits of its NTP
/// time), less how long the peer held it (`held`, in 1/65536 s). `None` if
/// that is negative (a clock step, a forged echo) or over 10 s.
pub(crate) fn round_trip(ntp_now: u64, echoed: u32, held: u32) -> Option<Duration> {
    let now = (ntp_now >> 16) as u32;
    let units = now.wrapping_sub(echoed).wrapping_sub(held);
    // Negative reads as huge.
    (units < 65_536 * 10).then(|| Duration::from_micros(u64::from(units) * 1_000_000 / 65_536))
}

/// A wall-clock time as a 64-bit NTP timestamp (seconds since 1900, 32.32).
pub(crate) fn ntp_time(wall: SystemTime) -> u64 {
    const UNIX_TO_NTP: u64 = 2_208_988_800;
    let since = wall
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs() + UNIX_TO_NTP;
    let frac = (u64::from(since.subsec_nanos()) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_aead_profiles_and_whole_material_give_a_sender() {
        let material = [7u8; 2 * (32 + SALT_LEN)];
        assert!(
            SrtpSender::from_keying_material(&material, SrtpProfile::AEAD_AES_256_GCM, true)
                .is_some()
        );
        assert!(SrtpSender::from_keying_material(
            &material[..10],
            SrtpProfile::AEAD_AES_256_GCM,
            true
        )
        .is_none());
        assert!(
            SrtpSender::from_keying_material(&[7u8; 60], SrtpProfile::AES128_CM_SHA1_80, true)
                .is_none()
        );
    }

    #[test]
    fn sender_reports_come_once_a_second_with_the_counts() {
        let t0 = Instant::now();
        let epoch = (t0, SystemTime::UNIX_EPOCH + Duration::from_secs(1_000));
        let mut stream = DirectStream::new(0x1234, 48_000, t0);
        let first = stream
            .sent(960, t0, 80, t0, epoch)
            .expect("first packet reports");
        assert_eq!(&first[..8], &[0x80, 200, 0, 6, 0, 0, 0x12, 0x34]);
        assert_eq!(
            u32::from_be_bytes(first[8..12].try_into().unwrap()),
            2_208_989_800
        );
        let later = t0 + Duration::from_millis(20);
        assert!(stream.sent(1_920, later, 80, later, epoch).is_none());
        let due = t0 + Duration::from_millis(1_010);
        let sr = stream.sent(49_440, due, 80, due + Duration::from_millis(10), epoch);
        let sr = sr.expect("a second later");
        // RTP time of the report: the last packet's plus 10 ms at 48 kHz.
        assert_eq!(u32::from_be_bytes(sr[16..20].try_into().unwrap()), 49_920);
        assert_eq!(u32::from_be_bytes(sr[20..24].try_into().unwrap()), 3);
        assert_eq!(u32::from_be_bytes(sr[24..28].try_into().unwrap()), 240);
    }

    /// A VP8 payload: descriptor with a 15-bit picture id and TL0PICIDX,
    /// then `body`.
    fn vp8_payload(picture_id: u16, tl0: u8, body: u8) -> Payload {
        let id = (0x8000 | picture_id).to_be_bytes();
        Payload::Read(vec![0x90, 0xc0, id[0], id[1], tl0, body, body].into())
    }

    fn copy_of(source: SourcePacket, payload: &Payload, seq: u64, ts: u32) -> ForwardedCopy {
        let received = source.vp8.unwrap();
        ForwardedCopy {
            ssrc: 1000.into(),
            pt: 96.into(),
            seq,
            timestamp: ts,
            wallclock: Instant::now(),
            marker: source.marker,
            nackable: true,
            audio_level: None,
            voice_activity: None,
            video_orientation: None,
            payload: payload.clone(),
            clock_rate: 90_000,
            source,
            vp8: Some(Vp8Rewrite {
                picture_id: received.picture_id.map(|p| p.wrapping_add(7) & 0x7fff),
                tl0_pic_idx: received.tl0_pic_idx.map(|t| t.wrapping_add(3)),
            }),
            direct: true,
        }
    }

    /// Parse a repair sent on the stream itself: (seq, timestamp, marker,
    /// payload).
    fn parsed(packet: &[u8]) -> (u16, u32, bool, Vec<u8>) {
        (
            u16::from_be_bytes([packet[2], packet[3]]),
            u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]),
            packet[1] & 0x80 != 0,
            packet[RTP_HEADER_LEN..].to_vec(),
        )
    }

    /// `packet` as it is before it is protected.
    fn clear(packet: &RtpPacket) -> Vec<u8> {
        let mut buf = vec![0; packet.max_len()];
        let header_len = packet.write_header(&mut buf);
        buf.truncate(header_len);
        if let Some(osn) = packet.osn {
            buf.extend_from_slice(&osn.to_be_bytes());
        }
        let at = buf.len();
        buf.extend_from_slice(packet.payload);
        if let Some(vp8) = packet.vp8 {
            vp8.apply(&mut buf[at..]);
        }
        buf
    }

    /// A repair as it is before it is protected, and its rollover counter.
    fn repaired<'a>(
        history: &mut SendHistory,
        seq: u16,
        layer: impl Fn(u8) -> Option<&'a TrackHistory>,
        now: Instant,
    ) -> Option<(Vec<u8>, u32)> {
        let packet = history.repair(seq, layer, now)?;
        Some((clear(&packet), (packet.header.seq >> 16) as u32))
    }

    #[test]
    fn a_sealed_packet_opens_to_the_packet_as_sent() {
        let material = [7u8; 2 * (16 + SALT_LEN)];
        let sender =
            SrtpSender::from_keying_material(&material, SrtpProfile::AEAD_AES_128_GCM, true)
                .unwrap();
        let long: Vec<u8> = (0..200u8).collect();
        let vp8 = vp8_payload(300, 9, 0x55);
        let rewrite = Vp8Rewrite {
            picture_id: Some(1234),
            tl0_pic_idx: Some(77),
        };
        let header = RtpFields {
            pt: 96,
            marker: true,
            seq: (3 << 16) | 65_000,
            timestamp: 0x0102_0304,
            ssrc: 0xdead_beef,
            orientation: None,
        };
        let rotated = RtpFields {
            orientation: Some((4, 2)),
            ..header
        };
        let packets = [
            (header, None, &long[..], None),
            (header, None, &vp8[..], Some(rewrite)),
            (rotated, Some(41_000), &vp8[..], Some(rewrite)),
            (rotated, Some(41_000), &long[..], None),
            (header, None, &long[..5], None),
            (header, None, &long[..16], None),
            (header, None, &long[..17], None),
        ];
        for (header, osn, payload, vp8) in packets {
            let packet = RtpPacket {
                header,
                osn,
                payload,
                vp8,
            };
            let mut buf = vec![0xaa; packet.max_len() + 3];
            let len = sender.seal_rtp(&packet, &mut buf);
            let clear = clear(&packet);
            assert_eq!(len, clear.len() + TAG_LEN);
            let header_len = if header.orientation.is_some() { 20 } else { 12 };
            assert_eq!(buf[..header_len], clear[..header_len]);
            let mut iv = [0u8; SALT_LEN];
            iv[2..6].copy_from_slice(&header.ssrc.to_be_bytes());
            iv[6..10].copy_from_slice(&3u32.to_be_bytes());
            iv[10..12].copy_from_slice(&65_000u16.to_be_bytes());
            let (aad, sealed) = buf[..len].split_at_mut(header_len);
            let opened = sender
                .rtp
                .open_in_place(nonce(iv, &sender.rtp_salt), Aad::from(&aad[..]), sealed)
                .expect("opens with the session's key");
            assert_eq!(opened, &clear[header_len..], "{packet:?}");
        }
        // The VP8 descriptor went out rewritten, the rest as received.
        let expected = {
            let mut p = vp8.to_vec();
            rewrite.apply(&mut p);
            p
        };
        let packet = RtpPacket {
            header,
            osn: Some(41_000),
            payload: &vp8,
            vp8: Some(rewrite),
        };
        assert_eq!(clear(&packet)[12..14], 41_000u16.to_be_bytes());
        assert_eq!(clear(&packet)[14..], expected[..]);
        assert_ne!(expected[..], vp8[..]);
    }

    #[test]
    fn a_repair_is_the_packet_as_sent_across_switches_skips_and_late_packets() {
        let video = VideoSend {
            repair: Repair::Resend,
            orientation_id: None,
        };
        let mut history = SendHistory::new(video, 1000.into());
        let mut layers = [
            TrackHistory::new(MediaKind::Video),
            TrackHistory::new(MediaKind::Video),
        ];
        let mut sent = Vec::new();
        let mut send = |layers: &mut [TrackHistory; 2],
                        layer: u8,
                        seq: u64,
                        out_seq: u64,
                        ts_offset: u32,
                        history: &mut SendHistory| {
            let payload = vp8_payload(
                (seq as u16).wrapping_mul(2) + u16::from(layer),
                seq as u8,
                seq as u8,
            );
            let source = SourcePacket {
                layer,
                seq,
                timestamp: seq as u32 * 3000 + u32::from(layer),
                marker: seq.is_multiple_of(3),
                vp8: Vp8Header::parse(&payload),
            };
            layers[usize::from(layer)].keep(source, payload.clone(), None);
            let out_ts = source.timestamp.wrapping_add(ts_offset);
            let copy = copy_of(source, &payload, out_seq, out_ts);
            let mut expected = payload.to_vec();
            copy.vp8.unwrap().apply(&mut expected);
            history.keep(&copy);
            sent.push((out_seq as u16, out_ts, copy.marker, expected));
        };
        // Layer 0 from 65,530 (out 10 ...), across the 16-bit wrap; 65,534 is
        // skipped (later ones move down by one); 65,533 arrives late, after
        // 65,535; then a switch to layer 1.
        for (seq, out) in [(65_530, 10), (65_531, 11), (65_532, 12), (65_535, 14)] {
            send(&mut layers, 0, seq, out, 500, &mut history);
        }
        send(&mut layers, 0, 65_533, 13, 500, &mut history);
        for (seq, out) in [(65_536, 15), (65_537, 16)] {
            send(&mut layers, 0, seq, out, 500, &mut history);
        }
        for (seq, out) in [(900, 17), (901, 18)] {
            send(&mut layers, 1, seq, out, 7_000, &mut history);
        }
        // A mapping each time the offsets changed: the skip, the late packet
        // and back, the switch.
        assert_eq!(history.mappings.len(), 5);
        let layer = |i: u8| layers.get(usize::from(i));
        let now = Instant::now();
        for (seq, ts, marker, payload) in &sent {
            let (packet, roc) = repaired(&mut history, *seq, layer, now).expect("kept");
            assert_eq!(roc, 0);
            assert_eq!(
                parsed(&packet),
                (*seq, *ts, *marker, payload.clone()),
                "seq {seq}"
            );
        }
        // Asked again at once: not sent twice; later: sent again.
        assert!(repaired(&mut history, 12, layer, now).is_none());
        assert!(repaired(&mut history, 12, layer, now + RESEND_GAP).is_some());
        // Never sent, or no longer kept by the layer.
        assert!(repaired(&mut history, 19, layer, now).is_none());
        assert!(repaired(&mut history, 9, layer, now).is_none());
        let payload = vp8_payload(1, 1, 1);
        let source = SourcePacket {
            layer: 1,
            seq: 900 + HISTORY as u64,
            timestamp: 0,
            marker: false,
            vp8: Vp8Header::parse(&payload),
        };
        layers[1].keep(source, payload, None);
        let layer = |i: u8| layers.get(usize::from(i));
        assert!(repaired(&mut history, 17, layer, now + RESEND_GAP).is_none());
        assert!(repaired(&mut history, 18, layer, now + RESEND_GAP).is_some());
    }

    #[test]
    fn a_copy_whose_mapping_stays_costs_no_new_mapping() {
        let video = VideoSend {
            repair: Repair::Resend,
            orientation_id: None,
        };
        let mut history = SendHistory::new(video, 1000.into());
        for seq in 0..1000u64 {
            let payload = vp8_payload(seq as u16, seq as u8, 0);
            let source = SourcePacket {
                layer: 0,
                seq: 50 + seq,
                timestamp: seq as u32 * 3000,
                marker: false,
                vp8: Vp8Header::parse(&payload),
            };
            history.keep(&copy_of(source, &payload, seq, source.timestamp + 11));
        }
        assert_eq!(history.mappings.len(), 1);
    }
}
