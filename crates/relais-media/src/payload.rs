//! A published packet's payload, as the copies made of it share it.
//!
//! The copies of a packet leave when their subscriber sessions' turns come
//! in the round — later than the packet came in, on a fan-out helper in a
//! large room — so they share its payload by reference. A packet str0m read
//! comes with its payload shared already ([`Payload::Read`]). A packet
//! Relais opened itself ([`crate::ingress`]) is opened into the room's
//! buffer for the next packet and, if it is forwarded, that buffer becomes
//! one of its layer's [`crate::egress::TrackHistory`], which keeps it for
//! the subscribers' NACKs: the buffer of the slot it takes, if no copy still
//! holds it, becomes the room's buffer for the next packet
//! ([`Payload::Reused`]). A packet forwarded this way costs the heap
//! nothing and is never copied.

use std::ops::Deref;
use std::sync::Arc;

/// What a buffer's capacity is rounded up to: a video layer's packets
/// (up to ~1,200 bytes) differ by less, an audio packet fits one step.
const CAPACITY_STEP: usize = 256;

/// A published packet's payload, shared by its copies and its layer's kept
/// packets.
#[derive(Clone)]
pub(crate) enum Payload {
    /// As str0m read it.
    Read(Arc<[u8]>),
    /// Opened by Relais, in a buffer its layer reuses.
    Reused(Arc<Vec<u8>>),
}

impl Payload {
    /// The payload `opened` holds, shared; `opened` is left holding a
    /// buffer for the next packet: `old`'s if nothing else holds it (its
    /// contents to be overwritten), else a new one of the same capacity.
    pub(crate) fn take(old: Option<Payload>, opened: &mut Vec<u8>) -> Payload {
        let mut shared = match old {
            // Only a holder could make another: the count cannot rise again.
            Some(Payload::Reused(shared)) if Arc::strong_count(&shared) == 1 => shared,
            _ => Arc::new(Vec::with_capacity(opened.capacity())),
        };
        let spare = Arc::get_mut(&mut shared).expect("held by nothing else");
        std::mem::swap(spare, opened);
        Payload::Reused(shared)
    }

    /// As str0m's writer takes it: shared with str0m as read, or copied.
    pub(crate) fn to_str0m(&self) -> Arc<[u8]> {
        match self {
            Payload::Read(shared) => shared.clone(),
            Payload::Reused(shared) => Arc::from(shared.as_slice()),
        }
    }
}

/// Make `buffer` `len` bytes long to be written over: only growth is zeroed
/// (not a kilobyte of stores per video packet), and capacity grows in steps
/// so that the packets after it rarely need more.
pub(crate) fn fit(buffer: &mut Vec<u8>, len: usize) {
    if buffer.capacity() < len {
        buffer.reserve_exact(len.next_multiple_of(CAPACITY_STEP) - buffer.len());
    }
    buffer.resize(len, 0);
}

impl Deref for Payload {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Payload::Read(shared) => shared,
            Payload::Reused(shared) => shared,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opened(bytes: &[u8], buffer: &mut Vec<u8>) {
        fit(buffer, bytes.len());
        buffer.copy_from_slice(bytes);
    }

    #[test]
    fn a_buffer_is_reused_once_no_copy_holds_it() {
        let mut room = Vec::new();
        opened(b"first packet", &mut room);
        let first = Payload::take(None, &mut room);
        let address = first.as_ptr();
        assert_eq!(&*first, b"first packet");
        // The room's buffer for the next packet is another one.
        assert_ne!(room.as_ptr(), address);
        let copy = first.clone();
        // A copy still holds it: the room gets yet another buffer.
        opened(b"second", &mut room);
        let second = Payload::take(Some(first), &mut room);
        assert_eq!(&*second, b"second");
        assert_eq!(&*copy, b"first packet");
        assert_ne!(room.as_ptr(), address);
        assert_ne!(second.as_ptr(), address);
        // The copy gone, its buffer is the room's for the packet after.
        opened(b"third", &mut room);
        let third = Payload::take(Some(copy), &mut room);
        assert_eq!(&*third, b"third");
        assert_eq!(room.as_ptr(), address);
        opened(b"fourth, longer than the first", &mut room);
        let fourth = Payload::take(Some(third), &mut room);
        assert_eq!(fourth.as_ptr(), address);
        assert_eq!(&*fourth, b"fourth, longer than the first");
    }

    #[test]
    fn what_str0m_read_is_never_written_over() {
        let read = Payload::Read(Arc::from(&b"as read"[..]));
        let shared = read.to_str0m();
        let mut room = Vec::new();
        opened(b"next", &mut room);
        let next = Payload::take(Some(read), &mut room);
        assert_eq!(&*shared, b"as read");
        assert_eq!(&*next, b"next");
        assert_eq!(&*next.to_str0m(), b"next");
    }

    #[test]
    fn a_buffer_grows_in_steps_and_holds_exactly_its_length() {
        let mut buffer = vec![7u8; 10];
        fit(&mut buffer, 300);
        assert_eq!(buffer.len(), 300);
        assert_eq!(buffer.capacity(), 2 * CAPACITY_STEP);
        assert!(buffer[10..].iter().all(|&b| b == 0), "growth is zeroed");
        fit(&mut buffer, 4);
        assert_eq!(buffer, [7, 7, 7, 7]);
        assert_eq!(buffer.capacity(), 2 * CAPACITY_STEP);
    }
}
