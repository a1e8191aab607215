//! Updates about participants that publish nothing go out in batches (at
//! most one message every 3 s, as LiveKit sends them), so a room filling up
//! does not send each member one message per newcomer; a publisher's
//! changes go out at once.

mod common;

use std::time::Duration;

use common::Sim;
use relais_proto::livekit::signal_response::Message;
use relais_proto::livekit::{data_packet, DataPacket, UserPacket};
use str0m::media::MediaKind;

#[test]
fn newcomers_who_only_listen_are_announced_in_batches() {
    let mut sim = Sim::new();
    let host = sim.join("host");
    sim.run_until_connected(Duration::from_secs(2));
    let updates = |sim: &Sim| {
        sim.client(host)
            .signals_matching(|m| matches!(m, Message::Update(_)))
            .len()
    };
    let before = updates(&sim);

    // Twelve listeners join over 2.4 s.
    for i in 0..12 {
        sim.join(&format!("listener-{i}"));
        sim.run_for(Duration::from_millis(200));
    }
    sim.run_for(Duration::from_secs(4));

    for i in 0..12 {
        assert!(
            sim.client(host)
                .participant(&format!("listener-{i}"))
                .is_some(),
            "the host knows listener-{i}"
        );
    }
    // One message per batch (3 s apart), each naming several newcomers —
    // instead of one per newcomer and per state (joined, then active).
    let sent = updates(&sim) - before;
    assert!(sent <= 3, "{sent} participant updates for 12 newcomers");
}

#[test]
fn a_publisher_is_announced_at_once() {
    let mut sim = Sim::new();
    let viewer = sim.join("viewer");
    let speaker = sim.join("speaker");
    sim.run_until_connected(Duration::from_secs(2));
    sim.run_for(Duration::from_secs(4));

    sim.publish(speaker, MediaKind::Audio, "mic");
    // Well under the listeners' batch interval.
    sim.run_for(Duration::from_millis(600));
    let seen = sim.client(viewer).participant("speaker").expect("known");
    assert!(seen.is_publisher);
    assert_eq!(seen.tracks.len(), 1);
}

#[test]
fn a_listener_who_sends_data_is_announced_first() {
    let mut sim = Sim::new();
    let host = sim.join("host");
    sim.run_until_connected(Duration::from_secs(2));
    sim.run_for(Duration::from_secs(1));
    let joined_at = sim.now;
    let talker = sim.join("talker");
    sim.connect_publisher(talker);
    let ready = sim.run_until_cond(Duration::from_secs(2), |s| {
        s.client(talker).pub_channels_open.len() == 2
            && s.client(host).sub_channel_open("_reliable")
    });
    assert!(ready, "data channels open");
    let packet = DataPacket {
        kind: data_packet::Kind::Reliable as i32,
        value: Some(data_packet::Value::User(UserPacket {
            payload: b"hello".to_vec(),
            ..Default::default()
        })),
        ..Default::default()
    };
    sim.send_data(talker, true, &packet);
    sim.run_until_cond(Duration::from_secs(1), |s| {
        !s.client(host).data_in.is_empty()
    });
    assert_eq!(sim.client(host).data_in.len(), 1);
    // The update left with the data (signalling is a separate path, so it may
    // land a little later), well before the next batch would have carried it.
    sim.run_for(Duration::from_millis(200));
    assert!(sim.now.duration_since(joined_at) < Duration::from_secs(3));
    assert!(
        sim.client(host).participant("talker").is_some(),
        "the host knows who sent it"
    );
}

#[test]
fn a_publishing_newcomer_learns_its_own_quality_once() {
    let mut sim = Sim::new();
    let host = sim.join("host");
    sim.run_until_connected(Duration::from_secs(2));
    let speaker = sim.join("speaker");
    // Its track is added before its connection is up: the host subscribes to
    // it at once and learns its quality once it connects; each is told it once.
    sim.publish(speaker, MediaKind::Audio, "mic");
    sim.run_until_connected(Duration::from_secs(2));
    sim.run_for(Duration::from_millis(500));

    let own = sim.client(speaker).sid.clone();
    for (who, client) in [("speaker", speaker), ("host", host)] {
        let told = sim.client(client).signals_matching(|m| {
            matches!(m, Message::ConnectionQuality(q)
                if q.updates.iter().any(|u| u.participant_sid == own))
        });
        assert_eq!(told.len(), 1, "{who}: {told:?}");
    }
}
