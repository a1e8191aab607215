//! When a shard sheds load, and when it takes new participants.
//!
//! A shard that cannot keep up skips media that waited too long (stale media,
//! see `shards.rs`); skipped packets leave every subscriber's video broken
//! until the next keyframe. Shedding ([`relais_media::Shard::set_shedding`])
//! sends everyone the lowest simulcast layer instead — a fraction of the
//! packets — so the shard catches up and video stays smooth, at a lower
//! resolution — and admits no one meanwhile, so that newcomers do not take
//! what is left from those already in the call. It starts when a second of work skipped a real amount of
//! stale media, and stops after a calm period; a relapse soon after doubles
//! the next calm period, so a shard just over its capacity does not flip
//! between the two every few seconds (each switch costs keyframes).

use std::time::{Duration, Instant};

/// Stale media skipped within one metrics interval (1 s) that starts shedding:
/// a few late packets after a hiccup are not an overload.
pub const SHED_AFTER_STALE: u64 = 100;
/// The first calm period before shedding stops.
const FIRST_HOLD: Duration = Duration::from_secs(10);
/// The longest calm period.
const MAX_HOLD: Duration = Duration::from_secs(300);
/// Shedding again within this time after it stopped doubles the calm period.
const RELAPSE_WITHIN: Duration = Duration::from_secs(60);

/// One shard's shedding state.
#[derive(Debug)]
pub struct LoadShedding {
    shedding: bool,
    /// While shedding: since when no overload was seen.
    calm_since: Option<Instant>,
    /// How long to stay calm before shedding stops.
    hold: Duration,
    stopped_at: Option<Instant>,
}

impl LoadShedding {
    pub fn is_shedding(&self) -> bool {
        self.shedding
    }

    pub fn new() -> Self {
        LoadShedding {
            shedding: false,
            calm_since: None,
            hold: FIRST_HOLD,
            stopped_at: None,
        }
    }

    /// Called once per metrics interval with the stale media skipped in it;
    /// returns whether to shed when that changes.
    pub fn update(&mut self, now: Instant, stale: u64) -> Option<bool> {
        if stale >= SHED_AFTER_STALE {
            self.calm_since = None;
            if self.shedding {
                return None;
            }
            self.shedding = true;
            let relapse = self
                .stopped_at
                .is_some_and(|t| now.duration_since(t) < RELAPSE_WITHIN);
            self.hold = if relapse {
                (self.hold * 2).min(MAX_HOLD)
            } else {
                FIRST_HOLD
            };
            return Some(true);
        }
        if !self.shedding {
            return None;
        }
        let calm_since = *self.calm_since.get_or_insert(now);
        if now.duration_since(calm_since) < self.hold {
            return None;
        }
        self.shedding = false;
        self.calm_since = None;
        self.stopped_at = Some(now);
        Some(false)
    }
}

/// Whether a shard takes new participants: never while it sheds load, and,
/// with a busy limit (`limit.shard_busy_fraction`), not after a second in
/// which its thread worked more than that fraction of the time. The second
/// check is proactive: it turns newcomers away while the shard still keeps up,
/// before media goes stale for everyone already in the call.
#[derive(Debug)]
pub struct Admission {
    /// 0 = no busy limit.
    busy_limit: f64,
    accepting: bool,
}

impl Admission {
    pub fn new(busy_limit: f64) -> Self {
        Admission {
            busy_limit,
            accepting: true,
        }
    }

    pub fn is_accepting(&self) -> bool {
        self.accepting
    }

    /// Called once per metrics interval with the shard's state over it;
    /// returns whether to accept joins when that changes.
    pub fn update(&mut self, shedding: bool, busy_fraction: f64) -> Option<bool> {
        let too_busy = self.busy_limit > 0.0 && busy_fraction >= self.busy_limit;
        let accepting = !shedding && !too_busy;
        (accepting != self.accepting).then(|| {
            self.accepting = accepting;
            accepting
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_stop_while_shedding_or_busier_than_the_limit() {
        let mut admission = Admission::new(0.85);
        assert_eq!(admission.update(false, 0.5), None);
        assert_eq!(admission.update(false, 0.85), Some(false));
        assert_eq!(admission.update(false, 0.99), None);
        assert_eq!(admission.update(false, 0.84), Some(true));
        assert_eq!(admission.update(true, 0.1), Some(false));
        assert_eq!(admission.update(false, 0.1), Some(true));
        // No busy limit: only shedding stops joins.
        let mut unlimited = Admission::new(0.0);
        assert_eq!(unlimited.update(false, 1.0), None);
        assert_eq!(unlimited.update(true, 1.0), Some(false));
    }

    #[test]
    fn starts_on_overload_stops_after_calm_and_holds_longer_after_a_relapse() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut load = LoadShedding::new();
        // A hiccup is not an overload.
        assert_eq!(load.update(at(0), SHED_AFTER_STALE - 1), None);
        assert_eq!(load.update(at(1), SHED_AFTER_STALE), Some(true));
        assert_eq!(load.update(at(2), 5_000), None);
        // Calm from 3 s: stops 10 s later, not before.
        for s in 3..13 {
            assert_eq!(load.update(at(s), 0), None, "at {s} s");
        }
        assert_eq!(load.update(at(13), 0), Some(false));
        assert_eq!(load.update(at(14), 0), None);
        // Overloaded again 20 s later: a relapse, the calm period doubles.
        assert_eq!(load.update(at(33), 1_000), Some(true));
        for s in 34..54 {
            assert_eq!(load.update(at(s), 0), None, "at {s} s");
        }
        assert_eq!(load.update(at(54), 0), Some(false));
        // Overloaded long after: back to the first calm period.
        assert_eq!(load.update(at(200), 1_000), Some(true));
        for s in 201..211 {
            assert_eq!(load.update(at(s), 0), None, "at {s} s");
        }
        assert_eq!(load.update(at(211), 0), Some(false));
    }
}
