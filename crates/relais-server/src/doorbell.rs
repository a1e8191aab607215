//! How a shard that reads its own UDP socket sleeps and is woken.
//!
//! Such a shard sleeps in `ppoll` on two files: its socket, which the kernel
//! makes readable when a datagram arrives (no other thread involved), and its
//! doorbell, an eventfd rung by whoever queues other work for it (signal
//! messages, room API calls, ICE-TCP frames). A shard at work is never rung:
//! the ringer only writes to the eventfd when the shard said it is going to
//! sleep, so a busy shard costs its producers no system call.

use std::io;
use std::net::UdpSocket;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub struct Doorbell {
    eventfd: OwnedFd,
    /// Set by the shard just before it sleeps, cleared by the first ring.
    sleeping: AtomicBool,
}

impl Doorbell {
    pub fn new() -> io::Result<Doorbell> {
        // SAFETY: plain system call; the descriptor is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Doorbell {
            // SAFETY: `fd` is a new descriptor that nothing else owns.
            eventfd: unsafe { OwnedFd::from_raw_fd(fd) },
            sleeping: AtomicBool::new(false),
        })
    }

    /// Call after queueing work for the shard: wakes it if it sleeps.
    pub fn ring(&self) {
        // SeqCst on both sides: either the shard sees the work when it looks
        // again after announcing its sleep, or this sees `sleeping` and writes.
        if self.sleeping.swap(false, Ordering::SeqCst) {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64, as eventfd requires. It
            // cannot fail short of a counter overflow, which a wake-up ignores.
            unsafe { libc::write(self.eventfd.as_raw_fd(), (&raw const one).cast(), 8) };
        }
    }

    /// Sleep until `socket` has a datagram, the doorbell rings, or `timeout`
    /// passes. `has_work` is asked after the sleep is announced: work queued
    /// before that moment rang no bell, so it must be seen here.
    ///
    /// Returns whether the socket may have something to read: false only when
    /// `ppoll` saw it had nothing (a ring or the timeout ended the sleep), so
    /// that the caller spares itself a read that would find it empty.
    pub fn sleep(
        &self,
        socket: &UdpSocket,
        timeout: Duration,
        has_work: impl FnOnce() -> bool,
    ) -> bool {
        self.sleeping.store(true, Ordering::SeqCst);
        let mut socket_ready = true;
        if !has_work() {
            let mut files = [
                libc::pollfd {
                    fd: socket.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.eventfd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            let timeout = libc::timespec {
                tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
                tv_nsec: timeout.subsec_nanos() as libc::c_long,
            };
            // SAFETY: two live pollfds and a live timespec; no signal mask.
            let ready = unsafe { libc::ppoll(files.as_mut_ptr(), 2, &timeout, std::ptr::null()) };
            if ready > 0 && files[1].revents & libc::POLLIN != 0 {
                let mut count: u64 = 0;
                // SAFETY: reads 8 bytes into a live u64 (resets the counter).
                unsafe { libc::read(self.eventfd.as_raw_fd(), (&raw mut count).cast(), 8) };
            }
            // Any event counts, not only POLLIN: a pending error (an ICMP
            // "port unreachable") is cleared by the read, and would otherwise
            // end every later sleep at once. A failed ppoll (EINTR) tells
            // nothing either way: read to be sure.
            socket_ready = ready < 0 || files[0].revents != 0;
        }
        self.sleeping.store(false, Ordering::SeqCst);
        socket_ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn a_ring_wakes_a_sleeper_and_a_datagram_too() {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let bell = Arc::new(Doorbell::new().unwrap());

        // Nothing happens: the timeout ends the sleep, the socket has nothing.
        let start = Instant::now();
        assert!(!bell.sleep(&socket, Duration::from_millis(30), || false));
        assert!(start.elapsed() >= Duration::from_millis(30));

        // A ring from another thread ends it early.
        let ringer = bell.clone();
        let start = Instant::now();
        let thread = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            ringer.ring();
        });
        assert!(!bell.sleep(&socket, Duration::from_secs(10), || false));
        assert!(start.elapsed() < Duration::from_secs(5));
        thread.join().unwrap();

        // The ring was consumed: the next sleep lasts its timeout again.
        let start = Instant::now();
        bell.sleep(&socket, Duration::from_millis(30), || false);
        assert!(start.elapsed() >= Duration::from_millis(30));

        // Work seen after announcing the sleep: no sleep at all, and no look
        // at the socket either (it may have something).
        let start = Instant::now();
        assert!(bell.sleep(&socket, Duration::from_secs(10), || true));
        assert!(start.elapsed() < Duration::from_secs(5));

        // A datagram ends it.
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        peer.send_to(b"x", socket.local_addr().unwrap()).unwrap();
        let start = Instant::now();
        assert!(bell.sleep(&socket, Duration::from_secs(10), || false));
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_shard_at_work_is_not_rung() {
        let bell = Doorbell::new().unwrap();
        bell.ring();
        let mut count: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64.
        let n = unsafe { libc::read(bell.eventfd.as_raw_fd(), (&raw mut count).cast(), 8) };
        assert_eq!(n, -1, "nothing was written while the shard was awake");
    }
}
