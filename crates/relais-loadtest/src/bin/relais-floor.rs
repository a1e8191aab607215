//! `relais-floor`: the least work an SFU must do per forwarded packet on this
//! machine, measured — receive SRTP packets (`recv`, one a call), decrypt each once,
//! re-encrypt it per subscriber with that subscriber's key (new SSRC/seq), and
//! send the copies with `sendmmsg` — to one sink on loopback, or to one sink
//! per subscriber (`--sink-per-subscriber`) on any address (`--sink-ip`: a
//! veth peer gives the copies the path an SFU's take in `compare.sh`).
//! Nothing else: no ICE, no RTCP, no rewriting logic, no allocation on the
//! path.
//!
//! Same crypto as str0m's default backend (aws-lc-rs AEAD AES-GCM, RFC 7714
//! IV/AAD layout; str0m prefers AEAD_AES_256_GCM). The forwarder runs on one
//! thread; its CPU time (`getrusage(RUSAGE_THREAD)`) is the denominator, so
//! the feeder and the sink threads are not counted. Report: forwarded packets
//! per CPU-second, and the forwarding latency (the feeder's send time, carried
//! in the payload, to the `sendmmsg` that hands the packet's last copy to the
//! kernel) — what any forwarder's latency is made of here at that load: the
//! queue in front of it and the machine's own pauses.

use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, AES_256_GCM};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "relais-floor")]
struct Args {
    /// Subscribers per incoming packet (fan-out).
    #[arg(long, default_value_t = 100)]
    subscribers: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Incoming packets per second (paced by the feeder); 0 = as fast as possible.
    #[arg(long, default_value_t = 2000)]
    input_pps: u64,
    /// RTP payload size in bytes (before the 16-byte GCM tag).
    #[arg(long, default_value_t = 1000)]
    payload: usize,
    /// AES key size: 256 (str0m's first choice) or 128.
    #[arg(long, default_value_t = 256)]
    aes: u32,
    /// Packets per sendmmsg call.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Input packets at random (exponential) intervals, as from many
    /// independent publishers, instead of evenly spaced.
    #[arg(long)]
    poisson: bool,
    /// Address the forwarder binds and the feeder sends to.
    #[arg(long, default_value = "127.0.0.1")]
    ip: Ipv4Addr,
    /// Address the sinks bind: the copies' destination. Another interface
    /// than `--ip` (a veth peer) makes the copies take the path an SFU's do
    /// in `compare.sh`.
    #[arg(long, default_value = "127.0.0.1")]
    sink_ip: Ipv4Addr,
    /// One sink socket per subscriber, each subscriber's copies sent to its
    /// own (as an SFU must), instead of every copy to one socket.
    #[arg(long)]
    sink_per_subscriber: bool,
    /// Run the forwarder thread on this CPU and the feeder and sink on the
    /// others, so that they do not share its core.
    #[arg(long)]
    forwarder_cpu: Option<usize>,
    #[arg(long)]
    json: bool,
}

const HDR: usize = 12;
const TAG: usize = 16;
/// The feeder's send time at the start of the payload (ns since `epoch`, big-endian).
const STAMP: usize = 8;

/// Random numbers for the feeder's intervals (xorshift64: enough for timing).
struct Xorshift(u64);

impl Xorshift {
    /// Uniform in (0, 1].
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }
}

struct SrtpKey {
    key: LessSafeKey,
    salt: [u8; 12],
}

impl SrtpKey {
    fn new(aes: u32, seed: u8) -> Self {
        let (alg, len) = if aes == 128 {
            (&AES_128_GCM, 16)
        } else {
            (&AES_256_GCM, 32)
        };
        let bytes: Vec<u8> = (0..len)
            .map(|i| seed.wrapping_mul(31).wrapping_add(i as u8))
            .collect();
        let key = LessSafeKey::new(UnboundKey::new(alg, &bytes).expect("key"));
        let mut salt = [0u8; 12];
        for (i, s) in salt.iter_mut().enumerate() {
            *s = seed ^ (i as u8 * 7);
        }
        SrtpKey { key, salt }
    }

    /// RFC 7714 §8.1: IV = (0x0000 || SSRC || ROC || SEQ) XOR salt.
    fn nonce(&self, ssrc: u32, roc: u32, seq: u16) -> Nonce {
        let mut iv = [0u8; 12];
        iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
        iv[6..10].copy_from_slice(&roc.to_be_bytes());
        iv[10..12].copy_from_slice(&seq.to_be_bytes());
        for (a, b) in iv.iter_mut().zip(self.salt) {
            *a ^= b;
        }
        Nonce::assume_unique_for_key(iv)
    }

    /// Encrypt `buf[HDR..len]` in place, append the tag; returns the new length.
    fn seal(&self, buf: &mut [u8], len: usize, roc: u32) -> usize {
        let ssrc = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]);
        let seq = u16::from_be_bytes([buf[2], buf[3]]);
        let (hdr, rest) = buf.split_at_mut(HDR);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                self.nonce(ssrc, roc, seq),
                Aad::from(&hdr[..]),
                &mut rest[..len - HDR],
            )
            .expect("seal");
        rest[len - HDR..len - HDR + TAG].copy_from_slice(tag.as_ref());
        len + TAG
    }

    /// Decrypt in place; returns the plaintext length (header included).
    fn open(&self, buf: &mut [u8], len: usize, roc: u32) -> Option<usize> {
        let ssrc = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]);
        let seq = u16::from_be_bytes([buf[2], buf[3]]);
        let (hdr, rest) = buf.split_at_mut(HDR);
        let plain = self
            .key
            .open_in_place(
                self.nonce(ssrc, roc, seq),
                Aad::from(&hdr[..]),
                &mut rest[..len - HDR],
            )
            .ok()?;
        Some(HDR + plain.len())
    }
}

fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain old data.
    let mut sa: libc::sockaddr_in = unsafe { zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_port = addr.port().to_be();
    sa.sin_addr.s_addr = u32::from(*addr.ip()).to_be();
    sa
}

fn thread_cpu() -> f64 {
    // SAFETY: getrusage writes into the struct we pass.
    let mut ru: libc::rusage = unsafe { zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

fn set_buf(sock: &UdpSocket, opt: libc::c_int, bytes: libc::c_int) {
    set_int(sock, libc::SOL_SOCKET, opt, bytes);
}

fn set_int(sock: &UdpSocket, level: libc::c_int, opt: libc::c_int, value: libc::c_int) {
    // SAFETY: a valid fd and a c_int option value.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            opt,
            &value as *const _ as *const libc::c_void,
            size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Keep the calling thread on `cpus` (ignored where the kernel refuses).
fn pin_thread(cpus: impl IntoIterator<Item = usize>) {
    // SAFETY: cpu_set_t is plain old data, filled by the CPU_* helpers, and
    // the call only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = zeroed();
        for cpu in cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Every CPU but `cpu`, or all of them on a single-CPU machine.
fn other_cpus(cpu: usize) -> Vec<usize> {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    let others: Vec<usize> = (0..n).filter(|c| *c != cpu).collect();
    if others.is_empty() {
        (0..n).collect()
    } else {
        others
    }
}

/// Read every datagram that reaches `sinks` until `stop` (one epoll set,
/// level-triggered, so one sink or a thousand take the same loop).
fn drain(sinks: &[UdpSocket], stop: &AtomicBool, sunk: &AtomicU64) {
    // SAFETY: epoll on fds that outlive this function; the event array is ours.
    let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(epoll >= 0, "epoll_create1");
    for (i, sink) in sinks.iter().enumerate() {
        sink.set_nonblocking(true).expect("nonblocking sink");
        let mut interest = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: i as u64,
        };
        // SAFETY: as above.
        unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, sink.as_raw_fd(), &mut interest) };
    }
    let mut ready = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: as above.
        let n = unsafe { libc::epoll_wait(epoll, ready.as_mut_ptr(), ready.len() as i32, 100) };
        for event in &ready[..usize::try_from(n).unwrap_or(0)] {
            let sink = &sinks[event.u64 as usize];
            while sink.recv(&mut buf).is_ok() {
                sunk.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    // SAFETY: closing the fd created above.
    unsafe { libc::close(epoll) };
}

/// The `q` quantile of sorted samples (nearest rank), in milliseconds.
fn quantile_ms(sorted_us: &[u32], q: f64) -> Option<f64> {
    let last = sorted_us.len().checked_sub(1)?;
    let rank = ((q * sorted_us.len() as f64).ceil() as usize).clamp(1, last + 1) - 1;
    Some(f64::from(sorted_us[rank]) / 1000.0)
}

fn v4(a: SocketAddr) -> SocketAddrV4 {
    match a {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => unreachable!("bound to an IPv4 address"),
    }
}

fn main() {
    let args = Args::parse();
    let payload = args.payload.max(STAMP);
    // The feeder stamps each packet with its send time since `epoch`.
    let epoch = Instant::now();
    let others = args.forwarder_cpu.map(other_cpus);
    let stop = Arc::new(AtomicBool::new(false));
    let subs = args.subscribers.max(1);
    let sinks: Vec<UdpSocket> = (0..if args.sink_per_subscriber { subs } else { 1 })
        .map(|_| {
            let sink = UdpSocket::bind((args.sink_ip, 0)).expect("sink");
            set_buf(
                &sink,
                libc::SO_RCVBUF,
                if args.sink_per_subscriber {
                    1 << 20
                } else {
                    8 << 20
                },
            );
            sink
        })
        .collect();
    let dests: Vec<libc::sockaddr_in> = sinks
        .iter()
        .map(|s| sockaddr(v4(s.local_addr().unwrap())))
        .collect();
    let input = UdpSocket::bind((args.ip, 0)).expect("input");
    set_buf(&input, libc::SO_RCVBUF, 8 << 20);
    input.set_read_timeout(Some(Duration::from_millis(50))).ok();
    let input_addr = input.local_addr().unwrap();
    let out_sock = UdpSocket::bind((args.ip, 0)).expect("out");
    set_buf(&out_sock, libc::SO_SNDBUF, 4 << 20);
    // Don't-fragment, as Relais's media socket: the kernel then skips numbering
    // each datagram (IP ID), work any forwarder can leave out.
    set_int(
        &out_sock,
        libc::IPPROTO_IP,
        libc::IP_MTU_DISCOVER,
        libc::IP_PMTUDISC_PROBE,
    );

    // Sinks: drain what the forwarder sends (their CPU is not counted).
    let sunk = Arc::new(AtomicU64::new(0));
    let sink_thread = {
        let (stop, sunk, others) = (stop.clone(), sunk.clone(), others.clone());
        std::thread::spawn(move || {
            if let Some(cpus) = others {
                pin_thread(cpus);
            }
            drain(&sinks, &stop, &sunk);
        })
    };

    // Feeder: a publisher's SRTP packets, paced.
    let fed = Arc::new(AtomicU64::new(0));
    let feeder = {
        let (stop, fed) = (stop.clone(), fed.clone());
        let (aes, pps, poisson, ip) = (args.aes, args.input_pps, args.poisson, args.ip);
        std::thread::spawn(move || {
            if let Some(cpus) = others {
                pin_thread(cpus);
            }
            let key = SrtpKey::new(aes, 1);
            let sock = UdpSocket::bind((ip, 0)).expect("feeder");
            let mut buf = vec![0u8; HDR + payload + TAG];
            let mut due = Instant::now();
            let mut random = Xorshift(0x9e37_79b9_7f4a_7c15);
            let mut seq: u16 = 0;
            let mut n: u64 = 0;
            while !stop.load(Ordering::Relaxed) {
                if pps > 0 {
                    let mean = 1.0 / pps as f64;
                    due += Duration::from_secs_f64(if poisson {
                        -mean * random.unit().ln()
                    } else {
                        mean
                    });
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                }
                buf[0] = 0x80;
                buf[1] = 96;
                buf[2..4].copy_from_slice(&seq.to_be_bytes());
                buf[4..8].copy_from_slice(&(n as u32 * 3000).to_be_bytes());
                buf[8..12].copy_from_slice(&0x1234_5678u32.to_be_bytes());
                buf[HDR..HDR + payload].fill(0x55);
                let sent_at = epoch.elapsed().as_nanos() as u64;
                buf[HDR..HDR + STAMP].copy_from_slice(&sent_at.to_be_bytes());
                let len = key.seal(&mut buf, HDR + payload, 0);
                let _ = sock.send_to(&buf[..len], input_addr);
                seq = seq.wrapping_add(1);
                n += 1;
                fed.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    // The forwarder.
    if let Some(cpu) = args.forwarder_cpu {
        pin_thread([cpu]);
    }
    let batch = args.batch.clamp(1, 1024);
    let in_key = SrtpKey::new(args.aes, 1);
    let sub_keys: Vec<SrtpKey> = (0..subs)
        .map(|i| SrtpKey::new(args.aes, 2 + i as u8))
        .collect();
    let mut sub_seq: Vec<u16> = vec![0; subs];
    let mut bufs: Vec<[u8; 1500]> = vec![[0u8; 1500]; batch];
    // The headers of one sendmmsg, allocated once; each slot's iovec points
    // at its buffer for good, its length and destination are set per copy.
    let mut iovs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr() as *mut libc::c_void,
            iov_len: 0,
        })
        .collect();
    // SAFETY: mmsghdr is plain old data.
    let mut msgs: Vec<libc::mmsghdr> = (0..batch).map(|_| unsafe { zeroed() }).collect();
    for (m, v) in msgs.iter_mut().zip(iovs.iter_mut()) {
        m.msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        m.msg_hdr.msg_iov = v;
        m.msg_hdr.msg_iovlen = 1;
    }
    let mut inbuf = [0u8; 1500];
    // Forwarding latency per input packet, µs; reserved so that recording allocates nothing.
    let expected = (args.input_pps as f64 * args.duration * 1.5) as usize;
    let mut latency_us: Vec<u32> = Vec::with_capacity(expected.clamp(1024, 1 << 24));
    let end = Instant::now() + Duration::from_secs_f64(args.duration);
    let cpu0 = thread_cpu();
    let t0 = Instant::now();
    let (mut received, mut sent, mut calls, mut send_errors) = (0u64, 0u64, 0u64, 0u64);
    let fd = out_sock.as_raw_fd();
    let mut flush = |msgs: &mut [libc::mmsghdr], sent: &mut u64| {
        let n = msgs.len();
        let mut off = 0;
        while off < n {
            // SAFETY: msgs[off..n] point at live buffers and destinations.
            let r = unsafe { libc::sendmmsg(fd, msgs[off..].as_mut_ptr(), (n - off) as u32, 0) };
            calls += 1;
            if r <= 0 {
                send_errors += 1;
                break;
            }
            off += r as usize;
        }
        *sent += off as u64;
    };
    let mut pending = 0usize;
    while Instant::now() < end {
        let len = match input.recv(&mut inbuf) {
            Ok(n) => n,
            Err(_) => continue,
        };
        received += 1;
        let Some(plain) = in_key.open(&mut inbuf, len, 0) else {
            continue;
        };
        for (i, key) in sub_keys.iter().enumerate() {
            let b = &mut bufs[pending];
            b[..plain].copy_from_slice(&inbuf[..plain]);
            b[2..4].copy_from_slice(&sub_seq[i].to_be_bytes());
            b[8..12].copy_from_slice(&(0x1000_0000u32 + i as u32).to_be_bytes());
            sub_seq[i] = sub_seq[i].wrapping_add(1);
            iovs[pending].iov_len = key.seal(b, plain, 0);
            msgs[pending].msg_hdr.msg_name =
                &dests[i % dests.len()] as *const _ as *mut libc::c_void;
            pending += 1;
            if pending == batch {
                flush(&mut msgs[..pending], &mut sent);
                pending = 0;
            }
        }
        if pending > 0 {
            flush(&mut msgs[..pending], &mut sent);
            pending = 0;
        }
        let mut stamp = [0u8; STAMP];
        stamp.copy_from_slice(&inbuf[HDR..HDR + STAMP]);
        let waited = (epoch.elapsed().as_nanos() as u64).saturating_sub(u64::from_be_bytes(stamp));
        latency_us.push(u32::try_from(waited / 1000).unwrap_or(u32::MAX));
    }
    let cpu = thread_cpu() - cpu0;
    let wall = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = feeder.join();
    let _ = sink_thread.join();
    let per_cpu_s = sent as f64 / cpu.max(1e-9);
    latency_us.sort_unstable();
    let (p50, p99) = (
        quantile_ms(&latency_us, 0.5),
        quantile_ms(&latency_us, 0.99),
    );
    let result = serde_json::json!({
        "subscribers": subs,
        "aes_bits": args.aes,
        "payload_bytes": payload,
        "batch": batch,
        "sinks": dests.len(),
        "sink_ip": args.sink_ip.to_string(),
        "duration_s": wall,
        "input_fed": fed.load(Ordering::Relaxed),
        "input_received": received,
        "packets_out": sent,
        "sink_received": sunk.load(Ordering::Relaxed),
        "sendmmsg_calls": calls,
        "send_errors": send_errors,
        "forwarder_cpu_seconds": cpu,
        "forwarder_cpu_percent": 100.0 * cpu / wall,
        "forwarded_packets_per_cpu_second": per_cpu_s,
        "ns_per_forwarded_packet": 1e9 / per_cpu_s,
        "arrivals": if args.poisson { "poisson" } else { "even" },
        "forwarder_cpu": args.forwarder_cpu,
        "latency_ms_p50": p50,
        "latency_ms_p99": p99,
        "latency_ms_max": quantile_ms(&latency_us, 1.0),
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result).unwrap());
    } else {
        println!(
            "floor: {subs} subscribers, AES-{}-GCM, {} B payload, batch {batch}: {sent} packets out in {cpu:.3} CPU-s \
             ({:.0}% of {wall:.1} s) = {per_cpu_s:.0} forwarded packets per CPU-second ({:.0} ns/packet); \
             in {received}/{} fed, sink got {}; latency p50 {:.2} / p99 {:.2} ms",
            args.aes,
            payload,
            100.0 * cpu / wall,
            1e9 / per_cpu_s,
            fed.load(Ordering::Relaxed),
            sunk.load(Ordering::Relaxed),
            p50.unwrap_or(f64::NAN),
            p99.unwrap_or(f64::NAN),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank_in_milliseconds() {
        let samples: Vec<u32> = (1..=100).map(|n| n * 1000).collect();
        assert_eq!(quantile_ms(&samples, 0.5), Some(50.0));
        assert_eq!(quantile_ms(&samples, 0.99), Some(99.0));
        assert_eq!(quantile_ms(&samples, 1.0), Some(100.0));
        assert_eq!(quantile_ms(&samples, 0.0), Some(1.0));
        assert_eq!(quantile_ms(&[], 0.5), None);
    }

    #[test]
    fn poisson_intervals_average_to_the_mean() {
        let mut random = Xorshift(0x9e37_79b9_7f4a_7c15);
        let n = 100_000;
        let mean: f64 = (0..n).map(|_| -random.unit().ln()).sum::<f64>() / f64::from(n);
        assert!((mean - 1.0).abs() < 0.02, "mean {mean}");
    }

    #[test]
    fn drain_reads_every_sink() {
        let sinks: Vec<UdpSocket> = (0..3)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let dests: Vec<SocketAddr> = sinks.iter().map(|s| s.local_addr().unwrap()).collect();
        let (stop, sunk) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let drainer = {
            let (stop, sunk) = (stop.clone(), sunk.clone());
            std::thread::spawn(move || drain(&sinks, &stop, &sunk))
        };
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        for (i, dest) in dests.iter().enumerate() {
            for _ in 0..=i {
                sender.send_to(b"copy", dest).unwrap();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while sunk.load(Ordering::Relaxed) < 6 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        stop.store(true, Ordering::Relaxed);
        drainer.join().unwrap();
        assert_eq!(sunk.load(Ordering::Relaxed), 6);
    }

    #[test]
    fn seal_open_round_trip() {
        for aes in [128, 256] {
            let k = SrtpKey::new(aes, 9);
            let mut buf = [0u8; 200];
            buf[0] = 0x80;
            buf[2] = 1;
            buf[8] = 7;
            buf[HDR..100].fill(0xab);
            let n = k.seal(&mut buf, 100, 0);
            assert_eq!(n, 116);
            assert_ne!(buf[HDR], 0xab);
            assert_eq!(k.open(&mut buf, n, 0), Some(100));
            assert!(buf[HDR..100].iter().all(|b| *b == 0xab));
        }
    }
}
