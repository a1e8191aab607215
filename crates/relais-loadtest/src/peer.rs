//! One simulated peer connection: a str0m `Rtc` (RTP mode) on its own UDP socket.
//! Driven by its owner's event loop: datagrams in, a timer at `deadline`, and
//! after every mutation `drain` until str0m asks for time (str0m's contract).

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Pt, Rid, Simulcast, SimulcastLayer};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{RtpWrite, Ssrc};
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::net::UdpSocket;

use crate::counting::{Counted, CountingReader};
use crate::media::{read_trailer, stamp_send_time, unix_micros, Encoder};
use crate::pacer::Pacer;
use crate::stats::{Received, Report, Shared};

pub struct Peer {
    pub rtc: Rtc,
    incoming: Incoming,
    /// Sends: the same socket, used directly. tokio's `try_send_to` answers
    /// `WouldBlock` without trying until its reactor has seen the new socket
    /// writable, which lost the first connectivity check of many peers (they
    /// connected only after str0m's 250 ms retransmission).
    sender: std::net::UdpSocket,
    pub local: SocketAddr,
    pub deadline: Instant,
    pub connected: bool,
    pub events: Vec<Event>,
}

/// Who reads the peer's socket.
enum Incoming {
    /// The participant's task (tokio wakes it when the socket is readable).
    Socket(UdpSocket),
    /// The counting reader, which counts RTP from its header instead of
    /// decrypting it and passes the rest on ([`crate::counting`]).
    Counted(Counted),
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
    pacer: Pacer,
}

impl Outgoing {
    pub fn new(mid: Mid, rid: Option<&str>, encoder: Encoder, now: Instant) -> Self {
        Outgoing {
            mid,
            rid: rid.map(Rid::from),
            enabled: true,
            ssrc: None,
            pt: None,
            next: now,
            seq: u64::from(crate::media::rand_u32() & 0x3fff),
            pacer: Pacer::new(encoder.pacing_rate, now),
            encoder,
        }
    }
}

impl Peer {
    /// A peer on a new socket of `ip` (asking for `receive_buffer` bytes of
    /// receive buffer); with `counting`, a subscriber whose media that reader
    /// counts instead of decrypting it (RTCP, STUN and DTLS still reach str0m).
    pub fn new(
        ip: IpAddr,
        receive_buffer: Option<usize>,
        now: Instant,
        counting: Option<&CountingReader>,
    ) -> std::io::Result<Self> {
        let std_sock = std::net::UdpSocket::bind(SocketAddr::new(ip, 0))?;
        std_sock.set_nonblocking(true)?;
        if let Some(bytes) = receive_buffer {
            socket2::SockRef::from(&std_sock).set_recv_buffer_size(bytes)?;
        }
        let local = std_sock.local_addr()?;
        let sender = std_sock.try_clone()?;
        let incoming = match counting {
            Some(reader) => Incoming::Counted(reader.register(std_sock)?),
            None => Incoming::Socket(UdpSocket::from_std(std_sock)?),
        };
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
            incoming,
            sender,
            local,
            deadline: now,
            connected: false,
            events: Vec::new(),
        })
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

    /// Receive every datagram already queued on the socket (non-blocking),
    /// or, counted, those the counting reader passed on.
    pub fn receive_ready(
        &mut self,
        buf: &mut [u8],
        shared: &Shared,
    ) -> Result<(), str0m::RtcError> {
        if let Incoming::Counted(counted) = &self.incoming {
            let others = std::mem::take(&mut counted.inbox.received().others);
            for (from, datagram) in others {
                self.receive(Instant::now(), from, &datagram, shared)?;
            }
            return Ok(());
        }
        for _ in 0..64 {
            let Incoming::Socket(socket) = &self.incoming else {
                break;
            };
            let Ok((n, from)) = socket.try_recv_from(buf) else {
                break;
            };
            self.receive(Instant::now(), from, &buf[..n], shared)?;
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
                o.pacer.clear();
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
                o.pacer.push(now, o.encoder.next_frame());
            }
            if o.next <= now {
                o.next = now + o.encoder.interval;
            }
            let mut api = self.rtc.direct_api();
            let Some(tx) = api.stream_tx(&ssrc) else {
                o.pacer.clear();
                continue;
            };
            while let Some(mut p) = o.pacer.pop_due(now) {
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
            }
            let wake = o.pacer.next_due().map_or(o.next, |t| o.next.min(t));
            next = Some(next.map_or(wake, |n: Instant| n.min(wake)));
        }
        if wrote {
            // str0m lets written media out at its next timeout: given now, the
            // packets leave in this turn instead of a turn of the task later.
            self.rtc.handle_input(Input::Timeout(now))?;
            self.drain(shared)?;
        }
        Ok(next)
    }

    /// Take this PC's events, recording received media; returns (keyframe requests by mid).
    pub fn take_events(&mut self, shared: &Shared, report: &mut Report) -> Vec<Mid> {
        let mut keyframe_mids = Vec::new();
        let measuring = shared.measuring.load(std::sync::atomic::Ordering::Relaxed);
        // Counted: the reader added them to `shared` as it read them.
        if let Incoming::Counted(counted) = &self.incoming {
            let arrived = &mut counted.inbox.received().counter.arrived;
            for (ssrc, seq, len, in_window) in arrived.drain(..) {
                report.record_rx(ssrc, 0, seq, len, in_window);
            }
        }
        let opus = find_pt(&self.rtc, Codec::Opus);
        for e in self.events.drain(..) {
            match e {
                Event::RtpPacket(pkt) => {
                    let len = pkt.payload.len();
                    Shared::add(&shared.packets_received, 1);
                    Shared::add(&shared.bytes_received, len as u64);
                    if let Some((tag, seq, sent_us)) = read_trailer(&pkt.payload) {
                        report.record_rx(*pkt.header.ssrc, tag, seq, len, measuring);
                        if measuring {
                            let received = if Some(pkt.header.payload_type) == opus {
                                Received::Audio
                            } else if pkt.header.marker {
                                Received::FrameEnd
                            } else {
                                Received::Video
                            };
                            report.record_latency(unix_micros().saturating_sub(sent_us), received);
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

/// A receive as a future for `select!`: until the peer's socket is readable
/// or, counted, the counting reader passed datagrams on (never without a peer).
pub async fn readable(p: Option<&Peer>) {
    match p.map(|p| &p.incoming) {
        Some(Incoming::Socket(socket)) => {
            let _ = socket.readable().await;
        }
        Some(Incoming::Counted(counted)) => counted.inbox.others_ready().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_peer_socket_asks_for_the_receive_buffer_it_is_given() {
        let ip = "127.0.0.1".parse().unwrap();
        let buffer = |p: &Peer| {
            socket2::SockRef::from(&p.sender)
                .recv_buffer_size()
                .unwrap()
        };
        let default = buffer(&Peer::new(ip, None, Instant::now(), None).unwrap());
        // Smaller than any system's default, so that the test tells; Linux
        // reports twice the size asked (it counts its bookkeeping).
        let asked = 100_000;
        assert_ne!(2 * asked, default);
        let peer = Peer::new(ip, Some(asked), Instant::now(), None).unwrap();
        assert_eq!(buffer(&peer), 2 * asked);
    }
}
