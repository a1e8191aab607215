//! A video copy that does not end its frame waits for the one that does (the
//! RTP marker), so that a frame's copies share one drive of the subscriber's
//! session — never longer than the room's frame wait (10 ms).

mod common;

use std::time::Duration;

use common::{rtp_info, server_addr, Received, Sim};
use str0m::media::MediaKind;

/// Two simulated network hops of 5 ms, and the sim's 100 µs steps.
const TWO_HOPS: Duration = Duration::from_millis(10);
const FRAME_WAIT: Duration = Duration::from_millis(10);
const SLACK: Duration = Duration::from_millis(1);

/// A camera published to a watcher for two seconds; what the watcher got,
/// with each packet's time from the publisher.
fn camera_to_watcher(sim: &mut Sim) -> Vec<(Received, Duration)> {
    sim.join("camera");
    sim.join("watcher");
    sim.run_until_connected(Duration::from_secs(3));
    sim.publish(0, MediaKind::Video, "cam");
    sim.run_for(Duration::from_secs(2));
    let sid = sim.track_sid(0, "cam");
    let track = sim.client(0).track("cam");
    let received = sim.client(1).received(&sid);
    assert!(received.len() >= 40, "{} packets arrived", received.len());
    received
        .into_iter()
        .map(|r| {
            let i = track
                .sent
                .iter()
                .position(|(seq, _, _)| *seq == u64::from(r.source_seq()))
                .expect("sent");
            (r.clone(), r.at - track.sent_at[i])
        })
        .collect()
}

#[test]
fn a_frame_leaves_with_its_last_packet() {
    frame_leaves_with_its_last_packet(false);
}

/// Copies never wait for the timer slack, however the shard is driven.
#[test]
fn a_frame_leaves_with_its_last_packet_when_timers_may_wait() {
    frame_leaves_with_its_last_packet(true);
}

fn frame_leaves_with_its_last_packet(lazy_timers: bool) {
    let mut sim = Sim::new();
    sim.lazy_timers = lazy_timers;
    let seen = camera_to_watcher(&mut sim);
    // The sim writes a frame's packets at once: the last one arrives with
    // the others, and nothing waits.
    for (r, transit) in &seen {
        assert!(
            *transit < TWO_HOPS + SLACK,
            "{transit:?} for {}",
            r.source_seq()
        );
    }
    for frame in seen.chunk_by(|a, b| a.0.frame_no() == b.0.frame_no()) {
        let last = frame.last().unwrap();
        assert!(
            last.0.marker,
            "frame {} ends with its marker",
            last.0.frame_no()
        );
        assert!(
            frame.iter().all(|(r, _)| r.at == last.0.at),
            "frame {} split",
            last.0.frame_no()
        );
    }
}

#[test]
fn a_frame_that_left_wakes_nobody_at_the_end_of_its_wait() {
    let mut sim = Sim::new();
    camera_to_watcher(&mut sim);
    let mut arrivals = sim.rtp_to_shard.clone();
    arrivals.dedup();
    // Had the copies' wait outlived their frame (which arrives whole here),
    // the shard would be woken FRAME_WAIT after each arrival, for nothing; a
    // few such instants are due for other reasons.
    let woken = arrivals
        .iter()
        .filter(|&&at| sim.shard_timeouts.contains(&(at + FRAME_WAIT)))
        .count();
    assert!(
        woken * 10 < arrivals.len(),
        "{woken} of {} arrivals woke the shard at the end of their wait",
        arrivals.len()
    );
}

#[test]
fn without_its_last_packet_a_frame_leaves_after_the_wait() {
    frame_leaves_after_the_wait(false);
}

/// A frame's wait ends on time when the shard sleeps as long as its periodic
/// work allows: the wait is not periodic work.
#[test]
fn without_its_last_packet_a_frame_leaves_after_the_wait_when_timers_may_wait() {
    frame_leaves_after_the_wait(true);
}

fn frame_leaves_after_the_wait(lazy_timers: bool) {
    let mut sim = Sim::new();
    sim.lazy_timers = lazy_timers;
    // Every packet ending a frame is lost on its way to the server
    // (retransmissions too: they carry the marker as well).
    sim.drop_filter = Some(Box::new(|d| {
        d.destination == server_addr()
            && rtp_info(&d.contents).is_some()
            && d.contents[1] & 0x80 != 0
    }));
    let seen = camera_to_watcher(&mut sim);
    let waited = TWO_HOPS + FRAME_WAIT;
    for (r, transit) in &seen {
        assert!(!r.marker);
        assert!(
            *transit <= waited + SLACK,
            "{transit:?} for {}: later than the frame wait",
            r.source_seq()
        );
    }
    // A copy leaves earlier when its session is driven for its own sake
    // (RTCP reports, ICE checks), but many wait out the frame wait.
    let full_wait = seen.iter().filter(|(_, t)| *t + SLACK >= waited).count();
    assert!(
        full_wait * 3 > seen.len(),
        "{full_wait} of {} waited for the frame's end",
        seen.len()
    );
}
