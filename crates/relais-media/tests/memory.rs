//! Heap the media core holds per idle connected participant (its two str0m
//! peer connections and the room's state): N participants join and connect,
//! then the room is deleted; what the heap shrinks by, divided by N. The
//! simulated clients stay alive throughout, so their memory is not counted.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use common::{Sim, ROOM};
use relais_proto::livekit::DisconnectReason;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The figure behind the "≤ 100 KiB per idle participant" target, for the heap
/// of the media core (RSS adds the WebSocket task and allocator overhead).
const BUDGET: usize = 100 * 1024;

#[test]
fn heap_per_idle_participant() {
    const N: usize = 40;
    let mut sim = Sim::new();
    for i in 0..N {
        sim.join(&format!("p{i}"));
    }
    sim.run_until_connected(Duration::from_secs(5));
    sim.run_for(Duration::from_secs(6));
    let connected = LIVE.load(Ordering::Relaxed);

    // The room goes too: its participant map is part of the cost.
    assert!(sim
        .shard
        .close_room(sim.now, ROOM, DisconnectReason::RoomDeleted));
    while sim.shard.poll_output().is_some() {}
    let removed = LIVE.load(Ordering::Relaxed);

    let per = (connected - removed) as usize / N;
    println!("media core heap per idle participant: {} KiB", per / 1024);
    assert!(per <= BUDGET, "{} KiB per idle participant", per / 1024);
}
