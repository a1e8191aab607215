//! Connection quality per participant (`ConnectionQualityUpdate`), the
//! indicator SDKs show next to each participant.
//!
//! The stats str0m reports for every stream (about once a second) say how
//! many packets went each way and how many were lost, and the round-trip
//! time. Over each [`QUALITY_INTERVAL`] a participant's loss ratio (both
//! directions together) and worst round-trip time give a MOS-like score from
//! 1 to 5, and the score a quality: EXCELLENT, GOOD or POOR. A participant
//! that moved no media in the interval keeps its last quality (EXCELLENT to
//! begin with): silence is not a bad connection. Only changes are sent, and
//! only to those who follow them, as LiveKit sends them: the participant
//! itself and the subscribers of its tracks (`room/announce.rs`).

use std::hash::Hash;
use std::time::{Duration, Instant};

use relais_proto::livekit::ConnectionQuality;

use crate::HashMap;

/// How often qualities are worked out (LiveKit updates every 5 s as well).
pub(crate) const QUALITY_INTERVAL: Duration = Duration::from_secs(5);

/// Score at and above which the quality is EXCELLENT / GOOD.
const EXCELLENT_FROM: f32 = 4.1;
const GOOD_FROM: f32 = 3.0;

/// The score of a loss ratio (0..=1) and round-trip time.
pub(crate) fn score(loss: f32, rtt: Duration) -> f32 {
    // Each percent of loss costs 0.25; round trips beyond 200 ms cost 0.5
    // per 100 ms (interactivity suffers long before audio breaks up).
    let loss_penalty = loss * 100.0 * 0.25;
    let rtt_ms = rtt.as_secs_f32() * 1000.0;
    let rtt_penalty = ((rtt_ms - 200.0).max(0.0) / 100.0) * 0.5;
    (5.0 - loss_penalty - rtt_penalty).clamp(1.0, 5.0)
}

/// The quality a score stands for.
pub(crate) fn quality_of(score: f32) -> ConnectionQuality {
    if score >= EXCELLENT_FROM {
        ConnectionQuality::Excellent
    } else if score >= GOOD_FROM {
        ConnectionQuality::Good
    } else {
        ConnectionQuality::Poor
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Window {
    packets: u64,
    lost: u64,
    worst_rtt: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Link {
    window: Window,
    reported: (ConnectionQuality, f32),
}

impl Default for Link {
    fn default() -> Self {
        Link {
            window: Window::default(),
            reported: (ConnectionQuality::Excellent, 5.0),
        }
    }
}

/// A change to tell clients: who, quality, score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct QualityChange<K> {
    pub(crate) who: K,
    pub(crate) quality: ConnectionQuality,
    pub(crate) score: f32,
}

/// Every participant's link over the current interval.
#[derive(Debug)]
pub(crate) struct ConnectionQualities<K> {
    links: HashMap<K, Link>,
    next_update: Option<Instant>,
}

impl<K> Default for ConnectionQualities<K> {
    fn default() -> Self {
        ConnectionQualities {
            links: HashMap::default(),
            next_update: None,
        }
    }
}

impl<K: Copy + Eq + Hash> ConnectionQualities<K> {
    /// A stream's figures since its previous stats: packets that arrived (or
    /// were sent), packets lost, and the round-trip time if known.
    pub(crate) fn observe(&mut self, who: K, packets: u64, lost: u64, rtt: Option<Duration>) {
        let w = &mut self.links.entry(who).or_default().window;
        w.packets += packets;
        w.lost += lost;
        if let Some(rtt) = rtt {
            w.worst_rtt = w.worst_rtt.max(rtt);
        }
    }

    /// Once per [`QUALITY_INTERVAL`]: the qualities that changed. `present`
    /// filters out who has left.
    pub(crate) fn update(
        &mut self,
        now: Instant,
        present: impl Fn(&K) -> bool,
    ) -> Vec<QualityChange<K>> {
        match self.next_update {
            Some(t) if now < t => return Vec::new(),
            None => {
                self.next_update = Some(now + QUALITY_INTERVAL);
                return Vec::new();
            }
            Some(_) => self.next_update = Some(now + QUALITY_INTERVAL),
        }
        let mut changes = Vec::new();
        self.links.retain(|who, link| {
            if !present(who) {
                return false;
            }
            let w = std::mem::take(&mut link.window);
            let total = w.packets + w.lost;
            if total == 0 {
                return true;
            }
            let score = score(w.lost as f32 / total as f32, w.worst_rtt);
            let quality = quality_of(score);
            if quality != link.reported.0 {
                changes.push(QualityChange {
                    who: *who,
                    quality,
                    score,
                });
            }
            link.reported = (quality, score);
            true
        });
        changes
    }

    /// Everyone's current quality (for a participant who just connected).
    pub(crate) fn current(&self, who: impl Iterator<Item = K>) -> Vec<QualityChange<K>> {
        who.map(|k| {
            let (quality, score) = self
                .links
                .get(&k)
                .map_or((ConnectionQuality::Excellent, 5.0), |l| l.reported);
            QualityChange {
                who: k,
                quality,
                score,
            }
        })
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_and_qualities() {
        assert_eq!(score(0.0, Duration::from_millis(20)), 5.0);
        assert_eq!(
            quality_of(score(0.0, Duration::ZERO)),
            ConnectionQuality::Excellent
        );
        assert_eq!(
            quality_of(score(0.02, Duration::ZERO)),
            ConnectionQuality::Excellent
        );
        assert_eq!(
            quality_of(score(0.05, Duration::ZERO)),
            ConnectionQuality::Good
        );
        assert_eq!(
            quality_of(score(0.10, Duration::ZERO)),
            ConnectionQuality::Poor
        );
        assert_eq!(
            quality_of(score(0.0, Duration::from_millis(500))),
            ConnectionQuality::Good
        );
        assert_eq!(score(1.0, Duration::from_secs(5)), 1.0);
    }

    #[test]
    fn only_changes_are_reported_once_per_interval() {
        let t0 = Instant::now();
        let mut q = ConnectionQualities::default();
        let all = |_: &u32| true;
        q.observe(1, 1000, 0, Some(Duration::from_millis(10)));
        q.observe(2, 900, 100, None);
        assert!(
            q.update(t0, all).is_empty(),
            "the first call starts the clock"
        );
        q.observe(2, 900, 100, None);
        assert!(
            q.update(t0 + Duration::from_secs(1), all).is_empty(),
            "not due yet"
        );
        let changes = q.update(t0 + QUALITY_INTERVAL, all);
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(changes[0].who, 2);
        assert_eq!(changes[0].quality, ConnectionQuality::Poor);
        // No media in the next interval: the quality stays, nothing is sent.
        assert!(q.update(t0 + 2 * QUALITY_INTERVAL, all).is_empty());
        // Recovered.
        q.observe(2, 1000, 0, None);
        let changes = q.update(t0 + 3 * QUALITY_INTERVAL, all);
        assert_eq!(changes[0].quality, ConnectionQuality::Excellent);
        // Current, for a newcomer: everyone, unknown ones as excellent.
        let now: Vec<_> = q
            .current([1, 2, 3].into_iter())
            .iter()
            .map(|c| c.quality)
            .collect();
        assert_eq!(now, [ConnectionQuality::Excellent; 3]);
        // Who left is forgotten.
        q.observe(2, 10, 90, None);
        assert!(q.update(t0 + 4 * QUALITY_INTERVAL, |k| *k != 2).is_empty());
    }
}
