//! Direct ingress: what a publisher sends, opened and read by Relais itself.
//!
//! str0m's receive path for one RTP packet — SRTP, its stream tables, its
//! registers, the event — touches more cache lines than any other part of a
//! forwarded packet's path (docs/benchmarks-journal.md, "the cache lines a packet
//! touches from a cold start"), and at light load every packet pays them
//! cold. So once str0m has shown Relais a publisher's stream (its SSRC,
//! m-line, layer and codec: the first packet still goes through str0m),
//! Relais opens that stream's packets itself with the keys the peer sends
//! with (AEAD AES-GCM, RFC 7714; a session that negotiated AES-CM keeps
//! str0m's path) and hands them to the forwarding without str0m.
//!
//! Once str0m has also unwrapped a retransmission of the stream (RFC 4588,
//! on its RTX SSRC), Relais reads that repair stream too: a packet it
//! already has — libwebrtc probes its bandwidth by sending media again on
//! the RTX stream, tens a second — is dropped once opened, without str0m;
//! one it lacks is forwarded as the packet it repairs.
//!
//! What str0m did with those packets Relais now does, for every packet of
//! the stream whichever path it came by: the replay and duplicate
//! check, the extended sequence number (the rollover counter), losses and
//! jitter ([`ReceiveRegister`]), the NACKs that ask the publisher for what
//! was lost, and the receiver reports it reads its uplink's loss and round
//! trip from — sent on the session with its SRTCP keys like the congestion
//! feedback ([`crate::twcc`]). str0m's sessions for publishers send neither
//! (NACKs suppressed per stream, reports at an interval that never comes).

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use aws_lc_rs::aead::{Aad, LessSafeKey};
use str0m::crypto::dtls::SrtpProfile;
use str0m::rtp::rtcp::{ExtendedReport, ReportBlock as XrBlock};
use str0m::rtp::VideoOrientation;

use crate::config::STATS_INTERVAL;
use crate::egress::{ntp_at, round_trip};
use crate::payload;
use crate::receive_register::{
    write_nack, write_receiver_report, write_reference_time, ReceiveRegister,
};
use crate::rtp_header::RtpHeader;
use crate::srtcp::{self, nonce, SALT_LEN};
use crate::HashMap;

/// Where a publisher session's SRTP receiving keys land once its DTLS
/// handshake is done.
pub(crate) type OpenSlot = Arc<OnceLock<SrtpReceiver>>;

/// How often a publisher session gets Relais's receiver report on the
/// streams it reads itself (str0m's interval for video).
pub(crate) const RECEIVER_REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// Most report blocks one receiver report holds (five bits of count).
const MAX_REPORT_BLOCKS: usize = 31;
/// Most pairs one generic NACK holds: any more str0m-based peers (the load
/// generator) leave unread; libwebrtc reads all.
const MAX_NACK_PAIRS: usize = 31;

const TAG_LEN: usize = 16;

/// The keys a peer protects its RTP with (AES-GCM).
pub(crate) struct SrtpReceiver {
    rtp: LessSafeKey,
    salt: [u8; SALT_LEN],
}

impl SrtpReceiver {
    /// The keys of the peer's direction: the DTLS client's if `peer_is_client`.
    pub(crate) fn from_keying_material(
        material: &[u8],
        profile: SrtpProfile,
        peer_is_client: bool,
    ) -> Option<Self> {
        let (rtp, salt, _) = srtcp::gcm_keys(material, profile, peer_is_client)?;
        Some(SrtpReceiver { rtp, salt })
    }

    /// Open the packet of `header` with the extended number `index`: its
    /// payload, padding removed, into `out` (replacing what it held). False
    /// if it does not authenticate.
    fn open(&self, header: &RtpHeader, index: u64, out: &mut Vec<u8>) -> bool {
        let body = header.body();
        let Some(split) = body.len().checked_sub(TAG_LEN) else {
            return false;
        };
        let (ciphertext, tag) = body.split_at(split);
        // Every byte is written by the decryption.
        payload::fit(out, ciphertext.len());
        // RFC 7714 §8.1: 00 00 || SSRC || ROC || SEQ, XOR the salt.
        let mut iv = [0u8; SALT_LEN];
        iv[2..6].copy_from_slice(&header.ssrc().to_be_bytes());
        iv[6..10].copy_from_slice(&((index >> 16) as u32).to_be_bytes());
        iv[10..12].copy_from_slice(&(index as u16).to_be_bytes());
        if self
            .rtp
            .open_separate_gather(
                nonce(iv, &self.salt),
                Aad::from(header.bytes()),
                ciphertext,
                tag,
                out,
            )
            .is_err()
        {
            return false;
        }
        if header.padding() {
            // RFC 3550 §5.1: the last byte counts the padding, itself included.
            let pad = out.last().map_or(0, |&n| usize::from(n));
            if pad == 0 || pad > out.len() {
                return false;
            }
            out.truncate(out.len() - pad);
        }
        true
    }
}

impl RepairStream {
    /// Open a packet of this repair stream: RFC 4588 §4, the original
    /// sequence number, then the original payload. A packet the repaired
    /// stream already has (a bandwidth probe), or padding alone, is
    /// consumed; one it lacks is opened as that stream's packet, its payload
    /// in `payload`.
    fn receive(
        &mut self,
        streams: &mut HashMap<u32, IngressStream>,
        keys: &SrtpReceiver,
        header: &RtpHeader,
        now: Instant,
        payload: &mut Vec<u8>,
    ) -> Receipt {
        let index = self.register.extend(header.seq());
        if !self.register.is_new(index) {
            return Receipt::Consumed;
        }
        if !keys.open(header, index, payload) {
            return Receipt::Refused;
        }
        self.register.record(index, header.timestamp(), now);
        let (Some(stream), &[high, low, ..]) = (streams.get_mut(&self.repaired), &payload[..])
        else {
            return Receipt::Consumed;
        };
        let seq = stream.register.extend(u16::from_be_bytes([high, low]));
        if !stream.register.is_new(seq) {
            return Receipt::Consumed;
        }
        stream.register.record(seq, header.timestamp(), now);
        payload.drain(..2);
        Receipt::Opened(Opened {
            ssrc: self.repaired,
            seq,
            timestamp: header.timestamp(),
            marker: header.marker(),
            size: header.len() + payload.len(),
            audio_level: None,
            voice_activity: None,
            video_orientation: stream.orientation(header),
        })
    }
}

/// One stream a publisher sends that Relais reads itself.
pub(crate) struct IngressStream {
    pub register: ReceiveRegister,
    /// The negotiated header extension ids Relais reads.
    pub audio_level_id: Option<u8>,
    pub orientation_id: Option<u8>,
    /// The middle 32 bits of the NTP time of the source's last sender
    /// report, and when it came (for the report blocks' LSR and DLSR).
    pub last_sender_report: Option<(u32, Instant)>,
    /// Sequence numbers asked for again since the room last sampled it.
    pub nacked: u64,
    /// Its repair stream is read by Relais too ([`Ingress::repairs`]).
    pub repairs_read: bool,
}

/// A publisher's repair (RTX) stream that Relais reads.
pub(crate) struct RepairStream {
    /// The SSRC of the stream it repairs.
    pub repaired: u32,
    /// Its own numbers: the SRTP index and the replay check.
    register: ReceiveRegister,
}

impl RepairStream {
    pub(crate) fn new(repaired: u32) -> Self {
        RepairStream {
            repaired,
            register: ReceiveRegister::new(90_000),
        }
    }
}

impl IngressStream {
    pub(crate) fn new(
        clock_rate: u32,
        audio_level_id: Option<u8>,
        orientation_id: Option<u8>,
    ) -> Self {
        IngressStream {
            register: ReceiveRegister::new(clock_rate),
            audio_level_id,
            orientation_id,
            last_sender_report: None,
            nacked: 0,
            repairs_read: false,
        }
    }

    /// The video orientation a packet of the stream carries.
    fn orientation(&self, header: &RtpHeader) -> Option<VideoOrientation> {
        let value = self
            .orientation_id
            .and_then(|id| header.extension(id))
            .and_then(|v| v.first().copied())?;
        // RFC 7742 / 3GPP TS 26.114: the rotation in the low two bits.
        Some(VideoOrientation::from(value & 3))
    }
}

/// A publisher's packet that Relais opened, as the room forwards it.
pub(crate) struct Opened {
    pub ssrc: u32,
    /// Extended past 16 bits ([`ReceiveRegister::extend`]).
    pub seq: u64,
    pub timestamp: u32,
    pub marker: bool,
    /// Header and payload (without SRTP's tag), for the byte counts.
    pub size: usize,
    pub audio_level: Option<i8>,
    pub voice_activity: Option<bool>,
    pub video_orientation: Option<VideoOrientation>,
}

/// What became of a datagram offered to the direct ingress.
pub(crate) enum Receipt {
    /// Not a packet of a stream Relais reads (or no keys yet): str0m's.
    NotDirect,
    /// Read, nothing to forward: a duplicate, or padding alone.
    Consumed,
    /// It did not authenticate.
    Refused,
    Opened(Opened),
}

/// A publisher session's direct ingress.
pub(crate) struct Ingress {
    pub keys: OpenSlot,
    /// By SSRC.
    pub streams: HashMap<u32, IngressStream>,
    /// The repair streams of `streams` Relais reads, by their SSRC.
    pub repairs: HashMap<u32, RepairStream>,
    /// The SSRC Relais's reports and NACKs on the session are sent from.
    sender_ssrc: u32,
    next_report: Instant,
    /// When the room next samples the streams' statistics.
    pub next_sample: Instant,
    /// NACK pairs being written (kept).
    pairs: Vec<(u16, u16)>,
    /// The core's clock at one wall-clock time (the reports' NTP times).
    epoch: (Instant, SystemTime),
    /// The round trip to the publisher, from its answers to the reference
    /// times sent with the reports.
    pub rtt: Option<Duration>,
}

impl Ingress {
    pub(crate) fn new(now: Instant, epoch: (Instant, SystemTime)) -> Self {
        Ingress {
            keys: OpenSlot::default(),
            streams: HashMap::default(),
            repairs: HashMap::default(),
            sender_ssrc: rand::random(),
            next_report: now + RECEIVER_REPORT_INTERVAL,
            next_sample: now + STATS_INTERVAL,
            pairs: Vec::new(),
            epoch,
            rtt: None,
        }
    }

    /// Open `datagram` if it is RTP of a stream Relais reads, its payload
    /// into `payload` (replacing what it held).
    pub(crate) fn receive(
        &mut self,
        datagram: &[u8],
        now: Instant,
        payload: &mut Vec<u8>,
    ) -> Receipt {
        let Some(header) = RtpHeader::parse(datagram) else {
            return Receipt::NotDirect;
        };
        let ssrc = header.ssrc();
        let Some(keys) = self.keys.get() else {
            return Receipt::NotDirect;
        };
        let Some(stream) = self.streams.get_mut(&ssrc) else {
            return match self.repairs.get_mut(&ssrc) {
                Some(repair) => repair.receive(&mut self.streams, keys, &header, now, payload),
                None => Receipt::NotDirect,
            };
        };
        let seq = stream.register.extend(header.seq());
        if !stream.register.is_new(seq) {
            return Receipt::Consumed;
        }
        if !keys.open(&header, seq, payload) {
            return Receipt::Refused;
        }
        stream.register.record(seq, header.timestamp(), now);
        if payload.is_empty() {
            return Receipt::Consumed;
        }
        let level = stream
            .audio_level_id
            .and_then(|id| header.extension(id))
            .and_then(|v| v.first().copied());
        Receipt::Opened(Opened {
            ssrc,
            seq,
            timestamp: header.timestamp(),
            marker: header.marker(),
            size: header.len() + payload.len(),
            // As str0m reads them (RFC 6464: −dBov, and the V flag).
            audio_level: level.map(|v| -((v & 0x7f) as i8)),
            voice_activity: level.map(|v| v & 0x80 != 0),
            video_orientation: stream.orientation(&header),
        })
    }

    /// When the session next has NACKs or a report to send.
    pub(crate) fn due(&self) -> Option<Instant> {
        if self.streams.is_empty() {
            return None;
        }
        let nacks = self
            .streams
            .values()
            .filter_map(|s| s.register.next_nack())
            .min();
        Some(nacks.map_or(self.next_report, |n| n.min(self.next_report)))
    }

    /// The RTCP due at `now`, each packet plain (to be protected) and handed
    /// to `send`: NACKs for what is missing, and every
    /// [`RECEIVER_REPORT_INTERVAL`] a receiver report on every stream.
    pub(crate) fn poll_rtcp(&mut self, now: Instant, mut send: impl FnMut(&mut Vec<u8>)) {
        let mut packet = Vec::new();
        for (&ssrc, stream) in &mut self.streams {
            if stream.register.next_nack().is_none_or(|at| at > now) {
                continue;
            }
            self.pairs.clear();
            stream.nacked += u64::from(stream.register.poll_nacks(now, &mut self.pairs));
            for pairs in self.pairs.chunks(MAX_NACK_PAIRS) {
                packet.clear();
                write_nack(self.sender_ssrc, ssrc, pairs, &mut packet);
                send(&mut packet);
            }
        }
        if now < self.next_report {
            return;
        }
        self.next_report = now + RECEIVER_REPORT_INTERVAL;
        let mut blocks = Vec::with_capacity(self.streams.len().min(MAX_REPORT_BLOCKS));
        for (&ssrc, stream) in &mut self.streams {
            let Some(block) = stream.register.report() else {
                continue;
            };
            let (lsr, dlsr) = match stream.last_sender_report {
                // DLSR counts 1/65536 s.
                Some((lsr, at)) => (
                    lsr,
                    (now.saturating_duration_since(at).as_micros() * 65_536 / 1_000_000) as u32,
                ),
                None => (0, 0),
            };
            blocks.push((ssrc, block, lsr, dlsr));
        }
        for blocks in blocks.chunks(MAX_REPORT_BLOCKS) {
            packet.clear();
            write_receiver_report(self.sender_ssrc, blocks, &mut packet);
            // In the same compound: the time, for the round trip
            // (`on_extended_report`).
            write_reference_time(self.sender_ssrc, ntp_at(now, self.epoch), &mut packet);
            send(&mut packet);
        }
    }

    /// A publisher's extended report: its answer to a reference time Relais
    /// sent (RFC 3611 §4.5) gives the round trip — now, less when Relais
    /// sent it, less how long the publisher held it (1/65536 s units, the
    /// middle 32 bits of NTP times).
    pub(crate) fn on_extended_report(&mut self, report: &ExtendedReport, now: Instant) {
        let mut answers = report.blocks.iter().flat_map(|block| match block {
            XrBlock::Dlrr(dlrr) => dlrr.items.as_slice(),
            XrBlock::Rrtr(_) => &[],
        });
        let Some(item) =
            answers.rfind(|item| *item.ssrc == self.sender_ssrc && item.last_rr_time != 0)
        else {
            return;
        };
        let rtt = round_trip(
            ntp_at(now, self.epoch),
            item.last_rr_time,
            item.last_rr_delay,
        );
        if rtt.is_some() {
            self.rtt = rtt;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use str0m::rtp::rtcp::Rtcp;

    use crate::egress::{RtpPacket, SrtpSender};

    /// Keys for both ends from one keying material: what the DTLS client
    /// seals, the server opens with the client's keys.
    fn keys() -> (SrtpSender, SrtpReceiver) {
        let material: Vec<u8> = (0..2 * (16 + SALT_LEN) as u8).collect();
        let profile = SrtpProfile::AEAD_AES_128_GCM;
        let sender = SrtpSender::from_keying_material(&material, profile, true).unwrap();
        let receiver = SrtpReceiver::from_keying_material(&material, profile, true).unwrap();
        (sender, receiver)
    }

    #[test]
    fn opens_what_the_peer_sealed_and_refuses_tampering() {
        let (sender, receiver) = keys();
        let payload = b"a frame's worth of payload".to_vec();
        for seq in [7u64, 0x3_0005] {
            let packet = RtpPacket::for_test(seq, 0x1234, None, &payload);
            let mut buf = vec![0u8; packet.max_len()];
            let len = sender.seal_rtp(&packet, &mut buf);
            let header = RtpHeader::parse(&buf[..len]).unwrap();
            let mut out = Vec::new();
            assert!(receiver.open(&header, seq, &mut out));
            assert_eq!(out, payload);
            // The wrong rollover counter gives the wrong nonce.
            assert!(!receiver.open(&header, seq ^ 0x1_0000, &mut out));
            buf[len - 1] ^= 1;
            let header = RtpHeader::parse(&buf[..len]).unwrap();
            assert!(!receiver.open(&header, seq, &mut out));
        }
    }

    #[test]
    fn one_buffer_holds_each_packet_exactly_whatever_came_before() {
        let (sender, receiver) = keys();
        // Long, short, then long again into the same buffer: nothing of a
        // longer packet is left behind a shorter one, nor of a refused one.
        let mut out = Vec::new();
        for (seq, len) in [(1u64, 1_100), (2, 80), (3, 0), (4, 1_200), (5, 3)] {
            let payload: Vec<u8> = (0..len).map(|i| (i as u8) ^ (seq as u8)).collect();
            let packet = RtpPacket::for_test(seq, 0x1234, None, &payload);
            let mut buf = vec![0u8; packet.max_len()];
            let sealed = sender.seal_rtp(&packet, &mut buf);
            let header = RtpHeader::parse(&buf[..sealed]).unwrap();
            assert!(!receiver.open(&header, seq + 1, &mut out), "wrong nonce");
            assert!(receiver.open(&header, seq, &mut out));
            assert_eq!(out, payload, "packet {seq}");
        }
    }

    #[test]
    fn the_other_direction_does_not_open() {
        let (sender, _) = keys();
        let material: Vec<u8> = (0..2 * (16 + SALT_LEN) as u8).collect();
        let server =
            SrtpReceiver::from_keying_material(&material, SrtpProfile::AEAD_AES_128_GCM, false)
                .unwrap();
        let packet = RtpPacket::for_test(1, 9, None, b"x");
        let mut buf = vec![0u8; packet.max_len()];
        let len = sender.seal_rtp(&packet, &mut buf);
        let header = RtpHeader::parse(&buf[..len]).unwrap();
        assert!(!server.open(&header, 1, &mut Vec::new()));
    }

    fn sealed(sender: &SrtpSender, seq: u64, ssrc: u32, orientation: Option<(u8, u8)>) -> Vec<u8> {
        let packet = RtpPacket::for_test(seq, ssrc, orientation, b"frame");
        let mut buf = vec![0u8; packet.max_len()];
        let len = sender.seal_rtp(&packet, &mut buf);
        buf.truncate(len);
        buf
    }

    #[test]
    fn only_known_streams_are_read_and_each_packet_once() {
        let (sender, receiver) = keys();
        let now = Instant::now();
        let mut ingress = Ingress::new(now, (now, SystemTime::now()));
        let mut payload = Vec::new();
        let first = sealed(&sender, 100, 7, Some((3, 1)));
        // No keys yet, then an unknown stream: str0m's.
        ingress
            .streams
            .insert(7, IngressStream::new(90_000, None, Some(3)));
        assert!(matches!(
            ingress.receive(&first, now, &mut payload),
            Receipt::NotDirect
        ));
        let _ = ingress.keys.set(receiver);
        let other = sealed(&sender, 1, 8, None);
        assert!(matches!(
            ingress.receive(&other, now, &mut payload),
            Receipt::NotDirect
        ));

        let Receipt::Opened(opened) = ingress.receive(&first, now, &mut payload) else {
            panic!("opened");
        };
        assert_eq!((opened.ssrc, opened.seq), (7, 100));
        assert_eq!(payload, b"frame");
        assert_eq!(opened.size, first.len() - TAG_LEN);
        assert_eq!(opened.video_orientation, Some(VideoOrientation::Deg270));
        assert_eq!(opened.audio_level, None);
        // A replay is consumed, a forgery refused and not counted.
        assert!(matches!(
            ingress.receive(&first, now, &mut payload),
            Receipt::Consumed
        ));
        let mut forged = sealed(&sender, 103, 7, None);
        let last = forged.len() - 1;
        forged[last] ^= 0x40;
        assert!(matches!(
            ingress.receive(&forged, now, &mut payload),
            Receipt::Refused
        ));
        // 101 and 102 (and the forged 103) are missing; 104 says so.
        assert!(matches!(
            ingress.receive(&sealed(&sender, 104, 7, None), now, &mut payload),
            Receipt::Opened(_)
        ));
        let mut sent = Vec::new();
        ingress.poll_rtcp(now, |p| sent.push(p.clone()));
        assert_eq!(sent.len(), 1, "one NACK, no report yet");
        let nack = &sent[0];
        assert_eq!((nack[0] & 0x1f, nack[1]), (1, 205));
        // PID 101, BLP: 102 and 103.
        assert_eq!(&nack[12..16], &[0, 101, 0, 0b11]);
        assert_eq!(ingress.streams[&7].nacked, 3);
        // Past a second: the report, the NACKs given up on.
        sent.clear();
        let later = now + RECEIVER_REPORT_INTERVAL + Duration::from_millis(1);
        ingress.poll_rtcp(later, |p| sent.push(p.clone()));
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0][1], 201, "a receiver report");
        assert_eq!(&sent[0][8..12], &7u32.to_be_bytes(), "on stream 7");
        // Then, in the same compound, the reference time (one RR block: 32 bytes).
        assert_eq!((sent[0].len(), sent[0][33], sent[0][40]), (32 + 20, 207, 4));
    }

    #[test]
    fn a_repair_stream_drops_what_it_repeats_and_forwards_what_was_missing() {
        let (sender, receiver) = keys();
        let now = Instant::now();
        let mut ingress = Ingress::new(now, (now, SystemTime::now()));
        let _ = ingress.keys.set(receiver);
        ingress
            .streams
            .insert(7, IngressStream::new(90_000, None, None));
        ingress.repairs.insert(9, RepairStream::new(7));
        let mut payload = Vec::new();
        let repair = |seq: u64, original: u16, body: &[u8]| {
            let body = [&original.to_be_bytes()[..], body].concat();
            let packet = RtpPacket::for_test(seq, 9, None, &body);
            let mut buf = vec![0u8; packet.max_len()];
            let len = sender.seal_rtp(&packet, &mut buf);
            buf.truncate(len);
            buf
        };
        for seq in [100, 101, 103] {
            let got = ingress.receive(&sealed(&sender, seq, 7, None), now, &mut payload);
            assert!(matches!(got, Receipt::Opened(_)), "{seq}");
        }
        // 100 sent again (a bandwidth probe): dropped, and its replay too.
        let probe = repair(500, 100, b"frame");
        for _ in 0..2 {
            assert!(matches!(
                ingress.receive(&probe, now, &mut payload),
                Receipt::Consumed
            ));
        }
        // 102, which was lost: forwarded as stream 7's packet 102, once.
        let late = repair(501, 102, b"late");
        let Receipt::Opened(opened) = ingress.receive(&late, now, &mut payload) else {
            panic!("the repair of 102 opened");
        };
        assert_eq!((opened.ssrc, opened.seq), (7, 102));
        assert_eq!(payload, b"late");
        assert!(matches!(
            ingress.receive(&repair(502, 102, b"late"), now, &mut payload),
            Receipt::Consumed
        ));
        // Padding alone, and a forgery.
        let empty = RtpPacket::for_test(503, 9, None, b"");
        let mut buf = vec![0u8; empty.max_len()];
        let len = sender.seal_rtp(&empty, &mut buf);
        assert!(matches!(
            ingress.receive(&buf[..len], now, &mut payload),
            Receipt::Consumed
        ));
        let mut forged = repair(504, 104, b"x");
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert!(matches!(
            ingress.receive(&forged, now, &mut payload),
            Receipt::Refused
        ));
        assert!(ingress.streams[&7].register.is_new(104), "not counted");
    }

    #[test]
    fn the_publishers_answer_to_a_reference_time_gives_the_round_trip() {
        let t0 = Instant::now();
        let epoch = (t0, SystemTime::now());
        let mut ingress = Ingress::new(t0, epoch);
        let sent_at = t0 + Duration::from_secs(3);
        let lrr = (ntp_at(sent_at, epoch) >> 16) as u32;
        // Held 100 ms by the publisher, back 150 ms after it left: an XR
        // with one DLRR block (RFC 3611 §4.5), as str0m reads it.
        let answer = |ssrc: u32| {
            let mut xr = vec![0x80, 207, 0, 5, 0, 0, 0, 99, 5, 0, 0, 3];
            xr.extend_from_slice(&ssrc.to_be_bytes());
            xr.extend_from_slice(&lrr.to_be_bytes());
            xr.extend_from_slice(&(65_536u32 / 10).to_be_bytes());
            match Rtcp::try_from(&xr[..]) {
                Ok(Rtcp::ExtendedReport(report)) => report,
                other => panic!("an extended report: {other:?}"),
            }
        };
        let back = sent_at + Duration::from_millis(150);
        ingress.on_extended_report(&answer(ingress.sender_ssrc ^ 1), back);
        assert_eq!(ingress.rtt, None, "an answer to someone else's time");
        ingress.on_extended_report(&answer(ingress.sender_ssrc), back);
        let rtt = ingress.rtt.expect("measured").as_secs_f64();
        assert!((rtt - 0.050).abs() < 0.001, "{rtt}");
    }

    #[test]
    fn garbage_and_mangled_packets_are_refused_without_harm() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let (sender, receiver) = keys();
        let now = Instant::now();
        let mut ingress = Ingress::new(now, (now, SystemTime::now()));
        let mut payload = Vec::new();
        ingress
            .streams
            .insert(7, IngressStream::new(48_000, Some(1), Some(3)));
        let _ = ingress.keys.set(receiver);
        let mut opened = 0;
        for i in 0..20_000u64 {
            let mut datagram = if i % 2 == 0 {
                // Anything at all, a third of it with the stream's SSRC.
                let len = rng.random_range(0..80);
                let mut d: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                if i % 3 == 0 && d.len() >= 12 {
                    d[0] = 0x80 | (d[0] & 0x3f);
                    d[8..12].copy_from_slice(&7u32.to_be_bytes());
                }
                d
            } else {
                // A real packet with one byte changed, or cut short.
                let mut d = sealed(&sender, i, 7, Some((3, 2)));
                let at = rng.random_range(0..d.len());
                if i % 4 == 1 {
                    d[at] ^= rng.random_range(1..=255u8);
                } else {
                    d.truncate(at);
                }
                d
            };
            if let Receipt::Opened(_) = ingress.receive(&datagram, now, &mut payload) {
                opened += 1;
            }
            datagram.clear();
        }
        // The tag covers the header too: no change gets through.
        assert_eq!(opened, 0);
        // The stream still opens what is real.
        let real = sealed(&sender, 50_000, 7, None);
        assert!(matches!(
            ingress.receive(&real, now, &mut payload),
            Receipt::Opened(_)
        ));
    }
}
