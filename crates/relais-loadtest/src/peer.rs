//! One simulated peer connection: a str0m `Rtc` (RTP mode) on its own UDP socket.
//! Driven by its owner's event loop: datagrams in, a timer at `deadline`, and
//! after every mutation `drain` until str0m asks for time (str0m's contract).

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Pt, Rid, Simulcast, SimulcastLayer};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{RtpWrite, Ssrc};
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::net::UdpSocket;

use crate::media::{read_trailer, stamp_send_time, unix_micros, Encoder, Packet};
use crate::stats::{Report, Shared};

pub struct Peer {
    pub rtc: Rtc,
    /// Receives (tokio wakes the participant's task when it is readable).
    pub socket: UdpSocket,
    /// Sends: the same socket, used directly. tokio's `try_send_to` answers
    /// `WouldBlock` without trying until its reactor has seen the new socket
    /// writable, which lost the first connectivity check of many peers (they
    /// connected only after str0m's 250 ms retransmission).
    sender: std::net::UdpSocket,
    pub local: SocketAddr,
    pub deadline: Instant,
    pub connected: bool,
    pub events: Vec<Event>,
    /// Counts incoming RTP from its header instead of decrypting it
    /// ([`Peer::count_without_decrypting`]).
    counting: Option<RtpCounter>,
}

/// Received RTP counted from the clear header: per SSRC the extended sequence
/// number of the last packet, and what arrived since the report last took it.
#[derive(Default)]
struct RtpCounter {
    extended: HashMap<u32, u32>,
    /// (SSRC, extended sequence number, payload bytes).
    arrived: Vec<(u32, u32, usize)>,
}

impl RtpCounter {
    /// Count `buf` if it is RTP (not RTCP, RFC 5761); false otherwise.
    fn count(&mut self, buf: &[u8]) -> bool {
        let Some(header) = rtp_header(buf) else {
            return false;
        };
        let (ssrc, seq, header_len) = header;
        let extended = match self.extended.get(&ssrc) {
            // The nearest extension of `seq` to the last one (wraps at 2^16).
            Some(&last) => {
                last.wrapping_add(i32::from(seq.wrapping_sub(last as u16) as i16) as u32)
            }
            None => u32::from(seq) + (1 << 16),
        };
        self.extended.insert(ssrc, extended);
        // SRTP's authentication tag (16 bytes with AES-GCM) is not payload.
        let payload = buf.len().saturating_sub(header_len + 16);
        self.arrived.push((ssrc, extended, payload));
        true
    }
}

/// SSRC, sequence number and header length of an RTP packet (RFC 3550), or
/// `None` for RTCP, STUN, DTLS or anything too short.
fn rtp_header(buf: &[u8]) -> Option<(u32, u16, usize)> {
    if buf.len() < 12 || !(128..=191).contains(&buf[0]) || (64..=95).contains(&(buf[1] & 0x7f)) {
        return None;
    }
    let mut len = 12 + 4 * usize::from(buf[0] & 0x0f);
    if buf[0] & 0x10 != 0 {
        let words = buf.get(len + 2..len + 4)?;
        len += 4 + 4 * usize::from(u16::from_be_bytes([words[0], words[1]]));
    }
    let ssrc = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]);
    Some((ssrc, u16::from_be_bytes([buf[2], buf[3]]), len))
}

/// A published stream: encoder, where it goes, when its next frame is due.
pub struct Outgoing {
    pub mid: Mid,
    pub rid: Option<Rid>,
    pub encoder: Encoder,
    /// False while the server says nobody receives this simulcast layer (dynacast).
    pub enabled: bool,
    pub ssrc: Option<Ssrc>,
    pub pt: Option<Pt>,
    pub next: Instant,
    seq: u64,
    /// Encoded, not yet let out by the pacer.
    paced: VecDeque<Packet>,
    /// When the pacer lets the next packet out.
    send_at: Instant,
}

/// How far a pacer that was idle may send ahead at once (libwebrtc works in 5 ms steps).
const PACER_BURST: Duration = Duration::from_millis(5);

impl Outgoing {
    pub fn new(mid: Mid, rid: Option<&str>, encoder: Encoder, now: Instant) -> Self {
        Outgoing {
            mid,
            rid: rid.map(Rid::from),
            encoder,
            enabled: true,
            ssrc: None,
            pt: None,
            next: now,
            seq: u64::from(crate::media::rand_u32() & 0x3fff),
            paced: VecDeque::new(),
            send_at: now,
        }
    }
}

impl Peer {
    pub fn new(ip: IpAddr, now: Instant) -> std::io::Result<Self> {
        let std_sock = std::net::UdpSocket::bind(SocketAddr::new(ip, 0))?;
        std_sock.set_nonblocking(true)?;
        let local = std_sock.local_addr()?;
        let sender = std_sock.try_clone()?;
        let socket = UdpSocket::from_std(std_sock)?;
        let mut rtc = Rtc::builder()
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .set_stats_interval(None)
            .build(now);
        let cand = Candidate::host(local, Protocol::Udp)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        rtc.add_local_candidate(cand);
        Ok(Peer {
            rtc,
            socket,
            sender,
            local,
            deadline: now,
            connected: false,
            events: Vec::new(),
            counting: None,
        })
    }

    /// From now on, count received RTP from its header instead of handing it
    /// to str0m to decrypt (RTCP, STUN and DTLS still go to str0m).
    pub fn count_without_decrypting(&mut self) {
        self.counting = Some(RtpCounter::default());
    }

    /// Poll str0m until it asks for time; send what it transmits, keep its events.
    pub fn drain(&mut self, shared: &Shared) -> Result<(), str0m::RtcError> {
        loop {
            match self.rtc.poll_output()? {
                Output::Timeout(t) => {
                    self.deadline = t;
                    return Ok(());
                }
                Output::Transmit(t) => {
                    if self.sender.send_to(&t.contents, t.destination).is_err() {
                        Shared::add(&shared.send_dropped, 1);
                    }
                }
                Output::Event(e) => {
                    if matches!(e, Event::Connected) {
                        self.connected = true;
                    }
                    self.events.push(e);
                }
            }
        }
    }

    pub fn receive(
        &mut self,
        now: Instant,
        from: SocketAddr,
        buf: &[u8],
        shared: &Shared,
    ) -> Result<(), str0m::RtcError> {
        if let Some(counter) = self.counting.as_mut() {
            if counter.count(buf) {
                return Ok(());
            }
        }
        let Ok(r) = Receive::new(Protocol::Udp, from, self.local, buf) else {
            return Ok(());
        };
        self.rtc.handle_input(Input::Receive(now, r))?;
        self.drain(shared)
    }

    pub fn timeout(&mut self, now: Instant, shared: &Shared) -> Result<(), str0m::RtcError> {
        if self.deadline <= now {
            self.rtc.handle_input(Input::Timeout(now))?;
            self.drain(shared)?;
        }
        Ok(())
    }

    /// Receive every datagram already queued on the socket (non-blocking).
    pub fn receive_ready(
        &mut self,
        buf: &mut [u8],
        shared: &Shared,
    ) -> Result<(), str0m::RtcError> {
        for _ in 0..64 {
            match self.socket.try_recv_from(buf) {
                Ok((n, from)) => {
                    let now = Instant::now();
                    self.receive(now, from, &buf[..n], shared)?;
                }
                Err(_) => break,
            }
        }
        Ok(())
    }

    /// Add a trickled candidate, and make str0m due at once: connectivity
    /// checks can start now, but str0m's last timeout does not say so (waiting
    /// for it left about half of the idle subscribers of a join run unconnected).
    pub fn add_remote_candidate(&mut self, sdp_candidate: &str) {
        let line = sdp_candidate.trim().trim_start_matches("a=");
        if let Ok(c) = Candidate::from_sdp_string(line) {
            self.rtc.add_remote_candidate(c);
            self.deadline = Instant::now();
        }
    }

    /// Answer a remote offer; returns the answer SDP.
    pub fn accept_offer(&mut self, sdp: &str, shared: &Shared) -> anyhow::Result<String> {
        let offer = SdpOffer::from_sdp_string(sdp)?;
        let answer = self.rtc.sdp_api().accept_offer(offer)?;
        self.drain(shared)?;
        Ok(answer.to_sdp_string())
    }

    /// Add send-only media (with simulcast layers if `rids` is not empty) and
    /// create an offer. Returns the offer SDP, the pending offer and the mids.
    pub fn offer_media(
        &mut self,
        media: &[(MediaKind, String, Vec<&str>)],
        stream_id: &str,
        shared: &Shared,
    ) -> anyhow::Result<Option<(String, SdpPendingOffer, Vec<Mid>)>> {
        let mut api = self.rtc.sdp_api();
        let mut mids = Vec::new();
        for (kind, track_id, rids) in media {
            let simulcast = (!rids.is_empty()).then(|| Simulcast {
                send: rids.iter().map(|r| SimulcastLayer::new(r)).collect(),
                recv: Vec::new(),
            });
            mids.push(api.add_media(
                *kind,
                Direction::SendOnly,
                Some(stream_id.to_string()),
                Some(track_id.clone()),
                simulcast,
            ));
        }
        let Some((offer, pending)) = api.apply() else {
            return Ok(None);
        };
        self.drain(shared)?;
        Ok(Some((offer.to_sdp_string(), pending, mids)))
    }

    pub fn accept_answer(
        &mut self,
        pending: SdpPendingOffer,
        sdp: &str,
        shared: &Shared,
    ) -> anyhow::Result<()> {
        let answer = SdpAnswer::from_sdp_string(sdp)?;
        self.rtc.sdp_api().accept_answer(pending, answer)?;
        self.drain(shared)?;
        Ok(())
    }

    /// Find the send stream and payload type of every outgoing stream (after the answer).
    pub fn bind_outgoing(&mut self, out: &mut [Outgoing]) {
        let vp8 = find_pt(&self.rtc, Codec::Vp8);
        let opus = find_pt(&self.rtc, Codec::Opus);
        for o in out.iter_mut() {
            o.ssrc = self
                .rtc
                .direct_api()
                .stream_tx_by_mid(o.mid, o.rid)
                .map(|s| s.ssrc());
            o.pt = if o.encoder.video { vp8 } else { opus };
        }
    }

    /// Write every frame that is due; returns the earliest next due time.
    pub fn send_due(
        &mut self,
        now: Instant,
        out: &mut [Outgoing],
        shared: &Shared,
        report: &mut Report,
    ) -> Result<Option<Instant>, str0m::RtcError> {
        let mut wrote = false;
        let mut next: Option<Instant> = None;
        for o in out.iter_mut() {
            let (Some(ssrc), Some(pt), true) = (o.ssrc, o.pt, o.enabled) else {
                o.paced.clear();
                continue;
            };
            // Catch up at most a few frames if the loop fell behind; never burst more.
            let mut frames = 0;
            let measuring = shared.measuring.load(std::sync::atomic::Ordering::Relaxed);
            while o.next <= now && frames < 3 {
                frames += 1;
                if measuring {
                    report.frame_late.record((now - o.next).as_micros() as u64);
                }
                o.next += o.encoder.interval;
                o.paced.extend(o.encoder.next_frame());
            }
            if o.next <= now {
                o.next = now + o.encoder.interval;
            }
            let mut api = self.rtc.direct_api();
            let Some(tx) = api.stream_tx(&ssrc) else {
                o.paced.clear();
                continue;
            };
            // The pacer: packets leave at the encoder's pacing rate (all at once
            // without one), with at most PACER_BURST of credit saved while idle.
            o.send_at = o.send_at.max(now.checked_sub(PACER_BURST).unwrap_or(now));
            while o.send_at <= now {
                let Some(mut p) = o.paced.pop_front() else {
                    break;
                };
                let len = p.payload.len();
                stamp_send_time(&mut p.payload);
                Shared::add(&shared.packets_sent, 1);
                Shared::add(&shared.bytes_sent, len as u64);
                report.packets_sent += 1;
                tx.write_rtp(
                    RtpWrite::new(pt, o.seq.into(), p.timestamp, now, p.payload)
                        .marker(p.marker)
                        .nackable(o.encoder.video),
                );
                o.seq += 1;
                wrote = true;
                if let Some(rate) = o.encoder.pacing_rate {
                    o.send_at += Duration::from_secs_f64(len as f64 / rate);
                }
            }
            let wake = if o.paced.is_empty() {
                o.next
            } else {
                o.next.min(o.send_at)
            };
            next = Some(next.map_or(wake, |n: Instant| n.min(wake)));
        }
        if wrote {
            self.drain(shared)?;
        }
        Ok(next)
    }

    /// Take this PC's events, recording received media; returns (keyframe requests by mid).
    pub fn take_events(&mut self, shared: &Shared, report: &mut Report) -> Vec<Mid> {
        let mut keyframe_mids = Vec::new();
        let measuring = shared.measuring.load(std::sync::atomic::Ordering::Relaxed);
        if let Some(counter) = self.counting.as_mut() {
            for (ssrc, seq, len) in counter.arrived.drain(..) {
                Shared::add(&shared.packets_received, 1);
                Shared::add(&shared.bytes_received, len as u64);
                report.record_rx(ssrc, 0, seq, len);
            }
        }
        for e in self.events.drain(..) {
            match e {
                Event::RtpPacket(pkt) => {
                    let len = pkt.payload.len();
                    Shared::add(&shared.packets_received, 1);
                    Shared::add(&shared.bytes_received, len as u64);
                    if let Some((tag, seq, sent_us)) = read_trailer(&pkt.payload) {
                        report.record_rx(*pkt.header.ssrc, tag, seq, len);
                        if measuring {
                            // Only video sets the marker here (audio::next_frame never does).
                            report.record_latency(
                                unix_micros().saturating_sub(sent_us),
                                pkt.header.marker,
                            );
                        }
                    } else {
                        report.packets_received += 1;
                        report.bytes_received += len as u64;
                    }
                }
                Event::KeyframeRequest(req) => keyframe_mids.push(req.mid),
                _ => {}
            }
        }
        keyframe_mids
    }
}

fn find_pt(rtc: &Rtc, codec: Codec) -> Option<Pt> {
    rtc.codec_config()
        .find(|p| p.spec().codec == codec)
        .map(|p| p.pt())
}

/// A socket receive as a future for `select!`: waits until readable.
pub async fn readable(p: &Option<Peer>) -> bool {
    match p {
        Some(p) => p.socket.readable().await.is_ok(),
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtp(
        ssrc: u32,
        seq: u16,
        csrcs: u8,
        extension_words: Option<u16>,
        payload: usize,
    ) -> Vec<u8> {
        let mut b = vec![0x80 | csrcs, 96];
        if extension_words.is_some() {
            b[0] |= 0x10;
        }
        b.extend_from_slice(&seq.to_be_bytes());
        b.extend_from_slice(&[0; 4]);
        b.extend_from_slice(&ssrc.to_be_bytes());
        b.extend(std::iter::repeat_n(0, 4 * usize::from(csrcs)));
        if let Some(words) = extension_words {
            b.extend_from_slice(&[0xbe, 0xde]);
            b.extend_from_slice(&words.to_be_bytes());
            b.extend(std::iter::repeat_n(0, 4 * usize::from(words)));
        }
        b.extend(std::iter::repeat_n(7, payload + 16));
        b
    }

    #[test]
    fn rtp_is_counted_from_its_header_across_a_sequence_wrap() {
        let mut counter = RtpCounter::default();
        for seq in [65534u16, 65535, 0, 2, 1] {
            assert!(counter.count(&rtp(7, seq, 0, Some(2), 100)));
        }
        let seqs: Vec<u32> = counter.arrived.iter().map(|a| a.1).collect();
        // Continuous across the wrap, and a late packet keeps its place.
        assert_eq!(seqs, [131070, 131071, 131072, 131074, 131073]);
        assert!(counter.arrived.iter().all(|a| a.0 == 7 && a.2 == 100));
        assert!(counter.count(&rtp(9, 10, 2, None, 40)));
        assert_eq!(counter.arrived.last(), Some(&(9, 65546, 40)));
    }

    #[test]
    fn rtcp_stun_and_dtls_are_left_to_str0m() {
        let mut counter = RtpCounter::default();
        let mut sender_report = rtp(7, 1, 0, None, 20);
        sender_report[1] = 200;
        let stun = [0u8, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42, 0, 0, 0, 0, 0, 0, 0, 0];
        let mut dtls = vec![22u8, 0xfe, 0xfd];
        dtls.resize(40, 0);
        for buf in [&sender_report[..], &stun, &dtls, &[0x80, 96, 0, 1]] {
            assert!(!counter.count(buf));
        }
        assert!(counter.arrived.is_empty());
    }
}
