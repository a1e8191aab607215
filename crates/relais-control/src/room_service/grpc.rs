//! The gRPC face: tonic's `livekit.RoomService` over the same [`RoomService`].
//!
//! The token travels in the `authorization` metadata (`Bearer <jwt>`), as the
//! `Authorization` header does for Twirp. Errors are gRPC statuses mapped from
//! [`ApiError`] (`NOT_FOUND`, `PERMISSION_DENIED`, …).

use std::sync::Arc;

use relais_proto::livekit::room_service_server::{
    RoomService as GrpcRoomService, RoomServiceServer,
};
use relais_proto::livekit::{
    CreateRoomRequest, DeleteRoomRequest, DeleteRoomResponse, ForwardParticipantRequest,
    ForwardParticipantResponse, ListParticipantsRequest, ListParticipantsResponse,
    ListRoomsRequest, ListRoomsResponse, MoveParticipantRequest, MoveParticipantResponse,
    MuteRoomTrackRequest, MuteRoomTrackResponse, ParticipantInfo, PerformRpcRequest,
    PerformRpcResponse, RemoveParticipantResponse, Room, RoomParticipantIdentity, SendDataRequest,
    SendDataResponse, UpdateParticipantRequest, UpdateRoomMetadataRequest,
    UpdateSubscriptionsRequest, UpdateSubscriptionsResponse,
};
use tonic::{Request, Response, Status};

use super::{RoomBackend, RoomService, MAX_REQUEST_BYTES};

/// Adapts a [`RoomService`] to tonic's generated trait.
pub struct GrpcFace<B>(pub Arc<RoomService<B>>);

/// The tonic service, ready to be added to a tonic or axum router.
pub fn server<B: RoomBackend>(service: Arc<RoomService<B>>) -> RoomServiceServer<GrpcFace<B>> {
    RoomServiceServer::new(GrpcFace(service)).max_decoding_message_size(MAX_REQUEST_BYTES)
}

/// The gRPC routes (`/livekit.RoomService/<Method>`) as an axum router.
pub fn router<B: RoomBackend>(service: Arc<RoomService<B>>) -> axum::Router {
    tonic::service::Routes::new(server(service)).into_axum_router()
}

fn auth<T>(request: &Request<T>) -> Option<String> {
    request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

macro_rules! grpc_methods {
    ($( $name:ident ( $req:ty ) -> $resp:ty ;)*) => {
        #[tonic::async_trait]
        impl<B: RoomBackend> GrpcRoomService for GrpcFace<B> {
            $(
                async fn $name(&self, request: Request<$req>) -> Result<Response<$resp>, Status> {
                    let auth = auth(&request);
                    self.0
                        .$name(auth.as_deref(), request.into_inner())
                        .await
                        .map(Response::new)
                        .map_err(Status::from)
                }
            )*
        }
    };
}

grpc_methods! {
    create_room(CreateRoomRequest) -> Room;
    list_rooms(ListRoomsRequest) -> ListRoomsResponse;
    delete_room(DeleteRoomRequest) -> DeleteRoomResponse;
    list_participants(ListParticipantsRequest) -> ListParticipantsResponse;
    get_participant(RoomParticipantIdentity) -> ParticipantInfo;
    remove_participant(RoomParticipantIdentity) -> RemoveParticipantResponse;
    mute_published_track(MuteRoomTrackRequest) -> MuteRoomTrackResponse;
    update_participant(UpdateParticipantRequest) -> ParticipantInfo;
    update_subscriptions(UpdateSubscriptionsRequest) -> UpdateSubscriptionsResponse;
    send_data(SendDataRequest) -> SendDataResponse;
    update_room_metadata(UpdateRoomMetadataRequest) -> Room;
    forward_participant(ForwardParticipantRequest) -> ForwardParticipantResponse;
    move_participant(MoveParticipantRequest) -> MoveParticipantResponse;
    perform_rpc(PerformRpcRequest) -> PerformRpcResponse;
}
