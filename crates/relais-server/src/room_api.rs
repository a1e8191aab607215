//! The room API's backend on this node: each operation runs on the thread of
//! the shard that owns the room (`ListRooms` asks every shard) and answers
//! through a oneshot channel.

use std::time::{Duration, Instant};

use relais_control::room_service::{ApiError, RoomBackend};
use relais_media::{AdminError, RpcFailure, Shard};
use relais_proto::livekit::{
    CreateRoomRequest, DisconnectReason, MuteRoomTrackRequest, ParticipantInfo, PerformRpcRequest,
    Room, SendDataRequest, TrackInfo, UpdateParticipantRequest, UpdateSubscription,
    UpdateSubscriptionsRequest,
};
use tokio::sync::oneshot;

use crate::shards::Shards;

/// Extra time given to a server RPC beyond its response timeout, so the
/// participant's own timeout error (if any) arrives first.
const RPC_GRACE: Duration = Duration::from_millis(500);

/// [`RoomBackend`] over the node's shard threads.
#[derive(Clone)]
pub struct ShardsBackend {
    shards: Shards,
}

impl ShardsBackend {
    pub fn new(shards: Shards) -> Self {
        ShardsBackend { shards }
    }

    /// The node state the shards report their load to.
    pub fn node(&self) -> &std::sync::Arc<crate::node::NodeState> {
        self.shards.node()
    }

    /// Run `f` on the shard owning `room`.
    async fn on_room<R: Send + 'static>(
        &self,
        room: &str,
        f: impl FnOnce(&mut Shard, Instant, i64) -> R + Send + 'static,
    ) -> Result<R, ApiError> {
        self.shards
            .run_on(self.shards.shard_for_room(room), f)
            .await
            .ok_or_else(shard_gone)
    }

    /// Run `f` on the open room named `room`: `not_found` if there is none.
    async fn with_room<R: Send + 'static>(
        &self,
        room: String,
        f: impl FnOnce(&mut relais_media::Room, Instant) -> R + Send + 'static,
    ) -> Result<R, ApiError> {
        let name = room.clone();
        self.on_room(&room, move |shard, now, _| {
            shard.with_room(&name, |room| f(room, now))
        })
        .await?
        .ok_or_else(ApiError::room_not_found)
    }

    /// The room lives on another node now: send its participants there
    /// (`leave{MIGRATION, RECONNECT}`: SDKs rejoin through their URL, and the
    /// entry node routes them to the owner) and close it here.
    pub async fn move_room_away(&self, room: &str) -> Result<bool, ApiError> {
        let name = room.to_string();
        self.on_room(room, move |shard, now, _| {
            shard.close_room(now, &name, DisconnectReason::Migration)
        })
        .await
    }
}

fn shard_gone() -> ApiError {
    ApiError::Unavailable("the shard owning this room is not running".into())
}

fn admin_error(e: AdminError) -> ApiError {
    match e {
        AdminError::ParticipantNotFound => ApiError::participant_not_found(),
        AdminError::TrackNotFound(_) => ApiError::NotFound(e.to_string()),
    }
}

fn rpc_error(f: RpcFailure) -> ApiError {
    ApiError::Rpc {
        code: f.code,
        message: f.message,
        data: f.data,
    }
}

impl RoomBackend for ShardsBackend {
    async fn create_room(&self, req: CreateRoomRequest) -> Result<Room, ApiError> {
        let directory = self.shards.directory().clone();
        self.shards
            .on_room_shard(&req.name, |index| {
                let directory = directory.clone();
                let req = req.clone();
                self.shards.run_on(index, move |shard, now, unix_ms| {
                    // A new room is claimed first, as a join does.
                    directory.claim(&req.name, index)?;
                    Ok(shard.create_room(now, unix_ms, &req).0)
                })
            })
            .await
            .ok_or_else(shard_gone)
    }

    async fn list_rooms(&self, names: Vec<String>) -> Result<Vec<Room>, ApiError> {
        let mut rooms = Vec::new();
        for index in 0..self.shards.count() {
            let names = names.clone();
            let found = self
                .shards
                .run_on(index, move |shard, _, _| shard.room_infos(&names))
                .await
                .ok_or_else(shard_gone)?;
            rooms.extend(found);
        }
        Ok(rooms)
    }

    async fn delete_room(&self, room: String) -> Result<(), ApiError> {
        let name = room.clone();
        let deleted = self
            .on_room(&room, move |shard, now, _| {
                shard.close_room(now, &name, DisconnectReason::RoomDeleted)
            })
            .await?;
        if deleted {
            Ok(())
        } else {
            Err(ApiError::room_not_found())
        }
    }

    async fn list_participants(&self, room: String) -> Result<Vec<ParticipantInfo>, ApiError> {
        self.with_room(room, |room, _| room.participant_infos())
            .await
    }

    async fn get_participant(
        &self,
        room: String,
        identity: String,
    ) -> Result<ParticipantInfo, ApiError> {
        self.with_room(room, move |room, _| {
            room.participant_by_identity(&identity).cloned()
        })
        .await?
        .ok_or_else(ApiError::participant_not_found)
    }

    async fn remove_participant(&self, room: String, identity: String) -> Result<(), ApiError> {
        self.with_room(room, move |room, now| {
            room.remove_by_identity(now, &identity)
        })
        .await?
        .map_err(admin_error)
    }

    async fn mute_published_track(&self, req: MuteRoomTrackRequest) -> Result<TrackInfo, ApiError> {
        self.with_room(req.room.clone(), move |room, _| {
            room.mute_track(&req.identity, &req.track_sid, req.muted)
        })
        .await?
        .map_err(admin_error)
    }

    async fn update_participant(
        &self,
        req: UpdateParticipantRequest,
    ) -> Result<ParticipantInfo, ApiError> {
        self.with_room(req.room.clone(), move |room, now| {
            room.admin_update_participant(now, &req)
        })
        .await?
        .map_err(admin_error)
    }

    async fn update_subscriptions(&self, req: UpdateSubscriptionsRequest) -> Result<(), ApiError> {
        let update = UpdateSubscription {
            track_sids: req.track_sids,
            subscribe: req.subscribe,
            participant_tracks: req.participant_tracks,
        };
        let identity = req.identity;
        self.with_room(req.room, move |room, now| {
            room.admin_update_subscriptions(now, &identity, update)
        })
        .await?
        .map_err(admin_error)
    }

    async fn send_data(&self, req: SendDataRequest) -> Result<(), ApiError> {
        self.with_room(req.room.clone(), move |room, now| {
            room.admin_send_data(now, req)
        })
        .await
    }

    async fn update_room_metadata(&self, room: String, metadata: String) -> Result<Room, ApiError> {
        self.with_room(room, move |room, _| room.set_metadata(metadata))
            .await
    }

    async fn perform_rpc(&self, req: PerformRpcRequest) -> Result<String, ApiError> {
        let (tx, rx) = oneshot::channel();
        let timeout = Duration::from_millis(u64::from(req.response_timeout_ms));
        self.with_room(req.room.clone(), move |room, now| {
            let reply = Box::new(move |outcome| {
                let _ = tx.send(outcome);
            });
            room.perform_server_rpc(
                now,
                &req.destination_identity,
                &req.method,
                &req.payload,
                req.response_timeout_ms,
                reply,
            )
        })
        .await?
        .map_err(admin_error)?;
        match tokio::time::timeout(timeout + RPC_GRACE, rx).await {
            Ok(Ok(outcome)) => outcome.map_err(rpc_error),
            Ok(Err(_)) => Err(ApiError::Unavailable(
                "the room closed before the participant answered".into(),
            )),
            Err(_) => Err(ApiError::Rpc {
                code: relais_control::room_service::rpc_codes::RESPONSE_TIMEOUT,
                message: "Response timeout".into(),
                data: String::new(),
            }),
        }
    }
}
