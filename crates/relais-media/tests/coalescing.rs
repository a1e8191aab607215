//! `MediaConfig::send_coalescing`: a copy forwarded to a subscriber waits up
//! to the window for more, and the copies that met leave together — never
//! later than the window.

mod common;

use std::time::Duration;

use common::Sim;
use relais_media::Shard;
use str0m::media::MediaKind;

/// What one subscriber saw of one publisher's audio over two seconds:
/// each packet's time from publisher to subscriber, and how many packets
/// arrived at the same instant as the one before.
struct Seen {
    transit: Vec<Duration>,
    together: usize,
}

fn audio_through_room(window: Duration) -> Seen {
    let mut sim = Sim::new();
    let mut config = sim.config.clone();
    config.send_coalescing = window;
    sim.shard = Shard::new(0, config);
    sim.join("speaker");
    sim.join("listener");
    sim.run_until_connected(Duration::from_secs(3));
    sim.publish(0, MediaKind::Audio, "mic");
    sim.run_for(Duration::from_secs(2));

    let sid = sim.track_sid(0, "mic");
    let track = sim.client(0).track("mic");
    let received = sim.client(1).received(&sid);
    assert!(received.len() >= 80, "{} packets arrived", received.len());
    for pair in received.windows(2) {
        assert_eq!(pair[1].source_seq(), pair[0].source_seq() + 1, "a gap");
    }
    let transit = received
        .iter()
        .map(|r| {
            let i = track
                .sent
                .iter()
                .position(|(seq, _, _)| *seq == u64::from(r.source_seq()))
                .expect("sent");
            r.at - track.sent_at[i]
        })
        .collect();
    let together = received.windows(2).filter(|p| p[0].at == p[1].at).count();
    Seen { transit, together }
}

#[test]
fn without_a_window_every_copy_leaves_in_the_round_that_forwarded_it() {
    let seen = audio_through_room(Duration::ZERO);
    // Two hops of the simulated network (5 ms each) and the sim's 100 µs steps.
    let slowest = seen.transit.iter().max().unwrap();
    assert!(*slowest < Duration::from_millis(11), "{slowest:?}");
    assert_eq!(seen.together, 0);
}

#[test]
fn copies_wait_at_most_the_window_and_leave_together() {
    // Audio every 20 ms: a 50 ms window holds two or three packets.
    let window = Duration::from_millis(50);
    let seen = audio_through_room(window);
    let slowest = seen.transit.iter().max().unwrap();
    assert!(
        *slowest < window + Duration::from_millis(11),
        "{slowest:?}: later than the window"
    );
    let waited = seen
        .transit
        .iter()
        .filter(|t| **t > Duration::from_millis(20))
        .count();
    assert!(
        waited * 2 > seen.transit.len(),
        "{waited} of {} waited",
        seen.transit.len()
    );
    assert!(
        seen.together * 2 > seen.transit.len(),
        "{} of {} arrived with the one before",
        seen.together,
        seen.transit.len()
    );
}
