//! Unit tests: protobuf round trips and proto3 JSON in both spellings.

use std::collections::BTreeMap;

use crate::livekit::{
    data_packet, signal_request, signal_response, DataPacket, JoinResponse, ParticipantInfo, Ping,
    Room, ServerInfo, SignalRequest, SignalResponse, TrackInfo, TrackSource, TrackType, UserPacket,
};
use crate::Message;

fn participant() -> ParticipantInfo {
    ParticipantInfo {
        sid: "PA_abcdefghijkm".into(),
        identity: "alice".into(),
        state: crate::livekit::participant_info::State::Active as i32,
        tracks: vec![TrackInfo {
            sid: "TR_VCabcdefghijkm".into(),
            r#type: TrackType::Video as i32,
            source: TrackSource::Camera as i32,
            width: 1280,
            height: 720,
            ..Default::default()
        }],
        attributes: BTreeMap::from([("hand".into(), "raised".into())]),
        joined_at_ms: 1_700_000_000_123,
        version: 3,
        ..Default::default()
    }
}

#[test]
fn signal_request_roundtrip() {
    let req = SignalRequest {
        message: Some(signal_request::Message::PingReq(Ping {
            timestamp: 1_700_000_000_000,
            rtt: 42,
        })),
    };
    let bytes = req.encode_to_vec();
    // field 16 (ping_req), length-delimited: key = (16 << 3) | 2 = 130 = 0x82 0x01.
    assert_eq!(&bytes[..2], &[0x82, 0x01]);
    assert_eq!(SignalRequest::decode(bytes.as_slice()).unwrap(), req);
}

#[test]
fn join_response_roundtrip() {
    let resp = SignalResponse {
        message: Some(signal_response::Message::Join(JoinResponse {
            room: Some(Room {
                sid: "RM_abcdefghijkm".into(),
                name: "standup".into(),
                ..Default::default()
            }),
            participant: Some(participant()),
            server_info: Some(ServerInfo {
                version: "0.1.0".into(),
                protocol: 17,
                ..Default::default()
            }),
            ping_interval: 5,
            ping_timeout: 15,
            ..Default::default()
        })),
    };
    let bytes = resp.encode_to_vec();
    assert_eq!(bytes[0], 0x0a, "join is field 1, length-delimited");
    assert_eq!(SignalResponse::decode(bytes.as_slice()).unwrap(), resp);
}

#[test]
fn data_packet_roundtrip() {
    let pkt = DataPacket {
        kind: data_packet::Kind::Reliable as i32,
        participant_identity: "alice".into(),
        sequence: 9,
        value: Some(data_packet::Value::User(UserPacket {
            payload: b"hello".to_vec(),
            topic: Some(String::new()),
            ..Default::default()
        })),
        ..Default::default()
    };
    let back = DataPacket::decode(pkt.encode_to_vec().as_slice()).unwrap();
    assert_eq!(back, pkt);
    // proto3 `optional` keeps presence of an empty string.
    let Some(data_packet::Value::User(u)) = back.value else {
        panic!("user packet expected")
    };
    assert_eq!(u.topic.as_deref(), Some(""));
}

#[test]
fn json_writes_lower_camel_and_reads_both_spellings() {
    let p = participant();
    let json = serde_json::to_value(&p).unwrap();
    assert_eq!(json["joinedAtMs"], "1700000000123", "int64 as string");
    assert_eq!(json["state"], "ACTIVE", "enum as name");
    assert_eq!(json["tracks"][0]["type"], "VIDEO");
    assert!(json.get("joined_at_ms").is_none());
    assert!(json.get("metadata").is_none(), "defaults omitted");

    let camel: ParticipantInfo = serde_json::from_value(json).unwrap();
    assert_eq!(camel, p);

    let snake = serde_json::json!({
        "sid": "PA_abcdefghijkm",
        "identity": "alice",
        "state": "ACTIVE",
        "tracks": [{"sid": "TR_VCabcdefghijkm", "type": "VIDEO", "source": "CAMERA",
                    "width": 1280, "height": 720}],
        "attributes": {"hand": "raised"},
        "joined_at_ms": "1700000000123",
        "version": 3,
        "unknown_field_from_a_newer_sdk": true
    });
    let parsed: ParticipantInfo = serde_json::from_value(snake).unwrap();
    assert_eq!(parsed, p);
}

#[test]
fn json_signal_request_oneof() {
    let text = r#"{"trickle":{"candidateInit":"{}","target":"SUBSCRIBER","final":true}}"#;
    let req: SignalRequest = serde_json::from_str(text).unwrap();
    let Some(signal_request::Message::Trickle(t)) = &req.message else {
        panic!("trickle expected")
    };
    assert_eq!(t.target, crate::livekit::SignalTarget::Subscriber as i32);
    assert!(t.r#final);
    let out = serde_json::to_string(&req).unwrap();
    assert_eq!(out, text);
    // Same message, snake_case oneof name for the ping request.
    let ping: SignalRequest =
        serde_json::from_str(r#"{"ping_req":{"timestamp":"5","rtt":"1"}}"#).unwrap();
    assert_eq!(
        ping.message,
        Some(signal_request::Message::PingReq(Ping {
            timestamp: 5,
            rtt: 1
        }))
    );
}

#[test]
fn descriptor_set_lists_our_files() {
    use prost::Message as _;
    let fds = pbjson_types::FileDescriptorSet::decode(crate::FILE_DESCRIPTOR_SET).unwrap();
    let names: Vec<_> = fds.file.iter().map(|f| f.name().to_string()).collect();
    for want in [
        "livekit_models.proto",
        "livekit_rtc.proto",
        "livekit_room.proto",
        "livekit_webhook.proto",
        "livekit_metrics.proto",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
    }
}

#[test]
fn registry_covers_messages() {
    macro_rules! count {
        ($(($full:expr, $ty:ty)),* $(,)?) => {{
            let names: &[&str] = &[$($full),*];
            names.to_vec()
        }};
    }
    let names = for_each_message!(count);
    assert!(names.contains(&"livekit.SignalRequest"));
    assert!(names.contains(&"livekit.DataStream.Header"));
    assert!(names.len() > 140, "{}", names.len());
}

/// A join response written with its other participants encoded in place is
/// byte for byte the one prost writes for the whole message.
#[test]
fn join_response_encoded_in_place_is_the_whole_message() {
    let others: Vec<ParticipantInfo> = (0..3)
        .map(|i| ParticipantInfo {
            sid: format!("PA_other{i}"),
            identity: format!("other-{i}"),
            ..participant()
        })
        .collect();
    let join = JoinResponse {
        room: Some(Room {
            sid: "RM_abc".into(),
            name: "lobby".into(),
            num_participants: 4,
            ..Default::default()
        }),
        participant: Some(participant()),
        server_version: "1.9.0".into(),
        subscriber_primary: true,
        ping_timeout: 15,
        ping_interval: 5,
        server_info: Some(ServerInfo {
            version: "1.9.0".into(),
            protocol: 16,
            ..Default::default()
        }),
        ..Default::default()
    };
    let bytes = crate::encode_join_response(
        join.clone(),
        &others
            .iter()
            .map(Message::encode_to_vec)
            .collect::<Vec<_>>(),
    );
    let whole = SignalResponse {
        message: Some(signal_response::Message::Join(JoinResponse {
            other_participants: others.clone(),
            ..join.clone()
        })),
    };
    assert_eq!(bytes, whole.encode_to_vec());
    assert_eq!(SignalResponse::decode(bytes.as_slice()).unwrap(), whole);
    // Nobody else in the room: the same.
    let alone = SignalResponse {
        message: Some(signal_response::Message::Join(join.clone())),
    };
    assert_eq!(
        crate::encode_join_response(join, &[] as &[&[u8]]),
        alone.encode_to_vec()
    );
}
