//! Direct egress (`MediaConfig::direct_audio`, `direct_video`): a
//! subscriber's copies protected and sent by Relais, not str0m — and still
//! decrypted, in order and whole, by a str0m client, with sender reports it
//! accepts; lost video is sent again on RTX by Relais.

mod common;

use std::time::Duration;

use common::*;
use relais_media::stats::{Direction, Kind};
use relais_media::Shard;
use relais_proto::livekit::{signal_request, UpdateSubscription};
use str0m::media::{KeyframeRequestKind, MediaKind};
use str0m::rtp::{Ssrc, VideoOrientation};

fn sim(direct_audio: bool, direct_video: bool) -> Sim {
    let mut sim = Sim::new();
    let mut config = sim.config.clone();
    config.direct_audio = direct_audio;
    config.direct_video = direct_video;
    sim.shard = Shard::new(0, config);
    sim.join("alice");
    sim.join("bob");
    sim.run_until_connected(Duration::from_secs(2));
    sim.publish(0, MediaKind::Audio, "mic-cid");
    sim.publish(0, MediaKind::Video, "cam-cid");
    sim
}

#[test]
fn audio_sent_directly_arrives_whole_and_in_order() {
    let mut sim = sim(true, false);
    sim.run_for(Duration::from_secs(3));
    let audio_sid = sim.track_sid(0, "mic-cid");
    let video_sid = sim.track_sid(0, "cam-cid");
    let stats = sim.shard.take_stats();
    let ssrc = sim.client_mut(1).subscriber_ssrc(&audio_sid);
    let bob = sim.client(1);
    let audio = bob.received(&audio_sid);
    let sent = sim.client(0).track("mic-cid").sent.len();
    assert_whole_and_in_order(&audio, sent, 100, "audio");
    for w in audio.windows(2) {
        assert_eq!(
            w[1].timestamp.wrapping_sub(w[0].timestamp),
            960,
            "20 ms at 48 kHz"
        );
    }
    assert!(audio.iter().all(|r| r.payload[..40] == [0xfc; 40]));
    // Every audio copy went out directly; video through str0m as before.
    assert!(
        stats.direct_out[0] > 100 && stats.direct_out[0] <= stats.packets_out[0],
        "{:?} direct of {:?} out",
        stats.direct_out,
        stats.packets_out
    );
    assert_eq!(stats.direct_out[1], 0);
    assert!(bob.received(&video_sid).len() > 100);
    // The audio stream's sender reports decrypt and count what was sent.
    check_sender_reports(bob, ssrc, audio.len(), 51);
}

/// `ssrc`'s sender reports: str0m's own first one says 0 (it cannot be
/// switched off); after it only Relais's, once a second, each counting what
/// it had sent (at most `per_second` more than the one before).
fn check_sender_reports(client: &Client, ssrc: Ssrc, received: usize, per_second: u32) {
    let reports: Vec<u32> = client
        .sender_reports
        .iter()
        .filter(|(s, _)| *s == ssrc)
        .map(|(_, packets)| *packets)
        .collect();
    let ours: Vec<u32> = reports.iter().copied().filter(|n| *n > 0).collect();
    assert!(
        reports.len() - ours.len() <= 1,
        "sender reports {reports:?}"
    );
    assert!(ours.len() >= 2, "sender reports {reports:?}");
    assert!(
        ours.windows(2)
            .all(|w| w[1] > w[0] && w[1] - w[0] <= per_second),
        "{reports:?}"
    );
    assert!(*ours.last().unwrap() as usize <= received + 1);
}

#[test]
fn video_sent_directly_arrives_whole_and_in_order() {
    let mut sim = sim(true, true);
    sim.run_for(Duration::from_secs(3));
    let video_sid = sim.track_sid(0, "cam-cid");
    let stats = sim.shard.take_stats();
    let ssrc = sim.client_mut(1).subscriber_ssrc(&video_sid);
    let bob = sim.client(1);
    let video = bob.received(&video_sid);
    let sent = sim.client(0).track("cam-cid").sent.len();
    assert_whole_and_in_order(&video, sent, 100, "video");
    assert!(video[0].is_vp8_keyframe_start(), "starts on a keyframe");
    for w in video.windows(2) {
        // The picture id (rewritten into each copy) moves by one per frame.
        let ids = [&w[0], &w[1]].map(|r| vp8_picture_id(&r.payload).expect("picture id"));
        let step = ids[1].wrapping_sub(ids[0]) & 0x7fff;
        assert_eq!(step, u16::from(w[0].marker), "picture ids {ids:?}");
    }
    // Every copy went out directly once the keys were there.
    assert!(
        stats.direct_out[1] * 10 >= stats.packets_out[1] * 9,
        "{:?} direct of {:?} out",
        stats.direct_out,
        stats.packets_out
    );
    check_sender_reports(bob, ssrc, video.len(), 200);
}

#[test]
fn direct_streams_cross_the_sequence_number_wrap() {
    // The publisher starts near 65,535 and a copy keeps the 16-bit number of
    // its source, so both streams roll over within seconds: from then on
    // Relais must encrypt with the next rollover counter (RFC 3711 index).
    let mut sim = sim(true, true);
    for cid in ["mic-cid", "cam-cid"] {
        sim.client_mut(0).track_mut(cid).seq = 65_300;
    }
    sim.run_for(Duration::from_secs(8));
    let stats = sim.shard.take_stats();
    for (cid, per_second) in [("mic-cid", 51), ("cam-cid", 200)] {
        let sid = sim.track_sid(0, cid);
        let ssrc = sim.client_mut(1).subscriber_ssrc(&sid);
        let bob = sim.client(1);
        let rx = bob.received(&sid);
        let sent = sim.client(0).track(cid).sent.len();
        assert_whole_and_in_order(&rx, sent, 300, cid);
        let (first, last) = (rx[0].seq, rx[rx.len() - 1].seq);
        assert!(
            first < 65_536 && last > 65_536 + 50,
            "{cid}: {first}..{last}"
        );
        check_sender_reports(bob, ssrc, rx.len(), per_second);
    }
    assert!(
        stats
            .direct_out
            .iter()
            .zip(stats.packets_out)
            .all(|(d, out)| d * 10 >= out * 9),
        "{:?} direct of {:?} out",
        stats.direct_out,
        stats.packets_out
    );
}

#[test]
fn a_rotation_is_sent_directly_in_its_header_extension() {
    let mut sim = sim(true, true);
    sim.client_mut(0).track_mut("cam-cid").orientation = Some(VideoOrientation::Deg90);
    sim.run_for(Duration::from_secs(2));
    let video_sid = sim.track_sid(0, "cam-cid");
    let stats = sim.shard.take_stats();
    let video = sim.client(1).received(&video_sid);
    assert!(video.len() > 60, "received {}", video.len());
    // Each frame's last packet says the rotation, the others nothing.
    for r in &video {
        let want = r.marker.then_some(VideoOrientation::Deg90);
        assert_eq!(r.orientation, want, "seq {} marker {}", r.seq, r.marker);
    }
    // And none of it took str0m's path.
    assert!(
        stats.direct_out[1] * 10 >= stats.packets_out[1] * 9,
        "{:?} direct of {:?} out",
        stats.direct_out,
        stats.packets_out
    );
}

#[test]
fn lost_direct_video_is_sent_again_on_rtx() {
    let mut sim = sim(true, true);
    let b_sub = sim.client(1).sub_addr;
    sim.run_for(Duration::from_secs(1));
    let sid = sim.track_sid(0, "cam-cid");
    let video_pt = sim.client(1).received(&sid)[0].pt;
    // Lose every 7th VP8 packet (not RTX) to B, 12 of them, each only once.
    let lost = sim.lose_every_nth(b_sub, video_pt, 7, 12, Duration::from_secs(3));
    sim.run_for(Duration::from_secs(1));

    let stats = sim.shard.take_stats();
    let b = sim.client(1);
    assert_eq!(lost.len(), 12);
    assert!(b.rtx_received >= lost.len(), "{} on RTX", b.rtx_received);
    assert!(stats.direct_resent >= lost.len() as u64, "{stats:?}");
    // B's NACKs and reports were read by Relais, not str0m.
    assert!(stats.reports_read >= lost.len() as u64, "{stats:?}");
    let rx = b.received(&sid);
    let missing = gaps(rx.iter().map(|r| r.seq));
    assert!(missing.is_empty(), "B has gaps: {missing:?}");
    for seq in &lost {
        let got = rx.iter().find(|r| r.seq as u16 == *seq).expect("recovered");
        // Recovered whole: the picture id rewrite applied to the repair too.
        assert!(vp8_picture_id(&got.payload).is_some());
    }
}

#[test]
fn without_it_no_copy_is_sent_directly() {
    let mut sim = sim(false, false);
    sim.run_for(Duration::from_secs(2));
    let audio_sid = sim.track_sid(0, "mic-cid");
    assert!(sim.client(1).received(&audio_sid).len() > 50);
    assert_eq!(sim.shard.take_stats().direct_out, [0, 0]);
}

#[test]
fn a_stopped_subscription_takes_its_direct_stream_with_it() {
    let mut sim = sim(true, true);
    sim.run_for(Duration::from_secs(2));
    let video_sid = sim.track_sid(0, "cam-cid");
    // Bob's two subscriptions, each a stream Relais sends itself.
    assert_eq!(sim.shard.gauges().direct_streams, 2);

    sim.send_signal(
        1,
        signal_request::Message::Subscription(UpdateSubscription {
            track_sids: vec![video_sid.clone()],
            subscribe: false,
            participant_tracks: vec![],
        }),
    );
    sim.run_for(Duration::from_secs(1));
    // The video stream's state and kept packets went with the subscription;
    // nothing more of it arrives.
    assert_eq!(sim.shard.gauges().direct_streams, 1);
    let video_before = sim.client(1).received(&video_sid).len();
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.client(1).received(&video_sid).len(), video_before);

    // The audio track unpublished: its subscription and stream end too.
    sim.unpublish(0, "mic-cid");
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.shard.gauges().direct_streams, 0);
}

#[test]
fn a_subscribers_picture_loss_report_asks_the_publisher_for_a_keyframe() {
    let mut sim = sim(true, true);
    sim.run_for(Duration::from_secs(2));
    let sid = sim.track_sid(0, "cam-cid");
    let ssrc = sim.client_mut(1).subscriber_ssrc(&sid);
    let asked_before = sim.client(0).track("cam-cid").keyframe_requests.len();
    sim.shard.take_stats();

    // B's str0m sends a PLI on the video stream Relais sends it.
    sim.client_mut(1)
        .subscriber
        .direct_api()
        .stream_rx(&ssrc)
        .expect("B's video stream")
        .request_keyframe(KeyframeRequestKind::Pli);
    sim.run_for(Duration::from_millis(500));

    let stats = sim.shard.take_stats();
    assert_eq!(stats.plis[1], 1, "one PLI from B counted: {stats:?}");
    assert!(stats.reports_read > 0, "read by Relais: {stats:?}");
    let asked = &sim.client(0).track("cam-cid").keyframe_requests;
    assert_eq!(asked.len(), asked_before + 1, "A was asked once more");
    // And B gets that keyframe.
    let keyframe = sim.client(0).track("cam-cid").keyframes.last().copied();
    let rx = sim.client(1).received(&sid);
    assert!(
        rx.iter()
            .any(|r| r.is_vp8_keyframe_start() && Some(r.frame_no()) == keyframe),
        "B received A's new keyframe {keyframe:?}"
    );
}

#[test]
fn what_a_subscriber_reports_on_direct_streams_is_sampled() {
    let mut sim = sim(true, true);
    sim.run_for(Duration::from_secs(12));
    let stats = sim.shard.take_stats();
    // B's receiver reports, read by Relais, give its streams' statistics:
    // the round trip to B among them (Relais's own sender reports echoed).
    let outgoing: Vec<_> = stats
        .samples
        .iter()
        .filter(|s| s.direction == Direction::Outgoing)
        .collect();
    for kind in [Kind::Audio, Kind::Video] {
        let sample = outgoing
            .iter()
            .find(|s| s.kind == kind && s.rtt_ms.is_some())
            .unwrap_or_else(|| {
                panic!("an outgoing {kind:?} sample with a round trip: {outgoing:?}")
            });
        let rtt = sample.rtt_ms.unwrap();
        assert!((0.0..200.0).contains(&rtt), "{rtt} ms");
        assert_eq!(sample.lost, 0);
    }
}
