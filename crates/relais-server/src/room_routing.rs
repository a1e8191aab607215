//! RoomService calls act on the whole cluster, through either face.
//!
//! An axum middleware in front of both faces of the room API — Twirp
//! (`/twirp/livekit.RoomService/<Method>`, protobuf or JSON) and gRPC
//! (`/livekit.RoomService/<Method>`, h2c) — decides where a call runs:
//!
//! * `ListRooms` is asked of every live node (Twirp, protobuf) and merged.
//! * A call on one room runs on the room's owner: Twirp calls are forwarded
//!   with the same body; a gRPC call's message is forwarded as a Twirp
//!   protobuf call (the message is the same bytes), and the owner's answer is
//!   turned back into a gRPC reply (status and message in trailers).
//! * Anything else — single node, a forwarded call, an unauthenticated caller,
//!   a room nobody hosts — runs here unchanged, so the service itself gives
//!   every error its proper code.
//!
//! The owner checks the caller's token again: forwarding adds no authority.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{to_bytes, Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use prost::Message as _;
use relais_cluster::{ClusterError, NodeInfo, Placement};
use relais_control::room_service::grpc_code_for;
use relais_proto::livekit::{ListRoomsRequest, ListRoomsResponse, Room};
use tracing::{debug, warn};

use crate::cluster::{Cluster, FORWARDED_BY};

/// Largest RoomService body routed (the service's own limit, plus the gRPC
/// frame header).
const MAX_ROUTED_BODY: usize = relais_control::room_service::MAX_REQUEST_BYTES + GRPC_HEADER;
/// Time for a forwarded RoomService call (PerformRpc may wait up to 60 s).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(75);
/// Time for one node's part of a fanned-out ListRooms.
const FANOUT_TIMEOUT: Duration = Duration::from_secs(5);
/// A gRPC message is prefixed by a compression flag and a 4-byte length.
const GRPC_HEADER: usize = 5;

const TWIRP_PREFIX: &str = "/twirp/livekit.RoomService/";
const GRPC_PREFIX: &str = "/livekit.RoomService/";

/// Which face a call came in through.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Face {
    Twirp { json: bool },
    Grpc,
}

/// Field 1 of every room-scoped RoomService request is the room name
/// (`room`, or `name` for CreateRoom).
#[derive(Clone, PartialEq, prost::Message)]
struct RoomField {
    #[prost(string, tag = "1")]
    room: String,
}

/// A RoomService answer as Twirp gives it: status, content type, body.
struct TwirpReply {
    status: StatusCode,
    content_type: Option<HeaderValue>,
    body: Bytes,
}

impl TwirpReply {
    fn protobuf(message: &impl prost::Message) -> Self {
        TwirpReply {
            status: StatusCode::OK,
            content_type: Some(HeaderValue::from_static("application/protobuf")),
            body: message.encode_to_vec().into(),
        }
    }

    fn error(status: StatusCode, code: &str, msg: &str) -> Self {
        TwirpReply {
            status,
            content_type: Some(HeaderValue::from_static("application/json")),
            body: serde_json::json!({"code": code, "msg": msg})
                .to_string()
                .into(),
        }
    }

    fn unavailable(msg: &str) -> Self {
        Self::error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", msg)
    }

    /// As an HTTP response of the Twirp face.
    fn into_twirp(self) -> Response {
        let mut response = (self.status, self.body).into_response();
        if let Some(ct) = self.content_type {
            response.headers_mut().insert(header::CONTENT_TYPE, ct);
        }
        response
    }

    /// As a gRPC reply: a 200 answer's protobuf body becomes the one response
    /// message followed by `grpc-status: 0`; a Twirp error becomes the gRPC
    /// status of the same code (trailers-only).
    fn into_grpc(self) -> Response {
        if self.status != StatusCode::OK {
            let (code, msg) = serde_json::from_slice::<serde_json::Value>(&self.body)
                .ok()
                .map(|v| {
                    let text = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
                    (text("code"), text("msg"))
                })
                .unwrap_or_default();
            let code = code.unwrap_or_else(|| "internal".to_string());
            let status = tonic::Status::new(grpc_code_for(&code), msg.unwrap_or(code));
            return status.into_http::<Body>();
        }
        let mut framed = Vec::with_capacity(GRPC_HEADER + self.body.len());
        framed.push(0);
        framed.extend_from_slice(&(self.body.len() as u32).to_be_bytes());
        framed.extend_from_slice(&self.body);
        let mut trailers = HeaderMap::new();
        if let Err(e) = tonic::Status::new(tonic::Code::Ok, "").add_header(&mut trailers) {
            return e.into_http::<Body>();
        }
        let frames = [
            Ok::<_, Infallible>(Frame::data(Bytes::from(framed))),
            Ok(Frame::trailers(trailers)),
        ];
        let body = Body::new(StreamBody::new(futures_util::stream::iter(frames)));
        let mut response = Response::new(body);
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        response
    }

    fn into_response(self, face: Face) -> Response {
        match face {
            Face::Twirp { .. } => self.into_twirp(),
            Face::Grpc => self.into_grpc(),
        }
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"))
}

/// The face and method of a RoomService path.
fn face_of(path: &str, headers: &HeaderMap) -> Option<(Face, String)> {
    if let Some(method) = path.strip_prefix(TWIRP_PREFIX) {
        let json = is_json(headers);
        return Some((Face::Twirp { json }, method.to_string()));
    }
    path.strip_prefix(GRPC_PREFIX)
        .map(|method| (Face::Grpc, method.to_string()))
}

/// The protobuf message inside one uncompressed gRPC frame.
fn grpc_message(body: &Bytes) -> Option<Bytes> {
    let header = body.get(..GRPC_HEADER)?;
    if header[0] != 0 {
        return None; // compressed: let tonic answer it
    }
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    (body.len() == GRPC_HEADER + len).then(|| body.slice(GRPC_HEADER..))
}

fn room_of(method: &str, json: bool, body: &[u8]) -> Option<String> {
    let room = if json {
        let v: serde_json::Value = serde_json::from_slice(body).ok()?;
        let key = if method == "CreateRoom" {
            "name"
        } else {
            "room"
        };
        v.get(key)?.as_str()?.to_string()
    } else {
        RoomField::decode(body).ok()?.room
    };
    (!room.is_empty()).then_some(room)
}

/// The caller's bearer token verifies (only such callers make this node talk
/// to others; the service itself answers everyone else).
fn is_authorized(cluster: &Cluster, headers: &HeaderMap) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.get(7..)
                .filter(|_| v[..7].eq_ignore_ascii_case("bearer "))
        })
        .is_some_and(|token| cluster.verifier.verify(token.trim()).is_ok())
}

/// Axum middleware: RoomService calls (Twirp and gRPC) act on the whole
/// cluster. Calls that are not for another node run here unchanged.
pub async fn route_room_service(
    State(cluster): State<Arc<Cluster>>,
    request: Request,
    next: Next,
) -> Response {
    let Some((face, method)) = face_of(request.uri().path(), request.headers()) else {
        return next.run(request).await;
    };
    // A single node only places the rooms it is asked to create: a node at
    // its limits creates none.
    let clustered = cluster.coordinator.is_clustered();
    if (!clustered && method != "CreateRoom")
        || request.headers().contains_key(FORWARDED_BY)
        || !is_authorized(&cluster, request.headers())
    {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let body = match to_bytes(body, MAX_ROUTED_BODY).await {
        Ok(b) => b,
        Err(_) => return next.run(Request::from_parts(parts, Body::empty())).await,
    };
    // What is forwarded: a Twirp body as it came, a gRPC call's message as a
    // Twirp protobuf body.
    let (message, json) = match face {
        Face::Twirp { json } => (body.clone(), json),
        Face::Grpc => match grpc_message(&body) {
            Some(message) => (message, false),
            None => return next.run(Request::from_parts(parts, Body::from(body))).await,
        },
    };
    if method == "ListRooms" {
        return list_rooms_everywhere(&cluster, &parts.headers, json, &message)
            .await
            .into_response(face);
    }
    let Some(room) = room_of(&method, json, &message) else {
        return next.run(Request::from_parts(parts, Body::from(body))).await;
    };
    let owner = if method == "CreateRoom" {
        match cluster.coordinator.place(&room, false).await {
            Ok(Placement::Remote(node)) => Some(*node),
            Ok(Placement::Local) => None,
            Err(e @ (ClusterError::LimitReached(_) | ClusterError::NoNodeAvailable)) => {
                debug!(%room, error = %e, "CreateRoom refused");
                return TwirpReply::unavailable(&e.to_string()).into_response(face);
            }
            Err(e) => {
                warn!(%room, error = %e, "CreateRoom: no placement; creating here");
                None
            }
        }
    } else {
        match cluster.coordinator.locate(&room).await {
            Ok(owner) => owner,
            Err(e) => {
                debug!(%room, error = %e, "RoomService: owner unknown; answering here");
                None
            }
        }
    };
    match owner {
        Some(node) if node.id != cluster.coordinator.node_id() => {
            debug!(%room, %method, ?face, node = %node.id, "forwarding RoomService call to the room's node");
            let content_type = match face {
                Face::Twirp { .. } => parts.headers.get(header::CONTENT_TYPE).cloned(),
                Face::Grpc => Some(HeaderValue::from_static("application/protobuf")),
            };
            let path = format!("{TWIRP_PREFIX}{method}");
            let reply = post(
                &cluster,
                &node,
                &path,
                &parts.headers,
                content_type,
                message,
                FORWARD_TIMEOUT,
            )
            .await
            .unwrap_or_else(|e| {
                warn!(node = %node.id, error = %e, "forwarding a RoomService call failed");
                TwirpReply::unavailable("the node hosting this room is unreachable")
            });
            reply.into_response(face)
        }
        _ => next.run(Request::from_parts(parts, Body::from(body))).await,
    }
}

/// POST a Twirp call to `node`, as the caller (same `Authorization`).
async fn post(
    cluster: &Cluster,
    node: &NodeInfo,
    path: &str,
    headers: &HeaderMap,
    content_type: Option<HeaderValue>,
    body: Bytes,
    timeout: Duration,
) -> Result<TwirpReply, String> {
    let uri = format!("http://{}{}", node.http_address, path);
    let mut builder = hyper::Request::post(uri);
    if let Some(auth) = headers.get(header::AUTHORIZATION) {
        builder = builder.header(header::AUTHORIZATION, auth);
    }
    if let Some(ct) = content_type {
        builder = builder.header(header::CONTENT_TYPE, ct);
    }
    builder = builder.header(FORWARDED_BY, cluster.coordinator.node_id());
    let request = builder.body(Full::new(body)).map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(timeout, cluster.client.request(request))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
    let body = tokio::time::timeout(timeout, response.into_body().collect())
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(TwirpReply {
        status,
        content_type,
        body,
    })
}

/// ListRooms on every live node, merged. A node that does not answer is left
/// out (and logged); an error from a node (e.g. 401) is returned as is.
async fn list_rooms_everywhere(
    cluster: &Cluster,
    headers: &HeaderMap,
    json: bool,
    body: &[u8],
) -> TwirpReply {
    let request = if json {
        serde_json::from_slice::<ListRoomsRequest>(body).ok()
    } else {
        ListRoomsRequest::decode(body).ok()
    };
    let Some(request) = request else {
        return TwirpReply::error(
            StatusCode::BAD_REQUEST,
            "malformed",
            "the body is not a ListRoomsRequest",
        );
    };
    let nodes = cluster.coordinator.nodes().await.unwrap_or_default();
    let encoded = Bytes::from(request.encode_to_vec());
    let path = format!("{TWIRP_PREFIX}ListRooms");
    let calls = nodes.iter().map(|node| {
        let encoded = encoded.clone();
        let path = &path;
        async move {
            let proto = HeaderValue::from_static("application/protobuf");
            let result = post(
                cluster,
                node,
                path,
                headers,
                Some(proto),
                encoded,
                FANOUT_TIMEOUT,
            )
            .await;
            (node, result)
        }
    });
    let mut rooms: Vec<Room> = Vec::new();
    for (node, result) in futures_util::future::join_all(calls).await {
        match result {
            Ok(reply) if reply.status == StatusCode::OK => {
                match ListRoomsResponse::decode(reply.body) {
                    Ok(part) => {
                        for room in part.rooms {
                            if rooms.iter().any(|r| r.name == room.name) {
                                warn!(room = %room.name, node = %node.id, "room listed by two nodes");
                            } else {
                                rooms.push(room);
                            }
                        }
                    }
                    Err(e) => warn!(node = %node.id, error = %e, "ListRooms: bad answer"),
                }
            }
            Ok(error) => return error,
            Err(e) => {
                warn!(node = %node.id, error = %e, "ListRooms: node did not answer; left out")
            }
        }
    }
    rooms.sort_by(|a, b| a.name.cmp(&b.name));
    let response = ListRoomsResponse { rooms };
    if !json {
        return TwirpReply::protobuf(&response);
    }
    match serde_json::to_vec(&response) {
        Ok(body) => TwirpReply {
            status: StatusCode::OK,
            content_type: Some(HeaderValue::from_static("application/json")),
            body: body.into(),
        },
        Err(_) => TwirpReply::unavailable("cannot encode the answer"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relais_proto::livekit::{CreateRoomRequest, RoomParticipantIdentity};

    #[test]
    fn finds_the_room_in_protobuf_and_json_bodies() {
        let pb = RoomParticipantIdentity {
            room: "r1".into(),
            identity: "alice".into(),
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(
            room_of("RemoveParticipant", false, &pb).as_deref(),
            Some("r1")
        );
        let pb = CreateRoomRequest {
            name: "r2".into(),
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(room_of("CreateRoom", false, &pb).as_deref(), Some("r2"));
        assert_eq!(
            room_of("SendData", true, br#"{"room":"r3","data":"AA=="}"#).as_deref(),
            Some("r3")
        );
        assert_eq!(
            room_of("CreateRoom", true, br#"{"name":"r4"}"#).as_deref(),
            Some("r4")
        );
        assert_eq!(room_of("SendData", true, b"not json"), None);
        assert_eq!(room_of("SendData", false, b"\xff\xff"), None);
        assert_eq!(room_of("SendData", true, br#"{"room":""}"#), None);
    }

    #[test]
    fn unframes_one_uncompressed_grpc_message() {
        let message = RoomParticipantIdentity {
            room: "r1".into(),
            identity: "bob".into(),
            ..Default::default()
        }
        .encode_to_vec();
        let mut framed = vec![0];
        framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
        framed.extend_from_slice(&message);
        let got = grpc_message(&Bytes::from(framed.clone())).unwrap();
        assert_eq!(&got[..], &message[..]);
        // Compressed, truncated or trailing bytes: not routed (tonic answers).
        framed[0] = 1;
        assert!(grpc_message(&Bytes::from(framed.clone())).is_none());
        framed[0] = 0;
        assert!(grpc_message(&Bytes::from(framed[..framed.len() - 1].to_vec())).is_none());
        framed.push(0);
        assert!(grpc_message(&Bytes::from(framed)).is_none());
        assert!(grpc_message(&Bytes::from_static(b"\0\0")).is_none());
    }

    #[tokio::test]
    async fn twirp_errors_become_grpc_statuses() {
        let reply = TwirpReply::error(StatusCode::NOT_FOUND, "not_found", "no such room");
        let response = reply.into_grpc();
        assert_eq!(response.status(), StatusCode::OK);
        let h = response.headers();
        assert_eq!(h.get("grpc-status").unwrap(), "5");
        assert_eq!(h.get("grpc-message").unwrap(), "no%20such%20room");

        let room = Room {
            name: "r".into(),
            ..Default::default()
        };
        let response = TwirpReply::protobuf(&room).into_grpc();
        assert_eq!(
            response.headers().get(header::CONTENT_TYPE).unwrap(),
            "application/grpc"
        );
        let collected = response.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap();
        assert_eq!(trailers.get("grpc-status").unwrap(), "0");
        let body = collected.to_bytes();
        assert_eq!(Room::decode(grpc_message(&body).unwrap()).unwrap(), room);
    }
}
