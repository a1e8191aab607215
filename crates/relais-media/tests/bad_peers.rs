//! A peer that fails its DTLS handshake is removed with a reason, and the
//! others in the room do not notice.

mod common;

use std::time::Duration;

use common::Sim;
use relais_media::RoomEvent;
use relais_proto::livekit::DisconnectReason;
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
