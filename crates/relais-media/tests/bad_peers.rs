//! A peer that fails its DTLS handshake is removed with a reason, and the
//! others in the room do not notice; one that sends oversized metadata is
//! refused, and the others never receive it.

mod common;

use std::time::Duration;

use common::Sim;
use relais_media::{RoomEvent, Shard};
use relais_proto::livekit::{
    request_response, signal_request, signal_response, DisconnectReason, UpdateParticipantMetadata,
};
use str0m::media::MediaKind;

/// An answer whose DTLS fingerprint does not match the certificate the peer
/// will present: the server must refuse the handshake.
fn forge_fingerprint(sdp: &str) -> String {
    sdp.split("\r\n")
        .map(|line| match line.strip_prefix("a=fingerprint:") {
            Some(rest) => {
                let algorithm = rest.split(' ').next().unwrap_or("sha-256");
                format!("a=fingerprint:{algorithm} {}", vec!["00"; 32].join(":"))
            }
            None => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\r\n")
}

#[test]
fn failed_dtls_handshake_removes_only_that_peer() {
    let mut sim = Sim::new();
    let alice = sim.join("alice");
    let carol = sim.join("carol");
    let mallory = sim.join("mallory");
    sim.client_mut(mallory).answer_filter = Some(Box::new(forge_fingerprint));
    sim.publish(alice, MediaKind::Audio, "mic");
    sim.run_for(Duration::from_secs(4));

    let m = sim.client(mallory);
    assert!(
        m.disconnected,
        "the peer with the failed handshake is removed"
    );
    let leave = m.leave.as_ref().expect("removed with a leave");
    assert_eq!(leave.reason, DisconnectReason::MediaFailure as i32);
    assert!(sim.room_events.iter().any(|(_, e)| matches!(
        e,
        RoomEvent::ParticipantConnectionAborted(p) | RoomEvent::ParticipantLeft(p)
            if p.identity == "mallory"
    )));

    // The others are undisturbed: still connected, and carol hears alice.
    assert!(!sim.client(alice).disconnected);
    assert!(!sim.client(carol).disconnected);
    let sid = sim.track_sid(alice, "mic");
    let before = sim.client(carol).received(&sid).len();
    assert!(before > 0, "carol receives alice's audio");
    sim.run_for(Duration::from_secs(1));
    assert!(sim.client(carol).received(&sid).len() > before + 40);
}

#[test]
fn oversized_metadata_is_refused_and_never_reaches_the_others() {
    let mut sim = Sim::new();
    sim.config.field_limits.max_metadata_size = 16;
    sim.shard = Shard::new(0, sim.config.clone());
    let alice = sim.join("alice");
    let bob = sim.join("bob");
    sim.run_until_connected(Duration::from_secs(2));
    let update = |metadata: &str, request_id: u32| {
        signal_request::Message::UpdateMetadata(UpdateParticipantMetadata {
            metadata: metadata.into(),
            request_id,
            ..Default::default()
        })
    };
    let answer = |sim: &Sim, request_id: u32| {
        sim.client(alice)
            .signals_matching(|m| {
                matches!(m, signal_response::Message::RequestResponse(r) if r.request_id == request_id)
            })
            .first()
            .map(|m| match m {
                signal_response::Message::RequestResponse(r) => (r.reason, r.message.clone()),
                _ => unreachable!(),
            })
    };

    sim.send_signal(alice, update(&"x".repeat(17), 7));
    sim.run_for(Duration::from_millis(500));
    assert_eq!(
        answer(&sim, 7),
        Some((
            request_response::Reason::LimitExceeded as i32,
            "exceeds metadata size limit".into()
        ))
    );
    assert_eq!(sim.client(bob).participant("alice").unwrap().metadata, "");

    sim.send_signal(alice, update(&"x".repeat(16), 8));
    // Alice publishes nothing: others learn of her with the next batch (≤ 3 s).
    sim.run_for(Duration::from_millis(3500));
    assert_eq!(
        answer(&sim, 8).map(|a| a.0),
        Some(request_response::Reason::Ok as i32)
    );
    assert_eq!(
        sim.client(bob).participant("alice").unwrap().metadata,
        "x".repeat(16)
    );
}
