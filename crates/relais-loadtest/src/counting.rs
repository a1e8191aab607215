//! One thread that reads the sockets of every subscriber that counts its
//! media instead of decrypting it (`--decoding-subscribers`).
//!
//! Why: those subscribers receive most of a large run's packets, and when
//! each read its own socket, every few datagrams woke its task — tokio's
//! reactor, the task's turn, a `select!` re-armed, a read per datagram and
//! one more to find the socket empty: ~4.5 µs of the load generator's CPU per
//! packet received on the Intel host of docs/benchmarks.md, more than the
//! server spent forwarding it, so that the server could not be driven near a
//! full core without the generator's own core full and its frames late.
//! Here a counted packet needs no promptness: the reader takes turns
//! [`TURN`] apart, and in each one `epoll_wait` names every socket that has
//! datagrams, one `recvmmsg` takes them, each RTP packet is counted from its
//! clear header, and only the rest — STUN, DTLS, RTCP, a few datagrams a
//! second — goes on to the participant's task.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::{SockAddr, SockAddrStorage};
use tokio::sync::Notify;

use crate::stats::Shared;

/// How long the reader sleeps between turns. A socket's buffer holds far
/// more than a millisecond of a subscriber's media.
const TURN: Duration = Duration::from_millis(1);
/// Datagrams one `recvmmsg` takes from a socket; what is left is reported
/// again in the next turn (the epoll set is level-triggered).
const READS_PER_CALL: usize = 16;
/// Longer than any datagram WebRTC sends.
const DATAGRAM_BUFFER: usize = 2048;

/// The reading thread and the sockets it reads; stops the thread when dropped.
pub struct CountingReader {
    inner: Arc<Inner>,
    thread: Option<JoinHandle<()>>,
}

struct Inner {
    epoll: OwnedFd,
    slots: Mutex<Slots>,
    stop: AtomicBool,
}

/// Registered sockets by index (the epoll event's data); freed indices are reused.
#[derive(Default)]
struct Slots {
    entries: Vec<Option<Slot>>,
    free: Vec<usize>,
}

struct Slot {
    socket: UdpSocket,
    inbox: Arc<Inbox>,
}

/// What the reader leaves for one subscriber's task.
#[derive(Default)]
pub struct Inbox {
    received: Mutex<Received>,
    /// Signalled when `Received::others` has datagrams.
    others_ready: Notify,
}

#[derive(Default)]
pub struct Received {
    pub counter: RtpCounter,
    /// Datagrams that are not RTP, with their sender, for str0m.
    pub others: Vec<(SocketAddr, Vec<u8>)>,
}

impl Inbox {
    pub fn received(&self) -> MutexGuard<'_, Received> {
        self.received.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Until the reader has left datagrams in `others` (at once if it did
    /// since they were last taken).
    pub async fn others_ready(&self) {
        self.others_ready.notified().await
    }
}

/// A subscriber's socket in the reader; dropping it takes the socket out.
pub struct Counted {
    pub inbox: Arc<Inbox>,
    index: usize,
    inner: Arc<Inner>,
}

impl CountingReader {
    /// Start the thread; it adds what it counts to `shared`.
    pub fn start(shared: Arc<Shared>) -> io::Result<Self> {
        // SAFETY: no pointers; the fd it returns is checked and then owned.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let inner = Arc::new(Inner {
            // SAFETY: a new fd of ours that nothing else owns.
            epoll: unsafe { OwnedFd::from_raw_fd(fd) },
            slots: Mutex::default(),
            stop: AtomicBool::new(false),
        });
        let thread = std::thread::Builder::new()
            .name("counting-reader".into())
            .spawn({
                let inner = inner.clone();
                move || inner.run(&shared)
            })?;
        Ok(CountingReader {
            inner,
            thread: Some(thread),
        })
    }

    /// From now on the reader reads `socket` (a handle of the subscriber's
    /// own, which the subscriber keeps for sending).
    pub fn register(&self, socket: UdpSocket) -> io::Result<Counted> {
        socket.set_nonblocking(true)?;
        let inbox = Arc::new(Inbox::default());
        let mut slots = self.inner.slots();
        let index = slots.free.pop().unwrap_or(slots.entries.len());
        let mut interest = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: index as u64,
        };
        // SAFETY: both fds are open; the kernel copies `interest`.
        let added = unsafe {
            libc::epoll_ctl(
                self.inner.epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                socket.as_raw_fd(),
                &mut interest,
            )
        };
        if added < 0 {
            let error = io::Error::last_os_error();
            slots.free.push(index);
            return Err(error);
        }
        let slot = Some(Slot {
            socket,
            inbox: inbox.clone(),
        });
        match slots.entries.get_mut(index) {
            Some(entry) => *entry = slot,
            None => slots.entries.push(slot),
        }
        Ok(Counted {
            inbox,
            index,
            inner: self.inner.clone(),
        })
    }
}

impl Drop for CountingReader {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut slots = self.inner.slots();
        if let Some(slot) = slots.entries.get_mut(self.index).and_then(Option::take) {
            // SAFETY: both fds are open (the socket closes when `slot` drops,
            // after this); a null event is allowed for EPOLL_CTL_DEL.
            unsafe {
                libc::epoll_ctl(
                    self.inner.epoll.as_raw_fd(),
                    libc::EPOLL_CTL_DEL,
                    slot.socket.as_raw_fd(),
                    std::ptr::null_mut(),
                )
            };
            slots.free.push(self.index);
        }
    }
}

impl Inner {
    fn slots(&self) -> MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run(&self, shared: &Shared) {
        let mut ready = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
        let mut reads = Reads::new();
        while !self.stop.load(Ordering::Relaxed) {
            // SAFETY: the epoll fd is ours and open; the kernel writes at
            // most `ready.len()` events into `ready`.
            let n = unsafe {
                libc::epoll_wait(
                    self.epoll.as_raw_fd(),
                    ready.as_mut_ptr(),
                    ready.len() as i32,
                    100,
                )
            };
            let Ok(n) = usize::try_from(n) else {
                continue; // interrupted
            };
            let (mut packets, mut bytes) = (0, 0);
            let measuring = shared.measuring.load(Ordering::Relaxed);
            let slots = self.slots();
            for event in &ready[..n] {
                // An event for a socket taken out since is skipped (or, its
                // index reused, reads the new one: level-triggered, harmless).
                let Some(Some(slot)) = slots.entries.get(event.u64 as usize) else {
                    continue;
                };
                let count = reads.receive(&slot.socket);
                let mut received = slot.inbox.received();
                let others_before = received.others.len();
                for i in 0..count {
                    let datagram = reads.datagram(i);
                    if let Some(payload) = received.counter.count(datagram, measuring) {
                        packets += 1;
                        bytes += payload as u64;
                    } else if let Some(from) = reads.source(i) {
                        received.others.push((from, datagram.to_vec()));
                    }
                }
                let others = received.others.len() > others_before;
                drop(received);
                if others {
                    slot.inbox.others_ready.notify_one();
                }
            }
            drop(slots);
            Shared::add(&shared.packets_received, packets);
            Shared::add(&shared.bytes_received, bytes);
            if n > 0 {
                std::thread::sleep(TURN);
            }
        }
    }
}

/// The buffers and headers of one `recvmmsg` of up to [`READS_PER_CALL`]
/// datagrams. The headers point into the other fields' heap memory, so this
/// lives on the reader's thread and is never resized.
struct Reads {
    buffers: Vec<[u8; DATAGRAM_BUFFER]>,
    iovecs: Vec<libc::iovec>,
    names: Vec<SockAddrStorage>,
    headers: Vec<libc::mmsghdr>,
    filled: usize,
}

impl Reads {
    fn new() -> Self {
        let mut reads = Reads {
            buffers: vec![[0; DATAGRAM_BUFFER]; READS_PER_CALL],
            iovecs: Vec::with_capacity(READS_PER_CALL),
            names: (0..READS_PER_CALL)
                .map(|_| SockAddrStorage::zeroed())
                .collect(),
            headers: Vec::with_capacity(READS_PER_CALL),
            filled: 0,
        };
        for buffer in &mut reads.buffers {
            reads.iovecs.push(libc::iovec {
                iov_base: buffer.as_mut_ptr().cast(),
                iov_len: DATAGRAM_BUFFER,
            });
        }
        for i in 0..READS_PER_CALL {
            // SAFETY: all-zero is a valid mmsghdr (null pointers, zero lengths).
            let mut header: libc::mmsghdr = unsafe { std::mem::zeroed() };
            header.msg_hdr.msg_iov = &mut reads.iovecs[i];
            header.msg_hdr.msg_iovlen = 1;
            header.msg_hdr.msg_name = std::ptr::from_mut(&mut reads.names[i]).cast();
            reads.headers.push(header);
        }
        reads
    }

    /// Take what `socket` holds, up to [`READS_PER_CALL`] datagrams, without
    /// waiting; how many.
    fn receive(&mut self, socket: &UdpSocket) -> usize {
        for (header, name) in self.headers.iter_mut().zip(&self.names) {
            header.msg_hdr.msg_namelen = name.size_of();
        }
        // SAFETY: each header points at its own iovec (and through it a
        // buffer of DATAGRAM_BUFFER bytes) and its own address slot, all
        // alive and unmoved while `self` is; the kernel writes within them.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                self.headers.as_mut_ptr(),
                READS_PER_CALL as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        self.filled = usize::try_from(n).unwrap_or(0);
        self.filled
    }

    /// Datagram `i` of the last [`Reads::receive`].
    fn datagram(&self, i: usize) -> &[u8] {
        let len = self.headers[..self.filled][i].msg_len as usize;
        &self.buffers[i][..len.min(DATAGRAM_BUFFER)]
    }

    /// The sender of datagram `i` of the last [`Reads::receive`].
    fn source(&self, i: usize) -> Option<SocketAddr> {
        let len = self.headers[..self.filled][i].msg_hdr.msg_namelen;
        // SAFETY: the storage is plain bytes (a C `sockaddr_storage`, no
        // drop), so a copy is a valid value; the kernel wrote a socket
        // address of `len` bytes into it.
        unsafe { SockAddr::new(std::ptr::read(&self.names[i]), len) }.as_socket()
    }
}

/// Received RTP counted from the clear header: per SSRC the extended sequence
/// number of the last packet, and what arrived since the report last took it.
#[derive(Default)]
pub struct RtpCounter {
    /// (SSRC, extended sequence number): a subscriber receives a few streams,
    /// and a short list is searched faster than a map is hashed.
    extended: Vec<(u32, u32)>,
    /// (SSRC, extended sequence number, payload bytes, in the measurement
    /// window as it arrived).
    pub arrived: Vec<(u32, u32, usize, bool)>,
}

impl RtpCounter {
    /// Count `buf` if it is RTP (not RTCP, RFC 5761): its payload's bytes;
    /// `None` otherwise. `measuring`: it arrived in the measurement window.
    pub fn count(&mut self, buf: &[u8], measuring: bool) -> Option<usize> {
        let (ssrc, seq, header_len) = rtp_header(buf)?;
        let extended = match self.extended.iter_mut().find(|(s, _)| *s == ssrc) {
            // The nearest extension of `seq` to the last one (wraps at 2^16).
            Some((_, last)) => {
                *last = last.wrapping_add(i32::from(seq.wrapping_sub(*last as u16) as i16) as u32);
                *last
            }
            None => {
                let first = u32::from(seq) + (1 << 16);
                self.extended.push((ssrc, first));
                first
            }
        };
        // SRTP's authentication tag (16 bytes with AES-GCM) is not payload.
        let payload = buf.len().saturating_sub(header_len + 16);
        self.arrived.push((ssrc, extended, payload, measuring));
        Some(payload)
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
            assert_eq!(
                counter.count(&rtp(7, seq, 0, Some(2), 100), false),
                Some(100)
            );
        }
        let seqs: Vec<u32> = counter.arrived.iter().map(|a| a.1).collect();
        // Continuous across the wrap, and a late packet keeps its place.
        assert_eq!(seqs, [131070, 131071, 131072, 131074, 131073]);
        assert!(counter.arrived.iter().all(|a| a.0 == 7 && a.2 == 100));
        assert_eq!(counter.count(&rtp(9, 10, 2, None, 40), true), Some(40));
        assert_eq!(counter.arrived.last(), Some(&(9, 65546, 40, true)));
    }

    #[tokio::test]
    async fn the_reader_counts_rtp_and_passes_the_rest_on_until_taken_out() {
        let shared = Arc::new(Shared::default());
        let reader = CountingReader::start(shared.clone()).unwrap();
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = socket.local_addr().unwrap();
        let counted = reader.register(socket.try_clone().unwrap()).unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        for seq in 1..=20 {
            sender.send_to(&rtp(5, seq, 0, None, 50), to).unwrap();
        }
        let stun = [0u8, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42, 0, 0, 0, 0, 0, 0, 0, 0];
        sender.send_to(&stun, to).unwrap();
        let wait = Duration::from_secs(5);
        tokio::time::timeout(wait, counted.inbox.others_ready())
            .await
            .expect("the STUN datagram passed on");
        let deadline = std::time::Instant::now() + wait;
        while Shared::get(&shared.packets_received) < 20 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(Shared::get(&shared.packets_received), 20);
        assert_eq!(Shared::get(&shared.bytes_received), 20 * 50);
        {
            let received = counted.inbox.received();
            assert_eq!(
                received.others,
                [(sender.local_addr().unwrap(), stun.to_vec())]
            );
            let seqs: Vec<u32> = received.counter.arrived.iter().map(|a| a.1).collect();
            assert_eq!(seqs, (65537..=65556).collect::<Vec<u32>>());
        }
        // Taken out, its socket is read no more.
        drop(counted);
        sender.send_to(&rtp(5, 21, 0, None, 50), to).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(Shared::get(&shared.packets_received), 20);
        let mut buffer = [0; 64];
        assert!(socket.recv(&mut buffer).is_ok(), "left in the socket");
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
            assert_eq!(counter.count(buf, true), None);
        }
        assert!(counter.arrived.is_empty());
    }
}
