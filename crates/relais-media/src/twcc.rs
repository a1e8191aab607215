//! Transport-wide congestion feedback on what a publisher sends
//! (draft-holmer-rmcat-transport-wide-cc-extensions-01), sent by Relais.
//!
//! A publisher's congestion control (libwebrtc's, in every LiveKit client)
//! raises its send rate only on this feedback: which of the packets it
//! numbered arrived, and when. The register must see every packet of the
//! session, for a number between two it saw is reported lost — so it is
//! Relais's, not str0m's, and it reads the number from each datagram's RTP
//! header (clear in SRTP) before anything else handles the datagram; a
//! packet that str0m does not see (a direct ingress) is counted all the same.
//! str0m's sessions are built without the extension in their map (str0m then
//! neither reads it nor sends feedback of its own), and the publisher's
//! answer gets the offer's `a=extmap` line for it back
//! ([`answer_with_transport_cc`]).

use std::time::{Duration, Instant};

use crate::rtp_header::{extend_seq, RtpHeader};

/// The header extension's URI.
pub(crate) const TRANSPORT_CC_URI: &str =
    "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01";
/// When feedback goes: LiveKit's cadence, which every LiveKit client's
/// congestion control is used to. It leaves with an arrival — never on a
/// timer of its own, which at light load woke the shard for little else —
/// once more than [`FEEDBACK_MIN_ARRIVALS`] are unreported and
/// [`FEEDBACK_INTERVAL`] has passed since the last feedback, or
/// [`FEEDBACK_INTERVAL_AT_FRAME_END`] if the arrival ends a video frame (its
/// marker bit), or at once past [`FEEDBACK_MAX_ARRIVALS`].
const FEEDBACK_INTERVAL: Duration = Duration::from_millis(100);
const FEEDBACK_INTERVAL_AT_FRAME_END: Duration = Duration::from_millis(50);
const FEEDBACK_MIN_ARRIVALS: usize = 20;
const FEEDBACK_MAX_ARRIVALS: usize = 100;
/// Most numbers one feedback reports: it stays well under an MTU. A longer
/// gap after the last one reported (a client that stalled or restarted) is
/// skipped rather than reported number by number as lost.
const MAX_STATUSES: u64 = 500;
/// Arrivals kept between two feedbacks at most (~80,000 packets a second);
/// more are left out (reported lost) rather than costing memory.
const MAX_PENDING: usize = 4_096;
/// Receive deltas count quarter milliseconds; the reference time 64 ms.
const TICK_MICROS: u128 = 250;
const TICKS_PER_REFERENCE: i64 = 256;

/// A publisher session's feedback state.
pub(crate) struct TransportFeedback {
    ext_id: u8,
    /// The SSRC the feedback is sent from (Relais's own for the session).
    sender_ssrc: u32,
    /// The SSRC of the latest packet (the feedback names one media source).
    media_ssrc: u32,
    /// Arrival times are counted from here.
    epoch: Instant,
    /// Arrivals not yet reported: (extended number, arrival), in arrival order.
    pending: Vec<(u64, Instant)>,
    /// The highest number seen, extended past 16 bits.
    highest: Option<u64>,
    /// The first number the next feedback reports.
    next: Option<u64>,
    /// Feedback packet count (8 bits, wraps).
    count: u8,
    /// When the last feedback went.
    last_sent: Option<Instant>,
    /// When the next feedback is due: set by the arrival that completes one.
    due: Option<Instant>,
    /// The last feedback's statuses, deltas and packet: buffers kept, as the
    /// feedback's rate follows the packets'.
    symbols: Vec<Status>,
    deltas: Vec<u8>,
    packet: Vec<u8>,
}

impl TransportFeedback {
    pub(crate) fn new(ext_id: u8, sender_ssrc: u32, epoch: Instant) -> Self {
        TransportFeedback {
            ext_id,
            sender_ssrc,
            media_ssrc: 0,
            epoch,
            pending: Vec::new(),
            highest: None,
            next: None,
            count: 0,
            last_sent: None,
            due: None,
            symbols: Vec::new(),
            deltas: Vec::new(),
            packet: Vec::new(),
        }
    }

    /// The extension id the publisher numbers its packets with (a
    /// renegotiation may change it).
    pub(crate) fn set_ext_id(&mut self, ext_id: u8) {
        self.ext_id = ext_id;
    }

    /// When the next feedback is due, if any arrival is unreported.
    pub(crate) fn due(&self) -> Option<Instant> {
        self.due
    }

    /// Note a datagram from the publisher: if it is RTP with a transport-wide
    /// number, its arrival, which may make the feedback due now
    /// ([`FEEDBACK_INTERVAL`], [`TransportFeedback::due`]).
    pub(crate) fn record(&mut self, datagram: &[u8], now: Instant) {
        let Some(seq) = transport_seq(datagram, self.ext_id) else {
            return;
        };
        let extended = extend(self.highest, seq);
        self.highest = Some(self.highest.map_or(extended, |h| h.max(extended)));
        self.media_ssrc =
            u32::from_be_bytes([datagram[8], datagram[9], datagram[10], datagram[11]]);
        if self.pending.len() >= MAX_PENDING {
            return;
        }
        self.pending.push((extended, now));
        let held = self.pending.len();
        if self.due.is_some() || held <= FEEDBACK_MIN_ARRIVALS {
            return;
        }
        let since = self
            .last_sent
            .map_or(Duration::MAX, |at| now.saturating_duration_since(at));
        let frame_end = datagram[1] & 0x80 != 0;
        if since >= FEEDBACK_INTERVAL
            || (frame_end && since >= FEEDBACK_INTERVAL_AT_FRAME_END)
            || held > FEEDBACK_MAX_ARRIVALS
        {
            self.due = Some(now);
        }
    }

    /// The feedback due at `now`, as a plain RTCP packet (to be protected in
    /// place); more arrivals than one packet reports leave the rest due at once.
    pub(crate) fn poll_feedback(&mut self, now: Instant) -> Option<&mut Vec<u8>> {
        if self.due.is_none_or(|due| due > now) {
            return None;
        }
        self.due = None;
        self.pending.sort_unstable_by_key(|&(seq, _)| seq);
        self.pending.dedup_by_key(|&mut (seq, _)| seq);
        // Numbers before `next` were reported (as lost): late arrivals stay so.
        let next = self.next.unwrap_or(0);
        let late = self.pending.partition_point(|&(seq, _)| seq < next);
        self.pending.drain(..late);
        let &(first, _) = self.pending.first()?;
        let base = match self.next {
            Some(next) if first - next < MAX_STATUSES => next,
            _ => first,
        };
        let last = base + MAX_STATUSES - 1;
        let reported = self.pending.partition_point(|&(seq, _)| seq <= last);
        let end = self.pending[reported - 1].0;
        self.encode(base, end, reported);
        self.pending.drain(..reported);
        self.next = Some(end + 1);
        self.count = self.count.wrapping_add(1);
        self.last_sent = Some(now);
        if !self.pending.is_empty() {
            self.due = Some(now);
        }
        Some(&mut self.packet)
    }

    /// One feedback packet into `self.packet`: numbers `base..=end`, of which
    /// the first `reported` pending ones (sorted, within the range) arrived.
    fn encode(&mut self, base: u64, end: u64, reported: usize) {
        let received = &self.pending[..reported];
        let (symbols, deltas, out) = (&mut self.symbols, &mut self.deltas, &mut self.packet);
        let statuses = (end - base + 1) as usize;
        let epoch = self.epoch;
        let ticks =
            |at: Instant| (at.saturating_duration_since(epoch).as_micros() / TICK_MICROS) as i64;
        let reference = ticks(received[0].1) / TICKS_PER_REFERENCE;
        // Each delta is from the previous arrival as the receiver will
        // rebuild it, so that a clamped delta does not shift those after it.
        let mut previous = reference * TICKS_PER_REFERENCE;
        symbols.clear();
        symbols.resize(statuses, Status::NotReceived);
        deltas.clear();
        for &(seq, at) in received {
            let delta = (ticks(at) - previous).clamp(i64::from(i16::MIN), i64::from(i16::MAX));
            previous += delta;
            let status = &mut symbols[(seq - base) as usize];
            if let Ok(small) = u8::try_from(delta) {
                *status = Status::SmallDelta;
                deltas.push(small);
            } else {
                *status = Status::LargeDelta;
                deltas.extend_from_slice(&(delta as i16).to_be_bytes());
            }
        }
        out.clear();
        // V=2, FMT=15; PT=205 (transport layer feedback); the length last.
        out.extend_from_slice(&[0x80 | 15, 205, 0, 0]);
        out.extend_from_slice(&self.sender_ssrc.to_be_bytes());
        out.extend_from_slice(&self.media_ssrc.to_be_bytes());
        out.extend_from_slice(&(base as u16).to_be_bytes());
        out.extend_from_slice(&(statuses as u16).to_be_bytes());
        let reference = (reference as u32 & 0x00ff_ffff).to_be_bytes();
        out.extend_from_slice(&[reference[1], reference[2], reference[3], self.count]);
        write_chunks(symbols, out);
        out.extend_from_slice(deltas);
        // Padding to a word, its length in its last byte (RFC 3550 §6.4.1).
        let padding = (4 - out.len() % 4) % 4;
        if padding > 0 {
            out[0] |= 0x20;
            out.resize(out.len() + padding - 1, 0);
            out.push(padding as u8);
        }
        let words = (out.len() / 4 - 1) as u16;
        out[2..4].copy_from_slice(&words.to_be_bytes());
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    NotReceived = 0,
    SmallDelta = 1,
    LargeDelta = 2,
}

/// The packet status chunks: a run of seven or more equal statuses as a run
/// length chunk, otherwise a status vector — of 14 one-bit symbols when
/// none of them needs a large delta, else of 7 two-bit symbols. A last
/// vector may hold symbols past the count; receivers ignore them.
fn write_chunks(symbols: &[Status], out: &mut Vec<u8>) {
    let mut at = 0;
    while at < symbols.len() {
        let status = symbols[at];
        let run = symbols[at..]
            .iter()
            .take(0x1fff)
            .take_while(|&&s| s == status)
            .count();
        let chunk = if run >= 7 {
            at += run;
            ((status as u16) << 13) | run as u16
        } else {
            let window = &symbols[at..symbols.len().min(at + 14)];
            if window.iter().all(|&s| s != Status::LargeDelta) {
                at += window.len();
                window
                    .iter()
                    .enumerate()
                    .fold(0x8000, |chunk, (i, &s)| chunk | (s as u16) << (13 - i))
            } else {
                let window = &symbols[at..symbols.len().min(at + 7)];
                at += window.len();
                window
                    .iter()
                    .enumerate()
                    .fold(0xc000, |chunk, (i, &s)| chunk | (s as u16) << (12 - 2 * i))
            }
        };
        out.extend_from_slice(&chunk.to_be_bytes());
    }
}

/// `seq` extended past 16 bits, next to the highest number seen (the first
/// is placed one cycle up, so that one arriving before it does not wrap
/// below zero).
fn extend(highest: Option<u64>, seq: u16) -> u64 {
    match highest {
        Some(highest) => extend_seq(Some(highest), seq),
        None => 0x1_0000 + u64::from(seq),
    }
}

/// The transport-wide number of an RTP datagram, from its header extension
/// `id` (two bytes).
fn transport_seq(p: &[u8], id: u8) -> Option<u16> {
    let data = RtpHeader::parse(p)?.extension(id)?;
    (data.len() == 2).then(|| u16::from_be_bytes([data[0], data[1]]))
}

/// The offer's id for the transport-wide number, if it offers it.
pub(crate) fn offered_ext_id(offer: &str) -> Option<u8> {
    offer.lines().find_map(|line| {
        let rest = line.trim_end().strip_prefix("a=extmap:")?;
        let (id, uri) = rest.split_once(' ')?;
        let id = id.split('/').next()?;
        (uri.split_whitespace().next()? == TRANSPORT_CC_URI)
            .then(|| id.parse().ok())
            .flatten()
    })
}

/// The answer with the offer's `a=extmap` line for the transport-wide
/// number in each accepted media section whose offer had it (str0m, built
/// without the extension, leaves it out), and `a=rtcp-fb:<pt> transport-cc`
/// for each answered payload type the offer asked it for.
pub(crate) fn answer_with_transport_cc(offer: &str, answer: &str) -> String {
    let Some(id) = offered_ext_id(offer) else {
        return answer.to_string();
    };
    let extmap = format!("a=extmap:{id} {TRANSPORT_CC_URI}");
    let offered = sections(offer);
    let mut out = String::with_capacity(answer.len() + 256);
    for section in split_sections(answer) {
        let lines: Vec<&str> = section.lines().collect();
        let mid = lines.iter().find_map(|l| l.strip_prefix("a=mid:"));
        let rejected = lines
            .first()
            .and_then(|m| m.strip_prefix("m="))
            .is_some_and(|m| m.split_whitespace().nth(1) == Some("0"));
        let offer_section = mid.and_then(|mid| offered.iter().find(|s| s.mid == mid));
        let mut added: Vec<String> = Vec::new();
        if let (Some(offered), false) = (offer_section, rejected) {
            if offered.extmap && !lines.iter().any(|l| l.starts_with(&extmap)) {
                added.push(extmap.clone());
            }
            let formats: Vec<&str> = lines
                .first()
                .and_then(|m| m.strip_prefix("m="))
                .map(|m| m.split_whitespace().skip(3).collect())
                .unwrap_or_default();
            for pt in formats {
                let line = format!("a=rtcp-fb:{pt} transport-cc");
                if offered.feedback.iter().any(|f| f == pt) && !lines.contains(&line.as_str()) {
                    added.push(line);
                }
            }
        }
        for line in lines
            .iter()
            .copied()
            .chain(added.iter().map(String::as_str))
        {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out
}

/// What an offer's media section says about the transport-wide number.
struct OfferedSection {
    mid: String,
    extmap: bool,
    /// Payload types with `a=rtcp-fb:<pt> transport-cc`.
    feedback: Vec<String>,
}

fn sections(sdp: &str) -> Vec<OfferedSection> {
    split_sections(sdp)
        .into_iter()
        .skip(1)
        .filter_map(|section| {
            let mid = section.lines().find_map(|l| l.strip_prefix("a=mid:"))?;
            Some(OfferedSection {
                mid: mid.trim().to_string(),
                extmap: section.lines().any(|l| {
                    l.starts_with("a=extmap:") && l.trim_end().ends_with(TRANSPORT_CC_URI)
                }),
                feedback: section
                    .lines()
                    .filter_map(|l| l.trim_end().strip_prefix("a=rtcp-fb:"))
                    .filter_map(|l| l.strip_suffix(" transport-cc"))
                    .map(str::to_string)
                    .collect(),
            })
        })
        .collect()
}

/// The session part, then each media section, as text.
fn split_sections(sdp: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    for line in sdp.lines() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        if line.starts_with("m=") {
            out.push(String::new());
        }
        let current = out.last_mut().expect("one section at least");
        current.push_str(line);
        current.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use str0m::rtp::rtcp::Rtcp;

    /// An RTP packet numbered `seq` in a one-byte header extension `id`.
    fn numbered(id: u8, seq: u16) -> Vec<u8> {
        let mut p = vec![0x90, 96, 0, 1, 0, 0, 0, 0, 0xca, 0xfe, 0xba, 0xbe];
        p.extend_from_slice(&[0xbe, 0xde, 0, 1, id << 4 | 1]);
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&[0, 0xaa, 0xbb]);
        p
    }

    /// `numbered`, with the marker bit that ends a video frame.
    fn frame_end(id: u8, seq: u16) -> Vec<u8> {
        let mut p = numbered(id, seq);
        p[1] |= 0x80;
        p
    }

    /// Arrivals `seqs`, `gap` apart from `from`; returns the last one's time.
    fn arrive(
        feedback: &mut TransportFeedback,
        seqs: std::ops::Range<u16>,
        from: Instant,
        gap: Duration,
    ) -> Instant {
        let mut at = from;
        for (i, seq) in seqs.enumerate() {
            at = from + gap * i as u32;
            feedback.record(&numbered(3, seq), at);
        }
        at
    }

    /// The feedback as str0m reads it: (number, arrival) for each status.
    fn parse(packet: &[u8], epoch: Instant, near: u64) -> (Vec<(u64, Option<Duration>)>, u8) {
        assert_eq!(packet.len() % 4, 0);
        assert_eq!(
            usize::from(u16::from_be_bytes([packet[2], packet[3]])) * 4 + 4,
            packet.len()
        );
        // str0m's parser wants the padding gone.
        let len = if packet[0] & 0x20 != 0 {
            packet.len() - usize::from(packet[packet.len() - 1])
        } else {
            packet.len()
        };
        let Ok(Rtcp::Twcc(twcc)) = Rtcp::try_from(&packet[..len]) else {
            panic!("not transport-wide feedback: {packet:02x?}");
        };
        let count = twcc.feedback_count;
        let statuses = twcc
            .into_iter(epoch, near.into())
            .map(|(seq, _, at)| (*seq, at.map(|at| at - epoch)))
            .collect();
        (statuses, count)
    }

    #[test]
    fn finds_the_number_in_either_header_extension_form() {
        assert_eq!(transport_seq(&numbered(3, 513), 3), Some(513));
        assert_eq!(transport_seq(&numbered(3, 513), 5), None);
        // Two-byte form (RFC 8285 §4.3), behind another element.
        let mut two = vec![0x90, 96, 0, 1, 0, 0, 0, 0, 1, 2, 3, 4, 0x10, 0x00, 0, 2];
        two.extend_from_slice(&[1, 1, 0x55, 7, 2, 0x12, 0x34, 0]);
        assert_eq!(transport_seq(&two, 7), Some(0x1234));
        // RTCP (a receiver report) on the same port, and a packet without extensions.
        let mut rtcp = numbered(3, 9);
        rtcp[1] = 201;
        assert_eq!(transport_seq(&rtcp, 3), None);
        let mut plain = numbered(3, 9);
        plain[0] = 0x80;
        assert_eq!(transport_seq(&plain, 3), None);
        // Cut short: no panic, no number.
        assert_eq!(transport_seq(&numbered(3, 9)[..15], 3), None);
    }

    #[test]
    fn feedback_reports_arrivals_losses_and_times_as_a_receiver_reads_them() {
        let epoch = Instant::now();
        let ms = Duration::from_millis;
        let mut feedback = TransportFeedback::new(3, 42, epoch);
        let t0 = epoch + ms(1_000);
        // 65534, 65535, then 0 and 1 after the wrap, 2 lost, 3 late (reordered
        // after 4), and 5 a second after the rest (a delta too large for a byte).
        let arrivals = [
            (65534u16, 0u64),
            (65535, 2),
            (0, 3),
            (1, 5),
            (4, 6),
            (3, 7),
            (5, 1_006),
        ];
        for &(seq, at) in &arrivals {
            feedback.record(&numbered(3, seq), t0 + ms(at));
        }
        assert_eq!(feedback.due(), None, "too few arrivals yet");
        assert!(feedback.poll_feedback(t0 + ms(1_010)).is_none());
        // What is reported, and how, does not depend on when it goes.
        feedback.due = Some(t0 + ms(1_010));
        let packet = feedback.poll_feedback(t0 + ms(1_010)).expect("due");
        assert_eq!(packet[4..8], 42u32.to_be_bytes(), "sender SSRC");
        assert_eq!(packet[8..12], 0xcafebabeu32.to_be_bytes(), "media SSRC");
        let (statuses, count) = parse(packet, epoch, 65534);
        assert_eq!(count, 0);
        let seqs: Vec<u16> = statuses.iter().map(|&(seq, _)| seq as u16).collect();
        assert_eq!(seqs, [65534, 65535, 0, 1, 2, 3, 4, 5]);
        let times: Vec<Option<Duration>> = statuses.iter().map(|&(_, at)| at).collect();
        let at = |t: u64| Some(ms(1_000 + t));
        assert_eq!(
            times,
            [at(0), at(2), at(3), at(5), None, at(7), at(6), at(1_006)]
        );
        assert!(
            feedback.poll_feedback(t0 + ms(2_000)).is_none(),
            "all reported"
        );
        assert_eq!(feedback.due(), None);
    }

    #[test]
    fn the_next_feedback_goes_on_from_the_last_and_late_arrivals_stay_reported() {
        let epoch = Instant::now();
        let ms = Duration::from_millis;
        let mut feedback = TransportFeedback::new(3, 42, epoch);
        let last = arrive(&mut feedback, 10..31, epoch, ms(1));
        let first = feedback.poll_feedback(last).expect("due");
        assert_eq!(parse(first, epoch, 10).0.len(), 21);
        // 9 comes late (before what was reported: dropped); 33 and 32
        // arrive, 31 never does, then 34 to 52.
        feedback.record(&numbered(3, 9), epoch + ms(101));
        feedback.record(&numbered(3, 33), epoch + ms(102));
        feedback.record(&numbered(3, 32), epoch + ms(103));
        let last = arrive(&mut feedback, 34..53, epoch + ms(104), ms(1));
        let second = feedback.poll_feedback(last).expect("due");
        let (statuses, count) = parse(second, epoch, 31);
        assert_eq!(count, 1);
        let seqs: Vec<u64> = statuses.iter().map(|&(seq, _)| seq % 0x1_0000).collect();
        assert_eq!(
            seqs,
            (31..53).collect::<Vec<_>>(),
            "from where the first ended"
        );
        assert_eq!(statuses[0].1, None, "31 lost");
        assert_eq!(statuses[1].1, Some(ms(103)));
        assert_eq!(statuses[2].1, Some(ms(102)));
    }

    #[test]
    fn feedback_goes_with_an_arrival_at_livekits_cadence() {
        let epoch = Instant::now();
        let ms = Duration::from_millis;
        let mut feedback = TransportFeedback::new(3, 42, epoch);
        // Twenty arrivals are not enough, however long they take.
        let last = arrive(&mut feedback, 0..20, epoch, ms(10));
        assert_eq!(feedback.due(), None);
        // The first feedback goes with the twenty-first.
        feedback.record(&numbered(3, 20), last + ms(1));
        assert_eq!(feedback.due(), Some(last + ms(1)), "due at that arrival");
        let sent = last + ms(1);
        assert!(feedback.poll_feedback(sent).is_some());
        assert_eq!(feedback.due(), None);
        // Then 100 ms after the last feedback: 30 arrivals in 90 ms wait.
        let last = arrive(&mut feedback, 21..51, sent + ms(3), ms(3));
        assert_eq!(last, sent + ms(90));
        assert_eq!(feedback.due(), None, "only 90 ms since the last");
        feedback.record(&numbered(3, 51), sent + ms(100));
        assert_eq!(feedback.due(), Some(sent + ms(100)));
        let sent = sent + ms(100);
        assert!(feedback.poll_feedback(sent).is_some());
        // A frame's end goes after 50 ms: not at 40, but at 55.
        let last = arrive(&mut feedback, 52..73, sent + ms(1), ms(1));
        feedback.record(&frame_end(3, 73), sent + ms(40));
        assert_eq!(
            feedback.due(),
            None,
            "{last:?}: a frame's end, but too soon"
        );
        feedback.record(&frame_end(3, 74), sent + ms(55));
        assert_eq!(feedback.due(), Some(sent + ms(55)));
        let sent = sent + ms(55);
        assert!(feedback.poll_feedback(sent).is_some());
        // A burst goes at once past 100 arrivals, however soon.
        arrive(&mut feedback, 75..175, sent, Duration::ZERO);
        assert_eq!(feedback.due(), None, "100 arrivals");
        feedback.record(&numbered(3, 175), sent);
        assert_eq!(feedback.due(), Some(sent), "101");
        let (statuses, _) = parse(feedback.poll_feedback(sent).expect("due"), epoch, 75);
        assert_eq!(statuses.len(), 101);
        // Nothing is due without arrivals: no timer of its own.
        assert_eq!(feedback.due(), None);
        assert!(feedback.poll_feedback(sent + ms(10_000)).is_none());
    }

    #[test]
    fn a_long_gap_is_skipped_not_reported_as_lost() {
        let epoch = Instant::now();
        let ms = Duration::from_millis;
        let mut feedback = TransportFeedback::new(3, 42, epoch);
        let last = arrive(&mut feedback, 80..101, epoch, Duration::ZERO);
        assert!(feedback.poll_feedback(last).is_some());
        // The client comes back 800 numbers later.
        let last = arrive(&mut feedback, 901..922, epoch + ms(110), Duration::ZERO);
        let packet = feedback.poll_feedback(last).expect("due");
        let (statuses, _) = parse(packet, epoch, 901);
        assert_eq!(statuses.len(), 21, "{statuses:?}");
        assert_eq!(statuses[0].0 % 0x1_0000, 901);
        assert_eq!(statuses[0].1, Some(ms(110)));
    }

    #[test]
    fn any_order_of_numbers_gives_feedback_a_receiver_reads() {
        // Numbers from a client gone wrong (or hostile): jumps both ways,
        // repeats, bursts; every feedback must still parse, none may panic.
        let epoch = Instant::now();
        let mut feedback = TransportFeedback::new(3, 42, epoch);
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut random = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut seq = 0u16;
        let mut now = epoch;
        for _ in 0..20_000 {
            seq = match random() % 10 {
                0 => seq.wrapping_add((random() % 2_000) as u16),
                1 => seq.wrapping_sub((random() % 2_000) as u16),
                2 => seq,
                _ => seq.wrapping_add(1),
            };
            now += Duration::from_micros(random() % 3_000);
            feedback.record(&numbered(3, seq), now);
            while let Some(packet) = feedback.poll_feedback(now) {
                let (statuses, _) = parse(packet, epoch, u64::from(seq));
                assert!(!statuses.is_empty() && statuses.len() <= MAX_STATUSES as usize);
            }
        }
    }

    #[test]
    fn many_arrivals_go_out_in_several_feedbacks_at_once() {
        let epoch = Instant::now();
        let mut feedback = TransportFeedback::new(3, 42, epoch);
        for seq in 0..1_200u16 {
            feedback.record(
                &numbered(3, seq),
                epoch + Duration::from_micros(u64::from(seq) * 300),
            );
        }
        let now = epoch + Duration::from_secs(1);
        let mut reported = 0;
        while let Some(packet) = feedback.poll_feedback(now) {
            assert!(packet.len() < 1_200, "{} bytes", packet.len());
            let (statuses, _) = parse(packet, epoch, reported as u64);
            assert!(statuses.iter().all(|&(_, at)| at.is_some()));
            reported += statuses.len();
        }
        assert_eq!(reported, 1_200);
    }

    #[test]
    fn the_answer_gets_the_offers_extension_and_feedback_back() {
        let offer = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n\
            a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n\
            a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n\
            a=rtcp-fb:111 transport-cc\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\na=mid:1\r\n\
            a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n\
            a=rtcp-fb:96 transport-cc\r\na=rtcp-fb:97 nack\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 98\r\na=mid:2\r\n\
            a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n";
        let answer = "v=0\r\no=- 5 6 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n\
            a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\na=mid:1\r\na=rtcp-fb:96 transport-cc\r\n\
            m=video 0 UDP/TLS/RTP/SAVPF 98\r\na=mid:2\r\n";
        assert_eq!(offered_ext_id(offer), Some(3));
        let out = answer_with_transport_cc(offer, answer);
        let sections: Vec<&str> = out.split("m=").collect();
        let extmap = "a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n";
        assert!(sections[0].starts_with("v=0\r\n") && !sections[0].contains("extmap"));
        assert!(
            sections[1].contains(extmap) && sections[1].contains("a=rtcp-fb:111 transport-cc\r\n")
        );
        assert!(sections[1].contains("ssrc-audio-level"), "the rest kept");
        assert_eq!(sections[2].matches(extmap).count(), 1);
        assert_eq!(
            sections[2].matches("a=rtcp-fb:96 transport-cc").count(),
            1,
            "not twice"
        );
        assert!(
            !sections[2].contains("a=rtcp-fb:97 transport-cc"),
            "97 did not ask"
        );
        assert!(
            !sections[3].contains("extmap"),
            "a rejected section stays as it is"
        );
        // An offer without the extension: the answer as it was.
        let plain = offer.replace("a=extmap:3", "a=extmap-x:3");
        assert_eq!(offered_ext_id(&plain), None);
        assert_eq!(answer_with_transport_cc(&plain, answer), answer);
    }
}
