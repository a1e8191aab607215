//! Connection qualities go to those who follow them, as LiveKit sends them:
//! each participant learns its own and those of the publishers it receives,
//! not the whole room's (which would make every join read every member).

mod common;

use std::time::Duration;

use common::{Client, Sim};
use relais_proto::livekit::signal_response::Message;
use relais_proto::livekit::{signal_request, ConnectionQuality, UpdateSubscription};
use str0m::media::MediaKind;

/// The sids of the participants whose quality `client` was told, in order,
/// with the quality told.
fn qualities_told(client: &Client) -> Vec<(String, i32)> {
    client
        .signals_matching(|m| matches!(m, Message::ConnectionQuality(_)))
        .into_iter()
        .flat_map(|m| match m {
            Message::ConnectionQuality(q) => q
                .updates
                .iter()
                .map(|u| (u.participant_sid.clone(), u.quality))
                .collect::<Vec<_>>(),
            _ => Vec::new(),
        })
        .collect()
}

fn told_about(sim: &Sim, to: usize, about: usize) -> usize {
    let sid = &sim.client(about).sid;
    qualities_told(sim.client(to))
        .iter()
        .filter(|(s, _)| s == sid)
        .count()
}

#[test]
fn each_learns_its_own_quality_and_those_of_whom_it_receives() {
    let mut sim = Sim::new();
    let early = sim.join("early-listener");
    let speaker = sim.join("speaker");
    sim.run_until_connected(Duration::from_secs(2));
    // Published once both are connected: the listener learns the speaker's
    // quality with its first subscription to it, not again with the second.
    sim.publish(speaker, MediaKind::Audio, "mic");
    sim.publish(speaker, MediaKind::Video, "cam");
    sim.run_for(Duration::from_secs(1));
    let late = sim.join("late-listener");
    sim.run_until_connected(Duration::from_secs(2));
    sim.run_for(Duration::from_secs(1));

    for who in [early, speaker, late] {
        assert_eq!(told_about(&sim, who, who), 1, "client {who}'s own, once");
    }
    assert_eq!(
        told_about(&sim, early, speaker),
        1,
        "the early listener, of the speaker"
    );
    assert_eq!(
        told_about(&sim, late, speaker),
        1,
        "the late listener, of the speaker"
    );
    // Nobody receives a listener: nobody else learns its quality.
    for (to, about) in [
        (early, late),
        (late, early),
        (speaker, early),
        (speaker, late),
    ] {
        assert_eq!(
            told_about(&sim, to, about),
            0,
            "client {to} of client {about}"
        );
    }
}

#[test]
fn a_change_reaches_the_publisher_and_its_subscribers_only() {
    let mut sim = Sim::new();
    let speaker = sim.join("speaker");
    let viewer = sim.join("viewer");
    let bystander = sim.join("bystander");
    sim.publish(speaker, MediaKind::Audio, "mic");
    sim.run_until_connected(Duration::from_secs(2));
    sim.run_for(Duration::from_secs(1));
    let sid = sim.track_sid(speaker, "mic");
    sim.send_signal(
        bystander,
        signal_request::Message::Subscription(UpdateSubscription {
            track_sids: vec![sid],
            subscribe: false,
            participant_tracks: vec![],
        }),
    );
    sim.run_for(Duration::from_secs(1));

    // Half of the speaker's audio lost on its way in, over two quality
    // intervals: a poor connection.
    let at = sim.client(speaker).pub_addr;
    let pt = sim.client(speaker).track("mic").pt.expect("negotiated");
    let lost = sim.lose_every_nth(at, pt, 2, 100_000, Duration::from_secs(11));
    assert!(lost.len() > 200, "{} packets lost", lost.len());

    let poor = ConnectionQuality::Poor as i32;
    let told_poor = |to: usize| {
        let speaker_sid = &sim.client(speaker).sid;
        qualities_told(sim.client(to))
            .iter()
            .any(|(s, q)| s == speaker_sid && *q == poor)
    };
    assert!(told_poor(speaker), "the speaker learns its own");
    assert!(told_poor(viewer), "its subscriber learns it");
    assert!(
        !told_poor(bystander),
        "one who does not receive it does not"
    );
}

#[test]
fn changes_told_together_come_in_one_message() {
    let mut sim = Sim::new();
    let alice = sim.join("alice");
    let bob = sim.join("bob");
    let carol = sim.join("carol");
    for who in [alice, bob] {
        sim.publish(who, MediaKind::Audio, "mic");
    }
    sim.run_until_connected(Duration::from_secs(2));
    sim.run_for(Duration::from_secs(1));
    let before = |sim: &Sim, who: usize| {
        sim.client(who)
            .signals_matching(|m| matches!(m, Message::ConnectionQuality(_)))
            .len()
    };
    let counts: Vec<usize> = [alice, bob, carol].map(|w| before(&sim, w)).to_vec();

    // Half of alice's and of bob's audio lost on its way in, together.
    let senders = [sim.client(alice).pub_addr, sim.client(bob).pub_addr];
    let mut seen = [0u32; 2];
    sim.drop_filter = Some(Box::new(move |d| {
        let Some(from) = senders.iter().position(|&a| a == d.source) else {
            return false;
        };
        if common::rtp_info(&d.contents).is_none() {
            return false;
        }
        seen[from] += 1;
        seen[from].is_multiple_of(2)
    }));
    sim.run_for(Duration::from_secs(11));
    sim.drop_filter = None;

    let poor = ConnectionQuality::Poor as i32;
    let sids = [&sim.client(alice).sid, &sim.client(bob).sid];
    for (who, index) in [("alice", alice), ("bob", bob), ("carol", carol)] {
        let told = sim
            .client(index)
            .signals_matching(|m| matches!(m, Message::ConnectionQuality(_)));
        // Each follows both (its own or the other's, and the other's): the
        // first message that tells it of either tells it of both.
        let first = told[counts[index]..]
            .iter()
            .find_map(|m| match m {
                Message::ConnectionQuality(q) if q.updates.iter().any(|u| u.quality == poor) => {
                    Some(q)
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("{who} is told of a poor connection"));
        for sid in sids {
            assert!(
                first
                    .updates
                    .iter()
                    .any(|u| &u.participant_sid == sid && u.quality == poor),
                "{who}: {first:?}"
            );
        }
    }
}
