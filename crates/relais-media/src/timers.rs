//! The deadlines of many timed things (a room's peer sessions, a shard's
//! rooms), so the owner finds the due ones without asking every one of them:
//! scanning all sessions after every event made a room O(N) per packet.
//!
//! A binary heap with lazy invalidation. Next to each timed thing its owner
//! keeps the entry it is queued under (a [`Queued`]: instant and a unique id —
//! a deadline often returns to the same instant, so the instant alone would
//! let old entries pass for current ones); any other entry for it is stale and
//! skipped when it comes up. A deadline that moves later keeps its earlier
//! entry: that entry fires early once and the owner queues the real deadline
//! then — cheaper than a push per poll. Except at the front: there an early
//! or stale entry would wake the caller for nothing, so owners re-queue or
//! drop it as soon as it gets there ([`TimerQueue::pop_early_front`]).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// A heap entry: when it fires, and an id no other entry has.
pub(crate) type Entry = (Instant, u64);

/// The entry a timed thing is queued under, if any; kept by the owner next to
/// the thing.
pub(crate) type Queued = Option<Entry>;

pub(crate) struct TimerQueue<K> {
    heap: BinaryHeap<Reverse<(Entry, K)>>,
    next_id: u64,
}

impl<K: Ord> Default for TimerQueue<K> {
    fn default() -> Self {
        TimerQueue {
            heap: BinaryHeap::new(),
            next_id: 0,
        }
    }
}

impl<K: Ord + Clone> TimerQueue<K> {
    /// Make sure `key` fires no later than `at`.
    pub fn schedule(&mut self, queued: &mut Queued, key: &K, at: Instant) {
        if queued.is_some_and(|(q, _)| q <= at) {
            return;
        }
        let entry = (at, self.next_id);
        self.next_id += 1;
        *queued = Some(entry);
        self.heap.push(Reverse((entry, key.clone())));
    }

    /// The earliest queued instant. It may be a stale entry's: an early wake
    /// that [`TimerQueue::pop_due`] discards.
    pub fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse(((at, _), _))| *at)
    }

    /// The front entry, if `early` says it would only wake its owner early
    /// (stale, or before the thing's real deadline): the owner re-queues the
    /// thing at its real deadline now, so that [`TimerQueue::next`] is one.
    /// Lazy invalidation leaves such entries anywhere in the heap; at the
    /// front they would each cost a wake-up that finds nothing to do.
    pub fn pop_early_front(&mut self, early: impl FnOnce(Entry, &K) -> bool) -> Option<(Entry, K)> {
        let Reverse((entry, key)) = self.heap.peek()?;
        if !early(*entry, key) {
            return None;
        }
        self.heap.pop().map(|Reverse(e)| e)
    }

    /// The next entry due at `now`, stale or not: pass it to [`fire`].
    pub fn pop_due(&mut self, now: Instant) -> Option<(Entry, K)> {
        if self.next()? > now {
            return None;
        }
        self.heap.pop().map(|Reverse(e)| e)
    }

    /// Drop stale entries once they outnumber the `live` ones well: deadlines
    /// that keep moving earlier leave one behind each time.
    pub fn compact(&mut self, live: usize, mut is_current: impl FnMut(Entry, &K) -> bool) {
        if self.heap.len() > 2 * live + 64 {
            self.heap
                .retain(|Reverse((entry, k))| is_current(*entry, k));
        }
    }
}

/// True if the popped `entry` is the one `queued` refers to (the thing is
/// then no longer queued and the caller handles it); false for a stale entry.
pub(crate) fn fire(queued: &mut Queued, entry: Entry) -> bool {
    if *queued == Some(entry) {
        *queued = None;
        true
    } else {
        false
    }
}

/// Instants a fixed step apart from a common origin, to which deadlines are
/// rounded up: periodic work of many sessions (a publisher's NACK and
/// transport-wide feedback every 33 and 50 ms) then falls due at the same
/// instants, and the shard wakes once for all of it instead of once for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimerGrid {
    origin: Instant,
    step: Duration,
}

impl TimerGrid {
    /// None for a zero `step`: deadlines stay as they are.
    pub fn new(origin: Instant, step: Duration) -> Option<TimerGrid> {
        (!step.is_zero()).then_some(TimerGrid { origin, step })
    }

    /// The first grid instant at or after `at`; `at` itself if it is due at
    /// `now` already (work wanted now is not put off) or before the origin.
    pub fn round_up(&self, at: Instant, now: Instant) -> Instant {
        if at <= now {
            return at;
        }
        let Some(since) = at.checked_duration_since(self.origin) else {
            return at;
        };
        let step = self.step.as_nanos();
        let steps = since.as_nanos().div_ceil(step);
        u64::try_from(steps * step).map_or(at, |nanos| self.origin + Duration::from_nanos(nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grid_rounds_future_deadlines_up_to_its_instants() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let us = |n: u64| t0 + Duration::from_micros(n);
        let grid = TimerGrid::new(t0, Duration::from_millis(5)).expect("a step");
        // Deadlines 33 and 50 ms apart, from sessions started at odd instants,
        // land on shared instants.
        assert_eq!(grid.round_up(us(33_100), ms(1)), ms(35));
        assert_eq!(grid.round_up(us(31_900), ms(1)), ms(35));
        assert_eq!(grid.round_up(ms(35), ms(1)), ms(35), "on the grid already");
        // Due now or overdue: left alone.
        assert_eq!(grid.round_up(us(33_100), us(33_100)), us(33_100));
        assert_eq!(grid.round_up(ms(2), ms(3)), ms(2));
        assert_eq!(TimerGrid::new(t0, Duration::ZERO), None);
    }

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
        let fired: Vec<_> = fired.into_iter().map(|(k, (t, _))| (k, t)).collect();
        assert_eq!(fired, vec![('a', ms(10)), ('b', ms(20))]);
        assert_eq!((a, b), (None, None));
    }

    #[test]
    fn early_entries_leave_the_front() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut q = TimerQueue::default();
        let (mut a, mut b): (Queued, Queued) = (None, None);
        // a waits 10 ms (a frame), then its frame leaves and its real deadline
        // is 200 ms; b's deadline is 50 ms.
        q.schedule(&mut a, &'a', ms(10));
        q.schedule(&mut b, &'b', ms(50));
        let deadline = |k: char| if k == 'a' { ms(200) } else { ms(50) };
        while let Some((entry, k)) = q.pop_early_front(|(at, _), k| at < deadline(*k)) {
            let slot = if k == 'a' { &mut a } else { &mut b };
            assert!(fire(slot, entry), "a's 10 ms entry was current");
            q.schedule(slot, &k, deadline(k));
        }
        assert_eq!(q.next(), Some(ms(50)), "no wake-up at 10 ms");
        assert_eq!(a.map(|(at, _)| at), Some(ms(200)));
        assert_eq!(q.pop_early_front(|_, _| false), None);
    }

    #[test]
    fn compaction_keeps_only_current_entries() {
        let t0 = Instant::now();
        let mut q = TimerQueue::default();
        let mut slot: Queued = None;
        for n in (0..200u64).rev() {
            q.schedule(&mut slot, &1u8, t0 + Duration::from_millis(n));
        }
        q.compact(1, |entry, _| slot == Some(entry));
        assert_eq!(q.heap.len(), 1);
        assert_eq!(q.next(), Some(t0));
    }

    #[test]
    fn an_old_entry_at_the_same_instant_is_stale() {
        let t0 = Instant::now();
        let mut q = TimerQueue::default();
        let mut slot: Queued = None;
        // Queued at t0 + 1 s, pulled to t0, fired, and back at t0 + 1 s: the
        // first t0 + 1 s entry must not count as the current one.
        let later = t0 + Duration::from_secs(1);
        q.schedule(&mut slot, &1u8, later);
        q.schedule(&mut slot, &1u8, t0);
        let (entry, _) = q.pop_due(t0).expect("due");
        assert!(fire(&mut slot, entry));
        q.schedule(&mut slot, &1u8, later);
        let mut current = 0;
        while let Some((entry, _)) = q.pop_due(later) {
            current += usize::from(fire(&mut slot, entry));
        }
        assert_eq!(current, 1, "fires once");
    }
}
