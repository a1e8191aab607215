//! Datagram buffers reused on each thread.
//!
//! Relais writes each direct-egress copy (and each repair) into a buffer of
//! its own, which becomes a [`str0m::net::Transmit`]'s contents. Whoever
//! sends a transmit hands its buffer back with [`give_back`] once the kernel
//! has it, on the same thread, so that on a warm thread a copy allocates
//! nothing: the shard thread's sends feed the shard thread's copies, a
//! fan-out helper's its own.
//!
//! Only datagrams larger than glibc's per-thread cache serves (1,032 bytes:
//! video, mostly) take a kept buffer: a small one (audio) is allocated to
//! its size, which that cache does as fast as this pool, and a pool buffer of
//! a video packet's size made 10 audio → 100 cost 4–11 % more CPU.
//!
//! ```
//! use relais_media::buffers;
//!
//! let mut packet = buffers::take(1200);
//! packet.extend_from_slice(&[0x80; 1200]);
//! let address = packet.as_ptr();
//! buffers::give_back(packet); // after the send
//! assert_eq!(buffers::take(1200).as_ptr(), address);
//! ```

use std::cell::RefCell;

/// Room for any datagram WebRTC sends (str0m keeps to about 1,200 bytes).
const BUFFER_CAPACITY: usize = 1500;
/// Smaller datagrams are allocated to their size (see the module's doc).
const SMALL: usize = 1032;
/// Buffers kept per thread: more than one round's copies of a busy shard
/// (a round sends at most a few hundred before its buffers come back).
const KEPT: usize = 1024;

thread_local! {
    static FREE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer with room for at least `len` bytes: for a large datagram,
/// one given back on this thread if there is one.
pub fn take(len: usize) -> Vec<u8> {
    if len <= SMALL {
        return Vec::with_capacity(len);
    }
    let kept = FREE.with_borrow_mut(Vec::pop);
    match kept {
        Some(mut buffer) => {
            buffer.reserve(len);
            buffer
        }
        None => Vec::with_capacity(len.max(BUFFER_CAPACITY)),
    }
}

/// Keep `buffer` for a later [`take`] on this thread (a datagram's buffer
/// after it was sent). Buffers of another size than a large datagram's, and
/// any beyond [`KEPT`], are freed.
pub fn give_back(mut buffer: Vec<u8>) {
    if !(BUFFER_CAPACITY..=2 * BUFFER_CAPACITY).contains(&buffer.capacity()) {
        return;
    }
    FREE.with_borrow_mut(|free| {
        if free.len() < KEPT {
            buffer.clear();
            free.push(buffer);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_datagram_sized_buffers_are_kept_and_only_so_many() {
        // Too small (str0m's short control datagrams), too large: freed.
        give_back(Vec::with_capacity(100));
        give_back(Vec::with_capacity(10 * BUFFER_CAPACITY));
        assert_eq!(FREE.with_borrow(Vec::len), 0);
        for _ in 0..KEPT + 10 {
            give_back(Vec::with_capacity(BUFFER_CAPACITY));
        }
        assert_eq!(FREE.with_borrow(Vec::len), KEPT);
        // A small datagram gets a buffer of its own size.
        assert_eq!(take(200).capacity(), 200);
        assert_eq!(FREE.with_borrow(Vec::len), KEPT);
        // A kept buffer comes back empty, and grows if asked for more.
        let mut buffer = take(1200);
        assert!(buffer.is_empty() && buffer.capacity() >= BUFFER_CAPACITY);
        buffer.extend_from_slice(&[1; 10]);
        give_back(buffer);
        assert!(take(3000).is_empty());
        assert_eq!(FREE.with_borrow(Vec::len), KEPT - 1);
    }
}
