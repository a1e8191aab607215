//! A newcomer's join response lists the others as they are when it joins.
//! Each participant keeps its info encoded between changes (a wave of joins
//! would otherwise encode every info once per newcomer), so a change must
//! never leave the old encoding behind.

mod common;

use std::time::Duration;

use common::{Sim, ROOM};
use relais_proto::livekit::{
    participant_info, signal_request, signal_response, ParticipantInfo, UpdateParticipantMetadata,
};
use str0m::media::MediaKind;

/// `identity`'s info as `index`'s join response gave it.
fn as_joined(sim: &Sim, index: usize, identity: &str) -> ParticipantInfo {
    sim.client(index)
        .signals_matching(|m| matches!(m, signal_response::Message::Join(_)))
        .into_iter()
        .find_map(|m| match m {
            signal_response::Message::Join(join) => join
                .other_participants
                .iter()
                .find(|p| p.identity == identity)
                .cloned(),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{identity} in the join response"))
}

#[test]
fn a_newcomer_is_told_the_others_as_they_are_now() {
    let mut sim = Sim::new();
    let speaker = sim.join("speaker");
    // Its join response encodes the speaker as it was then: joined, silent.
    let early = sim.join("early");
    sim.run_until_connected(Duration::from_secs(2));

    // The speaker changes in each way its info can: its state (active), a
    // track published and its codec learned from the first packet (no new
    // version for that), its name and metadata.
    sim.publish(speaker, MediaKind::Audio, "mic");
    sim.send_signal(
        speaker,
        signal_request::Message::UpdateMetadata(UpdateParticipantMetadata {
            name: "The Speaker".into(),
            metadata: "on stage".into(),
            ..Default::default()
        }),
    );
    sim.run_for(Duration::from_secs(1));

    let late = sim.join("late");
    let now = sim
        .shard
        .room(ROOM)
        .and_then(|room| room.participant_by_identity("speaker"))
        .cloned()
        .expect("the speaker is in the room");
    sim.run_for(Duration::from_millis(200));

    let then = as_joined(&sim, early, "speaker");
    assert!(then.tracks.is_empty(), "{then:?}");
    assert_ne!(then.state, participant_info::State::Active as i32);

    let told = as_joined(&sim, late, "speaker");
    assert_eq!(told, now, "the late joiner is told the speaker as it is");
    assert_eq!(told.state, participant_info::State::Active as i32);
    assert_eq!(
        (told.name.as_str(), told.metadata.as_str()),
        ("The Speaker", "on stage")
    );
    assert_eq!(told.tracks.len(), 1);
    assert!(!told.tracks[0].mime_type.is_empty(), "{told:?}");
    assert_eq!(as_joined(&sim, late, "early").identity, "early");
}
