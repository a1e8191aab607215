//! What Relais knows of one incoming RTP stream (one SSRC) a publisher sends
//! it, for the streams Relais reads itself rather than str0m: the extended
//! sequence numbers (the SRTP index needs them before decryption), the replay
//! check, loss and interarrival jitter, the NACKs that ask the publisher to
//! resend what went missing, and the RTCP written about the stream (receiver
//! reports and generic NACKs, plain: the caller protects them).
//!
//! Pure bookkeeping: no I/O, and time comes in as [`Instant`]s. The per-packet
//! calls ([`ReceiveRegister::is_new`], [`ReceiveRegister::record`]) work on a
//! fixed bitmap; only the list of missing numbers grows, and then only up to
//! its high-water mark (at most [`WINDOW`] entries), never per packet.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::rtp_header::extend_seq;

/// Longest distance behind the highest number a packet is still accepted /
/// tracked (replay window and NACK window).
pub(crate) const WINDOW: u64 = 1024;
/// How long a number still missing waits before it is asked for again: about
/// a round trip, so an answer already on its way is not asked for twice.
pub(crate) const NACK_RETRY_INTERVAL: Duration = Duration::from_millis(100);
/// Times a number is asked for at most: a resend lost that often is not
/// coming, and asking on costs the publisher bandwidth.
pub(crate) const MAX_NACKS: u8 = 5;
/// How long after it was found missing a number is still asked for: later,
/// the receivers have given up on the frame it belongs to.
pub(crate) const NACK_GIVE_UP: Duration = Duration::from_secs(1);

/// 64-bit words in the received bitmap.
const WORDS: usize = (WINDOW / 64) as usize;
/// A difference in transit time of this many seconds' worth of RTP units
/// between two packets is a jump of the source's clock (a restart), not
/// jitter, and is left out of it (libwebrtc's threshold).
const JITTER_MAX_SECONDS: u32 = 5;

/// One incoming stream's reception state.
pub(crate) struct ReceiveRegister {
    /// RTP clock rate, to count arrival times in RTP timestamp units.
    clock_rate: u32,
    /// The highest extended number received; `None` before any packet.
    highest: Option<u64>,
    /// The lowest extended number received (RFC 3550's base_seq; a late
    /// packet from before the first one lowers it).
    base: u64,
    /// Which of the WINDOW numbers just below the highest
    /// (`highest - WINDOW ..= highest - 1`) were received, number `n` at bit
    /// `n % WINDOW`. The highest itself is received by definition, so the
    /// window reaches a full WINDOW behind it.
    received_bits: [u64; WORDS],
    /// Packets recorded, duplicates included (RFC 3550 counts them, which is
    /// why cumulative loss may be negative).
    received: u64,
    /// Expected and received at the last `report`: fraction lost is over the
    /// interval since.
    report_prior: Tally,
    /// The same at the last `take_counts`.
    counts_prior: Tally,
    /// Arrival times are counted from here (the first packet's arrival).
    epoch: Option<Instant>,
    /// RTP timestamp and transit time (arrival in RTP units − timestamp,
    /// wrapping) of the latest in-order packet.
    last_transit: (u32, u32),
    /// Interarrival jitter ×16 (RFC 3550 A.8's integer form keeps the
    /// fraction the ÷16 smoothing would otherwise round away).
    jitter_q4: u32,
    /// Numbers found missing and still worth asking for, in increasing order
    /// (gaps only open above the highest, so pushing at the back keeps it).
    missing: VecDeque<Missing>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    expected: u64,
    received: u64,
}

/// A number found missing.
#[derive(Debug, Clone, Copy)]
struct Missing {
    ext: u64,
    /// When the gap was seen: the give-up time counts from here.
    found: Instant,
    /// When it is (next) to be asked for.
    due: Instant,
    /// Times asked for so far.
    asked: u8,
}

impl ReceiveRegister {
    pub(crate) fn new(clock_rate: u32) -> Self {
        ReceiveRegister {
            clock_rate,
            highest: None,
            base: 0,
            received_bits: [0; WORDS],
            received: 0,
            report_prior: Tally::default(),
            counts_prior: Tally::default(),
            epoch: None,
            last_transit: (0, 0),
            jitter_q4: 0,
            missing: VecDeque::new(),
        }
    }

    /// The extended number (rollover counter above the 16 bits) of `seq`:
    /// the one nearest the highest received ([`extend_seq`]).
    pub(crate) fn extend(&self, seq: u16) -> u64 {
        extend_seq(self.highest, seq)
    }

    /// Whether extended number `ext` would be a new packet: not received
    /// before, and not more than WINDOW behind the highest received.
    /// (Checked before decryption; recorded only after authentication, by
    /// `record`.) Always true before any packet.
    pub(crate) fn is_new(&self, ext: u64) -> bool {
        let Some(highest) = self.highest else {
            return true;
        };
        if ext > highest {
            return true;
        }
        ext < highest && highest - ext <= WINDOW && !self.was_received(ext)
    }

    /// Record an authenticated packet: `ext` (from `extend`), its RTP
    /// timestamp and arrival. Meant for packets `is_new` accepted; a
    /// duplicate or a packet too old is counted as received (RFC 3550 counts
    /// them) and changes nothing else.
    ///
    /// Numbers skipped over are missing from `arrival` on, to be NACKed; a
    /// jump forward of more than WINDOW is a restart, and nothing before it
    /// is asked for. Jitter follows only packets in order (newer than the
    /// previous highest), as libwebrtc's does: a late packet's delay is
    /// loss recovery, not network jitter.
    pub(crate) fn record(&mut self, ext: u64, rtp_time: u32, arrival: Instant) {
        self.received += 1;
        let Some(highest) = self.highest else {
            self.highest = Some(ext);
            self.base = ext;
            self.epoch = Some(arrival);
            self.last_transit = (rtp_time, self.transit(rtp_time, arrival));
            return;
        };
        if ext > highest {
            self.advance(highest, ext, arrival);
            self.update_jitter(rtp_time, arrival);
        } else if ext < highest && highest - ext <= WINDOW && !self.was_received(ext) {
            self.set_received(ext);
            self.base = self.base.min(ext);
            if let Ok(i) = self.missing.binary_search_by_key(&ext, |m| m.ext) {
                self.missing.remove(i);
            }
        }
    }

    /// When `poll_nacks` next has something to send, if anything is missing
    /// that is still worth asking for.
    pub(crate) fn next_nack(&self) -> Option<Instant> {
        // Entries past their last ask are dropped when asked, so every one
        // left is worth asking for at its due time.
        self.missing.iter().map(|m| m.due).min()
    }

    /// The numbers to NACK at `now`, appended to `out` as RTCP generic NACK
    /// pairs (PID, BLP) (RFC 4585 §6.2.1), consecutive numbers packed
    /// greedily into as few pairs as possible, in increasing order. A missing
    /// number is asked for at the first poll at or after it was found
    /// missing, then every NACK_RETRY_INTERVAL while still missing, at most
    /// MAX_NACKS times, and never once more than WINDOW behind the highest or
    /// more than NACK_GIVE_UP after it was found missing. Returns how many
    /// numbers were asked for.
    pub(crate) fn poll_nacks(&mut self, now: Instant, out: &mut Vec<(u16, u16)>) -> u32 {
        let Some(highest) = self.highest else {
            return 0;
        };
        let mut asked = 0;
        // The pair being filled: its PID's extended number, and its BLP.
        let mut pair: Option<(u64, u16)> = None;
        self.missing.retain_mut(|m| {
            if highest - m.ext > WINDOW || now > m.found + NACK_GIVE_UP {
                return false;
            }
            if m.due > now {
                return true;
            }
            asked += 1;
            pair = match pair {
                Some((pid, blp)) if m.ext - pid <= 16 => {
                    Some((pid, blp | (1 << (m.ext - pid - 1))))
                }
                _ => {
                    if let Some((pid, blp)) = pair {
                        out.push((pid as u16, blp));
                    }
                    Some((m.ext, 0))
                }
            };
            m.asked += 1;
            m.due = now + NACK_RETRY_INTERVAL;
            m.asked < MAX_NACKS && m.due <= m.found + NACK_GIVE_UP
        });
        if let Some((pid, blp)) = pair {
            out.push((pid as u16, blp));
        }
        asked
    }

    /// The values of a reception report block (RFC 3550 §6.4.1 and A.3) at
    /// this moment; resets the "since last report" counters fraction lost is
    /// computed over. `None` before any packet, and while nothing arrived
    /// since the last report (RFC 3550 §6.4: blocks are for the sources
    /// heard since — a paused layer, a stream replaced by another).
    pub(crate) fn report(&mut self) -> Option<ReportBlock> {
        let highest = self.highest?;
        let now = self.tally();
        let (expected, received) = now.since(self.report_prior);
        if received == 0 {
            return None;
        }
        self.report_prior = now;
        let lost = expected.saturating_sub(received);
        // In 1/256ths, 0 for an interval that expected nothing. lost <
        // expected (an interval that expects more received at least its
        // highest), but the byte must never wrap to 0 all the same.
        let fraction_lost = (lost << 8)
            .checked_div(expected)
            .map_or(0, |fraction| fraction.min(255) as u8);
        let cumulative = now.expected as i64 - now.received as i64;
        Some(ReportBlock {
            fraction_lost,
            cumulative_lost: cumulative.clamp(-0x80_0000, 0x7f_ffff) as i32,
            extended_highest: highest as u32,
            jitter: self.jitter(),
        })
    }

    /// Packets received and lost since the last call (its own cursor,
    /// independent of `report`'s), for connection-quality statistics; lost
    /// is expected − received over the interval, at least 0.
    pub(crate) fn take_counts(&mut self) -> (u64, u64) {
        let now = self.tally();
        let (expected, received) = now.since(self.counts_prior);
        self.counts_prior = now;
        (received, expected.saturating_sub(received))
    }

    /// Interarrival jitter now, in RTP timestamp units.
    pub(crate) fn jitter(&self) -> u32 {
        self.jitter_q4 >> 4
    }

    /// Move the highest from `highest` up to `ext`, marking what lies
    /// between as missing (found at `arrival`).
    fn advance(&mut self, highest: u64, ext: u64, arrival: Instant) {
        self.highest = Some(ext);
        if ext - highest > WINDOW {
            // A restart: nothing of before is in the window any more.
            self.received_bits = [0; WORDS];
            self.missing.clear();
            return;
        }
        // The old highest enters the window; the slot of `ext` goes on
        // holding `ext - WINDOW`, which the window still covers.
        self.set_received(highest);
        for gap in highest + 1..ext {
            self.clear_received(gap);
            self.missing.push_back(Missing {
                ext: gap,
                found: arrival,
                due: arrival,
                asked: 0,
            });
        }
        while self.missing.front().is_some_and(|m| ext - m.ext > WINDOW) {
            self.missing.pop_front();
        }
    }

    /// RFC 3550 A.8, in its integer form, for a packet newer than any before.
    fn update_jitter(&mut self, rtp_time: u32, arrival: Instant) {
        let transit = self.transit(rtp_time, arrival);
        let (last_time, last_transit) = self.last_transit;
        self.last_transit = (rtp_time, transit);
        // Packets of one video frame share a timestamp but leave the sender
        // paced out: only a frame's first packet says anything about the
        // network (libwebrtc leaves the rest out too).
        if rtp_time == last_time {
            return;
        }
        let d = (transit.wrapping_sub(last_transit) as i32).unsigned_abs();
        if d >= self.clock_rate.saturating_mul(JITTER_MAX_SECONDS) {
            return;
        }
        self.jitter_q4 = self
            .jitter_q4
            .saturating_add(d)
            .saturating_sub(self.jitter_q4.saturating_add(8) >> 4);
    }

    /// Arrival in RTP units since the epoch, less the RTP timestamp; both
    /// wrap at 32 bits, and only differences of transits count.
    fn transit(&self, rtp_time: u32, arrival: Instant) -> u32 {
        let since = self.epoch.map_or(Duration::ZERO, |epoch| {
            arrival.saturating_duration_since(epoch)
        });
        let units = since.as_nanos() * u128::from(self.clock_rate) / 1_000_000_000;
        (units as u32).wrapping_sub(rtp_time)
    }

    fn tally(&self) -> Tally {
        Tally {
            expected: self.highest.map_or(0, |h| h - self.base + 1),
            received: self.received,
        }
    }

    fn was_received(&self, ext: u64) -> bool {
        let (word, bit) = slot(ext);
        self.received_bits[word] & bit != 0
    }

    fn set_received(&mut self, ext: u64) {
        let (word, bit) = slot(ext);
        self.received_bits[word] |= bit;
    }

    fn clear_received(&mut self, ext: u64) {
        let (word, bit) = slot(ext);
        self.received_bits[word] &= !bit;
    }
}

impl Tally {
    /// Expected and received since `prior` (both only grow).
    fn since(self, prior: Tally) -> (u64, u64) {
        (
            self.expected - prior.expected,
            self.received - prior.received,
        )
    }
}

/// Word and bit of number `ext` in the received bitmap.
fn slot(ext: u64) -> (usize, u64) {
    let i = ext % WINDOW;
    ((i / 64) as usize, 1 << (i % 64))
}

/// The values of one reception report block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReportBlock {
    pub fraction_lost: u8,
    /// Cumulative, clamped to 24-bit signed range (RFC 3550: may be negative
    /// with duplicates).
    pub cumulative_lost: i32,
    /// Low 32 bits of the extended highest sequence number received.
    pub extended_highest: u32,
    pub jitter: u32,
}

/// RTCP version 2, no padding: the first byte's top bits.
const RTCP_V2: u8 = 0x80;
pub(crate) const PT_RECEIVER_REPORT: u8 = 201;
pub(crate) const PT_TRANSPORT_FEEDBACK: u8 = 205;
pub(crate) const PT_EXTENDED_REPORT: u8 = 207;
pub(crate) const BT_RECEIVER_REFERENCE_TIME: u8 = 4;
const BT_DELAY_SINCE_REFERENCE: u8 = 5;
pub(crate) const FMT_GENERIC_NACK: u8 = 1;

/// A Receiver Report (PT 201, RFC 3550 §6.4.2), plain, appended to `out`:
/// from `sender_ssrc`, with one report block per entry of (media SSRC,
/// block, last SR (the middle 32 bits of the NTP time of that source's last
/// sender report, 0 if none), delay since last SR in 1/65536 s (0 if none)).
/// At most 31 blocks (the count is 5 bits): the caller splits.
pub(crate) fn write_receiver_report(
    sender_ssrc: u32,
    blocks: &[(u32, ReportBlock, u32, u32)],
    out: &mut Vec<u8>,
) {
    debug_assert!(blocks.len() <= 31, "{} report blocks", blocks.len());
    // Length in 32-bit words less one: the header word, the sender, 6 a block.
    let words_less_one = 1 + 6 * blocks.len() as u16;
    out.reserve(4 * (usize::from(words_less_one) + 1));
    out.push(RTCP_V2 | (blocks.len() as u8 & 0x1f));
    out.push(PT_RECEIVER_REPORT);
    out.extend_from_slice(&words_less_one.to_be_bytes());
    out.extend_from_slice(&sender_ssrc.to_be_bytes());
    for &(ssrc, block, last_sr, delay) in blocks {
        out.extend_from_slice(&ssrc.to_be_bytes());
        // Fraction lost, then cumulative lost in 24-bit two's complement.
        let lost =
            (block.cumulative_lost as u32 & 0xff_ffff) | (u32::from(block.fraction_lost) << 24);
        out.extend_from_slice(&lost.to_be_bytes());
        out.extend_from_slice(&block.extended_highest.to_be_bytes());
        out.extend_from_slice(&block.jitter.to_be_bytes());
        out.extend_from_slice(&last_sr.to_be_bytes());
        out.extend_from_slice(&delay.to_be_bytes());
    }
}

/// A generic NACK (RTPFB PT 205, FMT 1, RFC 4585 §6.2.1), plain, appended
/// to `out`: from `sender_ssrc` about `media_ssrc`, with the given
/// (PID, BLP) pairs (at least one).
pub(crate) fn write_nack(
    sender_ssrc: u32,
    media_ssrc: u32,
    pairs: &[(u16, u16)],
    out: &mut Vec<u8>,
) {
    debug_assert!(!pairs.is_empty(), "a NACK without pairs");
    // The header word, the two SSRCs, one word a pair.
    let words_less_one = 2 + pairs.len() as u16;
    out.reserve(4 * (usize::from(words_less_one) + 1));
    out.push(RTCP_V2 | FMT_GENERIC_NACK);
    out.push(PT_TRANSPORT_FEEDBACK);
    out.extend_from_slice(&words_less_one.to_be_bytes());
    out.extend_from_slice(&sender_ssrc.to_be_bytes());
    out.extend_from_slice(&media_ssrc.to_be_bytes());
    for &(pid, blp) in pairs {
        out.extend_from_slice(&pid.to_be_bytes());
        out.extend_from_slice(&blp.to_be_bytes());
    }
}

/// An extended report (XR, PT 207, RFC 3611) from `sender_ssrc` holding one
/// receiver reference time block (§4.4): `ntp`, the time it is sent. The
/// sender of the media answers with the time it got it and how long it held
/// it (a DLRR block, §4.5), which gives the round trip.
pub(crate) fn write_reference_time(sender_ssrc: u32, ntp: u64, out: &mut Vec<u8>) {
    out.push(RTCP_V2);
    out.push(PT_EXTENDED_REPORT);
    // The header word, the SSRC, the block's header and its two words.
    out.extend_from_slice(&4u16.to_be_bytes());
    out.extend_from_slice(&sender_ssrc.to_be_bytes());
    out.extend_from_slice(&[BT_RECEIVER_REFERENCE_TIME, 0, 0, 2]);
    out.extend_from_slice(&ntp.to_be_bytes());
}

/// An extended report answering a peer's reference time (RFC 3611 §4.5):
/// for `ssrc`, the middle 32 bits of that time and how long it was held
/// (1/65536 s), from which the peer computes its round trip.
pub(crate) fn write_delay_since_reference(
    sender_ssrc: u32,
    ssrc: u32,
    reference: u32,
    held: u32,
    out: &mut Vec<u8>,
) {
    out.push(RTCP_V2);
    out.push(PT_EXTENDED_REPORT);
    // The header word, the SSRC, the block's header and its three words.
    out.extend_from_slice(&5u16.to_be_bytes());
    out.extend_from_slice(&sender_ssrc.to_be_bytes());
    out.extend_from_slice(&[BT_DELAY_SINCE_REFERENCE, 0, 0, 3]);
    for word in [ssrc, reference, held] {
        out.extend_from_slice(&word.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use str0m::rtp::rtcp::{NackEntry, ReceptionReport, ReportBlock as XrBlock, Rtcp};

    /// Record `seqs` (16-bit) in order, one every millisecond from `start`,
    /// RTP time 90 per packet (90 kHz, a packet a millisecond).
    fn receive(r: &mut ReceiveRegister, seqs: impl IntoIterator<Item = u16>, start: Instant) {
        for (i, seq) in seqs.into_iter().enumerate() {
            let ext = r.extend(seq);
            assert!(r.is_new(ext), "{seq} ({ext}) is new");
            let at = start + Duration::from_millis(i as u64);
            r.record(ext, (ext as u32).wrapping_mul(90), at);
        }
    }

    fn nacks(r: &mut ReceiveRegister, now: Instant) -> (Vec<(u16, u16)>, u32) {
        let mut out = Vec::new();
        let asked = r.poll_nacks(now, &mut out);
        (out, asked)
    }

    /// The packet as str0m reads it, after checking the header's own count
    /// and length (str0m's parser reads until the buffer ends).
    fn parse(packet: &[u8], count: usize) -> Rtcp {
        assert_eq!(packet.len() % 4, 0);
        let words = usize::from(u16::from_be_bytes([packet[2], packet[3]])) + 1;
        assert_eq!(words * 4, packet.len());
        assert_eq!(packet[0] >> 6, 2, "version");
        assert_eq!(packet[0] & 0x20, 0, "no padding");
        assert_eq!(usize::from(packet[0] & 0x1f), count);
        Rtcp::try_from(packet).expect("str0m parses it")
    }

    #[test]
    fn extends_across_a_wrap_both_ways() {
        let start = Instant::now();
        let mut r = ReceiveRegister::new(90_000);
        assert_eq!(r.extend(65_535), 65_535);
        receive(&mut r, [65_534, 65_535], start);
        // Forward across the wrap: the counter goes up.
        assert_eq!(r.extend(0), 65_536);
        assert_eq!(r.extend(1), 65_537);
        r.record(65_537, 0, start);
        // A packet from just before the wrap, arriving after it.
        assert_eq!(r.extend(65_533), 65_533);
        assert_eq!(r.extend(0), 65_536);
        // Exactly half way behind keeps the counter (RFC 3711's tie).
        assert_eq!(r.extend(1 + 32_768), 65_536 + 1 + 32_768);
        assert_eq!(r.extend(1 + 32_769), 1 + 32_769);
        // Several wraps, stepping 1000 at a time (within the window).
        let mut seq = 1u16;
        for _ in 0..200 {
            seq = seq.wrapping_add(1000);
            let ext = r.extend(seq);
            r.record(ext, 0, start);
        }
        assert_eq!(r.highest, Some(65_537 + 200_000));
        assert_eq!(r.extend(seq) >> 16, 4);
        assert_eq!(r.extend(seq.wrapping_sub(2000)), 65_537 + 198_000);
        // Far behind at a counter of 0: no counter of −1.
        let mut r = ReceiveRegister::new(90_000);
        receive(&mut r, [10], start);
        assert_eq!(r.extend(65_530), 65_530);
        assert_eq!(r.extend(9), 9);
    }

    #[test]
    fn replays_and_packets_too_old_are_not_new() {
        let start = Instant::now();
        let mut r = ReceiveRegister::new(90_000);
        assert!(r.is_new(12_345));
        // Lost: 974 and 975 (WINDOW + 1 and WINDOW behind the highest, 1999),
        // 1998 (974's slot in the bitmap), 1000 and 1500.
        let lost = [974, 975, 1000, 1500, 1998];
        receive(&mut r, (0..2000).filter(|s| !lost.contains(s)), start);
        for seq in [1999, 1997, 1501, 999, 1001] {
            assert!(!r.is_new(seq), "{seq} again");
        }
        assert!(r.is_new(2000) && r.is_new(2000 + 5 * WINDOW));
        // WINDOW behind is still accepted; one more is not, nor is 0
        // (received, long ago).
        assert!(r.is_new(1500) && r.is_new(1000) && r.is_new(1998));
        assert!(r.is_new(1999 - WINDOW) && !r.is_new(1998 - WINDOW) && !r.is_new(0));
        // A gap filled is new once.
        r.record(1500, 0, start);
        assert!(!r.is_new(1500));
        r.record(1999 - WINDOW, 0, start);
        assert!(!r.is_new(1999 - WINDOW));
        // The highest is never new again, and moving up keeps what was seen.
        r.record(2001, 0, start);
        assert!(!r.is_new(2001) && !r.is_new(1999) && r.is_new(2000));
        assert!(!r.is_new(1500) && !r.is_new(1000 - 1));
        // Exactly WINDOW up: the old highest is still in, the one before not.
        r.record(2001 + WINDOW, 0, start);
        assert!(!r.is_new(2001) && !r.is_new(2000));
        assert!(r.is_new(2002) && r.is_new(2000 + WINDOW));
    }

    #[test]
    fn asks_for_what_is_missing_packed_and_retried() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut r = ReceiveRegister::new(90_000);
        assert_eq!(r.next_nack(), None);
        receive(&mut r, (0..14).filter(|s| !(10..=12).contains(s)), t0);
        // Found missing when 13 arrived, the 11th packet (t0 + 10 ms).
        assert_eq!(r.next_nack(), Some(t0 + ms(10)));
        assert_eq!(nacks(&mut r, t0 + ms(9)), (vec![], 0));
        let more = (14..100).filter(|&s| s != 50);
        receive(&mut r, more, t0 + ms(11));
        // At the last arrival (99's: the 85th from t0 + 11 ms).
        let now = t0 + ms(95);
        assert_eq!(nacks(&mut r, now), (vec![(10, 0b11), (50, 0)], 4));
        assert_eq!(r.next_nack(), Some(now + NACK_RETRY_INTERVAL));
        assert_eq!(nacks(&mut r, now + ms(99)), (vec![], 0));
        // Again after the interval, then 11 arrives late and is not asked for.
        let now = now + ms(100);
        assert_eq!(nacks(&mut r, now), (vec![(10, 0b11), (50, 0)], 4));
        r.record(r.extend(11), 0, now);
        for round in 3..=MAX_NACKS {
            let now = now + ms(100) * u32::from(round - 2);
            assert_eq!(
                nacks(&mut r, now),
                (vec![(10, 0b10), (50, 0)], 3),
                "{round}"
            );
        }
        assert_eq!(r.next_nack(), None);
        assert_eq!(nacks(&mut r, now + ms(1000)), (vec![], 0));

        // Seventeen in a row fill one pair; the eighteenth starts another.
        let mut r = ReceiveRegister::new(90_000);
        receive(&mut r, [99, 118, 120], t0);
        let (pairs, asked) = nacks(&mut r, t0 + ms(2));
        assert_eq!((pairs, asked), (vec![(100, 0xffff), (117, 0b10)], 19));
        // Across the 16-bit wrap the pair's numbers are the wire's.
        let mut r = ReceiveRegister::new(90_000);
        receive(&mut r, [65_534, 1], t0);
        assert_eq!(nacks(&mut r, t0 + ms(1)), (vec![(65_535, 0b1)], 2));
    }

    #[test]
    fn gives_up_after_a_second_and_across_a_restart() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // Asked once, then polled only after the give-up time.
        let mut r = ReceiveRegister::new(90_000);
        receive(&mut r, [1, 3], t0);
        assert_eq!(nacks(&mut r, t0 + ms(1)), (vec![(2, 0)], 1));
        assert_eq!(nacks(&mut r, t0 + ms(1001)), (vec![(2, 0)], 1));
        assert_eq!(nacks(&mut r, t0 + ms(1002)), (vec![], 0));
        assert_eq!(r.next_nack(), None);
        // Never asked for in time.
        let mut r = ReceiveRegister::new(90_000);
        receive(&mut r, [1, 3], t0);
        assert_eq!(nacks(&mut r, t0 + ms(1002)), (vec![], 0));
        assert_eq!(r.next_nack(), None);
        // A retry that would fall past the give-up time is not scheduled.
        let mut r = ReceiveRegister::new(90_000);
        receive(&mut r, [1, 3], t0);
        assert_eq!(nacks(&mut r, t0 + ms(950)), (vec![(2, 0)], 1));
        assert_eq!(r.next_nack(), None);

        // More than WINDOW behind: no longer asked for.
        let mut r = ReceiveRegister::new(90_000);
        receive(&mut r, [1, 3], t0);
        receive(&mut r, 4..(3 + WINDOW as u16), t0);
        assert_eq!(nacks(&mut r, t0 + ms(1)), (vec![(2, 0)], 1));
        receive(&mut r, [3 + WINDOW as u16], t0 + ms(2));
        assert_eq!(r.next_nack(), None);
        assert_eq!(nacks(&mut r, t0 + ms(200)), (vec![], 0));
        // Never polled, the list still keeps to the window: every other
        // number lost over four windows leaves half a window missing.
        let mut r = ReceiveRegister::new(90_000);
        receive(&mut r, (0..4 * WINDOW as u16).step_by(2), t0);
        assert_eq!(r.missing.len(), WINDOW as usize / 2);

        // A jump of exactly WINDOW still asks for all between.
        let mut r = ReceiveRegister::new(90_000);
        receive(&mut r, [0, WINDOW as u16], t0);
        let (pairs, asked) = nacks(&mut r, t0 + ms(1));
        assert_eq!(asked, WINDOW as u32 - 1);
        assert_eq!(pairs.first(), Some(&(1, 0xffff)));
        // One more is a restart: nothing of before, not the earlier loss.
        let mut r = ReceiveRegister::new(90_000);
        receive(&mut r, [0, 2, 3 + WINDOW as u16 + 1], t0);
        assert_eq!(r.next_nack(), None);
        assert_eq!(nacks(&mut r, t0 + ms(2)), (vec![], 0));
        // After it, losses are asked for as ever.
        receive(&mut r, [3 + WINDOW as u16 + 3], t0 + ms(3));
        assert_eq!(
            nacks(&mut r, t0 + ms(3)),
            (vec![(3 + WINDOW as u16 + 2, 0)], 1)
        );
    }

    #[test]
    fn reports_loss_highest_and_jitter() {
        let t0 = Instant::now();
        let mut r = ReceiveRegister::new(90_000);
        assert_eq!(r.report(), None);
        // 100 expected, 90 received, across the 16-bit wrap.
        let first = 65_500u16;
        let lost = [3, 10, 20, 36, 37, 38, 40, 60, 70, 80];
        let seqs = (0..100u16)
            .filter(|i| !lost.contains(i))
            .map(|i| first.wrapping_add(i));
        receive(&mut r, seqs, t0);
        let block = r.report().expect("a report");
        assert_eq!(block.fraction_lost, 25, "10/100 of 256");
        assert_eq!(block.cumulative_lost, 10);
        assert_eq!(block.extended_highest, 65_500 + 99);
        // Each loss shifts the later arrivals (a millisecond a packet
        // received) against their timestamps: some jitter, as reported.
        assert!(block.jitter > 0);
        assert_eq!(block.jitter, r.jitter());
        // 100 more, all received: nothing lost in the interval.
        let seqs = (100..200u16).map(|i| first.wrapping_add(i));
        receive(&mut r, seqs, t0 + Duration::from_millis(100));
        let block = r.report().expect("a report");
        assert_eq!((block.fraction_lost, block.cumulative_lost), (0, 10));
        assert_eq!(block.extended_highest, 65_536 + 163);
        // Two late ones: the cumulative loss goes down, the fraction stays 0.
        r.record(r.extend(first + 10), 0, t0);
        r.record(r.extend(first + 20), 0, t0);
        let block = r.report().expect("a report");
        assert_eq!((block.fraction_lost, block.cumulative_lost), (0, 8));
        // Half of the next 10 lost: 128/256.
        let seqs = (200..210u16)
            .filter(|i| i % 2 == 1)
            .map(|i| first.wrapping_add(i));
        receive(&mut r, seqs, t0);
        assert_eq!(r.report().expect("a report").fraction_lost, 128);
        // Duplicates make the cumulative loss negative.
        let mut r = ReceiveRegister::new(90_000);
        receive(&mut r, [7, 8, 9], t0);
        r.record(9, 0, t0);
        r.record(9, 0, t0);
        let block = r.report().expect("a report");
        assert_eq!((block.fraction_lost, block.cumulative_lost), (0, -2));
        // A late packet from before the first one widens what is expected.
        let mut r = ReceiveRegister::new(90_000);
        receive(&mut r, [7, 8, 9], t0);
        assert!(r.is_new(5));
        r.record(5, 0, t0);
        assert_eq!(r.report().expect("a report").cumulative_lost, 1);
    }

    #[test]
    fn jitter_follows_rfc_3550_a8() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // 8 kHz: a millisecond is 8 units; a packet every 20 ms (160).
        let mut r = ReceiveRegister::new(8_000);
        r.record(10, 0, at(0));
        r.record(11, 160, at(20));
        assert_eq!(r.jitter(), 0);
        // 10 ms early: |D| = 80, J = 80/16 = 5.
        r.record(12, 320, at(30));
        assert_eq!((r.jitter_q4, r.jitter()), (80, 5));
        // Back on time: |D| = 80 again, J = 5 + (80 − 5)/16 = 9.69 (q4: 155).
        r.record(13, 480, at(60));
        assert_eq!((r.jitter_q4, r.jitter()), (155, 9));
        // On time: J = 9.69 − 9.69/16 = 9.08 (q4: 145).
        r.record(14, 640, at(80));
        assert_eq!((r.jitter_q4, r.jitter()), (145, 9));
        // Another packet of the same frame, and a late one (out of order),
        // leave it alone.
        r.record(15, 640, at(95));
        r.record(9, 0, at(300));
        assert_eq!(r.jitter_q4, 145);
        // The next frame counts from the frame's last packet: on time, D = 0.
        r.record(16, 800, at(115));
        assert_eq!(r.jitter_q4, 145 - 9);
        // A timestamp wrap is no jitter: next frame exactly on time.
        let mut r = ReceiveRegister::new(8_000);
        r.record(0, u32::MAX - 99, at(0));
        r.record(1, 60, at(20));
        assert_eq!(r.jitter(), 0);

        // Perfectly paced: none; jittered: some; paced again: back to ~0.
        let mut r = ReceiveRegister::new(48_000);
        let packet = |i: u64| (i as u32 * 960, at(i * 20));
        for i in 0..500 {
            let (rtp, arrival) = packet(i);
            r.record(i, rtp, arrival);
        }
        assert_eq!(r.jitter(), 0);
        for i in 500..600 {
            let (rtp, arrival) = packet(i);
            let wobble = Duration::from_millis(i % 3 * 5);
            r.record(i, rtp, arrival + wobble);
        }
        // |D| alternates 5, 5, 10 ms (240, 240, 480 units): J near 320.
        assert!((250..400).contains(&r.jitter()), "{}", r.jitter());
        for i in 600..800 {
            let (rtp, arrival) = packet(i);
            r.record(i, rtp, arrival);
        }
        assert_eq!(r.jitter(), 0);
    }

    #[test]
    fn counts_are_taken_apart_from_reports() {
        let t0 = Instant::now();
        let mut r = ReceiveRegister::new(90_000);
        assert_eq!(r.take_counts(), (0, 0));
        receive(&mut r, (0..10).filter(|s| ![2, 4, 6].contains(s)), t0);
        assert!(r.report().is_some());
        assert_eq!(r.take_counts(), (7, 3));
        assert_eq!(r.take_counts(), (0, 0));
        receive(&mut r, [11, 12], t0);
        assert_eq!(r.take_counts(), (2, 1));
        // More received than expected in an interval: none lost, not less.
        r.record(2, 0, t0);
        r.record(4, 0, t0);
        assert_eq!(r.take_counts(), (2, 0));
        // The report's interval is its own: since the first report.
        let block = r.report().expect("a report");
        assert_eq!(block.fraction_lost, 0);
        assert_eq!(block.cumulative_lost, 2);
    }

    #[test]
    fn a_stream_heard_nothing_since_the_last_report_is_left_out() {
        let t0 = Instant::now();
        let mut r = ReceiveRegister::new(90_000);
        assert_eq!(r.report(), None, "nothing yet");
        receive(&mut r, 0..10, t0);
        assert!(r.report().is_some());
        assert_eq!(r.report(), None, "nothing since");
        receive(&mut r, [12], t0);
        let block = r.report().expect("heard again");
        // 10 and 11 count against this interval only.
        assert_eq!((block.fraction_lost, block.cumulative_lost), (170, 2));
    }

    #[test]
    fn str0m_reads_the_reports_and_nacks_written() {
        let block = |fraction_lost, cumulative_lost, extended_highest, jitter| ReportBlock {
            fraction_lost,
            cumulative_lost,
            extended_highest,
            jitter,
        };
        let blocks = [
            (
                0x1111_2222,
                block(25, 10, 0x0001_00a3, 321),
                0xaabb_ccdd,
                65_536,
            ),
            (0x3333_4444, block(0, -2, 7, 0), 0, 0),
            (0x5555_6666, block(255, 0x7f_ffff, u32::MAX, u32::MAX), 1, 2),
        ];
        let mut out = vec![0xee];
        write_receiver_report(0xdead_beef, &blocks, &mut out);
        assert_eq!(out[0], 0xee, "appended");
        let Rtcp::ReceiverReport(rr) = parse(&out[1..], 3) else {
            panic!("not a receiver report");
        };
        assert_eq!(*rr.sender_ssrc, 0xdead_beef);
        let read: Vec<ReceptionReport> = rr.reports.iter().copied().collect();
        let written: Vec<ReceptionReport> = blocks
            .iter()
            .map(|&(ssrc, b, last_sr_time, last_sr_delay)| ReceptionReport {
                ssrc: ssrc.into(),
                fraction_lost: b.fraction_lost,
                packets_lost: b.cumulative_lost as u32 & 0xff_ffff,
                max_seq: b.extended_highest,
                jitter: b.jitter,
                last_sr_time,
                last_sr_delay,
            })
            .collect();
        assert_eq!(read, written);
        assert_eq!(read[1].packets_lost, 0xff_fffe, "−2 in 24 bits");
        // No blocks at all is a valid report too.
        let mut out = Vec::new();
        write_receiver_report(9, &[], &mut out);
        let Rtcp::ReceiverReport(rr) = parse(&out, 0) else {
            panic!("not a receiver report");
        };
        assert_eq!((*rr.sender_ssrc, rr.reports.len()), (9, 0));

        let pairs = [(10, 0b11), (50, 0), (65_535, 0x8001)];
        let mut out = Vec::new();
        write_nack(0x0102_0304, 0x0a0b_0c0d, &pairs, &mut out);
        let Rtcp::Nack(nack) = parse(&out, 1) else {
            panic!("not a NACK");
        };
        assert_eq!((*nack.sender_ssrc, *nack.ssrc), (0x0102_0304, 0x0a0b_0c0d));
        let read: Vec<NackEntry> = nack.reports.iter().copied().collect();
        let written: Vec<NackEntry> = pairs
            .iter()
            .map(|&(pid, blp)| NackEntry { pid, blp })
            .collect();
        assert_eq!(read, written);

        // What the register asks for, as written and read back.
        let t0 = Instant::now();
        let mut r = ReceiveRegister::new(90_000);
        receive(&mut r, (0..40).filter(|s| ![3, 5, 30].contains(s)), t0);
        let (pairs, _) = nacks(&mut r, t0 + Duration::from_secs(0));
        assert_eq!(pairs, vec![]);
        let (pairs, _) = nacks(&mut r, t0 + Duration::from_millis(40));
        let mut out = Vec::new();
        write_nack(1, 2, &pairs, &mut out);
        let Rtcp::Nack(nack) = parse(&out, 1) else {
            panic!("not a NACK");
        };
        let missing: Vec<u16> = nack
            .reports
            .iter()
            .flat_map(|e| {
                let more = (0..16)
                    .filter(move |i| e.blp & (1 << i) != 0)
                    .map(move |i| e.pid + i + 1);
                std::iter::once(e.pid).chain(more)
            })
            .collect();
        assert_eq!(missing, vec![3, 5, 30]);
    }

    #[test]
    fn an_answer_to_a_reference_time_reads_back_as_str0m_reads_it() {
        let mut out = Vec::new();
        write_delay_since_reference(7, 9, 0x1234_5678, 0x0000_8000, &mut out);
        let Rtcp::ExtendedReport(report) = parse(&out, 0) else {
            panic!("not an extended report");
        };
        assert_eq!(*report.ssrc, 7);
        let [XrBlock::Dlrr(dlrr)] = &report.blocks[..] else {
            panic!("{report:?}");
        };
        let [item] = &dlrr.items[..] else {
            panic!("{dlrr:?}");
        };
        assert_eq!(
            (*item.ssrc, item.last_rr_time, item.last_rr_delay),
            (9, 0x1234_5678, 0x0000_8000)
        );
    }
}
