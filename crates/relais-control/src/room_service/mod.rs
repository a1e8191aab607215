//! LiveKit's `RoomService`, implemented once and served twice.
//!
//! [`RoomService`] authenticates the caller (`Authorization: Bearer <jwt>`),
//! checks the grant each method needs, validates the request and hands it to a
//! [`RoomBackend`]. Two thin faces call it:
//!
//! * [`twirp`]: `POST /twirp/livekit.RoomService/<Method>` with protobuf or
//!   proto3-JSON bodies, Twirp JSON errors — what LiveKit's server SDKs speak;
//! * [`grpc`]: the tonic `livekit.RoomService` gRPC service.
//!
//! [`router`] mounts both on one axum [`axum::Router`] for the main port.
//!
//! Grants (LiveKit's): `CreateRoom` and `DeleteRoom` need `roomCreate`,
//! `ListRooms` needs `roomList`, everything else `roomAdmin` with `video.room`
//! equal to the request's room. A token that does not cover the call gets
//! `permission_denied` (HTTP 403).

mod backend;
mod error;
pub mod grpc;
pub mod twirp;

use std::sync::Arc;

pub use backend::RoomBackend;
pub use error::{grpc_code_for, rpc_codes, twirp_status, ApiError};

use relais_auth::{Claims, TokenVerifier};
use relais_proto::limits::{FieldLimits, LimitExceeded};
use relais_proto::livekit::{
    data_packet, CreateRoomRequest, DeleteRoomRequest, DeleteRoomResponse,
    ForwardParticipantRequest, ForwardParticipantResponse, ListParticipantsRequest,
    ListParticipantsResponse, ListRoomsRequest, ListRoomsResponse, MoveParticipantRequest,
    MoveParticipantResponse, MuteRoomTrackRequest, MuteRoomTrackResponse, ParticipantInfo,
    PerformRpcRequest, PerformRpcResponse, RemoveParticipantResponse, Room,
    RoomParticipantIdentity, SendDataRequest, SendDataResponse, UpdateParticipantRequest,
    UpdateRoomMetadataRequest, UpdateSubscriptionsRequest, UpdateSubscriptionsResponse,
};
use tracing::debug;

/// Largest request body either face accepts.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;
/// RPC payloads are limited to 15 KiB, as in LiveKit.
pub const MAX_RPC_PAYLOAD: usize = 15 * 1024;
/// `response_timeout_ms` when the request leaves it at 0.
pub const DEFAULT_RPC_TIMEOUT_MS: u32 = 10_000;
/// Upper bound on `response_timeout_ms`.
pub const MAX_RPC_TIMEOUT_MS: u32 = 60_000;

/// Behaviour switches of the room API.
#[derive(Debug, Clone, Default)]
pub struct ServiceOptions {
    /// Allow `MutePublishedTrack` with `muted = false` (LiveKit's
    /// `room.enable_remote_unmute`). Off by default: a remote unmute is then
    /// `failed_precondition`.
    pub allow_remote_unmute: bool,
    /// Lengths and sizes of names, metadata and attributes (LiveKit's `limit:`).
    pub limits: FieldLimits,
}

/// The grant a method needs.
enum Need<'a> {
    Create,
    List,
    Admin(&'a str),
}

/// LiveKit's RoomService over a [`RoomBackend`]. Cheap to share behind an `Arc`.
pub struct RoomService<B> {
    verifier: TokenVerifier,
    backend: B,
    options: ServiceOptions,
}

impl<B: RoomBackend> RoomService<B> {
    /// A service verifying tokens with `verifier` and applying calls to `backend`.
    pub fn new(verifier: TokenVerifier, backend: B, options: ServiceOptions) -> Self {
        RoomService {
            verifier,
            backend,
            options,
        }
    }

    /// A room name is given and within `limit.max_room_name_length`.
    fn check_room_name(&self, room: &str) -> Result<(), ApiError> {
        if room.is_empty() {
            return Err(ApiError::InvalidArgument("room name is required".into()));
        }
        self.options.limits.check_room_name(room).map_err(exceeded)
    }

    /// An identity is given and within `limit.max_participant_identity_length`.
    fn check_identity(&self, what: &str, identity: &str) -> Result<(), ApiError> {
        if identity.is_empty() {
            return Err(ApiError::InvalidArgument(format!("{what} is required")));
        }
        self.options
            .limits
            .check_identity(identity)
            .map_err(exceeded)
    }

    /// The backend, for callers that also drive it directly.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Verify the `Authorization` header value and check the grant.
    fn authorize(&self, authorization: Option<&str>, need: Need<'_>) -> Result<Claims, ApiError> {
        let header = authorization
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .ok_or_else(|| ApiError::Unauthenticated("no authorization token".into()))?;
        let token = header
            .get(..7)
            .filter(|p| p.eq_ignore_ascii_case("bearer "))
            .map(|_| header[7..].trim())
            .ok_or_else(|| {
                ApiError::Unauthenticated(
                    "invalid authorization header: expected `Bearer <token>`".into(),
                )
            })?;
        let claims = self.verifier.verify(token).map_err(|e| {
            debug!(error = %e, "room API token rejected");
            ApiError::Unauthenticated(format!("invalid authorization token: {e}"))
        })?;
        let video = claims.video_or_default();
        let allowed = match need {
            Need::Create => video.is_room_create(),
            Need::List => video.is_room_list(),
            Need::Admin(room) => video.is_room_admin() && video.room == room,
        };
        if !allowed {
            let what = match need {
                Need::Create => "roomCreate".to_string(),
                Need::List => "roomList".to_string(),
                Need::Admin(room) => format!("roomAdmin for room {room:?}"),
            };
            return Err(ApiError::PermissionDenied(format!(
                "permissions denied: the token does not grant {what}"
            )));
        }
        Ok(claims)
    }

    /// Create a room (`roomCreate`); an existing room is returned unchanged.
    pub async fn create_room(
        &self,
        auth: Option<&str>,
        req: CreateRoomRequest,
    ) -> Result<Room, ApiError> {
        self.authorize(auth, Need::Create)?;
        self.check_room_name(&req.name)?;
        self.options
            .limits
            .check_metadata(&req.metadata)
            .map_err(exceeded)?;
        self.backend.create_room(req).await
    }

    /// List rooms (`roomList`).
    pub async fn list_rooms(
        &self,
        auth: Option<&str>,
        req: ListRoomsRequest,
    ) -> Result<ListRoomsResponse, ApiError> {
        self.authorize(auth, Need::List)?;
        let mut rooms = self.backend.list_rooms(req.names).await?;
        rooms.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(ListRoomsResponse { rooms })
    }

    /// Delete a room (`roomCreate`).
    pub async fn delete_room(
        &self,
        auth: Option<&str>,
        req: DeleteRoomRequest,
    ) -> Result<DeleteRoomResponse, ApiError> {
        self.authorize(auth, Need::Create)?;
        self.check_room_name(&req.room)?;
        self.backend.delete_room(req.room).await?;
        Ok(DeleteRoomResponse {})
    }

    /// List a room's participants (`roomAdmin`).
    pub async fn list_participants(
        &self,
        auth: Option<&str>,
        req: ListParticipantsRequest,
    ) -> Result<ListParticipantsResponse, ApiError> {
        self.authorize(auth, Need::Admin(&req.room))?;
        self.check_room_name(&req.room)?;
        let mut participants = self.backend.list_participants(req.room).await?;
        participants.sort_by_key(|p| p.joined_at_ms);
        Ok(ListParticipantsResponse { participants })
    }

    /// One participant (`roomAdmin`).
    pub async fn get_participant(
        &self,
        auth: Option<&str>,
        req: RoomParticipantIdentity,
    ) -> Result<ParticipantInfo, ApiError> {
        self.authorize(auth, Need::Admin(&req.room))?;
        self.check_room_name(&req.room)?;
        self.check_identity("identity", &req.identity)?;
        self.backend.get_participant(req.room, req.identity).await
    }

    /// Disconnect a participant (`roomAdmin`).
    pub async fn remove_participant(
        &self,
        auth: Option<&str>,
        req: RoomParticipantIdentity,
    ) -> Result<RemoveParticipantResponse, ApiError> {
        self.authorize(auth, Need::Admin(&req.room))?;
        self.check_room_name(&req.room)?;
        self.check_identity("identity", &req.identity)?;
        self.backend
            .remove_participant(req.room, req.identity)
            .await?;
        Ok(RemoveParticipantResponse {})
    }

    /// Mute (or, when enabled, unmute) a published track (`roomAdmin`).
    pub async fn mute_published_track(
        &self,
        auth: Option<&str>,
        req: MuteRoomTrackRequest,
    ) -> Result<MuteRoomTrackResponse, ApiError> {
        self.authorize(auth, Need::Admin(&req.room))?;
        self.check_room_name(&req.room)?;
        self.check_identity("identity", &req.identity)?;
        if req.track_sid.is_empty() {
            return Err(ApiError::InvalidArgument("track_sid is required".into()));
        }
        if !req.muted && !self.options.allow_remote_unmute {
            return Err(ApiError::FailedPrecondition(
                "remote unmute not enabled".into(),
            ));
        }
        let track = self.backend.mute_published_track(req).await?;
        Ok(MuteRoomTrackResponse { track: Some(track) })
    }

    /// Update a participant (`roomAdmin`).
    pub async fn update_participant(
        &self,
        auth: Option<&str>,
        req: UpdateParticipantRequest,
    ) -> Result<ParticipantInfo, ApiError> {
        self.authorize(auth, Need::Admin(&req.room))?;
        self.check_room_name(&req.room)?;
        self.check_identity("identity", &req.identity)?;
        self.options
            .limits
            .check_participant(&req.name, &req.metadata, &req.attributes)
            .map_err(exceeded)?;
        if req.attributes.keys().any(String::is_empty) {
            return Err(ApiError::InvalidArgument(
                "attribute keys cannot be empty".into(),
            ));
        }
        self.backend.update_participant(req).await
    }

    /// Change a participant's subscriptions (`roomAdmin`).
    pub async fn update_subscriptions(
        &self,
        auth: Option<&str>,
        req: UpdateSubscriptionsRequest,
    ) -> Result<UpdateSubscriptionsResponse, ApiError> {
        self.authorize(auth, Need::Admin(&req.room))?;
        self.check_room_name(&req.room)?;
        self.check_identity("identity", &req.identity)?;
        self.backend.update_subscriptions(req).await?;
        Ok(UpdateSubscriptionsResponse {})
    }

    /// Send data to a room's participants (`roomAdmin`).
    pub async fn send_data(
        &self,
        auth: Option<&str>,
        req: SendDataRequest,
    ) -> Result<SendDataResponse, ApiError> {
        self.authorize(auth, Need::Admin(&req.room))?;
        self.check_room_name(&req.room)?;
        if !req.nonce.is_empty() && req.nonce.len() != 16 {
            return Err(ApiError::InvalidArgument(format!(
                "nonce must be empty or 16 bytes, got {} bytes",
                req.nonce.len()
            )));
        }
        if data_packet::Kind::try_from(req.kind).is_err() {
            return Err(ApiError::InvalidArgument(format!(
                "unknown data packet kind {}",
                req.kind
            )));
        }
        self.backend.send_data(req).await?;
        Ok(SendDataResponse {})
    }

    /// Set a room's metadata (`roomAdmin`).
    pub async fn update_room_metadata(
        &self,
        auth: Option<&str>,
        req: UpdateRoomMetadataRequest,
    ) -> Result<Room, ApiError> {
        self.authorize(auth, Need::Admin(&req.room))?;
        self.check_room_name(&req.room)?;
        self.options
            .limits
            .check_metadata(&req.metadata)
            .map_err(exceeded)?;
        self.backend
            .update_room_metadata(req.room, req.metadata)
            .await
    }

    /// Not supported: forwarding is a LiveKit Cloud feature.
    pub async fn forward_participant(
        &self,
        auth: Option<&str>,
        req: ForwardParticipantRequest,
    ) -> Result<ForwardParticipantResponse, ApiError> {
        self.authorize(auth, Need::Admin(&req.room))?;
        Err(ApiError::Unimplemented(
            "ForwardParticipant is not supported by Relais".into(),
        ))
    }

    /// Not supported: moving participants between rooms is a LiveKit Cloud feature.
    pub async fn move_participant(
        &self,
        auth: Option<&str>,
        req: MoveParticipantRequest,
    ) -> Result<MoveParticipantResponse, ApiError> {
        self.authorize(auth, Need::Admin(&req.room))?;
        Err(ApiError::Unimplemented(
            "MoveParticipant is not supported by Relais".into(),
        ))
    }

    /// Call an RPC method on a participant and return its reply (`roomAdmin`).
    pub async fn perform_rpc(
        &self,
        auth: Option<&str>,
        mut req: PerformRpcRequest,
    ) -> Result<PerformRpcResponse, ApiError> {
        self.authorize(auth, Need::Admin(&req.room))?;
        self.check_room_name(&req.room)?;
        self.check_identity("destination identity", &req.destination_identity)?;
        if req.method.is_empty() {
            return Err(ApiError::InvalidArgument("method is required".into()));
        }
        if req.payload.len() > MAX_RPC_PAYLOAD {
            return Err(ApiError::InvalidArgument(format!(
                "payload is larger than {MAX_RPC_PAYLOAD} bytes"
            )));
        }
        if req.response_timeout_ms == 0 {
            req.response_timeout_ms = DEFAULT_RPC_TIMEOUT_MS;
        }
        req.response_timeout_ms = req.response_timeout_ms.min(MAX_RPC_TIMEOUT_MS);
        let payload = self.backend.perform_rpc(req).await?;
        Ok(PerformRpcResponse { payload })
    }
}

/// A size limit exceeded by a request, as LiveKit reports it (`invalid_argument`).
fn exceeded(e: LimitExceeded) -> ApiError {
    ApiError::InvalidArgument(e.to_string())
}

/// Both faces on one router: Twirp under `/twirp/`, gRPC under
/// `/livekit.RoomService/` (HTTP/2, `content-type: application/grpc`).
pub fn router<B: RoomBackend>(service: Arc<RoomService<B>>) -> axum::Router {
    twirp::router(service.clone()).merge(grpc::router(service))
}

#[cfg(test)]
mod tests;
