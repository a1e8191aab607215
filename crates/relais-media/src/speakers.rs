//! Active speakers, from the audio level publishers put in every audio packet
//! (the RFC 6464 header extension: `-127..=0` dBov, 0 the loudest).
//!
//! Per published audio track an [`AudioLevelMeter`] notes, packet by packet,
//! how much of an interval was voiced and how loud. Every interval the room
//! takes one level per participant (its loudest track) and [`ActiveSpeakers`]
//! says what changed, as LiveKit's `SpeakersChanged` carries it: a speaker who
//! started, whose level moved by more than half, or who fell silent. Clients
//! keep the list themselves (`ActiveSpeakersChanged` in every SDK), so only
//! changes are sent.
//!
//! The defaults follow LiveKit's (`audio.active_level: 35`,
//! `min_percentile: 40`, two smoothing intervals).

use std::hash::Hash;
use std::time::Duration;

use crate::HashMap;

/// Louder than this (dBov) counts as voice.
const ACTIVE_LEVEL_DBOV: i8 = -35;
/// Share of an interval that must be voiced for the participant to speak.
const MIN_VOICED_SHARE: f32 = 0.4;
/// Audio each packet carries (Opus' 20 ms frames, what every SDK sends).
const PACKET_DURATION: Duration = Duration::from_millis(20);
/// Silent intervals in a row after which a speaker is no longer active.
const QUIET_INTERVALS: u8 = 2;
/// A level change smaller than this share of the reported level is not sent.
const LEVEL_CHANGE: f32 = 0.5;

/// Linear amplitude (0..=1) of a level in dBov.
fn linear(dbov: i8) -> f32 {
    10f32.powf(f32::from(dbov.min(0)) / 20.0)
}

/// Voiced time and loudness of one audio track over the current interval.
/// Two additions per packet; no allocation.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct AudioLevelMeter {
    voiced_packets: u32,
    voiced_amplitude: f32,
}

impl AudioLevelMeter {
    /// One packet's audio level (dBov).
    pub(crate) fn observe(&mut self, dbov: i8) {
        if dbov >= ACTIVE_LEVEL_DBOV {
            self.voiced_packets += 1;
            self.voiced_amplitude += linear(dbov);
        }
    }

    /// The level over `interval` (mean amplitude of the voiced packets, or 0
    /// when less than [`MIN_VOICED_SHARE`] of it was voiced), and start over.
    pub(crate) fn take(&mut self, interval: Duration) -> f32 {
        let meter = std::mem::take(self);
        let voiced = PACKET_DURATION * meter.voiced_packets;
        if meter.voiced_packets == 0
            || voiced.as_secs_f32() < MIN_VOICED_SHARE * interval.as_secs_f32()
        {
            return 0.0;
        }
        meter.voiced_amplitude / meter.voiced_packets as f32
    }
}

/// A change to tell clients: who, their level, and whether they speak.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct SpeakerChange<K> {
    pub(crate) who: K,
    pub(crate) level: f32,
    pub(crate) active: bool,
}

#[derive(Debug, Default)]
struct Speaker {
    smoothed: f32,
    quiet: u8,
    reported: Option<f32>,
}

/// The room's speakers, interval after interval.
#[derive(Debug)]
pub(crate) struct ActiveSpeakers<K> {
    speakers: HashMap<K, Speaker>,
}

impl<K> Default for ActiveSpeakers<K> {
    fn default() -> Self {
        ActiveSpeakers {
            speakers: HashMap::default(),
        }
    }
}

impl<K: Copy + Eq + Hash> ActiveSpeakers<K> {
    /// Who speaks now, as last reported (for a participant who just joined).
    pub(crate) fn current(&self) -> Vec<SpeakerChange<K>> {
        self.speakers
            .iter()
            .filter_map(|(who, s)| {
                s.reported.map(|level| SpeakerChange {
                    who: *who,
                    level,
                    active: true,
                })
            })
            .collect()
    }

    /// One interval's levels (participants not listed were silent); returns
    /// what clients must be told. `present` filters out who has left.
    pub(crate) fn update(
        &mut self,
        levels: &[(K, f32)],
        present: impl Fn(&K) -> bool,
    ) -> Vec<SpeakerChange<K>> {
        for (who, level) in levels {
            if *level > 0.0 {
                self.speakers.entry(*who).or_default();
            }
        }
        let mut changes = Vec::new();
        self.speakers.retain(|who, s| {
            if !present(who) {
                return false;
            }
            let level = levels
                .iter()
                .find(|(k, _)| k == who)
                .map_or(0.0, |(_, l)| *l);
            if level > 0.0 {
                s.quiet = 0;
                s.smoothed = if s.smoothed > 0.0 {
                    (s.smoothed + level) / 2.0
                } else {
                    level
                };
            } else {
                s.quiet += 1;
                s.smoothed = if s.quiet >= QUIET_INTERVALS {
                    0.0
                } else {
                    s.smoothed / 2.0
                };
            }
            if s.smoothed > 0.0 {
                let moved = s
                    .reported
                    .is_none_or(|r| (s.smoothed - r).abs() > LEVEL_CHANGE * r);
                if moved {
                    s.reported = Some(s.smoothed);
                    changes.push(SpeakerChange {
                        who: *who,
                        level: s.smoothed,
                        active: true,
                    });
                }
                true
            } else {
                if s.reported.is_some() {
                    changes.push(SpeakerChange {
                        who: *who,
                        level: 0.0,
                        active: false,
                    });
                }
                false
            }
        });
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(500);

    fn meter(packets: &[i8]) -> f32 {
        let mut m = AudioLevelMeter::default();
        for l in packets {
            m.observe(*l);
        }
        m.take(TICK)
    }

    #[test]
    fn a_meter_needs_enough_voiced_audio() {
        // 25 packets of 20 ms fill 500 ms.
        assert!((meter(&[-20; 25]) - linear(-20)).abs() < 1e-6);
        assert!(meter(&[-20; 10]) > 0.0, "10 × 20 ms = 40 % voiced");
        assert_eq!(meter(&[-20; 9]), 0.0, "36 % voiced is not speech");
        assert_eq!(meter(&[-60; 25]), 0.0, "quieter than -35 dBov is not voice");
        assert_eq!(meter(&[]), 0.0);
        let mut m = AudioLevelMeter::default();
        m.observe(-10);
        m.take(TICK);
        assert_eq!(m.take(TICK), 0.0, "take starts a new interval");
    }

    #[test]
    fn speakers_start_move_and_stop() {
        let mut s = ActiveSpeakers::default();
        let all = |_: &u32| true;
        let change = |who, level, active| SpeakerChange { who, level, active };

        assert_eq!(s.update(&[(1, 0.2)], all), vec![change(1, 0.2, true)]);
        // A small move is not reported; a large one is.
        assert!(s.update(&[(1, 0.25)], all).is_empty());
        let got = s.update(&[(1, 0.9), (2, 0.0)], all);
        assert_eq!(got.len(), 1);
        assert!(got[0].active && got[0].level > 0.5);
        // Silence: the level halves once, then the speaker stops.
        let got = s.update(&[], all);
        assert!(got.is_empty() || got[0].active, "{got:?}");
        let got = s.update(&[], all);
        assert_eq!(got, vec![change(1, 0.0, false)]);
        assert!(
            s.update(&[], all).is_empty(),
            "stopped speakers are told once"
        );
    }

    #[test]
    fn current_lists_who_speaks_as_reported() {
        let mut s = ActiveSpeakers::default();
        assert!(s.current().is_empty());
        s.update(&[(1u32, 0.2), (2, 0.4)], |_| true);
        let mut now: Vec<(u32, f32)> = s.current().iter().map(|c| (c.who, c.level)).collect();
        now.sort_by_key(|(k, _)| *k);
        assert_eq!(now, vec![(1, 0.2), (2, 0.4)]);
        s.update(&[(2, 0.4)], |_| true);
        s.update(&[(2, 0.4)], |_| true);
        assert_eq!(s.current().len(), 1, "1 stopped after two quiet intervals");
    }

    #[test]
    fn who_left_is_forgotten_without_a_message() {
        let mut s = ActiveSpeakers::default();
        assert_eq!(s.update(&[(7u32, 0.3)], |_| true).len(), 1);
        assert!(s.update(&[], |_| false).is_empty());
        assert_eq!(
            s.update(&[(7, 0.3)], |_| true).len(),
            1,
            "back again: reported afresh"
        );
    }
}
