//! A room's due sessions driven on the shard's own thread a turn at a time
//! (`MediaConfig::drive_turn_datagrams`): a large room's frame is written in
//! several turns, every copy still reaches every subscriber, and another
//! room's copies that come due meanwhile do not wait for its last turn. So
//! are the offers a track unpublished in a large room makes due.

mod common;

use std::time::Duration;

use common::{assert_whole_and_in_order, Sim};
use relais_media::Shard;
use str0m::media::MediaKind;

const VIEWERS: usize = 24;
/// Each of the presenter's frames: 240 copies to the large room's viewers.
const PACKETS_PER_FRAME: u32 = 10;

/// A presenter's video to [`VIEWERS`] in one room and, beside it on the
/// same shard, a call of two (alice's audio and video to bob), for two
/// seconds, on a shard whose turns are `turn` datagrams. Returns the
/// simulation and the indices of the presenter and of alice.
fn rooms_beside(turn: usize) -> (Sim, usize, usize) {
    let mut sim = Sim::new();
    let mut config = sim.config.clone();
    config.drive_turn_datagrams = turn;
    sim.shard = Shard::new(0, config);
    let presenter = sim.join_to("large", "presenter");
    for i in 0..VIEWERS {
        sim.join_to("large", &format!("viewer-{i}"));
    }
    let alice = sim.join_to("small", "alice");
    sim.join_to("small", "bob");
    sim.run_until_connected(Duration::from_secs(3));
    sim.publish(presenter, MediaKind::Video, "cam");
    sim.publish(alice, MediaKind::Audio, "mic");
    sim.publish(alice, MediaKind::Video, "cam");
    sim.client_mut(presenter).track_mut("cam").packets_per_frame = PACKETS_PER_FRAME;
    sim.timeout_log = Some(Vec::new());
    sim.run_for(Duration::from_secs(2));
    (sim, presenter, alice)
}

fn assert_everyone_received_everything(sim: &Sim, presenter: usize, alice: usize) {
    let sid = sim.track_sid(presenter, "cam");
    let sent = sim.client(presenter).track("cam").sent.len();
    for viewer in presenter + 1..=presenter + VIEWERS {
        let rx = sim.client(viewer).received(&sid);
        // The last frames are still on their way (ten packets each).
        let in_flight = sent.saturating_sub(3 * PACKETS_PER_FRAME as usize);
        assert_whole_and_in_order(&rx, in_flight, 500, &format!("viewer {viewer}"));
    }
    let bob = alice + 1;
    for (cid, least) in [("mic", 80), ("cam", 100)] {
        let sid = sim.track_sid(alice, cid);
        let sent = sim.client(alice).track(cid).sent.len();
        assert_whole_and_in_order(&sim.client(bob).received(&sid), sent, least, cid);
    }
}

#[test]
fn a_large_rooms_frame_is_written_a_turn_at_a_time_and_reaches_everyone() {
    let (sim, presenter, alice) = rooms_beside(16);
    assert_everyone_received_everything(&sim, presenter, alice);
    // A turn stops at the first session past 16 datagrams: at most one
    // session's frame (10 copies, and what str0m adds) over it.
    assert!(
        sim.most_written_in_a_timeout <= 16 + 2 * PACKETS_PER_FRAME as usize,
        "{} datagrams in one call",
        sim.most_written_in_a_timeout
    );

    // Without turns a frame leaves in one call: 240 copies and more.
    let (sim, presenter, alice) = rooms_beside(0);
    assert_everyone_received_everything(&sim, presenter, alice);
    assert!(
        sim.most_written_in_a_timeout >= VIEWERS * PACKETS_PER_FRAME as usize,
        "{} datagrams in one call",
        sim.most_written_in_a_timeout
    );
}

/// bob's copies that come due while the large room's frame is under way go
/// in the next call, ahead of the large room's next turn.
#[test]
fn copies_due_in_another_room_go_before_a_cut_rooms_next_turn() {
    let (sim, presenter, alice) = rooms_beside(1);
    let bob = sim.client(alice + 1).sub_addr;
    let viewers: Vec<_> = (presenter + 1..=presenter + VIEWERS)
        .map(|i| sim.client(i).sub_addr)
        .collect();
    let mut overlapping = 0;
    for (cut_before, destinations) in sim.timeout_log.as_deref().expect("logged") {
        let first_viewer = destinations.iter().position(|d| viewers.contains(d));
        let first_bob = destinations.iter().position(|d| *d == bob);
        if let (true, Some(viewer), Some(bob)) = (*cut_before, first_viewer, first_bob) {
            overlapping += 1;
            assert!(
                bob < viewer,
                "bob's copies waited behind the large room's turn"
            );
        }
    }
    assert!(
        overlapping >= 3,
        "bob's copies came due during the large room's turns {overlapping} times"
    );
}

/// The presenter's camera unpublished: every viewer's subscriber session
/// needs an offer, made 16 a turn, and every viewer gets one.
#[test]
fn a_track_gone_from_a_large_room_is_offered_away_a_turn_at_a_time() {
    for (turn, most) in [(256, 16), (0, VIEWERS)] {
        let (mut sim, presenter, _) = rooms_beside(turn);
        let viewers = presenter + 1..=presenter + VIEWERS;
        let before: Vec<usize> = viewers
            .clone()
            .map(|i| sim.client(i).sub_offers.len())
            .collect();
        sim.most_offers_in_a_timeout = 0;
        sim.unpublish(presenter, "cam");
        sim.run_for(Duration::from_millis(500));
        for (i, before) in viewers.zip(before) {
            assert_eq!(
                sim.client(i).sub_offers.len(),
                before + 1,
                "viewer {i}: one offer for the track gone"
            );
        }
        assert_eq!(
            sim.most_offers_in_a_timeout, most,
            "offers in one call with turns of {turn}"
        );
    }
}
