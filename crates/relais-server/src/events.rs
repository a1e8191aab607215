//! Room lifecycle events leaving the shards: turned into LiveKit webhook
//! events and handed to the notifier. Runs on shard threads, so everything
//! here is synchronous and never waits ([`WebhookNotifier::notify`] only
//! `try_send`s).

use relais_control::webhook::WebhookNotifier;
use relais_media::{RoomEvent, Shard};
use relais_proto::livekit::{self, ParticipantInfo, WebhookEvent};

/// Where room events go besides the logs. Cheap to clone (one per shard).
#[derive(Clone, Default)]
pub struct EventSinks {
    /// Webhook delivery, when `webhook.urls` is configured.
    pub webhook: Option<WebhookNotifier>,
}

impl EventSinks {
    /// One event of `room` on `shard` (the shard gives the room's current info).
    pub fn room_event(&self, shard: &Shard, room: &str, event: &RoomEvent) {
        let Some(webhook) = &self.webhook else {
            return;
        };
        let info = shard.room(room).map(|r| r.info());
        webhook.notify(webhook_event(room, info, event));
    }
}

/// The LiveKit webhook for a room event. `current` is the room's info now
/// (absent once the room is gone); `room_started`/`room_finished` carry their own.
pub fn webhook_event(
    room_name: &str,
    current: Option<&livekit::Room>,
    event: &RoomEvent,
) -> WebhookEvent {
    let full_room = || {
        current.cloned().unwrap_or_else(|| livekit::Room {
            name: room_name.to_string(),
            ..Default::default()
        })
    };
    // LiveKit's track events carry only the room's sid and name, and only the
    // participant's sid and identity.
    let room_ref = || livekit::Room {
        sid: current.map(|r| r.sid.clone()).unwrap_or_default(),
        name: room_name.to_string(),
        ..Default::default()
    };
    let participant_ref = |p: &ParticipantInfo| ParticipantInfo {
        sid: p.sid.clone(),
        identity: p.identity.clone(),
        ..Default::default()
    };
    let (name, room, participant, track) = match event {
        RoomEvent::RoomStarted(r) => ("room_started", r.clone(), None, None),
        RoomEvent::RoomFinished(r) => ("room_finished", r.clone(), None, None),
        RoomEvent::ParticipantJoined(p) => {
            ("participant_joined", full_room(), Some(p.clone()), None)
        }
        RoomEvent::ParticipantLeft(p) => ("participant_left", full_room(), Some(p.clone()), None),
        RoomEvent::ParticipantConnectionAborted(p) => (
            "participant_connection_aborted",
            full_room(),
            Some(p.clone()),
            None,
        ),
        RoomEvent::TrackPublished(p, t) => (
            "track_published",
            room_ref(),
            Some(participant_ref(p)),
            Some(t.clone()),
        ),
        RoomEvent::TrackUnpublished(p, t) => (
            "track_unpublished",
            room_ref(),
            Some(participant_ref(p)),
            Some(t.clone()),
        ),
    };
    WebhookEvent {
        event: name.to_string(),
        room: Some(room),
        participant,
        track,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relais_proto::livekit::TrackInfo;

    fn room() -> livekit::Room {
        livekit::Room {
            sid: "RM_1".into(),
            name: "r".into(),
            num_participants: 2,
            ..Default::default()
        }
    }

    fn alice() -> ParticipantInfo {
        ParticipantInfo {
            sid: "PA_1".into(),
            identity: "alice".into(),
            name: "Alice".into(),
            metadata: "m".into(),
            ..Default::default()
        }
    }

    #[test]
    fn names_and_payloads_as_livekit() {
        let r = room();
        let ev = webhook_event("r", Some(&r), &RoomEvent::ParticipantJoined(alice()));
        assert_eq!(ev.event, "participant_joined");
        assert_eq!(ev.room.unwrap().num_participants, 2);
        assert_eq!(ev.participant.unwrap().name, "Alice");

        let ev = webhook_event(
            "r",
            Some(&r),
            &RoomEvent::ParticipantConnectionAborted(alice()),
        );
        assert_eq!(ev.event, "participant_connection_aborted");

        let track = TrackInfo {
            sid: "TR_1".into(),
            ..Default::default()
        };
        let ev = webhook_event("r", Some(&r), &RoomEvent::TrackPublished(alice(), track));
        assert_eq!(ev.event, "track_published");
        let p = ev.participant.unwrap();
        assert_eq!((p.sid.as_str(), p.identity.as_str()), ("PA_1", "alice"));
        assert!(p.name.is_empty() && p.metadata.is_empty());
        let room = ev.room.unwrap();
        assert_eq!((room.sid.as_str(), room.name.as_str()), ("RM_1", "r"));
        assert_eq!(room.num_participants, 0);
        assert_eq!(ev.track.unwrap().sid, "TR_1");

        let ev = webhook_event("r", None, &RoomEvent::RoomFinished(room_with_sid()));
        assert_eq!(ev.event, "room_finished");
        assert_eq!(ev.room.unwrap().sid, "RM_9");
    }

    fn room_with_sid() -> livekit::Room {
        livekit::Room {
            sid: "RM_9".into(),
            name: "r".into(),
            ..Default::default()
        }
    }
}
