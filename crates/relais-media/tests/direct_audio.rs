//! Direct audio egress (`MediaConfig::direct_audio`): a subscriber's audio
//! copies protected and sent by Relais, not str0m — and still decrypted,
//! in order and whole, by a str0m client, with sender reports it accepts.

mod common;

use std::time::Duration;

use common::*;
use relais_media::Shard;
use str0m::media::MediaKind;

fn sim(direct_audio: bool) -> Sim {
    let mut sim = Sim::new();
    let mut config = sim.config.clone();
    config.direct_audio = direct_audio;
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
    let mut sim = sim(true);
    sim.run_for(Duration::from_secs(3));
    let audio_sid = sim.track_sid(0, "mic-cid");
    let video_sid = sim.track_sid(0, "cam-cid");
    let stats = sim.shard.take_stats();
    let ssrc = sim.client_mut(1).subscriber_ssrc(&audio_sid);
    let bob = sim.client(1);
    let audio = bob.received(&audio_sid);
    let sent = sim.client(0).track("mic-cid").sent.len();
    assert!(
        audio.len() + 8 >= sent && audio.len() > 100,
        "received {} of {sent}",
        audio.len()
    );
    for w in audio.windows(2) {
        assert_eq!(w[1].seq, w[0].seq + 1, "seq jump");
        assert_eq!(w[1].source_seq(), w[0].source_seq() + 1, "source gap");
        assert_eq!(
            w[1].timestamp.wrapping_sub(w[0].timestamp),
            960,
            "20 ms at 48 kHz"
        );
    }
    assert!(audio.iter().all(|r| r.payload[..40] == [0xfc; 40]));
    // Every audio copy went out directly; video through str0m as before.
    assert!(
        stats.direct_out > 100 && stats.direct_out <= stats.packets_out[0],
        "{} direct of {:?} out",
        stats.direct_out,
        stats.packets_out
    );
    assert!(bob.received(&video_sid).len() > 100);
    // The audio stream's sender reports decrypt and count what was sent.
    let reports: Vec<u32> = bob
        .sender_reports
        .iter()
        .filter(|(s, _)| *s == ssrc)
        .map(|(_, packets)| *packets)
        .collect();
    // str0m's own first report says 0 (it cannot be switched off); after it,
    // only Relais's, once a second, each counting what it had sent.
    let ours: Vec<u32> = reports.iter().copied().filter(|n| *n > 0).collect();
    assert!(
        reports.len() - ours.len() <= 1,
        "sender reports {reports:?}"
    );
    assert!(ours.len() >= 2, "sender reports {reports:?}");
    assert!(
        ours.windows(2).all(|w| w[1] > w[0] && w[1] - w[0] <= 51),
        "{reports:?}"
    );
    assert!(*ours.last().unwrap() as usize <= audio.len() + 1);
}

#[test]
fn without_it_no_copy_is_sent_directly() {
    let mut sim = sim(false);
    sim.run_for(Duration::from_secs(2));
    let audio_sid = sim.track_sid(0, "mic-cid");
    assert!(sim.client(1).received(&audio_sid).len() > 50);
    assert_eq!(sim.shard.take_stats().direct_out, 0);
}
