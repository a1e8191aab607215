//! The gRPC face of the room API: a tonic `RoomServiceClient` over h2c against
//! the real `relais` binary, on the same port as HTTP/1.1 (Twirp and /rtc).
//! Every method is called; replies and status codes are checked.

use std::io::Read;
use std::net::{TcpListener, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use relais_auth::{AccessToken, VideoGrant};
use relais_proto::livekit::room_service_client::RoomServiceClient;
use relais_proto::livekit::{
    CreateRoomRequest, DeleteRoomRequest, ForwardParticipantRequest, ListParticipantsRequest,
    ListRoomsRequest, MoveParticipantRequest, MuteRoomTrackRequest, PerformRpcRequest,
    RoomParticipantIdentity, SendDataRequest, UpdateParticipantRequest, UpdateRoomMetadataRequest,
    UpdateSubscriptionsRequest,
};
use tonic::transport::Channel;
use tonic::{Code, Request};

const KEY: &str = "devkey";
const SECRET: &str = "secret";

struct Server {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut log = String::new();
        if let Some(out) = self.child.stdout.as_mut() {
            let _ = out.read_to_string(&mut log);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        if log.contains("panicked") && !std::thread::panicking() {
            panic!("relais panicked:\n{log}");
        }
    }
}

/// Free ports for HTTP, media over UDP and media over TCP.
fn free_ports() -> (u16, u16, u16) {
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let ice_tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    (
        tcp.local_addr().unwrap().port(),
        udp.local_addr().unwrap().port(),
        ice_tcp.local_addr().unwrap().port(),
    )
}

fn start() -> Server {
    let (port, udp, ice_tcp) = free_ports();
    let dir = std::env::temp_dir().join(format!("relais-grpc-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("relais.yaml");
    std::fs::write(
        &config,
        format!(
            "port: {port}\nbind_addresses: [\"127.0.0.1\"]\nrtc:\n  udp_port: {udp}\n  tcp_port: {ice_tcp}\n  node_ip: \"127.0.0.1\"\nkeys:\n  {KEY}: {SECRET}\nlogging:\n  level: info\n"
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_relais"))
        .arg("--config")
        .arg(&config)
        .env("NO_COLOR", "1")
        .env_remove("LIVEKIT_KEYS")
        .env_remove("LIVEKIT_CONFIG")
        .env_remove("LIVEKIT_CONFIG_FILE")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start relais");
    let server = Server { child, port, dir };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "relais did not listen within 20 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    server
}

fn token(grant: VideoGrant) -> String {
    AccessToken::new(KEY, SECRET)
        .with_grant(grant)
        .to_jwt()
        .unwrap()
}

fn create() -> String {
    token(VideoGrant {
        room_create: Some(true),
        ..Default::default()
    })
}

fn list() -> String {
    token(VideoGrant {
        room_list: Some(true),
        ..Default::default()
    })
}

fn admin(room: &str) -> String {
    token(VideoGrant {
        room_admin: Some(true),
        room: room.into(),
        ..Default::default()
    })
}

fn req<T>(message: T, jwt: &str) -> Request<T> {
    let mut r = Request::new(message);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {jwt}").parse().unwrap());
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_room_service_method_over_grpc() {
    let server = start();
    let channel = Channel::from_shared(format!("http://127.0.0.1:{}", server.port))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("h2c connection to relais");
    let mut c = RoomServiceClient::new(channel);
    let name = "grpc-room";

    // CreateRoom (twice: the existing room comes back unchanged).
    let room = c
        .create_room(req(
            CreateRoomRequest {
                name: name.into(),
                max_participants: 3,
                metadata: "m1".into(),
                empty_timeout: 90,
                ..Default::default()
            },
            &create(),
        ))
        .await
        .expect("CreateRoom")
        .into_inner();
    assert!(room.sid.starts_with("RM_"));
    assert_eq!(
        (
            room.max_participants,
            room.empty_timeout,
            room.metadata.as_str()
        ),
        (3, 90, "m1")
    );
    let again = c
        .create_room(req(
            CreateRoomRequest {
                name: name.into(),
                metadata: "other".into(),
                ..Default::default()
            },
            &create(),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (again.sid.as_str(), again.metadata.as_str()),
        (room.sid.as_str(), "m1")
    );

    // ListRooms, all and by name.
    let rooms = c
        .list_rooms(req(ListRoomsRequest { names: vec![] }, &list()))
        .await
        .unwrap()
        .into_inner()
        .rooms;
    assert!(rooms.iter().any(|r| r.sid == room.sid));
    let rooms = c
        .list_rooms(req(
            ListRoomsRequest {
                names: vec!["nope".into()],
            },
            &list(),
        ))
        .await
        .unwrap()
        .into_inner()
        .rooms;
    assert!(rooms.is_empty());

    // UpdateRoomMetadata, ListParticipants.
    let updated = c
        .update_room_metadata(req(
            UpdateRoomMetadataRequest {
                room: name.into(),
                metadata: "m2".into(),
            },
            &admin(name),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.metadata, "m2");
    let participants = c
        .list_participants(req(
            ListParticipantsRequest { room: name.into() },
            &admin(name),
        ))
        .await
        .unwrap()
        .into_inner()
        .participants;
    assert!(participants.is_empty());

    // SendData to the (empty) room succeeds; a bad nonce does not.
    c.send_data(req(
        SendDataRequest {
            room: name.into(),
            data: b"hi".to_vec(),
            nonce: vec![0; 16],
            ..Default::default()
        },
        &admin(name),
    ))
    .await
    .expect("SendData");
    let status = c
        .send_data(req(
            SendDataRequest {
                room: name.into(),
                data: b"hi".to_vec(),
                nonce: vec![0; 3],
                ..Default::default()
            },
            &admin(name),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // Participant methods on someone who is not there.
    let who = RoomParticipantIdentity {
        room: name.into(),
        identity: "nobody".into(),
        ..Default::default()
    };
    let status = c
        .get_participant(req(who.clone(), &admin(name)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), "participant does not exist");
    let status = c
        .remove_participant(req(who.clone(), &admin(name)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = c
        .update_participant(req(
            UpdateParticipantRequest {
                room: name.into(),
                identity: "nobody".into(),
                metadata: "x".into(),
                ..Default::default()
            },
            &admin(name),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = c
        .update_subscriptions(req(
            UpdateSubscriptionsRequest {
                room: name.into(),
                identity: "nobody".into(),
                track_sids: vec!["TR_x".into()],
                subscribe: true,
                ..Default::default()
            },
            &admin(name),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let mute = |muted| MuteRoomTrackRequest {
        room: name.into(),
        identity: "nobody".into(),
        track_sid: "TR_x".into(),
        muted,
    };
    let status = c
        .mute_published_track(req(mute(true), &admin(name)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = c
        .mute_published_track(req(mute(false), &admin(name)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    let status = c
        .perform_rpc(req(
            PerformRpcRequest {
                room: name.into(),
                destination_identity: "nobody".into(),
                method: "m".into(),
                ..Default::default()
            },
            &admin(name),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    // Cloud-only methods.
    let status = c
        .forward_participant(req(
            ForwardParticipantRequest {
                room: name.into(),
                identity: "a".into(),
                destination_room: "b".into(),
            },
            &admin(name),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    let status = c
        .move_participant(req(
            MoveParticipantRequest {
                room: name.into(),
                identity: "a".into(),
                destination_room: "b".into(),
            },
            &admin(name),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);

    // Authentication and grants.
    let status = c
        .list_rooms(Request::new(ListRoomsRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = c
        .list_rooms(req(ListRoomsRequest::default(), "not.a.jwt"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = c
        .list_rooms(req(ListRoomsRequest::default(), &create()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = c
        .list_participants(req(
            ListParticipantsRequest { room: name.into() },
            &admin("another-room"),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    // DeleteRoom, then it is gone.
    c.delete_room(req(DeleteRoomRequest { room: name.into() }, &create()))
        .await
        .expect("DeleteRoom");
    let status = c
        .delete_room(req(DeleteRoomRequest { room: name.into() }, &create()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), "requested room does not exist");

    // HTTP/1.1 still works on the same port.
    let health = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
        use std::io::Write;
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        (out, server)
    })
    .await
    .unwrap();
    assert!(health.0.starts_with("HTTP/1.1 200"), "{}", health.0);
}
