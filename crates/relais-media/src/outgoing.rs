//! Datagrams on their way out, written in place into one buffer.
//!
//! A forwarded copy is built where it will be sent from: its header is
//! written and its payload sealed (SRTP) straight into the buffer of an
//! [`Outgoing`], so that a copy costs no allocation of its own and no move —
//! the I/O layer points its `sendmmsg` at the bytes and then
//! [clears](Outgoing::clear) them, keeping the buffer for the next round. This
//! is the sans-IO way quinn-proto writes its packets into a buffer the caller
//! owns.
//!
//! ```
//! use relais_media::outgoing::Outgoing;
//! use str0m::net::Protocol;
//!
//! let (from, to) = ("10.0.0.1:7882".parse().unwrap(), "10.0.0.2:5000".parse().unwrap());
//! let mut out = Outgoing::default();
//! out.push(Protocol::Udp, from, to, b"one");
//! out.push(Protocol::Udp, from, to, b"two");
//! let sent: Vec<&[u8]> = out.iter().map(|(_, bytes)| bytes).collect();
//! assert_eq!(sent, [&b"one"[..], &b"two"[..]]);
//! out.clear();
//! assert!(out.is_empty());
//! ```

use std::net::SocketAddr;

use str0m::net::{Protocol, Transmit};

/// Bytes are written in blocks of this size: a burst grows by blocks, and
/// what was written never moves (a growing single buffer would copy it and
/// hold up to twice the burst). A block is zeroed once, when allocated, so
/// that a datagram is written into initialised bytes without clearing them
/// first.
const BLOCK_BYTES: usize = 64 << 10;

/// The empty blocks always kept between rounds (512 KiB: a few hundred
/// video datagrams).
const KEPT_BLOCKS: usize = 8;

/// The most blocks kept between rounds (2 MiB): what a recent round used,
/// up to this, so that rounds alike — a large room's frames, each written
/// in one round — reuse their blocks instead of allocating (and zeroing)
/// them again each time; a burst beyond it (a keyframe to a large room) is
/// freed once sent.
const MAX_KEPT_BLOCKS: usize = 32;

/// How many rounds a round's use is remembered for, at least (one to two
/// windows): at a large room's rate, well under a second.
const RECENT_ROUNDS: u32 = 64;

/// Where a datagram goes: protocol, local address, remote address.
pub(crate) type Route = (Protocol, SocketAddr, SocketAddr);

/// Datagrams to send, in the order they were written.
#[derive(Debug, Default)]
pub struct Outgoing {
    /// The blocks in use, in order.
    blocks: Vec<Block>,
    /// Empty blocks, kept for the next round.
    spare: Vec<Block>,
    datagrams: Vec<Addressed>,
    /// How many of `datagrams` go over ICE-TCP.
    tcp: usize,
    /// The most blocks, and datagrams, a recent round used.
    recent_blocks: RecentMost,
    recent_datagrams: RecentMost,
}

/// The most of a count over the last [`RECENT_ROUNDS`] to twice as many
/// rounds: the maxima of the window under way and of the one before.
#[derive(Debug, Default)]
struct RecentMost {
    current: usize,
    previous: usize,
    rounds: u32,
}

impl RecentMost {
    /// Count a round that used `n`; returns the most of the recent rounds.
    fn observe(&mut self, n: usize) -> usize {
        if self.rounds == RECENT_ROUNDS {
            self.previous = std::mem::take(&mut self.current);
            self.rounds = 0;
        }
        self.rounds += 1;
        self.current = self.current.max(n);
        self.current.max(self.previous)
    }
}

/// Bytes of an [`Outgoing`]: the first `used` hold datagrams.
#[derive(Debug)]
struct Block {
    bytes: Box<[u8]>,
    used: usize,
}

impl Block {
    fn new(len: usize) -> Self {
        Block {
            bytes: vec![0; len].into_boxed_slice(),
            used: 0,
        }
    }

    fn free(&self) -> usize {
        self.bytes.len() - self.used
    }
}

/// One datagram of an [`Outgoing`]: where it goes (its bytes are in the
/// [`Outgoing`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addressed {
    pub proto: Protocol,
    pub source: SocketAddr,
    pub destination: SocketAddr,
    block: u32,
    start: u32,
    len: u32,
}

impl Outgoing {
    /// How many datagrams are queued.
    pub fn len(&self) -> usize {
        self.datagrams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.datagrams.is_empty()
    }

    /// Whether any queued datagram goes over ICE-TCP (the rest over UDP).
    pub fn has_tcp(&self) -> bool {
        self.tcp > 0
    }

    fn bytes(&self, d: &Addressed) -> &[u8] {
        let start = d.start as usize;
        &self.blocks[d.block as usize].bytes[start..start + d.len as usize]
    }

    /// The `i`th datagram queued.
    pub fn get(&self, i: usize) -> Option<(&Addressed, &[u8])> {
        let d = self.datagrams.get(i)?;
        Some((d, self.bytes(d)))
    }

    /// The queued datagrams in order.
    pub fn iter(&self) -> impl Iterator<Item = (&Addressed, &[u8])> {
        self.datagrams.iter().map(|d| (d, self.bytes(d)))
    }

    /// Forget every datagram. As many blocks as a recent round used are
    /// kept for the next rounds, [`KEPT_BLOCKS`] at least and
    /// [`MAX_KEPT_BLOCKS`] at most, and room for as many datagrams: a burst
    /// (a keyframe to a room of a thousand, all written in one round) leaves
    /// no lasting memory.
    pub fn clear(&mut self) {
        let keep = self
            .recent_blocks
            .observe(self.blocks.len())
            .clamp(KEPT_BLOCKS, MAX_KEPT_BLOCKS);
        for mut block in self.blocks.drain(..) {
            if self.spare.len() < keep {
                block.used = 0;
                self.spare.push(block);
            }
        }
        self.spare.truncate(keep);
        let datagrams = self.recent_datagrams.observe(self.datagrams.len());
        self.datagrams.clear();
        self.datagrams.shrink_to(datagrams.clamp(
            KEPT_BLOCKS * BLOCK_BYTES / 1024,
            MAX_KEPT_BLOCKS * BLOCK_BYTES / 1024,
        ));
        self.tcp = 0;
    }

    /// Queue a copy of `contents`.
    pub fn push(
        &mut self,
        proto: Protocol,
        source: SocketAddr,
        destination: SocketAddr,
        contents: &[u8],
    ) {
        self.write((proto, source, destination), contents.len(), |buf| {
            buf[..contents.len()].copy_from_slice(contents);
            contents.len()
        });
    }

    /// Queue what str0m sends (its buffer is copied and freed: none of this
    /// is per forwarded copy).
    pub(crate) fn push_transmit(&mut self, t: Transmit) {
        self.push(t.proto, t.source, t.destination, &t.contents);
    }

    /// Queue a datagram of at most `max_len` bytes that `write` writes at
    /// the start of the buffer it is given (`max_len` bytes long, holding
    /// whatever an earlier datagram left there) and whose length it returns.
    pub(crate) fn write(
        &mut self,
        route: Route,
        max_len: usize,
        write: impl FnOnce(&mut [u8]) -> usize,
    ) {
        if self.blocks.last().is_none_or(|b| b.free() < max_len) {
            let block = match self.spare.pop() {
                Some(block) if block.free() >= max_len => block,
                _ => Block::new(BLOCK_BYTES.max(max_len)),
            };
            self.blocks.push(block);
        }
        let block = self.blocks.len() - 1;
        let buf = &mut self.blocks[block];
        let start = buf.used;
        let len = write(&mut buf.bytes[start..start + max_len]);
        assert!(len <= max_len, "a datagram longer than announced");
        buf.used += len;
        let (proto, source, destination) = route;
        if proto == Protocol::Tcp {
            self.tcp += 1;
        }
        self.datagrams.push(Addressed {
            proto,
            source,
            destination,
            block: block as u32,
            start: start as u32,
            len: len as u32,
        });
    }

    /// Copy `other`'s datagrams after these and clear it (leftovers only:
    /// a shard lends its whole `Outgoing` to the room it calls instead —
    /// `std::mem::swap`, nothing copied).
    pub fn append(&mut self, other: &mut Outgoing) {
        for i in 0..other.len() {
            let (d, bytes) = other.get(i).expect("in range");
            self.push(d.proto, d.source, d.destination, bytes);
        }
        other.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(port: u16) -> Route {
        (
            Protocol::Udp,
            "10.0.0.1:7882".parse().unwrap(),
            SocketAddr::from(([10, 0, 0, 2], port)),
        )
    }

    fn contents(out: &Outgoing) -> Vec<(u16, Vec<u8>)> {
        out.iter()
            .map(|(d, bytes)| (d.destination.port(), bytes.to_vec()))
            .collect()
    }

    #[test]
    fn a_datagram_takes_what_it_wrote_not_what_it_announced() {
        let mut out = Outgoing::default();
        out.write(route(1), 100, |buf| {
            buf[..4].copy_from_slice(b"kept");
            4
        });
        out.push(Protocol::Tcp, route(3).1, route(3).2, b"next");
        assert_eq!(
            contents(&out),
            [(1, b"kept".to_vec()), (3, b"next".to_vec())]
        );
        assert_eq!(out.blocks.len(), 1);
        assert_eq!(out.blocks[0].used, 8);
        assert!(out.has_tcp());
        assert_eq!(out.get(1).map(|(d, _)| d.proto), Some(Protocol::Tcp));
    }

    /// Write a round of `n` video-sized datagrams.
    fn round(out: &mut Outgoing, n: usize) {
        for _ in 0..n {
            out.push(route(1).0, route(1).1, route(1).2, &[0; 1_200]);
        }
    }

    #[test]
    fn a_burst_leaves_no_lasting_memory() {
        let mut out = Outgoing::default();
        round(&mut out, 4_000);
        assert!(out.blocks.len() > 2 * MAX_KEPT_BLOCKS);
        assert_eq!(out.get(3_999).map(|(_, b)| b.len()), Some(1_200));
        out.clear();
        assert!(out.blocks.is_empty());
        assert_eq!(out.spare.len(), MAX_KEPT_BLOCKS, "no more than the cap");
        assert!(out.spare.iter().all(|b| b.used == 0));
        assert!(out.datagrams.capacity() <= MAX_KEPT_BLOCKS * BLOCK_BYTES / 1024);
        // Quiet rounds after it: back to the few blocks always kept.
        for _ in 0..2 * RECENT_ROUNDS {
            round(&mut out, 3);
            out.clear();
        }
        assert_eq!(out.spare.len(), KEPT_BLOCKS);
        assert!(out.datagrams.capacity() <= KEPT_BLOCKS * BLOCK_BYTES / 1024);
    }

    #[test]
    fn rounds_alike_reuse_their_blocks() {
        // A large room's frame a round, with small rounds (its audio)
        // between: the blocks of a frame are kept for the next one.
        let mut out = Outgoing::default();
        let frame = 20 * BLOCK_BYTES / 1_200;
        round(&mut out, frame);
        let blocks = out.blocks.len();
        assert!(blocks > KEPT_BLOCKS);
        out.clear();
        for _ in 0..3 * RECENT_ROUNDS {
            for _ in 0..4 {
                round(&mut out, 50);
                out.clear();
            }
            assert!(out.spare.len() >= blocks, "a frame's blocks are spare");
            round(&mut out, frame);
            assert_eq!(out.blocks.len(), blocks);
            out.clear();
        }
    }

    #[test]
    fn appending_copies_in_order_and_empties_the_other() {
        let mut shard = Outgoing::default();
        shard.push(route(1).0, route(1).1, route(1).2, b"a");
        let mut chunk = Outgoing::default();
        chunk.push(route(2).0, route(2).1, route(2).2, b"bb");
        chunk.push(Protocol::Tcp, route(3).1, route(3).2, b"ccc");
        shard.append(&mut chunk);
        assert!(chunk.is_empty() && !chunk.has_tcp());
        assert_eq!(
            contents(&shard),
            [
                (1, b"a".to_vec()),
                (2, b"bb".to_vec()),
                (3, b"ccc".to_vec())
            ]
        );
        assert!(shard.has_tcp());
        shard.clear();
        assert!(shard.is_empty() && !shard.has_tcp());
    }
}
