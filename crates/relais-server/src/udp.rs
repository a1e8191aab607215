//! Batched I/O on the media UDP socket: `recvmmsg` in, `sendmmsg` out, and
//! the socket's kernel buffer sizes.
//!
//! Why: one system call per datagram was a third of the server's CPU when
//! forwarding (docs/benchmarks-journal.md, "Top costs"). A shard fans each packet out
//! to every subscriber, so outgoing datagrams come in runs, and under load the
//! socket holds several incoming datagrams whenever we look.
//!
//! UDP GSO (`UDP_SEGMENT`) where the kernel has it: a shard drives each
//! subscriber's session once per round, so what that session sends in the
//! round (a video frame's packets, most of them of one size) leaves as one run
//! to one destination — one message to the kernel, which cuts it into datagrams
//! after routing and socket work were done once.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;
use std::ptr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use relais_media::outgoing::Outgoing;
use str0m::net::Protocol;
use tracing::{debug, info, warn};

/// Datagrams per `recvmmsg` / `sendmmsg` call.
pub const BATCH: usize = 64;

/// Kernel buffer asked for in each direction: a few milliseconds of a busy
/// node's traffic, so a shard that is briefly late loses nothing in the socket.
const SOCKET_BUFFER_BYTES: usize = 4 << 20;

/// `UDP_SEGMENT` (linux/udp.h): the control message and socket option of GSO.
const UDP_SEGMENT: libc::c_int = 103;

/// At most this many datagrams, and this many bytes, in one GSO message (the
/// kernel's limits are 64 segments and a 64 KiB UDP payload).
const GSO_MAX_SEGMENTS: usize = 64;
const GSO_MAX_BYTES: usize = 65_000;

/// Whether the kernel knows UDP GSO (Linux 4.18 and later).
pub fn gso_supported(socket: &UdpSocket) -> bool {
    get_option_at(socket.as_raw_fd(), libc::SOL_UDP, UDP_SEGMENT).is_ok()
}

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

/// Send every datagram with the don't-fragment bit and never fragment
/// locally (`IP_PMTUDISC_PROBE`, as quinn does for QUIC): WebRTC keeps its
/// packets under ~1,200 bytes. Without it the kernel numbers each IPv4
/// datagram from a hashed table of counters shared by every core
/// (`__ip_select_ident`): work and a contended cache line per copy sent.
pub fn never_fragment(socket: &UdpSocket) -> io::Result<()> {
    let fd = socket.as_raw_fd();
    match socket.local_addr()? {
        SocketAddr::V4(_) => set_option_at(
            fd,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_PROBE,
        ),
        // A dual-stack socket sends IPv4 too.
        SocketAddr::V6(_) => set_option_at(
            fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_PROBE,
        )
        .and_then(|()| {
            set_option_at(
                fd,
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                libc::IP_PMTUDISC_PROBE,
            )
        }),
    }
}

fn set_option(fd: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    set_option_at(fd, libc::SOL_SOCKET, name, value)
}

fn set_option_at(
    fd: libc::c_int,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `value` is a live c_int and its size is passed along.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
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
    get_option_at(fd, libc::SOL_SOCKET, name)
}

fn get_option_at(
    fd: libc::c_int,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are live and `len` is `value`'s size.
    let r =
        unsafe { libc::getsockopt(fd, level, name, ptr::from_mut(&mut value).cast(), &mut len) };
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

/// Receives up to [`BATCH`] datagrams per system call, into buffers it owns.
///
/// The call's headers stay pointed at the buffers from one call to the next:
/// only those the last call filled — the kernel rewrote their lengths, and
/// the caller may have taken their buffers — are set again. At light load a
/// call brings one datagram, and setting all [`BATCH`] headers every time
/// wrote about a hundred cache lines per wake-up, each a miss after the core
/// ran something else.
pub struct Receiver {
    headers: Headers,
    /// Per datagram, the control messages the kernel writes (arrival stamps).
    controls: Vec<[u64; CONTROL_WORDS]>,
    buffers: Vec<Vec<u8>>,
    /// How many datagrams the last call filled: their headers are set again
    /// before the next call, the others still hold.
    filled: usize,
}

impl Receiver {
    /// A receiver whose [`BATCH`] buffers come from `fresh`; a datagram
    /// longer than its buffer's capacity is truncated.
    pub fn new(fresh: impl FnMut() -> Vec<u8>) -> Self {
        let mut receiver = Receiver {
            headers: Headers::new(),
            controls: vec![[0; CONTROL_WORDS]; BATCH],
            buffers: std::iter::repeat_with(fresh).take(BATCH).collect(),
            filled: 0,
        };
        (0..BATCH).for_each(|i| receiver.set_header(i));
        receiver
    }

    /// Point header `i` at buffer `i` (emptied), its address slot and its
    /// control buffer. Everything it points at lives on the heap, so the
    /// receiver itself may move.
    fn set_header(&mut self, i: usize) {
        let buffer = &mut self.buffers[i];
        buffer.clear();
        let name_len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        self.headers
            .set(i, buffer.as_mut_ptr(), buffer.capacity(), name_len);
        let header = &mut self.headers.headers[i].msg_hdr;
        header.msg_control = self.controls[i].as_mut_ptr().cast();
        header.msg_controllen = size_of::<[u64; CONTROL_WORDS]>();
    }

    /// Wait for a datagram (as long as the socket's read timeout allows), then
    /// take whatever else is already queued, without waiting, in order. Each
    /// buffer is filled from its capacity (nothing is zeroed first). Returns
    /// how many datagrams arrived: [`Receiver::datagram`] and
    /// [`Receiver::take`] give them, [`Receiver::source`] says who sent them.
    pub fn receive(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        (0..self.filled).for_each(|i| self.set_header(i));
        self.filled = 0;
        // SAFETY: each header points at its own iovec, address slot and
        // control buffer in `self`, and at the buffer of `self.buffers` with
        // its index (set above, or when the receiver was made or before an
        // earlier call, and neither the buffer nor the header changed since:
        // only a filled one can change), all alive and unmoved for the
        // duration of the call; the kernel writes at most `iov_len` (the
        // capacity) bytes into each buffer.
        let received = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                self.headers.headers.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                ptr::null_mut(),
            )
        };
        // A failed call wrote nothing back into the headers.
        if received < 0 {
            return Err(io::Error::last_os_error());
        }
        let received = received as usize;
        for (buffer, header) in self
            .buffers
            .iter_mut()
            .zip(&self.headers.headers[..received])
        {
            // SAFETY: the kernel initialized `msg_len` (≤ capacity) bytes.
            unsafe { buffer.set_len(header.msg_len as usize) };
        }
        self.filled = received;
        Ok(received)
    }

    /// Datagram `i` of the last [`Receiver::receive`].
    pub fn datagram(&self, i: usize) -> &[u8] {
        &self.buffers[..self.filled][i]
    }

    /// Datagram `i` of the last [`Receiver::receive`], its buffer replaced by
    /// `replacement` for the calls to come.
    pub fn take(&mut self, i: usize, replacement: Vec<u8>) -> Vec<u8> {
        std::mem::replace(&mut self.buffers[..self.filled][i], replacement)
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
    /// Of `datagrams`, those that left as part of a GSO message of several.
    pub segmented: u64,
}

impl std::ops::AddAssign for Sent {
    fn add_assign(&mut self, other: Sent) {
        self.syscalls += other.syscalls;
        self.datagrams += other.datagrams;
        self.bytes += other.bytes;
        self.dropped += other.dropped;
        self.segmented += other.segmented;
    }
}

/// Sends a shard's outgoing datagrams up to [`BATCH`] per system call; runs
/// of same-size datagrams to one destination as one GSO message each. The
/// datagrams stay where the media core wrote them ([`Outgoing`]): the
/// headers point at them.
pub struct Sender {
    headers: Headers,
    /// Per message, the `UDP_SEGMENT` control message (in `u64` words, aligned
    /// for `cmsghdr`).
    controls: Vec<[u64; GSO_CONTROL_WORDS]>,
    /// Per message of the window being sent: its first datagram (an index
    /// into the [`Outgoing`]) and how many it carries.
    messages: Vec<(usize, usize)>,
    /// `None` until the first send looks at the socket.
    gso: Option<bool>,
}

/// Room for one control message holding a `u16` (the GSO segment size).
const GSO_CONTROL_WORDS: usize = 4;

impl Sender {
    pub fn new() -> Self {
        Sender {
            headers: Headers::new(),
            controls: vec![[0; GSO_CONTROL_WORDS]; BATCH],
            messages: Vec::with_capacity(BATCH),
            gso: None,
        }
    }

    /// Split the UDP datagrams `from..end` of `out` (a window of at most
    /// [`BATCH`] starting at `window`) into messages: a run to one destination
    /// whose datagrams have the size of its first (the last may be shorter) is
    /// one message, if GSO is on. Fills the headers of message `first_message`
    /// on; returns how many messages there are in all. ICE-TCP datagrams are
    /// left out.
    fn lay_out(
        &mut self,
        out: &Outgoing,
        window: usize,
        from: usize,
        end: usize,
        first_message: usize,
    ) -> usize {
        self.messages.truncate(first_message);
        let gso = self.gso == Some(true);
        let udp = |i: usize| out.get(i).filter(|(d, _)| d.proto == Protocol::Udp);
        let mut i = from;
        while i < end {
            let Some((first, contents)) = udp(i) else {
                i += 1;
                continue;
            };
            let size = contents.len();
            let mut count = 1;
            let mut bytes = size;
            while gso && count < GSO_MAX_SEGMENTS && i + count < end {
                let Some((next, contents)) = udp(i + count) else {
                    break;
                };
                let len = contents.len();
                if next.destination != first.destination
                    || len > size
                    || len == 0
                    || bytes + len > GSO_MAX_BYTES
                {
                    break;
                }
                count += 1;
                bytes += len;
                if len < size {
                    break; // only the last segment may be shorter
                }
            }
            self.messages.push((i, count));
            i += count;
        }
        for m in first_message..self.messages.len() {
            let (first, count) = self.messages[m];
            for t in first..first + count {
                let (_, contents) = out.get(t).expect("laid out above");
                self.headers.iovecs[t - window] = libc::iovec {
                    // The kernel only reads through this pointer (sendmmsg).
                    iov_base: contents.as_ptr().cast_mut().cast(),
                    iov_len: contents.len(),
                };
            }
            let (d, contents) = out.get(first).expect("laid out above");
            let addr_len = write_sockaddr(&d.destination, &mut self.headers.addrs[m]);
            let size = contents.len() as u16;
            let header = &mut self.headers.headers[m];
            // SAFETY: all-zero is a valid msghdr; no control data, no flags.
            header.msg_hdr = unsafe { zeroed() };
            header.msg_hdr.msg_name = ptr::from_mut(&mut self.headers.addrs[m]).cast();
            header.msg_hdr.msg_namelen = addr_len;
            header.msg_hdr.msg_iov = ptr::from_mut(&mut self.headers.iovecs[first - window]);
            header.msg_hdr.msg_iovlen = count;
            header.msg_len = 0;
            if count > 1 {
                let control = &mut self.controls[m];
                header.msg_hdr.msg_control = control.as_mut_ptr().cast();
                // SAFETY: CMSG_SPACE of a u16 fits `control` (checked by the
                // test); the header points at it, so CMSG_FIRSTHDR is inside it.
                unsafe {
                    header.msg_hdr.msg_controllen =
                        libc::CMSG_SPACE(size_of::<u16>() as u32) as usize;
                    let cmsg = libc::CMSG_FIRSTHDR(&header.msg_hdr);
                    (*cmsg).cmsg_level = libc::SOL_UDP;
                    (*cmsg).cmsg_type = UDP_SEGMENT;
                    (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as usize;
                    ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), size);
                }
            }
        }
        self.messages.len()
    }

    /// Send the UDP datagrams of `out` (its ICE-TCP ones are the caller's),
    /// without blocking: a datagram the kernel refuses is dropped; a full
    /// socket buffer gets one wait of [`SEND_WAIT_MS`], after which the rest
    /// is dropped.
    pub fn send(&mut self, socket: &UdpSocket, out: &Outgoing) -> Sent {
        let mut sent = Sent::default();
        if self.gso.is_none() {
            let supported = gso_supported(socket);
            debug!(supported, "udp gso");
            self.gso = Some(supported);
        }
        let mut waited = false;
        let mut window = 0;
        while window < out.len() {
            let end = (window + BATCH).min(out.len());
            if !self.send_window(socket, out, window, end, &mut waited, &mut sent) {
                let rest = (end..out.len()).filter_map(|i| out.get(i));
                sent.dropped += rest.filter(|(d, _)| d.proto == Protocol::Udp).count() as u64;
                break;
            }
            window = end;
        }
        sent
    }

    /// Send datagrams `window..end` of `out`; false if the socket's buffer
    /// stayed full (the rest of the window dropped, counted in `sent`).
    fn send_window(
        &mut self,
        socket: &UdpSocket,
        out: &Outgoing,
        window: usize,
        end: usize,
        waited: &mut bool,
        sent: &mut Sent,
    ) -> bool {
        let mut count = self.lay_out(out, window, window, end, 0);
        let mut next = 0;
        let mut resume_gso = false;
        let mut room = true;
        while next < count {
            sent.syscalls += 1;
            // SAFETY: headers `next..count` point at their own address and
            // control slots and at iovecs of datagrams in `out`, all alive and
            // unmoved during the call. MSG_DONTWAIT: never block the shard.
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
                for m in next..done {
                    let segments = self.messages[m].1 as u64;
                    sent.datagrams += segments;
                    sent.bytes += u64::from(self.headers.headers[m].msg_len);
                    if segments > 1 {
                        sent.segmented += segments;
                    }
                }
                next = done;
                continue;
            }
            // sendmmsg reports an error only when the first message failed.
            let error = io::Error::last_os_error();
            let (first, segments) = self.messages[next];
            match error.raw_os_error() {
                Some(libc::EINTR) => {}
                Some(libc::EAGAIN | libc::ENOBUFS) if !*waited => {
                    *waited = true;
                    wait_writable(socket);
                }
                Some(libc::EAGAIN | libc::ENOBUFS) => {
                    let dropped: usize = self.messages[next..count].iter().map(|m| m.1).sum();
                    debug!(dropped, %error, "udp send buffer full");
                    sent.dropped += dropped as u64;
                    room = false;
                    break;
                }
                // EIO: the device cannot checksum GSO segments, so never again;
                // EINVAL: this route's MTU is below the segment size, so not
                // for the rest of this window. Either way the run is resent as
                // single datagrams.
                Some(code @ (libc::EIO | libc::EINVAL)) if segments > 1 => {
                    if code == libc::EIO {
                        warn!(%error, "udp gso refused: sending datagrams one by one");
                    } else {
                        debug!(%error, "udp gso refused for one run");
                        resume_gso = true;
                    }
                    self.gso = Some(false);
                    count = self.lay_out(out, window, first, end, next);
                }
                _ => {
                    let destination = out.get(first).map(|(d, _)| d.destination);
                    debug!(?destination, %error, "udp send failed");
                    sent.dropped += segments as u64;
                    next += 1;
                }
            }
        }
        if resume_gso {
            self.gso = Some(true);
        }
        room
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

    fn push(out: &mut Outgoing, to: SocketAddr, contents: &[u8]) {
        out.push(Protocol::Udp, to, to, contents);
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

        // More than one batch, of different sizes, in order; an ICE-TCP
        // datagram among them is left to the caller.
        let total = BATCH + 6;
        let mut sender = Sender::new();
        let mut out = Outgoing::default();
        for i in 0..total {
            push(&mut out, to, &vec![i as u8; 10 + i]);
            if i == 3 {
                out.push(Protocol::Tcp, to, to, b"not on this socket");
            }
        }
        let sent = sender.send(&a, &out);
        assert_eq!(sent.syscalls, 2);
        assert_eq!((sent.datagrams, sent.dropped), (total as u64, 0));

        let mut receiver = Receiver::new(|| Vec::with_capacity(2048));
        let mut seen = 0;
        while seen < total {
            let n = receiver.receive(&b).unwrap();
            assert!(n >= 1);
            for i in 0..n {
                assert_eq!(receiver.datagram(i), vec![seen as u8; 10 + seen].as_slice());
                assert_eq!(receiver.source(i), Some(a.local_addr().unwrap()));
                seen += 1;
            }
        }
    }

    #[test]
    fn only_the_headers_a_call_filled_are_set_again() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        b.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let to = b.local_addr().unwrap();
        let mut receiver = Receiver::new(|| Vec::with_capacity(2048));

        for tag in 1..=3u8 {
            a.send_to(&[tag; 100], to).unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(receiver.receive(&b).unwrap(), 3);
        assert_eq!(
            receiver.filled, 3,
            "set again: the rest keep buffers and lengths"
        );
        // The caller keeps datagram 1 and leaves a 10-byte buffer in its place.
        assert_eq!(receiver.take(1, Vec::with_capacity(10)), [2; 100]);

        // Nothing waiting: the timeout changes nothing.
        assert!(receiver.receive(&b).is_err());
        assert_eq!(receiver.filled, 0);

        // The next datagrams land in the buffers as they now are: the
        // replacement (truncating) and the untouched ones after it.
        for tag in 4..=7u8 {
            a.send_to(&[tag; 100], to).unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(receiver.receive(&b).unwrap(), 4);
        assert_eq!(receiver.datagram(0), [4; 100]);
        assert_eq!(
            receiver.datagram(1),
            [5; 10],
            "cut to the replacement's capacity"
        );
        assert_eq!(receiver.datagram(2), [6; 100]);
        assert_eq!(receiver.datagram(3), [7; 100]);
        for i in 0..4 {
            assert_eq!(receiver.source(i), Some(a.local_addr().unwrap()));
        }
        assert_eq!(receiver.filled, 4);
    }

    #[test]
    fn arrivals_are_stamped_by_the_kernel() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        b.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut receiver = Receiver::new(|| Vec::with_capacity(2048));

        // Without the option: no stamp.
        a.send_to(b"plain", b.local_addr().unwrap()).unwrap();
        assert_eq!(receiver.receive(&b).unwrap(), 1);
        assert_eq!(receiver.arrival(0), None);

        // With it: the time the datagram arrived, not the time it was read.
        stamp_arrivals(&b).unwrap();
        // The kernel turns stamping at arrival on a moment later (deferred
        // work): until then it stamps when the datagram is read. Bounded retries.
        let mut waits = Vec::new();
        for _ in 0..20 {
            a.send_to(b"stamped", b.local_addr().unwrap()).unwrap();
            std::thread::sleep(Duration::from_millis(50));
            assert_eq!(receiver.receive(&b).unwrap(), 1);
            assert_eq!(receiver.datagram(0), b"stamped");
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
        let mut out = Outgoing::default();
        push(&mut out, to, b"first");
        // Too large for UDP: EMSGSIZE for this one only.
        push(&mut out, to, &vec![0; 70_000]);
        push(&mut out, to, b"third");
        let sent = Sender::new().send(&a, &out);
        assert_eq!((sent.datagrams, sent.dropped, sent.bytes), (2, 1, 10));
    }

    #[test]
    fn media_sockets_never_fragment() {
        let v4 = UdpSocket::bind("127.0.0.1:0").unwrap();
        let v6 = UdpSocket::bind("[::]:0").unwrap();
        for socket in [&v4, &v6] {
            never_fragment(socket).unwrap();
            let fd = socket.as_raw_fd();
            let ip = get_option_at(fd, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER).unwrap();
            assert_eq!(ip, libc::IP_PMTUDISC_PROBE);
        }
        let ip6 = get_option_at(v6.as_raw_fd(), libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER);
        assert_eq!(ip6.unwrap(), libc::IPV6_PMTUDISC_PROBE);
    }

    #[test]
    fn runs_to_one_destination_leave_as_one_gso_message() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(gso_supported(&a), "loopback on Linux 4.18+ takes UDP GSO");
        // As the media socket is: its datagrams carry don't-fragment.
        never_fragment(&a).unwrap();
        // SAFETY: CMSG_SPACE only computes a size.
        let space = unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as usize;
        assert!(space <= size_of::<[u64; GSO_CONTROL_WORDS]>());
        let receivers: Vec<UdpSocket> = (0..2)
            .map(|_| {
                let r = UdpSocket::bind("127.0.0.1:0").unwrap();
                r.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                size_buffers(&r);
                r
            })
            .collect();
        let (b, c) = (
            receivers[0].local_addr().unwrap(),
            receivers[1].local_addr().unwrap(),
        );
        // To b: five of 1,000 bytes and a shorter last (one message); to c:
        // three (one message); to b again: two, then one larger (two messages).
        let mut plan = Vec::new();
        plan.extend((0..5).map(|i| (b, 1000, i)));
        plan.push((b, 600, 5));
        plan.extend((6..9).map(|i| (c, 1000, i)));
        plan.extend([(b, 1000, 9), (b, 1000, 10), (b, 1100, 11)]);
        let mut sender = Sender::new();
        let mut out = Outgoing::default();
        for &(to, len, tag) in &plan {
            push(&mut out, to, &vec![tag as u8; len]);
        }
        let sent = sender.send(&a, &out);
        assert_eq!((sent.syscalls, sent.datagrams, sent.dropped), (1, 12, 0));
        assert_eq!(
            sent.segmented, 11,
            "all but the larger last datagram merged"
        );
        assert_eq!(sent.bytes, plan.iter().map(|p| p.1 as u64).sum::<u64>());
        assert_eq!(sender.messages, [(0, 6), (6, 3), (9, 2), (11, 1)]);

        // Each arrives as its own datagram, whole and in order.
        let mut receiver = Receiver::new(|| Vec::with_capacity(2048));
        for (socket, to) in [(&receivers[0], b), (&receivers[1], c)] {
            let want: Vec<Vec<u8>> = plan
                .iter()
                .filter(|p| p.0 == to)
                .map(|&(_, len, tag)| vec![tag as u8; len])
                .collect();
            let mut got = Vec::new();
            while got.len() < want.len() {
                let n = receiver.receive(socket).unwrap();
                got.extend((0..n).map(|i| receiver.datagram(i).to_vec()));
            }
            assert_eq!(got, want);
        }
    }
}
