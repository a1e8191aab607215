//! Which shard hosts which room, and where a new room goes.
//!
//! A room lives on one shard thread. A new room goes to the shard with the
//! most to spare — one that takes joins, then the least busy over the last
//! second (in tenths, so that shards about as busy count as equal), then the
//! one hosting fewest rooms — instead of wherever its name hashes: two large
//! rooms do not share a core while another idles, and a room is not opened on
//! a shard that sheds load.
//!
//! The directory is also what keeps a room on one shard. A shard creates a
//! room only after claiming its name here ([`RoomDirectory::claim`], on its own
//! thread, just before), and releases the name once the room has closed there
//! ([`RoomDirectory::release`]). A join routed by a lookup that a close or a
//! concurrent creation made stale is answered with the owning shard instead,
//! and tried there. Consulted once per join or room API call, never per packet.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;

/// Attempts at a room whose owner keeps changing under the caller: a room
/// moves only when it closes and reopens, so more than a couple is a bug.
const MAX_ATTEMPTS: usize = 4;

/// See the module documentation.
pub struct RoomDirectory {
    placed: Mutex<Placed>,
    standing: Vec<Standing>,
}

#[derive(Default)]
struct Placed {
    shard_of: HashMap<String, usize>,
    /// Rooms per shard (the values of `shard_of`, counted).
    rooms: Vec<usize>,
}

/// What a shard last reported of itself (about once a second).
struct Standing {
    /// Fraction of the last second spent working, in thousandths.
    busy_permille: AtomicU32,
    accepting_joins: AtomicBool,
}

impl RoomDirectory {
    pub fn new(shards: usize) -> Self {
        RoomDirectory {
            placed: Mutex::new(Placed {
                shard_of: HashMap::new(),
                rooms: vec![0; shards],
            }),
            standing: (0..shards)
                .map(|_| Standing {
                    busy_permille: AtomicU32::new(0),
                    accepting_joins: AtomicBool::new(true),
                })
                .collect(),
        }
    }

    fn placed(&self) -> std::sync::MutexGuard<'_, Placed> {
        self.placed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The shard hosting `room`, or the best one for it if no shard does.
    pub fn route(&self, room: &str) -> usize {
        let placed = self.placed();
        match placed.shard_of.get(room) {
            Some(&shard) => shard,
            None => self.best_for_new_room(&placed.rooms),
        }
    }

    /// Run `attempt` on the shard that hosts `room`, or should host it if none
    /// does; an attempt that answers `Err(owner)` (the room is on another
    /// shard after all) is run again there. `None` if an attempt gives up
    /// (`None`) or the room kept moving.
    pub async fn on_owner<R, Fut>(
        &self,
        room: &str,
        mut attempt: impl FnMut(usize) -> Fut,
    ) -> Option<R>
    where
        Fut: std::future::Future<Output = Option<Result<R, usize>>>,
    {
        let mut shard = self.route(room);
        for _ in 0..MAX_ATTEMPTS {
            match attempt(shard).await? {
                Ok(done) => return Some(done),
                Err(owner) => shard = owner,
            }
        }
        tracing::warn!(%room, "room moved between shards on every attempt");
        None
    }

    fn best_for_new_room(&self, rooms: &[usize]) -> usize {
        (0..self.standing.len())
            .min_by_key(|&i| {
                let s = &self.standing[i];
                (
                    !s.accepting_joins.load(Ordering::Relaxed),
                    s.busy_permille.load(Ordering::Relaxed) / 100,
                    rooms[i],
                    i,
                )
            })
            .unwrap_or(0)
    }

    /// On shard `shard`'s thread, before it creates `room`: take the name, or
    /// learn which shard has it (`Err(owner)`; the caller goes there).
    pub fn claim(&self, room: &str, shard: usize) -> Result<(), usize> {
        let mut placed = self.placed();
        match placed.shard_of.get(room) {
            Some(&owner) if owner != shard => Err(owner),
            Some(_) => Ok(()),
            None => {
                placed.shard_of.insert(room.to_string(), shard);
                placed.rooms[shard] += 1;
                Ok(())
            }
        }
    }

    /// On shard `shard`'s thread: `room` is not open there (it closed, or a
    /// claim was not followed by a room). Frees the name if `shard` held it.
    pub fn release(&self, room: &str, shard: usize) {
        let mut placed = self.placed();
        if placed.shard_of.get(room) == Some(&shard) {
            placed.shard_of.remove(room);
            placed.rooms[shard] -= 1;
        }
    }

    /// A shard's standing, as it measured it over the last second.
    pub fn report(&self, shard: usize, busy_fraction: f64, accepting_joins: bool) {
        if let Some(s) = self.standing.get(shard) {
            let permille = (busy_fraction.clamp(0.0, 1.0) * 1000.0) as u32;
            s.busy_permille.store(permille, Ordering::Relaxed);
            s.accepting_joins.store(accepting_joins, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_rooms_spread_over_shards_and_stay_where_they_are() {
        let d = RoomDirectory::new(3);
        let mut seen = Vec::new();
        for name in ["a", "b", "c", "d", "e", "f"] {
            let shard = d.route(name);
            d.claim(name, shard).unwrap();
            seen.push(shard);
        }
        assert_eq!(seen, [0, 1, 2, 0, 1, 2]);
        assert_eq!(d.route("e"), 1, "an open room is where it is");
    }

    #[test]
    fn new_rooms_avoid_busy_and_refusing_shards() {
        let d = RoomDirectory::new(3);
        d.report(0, 0.92, true);
        d.report(1, 0.30, false);
        d.report(2, 0.55, true);
        assert_eq!(d.route("x"), 2, "the least busy of those taking joins");
        d.report(2, 0.95, true);
        assert_eq!(d.route("x"), 0);
        // About as busy (same tenth): fewer rooms first.
        d.report(0, 0.51, true);
        d.report(2, 0.58, true);
        d.claim("r", 0).unwrap();
        assert_eq!(d.route("x"), 2);
    }

    #[tokio::test]
    async fn a_stale_route_is_followed_to_the_owner_and_a_moving_room_given_up() {
        let d = RoomDirectory::new(2);
        d.claim("r", 1).unwrap();
        // A caller that routed before the claim lands on shard 0, which
        // answers with the owner; the attempt is run again there.
        let mut tried = Vec::new();
        let done = d
            .on_owner("elsewhere", |shard| {
                tried.push(shard);
                async move { Some(if shard == 0 { Err(1) } else { Ok(shard) }) }
            })
            .await;
        assert_eq!((done, tried), (Some(1), vec![0, 1]));
        // An owner that changes on every attempt is given up after a few.
        let mut attempts = 0;
        let done: Option<()> = d
            .on_owner("r", |shard| {
                attempts += 1;
                async move { Some(Err(1 - shard)) }
            })
            .await;
        assert_eq!((done, attempts), (None, MAX_ATTEMPTS));
        // A shard that is gone ends it at once.
        let done: Option<()> = d.on_owner("r", |_| async { None }).await;
        assert_eq!(done, None);
    }

    #[test]
    fn a_room_is_never_claimed_by_two_shards() {
        let d = RoomDirectory::new(2);
        // Two joins for a new room routed to different shards: the second is
        // sent to the first's shard.
        assert_eq!(d.claim("r", 1), Ok(()));
        assert_eq!(d.claim("r", 0), Err(1));
        assert_eq!(d.claim("r", 1), Ok(()), "claiming again is harmless");
        // A stale release (shard 0 never had it) changes nothing.
        d.release("r", 0);
        assert_eq!(d.claim("r", 0), Err(1));
        // Once the room closed on shard 1, another shard may open it.
        d.release("r", 1);
        assert_eq!(d.claim("r", 0), Ok(()));
        assert_eq!(d.placed().rooms, [1, 0]);
    }
}
