//! RoomService operations at the shard level: creating, listing and deleting
//! rooms, and running a room operation with the shard's routing kept in step.

use std::time::Instant;

use relais_proto::livekit::{self, CreateRoomRequest, DisconnectReason};
use tracing::info;

use crate::room::Room;
use crate::shard::{Shard, ShardOutput};

impl Shard {
    /// `CreateRoom`: the existing room unchanged, or a new one with the
    /// request's settings. Returns the room and whether it was created.
    pub fn create_room(
        &mut self,
        now: Instant,
        unix_ms: i64,
        req: &CreateRoomRequest,
    ) -> (livekit::Room, bool) {
        if let Some(room) = self.rooms.by_name(&req.name) {
            return (room.api_info(), false);
        }
        let mut room = Room::new(&req.name, self.config.clone(), self.index, now, unix_ms);
        room.configure(req);
        info!(room = %req.name, shard = self.index, "room created by the room API");
        let info = room.api_info();
        let id = self.rooms.insert(room);
        self.collect(id);
        (info, true)
    }

    /// The rooms of this shard, all or those named.
    pub fn room_infos(&self, names: &[String]) -> Vec<livekit::Room> {
        self.rooms
            .values()
            .filter(|r| !r.is_closed())
            .filter(|r| names.is_empty() || names.iter().any(|n| n == r.name()))
            .map(Room::api_info)
            .collect()
    }

    /// Run `f` on the room named `name` (if it exists and is open), then move
    /// its outputs out as every other entry point does.
    pub fn with_room<R>(&mut self, name: &str, f: impl FnOnce(&mut Room) -> R) -> Option<R> {
        let id = self.rooms.id(name)?;
        if self.rooms.get(id)?.is_closed() {
            return None;
        }
        let result = f(self.lend(id)?);
        self.collect(id);
        Some(result)
    }

    /// Close a room: everyone gets `leave{reason}` (see [`Room::close`]),
    /// then the room is dropped. False if there is no such room.
    pub fn close_room(&mut self, now: Instant, name: &str, reason: DisconnectReason) -> bool {
        if self
            .with_room(name, |room| room.close(now, reason))
            .is_none()
        {
            return false;
        }
        if let Some(id) = self.rooms.id(name) {
            self.drop_room(id);
            info!(room = %name, "room closed");
            self.outputs
                .push_back(ShardOutput::RoomClosed(name.to_string()));
        }
        true
    }
}
