//! The deadlines of many timed things (a room's peer sessions, a shard's
//! rooms), so the owner finds the due ones without asking every one of them:
//! scanning all sessions after every event made a room O(N) per packet.
//!
//! A binary heap with lazy invalidation. Next to each timed thing its owner
//! keeps the instant it is queued at (a [`Queued`]); a heap entry whose
//! instant no longer matches is stale and skipped when it comes up. A deadline
//! that moves later keeps its earlier entry: that entry fires early once and
//! the owner queues the real deadline then — cheaper than a push per poll.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// When a timed thing is queued, if it is; kept by the owner next to the thing.
pub(crate) type Queued = Option<Instant>;

pub(crate) struct TimerQueue<K> {
    heap: BinaryHeap<Reverse<(Instant, K)>>,
}

impl<K: Ord> Default for TimerQueue<K> {
    fn default() -> Self {
        TimerQueue {
            heap: BinaryHeap::new(),
        }
    }
}

impl<K: Ord + Clone> TimerQueue<K> {
    /// Make sure `key` fires no later than `at`.
    pub fn schedule(&mut self, queued: &mut Queued, key: &K, at: Instant) {
        if queued.is_some_and(|q| q <= at) {
            return;
        }
        *queued = Some(at);
        self.heap.push(Reverse((at, key.clone())));
    }

    /// The earliest queued instant. It may be a stale entry's: an early wake
    /// that [`TimerQueue::pop_due`] discards.
    pub fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((t, _))| *t)
    }

    /// The next entry due at `now`, stale or not: pass it to [`fire`].
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, K)> {
        if self.next()? > now {
            return None;
        }
        self.heap.pop().map(|Reverse(e)| e)
    }

    /// Drop stale entries once they outnumber the `live` ones well: deadlines
    /// that keep moving earlier leave one behind each time.
    pub fn compact(&mut self, live: usize, is_current: impl Fn(Instant, &K) -> bool) {
        if self.heap.len() > 2 * live + 64 {
            self.heap.retain(|Reverse((t, k))| is_current(*t, k));
        }
    }
}

/// True if the popped entry `at` is the one `queued` refers to (the thing is
/// then no longer queued and the caller handles it); false for a stale entry.
pub(crate) fn fire(queued: &mut Queued, at: Instant) -> bool {
    if *queued == Some(at) {
        *queued = None;
        true
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn fires_the_earliest_and_skips_stale_entries() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut q = TimerQueue::default();
        let (mut a, mut b): (Queued, Queued) = (None, None);
        q.schedule(&mut a, &'a', ms(50));
        q.schedule(&mut b, &'b', ms(20));
        // a moves earlier: its 50 ms entry goes stale. Moving later keeps 10 ms.
        q.schedule(&mut a, &'a', ms(10));
        q.schedule(&mut a, &'a', ms(30));
        assert_eq!(q.next(), Some(ms(10)));
        assert_eq!(q.pop_due(ms(5)), None);

        let mut fired = Vec::new();
        while let Some((t, k)) = q.pop_due(ms(100)) {
            let slot = if k == 'a' { &mut a } else { &mut b };
            if fire(slot, t) {
                fired.push((k, t));
            }
        }
        assert_eq!(fired, vec![('a', ms(10)), ('b', ms(20))]);
        assert_eq!((a, b), (None, None));
    }

    #[test]
    fn compaction_keeps_only_current_entries() {
        let t0 = Instant::now();
        let mut q = TimerQueue::default();
        let mut slot: Queued = None;
        for n in (0..200u64).rev() {
            q.schedule(&mut slot, &1u8, t0 + Duration::from_millis(n));
        }
        q.compact(1, |t, _| slot == Some(t));
        assert_eq!(q.heap.len(), 1);
        assert_eq!(q.next(), Some(t0));
    }
}
