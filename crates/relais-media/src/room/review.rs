//! The room's periodic review (every [`LAYER_CHECK_INTERVAL`]): which
//! simulcast layer each subscriber gets, which layers publishers need to send
//! (dynacast), connection qualities and active speakers.
//!
//! [`LAYER_CHECK_INTERVAL`]: super::LAYER_CHECK_INTERVAL

use std::time::Instant;

use relais_proto::livekit::{
    signal_response, SpeakerInfo, SpeakersChanged, SubscribedCodec, SubscribedQuality,
    SubscribedQualityUpdate,
};
use tracing::debug;

use crate::dynacast;
use crate::participant::ParticipantKey;
use crate::speakers::SpeakerChange;

use super::{layer_qualities, Room, LAYER_STALE_AFTER};

impl Room {
    /// Point every subscriber at the best layer still flowing.
    pub(super) fn update_layer_targets(&mut self, now: Instant) {
        let load_cap = self.load_layer_cap;
        let mut wants_keyframe = Vec::new();
        for (sid, track) in &mut self.tracks {
            if track.layers.len() < 2 {
                continue;
            }
            let flows = |l: &super::Layer| {
                l.last_seen
                    .is_some_and(|t| now.duration_since(t) < LAYER_STALE_AFTER)
            };
            let best = track.layers.iter().rposition(flows).unwrap_or(0);
            let settled = track
                .first_packet
                .is_some_and(|t| now.duration_since(t) >= LAYER_STALE_AFTER);
            let flowing = if settled {
                (track.layers.iter().enumerate())
                    .filter(|(layer, l)| *layer < 32 && flows(l))
                    .fold(0u32, |mask, (layer, _)| mask | 1 << layer)
            } else {
                0
            };
            if best != track.best_layer || flowing != track.flowing {
                track.best_layer = best;
                track.flowing = flowing;
                for s in &mut track.subscribers {
                    s.aim(best, flowing, load_cap);
                }
            }
            if track
                .subscribers
                .iter()
                .any(|s| s.forwarder.wants_keyframe())
            {
                wants_keyframe.push(sid.clone());
            }
        }
        for sid in wants_keyframe {
            self.request_keyframe(now, &sid);
        }
    }

    /// Cap every subscriber's simulcast layer at `cap` (`usize::MAX`: no cap),
    /// for a shard that cannot keep up: the lowest layer of a 3-layer track is
    /// a fraction of the packets, so everyone gets smooth low-resolution video
    /// instead of the broken high-resolution video that skipped packets
    /// leave. Switches happen on keyframes (asked for here), and the publishers
    /// are told at once which layers are still received (dynacast).
    pub fn set_load_layer_cap(&mut self, now: Instant, cap: usize) {
        if cap == self.load_layer_cap {
            return;
        }
        self.load_layer_cap = cap;
        for track in self.tracks.values_mut() {
            let (best, flowing) = (track.best_layer, track.flowing);
            for s in &mut track.subscribers {
                s.aim(best, flowing, cap);
            }
        }
        self.update_layer_targets(now);
        self.update_dynacast(now);
    }

    /// Tell publishers which simulcast layers anyone receives
    /// (`SubscribedQualityUpdate`, see `dynacast.rs`).
    pub(super) fn update_dynacast(&mut self, now: Instant) {
        let load_cap = self.load_layer_cap;
        let mut updates = Vec::new();
        for (sid, track) in &mut self.tracks {
            let layer_qualities = layer_qualities(&track.layers, &track.info);
            let n = layer_qualities.len();
            if n < 2 {
                continue;
            }
            let simulcast = track.layers.len() > 1;
            let top = track
                .subscribers
                .iter()
                .filter(|s| !s.forwarder.is_paused())
                .map(|s| {
                    let wanted = if simulcast {
                        // Above the wish only when the layers it asked for do
                        // not flow (`Subscription::aim`): that layer is kept.
                        s.max_layer.max(s.forwarder.target_layer())
                    } else {
                        s.max_spatial.map_or(usize::MAX, usize::from)
                    };
                    wanted.min(n - 1).min(load_cap)
                })
                .max();
            let Some(mask) = track.demand.update(now, dynacast::up_to(top, n)) else {
                continue;
            };
            let qualities: Vec<SubscribedQuality> = layer_qualities
                .iter()
                .enumerate()
                .map(|(i, &quality)| SubscribedQuality {
                    quality,
                    enabled: mask & (1 << i) != 0,
                })
                .collect();
            let codec = track
                .info
                .mime_type
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase();
            debug!(track = %sid, layers = format!("{mask:0n$b}"), "dynacast: layers wanted");
            updates.push((
                track.publisher,
                SubscribedQualityUpdate {
                    track_sid: sid.clone(),
                    subscribed_qualities: qualities.clone(),
                    subscribed_codecs: vec![SubscribedCodec { codec, qualities }],
                },
            ));
        }
        for (publisher, update) in updates {
            self.signal(
                publisher,
                signal_response::Message::SubscribedQualityUpdate(update),
            );
        }
    }

    /// Tell those who follow a participant's connection quality that it
    /// changed (`ConnectionQualityUpdate`).
    pub(super) fn update_qualities(&mut self, now: Instant) {
        self.sample_streams(now);
        let participants = &self.participants;
        let changes = self
            .qualities
            .update(now, |key| participants.contains_key(key));
        if !changes.is_empty() {
            self.tell_qualities(&changes);
        }
    }

    pub(super) fn speaker_infos(
        &self,
        changes: &[SpeakerChange<ParticipantKey>],
    ) -> Vec<SpeakerInfo> {
        changes
            .iter()
            .filter_map(|c| {
                let p = self.participants.get(&c.who)?;
                Some(SpeakerInfo {
                    sid: p.info.sid.clone(),
                    level: c.level,
                    active: c.active,
                })
            })
            .collect()
    }

    /// Tell everyone who started or stopped speaking (`SpeakersChanged`).
    pub(super) fn update_speakers(&mut self, now: Instant) {
        let interval = now.duration_since(self.last_speaker_update);
        self.last_speaker_update = now;
        let mut levels: Vec<(ParticipantKey, f32)> = Vec::new();
        for track in self.tracks.values_mut() {
            let level = track.audio_level.take(interval);
            if level <= 0.0 {
                continue;
            }
            match levels.iter_mut().find(|(k, _)| *k == track.publisher) {
                Some((_, loudest)) => *loudest = loudest.max(level),
                None => levels.push((track.publisher, level)),
            }
        }
        let participants = &self.participants;
        let changes = self.speakers.update(&levels, |key| {
            participants.get(key).is_some_and(|p| !p.is_hidden())
        });
        if changes.is_empty() {
            return;
        }
        let speakers = self.speaker_infos(&changes);
        self.signal_each(
            |_, _| true,
            signal_response::Message::SpeakersChanged(SpeakersChanged { speakers }),
        );
    }
}
