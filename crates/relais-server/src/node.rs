//! The node's own state as orchestrators see it: alive, ready, draining.
//!
//! * **alive** (`/healthz`): every shard thread has looped within
//!   [`LIVENESS_STALE_AFTER`]; a shard stuck longer than that will not recover.
//! * **ready** (`/readyz`, LiveKit's `GET /`): not draining, and every shard
//!   thread has looped within [`READINESS_STALE_AFTER`], so a room placed on any
//!   shard would be served.
//! * **draining**: after SIGTERM. Existing sessions go on; new rooms and joins
//!   are refused until the last participant leaves or the drain deadline passes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use relais_media::ShardGauges;

/// A shard silent this long makes the node not ready (LiveKit's health check
/// also fails after 4 s without a stats update).
pub const READINESS_STALE_AFTER: Duration = Duration::from_secs(4);
/// A shard silent this long makes the node not alive.
pub const LIVENESS_STALE_AFTER: Duration = Duration::from_secs(15);

/// Shared by the HTTP handlers, the shard threads and the shutdown logic.
pub struct NodeState {
    started: Instant,
    draining: AtomicBool,
    /// Per shard: milliseconds since `started` of its last loop; `u64::MAX` before the first.
    heartbeats: Vec<AtomicU64>,
    /// Per shard: its load at its last metrics flush (about once a second).
    loads: Vec<ShardLoad>,
}

/// What one shard last reported of its load, for the drain and the cluster
/// heartbeat.
#[derive(Default)]
struct ShardLoad {
    participants: AtomicU64,
    published_tracks: AtomicU64,
    subscribed_tracks: AtomicU64,
}

impl NodeState {
    pub fn new(shards: usize) -> Self {
        NodeState {
            started: Instant::now(),
            draining: AtomicBool::new(false),
            heartbeats: (0..shards).map(|_| AtomicU64::new(u64::MAX)).collect(),
            loads: (0..shards).map(|_| ShardLoad::default()).collect(),
        }
    }

    /// A shard thread is alive at `now`.
    pub fn heartbeat(&self, shard: usize, now: Instant) {
        if let Some(h) = self.heartbeats.get(shard) {
            let ms = now.saturating_duration_since(self.started).as_millis() as u64;
            h.store(ms, Ordering::Relaxed);
        }
    }

    /// A shard's load as its metrics flush reports it.
    pub fn set_load(&self, shard: usize, gauges: &ShardGauges) {
        if let Some(load) = self.loads.get(shard) {
            load.participants
                .store(gauges.participants, Ordering::Relaxed);
            load.published_tracks
                .store(gauges.tracks_published.iter().sum(), Ordering::Relaxed);
            load.subscribed_tracks
                .store(gauges.tracks_subscribed.iter().sum(), Ordering::Relaxed);
        }
    }

    fn sum(&self, of: impl Fn(&ShardLoad) -> &AtomicU64) -> u64 {
        self.loads
            .iter()
            .map(|l| of(l).load(Ordering::Relaxed))
            .sum()
    }

    /// Participants on the node (as of the shards' last flush).
    pub fn participants(&self) -> u64 {
        self.sum(|l| &l.participants)
    }

    /// Published tracks on the node (as of the shards' last flush).
    pub fn published_tracks(&self) -> u64 {
        self.sum(|l| &l.published_tracks)
    }

    /// Subscriptions on the node (as of the shards' last flush).
    pub fn subscribed_tracks(&self) -> u64 {
        self.sum(|l| &l.subscribed_tracks)
    }

    /// Every shard looped within `max_age`.
    fn shards_fresh(&self, max_age: Duration) -> bool {
        let now = self.started.elapsed().as_millis() as u64;
        let limit = max_age.as_millis() as u64;
        !self.heartbeats.is_empty()
            && self.heartbeats.iter().all(|h| {
                let seen = h.load(Ordering::Relaxed);
                seen != u64::MAX && now.saturating_sub(seen) <= limit
            })
    }

    /// Start draining. Returns false if it already was.
    pub fn start_draining(&self) -> bool {
        let first = !self.draining.swap(true, Ordering::SeqCst);
        if first {
            metrics::gauge!(crate::metrics::NODE_DRAINING).set(1.0);
            metrics::gauge!(crate::metrics::NODE_READY).set(0.0);
        }
        first
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Serving: every shard thread is running (LiveKit's `GET /`).
    pub fn is_serving(&self) -> bool {
        self.shards_fresh(READINESS_STALE_AFTER)
    }

    /// Ready for new rooms and joins.
    pub fn is_ready(&self) -> bool {
        !self.is_draining() && self.is_serving()
    }

    /// Not stuck.
    pub fn is_alive(&self) -> bool {
        self.shards_fresh(LIVENESS_STALE_AFTER)
    }

    /// Publish readiness as a gauge (called about once a second).
    pub fn publish(&self) {
        metrics::gauge!(crate::metrics::NODE_READY).set(if self.is_ready() { 1.0 } else { 0.0 });
        metrics::gauge!(crate::metrics::NODE_DRAINING).set(if self.is_draining() {
            1.0
        } else {
            0.0
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_shards_and_drain() {
        let node = NodeState::new(2);
        assert!(!node.is_ready(), "no shard has started");
        node.heartbeat(0, Instant::now());
        assert!(!node.is_ready(), "shard 1 has not started");
        node.heartbeat(1, Instant::now());
        assert!(node.is_ready() && node.is_alive() && node.is_serving());
        assert!(node.start_draining());
        assert!(!node.start_draining());
        assert!(!node.is_ready());
        assert!(node.is_alive() && node.is_serving());
        let load = |participants, audio, video| ShardGauges {
            participants,
            tracks_published: [audio, video],
            ..Default::default()
        };
        node.set_load(0, &load(2, 1, 1));
        node.set_load(1, &load(3, 2, 0));
        node.set_load(7, &load(100, 9, 9));
        assert_eq!(node.participants(), 5);
        assert_eq!(node.published_tracks(), 4);
    }

    #[test]
    fn stale_shard_is_not_ready() {
        let node = NodeState::new(1);
        // A heartbeat from before the node's clock started counts as very old.
        node.heartbeats[0].store(0, Ordering::Relaxed);
        let later = NodeState {
            started: Instant::now() - READINESS_STALE_AFTER - Duration::from_secs(1),
            ..node
        };
        assert!(!later.is_serving());
        assert!(later.is_alive());
    }
}
