//! Giving the heap's free pages back to the system once the node quiets down.
//!
//! glibc's malloc keeps the pages of freed blocks for the next allocations: a
//! node that carried a few hundred participants keeps their sessions' memory
//! resident after they have all left (about half of its RSS at rest in the
//! churn benchmark: 42 MiB, of which 24 remain after a trim). Operators read
//! RSS; a node at rest should show what it holds. So when the node has lost
//! participants and stayed without new ones for a while, the server asks
//! malloc to return what it can (`malloc_trim`, which walks each arena and
//! releases whole free pages). Not on every departure: the next peak faults the
//! pages in again, and the walk holds each arena's lock for its duration.

use std::time::Duration;

/// Participants the node must have lost since its last peak.
const MIN_DROP: u64 = 10;
/// How long the node must have gained no participant.
const CALM: Duration = Duration::from_secs(10);

/// Decides, from the node's participant count sampled at a steady interval,
/// when to trim.
#[derive(Debug)]
pub struct HeapTrim {
    interval: Duration,
    /// The most participants since the last trim.
    high: u64,
    last: u64,
    /// Time since the count last grew.
    calm: Duration,
}

impl HeapTrim {
    /// For samples `interval` apart.
    pub fn new(interval: Duration) -> Self {
        HeapTrim {
            interval,
            high: 0,
            last: 0,
            calm: Duration::ZERO,
        }
    }

    /// The node's participants now; true when the heap should be trimmed.
    pub fn observe(&mut self, participants: u64) -> bool {
        if participants > self.last {
            self.calm = Duration::ZERO;
        } else {
            self.calm += self.interval;
        }
        self.last = participants;
        self.high = self.high.max(participants);
        if self.high - participants >= MIN_DROP && self.calm >= CALM {
            self.high = participants;
            return true;
        }
        false
    }
}

/// Return the allocator's free pages to the system; false where the allocator
/// has no such call (it is glibc's).
pub fn release_free_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes no pointer and only works on malloc's own
        // state, under its arena locks.
        unsafe { libc::malloc_trim(0) };
        true
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn run(trim: &mut HeapTrim, counts: &[u64]) -> Vec<usize> {
        counts
            .iter()
            .enumerate()
            .filter(|(_, &n)| trim.observe(n))
            .map(|(i, _)| i)
            .collect()
    }

    #[test]
    fn trims_once_after_a_drop_and_ten_calm_seconds() {
        let mut trim = HeapTrim::new(SECOND);
        // 50 join by second 2, 45 leave at second 3: trimmed ten seconds
        // after the last join, once.
        let mut counts = vec![0, 20, 50, 5];
        counts.extend([5; 20]);
        assert_eq!(run(&mut trim, &counts), vec![2 + 10]);
    }

    #[test]
    fn no_trim_for_a_small_drop_or_while_people_keep_joining() {
        let mut trim = HeapTrim::new(SECOND);
        // A few leave: not worth it.
        let mut counts = vec![0, 8, 2];
        counts.extend([2; 20]);
        assert!(run(&mut trim, &counts).is_empty());
        // Many leave but someone joins every 5 s: not calm.
        let mut trim = HeapTrim::new(SECOND);
        let mut counts = vec![100, 40];
        for n in 41..50 {
            counts.extend([n - 1; 4]);
            counts.push(n);
        }
        assert!(run(&mut trim, &counts).is_empty());
        // Once they stop, it trims.
        counts.extend([49; 11]);
        let mut trim = HeapTrim::new(SECOND);
        assert_eq!(run(&mut trim, &counts).len(), 1);
    }

    /// A heap left full of holes (most small blocks freed, every hundredth
    /// kept) stays resident until trimmed.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn release_returns_the_pages_of_freed_blocks() {
        fn rss_kib() -> u64 {
            let status = std::fs::read_to_string("/proc/self/status").unwrap();
            let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
            line.split_whitespace().nth(1).unwrap().parse().unwrap()
        }
        let mut blocks: Vec<Vec<u8>> = (0..64 * 1024).map(|i| vec![i as u8; 1000]).collect();
        let mut kept = Vec::new();
        for (i, block) in blocks.drain(..).enumerate() {
            if i % 100 == 0 {
                kept.push(block);
            }
        }
        let before = rss_kib();
        assert!(release_free_memory());
        let after = rss_kib();
        assert_eq!(kept.len(), 656);
        // ~64 MB were freed in place; most of it comes back.
        assert!(
            after + 32 * 1024 < before,
            "RSS {before} KiB -> {after} KiB"
        );
    }
}
