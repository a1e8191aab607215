//! What the room tells its participants: participant updates (those of
//! listeners batched), connection qualities, and signal messages to one or
//! all.

use std::sync::Arc;
use std::time::Instant;

use relais_proto::livekit::{
    signal_response, ConnectionQualityUpdate, ParticipantInfo, ParticipantUpdate, SignalResponse,
};

use crate::participant::{Participant, ParticipantKey};

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
            let was_queued = self.listener_updates.remove(&key).is_some();
            self.signal_each(
                |k, _| k != key || include_self,
                participant_update(vec![info]),
            );
            if was_queued {
                // Those who did not know `key` did not keep its quality
                // either; `key` has its own from when it connected.
                self.announce_qualities(std::iter::once(key), Some(key));
            }
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
        let keys: Vec<ParticipantKey> = infos.keys().copied().collect();
        self.signal_each(
            |_, _| true,
            participant_update(infos.into_values().collect()),
        );
        self.announce_qualities(keys.into_iter(), None);
    }

    /// Everyone but `except` learns the connection quality of `who` (present
    /// and visible).
    pub(super) fn announce_qualities(
        &mut self,
        who: impl Iterator<Item = ParticipantKey>,
        except: Option<ParticipantKey>,
    ) {
        let updates = self.quality_infos(&self.qualities.current(who));
        if !updates.is_empty() {
            self.signal_each(
                |k, _| Some(k) != except,
                signal_response::Message::ConnectionQuality(ConnectionQualityUpdate { updates }),
            );
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
