//! Driving many due sessions at once, on as many cores as the caller has.
//!
//! Most of a large room's fan-out is per subscriber: str0m packetizes,
//! encrypts and hands over the copies written to a session when that session
//! is driven ([`Room::handle_timeout`](crate::Room::handle_timeout)). A drive
//! touches nothing but its own session, so when many sessions are due in one
//! round the room cuts them into [`DriveChunk`]s and gives them to a
//! [`SessionDriver`]. The media core starts no thread: the driver is the I/O
//! layer's, which owns the cores and the sockets — it may drive chunks on
//! several threads and send each chunk's datagrams where it was driven.
//! [`InPlace`] drives them one after the other on the caller's thread.
//!
//! ```
//! use relais_media::fan_out::{DriveChunk, InPlace, SessionDriver};
//!
//! // A driver that drives every chunk where it is called — what `InPlace` does.
//! struct OneByOne;
//! impl SessionDriver for OneByOne {
//!     fn threads(&self) -> usize {
//!         1
//!     }
//!     fn drive(&self, chunks: &mut [DriveChunk<'_>]) {
//!         chunks.iter_mut().for_each(DriveChunk::drive);
//!     }
//! }
//! assert_eq!(OneByOne.threads(), InPlace.threads());
//! ```

use std::time::Instant;

use tracing::Span;

use crate::outgoing::Outgoing;
use crate::participant::{ParticipantKey, PeerRole, PeerSession};
use crate::room::{drive_session, PendingEvent};

/// Runs [`DriveChunk::drive`] on a round's chunks, possibly in parallel.
pub trait SessionDriver {
    /// How many threads [`SessionDriver::drive`] may use, the caller's
    /// included. With 1 the room never cuts its sessions into chunks.
    fn threads(&self) -> usize;

    /// Drive every chunk once, in any order, on any of the threads; return
    /// when all are driven. The driver may send the datagrams a chunk leaves
    /// in [`DriveChunk::outgoing`] itself (clearing them); those it leaves
    /// go out with the shard's, after the chunk's session events are handled.
    fn drive(&self, chunks: &mut [DriveChunk<'_>]);
}

/// The caller's thread alone: chunks are driven one after the other.
#[derive(Debug, Default, Clone, Copy)]
pub struct InPlace;

impl SessionDriver for InPlace {
    fn threads(&self) -> usize {
        1
    }

    fn drive(&self, chunks: &mut [DriveChunk<'_>]) {
        chunks.iter_mut().for_each(DriveChunk::drive);
    }
}

/// Some of a room's due sessions, borrowed from it for one round.
pub struct DriveChunk<'a> {
    now: Instant,
    /// The room's span: a drive on another thread still logs under it.
    span: Span,
    pub(crate) sessions: Vec<DueSession<'a>>,
    /// What the sessions want sent, in each session's order.
    pub outgoing: Outgoing,
    pub(crate) events: Vec<PendingEvent>,
}

/// One session of a chunk and, once driven, when it wants time again.
pub(crate) struct DueSession<'a> {
    pub key: ParticipantKey,
    pub role: PeerRole,
    pub session: &'a mut PeerSession,
    pub wake_at: Instant,
}

impl<'a> DriveChunk<'a> {
    /// A chunk for up to `capacity` sessions, writing into `outgoing`.
    pub(crate) fn new(now: Instant, span: Span, capacity: usize, outgoing: Outgoing) -> Self {
        DriveChunk {
            now,
            span,
            sessions: Vec::with_capacity(capacity),
            outgoing,
            events: Vec::new(),
        }
    }

    /// Give each session the time and collect what it puts out, as the room
    /// does for a single session.
    pub fn drive(&mut self) {
        let _span = self.span.enter();
        let now = self.now;
        for due in &self.sessions {
            crate::egress::warm(due.session);
        }
        for due in &mut self.sessions {
            due.wake_at = drive_session(
                due.session,
                due.key,
                due.role,
                now,
                &mut self.outgoing,
                &mut self.events,
            );
        }
    }

    /// How many sessions the chunk holds.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
}
