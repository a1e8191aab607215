//! Signal message encode/decode (prost, binary protobuf as on the `/rtc`
//! WebSocket): a JoinResponse for a 10-participant room, a subscriber offer
//! with a 30-m-line SDP, a trickle candidate and a ParticipantUpdate.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use prost::Message;
use relais_proto::livekit::{
    signal_request, signal_response, JoinResponse, ParticipantInfo, ParticipantPermission,
    ParticipantUpdate, Room, ServerInfo, SessionDescription, SignalRequest, SignalResponse,
    TrackInfo, TrackSource, TrackType, TrickleRequest,
};

fn participant(i: usize) -> ParticipantInfo {
    ParticipantInfo {
        sid: format!("PA_{i:012}"),
        identity: format!("participant-{i}"),
        name: format!("Participant {i}"),
        state: 1,
        joined_at: 1_760_000_000,
        version: 7,
        permission: Some(ParticipantPermission {
            can_subscribe: true,
            can_publish: true,
            can_publish_data: true,
            ..Default::default()
        }),
        tracks: vec![
            TrackInfo {
                sid: format!("TR_A{i:011}"),
                r#type: TrackType::Audio as i32,
                name: "microphone".into(),
                source: TrackSource::Microphone as i32,
                mime_type: "audio/opus".into(),
                ..Default::default()
            },
            TrackInfo {
                sid: format!("TR_V{i:011}"),
                r#type: TrackType::Video as i32,
                name: "camera".into(),
                width: 1280,
                height: 720,
                source: TrackSource::Camera as i32,
                mime_type: "video/VP8".into(),
                ..Default::default()
            },
        ],
        ..Default::default()
    }
}

fn sdp(mlines: usize) -> String {
    let mut s = String::from("v=0\r\no=- 123 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE");
    for m in 0..mlines {
        s.push_str(&format!(" {m}"));
    }
    s.push_str("\r\n");
    for m in 0..mlines {
        s.push_str(&format!(
            "m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\nc=IN IP4 0.0.0.0\r\na=mid:{m}\r\na=ice-ufrag:abcd\r\n\
             a=ice-pwd:0123456789abcdef01234567\r\na=fingerprint:sha-256 AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99\r\n\
             a=setup:actpass\r\na=sendonly\r\na=msid:PA_x TR_V{m:011}\r\na=rtcp-mux\r\na=rtpmap:96 VP8/90000\r\n\
             a=rtcp-fb:96 nack\r\na=rtcp-fb:96 nack pli\r\na=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\n\
             a=ssrc:{} cname:x\r\n",
            1000 + m
        ));
    }
    s
}

fn signal(c: &mut Criterion) {
    let join = SignalResponse {
        message: Some(signal_response::Message::Join(JoinResponse {
            room: Some(Room {
                sid: "RM_abcdefabcdef".into(),
                name: "bench-room".into(),
                empty_timeout: 300,
                num_participants: 11,
                ..Default::default()
            }),
            participant: Some(participant(0)),
            other_participants: (1..=10).map(participant).collect(),
            server_version: "1.9.0".into(),
            server_info: Some(ServerInfo {
                version: "1.9.0".into(),
                protocol: 16,
                ..Default::default()
            }),
            ping_interval: 5,
            ping_timeout: 15,
            subscriber_primary: true,
            ..Default::default()
        })),
    };
    let offer = SignalResponse {
        message: Some(signal_response::Message::Offer(SessionDescription {
            r#type: "offer".into(),
            sdp: sdp(30),
            id: 3,
            ..Default::default()
        })),
    };
    let update = SignalResponse {
        message: Some(signal_response::Message::Update(ParticipantUpdate {
            participants: vec![participant(3)],
        })),
    };
    let trickle = SignalRequest {
        message: Some(signal_request::Message::Trickle(TrickleRequest {
            candidate_init: r#"{"candidate":"candidate:1 1 udp 2130706431 192.168.1.10 50000 typ host","sdpMid":"0","sdpMLineIndex":0}"#.into(),
            target: 0,
            r#final: false,
        })),
    };
    let mut g = c.benchmark_group("signal");
    for (name, msg) in [
        ("join_10", &join),
        ("offer_30_mlines", &offer),
        ("participant_update", &update),
    ] {
        let bytes = msg.encode_to_vec();
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_function(format!("encode/{name}"), |b| {
            let mut buf = Vec::with_capacity(bytes.len());
            b.iter(|| {
                buf.clear();
                black_box(msg).encode(&mut buf).unwrap();
                black_box(buf.len())
            })
        });
        g.bench_function(format!("decode/{name}"), |b| {
            b.iter(|| black_box(SignalResponse::decode(black_box(bytes.as_slice())).unwrap()))
        });
    }
    let bytes = trickle.encode_to_vec();
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function("encode/trickle", |b| {
        b.iter(|| black_box(black_box(&trickle).encode_to_vec()))
    });
    g.bench_function("decode/trickle", |b| {
        b.iter(|| black_box(SignalRequest::decode(black_box(bytes.as_slice())).unwrap()))
    });
    g.finish();
}

criterion_group!(benches, signal);
criterion_main!(benches);
