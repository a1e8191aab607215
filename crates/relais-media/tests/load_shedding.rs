//! A shard that sheds load sends every subscriber the lowest simulcast layer,
//! tells the publisher it only needs that one, and goes back to the best layer
//! when it stops.

mod common;

use std::time::Duration;

use common::{enabled_qualities, layers_received, simulcast_to_bob, Sim};
use relais_media::JoinError;
use relais_proto::livekit::VideoQuality;

#[test]
fn shedding_caps_subscribers_at_the_lowest_layer_and_lifting_it_restores_the_best() {
    let (mut sim, sid) = simulcast_to_bob();
    let window = Duration::from_millis(500);

    let now = sim.now;
    sim.shard.set_shedding(now, true);
    sim.run_for(Duration::from_secs(2));
    assert_eq!(
        layers_received(&sim, 1, &sid, window),
        [0],
        "shedding: the lowest layer only"
    );
    // Dynacast lets layers go only after they have been unwanted a while.
    sim.run_for(Duration::from_secs(3));
    assert_eq!(
        enabled_qualities(&sim, 0),
        [VideoQuality::Low as i32],
        "the publisher is told only the low layer is received"
    );

    let now = sim.now;
    sim.shard.set_shedding(now, false);
    sim.run_for(Duration::from_secs(2));
    assert_eq!(
        layers_received(&sim, 1, &sid, window),
        [2],
        "back to the top layer"
    );
    assert_eq!(
        enabled_qualities(&sim, 0).len(),
        3,
        "every layer wanted again"
    );
}

#[test]
fn a_shard_refusing_joins_keeps_those_already_in() {
    let mut sim = Sim::new();
    sim.join("alice");
    sim.join("bob");
    sim.run_until_connected(Duration::from_secs(2));

    sim.shard.set_accepting_joins(false);
    assert!(matches!(sim.try_join("carol"), Err(JoinError::Overloaded)));
    // Those already in stay, and keep their connections.
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.shard.gauges().participants, 2);

    sim.shard.set_accepting_joins(true);
    sim.try_join("carol")
        .expect("joins once the shard keeps up");
    sim.run_until_connected(Duration::from_secs(2));
    assert_eq!(sim.shard.gauges().participants, 3);
}
