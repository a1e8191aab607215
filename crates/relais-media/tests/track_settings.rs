//! A subscriber's track settings (`UpdateTrackSettings`, sent by the SDKs'
//! adaptive stream): a video taken off screen stops reaching it, the
//! publisher may stop encoding, and the video comes back whole when it is on
//! screen again.

mod common;

use std::time::Duration;

use common::{enabled_qualities, layers_received, simulcast_to_bob, vp8_keyframe_start, Sim};
use relais_proto::livekit::signal_request::Message;
use relais_proto::livekit::{UpdateTrackSettings, VideoQuality};

fn settings(sid: &str, disabled: bool) -> Message {
    Message::TrackSetting(UpdateTrackSettings {
        track_sids: vec![sid.to_string()],
        disabled,
        quality: VideoQuality::High as i32,
        ..Default::default()
    })
}

/// The case of a browser that subscribes while its tile is not yet shown
/// (livekit-client sends `disabled` until the element is visible): disabled
/// past dynacast's delay, the publisher is told every layer is off; enabled
/// again, it is told at once that every layer is wanted, and the subscriber's
/// first packet is a keyframe.
#[test]
fn a_track_disabled_past_the_dynacast_delay_comes_back_whole() {
    let (mut sim, sid) = simulcast_to_bob();
    let window = Duration::from_millis(500);

    sim.send_signal(1, settings(&sid, true));
    sim.run_for(Duration::from_secs(4));
    assert_eq!(
        layers_received(&sim, 1, &sid, Duration::from_secs(3)),
        Vec::<usize>::new(),
        "nothing reaches a subscriber that disabled the track"
    );
    assert_eq!(
        enabled_qualities(&sim, 0),
        Vec::<i32>::new(),
        "nobody receives the track: the publisher may stop every layer"
    );

    let enabled_at = sim.now;
    sim.send_signal(1, settings(&sid, false));
    sim.run_for(Duration::from_millis(50));
    assert_eq!(
        enabled_qualities(&sim, 0).len(),
        3,
        "every layer wanted again at once"
    );
    sim.run_for(Duration::from_secs(2));
    let resumed: Vec<_> = sim
        .client(1)
        .received(&sid)
        .into_iter()
        .filter(|r| r.at > enabled_at)
        .collect();
    let first = resumed.first().expect("the video comes back");
    assert!(
        vp8_keyframe_start(&first.payload),
        "the first packet after the pause starts a keyframe"
    );
    assert_eq!(
        layers_received(&sim, 1, &sid, window),
        [2],
        "the top layer again"
    );
}

/// A track nobody received had every layer turned off; the first subscriber
/// to join turns them back on at its join, not at the room's next tick.
#[test]
fn a_newcomer_turns_the_layers_nobody_watched_back_on_at_once() {
    let mut sim = Sim::new();
    sim.join("alice");
    sim.run_until_connected(Duration::from_secs(2));
    sim.publish_simulcast(0, "cam");
    sim.run_for(Duration::from_secs(4));
    assert_eq!(
        enabled_qualities(&sim, 0),
        Vec::<i32>::new(),
        "nobody receives the track: every layer off"
    );

    sim.join("bob");
    sim.run_for(Duration::from_millis(50));
    assert_eq!(
        enabled_qualities(&sim, 0).len(),
        3,
        "every layer wanted again at the join"
    );
    sim.run_until_connected(Duration::from_secs(2));
    sim.run_for(Duration::from_secs(2));
    let sid = sim.track_sid(0, "cam");
    let window = Duration::from_millis(500);
    assert_eq!(
        layers_received(&sim, 1, &sid, window),
        [2],
        "Bob gets the top layer"
    );
}
