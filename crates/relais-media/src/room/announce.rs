//! What the room tells its participants: participant updates (those of
//! listeners batched), connection qualities, and signal messages to one or
//! all.

use std::sync::Arc;
use std::time::Instant;

use relais_proto::livekit::{
    signal_response, ConnectionQualityInfo, ConnectionQualityUpdate, ParticipantInfo,
    ParticipantUpdate, SignalResponse,
};

use crate::participant::{Participant, ParticipantKey};
use crate::quality::QualityChange;
use crate::HashMap;

use super::{Room, RoomOutput, LISTENER_UPDATE_INTERVAL};

impl Room {
    /// Tell everyone (but the participant itself, unless `include_self`) about
    /// `key`'s current info; see [`Room::announce`] for when. Hidden
    /// participants are announced to no one.
    pub(crate) fn broadcast_participant(
        &mut self,
        key: ParticipantKey,
        include_self: bool,
        immediate: bool,
    ) {
        let Some(p) = self.participants.get(&key) else {
            return;
        };
        let info = p.info.clone();
        if p.is_hidden() {
            if include_self {
                self.signal(key, participant_update(vec![info]));
            }
            return;
        }
        self.announce(key, info, include_self, immediate);
    }

    /// Everyone learns `info` about `key`: at once if it publishes or the
    /// change is `immediate` (its tracks changed), else with the next batch
    /// of listener updates; `key` itself at once if `include_self`.
    pub(super) fn announce(
        &mut self,
        key: ParticipantKey,
        info: ParticipantInfo,
        include_self: bool,
        immediate: bool,
    ) {
        if immediate || info.is_publisher {
            self.listener_updates.remove(&key);
            self.signal_each(
                |k, _| k != key || include_self,
                participant_update(vec![info]),
            );
            return;
        }
        if include_self {
            self.signal(key, participant_update(vec![info.clone()]));
        }
        self.listener_updates.insert(key, info);
    }

    /// Send the batched listener updates to everyone, in one message, at most
    /// once per [`LISTENER_UPDATE_INTERVAL`].
    pub(super) fn flush_listener_updates(&mut self, now: Instant) {
        if self.listener_updates.is_empty() || now < self.next_listener_flush {
            return;
        }
        self.next_listener_flush = now + LISTENER_UPDATE_INTERVAL;
        let infos = std::mem::take(&mut self.listener_updates);
        self.signal_each(
            |_, _| true,
            participant_update(infos.into_values().collect()),
        );
    }

    /// Tell each connected participant the qualities among `changes` that
    /// it follows: its own and those of the publishers it receives (whom
    /// LiveKit tells, not the whole room). Those told the same share one
    /// message; more than 64 changes at once go in a message per 64.
    pub(super) fn tell_qualities(&mut self, changes: &[QualityChange<ParticipantKey>]) {
        for changes in changes.chunks(64) {
            // Which of these changes each participant follows, one bit each.
            let mut told: HashMap<ParticipantKey, u64> = HashMap::default();
            for (bit, change) in changes.iter().enumerate() {
                for to in self.quality_followers(change.who) {
                    *told.entry(to).or_default() |= 1 << bit;
                }
            }
            let mut groups: HashMap<u64, Vec<ParticipantKey>> = HashMap::default();
            for (to, mask) in told {
                if self.is_active(to) {
                    groups.entry(mask).or_default().push(to);
                }
            }
            for (mask, recipients) in groups {
                let picked: Vec<_> = (0..changes.len())
                    .filter(|bit| mask & (1 << bit) != 0)
                    .map(|bit| changes[bit])
                    .collect();
                if let Some(message) = self.quality_update(&picked) {
                    self.signal_all(recipients, &message);
                }
            }
        }
    }

    /// `key` just connected: it learns its own quality and those of the
    /// connected publishers it receives, and the connected subscribers of its
    /// tracks learn its. (An SDK drops qualities until its join is done.)
    pub(super) fn tell_qualities_on_connect(&mut self, key: ParticipantKey) {
        let Some(p) = self.participants.get(&key) else {
            return;
        };
        let mut followed = vec![key];
        for sid in p.received_tracks() {
            let publisher = self.tracks.get(sid).map(|t| t.publisher);
            if let Some(publisher) = publisher.filter(|&k| self.is_active(k)) {
                if !followed.contains(&publisher) {
                    followed.push(publisher);
                }
            }
        }
        if let Some(message) = self.quality_update(&self.qualities.current(followed.into_iter())) {
            self.signal_all([key], &message);
        }
        let mut followers: Vec<ParticipantKey> = self
            .quality_followers(key)
            .filter(|&to| to != key && self.is_active(to))
            .collect();
        followers.sort_unstable();
        followers.dedup();
        if let Some(message) = self.quality_update(&self.qualities.current(std::iter::once(key))) {
            self.signal_all(followers, &message);
        }
    }

    /// `key`, connected, now receives a track of `publisher`, connected too,
    /// and no other yet: it learns `publisher`'s quality.
    pub(super) fn tell_quality_on_subscribe(
        &mut self,
        key: ParticipantKey,
        publisher: ParticipantKey,
    ) {
        let current = self.qualities.current(std::iter::once(publisher));
        if let Some(message) = self.quality_update(&current) {
            self.signal_all([key], &message);
        }
    }

    /// Who follows `who`'s quality: itself and the subscribers of its tracks
    /// (a subscriber of several once for each).
    fn quality_followers(&self, who: ParticipantKey) -> impl Iterator<Item = ParticipantKey> + '_ {
        let subscribers = self
            .tracks
            .values()
            .filter(move |t| t.publisher == who)
            .flat_map(|t| t.subscribers.iter().map(|s| s.subscriber));
        std::iter::once(who).chain(subscribers)
    }

    /// The `ConnectionQualityUpdate` of `changes` that may be shown (hidden
    /// participants' are not), if any.
    fn quality_update(
        &self,
        changes: &[QualityChange<ParticipantKey>],
    ) -> Option<Arc<SignalResponse>> {
        let updates: Vec<ConnectionQualityInfo> = changes
            .iter()
            .filter_map(|c| {
                let p = self.participants.get(&c.who).filter(|p| !p.is_hidden())?;
                Some(ConnectionQualityInfo {
                    participant_sid: p.info.sid.clone(),
                    quality: c.quality as i32,
                    score: c.score,
                })
            })
            .collect();
        (!updates.is_empty()).then(|| {
            Arc::new(SignalResponse {
                message: Some(signal_response::Message::ConnectionQuality(
                    ConnectionQualityUpdate { updates },
                )),
            })
        })
    }

    fn is_active(&self, key: ParticipantKey) -> bool {
        self.participants
            .get(&key)
            .is_some_and(Participant::is_active)
    }

    /// Send one message to each of `recipients`, shared.
    fn signal_all(
        &mut self,
        recipients: impl IntoIterator<Item = ParticipantKey>,
        message: &Arc<SignalResponse>,
    ) {
        for to in recipients {
            self.outputs
                .push_back(RoomOutput::Signal(to, Arc::clone(message)));
        }
    }

    /// Send one message to every participant `to` accepts: shared, not
    /// copied, so that an event in a room of N costs one message, not N.
    pub(crate) fn signal_each(
        &mut self,
        to: impl Fn(ParticipantKey, &Participant) -> bool,
        message: signal_response::Message,
    ) {
        let message = Arc::new(SignalResponse {
            message: Some(message),
        });
        for (&key, p) in &self.participants {
            if to(key, p) {
                self.outputs
                    .push_back(RoomOutput::Signal(key, Arc::clone(&message)));
            }
        }
    }

    pub(crate) fn signal(&mut self, key: ParticipantKey, message: signal_response::Message) {
        self.outputs.push_back(RoomOutput::Signal(
            key,
            Arc::new(SignalResponse {
                message: Some(message),
            }),
        ));
    }
}

fn participant_update(participants: Vec<ParticipantInfo>) -> signal_response::Message {
    signal_response::Message::Update(ParticipantUpdate { participants })
}
