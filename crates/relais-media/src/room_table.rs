//! A shard's rooms, found by name where a name is what the caller has (a
//! join, the room API) and by a small copyable [`RoomId`] on the media path:
//! a datagram's route and the shard's timers name a room by id, so that
//! forwarding a packet hashes no room name and counts no reference to one.

use std::sync::Arc;

use crate::room::Room;
use crate::HashMap;

/// A room of one shard, as long as it lives: an id is never taken to mean
/// a later room in the same slot (the slot's generation differs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RoomId {
    slot: u32,
    generation: u32,
}

struct Slot {
    generation: u32,
    room: Option<Room>,
}

#[derive(Default)]
pub(crate) struct RoomTable {
    slots: Vec<Slot>,
    /// Slots with no room, for the next rooms.
    free: Vec<u32>,
    by_name: HashMap<Arc<str>, RoomId>,
}

impl RoomTable {
    pub(crate) fn id(&self, name: &str) -> Option<RoomId> {
        self.by_name.get(name).copied()
    }

    pub(crate) fn get(&self, id: RoomId) -> Option<&Room> {
        let slot = self.slots.get(id.slot as usize)?;
        slot.room
            .as_ref()
            .filter(|_| slot.generation == id.generation)
    }

    pub(crate) fn get_mut(&mut self, id: RoomId) -> Option<&mut Room> {
        let slot = self.slots.get_mut(id.slot as usize)?;
        slot.room
            .as_mut()
            .filter(|_| slot.generation == id.generation)
    }

    pub(crate) fn by_name(&self, name: &str) -> Option<&Room> {
        self.get(self.id(name)?)
    }

    /// Add `room`, whose name no room of the table has.
    pub(crate) fn insert(&mut self, room: Room) -> RoomId {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    room: None,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let entry = &mut self.slots[slot as usize];
        let id = RoomId {
            slot,
            generation: entry.generation,
        };
        self.by_name.insert(room.name().into(), id);
        entry.room = Some(room);
        id
    }

    pub(crate) fn remove(&mut self, id: RoomId) -> Option<Room> {
        let slot = self.slots.get_mut(id.slot as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        let room = slot.room.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(id.slot);
        self.by_name.remove(room.name());
        Some(room)
    }

    pub(crate) fn len(&self) -> usize {
        self.by_name.len()
    }

    pub(crate) fn ids(&self) -> Vec<RoomId> {
        self.by_name.values().copied().collect()
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &Room> {
        self.slots.iter().filter_map(|s| s.room.as_ref())
    }

    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut Room> {
        self.slots.iter_mut().filter_map(|s| s.room.as_mut())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MediaConfig;
    use std::time::Instant;

    fn room(name: &str) -> Room {
        let config = MediaConfig::new(Vec::new(), "node".into()).expect("a certificate");
        Room::new(name, config, 0, Instant::now(), 0)
    }

    #[test]
    fn a_removed_rooms_id_never_finds_the_room_in_its_slot_after_it() {
        let mut table = RoomTable::default();
        let a = table.insert(room("a"));
        let b = table.insert(room("b"));
        assert_eq!(table.get(a).map(Room::name), Some("a"));
        assert_eq!(table.id("b"), Some(b));
        assert_eq!(
            table.remove(a).map(|r| r.name().to_string()),
            Some("a".into())
        );
        assert!(table.get(a).is_none());
        assert!(table.id("a").is_none());
        assert!(table.remove(a).is_none());
        // The slot serves the next room, under another id.
        let c = table.insert(room("c"));
        assert_ne!(c, a);
        assert!(table.get(a).is_none());
        assert!(table.get_mut(a).is_none());
        assert_eq!(table.get(c).map(Room::name), Some("c"));
        assert_eq!(table.by_name("b").map(Room::name), Some("b"));
        assert_eq!(table.len(), 2);
        let mut names: Vec<_> = table.values().map(Room::name).collect();
        names.sort_unstable();
        assert_eq!(names, ["b", "c"]);
    }
}
