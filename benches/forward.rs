//! The forwarding hot path of relais-media: one SRTP packet from a publisher
//! into a [`Shard`] (SRTP decrypt, demux, per-subscriber forwarder rewrite,
//! SRTP encrypt per subscriber) and N = 1, 10, 100 datagrams out.
//!
//! Setup is a small in-memory world in the spirit of the media tests' harness
//! (own code, not shared): LiveKit-like str0m clients join through
//! `Shard::join`, answer the server's subscriber offers, publish one VP8 track
//! via `AddTrackRequest` + offer, and connect ICE/DTLS over a simulated
//! network. Then the publisher's str0m encrypts packets ahead of time
//! (untimed) and the benchmark times only `Shard::handle_datagram` + draining
//! the shard's outputs (the subscribers' copies are counted and dropped).
//! `forward/direct` is Relais's default egress (the copies protected and sent
//! by Relais itself), `forward/str0m` every copy through str0m's session drive.
//!
//! `fan_out` times the same for 100 and 300 subscribers with the shard's
//! thread alone and with the server's fan-out helpers driving chunks of the
//! subscriber sessions next to it (wall time, not CPU time: the helpers' work
//! is the point).

use std::collections::{BTreeMap, VecDeque};
use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use relais_media::fan_out::{DriveChunk, SessionDriver};
use relais_media::{JoinParams, MediaConfig, ParticipantKey, Shard, ShardOutput};
use relais_proto::livekit::{
    signal_request, signal_response, AddTrackRequest, ParticipantPermission, SessionDescription,
    SignalRequest, TrackSource, TrackType,
};
use relais_server::fan_out::FanOutPool;
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{RtpWrite, Ssrc};
use str0m::{Candidate, Event, Input, Output, Rtc};

const SERVER: &str = "10.0.0.1:7882";
const ROOM: &str = "bench";

struct Client {
    key: ParticipantKey,
    addr: SocketAddr,
    rtc: Rtc,
    deadline: Instant,
    connected: bool,
    publisher: bool,
    pending: Option<SdpPendingOffer>,
    offer_id: u32,
    mid: Option<Mid>,
    ssrc: Option<Ssrc>,
    pt: Option<Pt>,
    rtp_in: u64,
}

struct World {
    now: Instant,
    shard: Shard,
    server: SocketAddr,
    clients: Vec<Client>,
    net: VecDeque<(SocketAddr, SocketAddr, Vec<u8>)>,
    signals: VecDeque<(ParticipantKey, signal_response::Message)>,
}

fn rtc(addr: SocketAddr, now: Instant) -> Rtc {
    let mut rtc = Rtc::builder().set_rtp_mode(true).build(now);
    rtc.add_local_candidate(Candidate::host(addr, Protocol::Udp).unwrap());
    rtc
}

impl World {
    /// One publisher (its subscriber PC is unused) and `subs` subscribers.
    fn new(subs: usize, direct: bool) -> World {
        let now = Instant::now();
        let server: SocketAddr = SERVER.parse().unwrap();
        let mut config = MediaConfig::new(
            vec![relais_media::udp_host_candidate(server).unwrap()],
            "ND_bench".into(),
        )
        .unwrap();
        config.direct_audio = direct;
        config.direct_video = direct;
        let mut w = World {
            now,
            shard: Shard::new(0, config),
            server,
            clients: Vec::new(),
            net: VecDeque::new(),
            signals: VecDeque::new(),
        };
        for i in 0..=subs {
            let publisher = i == 0;
            let key = ParticipantKey(i as u64 + 1);
            let addr: SocketAddr = format!("10.1.{}.{}:40000", i / 250, i % 250 + 1)
                .parse()
                .unwrap();
            // A publisher's publisher PC and a subscriber's subscriber PC: one Rtc each.
            w.clients.push(Client {
                key,
                addr,
                rtc: rtc(addr, now),
                deadline: now,
                connected: false,
                publisher,
                pending: None,
                offer_id: 0,
                mid: None,
                ssrc: None,
                pt: None,
                rtp_in: 0,
            });
            let params = JoinParams {
                key,
                identity: format!("p{i}"),
                name: String::new(),
                metadata: String::new(),
                attributes: BTreeMap::new(),
                permission: ParticipantPermission {
                    can_subscribe: !publisher,
                    can_publish: publisher,
                    can_publish_data: true,
                    ..Default::default()
                },
                kind: 0,
                auto_subscribe: !publisher,
                protocol: 16,
                client_info: None,
            };
            w.shard.join(now, 0, ROOM, true, params).expect("join");
            w.collect();
        }
        let req = AddTrackRequest {
            cid: "cam".into(),
            name: "camera".into(),
            r#type: TrackType::Video as i32,
            source: TrackSource::Camera as i32,
            width: 1280,
            height: 720,
            ..Default::default()
        };
        w.signal(0, signal_request::Message::AddTrack(req));
        w
    }

    fn signal(&mut self, index: usize, m: signal_request::Message) {
        let key = self.clients[index].key;
        self.shard
            .handle_signal(self.now, key, SignalRequest { message: Some(m) });
        self.collect();
    }

    fn collect(&mut self) {
        let outgoing = self.shard.outgoing();
        for (t, contents) in outgoing.iter() {
            self.net
                .push_back((t.destination, t.source, contents.to_vec()));
        }
        outgoing.clear();
        while let Some(out) = self.shard.poll_output() {
            if let ShardOutput::Signal(k, m) = out {
                if let Some(m) = Arc::unwrap_or_clone(m).message {
                    self.signals.push_back((k, m));
                }
            }
        }
    }

    fn drain(&mut self, i: usize) {
        loop {
            let c = &mut self.clients[i];
            match c.rtc.poll_output().expect("client poll") {
                Output::Timeout(t) => {
                    c.deadline = t;
                    return;
                }
                Output::Transmit(t) => {
                    self.net
                        .push_back((t.destination, t.source, t.contents.to_vec()))
                }
                Output::Event(Event::Connected) => c.connected = true,
                Output::Event(Event::RtpPacket(_)) => c.rtp_in += 1,
                Output::Event(_) => {}
            }
        }
    }

    fn on_signal(&mut self, key: ParticipantKey, m: signal_response::Message) {
        use signal_response::Message as M;
        let i = (key.0 - 1) as usize;
        match m {
            M::Offer(sd) if !self.clients[i].publisher => {
                let offer = SdpOffer::from_sdp_string(&sd.sdp).unwrap();
                let answer = self.clients[i].rtc.sdp_api().accept_offer(offer).unwrap();
                self.drain(i);
                self.signal(
                    i,
                    signal_request::Message::Answer(SessionDescription {
                        r#type: "answer".into(),
                        sdp: answer.to_sdp_string(),
                        id: sd.id,
                        ..Default::default()
                    }),
                );
            }
            M::TrackPublished(_) if self.clients[i].publisher => {
                let c = &mut self.clients[i];
                let mut api = c.rtc.sdp_api();
                let mid = api.add_media(
                    MediaKind::Video,
                    Direction::SendOnly,
                    Some("stream".into()),
                    Some("cam".into()),
                    None,
                );
                let (offer, pending) = api.apply().unwrap();
                c.pending = Some(pending);
                c.mid = Some(mid);
                c.offer_id += 1;
                let id = c.offer_id;
                self.drain(i);
                self.signal(
                    i,
                    signal_request::Message::Offer(SessionDescription {
                        r#type: "offer".into(),
                        sdp: offer.to_sdp_string(),
                        id,
                        ..Default::default()
                    }),
                );
            }
            M::Answer(sd) if self.clients[i].publisher => {
                let c = &mut self.clients[i];
                let answer = SdpAnswer::from_sdp_string(&sd.sdp).unwrap();
                c.rtc
                    .sdp_api()
                    .accept_answer(c.pending.take().unwrap(), answer)
                    .unwrap();
                let mid = c.mid.unwrap();
                c.ssrc = c
                    .rtc
                    .direct_api()
                    .stream_tx_by_mid(mid, None)
                    .map(|s| s.ssrc());
                c.pt = c
                    .rtc
                    .codec_config()
                    .find(|p| p.spec().codec == Codec::Vp8)
                    .map(|p| p.pt());
                self.drain(i);
            }
            _ => {}
        }
    }

    /// Run the whole world (signals, datagrams, timers) for `d` of simulated time.
    fn run_for(&mut self, d: Duration, step: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.now += step;
            let now = self.now;
            loop {
                while let Some((k, m)) = self.signals.pop_front() {
                    self.on_signal(k, m);
                }
                let Some((dst, src, buf)) = self.net.pop_front() else {
                    break;
                };
                if dst == self.server {
                    self.shard
                        .handle_datagram(now, Protocol::Udp, src, dst, &buf);
                    self.collect();
                } else if let Some(i) = self.clients.iter().position(|c| c.addr == dst) {
                    let r = Receive::new(Protocol::Udp, src, dst, &buf).unwrap();
                    self.clients[i]
                        .rtc
                        .handle_input(Input::Receive(now, r))
                        .unwrap();
                    self.drain(i);
                }
            }
            if self.shard.poll_timeout().is_some_and(|t| t <= now) {
                self.shard.handle_timeout(now);
                self.collect();
            }
            for i in 0..self.clients.len() {
                if self.clients[i].deadline <= now {
                    self.clients[i]
                        .rtc
                        .handle_input(Input::Timeout(now))
                        .unwrap();
                    self.drain(i);
                }
            }
        }
    }

    /// Let the publisher's str0m encrypt `n` VP8 packets (1,000-byte payloads);
    /// returns the SRTP datagrams it would send to the server.
    fn publisher_packets(&mut self, n: usize, seq: &mut u64) -> Vec<Vec<u8>> {
        let c = &mut self.clients[0];
        let (ssrc, pt) = (c.ssrc.unwrap(), c.pt.unwrap());
        let mut out = Vec::with_capacity(n);
        for k in 0..n {
            let frame = *seq / 3;
            let first = (*seq).is_multiple_of(3);
            let mut payload = vec![
                if first { 0x90 } else { 0x80 },
                0x80,
                0x80 | ((frame >> 8) & 0x7f) as u8,
                frame as u8,
            ];
            if first {
                // A keyframe every 60 frames (the forwarder starts a subscriber on one).
                if frame.is_multiple_of(60) {
                    payload.extend_from_slice(&[
                        0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01,
                    ]);
                } else {
                    payload.extend_from_slice(&[0x11, 0x02, 0x00]);
                }
            }
            payload.resize(1000, 0x55);
            let now = self.now;
            let mut api = c.rtc.direct_api();
            let tx = api.stream_tx(&ssrc).unwrap();
            tx.write_rtp(
                RtpWrite::new(pt, (*seq).into(), (frame * 3000) as u32, now, payload)
                    .marker(*seq % 3 == 2)
                    .nackable(true),
            );
            *seq += 1;
            // str0m queues the packet; a timeout at `now` lets its pacer release it.
            c.rtc.handle_input(Input::Timeout(now)).unwrap();
            loop {
                match c.rtc.poll_output().unwrap() {
                    Output::Timeout(_) => break,
                    Output::Transmit(t)
                        if t.destination == self.server && t.contents.len() > 900 =>
                    {
                        out.push(t.contents.to_vec())
                    }
                    _ => {}
                }
            }
            let _ = k;
        }
        out
    }
}

/// A world of `subs` subscribers whose forwarders are all live.
fn ready_world(subs: usize, direct: bool, seq: &mut u64) -> World {
    let mut w = World::new(subs, direct);
    w.run_for(Duration::from_secs(3), Duration::from_millis(2));
    assert!(
        w.clients.iter().all(|c| c.connected),
        "all peer connections connect"
    );
    assert!(w.clients[0].ssrc.is_some(), "publisher negotiated");
    // Media through the whole world, so that every subscriber forwarder is
    // live and the video layer's kept packets (256) have all been made: what
    // is measured is the steady state, where no packet takes a new buffer.
    for _ in 0..100 {
        let pkts = w.publisher_packets(3, seq);
        for p in pkts {
            let src = w.clients[0].addr;
            w.net.push_back((w.server, src, p));
        }
        w.run_for(Duration::from_millis(33), Duration::from_millis(1));
    }
    let receiving = w.clients[1..].iter().filter(|c| c.rtp_in > 0).count();
    assert_eq!(receiving, subs, "every subscriber receives before timing");
    w
}

/// Time `iters` publisher packets through the shard: datagram in, timeout
/// round, copies out (counted, then dropped). Checks the fan-out happened.
fn time_packets(w: &mut World, seq: &mut u64, iters: u64, copies: &AtomicU64) -> Duration {
    let subs = w.clients.len() as u64 - 1;
    let mut total = Duration::ZERO;
    copies.store(0, Ordering::Relaxed);
    in_chunks(w, seq, iters as usize, |w, pkts| {
        let start = Instant::now();
        copies.fetch_add(forward_packets(w, pkts), Ordering::Relaxed);
        total += start.elapsed();
    });
    // A frame's copies leave with its last packet (every third): a call of
    // fewer packets may time none.
    let out = copies.load(Ordering::Relaxed);
    assert!(
        iters < 3 || out >= (iters * subs) / 2,
        "fan-out happened: {out} for {iters}×{subs}"
    );
    total
}

/// `count` new publisher packets handed to `measure` in chunks of up to 500,
/// the world kept alive (ICE, DTLS, RTCP) between chunks, unmeasured.
fn in_chunks(
    w: &mut World,
    seq: &mut u64,
    count: usize,
    mut measure: impl FnMut(&mut World, &[Vec<u8>]),
) {
    let mut left = count;
    while left > 0 {
        let n = left.min(500);
        left -= n;
        let pkts = w.publisher_packets(n, seq);
        measure(w, &pkts);
        w.run_for(Duration::from_millis(2), Duration::from_millis(1));
    }
}

/// The measured work: each of the publisher's packets into the shard, 1 ms
/// apart, with the timeout round it makes due; returns the copies that came
/// out. Not inlined, so that `benches/instructions.sh` can count the
/// instructions spent in it alone.
#[inline(never)]
fn forward_packets(w: &mut World, pkts: &[Vec<u8>]) -> u64 {
    let (server, src) = (w.server, w.clients[0].addr);
    let mut copies = 0;
    for p in pkts {
        w.now += Duration::from_millis(1);
        let now = w.now;
        w.shard
            .handle_datagram(now, Protocol::Udp, src, server, black_box(p));
        if w.shard.poll_timeout().is_some_and(|t| t <= now) {
            w.shard.handle_timeout(now);
        }
        while w.shard.poll_output().is_some() {}
        let outgoing = w.shard.outgoing();
        for (t, contents) in outgoing.iter() {
            copies += 1;
            black_box((t, contents));
        }
        outgoing.clear();
    }
    copies
}

/// `RELAIS_BENCH_PACKETS=N RELAIS_BENCH_SUBS=S`: instead of timing, put N
/// packets through the direct egress to S subscribers and say how many copies
/// went out, for a count of the instructions under callgrind
/// (`benches/instructions.sh`) — the same on a noisy machine as on a quiet
/// one, unlike time.
///
/// With `RELAIS_BENCH_COLD=1` each packet goes in alone after the caches were
/// overwritten (outside `forward_packets`): under callgrind's cache
/// simulation the last-level misses per packet are then the cache lines a
/// packet touches from a cold start, as when its shard wakes on a core that
/// ran something else meanwhile (`benches/cold-lines.sh`).
fn count_packets(packets: usize, subs: usize, cold: bool) {
    let mut seq = 1000u64;
    let mut w = ready_world(subs, true, &mut seq);
    let mut copies = 0;
    let mut other_work = vec![0u8; if cold { 16 << 20 } else { 0 }];
    in_chunks(&mut w, &mut seq, packets, |w, pkts| {
        if !cold {
            copies += forward_packets(w, pkts);
            return;
        }
        for one in pkts.chunks(1) {
            evict(&mut other_work);
            copies += forward_packets(w, one);
        }
    });
    println!("forward/direct/{subs}: {packets} packets, {copies} copies");
}

/// Writes every cache line of `buf`: what the core's other work leaves in
/// the caches.
#[inline(never)]
fn evict(buf: &mut [u8]) {
    for line in buf.chunks_mut(64) {
        line[0] = line[0].wrapping_add(1);
    }
    black_box(buf);
}

fn forward(c: &mut Criterion) {
    let mut g = c.benchmark_group("forward");
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(5));
    let copies = AtomicU64::new(0);
    for (egress, direct) in [("direct", true), ("str0m", false)] {
        for subs in [1usize, 10, 100] {
            let mut seq = 1000u64;
            let mut w = ready_world(subs, direct, &mut seq);
            g.throughput(Throughput::Elements(1));
            g.bench_with_input(BenchmarkId::new(egress, subs), &subs, |b, _| {
                b.iter_custom(|iters| time_packets(&mut w, &mut seq, iters, &copies))
            });
        }
    }
    g.finish();
}

/// The copies a chunk driven on a helper leaves, counted and dropped there
/// (the server's driver sends them from there).
struct CountingDriver {
    pool: Arc<FanOutPool>,
    copies: Arc<AtomicU64>,
}

impl SessionDriver for CountingDriver {
    fn threads(&self) -> usize {
        self.pool.helpers() + 1
    }

    fn drive(&self, chunks: &mut [DriveChunk<'_>]) {
        self.pool.for_each(chunks, |chunk, _| {
            chunk.drive();
            let n = chunk.outgoing.iter().map(black_box).count();
            chunk.outgoing.clear();
            self.copies.fetch_add(n as u64, Ordering::Relaxed);
        });
    }
}

/// A large room's fan-out on the shard's thread alone, and on it and the
/// helpers (one fewer than the cores) — wall time per packet.
fn fan_out(c: &mut Criterion) {
    let helpers = std::thread::available_parallelism().map_or(1, |n| n.get()) - 1;
    let Some(pool) = FanOutPool::start(helpers.max(1)).expect("helper threads") else {
        return;
    };
    let mut g = c.benchmark_group("fan_out");
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(1));
    for subs in [100usize, 300] {
        let mut seq = 1000u64;
        let mut w = ready_world(subs, true, &mut seq);
        let copies = Arc::new(AtomicU64::new(0));
        g.bench_with_input(BenchmarkId::new("in_place", subs), &subs, |b, _| {
            b.iter_custom(|iters| time_packets(&mut w, &mut seq, iters, &copies))
        });
        w.shard.set_session_driver(Box::new(CountingDriver {
            pool: pool.clone(),
            copies: copies.clone(),
        }));
        g.bench_with_input(BenchmarkId::new("with_helpers", subs), &subs, |b, _| {
            b.iter_custom(|iters| time_packets(&mut w, &mut seq, iters, &copies))
        });
    }
    g.finish();
}

criterion_group!(benches, forward, fan_out);

fn main() {
    let var = |name| std::env::var(name).ok().and_then(|n| n.parse().ok());
    if let Some(packets) = var("RELAIS_BENCH_PACKETS") {
        let cold = std::env::var_os("RELAIS_BENCH_COLD").is_some_and(|v| v == "1");
        count_packets(packets, var("RELAIS_BENCH_SUBS").unwrap_or(10), cold);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
