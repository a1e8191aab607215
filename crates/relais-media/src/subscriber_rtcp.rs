//! A subscriber's RTCP on the streams Relais sends it, read by Relais itself.
//!
//! A libwebrtc subscriber sends about seven compound reports a second —
//! receiver reports with REMB, and its NACKs and PLIs as they come — and
//! str0m spent some 12,900 instructions on each: opening it, parsing it into
//! its fixed-size lists, raising events, and a whole drive of the session
//! (docs/benchmarks-journal.md, forty-first session). On a stream Relais
//! sends itself ([`crate::egress`]) str0m can do nothing with them anyway:
//! it never saw the packets. So Relais opens such a report with the
//! subscriber's SRTCP keys and acts on it: a NACK is answered from Relais's
//! own history, a PLI or FIR asks the publisher for a keyframe, and a report
//! block's loss, jitter and round trip feed the stream's statistics and the
//! participant's connection quality, and a receiver reference time is
//! answered at once (RFC 3611 §4.5), as str0m would, so that the subscriber
//! learns its own round trip.
//!
//! A compound packet is read here only if Relais understands every packet in
//! it and every stream it names is one Relais sends; anything else goes to
//! str0m whole, as it came (a sender report, an extended report with
//! blocks other than a reference time). Read and ignored: source descriptions, BYE,
//! REMB and transport-wide feedback (str0m ignores the last two too, its
//! bandwidth estimation being off). The SRTCP index of what Relais reads is
//! checked against a replay window per sender, since str0m's never sees it.

use std::time::Duration;

use str0m::media::KeyframeRequestKind;

use crate::receive_register::{
    BT_RECEIVER_REFERENCE_TIME, FMT_GENERIC_NACK as GENERIC_NACK,
    PT_EXTENDED_REPORT as EXTENDED_REPORT, PT_RECEIVER_REPORT as RECEIVER_REPORT,
    PT_TRANSPORT_FEEDBACK as TRANSPORT_FEEDBACK,
};
use crate::srtcp::{SrtcpKeys, SOURCE_DESCRIPTION};

/// RTCP packet types (RFC 3550 §12.1, RFC 4585 §6.1) besides those of
/// [`crate::receive_register`] and [`crate::srtcp`].
const GOODBYE: u8 = 203;
const PAYLOAD_FEEDBACK: u8 = 206;
/// RFC 3550's range of RTCP packet types a datagram may start with (RFC
/// 5761 §4: what is not RTP on a shared port).
const FIRST_RTCP_TYPE: u8 = 192;
const LAST_RTCP_TYPE: u8 = 223;
/// Feedback formats: RFC 4585 §6.3.1 (PLI), RFC 5104 §4.3.1 (FIR), 15 for
/// both transport-wide feedback and REMB.
const PICTURE_LOSS: u8 = 1;
const FULL_INTRA_REQUEST: u8 = 4;
const TRANSPORT_WIDE_OR_REMB: u8 = 15;

const HEADER_LEN: usize = 8;
const REPORT_BLOCK_LEN: usize = 24;
/// A receiver reference time block: its header and a 64-bit NTP time.
const REFERENCE_TIME_BLOCK_LEN: usize = 12;
/// A FIR entry: SSRC, sequence number, three reserved bytes.
const FIR_ENTRY_LEN: usize = 8;
/// Senders whose indexes are tracked at once (the Python SDK's subscriber
/// used two).
const MAX_SENDERS: usize = 4;

/// Whether `datagram` is RTCP (or SRTCP) by its first two bytes, which are
/// in the clear.
pub(crate) fn is_rtcp(datagram: &[u8]) -> bool {
    datagram.len() >= HEADER_LEN
        && datagram[0] >> 6 == 2
        && (FIRST_RTCP_TYPE..=LAST_RTCP_TYPE).contains(&datagram[1])
}

/// What Relais makes of a subscriber's SRTCP datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Opened into the caller's buffer and Relais's to act on: walk it with
    /// [`for_each`]. str0m does not see it.
    Read,
    /// Opened, and its index seen before: dropped.
    Replayed,
    /// Not Relais's to read (it does not open, names a stream Relais does
    /// not send, or holds a packet Relais does not know): for str0m.
    Pass,
}

/// One thing a subscriber's report says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Feedback<'a> {
    /// A report block on a stream (RFC 3550 §6.4.1).
    Report(ReportBlock),
    /// Packets of `ssrc` lost: the generic NACK's entries, four bytes each
    /// (see [`nack_entries`]).
    Nack { ssrc: u32, entries: &'a [u8] },
    KeyframeRequest {
        ssrc: u32,
        kind: KeyframeRequestKind,
    },
    /// The subscriber `ssrc`'s clock (an NTP time) for Relais to echo, so
    /// that it learns its round trip (RFC 3611 §4.4).
    ReferenceTime { ssrc: u32, ntp: u64 },
}

/// What a receiver report block says about one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReportBlock {
    pub ssrc: u32,
    /// Cumulative packets lost (24 bits, signed: duplicates can make it
    /// negative).
    pub packets_lost: i32,
    /// Interarrival jitter, in the stream's clock units.
    pub jitter: u32,
    /// The middle 32 bits of the last sender report's NTP time, 0 if none.
    pub last_sender_report: u32,
    /// How long the subscriber held that report, in 1/65536 s.
    pub delay_since_last_sender_report: u32,
}

impl ReportBlock {
    fn parse(block: &[u8]) -> Self {
        let word = |at: usize| {
            u32::from_be_bytes([block[at], block[at + 1], block[at + 2], block[at + 3]])
        };
        // The 24-bit count, sign-extended.
        let packets_lost = (i32::from_be_bytes([block[5], block[6], block[7], 0])) >> 8;
        ReportBlock {
            ssrc: word(0),
            packets_lost,
            jitter: word(12),
            last_sender_report: word(16),
            delay_since_last_sender_report: word(20),
        }
    }

    /// The round trip the block gives, with `ntp_now` the NTP time of now on
    /// the clock the sender reports were stamped by; `None` before any.
    pub(crate) fn round_trip(&self, ntp_now: u64) -> Option<Duration> {
        if self.last_sender_report == 0 {
            return None;
        }
        crate::egress::round_trip(
            ntp_now,
            self.last_sender_report,
            self.delay_since_last_sender_report,
        )
    }
}

/// The lost sequence numbers a generic NACK's entries name (RFC 4585
/// §6.2.1): four bytes each, a packet ID and a bitmask of those after it.
pub(crate) fn nack_entries(entries: &[u8]) -> impl Iterator<Item = u16> + '_ {
    entries.chunks_exact(4).flat_map(|entry| {
        lost(
            u16::from_be_bytes([entry[0], entry[1]]),
            u16::from_be_bytes([entry[2], entry[3]]),
        )
    })
}

/// The packet `pid` and those `mask` marks after it: one NACK entry.
pub(crate) fn lost(pid: u16, mask: u16) -> impl Iterator<Item = u16> {
    let after = (0..16u16)
        .filter(move |bit| mask & (1 << bit) != 0)
        .map(move |bit| pid.wrapping_add(bit + 1));
    std::iter::once(pid).chain(after)
}

/// A subscriber session's reading of its reports: the SRTCP indexes seen,
/// per sender.
#[derive(Default)]
pub(crate) struct SubscriberRtcp {
    windows: Vec<(u32, ReplayWindow)>,
}

impl SubscriberRtcp {
    /// Open `datagram` into `plain` (replacing what it held) and say whether
    /// it is Relais's to read: only if every packet in it is one Relais
    /// reads or ignores, and every stream it names is `ours` — asked with
    /// `true` where a repair (RTX) stream will do, as in a report block.
    pub(crate) fn read(
        &mut self,
        keys: &SrtcpKeys,
        datagram: &[u8],
        plain: &mut Vec<u8>,
        ours: impl Fn(u32, bool) -> bool,
    ) -> Verdict {
        if !is_rtcp(datagram) {
            return Verdict::Pass;
        }
        let Some(index) = keys.open(datagram, plain) else {
            return Verdict::Pass;
        };
        if !readable(plain, ours) {
            return Verdict::Pass;
        }
        let sender = u32::from_be_bytes([plain[4], plain[5], plain[6], plain[7]]);
        let window = match self.windows.iter().position(|(s, _)| *s == sender) {
            Some(at) => &mut self.windows[at].1,
            None if self.windows.len() < MAX_SENDERS => {
                self.windows.push((sender, ReplayWindow::default()));
                &mut self.windows.last_mut().expect("just pushed").1
            }
            None => return Verdict::Pass,
        };
        if window.accept(index) {
            Verdict::Read
        } else {
            Verdict::Replayed
        }
    }
}

/// Each packet's type, feedback format (the count field) and bytes, in a
/// compound packet whose lengths [`readable`] checked.
fn packets(plain: &[u8]) -> impl Iterator<Item = (u8, u8, &[u8])> + '_ {
    let mut rest = plain;
    std::iter::from_fn(move || {
        let len = (usize::from(u16::from_be_bytes([*rest.get(2)?, *rest.get(3)?])) + 1) * 4;
        if len > rest.len() {
            return None;
        }
        let (packet, after) = rest.split_at(len);
        rest = after;
        Some((packet[1], packet[0] & 0x1f, packet))
    })
}

fn word(packet: &[u8], at: usize) -> Option<u32> {
    let bytes = packet.get(at..at + 4)?;
    Some(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

/// Whether Relais reads every packet of the compound `plain` (see
/// [`SubscriberRtcp::read`]).
fn readable(plain: &[u8], ours: impl Fn(u32, bool) -> bool) -> bool {
    let mut walked = 0;
    for (kind, format, packet) in packets(plain) {
        walked += packet.len();
        if packet[0] >> 6 != 2 {
            return false;
        }
        let ok = match (kind, format) {
            (RECEIVER_REPORT, count) => {
                let blocks = packet[HEADER_LEN..].chunks_exact(REPORT_BLOCK_LEN);
                packet.len() >= HEADER_LEN + usize::from(count) * REPORT_BLOCK_LEN
                    && blocks
                        .take(usize::from(count))
                        .all(|block| ours(ReportBlock::parse(block).ssrc, true))
            }
            (SOURCE_DESCRIPTION | GOODBYE, _) => true,
            (EXTENDED_REPORT, _) => {
                let blocks = &packet[HEADER_LEN..];
                blocks.len() % REFERENCE_TIME_BLOCK_LEN == 0
                    && blocks
                        .chunks_exact(REFERENCE_TIME_BLOCK_LEN)
                        .all(|block| block[..4] == [BT_RECEIVER_REFERENCE_TIME, 0, 0, 2])
            }
            (TRANSPORT_FEEDBACK | PAYLOAD_FEEDBACK, TRANSPORT_WIDE_OR_REMB) => true,
            (TRANSPORT_FEEDBACK, GENERIC_NACK) | (PAYLOAD_FEEDBACK, PICTURE_LOSS) => {
                word(packet, HEADER_LEN).is_some_and(|media| ours(media, false))
            }
            (PAYLOAD_FEEDBACK, FULL_INTRA_REQUEST) => {
                let entries = packet.get(HEADER_LEN + 4..).unwrap_or_default();
                !entries.is_empty()
                    && entries.len() % FIR_ENTRY_LEN == 0
                    && entries
                        .chunks_exact(FIR_ENTRY_LEN)
                        .all(|entry| word(entry, 0).is_some_and(|ssrc| ours(ssrc, false)))
            }
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    walked > 0 && walked == plain.len()
}

/// What the compound packet `plain`, found readable, says, in order.
pub(crate) fn for_each<'a>(plain: &'a [u8], mut f: impl FnMut(Feedback<'a>)) {
    for (kind, format, packet) in packets(plain) {
        match (kind, format) {
            (RECEIVER_REPORT, count) => packet[HEADER_LEN..]
                .chunks_exact(REPORT_BLOCK_LEN)
                .take(usize::from(count))
                .for_each(|block| f(Feedback::Report(ReportBlock::parse(block)))),
            (EXTENDED_REPORT, _) => packet[HEADER_LEN..]
                .chunks_exact(REFERENCE_TIME_BLOCK_LEN)
                .for_each(|block| {
                    f(Feedback::ReferenceTime {
                        ssrc: word(packet, 4).unwrap_or_default(),
                        ntp: u64::from_be_bytes(block[4..12].try_into().expect("8 bytes")),
                    })
                }),
            (TRANSPORT_FEEDBACK, GENERIC_NACK) => f(Feedback::Nack {
                ssrc: word(packet, HEADER_LEN).unwrap_or_default(),
                entries: packet.get(HEADER_LEN + 4..).unwrap_or_default(),
            }),
            (PAYLOAD_FEEDBACK, PICTURE_LOSS) => f(Feedback::KeyframeRequest {
                ssrc: word(packet, HEADER_LEN).unwrap_or_default(),
                kind: KeyframeRequestKind::Pli,
            }),
            (PAYLOAD_FEEDBACK, FULL_INTRA_REQUEST) => packet[HEADER_LEN + 4..]
                .chunks_exact(FIR_ENTRY_LEN)
                .for_each(|entry| {
                    f(Feedback::KeyframeRequest {
                        ssrc: word(entry, 0).unwrap_or_default(),
                        kind: KeyframeRequestKind::Fir,
                    })
                }),
            _ => {}
        }
    }
}

/// The SRTCP indexes of one sender seen lately (RFC 3711 §3.3.2): the
/// highest and the 63 before it.
#[derive(Default)]
struct ReplayWindow {
    highest: Option<u32>,
    /// Bit `n`: `highest - n` was seen.
    seen: u64,
}

impl ReplayWindow {
    /// Whether `index` is new (and now seen).
    fn accept(&mut self, index: u32) -> bool {
        let Some(highest) = self.highest.filter(|&h| h >= index) else {
            let ahead = self.highest.map_or(u32::MAX, |h| index - h);
            self.seen = self.seen.checked_shl(ahead).unwrap_or(0) | 1;
            self.highest = Some(index);
            return true;
        };
        let bit = 1u64.checked_shl(highest - index).unwrap_or(0);
        let new = bit != 0 && self.seen & bit == 0;
        self.seen |= bit;
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use str0m::crypto::dtls::SrtpProfile;

    use crate::receive_register::write_reference_time;

    const SENDER_REPORT: u8 = 200;

    fn keys() -> SrtcpKeys {
        let material: Vec<u8> = (0..56u8).collect();
        SrtcpKeys::from_keying_material(&material, SrtpProfile::AEAD_AES_128_GCM, true).unwrap()
    }

    /// A receiver report from sender 1 with one block on `ssrc`.
    fn receiver_report(ssrc: u32) -> Vec<u8> {
        let mut p = vec![0x81, RECEIVER_REPORT, 0, 7, 0, 0, 0, 1];
        p.extend_from_slice(&ssrc.to_be_bytes());
        // 10 % lost, 300 in all; highest 1,000; jitter 90; LSR, DLSR.
        p.extend_from_slice(&[25, 0, 0x01, 0x2c]);
        p.extend_from_slice(&1_000u32.to_be_bytes());
        p.extend_from_slice(&90u32.to_be_bytes());
        p.extend_from_slice(&0x1234_5678u32.to_be_bytes());
        p.extend_from_slice(&0x0001_0000u32.to_be_bytes());
        p
    }

    fn feedback(kind: u8, format: u8, media: u32, fci: &[u8]) -> Vec<u8> {
        let words = (HEADER_LEN + 4 + fci.len()) / 4 - 1;
        let mut p = vec![0x80 | format, kind, 0, words as u8, 0, 0, 0, 1];
        p.extend_from_slice(&media.to_be_bytes());
        p.extend_from_slice(fci);
        p
    }

    fn sdes() -> Vec<u8> {
        // One chunk: SSRC 1, CNAME "ab", end, padded to a word.
        vec![0x81, SOURCE_DESCRIPTION, 0, 2, 0, 0, 0, 1, 1, 2, b'a', b'b']
    }

    fn sealed(keys: &SrtcpKeys, plain: &[u8], index: u32) -> Vec<u8> {
        let mut p = plain.to_vec();
        keys.seal(&mut p, index);
        p
    }

    fn collect(plain: &[u8]) -> Vec<Feedback<'_>> {
        let mut got = Vec::new();
        for_each(plain, |f| got.push(f));
        got
    }

    #[test]
    fn a_report_with_feedback_on_our_streams_is_read_once() {
        let keys = keys();
        let mut compound = receiver_report(0xaaaa);
        compound.extend(sdes());
        compound.extend(feedback(
            TRANSPORT_FEEDBACK,
            GENERIC_NACK,
            0xaaaa,
            &[0, 10, 0, 0b101],
        ));
        compound.extend(feedback(PAYLOAD_FEEDBACK, PICTURE_LOSS, 0xaaaa, &[]));
        compound.extend(feedback(
            PAYLOAD_FEEDBACK,
            FULL_INTRA_REQUEST,
            0,
            &[0, 0, 0xaa, 0xaa, 3, 0, 0, 0],
        ));
        compound.extend(feedback(
            PAYLOAD_FEEDBACK,
            TRANSPORT_WIDE_OR_REMB,
            0,
            b"REMB",
        ));
        let mut reference = Vec::new();
        write_reference_time(1, 0x0102_0304_0506_0708, &mut reference);
        compound.extend(reference);
        let datagram = sealed(&keys, &compound, 7);
        let ours = |ssrc: u32, _: bool| ssrc == 0xaaaa;

        let (mut reader, mut plain) = (SubscriberRtcp::default(), Vec::new());
        assert_eq!(
            reader.read(&keys, &datagram, &mut plain, ours),
            Verdict::Read
        );
        assert_eq!(plain, compound);
        let got = collect(&plain);
        assert_eq!(got.len(), 5, "{got:?}");
        assert_eq!(
            got[4],
            Feedback::ReferenceTime {
                ssrc: 1,
                ntp: 0x0102_0304_0506_0708
            }
        );
        let Feedback::Report(block) = got[0] else {
            panic!("{got:?}")
        };
        assert_eq!(
            (block.ssrc, block.packets_lost, block.jitter),
            (0xaaaa, 300, 90)
        );
        let Feedback::Nack { ssrc, entries } = got[1] else {
            panic!("{got:?}")
        };
        assert_eq!(ssrc, 0xaaaa);
        assert_eq!(nack_entries(entries).collect::<Vec<_>>(), vec![10, 11, 13]);
        let kinds = [KeyframeRequestKind::Pli, KeyframeRequestKind::Fir];
        for (f, kind) in got[2..4].iter().zip(kinds) {
            assert_eq!(*f, Feedback::KeyframeRequest { ssrc: 0xaaaa, kind });
        }

        // The same index again is dropped; a later one and one a little
        // earlier, not seen yet, are read.
        assert_eq!(
            reader.read(&keys, &datagram, &mut plain, ours),
            Verdict::Replayed
        );
        let later = sealed(&keys, &compound, 9);
        assert_eq!(reader.read(&keys, &later, &mut plain, ours), Verdict::Read);
        let between = sealed(&keys, &compound, 8);
        assert_eq!(
            reader.read(&keys, &between, &mut plain, ours),
            Verdict::Read
        );
        assert_eq!(
            reader.read(&keys, &between, &mut plain, ours),
            Verdict::Replayed
        );
    }

    #[test]
    fn what_names_another_stream_or_holds_an_unknown_packet_is_for_str0m() {
        let keys = keys();
        let mut reader = SubscriberRtcp::default();
        let mut plain = Vec::new();
        let ours = |ssrc: u32, repair: bool| ssrc == 0xaaaa || repair && ssrc == 0xbbbb;
        // A block on our repair stream is fine; a NACK on it is not ours.
        let report = sealed(&keys, &receiver_report(0xbbbb), 1);
        assert_eq!(reader.read(&keys, &report, &mut plain, ours), Verdict::Read);
        let nack = feedback(TRANSPORT_FEEDBACK, GENERIC_NACK, 0xbbbb, &[0, 1, 0, 0]);
        let cases = [
            receiver_report(0xcccc),
            nack,
            feedback(PAYLOAD_FEEDBACK, PICTURE_LOSS, 0xcccc, &[]),
            // A sender report, an unknown feedback format.
            vec![
                0x80,
                SENDER_REPORT,
                0,
                6,
                0,
                0,
                0,
                1,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
            ],
            // An extended report of another block type (DLRR).
            vec![
                0x80,
                EXTENDED_REPORT,
                0,
                5,
                0,
                0,
                0,
                1,
                5,
                0,
                0,
                3,
                0,
                0,
                0xaa,
                0xaa,
                0,
                0,
                0,
                1,
                0,
                0,
                0,
                0,
            ],
            feedback(TRANSPORT_FEEDBACK, 3, 0xaaaa, &[]),
            // A block count the packet has no room for.
            vec![0x82, RECEIVER_REPORT, 0, 1, 0, 0, 0, 1],
        ];
        for (i, case) in cases.iter().enumerate() {
            let datagram = sealed(&keys, case, 10 + i as u32);
            assert_eq!(
                reader.read(&keys, &datagram, &mut plain, ours),
                Verdict::Pass,
                "case {i}"
            );
        }
        // Lengths that overrun the packet, a tampered packet, RTP.
        let mut overrun = receiver_report(0xaaaa);
        overrun[3] = 9;
        let datagram = sealed(&keys, &overrun, 30);
        assert_eq!(
            reader.read(&keys, &datagram, &mut plain, ours),
            Verdict::Pass
        );
        let mut tampered = sealed(&keys, &receiver_report(0xaaaa), 31);
        tampered[12] ^= 1;
        assert_eq!(
            reader.read(&keys, &tampered, &mut plain, ours),
            Verdict::Pass
        );
        let rtp = [0x80, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
        assert_eq!(reader.read(&keys, &rtp, &mut plain, ours), Verdict::Pass);
    }

    #[test]
    fn the_replay_window_keeps_64_indexes_per_sender() {
        let mut w = ReplayWindow::default();
        assert!(w.accept(100));
        assert!(!w.accept(100));
        assert!(w.accept(37), "63 behind is in the window, not seen");
        assert!(!w.accept(36), "64 behind is out of it");
        assert!(w.accept(300));
        assert!(!w.accept(100), "far behind the highest");
        assert!(w.accept(299));
        assert!(!w.accept(299));
    }

    #[test]
    fn a_block_gives_the_round_trip_from_the_echoed_report() {
        let block = ReportBlock::parse(&receiver_report(1)[HEADER_LEN..]);
        // Sent at middle-32 0x1234_5678, held 1 s, now 1.25 s after sending.
        let now = (u64::from(0x1234_5678u32) + 0x0001_4000) << 16;
        let rtt = block.round_trip(now).unwrap();
        assert_eq!(rtt.as_millis(), 250);
        let none = ReportBlock {
            last_sender_report: 0,
            ..block
        };
        assert_eq!(none.round_trip(now), None);
    }
}
