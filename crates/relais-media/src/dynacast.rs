//! Dynacast: tell a publisher which simulcast layers anyone receives, so its
//! encoder can stop the others (`SubscribedQualityUpdate`).
//!
//! Every room tick, and when a subscriber's wishes change (a join, a
//! subscription, track settings), a simulcast track works out the layers its
//! subscribers want
//! (every layer up to the highest one an active subscriber may get; none when
//! nobody receives the track) and [`LayerDemand`] decides whether to tell the
//! publisher: at once when more layers are needed, and only after the smaller
//! demand has held for [`DOWNGRADE_AFTER`] when fewer are, so a subscriber
//! flapping between sizes does not make the encoder stop and restart layers.
//! SDKs act on it when the publisher enabled dynacast and ignore it otherwise.

use std::time::{Duration, Instant};

/// How long a smaller demand must hold before layers are turned off.
pub(crate) const DOWNGRADE_AFTER: Duration = Duration::from_secs(3);

/// Which layers (bit `i` = layer `i`, lowest first) a track's subscribers
/// want, and what the publisher was last told.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LayerDemand {
    /// What the publisher sends unless told otherwise: every layer.
    announced: u8,
    /// A smaller demand, and since when it has held.
    shrinking: Option<(u8, Instant)>,
}

impl LayerDemand {
    /// A track publishing `layers` layers, all on.
    pub(crate) fn new(layers: usize) -> Self {
        LayerDemand {
            announced: all_layers(layers),
            shrinking: None,
        }
    }

    /// This tick's demand; returns the layers to announce when the publisher
    /// should be told.
    pub(crate) fn update(&mut self, now: Instant, wanted: u8) -> Option<u8> {
        if wanted == self.announced {
            self.shrinking = None;
            return None;
        }
        let grows = wanted & !self.announced != 0;
        if grows {
            self.shrinking = None;
            self.announced = wanted;
            return Some(wanted);
        }
        match self.shrinking {
            Some((mask, since)) if mask == wanted => {
                if now.duration_since(since) >= DOWNGRADE_AFTER {
                    self.shrinking = None;
                    self.announced = wanted;
                    return Some(wanted);
                }
                None
            }
            _ => {
                self.shrinking = Some((wanted, now));
                None
            }
        }
    }
}

/// Layers `0..n` on.
pub(crate) fn all_layers(n: usize) -> u8 {
    if n >= 8 {
        u8::MAX
    } else {
        (1u8 << n) - 1
    }
}

/// Layers `0..=top` on (every layer below the highest wanted one stays on, so
/// a subscriber can fall back when bandwidth drops); nothing for `None`.
pub(crate) fn up_to(top: Option<usize>, n: usize) -> u8 {
    top.map_or(0, |top| all_layers((top + 1).min(n)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        assert_eq!(all_layers(3), 0b111);
        assert_eq!(up_to(Some(0), 3), 0b001);
        assert_eq!(up_to(Some(7), 3), 0b111);
        assert_eq!(up_to(None, 3), 0);
    }

    #[test]
    fn more_layers_at_once_fewer_after_a_while() {
        let t0 = Instant::now();
        let mut d = LayerDemand::new(3);
        assert_eq!(d.update(t0, 0b111), None, "all layers on is the start");
        // Fewer: only once the smaller demand has held.
        assert_eq!(d.update(t0, 0b001), None);
        assert_eq!(d.update(t0 + Duration::from_secs(1), 0b001), None);
        assert_eq!(d.update(t0 + DOWNGRADE_AFTER, 0b001), Some(0b001));
        assert_eq!(d.update(t0 + DOWNGRADE_AFTER, 0b001), None, "told once");
        // More: at once.
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(d.update(t1, 0b011), Some(0b011));
        // A dip shorter than the delay changes nothing.
        assert_eq!(d.update(t1, 0b001), None);
        assert_eq!(d.update(t1 + Duration::from_secs(1), 0b011), None);
        assert_eq!(
            d.update(t1 + Duration::from_secs(5), 0b001),
            None,
            "the wait starts over"
        );
        // Nobody receives the track: every layer off, after the delay.
        let t2 = t1 + Duration::from_secs(20);
        assert_eq!(d.update(t2, 0), None);
        assert_eq!(d.update(t2 + DOWNGRADE_AFTER, 0), Some(0));
    }
}
