//! What the room API needs from whoever owns the rooms.

use std::future::Future;

use relais_proto::livekit::{
    CreateRoomRequest, MuteRoomTrackRequest, ParticipantInfo, PerformRpcRequest, Room,
    SendDataRequest, TrackInfo, UpdateParticipantRequest, UpdateSubscriptionsRequest,
};

use super::ApiError;

/// The room operations behind [`super::RoomService`]. Requests reach the
/// backend authenticated, authorized and validated: the backend only applies
/// them (and answers `not_found` for rooms, participants and tracks it does
/// not have).
///
/// Every method returns a `Send` future so both faces (Twirp on axum, gRPC on
/// tonic) can await it on a multi-threaded runtime.
pub trait RoomBackend: Send + Sync + 'static {
    /// Create the room, or return the existing one unchanged.
    fn create_room(
        &self,
        req: CreateRoomRequest,
    ) -> impl Future<Output = Result<Room, ApiError>> + Send;

    /// Every room, or only those named (missing names are skipped).
    fn list_rooms(
        &self,
        names: Vec<String>,
    ) -> impl Future<Output = Result<Vec<Room>, ApiError>> + Send;

    /// Disconnect everyone with `ROOM_DELETED` and drop the room.
    fn delete_room(&self, room: String) -> impl Future<Output = Result<(), ApiError>> + Send;

    /// The participants of a room.
    fn list_participants(
        &self,
        room: String,
    ) -> impl Future<Output = Result<Vec<ParticipantInfo>, ApiError>> + Send;

    /// One participant by identity.
    fn get_participant(
        &self,
        room: String,
        identity: String,
    ) -> impl Future<Output = Result<ParticipantInfo, ApiError>> + Send;

    /// Disconnect a participant with `PARTICIPANT_REMOVED`.
    fn remove_participant(
        &self,
        room: String,
        identity: String,
    ) -> impl Future<Output = Result<(), ApiError>> + Send;

    /// Mute or unmute a published track; returns the track as it now is.
    fn mute_published_track(
        &self,
        req: MuteRoomTrackRequest,
    ) -> impl Future<Output = Result<TrackInfo, ApiError>> + Send;

    /// Change name, metadata, attributes and/or permission.
    fn update_participant(
        &self,
        req: UpdateParticipantRequest,
    ) -> impl Future<Output = Result<ParticipantInfo, ApiError>> + Send;

    /// Subscribe a participant to tracks or unsubscribe it.
    fn update_subscriptions(
        &self,
        req: UpdateSubscriptionsRequest,
    ) -> impl Future<Output = Result<(), ApiError>> + Send;

    /// Deliver a user data packet from the server.
    fn send_data(&self, req: SendDataRequest) -> impl Future<Output = Result<(), ApiError>> + Send;

    /// Set the room's metadata and tell every participant.
    fn update_room_metadata(
        &self,
        room: String,
        metadata: String,
    ) -> impl Future<Output = Result<Room, ApiError>> + Send;

    /// Call an RPC method on a participant and wait for its answer (at most
    /// `response_timeout_ms`, already defaulted by the service).
    fn perform_rpc(
        &self,
        req: PerformRpcRequest,
    ) -> impl Future<Output = Result<String, ApiError>> + Send;
}
