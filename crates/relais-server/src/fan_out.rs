//! Helper threads for a large room's fan-out.
//!
//! A room lives on one shard thread, and without help its fan-out runs on that
//! one core: a packet for 600 subscribers is 600 copies to packetize, encrypt
//! and send one after the other. When a round finds many sessions due, the
//! media core hands them out in chunks ([`relais_media::fan_out`]); the
//! [`ThreadedDriver`] here drives those chunks on the shard thread and on the
//! node's helper threads at once, each thread sending the datagrams of the
//! chunks it drove itself (`sendmmsg` on the shard's socket, as the shard would).
//!
//! The threads take chunks from a shared cursor ([`FanOutPool::for_each`])
//! rather than being assigned one: the shard thread drives every chunk no
//! helper has claimed, so a busy helper delays no chunk; the round then waits
//! for the chunks helpers are driving, and for each helper it called to have
//! looked (one that starts late finds nothing left). Helpers are shared by
//! every shard; a node whose shards are all busy gains nothing from them but
//! loses little. A helper descheduled mid-chunk (a hypervisor stealing the
//! core) holds its round up: small rooms stay on their thread
//! (`rtc.fan_out_min_sessions`).

use std::cell::RefCell;
use std::net::UdpSocket;
use std::sync::{Arc, Mutex};

use relais_media::fan_out::{DriveChunk, SessionDriver};

use crate::udp;

/// The node's helper threads.
pub struct FanOutPool {
    pool: rayon_core::ThreadPool,
}

impl FanOutPool {
    /// `threads` helpers (the shard threads come on top); `None` for zero.
    pub fn start(threads: usize) -> std::io::Result<Option<Arc<FanOutPool>>> {
        if threads == 0 {
            return Ok(None);
        }
        let pool = rayon_core::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("fan-out-{i}"))
            .start_handler(|_| crate::thread_class::media())
            .build()
            .map_err(std::io::Error::other)?;
        Ok(Some(Arc::new(FanOutPool { pool })))
    }

    /// How many helpers there are.
    pub fn helpers(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// Call `work` once on each item, on the calling thread and on as many
    /// helpers as are free to help; returns when every item is done. `work`
    /// is told whether it runs on a helper.
    pub fn for_each<T: Send>(&self, items: &mut [T], work: impl Fn(&mut T, bool) + Sync) {
        let helpers = items.len().saturating_sub(1).min(self.helpers());
        let next = Mutex::new(items.iter_mut());
        let claim_and_work = |helper: bool| loop {
            // The lock is held to claim an item only, not while it is worked on.
            let claimed = next.lock().map(|mut items| items.next());
            let Ok(Some(item)) = claimed else {
                break;
            };
            work(item, helper);
        };
        self.pool.in_place_scope(|scope| {
            for _ in 0..helpers {
                scope.spawn(|_| claim_and_work(true));
            }
            claim_and_work(false);
        });
    }
}

/// What one shard's chunks did off its own outbox since it last looked.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FanOutCounts {
    pub sent: udp::Sent,
    /// Sessions driven in chunks.
    pub sessions: u64,
    /// Chunks a helper thread drove (the rest, the shard thread).
    pub helper_chunks: u64,
}

/// One shard's [`SessionDriver`]: its chunks on its own thread and the pool's.
pub struct ThreadedDriver {
    pool: Arc<FanOutPool>,
    socket: Arc<UdpSocket>,
    counts: Arc<Mutex<FanOutCounts>>,
}

thread_local! {
    /// Each thread's `sendmmsg` batch, kept between rounds.
    static SENDER: RefCell<udp::Sender> = RefCell::new(udp::Sender::new());
}

impl ThreadedDriver {
    /// A driver sending on `socket` (the shard's); what it did adds up in the
    /// returned counts, for the shard's metrics.
    pub fn new(
        pool: Arc<FanOutPool>,
        socket: Arc<UdpSocket>,
    ) -> (ThreadedDriver, Arc<Mutex<FanOutCounts>>) {
        let counts = Arc::new(Mutex::new(FanOutCounts::default()));
        let driver = ThreadedDriver {
            pool,
            socket,
            counts: counts.clone(),
        };
        (driver, counts)
    }

    /// Drive `chunk` and send its datagrams from this thread.
    fn drive_and_send(&self, chunk: &mut DriveChunk<'_>, helper: bool) {
        chunk.drive();
        let mut counts = FanOutCounts {
            sessions: chunk.len() as u64,
            helper_chunks: u64::from(helper),
            ..Default::default()
        };
        // ICE-TCP datagrams go to their connection's queue, which the shard
        // thread owns: a chunk with any is left to the shard.
        if !chunk.outgoing.has_tcp() {
            SENDER.with_borrow_mut(|sender| {
                counts.sent += sender.send(&self.socket, &chunk.outgoing);
            });
            chunk.outgoing.clear();
        }
        if let Ok(mut total) = self.counts.lock() {
            total.sent += counts.sent;
            total.sessions += counts.sessions;
            total.helper_chunks += counts.helper_chunks;
        }
    }
}

impl SessionDriver for ThreadedDriver {
    fn threads(&self) -> usize {
        self.pool.helpers() + 1
    }

    fn drive(&self, chunks: &mut [DriveChunk<'_>]) {
        self.pool
            .for_each(chunks, |chunk, helper| self.drive_and_send(chunk, helper));
    }
}
