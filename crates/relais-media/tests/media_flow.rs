//! Media through the shard between simulated LiveKit clients: publish and
//! subscribe, keyframe on subscribe, loss with NACK recovery, unpublish, the
//! shard's counters.

mod common;

use std::time::Duration;

use common::{assert_whole_and_in_order, gaps, Sim};
use relais_media::stats::Direction as StatsDirection;
use relais_media::{RoomEvent, Shard};
use relais_proto::livekit::signal_response::Message;
use relais_proto::livekit::TrackType;
use str0m::media::{Direction, MediaKind};

/// A (index 0) and B (index 1) in the room, all peer connections up.
fn two_participants() -> Sim {
    let mut sim = Sim::new();
    let a = sim.join("alice");
    let b = sim.join("bob");
    assert_eq!((a, b), (0, 1));
    sim.run_until_connected(Duration::from_secs(2));
    sim
}

#[test]
fn publish_and_subscribe_audio_and_video() {
    let mut sim = two_participants();
    sim.publish(0, MediaKind::Audio, "mic-cid");
    sim.publish(0, MediaKind::Video, "cam-cid");
    sim.run_for(Duration::from_secs(2));

    let audio_sid = sim.track_sid(0, "mic-cid");
    let video_sid = sim.track_sid(0, "cam-cid");
    assert!(audio_sid.starts_with("TR_AM"), "{audio_sid}");
    assert!(video_sid.starts_with("TR_VC"), "{video_sid}");

    // The publisher got track_published per cid, and no update about itself.
    let a = sim.client(0);
    let published = a.signals_matching(|m| matches!(m, Message::TrackPublished(_)));
    assert_eq!(published.len(), 2);
    assert!(a
        .signals_matching(|m| matches!(m, Message::Update(u)
            if u.participants.iter().any(|p| p.identity == "alice" && !p.tracks.is_empty())))
        .is_empty());

    // B learned about both tracks from `update`, as an SDK would show them.
    let b = sim.client(1);
    let alice = b.participant("alice").expect("B knows alice");
    assert!(alice.is_publisher);
    assert_eq!(alice.tracks.len(), 2);
    let audio_info = alice.tracks.iter().find(|t| t.sid == audio_sid).unwrap();
    let video_info = alice.tracks.iter().find(|t| t.sid == video_sid).unwrap();
    assert_eq!(audio_info.r#type, TrackType::Audio as i32);
    assert_eq!(audio_info.mime_type, "audio/opus");
    assert_eq!(video_info.mime_type, "video/VP8");
    assert!(!video_info.mid.is_empty());
    let events = &sim.room_events;
    assert_eq!(
        events
            .iter()
            .filter(|(_, e)| matches!(e, RoomEvent::TrackPublished(..)))
            .count(),
        2
    );

    // B's subscriber PC got an m-line per track, msid track id = TR_ SID.
    let added: Vec<&String> = b.media_added.iter().map(|(_, _, t)| t).collect();
    assert!(
        added.contains(&&audio_sid) && added.contains(&&video_sid),
        "{added:?}"
    );

    let sent_audio = sim.client(0).track("mic-cid").sent.len();
    let sent_video = sim.client(0).track("cam-cid").sent.len();
    for (sid, sent) in [(&audio_sid, sent_audio), (&video_sid, sent_video)] {
        assert_whole_and_in_order(&b.received(sid), sent, 40, sid);
    }
    let video = b.received(&video_sid);
    assert!(
        video[0].is_vp8_keyframe_start(),
        "first video packet starts a keyframe"
    );
    // Payloads arrive untouched (the VP8 picture id may be rewritten, nothing else).
    let audio = b.received(&audio_sid);
    assert_eq!(audio[0].payload.len(), 48);
    assert!(audio.iter().all(|r| r.payload[..40] == [0xfc; 40]));
}

#[test]
fn keyframe_on_subscribe() {
    let mut sim = Sim::new();
    sim.join("alice");
    sim.run_until_connected(Duration::from_secs(2));
    sim.publish(0, MediaKind::Video, "cam");
    sim.run_for(Duration::from_secs(3));
    let sid = sim.track_sid(0, "cam");
    {
        let t = sim.client(0).track("cam");
        assert!(t.frames_sent > 60);
        assert_eq!(t.keyframes, vec![0], "only the first frame was a keyframe");
    }

    let joined_at = sim.now;
    sim.join("bob");
    let got_video = sim.run_until_cond(Duration::from_secs(3), |s| {
        !s.client(1).received(&sid).is_empty()
    });
    assert!(got_video, "B receives video");
    sim.run_for(Duration::from_millis(500));

    let a = sim.client(0).track("cam");
    let first_request = *a
        .keyframe_requests
        .first()
        .expect("A's str0m reported a keyframe request");
    let delay = first_request - joined_at;
    assert!(
        delay < Duration::from_millis(300),
        "keyframe requested {delay:?} after B joined"
    );
    assert!(a.keyframes.len() >= 2, "A produced a keyframe on request");

    let rx = sim.client(1).received(&sid);
    assert!(
        rx[0].is_vp8_keyframe_start(),
        "B's first video packet starts a keyframe (frame {})",
        rx[0].frame_no()
    );
    assert!(a.keyframes[1..].contains(&rx[0].frame_no()));
    for w in rx.windows(2) {
        assert_eq!(w[1].seq, w[0].seq + 1);
    }
}

/// B is in the room before A publishes, but its answer to the offer with A's
/// track comes back late (slow signaling) and A is far away: A's first
/// keyframe reaches the server before B's m-line is negotiated. B must still
/// start with a keyframe, not with the deltas that follow the one it missed.
#[test]
fn first_video_is_a_keyframe_when_the_subscription_is_late() {
    let mut sim = two_participants();
    sim.client_mut(0).extra_latency = Duration::from_millis(40);
    sim.client_mut(1).signal_latency = Some(Duration::from_millis(150));
    sim.publish(0, MediaKind::Video, "cam");
    sim.run_for(Duration::from_secs(2));
    let sid = sim.track_sid(0, "cam");
    let rx = sim.client(1).received(&sid);
    assert!(rx.len() > 20);
    assert!(
        rx[0].is_vp8_keyframe_start(),
        "B's first video packet is frame {} (keyframes: {:?})",
        rx[0].frame_no(),
        sim.client(0).track("cam").keyframes
    );
    for w in rx.windows(2) {
        assert_eq!(w[1].seq, w[0].seq + 1);
    }
}

#[test]
fn lost_video_is_recovered_by_nack() {
    let mut sim = two_participants();
    sim.publish(0, MediaKind::Video, "cam");
    let b_sub = sim.client(1).sub_addr;
    sim.run_for(Duration::from_secs(1));
    let sid = sim.track_sid(0, "cam");
    let video_pt = sim.client(1).received(&sid)[0].pt;
    let before = sim.client(1).received(&sid).len();
    assert!(before > 20);

    // Lose every 7th VP8 packet (not RTX) to B, 12 of them, each only once.
    let lost = sim.lose_every_nth(b_sub, video_pt, 7, 12, Duration::from_secs(3));
    sim.run_for(Duration::from_secs(1));

    let b = sim.client(1);
    assert_eq!(lost.len(), 12, "the network dropped 12 video packets");
    for seq in &lost {
        assert!(
            b.nacks_sent.iter().any(|(_, s)| s == seq),
            "B NACKed {seq}: {:?}",
            b.nacks_sent
        );
    }
    assert!(b.rtx_received >= lost.len(), "the server retransmitted");
    let rx = b.received(&sid);
    let missing = gaps(rx.iter().map(|r| r.seq));
    assert!(missing.is_empty(), "B has gaps: {missing:?}");
    for seq in &lost {
        assert!(
            rx.iter().any(|r| r.seq as u16 == *seq),
            "lost packet {seq} recovered"
        );
    }
    // Everything A sent made it (but what is still in flight).
    // Everything A sent since B's first packet made it (but what is still in flight).
    let first = rx[0].source_seq();
    let sent = sim
        .client(0)
        .track("cam")
        .sent
        .iter()
        .filter(|s| s.0 >= u64::from(first))
        .count();
    assert!(rx.len() + 4 >= sent, "received {} of {sent}", rx.len());
}

#[test]
fn lost_published_video_is_asked_for_again_by_the_server() {
    let mut sim = two_participants();
    sim.publish(0, MediaKind::Video, "cam");
    let a_pub = sim.client(0).pub_addr;
    sim.run_for(Duration::from_secs(1));
    let sid = sim.track_sid(0, "cam");
    let pt = sim.client(0).track("cam").pt.expect("negotiated");
    assert!(sim.client(1).received(&sid).len() > 20);
    let _ = sim.shard.take_stats();

    // Lose every 7th packet A sends, 12 of them, each only once: only the
    // server's NACKs can bring them back (B never saw them).
    let lost = sim.lose_every_nth(a_pub, pt, 7, 12, Duration::from_secs(3));
    // Long enough for a statistics interval to end.
    sim.run_for(Duration::from_secs(5));
    assert_eq!(lost.len(), 12, "the network dropped 12 of A's packets");

    let rx = sim.client(1).received(&sid);
    let missing = gaps(rx.iter().map(|r| r.seq));
    assert!(missing.is_empty(), "B has gaps: {missing:?}");
    for seq in &lost {
        assert!(
            rx.iter().any(|r| r.source_seq() as u16 == *seq),
            "lost packet {seq} recovered"
        );
    }
    let stats = sim.shard.take_stats();
    let nacks = stats.nacks[StatsDirection::Incoming as usize];
    assert!(
        nacks >= 12,
        "the server asked A again: {nacks} NACKs counted"
    );
    // Relais read A's packets itself (direct ingress), not str0m.
    let opened: u64 = stats.direct_in.iter().sum();
    let received: u64 = stats.packets_in.iter().sum();
    assert!(
        opened > 0 && opened + 20 >= received,
        "{opened} of {received} opened directly"
    );
}

#[test]
fn unpublish_renegotiates_subscribers() {
    let mut sim = two_participants();
    sim.publish(0, MediaKind::Audio, "mic");
    sim.publish(0, MediaKind::Video, "cam");
    sim.run_for(Duration::from_secs(1));
    let audio_sid = sim.track_sid(0, "mic");
    let video_sid = sim.track_sid(0, "cam");
    assert!(!sim.client(1).received(&video_sid).is_empty());
    let offers_before = sim.client(1).sub_offers.len();
    let video_mid = sim
        .client(1)
        .media_added
        .iter()
        .find(|(_, _, t)| *t == video_sid)
        .map(|(m, _, _)| *m)
        .unwrap();

    let unpublished_at = sim.now;
    sim.unpublish(0, "cam");
    sim.run_for(Duration::from_secs(1));

    let b = sim.client(1);
    assert!(
        b.sub_offers.len() > offers_before,
        "B got a new subscriber offer"
    );
    assert!(
        b.media_changed
            .iter()
            .any(|(_, mid, dir)| *mid == video_mid && *dir == Direction::Inactive),
        "the video m-line is stopped/inactive on B: {:?}",
        b.media_changed
    );
    let alice = b.participant("alice").unwrap();
    let sids: Vec<&str> = alice.tracks.iter().map(|t| t.sid.as_str()).collect();
    assert_eq!(sids, vec![audio_sid.as_str()], "B's view of alice's tracks");
    assert!(sim
        .room_events
        .iter()
        .any(|(_, e)| matches!(e, RoomEvent::TrackUnpublished(_, t) if t.sid == video_sid)));

    // Video stops, audio keeps flowing.
    let grace = unpublished_at + Duration::from_millis(200);
    assert!(b.received(&video_sid).iter().all(|r| r.at < grace));
    assert!(b.received(&audio_sid).iter().any(|r| r.at > grace));
}

#[test]
fn shard_counters_count_each_forwarded_packet_once() {
    let mut sim = two_participants();
    sim.publish(0, MediaKind::Audio, "mic-cid");
    let mut counted = 0;
    // Taken several times, as the server does once a second: each packet must
    // be in exactly one take (a room's counters once went into every take).
    for _ in 0..4 {
        sim.run_for(Duration::from_millis(500));
        counted += sim.shard.take_stats().packets_out.iter().sum::<u64>();
    }
    let sid = sim.track_sid(0, "mic-cid");
    let received = sim.client(1).received(&sid).len() as u64;
    assert!(received > 40, "received {received}");
    assert!(
        counted >= received && counted <= received + 8,
        "counted {counted} forwarded packets, bob received {received}"
    );
    // What the server's forward latency is sampled on: the copies each
    // datagram caused, as the shard reports them.
    assert_eq!(sim.copies_written, counted);
}

#[test]
fn renegotiation_asks_no_keyframe_for_a_track_already_flowing() {
    let mut sim = two_participants();
    sim.publish(0, MediaKind::Video, "cam-cid");
    sim.run_for(Duration::from_secs(2));
    let video = sim.track_sid(0, "cam-cid");
    let flowing = sim.client(1).received(&video).len();
    assert!(flowing > 20, "bob receives alice's video: {flowing}");
    let _ = sim.shard.take_stats();
    // Alice adds a microphone: bob's subscriber PC is renegotiated, and his answer
    // must not make alice send a keyframe for the video he already decodes.
    sim.publish(0, MediaKind::Audio, "mic-cid");
    sim.run_for(Duration::from_secs(1));
    let mic = sim.track_sid(0, "mic-cid");
    assert!(
        !sim.client(1).received(&mic).is_empty(),
        "bob receives the microphone"
    );
    let plis = sim.shard.take_stats().plis[StatsDirection::Incoming as usize];
    assert_eq!(
        plis, 0,
        "keyframe requests to alice after the renegotiation"
    );
}

#[test]
fn newcomers_within_moments_share_keyframes() {
    let mut sim = Sim::new();
    sim.join("alice");
    sim.run_until_connected(Duration::from_secs(2));
    sim.publish(0, MediaKind::Video, "cam");
    sim.run_for(Duration::from_secs(1));
    let sid = sim.track_sid(0, "cam");
    let before = sim.client(0).track("cam").keyframes.len();
    // Six newcomers 50 ms apart, as when a meeting starts.
    for i in 0..6 {
        sim.join(&format!("viewer-{i}"));
        sim.run_for(Duration::from_millis(50));
    }
    let all_see = sim.run_until_cond(Duration::from_secs(3), |s| {
        (1..=6).all(|i| !s.client(i).received(&sid).is_empty())
    });
    assert!(all_see, "every newcomer receives video");
    for i in 1..=6 {
        let rx = sim.client(i).received(&sid);
        assert!(
            rx[0].is_vp8_keyframe_start(),
            "viewer {i} starts on a keyframe"
        );
    }
    // One keyframe request per 300 ms serves them all (not one keyframe each).
    let keyframes = sim.client(0).track("cam").keyframes.len() - before;
    assert!(
        (1..=2).contains(&keyframes),
        "{keyframes} keyframes for six newcomers"
    );
}

/// Subscriber connections carry no transport-wide sequence numbers (their
/// feedback would only feed a bandwidth estimate the server does not run);
/// publisher connections keep them for the client's own uplink estimate.
#[test]
fn only_publisher_connections_negotiate_transport_wide_feedback() {
    let mut sim = two_participants();
    sim.publish(0, MediaKind::Video, "cam");
    sim.run_for(Duration::from_secs(2));
    let offer = sim.client(1).sub_offers.last().expect("a subscriber offer");
    assert!(offer.contains("m=video"), "{offer}");
    assert!(!offer.contains("transport-wide-cc"), "{offer}");
    let answers = sim
        .client(0)
        .signals_matching(|m| matches!(m, Message::Answer(_)));
    let Some(Message::Answer(answer)) = answers.last() else {
        panic!("no publisher answer");
    };
    assert!(answer.sdp.contains("transport-wide-cc"), "{}", answer.sdp);
    // Media still reaches the subscriber.
    let sid = sim.track_sid(0, "cam");
    assert!(sim.client(1).received(&sid).len() > 20);
}

#[test]
fn a_subscription_limit_holds_tracks_back_until_a_slot_frees() {
    let mut sim = Sim::new();
    sim.config.subscription_limits.audio = 1;
    sim.shard = Shard::new(0, sim.config.clone());
    let alice = sim.join("alice");
    let carol = sim.join("carol");
    let bob = sim.join("bob");
    sim.run_until_connected(Duration::from_secs(2));
    sim.publish(alice, MediaKind::Audio, "mic");
    sim.run_for(Duration::from_secs(1));
    sim.publish(carol, MediaKind::Audio, "mic");
    sim.publish(carol, MediaKind::Video, "cam");
    sim.run_for(Duration::from_secs(1));
    let (a, c, v) = (
        sim.track_sid(alice, "mic"),
        sim.track_sid(carol, "mic"),
        sim.track_sid(carol, "cam"),
    );
    let hears = |sim: &Sim, who: usize, sid: &str| !sim.client(who).received(sid).is_empty();
    assert!(hears(&sim, bob, &a), "bob receives alice's audio");
    assert!(
        !hears(&sim, bob, &c),
        "carol's audio waits: bob's limit is one audio track"
    );
    assert!(hears(&sim, bob, &v), "video has no limit");
    assert!(hears(&sim, alice, &c), "alice has room for carol's audio");

    sim.unpublish(alice, "mic");
    sim.run_for(Duration::from_secs(1));
    assert!(
        hears(&sim, bob, &c),
        "the freed slot goes to the waiting track"
    );
}
