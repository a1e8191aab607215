//! The room API over an in-memory backend: grants, validation, Twirp routing,
//! encodings and error bodies.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use http_body_util::BodyExt;
use prost::Message;
use relais_auth::{AccessToken, KeyProvider, TokenVerifier, VideoGrant};
use relais_proto::livekit::{
    CreateRoomRequest, ListRoomsResponse, MuteRoomTrackRequest, ParticipantInfo, PerformRpcRequest,
    Room, SendDataRequest, TrackInfo, UpdateParticipantRequest, UpdateSubscriptionsRequest,
};
use tower::ServiceExt;

use super::*;

#[derive(Default)]
struct Mem {
    rooms: Mutex<BTreeMap<String, Room>>,
    sent: Mutex<Vec<SendDataRequest>>,
}

impl RoomBackend for Mem {
    async fn create_room(&self, req: CreateRoomRequest) -> Result<Room, ApiError> {
        let mut rooms = self.rooms.lock().unwrap();
        Ok(rooms
            .entry(req.name.clone())
            .or_insert_with(|| Room {
                sid: "RM_test".into(),
                name: req.name,
                metadata: req.metadata,
                max_participants: req.max_participants,
                ..Default::default()
            })
            .clone())
    }
    async fn list_rooms(&self, names: Vec<String>) -> Result<Vec<Room>, ApiError> {
        let rooms = self.rooms.lock().unwrap();
        Ok(rooms
            .values()
            .filter(|r| names.is_empty() || names.contains(&r.name))
            .cloned()
            .collect())
    }
    async fn delete_room(&self, room: String) -> Result<(), ApiError> {
        self.rooms
            .lock()
            .unwrap()
            .remove(&room)
            .map(|_| ())
            .ok_or_else(ApiError::room_not_found)
    }
    async fn list_participants(&self, room: String) -> Result<Vec<ParticipantInfo>, ApiError> {
        self.rooms
            .lock()
            .unwrap()
            .get(&room)
            .map(|_| Vec::new())
            .ok_or_else(ApiError::room_not_found)
    }
    async fn get_participant(&self, _: String, _: String) -> Result<ParticipantInfo, ApiError> {
        Err(ApiError::participant_not_found())
    }
    async fn remove_participant(&self, _: String, _: String) -> Result<(), ApiError> {
        Err(ApiError::participant_not_found())
    }
    async fn mute_published_track(&self, req: MuteRoomTrackRequest) -> Result<TrackInfo, ApiError> {
        Ok(TrackInfo {
            sid: req.track_sid,
            muted: req.muted,
            ..Default::default()
        })
    }
    async fn update_participant(
        &self,
        _: UpdateParticipantRequest,
    ) -> Result<ParticipantInfo, ApiError> {
        Err(ApiError::participant_not_found())
    }
    async fn update_subscriptions(&self, _: UpdateSubscriptionsRequest) -> Result<(), ApiError> {
        Ok(())
    }
    async fn send_data(&self, req: SendDataRequest) -> Result<(), ApiError> {
        self.sent.lock().unwrap().push(req);
        Ok(())
    }
    async fn update_room_metadata(&self, room: String, metadata: String) -> Result<Room, ApiError> {
        let mut rooms = self.rooms.lock().unwrap();
        let r = rooms.get_mut(&room).ok_or_else(ApiError::room_not_found)?;
        r.metadata = metadata;
        Ok(r.clone())
    }
    async fn perform_rpc(&self, req: PerformRpcRequest) -> Result<String, ApiError> {
        Ok(format!(
            "{}:{}:{}",
            req.method, req.payload, req.response_timeout_ms
        ))
    }
}

const KEY: &str = "devkey";
const SECRET: &str = "secret";

fn service(options: ServiceOptions) -> Arc<RoomService<Mem>> {
    let keys = KeyProvider::from_map([(KEY, SECRET)]).unwrap();
    Arc::new(RoomService::new(
        TokenVerifier::new(keys),
        Mem::default(),
        options,
    ))
}

fn bearer(grant: VideoGrant) -> String {
    let jwt = AccessToken::new(KEY, SECRET)
        .with_grant(grant)
        .to_jwt()
        .unwrap();
    format!("Bearer {jwt}")
}

fn admin(room: &str) -> String {
    bearer(VideoGrant {
        room_admin: Some(true),
        room: room.into(),
        ..Default::default()
    })
}

fn create() -> String {
    bearer(VideoGrant {
        room_create: Some(true),
        ..Default::default()
    })
}

#[tokio::test]
async fn grants_are_checked_per_method() {
    let s = service(ServiceOptions::default());
    let req = CreateRoomRequest {
        name: "r1".into(),
        ..Default::default()
    };
    let err = s.create_room(None, req.clone()).await.unwrap_err();
    assert_eq!(err.twirp_code(), "unauthenticated");
    let err = s
        .create_room(Some("Bearer not.a.jwt"), req.clone())
        .await
        .unwrap_err();
    assert_eq!(err.twirp_code(), "unauthenticated");
    let err = s
        .create_room(Some(&admin("r1")), req.clone())
        .await
        .unwrap_err();
    assert_eq!(err.twirp_code(), "permission_denied");
    assert_eq!(err.http_status(), 403);
    let room = s.create_room(Some(&create()), req).await.unwrap();
    assert_eq!(room.name, "r1");

    // roomAdmin must name the request's room.
    let meta = UpdateRoomMetadataRequest {
        room: "r1".into(),
        metadata: "m".into(),
    };
    let err = s
        .update_room_metadata(Some(&admin("other")), meta.clone())
        .await
        .unwrap_err();
    assert_eq!(err.twirp_code(), "permission_denied");
    let room = s
        .update_room_metadata(Some(&admin("r1")), meta)
        .await
        .unwrap();
    assert_eq!(room.metadata, "m");

    // ListRooms needs roomList, not roomCreate.
    let err = s
        .list_rooms(Some(&create()), ListRoomsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.twirp_code(), "permission_denied");
}

#[tokio::test]
async fn validation() {
    let s = service(ServiceOptions::default());
    let send = |nonce: Vec<u8>| SendDataRequest {
        room: "r".into(),
        data: b"x".to_vec(),
        nonce,
        ..Default::default()
    };
    let err = s
        .send_data(Some(&admin("r")), send(vec![1, 2, 3]))
        .await
        .unwrap_err();
    assert_eq!(err.twirp_code(), "invalid_argument");
    s.send_data(Some(&admin("r")), send(vec![7; 16]))
        .await
        .unwrap();
    s.send_data(Some(&admin("r")), send(vec![])).await.unwrap();

    let unmute = MuteRoomTrackRequest {
        room: "r".into(),
        identity: "a".into(),
        track_sid: "TR_x".into(),
        muted: false,
    };
    let err = s
        .mute_published_track(Some(&admin("r")), unmute.clone())
        .await
        .unwrap_err();
    assert_eq!(err.twirp_code(), "failed_precondition");
    let allowed = service(ServiceOptions {
        allow_remote_unmute: true,
        ..ServiceOptions::default()
    });
    let track = allowed
        .mute_published_track(Some(&admin("r")), unmute)
        .await
        .unwrap();
    assert!(!track.track.unwrap().muted);

    let rpc = s
        .perform_rpc(
            Some(&admin("r")),
            PerformRpcRequest {
                room: "r".into(),
                destination_identity: "a".into(),
                method: "m".into(),
                payload: "p".into(),
                response_timeout_ms: 0,
            },
        )
        .await
        .unwrap();
    assert_eq!(rpc.payload, "m:p:10000");

    let err = s
        .forward_participant(
            Some(&admin("r")),
            ForwardParticipantRequest {
                room: "r".into(),
                identity: "a".into(),
                destination_room: "b".into(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.twirp_code(), "unimplemented");
    let err = s
        .delete_room(
            Some(&create()),
            DeleteRoomRequest {
                room: "nope".into(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "requested room does not exist");
}

#[tokio::test]
async fn names_metadata_and_attributes_within_the_configured_limits() {
    let s = service(ServiceOptions {
        limits: FieldLimits {
            max_metadata_size: 8,
            max_attributes_size: 6,
            max_room_name_length: 4,
            max_participant_identity_length: 3,
            max_participant_name_length: 5,
        },
        ..ServiceOptions::default()
    });
    let refused = |e: ApiError| (e.twirp_code(), e.to_string());
    let create_req = |name: &str, metadata: &str| CreateRoomRequest {
        name: name.into(),
        metadata: metadata.into(),
        ..Default::default()
    };
    let err = s
        .create_room(Some(&create()), create_req("roomy", ""))
        .await
        .unwrap_err();
    assert_eq!(
        refused(err),
        ("invalid_argument", "room name length exceeds limits".into())
    );
    let err = s
        .create_room(Some(&create()), create_req("room", "123456789"))
        .await
        .unwrap_err();
    assert_eq!(
        refused(err),
        ("invalid_argument", "metadata size exceeds limits".into())
    );
    s.create_room(Some(&create()), create_req("room", "12345678"))
        .await
        .unwrap();

    let update =
        |identity: &str, name: &str, attributes: &[(&str, &str)]| UpdateParticipantRequest {
            room: "room".into(),
            identity: identity.into(),
            name: name.into(),
            attributes: attributes
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
    for (req, want) in [
        (update("abcd", "", &[]), "identity length exceeds limits"),
        (update("abc", "sixsix", &[]), "name length exceeds limits"),
        (
            update("abc", "", &[("key", "four")]),
            "attributes size exceeds limits",
        ),
    ] {
        let err = s
            .update_participant(Some(&admin("room")), req)
            .await
            .unwrap_err();
        assert_eq!(refused(err), ("invalid_argument", want.into()));
    }
    let err = s
        .update_room_metadata(
            Some(&admin("room")),
            UpdateRoomMetadataRequest {
                room: "room".into(),
                metadata: "123456789".into(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(
        refused(err),
        ("invalid_argument", "metadata size exceeds limits".into())
    );
}

async fn call(
    router: axum::Router,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    auth: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, Option<String>, Vec<u8>) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(ct) = content_type {
        req = req.header(header::CONTENT_TYPE, ct);
    }
    if let Some(a) = auth {
        req = req.header(header::AUTHORIZATION, a);
    }
    let response = router
        .oneshot(req.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let ct = response
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_string());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, ct, body.to_vec())
}

fn error_code(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert!(v["msg"].is_string());
    assert!(v["meta"].is_object());
    v["code"].as_str().unwrap().to_string()
}

/// HTTP method, path, content type, authorization, body, expected status and Twirp code.
type Case<'a> = (
    &'a str,
    String,
    Option<&'a str>,
    Option<&'a str>,
    Vec<u8>,
    u16,
    &'a str,
);

#[tokio::test]
async fn twirp_routing_encodings_and_errors() {
    let s = service(ServiceOptions::default());
    let r = || twirp::router(s.clone());
    let base = "/twirp/livekit.RoomService/";
    let json = Some("application/json; charset=UTF-8");
    let cr = create();

    // JSON, lowerCamel in, unknown fields ignored; JSON out.
    let (status, ct, body) = call(
        r(),
        "POST",
        &format!("{base}CreateRoom"),
        json,
        Some(&cr),
        br#"{"name":"j1","maxParticipants":3,"someFutureField":1}"#.to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(ct.as_deref(), Some("application/json"));
    let room: Room = serde_json::from_slice(&body).unwrap();
    assert_eq!((room.name.as_str(), room.max_participants), ("j1", 3));

    // snake_case in.
    let (status, _, body) = call(
        r(),
        "POST",
        &format!("{base}CreateRoom"),
        json,
        Some(&cr),
        br#"{"name":"j2","max_participants":4}"#.to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let room: Room = serde_json::from_slice(&body).unwrap();
    assert_eq!(room.max_participants, 4);

    // Protobuf in and out.
    let list = bearer(VideoGrant {
        room_list: Some(true),
        ..Default::default()
    });
    let (status, ct, body) = call(
        r(),
        "POST",
        &format!("{base}ListRooms"),
        Some("application/protobuf"),
        Some(&list),
        ListRoomsRequest {
            names: vec!["j2".into()],
        }
        .encode_to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ct.as_deref(), Some("application/protobuf"));
    let rooms = ListRoomsResponse::decode(&body[..]).unwrap();
    assert_eq!(rooms.rooms.len(), 1);
    assert_eq!(rooms.rooms[0].name, "j2");

    let cases: Vec<Case<'_>> = vec![
        (
            "POST",
            format!("{base}NoSuchMethod"),
            json,
            Some(&cr),
            b"{}".to_vec(),
            404,
            "bad_route",
        ),
        (
            "POST",
            "/twirp/livekit.Other/X".into(),
            json,
            Some(&cr),
            b"{}".to_vec(),
            404,
            "bad_route",
        ),
        (
            "GET",
            format!("{base}ListRooms"),
            json,
            Some(&list),
            vec![],
            404,
            "bad_route",
        ),
        (
            "POST",
            format!("{base}ListRooms"),
            Some("text/plain"),
            Some(&list),
            b"{}".to_vec(),
            404,
            "bad_route",
        ),
        (
            "POST",
            format!("{base}ListRooms"),
            None,
            Some(&list),
            b"{}".to_vec(),
            404,
            "bad_route",
        ),
        (
            "POST",
            format!("{base}ListRooms"),
            json,
            Some(&list),
            b"{not json".to_vec(),
            400,
            "malformed",
        ),
        (
            "POST",
            format!("{base}ListRooms"),
            Some("application/protobuf"),
            Some(&list),
            vec![0xff, 0xff, 0xff],
            400,
            "malformed",
        ),
        (
            "POST",
            format!("{base}ListRooms"),
            json,
            None,
            b"{}".to_vec(),
            401,
            "unauthenticated",
        ),
        (
            "POST",
            format!("{base}ListRooms"),
            json,
            Some("Bearer garbage"),
            b"{}".to_vec(),
            401,
            "unauthenticated",
        ),
        (
            "POST",
            format!("{base}ListRooms"),
            json,
            Some(&cr),
            b"{}".to_vec(),
            403,
            "permission_denied",
        ),
        (
            "POST",
            format!("{base}DeleteRoom"),
            json,
            Some(&cr),
            br#"{"room":"missing"}"#.to_vec(),
            404,
            "not_found",
        ),
        (
            "POST",
            format!("{base}ListRooms"),
            json,
            Some(&list),
            vec![b' '; MAX_REQUEST_BYTES + 1],
            413,
            "resource_exhausted",
        ),
    ];
    for (method, path, ct, auth, body, want_status, want_code) in cases {
        let (status, got_ct, got) = call(r(), method, &path, ct, auth, body).await;
        assert_eq!(
            status.as_u16(),
            want_status,
            "{method} {path} {ct:?}: {}",
            String::from_utf8_lossy(&got)
        );
        assert_eq!(
            got_ct.as_deref(),
            Some("application/json"),
            "{method} {path}"
        );
        assert_eq!(error_code(&got), want_code, "{method} {path} {ct:?}");
    }
}
