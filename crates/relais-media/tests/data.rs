//! Data packets through the shard between simulated LiveKit clients.

mod common;

use std::time::Duration;

use common::Sim;
use prost::Message;
use relais_proto::livekit::{data_packet, DataPacket, UserPacket};

fn user_packet(kind: data_packet::Kind, claimed: &str, topic: &str, payload: &[u8]) -> DataPacket {
    DataPacket {
        kind: kind as i32,
        // A sender may claim anything; the server stamps who it really is.
        participant_identity: claimed.to_string(),
        value: Some(data_packet::Value::User(UserPacket {
            participant_identity: claimed.to_string(),
            participant_sid: "PA_forged".into(),
            payload: payload.to_vec(),
            topic: Some(topic.to_string()),
            ..Default::default()
        })),
        ..Default::default()
    }
}

#[test]
fn user_data_is_relayed_and_stamped_with_the_sender() {
    let mut sim = Sim::new();
    sim.join("alice");
    sim.join("bob");
    sim.join("carol");
    // Like an SDK's first data send: negotiate the publisher PC with its channels.
    sim.connect_publisher(0);
    let ready = sim.run_until_cond(Duration::from_secs(3), |s| {
        s.client(0).pub_channels_open.len() == 2
            && s.clients
                .iter()
                .all(|c| c.sub_channel_open("_reliable") && c.sub_channel_open("_lossy"))
    });
    assert!(ready, "data channels open");
    let alice_sid = sim.client(0).sid.clone();

    sim.send_data(
        0,
        true,
        &user_packet(data_packet::Kind::Reliable, "mallory", "chat", b"hello"),
    );
    sim.send_data(
        0,
        false,
        &user_packet(data_packet::Kind::Lossy, "mallory", "cursor", b"xy"),
    );
    sim.run_for(Duration::from_millis(300));

    for index in [1, 2] {
        let c = sim.client(index);
        let decoded: Vec<(String, DataPacket)> = c
            .data_in
            .iter()
            .map(|(label, bytes)| (label.clone(), DataPacket::decode(&bytes[..]).unwrap()))
            .collect();
        assert_eq!(decoded.len(), 2, "{}: {decoded:?}", c.identity);
        for (label, topic, payload, kind) in [
            (
                "_reliable",
                "chat",
                &b"hello"[..],
                data_packet::Kind::Reliable,
            ),
            ("_lossy", "cursor", &b"xy"[..], data_packet::Kind::Lossy),
        ] {
            let (_, p) = decoded
                .iter()
                .find(|(l, _)| l == label)
                .unwrap_or_else(|| panic!("{} got nothing on {label}", c.identity));
            assert_eq!(p.participant_identity, "alice");
            assert_eq!(p.participant_sid, alice_sid);
            assert_eq!(p.kind, kind as i32);
            let Some(data_packet::Value::User(user)) = &p.value else {
                panic!("a user packet");
            };
            assert_eq!(user.participant_identity, "alice");
            assert_eq!(user.participant_sid, alice_sid);
            assert_eq!(user.topic.as_deref(), Some(topic));
            assert_eq!(user.payload, payload);
        }
    }
    assert!(sim.client(0).data_in.is_empty(), "no echo to the sender");
}

#[test]
fn user_data_to_named_destinations_only() {
    let mut sim = Sim::new();
    sim.join("alice");
    sim.join("bob");
    sim.join("carol");
    sim.connect_publisher(0);
    let ready = sim.run_until_cond(Duration::from_secs(3), |s| {
        s.client(0).pub_channels_open.len() == 2
            && s.clients.iter().all(|c| c.sub_channel_open("_reliable"))
    });
    assert!(ready, "data channels open");

    let mut packet = user_packet(data_packet::Kind::Reliable, "alice", "dm", b"psst");
    packet.destination_identities = vec!["carol".into()];
    sim.send_data(0, true, &packet);
    sim.run_for(Duration::from_millis(300));

    assert!(sim.client(1).data_in.is_empty(), "bob is not a destination");
    assert_eq!(sim.client(2).data_in.len(), 1);
}
