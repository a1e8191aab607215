//! Batched I/O on the media UDP socket: `recvmmsg` in, `sendmmsg` out, and
//! the socket's kernel buffer sizes.
//!
//! Why: one system call per datagram was a third of the server's CPU when
//! forwarding (docs/benchmarks.md, "Top costs"). A shard fans each packet out
//! to every subscriber, so outgoing datagrams come in runs, and under load the
//! socket holds several incoming datagrams whenever we look.
//!
//! Not done: UDP GSO (`UDP_SEGMENT`). It only merges same-size datagrams to
//! one destination, while fan-out sends one copy to each of many destinations.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;
use std::ptr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use str0m::net::Transmit;
use tracing::{debug, info, warn};

/// Datagrams per `recvmmsg` / `sendmmsg` call.
pub const BATCH: usize = 64;

/// Kernel buffer asked for in each direction: a few milliseconds of a busy
/// node's traffic, so a shard that is briefly late loses nothing in the socket.
const SOCKET_BUFFER_BYTES: usize = 4 << 20;

/// How long a send may wait for room in a full socket buffer, once per batch,
/// before the rest of the batch is dropped: a shard must not stall on the socket.
const SEND_WAIT_MS: libc::c_int = 1;

/// Ask the kernel for [`SOCKET_BUFFER_BYTES`] of receive and send buffer and log
/// what it granted. With `CAP_NET_ADMIN` the `*FORCE` options pass the
/// `net.core.{r,w}mem_max` limits; without it the plain options are capped by them.
pub fn size_buffers(socket: &UdpSocket) {
    let fd = socket.as_raw_fd();
    let requested = SOCKET_BUFFER_BYTES as libc::c_int;
    let mut granted = [0; 2];
    for (slot, (force, plain)) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ]
    .into_iter()
    .enumerate()
    {
        if set_option(fd, force, requested).is_err() {
            if let Err(e) = set_option(fd, plain, requested) {
                warn!(error = %e, "cannot size the media socket's buffer");
            }
        }
        // Linux reports twice the usable size (it counts its bookkeeping).
        granted[slot] = get_option(fd, plain).map_or(0, |v| v / 2);
    }
    let [receive, send] = granted;
    if receive < requested || send < requested {
        warn!(
            requested,
            receive, send, "media socket buffers smaller than asked (net.core.rmem_max/wmem_max)"
        );
    } else {
        info!(receive, send, "media socket buffers");
    }
}

/// Have the kernel stamp each datagram with its arrival time
/// ([`Receiver::arrival`]): a shard that reads its own socket may leave
/// datagrams there for a while, and how stale they are must count that wait.
pub fn stamp_arrivals(socket: &UdpSocket) -> io::Result<()> {
    set_option(socket.as_raw_fd(), libc::SO_TIMESTAMPNS, 1)
}

fn set_option(fd: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: `value` is a live c_int and its size is passed along.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            ptr::from_ref(&value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn get_option(fd: libc::c_int, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are live and `len` is `value`'s size.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            ptr::from_mut(&mut value).cast(),
            &mut len,
        )
    };
    if r == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The kernel's form of an address; returns its length.
fn write_sockaddr(addr: &SocketAddr, out: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: all-zero is a valid sockaddr_in.
            let mut sin: libc::sockaddr_in = unsafe { zeroed() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            // SAFETY: sockaddr_storage is large enough and aligned for any sockaddr.
            unsafe { ptr::from_mut(out).cast::<libc::sockaddr_in>().write(sin) };
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            // SAFETY: all-zero is a valid sockaddr_in6.
            let mut sin6: libc::sockaddr_in6 = unsafe { zeroed() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            sin6.sin6_scope_id = a.scope_id();
            // SAFETY: as above.
            unsafe { ptr::from_mut(out).cast::<libc::sockaddr_in6>().write(sin6) };
            size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// The address the kernel wrote, as `std` would report it (IPv4-mapped
/// addresses on an IPv6 socket stay IPv6).
fn read_sockaddr(raw: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(raw.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin = unsafe { &*ptr::from_ref(raw).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddrV4::new(ip, u16::from_be(sin.sin_port)).into())
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6 = unsafe { &*ptr::from_ref(raw).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            let port = u16::from_be(sin6.sin6_port);
            Some(SocketAddrV6::new(ip, port, sin6.sin6_flowinfo, sin6.sin6_scope_id).into())
        }
        _ => None,
    }
}

/// The per-message headers of one `recvmmsg`/`sendmmsg` call, allocated once.
/// They hold raw pointers, refilled before every call, so this is built on the
/// thread that uses it.
struct Headers {
    headers: Vec<libc::mmsghdr>,
    iovecs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_storage>,
}

impl Headers {
    fn new() -> Self {
        // SAFETY (all three): all-zero is a valid value of these C structs
        // (null pointers, zero lengths).
        Headers {
            headers: (0..BATCH).map(|_| unsafe { zeroed() }).collect(),
            iovecs: (0..BATCH).map(|_| unsafe { zeroed() }).collect(),
            addrs: (0..BATCH).map(|_| unsafe { zeroed() }).collect(),
        }
    }

    /// Point header `i` at the buffer `base[..len]` and at address slot `i`
    /// (`addr_len` bytes of it in use).
    fn set(&mut self, i: usize, base: *mut u8, len: usize, addr_len: libc::socklen_t) {
        self.iovecs[i] = libc::iovec {
            iov_base: base.cast(),
            iov_len: len,
        };
        let header = &mut self.headers[i];
        // SAFETY: all-zero is a valid msghdr; no control data, no flags.
        header.msg_hdr = unsafe { zeroed() };
        header.msg_hdr.msg_name = ptr::from_mut(&mut self.addrs[i]).cast();
        header.msg_hdr.msg_namelen = addr_len;
        header.msg_hdr.msg_iov = ptr::from_mut(&mut self.iovecs[i]);
        header.msg_hdr.msg_iovlen = 1;
        header.msg_len = 0;
    }
}

/// Room for one control message holding a `timespec` (the arrival stamp), in
/// `u64` words so that it is aligned for `cmsghdr`.
const CONTROL_WORDS: usize = 8;

/// Receives up to [`BATCH`] datagrams per system call.
pub struct Receiver {
    headers: Headers,
    /// Per datagram, the control messages the kernel writes (arrival stamps).
    controls: Vec<[u64; CONTROL_WORDS]>,
}

impl Receiver {
    pub fn new() -> Self {
        Receiver {
            headers: Headers::new(),
            controls: vec![[0; CONTROL_WORDS]; BATCH],
        }
    }

    /// Wait for a datagram (as long as the socket's read timeout allows), then
    /// take whatever else is already queued, without waiting, into `buffers` in
    /// order. Each buffer is filled from its capacity (nothing is zeroed first)
    /// and left as long as its datagram; a longer datagram is truncated. Returns
    /// how many buffers were filled; [`Receiver::source`] says who sent them.
    pub fn receive(&mut self, socket: &UdpSocket, buffers: &mut [Vec<u8>]) -> io::Result<usize> {
        let count = buffers.len().min(BATCH);
        let name_len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        for (i, buffer) in buffers[..count].iter_mut().enumerate() {
            buffer.clear();
            self.headers
                .set(i, buffer.as_mut_ptr(), buffer.capacity(), name_len);
            let header = &mut self.headers.headers[i].msg_hdr;
            header.msg_control = self.controls[i].as_mut_ptr().cast();
            header.msg_controllen = size_of::<[u64; CONTROL_WORDS]>();
        }
        // SAFETY: each of the `count` headers points at its own iovec and
        // address slot in `self.headers` and at a buffer of `buffers`, all alive
        // and unmoved for the duration of the call; the kernel writes at most
        // `iov_len` (the capacity) bytes into each buffer.
        let received = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                self.headers.headers.as_mut_ptr(),
                count as libc::c_uint,
                libc::MSG_WAITFORONE,
                ptr::null_mut(),
            )
        };
        if received < 0 {
            return Err(io::Error::last_os_error());
        }
        let received = received as usize;
        for (buffer, header) in buffers.iter_mut().zip(&self.headers.headers[..received]) {
            // SAFETY: the kernel initialized `msg_len` (≤ capacity) bytes.
            unsafe { buffer.set_len(header.msg_len as usize) };
        }
        Ok(received)
    }

    /// The sender of datagram `i` of the last [`Receiver::receive`].
    pub fn source(&self, i: usize) -> Option<SocketAddr> {
        read_sockaddr(&self.headers.addrs[i])
    }

    /// When the kernel received datagram `i` of the last [`Receiver::receive`],
    /// if the socket stamps arrivals ([`stamp_arrivals`]).
    pub fn arrival(&self, i: usize) -> Option<SystemTime> {
        let header = &self.headers.headers[i].msg_hdr;
        // SAFETY: the kernel set `msg_controllen` to the bytes it wrote into
        // `msg_control` (our buffer of `controls[i]`); the CMSG macros walk
        // within that length.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(header);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET
                    && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS
                {
                    let stamp: libc::timespec = ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                    let since_epoch = Duration::new(
                        u64::try_from(stamp.tv_sec).ok()?,
                        u32::try_from(stamp.tv_nsec).ok()?,
                    );
                    return UNIX_EPOCH.checked_add(since_epoch);
                }
                cmsg = libc::CMSG_NXTHDR(header, cmsg);
            }
        }
        None
    }
}

/// What one [`Sender::send`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub syscalls: u64,
    pub datagrams: u64,
    pub bytes: u64,
    /// Datagrams the kernel refused, or dropped because the socket buffer
    /// stayed full.
    pub dropped: u64,
}

/// Outgoing datagrams, queued and sent up to [`BATCH`] per system call.
pub struct Sender {
    queue: Vec<Transmit>,
    headers: Headers,
}

impl Sender {
    pub fn new() -> Self {
        Sender {
            queue: Vec::with_capacity(BATCH),
            headers: Headers::new(),
        }
    }

    /// Queue a datagram; true when the queue is full and must be sent now.
    pub fn push(&mut self, transmit: Transmit) -> bool {
        self.queue.push(transmit);
        self.queue.len() >= BATCH
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Send everything queued, without blocking: a datagram the kernel refuses
    /// is dropped; a full socket buffer gets one wait of [`SEND_WAIT_MS`], after
    /// which the rest of the batch is dropped.
    pub fn send(&mut self, socket: &UdpSocket) -> Sent {
        let mut sent = Sent::default();
        let count = self.queue.len();
        for (i, transmit) in self.queue.iter().enumerate() {
            let addr_len = write_sockaddr(&transmit.destination, &mut self.headers.addrs[i]);
            // The kernel only reads through this pointer (sendmmsg).
            let base = transmit.contents.as_ptr().cast_mut();
            self.headers.set(i, base, transmit.contents.len(), addr_len);
        }
        let mut next = 0;
        let mut waited = false;
        while next < count {
            sent.syscalls += 1;
            // SAFETY: headers `next..count` point at their own iovec and address
            // slots and at the queued datagrams, all alive and unmoved during the
            // call. MSG_DONTWAIT: never block the shard on a full buffer.
            let result = unsafe {
                libc::sendmmsg(
                    socket.as_raw_fd(),
                    self.headers.headers[next..].as_mut_ptr(),
                    (count - next) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if result > 0 {
                let done = next + result as usize;
                for header in &self.headers.headers[next..done] {
                    sent.datagrams += 1;
                    sent.bytes += u64::from(header.msg_len);
                }
                next = done;
                continue;
            }
            // sendmmsg reports an error only when the first datagram failed.
            let error = io::Error::last_os_error();
            match error.raw_os_error() {
                Some(libc::EINTR) => {}
                Some(libc::EAGAIN | libc::ENOBUFS) if !waited => {
                    waited = true;
                    wait_writable(socket);
                }
                Some(libc::EAGAIN | libc::ENOBUFS) => {
                    debug!(dropped = count - next, %error, "udp send buffer full");
                    sent.dropped += (count - next) as u64;
                    break;
                }
                _ => {
                    let destination = self.queue[next].destination;
                    debug!(%destination, %error, "udp send failed");
                    sent.dropped += 1;
                    next += 1;
                }
            }
        }
        // Returns str0m's buffers to the allocator; the queue keeps its capacity.
        self.queue.clear();
        sent
    }
}

/// Wait up to [`SEND_WAIT_MS`] for room in the socket's send buffer.
fn wait_writable(socket: &UdpSocket) {
    let mut poll = libc::pollfd {
        fd: socket.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one live pollfd.
    unsafe { libc::poll(&mut poll, 1, SEND_WAIT_MS) };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transmit(to: SocketAddr, contents: &[u8]) -> Transmit {
        Transmit {
            proto: str0m::net::Protocol::Udp,
            source: to,
            destination: to,
            contents: contents.to_vec().into(),
        }
    }

    #[test]
    fn addresses_round_trip() {
        for addr in [
            "192.0.2.7:5004".parse().unwrap(),
            "[2001:db8::1]:443".parse().unwrap(),
            SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 9, 7, 3)),
        ] {
            // SAFETY: all-zero is a valid sockaddr_storage.
            let mut raw = unsafe { zeroed() };
            write_sockaddr(&addr, &mut raw);
            assert_eq!(read_sockaddr(&raw), Some(addr));
        }
    }

    #[test]
    fn sends_and_receives_in_batches() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        b.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        size_buffers(&b);
        let to = b.local_addr().unwrap();

        // More than one batch, of different sizes, in order.
        let total = BATCH + 6;
        let mut sender = Sender::new();
        let mut sent = Sent::default();
        for i in 0..total {
            if sender.push(transmit(to, &vec![i as u8; 10 + i])) {
                sent = sender.send(&a);
            }
        }
        assert_eq!(sent.syscalls, 1);
        assert_eq!(sent.datagrams, BATCH as u64);
        assert!(!sender.is_empty());
        let rest = sender.send(&a);
        assert!(sender.is_empty());
        assert_eq!((rest.datagrams, rest.dropped), (6, 0));

        let mut receiver = Receiver::new();
        let mut buffers: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(2048)).collect();
        let mut seen = 0;
        while seen < total {
            let n = receiver.receive(&b, &mut buffers).unwrap();
            assert!(n >= 1);
            for (i, buffer) in buffers[..n].iter().enumerate() {
                assert_eq!(buffer.as_slice(), vec![seen as u8; 10 + seen].as_slice());
                assert_eq!(receiver.source(i), Some(a.local_addr().unwrap()));
                seen += 1;
            }
        }
    }

    #[test]
    fn arrivals_are_stamped_by_the_kernel() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        b.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut receiver = Receiver::new();
        let mut buffers: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(2048)).collect();

        // Without the option: no stamp.
        a.send_to(b"plain", b.local_addr().unwrap()).unwrap();
        assert_eq!(receiver.receive(&b, &mut buffers).unwrap(), 1);
        assert_eq!(receiver.arrival(0), None);

        // With it: the time the datagram arrived, not the time it was read.
        stamp_arrivals(&b).unwrap();
        // The kernel turns stamping at arrival on a moment later (deferred
        // work): until then it stamps when the datagram is read. Bounded retries.
        let mut waits = Vec::new();
        for _ in 0..20 {
            a.send_to(b"stamped", b.local_addr().unwrap()).unwrap();
            std::thread::sleep(Duration::from_millis(50));
            assert_eq!(receiver.receive(&b, &mut buffers).unwrap(), 1);
            assert_eq!(buffers[0], b"stamped");
            let arrival = receiver.arrival(0).expect("stamped");
            let waited = SystemTime::now().duration_since(arrival).unwrap();
            if waited >= Duration::from_millis(45) {
                return;
            }
            waits.push(waited);
        }
        panic!("every stamp is the time of reading, not of arrival: {waits:?}");
    }

    #[test]
    fn a_refused_datagram_is_dropped_and_the_rest_sent() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = b.local_addr().unwrap();
        let mut sender = Sender::new();
        sender.push(transmit(to, b"first"));
        // Too large for UDP: EMSGSIZE for this one only.
        sender.push(transmit(to, &vec![0; 70_000]));
        sender.push(transmit(to, b"third"));
        let sent = sender.send(&a);
        assert_eq!((sent.datagrams, sent.dropped, sent.bytes), (2, 1, 10));
    }
}
