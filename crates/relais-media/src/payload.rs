//! A published packet's payload, as the copies made of it share it.
//!
//! The copies of a packet leave when their subscriber sessions' turns come
//! in the round — later than the packet came in, on a fan-out helper in a
//! large room — so they share its payload by reference. A packet str0m read
//! comes with its payload shared already ([`Payload::Read`]). A packet
//! Relais opened itself ([`crate::ingress`]) is opened into one scratch
//! buffer per room and copied into a buffer of its layer's
//! [`crate::egress::TrackHistory`], which keeps it for the subscribers'
//! NACKs: when the layer's slot comes round again, its buffer is used again
//! if no copy still holds it ([`Payload::Reused`]). A packet forwarded this
//! way costs the heap nothing.

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
    /// `payload` in `buffer` if nothing else holds it (its contents
    /// replaced), else in a new one.
    pub(crate) fn reuse(buffer: Option<Payload>, payload: &[u8]) -> Payload {
        let mut buffer = match buffer {
            // Only a holder could make another: the count cannot rise again.
            Some(Payload::Reused(shared)) if Arc::strong_count(&shared) == 1 => shared,
            _ => Arc::new(Vec::new()),
        };
        let bytes = Arc::get_mut(&mut buffer).expect("held by nothing else");
        bytes.clear();
        if bytes.capacity() < payload.len() {
            // Rounded up, so that the packets after it rarely need more.
            bytes.reserve_exact(payload.len().next_multiple_of(CAPACITY_STEP));
        }
        bytes.extend_from_slice(payload);
        Payload::Reused(buffer)
    }

    /// As str0m's writer takes it: shared with str0m as read, or copied.
    pub(crate) fn to_str0m(&self) -> Arc<[u8]> {
        match self {
            Payload::Read(shared) => shared.clone(),
            Payload::Reused(shared) => Arc::from(shared.as_slice()),
        }
    }
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

    #[test]
    fn a_buffer_is_reused_once_no_copy_holds_it() {
        let first = Payload::reuse(None, b"first packet");
        let Payload::Reused(shared) = &first else {
            panic!("not in a buffer of its own");
        };
        let address = shared.as_ptr();
        let copy = first.clone();
        // A copy still holds it: the next packet gets another buffer.
        let second = Payload::reuse(Some(first), b"second");
        assert_eq!(&*second, b"second");
        assert_eq!(&*copy, b"first packet");
        let Payload::Reused(other) = &second else {
            panic!("not in a buffer of its own");
        };
        assert_ne!(other.as_ptr(), address);
        // The copy gone, its buffer serves the packet after.
        let third = Payload::reuse(Some(copy), b"third");
        let Payload::Reused(reused) = &third else {
            panic!("not in a buffer of its own");
        };
        assert_eq!(reused.as_ptr(), address);
        assert_eq!(&*third, b"third");
    }

    #[test]
    fn what_str0m_read_is_never_written_over() {
        let read = Payload::Read(Arc::from(&b"as read"[..]));
        let shared = read.to_str0m();
        let next = Payload::reuse(Some(read), b"next");
        assert_eq!(&*shared, b"as read");
        assert_eq!(&*next, b"next");
        assert_eq!(&*next.to_str0m(), b"next");
    }
}
